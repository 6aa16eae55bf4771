//! vxlan: kernel VXLAN (RFC 7348) with Flannel's scheme, so no multicast and no learning. Each
//! node has one VTEP device `twill.<vni>` carrying its subnet's network address as a /32 and a
//! MAC published in its lease. For each peer:
//! - a route to the peer's subnet via the peer's subnet network address, on-link on the device;
//! - a permanent neighbour entry: that address is the peer's VTEP MAC;
//! - a permanent FDB entry: frames for that MAC go to the peer's underlay address.
//!
//! With direct routing (Flannel's `DirectRouting`, Calico's `CrossSubnet`), peers on this
//! node's L2 segment get a plain host-gw route instead, and only the rest are encapsulated.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use twill_types::MacAddr;
use twill_types::cluster::{BackendKind, MAX_VNI};
use twill_types::desired::{DesiredState, FdbSpec, NeighSpec, PeerPath, RouteSpec, VxlanDevice};
use twill_types::hash::fnv1a;
use twill_types::lease::Lease;

use crate::screen::screen;
use crate::{Backend, LocalNode, UnsupportedBackend, lease_of};

/// The vxlan backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vxlan {
    vni: u32,
    port: u16,
    direct_routing: bool,
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
        })
    }

    /// The VTEP device's name.
    pub fn device_name(&self) -> String {
        device_name(self.vni)
    }

    /// The VTEP device this node should have.
    pub fn device(&self, node: &LocalNode) -> VxlanDevice {
        VxlanDevice {
            name: self.device_name(),
            vni: self.vni,
            port: self.port,
            local: node.public_net.addr().into(),
            underlay: node.underlay_dev.clone(),
            mac: vtep_mac(&node.name, self.vni),
            mtu: self.pod_mtu(node),
            address: (Ipv4Net::new(node.subnet.network(), 32).expect("/32 is a prefix length"))
                .into(),
        }
    }
}

/// The VTEP device name for `vni`: `twill.<vni>`, at most 14 characters for a 24-bit VNI
/// (Linux allows 15).
pub fn device_name(vni: u32) -> String {
    format!("twill.{vni}")
}

/// The VTEP MAC of `node` on `vni`: the first six bytes of FNV-1a over the name and VNI, made
/// locally administered unicast. Derived rather than random so that a restarted agent keeps
/// its MAC and peers' neighbour and FDB entries stay right while its lease is republished.
pub fn vtep_mac(node: &str, vni: u32) -> MacAddr {
    let hash = fnv1a(node.bytes().chain([0]).chain(vni.to_be_bytes()));
    let b = hash.to_be_bytes();
    MacAddr([(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

/// How one screened peer is to be reached.
enum Plan {
    Skip(String),
    Direct,
    Encap(MacAddr),
}

impl Backend for Vxlan {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(
            node,
            BackendKind::Vxlan,
            Some(vtep_mac(&node.name, self.vni)),
        )
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        let device = self.device(node);
        let peers = screen(node, peers);
        let mut plans: Vec<Plan> = peers
            .iter()
            .map(|peer| {
                if let Some(problem) = &peer.problem {
                    return Plan::Skip(problem.clone());
                }
                if self.direct_routing && peer.on_segment(node) {
                    return Plan::Direct;
                }
                match peer.lease.vtep_mac {
                    None if peer.lease.backend == BackendKind::Vxlan => {
                        Plan::Skip("vxlan: the lease has no VTEP MAC".into())
                    }
                    None => Plan::Skip(format!(
                        "vxlan: the peer runs the {} backend and publishes no VTEP MAC",
                        peer.lease.backend
                    )),
                    Some(mac) if mac.0[0] & 1 == 1 || mac.0 == [0; 6] => {
                        Plan::Skip(format!("vxlan: VTEP MAC {mac} is not a unicast address"))
                    }
                    Some(mac) if mac == device.mac => {
                        Plan::Skip(format!("vxlan: VTEP MAC {mac} is this node's own"))
                    }
                    Some(mac) => Plan::Encap(mac),
                }
            })
            .collect();

        // One MAC can have one FDB destination. The same node under two leases (same MAC, same
        // address) is fine; the same MAC at two addresses is a conflict nobody can settle here.
        let mut holders: BTreeMap<MacAddr, Vec<usize>> = BTreeMap::new();
        for (i, plan) in plans.iter().enumerate() {
            if let Plan::Encap(mac) = plan {
                holders.entry(*mac).or_default().push(i);
            }
        }
        for (mac, idx) in holders {
            let first_ip = peers[idx[0]].lease.public_ip();
            if idx.iter().all(|&i| peers[i].lease.public_ip() == first_ip) {
                continue;
            }
            for &i in &idx {
                let others: Vec<String> = idx
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| format!("{} ({})", peers[j].lease.node, peers[j].lease.public_ip()))
                    .collect();
                plans[i] = Plan::Skip(format!(
                    "vxlan: VTEP MAC {mac} is also published by {}",
                    others.join(", ")
                ));
            }
        }

        let dev = device.name.clone();
        let mut state = DesiredState::default();
        // The same node under two leases has one FDB entry (looked up by set: a scan of the
        // entries so far made this quadratic, most of a resync's cost at thousands of peers).
        let mut fdb_entries: HashSet<(MacAddr, IpAddr)> = HashSet::with_capacity(peers.len());
        for (peer, plan) in peers.iter().zip(plans) {
            let path = match plan {
                Plan::Skip(reason) => PeerPath::Skipped(reason),
                Plan::Direct => {
                    state.routes.push(peer.direct_route(node));
                    PeerPath::Direct
                }
                Plan::Encap(mac) => {
                    let gateway: Ipv4Addr = peer.lease.subnet.network();
                    state.routes.push(RouteSpec {
                        dst: peer.lease.subnet.into(),
                        via: gateway.into(),
                        dev: dev.clone(),
                        onlink: true,
                    });
                    state.neighbours.push(NeighSpec {
                        dev: dev.clone(),
                        ip: gateway.into(),
                        mac,
                    });
                    let fdb = FdbSpec {
                        dev: dev.clone(),
                        mac,
                        dst: peer.lease.public_ip().into(),
                    };
                    if fdb_entries.insert((fdb.mac, fdb.dst)) {
                        state.fdb.push(fdb);
                    }
                    PeerPath::Vxlan
                }
            };
            state.peers.push(peer.plan(path));
        }
        state.vxlan = Some(device);
        state
    }

    /// The underlay MTU less VXLAN's 50 bytes, with direct routing too: pods cannot know
    /// which peers are encapsulated.
    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        node.underlay_mtu
            .saturating_sub(BackendKind::Vxlan.mtu_overhead())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_fit_linux() {
        assert_eq!(device_name(1), "twill.1");
        assert!(device_name(MAX_VNI).len() <= 15);
        assert!(Vxlan::new(0, 8472, false).is_err());
        assert!(Vxlan::new(MAX_VNI + 1, 8472, false).is_err());
    }
}
