//! `cargo xtask bench redis`: redis-benchmark GET/SET against a real
//! redis-server, direct and through the interceptor (the benchmark process
//! inside the intercepted cgroup via `interceptor exec`), without and with
//! pipelining (-P 16), in one run, as a table of requests per second and
//! ratios.
//!
//! The daemon runs the shipped policies/default.toml rules and masks for
//! the redis store (the `@dangerous` denylist, the `secret:*` key mask and
//! the credential detectors over every reply), with the audit trail on: one
//! journaled event per command.

use std::{
    fs,
    process::{Command, Output},
    time::{Duration, Instant},
};

use interceptor_tests::{
    redis::{RedisOptions, RedisServer},
    workspace_root, Daemon, TestCgroup,
};

/// The daemon's listener for this benchmark.
const LISTEN_PORT: u16 = 992;
const CLIENTS: u32 = 8;
/// (label, redis-benchmark pipeline depth).
const MODES: &[(&str, u32)] = &[("no pipelining", 1), ("-P 16", 16)];

pub fn run(seconds: u64) {
    for tool in ["redis-server", "redis-benchmark"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "`{tool}` is not on PATH: run `cargo xtask setup` (Debian package redis-server)"
        );
    }
    let server = RedisServer::start(RedisOptions::default());
    eprintln!("==> redis-server on {}", server.addr());
    let cg = TestCgroup::new("bench-redis");
    let d = start_daemon(&cg, &server);
    eprintln!("==> interceptor daemon on 127.0.0.1:{LISTEN_PORT}");

    let mut rows = Vec::new();
    for &(label, pipeline) in MODES {
        // Size the run from a short direct probe so that each measured run
        // takes about `seconds` (direct; through the proxy, longer by the
        // inverse of the ratio).
        let probe = bench(&server, None, 20_000, pipeline, seconds);
        let rps = probe.iter().map(|(_, r)| *r).fold(f64::MAX, f64::min);
        let n = ((rps * seconds as f64 / 2.0) as u64).clamp(10_000, 5_000_000);
        eprintln!("==> {label}: {n} requests per test, {CLIENTS} clients");
        // Interleaved: direct, interceptor, direct, interceptor; best of two.
        let mut direct = Vec::new();
        let mut icept = Vec::new();
        for _ in 0..2 {
            direct.push(bench(&server, None, n, pipeline, seconds));
            icept.push(bench(&server, Some(&d), n, pipeline, seconds));
        }
        for test in ["SET", "GET"] {
            let best = |runs: &[Vec<(String, f64)>]| {
                runs.iter()
                    .flat_map(|r| r.iter())
                    .filter(|(t, _)| t == test)
                    .map(|(_, r)| *r)
                    .fold(0.0, f64::max)
            };
            rows.push((label, test, best(&direct), best(&icept)));
        }
    }

    let sessions = d.sessions_opened().len();
    let mut out = String::new();
    out.push_str(&format!(
        "redis-benchmark -t get,set -c {CLIENTS} (3-byte values), direct vs through the interceptor, \
         best of 2 interleaved runs\n\
         server: redis-server on {} (no TLS, no password); interceptor: store protocol `{}`, \
         policies/default.toml rules and masks (redis only), audit on (batched journal)\n\n",
        server.addr(),
        protocol()
    ));
    out.push_str(&format!(
        "{:<14} {:<4} {:>12} {:>12} {:>7}\n",
        "mode", "test", "rps direct", "rps icept", "ratio"
    ));
    for (mode, test, direct, icept) in &rows {
        out.push_str(&format!(
            "{:<14} {:<4} {:>12.0} {:>12.0} {:>6.2}x\n",
            mode,
            test,
            direct,
            icept,
            icept / direct
        ));
    }
    out.push_str(&format!(
        "\ninterceptor sessions recorded by the daemon: {sessions}\n"
    ));
    print!("{out}");
    let dir = workspace_root().join("target/bench");
    let _ = fs::create_dir_all(&dir);
    let path = dir.join("redis.txt");
    fs::write(&path, &out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    eprintln!("written {}", path.display());
    drop(d);
    drop(cg);
    drop(server);
}

/// How the store is served: `redis` (the protocol handler) unless this says
/// `tcp` (the byte relay, no parsing: the floor the handler is compared to).
const PROTOCOL_ENV: &str = "INTERCEPTOR_BENCH_REDIS_PROTOCOL";

fn protocol() -> &'static str {
    match std::env::var(PROTOCOL_ENV).as_deref() {
        Ok("redis") | Err(_) => "redis",
        Ok("tcp") => "tcp",
        Ok(other) => panic!("{PROTOCOL_ENV}={other}: expected `redis` or `tcp`"),
    }
}

fn start_daemon(cg: &TestCgroup, server: &RedisServer) -> Daemon {
    match protocol() {
        "redis" => {}
        _ => {
            eprintln!("==> {PROTOCOL_ENV}=tcp: the store is served by the tcp relay");
            return Daemon::start(
                "bench-redis",
                cg,
                LISTEN_PORT,
                &[interceptor_tests::tcp_store("redis", &[server.addr()])],
            );
        }
    }
    let default = workspace_root().join("policies/default.toml");
    let policy =
        fs::read_to_string(&default).unwrap_or_else(|e| panic!("read {}: {e}", default.display()));
    let body = &policy[policy.find("[audit]").expect("default.toml has [audit]")..];
    let body = body
        .replace(
            "targets = [\"*:6379\"]",
            &format!("targets = [\"{}\"]", server.addr()),
        )
        .replace("targets = [\"*:5432\"]", "targets = [\"127.0.0.1:1\"]")
        .replace("targets = [\"*:8200\"]", "targets = [\"127.0.0.1:2\"]");
    let mut d = Daemon::prepare("bench-redis", cg, LISTEN_PORT, &[], &body);
    let check = d.cli(&["check"]);
    assert!(
        check.status.success(),
        "`interceptor check` refuses the benchmark config:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    d.spawn();
    d
}

/// One redis-benchmark run (`-t set,get`), direct or inside the cgroup;
/// (test, requests per second) per test.
fn bench(
    server: &RedisServer,
    via: Option<&Daemon>,
    n: u64,
    pipeline: u32,
    seconds: u64,
) -> Vec<(String, f64)> {
    let args: Vec<String> = [
        "redis-benchmark",
        "-h",
        "127.0.0.1",
        "-p",
        &server.client_port().to_string(),
        "-t",
        "set,get",
        "-n",
        &n.to_string(),
        "-c",
        &CLIENTS.to_string(),
        "-P",
        &pipeline.to_string(),
        "--csv",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cmd = match via {
        Some(d) => d.exec(&refs),
        None => {
            let mut c = Command::new(refs[0]);
            c.args(&refs[1..]);
            c
        }
    };
    let limit = Duration::from_secs(seconds.max(1) * 20 + 30);
    let started = Instant::now();
    let out = output_within(&mut cmd, limit);
    assert!(
        out.status.success(),
        "redis-benchmark failed after {:?}: {}",
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse_csv(&String::from_utf8_lossy(&out.stdout))
}

/// Runs `cmd`, killing it (by its pid) if it outlives `limit`.
fn output_within(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn redis-benchmark");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if rx.recv_timeout(limit).is_err() {
            // SAFETY: kill(2) of the benchmark process this function started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("wait redis-benchmark");
    let _ = tx.send(());
    out
}

/// `"SET","81234.57",...` lines of `redis-benchmark --csv`.
fn parse_csv(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let mut cols = l.split(',').map(|c| c.trim_matches('"'));
            let test = cols.next()?.to_string();
            let rps = cols.next()?.parse::<f64>().ok()?;
            Some((test, rps))
        })
        .collect()
}
