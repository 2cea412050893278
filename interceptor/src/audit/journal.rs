//! The write-ahead journal of the audit trail.
//!
//! A command's record is appended here before the command is forwarded
//! upstream, so the journal is the only copy of an event until the roller has
//! turned it into Parquet. It stores opaque byte records; what they mean is
//! the recorder's business.
//!
//! # Layout
//!
//! The directory holds segment files `seg-<20-digit seq>.log`. Exactly one,
//! the active segment, is written; every segment with a lower seq is sealed
//! and never written again. A new journal (every daemon start) opens a fresh
//! segment instead of appending to the last one, because that one's tail may
//! be torn by the crash that ended the previous daemon.
//!
//! Each record is one frame, little endian:
//!
//! ```text
//! magic u32 = 0x4A524E31 ("JRN1") | len u32 | crc32(len bytes ++ payload) u32 | payload
//! ```
//!
//! # Durability
//!
//! * [`Durability::Strict`]: `append` returns after the frame has been
//!   fdatasynced. Concurrent strict appenders share fdatasyncs (one leader
//!   syncs everything written so far; the others find their frame covered).
//! * [`Durability::Batched`]: `append` returns once the frame is in the page
//!   cache; a background thread fdatasyncs the active segment at most every
//!   100 ms while there is something new. A crash of the daemon alone loses
//!   nothing; a power loss loses at most the last ~100 ms.
//!
//! An fdatasync error retires the segment it happened on: after a failed
//! fsync Linux may have dropped the dirty pages and marked them clean, so a
//! later fsync could report success for data that never reached the disk.
//! Writing goes on in a new segment.
//!
//! # Recovery
//!
//! [`read_segment`] keeps every intact frame. A frame cut short by the end of
//! the file is a torn tail; a frame with a bad magic, an absurd length or a
//! CRC mismatch is corruption, skipped by scanning for the next frame that
//! starts with the magic and carries a valid CRC. A flipped byte thus costs
//! only the record it hits.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

/// First four bytes of every frame ("JRN1" read as a big-endian word).
pub const MAGIC: u32 = 0x4A52_4E31;
/// The largest payload one frame may carry. Anything bigger is a bug in the
/// encoder, and refusing it keeps a corrupted length field from making the
/// reader trust gigabytes of garbage.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

const HEADER_LEN: usize = 12;
/// Batched mode: the longest a written record waits for its fdatasync.
const GROUP_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// The frame buffer is reused across appends; one huge record should not pin
/// megabytes for the life of the daemon.
const FRAME_BUF_KEEP: usize = 1024 * 1024;

/// When an appended record is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// In the page cache on return; fdatasynced by a background thread at
    /// most 100 ms later.
    Batched,
    /// fdatasynced before `append` returns.
    Strict,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("the audit journal {} is in use by another process (pid in its lock file): two daemons must not share a daemon.state_dir; stop the other one or give this one its own", .path.display())]
    Locked { path: PathBuf },
    #[error("cannot lock the audit journal {}: {source}", .path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("cannot create the audit journal directory {}: {source}; make sure daemon.state_dir is on a writable filesystem", .path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot list the audit journal directory {}: {source}; check its permissions", .path.display())]
    ListDir { path: PathBuf, source: io::Error },
    #[error("cannot create the audit journal segment {}: {source}; free space or inodes on that filesystem (the next append tries again)", .path.display())]
    CreateSegment { path: PathBuf, source: io::Error },
    #[error("cannot fsync the audit journal directory {}: {source}; the disk may be failing (see dmesg)", .path.display())]
    SyncDir { path: PathBuf, source: io::Error },
    #[error("cannot write to the audit journal segment {}: {source}; the record was not journaled: free space on that filesystem (the next append tries again)", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot fdatasync the audit journal segment {}: {source}; records written since its last sync may not be on disk, check the disk (see dmesg); appends continue in a new segment", .path.display())]
    Sync { path: PathBuf, source: io::Error },
    #[error("cannot read the audit journal segment {}: {source}; check its permissions", .path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot remove the sealed audit journal segment {}: {source}; check the permissions of its directory", .path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("an audit journal record of {len} bytes exceeds the {MAX_PAYLOAD}-byte limit; the event encoder must truncate oversized fields")]
    TooLarge { len: usize },
    #[error("the audit journal directory {} has used up segment numbers; move its segments elsewhere and restart", .path.display())]
    SequenceExhausted { path: PathBuf },
    #[error("cannot start the audit journal fsync thread: {source}")]
    Spawn { source: io::Error },
}

/// What recovery found wrong in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DamageKind {
    /// The segment ends inside a frame (a write cut short by a crash or a
    /// full disk). The partial frame is dropped.
    TornTail { bytes: u64 },
    /// Bytes that are not a valid frame, skipped up to the next valid one
    /// (or to the end of the segment).
    Corrupt { skipped_bytes: u64 },
}

#[derive(Debug, Clone)]
pub struct Damage {
    pub segment: PathBuf,
    /// Where the damaged bytes begin.
    pub offset: u64,
    pub kind: DamageKind,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DamageKind::TornTail { bytes } => write!(
                f,
                "{}: torn tail at offset {} ({bytes} bytes dropped)",
                self.segment.display(),
                self.offset
            ),
            DamageKind::Corrupt { skipped_bytes } => write!(
                f,
                "{}: corrupt data at offset {} ({skipped_bytes} bytes skipped)",
                self.segment.display(),
                self.offset
            ),
        }
    }
}

/// One sealed segment, decoded.
#[derive(Debug)]
pub struct SegmentRead {
    pub seq: u64,
    /// The whole segment as read; records are slices of it, so a roll reads
    /// a segment with one allocation however many records it holds.
    data: Vec<u8>,
    spans: Vec<std::ops::Range<usize>>,
    pub damage: Vec<Damage>,
}

impl SegmentRead {
    /// The intact records, in order.
    pub fn records(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.spans.iter().map(|r| &self.data[r.clone()])
    }

    #[cfg(test)]
    fn owned(&self) -> Vec<Vec<u8>> {
        self.records().map(<[u8]>::to_vec).collect()
    }
}

/// For `interceptor status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JournalStats {
    /// Segment files in the journal directory (sealed and active).
    pub segments: usize,
    /// Their total size.
    pub bytes: u64,
    /// Records appended since open.
    pub appended: u64,
    /// Appends that returned an error since open.
    pub append_errors: u64,
    /// fdatasyncs that failed since open (each retired its segment).
    pub sync_errors: u64,
}

/// The journal of one daemon. `append` is safe to call from many threads at
/// once (share the journal in an `Arc`); it blocks only for one write, plus
/// an fdatasync in strict mode.
pub struct Journal {
    shared: Arc<Shared>,
    fsync_thread: Option<JoinHandle<()>>,
    /// Holds an exclusive flock on `dir/lock` for the journal's lifetime; the
    /// kernel drops it when the process dies, so a restart after kill -9
    /// takes over at once.
    _lock: File,
}

/// What the appenders and the fsync thread share.
struct Shared {
    dir: PathBuf,
    durability: Durability,
    active: Mutex<Active>,
    /// Batched: something was written since the fsync thread last looked.
    dirty: AtomicBool,
    stop: Mutex<bool>,
    wake: Condvar,
    appended: AtomicU64,
    append_errors: AtomicU64,
    sync_errors: AtomicU64,
    /// fdatasyncs issued, so tests can watch group commit happen.
    syncs: AtomicU64,
}

struct Active {
    /// Seq of the active segment, or of the one the next append creates
    /// when `segment` is `None`. Every segment below it is sealed.
    seq: u64,
    /// `None` after the segment was retired (failed truncate or fdatasync)
    /// or when creating its successor failed; the next append creates it.
    segment: Option<Arc<Segment>>,
    /// Reused frame buffer, so an append does not allocate.
    frame: Vec<u8>,
}

struct Segment {
    path: PathBuf,
    file: File,
    /// Bytes of whole frames in the file. Only changed under the `Active`
    /// lock; read without it by syncers.
    written: AtomicU64,
    /// Bytes known to be on disk. Holding this lock while fdatasyncing makes
    /// concurrent syncers queue behind one leader and then find their frame
    /// already covered instead of issuing an fdatasync each.
    synced: Mutex<u64>,
    /// An fdatasync failed: nothing in this segment can be trusted to reach
    /// the disk any more (see the module docs).
    failed: AtomicBool,
}

impl Segment {
    /// Makes sure the first `end` bytes are on disk.
    fn sync_to(&self, end: u64, shared: &Shared) -> Result<(), JournalError> {
        let mut synced = lock(&self.synced);
        if *synced >= end {
            return Ok(());
        }
        if self.failed.load(Ordering::Acquire) {
            return Err(JournalError::Sync {
                path: self.path.clone(),
                source: io::Error::other("an earlier fdatasync of this segment failed"),
            });
        }
        // Everything written so far rides along, for whoever queues behind us.
        let target = self.written.load(Ordering::Acquire);
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        match self.file.sync_data() {
            Ok(()) => {
                *synced = (*synced).max(target);
                Ok(())
            }
            Err(source) => {
                self.failed.store(true, Ordering::Release);
                shared.sync_errors.fetch_add(1, Ordering::Relaxed);
                Err(JournalError::Sync {
                    path: self.path.clone(),
                    source,
                })
            }
        }
    }
}

impl Journal {
    /// Creates `dir` if needed and opens a new active segment numbered one
    /// above the highest existing one. Existing segments are left as they
    /// are (their tail may be torn) and become readable as sealed segments.
    pub fn open(dir: &Path, durability: Durability) -> Result<Journal, JournalError> {
        // Audit records name processes, users and statements: owner only.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| JournalError::CreateDir {
                path: dir.to_path_buf(),
                source,
            })?;
        let lock = lock_dir(dir)?;
        let highest = list_segments(dir)?.last().map_or(0, |(seq, _)| *seq);
        let mut seq = highest
            .checked_add(1)
            .ok_or_else(|| JournalError::SequenceExhausted {
                path: dir.to_path_buf(),
            })?;
        let segment = create_segment(dir, &mut seq)?;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            durability,
            active: Mutex::new(Active {
                seq,
                segment: Some(segment),
                frame: Vec::with_capacity(4096),
            }),
            dirty: AtomicBool::new(false),
            stop: Mutex::new(false),
            wake: Condvar::new(),
            appended: AtomicU64::new(0),
            append_errors: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
        });
        let fsync_thread = match durability {
            Durability::Strict => None,
            Durability::Batched => {
                let shared = Arc::clone(&shared);
                let handle = std::thread::Builder::new()
                    .name("journal-fsync".into())
                    .spawn(move || group_commit(&shared))
                    .map_err(|source| JournalError::Spawn { source })?;
                Some(handle)
            }
        };
        Ok(Journal {
            shared,
            fsync_thread,
            _lock: lock,
        })
    }

    /// Appends one record with a single write of the whole frame.
    ///
    /// On a write error (full disk, I/O error) the segment is cut back to its
    /// last whole frame, so no torn frame sits in the middle of a segment,
    /// and the error is returned; later appends try again. If even the cut
    /// fails, the segment is retired and the next append starts a new one.
    pub fn append(&self, payload: &[u8]) -> Result<(), JournalError> {
        self.append_all(&[payload])
    }

    /// Appends several records with one write: all of them are in the
    /// journal, or none (a failed write is cut back to the last whole
    /// record before them). What a pipelining handler calls to journal a
    /// batch of commands before forwarding it.
    pub fn append_all(&self, payloads: &[&[u8]]) -> Result<(), JournalError> {
        let shared = &*self.shared;
        let result = self.append_frames(payloads);
        match result {
            Ok(()) => shared
                .appended
                .fetch_add(payloads.len() as u64, Ordering::Relaxed),
            Err(_) => shared.append_errors.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    fn append_frames(&self, payloads: &[&[u8]]) -> Result<(), JournalError> {
        let shared = &*self.shared;
        // The CRCs need no shared state: compute them before taking the lock.
        let mut headers = Vec::with_capacity(payloads.len());
        for payload in payloads {
            let too_large = || JournalError::TooLarge { len: payload.len() };
            let len = u32::try_from(payload.len()).map_err(|_| too_large())?;
            if payload.len() > MAX_PAYLOAD {
                return Err(too_large());
            }
            let mut crc = crc32fast::Hasher::new();
            crc.update(&len.to_le_bytes());
            crc.update(payload);
            headers.push((len, crc.finalize()));
        }
        if payloads.is_empty() {
            return Ok(());
        }

        let strict_sync = {
            let mut guard = lock(&shared.active);
            let Active {
                seq,
                segment,
                frame,
            } = &mut *guard;
            if segment
                .as_ref()
                .is_some_and(|s| s.failed.load(Ordering::Acquire))
            {
                retire(seq, segment, shared);
            }
            let seg = match segment {
                Some(seg) => seg,
                None => segment.insert(create_segment(&shared.dir, seq)?),
            };
            frame.clear();
            for (payload, (len, crc)) in payloads.iter().zip(&headers) {
                frame.extend_from_slice(&MAGIC.to_le_bytes());
                frame.extend_from_slice(&len.to_le_bytes());
                frame.extend_from_slice(&crc.to_le_bytes());
                frame.extend_from_slice(payload);
            }
            let start = seg.written.load(Ordering::Relaxed);
            // Positional write: the file offset never matters, even after a
            // failed write moved it.
            if let Err(source) = seg.file.write_all_at(frame, start) {
                let path = seg.path.clone();
                if let Err(e) = seg.file.set_len(start) {
                    tracing::error!(
                        segment = %path.display(),
                        error = %e,
                        "cannot cut a failed audit journal write back to the last whole record: \
                         retiring the segment, the next record starts a new one"
                    );
                    retire(seq, segment, shared);
                }
                if frame.capacity() > FRAME_BUF_KEEP {
                    *frame = Vec::new();
                }
                return Err(JournalError::Write { path, source });
            }
            let end = start + frame.len() as u64;
            seg.written.store(end, Ordering::Release);
            let strict_sync = match shared.durability {
                Durability::Strict => Some((Arc::clone(seg), end)),
                Durability::Batched => None,
            };
            if frame.capacity() > FRAME_BUF_KEEP {
                *frame = Vec::new();
            }
            strict_sync
        };

        match strict_sync {
            // Outside the append lock: other appenders keep writing while we
            // wait for the disk, and the fdatasync covers them too.
            Some((seg, end)) => seg.sync_to(end, shared),
            None => {
                // Checking first keeps the flag's cache line shared between
                // appender threads instead of bouncing on every append.
                if !shared.dirty.load(Ordering::Relaxed) {
                    shared.dirty.store(true, Ordering::Release);
                }
                Ok(())
            }
        }
    }

    /// Seals the active segment (fdatasynced) and opens the next one.
    /// Returns the seq of the newest sealed segment: every segment with seq
    /// <= that value is sealed and never written again. An active segment
    /// with nothing in it is left active (no point sealing empty files on an
    /// idle host), so two rotations without appends in between return the
    /// same value, and a fresh journal returns the highest pre-existing seq
    /// (0 if there was none).
    pub fn rotate(&self) -> Result<u64, JournalError> {
        let shared = &*self.shared;
        let mut guard = lock(&shared.active);
        let active = &mut *guard;
        let Some(seg) = active.segment.clone() else {
            return Ok(active.seq.saturating_sub(1));
        };
        let written = seg.written.load(Ordering::Acquire);
        if written == 0 && !seg.failed.load(Ordering::Acquire) {
            return Ok(active.seq.saturating_sub(1));
        }
        let sealed = active.seq;
        // Under the lock, so no append lands in the segment after its sync.
        let synced = seg.sync_to(written, shared);
        active.segment = None;
        active.seq = active.seq.saturating_add(1);
        synced?;
        match create_segment(&shared.dir, &mut active.seq) {
            Ok(next) => active.segment = Some(next),
            // Sealing worked; the next append tries to create the segment.
            Err(e) => tracing::warn!(error = %e, "cannot open the next audit journal segment yet"),
        }
        Ok(sealed)
    }

    /// Sealed segments with seq <= `upto`, in seq order, each decoded with
    /// recovery. Never returns the active segment.
    pub fn read_sealed(&self, upto: u64) -> Result<Vec<SegmentRead>, JournalError> {
        let limit = upto.min(self.newest_sealed());
        let mut out = Vec::new();
        for (seq, path) in list_segments(&self.shared.dir)? {
            if seq > limit {
                break;
            }
            match read_segment_spans(&path, seq) {
                Ok(seg) => out.push(seg),
                // Removed since we listed it (a concurrent remove_sealed).
                Err(JournalError::Read { source, .. })
                    if source.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Deletes sealed segments with seq <= `upto`, then fsyncs the directory
    /// so the deletions survive a crash. Returns how many were deleted.
    pub fn remove_sealed(&self, upto: u64) -> Result<usize, JournalError> {
        let limit = upto.min(self.newest_sealed());
        let mut removed = 0;
        for (seq, path) in list_segments(&self.shared.dir)? {
            if seq > limit {
                break;
            }
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(JournalError::Remove { path, source }),
            }
        }
        if removed > 0 {
            sync_dir(&self.shared.dir)?;
        }
        Ok(removed)
    }

    /// fdatasyncs the active segment now (shutdown, tests).
    pub fn sync(&self) -> Result<(), JournalError> {
        let shared = &*self.shared;
        // Cleared before the sync: anything written after this point sets it
        // again and gets the next background sync.
        shared.dirty.store(false, Ordering::Release);
        let seg = lock(&shared.active).segment.clone();
        match seg {
            Some(seg) => seg.sync_to(seg.written.load(Ordering::Acquire), shared),
            None => Ok(()),
        }
    }

    /// Segment files and bytes in the journal directory, and counters since
    /// open. Lists the directory: meant for status and metrics, not hot paths.
    pub fn stats(&self) -> JournalStats {
        let shared = &*self.shared;
        let mut stats = JournalStats {
            appended: shared.appended.load(Ordering::Relaxed),
            append_errors: shared.append_errors.load(Ordering::Relaxed),
            sync_errors: shared.sync_errors.load(Ordering::Relaxed),
            ..JournalStats::default()
        };
        match list_segments(&shared.dir) {
            Ok(segments) => {
                for (_, path) in segments {
                    // A segment removed since the listing simply isn't counted.
                    if let Ok(meta) = fs::metadata(&path) {
                        stats.segments += 1;
                        stats.bytes += meta.len();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "journal stats without segment sizes"),
        }
        stats
    }

    fn newest_sealed(&self) -> u64 {
        lock(&self.shared.active).seq.saturating_sub(1)
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        *lock(&self.shared.stop) = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.fsync_thread.take() {
            // An Err means the thread panicked; the final sync below still runs.
            let _ = thread.join();
        }
        if let Err(e) = self.sync() {
            tracing::error!(error = %e, "final sync of the audit journal failed");
        }
    }
}

/// Batched mode: fdatasync the active segment at most every
/// [`GROUP_COMMIT_INTERVAL`] while appends keep coming. Never holds the
/// append lock while syncing.
fn group_commit(shared: &Shared) {
    loop {
        {
            let stop = lock(&shared.stop);
            let (stop, _) = shared
                .wake
                .wait_timeout_while(stop, GROUP_COMMIT_INTERVAL, |stop| !*stop)
                .unwrap_or_else(PoisonError::into_inner);
            if *stop {
                return;
            }
        }
        if !shared.dirty.swap(false, Ordering::AcqRel) {
            continue;
        }
        let seg = lock(&shared.active).segment.clone();
        if let Some(seg) = seg {
            if let Err(e) = seg.sync_to(seg.written.load(Ordering::Acquire), shared) {
                tracing::error!(error = %e, "background fdatasync of the audit journal failed");
            }
        }
    }
}

/// Takes the active segment out of service; the next append creates the
/// segment after it. Records already in it stay readable as a sealed segment.
fn retire(seq: &mut u64, segment: &mut Option<Arc<Segment>>, shared: &Shared) {
    if let Some(seg) = segment.take() {
        // Batched records in it were acknowledged: give them their sync
        // (unless a failed sync is why it is being retired).
        if !seg.failed.load(Ordering::Acquire) {
            if let Err(e) = seg.sync_to(seg.written.load(Ordering::Acquire), shared) {
                tracing::error!(error = %e, "retired audit journal segment could not be synced");
            }
        }
        *seq = seq.saturating_add(1);
    }
}

/// Creates segment `seq` (or the first free one above it, updating `seq`).
fn create_segment(dir: &Path, seq: &mut u64) -> Result<Arc<Segment>, JournalError> {
    loop {
        let path = segment_path(dir, *seq);
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path);
        match opened {
            Ok(file) => {
                // Without this a crash could lose the file's name, and with it
                // every record fdatasynced into it.
                if let Err(e) = sync_dir(dir) {
                    // Don't reuse the name: the empty file may already exist
                    // on disk, and an empty segment reads back fine.
                    *seq = seq.saturating_add(1);
                    return Err(e);
                }
                return Ok(Arc::new(Segment {
                    path,
                    file,
                    written: AtomicU64::new(0),
                    synced: Mutex::new(0),
                    failed: AtomicBool::new(false),
                }));
            }
            // Only another writer in the same directory gets here; never share
            // a segment with it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                *seq = seq
                    .checked_add(1)
                    .ok_or_else(|| JournalError::SequenceExhausted {
                        path: dir.to_path_buf(),
                    })?;
            }
            Err(source) => return Err(JournalError::CreateSegment { path, source }),
        }
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:020}.log"))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segment files in `dir`, by seq. Other files are ignored.
/// Takes the journal's exclusive lock (`dir/lock`, holding the owner's pid).
fn lock_dir(dir: &Path) -> Result<File, JournalError> {
    use std::io::Write as _;
    use std::os::fd::AsRawFd;
    let path = dir.join("lock");
    let err = |source| JournalError::Lock {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            JournalError::Locked {
                path: dir.to_path_buf(),
            }
        } else {
            err(e)
        });
    }
    file.set_len(0)
        .and_then(|_| write!(file, "{}", std::process::id()))
        .map_err(err)?;
    Ok(file)
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let list_err = |source| JournalError::ListDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            segments.push((seq, entry.path()));
        }
    }
    segments.sort_unstable_by_key(|(seq, _)| *seq);
    Ok(segments)
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| JournalError::SyncDir {
            path: dir.to_path_buf(),
            source,
        })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these locks; if something did, the state
    // behind them is still consistent, and the audit trail must keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads one segment file and decodes it with recovery (see the module docs).
pub fn read_segment(path: &Path) -> Result<(Vec<Vec<u8>>, Vec<Damage>), JournalError> {
    let seg = read_segment_spans(path, 0)?;
    let records = seg.records().map(<[u8]>::to_vec).collect();
    Ok((records, seg.damage))
}

/// [`read_segment`] without copying records: one buffer, and the span of
/// each intact record in it.
fn read_segment_spans(path: &Path, seq: u64) -> Result<SegmentRead, JournalError> {
    let data = fs::read(path).map_err(|source| JournalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (spans, damage) = decode(&data);
    let damage = damage
        .into_iter()
        .map(|(offset, kind)| Damage {
            segment: path.to_path_buf(),
            offset,
            kind,
        })
        .collect();
    Ok(SegmentRead {
        seq,
        data,
        spans,
        damage,
    })
}

/// Decodes a whole segment: the intact records, and (offset, kind) for each
/// damaged stretch.
fn decode(buf: &[u8]) -> (Vec<std::ops::Range<usize>>, Vec<(u64, DamageKind)>) {
    let mut records = Vec::new();
    let mut damage = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        if let Some(payload) = frame_at(buf, pos) {
            records.push(pos + HEADER_LEN..pos + HEADER_LEN + payload.len());
            pos += HEADER_LEN + payload.len();
            continue;
        }
        // Even a frame that seems to run past the end is first treated as
        // possible corruption: a flipped bit in a length field must not
        // cost every record after it.
        match next_frame(buf, pos + 1) {
            Some(next) => {
                damage.push((
                    pos as u64,
                    DamageKind::Corrupt {
                        skipped_bytes: (next - pos) as u64,
                    },
                ));
                pos = next;
            }
            None => {
                let rest = &buf[pos..];
                let bytes = rest.len() as u64;
                let kind = if is_torn_tail(rest) {
                    DamageKind::TornTail { bytes }
                } else {
                    DamageKind::Corrupt {
                        skipped_bytes: bytes,
                    }
                };
                damage.push((pos as u64, kind));
                break;
            }
        }
    }
    (records, damage)
}

/// The payload of the valid frame starting at `pos`, if there is one.
fn frame_at(buf: &[u8], pos: usize) -> Option<&[u8]> {
    let header = buf.get(pos..pos.checked_add(HEADER_LEN)?)?;
    let (magic, len, crc) = parse_header(header)?;
    if magic != MAGIC || len > MAX_PAYLOAD {
        return None;
    }
    let start = pos + HEADER_LEN;
    let payload = buf.get(start..start.checked_add(len)?)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&header[4..8]);
    hasher.update(payload);
    (hasher.finalize() == crc).then_some(payload)
}

fn parse_header(header: &[u8]) -> Option<(u32, usize, u32)> {
    let word = |at: usize| -> Option<u32> {
        let bytes: [u8; 4] = header.get(at..at + 4)?.try_into().ok()?;
        Some(u32::from_le_bytes(bytes))
    };
    Some((word(0)?, usize::try_from(word(4)?).ok()?, word(8)?))
}

/// Offset of the first valid frame at or after `from`.
fn next_frame(buf: &[u8], from: usize) -> Option<usize> {
    let magic = MAGIC.to_le_bytes();
    let mut pos = from;
    while pos + HEADER_LEN <= buf.len() {
        // Cheap magic test first; the CRC check only runs on candidates.
        let found = buf.get(pos..)?.windows(4).position(|w| w == magic)?;
        pos += found;
        if frame_at(buf, pos).is_some() {
            return Some(pos);
        }
        pos += 1;
    }
    None
}

/// Whether the bytes after the last good frame look like a frame whose
/// write was cut short, as opposed to garbage. A run of zeros also counts:
/// that is what a crash leaves when the file size reached the disk before
/// the data did.
fn is_torn_tail(rest: &[u8]) -> bool {
    if rest.iter().all(|&b| b == 0) {
        return true;
    }
    let magic = MAGIC.to_le_bytes();
    if rest.len() < magic.len() {
        return magic.starts_with(rest);
    }
    if rest[..4] != magic {
        return false;
    }
    match rest.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()) {
        None => true,
        Some(len) => {
            let len = u32::from_le_bytes(len) as usize;
            len <= MAX_PAYLOAD && HEADER_LEN + len > rest.len()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::process::Command;
    use std::time::Instant;

    #[test]
    fn a_second_journal_on_the_same_directory_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = Journal::open(tmp.path(), Durability::Batched).expect("open");
        let second = Journal::open(tmp.path(), Durability::Batched);
        assert!(
            matches!(second, Err(JournalError::Locked { .. })),
            "the second open must be refused"
        );
        drop(first);
        Journal::open(tmp.path(), Durability::Batched).expect("free again once the first is gone");
    }

    /// [`decode`] with each record copied out, for comparisons.
    fn decode_owned(buf: &[u8]) -> (Vec<Vec<u8>>, Vec<(u64, DamageKind)>) {
        let (spans, damage) = decode(buf);
        (spans.into_iter().map(|r| buf[r].to_vec()).collect(), damage)
    }

    fn frame_len(payload: &[u8]) -> u64 {
        (HEADER_LEN + payload.len()) as u64
    }

    /// In-memory frame, as `append` writes it.
    fn encode(payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_le_bytes();
        let mut crc = crc32fast::Hasher::new();
        crc.update(&len);
        crc.update(payload);
        let mut out = MAGIC.to_le_bytes().to_vec();
        out.extend_from_slice(&len);
        out.extend_from_slice(&crc.finalize().to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn records(prefix: &str, n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("{prefix}-{i}").into_bytes())
            .collect()
    }

    fn append_all(j: &Journal, records: &[Vec<u8>]) {
        for r in records {
            j.append(r).expect("append");
        }
    }

    /// Deterministic xorshift64*, so every failure reproduces.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    #[test]
    fn round_trip_across_segments() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("journal");
        let j = Journal::open(&dir, Durability::Batched).expect("open");
        let (a, b, c) = (records("a", 5), records("b", 3), records("c", 2));
        append_all(&j, &a);
        assert_eq!(j.rotate().expect("rotate"), 1);
        // A batch is framed exactly like the same records one by one.
        let batch: Vec<&[u8]> = b.iter().map(Vec::as_slice).collect();
        j.append_all(&batch).expect("append a batch");
        assert_eq!(j.rotate().expect("rotate"), 2);
        // Nothing new: the empty active segment is not sealed.
        assert_eq!(j.rotate().expect("rotate"), 2);
        append_all(&j, &c);

        let sealed = j.read_sealed(u64::MAX).expect("read");
        assert_eq!(sealed.len(), 2, "the active segment is never returned");
        assert_eq!((sealed[0].seq, &sealed[0].owned()), (1, &a));
        assert_eq!((sealed[1].seq, &sealed[1].owned()), (2, &b));
        assert!(sealed.iter().all(|s| s.damage.is_empty()));
        let first = j.read_sealed(1).expect("read");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].seq, 1);

        assert_eq!(j.rotate().expect("rotate"), 3);
        let last = j.read_sealed(3).expect("read");
        assert_eq!(last.last().map(|s| s.owned()), Some(c.clone()));

        let stats = j.stats();
        assert_eq!(stats.appended, 10);
        assert_eq!(stats.append_errors, 0);
        assert_eq!(stats.segments, 4, "three sealed and the empty active one");
        let frames: u64 = a.iter().chain(&b).chain(&c).map(|r| frame_len(r)).sum();
        assert_eq!(stats.bytes, frames);
    }

    #[test]
    fn strict_and_batched_are_readable_after_sync() {
        for durability in [Durability::Strict, Durability::Batched] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let j = Journal::open(tmp.path(), durability).expect("open");
            let recs = records("r", 20);
            append_all(&j, &recs);
            j.sync().expect("sync");
            let (got, damage) = read_segment(&segment_path(tmp.path(), 1)).expect("read");
            assert_eq!(got, recs, "{durability:?}");
            assert!(damage.is_empty());
            if durability == Durability::Strict {
                assert!(j.shared.syncs.load(Ordering::Relaxed) >= 20);
            }
        }
    }

    #[test]
    fn batched_group_commit_syncs_in_the_background() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path(), Durability::Batched).expect("open");
        append_all(&j, &records("r", 100));
        assert_eq!(
            j.shared.syncs.load(Ordering::Relaxed),
            0,
            "append never syncs"
        );
        std::thread::sleep(Duration::from_millis(250));
        let synced = j.shared.syncs.load(Ordering::Relaxed);
        assert!(
            (1..=2).contains(&synced),
            "one fdatasync per group, got {synced}"
        );
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            j.shared.syncs.load(Ordering::Relaxed),
            synced,
            "idle: no syncs"
        );
    }

    #[test]
    fn torn_tail_keeps_the_records_before_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path(), Durability::Batched).expect("open");
        let recs = records("torn", 3);
        append_all(&j, &recs);
        j.rotate().expect("rotate");
        let path = segment_path(tmp.path(), 1);
        let full = fs::metadata(&path).expect("stat").len();
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.set_len(full - 5).expect("truncate");

        let sealed = j.read_sealed(1).expect("read");
        assert_eq!(sealed[0].owned(), recs[..2]);
        let damage = &sealed[0].damage;
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].offset, frame_len(&recs[0]) + frame_len(&recs[1]));
        assert_eq!(
            damage[0].kind,
            DamageKind::TornTail {
                bytes: frame_len(&recs[2]) - 5
            }
        );
        let shown = damage[0].to_string();
        assert!(
            shown.contains("seg-00000000000000000001.log: torn tail at offset"),
            "{shown}"
        );
    }

    /// Writes three records to a sealed segment, lets `damage` alter the
    /// bytes of the middle frame, and returns what recovery finds.
    fn damage_middle(damage: impl Fn(&mut [u8])) -> (Vec<Vec<u8>>, Vec<Vec<u8>>, Vec<Damage>) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path(), Durability::Strict).expect("open");
        let recs = vec![b"first".to_vec(), vec![7u8; 300], b"last".to_vec()];
        append_all(&j, &recs);
        j.rotate().expect("rotate");
        let path = segment_path(tmp.path(), 1);
        let mut bytes = fs::read(&path).expect("read");
        let middle = frame_len(&recs[0]) as usize;
        damage(&mut bytes[middle..middle + frame_len(&recs[1]) as usize]);
        fs::write(&path, &bytes).expect("write");
        let (got, found) = read_segment(&path).expect("read");
        (recs, got, found)
    }

    #[test]
    fn flipped_payload_byte_costs_only_its_record() {
        let (recs, got, damage) = damage_middle(|f| f[HEADER_LEN + 100] ^= 0x40);
        assert_eq!(got, vec![recs[0].clone(), recs[2].clone()]);
        assert_eq!(damage.len(), 1);
        assert_eq!(damage[0].offset, frame_len(&recs[0]));
        assert_eq!(
            damage[0].kind,
            DamageKind::Corrupt {
                skipped_bytes: frame_len(&recs[1])
            }
        );
        assert!(damage[0].to_string().contains("corrupt"));
    }

    #[test]
    fn flipped_length_byte_costs_only_its_record() {
        // Low byte: a plausible length and a CRC mismatch. High bytes: past
        // the end of the file, or past the 16 MiB limit.
        for (at, mask) in [(4, 0x01), (5, 0x10), (6, 0x02), (7, 0x80)] {
            let (recs, got, damage) = damage_middle(|f| f[at] ^= mask);
            assert_eq!(got, vec![recs[0].clone(), recs[2].clone()], "byte {at}");
            assert_eq!(damage.len(), 1);
            assert!(matches!(damage[0].kind, DamageKind::Corrupt { .. }));
        }
        // Same for the magic and the CRC.
        for at in [0, 3, 8, 11] {
            let (recs, got, _) = damage_middle(|f| f[at] ^= 0xFF);
            assert_eq!(got, vec![recs[0].clone(), recs[2].clone()], "byte {at}");
        }
    }

    #[test]
    fn reopen_starts_a_new_segment_and_keeps_the_old_ones() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let first = records("before", 4);
        {
            let j = Journal::open(tmp.path(), Durability::Batched).expect("open");
            append_all(&j, &first);
        }
        // A crash mid-write left half a frame behind.
        let old = segment_path(tmp.path(), 1);
        let mut bytes = fs::read(&old).expect("read");
        bytes.extend_from_slice(&encode(b"half written")[..9]);
        fs::write(&old, &bytes).expect("write");
        fs::write(tmp.path().join("notes.txt"), b"not a segment").expect("write");

        let j = Journal::open(tmp.path(), Durability::Batched).expect("reopen");
        j.append(b"after").expect("append");
        assert_eq!(
            fs::read(&old).expect("read"),
            bytes,
            "old segment untouched"
        );
        assert_eq!(j.rotate().expect("rotate"), 2);
        let sealed = j.read_sealed(u64::MAX).expect("read");
        assert_eq!(sealed.len(), 2);
        assert_eq!(sealed[0].owned(), first);
        assert_eq!(sealed[0].damage[0].kind, DamageKind::TornTail { bytes: 9 });
        assert_eq!(sealed[1].owned(), vec![b"after".to_vec()]);
    }

    #[test]
    fn rotate_on_a_fresh_journal_seals_the_previous_daemons_segments() {
        let tmp = tempfile::tempdir().expect("tempdir");
        drop(Journal::open(tmp.path(), Durability::Strict).expect("open"));
        drop(Journal::open(tmp.path(), Durability::Strict).expect("open"));
        let j = Journal::open(tmp.path(), Durability::Strict).expect("open");
        assert_eq!(j.rotate().expect("rotate"), 2);
    }

    #[test]
    fn remove_sealed_never_touches_the_active_segment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path(), Durability::Batched).expect("open");
        for i in 0..3 {
            j.append(format!("{i}").as_bytes()).expect("append");
            j.rotate().expect("rotate");
        }
        j.append(b"active").expect("append");
        assert_eq!(j.remove_sealed(2).expect("remove"), 2);
        let left: Vec<u64> = j
            .read_sealed(u64::MAX)
            .expect("read")
            .iter()
            .map(|s| s.seq)
            .collect();
        assert_eq!(left, vec![3]);
        assert_eq!(j.remove_sealed(u64::MAX).expect("remove"), 1);
        assert_eq!(j.remove_sealed(u64::MAX).expect("remove"), 0);
        j.sync().expect("sync");
        let (active, _) = read_segment(&segment_path(tmp.path(), 4)).expect("active kept");
        assert_eq!(active, vec![b"active".to_vec()]);
    }

    #[test]
    fn oversized_record_is_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path(), Durability::Batched).expect("open");
        let big = vec![0u8; MAX_PAYLOAD + 1];
        let err = j.append(&big).expect_err("too large");
        assert!(matches!(err, JournalError::TooLarge { len } if len == MAX_PAYLOAD + 1));
        j.append(b"small").expect("append");
        let stats = j.stats();
        assert_eq!((stats.appended, stats.append_errors), (1, 1));
        j.sync().expect("sync");
        let (got, damage) = read_segment(&segment_path(tmp.path(), 1)).expect("read");
        assert_eq!((got, damage.len()), (vec![b"small".to_vec()], 0));
    }

    #[test]
    fn concurrent_appends_are_each_read_back_once() {
        const THREADS: u32 = 8;
        const PER_THREAD: u32 = 10_000;
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path(), Durability::Batched).expect("open");
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let j = &j;
                s.spawn(move || {
                    for i in 0..PER_THREAD {
                        let mut rec = [0u8; 40];
                        rec[..4].copy_from_slice(&t.to_le_bytes());
                        rec[4..8].copy_from_slice(&i.to_le_bytes());
                        j.append(&rec).expect("append");
                        if t == 0 && i == PER_THREAD / 2 {
                            j.rotate().expect("rotate");
                        }
                    }
                });
            }
        });
        j.rotate().expect("rotate");
        let mut seen = HashSet::new();
        for seg in j.read_sealed(u64::MAX).expect("read") {
            assert!(seg.damage.is_empty());
            for rec in seg.owned() {
                let key = (rec[..4].to_vec(), rec[4..8].to_vec());
                assert!(seen.insert(key), "record read twice");
            }
        }
        assert_eq!(seen.len(), (THREADS * PER_THREAD) as usize);
    }

    #[test]
    fn concurrent_strict_appenders_share_fdatasyncs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path(), Durability::Strict).expect("open");
        std::thread::scope(|s| {
            for t in 0..4u8 {
                let j = &j;
                s.spawn(move || {
                    for i in 0..50u8 {
                        j.append(&[t, i]).expect("append");
                    }
                });
            }
        });
        let syncs = j.shared.syncs.load(Ordering::Relaxed);
        assert!(
            (1..=200).contains(&syncs),
            "{syncs} fdatasyncs for 200 appends"
        );
        let (got, damage) = read_segment(&segment_path(tmp.path(), 1)).expect("read");
        assert_eq!((got.len(), damage.len()), (200, 0));
    }

    #[test]
    fn a_failed_fdatasync_retires_the_segment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(tmp.path(), Durability::Strict).expect("open");
        j.append(b"before").expect("append");
        // What an fdatasync error leaves behind (EIO cannot be provoked here).
        let seg = lock(&j.shared.active)
            .segment
            .clone()
            .expect("active segment");
        seg.failed.store(true, Ordering::Release);
        assert!(matches!(
            seg.sync_to(u64::MAX, &j.shared),
            Err(JournalError::Sync { .. })
        ));
        j.append(b"after").expect("append goes to a new segment");
        assert_eq!(j.rotate().expect("rotate"), 2);
        let sealed = j.read_sealed(u64::MAX).expect("read");
        assert_eq!(sealed[0].owned(), vec![b"before".to_vec()]);
        assert_eq!(sealed[1].owned(), vec![b"after".to_vec()]);
    }

    /// A tmpfs mounted for one test, unmounted when dropped.
    struct Tmpfs(PathBuf);
    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    fn mount_tmpfs(dir: &Path, size: &str) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }

    #[test]
    fn full_disk_leaves_no_torn_frame_and_recovers() {
        let tmp = tempfile::tempdir().expect("tempdir");
        // Needs root, like the rest of `cargo xtask test`: never skipped.
        let mount = mount_tmpfs(tmp.path(), "64k")
            .expect("mounting a 64 KiB tmpfs (run the tests as root)");
        let filler = mount.0.join("filler");
        fs::write(&filler, vec![1u8; 16 * 1024]).expect("filler");
        let dir = mount.0.join("journal");
        let j = Journal::open(&dir, Durability::Batched).expect("open");

        let mut ok = Vec::new();
        let err = loop {
            let rec = format!("{:0>300}", ok.len()).into_bytes();
            match j.append(&rec) {
                Ok(()) => ok.push(rec),
                Err(e) => break e,
            }
            assert!(ok.len() < 1000, "a 64 KiB filesystem never filled up");
        };
        let JournalError::Write { source, .. } = &err else {
            panic!("expected a write error, got {err}");
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOSPC), "{err}");
        assert!(
            err.to_string().contains("seg-00000000000000000001.log"),
            "{err}"
        );
        assert!(j.append(&[9u8; 300]).is_err(), "still full");
        assert_eq!(j.stats().append_errors, 2);

        let path = segment_path(&dir, 1);
        let (got, damage) = read_segment(&path).expect("read");
        assert!(damage.is_empty(), "{damage:?}");
        assert_eq!(got, ok);
        let frames: u64 = ok.iter().map(|r| frame_len(r)).sum();
        assert_eq!(fs::metadata(&path).expect("stat").len(), frames);

        fs::remove_file(&filler).expect("free space");
        j.append(b"space is back")
            .expect("append after space returned");
        j.sync().expect("sync");
        let (got, damage) = read_segment(&path).expect("read");
        assert!(damage.is_empty());
        assert_eq!(got.len(), ok.len() + 1);
        assert_eq!(got.last().map(Vec::as_slice), Some(&b"space is back"[..]));
        drop(j);
        drop(mount);
    }

    /// Every byte is a record frame or inside a damage report.
    fn assert_accounted(buf: &[u8], recs: &[Vec<u8>], damage: &[(u64, DamageKind)]) {
        let framed: u64 = recs.iter().map(|r| frame_len(r)).sum();
        let damaged: u64 = damage
            .iter()
            .map(|(_, k)| match k {
                DamageKind::TornTail { bytes } => *bytes,
                DamageKind::Corrupt { skipped_bytes } => *skipped_bytes,
            })
            .sum();
        assert_eq!(framed + damaged, buf.len() as u64);
    }

    #[test]
    fn recovery_never_panics_and_loses_only_what_is_hit() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);

        // Garbage, some of it made of frame-like pieces.
        for _ in 0..300 {
            let mut buf = Vec::new();
            while buf.len() < 600 {
                match rng.below(4) {
                    0 => buf.extend_from_slice(&MAGIC.to_le_bytes()),
                    1 => {
                        let n = rng.below(40);
                        buf.extend_from_slice(&encode(&rng.bytes(n)));
                    }
                    2 => buf.extend_from_slice(&(rng.below(64) as u32).to_le_bytes()),
                    _ => {
                        let n = rng.below(30);
                        buf.extend(rng.bytes(n));
                    }
                }
            }
            let (recs, damage) = decode_owned(&buf);
            assert_accounted(&buf, &recs, &damage);
        }

        // A valid segment; lengths include 0.
        let originals: Vec<Vec<u8>> = (0..12)
            .map(|_| {
                let n = rng.below(80);
                rng.bytes(n)
            })
            .collect();
        let mut seg = Vec::new();
        let mut bounds = vec![0];
        for r in &originals {
            seg.extend(encode(r));
            bounds.push(seg.len());
        }

        // Every truncation keeps each whole frame; a cut inside one is a torn tail.
        for cut in 0..=seg.len() {
            let (recs, damage) = decode_owned(&seg[..cut]);
            let whole = bounds.iter().filter(|&&b| b <= cut).count() - 1;
            assert_eq!(recs, originals[..whole], "cut at {cut}");
            let boundary = bounds[whole];
            if cut == boundary {
                assert!(damage.is_empty(), "cut at {cut}");
            } else {
                let torn = DamageKind::TornTail {
                    bytes: (cut - boundary) as u64,
                };
                assert_eq!(damage, vec![(boundary as u64, torn)], "cut at {cut}");
            }
        }

        // A flipped byte anywhere costs exactly the record it lands in.
        for _ in 0..2000 {
            let at = rng.below(seg.len());
            let mask = (rng.below(255) + 1) as u8;
            let mut bad = seg.clone();
            bad[at] ^= mask;
            let (recs, damage) = decode_owned(&bad);
            let hit = bounds.iter().filter(|&&b| b <= at).count() - 1;
            let mut expected = originals.clone();
            expected.remove(hit);
            assert_eq!(recs, expected, "byte {at} ^ {mask:#x}");
            assert_eq!(damage.len(), 1, "byte {at} ^ {mask:#x}");
            assert_eq!(damage[0].0, bounds[hit] as u64);
            assert_accounted(&bad, &recs, &damage);
        }
    }

    /// Not an assertion: prints the append latency for the record.
    #[test]
    fn append_latency() {
        let payload = [0x5Au8; 200];
        for (durability, n) in [(Durability::Batched, 50_000), (Durability::Strict, 200)] {
            let tmp = tempfile::tempdir().expect("tempdir");
            let j = Journal::open(tmp.path(), durability).expect("open");
            let started = Instant::now();
            for _ in 0..n {
                j.append(&payload).expect("append");
            }
            let per = started.elapsed() / n;
            eprintln!(
                "journal append ({durability:?}, 200-byte records, 1 thread): {per:?} per record"
            );
        }
    }
}
