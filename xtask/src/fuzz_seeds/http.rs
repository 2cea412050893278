//! Seeds for the `http_request` fuzz target: the first byte picks what is
//! fuzzed (0 path normalization, 1 JSON masking, 2 audit statement).

pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |name: &'static str, which: u8, body: &[u8]| {
        let mut v = vec![which];
        v.extend_from_slice(body);
        out.push(("http_request", name, v));
    };
    for (name, p) in [
        ("path-plain", "/v1/secret/data/app"),
        ("path-double-slash", "/v1//sys/seal"),
        ("path-dot", "/v1/./sys/seal"),
        ("path-dotdot", "/v1/secret/../sys/seal"),
        ("path-escaped", "/v1/%73ys/seal"),
        ("path-escaped-slash", "/v1/sys%2Fseal"),
        ("path-escaped-dots", "/v1/secret/%2e%2e/sys/seal"),
        ("path-double-escaped", "/v1/sys%252Fseal"),
        ("path-bad-escape", "/v1/%zz"),
        ("path-above-root", "/v1/../../x"),
        ("path-utf8", "/v1/secret/data/caf%C3%A9/x/"),
    ] {
        add(name, 0, p.as_bytes());
    }
    for (name, j) in [
        (
            "json-kv2",
            r#"{"data":{"data":{"password":"p","n":1,"o":{"a":[true,null]}},"metadata":{"version":1}},"auth":null}"#,
        ),
        (
            "json-wrap",
            r#"{"wrap_info":{"token":"s.x","ttl":60},"auth":{"client_token":"s.y","accessor":"a"}}"#,
        ),
        (
            "json-detectors",
            r#"{"x":["AKIAIOSFODNN7EXAMPLE","ghp_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],"list":[{"secret":"s"}]}"#,
        ),
        (
            "json-deep",
            "[[[[[[[[[[[[[[[[[[[[[[[[{}]]]]]]]]]]]]]]]]]]]]]]]",
        ),
    ] {
        add(name, 1, j.as_bytes());
    }
    for (name, t) in [
        ("stmt-query", "/v1/secret/data/app?version=2&list=true"),
        ("stmt-token", "/v1/auth/token/lookup?token=s.abc&&x"),
        ("stmt-empty", "/v1/sys/health?"),
    ] {
        add(name, 2, t.as_bytes());
    }
    out
}
