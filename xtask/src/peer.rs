//! `cargo xtask peer-suites`: the peer libraries' own test suites (redis-py,
//! psycopg) run direct and through the interceptor, compared test by test.
//!
//! The suites' Python packages are pinned in pins/peer-suites.lock and
//! installed, with hashes, into their own virtualenv
//! (`target/peer-suites/venv`). redis-py's tests come from its source
//! distribution on PyPI (pins/peer-suites-sources.txt, checked by hash);
//! psycopg's exist only in its git repository, so they are run from a
//! checkout of the pinned tag given with `--psycopg-src`. The driver
//! (`interceptor-peer-suites`, tests crate) starts the servers and the
//! daemon; tests/scripts/peer_suites.py judges the results.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util::{
    cargo, pip_download_sdist, pip_install_lock, run, show, step, succeeds, target_dir,
    workspace_root,
};

const LOCK: &str = "pins/peer-suites.lock";
const SOURCES: &str = "pins/peer-suites-sources.txt";
/// The psycopg release whose tests are run (pins/peer-suites.in installs
/// the same version).
pub const PSYCOPG_TAG: &str = "3.3.4";

pub struct Options {
    pub suites: Vec<String>,
    pub psycopg_src: Option<PathBuf>,
    pub configs: Option<String>,
    pub timeout: Option<u64>,
    pub pytest: Vec<String>,
}

pub fn peer_suites(bin: &Path, opts: Options) -> Result<()> {
    let base = target_dir()?.join("peer-suites");
    let python = venv(&base)?;
    let mut plan: Vec<(String, PathBuf)> = Vec::new();
    for suite in &opts.suites {
        match suite.as_str() {
            "redis" => plan.push((suite.clone(), redis_source(&base, &python)?)),
            "psycopg" => match &opts.psycopg_src {
                Some(src) => plan.push((suite.clone(), psycopg_source(src)?)),
                None => bail!(
                    "psycopg's test suite is not in its PyPI source distribution: pass a checkout \
                     of its tag {PSYCOPG_TAG} with --psycopg-src DIR (git clone --branch \
                     {PSYCOPG_TAG} https://github.com/psycopg/psycopg), or run --suite redis"
                ),
            },
            other => bail!("unknown suite {other:?}: redis or psycopg"),
        }
    }
    step("building the peer-suite driver");
    run(cargo().args([
        "build",
        "-p",
        "interceptor-tests",
        "--bin",
        "interceptor-peer-suites",
    ]))?;
    let driver = target_dir()?.join("debug").join("interceptor-peer-suites");
    let out = base.join("results");
    let mut failed = Vec::new();
    for (suite, src) in &plan {
        let mut cmd = Command::new(&driver);
        cmd.env("INTERCEPTOR_BIN", bin)
            .args(["--suite", suite])
            .arg("--src")
            .arg(src)
            .arg("--python")
            .arg(&python)
            .arg("--out")
            .arg(&out);
        if let Some(configs) = &opts.configs {
            cmd.args(["--configs", configs]);
        }
        if let Some(timeout) = opts.timeout {
            cmd.args(["--timeout", &timeout.to_string()]);
        }
        if !opts.pytest.is_empty() {
            cmd.arg("--").args(&opts.pytest);
        }
        step(format!("running {}", show(&cmd)));
        if !cmd
            .status()
            .with_context(|| format!("cannot run {}", driver.display()))?
            .success()
        {
            failed.push(suite.clone());
        }
    }
    let mut table = String::from(
        "| suite | config | pass direct | pass intercepted | exceptions | denied by a rule | masked | regressions | denials by rule |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for (suite, _) in &plan {
        let rows = out.join(suite).join("report.md");
        if let Ok(rows) = fs::read_to_string(&rows) {
            table.push_str(&rows);
        }
    }
    let report = out.join("report.md");
    fs::write(&report, &table).with_context(|| format!("cannot write {}", report.display()))?;
    println!("\n{table}");
    step(format!(
        "table: {}; each suite's runs, logs and JUnit reports under {}",
        report.display(),
        out.display()
    ));
    if !failed.is_empty() {
        bail!(
            "peer suites with regressions or a run that could not complete: {} (see above)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The suites' virtualenv, made again whenever the lock changed.
fn venv(base: &Path) -> Result<PathBuf> {
    let lock_path = workspace_root().join(LOCK);
    let lock = fs::read_to_string(&lock_path)
        .with_context(|| format!("cannot read {}", lock_path.display()))?;
    let venv = base.join("venv");
    let python = venv.join("bin/python3");
    let stamp = venv.join("interceptor-pins.lock");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == lock)
        && succeeds(Command::new(&python).args(["-c", "import pytest, redis, psycopg"]))
    {
        return Ok(python);
    }
    step(format!(
        "installing {LOCK} into a fresh virtualenv at {}",
        venv.display()
    ));
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    run(Command::new("python3").args(["-m", "venv"]).arg(&venv))
        .context("python3 -m venv failed: is python3-venv installed (cargo xtask setup)?")?;
    run(&mut pip_install_lock(&python, &lock_path))
        .context("pip could not install the pinned packages: check access to PyPI")?;
    fs::write(&stamp, &lock).with_context(|| format!("cannot write {}", stamp.display()))?;
    Ok(python)
}

/// redis-py's unpacked source distribution (tests/ and pyproject.toml).
fn redis_source(base: &Path, python: &Path) -> Result<PathBuf> {
    let pin_path = workspace_root().join(SOURCES);
    let pin = fs::read_to_string(&pin_path)
        .with_context(|| format!("cannot read {}", pin_path.display()))?;
    let requirement = pin
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("redis=="))
        .with_context(|| format!("{} pins no redis source distribution", pin_path.display()))?;
    let version = requirement
        .split_whitespace()
        .next()
        .and_then(|r| r.strip_prefix("redis=="))
        .with_context(|| format!("{}: expected redis==VERSION --hash=...", pin_path.display()))?;
    let src = base.join("src");
    let tree = src.join(format!("redis-{version}"));
    let stamp = src.join("redis.pin");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == requirement) && tree.join("tests").is_dir() {
        return Ok(tree);
    }
    step(format!(
        "fetching redis-py {version}'s source distribution ({SOURCES})"
    ));
    if src.exists() {
        fs::remove_dir_all(&src).with_context(|| format!("cannot remove {}", src.display()))?;
    }
    let download = src.join("download");
    fs::create_dir_all(&download)?;
    let req = src.join("redis.txt");
    fs::write(&req, format!("{requirement}\n"))?;
    let archive = pip_download_sdist(
        python,
        &req,
        &download,
        ("redis", version),
        "redis-py's pinned source distribution",
    )?;
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&src))
    .with_context(|| format!("cannot unpack {}", archive.display()))?;
    if !tree.join("tests").is_dir() {
        bail!("{} has no tests/ directory", archive.display());
    }
    fs::write(&stamp, requirement)?;
    Ok(tree)
}

/// A psycopg checkout: its tests/ and the version the pin installs.
fn psycopg_source(src: &Path) -> Result<PathBuf> {
    let src = src
        .canonicalize()
        .with_context(|| format!("--psycopg-src {}", src.display()))?;
    let version_file = src.join("psycopg/pyproject.toml");
    let project = fs::read_to_string(&version_file).with_context(|| {
        format!(
            "{} is not a psycopg checkout (no psycopg/pyproject.toml)",
            src.display()
        )
    })?;
    if !project
        .lines()
        .any(|l| l.trim() == format!("version = \"{PSYCOPG_TAG}\""))
    {
        bail!(
            "{} is not psycopg {PSYCOPG_TAG} ({} says otherwise): check out the tag {PSYCOPG_TAG}, \
             the version pins/peer-suites.lock installs",
            src.display(),
            version_file.display()
        );
    }
    if !src.join("tests/conftest.py").exists() {
        bail!("{} has no tests/conftest.py", src.display());
    }
    Ok(src)
}
