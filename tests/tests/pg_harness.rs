//! The PostgreSQL harness itself: real servers (trust, md5, SCRAM; with and
//! without TLS) reached DIRECTLY by psql, psycopg and pgbench, no
//! interceptor in between. If these fail, the interceptor's PostgreSQL tests
//! cannot mean anything.

use std::process::Output;

use interceptor_tests::{
    pg::{Auth, PgOptions, PgServer, USERS_ROWS},
    require_root,
};

/// The python3 on PATH (the one `cargo xtask setup` installs psycopg into).
const PYTHON3: &str = "python3";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn count_users(pg: &PgServer, sslmode: &str) -> String {
    let out = pg
        .psql("app", &["-A", "-t", "-c", "SELECT count(*) FROM users"])
        .env("PGSSLMODE", sslmode)
        .output()
        .expect("run psql");
    pg.expect_ok(&out, &format!("psql sslmode={sslmode}"))
        .trim()
        .to_string()
}

fn ssl_in_use(pg: &PgServer, sslmode: &str) -> String {
    let out = pg
        .psql(
            "app",
            &[
                "-A",
                "-t",
                "-c",
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            ],
        )
        .env("PGSSLMODE", sslmode)
        .output()
        .expect("run psql");
    pg.expect_ok(&out, &format!("psql sslmode={sslmode}"))
        .trim()
        .to_string()
}

/// Runs psql with `sslmode` (and maybe a wrong password); asserts it fails
/// with a message containing `expect`.
fn assert_refused(pg: &PgServer, sslmode: &str, password: Option<&str>, expect: &str) {
    let mut cmd = pg.psql("app", &["-A", "-t", "-c", "SELECT 1"]);
    cmd.env("PGSSLMODE", sslmode);
    if let Some(p) = password {
        cmd.env("PGPASSWORD", p);
    }
    let out = cmd.output().expect("run psql");
    assert!(
        !out.status.success(),
        "psql sslmode={sslmode} password={password:?} should have been refused, got {:?}\n{}",
        String::from_utf8_lossy(&out.stdout),
        pg.log_tail(30)
    );
    let err = stderr(&out);
    assert!(
        err.contains(expect),
        "psql sslmode={sslmode} password={password:?} refused, but stderr lacks {expect:?}: {err}\n{}",
        pg.log_tail(30)
    );
}

fn psycopg_check(pg: &PgServer, dsn: &str) {
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as c:
    print(c.execute("SELECT count(*) FROM users").fetchone()[0])
    # extended protocol, server-side prepared statement
    for _ in range(3):
        row = c.execute("SELECT name, password FROM users WHERE id = %s", (2,), prepare=True).fetchone()
    print(row[0], row[1])
    print(c.info.pgconn.ssl_in_use)
"#;
    let out = std::process::Command::new(PYTHON3)
        .args(["-c", script, dsn])
        .output()
        .expect("run python3");
    let stdout = pg.expect_ok(&out, "psycopg check");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.first().copied(),
        Some(USERS_ROWS.len().to_string().as_str()),
        "{stdout}"
    );
    assert_eq!(lines.get(1).copied(), Some("bob pw-row-2"), "{stdout}");
    let tls = if pg.options().tls { "True" } else { "False" };
    assert_eq!(lines.get(2).copied(), Some(tls), "{stdout}");
}

/// Everything that holds for one (auth, tls) server.
fn check(auth: Auth, tls: bool) -> PgServer {
    require_root();
    let pg = PgServer::start(PgOptions::new(auth, tls));
    let rows = USERS_ROWS.len().to_string();

    if tls {
        assert_eq!(count_users(&pg, "require"), rows);
        assert_eq!(count_users(&pg, "verify-full"), rows);
        assert_eq!(ssl_in_use(&pg, "verify-full"), "t");
        // Plaintext is refused: only hostssl lines in pg_hba.conf.
        assert_refused(&pg, "disable", None, "no pg_hba.conf entry");
        // verify-full with the libpq URI (sslrootcert in the URI).
        let out = std::process::Command::new("psql")
            .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM users"])
            .arg(pg.dsn("app", pg.password("app"), "verify-full"))
            .env_remove("PGSSLROOTCERT")
            .output()
            .expect("run psql");
        assert_eq!(pg.expect_ok(&out, "psql dsn verify-full").trim(), rows);
    } else {
        assert_eq!(count_users(&pg, "disable"), rows);
        assert_eq!(ssl_in_use(&pg, "disable"), "f");
        // The server has no TLS at all.
        assert_refused(&pg, "require", None, "server does not support SSL");
    }

    let stored = pg.admin_sql(
        "postgres",
        "SELECT left(rolpassword, 14) FROM pg_authid WHERE rolname = 'app'",
    );
    match auth {
        Auth::Trust => {}
        Auth::Md5 => {
            assert!(stored.starts_with("md5"), "stored hash: {stored}");
        }
        Auth::Scram => {
            assert!(
                stored.starts_with("SCRAM-SHA-256$"),
                "stored hash: {stored}"
            );
        }
    }
    if auth != Auth::Trust {
        let mode = if tls { "require" } else { "disable" };
        assert_refused(
            &pg,
            mode,
            Some("wrong-password"),
            "password authentication failed",
        );
        // The server really ran that method (log_connections).
        let method = format!("method={}", auth.hba_method());
        assert!(
            pg.log().contains(&method),
            "no `{method}` in the server log:\n{}",
            pg.log_tail(30)
        );
    }
    pg
}

#[test]
fn trust_plain() {
    let pg = check(Auth::Trust, false);
    psycopg_check(&pg, &pg.dsn("app", pg.password("app"), "disable"));

    let init = pg
        .client("pgbench", "app")
        .args(["-i", "-s", "1", "-q"])
        .output()
        .expect("run pgbench -i");
    pg.expect_ok(&init, "pgbench -i -s 1");
    let run = pg
        .client("pgbench", "app")
        .args(["-c", "4", "-t", "50"])
        .output()
        .expect("run pgbench");
    let stdout = pg.expect_ok(&run, "pgbench -c 4 -t 50");
    assert!(
        stdout.contains("number of transactions actually processed: 200/200"),
        "pgbench output:\n{stdout}\n{}",
        stderr(&run)
    );
}

#[test]
fn trust_tls() {
    check(Auth::Trust, true);
}

#[test]
fn md5_plain() {
    let pg = check(Auth::Md5, false);
    psycopg_check(&pg, &pg.dsn("app", pg.password("app"), "disable"));
}

#[test]
fn md5_tls() {
    check(Auth::Md5, true);
}

#[test]
fn scram_plain() {
    check(Auth::Scram, false);
}

#[test]
fn scram_tls() {
    let pg = check(Auth::Scram, true);
    psycopg_check(&pg, &pg.dsn("app", pg.password("app"), "verify-full"));
}

/// Names and passwords that need quoting and percent-encoding.
#[test]
fn awkward_credentials() {
    require_root();
    let user = "ci user\"1";
    let password = "p@ss:w/o'rd %?&";
    let pg = PgServer::start(PgOptions {
        auth: Auth::Scram,
        tls: false,
        users: vec![(user.into(), password.into())],
    });
    assert_eq!(
        pg.query(user, "SELECT current_user").trim(),
        user,
        "psql with env credentials"
    );
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT count(*) FROM users"])
        .arg(pg.dsn(user, password, "disable"))
        .output()
        .expect("run psql");
    assert_eq!(
        pg.expect_ok(&out, "psql with a percent-encoded URI").trim(),
        USERS_ROWS.len().to_string()
    );
}
