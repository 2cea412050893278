//! Reading the audit dataset for analysts: `interceptor audit sessions`,
//! `interceptor audit events` and `interceptor replay`.
//!
//! Reads the Parquet files the roller wrote, by column name (so files from an
//! older schema with fewer optional columns still read), skipping whole `dt=`
//! partitions outside the time window. Everything a task controls (cmdline,
//! statements, errors) is printed with control characters escaped in the
//! table and replay output, so a crafted value cannot rewrite the analyst's
//! terminal.

use std::{
    borrow::Cow,
    fmt::Write as _,
    fs::{self, File},
    io,
    path::{Path, PathBuf},
    str::FromStr,
};

use arrow_array::{
    cast::AsArray,
    types::{Int64Type, TimestampMicrosecondType},
    Array, RecordBatch,
};
use arrow_schema::{DataType, SchemaRef, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{
    model::{CommandEvent, Decision, SessionRecord},
    parquet::{
        day_start, events_schema, parse_partition, sessions_schema, AuditIoError, EVENTS_DIR,
        SESSIONS_DIR,
    },
};

const US_PER_DAY: i64 = 86_400_000_000;

/// Which rows to return. Times are microseconds since the epoch, UTC:
/// `since` inclusive, `until` exclusive, compared with `started_at` for
/// sessions and `ts` for events. `decision` applies to events only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub since: Option<i64>,
    pub until: Option<i64>,
    pub store: Option<String>,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub unit: Option<String>,
    pub decision: Option<Decision>,
    pub session_id: Option<String>,
}

/// The columns a filter looks at, for one row.
struct Probe<'a> {
    time: i64,
    store: &'a str,
    pid: i64,
    uid: i64,
    unit: Option<&'a str>,
    session_id: &'a str,
    decision: Option<&'a str>,
}

impl Filter {
    fn keeps(&self, p: &Probe<'_>) -> bool {
        self.since.is_none_or(|s| p.time >= s)
            && self.until.is_none_or(|u| p.time < u)
            && self.store.as_deref().is_none_or(|s| p.store == s)
            && self.pid.is_none_or(|pid| p.pid == i64::from(pid))
            && self.uid.is_none_or(|uid| p.uid == i64::from(uid))
            && self.unit.as_deref().is_none_or(|u| p.unit == Some(u))
            && self.session_id.as_deref().is_none_or(|s| p.session_id == s)
            && match (self.decision, p.decision) {
                (Some(want), Some(got)) => want.as_str() == got,
                _ => true,
            }
    }

    /// Whether a `dt=` partition (a UTC day) can hold rows in the window.
    fn keeps_day(&self, day: i64) -> bool {
        let start = day_start(day);
        let end = start.saturating_add(US_PER_DAY);
        self.since.is_none_or(|s| end > s) && self.until.is_none_or(|u| start < u)
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Sessions in `AUDIT/sessions/dt=*/part-*.parquet` that pass the filter,
/// sorted by started_at. A missing or empty audit directory gives no rows.
pub fn read_sessions(audit_dir: &Path, f: &Filter) -> Result<Vec<SessionRecord>, AuditIoError> {
    let mut out = Vec::new();
    for path in partition_files(&audit_dir.join(SESSIONS_DIR), f)? {
        for_each_batch(&path, |cols| sessions_from(&cols, f, &mut out))?;
    }
    out.sort_by(|a, b| (a.started_at, &a.session_id).cmp(&(b.started_at, &b.session_id)));
    Ok(out)
}

/// Events in `AUDIT/events/dt=*/part-*.parquet` that pass the filter,
/// sorted by ts, then seq. A missing or empty audit directory gives no rows.
pub fn read_events(audit_dir: &Path, f: &Filter) -> Result<Vec<CommandEvent>, AuditIoError> {
    let mut out = Vec::new();
    for path in partition_files(&audit_dir.join(EVENTS_DIR), f)? {
        for_each_batch(&path, |cols| events_from(&cols, f, &mut out))?;
    }
    out.sort_by(|a, b| (a.ts, a.seq, &a.event_id).cmp(&(b.ts, b.seq, &b.event_id)));
    Ok(out)
}

/// One session and its commands in order, or `None` if no session has
/// that id. Session ids are UUIDv7, so their timestamp narrows the search
/// to the partitions around it (with a full scan as the fallback).
pub fn read_replay(
    audit_dir: &Path,
    session_id: &str,
) -> Result<Option<(SessionRecord, Vec<CommandEvent>)>, AuditIoError> {
    let by_id = Filter {
        session_id: Some(session_id.to_string()),
        ..Filter::default()
    };
    let mut found = None;
    if let Some(t) = uuid_v7_time(session_id) {
        let near = Filter {
            since: Some(t.saturating_sub(US_PER_DAY)),
            until: Some(t.saturating_add(US_PER_DAY)),
            ..by_id.clone()
        };
        found = read_sessions(audit_dir, &near)?.into_iter().next();
    }
    if found.is_none() {
        found = read_sessions(audit_dir, &by_id)?.into_iter().next();
    }
    let Some(session) = found else {
        return Ok(None);
    };
    // A day of slack either side: pruning is by partition, and a clock step
    // must not hide a command.
    let mut events = read_events(
        audit_dir,
        &Filter {
            since: Some(session.started_at.saturating_sub(US_PER_DAY)),
            until: session.ended_at.map(|e| e.saturating_add(US_PER_DAY)),
            ..by_id
        },
    )?;
    events.sort_by_key(|e| (e.seq, e.ts));
    Ok(Some((session, events)))
}

fn uuid_v7_time(id: &str) -> Option<i64> {
    let u = uuid::Uuid::parse_str(id).ok()?;
    if u.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = u.get_timestamp()?.to_unix();
    i64::try_from(secs)
        .ok()?
        .checked_mul(1_000_000)?
        .checked_add(i64::from(nanos / 1000))
}

/// `ROOT/dt=*/part-*.parquet` for the days the filter can match, in order.
fn partition_files(root: &Path, f: &Filter) -> Result<Vec<PathBuf>, AuditIoError> {
    let mut days = Vec::new();
    for entry in list(root)? {
        let name = entry.file_name();
        let Some(day) = name.to_str().and_then(parse_partition) else {
            continue;
        };
        if f.keeps_day(day) {
            days.push(entry.path());
        }
    }
    days.sort();
    let mut files = Vec::new();
    for dir in days {
        let mut in_day: Vec<PathBuf> = list(&dir)?
            .into_iter()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("part-") && name.ends_with(".parquet")
            })
            .map(|e| e.path())
            .collect();
        in_day.sort();
        files.extend(in_day);
    }
    Ok(files)
}

/// A directory's entries; a missing directory has none.
fn list(dir: &Path) -> Result<Vec<fs::DirEntry>, AuditIoError> {
    let err = |source| AuditIoError::Io {
        op: "listing",
        path: dir.to_path_buf(),
        source,
    };
    match fs::read_dir(dir) {
        Ok(entries) => entries.collect::<Result<Vec<_>, _>>().map_err(err),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(err(e)),
    }
}

fn for_each_batch(
    path: &Path,
    mut f: impl FnMut(Cols<'_>) -> Result<(), AuditIoError>,
) -> Result<(), AuditIoError> {
    let file = File::open(path).map_err(|source| AuditIoError::Io {
        op: "opening",
        path: path.to_path_buf(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.with_batch_size(8192).build())
        .map_err(AuditIoError::parquet("reading", path))?;
    for batch in reader {
        let batch = batch.map_err(|e| AuditIoError::Format {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        f(Cols {
            batch: &batch,
            path,
        })?;
    }
    Ok(())
}

/// Typed access by name to one record batch of one file.
struct Cols<'a> {
    batch: &'a RecordBatch,
    path: &'a Path,
}

enum StrCol<'a> {
    Utf8(&'a arrow_array::StringArray),
    Large(&'a arrow_array::LargeStringArray),
    View(&'a arrow_array::StringViewArray),
}

impl<'a> StrCol<'a> {
    fn get(&self, i: usize) -> Option<&'a str> {
        match self {
            StrCol::Utf8(a) => (!a.is_null(i)).then(|| a.value(i)),
            StrCol::Large(a) => (!a.is_null(i)).then(|| a.value(i)),
            StrCol::View(a) => (!a.is_null(i)).then(|| a.value(i)),
        }
    }
}

/// Int64 or timestamp(µs) values, with their validity.
struct I64Col<'a> {
    values: &'a [i64],
    array: &'a dyn Array,
}

impl I64Col<'_> {
    fn get(&self, i: usize) -> Option<i64> {
        (!self.array.is_null(i)).then(|| self.values[i])
    }
}

struct BoolCol<'a>(&'a arrow_array::BooleanArray);

impl BoolCol<'_> {
    fn get(&self, i: usize) -> Option<bool> {
        (!self.0.is_null(i)).then(|| self.0.value(i))
    }
}

impl<'a> Cols<'a> {
    fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    fn bad(&self, message: String) -> AuditIoError {
        AuditIoError::Format {
            path: self.path.to_path_buf(),
            message,
        }
    }

    fn column(&self, name: &str, required: bool) -> Result<Option<&'a dyn Array>, AuditIoError> {
        match self.batch.column_by_name(name) {
            Some(c) => Ok(Some(c.as_ref())),
            None if required => Err(self.bad(format!("column {name} is missing"))),
            None => Ok(None),
        }
    }

    fn wrong_type(&self, name: &str, array: &dyn Array, want: &str) -> AuditIoError {
        self.bad(format!(
            "column {name} is {}, expected {want}",
            array.data_type()
        ))
    }

    fn str_opt(&self, name: &str) -> Result<Option<StrCol<'a>>, AuditIoError> {
        let Some(a) = self.column(name, false)? else {
            return Ok(None);
        };
        let col = match a.data_type() {
            DataType::Utf8 => StrCol::Utf8(a.as_string::<i32>()),
            DataType::LargeUtf8 => StrCol::Large(a.as_string::<i64>()),
            DataType::Utf8View => StrCol::View(a.as_string_view()),
            _ => return Err(self.wrong_type(name, a, "Utf8")),
        };
        Ok(Some(col))
    }

    fn str(&self, name: &str) -> Result<StrCol<'a>, AuditIoError> {
        self.column(name, true)?;
        self.str_opt(name)?
            .ok_or_else(|| self.bad(format!("column {name} is missing")))
    }

    fn i64_opt(&self, name: &str) -> Result<Option<I64Col<'a>>, AuditIoError> {
        let Some(a) = self.column(name, false)? else {
            return Ok(None);
        };
        let values: &'a [i64] = match a.data_type() {
            DataType::Int64 => a.as_primitive::<Int64Type>().values(),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                a.as_primitive::<TimestampMicrosecondType>().values()
            }
            _ => return Err(self.wrong_type(name, a, "Int64 or Timestamp(µs)")),
        };
        Ok(Some(I64Col { values, array: a }))
    }

    fn i64(&self, name: &str) -> Result<I64Col<'a>, AuditIoError> {
        self.column(name, true)?;
        self.i64_opt(name)?
            .ok_or_else(|| self.bad(format!("column {name} is missing")))
    }

    fn bool(&self, name: &str) -> Result<BoolCol<'a>, AuditIoError> {
        let Some(a) = self.column(name, true)? else {
            return Err(self.bad(format!("column {name} is missing")));
        };
        match a.as_boolean_opt() {
            Some(b) => Ok(BoolCol(b)),
            None => Err(self.wrong_type(name, a, "Boolean")),
        }
    }

    /// A value a required column must have.
    fn req<T>(&self, v: Option<T>, name: &str, row: usize) -> Result<T, AuditIoError> {
        v.ok_or_else(|| self.bad(format!("column {name} is null in row {row}")))
    }

    fn id32(&self, v: i64, name: &str) -> Result<u32, AuditIoError> {
        u32::try_from(v).map_err(|_| self.bad(format!("column {name} holds {v}, not a 32-bit id")))
    }

    fn count(&self, v: i64, name: &str) -> Result<u64, AuditIoError> {
        u64::try_from(v).map_err(|_| self.bad(format!("column {name} holds {v}, not a count")))
    }
}

fn opt_string(v: Option<&str>) -> Option<String> {
    v.map(str::to_string)
}

fn sessions_from(
    c: &Cols<'_>,
    f: &Filter,
    out: &mut Vec<SessionRecord>,
) -> Result<(), AuditIoError> {
    let session_id = c.str("session_id")?;
    let host = c.str("host")?;
    let started_at = c.i64("started_at")?;
    let ended_at = c.i64_opt("ended_at")?;
    let store = c.str("store")?;
    let protocol = c.str("protocol")?;
    let client_addr = c.str("client_addr")?;
    let original_dst = c.str("original_dst")?;
    let upstream_addr = c.str_opt("upstream_addr")?;
    let pid = c.i64("pid")?;
    let ppid = c.i64_opt("ppid")?;
    let uid = c.i64("uid")?;
    let gid = c.i64("gid")?;
    let comm = c.str("comm")?;
    let exe = c.str_opt("exe")?;
    let cmdline = c.str_opt("cmdline")?;
    let cgroup = c.str_opt("cgroup")?;
    let unit = c.str_opt("unit")?;
    let ci_job = c.str_opt("ci_job")?;
    let client_tls = c.bool("client_tls")?;
    let upstream_tls = c.bool("upstream_tls")?;
    let db_user = c.str_opt("db_user")?;
    let database = c.str_opt("database")?;
    let bytes_up = c.i64("bytes_up")?;
    let bytes_down = c.i64("bytes_down")?;
    let commands = c.i64("commands")?;
    let denied = c.i64("denied")?;
    let masked_values = c.i64("masked_values")?;
    let end_reason = c.str_opt("end_reason")?;

    for i in 0..c.rows() {
        let id = c.req(session_id.get(i), "session_id", i)?;
        let start = c.req(started_at.get(i), "started_at", i)?;
        let store_v = c.req(store.get(i), "store", i)?;
        let pid_v = c.req(pid.get(i), "pid", i)?;
        let uid_v = c.req(uid.get(i), "uid", i)?;
        let unit_v = unit.as_ref().and_then(|u| u.get(i));
        let probe = Probe {
            time: start,
            store: store_v,
            pid: pid_v,
            uid: uid_v,
            unit: unit_v,
            session_id: id,
            decision: None,
        };
        if !f.keeps(&probe) {
            continue;
        }
        let s = |col: &Option<StrCol<'_>>| opt_string(col.as_ref().and_then(|c| c.get(i)));
        out.push(SessionRecord {
            session_id: id.to_string(),
            rev: 0,
            host: c.req(host.get(i), "host", i)?.to_string(),
            started_at: start,
            ended_at: ended_at.as_ref().and_then(|c| c.get(i)),
            store: store_v.to_string(),
            protocol: c.req(protocol.get(i), "protocol", i)?.to_string(),
            client_addr: c.req(client_addr.get(i), "client_addr", i)?.to_string(),
            original_dst: c.req(original_dst.get(i), "original_dst", i)?.to_string(),
            upstream_addr: s(&upstream_addr),
            pid: c.id32(pid_v, "pid")?,
            ppid: match ppid.as_ref().and_then(|c| c.get(i)) {
                Some(v) => Some(c.id32(v, "ppid")?),
                None => None,
            },
            uid: c.id32(uid_v, "uid")?,
            gid: c.id32(c.req(gid.get(i), "gid", i)?, "gid")?,
            comm: c.req(comm.get(i), "comm", i)?.to_string(),
            exe: s(&exe),
            cmdline: s(&cmdline),
            cgroup: s(&cgroup),
            unit: opt_string(unit_v),
            ci_job: s(&ci_job),
            client_tls: c.req(client_tls.get(i), "client_tls", i)?,
            upstream_tls: c.req(upstream_tls.get(i), "upstream_tls", i)?,
            db_user: s(&db_user),
            database: s(&database),
            bytes_up: c.count(c.req(bytes_up.get(i), "bytes_up", i)?, "bytes_up")?,
            bytes_down: c.count(c.req(bytes_down.get(i), "bytes_down", i)?, "bytes_down")?,
            commands: c.count(c.req(commands.get(i), "commands", i)?, "commands")?,
            denied: c.count(c.req(denied.get(i), "denied", i)?, "denied")?,
            masked_values: c.count(
                c.req(masked_values.get(i), "masked_values", i)?,
                "masked_values",
            )?,
            end_reason: s(&end_reason),
        });
    }
    Ok(())
}

fn events_from(c: &Cols<'_>, f: &Filter, out: &mut Vec<CommandEvent>) -> Result<(), AuditIoError> {
    let event_id = c.str("event_id")?;
    let session_id = c.str("session_id")?;
    let seq = c.i64("seq")?;
    let ts = c.i64("ts")?;
    let duration_us = c.i64_opt("duration_us")?;
    let host = c.str("host")?;
    let store = c.str("store")?;
    let protocol = c.str("protocol")?;
    let pid = c.i64("pid")?;
    let uid = c.i64("uid")?;
    let unit = c.str_opt("unit")?;
    let command = c.str("command")?;
    let statement = c.str_opt("statement")?;
    let target = c.str_opt("target")?;
    let decision = c.str("decision")?;
    let rule = c.str_opt("rule")?;
    let approval_id = c.str_opt("approval_id")?;
    let approver = c.str_opt("approver")?;
    let rows = c.i64_opt("rows")?;
    let masked_values = c.i64("masked_values")?;
    let error = c.str_opt("error")?;
    let bytes_up = c.i64("bytes_up")?;
    let bytes_down = c.i64("bytes_down")?;

    for i in 0..c.rows() {
        let sid = c.req(session_id.get(i), "session_id", i)?;
        let t = c.req(ts.get(i), "ts", i)?;
        let store_v = c.req(store.get(i), "store", i)?;
        let pid_v = c.req(pid.get(i), "pid", i)?;
        let uid_v = c.req(uid.get(i), "uid", i)?;
        let unit_v = unit.as_ref().and_then(|u| u.get(i));
        let decision_v = c.req(decision.get(i), "decision", i)?;
        let probe = Probe {
            time: t,
            store: store_v,
            pid: pid_v,
            uid: uid_v,
            unit: unit_v,
            session_id: sid,
            decision: Some(decision_v),
        };
        if !f.keeps(&probe) {
            continue;
        }
        let s = |col: &Option<StrCol<'_>>| opt_string(col.as_ref().and_then(|c| c.get(i)));
        out.push(CommandEvent {
            event_id: c.req(event_id.get(i), "event_id", i)?.to_string(),
            rev: 0,
            session_id: sid.to_string(),
            seq: c.count(c.req(seq.get(i), "seq", i)?, "seq")?,
            ts: t,
            duration_us: duration_us.as_ref().and_then(|c| c.get(i)),
            host: c.req(host.get(i), "host", i)?.to_string(),
            store: store_v.to_string(),
            protocol: c.req(protocol.get(i), "protocol", i)?.to_string(),
            pid: c.id32(pid_v, "pid")?,
            uid: c.id32(uid_v, "uid")?,
            unit: opt_string(unit_v),
            command: c.req(command.get(i), "command", i)?.to_string(),
            statement: s(&statement),
            target: s(&target),
            decision: Decision::parse(decision_v).ok_or_else(|| {
                c.bad(format!(
                    "column decision holds unknown value {decision_v:?}"
                ))
            })?,
            rule: s(&rule),
            approval_id: s(&approval_id),
            approver: s(&approver),
            rows: match rows.as_ref().and_then(|c| c.get(i)) {
                Some(v) => Some(c.count(v, "rows")?),
                None => None,
            },
            masked_values: c.count(
                c.req(masked_values.get(i), "masked_values", i)?,
                "masked_values",
            )?,
            error: s(&error),
            bytes_up: c.count(c.req(bytes_up.get(i), "bytes_up", i)?, "bytes_up")?,
            bytes_down: c.count(c.req(bytes_down.get(i), "bytes_down", i)?, "bytes_down")?,
            // Only finished commands are rolled into Parquet.
            done: true,
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------

/// How `interceptor audit` prints rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// Aligned columns, a subset that fits a terminal.
    #[default]
    Table,
    /// One JSON object per line, every column.
    Json,
    /// RFC 4180: a header, then every column.
    Csv,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            _ => Err(format!("unknown format {s:?}: use table, json or csv")),
        }
    }
}

/// One cell value, in the types of the Parquet columns.
#[derive(Debug, Clone, Copy)]
enum Value<'a> {
    Null,
    Str(&'a str),
    Int(i64),
    Bool(bool),
    Ts(i64),
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(v: Option<&'a str>) -> Self {
        v.map_or(Value::Null, Value::Str)
    }
}

fn int(v: u64) -> Value<'static> {
    Value::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

fn int_opt(v: Option<u64>) -> Value<'static> {
    v.map_or(Value::Null, int)
}

/// Every column of a session, in schema order.
fn session_values(s: &SessionRecord) -> [Value<'_>; 29] {
    [
        Value::Str(&s.session_id),
        Value::Str(&s.host),
        Value::Ts(s.started_at),
        s.ended_at.map_or(Value::Null, Value::Ts),
        Value::Str(&s.store),
        Value::Str(&s.protocol),
        Value::Str(&s.client_addr),
        Value::Str(&s.original_dst),
        s.upstream_addr.as_deref().into(),
        Value::Int(i64::from(s.pid)),
        s.ppid.map_or(Value::Null, |p| Value::Int(i64::from(p))),
        Value::Int(i64::from(s.uid)),
        Value::Int(i64::from(s.gid)),
        Value::Str(&s.comm),
        s.exe.as_deref().into(),
        s.cmdline.as_deref().into(),
        s.cgroup.as_deref().into(),
        s.unit.as_deref().into(),
        s.ci_job.as_deref().into(),
        Value::Bool(s.client_tls),
        Value::Bool(s.upstream_tls),
        s.db_user.as_deref().into(),
        s.database.as_deref().into(),
        int(s.bytes_up),
        int(s.bytes_down),
        int(s.commands),
        int(s.denied),
        int(s.masked_values),
        s.end_reason.as_deref().into(),
    ]
}

/// Every column of an event, in schema order.
fn event_values(e: &CommandEvent) -> [Value<'_>; 23] {
    [
        Value::Str(&e.event_id),
        Value::Str(&e.session_id),
        int(e.seq),
        Value::Ts(e.ts),
        e.duration_us.map_or(Value::Null, Value::Int),
        Value::Str(&e.host),
        Value::Str(&e.store),
        Value::Str(&e.protocol),
        Value::Int(i64::from(e.pid)),
        Value::Int(i64::from(e.uid)),
        e.unit.as_deref().into(),
        Value::Str(&e.command),
        e.statement.as_deref().into(),
        e.target.as_deref().into(),
        Value::Str(e.decision.as_str()),
        e.rule.as_deref().into(),
        e.approval_id.as_deref().into(),
        e.approver.as_deref().into(),
        int_opt(e.rows),
        int(e.masked_values),
        e.error.as_deref().into(),
        int(e.bytes_up),
        int(e.bytes_down),
    ]
}

/// Sessions as a table, JSON lines or CSV.
pub fn render_sessions(rows: &[SessionRecord], fmt: Format) -> String {
    match fmt {
        Format::Json => json_lines(&sessions_schema(), rows.iter().map(session_values)),
        Format::Csv => csv(&sessions_schema(), rows.iter().map(session_values)),
        Format::Table if rows.is_empty() => "no sessions\n".to_string(),
        Format::Table => {
            const COLS: [&str; 11] = [
                "started_at",
                "session_id",
                "store",
                "pid",
                "uid",
                "unit",
                "exe",
                "ci_job",
                "commands",
                "denied",
                "end_reason",
            ];
            let cells = rows.iter().map(|s| {
                vec![
                    Value::Ts(s.started_at),
                    Value::Str(&s.session_id),
                    Value::Str(&s.store),
                    Value::Int(i64::from(s.pid)),
                    Value::Int(i64::from(s.uid)),
                    s.unit.as_deref().into(),
                    s.exe.as_deref().into(),
                    s.ci_job.as_deref().into(),
                    int(s.commands),
                    int(s.denied),
                    s.end_reason.as_deref().into(),
                ]
            });
            table(&COLS, cells)
        }
    }
}

/// Events as a table, JSON lines or CSV.
pub fn render_events(rows: &[CommandEvent], fmt: Format) -> String {
    match fmt {
        Format::Json => json_lines(&events_schema(), rows.iter().map(event_values)),
        Format::Csv => csv(&events_schema(), rows.iter().map(event_values)),
        Format::Table if rows.is_empty() => "no events\n".to_string(),
        Format::Table => {
            const COLS: [&str; 11] = [
                "ts",
                "session_id",
                "seq",
                "store",
                "pid",
                "command",
                "decision",
                "rule",
                "target",
                "duration_us",
                "error",
            ];
            let cells = rows.iter().map(|e| {
                vec![
                    Value::Ts(e.ts),
                    Value::Str(&e.session_id),
                    int(e.seq),
                    Value::Str(&e.store),
                    Value::Int(i64::from(e.pid)),
                    Value::Str(&e.command),
                    Value::Str(e.decision.as_str()),
                    e.rule.as_deref().into(),
                    e.target.as_deref().into(),
                    e.duration_us.map_or(Value::Null, Value::Int),
                    e.error.as_deref().into(),
                ]
            });
            table(&COLS, cells)
        }
    }
}

/// Widest a table cell gets before it is cut with "…" (ids and timestamps
/// fit whole; `--format json|csv` has every value in full).
const MAX_CELL: usize = 48;

fn table<'a>(headers: &[&str], rows: impl Iterator<Item = Vec<Value<'a>>>) -> String {
    let mut numeric = vec![false; headers.len()];
    let rows: Vec<Vec<String>> = rows
        .map(|r| {
            r.iter()
                .enumerate()
                .map(|(i, v)| {
                    if let Value::Int(_) = v {
                        numeric[i] = true;
                    }
                    let text = match v {
                        Value::Null => "-".to_string(),
                        Value::Str(s) => truncate(&terminal_safe(s), MAX_CELL),
                        Value::Int(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        Value::Ts(t) => format_ts(*t, 3),
                    };
                    text
                })
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (i, cell) in r.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = (usize, &str)>| {
        let mut l = String::new();
        for (i, cell) in cells {
            if i > 0 {
                l.push_str("  ");
            }
            let pad = widths[i].saturating_sub(cell.chars().count());
            if numeric[i] {
                l.extend(std::iter::repeat_n(' ', pad));
                l.push_str(cell);
            } else {
                l.push_str(cell);
                l.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied().enumerate());
    for r in &rows {
        line(&mut r.iter().map(String::as_str).enumerate());
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// Control characters (newlines, ESC, C1 controls, DEL) escaped, so a value
/// a task chose cannot move the cursor or recolour the analyst's terminal.
fn terminal_safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for ch in s.chars() {
        match ch {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// RFC 3339 in UTC with `digits` fractional digits (3 or 6).
fn format_ts(us: i64, digits: u8) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        Some(t) if digits == 3 => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        None => us.to_string(),
    }
}

fn json_lines<'a, const N: usize>(
    schema: &SchemaRef,
    rows: impl Iterator<Item = [Value<'a>; N]>,
) -> String {
    let mut out = String::new();
    for row in rows {
        out.push('{');
        for (i, (field, v)) in schema.fields().iter().zip(row.iter()).enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::Value::from(field.name().as_str()).to_string());
            out.push(':');
            match v {
                Value::Null => out.push_str("null"),
                Value::Str(s) => out.push_str(&serde_json::Value::from(*s).to_string()),
                Value::Int(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Bool(b) => {
                    let _ = write!(out, "{b}");
                }
                Value::Ts(t) => {
                    out.push_str(&serde_json::Value::from(format_ts(*t, 6)).to_string())
                }
            }
        }
        out.push_str("}\n");
    }
    out
}

fn csv<'a, const N: usize>(
    schema: &SchemaRef,
    rows: impl Iterator<Item = [Value<'a>; N]>,
) -> String {
    let mut out = String::new();
    let header: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for row in rows {
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match v {
                Value::Null => {}
                Value::Str(s) => csv_field(&mut out, s),
                Value::Int(n) => {
                    let _ = write!(out, "{n}");
                }
                Value::Bool(b) => {
                    let _ = write!(out, "{b}");
                }
                Value::Ts(t) => out.push_str(&format_ts(*t, 6)),
            }
        }
        out.push('\n');
    }
    out
}

/// RFC 4180: a field with a comma, quote or line break is quoted, quotes
/// doubled.
fn csv_field(out: &mut String, s: &str) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// A session's identity, then every command in order with its decision and
/// timing, offsets relative to the session start.
pub fn render_replay(session: &SessionRecord, events: &[CommandEvent]) -> String {
    let s = session;
    let t = |v: &str| terminal_safe(v).into_owned();
    let o = |v: &Option<String>| v.as_deref().map_or_else(|| "-".to_string(), t);
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut out = String::new();
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{k:<10}{v}");
    };
    kv("session", t(&s.session_id));
    kv(
        "store",
        format!(
            "{} ({}) on host {}",
            t(&s.store),
            t(&s.protocol),
            t(&s.host)
        ),
    );
    kv(
        "process",
        format!(
            "pid {}  ppid {}  uid {}  gid {}  comm {}",
            s.pid,
            s.ppid.map_or_else(|| "-".to_string(), |p| p.to_string()),
            s.uid,
            s.gid,
            t(&s.comm)
        ),
    );
    kv("exe", o(&s.exe));
    kv("cmdline", o(&s.cmdline));
    kv("cgroup", o(&s.cgroup));
    kv("unit", o(&s.unit));
    kv("ci_job", o(&s.ci_job));
    kv(
        "client",
        format!("{} -> {} (dialled)", t(&s.client_addr), t(&s.original_dst)),
    );
    kv("upstream", o(&s.upstream_addr));
    kv(
        "tls",
        format!(
            "client {}, upstream {}",
            yes(s.client_tls),
            yes(s.upstream_tls)
        ),
    );
    kv(
        "database",
        format!("user {}, database {}", o(&s.db_user), o(&s.database)),
    );
    kv("started", format_ts(s.started_at, 3));
    kv(
        "ended",
        match s.ended_at {
            Some(e) => format!(
                "{} ({})",
                format_ts(e, 3),
                format_duration_s(e.saturating_sub(s.started_at))
            ),
            None => "- (not ended)".to_string(),
        },
    );
    kv("bytes", format!("up {}, down {}", s.bytes_up, s.bytes_down));
    kv(
        "commands",
        format!(
            "{} ({} denied, {} masked values)",
            s.commands, s.denied, s.masked_values
        ),
    );
    kv("end", o(&s.end_reason));

    out.push('\n');
    if events.is_empty() {
        out.push_str("no commands recorded\n");
        return out;
    }
    let offsets: Vec<String> = events
        .iter()
        .map(|e| format_offset(e.ts.saturating_sub(s.started_at)))
        .collect();
    let seqs: Vec<String> = events.iter().map(|e| format!("#{}", e.seq)).collect();
    let commands: Vec<String> = events
        .iter()
        .map(|e| truncate(&t(&e.command), 32))
        .collect();
    let w_off = offsets.iter().map(String::len).max().unwrap_or(0);
    let w_seq = seqs.iter().map(String::len).max().unwrap_or(0);
    let w_cmd = commands
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(0);
    let w_dec = events
        .iter()
        .map(|e| e.decision.as_str().len())
        .max()
        .unwrap_or(0);
    let indent = w_off + 2 + w_seq + 2;
    for (i, e) in events.iter().enumerate() {
        let text = match (&e.statement, &e.target) {
            (Some(st), _) => t(st),
            (None, Some(tg)) => t(tg),
            (None, None) => "-".to_string(),
        };
        let mut facts = Vec::new();
        if let (Some(_), Some(tg)) = (&e.statement, &e.target) {
            facts.push(format!("target {}", t(tg)));
        }
        if let Some(r) = e.rows {
            facts.push(format!("rows {r}"));
        }
        if let Some(d) = e.duration_us {
            facts.push(format!("{:.1} ms", d as f64 / 1000.0));
        }
        if e.masked_values > 0 {
            facts.push(format!("{} masked", e.masked_values));
        }
        let facts = if facts.is_empty() {
            String::new()
        } else {
            format!("  ({})", facts.join(", "))
        };
        let line = format!(
            "{:>w_off$}  {:>w_seq$}  {:<w_cmd$}  {:<w_dec$}  {text}{facts}",
            offsets[i],
            seqs[i],
            commands[i],
            e.decision.as_str(),
        );
        out.push_str(line.trim_end());
        out.push('\n');
        let mut details = Vec::new();
        if let Some(r) = &e.rule {
            details.push(format!("rule {}", t(r)));
        }
        if let Some(a) = &e.approval_id {
            details.push(format!("approval {}", t(a)));
        }
        if let Some(a) = &e.approver {
            details.push(format!("approver {}", t(a)));
        }
        if let Some(err) = &e.error {
            details.push(format!("error: {}", t(err)));
        }
        if !details.is_empty() {
            let _ = writeln!(out, "{:indent$}{}", "", details.join("  ·  "));
        }
    }
    out
}

/// "+12.345ms" from the session start (microsecond precision).
fn format_offset(us: i64) -> String {
    let sign = if us < 0 { "-" } else { "+" };
    let us = us.unsigned_abs();
    format!("{sign}{}.{:03}ms", us / 1000, us % 1000)
}

fn format_duration_s(us: i64) -> String {
    format!("{:.3} s", us as f64 / 1e6)
}

// ---------------------------------------------------------------------------
// Times on the command line
// ---------------------------------------------------------------------------

/// Parses `--since`/`--until`: RFC 3339 (`2026-11-29T10:00:00Z`), a UTC date
/// (`2026-11-29`), a UTC date and time (`2026-11-29 10:00:00`), or a
/// duration ago (`90s`, `15m`, `2h`, `7d`, `2w`), relative to `now_us`.
pub fn parse_time(s: &str, now_us: i64) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "invalid time {s:?}: use RFC 3339 (2026-11-29T10:00:00Z), a UTC date (2026-11-29), \
             a UTC date and time (\"2026-11-29 10:00:00\"), or a duration ago (90s, 15m, 2h, 7d)"
        )
    };
    if s == "now" {
        return Ok(now_us);
    }
    if let Some(unit) = s.chars().last().filter(|c| c.is_ascii_alphabetic()) {
        let digits = &s[..s.len() - unit.len_utf8()];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let n: i64 = digits.parse().map_err(|_| bad())?;
            let unit_us: i64 = match unit {
                's' => 1_000_000,
                'm' => 60_000_000,
                'h' => 3_600_000_000,
                'd' => US_PER_DAY,
                'w' => 7 * US_PER_DAY,
                _ => return Err(bad()),
            };
            let ago = n.checked_mul(unit_us).ok_or_else(bad)?;
            return now_us.checked_sub(ago).ok_or_else(bad);
        }
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_micros());
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        if let Some(t) = d.and_hms_opt(0, 0, 0) {
            return Ok(t.and_utc().timestamp_micros());
        }
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::parquet::tests::{event, session, write_dataset, DAY1, DAY2};
    use crate::audit::parquet::{commit, prepare_events, prepare_sessions};

    fn sorted_sessions(mut v: Vec<SessionRecord>) -> Vec<SessionRecord> {
        v.sort_by(|a, b| (a.started_at, &a.session_id).cmp(&(b.started_at, &b.session_id)));
        v
    }

    fn sorted_events(mut v: Vec<CommandEvent>) -> Vec<CommandEvent> {
        v.sort_by(|a, b| (a.ts, a.seq, &a.event_id).cmp(&(b.ts, b.seq, &b.event_id)));
        v
    }

    #[test]
    fn written_rows_read_back_equal() {
        let dir = tempfile::tempdir().unwrap();
        let (sessions, events) = write_dataset(dir.path());
        let got = read_sessions(dir.path(), &Filter::default()).unwrap();
        assert_eq!(got, sorted_sessions(sessions));
        let got = read_events(dir.path(), &Filter::default()).unwrap();
        assert_eq!(got, sorted_events(events));
    }

    #[test]
    fn missing_audit_dir_is_empty_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("nope");
        assert!(read_sessions(&none, &Filter::default()).unwrap().is_empty());
        assert!(read_events(&none, &Filter::default()).unwrap().is_empty());
        assert_eq!(render_sessions(&[], Format::Table), "no sessions\n");
        assert_eq!(render_events(&[], Format::Table), "no events\n");
        assert!(read_replay(&none, "0190aaaa-0000-7000-8000-000000000001")
            .unwrap()
            .is_none());
    }

    #[test]
    fn filters_select_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (sessions, events) = write_dataset(dir.path());
        let count_s = |f: Filter| read_sessions(dir.path(), &f).unwrap().len();
        let count_e = |f: Filter| read_events(dir.path(), &f).unwrap().len();
        let want_s = |p: &dyn Fn(&SessionRecord) -> bool| sessions.iter().filter(|s| p(s)).count();
        let want_e = |p: &dyn Fn(&CommandEvent) -> bool| events.iter().filter(|e| p(e)).count();

        let day2 = DAY2 - 10 * 3_600_000_000; // 2026-11-30T00:00:00Z
        assert_eq!(
            count_s(Filter {
                since: Some(day2),
                ..Default::default()
            }),
            4
        );
        assert_eq!(
            count_s(Filter {
                until: Some(day2),
                ..Default::default()
            }),
            6
        );
        assert_eq!(
            count_s(Filter {
                since: Some(DAY1 + 60_000_000),
                until: Some(DAY1 + 180_000_000),
                ..Default::default()
            }),
            2
        );
        assert_eq!(
            count_s(Filter {
                store: Some("vault".into()),
                ..Default::default()
            }),
            want_s(&|s| s.store == "vault")
        );
        assert_eq!(
            count_s(Filter {
                pid: Some(1003),
                ..Default::default()
            }),
            1
        );
        assert_eq!(
            count_s(Filter {
                uid: Some(1001),
                ..Default::default()
            }),
            want_s(&|s| s.uid == 1001)
        );
        assert_eq!(
            count_s(Filter {
                unit: Some("gitlab-runner.service".into()),
                ..Default::default()
            }),
            10
        );
        assert_eq!(
            count_s(Filter {
                unit: Some("other.service".into()),
                ..Default::default()
            }),
            0
        );
        let id = sessions[0].session_id.clone();
        assert_eq!(
            count_s(Filter {
                session_id: Some(id.clone()),
                ..Default::default()
            }),
            1
        );

        assert_eq!(
            count_e(Filter {
                since: Some(day2),
                ..Default::default()
            }),
            want_e(&|e| e.ts >= day2)
        );
        assert_eq!(
            count_e(Filter {
                decision: Some(Decision::Deny),
                ..Default::default()
            }),
            want_e(&|e| e.decision == Decision::Deny)
        );
        assert_eq!(
            count_e(Filter {
                session_id: Some(id.clone()),
                ..Default::default()
            }),
            want_e(&|e| e.session_id == id)
        );
        assert_eq!(
            count_e(Filter {
                store: Some("ci-db".into()),
                pid: Some(1002),
                ..Default::default()
            }),
            want_e(&|e| e.store == "ci-db" && e.pid == 1002)
        );
        let denied = read_events(
            dir.path(),
            &Filter {
                decision: Some(Decision::Deny),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!denied.is_empty());
        assert!(denied
            .iter()
            .all(|e| e.decision == Decision::Deny && e.rule.as_deref() == Some("no-ddl")));
    }

    #[test]
    fn partitions_outside_the_window_are_not_opened() {
        let dir = tempfile::tempdir().unwrap();
        write_dataset(dir.path());
        // A damaged file on day 1 only bites when day 1 is read.
        let bad = dir.path().join("events/dt=2026-11-29/part-zzzz.parquet");
        fs::write(&bad, b"not parquet").unwrap();
        let day2 = DAY2 - 10 * 3_600_000_000;
        assert!(read_events(
            dir.path(),
            &Filter {
                since: Some(day2),
                ..Default::default()
            }
        )
        .is_ok());
        let err = read_events(dir.path(), &Filter::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains(&*bad.to_string_lossy()), "{err}");
        // Files that are not `part-*.parquet` (a copy in progress) are ignored.
        fs::rename(
            &bad,
            dir.path()
                .join("events/dt=2026-11-29/part-zzzz.parquet.tmp"),
        )
        .unwrap();
        assert!(read_events(dir.path(), &Filter::default()).is_ok());
    }

    #[test]
    fn replay_finds_the_session_and_its_commands_in_order() {
        let dir = tempfile::tempdir().unwrap();
        // A real UUIDv7 id, so the partition narrowing is exercised.
        let mut s = session(4, DAY1);
        s.session_id = uuid::Uuid::now_v7().to_string();
        s.started_at = crate::audit::now_us();
        s.ended_at = Some(s.started_at + 2_000_000);
        let events: Vec<_> = (1..=4).map(|q| event(&s, q)).rev().collect();
        let mut p = prepare_sessions(dir.path(), &[s.view()]).unwrap();
        p.extend(prepare_events(dir.path(), &crate::audit::parquet::tests::ev(&events)).unwrap());
        commit(&p).unwrap();
        write_dataset(dir.path());

        let (got, evs) = read_replay(dir.path(), &s.session_id).unwrap().unwrap();
        assert_eq!(got, s);
        assert_eq!(evs.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        let text = render_replay(&got, &evs);
        assert!(
            text.contains(&format!("session   {}", s.session_id)),
            "{text}"
        );
        assert!(
            text.contains("pid 1004  ppid -  uid 1001  gid 1001  comm psql"),
            "{text}"
        );
        assert!(text.contains("127.0.0.1:40004 -> 10.0.0.5:5432"), "{text}");
        assert!(text.contains("(2.000 s)"), "{text}");
        assert!(text.contains("+1.345ms  #1  SELECT  allow  SELECT * FROM t WHERE id = $1  (target public.t, rows 10, 1.2 ms, 1 masked)"), "{text}");
        assert!(text.contains("rule no-ddl"), "{text}");
        assert!(text.contains("error: server said: \"boom\""), "{text}");
        assert!(
            text.contains("psql -h db, \"quoted\"\\nnext line"),
            "newline escaped: {text}"
        );

        // Ids that are not UUIDv7 are found by a full scan.
        let old = &write_dataset(dir.path()).0[0];
        assert!(read_replay(dir.path(), &old.session_id).unwrap().is_some());
        assert!(read_replay(dir.path(), "no-such-session")
            .unwrap()
            .is_none());
    }

    #[test]
    fn table_is_aligned_and_terminal_safe() {
        let mut s = session(1, DAY1);
        s.exe = Some("/tmp/\u{1b}[2Jevil".into());
        let t = render_sessions(&[s.clone(), session(2, DAY1 + 1)], Format::Table);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(
            lines[0].starts_with("started_at                session_id"),
            "{t}"
        );
        assert!(
            lines[1].starts_with(
                "2026-11-29T10:00:00.000Z  0190aaaa-0000-7000-8000-000000000001  vault"
            ),
            "{t}"
        );
        assert!(!t.contains('\u{1b}'), "{t}");
        assert!(t.contains("/tmp/\\u{1b}[2Jevil"), "{t}");
        let col = lines[0].find("session_id").unwrap();
        assert!(lines
            .iter()
            .all(|l| l[col..].starts_with("0190") || l[col..].starts_with("session_id")));

        let e = render_events(&[event(&s, 3)], Format::Table);
        assert!(e.starts_with("ts                        session_id"), "{e}");
        assert!(e.contains("  error  "), "{e}");
    }

    #[test]
    fn csv_quotes_per_rfc_4180() {
        let s = session(1, DAY1);
        let out = render_sessions(std::slice::from_ref(&s), Format::Csv);
        let (header, body) = out.split_once('\n').unwrap();
        assert_eq!(header.split(',').count(), 29);
        assert!(header.starts_with("session_id,host,started_at,ended_at,store"));
        assert!(body.starts_with("0190aaaa-0000-7000-8000-000000000001,ci-host-1,2026-11-29T10:00:00.000000Z,2026-11-29T10:00:01.500000Z,vault,http,"), "{body}");
        assert!(
            body.contains(",\"psql -h db, \"\"quoted\"\"\nnext line\","),
            "{body}"
        );
        assert!(body.contains(",true,") && body.contains(",,"), "{body}");

        let mut buf = String::new();
        csv_field(&mut buf, "plain");
        csv_field(&mut buf, "a,b");
        csv_field(&mut buf, "say \"hi\"");
        csv_field(&mut buf, "cr\rlf");
        assert_eq!(buf, "plain\"a,b\"\"say \"\"hi\"\"\"\"cr\rlf\"");

        let e = render_events(&[event(&s, 3)], Format::Csv);
        assert!(e
            .lines()
            .next()
            .unwrap()
            .ends_with(",error,bytes_up,bytes_down"));
        assert!(e.contains(",\"server said: \"\"boom\"\"\","), "{e}");
    }

    #[test]
    fn json_lines_have_every_column_in_order() {
        let s = session(3, DAY1);
        let out = render_sessions(std::slice::from_ref(&s), Format::Json);
        assert_eq!(out.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(out.trim_end()).unwrap();
        let obj = v.as_object().unwrap();
        assert_eq!(obj.len(), 29);
        assert_eq!(v["started_at"], "2026-11-29T10:00:00.000000Z");
        assert_eq!(v["ended_at"], serde_json::Value::Null);
        assert_eq!(v["pid"], 1003);
        assert_eq!(v["cmdline"], "psql -h db, \"quoted\"\nnext line");
        assert!(
            out.starts_with("{\"session_id\":\"0190aaaa-0000-7000-8000-000000000003\",\"host\":")
        );

        let e = event(&s, 4);
        let out = render_events(&[e.clone(), event(&s, 5)], Format::Json);
        assert_eq!(out.lines().count(), 2);
        let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert_eq!(v.as_object().unwrap().len(), 23);
        assert_eq!(v["decision"], "deny");
        assert_eq!(v["seq"], 4);
        assert_eq!(v["rows"], serde_json::Value::Null);
    }

    #[test]
    fn parse_time_cases() {
        let now = 1_800_000_000_000_000;
        assert_eq!(parse_time("2026-11-29T10:00:00Z", now), Ok(DAY1));
        assert_eq!(parse_time("2026-11-29T11:00:00+01:00", now), Ok(DAY1));
        assert_eq!(
            parse_time("2026-11-29T10:00:00.5Z", now),
            Ok(DAY1 + 500_000)
        );
        assert_eq!(parse_time("2026-11-29", now), Ok(DAY1 - 10 * 3_600_000_000));
        assert_eq!(parse_time("2026-11-29 10:00:00", now), Ok(DAY1));
        assert_eq!(parse_time("2026-11-29T10:00:00", now), Ok(DAY1));
        assert_eq!(parse_time("90s", now), Ok(now - 90_000_000));
        assert_eq!(parse_time("15m", now), Ok(now - 15 * 60_000_000));
        assert_eq!(parse_time("2h", now), Ok(now - 2 * 3_600_000_000));
        assert_eq!(parse_time("7d", now), Ok(now - 7 * US_PER_DAY));
        assert_eq!(parse_time("now", now), Ok(now));
        for bad in [
            "",
            "yesterday",
            "10x",
            "-5m",
            "2026-13-01",
            "m",
            "99999999999999999999d",
        ] {
            let err = parse_time(bad, now).unwrap_err();
            assert!(err.contains("RFC 3339"), "{bad}: {err}");
        }
    }

    #[test]
    fn format_parses() {
        assert_eq!("csv".parse::<Format>(), Ok(Format::Csv));
        assert!("xml"
            .parse::<Format>()
            .unwrap_err()
            .contains("table, json or csv"));
    }

    /// DuckDB and pyarrow read the dataset with hive partitioning, with the
    /// column names and types of DESIGN.md.
    #[test]
    fn duckdb_and_pyarrow_read_the_dataset() {
        let probe = std::process::Command::new("python3")
            .args(["-c", "import duckdb, pyarrow, pyarrow.dataset"])
            .output();
        match probe {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!(
                "python3 cannot import duckdb and pyarrow ({}): run `cargo xtask setup`",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => panic!("cannot run python3 ({e}): run `cargo xtask setup`"),
        }
        let dir = tempfile::tempdir().unwrap();
        let (_, events) = write_dataset(dir.path());
        // Staging leftovers must not be picked up by the globs.
        prepare_events(dir.path(), &crate::audit::parquet::tests::ev(&events)).unwrap();
        let min_ts = format_ts(events.iter().map(|e| e.ts).min().unwrap(), 6);
        let script = r#"
import sys, duckdb, pyarrow as pa, pyarrow.dataset as ds
root = sys.argv[1]
n_events, min_ts = int(sys.argv[2]), sys.argv[3]
con = duckdb.connect()
con.execute("SET TimeZone='UTC'")
count, mn = con.execute(
    f"SELECT count(*), strftime(min(ts), '%Y-%m-%dT%H:%M:%S.%fZ') FROM read_parquet('{root}/events/**/*.parquet', hive_partitioning=true)"
).fetchone()
assert count == n_events, (count, n_events)
assert mn == min_ts, (mn, min_ts)
def duck_types(kind):
    rel = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{root}/{kind}/**/*.parquet', hive_partitioning=true)").fetchall()
    return [(r[0], r[1]) for r in rel]
ev = duck_types("events")
ses = duck_types("sessions")
assert ev[-1][0] == "dt" and ses[-1][0] == "dt", (ev[-1], ses[-1])
want_ev = [("event_id","VARCHAR"),("session_id","VARCHAR"),("seq","BIGINT"),("ts","TIMESTAMP WITH TIME ZONE"),("duration_us","BIGINT"),("host","VARCHAR"),("store","VARCHAR"),("protocol","VARCHAR"),("pid","BIGINT"),("uid","BIGINT"),("unit","VARCHAR"),("command","VARCHAR"),("statement","VARCHAR"),("target","VARCHAR"),("decision","VARCHAR"),("rule","VARCHAR"),("approval_id","VARCHAR"),("approver","VARCHAR"),("rows","BIGINT"),("masked_values","BIGINT"),("error","VARCHAR"),("bytes_up","BIGINT"),("bytes_down","BIGINT")]
assert ev[:-1] == want_ev, ev
denied = con.execute(f"SELECT count(*) FROM read_parquet('{root}/events/**/*.parquet', hive_partitioning=true) WHERE decision = 'deny' AND dt = '2026-11-30'").fetchone()[0]
assert denied > 0, denied
d = ds.dataset(root + "/sessions", format="parquet", partitioning="hive")
s = d.schema
want_s = [("session_id",pa.string(),False),("host",pa.string(),False),("started_at",pa.timestamp("us",tz="UTC"),False),("ended_at",pa.timestamp("us",tz="UTC"),True),("store",pa.string(),False),("protocol",pa.string(),False),("client_addr",pa.string(),False),("original_dst",pa.string(),False),("upstream_addr",pa.string(),True),("pid",pa.int64(),False),("ppid",pa.int64(),True),("uid",pa.int64(),False),("gid",pa.int64(),False),("comm",pa.string(),False),("exe",pa.string(),True),("cmdline",pa.string(),True),("cgroup",pa.string(),True),("unit",pa.string(),True),("ci_job",pa.string(),True),("client_tls",pa.bool_(),False),("upstream_tls",pa.bool_(),False),("db_user",pa.string(),True),("database",pa.string(),True),("bytes_up",pa.int64(),False),("bytes_down",pa.int64(),False),("commands",pa.int64(),False),("denied",pa.int64(),False),("masked_values",pa.int64(),False),("end_reason",pa.string(),True)]
got = [(f.name, f.type, f.nullable) for f in s]
assert got[:-1] == want_s, got
assert got[-1][0] == "dt", got[-1]
t = d.to_table()
assert t.num_rows == 10, t.num_rows
assert sorted(set(t.column("dt").to_pylist())) == ["2026-11-29", "2026-11-30"] or sorted(set(str(x) for x in t.column("dt").to_pylist())) == ["2026-11-29", "2026-11-30"]
e = ds.dataset(root + "/events", format="parquet", partitioning="hive").to_table()
assert e.num_rows == n_events
assert e.schema.field("ts").type == pa.timestamp("us", tz="UTC")
print("ok", count, mn)
"#;
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(dir.path())
            .arg(events.len().to_string())
            .arg(&min_ts)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python check failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{}", String::from_utf8_lossy(&out.stdout).trim());
    }
}
