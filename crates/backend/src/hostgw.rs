//! host-gw: a plain route to each peer's pod subnet via the peer's underlay address (Flannel's
//! host-gw, Calico's "Never" encapsulation). No device, no overhead; it only reaches peers on
//! this node's L2 segment, since the next hop must be directly reachable.
//!
//! In a dual-stack cluster the same holds per family: a peer's IPv6 subnet is routed via its
//! IPv6 underlay address (global or link-local) when that address is on this node's IPv6
//! segment; otherwise its IPv6 part is skipped with the reason (IPv6 is never routed via an
//! IPv4 gateway).
//!
//! An IPv6-only node (no IPv4 subnet or underlay) has only that IPv6 half: a route per peer
//! IPv6 subnet via the peer's IPv6 underlay address on this node's IPv6 segment.

use ipnet::Ipv6Net;
use twill_types::cluster::BackendKind;
use twill_types::desired::{DesiredState, PeerPath};
use twill_types::lease::Lease;

use crate::screen::{Peer, screen, screen_ipv6_only, screen6};
use crate::{Backend, LocalNode, lease_of};

/// The host-gw backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostGw {
    /// The cluster's IPv6 pools (none: IPv4 only).
    ipv6_pools: Vec<Ipv6Net>,
}

impl HostGw {
    /// host-gw for a cluster with these IPv6 pools (empty for IPv4 only).
    pub fn new(ipv6_pools: Vec<Ipv6Net>) -> HostGw {
        HostGw { ipv6_pools }
    }
}

impl Backend for HostGw {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(node, BackendKind::HostGw, None, None)
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        if node.is_ipv6_only() {
            return self.desired_ipv6_only(node, peers);
        }
        let mut state = DesiredState::default();
        let mut peers = screen(node, peers);
        screen6(node, &self.ipv6_pools, &mut peers);
        for peer in peers {
            let path = match peer.problem.clone() {
                Some(problem) => PeerPath::Skipped(problem),
                None if peer.on_segment(node) => {
                    state.routes.push(peer.direct_route(node));
                    PeerPath::Direct
                }
                None => PeerPath::Skipped(format!(
                    "host-gw: peer {} is not on this node's L2 segment {}; use vxlan or \
                     DirectRouting",
                    peer.public_ip,
                    node.public_net4().trunc()
                )),
            };
            let path6 = peer.v6.clone().map(|v6| match v6 {
                Err(reason) => PeerPath::Skipped(reason),
                Ok(subnet6) => match ipv6_next_hop(node, &peer) {
                    Ok(via) => {
                        state.routes.push(peer.direct_route6(node, subnet6, via));
                        PeerPath::Direct
                    }
                    Err(reason) => PeerPath::Skipped(format!("host-gw: {reason}")),
                },
            });
            state.peers.push(peer.plan6(path, path6));
        }
        state
    }

    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        node.underlay_mtu
    }
}

impl HostGw {
    /// The routes of an IPv6-only node: each peer's IPv6 subnet via its IPv6 underlay
    /// address, when that is on this node's IPv6 segment.
    fn desired_ipv6_only(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        let mut state = DesiredState::default();
        for peer in screen_ipv6_only(node, &self.ipv6_pools, peers) {
            let path = match peer.problem.clone() {
                Some(problem) => PeerPath::Skipped(problem),
                None => match next_hop6(node, peer.underlay6(node), peer.on_segment6(node)) {
                    Ok(via) => {
                        state.routes.push(peer.direct_route6(node, via));
                        PeerPath::Direct
                    }
                    Err(reason) => PeerPath::Skipped(format!("host-gw: {reason}")),
                },
            };
            state.peers.push(peer.plan(path));
        }
        state
    }
}

/// The next hop of a peer's IPv6 subnet: its IPv6 underlay address, when both ends have one
/// and it is on this node's IPv6 segment.
fn ipv6_next_hop(node: &LocalNode, peer: &Peer) -> Result<std::net::Ipv6Addr, String> {
    next_hop6(node, peer.underlay6(node), peer.on_segment6(node))
}

/// The next hop of a peer's IPv6 subnet given its IPv6 underlay address (or why it has none
/// usable) and whether that is on this node's IPv6 segment.
fn next_hop6(
    node: &LocalNode,
    underlay6: Result<std::net::Ipv6Addr, String>,
    on_segment6: bool,
) -> Result<std::net::Ipv6Addr, String> {
    let via = underlay6?;
    if !on_segment6 {
        let segment = node.public_net6.map(|n| n.trunc());
        return Err(format!(
            "peer {via} is not on this node's IPv6 segment {}; use vxlan",
            segment.expect("underlay6 checked that this node has one")
        ));
    }
    Ok(via)
}
