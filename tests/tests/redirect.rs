//! Transparent interception end to end: real kernel, real cgroup, real
//! daemon, unmodified clients (python3 socket, nc, curl).
//!
//! Every test makes its own child cgroup, listener port (below 1024) and
//! bpffs directory, so they can run side by side.

use std::{
    fs,
    io::{Read, Write},
    process::Command,
    time::{Duration, Instant},
};

use interceptor_tests::*;

/// Connections waiting in the accept queue of the listener on
/// 127.0.0.1:`port` (the rx_queue of a listening socket in /proc/net/tcp).
fn accept_queue(port: u16) -> usize {
    let table = fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let local = format!("0100007F:{port:04X}");
    let queues: Vec<usize> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) != Some(&local.as_str()) || f.get(3) != Some(&"0A") {
                return None;
            }
            let rx = f.get(4)?.split(':').nth(1)?;
            usize::from_str_radix(rx, 16).ok()
        })
        .collect();
    assert!(
        !queues.is_empty(),
        "no listener on 127.0.0.1:{port}:\n{table}"
    );
    queues.iter().sum()
}

/// The number of connections `echo` accepted, once its accept queue is
/// empty and the count has stopped moving (two polls in a row agree).
fn accepted_when_drained(echo: &EchoServer) -> usize {
    let mut last = usize::MAX;
    wait_for(
        || {
            format!(
                "the echo server's accept queue to drain ({} waiting, {} accepted)",
                accept_queue(echo.port),
                echo.accepted()
            )
        },
        || {
            let now = echo.accepted();
            let settled = accept_queue(echo.port) == 0 && now == last;
            last = now;
            settled.then_some(now)
        },
    )
}

#[test]
fn unmodified_clients_are_served_by_the_proxy() {
    require_root();
    let cg = TestCgroup::new("clients");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let http = http_server("127.0.0.1");
    let d = Daemon::start(
        "clients",
        &cg,
        901,
        &[
            tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)]),
            tcp_store("web", &[format!("127.0.0.1:{http}")]),
        ],
    );
    let port = echo.port.to_string();

    // python3 socket: bytes reach the server through the proxy, getpeername
    // shows the address the task dialled.
    let r = &d.client(&["--port", &port, "--size", "100000"])[0];
    assert!(r.get("error").is_none(), "client failed: {r}");
    assert_eq!(
        r["peername"],
        serde_json::json!(["127.0.0.1", echo.port]),
        "{r}"
    );
    assert!(
        went_through_proxy(r),
        "server saw the client's own socket: not intercepted: {r}"
    );
    assert_eq!(r["exact"], true, "{r}");

    // The session log names the process that connected.
    let sessions = d.sessions_opened();
    let s = sessions
        .iter()
        .find(|s| s["pid"] == r["pid"])
        .unwrap_or_else(|| panic!("no session for pid {} in {sessions:?}", r["pid"]));
    assert_eq!(s["uid"], 0);
    assert_eq!(s["exe"], r["exe"]);
    assert_eq!(s["store"], "echo");
    assert_eq!(s["original_dst"], format!("127.0.0.1:{}", echo.port));
    assert!(
        s["cgroup"]
            .as_str()
            .unwrap_or_default()
            .contains("interceptor-test-clients"),
        "{s}"
    );

    // The same client as an unprivileged user: uid recorded.
    let script = client_script();
    let out = d
        .exec(&[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            PYTHON,
            script.to_str().expect("path"),
            "--port",
            &port,
        ])
        .output()
        .expect("run client as nobody");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(went_through_proxy(&r), "{r}");
    assert_eq!(r["uid"], 65534);
    let sessions = d.sessions_opened();
    let s = sessions
        .iter()
        .find(|s| s["pid"] == r["pid"])
        .expect("session for the nobody client");
    assert_eq!(s["uid"], 65534);
    assert_eq!(s["gid"], 65534);

    // CI job variables and the systemd unit come from the task's environment
    // and cgroup; nothing else from the environment is kept. The task runs in
    // a child cgroup named like a unit: descendants are intercepted too.
    let unit_cg = cg.path.join("ci-job-4242.scope");
    let script_path = client_script();
    let out = d
        .exec(&[
            "sh",
            "-c",
            &format!(
                "mkdir -p {0} && echo $$ > {0}/cgroup.procs && exec {PYTHON} {1} --port {port}",
                unit_cg.display(),
                script_path.display()
            ),
        ])
        .env("GITHUB_RUN_ID", "4242")
        .env("GITHUB_REPOSITORY", "infra/app")
        .env("GITHUB_JOB", "build")
        .env("SECRET_TOKEN", "hunter2-do-not-log")
        .output()
        .expect("run client with CI variables");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        went_through_proxy(&r),
        "a task in a descendant cgroup was not intercepted: {r}"
    );
    let sessions = d.sessions_opened();
    let s = sessions
        .iter()
        .find(|s| s["pid"] == r["pid"])
        .expect("session for the CI client");
    assert_eq!(s["unit"], "ci-job-4242.scope", "{s}");
    let ci_job = s["ci_job"].as_str().unwrap_or_default();
    assert!(
        ci_job.contains("4242") && ci_job.contains("infra/app") && ci_job.contains("build"),
        "{s}"
    );
    assert!(
        !d.log_text().contains("hunter2-do-not-log"),
        "an environment secret reached the log"
    );

    // nc: the banner shows a peer that is the proxy, and the echo comes back.
    let out = d
        .exec(&[
            "sh",
            "-c",
            &format!("printf 'ping-from-nc\\n' | nc -N 127.0.0.1 {port}"),
        ])
        .output()
        .expect("run nc");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("peer=127.0.0.1:"),
        "nc got {text:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ping-from-nc"), "nc got {text:?}");

    // curl through the proxy.
    let out = d
        .exec(&[
            "curl",
            "-sS",
            "--max-time",
            "10",
            &format!("http://127.0.0.1:{http}/v1/secret"),
        ])
        .output()
        .expect("run curl");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        body.starts_with("hello from http"),
        "curl: {body:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let curl_sessions: Vec<_> = d
        .sessions_opened()
        .into_iter()
        .filter(|s| s["store"] == "web")
        .collect();
    assert_eq!(curl_sessions.len(), 1, "{curl_sessions:?}");
    assert_eq!(curl_sessions[0]["comm"], "curl");

    // Byte counts are recorded on close (the close is logged after the
    // client has read its last byte: wait for it).
    wait_for(
        || {
            format!(
                "a session closed with 100000 bytes up: {:?}",
                d.sessions_closed()
            )
        },
        || {
            d.sessions_closed()
                .iter()
                .any(|c| c["bytes_up"].as_u64() == Some(100_000))
                .then_some(())
        },
    );
}

#[test]
fn processes_outside_the_cgroup_are_untouched() {
    require_root();
    let cg = TestCgroup::new("outside");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let d = Daemon::start(
        "outside",
        &cg,
        902,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
    );
    let r = &client_outside(&["--port", &echo.port.to_string()])[0];
    assert!(r.get("error").is_none(), "{r}");
    assert!(
        !went_through_proxy(r),
        "a process outside the cgroup was intercepted: {r}"
    );
    assert_eq!(r["exact"], true);
    assert!(d.sessions_opened().is_empty(), "{:?}", d.sessions_opened());
    // Non-store ports from inside the cgroup are untouched too.
    let other = EchoServer::start(&["127.0.0.1"]);
    let r = &d.client(&["--port", &other.port.to_string()])[0];
    assert!(!went_through_proxy(r), "{r}");
    assert!(d.sessions_opened().is_empty());
}

#[test]
fn every_loopback_form_and_wildcard_targets_are_intercepted() {
    require_root();
    let cg = TestCgroup::new("forms");
    // One server per address family/alias on a shared port.
    let local = EchoServer::start(&["127.0.0.1", "127.0.0.2", "::1"]);
    let wild = EchoServer::start(&["127.0.0.1", "127.0.0.3", "::1"]);
    let v6 = EchoServer::start(&["::1", "127.0.0.1"]);
    let named = EchoServer::start(&["127.0.0.1", "::1"]);
    let d = Daemon::start(
        "forms",
        &cg,
        903,
        &[
            tcp_store("local", &[format!("127.0.0.1:{}", local.port)]),
            tcp_store("wild", &[format!("*:{}", wild.port)]),
            tcp_store("v6", &[format!("[::1]:{}", v6.port)]),
            tcp_store("named", &[format!("localhost:{}", named.port)]),
        ],
    );
    let cases: &[(&str, u16, &str, u16)] = &[
        ("local", local.port, "127.0.0.1", 4),
        ("local", local.port, "127.0.0.2", 4),
        ("local", local.port, "::1", 6),
        ("local", local.port, "::ffff:127.0.0.1", 6),
        ("wild", wild.port, "127.0.0.3", 4),
        ("wild", wild.port, "::1", 6),
        ("wild", wild.port, "::ffff:127.0.0.1", 6),
        ("v6", v6.port, "::1", 6),
        ("v6", v6.port, "127.0.0.1", 4),
        ("named", named.port, "127.0.0.1", 4),
        ("named", named.port, "::1", 6),
    ];
    for &(store, port, host, family) in cases {
        let before = d.sessions_opened().len();
        let r = &d.client(&[
            "--host",
            host,
            "--port",
            &port.to_string(),
            "--family",
            &family.to_string(),
        ])[0];
        assert!(r.get("error").is_none(), "{store} {host}: {r}");
        assert!(went_through_proxy(r), "{store} {host} not intercepted: {r}");
        assert_eq!(r["exact"], true, "{store} {host}: {r}");
        assert_eq!(
            r["peername"][0], host,
            "getpeername must show the dialled address: {r}"
        );
        assert_eq!(r["peername"][1], port);
        let sessions = d.sessions_opened();
        assert_eq!(sessions.len(), before + 1);
        let s = sessions.last().expect("session");
        assert_eq!(s["store"], store, "{s}");
    }
}

#[test]
fn udp_to_a_store_port_is_left_alone() {
    require_root();
    let cg = TestCgroup::new("udp");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let udp = std::net::UdpSocket::bind(format!("127.0.0.1:{}", echo.port))
        .expect("udp bind on the store port");
    udp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _d = Daemon::start(
        "udp",
        &cg,
        904,
        &[tcp_store("echo", &[format!("*:{}", echo.port)])],
    );
    let code = format!(
        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(('127.0.0.1', {})); s.send(b'dgram'); print(s.getpeername())",
        echo.port
    );
    let out = _d
        .exec(&[PYTHON, "-c", &code])
        .output()
        .expect("udp client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 16];
    let (n, _) = udp
        .recv_from(&mut buf)
        .expect("the datagram reached the real UDP socket");
    assert_eq!(&buf[..n], b"dgram");
}

#[test]
fn dead_daemon_means_refused_and_restart_takes_over_without_a_gap() {
    require_root();
    let cg = TestCgroup::new("failclosed");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let mut d = Daemon::start(
        "failclosed",
        &cg,
        905,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
    );
    let port = echo.port.to_string();
    assert!(went_through_proxy(&d.client(&["--port", &port])[0]));

    // A background task in the cgroup connects in a loop across the kill and
    // the restart, until the file `stop` appears, writing its counts to
    // `progress` as it goes; no single connection may reach the server
    // directly.
    let stop = d.dir.path().join("stop-loop");
    let progress = d.dir.path().join("loop-progress.json");
    let script = format!(
        r#"
import socket, time, json, os
ok = refused = direct = 0
stop, progress = {stop:?}, {progress:?}
give_up = time.time() + 300  # only if the test died without creating stop
def report():
    with open(progress + '.tmp', 'w') as f:
        json.dump(dict(ok=ok, refused=refused, direct=direct), f)
    os.replace(progress + '.tmp', progress)
report()
while not os.path.exists(stop):
    if time.time() > give_up:
        raise SystemExit('the loop was never stopped')
    s = socket.socket()
    # A connect that lands in the dying daemon's SYN queue can be dropped
    # without a reset: never wait on one forever.
    s.settimeout(2)
    try:
        s.connect(('127.0.0.1', {port}))
        banner = s.makefile().readline().strip()
        me = '%s:%d' % s.getsockname()
        if banner == 'peer=' + me: direct += 1
        else: ok += 1
    except ConnectionRefusedError:
        refused += 1
    except OSError:
        pass
    finally:
        s.close()
    report()
    time.sleep(0.005)
print(json.dumps(dict(ok=ok, refused=refused, direct=direct)))
"#,
        stop = stop.display().to_string(),
        progress = progress.display().to_string(),
    );
    let looper = d
        .exec(&[PYTHON, "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("loop client");
    let so_far =
        || -> Option<serde_json::Value> { serde_json::from_slice(&fs::read(&progress).ok()?).ok() };
    let count = |v: &serde_json::Value, key: &str| v[key].as_u64().unwrap_or(0);
    let progress_text = || fs::read_to_string(&progress).unwrap_or_default();
    wait_for(
        || format!("20 connections through the daemon: {}", progress_text()),
        || so_far().filter(|v| count(v, "ok") >= 20),
    );
    d.kill9();
    // What the proxy opened before it died is all accepted by the server.
    let accepted_before_kill = accepted_when_drained(&echo);

    // Dead daemon: a connect from the cgroup is refused, and the server sees nothing.
    let r = &d.client(&["--port", &port])[0];
    assert_eq!(
        r["error_name"], "ConnectionRefusedError",
        "dead daemon must mean refused: {r}"
    );
    // The looper made no direct connection while the daemon was dead.
    let refused_at_kill = count(&so_far().expect("loop progress"), "refused");
    wait_for(
        || format!("20 refused connections after the kill: {}", progress_text()),
        || so_far().filter(|v| count(v, "refused") >= refused_at_kill + 20),
    );
    assert_eq!(
        accepted_when_drained(&echo),
        accepted_before_kill,
        "a connection reached the server while the daemon was dead"
    );

    // An unprivileged user cannot squat the listener while the daemon is down.
    let squat = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", PYTHON, "-c"])
        .arg("import socket,sys\ns=socket.socket()\ntry:\n  s.bind(('127.0.0.1', 905)); print('bound')\nexcept PermissionError: print('denied')")
        .output()
        .expect("squat attempt");
    assert_eq!(
        String::from_utf8_lossy(&squat.stdout).trim(),
        "denied",
        "{squat:?}"
    );

    d.spawn();
    let ok_at_restart = count(&so_far().expect("loop progress"), "ok");
    wait_for(
        || {
            format!(
                "20 connections through the restarted daemon: {}",
                progress_text()
            )
        },
        || so_far().filter(|v| count(v, "ok") >= ok_at_restart + 20),
    );
    fs::write(&stop, b"").expect("stop the loop");
    let out = looper.wait_with_output().expect("loop client");
    assert!(out.status.success(), "loop client: {out:?}");
    let counts: serde_json::Value = serde_json::from_slice(&out.stdout).expect("loop counts");
    assert_eq!(
        counts["direct"], 0,
        "a connection bypassed the interceptor: {counts}"
    );
    assert!(
        counts["refused"].as_u64().unwrap_or(0) > 0,
        "the dead period was not observed: {counts}"
    );
    assert!(counts["ok"].as_u64().unwrap_or(0) > 0, "{counts}");
    let r = &d.client(&["--port", &port])[0];
    assert!(went_through_proxy(r), "after restart: {r}");
    assert_eq!(r["exact"], true);
    let took_over = d
        .log_lines()
        .iter()
        .filter(|l| l["message"] == "took over the previous link")
        .count();
    assert_eq!(
        took_over,
        5,
        "each of the 5 links is replaced on restart:\n{}",
        d.log_text()
    );
}

#[test]
fn two_hundred_concurrent_connections_each_echo_one_mib_exactly() {
    require_root();
    let cg = TestCgroup::new("load");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let d = Daemon::start(
        "load",
        &cg,
        906,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
    );
    let started = Instant::now();
    let results = d.client(&[
        "--port",
        &echo.port.to_string(),
        "--size",
        "1048576",
        "--conns",
        "200",
    ]);
    let elapsed = started.elapsed();
    assert_eq!(results.len(), 200);
    for r in &results {
        assert!(r.get("error").is_none(), "{r}");
        assert!(went_through_proxy(r), "{r}");
        assert_eq!(r["received"], 1_048_576, "{r}");
        assert_eq!(r["exact"], true, "{r}");
    }
    assert_eq!(echo.accepted(), 200);
    eprintln!("200 x 1 MiB echoed through the proxy in {elapsed:?}");
}

#[test]
fn connections_dialled_straight_at_the_listener_are_closed() {
    require_root();
    let cg = TestCgroup::new("direct");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let d = Daemon::start(
        "direct",
        &cg,
        907,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
    );
    let mut s = connect("127.0.0.1:907").expect("the listener accepts");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.write_all(b"hello");
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(
        n, 0,
        "a connection without a redirect record must be closed"
    );
    assert_eq!(echo.accepted(), 0);
    let rejected = wait_for(
        || format!("the direct connection counted: {}", d.status()),
        || {
            let st = d.status();
            let n = st["daemon"]["rejected_without_record"].as_u64()?;
            (n > 0).then_some(n)
        },
    );
    assert_eq!(rejected, 1);
}

#[test]
fn other_network_namespaces_are_refused() {
    require_root();
    let cg = TestCgroup::new("netns");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let d = Daemon::start(
        "netns",
        &cg,
        908,
        &[tcp_store("echo", &[format!("*:{}", echo.port)])],
    );
    let ns = format!("intc-test-{}", std::process::id());
    let add = Command::new("ip")
        .args(["netns", "add", &ns])
        .status()
        .expect("ip netns add");
    assert!(add.success());
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let _ns = Ns(ns.clone());
    let code = format!(
        "import socket\ns=socket.socket()\ntry:\n  s.connect(('127.0.0.1', {}))\n  print('connected')\nexcept OSError as e:\n  print(e.errno)",
        echo.port
    );
    let out = d
        .exec(&[
            "ip",
            "netns",
            "exec",
            &ns,
            "sh",
            "-c",
            &format!("ip link set lo up && {PYTHON} -c \"$0\"",),
            &code,
        ])
        .output()
        .expect("client in netns");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        libc::EPERM.to_string(),
        "a store connect from another netns must be refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_daemons_own_upstream_connections_are_never_redirected() {
    require_root();
    // The daemon itself runs inside the intercepted cgroup: its upstream
    // sockets carry the mark and must go straight to the server.
    let cg = TestCgroup::new("selfcg");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let d = Daemon::start(
        "selfcg",
        &cg,
        909,
        &[tcp_store("echo", &[format!("*:{}", echo.port)])],
    );
    let pid = d.pid().expect("daemon pid");
    std::fs::write(cg.path.join("cgroup.procs"), pid.to_string())
        .expect("move daemon into the cgroup");
    let r = &d.client(&["--port", &echo.port.to_string(), "--size", "4096"])[0];
    assert!(went_through_proxy(r), "{r}");
    assert_eq!(r["exact"], true, "{r}");
    assert_eq!(echo.accepted(), 1);
}

#[test]
fn detach_removes_the_pins_and_interception() {
    require_root();
    let cg = TestCgroup::new("detach");
    let echo = EchoServer::start(&["127.0.0.1"]);
    let mut d = Daemon::start(
        "detach",
        &cg,
        910,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", echo.port)])],
    );
    let st = d.status();
    assert_eq!(
        st["pins"]["links"].as_array().map(|a| a.len()),
        Some(5),
        "{st}"
    );
    assert!(st["daemon"]["pid"].is_u64(), "{st}");
    let status = d.terminate();
    assert!(
        status.success(),
        "SIGTERM must stop the daemon cleanly: {status}"
    );
    // Stopped but attached: still fail closed.
    let r = &d.client(&["--port", &echo.port.to_string()])[0];
    assert_eq!(r["error_name"], "ConnectionRefusedError", "{r}");
    let out = d.cli(&["detach"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!d.bpffs.exists(), "bpffs dir left behind");
    // Detached: exec refuses by default, and with --allow-detached the task goes direct.
    let out = d.exec(&["true"]).output().expect("exec");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no interceptor programs are attached"));
    let script = client_script();
    let out = Command::new(bin())
        .args(["exec", "--allow-detached", "--config"])
        .arg(&d.config)
        .args([
            "--",
            PYTHON,
            script.to_str().expect("path"),
            "--port",
            &echo.port.to_string(),
        ])
        .output()
        .expect("exec");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(!went_through_proxy(&r), "{r}");
}

#[test]
fn a_restart_with_a_changed_config_updates_the_pinned_store_map() {
    require_root();
    let cg = TestCgroup::new("reconfig");
    let old = EchoServer::start(&["127.0.0.1"]);
    let new = EchoServer::start(&["127.0.0.1"]);
    let mut d = Daemon::start(
        "reconfig",
        &cg,
        911,
        &[tcp_store("echo", &[format!("127.0.0.1:{}", old.port)])],
    );
    assert!(went_through_proxy(
        &d.client(&["--port", &old.port.to_string()])[0]
    ));
    d.terminate();
    let text = Daemon::config_text(
        &cg.path,
        911,
        &d.bpffs,
        d.dir.path(),
        &[tcp_store("echo", &[format!("127.0.0.1:{}", new.port)])],
    );
    std::fs::write(&d.config, text).expect("rewrite config");
    d.spawn();
    let r = &d.client(&["--port", &old.port.to_string()])[0];
    assert!(
        !went_through_proxy(r),
        "a target removed from the config is still intercepted: {r}"
    );
    let r = &d.client(&["--port", &new.port.to_string()])[0];
    assert!(went_through_proxy(r), "{r}");
    // 127.0.0.1:port and the any-local-address key for that port; nothing stale.
    assert_eq!(d.status()["pins"]["store_entries"], 2);
}
