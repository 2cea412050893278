//! `cargo xtask demo`: everything interceptor does, on this machine, in one
//! command.
//!
//! Starts a real PostgreSQL 15, Redis and OpenBao on loopback, on the ports
//! the config's stores name (5432, 6379 and 8200 in policies/default.toml),
//! seeded with a small demo schema and secrets; starts `interceptor run`
//! with that config (its throwaway `interceptor-ci` cgroup); runs a scripted
//! CI job inside the cgroup with the real clients (psql, psycopg, redis-cli,
//! redis-py, bao, curl, hvac) and prints what each command got back; then
//! queries the Parquet audit trail with DuckDB, as an analyst would.
//!
//! Each job step states what the policy must do with it (allow, deny with a
//! rule, mask). The demo checks it against what the client printed and
//! exits non-zero if any step did something else, so it doubles as a smoke
//! test of the default policy.
//!
//! Usage (as root; `cargo xtask demo` passes INTERCEPTOR_BIN, PATH and --dir):
//!   interceptor-demo --dir DIR [--config FILE] [--keep]
//!   interceptor-demo --dir DIR --stop

use std::{
    fs,
    io::Write,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use interceptor::config::{Config, Protocol};
use interceptor_tests::{
    bao::{BaoServer, ROOT_TOKEN},
    bin,
    pg::{literal, Auth, PgOptions, PgServer, DATABASE, USERS_ROWS},
    redis::{RedisOptions, RedisServer, SECRET_API, SECRET_DB},
    stop_child, workspace_root, Kept,
};
use serde::{Deserialize, Serialize};

/// The password of the `app` role (the demo job's PGPASSWORD).
const APP_PASSWORD: &str = "app-password";
/// The KV v2 secret at `secret/app`, as written by the demo.
const KV_SECRET: &[(&str, &str)] = &[
    ("db_password", "kv-db-password-7c1e"),
    ("api_key", "kv-api-key-93ab51"),
    ("username", "app"),
];
/// The masked placeholder of the `redact` strategy.
const REDACTED: &str = "********";
/// The CI job the demo pretends to be (GitLab CI variables).
const JOB_ENV: &[(&str, &str)] = &[
    ("CI_PROJECT_PATH", "demo/payments"),
    ("CI_JOB_NAME", "deploy-staging"),
    ("CI_JOB_ID", "4242"),
    ("CI_PIPELINE_ID", "1001"),
];

/// What `--keep` leaves running, for `--stop`.
#[derive(Serialize, Deserialize)]
struct Stack {
    config: PathBuf,
    /// The cgroup the daemon created (relative config value), to remove.
    cgroup: Option<PathBuf>,
    processes: Vec<Kept>,
}

impl Stack {
    fn add(&mut self, process: Kept, file: &Path) -> Result<(), String> {
        self.processes.push(process);
        let text = serde_json::to_string_pretty(self).map_err(|e| e.to_string())?;
        fs::write(file, text).map_err(|e| format!("{}: {e}", file.display()))
    }
}

struct Args {
    dir: PathBuf,
    config: PathBuf,
    keep: bool,
    stop: bool,
}

fn main() -> ExitCode {
    // The harness reports what went wrong by panicking with a message that
    // says what to do: print it as an error, not as a crash.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown error");
        // Not eprintln!: a closed stderr (`| head`) must not panic again
        // here, which would abort without stopping the servers.
        let _ = writeln!(std::io::stderr(), "\nerror: {msg}");
    }));
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("error: the demo must run as root: the daemon loads eBPF programs and makes a cgroup (try `sudo -E cargo xtask demo`)");
        return ExitCode::FAILURE;
    }
    let result = std::panic::catch_unwind(|| {
        if args.stop {
            stop(&args.dir)
        } else {
            demo(&args)
        }
    });
    match result {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            eprintln!("\nerror: {e}");
            ExitCode::FAILURE
        }
        // The hook printed the message; the servers were stopped on unwind.
        Err(_) => ExitCode::FAILURE,
    }
}

fn parse_args() -> Result<Args, String> {
    let mut dir = None;
    let mut config = workspace_root().join("policies/default.toml");
    let (mut keep, mut stop) = (false, false);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--dir" => dir = it.next().map(PathBuf::from),
            "--config" => {
                config = it
                    .next()
                    .map(PathBuf::from)
                    .ok_or("--config needs a file")?
            }
            "--keep" => keep = true,
            "--stop" => stop = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let dir = dir.ok_or("--dir DIR is required (cargo xtask demo passes target/demo)")?;
    let config =
        fs::canonicalize(&config).map_err(|e| format!("config {}: {e}", config.display()))?;
    Ok(Args {
        dir,
        config,
        keep,
        stop,
    })
}

/// The port of the first target of the config's first store of `protocol`.
fn store_port(config: &Config, protocol: Protocol) -> Result<(String, u16), String> {
    config
        .stores
        .iter()
        .find(|s| s.protocol == protocol)
        .and_then(|s| s.targets.first().map(|t| (s.name.clone(), t.port)))
        .ok_or_else(|| {
            format!(
                "{} has no {} store: the demo needs a postgres, a redis and an http store",
                config.path.display(),
                protocol.as_str()
            )
        })
}

fn port_free(port: u16, what: &str) -> Result<(), String> {
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| {
            format!(
                "127.0.0.1:{port} is not free ({e}): the demo starts {what} there. Stop whatever \
             listens on it (`ss -ltnp 'sport = :{port}'`), or run the demo with a --config whose \
             store targets another port"
            )
        })
}

fn step(msg: impl std::fmt::Display) {
    println!("==> {msg}");
}

fn demo(args: &Args) -> Result<(), String> {
    let started = Instant::now();
    let config = Config::load(&args.config).map_err(|e| e.to_string())?;
    let (pg_store, pg_port) = store_port(&config, Protocol::Postgres)?;
    let (redis_store, redis_port) = store_port(&config, Protocol::Redis)?;
    let (vault_store, vault_port) = store_port(&config, Protocol::Http)?;
    let stack_file = args.dir.join("stack.json");
    if stack_file.exists() {
        step("stopping the stack an earlier demo left up (--keep, or interrupted)");
        stop(&args.dir)?;
    }
    port_free(pg_port, "PostgreSQL")?;
    port_free(redis_port, "Redis")?;
    port_free(vault_port, "OpenBao")?;
    port_free(config.daemon.listen.port(), "the interceptor listener")?;
    fs::create_dir_all(&args.dir).map_err(|e| format!("{}: {e}", args.dir.display()))?;
    // The job's HOME: no ~/.vault-token or ~/.pgpass of the machine's.
    let home = args.dir.join("home");
    fs::create_dir_all(&home).map_err(|e| format!("{}: {e}", home.display()))?;

    step(format!(
        "starting PostgreSQL 15 on 127.0.0.1:{pg_port} (SCRAM; database {DATABASE}, table users)"
    ));
    // Recorded as each piece starts: if the demo is killed midway, the next
    // run (or `--stop`) stops what it left.
    let mut stack = Stack {
        config: args.config.clone(),
        cgroup: daemon_cgroup(&config),
        processes: Vec::new(),
    };
    let pg = PgServer::start_on(PgOptions::new(Auth::Scram, false), Some(pg_port));
    stack.add(pg.record(), &stack_file)?;
    let mut seed = String::from("ALTER TABLE users ADD COLUMN deploy_token text;\n");
    for (id, name, ..) in USERS_ROWS {
        seed.push_str(&format!(
            "UPDATE users SET deploy_token = {} WHERE id = {id};\n",
            literal(&deploy_token(name))
        ));
    }
    pg.admin_sql(DATABASE, &seed);

    step(format!(
        "starting Redis on 127.0.0.1:{redis_port} (keys secret:db, secret:api, public:greeting, ...)"
    ));
    let redis = RedisServer::start_on(RedisOptions::default(), Some(redis_port));
    stack.add(redis.record(), &stack_file)?;
    redis.seed();

    step(format!(
        "starting OpenBao (dev server) on 127.0.0.1:{vault_port} (root token, KV v2 secret secret/app)"
    ));
    let bao = BaoServer::start_on(false, Some(vault_port));
    stack.add(bao.record(), &stack_file)?;
    let data: serde_json::Map<String, serde_json::Value> = KV_SECRET
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    bao.put_kv2("app", &serde_json::Value::Object(data));

    step(format!(
        "starting the daemon: interceptor run --config {}",
        shown_path(&args.config)
    ));
    let mut daemon = DemoDaemon::start(&args.config, &args.dir.join("daemon.log"))?;
    stack.add(daemon.record(), &stack_file)?;
    let since_us = now_us();

    let job = Job {
        config: args.config.clone(),
        env: job_env(pg_port, redis_port, vault_port, &home),
    };
    println!();
    println!(
        "A CI job now runs inside the intercepted cgroup ({}): every command below is",
        config.daemon.cgroup
    );
    println!(
        "`interceptor exec --config {} -- COMMAND`, with this environment:",
        shown_path(&args.config)
    );
    for (k, v) in &job.env {
        if k != "HOME" && k != "PATH" {
            println!("    {k}={v}");
        }
    }
    println!("The clients dial the real addresses; the kernel hands the connections to the proxy.");

    let secrets = Secrets::new();
    let mut unexpected = Vec::new();
    section(&format!("PostgreSQL (store \"{pg_store}\")"));
    for s in postgres_steps(&secrets) {
        job.run(&s, &mut unexpected);
    }
    section(&format!("Redis (store \"{redis_store}\")"));
    for s in redis_steps(&secrets, redis_port) {
        job.run(&s, &mut unexpected);
    }
    section(&format!(
        "OpenBao / Vault HTTP API (store \"{vault_store}\")"
    ));
    for s in vault_steps(&secrets, vault_port) {
        job.run(&s, &mut unexpected);
    }

    section("The audit trail");
    // A client can exit before the daemon has journaled its session's end,
    // and a flush carries sessions still open over to the next roll.
    wait_sessions_closed(&args.config)?;
    println!("$ interceptor audit flush   (journal -> Parquet now, instead of every 60 s)");
    let out = interceptor(&["audit", "flush", "--config"], &args.config)?;
    print_indented(&out);
    println!();
    let audit_dir = &config.daemon.audit_dir;
    let out = Command::new("python3")
        .arg(workspace_root().join("tests/scripts/demo.py"))
        .arg("audit")
        .arg(audit_dir)
        .arg(since_us.to_string())
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        return Err(format!(
            "the DuckDB query failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    println!();
    println!(
        "The Parquet files: {}/{{sessions,events}}/dt=YYYY-MM-DD/part-<uuidv7>.parquet",
        audit_dir.display()
    );
    println!(
        "The same from the CLI: interceptor audit events --config {} --since 10m",
        shown_path(&args.config)
    );
    println!("Values and tokens appear only as HMACs: `interceptor audit hash VALUE` finds them.");

    println!();
    if args.keep {
        // stack.json already lists them all; let go of the handles.
        let _ = (pg.keep(), redis.keep(), bao.keep(), daemon.keep());
        print_keep_help(args, pg_port, redis_port, vault_port);
    } else {
        step("cleaning up: daemon stopped and detached, servers stopped");
        daemon.stop(&args.config);
        remove_cgroup(stack.cgroup.as_deref());
        drop((pg, redis, bao));
        fs::remove_file(&stack_file).map_err(|e| format!("{}: {e}", stack_file.display()))?;
        println!(
            "    (the audit trail stays in {}; `cargo xtask demo --keep` leaves the stack up)",
            audit_dir.display()
        );
    }
    println!("demo finished in {:.0} s", started.elapsed().as_secs_f64());
    if unexpected.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} step(s) did not do what the default policy should: {}",
            unexpected.len(),
            unexpected.join("; ")
        ))
    }
}

fn deploy_token(name: &str) -> String {
    format!("dt-{name}-5f0c2e9a")
}

/// Every secret value the job could see: none may come back in clear.
struct Secrets {
    postgres: Vec<String>,
    redis: Vec<String>,
    vault: Vec<String>,
}

impl Secrets {
    fn new() -> Self {
        let mut postgres = Vec::new();
        for (_, name, _, password, api_key) in USERS_ROWS {
            postgres.extend([
                password.to_string(),
                api_key.to_string(),
                deploy_token(name),
            ]);
        }
        Secrets {
            postgres,
            redis: vec![SECRET_DB.into(), SECRET_API.into()],
            vault: KV_SECRET
                .iter()
                .filter(|(k, _)| *k != "username")
                .map(|(_, v)| v.to_string())
                .collect(),
        }
    }
}

/// What the policy must do with a step.
enum Expect {
    Allowed,
    Denied(&'static str),
    /// Masked: the placeholder comes back, none of these values does.
    Masked(Vec<String>),
}

struct Step {
    argv: Vec<String>,
    /// One line on what the step does and why.
    why: &'static str,
    expect: Expect,
}

fn s(argv: &[&str], why: &'static str, expect: Expect) -> Step {
    Step {
        argv: argv.iter().map(|a| a.to_string()).collect(),
        why,
        expect,
    }
}

fn demo_py() -> String {
    workspace_root()
        .join("tests/scripts/demo.py")
        .display()
        .to_string()
}

fn postgres_steps(secrets: &Secrets) -> Vec<Step> {
    let py = demo_py();
    vec![
        s(
            &[
                "psql",
                "-c",
                "SELECT id, name, password, deploy_token, api_key FROM users ORDER BY id",
            ],
            "read the users table: the credential columns are masked",
            Expect::Masked(secrets.postgres.clone()),
        ),
        s(
            &[
                "psql",
                "-c",
                "UPDATE users SET email = 'alice@payments.example' WHERE id = 1",
            ],
            "an ordinary write with a WHERE clause",
            Expect::Allowed,
        ),
        s(
            &["psql", "-c", "DROP TABLE users"],
            "schema changes are not for CI jobs",
            Expect::Denied("no-ddl"),
        ),
        s(
            &["python3", &py, "psycopg-select", "2"],
            "psycopg, a parameterized query (extended protocol): masked too",
            Expect::Masked(secrets.postgres.clone()),
        ),
        s(
            &["python3", &py, "psycopg-delete"],
            "psycopg, DELETE without WHERE",
            Expect::Denied("no-unbounded-writes"),
        ),
    ]
}

fn redis_steps(secrets: &Secrets, port: u16) -> Vec<Step> {
    let py = demo_py();
    let p = port.to_string();
    vec![
        s(
            &[
                "redis-cli",
                "-h",
                "127.0.0.1",
                "-p",
                &p,
                "SET",
                "build:status",
                "green",
            ],
            "an ordinary write",
            Expect::Allowed,
        ),
        s(
            &["redis-cli", "-h", "127.0.0.1", "-p", &p, "GET", "secret:db"],
            "a key under secret:*: its value is masked",
            Expect::Masked(secrets.redis.clone()),
        ),
        s(
            &["redis-cli", "-h", "127.0.0.1", "-p", &p, "FLUSHALL"],
            "wiping the server",
            Expect::Denied("no-dangerous-redis-commands"),
        ),
        s(
            &["python3", &py, "redis-py", "public:greeting", "secret:api"],
            "redis-py: a public key as is, a secret one masked",
            Expect::Masked(secrets.redis.clone()),
        ),
    ]
}

fn vault_steps(secrets: &Secrets, port: u16) -> Vec<Step> {
    let py = demo_py();
    let mounts = format!("http://127.0.0.1:{port}/v1/sys/mounts");
    vec![
        s(
            &["bao", "kv", "put", "secret/build", "status=green"],
            "write a KV v2 secret of the job's own",
            Expect::Allowed,
        ),
        s(
            &["bao", "kv", "get", "secret/app"],
            "read the app's secret: the values are masked, the metadata is not",
            Expect::Masked(secrets.vault.clone()),
        ),
        s(
            &["python3", &py, "hvac-read", "app"],
            "hvac reads the same secret",
            Expect::Masked(secrets.vault.clone()),
        ),
        s(
            &[
                "curl",
                "-s",
                "-w",
                "\\nHTTP %{http_code}\\n",
                "-H",
                "X-Vault-Token: root",
                &mounts,
            ],
            "Vault administration (sys/mounts) is not for CI jobs",
            Expect::Denied("no-vault-sys-admin"),
        ),
    ]
}

fn job_env(pg_port: u16, redis_port: u16, vault_port: u16, home: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = JOB_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(
        [
            ("PGHOST", "127.0.0.1".to_string()),
            ("PGPORT", pg_port.to_string()),
            ("PGUSER", "app".into()),
            ("PGPASSWORD", APP_PASSWORD.into()),
            ("PGDATABASE", DATABASE.into()),
            ("REDIS_URL", format!("redis://127.0.0.1:{redis_port}/0")),
            ("BAO_ADDR", format!("http://127.0.0.1:{vault_port}")),
            ("BAO_TOKEN", ROOT_TOKEN.into()),
            ("HOME", home.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v)),
    );
    env
}

struct Job {
    config: PathBuf,
    env: Vec<(String, String)>,
}

impl Job {
    /// Runs one step inside the cgroup, prints it and what came back, and
    /// checks it against what the policy must do.
    fn run(&self, step: &Step, unexpected: &mut Vec<String>) {
        let shown = shell_words(&step.argv);
        println!();
        println!("# {}", step.why);
        println!("$ {shown}");
        let out = Command::new(bin())
            .arg("exec")
            .arg("--config")
            .arg(&self.config)
            .arg("--")
            .args(&step.argv)
            .env_remove("VAULT_TOKEN")
            .env_remove("VAULT_ADDR")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                println!("  !! could not run it: {e}");
                unexpected.push(format!("`{shown}` did not run"));
                return;
            }
        };
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        print_indented(&text);
        let verdict = match &step.expect {
            Expect::Allowed if out.status.success() && !text.contains("interceptor:") => {
                Ok("ALLOWED".to_string())
            }
            Expect::Allowed => Err(format!("expected it to be allowed ({})", out.status)),
            Expect::Denied(rule) if text.contains(rule) => Ok(format!(
                "DENIED by rule \"{rule}\", with the rule's message"
            )),
            Expect::Denied(rule) => Err(format!("expected a denial by rule \"{rule}\"")),
            Expect::Masked(values) => {
                let leaked: Vec<&String> = values.iter().filter(|v| text.contains(*v)).collect();
                if !leaked.is_empty() {
                    Err(format!("a secret came back in clear: {leaked:?}"))
                } else if !text.contains(REDACTED) || !out.status.success() {
                    Err(format!(
                        "expected masked values ({REDACTED}), {}",
                        out.status
                    ))
                } else {
                    Ok(format!("MASKED: the secret values came back as {REDACTED}"))
                }
            }
        };
        match verdict {
            Ok(v) => println!("  -> {v}"),
            Err(e) => {
                println!("  !! UNEXPECTED: {e}");
                unexpected.push(format!("`{shown}`: {e}"));
            }
        }
    }
}

fn section(title: &str) {
    println!();
    println!("━━ {title} ━━");
}

fn print_indented(text: &str) {
    for line in text.trim_end().lines() {
        println!("    {line}");
    }
}

/// argv as a shell would need it typed.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            let a = a.replace(&demo_py(), "tests/scripts/demo.py");
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
            if plain {
                a
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A path relative to the workspace when it is inside it.
fn shown_path(p: &Path) -> String {
    p.strip_prefix(workspace_root())
        .unwrap_or(p)
        .display()
        .to_string()
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn interceptor(args: &[&str], config: &Path) -> Result<String, String> {
    let out = Command::new(bin())
        .args(args)
        .arg(config)
        .output()
        .map_err(|e| format!("interceptor {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "`interceptor {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits (up to 30 s) until `interceptor status` shows no session open.
fn wait_sessions_closed(config: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = interceptor(&["status", "--json", "--config"], config)?;
        let v: serde_json::Value =
            serde_json::from_str(&status).map_err(|e| format!("status --json: {e}"))?;
        if v["daemon"]["sessions_active"] == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("sessions still open after 30 s: {status}"));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The cgroup directory the daemon made from a relative `daemon.cgroup`
/// (an absolute one belongs to someone else and is left alone).
fn daemon_cgroup(config: &Config) -> Option<PathBuf> {
    if Path::new(&config.daemon.cgroup).is_absolute() {
        return None;
    }
    interceptor::redirect::cgroup::cgroup2_mount()
        .ok()
        .map(|m| m.join(&config.daemon.cgroup))
}

/// Removes the demo's cgroup once it is empty (every job step has exited).
fn remove_cgroup(path: Option<&Path>) {
    let Some(path) = path else { return };
    let deadline = Instant::now() + Duration::from_secs(10);
    while path.exists() {
        if fs::remove_dir(path).is_ok() {
            return;
        }
        if Instant::now() > deadline {
            println!(
                "    note: {} still holds processes, left in place",
                path.display()
            );
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `interceptor run` started by the demo: stopped, and its programs
/// detached, when dropped (unless kept).
struct DemoDaemon {
    child: Option<std::process::Child>,
    config: PathBuf,
}

impl DemoDaemon {
    fn start(config: &Path, log: &Path) -> Result<DemoDaemon, String> {
        let file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = Command::new(bin())
            .args(["run", "--config"])
            .arg(config)
            .env("INTERCEPTOR_LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin().display()))?;
        let mut d = DemoDaemon {
            child: Some(child),
            config: config.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = fs::read_to_string(log).unwrap_or_default();
            let ready = text.lines().any(|l| {
                serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| v["message"] == "ready")
            });
            if ready {
                println!(
                    "    ready (pid {}, log {})",
                    d.child.as_ref().map_or(0, |c| c.id()),
                    log.display()
                );
                return Ok(d);
            }
            let exited = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                return Err(format!(
                    "the daemon did not become ready ({}):\n{text}",
                    exited.map_or("timed out after 60 s".into(), |s| s.to_string())
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM (the daemon rolls its journal to Parquet on the way out),
    /// then `interceptor detach`.
    fn stop(&mut self, config: &Path) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, libc::SIGTERM, Duration::from_secs(30));
        }
        let _ = Command::new(bin())
            .args(["detach", "--config"])
            .arg(config)
            .output();
    }

    /// Leaves it running after this handle is gone (`--keep`).
    fn keep(&mut self) -> Kept {
        let kept = self.record();
        self.child = None;
        kept
    }

    fn record(&self) -> Kept {
        let pid = self.child.as_ref().map_or(0, |c| c.id());
        Kept {
            what: "interceptor".into(),
            pid,
            exe: fs::canonicalize(bin()).unwrap_or_else(|_| bin()),
            stop_signal: libc::SIGTERM,
            dir: None,
        }
    }
}

impl Drop for DemoDaemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            let config = self.config.clone();
            self.stop(&config);
        }
    }
}

fn print_keep_help(args: &Args, pg_port: u16, redis_port: u16, vault_port: u16) {
    let cfg = shown_path(&args.config);
    let bin = shown_path(&bin());
    println!("The stack is still up (--keep):");
    println!(
        "  PostgreSQL  127.0.0.1:{pg_port}  database {DATABASE}, user app, password {APP_PASSWORD}"
    );
    println!("  Redis       127.0.0.1:{redis_port}");
    println!("  OpenBao     http://127.0.0.1:{vault_port}  token {ROOT_TOKEN}");
    println!(
        "  daemon      interceptor run --config {cfg}  (log {})",
        args.dir.join("daemon.log").display()
    );
    println!("Connect through it, as a job would (as root, from the workspace):");
    println!("  {bin} exec --config {cfg} -- env PGPASSWORD={APP_PASSWORD} psql -h 127.0.0.1 -p {pg_port} -U app {DATABASE}");
    println!("  {bin} exec --config {cfg} -- redis-cli -h 127.0.0.1 -p {redis_port}");
    // `bao` is the pinned one in the virtualenv setup made.
    let bao = which("bao").map_or("bao".into(), |p| shown_path(&p));
    println!("  {bin} exec --config {cfg} -- env BAO_ADDR=http://127.0.0.1:{vault_port} BAO_TOKEN={ROOT_TOKEN} {bao} kv get secret/app");
    println!("  {bin} audit events --config {cfg} --since 1h");
    println!("Stop it and clean up: cargo xtask demo --stop");
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `--stop`: stops what `--keep` left running and removes its traces.
fn stop(dir: &Path) -> Result<(), String> {
    let file = dir.join("stack.json");
    let text = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("no demo stack is up ({} does not exist)", file.display());
            return Ok(());
        }
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let stack: Stack =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
    // The daemon first: it rolls its journal on SIGTERM.
    for p in stack.processes.iter().rev() {
        if p.running() {
            step(format!("stopping {} (pid {})", p.what, p.pid));
        } else {
            step(format!("{} (pid {}) is no longer running", p.what, p.pid));
        }
        p.stop();
    }
    step("detaching the programs");
    interceptor(&["detach", "--config"], &stack.config)?;
    remove_cgroup(stack.cgroup.as_deref());
    fs::remove_file(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    println!("demo stack stopped");
    Ok(())
}
