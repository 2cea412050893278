//! Types shared by the eBPF programs and the userspace daemon.
//!
//! Every map key and value is `#[repr(C)]`, padded by hand so both sides agree
//! byte for byte. Addresses are always 16 bytes: IPv4 is stored in its
//! IPv4-mapped IPv6 form (`::ffff:a.b.c.d`), so one key type serves both
//! families and an `AF_INET6` socket dialling a mapped address matches the
//! same entries as an `AF_INET` one. Address words hold network-order bytes
//! (exactly what the kernel context exposes); ports are in host order.
#![no_std]

/// Pinned map and program names (also the bpffs file names).
pub const MAP_STORES: &str = "INTERCEPTOR_STORES";
pub const MAP_RECORDS: &str = "INTERCEPTOR_RECORDS";
pub const MAP_PEERS: &str = "INTERCEPTOR_PEERS";
pub const MAP_SETTINGS: &str = "INTERCEPTOR_SETTINGS";

/// Version of the map layouts below. Maps are pinned in a directory named
/// after it, so a daemon whose layouts differ from the pinned ones starts
/// with fresh maps instead of reusing incompatible ones. Bump it whenever a
/// key or value type, or a map's capacity, changes.
pub const MAPS_LAYOUT_VERSION: u32 = 1;

pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const SOCK_STREAM: u32 = 1;

/// Capacity of the per-socket and per-peer record maps (LRU).
pub const RECORDS_CAPACITY: u32 = 65_536;
/// Capacity of the store target map.
pub const STORES_CAPACITY: u32 = 4_096;

/// Key of the store target map. `addr == [0; 4]` is the `*:port` wildcard;
/// [`LOCAL_ADDR`] stands for "any local address" (127.0.0.0/8, ::1, 0.0.0.0, ::).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StoreKey {
    pub addr: [u32; 4],
    pub port: u32,
}

/// Value of the store target map: the store's index in the daemon's table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreValue {
    pub store_id: u32,
}

/// What the connect hook learned about an intercepted socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    /// The address the task dialled (mapped form for IPv4).
    pub orig_addr: [u32; 4],
    /// The port the task dialled, host order.
    pub orig_port: u32,
    /// Family of the task's socket (AF_INET or AF_INET6).
    pub family: u32,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub store_id: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub netns_cookie: u64,
    pub comm: [u8; 16],
}

/// Key under which the record of a connected socket is published: the
/// client's own (source) address and port as the proxy sees them on accept.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub addr: [u32; 4],
    pub port: u32,
    pub _pad: u32,
    pub netns_cookie: u64,
}

/// Runtime settings written by the daemon (array map, index 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Proxy listener for AF_INET sockets, network-order IPv4.
    pub proxy_ip4: u32,
    /// Proxy listener port, host order.
    pub proxy_port: u32,
    /// Proxy listener for AF_INET6 sockets dialling native IPv6.
    pub proxy_ip6: [u32; 4],
    /// Socket mark carried by the daemon's own upstream sockets: never redirected.
    pub upstream_mark: u32,
    /// Non-zero once the daemon has written the settings.
    pub ready: u32,
    /// Cookie of the host network namespace; connects to stores from any
    /// other namespace are refused.
    pub host_netns_cookie: u64,
}

/// Network-order word of `0x0000ffff` as the second-to-last word of a mapped address.
pub const fn mapped_prefix_word() -> u32 {
    u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// The key address that stands for "any local address". All ones is a
/// multicast address no TCP connect can dial, so it never collides with a
/// real target.
pub const LOCAL_ADDR: [u32; 4] = [u32::MAX; 4];

/// The mapped form of a network-order IPv4 word.
#[inline(always)]
pub const fn mapped(ip4_be_word: u32) -> [u32; 4] {
    [0, 0, mapped_prefix_word(), ip4_be_word]
}

/// Whether a 16-byte address (mapped form for IPv4) reaches local listeners:
/// 127.0.0.0/8, 0.0.0.0, ::1 and ::.
#[inline(always)]
pub fn is_local(addr: &[u32; 4]) -> bool {
    if addr[0] != 0 || addr[1] != 0 {
        return false;
    }
    if addr[2] == mapped_prefix_word() {
        let b = addr[3].to_ne_bytes();
        return b[0] == 127 || addr[3] == 0;
    }
    if addr[2] != 0 {
        return false;
    }
    addr[3] == 0 || addr[3] == u32::from_ne_bytes([0, 0, 0, 1])
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: plain #[repr(C)] data with explicit padding, every bit pattern valid.
    unsafe impl aya::Pod for StoreKey {}
    unsafe impl aya::Pod for StoreValue {}
    unsafe impl aya::Pod for ConnRecord {}
    unsafe impl aya::Pod for PeerKey {}
    unsafe impl aya::Pod for Settings {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_addresses() {
        assert!(is_local(&mapped(u32::from_ne_bytes([127, 0, 0, 1]))));
        assert!(is_local(&mapped(u32::from_ne_bytes([127, 9, 8, 7]))));
        assert!(is_local(&mapped(0)));
        assert!(is_local(&[0, 0, 0, 0]));
        assert!(is_local(&[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]));
        assert!(!is_local(&mapped(u32::from_ne_bytes([10, 0, 0, 5]))));
        assert!(!is_local(&[
            u32::from_ne_bytes([0x20, 1, 0xd, 0xb8]),
            0,
            0,
            1
        ]));
        assert!(!is_local(&[0, 0, 0, u32::from_ne_bytes([0, 0, 0, 2])]));
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<StoreKey>(), 20);
        assert_eq!(core::mem::size_of::<ConnRecord>(), 80);
        assert_eq!(core::mem::size_of::<PeerKey>(), 32);
        assert_eq!(core::mem::size_of::<Settings>(), 40);
    }
}
