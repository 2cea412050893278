//! Harness for the integration tests: a child cgroup made for the test, a
//! real daemon process on its own listener port and bpffs directory, real
//! servers on loopback, and clients that know nothing of interceptor.
//!
//! These tests need root and a real kernel. They never skip: without root
//! they fail and say why.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod bao;
pub mod conformance;
pub mod pg;
pub mod redis;

pub const PYTHON: &str = "/usr/bin/python3";

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the integration tests attach eBPF programs and create cgroups: run them as root (`sudo cargo xtask test`)"
    );
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// Where the interceptor binary under test is, whether or not it exists.
fn bin_path() -> PathBuf {
    std::env::var_os("INTERCEPTOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/interceptor"))
}

/// The interceptor binary under test (`INTERCEPTOR_BIN`, set by `cargo xtask test`).
pub fn bin() -> PathBuf {
    let path = bin_path();
    assert!(
        path.exists(),
        "{} does not exist: build it with `cargo build -p interceptor` or run `cargo xtask test`",
        path.display()
    );
    path
}

pub fn client_script() -> PathBuf {
    workspace_root().join("tests/scripts/client.py")
}

/// A finished command's status and output, for assertion messages.
pub fn output_text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The stdout of a command that must have succeeded; otherwise fails with
/// its output and the daemon's log.
pub fn expect_success(out: Output, what: &str, d: &Daemon) -> String {
    assert!(
        out.status.success(),
        "{what} failed:\n{}\ndaemon log:\n{}",
        output_text(&out),
        d.log_text()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file under `dir`.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A server left running on purpose (`cargo xtask demo --keep`), to be
/// stopped later by pid: [`Kept::stop`] signals it only while that pid is
/// still the program that was started.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Kept {
    pub what: String,
    pub pid: u32,
    /// The executable the pid must still be running.
    pub exe: PathBuf,
    pub stop_signal: i32,
    /// Its data directory, removed once it has stopped.
    pub dir: Option<PathBuf>,
}

impl Kept {
    /// The record of a server started as `child`, whose files are in `dir`.
    pub fn of(
        what: &str,
        child: Option<&Child>,
        exe: PathBuf,
        stop_signal: i32,
        dir: &Path,
    ) -> Kept {
        Kept {
            what: what.into(),
            pid: child.map_or(0, Child::id),
            exe,
            stop_signal,
            dir: Some(dir.to_path_buf()),
        }
    }

    /// What a server handle's `keep` does: forget the child (dropping a
    /// `Child` does not stop it) and keep the directory on disk.
    pub fn release(child: &mut Option<Child>, dir: &mut tempfile::TempDir) {
        *child = None;
        let placeholder = tempfile::tempdir().expect("placeholder tempdir");
        let _ = std::mem::replace(dir, placeholder).keep();
    }

    /// Whether `pid` is still the process that was started (not a reused pid).
    pub fn running(&self) -> bool {
        self.pid != 0
            && fs::read_link(format!("/proc/{}/exe", self.pid))
                .is_ok_and(|exe| same_executable(&exe, &self.exe))
    }

    /// Signals it, waits up to 15 s for it to go (then SIGKILL), removes its directory.
    pub fn stop(&self) {
        if self.running() {
            let pid = self.pid as i32;
            // SAFETY: kill(2) of the process recorded when it was started,
            // checked above to still be running the same executable.
            unsafe { libc::kill(pid, self.stop_signal) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while self.running() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(50));
            }
            if self.running() {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(dir) = &self.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Sends `signal` to a child the harness started, gives it `grace` to
/// exit, then SIGKILLs it; always reaps it.
pub fn stop_child(child: &mut Child, signal: i32, grace: Duration) {
    // SAFETY: kill(2) of a process this harness (or the demo, or the bench)
    // spawned and has not reaped yet, so its pid cannot have been reused.
    unsafe { libc::kill(child.id() as i32, signal) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Polls `probe` every 20 ms until it yields a value; after 30 s panics
/// with `what()`. For waiting on the state a test reads, never on a time.
pub fn wait_for<T>(what: impl Fn() -> String, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within 30 s: {}", what());
        thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `/proc/PID/exe` (`link`) is `exe`. A binary replaced since the
/// process started (a rebuild) reads `PATH (deleted)`: still the same program.
fn same_executable(link: &Path, exe: &Path) -> bool {
    let link = link.to_string_lossy();
    let link = Path::new(link.strip_suffix(" (deleted)").unwrap_or(&link));
    link == exe || (link.file_name().is_some() && link.file_name() == exe.file_name())
}

/// The cgroup v2 mount, found the way the daemon finds it.
fn cgroup2_mount() -> PathBuf {
    interceptor::redirect::cgroup::cgroup2_mount().expect("a cgroup v2 mount")
}

/// A child cgroup made for one test, removed (with any process left in it,
/// all of which the test started) on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let path = cgroup2_mount().join(format!("interceptor-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir(&path);
        fs::create_dir(&path).unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        TestCgroup { path }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        remove_cgroup(&self.path);
    }
}

/// Kills what the test left in a cgroup (every process there is the test's)
/// and removes it, children first.
fn remove_cgroup(path: &Path) {
    if let Ok(entries) = fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    for _ in 0..50 {
        if let Ok(procs) = fs::read_to_string(path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: plain kill(2) of a process this test started in its own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if fs::remove_dir(path).is_ok() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A TCP server on loopback: first sends `peer=<address it saw>\n`, then
/// echoes everything until the client half-closes, then closes.
pub struct EchoServer {
    pub port: u16,
    pub accepted: Arc<AtomicUsize>,
}

impl EchoServer {
    /// Listens on `ip:port` for every ip given (port 0 = pick one, shared by all).
    pub fn start(ips: &[&str]) -> Self {
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut port = 0u16;
        for ip in ips {
            let addr: SocketAddr = format!("{}:{port}", bracket(ip)).parse().expect("address");
            let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
            port = listener.local_addr().expect("local addr").port();
            let accepted = accepted.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    let Ok(mut conn) = conn else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    thread::spawn(move || {
                        let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                        if conn.write_all(format!("peer={peer}\n").as_bytes()).is_err() {
                            return;
                        }
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if conn.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = conn.shutdown(std::net::Shutdown::Write);
                    });
                }
            });
        }
        EchoServer { port, accepted }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A minimal HTTP/1.1 server for curl: answers every request with the peer
/// address it saw.
pub fn http_server(ip: &str) -> u16 {
    let listener = TcpListener::bind(format!("{}:0", bracket(ip))).expect("bind http");
    let port = listener.local_addr().expect("addr").port();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            thread::spawn(move || {
                let peer = conn.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok() {
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    line.clear();
                }
                let body = format!("hello from http, peer={peer}\n");
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    port
}

pub fn bracket(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

/// One `[[store]]` of the test config.
pub struct Store {
    pub name: String,
    pub protocol: String,
    pub targets: Vec<String>,
}

pub fn tcp_store(name: &str, targets: &[String]) -> Store {
    Store {
        name: name.into(),
        protocol: "tcp".into(),
        targets: targets.to_vec(),
    }
}

/// One store of [`default_policy_text`] pointed at a test's server.
pub struct StoreAt<'a> {
    /// The store's name in policies/default.toml (`postgres`, `redis`, `vault`).
    pub store: &'a str,
    /// Its only target.
    pub target: String,
    /// TOML `key = value` lines merged into the store (e.g. `upstream_tls`).
    pub extra: &'a str,
}

/// `store` pointed at `target`, nothing else changed.
pub fn store_at(store: &str, target: impl Into<String>) -> StoreAt<'_> {
    StoreAt {
        store,
        target: target.into(),
        extra: "",
    }
}

/// `policies/default.toml` as shipped (every rule and mask), edited as TOML:
/// the daemon's cgroup, listener, state, control socket and bpffs moved to a
/// test's own; the stores named in `stores` pointed at the test's servers
/// (with their `extra` keys), the others at addresses nothing listens on;
/// the `[[rule]]` and `[[mask]]` tables of `first` placed before the shipped
/// ones (rules are checked in order); the audit journal rolled only on flush.
pub fn default_policy_text(
    cgroup: &str,
    listen_port: u16,
    bpffs: &Path,
    dir: &Path,
    stores: &[StoreAt<'_>],
    first: &str,
) -> String {
    let path = workspace_root().join("policies/default.toml");
    let text = fs::read_to_string(&path).expect("read policies/default.toml");
    let mut v: toml::Table = toml::from_str(&text).expect("policies/default.toml is TOML");
    let mut table = |key: &str, edit: &dyn Fn(&mut toml::Table)| {
        let t = v
            .get_mut(key)
            .and_then(|t| t.as_table_mut())
            .unwrap_or_else(|| panic!("policies/default.toml has no [{key}]"));
        edit(t);
    };
    table("daemon", &|t| {
        for (key, value) in [
            ("cgroup", cgroup.to_string()),
            ("listen", format!("127.0.0.1:{listen_port}")),
            ("state_dir", dir.join("state").display().to_string()),
            (
                "control_socket",
                dir.join("control.sock").display().to_string(),
            ),
            ("bpffs", bpffs.display().to_string()),
        ] {
            t.insert(key.into(), toml::Value::String(value));
        }
    });
    table("audit", &|t| {
        t.insert("flush_interval".into(), toml::Value::String("1h".into()));
    });
    let shipped = v
        .get_mut("store")
        .and_then(|s| s.as_array_mut())
        .expect("policies/default.toml has [[store]]s");
    for (i, store) in shipped.iter_mut().enumerate() {
        let t = store.as_table_mut().expect("a [[store]] is a table");
        let name = t
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let at = stores.iter().find(|s| s.store == name.as_str());
        let target = at.map_or_else(|| format!("127.0.0.1:{}", i + 1), |s| s.target.clone());
        t.insert(
            "targets".into(),
            toml::Value::Array(vec![toml::Value::String(target)]),
        );
        if let Some(at) = at {
            let extra: toml::Table = toml::from_str(at.extra)
                .unwrap_or_else(|e| panic!("extra keys for store {name}: {e}"));
            t.extend(extra);
        }
    }
    for s in stores {
        assert!(
            shipped
                .iter()
                .any(|t| t.get("name").and_then(|n| n.as_str()) == Some(s.store)),
            "policies/default.toml has no store {}",
            s.store
        );
    }
    let first: toml::Table = toml::from_str(first).expect("`first` is TOML");
    for (key, value) in first {
        let toml::Value::Array(mut tables) = value else {
            panic!("`first` may only hold [[rule]] and [[mask]] tables, not {key}");
        };
        assert!(key == "rule" || key == "mask", "`first` holds [[{key}]]");
        if let Some(toml::Value::Array(shipped)) = v.remove(&key) {
            tables.extend(shipped);
        }
        v.insert(key, toml::Value::Array(tables));
    }
    toml::to_string(&v).expect("serialize the config")
}

/// A real `interceptor run` process with its own config, listener port,
/// bpffs directory and control socket. Dropping it kills the daemon and
/// detaches its pins.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub log: PathBuf,
    pub listen_port: u16,
    pub bpffs: PathBuf,
    starts: usize,
}

impl Daemon {
    pub fn config_text(
        cgroup: &Path,
        listen_port: u16,
        bpffs: &Path,
        dir: &Path,
        stores: &[Store],
    ) -> String {
        let mut text = format!(
            "[daemon]\ncgroup = \"{}\"\nlisten = \"127.0.0.1:{listen_port}\"\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\nbpffs = \"{}\"\n",
            cgroup.display(),
            dir.join("state").display(),
            dir.join("control.sock").display(),
            bpffs.display()
        );
        for s in stores {
            let targets: Vec<String> = s.targets.iter().map(|t| format!("\"{t}\"")).collect();
            text.push_str(&format!(
                "\n[[store]]\nname = \"{}\"\nprotocol = \"{}\"\ntargets = [{}]\n",
                s.name,
                s.protocol,
                targets.join(", ")
            ));
        }
        text
    }

    /// Writes the config and starts the daemon; returns once it is ready.
    pub fn start(name: &str, cgroup: &TestCgroup, listen_port: u16, stores: &[Store]) -> Self {
        let mut d = Self::prepare(name, cgroup, listen_port, stores, "");
        d.spawn();
        d
    }

    /// Writes the config (with `extra` TOML appended, e.g. an `[audit]`
    /// table) without starting the daemon: call [`Daemon::spawn`].
    pub fn prepare(
        name: &str,
        cgroup: &TestCgroup,
        listen_port: u16,
        stores: &[Store],
        extra: &str,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let bpffs = PathBuf::from(format!(
            "/sys/fs/bpf/interceptor-test-{name}-{}",
            std::process::id()
        ));
        let config = dir.path().join("interceptor.toml");
        let mut text = Self::config_text(&cgroup.path, listen_port, &bpffs, dir.path(), stores);
        text.push('\n');
        text.push_str(extra);
        fs::write(&config, text).expect("write config");
        let log = dir.path().join("daemon.log");
        Daemon {
            child: None,
            dir,
            config,
            log,
            listen_port,
            bpffs,
            starts: 0,
        }
    }

    /// A daemon with [`default_policy_text`] (policies/default.toml, every
    /// rule and mask) serving `stores`, with the rules and masks of `first`
    /// before the shipped ones. Not started: call [`Daemon::spawn`].
    pub fn prepare_default_policy(
        name: &str,
        cgroup: &TestCgroup,
        listen_port: u16,
        stores: &[StoreAt<'_>],
        first: &str,
    ) -> Self {
        let d = Self::prepare(name, cgroup, listen_port, &[], "");
        let cgroup = cgroup.path.display().to_string();
        let text = default_policy_text(&cgroup, listen_port, &d.bpffs, d.dir.path(), stores, first);
        fs::write(&d.config, text).expect("write config");
        d
    }

    /// [`Daemon::prepare_default_policy`] without extra rules, started.
    pub fn with_default_policy(
        name: &str,
        cgroup: &TestCgroup,
        listen_port: u16,
        stores: &[StoreAt<'_>],
    ) -> Self {
        let mut d = Self::prepare_default_policy(name, cgroup, listen_port, stores, "");
        d.spawn();
        d
    }

    /// `daemon.state_dir` of this daemon.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `daemon.audit_dir` of this daemon (the default, under state_dir).
    pub fn audit_dir(&self) -> PathBuf {
        self.state_dir().join("audit")
    }

    /// `interceptor audit flush`; panics unless the daemon answers.
    pub fn flush(&self) -> String {
        let out = self.cli(&["audit", "flush"]);
        assert!(
            out.status.success(),
            "audit flush failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Rows of `interceptor audit sessions|events --format json`.
    /// `sessions` or `events` of one store, after flushing the journal.
    pub fn flushed_rows(&self, what: &str, store: &str) -> Vec<Value> {
        self.flush();
        self.audit_rows(what, &["--store", store])
    }

    pub fn audit_rows(&self, what: &str, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["audit", what, "--format", "json"];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert!(
            out.status.success(),
            "audit {what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("audit {what} line {l:?}: {e}"))
            })
            .collect()
    }

    /// Starts (or restarts) the daemon process and waits for "ready".
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "daemon already running");
        self.starts += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("INTERCEPTOR_LOG_FORMAT", "json")
            .env("INTERCEPTOR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn interceptor run");
        self.child = Some(child);
        self.wait_ready(self.starts);
    }

    fn wait_ready(&mut self, nth: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = self
                .log_lines()
                .iter()
                .filter(|v| v["message"] == "ready")
                .count();
            if ready >= nth {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "daemon exited during start ({status}):\n{}",
                        self.log_text()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready after 30s:\n{}",
                self.log_text()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: signalling the daemon process this harness started.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("wait daemon")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_lines(&self) -> Vec<Value> {
        self.log_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Session-open events logged by the daemon.
    pub fn sessions_opened(&self) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|v| v["message"] == "session opened")
            .collect()
    }

    pub fn sessions_closed(&self) -> Vec<Value> {
        self.log_lines()
            .into_iter()
            .filter(|v| v["message"] == "session closed")
            .collect()
    }

    /// Waits (up to 30 s) until the daemon has no session open. A client
    /// can see the end of its session, and exit, before the daemon has
    /// journaled the close; and a flush carries open sessions over instead
    /// of writing them to Parquet.
    pub fn wait_sessions_closed(&self) {
        wait_for(
            || {
                format!(
                    "sessions still open: {}\n{}",
                    self.status(),
                    self.log_text()
                )
            },
            || (self.status()["daemon"]["sessions_active"] == 0).then_some(()),
        );
    }

    /// The daemon log says each thing once, and agrees with the audit
    /// trail: one `session opened` and at most one `session closed` line per
    /// session, and one `command denied` line per denied event (naming its
    /// rule). Flushes the journal first; call it after the clients are done.
    pub fn assert_log_lines_once(&self) {
        self.wait_sessions_closed();
        self.flush();
        let sessions = self.audit_rows("sessions", &[]);
        let events: Vec<Value> = self
            .audit_rows("events", &[])
            .into_iter()
            .filter(|e| e["decision"] == "deny")
            .collect();
        let lines = self.log_lines();
        let count = |message: &str, id: &Value| {
            lines
                .iter()
                .filter(|l| l["message"] == message && l["session_id"] == *id)
                .count()
        };
        assert!(!sessions.is_empty(), "no sessions recorded");
        for s in &sessions {
            let id = &s["session_id"];
            assert_eq!(
                count("session opened", id),
                1,
                "session {id} opened lines:\n{}",
                self.log_text()
            );
            let closed = count("session closed", id);
            assert_eq!(
                closed,
                usize::from(s["ended_at"].is_string()),
                "session {id} closed lines:\n{}",
                self.log_text()
            );
        }
        let denials: Vec<&Value> = lines
            .iter()
            .filter(|l| l["message"] == "command denied")
            .collect();
        assert_eq!(
            denials.len(),
            events.len(),
            "one log line per denied event: {events:?}\n{}",
            self.log_text()
        );
        for e in &events {
            assert!(
                denials
                    .iter()
                    .any(|l| l["session_id"] == e["session_id"] && l["rule"] == e["rule"]),
                "no log line for the denial {e}:\n{}",
                self.log_text()
            );
        }
    }

    /// `interceptor exec --config F -- args...`
    pub fn exec(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("exec")
            .arg("--config")
            .arg(&self.config)
            .arg("--")
            .args(args);
        cmd
    }

    /// Runs the python client inside the cgroup; one JSON object per connection.
    pub fn client(&self, args: &[&str]) -> Vec<Value> {
        let script = client_script();
        let mut full = vec![PYTHON, script.to_str().expect("utf-8 path")];
        full.extend_from_slice(args);
        parse_client(self.exec(&full).output().expect("run client"))
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run interceptor")
    }

    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        // Not `bin()`: a drop while unwinding from its panic must not panic
        // again (that aborts, and the servers the test started would leak).
        let _ = Command::new(bin_path())
            .args(["detach", "--config"])
            .arg(&self.config)
            .output();
        let _ = fs::remove_dir_all(&self.bpffs);
    }
}

/// Runs the python client outside any test cgroup.
pub fn client_outside(args: &[&str]) -> Vec<Value> {
    let script = client_script();
    parse_client(
        Command::new(PYTHON)
            .arg(script)
            .args(args)
            .output()
            .expect("run client"),
    )
}

fn parse_client(out: Output) -> Vec<Value> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "client failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("client line {l:?}: {e}")))
        .collect()
}

/// The address the echo server reported seeing, as a string.
pub fn server_saw(result: &Value) -> String {
    result["server_saw"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("peer=")
        .to_string()
}

/// "ip:port" of the client's own socket, formatted like the server's view.
pub fn sockname(result: &Value) -> String {
    let ip = result["sockname"][0].as_str().unwrap_or_default();
    // An AF_INET6 socket on a mapped address is plain IPv4 to the server.
    let ip = ip
        .strip_prefix("::ffff:")
        .filter(|v4| v4.contains('.'))
        .unwrap_or(ip);
    let port = result["sockname"][1].as_u64().unwrap_or_default();
    format!("{}:{port}", bracket(ip))
}

/// Whether the connection reached the server through the proxy: the server
/// saw a peer other than the client's own socket.
pub fn went_through_proxy(result: &Value) -> bool {
    result.get("error").is_none() && server_saw(result) != sockname(result)
}

/// Raw TCP connect from this (test) process, outside the cgroup.
pub fn connect(addr: &str) -> std::io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebuilt_binary_is_still_the_same_executable() {
        let exe = Path::new("/w/target/debug/interceptor");
        assert!(same_executable(exe, exe));
        assert!(same_executable(
            Path::new("/w/target/debug/interceptor (deleted)"),
            exe
        ));
        assert!(same_executable(Path::new("/other/interceptor"), exe));
        assert!(!same_executable(Path::new("/usr/bin/sleep"), exe));
        assert!(!same_executable(Path::new("/usr/bin/sleep (deleted)"), exe));
    }
}
