//! `cargo xtask sql-corpus`: how much of the SQL a real PostgreSQL accepts
//! the policy analyzer can read.
//!
//! Runs PostgreSQL's own regression scripts (`src/test/regress/sql/*.sql` of
//! PostgreSQL 15, the server's major version) with psql against a real,
//! throwaway PostgreSQL 15 that logs every statement it completed
//! (`log_min_duration_statement = 0`: a statement that fails is not logged).
//! Each of those statements, exactly as the server received it (psql
//! variables already substituted), goes through
//! [`interceptor::policy::sql::analyze`]; the share that parses is the
//! share of real SQL the policy checks rather than refuses as unparsable.
//!
//! Prints the share and the most common failures (statement kind and
//! parser error), and writes every statement the analyzer cannot parse to
//! `OUT/unparsed.sql` and the summary to `OUT/report.txt`.
//!
//! Usage (as root; `cargo xtask sql-corpus` fetches the corpus and passes
//! the paths):
//!   interceptor-sql-corpus --corpus DIR --out DIR [--only NAME,NAME]

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    thread,
    time::{Duration, Instant},
};

use interceptor::policy::sql::analyze;
use interceptor_tests::{
    pg::{Auth, PgOptions, PgServer},
    require_root,
};

/// Each log entry of the corpus server starts with this, on a new line.
const PREFIX: &str = "@@interceptor-corpus@@ ";
/// What precedes a completed simple-protocol statement in its log entry.
const STATEMENT: &str = "  statement: ";
/// A script that runs longer than this is stopped (its statements so far
/// count); PostgreSQL's own runner has no such limit, but nothing here
/// should come near it.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The database the scripts run in, as in `make installcheck`.
const DATABASE: &str = "regression";

struct Args {
    corpus: PathBuf,
    out: PathBuf,
    only: Option<Vec<String>>,
}

fn parse_args() -> Result<Args, String> {
    let mut corpus = None;
    let mut out = None;
    let mut only = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--corpus" => corpus = Some(PathBuf::from(value()?)),
            "--out" => out = Some(PathBuf::from(value()?)),
            "--only" => {
                only = Some(
                    value()?
                        .split(',')
                        .map(|s| s.trim_end_matches(".sql").to_string())
                        .collect(),
                )
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        corpus: corpus.ok_or("--corpus DIR is required")?,
        out: out.ok_or("--out DIR is required")?,
        only,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("interceptor-sql-corpus: {e}");
            eprintln!("usage: interceptor-sql-corpus --corpus DIR --out DIR [--only NAME,NAME]");
            return ExitCode::from(2);
        }
    };
    require_root();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interceptor-sql-corpus: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The regression scripts in the order the corpus is run: `test_setup`
/// first (the tables the others read), then by name.
fn scripts(args: &Args) -> Result<Vec<PathBuf>, String> {
    let dir = fs::read_dir(&args.corpus)
        .map_err(|e| format!("cannot read the corpus {}: {e}", args.corpus.display()))?;
    let mut files: Vec<PathBuf> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .filter(|p| match &args.only {
            Some(only) => only
                .iter()
                .any(|o| p.file_stem().is_some_and(|s| s == o.as_str())),
            None => true,
        })
        .collect();
    files.sort_by_key(|p| {
        let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned());
        (stem.as_deref() != Some("test_setup"), stem)
    });
    if files.is_empty() {
        return Err(format!("no .sql scripts in {}", args.corpus.display()));
    }
    Ok(files)
}

fn run(args: &Args) -> Result<(), String> {
    let files = scripts(args)?;
    fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("==> starting a throwaway PostgreSQL 15 that logs every completed statement");
    let pg = PgServer::start(PgOptions::new(Auth::Trust, false));
    pg.admin_sql(
        "postgres",
        &format!(
            "ALTER SYSTEM SET log_min_duration_statement = 0;\n\
             ALTER SYSTEM SET log_connections = off;\n\
             ALTER SYSTEM SET log_line_prefix = '{PREFIX}';\n\
             SELECT pg_reload_conf();\n\
             CREATE DATABASE {DATABASE};\n"
        ),
    );
    // A new session sees the new settings once the postmaster has reread
    // its configuration.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.admin_sql("postgres", "SHOW log_line_prefix").trim() != PREFIX.trim_end() {
        if Instant::now() > deadline {
            return Err("the server did not take the logging settings".into());
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Scripts write files of their own (\o, \g file): somewhere disposable.
    let cwd = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
    let log_start = fs::metadata(pg.log_path()).map(|m| m.len()).unwrap_or(0);
    println!(
        "==> running {} regression scripts from {} with psql",
        files.len(),
        args.corpus.display()
    );
    let started = Instant::now();
    let mut stopped = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if !run_script(&pg, file, cwd.path())? {
            stopped.push(file.file_name().map(|n| n.to_string_lossy().into_owned()));
        }
        if (i + 1) % 25 == 0 || i + 1 == files.len() {
            println!(
                "    {}/{} scripts, {:.0} s",
                i + 1,
                files.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    for name in stopped.iter().flatten() {
        println!("    {name}: stopped after {} s", SCRIPT_TIMEOUT.as_secs());
    }
    let log = fs::read(pg.log_path()).map_err(|e| format!("{}: {e}", pg.log_path().display()))?;
    let log = String::from_utf8_lossy(&log[log_start.min(log.len() as u64) as usize..]);
    let statements = completed_statements(&log);
    println!(
        "==> analyzing the {} statements the server completed",
        statements.len()
    );
    let report = Report::of(&statements);
    let text = report.text();
    print!("{text}");
    fs::write(args.out.join("report.txt"), &text).map_err(|e| format!("report.txt: {e}"))?;
    let mut unparsed = String::new();
    for (sql, error) in &report.unparsed {
        unparsed.push_str(&format!("-- {error}\n{sql};\n\n"));
    }
    fs::write(args.out.join("unparsed.sql"), unparsed).map_err(|e| format!("unparsed.sql: {e}"))?;
    println!(
        "    every unparsed statement: {}",
        args.out.join("unparsed.sql").display()
    );
    Ok(())
}

/// Runs one script with psql as the superuser. False if it was stopped for
/// running too long.
fn run_script(pg: &PgServer, file: &Path, cwd: &Path) -> Result<bool, String> {
    let mut child = pg
        .superuser_psql(DATABASE)
        .current_dir(cwd)
        .env("PGOPTIONS", "-c statement_timeout=30s")
        .arg("-f")
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start psql: {e}"))?;
    let deadline = Instant::now() + SCRIPT_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return Ok(true),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
            Err(e) => return Err(format!("waiting for psql: {e}")),
        }
    }
}

/// The text of every `duration: ... statement: SQL` entry of the log. The
/// server writes a multi-line message with a tab before each continuation
/// line, so a line is an entry's own when it starts with a tab.
fn completed_statements(log: &str) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    let mut open = false;
    for line in log.split('\n') {
        if let Some(rest) = line.strip_prefix(PREFIX) {
            entries.push(rest.to_string());
            open = true;
        } else if let (true, Some(more), Some(entry)) =
            (open, line.strip_prefix('\t'), entries.last_mut())
        {
            entry.push('\n');
            entry.push_str(more);
        } else {
            open = false;
        }
    }
    entries
        .into_iter()
        .filter_map(|entry| {
            let rest = entry.strip_prefix("LOG:  duration: ")?;
            let at = rest.find(STATEMENT)?;
            Some(rest[at + STATEMENT.len()..].to_string())
        })
        .filter(|s| !s.trim().is_empty())
        .collect()
}

struct Report {
    total: usize,
    parsed: usize,
    /// (kind, parser error without its position) -> count.
    failures: BTreeMap<(String, String), usize>,
    unparsed: Vec<(String, String)>,
}

impl Report {
    fn of(statements: &[String]) -> Report {
        let mut report = Report {
            total: statements.len(),
            parsed: 0,
            failures: BTreeMap::new(),
            unparsed: Vec::new(),
        };
        for sql in statements {
            let a = analyze(sql);
            match a.statements.iter().find(|s| s.error.is_some()) {
                None => report.parsed += 1,
                Some(s) => {
                    let error = s.error.clone().unwrap_or_default();
                    let key = (s.kind.clone(), without_position(&error));
                    *report.failures.entry(key).or_default() += 1;
                    report.unparsed.push((sql.clone(), error));
                }
            }
        }
        report
    }

    fn text(&self) -> String {
        let share = if self.total == 0 {
            0.0
        } else {
            100.0 * self.parsed as f64 / self.total as f64
        };
        let mut t = format!(
            "statements the server completed: {}\n\
             parsed by the analyzer:          {} ({share:.2}%)\n\
             unparsable (denied by default):  {}\n",
            self.total,
            self.parsed,
            self.total - self.parsed
        );
        let mut by_count: Vec<_> = self.failures.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        if !by_count.is_empty() {
            t.push_str("most common failures (count, statement kind, parser error):\n");
        }
        for ((kind, error), n) in by_count.iter().take(60) {
            t.push_str(&format!("  {n:>5}  {kind:<24} {error}\n"));
        }
        if by_count.len() > 60 {
            t.push_str(&format!("  ... and {} more kinds\n", by_count.len() - 60));
        }
        t
    }
}

/// sqlparser's error without ` at Line: N, Column: M`, so equal errors group.
fn without_position(error: &str) -> String {
    let e = match error.find(" at Line: ") {
        Some(i) => &error[..i],
        None => error,
    };
    let e = e.strip_prefix("sql parser error: ").unwrap_or(e);
    if e.len() > 90 {
        let cut = (0..=90).rev().find(|&i| e.is_char_boundary(i)).unwrap_or(0);
        format!("{}...", &e[..cut])
    } else {
        e.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_read_from_the_log_and_failures_are_not() {
        let log = format!(
            "{PREFIX}LOG:  duration: 0.101 ms  statement: SELECT 1;\n\
             {PREFIX}ERROR:  relation \"x\" does not exist\n\
             {PREFIX}STATEMENT:  SELECT * FROM x;\n\
             2026-12-07 06:20:50.174 UTC [8709] LOG:  not ours\n\
             \tnot ours either\n\
             {PREFIX}LOG:  duration: 1.5 ms  statement: SELECT\n\t\t'a\n\tb';\n"
        );
        assert_eq!(
            completed_statements(&log),
            vec!["SELECT 1;".to_string(), "SELECT\n\t'a\nb';".to_string()]
        );
    }

    #[test]
    fn errors_group_without_their_position() {
        assert_eq!(
            without_position(
                "sql parser error: Expected: end of statement, found: x at Line: 1, Column: 8"
            ),
            "Expected: end of statement, found: x"
        );
    }
}
