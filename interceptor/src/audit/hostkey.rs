//! The per-host key under which values, tokens and passwords enter the audit
//! trail: only as HMAC-SHA256, so an investigator holding a secret can find
//! where it was used (`interceptor audit hash VALUE`) and nobody reading the
//! trail can recover it.

use std::{
    fs,
    io::{Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;

const KEY_FILE: &str = "host.key";
const KEY_LEN: usize = 32;

#[derive(Debug, Error)]
pub enum HostKeyError {
    #[error("cannot read the host key {path}: {source}; it is created by `interceptor run` in daemon.state_dir")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the host key {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("host key {path} is {len} bytes, expected {KEY_LEN}: it is damaged; restore it from backup (a new key makes old hashes unsearchable)")]
    Length { path: PathBuf, len: usize },
}

#[derive(Clone)]
pub struct HostKey([u8; KEY_LEN]);

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostKey(..)")
    }
}

impl HostKey {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(KEY_FILE)
    }

    /// Loads the key, creating it (mode 0600, from the kernel's CSPRNG) on
    /// first start.
    pub fn load_or_create(state_dir: &Path) -> Result<HostKey, HostKeyError> {
        let path = Self::path(state_dir);
        if path.exists() {
            return Self::load(state_dir);
        }
        let cerr = |source| HostKeyError::Create {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(cerr)?;
        let _ = fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700));
        let mut key = [0u8; KEY_LEN];
        fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut key))
            .map_err(cerr)?;
        let tmp = state_dir.join(format!("{KEY_FILE}.tmp"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(cerr)?;
        f.write_all(&key).and_then(|_| f.sync_all()).map_err(cerr)?;
        fs::rename(&tmp, &path).map_err(cerr)?;
        if let Ok(dir) = fs::File::open(state_dir) {
            let _ = dir.sync_all();
        }
        Ok(HostKey(key))
    }

    pub fn load(state_dir: &Path) -> Result<HostKey, HostKeyError> {
        let path = Self::path(state_dir);
        let bytes = fs::read(&path).map_err(|source| HostKeyError::Read {
            path: path.clone(),
            source,
        })?;
        let key: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| HostKeyError::Length {
                path,
                len: bytes.len(),
            })?;
        Ok(HostKey(key))
    }

    /// `hmac:<64 hex digits>`: how a secret value appears in the audit trail.
    pub fn hash(&self, value: &[u8]) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(value);
        let digest = mac.finalize().into_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(5 + 64);
        out.push_str("hmac:");
        for b in digest {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0x0f)]));
        }
        out
    }
}

/// Replaces the secrets recognisable in a command line by their HMAC:
/// passwords in URLs (`scheme://user:PASSWORD@host`), `password=VALUE`
/// (libpq conninfo and the like) and `--password[=| ]VALUE`-style options
/// (`--password`, `--pass`, `--token`, `--secret`, `--api-key`), the
/// `-a PASSWORD` of redis-cli and redis-benchmark, and credential headers
/// (`-H 'X-Vault-Token: T'`, `Authorization: Bearer T`).
pub fn redact_cmdline(cmdline: &str, key: &HostKey) -> String {
    let words: Vec<&str> = cmdline.split(' ').collect();
    let redis_tool = words.first().is_some_and(|w| {
        let exe = w.rsplit('/').next().unwrap_or(w);
        exe == "redis-cli" || exe == "redis-benchmark"
    });
    let mut out: Vec<String> = Vec::with_capacity(words.len());
    let mut next_is_secret = false;
    // After a credential header name (`-H 'X-Vault-Token: T'`), the
    // value, after an optional auth scheme (`Authorization: Bearer T`).
    let mut header_value_next = false;
    for word in words {
        if header_value_next {
            let bare = word.trim_end_matches(['\'', '"']);
            if matches!(
                bare.to_ascii_lowercase().as_str(),
                "bearer" | "basic" | "token" | "negotiate"
            ) {
                out.push(word.to_string());
                continue;
            }
            let quote = &word[bare.len()..];
            out.push(format!("{}{quote}", key.hash(bare.as_bytes())));
            header_value_next = false;
            continue;
        }
        if let Some((name, value)) = secret_header(word) {
            if value.is_empty() {
                out.push(word.to_string());
                header_value_next = true;
            } else {
                let bare = value.trim_end_matches(['\'', '"']);
                let quote = &value[bare.len()..];
                out.push(format!("{name}{}{quote}", key.hash(bare.as_bytes())));
            }
            continue;
        }
        if next_is_secret {
            out.push(key.hash(word.as_bytes()));
            next_is_secret = false;
            continue;
        }
        if redis_tool && word == "-a" {
            out.push(word.to_string());
            next_is_secret = true;
            continue;
        }
        if let Some(flag) = secret_flag(word) {
            match word.split_once('=') {
                Some((name, value)) if !value.is_empty() => {
                    out.push(format!("{name}={}", key.hash(value.as_bytes())));
                }
                Some(_) => out.push(word.to_string()),
                None => {
                    out.push(word.to_string());
                    next_is_secret = flag;
                }
            }
            continue;
        }
        if looks_like_vault_token(word) {
            out.push(key.hash(word.as_bytes()));
            continue;
        }
        out.push(redact_word(word, key));
    }
    out.join(" ")
}

/// A Vault/OpenBao token given as a bare word (`bao unwrap s.XXXX`, a
/// wrapping token passed to a script): service tokens `s.` + 24 characters
/// and the prefixed forms `hvs.`/`hvb.`/`hvr.` (and the legacy `b.`/`r.`).
fn looks_like_vault_token(word: &str) -> bool {
    let Some((prefix, body)) = word.split_once('.') else {
        return false;
    };
    let body_ok = |min: usize| {
        body.len() >= min
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    match prefix {
        "s" | "b" | "r" => body.len() == 24 && body_ok(24),
        "hvs" | "hvb" | "hvr" => body_ok(20),
        _ => false,
    }
}

/// `X-Vault-Token:`-style credential headers as curl, wget and httpie take
/// them (`-H 'Name: value'`, `--header=Name:value`, `Name:value`): the word
/// up to and including the colon, and the rest of the word.
fn secret_header(word: &str) -> Option<(&str, &str)> {
    let colon = word.find(':')?;
    let name = word[..colon]
        .trim_start_matches("--header=")
        .trim_start_matches(['\'', '"', '$'])
        .to_ascii_lowercase();
    const HEADERS: &[&str] = &[
        "x-vault-token",
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "private-token",
        "x-auth-token",
        "x-consul-token",
        "x-nomad-token",
    ];
    HEADERS
        .contains(&name.as_str())
        .then(|| word.split_at(colon + 1))
}

/// `Some(true)` for a secret-taking option given without `=`; `Some(false)`
/// for one with `=`.
fn secret_flag(word: &str) -> Option<bool> {
    let name = word
        .split('=')
        .next()
        .unwrap_or(word)
        .trim_start_matches('-');
    if !word.starts_with("--") {
        return None;
    }
    let secretish = [
        "password", "passwd", "pass", "token", "secret", "api-key", "apikey", "auth",
    ];
    secretish
        .contains(&name.to_ascii_lowercase().as_str())
        .then_some(!word.contains('='))
}

/// URL passwords and `key=value` secrets inside one word (which may be a
/// whole conninfo string such as `host=x password=y`).
fn redact_word(word: &str, key: &HostKey) -> String {
    let mut w = word.to_string();
    if let Some(scheme_end) = w.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = w[rest_start..]
            .find(['/', '?', '#'])
            .map_or(w.len(), |i| rest_start + i);
        if let Some(at) = w[rest_start..authority_end].rfind('@') {
            let userinfo = &w[rest_start..rest_start + at];
            if let Some((user, pass)) = userinfo.split_once(':') {
                if !pass.is_empty() {
                    let hashed = format!("{user}:{}", key.hash(pass.as_bytes()));
                    w.replace_range(rest_start..rest_start + at, &hashed);
                }
            }
        }
    }
    for name in [
        "password=",
        "passwd=",
        "token=",
        "secret=",
        "secret_id=",
        "apikey=",
        "api_key=",
    ] {
        if let Some(pos) = w.to_ascii_lowercase().find(name) {
            let start = pos + name.len();
            let end = w[start..]
                .find([' ', '&', ';', '\'', '"'])
                .map_or(w.len(), |i| start + i);
            if end > start && !w[start..end].starts_with("hmac:") {
                let hashed = key.hash(&w.as_bytes()[start..end]);
                w.replace_range(start..end, &hashed);
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HostKey {
        HostKey([7u8; KEY_LEN])
    }

    #[test]
    fn hash_is_stable_and_keyed() {
        let a = key().hash(b"s3cret");
        assert_eq!(a, key().hash(b"s3cret"));
        assert!(a.starts_with("hmac:") && a.len() == 69);
        assert_ne!(a, HostKey([8u8; KEY_LEN]).hash(b"s3cret"));
        // The hex digits are the HMAC's, in order.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&[7u8; KEY_LEN]).expect("key");
        mac.update(b"s3cret");
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(a, format!("hmac:{want}"));
    }

    #[test]
    fn created_once_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let k1 = HostKey::load_or_create(dir.path()).expect("create");
        let k2 = HostKey::load_or_create(dir.path()).expect("load");
        assert_eq!(k1.hash(b"x"), k2.hash(b"x"));
        let mode = fs::metadata(HostKey::path(dir.path()))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn cmdline_secrets_are_hashed() {
        let k = key();
        for (line, secret) in [
            ("psql postgresql://app:hunter2@db:5432/ci", "hunter2"),
            ("psql host=db password=hunter3 user=app", "hunter3"),
            ("vault login --token s.abcdef", "s.abcdef"),
            ("tool --password=pw-123 --verbose", "pw-123"),
            ("curl https://x:tok-9@api.internal/v1", "tok-9"),
            ("/usr/bin/redis-cli -a hunter4 -p 6379 ping", "hunter4"),
            ("redis-benchmark -q -a hunter5 -t get", "hunter5"),
            (
                "bao unwrap s.B9yodXGgwWkp6KVr28FR9pd9",
                "s.B9yodXGgwWkp6KVr28FR9pd9",
            ),
            (
                "bao write auth/approle/login role_id=r-1 secret_id=5f1c2a9e-77aa",
                "5f1c2a9e-77aa",
            ),
            (
                "python3 job.py hvs.CAESIJ2mFz0aBcDeFgHiJkLmNoPq",
                "hvs.CAESIJ2mFz0aBcDeFgHiJkLmNoPq",
            ),
        ] {
            let r = redact_cmdline(line, &k);
            assert!(!r.contains(secret), "{line} -> {r}");
            assert!(r.contains(&k.hash(secret.as_bytes())), "{line} -> {r}");
        }
        assert_eq!(
            redact_cmdline("redis-cli -p 6379 get key", &k),
            "redis-cli -p 6379 get key"
        );
        for line in [
            "curl -sS -H 'X-Vault-Token: TOKSECRET' http://127.0.0.1:8200/v1/secret/data/app",
            "curl -H 'Authorization: Bearer TOKSECRET' https://x/v1",
            "curl -H X-Vault-Token:TOKSECRET https://x/v1",
            "wget --header=X-Vault-Token:TOKSECRET https://x/v1",
            "curl -H \"authorization: Basic TOKSECRET\" https://x",
        ] {
            let r = redact_cmdline(line, &k);
            assert!(!r.contains("TOKSECRET"), "{line} -> {r}");
            assert!(r.contains(&k.hash(b"TOKSECRET")), "{line} -> {r}");
        }
        let r = redact_cmdline(
            "curl -H 'X-Vault-Token: TOKSECRET' http://127.0.0.1:8200/v1/x",
            &k,
        );
        assert!(r.ends_with(" http://127.0.0.1:8200/v1/x"), "{r}");
        // URLs with a port are not headers.
        assert_eq!(
            redact_cmdline("curl https://host:8200/v1/x", &k),
            "curl https://host:8200/v1/x"
        );
        // File names and versions are not tokens.
        assert_eq!(
            redact_cmdline("python3 s.py build.tar.gz v1.2.3", &k),
            "python3 s.py build.tar.gz v1.2.3"
        );
        // `-a` is a password only for the Redis tools.
        assert_eq!(
            redact_cmdline("tar -a -cf x.tgz d", &k),
            "tar -a -cf x.tgz d"
        );
    }
}
