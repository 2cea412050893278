//! `cargo xtask bench http`: wrk against a real OpenBao dev server, a KV v2
//! read (masked through the interceptor) and `sys/health`, direct and
//! through the interceptor (wrk started inside the intercepted cgroup with
//! `interceptor exec`), interleaved in one run, reported as ratios.

use std::{fs, process::Command};

use interceptor_tests::{bao::BaoServer, bin, require_root, workspace_root, Daemon, TestCgroup};
use serde_json::json;

const LISTEN_PORT: u16 = 993;
/// wrk threads and connections.
const THREADS: u32 = 2;
const CONNECTIONS: u32 = 8;

#[derive(Clone, Copy, Default)]
struct Wrk {
    rps: f64,
    avg_us: f64,
    p50_us: f64,
    p99_us: f64,
    non_2xx: u64,
}

pub fn run(seconds: u64) {
    require_root();
    assert!(
        Command::new("wrk").arg("--version").output().is_ok(),
        "`wrk` is not on PATH: apt-get install -y wrk (cargo xtask setup does)"
    );
    eprintln!("==> OpenBao dev server (plain HTTP)");
    let bao = BaoServer::start(false);
    bao.put_kv2(
        "bench",
        &json!({"password": "bench-password", "api_key": "bench-key", "user": "ci"}),
    );
    eprintln!("==> interceptor daemon on 127.0.0.1:{LISTEN_PORT}, policies/default.toml");
    let cg = TestCgroup::new("bench-http");
    let d = start_daemon(&cg, &bao);

    let workloads = [
        ("kv2-read", "/v1/secret/data/bench"),
        ("sys-health", "/v1/sys/health"),
    ];
    // Prove both paths work (and warm up) before measuring.
    for (_, path) in workloads {
        wrk(&d, &bao, path, 1, false);
        wrk(&d, &bao, path, 1, true);
    }
    let mut rows = Vec::new();
    for (name, path) in workloads {
        let mut direct = Vec::new();
        let mut icept = Vec::new();
        for round in 0..2 {
            eprintln!("==> {name} round {round}: direct ({seconds}s)");
            direct.push(wrk(&d, &bao, path, seconds, false));
            eprintln!("==> {name} round {round}: through the interceptor ({seconds}s)");
            icept.push(wrk(&d, &bao, path, seconds, true));
        }
        rows.push((name, mean(&direct), mean(&icept)));
    }
    let mut out = format!(
        "wrk -t{THREADS} -c{CONNECTIONS} -d{seconds}s, OpenBao {} dev server on {} (plain HTTP), \
         token root; interceptor: store `vault` {}, audit on; two interleaved rounds per row, averaged\n\n",
        bao_version(),
        bao.addr(),
        if std::env::var("INTERCEPTOR_BENCH_HTTP_PROTOCOL").as_deref() == Ok("tcp") {
            "as protocol `tcp` (byte relay, no rules or masks)"
        } else {
            "with the rules and masks of policies/default.toml"
        }
    );
    out.push_str(&format!(
        "{:<11} {:>10} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
        "workload",
        "rps direct",
        "rps icept",
        "ratio",
        "avg dir",
        "avg icpt",
        "p50 dir",
        "p50 icpt",
        "p99 dir",
        "p99 icpt"
    ));
    for (name, dir, icp) in &rows {
        out.push_str(&format!(
            "{:<11} {:>10.0} {:>10.0} {:>5.2}x {:>7.0}µs {:>7.0}µs {:>7.0}µs {:>7.0}µs {:>7.0}µs {:>7.0}µs\n",
            name,
            dir.rps,
            icp.rps,
            icp.rps / dir.rps,
            dir.avg_us,
            icp.avg_us,
            dir.p50_us,
            icp.p50_us,
            dir.p99_us,
            icp.p99_us
        ));
        assert_eq!(dir.non_2xx + icp.non_2xx, 0, "{name}: non-2xx answers");
    }
    out.push_str(&format!(
        "\ninterceptor sessions opened: {}\n",
        d.sessions_opened().len()
    ));
    print!("{out}");
    let dir = workspace_root().join("target/bench");
    let _ = fs::create_dir_all(&dir);
    let path = dir.join("http.txt");
    fs::write(&path, &out).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    eprintln!("written {}", path.display());
    drop(d);
    drop(cg);
    drop(bao);
}

fn start_daemon(cg: &TestCgroup, bao: &BaoServer) -> Daemon {
    let default = fs::read_to_string(workspace_root().join("policies/default.toml"))
        .expect("read policies/default.toml");
    let mut body = default[default.find("[audit]").expect("[audit]")..]
        .replace(
            "targets = [\"*:8200\"]",
            &format!("targets = [\"{}\"]", bao.addr()),
        )
        .replace("targets = [\"*:5432\"]", "targets = [\"127.0.0.1:1\"]")
        .replace("targets = [\"*:6379\"]", "targets = [\"127.0.0.1:2\"]");
    // INTERCEPTOR_BENCH_HTTP_PROTOCOL=tcp: the same store as a byte relay,
    // to tell the cost of interception from the cost of HTTP handling.
    if std::env::var("INTERCEPTOR_BENCH_HTTP_PROTOCOL").as_deref() == Ok("tcp") {
        body = body.replace("protocol = \"http\"", "protocol = \"tcp\"");
        let rules = body.find("[[rule]]").expect("rules");
        body.truncate(rules);
        eprintln!("    store `vault` as protocol `tcp` (byte relay, no rules or masks)");
    }
    let mut d = Daemon::prepare("bench-http", cg, LISTEN_PORT, &[], &body);
    d.spawn();
    eprintln!("    interceptor {}", bin().display());
    d
}

fn bao_version() -> String {
    let out = Command::new(interceptor_tests::bao::bao_bin())
        .arg("version")
        .output()
        .expect("bao version");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap_or("?")
        .to_string()
}

fn wrk(d: &Daemon, bao: &BaoServer, path: &str, seconds: u64, through: bool) -> Wrk {
    let url = format!("{}{path}", bao.url());
    let t = format!("-t{THREADS}");
    let c = format!("-c{CONNECTIONS}");
    let dur = format!("-d{seconds}s");
    let args = [
        "wrk",
        &t,
        &c,
        &dur,
        "--latency",
        "-H",
        "X-Vault-Token: root",
        &url,
    ];
    let out = if through {
        d.exec(&args).output()
    } else {
        Command::new(args[0]).args(&args[1..]).output()
    }
    .expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&text).unwrap_or_else(|| panic!("cannot read wrk output:\n{text}"))
}

fn parse(text: &str) -> Option<Wrk> {
    let mut w = Wrk::default();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        // "Latency Distribution" is a heading: only numbers are taken.
        match words.as_slice() {
            ["Requests/sec:", v, ..] => w.rps = v.parse().unwrap_or(0.0),
            ["Latency", avg, _, _, ..] => w.avg_us = micros(avg).unwrap_or(w.avg_us),
            ["50%", v] => w.p50_us = micros(v).unwrap_or(0.0),
            ["99%", v] => w.p99_us = micros(v).unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => w.non_2xx = n.parse().unwrap_or(u64::MAX),
            _ => {}
        }
    }
    (w.rps > 0.0).then_some(w)
}

/// wrk's `123.45us`, `1.20ms`, `2.00s` in microseconds.
fn micros(v: &str) -> Option<f64> {
    let (num, mult) = if let Some(n) = v.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1e6)
    } else {
        (v, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * mult)
}

fn mean(runs: &[Wrk]) -> Wrk {
    let n = runs.len() as f64;
    Wrk {
        rps: runs.iter().map(|r| r.rps).sum::<f64>() / n,
        avg_us: runs.iter().map(|r| r.avg_us).sum::<f64>() / n,
        p50_us: runs.iter().map(|r| r.p50_us).sum::<f64>() / n,
        p99_us: runs.iter().map(|r| r.p99_us).sum::<f64>() / n,
        non_2xx: runs.iter().map(|r| r.non_2xx).sum(),
    }
}
