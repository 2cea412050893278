//! Thin wrappers over the few kernel interfaces aya 0.13 does not expose the
//! way we need them: cgroup links we can pin ourselves, bpffs objects, the
//! network-namespace cookie.

use std::{
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    os::unix::ffi::OsStrExt,
    path::Path,
};

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// Kernel `enum bpf_attach_type` values of the hooks interceptor uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum AttachType {
    SockOps = 3,
    Inet4Connect = 10,
    Inet6Connect = 11,
    Inet4GetPeerName = 29,
    Inet6GetPeerName = 30,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<libc::c_long> {
    // SAFETY: attr is a zeroed, 128-byte union bpf_attr prefix; the kernel
    // reads at most size bytes of it.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr() as *mut libc::c_void,
            std::mem::size_of_val(attr) as libc::c_uint,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn put_u32(attr: &mut [u64; 16], offset_bytes: usize, v: u32) {
    let word = &mut attr[offset_bytes / 8];
    let shift = (offset_bytes % 8) * 8;
    *word = (*word & !(0xffff_ffffu64 << shift)) | ((v as u64) << shift);
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// BPF_LINK_CREATE for a cgroup hook. Links are multi-attach by nature, which
/// is what lets a restarted daemon attach its programs before it lets go of
/// the previous ones.
pub fn link_create(
    prog: BorrowedFd<'_>,
    cgroup: BorrowedFd<'_>,
    ty: AttachType,
) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32); // prog_fd
    put_u32(&mut attr, 4, cgroup.as_raw_fd() as u32); // target_fd
    put_u32(&mut attr, 8, ty as u32); // attach_type
    put_u32(&mut attr, 12, 0); // flags
    let fd = bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: the kernel returned a fresh file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// BPF_OBJ_PIN: make `fd` outlive this process under `path` on bpffs.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let cpath = c_path(path)?;
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64; // pathname
    put_u32(&mut attr, 8, fd.as_raw_fd() as u32); // bpf_fd
    bpf(BPF_OBJ_PIN, &mut attr).map(|_| ())
}

/// The filesystem type (`statfs(2)` f_type) of `path`.
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let cpath = c_path(path)?;
    // SAFETY: statfs writes into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(cpath.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    Ok(fs_magic(path)? == BPF_FS_MAGIC)
}

/// Mounts a bpf filesystem at `path` (fresh machines often have none).
pub fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = c_path(path)?;
    let src = CString::new("bpf").expect("static");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Cookie of the network namespace this process runs in.
pub fn netns_cookie() -> io::Result<u64> {
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most len bytes into cookie.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}
