//! `cargo xtask bench`: the same workloads direct and through the interceptor,
//! in one run, reported side by side as ratios.
//!
//! The orchestrator (no arguments) makes a child cgroup, starts a real daemon
//! (INTERCEPTOR_BIN, release build) and an echo server on loopback, then runs
//! this binary in `client` mode twice per workload: once outside the cgroup
//! (direct) and once through `interceptor exec` (intercepted).
//!
//! `postgres` (see [`pgbench`]) compares pgbench against a real PostgreSQL
//! directly, through pgbouncer and through the interceptor.

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
    // `[WORKLOAD] [--seconds N]`; --seconds is for `postgres`.
    let mut seconds = None;
    let mut positional = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--seconds" {
            let v = it.next().expect("--seconds needs a value");
            seconds = Some(v.parse::<u64>().expect("--seconds takes whole seconds"));
        } else {
            positional.push(a.as_str());
        }
    }
    let only = positional.first().copied();
    if only == Some("postgres") {
        require_root();
        pgbench::run(seconds.unwrap_or(10));
        return;
    }
    if only == Some("redis") {
        require_root();
        redis_bench::run(seconds.unwrap_or(10));
        return;
    }
    if only == Some("http") {
        require_root();
        http_bench::run(seconds.unwrap_or(10));
        return;
    }
    if seconds.is_some() {
        eprintln!("note: --seconds applies to `postgres`, `redis` and `http` only");
    }
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

/// `postgres`: pgbench select-only against one real PostgreSQL, in the same
/// run, three ways: directly, through pgbouncer (session pooling, the usual
/// peer proxy) and through the interceptor (pgbench inside the intercepted
/// cgroup, dialling the server's real address). Each cell runs the three
/// back to back so that machine noise hits them alike.
#[path = "../bench/redis.rs"]
mod redis_bench;

#[path = "../bench/http.rs"]
mod http_bench;

mod pgbench {
    use std::{
        fs,
        io::Write,
        net::{TcpListener, TcpStream},
        os::unix::process::CommandExt,
        path::{Path, PathBuf},
        process::{Child, Command, Output, Stdio},
        thread,
        time::{Duration, Instant},
    };

    use interceptor_tests::{
        bin,
        pg::{PG_BIN, SERVER_USERS, SUPERUSER},
        workspace_root, Daemon, TestCgroup,
    };

    /// Ports the server and pgbouncer take, the first free ones in order.
    const PORTS: std::ops::RangeInclusive<u16> = 55440..=55449;
    /// The daemon's listener (the connect benchmark uses the same one).
    const LISTEN_PORT: u16 = 990;
    const DATABASE: &str = "bench";
    const SCALE: u32 = 10;
    /// pgbench -M modes, and (clients, threads).
    const MODES: &[&str] = &["simple", "prepared"];
    const CLIENTS: &[(u32, u32)] = &[(1, 1), (8, 2)];
    /// How the store is served: `postgres` (the protocol handler) unless
    /// this says `tcp` (the byte relay).
    const PROTOCOL_ENV: &str = "INTERCEPTOR_BENCH_PG_PROTOCOL";

    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Via {
        Direct,
        Bouncer,
        Interceptor,
    }

    impl Via {
        fn name(self) -> &'static str {
            match self {
                Via::Direct => "direct",
                Via::Bouncer => "pgbouncer",
                Via::Interceptor => "interceptor",
            }
        }
    }

    /// What one pgbench run measured.
    #[derive(Clone, Copy)]
    struct Measured {
        tps: f64,
        /// pgbench's "latency average", µs.
        avg_us: f64,
        /// Median per-transaction latency from the --log files, µs.
        p50_us: f64,
        transactions: usize,
    }

    pub fn run(seconds: u64) {
        let protocol = match std::env::var(PROTOCOL_ENV).as_deref() {
            Ok("tcp") => "tcp",
            Ok("postgres") | Err(_) => "postgres",
            Ok(other) => panic!("{PROTOCOL_ENV}={other}: expected `postgres` or `tcp`"),
        };
        for tool in ["pgbench", "pgbouncer", "psql", "pg_isready"] {
            assert!(
                which(tool),
                "`{tool}` is not on PATH: run `cargo xtask setup` (Debian packages postgresql-client, pgbouncer)"
            );
        }
        assert!(
            Path::new(PG_BIN).join("postgres").exists(),
            "{PG_BIN}/postgres is missing: the PostgreSQL 15 server binaries are needed"
        );
        let user = RunAs::find();
        let ports = free_ports(2);
        let (pg_port, bouncer_port) = (ports[0], ports[1]);
        let scratch = tempfile::Builder::new()
            .prefix("interceptor-bench-pgbench-")
            .tempdir()
            .expect("tempdir");

        eprintln!(
            "==> PostgreSQL 15 on 127.0.0.1:{pg_port} (trust, no TLS), pgbench -i -s {SCALE}"
        );
        let pg = Postgres::start(&user, pg_port);
        eprintln!("==> pgbouncer on 127.0.0.1:{bouncer_port} (session pooling, trust)");
        let bouncer = Bouncer::start(&user, bouncer_port, pg_port);
        eprintln!("==> interceptor daemon on 127.0.0.1:{LISTEN_PORT}, store protocol `{protocol}`");
        let cg = TestCgroup::new("bench-pg");
        let (d, policy) = start_daemon(&cg, protocol, pg_port);

        let bench = Bench {
            scratch: scratch.path().to_path_buf(),
            pg_port,
            bouncer_port,
            daemon: &d,
        };
        // Warm the server's cache, open pgbouncer's pool, and prove each path
        // works before anything is measured.
        for via in [Via::Direct, Via::Bouncer, Via::Interceptor] {
            bench.pgbench(via, "simple", 8, 2, 2, "warmup");
        }

        let mut rows = Vec::new();
        for mode in MODES {
            for &(clients, threads) in CLIENTS {
                let label = format!("{mode}-c{clients}");
                let mut cell = Vec::new();
                for via in [Via::Direct, Via::Bouncer, Via::Interceptor] {
                    eprintln!(
                        "==> {mode}, {clients} client(s), {threads} thread(s): {} ({seconds}s)",
                        via.name()
                    );
                    cell.push(bench.pgbench(via, mode, clients, threads, seconds, &label));
                }
                rows.push((*mode, clients, cell[0], cell[1], cell[2]));
            }
        }

        let sessions = d.sessions_opened().len();
        let mut out = String::new();
        out.push_str(&format!(
            "pgbench -S (select only, one statement per transaction), scale {SCALE}, {seconds}s per run, \
             runs interleaved per row\n\
             server: PostgreSQL 15 on 127.0.0.1:{pg_port} (trust, no TLS); \
             pgbouncer 127.0.0.1:{bouncer_port} (pool_mode = session); \
             interceptor: store protocol `{protocol}`, {policy}, pgbench via `interceptor exec`\n\
             ratio = tps / direct tps; +lat = average latency minus direct's; p50 from pgbench --log\n\n"
        ));
        out.push_str(&format!(
            "{:<9} {:>7} {:>11} {:>11} {:>6} {:>11} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}\n",
            "mode",
            "clients",
            "tps direct",
            "tps bouncer",
            "ratio",
            "tps icept",
            "ratio",
            "+lat bncr",
            "+lat icpt",
            "p50 dir",
            "p50 bncr",
            "p50 icpt"
        ));
        out.push_str(&format!(
            "{:<9} {:>7} {:>11} {:>11} {:>6} {:>11} {:>6} {:>9} {:>9} {:>8} {:>8} {:>8}\n",
            "", "", "", "", "", "", "", "µs", "µs", "µs", "µs", "µs"
        ));
        for (mode, clients, direct, bouncer_r, icpt) in &rows {
            out.push_str(&format!(
                "{:<9} {:>7} {:>11.0} {:>11.0} {:>5.2}x {:>11.0} {:>5.2}x {:>+9.1} {:>+9.1} {:>8.0} {:>8.0} {:>8.0}\n",
                mode,
                clients,
                direct.tps,
                bouncer_r.tps,
                bouncer_r.tps / direct.tps,
                icpt.tps,
                icpt.tps / direct.tps,
                bouncer_r.avg_us - direct.avg_us,
                icpt.avg_us - direct.avg_us,
                direct.p50_us,
                bouncer_r.p50_us,
                icpt.p50_us,
            ));
        }
        let total: usize = rows.iter().map(|r| r.4.transactions).sum();
        out.push_str(&format!(
            "\ninterceptor sessions recorded by the daemon: {sessions} \
             ({total} transactions through it in the measured runs)\n"
        ));
        print!("{out}");
        let dir = workspace_root().join("target/bench");
        let _ = fs::create_dir_all(&dir);
        let path = dir.join("postgres.txt");
        fs::write(&path, &out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        eprintln!("written {}", path.display());

        // Stop in reverse order of start: daemon (and detach), cgroup,
        // pgbouncer, server; then the scratch directory.
        drop(d);
        drop(cg);
        drop(bouncer);
        drop(pg);
        drop(scratch);
    }

    struct Bench<'a> {
        scratch: PathBuf,
        pg_port: u16,
        bouncer_port: u16,
        daemon: &'a Daemon,
    }

    impl Bench<'_> {
        fn pgbench(
            &self,
            via: Via,
            mode: &str,
            clients: u32,
            threads: u32,
            seconds: u64,
            label: &str,
        ) -> Measured {
            let port = match via {
                Via::Direct | Via::Interceptor => self.pg_port,
                Via::Bouncer => self.bouncer_port,
            };
            let logs = self.scratch.join(format!("{label}-{}", via.name()));
            let _ = fs::remove_dir_all(&logs);
            fs::create_dir_all(&logs).expect("pgbench log dir");
            let args: Vec<String> = vec![
                "pgbench".into(),
                "-S".into(),
                "-n".into(),
                "-T".into(),
                seconds.to_string(),
                "-c".into(),
                clients.to_string(),
                "-j".into(),
                threads.to_string(),
                "-M".into(),
                mode.into(),
                "-l".into(),
                format!("--log-prefix={}", logs.join("tx").display()),
                "-h".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
                "-U".into(),
                SUPERUSER.into(),
                DATABASE.into(),
            ];
            let mut cmd = match via {
                Via::Interceptor => {
                    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                    self.daemon.exec(&argv)
                }
                Via::Direct | Via::Bouncer => {
                    let mut c = Command::new(&args[0]);
                    c.args(&args[1..]);
                    c
                }
            };
            libpq_env(&mut cmd).current_dir(&logs);
            let out = run_bounded(&mut cmd, Duration::from_secs(seconds + 60));
            let stdout = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                let hint = if via == Via::Interceptor {
                    format!(
                        "\n(through the interceptor: is the store's protocol served yet? \
                         {PROTOCOL_ENV}=tcp relays bytes instead)\ndaemon log tail:\n{}",
                        tail(&self.daemon.log_text(), 20)
                    )
                } else {
                    String::new()
                };
                panic!(
                    "pgbench {} ({mode}, -c {clients}) failed ({}):\nstdout: {stdout}\nstderr: {}{hint}",
                    via.name(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let tps = field(&stdout, "tps = ").unwrap_or_else(|| panic!("no tps in:\n{stdout}"));
            let avg_ms = field(&stdout, "latency average = ")
                .unwrap_or_else(|| panic!("no latency average in:\n{stdout}"));
            let mut lat = transaction_times(&logs);
            let _ = fs::remove_dir_all(&logs);
            lat.sort_unstable();
            let p50_us = lat.get(lat.len() / 2).map_or(f64::NAN, |&v| v as f64);
            Measured {
                tps,
                avg_us: avg_ms * 1000.0,
                p50_us,
                transactions: lat.len(),
            }
        }
    }

    /// The number after `prefix` on the first line that has it
    /// (`tps = 1234.5 (without initial connection time)`, `latency average = 0.8 ms`).
    fn field(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find_map(|l| {
            let rest = l.trim().strip_prefix(prefix)?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// Per-transaction latencies (µs, the third column) from every pgbench
    /// --log file in `dir` (one per thread).
    fn transaction_times(dir: &Path) -> Vec<u64> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).expect("read pgbench logs").flatten() {
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
            );
        }
        out
    }

    /// PG* variables for a plain TCP connection as the superuser, trust.
    fn libpq_env(cmd: &mut Command) -> &mut Command {
        cmd.env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSWORD")
            .env_remove("PGPASSFILE")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .env_remove("PGDATABASE")
    }

    /// Runs a command to its end, killing it (by pid) past `limit`.
    fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let pid = child.id() as i32;
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(limit) {
            Ok(out) => out.expect("wait for the command"),
            Err(_) => {
                // SAFETY: kill(2) of the child this function started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                let _ = rx.recv_timeout(Duration::from_secs(5));
                panic!("{cmd:?} still running after {limit:?}: killed");
            }
        }
    }

    fn tail(text: &str, n: usize) -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    fn which(tool: &str) -> bool {
        std::env::var_os("PATH")
            .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
    }

    /// The first `n` ports of [`PORTS`] nothing listens on.
    fn free_ports(n: usize) -> Vec<u16> {
        let free: Vec<u16> = PORTS
            .filter(|&p| TcpListener::bind(("127.0.0.1", p)).is_ok())
            .take(n)
            .collect();
        assert_eq!(
            free.len(),
            n,
            "need {n} free ports in {PORTS:?} on 127.0.0.1, found {free:?}"
        );
        free
    }

    /// The unprivileged account the server and pgbouncer run as (both
    /// refuse root), the one the PostgreSQL test harness uses.
    struct RunAs {
        uid: u32,
        gid: u32,
        name: String,
    }

    impl RunAs {
        fn find() -> Self {
            for name in SERVER_USERS {
                let Ok(out) = Command::new("getent").args(["passwd", name]).output() else {
                    continue;
                };
                let line = String::from_utf8_lossy(&out.stdout);
                let f: Vec<&str> = line.trim().split(':').collect();
                if let (true, Some(Ok(uid)), Some(Ok(gid))) = (
                    out.status.success(),
                    f.get(2).map(|v| v.parse()),
                    f.get(3).map(|v| v.parse()),
                ) {
                    return RunAs {
                        uid,
                        gid,
                        name: name.to_string(),
                    };
                }
            }
            panic!(
                "no system user to run PostgreSQL and pgbouncer as (tried {}): run `cargo xtask setup`",
                SERVER_USERS.join(", ")
            );
        }

        fn command(&self, program: impl AsRef<std::ffi::OsStr>, cwd: &Path) -> Command {
            let mut cmd = Command::new(program);
            cmd.uid(self.uid)
                .gid(self.gid)
                .current_dir(cwd)
                .env("HOME", cwd)
                .env("USER", &self.name)
                .env("LOGNAME", &self.name);
            cmd
        }

        fn chown(&self, path: &Path) {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .unwrap_or_else(|e| panic!("chown {} to {}: {e}", path.display(), self.name));
        }

        fn tempdir(&self, prefix: &str) -> tempfile::TempDir {
            let dir = tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("tempdir");
            self.chown(dir.path());
            dir
        }
    }

    use interceptor_tests::stop_child as stop;

    /// A PostgreSQL server with a pgbench database, started for this run.
    struct Postgres {
        dir: tempfile::TempDir,
        child: Child,
    }

    impl Postgres {
        fn start(user: &RunAs, port: u16) -> Self {
            let dir = user.tempdir("interceptor-bench-pg-");
            let data = dir.path().join("data");
            let out = user
                .command(Path::new(PG_BIN).join("initdb"), dir.path())
                .arg("-D")
                .arg(&data)
                .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=trust"])
                .output()
                .expect("run initdb");
            assert!(
                out.status.success(),
                "initdb failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let conf = data.join("postgresql.conf");
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(&conf)
                .expect("postgresql.conf");
            write!(
                f,
                "\n# interceptor pgbench benchmark\n\
                 listen_addresses = '127.0.0.1'\n\
                 port = {port}\n\
                 unix_socket_directories = '{}'\n\
                 ssl = off\n\
                 fsync = off\n\
                 synchronous_commit = off\n\
                 full_page_writes = off\n\
                 shared_buffers = 256MB\n\
                 max_connections = 100\n",
                dir.path().display()
            )
            .expect("write postgresql.conf");
            fs::write(
                data.join("pg_hba.conf"),
                "local all all trust\nhost all all 127.0.0.1/32 trust\n",
            )
            .expect("write pg_hba.conf");
            let log = fs::File::create(dir.path().join("server.log")).expect("server log");
            user.chown(&dir.path().join("server.log"));
            let child = user
                .command(Path::new(PG_BIN).join("postgres"), dir.path())
                .arg("-D")
                .arg(&data)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn postgres");
            let mut pg = Postgres { dir, child };
            pg.wait_ready(port);
            let psql = Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
                .args(["-p", &port.to_string(), "-U", SUPERUSER, "-d", "postgres"])
                .args(["-c", &format!("CREATE DATABASE {DATABASE}")])
                .env("PGSSLMODE", "disable")
                .output()
                .expect("run psql");
            pg.expect_ok(&psql, "CREATE DATABASE");
            let t = Instant::now();
            let init = Command::new("pgbench")
                .args(["-i", "-q", "-s", &SCALE.to_string(), "-h", "127.0.0.1"])
                .args(["-p", &port.to_string(), "-U", SUPERUSER, DATABASE])
                .env("PGSSLMODE", "disable")
                .output()
                .expect("run pgbench -i");
            pg.expect_ok(&init, "pgbench -i");
            eprintln!(
                "    pgbench -i -s {SCALE} took {:.1}s",
                t.elapsed().as_secs_f64()
            );
            pg
        }

        fn wait_ready(&mut self, port: u16) {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!(
                        "postgres exited during start ({status}):\n{}",
                        self.log_tail()
                    );
                }
                let ready = Command::new("pg_isready")
                    .args(["-q", "-t", "2", "-h", "127.0.0.1", "-p", &port.to_string()])
                    .status()
                    .is_ok_and(|s| s.success());
                if ready {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "postgres not ready after 30s:\n{}",
                    self.log_tail()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }

        fn expect_ok(&self, out: &Output, what: &str) {
            assert!(
                out.status.success(),
                "{what} failed ({}): {}{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log_tail()
            );
        }

        fn log_tail(&self) -> String {
            tail(
                &fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default(),
                30,
            )
        }
    }

    impl Drop for Postgres {
        fn drop(&mut self) {
            // Immediate shutdown; the data directory goes with the TempDir.
            stop(&mut self.child, libc::SIGQUIT, Duration::from_secs(10));
        }
    }

    /// pgbouncer in front of the server, started for this run.
    struct Bouncer {
        dir: tempfile::TempDir,
        child: Child,
    }

    impl Bouncer {
        fn start(user: &RunAs, port: u16, pg_port: u16) -> Self {
            let dir = user.tempdir("interceptor-bench-pgbouncer-");
            let ini = dir.path().join("pgbouncer.ini");
            let users = dir.path().join("userlist.txt");
            fs::write(&users, format!("\"{SUPERUSER}\" \"\"\n")).expect("write userlist.txt");
            fs::write(
                &ini,
                format!(
                    "[databases]\n\
                     {DATABASE} = host=127.0.0.1 port={pg_port} dbname={DATABASE}\n\
                     \n\
                     [pgbouncer]\n\
                     listen_addr = 127.0.0.1\n\
                     listen_port = {port}\n\
                     unix_socket_dir =\n\
                     auth_type = trust\n\
                     auth_file = {}\n\
                     pool_mode = session\n\
                     max_client_conn = 200\n\
                     default_pool_size = 20\n\
                     ignore_startup_parameters = extra_float_digits\n\
                     server_tls_sslmode = disable\n\
                     log_connections = 0\n\
                     log_disconnections = 0\n",
                    users.display()
                ),
            )
            .expect("write pgbouncer.ini");
            for f in [&ini, &users] {
                user.chown(f);
            }
            let log = fs::File::create(dir.path().join("pgbouncer.log")).expect("pgbouncer log");
            let child = user
                .command("pgbouncer", dir.path())
                .arg(&ini)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("spawn pgbouncer");
            let mut b = Bouncer { dir, child };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if let Ok(Some(status)) = b.child.try_wait() {
                    panic!("pgbouncer exited during start ({status}):\n{}", b.log());
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "pgbouncer not listening after 15s:\n{}",
                    b.log()
                );
                thread::sleep(Duration::from_millis(50));
            }
            b
        }

        fn log(&self) -> String {
            tail(
                &fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default(),
                30,
            )
        }
    }

    impl Drop for Bouncer {
        fn drop(&mut self) {
            // SIGTERM: immediate shutdown.
            stop(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
        }
    }

    /// The daemon with one store for the server, the [audit] table and the
    /// [[rule]]/[[mask]] sections of policies/default.toml that apply to it.
    /// Returns the daemon and a description of the policy it got.
    fn start_daemon(cg: &TestCgroup, protocol: &str, pg_port: u16) -> (Daemon, String) {
        let mut d = Daemon::prepare("bench-pg", cg, LISTEN_PORT, &[], "");
        let mut text = Daemon::config_text(&cg.path, LISTEN_PORT, &d.bpffs, d.dir.path(), &[]);
        text.push_str(&format!(
            "\n[[store]]\nname = \"postgres\"\nprotocol = \"{protocol}\"\n\
             targets = [\"127.0.0.1:{pg_port}\"]\nupstream_tls = \"disable\"\n"
        ));
        let default = workspace_root().join("policies/default.toml");
        let policy = fs::read_to_string(&default)
            .unwrap_or_else(|e| panic!("read {}: {e}", default.display()));
        let (sections, rules, masks) = policy_sections(&policy, protocol);
        text.push_str(&sections);
        fs::write(&d.config, &text).expect("write daemon config");
        let check = d.cli(&["check"]);
        assert!(
            check.status.success(),
            "`interceptor check` refuses the benchmark config:\n{}\n--- config ---\n{text}",
            String::from_utf8_lossy(&check.stderr)
        );
        d.spawn();
        eprintln!(
            "    interceptor {} with {rules} rule(s), {masks} mask(s)",
            bin().display()
        );
        (
            d,
            format!("{rules} rules + {masks} masks from policies/default.toml, audit on"),
        )
    }

    /// The `[audit]` table and the `[[rule]]`/`[[mask]]` sections of a
    /// policy file that apply to a store named `postgres` speaking
    /// `protocol`: those naming no stores, and (for `postgres`) those naming
    /// it. Sections for other stores would not validate here.
    fn policy_sections(policy: &str, protocol: &str) -> (String, usize, usize) {
        let mut sections: Vec<(String, String)> = Vec::new();
        for line in policy.lines() {
            if line.starts_with('[') {
                sections.push((line.trim().to_string(), String::new()));
            }
            if let Some((_, body)) = sections.last_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        let (mut out, mut rules, mut masks) = (String::new(), 0, 0);
        for (header, body) in sections {
            let stores = body
                .lines()
                .find(|l| l.trim_start().starts_with("stores"))
                .map(str::to_string);
            let applies = match &stores {
                None => true,
                Some(line) => protocol == "postgres" && line.contains("\"postgres\""),
            };
            match header.as_str() {
                "[audit]" => {}
                "[[rule]]" if applies => rules += 1,
                "[[mask]]" if applies => masks += 1,
                _ => continue,
            }
            out.push('\n');
            out.push_str(&body);
        }
        (out, rules, masks)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn pgbench_output_is_parsed() {
            let out = "transaction type: <builtin: select only>\n\
                       latency average = 0.081 ms\n\
                       initial connection time = 2.345 ms\n\
                       tps = 12345.678901 (without initial connection time)\n";
            assert_eq!(super::field(out, "tps = "), Some(12345.678901));
            assert_eq!(super::field(out, "latency average = "), Some(0.081));
        }

        #[test]
        fn policy_sections_follow_the_store_protocol() {
            let policy = std::fs::read_to_string(
                interceptor_tests::workspace_root().join("policies/default.toml"),
            )
            .unwrap();
            let (text, rules, masks) = super::policy_sections(&policy, "postgres");
            assert!(rules >= 5 && masks >= 2, "{rules} rules, {masks} masks");
            assert!(text.contains("[audit]") && !text.contains("[[store]]"));
            assert!(!text.contains("\"redis\"") && !text.contains("[daemon]"));
            let (text, rules, masks) = super::policy_sections(&policy, "tcp");
            assert_eq!(rules, 0);
            assert!(masks >= 1 && text.contains("[audit]"));
        }
    }
}
