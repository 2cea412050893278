//! How one secret value is rewritten: the `strategy` of a `[[mask]]`.
//!
//! Every strategy gives output whose length does not depend on the secret's
//! length (apart from `partial`, which keeps a fixed-width tail of long
//! values), so a masked reply does not even say how long the secret was.

use crate::{audit::hostkey::HostKey, config::MaskStrategy};

/// What `redact` writes, and what `null` writes where the protocol (or the
/// surrounding text) has no place for a null. Fixed width: the length of
/// the secret does not leak.
pub const REDACTED: &str = "********";

/// Prefix of `partial` output before the kept tail.
const PARTIAL_PREFIX: &str = "****";
/// Characters `partial` keeps at the end of the value.
const PARTIAL_KEEP: usize = 4;
/// Values of at most this many characters are redacted fully by `partial`:
/// showing 4 of 8 characters would give away half of the secret.
const PARTIAL_MIN_CHARS: usize = 8;
/// Hex digits of the HMAC that `hash` keeps. 64 bits are plenty to tell
/// values apart in one reply or one investigation, and the short form keeps
/// masked replies readable.
const HASH_HEX_DIGITS: usize = 16;

/// The masked form of one value. Returned bytes are valid UTF-8 whenever the
/// input was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    /// The value becomes SQL NULL / RESP null / JSON `null`. Protocols (or
    /// places inside a larger text) that have no null write [`REDACTED`]
    /// instead: see [`Masked::into_bytes_or_redacted`].
    Null,
    /// The replacement bytes.
    Value(Vec<u8>),
}

impl Masked {
    /// The replacement for a protocol without nulls: [`Masked::Null`]
    /// becomes [`REDACTED`].
    pub fn into_bytes_or_redacted(self) -> Vec<u8> {
        match self {
            Masked::Null => REDACTED.as_bytes().to_vec(),
            Masked::Value(v) => v,
        }
    }
}

/// Masks one whole value with `strategy`:
///
/// - `redact`: [`REDACTED`] (`********`) whatever the value's length.
/// - `partial`: `****` and the last 4 characters (characters, not bytes, so
///   multibyte UTF-8 is never cut; bytes when the value is not UTF-8), e.g.
///   `****abcd`; values of 8 characters or fewer are redacted fully.
/// - `hash`: `hmac:` and the first 16 hex digits of HMAC-SHA256 under the
///   host key. Meant for correlation: equal values give equal masks (on one
///   host), so a client can still join, group or compare masked values, and
///   an investigator holding a secret can recompute its mask with
///   `interceptor audit hash` (the mask is a prefix of the audit hash).
///   Different hosts have different keys, so masks do not correlate across
///   hosts, and the key keeps low-entropy secrets from being brute-forced
///   from the mask.
/// - `null`: [`Masked::Null`].
pub fn apply(strategy: MaskStrategy, value: &[u8], key: &HostKey) -> Masked {
    match std::str::from_utf8(value) {
        Ok(text) => match mask_str(strategy, text, key) {
            Some(s) => Masked::Value(s.into_bytes()),
            None => Masked::Null,
        },
        Err(_) => match strategy {
            MaskStrategy::Partial if value.len() > PARTIAL_MIN_CHARS => {
                let mut out = PARTIAL_PREFIX.as_bytes().to_vec();
                out.extend_from_slice(&value[value.len() - PARTIAL_KEEP..]);
                Masked::Value(out)
            }
            MaskStrategy::Partial | MaskStrategy::Redact => {
                Masked::Value(REDACTED.as_bytes().to_vec())
            }
            MaskStrategy::Hash => Masked::Value(hash_text(value, key).into_bytes()),
            MaskStrategy::Null => Masked::Null,
        },
    }
}

/// [`apply`] for text; `None` for `null`.
pub(crate) fn mask_str(strategy: MaskStrategy, text: &str, key: &HostKey) -> Option<String> {
    Some(match strategy {
        MaskStrategy::Redact => REDACTED.to_string(),
        MaskStrategy::Partial => partial(text),
        MaskStrategy::Hash => hash_text(text.as_bytes(), key),
        MaskStrategy::Null => return None,
    })
}

fn partial(text: &str) -> String {
    // Byte offset of the PARTIAL_KEEP-th character from the end, found only
    // if the value has more than PARTIAL_MIN_CHARS characters.
    let mut tail_start = None;
    for (n, (i, _)) in text.char_indices().rev().enumerate() {
        if n + 1 == PARTIAL_KEEP {
            tail_start = Some(i);
        }
        if n + 1 > PARTIAL_MIN_CHARS {
            let start = tail_start.expect("PARTIAL_KEEP < PARTIAL_MIN_CHARS");
            let mut out = String::with_capacity(PARTIAL_PREFIX.len() + text.len() - start);
            out.push_str(PARTIAL_PREFIX);
            out.push_str(&text[start..]);
            return out;
        }
    }
    REDACTED.to_string()
}

/// `hmac:` + 16 hex digits: a prefix of [`HostKey::hash`], the form secrets
/// take in the audit trail, so the two can be matched.
fn hash_text(value: &[u8], key: &HostKey) -> String {
    let mut full = key.hash(value);
    full.truncate("hmac:".len() + HASH_HEX_DIGITS);
    full
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A host key in a temporary directory (the key's bytes are private to
    /// its module).
    pub(crate) fn test_key() -> HostKey {
        let dir = tempfile::tempdir().expect("tempdir");
        HostKey::load_or_create(dir.path()).expect("host key")
    }

    fn text(m: Masked) -> String {
        match m {
            Masked::Value(v) => String::from_utf8(v).expect("utf-8"),
            Masked::Null => panic!("unexpected null"),
        }
    }

    #[test]
    fn redact_is_fixed_width() {
        let k = test_key();
        for v in ["", "a", "hunter2", &"x".repeat(1000)] {
            assert_eq!(
                text(apply(MaskStrategy::Redact, v.as_bytes(), &k)),
                "********"
            );
        }
    }

    #[test]
    fn partial_keeps_last_four_chars_of_long_values() {
        let k = test_key();
        let p = |v: &str| text(apply(MaskStrategy::Partial, v.as_bytes(), &k));
        assert_eq!(p("sk_live_abcd1234"), "****1234");
        assert_eq!(p("123456789"), "****6789");
        // 8 characters or fewer: fully redacted.
        assert_eq!(p("12345678"), "********");
        assert_eq!(p("abc"), "********");
        assert_eq!(p(""), "********");
        // Characters, not bytes: 9 characters, 18 bytes.
        assert_eq!(p("ééééééééé"), "****éééé");
        // 8 multibyte characters (more than 8 bytes) is still short.
        assert_eq!(p("日本語日本語日本"), "********");
        assert_eq!(p("password-🔑🔑x🔑"), "****🔑🔑x🔑");
    }

    #[test]
    fn partial_on_bytes_that_are_not_utf8() {
        let k = test_key();
        let v = b"\xff\xfe\x00\x01\x02\x03\x04\x05\x06";
        assert_eq!(
            apply(MaskStrategy::Partial, v, &k),
            Masked::Value(b"****\x03\x04\x05\x06".to_vec())
        );
        assert_eq!(
            apply(MaskStrategy::Partial, b"\xff\xfe", &k),
            Masked::Value(REDACTED.as_bytes().to_vec())
        );
    }

    #[test]
    fn hash_is_stable_distinct_and_a_prefix_of_the_audit_hash() {
        let k = test_key();
        let h = |v: &str| text(apply(MaskStrategy::Hash, v.as_bytes(), &k));
        let a = h("s3cret");
        assert_eq!(a, h("s3cret"));
        assert_ne!(a, h("s3cret2"));
        assert_eq!(a.len(), "hmac:".len() + 16);
        assert!(a.starts_with("hmac:"));
        assert!(a[5..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(k.hash(b"s3cret").starts_with(&a));
        // Another host, another mask.
        assert_ne!(a, text(apply(MaskStrategy::Hash, b"s3cret", &test_key())));
    }

    #[test]
    fn null_and_its_text_form() {
        let k = test_key();
        let m = apply(MaskStrategy::Null, b"x", &k);
        assert_eq!(m, Masked::Null);
        assert_eq!(m.into_bytes_or_redacted(), b"********");
    }
}
