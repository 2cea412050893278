//! Journal -> Parquet, exactly once.
//!
//! A roll seals the active journal segment, merges every sealed record by id
//! (highest rev wins), writes the finished sessions and events as Parquet,
//! and only then deletes the sealed segments. Sessions still open (and their
//! in-flight commands) are carried over: re-appended to the new active
//! segment before the old ones go. The steps that can be interrupted:
//!
//! 1. Parquet written to `AUDIT/.staging`, fsynced.
//! 2. `state_dir/roll.pending` lists the final paths, fsynced.
//! 3. Files renamed into place, directories fsynced.
//! 4. Sealed segments deleted, `roll.pending` removed.
//!
//! A crash before 2 leaves only staging garbage (cleaned on start). A crash
//! between 2 and 4 leaves `roll.pending`: the next roll reads the ids of the
//! listed files that exist and skips them. So nothing is rolled twice, and
//! nothing journaled is lost.

use std::{
    collections::{HashMap, HashSet},
    fs,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use serde::Serialize;

use super::{
    journal::Journal,
    model::{EventView, RecordView, SessionView},
    now_us,
    parquet::{self, Prepared},
};

const PENDING: &str = "roll.pending";
const INTERRUPTED_SESSION: &str = "interrupted: the daemon stopped before the session ended";
const CUT_SESSION: &str = "cut: the daemon shut down before the session ended";
const INTERRUPTED_COMMAND: &str = "interrupted: the daemon stopped before the command completed";

/// Why a roll happens; decides what becomes of sessions that are still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollMode {
    /// Periodic or `interceptor audit flush`: open sessions are carried over.
    Normal,
    /// Daemon start: anything open belongs to a daemon that is gone.
    Recovery,
    /// Clean shutdown after draining: whatever is still open is being cut.
    Shutdown,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct RollReport {
    pub sessions: usize,
    pub events: usize,
    pub carried: usize,
    pub skipped_already_rolled: usize,
    pub damaged: usize,
    pub files: Vec<PathBuf>,
    pub millis: u128,
}

#[derive(Debug, thiserror::Error)]
pub enum RollError {
    #[error("{0}")]
    Journal(#[from] super::journal::JournalError),
    #[error("{0}")]
    Parquet(#[from] super::parquet::AuditIoError),
    #[error("writing {path}: {source}")]
    Pending {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("re-appending an open session to the journal: {0}")]
    Carry(String),
}

pub struct Roller {
    journal: Arc<Journal>,
    audit_dir: PathBuf,
    state_dir: PathBuf,
    lock: Mutex<()>,
}

impl Roller {
    pub fn new(journal: Arc<Journal>, audit_dir: &Path, state_dir: &Path) -> Self {
        Roller {
            journal,
            audit_dir: audit_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            lock: Mutex::new(()),
        }
    }

    /// Rolls everything sealed so far. Blocking: call off the async runtime.
    pub fn roll(&self, mode: RollMode) -> Result<RollReport, RollError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let started = Instant::now();
        let mut report = RollReport::default();
        if mode == RollMode::Recovery {
            let cleaned = parquet::clean_staging(&self.audit_dir)?;
            if cleaned > 0 {
                tracing::warn!(
                    files = cleaned,
                    "removed half-written audit files left by an interrupted roll"
                );
            }
        }
        let upto = self.journal.rotate()?;
        // Records are views into the segment buffers: no string is copied
        // between the journal and the Parquet writer.
        let segments = self.journal.read_sealed(upto)?;
        let total: usize = segments.iter().map(|s| s.records().len()).sum();
        // Sessions are few and kept as views; commands are many and kept as
        // compact entries pointing into the segment buffers (decoded again,
        // a batch at a time, when the Parquet file is written).
        let mut sessions: Vec<SessionView<'_>> = Vec::new();
        let mut events: Vec<EventEntry<'_>> = Vec::with_capacity(total);
        for seg in &segments {
            for d in &seg.damage {
                tracing::warn!(damage = %d, "audit journal damage: the intact records around it are kept");
            }
            report.damaged += seg.damage.len();
            for bytes in seg.records() {
                match RecordView::decode(bytes) {
                    Some(RecordView::Session(s)) => sessions.push(s),
                    Some(RecordView::Event(e)) => events.push(EventEntry::new(bytes, &e)),
                    None => {
                        report.damaged += 1;
                        tracing::warn!(
                            segment = seg.seq,
                            "an audit journal record does not decode: skipped"
                        );
                    }
                }
            }
        }

        // A previous roll may have renamed files into place without trimming
        // the journal: those rows are already in the dataset.
        let pending = self.state_dir.join(PENDING);
        let already = self.already_rolled(&pending)?;
        let (sessions, skipped_sessions) = latest(&sessions, |s| (s.session_id, s.rev), &already);
        let (events, skipped_events) = latest(&events, |e| (e.event_id, e.rev), &already);
        report.skipped_already_rolled = skipped_sessions + skipped_events;

        // Sessions left open: carried over (normal roll) or ended here.
        let (mut roll_sessions, open): (Vec<&SessionView>, Vec<&SessionView>) =
            sessions.into_iter().partition(|s| s.ended_at.is_some());
        let mut carry_sessions = Vec::new();
        let mut ended_sessions: Vec<SessionView> = Vec::new();
        if mode == RollMode::Normal {
            carry_sessions = open;
        } else if !open.is_empty() {
            let reason = match mode {
                RollMode::Recovery => INTERRUPTED_SESSION,
                _ => CUT_SESSION,
            };
            let mut last_activity: HashMap<&str, i64> =
                open.iter().map(|s| (s.session_id, s.started_at)).collect();
            for e in &events {
                if let Some(t) = last_activity.get_mut(e.session_id) {
                    *t = (*t).max(e.end);
                }
            }
            for s in open {
                let mut s = s.clone();
                s.ended_at = last_activity.get(s.session_id).copied();
                s.end_reason = Some(reason);
                s.rev += 1;
                ended_sessions.push(s);
            }
        }
        roll_sessions.extend(ended_sessions.iter());
        // Commands not done: carried with their open session, else ended here.
        let now = now_us();
        let open_ids: HashSet<&str> = carry_sessions.iter().map(|s| s.session_id).collect();
        let mut carry_events = Vec::new();
        let mut ended_events: Vec<EventView> = Vec::new();
        let mut roll_events: Vec<EventRow> = Vec::with_capacity(events.len());
        for e in events {
            if e.done {
                roll_events.push(EventRow::Journal(e));
            } else if open_ids.contains(e.session_id) {
                carry_events.push(e);
            } else if let Some(RecordView::Event(mut v)) = RecordView::decode(e.bytes) {
                v.duration_us = Some((now - v.ts).max(0));
                v.error = Some(INTERRUPTED_COMMAND);
                v.done = true;
                v.rev += 1;
                ended_events.push(v);
            }
        }
        roll_events.extend(ended_events.iter().map(EventRow::Ended));

        // Carry first: once the sealed segments are gone, this is the only copy.
        for s in carry_sessions {
            self.journal
                .append(&RecordView::Session(s.clone()).encode())
                .map_err(|e| RollError::Carry(e.to_string()))?;
            report.carried += 1;
        }
        for e in carry_events {
            self.journal
                .append(e.bytes)
                .map_err(|e| RollError::Carry(e.to_string()))?;
            report.carried += 1;
        }
        report.sessions = roll_sessions.len();
        report.events = roll_events.len();

        if report.sessions + report.events > 0 {
            let mut prepared =
                parquet::prepare_sessions(&self.audit_dir, roll_sessions.iter().copied())?;
            match parquet::prepare_events_from(&self.audit_dir, roll_events) {
                Ok(p) => prepared.extend(p),
                Err(e) => {
                    discard(&prepared);
                    return Err(e.into());
                }
            }
            if let Err(e) = write_pending(&pending, &prepared) {
                discard(&prepared);
                return Err(e);
            }
            if let Err(e) = parquet::commit(&prepared) {
                // Some files may be in place: roll.pending stays, so the next
                // roll skips exactly those.
                discard(&prepared);
                return Err(e.into());
            }
            report.files = prepared.iter().map(|p| p.final_path.clone()).collect();
        }
        self.journal.remove_sealed(upto)?;
        match fs::remove_file(&pending) {
            Ok(()) => sync_dir(&self.state_dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(RollError::Pending {
                    path: pending,
                    source,
                })
            }
        }
        report.millis = started.elapsed().as_millis();
        Ok(report)
    }

    /// Ids in the files a previous, interrupted roll had already put in place.
    fn already_rolled(&self, pending: &Path) -> Result<HashSet<String>, RollError> {
        let mut ids = HashSet::new();
        let text = match fs::read_to_string(pending) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(source) => {
                return Err(RollError::Pending {
                    path: pending.to_path_buf(),
                    source,
                })
            }
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let path = Path::new(line.trim());
            if path.exists() {
                ids.extend(parquet::read_ids(path)?);
            }
        }
        if !ids.is_empty() {
            tracing::warn!(
                rows = ids.len(),
                "an interrupted roll had already written some rows: they are not written again"
            );
        }
        Ok(ids)
    }
}

/// Keeps, per id, the version with the highest rev (the later record wins a
/// tie), and drops ids already in the dataset, counted in the second value.
fn latest<'v, 'a, T>(
    items: &'v [T],
    key: impl Fn(&T) -> (&'a str, u32),
    skip: &HashSet<String>,
) -> (Vec<&'v T>, usize) {
    // Almost every id appears once or twice (decided, then done): index by
    // id, no copies of the strings.
    let mut best: HashMap<&str, (usize, u32)> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let (id, rev) = key(item);
        match best.get_mut(id) {
            Some(slot) if slot.1 > rev => {}
            Some(slot) => *slot = (i, rev),
            None => {
                best.insert(id, (i, rev));
            }
        }
    }
    let mut keep = vec![false; items.len()];
    let mut skipped = 0;
    for (id, (i, _)) in &best {
        if !skip.is_empty() && skip.contains(*id) {
            skipped += 1;
        } else {
            keep[*i] = true;
        }
    }
    drop(best);
    let kept = items
        .iter()
        .zip(keep)
        .filter_map(|(item, k)| k.then_some(item))
        .collect();
    (kept, skipped)
}

/// What the roller keeps of a journaled command: merge and sort keys, and
/// where its bytes are.
#[derive(Clone, Copy)]
struct EventEntry<'a> {
    bytes: &'a [u8],
    event_id: &'a str,
    session_id: &'a str,
    ts: i64,
    /// When it finished (or was decided, if it never did).
    end: i64,
    rev: u32,
    done: bool,
}

impl<'a> EventEntry<'a> {
    fn new(bytes: &'a [u8], e: &EventView<'a>) -> Self {
        EventEntry {
            bytes,
            event_id: e.event_id,
            session_id: e.session_id,
            ts: e.ts,
            end: e.ts + e.duration_us.unwrap_or(0),
            rev: e.rev,
            done: e.done,
        }
    }
}

/// A command row for the Parquet writer: journaled as is, or ended here.
enum EventRow<'e, 'a> {
    Journal(&'e EventEntry<'a>),
    Ended(&'e EventView<'a>),
}

impl<'a> parquet::RowSource<EventView<'a>> for EventRow<'_, 'a> {
    fn time(&self) -> i64 {
        match self {
            EventRow::Journal(e) => e.ts,
            EventRow::Ended(v) => v.ts,
        }
    }

    fn id(&self) -> &str {
        match self {
            EventRow::Journal(e) => e.event_id,
            EventRow::Ended(v) => v.event_id,
        }
    }

    fn row(&self) -> Option<EventView<'a>> {
        match self {
            // Decoded once already when the entry was made.
            EventRow::Journal(e) => match RecordView::decode(e.bytes) {
                Some(RecordView::Event(v)) => Some(v),
                _ => None,
            },
            EventRow::Ended(v) => Some((*v).clone()),
        }
    }
}

fn write_pending(path: &Path, prepared: &[Prepared]) -> Result<(), RollError> {
    let err = |source| RollError::Pending {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    for p in prepared {
        text.push_str(&p.final_path.to_string_lossy());
        text.push('\n');
    }
    let mut f = fs::File::create(path).map_err(err)?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(err)?;
    if let Some(dir) = path.parent() {
        sync_dir(dir);
    }
    Ok(())
}

fn discard(prepared: &[Prepared]) {
    for p in prepared {
        let _ = fs::remove_file(&p.tmp);
    }
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{
        journal::Durability, query, CommandEvent, Decision, JournalRecord, SessionRecord,
    };

    struct Fixture {
        dir: tempfile::TempDir,
        journal: Arc<Journal>,
        roller: Roller,
    }

    impl Fixture {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let journal = Arc::new(
                Journal::open(&dir.path().join("journal"), Durability::Batched).expect("journal"),
            );
            let roller = Roller::new(journal.clone(), &dir.path().join("audit"), dir.path());
            Fixture {
                dir,
                journal,
                roller,
            }
        }

        fn append(&self, r: JournalRecord) {
            self.journal.append(&r.encode()).expect("append");
        }

        /// A session with one finished command, both versions journaled.
        fn session(&self, closed: bool) -> (SessionRecord, CommandEvent) {
            let mut s = crate::audit::model::test_session();
            self.append(JournalRecord::Session(s.clone()));
            let mut e = s.event("TCP", Decision::Allow);
            self.append(JournalRecord::Event(e.clone()));
            if closed {
                e.finish(None);
                self.append(JournalRecord::Event(e.clone()));
                s.close("closed");
                self.append(JournalRecord::Session(s.clone()));
            }
            (s, e)
        }

        fn sessions(&self) -> Vec<SessionRecord> {
            query::read_sessions(&self.dir.path().join("audit"), &query::Filter::default())
                .expect("read")
        }

        fn events(&self) -> Vec<CommandEvent> {
            query::read_events(&self.dir.path().join("audit"), &query::Filter::default())
                .expect("read")
        }
    }

    #[test]
    fn highest_rev_wins_and_each_row_is_written_once() {
        let f = Fixture::new();
        for _ in 0..3 {
            f.session(true);
        }
        let r = f.roller.roll(RollMode::Normal).expect("roll");
        assert_eq!((r.sessions, r.events, r.carried), (3, 3, 0));
        assert!(f
            .sessions()
            .iter()
            .all(|s| s.end_reason.as_deref() == Some("closed")));
        assert!(f.events().iter().all(|e| e.done && e.duration_us.is_some()));
        // Nothing left: a second roll writes nothing.
        let r = f.roller.roll(RollMode::Normal).expect("roll");
        assert_eq!((r.sessions, r.events), (0, 0));
        assert_eq!(f.sessions().len(), 3);
    }

    #[test]
    fn a_crash_between_rename_and_trim_does_not_duplicate_rows() {
        let f = Fixture::new();
        let rows: Vec<_> = (0..3).map(|_| f.session(true)).collect();
        let r = f.roller.roll(RollMode::Normal).expect("roll");
        assert_eq!(r.files.len(), 2);
        // As if the daemon died after renaming the files into place but
        // before trimming the journal: the same records are still journaled
        // and roll.pending names the files.
        for (s, e) in &rows {
            f.append(JournalRecord::Session(s.clone()));
            f.append(JournalRecord::Event(e.clone()));
        }
        let pending: String = r
            .files
            .iter()
            .map(|p| format!("{}\n", p.display()))
            .collect();
        fs::write(f.dir.path().join(PENDING), pending).expect("pending");
        let (late, _) = f.session(true);
        let r = f.roller.roll(RollMode::Recovery).expect("recovery roll");
        assert_eq!(r.skipped_already_rolled, 6);
        assert_eq!((r.sessions, r.events), (1, 1));
        let sessions = f.sessions();
        assert_eq!(sessions.len(), 4);
        assert_eq!(
            sessions
                .iter()
                .filter(|s| s.session_id == late.session_id)
                .count(),
            1
        );
        assert_eq!(f.events().len(), 4);
        assert!(!f.dir.path().join(PENDING).exists());
    }

    #[test]
    fn open_sessions_are_carried_then_ended_by_recovery() {
        let f = Fixture::new();
        let (open, _) = f.session(false);
        f.session(true);
        let r = f.roller.roll(RollMode::Normal).expect("roll");
        assert_eq!((r.sessions, r.events, r.carried), (1, 1, 2));
        assert!(f.sessions().iter().all(|s| s.session_id != open.session_id));
        // The daemon dies; the next start finds the carried records.
        let r = f.roller.roll(RollMode::Recovery).expect("recovery");
        assert_eq!((r.sessions, r.events), (1, 1));
        let s = f
            .sessions()
            .into_iter()
            .find(|s| s.session_id == open.session_id)
            .expect("rolled once ended");
        assert!(s
            .end_reason
            .as_deref()
            .unwrap_or_default()
            .starts_with("interrupted"));
        assert!(s.ended_at.is_some());
        let e = f
            .events()
            .into_iter()
            .find(|e| e.session_id == open.session_id)
            .expect("its command");
        assert!(e
            .error
            .as_deref()
            .unwrap_or_default()
            .starts_with("interrupted"));
        assert_eq!(f.sessions().len(), 2);
    }

    #[test]
    fn staging_leftovers_are_removed_on_recovery() {
        let f = Fixture::new();
        let staging = f.dir.path().join("audit").join(parquet::STAGING_DIR);
        fs::create_dir_all(&staging).expect("staging");
        fs::write(staging.join("x.parquet.tmp"), b"half a file").expect("tmp");
        f.roller.roll(RollMode::Recovery).expect("recovery");
        assert!(!staging.join("x.parquet.tmp").exists());
    }
}
