//! The conformance suite's Redis, job-queue and Vault part: real tools and
//! libraries (redis-cli, redis-py, rq's worker, the bao CLI, hvac) under
//! `policies/default.toml` as shipped. Each case runs directly against the
//! real server and then through the interceptor, from the driver
//! tests/scripts/conformance_kv.py, and ends with one verdict (see
//! `interceptor_tests::conformance`). Between the two runs the server is
//! reset to the same state.
//!
//! Listener ports 997-999 and 985-986 belong to this file.

use std::process::{Command, Output};

use interceptor_tests::{
    bao::{bao_bin, BaoServer},
    conformance::{check_driver, Expect},
    redis::{RedisOptions, RedisServer, CREDS_PASS, CREDS_USER, SECRET_API, SECRET_DB},
    require_root, store_at, workspace_root, Daemon, TestCgroup,
};
use serde_json::{json, Value};

/// The python3 on PATH: the venv with redis-py, rq and hvac.
const PYTHON3: &str = "python3";
/// The Redis servers' `requirepass`: clients get it from REDISCLI_AUTH.
const PASSWORD: &str = "conf-redis-pass-5b1";
const NO_DANGEROUS: &str = "no-dangerous-redis-commands";
const SECRET_KEYS: &str = "secret-keys";
const VAULT_SECRETS: &str = "vault-secrets";
/// The values of `SECRET` in the driver (written to and read from KV v2).
const VAULT_VALUES: &[&str] = &[
    "conf-vault-pw-7Hq2x",
    "conf-api-key-81ce93",
    "conf-svc-user",
];

fn script() -> String {
    workspace_root()
        .join("tests/scripts/conformance_kv.py")
        .display()
        .to_string()
}

/// The driver's `args`, with `envs`, directly.
fn direct(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(PYTHON3)
        .arg(script())
        .args(args)
        .envs(envs.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the driver direct")
}

/// The driver's `args`, with `envs`, inside the cgroup.
fn intercepted(d: &Daemon, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let s = script();
    let mut argv = vec![PYTHON3, s.as_str()];
    argv.extend_from_slice(args);
    d.exec(&argv)
        .envs(envs.iter().copied())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the driver intercepted")
}

fn redis_server() -> RedisServer {
    RedisServer::start(RedisOptions {
        password: Some(PASSWORD.into()),
        ..RedisOptions::default()
    })
}

/// Runs driver subcommand `tool` against `server` both ways, each on the
/// seed data.
fn redis_runs(name: &str, port: u16, tool: &str) -> (RedisServer, Daemon, Output, Output) {
    let server = redis_server();
    let cg = TestCgroup::new(name);
    let d = Daemon::with_default_policy(name, &cg, port, &[store_at("redis", server.addr())]);
    let p = server.client_port().to_string();
    let args = [tool, "127.0.0.1", p.as_str()];
    let home = d.dir.path().display().to_string();
    let env = [("REDISCLI_AUTH", PASSWORD), ("HOME", home.as_str())];
    server.seed();
    let direct = direct(&args, &env);
    server.seed();
    let intercepted = intercepted(&d, &args, &env);
    // The cgroup goes with the daemon (and anything left in it).
    drop(cg);
    (server, d, direct, intercepted)
}

fn redis_context<'a>(d: &'a Daemon, server: &'a RedisServer) -> impl Fn() -> String + 'a {
    move || {
        format!(
            "daemon log:\n{}\nredis-server log:\n{}",
            d.log_text(),
            server.log()
        )
    }
}

#[test]
fn redis_cli_under_the_default_policy() {
    require_root();
    let (server, d, direct, intercepted) = redis_runs("conf-rcli", 997, "redis-cli");
    check_driver(
        "redis-cli",
        &direct,
        &intercepted,
        &[
            ("GET public:greeting", Expect::Identical, ""),
            ("LRANGE public:list 0 -1", Expect::Identical, ""),
            (
                "GET secret:db",
                Expect::Masked {
                    mask: SECRET_KEYS,
                    hidden: &[SECRET_DB],
                },
                "",
            ),
            (
                "MGET public:greeting secret:api",
                Expect::Masked {
                    mask: SECRET_KEYS,
                    hidden: &[SECRET_API],
                },
                "masked per key: the public value comes in clear",
            ),
            (
                "--scan --pattern 'public:*'",
                Expect::Identical,
                "SCAN is not @dangerous; keys compared sorted (SCAN order is the hash table's)",
            ),
            (
                "--pipe of 200 SET and 200 INCR",
                Expect::Identical,
                "redis-cli's summary (errors: 0, replies: 400), its closing ECHO included",
            ),
            (
                "MGET and GET of what --pipe wrote",
                Expect::Identical,
                "the values --pipe wrote, read back",
            ),
            (
                "KEYS 'public:*'",
                Expect::Denied { rule: NO_DANGEROUS },
                "KEYS is @dangerous (it walks the whole keyspace at once); --scan is the way",
            ),
            ("FLUSHALL", Expect::Denied { rule: NO_DANGEROUS }, ""),
        ],
        &redis_context(&d, &server),
    );
}

#[test]
fn redis_py_under_the_default_policy() {
    require_root();
    let (server, d, direct, intercepted) = redis_runs("conf-rpy", 998, "redis-py");
    check_driver(
        "redis-py",
        &direct,
        &intercepted,
        &[
            ("pipeline(transaction=False)", Expect::Identical, ""),
            (
                "pipeline(transaction=True)",
                Expect::Identical,
                "MULTI ... EXEC in one write",
            ),
            (
                "pipeline(transaction=True) reading masked keys",
                Expect::Masked {
                    mask: SECRET_KEYS,
                    hidden: &[SECRET_DB, CREDS_USER],
                },
                "each element of EXEC's reply masked as its queued command",
            ),
            ("WATCH, MULTI, EXEC", Expect::Identical, ""),
            (
                "WATCH, key changed by another client, EXEC: WatchError",
                Expect::Identical,
                "EXEC answers nil both ways, and redis-py raises WatchError",
            ),
            (
                "transaction() retrying after a WatchError",
                Expect::Identical,
                "the first attempt conflicts, the second commits",
            ),
            (
                "pubsub: subscribe, publish, get_message",
                Expect::Identical,
                "published from a second connection",
            ),
            ("pubsub: psubscribe, publish, get_message", Expect::Identical, ""),
            ("scan_iter(match='public:*')", Expect::Identical, "compared sorted"),
            ("Lock.acquire", Expect::Identical, "SET NX PX"),
            (
                "Lock.release",
                Expect::Denied { rule: NO_DANGEROUS },
                "a Lua script (EVALSHA): the documented limit (docs/redis.md); the lock goes at its timeout",
            ),
            ("RESP3 GET public:greeting", Expect::Identical, "protocol=3"),
            ("RESP3 LRANGE public:list", Expect::Identical, "protocol=3"),
            (
                "RESP3 HGETALL secret:creds",
                Expect::Masked {
                    mask: SECRET_KEYS,
                    hidden: &[CREDS_USER, CREDS_PASS],
                },
                "protocol=3, a map: values masked, field names kept",
            ),
            (
                "RESP3 GET secret:db",
                Expect::Masked {
                    mask: SECRET_KEYS,
                    hidden: &[SECRET_DB],
                },
                "protocol=3",
            ),
            (
                "INFO server: redis_version",
                Expect::Identical,
                "INFO is @dangerous, allowed by redis-info-for-clients",
            ),
        ],
        &redis_context(&d, &server),
    );
}

#[test]
fn rq_under_the_default_policy() {
    require_root();
    let (server, d, direct, intercepted) = redis_runs("conf-rq", 999, "rq");
    check_driver(
        "rq",
        &direct,
        &intercepted,
        &[
            (
                "enqueue add(2, 3)",
                Expect::Identical,
                "with a fixed job id; status, function and args compared",
            ),
            (
                "rq worker --burst",
                Expect::Identical,
                "the worker CLI, intercepted: exit status and its `Job OK` line compared (not its log's times, name, pid)",
            ),
            (
                "Job.fetch, get_status, return_value",
                Expect::Identical,
                "finished, 5",
            ),
            (
                "enqueue add(4, 5) for a worker with the scheduler",
                Expect::Identical,
                "",
            ),
            (
                "rq worker --burst --with-scheduler",
                Expect::Denied { rule: NO_DANGEROUS },
                "the scheduler's lock is a Lua script (EVALSHA on rq:scheduler-lock:QUEUE): the worker exits 1 and the job stays queued; run workers without --with-scheduler",
            ),
        ],
        &redis_context(&d, &server),
    );
}

/// A Vault server with what the cases need, made directly with the root
/// token: the secret `secret/conf/app`, an AppRole `ci` that may read it,
/// and the job's own token (policy `ci-job`, which may do what the cases
/// try, so that they all work direct). Returns (job token, role id,
/// secret id).
fn vault_setup(bao: &BaoServer) -> (String, String, String) {
    bao.put_kv2(
        "conf/app",
        &json!({
            "password": VAULT_VALUES[0],
            "api_key": VAULT_VALUES[1],
            "username": VAULT_VALUES[2],
        }),
    );
    for (method, path, body) in [
        ("POST", "/v1/sys/auth/approle", json!({"type": "approle"})),
        (
            "PUT",
            "/v1/sys/policies/acl/ci-read",
            json!({"policy": "path \"secret/data/conf/app\" { capabilities = [\"read\"] }"}),
        ),
        (
            "PUT",
            "/v1/sys/policies/acl/ci-job",
            json!({"policy": "path \"*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\", \"sudo\"] }"}),
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
    let field = |v: Value, what: &str, ptr: &str| -> String {
        v.pointer(ptr)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{what}: {v}"))
            .to_string()
    };
    let role_id = field(
        bao.api("GET", "/v1/auth/approle/role/ci/role-id", None, &[]),
        "role id",
        "/data/role_id",
    );
    let secret_id = field(
        bao.api("POST", "/v1/auth/approle/role/ci/secret-id", None, &[]),
        "secret id",
        "/data/secret_id",
    );
    let token = field(
        bao.api(
            "POST",
            "/v1/auth/token/create",
            Some(&json!({"policies": ["ci-job"], "display_name": "ci-job", "ttl": "1h"})),
            &[],
        ),
        "job token",
        "/auth/client_token",
    );
    (token, role_id, secret_id)
}

/// Runs driver subcommand `tool` (bao or hvac) against a fresh OpenBao dev
/// server both ways; the secret the cases write is deleted before each run.
fn vault_runs(name: &str, port: u16, tool: &str) -> (BaoServer, Daemon, Output, Output) {
    let bao = BaoServer::start(false);
    let (token, role_id, secret_id) = vault_setup(&bao);
    let cg = TestCgroup::new(name);
    let d = Daemon::with_default_policy(name, &cg, port, &[store_at("vault", bao.addr())]);
    let secret_file = d.dir.path().join("secret-id");
    std::fs::write(&secret_file, &secret_id).expect("write the secret id");
    let file = secret_file.display().to_string();
    let url = bao.url();
    let args = [tool, url.as_str(), role_id.as_str(), file.as_str()];
    let bin = bao_bin().display().to_string();
    let home = d.dir.path().display().to_string();
    let env = [
        ("BAO_BIN", bin.as_str()),
        ("BAO_TOKEN", token.as_str()),
        ("VAULT_TOKEN", token.as_str()),
        // Nobody's ~/.vault-token takes part.
        ("HOME", home.as_str()),
    ];
    let reset = || {
        let v = bao.api("DELETE", "/v1/secret/metadata/conf/written", None, &[]);
        assert!(v.get("errors").is_none(), "delete conf/written: {v}");
    };
    reset();
    let direct = direct(&args, &env);
    reset();
    let intercepted = intercepted(&d, &args, &env);
    drop(cg);
    (bao, d, direct, intercepted)
}

fn vault_context<'a>(d: &'a Daemon, bao: &'a BaoServer) -> impl Fn() -> String + 'a {
    move || {
        format!(
            "daemon log:\n{}\nbao server log:\n{}",
            d.log_text(),
            bao.log_text()
        )
    }
}

const MASKED_KV: Expect<'static> = Expect::Masked {
    mask: VAULT_SECRETS,
    hidden: VAULT_VALUES,
};
const CHILD_TOKENS: Expect<'static> = Expect::Denied {
    rule: "no-vault-child-tokens",
};
const SYS_ADMIN: Expect<'static> = Expect::Denied {
    rule: "no-vault-sys-admin",
};
const VARIES: &str = "request_id and created_time (new per call) left out";
const LOOKUP: &str = "a stable subset compared: display_name, path, policies, meta, num_uses, orphan, renewable, type, entity_id, explicit_max_ttl, and that id is the token itself (not ttl, issue or creation time, accessor)";
const LOGIN: &str = "the login's shape: policies, metadata, lease, token type; the token and accessor (new per login) compared as present and not masked";

#[test]
fn bao_cli_under_the_default_policy() {
    require_root();
    let (bao, d, direct, intercepted) = vault_runs("conf-bao", 985, "bao");
    check_driver(
        "bao",
        &direct,
        &intercepted,
        &[
            ("kv put", Expect::Identical, VARIES),
            (
                "kv get",
                MASKED_KV,
                "data.data.* masked, metadata intact; request_id and created_time left out",
            ),
            ("kv metadata get", Expect::Identical, VARIES),
            ("token lookup", Expect::Identical, LOOKUP),
            ("write auth/approle/login", Expect::Identical, LOGIN),
            (
                "kv get with the AppRole token",
                MASKED_KV,
                "the token the login returned works",
            ),
            ("token create", CHILD_TOKENS, ""),
            ("secrets list", SYS_ADMIN, "GET /v1/sys/mounts"),
            ("secrets enable", SYS_ADMIN, "POST /v1/sys/mounts/conf-bao"),
            (
                "status",
                Expect::Identical,
                "sys/seal-status, allowed by vault-sys-for-clients",
            ),
            (
                "operator init -status",
                Expect::Identical,
                "GET /v1/sys/init: a read of the initialized flag",
            ),
        ],
        &vault_context(&d, &bao),
    );
}

#[test]
fn hvac_under_the_default_policy() {
    require_root();
    let (bao, d, direct, intercepted) = vault_runs("conf-hvac", 986, "hvac");
    check_driver(
        "hvac",
        &direct,
        &intercepted,
        &[
            ("kv.v2.create_or_update_secret", Expect::Identical, VARIES),
            (
                "kv.v2.read_secret_version",
                MASKED_KV,
                "data.data.* masked, metadata intact; request_id and created_time left out",
            ),
            ("kv.v2.read_secret_metadata", Expect::Identical, VARIES),
            ("auth.token.lookup_self", Expect::Identical, LOOKUP),
            ("auth.approle.login", Expect::Identical, LOGIN),
            (
                "read_secret_version with the AppRole token",
                MASKED_KV,
                "the token the login returned works",
            ),
            ("auth.token.create", CHILD_TOKENS, ""),
            (
                "sys.list_mounted_secrets_engines",
                SYS_ADMIN,
                "GET /v1/sys/mounts",
            ),
            (
                "sys.enable_secrets_engine",
                SYS_ADMIN,
                "POST /v1/sys/mounts/conf-hvac",
            ),
            (
                "sys.read_health_status",
                Expect::Identical,
                "stable fields compared (not server_time_utc)",
            ),
            (
                "sys.is_sealed",
                Expect::Identical,
                "sys/seal-status, allowed by vault-sys-for-clients",
            ),
            (
                "sys.is_initialized",
                Expect::Identical,
                "GET /v1/sys/init: a read of the initialized flag",
            ),
        ],
        &vault_context(&d, &bao),
    );
}
