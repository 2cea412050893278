//! interceptor: transparent policy proxy between CI tasks and secret stores.
//!
//! One function per subcommand; everything else lives in the modules.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use interceptor::{
    audit::{
        self,
        query::{self, Filter, Format},
        Decision,
    },
    config::{self, Config},
    control, daemon, redirect, tls,
};

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
        /// Any bytes, not only UTF-8: passed to CMD as given.
        #[arg(required = true, last = true)]
        cmd: Vec<std::ffi::OsString>,
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
    /// Query the audit trail (the Parquet files under daemon.audit_dir).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// One session's identity, then every command in order with its
    /// decision and timing.
    Replay {
        session_id: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        /// Audit directory to read instead of the config's daemon.audit_dir
        /// (the config is then not read).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The local CA that signs the certificates shown to tasks.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate (PEM) for the tasks' trust stores, creating
    /// the CA under daemon.state_dir if the daemon has not yet.
    Export {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print the path of the CA certificate (creating the CA likewise).
    Path {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Intercepted connections: who (pid, uid, unit, exe, CI job) reached
    /// which store, and how it ended.
    Sessions {
        #[command(flatten)]
        query: AuditQuery,
    },
    /// Commands: what each session asked for and what the policy decided.
    Events {
        #[command(flatten)]
        query: AuditQuery,
        /// allow, deny, mask, held, approved, rejected, expired or error.
        #[arg(long, value_parser = parse_decision)]
        decision: Option<Decision>,
        /// Only the commands of this session.
        #[arg(long = "session")]
        session_id: Option<String>,
    },
    /// Roll the journal into Parquet now (asks the running daemon).
    Flush {
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// The HMAC of VALUE under this host's key: search the trail for where a
    /// secret was used without writing it down.
    Hash {
        value: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

/// Filters shared by `audit sessions` and `audit events`.
#[derive(clap::Args)]
struct AuditQuery {
    #[arg(long, short, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Audit directory to read instead of the config's daemon.audit_dir
    /// (the config is then not read).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// From this time on: 2026-11-29T10:00:00Z, 2026-11-29, "2026-11-29 10:00:00"
    /// (UTC), or a duration ago such as 90s, 15m, 2h, 7d.
    #[arg(long)]
    since: Option<String>,
    /// Before this time (same forms as --since).
    #[arg(long)]
    until: Option<String>,
    /// Store name, as in the config's [[store]] name.
    #[arg(long)]
    store: Option<String>,
    #[arg(long)]
    pid: Option<u32>,
    #[arg(long)]
    uid: Option<u32>,
    /// systemd unit, e.g. gitlab-runner.service.
    #[arg(long)]
    unit: Option<String>,
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Json,
    Csv,
}

impl From<OutputFormat> for Format {
    fn from(f: OutputFormat) -> Format {
        match f {
            OutputFormat::Table => Format::Table,
            OutputFormat::Json => Format::Json,
            OutputFormat::Csv => Format::Csv,
        }
    }
}

fn parse_decision(s: &str) -> Result<Decision, String> {
    Decision::parse(s).ok_or_else(|| {
        format!("unknown decision {s:?}: use allow, deny, mask, held, approved, rejected, expired or error")
    })
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
        Command::Audit { command } => audit_command(command),
        Command::Replay {
            session_id,
            config,
            dir,
        } => replay(&config, dir.as_deref(), &session_id),
        Command::Ca { command } => ca(command),
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

fn exec(path: &Path, allow_detached: bool, cmd: &[std::ffi::OsString]) -> Result<()> {
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
    Err(err).with_context(|| format!("cannot run {}", program.to_string_lossy()))
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

/// `--dir` when given (the config is then not needed), else the config's
/// daemon.audit_dir.
fn audit_dir(config: &Path, dir: Option<&Path>) -> Result<PathBuf> {
    match dir {
        Some(d) => Ok(d.to_path_buf()),
        None => Ok(load(config)
            .context("reading daemon.audit_dir from the config (or pass --dir D)")?
            .daemon
            .audit_dir),
    }
}

fn audit_command(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::Sessions { query } => audit_sessions(&query),
        AuditCommand::Events {
            query,
            decision,
            session_id,
        } => audit_events(&query, decision, session_id),
        AuditCommand::Flush { config } => audit_flush(&config),
        AuditCommand::Hash { value, config } => audit_hash(&config, &value),
    }
}

fn audit_filter(q: &AuditQuery) -> Result<Filter> {
    let now = audit::now_us();
    let time = |flag: &str, v: &Option<String>| -> Result<Option<i64>> {
        v.as_deref()
            .map(|s| query::parse_time(s, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
            .transpose()
    };
    Ok(Filter {
        since: time("since", &q.since)?,
        until: time("until", &q.until)?,
        store: q.store.clone(),
        pid: q.pid,
        uid: q.uid,
        unit: q.unit.clone(),
        ..Filter::default()
    })
}

fn audit_sessions(q: &AuditQuery) -> Result<()> {
    let filter = audit_filter(q)?;
    let dir = audit_dir(&q.config, q.dir.as_deref())?;
    let rows = query::read_sessions(&dir, &filter)?;
    print!("{}", query::render_sessions(&rows, q.format.into()));
    Ok(())
}

fn audit_events(
    q: &AuditQuery,
    decision: Option<Decision>,
    session_id: Option<String>,
) -> Result<()> {
    let filter = Filter {
        decision,
        session_id,
        ..audit_filter(q)?
    };
    let dir = audit_dir(&q.config, q.dir.as_deref())?;
    let rows = query::read_events(&dir, &filter)?;
    print!("{}", query::render_events(&rows, q.format.into()));
    Ok(())
}

fn audit_flush(path: &Path) -> Result<()> {
    let cfg = load(path)?;
    let answer = match control::request(&cfg.daemon.control_socket, "flush") {
        Ok(answer) => answer,
        Err(e) => bail!(
            "{e:#}: is the daemon running? (`interceptor run --config {}`)",
            path.display()
        ),
    };
    let text = |key: &str| answer.get(key).and_then(|v| v.as_str());
    if let Some(err) = text("error") {
        bail!("the daemon refused to flush: {err}");
    }
    let message = text("message").map_or_else(|| answer.to_string(), str::to_string);
    if answer.get("ok").and_then(|v| v.as_bool()) == Some(false) {
        bail!("{message}");
    }
    println!("{message}");
    Ok(())
}

fn audit_hash(path: &Path, value: &str) -> Result<()> {
    let cfg = load(path)?;
    let key = audit::hostkey::HostKey::load(&cfg.daemon.state_dir)?;
    println!("{}", key.hash(value.as_bytes()));
    Ok(())
}

/// Creating the CA here too lets operators provision trust stores before
/// the daemon's first start; the daemon then loads the same CA.
fn ca(command: CaCommand) -> Result<()> {
    let (CaCommand::Export { config } | CaCommand::Path { config }) = &command;
    let ca = tls::LocalCa::load_or_create(&load(config)?.daemon.state_dir)?;
    match command {
        CaCommand::Export { .. } => println!("{}", ca.cert_pem().trim_end()),
        CaCommand::Path { .. } => println!("{}", ca.cert_path().display()),
    }
    Ok(())
}

fn replay(config: &Path, dir: Option<&Path>, session_id: &str) -> Result<()> {
    let dir = audit_dir(config, dir)?;
    match query::read_replay(&dir, session_id)? {
        Some((session, events)) => {
            print!("{}", query::render_replay(&session, &events));
            Ok(())
        }
        None => bail!(
            "no session {session_id} in {}: check the id (`interceptor audit sessions`), or run `interceptor audit flush` if it ended in the last flush interval",
            dir.display()
        ),
    }
}
