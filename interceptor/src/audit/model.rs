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

    pub fn decode(bytes: &[u8]) -> Option<JournalRecord> {
        bincode::deserialize(bytes).ok()
    }
}

pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
