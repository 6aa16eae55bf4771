//! The pod's network, host side and container side: bridge, veth pair, addresses, routes and
//! the sysctls that go with them. Everything here is idempotent or reports "exists" precisely,
//! so ADD can roll back and DEL can run any number of times.

use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use twill_netlink::netns::Netns;
use twill_netlink::{Handle, Link, LinkKind, Route, VethSpec};
use twill_types::hash::fnv1a;

use crate::config::Mode;
use crate::spec::{CniError, code};

/// Routing protocol number on every route twill installs, so its routes are recognisably its
/// own (`ip route show proto 116`). 116 is ASCII 't' and unassigned in `rt_protos`.
pub const ROUTE_PROTOCOL: u8 = 116;
/// Prefix of every host-side veth twill creates.
pub const VETH_PREFIX: &str = "tw";
/// The link-local gateway of routed mode, answered by proxy ARP on the host veth (as Calico).
pub const ROUTED_GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway of routed mode: a link-local address on every host veth.
pub const ROUTED_GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// The host-side veth name of an attachment: `tw` + 11 hex digits of a hash of the container
/// ID and interface name. Stable across versions (FNV-1a, not std's hasher, whose output may
/// change between Rust releases), so a later DEL or GC finds what an earlier ADD made.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let hash = fnv1a(container_id.bytes().chain([0]).chain(ifname.bytes()));
    format!("{VETH_PREFIX}{:011x}", hash & 0xfff_ffff_ffff)
}

/// The MAC of an attachment's host veth: derived from the container ID and interface name
/// with a hash independent of the name's, so that the MAC proves which attachment made the
/// veth. Two attachments whose names collide (44 bits) still have different MACs (46 more
/// bits): cleanup deletes a veth only when its MAC is the attachment's own.
pub fn owner_mac(container_id: &str, ifname: &str) -> [u8; 6] {
    let b = fnv1a(
        b"twill host veth\0"
            .iter()
            .copied()
            .chain(container_id.bytes())
            .chain([0])
            .chain(ifname.bytes()),
    )
    .to_be_bytes();
    [(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// Whether host link `link` is provably the host end of the attachment (container ID,
/// ifname): a veth with the attachment's [`owner_mac`], or one paired with `peer` (the
/// attachment's interface in its namespace, when it can be seen). Veths made before MACs were
/// derived prove nothing by themselves; callers may add their own evidence (an IPAM record).
pub fn proven_ours(link: &Link, container_id: &str, ifname: &str, peer: Option<&Link>) -> bool {
    if link.kind != LinkKind::Veth {
        return false;
    }
    if link.mac == Some(owner_mac(container_id, ifname)) {
        return true;
    }
    peer.is_some_and(|p| {
        p.kind == LinkKind::Veth
            && link.peer_index == Some(p.index)
            && p.peer_index == Some(link.index)
    })
}

/// A random locally administered unicast MAC.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut mac);
    }
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// A MAC derived from a name, for the bridge: it then keeps one address whatever ports join.
pub fn stable_mac(name: &str) -> [u8; 6] {
    let b = fnv1a(name.bytes()).to_be_bytes();
    [0x02 | (b[0] & 0xfc), b[1], b[2], b[3], b[4], b[5]]
}

/// Maps a netlink failure to the plugin's kernel error code.
pub fn kernel(e: twill_netlink::Error) -> CniError {
    CniError::new(code::KERNEL, e.to_string())
}

/// Sets a sysctl of the current namespace.
pub fn set_sysctl(path: &str, value: &str) -> Result<(), CniError> {
    twill_netlink::sysctl::set(path, value).map_err(kernel)
}

/// The MTU of the interface that the host's default route leaves by, or 1500 without one.
pub fn default_mtu(host: &mut Handle) -> Result<u32, CniError> {
    for probe in [
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        IpAddr::V6("2001:db8::1".parse().unwrap_or(Ipv6Addr::LOCALHOST)),
    ] {
        // TEST-NET addresses: looked up in the FIB only, never sent to.
        if let Some(oif) = host.route_lookup(probe).map_err(kernel)?
            && let Some(link) = host.link_by_index(oif).map_err(kernel)?
            && link.mtu > 0
        {
            return Ok(link.mtu);
        }
    }
    Ok(1500)
}

/// The gateway address a range's containers use in bridge mode: its first address.
pub fn bridge_gateway(range: &IpNet) -> IpAddr {
    match range {
        IpNet::V4(n) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) + 1)),
        IpNet::V6(n) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) + 1)),
    }
}

/// Makes sure the bridge exists, is up and holds the gateway address of every range. Safe when
/// several ADDs race to create it.
pub fn ensure_bridge(
    host: &mut Handle,
    name: &str,
    mtu: u32,
    ranges: &[IpNet],
) -> Result<Link, CniError> {
    let link = match host.link_by_name(name).map_err(kernel)? {
        Some(link) => {
            if link.kind != LinkKind::Bridge {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!(
                        "{name} exists on the host but is not a bridge; choose another \"bridge\" name"
                    ),
                ));
            }
            if !link.up {
                host.set_up(link.index).map_err(kernel)?;
            }
            link
        }
        None => {
            match host.create_bridge(name, mtu, stable_mac(name)) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(kernel(e)),
            }
            host.link_by_name(name).map_err(kernel)?.ok_or_else(|| {
                CniError::new(
                    code::KERNEL,
                    format!("bridge {name} vanished after creation"),
                )
            })?
        }
    };
    let present = host.addresses(link.index).map_err(kernel)?;
    for range in ranges {
        let gw = IpNet::new(bridge_gateway(range), range.prefix_len())
            .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
        if present.contains(&gw) {
            continue;
        }
        match host.add_address(link.index, gw, true) {
            Ok(()) => {}
            Err(e) if e.is_exists() => {}
            Err(e) => return Err(kernel(e)),
        }
    }
    Ok(link)
}

/// Everything that describes one attachment's plumbing.
pub struct Attach<'a> {
    pub mode: Mode,
    pub host_name: &'a str,
    pub ifname: &'a str,
    pub netns: &'a Netns,
    pub mtu: u32,
    pub bridge: Option<&'a Link>,
    /// The container's addresses with the prefix length they get inside the container.
    pub addresses: &'a [IpNet],
    /// The host veth's MAC ([`owner_mac`] of the attachment).
    pub host_mac: [u8; 6],
    /// The MAC the container's interface gets (chosen by the caller, which binds the port to
    /// it before the veth exists).
    pub container_mac: [u8; 6],
}

/// What [`attach`] made, for the result.
pub struct Attached {
    pub host_mac: [u8; 6],
    pub container_mac: [u8; 6],
    /// Gateway per address (same order as `addresses`).
    pub gateways: Vec<IpAddr>,
}

/// Creates the veth pair and configures both ends.
pub fn attach(
    host: &mut Handle,
    container: &mut Handle,
    a: &Attach<'_>,
) -> Result<Attached, CniError> {
    let host_mac = a.host_mac;
    let container_mac = a.container_mac;
    let spec = VethSpec {
        host_name: a.host_name,
        host_mac,
        peer_name: a.ifname,
        peer_mac: container_mac,
        peer_netns: a.netns,
        mtu: a.mtu,
        master: a.bridge.map(|b| b.index),
    };
    host.create_veth(&spec).map_err(|e| {
        if e.is_exists() {
            CniError::new(
                code::INTERFACE_EXISTS,
                format!(
                    "host interface {} was created by someone else at the same time; it is left alone",
                    a.host_name
                ),
            )
        } else {
            kernel(e)
        }
    })?;

    let peer = container
        .link_by_name(a.ifname)
        .map_err(kernel)?
        .ok_or_else(|| {
            CniError::new(
                code::KERNEL,
                format!(
                    "{} did not appear in the container after creation",
                    a.ifname
                ),
            )
        })?;

    container.set_up(peer.index).map_err(kernel)?;
    let has_v6 = a.addresses.iter().any(|n| n.addr().is_ipv6());
    let mut gateways = Vec::new();
    for net in a.addresses {
        container
            .add_address(peer.index, *net, true)
            .map_err(kernel)?;
    }
    let host_link = match a.mode {
        Mode::Bridge => None,
        Mode::Routed => {
            let link = host
                .link_by_name(a.host_name)
                .map_err(kernel)?
                .ok_or_else(|| {
                    CniError::new(
                        code::KERNEL,
                        format!("{} vanished after creation", a.host_name),
                    )
                })?;
            // Proxy ARP answers the container's ARP for 169.254.1.1; without proxy_delay=0 the
            // kernel delays proxied answers to broadcast requests by up to 0.8 s.
            set_sysctl(&format!("net/ipv4/conf/{}/proxy_arp", a.host_name), "1")?;
            set_sysctl(&format!("net/ipv4/neigh/{}/proxy_delay", a.host_name), "0")?;
            if has_v6 {
                let gw = IpNet::new(IpAddr::V6(ROUTED_GATEWAY_V6), 64).expect("literal");
                host.add_address(link.index, gw, true)
                    .or_else(|e| if e.is_exists() { Ok(()) } else { Err(e) })
                    .map_err(kernel)?;
            }
            Some(link)
        }
    };
    for net in a.addresses {
        let ip = net.addr();
        let gw = match (a.mode, ip) {
            (Mode::Bridge, _) => bridge_gateway(&net.trunc()),
            (Mode::Routed, IpAddr::V4(_)) => IpAddr::V4(ROUTED_GATEWAY_V4),
            (Mode::Routed, IpAddr::V6(_)) => IpAddr::V6(ROUTED_GATEWAY_V6),
        };
        if a.mode == Mode::Routed && ip.is_ipv4() {
            // 169.254.1.1 is on no subnet of the container: make it directly reachable.
            container
                .add_route(&own_route(host_prefix(gw), None, peer.index), false)
                .map_err(kernel)?;
        }
        let default = IpNet::new(
            if ip.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            },
            0,
        )
        .expect("prefix 0 fits");
        container
            .add_route(&own_route(default, Some(gw), peer.index), false)
            .map_err(kernel)?;
        if let Some(link) = &host_link {
            host.add_route(&own_route(host_prefix(ip), None, link.index), true)
                .map_err(kernel)?;
        }
        gateways.push(gw);
    }
    Ok(Attached {
        host_mac,
        container_mac,
        gateways,
    })
}

/// A route marked as twill's: via `gateway` if given, else directly on link `oif`.
fn own_route(dst: IpNet, gateway: Option<IpAddr>, oif: u32) -> Route {
    Route {
        dst,
        gateway,
        oif: Some(oif),
        link_scope: gateway.is_none(),
        protocol: ROUTE_PROTOCOL,
    }
}

/// `ip` as a /32 or /128.
fn host_prefix(ip: IpAddr) -> IpNet {
    IpNet::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("full-length prefix fits")
}

/// Deletes a veth pair by its host link (the container end goes with it, and so do the host
/// routes through it). Callers first prove that it is theirs ([`proven_ours`]).
pub fn delete_veth(host: &mut Handle, link: &Link) -> Result<(), CniError> {
    match host.delete_link(link.index) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(kernel(e)),
    }
}

/// Deletes the attachment's host veth if it exists and carries the attachment's
/// [`owner_mac`] (i.e. it was made by this attachment's ADD). Returns whether it did.
pub fn detach_own(
    host: &mut Handle,
    host_name: &str,
    container_id: &str,
    ifname: &str,
) -> Result<bool, CniError> {
    match host.link_by_name(host_name).map_err(kernel)? {
        Some(link) if proven_ours(&link, container_id, ifname, None) => {
            delete_veth(host, &link).map(|()| true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_short_and_distinct() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_eq!(a.len(), 13);
        assert!(a.starts_with("tw"));
        assert_ne!(a, host_veth_name("abc", "eth1"));
        assert_ne!(host_veth_name("ab", "ceth0"), host_veth_name("abc", "eth0"));
        // Pinned: a changed hash would orphan every existing attachment after an upgrade.
        assert_eq!(host_veth_name("container1", "eth0"), "twcd0187a8420");
        // The published FNV-1a 64 test vector for "a".
        assert_eq!(fnv1a("a".bytes()), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn owner_macs_tell_colliding_names_apart() {
        // Found by brute force: two attachments whose host veth names collide.
        let a = host_veth_name("c000222fa", "eth0");
        assert_eq!(a, host_veth_name("c0159fe78", "eth0"));
        assert_eq!(a, "tw2064c0b5bca");
        assert_ne!(
            owner_mac("c000222fa", "eth0"),
            owner_mac("c0159fe78", "eth0")
        );
        assert_eq!(owner_mac("c1", "eth0"), owner_mac("c1", "eth0"));
        assert_ne!(owner_mac("c1", "eth0"), owner_mac("c1", "eth1"));
        let m = owner_mac("c1", "eth0");
        assert_eq!(m[0] & 0x03, 0x02, "local unicast");
    }

    #[test]
    fn macs_are_local_unicast() {
        for _ in 0..50 {
            let m = random_mac();
            assert_eq!(m[0] & 0x01, 0, "unicast");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered");
        }
        assert_eq!(stable_mac("twill0"), stable_mac("twill0"));
        assert_eq!(stable_mac("x")[0] & 0x03, 0x02);
    }

    #[test]
    fn gateways_are_first_addresses() {
        assert_eq!(
            bridge_gateway(&"10.88.0.0/16".parse().unwrap()),
            "10.88.0.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            bridge_gateway(&"fd88::/64".parse().unwrap()),
            "fd88::1".parse::<IpAddr>().unwrap()
        );
    }
}
