//! `cargo xtask peer-suites`: a client library's own test suite run
//! directly against a real server, then through the interceptor with a
//! permissive config (the store and nothing else: no rule, no mask) and
//! with `policies/default.toml` as shipped, each run's results kept as
//! JUnit XML and compared test by test by tests/scripts/peer_suites.py.
//!
//! - `redis`: redis-py's tests/ (from its PyPI source distribution) against
//!   a real redis-server (DEBUG enabled, as redis-py's CI runs it).
//! - `psycopg`: psycopg's tests/ (a checkout of its git tag) against a real
//!   PostgreSQL 15, as a SCRAM login role with SUPERUSER in a database of
//!   its own (the suite creates tables, types and extensions).
//!
//! Between two runs the server is reset (FLUSHALL; the database dropped and
//! made again), so every run starts from the same state. Each run is
//! bounded by `--timeout` seconds; a run that overruns is killed and its
//! unfinished tests count as not passed.
//!
//! Usage (as root, with INTERCEPTOR_BIN set; `cargo xtask peer-suites`
//! prepares everything and passes the paths):
//!   interceptor-peer-suites --suite redis|psycopg --src DIR --python PATH
//!       --out DIR [--configs direct,permissive,default] [--timeout SECS]
//!       [-- PYTEST ARGS...]

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::Instant,
};

use interceptor_tests::{
    pg::{Auth, PgOptions, PgServer},
    redis::{RedisOptions, RedisServer},
    require_root, store_at, workspace_root, Daemon, Store, TestCgroup,
};

/// Listener ports of the two intercepted runs.
const PERMISSIVE_PORT: u16 = 987;
const DEFAULT_PORT: u16 = 988;
/// The psycopg suite's login role, its password and database.
const PG_USER: &str = "peer";
const PG_PASSWORD: &str = "peer-suite-password";
const PG_DATABASE: &str = "psycopg_test";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Suite {
    Redis,
    Psycopg,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Redis => "redis",
            Suite::Psycopg => "psycopg",
        }
    }
}

struct Args {
    suite: Suite,
    src: PathBuf,
    python: PathBuf,
    out: PathBuf,
    configs: Vec<String>,
    timeout: u64,
    /// More pytest arguments (after `--`), e.g. a file or `-k EXPR`.
    pytest: Vec<String>,
}

const CONFIGS: &[&str] = &["direct", "permissive", "default"];

fn parse_args() -> Result<Args, String> {
    let mut suite = None;
    let mut src = None;
    let mut python = None;
    let mut out = None;
    let mut configs: Vec<String> = CONFIGS.iter().map(|c| c.to_string()).collect();
    let mut timeout = 1800;
    let mut pytest = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--" {
            pytest.extend(it.by_ref());
            break;
        }
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--suite" => {
                suite = Some(match value()?.as_str() {
                    "redis" => Suite::Redis,
                    "psycopg" => Suite::Psycopg,
                    other => return Err(format!("unknown suite {other:?} (redis, psycopg)")),
                })
            }
            "--src" => src = Some(PathBuf::from(value()?)),
            "--python" => python = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--configs" => {
                configs = value()?.split(',').map(str::to_string).collect();
                if let Some(bad) = configs.iter().find(|c| !CONFIGS.contains(&c.as_str())) {
                    return Err(format!(
                        "unknown config {bad:?} (direct, permissive, default)"
                    ));
                }
                if !configs.iter().any(|c| c == "direct") {
                    return Err("--configs must include direct: it is the baseline".into());
                }
            }
            "--timeout" => {
                timeout = value()?.parse().map_err(|e| format!("--timeout: {e}"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        suite: suite.ok_or("--suite redis|psycopg is required")?,
        src: src.ok_or("--src DIR is required")?,
        python: python.ok_or("--python PATH is required")?,
        out: out.ok_or("--out DIR is required")?,
        configs,
        timeout,
        pytest,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("interceptor-peer-suites: {e}");
            eprintln!(
                "usage: interceptor-peer-suites --suite redis|psycopg --src DIR --python PATH \
                 --out DIR [--configs direct,permissive,default] [--timeout SECS] \
                 [-- PYTEST ARGS...]"
            );
            return ExitCode::from(2);
        }
    };
    require_root();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("interceptor-peer-suites: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The server a suite runs against.
enum Server {
    /// The server, and the directory of its unix socket.
    Redis(RedisServer, tempfile::TempDir),
    Pg(PgServer),
}

impl Server {
    fn start(suite: Suite) -> Server {
        match suite {
            Suite::Redis => {
                let dir = tempfile::Builder::new()
                    .prefix("interceptor-peer-redis-")
                    .tempdir()
                    .expect("tempdir");
                let sock = dir.path().join("redis.sock");
                let server = RedisServer::start(RedisOptions {
                    // redis-py's tests use DEBUG (busy loading, OOM,
                    // sleeps); its CI enables it. The unix socket is for
                    // tests/scripts/peer_reset.py.
                    args: vec![
                        "--enable-debug-command".into(),
                        "yes".into(),
                        "--unixsocket".into(),
                        sock.display().to_string(),
                        "--unixsocketperm".into(),
                        "700".into(),
                    ],
                    ..RedisOptions::default()
                });
                Server::Redis(server, dir)
            }
            Suite::Psycopg => {
                let pg = PgServer::start(PgOptions {
                    auth: Auth::Scram,
                    tls: false,
                    users: vec![(PG_USER.into(), PG_PASSWORD.into())],
                });
                pg.admin_sql("postgres", &format!("ALTER ROLE {PG_USER} SUPERUSER;\n"));
                let s = Server::Pg(pg);
                s.reset();
                s
            }
        }
    }

    fn addr(&self) -> String {
        match self {
            Server::Redis(r, _) => r.addr(),
            Server::Pg(p) => p.addr(),
        }
    }

    /// The store protocol that serves this server; also the name of its
    /// store in policies/default.toml.
    fn protocol(&self) -> &'static str {
        match self {
            Server::Redis(..) => "redis",
            Server::Pg(_) => "postgres",
        }
    }

    /// The store of the permissive config: the server, no rule, no mask.
    fn permissive_store(&self, suite: Suite) -> Store {
        Store {
            name: suite.name().into(),
            protocol: self.protocol().into(),
            targets: vec![self.addr()],
        }
    }

    /// Back to the state every run starts from.
    fn reset(&self) {
        match self {
            Server::Redis(r, _) => {
                let out = r.run(&["FLUSHALL"]);
                assert!(out.contains("OK"), "FLUSHALL answered {out:?}");
            }
            Server::Pg(p) => {
                p.admin_sql(
                    "postgres",
                    &format!(
                        "DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE);\n\
                         CREATE DATABASE {PG_DATABASE} OWNER {PG_USER};\n"
                    ),
                );
            }
        }
    }

    /// What the run under the default policy adds: for redis-py, the plugin
    /// that empties the server after each test (tests/scripts/peer_reset.py:
    /// the suite's own FLUSHDB is denied there).
    fn default_run_env(&self) -> Vec<(String, String)> {
        match self {
            Server::Redis(_, dir) => vec![
                (
                    "INTERCEPTOR_PEER_RESET_SOCKET".into(),
                    dir.path().join("redis.sock").display().to_string(),
                ),
                (
                    "PYTHONPATH".into(),
                    workspace_root().join("tests/scripts").display().to_string(),
                ),
            ],
            Server::Pg(_) => Vec::new(),
        }
    }

    /// pytest's arguments after `-m pytest`, for this server.
    fn pytest_args(&self) -> Vec<String> {
        match self {
            Server::Redis(r, _) => [
                "tests",
                // Need a fault injector and Redis Enterprise endpoints.
                "--ignore=tests/test_scenario",
                "--ignore=tests/test_asyncio/test_scenario",
                // Need a cluster, Redis Stack modules, TLS ports, replicas,
                // cloud credential providers or the multi-database setup of
                // redis-py's docker compose; none is one plain server.
                "-m",
                "not onlycluster and not redismod and not ssl and not replica \
                 and not cp_integration and not multidb_integration",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([format!("--redis-url=redis://{}/0", r.addr())])
            .collect(),
            Server::Pg(p) => [
                "tests",
                // Runs mypy over snippets: a type checker, not the library.
                "--ignore=tests/test_typing.py",
                // psycopg runs on anyio; pytest-asyncio (installed for
                // redis-py) would warn, and psycopg turns warnings into errors.
                "-p",
                "no:asyncio",
                // Leak hunts (minutes each) and timing-based tests that the
                // suite itself marks as unreliable on slow machines.
                "-m",
                "not slow and not timing and not flakey",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--test-dsn".to_string(),
                format!(
                    "host={} port={} user={PG_USER} password={PG_PASSWORD} dbname={PG_DATABASE}",
                    p.host(),
                    p.port()
                ),
            ])
            .collect(),
        }
    }
}

fn run(args: &Args) -> Result<bool, String> {
    let suite = args.suite.name();
    let out = args.out.join(suite);
    if out.exists() {
        fs::remove_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    println!("==> {suite}: starting the server");
    let server = Server::start(args.suite);
    for config in &args.configs {
        server.reset();
        let junit = out.join(format!("{config}.xml"));
        let log = out.join(format!("{config}.log"));
        let mut argv: Vec<String> = vec![
            "timeout".into(),
            "--kill-after=30".into(),
            args.timeout.to_string(),
            args.python.display().to_string(),
            "-m".into(),
            "pytest".into(),
            "-q".into(),
            "-o".into(),
            format!("cache_dir={}", out.join(".pytest_cache").display()),
            format!("--junitxml={}", junit.display()),
            // Python's own tracebacks: pytest's long form re-parses the
            // test's source, and CPython 3.11.7's parser fails on some of
            // redis-py's (SystemError: AST constructor recursion depth
            // mismatch), which ends the whole session.
            "--tb=native".into(),
        ];
        // Test paths of the caller's replace the whole tests/ tree.
        let paths = args.pytest.iter().any(|a| a.starts_with("tests"));
        argv.extend(
            server
                .pytest_args()
                .into_iter()
                .filter(|a| !(paths && a == "tests")),
        );
        argv.extend(args.pytest.iter().cloned());
        for prefix in deselected(suite, config)? {
            argv.extend(["--deselect".to_string(), prefix]);
        }
        let started = Instant::now();
        println!(
            "==> {suite}: {config} run ({}; at most {} s; log {})",
            match config.as_str() {
                "direct" => "straight to the server".to_string(),
                "permissive" => "through interceptor, the store with no rule and no mask".into(),
                _ => "through interceptor, policies/default.toml".into(),
            },
            args.timeout,
            log.display()
        );
        let status = match config.as_str() {
            "direct" => pytest(Command::new(&argv[0]).args(&argv[1..]), args, &log)?,
            "permissive" => {
                let cg = TestCgroup::new(&format!("peer-{suite}-permissive"));
                let d = Daemon::start(
                    &format!("peer-{suite}-permissive"),
                    &cg,
                    PERMISSIVE_PORT,
                    &[server.permissive_store(args.suite)],
                );
                let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                pytest(&mut d.exec(&argv), args, &log)?
            }
            _ => {
                let cg = TestCgroup::new(&format!("peer-{suite}-default"));
                let d = Daemon::with_default_policy(
                    &format!("peer-{suite}-default"),
                    &cg,
                    DEFAULT_PORT,
                    &[store_at(server.protocol(), server.addr())],
                );
                let env = server.default_run_env();
                let mut argv: Vec<&str> = argv.iter().map(String::as_str).collect();
                if !env.is_empty() {
                    argv.extend(["-p", "peer_reset"]);
                }
                let mut cmd = d.exec(&argv);
                cmd.envs(env);
                pytest(&mut cmd, args, &log)?
            }
        };
        println!(
            "    {config}: pytest exited {status} after {:.0} s",
            started.elapsed().as_secs_f64()
        );
        if !junit.exists() {
            return Err(format!(
                "the {config} run left no JUnit report ({}); see {}",
                junit.display(),
                log.display()
            ));
        }
    }
    println!("==> {suite}: comparing the runs");
    let script = workspace_root().join("tests/scripts/peer_suites.py");
    let exceptions = workspace_root().join("tests/peer_suites.toml");
    let status = Command::new(&args.python)
        .arg(&script)
        .args(["--suite", suite, "--dir"])
        .arg(&out)
        .arg("--exceptions")
        .arg(&exceptions)
        .arg("--policy")
        .arg(workspace_root().join("policies/default.toml"))
        .args(["--configs", &args.configs.join(",")])
        .status()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    Ok(status.success())
}

/// The `deselect` node-id prefixes of tests/peer_suites.toml for this
/// suite and config: tests that cannot finish there (they would hang the
/// run), each listed there with its reason.
fn deselected(suite: &str, config: &str) -> Result<Vec<String>, String> {
    let path = workspace_root().join("tests/peer_suites.toml");
    let text = fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for e in doc
        .get("exception")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let field = |k: &str| e.get(k).and_then(|v| v.as_str());
        let configs = field("config").unwrap_or("both");
        if config == "direct"
            || field("suite") != Some(suite)
            || !(configs == config || configs == "both")
        {
            continue;
        }
        for d in e
            .get("deselect")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let d = d
                .as_str()
                .ok_or_else(|| format!("{}: deselect entries are strings", path.display()))?;
            out.push(d.to_string());
        }
    }
    Ok(out)
}

/// Runs pytest in the suite's source tree with the venv first on PATH;
/// its output goes to `log`. Failing tests are expected: only a pytest
/// that could not start is an error (no report is checked by the caller).
fn pytest(cmd: &mut Command, args: &Args, log: &Path) -> Result<String, String> {
    let file = fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = file
        .try_clone()
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let bin = args
        .python
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let path = std::env::var("PATH").unwrap_or_default();
    let status = cmd
        .current_dir(&args.src)
        .env("PATH", format!("{}:{path}", bin.display()))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err)
        .status()
        .map_err(|e| format!("cannot run pytest: {e}"))?;
    Ok(match status.code() {
        Some(124) => "124 (timed out)".into(),
        Some(c) => c.to_string(),
        None => "on a signal".into(),
    })
}
