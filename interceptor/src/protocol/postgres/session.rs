//! The PostgreSQL session handler.
//!
//! 1. **Startup**: the client's first messages are read here. SSLRequest is
//!    answered `S` and TLS is terminated with a leaf the local CA mints for
//!    the name the client asked for (SNI) or the address it dialled;
//!    PostgreSQL 17 direct TLS (a ClientHello first, ALPN `postgresql`) is
//!    accepted too. GSSENCRequest is answered `N`. A CancelRequest is relayed
//!    to the server the client dialled. Bytes that arrive after an
//!    SSLRequest before the handshake are refused (CVE-2021-23214).
//! 2. **Upstream**: TLS per the store's `upstream_tls`, then the client's
//!    StartupMessage, then the authentication exchange relayed message by
//!    message (trust, password, md5, SCRAM-SHA-256), with
//!    SCRAM-SHA-256-PLUS removed from the server's offer: channel binding
//!    cannot survive TLS termination.
//! 3. **Queries**: two loops share one [`Shared`] state. The client loop
//!    decodes each message, decides on every simple Query and Parse (rules,
//!    then the masking check), journals the command, and forwards it, or
//!    forwards a stand-in that fails at parse time (`interceptor_denied_by_policy`)
//!    so that the server's transaction state follows exactly what a real
//!    error would do: the transaction block fails, an extended batch skips
//!    to Sync. The server loop matches every reply to the pending request
//!    it answers (a queue, in order, so pipelining works), rewrites the
//!    stand-in's error into SQLSTATE 42501 with the rule's message, masks
//!    rows, and finishes the audit events.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};

use super::backend::{
    Authentication, ErrorResponse, Field, ReadyForQuery, RowDescription, TransactionStatus,
};
use super::codec::{
    decode_frame, decode_startup, is_direct_tls, CodecError, Format, Frame, Message, StartupFrame,
    DEFAULT_MAX_BACKEND_MESSAGE, DEFAULT_MAX_MESSAGE, MAX_STARTUP_MESSAGE,
};
use super::frontend::{
    Bind, CancelRequest, Close, CopyData, Describe, Execute, Parse, Query, Startup, Target,
};
use super::masking::{parse_fields, Catalogs, Plan, StoreMasks};
use super::{error_response, PgStr};
use crate::{
    audit::{
        normalize::{normalize_tokens, statement_for_audit},
        CommandEvent, Decision, Recorder, SessionRecord,
    },
    config::{StatementMode, StoreConfig, UpstreamTls},
    policy::{
        mask_sql::{self, CATALOG_SQL},
        rules::{SessionPolicy, Verdict},
        sql::{analyze_full, analyze_tokens, tokenize_sql, Analysis},
    },
    protocol::tcp::Upstream,
    protocol::{write_buf, BoxIo},
    proxy::record_session,
    tls::ServerConfigs,
    tls::{LocalCa, UpstreamTlsConfig},
};

/// How long a client may take to send its startup messages and finish
/// authenticating: a silent peer must not hold a session forever.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a catalog read by one session serves later sessions.
const CATALOG_TTL: Duration = Duration::from_secs(10);

/// The stand-in statement sent instead of a denied one. It fails at parse
/// time (42601) without touching anything, exactly like a real error.
const DENIED_SQL: &str = "interceptor_denied_by_policy";

/// SQLSTATE insufficient_privilege: what a denial answers.
const DENIED_SQLSTATE: &str = "42501";

const READ_CHUNK: usize = 64 * 1024;

/// What a closed session ends with in the audit trail when the proxy
/// refuses it for want of a journal.
const REFUSED: &str = "refused: the audit journal cannot be written (audit.on_failure = \"block\")";

/// (server address, database): a catalog describes one database.
type CatalogKey = (SocketAddr, String);
/// A catalog, when it was read, and the DDL generation then.
type CachedCatalog = (Arc<Catalogs>, Instant, u64);

/// One `postgres` store, ready to serve sessions. Built once at start.
pub struct PgStore {
    pub name: String,
    pub masks: StoreMasks,
    upstream_tls: UpstreamTlsConfig,
    statements: StatementMode,
    /// Catalogs read in-band, per (server address, database), shared by the
    /// sessions to that database.
    catalogs: Mutex<HashMap<CatalogKey, CachedCatalog>>,
    /// Bumped by every DDL statement any session runs: catalogs read before
    /// are stale.
    ddl_generation: AtomicU64,
    /// None without a local CA: SSLRequest is then answered N.
    server_configs: Option<ServerConfigs>,
}

impl PgStore {
    pub fn new(
        store: &StoreConfig,
        masks: StoreMasks,
        ca: Option<LocalCa>,
        statements: StatementMode,
    ) -> anyhow::Result<PgStore> {
        let upstream_tls = UpstreamTlsConfig::new(
            store.upstream_tls,
            store.upstream_ca.as_deref(),
            vec![b"postgresql".to_vec()],
        )?;
        Ok(PgStore {
            name: store.name.clone(),
            masks,
            upstream_tls,
            statements,
            catalogs: Mutex::new(HashMap::new()),
            ddl_generation: AtomicU64::new(0),
            server_configs: ca
                .map(|ca| ServerConfigs::new(ca, vec![b"postgresql".to_vec()], &store.name)),
        })
    }

    /// The TLS server config for sessions that dialled `name` (cached).
    fn server_config(&self, name: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.server_configs.as_ref()?.get(name)
    }

    fn cached_catalog(&self, key: &(SocketAddr, String)) -> Option<Arc<Catalogs>> {
        let cache = lock(&self.catalogs);
        let (c, at, generation) = cache.get(key)?;
        (at.elapsed() < CATALOG_TTL && *generation == self.ddl_generation.load(Ordering::Relaxed))
            .then(|| c.clone())
    }

    fn store_catalog(&self, key: (SocketAddr, String), c: Arc<Catalogs>, generation: u64) {
        let mut cache = lock(&self.catalogs);
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(key, (c, Instant::now(), generation));
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the maps in a
    // state worse than stale; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs one intercepted PostgreSQL connection to its end and records it.
pub async fn serve(
    client: TcpStream,
    upstream: Upstream,
    session: SessionRecord,
    store: Arc<PgStore>,
    policy: SessionPolicy,
    recorder: Arc<dyn Recorder>,
) {
    let Some((client, upstream, mut session)) =
        crate::protocol::tcp::open_session(client, upstream, session, &*recorder).await
    else {
        return;
    };
    let original_dst: SocketAddr = session
        .original_dst
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 5432)));
    let end = run(
        client,
        upstream,
        &mut session,
        &store,
        policy,
        &recorder,
        original_dst,
    )
    .await;
    session.close(end);
    record_session(&*recorder, &session);
}

/// What the client opened the connection for.
enum ClientStart {
    Session {
        io: BoxIo,
        buf: BytesMut,
        startup: Startup,
        tls: bool,
        sni: Option<String>,
    },
    /// With the client's connection, to end it cleanly (over TLS, with
    /// close_notify: libpq 17+ reads a cancel connection to its end and
    /// reports an abrupt one as an error).
    Cancel(CancelRequest, BoxIo),
}

/// The session, from startup to the end; returns the end reason.
async fn run(
    client: TcpStream,
    upstream: Result<TcpStream, String>,
    session: &mut SessionRecord,
    store: &Arc<PgStore>,
    policy: SessionPolicy,
    recorder: &Arc<dyn Recorder>,
    original_dst: SocketAddr,
) -> String {
    let _ = client.set_nodelay(true);
    let default_name = original_dst.ip().to_string();
    let start = match tokio::time::timeout(
        STARTUP_TIMEOUT,
        negotiate_client(client, store, &default_name),
    )
    .await
    {
        Err(_) => return "client sent no startup message in time".into(),
        Ok(Err(e)) => return e,
        Ok(Ok(s)) => s,
    };
    let (mut client, mut cbuf, startup, client_tls, sni) = match start {
        ClientStart::Cancel(cancel, mut io) => {
            let end = relay_cancel(cancel, upstream, session, store, recorder, &default_name).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), io.shutdown()).await;
            return end;
        }
        ClientStart::Session {
            io,
            buf,
            startup,
            tls,
            sni,
        } => (io, buf, startup, tls, sni),
    };
    session.client_tls = client_tls;
    session.db_user = startup.user().map(str::to_string);
    session.database = startup.database().map(str::to_string);

    let server_tcp = match upstream {
        Ok(s) => s,
        Err(e) => {
            let _ = write_fatal(&mut client, "08001", &format!("interceptor: {e}")).await;
            return e;
        }
    };
    session.upstream_addr = server_tcp.peer_addr().ok().map(|a| a.to_string());
    let server_name = sni.clone().unwrap_or_else(|| default_name.clone());
    let (mut server, upstream_tls) = match tokio::time::timeout(
        STARTUP_TIMEOUT,
        negotiate_upstream(server_tcp, &store.upstream_tls, &server_name),
    )
    .await
    {
        Err(_) => {
            let e = "upstream TLS negotiation timed out".to_string();
            let _ = write_fatal(&mut client, "08001", &format!("interceptor: {e}")).await;
            return e;
        }
        Ok(Err(e)) => {
            let _ = write_fatal(&mut client, "08001", &format!("interceptor: {e}")).await;
            return e;
        }
        Ok(Ok(s)) => s,
    };
    session.upstream_tls = upstream_tls;
    session.rev += 1;
    if !record_session(&**recorder, session) {
        let _ = write_fatal(&mut client, "57P03", &format!("interceptor: {REFUSED}")).await;
        return REFUSED.into();
    }

    let mut sbuf = BytesMut::with_capacity(16 * 1024);
    if let Err(e) = server.write_all(&startup.to_bytes()).await {
        return format!("upstream write failed: {e}");
    }
    let auth = tokio::time::timeout(
        STARTUP_TIMEOUT,
        relay_auth(&mut client, &mut cbuf, &mut server, &mut sbuf, upstream_tls),
    )
    .await;
    let txn = match auth {
        Err(_) => {
            let _ = write_fatal(
                &mut client,
                "08006",
                "interceptor: authentication timed out",
            )
            .await;
            return "authentication timed out".into();
        }
        Ok(Err(e)) => return e,
        Ok(Ok(txn)) => txn,
    };

    let database = session.database.clone().unwrap_or_default();
    let catalog_key = (original_dst, database);
    let cached = store.cached_catalog(&catalog_key);
    let catalog_at = cached
        .as_ref()
        .map(|_| (Instant::now(), store.ddl_generation.load(Ordering::Relaxed)));
    let catalogs = cached.unwrap_or_else(|| Arc::new(Catalogs::empty(&store.masks)));
    let shared = Mutex::new(Shared {
        pending: VecDeque::new(),
        discard_until_sync: false,
        txn,
        session: session.clone(),
        statements: HashMap::new(),
        portals: HashMap::new(),
        catalogs,
        catalog_at,
        catalog_own_read: false,
        refreshed_for: std::collections::HashSet::new(),
        catalog_waiter: None,
        bytes_up: 0,
        bytes_down: 0,
    });
    let ctx = Ctx {
        store: store.clone(),
        policy,
        recorder: recorder.clone(),
        shared,
        catalog_key,
    };
    let (client_r, mut client_w) = tokio::io::split(client);
    let (server_r, mut server_w) = tokio::io::split(server);
    let (reason, fatal) = {
        let up = client_loop(&ctx, client_r, cbuf, &mut server_w);
        let down = server_loop(&ctx, server_r, sbuf, &mut client_w);
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut up => match r {
                // The client is done (its Terminate or EOF went upstream):
                // let the server's last replies through, briefly.
                Ok(reason) => match tokio::time::timeout(Duration::from_secs(5), &mut down).await {
                    Ok(Err(e)) => (e, None),
                    _ => (reason, None),
                },
                Err(fatal) => (fatal.clone(), Some(fatal)),
            },
            r = &mut down => (r.unwrap_or_else(|e| e), None),
        }
    };
    if let Some(fatal) = fatal {
        let _ = client_w
            .write_all(&error_response(
                "FATAL",
                "08P01",
                &format!("interceptor: {fatal}"),
            ))
            .await;
    }
    let _ = client_w.shutdown().await;
    let _ = server_w.shutdown().await;
    let mut sh = ctx.into_shared();
    // Commands still waiting for an answer never got one.
    for p in sh.pending.drain(..) {
        for mut event in p.into_events() {
            event.finish(Some(format!(
                "session ended before the server answered ({reason})"
            )));
            let _ = recorder.event(&event);
        }
    }
    *session = sh.session.clone();
    session.bytes_up = sh.bytes_up;
    session.bytes_down = sh.bytes_down;
    reason
}

// ---------------------------------------------------------------------------
// Startup
// ---------------------------------------------------------------------------

async fn negotiate_client(
    mut tcp: TcpStream,
    store: &PgStore,
    default_name: &str,
) -> Result<ClientStart, String> {
    let mut first = [0u8; 1];
    let n = tcp
        .peek(&mut first)
        .await
        .map_err(|e| format!("client read failed: {e}"))?;
    if n == 0 {
        return Err("client closed before sending a startup message".into());
    }
    if is_direct_tls(first[0]) {
        let Some(cfg) = store.server_config(default_name) else {
            return Err("client started TLS directly but no local CA is available".into());
        };
        let tls = tokio_rustls::TlsAcceptor::from(cfg)
            .accept(tcp)
            .await
            .map_err(|e| format!("client TLS handshake failed: {e}"))?;
        let (_, conn) = tls.get_ref();
        // PostgreSQL requires ALPN on direct TLS so that a TLS connection
        // meant for another protocol is never read as PostgreSQL.
        if conn.alpn_protocol() != Some(b"postgresql".as_slice()) {
            return Err(
                "direct TLS without ALPN \"postgresql\": refused, as PostgreSQL does".into(),
            );
        }
        let sni = conn.server_name().map(str::to_string);
        return after_tls(Box::new(tls), sni).await;
    }
    let mut buf = BytesMut::with_capacity(1024);
    let mut gss_asked = false;
    loop {
        match read_startup(&mut tcp, &mut buf).await? {
            StartupFrame::SslRequest => {
                if !buf.is_empty() {
                    // CVE-2021-23214: bytes sent before the handshake would
                    // be read as if they came through TLS.
                    return Err(
                        "client sent unencrypted data after SSLRequest, before the TLS handshake: refused".into(),
                    );
                }
                match store.server_config(default_name) {
                    Some(cfg) => {
                        tcp.write_all(b"S")
                            .await
                            .map_err(|e| format!("client write failed: {e}"))?;
                        let tls = tokio_rustls::TlsAcceptor::from(cfg)
                            .accept(tcp)
                            .await
                            .map_err(|e| format!("client TLS handshake failed: {e}"))?;
                        let sni = tls.get_ref().1.server_name().map(str::to_string);
                        return after_tls(Box::new(tls), sni).await;
                    }
                    None => tcp
                        .write_all(b"N")
                        .await
                        .map_err(|e| format!("client write failed: {e}"))?,
                }
            }
            StartupFrame::GssEncRequest => {
                if gss_asked || !buf.is_empty() {
                    return Err("client sent data after GSSENCRequest: refused".into());
                }
                gss_asked = true;
                tcp.write_all(b"N")
                    .await
                    .map_err(|e| format!("client write failed: {e}"))?;
            }
            StartupFrame::CancelRequest(c) => return Ok(ClientStart::Cancel(c, Box::new(tcp))),
            StartupFrame::Startup(startup) => {
                return Ok(ClientStart::Session {
                    io: Box::new(tcp),
                    buf,
                    startup,
                    tls: false,
                    sni: None,
                })
            }
        }
    }
}

/// The startup message (or cancel request) that follows a TLS handshake.
async fn after_tls(mut io: BoxIo, sni: Option<String>) -> Result<ClientStart, String> {
    let mut buf = BytesMut::with_capacity(1024);
    match read_startup(&mut io, &mut buf).await? {
        StartupFrame::Startup(startup) => Ok(ClientStart::Session {
            io,
            buf,
            startup,
            tls: true,
            sni,
        }),
        StartupFrame::CancelRequest(c) => Ok(ClientStart::Cancel(c, io)),
        StartupFrame::SslRequest | StartupFrame::GssEncRequest => {
            let _ = io
                .write_all(&error_response(
                    "FATAL",
                    "08P01",
                    "interceptor: encryption requested inside an encrypted connection",
                ))
                .await;
            Err("client asked for encryption twice".into())
        }
    }
}

async fn read_startup<S: AsyncRead + Unpin + ?Sized>(
    io: &mut S,
    buf: &mut BytesMut,
) -> Result<StartupFrame, String> {
    loop {
        match decode_startup(buf, MAX_STARTUP_MESSAGE) {
            Ok(Some(f)) => return Ok(f),
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        let n = io
            .read_buf(buf)
            .await
            .map_err(|e| format!("client read failed: {e}"))?;
        if n == 0 {
            return Err("client closed during startup".into());
        }
    }
}

/// Connects the upstream leg: SSLRequest and handshake as `upstream_tls`
/// asks. Returns the stream and whether it is encrypted.
async fn negotiate_upstream(
    mut tcp: TcpStream,
    cfg: &UpstreamTlsConfig,
    server_name: &str,
) -> Result<(BoxIo, bool), String> {
    let Some(connector) = cfg.connector() else {
        return Ok((Box::new(tcp), false));
    };
    tcp.write_all(&StartupFrame::SslRequest.to_bytes())
        .await
        .map_err(|e| format!("upstream write failed: {e}"))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| format!("upstream closed during TLS negotiation: {e}"))?;
    match answer[0] {
        b'S' => {
            let name = UpstreamTlsConfig::server_name(server_name)
                .map_err(|e| format!("upstream TLS: {e}"))?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| format!("upstream TLS handshake failed: {e}"))?;
            Ok((Box::new(tls), true))
        }
        b'N' if cfg.mode() == UpstreamTls::Prefer => Ok((Box::new(tcp), false)),
        b'N' => Err(format!(
            "the server does not accept TLS, and the store requires it (upstream_tls = \"{}\")",
            upstream_tls_name(cfg.mode())
        )),
        other => Err(format!(
            "the server answered SSLRequest with 0x{other:02x}; expected S or N"
        )),
    }
}

fn upstream_tls_name(mode: UpstreamTls) -> &'static str {
    match mode {
        UpstreamTls::Disable => "disable",
        UpstreamTls::Prefer => "prefer",
        UpstreamTls::Require => "require",
        UpstreamTls::VerifyFull => "verify-full",
    }
}

/// Relays the authentication exchange until the server's first
/// ReadyForQuery, which is forwarded too.
async fn relay_auth(
    client: &mut BoxIo,
    cbuf: &mut BytesMut,
    server: &mut BoxIo,
    sbuf: &mut BytesMut,
    upstream_tls: bool,
) -> Result<TransactionStatus, String> {
    loop {
        let frame = read_frame(server, sbuf, DEFAULT_MAX_BACKEND_MESSAGE, "server").await?;
        let Some(frame) = frame else {
            return Err("server closed during authentication".into());
        };
        match frame.tag {
            Some(b'R') => {
                let auth = Authentication::parse(&frame).map_err(|e| e.to_string())?;
                let needs_answer = match &auth {
                    Authentication::Ok | Authentication::SaslFinal { .. } => false,
                    Authentication::Sasl { .. } => {
                        let stripped = auth.without_channel_binding();
                        if let Authentication::Sasl { mechanisms } = &stripped {
                            if mechanisms.is_empty() {
                                let msg = "interceptor: the server accepts only SCRAM-SHA-256-PLUS (channel binding), which cannot work through a TLS-terminating proxy; allow SCRAM-SHA-256 on the server";
                                let _ = write_fatal(client, "28000", msg).await;
                                return Err("server offers only channel-bound SCRAM".into());
                            }
                        }
                        write_client(client, &stripped.to_bytes()).await?;
                        relay_client_auth(client, cbuf, server, upstream_tls).await?;
                        continue;
                    }
                    _ => true,
                };
                write_client(client, &frame.to_bytes()).await?;
                if needs_answer {
                    relay_client_auth(client, cbuf, server, false).await?;
                }
            }
            Some(b'E') => {
                write_client(client, &frame.to_bytes()).await?;
                let detail = ErrorResponse::parse(&frame)
                    .ok()
                    .and_then(|e| e.message().map(str::to_string))
                    .unwrap_or_default();
                return Err(format!("server refused the session: {detail}"));
            }
            Some(b'Z') => {
                let rfq = ReadyForQuery::parse(&frame).map_err(|e| e.to_string())?;
                write_client(client, &frame.to_bytes()).await?;
                return Ok(rfq.status);
            }
            // ParameterStatus, BackendKeyData, NoticeResponse,
            // NegotiateProtocolVersion: passed on as they are.
            Some(b'S' | b'K' | b'N' | b'v') => write_client(client, &frame.to_bytes()).await?,
            other => {
                return Err(format!(
                    "unexpected server message {} during authentication",
                    super::codec::tag_name(other)
                ))
            }
        }
    }
}

/// One client answer to an authentication request ('p'), forwarded.
///
/// `sasl_start` marks the answer to AuthenticationSASL while the server leg
/// is TLS: a client that is itself on TLS then announces (gs2 flag `y`)
/// that it could do channel binding but the server did not offer it, and
/// the server, which does support it on its TLS leg, rejects that as a
/// downgrade. Nothing in the middle can fix it (the flag is covered by the
/// SCRAM proof), so the client is told what to change instead.
async fn relay_client_auth(
    client: &mut BoxIo,
    cbuf: &mut BytesMut,
    server: &mut BoxIo,
    sasl_start: bool,
) -> Result<(), String> {
    let frame = read_frame(client, cbuf, MAX_AUTH_MESSAGE, "client").await?;
    if sasl_start {
        if let Some(f) = &frame {
            let first = super::frontend::PasswordMessage::parse(f)
                .ok()
                .and_then(|p| p.sasl_initial_response().ok());
            if let Some(first) = first {
                let gs2_y = first.data.as_ref().is_some_and(|d| d.starts_with(b"y,"));
                if gs2_y {
                    let msg = "interceptor: SCRAM with TLS on both the client and the server leg cannot keep channel binding through a TLS-terminating proxy, and this server refuses a client that could have used it; set channel_binding=disable in the client (or have the proxy reach the server without TLS)";
                    let _ = write_fatal(client, "28000", msg).await;
                    return Err("SCRAM channel binding downgrade refused by the server: the client must set channel_binding=disable".into());
                }
            }
        }
    }
    match frame {
        None => Err("client closed during authentication".into()),
        Some(f) if f.tag == Some(b'p') => server
            .write_all(&f.to_bytes())
            .await
            .map_err(|e| format!("upstream write failed: {e}")),
        Some(f) if f.tag == Some(b'X') => {
            Err("client ended the session during authentication".into())
        }
        Some(f) => {
            let msg = format!(
                "expected a password or SASL message during authentication, got {}",
                super::codec::tag_name(f.tag)
            );
            let _ = write_fatal(client, "08P01", &format!("interceptor: {msg}")).await;
            Err(msg)
        }
    }
}

/// Authentication answers are small; a bigger one is not a password.
const MAX_AUTH_MESSAGE: usize = 64 * 1024;

async fn read_frame<S: AsyncRead + Unpin + ?Sized>(
    io: &mut S,
    buf: &mut BytesMut,
    max: usize,
    who: &str,
) -> Result<Option<Frame>, String> {
    loop {
        match decode_frame(buf, max) {
            Ok(Some(f)) => return Ok(Some(f)),
            Ok(None) => {}
            Err(e) => return Err(format!("{who}: {e}")),
        }
        let n = io
            .read_buf(buf)
            .await
            .map_err(|e| format!("{who} read failed: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
    }
}

async fn write_client(client: &mut BoxIo, bytes: &[u8]) -> Result<(), String> {
    client
        .write_all(bytes)
        .await
        .map_err(|e| format!("client write failed: {e}"))
}

async fn write_fatal<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    code: &str,
    msg: &str,
) -> std::io::Result<()> {
    w.write_all(&error_response("FATAL", code, msg)).await?;
    w.flush().await
}

/// Relays a CancelRequest to the server the client dialled, the same way
/// the proxy would connect for a session (TLS per the store).
async fn relay_cancel(
    cancel: CancelRequest,
    upstream: Result<TcpStream, String>,
    session: &mut SessionRecord,
    store: &PgStore,
    recorder: &Arc<dyn Recorder>,
    server_name: &str,
) -> String {
    let mut event = session.event("CANCEL", Decision::Allow);
    event.target = Some(format!("backend pid {}", cancel.pid));
    if recorder.event(&event).is_err() {
        return REFUSED.into();
    }
    let result = async {
        let tcp = upstream?;
        let (mut server, _) = negotiate_upstream(tcp, &store.upstream_tls, server_name).await?;
        server
            .write_all(&cancel.to_bytes())
            .await
            .map_err(|e| format!("upstream write failed: {e}"))?;
        // The server closes the connection when it has read the request.
        let mut sink = [0u8; 64];
        let _ = tokio::time::timeout(Duration::from_secs(5), server.read(&mut sink)).await;
        Ok::<(), String>(())
    }
    .await;
    event.finish(result.clone().err());
    let _ = recorder.event(&event);
    match result {
        Ok(()) => "cancel request relayed".into(),
        Err(e) => format!("cancel request not relayed: {e}"),
    }
}

// ---------------------------------------------------------------------------
// Query phase
// ---------------------------------------------------------------------------

/// Everything both loops see.
struct Ctx {
    store: Arc<PgStore>,
    policy: SessionPolicy,
    recorder: Arc<dyn Recorder>,
    shared: Mutex<Shared>,
    catalog_key: (SocketAddr, String),
}

impl Ctx {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }

    fn into_shared(self) -> Shared {
        self.shared.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

/// State the client loop writes and the server loop reads, in protocol
/// order.
struct Shared {
    /// Requests forwarded and not yet fully answered, oldest first.
    pending: VecDeque<Pending>,
    /// An extended-protocol message failed and no Sync is queued yet: the
    /// server ignores everything up to the next Sync, so those messages
    /// expect no reply.
    discard_until_sync: bool,
    txn: TransactionStatus,
    session: SessionRecord,
    /// Prepared statements as the server has them: their result columns
    /// once described (`None` before that).
    statements: HashMap<String, Option<Arc<Vec<Field>>>>,
    portals: HashMap<String, PortalMask>,
    catalogs: Arc<Catalogs>,
    /// When this session's catalog was read, and the DDL generation then;
    /// `None`: never, or known stale.
    catalog_at: Option<(Instant, u64)>,
    /// Re-read the catalog on this session rather than take a shared copy:
    /// a result came from a relation the catalog did not know (one created
    /// since, or this session's own temporary table).
    catalog_own_read: bool,
    /// Table OIDs that already caused such a read: if the catalog still does
    /// not know them (it never lists toast or system relations), their
    /// columns stay masked without a read per statement.
    refreshed_for: std::collections::HashSet<u32>,
    catalog_waiter: Option<oneshot::Sender<()>>,
    bytes_up: u64,
    bytes_down: u64,
}

/// A portal's result columns and formats (Bind), for masking its rows.
#[derive(Clone, Default)]
struct PortalMask {
    fields: Option<Arc<Vec<Field>>>,
    formats: Vec<Format>,
    plan: Option<Plan>,
}

/// Why a command was denied, for the rewritten error.
#[derive(Debug, Clone)]
struct Denial {
    rule: String,
    message: String,
    reason: String,
}

/// One request awaiting its reply.
enum Pending {
    /// A simple Query (or the stand-in for a denied one, or for a refused
    /// FunctionCall): replies until ReadyForQuery.
    Query {
        denied: Option<Denial>,
        events: Vec<CommandEvent>,
        /// Index of the statement whose results are arriving.
        current: usize,
        plan: Option<Plan>,
        copy_text: bool,
    },
    Parse {
        name: String,
        denied: Option<Denial>,
        /// What the statement is, for the audit event of a Parse the
        /// server refuses when no Execute in its batch carries the error.
        audit: Option<Arc<StatementAudit>>,
    },
    Bind {
        portal: String,
        statement: String,
        formats: Vec<Format>,
    },
    Describe {
        target: Target,
        name: String,
        /// Sent by the proxy (to learn a statement's columns): the reply is
        /// not forwarded.
        injected: bool,
    },
    Execute {
        portal: String,
        event: Option<Box<CommandEvent>>,
        rows: u64,
        masked: u64,
        plan: Option<Plan>,
        copy_text: bool,
    },
    Close {
        target: Target,
        name: String,
    },
    Sync,
    /// The proxy's own catalog query: nothing of its reply is forwarded.
    Catalog {
        rows: Vec<Vec<Option<String>>>,
        error: Option<String>,
    },
}

/// A result named table OIDs the catalog does not know: their columns were
/// masked (fail closed). True when the catalog should be re-read on this
/// session at the next idle point (once per OID).
fn unknown_oids(
    catalogs: &Catalogs,
    refreshed_for: &mut std::collections::HashSet<u32>,
    fields: &[Field],
) -> bool {
    let mut new = false;
    for f in fields {
        if f.table_oid != 0
            && !catalogs.union.knows(f.table_oid)
            && refreshed_for.len() < 4096
            && refreshed_for.insert(f.table_oid)
        {
            new = true;
        }
    }
    new
}

impl Pending {
    fn into_events(self) -> Vec<CommandEvent> {
        match self {
            Pending::Query {
                events, current, ..
            } => events.into_iter().skip(current).collect(),
            Pending::Execute { event, .. } => event.into_iter().map(|e| *e).collect(),
            _ => Vec::new(),
        }
    }
}

/// What the client loop knows of a prepared statement, for audit events.
#[derive(Clone)]
struct StatementAudit {
    command: String,
    statement: String,
    target: Option<String>,
}

enum Flow {
    Continue,
    Terminate,
}

/// Client -> server. Returns the end reason on a clean end, `Err` on a
/// protocol violation (the caller tells the client, FATAL).
async fn client_loop<R, W>(
    ctx: &Ctx,
    mut reader: R,
    mut buf: BytesMut,
    server: &mut W,
) -> Result<String, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut up = ClientSide {
        cache: HashMap::new(),
        shapes: HashMap::new(),
        statements: HashMap::new(),
        portals: HashMap::new(),
        denied: std::collections::HashSet::new(),
        reread_for: std::collections::HashSet::new(),
    };
    let mut out = BytesMut::with_capacity(16 * 1024);
    loop {
        loop {
            let frame = match decode_frame(&mut buf, DEFAULT_MAX_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(protocol_error(&e)),
            };
            if matches!(frame.tag, Some(b'Q' | b'P'))
                && (catalog_due(ctx) || up.names_unknown_relation(ctx, &frame))
            {
                flush(server, &mut out, ctx).await?;
                refresh_catalog(ctx, server).await?;
            }
            match up.on_frame(ctx, frame, &mut out)? {
                Flow::Continue => {}
                Flow::Terminate => {
                    flush(server, &mut out, ctx).await?;
                    return Ok("client terminated the session".into());
                }
            }
        }
        flush(server, &mut out, ctx).await?;
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = server.shutdown().await;
                return Ok("client closed the connection".into());
            }
            Ok(_) => {}
            Err(e) => {
                let _ = server.shutdown().await;
                return Ok(format!("client read failed: {e}"));
            }
        }
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    server: &mut W,
    out: &mut BytesMut,
    ctx: &Ctx,
) -> Result<(), String> {
    let n = write_buf(server, out, "upstream").await?;
    ctx.lock().bytes_up += n;
    Ok(())
}

fn protocol_error(e: &CodecError) -> String {
    format!("{e}")
}

/// Whether the catalog should be (re)read before the next statement, and
/// the session is at a point where the proxy may ask: nothing in flight,
/// not in a transaction block.
fn catalog_due(ctx: &Ctx) -> bool {
    if !ctx.store.masks.has_columns() {
        return false;
    }
    let sh = ctx.lock();
    let fresh = sh.catalog_at.is_some_and(|(at, generation)| {
        at.elapsed() < CATALOG_TTL && generation == ctx.store.ddl_generation.load(Ordering::Relaxed)
    });
    !fresh && sh.pending.is_empty() && !sh.discard_until_sync && sh.txn == TransactionStatus::Idle
}

/// Sends the catalog query in-band and waits until the server loop has
/// read its reply.
async fn refresh_catalog<W: AsyncWrite + Unpin>(ctx: &Ctx, server: &mut W) -> Result<(), String> {
    let own_read = std::mem::take(&mut ctx.lock().catalog_own_read);
    let shared = if own_read {
        None
    } else {
        ctx.store.cached_catalog(&ctx.catalog_key)
    };
    if let Some(c) = shared {
        let mut sh = ctx.lock();
        sh.catalogs = c;
        sh.catalog_at = Some((
            Instant::now(),
            ctx.store.ddl_generation.load(Ordering::Relaxed),
        ));
        return Ok(());
    }
    let (tx, rx) = oneshot::channel();
    {
        let mut sh = ctx.lock();
        sh.pending.push_back(Pending::Catalog {
            rows: Vec::new(),
            error: None,
        });
        sh.catalog_waiter = Some(tx);
    }
    let q = Query {
        sql: PgStr::from(CATALOG_SQL),
    };
    server
        .write_all(&q.to_bytes())
        .await
        .map_err(|e| format!("upstream write failed: {e}"))?;
    rx.await
        .map_err(|_| "server went away while the catalog was read".to_string())
}

/// The client loop's own view of names, in the order it forwards.
struct ClientSide {
    statements: HashMap<String, Arc<StatementAudit>>,
    portals: HashMap<String, String>,
    /// Statements whose Parse was denied: the denial is their one event, so
    /// an Execute of them (which the server skips) records none.
    denied: std::collections::HashSet<String>,
    /// SQL text -> decision, valid for the catalog it was made under.
    cache: HashMap<String, (Arc<Catalogs>, Arc<Decided>)>,
    /// Normalized text -> decision, for verdicts that do not depend on
    /// literals (see [`ClientSide::decide`]).
    shapes: HashMap<String, (Arc<Catalogs>, Arc<Decided>)>,
    /// Texts that named an unknown relation and made this session read the
    /// catalog again: a relation that does not exist is not read for twice.
    reread_for: std::collections::HashSet<String>,
}

/// What the policy made of one SQL text.
struct Decided {
    denied: Option<Denial>,
    /// (command, target) per statement; one `EMPTY` entry for empty text.
    infos: Vec<(String, Option<String>)>,
    /// As the audit trail records it.
    statement: String,
    /// DDL: catalogs read before it are stale.
    ddl: bool,
    /// It names a relation the (loaded) catalog does not have: the catalog
    /// is read again before it is forwarded, once per text.
    unknown_relation: bool,
}

impl ClientSide {
    fn on_frame(&mut self, ctx: &Ctx, frame: Frame, out: &mut BytesMut) -> Result<Flow, String> {
        let tag = frame.tag.unwrap_or(0);
        match tag {
            b'Q' => {
                let (q, utf8) =
                    Query::parse_any_encoding(&frame).map_err(|e| protocol_error(&e))?;
                self.query(ctx, &q.sql, utf8, &frame, out);
            }
            b'P' => {
                let (p, utf8) =
                    Parse::parse_any_encoding(&frame).map_err(|e| protocol_error(&e))?;
                self.parse(ctx, p, utf8, &frame, out);
            }
            b'B' => {
                let b = Bind::parse(&frame).map_err(|e| protocol_error(&e))?;
                self.portals
                    .insert(b.portal.to_string(), b.statement.to_string());
                push(
                    ctx,
                    Pending::Bind {
                        portal: b.portal.to_string(),
                        statement: b.statement.to_string(),
                        formats: b.result_formats,
                    },
                );
                put_frame(out, &frame);
            }
            b'D' => {
                let d = Describe::parse(&frame).map_err(|e| protocol_error(&e))?;
                push(
                    ctx,
                    Pending::Describe {
                        target: d.kind,
                        name: d.name.to_string(),
                        injected: false,
                    },
                );
                put_frame(out, &frame);
            }
            b'E' => {
                let e = Execute::parse(&frame).map_err(|e| protocol_error(&e))?;
                self.execute(ctx, e, &frame, out);
            }
            b'S' => {
                let mut sh = ctx.lock();
                sh.discard_until_sync = false;
                sh.pending.push_back(Pending::Sync);
                drop(sh);
                put_frame(out, &frame);
            }
            b'C' => {
                let c = Close::parse(&frame).map_err(|e| protocol_error(&e))?;
                match c.kind {
                    Target::Statement => {
                        self.denied.remove(c.name.as_str());
                        self.statements.remove(c.name.as_str()).map(|_| ())
                    }
                    Target::Portal => self.portals.remove(c.name.as_str()).map(|_| ()),
                };
                push(
                    ctx,
                    Pending::Close {
                        target: c.kind,
                        name: c.name.to_string(),
                    },
                );
                put_frame(out, &frame);
            }
            // Flush, and COPY FROM STDIN data: no reply of their own.
            b'H' | b'd' | b'c' | b'f' => put_frame(out, &frame),
            b'F' => self.function_call(ctx, out),
            b'X' => {
                put_frame(out, &frame);
                return Ok(Flow::Terminate);
            }
            other => {
                return Err(format!(
                    "unexpected client message {} after authentication",
                    super::codec::tag_name(Some(other))
                ))
            }
        }
        Ok(Flow::Continue)
    }

    /// Whether `frame` (a Query or Parse) names a relation this session's
    /// catalog does not have, created since it was read by a client the
    /// proxy does not see (a migration run from elsewhere): its columns
    /// would be masked as unknown (fail closed). Then the catalog is read
    /// again on this session before the statement is decided, when nothing
    /// is in flight and no failed transaction would refuse the read (inside
    /// a transaction block the read runs in it: a plain catalog SELECT);
    /// once per text, so a relation that does not exist costs one read.
    fn names_unknown_relation(&mut self, ctx: &Ctx, frame: &Frame) -> bool {
        if !ctx.store.masks.has_columns() {
            return false;
        }
        {
            let sh = ctx.lock();
            let quiet = sh.pending.is_empty()
                && !sh.discard_until_sync
                && sh.txn != TransactionStatus::Failed;
            if !quiet || !sh.catalogs.union.is_loaded() {
                return false;
            }
        }
        // Longer texts are not kept in the decision cache: deciding them
        // here would parse them twice. Their results stay fail closed.
        if frame.body.len() > 4096 {
            return false;
        }
        let sql = match frame.tag {
            Some(b'Q') => {
                Query::parse_any_encoding(frame).map(|(q, utf8)| (q.sql.to_string(), utf8))
            }
            Some(b'P') => {
                Parse::parse_any_encoding(frame).map(|(p, utf8)| (p.sql.to_string(), utf8))
            }
            _ => return false,
        };
        let Ok((sql, true)) = sql else {
            return false;
        };
        if !self.decided(ctx, &sql, true).unknown_relation
            || self.reread_for.len() >= 4096
            || !self.reread_for.insert(sql)
        {
            return false;
        }
        ctx.lock().catalog_own_read = true;
        true
    }

    /// The rules and, when the store masks columns, the masking check over
    /// every parsed statement. The flag says whether the verdict holds for
    /// any statement of the same shape (same text up to literals): the rules
    /// never look at literals, and the masking check had nothing to look at.
    fn decide(
        &self,
        ctx: &Ctx,
        analysis: &Analysis,
        parsed: &[Option<sqlparser::ast::Statement>],
        catalogs: &Catalogs,
    ) -> (Option<Denial>, bool) {
        if let Some(d) = self.decide_rules(ctx, analysis) {
            return (Some(d), true);
        }
        if !ctx.store.masks.has_columns() {
            return (None, true);
        }
        let mut shape_safe = true;
        for (i, statement) in parsed.iter().enumerate() {
            let verdict = match statement {
                Some(st) => {
                    shape_safe &= !mask_sql::needs_check(st, &catalogs.union, &ctx.store.masks);
                    mask_sql::check(st, &catalogs.union, &ctx.store.masks)
                }
                // Unparsable statements reach here only when a rule allowed
                // them explicitly; masking cannot vouch for them.
                None => mask_sql::check_without_tree(analysis.statements.get(i)),
            };
            if let Err(reason) = verdict {
                let denial = Denial {
                    rule: "masking".into(),
                    message: format!("the statement would reveal masked values: {reason}"),
                    reason,
                };
                return (Some(denial), false);
            }
        }
        (None, shape_safe)
    }

    fn decide_rules(&self, ctx: &Ctx, analysis: &Analysis) -> Option<Denial> {
        match ctx.policy.decide_sql(analysis) {
            Verdict::Deny {
                rule,
                message,
                reason,
            } => Some(Denial {
                rule,
                message,
                reason,
            }),
            // An `allow` rule does not lift masking: it only ends the rule
            // walk.
            Verdict::Allow { .. } => None,
        }
    }

    /// The decision on `sql`, from this session's caches when the same
    /// text, or (for verdicts that cannot depend on literals) the same
    /// normalized text, was decided under the same catalog. Clients repeat
    /// their statements: every extended-protocol execution re-sends its
    /// Parse, and simple-protocol clients inline different literals into the
    /// same statement. A shape hit costs a tokenization instead of a parse.
    /// `utf8` false: `sql` is the text of a statement that was not UTF-8,
    /// with its invalid bytes replaced; it is decided as unparsable.
    fn decided(&mut self, ctx: &Ctx, sql: &str, utf8: bool) -> Arc<Decided> {
        let catalogs = ctx.lock().catalogs.clone();
        if !utf8 {
            let (analysis, parsed) = crate::policy::sql::undecodable(sql);
            let (denied, _) = self.decide(ctx, &analysis, &parsed, &catalogs);
            let infos = analysis
                .statements
                .iter()
                .map(|s| (command_name(&s.kind), None))
                .collect();
            return Arc::new(Decided {
                denied,
                infos,
                statement: statement_for_audit(sql, ctx.store.statements, &ctx.store.masks.key),
                ddl: analysis.statements.iter().any(|s| is_ddl(&s.kind)),
                unknown_relation: false,
            });
        }
        if let Some((at, d)) = self.cache.get(sql) {
            if Arc::ptr_eq(at, &catalogs) {
                return d.clone();
            }
        }
        let normalized_mode = ctx.store.statements == StatementMode::Normalized;
        let (analysis, parsed, audit_text) = match tokenize_sql(sql) {
            Ok(tokens) => {
                let normalized = normalize_tokens(tokens.iter().map(|t| &t.token), sql.len());
                if normalized_mode {
                    if let Some((at, d)) = self.shapes.get(&normalized) {
                        if Arc::ptr_eq(at, &catalogs) {
                            return d.clone();
                        }
                    }
                }
                let (analysis, parsed) = analyze_tokens(tokens);
                let text = if normalized_mode {
                    normalized
                } else {
                    sql.to_string()
                };
                (analysis, parsed, text)
            }
            // Untokenizable: one unparsable statement; only its size and
            // hash are kept for the audit trail.
            Err(_) => {
                let (analysis, parsed, _) = analyze_full(sql, false);
                let text = statement_for_audit(sql, ctx.store.statements, &ctx.store.masks.key);
                (analysis, parsed, text)
            }
        };
        let (denied, shape_safe) = self.decide(ctx, &analysis, &parsed, &catalogs);
        let infos = if analysis.statements.is_empty() {
            vec![("EMPTY".into(), None)]
        } else {
            analysis
                .statements
                .iter()
                .map(|s| (command_name(&s.kind), target_of(&s.relations)))
                .collect()
        };
        let unknown_relation = ctx.store.masks.has_columns()
            && catalogs.union.is_loaded()
            && parsed
                .iter()
                .flatten()
                .any(|st| !mask_sql::unknown_relations(st, &catalogs.union).is_empty());
        let d = Arc::new(Decided {
            denied,
            infos,
            statement: audit_text,
            ddl: analysis.statements.iter().any(|s| is_ddl(&s.kind)),
            unknown_relation,
        });
        // Bounded: a client sending endless distinct texts just keeps
        // missing.
        if sql.len() <= 4096 {
            if self.cache.len() >= 256 {
                self.cache.clear();
            }
            self.cache
                .insert(sql.to_string(), (catalogs.clone(), d.clone()));
            if shape_safe && normalized_mode && analysis.unparsable.is_none() {
                if self.shapes.len() >= 256 {
                    self.shapes.clear();
                }
                self.shapes
                    .insert(d.statement.clone(), (catalogs, d.clone()));
            }
        }
        d
    }

    fn query(&mut self, ctx: &Ctx, sql: &str, utf8: bool, frame: &Frame, out: &mut BytesMut) {
        let decided = self.decided(ctx, sql, utf8);
        let denied = decided.denied.clone();
        let mut sh = ctx.lock();
        let mut events = Vec::with_capacity(decided.infos.len());
        let decision = if denied.is_some() {
            Decision::Deny
        } else {
            Decision::Allow
        };
        for (command, target) in &decided.infos {
            let mut event = sh.session.event(command.clone(), decision);
            event.statement = Some(decided.statement.clone());
            event.target = target.clone();
            if let Some(d) = &denied {
                event.rule = Some(d.rule.clone());
            }
            events.push(event);
        }
        if decided.ddl {
            ctx.store.ddl_generation.fetch_add(1, Ordering::Relaxed);
        }
        let journaled = events.iter().all(|e| ctx.recorder.event(e).is_ok());
        let denied = if journaled {
            denied
        } else {
            Some(journal_denial())
        };
        let forward_denied = denied.is_some();
        if sh.discard_until_sync {
            // An extended batch failed before this Query: the server skips
            // it (up to the client's Sync), so it runs nothing.
            for mut ev in events {
                ev.decision = Decision::Error;
                ev.finish(Some(
                    "not executed: an earlier message of the batch failed".into(),
                ));
                let _ = ctx.recorder.event(&ev);
            }
            drop(sh);
            put_frame(out, frame);
            return;
        }
        sh.pending.push_back(Pending::Query {
            denied,
            events,
            current: 0,
            plan: None,
            copy_text: false,
        });
        drop(sh);
        if forward_denied {
            put_stand_in_query(out);
        } else {
            put_frame(out, frame);
        }
    }

    fn parse(&mut self, ctx: &Ctx, p: Parse, utf8: bool, frame: &Frame, out: &mut BytesMut) {
        let decided = self.decided(ctx, &p.sql, utf8);
        let denied = decided.denied.clone();
        let statement = decided.statement.clone();
        let (command, target) = decided
            .infos
            .first()
            .cloned()
            .unwrap_or_else(|| ("EMPTY".into(), None));
        let name = p.name.to_string();
        let mut sh = ctx.lock();
        if decided.ddl {
            ctx.store.ddl_generation.fetch_add(1, Ordering::Relaxed);
        }
        let denied = match denied {
            Some(d) => {
                // A denied Parse is the command's only event: it never runs.
                let mut event = sh.session.event(command.clone(), Decision::Deny);
                event.statement = Some(statement.clone());
                event.target = target.clone();
                event.rule = Some(d.rule.clone());
                event.finish(Some(d.reason.clone()));
                let _ = ctx.recorder.event(&event);
                Some(d)
            }
            None => None,
        };
        let audit = denied.is_none().then(|| {
            Arc::new(StatementAudit {
                command,
                statement,
                target,
            })
        });
        let discard = sh.discard_until_sync;
        if !discard {
            sh.pending.push_back(Pending::Parse {
                name: name.clone(),
                denied: denied.clone(),
                audit: audit.clone(),
            });
        }
        let describe = denied.is_none() && ctx.store.masks.has_columns();
        if describe && !discard {
            sh.pending.push_back(Pending::Describe {
                target: Target::Statement,
                name: name.clone(),
                injected: true,
            });
        }
        drop(sh);
        if denied.is_some() {
            let stand_in = Parse {
                name: p.name.clone(),
                sql: PgStr::from(DENIED_SQL),
                param_types: Vec::new(),
            };
            out.put_slice(&stand_in.to_bytes());
            self.statements.remove(&name);
            self.denied.insert(name);
        } else {
            self.denied.remove(&name);
            put_frame(out, frame);
            if describe {
                let d = Describe {
                    kind: Target::Statement,
                    name: p.name.clone(),
                };
                out.put_slice(&d.to_bytes());
            }
            if let Some(audit) = audit {
                self.statements.insert(name, audit);
            }
        }
    }

    fn execute(&mut self, ctx: &Ctx, e: Execute, frame: &Frame, out: &mut BytesMut) {
        let statement = self.portals.get(e.portal.as_str());
        let of_denied = statement.is_some_and(|s| self.denied.contains(s));
        // A portal of a statement prepared with SQL PREPARE, which this
        // loop did not see parsed: recorded under its name.
        let audit = (!of_denied).then(|| {
            statement
                .and_then(|s| self.statements.get(s))
                .map(|a| StatementAudit::clone(a))
                .unwrap_or_else(|| StatementAudit {
                    command: "EXECUTE".into(),
                    statement: format!(
                        "<portal \"{}\" of a statement prepared outside the protocol>",
                        e.portal.as_str()
                    ),
                    target: None,
                })
        });
        let mut sh = ctx.lock();
        let event = audit.map(|a| {
            let mut event = sh.session.event(a.command, Decision::Allow);
            event.statement = Some(a.statement);
            event.target = a.target;
            event
        });
        if sh.discard_until_sync {
            // The server skips this Execute: record it as not run.
            if let Some(mut event) = event {
                event.decision = Decision::Error;
                event.finish(Some(
                    "not executed: an earlier message of the batch failed".into(),
                ));
                let _ = ctx.recorder.event(&event);
            }
            drop(sh);
            put_frame(out, frame);
            return;
        }
        if let Some(ev) = &event {
            if ctx.recorder.event(ev).is_err() {
                // No audit trail, no execution: the client gets an error in
                // place of this Execute, and the batch skips to Sync exactly
                // as after a real error (the stand-in Parse fails).
                drop(sh);
                let stand_in = Parse {
                    name: PgStr::from("interceptor_refused"),
                    sql: PgStr::from(DENIED_SQL),
                    param_types: Vec::new(),
                };
                push(
                    ctx,
                    Pending::Parse {
                        name: "interceptor_refused".into(),
                        denied: Some(journal_denial()),
                        audit: None,
                    },
                );
                out.put_slice(&stand_in.to_bytes());
                return;
            }
        }
        sh.pending.push_back(Pending::Execute {
            portal: e.portal.to_string(),
            event: event.map(Box::new),
            rows: 0,
            masked: 0,
            plan: None,
            copy_text: false,
        });
        drop(sh);
        put_frame(out, frame);
    }

    /// FunctionCall ('F') calls a function by OID with no SQL the policy
    /// could read: refused. The stand-in Query fails like the call would.
    fn function_call(&mut self, ctx: &Ctx, out: &mut BytesMut) {
        let mut sh = ctx.lock();
        let denial = Denial {
            rule: "function-call".into(),
            message: "the FunctionCall protocol message is not allowed: call functions through SQL so that the policy can check them".into(),
            reason: "FunctionCall message".into(),
        };
        let mut event = sh.session.event("FUNCTIONCALL", Decision::Deny);
        event.rule = Some(denial.rule.clone());
        let _ = ctx.recorder.event(&event);
        sh.pending.push_back(Pending::Query {
            denied: Some(denial),
            events: vec![event],
            current: 0,
            plan: None,
            copy_text: false,
        });
        drop(sh);
        put_stand_in_query(out);
    }
}

fn push(ctx: &Ctx, p: Pending) {
    let mut sh = ctx.lock();
    if sh.discard_until_sync {
        return;
    }
    sh.pending.push_back(p);
}

fn journal_denial() -> Denial {
    Denial {
        rule: "audit".into(),
        message: REFUSED.into(),
        reason: "audit journal unavailable".into(),
    }
}

fn put_frame(out: &mut BytesMut, frame: &Frame) {
    let (header, n) = frame.header();
    out.put_slice(&header[..n]);
    out.put_slice(&frame.body);
}

fn put_stand_in_query(out: &mut BytesMut) {
    out.put_slice(
        &Query {
            sql: PgStr::from(DENIED_SQL),
        }
        .to_bytes(),
    );
}

/// `select` -> `SELECT`, as the audit `command` column has it.
fn command_name(kind: &str) -> String {
    if kind.is_empty() {
        "UNKNOWN".into()
    } else {
        kind.to_uppercase()
    }
}

/// Relations for the audit `target` column: as written, deduplicated.
fn target_of(relations: &[String]) -> Option<String> {
    if relations.is_empty() {
        return None;
    }
    let mut seen: Vec<&str> = Vec::new();
    for r in relations {
        if !seen.contains(&r.as_str()) {
            seen.push(r);
        }
    }
    Some(seen.join(","))
}

fn is_ddl(kind: &str) -> bool {
    ["create", "alter", "drop", "comment", "grant", "revoke"]
        .iter()
        .any(|k| kind == *k || kind.starts_with(&format!("{k} ")))
}

// ---------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------

async fn server_loop<R, W>(
    ctx: &Ctx,
    mut reader: R,
    mut buf: BytesMut,
    client: &mut W,
) -> Result<String, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(64 * 1024);
    loop {
        loop {
            let frame = match decode_frame(&mut buf, DEFAULT_MAX_BACKEND_MESSAGE) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Err(format!("server: {e}")),
            };
            on_server_frame(ctx, frame, &mut out)?;
            if out.len() >= READ_CHUNK {
                write_out(client, &mut out, ctx).await?;
            }
        }
        write_out(client, &mut out, ctx).await?;
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK);
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => return Ok("server closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("server read failed: {e}")),
        }
    }
}

async fn write_out<W: AsyncWrite + Unpin>(
    client: &mut W,
    out: &mut BytesMut,
    ctx: &Ctx,
) -> Result<(), String> {
    let n = write_buf(client, out, "client").await?;
    ctx.lock().bytes_down += n;
    Ok(())
}

/// The 42501 error a denial answers with: the rule's message, what matched
/// as DETAIL, the rule as HINT.
fn denial_error(d: &Denial) -> Bytes {
    ErrorResponse {
        fields: vec![
            (b'S', PgStr::from("ERROR")),
            (b'V', PgStr::from("ERROR")),
            (b'C', PgStr::from(DENIED_SQLSTATE)),
            (b'M', PgStr::from(format!("interceptor: {}", d.message))),
            (b'D', PgStr::from(format!("denied: {}", d.reason))),
            (b'H', PgStr::from(format!("policy rule \"{}\"", d.rule))),
        ],
        raw: Vec::new(),
    }
    .to_bytes()
}

fn error_text(frame: &Frame) -> String {
    parse_fields(&frame.body)
        .and_then(|f| {
            let code = f.iter().find(|(t, _)| *t == b'C').map(|(_, v)| v.clone());
            let msg = f.iter().find(|(t, _)| *t == b'M').map(|(_, v)| v.clone());
            msg.map(|m| match code {
                Some(c) => format!("{c}: {m}"),
                None => m,
            })
        })
        .unwrap_or_else(|| "error".into())
}

fn on_server_frame(ctx: &Ctx, frame: Frame, out: &mut BytesMut) -> Result<(), String> {
    let tag = frame.tag.unwrap_or(0);
    let masks = &ctx.store.masks;
    // Asynchronous messages may come at any point.
    match tag {
        b'S' | b'A' => {
            put_frame(out, &frame);
            return Ok(());
        }
        b'N' => {
            let catalogs = ctx.lock().catalogs.clone();
            match masks.mask_error(&frame, &catalogs.union) {
                Some((b, n)) => {
                    ctx.lock().session.masked_values += n;
                    out.put_slice(&b);
                }
                None => put_frame(out, &frame),
            }
            return Ok(());
        }
        _ => {}
    }
    let mut guard = ctx.lock();
    let sh = &mut *guard;
    let Some(head) = sh.pending.front_mut() else {
        // Unsolicited (a FATAL error as the server shuts down): pass it on.
        if tag == b'E' {
            forward_error(ctx, sh, &frame, out);
        } else {
            put_frame(out, &frame);
        }
        return Ok(());
    };
    match head {
        Pending::Catalog { rows, error } => {
            match tag {
                b'D' => {
                    if let Ok(row) = super::backend::DataRow::decode_body(&frame.body) {
                        rows.push(
                            row.columns
                                .into_iter()
                                .map(|c| c.map(|b| String::from_utf8_lossy(&b).into_owned()))
                                .collect(),
                        );
                    }
                }
                b'E' => *error = Some(error_text(&frame)),
                b'Z' => {
                    let status = ReadyForQuery::parse(&frame).map_err(|e| e.to_string())?;
                    sh.txn = status.status;
                    let Some(Pending::Catalog { rows, error }) = sh.pending.pop_front() else {
                        return Ok(());
                    };
                    let generation = ctx.store.ddl_generation.load(Ordering::Relaxed);
                    let built = match error {
                        Some(e) => Err(e),
                        None => Catalogs::from_rows(&rows, masks),
                    };
                    match built {
                        Ok(c) => {
                            let c = Arc::new(c);
                            ctx.store
                                .store_catalog(ctx.catalog_key.clone(), c.clone(), generation);
                            sh.catalogs = c;
                        }
                        Err(e) => {
                            tracing::warn!(store = %ctx.store.name, error = %e, "cannot read the catalog for masking: statements are checked by column names only");
                            sh.catalogs = Arc::new(Catalogs::empty(masks));
                        }
                    }
                    sh.catalog_at = Some((Instant::now(), generation));
                    if let Some(w) = sh.catalog_waiter.take() {
                        let _ = w.send(());
                    }
                }
                _ => {}
            }
            Ok(())
        }
        Pending::Query {
            denied,
            events,
            current,
            plan,
            copy_text,
        } => {
            match tag {
                b'T' => {
                    let rd = RowDescription::parse(&frame).map_err(|e| e.to_string())?;
                    let p = masks.plan(&rd.fields, None, &sh.catalogs);
                    if p.unknown && unknown_oids(&sh.catalogs, &mut sh.refreshed_for, &rd.fields) {
                        sh.catalog_at = None;
                        sh.catalog_own_read = true;
                    }
                    match masks.rewrite_description(&rd, &p) {
                        Some(b) => out.put_slice(&b),
                        None => put_frame(out, &frame),
                    }
                    *plan = Some(p);
                }
                b'D' => {
                    let n = forward_row(masks, plan.as_ref(), &frame, out)?;
                    if let Some(ev) = events.get_mut(*current) {
                        ev.rows = Some(ev.rows.unwrap_or(0) + 1);
                        ev.masked_values += n;
                        if n > 0 {
                            ev.decision = Decision::Mask;
                        }
                    }
                    sh.session.masked_values += n;
                }
                b'C' => {
                    let rows = super::backend::CommandComplete::parse(&frame)
                        .ok()
                        .and_then(|c| c.rows());
                    if let Some(ev) = events.get_mut(*current) {
                        if rows.is_some() {
                            ev.rows = rows;
                        }
                        ev.finish(None);
                        let _ = ctx.recorder.event(ev);
                    }
                    *current += 1;
                    *plan = None;
                    *copy_text = false;
                    put_frame(out, &frame);
                }
                b'I' => {
                    if let Some(ev) = events.get_mut(*current) {
                        ev.finish(None);
                        let _ = ctx.recorder.event(ev);
                    }
                    *current += 1;
                    put_frame(out, &frame);
                }
                b'E' => {
                    let (bytes, error) = match denied {
                        Some(d) => (denial_error(d), d.reason.clone()),
                        None => (
                            masks
                                .mask_error(&frame, &sh.catalogs.union)
                                .map(|(b, _)| b)
                                .unwrap_or_else(|| frame.to_bytes()),
                            error_text(&frame),
                        ),
                    };
                    out.put_slice(&bytes);
                    // The failing statement and every one after it in this
                    // Query did not run.
                    for (i, ev) in events.iter_mut().enumerate().skip(*current) {
                        if denied.is_none() {
                            ev.decision = Decision::Error;
                        }
                        let msg = if i == *current {
                            error.clone()
                        } else {
                            "not executed: an earlier statement of the query failed".into()
                        };
                        ev.finish(Some(msg));
                        let _ = ctx.recorder.event(ev);
                    }
                    *current = events.len();
                }
                b'H' => {
                    *copy_text = super::backend::CopyOutResponse::parse(&frame)
                        .map(|c| c.format == Format::Text)
                        .unwrap_or(false);
                    put_frame(out, &frame);
                }
                b'd' => forward_copy(ctx, &frame, *copy_text, out, events.get_mut(*current)),
                b'Z' => {
                    let status = ReadyForQuery::parse(&frame).map_err(|e| e.to_string())?;
                    sh.txn = status.status;
                    if let Some(Pending::Query {
                        events, current, ..
                    }) = sh.pending.pop_front()
                    {
                        for mut ev in events.into_iter().skip(current) {
                            ev.finish(None);
                            let _ = ctx.recorder.event(&ev);
                        }
                    }
                    put_frame(out, &frame);
                }
                _ => put_frame(out, &frame),
            }
            Ok(())
        }
        Pending::Parse { name, denied, .. } => {
            match tag {
                b'1' => {
                    let name = std::mem::take(name);
                    sh.statements.insert(name, None);
                    sh.pending.pop_front();
                    put_frame(out, &frame);
                }
                b'E' => {
                    let denied = denied.take();
                    extended_error(ctx, sh, &frame, denied.as_ref(), out);
                }
                _ => put_frame(out, &frame),
            }
            Ok(())
        }
        Pending::Bind {
            portal,
            statement,
            formats,
        } => {
            match tag {
                b'2' => {
                    let fields = sh.statements.get(statement.as_str()).cloned().flatten();
                    let mask = PortalMask {
                        fields,
                        formats: std::mem::take(formats),
                        plan: None,
                    };
                    let portal = std::mem::take(portal);
                    sh.portals.insert(portal, mask);
                    sh.pending.pop_front();
                    put_frame(out, &frame);
                }
                b'E' => extended_error(ctx, sh, &frame, None, out),
                _ => put_frame(out, &frame),
            }
            Ok(())
        }
        Pending::Describe {
            target,
            name,
            injected,
        } => {
            let (target, injected) = (*target, *injected);
            match tag {
                b't' => {
                    if !injected {
                        put_frame(out, &frame);
                    }
                }
                b'T' | b'n' => {
                    let name = std::mem::take(name);
                    sh.pending.pop_front();
                    let rd = if tag == b'T' {
                        RowDescription::parse(&frame).map_err(|e| e.to_string())?
                    } else {
                        RowDescription { fields: Vec::new() }
                    };
                    let fields = Arc::new(rd.fields.clone());
                    match target {
                        Target::Statement => {
                            sh.statements.insert(name, Some(fields));
                        }
                        Target::Portal => {
                            let entry = sh.portals.entry(name).or_default();
                            entry.fields = Some(fields);
                            entry.formats = rd.fields.iter().map(|f| f.format).collect();
                            entry.plan = None;
                        }
                    }
                    if !injected {
                        if tag == b'T' {
                            let p = masks.plan(&rd.fields, None, &sh.catalogs);
                            match masks.rewrite_description(&rd, &p) {
                                Some(b) => out.put_slice(&b),
                                None => put_frame(out, &frame),
                            }
                        } else {
                            put_frame(out, &frame);
                        }
                    }
                }
                b'E' => extended_error(ctx, sh, &frame, None, out),
                _ => put_frame(out, &frame),
            }
            Ok(())
        }
        Pending::Execute {
            portal,
            event,
            rows,
            masked,
            plan,
            copy_text,
        } => {
            match tag {
                b'D' => {
                    if plan.is_none() {
                        let p = portal_plan(ctx, &sh.portals, &sh.catalogs, portal, &frame);
                        let unknown = p.unknown;
                        *plan = Some(p);
                        if unknown {
                            let fields = sh
                                .portals
                                .get(portal.as_str())
                                .and_then(|p| p.fields.clone());
                            if let Some(fields) = fields {
                                if unknown_oids(&sh.catalogs, &mut sh.refreshed_for, &fields) {
                                    sh.catalog_at = None;
                                    sh.catalog_own_read = true;
                                }
                            }
                        }
                    }
                    let n = forward_row(masks, plan.as_ref(), &frame, out)?;
                    *rows += 1;
                    *masked += n;
                    sh.session.masked_values += n;
                }
                b'C' | b's' | b'I' => {
                    let complete_rows = if tag == b'C' {
                        super::backend::CommandComplete::parse(&frame)
                            .ok()
                            .and_then(|c| c.rows())
                    } else {
                        None
                    };
                    if let Some(Pending::Execute {
                        event,
                        rows,
                        masked,
                        ..
                    }) = sh.pending.pop_front()
                    {
                        if let Some(mut ev) = event.map(|e| *e) {
                            ev.rows = complete_rows.or(Some(rows));
                            ev.masked_values = masked;
                            if masked > 0 {
                                ev.decision = Decision::Mask;
                            }
                            ev.finish(None);
                            let _ = ctx.recorder.event(&ev);
                        }
                    }
                    put_frame(out, &frame);
                }
                b'E' => extended_error(ctx, sh, &frame, None, out),
                b'H' => {
                    *copy_text = super::backend::CopyOutResponse::parse(&frame)
                        .map(|c| c.format == Format::Text)
                        .unwrap_or(false);
                    put_frame(out, &frame);
                }
                b'd' => {
                    let ct = *copy_text;
                    forward_copy(ctx, &frame, ct, out, event.as_deref_mut());
                }
                _ => put_frame(out, &frame),
            }
            Ok(())
        }
        Pending::Close { target, name } => {
            match tag {
                b'3' => {
                    match target {
                        Target::Statement => {
                            sh.statements.remove(name.as_str());
                        }
                        Target::Portal => {
                            sh.portals.remove(name.as_str());
                        }
                    }
                    sh.pending.pop_front();
                    put_frame(out, &frame);
                }
                b'E' => extended_error(ctx, sh, &frame, None, out),
                _ => put_frame(out, &frame),
            }
            Ok(())
        }
        Pending::Sync => {
            match tag {
                b'Z' => {
                    let status = ReadyForQuery::parse(&frame).map_err(|e| e.to_string())?;
                    sh.txn = status.status;
                    sh.pending.pop_front();
                    // The unnamed portal does not outlive its transaction.
                    if status.status == TransactionStatus::Idle {
                        sh.portals.retain(|k, _| !k.is_empty());
                    }
                    put_frame(out, &frame);
                }
                b'E' => forward_error(ctx, sh, &frame, out),
                _ => put_frame(out, &frame),
            }
            Ok(())
        }
    }
}

/// The masking plan for the rows of an Execute, from what the portal's
/// statement was described as. A portal the proxy never saw described
/// (cannot happen when masks are on, since every Parse is described) gets
/// every column masked: fail closed.
fn portal_plan(
    ctx: &Ctx,
    portals: &HashMap<String, PortalMask>,
    catalogs: &Catalogs,
    portal: &str,
    first_row: &Frame,
) -> Plan {
    let masks = &ctx.store.masks;
    if !masks.has_columns() && !masks.has_detectors() {
        return Plan::default();
    }
    match portals
        .get(portal)
        .and_then(|p| p.fields.as_ref().map(|f| (f, &p.formats)))
    {
        Some((fields, formats)) => masks.plan(fields, Some(formats), catalogs),
        None => {
            if !masks.has_columns() {
                return Plan::default();
            }
            let columns = super::backend::DataRow::decode_body(&first_row.body)
                .map(|r| r.columns.len())
                .unwrap_or(0);
            Plan::mask_all(columns)
        }
    }
}

/// A DataRow, masked under `plan` when it has work to do; returns the
/// number of values masked.
fn forward_row(
    masks: &StoreMasks,
    plan: Option<&Plan>,
    frame: &Frame,
    out: &mut BytesMut,
) -> Result<u64, String> {
    if let Some(p) = plan.filter(|p| p.active) {
        if let Some((b, n)) = masks.mask_row(frame, p)? {
            out.put_slice(&b);
            return Ok(n);
        }
    }
    put_frame(out, frame);
    Ok(0)
}

fn forward_copy(
    ctx: &Ctx,
    frame: &Frame,
    text: bool,
    out: &mut BytesMut,
    event: Option<&mut CommandEvent>,
) {
    let masks = &ctx.store.masks;
    if text && masks.has_detectors() {
        if let Some((data, n)) = masks.mask_copy(&frame.body) {
            out.put_slice(&CopyData { data }.to_bytes());
            if let Some(ev) = event {
                ev.masked_values += n;
            }
            return;
        }
    }
    put_frame(out, frame);
}

/// An ErrorResponse that answers nothing the proxy tracks precisely.
fn forward_error(ctx: &Ctx, sh: &mut Shared, frame: &Frame, out: &mut BytesMut) {
    match ctx.store.masks.mask_error(frame, &sh.catalogs.union) {
        Some((b, n)) => {
            sh.session.masked_values += n;
            out.put_slice(&b);
        }
        None => put_frame(out, frame),
    }
}

/// In [`extended_error`]: the queued request an ErrorResponse answers.
enum Blame {
    /// A Parse of this statement failed: the Execute of a portal bound to
    /// it carries the error.
    Statement(String),
    /// A Bind of this portal failed, or its statement's Parse did.
    Portal(String),
    /// The first queued request failed itself.
    Front,
    /// Nothing queued ran: every event is "not executed".
    Nothing,
}

/// An ErrorResponse to an extended-protocol message: the server now skips
/// to the next Sync, so every request queued before it gets no reply.
fn extended_error(
    ctx: &Ctx,
    sh: &mut Shared,
    frame: &Frame,
    denied: Option<&Denial>,
    out: &mut BytesMut,
) {
    let error = match denied {
        Some(d) => {
            out.put_slice(&denial_error(d));
            d.reason.clone()
        }
        None => {
            forward_error(ctx, sh, frame, out);
            error_text(frame)
        }
    };
    // Which queued event the error belongs to: a denial already has its
    // own event; a failed Parse or Bind is the failure of the Execute that
    // runs it; anything else queued after it was skipped by the server.
    let mut blame = match (denied, sh.pending.front()) {
        (Some(_), _) => Blame::Nothing,
        (None, Some(Pending::Parse { name, .. })) => Blame::Statement(name.clone()),
        (None, Some(Pending::Bind { portal, .. })) => Blame::Portal(portal.clone()),
        (None, Some(Pending::Execute { .. } | Pending::Query { .. })) => Blame::Front,
        (None, _) => Blame::Nothing,
    };
    // A Parse refused with no Execute of it in the batch (psycopg prepares
    // in a round trip of its own): its event is the Parse's.
    let mut unclaimed = match sh.pending.front() {
        Some(Pending::Parse { audit, .. }) if denied.is_none() => audit.clone(),
        _ => None,
    };
    let mut synced = false;
    while let Some(p) = sh.pending.front() {
        if matches!(p, Pending::Sync) {
            synced = true;
            break;
        }
        let Some(p) = sh.pending.pop_front() else {
            break;
        };
        if let (
            Blame::Statement(failed),
            Pending::Bind {
                portal, statement, ..
            },
        ) = (&blame, &p)
        {
            if failed == statement {
                blame = Blame::Portal(portal.clone());
            }
        }
        let guilty = match (&blame, &p) {
            (Blame::Front, _) => true,
            (Blame::Portal(failed), Pending::Execute { portal, .. }) => failed == portal,
            _ => false,
        };
        if guilty {
            blame = Blame::Nothing;
            unclaimed = None;
        }
        for (i, mut ev) in p.into_events().into_iter().enumerate() {
            ev.decision = Decision::Error;
            ev.finish(Some(if guilty && i == 0 {
                error.clone()
            } else {
                "not executed: an earlier message of the batch failed".into()
            }));
            let _ = ctx.recorder.event(&ev);
        }
    }
    if let Some(a) = unclaimed {
        let mut ev = sh.session.event(a.command.clone(), Decision::Error);
        ev.statement = Some(a.statement.clone());
        ev.target = a.target.clone();
        ev.finish(Some(error));
        let _ = ctx.recorder.event(&ev);
    }
    // No Sync queued yet: what the client sends until its Sync is skipped.
    if !synced {
        sh.discard_until_sync = true;
    }
}
