//! `interceptor run`: bind, attach, serve, keep the store map fresh, stop
//! cleanly. Stopping never detaches: while the daemon is down, intercepted
//! connects are refused.

use std::{
    path::Path,
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{signal::unix::SignalKind, sync::watch};

use crate::{
    audit::{
        self,
        hostkey::HostKey,
        journal::{self, Journal},
        recorder::JournalRecorder,
        roller::{RollMode, RollReport, Roller},
    },
    config::{self, Config},
    control,
    policy::rules::Policy,
    protocol::{
        http::session::HttpStore,
        postgres::{masking::StoreMasks, session::PgStore},
        redis::session::RedisStore,
    },
    proxy::{self, Handlers, Proxy, Stats, UpstreamConnector},
    redirect::{self, stores, InstallSpec, Redirector},
    tls::LocalCa,
};

/// How long open sessions may run on after SIGTERM.
const DRAIN: Duration = Duration::from_secs(10);

pub fn run(config_path: &Path) -> Result<()> {
    init_tracing();
    let cfg = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("interceptor")
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(cfg))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("INTERCEPTOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("INTERCEPTOR_LOG_FORMAT").is_ok_and(|v| v == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

async fn run_async(cfg: Config) -> Result<()> {
    let started = Instant::now();
    let cgroup = redirect::cgroup::resolve(&cfg.daemon.cgroup, true)?;

    // Listen before attaching, so the first redirected connect already lands.
    let listen = cfg.daemon.listen;
    check_listen_port_is_privileged(listen.port(), cfg.daemon.allow_unprivileged_listen_port)?;
    let listeners = proxy::bind_listeners(listen).with_context(|| {
        format!("cannot listen on {listen}: is another interceptor running? (`interceptor status`)")
    })?;

    // The audit trail comes up before anything is intercepted: whatever a
    // previous daemon journaled is rolled first, exactly once.
    let key = HostKey::load_or_create(&cfg.daemon.state_dir)?;
    let durability = match cfg.audit.durability {
        config::Durability::Batched => journal::Durability::Batched,
        config::Durability::Strict => journal::Durability::Strict,
    };
    let journal_dir = cfg.daemon.state_dir.join("journal");
    let journal = Arc::new(Journal::open(&journal_dir, durability)?);
    let roller = Arc::new(Roller::new(
        journal.clone(),
        &cfg.daemon.audit_dir,
        &cfg.daemon.state_dir,
    ));
    match roll(&roller, RollMode::Recovery).await {
        Ok(r) => tracing::info!(
            sessions = r.sessions,
            events = r.events,
            damaged = r.damaged,
            skipped_already_rolled = r.skipped_already_rolled,
            audit_dir = %cfg.daemon.audit_dir.display(),
            "audit recovery: journal rolled into Parquet"
        ),
        Err(e) => {
            tracing::error!(error = %e, "audit recovery roll failed: the journal is kept and rolled at the next flush")
        }
    }
    let recorder = Arc::new(JournalRecorder::new(journal.clone(), cfg.audit.on_failure));
    let handlers = handlers(&cfg, &key)?;

    let (resolved, failures) = resolve(cfg.stores.clone()).await;
    for f in &failures {
        tracing::warn!(target_name = %f, "store target does not resolve; retrying every {:?}", cfg.daemon.resolve_interval);
    }
    let entries = stores::desired_entries(&cfg.stores, &resolved);
    let spec = InstallSpec {
        bpffs: &cfg.daemon.bpffs,
        cgroup: &cgroup,
        listen,
        upstream_mark: cfg.daemon.upstream_mark,
    };
    let (redirector, peers) = redirect::install(&spec, &entries)?;
    tracing::info!(
        cgroup = %cgroup.display(),
        listen = %listen,
        bpffs = %cfg.daemon.bpffs.display(),
        store_entries = entries.len(),
        "attached: connects to stores from this cgroup are now intercepted"
    );
    let proxy = Arc::new(Proxy {
        stores: cfg.stores.clone(),
        peers,
        recorder: recorder.clone(),
        key,
        upstream: UpstreamConnector {
            mark: cfg.daemon.upstream_mark,
        },
        host: audit::hostname(),
        stats: Stats::default(),
        policy: Policy::new(&cfg.rules),
        handlers,
    });
    let redirector = Arc::new(Mutex::new(redirector));

    let control_listener = control::bind(&cfg.daemon.control_socket)?;
    let handler = Arc::new(StatusHandler {
        proxy: proxy.clone(),
        started,
        cfg: cfg.clone(),
        roller: roller.clone(),
        journal: journal.clone(),
        recorder: recorder.clone(),
    });
    tokio::spawn(control::serve(control_listener, handler));
    tokio::spawn(refresh_stores(cfg.clone(), redirector.clone(), resolved));
    tokio::spawn(periodic_rolls(roller.clone(), cfg.audit.flush_interval));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot watch SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("stopping: programs stay attached, intercepted connects are refused until the daemon is back");
        let _ = shutdown_tx.send(true);
    });

    notify_systemd("READY=1");
    tracing::info!(pid = std::process::id(), "ready");
    proxy.clone().serve(listeners, shutdown_rx, DRAIN).await;
    notify_systemd("STOPPING=1");
    match roll(&roller, RollMode::Shutdown).await {
        Ok(r) => tracing::info!(
            sessions = r.sessions,
            events = r.events,
            "audit flushed to Parquet"
        ),
        Err(e) => {
            tracing::error!(error = %e, "final audit roll failed: the journal is kept and rolled at the next start")
        }
    }
    if let Err(e) = journal.sync() {
        tracing::error!(error = %e, "syncing the audit journal failed");
    }
    let _ = std::fs::remove_file(&cfg.daemon.control_socket);
    Ok(())
}

/// The listener must be a port no unprivileged task can bind while the
/// daemon is down, on this host's actual settings, not just by convention.
fn check_listen_port_is_privileged(port: u16, allowed: bool) -> Result<()> {
    let path = "/proc/sys/net/ipv4/ip_unprivileged_port_start";
    let Some(start) = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return Ok(());
    };
    if u32::from(port) >= start && !allowed {
        anyhow::bail!(
            "net.ipv4.ip_unprivileged_port_start is {start}, so any user could bind the listener port {port} \
             while the daemon is down and receive intercepted connections; raise the sysctl above {port} \
             or set daemon.allow_unprivileged_listen_port = true to accept that risk"
        );
    }
    if u32::from(port) >= start {
        tracing::warn!(
            port,
            "the listener port can be bound by unprivileged users while the daemon is down"
        );
    }
    Ok(())
}

async fn roll(roller: &Arc<Roller>, mode: RollMode) -> Result<RollReport, String> {
    let roller = roller.clone();
    match tokio::task::spawn_blocking(move || roller.roll(mode)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("roll task failed: {e}")),
    }
}

/// Journal -> Parquet every `audit.flush_interval`.
async fn periodic_rolls(roller: Arc<Roller>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        match roll(&roller, RollMode::Normal).await {
            Ok(r) if r.sessions + r.events > 0 => tracing::info!(
                sessions = r.sessions,
                events = r.events,
                carried = r.carried,
                millis = r.millis as u64,
                "audit rolled to Parquet"
            ),
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "audit roll failed: the journal is kept and retried at the next interval")
            }
        }
    }
}

async fn resolve(stores: Vec<crate::config::StoreConfig>) -> (stores::Resolved, Vec<String>) {
    tokio::task::spawn_blocking(move || stores::resolve_all(&stores))
        .await
        .unwrap_or_else(|e| {
            (
                stores::Resolved::new(),
                vec![format!("resolver task failed: {e}")],
            )
        })
}

/// Re-resolves hostname targets and updates the kernel map when addresses
/// change. A name that stops resolving keeps its last known addresses.
async fn refresh_stores(
    cfg: Config,
    redirector: Arc<Mutex<Redirector>>,
    mut last: stores::Resolved,
) {
    let has_names = cfg
        .stores
        .iter()
        .flat_map(|s| &s.targets)
        .any(|t| matches!(t.host, crate::config::TargetHost::Name(_)));
    if !has_names {
        return;
    }
    let mut tick = tokio::time::interval(cfg.daemon.resolve_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        let (mut fresh, failures) = resolve(cfg.stores.clone()).await;
        for f in &failures {
            tracing::warn!(target_name = %f, "store target does not resolve; keeping its last addresses");
        }
        for (name, ips) in &last {
            fresh.entry(name.clone()).or_insert_with(|| ips.clone());
        }
        if fresh != last {
            let entries = stores::desired_entries(&cfg.stores, &fresh);
            let mut r = redirector.lock().unwrap_or_else(|p| p.into_inner());
            match r.set_stores(&entries) {
                Ok(()) => tracing::info!(
                    store_entries = entries.len(),
                    "store addresses changed: kernel map updated"
                ),
                Err(e) => tracing::error!(error = %e, "updating the store map failed"),
            }
            last = fresh;
        }
    }
}

struct StatusHandler {
    proxy: Arc<Proxy>,
    started: Instant,
    cfg: Config,
    roller: Arc<Roller>,
    journal: Arc<Journal>,
    recorder: Arc<JournalRecorder>,
}

impl control::Handler for StatusHandler {
    fn handle(&self, command: &str) -> serde_json::Value {
        match command {
            "status" => {
                let s = &self.proxy.stats;
                serde_json::json!({
                    "pid": std::process::id(),
                    "uptime_s": self.started.elapsed().as_secs(),
                    "listen": self.cfg.daemon.listen.to_string(),
                    "cgroup": self.cfg.daemon.cgroup,
                    "stores": self.cfg.stores.iter().map(|s| serde_json::json!({"name": s.name, "protocol": s.protocol.as_str()})).collect::<Vec<_>>(),
                    "sessions_accepted": s.accepted.load(Ordering::Relaxed),
                    "sessions_active": s.active.load(Ordering::Relaxed),
                    "rejected_without_record": s.rejected_no_record.load(Ordering::Relaxed),
                    "upstream_failures": s.upstream_failures.load(Ordering::Relaxed),
                    "audit": {
                        "journal": self.journal.stats(),
                        "recorder": self.recorder.stats(),
                        "audit_dir": self.cfg.daemon.audit_dir,
                    },
                })
            }
            "flush" => {
                // Blocking I/O from the control task: fine on the multi-threaded runtime.
                match tokio::task::block_in_place(|| self.roller.roll(RollMode::Normal)) {
                    Ok(r) => serde_json::json!({
                        "ok": true,
                        "message": format!(
                            "flushed {} sessions and {} events to {} ({} open records carried over)",
                            r.sessions, r.events, self.cfg.daemon.audit_dir.display(), r.carried
                        ),
                        "report": r,
                    }),
                    Err(e) => {
                        serde_json::json!({ "ok": false, "message": format!("flush failed: {e}") })
                    }
                }
            }
            other => {
                serde_json::json!({ "error": format!("unknown command {other:?}; known: status, flush") })
            }
        }
    }
}

/// sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET.
fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// The `postgres` stores, ready to serve: masks compiled, upstream TLS
/// configured, and the local CA (created on first start) for client TLS.
fn handlers(cfg: &Config, key: &HostKey) -> Result<Handlers> {
    use crate::config::Protocol;
    let mut out = Handlers::default();
    if cfg.stores.iter().all(|s| s.protocol == Protocol::Tcp) {
        return Ok(out);
    }
    let ca = LocalCa::load_or_create(&cfg.daemon.state_dir).with_context(|| {
        format!(
            "cannot load or create the local CA under {}",
            cfg.daemon.state_dir.display()
        )
    })?;
    tracing::info!(ca = %ca.cert_path().display(), "local CA ready: clients verify the proxy with it (`interceptor ca export`)");
    for store in &cfg.stores {
        let name = store.name.clone();
        let ctx = || format!("store {}", store.name);
        match store.protocol {
            Protocol::Tcp => {}
            Protocol::Postgres => {
                let masks = StoreMasks::new(&store.name, &cfg.masks, key.clone())
                    .with_context(|| format!("store {}: masks", store.name))?;
                let pg = PgStore::new(store, masks, Some(ca.clone()), cfg.audit.statements)
                    .with_context(|| format!("store {}: upstream TLS", store.name))?;
                out.pg.insert(name, Arc::new(pg));
            }
            Protocol::Redis => {
                let r = RedisStore::new(
                    store,
                    &cfg.masks,
                    key.clone(),
                    ca.clone(),
                    cfg.audit.statements,
                )
                .with_context(ctx)?;
                out.redis.insert(name, Arc::new(r));
            }
            Protocol::Http => {
                let h = HttpStore::new(
                    store,
                    &cfg.masks,
                    key.clone(),
                    ca.clone(),
                    cfg.audit.statements,
                )
                .with_context(ctx)?;
                out.http.insert(name, Arc::new(h));
            }
        }
    }
    Ok(out)
}
