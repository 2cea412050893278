//! Value detectors: credentials recognised by their shape in any text value
//! of any reply, whatever column, key or field carries them.
//!
//! This runs on every text value of every reply, nearly all of which hold no
//! credential, so the cost that matters is that of saying "nothing here".
//! Each detector therefore has a prefilter that needs no regex: a minimum
//! length, bytes that every match contains (collected for all detectors in
//! one pass over the value) and then a literal the match must contain (or,
//! for the label-based detectors, a label right before a `:`/`=`). Only
//! values passing it reach the detector's regex. The regexes come from the
//! `regex` crate, which runs in time linear in the value whatever the input,
//! so a hostile value cannot make a reply slow; they are compiled once per
//! [`Detectors`] and use ASCII word boundaries so that the fast DFA engine
//! also handles non-ASCII text.

use std::{fmt, ops::Range, sync::Arc};

use anyhow::{bail, Context};
use regex::Regex;

use super::strategy::{apply, mask_str, Masked, REDACTED};
use crate::{audit::hostkey::HostKey, config::MaskStrategy};

/// What one detector recognises. The names are those of
/// [`crate::config::KNOWN_DETECTORS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `AKIA…`-style access key ids: a known 4-letter prefix and 16 more
    /// upper-case letters or digits, as a whole word.
    AwsAccessKeyId,
    /// The 40-character secret access key, recognised only after a label
    /// (`aws_secret_access_key`, `secret_access_key`, `SecretAccessKey`,
    /// `aws_secret`, … followed by `=` or `:`, with optional quotes): a bare
    /// 40-character string is as likely a SHA-1 or a base64 digest. The value
    /// must also mix upper- and lower-case letters, which a random
    /// 40-character base64 string does with overwhelming probability and a
    /// hex digest (git SHA-1) never does.
    AwsSecretAccessKey,
    /// A PEM private key (`-----BEGIN … PRIVATE KEY-----`, including
    /// `RSA`, `EC`, `OPENSSH`, `ENCRYPTED` and PGP `PRIVATE KEY BLOCK`),
    /// through its matching `-----END …-----` line, or to the end of the
    /// value when that is missing (a truncated key is still a secret).
    PrivateKey,
    /// GitHub tokens: `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` + 36..255
    /// alphanumerics, and fine-grained `github_pat_…`.
    GithubToken,
    /// Slack tokens (`xoxb-`, `xoxa-`, `xoxp-`, `xoxr-`, `xoxs-`) and the
    /// secret path of incoming-webhook URLs (`https://hooks.slack.com/services/…`:
    /// the host stays readable).
    SlackToken,
    /// JSON Web Tokens: three base64url parts, header and payload starting
    /// `eyJ` (base64 of `{"`).
    Jwt,
    /// The password of `scheme://user:PASSWORD@host` URLs (only the password
    /// is masked, the rest of the URL stays useful).
    PasswordInUrl,
    /// `api_key`, `apikey`, `secret`, `token`, `password`, `passwd`, `pwd`
    /// (any case, also as the end of a longer name such as `access_token`)
    /// followed by `=`/`:` (quotes and ASCII blanks allowed around them) and a
    /// value of 8 or more characters up to a blank, quote, `&`, `,` or `;`.
    /// Only the value is masked. `PWD=/path` (the shell's working directory
    /// variable, everywhere in environment dumps) is not a password.
    GenericApiKey,
}

/// Every detector by its configuration name, in the order of
/// [`crate::config::KNOWN_DETECTORS`].
const ALL: &[(&str, Kind)] = &[
    ("aws_access_key_id", Kind::AwsAccessKeyId),
    ("aws_secret_access_key", Kind::AwsSecretAccessKey),
    ("private_key", Kind::PrivateKey),
    ("github_token", Kind::GithubToken),
    ("slack_token", Kind::SlackToken),
    ("jwt", Kind::Jwt),
    ("password_in_url", Kind::PasswordInUrl),
    ("generic_api_key", Kind::GenericApiKey),
];

// Byte classes collected in one pass over a value for the prefilter.
const C_COLON: u16 = 1 << 0;
const C_EQ: u16 = 1 << 1;
const C_SLASH: u16 = 1 << 2;
const C_AT: u16 = 1 << 3;
const C_DASH: u16 = 1 << 4;
const C_UNDERSCORE: u16 = 1 << 5;
const C_DOT: u16 = 1 << 6;
const C_UPPER_A: u16 = 1 << 7;
const C_UPPER_J: u16 = 1 << 8;
const C_LOWER_X: u16 = 1 << 9;
const C_LOWER_G: u16 = 1 << 10;
const C_SEP: u16 = C_COLON | C_EQ;

static CLASSES: [u16; 256] = {
    let mut t = [0u16; 256];
    t[b':' as usize] = C_COLON;
    t[b'=' as usize] = C_EQ;
    t[b'/' as usize] = C_SLASH;
    t[b'@' as usize] = C_AT;
    t[b'-' as usize] = C_DASH;
    t[b'_' as usize] = C_UNDERSCORE;
    t[b'.' as usize] = C_DOT;
    t[b'A' as usize] = C_UPPER_A;
    t[b'J' as usize] = C_UPPER_J;
    t[b'x' as usize] = C_LOWER_X;
    t[b'g' as usize] = C_LOWER_G;
    t
};

fn classes(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0, |acc, &b| acc | CLASSES[b as usize])
}

impl Kind {
    fn name(self) -> &'static str {
        ALL.iter()
            .find(|(_, k)| *k == self)
            .map(|(n, _)| *n)
            .expect("every kind is in ALL")
    }

    /// The regex; where it has a capture group 1, that group is the secret
    /// (the rest is context such as a label or the URL's host).
    fn pattern(self) -> &'static str {
        match self {
            Kind::AwsAccessKeyId => {
                r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}(?-u:\b)"
            }
            // Labels ignore ASCII case only (as the prefilter does): Unicode
            // folding would also accept e.g. the Kelvin sign for `k`.
            Kind::AwsSecretAccessKey => {
                // The value must be exactly 40 characters: the class after it
                // is the end or a character outside the key alphabet.
                r#"(?i-u:aws_?secret(?:_?access)?(?:_?key)?|secret_?access_?key)["']?(?-u:\s)*[:=](?-u:\s)*["']?([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#
            }
            Kind::PrivateKey => r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----",
            Kind::GithubToken => {
                r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})(?-u:\b)"
            }
            Kind::SlackToken => {
                r"(?-u:\b)xox[baprs]-[A-Za-z0-9-]{10,}|hooks\.slack\.com/services/([A-Za-z0-9/_-]+)"
            }
            Kind::Jwt => r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{10,}",
            Kind::PasswordInUrl => {
                // user: no `:` `/` `?` `#` `@` (may be empty: `redis://:pw@h`);
                // password: up to the last `@` before the path.
                r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:([^\s/?#]+)@"
            }
            Kind::GenericApiKey => {
                r#"(?i-u:(api[_-]?key|secret|token|password|passwd|pwd))["']?(?-u:\s)*[:=](?-u:\s)*["']?([^\s"'&,;]{8,})"#
            }
        }
    }

    /// Shortest value that can hold a match, in bytes.
    fn min_len(self) -> usize {
        match self {
            Kind::AwsAccessKeyId => 20,
            Kind::AwsSecretAccessKey => "awssecret=".len() + 40,
            Kind::PrivateKey => "-----BEGIN PRIVATE KEY-----".len(),
            Kind::GithubToken => "github_pat_".len() + 22,
            Kind::SlackToken => "xoxb-".len() + 10,
            Kind::Jwt => "eyJ.eyJ.".len() + 5 + 5 + 10,
            Kind::PasswordInUrl => "a://:p@".len(),
            Kind::GenericApiKey => "pwd=".len() + 8,
        }
    }

    /// Cheap necessary condition for a match.
    fn may_match(self, v: &mut Prefilter<'_>) -> bool {
        let text = v.text;
        if text.len() < self.min_len() {
            return false;
        }
        let has = |c: u16| v.classes & c == c;
        match self {
            // The regex's own prefilter looks for the 4-letter prefixes.
            Kind::AwsAccessKeyId => has(C_UPPER_A),
            Kind::AwsSecretAccessKey => v.labels() & (L_KEY | L_SECRET | L_ACCESS) != 0,
            Kind::PrivateKey => has(C_DASH) && text.contains("-----BEGIN "),
            Kind::GithubToken => {
                has(C_UNDERSCORE | C_LOWER_G)
                    && (text.contains("gh") || text.contains("github_pat_"))
            }
            Kind::SlackToken => {
                (has(C_LOWER_X | C_DASH) && text.contains("xox"))
                    || (has(C_DOT | C_SLASH) && text.contains("hooks.slack.com/"))
            }
            Kind::Jwt => has(C_DOT | C_UPPER_J) && text.contains("eyJ"),
            Kind::PasswordInUrl => has(C_COLON | C_SLASH | C_AT) && text.contains("://"),
            Kind::GenericApiKey => {
                v.labels() & (L_KEY | L_SECRET | L_TOKEN | L_PASSWORD | L_PWD) != 0
            }
        }
    }
}

// Label words (ends of names) found right before a `:` or `=`.
const L_KEY: u8 = 1 << 0;
const L_SECRET: u8 = 1 << 1;
const L_ACCESS: u8 = 1 << 2;
const L_TOKEN: u8 = 1 << 3;
const L_PASSWORD: u8 = 1 << 4;
const L_PWD: u8 = 1 << 5;
const LABELS: &[(&[u8], u8)] = &[
    (b"key", L_KEY),
    (b"secret", L_SECRET),
    (b"access", L_ACCESS),
    (b"token", L_TOKEN),
    (b"password", L_PASSWORD),
    (b"passwd", L_PASSWORD),
    (b"pwd", L_PWD),
];

/// What the prefilters know about one value: computed once for all
/// detectors.
struct Prefilter<'a> {
    text: &'a str,
    /// Byte classes of the whole value (`C_*`).
    classes: u16,
    /// `L_*` bits, computed on first use.
    labels: Option<u8>,
}

impl Prefilter<'_> {
    fn labels(&mut self) -> u8 {
        if self.classes & C_SEP == 0 {
            return 0;
        }
        *self
            .labels
            .get_or_insert_with(|| labels_before_separators(self.text.as_bytes()))
    }
}

/// The label words (`L_*`) that end a name right before a `:` or `=`,
/// across ASCII blanks and one optional quote as the label regexes allow
/// (ASCII case-insensitive). A necessary condition for the label-based
/// detectors, much cheaper than their case-insensitive regexes.
fn labels_before_separators(bytes: &[u8]) -> u8 {
    let mut found = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b':' && b != b'=' {
            continue;
        }
        let mut end = i;
        // `(?-u:\s)`: what `is_ascii_whitespace` accepts, and vertical tab.
        while end > 0
            && matches!(
                bytes[end - 1],
                b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r'
            )
        {
            end -= 1;
        }
        if end > 0 && matches!(bytes[end - 1], b'"' | b'\'') {
            end -= 1;
        }
        let before = &bytes[..end];
        // The last letters of the labels: most separators (times, URLs)
        // are rejected here.
        let Some(last) = before.last() else { continue };
        if !matches!(last.to_ascii_lowercase(), b'y' | b't' | b's' | b'n' | b'd') {
            continue;
        }
        for (label, bit) in LABELS {
            if before.len() >= label.len()
                && before[before.len() - label.len()..].eq_ignore_ascii_case(label)
            {
                found |= bit;
            }
        }
    }
    found
}

struct Detector {
    kind: Kind,
    regex: Regex,
    /// Whether the secret is capture group 1 (group 2 for
    /// [`Kind::GenericApiKey`], whose group 1 is the label).
    captures: bool,
}

impl Detector {
    fn new(kind: Kind) -> anyhow::Result<Detector> {
        let regex = Regex::new(kind.pattern())
            .with_context(|| format!("compiling the {} detector", kind.name()))?;
        let captures = regex.captures_len() > 1;
        Ok(Detector {
            kind,
            regex,
            captures,
        })
    }

    /// Appends the byte ranges of the secrets in `text`.
    fn find(&self, text: &str, out: &mut Vec<(Range<usize>, &'static str)>) {
        let name = self.kind.name();
        if !self.captures {
            out.extend(self.regex.find_iter(text).map(|m| (m.range(), name)));
            return;
        }
        for caps in self.regex.captures_iter(text) {
            let range = match self.kind {
                Kind::PrivateKey => {
                    let whole = caps.get(0).expect("group 0");
                    let label = caps.get(1).expect("label group").as_str();
                    let end_line = format!("-----END {label}-----");
                    let end = text[whole.end()..]
                        .find(&end_line)
                        .map_or(text.len(), |i| whole.end() + i + end_line.len());
                    whole.start()..end
                }
                Kind::AwsSecretAccessKey => {
                    let value = caps.get(1).expect("value group").as_str();
                    let mixed = value.bytes().any(|b| b.is_ascii_uppercase())
                        && value.bytes().any(|b| b.is_ascii_lowercase());
                    if !mixed {
                        continue;
                    }
                    caps.get(1).expect("value group").range()
                }
                Kind::GenericApiKey => {
                    let label = caps.get(1).expect("label group").as_str();
                    let value = caps.get(2).expect("value group");
                    if label.eq_ignore_ascii_case("pwd") && value.as_str().starts_with('/') {
                        continue;
                    }
                    value.range()
                }
                // Slack: group 1 is the webhook path, absent for a token.
                _ => caps
                    .get(1)
                    .unwrap_or_else(|| caps.get(0).expect("group 0"))
                    .range(),
            };
            out.push((range, name));
        }
    }
}

/// Compiled value detectors (one `[[mask]]` may list several). Cheap to
/// clone (an `Arc`) and `Send + Sync`, so one set serves every session.
#[derive(Clone)]
pub struct Detectors {
    inner: Arc<Inner>,
}

struct Inner {
    detectors: Vec<Detector>,
    /// Shortest value any of them can match: shorter ones are skipped
    /// without looking at their bytes.
    min_len: usize,
}

impl fmt::Debug for Detectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.inner.detectors.iter().map(|d| d.kind.name()))
            .finish()
    }
}

impl Detectors {
    /// Compiles the detectors named (names from
    /// [`crate::config::KNOWN_DETECTORS`]; repeats are ignored). An unknown
    /// name is an error: configuration validation rejects those, so it means
    /// the two lists disagree.
    pub fn new(names: &[String]) -> anyhow::Result<Detectors> {
        let mut detectors: Vec<Detector> = Vec::with_capacity(names.len());
        for name in names {
            let Some(&(_, kind)) = ALL.iter().find(|(n, _)| n == name) else {
                bail!(
                    "unknown detector `{name}` (known: {})",
                    ALL.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                );
            };
            if detectors.iter().all(|d| d.kind != kind) {
                detectors.push(Detector::new(kind)?);
            }
        }
        let min_len = detectors
            .iter()
            .map(|d| d.kind.min_len())
            .min()
            .unwrap_or(usize::MAX);
        Ok(Detectors {
            inner: Arc::new(Inner { detectors, min_len }),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.inner.detectors.is_empty()
    }

    /// Byte ranges of every credential found in `text`, sorted and
    /// non-overlapping, each with the name of the detector that found it.
    /// Overlapping finds (e.g. a JWT that is also the value of `token=`) are
    /// merged into one range, named after the one starting first (the
    /// longer one on a tie). Does not allocate when nothing is found.
    pub fn find(&self, text: &str) -> Vec<(Range<usize>, &'static str)> {
        let mut found = Vec::new();
        if text.len() < self.inner.min_len {
            return found;
        }
        let mut prefilter = Prefilter {
            text,
            classes: classes(text.as_bytes()),
            labels: None,
        };
        for d in &self.inner.detectors {
            if d.kind.may_match(&mut prefilter) {
                d.find(text, &mut found);
            }
        }
        if found.len() > 1 {
            found.sort_by(|a, b| a.0.start.cmp(&b.0.start).then(b.0.end.cmp(&a.0.end)));
            found.dedup_by(|next, kept| {
                if next.0.start < kept.0.end {
                    kept.0.end = kept.0.end.max(next.0.end);
                    true
                } else {
                    false
                }
            });
        }
        found
    }

    /// `text` with every credential found replaced by the strategy's output
    /// (see [`super::apply`]), and how many were replaced. Inside a larger
    /// text `null` writes [`REDACTED`]; only when the whole value is one
    /// credential does `null` give [`Masked::Null`]. `None` when nothing was
    /// found: the caller then forwards the original bytes untouched.
    pub fn mask(
        &self,
        text: &str,
        strategy: MaskStrategy,
        key: &HostKey,
    ) -> Option<(Masked, usize)> {
        let found = self.find(text);
        if found.is_empty() {
            return None;
        }
        if found.len() == 1 && found[0].0 == (0..text.len()) {
            return Some((apply(strategy, text.as_bytes(), key), 1));
        }
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        for (range, _) in &found {
            out.push_str(&text[pos..range.start]);
            match mask_str(strategy, &text[range.clone()], key) {
                Some(masked) => out.push_str(&masked),
                None => out.push_str(REDACTED),
            }
            pos = range.end;
        }
        out.push_str(&text[pos..]);
        Some((Masked::Value(out.into_bytes()), found.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::KNOWN_DETECTORS, mask::strategy::tests::test_key};

    fn all() -> Detectors {
        let names: Vec<String> = KNOWN_DETECTORS.iter().map(|s| s.to_string()).collect();
        Detectors::new(&names).expect("detectors")
    }

    fn one(name: &str) -> Detectors {
        Detectors::new(&[name.to_string()]).expect("detector")
    }

    /// The secrets `name` finds in `text`, as text.
    fn found<'a>(name: &str, text: &'a str) -> Vec<&'a str> {
        one(name)
            .find(text)
            .into_iter()
            .map(|(r, n)| {
                assert_eq!(n, name);
                &text[r]
            })
            .collect()
    }

    fn redact(d: &Detectors, text: &str) -> Option<String> {
        d.mask(text, MaskStrategy::Redact, &test_key())
            .map(|(m, _)| match m {
                Masked::Value(v) => String::from_utf8(v).expect("utf-8"),
                Masked::Null => panic!("null"),
            })
    }

    const JWT: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    const PEM: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA3Tz2mr7SZiAMfQyuvBjM2Z6r0cZtvXBXlCjD8T0O\nFAKEFAKEFAKE+/==\n-----END RSA PRIVATE KEY-----";

    #[test]
    fn names_are_the_configs() {
        let ours: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
        assert_eq!(ours, KNOWN_DETECTORS);
        for (_, kind) in ALL {
            Detector::new(*kind).expect("compiles");
        }
        assert!(!all().is_empty());
        fn shared<T: Send + Sync + Clone>() {}
        shared::<Detectors>();
        assert!(Detectors::new(&[]).expect("none").is_empty());
        let err = Detectors::new(&["aws_key".to_string()]).expect_err("unknown");
        assert!(err.to_string().contains("unknown detector `aws_key`"));
        assert_eq!(
            format!(
                "{:?}",
                Detectors::new(&["jwt".into(), "jwt".into()]).unwrap()
            ),
            "[\"jwt\"]"
        );
    }

    #[test]
    fn aws_access_key_id() {
        let n = "aws_access_key_id";
        assert_eq!(found(n, "AKIAIOSFODNN7EXAMPLE"), ["AKIAIOSFODNN7EXAMPLE"]);
        assert_eq!(
            found(n, "id=ASIAY34FZKBOKMUTVV7A, other AROAXXXXXXXXXXXXXXXX"),
            ["ASIAY34FZKBOKMUTVV7A", "AROAXXXXXXXXXXXXXXXX"]
        );
        // Too short, too long, wrong prefix, lower case, inside a word.
        for t in [
            "AKIAIOSFODNN7EXAMP",
            "AKIAIOSFODNN7EXAMPLEX",
            "AXXAIOSFODNN7EXAMPLE",
            "akiaiosfodnn7example",
            "XAKIAIOSFODNN7EXAMPLE",
        ] {
            assert!(found(n, t).is_empty(), "{t}");
        }
    }

    #[test]
    fn aws_secret_access_key() {
        let n = "aws_secret_access_key";
        let s = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
        for t in [
            format!("aws_secret_access_key = {s}"),
            format!("AWS_SECRET_ACCESS_KEY={s}"),
            format!("{{\"SecretAccessKey\": \"{s}\"}}"),
            format!("secret_access_key: '{s}'\nregion: x"),
            format!("aws_secret={s}"),
        ] {
            assert_eq!(found(n, &t), [s], "{t}");
        }
        // No label; a git SHA-1 or hex digest even with one; a value of the
        // wrong length.
        for t in [
            s.to_string(),
            "aws_secret_access_key=da39a3ee5e6b4b0d3255bfef95601890afd80709".to_string(),
            format!("aws_secret_access_key={s}x"),
            format!("aws_secret_access_key={}", &s[..39]),
            format!("key_id: {s}"),
        ] {
            assert!(found(n, &t).is_empty(), "{t}");
        }
    }

    #[test]
    fn private_key() {
        let n = "private_key";
        assert_eq!(found(n, PEM), [PEM]);
        let text = format!("key:\n{PEM}\ncert follows");
        assert_eq!(found(n, &text), [PEM]);
        // Other kinds, and a truncated key runs to the end.
        let ssh = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
        assert_eq!(found(n, &format!("x {ssh} y")), [ssh]);
        let cut = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC";
        assert_eq!(found(n, &format!("a {cut}")), [cut]);
        let pgp =
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\nlQOYBF\n-----END PGP PRIVATE KEY BLOCK-----";
        assert_eq!(found(n, pgp), [pgp]);
        // Two keys, each to its own END.
        let two = format!("{PEM}\n{ssh}");
        assert_eq!(found(n, &two), [PEM, ssh]);
        // Public keys and certificates are not secrets.
        for t in [
            "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkq\n-----END PUBLIC KEY-----",
            "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----",
        ] {
            assert!(found(n, t).is_empty(), "{t}");
        }
    }

    #[test]
    fn github_token() {
        let n = "github_token";
        let classic = format!("ghp_{}", "aB3dE5gH7jK9mN1pQ3sT5vW7yZ9bC1dE3fG5");
        assert_eq!(classic.len(), 40);
        assert_eq!(found(n, &classic), [classic.as_str()]);
        let t = format!("Authorization: token {classic}\n");
        assert_eq!(found(n, &t), [classic.as_str()]);
        let fine = "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyz";
        assert_eq!(found(n, &format!("GH={fine}")), [fine]);
        // No `gh` anywhere but in `github_pat_`'s own prefix.
        let plain = "github_pat_11AAAAAAA0123456789_ZZZZZZZZZZZZZZZZZZZZZZ";
        assert_eq!(found(n, plain), [plain]);
        for t in [
            format!("ghp_{}", "a".repeat(35)),
            format!("ghx_{}", "a".repeat(36)),
            "github_pat_short".to_string(),
            "ghost_town_of_the_mountains_and_the_valley".to_string(),
        ] {
            assert!(found(n, &t).is_empty(), "{t}");
        }
    }

    #[test]
    fn slack_token() {
        let n = "slack_token";
        let bot = "xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx";
        assert_eq!(found(n, &format!("SLACK={bot}")), [bot]);
        let hook = "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX";
        assert_eq!(
            found(n, hook),
            ["T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"]
        );
        for t in [
            "xoxb-short",
            "xoxz-1234567890abc",
            "https://slack.com/services/x",
        ] {
            assert!(found(n, t).is_empty(), "{t}");
        }
    }

    #[test]
    fn jwt() {
        let n = "jwt";
        assert_eq!(found(n, JWT), [JWT]);
        assert_eq!(found(n, &format!("Bearer {JWT}")), [JWT]);
        for t in [
            "eyJ",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0",
            "eyJhbGciOiJIUzI1NiJ9.notjson.signaturesignature",
        ] {
            assert!(found(n, t).is_empty(), "{t}");
        }
    }

    #[test]
    fn password_in_url() {
        let n = "password_in_url";
        assert_eq!(found(n, "postgres://u:p4ss@h/db"), ["p4ss"]);
        assert_eq!(found(n, "redis://:s3cret@cache:6379/0"), ["s3cret"]);
        assert_eq!(
            found(n, "see https://bob:p@ss@w0rd@example.com/x"),
            ["p@ss@w0rd"]
        );
        assert_eq!(
            found(n, "a=postgresql://app:one@db1/x b=mysql://root:two@db2"),
            ["one", "two"]
        );
        for t in [
            "https://example.com/path",
            "https://example.com:8443/path?a=b@c",
            "https://user@example.com/",
            "mailto:bob@example.com",
            "http://host:80 and bob@example.com",
        ] {
            assert!(found(n, t).is_empty(), "{t}");
        }
    }

    #[test]
    fn generic_api_key() {
        let n = "generic_api_key";
        assert_eq!(found(n, "api_key=abcd1234efgh"), ["abcd1234efgh"]);
        assert_eq!(
            found(n, "https://x/?apikey=abcd1234efgh&q=1"),
            ["abcd1234efgh"]
        );
        assert_eq!(
            found(
                n,
                r#"{"password": "correct-horse", "Access_Token":"tok_12345678"}"#
            ),
            ["correct-horse", "tok_12345678"]
        );
        assert_eq!(found(n, "PASSWORD = 'hunter2hunter2';"), ["hunter2hunter2"]);
        assert_eq!(found(n, "client_secret:s3cr3t-value"), ["s3cr3t-value"]);
        for t in [
            "password=short",
            "token: null",
            "password_hash=$2b$12$abcdefghijk",
            "PWD=/home/runner/work/repo",
            "OLDPWD=/home/runner",
            "secretary=Jane Doe-Smith",
            "the token is somewhere else",
        ] {
            assert!(found(n, t).is_empty(), "{t}");
        }
    }

    #[test]
    fn clean_values_are_left_alone() {
        let d = all();
        for t in [
            "",
            "user-1",
            "user-123",
            "hello world",
            "2024-01-01",
            "2024-01-01T12:34:56.789Z",
            "550e8400-e29b-41d4-a716-446655440000",
            "550E8400-E29B-41D4-A716-446655440000",
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
            "https://example.com/path",
            "eyJ",
            "Dear customer, your order #12345 ships today: ETA 2 days.",
            "{\"id\": 7, \"name\": \"Ada\", \"tags\": [\"a\", \"b\"]}",
            "ALTER TABLE users ADD COLUMN email text",
        ] {
            assert!(d.find(t).is_empty(), "{t}: {:?}", d.find(t));
            assert_eq!(redact(&d, t), None);
        }
    }

    #[test]
    fn overlaps_are_merged() {
        let d = all();
        // The JWT is also the value of `token=`.
        let t = format!("token={JWT}&x=1");
        let f = d.find(&t);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(&t[f[0].0.clone()], JWT);
        // Same range from both: named after the detector listed first.
        assert_eq!(f[0].1, "jwt");
        // A URL password that is also an access key id, plus a later key.
        let t = "s3://AKIA:AKIAIOSFODNN7EXAMPLE@bucket/ key2 AKIAIOSFODNN7EXAMPLF";
        let f = d.find(t);
        assert_eq!(
            f.iter().map(|(r, _)| &t[r.clone()]).collect::<Vec<_>>(),
            ["AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLF"]
        );
        // Partial overlap: the union.
        let t = format!("password={PEM}");
        let f = d.find(&t);
        assert_eq!(f.len(), 1);
        assert_eq!(&t[f[0].0.clone()], PEM);
        assert!(f.windows(2).all(|w| w[0].0.end <= w[1].0.start));
    }

    #[test]
    fn masking_keeps_the_surrounding_text() {
        let d = all();
        assert_eq!(
            redact(&d, "postgres://app:s3cret@db/x").as_deref(),
            Some("postgres://app:********@db/x")
        );
        assert_eq!(
            redact(&d, "ключ AKIAIOSFODNN7EXAMPLE — ok ✓").as_deref(),
            Some("ключ ******** — ok ✓")
        );
        assert_eq!(
            redact(&d, "é=AKIAIOSFODNN7EXAMPLE,password=pässwört123;").as_deref(),
            Some("é=********,password=********;")
        );
        let (m, n) = d
            .mask(
                "a AKIAIOSFODNN7EXAMPLE b api_key=abcd1234efgh",
                MaskStrategy::Partial,
                &test_key(),
            )
            .expect("found");
        assert_eq!(n, 2);
        assert_eq!(m, Masked::Value(b"a ****MPLE b api_key=****efgh".to_vec()));
    }

    #[test]
    fn null_is_null_only_for_a_whole_value() {
        let d = all();
        let k = test_key();
        assert_eq!(
            d.mask("AKIAIOSFODNN7EXAMPLE", MaskStrategy::Null, &k),
            Some((Masked::Null, 1))
        );
        assert_eq!(
            d.mask("id AKIAIOSFODNN7EXAMPLE", MaskStrategy::Null, &k),
            Some((Masked::Value(b"id ********".to_vec()), 1))
        );
        assert_eq!(d.mask("nothing here", MaskStrategy::Null, &k), None);
    }

    #[test]
    fn hash_correlates_equal_secrets() {
        let d = all();
        let k = test_key();
        let masked = |t: &str| match d.mask(t, MaskStrategy::Hash, &k) {
            Some((Masked::Value(v), _)) => String::from_utf8(v).expect("utf-8"),
            other => panic!("{other:?}"),
        };
        let a = masked("u=postgres://a:pw-one-1@h");
        let b = masked("v=postgres://b:pw-one-1@h");
        let c = masked("u=postgres://a:pw-two-2@h");
        assert_eq!(a[15..], b[15..]);
        assert_ne!(a, c);
        assert!(a.starts_with("u=postgres://a:hmac:"));
    }

    /// `cargo test --release -p interceptor --lib mask -- --ignored --nocapture`
    #[test]
    #[ignore = "micro benchmark"]
    fn bench_clean_values() {
        use std::{hint::black_box, time::Instant};
        let d = all();
        let k = test_key();
        let values: Vec<String> = (0..1000)
            .map(|i| match i % 8 {
                0 => format!("user-{i}"),
                1 => format!("2024-01-{:02}", i % 28 + 1),
                2 => "hello world".to_string(),
                3 => format!("{i}"),
                4 => format!("item {i} in stock"),
                5 => format!("2024-01-01T12:{:02}:00Z", i % 60),
                6 => "550e8400-e29b-41d4-a716-446655440000".to_string(),
                _ => format!("user{i}@example.com"),
            })
            .collect();
        let run = |label: &str, values: &[String], rounds: usize| {
            let start = Instant::now();
            let mut hits = 0usize;
            for _ in 0..rounds {
                for v in values {
                    if black_box(&d)
                        .mask(black_box(v), MaskStrategy::Redact, &k)
                        .is_some()
                    {
                        hits += 1;
                    }
                }
            }
            let n = rounds * values.len();
            let ns = start.elapsed().as_nanos() as f64 / n as f64;
            println!("{label}: {ns:.1} ns/value over {n} values ({hits} masked)");
        };
        run("clean short values", &values, 1000);
        let medium: Vec<String> = (0..100)
            .map(|i| {
                format!(
                    "{{\"id\": {i}, \"name\": \"customer {i}\", \"email\": \"c{i}@example.com\", \
                     \"created\": \"2024-01-01T00:00:00Z\", \"note\": \"Lorem ipsum dolor sit amet\"}}"
                )
            })
            .collect();
        run("clean ~150-byte JSON values", &medium, 1000);
        let dirty: Vec<String> = (0..100)
            .map(|i| format!("conn{i}=postgres://app:s3cret{i}@db/x"))
            .collect();
        run("values with a URL password", &dirty, 100);
    }
}
