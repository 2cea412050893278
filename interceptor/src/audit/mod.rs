//! The audit trail: every session and command, tied to the process identity,
//! journaled before the command it describes reaches the server, then rolled
//! into Parquet for analysts.
//!
//! * [`model`]: the session record and command event (the Parquet columns).
//! * [`journal`]: append-only, CRC-framed segment files under `state_dir`.
//! * [`parquet`]: the dataset layout, writer and reader.
//! * [`roller`]: journal -> Parquet, exactly once, crash-safe.
//! * [`recorder`]: what protocol handlers call; applies `audit.on_failure`.
//! * [`hostkey`]: HMAC-SHA256 under the per-host key, for every secret value.
//! * [`query`]: `interceptor audit sessions|events` and `replay`.

pub mod hostkey;
pub mod journal;
pub mod model;
pub mod normalize;
pub mod parquet;
pub mod query;
pub mod recorder;
pub mod roller;

pub use model::{now_us, CommandEvent, Decision, JournalRecord, SessionRecord};

/// Why a record could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the audit journal cannot be written ({0}); commands are refused until it can (audit.on_failure = \"block\")")]
    Unavailable(String),
}

/// Where sessions and commands are recorded. Protocol handlers call
/// [`Recorder::session`] when a session opens and closes and
/// [`Recorder::event`] before forwarding a command and again with its
/// outcome. An `Err` means the command must not be forwarded.
pub trait Recorder: Send + Sync {
    fn session(&self, session: &SessionRecord) -> Result<(), RecordError>;
    fn event(&self, event: &CommandEvent) -> Result<(), RecordError>;
    /// Several events at once, all or none: one journal write for a batch
    /// of pipelined commands.
    fn events(&self, events: &[&CommandEvent]) -> Result<(), RecordError> {
        events.iter().try_for_each(|e| self.event(e))
    }
    /// False while records are being refused: handlers then journal a
    /// session before opening anything upstream, so an outage of the audit
    /// trail does not even reach the server.
    fn available(&self) -> bool {
        true
    }
}

/// Session lines in the daemon log (target `interceptor::session`), for
/// operators tailing the journal of systemd. Not the audit trail. A session
/// is journaled again as it learns its upstream, TLS and user (higher
/// revs); only its first version is logged as opened, and its close once.
pub fn log_session(s: &SessionRecord) {
    if !s.is_closed() {
        if s.rev != 0 {
            return;
        }
        tracing::info!(
            target: "interceptor::session",
            event = "open",
            session_id = %s.session_id,
            store = %s.store,
            protocol = %s.protocol,
            client = %s.client_addr,
            original_dst = %s.original_dst,
            pid = s.pid,
            ppid = s.ppid.unwrap_or(0),
            uid = s.uid,
            gid = s.gid,
            comm = %s.comm,
            exe = s.exe.as_deref().unwrap_or("-"),
            cmdline = s.cmdline.as_deref().unwrap_or("-"),
            cgroup = s.cgroup.as_deref().unwrap_or("-"),
            unit = s.unit.as_deref().unwrap_or("-"),
            ci_job = s.ci_job.as_deref().unwrap_or("-"),
            "session opened"
        );
    } else {
        tracing::info!(
            target: "interceptor::session",
            event = "close",
            session_id = %s.session_id,
            store = %s.store,
            pid = s.pid,
            upstream = s.upstream_addr.as_deref().unwrap_or("-"),
            bytes_up = s.bytes_up,
            bytes_down = s.bytes_down,
            commands = s.commands,
            duration_us = s.ended_at.unwrap_or(s.started_at) - s.started_at,
            end_reason = s.end_reason.as_deref().unwrap_or("-"),
            "session closed"
        );
    }
}

/// One line per denied command (target `interceptor::session`), logged
/// when its outcome is recorded: which rule, which store, which process.
/// Statements stay out of the log (`audit.statements = "raw"` would put
/// literals there); the audit trail has them.
pub fn log_denial(e: &CommandEvent) {
    if !(e.done && e.decision == Decision::Deny) {
        return;
    }
    tracing::info!(
        target: "interceptor::session",
        event = "deny",
        session_id = %e.session_id,
        store = %e.store,
        protocol = %e.protocol,
        pid = e.pid,
        uid = e.uid,
        unit = e.unit.as_deref().unwrap_or("-"),
        command = %e.command,
        target_name = e.target.as_deref().unwrap_or("-"),
        rule = e.rule.as_deref().unwrap_or("-"),
        "command denied"
    );
}

/// This host's name, as recorded in every session.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
