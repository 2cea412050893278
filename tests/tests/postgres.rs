//! The PostgreSQL handler end to end: a real server (initdb on loopback),
//! real clients (psql, psycopg, pgbench) started inside the intercepted
//! cgroup with `interceptor exec`, the shipped default policy.
//!
//! Listener ports 931-950 belong to this file.

use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use interceptor_tests::{
    expect_success as ok, files_under as walk, output_text as text,
    pg::{Auth, PgOptions, PgServer, DATABASE},
    require_root, wait_for, workspace_root, Daemon, StoreAt, TestCgroup,
};
use serde_json::Value;

/// The python3 on PATH (the one `cargo xtask setup` installs psycopg into).
const PYTHON3: &str = "python3";

fn script() -> PathBuf {
    workspace_root().join("tests/scripts/pg_client.py")
}

/// The shipped policies/default.toml with the test's [daemon] section, its
/// postgres store pointed at `pg`, the other stores at an unused address,
/// and `store_extra` (e.g. upstream_tls) in the postgres store.
fn daemon(name: &str, port: u16, pg: &PgServer, store_extra: &str) -> (TestCgroup, Daemon) {
    let cgroup = TestCgroup::new(name);
    let postgres = StoreAt {
        store: "postgres",
        target: pg.addr(),
        extra: store_extra,
    };
    let d = Daemon::with_default_policy(name, &cgroup, port, &[postgres]);
    (cgroup, d)
}

/// `args` run inside the cgroup with the libpq environment for `user`.
fn in_cgroup(d: &Daemon, pg: &PgServer, user: &str, args: &[&str]) -> Command {
    let template = pg.client(args[0], user);
    let mut cmd = d.exec(args);
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd
}

/// The local CA, exported with the CLI as an operator would.
fn export_ca(d: &Daemon) -> PathBuf {
    let out = d.cli(&["ca", "export"]);
    assert!(out.status.success(), "ca export: {}", text(&out));
    let pem = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(pem.contains("BEGIN CERTIFICATE"), "{pem}");
    let path = d.dir.path().join("exported-ca.pem");
    std::fs::write(&path, pem).expect("write CA");
    path
}

fn psycopg(d: &Daemon, pg: &PgServer, dsn: &str, args: &[&str]) -> Value {
    let s = script();
    let mut full = vec![PYTHON3, s.to_str().expect("utf-8")];
    let scenario = args[0];
    full.push(scenario);
    full.push(dsn);
    full.extend_from_slice(&args[1..]);
    let out = ok(
        in_cgroup(d, pg, "app", &full).output().expect("run python"),
        &format!("pg_client.py {scenario}"),
        d,
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {out}"))
}

/// Sessions of this daemon as the audit trail has them (once every session
/// has ended, after a flush).
fn sessions(d: &Daemon) -> Vec<Value> {
    d.wait_sessions_closed();
    d.flushed_rows("sessions", "postgres")
}

fn events(d: &Daemon) -> Vec<Value> {
    d.wait_sessions_closed();
    d.flushed_rows("events", "postgres")
}

/// psql and psycopg, every sslmode, against `pg` through the interceptor.
fn every_client_and_sslmode(name: &str, port: u16, auth: Auth, server_tls: bool) {
    require_root();
    let pg = PgServer::start(PgOptions::new(auth, server_tls));
    let upstream = if server_tls {
        format!(
            "upstream_tls = \"verify-full\"\nupstream_ca = \"{}\"",
            pg.ca_path().display()
        )
    } else {
        "upstream_tls = \"prefer\"".to_string()
    };
    let (_cg, d) = daemon(name, port, &pg, &upstream);
    let ca = export_ca(&d);
    for sslmode in ["disable", "require", "verify-full"] {
        let out = in_cgroup(
            &d,
            &pg,
            "app",
            &[
                "psql",
                "-X",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                "SELECT current_user, (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())",
                "-c",
                "SELECT name FROM users ORDER BY id",
            ],
        )
        .env("PGSSLMODE", sslmode)
        .env("PGSSLROOTCERT", &ca)
        .output()
        .expect("psql");
        let out = ok(out, &format!("psql sslmode={sslmode}"), &d);
        // The server sees TLS exactly when its leg is encrypted.
        let ssl = if server_tls { "t" } else { "f" };
        assert_eq!(
            out.trim(),
            format!("app|{ssl}\nalice\nbob\ncarol"),
            "psql sslmode={sslmode}"
        );

        let mut dsn = format!(
            "host={} port={} dbname={DATABASE} user=app password={} sslmode={sslmode} connect_timeout=10",
            pg.host(),
            pg.port(),
            pg.password("app")
        );
        // libpq treats `require` as verify-ca when a root certificate is
        // configured (the harness sets PGSSLROOTCERT to the server's CA):
        // clients then need the local CA, as with verify-full.
        dsn.push_str(&format!(" sslrootcert={}", ca.display()));
        let info = psycopg(&d, &pg, &dsn, &["info"]);
        assert_eq!(info["user"], "app", "{info}");
        assert_eq!(info["ssl"], server_tls, "{info}");
        for mode in ["extended", "prepared", "client"] {
            let r = psycopg(
                &d,
                &pg,
                &dsn,
                &["run", mode, "SELECT name FROM users WHERE id = 2"],
            );
            assert_eq!(r[0]["ok"], true, "{mode}: {r}");
            assert_eq!(r[0]["rows"], serde_json::json!([["bob"]]), "{mode}: {r}");
        }
    }
    // A verify-full client that does not trust the local CA is refused: the
    // proxy's certificate really is checked.
    let out = in_cgroup(&d, &pg, "app", &["psql", "-X", "-c", "SELECT 1"])
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", workspace_root().join("README.md"))
        .output()
        .expect("psql");
    assert!(!out.status.success(), "{}", text(&out));

    let s = sessions(&d);
    assert!(s.len() >= 10, "{s:?}");
    assert!(
        s.iter()
            .any(|s| s["client_tls"] == true && s["db_user"] == "app" && s["database"] == DATABASE),
        "{s:?}"
    );
    assert!(s.iter().any(|s| s["client_tls"] == false), "{s:?}");
    assert!(
        s.iter().all(|s| s["upstream_tls"] == server_tls
            || s["end_reason"].as_str().unwrap_or("").contains("TLS")),
        "{s:?}"
    );
}

#[test]
fn psql_and_psycopg_through_scram_server_every_sslmode() {
    every_client_and_sslmode("pg-scram", 931, Auth::Scram, false);
}

#[test]
fn psql_and_psycopg_through_md5_server_every_sslmode() {
    every_client_and_sslmode("pg-md5", 932, Auth::Md5, false);
}

#[test]
fn psql_and_psycopg_through_tls_only_server_every_sslmode() {
    every_client_and_sslmode("pg-tls", 933, Auth::Md5, true);
}

/// SCRAM with TLS on both legs: libpq on TLS announces it could bind the
/// channel, the server (on its own TLS leg) refuses that as a downgrade, and
/// the proxy cannot rewrite a flag the SCRAM proof covers. The client gets a
/// clear error naming the fix, and the fix works.
#[test]
fn scram_over_tls_on_both_legs_needs_channel_binding_disabled() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Scram, true));
    let upstream = format!(
        "upstream_tls = \"verify-full\"\nupstream_ca = \"{}\"",
        pg.ca_path().display()
    );
    let (_cg, d) = daemon("pg-scram-tls", 941, &pg, &upstream);
    let ca = export_ca(&d);
    let psql = |sslmode: &str, binding: &str| {
        in_cgroup(
            &d,
            &pg,
            "app",
            &["psql", "-X", "-A", "-t", "-c", "SELECT current_user"],
        )
        .env("PGSSLMODE", sslmode)
        .env("PGSSLROOTCERT", &ca)
        .env("PGCHANNELBINDING", binding)
        .output()
        .expect("psql")
    };
    let out = psql("require", "prefer");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("channel_binding=disable"),
        "{}",
        text(&out)
    );
    for (sslmode, binding) in [
        ("require", "disable"),
        ("verify-full", "disable"),
        ("disable", "prefer"),
    ] {
        let out = ok(
            psql(sslmode, binding),
            &format!("psql sslmode={sslmode} channel_binding={binding}"),
            &d,
        );
        assert_eq!(out.trim(), "app");
    }
    // channel_binding=require can never work through TLS termination.
    let out = psql("require", "require");
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn pgbench_simple_and_prepared_complete_without_errors() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Scram, false));
    // Initialisation creates tables: done directly (the default policy
    // denies DDL from CI, as it should).
    let out = pg
        .client("pgbench", "app")
        .args(["-i", "-s", "1", "-q"])
        .output()
        .expect("pgbench -i");
    assert!(out.status.success(), "pgbench -i: {}", text(&out));
    let (_cg, d) = daemon("pg-bench", 934, &pg, "upstream_tls = \"disable\"");
    for mode in ["simple", "extended", "prepared"] {
        for script in [&["-S"][..], &["-N"][..]] {
            let mut args = vec![
                "pgbench", "-n", "-c", "4", "-j", "2", "-t", "200", "-M", mode,
            ];
            args.extend_from_slice(script);
            let out = in_cgroup(&d, &pg, "app", &args).output().expect("pgbench");
            let o = ok(out, &format!("pgbench -M {mode} {script:?}"), &d);
            assert!(
                o.contains("number of transactions actually processed: 800/800"),
                "pgbench -M {mode}: {o}"
            );
            assert!(o.contains("number of failed transactions: 0"), "{o}");
        }
    }
    let ev = events(&d);
    let selects = ev
        .iter()
        .filter(|e| e["command"] == "SELECT" && e["decision"] == "allow")
        .count();
    assert!(selects >= 3 * 800, "{selects} SELECT events");
}

#[test]
fn denied_statements_answer_42501_and_the_session_goes_on() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    let (_cg, d) = daemon("pg-deny", 935, &pg, "upstream_tls = \"disable\"");
    let dsn = format!(
        "host={} port={} dbname={DATABASE} user=app sslmode=disable",
        pg.host(),
        pg.port()
    );
    let denied = [
        "DROP TABLE users",
        "DELETE FROM users",
        "UPDATE users SET name = 'x'",
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT * FROM pg_catalog.pg_read_file('/etc/passwd')",
        "WITH gone AS (DELETE FROM users RETURNING id) SELECT count(*) FROM gone",
        "COPY users TO PROGRAM 'id'",
        "COPY users FROM '/etc/passwd'",
        "DO $$ BEGIN PERFORM 1; END $$",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'postgres', false)",
        "PREPARE p AS DELETE FROM users",
        "SELEC broken syntax",
    ];
    for mode in ["extended", "prepared", "client", "pipeline"] {
        let mut args = vec!["run", mode];
        args.extend_from_slice(&denied);
        let r = psycopg(&d, &pg, &dsn, &args);
        for o in r.as_array().expect("list") {
            let sql = o["sql"].as_str().unwrap_or("");
            if sql == "SELECT 1" {
                assert_eq!(o["ok"], true, "{mode}: session broken after a denial: {r}");
                continue;
            }
            assert_eq!(o["ok"], false, "{mode}: {sql} was not denied: {o}");
            assert_eq!(o["sqlstate"], "42501", "{mode}: {sql}: {o}");
            assert!(
                o["message"].as_str().unwrap_or("").contains("interceptor"),
                "{mode}: {o}"
            );
        }
    }
    // The table is intact.
    assert_eq!(pg.query("app", "SELECT count(*) FROM users").trim(), "3");

    // Inside a transaction: the denial fails the transaction on both sides,
    // as any error would; the earlier insert is rolled back.
    let t = psycopg(&d, &pg, &dsn, &["txn"]);
    assert_eq!(t[0]["ok"], true, "{t}");
    assert_eq!(t[1]["sqlstate"], "42501", "{t}");
    assert_eq!(t[2]["sqlstate"], "25P02", "{t}");
    assert!(
        t[3]["message"].as_str().unwrap_or("").contains("INERROR"),
        "{t}"
    );
    assert_eq!(t[4]["rows"], serde_json::json!([[0]]), "{t}");

    // psql (simple protocol), several statements, ON_ERROR_STOP off.
    let out = in_cgroup(
        &d,
        &pg,
        "app",
        &[
            "psql",
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT 'before'",
            "-c",
            "DROP TABLE users",
            "-c",
            "BEGIN",
            "-c",
            "TRUNCATE users",
            "-c",
            "ROLLBACK",
            "-c",
            "SELECT 'after'",
        ],
    )
    .output()
    .expect("psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("before") && stdout.contains("after"),
        "{}",
        text(&out)
    );
    assert_eq!(stderr.matches("interceptor:").count(), 2, "{}", text(&out));

    let ev = events(&d);
    let drop = ev
        .iter()
        .find(|e| e["command"] == "DROP TABLE" && e["decision"] == "deny")
        .unwrap_or_else(|| panic!("no denied DROP TABLE event: {ev:?}"));
    assert_eq!(drop["rule"], "no-ddl", "{drop}");
    assert_eq!(drop["target"], "users", "{drop}");
}

/// Every output value of the bypass attempts, and the error messages.
fn leaked(r: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for o in r.as_array().into_iter().flatten() {
        // The SQL text itself may hold a literal credential (the detector
        // test): only what came back counts.
        let all = format!("{} {}", o["rows"], o["message"]);
        for secret in ["pw-row-", "AKIAABCDEFGHIJKLMNOP", "AKIAQRSTUVWXYZ234567"] {
            if all.contains(secret) {
                found.push(format!("{secret} in {o}"));
            }
        }
    }
    found
}

#[test]
fn masked_columns_cannot_be_read_through_any_bypass() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    pg.admin_sql(
        DATABASE,
        "CREATE VIEW v_users AS SELECT id, password AS pw FROM users;\n\
         CREATE VIEW v_v_users AS SELECT * FROM v_users;\n\
         CREATE VIEW v_names AS SELECT id, name FROM users;\n\
         GRANT SELECT ON v_users, v_v_users, v_names TO app;\n\
         ALTER TABLE users ADD CONSTRAINT short_names CHECK (length(name) < 20);",
    );
    let (_cg, d) = daemon("pg-mask", 936, &pg, "upstream_tls = \"disable\"");
    let dsn = format!(
        "host={} port={} dbname={DATABASE} user=app sslmode=disable",
        pg.host(),
        pg.port()
    );
    let masked_ok = [
        "SELECT password FROM users ORDER BY id",
        "SELECT * FROM users ORDER BY id",
        "SELECT u.password AS p FROM users u ORDER BY id",
        "SELECT p FROM (SELECT password AS p, id FROM users) s ORDER BY id",
        "WITH x AS (SELECT id, password FROM users) SELECT password FROM x ORDER BY id",
        "SELECT api_key FROM users ORDER BY id",
        "SELECT 'AKIAABCDEFGHIJKLMNOP' AS k",
    ];
    let denied = [
        "SELECT upper(password) FROM users",
        "SELECT password || '' FROM users",
        "SELECT password::text FROM users",
        "SELECT CAST(password AS varchar) FROM users",
        "SELECT coalesce(password, '') FROM users",
        "SELECT row_to_json(u) FROM users u",
        "SELECT u::text FROM users u",
        "SELECT u FROM users u",
        "SELECT users FROM users",
        "SELECT to_json(users.*) FROM users",
        "SELECT json_agg(u) FROM users u",
        "SELECT string_agg(password, ',') FROM users",
        "SELECT (SELECT password FROM users LIMIT 1)",
        "SELECT id FROM users WHERE password LIKE 'pw%'",
        "SELECT id FROM users ORDER BY password",
        "SELECT id, name FROM users UNION ALL SELECT id, password FROM users",
        "SELECT password::int FROM users",
        "SELECT query_to_xml('select password from users', true, true, '')",
        "SELECT pw || '' FROM v_users",
        "SELECT * FROM v_users ORDER BY id",
        "SELECT * FROM v_v_users",
        "SELECT x.p FROM (SELECT * FROM users) x(i, n, e, p, k)",
        "PREPARE leak AS SELECT upper(password) FROM users",
        "CREATE TEMP TABLE copied AS SELECT password FROM users",
    ];
    let mut all: Vec<&str> = masked_ok.to_vec();
    all.extend_from_slice(&denied);
    for mode in ["extended", "binary", "prepared", "client", "pipeline"] {
        let mut args = vec!["run", mode];
        args.extend_from_slice(&all);
        let r = psycopg(&d, &pg, &dsn, &args);
        let leaks = leaked(&r);
        assert!(
            leaks.is_empty(),
            "{mode}: masked values reached the client: {leaks:#?}"
        );
        for o in r.as_array().expect("list") {
            let sql = o["sql"].as_str().unwrap_or("");
            if denied.contains(&sql) {
                assert_eq!(o["sqlstate"], "42501", "{mode}: {sql} not denied: {o}");
            } else {
                assert_eq!(o["ok"], true, "{mode}: {sql} failed: {o}");
            }
        }
        let first = &r[0];
        assert_eq!(
            first["rows"],
            serde_json::json!([["********"], ["********"], ["********"]]),
            "{mode}: {first}"
        );
        // Unmasked columns come through untouched.
        let star = r
            .as_array()
            .expect("list")
            .iter()
            .find(|o| o["sql"] == "SELECT * FROM users ORDER BY id")
            .expect("star result");
        assert_eq!(star["rows"][0][1], "alice", "{star}");
        assert_eq!(star["rows"][0][2], "alice@example.com", "{star}");
    }

    // COPY out and error messages that echo rows, through psql.
    let out = in_cgroup(
        &d,
        &pg,
        "app",
        &[
            "psql",
            "-X",
            "-A",
            "-t",
            "-c",
            "COPY users TO STDOUT",
            "-c",
            "COPY (SELECT password FROM users) TO STDOUT",
            "-c",
            "COPY users (id, name) TO STDOUT",
            "-c",
            "UPDATE users SET name = repeat('x', 30) WHERE id = 1",
            "-c",
            "SELECT name FROM users WHERE id = 1",
        ],
    )
    .output()
    .expect("psql");
    let all = text(&out);
    assert!(!all.contains("pw-row-"), "COPY/errors leaked: {all}");
    assert!(!all.contains("AKIAABCDEFGHIJKLMNOP"), "{all}");
    assert!(
        all.contains("1\talice"),
        "COPY of unmasked columns works: {all}"
    );
    assert!(
        all.contains("23514") || all.contains("short_names"),
        "{all}"
    );

    let ev = events(&d);
    assert!(
        ev.iter()
            .any(|e| e["decision"] == "mask" && e["masked_values"].as_u64().unwrap_or(0) >= 3),
        "{ev:?}"
    );
    let s = sessions(&d);
    assert!(
        s.iter()
            .any(|s| s["masked_values"].as_u64().unwrap_or(0) > 0),
        "{s:?}"
    );
}

/// A raw protocol client: startup as `app` on a trust server, returns the
/// stream after the first ReadyForQuery.
fn raw_session(d: &Daemon, pg: &PgServer, then: &str) -> Output {
    let code = format!(
        r#"
import socket, struct, sys
s = socket.create_connection(("{host}", {port}), timeout=10)
params = b"user\x00app\x00database\x00{db}\x00\x00"
s.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
buf = b""
while b"Z\x00\x00\x00\x05" not in buf:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("closed during startup")
    buf += chunk
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
        host = pg.host(),
        port = pg.port(),
        db = DATABASE,
    );
    in_cgroup(d, pg, "app", &[PYTHON3, "-c", &code])
        .output()
        .expect("python")
}

#[test]
fn malformed_oversized_and_function_call_messages_end_only_their_session() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    let (_cg, d) = daemon("pg-bad", 937, &pg, "upstream_tls = \"disable\"");
    // A session that must stay open, in the middle of a query, across
    // everything below: it waits for an advisory lock that a superuser
    // session (over the unix socket, not intercepted) holds until the end.
    let mut holder = pg
        .superuser_psql(DATABASE)
        .args(["-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql holding the lock");
    {
        use std::io::Write;
        let stdin = holder.stdin.as_mut().expect("stdin");
        stdin
            .write_all(b"SELECT pg_advisory_lock(4242);\n")
            .expect("write to psql");
        stdin.flush().expect("flush psql stdin");
    }
    let lock_holders = |granted: bool| {
        pg.admin_sql(
            DATABASE,
            &format!(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242 AND granted = {granted};"
            ),
        )
        .trim()
        .to_string()
    };
    wait_for(
        || format!("the superuser holding the lock\n{}", pg.log_tail(20)),
        || (lock_holders(true) == "1").then_some(()),
    );
    let survivor = in_cgroup(
        &d,
        &pg,
        "app",
        &[
            "psql",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "SELECT pg_advisory_lock(4242)",
            "-c",
            "SELECT 'survived'",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("psql");
    // Its query went through the proxy and waits on the server.
    wait_for(
        || {
            format!(
                "the survivor waiting for the lock\n{}\n{}",
                pg.log_tail(20),
                d.log_text()
            )
        },
        || (lock_holders(false) == "1").then_some(()),
    );

    // A Query whose length runs past the message.
    let out = raw_session(&d, &pg, r#"s.sendall(b"Q\x00\x00\x00\x09SELECT 1")"#);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("08P01") || out.stdout.is_empty(),
        "{}",
        text(&out)
    );
    // A message declaring 1 GiB.
    let out = raw_session(&d, &pg, r#"s.sendall(b"Q\x40\x00\x00\x00" + b"x" * 1000)"#);
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(
        o.contains("08P01") && o.contains("over the limit"),
        "{}",
        text(&out)
    );
    // An unknown message type.
    let out = raw_session(&d, &pg, r#"s.sendall(b"\x01\x00\x00\x00\x04")"#);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("08P01"),
        "{}",
        text(&out)
    );
    // Random bytes as the very first message.
    let code = format!(
        "import socket,os\ns=socket.create_connection(('{}',{}),timeout=10)\ns.sendall(os.urandom(4096))\nprint(s.recv(65536))",
        pg.host(),
        pg.port()
    );
    let _ = in_cgroup(&d, &pg, "app", &[PYTHON3, "-c", &code]).output();
    // FunctionCall: refused with 42501, the session goes on.
    let out = raw_session(
        &d,
        &pg,
        r#"
s.sendall(b"F" + struct.pack("!IIhhh", 14, 1598, 0, 0, 0))
s.sendall(b"Q\x00\x00\x00\x0eSELECT 42\x00")
s.sendall(b"X\x00\x00\x00\x04")
"#,
    );
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(
        o.contains("42501") && o.contains("FunctionCall"),
        "{}",
        text(&out)
    );
    // The next query ran: its RowDescription and CommandComplete came back.
    assert!(
        o.contains("?column?") && o.contains("SELECT 1"),
        "session went on after the refused FunctionCall: {o}"
    );

    // Still waiting after all that: release the lock.
    assert_eq!(
        lock_holders(false),
        "1",
        "the survivor is no longer waiting for the lock\n{}",
        d.log_text()
    );
    drop(holder.stdin.take());
    let out = holder.wait_with_output().expect("psql holding the lock");
    pg.expect_ok(&out, "psql holding the lock");
    let survivor = survivor.wait_with_output().expect("psql");
    let s = ok(survivor, "the concurrent session", &d);
    assert!(s.contains("survived"), "{s}");
    // And the daemon still serves new sessions.
    let out = in_cgroup(
        &d,
        &pg,
        "app",
        &["psql", "-X", "-A", "-t", "-c", "SELECT 'still here'"],
    )
    .output()
    .expect("psql");
    assert!(ok(out, "psql after the bad sessions", &d).contains("still here"));
}

#[test]
fn cancel_requests_reach_the_server_the_client_dialled() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Scram, false));
    let (_cg, d) = daemon("pg-cancel", 938, &pg, "upstream_tls = \"disable\"");
    for sslmode in ["disable", "require"] {
        let dsn = format!(
            "host={} port={} dbname={DATABASE} user=app password={} sslmode={sslmode}",
            pg.host(),
            pg.port(),
            pg.password("app")
        );
        for scenario in ["cancel", "cancel_safe"] {
            let r = psycopg(&d, &pg, &dsn, &[scenario]);
            assert_eq!(r["sqlstate"], "57014", "{scenario} {sslmode}: {r}");
            assert!(r["seconds"].as_f64().unwrap_or(99.0) < 10.0, "{r}");
            assert_eq!(r["after"], 1, "{r}");
            // libpq 18 (psycopg-binary) reads the cancel connection to its
            // end: over TLS it must end with close_notify.
            assert_eq!(r["cancel_error"], Value::Null, "{scenario} {sslmode}: {r}");
        }
    }
    let ev = events(&d);
    assert!(
        ev.iter().filter(|e| e["command"] == "CANCEL").count() >= 4,
        "{ev:?}"
    );
}

#[test]
fn every_statement_is_one_audit_event_without_literals() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Scram, false));
    let (_cg, d) = daemon("pg-audit", 939, &pg, "upstream_tls = \"disable\"");
    let out = in_cgroup(
        &d,
        &pg,
        "app",
        &[
            "psql",
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT name FROM users WHERE email = 'bob@example.com'",
            "-c",
            "SELECT password FROM users",
            "-c",
            "DROP TABLE users",
        ],
    )
    .env("CI_JOB_NAME", "audit-probe")
    .output()
    .expect("psql");
    let _ = text(&out);
    let ev = events(&d);
    let sel = ev
        .iter()
        .find(|e| {
            e["command"] == "SELECT" && e["statement"].as_str().unwrap_or("").contains("email")
        })
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(sel["decision"], "allow", "{sel}");
    assert_eq!(sel["rows"], 1, "{sel}");
    assert!(
        !sel.to_string().contains("bob@example.com"),
        "literal in audit: {sel}"
    );
    assert!(
        sel["statement"].as_str().unwrap_or("").contains("$1"),
        "{sel}"
    );
    assert_eq!(sel["target"], "users", "{sel}");
    let masked = ev
        .iter()
        .find(|e| e["decision"] == "mask")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(masked["masked_values"], 3, "{masked}");
    assert_eq!(masked["rows"], 3, "{masked}");
    let drop = ev
        .iter()
        .find(|e| e["decision"] == "deny")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(drop["rule"], "no-ddl", "{drop}");
    let s = sessions(&d);
    let s = s
        .iter()
        .find(|s| s["commands"].as_u64() == Some(3))
        .unwrap_or_else(|| panic!("{s:?}"));
    assert_eq!(s["db_user"], "app", "{s}");
    assert_eq!(s["database"], DATABASE, "{s}");
    assert_eq!(s["denied"], 1, "{s}");
    assert_eq!(s["masked_values"], 3, "{s}");
    assert_eq!(s["comm"], "psql", "{s}");
    // Audit files never hold the secrets.
    for path in walk(&d.audit_dir()) {
        let bytes = std::fs::read(&path).expect("read parquet");
        let hay = String::from_utf8_lossy(&bytes);
        assert!(
            !hay.contains("pw-row-"),
            "{} holds a password",
            path.display()
        );
    }
    d.assert_log_lines_once();
}

/// The extended protocol: a server error is recorded on the statement that
/// failed, with its SQLSTATE, and a denied statement is one event (its
/// denial), not also a "not executed" Execute.
#[test]
fn extended_protocol_errors_are_recorded_on_the_statement_that_failed() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    let (_cg, d) = daemon("pg-ext-audit", 946, &pg, "upstream_tls = \"disable\"");
    let dsn = format!(
        "host={} port={} dbname={DATABASE} user=app sslmode=disable",
        pg.host(),
        pg.port()
    );
    for mode in ["extended", "prepared"] {
        let r = psycopg(
            &d,
            &pg,
            &dsn,
            &[
                "run",
                mode,
                "DROP TABLE users",
                "SELECT name, count(*) FROM users",
            ],
        );
        let failed: Vec<&Value> = r
            .as_array()
            .expect("list")
            .iter()
            .filter(|o| o["ok"] == false)
            .collect();
        let states: Vec<&str> = failed
            .iter()
            .map(|o| o["sqlstate"].as_str().unwrap_or(""))
            .collect();
        let expected: &[&str] = if mode == "prepared" {
            &["42501", "42501", "42803", "42803"]
        } else {
            &["42501", "42803"]
        };
        assert_eq!(states, expected, "{mode}: {r}");
    }
    let ev = events(&d);
    let drops: Vec<&Value> = ev.iter().filter(|e| e["command"] == "DROP TABLE").collect();
    // One Parse each in extended (1) and prepared (2) mode.
    assert_eq!(drops.len(), 3, "{drops:?}");
    for e in &drops {
        assert_eq!(e["decision"], "deny", "{e}");
        assert_eq!(e["rule"], "no-ddl", "{e}");
    }
    let strays: Vec<&Value> = ev
        .iter()
        .filter(|e| {
            e["statement"].as_str().unwrap_or("").contains("<portal")
                || e["error"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("not executed")
        })
        .collect();
    assert!(strays.is_empty(), "events for skipped messages: {strays:?}");
    let grouping: Vec<&Value> = ev
        .iter()
        .filter(|e| e["statement"].as_str().unwrap_or("").contains("count("))
        .collect();
    assert_eq!(grouping.len(), 3, "{ev:?}");
    for e in &grouping {
        assert_eq!(e["decision"], "error", "{e}");
        let error = e["error"].as_str().unwrap_or("");
        assert!(error.starts_with("42803"), "{e}");
    }
    d.assert_log_lines_once();
}

#[test]
fn sslrequest_followed_by_plaintext_is_refused() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    let (_cg, d) = daemon("pg-cve", 940, &pg, "upstream_tls = \"disable\"");
    // SSLRequest and a plaintext startup in one write (CVE-2021-23214).
    let code = format!(
        r#"
import socket, struct
s = socket.create_connection(("{}", {}), timeout=10)
params = b"user\x00app\x00database\x00ci\x00\x00"
s.sendall(struct.pack("!II", 8, 80877103) + struct.pack("!II", 8 + len(params), 196608) + params)
data = b""
try:
    while True:
        c = s.recv(4096)
        if not c:
            break
        data += c
except Exception:
    pass
print(repr(data))
"#,
        pg.host(),
        pg.port()
    );
    let out = in_cgroup(&d, &pg, "app", &[PYTHON3, "-c", &code])
        .output()
        .expect("python");
    let o = String::from_utf8_lossy(&out.stdout);
    assert!(
        !o.contains("R\\x00"),
        "the plaintext startup was served: {o}"
    );
    assert!(
        !o.contains("'S"),
        "TLS was offered after the plaintext bytes: {o}"
    );
}

#[test]
fn copy_in_and_out_notices_and_notifications_pass_through() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    pg.admin_sql(
        DATABASE,
        "CREATE TABLE items (id int, label text);\nGRANT ALL ON items TO app;",
    );
    let (_cg, d) = daemon("pg-copy", 942, &pg, "upstream_tls = \"disable\"");
    let mut child = in_cgroup(
        &d,
        &pg,
        "app",
        &[
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "COPY items (id, label) FROM STDIN",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("psql");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        for i in 0..5000 {
            writeln!(stdin, "{i}\tlabel-{i}").expect("write COPY data");
        }
        // A credential in a non-masked column: the detectors catch it on
        // the way out.
        writeln!(stdin, "9999\tkey AKIAQRSTUVWXYZ234567 leaked").expect("write");
    }
    let out = ok(
        child.wait_with_output().expect("psql"),
        "COPY FROM STDIN",
        &d,
    );
    assert!(out.contains("COPY 5001"), "{out}");
    assert_eq!(pg.query("app", "SELECT count(*) FROM items").trim(), "5001");

    let out = in_cgroup(
        &d,
        &pg,
        "app",
        &[
            "psql",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "COPY items TO STDOUT",
            "-c",
            "LISTEN ch",
            "-c",
            "NOTIFY ch, 'hello'",
            "-c",
            "BEGIN",
            "-c",
            "BEGIN",
            "-c",
            "ROLLBACK",
        ],
    )
    .output()
    .expect("psql");
    let all = text(&out);
    assert!(all.contains("4999\tlabel-4999"), "{all}");
    assert!(
        !all.contains("AKIAQRSTUVWXYZ234567"),
        "detector missed COPY data: {all}"
    );
    assert!(all.contains("9999\tkey ******** leaked"), "{all}");
    assert!(
        all.contains("Asynchronous notification \"ch\" with payload \"hello\""),
        "{all}"
    );
    // A NoticeResponse (WARNING) in the middle of a session.
    assert!(
        all.contains("there is already a transaction in progress"),
        "{all}"
    );
}

/// A table created after the catalog was read (here by an admin, outside
/// the proxy, as a migration run from elsewhere would): a statement that
/// names it makes the session read the catalog again before it is
/// forwarded, outside and inside a transaction block, so that exactly the
/// masked columns are masked (alembic's first read of alembic_version used
/// to come back as `********`). A relation that does not exist costs one
/// read and is reported as such.
#[test]
fn relations_unknown_to_the_catalog_make_the_session_reread_it() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    let (_cg, d) = daemon("pg-late", 943, &pg, "upstream_tls = \"disable\"");
    let psql = |sql: &[&str]| {
        let mut args = vec!["psql", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"];
        for s in sql {
            args.push("-c");
            args.push(s);
        }
        ok(
            in_cgroup(&d, &pg, "app", &args).output().expect("psql"),
            "psql",
            &d,
        )
    };
    // Reads the catalog (shared with the next sessions for a while).
    assert_eq!(
        psql(&["SELECT name FROM users WHERE id = 1"]).trim(),
        "alice"
    );
    pg.admin_sql(
        DATABASE,
        "CREATE TABLE late (id int, deploy_token text);\n\
         INSERT INTO late VALUES (7, 'tok-secret-7');\n\
         GRANT SELECT ON late TO app;",
    );
    let out = psql(&["SELECT * FROM late", "SELECT * FROM late"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["7|********", "7|********"], "{out}");

    // Inside a transaction block (psycopg's default, alembic's migration
    // context), on a session whose catalog is already loaded.
    pg.admin_sql(
        DATABASE,
        "CREATE TABLE later (id int, version_num text, db_password text);\n\
         INSERT INTO later VALUES (8, 'a1', 'pw-later-8');\n\
         GRANT SELECT ON later TO app;",
    );
    let out = psql(&[
        "BEGIN",
        "SELECT id, version_num, db_password FROM later",
        "COMMIT",
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, vec!["BEGIN", "8|a1|********", "COMMIT"], "{out}");

    // A relation that does not exist: named in the error, session goes on.
    let args = [
        "psql",
        "-X",
        "-A",
        "-t",
        "-c",
        "SELECT * FROM nowhere ORDER BY 1",
        "-c",
        "SELECT * FROM nowhere ORDER BY 1",
        "-c",
        "SELECT id FROM late",
    ];
    let out = in_cgroup(&d, &pg, "app", &args).output().expect("psql");
    let t = text(&out);
    assert_eq!(
        t.matches("ERROR:  interceptor: the statement would reveal masked values: relation nowhere is not in the catalog")
            .count(),
        2,
        "{t}"
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7", "{t}");
}

/// PostgreSQL 17 direct TLS (`sslnegotiation=direct`): a ClientHello first,
/// ALPN `postgresql` required. The harness's libpq is older, so a python
/// client speaks it.
#[test]
fn direct_tls_with_alpn_is_accepted_and_without_alpn_refused() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    let (_cg, d) = daemon("pg-direct", 944, &pg, "upstream_tls = \"disable\"");
    let ca = export_ca(&d);
    let probe = |alpn: bool| {
        let code = format!(
            r#"
import socket, ssl, struct, sys
ctx = ssl.create_default_context(cafile="{ca}")
{alpn}
raw = socket.create_connection(("{host}", {port}), timeout=10)
try:
    s = ctx.wrap_socket(raw, server_hostname="{host}")
except Exception as e:
    print("handshake failed:", e)
    sys.exit(0)
print("alpn:", s.selected_alpn_protocol())
params = b"user\x00app\x00database\x00ci\x00\x00"
s.sendall(struct.pack("!II", 8 + len(params), 196608) + params)
data = b""
try:
    while b"Z\x00\x00\x00\x05" not in data:
        c = s.recv(65536)
        if not c:
            break
        data += c
except Exception as e:
    print("read failed:", e)
print("ready" if b"Z\x00\x00\x00\x05" in data else "not ready: %r" % data[:200])
"#,
            ca = ca.display(),
            host = pg.host(),
            port = pg.port(),
            alpn = if alpn {
                "ctx.set_alpn_protocols(['postgresql'])"
            } else {
                ""
            },
        );
        let out = in_cgroup(&d, &pg, "app", &[PYTHON3, "-c", &code])
            .output()
            .expect("python");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let with = probe(true);
    assert!(
        with.contains("alpn: postgresql") && with.contains("ready"),
        "{with}"
    );
    let without = probe(false);
    assert!(
        !without.contains("ready\n"),
        "direct TLS without ALPN was served: {without}"
    );
    let s = sessions(&d);
    assert!(
        s.iter()
            .any(|s| s["client_tls"] == true && s["db_user"] == "app"),
        "{s:?}"
    );
}

/// Each strategy end to end: partial, hash (a prefix of `audit hash`), null.
#[test]
fn partial_hash_and_null_strategies() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    let masks = "\n[[mask]]\nname = \"emails\"\nstores = [\"postgres\"]\ncolumns = [\"users.email\"]\nstrategy = \"partial\"\n\n\
                 [[mask]]\nname = \"names\"\nstores = [\"postgres\"]\ncolumns = [\"public.users.name\"]\nstrategy = \"hash\"\n\n\
                 [[mask]]\nname = \"ids\"\nstores = [\"postgres\"]\ncolumns = [\"users.id\"]\nstrategy = \"null\"\n";
    let cgroup = TestCgroup::new("pg-strategies");
    let postgres = StoreAt {
        store: "postgres",
        target: pg.addr(),
        extra: "upstream_tls = \"disable\"",
    };
    let mut d = Daemon::prepare_default_policy("pg-strategies", &cgroup, 945, &[postgres], masks);
    d.spawn();
    let out = in_cgroup(
        &d,
        &pg,
        "app",
        &[
            "psql",
            "-X",
            "-A",
            "-t",
            "-c",
            "SELECT id IS NULL, name FROM users",
            "-c",
            "SELECT id, name, email FROM users LIMIT 1",
        ],
    )
    .output()
    .expect("psql");
    // `id IS NULL` is an expression over a masked column: denied.
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains("42501") || stderr.contains("interceptor:"),
        "{}",
        text(&out)
    );
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let hash = d.cli(&["audit", "hash", "alice"]);
    let hash = String::from_utf8_lossy(&hash.stdout).trim().to_string();
    assert!(hash.starts_with("hmac:"), "{hash}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0], format!("|{}|****.com", &hash[..21]), "{out}");
}

/// Errors point the right way: a constraint violation's DETAIL comes
/// through for a table without masked columns and is hidden for one with
/// them; a denial caused by an unknown relation names it.
#[test]
fn error_details_are_hidden_only_where_masked_values_could_be() {
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    pg.admin_sql(
        DATABASE,
        "CREATE TABLE plain (id int PRIMARY KEY, label text);\n\
         INSERT INTO plain VALUES (1, 'one');\n\
         GRANT ALL ON plain TO app;\n\
         ALTER TABLE users ADD CONSTRAINT users_id_key UNIQUE (id);\n",
    );
    let (_cg, d) = daemon("pg-errors", 947, &pg, "upstream_tls = \"disable\"");
    let psql = |sql: &str| {
        let out = in_cgroup(&d, &pg, "app", &["psql", "-X", "-c", sql])
            .output()
            .expect("psql");
        text(&out)
    };
    let t = psql("INSERT INTO plain VALUES (1, 'again')");
    assert!(
        t.contains("duplicate key value violates unique constraint \"plain_pkey\""),
        "{t}"
    );
    assert!(t.contains("DETAIL:  Key (id)=(1) already exists."), "{t}");
    let t = psql("INSERT INTO users (id, name) VALUES (1, 'again')");
    assert!(t.contains("users_id_key"), "{t}");
    assert!(t.contains("detail hidden by interceptor"), "{t}");
    assert!(!t.contains("Key (id)"), "{t}");
    let t = psql("SELECT * FROM missing_table ORDER BY 1");
    assert!(
        t.contains("relation missing_table is not in the catalog"),
        "{t}"
    );
    // Without the masking question, the server's own error.
    let t = psql("SELECT * FROM missing_table");
    assert!(
        t.contains("relation \"missing_table\" does not exist"),
        "{t}"
    );
}

/// A session in another client_encoding (psycopg's test suite sets LATIN9):
/// a statement that is not UTF-8 never ends the session. The default
/// policy denies it as unparsable, saying why; with no rules it runs.
#[test]
fn statements_in_another_client_encoding_never_end_the_session() {
    use std::os::unix::ffi::OsStrExt;
    require_root();
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    // 'café' in LATIN9: 0xE9 is not UTF-8; the column is named "€" (0xA4),
    // so the server's RowDescription is not UTF-8 either; and an error
    // naming a relation "té" comes back in LATIN9 too.
    let latin9 = std::ffi::OsStr::from_bytes(b"SELECT 'caf\xe9' AS \"\xa4\"");
    let missing = std::ffi::OsStr::from_bytes(b"SELECT 1 FROM \"t\xe9\"");
    let run = |d: &Daemon| {
        let out = in_cgroup(d, &pg, "app", &["psql", "-X", "-A", "-t"])
            .env("PGCLIENTENCODING", "LATIN9")
            .arg("-c")
            .arg(latin9)
            .arg("-c")
            .arg(missing)
            .args(["-c", "SELECT 'still here'"])
            .output()
            .expect("psql");
        (
            out.stdout,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_cg, d) = daemon("pg-encoding", 948, &pg, "upstream_tls = \"disable\"");
    let (stdout, stderr) = run(&d);
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(stderr.contains("not valid UTF-8"), "{stderr}");
    assert!(stderr.contains("no-unparsable-sql"), "{stderr}");
    assert!(
        stdout.contains("still here"),
        "the session ended: {stdout} {stderr}"
    );
    drop(d);

    let cg = TestCgroup::new("pg-encoding-open");
    let postgres = interceptor_tests::Store {
        name: "postgres".into(),
        protocol: "postgres".into(),
        targets: vec![pg.addr()],
    };
    let mut open = Daemon::prepare("pg-encoding-open", &cg, 949, &[postgres], "");
    open.spawn();
    let (stdout, stderr) = run(&open);
    // psql prints the result in the session's encoding: 0xE9 again.
    assert!(
        stdout.windows(4).any(|w| w == b"caf\xe9"),
        "{} {stderr}",
        String::from_utf8_lossy(&stdout)
    );
    // The server's error, in LATIN9 as the server sent it.
    assert!(
        stderr.contains("relation \"t\u{fffd}\" does not exist"),
        "{stderr}"
    );
    assert!(String::from_utf8_lossy(&stdout).contains("still here"));
}
