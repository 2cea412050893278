//! `interceptor check` and `interceptor run` on broken config files: a clear
//! error naming the file and line, a non-zero exit, and no daemon.

use std::{fs, process::Command, time::Duration};

use interceptor_tests::*;

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, text).expect("write config");
    p
}

const GOOD: &str = r#"
[daemon]
cgroup = "interceptor-test-config-never-created"
listen = "127.0.0.1:960"
bpffs = "/sys/fs/bpf/interceptor-test-config-never-created"

[[store]]
name = "echo"
protocol = "tcp"
targets = ["127.0.0.1:7777"]
"#;

#[test]
fn check_accepts_a_good_config_and_the_shipped_policies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = write(dir.path(), "good.toml", GOOD);
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("config OK"),
        "{out:?}"
    );
    for entry in fs::read_dir(workspace_root().join("policies")).expect("policies/") {
        let path = entry.expect("entry").path();
        let paths = if path.is_dir() {
            fs::read_dir(&path)
                .expect("dir")
                .map(|e| e.expect("entry").path())
                .collect()
        } else {
            vec![path]
        };
        for p in paths
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        {
            let out = Command::new(bin())
                .args(["check", "--config"])
                .arg(&p)
                .output()
                .expect("check");
            assert!(
                out.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn broken_configs_get_file_line_and_hint_and_run_refuses_them() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    // (file body, line the error must point at, text the message must contain)
    let cases: &[(&str, &str, usize, &str)] = &[
        ("syntax", "[daemon]\ncgroup = \"x\"\nlisten = \n", 3, ""),
        ("unknown-key", "[daemon]\ncgroup = \"x\"\nlistne = \"127.0.0.1:915\"\n", 3, "listne"),
        (
            "bad-protocol",
            "[daemon]\ncgroup = \"x\"\n\n[[store]]\nname = \"a\"\nprotocol = \"mysql\"\ntargets = [\"*:1\"]\n",
            6,
            "mysql",
        ),
        (
            "bad-target",
            "[daemon]\ncgroup = \"x\"\n\n[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"5432\"]\n",
            7,
            "5432",
        ),
        (
            "unprivileged-port",
            "[daemon]\ncgroup = \"x\"\nlisten = \"127.0.0.1:8915\"\n\n[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"*:1\"]\n",
            3,
            "1024",
        ),
        (
            "unknown-store-in-rule",
            "[daemon]\ncgroup = \"x\"\n\n[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"*:1\"]\n\n[[rule]]\nname = \"r\"\nstores = [\"nope\"]\naction = \"deny\"\n",
            11,
            "nope",
        ),
        ("no-store", "[daemon]\ncgroup = \"x\"\n", 0, "store"),
    ];
    for &(name, body, line, needle) in cases {
        let path = write(dir.path(), &format!("{name}.toml"), body);
        let out = Command::new(bin())
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .expect("check");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: check accepted a broken config"
        );
        assert!(
            err.contains(&format!("{name}.toml")),
            "{name}: error does not name the file: {err}"
        );
        if line > 0 {
            assert!(
                err.contains(&format!("{name}.toml:{line}:")),
                "{name}: error does not point at line {line}: {err}"
            );
        }
        assert!(
            err.contains(needle),
            "{name}: error does not mention {needle:?}: {err}"
        );
        assert!(
            err.to_lowercase().contains("hint"),
            "{name}: no hint: {err}"
        );
        assert!(!err.contains("panicked"), "{name}: {err}");

        // `run` refuses to start on it, quickly, with the same message.
        let mut child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&path)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{name}: run kept going on a broken config");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{name}: run exited 0 on a broken config");
    }
    let missing = Command::new(bin())
        .args(["check", "--config", "/nonexistent/interceptor.toml"])
        .output()
        .expect("check");
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/interceptor.toml"));
}
