//! The session record every protocol handler fills in, and the recorder
//! interface it is handed to. Today's recorder writes structured log lines;
//! the Parquet recorder (journal first, then Parquet) plugs in behind the same
//! trait.

use std::{
    net::SocketAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use crate::identity::Identity;

/// One intercepted connection, from accept to close.
#[derive(Debug, Clone, Serialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub host: String,
    /// Microseconds since the Unix epoch, UTC.
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub store: String,
    pub protocol: String,
    pub client_addr: SocketAddr,
    pub original_dst: SocketAddr,
    pub upstream_addr: Option<SocketAddr>,
    pub identity: Identity,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub end_reason: Option<String>,
}

impl SessionRecord {
    pub fn open(
        host: &str,
        store: &str,
        protocol: &str,
        client_addr: SocketAddr,
        original_dst: SocketAddr,
        identity: Identity,
    ) -> Self {
        SessionRecord {
            session_id: uuid::Uuid::now_v7().to_string(),
            host: host.to_string(),
            started_at: now_us(),
            ended_at: None,
            store: store.to_string(),
            protocol: protocol.to_string(),
            client_addr,
            original_dst,
            upstream_addr: None,
            identity,
            bytes_up: 0,
            bytes_down: 0,
            end_reason: None,
        }
    }

    pub fn close(&mut self, reason: impl Into<String>) {
        self.ended_at = Some(now_us());
        self.end_reason = Some(reason.into());
    }
}

pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Where sessions (and, with the protocol handlers, commands) are recorded.
pub trait Recorder: Send + Sync {
    fn session_opened(&self, session: &SessionRecord);
    fn session_closed(&self, session: &SessionRecord);
}

/// Records sessions as structured `tracing` events (target `interceptor::session`).
pub struct LogRecorder;

impl Recorder for LogRecorder {
    fn session_opened(&self, s: &SessionRecord) {
        let id = &s.identity;
        tracing::info!(
            target: "interceptor::session",
            event = "open",
            session_id = %s.session_id,
            store = %s.store,
            protocol = %s.protocol,
            client = %s.client_addr,
            original_dst = %s.original_dst,
            pid = id.pid,
            ppid = id.ppid.unwrap_or(0),
            uid = id.uid,
            gid = id.gid,
            comm = %id.comm,
            exe = id.exe.as_deref().unwrap_or("-"),
            cmdline = id.cmdline.as_deref().unwrap_or("-"),
            cgroup = id.cgroup.as_deref().unwrap_or("-"),
            unit = id.unit.as_deref().unwrap_or("-"),
            ci_job = id.ci_job.as_deref().unwrap_or("-"),
            "session opened"
        );
    }

    fn session_closed(&self, s: &SessionRecord) {
        tracing::info!(
            target: "interceptor::session",
            event = "close",
            session_id = %s.session_id,
            store = %s.store,
            pid = s.identity.pid,
            upstream = %s.upstream_addr.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            bytes_up = s.bytes_up,
            bytes_down = s.bytes_down,
            duration_us = s.ended_at.unwrap_or(s.started_at) - s.started_at,
            end_reason = s.end_reason.as_deref().unwrap_or("-"),
            "session closed"
        );
    }
}

/// This host's name, as recorded in every session.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
