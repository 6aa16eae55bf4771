//! udp and ipip: the userspace tunnel. Packets for a peer's pod subnet are routed into the
//! agent's TUN device `twill.tun`; the tunnel engine encapsulates them (the inner packet as
//! a UDP payload, Flannel's udp framing; or right after an outer IPv4 header, Linux ipip: IP
//! protocol 4 for IPv4, 41 for IPv6) and sends them to the peer's underlay address. With
//! DirectRouting (Calico's CrossSubnet), peers on this node's L2 segment get a plain route
//! instead.
//!
//! Route per tunnelled peer: `<subnet> via <subnet network address> dev twill.tun onlink`. The
//! next hop means nothing to a TUN device (no ARP); it keeps routes in the same shape as the
//! VXLAN ones, and the engine picks the peer by the packet's destination.
//!
//! Dual stack: the underlay stays IPv4 (the peer's IPv4 underlay address), and a peer's IPv6
//! subnet goes through the same TUN device, routed like the IPv4 one (`<subnet6> via <subnet6
//! network address> dev twill.tun onlink`). With DirectRouting, a peer whose IPv6 underlay
//! address is on this node's IPv6 segment gets a plain IPv6 route via that address instead
//! (as vxlan does). Both ends decide by the same facts, so traffic is symmetric. Linux keeps
//! IPv6 off a link whose MTU is below 1280, so with a smaller tunnel MTU IPv6 parts are
//! skipped with the reason.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv6Net;
use twill_types::cluster::BackendKind;
use twill_types::desired::{
    DesiredState, PeerPath, RouteSpec, TunnelDevice, TunnelEncap, TunnelPeer,
};
use twill_types::lease::Lease;

use crate::screen::{Peer, screen, screen6};
use crate::{Backend, LocalNode, lease_of};

/// Name of the TUN device.
pub const DEVICE: &str = "twill.tun";

/// The smallest MTU of a link that carries IPv6 (RFC 8200); Linux disables IPv6 below it.
pub const IPV6_MIN_MTU: u32 = 1280;

/// The userspace tunnel backend (udp or ipip).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tunnel {
    pub encap: TunnelEncap,
    pub direct_routing: bool,
    /// The cluster's IPv6 pools (none: IPv4 only).
    pub ipv6_pools: Vec<Ipv6Net>,
}

impl Tunnel {
    /// A tunnel backend for an IPv4-only cluster.
    pub fn new(encap: TunnelEncap, direct_routing: bool) -> Tunnel {
        Tunnel {
            encap,
            direct_routing,
            ipv6_pools: Vec::new(),
        }
    }

    /// The same backend for a dual-stack cluster with these IPv6 pools.
    pub fn with_ipv6_pools(self, ipv6_pools: Vec<Ipv6Net>) -> Tunnel {
        Tunnel { ipv6_pools, ..self }
    }

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

    /// Why a peer cannot be tunnelled to, if it cannot: it must run this backend, and be the
    /// only node at its underlay address (the engine knows a peer by that address).
    fn untunnellable(
        &self,
        peer: &Peer,
        by_address: &BTreeMap<Ipv4Addr, Vec<&str>>,
    ) -> Option<String> {
        let kind = self.kind();
        let lease = peer.lease;
        if lease.backend != kind {
            Some(format!(
                "{kind}: the peer runs the {} backend and cannot decapsulate {kind}",
                lease.backend
            ))
        } else if by_address[&peer.public_ip].len() > 1 {
            Some(format!(
                "{kind}: underlay address {} is published by several nodes ({})",
                peer.public_ip,
                by_address[&peer.public_ip].join(", ")
            ))
        } else {
            None
        }
    }
}

impl Backend for Tunnel {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(node, self.kind(), None, None)
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        let kind = self.kind();
        let mut peers = screen(node, peers);
        screen6(node, &self.ipv6_pools, &mut peers);
        // The engine knows a peer by its underlay address: two tunnelled peers at one address
        // could not be told apart on receive, so neither is programmed.
        let mut by_address: BTreeMap<Ipv4Addr, Vec<&str>> = BTreeMap::new();
        for peer in peers.iter().filter(|p| p.problem.is_none()) {
            by_address
                .entry(peer.public_ip)
                .or_default()
                .push(&peer.lease.node);
        }
        let mtu = self.pod_mtu(node);
        let mut state = DesiredState {
            tunnel: Some(TunnelDevice {
                name: DEVICE.to_string(),
                encap: self.encap,
                mtu,
                local: node.public_net4().addr(),
            }),
            ..DesiredState::default()
        };
        for peer in &peers {
            let lease = peer.lease;
            // A refused lease is not in `by_address` (and its IPv6 part is refused too).
            let untunnellable = peer
                .problem
                .is_none()
                .then(|| self.untunnellable(peer, &by_address))
                .flatten();
            let path = if let Some(problem) = &peer.problem {
                PeerPath::Skipped(problem.clone())
            } else if self.direct_routing && peer.on_segment(node) {
                state.routes.push(peer.direct_route(node));
                PeerPath::Direct
            } else if let Some(reason) = &untunnellable {
                PeerPath::Skipped(reason.clone())
            } else {
                state.routes.push(RouteSpec {
                    dst: peer.subnet.into(),
                    via: peer.subnet.network().into(),
                    dev: DEVICE.to_string(),
                    onlink: true,
                });
                self.path()
            };
            let mut tunnelled6 = None;
            let path6 = peer.v6.clone().map(|v6| match v6 {
                Err(reason) => PeerPath::Skipped(reason),
                Ok(subnet6) => match peer.underlay6(node) {
                    Ok(via) if self.direct_routing && peer.on_segment6(node) => {
                        state.routes.push(peer.direct_route6(node, subnet6, via));
                        PeerPath::Direct
                    }
                    _ => match &untunnellable {
                        Some(reason) => PeerPath::Skipped(reason.clone()),
                        None if mtu < IPV6_MIN_MTU => PeerPath::Skipped(format!(
                            "{kind}: the tunnel MTU {mtu} is below IPv6's minimum of \
                             {IPV6_MIN_MTU}; raise the underlay MTU"
                        )),
                        None => {
                            state.routes.push(RouteSpec {
                                dst: subnet6.into(),
                                via: subnet6.network().into(),
                                dev: DEVICE.to_string(),
                                onlink: true,
                            });
                            tunnelled6 = Some(subnet6);
                            self.path()
                        }
                    },
                },
            });
            // The engine needs the peer when either family goes through it.
            if path == self.path() || tunnelled6.is_some() {
                state.tunnel_peers.push(TunnelPeer {
                    node: lease.node.clone(),
                    subnet: peer.subnet,
                    underlay: peer.public_ip,
                    subnet6: tunnelled6,
                });
            }
            state.peers.push(peer.plan6(path, path6));
        }
        state
    }

    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        node.underlay_mtu.saturating_sub(self.overhead())
    }
}
