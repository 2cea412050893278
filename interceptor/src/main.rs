//! interceptor: transparent policy proxy between CI tasks and secret stores.
//!
//! One function per subcommand; everything else lives in the modules.

mod audit;
mod config;
mod control;
mod daemon;
mod identity;
mod protocol;
mod proxy;
mod redirect;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::config::Config;

const DEFAULT_CONFIG: &str = "/etc/interceptor/interceptor.toml";

#[derive(Parser)]
#[command(
    name = "interceptor",
    version,
    about = "Transparent policy proxy between CI tasks and secret stores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (systemd Type=notify).
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Run CMD inside the intercepted cgroup, as an unmodified task would.
    Exec {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Run CMD even when no interceptor programs are attached to the cgroup.
        #[arg(long)]
        allow_detached: bool,
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
    /// Validate the config and its policies; non-zero exit on any error.
    Check {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show what is attached and what the running daemon is doing.
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove the pinned programs and maps: tasks are no longer intercepted.
    Detach {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { config } => daemon::run(&config),
        Command::Exec {
            config,
            allow_detached,
            cmd,
        } => exec(&config, allow_detached, &cmd),
        Command::Check { config } => check(&config),
        Command::Status { config, json } => status(&config, json),
        Command::Detach { config } => detach(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interceptor: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, skipping a cause whose text the message before
/// it already includes (our error types spell out their source).
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

fn check(path: &Path) -> Result<()> {
    let cfg = load(path)?;
    println!("{}", config::check_report(&cfg));
    Ok(())
}

fn exec(path: &Path, allow_detached: bool, cmd: &[String]) -> Result<()> {
    let cfg = load(path)?;
    let cgroup = redirect::cgroup::resolve(&cfg.daemon.cgroup, false)?;
    let pins = redirect::pin_status(&cfg.daemon.bpffs);
    if pins.links.is_empty() && !allow_detached {
        bail!(
            "no interceptor programs are attached (nothing pinned under {}): start `interceptor run --config {}` first, or pass --allow-detached",
            cfg.daemon.bpffs.display(),
            path.display()
        );
    }
    redirect::cgroup::join(&cgroup, std::process::id())?;
    let (program, args) = cmd.split_first().context("no command given")?;
    let err = std::process::Command::new(program).args(args).exec();
    Err(err).with_context(|| format!("cannot run {program}"))
}

fn status(path: &Path, json: bool) -> Result<()> {
    let cfg = load(path)?;
    let pins = redirect::pin_status(&cfg.daemon.bpffs);
    let daemon = control::request(&cfg.daemon.control_socket, "status");
    if json {
        let v = serde_json::json!({
            "pins": pins,
            "daemon": daemon.as_ref().ok(),
            "daemon_error": daemon.as_ref().err().map(|e| format!("{e:#}")),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("bpffs:     {}", pins.bpffs.display());
    if pins.links.is_empty() {
        println!("programs:  not attached (tasks are NOT intercepted)");
    } else {
        println!("programs:  attached and pinned: {}", pins.links.join(", "));
    }
    match pins.store_entries {
        Some(n) => println!("stores:    {n} target entries in the kernel map"),
        None => println!("stores:    no pinned store map"),
    }
    match daemon {
        Ok(v) => println!("daemon:    running: {}", serde_json::to_string(&v)?),
        Err(e) if pins.links.is_empty() => println!("daemon:    not running ({e:#})"),
        Err(e) => println!("daemon:    NOT running ({e:#}): intercepted connects are refused until it starts (fail closed)"),
    }
    Ok(())
}

fn detach(path: &Path) -> Result<()> {
    let cfg = load(path)?;
    let removed = redirect::detach(&cfg.daemon.bpffs)
        .with_context(|| format!("removing pins under {}", cfg.daemon.bpffs.display()))?;
    if removed.is_empty() {
        println!("nothing was pinned under {}", cfg.daemon.bpffs.display());
    } else {
        println!(
            "detached: removed {} pins under {}; tasks in the cgroup are no longer intercepted",
            removed.len(),
            cfg.daemon.bpffs.display()
        );
    }
    Ok(())
}
