//! The audit event model: one [`SessionRecord`] per intercepted connection
//! and one [`CommandEvent`] per command (SQL statement, Redis command, HTTP
//! request, or the whole session for the `tcp` protocol).
//!
//! Both are journaled more than once as they progress (opened, then closed;
//! decided, then done). Every version carries a `rev`; the highest rev of an
//! id is the truth, which makes replays of the journal idempotent. Field
//! names are the Parquet column names of DESIGN.md ("Audit dataset").

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::identity::Identity;

/// What the policy did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    Allow,
    Deny,
    Mask,
    Held,
    Approved,
    Rejected,
    Expired,
    Error,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::Mask => "mask",
            Decision::Held => "held",
            Decision::Approved => "approved",
            Decision::Rejected => "rejected",
            Decision::Expired => "expired",
            Decision::Error => "error",
        }
    }

    pub fn parse(s: &str) -> Option<Decision> {
        Some(match s {
            "allow" => Decision::Allow,
            "deny" => Decision::Deny,
            "mask" => Decision::Mask,
            "held" => Decision::Held,
            "approved" => Decision::Approved,
            "rejected" => Decision::Rejected,
            "expired" => Decision::Expired,
            "error" => Decision::Error,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One intercepted connection, from accept to close. Timestamps are
/// microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub session_id: String,
    pub rev: u32,
    pub host: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub store: String,
    pub protocol: String,
    pub client_addr: String,
    pub original_dst: String,
    pub upstream_addr: Option<String>,
    pub pid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Secrets recognisable in the command line (URL passwords, password
    /// options) are replaced by their HMAC before this is set.
    pub cmdline: Option<String>,
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub ci_job: Option<String>,
    pub client_tls: bool,
    pub upstream_tls: bool,
    pub db_user: Option<String>,
    pub database: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub commands: u64,
    pub denied: u64,
    pub masked_values: u64,
    pub end_reason: Option<String>,
}

impl SessionRecord {
    /// A session as it opens: rev 0, not ended.
    pub fn open(
        host: &str,
        store: &str,
        protocol: &str,
        client_addr: SocketAddr,
        original_dst: SocketAddr,
        identity: &Identity,
    ) -> Self {
        SessionRecord {
            session_id: uuid::Uuid::now_v7().to_string(),
            rev: 0,
            host: host.to_string(),
            started_at: now_us(),
            ended_at: None,
            store: store.to_string(),
            protocol: protocol.to_string(),
            client_addr: client_addr.to_string(),
            original_dst: original_dst.to_string(),
            upstream_addr: None,
            pid: identity.pid,
            ppid: identity.ppid,
            uid: identity.uid,
            gid: identity.gid,
            comm: identity.comm.clone(),
            exe: identity.exe.clone(),
            cmdline: identity.cmdline.clone(),
            cgroup: identity.cgroup.clone(),
            unit: identity.unit.clone(),
            ci_job: identity.ci_job.clone(),
            client_tls: false,
            upstream_tls: false,
            db_user: None,
            database: None,
            bytes_up: 0,
            bytes_down: 0,
            commands: 0,
            denied: 0,
            masked_values: 0,
            end_reason: None,
        }
    }

    /// Marks the session ended (bumps rev).
    pub fn close(&mut self, reason: impl Into<String>) {
        self.ended_at = Some(now_us());
        self.end_reason = Some(reason.into());
        self.rev += 1;
    }

    pub fn is_closed(&self) -> bool {
        self.ended_at.is_some()
    }

    /// A command event of this session, decided but not yet done.
    pub fn event(&mut self, command: impl Into<String>, decision: Decision) -> CommandEvent {
        self.commands += 1;
        if decision == Decision::Deny {
            self.denied += 1;
        }
        CommandEvent {
            event_id: uuid::Uuid::now_v7().to_string(),
            rev: 0,
            session_id: self.session_id.clone(),
            seq: self.commands,
            ts: now_us(),
            duration_us: None,
            host: self.host.clone(),
            store: self.store.clone(),
            protocol: self.protocol.clone(),
            pid: self.pid,
            uid: self.uid,
            unit: self.unit.clone(),
            command: command.into(),
            statement: None,
            target: None,
            decision,
            rule: None,
            approval_id: None,
            approver: None,
            rows: None,
            masked_values: 0,
            error: None,
            bytes_up: 0,
            bytes_down: 0,
            done: false,
        }
    }
}

/// One command, journaled before it is forwarded (`done == false`) and again
/// with its outcome (`done == true`, higher rev).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEvent {
    pub event_id: String,
    pub rev: u32,
    pub session_id: String,
    pub seq: u64,
    pub ts: i64,
    pub duration_us: Option<i64>,
    pub host: String,
    pub store: String,
    pub protocol: String,
    pub pid: u32,
    pub uid: u32,
    pub unit: Option<String>,
    /// Kind of command: `SELECT`, `GET`, `GET /v1/secret/data/{path}`, `TCP`.
    pub command: String,
    /// Normalized (literals -> $n) unless `audit.statements = "raw"`.
    pub statement: Option<String>,
    /// Relations, keys or path the command touches.
    pub target: Option<String>,
    pub decision: Decision,
    pub rule: Option<String>,
    pub approval_id: Option<String>,
    pub approver: Option<String>,
    pub rows: Option<u64>,
    pub masked_values: u64,
    pub error: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub done: bool,
}

impl CommandEvent {
    /// Records the outcome (bumps rev).
    pub fn finish(&mut self, error: Option<String>) {
        self.duration_us = Some((now_us() - self.ts).max(0));
        self.error = error;
        self.done = true;
        self.rev += 1;
    }
}

/// What the journal holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum JournalRecord {
    Session(SessionRecord),
    Event(CommandEvent),
}

impl JournalRecord {
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain owned data into a Vec cannot fail.
        bincode::serialize(self).unwrap_or_default()
    }

    pub fn view(&self) -> RecordView<'_> {
        match self {
            JournalRecord::Session(s) => RecordView::Session(s.view()),
            JournalRecord::Event(e) => RecordView::Event(e.view()),
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<JournalRecord> {
        bincode::deserialize(bytes).ok()
    }
}

/// A [`SessionRecord`] borrowed from a journal buffer (or from an owned
/// record): what the roller works on, so rolling a million events does not
/// allocate twelve strings each. Same fields in the same order as the owned
/// record, so both encode to the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionView<'a> {
    pub session_id: &'a str,
    pub rev: u32,
    pub host: &'a str,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub store: &'a str,
    pub protocol: &'a str,
    pub client_addr: &'a str,
    pub original_dst: &'a str,
    pub upstream_addr: Option<&'a str>,
    pub pid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub comm: &'a str,
    pub exe: Option<&'a str>,
    pub cmdline: Option<&'a str>,
    pub cgroup: Option<&'a str>,
    pub unit: Option<&'a str>,
    pub ci_job: Option<&'a str>,
    pub client_tls: bool,
    pub upstream_tls: bool,
    pub db_user: Option<&'a str>,
    pub database: Option<&'a str>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub commands: u64,
    pub denied: u64,
    pub masked_values: u64,
    pub end_reason: Option<&'a str>,
}

/// A [`CommandEvent`] borrowed from a journal buffer; see [`SessionView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView<'a> {
    pub event_id: &'a str,
    pub rev: u32,
    pub session_id: &'a str,
    pub seq: u64,
    pub ts: i64,
    pub duration_us: Option<i64>,
    pub host: &'a str,
    pub store: &'a str,
    pub protocol: &'a str,
    pub pid: u32,
    pub uid: u32,
    pub unit: Option<&'a str>,
    pub command: &'a str,
    pub statement: Option<&'a str>,
    pub target: Option<&'a str>,
    pub decision: Decision,
    pub rule: Option<&'a str>,
    pub approval_id: Option<&'a str>,
    pub approver: Option<&'a str>,
    pub rows: Option<u64>,
    pub masked_values: u64,
    pub error: Option<&'a str>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub done: bool,
}

/// Borrowing twin of [`JournalRecord`] (same variants, same order).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RecordView<'a> {
    #[serde(borrow)]
    Session(SessionView<'a>),
    #[serde(borrow)]
    Event(EventView<'a>),
}

impl<'a> RecordView<'a> {
    /// Decodes without copying a string: every field points into `bytes`.
    pub fn decode(bytes: &'a [u8]) -> Option<RecordView<'a>> {
        bincode::deserialize(bytes).ok()
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).unwrap_or_default()
    }
}

impl SessionRecord {
    pub fn view(&self) -> SessionView<'_> {
        SessionView {
            session_id: &self.session_id,
            rev: self.rev,
            host: &self.host,
            started_at: self.started_at,
            ended_at: self.ended_at,
            store: &self.store,
            protocol: &self.protocol,
            client_addr: &self.client_addr,
            original_dst: &self.original_dst,
            upstream_addr: self.upstream_addr.as_deref(),
            pid: self.pid,
            ppid: self.ppid,
            uid: self.uid,
            gid: self.gid,
            comm: &self.comm,
            exe: self.exe.as_deref(),
            cmdline: self.cmdline.as_deref(),
            cgroup: self.cgroup.as_deref(),
            unit: self.unit.as_deref(),
            ci_job: self.ci_job.as_deref(),
            client_tls: self.client_tls,
            upstream_tls: self.upstream_tls,
            db_user: self.db_user.as_deref(),
            database: self.database.as_deref(),
            bytes_up: self.bytes_up,
            bytes_down: self.bytes_down,
            commands: self.commands,
            denied: self.denied,
            masked_values: self.masked_values,
            end_reason: self.end_reason.as_deref(),
        }
    }
}

impl CommandEvent {
    pub fn view(&self) -> EventView<'_> {
        EventView {
            event_id: &self.event_id,
            rev: self.rev,
            session_id: &self.session_id,
            seq: self.seq,
            ts: self.ts,
            duration_us: self.duration_us,
            host: &self.host,
            store: &self.store,
            protocol: &self.protocol,
            pid: self.pid,
            uid: self.uid,
            unit: self.unit.as_deref(),
            command: &self.command,
            statement: self.statement.as_deref(),
            target: self.target.as_deref(),
            decision: self.decision,
            rule: self.rule.as_deref(),
            approval_id: self.approval_id.as_deref(),
            approver: self.approver.as_deref(),
            rows: self.rows,
            masked_values: self.masked_values,
            error: self.error.as_deref(),
            bytes_up: self.bytes_up,
            bytes_down: self.bytes_down,
            done: self.done,
        }
    }
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// A session of this test process, as the proxy would open it (tests only).
#[cfg(test)]
pub(crate) fn test_session() -> SessionRecord {
    let identity = crate::identity::Identity::resolve(crate::identity::KernelIdentity {
        tgid: std::process::id(),
        tid: std::process::id(),
        uid: 0,
        gid: 0,
        comm: String::new(),
        cgroup_id: 0,
    });
    let addr = |a: &str| a.parse().expect("test address");
    SessionRecord::open(
        "h",
        "db",
        "tcp",
        addr("127.0.0.1:1"),
        addr("127.0.0.1:2"),
        &identity,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_encode_and_decode_like_owned_records() {
        let mut s = test_session();
        let mut e = s.event("TCP", Decision::Allow);
        e.statement = Some("SELECT $1".into());
        e.finish(Some("boom".into()));
        s.close("closed");
        for owned in [JournalRecord::Session(s), JournalRecord::Event(e)] {
            let bytes = owned.encode();
            assert_eq!(
                owned.view().encode(),
                bytes,
                "a view encodes like its owned record"
            );
            assert_eq!(RecordView::decode(&bytes), Some(owned.view()));
        }
    }
}
