//! vxlan: kernel VXLAN (RFC 7348) with Flannel's scheme, so no multicast and no learning. Each
//! node has one VTEP device `twill.<vni>` carrying its subnet's network address as a /32 and a
//! MAC published in its lease. For each peer:
//! - a route to the peer's subnet via the peer's subnet network address, on-link on the device;
//! - a permanent neighbour entry: that address is the peer's VTEP MAC;
//! - a permanent FDB entry: frames for that MAC go to the peer's underlay address.
//!
//! With direct routing (Flannel's `DirectRouting`, Calico's `CrossSubnet`), peers on this
//! node's L2 segment get a plain host-gw route instead, and only the rest are encapsulated.
//!
//! Dual stack (Flannel's `flannel-v6.<vni>` scheme): a node with an IPv6 subnet and an IPv6
//! underlay address has a second VTEP, `twill6.<vni>` (same VNI and port: the kernel binds one
//! IPv4 and one IPv6 socket), sending from that address, carrying its IPv6 subnet's network
//! address as a /128 and its own MAC (`vtep_mac6` in the lease). A peer's IPv6 subnet goes
//! - when both ends have an IPv6 underlay: through `twill6.<vni>` (route, NDP neighbour and
//!   FDB entry as above, all on that device, the FDB entry to the peer's IPv6 underlay
//!   address); with direct routing, a peer on this node's IPv6 segment gets a plain route via
//!   its IPv6 underlay address instead;
//! - otherwise: through `twill.<vni>` over IPv4 (route and NDP neighbour on that device, the
//!   neighbour the peer's IPv4 VTEP MAC, whose FDB entry leads to its IPv4 underlay address).
//!
//! Both ends decide by the same facts, so traffic is symmetric. The IPv6 device exists
//! whenever the node has an IPv6 subnet and an IPv6 underlay address, peers or not: peers must
//! reach it before this node knows them (like `twill.<vni>`).
//!
//! An IPv6-only node (no IPv4 subnet or underlay) has only `twill6.<vni>`: each peer's IPv6
//! subnet goes through it (or, with direct routing, a plain route on the IPv6 segment).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_types::MacAddr;
use twill_types::cluster::{BackendKind, MAX_VNI};
use twill_types::desired::{DesiredState, FdbSpec, NeighSpec, PeerPath, RouteSpec, VxlanDevice};
use twill_types::hash::fnv1a;
use twill_types::lease::Lease;

use crate::screen::{Peer6, screen, screen_ipv6_only, screen6};
use crate::{Backend, LocalNode, UnsupportedBackend, lease_of};

/// Bytes VXLAN over an IPv6 underlay adds: outer IPv6 (40), UDP (8), VXLAN (8) and the inner
/// Ethernet header (14); over IPv4 it is [`BackendKind::mtu_overhead`] (50).
pub const IPV6_UNDERLAY_OVERHEAD: u32 = 70;

/// The vxlan backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    vni: u32,
    port: u16,
    direct_routing: bool,
    /// The cluster's IPv6 pools (none: IPv4 only).
    ipv6_pools: Vec<Ipv6Net>,
}

impl Vxlan {
    /// A vxlan backend; refuses VNIs outside the 24 bits VXLAN has (whose device name would
    /// not fit a Linux link name either).
    pub fn new(vni: u32, port: u16, direct_routing: bool) -> Result<Vxlan, UnsupportedBackend> {
        if !(1..=MAX_VNI).contains(&vni) {
            return Err(UnsupportedBackend(format!(
                "vxlan backend: VNI {vni} is outside 1 to {MAX_VNI}"
            )));
        }
        Ok(Vxlan {
            vni,
            port,
            direct_routing,
            ipv6_pools: Vec::new(),
        })
    }

    /// The same backend for a dual-stack cluster with these IPv6 pools.
    pub fn with_ipv6_pools(self, ipv6_pools: Vec<Ipv6Net>) -> Vxlan {
        Vxlan { ipv6_pools, ..self }
    }

    /// The VTEP device's name.
    pub fn device_name(&self) -> String {
        device_name(self.vni)
    }

    /// The VTEP device this node should have: none on an IPv6-only node.
    pub fn device(&self, node: &LocalNode) -> Option<VxlanDevice> {
        let (subnet, public_net) = node.ipv4()?;
        Some(VxlanDevice {
            name: self.device_name(),
            vni: self.vni,
            port: self.port,
            local: public_net.addr().into(),
            underlay: node.underlay_dev.clone(),
            mac: vtep_mac(&node.name, self.vni),
            mtu: node
                .underlay_mtu
                .saturating_sub(BackendKind::Vxlan.mtu_overhead()),
            address: (Ipv4Net::new(subnet.network(), 32).expect("/32 is a prefix length")).into(),
        })
    }

    /// The IPv6 VTEP device this node should have: only with an IPv6 subnet and an IPv6
    /// underlay address.
    pub fn device6(&self, node: &LocalNode) -> Option<VxlanDevice> {
        let (subnet6, public_net6) = node.subnet6.zip(node.public_net6)?;
        Some(VxlanDevice {
            name: device_name6(self.vni),
            vni: self.vni,
            port: self.port,
            local: public_net6.addr().into(),
            underlay: node.underlay_dev.clone(),
            mac: vtep_mac6(&node.name, self.vni),
            mtu: node.underlay_mtu.saturating_sub(IPV6_UNDERLAY_OVERHEAD),
            address: (Ipv6Net::new(subnet6.network(), 128).expect("/128 is a prefix length"))
                .into(),
        })
    }
}

impl Vxlan {
    /// The desired state of an IPv6-only node: `twill6.<vni>` alone, and each peer's IPv6
    /// subnet through it (route, NDP neighbour, FDB entry to its IPv6 underlay address), or
    /// with direct routing a plain route when the peer is on this node's IPv6 segment.
    fn desired_ipv6_only(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        let mut state = DesiredState::default();
        let Some(device6) = self.device6(node) else {
            // The agent gives every IPv6-only node an IPv6 subnet and underlay address.
            return state;
        };
        let peers: Vec<Peer6> = screen_ipv6_only(node, &self.ipv6_pools, peers);
        let mut plans: Vec<Plan6> = peers
            .iter()
            .map(|peer| {
                if let Some(problem) = &peer.problem {
                    return Plan6::Skip(problem.clone());
                }
                let ip6 = match peer.underlay6(node) {
                    Ok(ip6) => ip6,
                    Err(reason) => return Plan6::Skip(format!("vxlan: {reason}")),
                };
                if self.direct_routing && peer.on_segment6(node) {
                    return Plan6::Direct(ip6);
                }
                match usable_mac(peer.lease, peer.lease.vtep_mac6, device6.mac, Family::V6) {
                    Ok(mac6) => Plan6::Vtep6(mac6, ip6),
                    Err(reason) => Plan6::Skip(reason),
                }
            })
            .collect();
        let users = plans
            .iter()
            .enumerate()
            .filter_map(|(i, plan)| match plan {
                Plan6::Vtep6(mac6, ip6) => Some((i, *mac6, IpAddr::V6(*ip6))),
                _ => None,
            })
            .collect();
        let leases: Vec<&Lease> = peers.iter().map(|p| p.lease).collect();
        for (i, reason) in mac_conflicts(&leases, users, Family::V6) {
            plans[i] = Plan6::Skip(reason);
        }
        let mut fdb_entries: HashSet<(MacAddr, Ipv6Addr)> = HashSet::with_capacity(peers.len());
        for (peer, plan) in peers.iter().zip(plans) {
            let path = match plan {
                Plan6::Skip(reason) => PeerPath::Skipped(reason),
                Plan6::Direct(ip6) => {
                    state.routes.push(peer.direct_route6(node, ip6));
                    PeerPath::Direct
                }
                Plan6::Vtep6(mac6, ip6) => {
                    let gateway = IpAddr::V6(peer.subnet6.network());
                    state.routes.push(RouteSpec {
                        dst: peer.subnet6.into(),
                        via: gateway,
                        dev: device6.name.clone(),
                        onlink: true,
                    });
                    state.neighbours.push(NeighSpec {
                        dev: device6.name.clone(),
                        ip: gateway,
                        mac: mac6,
                    });
                    if fdb_entries.insert((mac6, ip6)) {
                        state.fdb.push(FdbSpec {
                            dev: device6.name.clone(),
                            mac: mac6,
                            dst: ip6.into(),
                        });
                    }
                    PeerPath::Vxlan
                }
                Plan6::Vtep4(_) => unreachable!("an IPv6-only node has no IPv4 VTEP"),
            };
            state.peers.push(peer.plan(path));
        }
        state.vxlan6 = Some(device6);
        state
    }
}

/// The VTEP device name for `vni`: `twill.<vni>`, at most 14 characters for a 24-bit VNI
/// (Linux allows 15).
pub fn device_name(vni: u32) -> String {
    format!("twill.{vni}")
}

/// The IPv6 VTEP device name for `vni`: `twill6.<vni>`, at most 15 characters for a 24-bit
/// VNI (exactly Linux's limit).
pub fn device_name6(vni: u32) -> String {
    format!("twill6.{vni}")
}

/// The VTEP MAC of `node` on `vni`: the first six bytes of FNV-1a over the name and VNI, made
/// locally administered unicast. Derived rather than random so that a restarted agent keeps
/// its MAC and peers' neighbour and FDB entries stay right while its lease is republished.
pub fn vtep_mac(node: &str, vni: u32) -> MacAddr {
    let hash = fnv1a(node.bytes().chain([0]).chain(vni.to_be_bytes()));
    let b = hash.to_be_bytes();
    MacAddr([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// The IPv6 VTEP MAC of `node` on `vni`: derived like [`vtep_mac`] with the family marker
/// `ipv6` hashed too, so it differs from the IPv4 one and stays the same across restarts.
pub fn vtep_mac6(node: &str, vni: u32) -> MacAddr {
    let hash = fnv1a(
        node.bytes()
            .chain([0])
            .chain(vni.to_be_bytes())
            .chain(*b"ipv6"),
    );
    let b = hash.to_be_bytes();
    MacAddr([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// How one screened peer's IPv4 subnet is to be reached.
enum Plan {
    Skip(String),
    Direct,
    Encap(MacAddr),
}

/// How one screened peer's IPv6 subnet is to be reached.
enum Plan6 {
    Skip(String),
    /// A plain route via its IPv6 underlay address (direct routing).
    Direct(Ipv6Addr),
    /// Through `twill6.<vni>`: its IPv6 VTEP MAC at its IPv6 underlay address.
    Vtep6(MacAddr, Ipv6Addr),
    /// Through `twill.<vni>`: its IPv4 VTEP MAC (at its IPv4 underlay address).
    Vtep4(MacAddr),
}

/// Which VTEP MAC a check is about, for its messages.
#[derive(Clone, Copy)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn label(self) -> &'static str {
        match self {
            Family::V4 => "VTEP MAC",
            Family::V6 => "IPv6 VTEP MAC",
        }
    }
}

/// A peer's published VTEP MAC (`mac`) if this node can use it, or why not.
fn usable_mac(
    lease: &Lease,
    mac: Option<MacAddr>,
    own: MacAddr,
    family: Family,
) -> Result<MacAddr, String> {
    let label = family.label();
    match mac {
        None if lease.backend == BackendKind::Vxlan => {
            Err(format!("vxlan: the lease has no {label}"))
        }
        None => Err(format!(
            "vxlan: the peer runs the {} backend and publishes no {label}",
            lease.backend
        )),
        Some(mac) if mac.0[0] & 1 == 1 || mac.0 == [0; 6] => {
            Err(format!("vxlan: {label} {mac} is not a unicast address"))
        }
        Some(mac) if mac == own => Err(format!("vxlan: {label} {mac} is this node's own")),
        Some(mac) => Ok(mac),
    }
}

/// One MAC can have one FDB destination per device. The same node under two leases (same
/// MAC, same address) is fine; the same MAC at two addresses is a conflict nobody can settle
/// here: `users` are (index in `leases`, MAC, destination), and the result says, for each
/// index in a conflict, why it is skipped.
fn mac_conflicts(
    leases: &[&Lease],
    users: Vec<(usize, MacAddr, IpAddr)>,
    family: Family,
) -> BTreeMap<usize, String> {
    let mut holders: BTreeMap<MacAddr, Vec<(usize, IpAddr)>> = BTreeMap::new();
    for (i, mac, dst) in users {
        let entry = holders.entry(mac).or_default();
        if !entry.iter().any(|&(j, _)| j == i) {
            entry.push((i, dst));
        }
    }
    let mut conflicts = BTreeMap::new();
    for (mac, users) in holders {
        let first = users[0].1;
        if users.iter().all(|&(_, dst)| dst == first) {
            continue;
        }
        for &(i, _) in &users {
            let others: Vec<String> = users
                .iter()
                .filter(|&&(j, _)| j != i)
                .map(|&(j, dst)| format!("{} ({dst})", leases[j].node))
                .collect();
            conflicts.insert(
                i,
                format!(
                    "vxlan: {} {mac} is also published by {}",
                    family.label(),
                    others.join(", ")
                ),
            );
        }
    }
    conflicts
}

impl Backend for Vxlan {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(
            node,
            BackendKind::Vxlan,
            // No IPv4 VTEP on an IPv6-only node (it has no IPv4 underlay).
            node.public_net
                .is_some()
                .then(|| vtep_mac(&node.name, self.vni)),
            // The IPv6 subnet is derived when the lease is taken, after this lease is made:
            // the cluster having IPv6 pools is what says the IPv6 VTEP will exist.
            (node.subnet6.is_some() || !self.ipv6_pools.is_empty())
                .then(|| vtep_mac6(&node.name, self.vni)),
        )
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        if node.is_ipv6_only() {
            return self.desired_ipv6_only(node, peers);
        }
        let Some(device) = self.device(node) else {
            // Not leased yet: nothing to program.
            return DesiredState::default();
        };
        let device6 = self.device6(node);
        let own6 = vtep_mac6(&node.name, self.vni);
        let mut peers = screen(node, peers);
        screen6(node, &self.ipv6_pools, &mut peers);
        let vtep4: Vec<Result<MacAddr, String>> = peers
            .iter()
            .map(|peer| usable_mac(peer.lease, peer.lease.vtep_mac, device.mac, Family::V4))
            .collect();
        let mut plans: Vec<Plan> = peers
            .iter()
            .zip(&vtep4)
            .map(|(peer, vtep4)| match (&peer.problem, vtep4) {
                (Some(problem), _) => Plan::Skip(problem.clone()),
                (None, _) if self.direct_routing && peer.on_segment(node) => Plan::Direct,
                (None, Ok(mac)) => Plan::Encap(*mac),
                (None, Err(reason)) => Plan::Skip(reason.clone()),
            })
            .collect();
        let mut plans6: Vec<Option<Plan6>> = peers
            .iter()
            .zip(&vtep4)
            .map(|(peer, vtep4)| {
                let subnet6 = peer.v6.as_ref()?;
                Some(match (subnet6, peer.underlay6(node)) {
                    (Err(reason), _) => Plan6::Skip(reason.clone()),
                    (Ok(_), Ok(ip6)) if self.direct_routing && peer.on_segment6(node) => {
                        Plan6::Direct(ip6)
                    }
                    (Ok(_), Ok(ip6)) => {
                        match usable_mac(peer.lease, peer.lease.vtep_mac6, own6, Family::V6) {
                            Ok(mac6) => Plan6::Vtep6(mac6, ip6),
                            Err(reason) => Plan6::Skip(reason),
                        }
                    }
                    (Ok(_), Err(_)) => match vtep4 {
                        Ok(mac) => Plan6::Vtep4(*mac),
                        Err(reason) => Plan6::Skip(reason.clone()),
                    },
                })
            })
            .collect();

        // The MACs on each device, and the peers they conflict for.
        let mut on_vtep4 = Vec::new();
        let mut on_vtep6 = Vec::new();
        for (i, peer) in peers.iter().enumerate() {
            let ip4 = IpAddr::V4(peer.public_ip);
            if let Plan::Encap(mac) = plans[i] {
                on_vtep4.push((i, mac, ip4));
            }
            match plans6[i] {
                Some(Plan6::Vtep4(mac)) => on_vtep4.push((i, mac, ip4)),
                Some(Plan6::Vtep6(mac6, ip6)) => on_vtep6.push((i, mac6, IpAddr::V6(ip6))),
                _ => {}
            }
        }
        let leases: Vec<&Lease> = peers.iter().map(|p| p.lease).collect();
        for (i, reason) in mac_conflicts(&leases, on_vtep4, Family::V4) {
            if matches!(plans[i], Plan::Encap(_)) {
                plans[i] = Plan::Skip(reason.clone());
            }
            if matches!(plans6[i], Some(Plan6::Vtep4(_))) {
                plans6[i] = Some(Plan6::Skip(reason));
            }
        }
        for (i, reason) in mac_conflicts(&leases, on_vtep6, Family::V6) {
            plans6[i] = Some(Plan6::Skip(reason));
        }

        let dev = device.name.clone();
        let dev6 = device6.as_ref().map(|d| d.name.clone());
        let mut state = DesiredState::default();
        // The same node under two leases has one FDB entry (looked up by set: a scan of the
        // entries so far made this quadratic, most of a resync's cost at thousands of peers).
        let mut fdb_entries: HashSet<(MacAddr, IpAddr)> = HashSet::with_capacity(peers.len());
        // One subnet through a VTEP: the route via its gateway on-link, the neighbour entry
        // gateway -> MAC, and the FDB entry MAC -> underlay address (once per MAC and address;
        // the address's family tells the devices apart: IPv4 on twill.<vni>, IPv6 on
        // twill6.<vni>).
        let mut encap =
            |state: &mut DesiredState, dev: &str, dst: IpNet, gateway: IpAddr, mac, underlay| {
                state.routes.push(RouteSpec {
                    dst,
                    via: gateway,
                    dev: dev.to_string(),
                    onlink: true,
                });
                state.neighbours.push(NeighSpec {
                    dev: dev.to_string(),
                    ip: gateway,
                    mac,
                });
                if fdb_entries.insert((mac, underlay)) {
                    state.fdb.push(FdbSpec {
                        dev: dev.to_string(),
                        mac,
                        dst: underlay,
                    });
                }
            };
        for ((peer, plan), plan6) in peers.iter().zip(plans).zip(plans6) {
            let ip4 = IpAddr::V4(peer.public_ip);
            let path = match plan {
                Plan::Skip(reason) => PeerPath::Skipped(reason),
                Plan::Direct => {
                    state.routes.push(peer.direct_route(node));
                    PeerPath::Direct
                }
                Plan::Encap(mac) => {
                    let gateway: Ipv4Addr = peer.subnet.network();
                    encap(
                        &mut state,
                        &dev,
                        peer.subnet.into(),
                        gateway.into(),
                        mac,
                        ip4,
                    );
                    PeerPath::Vxlan
                }
            };
            let path6 = plan6.map(|plan6| {
                let subnet6 = peer
                    .lease
                    .subnet6
                    .expect("peers with an IPv6 plan have one");
                let gateway = IpAddr::V6(subnet6.network());
                match plan6 {
                    Plan6::Skip(reason) => PeerPath::Skipped(reason),
                    Plan6::Direct(ip6) => {
                        state.routes.push(peer.direct_route6(node, subnet6, ip6));
                        PeerPath::Direct
                    }
                    Plan6::Vtep6(mac6, ip6) => {
                        let dev6 = dev6.as_deref().expect("both ends have an IPv6 underlay");
                        encap(&mut state, dev6, subnet6.into(), gateway, mac6, ip6.into());
                        PeerPath::Vxlan
                    }
                    Plan6::Vtep4(mac) => {
                        encap(&mut state, &dev, subnet6.into(), gateway, mac, ip4);
                        PeerPath::Vxlan
                    }
                }
            });
            state.peers.push(peer.plan6(path, path6));
        }
        state.vxlan = Some(device);
        state.vxlan6 = device6;
        state
    }

    /// The underlay MTU less VXLAN's overhead, with direct routing too: pods cannot know
    /// which peers are encapsulated. Pods have one MTU for both families, so a node with an
    /// IPv6 VTEP (IPv6 subnet and IPv6 underlay) takes the larger IPv6-underlay overhead (70
    /// rather than 50): it fits both devices. It is fixed when the node starts, so it cannot
    /// follow which peers happen to use which device.
    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        let overhead = match node.subnet6.zip(node.public_net6) {
            Some(_) => IPV6_UNDERLAY_OVERHEAD,
            None => BackendKind::Vxlan.mtu_overhead(),
        };
        node.underlay_mtu.saturating_sub(overhead)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_fit_linux() {
        assert_eq!(device_name(1), "twill.1");
        assert!(device_name(MAX_VNI).len() <= 15);
        assert_eq!(device_name6(1), "twill6.1");
        assert_eq!(device_name6(MAX_VNI).len(), 15);
        assert!(Vxlan::new(0, 8472, false).is_err());
        assert!(Vxlan::new(MAX_VNI + 1, 8472, false).is_err());
    }
}
