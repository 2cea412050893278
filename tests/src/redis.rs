//! A real `redis-server` for the tests: a process on 127.0.0.1 and a free
//! port, with the password and TLS a test asks for (certificates from a
//! fresh CA made with the openssl CLI, the server's naming 127.0.0.1), and
//! seed data. Dropping the [`RedisServer`] stops the process this harness
//! started (by its pid) and removes its directory.
//!
//! Seed data ([`RedisServer::seed`]): `secret:db` and `secret:api` (strings
//! whose values are [`SECRET_DB`] and [`SECRET_API`]), a hash
//! `secret:creds`, a string `public:greeting`, a string `public:leak`
//! holding an AWS access key id, a list `public:list`.

use std::{
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

pub const SECRET_DB: &str = "db-password-s3cr3t";
pub const SECRET_API: &str = "api-token-9f8e7d";
pub const CREDS_USER: &str = "svc-user";
pub const CREDS_PASS: &str = "hash-pass-q1w2e3";
pub const AWS_KEY: &str = "AKIAQRSTUVWXYZ234567";
pub const GREETING: &str = "hello world";

#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// `requirepass`.
    pub password: Option<String>,
    /// Also listen with TLS (`--tls-port`).
    pub tls: bool,
    /// TLS only: `--port 0`.
    pub tls_only: bool,
    /// More `redis-server` arguments (e.g. `--enable-debug-command yes`).
    pub args: Vec<String>,
}

pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Plain port (0 when TLS only).
    pub port: u16,
    /// TLS port (0 without TLS).
    pub tls_port: u16,
    pub opts: RedisOptions,
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (install the openssl CLI: `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl RedisServer {
    pub fn start(opts: RedisOptions) -> RedisServer {
        Self::start_on(opts, None)
    }

    /// [`RedisServer::start`] with the plain port given (`None`: a free
    /// one). A given port that is taken fails at once.
    pub fn start_on(opts: RedisOptions, port: Option<u16>) -> RedisServer {
        assert!(
            Path::new("/usr/bin/redis-server").exists() || which("redis-server"),
            "redis-server is not installed: run `cargo xtask setup` (Debian package redis-server)"
        );
        let dir = tempfile::Builder::new()
            .prefix("interceptor-test-redis-")
            .tempdir()
            .expect("tempdir");
        let mut s = RedisServer {
            child: None,
            dir,
            port: 0,
            tls_port: 0,
            opts,
        };
        if s.opts.tls || s.opts.tls_only {
            s.make_certs();
        }
        // A port picked free may be taken before the server binds it: retry.
        let attempts = if port.is_some() { 1 } else { 5 };
        for _ in 0..attempts {
            if s.launch(port) {
                return s;
            }
        }
        panic!("redis-server did not start:\n{}", s.log());
    }

    fn make_certs(&self) {
        let d = self.dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=interceptor test redis CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\nkeyUsage = digitalSignature, keyEncipherment\nextendedKeyUsage = serverAuth\n",
        )
        .expect("write ext.cnf");
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.crt",
            ],
        );
    }

    /// The server's CA certificate (PEM).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn launch(&mut self, port: Option<u16>) -> bool {
        let tls = self.opts.tls || self.opts.tls_only;
        self.port = if self.opts.tls_only {
            0
        } else {
            port.unwrap_or_else(free_port)
        };
        self.tls_port = if tls { free_port() } else { 0 };
        let d = self.dir.path().to_path_buf();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(&d)
            .arg("--logfile")
            .arg(self.log_path());
        if let Some(p) = &self.opts.password {
            cmd.args(["--requirepass", p]);
        }
        cmd.args(&self.opts.args);
        if tls {
            cmd.args(["--tls-port", &self.tls_port.to_string()])
                .arg("--tls-cert-file")
                .arg(d.join("server.crt"))
                .arg("--tls-key-file")
                .arg(d.join("server.key"))
                .arg("--tls-ca-cert-file")
                .arg(d.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let port = if self.port != 0 {
            self.port
        } else {
            self.tls_port
        };
        while Instant::now() < deadline {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(_)) = c.try_wait() {
                    self.child = None;
                    return false;
                }
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let out = self.cli(&["PING"]).output().expect("redis-cli");
                if String::from_utf8_lossy(&out.stdout).contains("PONG") {
                    return true;
                }
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.stop();
        false
    }

    /// The address clients dial: the plain port, or the TLS port when the
    /// server is TLS only.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.client_port())
    }

    pub fn client_port(&self) -> u16 {
        if self.port != 0 {
            self.port
        } else {
            self.tls_port
        }
    }

    /// redis-cli straight to the server (outside any test cgroup), with the
    /// password and TLS options it needs.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.client_port().to_string()]);
        if self.port == 0 {
            cmd.arg("--tls").arg("--cacert").arg(self.ca_path());
        }
        if let Some(p) = &self.opts.password {
            cmd.args(["--no-auth-warning", "-a", p]);
        }
        cmd.args(args);
        cmd
    }

    /// Runs one command directly; its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        let out = self.cli(args).output().expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The seed data (see the module docs).
    pub fn seed(&self) {
        self.run(&["FLUSHALL"]);
        self.run(&["SET", "secret:db", SECRET_DB]);
        self.run(&["SET", "secret:api", SECRET_API]);
        self.run(&[
            "HSET",
            "secret:creds",
            "user",
            CREDS_USER,
            "pass",
            CREDS_PASS,
        ]);
        self.run(&["SET", "public:greeting", GREETING]);
        self.run(&["SET", "public:leak", &format!("key={AWS_KEY}")]);
        self.run(&["RPUSH", "public:list", "a", "b", "c"]);
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            crate::stop_child(&mut child, libc::SIGTERM, Duration::from_secs(5));
        }
    }
}

impl RedisServer {
    /// What it takes to stop this server later by pid (see [`crate::Kept`]).
    pub fn record(&self) -> crate::Kept {
        let exe = std::fs::read_link(format!(
            "/proc/{}/exe",
            self.child.as_ref().map_or(0, |c| c.id())
        ))
        .unwrap_or_default();
        crate::Kept::of(
            "redis-server",
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).exists()))
}
