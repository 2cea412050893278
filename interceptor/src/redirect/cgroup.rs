//! The intercepted cgroup: where it is, and how a process joins it.

use std::{
    fs,
    path::{Component, Path, PathBuf},
};

use thiserror::Error;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("no cgroup v2 filesystem in /proc/mounts: interceptor needs the unified cgroup hierarchy (cgroup v2)")]
    NoCgroup2,
    #[error("cgroup {path} does not exist: create it, or give the cgroup of the runner service (e.g. /sys/fs/cgroup/system.slice/gitlab-runner.service)")]
    Missing { path: PathBuf },
    #[error("cgroup {path} is not on a cgroup v2 filesystem")]
    NotCgroup2 { path: PathBuf },
    #[error("refusing to intercept the root cgroup {path}: every process on the host would be intercepted; name the runner's own cgroup")]
    Root { path: PathBuf },
    #[error("cgroup path {0:?} must not contain `..`")]
    Traversal(String),
    #[error("cannot open cgroup {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot move process {pid} into {path}: {source}")]
    Join {
        pid: u32,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup` on modern
/// systemd hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = fs::read_to_string("/proc/mounts").map_err(|_| CgroupError::NoCgroup2)?;
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_dev, dir, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "cgroup2").then(|| PathBuf::from(dir))
        })
        .next()
        .ok_or(CgroupError::NoCgroup2)
}

fn is_cgroup2(path: &Path) -> bool {
    super::sys::fs_magic(path).is_ok_and(|m| m == CGROUP2_SUPER_MAGIC)
}

/// Resolves `daemon.cgroup`. An absolute path must already exist (it is the
/// runner's cgroup, created by systemd); a relative name is a child of the
/// cgroup v2 mount and is created when `create` is set. The root cgroup is
/// always refused.
pub fn resolve(configured: &str, create: bool) -> Result<PathBuf, CgroupError> {
    let rel = Path::new(configured);
    if rel.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(CgroupError::Traversal(configured.to_string()));
    }
    let mount = cgroup2_mount()?;
    let path = if rel.is_absolute() {
        rel.to_path_buf()
    } else {
        mount.join(rel)
    };
    if path == mount || path.parent().is_none() {
        return Err(CgroupError::Root { path });
    }
    if !path.is_dir() {
        if create && !rel.is_absolute() {
            fs::create_dir_all(&path).map_err(|source| CgroupError::Create {
                path: path.clone(),
                source,
            })?;
        } else {
            return Err(CgroupError::Missing { path });
        }
    }
    if !is_cgroup2(&path) {
        return Err(CgroupError::NotCgroup2 { path });
    }
    Ok(path)
}

/// Moves process `pid` into the cgroup at `path`.
pub fn join(path: &Path, pid: u32) -> Result<(), CgroupError> {
    fs::write(path.join("cgroup.procs"), pid.to_string()).map_err(|source| CgroupError::Join {
        pid,
        path: path.to_path_buf(),
        source,
    })
}
