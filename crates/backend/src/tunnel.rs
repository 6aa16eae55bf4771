//! udp and ipip: the userspace tunnel. Packets for a peer's pod subnet are routed into the
//! agent's TUN device `twill.tun`; the tunnel engine encapsulates them (the inner IPv4 packet as
//! a UDP payload, Flannel's udp framing; or IP protocol 4 right after an outer IPv4 header,
//! Linux ipip) and sends them to the peer's underlay address. With DirectRouting (Calico's
//! CrossSubnet), peers on this node's L2 segment get a plain route instead.
//!
//! Route per tunnelled peer: `<subnet> via <subnet network address> dev twill.tun onlink`. The
//! next hop means nothing to a TUN device (no ARP); it keeps routes in the same shape as the
//! VXLAN ones, and the engine picks the peer by the packet's destination.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use twill_types::cluster::BackendKind;
use twill_types::desired::{
    DesiredState, PeerPath, RouteSpec, TunnelDevice, TunnelEncap, TunnelPeer,
};
use twill_types::lease::Lease;

use crate::screen::screen;
use crate::{Backend, LocalNode, lease_of};

/// Name of the TUN device.
pub const DEVICE: &str = "twill.tun";

/// The userspace tunnel backend (udp or ipip).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    pub encap: TunnelEncap,
    pub direct_routing: bool,
}

impl Tunnel {
    fn kind(&self) -> BackendKind {
        match self.encap {
            TunnelEncap::Udp { .. } => BackendKind::Udp,
            TunnelEncap::Ipip => BackendKind::Ipip,
        }
    }

    /// Bytes the encapsulation adds to each packet.
    pub fn overhead(&self) -> u32 {
        self.kind().mtu_overhead()
    }

    fn path(&self) -> PeerPath {
        match self.encap {
            TunnelEncap::Udp { .. } => PeerPath::Udp,
            TunnelEncap::Ipip => PeerPath::Ipip,
        }
    }
}

impl Backend for Tunnel {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(node, self.kind(), None, None)
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        let kind = self.kind();
        let peers = screen(node, peers);
        // The engine knows a peer by its underlay address: two tunnelled peers at one address
        // could not be told apart on receive, so neither is programmed.
        let mut by_address: BTreeMap<Ipv4Addr, Vec<&str>> = BTreeMap::new();
        for peer in peers.iter().filter(|p| p.problem.is_none()) {
            by_address
                .entry(peer.lease.public_ip())
                .or_default()
                .push(&peer.lease.node);
        }
        let mut state = DesiredState {
            tunnel: Some(TunnelDevice {
                name: DEVICE.to_string(),
                encap: self.encap,
                mtu: self.pod_mtu(node),
                local: node.public_net.addr(),
            }),
            ..DesiredState::default()
        };
        for peer in &peers {
            let lease = peer.lease;
            let path = if let Some(problem) = &peer.problem {
                PeerPath::Skipped(problem.clone())
            } else if self.direct_routing && peer.on_segment(node) {
                state.routes.push(peer.direct_route(node));
                PeerPath::Direct
            } else if lease.backend != kind {
                PeerPath::Skipped(format!(
                    "{kind}: the peer runs the {} backend and cannot decapsulate {kind}",
                    lease.backend
                ))
            } else if by_address[&lease.public_ip()].len() > 1 {
                PeerPath::Skipped(format!(
                    "{kind}: underlay address {} is published by several nodes ({})",
                    lease.public_ip(),
                    by_address[&lease.public_ip()].join(", ")
                ))
            } else {
                state.routes.push(RouteSpec {
                    dst: lease.subnet.into(),
                    via: lease.subnet.network().into(),
                    dev: DEVICE.to_string(),
                    onlink: true,
                });
                state.tunnel_peers.push(TunnelPeer {
                    node: lease.node.clone(),
                    subnet: lease.subnet,
                    underlay: lease.public_ip(),
                });
                self.path()
            };
            state.peers.push(peer.plan(path));
        }
        state
    }

    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        node.underlay_mtu.saturating_sub(self.overhead())
    }
}
