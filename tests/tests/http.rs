//! The HTTP handler end to end: a real OpenBao dev server (`bao server
//! -dev`, plain and `-dev-tls`), real clients (`bao`, curl, hvac) started
//! inside the intercepted cgroup with `interceptor exec`, the shipped
//! default policy.
//!
//! Listener ports 966-985 belong to this file.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use interceptor_tests::{
    bao::{bao_bin, BaoServer, ROOT_TOKEN},
    expect_success as ok, files_under, output_text as text, require_root, store_at, wait_for,
    workspace_root, Daemon, StoreAt, TestCgroup,
};
use serde_json::{json, Value};

/// The python3 on PATH (the one hvac is installed into).
const PYTHON3: &str = "python3";
const REDACTED: &str = "********";

fn script() -> PathBuf {
    workspace_root().join("tests/scripts/http_client.py")
}

/// The shipped policies/default.toml with the test's [daemon] section, its
/// vault store pointed at `bao` (verify-full against the server's CA when
/// it speaks TLS), the other stores at unused addresses.
fn daemon(name: &str, port: u16, bao: &BaoServer) -> (TestCgroup, Daemon) {
    let cgroup = TestCgroup::new(name);
    let extra = if bao.tls {
        format!(
            "upstream_tls = \"verify-full\"\nupstream_ca = \"{}\"",
            bao.ca_path().display()
        )
    } else {
        String::new()
    };
    let vault = StoreAt {
        store: "vault",
        target: bao.addr(),
        extra: &extra,
    };
    let d = Daemon::with_default_policy(name, &cgroup, port, &[vault]);
    (cgroup, d)
}

fn json_of(s: &str) -> Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("bad JSON ({e}): {s}"))
}

/// The local CA, exported with the CLI as an operator would.
fn export_ca(d: &Daemon) -> PathBuf {
    let out = d.cli(&["ca", "export"]);
    assert!(out.status.success(), "ca export: {}", text(&out));
    let path = d.dir.path().join("exported-ca.pem");
    std::fs::write(&path, &out.stdout).expect("write CA");
    path
}

/// What clients inside the cgroup trust: the interceptor's CA over TLS.
struct Client {
    url: String,
    ca: Option<PathBuf>,
}

fn client(d: &Daemon, bao: &BaoServer) -> Client {
    Client {
        url: bao.url(),
        ca: bao.tls.then(|| export_ca(d)),
    }
}

/// `bao ARGS` inside the cgroup with BAO_ADDR/BAO_TOKEN/BAO_CACERT.
fn bao_cmd(d: &Daemon, c: &Client, token: &str, args: &[&str]) -> Command {
    let bin = bao_bin();
    let mut full = vec![bin.to_str().expect("utf-8")];
    full.extend_from_slice(args);
    let mut cmd = d.exec(&full);
    cmd.env("BAO_ADDR", &c.url)
        .env("BAO_TOKEN", token)
        .env("HOME", d.dir.path());
    if let Some(ca) = &c.ca {
        cmd.env("BAO_CACERT", ca);
    }
    cmd
}

/// curl inside the cgroup; `-w` appends the status on its own line.
fn curl(d: &Daemon, c: &Client, args: &[&str]) -> (u16, String) {
    let mut full = vec!["curl", "-sS", "--path-as-is", "-w", "\n%{http_code}"];
    let ca;
    if let Some(p) = &c.ca {
        ca = p.display().to_string();
        full.push("--cacert");
        full.push(&ca);
    }
    full.extend_from_slice(args);
    let out = ok(d.exec(&full).output().expect("curl"), "curl", d);
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_string())
}

fn hvac(d: &Daemon, c: &Client, args: &[&str]) -> Value {
    let s = script();
    let mut full = vec![PYTHON3, s.to_str().expect("utf-8")];
    full.extend_from_slice(args);
    full.insert(3, &c.url);
    let ca = c.ca.as_ref().map(|p| p.display().to_string());
    if let Some(ca) = &ca {
        full.push(ca);
    }
    // hvac reads VAULT_TOKEN and ~/.vault-token when it has no token: keep
    // the machine's out of the test.
    let out = d
        .exec(&full)
        .env("HOME", d.dir.path())
        .env_remove("VAULT_TOKEN")
        .env_remove("BAO_TOKEN")
        .output()
        .expect("python");
    json_of(&ok(out, "http_client.py", d))
}

/// Events of the vault store once every session has ended.
fn events(d: &Daemon) -> Vec<Value> {
    d.wait_sessions_closed();
    d.flushed_rows("events", "vault")
}

/// Sessions of the vault store once every session has ended.
fn sessions(d: &Daemon) -> Vec<Value> {
    d.wait_sessions_closed();
    d.flushed_rows("sessions", "vault")
}

fn assert_kv2_masked(v: &Value, what: &str) {
    let data = &v["data"]["data"];
    assert_eq!(data["password"], REDACTED, "{what}: {v}");
    assert_eq!(data["api_key"], REDACTED, "{what}: {v}");
    assert_eq!(data["port"], REDACTED, "{what}: {v}");
    assert_eq!(v["data"]["metadata"]["version"], 1, "{what}: metadata: {v}");
    assert!(
        v["data"]["metadata"]["created_time"].is_string(),
        "{what}: metadata: {v}"
    );
    assert!(!v.to_string().contains("hunter2"), "{what}: {v}");
    let meta = &v["data"]["metadata"]["custom_metadata"];
    if !meta.is_null() {
        assert_eq!(meta["owner"], "ci", "{what}: {v}");
        let note = meta["note"].as_str().unwrap_or_default();
        assert!(
            note.starts_with("old key ") && !note.contains("AKIA"),
            "{what}: {v}"
        );
    }
}

const SECRET: &str = "hunter2-very-secret";

fn put_app_secret(bao: &BaoServer) {
    bao.put_kv2(
        "app",
        &json!({"password": SECRET, "api_key": "k-123456789", "port": 5432}),
    );
}

/// bao, curl and hvac read a KV v2 secret: the configured fields masked,
/// the metadata intact. Over plain HTTP or TLS on both legs.
fn kv2_read_masked(name: &str, port: u16, tls: bool) {
    require_root();
    let bao = BaoServer::start(tls);
    put_app_secret(&bao);
    // A credential where no JSON path masks it: the detectors find it.
    let v = bao.api(
        "POST",
        "/v1/secret/metadata/app",
        Some(&json!({"custom_metadata": {"note": "old key AKIAIOSFODNN7EXAMPLE", "owner": "ci"}})),
        &[],
    );
    assert!(v.get("errors").is_none(), "{v}");
    let (_cg, d) = daemon(name, port, &bao);
    let c = client(&d, &bao);

    let out = ok(
        bao_cmd(
            &d,
            &c,
            ROOT_TOKEN,
            &["kv", "get", "-format=json", "secret/app"],
        )
        .output()
        .expect("bao"),
        "bao kv get",
        &d,
    );
    assert_kv2_masked(&json_of(&out), "bao kv get");

    let (code, body) = curl(
        &d,
        &c,
        &[
            "-H",
            "X-Vault-Token: root",
            &format!("{}/v1/secret/data/app", c.url),
        ],
    );
    assert_eq!(code, 200, "{body}");
    let v = json_of(&body);
    assert!(
        v["data"]["metadata"]["custom_metadata"]["note"].is_string(),
        "the detector check saw the note: {v}"
    );
    assert_kv2_masked(&v, "curl");

    let v = hvac(&d, &c, &["hvac", ROOT_TOKEN, "app"]);
    assert_kv2_masked(&v, "hvac");

    // Without the interceptor in the way, the server has the real value.
    let direct = bao.api("GET", "/v1/secret/data/app", None, &[]);
    assert_eq!(direct["data"]["data"]["password"], SECRET);

    let s = sessions(&d);
    assert!(s.len() >= 3, "{s:?}");
    for s in &s {
        assert_eq!(s["client_tls"], tls, "{s}");
        assert_eq!(s["upstream_tls"], tls, "{s}");
        assert!(
            s["masked_values"].as_u64().unwrap_or(0) >= 3,
            "every client read the secret: {s}"
        );
    }
}

#[test]
fn kv2_read_through_bao_curl_and_hvac_is_masked_over_http() {
    kv2_read_masked("http-kv-plain", 966, false);
}

#[test]
fn kv2_read_through_bao_curl_and_hvac_is_masked_over_tls() {
    kv2_read_masked("http-kv-tls", 967, true);
}

#[test]
fn tls_by_hostname_sends_sni_and_verifies_the_store_by_that_name() {
    require_root();
    let bao = BaoServer::start(true);
    put_app_secret(&bao);
    let (_cg, d) = daemon("http-sni", 968, &bao);
    let c = client(&d, &bao);
    let url = format!("https://localhost:{}/v1/secret/data/app", bao.port);
    let (code, body) = curl(
        &d,
        &c,
        &[
            "--resolve",
            &format!("localhost:{}:127.0.0.1", bao.port),
            "-H",
            "X-Vault-Token: root",
            &url,
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert_kv2_masked(&json_of(&body), "curl by hostname");
    // A client that does not trust the interceptor's CA is refused by its
    // own TLS check: the proxy presents its own certificate.
    let out = d
        .exec(&[
            "curl",
            "-sS",
            "--cacert",
            bao.ca_path().to_str().expect("utf-8"),
            &url,
        ])
        .output()
        .expect("curl");
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn denied_sys_paths_get_403_json_and_normalization_bypasses_fail() {
    require_root();
    let bao = BaoServer::start(false);
    put_app_secret(&bao);
    let (_cg, d) = daemon("http-deny", 969, &bao);
    let c = client(&d, &bao);
    let base = c.url.clone();
    for path in [
        "/v1/sys/mounts",
        "/v1//sys/mounts",
        "/v1/./sys/mounts",
        "/v1/secret/../sys/mounts",
        "/v1/%73ys/mounts",
        "/v1/sys%2Fmounts",
        "/v1/secret/%2e%2e/sys/mounts",
        "/v1/sys/policies/acl/../../sys/mounts",
        // A namespace given as a path prefix.
        "/v1/ns1/sys/mounts",
        "/v1/ns1/ns2/%73ys/mounts",
    ] {
        let (code, body) = curl(
            &d,
            &c,
            &[
                "-D",
                "-",
                "-H",
                "X-Vault-Token: root",
                &format!("{base}{path}"),
            ],
        );
        assert_eq!(code, 403, "{path}: {body}");
        let lower = body.to_ascii_lowercase();
        assert!(
            lower.contains("content-type: application/json"),
            "{path}: {body}"
        );
        let json = &body[body.find("\r\n\r\n").expect("headers") + 4..];
        let v = json_of(json);
        let msg = v["errors"][0].as_str().unwrap_or_default();
        assert!(msg.starts_with("interceptor: "), "{path}: {v}");
        assert!(msg.contains("(rule \"no-vault-sys-admin\")"), "{path}: {v}");
    }
    // POST is PUT to Vault: a method rule cannot be dodged by switching.
    let (code, body) = curl(
        &d,
        &c,
        &[
            "-X",
            "DELETE",
            "-H",
            "X-Vault-Token: root",
            &format!("{base}/v1/sys/mounts/secret"),
        ],
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("no-vault-sys-deletes"), "{body}");
    // WebSocket upgrades are refused; an h2c offer is served as HTTP/1.1.
    let (code, body) = curl(
        &d,
        &c,
        &[
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            &format!("{base}/v1/sys/health"),
        ],
    );
    assert_eq!(code, 501, "{body}");
    let (code, body) = curl(&d, &c, &["--http2", &format!("{base}/v1/sys/health")]);
    assert_eq!(code, 200, "{body}");
    // An unreadable path is refused, not guessed at.
    let (code, body) = curl(
        &d,
        &c,
        &["-H", "X-Vault-Token: root", &format!("{base}/v1/%zz/x")],
    );
    assert_eq!(code, 400, "{body}");
    // One connection: denied, then allowed, then denied again.
    let (code, body) = curl(
        &d,
        &c,
        &[
            "-H",
            "X-Vault-Token: root",
            &format!("{base}/v1/sys/mounts"),
            &format!("{base}/v1/sys/health"),
            &format!("{base}/v1/secret/data/app"),
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("no-vault-sys-admin"), "{body}");
    assert!(body.contains("\"initialized\":true"), "{body}");
    assert!(body.contains(REDACTED), "{body}");
    let s = sessions(&d);
    let one = s
        .iter()
        .find(|s| s["commands"] == 3)
        .unwrap_or_else(|| panic!("one session with 3 requests: {s:?}"));
    assert_eq!(one["denied"], 1, "{one}");
    // A denied request with a body: the connection goes on (the body is
    // read and dropped), the next request reuses it.
    let out = ok(
        d.exec(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            "-H",
            "X-Vault-Token: root",
            "--data",
            "{\"type\":\"kv\"}",
            &format!("{base}/v1/sys/mounts/other"),
            "--next",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            &format!("{base}/v1/sys/health"),
        ])
        .output()
        .expect("curl"),
        "curl --next",
        &d,
    );
    assert_eq!(out, "403 1\n200 0\n", "denied POST then reuse: {out:?}");
    // What the policy keeps working.
    let (code, body) = curl(
        &d,
        &c,
        &[
            "-H",
            "X-Vault-Token: root",
            &format!("{base}/v1/auth/token/lookup-self"),
        ],
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(&d, &c, &[&format!("{base}/v1/sys/health")]);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn response_wrapping_and_unwrap_are_masked() {
    require_root();
    let bao = BaoServer::start(false);
    put_app_secret(&bao);
    let (_cg, d) = daemon("http-wrap", 970, &bao);
    let c = client(&d, &bao);

    let out = ok(
        bao_cmd(
            &d,
            &c,
            ROOT_TOKEN,
            &["kv", "get", "-wrap-ttl=60s", "-format=json", "secret/app"],
        )
        .output()
        .expect("bao"),
        "bao kv get -wrap-ttl",
        &d,
    );
    let v = json_of(&out);
    assert_eq!(v["wrap_info"]["token"], REDACTED, "{v}");
    assert_eq!(v["wrap_info"]["ttl"], 60, "{v}");

    // Wrapping tokens obtained directly from the server, outside the
    // cgroup, then unwrapped through the proxy: the payload is masked.
    let wrapped = std::cell::RefCell::new(Vec::<String>::new());
    let wrap = |bao: &BaoServer| {
        let w = bao.api(
            "GET",
            "/v1/secret/data/app",
            None,
            &["-H", "X-Vault-Wrap-TTL: 60s"],
        );
        let t = w["wrap_info"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{w}"))
            .to_string();
        wrapped.borrow_mut().push(t.clone());
        t
    };
    let t = wrap(&bao);
    let (code, body) = curl(
        &d,
        &c,
        &[
            "-X",
            "POST",
            "-H",
            &format!("X-Vault-Token: {t}"),
            &format!("{}/v1/sys/wrapping/unwrap", c.url),
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert_kv2_masked(&json_of(&body), "curl unwrap");

    // The two ways Vault lets a client unwrap: the wrapping token as the
    // client token, or another token in the header and the wrapping token
    // in the body. hvac and bao each do both.
    let t = wrap(&bao);
    let v = hvac(&d, &c, &["hvac_unwrap", &t, "-"]);
    assert_kv2_masked(&v, "hvac unwrap, wrapping token as the client token");
    let t = wrap(&bao);
    let v = hvac(&d, &c, &["hvac_unwrap", &t, ROOT_TOKEN]);
    assert_kv2_masked(&v, "hvac unwrap, wrapping token in the body");

    let t = wrap(&bao);
    let out = ok(
        bao_cmd(&d, &c, &t, &["unwrap", "-format=json"])
            .output()
            .expect("bao"),
        "bao unwrap",
        &d,
    );
    assert_kv2_masked(&json_of(&out), "bao unwrap");
    let t = wrap(&bao);
    let out = ok(
        bao_cmd(&d, &c, ROOT_TOKEN, &["unwrap", "-format=json", &t])
            .output()
            .expect("bao"),
        "bao unwrap TOKEN",
        &d,
    );
    assert_kv2_masked(&json_of(&out), "bao unwrap TOKEN (in the body)");

    // Neither way leaves a wrapping token in the audit trail: not the
    // header, not the body, not the command lines that carried them.
    d.flush();
    for path in files_under(&d.state_dir()) {
        let bytes = std::fs::read(&path).expect("read");
        let hay = String::from_utf8_lossy(&bytes);
        for t in wrapped.borrow().iter() {
            assert!(
                !hay.contains(t.as_str()),
                "{} holds the wrapping token {t}",
                path.display()
            );
        }
    }
}

/// The standard way a CI job authenticates: an AppRole (or JWT) login,
/// then calls with the token it returned. The token reaches the job (a
/// masked one would make every next call 403), and only its HMAC the audit
/// trail; minting child tokens is denied by its own rule.
#[test]
fn approle_login_hands_the_job_its_token_and_child_tokens_are_a_rule_decision() {
    require_root();
    let bao = BaoServer::start(false);
    put_app_secret(&bao);
    for (method, path, body) in [
        ("POST", "/v1/sys/auth/approle", json!({"type": "approle"})),
        (
            "PUT",
            "/v1/sys/policies/acl/ci-read",
            json!({"policy": "path \"secret/data/app\" { capabilities = [\"read\"] }"}),
        ),
        (
            "POST",
            "/v1/auth/approle/role/ci",
            json!({"token_policies": ["ci-read"], "token_ttl": "10m"}),
        ),
    ] {
        let v = bao.api(method, path, Some(&body), &[]);
        assert!(v.get("errors").is_none(), "{path}: {v}");
    }
    let role_id = bao.api("GET", "/v1/auth/approle/role/ci/role-id", None, &[])["data"]["role_id"]
        .as_str()
        .expect("role_id")
        .to_string();
    let secret_id = bao.api("POST", "/v1/auth/approle/role/ci/secret-id", None, &[])["data"]
        ["secret_id"]
        .as_str()
        .expect("secret_id")
        .to_string();
    let (_cg, d) = daemon("http-approle", 976, &bao);
    let c = client(&d, &bao);

    let secret_file = d.dir.path().join("secret-id");
    std::fs::write(&secret_file, &secret_id).expect("write secret id");
    let v = hvac(
        &d,
        &c,
        &["approle", &role_id, secret_file.to_str().expect("utf-8")],
    );
    let token = v["token"].as_str().unwrap_or_default().to_string();
    assert!(
        token.len() > 20 && token != REDACTED,
        "the job got its token: {v}"
    );
    assert_kv2_masked(&v["read"], "read with the AppRole token");

    // bao, the same way.
    let out = ok(
        bao_cmd(
            &d,
            &c,
            "",
            &[
                "write",
                "-format=json",
                "auth/approle/login",
                &format!("role_id={role_id}"),
                &format!("secret_id={secret_id}"),
            ],
        )
        .output()
        .expect("bao"),
        "bao write auth/approle/login",
        &d,
    );
    let login = json_of(&out);
    let bao_token = login["auth"]["client_token"].as_str().unwrap_or_default();
    assert!(bao_token.len() > 20 && bao_token != REDACTED, "{login}");
    let out = ok(
        bao_cmd(
            &d,
            &c,
            bao_token,
            &["kv", "get", "-format=json", "secret/app"],
        )
        .output()
        .expect("bao"),
        "bao kv get with the login token",
        &d,
    );
    assert_kv2_masked(&json_of(&out), "bao kv get with the login token");

    // Child tokens: denied by their rule, with its message.
    let out = bao_cmd(&d, &c, ROOT_TOKEN, &["token", "create", "-format=json"])
        .output()
        .expect("bao");
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && t.contains("no-vault-child-tokens"),
        "{t}"
    );

    // The tokens are in no audit file.
    d.wait_sessions_closed();
    d.flush();
    for path in files_under(&d.state_dir()) {
        let hay = String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned();
        for secret in [token.as_str(), bao_token, secret_id.as_str()] {
            assert!(!hay.contains(secret), "{} holds {secret}", path.display());
        }
    }
}

#[test]
fn audit_events_carry_method_path_status_decision_and_no_tokens() {
    require_root();
    let bao = BaoServer::start(false);
    put_app_secret(&bao);
    // A token of our own, so that its text is unique in the audit files.
    let token = "TokenThatMustNeverBeRecorded42";
    let created = bao.api(
        "POST",
        "/v1/auth/token/create",
        Some(&json!({"id": token, "policies": ["root"]})),
        &[],
    );
    assert_eq!(created["auth"]["client_token"], token, "{created}");
    let (_cg, d) = daemon("http-audit", 971, &bao);
    let c = client(&d, &bao);
    let base = c.url.clone();
    // The token goes in header files: on curl's command line it would be
    // in the session's cmdline, which is not this handler's to redact.
    let hdr_file = d.dir.path().join("token-header");
    std::fs::write(&hdr_file, format!("X-Vault-Token: {token}\n")).expect("write");
    let bearer_file = d.dir.path().join("bearer-header");
    std::fs::write(&bearer_file, format!("Authorization: Bearer {token}\n")).expect("write");
    let hdr = format!("@{}", hdr_file.display());
    let (code, body) = curl(
        &d,
        &c,
        &["-H", &hdr, &format!("{base}/v1/secret/data/app?version=1")],
    );
    assert_eq!(code, 200, "{body}");
    let (code, _) = curl(&d, &c, &["-H", &hdr, &format!("{base}/v1/sys/mounts")]);
    assert_eq!(code, 403);
    let (code, _) = curl(
        &d,
        &c,
        &["-H", &hdr, &format!("{base}/v1/secret/data/missing")],
    );
    assert_eq!(code, 404);
    let (code, body) = curl(
        &d,
        &c,
        &[
            "-H",
            &format!("@{}", bearer_file.display()),
            &format!("{base}/v1/auth/token/lookup-self"),
        ],
    );
    assert_eq!(code, 200, "{body}");

    let ev = events(&d);
    let read = ev
        .iter()
        .find(|e| e["target"] == "/v1/secret/data/app")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(read["command"], "GET /v1/secret/data/{path}", "{read}");
    assert_eq!(read["decision"], "mask", "{read}");
    assert_eq!(read["masked_values"], 3, "{read}");
    assert!(read["error"].is_null(), "{read}");
    let stmt = read["statement"].as_str().unwrap_or_default();
    assert!(
        stmt.starts_with("GET /v1/secret/data/app?version=hmac:"),
        "{read}"
    );
    assert!(read["bytes_down"].as_u64().unwrap_or(0) > 0, "{read}");
    assert!(read["duration_us"].as_i64().is_some(), "{read}");
    let deny = ev
        .iter()
        .find(|e| e["decision"] == "deny")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(deny["rule"], "no-vault-sys-admin", "{deny}");
    assert_eq!(deny["command"], "GET /v1/sys/mounts", "{deny}");
    let missing = ev
        .iter()
        .find(|e| e["target"] == "/v1/secret/data/missing")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert_eq!(missing["error"], "HTTP 404 Not Found", "{missing}");
    assert_eq!(missing["decision"], "allow", "{missing}");

    let s = sessions(&d);
    let hash = String::from_utf8_lossy(&d.cli(&["audit", "hash", token]).stdout)
        .trim()
        .to_string();
    assert!(hash.starts_with("hmac:"), "{hash}");
    assert!(
        s.len() == 4 && s.iter().all(|s| s["db_user"] == hash.as_str()),
        "sessions carry the token's HMAC as db_user: {s:?}"
    );
    // Neither the token nor the secret is anywhere in the audit trail:
    // Parquet files, the journal, the rows as the CLI reads them.
    let rows = format!("{ev:?}{s:?}");
    assert!(!rows.contains(token) && !rows.contains(SECRET), "{rows}");
    for path in files_under(&d.state_dir()) {
        let bytes = std::fs::read(&path).expect("read");
        let hay = String::from_utf8_lossy(&bytes);
        assert!(!hay.contains(token), "{} holds the token", path.display());
        assert!(!hay.contains(SECRET), "{} holds the secret", path.display());
    }
    assert!(
        files_under(&d.audit_dir())
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "parquet")),
        "parquet files written"
    );
    d.assert_log_lines_once();
}

fn raw(d: &Daemon, bao: &BaoServer, kind: &str) -> Value {
    let s = script();
    let port = bao.port.to_string();
    let out = ok(
        d.exec(&[
            PYTHON3,
            s.to_str().expect("utf-8"),
            "raw",
            "127.0.0.1",
            &port,
            kind,
        ])
        .output()
        .expect("python"),
        kind,
        d,
    );
    json_of(&out)
}

#[test]
fn malformed_http_ends_only_its_connection() {
    require_root();
    let bao = BaoServer::start(false);
    put_app_secret(&bao);
    let (_cg, d) = daemon("http-malformed", 972, &bao);
    let c = client(&d, &bao);
    let s = script();
    let port = bao.port.to_string();
    // A well-behaved client keeps one connection busy meanwhile.
    let keepalive = d
        .exec(&[
            PYTHON3,
            s.to_str().expect("utf-8"),
            "keepalive",
            "127.0.0.1",
            &port,
            ROOT_TOKEN,
            "/v1/secret/data/app",
            "10",
            "4",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("keepalive client");

    let r = raw(&d, &bao, "random");
    let resp = r["response"].as_str().unwrap_or_default();
    assert!(resp.is_empty() || resp.starts_with("HTTP/1.1 400"), "{r}");
    let r = raw(&d, &bao, "header_flood");
    assert!(
        r["response"]
            .as_str()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 431"),
        "{r}"
    );
    let r = raw(&d, &bao, "giant_content_length");
    assert!(
        r["response"]
            .as_str()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 413"),
        "{r}"
    );
    let r = raw(&d, &bao, "bad_content_length");
    assert!(
        r["response"]
            .as_str()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 400"),
        "{r}"
    );
    let r = raw(&d, &bao, "truncated");
    assert_eq!(r["closed"], true, "{r}");
    let r = raw(&d, &bao, "h2_preface");
    assert_eq!(r["closed"], true, "{r}");
    let r = raw(&d, &bao, "path:/v1/%zz");
    assert!(
        r["response"]
            .as_str()
            .unwrap_or_default()
            .starts_with("HTTP/1.1 400"),
        "{r}"
    );

    let out = keepalive.wait_with_output().expect("keepalive");
    let v = json_of(&ok(out, "keepalive", &d));
    let results = v["results"].as_array().expect("results");
    assert_eq!(results.len(), 10, "{v}");
    for r in results {
        assert_eq!(r["status"], 200, "{v}");
        assert_kv2_masked(&r["body"], "keepalive");
    }
    // The daemon still serves new connections.
    let (code, body) = curl(
        &d,
        &c,
        &[
            "-H",
            "X-Vault-Token: root",
            &format!("{}/v1/secret/data/app", c.url),
        ],
    );
    assert_eq!(code, 200, "{body}");
    let s = sessions(&d);
    let reasons: Vec<&str> = s.iter().filter_map(|s| s["end_reason"].as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("431")),
        "header flood end reason: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("malformed HTTP request")),
        "{reasons:?}"
    );
    assert!(
        s.iter().any(|s| s["commands"] == 10),
        "the keep-alive session made 10 requests on one connection: {s:?}"
    );
}

#[test]
fn large_bodies_stream_and_chunked_uploads_work() {
    require_root();
    let bao = BaoServer::start(false);
    let (_cg, d) = daemon("http-large", 973, &bao);
    let c = client(&d, &bao);
    // A 4 MiB secret written with a chunked upload, then read back masked.
    let big = "x".repeat(4 * 1024 * 1024);
    let file = d.dir.path().join("big.json");
    std::fs::write(
        &file,
        json!({"data": {"blob": big, "note": "n"}}).to_string(),
    )
    .expect("write");
    let (code, body) = curl(
        &d,
        &c,
        &[
            "-X",
            "POST",
            "-H",
            "X-Vault-Token: root",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{}/v1/secret/data/big", c.url),
        ],
    );
    assert_eq!(code, 200, "{body}");
    let (code, body) = curl(
        &d,
        &c,
        &[
            "-H",
            "X-Vault-Token: root",
            &format!("{}/v1/secret/data/big", c.url),
        ],
    );
    assert_eq!(code, 200);
    let v = json_of(&body);
    assert_eq!(v["data"]["data"]["blob"], REDACTED);
    let direct = bao.api("GET", "/v1/secret/data/big", None, &[]);
    assert_eq!(
        direct["data"]["data"]["blob"].as_str().map(str::len),
        Some(big.len())
    );
    let ev = events(&d);
    let put = ev
        .iter()
        .find(|e| e["command"] == "POST /v1/secret/data/{path}")
        .unwrap_or_else(|| panic!("{ev:?}"));
    assert!(
        put["bytes_up"].as_u64().unwrap_or(0) > 4 * 1024 * 1024,
        "{put}"
    );
}

/// Fills the filesystem holding `dir` until a write fails.
fn fill(dir: &std::path::Path) -> PathBuf {
    use std::io::Write;
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).expect("filler");
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    filler
}

#[test]
fn a_journal_that_cannot_be_written_stops_requests_with_503() {
    require_root();
    let bao = BaoServer::start(false);
    put_app_secret(&bao);
    let cgroup = TestCgroup::new("http-journal");
    let mut d = Daemon::prepare_default_policy(
        "http-journal",
        &cgroup,
        974,
        &[store_at("vault", bao.addr())],
        "",
    );
    let state = d.state_dir();
    std::fs::create_dir_all(&state).expect("state dir");
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
        .arg(&state)
        .status()
        .expect("mount");
    assert!(st.success(), "mount tmpfs");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(state.clone());
    d.spawn();
    let gate = d.dir.path().join("gate");
    let ready = d.dir.path().join("ready");
    let s = script();
    let port = bao.port.to_string();
    let gate_s = gate.display().to_string();
    let ready_s = ready.display().to_string();
    let mut child = d
        .exec(&[
            PYTHON3,
            s.to_str().expect("utf-8"),
            "gated",
            "127.0.0.1",
            &port,
            ROOT_TOKEN,
            &gate_s,
            &ready_s,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client");
    // The client's first GET is answered while the journal is writable.
    wait_for(
        || format!("the gated client's first GET:\n{}", d.log_text()),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the gated client exited ({status}) before its first GET was answered");
            }
            ready.exists().then_some(())
        },
    );
    let filler = fill(&state);
    std::fs::write(&gate, b"go").expect("gate");
    let v = json_of(&ok(child.wait_with_output().expect("client"), "gated", &d));
    let results = v["results"].as_array().expect("results");
    assert_eq!(results[0]["status"], 200, "{v}");
    assert!(
        results[0]["body"]
            .as_str()
            .unwrap_or_default()
            .contains(REDACTED),
        "{v}"
    );
    // The journal may still fit a record or two in a partly used page;
    // after that every write is refused, and no refused write reached the
    // server (its version counts the writes that did).
    let writes = &results[1..];
    let refused = writes.iter().filter(|r| r["status"] == 503).count();
    assert!(refused >= 15, "{refused} of 20 refused: {v}");
    assert_eq!(writes[19]["status"], 503, "{v}");
    let body = writes[19]["body"].as_str().unwrap_or_default();
    assert!(body.contains("audit journal cannot be written"), "{v}");
    let direct = bao.api("GET", "/v1/secret/data/app", None, &[]);
    assert_eq!(
        direct["data"]["metadata"]["version"].as_u64(),
        Some(1 + (20 - refused) as u64),
        "{direct}"
    );
    std::fs::remove_file(&filler).expect("free space");
}

#[test]
fn a_slowloris_request_head_is_cut_off_after_the_header_timeout() {
    require_root();
    let bao = BaoServer::start(false);
    let (_cg, d) = daemon("http-slow", 975, &bao);
    let c = client(&d, &bao);
    let s = script();
    let port = bao.port.to_string();
    let out = ok(
        d.exec(&[
            PYTHON3,
            s.to_str().expect("utf-8"),
            "slowloris",
            "127.0.0.1",
            &port,
        ])
        .output()
        .expect("python"),
        "slowloris",
        &d,
    );
    let v = json_of(&out);
    assert_eq!(v["closed"], true, "{v}");
    let after = v["after"].as_f64().unwrap_or(0.0);
    assert!((29.0..45.0).contains(&after), "closed after {after}s: {v}");
    let (code, body) = curl(&d, &c, &[&format!("{}/v1/sys/health", c.url)]);
    assert_eq!(code, 200, "{body}");
    let s = sessions(&d);
    assert!(
        s.iter().any(|s| s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("no complete request header, within 30s"))),
        "{s:?}"
    );
}
