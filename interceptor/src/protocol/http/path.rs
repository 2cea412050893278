//! Request paths as the store will route them, so that rules decide on the
//! same path the server acts on.
//!
//! Vault and OpenBao (Go's `net/url`) decode the whole path once, `%2F`
//! included, and then route on the decoded path. A rule on `/v1/sys/*` must
//! therefore see `/v1/%73ys/seal`, `/v1/sys%2Fseal`, `/v1//sys/seal`,
//! `/v1/./sys/seal` and `/v1/secret/../sys/seal` as `/v1/sys/seal`. The
//! proxy decodes every escape, splits at every `/` (an encoded slash is a
//! slash, as the server reads it), removes `.` and `..` segments and empty
//! segments, re-encodes what must be encoded, and forwards that path: the
//! server receives exactly what the rules saw. Paths that cannot be read
//! one way only are refused (fail closed): bad escapes, decoded control
//! characters or invalid UTF-8, `..` above the root, anything not starting
//! with `/`.

use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    NotAbsolute,
    BadEscape,
    NotUtf8,
    ControlCharacter,
    AboveRoot,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the request path does not start with /",
            PathError::BadEscape => "the request path has a malformed %-escape",
            PathError::NotUtf8 => "the request path does not decode to UTF-8",
            PathError::ControlCharacter => "the request path decodes to a control character",
            PathError::AboveRoot => "the request path climbs above / with ..",
        })
    }
}

/// The normalized form of `raw` (the path of the request target, without
/// the query): decoded, dot segments resolved, `//` collapsed, re-encoded.
/// A trailing `/` is kept (Vault tells `LIST foo/` from `foo`). Idempotent.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let decoded = percent_decode(rest.as_bytes())?;
    let decoded = String::from_utf8(decoded).map_err(|_| PathError::NotUtf8)?;
    if decoded.chars().any(|c| c.is_control()) {
        return Err(PathError::ControlCharacter);
    }
    let mut segments: Vec<&str> = Vec::new();
    let mut trailing = false;
    for seg in decoded.split('/') {
        trailing = false;
        match seg {
            "" | "." => trailing = true,
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
                trailing = true;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(raw.len());
    for s in &segments {
        out.push('/');
        encode_segment(s, &mut out);
    }
    if trailing || segments.is_empty() {
        out.push('/');
    }
    Ok(out)
}

fn percent_decode(input: &[u8]) -> Result<Vec<u8>, PathError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' {
            let hex = input.get(i + 1..i + 3).ok_or(PathError::BadEscape)?;
            let hi = hex_val(hex[0]).ok_or(PathError::BadEscape)?;
            let lo = hex_val(hex[1]).ok_or(PathError::BadEscape)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(input[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 `pchar` minus `%`: what may appear unescaped in a segment.
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

fn encode_segment(seg: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in seg.as_bytes() {
        if is_pchar(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// The command kind of a request for the audit trail: its method and the
/// path with the secret's own name replaced by `{path}`, so that events
/// group by what was done (`GET /v1/secret/data/{path}`). The full path is
/// the event's target. Mount depth is not known to the proxy: this is a
/// heuristic on Vault's layout (`sys/...` kept up to 3 segments,
/// `auth/<method>/<op>`, KV v2 `<mount>/data|metadata|...`, else `<mount>`).
pub fn template(method: &str, path: &str) -> String {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return format!("{method} {path}");
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let keep = match segs.first().copied() {
        Some("sys") => 4,
        Some("auth") => 3,
        Some(_) => match segs.get(1).copied() {
            Some(
                "data" | "metadata" | "delete" | "undelete" | "destroy" | "subkeys" | "creds"
                | "issue" | "sign" | "roles" | "config" | "login",
            ) => 2,
            _ => 1,
        },
        None => 0,
    };
    let mut out = format!("{method} /v1");
    for s in segs.iter().take(keep) {
        out.push('/');
        out.push_str(s);
    }
    if segs.len() > keep {
        out.push_str("/{path}");
    } else if path.ends_with('/') && !segs.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bypass_attempts_normalize_to_the_real_path() {
        for raw in [
            "/v1/sys/seal",
            "/v1//sys/seal",
            "/v1/./sys/seal",
            "/v1/secret/../sys/seal",
            "/v1/%73ys/seal",
            "/v1/%73%79%73/seal",
            "/v1/sys%2Fseal",
            "/v1/sys%2fseal",
            "/v1/secret/%2E%2E/sys/seal",
            "/v1/secret%2F..%2Fsys/seal",
            "//v1///sys/./seal",
            "/v1/x/y/../../sys/seal",
        ] {
            assert_eq!(normalize(raw).as_deref(), Ok("/v1/sys/seal"), "{raw}");
        }
    }

    #[test]
    fn trailing_slash_and_root_are_kept() {
        assert_eq!(
            normalize("/v1/secret/metadata/").unwrap(),
            "/v1/secret/metadata/"
        );
        assert_eq!(
            normalize("/v1/secret/metadata/.").unwrap(),
            "/v1/secret/metadata/"
        );
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/v1/..").unwrap(), "/");
    }

    #[test]
    fn unnormalizable_paths_are_refused() {
        assert_eq!(normalize("v1/sys"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/v1/%zz"), Err(PathError::BadEscape));
        assert_eq!(normalize("/v1/%7"), Err(PathError::BadEscape));
        assert_eq!(normalize("/v1/%ff"), Err(PathError::NotUtf8));
        assert_eq!(normalize("/v1/a%00b"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("/v1/a%0Ab"), Err(PathError::ControlCharacter));
        assert_eq!(normalize("/v1/../.."), Err(PathError::AboveRoot));
    }

    #[test]
    fn characters_that_need_escaping_stay_escaped_and_it_is_idempotent() {
        let n = normalize("/v1/secret/data/a%20b%3Fc%23d%25e%252F").unwrap();
        assert_eq!(n, "/v1/secret/data/a%20b%3Fc%23d%25e%252F");
        assert_eq!(normalize(&n).unwrap(), n);
        assert_eq!(
            normalize("/v1/secret/data/caf%C3%A9").unwrap(),
            "/v1/secret/data/caf%C3%A9"
        );
        assert_eq!(
            normalize("/v1/secret/data/café").unwrap(),
            "/v1/secret/data/caf%C3%A9"
        );
        // A double-encoded slash is a literal "%2F" to the server, not a slash.
        assert_eq!(normalize("/v1/sys%252Fseal").unwrap(), "/v1/sys%252Fseal");
    }

    #[test]
    fn templates_keep_the_kind_and_drop_the_secret_name() {
        assert_eq!(
            template("GET", "/v1/secret/data/app/db"),
            "GET /v1/secret/data/{path}"
        );
        assert_eq!(template("GET", "/v1/kv/app"), "GET /v1/kv/{path}");
        assert_eq!(
            template("LIST", "/v1/secret/metadata/"),
            "LIST /v1/secret/metadata/"
        );
        assert_eq!(
            template("POST", "/v1/sys/wrapping/unwrap"),
            "POST /v1/sys/wrapping/unwrap"
        );
        assert_eq!(
            template("GET", "/v1/auth/token/lookup-self"),
            "GET /v1/auth/token/lookup-self"
        );
        assert_eq!(
            template("POST", "/v1/auth/approle/login"),
            "POST /v1/auth/approle/login"
        );
        assert_eq!(template("GET", "/healthz"), "GET /healthz");
    }
}
