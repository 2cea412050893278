//! Masking of HTTP response bodies: JSON fields by path (`[[mask]] json`)
//! and credential detectors (`[[mask]] detectors`) in every JSON string, or
//! over the whole text of a non-JSON text body.
//!
//! A JSON path is a list of dot-separated segments, each a glob (`*` any
//! run of characters, via the policy's glob matcher): `data.data.*` is
//! every field of a KV v2 secret, `auth.client_token` one field. A segment
//! also matches array elements by index (`*` any element, `0` the first),
//! so `data.keys.*` masks every element of `data.keys`. What a path selects
//! is masked whole: an object or array under it is masked leaf by leaf,
//! numbers and booleans become the strategy's output (a string) or null,
//! nulls stay null. The first mask section whose path matches decides the
//! strategy.

pub use serde_json::Value;

/// A JSON body, parsed (None when it is not JSON).
pub fn parse(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// A JSON value serialized compactly.
pub fn to_bytes(v: &Value) -> Vec<u8> {
    // Serializing a Value to memory cannot fail (its map keys are strings).
    serde_json::to_vec(v).unwrap_or_default()
}

use crate::{
    audit::hostkey::HostKey,
    config::{MaskConfig, MaskStrategy},
    mask::{apply, sections_for, Detectors, Masked, StoreDetectors, REDACTED},
    policy::sql::glob_match,
};

/// The masks of one `http` store, compiled once and shared by its sessions.
#[derive(Debug, Clone, Default)]
pub struct BodyMasks {
    /// One entry per `json` path, in file order.
    paths: Vec<(Vec<String>, MaskStrategy)>,
    detectors: StoreDetectors,
}

impl BodyMasks {
    /// The `[[mask]]` sections that apply to `store` (`stores` omitted: all).
    pub fn new(store: &str, masks: &[MaskConfig]) -> anyhow::Result<BodyMasks> {
        let paths = sections_for(store, masks)
            .flat_map(|m| {
                m.json
                    .iter()
                    .flatten()
                    .map(|p| (p.split('.').map(str::to_string).collect(), m.strategy))
            })
            .collect();
        Ok(BodyMasks {
            paths,
            detectors: StoreDetectors::new(store, masks)?,
        })
    }

    /// Compiles bare JSON paths with one strategy (tests, fuzzing).
    pub fn from_paths(
        paths: &[&str],
        strategy: MaskStrategy,
        detectors: Option<Detectors>,
    ) -> Self {
        BodyMasks {
            paths: paths
                .iter()
                .map(|p| (p.split('.').map(str::to_string).collect(), strategy))
                .collect(),
            detectors: detectors
                .map(|d| StoreDetectors::single(d, strategy))
                .unwrap_or_default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty() && self.detectors.is_empty()
    }

    pub fn has_paths(&self) -> bool {
        !self.paths.is_empty()
    }

    pub fn has_detectors(&self) -> bool {
        !self.detectors.is_empty()
    }

    /// Masks `value` in place; returns how many values were masked.
    pub fn mask_json(&self, value: &mut Value, key: &HostKey) -> u64 {
        let states: Vec<(usize, usize)> = (0..self.paths.len()).map(|i| (i, 0)).collect();
        self.walk(value, &states, key)
    }

    /// `states`: (path index, segments matched so far) still alive here.
    fn walk(&self, value: &mut Value, states: &[(usize, usize)], key: &HostKey) -> u64 {
        match value {
            Value::Object(map) => {
                let mut n = 0;
                for (k, child) in map.iter_mut() {
                    n += self.child(child, k, states, key);
                }
                n
            }
            Value::Array(items) => {
                let mut n = 0;
                for (i, child) in items.iter_mut().enumerate() {
                    n += self.child(child, &i.to_string(), states, key);
                }
                n
            }
            Value::String(s) => self.detect(s, key).map_or(0, |(masked, hits)| {
                *value = masked;
                hits
            }),
            _ => 0,
        }
    }

    fn child(
        &self,
        child: &mut Value,
        name: &str,
        states: &[(usize, usize)],
        key: &HostKey,
    ) -> u64 {
        let mut next = Vec::new();
        for &(i, depth) in states {
            let (segs, strategy) = &self.paths[i];
            if !glob_match(segs[depth].as_bytes(), name.as_bytes()) {
                continue;
            }
            if depth + 1 == segs.len() {
                return mask_whole(child, *strategy, key);
            }
            next.push((i, depth + 1));
        }
        self.walk(child, &next, key)
    }

    /// Detector hits in one string: the masked value and the hit count.
    fn detect(&self, s: &str, key: &HostKey) -> Option<(Value, u64)> {
        let (m, n) = self.detectors.scan(s, key)?;
        Some(match m {
            Masked::Null => (Value::Null, n),
            Masked::Value(v) => (Value::String(String::from_utf8_lossy(&v).into_owned()), n),
        })
    }

    /// Detector hits over a whole text body: the new body and the count.
    pub fn mask_text(&self, text: &str, key: &HostKey) -> Option<(String, u64)> {
        let (m, n) = self.detectors.scan(text, key)?;
        Some(match m {
            Masked::Null => (REDACTED.to_string(), n),
            Masked::Value(v) => (String::from_utf8_lossy(&v).into_owned(), n),
        })
    }
}

/// Masks everything under `value` (leaf by leaf); returns the count.
fn mask_whole(value: &mut Value, strategy: MaskStrategy, key: &HostKey) -> u64 {
    let text = match value {
        Value::Null => return 0,
        Value::Object(map) => return map.values_mut().map(|v| mask_whole(v, strategy, key)).sum(),
        Value::Array(items) => return items.iter_mut().map(|v| mask_whole(v, strategy, key)).sum(),
        Value::String(s) => std::mem::take(s),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
    };
    *value = match apply(strategy, text.as_bytes(), key) {
        Masked::Null => Value::Null,
        Masked::Value(v) => Value::String(String::from_utf8_lossy(&v).into_owned()),
    };
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key() -> HostKey {
        let dir = tempfile::tempdir().expect("tempdir");
        HostKey::load_or_create(dir.path()).expect("host key")
    }

    fn masks(paths: &[&str]) -> BodyMasks {
        BodyMasks::from_paths(paths, MaskStrategy::Redact, None)
    }

    #[test]
    fn kv2_secret_fields_are_masked_and_metadata_kept() {
        let mut v = json!({
            "request_id": "abc",
            "data": {
                "data": {"password": "hunter2", "port": 5432, "nested": {"a": "b", "n": null}, "list": ["x", true]},
                "metadata": {"version": 3, "created_time": "2026-01-01T00:00:00Z"}
            },
            "wrap_info": null,
            "auth": null
        });
        let n = masks(&["data.data.*", "auth.client_token", "wrap_info.token"])
            .mask_json(&mut v, &key());
        assert_eq!(n, 5);
        assert_eq!(v["data"]["data"]["password"], REDACTED);
        assert_eq!(v["data"]["data"]["port"], REDACTED);
        assert_eq!(v["data"]["data"]["nested"]["a"], REDACTED);
        assert_eq!(v["data"]["data"]["nested"]["n"], Value::Null);
        assert_eq!(v["data"]["data"]["list"], json!([REDACTED, REDACTED]));
        assert_eq!(v["data"]["metadata"]["version"], 3);
        assert_eq!(v["request_id"], "abc");
        assert_eq!(v["wrap_info"], Value::Null);
    }

    #[test]
    fn tokens_and_array_elements_and_globs() {
        let mut v = json!({
            "auth": {"client_token": "s.secret", "accessor": "acc"},
            "wrap_info": {"token": "s.wrapped", "ttl": 60},
            "data": {"keys": ["a", "b"], "db_password": "p", "user": "u"}
        });
        let m = masks(&[
            "auth.client_token",
            "wrap_info.token",
            "data.keys.0",
            "data.*_password",
        ]);
        assert_eq!(m.mask_json(&mut v, &key()), 4);
        assert_eq!(v["auth"]["client_token"], REDACTED);
        assert_eq!(v["auth"]["accessor"], "acc");
        assert_eq!(v["wrap_info"]["token"], REDACTED);
        assert_eq!(v["wrap_info"]["ttl"], 60);
        assert_eq!(v["data"]["keys"], json!([REDACTED, "b"]));
        assert_eq!(v["data"]["db_password"], REDACTED);
        assert_eq!(v["data"]["user"], "u");
    }

    #[test]
    fn null_strategy_and_numbers() {
        let mut v = json!({"data": {"a": 1, "b": "x", "c": false}});
        let m = BodyMasks::from_paths(&["data.*"], MaskStrategy::Null, None);
        assert_eq!(m.mask_json(&mut v, &key()), 3);
        assert_eq!(v, json!({"data": {"a": null, "b": null, "c": null}}));
    }

    #[test]
    fn detectors_find_credentials_in_any_string_and_text() {
        let d = Detectors::new(&["aws_access_key_id".to_string()]).expect("detector");
        let m = BodyMasks::from_paths(&[], MaskStrategy::Redact, Some(d));
        let mut v = json!({"x": [{"note": "key AKIAIOSFODNN7EXAMPLE here"}], "y": "plain"});
        assert_eq!(m.mask_json(&mut v, &key()), 1);
        let note = v["x"][0]["note"].as_str().unwrap();
        assert!(!note.contains("AKIAIOSFODNN7EXAMPLE"), "{note}");
        assert_eq!(v["y"], "plain");
        let (text, n) = m
            .mask_text("id=AKIAIOSFODNN7EXAMPLE\n", &key())
            .expect("hit");
        assert_eq!(n, 1);
        assert!(!text.contains("AKIAIOSFODNN7EXAMPLE"));
        assert!(m.mask_text("nothing here", &key()).is_none());
    }
}
