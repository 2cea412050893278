//! The `tcp` protocol: relay bytes both ways, half-close included, and count
//! them. No parsing, so no rules or masks apply to these stores; the whole
//! session is one command event (`TCP`, target = the dialled address),
//! journaled before the first byte is forwarded.

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use crate::{
    audit::{Decision, Recorder, SessionRecord},
    proxy::{record_session, reset, UpstreamConnector},
};

const BUF: usize = 64 * 1024;

const REFUSED: &str = "refused: the audit journal cannot be written (audit.on_failure = \"block\")";

/// The upstream side of a session.
pub enum Upstream {
    /// Connected (or failed) while the identity was being read.
    Connected(Result<TcpStream, String>),
    /// Not opened yet: the audit journal was failing, so the session must be
    /// journaled before anything reaches the server.
    AfterJournal(UpstreamConnector, SocketAddr),
}

/// Runs a `tcp` session to its end and records it.
pub async fn serve(
    mut client: TcpStream,
    upstream: Upstream,
    mut session: SessionRecord,
    recorder: &dyn Recorder,
) {
    // Whether the opening version (rev 0) is in the journal already.
    let (upstream, journaled) = match upstream {
        Upstream::Connected(r) => (r, false),
        Upstream::AfterJournal(connector, addr) => {
            if !record_session(recorder, &session) {
                return refuse(client, session, recorder);
            }
            let r = connector
                .connect(addr)
                .await
                .map_err(|e| format!("upstream connect to {addr} failed: {e}"));
            (r, true)
        }
    };
    let mut server = match upstream {
        Ok(server) => server,
        Err(error) => {
            reset(client);
            let recorded = journaled || record_session(recorder, &session);
            let mut event = session.event("TCP", Decision::Error);
            event.target = Some(session.original_dst.clone());
            event.finish(Some(error.clone()));
            if recorded {
                let _ = recorder.event(&event);
            }
            session.close(error);
            record_session(recorder, &session);
            return;
        }
    };
    session.upstream_addr = server.peer_addr().ok().map(|a| a.to_string());
    if journaled {
        session.rev += 1;
    }
    let mut event = session.event("TCP", Decision::Allow);
    event.target = Some(session.original_dst.clone());
    // Write-before-forward: nothing is relayed unless the journal took both.
    if !record_session(recorder, &session) || recorder.event(&event).is_err() {
        drop(server);
        session.commands = 0;
        return refuse(client, session, recorder);
    }
    let _ = client.set_nodelay(true);
    let relayed = relay(&mut client, &mut server).await;
    (event.bytes_up, event.bytes_down) = (relayed.up, relayed.down);
    (session.bytes_up, session.bytes_down) = (relayed.up, relayed.down);
    let (reason, error) = match relayed.error {
        None => ("closed".to_string(), None),
        Some(e) => (format!("relay error: {e}"), Some(e)),
    };
    event.finish(error);
    if let Err(e) = recorder.event(&event) {
        tracing::warn!(session_id = %session.session_id, error = %e, "command outcome not recorded");
    }
    session.close(reason);
    record_session(recorder, &session);
}

/// How every parsing handler starts: the session is journaled before a
/// byte reaches the server (write-before-forward), or the client is reset
/// and `None` returned; then the upstream connection, opened now if the
/// journal was failing when the connection was accepted.
pub(crate) async fn open_session(
    client: TcpStream,
    upstream: Upstream,
    session: SessionRecord,
    recorder: &dyn Recorder,
) -> Option<(TcpStream, Result<TcpStream, String>, SessionRecord)> {
    if !record_session(recorder, &session) {
        refuse(client, session, recorder);
        return None;
    }
    let upstream = match upstream {
        Upstream::Connected(r) => r,
        Upstream::AfterJournal(connector, addr) => connector
            .connect(addr)
            .await
            .map_err(|e| format!("upstream connect to {addr} failed: {e}")),
    };
    Some((client, upstream, session))
}

/// Ends a session the audit journal could not take: reset the client, and
/// try to record why (it succeeds once the journal is writable again).
pub(crate) fn refuse(client: TcpStream, mut session: SessionRecord, recorder: &dyn Recorder) {
    reset(client);
    session.close(REFUSED);
    record_session(recorder, &session);
}

/// Bytes each way, and the first error if a direction failed.
struct Relayed {
    up: u64,
    down: u64,
    error: Option<String>,
}

/// Copies both ways until both sides have closed, passing each EOF on as a
/// half-close. Byte counts survive an error, so the audit trail records how
/// much crossed before a peer vanished.
async fn relay(client: &mut TcpStream, server: &mut TcpStream) -> Relayed {
    let (mut client_r, mut client_w) = client.split();
    let (mut server_r, mut server_w) = server.split();
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let up = pump(&mut client_r, &mut server_w, &up_bytes);
    let down = pump(&mut server_r, &mut client_w, &down_bytes);
    tokio::pin!(up, down);
    // A clean EOF one way waits for the other way (half-close); an error
    // ends the session at once, like a peer that vanished.
    let error = tokio::select! {
        e = &mut up => match e {
            None => down.await,
            Some(e) => Some(e),
        },
        e = &mut down => match e {
            None => up.await,
            Some(e) => Some(e),
        },
    };
    Relayed {
        up: up_bytes.load(Ordering::Relaxed),
        down: down_bytes.load(Ordering::Relaxed),
        error,
    }
}

/// One direction: read, write, count; shut the writer down at EOF.
async fn pump<R, W>(from: &mut R, to: &mut W, count: &AtomicU64) -> Option<String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                let _ = to.shutdown().await;
                return Some(e.to_string());
            }
        };
        if let Err(e) = to.write_all(&buf[..n]).await {
            return Some(e.to_string());
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
    match to.shutdown().await {
        Ok(()) => None,
        // The other side already went away: the data was delivered.
        Err(e) if e.kind() == std::io::ErrorKind::NotConnected => None,
        Err(e) => Some(e.to_string()),
    }
}
