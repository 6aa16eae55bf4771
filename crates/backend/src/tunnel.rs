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
//! Which underlay, per peer ([`peer_underlay`]): IPv4 when both ends have an IPv4 underlay
//! address (always so far), else IPv6 when both have an IPv6 one (a node without IPv4 underlay:
//! IPv6-only clusters); udp then travels in IPv6 UDP and ipip as Linux's `ip6tnl` (next header
//! 4 or 41), 20 bytes more per packet, so the tunnel's MTU is 20 lower while any peer is
//! reached over IPv6 (the pods' MTU too on a node without IPv4 underlay).
//!
//! Dual stack: a peer's IPv6 subnet goes through the same TUN device (over the peer's
//! underlay), routed like the IPv4 one (`<subnet6> via <subnet6
//! network address> dev twill.tun onlink`). With DirectRouting, a peer whose IPv6 underlay
//! address is on this node's IPv6 segment gets a plain IPv6 route via that address instead
//! (as vxlan does). Both ends decide by the same facts, so traffic is symmetric. Linux keeps
//! IPv6 off a link whose MTU is below 1280, so with a smaller tunnel MTU IPv6 parts are
//! skipped with the reason.
//!
//! IPv6-only clusters: a node without IPv4 (no IPv4 subnet or underlay) has only that IPv6
//! half. Its peers are screened by their IPv6 subnet and IPv6
//! underlay address alone; each one's IPv6 subnet is routed into `twill.tun` and carried over
//! its IPv6 underlay address (udp in IPv6 UDP, ipip as `ip6tnl`), or, with DirectRouting, gets
//! a plain route via that address when it is on this node's IPv6 segment. The tunnel's MTU
//! (and the pods') is the underlay's minus the encapsulation and the IPv6 outer header. Status
//! shows each peer's IPv6 path as both `path` and `path6`, as host-gw and vxlan do.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::Ipv6Net;
use twill_types::cluster::BackendKind;
use twill_types::desired::{
    DesiredState, PeerPath, RouteSpec, TunnelDevice, TunnelEncap, TunnelPeer,
};
use twill_types::lease::Lease;

use crate::screen::{Peer6, screen, screen_ipv6_only, screen6};
use crate::{Backend, LocalNode, lease_of};

/// Name of the TUN device.
pub const DEVICE: &str = "twill.tun";

/// The smallest MTU of a link that carries IPv6 (RFC 8200); Linux disables IPv6 below it.
pub const IPV6_MIN_MTU: u32 = 1280;

/// What an IPv6 outer header costs over an IPv4 one (40 − 20 bytes).
pub const IPV6_UNDERLAY_EXTRA: u32 = 20;

/// The underlay addresses one end has: IPv4, IPv6, either or both.
pub type UnderlayAddrs = (Option<Ipv4Addr>, Option<Ipv6Addr>);

/// The underlay a tunnelled peer is reached over, from both ends' addresses: IPv4 when both
/// have one (the IPv4 behaviour of every cluster so far), else IPv6 when both have one; else
/// why neither can work. Both ends decide by the same facts, so both pick the same family.
pub fn peer_underlay(local: UnderlayAddrs, peer: UnderlayAddrs) -> Result<IpAddr, String> {
    match (local, peer) {
        ((Some(_), _), (Some(v4), _)) => Ok(v4.into()),
        ((_, Some(_)), (_, Some(v6))) => Ok(v6.into()),
        ((None, None), _) => Err("this node has no underlay address".into()),
        (_, (None, None)) => Err("the peer publishes no underlay address".into()),
        ((Some(_), _), (None, _)) => {
            Err("the peer has no IPv4 underlay address and this node no IPv6 one".into())
        }
        ((None, _), _) => {
            Err("this node has no IPv4 underlay address and the peer no IPv6 one".into())
        }
    }
}

/// This node's underlay addresses (an unspecified IPv4 address is none).
pub(crate) fn node_underlay(node: &LocalNode) -> UnderlayAddrs {
    (
        node.public_net
            .map(|n| n.addr())
            .filter(|v4| !v4.is_unspecified()),
        node.public_net6.map(|n| n.addr()),
    )
}

/// A peer's underlay addresses; an IPv6 one only when it could be a unicast host's other than
/// ours (the screen checks it only with an IPv6 subnet).
pub(crate) fn lease_underlay(lease: &Lease, node: &LocalNode) -> UnderlayAddrs {
    let v4 = lease.public_ip();
    let ours6 = node.public_net6.map(|n| n.addr());
    let v6 = lease.public_ip6().filter(|ip6| {
        !(ip6.is_unspecified() || ip6.is_loopback() || ip6.is_multicast() || Some(*ip6) == ours6)
    });
    (v4.filter(|v4| !v4.is_unspecified()), v6)
}

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

    /// Why a peer cannot be tunnelled to, if it cannot: it must run this backend, share an
    /// underlay family with this node, and be the only node at its underlay address (the
    /// engine knows a peer by that address).
    fn untunnellable(
        &self,
        lease: &Lease,
        underlay: &Result<IpAddr, String>,
        by_address: &BTreeMap<IpAddr, Vec<&str>>,
    ) -> Option<String> {
        let kind = self.kind();
        match underlay {
            _ if lease.backend != kind => Some(format!(
                "{kind}: the peer runs the {} backend and cannot decapsulate {kind}",
                lease.backend
            )),
            Err(reason) => Some(format!("{kind}: {reason}")),
            Ok(addr) if by_address[addr].len() > 1 => Some(format!(
                "{kind}: underlay address {addr} is published by several nodes ({})",
                by_address[addr].join(", ")
            )),
            Ok(_) => None,
        }
    }

    /// The tunnel's MTU: the underlay's minus the encapsulation, over IPv6 when `ipv6`.
    fn mtu(&self, node: &LocalNode, ipv6: bool) -> u32 {
        let extra = if ipv6 { IPV6_UNDERLAY_EXTRA } else { 0 };
        node.underlay_mtu.saturating_sub(self.overhead() + extra)
    }

    /// The desired state of a node of an IPv6-only cluster: the TUN device over the IPv6
    /// underlay, each peer's IPv6 subnet routed into it (or, with DirectRouting, via the
    /// peer's IPv6 underlay address on this node's IPv6 segment), the tunnelled peers known
    /// by their IPv6 underlay address. Peers that cannot be carried are skipped with the
    /// reason (no IPv6 underlay address, another backend, an address shared with another
    /// node, a tunnel MTU too small for IPv6).
    fn desired_ipv6_only(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        let kind = self.kind();
        let Some(local6) = node.public_net6.map(|n| n.addr()) else {
            // The agent gives every IPv6-only node an IPv6 underlay address.
            return DesiredState::default();
        };
        let peers: Vec<Peer6> = screen_ipv6_only(node, &self.ipv6_pools, peers);
        let underlays: Vec<Result<IpAddr, String>> = peers
            .iter()
            .map(|p| p.underlay6(node).map(IpAddr::V6))
            .collect();
        // The engine knows a peer by its underlay address (see `desired`).
        let mut by_address: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
        for (peer, underlay) in peers.iter().zip(&underlays) {
            if let (None, Ok(addr)) = (&peer.problem, underlay) {
                by_address.entry(*addr).or_default().push(&peer.lease.node);
            }
        }
        let mtu = self.mtu(node, true);
        let mut state = DesiredState {
            tunnel: Some(TunnelDevice {
                name: DEVICE.to_string(),
                encap: self.encap,
                mtu,
                local: Ipv4Addr::UNSPECIFIED,
                local6: Some(local6),
            }),
            ..DesiredState::default()
        };
        for (peer, underlay) in peers.iter().zip(&underlays) {
            let lease = peer.lease;
            let path = if let Some(problem) = &peer.problem {
                PeerPath::Skipped(problem.clone())
            } else if let (true, Ok(IpAddr::V6(via))) =
                (self.direct_routing && peer.on_segment6(node), underlay)
            {
                state.routes.push(peer.direct_route6(node, *via));
                PeerPath::Direct
            } else if let Some(reason) = self.untunnellable(lease, underlay, &by_address) {
                PeerPath::Skipped(reason)
            } else if mtu < IPV6_MIN_MTU {
                PeerPath::Skipped(format!(
                    "{kind}: the tunnel MTU {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}; \
                     raise the underlay MTU"
                ))
            } else {
                let subnet6 = peer.subnet6;
                state.routes.push(RouteSpec {
                    dst: subnet6.into(),
                    via: subnet6.network().into(),
                    dev: DEVICE.to_string(),
                    onlink: true,
                });
                if let Ok(underlay) = underlay {
                    state.tunnel_peers.push(TunnelPeer {
                        node: lease.node.clone(),
                        subnet: None,
                        underlay: *underlay,
                        subnet6: Some(subnet6),
                    });
                }
                self.path()
            };
            state.peers.push(peer.plan(path));
        }
        state
    }
}

impl Backend for Tunnel {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(node, self.kind(), None, None)
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        if node.is_ipv6_only() {
            return self.desired_ipv6_only(node, peers);
        }
        let kind = self.kind();
        let mut peers = screen(node, peers);
        screen6(node, &self.ipv6_pools, &mut peers);
        let local = node_underlay(node);
        let underlays: Vec<Result<IpAddr, String>> = peers
            .iter()
            .map(|p| peer_underlay(local, lease_underlay(p.lease, node)))
            .collect();
        // The engine knows a peer by its underlay address: two tunnelled peers at one address
        // could not be told apart on receive, so neither is programmed.
        let mut by_address: BTreeMap<IpAddr, Vec<&str>> = BTreeMap::new();
        for (peer, underlay) in peers.iter().zip(&underlays) {
            if let (None, Ok(addr)) = (&peer.problem, underlay) {
                by_address.entry(*addr).or_default().push(&peer.lease.node);
            }
        }
        // IPv6 outer headers for some peer: the tunnel's MTU is that of the IPv6 underlay.
        let over_ipv6 = peers
            .iter()
            .zip(&underlays)
            .any(|(p, u)| p.problem.is_none() && matches!(u, Ok(IpAddr::V6(_))));
        let mtu = self.mtu(node, over_ipv6 || local.0.is_none());
        let mut state = DesiredState {
            tunnel: Some(TunnelDevice {
                name: DEVICE.to_string(),
                encap: self.encap,
                mtu,
                local: local.0.unwrap_or(Ipv4Addr::UNSPECIFIED),
                local6: local.1.filter(|_| over_ipv6),
            }),
            ..DesiredState::default()
        };
        for (peer, underlay) in peers.iter().zip(&underlays) {
            let lease = peer.lease;
            // A refused lease is not in `by_address` (and its IPv6 part is refused too).
            let untunnellable = peer
                .problem
                .is_none()
                .then(|| self.untunnellable(peer.lease, underlay, &by_address))
                .flatten();
            // DirectRouting's IPv4 route needs an IPv4 underlay at both ends.
            let ipv4_underlay = matches!(underlay, Ok(IpAddr::V4(_)));
            let path = if let Some(problem) = &peer.problem {
                PeerPath::Skipped(problem.clone())
            } else if self.direct_routing && ipv4_underlay && peer.on_segment(node) {
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
            // The engine needs the peer when either family goes through it (which it only
            // does with an underlay address).
            if (path == self.path() || tunnelled6.is_some())
                && let Ok(underlay) = underlay
            {
                state.tunnel_peers.push(TunnelPeer {
                    node: lease.node.clone(),
                    subnet: Some(peer.subnet),
                    underlay: *underlay,
                    subnet6: tunnelled6,
                });
            }
            state.peers.push(peer.plan6(path, path6));
        }
        state
    }

    /// Over IPv6 only on a node without an IPv4 underlay address: a dual-stack node whose
    /// peer lacks IPv4 gets a smaller tunnel MTU (see [`Backend::desired`]) and its pods learn
    /// it by path MTU discovery.
    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        self.mtu(node, node_underlay(node).0.is_none())
    }
}
