//! The Redis handler end to end: a real redis-server on loopback (plain,
//! TLS, requirepass), real clients (redis-cli, redis-py) started inside the
//! intercepted cgroup with `interceptor exec`, the shipped default policy.
//!
//! Listener ports 951-965 belong to this file.

use std::{
    path::{Path, PathBuf},
    process::{Output, Stdio},
};

use interceptor_tests::{
    expect_success as ok, files_under as walk, output_text as text,
    redis::{
        RedisOptions, RedisServer, AWS_KEY, CREDS_PASS, CREDS_USER, GREETING, SECRET_API, SECRET_DB,
    },
    require_root, wait_for, workspace_root, Daemon, StoreAt, TestCgroup,
};
use serde_json::Value;

/// The python3 on PATH (the one `cargo xtask setup` installs redis-py into).
const PYTHON3: &str = "python3";

const MASK: &str = "********";

fn script() -> PathBuf {
    workspace_root().join("tests/scripts/redis_client.py")
}

/// The shipped policies/default.toml with the test's [daemon] section, its
/// redis store pointed at `server`, the other stores at unused addresses,
/// `store_extra` (e.g. upstream_tls) in the redis store, and `rules_first`
/// (extra `[[rule]]`s) before the shipped rules. Not started yet.
fn prepare(
    name: &str,
    port: u16,
    server: &RedisServer,
    store_extra: &str,
    rules_first: &str,
) -> (TestCgroup, Daemon) {
    let cgroup = TestCgroup::new(name);
    let redis = StoreAt {
        store: "redis",
        target: server.addr(),
        extra: store_extra,
    };
    let d = Daemon::prepare_default_policy(name, &cgroup, port, &[redis], rules_first);
    (cgroup, d)
}

fn daemon(
    name: &str,
    port: u16,
    server: &RedisServer,
    store_extra: &str,
    rules_first: &str,
) -> (TestCgroup, Daemon) {
    let (cgroup, mut d) = prepare(name, port, server, store_extra, rules_first);
    d.spawn();
    (cgroup, d)
}

/// The local CA, exported with the CLI as an operator would.
fn export_ca(d: &Daemon) -> PathBuf {
    let out = d.cli(&["ca", "export"]);
    assert!(out.status.success(), "ca export: {}", text(&out));
    let path = d.dir.path().join("exported-ca.pem");
    std::fs::write(&path, &out.stdout).expect("write CA");
    path
}

/// How a client reaches the server through the proxy.
#[derive(Clone, Default)]
struct Via {
    password: Option<String>,
    /// The local CA: the client speaks TLS to the proxy.
    tls_ca: Option<PathBuf>,
}

/// redis-cli inside the cgroup; `--no-raw` output, one reply per line
/// group.
fn cli(d: &Daemon, server: &RedisServer, via: &Via, args: &[&str]) -> Output {
    let port = server.client_port().to_string();
    let mut full: Vec<String> = vec!["redis-cli".into(), "-h".into(), "127.0.0.1".into()];
    full.extend(["-p".into(), port]);
    if let Some(ca) = &via.tls_ca {
        full.extend(["--tls".into(), "--cacert".into(), ca.display().to_string()]);
    }
    full.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    let mut cmd = d.exec(&refs);
    // The environment, not argv: command lines are recorded (redacted).
    if let Some(p) = &via.password {
        cmd.env("REDISCLI_AUTH", p);
    }
    cmd.output().expect("redis-cli")
}

fn cli_ok(d: &Daemon, server: &RedisServer, via: &Via, args: &[&str]) -> String {
    ok(cli(d, server, via, args), &format!("redis-cli {args:?}"), d)
}

/// redis_client.py inside the cgroup.
fn py(d: &Daemon, server: &RedisServer, via: &Via, scenario: &str, resp: &str) -> Value {
    let s = script();
    let port = server.client_port().to_string();
    let mut full: Vec<String> = vec![
        PYTHON3.into(),
        s.display().to_string(),
        scenario.into(),
        "127.0.0.1".into(),
        port,
        "--resp".into(),
        resp.into(),
    ];
    if let Some(p) = &via.password {
        full.extend(["--password".into(), p.clone()]);
    }
    if let Some(ca) = &via.tls_ca {
        full.extend(["--tls".into(), ca.display().to_string()]);
    }
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    let out = ok(
        d.exec(&refs).output().expect("python"),
        &format!("redis_client.py {scenario} (RESP{resp})"),
        d,
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

/// Waits until `file` exists (a client's sign that it got that far);
/// panics early if `child` exits first.
fn wait_for_file(file: &Path, child: &mut std::process::Child, d: &Daemon) {
    wait_for(
        || format!("{} to appear:\n{}", file.display(), d.log_text()),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the client exited ({status}) before creating {}:\n{}",
                    file.display(),
                    d.log_text()
                );
            }
            file.exists().then_some(())
        },
    );
}

fn events(d: &Daemon) -> Vec<Value> {
    d.wait_sessions_closed();
    d.flushed_rows("events", "redis")
}

fn sessions(d: &Daemon) -> Vec<Value> {
    d.wait_sessions_closed();
    d.flushed_rows("sessions", "redis")
}

/// No audit file (Parquet or journal) holds any of `secrets`.
fn audit_holds_none_of(d: &Daemon, secrets: &[&str]) {
    let files = walk(&d.state_dir());
    assert!(
        files
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "parquet")),
        "no parquet files under {}",
        d.state_dir().display()
    );
    for path in files {
        if path.extension().is_some_and(|e| e == "pem" || e == "key") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("read audit file");
        let hay = String::from_utf8_lossy(&bytes);
        for s in secrets {
            assert!(!hay.contains(s), "{} holds {s:?}", path.display());
        }
    }
}

/// The reads every client must see masked, and the denials.
fn check_cli_reads(d: &Daemon, server: &RedisServer, via: &Via) {
    let o = cli_ok(d, server, via, &["GET", "secret:db"]);
    assert_eq!(o.trim(), MASK, "GET secret:db");
    let o = cli_ok(d, server, via, &["GET", "public:greeting"]);
    assert_eq!(o.trim(), GREETING);
    let o = cli_ok(d, server, via, &["HGETALL", "secret:creds"]);
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines, ["user", MASK, "pass", MASK], "HGETALL: {o}");
    let o = cli_ok(
        d,
        server,
        via,
        &["MGET", "secret:db", "public:greeting", "secret:api"],
    );
    let lines: Vec<&str> = o.lines().collect();
    assert_eq!(lines, [MASK, GREETING, MASK], "MGET: {o}");
    // An AWS key in an unmasked key: caught by the detector.
    let o = cli_ok(d, server, via, &["GET", "public:leak"]);
    assert_eq!(o.trim(), format!("key={MASK}"), "detector: {o}");
    // INFO (server statistics, which client libraries read) is allowed by
    // its own rule although Redis files it under @dangerous.
    let o = cli_ok(d, server, via, &["INFO", "server"]);
    assert!(o.contains("redis_version:"), "INFO: {o}");
    for (args, rule) in [
        (&["FLUSHALL"][..], "no-dangerous-redis-commands"),
        (
            &["CONFIG", "SET", "maxmemory", "1gb"],
            "no-dangerous-redis-commands",
        ),
        (&["DUMP", "secret:db"], "secret-keys"),
        (&["COPY", "secret:db", "stolen"], "secret-keys"),
        (&["RENAME", "secret:db", "stolen"], "secret-keys"),
        (&["GETRANGE", "secret:db", "0", "-1"], "secret-keys"),
    ] {
        let o = cli_ok(d, server, via, args);
        assert!(
            o.contains("ERR interceptor:") && o.contains(&format!("(rule \"{rule}\")")),
            "{args:?}: {o}"
        );
    }
    // Nothing was flushed, copied or renamed.
    assert_eq!(server.run(&["GET", "secret:db"]).trim(), SECRET_DB);
    assert_eq!(server.run(&["EXISTS", "stolen"]).trim(), "0");
}

fn check_py_basic(r: &Value) {
    assert_eq!(r["get_secret"], MASK, "{r}");
    assert_eq!(r["get_public"], GREETING, "{r}");
    assert_eq!(r["get_leak"], format!("key={MASK}"), "{r}");
    assert_eq!(r["hgetall"]["user"], MASK, "{r}");
    assert_eq!(r["hgetall"]["pass"], MASK, "{r}");
    assert_eq!(
        r["mget"],
        serde_json::json!([MASK, GREETING, MASK, null]),
        "{r}"
    );
    assert_eq!(r["lrange"], serde_json::json!(["a", "b", "c"]), "{r}");
    for k in ["flushall", "config_set"] {
        let e = r[k]["error"].as_str().unwrap_or_default();
        assert!(e.contains("no-dangerous-redis-commands"), "{k}: {r}");
    }
    assert!(
        r["dump"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("secret-keys"),
        "{r}"
    );
    assert_eq!(r["after"], GREETING, "{r}");
}

#[test]
fn redis_cli_and_redis_py_with_requirepass_masked_denied_and_audited() {
    require_root();
    let password = "pw-Zx9-requirepass";
    let server = RedisServer::start(RedisOptions {
        password: Some(password.into()),
        ..Default::default()
    });
    server.seed();
    let (_cg, d) = daemon("redis-auth", 951, &server, "", "");
    let via = Via {
        password: Some(password.into()),
        tls_ca: None,
    };
    check_cli_reads(&d, &server, &via);
    // Without the password the server's own refusal comes through.
    let o = cli_ok(&d, &server, &Via::default(), &["GET", "public:greeting"]);
    assert!(o.contains("NOAUTH"), "{o}");
    // AUTH with a username (the default user), inline and as a command.
    let o = cli_ok(
        &d,
        &server,
        &Via::default(),
        &[
            "--user",
            "default",
            "--pass",
            password,
            "--no-auth-warning",
            "GET",
            "secret:api",
        ],
    );
    assert_eq!(o.trim(), MASK);
    for resp in ["2", "3"] {
        check_py_basic(&py(&d, &server, &via, "basic", resp));
    }

    let ev = events(&d);
    let get = ev
        .iter()
        .find(|e| e["command"] == "GET" && e["target"] == "secret:db")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(get["decision"], "mask", "{get}");
    assert_eq!(get["masked_values"], 1, "{get}");
    assert_eq!(get["statement"], "GET secret:db", "{get}");
    let flush = ev
        .iter()
        .find(|e| e["command"] == "FLUSHALL")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(flush["decision"], "deny", "{flush}");
    assert_eq!(flush["rule"], "no-dangerous-redis-commands", "{flush}");
    let config = ev
        .iter()
        .find(|e| e["command"] == "CONFIG SET")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(config["decision"], "deny", "{config}");
    let dump = ev
        .iter()
        .find(|e| e["command"] == "DUMP")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(dump["rule"], "secret-keys", "{dump}");
    assert_eq!(dump["target"], "secret:db", "{dump}");
    let auth = ev
        .iter()
        .find(|e| e["command"] == "AUTH")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert!(
        auth["statement"].as_str().unwrap_or("").ends_with('?'),
        "{auth}"
    );
    let hello = ev.iter().find(|e| e["command"] == "HELLO");
    if let Some(h) = hello {
        assert!(!h.to_string().contains(password), "{h}");
    }
    let mset = ev
        .iter()
        .find(|e| e["command"] == "HGETALL")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(mset["rows"], 4, "{mset}");
    assert_eq!(mset["masked_values"], 2, "{mset}");
    let s = sessions(&d);
    assert!(
        s.iter().any(|s| s["db_user"] == "default"
            && s["masked_values"].as_u64().unwrap_or(0) > 0
            && s["denied"].as_u64().unwrap_or(0) > 0),
        "{s:?}"
    );
    // Neither the password nor a secret value is in any audit file.
    audit_holds_none_of(
        &d,
        &[
            password, SECRET_DB, SECRET_API, CREDS_USER, CREDS_PASS, AWS_KEY,
        ],
    );
    d.assert_log_lines_once();
}

#[test]
fn tls_to_the_proxy_and_verified_tls_to_a_tls_only_server() {
    require_root();
    let server = RedisServer::start(RedisOptions {
        tls_only: true,
        ..Default::default()
    });
    server.seed();
    let upstream = format!(
        "upstream_tls = \"verify-full\"\nupstream_ca = \"{}\"",
        server.ca_path().display()
    );
    let (_cg, d) = daemon("redis-tls", 952, &server, &upstream, "");
    let ca = export_ca(&d);
    let tls = Via {
        password: None,
        tls_ca: Some(ca.clone()),
    };
    check_cli_reads(&d, &server, &tls);
    check_py_basic(&py(&d, &server, &tls, "basic", "2"));
    check_py_basic(&py(&d, &server, &tls, "basic", "3"));
    // Plaintext to the proxy works too (the proxy still encrypts upstream).
    let o = cli_ok(&d, &server, &Via::default(), &["GET", "secret:db"]);
    assert_eq!(o.trim(), MASK);
    // A client that does not trust the local CA is refused: the proxy's
    // certificate really is checked.
    let bogus = Via {
        password: None,
        tls_ca: Some(server.ca_path()),
    };
    let out = cli(&d, &server, &bogus, &["PING"]);
    let o = text(&out);
    assert!(!o.contains("PONG"), "{o}");
    let s = sessions(&d);
    assert!(
        s.iter()
            .any(|s| s["client_tls"] == true && s["upstream_tls"] == true),
        "{s:?}"
    );
    assert!(
        s.iter()
            .any(|s| s["client_tls"] == false && s["upstream_tls"] == true),
        "{s:?}"
    );
}

#[test]
fn tls_client_to_plain_server_and_config_get_allowed_by_a_rule_above() {
    require_root();
    let server = RedisServer::start(RedisOptions {
        tls: true,
        ..Default::default()
    });
    server.seed();
    let allow = "[[rule]]\nname = \"allow-config-get\"\nstores = [\"redis\"]\naction = \"allow\"\nredis = { commands = [\"CONFIG GET\"] }\n";
    let (_cg, d) = daemon("redis-allow", 953, &server, "", allow);
    let ca = export_ca(&d);
    let via = Via {
        password: None,
        tls_ca: Some(ca),
    };
    let o = cli_ok(&d, &server, &via, &["CONFIG", "GET", "maxmemory"]);
    assert!(o.starts_with("maxmemory"), "{o}");
    let o = cli_ok(&d, &server, &via, &["CONFIG", "SET", "maxmemory", "1"]);
    assert!(o.contains("no-dangerous-redis-commands"), "{o}");
    let o = cli_ok(&d, &server, &via, &["GET", "secret:db"]);
    assert_eq!(o.trim(), MASK);
    let ev = events(&d);
    let get = ev
        .iter()
        .find(|e| e["command"] == "CONFIG GET")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(get["decision"], "allow", "{get}");
    assert_eq!(get["rule"], "allow-config-get", "{get}");
}

#[test]
fn pipelines_transactions_and_pubsub_stay_in_step() {
    require_root();
    let server = RedisServer::start(RedisOptions::default());
    server.seed();
    let (_cg, d) = daemon("redis-pipe", 954, &server, "", "");
    let via = Via::default();
    for resp in ["2", "3"] {
        let r = py(&d, &server, &via, "pipeline", resp);
        assert_eq!(r["replies"], 1000, "RESP{resp}: {r}");
        assert_eq!(r["problems"], serde_json::json!([]), "RESP{resp}: {r}");
        assert!(
            r["denied"]
                .as_str()
                .unwrap_or("")
                .contains("no-dangerous-redis-commands"),
            "{r}"
        );

        // redis-py reports the first error of the transaction (the denial
        // of the queued FLUSHALL), as it does for a real Redis refusal.
        let r = py(&d, &server, &via, "multi", resp);
        let e = r["error"].as_str().unwrap_or("");
        assert!(
            e.contains("no-dangerous-redis-commands") || e.contains("EXECABORT"),
            "RESP{resp}: {r}"
        );
        assert_eq!(r["a"], Value::Null, "nothing of the transaction ran: {r}");
        assert_eq!(r["b"], Value::Null, "nothing of the transaction ran: {r}");
        assert_eq!(
            r["clean"],
            serde_json::json!([true, MASK, "3"]),
            "RESP{resp}: {r}"
        );

        let r = py(&d, &server, &via, "pubsub", resp);
        assert_eq!(r["confirmations"], 3, "RESP{resp}: {r}");
        assert_eq!(r["receivers"], 1, "RESP{resp}: {r}");
        assert_eq!(
            r["messages"],
            serde_json::json!(["one", "two", format!("leak {MASK}")]),
            "RESP{resp}: {r}"
        );
        assert_eq!(r["after"], GREETING, "RESP{resp}: {r}");
    }
    // On the wire: the denial answers the queued command, EXEC answers
    // EXECABORT as Redis does, and nothing ran.
    let o = raw(
        &d,
        &server,
        r#"s.sendall(b"MULTI\r\nSET txn:raw 1\r\nFLUSHALL\r\nGET secret:db\r\nEXEC\r\nGET txn:raw\r\nQUIT\r\n")"#,
    );
    let lines: Vec<&str> = o.split("\r\n").collect();
    assert_eq!(lines[0], "+OK", "{o}");
    assert_eq!(lines[1], "+QUEUED", "{o}");
    assert!(
        lines[2].starts_with("-ERR interceptor:") && lines[2].contains("no-dangerous"),
        "{o}"
    );
    assert_eq!(lines[3], "+QUEUED", "{o}");
    assert_eq!(
        lines[4], "-EXECABORT Transaction discarded because of previous errors.",
        "{o}"
    );
    assert_eq!(lines[5], "$-1", "{o}");
    assert_eq!(lines[6], "+OK", "{o}");
    // redis-cli reading a pipe of inline commands: replies in order.
    let mut input = String::new();
    for i in 0..300 {
        input.push_str(&format!("SET cli:{i} v{i}\nGET cli:{i}\n"));
        if i == 150 {
            input.push_str("FLUSHDB\nGET secret:db\n");
        }
    }
    let mut child = d
        .exec(&[
            "redis-cli",
            "-h",
            "127.0.0.1",
            "-p",
            &server.client_port().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("redis-cli");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write");
    }
    let out = ok(
        child.wait_with_output().expect("redis-cli"),
        "redis-cli pipe",
        &d,
    );
    // (redis-cli follows an error with an empty line.)
    let lines: Vec<&str> = out.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 602, "{out}");
    let mut n = 0;
    for i in 0..300 {
        assert_eq!(lines[n], "OK", "line {n}");
        assert_eq!(lines[n + 1], format!("v{i}"), "line {n}");
        n += 2;
        if i == 150 {
            assert!(
                lines[n].contains("no-dangerous-redis-commands"),
                "{}",
                lines[n]
            );
            assert_eq!(lines[n + 1], MASK);
            n += 2;
        }
    }
    // The DENY inside MULTI and the EXECABORT are both in the audit trail.
    let ev = events(&d);
    assert!(
        ev.iter()
            .any(|e| e["command"] == "EXEC" && e["decision"] == "deny"),
        "{ev:?}"
    );
    assert!(ev.iter().any(|e| e["command"] == "SUBSCRIBE"), "{ev:?}");
}

/// A raw client inside the cgroup: sends `then` (python code with a
/// connected socket `s`), prints what came back until the proxy closes.
fn raw(d: &Daemon, server: &RedisServer, then: &str) -> String {
    let code = format!(
        r#"
import socket, os, sys
s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
{then}
out = b""
try:
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        out += chunk
except Exception as e:
    out += ("<%s>" % e).encode()
sys.stdout.write(out.decode("latin-1"))
"#,
        port = server.client_port()
    );
    let out = d.exec(&[PYTHON3, "-c", &code]).output().expect("python");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn malformed_input_ends_only_its_connection() {
    require_root();
    let server = RedisServer::start(RedisOptions::default());
    server.seed();
    let (_cg, d) = daemon("redis-bad", 955, &server, "", "");
    // A session that stays open across everything below: it has had its
    // first reply when it creates `ready`, and sends its next command once
    // the test creates `gate`.
    let ready = d.dir.path().join("survivor-ready");
    let gate = d.dir.path().join("survivor-gate");
    let survivor_code = format!(
        r#"
import socket, time, sys, os
s = socket.create_connection(("127.0.0.1", {port}), timeout=20)
s.sendall(b"PING\r\n")
first = s.recv(100)
open({ready:?}, "w").close()
deadline = time.time() + 60
while not os.path.exists({gate:?}):
    if time.time() > deadline:
        sys.exit("the gate never opened")
    time.sleep(0.02)
s.sendall(b"*2\r\n$3\r\nGET\r\n$15\r\npublic:greeting\r\n")
sys.stdout.write((first + s.recv(100)).decode())
"#,
        port = server.client_port(),
        ready = ready.display().to_string(),
        gate = gate.display().to_string(),
    );
    let mut survivor = d
        .exec(&[PYTHON3, "-c", &survivor_code])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    wait_for_file(&ready, &mut survivor, &d);

    // A giant bulk length: refused before anything is buffered; the command
    // before it is answered first.
    let o = raw(
        &d,
        &server,
        r#"s.sendall(b"PING\r\n*1\r\n$99999999999\r\n")"#,
    );
    assert!(o.starts_with("+PONG\r\n-ERR Protocol error"), "{o}");
    assert!(o.contains("over the limit"), "{o}");
    // Nesting in a command.
    let o = raw(
        &d,
        &server,
        r#"s.sendall(b"*1\r\n*1\r\n*1\r\n*1\r\n$1\r\nx\r\n")"#,
    );
    assert!(o.starts_with("-ERR Protocol error"), "{o}");
    // A bad length.
    let o = raw(&d, &server, r#"s.sendall(b"*1\r\n$-5\r\nx\r\n")"#);
    assert!(o.starts_with("-ERR Protocol error"), "{o}");
    // Random bytes.
    let _ = raw(&d, &server, r#"s.sendall(os.urandom(8192))"#);
    // A truncated frame, then the client goes away.
    let o = raw(
        &d,
        &server,
        r#"s.sendall(b"*2\r\n$3\r\nGET\r\n$10\r\nsecret"); s.shutdown(socket.SHUT_WR)"#,
    );
    assert!(o.is_empty(), "{o}");
    // A client that half-closes after its commands still gets every reply.
    let o = raw(
        &d,
        &server,
        r#"s.sendall(b"SET halfclose 1\r\nGET halfclose\r\nGET secret:db\r\n"); s.shutdown(socket.SHUT_WR)"#,
    );
    assert_eq!(o, format!("+OK\r\n$1\r\n1\r\n$8\r\n{MASK}\r\n"));
    // A client that sends nothing and leaves.
    let _ = raw(&d, &server, "s.close(); sys.exit(0)");

    std::fs::write(&gate, b"").expect("open the gate");
    let survivor = survivor.wait_with_output().expect("python");
    let s = ok(survivor, "the concurrent session", &d);
    assert_eq!(s, format!("+PONG\r\n${}\r\n{GREETING}\r\n", GREETING.len()));
    // And the daemon still serves new sessions.
    let o = cli_ok(&d, &server, &Via::default(), &["GET", "public:greeting"]);
    assert_eq!(o.trim(), GREETING);
    let s = sessions(&d);
    assert!(
        s.iter().any(|s| s["end_reason"]
            .as_str()
            .unwrap_or("")
            .contains("protocol error")),
        "{s:?}"
    );
}

#[test]
fn client_reply_off_is_refused_even_when_a_rule_allows_it() {
    require_root();
    let server = RedisServer::start(RedisOptions::default());
    server.seed();
    let allow = "[[rule]]\nname = \"allow-everything\"\nstores = [\"redis\"]\naction = \"allow\"\nredis = { commands = [\"*\"] }\n";
    let (_cg, d) = daemon("redis-reply", 956, &server, "", allow);
    let o = raw(
        &d,
        &server,
        r#"s.sendall(b"CLIENT REPLY OFF\r\nCLIENT REPLY SKIP\r\nMONITOR\r\nGET public:greeting\r\nQUIT\r\n")"#,
    );
    let lines: Vec<&str> = o.split("\r\n").collect();
    assert!(
        lines[0].starts_with("-ERR interceptor: CLIENT REPLY OFF|SKIP"),
        "{o}"
    );
    assert!(
        lines[1].starts_with("-ERR interceptor: CLIENT REPLY OFF|SKIP"),
        "{o}"
    );
    assert!(lines[2].starts_with("-ERR interceptor: MONITOR"), "{o}");
    assert_eq!(lines[3], format!("${}", GREETING.len()), "{o}");
    assert_eq!(lines[4], GREETING, "{o}");
    assert_eq!(lines[5], "+OK", "{o}");
    // SELECT is recorded as the session's database.
    let o = cli_ok(
        &d,
        &server,
        &Via::default(),
        &["-n", "3", "SET", "in-db-3", "x"],
    );
    assert_eq!(o.trim(), "OK");
    let s = sessions(&d);
    assert!(s.iter().any(|s| s["database"] == "3"), "{s:?}");
    // The allow rule lifts the rules, not the masks.
    let o = cli_ok(&d, &server, &Via::default(), &["GET", "secret:db"]);
    assert_eq!(o.trim(), MASK);
    let o = cli_ok(&d, &server, &Via::default(), &["DUMP", "secret:db"]);
    assert!(o.contains("secret-keys"), "{o}");
}

/// A tmpfs mounted for one test, lazily unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mountpoint");
        let st = std::process::Command::new("mount")
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
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn commands_are_not_forwarded_when_the_journal_cannot_record_them() {
    require_root();
    let server = RedisServer::start(RedisOptions::default());
    server.seed();
    let (_cg, mut d) = prepare("redis-full", 957, &server, "", "");
    let _fs = Tmpfs::mount(&d.state_dir(), "2m");
    d.spawn();
    let go = d.dir.path().join("go");
    let ready = d.dir.path().join("ready");
    // A session opened while the journal is writable (it creates `ready`
    // once its PING is answered); it sends its writes once the filesystem
    // is full and the test creates `go`.
    let code = format!(
        r#"
import socket, os, time, sys
s = socket.create_connection(("127.0.0.1", {port}), timeout=20)
s.sendall(b"PING\r\n")
assert s.recv(100) == b"+PONG\r\n"
open("{ready}", "w").close()
deadline = time.time() + 60
while not os.path.exists("{go}"):
    if time.time() > deadline:
        sys.exit("{go} never appeared")
    time.sleep(0.02)
out = b""
for i in range(20):
    s.sendall(b"SET full:%d x\r\n" % i)
    line = b""
    while not line.endswith(b"\r\n"):
        line += s.recv(1)
    out += line
sys.stdout.write(out.decode())
"#,
        port = server.client_port(),
        go = go.display(),
        ready = ready.display()
    );
    let mut child = d
        .exec(&[PYTHON3, "-c", &code])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    wait_for_file(&ready, &mut child, &d);
    let filler = d.state_dir().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    std::fs::write(&go, b"").expect("go");
    let out = ok(child.wait_with_output().expect("python"), "the session", &d);
    let refused = out
        .lines()
        .filter(|l| l.starts_with("-ERR interceptor: refused: the audit journal"))
        .count();
    // The journal may still fit a record or two in a partly used page.
    assert!(refused >= 15, "{out}");
    // What was refused never reached the server.
    let lines: Vec<&str> = out.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let exists = server.run(&["EXISTS", &format!("full:{i}")]);
        if l.starts_with("-ERR") {
            assert_eq!(exists.trim(), "0", "full:{i} was written: {out}");
        }
    }
    let _ = std::fs::remove_file(&filler);
}
