//! The in-kernel half of interceptor.
//!
//! * `connect4` / `connect6` (cgroup/connect*): a TCP connect from a task in
//!   the intercepted cgroup whose destination is a configured store is
//!   rewritten to the proxy listener; what the kernel knows about the caller
//!   is recorded under the socket's cookie.
//! * `publish_peer` (sock_ops, TCP_CONNECT_CB): once the source port is chosen and
//!   before the SYN leaves, the record is published under the client's own
//!   address and port, which is what the proxy sees on accept.
//! * `getpeername4` / `getpeername6`: the task sees the address it dialled.
//!
//! Fail closed: a store connect that cannot be recorded, or that comes from a
//! network namespace other than the host's, is refused (EPERM) rather than
//! let through to the real server.
#![no_std]
#![no_main]

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{bpf_sock_addr, BPF_SOCK_OPS_TCP_CONNECT_CB},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie,
    },
    macros::{cgroup_sock_addr, map, sock_ops},
    maps::{Array, HashMap, LruHashMap},
    programs::{SockAddrContext, SockOpsContext},
    EbpfContext,
};
use interceptor_ebpf::{
    is_local, mapped, mapped_prefix_word, ConnRecord, PeerKey, Settings, StoreKey, StoreValue,
    AF_INET, LOCAL_ADDR, RECORDS_CAPACITY, SOCK_STREAM, STORES_CAPACITY,
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[map(name = "INTERCEPTOR_STORES")]
static STORES: HashMap<StoreKey, StoreValue> = HashMap::pinned(STORES_CAPACITY, 0);

#[map(name = "INTERCEPTOR_RECORDS")]
static RECORDS: LruHashMap<u64, ConnRecord> = LruHashMap::pinned(RECORDS_CAPACITY, 0);

#[map(name = "INTERCEPTOR_PEERS")]
static PEERS: LruHashMap<PeerKey, ConnRecord> = LruHashMap::pinned(RECORDS_CAPACITY, 0);

#[map(name = "INTERCEPTOR_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    unsafe { on_connect(&ctx, false) }
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    unsafe { on_connect(&ctx, true) }
}

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    unsafe { on_getpeername(&ctx, false) }
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    unsafe { on_getpeername(&ctx, true) }
}

#[sock_ops]
pub fn publish_peer(ctx: SockOpsContext) -> u32 {
    unsafe { on_sock_ops(&ctx) };
    1
}

/// `user_ip6` must be read and written one full u32 at a time.
#[inline(always)]
unsafe fn read_ip6(sa: *const bpf_sock_addr) -> [u32; 4] {
    [
        read_volatile(&(*sa).user_ip6[0]),
        read_volatile(&(*sa).user_ip6[1]),
        read_volatile(&(*sa).user_ip6[2]),
        read_volatile(&(*sa).user_ip6[3]),
    ]
}

#[inline(always)]
unsafe fn write_ip6(sa: *mut bpf_sock_addr, addr: &[u32; 4]) {
    write_volatile(&mut (*sa).user_ip6[0], addr[0]);
    write_volatile(&mut (*sa).user_ip6[1], addr[1]);
    write_volatile(&mut (*sa).user_ip6[2], addr[2]);
    write_volatile(&mut (*sa).user_ip6[3], addr[3]);
}

#[inline(always)]
fn is_mapped(addr: &[u32; 4]) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == mapped_prefix_word()
}

#[inline(always)]
unsafe fn find_store(addr: &[u32; 4], port: u32) -> Option<u32> {
    if let Some(v) = STORES.get(&StoreKey { addr: *addr, port }) {
        return Some(v.store_id);
    }
    if is_local(addr) {
        if let Some(v) = STORES.get(&StoreKey {
            addr: LOCAL_ADDR,
            port,
        }) {
            return Some(v.store_id);
        }
    }
    STORES
        .get(&StoreKey { addr: [0; 4], port })
        .map(|v| v.store_id)
}

#[inline(always)]
unsafe fn on_connect(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    // Connected UDP (the resolver) and raw sockets also run this hook.
    if read_volatile(&(*sa).type_) != SOCK_STREAM {
        return ALLOW;
    }
    let settings = match SETTINGS.get(0) {
        Some(s) if s.ready != 0 => *s,
        _ => return ALLOW, // the daemon never configured this map: no stores either
    };
    // The daemon's own upstream sockets carry a mark only CAP_NET_ADMIN can set.
    let sk = (*sa).__bindgen_anon_1.sk;
    if !sk.is_null() && settings.upstream_mark != 0 && (*sk).mark == settings.upstream_mark {
        return ALLOW;
    }
    let port = u16::from_be(read_volatile(&(*sa).user_port) as u16) as u32;
    let addr = if v6 {
        read_ip6(sa)
    } else {
        mapped(read_volatile(&(*sa).user_ip4))
    };
    // Never loop the proxy onto itself.
    if port == settings.proxy_port && is_local(&addr) {
        return ALLOW;
    }
    let store_id = match find_store(&addr, port) {
        Some(id) => id,
        None => return ALLOW,
    };
    let netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
    if netns_cookie != settings.host_netns_cookie {
        return REFUSE;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let record = ConnRecord {
        orig_addr: addr,
        orig_port: port,
        family: if v6 { 10 } else { AF_INET },
        tgid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        store_id,
        _pad: 0,
        cgroup_id: bpf_get_current_cgroup_id(),
        netns_cookie,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let cookie = bpf_get_socket_cookie(ctx.as_ptr());
    if RECORDS.insert(&cookie, &record, 0).is_err() {
        return REFUSE;
    }
    if !v6 {
        write_volatile(&mut (*sa).user_ip4, settings.proxy_ip4);
    } else if is_mapped(&addr) {
        write_ip6(sa, &mapped(settings.proxy_ip4));
    } else {
        write_ip6(sa, &settings.proxy_ip6);
    }
    write_volatile(
        &mut (*sa).user_port,
        (settings.proxy_port as u16).to_be() as u32,
    );
    ALLOW
}

#[inline(always)]
unsafe fn on_getpeername(ctx: &SockAddrContext, v6: bool) -> i32 {
    let cookie = bpf_get_socket_cookie(ctx.as_ptr());
    let record = match RECORDS.get(&cookie) {
        Some(r) => *r,
        None => return ALLOW,
    };
    let sa = ctx.sock_addr;
    if v6 {
        write_ip6(sa, &record.orig_addr);
    } else {
        write_volatile(&mut (*sa).user_ip4, record.orig_addr[3]);
    }
    write_volatile(
        &mut (*sa).user_port,
        (record.orig_port as u16).to_be() as u32,
    );
    ALLOW
}

#[inline(always)]
unsafe fn on_sock_ops(ctx: &SockOpsContext) {
    if ctx.op() != BPF_SOCK_OPS_TCP_CONNECT_CB {
        return;
    }
    let cookie = bpf_get_socket_cookie(ctx.as_ptr());
    let record = match RECORDS.get(&cookie) {
        Some(r) => *r,
        None => return,
    };
    let ops = ctx.ops;
    // Load both forms unconditionally and pick by value: a branch between the
    // two loads gets folded into a computed context offset, which the
    // verifier rejects.
    let ip4 = read_volatile(&(*ops).local_ip4);
    let ip6 = [
        read_volatile(&(*ops).local_ip6[0]),
        read_volatile(&(*ops).local_ip6[1]),
        read_volatile(&(*ops).local_ip6[2]),
        read_volatile(&(*ops).local_ip6[3]),
    ];
    let addr = if read_volatile(&(*ops).family) == AF_INET {
        mapped(ip4)
    } else {
        ip6
    };
    let key = PeerKey {
        addr,
        port: read_volatile(&(*ops).local_port),
        _pad: 0,
        netns_cookie: record.netns_cookie,
    };
    let _ = PEERS.insert(&key, &record, 0);
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 4] = *b"GPL\0";
