//! Masking for one Redis store: which commands may touch keys whose values
//! are masked (`[[mask]] keys`), where those values sit in each reply (a
//! [`Plan`]), and the rewriting of replies (key masks, then value detectors
//! over every string).
//!
//! Key patterns are globs matched case-sensitively, as Redis keys are.
//! A command that touches a masked key is allowed only when its reply
//! carries no value of that key ([`SAFE`]) or the proxy knows where the
//! values are in the reply and masks them ([`Command`]s with a plan). Every
//! other command touching a masked key is denied (fail closed): DUMP, COPY,
//! RENAME, MOVE, the `*STORE` commands, GETRANGE, BITFIELD and so on could
//! read or move the value where the proxy cannot see it. So is any command
//! whose keys the proxy cannot determine while the store has key masks
//! (module commands, scripts, SORT ... BY/GET patterns).

use bytes::Bytes;

use super::codec::{Command, Keys, Value};
use crate::audit::hostkey::HostKey;
use crate::config::{MaskConfig, MaskStrategy};
use crate::mask::{self, sections_for, Masked, StoreDetectors};
use crate::policy::sql::glob_match;

/// Where the values of masked keys are in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Plan {
    /// No key-masked value: detectors only.
    #[default]
    None,
    /// Every string in the reply is a value of the masked key (GET, LRANGE,
    /// SMEMBERS, HVALS, ...).
    All(MaskStrategy),
    /// Element `i` of the top-level array is masked with `[i]` (MGET, HMGET
    /// with one key, BLPOP's `[key, value]`, ...).
    Elements(Vec<Option<MaskStrategy>>),
    /// Field-value pairs, values masked: HGETALL, HRANDFIELD WITHVALUES,
    /// as a RESP3 map, a flat RESP2 array or an array of pairs.
    PairValues(MaskStrategy),
    /// Member-score pairs, members masked: ZRANGE WITHSCORES, ZPOPMIN.
    PairKeys(MaskStrategy),
    /// Stream entries `[id, [field, value, ...]]`, values masked (XRANGE).
    Entries(MaskStrategy),
    /// XREAD / XREADGROUP: `[[key, entries], ...]` or a map key -> entries;
    /// each stream's entries masked when its key is.
    Streams,
    /// A SCAN-family `[cursor, elements]` reply; the plan applies to the
    /// elements.
    Cursor(Box<Plan>),
    /// The reply of EXEC: one plan per queued command.
    Exec(Vec<Plan>),
}

/// Commands that may touch a masked key: their replies carry no value of
/// it (lengths, counts, TTLs, types, field names, OK), or they only write.
/// INCR and friends are not here: their reply is the new value.
pub const SAFE: &[&str] = &[
    "APPEND",
    "DEL",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "HDEL",
    "HEXISTS",
    "HKEYS",
    "HLEN",
    "HMSET",
    "HSET",
    "HSETNX",
    "HSTRLEN",
    "LLEN",
    "LPUSH",
    "LPUSHX",
    "LREM",
    "LSET",
    "LTRIM",
    "LINSERT",
    "MSET",
    "MSETNX",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PSETEX",
    "PTTL",
    "RPUSH",
    "RPUSHX",
    "SADD",
    "SCARD",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "SREM",
    "STRLEN",
    "TOUCH",
    "TTL",
    "TYPE",
    "UNLINK",
    "WATCH",
    "XADD",
    "XDEL",
    "XLEN",
    "XTRIM",
    "ZADD",
    "ZCARD",
    "ZCOUNT",
    "ZREM",
    "ZREMRANGEBYLEX",
    "ZREMRANGEBYRANK",
    "ZREMRANGEBYSCORE",
    "ZLEXCOUNT",
];

/// The masks of one store, compiled.
pub struct KeyMasks {
    /// `[[mask]] keys`: (mask name, globs, strategy), in file order.
    keys: Vec<(String, Vec<String>, MaskStrategy)>,
    /// `[[mask]] detectors`.
    detectors: StoreDetectors,
    pub key: HostKey,
}

/// Why a command may not run against masked keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskDenial {
    /// The `[[mask]]` section at stake.
    pub mask: String,
    pub message: String,
}

impl KeyMasks {
    /// The `[[mask]]` sections that apply to `store`.
    pub fn new(store: &str, masks: &[MaskConfig], key: HostKey) -> anyhow::Result<KeyMasks> {
        let keys = sections_for(store, masks)
            .filter_map(|m| {
                m.keys
                    .as_ref()
                    .filter(|k| !k.is_empty())
                    .map(|k| (m.name.clone(), k.clone(), m.strategy))
            })
            .collect();
        Ok(KeyMasks {
            keys,
            detectors: StoreDetectors::new(store, masks)?,
            key,
        })
    }

    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    pub fn has_detectors(&self) -> bool {
        !self.detectors.is_empty()
    }

    /// The mask section and strategy for `key`, if its value is masked.
    pub fn for_key(&self, key: &[u8]) -> Option<(&str, MaskStrategy)> {
        self.keys.iter().find_map(|(name, globs, strategy)| {
            globs
                .iter()
                .any(|g| glob_match(g.as_bytes(), key))
                .then_some((name.as_str(), *strategy))
        })
    }

    fn strategy(&self, key: Option<&Bytes>) -> Option<MaskStrategy> {
        key.and_then(|k| self.for_key(k)).map(|(_, s)| s)
    }

    /// Where the masked values will be in the reply to `cmd` (whose keys
    /// are at `keys`), or why the command may not run. Commands touching no
    /// masked key get [`Plan::None`].
    pub fn plan(&self, cmd: &Command, keys: &Keys) -> Result<Plan, MaskDenial> {
        if !self.has_keys() {
            return Ok(Plan::None);
        }
        let positions = match keys {
            Keys::None => return Ok(Plan::None),
            Keys::At(p) => p,
            Keys::Unknown => {
                return Err(MaskDenial {
                    mask: self.keys[0].0.clone(),
                    message: format!(
                        "the interceptor cannot tell which keys {} reads, and values of some keys are masked (mask \"{}\"); use commands that name their keys",
                        cmd.full_name(),
                        self.keys[0].0
                    ),
                })
            }
        };
        // Scripts and functions can read keys they do not declare.
        if is_script(cmd) {
            return Err(MaskDenial {
                mask: self.keys[0].0.clone(),
                message: format!(
                    "{} runs code that may read any key, and values of some keys are masked (mask \"{}\")",
                    cmd.full_name(),
                    self.keys[0].0
                ),
            });
        }
        let mut first_masked: Option<(usize, &str, MaskStrategy)> = None;
        for &i in positions {
            if let Some((name, s)) = cmd.args.get(i).and_then(|k| self.for_key(k)) {
                first_masked = Some((i, name, s));
                break;
            }
        }
        let Some((at, mask_name, strategy)) = first_masked else {
            return Ok(Plan::None);
        };
        let n = cmd.args.len();
        // An option word after the key and the first argument (for SET, the
        // value, which may itself be "GET").
        let has = |word: &str| (3..n).any(|i| cmd.arg_is(i, word));
        let mut name_buf = [0u8; 24];
        let name = upper(cmd.name_bytes(), &mut name_buf);
        let plan = match name {
            "GET" | "GETDEL" | "GETEX" | "GETSET" | "LINDEX" | "LPOP" | "RPOP" | "SPOP"
            | "SRANDMEMBER" | "SMEMBERS" | "LRANGE" | "HGET" | "HMGET" | "HVALS" | "SINTER"
            | "SUNION" | "SDIFF" => Some(Plan::All(strategy)),
            "SET" if has("GET") => Some(Plan::All(strategy)),
            "MGET" => Some(Plan::Elements(
                (1..n).map(|i| self.strategy(cmd.args.get(i))).collect(),
            )),
            "BLPOP" | "BRPOP" => Some(Plan::Elements(vec![None, Some(strategy)])),
            "LMPOP" | "BLMPOP" => Some(Plan::Elements(vec![None, Some(strategy)])),
            "HGETALL" => Some(Plan::PairValues(strategy)),
            "HRANDFIELD" if has("WITHVALUES") => Some(Plan::PairValues(strategy)),
            "HRANDFIELD" => Some(Plan::None),
            "ZRANGE" | "ZRANGEBYSCORE" | "ZREVRANGE" | "ZRANGEBYLEX" | "ZREVRANGEBYLEX"
            | "ZREVRANGEBYSCORE" | "ZRANDMEMBER"
                if !has("STORE") =>
            {
                Some(if has("WITHSCORES") {
                    Plan::PairKeys(strategy)
                } else {
                    Plan::All(strategy)
                })
            }
            "ZPOPMIN" | "ZPOPMAX" => Some(Plan::PairKeys(strategy)),
            "BZPOPMIN" | "BZPOPMAX" => Some(Plan::Elements(vec![None, Some(strategy), None])),
            "XRANGE" | "XREVRANGE" => Some(Plan::Entries(strategy)),
            "XREAD" | "XREADGROUP" => Some(Plan::Streams),
            "HSCAN" => Some(Plan::Cursor(Box::new(Plan::PairValues(strategy)))),
            "SSCAN" => Some(Plan::Cursor(Box::new(Plan::All(strategy)))),
            "ZSCAN" => Some(Plan::Cursor(Box::new(Plan::PairKeys(strategy)))),
            s if SAFE.contains(&s) => Some(Plan::None),
            // SET without GET writes only.
            "SET" => Some(Plan::None),
            _ => None,
        };
        // A safe command touching one masked key must not read another one
        // (MGET handles each key; the rest name one key or several of the
        // same kind).
        plan.ok_or_else(|| MaskDenial {
            mask: mask_name.to_string(),
            message: format!(
                "{} on key \"{}\" could reveal or move a masked value (mask \"{mask_name}\"); read it with a command whose reply the interceptor masks (GET, HGETALL, ...)",
                cmd.full_name(),
                String::from_utf8_lossy(&cmd.args[at]).escape_debug()
            ),
        })
    }

    /// Masks `reply` under `plan`, then runs the detectors over every
    /// string left. Returns how many values were masked (0: the reply is
    /// unchanged and may be forwarded as it came).
    pub fn apply(&self, plan: &Plan, reply: &mut Value) -> u64 {
        let mut n = self.apply_plan(plan, reply);
        if self.has_detectors() {
            n += self.scan_value(reply);
        }
        n
    }

    fn apply_plan(&self, plan: &Plan, v: &mut Value) -> u64 {
        match plan {
            Plan::None => 0,
            Plan::All(s) => self.mask_all(*s, v),
            Plan::Elements(strategies) => match items_mut(v) {
                Some(items) => items
                    .iter_mut()
                    .zip(strategies)
                    .map(|(item, s)| s.map_or(0, |s| self.mask_all(s, item)))
                    .sum(),
                // A single element (LMPOP answers null, BLPOP times out).
                None => 0,
            },
            Plan::PairValues(s) => self.mask_pairs(*s, v, false),
            Plan::PairKeys(s) => self.mask_pairs(*s, v, true),
            Plan::Entries(s) => match items_mut(v) {
                Some(entries) => entries.iter_mut().map(|e| self.mask_entry(*s, e)).sum(),
                None => 0,
            },
            Plan::Streams => self.mask_streams(v),
            Plan::Cursor(inner) => match items_mut(v) {
                Some(items) if items.len() == 2 => self.apply_plan(inner, &mut items[1]),
                _ => 0,
            },
            Plan::Exec(plans) => match items_mut(v) {
                Some(items) => items
                    .iter_mut()
                    .zip(plans)
                    .map(|(item, p)| self.apply_plan(p, item))
                    .sum(),
                None => 0,
            },
        }
    }

    /// Every string in `v` (errors excepted: they are the server's words).
    fn mask_all(&self, s: MaskStrategy, v: &mut Value) -> u64 {
        match v {
            Value::Bulk(Some(b)) => {
                *v = masked_bulk(mask::apply(s, b, &self.key));
                1
            }
            Value::Verbatim(b) => {
                let body = b.get(4..).unwrap_or_default();
                let m = mask::apply(s, body, &self.key).into_bytes_or_redacted();
                let mut out = b.get(..4).unwrap_or(b"txt:").to_vec();
                out.extend_from_slice(&m);
                *v = Value::Verbatim(Bytes::from(out));
                1
            }
            Value::Array(Some(items)) | Value::Set(items) | Value::Push(items) => {
                items.iter_mut().map(|i| self.mask_all(s, i)).sum()
            }
            Value::Map(pairs) => pairs
                .iter_mut()
                .map(|(k, v)| self.mask_all(s, k) + self.mask_all(s, v))
                .sum(),
            _ => 0,
        }
    }

    /// Pairs as a RESP3 map, a flat array `[a, b, a, b]` or an array of
    /// two-element arrays; masks the first (`keys`) or second of each pair.
    fn mask_pairs(&self, s: MaskStrategy, v: &mut Value, keys: bool) -> u64 {
        match v {
            Value::Map(pairs) => pairs
                .iter_mut()
                .map(|(k, val)| self.mask_all(s, if keys { k } else { val }))
                .sum(),
            Value::Array(Some(items)) | Value::Set(items) => {
                let nested = items
                    .iter()
                    .all(|i| matches!(i, Value::Array(Some(p)) if p.len() == 2));
                if nested && !items.is_empty() {
                    items
                        .iter_mut()
                        .map(|pair| match items_mut(pair) {
                            Some(p) => self.mask_all(s, &mut p[usize::from(!keys)]),
                            None => 0,
                        })
                        .sum()
                } else {
                    let skip = usize::from(!keys);
                    items
                        .iter_mut()
                        .skip(skip)
                        .step_by(2)
                        .map(|i| self.mask_all(s, i))
                        .sum()
                }
            }
            _ => 0,
        }
    }

    /// One stream entry `[id, [field, value, ...]]`.
    fn mask_entry(&self, s: MaskStrategy, e: &mut Value) -> u64 {
        match items_mut(e) {
            Some(parts) if parts.len() == 2 => self.mask_pairs(s, &mut parts[1], false),
            _ => 0,
        }
    }

    fn mask_streams(&self, v: &mut Value) -> u64 {
        let mut n = 0;
        match v {
            Value::Map(pairs) => {
                for (k, entries) in pairs.iter_mut() {
                    if let Some(s) = self.stream_strategy(k) {
                        n += self.entries(s, entries);
                    }
                }
            }
            Value::Array(Some(streams)) => {
                for stream in streams.iter_mut() {
                    if let Some(parts) = items_mut(stream) {
                        if parts.len() == 2 {
                            if let Some(s) = self.stream_strategy(&parts[0]) {
                                n += self.entries(s, &mut parts[1]);
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        n
    }

    fn entries(&self, s: MaskStrategy, v: &mut Value) -> u64 {
        match items_mut(v) {
            Some(entries) => entries.iter_mut().map(|e| self.mask_entry(s, e)).sum(),
            None => 0,
        }
    }

    fn stream_strategy(&self, key: &Value) -> Option<MaskStrategy> {
        match key {
            Value::Bulk(Some(b)) | Value::Simple(b) => self.strategy(Some(b)),
            // A key the proxy cannot read: fail closed.
            _ => self.keys.first().map(|k| k.2),
        }
    }

    /// The detectors over every string in `v`; the count of credentials
    /// replaced.
    pub fn scan_value(&self, v: &mut Value) -> u64 {
        match v {
            Value::Bulk(Some(b)) => match self.scan(b) {
                Some((m, n)) => {
                    *v = masked_bulk(m);
                    n
                }
                None => 0,
            },
            Value::Simple(b) | Value::Error(b) | Value::BulkError(b) => match self.scan(b) {
                Some((m, n)) => {
                    *b = Bytes::from(m.into_bytes_or_redacted());
                    n
                }
                None => 0,
            },
            Value::Verbatim(b) => {
                let Some(body) = b.get(4..) else { return 0 };
                match self.scan(body) {
                    Some((m, n)) => {
                        let mut out = b[..4].to_vec();
                        out.extend_from_slice(&m.into_bytes_or_redacted());
                        *b = Bytes::from(out);
                        n
                    }
                    None => 0,
                }
            }
            Value::Array(Some(items)) | Value::Set(items) | Value::Push(items) => {
                items.iter_mut().map(|i| self.scan_value(i)).sum()
            }
            Value::Map(pairs) | Value::Attribute(pairs) => pairs
                .iter_mut()
                .map(|(k, v)| self.scan_value(k) + self.scan_value(v))
                .sum(),
            _ => 0,
        }
    }

    /// Runs the value detectors over text; `None` when nothing was found.
    fn scan(&self, value: &[u8]) -> Option<(Masked, u64)> {
        self.detectors
            .scan(std::str::from_utf8(value).ok()?, &self.key)
    }
}

/// A masked string as a bulk string (`null` becomes the null bulk string).
fn masked_bulk(m: Masked) -> Value {
    match m {
        Masked::Null => Value::Bulk(None),
        Masked::Value(b) => Value::Bulk(Some(Bytes::from(b))),
    }
}

fn items_mut(v: &mut Value) -> Option<&mut Vec<Value>> {
    match v {
        Value::Array(Some(items)) | Value::Set(items) | Value::Push(items) => Some(items),
        _ => None,
    }
}

fn upper<'a>(name: &[u8], buf: &'a mut [u8; 24]) -> &'a str {
    if name.len() > buf.len() {
        return "";
    }
    for (d, s) in buf.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    std::str::from_utf8(&buf[..name.len()]).unwrap_or("")
}

/// Commands that run server-side code.
pub fn is_script(cmd: &Command) -> bool {
    [
        "EVAL",
        "EVAL_RO",
        "EVALSHA",
        "EVALSHA_RO",
        "FCALL",
        "FCALL_RO",
    ]
    .iter()
    .any(|n| cmd.is(n))
}

/// The number of elements of an aggregate reply (the audit `rows`).
pub fn rows(v: &Value) -> Option<u64> {
    match v {
        Value::Array(Some(items)) | Value::Set(items) | Value::Push(items) => {
            Some(items.len() as u64)
        }
        Value::Map(pairs) => Some(pairs.len() as u64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::redis::codec::{decode, Limits};
    use bytes::BytesMut;

    fn cmd(words: &[&str]) -> Command {
        Command {
            args: words
                .iter()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect(),
        }
    }

    fn masks() -> KeyMasks {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = HostKey::load_or_create(dir.path()).expect("host key");
        let m = |name: &str, keys: Option<&[&str]>, detectors: Option<&[&str]>| MaskConfig {
            name: name.into(),
            stores: None,
            columns: None,
            keys: keys.map(|k| k.iter().map(|s| s.to_string()).collect()),
            json: None,
            detectors: detectors.map(|k| k.iter().map(|s| s.to_string()).collect()),
            strategy: MaskStrategy::Redact,
        };
        KeyMasks::new(
            "redis",
            &[
                m("secret-keys", Some(&["secret:*", "Token"]), None),
                m("leaks", None, Some(&["aws_access_key_id"])),
            ],
            key,
        )
        .expect("masks")
    }

    fn plan(m: &KeyMasks, words: &[&str]) -> Result<Plan, MaskDenial> {
        let c = cmd(words);
        m.plan(&c, &c.key_positions())
    }

    fn reply(wire: &str) -> Value {
        let mut buf = BytesMut::from(wire.as_bytes());
        decode(&mut buf, &Limits::default())
            .expect("valid")
            .expect("complete")
    }

    fn masked(m: &KeyMasks, words: &[&str], wire: &str) -> (String, u64) {
        let p = plan(m, words).expect("allowed");
        let mut v = reply(wire);
        let n = m.apply(&p, &mut v);
        (String::from_utf8_lossy(&v.to_bytes()).into_owned(), n)
    }

    const R: &str = "********";

    #[test]
    fn key_globs_are_case_sensitive() {
        let m = masks();
        assert!(m.for_key(b"secret:db").is_some());
        assert!(m.for_key(b"SECRET:db").is_none());
        assert!(m.for_key(b"Token").is_some());
        assert!(m.for_key(b"token").is_none());
        assert_eq!(plan(&m, &["GET", "public"]), Ok(Plan::None));
        assert_eq!(plan(&m, &["PING"]), Ok(Plan::None));
    }

    #[test]
    fn values_are_masked_where_each_reply_carries_them() {
        let m = masks();
        let (o, n) = masked(&m, &["get", "secret:a"], "$2\r\npw\r\n");
        assert_eq!((o, n), (format!("$8\r\n{R}\r\n"), 1));
        // A null stays null (nothing to hide).
        assert_eq!(masked(&m, &["GET", "secret:a"], "$-1\r\n").1, 0);
        let (o, n) = masked(
            &m,
            &["MGET", "a", "secret:b", "c"],
            "*3\r\n$1\r\nx\r\n$1\r\ny\r\n$-1\r\n",
        );
        assert_eq!(n, 1);
        assert_eq!(o, format!("*3\r\n$1\r\nx\r\n$8\r\n{R}\r\n$-1\r\n"));
        // HGETALL: RESP2 flat array and RESP3 map; field names kept.
        let (o, n) = masked(
            &m,
            &["HGETALL", "secret:h"],
            "*4\r\n$1\r\nf\r\n$1\r\nv\r\n$1\r\ng\r\n$1\r\nw\r\n",
        );
        assert_eq!(n, 2);
        assert_eq!(
            o,
            format!("*4\r\n$1\r\nf\r\n$8\r\n{R}\r\n$1\r\ng\r\n$8\r\n{R}\r\n")
        );
        let (o, n) = masked(&m, &["HGETALL", "secret:h"], "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
        assert_eq!((o, n), (format!("%1\r\n$1\r\nf\r\n$8\r\n{R}\r\n"), 1));
        // ZRANGE WITHSCORES: members masked, scores kept (RESP2 and RESP3).
        let (o, _) = masked(
            &m,
            &["ZRANGE", "secret:z", "0", "-1", "WITHSCORES"],
            "*2\r\n$1\r\nm\r\n$1\r\n1\r\n",
        );
        assert_eq!(o, format!("*2\r\n$8\r\n{R}\r\n$1\r\n1\r\n"));
        let (o, _) = masked(
            &m,
            &["ZRANGE", "secret:z", "0", "-1", "WITHSCORES"],
            "*1\r\n*2\r\n$1\r\nm\r\n,1\r\n",
        );
        assert_eq!(o, format!("*1\r\n*2\r\n$8\r\n{R}\r\n,1\r\n"));
        // XRANGE: field values masked.
        let (o, n) = masked(
            &m,
            &["XRANGE", "secret:s", "-", "+"],
            "*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
        );
        assert_eq!(n, 1);
        assert_eq!(
            o,
            format!("*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$8\r\n{R}\r\n")
        );
        // XREAD: only the masked stream.
        let (o, n) = masked(
            &m,
            &["XREAD", "STREAMS", "pub", "secret:s", "0", "0"],
            "*2\r\n*2\r\n$3\r\npub\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n\
             *2\r\n$8\r\nsecret:s\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
        );
        assert_eq!(n, 1);
        assert!(o.contains("$1\r\nv\r\n") && o.contains(R), "{o}");
        // HSCAN: cursor kept, values masked.
        let (o, n) = masked(
            &m,
            &["HSCAN", "secret:h", "0"],
            "*2\r\n$1\r\n0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n",
        );
        assert_eq!(n, 1);
        assert_eq!(
            o,
            format!("*2\r\n$1\r\n0\r\n*2\r\n$1\r\nf\r\n$8\r\n{R}\r\n")
        );
        // SET ... GET returns the old value; SET alone writes only.
        assert_eq!(
            plan(&m, &["SET", "secret:a", "v", "GET"]),
            Ok(Plan::All(MaskStrategy::Redact))
        );
        assert_eq!(plan(&m, &["SET", "secret:a", "GET"]), Ok(Plan::None));
        assert_eq!(plan(&m, &["HKEYS", "secret:h"]), Ok(Plan::None));
        // BLPOP: the key name is kept, the value masked.
        let (o, _) = masked(
            &m,
            &["BLPOP", "secret:l", "0"],
            "*2\r\n$8\r\nsecret:l\r\n$1\r\nv\r\n",
        );
        assert_eq!(o, format!("*2\r\n$8\r\nsecret:l\r\n$8\r\n{R}\r\n"));
    }

    #[test]
    fn exec_replies_are_masked_per_queued_command() {
        let m = masks();
        let p = Plan::Exec(vec![
            Plan::None,
            plan(&m, &["GET", "secret:a"]).expect("plan"),
        ]);
        let mut v = reply("*2\r\n$1\r\nx\r\n$2\r\npw\r\n");
        assert_eq!(m.apply(&p, &mut v), 1);
        assert_eq!(
            String::from_utf8_lossy(&v.to_bytes()),
            format!("*2\r\n$1\r\nx\r\n$8\r\n{R}\r\n")
        );
    }

    #[test]
    fn everything_else_touching_a_masked_key_is_denied() {
        let m = masks();
        for words in [
            &["DUMP", "secret:a"][..],
            &["COPY", "secret:a", "b"],
            &["RENAME", "secret:a", "b"],
            &["RENAME", "a", "secret:b"],
            &["RENAMENX", "secret:a", "b"],
            &["MOVE", "secret:a", "1"],
            &["SMOVE", "secret:a", "b", "m"],
            &["LMOVE", "secret:a", "b", "LEFT", "LEFT"],
            &["SUNIONSTORE", "d", "secret:a"],
            &["ZRANGESTORE", "d", "secret:a", "0", "-1"],
            &["GETRANGE", "secret:a", "0", "-1"],
            &["SUBSTR", "secret:a", "0", "-1"],
            &["LCS", "secret:a", "b"],
            &["GETBIT", "secret:a", "0"],
            &["BITCOUNT", "secret:a"],
            &["BITFIELD", "secret:a", "GET", "u8", "0"],
            &["OBJECT", "ENCODING", "secret:a"],
            &["INCR", "secret:a"],
            &["SORT", "secret:a"],
            &["XINFO", "STREAM", "secret:s", "FULL"],
            &["XCLAIM", "secret:s", "g", "c", "0", "1-0"],
        ] {
            let d = plan(&m, words).expect_err(&format!("{words:?} must be denied"));
            assert_eq!(d.mask, "secret-keys");
            assert!(d.message.contains("secret:"), "{}", d.message);
        }
        // Keys the proxy cannot determine, and scripts.
        assert!(plan(&m, &["JSON.GET", "anything"]).is_err());
        assert!(plan(&m, &["SORT", "list", "BY", "w_*"]).is_err());
        assert!(plan(&m, &["EVAL", "return 1", "0"]).is_err());
        assert!(plan(&m, &["FCALL", "f", "1", "public"]).is_err());
        // The same commands on unmasked keys are fine.
        assert_eq!(plan(&m, &["DUMP", "public"]), Ok(Plan::None));
        assert_eq!(plan(&m, &["RENAME", "a", "b"]), Ok(Plan::None));
        // Writes and metadata are allowed.
        for words in [
            &["SET", "secret:a", "v"][..],
            &["DEL", "secret:a"],
            &["EXPIRE", "secret:a", "10"],
            &["TTL", "secret:a"],
            &["HSET", "secret:h", "f", "v"],
            &["EXISTS", "secret:a", "b"],
        ] {
            assert_eq!(plan(&m, words), Ok(Plan::None), "{words:?}");
        }
    }

    #[test]
    fn without_key_masks_nothing_is_denied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = HostKey::load_or_create(dir.path()).expect("host key");
        let m = KeyMasks::new("redis", &[], key).expect("masks");
        assert_eq!(plan(&m, &["JSON.GET", "x"]), Ok(Plan::None));
        assert_eq!(plan(&m, &["DUMP", "secret:a"]), Ok(Plan::None));
    }

    #[test]
    fn detectors_scan_every_string() {
        let m = masks();
        let aws = "AKIAABCDEFGHIJKLMNOP";
        let (o, n) = masked(&m, &["GET", "public"], &format!("$20\r\n{aws}\r\n"));
        assert_eq!(n, 1);
        assert!(!o.contains(aws), "{o}");
        // Inside text, in errors, map keys, pushes and verbatim strings.
        for wire in [
            format!("+key {aws} here\r\n"),
            format!("-ERR bad {aws}\r\n"),
            format!("%1\r\n$20\r\n{aws}\r\n:1\r\n"),
            format!(">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$20\r\n{aws}\r\n"),
            format!("=24\r\ntxt:{aws}\r\n"),
        ] {
            let mut v = reply(&wire);
            assert_eq!(m.apply(&Plan::None, &mut v), 1, "{wire:?}");
            let o = String::from_utf8_lossy(&v.to_bytes()).into_owned();
            assert!(!o.contains(aws), "{o}");
            // Still one valid value.
            let mut buf = BytesMut::from(o.as_bytes());
            assert!(decode(&mut buf, &Limits::default())
                .expect("valid")
                .is_some());
            assert!(buf.is_empty());
        }
        let mut v = reply("$5\r\nhello\r\n");
        assert_eq!(m.apply(&Plan::None, &mut v), 0);
    }

    #[test]
    fn rows_count_aggregates() {
        assert_eq!(rows(&reply("*2\r\n:1\r\n:2\r\n")), Some(2));
        assert_eq!(rows(&reply("%1\r\n:1\r\n:2\r\n")), Some(1));
        assert_eq!(rows(&reply("$1\r\nx\r\n")), None);
    }
}
