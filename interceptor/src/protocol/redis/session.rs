//! The Redis session handler.
//!
//! 1. **Client TLS**: the first byte is peeked; a TLS handshake record
//!    (0x16) is a ClientHello, answered with a leaf the local CA mints for
//!    the name the client asked for (SNI) or the address it dialled. Redis
//!    has no in-band TLS negotiation, so anything else is plaintext RESP.
//! 2. **Upstream**: TLS per the store's `upstream_tls` (`require` and
//!    `verify-full` do TLS; `prefer` cannot be negotiated with Redis and is
//!    plaintext, like `disable`).
//! 3. **Commands**: two loops. The client loop decodes each command, decides
//!    it (rules, the handler's own protocol guards, the masking check),
//!    journals its event, and either forwards it (the bytes as they came)
//!    or answers it itself; either way it queues, in order, what the client
//!    is owed: "the server's next reply, masked under this plan" or "this
//!    local reply". The server loop walks that queue: it writes local
//!    replies when they reach the front and matches every server reply to
//!    the entry it answers, so pipelined replies stay in order. RESP3 push
//!    frames and RESP2 pub/sub messages are out of band: forwarded (with
//!    the detectors run over them) without consuming an entry.

use std::{
    collections::{HashSet, VecDeque},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

use super::codec::{error_reply, Command, Decoder, Keys, Limits, Value};
use super::masking::{rows, KeyMasks, Plan};
use crate::{
    audit::{hostkey::HostKey, CommandEvent, Decision, Recorder, SessionRecord},
    config::{MaskConfig, StatementMode, StoreConfig, UpstreamTls},
    policy::rules::{SessionPolicy, Verdict},
    protocol::{tcp::Upstream, write_buf, BoxIo},
    proxy::record_session,
    tls::{LocalCa, ServerConfigs, UpstreamTlsConfig},
};

/// How long a TLS handshake (either leg) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// After the client is gone, how long the server's last replies may take.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

const READ_CHUNK: usize = 64 * 1024;

/// Batches of queue entries in flight between the loops: bounds what a
/// client that pipelines without reading can make the proxy hold.
const QUEUE_BATCHES: usize = 64;

const REFUSED: &str = "refused: the audit journal cannot be written (audit.on_failure = \"block\")";

const EXECABORT: &[u8] = b"-EXECABORT Transaction discarded because of previous errors.\r\n";

const DISCARD: &[u8] = b"*1\r\n$7\r\nDISCARD\r\n";

/// What the client may send: Redis's own limits, apart from a tighter
/// nesting depth (a command is one flat array).
fn client_limits() -> Limits {
    Limits {
        max_depth: 2,
        ..Limits::default()
    }
}

/// One `redis` store: its masks, TLS settings and what the sessions share.
pub struct RedisStore {
    pub name: String,
    pub masks: KeyMasks,
    upstream_tls: UpstreamTlsConfig,
    server_configs: ServerConfigs,
}

impl RedisStore {
    pub fn new(
        store: &StoreConfig,
        masks: &[MaskConfig],
        key: HostKey,
        ca: LocalCa,
        // Both modes record the same statement: Redis arguments have no
        // literal syntax to normalize, and `raw` must not put values in
        // clear either (see `statement`).
        _statements: StatementMode,
    ) -> anyhow::Result<RedisStore> {
        let upstream_tls =
            UpstreamTlsConfig::new(store.upstream_tls, store.upstream_ca.as_deref(), Vec::new())?;
        if store.upstream_tls == UpstreamTls::Prefer {
            tracing::warn!(
                store = %store.name,
                "upstream_tls = \"prefer\" cannot be negotiated with Redis (no in-band TLS): the store is reached in plaintext; use \"require\" or \"verify-full\" for TLS"
            );
        }
        Ok(RedisStore {
            name: store.name.clone(),
            masks: KeyMasks::new(&store.name, masks, key)?,
            upstream_tls,
            server_configs: ServerConfigs::new(ca, Vec::new(), &store.name),
        })
    }
}

/// Runs one intercepted Redis connection to its end and records it.
pub async fn serve(
    client: TcpStream,
    upstream: Upstream,
    session: SessionRecord,
    store: Arc<RedisStore>,
    policy: SessionPolicy,
    recorder: Arc<dyn Recorder>,
) {
    let Some((client, upstream, session)) =
        crate::protocol::tcp::open_session(client, upstream, session, &*recorder).await
    else {
        return;
    };
    let default_name = session
        .original_dst
        .parse::<SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".into());
    let shared = Shared {
        session: Mutex::new(session),
        bytes_up: AtomicU64::new(0),
        bytes_down: AtomicU64::new(0),
    };
    let end = run(
        client,
        upstream,
        &shared,
        &store,
        policy,
        &recorder,
        &default_name,
    )
    .await;
    let mut session = shared
        .session
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    session.bytes_up = shared.bytes_up.load(Ordering::Relaxed);
    session.bytes_down = shared.bytes_down.load(Ordering::Relaxed);
    session.close(end);
    record_session(&*recorder, &session);
}

/// What both loops share.
struct Shared {
    session: Mutex<SessionRecord>,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

impl Shared {
    fn session(&self) -> MutexGuard<'_, SessionRecord> {
        // A panic while holding the lock leaves counters at worst stale.
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The session from the first byte to the end; returns the end reason.
async fn run(
    client: TcpStream,
    upstream: Result<TcpStream, String>,
    shared: &Shared,
    store: &Arc<RedisStore>,
    policy: SessionPolicy,
    recorder: &Arc<dyn Recorder>,
    default_name: &str,
) -> String {
    let _ = client.set_nodelay(true);
    let mut first = [0u8; 1];
    match client.peek(&mut first).await {
        Ok(0) => return "client closed before sending a command".into(),
        Ok(_) => {}
        Err(e) => return format!("client read failed: {e}"),
    }
    let (mut client, sni): (BoxIo, Option<String>) = if first[0] == 0x16 {
        let Some(cfg) = store.server_configs.get(default_name) else {
            crate::proxy::reset(client);
            return "client started TLS but no TLS server config could be built".into();
        };
        let accept = tokio_rustls::TlsAcceptor::from(cfg).accept(client);
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Err(_) => return "client TLS handshake timed out".into(),
            Ok(Err(e)) => return format!("client TLS handshake failed: {e}"),
            Ok(Ok(tls)) => {
                let sni = tls.get_ref().1.server_name().map(str::to_string);
                shared.session().client_tls = true;
                (Box::new(tls), sni)
            }
        }
    } else {
        (Box::new(client), None)
    };

    let server_tcp = match upstream {
        Ok(s) => s,
        Err(e) => {
            let _ = write_now(&mut client, &error_reply(&format!("interceptor: {e}"))).await;
            return e;
        }
    };
    let _ = server_tcp.set_nodelay(true);
    let upstream_addr = server_tcp.peer_addr().ok().map(|a| a.to_string());
    let server_name = sni.unwrap_or_else(|| default_name.to_string());
    let server: BoxIo = match store.upstream_tls.connector() {
        Some(connector) if store.upstream_tls.mode() != UpstreamTls::Prefer => {
            let name = match UpstreamTlsConfig::server_name(&server_name) {
                Ok(n) => n,
                Err(e) => {
                    let e = format!("upstream TLS: {e}");
                    let _ =
                        write_now(&mut client, &error_reply(&format!("interceptor: {e}"))).await;
                    return e;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, server_tcp)).await
            {
                Ok(Ok(tls)) => {
                    shared.session().upstream_tls = true;
                    Box::new(tls)
                }
                Ok(Err(e)) => {
                    let e = format!("upstream TLS handshake failed: {e}");
                    let _ =
                        write_now(&mut client, &error_reply(&format!("interceptor: {e}"))).await;
                    return e;
                }
                Err(_) => {
                    let e = "upstream TLS handshake timed out".to_string();
                    let _ =
                        write_now(&mut client, &error_reply(&format!("interceptor: {e}"))).await;
                    return e;
                }
            }
        }
        _ => Box::new(server_tcp),
    };
    let recorded = {
        let mut s = shared.session();
        s.upstream_addr = upstream_addr;
        s.db_user = Some("default".into());
        s.database = Some("0".into());
        s.rev += 1;
        record_session(&**recorder, &s)
    };
    if !recorded {
        let _ = write_now(
            &mut client,
            &error_reply(&format!("interceptor: {REFUSED}")),
        )
        .await;
        return REFUSED.into();
    }

    let ctx = Ctx {
        store: store.clone(),
        policy,
        recorder: recorder.clone(),
        shared,
    };
    let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
    let (client_r, mut client_w) = tokio::io::split(client);
    let (server_r, mut server_w) = tokio::io::split(server);
    let reason = {
        let up = client_loop(&ctx, tx, client_r, &mut server_w);
        let down = server_loop(&ctx, rx, server_r, &mut client_w);
        tokio::pin!(up, down);
        tokio::select! {
            r = &mut up => {
                // The client is done (EOF, or a protocol error whose reply
                // is queued): let what it is owed through, briefly.
                let drained = tokio::time::timeout(DRAIN_TIMEOUT, &mut down).await;
                match (r, drained) {
                    (Err(e), _) => e,
                    (Ok(_), Ok(Err(e))) => e,
                    (Ok(reason), _) => reason,
                }
            }
            r = &mut down => r.unwrap_or_else(|e| e),
        }
    };
    let _ = client_w.shutdown().await;
    let _ = server_w.shutdown().await;
    reason
}

async fn write_now(w: &mut BoxIo, bytes: &[u8]) -> std::io::Result<()> {
    w.write_all(bytes).await?;
    w.flush().await
}

/// Everything both loops see.
struct Ctx<'a> {
    store: Arc<RedisStore>,
    policy: SessionPolicy,
    recorder: Arc<dyn Recorder>,
    shared: &'a Shared,
}

/// What the client is owed, in order.
enum Pending {
    /// A reply the proxy wrote itself (a denial, a refusal).
    Local(Bytes),
    /// The server's next reply.
    Reply(Box<Expect>),
    /// The client broke the protocol: after the replies before this, the
    /// session ends.
    Close,
}

/// One reply expected from the server.
struct Expect {
    event: Option<CommandEvent>,
    plan: Plan,
    effect: Effect,
    /// In MULTI: when the server answers QUEUED, this plan masks the
    /// command's element of the EXEC reply.
    queued: Option<Plan>,
    /// Write this instead of the server's reply (EXEC of a transaction the
    /// proxy failed: DISCARD went upstream, EXECABORT comes back).
    replace: Option<Bytes>,
}

/// What a successful reply changes in the session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Effect {
    None,
    Auth(String),
    Hello {
        proto: Option<u8>,
        user: Option<String>,
    },
    Select(String),
    Reset,
    Multi,
    Exec,
    Discard,
    /// A (P|S)(UN)SUBSCRIBE: one confirmation per channel named, or, for an
    /// unsubscribe from everything, one per current subscription (at least
    /// one).
    Subscribe {
        kind: SubKind,
        count: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubKind {
    Channel,
    Pattern,
    Shard,
}

/// Why a command is not forwarded.
struct Denial {
    rule: String,
    message: String,
    reason: String,
}

// ---------------------------------------------------------------------------
// Client -> server
// ---------------------------------------------------------------------------

/// Transaction state as the client loop sees it (in the order it forwards).
#[derive(Default)]
struct ClientSide {
    in_multi: bool,
    /// A command inside MULTI was denied: EXEC becomes DISCARD.
    multi_failed: bool,
    /// Events of commands answered locally (denials), finished, to be
    /// journaled with the batch.
    done: Vec<CommandEvent>,
}

async fn client_loop<R, W>(
    ctx: &Ctx<'_>,
    tx: mpsc::Sender<Vec<Pending>>,
    mut reader: R,
    server: &mut W,
) -> Result<String, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = Decoder::new(client_limits());
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut state = ClientSide::default();
    let mut batch: Vec<Pending> = Vec::new();
    loop {
        let before = (state.in_multi, state.multi_failed);
        let error = loop {
            match decoder.decode_command_raw(&mut buf) {
                Ok(Some((cmd, raw))) => state.on_command(ctx, cmd, raw, &mut out, &mut batch),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        // Write-before-forward, once for everything this read decoded.
        state.journal(ctx, &mut batch, &mut out, before);
        if let Some(e) = error {
            batch.push(Pending::Local(e.to_error_reply()));
            batch.push(Pending::Close);
            let _ = tx.send(std::mem::take(&mut batch)).await;
            let _ = flush(server, &mut out, ctx).await;
            return Err(format!("client protocol error: {e}"));
        }
        // The queue first: the server may answer as soon as it reads.
        if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
            return Ok("session ended".into());
        }
        flush(server, &mut out, ctx).await?;
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK);
        }
        // At EOF the server is not shut down yet: a client that half-closes
        // after its last command still gets the replies it is owed (Redis
        // may drop them once it reads EOF). `run` closes both legs when the
        // queue is drained.
        match reader.read_buf(&mut buf).await {
            Ok(0) => return Ok("client closed the connection".into()),
            Ok(_) => {}
            Err(e) => return Ok(format!("client read failed: {e}")),
        }
    }
}

async fn flush<W: AsyncWrite + Unpin>(
    server: &mut W,
    out: &mut BytesMut,
    ctx: &Ctx<'_>,
) -> Result<(), String> {
    let n = write_buf(server, out, "upstream").await?;
    ctx.shared.bytes_up.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

impl ClientSide {
    /// Journals the events of one read's commands in one write: the
    /// decided events of the commands about to be forwarded and the
    /// finished events of the denied ones. When the journal refuses them
    /// (`on_failure = "block"`), nothing of the batch is forwarded: every
    /// command that was to be is answered with the refusal instead, and the
    /// transaction state goes back to what it was before the batch
    /// (`before`), which is what the server still has.
    fn journal(
        &mut self,
        ctx: &Ctx<'_>,
        batch: &mut [Pending],
        out: &mut BytesMut,
        before: (bool, bool),
    ) {
        let mut refs: Vec<&CommandEvent> = self.done.iter().collect();
        refs.extend(batch.iter().filter_map(|p| match p {
            Pending::Reply(e) => e.event.as_ref(),
            _ => None,
        }));
        if refs.is_empty() {
            return;
        }
        let recorded = ctx.recorder.events(&refs).is_ok();
        self.done.clear();
        if recorded {
            return;
        }
        out.clear();
        (self.in_multi, self.multi_failed) = before;
        let mut session = ctx.shared.session();
        let reply = error_reply(&format!("interceptor: {REFUSED}"));
        for p in batch.iter_mut() {
            if let Pending::Reply(e) = p {
                if let Some(ev) = e.event.as_mut() {
                    ev.decision = Decision::Deny;
                    ev.rule = Some("audit".into());
                    ev.finish(Some("audit journal unavailable".into()));
                }
                session.denied += 1;
                *p = Pending::Local(reply.clone());
            }
        }
    }

    fn on_command(
        &mut self,
        ctx: &Ctx<'_>,
        cmd: Command,
        raw: Option<Bytes>,
        out: &mut BytesMut,
        batch: &mut Vec<Pending>,
    ) {
        let keys = cmd.key_positions();
        let mut plan = Plan::None;
        let mut allowed_by = None;
        let denial = match ctx.policy.decide_redis(&cmd.args[..]) {
            Verdict::Deny {
                rule,
                message,
                reason,
            } => Some(Denial {
                rule,
                message,
                reason,
            }),
            Verdict::Allow { rule } => match guard(&cmd, self.in_multi) {
                Some(d) => Some(d),
                None => match ctx.store.masks.plan(&cmd, &keys) {
                    Ok(p) => {
                        plan = p;
                        allowed_by = rule;
                        None
                    }
                    Err(d) => Some(Denial {
                        rule: d.mask,
                        reason: "masked key".into(),
                        message: d.message,
                    }),
                },
            },
        };
        let decision = if denial.is_some() {
            Decision::Deny
        } else {
            Decision::Allow
        };
        let mut event = ctx.shared.session().event(cmd.full_name(), decision);
        event.target = target(&cmd, &keys);
        event.statement = Some(statement(&cmd, &keys, &ctx.store.masks.key));
        event.bytes_up = raw.as_ref().map_or_else(|| cmd.encode().len(), Bytes::len) as u64;
        // The deciding rule: the one that denied, or an `allow` rule that
        // let the command through.
        event.rule = match &denial {
            Some(d) => Some(d.rule.clone()),
            None => allowed_by,
        };
        // Forwarded commands are journaled with their batch, before it is
        // forwarded (`journal`).
        if let Some(d) = denial {
            if self.in_multi && !cmd.is("EXEC") && !cmd.is("DISCARD") {
                // As Redis does with a command it refuses to queue.
                self.multi_failed = true;
            }
            if cmd.is("EXEC") || cmd.is("DISCARD") {
                // The transaction is over either way: drop it upstream.
                self.forward_discard(event, &d, out, batch);
                return;
            }
            let reply = error_reply(&format!("interceptor: {} (rule \"{}\")", d.message, d.rule));
            event.decision = Decision::Deny;
            event.bytes_down = reply.len() as u64;
            event.finish(Some(d.reason));
            self.done.push(event);
            batch.push(Pending::Local(reply));
            return;
        }

        let effect = effect(&cmd);
        let mut queued = None;
        let mut replace = None;
        match &effect {
            Effect::Multi if !self.in_multi => {
                self.in_multi = true;
                self.multi_failed = false;
            }
            Effect::Exec if self.in_multi && self.multi_failed => {
                // Redis would refuse EXEC after a refused command: the
                // proxy refused one, so nothing of the transaction runs.
                self.in_multi = false;
                self.multi_failed = false;
                replace = Some(Bytes::from_static(EXECABORT));
                out.put_slice(DISCARD);
                event.decision = Decision::Deny;
                event.rule = Some("transaction".into());
                ctx.shared.session().denied += 1;
                batch.push(Pending::Reply(Box::new(Expect {
                    event: Some(event),
                    plan: Plan::None,
                    effect: Effect::Discard,
                    queued: None,
                    replace,
                })));
                return;
            }
            Effect::Exec | Effect::Discard | Effect::Reset => {
                self.in_multi = false;
                self.multi_failed = false;
            }
            _ if self.in_multi => queued = Some(std::mem::take(&mut plan)),
            _ => {}
        }
        batch.push(Pending::Reply(Box::new(Expect {
            event: Some(event),
            plan,
            effect,
            queued,
            replace,
        })));
        match raw {
            Some(raw) => out.put_slice(&raw),
            None => out.put_slice(&cmd.encode()),
        }
    }

    /// EXEC or DISCARD denied: the transaction is discarded upstream, and
    /// the client gets the denial.
    fn forward_discard(
        &mut self,
        mut event: CommandEvent,
        d: &Denial,
        out: &mut BytesMut,
        batch: &mut Vec<Pending>,
    ) {
        let was_multi = self.in_multi;
        self.in_multi = false;
        self.multi_failed = false;
        let reply = error_reply(&format!("interceptor: {} (rule \"{}\")", d.message, d.rule));
        event.decision = Decision::Deny;
        if !was_multi {
            event.finish(Some(d.reason.clone()));
            self.done.push(event);
            batch.push(Pending::Local(reply));
            return;
        }
        out.put_slice(DISCARD);
        batch.push(Pending::Reply(Box::new(Expect {
            event: Some(event),
            plan: Plan::None,
            effect: Effect::Discard,
            queued: None,
            replace: Some(reply),
        })));
    }
}

/// The handler's own refusals, whatever the rules say: commands after which
/// the proxy could no longer tell which reply answers which command.
fn guard(cmd: &Command, in_multi: bool) -> Option<Denial> {
    let protocol = |message: &str| {
        Some(Denial {
            rule: "interceptor".into(),
            message: message.into(),
            reason: "protocol guard".into(),
        })
    };
    if cmd.is("CLIENT") && cmd.arg_is(1, "REPLY") && !cmd.arg_is(2, "ON") {
        return protocol(
            "CLIENT REPLY OFF|SKIP is not supported through the interceptor: replies would no longer match commands",
        );
    }
    if cmd.is("MONITOR") || cmd.is("SYNC") || cmd.is("PSYNC") {
        return protocol(&format!(
            "{} is not supported through the interceptor: it turns the connection into a stream the proxy cannot check",
            cmd.full_name()
        ));
    }
    if in_multi && subscribe_kind(cmd).is_some() {
        return protocol("subscribing inside MULTI is not supported through the interceptor");
    }
    None
}

fn subscribe_kind(cmd: &Command) -> Option<(SubKind, bool)> {
    let mut buf = [0u8; 16];
    let name = cmd.name_bytes();
    if name.len() > buf.len() {
        return None;
    }
    for (d, s) in buf.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    Some(match &buf[..name.len()] {
        b"SUBSCRIBE" => (SubKind::Channel, true),
        b"UNSUBSCRIBE" => (SubKind::Channel, false),
        b"PSUBSCRIBE" => (SubKind::Pattern, true),
        b"PUNSUBSCRIBE" => (SubKind::Pattern, false),
        b"SSUBSCRIBE" => (SubKind::Shard, true),
        b"SUNSUBSCRIBE" => (SubKind::Shard, false),
        _ => return None,
    })
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What a successful reply to `cmd` changes.
fn effect(cmd: &Command) -> Effect {
    let n = cmd.args.len();
    if let Some((kind, subscribe)) = subscribe_kind(cmd) {
        // SUBSCRIBE without channels is an error reply: one reply.
        let count = if n > 1 {
            Some(n - 1)
        } else if subscribe {
            Some(1)
        } else {
            None
        };
        return Effect::Subscribe { kind, count };
    }
    if cmd.is("AUTH") {
        return match n {
            3 => Effect::Auth(lossy(&cmd.args[1])),
            _ => Effect::Auth("default".into()),
        };
    }
    if cmd.is("HELLO") {
        let proto = cmd
            .args
            .get(1)
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse::<u8>().ok());
        let user = (2..n)
            .find(|&i| cmd.arg_is(i, "AUTH"))
            .and_then(|i| cmd.args.get(i + 1))
            .map(|u| lossy(u));
        return Effect::Hello { proto, user };
    }
    if cmd.is("SELECT") && n == 2 {
        return Effect::Select(lossy(&cmd.args[1]));
    }
    if cmd.is("RESET") {
        return Effect::Reset;
    }
    if cmd.is("MULTI") {
        return Effect::Multi;
    }
    if cmd.is("EXEC") {
        return Effect::Exec;
    }
    if cmd.is("DISCARD") {
        return Effect::Discard;
    }
    Effect::None
}

/// The audit `target`: the key names, comma-separated.
fn target(cmd: &Command, keys: &Keys) -> Option<String> {
    let Keys::At(positions) = keys else {
        return None;
    };
    let mut out = String::new();
    for (n, &i) in positions.iter().enumerate() {
        if out.len() > MAX_TARGET {
            out.push_str(&format!(",... (+{} keys)", positions.len() - n));
            break;
        }
        if let Some(k) = cmd.args.get(i) {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&String::from_utf8_lossy(k));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Bounds on the audit fields of one command, so that a command with a
/// million arguments is still one journal record (and a cheap one).
const MAX_TARGET: usize = 4096;
const MAX_STATEMENT: usize = 8192;

/// The audit `statement`: the name (and subcommand), the key names, and
/// every other argument as `hmac:<hex>` under the host key, so a value is
/// never recorded in clear yet an investigator can look one up with
/// `interceptor audit hash`. Passwords (AUTH, HELLO ... AUTH) are `?`: not
/// even their HMAC is kept.
fn statement(cmd: &Command, keys: &Keys, key: &HostKey) -> String {
    let positions: &[usize] = match keys {
        Keys::At(p) => p,
        _ => &[],
    };
    let auth = cmd.is("AUTH");
    let hello = cmd.is("HELLO");
    let container = cmd.is_container();
    let mut out = String::with_capacity(16 + cmd.args.len() * 72);
    for (i, a) in cmd.args.iter().enumerate() {
        if out.len() > MAX_STATEMENT {
            out.push_str(&format!(" ... (+{} arguments)", cmd.args.len() - i));
            break;
        }
        if i > 0 {
            out.push(' ');
        }
        let keep = i == 0 || (i == 1 && container) || positions.contains(&i);
        let secret = (auth && i > 0)
            || (hello && i >= 2 && {
                // HELLO proto AUTH user pass: the password follows the user.
                let auth_at = (2..cmd.args.len()).find(|&j| cmd.arg_is(j, "AUTH"));
                auth_at.is_some_and(|j| i == j + 2)
            });
        let word_kept = hello && (i == 1 || cmd.arg_is(i, "AUTH") || cmd.arg_is(i, "SETNAME"))
            || (hello && i >= 2 && {
                let auth_at = (2..cmd.args.len()).find(|&j| cmd.arg_is(j, "AUTH"));
                auth_at.is_some_and(|j| i == j + 1)
            });
        if secret {
            out.push('?');
        } else if keep {
            if i == 0 || (i == 1 && container) {
                out.push_str(&String::from_utf8_lossy(a).to_ascii_uppercase());
            } else {
                out.push_str(&String::from_utf8_lossy(a));
            }
        } else if word_kept {
            out.push_str(&String::from_utf8_lossy(a));
        } else {
            out.push_str(&key.hash(a));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Server -> client
// ---------------------------------------------------------------------------

/// What the server loop knows of the connection's state, in reply order.
struct ServerSide {
    queue: VecDeque<Pending>,
    /// RESP version the server speaks on this connection.
    proto: u8,
    channels: HashSet<Bytes>,
    patterns: HashSet<Bytes>,
    shards: HashSet<Bytes>,
    /// Plans of the commands the server QUEUED since MULTI.
    txn: Vec<Plan>,
    /// Confirmations still expected by the subscribe at the front.
    confirmations: Option<usize>,
    /// Finished events not journaled yet: journaled together before the
    /// replies they describe are written to the client.
    done: Vec<CommandEvent>,
}

enum Flow {
    Continue,
    Close,
}

async fn server_loop<R, W>(
    ctx: &Ctx<'_>,
    mut rx: mpsc::Receiver<Vec<Pending>>,
    mut reader: R,
    client: &mut W,
) -> Result<String, String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut out = BytesMut::with_capacity(16 * 1024);
    let mut side = ServerSide {
        queue: VecDeque::new(),
        proto: 2,
        channels: HashSet::new(),
        patterns: HashSet::new(),
        shards: HashSet::new(),
        txn: Vec::new(),
        confirmations: None,
        done: Vec::new(),
    };
    let mut rx_open = true;
    loop {
        while let Ok(batch) = rx.try_recv() {
            side.queue.extend(batch);
        }
        loop {
            // Local replies due now.
            match side.queue.front() {
                Some(Pending::Local(_)) => {
                    if let Some(Pending::Local(b)) = side.queue.pop_front() {
                        out.put_slice(&b);
                    }
                    continue;
                }
                Some(Pending::Close) => {
                    write_out(client, &mut out, ctx, &mut side.done).await?;
                    return Ok("client protocol error".into());
                }
                _ => {}
            }
            if side.queue.is_empty() {
                // The client loop queues a command before forwarding it: a
                // reply to it finds its entry here at the latest.
                while let Ok(batch) = rx.try_recv() {
                    side.queue.extend(batch);
                }
                if !side.queue.is_empty() {
                    continue;
                }
            }
            let (value, raw) = match decoder.decode_raw(&mut buf) {
                Ok(Some(v)) => v,
                Ok(None) => break,
                Err(e) => {
                    write_out(client, &mut out, ctx, &mut side.done).await?;
                    let _ = client
                        .write_all(&error_reply(&format!(
                            "interceptor: the server sent malformed RESP: {e}"
                        )))
                        .await;
                    return Err(format!("server protocol error: {e}"));
                }
            };
            if let Flow::Close = side.on_reply(ctx, value, raw, &mut out) {
                write_out(client, &mut out, ctx, &mut side.done).await?;
                return Ok("server ended the session".into());
            }
            if out.len() >= READ_CHUNK {
                write_out(client, &mut out, ctx, &mut side.done).await?;
            }
        }
        write_out(client, &mut out, ctx, &mut side.done).await?;
        if !rx_open && side.queue.is_empty() {
            return Ok("client closed the connection".into());
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(READ_CHUNK);
        }
        tokio::select! {
            batch = rx.recv(), if rx_open => match batch {
                Some(b) => side.queue.extend(b),
                None => rx_open = false,
            },
            r = reader.read_buf(&mut buf) => match r {
                Ok(0) => {
                    side.finish_pending(ctx, "the server closed the connection");
                    return Ok("server closed the connection".into());
                }
                Ok(_) => {}
                Err(e) => {
                    side.finish_pending(ctx, &format!("server read failed: {e}"));
                    return Err(format!("server read failed: {e}"));
                }
            },
        }
    }
}

async fn write_out<W: AsyncWrite + Unpin>(
    client: &mut W,
    out: &mut BytesMut,
    ctx: &Ctx<'_>,
    done: &mut Vec<CommandEvent>,
) -> Result<(), String> {
    record_done(ctx, done);
    let n = write_buf(client, out, "client").await?;
    ctx.shared.bytes_down.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// Journals finished events in one write. Their commands were journaled
/// before they were forwarded; a lost outcome is logged by the recorder.
fn record_done(ctx: &Ctx<'_>, done: &mut Vec<CommandEvent>) {
    if done.is_empty() {
        return;
    }
    let refs: Vec<&CommandEvent> = done.iter().collect();
    let _ = ctx.recorder.events(&refs);
    done.clear();
}

/// The first element of an array or push frame, if it is a string.
fn kind_word(v: &Value) -> Option<&[u8]> {
    let items = match v {
        Value::Array(Some(items)) | Value::Push(items) => items,
        _ => return None,
    };
    match items.first()? {
        Value::Bulk(Some(b)) | Value::Simple(b) => Some(b),
        _ => None,
    }
}

fn is_message(word: &[u8]) -> bool {
    [&b"message"[..], b"pmessage", b"smessage"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

fn confirmation(word: &[u8]) -> Option<(SubKind, bool)> {
    let table: [(&[u8], SubKind, bool); 6] = [
        (b"subscribe", SubKind::Channel, true),
        (b"unsubscribe", SubKind::Channel, false),
        (b"psubscribe", SubKind::Pattern, true),
        (b"punsubscribe", SubKind::Pattern, false),
        (b"ssubscribe", SubKind::Shard, true),
        (b"sunsubscribe", SubKind::Shard, false),
    ];
    table
        .iter()
        .find(|(w, _, _)| word.eq_ignore_ascii_case(w))
        .map(|(_, k, s)| (*k, *s))
}

impl ServerSide {
    fn subscribed(&self) -> bool {
        !(self.channels.is_empty() && self.patterns.is_empty() && self.shards.is_empty())
    }

    fn set(&mut self, kind: SubKind) -> &mut HashSet<Bytes> {
        match kind {
            SubKind::Channel => &mut self.channels,
            SubKind::Pattern => &mut self.patterns,
            SubKind::Shard => &mut self.shards,
        }
    }

    /// Forwards a reply, masked (detectors only when `plan` is None).
    fn forward(
        &self,
        ctx: &Ctx<'_>,
        plan: &Plan,
        mut value: Value,
        raw: Bytes,
        out: &mut BytesMut,
    ) -> (u64, Value) {
        let masks = &ctx.store.masks;
        let n = if matches!(plan, Plan::None) && !masks.has_detectors() {
            0
        } else {
            masks.apply(plan, &mut value)
        };
        if n == 0 {
            out.put_slice(&raw);
        } else {
            value.encode(out);
        }
        (n, value)
    }

    fn on_reply(&mut self, ctx: &Ctx<'_>, value: Value, raw: Bytes, out: &mut BytesMut) -> Flow {
        let word = kind_word(&value);
        let front_subscribe = matches!(
            self.queue.front(),
            Some(Pending::Reply(e)) if matches!(e.effect, Effect::Subscribe { .. })
        );
        let confirm = word.and_then(confirmation);
        // Out of band: RESP3 pushes that answer no command, RESP2 pub/sub
        // messages, attributes (which precede the reply they annotate).
        let out_of_band = match &value {
            Value::Push(_) => !(front_subscribe && confirm.is_some()),
            Value::Attribute(_) => true,
            Value::Array(Some(_)) => {
                self.proto == 2 && self.subscribed() && word.is_some_and(is_message)
            }
            _ => false,
        };
        if out_of_band || self.queue.is_empty() {
            if let Some((kind, subscribe)) = confirm.filter(|_| !front_subscribe) {
                // A server-initiated unsubscribe (cluster slot moved).
                self.track(kind, subscribe, &value);
            }
            let (n, _) = self.forward(ctx, &Plan::None, value, raw, out);
            if n > 0 {
                ctx.shared.session().masked_values += n;
            }
            return Flow::Continue;
        }
        let Some(Pending::Reply(mut expect)) = self.queue.pop_front() else {
            return Flow::Continue;
        };
        let is_error = matches!(value, Value::Error(_) | Value::BulkError(_));
        // Subscribe confirmations: the entry stays at the front until all
        // have arrived.
        if let Effect::Subscribe { kind, count } = expect.effect {
            if let (Some((ckind, subscribe)), false) = (confirm, is_error) {
                self.track(ckind, subscribe, &value);
                let remaining = match self.confirmations {
                    Some(r) => r,
                    None => count.unwrap_or_else(|| self.set_len_before(kind, &value)),
                };
                let (n, _) = self.forward(ctx, &Plan::None, value, raw.clone(), out);
                if let Some(e) = expect.event.as_mut() {
                    e.masked_values += n;
                    e.bytes_down += raw.len() as u64;
                }
                if remaining > 1 {
                    self.confirmations = Some(remaining - 1);
                    self.queue.push_front(Pending::Reply(expect));
                    return Flow::Continue;
                }
                self.confirmations = None;
                self.finish(ctx, &mut expect, None, 0, None);
                return Flow::Continue;
            }
        }
        self.confirmations = None;
        let plan = match expect.effect {
            Effect::Exec if !is_error => Plan::Exec(std::mem::take(&mut self.txn)),
            _ => std::mem::take(&mut expect.plan),
        };
        if !is_error {
            self.apply_effect(ctx, &expect.effect);
        } else if matches!(expect.effect, Effect::Exec | Effect::Discard) {
            self.txn.clear();
        }
        if let Some(q) = expect.queued.take() {
            if matches!(&value, Value::Simple(s) if &s[..] == b"QUEUED") {
                self.txn.push(q);
            }
        }
        let reply_len = raw.len() as u64;
        if let Some(replace) = expect.replace.take() {
            // The server's reply (DISCARD's +OK) is swallowed.
            out.put_slice(&replace);
            let error = String::from_utf8_lossy(replace.get(1..).unwrap_or_default())
                .trim_end()
                .to_string();
            self.finish(ctx, &mut expect, Some(error), 0, None);
            return Flow::Continue;
        }
        let (n, value) = self.forward(ctx, &plan, value, raw, out);
        if let Some(e) = expect.event.as_mut() {
            e.bytes_down += reply_len;
        }
        let error = match &value {
            Value::Error(b) | Value::BulkError(b) => Some(truncate(&String::from_utf8_lossy(b))),
            _ => None,
        };
        let quit = expect.event.as_ref().is_some_and(|e| e.command == "QUIT");
        self.finish(ctx, &mut expect, error, n, rows(&value));
        if quit {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Subscriptions before the confirmation just tracked, for an
    /// unsubscribe from everything: one reply per subscription, or one
    /// (with a null channel) when there was none.
    fn set_len_before(&self, kind: SubKind, value: &Value) -> usize {
        let now = match kind {
            SubKind::Channel => self.channels.len(),
            SubKind::Pattern => self.patterns.len(),
            SubKind::Shard => self.shards.len(),
        };
        // This confirmation removed one (unless its channel is null).
        let removed = match value {
            Value::Array(Some(items)) | Value::Push(items) => {
                usize::from(matches!(items.get(1), Some(Value::Bulk(Some(_)))))
            }
            _ => 0,
        };
        (now + removed).max(1)
    }

    fn track(&mut self, kind: SubKind, subscribe: bool, value: &Value) {
        let channel = match value {
            Value::Array(Some(items)) | Value::Push(items) => match items.get(1) {
                Some(Value::Bulk(Some(c))) => c.clone(),
                _ => return,
            },
            _ => return,
        };
        let set = self.set(kind);
        if subscribe {
            if set.len() < 1 << 20 {
                set.insert(channel);
            }
        } else {
            set.remove(&channel);
        }
    }

    fn apply_effect(&mut self, ctx: &Ctx<'_>, effect: &Effect) {
        match effect {
            Effect::None | Effect::Subscribe { .. } => {}
            Effect::Auth(user) => ctx.shared.session().db_user = Some(user.clone()),
            Effect::Hello { proto, user } => {
                if let Some(p) = proto {
                    self.proto = *p;
                }
                if let Some(u) = user {
                    ctx.shared.session().db_user = Some(u.clone());
                }
            }
            Effect::Select(db) => ctx.shared.session().database = Some(db.clone()),
            Effect::Reset => {
                self.proto = 2;
                self.channels.clear();
                self.patterns.clear();
                self.shards.clear();
                self.txn.clear();
                let mut s = ctx.shared.session();
                s.db_user = Some("default".into());
                s.database = Some("0".into());
            }
            Effect::Multi | Effect::Exec | Effect::Discard => self.txn.clear(),
        }
    }

    fn finish(
        &mut self,
        ctx: &Ctx<'_>,
        expect: &mut Expect,
        error: Option<String>,
        masked: u64,
        rows: Option<u64>,
    ) {
        let Some(mut event) = expect.event.take() else {
            return;
        };
        event.masked_values += masked;
        if event.masked_values > 0 {
            if event.decision == Decision::Allow {
                event.decision = Decision::Mask;
            }
            ctx.shared.session().masked_values += event.masked_values;
        }
        event.rows = rows;
        event.finish(error);
        self.done.push(event);
    }

    /// Commands still waiting for a reply when the server went away.
    fn finish_pending(&mut self, ctx: &Ctx<'_>, why: &str) {
        record_done(ctx, &mut self.done);
        for p in self.queue.drain(..) {
            if let Pending::Reply(mut e) = p {
                if let Some(ev) = e.event.as_mut() {
                    ev.finish(Some(format!("no reply: {why}")));
                    let _ = ctx.recorder.event(ev);
                }
            }
        }
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 512 {
        return s.to_string();
    }
    let mut end = 512;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(words: &[&str]) -> Command {
        Command {
            args: words
                .iter()
                .map(|w| Bytes::copy_from_slice(w.as_bytes()))
                .collect(),
        }
    }

    fn key() -> HostKey {
        let dir = tempfile::tempdir().expect("tempdir");
        HostKey::load_or_create(dir.path()).expect("host key")
    }

    #[test]
    fn statements_keep_keys_and_hash_values() {
        let k = key();
        let c = cmd(&["set", "secret:a", "hunter2", "EX", "10"]);
        let s = statement(&c, &c.key_positions(), &k);
        assert!(s.starts_with("SET secret:a hmac:"), "{s}");
        assert!(!s.contains("hunter2"), "{s}");
        assert_eq!(s.matches("hmac:").count(), 3, "{s}");
        let c = cmd(&["AUTH", "alice", "pw-123"]);
        assert_eq!(statement(&c, &c.key_positions(), &k), "AUTH ? ?");
        let c = cmd(&["hello", "3", "auth", "alice", "pw-123", "setname", "x"]);
        let s = statement(&c, &c.key_positions(), &k);
        assert!(s.starts_with("HELLO 3 auth alice ? setname hmac:"), "{s}");
        assert!(!s.contains("pw-123"), "{s}");
        let c = cmd(&["config", "get", "maxmemory"]);
        let s = statement(&c, &c.key_positions(), &k);
        assert!(s.starts_with("CONFIG GET hmac:"), "{s}");
        let c = cmd(&["MGET", "a", "b"]);
        assert_eq!(statement(&c, &c.key_positions(), &k), "MGET a b");
        // Huge commands give bounded audit fields.
        let mut words = vec!["MSET".to_string()];
        for i in 0..100_000 {
            words.push(format!("key:{i}"));
            words.push(format!("value-{i}"));
        }
        let refs: Vec<&str> = words.iter().map(String::as_str).collect();
        let big = cmd(&refs);
        let s = statement(&big, &big.key_positions(), &k);
        assert!(
            s.len() < MAX_STATEMENT + 200 && s.ends_with("arguments)"),
            "{}",
            s.len()
        );
        let t = target(&big, &big.key_positions()).unwrap_or_default();
        assert!(
            t.len() < MAX_TARGET + 200 && t.ends_with("keys)"),
            "{}",
            t.len()
        );
        assert_eq!(target(&c, &c.key_positions()).as_deref(), Some("a,b"));
        assert_eq!(target(&cmd(&["PING"]), &Keys::None), None);
    }

    #[test]
    fn effects() {
        assert_eq!(
            effect(&cmd(&["AUTH", "alice", "pw"])),
            Effect::Auth("alice".into())
        );
        assert_eq!(
            effect(&cmd(&["auth", "pw"])),
            Effect::Auth("default".into())
        );
        assert_eq!(
            effect(&cmd(&["HELLO", "3", "AUTH", "bob", "pw"])),
            Effect::Hello {
                proto: Some(3),
                user: Some("bob".into())
            }
        );
        assert_eq!(effect(&cmd(&["select", "2"])), Effect::Select("2".into()));
        assert_eq!(
            effect(&cmd(&["subscribe", "a", "b"])),
            Effect::Subscribe {
                kind: SubKind::Channel,
                count: Some(2)
            }
        );
        assert_eq!(
            effect(&cmd(&["punsubscribe"])),
            Effect::Subscribe {
                kind: SubKind::Pattern,
                count: None
            }
        );
    }

    #[test]
    fn guards_keep_replies_in_step() {
        assert!(guard(&cmd(&["client", "reply", "off"]), false).is_some());
        assert!(guard(&cmd(&["CLIENT", "REPLY", "skip"]), false).is_some());
        assert!(guard(&cmd(&["CLIENT", "REPLY", "on"]), false).is_none());
        assert!(guard(&cmd(&["monitor"]), false).is_some());
        assert!(guard(&cmd(&["subscribe", "x"]), true).is_some());
        assert!(guard(&cmd(&["subscribe", "x"]), false).is_none());
        assert!(guard(&cmd(&["GET", "x"]), true).is_none());
    }
}
