//! Which of this host's links a session runs over, for RFC 2545 link-local next hops.
//!
//! A peer is on a shared link when its address is inside the subnet of the interface that
//! holds our end of the session; that interface's IPv6 link-local address then goes into
//! the next hop of the IPv6 routes we send it. The addresses are read once per session
//! (getifaddrs(3), through nix); the decision is the pure [`shared_link`].

use std::net::IpAddr;

use ipnet::IpNet;
use nix::ifaddrs::getifaddrs;
use nix::net::if_::if_nametoindex;
use nix::sys::socket::SockaddrStorage;

use crate::codec::is_link_local;
use crate::rib::SharedLink;

/// One address of one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IfAddr {
    pub ifindex: u32,
    pub net: IpNet,
}

fn ip_of(sa: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = sa.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    sa.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

/// This host's (this namespace's) interface addresses; empty when they cannot be read, in
/// which case sessions simply go without link-local next hops.
pub fn interface_addresses() -> Vec<IfAddr> {
    let Ok(addrs) = getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| {
            let addr = ip_of(ifa.address.as_ref()?)?;
            let mask = ip_of(ifa.netmask.as_ref()?)?;
            let net = IpNet::with_netmask(addr, mask).ok()?;
            let ifindex = if_nametoindex(ifa.interface_name.as_str()).ok()?;
            Some(IfAddr { ifindex, net })
        })
        .collect()
}

/// The link shared with `peer` when `local` is our end of the session: the interface that
/// holds `local` with `peer` inside its subnet, and that interface's link-local address.
pub fn shared_link(addrs: &[IfAddr], local: IpAddr, peer: IpAddr) -> Option<SharedLink> {
    let ifindex = addrs
        .iter()
        .find(|a| a.net.addr() == local && a.net.contains(&peer))?
        .ifindex;
    addrs.iter().find_map(|a| match a.net.addr() {
        IpAddr::V6(v6) if a.ifindex == ifindex && is_link_local(&v6) => Some(SharedLink {
            ifindex,
            link_local: v6,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(ifindex: u32, net: &str) -> IfAddr {
        IfAddr {
            ifindex,
            net: net.parse().unwrap(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn peer_on_the_session_interface_subnet_shares_its_link_local() {
        let addrs = [
            a(1, "127.0.0.1/8"),
            a(2, "10.0.0.1/24"),
            a(2, "2001:db8:ff::1/64"),
            a(3, "fe80::99/64"),
            a(2, "fe80::1/64"),
        ];
        let want = Some(SharedLink {
            ifindex: 2,
            link_local: "fe80::1".parse().unwrap(),
        });
        assert_eq!(shared_link(&addrs, ip("10.0.0.1"), ip("10.0.0.2")), want);
        assert_eq!(
            shared_link(&addrs, ip("2001:db8:ff::1"), ip("2001:db8:ff::fe")),
            want
        );
        // Not on the subnet (a routed, multihop peer): no link-local next hop.
        assert_eq!(shared_link(&addrs, ip("10.0.0.1"), ip("10.1.0.2")), None);
        // An interface without a link-local address (lo).
        assert_eq!(shared_link(&addrs, ip("127.0.0.1"), ip("127.0.0.2")), None);
    }

    #[test]
    fn reads_this_namespace_addresses() {
        // Whatever the machine has, loopback is there and lies in its own subnet.
        let addrs = interface_addresses();
        assert!(
            addrs
                .iter()
                .any(|a| a.net.addr() == ip("127.0.0.1") && a.net.contains(&ip("127.0.0.1"))),
            "{addrs:?}"
        );
    }
}
