//! From configured store targets to the kernel's STORES map entries.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs},
};

use interceptor_ebpf::{is_local, mapped, StoreKey, StoreValue, LOCAL_ADDR};

use crate::config::{StoreConfig, TargetHost};

/// An address in the 16-byte form the kernel maps use (IPv4 as mapped IPv6).
pub fn ip_words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => mapped(u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [w(0), w(4), w(8), w(12)]
        }
    }
}

/// The inverse of [`ip_words`]: mapped addresses come back as IPv4.
pub fn words_ip(words: &[u32; 4]) -> IpAddr {
    let mut o = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(o);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// The key of a connection's source as the proxy sees it on accept.
pub fn peer_words(addr: &SocketAddr) -> [u32; 4] {
    ip_words(addr.ip())
}

/// Hostnames resolved for the targets that name one.
pub type Resolved = HashMap<String, Vec<IpAddr>>;

/// Resolves every hostname target (blocking; call off the async runtime).
/// A name that does not resolve is reported and left out, so the other
/// stores keep working; the caller keeps the previous addresses for it.
pub fn resolve_all(stores: &[StoreConfig]) -> (Resolved, Vec<String>) {
    let mut out = Resolved::new();
    let mut failures = Vec::new();
    for store in stores {
        for target in &store.targets {
            if let TargetHost::Name(name) = &target.host {
                if out.contains_key(name) {
                    continue;
                }
                match (name.as_str(), target.port).to_socket_addrs() {
                    Ok(addrs) => {
                        let mut ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
                        ips.sort();
                        ips.dedup();
                        out.insert(name.clone(), ips);
                    }
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
        }
    }
    (out, failures)
}

/// The complete STORES map the kernel should hold for this config.
///
/// A target on a local address (127.0.0.0/8, ::1, 0.0.0.0, ::) also claims
/// the "any local address" key for its port: every one of those reaches a
/// listener bound to a wildcard address, so a task must not be able to dodge
/// `127.0.0.1:5432` by dialling `127.0.0.2:5432`. The first store declared
/// wins such a shared key.
pub fn desired_entries(
    stores: &[StoreConfig],
    resolved: &Resolved,
) -> HashMap<StoreKey, StoreValue> {
    let mut exact = HashMap::new();
    let mut local = HashMap::new();
    for (id, store) in stores.iter().enumerate() {
        let value = StoreValue {
            store_id: id as u32,
        };
        for target in &store.targets {
            let port = target.port as u32;
            let ips: Vec<IpAddr> = match &target.host {
                TargetHost::Any => {
                    exact
                        .entry(StoreKey { addr: [0; 4], port })
                        .or_insert(value);
                    continue;
                }
                TargetHost::Ip(ip) => vec![*ip],
                TargetHost::Name(name) => resolved.get(name).cloned().unwrap_or_default(),
            };
            for ip in ips {
                let addr = ip_words(ip);
                exact.entry(StoreKey { addr, port }).or_insert(value);
                if is_local(&addr) {
                    local
                        .entry(StoreKey {
                            addr: LOCAL_ADDR,
                            port,
                        })
                        .or_insert(value);
                }
            }
        }
    }
    for (k, v) in local {
        exact.entry(k).or_insert(v);
    }
    exact
}

/// The IPv4 the proxy listens on for redirected AF_INET sockets.
pub fn proxy_ip4(listen: &SocketAddr) -> Ipv4Addr {
    match listen.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
    }
}

/// The IPv6 the proxy listens on for redirected native-IPv6 sockets.
pub fn proxy_ip6(listen: &SocketAddr) -> Ipv6Addr {
    match listen.ip() {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(_) => Ipv6Addr::LOCALHOST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn cfg(stores: &str) -> Config {
        let text = format!("[daemon]\ncgroup = \"t\"\n{stores}");
        Config::parse(&text, Path::new("test.toml")).expect("valid config")
    }

    #[test]
    fn words_round_trip() {
        for ip in ["127.0.0.1", "10.1.2.3", "::1", "2001:db8::7", "0.0.0.0"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(words_ip(&ip_words(ip)), ip);
        }
        let mapped_v6: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert_eq!(
            words_ip(&ip_words(mapped_v6)),
            "127.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn local_targets_claim_every_local_address() {
        let c =
            cfg("[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"127.0.0.1:7000\"]\n");
        let e = desired_entries(&c.stores, &Resolved::new());
        assert_eq!(e.len(), 2);
        assert!(e.contains_key(&StoreKey {
            addr: LOCAL_ADDR,
            port: 7000
        }));
        assert!(e.contains_key(&StoreKey {
            addr: ip_words("127.0.0.1".parse().expect("ip")),
            port: 7000
        }));
    }

    #[test]
    fn wildcard_and_remote_targets() {
        let c = cfg(
            "[[store]]\nname = \"a\"\nprotocol = \"tcp\"\ntargets = [\"*:7001\", \"10.0.0.5:7002\", \"db.test:7003\"]\n\
             [[store]]\nname = \"b\"\nprotocol = \"tcp\"\ntargets = [\"[::1]:7004\"]\n",
        );
        let mut r = Resolved::new();
        r.insert("db.test".into(), vec!["192.0.2.9".parse().expect("ip")]);
        let e = desired_entries(&c.stores, &r);
        assert_eq!(
            e[&StoreKey {
                addr: [0; 4],
                port: 7001
            }]
                .store_id,
            0
        );
        assert_eq!(
            e[&StoreKey {
                addr: ip_words("10.0.0.5".parse().expect("ip")),
                port: 7002
            }]
                .store_id,
            0
        );
        assert_eq!(
            e[&StoreKey {
                addr: ip_words("192.0.2.9".parse().expect("ip")),
                port: 7003
            }]
                .store_id,
            0
        );
        assert_eq!(
            e[&StoreKey {
                addr: LOCAL_ADDR,
                port: 7004
            }]
                .store_id,
            1
        );
        assert!(!e.contains_key(&StoreKey {
            addr: LOCAL_ADDR,
            port: 7002
        }));
    }
}
