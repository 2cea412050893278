//! Small helpers for running commands and finding things in the workspace.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// One-line progress message, `==> ...`.
pub fn step(msg: impl std::fmt::Display) {
    println!("==> {msg}");
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// A `cargo` command run from the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Shell-like rendering of a command, for progress and dry-run output.
pub fn show(cmd: &Command) -> String {
    let mut parts: Vec<String> = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!("{}={}", key.to_string_lossy(), quote(value)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs a command with inherited stdio; fails if it cannot start or exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs a command and returns its stdout; fails (with its stderr) on a non-zero exit.
pub fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// True when the command starts and exits zero (all output discarded).
pub fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Cargo's target directory for this workspace (honours CARGO_TARGET_DIR and config).
pub fn target_dir() -> Result<PathBuf> {
    let out = output(cargo().args(["metadata", "--format-version", "1", "--no-deps"]))
        .context("could not read the workspace metadata: does the workspace Cargo.toml parse?")?;
    let meta: serde_json::Value =
        serde_json::from_str(&out).context("`cargo metadata` printed invalid JSON")?;
    let dir = meta["target_directory"]
        .as_str()
        .context("`cargo metadata` has no target_directory")?;
    Ok(PathBuf::from(dir))
}

/// `python -m pip install` of a lock file: every package pinned with its
/// hashes, no dependency resolved beyond it.
pub fn pip_install_lock(python: &Path, lock: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--progress-bar",
        "off",
        "--disable-pip-version-check",
        "--no-deps",
        "--require-hashes",
        "-r",
    ])
    .arg(lock);
    cmd
}

/// Downloads the source distribution `name==version` that `requirements`
/// pins (with its hash) into `dest`, and returns the archive's path.
/// `what` names it in the error.
pub fn pip_download_sdist(
    python: &Path,
    requirements: &Path,
    dest: &Path,
    (name, version): (&str, &str),
    what: &str,
) -> Result<PathBuf> {
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--progress-bar",
            "off",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "-r",
        ])
        .arg(requirements)
        .arg("-d")
        .arg(dest))
    .with_context(|| format!("pip could not download {what}: check access to PyPI"))?;
    let archive = dest.join(format!("{name}-{version}.tar.gz"));
    if !archive.exists() {
        bail!("pip did not leave {}", archive.display());
    }
    Ok(archive)
}
