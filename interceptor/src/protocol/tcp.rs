//! The `tcp` protocol: relay bytes both ways, half-close included, and count
//! them. No parsing, so no rules or masks apply to these stores; the whole
//! session is one command event (`TCP`, target = the dialled address),
//! journaled before the first byte is forwarded.

use std::net::SocketAddr;

use tokio::{io::copy_bidirectional_with_sizes, net::TcpStream};

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
    let upstream = match upstream {
        Upstream::Connected(r) => r,
        Upstream::AfterJournal(connector, addr) => {
            if !record_session(recorder, &session) {
                reset(client);
                session.close(REFUSED);
                record_session(recorder, &session);
                return;
            }
            connector
                .connect(addr)
                .await
                .map_err(|e| format!("upstream connect to {addr} failed: {e}"))
        }
    };
    let mut server = match upstream {
        Ok(server) => server,
        Err(error) => {
            reset(client);
            let recorded = record_session(recorder, &session);
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
    let mut event = session.event("TCP", Decision::Allow);
    event.target = Some(session.original_dst.clone());
    // Write-before-forward: nothing is relayed unless the journal took both.
    if !record_session(recorder, &session) || recorder.event(&event).is_err() {
        reset(client);
        drop(server);
        session.commands = 0;
        session.close(REFUSED);
        record_session(recorder, &session);
        return;
    }
    let _ = client.set_nodelay(true);
    let (reason, error) =
        match copy_bidirectional_with_sizes(&mut client, &mut server, BUF, BUF).await {
            Ok((up, down)) => {
                (event.bytes_up, event.bytes_down) = (up, down);
                (session.bytes_up, session.bytes_down) = (up, down);
                ("closed".to_string(), None)
            }
            Err(e) => (format!("relay error: {e}"), Some(e.to_string())),
        };
    event.finish(error);
    if let Err(e) = recorder.event(&event) {
        tracing::warn!(session_id = %session.session_id, error = %e, "command outcome not recorded");
    }
    session.close(reason);
    record_session(recorder, &session);
}
