//! `[[rule]]` sections compiled once at start, then narrowed per session.
//!
//! Rules are checked in file order and the first one that matches decides.
//! A rule applies to a command when its `stores` name the session's store
//! (or it has none), its `identity` matches the process that opened the
//! connection, and its protocol criteria match the command. Store and
//! identity do not change during a session, so [`Policy::for_session`] drops
//! the rules they exclude once, and each command is matched against the rest.

use std::sync::Arc;

use crate::config::{Action, IdentityMatch, RuleConfig};
use crate::identity::Identity;

use super::redis_http::{HttpRule, RedisArgs, RedisRule};
use super::sql::{Analysis, Glob, SqlRule};

/// One compiled `[[rule]]`.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    stores: Option<Vec<String>>,
    pub action: Action,
    pub message: Option<String>,
    identity: Option<IdentityMatcher>,
    sql: Option<SqlRule>,
    redis: Option<RedisRule>,
    http: Option<HttpRule>,
}

/// Every rule of the config, in file order.
#[derive(Debug, Default)]
pub struct Policy {
    rules: Vec<Arc<Rule>>,
}

/// The rules that can apply to one session (its store and its process).
#[derive(Debug, Default, Clone)]
pub struct SessionPolicy {
    rules: Vec<Arc<Rule>>,
}

/// What the rules say about a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No rule matched, or an `allow` rule did (named then).
    Allow { rule: Option<String> },
    /// A `deny` rule matched; `message` is for the client, `reason` says
    /// what in the command matched.
    Deny {
        rule: String,
        message: String,
        reason: String,
    },
}

impl Policy {
    pub fn new(rules: &[RuleConfig]) -> Policy {
        Policy {
            rules: rules
                .iter()
                .map(|r| {
                    Arc::new(Rule {
                        name: r.name.clone(),
                        stores: r.stores.clone(),
                        action: r.action,
                        message: r.message.clone(),
                        identity: r.identity.as_ref().map(IdentityMatcher::new),
                        sql: r.sql.as_ref().map(SqlRule::from_config),
                        redis: r.redis.as_ref().map(RedisRule::from_config),
                        http: r.http.as_ref().map(HttpRule::from_config),
                    })
                })
                .collect(),
        }
    }

    /// The rules that apply to `store` and the process behind `identity`.
    pub fn for_session(&self, store: &str, identity: &Identity) -> SessionPolicy {
        SessionPolicy {
            rules: self
                .rules
                .iter()
                .filter(|r| {
                    r.stores
                        .as_ref()
                        .is_none_or(|s| s.iter().any(|s| s == store))
                })
                .filter(|r| r.identity.as_ref().is_none_or(|m| m.matches(identity)))
                .cloned()
                .collect(),
        }
    }
}

impl SessionPolicy {
    /// The verdict on SQL text (one simple Query or one Parse). Rules without
    /// SQL criteria do not match SQL commands.
    pub fn decide_sql(&self, analysis: &Analysis) -> Verdict {
        for rule in &self.rules {
            let Some(sql) = &rule.sql else { continue };
            let Some(m) = sql.matches(analysis) else {
                continue;
            };
            return rule.verdict(m.reason);
        }
        Verdict::Allow { rule: None }
    }

    /// The verdict on one Redis command (its arguments, name first). Rules
    /// without Redis criteria do not match Redis commands.
    pub fn decide_redis(&self, args: &(impl RedisArgs + ?Sized)) -> Verdict {
        for rule in &self.rules {
            let Some(redis) = &rule.redis else { continue };
            if let Some(entry) = redis.matches(args) {
                return rule.verdict(format!("command matches \"{entry}\""));
            }
        }
        Verdict::Allow { rule: None }
    }

    /// The verdict on one HTTP request: its method, normalized path, and
    /// `X-Vault-Namespace` header. Rules without HTTP criteria do not match
    /// HTTP requests.
    pub fn decide_http(&self, method: &str, path: &str, namespace: Option<&str>) -> Verdict {
        for rule in &self.rules {
            let Some(http) = &rule.http else { continue };
            if let Some(reason) = http.matches(method, path, namespace) {
                return rule.verdict(reason);
            }
        }
        Verdict::Allow { rule: None }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl Rule {
    /// What this rule says about a command it matched (`reason`: what in
    /// the command matched).
    fn verdict(&self, reason: String) -> Verdict {
        match self.action {
            Action::Allow => Verdict::Allow {
                rule: Some(self.name.clone()),
            },
            Action::Deny => Verdict::Deny {
                rule: self.name.clone(),
                message: self
                    .message
                    .clone()
                    .unwrap_or_else(|| format!("denied by rule \"{}\"", self.name)),
                reason,
            },
            // Holding for a human is a later feature. Until it exists an
            // `approve` rule must not turn into an allow: it denies, and
            // says why.
            Action::Approve => Verdict::Deny {
                rule: self.name.clone(),
                message: format!(
                    "{} (rule \"{}\" requires approval, which this build cannot grant yet)",
                    self.message.as_deref().unwrap_or("approval required"),
                    self.name
                ),
                reason,
            },
        }
    }
}

/// An `identity = { ... }` block: every present field must match, any entry
/// within a field may.
#[derive(Debug)]
struct IdentityMatcher {
    uid: Option<Vec<u32>>,
    gid: Option<Vec<u32>>,
    unit: Option<Vec<Glob>>,
    exe: Option<Vec<Glob>>,
    comm: Option<Vec<Glob>>,
    env: Vec<(String, Glob)>,
}

impl IdentityMatcher {
    fn new(m: &IdentityMatch) -> Self {
        let globs = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|v| v.iter().map(|s| Glob::new(s)).collect::<Vec<_>>())
        };
        IdentityMatcher {
            uid: m.uid.clone(),
            gid: m.gid.clone(),
            unit: globs(&m.unit),
            exe: globs(&m.exe),
            comm: globs(&m.comm),
            env: m
                .env
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), Glob::new(v)))
                .collect(),
        }
    }

    fn matches(&self, id: &Identity) -> bool {
        let any = |globs: &Option<Vec<Glob>>, value: Option<&str>| match globs {
            None => true,
            Some(globs) => value.is_some_and(|v| globs.iter().any(|g| g.matches(v))),
        };
        self.uid.as_ref().is_none_or(|u| u.contains(&id.uid))
            && self.gid.as_ref().is_none_or(|g| g.contains(&id.gid))
            && any(&self.unit, id.unit.as_deref())
            && any(&self.exe, id.exe.as_deref())
            && any(&self.comm, Some(&id.comm))
            && self
                .env
                .iter()
                .all(|(k, g)| id.ci_env.get(k).is_some_and(|v| g.matches(v)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::sql::analyze;

    fn policy(toml: &str) -> Policy {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        let base = "[daemon]\ncgroup = \"x\"\n[[store]]\nname = \"db\"\nprotocol = \"postgres\"\ntargets = [\"*:5432\"]\n[[store]]\nname = \"other\"\nprotocol = \"postgres\"\ntargets = [\"*:5433\"]\n";
        std::fs::write(&path, format!("{base}{toml}")).expect("write");
        let cfg = Config::load(&path).expect("valid config");
        Policy::new(&cfg.rules)
    }

    fn identity(uid: u32, exe: &str, job: Option<&str>) -> Identity {
        let mut id = Identity::resolve_from(
            std::path::Path::new("/nonexistent"),
            crate::identity::KernelIdentity {
                tgid: 1,
                tid: 1,
                uid,
                gid: uid,
                comm: "psql".into(),
                cgroup_id: 0,
            },
        );
        id.exe = Some(exe.into());
        if let Some(job) = job {
            id.ci_env.insert("CI_JOB_NAME".into(), job.into());
        }
        id
    }

    #[test]
    fn first_matching_rule_decides_and_identity_narrows() {
        let p = policy(
            r#"
[[rule]]
name = "migrations-may-alter"
action = "allow"
identity = { env = { CI_JOB_NAME = "migrate*" } }
sql = { statements = ["alter"] }

[[rule]]
name = "no-ddl"
stores = ["db"]
action = "deny"
message = "no DDL from CI"
sql = { statements = ["alter", "drop"] }
"#,
        );
        let alter = analyze("ALTER TABLE t ADD COLUMN c int");
        let build = p.for_session("db", &identity(1000, "/usr/bin/psql", Some("build")));
        match build.decide_sql(&alter) {
            Verdict::Deny {
                rule,
                message,
                reason,
            } => {
                assert_eq!(rule, "no-ddl");
                assert_eq!(message, "no DDL from CI");
                assert!(reason.contains("ALTER"), "{reason}");
            }
            v => panic!("expected deny, got {v:?}"),
        }
        let migrate = p.for_session("db", &identity(1000, "/usr/bin/psql", Some("migrate-42")));
        assert_eq!(
            migrate.decide_sql(&alter),
            Verdict::Allow {
                rule: Some("migrations-may-alter".into())
            }
        );
        // DROP is not in the allow rule: the deny rule still applies.
        assert!(matches!(
            migrate.decide_sql(&analyze("DROP TABLE t")),
            Verdict::Deny { .. }
        ));
        // Another store: the deny rule is scoped away.
        let other = p.for_session("other", &identity(1000, "/usr/bin/psql", Some("build")));
        assert_eq!(other.decide_sql(&alter), Verdict::Allow { rule: None });
        assert_eq!(
            build.decide_sql(&analyze("SELECT 1")),
            Verdict::Allow { rule: None }
        );
    }

    #[test]
    fn identity_fields_all_must_match() {
        let p = policy(
            r#"
[[rule]]
name = "root-psql-only"
action = "deny"
identity = { uid = [0], exe = ["*/psql"] }
sql = { statements = ["select"] }
"#,
        );
        let q = analyze("SELECT 1");
        let denied =
            |id: &Identity| matches!(p.for_session("db", id).decide_sql(&q), Verdict::Deny { .. });
        assert!(denied(&identity(0, "/usr/bin/psql", None)));
        assert!(!denied(&identity(1000, "/usr/bin/psql", None)));
        assert!(!denied(&identity(0, "/usr/bin/python3", None)));
    }

    #[test]
    fn approve_rules_deny_until_approval_exists() {
        let p = policy(
            r#"
[[rule]]
name = "hold-deletes"
action = "approve"
sql = { statements = ["delete"] }
"#,
        );
        let v = p
            .for_session("db", &identity(0, "/x", None))
            .decide_sql(&analyze("DELETE FROM t WHERE id = 1"));
        match v {
            Verdict::Deny { message, .. } => {
                assert!(message.contains("requires approval"), "{message}")
            }
            v => panic!("{v:?}"),
        }
    }
}
