//! Who opened a connection: what the kernel recorded at connect time,
//! enriched from /proc at accept time.
//!
//! The connect hook can only see the tgid, tid, uid, gid, comm and cgroup id.
//! Everything else (executable, command line, parent, systemd unit, CI job)
//! is read here from /proc, and that races with the task: a short-lived
//! `psql -c` may have exited, and its pid may even have been reused, by the
//! time the proxy accepts. So the kernel fields are always kept as given,
//! /proc data is only used when it still looks like the same task, and
//! nothing here ever fails: a missing piece is `None` and `proc_gone` says
//! why.

use std::{collections::BTreeMap, fs, io::Read, path::Path};

use serde::Serialize;

/// Environment variables copied from a task's environment into
/// [`Identity::ci_env`]: CI job, run and project identifiers only. A task's
/// environment is full of secrets (tokens, passwords, cloud keys), so this is
/// an allow-list and nothing else is ever kept; URLs are left out too, since
/// they may embed credentials.
pub const CI_ENV_VARS: &[&str] = &[
    // GitHub Actions
    "GITHUB_RUN_ID",
    "GITHUB_RUN_ATTEMPT",
    "GITHUB_JOB",
    "GITHUB_WORKFLOW",
    "GITHUB_REPOSITORY",
    "GITHUB_ACTOR",
    // GitLab CI
    "CI_JOB_ID",
    "CI_JOB_NAME",
    "CI_PIPELINE_ID",
    "CI_PROJECT_PATH",
    "CI_COMMIT_SHA",
    // Buildkite
    "BUILDKITE_JOB_ID",
    "BUILDKITE_BUILD_ID",
    "BUILDKITE_PIPELINE_SLUG",
    // Jenkins
    "BUILD_TAG",
    "BUILD_ID",
    "BUILD_NUMBER",
    "JOB_NAME",
    // CircleCI
    "CIRCLE_BUILD_NUM",
    "CIRCLE_JOB",
    "CIRCLE_PROJECT_REPONAME",
    // Drone
    "DRONE_BUILD_NUMBER",
    "DRONE_REPO",
    // TeamCity
    "TEAMCITY_PROJECT_NAME",
    "TEAMCITY_BUILDCONF_NAME",
];

/// Longest value kept for one CI variable.
const MAX_CI_VALUE: usize = 256;
/// Most of /proc/PID/environ read; environments can be large.
const MAX_ENVIRON: u64 = 1 << 20;
/// Longest command line kept.
const MAX_CMDLINE: usize = 4096;
/// The kernel's comm is TASK_COMM_LEN (16) bytes including the NUL.
const COMM_LEN: usize = 15;

/// What the connect hook recorded for the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelIdentity {
    pub tgid: u32,
    pub tid: u32,
    /// Real uid and gid of the connecting thread.
    pub uid: u32,
    pub gid: u32,
    /// The connecting thread's name (at most 15 bytes).
    pub comm: String,
    pub cgroup_id: u64,
}

/// Everything known about the task behind a connection.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Arguments joined by spaces, shell-quoted where needed, at most 4096 bytes.
    pub cmdline: Option<String>,
    /// The cgroup v2 path, relative to the cgroup2 mount.
    pub cgroup: Option<String>,
    /// The systemd service or scope the task runs in.
    pub unit: Option<String>,
    /// A short description of the CI job, e.g. "github:org/repo run 123 job build".
    pub ci_job: Option<String>,
    /// The [`CI_ENV_VARS`] present in the task's environment.
    pub ci_env: BTreeMap<String, String>,
    pub cgroup_id: u64,
    /// The task had exited (or its pid belonged to another task) before /proc
    /// could be read: only the kernel fields are trustworthy.
    pub proc_gone: bool,
}

impl Identity {
    pub fn resolve(k: KernelIdentity) -> Identity {
        Identity::resolve_from(Path::new("/proc"), k)
    }

    /// [`Identity::resolve`] against another procfs root (tests).
    pub fn resolve_from(proc_root: &Path, k: KernelIdentity) -> Identity {
        let comm = k.comm.trim_end_matches('\0').to_string();
        let mut id = Identity {
            pid: k.tgid,
            tid: k.tid,
            ppid: None,
            uid: k.uid,
            gid: k.gid,
            comm,
            exe: None,
            cmdline: None,
            cgroup: None,
            unit: None,
            ci_job: None,
            ci_env: BTreeMap::new(),
            cgroup_id: k.cgroup_id,
            proc_gone: true,
        };
        let process = proc_root.join(k.tgid.to_string());
        // The connecting thread's own directory when it still exists: its
        // comm, credentials and cgroup are the ones the kernel recorded (a
        // runtime's worker threads are often named differently from the
        // process). Its presence under this tgid also confirms the pid.
        let thread = process.join("task").join(k.tid.to_string());
        let task = if k.tid != 0 && thread.is_dir() {
            thread
        } else {
            process.clone()
        };
        let Some(status) = read_limited(&task.join("status"), 64 * 1024) else {
            return id;
        };
        let status = String::from_utf8_lossy(&status);
        if !same_task(&id, &status, &task) {
            return id;
        }
        id.proc_gone = false;
        id.ppid = status_field(&status, "PPid:").and_then(|v| v.parse().ok());
        id.exe = fs::read_link(process.join("exe")).ok().map(|p| {
            let p = p.to_string_lossy();
            p.strip_suffix(" (deleted)").unwrap_or(&p).to_string()
        });
        id.cmdline = read_limited(&process.join("cmdline"), 2 * MAX_CMDLINE as u64)
            .and_then(|raw| render_cmdline(&raw));
        id.cgroup = read_limited(&task.join("cgroup"), 64 * 1024)
            .and_then(|raw| cgroup_v2_path(&String::from_utf8_lossy(&raw)));
        id.unit = id.cgroup.as_deref().and_then(unit_from_cgroup_path);
        if let Some(environ) = read_limited(&process.join("environ"), MAX_ENVIRON) {
            id.ci_env = ci_env_from_environ(&environ, environ.len() as u64 >= MAX_ENVIRON);
        }
        id.ci_job = ci_job(&id.ci_env);
        id
    }
}

/// Cheap guard against pid reuse: the /proc entry must have the uid and
/// comm the kernel recorded at connect time.
fn same_task(id: &Identity, status: &str, task: &Path) -> bool {
    let real_uid =
        status_field(status, "Uid:").and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
    if real_uid != Some(id.uid) {
        return false;
    }
    let Some(comm) = read_limited(&task.join("comm"), 64) else {
        return false;
    };
    let comm = String::from_utf8_lossy(&comm);
    let comm = comm.trim_end_matches('\n');
    prefix(comm, COMM_LEN) == prefix(&id.comm, COMM_LEN)
}

fn prefix(s: &str, n: usize) -> &[u8] {
    &s.as_bytes()[..s.len().min(n)]
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// Reads at most `limit` bytes; `None` when the file cannot be read.
fn read_limited(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// The path on the `0::` (cgroup v2) line of /proc/PID/cgroup.
fn cgroup_v2_path(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let path = path.strip_suffix(" (deleted)").unwrap_or(path);
    (!path.is_empty()).then(|| path.to_string())
}

/// The systemd unit a cgroup path belongs to: its deepest `.service` or
/// `.scope` component.
pub fn unit_from_cgroup_path(path: &str) -> Option<String> {
    path.split('/')
        .rev()
        .find(|c| {
            let name = c
                .strip_suffix(".service")
                .or_else(|| c.strip_suffix(".scope"));
            name.is_some_and(|n| !n.is_empty())
        })
        .map(str::to_string)
}

/// Joins NUL-separated arguments with spaces, quoting any argument a shell
/// would split or expand, so the audit shows what was run unambiguously.
fn render_cmdline(raw: &[u8]) -> Option<String> {
    if raw.is_empty() {
        return None;
    }
    let out = if !raw.contains(&0) {
        // No separators at all: the process rewrote its argv into one
        // display string (setproctitle); show it as it is.
        escape_controls(&String::from_utf8_lossy(raw))
    } else {
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        raw.split(|&b| b == 0)
            .map(|arg| shell_quote(&String::from_utf8_lossy(arg)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    Some(truncate_marked(out, MAX_CMDLINE))
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        return arg.to_string();
    }
    if arg.chars().any(char::is_control) {
        // ANSI-C quoting keeps newlines and escapes out of the audit trail.
        let mut out = String::from("$'");
        for c in arg.chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                '\\' => out.push_str("\\\\"),
                '\'' => out.push_str("\\'"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32 & 0xff)),
                c => out.push(c),
            }
        }
        out.push('\'');
        return out;
    }
    format!("'{}'", arg.replace('\'', "'\\''"))
}

fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Cuts `s` to at most `max` bytes on a character boundary, ending in "..."
/// when anything was cut.
fn truncate_marked(mut s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str("...");
    s
}

fn truncate_chars(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The allow-listed CI variables in a NUL-separated environment block. When
/// the block was cut at the read limit, its last entry is incomplete and
/// dropped.
fn ci_env_from_environ(environ: &[u8], truncated: bool) -> BTreeMap<String, String> {
    let mut entries: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
    if truncated && !environ.ends_with(&[0]) {
        entries.pop();
    }
    let mut out = BTreeMap::new();
    for entry in entries {
        let Some(eq) = entry.iter().position(|&b| b == b'=') else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(&entry[..eq]) else {
            continue;
        };
        if !CI_ENV_VARS.contains(&name) || out.contains_key(name) {
            // First occurrence wins, as with getenv().
            continue;
        }
        let value = String::from_utf8_lossy(&entry[eq + 1..]);
        out.insert(
            name.to_string(),
            truncate_chars(&value, MAX_CI_VALUE).to_string(),
        );
    }
    out
}

/// A compact description of the CI job from its variables, or `None` when
/// the task does not look like a CI job.
fn ci_job(env: &BTreeMap<String, String>) -> Option<String> {
    let get = |k: &str| {
        env.get(k)
            .map(|v| escape_controls(v))
            .filter(|v| !v.is_empty())
    };
    let join = |system: &str, subject: Option<String>, parts: &[(&str, Option<String>)]| {
        let mut out = format!("{system}:{}", subject.unwrap_or_else(|| "?".into()));
        for (label, value) in parts {
            if let Some(v) = value {
                if label.is_empty() {
                    out.push_str(&format!(" ({v})"));
                } else {
                    out.push_str(&format!(" {label} {v}"));
                }
            }
        }
        out
    };
    if get("GITHUB_RUN_ID").is_some() || get("GITHUB_REPOSITORY").is_some() {
        let attempt = get("GITHUB_RUN_ATTEMPT").filter(|a| a != "1");
        return Some(join(
            "github",
            get("GITHUB_REPOSITORY"),
            &[
                ("run", get("GITHUB_RUN_ID")),
                ("attempt", attempt),
                ("job", get("GITHUB_JOB")),
            ],
        ));
    }
    if get("CI_JOB_ID").is_some() || get("CI_PROJECT_PATH").is_some() {
        return Some(join(
            "gitlab",
            get("CI_PROJECT_PATH"),
            &[("job", get("CI_JOB_ID")), ("", get("CI_JOB_NAME"))],
        ));
    }
    if get("BUILDKITE_JOB_ID").is_some() || get("BUILDKITE_BUILD_ID").is_some() {
        return Some(join(
            "buildkite",
            get("BUILDKITE_PIPELINE_SLUG"),
            &[("job", get("BUILDKITE_JOB_ID"))],
        ));
    }
    if get("CIRCLE_BUILD_NUM").is_some() {
        return Some(join(
            "circleci",
            get("CIRCLE_PROJECT_REPONAME"),
            &[
                ("build", get("CIRCLE_BUILD_NUM")),
                ("job", get("CIRCLE_JOB")),
            ],
        ));
    }
    if get("DRONE_BUILD_NUMBER").is_some() {
        return Some(join(
            "drone",
            get("DRONE_REPO"),
            &[("build", get("DRONE_BUILD_NUMBER"))],
        ));
    }
    if get("TEAMCITY_PROJECT_NAME").is_some() {
        return Some(join(
            "teamcity",
            get("TEAMCITY_PROJECT_NAME"),
            &[
                ("", get("TEAMCITY_BUILDCONF_NAME")),
                ("build", get("BUILD_NUMBER")),
            ],
        ));
    }
    if let Some(tag) = get("BUILD_TAG") {
        return Some(format!("jenkins:{tag}"));
    }
    if get("JOB_NAME").is_some() {
        return Some(join(
            "jenkins",
            get("JOB_NAME"),
            &[("build", get("BUILD_NUMBER").or_else(|| get("BUILD_ID")))],
        ));
    }
    None
}
