//! Redis and HTTP criteria of `[[rule]]` sections, compiled.
//!
//! Redis: each entry of `commands` is one or more words matched against the
//! first arguments of a command, case-insensitively. A word is a glob (`*`)
//! or alternatives of globs (`OFF|SKIP`), so `CONFIG SET` matches only that
//! subcommand, `CONFIG` every subcommand, `CLIENT REPLY OFF|SKIP` those two
//! replies, and `EVAL*` EVAL, EVAL_RO, EVALSHA and EVALSHA_RO. An entry
//! `@category` names one of Redis's ACL categories ([`CATEGORIES`], as
//! Redis 7.0 defines them), matched by command and container subcommand.
//!
//! HTTP: `methods` (or `*`), `paths` (globs where `*` crosses `/`), and
//! `namespaces` (globs on the `X-Vault-Namespace` header; a request without
//! the header has the namespace ""). Every present field must match. Paths
//! are matched as the handler normalized them (no `.`/`..` segments, no
//! doubled slashes, percent-decoding of unreserved characters).

use super::sql::glob_match;
use crate::config::{HttpMatch, RedisMatch};

/// Redis ACL categories a rule may name, with their commands (lower case,
/// `container|subcommand`), as `ACL CAT <category>` lists them in Redis 7.0.
pub const CATEGORIES: &[(&str, &[&str])] = &[
    ("dangerous", DANGEROUS),
    ("admin", ADMIN),
    ("scripting", SCRIPTING),
];

const DANGEROUS: &[&str] = &[
    "acl|deluser",
    "acl|dryrun",
    "acl|getuser",
    "acl|list",
    "acl|load",
    "acl|log",
    "acl|save",
    "acl|setuser",
    "acl|users",
    "bgrewriteaof",
    "bgsave",
    "client|kill",
    "client|list",
    "client|no-evict",
    "client|pause",
    "client|unblock",
    "client|unpause",
    "cluster|addslots",
    "cluster|addslotsrange",
    "cluster|bumpepoch",
    "cluster|count-failure-reports",
    "cluster|delslots",
    "cluster|delslotsrange",
    "cluster|failover",
    "cluster|flushslots",
    "cluster|forget",
    "cluster|meet",
    "cluster|replicas",
    "cluster|replicate",
    "cluster|reset",
    "cluster|saveconfig",
    "cluster|set-config-epoch",
    "cluster|setslot",
    "cluster|slaves",
    "config|get",
    "config|resetstat",
    "config|rewrite",
    "config|set",
    "debug",
    "failover",
    "flushall",
    "flushdb",
    "info",
    "keys",
    "lastsave",
    "latency|doctor",
    "latency|graph",
    "latency|histogram",
    "latency|history",
    "latency|latest",
    "latency|reset",
    "migrate",
    "module|list",
    "module|load",
    "module|loadex",
    "module|unload",
    "monitor",
    "pfdebug",
    "pfselftest",
    "psync",
    "replconf",
    "replicaof",
    "restore",
    "restore-asking",
    "role",
    "save",
    "shutdown",
    "slaveof",
    "slowlog|get",
    "slowlog|len",
    "slowlog|reset",
    "sort",
    "sort_ro",
    "swapdb",
    "sync",
];

const ADMIN: &[&str] = &[
    "acl|deluser",
    "acl|dryrun",
    "acl|getuser",
    "acl|list",
    "acl|load",
    "acl|log",
    "acl|save",
    "acl|setuser",
    "acl|users",
    "bgrewriteaof",
    "bgsave",
    "client|kill",
    "client|list",
    "client|no-evict",
    "client|pause",
    "client|unblock",
    "client|unpause",
    "cluster|addslots",
    "cluster|addslotsrange",
    "cluster|bumpepoch",
    "cluster|count-failure-reports",
    "cluster|delslots",
    "cluster|delslotsrange",
    "cluster|failover",
    "cluster|flushslots",
    "cluster|forget",
    "cluster|meet",
    "cluster|replicas",
    "cluster|replicate",
    "cluster|reset",
    "cluster|saveconfig",
    "cluster|set-config-epoch",
    "cluster|setslot",
    "cluster|slaves",
    "config|get",
    "config|resetstat",
    "config|rewrite",
    "config|set",
    "debug",
    "failover",
    "lastsave",
    "latency|doctor",
    "latency|graph",
    "latency|histogram",
    "latency|history",
    "latency|latest",
    "latency|reset",
    "module|list",
    "module|load",
    "module|loadex",
    "module|unload",
    "monitor",
    "pfdebug",
    "pfselftest",
    "psync",
    "replconf",
    "replicaof",
    "role",
    "save",
    "shutdown",
    "slaveof",
    "slowlog|get",
    "slowlog|len",
    "slowlog|reset",
    "sync",
];

const SCRIPTING: &[&str] = &[
    "eval",
    "eval_ro",
    "evalsha",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
    "function|delete",
    "function|dump",
    "function|flush",
    "function|help",
    "function|kill",
    "function|list",
    "function|load",
    "function|restore",
    "function|stats",
    "script|debug",
    "script|exists",
    "script|flush",
    "script|help",
    "script|kill",
    "script|load",
];

/// The category's commands, if Redis has a category of that name (without
/// the `@`, any case).
pub fn category(name: &str) -> Option<&'static [&'static str]> {
    CATEGORIES
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, c)| *c)
}

/// The `redis` criteria of one rule.
#[derive(Debug, Clone, Default)]
pub struct RedisRule {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
enum Entry {
    /// Words, each a list of upper-case glob alternatives.
    Words(String, Vec<Vec<String>>),
    Category(String, &'static [&'static str]),
}

/// Enough of a command to match it: its arguments (name first).
pub trait RedisArgs {
    fn arg(&self, i: usize) -> Option<&[u8]>;
}

impl<T: AsRef<[u8]>> RedisArgs for [T] {
    fn arg(&self, i: usize) -> Option<&[u8]> {
        self.get(i).map(AsRef::as_ref)
    }
}

/// Longest argument compared; command names and subcommands are short, and
/// a longer argument cannot match a word without `*`... but may with one,
/// so it is compared in full: only the copy is bounded.
const WORD_BUF: usize = 64;

fn upper(arg: &[u8], buf: &mut [u8; WORD_BUF]) -> Option<usize> {
    if arg.len() > WORD_BUF {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(arg) {
        *d = s.to_ascii_uppercase();
    }
    Some(arg.len())
}

fn word_matches(alternatives: &[String], arg: &[u8]) -> bool {
    let mut buf = [0u8; WORD_BUF];
    match upper(arg, &mut buf) {
        Some(n) => alternatives
            .iter()
            .any(|g| glob_match(g.as_bytes(), &buf[..n])),
        None => {
            let up = arg.to_ascii_uppercase();
            alternatives.iter().any(|g| glob_match(g.as_bytes(), &up))
        }
    }
}

impl RedisRule {
    pub fn from_config(m: &RedisMatch) -> RedisRule {
        let entries = m
            .commands
            .iter()
            .flatten()
            .map(|c| match c.strip_prefix('@').and_then(category) {
                Some(list) => Entry::Category(c.clone(), list),
                None => Entry::Words(
                    c.clone(),
                    c.split_whitespace()
                        .map(|w| w.split('|').map(str::to_ascii_uppercase).collect())
                        .collect(),
                ),
            })
            .collect();
        RedisRule { entries }
    }

    /// The entry that matches the command, as written in the config.
    pub fn matches(&self, args: &(impl RedisArgs + ?Sized)) -> Option<&str> {
        let name = args.arg(0)?;
        self.entries.iter().find_map(|e| {
            let hit = match e {
                Entry::Words(_, words) => words
                    .iter()
                    .enumerate()
                    .all(|(i, alts)| args.arg(i).is_some_and(|a| word_matches(alts, a))),
                Entry::Category(_, list) => in_category(list, name, args.arg(1)),
            };
            hit.then_some(match e {
                Entry::Words(s, _) | Entry::Category(s, _) => s.as_str(),
            })
        })
    }
}

fn in_category(list: &[&str], name: &[u8], sub: Option<&[u8]>) -> bool {
    // Hot: every command of every session with a category rule. Compares
    // in place, no splitting.
    list.iter().any(|entry| {
        let e = entry.as_bytes();
        let Some(head) = e.get(..name.len()) else {
            return false;
        };
        if !head.eq_ignore_ascii_case(name) {
            return false;
        }
        match &e[name.len()..] {
            [] => true,
            [b'|', subcommand @ ..] => sub.is_some_and(|s| subcommand.eq_ignore_ascii_case(s)),
            _ => false,
        }
    })
}

/// The `http` criteria of one rule.
#[derive(Debug, Clone, Default)]
pub struct HttpRule {
    methods: Option<Vec<String>>,
    paths: Option<Vec<String>>,
    namespaces: Option<Vec<String>>,
}

impl HttpRule {
    pub fn from_config(m: &HttpMatch) -> HttpRule {
        HttpRule {
            methods: m.methods.clone(),
            paths: m.paths.clone(),
            namespaces: m.namespaces.clone(),
        }
    }

    /// Why the request matches (for the audit trail), or None.
    pub fn matches(&self, method: &str, path: &str, namespace: Option<&str>) -> Option<String> {
        let method_ok = self.methods.as_ref().is_none_or(|ms| {
            ms.iter()
                .any(|m| m == "*" || m.eq_ignore_ascii_case(method))
        });
        let path_hit = match &self.paths {
            None => Some(None),
            Some(ps) => ps
                .iter()
                .find(|p| glob_match(p.as_bytes(), path.as_bytes()))
                .map(Some),
        };
        let ns = namespace.unwrap_or("");
        let ns_ok = self.namespaces.as_ref().is_none_or(|ns_globs| {
            ns_globs
                .iter()
                .any(|g| glob_match(g.as_bytes(), ns.as_bytes()))
        });
        match (method_ok, path_hit, ns_ok) {
            (true, Some(p), true) => Some(match p {
                Some(p) => format!("{method} {path} matches {p}"),
                None => format!("{method} {path}"),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(commands: &[&str]) -> RedisRule {
        RedisRule::from_config(&RedisMatch {
            commands: Some(commands.iter().map(|c| c.to_string()).collect()),
        })
    }

    fn m<'a>(r: &'a RedisRule, args: &[&str]) -> Option<&'a str> {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        r.matches(&args[..])
    }

    #[test]
    fn words_match_subcommands_case_insensitively() {
        let r = redis(&["CONFIG SET", "FLUSHALL", "EVAL*", "CLIENT REPLY OFF|SKIP"]);
        assert_eq!(m(&r, &["config", "set", "dir", "/tmp"]), Some("CONFIG SET"));
        assert_eq!(m(&r, &["CoNfIg", "SeT"]), Some("CONFIG SET"));
        assert_eq!(m(&r, &["config", "get", "dir"]), None);
        assert_eq!(m(&r, &["config"]), None);
        assert_eq!(m(&r, &["flushall", "async"]), Some("FLUSHALL"));
        assert_eq!(m(&r, &["evalsha_ro", "abc", "0"]), Some("EVAL*"));
        assert_eq!(
            m(&r, &["client", "reply", "off"]),
            Some("CLIENT REPLY OFF|SKIP")
        );
        assert_eq!(
            m(&r, &["client", "reply", "Skip"]),
            Some("CLIENT REPLY OFF|SKIP")
        );
        assert_eq!(m(&r, &["client", "reply", "on"]), None);
        assert_eq!(m(&r, &["get", "k"]), None);
        assert_eq!(m(&r, &[]), None);
        // A long argument is compared in full, not truncated.
        let long = "x".repeat(200);
        assert_eq!(
            m(&redis(&["SET K X*"]), &["set", "k", &long]),
            Some("SET K X*")
        );
        assert_eq!(m(&redis(&["SET K Y*"]), &["set", "k", &long]), None);
    }

    #[test]
    fn categories_match_commands_and_container_subcommands() {
        let r = redis(&["@dangerous", "@scripting"]);
        for c in [
            &["FLUSHALL"][..],
            &["flushdb", "async"],
            &["config", "set", "dir", "/"],
            &["CONFIG", "GET", "*"],
            &["debug", "sleep", "0"],
            &["keys", "*"],
            &["monitor"],
            &["sort", "l"],
            &["acl", "setuser", "x"],
            &["module", "load", "/x.so"],
            &["eval", "return 1", "0"],
            &["function", "load", "..."],
            &["script", "flush"],
            &["fcall_ro", "f", "0"],
        ] {
            assert!(m(&r, c).is_some(), "{c:?} should be in a category");
        }
        for c in [
            &["get", "k"][..],
            &["client", "setname", "x"],
            &["client", "reply", "off"],
            &["config"],
            &["hgetall", "h"],
            &["dump", "k"],
        ] {
            assert_eq!(m(&r, c), None, "{c:?}");
        }
        assert!(category("DANGEROUS").is_some());
        assert!(category("nosuch").is_none());
    }

    fn http(methods: Option<&[&str]>, paths: Option<&[&str]>, ns: Option<&[&str]>) -> HttpRule {
        let v = |x: Option<&[&str]>| x.map(|x| x.iter().map(|s| s.to_string()).collect());
        HttpRule::from_config(&HttpMatch {
            methods: v(methods),
            paths: v(paths),
            namespaces: v(ns),
        })
    }

    #[test]
    fn http_rules_need_every_present_field() {
        let r = http(Some(&["DELETE"]), Some(&["/v1/sys/*"]), None);
        assert!(r.matches("DELETE", "/v1/sys/mounts/kv", None).is_some());
        assert!(r.matches("delete", "/v1/sys/mounts/kv", None).is_some());
        assert!(r.matches("GET", "/v1/sys/mounts/kv", None).is_none());
        assert!(r.matches("DELETE", "/v1/secret/data/x", None).is_none());
        let any = http(None, Some(&["/v1/sys/*"]), None);
        assert!(any.matches("PUT", "/v1/sys/seal", None).is_some());
        let star = http(Some(&["*"]), None, None);
        assert!(star.matches("PATCH", "/", None).is_some());
        let ns = http(None, None, Some(&["team-*"]));
        assert!(ns.matches("GET", "/v1/x", Some("team-a")).is_some());
        assert!(ns.matches("GET", "/v1/x", Some("other")).is_none());
        assert!(ns.matches("GET", "/v1/x", None).is_none());
        let root = http(None, None, Some(&[""]));
        assert!(root.matches("GET", "/v1/x", None).is_some());
    }
}
