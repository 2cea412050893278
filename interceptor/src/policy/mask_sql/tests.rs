//! Each denied case is one way a build task could try to read a masked
//! value without it passing through output-side masking; each allowed case
//! is ordinary work that must keep working.

use super::*;
use crate::policy::sql::Glob;

/// The column patterns of the tests: `c` masks column `c` of any table,
/// `t.c` column `c` of table `t`, `s.t.c` of table `t` in schema `s`.
struct Patterns(Vec<Vec<Glob>>);

impl Patterns {
    fn new(patterns: &[&str]) -> Self {
        Patterns(
            patterns
                .iter()
                .map(|p| p.split('.').map(Glob::new).collect())
                .collect(),
        )
    }
}

impl ColumnMatcher for Patterns {
    fn matches(&self, schema: Option<&str>, table: &str, column: &str) -> bool {
        self.0.iter().any(|p| match p.as_slice() {
            [c] => c.matches(column),
            [t, c] => t.matches(table) && c.matches(column),
            [s, t, c] => {
                schema.is_none_or(|x| s.matches(x)) && t.matches(table) && c.matches(column)
            }
            _ => false,
        })
    }

    fn may_match(&self, column: &str) -> bool {
        self.0
            .iter()
            .any(|p| p.last().is_some_and(|c| c.matches(column)))
    }

    fn may_match_table(&self, schema: Option<&str>, table: &str) -> bool {
        self.0.iter().any(|p| match p.as_slice() {
            [_] => true,
            [t, _] => t.matches(table),
            [s, t, _] => schema.is_none_or(|x| s.matches(x)) && t.matches(table),
            _ => false,
        })
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn patterns() -> Patterns {
    Patterns::new(&["password", "*_token", "users.api_key", "public.users.ssn"])
}

fn text(v: impl ToString) -> Option<String> {
    Some(v.to_string())
}

fn column(
    oid: u32,
    schema: &str,
    relation: &str,
    kind: &str,
    attnum: i16,
    name: &str,
) -> Vec<Option<String>> {
    vec![
        text("c"),
        text(oid),
        text(schema),
        text(relation),
        text(kind),
        text(attnum),
        text(name),
        None,
        None,
    ]
}

fn reads(view: u32, target: u32, attnum: i16) -> Vec<Option<String>> {
    vec![
        text("d"),
        text(view),
        None,
        None,
        None,
        None,
        None,
        text(target),
        text(attnum),
    ]
}

fn inherits(child: u32, parent: u32) -> Vec<Option<String>> {
    vec![
        text("i"),
        text(child),
        None,
        None,
        None,
        None,
        None,
        text(parent),
        None,
    ]
}

fn function(oid: u32, schema: &str, name: &str, returns: u32) -> Vec<Option<String>> {
    vec![
        text("f"),
        text(oid),
        text(schema),
        text(name),
        None,
        None,
        None,
        text(returns),
        None,
    ]
}

const USERS: u32 = 16384;
const SECRETS: u32 = 16391;
const ORDERS: u32 = 16395;
const SESSIONS: u32 = 16398;
const ARCHIVE_USERS: u32 = 16399;
const V_PW: u32 = 16410;
const V_PW2: u32 = 16420;
const V_CLEAN: u32 = 16430;
const V_ROW: u32 = 16440;
const MV_KEYS: u32 = 16450;
const ACCOUNTS: u32 = 16500;

/// What CATALOG_SQL would return for the test database.
fn rows() -> Vec<Vec<Option<String>>> {
    let mut rows = Vec::new();
    let mut table = |oid, schema, name, kind, columns: &[&str]| {
        for (i, c) in columns.iter().enumerate() {
            rows.push(column(oid, schema, name, kind, i as i16 + 1, c));
        }
    };
    table(
        USERS,
        "public",
        "users",
        "r",
        &["id", "name", "password", "api_key", "ssn", "email"],
    );
    table(SECRETS, "public", "secrets", "r", &["id", "api_key"]);
    table(
        ORDERS,
        "public",
        "orders",
        "r",
        &["id", "user_id", "total", "note"],
    );
    table(
        SESSIONS,
        "public",
        "sessions",
        "r",
        &["id", "user_id", "refresh_token"],
    );
    table(ARCHIVE_USERS, "archive", "users", "r", &["id", "ssn"]);
    table(V_PW, "public", "v_pw", "v", &["id", "pw"]);
    table(V_PW2, "public", "v_pw2", "v", &["id"]);
    table(V_CLEAN, "public", "v_clean", "v", &["id", "name"]);
    table(V_ROW, "public", "v_row", "v", &["j"]);
    table(MV_KEYS, "public", "mv_keys", "m", &["k"]);
    table(
        ACCOUNTS,
        "public",
        "pgbench_accounts",
        "r",
        &["aid", "bid", "abalance", "filler"],
    );
    table(
        16510,
        "public",
        "pgbench_branches",
        "r",
        &["bid", "bbalance", "filler"],
    );
    table(
        16520,
        "public",
        "pgbench_tellers",
        "r",
        &["tid", "bid", "tbalance", "filler"],
    );
    table(
        16530,
        "public",
        "pgbench_history",
        "r",
        &["tid", "bid", "aid", "delta", "mtime", "filler"],
    );
    rows.extend([
        function(16600, "public", "all_users", USERS),
        function(16610, "public", "all_orders", ORDERS),
        reads(V_PW, USERS, 1),
        reads(V_PW, USERS, 3),
        reads(V_PW2, V_PW, 1),
        reads(V_CLEAN, USERS, 1),
        reads(V_CLEAN, USERS, 2),
        reads(V_ROW, USERS, 0),
        reads(MV_KEYS, USERS, 4),
    ]);
    rows
}

fn catalog() -> MaskCatalog {
    MaskCatalog::from_rows(&rows(), &patterns()).expect("test rows are well-formed")
}

fn verdict(sql: &str, catalog: &MaskCatalog) -> Result<(), String> {
    check_sql(sql, catalog, &patterns())
}

#[test]
fn the_catalog_knows_masked_columns_and_tainted_views() {
    let c = catalog();
    assert!(c.is_loaded());
    assert!(c.has_sensitive());
    assert!(c.sensitive_attr(USERS, 3), "users.password");
    assert!(c.sensitive_attr(USERS, 4), "users.api_key");
    assert!(c.sensitive_attr(USERS, 5), "public.users.ssn");
    assert!(!c.sensitive_attr(USERS, 1), "users.id");
    assert!(!c.sensitive_attr(USERS, 6), "users.email");
    assert!(
        !c.sensitive_attr(SECRETS, 2),
        "users.api_key names only users"
    );
    assert!(
        !c.sensitive_attr(ARCHIVE_USERS, 2),
        "public.users.ssn names only public"
    );
    assert!(c.sensitive_attr(SESSIONS, 3), "*_token");
    // Views: every column of a tainted view is masked.
    assert!(c.sensitive_attr(V_PW, 1) && c.sensitive_attr(V_PW, 2));
    assert!(c.sensitive_attr(V_PW2, 1), "through another view");
    assert!(c.sensitive_attr(V_ROW, 1), "whole-row reference");
    assert!(c.sensitive_attr(MV_KEYS, 1), "materialized view");
    assert!(!c.sensitive_attr(V_CLEAN, 1) && !c.sensitive_attr(V_CLEAN, 2));
    // Known and unknown OIDs.
    assert!(c.knows(USERS) && c.knows(V_CLEAN));
    assert!(c.knows(1259), "pg_class, created by initdb");
    assert!(!c.knows(99999));
    assert!(!c.knows(0));
    assert!(!c.sensitive_attr(99999, 1));
    // By name.
    assert_eq!(
        c.relation(Some("public"), "users"),
        RelationInfo::HasSensitive {
            columns: vec!["api_key".into(), "password".into(), "ssn".into()]
        }
    );
    assert_eq!(
        c.relation(Some("archive"), "users"),
        RelationInfo::Clean,
        "archive.users.ssn is not public.users.ssn"
    );
    assert!(
        matches!(c.relation(None, "users"), RelationInfo::HasSensitive { .. }),
        "unqualified: any schema"
    );
    assert_eq!(c.relation(None, "orders"), RelationInfo::Clean);
    assert_eq!(c.relation(None, "v_clean"), RelationInfo::Clean);
    assert_eq!(
        c.relation(None, "v_pw2"),
        RelationInfo::TaintedView {
            source: "users.password".into()
        }
    );
    assert!(matches!(
        c.relation(None, "v_row"),
        RelationInfo::TaintedView { .. }
    ));
    assert_eq!(c.relation(None, "nope"), RelationInfo::Unknown);
    assert_eq!(
        c.relation(Some("pg_catalog"), "pg_class"),
        RelationInfo::Clean
    );
    assert_eq!(
        c.relation(Some("elsewhere"), "users"),
        RelationInfo::Unknown
    );
}

#[test]
fn an_empty_catalog_knows_nothing() {
    let c = MaskCatalog::empty();
    assert!(!c.is_loaded());
    assert!(!c.has_sensitive());
    assert!(!c.knows(USERS));
    assert!(c.knows(1259));
    assert!(!c.sensitive_attr(USERS, 3));
    assert_eq!(c.relation(None, "users"), RelationInfo::Unknown);
}

#[test]
fn inheritance_and_partitions_share_masked_columns() {
    let matcher = Patterns::new(&["events.secret_note", "audit_child.token_hint"]);
    let mut rows = Vec::new();
    rows.extend([
        column(20000, "public", "events", "p", 1, "id"),
        column(20000, "public", "events", "p", 2, "secret_note"),
        column(20010, "public", "events_2024", "r", 1, "id"),
        column(20010, "public", "events_2024", "r", 2, "secret_note"),
        column(20020, "public", "events_2024_q1", "r", 1, "secret_note"),
        column(20020, "public", "events_2024_q1", "r", 2, "id"),
        column(20100, "public", "audit", "r", 1, "token_hint"),
        column(20110, "public", "audit_child", "r", 1, "token_hint"),
        inherits(20010, 20000),
        inherits(20020, 20010),
        inherits(20110, 20100),
    ]);
    let c = MaskCatalog::from_rows(&rows, &matcher).expect("valid");
    assert!(c.sensitive_attr(20000, 2));
    assert!(c.sensitive_attr(20010, 2), "partition of a masked parent");
    assert!(c.sensitive_attr(20020, 1), "sub-partition, other attnum");
    assert!(!c.sensitive_attr(20020, 2));
    assert!(c.sensitive_attr(20100, 1), "parent of a masked child");
}

#[test]
fn malformed_catalog_rows_are_errors() {
    let m = patterns();
    assert!(MaskCatalog::from_rows(&[], &m).is_ok());
    let mut short = column(1, "public", "t", "r", 1, "a");
    short.pop();
    assert!(MaskCatalog::from_rows(&[short], &m).is_err());
    let mut bad_oid = column(1, "public", "t", "r", 1, "a");
    bad_oid[1] = text("-1");
    assert!(MaskCatalog::from_rows(&[bad_oid], &m).is_err());
    let mut null_name = column(1, "public", "t", "r", 1, "a");
    null_name[6] = None;
    assert!(MaskCatalog::from_rows(&[null_name], &m).is_err());
    let mut kind = column(1, "public", "t", "r", 1, "a");
    kind[0] = text("x");
    assert!(MaskCatalog::from_rows(&[kind], &m).is_err());
    let mut attnum = reads(2, 1, 1);
    attnum[8] = text("40000");
    assert!(MaskCatalog::from_rows(&[attnum], &m).is_err());
    // Dependencies on relations outside the catalog are ignored.
    assert!(MaskCatalog::from_rows(&[reads(2, 1, 1), inherits(3, 4)], &m).is_ok());
}

/// Bypasses: every one must be denied, with the catalog and without it.
const DENIED: &[&str] = &[
    // Functions, operators, casts.
    "SELECT upper(password) FROM users",
    "SELECT lower(u.password) FROM users u",
    "SELECT password || '' FROM users",
    "SELECT password::text FROM users",
    "SELECT CAST(password AS bytea) FROM users",
    "SELECT coalesce(password, 'x') FROM users",
    "SELECT length(password) AS n FROM users",
    "SELECT CASE WHEN password LIKE 'a%' THEN 1 ELSE 0 END FROM users",
    "SELECT password IS NULL FROM users",
    "SELECT (password)::int FROM users",
    "SELECT password COLLATE \"C\" FROM users",
    "SELECT substring(password FROM 1 FOR 1) FROM users",
    "SELECT ARRAY[password] FROM users",
    "SELECT ROW(id, password) FROM users",
    "SELECT -api_key FROM users",
    "SELECT users.api_key || 'x' FROM users",
    "SELECT upper(public.users.password) FROM public.users",
    "SELECT upper(ssn) FROM public.users",
    "SELECT upper(refresh_token) FROM sessions",
    // Case folding and quoting.
    "SELECT upper(PASSWORD) FROM users",
    "SELECT upper(\"Password\") FROM users",
    "SELECT upper(Users.Password) FROM Users",
    // Aggregates and windows.
    "SELECT string_agg(password, ',') FROM users",
    "SELECT min(password) FROM users",
    "SELECT count(password) FROM users",
    "SELECT count(DISTINCT password) FROM users",
    "SELECT json_agg(password) FROM users",
    "SELECT rank() OVER (ORDER BY password) FROM users",
    "SELECT id FROM users WINDOW w AS (PARTITION BY password)",
    // Whole rows.
    "SELECT u FROM users u",
    "SELECT users FROM users",
    "SELECT row_to_json(u) FROM users u",
    "SELECT row_to_json(u.*) FROM users u",
    "SELECT to_json(users.*) FROM users",
    "SELECT u::text FROM users u",
    "SELECT (u.*)::text FROM users u",
    "SELECT ROW(u.*) FROM users u",
    "SELECT hstore(u) FROM users u",
    "SELECT json_agg(u) FROM users u",
    "SELECT (u).password FROM users u",
    "SELECT u.concat FROM users u",
    "SELECT u.to_jsonb FROM users u",
    "SELECT 1 FROM users u WHERE u IS NOT NULL",
    "SELECT s FROM (SELECT password FROM users) s",
    "SELECT json_agg(s) FROM (SELECT id, password FROM users) s",
    // Predicates, sorting, grouping, limits.
    "SELECT id FROM users WHERE password LIKE 'a%'",
    "SELECT name FROM users WHERE password = 'hunter2'",
    "SELECT id FROM users ORDER BY password",
    "SELECT id, password FROM users ORDER BY 2",
    "SELECT password AS p FROM users ORDER BY p",
    "SELECT * FROM users ORDER BY 3",
    "SELECT password FROM users GROUP BY password",
    "SELECT password AS p, count(*) FROM users GROUP BY 1",
    "SELECT DISTINCT ON (password) id FROM users",
    "SELECT DISTINCT password FROM users",
    "SELECT DISTINCT * FROM users",
    "SELECT id FROM users GROUP BY id HAVING max(password) > 'm'",
    "SELECT id FROM users LIMIT length((SELECT password FROM users LIMIT 1))",
    "SELECT u.id FROM users u JOIN orders o ON o.note = u.password",
    "SELECT id FROM users JOIN guesses USING (password)",
    "SELECT id FROM users NATURAL JOIN guesses",
    "SELECT id FROM users WHERE EXISTS (SELECT 1 FROM users x WHERE x.password = 'a')",
    "SELECT id FROM orders WHERE note IN (SELECT password FROM users)",
    "SELECT id FROM orders WHERE note IN (SELECT * FROM users)",
    "SELECT id FROM orders WHERE note = ANY (SELECT password FROM users)",
    // Subqueries and set operations.
    "SELECT (SELECT password FROM users LIMIT 1)",
    "SELECT password FROM users UNION SELECT 'x'",
    "SELECT 'x' UNION ALL SELECT password FROM users",
    "SELECT * FROM users UNION ALL SELECT * FROM users",
    "SELECT id FROM users INTERSECT SELECT password FROM users",
    "SELECT * FROM (SELECT password FROM users UNION SELECT 'x') s",
    "SELECT upper(p) FROM (SELECT password AS p FROM users) s",
    "SELECT upper(s.p) FROM (SELECT password p FROM users) s",
    "SELECT upper(x.password) FROM (SELECT * FROM users) x",
    "SELECT upper(x.password) FROM (SELECT u.* FROM users u) x",
    "SELECT * FROM (SELECT * FROM users) s(a, b, c)",
    "SELECT upper(c) FROM users u(a, b, c)",
    "SELECT * FROM users u, LATERAL (SELECT u.password) l",
    "SELECT * FROM users u, LATERAL (SELECT upper(u.password)) l",
    // WITH queries.
    "WITH x AS (SELECT upper(password) AS p FROM users) SELECT * FROM x",
    "WITH x AS (SELECT password FROM users) SELECT upper(password) FROM x",
    "WITH x AS (SELECT password AS p FROM users) SELECT id FROM orders WHERE note = (SELECT p FROM x)",
    "WITH x(a) AS (SELECT password FROM users) SELECT * FROM x",
    "WITH RECURSIVE r AS (SELECT password FROM users) SELECT * FROM r",
    "WITH x AS (SELECT * FROM users) SELECT row_to_json(x) FROM x",
    "WITH d AS (DELETE FROM users WHERE id = 1 RETURNING password) SELECT * FROM d",
    "WITH d AS (DELETE FROM users WHERE id = 1 RETURNING *) SELECT upper(password) FROM d",
    // Writes that copy masked values elsewhere.
    "INSERT INTO x SELECT password FROM users",
    "INSERT INTO x SELECT * FROM users",
    "INSERT INTO x (a) VALUES ((SELECT password FROM users LIMIT 1))",
    "UPDATE orders SET note = (SELECT password FROM users WHERE users.id = orders.user_id)",
    "UPDATE users SET name = password",
    "UPDATE users SET password = upper(password)",
    "UPDATE orders o SET note = u.password FROM users u WHERE u.id = o.user_id",
    "UPDATE users SET name = 'x' WHERE password = 'y'",
    "DELETE FROM users WHERE password LIKE 'a%'",
    "DELETE FROM orders USING users u WHERE u.password = orders.note",
    "INSERT INTO users (name) VALUES ('x') RETURNING upper(password)",
    "MERGE INTO orders o USING users u ON o.user_id = u.id WHEN MATCHED THEN UPDATE SET note = u.password",
    "CREATE TABLE x AS SELECT password FROM users",
    "CREATE TABLE x AS SELECT * FROM users",
    "SELECT password INTO x FROM users",
    "SELECT * INTO x FROM users",
    // COPY.
    "COPY users TO STDOUT",
    "COPY public.users TO STDOUT",
    "COPY users (id, password) TO STDOUT",
    "COPY (SELECT password FROM users) TO STDOUT",
    "COPY (SELECT * FROM users) TO STDOUT",
    "COPY (SELECT id FROM users WHERE password LIKE 'a%') TO STDOUT",
    // Wrapped statements.
    "PREPARE p AS SELECT upper(password) FROM users",
    "PREPARE p AS SELECT id FROM users WHERE password = $1",
    "DECLARE c CURSOR FOR SELECT password::text FROM users",
    "EXPLAIN ANALYZE SELECT upper(password) FROM users",
    "EXPLAIN (ANALYZE, BUFFERS) SELECT id FROM users WHERE password = 'x'",
    "EXPLAIN SELECT id FROM users WHERE password = 'x'",
    // Views.
    "SELECT * FROM v_pw",
    "SELECT id FROM v_pw2",
    "SELECT j FROM v_row",
    "SELECT * FROM mv_keys",
    "SELECT id FROM users WHERE id IN (SELECT id FROM v_pw)",
    "CREATE VIEW leak AS SELECT password FROM users",
    "CREATE VIEW leak AS SELECT * FROM users",
    "CREATE MATERIALIZED VIEW leak AS SELECT id, password FROM users",
    "CREATE RULE r AS ON INSERT TO orders DO ALSO INSERT INTO log SELECT password FROM users",
    // Functions and text SQL.
    "SELECT query_to_xml('select password from users', true, true, '')",
    "SELECT pg_catalog.table_to_xml('users', true, false, '')",
    "SELECT * FROM dblink('dbname=app', 'SELECT password FROM users') AS t(p text)",
    "SELECT ts_stat('SELECT to_tsvector(password) FROM users')",
    "SELECT * FROM pg_stats WHERE attname = 'password'",
    "SELECT most_common_vals FROM pg_catalog.pg_stats",
    "SELECT stxdmcv FROM pg_catalog.pg_statistic_ext_data",
    "SELECT most_common_vals FROM pg_stats_ext",
    "CREATE FUNCTION f() RETURNS text AS $$ SELECT password FROM users LIMIT 1 $$ LANGUAGE sql",
    "CREATE FUNCTION f(u users) RETURNS text AS $$ SELECT u.password $$ LANGUAGE sql",
    "CREATE FUNCTION f() RETURNS text LANGUAGE sql RETURN (SELECT password FROM users LIMIT 1)",
    "CREATE FUNCTION f() RETURNS trigger AS $$ BEGIN RAISE NOTICE '%', NEW.password; RETURN NEW; END $$ LANGUAGE plpgsql",
    "CREATE FUNCTION f() RETURNS void AS $$ BEGIN EXECUTE 'SELECT pass' || 'word FROM us' || 'ers'; END $$ LANGUAGE plpgsql",
    "CREATE FUNCTION f() RETURNS text AS 'return 1' LANGUAGE plpython3u",
    "CREATE TRIGGER t AFTER UPDATE ON users FOR EACH ROW EXECUTE FUNCTION audit_row()",
    // DDL that launders or oracles.
    "ALTER TABLE users RENAME COLUMN password TO pw",
    "ALTER TABLE users RENAME TO people",
    "ALTER TABLE users ADD COLUMN pw_copy text GENERATED ALWAYS AS (password) STORED",
    "ALTER TABLE users ADD CONSTRAINT c CHECK (password NOT LIKE 'a%')",
    "ALTER TABLE users ALTER COLUMN password TYPE int USING length(password)",
    "ALTER TABLE users ADD CONSTRAINT u UNIQUE (password)",
    "CREATE UNIQUE INDEX ON users (password)",
    "CREATE INDEX ON users (upper(password))",
    "CREATE INDEX ON users (id) WHERE password LIKE 'a%'",
    "CREATE POLICY p ON orders USING (note = (SELECT password FROM users LIMIT 1))",
    "ALTER TABLE parent ATTACH PARTITION users FOR VALUES IN (1)",
    "ALTER TABLE users ALTER COLUMN password TYPE my_domain",
    "ALTER TABLE users ALTER password SET DATA TYPE bytea",
    "CREATE TABLE probe (p text REFERENCES users (password))",
    "CREATE TABLE probe (p text, FOREIGN KEY (p) REFERENCES users (api_key))",
    "ALTER TABLE probe ADD CONSTRAINT f FOREIGN KEY (p) REFERENCES users (password)",
    "ALTER TABLE probe ADD COLUMN q text REFERENCES users (password)",
    "CREATE INDEX ON users (password leaky_ops)",
];

/// Ordinary work: every one must be allowed, with the catalog and without it.
const ALLOWED: &[&str] = &[
    // psql's \d TABLE (and pg_dump) read the definitions of extended
    // statistics, which hold no sampled values.
    "SELECT oid, stxrelid::pg_catalog.regclass, stxnamespace::pg_catalog.regnamespace::pg_catalog.text AS nsp, stxname, pg_catalog.pg_get_statisticsobjdef_columns(oid) AS columns, 'd' = any(stxkind) AS ndist_enabled, 'f' = any(stxkind) AS deps_enabled, 'm' = any(stxkind) AS mcv_enabled, stxstattarget FROM pg_catalog.pg_statistic_ext WHERE stxrelid = '16384' ORDER BY nsp, stxname",
    "SELECT 1",
    "SELECT id, name FROM users",
    "SELECT name FROM users WHERE id = 1",
    "SELECT password FROM users",
    "SELECT password FROM users WHERE id = 1",
    "SELECT u.password AS p FROM users u",
    "SELECT (password) FROM users",
    "SELECT public.users.password FROM public.users",
    "SELECT users.api_key, users.ssn FROM users",
    "SELECT \"password\" FROM users",
    "SELECT * FROM users",
    "SELECT u.* FROM users u",
    "SELECT u.*, o.total FROM users u JOIN orders o ON o.user_id = u.id",
    "SELECT * FROM users WHERE id = $1 FOR UPDATE",
    "SELECT * FROM users ORDER BY id LIMIT 10",
    "SELECT id, password FROM users ORDER BY 1",
    "SELECT * FROM (SELECT * FROM users) s",
    "SELECT * FROM (SELECT password AS p FROM users) s",
    "SELECT p FROM (SELECT password p FROM users) s",
    "SELECT s.p FROM (SELECT id, password p FROM users) s WHERE s.id = 1",
    "SELECT * FROM (SELECT id FROM users) s(a)",
    "WITH x AS (SELECT password FROM users) SELECT * FROM x",
    "WITH x AS (SELECT * FROM users) SELECT x.password, x.id FROM x WHERE x.id = 2",
    "WITH x AS (SELECT id FROM users) SELECT row_to_json(x) FROM x",
    "SELECT count(*) FROM users",
    "SELECT count(*) FROM (SELECT * FROM users) s",
    "SELECT count(id), max(name) FROM users",
    "SELECT id FROM users WHERE EXISTS (SELECT * FROM orders WHERE orders.user_id = users.id)",
    "SELECT id FROM orders o WHERE EXISTS (SELECT * FROM users u WHERE u.id = o.user_id)",
    "SELECT row_to_json(o) FROM orders o",
    "SELECT json_agg(t) FROM (SELECT id, name FROM users) t",
    "SELECT id FROM users UNION SELECT id FROM orders",
    "SELECT DISTINCT name FROM users",
    "SELECT name, count(*) FROM users GROUP BY name ORDER BY 2 DESC",
    "SELECT id FROM users u JOIN orders o USING (id)",
    "UPDATE users SET password = $1 WHERE id = $2",
    "UPDATE users SET name = 'x' WHERE id = 2 RETURNING password",
    "UPDATE users SET name = upper(name) WHERE id = 2",
    "INSERT INTO users (name, password) VALUES ($1, $2)",
    "INSERT INTO users (name, password) VALUES ('a', 'b') RETURNING *",
    "INSERT INTO sessions (user_id, refresh_token) VALUES (1, 'x') ON CONFLICT (user_id) DO UPDATE SET refresh_token = EXCLUDED.refresh_token",
    "DELETE FROM users WHERE id = 1 RETURNING id, password",
    "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT id FROM d",
    "COPY users (id, name) TO STDOUT",
    "COPY users FROM STDIN",
    "COPY (SELECT id, name FROM users) TO STDOUT",
    "COPY orders TO STDOUT",
    "PREPARE p AS SELECT password FROM users WHERE id = $1",
    "DECLARE c CURSOR FOR SELECT * FROM users",
    "EXPLAIN ANALYZE SELECT password FROM users WHERE id = 1",
    "EXPLAIN SELECT * FROM users",
    "SELECT * FROM v_clean",
    "CREATE VIEW names AS SELECT id, name FROM users",
    "CREATE INDEX ON users (password)",
    "CREATE TRIGGER t AFTER UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION audit_row()",
    "CREATE TABLE t (id int, note text)",
    "CREATE TABLE t (id int, user_id int REFERENCES users (id), owner int REFERENCES users)",
    "ALTER TABLE users ALTER COLUMN name TYPE varchar(200)",
    "CREATE FUNCTION add(a int, b int) RETURNS int AS $$ SELECT a + b $$ LANGUAGE sql",
    "CREATE FUNCTION touch() RETURNS trigger AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$ LANGUAGE plpgsql",
    "ALTER TABLE users ADD COLUMN created_at timestamptz",
    "ALTER TABLE users RENAME COLUMN name TO full_name",
    "DROP VIEW v_pw",
    "BEGIN",
    "COMMIT",
    "SET search_path TO public",
    "SELECT relname FROM pg_catalog.pg_class",
    // pgbench's built-in script.
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
    "SELECT count(*) FROM pgbench_branches",
    "TRUNCATE pgbench_history",
];

#[test]
fn bypasses_are_denied_with_the_catalog() {
    let c = catalog();
    for sql in DENIED {
        let reason = verdict(sql, &c).expect_err(sql);
        // Each case parses: it is denied for what it does.
        assert!(
            !reason.contains("cannot be checked: sql parser error"),
            "{sql}: {reason}"
        );
    }
}

#[test]
fn plain_work_is_allowed_with_the_catalog() {
    let c = catalog();
    for sql in ALLOWED {
        assert_eq!(verdict(sql, &c), Ok(()), "{sql}");
    }
}

/// Without a catalog (not loaded yet, or the lookup failed) decisions rest
/// on names; everything the catalog denies is still denied, apart from the
/// views, which only the catalog knows are tainted.
#[test]
fn bypasses_are_denied_without_the_catalog() {
    let c = MaskCatalog::empty();
    let needs_catalog = [
        "SELECT * FROM v_pw",
        "SELECT id FROM v_pw2",
        "SELECT j FROM v_row",
        "SELECT * FROM mv_keys",
        "SELECT id FROM users WHERE id IN (SELECT id FROM v_pw)",
    ];
    for sql in DENIED {
        if needs_catalog.contains(sql) {
            continue;
        }
        assert!(
            verdict(sql, &c).is_err(),
            "allowed without the catalog: {sql}"
        );
    }
}

#[test]
fn plain_work_is_allowed_without_the_catalog() {
    let c = MaskCatalog::empty();
    // Without the catalog a name can be a column or a whole row, and an
    // unknown relation may hold masked columns: these are refused until the
    // catalog is there.
    let needs_catalog = [
        "WITH x AS (SELECT id FROM users) SELECT row_to_json(x) FROM x",
        "SELECT row_to_json(o) FROM orders o",
        "CREATE TRIGGER t AFTER UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION audit_row()",
        "COPY orders TO STDOUT",
        "WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT id FROM d",
        "CREATE FUNCTION touch() RETURNS trigger AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$ LANGUAGE plpgsql",
    ];
    for sql in ALLOWED {
        if needs_catalog.contains(sql) {
            continue;
        }
        assert_eq!(verdict(sql, &c), Ok(()), "{sql}");
    }
    for sql in needs_catalog {
        assert!(verdict(sql, &c).is_err(), "{sql}");
    }
}

#[test]
fn denial_reasons_name_the_column() {
    let c = catalog();
    let reason = verdict("SELECT upper(password) FROM users", &c).unwrap_err();
    assert!(reason.starts_with("password is masked"), "{reason}");
    let reason = verdict("SELECT upper(u.password) FROM users u", &c).unwrap_err();
    assert!(reason.starts_with("u.password is masked"), "{reason}");
    let reason = verdict("SELECT row_to_json(u) FROM users u", &c).unwrap_err();
    assert!(reason.starts_with("u has masked columns"), "{reason}");
    let reason = verdict("SELECT id FROM v_pw2", &c).unwrap_err();
    assert!(
        reason.contains("view v_pw2 exposes masked column users.password"),
        "{reason}"
    );
    let reason = verdict("COPY users TO STDOUT", &c).unwrap_err();
    assert!(reason.contains("COPY"), "{reason}");
}

#[test]
fn names_resolve_through_the_catalog() {
    let c = catalog();
    // users.api_key is masked; secrets.api_key is not.
    assert!(verdict("SELECT upper(api_key) FROM users", &c).is_err());
    assert_eq!(verdict("SELECT upper(api_key) FROM secrets", &c), Ok(()));
    assert_eq!(
        verdict("SELECT upper(s.api_key) FROM secrets s", &c),
        Ok(())
    );
    assert!(verdict("SELECT upper(u.api_key) FROM secrets s, users u", &c).is_err());
    assert_eq!(
        verdict("SELECT upper(s.api_key) FROM secrets s, users u", &c),
        Ok(())
    );
    // public.users.ssn is masked; archive.users.ssn is not, but an
    // unqualified `users` could be either.
    assert_eq!(verdict("SELECT upper(ssn) FROM archive.users", &c), Ok(()));
    assert!(verdict("SELECT upper(ssn) FROM public.users", &c).is_err());
    assert!(verdict("SELECT upper(ssn) FROM users", &c).is_err());
    // A column of that name exists, so `name` is a column, not a whole row.
    assert_eq!(verdict("SELECT upper(name) FROM users name", &c), Ok(()));
    // Unquoted names fold; quoted ones do not, and "Password" is not a
    // column of users, so it cannot be placed: it counts as masked.
    assert!(verdict("SELECT upper(PassWord) FROM users", &c).is_err());
    assert!(verdict("SELECT upper(\"Password\") FROM users", &c).is_err());
    assert_eq!(verdict("SELECT upper(\"NAME\") FROM orders", &c), Ok(()));
    // Without the catalog, `users.api_key` still only names users.
    let e = MaskCatalog::empty();
    assert_eq!(verdict("SELECT upper(api_key) FROM secrets", &e), Ok(()));
    assert!(verdict("SELECT upper(api_key) FROM users", &e).is_err());
}

#[test]
fn matcher_without_patterns_allows_everything() {
    let none = Patterns::new(&[]);
    for sql in DENIED.iter().chain(ALLOWED) {
        assert_eq!(
            check_sql(sql, &MaskCatalog::empty(), &none),
            Ok(()),
            "{sql}"
        );
    }
    assert_eq!(check_sql("DO $$ BEGIN END $$", &catalog(), &none), Ok(()));
}

#[test]
fn unparsable_statements_are_denied_while_masking_is_configured() {
    let c = catalog();
    for sql in [
        "DO $$ BEGIN RAISE NOTICE '%', (SELECT password FROM users LIMIT 1); END $$",
        "SELEC password FROM users",
        "SELECT 'unterminated",
        "SELECT 1; DO $$ BEGIN END $$",
    ] {
        let reason = verdict(sql, &c).unwrap_err();
        assert!(reason.contains("cannot be checked"), "{sql}: {reason}");
    }
    assert_eq!(verdict("", &c), Ok(()));
    assert_eq!(verdict("SELECT 1; SELECT password FROM users", &c), Ok(()));
    assert!(verdict("SELECT 1; SELECT upper(password) FROM users", &c).is_err());
    // Utility statements read from their tokens return no table rows.
    for sql in [
        "VACUUM ANALYZE users",
        "ANALYZE users (password)",
        "FETCH FROM c",
        "SET CONSTRAINTS ALL IMMEDIATE",
        "VACUUM users; SELECT password FROM users",
    ] {
        assert_eq!(verdict(sql, &c), Ok(()), "{sql}");
    }
    assert!(verdict("VACUUM users; SELECT upper(password) FROM users", &c).is_err());
}

#[test]
fn the_fast_path_skips_statements_without_masked_names() {
    let c = catalog();
    let m = patterns();
    let parse = |sql: &str| {
        let (_, mut parsed) = analyze_parsed(sql);
        parsed.pop().flatten().expect("parses")
    };
    for sql in [
        "SELECT 1",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        "SELECT id, total FROM orders WHERE user_id = 3",
        "BEGIN",
    ] {
        assert!(!needs_check(&parse(sql), &c, &m), "{sql}");
    }
    for sql in [
        "SELECT id FROM users",
        "SELECT x FROM unknown_table",
        "SELECT 1 FROM orders WHERE note = 'x' UNION TABLE users",
        "SELECT password FROM orders",
        "COPY orders TO STDOUT",
        "SELECT query_to_xml('select 1', true, true, '')",
    ] {
        assert!(needs_check(&parse(sql), &c, &m), "{sql}");
    }
    // Without the catalog every relation is unknown.
    assert!(needs_check(
        &parse("SELECT abalance FROM pgbench_accounts"),
        &MaskCatalog::empty(),
        &m
    ));
}

#[test]
fn table_statements_count_as_wildcards() {
    let c = catalog();
    assert!(verdict(
        "SELECT id, name, password, api_key, ssn, email FROM users UNION TABLE users",
        &c
    )
    .is_err());
    assert!(verdict("WITH x AS (TABLE users) SELECT upper(password) FROM x", &c).is_err());
    assert_eq!(
        verdict("SELECT id FROM orders UNION TABLE orders", &c),
        Ok(())
    );
    assert_eq!(
        verdict("WITH x AS (TABLE users) SELECT * FROM x", &c),
        Ok(())
    );
}

#[test]
fn huge_and_deeply_nested_input_does_not_crash() {
    let c = catalog();
    let depth = 100_000;
    let nested = format!(
        "SELECT {}password{} FROM users",
        "(".repeat(depth),
        ")".repeat(depth)
    );
    assert!(verdict(&nested, &c).is_err());
    let chain = format!(
        "SELECT password FROM users WHERE id = 1{}",
        " + 1".repeat(250_000)
    );
    assert!(verdict(&chain, &c).is_err());
    // Realistic ORM output stays checkable, and the masked column at the end
    // of a long chain is still found.
    let ors = format!(
        "SELECT name FROM users WHERE id = 1{}",
        " OR id = 1".repeat(3_000)
    );
    assert_eq!(verdict(&ors, &c), Ok(()));
    let ors = format!(
        "SELECT name FROM users WHERE id = 1{} OR password = 'x'",
        " OR id = 1".repeat(3_000)
    );
    assert!(verdict(&ors, &c).is_err());
    let in_list = format!(
        "SELECT password FROM users WHERE id IN (0{})",
        ", 1".repeat(200_000)
    );
    assert_eq!(verdict(&in_list, &c), Ok(()));
    let rows = format!(
        "INSERT INTO users (id, password) VALUES (0, NULL){}",
        ", (1, 'x')".repeat(50_000)
    );
    assert_eq!(verdict(&rows, &c), Ok(()));
    // Many WITH queries, each reading the previous one twice: answers are
    // remembered, so this does not take 2^40 steps.
    let mut sql = String::from("WITH c0 AS (SELECT * FROM users)");
    for i in 1..40 {
        sql.push_str(&format!(
            ", c{i} AS (SELECT * FROM c{} a, c{} b)",
            i - 1,
            i - 1
        ));
    }
    sql.push_str(" SELECT upper(password) FROM c39");
    assert!(verdict(&sql, &c).is_err());
    // Thousands of references against thousands of FROM items: bounded work.
    let columns: Vec<String> = (0..3_000).map(|i| format!("c{i}")).collect();
    let tables: Vec<String> = (0..2_000).map(|i| format!("t{i}")).collect();
    let wide = format!("SELECT {} FROM {}", columns.join(", "), tables.join(", "));
    let started = std::time::Instant::now();
    let reason = verdict(&wide, &c).expect_err("too much work");
    assert!(reason.contains("too complex"), "{reason}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // A recursive WITH that reads itself.
    assert_eq!(
        verdict(
            "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 10) SELECT n FROM t",
            &c
        ),
        Ok(())
    );
    assert!(verdict(
        "WITH RECURSIVE t AS (SELECT * FROM users UNION ALL SELECT * FROM t) SELECT id FROM t",
        &c
    )
    .is_err());
}

#[test]
fn sql_function_bodies_in_begin_atomic_are_walked() {
    // The statement splitter cuts BEGIN ATOMIC bodies at their `;` (so
    // check_sql refuses them as unparsable); parsed whole, they are walked.
    let c = catalog();
    let parse = |sql: &str| {
        sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("parses")
            .pop()
            .expect("one statement")
    };
    let leak = parse(
        "CREATE FUNCTION f() RETURNS text LANGUAGE sql \
         BEGIN ATOMIC SELECT password FROM users LIMIT 1; END",
    );
    assert!(check(&leak, &c, &patterns()).is_err());
    let fine = parse(
        "CREATE FUNCTION f() RETURNS bigint LANGUAGE sql \
         BEGIN ATOMIC SELECT count(*) FROM users; END",
    );
    assert_eq!(check(&fine, &c, &patterns()), Ok(()));
}

#[test]
fn names_are_matched_against_every_from_item_of_the_statement() {
    let c = catalog();
    // The same alias in two scopes: either could be meant, so the masked one
    // counts.
    assert!(verdict(
        "SELECT (SELECT upper(u.password) FROM orders u) FROM users u",
        &c
    )
    .is_err());
    // A FROM item called `excluded` is not the upsert's row.
    assert!(verdict(
        "INSERT INTO orders (note) SELECT upper(excluded.password) FROM users excluded",
        &c
    )
    .is_err());
    // Columns of a VALUES list are the client's own values.
    assert_eq!(
        verdict(
            "SELECT upper(password) FROM (VALUES ('a')) AS t(password)",
            &c
        ),
        Ok(())
    );
    // A function result: PostgreSQL reports no origin for its columns, so a
    // masked name from it is refused even as a plain column.
    assert!(verdict(
        "SELECT password FROM json_to_record($1) AS t(password text)",
        &c
    )
    .is_err());
    // A WITH query of the same name as a table hides it.
    assert_eq!(
        verdict(
            "WITH orders AS (SELECT id, name FROM users) SELECT row_to_json(orders) FROM orders",
            &c
        ),
        Ok(())
    );
    assert!(verdict(
        "WITH users AS (SELECT id FROM orders) SELECT row_to_json(users) FROM users",
        &c
    )
    .is_err());
    // Output names win in ORDER BY.
    assert!(verdict("SELECT password AS id FROM users ORDER BY id", &c).is_err());
    assert!(verdict(
        "SELECT * FROM (SELECT id, password FROM users ORDER BY 2 LIMIT 1) s",
        &c
    )
    .is_err());
    assert!(verdict("SELECT DISTINCT ON (1) password, id FROM users", &c).is_err());
    assert!(verdict(
        "SELECT string_agg(name, ',' ORDER BY password) FROM users",
        &c
    )
    .is_err());
    assert!(verdict(
        "SELECT count(*) FILTER (WHERE password LIKE 'a%') FROM users",
        &c
    )
    .is_err());
    assert!(verdict("SELECT password(u) FROM users u", &c).is_err());
    assert!(verdict("SELECT * FROM users ORDER BY users", &c).is_err());
    assert_eq!(
        verdict(
            "SELECT p FROM (SELECT p FROM (SELECT password p FROM users) a) b",
            &c
        ),
        Ok(())
    );
}

#[test]
fn functions_returning_rows_of_masked_tables() {
    let c = catalog();
    for sql in [
        "SELECT * FROM all_users()",
        "SELECT a.* FROM all_users() a",
        "SELECT password FROM all_users()",
        "SELECT a.password FROM public.all_users() a",
        "SELECT * FROM (SELECT * FROM all_users()) s",
        "WITH x AS (SELECT * FROM all_users()) SELECT * FROM x",
        "SELECT row_to_json(a) FROM all_users() a",
        "SELECT all_users()",
        "SELECT (all_users()).password",
        "SELECT id FROM users WHERE id IN (SELECT (all_users()).id)",
    ] {
        assert!(verdict(sql, &c).is_err(), "{sql}");
    }
    for sql in [
        "SELECT id, name FROM all_users()",
        "SELECT upper(a.name) FROM all_users() a",
        "SELECT * FROM all_orders()",
        "SELECT all_orders()",
        "SELECT * FROM generate_series(1, 3) g",
        "SELECT row_to_json(g) FROM generate_series(1, 3) g",
    ] {
        assert_eq!(verdict(sql, &c), Ok(()), "{sql}");
    }
}

/// Checks the output of [`CATALOG_SQL`] from a real server. Run by hand:
///
/// ```text
/// -- in a scratch database:
/// CREATE TABLE users (id int PRIMARY KEY, name text, password text);
/// CREATE TABLE secrets (api_key text);
/// CREATE VIEW v_pw AS SELECT id, password FROM users;
/// CREATE VIEW v_pw2 AS SELECT id FROM v_pw;
/// CREATE VIEW v_clean AS SELECT id, name FROM users;
/// CREATE VIEW v_row AS SELECT row_to_json(u) AS j FROM users u;
/// CREATE VIEW v_cnt AS SELECT count(*) AS n FROM users;
/// CREATE MATERIALIZED VIEW mv AS SELECT api_key FROM secrets;
/// CREATE TABLE parent (id int, password text) PARTITION BY RANGE (id);
/// CREATE TABLE part1 PARTITION OF parent FOR VALUES FROM (0) TO (10);
/// CREATE FUNCTION all_users() RETURNS SETOF users LANGUAGE sql AS 'SELECT * FROM users';
/// ```
///
/// then `psql -At -F '|' -c "<CATALOG_SQL>" > rows.txt` and
/// `MASK_CATALOG_ROWS=rows.txt cargo test -p interceptor --lib -- --ignored catalog_sql_output`.
#[test]
#[ignore = "needs the output of CATALOG_SQL from a real server"]
fn catalog_sql_output_from_a_real_server() {
    let Ok(path) = std::env::var("MASK_CATALOG_ROWS") else {
        return;
    };
    let output = std::fs::read_to_string(path).expect("readable");
    // psql -At prints NULL as an empty field; no name in the output is empty.
    let rows: Vec<Vec<Option<String>>> = output
        .lines()
        .map(|line| {
            line.split('|')
                .map(|f| (!f.is_empty()).then(|| f.to_string()))
                .collect()
        })
        .collect();
    let matcher = Patterns::new(&["password", "secrets.api_key"]);
    let c = MaskCatalog::from_rows(&rows, &matcher).expect("well-formed rows");
    let relation = |name: &str| c.relation(Some("public"), name);
    assert!(matches!(
        relation("users"),
        RelationInfo::HasSensitive { .. }
    ));
    assert!(matches!(
        relation("secrets"),
        RelationInfo::HasSensitive { .. }
    ));
    for view in ["v_pw", "v_pw2", "v_row", "mv"] {
        assert!(
            matches!(relation(view), RelationInfo::TaintedView { .. }),
            "{view}: {:?}",
            relation(view)
        );
    }
    for clean in ["v_clean", "v_cnt"] {
        assert_eq!(relation(clean), RelationInfo::Clean, "{clean}");
    }
    assert!(matches!(
        relation("part1"),
        RelationInfo::HasSensitive { .. }
    ));
    assert!(check_sql("SELECT * FROM all_users()", &c, &matcher).is_err());
    assert_eq!(
        check_sql("SELECT id FROM all_users()", &c, &matcher),
        Ok(())
    );
}

/// A denial caused by a relation the catalog does not have says so (still
/// denied: it may have masked columns), and names it.
#[test]
fn denials_over_unknown_relations_name_them() {
    let c = catalog();
    let reason = verdict("SELECT * FROM missing_table ORDER BY 1", &c).unwrap_err();
    assert!(
        reason.contains("relation missing_table is not in the catalog"),
        "{reason}"
    );
    assert!(reason.contains("ORDER BY"), "{reason}");
    let reason = verdict(
        "WITH w AS (SELECT 1 AS a) SELECT * FROM w, nope.gone, missing ORDER BY 1",
        &c,
    )
    .unwrap_err();
    assert!(
        reason.contains("relations missing, nope.gone are not in the catalog"),
        "{reason}"
    );
    // Known relations: the reason alone.
    let reason = verdict("SELECT * FROM users ORDER BY 3", &c).unwrap_err();
    assert!(!reason.contains("not in the catalog"), "{reason}");
    // Without a catalog nothing is known: no claim about any relation.
    let reason = verdict(
        "SELECT * FROM missing_table ORDER BY 1",
        &MaskCatalog::empty(),
    )
    .unwrap_err();
    assert!(!reason.contains("not in the catalog"), "{reason}");
}
