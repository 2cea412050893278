//! The listener every intercepted connect lands on: accept, find out who
//! connected and where they were going, dispatch to the store's protocol
//! handler.

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use interceptor_ebpf::ConnRecord;
use socket2::{Domain, Protocol as SockProtocol, SockRef, Socket, Type};
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::watch,
    task::JoinSet,
};
use tokio_util::task::TaskTracker;

use crate::{
    audit::{self, hostkey::redact_cmdline, hostkey::HostKey, Recorder, SessionRecord},
    config::{Protocol, StoreConfig},
    identity::{Identity, KernelIdentity},
    policy::rules::Policy,
    protocol::{
        self, http::session::HttpStore, postgres::session::PgStore, redis::session::RedisStore,
    },
    redirect::{stores, PeerTable},
};

/// How long an upstream connect may take before the session is ended.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the daemon's own upstream connections. Every socket carries the
/// upstream mark, which the connect hook recognises and leaves alone; only a
/// process with CAP_NET_ADMIN can set it, so no task can forge it.
#[derive(Clone, Copy, Debug)]
pub struct UpstreamConnector {
    pub mark: u32,
}

impl UpstreamConnector {
    pub async fn connect(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        SockRef::from(&socket).set_mark(self.mark)?;
        socket.set_nodelay(true)?;
        match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, socket.connect(addr)).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "upstream connect timed out",
            )),
        }
    }
}

/// Counters shown by `interceptor status`.
#[derive(Default, Debug)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub rejected_no_record: AtomicU64,
    pub upstream_failures: AtomicU64,
}

/// Everything a connection task needs, shared.
pub struct Proxy {
    pub stores: Vec<StoreConfig>,
    pub peers: PeerTable,
    pub recorder: Arc<dyn Recorder>,
    pub key: HostKey,
    pub upstream: UpstreamConnector,
    pub host: String,
    pub stats: Stats,
    /// Every `[[rule]]`, narrowed per session to its store and process.
    pub policy: Policy,
    /// The protocol handlers' per-store state, by store name.
    pub handlers: Handlers,
}

/// Per-store state of the protocol handlers, built once at start. A store
/// of a parsing protocol that is missing here is refused (fail closed).
#[derive(Default)]
pub struct Handlers {
    pub pg: HashMap<String, Arc<PgStore>>,
    pub redis: HashMap<String, Arc<RedisStore>>,
    pub http: HashMap<String, Arc<HttpStore>>,
}

/// The handler a store's sessions go to.
enum Handler {
    Tcp,
    Postgres(Arc<PgStore>),
    Redis(Arc<RedisStore>),
    Http(Arc<HttpStore>),
}

impl Handlers {
    fn for_store(&self, store: &StoreConfig) -> Option<Handler> {
        match store.protocol {
            Protocol::Tcp => Some(Handler::Tcp),
            Protocol::Postgres => self.pg.get(&store.name).cloned().map(Handler::Postgres),
            Protocol::Redis => self.redis.get(&store.name).cloned().map(Handler::Redis),
            Protocol::Http => self.http.get(&store.name).cloned().map(Handler::Http),
        }
    }
}

/// Binds the listener address and its loopback twin of the other family
/// (same port), so IPv4, IPv4-mapped and native IPv6 connects all land.
pub fn bind_listeners(listen: SocketAddr) -> io::Result<Vec<TcpListener>> {
    let twin = match listen.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V6(stores::proxy_ip6(&listen)), listen.port()),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V4(stores::proxy_ip4(&listen)), listen.port()),
    };
    let mut out = vec![bind_one(listen)?];
    match bind_one(twin) {
        Ok(l) => out.push(l),
        Err(e) => tracing::warn!(
            addr = %twin,
            error = %e,
            "cannot listen on the loopback twin: intercepted connects of that family will be refused"
        ),
    }
    Ok(out)
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl Proxy {
    /// Accepts until `shutdown` turns true, then waits for open sessions to
    /// end (at most `drain`).
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        shutdown: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let sessions = TaskTracker::new();
        let mut accepts = JoinSet::new();
        for listener in listeners {
            let (this, sessions, mut shutdown) = (self.clone(), sessions.clone(), shutdown.clone());
            accepts.spawn(async move {
                loop {
                    tokio::select! {
                        _ = shutdown.changed() => return,
                        conn = listener.accept() => match conn {
                            Ok((stream, peer)) => {
                                let this = this.clone();
                                sessions.spawn(async move { this.handle(stream, peer).await });
                            }
                            Err(e) => {
                                // EMFILE and friends: back off instead of spinning.
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                    }
                }
            });
        }
        while accepts.join_next().await.is_some() {}
        sessions.close();
        let active = sessions.len();
        if active > 0 {
            tracing::info!(active, "waiting for open sessions to finish");
            if tokio::time::timeout(drain, sessions.wait()).await.is_err() {
                tracing::warn!(
                    active = sessions.len(),
                    "sessions still open after {drain:?}: ending them"
                );
            }
        }
    }

    async fn handle(&self, client: TcpStream, peer: SocketAddr) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let Some(record) = self.peers.take(&peer) else {
            self.stats
                .rejected_no_record
                .fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %peer, "connection without a redirect record (someone dialled the listener directly): closed");
            return;
        };
        let Some(store) = self.stores.get(record.store_id as usize) else {
            tracing::warn!(client = %peer, store_id = record.store_id, "redirect record names an unknown store: closed");
            reset(client);
            return;
        };
        let original_dst =
            SocketAddr::new(stores::words_ip(&record.orig_addr), record.orig_port as u16);
        let kernel = kernel_identity(&record);
        self.stats.active.fetch_add(1, Ordering::Relaxed);
        match self.handlers.for_store(store) {
            Some(handler) => {
                let (upstream, identity) = if self.recorder.available() {
                    // The upstream handshake and the /proc reads overlap:
                    // connect is started first, identity is read meanwhile.
                    let (upstream, identity) =
                        tokio::join!(self.upstream.connect(original_dst), async {
                            Identity::resolve(kernel)
                        });
                    let upstream = upstream.map_err(|e| {
                        self.stats.upstream_failures.fetch_add(1, Ordering::Relaxed);
                        format!("upstream connect to {original_dst} failed: {e}")
                    });
                    (protocol::tcp::Upstream::Connected(upstream), identity)
                } else {
                    (
                        protocol::tcp::Upstream::AfterJournal(self.upstream, original_dst),
                        Identity::resolve(kernel),
                    )
                };
                let session = self.new_session(store, peer, original_dst, &identity);
                let recorder = self.recorder.clone();
                let policy = || self.policy.for_session(&store.name, &identity);
                match handler {
                    Handler::Tcp => {
                        protocol::tcp::serve(client, upstream, session, &*self.recorder).await
                    }
                    Handler::Postgres(pg) => {
                        protocol::postgres::session::serve(
                            client,
                            upstream,
                            session,
                            pg,
                            policy(),
                            recorder,
                        )
                        .await
                    }
                    Handler::Redis(r) => {
                        protocol::redis::session::serve(
                            client,
                            upstream,
                            session,
                            r,
                            policy(),
                            recorder,
                        )
                        .await
                    }
                    Handler::Http(h) => {
                        protocol::http::session::serve(
                            client,
                            upstream,
                            session,
                            h,
                            policy(),
                            recorder,
                        )
                        .await
                    }
                }
            }
            None => {
                // No handler for this store: relaying raw bytes would skip
                // every rule and mask, so the session is refused.
                let mut session =
                    self.new_session(store, peer, original_dst, &Identity::resolve(kernel));
                reset(client);
                session.close(format!(
                    "{} handler not available in this build: connection refused (fail closed)",
                    store.protocol
                ));
                record_session(&*self.recorder, &session);
            }
        }
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// A session record as it opens, with the secrets in the command line
    /// already replaced by their HMAC.
    fn new_session(
        &self,
        store: &StoreConfig,
        peer: SocketAddr,
        original_dst: SocketAddr,
        identity: &Identity,
    ) -> SessionRecord {
        let mut session = SessionRecord::open(
            &self.host,
            &store.name,
            store.protocol.as_str(),
            peer,
            original_dst,
            identity,
        );
        session.cmdline = session.cmdline.map(|c| redact_cmdline(&c, &self.key));
        session
    }
}

/// Logs a session version and journals it. Returns false when the recorder
/// refused it (the caller must then not forward anything).
pub fn record_session(recorder: &dyn Recorder, session: &SessionRecord) -> bool {
    audit::log_session(session);
    match recorder.session(session) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(session_id = %session.session_id, error = %e, "session not recorded");
            false
        }
    }
}

fn kernel_identity(r: &ConnRecord) -> KernelIdentity {
    let end = r.comm.iter().position(|&b| b == 0).unwrap_or(r.comm.len());
    KernelIdentity {
        tgid: r.tgid,
        tid: r.tid,
        uid: r.uid,
        gid: r.gid,
        comm: String::from_utf8_lossy(&r.comm[..end]).into_owned(),
        cgroup_id: r.cgroup_id,
    }
}

/// Ends a client connection with a TCP reset, the closest a transparent proxy
/// can come to "connection refused" once the handshake has happened.
pub fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}
