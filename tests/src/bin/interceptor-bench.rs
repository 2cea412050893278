//! `cargo xtask bench`: the same workloads direct and through the interceptor,
//! in one run, reported side by side as ratios.
//!
//! The orchestrator (no arguments) makes a child cgroup, starts a real daemon
//! (INTERCEPTOR_BIN, release build) and an echo server on loopback, then runs
//! this binary in `client` mode twice per workload: once outside the cgroup
//! (direct) and once through `interceptor exec` (intercepted).

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use interceptor_tests::{bin, require_root, tcp_store, Daemon, EchoServer, TestCgroup};
use serde_json::{json, Value};

struct Workload {
    name: &'static str,
    what: &'static str,
    args: &'static [&'static str],
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "connect",
        what: "connect + first byte + close, sequential (2000)",
        args: &["connect", "2000"],
    },
    Workload {
        name: "rtt",
        what: "64-byte request/response on one connection (20000)",
        args: &["rtt", "20000"],
    },
    Workload {
        name: "stream",
        what: "one connection echoing 256 MiB",
        args: &["stream", "268435456"],
    },
    Workload {
        name: "parallel",
        what: "64 connections each echoing 8 MiB",
        args: &["parallel", "64", "8388608"],
    },
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("client") {
        let out = client(&args[1..]);
        println!("{out}");
        return;
    }
    let only = args.first().map(String::as_str);
    if only.is_none() || only == Some("audit") {
        audit_bench();
    }
    if only != Some("audit") {
        require_root();
        orchestrate(only);
    }
}

/// The audit path on its own: journal appends (the write-before-forward cost
/// per command) and the roller (journal -> Parquet) on one core.
fn audit_bench() {
    use interceptor::audit::{
        journal::{Durability, Journal},
        model::RecordView,
        roller::{RollMode, Roller},
        CommandEvent, Decision, JournalRecord,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let event = |i: u64| CommandEvent {
        event_id: format!("0190f0c4-0000-7000-8000-{i:012}"),
        rev: 1,
        session_id: format!("0190f0c4-0000-7000-9000-{:012}", i / 100),
        seq: i % 100,
        ts: 1_780_000_000_000_000 + i as i64 * 10,
        duration_us: Some(250),
        host: "ci-runner-07".into(),
        store: "ci-db".into(),
        protocol: "postgres".into(),
        pid: 4242,
        uid: 1001,
        unit: Some("gitlab-runner.service".into()),
        command: "SELECT".into(),
        statement: Some(
            "SELECT id, name, email FROM users WHERE org_id = $1 AND active = $2 LIMIT $3".into(),
        ),
        target: Some("public.users".into()),
        decision: Decision::Allow,
        rule: None,
        approval_id: None,
        approver: None,
        rows: Some(10),
        masked_values: 0,
        error: None,
        bytes_up: 120,
        bytes_down: 2048,
        done: true,
    };
    println!("\n{:<44} {:>14}", "audit (one core)", "result");
    let n = 1_000_000u64;
    let journal = std::sync::Arc::new(
        Journal::open(&dir.path().join("journal"), Durability::Batched).expect("journal"),
    );
    let start = Instant::now();
    for i in 0..n {
        let bytes = JournalRecord::Event(event(i)).encode();
        journal.append(&bytes).expect("append");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>12.2} us",
        "encode + journal append per command (batched)",
        secs * 1e6 / n as f64
    );
    println!(
        "{:<44} {:>12.0} /s",
        "journal appends (batched)",
        n as f64 / secs
    );
    // The roller's parts on their own: decoding the journal, writing Parquet.
    let upto = journal.rotate().expect("rotate");
    let segs = journal.read_sealed(upto).expect("read");
    let start = Instant::now();
    let mut decoded = Vec::with_capacity(n as usize);
    for seg in &segs {
        for r in seg.records() {
            if let Some(RecordView::Event(e)) = RecordView::decode(r) {
                decoded.push(e);
            }
        }
    }
    println!(
        "{:<44} {:>12.0} /s",
        "  journal read + decode",
        n as f64 / start.elapsed().as_secs_f64()
    );
    let start = Instant::now();
    let prepared =
        interceptor::audit::parquet::prepare_events(&dir.path().join("scratch"), &decoded)
            .expect("prepare");
    println!(
        "{:<44} {:>12.0} /s",
        "  Parquet build + zstd + write",
        n as f64 / start.elapsed().as_secs_f64()
    );
    drop(prepared);
    drop(decoded);
    drop(segs);
    let roller = Roller::new(journal.clone(), &dir.path().join("audit"), dir.path());
    let start = Instant::now();
    let report = roller.roll(RollMode::Normal).expect("roll");
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(report.events, n as usize);
    println!(
        "{:<44} {:>12.0} /s",
        "roller: journal -> Parquet events",
        n as f64 / secs
    );
    let bytes: u64 = report
        .files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    println!(
        "{:<44} {:>12.1} B",
        "Parquet bytes per event (zstd)",
        bytes as f64 / n as f64
    );

    let strict = Journal::open(&dir.path().join("strict"), Durability::Strict).expect("journal");
    let m = 2000u64;
    let start = Instant::now();
    for i in 0..m {
        strict
            .append(&JournalRecord::Event(event(i)).encode())
            .expect("append");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>12.2} us",
        "encode + journal append per command (strict)",
        secs * 1e6 / m as f64
    );
}

fn orchestrate(only: Option<&str>) {
    let cg = TestCgroup::new("bench");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let d = Daemon::start(
        "bench",
        &cg,
        990,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
    );
    let me = std::env::current_exe().expect("own path");
    let port = echo.port.to_string();
    eprintln!(
        "interceptor: {}  (release build expected for meaningful numbers)",
        bin().display()
    );
    let mut report = Vec::new();
    println!(
        "{:<10} {:<14} {:>14} {:>14} {:>8}",
        "workload", "metric", "direct", "intercepted", "ratio"
    );
    for w in WORKLOADS
        .iter()
        .filter(|w| only.is_none_or(|o| o == w.name))
    {
        eprintln!("==> {}: {}", w.name, w.what);
        let mut client_args = vec!["client".to_string(), port.clone()];
        client_args.extend(w.args.iter().map(|s| s.to_string()));
        let direct = run(Command::new(&me).args(&client_args));
        let mut exec_args = vec![me.to_str().expect("utf-8 path")];
        exec_args.extend(client_args.iter().map(String::as_str));
        let proxied = run(&mut d.exec(&exec_args));
        for (metric, lower_is_better) in metrics(&direct) {
            let a = direct[&metric].as_f64().unwrap_or(f64::NAN);
            let b = proxied[&metric].as_f64().unwrap_or(f64::NAN);
            let ratio = b / a;
            println!(
                "{:<10} {:<14} {:>14.1} {:>14.1} {:>7.2}x",
                w.name, metric, a, b, ratio
            );
            report.push(
                json!({"workload": w.name, "metric": metric, "direct": a, "intercepted": b,
                               "ratio": ratio, "lower_is_better": lower_is_better}),
            );
        }
    }
    let sessions = d.sessions_opened().len();
    eprintln!("sessions recorded by the daemon: {sessions}");
    let out_dir = interceptor_tests::workspace_root().join("target/bench");
    let _ = std::fs::create_dir_all(&out_dir);
    let path = out_dir.join("redirect.json");
    let _ = std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    );
    eprintln!("written {}", path.display());
}

/// Metric names in a client result; `_us` metrics are latencies (lower is better).
fn metrics(v: &Value) -> Vec<(String, bool)> {
    let mut m: Vec<(String, bool)> = v
        .as_object()
        .map(|o| o.keys().map(|k| (k.clone(), k.ends_with("_us"))).collect())
        .unwrap_or_default();
    m.sort();
    m
}

fn run(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("run bench client");
    assert!(
        out.status.success(),
        "bench client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bench client JSON")
}

fn connect(port: u16) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut banner = String::new();
    r.read_line(&mut banner).expect("banner");
    (s, r)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn client(args: &[String]) -> Value {
    let port: u16 = args[0].parse().expect("port");
    let n = |i: usize| -> u64 { args[i].parse().expect("number") };
    match args[1].as_str() {
        "connect" => {
            let count = n(2);
            let mut lat = Vec::with_capacity(count as usize);
            let start = Instant::now();
            for _ in 0..count {
                let t = Instant::now();
                let (s, _r) = connect(port);
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                drop(s);
            }
            let secs = start.elapsed().as_secs_f64();
            lat.sort_by(f64::total_cmp);
            json!({"conns_per_s": count as f64 / secs, "p50_us": percentile(&lat, 0.5), "p99_us": percentile(&lat, 0.99)})
        }
        "rtt" => {
            let count = n(2);
            let (mut s, mut r) = connect(port);
            let msg = [7u8; 64];
            let mut buf = [0u8; 64];
            let mut lat = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let t = Instant::now();
                s.write_all(&msg).expect("write");
                r.read_exact(&mut buf).expect("read");
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat.sort_by(f64::total_cmp);
            json!({"p50_us": percentile(&lat, 0.5), "p99_us": percentile(&lat, 0.99)})
        }
        "stream" => {
            let bytes = n(2);
            let secs = echo_stream(port, bytes);
            json!({"mib_per_s": bytes as f64 / (1 << 20) as f64 / secs})
        }
        "parallel" => {
            let (conns, bytes) = (n(2), n(3));
            let start = Instant::now();
            let handles: Vec<_> = (0..conns)
                .map(|_| thread::spawn(move || echo_stream(port, bytes)))
                .collect();
            for h in handles {
                h.join().expect("stream thread");
            }
            let secs = start.elapsed().as_secs_f64();
            json!({"mib_per_s": (conns * bytes) as f64 / (1 << 20) as f64 / secs})
        }
        other => panic!("unknown workload {other}"),
    }
}

/// Sends `bytes` and reads them all back; returns seconds taken.
fn echo_stream(port: u16, bytes: u64) -> f64 {
    let (mut s, mut r) = connect(port);
    let start = Instant::now();
    let writer = {
        let mut s = s.try_clone().expect("clone");
        thread::spawn(move || {
            let chunk = vec![0x5au8; 256 * 1024];
            let mut left = bytes;
            while left > 0 {
                let k = left.min(chunk.len() as u64) as usize;
                s.write_all(&chunk[..k]).expect("write");
                left -= k as u64;
            }
            s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        })
    };
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let k = r.read(&mut buf).expect("read");
        assert!(k > 0, "echo ended early at {got} of {bytes} bytes");
        got += k as u64;
    }
    writer.join().expect("writer");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let _ = s.flush();
    start.elapsed().as_secs_f64()
}
