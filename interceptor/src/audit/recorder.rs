//! The recorder protocol handlers talk to: every session version and every
//! command event goes to the journal before the handler moves on, and
//! `audit.on_failure` decides what a failed write means.

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    Arc,
};

use serde::Serialize;

use super::{
    journal::Journal, model::RecordView, CommandEvent, RecordError, Recorder, SessionRecord,
};
use crate::config::OnFailure;

pub struct JournalRecorder {
    journal: Arc<Journal>,
    on_failure: OnFailure,
    failing: AtomicBool,
    /// Records dropped under `on_failure = "allow"`.
    lost: AtomicU64,
    /// Commands refused under `on_failure = "block"`.
    refused: AtomicU64,
}

/// Counters for `interceptor status`.
#[derive(Debug, Clone, Serialize)]
pub struct RecorderStats {
    pub failing: bool,
    pub lost_records: u64,
    pub refused_records: u64,
}

impl JournalRecorder {
    pub fn new(journal: Arc<Journal>, on_failure: OnFailure) -> Self {
        JournalRecorder {
            journal,
            on_failure,
            failing: AtomicBool::new(false),
            lost: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn stats(&self) -> RecorderStats {
        RecorderStats {
            failing: self.failing.load(Ordering::Relaxed),
            lost_records: self.lost.load(Ordering::Relaxed),
            refused_records: self.refused.load(Ordering::Relaxed),
        }
    }

    fn append(&self, record: RecordView<'_>) -> Result<(), RecordError> {
        self.append_all(&[&record.encode()])
    }

    fn append_all(&self, payloads: &[&[u8]]) -> Result<(), RecordError> {
        match self.journal.append_all(payloads) {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!(
                        "the audit journal is writable again: commands are recorded and forwarded"
                    );
                }
                Ok(())
            }
            Err(e) => self.failed(&e.to_string()),
        }
    }

    fn failed(&self, error: &str) -> Result<(), RecordError> {
        let first = !self.failing.swap(true, Ordering::Relaxed);
        match self.on_failure {
            OnFailure::Block => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                if first {
                    tracing::error!(error, "cannot write the audit journal: refusing commands until it can (audit.on_failure = \"block\")");
                }
                Err(RecordError::Unavailable(error.to_string()))
            }
            OnFailure::Allow => {
                let lost = self.lost.fetch_add(1, Ordering::Relaxed) + 1;
                if first || lost.is_power_of_two() {
                    tracing::error!(error, lost, "cannot write the audit journal: forwarding anyway, this record is lost (audit.on_failure = \"allow\")");
                }
                Ok(())
            }
        }
    }
}

impl Recorder for JournalRecorder {
    fn session(&self, session: &SessionRecord) -> Result<(), RecordError> {
        self.append(RecordView::Session(session.view()))
    }

    fn event(&self, event: &CommandEvent) -> Result<(), RecordError> {
        super::log_denial(event);
        self.append(RecordView::Event(event.view()))
    }

    fn events(&self, events: &[&CommandEvent]) -> Result<(), RecordError> {
        events.iter().for_each(|e| super::log_denial(e));
        let encoded: Vec<Vec<u8>> = events
            .iter()
            .map(|e| RecordView::Event(e.view()).encode())
            .collect();
        let payloads: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        self.append_all(&payloads)
    }

    fn available(&self) -> bool {
        self.on_failure == OnFailure::Allow || !self.failing.load(Ordering::Relaxed)
    }
}
