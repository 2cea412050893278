//! The audit trail end to end: real daemon, real sessions, Parquet read by
//! DuckDB and pyarrow, crashes, a damaged journal, a full filesystem, and
//! secrets that must not appear.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    thread,
};

use interceptor_tests::*;
use serde_json::Value;

/// A server that reads one line (the client's token), remembers it, answers
/// "ok" and closes: it knows exactly which sessions reached it.
fn token_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let seen = seen2.clone();
            thread::spawn(move || {
                let mut line = String::new();
                let mut r = BufReader::new(conn.try_clone().expect("clone"));
                if r.read_line(&mut line).is_ok() && line.ends_with('\n') {
                    seen.lock().expect("lock").push(line.trim().to_string());
                    let _ = conn.write_all(b"ok\n");
                }
            });
        }
    });
    (port, seen)
}

fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out
}

fn python(code: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed (DuckDB and pyarrow come from `cargo xtask setup`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn duckdb_and_pyarrow_read_the_dataset_with_the_designed_schema() {
    require_root();
    let cg = TestCgroup::new("parquet");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let d = Daemon::start(
        "parquet",
        &cg,
        921,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
    );
    let results = d.client(&[
        "--port",
        &echo.port.to_string(),
        "--conns",
        "5",
        "--size",
        "1000",
    ]);
    assert!(results.iter().all(went_through_proxy));
    d.wait_sessions_closed();
    let msg = d.flush();
    assert!(msg.contains("5 sessions"), "{msg}");
    let audit = d.audit_dir();
    let code = r#"
import sys, json, duckdb, pyarrow.dataset as ds
audit = sys.argv[1]
con = duckdb.connect()
out = {}
for name in ("sessions", "events"):
    rel = con.sql(f"SELECT * FROM read_parquet('{audit}/{name}/**/*.parquet', hive_partitioning=true)")
    out[name + "_duckdb"] = [[c, str(t)] for c, t in zip(rel.columns, rel.types)]
    out[name + "_rows"] = con.execute(f"SELECT count(*) FROM read_parquet('{audit}/{name}/**/*.parquet', hive_partitioning=true)").fetchall()[0][0]
    t = ds.dataset(f"{audit}/{name}", format="parquet", partitioning="hive").to_table()
    out[name + "_arrow"] = [[f.name, str(f.type)] for f in t.schema]
out["by_pid"] = con.execute(f"SELECT pid, count(*) FROM read_parquet('{audit}/sessions/**/*.parquet', hive_partitioning=true) GROUP BY pid").fetchall()
print(json.dumps(out))
"#;
    let out: Value =
        serde_json::from_str(&python(code, &[audit.to_str().expect("path")])).expect("json");
    assert_eq!(out["sessions_rows"], 5, "{out}");
    assert_eq!(
        out["events_rows"], 5,
        "one TCP command event per tcp session: {out}"
    );
    let cols = |key: &str| -> Vec<(String, String)> {
        out[key]
            .as_array()
            .expect("columns")
            .iter()
            .map(|c| {
                (
                    c[0].as_str().unwrap_or_default().to_string(),
                    c[1].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    let session_names: Vec<String> = cols("sessions_duckdb").into_iter().map(|c| c.0).collect();
    let expected_sessions = "session_id host started_at ended_at store protocol client_addr original_dst upstream_addr pid ppid uid gid comm exe cmdline cgroup unit ci_job client_tls upstream_tls db_user database bytes_up bytes_down commands denied masked_values end_reason dt";
    assert_eq!(session_names.join(" "), expected_sessions);
    let event_names: Vec<String> = cols("events_duckdb").into_iter().map(|c| c.0).collect();
    let expected_events = "event_id session_id seq ts duration_us host store protocol pid uid unit command statement target decision rule approval_id approver rows masked_values error bytes_up bytes_down dt";
    assert_eq!(event_names.join(" "), expected_events);
    let types: HashMap<String, String> = cols("sessions_duckdb").into_iter().collect();
    assert_eq!(types["started_at"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(types["pid"], "BIGINT");
    assert_eq!(types["client_tls"], "BOOLEAN");
    let etypes: HashMap<String, String> = cols("events_duckdb").into_iter().collect();
    assert_eq!(etypes["ts"], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(etypes["decision"], "VARCHAR");
    let arrow: HashMap<String, String> = cols("sessions_arrow").into_iter().collect();
    assert_eq!(arrow["started_at"], "timestamp[us, tz=UTC]");
    assert_eq!(arrow["bytes_up"], "int64");
    // Every session belongs to the one client process.
    assert_eq!(out["by_pid"].as_array().map(|a| a.len()), Some(1), "{out}");
    assert_eq!(out["by_pid"][0][0], results[0]["pid"]);

    // The analyst CLI reads the same files.
    let sessions = d.audit_rows("sessions", &["--store", "echo"]);
    assert_eq!(sessions.len(), 5);
    assert!(
        sessions
            .iter()
            .all(|s| s["bytes_up"] == 1000 && s["end_reason"] == "closed"),
        "{sessions:?}"
    );
    let events = d.audit_rows("events", &["--decision", "allow"]);
    assert_eq!(events.len(), 5);
    assert!(events
        .iter()
        .all(|e| e["command"] == "TCP" && e["target"] == format!("127.0.0.1:{}", echo.port)));
    let sid = sessions[0]["session_id"].as_str().expect("id");
    let replay = d.cli(&["replay", sid]);
    let text = String::from_utf8_lossy(&replay.stdout);
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    assert!(
        text.contains(sid) && text.contains("TCP") && text.contains("allow"),
        "{text}"
    );
    let csv = d.cli(&["audit", "sessions", "--format", "csv"]);
    assert_eq!(
        String::from_utf8_lossy(&csv.stdout).lines().count(),
        6,
        "header + 5 rows"
    );
    let none = d.cli(&["replay", "00000000-0000-0000-0000-000000000000"]);
    assert!(!none.status.success());

    // SIGTERM rolls what is journaled: the sixth session is there without a flush.
    let mut d = d;
    assert!(went_through_proxy(
        &d.client(&["--port", &echo.port.to_string()])[0]
    ));
    assert!(d.terminate().success());
    let out = Command::new(bin())
        .args(["audit", "sessions", "--format", "json", "--dir"])
        .arg(d.audit_dir())
        .output()
        .expect("audit sessions --dir");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        6,
        "{out:?}"
    );
}

#[test]
fn kill9_during_a_stream_of_sessions_loses_and_duplicates_nothing() {
    require_root();
    let cg = TestCgroup::new("crash");
    let (port, seen) = token_server();
    let mut d = Daemon::prepare(
        "crash",
        &cg,
        922,
        &[tcp_store("tokens", &[format!("127.0.0.1:{port}")])],
        "[audit]\nflush_interval = \"1s\"\n",
    );
    d.spawn();
    let script = workspace_root().join("tests/scripts/token_loop.py");
    let stop = d.dir.path().join("stop-loop");
    let progress = d.dir.path().join("loop-progress.json");
    let looper = d
        .exec(&[
            PYTHON,
            script.to_str().expect("path"),
            &port.to_string(),
            stop.to_str().expect("path"),
            progress.to_str().expect("path"),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("loop");
    // (ok, failed) so far, as the loop last wrote them.
    let counts_so_far = || -> Option<(u64, u64)> {
        let v: Value = serde_json::from_slice(&fs::read(&progress).ok()?).ok()?;
        Some((v["ok"].as_u64()?, v["failed"].as_u64()?))
    };
    let progress_text = || fs::read_to_string(&progress).unwrap_or_default();
    // The loop is well under way through the daemon...
    wait_for(
        || format!("30 sessions before the kill: {}", progress_text()),
        || counts_so_far().filter(|c| c.0 >= 30),
    );
    d.kill9();
    // ... sees the dead daemon (its connects are refused) ...
    let (_, failed_at_kill) = counts_so_far().expect("loop progress");
    wait_for(
        || format!("a refused session after the kill: {}", progress_text()),
        || counts_so_far().filter(|c| c.1 > failed_at_kill),
    );
    d.spawn();
    // ... and goes on through the restarted one.
    let (ok_at_restart, _) = counts_so_far().expect("loop progress");
    wait_for(
        || format!("30 sessions after the restart: {}", progress_text()),
        || counts_so_far().filter(|c| c.0 >= ok_at_restart + 30),
    );
    fs::write(&stop, b"").expect("stop the loop");
    let out = looper.wait_with_output().expect("loop");
    assert!(out.status.success(), "loop: {out:?}");
    let counts: Value = serde_json::from_slice(&out.stdout).expect("counts");
    assert!(counts["ok"].as_u64().unwrap_or(0) > 50, "{counts}");
    d.wait_sessions_closed();
    d.flush();

    let sessions = d.audit_rows("sessions", &[]);
    let events = d.audit_rows("events", &[]);
    let ids: HashSet<&str> = sessions
        .iter()
        .filter_map(|s| s["session_id"].as_str())
        .collect();
    assert_eq!(ids.len(), sessions.len(), "a session appears twice");
    let eids: HashSet<&str> = events
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(eids.len(), events.len(), "an event appears twice");
    let mut by_addr: HashMap<String, usize> = HashMap::new();
    for s in &sessions {
        *by_addr
            .entry(s["client_addr"].as_str().unwrap_or_default().to_string())
            .or_default() += 1;
    }
    let reached = seen.lock().expect("lock").clone();
    let mut reached_by_addr: HashMap<String, usize> = HashMap::new();
    for t in &reached {
        *reached_by_addr.entry(t.clone()).or_default() += 1;
    }
    for (addr, n) in &reached_by_addr {
        let recorded = by_addr.get(addr).copied().unwrap_or(0);
        assert!(
            recorded >= *n,
            "a session from {addr} reached the server {n}x but is recorded {recorded}x"
        );
    }
    let interrupted = sessions
        .iter()
        .filter(|s| {
            s["end_reason"]
                .as_str()
                .unwrap_or_default()
                .starts_with("interrupted")
        })
        .count();
    assert!(reached.len() as u64 >= counts["ok"].as_u64().unwrap_or(0));
    eprintln!(
        "{} sessions reached the server, {} recorded ({} interrupted by the kill), {} events",
        reached.len(),
        sessions.len(),
        interrupted,
        events.len()
    );
    // No half-written file is visible to a glob, and every file is whole.
    let files = parquet_files(&d.audit_dir());
    assert!(!files.is_empty());
    let code =
        "import sys, pyarrow.parquet as pq\nfor f in sys.argv[1:]: pq.read_table(f)\nprint('ok')";
    let args: Vec<&str> = files.iter().map(|p| p.to_str().expect("path")).collect();
    assert_eq!(python(code, &args).trim(), "ok");
}

fn segments(state: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(state.join("journal"))
        .expect("journal dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    v.sort();
    v
}

/// The largest journal segment (the one the sessions went to).
fn biggest_segment(state: &Path) -> PathBuf {
    segments(state)
        .into_iter()
        .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a journal segment")
}

#[test]
fn a_torn_or_flipped_journal_is_reported_and_every_intact_record_kept() {
    require_root();
    let cg = TestCgroup::new("journal");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let mut d = Daemon::prepare(
        "journal",
        &cg,
        923,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
        "[audit]\nflush_interval = \"1h\"\n",
    );
    d.spawn();
    let port = echo.port.to_string();

    // Torn tail: the last record loses its end.
    for _ in 0..6 {
        assert!(went_through_proxy(&d.client(&["--port", &port])[0]));
    }
    d.wait_sessions_closed();
    d.kill9();
    let seg = biggest_segment(&d.state_dir());
    let len = fs::metadata(&seg).expect("segment").len();
    let f = fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .expect("open segment");
    f.set_len(len - 10).expect("truncate");
    drop(f);
    d.spawn();
    assert!(
        d.log_text().contains("torn tail"),
        "the damage is not reported:\n{}",
        d.log_text()
    );
    d.flush();
    let sessions = d.audit_rows("sessions", &[]);
    assert_eq!(
        sessions.len(),
        6,
        "every session survives a torn tail: {sessions:?}"
    );
    assert_eq!(
        sessions
            .iter()
            .filter(|s| s["end_reason"] == "closed")
            .count(),
        5,
        "only the last session lost its close record"
    );

    // A flipped byte in the middle of a segment.
    for _ in 0..6 {
        assert!(went_through_proxy(&d.client(&["--port", &port])[0]));
    }
    d.wait_sessions_closed();
    d.kill9();
    let seg = biggest_segment(&d.state_dir());
    let mut bytes = fs::read(&seg).expect("segment");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x5a;
    fs::write(&seg, &bytes).expect("write segment");
    d.spawn();
    let log = d.log_text();
    assert!(
        log.contains("audit journal damage"),
        "the damage is not reported:\n{log}"
    );
    d.flush();
    let sessions = d.audit_rows("sessions", &[]);
    assert_eq!(
        sessions.len(),
        12,
        "a flipped byte costs at most the record it hits: {sessions:?}"
    );
    let ids: HashSet<&str> = sessions
        .iter()
        .filter_map(|s| s["session_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 12);
}

struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(path).expect("mountpoint");
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .expect("mount");
        assert!(st.success(), "mounting a tmpfs needs root");
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the filesystem holding `dir` until a write fails.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    filler
}

fn try_session(d: &Daemon, port: u16) -> String {
    let code = format!(
        "import socket\ns=socket.socket()\ns.settimeout(30)\ns.connect(('127.0.0.1',{port}))\ntry:\n  d=s.recv(64)\n  print('data' if d else 'eof')\nexcept ConnectionResetError:\n  print('reset')"
    );
    let out = d.exec(&[PYTHON, "-c", &code]).output().expect("client");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn a_full_filesystem_blocks_commands_and_the_daemon_recovers() {
    require_root();
    let cg = TestCgroup::new("fullfs");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let mut d = Daemon::prepare(
        "fullfs",
        &cg,
        924,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
        "[audit]\non_failure = \"block\"\nflush_interval = \"1h\"\n",
    );
    let _fs = Tmpfs::mount(&d.state_dir(), "1m");
    d.spawn();
    assert_eq!(try_session(&d, echo.port), "data");
    // Its close is journaled before the filesystem fills up.
    d.wait_sessions_closed();
    let filler = fill(&d.state_dir());
    let accepted = echo.accepted();
    let mut refused = 0;
    // The journal may still fit a record or two in a partly used page.
    for _ in 0..20 {
        if try_session(&d, echo.port) != "data" {
            refused += 1;
        }
    }
    assert!(
        refused >= 15,
        "sessions were forwarded with no room to record them ({refused} refused)"
    );
    assert!(echo.accepted() - accepted <= 5);
    let st = d.status();
    assert_eq!(st["daemon"]["audit"]["recorder"]["failing"], true, "{st}");
    assert!(d.log_text().contains("cannot write the audit journal"));

    fs::remove_file(&filler).expect("free space");
    assert_eq!(
        try_session(&d, echo.port),
        "data",
        "the daemon did not recover once space returned"
    );
    assert_eq!(d.status()["daemon"]["audit"]["recorder"]["failing"], false);
    d.wait_sessions_closed();
    d.flush();
    let sessions = d.audit_rows("sessions", &[]);
    assert!(
        sessions
            .iter()
            .filter(|s| s["end_reason"] == "closed")
            .count()
            >= 2,
        "{sessions:?}"
    );
    let refused_rows = sessions
        .iter()
        .filter(|s| {
            s["end_reason"]
                .as_str()
                .unwrap_or_default()
                .starts_with("refused")
        })
        .count();
    eprintln!(
        "{refused} sessions refused while full; {refused_rows} of them recorded after recovery"
    );
}

#[test]
fn no_secret_reaches_the_parquet_files() {
    require_root();
    let cg = TestCgroup::new("secrets");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let d = Daemon::start(
        "secrets",
        &cg,
        925,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
    );
    let script = client_script();
    let out = d
        .exec(&[
            PYTHON,
            script.to_str().expect("path"),
            "--port",
            &echo.port.to_string(),
            "--label",
            "postgresql://app:hunter2-url-secret@db.internal/ci",
            "--label=password=pw-secret-conninfo",
        ])
        .env("SECRET_TOKEN", "env-secret-token-77")
        .env("GITHUB_RUN_ID", "777")
        .output()
        .expect("client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.wait_sessions_closed();
    d.flush();
    let secrets = [
        "hunter2-url-secret",
        "pw-secret-conninfo",
        "env-secret-token-77",
    ];
    for f in parquet_files(&d.audit_dir()) {
        let bytes = fs::read(&f).expect("read parquet");
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "{s} in the raw bytes of {}",
                f.display()
            );
        }
    }
    let sessions = d.audit_rows("sessions", &[]);
    assert_eq!(sessions.len(), 1);
    let row = sessions[0].to_string();
    for s in secrets {
        assert!(!row.contains(s), "{s} in a column: {row}");
    }
    // The investigator can still find where the secret was used.
    let hash = d.cli(&["audit", "hash", "hunter2-url-secret"]);
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
    assert!(hash.starts_with("hmac:"), "{hash}");
    assert!(
        sessions[0]["cmdline"]
            .as_str()
            .unwrap_or_default()
            .contains(&hash),
        "{row}"
    );
    assert!(sessions[0]["ci_job"]
        .as_str()
        .unwrap_or_default()
        .contains("777"));
}

#[test]
fn a_client_that_vanishes_mid_session_is_recorded_with_its_bytes() {
    require_root();
    let cg = TestCgroup::new("vanish");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let d = Daemon::start(
        "vanish",
        &cg,
        926,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
    );
    // Send 5000 bytes, read their echo (they all crossed the proxy), then
    // reset the connection instead of closing it.
    let code = format!(
        "import socket, struct\ns=socket.socket()\ns.settimeout(30)\ns.connect(('127.0.0.1',{}))\nf=s.makefile('rb')\nf.readline()\ns.sendall(b'x'*5000)\nassert f.read(5000)==b'x'*5000\nf.close()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\ns.close()",
        echo.port
    );
    let out = d.exec(&[PYTHON, "-c", &code]).output().expect("client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The daemon notices the reset, closes the session and keeps serving.
    d.wait_sessions_closed();
    assert!(went_through_proxy(
        &d.client(&["--port", &echo.port.to_string()])[0]
    ));
    d.wait_sessions_closed();
    d.flush();
    let sessions = d.audit_rows("sessions", &[]);
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    let vanished = sessions
        .iter()
        .find(|s| s["bytes_up"] == 5000)
        .unwrap_or_else(|| {
            panic!("no session with the 5000 bytes sent before the reset: {sessions:?}")
        });
    assert!(vanished["ended_at"].is_string(), "{vanished}");
    let events = d.audit_rows("events", &[]);
    assert!(events.iter().any(|e| e["bytes_up"] == 5000), "{events:?}");
}
