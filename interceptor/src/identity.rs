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

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        os::unix::fs::symlink,
        process::{Command, Stdio},
        time::{Duration, Instant},
    };

    fn read_comm(path: &str) -> String {
        fs::read_to_string(path)
            .expect("comm")
            .trim_end_matches('\n')
            .to_string()
    }

    fn uid_gid() -> (u32, u32) {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        unsafe { (libc::getuid(), libc::getgid()) }
    }

    #[test]
    fn resolves_the_current_thread() {
        let pid = std::process::id();
        // SAFETY: gettid cannot fail.
        let tid = unsafe { libc::gettid() } as u32;
        let (uid, gid) = uid_gid();
        // The test harness names its threads, so this thread's comm differs
        // from the process's: the kernel records the thread's.
        let comm = read_comm(&format!("/proc/self/task/{tid}/comm"));
        let id = Identity::resolve(KernelIdentity {
            tgid: pid,
            tid,
            uid,
            gid,
            comm: comm.clone(),
            cgroup_id: 42,
        });
        assert!(!id.proc_gone, "{id:?}");
        assert_eq!(
            (id.pid, id.tid, id.uid, id.gid, id.cgroup_id),
            (pid, tid, uid, gid, 42)
        );
        assert_eq!(id.comm, comm);
        let exe = std::env::current_exe().expect("current exe");
        assert_eq!(id.exe.as_deref(), Some(exe.to_string_lossy().as_ref()));
        assert_eq!(id.ppid, Some(std::os::unix::process::parent_id()));
        let cmdline = id.cmdline.expect("cmdline");
        assert!(
            cmdline.contains(exe.file_name().expect("name").to_string_lossy().as_ref()),
            "{cmdline}"
        );
        let own_cgroup = fs::read_to_string("/proc/self/cgroup").expect("cgroup");
        if own_cgroup.lines().any(|l| l.starts_with("0::")) {
            assert!(
                id.cgroup.as_deref().is_some_and(|c| c.starts_with('/')),
                "{:?}",
                id.cgroup
            );
        }

        // The main thread's view (tid == tgid) with the process's comm.
        let comm = read_comm("/proc/self/comm");
        let id = Identity::resolve(KernelIdentity {
            tgid: pid,
            tid: pid,
            uid,
            gid,
            comm,
            cgroup_id: 0,
        });
        assert!(!id.proc_gone, "{id:?}");
    }

    #[test]
    fn keeps_ci_variables_and_nothing_else_from_a_child() {
        let mut child = Command::new("sleep")
            .arg("30")
            .env("GITHUB_RUN_ID", "123")
            .env("GITHUB_REPOSITORY", "org/repo")
            .env("GITHUB_JOB", "build")
            .env("GITHUB_RUN_ATTEMPT", "1")
            .env("SECRET_TOKEN", "hunter2")
            .env("PGPASSWORD", "hunter3")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        // Wait for the state Identity::resolve reads, not for a proxy of it:
        // until exec the child has the parent's comm, cmdline and
        // environment, and during exec the new comm is visible before the
        // new argument and environment pages (cmdline reads empty then).
        let exec_done = || {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            cmdline == b"sleep\x0030\x00"
                && environ
                    .split(|&b| b == 0)
                    .any(|var| var == b"GITHUB_RUN_ATTEMPT=1")
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !exec_done() {
            assert!(Instant::now() < deadline, "child never exec'd `sleep 30`");
            std::thread::sleep(Duration::from_millis(5));
        }
        let (uid, gid) = uid_gid();
        let id = Identity::resolve(KernelIdentity {
            tgid: pid,
            tid: pid,
            uid,
            gid,
            comm: "sleep".into(),
            cgroup_id: 7,
        });
        let _ = child.kill();
        let _ = child.wait();

        assert!(!id.proc_gone, "{id:?}");
        assert_eq!(id.ppid, Some(std::process::id()));
        assert_eq!(id.cmdline.as_deref(), Some("sleep 30"));
        assert!(
            id.exe.as_deref().is_some_and(|e| e.ends_with("/sleep")),
            "{:?}",
            id.exe
        );
        let expected: BTreeMap<String, String> = [
            ("GITHUB_JOB", "build"),
            ("GITHUB_REPOSITORY", "org/repo"),
            ("GITHUB_RUN_ATTEMPT", "1"),
            ("GITHUB_RUN_ID", "123"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(id.ci_env, expected);
        assert_eq!(
            id.ci_job.as_deref(),
            Some("github:org/repo run 123 job build")
        );
        let json = format!("{id:?}");
        assert!(
            !json.contains("hunter")
                && !json.contains("SECRET_TOKEN")
                && !json.contains("PGPASSWORD"),
            "{json}"
        );
    }

    #[test]
    fn a_vanished_process_keeps_the_kernel_fields() {
        let k = KernelIdentity {
            tgid: 4_000_000_001,
            tid: 4_000_000_002,
            uid: 1001,
            gid: 1002,
            comm: "psql".into(),
            cgroup_id: 99,
        };
        let id = Identity::resolve(k);
        assert!(id.proc_gone);
        assert_eq!(
            (
                id.pid,
                id.tid,
                id.uid,
                id.gid,
                id.comm.as_str(),
                id.cgroup_id
            ),
            (4_000_000_001, 4_000_000_002, 1001, 1002, "psql", 99)
        );
        assert!(
            id.exe.is_none()
                && id.cmdline.is_none()
                && id.cgroup.is_none()
                && id.unit.is_none()
                && id.ppid.is_none()
        );
        assert!(id.ci_env.is_empty() && id.ci_job.is_none());
    }

    /// A /proc/PID directory in a temporary procfs root.
    fn fake_proc(
        pid: u32,
        uid: u32,
        comm: &str,
        cmdline: &[u8],
        environ: &[u8],
        cgroup: &str,
    ) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join(pid.to_string());
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(
            dir.join("status"),
            format!("Name:\t{comm}\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\nPPid:\t77\nUid:\t{uid}\t0\t0\t0\nGid:\t5\t5\t5\t5\n"),
        )
        .expect("status");
        fs::write(dir.join("comm"), format!("{comm}\n")).expect("comm");
        fs::write(dir.join("cmdline"), cmdline).expect("cmdline");
        fs::write(dir.join("environ"), environ).expect("environ");
        fs::write(dir.join("cgroup"), cgroup).expect("cgroup");
        symlink("/usr/lib/postgresql/15/bin/psql (deleted)", dir.join("exe")).expect("exe link");
        root
    }

    fn kernel(pid: u32, uid: u32, comm: &str) -> KernelIdentity {
        KernelIdentity {
            tgid: pid,
            tid: pid,
            uid,
            gid: 5,
            comm: comm.into(),
            cgroup_id: 1,
        }
    }

    #[test]
    fn reads_a_fake_proc_entry() {
        let root = fake_proc(
            1234,
            1001,
            "psql",
            b"psql\0-c\0select 'a b'\0\0--name=x y\0",
            b"HOME=/root\0CI_JOB_ID=4567\0CI_PROJECT_PATH=infra/app\0CI_JOB_NAME=migrate\0CI_JOB_TOKEN=glcbt-secret\0CI_JOB_ID=9999\0",
            "12:pids:/system.slice/gitlab-runner.service\n0::/system.slice/gitlab-runner.service/job-1.scope (deleted)\n",
        );
        let id = Identity::resolve_from(root.path(), kernel(1234, 1001, "psql\0"));
        assert!(!id.proc_gone, "{id:?}");
        assert_eq!(id.comm, "psql");
        assert_eq!(id.ppid, Some(77));
        assert_eq!(id.exe.as_deref(), Some("/usr/lib/postgresql/15/bin/psql"));
        assert_eq!(
            id.cmdline.as_deref(),
            Some("psql -c 'select '\\''a b'\\''' '' '--name=x y'")
        );
        assert_eq!(
            id.cgroup.as_deref(),
            Some("/system.slice/gitlab-runner.service/job-1.scope")
        );
        assert_eq!(id.unit.as_deref(), Some("job-1.scope"));
        assert_eq!(id.ci_env.len(), 3, "{:?}", id.ci_env);
        assert_eq!(
            id.ci_env["CI_JOB_ID"], "4567",
            "the first occurrence wins, as with getenv"
        );
        assert!(!id.ci_env.contains_key("CI_JOB_TOKEN") && !id.ci_env.contains_key("HOME"));
        assert_eq!(
            id.ci_job.as_deref(),
            Some("gitlab:infra/app job 4567 (migrate)")
        );
    }

    #[test]
    fn a_reused_pid_is_not_trusted() {
        let root = fake_proc(
            1234,
            1001,
            "bash",
            b"bash\0",
            b"CI_JOB_ID=1\0",
            "0::/user.slice\n",
        );
        for k in [kernel(1234, 0, "bash"), kernel(1234, 1001, "psql")] {
            let id = Identity::resolve_from(root.path(), k.clone());
            assert!(id.proc_gone, "{k:?} -> {id:?}");
            assert!(
                id.exe.is_none()
                    && id.cmdline.is_none()
                    && id.ci_env.is_empty()
                    && id.ppid.is_none()
            );
            assert_eq!((id.uid, id.comm.as_str()), (k.uid, k.comm.as_str()));
        }
        // comm is compared on the kernel's 15 bytes.
        let root = fake_proc(9, 0, "a-very-long-pro", b"x\0", b"", "0::/\n");
        assert!(
            !Identity::resolve_from(root.path(), kernel(9, 0, "a-very-long-process-name"))
                .proc_gone
        );
    }

    #[test]
    fn prefers_the_connecting_threads_entry() {
        let root = fake_proc(
            50,
            0,
            "java",
            b"java\0-jar\0app.jar\0",
            b"",
            "0::/ci.slice/runner.service\n",
        );
        let task = root.path().join("50/task/51");
        fs::create_dir_all(&task).expect("mkdir");
        fs::write(
            task.join("status"),
            "Name:\tpool-1\nPPid:\t1\nUid:\t0\t0\t0\t0\n",
        )
        .expect("status");
        fs::write(task.join("comm"), "pool-1\n").expect("comm");
        fs::write(task.join("cgroup"), "0::/ci.slice/runner.service\n").expect("cgroup");
        let id = Identity::resolve_from(
            root.path(),
            KernelIdentity {
                tgid: 50,
                tid: 51,
                uid: 0,
                gid: 0,
                comm: "pool-1".into(),
                cgroup_id: 3,
            },
        );
        assert!(!id.proc_gone, "{id:?}");
        assert_eq!(id.cmdline.as_deref(), Some("java -jar app.jar"));
        assert_eq!(id.unit.as_deref(), Some("runner.service"));
    }

    #[test]
    fn command_lines_are_quoted_and_capped() {
        assert_eq!(render_cmdline(b""), None);
        assert_eq!(
            render_cmdline(b"postgres: checkpointer   ").as_deref(),
            Some("postgres: checkpointer   ")
        );
        assert_eq!(
            render_cmdline(b"sh\0-c\0echo $HOME; rm -rf /\0").as_deref(),
            Some("sh -c 'echo $HOME; rm -rf /'")
        );
        assert_eq!(
            render_cmdline(b"printf\0a\nb\0").as_deref(),
            Some("printf $'a\\nb'")
        );
        let long: Vec<u8> = std::iter::repeat_n(b"argument\0".as_slice(), 1000)
            .flatten()
            .copied()
            .collect();
        let out = render_cmdline(&long).expect("cmdline");
        assert!(
            out.len() <= MAX_CMDLINE && out.ends_with("..."),
            "{}",
            out.len()
        );
    }

    #[test]
    fn ci_values_are_capped_and_a_cut_environment_drops_its_last_entry() {
        let big = format!("GITHUB_JOB={}\0GITHUB_RUN_ID=12", "é".repeat(300));
        let env = ci_env_from_environ(big.as_bytes(), true);
        assert!(env["GITHUB_JOB"].len() <= MAX_CI_VALUE && env["GITHUB_JOB"].starts_with('é'));
        assert!(
            !env.contains_key("GITHUB_RUN_ID"),
            "a cut entry may hold a cut value"
        );
        assert!(ci_env_from_environ(big.as_bytes(), false).contains_key("GITHUB_RUN_ID"));
    }

    #[test]
    fn ci_job_descriptions() {
        let job = |vars: &[(&str, &str)]| {
            ci_job(
                &vars
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        assert_eq!(job(&[]), None);
        assert_eq!(
            job(&[
                ("GITHUB_REPOSITORY", "org/repo"),
                ("GITHUB_RUN_ID", "123"),
                ("GITHUB_RUN_ATTEMPT", "2"),
                ("GITHUB_JOB", "build")
            ])
            .as_deref(),
            Some("github:org/repo run 123 attempt 2 job build")
        );
        assert_eq!(
            job(&[("CI_PROJECT_PATH", "infra/app"), ("CI_JOB_ID", "4567")]).as_deref(),
            Some("gitlab:infra/app job 4567")
        );
        assert_eq!(
            job(&[
                ("BUILDKITE_PIPELINE_SLUG", "deploy"),
                ("BUILDKITE_JOB_ID", "0190-ab"),
                ("BUILDKITE_BUILD_ID", "x")
            ])
            .as_deref(),
            Some("buildkite:deploy job 0190-ab")
        );
        assert_eq!(
            job(&[("BUILD_TAG", "jenkins-app-42"), ("JOB_NAME", "app")]).as_deref(),
            Some("jenkins:jenkins-app-42")
        );
        assert_eq!(
            job(&[("JOB_NAME", "app"), ("BUILD_NUMBER", "42")]).as_deref(),
            Some("jenkins:app build 42")
        );
        assert_eq!(
            job(&[
                ("CIRCLE_PROJECT_REPONAME", "app"),
                ("CIRCLE_BUILD_NUM", "9"),
                ("CIRCLE_JOB", "test")
            ])
            .as_deref(),
            Some("circleci:app build 9 job test")
        );
        assert_eq!(
            job(&[("DRONE_REPO", "org/app"), ("DRONE_BUILD_NUMBER", "5")]).as_deref(),
            Some("drone:org/app build 5")
        );
        assert_eq!(
            job(&[("GITHUB_RUN_ID", "1\n2")]).as_deref(),
            Some("github:? run 1?2")
        );
    }

    #[test]
    fn units_from_cgroup_paths() {
        let unit = |p: &str| unit_from_cgroup_path(p);
        assert_eq!(
            unit("/system.slice/gitlab-runner.service").as_deref(),
            Some("gitlab-runner.service")
        );
        assert_eq!(
            unit("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.scope").as_deref(),
            Some("foo.scope")
        );
        assert_eq!(
            unit("/system.slice/docker-abc.scope/init").as_deref(),
            Some("docker-abc.scope")
        );
        assert_eq!(unit("/interceptor-test-123"), None);
        assert_eq!(unit("/"), None);
        assert_eq!(unit("/x/.service"), None);
    }

    #[test]
    fn every_ci_variable_is_an_identifier_not_a_secret() {
        for name in CI_ENV_VARS {
            assert!(
                !name.contains("TOKEN")
                    && !name.contains("PASSWORD")
                    && !name.contains("URL")
                    && !name.contains("KEY"),
                "{name}"
            );
        }
    }
}
