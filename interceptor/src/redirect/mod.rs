//! Load, attach, pin and take over the eBPF programs; keep the STORES map in
//! step with the config; look up who opened an accepted connection.
//!
//! Pins live under `daemon.bpffs`:
//! `maps/INTERCEPTOR_*` (shared by every generation of programs) and
//! `links/<program>` (one cgroup link each). A pinned link keeps its program
//! attached after the daemon exits, which is what makes a dead daemon mean
//! refused connections: intercepted connects are still rewritten to the
//! listener, and nothing listens there.

pub mod cgroup;
pub mod stores;
pub mod sys;

use std::{
    collections::HashMap as StdHashMap,
    fs,
    net::{IpAddr, SocketAddr},
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::Mutex,
};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{CgroupSockAddr, SockOps},
    Ebpf, EbpfLoader,
};
use interceptor_ebpf::{
    ConnRecord, PeerKey, Settings, StoreKey, StoreValue, MAPS_LAYOUT_VERSION, MAP_PEERS,
    MAP_SETTINGS, MAP_STORES,
};
use thiserror::Error;

use self::sys::AttachType;

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("INTERCEPTOR_EBPF_OBJ"));

/// Program name in the object, its hook, and its pin name.
const PROGRAMS: &[(&str, AttachType)] = &[
    ("publish_peer", AttachType::SockOps),
    ("getpeername4", AttachType::Inet4GetPeerName),
    ("getpeername6", AttachType::Inet6GetPeerName),
    ("connect4", AttachType::Inet4Connect),
    ("connect6", AttachType::Inet6Connect),
];

#[derive(Debug, Error)]
pub enum RedirectError {
    #[error("bpffs at {path}: {source}; mount one with `mount -t bpf bpf /sys/fs/bpf` or set daemon.bpffs")]
    Bpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("loading the eBPF programs failed: {0}; the daemon needs root (or CAP_BPF + CAP_NET_ADMIN + CAP_SYS_ADMIN) and a kernel with cgroup v2 and BTF")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: aya::maps::MapError,
    },
    #[error("the eBPF object has no {0}: the build is broken")]
    Missing(&'static str),
    #[error("attaching {name} to {cgroup}: {source}")]
    Attach {
        name: &'static str,
        cgroup: PathBuf,
        source: std::io::Error,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading the network namespace cookie: {0} (kernel 5.14 or newer is required)")]
    Netns(std::io::Error),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

pub fn links_dir(bpffs: &Path) -> PathBuf {
    bpffs.join("links")
}

/// Maps of the current layout version (bpffs names cannot contain dots).
pub fn maps_dir(bpffs: &Path) -> PathBuf {
    bpffs.join(format!("maps_v{MAPS_LAYOUT_VERSION}"))
}

/// Every maps directory under `bpffs`, whatever its layout version.
fn all_maps_dirs(bpffs: &Path) -> Vec<PathBuf> {
    fs::read_dir(bpffs)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().starts_with("maps_v"))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Makes sure `bpffs` is a directory on a bpf filesystem, mounting one at
/// /sys/fs/bpf when the machine has none.
fn prepare_bpffs(bpffs: &Path) -> Result<(), RedirectError> {
    let err = |source| RedirectError::Bpffs {
        path: bpffs.to_path_buf(),
        source,
    };
    let sysfs_bpf = Path::new("/sys/fs/bpf");
    if bpffs.starts_with(sysfs_bpf) && !sys::is_bpffs(sysfs_bpf).unwrap_or(false) {
        tracing::info!("no bpf filesystem at /sys/fs/bpf: mounting one");
        sys::mount_bpffs(sysfs_bpf).map_err(err)?;
    }
    fs::create_dir_all(maps_dir(bpffs)).map_err(err)?;
    fs::create_dir_all(links_dir(bpffs)).map_err(err)?;
    if !sys::is_bpffs(bpffs).map_err(err)? {
        return Err(err(std::io::Error::other("not on a bpf filesystem")));
    }
    Ok(())
}

/// The loaded programs and the maps the daemon keeps writing.
pub struct Redirector {
    _ebpf: Ebpf,
    stores: HashMap<MapData, StoreKey, StoreValue>,
}

/// Who opened an accepted connection, as the kernel recorded it.
pub struct PeerTable {
    peers: Mutex<HashMap<MapData, PeerKey, ConnRecord>>,
    netns_cookie: u64,
}

impl PeerTable {
    /// Takes (reads and removes) the record of the connection whose client
    /// side is `peer`. `None`: nobody was redirected from there, i.e. the
    /// listener was dialled directly.
    pub fn take(&self, peer: &SocketAddr) -> Option<ConnRecord> {
        let key = PeerKey {
            addr: stores::peer_words(peer),
            port: peer.port() as u32,
            _pad: 0,
            netns_cookie: self.netns_cookie,
        };
        let mut map = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let record = map.get(&key, 0).ok()?;
        let _ = map.remove(&key);
        Some(record)
    }
}

/// What `install` needs to know.
pub struct InstallSpec<'a> {
    pub bpffs: &'a Path,
    pub cgroup: &'a Path,
    pub listen: SocketAddr,
    pub upstream_mark: u32,
}

/// Loads the programs (reusing pinned maps), writes the settings, attaches
/// every hook to the cgroup and pins the links, replacing any previous
/// generation only after the new one is attached: at no moment is an
/// intercepted connect left without a program.
pub fn install(
    spec: &InstallSpec<'_>,
    entries: &StdHashMap<StoreKey, StoreValue>,
) -> Result<(Redirector, PeerTable), RedirectError> {
    prepare_bpffs(spec.bpffs)?;
    let mut ebpf = EbpfLoader::new()
        .map_pin_path(maps_dir(spec.bpffs))
        .load(EBPF_OBJECT)?;

    let netns_cookie = sys::netns_cookie().map_err(RedirectError::Netns)?;
    let settings = Settings {
        proxy_ip4: u32::from_ne_bytes(stores::proxy_ip4(&spec.listen).octets()),
        proxy_port: spec.listen.port() as u32,
        proxy_ip6: stores::ip_words(IpAddr::V6(stores::proxy_ip6(&spec.listen))),
        upstream_mark: spec.upstream_mark,
        ready: 1,
        host_netns_cookie: netns_cookie,
    };
    {
        let map = ebpf
            .map_mut(MAP_SETTINGS)
            .ok_or(RedirectError::Missing(MAP_SETTINGS))?;
        let mut arr: Array<&mut MapData, Settings> =
            Array::try_from(map).map_err(|source| RedirectError::Map {
                name: MAP_SETTINGS,
                source,
            })?;
        arr.set(0, settings, 0)
            .map_err(|source| RedirectError::Map {
                name: MAP_SETTINGS,
                source,
            })?;
    }
    let stores_map = ebpf
        .take_map(MAP_STORES)
        .ok_or(RedirectError::Missing(MAP_STORES))?;
    let mut stores: HashMap<MapData, StoreKey, StoreValue> = HashMap::try_from(stores_map)
        .map_err(|source| RedirectError::Map {
            name: MAP_STORES,
            source,
        })?;
    sync_stores(&mut stores, entries)?;
    let peers_map = ebpf
        .take_map(MAP_PEERS)
        .ok_or(RedirectError::Missing(MAP_PEERS))?;
    let peers: HashMap<MapData, PeerKey, ConnRecord> =
        HashMap::try_from(peers_map).map_err(|source| RedirectError::Map {
            name: MAP_PEERS,
            source,
        })?;

    let cgroup_dir = fs::File::open(spec.cgroup).map_err(|e| cgroup::CgroupError::Open {
        path: spec.cgroup.to_path_buf(),
        source: e,
    })?;
    let links = links_dir(spec.bpffs);
    for &(name, ty) in PROGRAMS {
        let program = ebpf.program_mut(name).ok_or(RedirectError::Missing(name))?;
        let perr = |source| RedirectError::Program { name, source };
        let prog_fd = if ty == AttachType::SockOps {
            let p: &mut SockOps = program.try_into().map_err(perr)?;
            p.load().map_err(perr)?;
            p.fd().map_err(perr)?.as_fd().try_clone_to_owned()
        } else {
            let p: &mut CgroupSockAddr = program.try_into().map_err(perr)?;
            p.load().map_err(perr)?;
            p.fd().map_err(perr)?.as_fd().try_clone_to_owned()
        }
        .map_err(|source| RedirectError::Attach {
            name,
            cgroup: spec.cgroup.to_path_buf(),
            source,
        })?;
        let link = sys::link_create(prog_fd.as_fd(), cgroup_dir.as_fd(), ty).map_err(|source| {
            RedirectError::Attach {
                name,
                cgroup: spec.cgroup.to_path_buf(),
                source,
            }
        })?;
        // New link pinned aside, old one (if any) unpinned -> detached, new one
        // pinned under the real name. The new program is live throughout.
        let pin = links.join(name);
        let staged = links.join(format!("{name}_new"));
        let _ = fs::remove_file(&staged);
        sys::obj_pin(link.as_fd(), &staged).map_err(|source| RedirectError::Pin {
            path: staged.clone(),
            source,
        })?;
        match fs::remove_file(&pin) {
            Ok(()) => tracing::info!(program = name, "took over the previous link"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RedirectError::Pin { path: pin, source }),
        }
        sys::obj_pin(link.as_fd(), &pin).map_err(|source| RedirectError::Pin {
            path: pin.clone(),
            source,
        })?;
        let _ = fs::remove_file(&staged);
    }
    // Maps of an older layout are referenced by no attached program any more.
    for dir in all_maps_dirs(spec.bpffs)
        .into_iter()
        .filter(|d| *d != maps_dir(spec.bpffs))
    {
        match remove_pins(&dir) {
            Ok(n) => {
                tracing::info!(dir = %dir.display(), pins = n.len(), "removed maps of an older layout")
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove maps of an older layout")
            }
        }
    }
    Ok((
        Redirector {
            _ebpf: ebpf,
            stores,
        },
        PeerTable {
            peers: Mutex::new(peers),
            netns_cookie,
        },
    ))
}

fn sync_stores(
    map: &mut HashMap<MapData, StoreKey, StoreValue>,
    desired: &StdHashMap<StoreKey, StoreValue>,
) -> Result<(), RedirectError> {
    let merr = |source| RedirectError::Map {
        name: MAP_STORES,
        source,
    };
    // Insert first, then remove: a target that stays never disappears.
    for (k, v) in desired {
        map.insert(k, v, 0).map_err(merr)?;
    }
    let stale: Vec<StoreKey> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !desired.contains_key(k))
        .collect();
    for k in stale {
        map.remove(&k).map_err(merr)?;
    }
    Ok(())
}

impl Redirector {
    /// Replaces the STORES map contents (after a re-resolve or reload).
    pub fn set_stores(
        &mut self,
        entries: &StdHashMap<StoreKey, StoreValue>,
    ) -> Result<(), RedirectError> {
        sync_stores(&mut self.stores, entries)
    }
}

/// What is pinned under a bpffs directory.
#[derive(Debug, serde::Serialize)]
pub struct PinStatus {
    pub bpffs: PathBuf,
    pub links: Vec<String>,
    pub maps: Vec<String>,
    pub store_entries: Option<usize>,
}

pub fn pin_status(bpffs: &Path) -> PinStatus {
    let list = |dir: PathBuf| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let store_entries = MapData::from_pin(maps_dir(bpffs).join(MAP_STORES))
        .ok()
        .and_then(|md| {
            HashMap::<MapData, StoreKey, StoreValue>::try_from(aya::maps::Map::HashMap(md)).ok()
        })
        .map(|m| m.keys().filter(|k| k.is_ok()).count());
    PinStatus {
        bpffs: bpffs.to_path_buf(),
        links: list(links_dir(bpffs)),
        maps: list(maps_dir(bpffs)),
        store_entries,
    }
}

/// Removes every pin: links first (which detaches the programs), then maps.
/// Returns what was removed.
pub fn detach(bpffs: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = remove_pins(&links_dir(bpffs))?;
    for dir in all_maps_dirs(bpffs) {
        removed.extend(remove_pins(&dir)?);
    }
    match fs::remove_dir(bpffs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(removed)
}

/// Unlinks every pin in `dir`, then `dir` itself.
fn remove_pins(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    match fs::read_dir(dir) {
        Ok(rd) => {
            for entry in rd {
                let path = entry?.path();
                fs::remove_file(&path)?;
                removed.push(path);
            }
            fs::remove_dir(dir)?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(removed)
}
