//! `policy::sql::analyze` on arbitrary text (invalid UTF-8 replaced), and the
//! default policy's SQL rules matched against the result, on a thread with a
//! 2 MiB stack like a tokio worker's: hostile SQL must neither panic nor
//! overflow the stack. The first line of the input is also used as a rule
//! glob against every function and relation found. Every parsed statement
//! also goes through the masking check (`policy::mask_sql::check`) with the
//! default policy's column patterns and no catalog.
#![no_main]

use std::path::Path;
use std::sync::{mpsc, Mutex, OnceLock};

use interceptor::config::Config;
use interceptor::mask::ColumnPatterns;
use interceptor::policy::mask_sql::{check as mask_check, MaskCatalog};
use interceptor::policy::sql::{analyze_parsed, Glob, SqlRule};
use libfuzzer_sys::fuzz_target;

/// tokio's default worker thread stack.
const STACK: usize = 2 * 1024 * 1024;

/// One long-lived analyzer thread (spawning one per input would cost more
/// than most analyses). A panic or stack overflow there aborts the process,
/// which libFuzzer reports as a crash with the input that caused it.
struct Worker {
    jobs: mpsc::SyncSender<String>,
    done: mpsc::Receiver<()>,
}

fn worker() -> &'static Mutex<Worker> {
    static WORKER: OnceLock<Mutex<Worker>> = OnceLock::new();
    WORKER.get_or_init(|| {
        let (jobs, inbox) = mpsc::sync_channel::<String>(0);
        let (done_tx, done) = mpsc::sync_channel(0);
        std::thread::Builder::new()
            .name("sql-analyze".into())
            .stack_size(STACK)
            .spawn(move || {
                let rules = default_rules();
                for sql in inbox {
                    check(&sql, &rules);
                    if done_tx.send(()).is_err() {
                        return;
                    }
                }
            })
            .expect("spawn the analyzer thread");
        Mutex::new(Worker { jobs, done })
    })
}

/// The SQL rules of policies/default.toml.
fn default_rules() -> Vec<SqlRule> {
    let path = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../policies/default.toml"
    ));
    let cfg = Config::load(path).expect("policies/default.toml is valid");
    cfg.rules
        .iter()
        .filter_map(|r| r.sql.as_ref())
        .map(SqlRule::from_config)
        .collect()
}

fn check(sql: &str, rules: &[SqlRule]) {
    let (analysis, parsed) = analyze_parsed(sql);
    assert_eq!(analysis.statements.len(), parsed.len());
    let patterns = ColumnPatterns::new(&[
        "password".to_string(),
        "*_token".to_string(),
        "users.api_key".to_string(),
    ]);
    let catalog = MaskCatalog::empty();
    for statement in parsed.iter().flatten() {
        let _ = mask_check(statement, &catalog, &patterns);
    }
    for rule in rules {
        if let Some(m) = rule.matches(&analysis) {
            if let Some(i) = m.statement_index {
                assert!(i < analysis.statements.len());
            }
        }
    }
    let glob = Glob::new(sql.lines().next().unwrap_or(""));
    for s in &analysis.statements {
        for name in s.functions.iter().chain(&s.relations) {
            let _ = glob.matches(name);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let sql = String::from_utf8_lossy(data).into_owned();
    let w = worker().lock().expect("worker lock");
    w.jobs.send(sql).expect("the analyzer thread is gone");
    w.done.recv().expect("the analyzer thread is gone");
});
