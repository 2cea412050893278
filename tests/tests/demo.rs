//! `cargo xtask demo`, run by the test suite: the demo driver with
//! policies/default.toml as it is, except where the daemon keeps its state
//! and which ports it uses (so that it runs beside the other tests and
//! beside a developer's own stack). Each job step checks its own outcome
//! (allowed, denied by the named rule, masked), and the driver exits
//! non-zero when one does not; this test also checks the transcript and
//! that `--keep` and `--stop` leave nothing behind.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use interceptor_tests::{
    default_policy_text, output_text, redis::free_port, require_root, store_at, StoreAt,
};

const DRIVER: &str = env!("CARGO_BIN_EXE_interceptor-demo");

/// policies/default.toml with its daemon paths, listener and store ports
/// moved into this test's own.
fn config(dir: &Path, name: &str, listen: u16) -> PathBuf {
    let id = format!("interceptor-test-{name}-{}", std::process::id());
    let stores: Vec<StoreAt> = ["postgres", "redis", "vault"]
        .into_iter()
        .map(|store| store_at(store, format!("127.0.0.1:{}", free_port())))
        .collect();
    let text = default_policy_text(
        &id,
        listen,
        Path::new(&format!("/sys/fs/bpf/{id}")),
        dir,
        &stores,
        "",
    );
    let path = dir.join("interceptor.toml");
    fs::write(&path, text).expect("write config");
    path
}

fn driver(dir: &Path, config: &Path, extra: &[&str]) -> Output {
    Command::new(DRIVER)
        .arg("--dir")
        .arg(dir.join("demo"))
        .arg("--config")
        .arg(config)
        .args(extra)
        .output()
        .expect("run interceptor-demo")
}

fn cgroup_of(config: &Path) -> PathBuf {
    let c = interceptor::config::Config::load(config).expect("config");
    interceptor::redirect::cgroup::cgroup2_mount()
        .expect("cgroup2")
        .join(c.daemon.cgroup)
}

#[test]
fn the_demo_shows_every_store_allowed_denied_and_masked_then_the_audit_table() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "demo", 990);
    let out = driver(dir.path(), &config, &[]);
    let text = output_text(&out);
    assert!(out.status.success(), "the demo failed:\n{text}");
    assert!(!text.contains("UNEXPECTED"), "{text}");
    for store in ["PostgreSQL", "Redis", "OpenBao"] {
        let start = text
            .find(&format!("━━ {store}"))
            .unwrap_or_else(|| panic!("no {store} section:\n{text}"));
        let section = &text[start..];
        let end = section[3..].find("━━ ").map_or(section.len(), |i| i + 3);
        let section = &section[..end];
        for verdict in ["-> ALLOWED", "-> DENIED by rule", "-> MASKED"] {
            assert!(
                section.contains(verdict),
                "{store}: no step {verdict}:\n{section}"
            );
        }
    }
    // The analyst's table, from DuckDB over the Parquet files.
    assert!(text.contains("DuckDB, on the Parquet files"), "{text}");
    for column in [
        "ci_job",
        "process",
        "statement",
        "decision",
        "rule",
        "masked",
    ] {
        assert!(text.contains(column), "no column {column}:\n{text}");
    }
    assert!(
        text.contains("gitlab:demo/payments job 4242"),
        "the job is in the table:\n{text}"
    );
    for rule in [
        "no-ddl",
        "no-dangerous-redis-commands",
        "no-vault-sys-admin",
    ] {
        assert!(
            text.lines()
                .any(|l| l.contains(" deny ") && l.contains(rule)),
            "no audit row for the {rule} denial:\n{text}"
        );
    }
    // Cleaned up: no stack file, no cgroup, no pins.
    assert!(!dir.path().join("demo/stack.json").exists(), "{text}");
    assert!(!cgroup_of(&config).exists(), "cgroup left behind");
    let c = interceptor::config::Config::load(&config).expect("config");
    assert!(
        !c.daemon.bpffs.join("links").exists(),
        "pins left behind under {}",
        c.daemon.bpffs.display()
    );
    let _ = fs::remove_dir_all(&c.daemon.bpffs);
}

#[test]
fn demo_keep_leaves_the_stack_up_and_stop_takes_it_down() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), "demo-keep", 991);
    let out = driver(dir.path(), &config, &["--keep"]);
    let text = output_text(&out);
    assert!(out.status.success(), "the demo failed:\n{text}");
    assert!(text.contains("The stack is still up"), "{text}");
    assert!(text.contains("cargo xtask demo --stop"), "{text}");

    // Still intercepting: a job started now is served by the kept daemon.
    let stack: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(dir.path().join("demo/stack.json")).expect("stack.json"),
    )
    .expect("stack.json is JSON");
    let pids: Vec<u64> = stack["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    assert_eq!(pids.len(), 4, "{stack}");
    for pid in &pids {
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} is not running: {stack}"
        );
    }
    let c = interceptor::config::Config::load(&config).expect("config");
    let redis_port = c
        .stores
        .iter()
        .find(|s| s.name == "redis")
        .and_then(|s| s.targets.first())
        .map(|t| t.port)
        .expect("redis store");
    let got = Command::new(interceptor_tests::bin())
        .args(["exec", "--config"])
        .arg(&config)
        .args(["--", "redis-cli", "-h", "127.0.0.1", "-p"])
        .arg(redis_port.to_string())
        .args(["GET", "secret:db"])
        .output()
        .expect("redis-cli");
    assert_eq!(
        String::from_utf8_lossy(&got.stdout).trim(),
        "********",
        "{}",
        output_text(&got)
    );

    let out = driver(dir.path(), &config, &["--stop"]);
    let text = output_text(&out);
    assert!(out.status.success(), "--stop failed:\n{text}");
    assert!(text.contains("demo stack stopped"), "{text}");
    for pid in &pids {
        // Reaped by init: the pid may linger a moment as a zombie.
        let gone = (0..200).any(|_| {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rsplit(") ").next().and_then(|r| r.chars().next());
            if matches!(state, None | Some('Z')) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            false
        });
        assert!(gone, "pid {pid} still running after --stop");
    }
    assert!(!dir.path().join("demo/stack.json").exists());
    assert!(!cgroup_of(&config).exists(), "cgroup left behind");
    let _ = fs::remove_dir_all(&c.daemon.bpffs);
}
