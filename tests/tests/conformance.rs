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
    conformance::{check, check_driver, record, Expect},
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
fn assert_identical(tool: &str, case: &str, r: &Runs, d: &Daemon) {
    let what = format!("{tool} {case}");
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
    record(tool, case, Expect::Identical, "");
}

/// Verdict: denied by `rule`, with the rule's message; direct it works.
fn assert_denied(tool: &str, case: &str, r: &Runs, rule: &str, note: &str) {
    let what = format!("{tool} {case}");
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
    record(tool, case, Expect::Denied { rule }, note);
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
        assert_identical("psql", meta, &r, &d);
    }

    // pg_dump: schema only, and a table with no masked column, plain and
    // custom format (set_config('search_path', ...) and
    // OPERATOR(pg_catalog.=) in its queries).
    let r = both(&d, &pg, "pg_dump", &["-s"]);
    assert_identical("pg_dump", "-s", &r, &d);
    let r = both(&d, &pg, "pg_dump", &["-t", "orders"]);
    assert_identical("pg_dump", "-t orders (plain)", &r, &d);
    assert!(text(&r.intercepted).contains("COPY public.orders"));

    // A table with masked columns cannot be dumped: COPY would copy them
    // out in clear. Denied, saying which table and what to do.
    let r = both(&d, &pg, "pg_dump", &["-t", "users"]);
    assert_denied(
        "pg_dump",
        "-t users (a table with masked columns)",
        &r,
        "masking",
        "COPY would copy masked columns out in clear; the error names the table",
    );
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
    record(
        "pg_restore",
        "-a of a pg_dump -Fc -t orders taken through the proxy",
        Expect::Identical,
        "the same rows restored",
    );
    pg.admin_sql(DATABASE, "TRUNCATE orders;");
    let out = intercepted(
        &d,
        &pg,
        "psql",
        &["-X", "-v", "ON_ERROR_STOP=1", "-f", &plain_s],
    );
    assert!(out.status.success(), "psql -f: {}", output_text(&out));
    assert_eq!(rows(), before, "psql -f restored the rows");
    record(
        "psql",
        "-f of a pg_dump -a -t orders taken through the proxy",
        Expect::Identical,
        "the same rows restored",
    );
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
        assert_identical("psql", sql, &r, &d);
    }
    // Session-local objects are not schema changes.
    let temp = "CREATE TEMP TABLE scratch (id int) ON COMMIT PRESERVE ROWS; \
                INSERT INTO scratch SELECT id FROM orders; \
                SELECT count(*) FROM scratch";
    let r = both(&d, &pg, "psql", &["-X", "-c", temp]);
    assert_identical("psql", "CREATE TEMP TABLE, INSERT, SELECT", &r, &d);

    // Statements sqlparser lacks, checked as their equivalents: MOVE (a
    // scrollable cursor, psycopg's scroll()) and TABLE t (SELECT * FROM t,
    // masked like it).
    let cursor = "BEGIN; DECLARE c SCROLL CURSOR FOR SELECT id, item FROM orders ORDER BY id; \
                  MOVE FORWARD 1 IN c; FETCH NEXT FROM c; MOVE ABSOLUTE 0 IN c; FETCH NEXT FROM c; COMMIT";
    let r = both(&d, &pg, "psql", &["-X", "-c", cursor]);
    assert_identical("psql", "MOVE and FETCH in a scrollable cursor", &r, &d);
    let r = both(&d, &pg, "psql", &["-X", "-c", "TABLE orders"]);
    assert_identical("psql", "TABLE orders", &r, &d);
    let out = intercepted(&d, &pg, "psql", &["-X", "-A", "-t", "-c", "TABLE users"]);
    let t = text(&out);
    assert!(out.status.success(), "TABLE users: {t}");
    assert!(
        t.contains("********") && !t.contains("pw-row-1") && !t.contains("AKIA"),
        "TABLE users is masked like SELECT * FROM users: {t}"
    );
    record(
        "psql",
        "TABLE users",
        Expect::Masked {
            mask: "credential-columns",
            hidden: &[],
        },
        "as SELECT * FROM users",
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
        record(
            "psql",
            sql,
            Expect::Denied {
                rule: "no-hidden-code-or-role-changes",
            },
            "fails direct too (app may not become postgres)",
        );
    }
    // And schema changes.
    let r = both(
        &d,
        &pg,
        "psql",
        &["-X", "-c", "CREATE TABLE kept (id int); DROP TABLE kept"],
    );
    assert_denied("psql", "CREATE TABLE, DROP TABLE", &r, "no-ddl", "");
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
        assert_identical("psql", sql, &r, &d);
    }
    // Rewrites under exclusive locks are a rule decision, with its message.
    for sql in [
        "VACUUM FULL orders",
        "CLUSTER orders USING orders_pkey",
        "REINDEX TABLE orders",
    ] {
        let r = both(&d, &pg, "psql", &["-X", "-c", sql]);
        assert_denied("psql", sql, &r, "no-locking-maintenance", "");
    }
}

/// The pinned python3 of the venv (psycopg, SQLAlchemy, alembic, Django).
const PYTHON3: &str = "python3";

fn script(name: &str) -> String {
    interceptor_tests::workspace_root()
        .join("tests/scripts")
        .join(name)
        .display()
        .to_string()
}

/// `python3 args` both ways, without bytecode files in the checkout.
fn python_both(d: &Daemon, pg: &PgServer, args: &[&str]) -> Runs {
    Runs {
        direct: python_direct(pg, args),
        intercepted: python_intercepted(d, pg, args),
    }
}

/// `python3 args` as `app`, direct.
fn python_direct(pg: &PgServer, args: &[&str]) -> Output {
    pg.client(PYTHON3, "app")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .args(args)
        .output()
        .expect("run python3 direct")
}

/// `python3 args` as `app`, inside the cgroup.
fn python_intercepted(d: &Daemon, pg: &PgServer, args: &[&str]) -> Output {
    let mut full = vec!["env", "PYTHONDONTWRITEBYTECODE=1", PYTHON3];
    full.extend_from_slice(args);
    intercepted(d, pg, full[0], &full[1..])
}

/// Runs `python3 args` direct as `app`, and fails with its output unless it works.
fn direct_ok(pg: &PgServer, args: &[&str]) -> String {
    let out = python_direct(pg, args);
    assert!(
        out.status.success(),
        "python3 {args:?} (direct): {}",
        output_text(&out)
    );
    text(&out)
}

/// A migration both ways from the same state: `python3 up` direct, then
/// `python3 down` direct (back to where it was), then `python3 up`
/// intercepted.
fn migration(d: &Daemon, pg: &PgServer, up: &[&str], down: &[&str]) -> Runs {
    let direct = python_direct(pg, up);
    direct_ok(pg, down);
    Runs {
        direct,
        intercepted: python_intercepted(d, pg, up),
    }
}

const USER_SECRETS: &[&str] = &[
    "pw-row-1",
    "pw-row-2",
    "pw-row-3",
    "AKIAABCDEFGHIJKLMNOP",
    "AKIAQRSTUVWXYZ234567",
    "AKIAZYXWVUTSRQPONMLK",
];

const CREDENTIAL_COLUMNS: &str = "credential-columns";

#[test]
fn psycopg_and_sqlalchemy_under_the_default_policy() {
    require_root();
    let pg = server();
    let cg = TestCgroup::new("conf-py");
    let d = Daemon::with_default_policy("conf-py", &cg, 995, &[store_at("postgres", pg.addr())]);
    let masked = |hidden| Expect::Masked {
        mask: CREDENTIAL_COLUMNS,
        hidden,
    };
    let denied = |rule| Expect::Denied { rule };
    let log = || format!("daemon log:\n{}", d.log_text());

    let driver = script("conformance_pg.py");
    let r = python_both(&d, &pg, &[&driver, "psycopg"]);
    check_driver(
        "psycopg 3.3",
        &r.direct,
        &r.intercepted,
        &[
            ("named cursor", Expect::Identical, "DECLARE, FETCH FORWARD"),
            (
                "named cursor over masked columns",
                masked(USER_SECRETS),
                "rows fetched through the cursor are masked",
            ),
            (
                "scrollable cursor: scroll()",
                Expect::Identical,
                "MOVE ABSOLUTE/RELATIVE",
            ),
            (
                "scrollable cursor over masked columns",
                masked(&["pw-row-3", "pw-row-1"]),
                "rows moved to are masked",
            ),
            (
                "holdable cursor (WITH HOLD) read after commit",
                Expect::Identical,
                "",
            ),
            ("COPY TO STDOUT", Expect::Identical, ""),
            ("COPY FROM STDIN", Expect::Identical, ""),
            (
                "COPY (SELECT masked columns) TO STDOUT",
                denied("masking"),
                "COPY rows are not masked: the error names the table and says to SELECT instead",
            ),
            ("binary results", Expect::Identical, "binary=True"),
            (
                "binary results over masked columns",
                masked(&["pw-row-1"]),
                "",
            ),
            (
                "server-side prepared statements",
                Expect::Identical,
                "prepare_threshold=0",
            ),
            (
                "pipeline mode",
                masked(&["pw-row-2"]),
                "one masked SELECT among the pipeline's statements",
            ),
            ("executemany", Expect::Identical, ""),
            (
                "LISTEN/NOTIFY",
                Expect::Identical,
                "notification from a second connection",
            ),
            (
                "nested transaction (savepoint) and rollback",
                Expect::Identical,
                "",
            ),
            ("CREATE TABLE", denied("no-ddl"), ""),
            ("DELETE without WHERE", denied("no-unbounded-writes"), ""),
        ],
        &log,
    );

    let r = python_both(&d, &pg, &[&driver, "sqlalchemy"]);
    check_driver(
        "SQLAlchemy 2.1",
        &r.direct,
        &r.intercepted,
        &[
            ("Core text() select", Expect::Identical, ""),
            ("ORM select", Expect::Identical, ""),
            ("ORM select over masked columns", masked(USER_SECRETS), ""),
            ("ORM insert, update, delete", Expect::Identical, "INSERT ... RETURNING, UPDATE and DELETE by primary key"),
            ("inspect(): columns, primary key, indexes", Expect::Identical, "reflection through pg_catalog"),
            ("MetaData.reflect()", Expect::Identical, ""),
            ("MetaData.create_all()", denied("no-ddl"), "migrations belong to the release pipeline (or an allow rule for the migration job)"),
        ],
        &log,
    );
}

#[test]
fn pgbench_alembic_and_django_under_the_default_policy() {
    require_root();
    let pg = server();
    // Django's test runner creates its test database.
    pg.admin_sql(DATABASE, "ALTER ROLE app CREATEDB;\n");
    let cg = TestCgroup::new("conf-orm");
    let d = Daemon::with_default_policy("conf-orm", &cg, 996, &[store_at("postgres", pg.addr())]);
    let log = || format!("daemon log:\n{}", d.log_text());

    // pgbench: -i builds its tables (DDL), the default run truncates
    // pgbench_history first (TRUNCATE is in no-ddl); -n runs the standard
    // TPC-B-like script in each query mode.
    let r = both(&d, &pg, "pgbench", &["-i", "-s", "1", "-q"]);
    assert_denied(
        "pgbench",
        "-i",
        &r,
        "no-ddl",
        "creates its tables: run it where DDL is allowed",
    );
    // pgbench reports the denied TRUNCATE, ignores it and runs the
    // transactions.
    let r = both(&d, &pg, "pgbench", &["-t", "5"]);
    let t = text(&r.intercepted);
    assert!(
        r.direct.status.success()
            && r.intercepted.status.success()
            && t.contains("policy rule \"no-ddl\"")
            && t.contains("TRUNCATE")
            && t.contains("number of transactions actually processed: 5/5"),
        "pgbench -t 5: {t}"
    );
    record(
        "pgbench",
        "-t 5 (vacuums, then truncates pgbench_history)",
        Expect::Denied { rule: "no-ddl" },
        "the TRUNCATE only: pgbench reports it, goes on and runs the transactions; -n skips it",
    );
    for mode in ["simple", "extended", "prepared"] {
        let args = ["-n", "-c", "2", "-t", "50", "-M", mode];
        let r = both(&d, &pg, "pgbench", &args);
        let counts = |o: &Output| -> Vec<String> {
            text(o)
                .lines()
                .filter(|l| {
                    l.starts_with("query mode:")
                        || l.starts_with("number of transactions actually processed:")
                        || l.starts_with("number of failed transactions:")
                })
                .map(str::to_string)
                .collect()
        };
        assert!(
            r.direct.status.success(),
            "pgbench -M {mode}: {}",
            output_text(&r.direct)
        );
        check(
            "pgbench",
            &format!("-n -c 2 -t 50 -M {mode}"),
            &counts(&r.direct).join("; "),
            &counts(&r.intercepted).join("; "),
            Expect::Identical,
            "transactions processed and failed (tps is not compared)",
            &log,
        );
    }

    // alembic: an upgrade is DDL; reading the migration state is not.
    let ini = script("alembic_conf/alembic.ini");
    let alembic = |args: &[&str]| -> Vec<String> {
        let mut v = vec!["-m".to_string(), "alembic".into(), "-c".into(), ini.clone()];
        v.extend(args.iter().map(|a| a.to_string()));
        v
    };
    let up = alembic(&["upgrade", "head"]);
    let up: Vec<&str> = up.iter().map(String::as_str).collect();
    let down = alembic(&["downgrade", "base"]);
    let down: Vec<&str> = down.iter().map(String::as_str).collect();
    let r = migration(&d, &pg, &up, &down);
    assert_denied(
        "alembic",
        "upgrade head",
        &r,
        "no-ddl",
        "allow DDL for the migration job by identity, see docs/config.md",
    );
    direct_ok(&pg, &up);
    // Applied: now current, check and history.
    for case in [
        vec!["current"],
        vec!["check"],
        vec!["history", "--indicate-current"],
    ] {
        let args = alembic(&case);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = python_both(&d, &pg, &args);
        assert_identical("alembic", &case.join(" "), &r, &d);
    }

    // Django: migrate (DDL), then the ORM and the test runner on the
    // migrated database.
    let project = script("django_conf");
    let manage = format!("{project}/manage.py");
    direct_ok(&pg, &[&manage, "migrate", "confapp", "0001", "--noinput"]);
    let r = migration(
        &d,
        &pg,
        &[&manage, "migrate", "--noinput"],
        &[&manage, "migrate", "confapp", "0001", "--noinput"],
    );
    assert_denied(
        "Django 5.2",
        "manage.py migrate (0002 pending)",
        &r,
        "no-ddl",
        "",
    );
    direct_ok(&pg, &[&manage, "migrate", "--noinput"]);
    let r = python_both(&d, &pg, &[&manage, "migrate", "--noinput"]);
    assert_identical("Django 5.2", "manage.py migrate (nothing to apply)", &r, &d);
    let r = python_both(&d, &pg, &[&script("conformance_pg.py"), "django", &project]);
    check_driver(
        "Django 5.2",
        &r.direct,
        &r.intercepted,
        &[
            (
                "ORM create, update, filter, delete in atomic()",
                Expect::Identical,
                "",
            ),
            ("bulk_create and aggregate", Expect::Identical, ""),
            ("select_for_update()", Expect::Identical, ""),
            (
                "model with a masked field",
                Expect::Masked {
                    mask: CREDENTIAL_COLUMNS,
                    hidden: &["tok-deploy-7f3a9c", "tok-report-1b2d4e"],
                },
                "api_token matches *_token",
            ),
            ("connection.cursor()", Expect::Identical, ""),
        ],
        &log,
    );
    // The test runner: the direct run creates and migrates test_ci (kept),
    // the intercepted one reuses it (TestCase: savepoints, SET CONSTRAINTS).
    let runner = |o: &Output| -> String {
        text(o)
            .lines()
            .map(|l| match l.strip_prefix("Ran ") {
                Some(rest) => format!("Ran {}", rest.split(" in ").next().unwrap_or(rest)),
                None => l.to_string(),
            })
            .filter(|l| !l.contains("test database for alias"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let r = python_both(
        &d,
        &pg,
        &[
            &manage,
            "test",
            "--keepdb",
            "--noinput",
            "confapp.tests.BuildTests",
        ],
    );
    assert!(
        r.direct.status.success(),
        "manage.py test: {}",
        output_text(&r.direct)
    );
    check(
        "Django 5.2",
        "manage.py test --keepdb (TestCase: savepoints, SET CONSTRAINTS)",
        &runner(&r.direct),
        &runner(&r.intercepted),
        Expect::Identical,
        "the test database kept from the direct run; times not compared",
        &log,
    );
    // TransactionTestCase empties every table after each test with
    // TRUNCATE: a test database is not a secret store, keep it out of the
    // stores' targets (README, "Where the default policy fits").
    let r = python_both(
        &d,
        &pg,
        &[
            &manage,
            "test",
            "--keepdb",
            "--noinput",
            "confapp.tests.FlushTests",
        ],
    );
    assert_denied(
        "Django 5.2",
        "manage.py test --keepdb (TransactionTestCase)",
        &r,
        "no-ddl",
        "its flush TRUNCATEs every table: point test databases outside the stores' targets",
    );
}
