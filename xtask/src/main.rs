//! Project tasks: `cargo xtask <setup|build|run|demo|test|bench|fuzz|sql-corpus|conformance|peer-suites>`.

mod conformance;
mod corpus;
mod fuzz;
mod peer;
mod setup;
mod util;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use util::{cargo, is_root, run, show, step, target_dir, workspace_root};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "interceptor project tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain parts, Debian packages and the pinned PyPI packages
    /// (pins/); mount bpffs. Idempotent; `test`, `run`, `demo` and `bench` run it first.
    Setup {
        /// Print the commands that would change the machine instead of running them.
        #[arg(long)]
        dry_run: bool,
        /// Treat every component as missing (combine with --dry-run to see all commands).
        #[arg(long)]
        force: bool,
    },
    /// Build the interceptor binary (the eBPF object is built and embedded by its build.rs).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build, then run `interceptor run --config policies/default.toml [ARGS...]` (root).
    Run {
        /// Extra arguments for `interceptor run`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Release build, then the same workloads direct and intercepted, reported as ratios (root).
    Bench {
        /// Run only this workload (connect, rtt, stream, parallel), `audit`, or
        /// `postgres`: pgbench direct, through pgbouncer and through interceptor
        /// (not part of the default run). INTERCEPTOR_BENCH_PG_PROTOCOL=tcp
        /// serves the store with the tcp relay instead of the postgres handler.
        /// `redis`: redis-benchmark direct and through interceptor. `http`: wrk
        /// against an OpenBao KV read, direct and through interceptor.
        workload: Option<String>,
        /// Seconds per run (`postgres`, `redis`, `http` only; default 10).
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// Everything on this machine in one command: real PostgreSQL, Redis and
    /// OpenBao on loopback, the daemon with policies/default.toml, a scripted CI
    /// job with real clients (allowed, denied, masked), then the audit trail in
    /// DuckDB. Installs what is missing first; cleans up after itself (root).
    Demo {
        /// Leave the servers and the daemon running, and print how to use and stop them.
        #[arg(long)]
        keep: bool,
        /// Stop what `--keep` left running.
        #[arg(long, conflicts_with = "keep")]
        stop: bool,
        /// Another config (its postgres, redis and http stores' ports are used;
        /// default: the workspace's policies/default.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Fuzz the PostgreSQL, Redis and HTTP codecs and the SQL analyzer (cargo-fuzz, nightly, libFuzzer).
    Fuzz {
        /// Only this target (pg_frontend, pg_backend, sql_analyze, redis_resp, http_request); default all, one after another.
        target: Option<String>,
        /// Seconds per target.
        #[arg(long, default_value_t = 300)]
        seconds: u64,
    },
    /// PostgreSQL 15's own regression SQL (pinned in pins/sql-corpus.txt) run
    /// against a real server; every statement it completed goes through the
    /// policy's SQL analyzer; prints the share parsed and what is left (root).
    SqlCorpus {
        /// Only these scripts (comma-separated names, e.g. `select,vacuum`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Real tools and libraries (psql, pg_dump, pgbench, psycopg, SQLAlchemy,
    /// alembic, Django, redis-cli, redis-py, rq, bao, hvac) run direct and
    /// through the interceptor under policies/default.toml; prints the verdict
    /// of each case (tests/tests/conformance*.rs; also part of `test`) (root).
    Conformance {
        /// Extra arguments for the test harness (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The peer libraries' own test suites (redis-py 8.2.0, psycopg 3.3.4; pinned in
    /// pins/peer-suites.*) run direct, through the interceptor with a permissive
    /// config and with policies/default.toml, compared test by test; fails on a
    /// regression not explained in tests/peer_suites.toml (root; not part of `test`).
    PeerSuites {
        /// Which suites: redis, psycopg (repeatable; default: redis, and psycopg
        /// when --psycopg-src is given).
        #[arg(long = "suite")]
        suites: Vec<String>,
        /// A checkout of psycopg's git tag 3.3.4 (its tests are not on PyPI).
        #[arg(long)]
        psycopg_src: Option<PathBuf>,
        /// Which runs, comma-separated, direct first (default
        /// direct,permissive,default).
        #[arg(long)]
        configs: Option<String>,
        /// Seconds each pytest run may take before it is killed (default 1800).
        #[arg(long)]
        timeout: Option<u64>,
        /// More pytest arguments for every run (e.g. `tests/test_pubsub.py` or `-k EXPR`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        pytest: Vec<String>,
    },
    /// fmt check, clippy, build, the whole test suite as root, then a short run of each fuzz target.
    Test {
        /// Seconds per fuzz target after the tests (0 skips fuzzing).
        #[arg(long, default_value_t = fuzz::TEST_SECONDS)]
        fuzz_seconds: u64,
        /// Extra arguments for `cargo test` (e.g. a test name filter; args after a
        /// second `--` go to the test harness).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup { dry_run, force } => setup::setup(setup::Options { dry_run, force }),
        Task::Build { release } => build(release).map(|bin| println!("binary: {}", bin.display())),
        Task::Run { args } => run_daemon(args),
        Task::Test { fuzz_seconds, args } => test(fuzz_seconds, args),
        Task::Bench { workload, seconds } => bench(workload, seconds),
        Task::Demo { keep, stop, config } => demo(keep, stop, config),
        Task::Fuzz { target, seconds } => fuzz::fuzz(target.as_deref(), seconds),
        Task::SqlCorpus { only } => sql_corpus(only),
        Task::Conformance { args } => conformance(args),
        Task::PeerSuites {
            suites,
            psycopg_src,
            configs,
            timeout,
            pytest,
        } => peer_suites(suites, psycopg_src, configs, timeout, pytest),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo build -p interceptor`; returns the absolute path of the binary.
fn build(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    step(format!("building interceptor ({profile})"));
    let mut cmd = cargo();
    cmd.args(["build", "-p", "interceptor"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd).context(
        "build failed: see the compiler output above \
         (missing bpf-linker or rust-src? run `cargo xtask setup`)",
    )?;
    let bin = target_dir()?.join(profile).join("interceptor");
    if !bin.exists() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

/// The setup steps, before a task that needs them (fast when all is there).
fn ensure_setup() -> Result<()> {
    setup::setup(setup::Options {
        dry_run: false,
        force: false,
    })
    .context("setup failed (see above); `cargo xtask setup` runs it alone")
}

fn run_daemon(args: Vec<String>) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask run` must run as root: the daemon loads eBPF programs \
             and attaches them to a cgroup (try `sudo -E cargo xtask run`)"
        );
    }
    ensure_setup()?;
    let bin = build(false)?;
    let root = workspace_root();
    let config = "policies/default.toml";
    if !root.join(config).exists() {
        bail!("{} does not exist", root.join(config).display());
    }
    let mut cmd = std::process::Command::new(&bin);
    cmd.current_dir(&root)
        .args(["run", "--config", config])
        .args(&args);
    step(format!("running {}", show(&cmd)));
    let err = cmd.exec();
    Err(err).with_context(|| format!("could not exec {}", bin.display()))
}

fn demo(keep: bool, stop: bool, config: Option<PathBuf>) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask demo` must run as root: it installs what is missing, loads eBPF \
             programs and makes a cgroup (try `sudo -E cargo xtask demo`)"
        );
    }
    if !stop {
        ensure_setup()?;
    }
    let bin = build(false)?;
    step("building the demo driver");
    run(cargo().args([
        "build",
        "-p",
        "interceptor-tests",
        "--bin",
        "interceptor-demo",
    ]))?;
    let target = target_dir()?;
    let driver = target.join("debug").join("interceptor-demo");
    // Relative to where the user typed the command, like any other path argument.
    let config = match config {
        Some(c) => std::env::current_dir()?.join(c),
        None => workspace_root().join("policies/default.toml"),
    };
    let mut cmd = std::process::Command::new(&driver);
    cmd.env("INTERCEPTOR_BIN", &bin)
        .env("PATH", setup::path_with_venv()?)
        .arg("--dir")
        .arg(target.join("demo"))
        .arg("--config")
        .arg(&config);
    if keep {
        cmd.arg("--keep");
    }
    if stop {
        cmd.arg("--stop");
    }
    step(format!("running {}", show(&cmd)));
    run(&mut cmd).map_err(|_| anyhow::anyhow!("the demo failed (see above)"))
}

fn bench(workload: Option<String>, seconds: Option<u64>) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask bench` must run as root: it attaches the daemon to a child cgroup");
    }
    ensure_setup()?;
    let bin = build(true)?;
    step("building the bench driver (release)");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "interceptor-tests",
        "--bin",
        "interceptor-bench",
    ]))?;
    let driver = target_dir()?.join("release").join("interceptor-bench");
    let mut cmd = std::process::Command::new(&driver);
    cmd.env("INTERCEPTOR_BIN", &bin)
        .env("PATH", setup::path_with_venv()?)
        .args(workload);
    if let Some(seconds) = seconds {
        cmd.arg("--seconds").arg(seconds.to_string());
    }
    step(format!("running {}", show(&cmd)));
    run(&mut cmd)
}

fn sql_corpus(only: Option<String>) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask sql-corpus` must run as root: it starts a PostgreSQL server as its own user");
    }
    ensure_setup()?;
    corpus::sql_corpus(only)
}

fn conformance(args: Vec<String>) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask conformance` must run as root: it attaches the daemon to child cgroups and starts real servers");
    }
    ensure_setup()?;
    let bin = build(false)?;
    conformance::clear()?;
    let mut cargo_args = vec!["-p".to_string(), "interceptor-tests".to_string()];
    for target in conformance::test_targets()? {
        cargo_args.extend(["--test".to_string(), target]);
    }
    let (tally, status) = cargo_test(&bin, &cargo_args, &args)?;
    let table = conformance::report_if_any()?;
    println!("{table}");
    finish(&tally, status)
}

fn peer_suites(
    mut suites: Vec<String>,
    psycopg_src: Option<PathBuf>,
    configs: Option<String>,
    timeout: Option<u64>,
    pytest: Vec<String>,
) -> Result<()> {
    if !is_root() {
        bail!("`cargo xtask peer-suites` must run as root: it attaches the daemon to child cgroups and starts real servers");
    }
    if suites.is_empty() {
        suites.push("redis".into());
        if psycopg_src.is_some() {
            suites.push("psycopg".into());
        }
    }
    ensure_setup()?;
    let bin = build(false)?;
    peer::peer_suites(
        &bin,
        peer::Options {
            suites,
            psycopg_src,
            configs,
            timeout,
            pytest,
        },
    )
}

fn test(fuzz_seconds: u64, args: Vec<String>) -> Result<()> {
    if !is_root() {
        bail!(
            "`cargo xtask test` must run as root: the integration tests load eBPF programs, \
             create cgroups and start real servers (they are never skipped)"
        );
    }
    ensure_setup()?;
    step("checking formatting (cargo fmt --all --check)");
    run(cargo().args(["fmt", "--all", "--check"]))
        .context("formatting differs: run `cargo fmt --all`")?;

    step("running clippy (cargo clippy --workspace --all-targets -- -D warnings)");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy found problems: fix the warnings above")?;

    let bin = build(false)?;

    // Args before a `--` go to cargo test, those after it to the test harness.
    let (cargo_args, harness_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (&args[..], &[][..]),
    };
    conformance::clear()?;
    let mut cargo_args = cargo_args.to_vec();
    cargo_args.insert(0, "--workspace".into());
    let (tally, status) = cargo_test(&bin, &cargo_args, harness_args)?;
    conformance::report_if_any()?;

    // The fuzz runs come after a clean test run; the tally stays the last line.
    let tests_ok = tally.failed == 0 && status.success() && tally.results > 0;
    let fuzzed = (tests_ok && fuzz_seconds > 0).then(|| fuzz::fuzz(None, fuzz_seconds));

    finish(&tally, status)?;
    if let Some(result) = fuzzed {
        result.context("fuzzing found a problem (see above)")?;
    }
    Ok(())
}

/// `cargo test --no-fail-fast ARGS -- HARNESS` with the binary under test
/// and the pinned python3 and bao on PATH, its output streamed and tallied.
fn cargo_test(
    bin: &std::path::Path,
    cargo_args: &[String],
    harness_args: &[String],
) -> Result<(Tally, std::process::ExitStatus)> {
    let mut cmd = cargo();
    // The pinned python3 (psycopg, redis, hvac, duckdb, pyarrow, ...) and bao.
    cmd.env("INTERCEPTOR_BIN", bin)
        .env("PATH", setup::path_with_venv()?)
        .env("INTERCEPTOR_CONFORMANCE_DIR", conformance::verdicts_dir()?)
        .args(["test", "--no-fail-fast"])
        .args(cargo_args)
        .arg("--");
    if !harness_args.iter().any(|a| a.starts_with("--test-threads")) {
        cmd.arg("--test-threads=2");
    }
    cmd.args(harness_args);
    step(format!("running tests ({})", show(&cmd)));

    // Stream cargo test's stdout (where the harness reports) while tallying it.
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{}`", show(&cmd)))?;
    let stdout = child
        .stdout
        .take()
        .context("cargo test's stdout is not piped")?;
    let mut tally = Tally::default();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("could not read cargo test's output")?;
        writeln!(out, "{line}")?;
        tally.add(&line);
    }
    drop(out);
    let status = child.wait()?;
    Ok((tally, status))
}

/// Prints the tally; fails unless every test passed and some ran.
fn finish(tally: &Tally, status: std::process::ExitStatus) -> Result<()> {
    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 {
        bail!("{} test(s) failed (see above)", tally.failed);
    }
    if !status.success() {
        bail!("`cargo test` failed ({status}): see the output above");
    }
    if tally.results == 0 {
        bail!("`cargo test` reported no test results");
    }
    Ok(())
}

/// Totals over libtest's `test result: ok. X passed; Y failed; ...` lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    results: u64,
}

impl Tally {
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        self.results += 1;
        // "ok. 3 passed; 0 failed; 1 ignored; ..." / "FAILED. 2 passed; 1 failed; ..."
        let rest = rest.split_once(". ").map_or(rest, |(_, r)| r);
        for part in rest.split(';') {
            let mut words = part.split_whitespace();
            let (Some(n), Some(kind)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn tally_counts_result_lines() {
        let mut t = Tally::default();
        for line in [
            "running 3 tests",
            "test a ... ok",
            "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s",
            "test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s",
        ] {
            t.add(line);
        }
        assert_eq!((t.passed, t.failed, t.results), (5, 1, 3));
    }
}
