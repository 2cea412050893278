//! The audit dataset on disk: schemas, layout and the two-phase writer.
//!
//! ```text
//! AUDIT/sessions/dt=YYYY-MM-DD/part-<uuidv7>.parquet   (dt = UTC day of started_at)
//! AUDIT/events/dt=YYYY-MM-DD/part-<uuidv7>.parquet     (dt = UTC day of ts)
//! AUDIT/.staging/<uuidv7>.parquet.tmp                   (being written; outside every glob)
//! ```
//!
//! `dt` is not a column inside the files: hive partitioning supplies it, and
//! DuckDB, pyarrow, Athena and Trino refuse or duplicate a column that is in
//! both. Every id and counter is Int64 because Athena and Trino have no
//! unsigned types.
//!
//! Writing is split so the roller can make a roll crash-safe: [`prepare_sessions`]
//! and [`prepare_events`] write complete, fsynced files into `.staging` on the
//! same filesystem; [`commit`] renames them into place and fsyncs the
//! directories. A crash before the rename leaves only staging garbage, which
//! [`clean_staging`] removes on start.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{self, BufWriter},
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use arrow_array::{
    builder::{BooleanBuilder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder},
    cast::AsArray,
    Array, ArrayRef, RecordBatch,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::{
    arrow::{arrow_reader::ParquetRecordBatchReaderBuilder, ArrowWriter, ProjectionMask},
    basic::{Compression, ZstdLevel},
    errors::ParquetError,
    file::properties::{EnabledStatistics, WriterProperties},
    schema::types::ColumnPath,
};

use super::model::{EventView, SessionView};

/// Where the session files live under the audit directory.
pub const SESSIONS_DIR: &str = "sessions";
/// Where the event files live under the audit directory.
pub const EVENTS_DIR: &str = "events";
/// Files being written; on the same filesystem as the dataset so the final
/// rename is atomic, and outside `sessions/` and `events/` so no glob sees them.
pub const STAGING_DIR: &str = ".staging";

/// zstd level 1. On 200k mixed events (`prepare_events_throughput`, release,
/// best of 3) level 1 wrote 1.0-1.2M events/s at 18.4 bytes/event and level 3
/// 0.8-1.1M events/s at 19.8 bytes/event: on pages this small level 3 is
/// slower and finds nothing more.
const ZSTD_LEVEL: i32 = 1;

/// Rows per record batch handed to the Parquet writer. Small enough that a
/// batch's records, its arrays and the pages encoded from them stay in the
/// CPU caches (64k-row batches were a third slower); row groups are larger.
const BATCH_ROWS: usize = 8192;

const US_PER_DAY: i64 = 86_400_000_000;

/// Why the audit dataset could not be written or read. Every message names
/// the file or directory and the operation.
#[derive(Debug, thiserror::Error)]
pub enum AuditIoError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("renaming {from} to {to}: {source}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("{op} {path}: {source}")]
    Parquet {
        op: &'static str,
        path: PathBuf,
        source: ParquetError,
    },
    #[error("{op} {path}: {source}")]
    Arrow {
        op: &'static str,
        path: PathBuf,
        source: arrow_schema::ArrowError,
    },
    #[error("reading {path}: {message}; the file is not an interceptor audit file or is damaged")]
    Format { path: PathBuf, message: String },
}

impl AuditIoError {
    /// The kind of the underlying I/O error (disk full, permission denied),
    /// for callers that react to it.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            AuditIoError::Io { source, .. } | AuditIoError::Rename { source, .. } => {
                Some(source.kind())
            }
            _ => None,
        }
    }

    fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> AuditIoError + 'a {
        move |source| AuditIoError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    /// Unwraps the I/O error the parquet crate boxes (a full disk must read
    /// "No space left on device", not "External: ...").
    pub(crate) fn parquet<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(ParquetError) -> AuditIoError + 'a {
        move |e| match e {
            ParquetError::External(inner) => match inner.downcast::<io::Error>() {
                Ok(source) => AuditIoError::Io {
                    op,
                    path: path.to_path_buf(),
                    source: *source,
                },
                Err(inner) => AuditIoError::Parquet {
                    op,
                    path: path.to_path_buf(),
                    source: ParquetError::External(inner),
                },
            },
            source => AuditIoError::Parquet {
                op,
                path: path.to_path_buf(),
                source,
            },
        }
    }

    fn arrow<'a>(
        op: &'static str,
        path: &'a Path,
    ) -> impl FnOnce(arrow_schema::ArrowError) -> AuditIoError + 'a {
        move |source| match source {
            arrow_schema::ArrowError::IoError(_, source) => AuditIoError::Io {
                op,
                path: path.to_path_buf(),
                source,
            },
            source => AuditIoError::Arrow {
                op,
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

// ---------------------------------------------------------------------------
// Schemas
// ---------------------------------------------------------------------------

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// The columns of `AUDIT/sessions`, in DESIGN.md order.
pub fn sessions_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use DataType::{Boolean, Int64, Utf8};
            Arc::new(Schema::new(vec![
                Field::new("session_id", Utf8, false),
                Field::new("host", Utf8, false),
                Field::new("started_at", ts_type(), false),
                Field::new("ended_at", ts_type(), true),
                Field::new("store", Utf8, false),
                Field::new("protocol", Utf8, false),
                Field::new("client_addr", Utf8, false),
                Field::new("original_dst", Utf8, false),
                Field::new("upstream_addr", Utf8, true),
                Field::new("pid", Int64, false),
                Field::new("ppid", Int64, true),
                Field::new("uid", Int64, false),
                Field::new("gid", Int64, false),
                Field::new("comm", Utf8, false),
                Field::new("exe", Utf8, true),
                Field::new("cmdline", Utf8, true),
                Field::new("cgroup", Utf8, true),
                Field::new("unit", Utf8, true),
                Field::new("ci_job", Utf8, true),
                Field::new("client_tls", Boolean, false),
                Field::new("upstream_tls", Boolean, false),
                Field::new("db_user", Utf8, true),
                Field::new("database", Utf8, true),
                Field::new("bytes_up", Int64, false),
                Field::new("bytes_down", Int64, false),
                Field::new("commands", Int64, false),
                Field::new("denied", Int64, false),
                Field::new("masked_values", Int64, false),
                Field::new("end_reason", Utf8, true),
            ]))
        })
        .clone()
}

/// The columns of `AUDIT/events`, in DESIGN.md order.
pub fn events_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            use DataType::{Int64, Utf8};
            Arc::new(Schema::new(vec![
                Field::new("event_id", Utf8, false),
                Field::new("session_id", Utf8, false),
                Field::new("seq", Int64, false),
                Field::new("ts", ts_type(), false),
                Field::new("duration_us", Int64, true),
                Field::new("host", Utf8, false),
                Field::new("store", Utf8, false),
                Field::new("protocol", Utf8, false),
                Field::new("pid", Int64, false),
                Field::new("uid", Int64, false),
                Field::new("unit", Utf8, true),
                Field::new("command", Utf8, false),
                Field::new("statement", Utf8, true),
                Field::new("target", Utf8, true),
                Field::new("decision", Utf8, false),
                Field::new("rule", Utf8, true),
                Field::new("approval_id", Utf8, true),
                Field::new("approver", Utf8, true),
                Field::new("rows", Int64, true),
                Field::new("masked_values", Int64, false),
                Field::new("error", Utf8, true),
                Field::new("bytes_up", Int64, false),
                Field::new("bytes_down", Int64, false),
            ]))
        })
        .clone()
}

// ---------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------

/// The UTC day (days since the epoch) a timestamp in microseconds falls on.
pub fn day_of(ts_us: i64) -> i64 {
    ts_us.div_euclid(US_PER_DAY)
}

/// The first microsecond of a day (days since the epoch).
pub fn day_start(day: i64) -> i64 {
    day.saturating_mul(US_PER_DAY)
}

/// `YYYY-MM-DD` of a day since the epoch.
pub fn day_name(day: i64) -> String {
    let date = i32::try_from(day)
        .ok()
        .and_then(|d| d.checked_add(719_163))
        .and_then(chrono::NaiveDate::from_num_days_from_ce_opt)
        .unwrap_or_default();
    date.format("%Y-%m-%d").to_string()
}

/// The day since the epoch named by a `dt=YYYY-MM-DD` directory.
pub fn parse_partition(name: &str) -> Option<i64> {
    let date = chrono::NaiveDate::parse_from_str(name.strip_prefix("dt=")?, "%Y-%m-%d").ok()?;
    Some(i64::from(chrono::Datelike::num_days_from_ce(&date)) - 719_163)
}

// ---------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------

/// One file written to staging, not yet in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub tmp: PathBuf,
    pub final_path: PathBuf,
    pub rows: usize,
}

/// What the writer needs from a row type.
trait AuditRow {
    const DIR: &'static str;
    /// The id column (used to dedupe after a crash).
    const ID: &'static str;
    fn time(&self) -> i64;
    fn id(&self) -> &str;
    fn schema() -> SchemaRef;
    fn columns(rows: &[&Self]) -> Vec<ArrayRef>;
    /// Columns written without a dictionary: values (nearly) all distinct,
    /// where a dictionary would be built and then abandoned for every page,
    /// or small runs that zstd packs as well for less work.
    fn no_dictionary() -> &'static [&'static str];
}

/// Where the writer gets a row from. A row can be at hand (`&SessionView`,
/// `&EventView`) or produced on demand, one batch at a time, so the roller
/// never holds a million decoded records: only their sort keys.
pub trait RowSource<R> {
    /// started_at / ts: rows are sorted and partitioned by it.
    fn time(&self) -> i64;
    /// session_id / event_id: the tie-breaker of the sort.
    fn id(&self) -> &str;
    /// The row itself; `None` drops it (a source that can no longer produce
    /// its row, which the caller has already validated against).
    fn row(&self) -> Option<R>;
}

impl<R: AuditRow + Clone> RowSource<R> for &R {
    fn time(&self) -> i64 {
        AuditRow::time(*self)
    }

    fn id(&self) -> &str {
        AuditRow::id(*self)
    }

    fn row(&self) -> Option<R> {
        Some((*self).clone())
    }
}

/// Builds one file per `dt` partition of `rows` (sorted by started_at, then
/// session_id) in `AUDIT/.staging`, fsynced. The final paths are computed,
/// not created: [`commit`] puts the files in place.
pub fn prepare_sessions<'r, 'v: 'r>(
    audit_dir: &Path,
    rows: impl IntoIterator<Item = &'r SessionView<'v>>,
) -> Result<Vec<Prepared>, AuditIoError> {
    prepare::<SessionView<'v>, _>(audit_dir, rows.into_iter().collect(), ZSTD_LEVEL)
}

/// Builds one file per `dt` partition of `rows` (sorted by ts, then
/// event_id) in `AUDIT/.staging`, fsynced. See [`prepare_sessions`].
pub fn prepare_events<'r, 'v: 'r>(
    audit_dir: &Path,
    rows: impl IntoIterator<Item = &'r EventView<'v>>,
) -> Result<Vec<Prepared>, AuditIoError> {
    prepare::<EventView<'v>, _>(audit_dir, rows.into_iter().collect(), ZSTD_LEVEL)
}

/// [`prepare_sessions`] from any row source.
pub fn prepare_sessions_from<'v, S: RowSource<SessionView<'v>>>(
    audit_dir: &Path,
    rows: Vec<S>,
) -> Result<Vec<Prepared>, AuditIoError> {
    prepare::<SessionView<'v>, S>(audit_dir, rows, ZSTD_LEVEL)
}

/// [`prepare_events`] from any row source.
pub fn prepare_events_from<'v, S: RowSource<EventView<'v>>>(
    audit_dir: &Path,
    rows: Vec<S>,
) -> Result<Vec<Prepared>, AuditIoError> {
    prepare::<EventView<'v>, S>(audit_dir, rows, ZSTD_LEVEL)
}

fn prepare<R: AuditRow, S: RowSource<R>>(
    audit_dir: &Path,
    mut sorted: Vec<S>,
    zstd_level: i32,
) -> Result<Vec<Prepared>, AuditIoError> {
    if sorted.is_empty() {
        return Ok(Vec::new());
    }
    let staging = audit_dir.join(STAGING_DIR);
    fs::create_dir_all(&staging).map_err(AuditIoError::io("creating directory", &staging))?;

    sorted.sort_unstable_by(|a, b| a.time().cmp(&b.time()).then_with(|| a.id().cmp(b.id())));

    let props = writer_properties::<R>(zstd_level);
    let mut prepared: Vec<Prepared> = Vec::new();
    let mut rest = sorted.as_slice();
    while let Some(first) = rest.first() {
        // Sorted by time, so one partition is one contiguous run.
        let day = day_of(first.time());
        let len = rest.partition_point(|r| day_of(r.time()) == day);
        let (part, tail) = rest.split_at(len);
        rest = tail;

        let id = uuid::Uuid::now_v7();
        let tmp = staging.join(format!("{id}.parquet.tmp"));
        let final_path = audit_dir
            .join(R::DIR)
            .join(format!("dt={}", day_name(day)))
            .join(format!("part-{id}.parquet"));
        if let Err(e) = write_file::<R, S>(&tmp, part, props.clone()) {
            let _ = fs::remove_file(&tmp);
            for p in &prepared {
                let _ = fs::remove_file(&p.tmp);
            }
            return Err(e);
        }
        prepared.push(Prepared {
            tmp,
            final_path,
            rows: part.len(),
        });
    }
    Ok(prepared)
}

fn writer_properties<R: AuditRow>(zstd_level: i32) -> WriterProperties {
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(zstd_level).unwrap_or_default(),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_created_by(format!("interceptor {}", env!("CARGO_PKG_VERSION")));
    for col in R::no_dictionary() {
        b = b.set_column_dictionary_enabled(ColumnPath::from(*col), false);
    }
    b.build()
}

fn write_file<R: AuditRow, S: RowSource<R>>(
    tmp: &Path,
    rows: &[S],
    props: WriterProperties,
) -> Result<(), AuditIoError> {
    let file = File::create(tmp).map_err(AuditIoError::io("creating", tmp))?;
    let out = BufWriter::with_capacity(1 << 20, file);
    let mut writer = ArrowWriter::try_new(out, R::schema(), Some(props))
        .map_err(AuditIoError::parquet("writing", tmp))?;
    let mut batch_rows: Vec<R> = Vec::with_capacity(BATCH_ROWS);
    for chunk in rows.chunks(BATCH_ROWS) {
        batch_rows.clear();
        batch_rows.extend(chunk.iter().filter_map(RowSource::row));
        let refs: Vec<&R> = batch_rows.iter().collect();
        let batch = RecordBatch::try_new(R::schema(), R::columns(&refs))
            .map_err(AuditIoError::arrow("building a record batch for", tmp))?;
        writer
            .write(&batch)
            .map_err(AuditIoError::parquet("writing", tmp))?;
    }
    let out = writer
        .into_inner()
        .map_err(AuditIoError::parquet("writing", tmp))?;
    let file = out
        .into_inner()
        .map_err(|e| AuditIoError::io("writing", tmp)(e.into_error()))?;
    file.sync_all().map_err(AuditIoError::io("syncing", tmp))?;
    Ok(())
}

/// Renames every staged file to its final path (creating the `dt=`
/// directories), then fsyncs each directory that gained an entry and the
/// parents of those created. A file already moved (tmp gone, final present)
/// counts as done, so a retried commit is harmless.
pub fn commit(prepared: &[Prepared]) -> Result<(), AuditIoError> {
    let mut sync: BTreeSet<PathBuf> = BTreeSet::new();
    for p in prepared {
        let Some(dir) = p.final_path.parent() else {
            continue;
        };
        // Every directory this creates needs its own entry made durable.
        let mut missing = dir;
        while !missing.exists() {
            sync.insert(missing.to_path_buf());
            match missing.parent() {
                Some(parent) => missing = parent,
                None => break,
            }
        }
        sync.insert(missing.to_path_buf());
        fs::create_dir_all(dir).map_err(AuditIoError::io("creating directory", dir))?;
        match fs::rename(&p.tmp, &p.final_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && p.final_path.exists() => {}
            Err(source) => {
                return Err(AuditIoError::Rename {
                    from: p.tmp.clone(),
                    to: p.final_path.clone(),
                    source,
                })
            }
        }
        sync.insert(dir.to_path_buf());
    }
    // Deepest first: a new file's entry, then the entry of its new directory.
    for dir in sync.iter().rev() {
        let d = File::open(dir).map_err(AuditIoError::io("opening directory", dir))?;
        d.sync_all()
            .map_err(AuditIoError::io("syncing directory", dir))?;
    }
    Ok(())
}

/// Removes what an interrupted roll left in `AUDIT/.staging`; returns how
/// many files. Call on start, before any roll.
pub fn clean_staging(audit_dir: &Path) -> Result<usize, AuditIoError> {
    let staging = audit_dir.join(STAGING_DIR);
    let entries = match fs::read_dir(&staging) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(AuditIoError::io("listing", &staging)(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(AuditIoError::io("listing", &staging))?;
        let path = entry.path();
        let is_file = entry
            .file_type()
            .map_err(AuditIoError::io("inspecting", &path))?
            .is_file();
        if is_file {
            fs::remove_file(&path).map_err(AuditIoError::io("removing", &path))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The id column of one dataset file: `event_id` for an events file,
/// `session_id` for a sessions file.
pub fn read_ids(path: &Path) -> Result<Vec<String>, AuditIoError> {
    let file = File::open(path).map_err(AuditIoError::io("opening", path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(AuditIoError::parquet("reading", path))?;
    let schema = builder.schema().clone();
    let column = if schema.field_with_name(EventView::ID).is_ok() {
        EventView::ID
    } else {
        SessionView::ID
    };
    let index = schema.index_of(column).map_err(|_| AuditIoError::Format {
        path: path.to_path_buf(),
        message: "it has neither an event_id nor a session_id column".to_string(),
    })?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(AuditIoError::parquet("reading", path))?;
    let mut ids = Vec::new();
    for batch in reader {
        let batch = batch.map_err(AuditIoError::arrow("reading", path))?;
        let col = batch.column(0);
        let values = col
            .as_string_opt::<i32>()
            .ok_or_else(|| AuditIoError::Format {
                path: path.to_path_buf(),
                message: format!("column {column} is {}, expected Utf8", col.data_type()),
            })?;
        ids.extend(values.iter().flatten().map(str::to_string));
    }
    Ok(ids)
}

// ---------------------------------------------------------------------------
// Columns
// ---------------------------------------------------------------------------
//
// Built row by row: each record (and the strings it points to) is visited
// once while all builders fill, which halves the build time against one
// pass per column once a batch outgrows the CPU caches.

/// Counters are u64 in memory; Parquet has no unsigned types Athena reads.
fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn strings(rows: usize, bytes_per_row: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, rows * bytes_per_row)
}

fn timestamps(rows: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC")
}

fn done<B: arrow_array::builder::ArrayBuilder>(mut b: B) -> ArrayRef {
    b.finish()
}

impl AuditRow for SessionView<'_> {
    const DIR: &'static str = SESSIONS_DIR;
    const ID: &'static str = "session_id";

    fn time(&self) -> i64 {
        self.started_at
    }

    fn id(&self) -> &str {
        self.session_id
    }

    fn schema() -> SchemaRef {
        sessions_schema()
    }

    fn no_dictionary() -> &'static [&'static str] {
        &["session_id", "started_at", "ended_at", "client_addr"]
    }

    fn columns(rows: &[&Self]) -> Vec<ArrayRef> {
        let n = rows.len();
        let mut session_id = strings(n, 36);
        let mut host = strings(n, 16);
        let mut started_at = timestamps(n);
        let mut ended_at = timestamps(n);
        let mut store = strings(n, 16);
        let mut protocol = strings(n, 8);
        let mut client_addr = strings(n, 16);
        let mut original_dst = strings(n, 16);
        let mut upstream_addr = strings(n, 16);
        let mut pid = Int64Builder::with_capacity(n);
        let mut ppid = Int64Builder::with_capacity(n);
        let mut uid = Int64Builder::with_capacity(n);
        let mut gid = Int64Builder::with_capacity(n);
        let mut comm = strings(n, 16);
        let mut exe = strings(n, 32);
        let mut cmdline = strings(n, 64);
        let mut cgroup = strings(n, 48);
        let mut unit = strings(n, 24);
        let mut ci_job = strings(n, 24);
        let mut client_tls = BooleanBuilder::with_capacity(n);
        let mut upstream_tls = BooleanBuilder::with_capacity(n);
        let mut db_user = strings(n, 8);
        let mut database = strings(n, 8);
        let mut bytes_up = Int64Builder::with_capacity(n);
        let mut bytes_down = Int64Builder::with_capacity(n);
        let mut commands = Int64Builder::with_capacity(n);
        let mut denied = Int64Builder::with_capacity(n);
        let mut masked_values = Int64Builder::with_capacity(n);
        let mut end_reason = strings(n, 16);
        for r in rows {
            session_id.append_value(r.session_id);
            host.append_value(r.host);
            started_at.append_value(r.started_at);
            ended_at.append_option(r.ended_at);
            store.append_value(r.store);
            protocol.append_value(r.protocol);
            client_addr.append_value(r.client_addr);
            original_dst.append_value(r.original_dst);
            upstream_addr.append_option(r.upstream_addr);
            pid.append_value(i64::from(r.pid));
            ppid.append_option(r.ppid.map(i64::from));
            uid.append_value(i64::from(r.uid));
            gid.append_value(i64::from(r.gid));
            comm.append_value(r.comm);
            exe.append_option(r.exe);
            cmdline.append_option(r.cmdline);
            cgroup.append_option(r.cgroup);
            unit.append_option(r.unit);
            ci_job.append_option(r.ci_job);
            client_tls.append_value(r.client_tls);
            upstream_tls.append_value(r.upstream_tls);
            db_user.append_option(r.db_user);
            database.append_option(r.database);
            bytes_up.append_value(i64_of(r.bytes_up));
            bytes_down.append_value(i64_of(r.bytes_down));
            commands.append_value(i64_of(r.commands));
            denied.append_value(i64_of(r.denied));
            masked_values.append_value(i64_of(r.masked_values));
            end_reason.append_option(r.end_reason);
        }
        vec![
            done(session_id),
            done(host),
            done(started_at),
            done(ended_at),
            done(store),
            done(protocol),
            done(client_addr),
            done(original_dst),
            done(upstream_addr),
            done(pid),
            done(ppid),
            done(uid),
            done(gid),
            done(comm),
            done(exe),
            done(cmdline),
            done(cgroup),
            done(unit),
            done(ci_job),
            done(client_tls),
            done(upstream_tls),
            done(db_user),
            done(database),
            done(bytes_up),
            done(bytes_down),
            done(commands),
            done(denied),
            done(masked_values),
            done(end_reason),
        ]
    }
}

impl AuditRow for EventView<'_> {
    const DIR: &'static str = EVENTS_DIR;
    const ID: &'static str = "event_id";

    fn time(&self) -> i64 {
        self.ts
    }

    fn id(&self) -> &str {
        self.event_id
    }

    fn schema() -> SchemaRef {
        events_schema()
    }

    fn no_dictionary() -> &'static [&'static str] {
        // Measured per column on a mixed workload: these are cheaper and no
        // larger as plain values under zstd (unique ids and times, wide
        // counters, and pid/masked_values, which come in runs).
        &[
            "event_id",
            "ts",
            "duration_us",
            "bytes_down",
            "pid",
            "masked_values",
        ]
    }

    fn columns(rows: &[&Self]) -> Vec<ArrayRef> {
        let n = rows.len();
        let mut event_id = strings(n, 36);
        let mut session_id = strings(n, 36);
        let mut seq = Int64Builder::with_capacity(n);
        let mut ts = timestamps(n);
        let mut duration_us = Int64Builder::with_capacity(n);
        let mut host = strings(n, 16);
        let mut store = strings(n, 16);
        let mut protocol = strings(n, 8);
        let mut pid = Int64Builder::with_capacity(n);
        let mut uid = Int64Builder::with_capacity(n);
        let mut unit = strings(n, 24);
        let mut command = strings(n, 8);
        let mut statement = strings(n, 64);
        let mut target = strings(n, 24);
        let mut decision = strings(n, 5);
        let mut rule = strings(n, 0);
        let mut approval_id = strings(n, 0);
        let mut approver = strings(n, 0);
        let mut result_rows = Int64Builder::with_capacity(n);
        let mut masked_values = Int64Builder::with_capacity(n);
        let mut error = strings(n, 0);
        let mut bytes_up = Int64Builder::with_capacity(n);
        let mut bytes_down = Int64Builder::with_capacity(n);
        for r in rows {
            event_id.append_value(r.event_id);
            session_id.append_value(r.session_id);
            seq.append_value(i64_of(r.seq));
            ts.append_value(r.ts);
            duration_us.append_option(r.duration_us);
            host.append_value(r.host);
            store.append_value(r.store);
            protocol.append_value(r.protocol);
            pid.append_value(i64::from(r.pid));
            uid.append_value(i64::from(r.uid));
            unit.append_option(r.unit);
            command.append_value(r.command);
            statement.append_option(r.statement);
            target.append_option(r.target);
            decision.append_value(r.decision.as_str());
            rule.append_option(r.rule);
            approval_id.append_option(r.approval_id);
            approver.append_option(r.approver);
            result_rows.append_option(r.rows.map(i64_of));
            masked_values.append_value(i64_of(r.masked_values));
            error.append_option(r.error);
            bytes_up.append_value(i64_of(r.bytes_up));
            bytes_down.append_value(i64_of(r.bytes_down));
        }
        vec![
            done(event_id),
            done(session_id),
            done(seq),
            done(ts),
            done(duration_us),
            done(host),
            done(store),
            done(protocol),
            done(pid),
            done(uid),
            done(unit),
            done(command),
            done(statement),
            done(target),
            done(decision),
            done(rule),
            done(approval_id),
            done(approver),
            done(result_rows),
            done(masked_values),
            done(error),
            done(bytes_up),
            done(bytes_down),
        ]
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::audit::model::{CommandEvent, Decision, EventView, SessionRecord, SessionView};

    pub(crate) fn sv(rows: &[SessionRecord]) -> Vec<SessionView<'_>> {
        rows.iter().map(SessionRecord::view).collect()
    }

    pub(crate) fn ev(rows: &[CommandEvent]) -> Vec<EventView<'_>> {
        rows.iter().map(CommandEvent::view).collect()
    }

    pub(crate) const DAY1: i64 = 1_795_946_400_000_000; // 2026-11-29T10:00:00Z
    pub(crate) const DAY2: i64 = DAY1 + US_PER_DAY; // 2026-11-30T10:00:00Z

    pub(crate) fn session(i: u32, started_at: i64) -> SessionRecord {
        SessionRecord {
            session_id: format!("0190aaaa-0000-7000-8000-{i:012}"),
            rev: 0,
            host: "ci-host-1".into(),
            started_at,
            ended_at: (!i.is_multiple_of(3)).then_some(started_at + 1_500_000),
            store: if i.is_multiple_of(2) {
                "ci-db"
            } else {
                "vault"
            }
            .into(),
            protocol: if i.is_multiple_of(2) {
                "postgres"
            } else {
                "http"
            }
            .into(),
            client_addr: format!("127.0.0.1:{}", 40000 + i),
            original_dst: "10.0.0.5:5432".into(),
            upstream_addr: (i.is_multiple_of(2)).then(|| "10.0.0.5:5432".into()),
            pid: 1000 + i,
            ppid: (!i.is_multiple_of(4)).then_some(999),
            uid: 1001 + i % 2,
            gid: 1001,
            comm: "psql".into(),
            exe: Some("/usr/bin/psql".into()),
            cmdline: Some("psql -h db, \"quoted\"\nnext line".into()),
            cgroup: Some("/system.slice/gitlab-runner.service".into()),
            unit: Some("gitlab-runner.service".into()),
            ci_job: (i.is_multiple_of(2)).then(|| "infra/deploy#42".into()),
            client_tls: i.is_multiple_of(2),
            upstream_tls: true,
            db_user: Some("app".into()),
            database: None,
            bytes_up: 123 + u64::from(i),
            bytes_down: 4567,
            commands: 4,
            denied: u64::from(i % 2),
            masked_values: 2,
            end_reason: (!i.is_multiple_of(3)).then(|| "client closed".into()),
        }
    }

    pub(crate) fn event(s: &SessionRecord, seq: u64) -> CommandEvent {
        let decision = match seq % 4 {
            0 => Decision::Deny,
            1 => Decision::Allow,
            2 => Decision::Mask,
            _ => Decision::Error,
        };
        CommandEvent {
            event_id: format!("{}-{seq:04}", s.session_id),
            rev: 0,
            session_id: s.session_id.clone(),
            seq,
            ts: s.started_at + 1000 * seq as i64 + 345,
            duration_us: (!seq.is_multiple_of(5)).then_some(1200),
            host: s.host.clone(),
            store: s.store.clone(),
            protocol: s.protocol.clone(),
            pid: s.pid,
            uid: s.uid,
            unit: s.unit.clone(),
            command: "SELECT".into(),
            statement: Some(format!("SELECT * FROM t WHERE id = ${seq}")),
            target: Some("public.t".into()),
            decision,
            rule: (decision == Decision::Deny).then(|| "no-ddl".into()),
            approval_id: None,
            approver: None,
            rows: (decision == Decision::Allow).then_some(10),
            masked_values: seq % 2,
            error: (decision == Decision::Error).then(|| "server said: \"boom\"".into()),
            bytes_up: 40,
            bytes_down: 4000,
            done: true,
        }
    }

    /// Sessions and events on two days, committed into `dir`.
    pub(crate) fn write_dataset(dir: &Path) -> (Vec<SessionRecord>, Vec<CommandEvent>) {
        let mut sessions = Vec::new();
        let mut events = Vec::new();
        for i in 0..10u32 {
            let day = if i < 6 { DAY1 } else { DAY2 };
            let s = session(i, day + i64::from(i) * 60_000_000);
            for seq in 1..=s.commands {
                events.push(event(&s, seq));
            }
            sessions.push(s);
        }
        // Unsorted input: the writer sorts.
        sessions.reverse();
        events.reverse();
        let mut p = prepare_sessions(dir, &sv(&sessions)).unwrap();
        p.extend(prepare_events(dir, &ev(&events)).unwrap());
        commit(&p).unwrap();
        (sessions, events)
    }

    fn parquet_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let Ok(entries) = fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn schemas_match_the_design() {
        let s = sessions_schema();
        let names: Vec<&str> = s.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "session_id",
                "host",
                "started_at",
                "ended_at",
                "store",
                "protocol",
                "client_addr",
                "original_dst",
                "upstream_addr",
                "pid",
                "ppid",
                "uid",
                "gid",
                "comm",
                "exe",
                "cmdline",
                "cgroup",
                "unit",
                "ci_job",
                "client_tls",
                "upstream_tls",
                "db_user",
                "database",
                "bytes_up",
                "bytes_down",
                "commands",
                "denied",
                "masked_values",
                "end_reason"
            ]
        );
        let ty =
            |schema: &SchemaRef, n: &str| schema.field_with_name(n).unwrap().data_type().clone();
        let nullable =
            |schema: &SchemaRef, n: &str| schema.field_with_name(n).unwrap().is_nullable();
        assert_eq!(ty(&s, "started_at"), ts_type());
        assert_eq!(ty(&s, "ended_at"), ts_type());
        for n in [
            "pid",
            "ppid",
            "uid",
            "gid",
            "bytes_up",
            "bytes_down",
            "commands",
            "denied",
            "masked_values",
        ] {
            assert_eq!(ty(&s, n), DataType::Int64, "{n}");
        }
        for n in ["client_tls", "upstream_tls"] {
            assert_eq!(ty(&s, n), DataType::Boolean, "{n}");
        }
        for n in [
            "session_id",
            "host",
            "store",
            "protocol",
            "client_addr",
            "original_dst",
            "comm",
            "exe",
            "end_reason",
        ] {
            assert_eq!(ty(&s, n), DataType::Utf8, "{n}");
        }
        for n in [
            "ended_at",
            "upstream_addr",
            "ppid",
            "exe",
            "cmdline",
            "cgroup",
            "unit",
            "ci_job",
            "db_user",
            "database",
            "end_reason",
        ] {
            assert!(nullable(&s, n), "{n}");
        }
        for n in [
            "session_id",
            "started_at",
            "pid",
            "uid",
            "gid",
            "comm",
            "client_tls",
            "bytes_up",
        ] {
            assert!(!nullable(&s, n), "{n}");
        }

        let e = events_schema();
        let names: Vec<&str> = e.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "event_id",
                "session_id",
                "seq",
                "ts",
                "duration_us",
                "host",
                "store",
                "protocol",
                "pid",
                "uid",
                "unit",
                "command",
                "statement",
                "target",
                "decision",
                "rule",
                "approval_id",
                "approver",
                "rows",
                "masked_values",
                "error",
                "bytes_up",
                "bytes_down"
            ]
        );
        assert_eq!(ty(&e, "ts"), ts_type());
        for n in [
            "seq",
            "duration_us",
            "pid",
            "uid",
            "rows",
            "masked_values",
            "bytes_up",
            "bytes_down",
        ] {
            assert_eq!(ty(&e, n), DataType::Int64, "{n}");
        }
        for n in [
            "event_id",
            "session_id",
            "command",
            "statement",
            "decision",
            "rule",
            "error",
        ] {
            assert_eq!(ty(&e, n), DataType::Utf8, "{n}");
        }
        for n in [
            "duration_us",
            "unit",
            "statement",
            "target",
            "rule",
            "approval_id",
            "approver",
            "rows",
            "error",
        ] {
            assert!(nullable(&e, n), "{n}");
        }
        assert!(s.field_with_name("dt").is_err() && e.field_with_name("dt").is_err());
    }

    #[test]
    fn files_land_in_day_partitions_and_staging_is_empty_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path());
        let files: Vec<String> = parquet_files(dir.path())
            .iter()
            .map(|p| {
                p.strip_prefix(dir.path())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        assert_eq!(files.len(), 4, "{files:?}");
        for (i, prefix) in [
            "events/dt=2026-11-29/part-",
            "events/dt=2026-11-30/part-",
            "sessions/dt=2026-11-29/part-",
            "sessions/dt=2026-11-30/part-",
        ]
        .iter()
        .enumerate()
        {
            assert!(files[i].starts_with(prefix), "{files:?}");
            assert!(files[i].ends_with(".parquet"));
            let id = files[i]
                .trim_start_matches(prefix)
                .trim_end_matches(".parquet");
            assert_eq!(uuid::Uuid::parse_str(id).unwrap().get_version_num(), 7);
        }
        assert_eq!(
            fs::read_dir(dir.path().join(STAGING_DIR)).unwrap().count(),
            0
        );
    }

    #[test]
    fn prepare_stages_outside_the_dataset_and_commit_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(1, DAY1);
        let events: Vec<_> = (1..=3).map(|q| event(&s, q)).collect();
        let p = prepare_events(dir.path(), &ev(&events)).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].rows, 3);
        assert!(p[0].tmp.starts_with(dir.path().join(STAGING_DIR)));
        assert!(p[0].tmp.to_string_lossy().ends_with(".parquet.tmp"));
        assert!(p[0].tmp.exists());
        assert!(!p[0].final_path.exists());
        assert!(
            !dir.path().join(EVENTS_DIR).exists(),
            "nothing visible before commit"
        );
        commit(&p).unwrap();
        assert!(!p[0].tmp.exists());
        assert!(p[0].final_path.exists());
        commit(&p).unwrap();
        assert!(prepare_events(dir.path(), &ev(&[])).unwrap().is_empty());
    }

    #[test]
    fn clean_staging_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(clean_staging(dir.path()).unwrap(), 0, "no staging dir yet");
        let s = session(1, DAY1);
        let p = prepare_sessions(dir.path(), &sv(&[s.clone(), session(2, DAY2)])).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(clean_staging(dir.path()).unwrap(), 2);
        assert!(p.iter().all(|p| !p.tmp.exists() && !p.final_path.exists()));
        assert_eq!(clean_staging(dir.path()).unwrap(), 0);
    }

    #[test]
    fn read_ids_returns_the_id_column() {
        let dir = tempfile::tempdir().unwrap();
        let s = session(1, DAY1);
        let events: Vec<_> = (1..=5).map(|q| event(&s, q)).collect();
        let mut p = prepare_events(dir.path(), &ev(&events)).unwrap();
        p.extend(prepare_sessions(dir.path(), &[s.view()]).unwrap());
        commit(&p).unwrap();
        let mut ids = read_ids(&p[0].final_path).unwrap();
        ids.sort();
        let mut want: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(
            read_ids(&p[1].final_path).unwrap(),
            vec![s.session_id.clone()]
        );
    }

    #[test]
    fn errors_name_the_path_and_operation() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let err = prepare_events(&blocker, &[event(&session(1, DAY1), 1).view()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("creating directory "), "{msg}");
        assert!(
            msg.contains(&*blocker.join(STAGING_DIR).to_string_lossy()),
            "{msg}"
        );

        let err = read_ids(&blocker).unwrap_err().to_string();
        assert!(
            err.starts_with("reading ") && err.contains(&*blocker.to_string_lossy()),
            "{err}"
        );
    }

    #[test]
    fn day_names() {
        assert_eq!(day_name(day_of(DAY1)), "2026-11-29");
        assert_eq!(
            day_name(day_of(DAY1 - 10 * 3_600_000_000 - 1)),
            "2026-11-28"
        );
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(day_of(-1)), "1969-12-31");
        assert_eq!(parse_partition("dt=2026-11-29"), Some(day_of(DAY1)));
        assert_eq!(parse_partition("dt=nope"), None);
        assert_eq!(parse_partition("2026-11-29"), None);
    }

    /// Events with the variety of a busy CI host (xorshift, deterministic):
    /// sessions of 1-100 commands, a few hundred statement shapes, mostly
    /// allowed, some masked, denied or failed.
    pub(crate) fn synthetic_events(n: usize) -> Vec<CommandEvent> {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rnd = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        let tables = [
            "users",
            "jobs",
            "secrets",
            "audit_log",
            "tokens",
            "builds",
            "artifacts",
            "runners",
        ];
        let cols = [
            "id",
            "name",
            "state",
            "owner_id",
            "created_at",
            "token_hash",
            "key",
            "value",
        ];
        let stores = [
            ("ci-db", "postgres"),
            ("cache", "redis"),
            ("vault", "http"),
            ("reports", "postgres"),
        ];
        let units = [
            "gitlab-runner.service",
            "buildkite-agent.service",
            "cron.service",
        ];
        let mut out = Vec::with_capacity(n);
        let mut ts = DAY1;
        let mut i = 0u32;
        while out.len() < n {
            let mut s = session(i, ts);
            i += 1;
            s.session_id = uuid::Uuid::now_v7().to_string();
            let (store, protocol) = stores[rnd(4) as usize];
            s.store = store.into();
            s.protocol = protocol.into();
            s.pid = 1000 + rnd(60_000) as u32;
            s.uid = [0, 1001, 1002][rnd(3) as usize];
            s.unit = Some(units[rnd(3) as usize].into());
            let len = 1 + rnd(100);
            for seq in 1..=len {
                if out.len() == n {
                    break;
                }
                ts += rnd(200) as i64;
                let mut e = event(&s, seq);
                e.event_id = uuid::Uuid::now_v7().to_string();
                e.ts = ts;
                let t = tables[rnd(8) as usize];
                let (c1, c2) = (cols[rnd(8) as usize], cols[rnd(8) as usize]);
                e.statement = Some(match rnd(4) {
                    0 => format!("SELECT {c1}, {c2} FROM {t} WHERE {c1} = $1"),
                    1 => format!("UPDATE {t} SET {c2} = $1 WHERE {c1} = $2"),
                    2 => format!("INSERT INTO {t} ({c1}, {c2}) VALUES ($1, $2)"),
                    _ => format!("DELETE FROM {t} WHERE {c1} IN ($1, $2, $3)"),
                });
                e.command = e
                    .statement
                    .as_deref()
                    .unwrap_or("")
                    .split(' ')
                    .next()
                    .unwrap_or("")
                    .into();
                e.target = Some(format!("public.{t}"));
                e.duration_us = Some(50 + rnd(50_000) as i64);
                e.bytes_up = 30 + rnd(400);
                e.bytes_down = rnd(100_000);
                e.masked_values = 0;
                e.rule = None;
                e.error = None;
                e.rows = None;
                e.decision = match rnd(100) {
                    0..=89 => {
                        e.rows = Some(rnd(1000));
                        Decision::Allow
                    }
                    90..=94 => {
                        e.masked_values = 1 + rnd(5);
                        Decision::Mask
                    }
                    95..=97 => {
                        e.rule = Some("no-ddl".into());
                        Decision::Deny
                    }
                    _ => {
                        e.error = Some(format!("ERROR: relation \"{t}\" does not exist"));
                        Decision::Error
                    }
                };
                out.push(e);
            }
        }
        out
    }

    /// Journal records -> Parquet in staging, as the roller does it:
    /// `cargo test -p interceptor --release --lib prepare_events_throughput -- --nocapture`
    #[test]
    fn prepare_events_throughput() {
        use crate::audit::model::JournalRecord;
        let n = 200_000;
        let events = synthetic_events(n);
        let journal: Vec<Vec<u8>> = events
            .iter()
            .map(|e| JournalRecord::Event(e.clone()).encode())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        // Debug builds only check that it runs; time a release build. Best
        // of three, in wall-clock and in this thread's CPU time (the latter
        // holds up on a busy machine).
        let reps = if cfg!(debug_assertions) { 1 } else { 3 };
        let best = |f: &mut dyn FnMut()| {
            (0..reps).fold((f64::MAX, f64::MAX), |(wall, cpu), _| {
                let (t, c) = (std::time::Instant::now(), thread_cpu_secs());
                f();
                (
                    wall.min(t.elapsed().as_secs_f64()),
                    cpu.min(thread_cpu_secs() - c),
                )
            })
        };
        let decode = best(&mut || {
            let decoded: Vec<CommandEvent> = journal
                .iter()
                .filter_map(|b| match JournalRecord::decode(b) {
                    Some(JournalRecord::Event(e)) => Some(e),
                    _ => None,
                })
                .collect();
            assert_eq!(decoded.len(), n);
        });
        let rate = |secs: f64| n as f64 / secs;
        println!(
            "decode (bincode): {:.0} events/s wall, {:.0} events/s cpu",
            rate(decode.0),
            rate(decode.1)
        );
        for level in [1, 3] {
            let mut size = 0;
            let write = best(&mut || {
                let p = prepare(
                    dir.path(),
                    events
                        .iter()
                        .map(CommandEvent::view)
                        .collect::<Vec<_>>()
                        .iter()
                        .collect(),
                    level,
                )
                .unwrap();
                assert_eq!(p.iter().map(|p| p.rows).sum::<usize>(), n);
                size = p
                    .iter()
                    .map(|p| fs::metadata(&p.tmp).unwrap().len())
                    .sum::<u64>();
                clean_staging(dir.path()).unwrap();
            });
            println!(
                "prepare_events zstd {level}: {:.0} events/s wall, {:.0} events/s cpu, {:.1} bytes/event; \
                 with decode {:.0} events/s wall, {:.0} events/s cpu",
                rate(write.0),
                rate(write.1),
                size as f64 / n as f64,
                rate(write.0 + decode.0),
                rate(write.1 + decode.1),
            );
        }
    }

    fn thread_cpu_secs() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec for the call's duration.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
    }
}
