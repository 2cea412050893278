//! Real tools that nobody here wrote, under `policies/default.toml` as
//! shipped: each case runs directly against the server and then through
//! the interceptor, and has one verdict: identical output, masked as
//! configured, or denied by a named rule with its message. A legitimate
//! everyday operation that comes back denied is a false denial, and a bug.
//!
//! PostgreSQL so far: psql meta-commands, pg_dump (plain, schema only,
//! custom format, -t), pg_restore, `psql -f` of a dump, temporary tables,
//! the settings jobs and ORMs change with set_config, MOVE and TABLE,
//! VACUUM/ANALYZE, cursors, SET CONSTRAINTS and DEFERRABLE transactions.

use std::process::Output;

use interceptor_tests::{
    output_text,
    pg::{Auth, PgOptions, PgServer, DATABASE},
    require_root, store_at, Daemon, TestCgroup,
};

/// Both runs of one command.
struct Runs {
    direct: Output,
    intercepted: Output,
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The output with what differs between any two runs taken out: plain
/// pg_dump output is fenced by `\restrict KEY` / `\unrestrict KEY` with a
/// random key (PostgreSQL 15.14+, CVE-2025-8714).
fn comparable(out: &Output) -> String {
    text(out)
        .lines()
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `program args` with the libpq environment of user `app`, once directly
/// and once inside the cgroup.
fn both(d: &Daemon, pg: &PgServer, program: &str, args: &[&str]) -> Runs {
    let direct = pg
        .client(program, "app")
        .args(args)
        .output()
        .expect("run direct");
    Runs {
        direct,
        intercepted: intercepted(d, pg, program, args),
    }
}

/// `program args` with the libpq environment of user `app`, inside the cgroup.
fn intercepted(d: &Daemon, pg: &PgServer, program: &str, args: &[&str]) -> Output {
    let template = pg.client(program, "app");
    let mut argv = vec![program];
    argv.extend_from_slice(args);
    let mut cmd = d.exec(&argv);
    for (k, v) in template.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.output().expect("run intercepted")
}

/// Verdict: the same status and output, direct and intercepted.
fn assert_identical(what: &str, r: &Runs, d: &Daemon) {
    assert!(
        r.direct.status.success(),
        "{what} fails even direct:\n{}",
        output_text(&r.direct)
    );
    let (got, want) = (comparable(&r.intercepted), comparable(&r.direct));
    if got != want {
        let diff: Vec<String> = got
            .lines()
            .zip(want.lines())
            .filter(|(g, w)| g != w)
            .take(10)
            .map(|(g, w)| format!("  intercepted: {g}\n  direct:      {w}"))
            .collect();
        panic!(
            "{what}: intercepted output differs from direct ({}):\n{}\n\
             intercepted:\n{got}\ndaemon log:\n{}",
            r.intercepted.status,
            diff.join("\n"),
            d.log_text()
        );
    }
    assert!(r.intercepted.status.success(), "{what}");
}

/// Verdict: denied by `rule`, with the rule's message; direct it works.
fn assert_denied(what: &str, r: &Runs, rule: &str) {
    assert!(
        r.direct.status.success(),
        "{what} fails even direct:\n{}",
        output_text(&r.direct)
    );
    let t = text(&r.intercepted);
    assert!(
        !r.intercepted.status.success() && t.contains(&format!("policy rule \"{rule}\"")),
        "{what}: expected a denial by rule {rule}:\n{t}"
    );
}

fn server() -> PgServer {
    let pg = PgServer::start(PgOptions::new(Auth::Scram, false));
    pg.admin_sql(
        DATABASE,
        "CREATE TABLE orders (id int PRIMARY KEY, item text NOT NULL);\n\
         INSERT INTO orders VALUES (1, 'book'), (2, 'lamp');\n\
         CREATE INDEX orders_item ON orders (item);\n\
         CREATE STATISTICS orders_stats ON id, item FROM orders;\n\
         GRANT ALL ON TABLE orders TO app;\n",
    );
    pg
}

#[test]
fn psql_meta_commands_and_pg_dump_under_the_default_policy() {
    require_root();
    let pg = server();
    let cg = TestCgroup::new("conf-pg");
    let d = Daemon::with_default_policy("conf-pg", &cg, 992, &[store_at("postgres", pg.addr())]);

    // psql's catalog queries: the masks hide no value here, and no rule
    // objects (the column masks used to deny \d: pg_statistic_ext).
    for meta in [
        "\\d users",
        "\\d+ users",
        "\\d orders",
        "\\dt",
        "\\df+",
        "\\l",
        "\\du",
        "\\dn",
        "\\dx",
        "\\di",
    ] {
        let r = both(&d, &pg, "psql", &["-X", "-c", meta]);
        assert_identical(&format!("psql {meta}"), &r, &d);
    }

    // pg_dump: schema only, and a table with no masked column, plain and
    // custom format (set_config('search_path', ...) and
    // OPERATOR(pg_catalog.=) in its queries).
    let r = both(&d, &pg, "pg_dump", &["-s"]);
    assert_identical("pg_dump -s", &r, &d);
    let r = both(&d, &pg, "pg_dump", &["-t", "orders"]);
    assert_identical("pg_dump -t orders", &r, &d);
    assert!(text(&r.intercepted).contains("COPY public.orders"));

    // A table with masked columns cannot be dumped: COPY would copy them
    // out in clear. Denied, saying which table and what to do.
    let r = both(&d, &pg, "pg_dump", &["-t", "users"]);
    assert_denied("pg_dump -t users", &r, "masking");
    assert!(
        text(&r.intercepted).contains("public.users"),
        "{}",
        text(&r.intercepted)
    );

    // Round trips through the proxy: a custom-format dump restored with
    // pg_restore, a plain data dump replayed with psql -f.
    let dump = d.dir.path().join("orders.dump");
    let dump_s = dump.display().to_string();
    let out = intercepted(&d, &pg, "pg_dump", &["-Fc", "-t", "orders", "-f", &dump_s]);
    assert!(out.status.success(), "pg_dump -Fc: {}", output_text(&out));
    let plain = d.dir.path().join("orders.sql");
    let plain_s = plain.display().to_string();
    let out = intercepted(&d, &pg, "pg_dump", &["-a", "-t", "orders", "-f", &plain_s]);
    assert!(out.status.success(), "pg_dump -a: {}", output_text(&out));
    let rows = || pg.query("app", "SELECT id, item FROM orders ORDER BY id");
    let before = rows();
    pg.admin_sql(DATABASE, "TRUNCATE orders;");
    let out = intercepted(&d, &pg, "pg_restore", &["-a", "-d", DATABASE, &dump_s]);
    assert!(out.status.success(), "pg_restore: {}", output_text(&out));
    assert_eq!(rows(), before, "pg_restore -a restored the rows");
    pg.admin_sql(DATABASE, "TRUNCATE orders;");
    let out = intercepted(
        &d,
        &pg,
        "psql",
        &["-X", "-v", "ON_ERROR_STOP=1", "-f", &plain_s],
    );
    assert!(out.status.success(), "psql -f: {}", output_text(&out));
    assert_eq!(rows(), before, "psql -f restored the rows");
}

#[test]
fn session_settings_and_temporary_tables_under_the_default_policy() {
    require_root();
    let pg = server();
    let cg = TestCgroup::new("conf-set");
    let d = Daemon::with_default_policy("conf-set", &cg, 993, &[store_at("postgres", pg.addr())]);

    // What ORMs, dump tools and row-level security set on every connection.
    for sql in [
        "SELECT pg_catalog.set_config('search_path', '', false)",
        "SELECT set_config('TimeZone', 'UTC', false)",
        "BEGIN; SELECT set_config('app.tenant_id', '42', true); SELECT current_setting('app.tenant_id'); COMMIT",
        "SET search_path = public",
        "SET TIME ZONE 'UTC'",
    ] {
        let r = both(&d, &pg, "psql", &["-X", "-c", sql]);
        assert_identical(sql, &r, &d);
    }
    // Session-local objects are not schema changes.
    let temp = "CREATE TEMP TABLE scratch (id int) ON COMMIT PRESERVE ROWS; \
                INSERT INTO scratch SELECT id FROM orders; \
                SELECT count(*) FROM scratch";
    let r = both(&d, &pg, "psql", &["-X", "-c", temp]);
    assert_identical("CREATE TEMP TABLE", &r, &d);

    // Statements sqlparser lacks, checked as their equivalents: MOVE (a
    // scrollable cursor, psycopg's scroll()) and TABLE t (SELECT * FROM t,
    // masked like it).
    let cursor = "BEGIN; DECLARE c SCROLL CURSOR FOR SELECT id, item FROM orders ORDER BY id; \
                  MOVE FORWARD 1 IN c; FETCH NEXT FROM c; MOVE ABSOLUTE 0 IN c; FETCH NEXT FROM c; COMMIT";
    let r = both(&d, &pg, "psql", &["-X", "-c", cursor]);
    assert_identical("MOVE in a scrollable cursor", &r, &d);
    let r = both(&d, &pg, "psql", &["-X", "-c", "TABLE orders"]);
    assert_identical("TABLE orders", &r, &d);
    let out = intercepted(&d, &pg, "psql", &["-X", "-A", "-t", "-c", "TABLE users"]);
    let t = text(&out);
    assert!(out.status.success(), "TABLE users: {t}");
    assert!(
        t.contains("********") && !t.contains("pw-row-1") && !t.contains("AKIA"),
        "TABLE users is masked like SELECT * FROM users: {t}"
    );

    // Role changes stay denied, however spelled.
    for sql in [
        "SELECT set_config('role', 'postgres', false)",
        "SET ROLE postgres",
        "SELECT set_config(name, 'postgres', false) FROM pg_settings WHERE name = 'role'",
    ] {
        // Direct, these fail too (app may not become postgres): compare
        // only that the proxy refuses, with the rule.
        let out = intercepted(&d, &pg, "psql", &["-X", "-c", sql]);
        let t = text(&out);
        assert!(
            t.contains("policy rule \"no-hidden-code-or-role-changes\""),
            "{sql}: {t}"
        );
    }
    // And schema changes.
    let r = both(
        &d,
        &pg,
        "psql",
        &["-X", "-c", "CREATE TABLE kept (id int); DROP TABLE kept"],
    );
    assert_denied("CREATE TABLE", &r, "no-ddl");
}

#[test]
fn maintenance_cursors_and_transaction_modes_under_the_default_policy() {
    require_root();
    let pg = server();
    // The job's role owns its table, so that maintenance runs direct.
    pg.admin_sql(DATABASE, "ALTER TABLE orders OWNER TO app;\n");
    let cg = TestCgroup::new("conf-maint");
    let d = Daemon::with_default_policy("conf-maint", &cg, 994, &[store_at("postgres", pg.addr())]);
    // Statements sqlparser lacks, read from their tokens or rewritten to
    // its spelling: what Django's TestCase, psycopg cursors, pgbench -i and
    // maintenance scripts send.
    for sql in [
        "VACUUM ANALYZE orders",
        "VACUUM (ANALYZE) orders",
        "ANALYZE VERBOSE orders",
        "ANALYZE orders (item)",
        "BEGIN; SET CONSTRAINTS ALL IMMEDIATE; SELECT count(*) FROM orders; COMMIT",
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE; SELECT count(*) FROM orders; COMMIT",
        "START TRANSACTION READ ONLY, NOT DEFERRABLE; SELECT 1; COMMIT",
        "BEGIN; DECLARE c CURSOR FOR SELECT id, item FROM orders ORDER BY id; FETCH c; FETCH FROM c; MOVE BACKWARD IN c; FETCH -1 FROM c; COMMIT",
        "COPY orders TO STDOUT WITH (FORMAT csv, HEADER ON)",
    ] {
        let r = both(&d, &pg, "psql", &["-X", "-c", sql]);
        assert_identical(sql, &r, &d);
    }
    // Rewrites under exclusive locks are a rule decision, with its message.
    for sql in [
        "VACUUM FULL orders",
        "CLUSTER orders USING orders_pkey",
        "REINDEX TABLE orders",
    ] {
        let r = both(&d, &pg, "psql", &["-X", "-c", sql]);
        assert_denied(sql, &r, "no-locking-maintenance");
    }
}
