//! An `http` session: one client connection mapped onto one upstream
//! connection, HTTP/1.1 on both sides through hyper.
//!
//! 1. **Client side**: the first byte tells TLS (0x16, a ClientHello) from
//!    plain HTTP. TLS is terminated with a leaf the local CA mints for the
//!    name the client asked for (SNI) or the address it dialled; ALPN offers
//!    `http/1.1` only, so a client that insists on HTTP/2 fails its
//!    handshake. A hyper HTTP/1.1 server connection reads the requests
//!    (keep-alive, chunked bodies, header size and count limits, a header
//!    read timeout). Malformed requests get hyper's automatic 400/431/414
//!    and end that connection only.
//! 2. **Upstream**: TLS per the store's `upstream_tls` (`prefer` acts as
//!    `require`: HTTP cannot negotiate TLS in-band), verified against
//!    `upstream_ca` for `verify-full` with the name the client sent (SNI)
//!    or the dialled address; then a hyper client connection on that one
//!    socket. No pooling: requests are answered in order, one at a time.
//! 3. **Each request**: the path is normalized ([`super::path`]), the rules
//!    decide on method, normalized path and `X-Vault-Namespace`, the event
//!    is journaled, and only then is the request forwarded, with the
//!    normalized path. Denials are answered like Vault answers (403, JSON
//!    `errors`) and the connection goes on.
//! 4. **Responses**: bodies that a mask may need to see (JSON when masks are
//!    configured, text when detectors are) are buffered up to
//!    [`MAX_MASKED_BODY`] and masked ([`super::json`]); everything else is
//!    streamed. The event is finished when the response body has been sent
//!    (or abandoned).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{
    json::BodyMasks,
    path::{normalize, template},
};
use crate::{
    audit::{hostkey::HostKey, CommandEvent, Decision, Recorder, SessionRecord},
    config::{MaskConfig, StatementMode, StoreConfig},
    policy::rules::{SessionPolicy, Verdict},
    protocol::{tcp::Upstream, BoxIo},
    proxy::record_session,
    tls::{LocalCa, ServerConfigs, UpstreamTlsConfig},
};

/// How long a client may take to finish its TLS handshake, and to send a
/// request's headers (also the idle limit of a kept-alive connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Most header lines in one request or response.
const MAX_HEADERS: usize = 100;
/// hyper's read buffer, which bounds the size of a request head (a larger
/// head is answered 431).
const MAX_HEAD: usize = 64 * 1024;
/// Largest response body buffered for masking; a larger one is refused
/// (502), since it cannot be masked and must not pass unmasked.
pub const MAX_MASKED_BODY: usize = 16 * 1024 * 1024;
/// Largest request body forwarded (Vault's own default `max_request_size`).
pub const MAX_REQUEST_BODY: usize = 32 * 1024 * 1024;

const REFUSED: &str = "refused: the audit journal cannot be written (audit.on_failure = \"block\")";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type UpBody = UnsyncBoxBody<Bytes, BoxError>;
type Sender = hyper::client::conn::http1::SendRequest<UpBody>;

/// One `http` store: its masks, TLS settings and what the sessions share.
pub struct HttpStore {
    pub name: String,
    pub masks: BodyMasks,
    key: HostKey,
    upstream_tls: UpstreamTlsConfig,
    server_configs: ServerConfigs,
}

impl HttpStore {
    /// `_statements`: query values are always HMAC'd in the audit trail
    /// (they may carry tokens), whatever `audit.statements` says.
    pub fn new(
        store: &StoreConfig,
        masks: &[MaskConfig],
        key: HostKey,
        ca: LocalCa,
        _statements: StatementMode,
    ) -> anyhow::Result<HttpStore> {
        let alpn = vec![b"http/1.1".to_vec()];
        Ok(HttpStore {
            name: store.name.clone(),
            masks: BodyMasks::new(&store.name, masks)?,
            key,
            upstream_tls: UpstreamTlsConfig::new(
                store.upstream_tls,
                store.upstream_ca.as_deref(),
                alpn.clone(),
            )?,
            server_configs: ServerConfigs::new(ca, alpn, &store.name),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs an `http` session to its end and records it.
pub async fn serve(
    client: TcpStream,
    upstream: Upstream,
    session: SessionRecord,
    store: Arc<HttpStore>,
    policy: SessionPolicy,
    recorder: Arc<dyn Recorder>,
) {
    let Some((client, upstream, session)) =
        crate::protocol::tcp::open_session(client, upstream, session, &*recorder).await
    else {
        return;
    };
    let (mut session, reason) = run(client, upstream, session, store, policy, &recorder).await;
    session.close(reason);
    record_session(&*recorder, &session);
}

/// What every request of one session shares.
struct Ctx {
    store: Arc<HttpStore>,
    policy: SessionPolicy,
    recorder: Arc<dyn Recorder>,
    session: Mutex<SessionRecord>,
    /// None when the upstream could not be reached: requests are then
    /// answered 502 (and still recorded).
    sender: Option<tokio::sync::Mutex<Sender>>,
    upstream_error: Option<String>,
    /// Set once the upstream connection failed: later answers close.
    upstream_dead: AtomicBool,
    /// Host header for requests that came without one (HTTP/1.0).
    default_host: String,
}

async fn run(
    client: TcpStream,
    upstream: Result<TcpStream, String>,
    mut session: SessionRecord,
    store: Arc<HttpStore>,
    policy: SessionPolicy,
    recorder: &Arc<dyn Recorder>,
) -> (SessionRecord, String) {
    let _ = client.set_nodelay(true);
    let dialled = session.original_dst.clone();
    let default_name = dialled
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| "127.0.0.1".to_string());
    let (client_io, sni) = match tokio::time::timeout(
        HEADER_READ_TIMEOUT,
        accept_client(client, &store, &default_name),
    )
    .await
    {
        Err(_) => return (session, "client TLS handshake timed out".into()),
        Ok(Err(e)) => return (session, e),
        Ok(Ok(c)) => c,
    };
    session.client_tls = sni.is_some();
    let sni = sni.flatten();

    let mut upstream_error = None;
    let mut sender = None;
    let mut up_conn = None;
    match upstream {
        Err(e) => upstream_error = Some(e),
        Ok(tcp) => {
            let _ = tcp.set_nodelay(true);
            session.upstream_addr = tcp.peer_addr().ok().map(|a| a.to_string());
            let name = sni.clone().unwrap_or_else(|| default_name.clone());
            match tokio::time::timeout(
                HEADER_READ_TIMEOUT,
                connect_upstream(tcp, &store.upstream_tls, &name),
            )
            .await
            {
                Err(_) => upstream_error = Some("upstream TLS handshake timed out".into()),
                Ok(Err(e)) => upstream_error = Some(e),
                Ok(Ok((io, tls))) => {
                    session.upstream_tls = tls;
                    match hyper::client::conn::http1::Builder::new()
                        .max_buf_size(MAX_MASKED_BODY.max(MAX_HEAD))
                        .max_headers(MAX_HEADERS)
                        .handshake::<_, UpBody>(TokioIo::new(io))
                        .await
                    {
                        Ok((s, conn)) => {
                            sender = Some(tokio::sync::Mutex::new(s));
                            up_conn = Some(conn);
                        }
                        Err(e) => upstream_error = Some(format!("upstream HTTP handshake: {e}")),
                    }
                }
            }
        }
    }
    session.rev += 1;
    if !record_session(&**recorder, &session) {
        return (session, REFUSED.into());
    }

    let ctx = Arc::new(Ctx {
        store,
        policy,
        recorder: recorder.clone(),
        session: Mutex::new(session),
        sender,
        upstream_error,
        upstream_dead: AtomicBool::new(false),
        default_host: dialled,
    });
    let service_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let ctx = service_ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, req).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .max_headers(MAX_HEADERS)
        .max_buf_size(MAX_HEAD);
    let conn = builder.serve_connection(TokioIo::new(client_io), service);
    tokio::pin!(conn);
    // Both connections are driven by this one task (no spawn): a response
    // wakes the task that answers the client, without a hop between
    // worker threads.
    let result = match up_conn {
        None => conn.await,
        Some(up) => {
            tokio::pin!(up);
            tokio::select! {
                r = &mut conn => r,
                _ = &mut up => {
                    // The server closed its side: finish what is in flight,
                    // then close the client's connection too (one upstream
                    // connection per client connection).
                    ctx.upstream_dead.store(true, Ordering::Relaxed);
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            }
        }
    };
    let reason = match result {
        Ok(()) => "closed".to_string(),
        Err(e) => end_reason(&e),
    };
    let session = lock(&ctx.session).clone();
    (session, reason)
}

/// Why a client connection ended with an error, for the audit trail.
fn end_reason(e: &hyper::Error) -> String {
    if e.is_timeout() {
        // Also how an idle kept-alive connection ends.
        format!("no request, or no complete request header, within {HEADER_READ_TIMEOUT:?}: closed")
    } else if e.is_parse_too_large() {
        "request header too large or too many header lines: answered 431".into()
    } else if e.is_parse_version_h2() {
        "client spoke HTTP/2 (prior knowledge), which this proxy does not serve: closed".into()
    } else if e.is_parse() {
        format!("malformed HTTP request: {e}: answered 400")
    } else if e.is_incomplete_message() {
        "client closed in the middle of a request".into()
    } else {
        format!("client connection error: {e}")
    }
}

/// Terminates TLS when the client starts with a ClientHello. Returns the
/// stream and `Some(sni)` for TLS (the SNI name when one was sent), `None`
/// for plain HTTP.
async fn accept_client(
    tcp: TcpStream,
    store: &HttpStore,
    default_name: &str,
) -> Result<(BoxIo, Option<Option<String>>), String> {
    let mut first = [0u8; 1];
    let n = tcp
        .peek(&mut first)
        .await
        .map_err(|e| format!("client read failed: {e}"))?;
    if n == 0 {
        return Err("client closed before sending a request".into());
    }
    if first[0] != 0x16 {
        return Ok((Box::new(tcp), None));
    }
    let Some(cfg) = store.server_configs.get(default_name) else {
        return Err("client started TLS but no certificate could be minted".into());
    };
    let tls = tokio_rustls::TlsAcceptor::from(cfg)
        .accept(tcp)
        .await
        .map_err(|e| format!("client TLS handshake failed: {e}"))?;
    let sni = tls.get_ref().1.server_name().map(str::to_string);
    Ok((Box::new(tls), Some(sni)))
}

async fn connect_upstream(
    tcp: TcpStream,
    cfg: &UpstreamTlsConfig,
    server_name: &str,
) -> Result<(BoxIo, bool), String> {
    let Some(connector) = cfg.connector() else {
        return Ok((Box::new(tcp), false));
    };
    let name =
        UpstreamTlsConfig::server_name(server_name).map_err(|e| format!("upstream TLS: {e}"))?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("upstream TLS handshake failed: {e}"))?;
    Ok((Box::new(tls), true))
}

/// A Vault-style JSON error answer.
fn json_error(status: StatusCode, message: &str, close: bool) -> Response<ProxyBody> {
    let body = serde_json::json!({ "errors": [message] }).to_string();
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body), None));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

impl Ctx {
    fn event(&self, command: String, decision: Decision) -> CommandEvent {
        lock(&self.session).event(command, decision)
    }

    /// Records an event that ends here (a refusal or a denial), and
    /// returns the answer.
    fn refuse(
        &self,
        mut event: CommandEvent,
        status: StatusCode,
        message: &str,
        error: Option<String>,
    ) -> Response<ProxyBody> {
        event.finish(error);
        // Nothing is forwarded either way: a journal failure changes
        // nothing for the client.
        if let Err(e) = self.recorder.event(&event) {
            tracing::warn!(session_id = %event.session_id, error = %e, "refused request not recorded");
        }
        json_error(status, message, self.upstream_dead.load(Ordering::Relaxed))
    }

    /// The HMAC of the first token a request presented, as the session's
    /// user: an investigator correlates with `interceptor audit hash`.
    fn note_token(&self, headers: &HeaderMap) {
        // `Authorization: Bearer T` is hashed as T, so that the same token
        // gives the same HMAC whichever header carried it.
        let token = headers
            .get("x-vault-token")
            .map(|v| v.as_bytes())
            .or_else(|| {
                headers.get(header::AUTHORIZATION).map(|v| {
                    let v = v.as_bytes();
                    match v.get(..7) {
                        Some(p) if p.eq_ignore_ascii_case(b"bearer ") => v[7..].trim_ascii(),
                        _ => v,
                    }
                })
            });
        if let Some(token) = token {
            let mut s = lock(&self.session);
            if s.db_user.is_none() {
                s.db_user = Some(self.store.key.hash(token));
            }
        }
    }
}

/// Most of a refused request's body read (and dropped) so that the
/// connection can go on; a larger one ends the connection after the answer.
const MAX_DRAIN: usize = 64 * 1024;

/// One request, from decision to the answer.
async fn handle(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    let resp = decide_and_forward(ctx, parts, &mut body).await;
    // A refused request's body was not forwarded: hyper would close the
    // connection rather than read it, so read a small one here and keep
    // the connection (a denial leaves the session going, as in Vault).
    if let Some(body) = body.filter(|b| !b.is_end_stream()) {
        if body.size_hint().lower() <= MAX_DRAIN as u64 {
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                Limited::new(body, MAX_DRAIN).collect(),
            )
            .await;
        }
    }
    resp
}

async fn decide_and_forward(
    ctx: &Arc<Ctx>,
    req: http::request::Parts,
    body: &mut Option<Incoming>,
) -> Response<ProxyBody> {
    let method = req.method.clone();
    ctx.note_token(&req.headers);
    // An `Upgrade: h2c` offer (curl --http2 on http://) is ignored, as
    // RFC 9110 lets a server do: the request is served as HTTP/1.1. Other
    // upgrades (WebSocket) and CONNECT tunnels would carry bytes no rule
    // or mask could read: refused.
    let upgrade = req.headers.get(header::UPGRADE).is_some_and(|u| {
        !u.to_str()
            .is_ok_and(|u| u.split(',').all(|p| p.trim().eq_ignore_ascii_case("h2c")))
    });
    if method == Method::CONNECT || upgrade {
        let event = ctx.event(format!("{method} (upgrade)"), Decision::Error);
        let msg = "interceptor: CONNECT and protocol upgrades (WebSocket) are not supported through the proxy";
        return ctx.refuse(event, StatusCode::NOT_IMPLEMENTED, msg, Some(msg.into()));
    }
    let path = match normalize(req.uri.path()) {
        Ok(p) => p,
        Err(e) => {
            let mut event = ctx.event(format!("{method} (invalid path)"), Decision::Error);
            event.target = Some(truncate(req.uri.path(), 1024));
            let msg = format!("interceptor: {e}: refused");
            return ctx.refuse(event, StatusCode::BAD_REQUEST, &msg, Some(msg.clone()));
        }
    };
    let query_owned = req.uri.query().map(str::to_string);
    let query = query_owned.as_deref();
    let mut event = ctx.event(template(method.as_str(), &path), Decision::Allow);
    event.target = Some(path.clone());
    event.statement = Some(statement(method.as_str(), &path, query, &ctx.store.key));

    let namespace = match req.headers.get("x-vault-namespace").map(|v| v.to_str()) {
        None => None,
        Some(Ok(ns)) => Some(ns.trim_matches('/').to_string()),
        Some(Err(_)) => {
            event.decision = Decision::Error;
            let msg = "interceptor: the X-Vault-Namespace header is not valid text: refused";
            return ctx.refuse(event, StatusCode::BAD_REQUEST, msg, Some(msg.into()));
        }
    };
    match decide(&ctx.policy, &method, &path, query, namespace.as_deref()) {
        Verdict::Deny {
            rule,
            message,
            reason,
        } => {
            event.decision = Decision::Deny;
            lock(&ctx.session).denied += 1;
            event.rule = Some(rule.clone());
            let msg = format!("interceptor: {message} (rule \"{rule}\")");
            return ctx.refuse(event, StatusCode::FORBIDDEN, &msg, Some(reason));
        }
        Verdict::Allow { rule } => event.rule = rule,
    }
    let declared = req
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_REQUEST_BODY as u64) {
        event.decision = Decision::Error;
        let msg =
            format!("interceptor: request body larger than {MAX_REQUEST_BODY} bytes: refused");
        return ctx.refuse(
            event,
            StatusCode::PAYLOAD_TOO_LARGE,
            &msg,
            Some(msg.clone()),
        );
    }
    // Write-before-forward.
    if ctx.recorder.event(&event).is_err() {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("interceptor: {REFUSED}"),
            false,
        );
    }
    let Some(sender) = &ctx.sender else {
        let e = ctx.upstream_error.clone().unwrap_or_default();
        ctx.upstream_dead.store(true, Ordering::Relaxed);
        event.decision = Decision::Error;
        return ctx.refuse(
            event,
            StatusCode::BAD_GATEWAY,
            &format!("interceptor: {e}"),
            Some(e.clone()),
        );
    };

    let up_bytes = Arc::new(AtomicU64::new(0));
    let Some(client_body) = body.take() else {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "interceptor: request body already taken",
            true,
        );
    };
    let up_req = upstream_request(ctx, req, client_body, &path, query, up_bytes.clone());
    let sent = {
        let mut s = sender.lock().await;
        match s.ready().await {
            Ok(()) => Ok(s.send_request(up_req)),
            Err(e) => Err(e),
        }
    };
    let resp = match sent {
        Ok(f) => f.await,
        Err(e) => Err(e),
    };
    let resp = match resp {
        Ok(r) => r,
        Err(e) => {
            event.bytes_up = up_bytes.load(Ordering::Relaxed);
            event.decision = Decision::Error;
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            ctx.upstream_dead.store(true, Ordering::Relaxed);
            let (status, msg) = if too_large {
                (
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {MAX_REQUEST_BODY} bytes"),
                )
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    format!("upstream request failed: {e}"),
                )
            };
            return ctx.refuse(
                event,
                status,
                &format!("interceptor: {msg}"),
                Some(msg.clone()),
            );
        }
    };
    respond(ctx, &method, event, up_bytes, resp).await
}

/// The verdict on a request. Vault treats POST and PUT alike and reads
/// `GET ?list=true` as LIST, so a rule on one of them sees the others.
fn decide(
    policy: &SessionPolicy,
    method: &Method,
    path: &str,
    query: Option<&str>,
    namespace: Option<&str>,
) -> Verdict {
    let verdict = policy.decide_http(method.as_str(), path, namespace);
    if matches!(verdict, Verdict::Deny { .. }) {
        return verdict;
    }
    let alias = match *method {
        Method::POST => Some("PUT"),
        Method::PUT => Some("POST"),
        Method::GET if is_list(query) => Some("LIST"),
        _ => None,
    };
    match alias.map(|a| policy.decide_http(a, path, namespace)) {
        Some(v @ Verdict::Deny { .. }) => v,
        _ => verdict,
    }
}

fn is_list(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&').any(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            k == "list" && matches!(v, "true" | "1" | "t" | "T" | "TRUE" | "True")
        })
    })
}

/// `METHOD path?k=hmac:...`: the query's values only as HMACs (they may
/// carry tokens or secret values).
pub fn statement(method: &str, path: &str, query: Option<&str>, key: &HostKey) -> String {
    let mut out = format!("{method} {path}");
    if let Some(q) = query.filter(|q| !q.is_empty()) {
        out.push('?');
        for (i, kv) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match kv.split_once('=') {
                Some((k, v)) if !v.is_empty() => {
                    out.push_str(&truncate(k, 256));
                    out.push('=');
                    out.push_str(&key.hash(v.as_bytes()));
                }
                _ => out.push_str(&truncate(kv, 256)),
            }
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// Headers that belong to one hop, never forwarded.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for n in hop {
        headers.remove(n);
    }
}

/// The request as the store receives it: the normalized path, the
/// client's query, its headers minus hop-by-hop ones (and minus
/// Accept-Encoding when a mask must read the answer), the body streamed
/// and counted.
fn upstream_request(
    ctx: &Ctx,
    mut parts: http::request::Parts,
    body: Incoming,
    path: &str,
    query: Option<&str>,
    counter: Arc<AtomicU64>,
) -> Request<UpBody> {
    let target = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    strip_hop_by_hop(&mut parts.headers);
    if !ctx.store.masks.is_empty() {
        parts.headers.remove(header::ACCEPT_ENCODING);
    }
    if !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(&ctx.default_host) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let body = Limited::new(
        body.map_frame(move |f| {
            if let Some(d) = f.data_ref() {
                counter.fetch_add(d.len() as u64, Ordering::Relaxed);
            }
            f
        }),
        MAX_REQUEST_BODY,
    )
    .boxed_unsync();
    let mut up = Request::new(body);
    *up.method_mut() = parts.method;
    // The normalized path always parses: it is made of pchars and `/`.
    *up.uri_mut() = target
        .parse()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    *up.headers_mut() = parts.headers;
    up
}

/// Whether a mask may need to read a response with these headers.
fn must_inspect(
    masks: &BodyMasks,
    method: &Method,
    status: StatusCode,
    headers: &HeaderMap,
) -> Inspect {
    if masks.is_empty()
        || *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Inspect::No;
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime == "application/json" || mime.ends_with("+json") {
        Inspect::Json
    } else if masks.has_detectors()
        && (mime.is_empty()
            || mime.starts_with("text/")
            || mime.ends_with("+xml")
            || mime == "application/xml"
            || mime == "application/x-www-form-urlencoded")
    {
        Inspect::Text
    } else {
        Inspect::No
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Inspect {
    No,
    Json,
    Text,
}

async fn respond(
    ctx: &Arc<Ctx>,
    method: &Method,
    mut event: CommandEvent,
    up_bytes: Arc<AtomicU64>,
    resp: Response<Incoming>,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let status = parts.status;
    let close = ctx.upstream_dead.load(Ordering::Relaxed);
    if close {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let inspect = must_inspect(&ctx.store.masks, method, status, &parts.headers);
    if inspect == Inspect::No {
        let finish = Finish {
            ctx: ctx.clone(),
            event,
            up_bytes,
            status,
        };
        return Response::from_parts(parts, ProxyBody::stream(body, finish));
    }
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let fail = |ctx: &Ctx, mut event: CommandEvent, msg: String| {
        event.bytes_up = up_bytes.load(Ordering::Relaxed);
        event.decision = Decision::Error;
        ctx.upstream_dead.store(true, Ordering::Relaxed);
        ctx.refuse(
            event,
            StatusCode::BAD_GATEWAY,
            &format!("interceptor: {msg}"),
            Some(msg.clone()),
        )
    };
    if encoded {
        return fail(
            ctx,
            event,
            "the store compressed a response that must be masked (Content-Encoding): refused"
                .into(),
        );
    }
    let bytes = match Limited::new(body, MAX_MASKED_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return fail(
                ctx,
                event,
                format!("response larger than {MAX_MASKED_BODY} bytes cannot be masked: refused"),
            )
        }
        Err(e) => return fail(ctx, event, format!("upstream response failed: {e}")),
    };
    let masks = &ctx.store.masks;
    let key = &ctx.store.key;
    let mut masked = None;
    if inspect == Inspect::Json {
        if let Some(mut v) = super::json::parse(&bytes) {
            let n = masks.mask_json(&mut v, key);
            if n > 0 {
                masked = Some((Bytes::from(super::json::to_bytes(&v)), n));
            }
        } else if let Ok(text) = std::str::from_utf8(&bytes) {
            masked = masks.mask_text(text, key).map(|(t, n)| (Bytes::from(t), n));
        }
    } else if let Ok(text) = std::str::from_utf8(&bytes) {
        masked = masks.mask_text(text, key).map(|(t, n)| (Bytes::from(t), n));
    }
    let body = match masked {
        Some((b, n)) => {
            event.masked_values = n;
            event.decision = Decision::Mask;
            b
        }
        None => bytes,
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let finish = Finish {
        ctx: ctx.clone(),
        event,
        up_bytes,
        status,
    };
    Response::from_parts(parts, ProxyBody::full(body, Some(finish)))
}

/// Completes an allowed request's event once its answer has been sent.
struct Finish {
    ctx: Arc<Ctx>,
    event: CommandEvent,
    up_bytes: Arc<AtomicU64>,
    status: StatusCode,
}

impl Finish {
    fn done(mut self, down: u64, error: Option<String>) {
        let e = &mut self.event;
        e.bytes_up = self.up_bytes.load(Ordering::Relaxed);
        e.bytes_down = down;
        let error = error.or_else(|| {
            (self.status.as_u16() >= 400).then(|| {
                format!(
                    "HTTP {} {}",
                    self.status.as_u16(),
                    self.status.canonical_reason().unwrap_or("")
                )
            })
        });
        e.finish(error);
        {
            let mut s = lock(&self.ctx.session);
            s.bytes_up += e.bytes_up;
            s.bytes_down += e.bytes_down;
            s.masked_values += e.masked_values;
        }
        if let Err(err) = self.ctx.recorder.event(e) {
            tracing::warn!(session_id = %e.session_id, error = %err, "command outcome not recorded");
        }
    }
}

/// A response body: buffered (masked, or the proxy's own) or streamed from
/// the store; counts what it sends and finishes the event at its end.
pub struct ProxyBody {
    inner: Inner,
    finish: Option<Finish>,
    sent: u64,
    error: Option<String>,
}

enum Inner {
    Full(Option<Bytes>),
    Stream(Incoming),
}

impl ProxyBody {
    fn full(b: Bytes, finish: Option<Finish>) -> ProxyBody {
        ProxyBody {
            inner: Inner::Full(Some(b)),
            finish,
            sent: 0,
            error: None,
        }
    }

    fn stream(b: Incoming, finish: Finish) -> ProxyBody {
        ProxyBody {
            inner: Inner::Stream(b),
            finish: Some(finish),
            sent: 0,
            error: None,
        }
    }

    fn complete(&mut self) {
        if let Some(f) = self.finish.take() {
            f.done(self.sent, self.error.take());
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.inner {
            Inner::Full(b) => Poll::Ready(
                b.take()
                    .filter(|b| !b.is_empty())
                    .map(|b| Ok(Frame::data(b))),
            ),
            Inner::Stream(s) => match Pin::new(s).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(Some(Err(e))) => {
                    this.error = Some(format!("upstream response body failed: {e}"));
                    this.complete();
                    Poll::Ready(Some(Err(Box::new(e) as BoxError)))
                }
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    this.sent += d.len() as u64;
                }
            }
            Poll::Ready(None) => this.complete(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full(b) => b.as_ref().is_none_or(|b| b.is_empty()),
            Inner::Stream(s) => s.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Stream(s) => s.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if self.finish.is_some() {
            if self.error.is_none() && !self.is_end_stream() {
                self.error = Some("the client went away before the response was sent".into());
            }
            self.complete();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HostKey {
        let dir = tempfile::tempdir().expect("tempdir");
        HostKey::load_or_create(dir.path()).expect("host key")
    }

    #[test]
    fn statements_hash_query_values() {
        let k = key();
        let s = statement(
            "GET",
            "/v1/secret/data/app",
            Some("version=2&list&token=s.abc"),
            &k,
        );
        assert!(
            s.starts_with("GET /v1/secret/data/app?version=hmac:"),
            "{s}"
        );
        assert!(s.contains("&list&token=hmac:"), "{s}");
        assert!(!s.contains("s.abc"), "{s}");
        assert_eq!(
            statement("GET", "/v1/sys/health", None, &k),
            "GET /v1/sys/health"
        );
    }

    #[test]
    fn list_queries_are_lists() {
        assert!(is_list(Some("list=true")));
        assert!(is_list(Some("a=b&list=1")));
        assert!(!is_list(Some("list=false")));
        assert!(!is_list(None));
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-vault-token", HeaderValue::from_static("t"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-vault-token"));
    }
}
