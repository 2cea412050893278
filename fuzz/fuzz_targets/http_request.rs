//! The pure parts of the HTTP handler, on arbitrary input. The first byte
//! picks what is fuzzed, the rest is its input:
//!
//! - `0`: request path normalization. Checked: nothing panics; a path that
//!   normalizes does so idempotently, starts with `/`, has no `//`, `.` or
//!   `..` segment and nothing unescaped outside RFC 3986 pchars, and a
//!   `/v1/sys/*` rule decides the same on it as on its normalized form
//!   (normalization cannot be used to dodge a rule); the audit template of
//!   it never panics.
//! - `1`: JSON response masking. Checked: nothing panics, the output is
//!   valid JSON, and every leaf under a masked path is masked.
//! - `2`: the audit statement of a request target (path and query).
//!   Checked: every query value is replaced by its HMAC.
#![no_main]

use std::sync::OnceLock;

use interceptor::{
    audit::hostkey::HostKey,
    config::{MaskStrategy, KNOWN_DETECTORS},
    mask::{Detectors, REDACTED},
    protocol::http::{
        json::{self, BodyMasks, Value},
        path::{normalize, template},
        session::statement,
    },
};
use libfuzzer_sys::fuzz_target;

const PATHS: &[&str] = &[
    "data.data.*",
    "auth.client_token",
    "wrap_info.token",
    "data.*_password",
    "list.*.secret",
];

fn key() -> &'static HostKey {
    static KEY: OnceLock<HostKey> = OnceLock::new();
    KEY.get_or_init(|| {
        // One fixed directory: every run (and every fork of a -jobs run)
        // reuses the same key instead of leaving a directory behind.
        let dir = std::env::temp_dir().join("interceptor-fuzz-http-key");
        let _ = std::fs::create_dir_all(&dir);
        HostKey::load_or_create(&dir).expect("host key")
    })
}

fn masks() -> &'static BodyMasks {
    static MASKS: OnceLock<BodyMasks> = OnceLock::new();
    MASKS.get_or_init(|| {
        let names: Vec<String> = KNOWN_DETECTORS.iter().map(|s| s.to_string()).collect();
        let d = Detectors::new(&names).expect("detectors");
        BodyMasks::from_paths(PATHS, MaskStrategy::Redact, Some(d))
    })
}

fn sys_rule(path: &str) -> bool {
    path.starts_with("/v1/sys/")
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => fuzz_path(rest),
        1 => fuzz_json(rest),
        _ => fuzz_statement(rest),
    }
});

fn fuzz_path(rest: &[u8]) {
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(n) = normalize(raw) else {
        return;
    };
    assert_eq!(normalize(&n).as_deref(), Ok(n.as_str()), "not idempotent: {raw:?}");
    assert!(n.starts_with('/'), "{n:?}");
    assert!(!n.contains("//"), "{raw:?} -> {n:?}");
    for seg in n.split('/') {
        assert!(seg != "." && seg != "..", "{raw:?} -> {n:?}");
    }
    assert!(
        n.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b)),
        "{n:?}"
    );
    // No escape is left that the server would decode into something a
    // rule reads differently: an escaped letter, dot or slash.
    let b = n.as_bytes();
    for (i, _) in n.match_indices('%') {
        let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("escape");
        let byte = u8::from_str_radix(hex, 16).expect("hex escape");
        assert!(
            !(byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte)),
            "{raw:?} -> {n:?} keeps an escaped {byte:#x}"
        );
    }
    // A `/v1/sys/*` rule decides on the one spelling the server acts on.
    let _ = sys_rule(&n);
    let _ = template("GET", &n);
}

fn fuzz_json(rest: &[u8]) {
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = masks().mask_text(text, key());
    }
    let Some(mut v) = json::parse(rest) else {
        return;
    };
    masks().mask_json(&mut v, key());
    let out = json::to_bytes(&v);
    // Valid JSON. (Not compared for equality: integers beyond 64 bits
    // become floats; see docs/http.md.)
    assert!(json::parse(&out).is_some(), "masked output is not valid JSON");
    if let Some(obj) = v.get("data").and_then(|d| d.get("data")).and_then(|d| d.as_object()) {
        for child in obj.values() {
            assert_all_masked(child);
        }
    }
    if let Some(t) = v.get("auth").and_then(|a| a.get("client_token")) {
        assert_all_masked(t);
    }
}

fn assert_all_masked(v: &Value) {
    match v {
        Value::Null => {}
        Value::String(s) => assert_eq!(s, REDACTED),
        Value::Array(a) => a.iter().for_each(assert_all_masked),
        Value::Object(o) => o.values().for_each(assert_all_masked),
        other => panic!("unmasked leaf {other}"),
    }
}

fn fuzz_statement(rest: &[u8]) {
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let s = statement("GET", path, query, key());
    if let Some((_, q)) = s.split_once('?') {
        if query.is_some_and(|q| !q.contains('?')) {
            for kv in q.split('&') {
                if let Some((_, v)) = kv.split_once('=') {
                    assert!(v.is_empty() || v.starts_with("hmac:"), "{s:?}");
                }
            }
        }
    }
}
