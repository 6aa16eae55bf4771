//! WireGuard: the `wireguard` backend, and encryption of node-to-node pod traffic on any other
//! backend (Calico's `wireguard: {enabled: true}`). Both send a peer's pod traffic into the
//! agent's TUN device `twill.wg`, where twill's WireGuard engine encrypts it for the peer's
//! public key (published in its lease) and sends it to the peer's underlay address.
//!
//! Route per encrypted peer: `<subnet> via <subnet network address> dev twill.wg onlink`,
//! shaped like the other tunnel routes (the next hop means nothing to a TUN device); the
//! engine picks the peer by the packet's destination (the peer's subnet is its allowed IPs).
//!
//! Which peers are encrypted: all of them (`mode: Always`), or with `mode: CrossSubnet` only
//! those outside this node's underlay subnet; the others keep the backend's clear path (the
//! wireguard backend's clear path is a plain route, as host-gw). An encrypted peer loses its
//! clear objects (route, VXLAN neighbour and FDB entry, tunnel peer): its traffic never leaves
//! in clear. A peer that should be encrypted but publishes no usable public key (none yet, a
//! malformed one, or one another peer publishes too) is not programmed at all, with the
//! reason in status: the secure default, it stays unreachable rather than reachable in clear.
//!
//! BGP's learned routes are added by the agent's core after this: it sends the prefixes that
//! lie inside an encrypted peer's subnet (of either family) to `twill.wg` too (see
//! [`encrypted_subnet_of`] and [`encrypted_subnet6_of`]), and never a clear route into a
//! subnet WireGuard reaches or should reach ([`must_not_route_in_clear`]).
//!
//! Underlay: each peer is reached over IPv4 when both ends have an IPv4 underlay address, else
//! over IPv6 when both have an IPv6 one ([`crate::tunnel::peer_underlay`], as udp and ipip
//! choose; a dual-stack pair keeps IPv4); a peer with no family in common is skipped with the
//! reason (and blocked, never sent in clear). While any peer is reached over IPv6 (or the node
//! has no IPv4 underlay) the engine gets the node's IPv6 underlay address and the device MTU
//! is 20 bytes smaller, for the IPv6 outer header.
//!
//! Dual stack: the device carries both families (over either underlay). An encrypted peer's
//! IPv6 subnet, once screened like every backend screens it, is one of its allowed IPs and is
//! routed into `twill.wg` the same way (`<subnet6> via <subnet6 network address> dev twill.wg
//! onlink`); its clear IPv6 objects (host-gw or direct route, VXLAN route, neighbour and FDB
//! entry, tunnel route) go with the IPv4 ones. Whether a peer is encrypted is decided once per
//! peer (CrossSubnet by its IPv4 underlay address), so both of its families take the same
//! path. Linux keeps IPv6 off a link whose MTU is below 1280: with a smaller device MTU the
//! IPv6 parts are skipped with the reason, and blocked rather than sent in clear.
//!
//! IPv6-only (a node of a cluster with only IPv6 pools, which has no IPv4 subnet or
//! underlay): peers are screened by their IPv6 subnet and IPv6 underlay address alone, as
//! host-gw and vxlan screen them there. Each encrypted peer's IPv6 subnet is its only allowed
//! IPs and is routed into `twill.wg`; its endpoint is its IPv6 underlay address; the device
//! has no IPv4 underlay address (`local` is `0.0.0.0`, `local6` the node's IPv6 one) and an
//! MTU 20 bytes smaller, for the IPv6 outer header. With CrossSubnet, the peers on this
//! node's IPv6 segment keep the clear path. A peer without a usable key (or below IPv6's
//! minimum MTU) is skipped with the reason and its IPv6 subnet blocked.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_types::MacAddr;
use twill_types::cluster::{BackendKind, EncapMode};
use twill_types::desired::{DesiredState, PeerPath, RouteSpec, WireguardDevice, WireguardPeer};
use twill_types::lease::Lease;
use twill_types::wg_key;

use crate::hostgw::HostGw;
use crate::screen::{Peer6, screen, screen_ipv6_only, screen6};
use crate::tunnel::{
    IPV6_MIN_MTU, IPV6_UNDERLAY_EXTRA, lease_underlay, node_underlay, peer_underlay,
};
use crate::{Backend, LocalNode, lease_of};

/// Name of the WireGuard engine's TUN device.
pub const DEVICE: &str = "twill.wg";

/// What the backends need of the cluster's WireGuard settings (the keys are the agent's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub port: u16,
    /// The device MTU; None: the underlay's less WireGuard's overhead.
    pub mtu: Option<u32>,
    /// Only peers outside this node's underlay subnet are encrypted.
    pub cross_subnet: bool,
    pub persistent_keepalive: u16,
}

impl From<&twill_types::cluster::Wireguard> for Settings {
    fn from(wg: &twill_types::cluster::Wireguard) -> Settings {
        Settings {
            port: wg.listen_port,
            mtu: wg.mtu,
            cross_subnet: wg.mode == EncapMode::CrossSubnet,
            persistent_keepalive: wg.persistent_keepalive,
        }
    }
}

impl Settings {
    /// The WireGuard device this node should have; `over_ipv6`: some peer is reached over
    /// the IPv6 underlay (a node without IPv4 underlay reaches every peer so).
    pub fn device(&self, node: &LocalNode, over_ipv6: bool) -> WireguardDevice {
        let (local4, local6) = node_underlay(node);
        let ipv6 = over_ipv6 || local4.is_none();
        WireguardDevice {
            name: DEVICE.to_string(),
            port: self.port,
            mtu: self.device_mtu(node, ipv6),
            local: node
                .public_net
                .map_or(std::net::Ipv4Addr::UNSPECIFIED, |n| n.addr()),
            local6: local6.filter(|_| ipv6),
            persistent_keepalive: self.persistent_keepalive,
        }
    }

    /// The configured MTU, or the underlay's less WireGuard's overhead (over IPv6 when
    /// `ipv6`).
    fn device_mtu(&self, node: &LocalNode, ipv6: bool) -> u32 {
        let extra = if ipv6 { IPV6_UNDERLAY_EXTRA } else { 0 };
        self.mtu.unwrap_or_else(|| {
            node.underlay_mtu
                .saturating_sub(BackendKind::Wireguard.mtu_overhead() + extra)
        })
    }

    /// The device MTU pods can count on: over IPv6 only on a node without IPv4 underlay (a
    /// dual-stack node whose peer lacks IPv4 gets a smaller device MTU, and its pods learn it
    /// by path MTU discovery, as with udp and ipip).
    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        self.device_mtu(node, node_underlay(node).0.is_none())
    }
}

/// The wireguard backend: every peer through WireGuard (with `CrossSubnet`, peers on this
/// node's L2 segment by a plain route, as host-gw).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wireguard {
    pub settings: Settings,
    /// The cluster's IPv6 pools (none: IPv4 only).
    pub ipv6_pools: Vec<Ipv6Net>,
}

impl Backend for Wireguard {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(node, BackendKind::Wireguard, None, None)
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        // host-gw routes the segment's peers and skips the rest; encryption then takes every
        // peer (Always) or exactly the rest (CrossSubnet).
        encrypt(
            &self.settings,
            &self.ipv6_pools,
            node,
            peers,
            HostGw::new(self.ipv6_pools.clone()).desired(node, peers),
        )
    }

    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        self.settings.pod_mtu(node)
    }
}

/// Encryption on another backend: the inner backend's desired state, with the peers to
/// encrypt moved to WireGuard.
pub struct Encrypted {
    pub inner: Box<dyn Backend + Send + Sync>,
    pub settings: Settings,
    /// The cluster's IPv6 pools (none: IPv4 only), as the inner backend has them.
    pub ipv6_pools: Vec<Ipv6Net>,
}

impl Backend for Encrypted {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        self.inner.local_lease(node)
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        encrypt(
            &self.settings,
            &self.ipv6_pools,
            node,
            peers,
            self.inner.desired(node, peers),
        )
    }

    /// Pods cannot know which peers are encrypted: the smaller of the two.
    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        self.inner.pod_mtu(node).min(self.settings.pod_mtu(node))
    }
}

/// The subnet of the WireGuard peer of `desired` that holds `prefix`, if any: where a route
/// BGP learned for `prefix` must go through `twill.wg` rather than its clear next hop.
pub fn encrypted_subnet_of(desired: &DesiredState, prefix: Ipv4Net) -> Option<Ipv4Net> {
    desired
        .wireguard_peers
        .iter()
        .filter_map(|p| p.subnet)
        .find(|subnet| subnet.contains(&prefix))
}

/// The IPv6 subnet WireGuard carries for one of the peers of `desired` that holds `prefix`,
/// if any: where a route BGP learned for `prefix` must go through `twill.wg` rather than its
/// clear next hop (as [`encrypted_subnet_of`] for IPv4).
pub fn encrypted_subnet6_of(desired: &DesiredState, prefix: Ipv6Net) -> Option<Ipv6Net> {
    desired
        .wireguard_peers
        .iter()
        .filter_map(|p| p.subnet6)
        .find(|subnet6| subnet6.contains(&prefix))
}

/// Whether a clear route to `prefix` (one the backend did not plan: learned by BGP, kept
/// from a previous agent) would carry traffic that must be encrypted: `prefix` lies inside
/// the subnet (of its family) of a peer WireGuard reaches or should reach.
pub fn must_not_route_in_clear(desired: &DesiredState, prefix: IpNet) -> bool {
    match prefix {
        IpNet::V4(prefix) => {
            encrypted_subnet_of(desired, prefix).is_some()
                || desired
                    .wireguard_blocked
                    .iter()
                    .any(|subnet| subnet.contains(&prefix))
        }
        IpNet::V6(prefix) => {
            encrypted_subnet6_of(desired, prefix).is_some()
                || desired
                    .wireguard_blocked6
                    .iter()
                    .any(|subnet6| subnet6.contains(&prefix))
        }
    }
}

/// The route into the WireGuard device for `dst`, inside the peer subnet `subnet`.
pub fn route(dst: Ipv4Net, subnet: Ipv4Net) -> RouteSpec {
    RouteSpec {
        dst: dst.into(),
        via: subnet.network().into(),
        dev: DEVICE.to_string(),
        onlink: true,
    }
}

/// The route into the WireGuard device for a peer's IPv6 subnet.
pub fn route6(subnet6: Ipv6Net) -> RouteSpec {
    route6_within(subnet6, subnet6)
}

/// The route into the WireGuard device for `dst`, inside the peer's IPv6 subnet `subnet6`.
pub fn route6_within(dst: Ipv6Net, subnet6: Ipv6Net) -> RouteSpec {
    RouteSpec {
        dst: dst.into(),
        via: subnet6.network().into(),
        dev: DEVICE.to_string(),
        onlink: true,
    }
}

/// Moves the peers to encrypt from the clear paths of `state` (which the backends computed
/// for the same `leases`, one plan per screened peer, in the same order) to WireGuard.
fn encrypt(
    settings: &Settings,
    ipv6_pools: &[Ipv6Net],
    node: &LocalNode,
    leases: &[Lease],
    mut state: DesiredState,
) -> DesiredState {
    if node.is_ipv6_only() {
        return encrypt_ipv6_only(settings, ipv6_pools, node, leases, state);
    }
    let mut peers = screen(node, leases);
    screen6(node, ipv6_pools, &mut peers);
    debug_assert_eq!(peers.len(), state.peers.len());
    let wanted: Vec<bool> = peers
        .iter()
        .map(|p| p.problem.is_none() && !(settings.cross_subnet && p.on_segment(node)))
        .collect();
    let local = node_underlay(node);
    let underlays: Vec<Result<IpAddr, String>> = peers
        .iter()
        .map(|p| peer_underlay(local, lease_underlay(p.lease, node)))
        .collect();
    let over_ipv6 = wanted
        .iter()
        .zip(&underlays)
        .any(|(wanted, u)| *wanted && matches!(u, Ok(IpAddr::V6(_))));
    let device = settings.device(node, over_ipv6);
    let mtu = device.mtu;
    let holders = key_holders(
        peers
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| **w)
            .map(|(p, _)| p.lease),
    );
    let mut moved: HashSet<Ipv4Net> = HashSet::new();
    let mut moved6: HashSet<Ipv6Net> = HashSet::new();
    for (((peer, plan), wanted), underlay) in peers
        .iter()
        .zip(&mut state.peers)
        .zip(wanted)
        .zip(&underlays)
    {
        if !wanted {
            continue;
        }
        debug_assert!(plan.node == peer.lease.node && plan.subnet == Some(peer.subnet));
        let lease = peer.lease;
        moved.insert(peer.subnet);
        // The IPv6 subnet, once screened; the inner backend planned nothing for one that
        // was refused (it screened it the same way).
        let subnet6 = match &peer.v6 {
            Some(Ok(subnet6)) => {
                moved6.insert(*subnet6);
                Some(*subnet6)
            }
            _ => None,
        };
        plan.path = match (usable_key(lease, &holders), underlay) {
            (Err(reason), _) => PeerPath::Skipped(reason),
            (Ok(_), Err(reason)) => PeerPath::Skipped(format!(
                "wireguard: {reason}; its traffic is never sent in clear instead"
            )),
            (Ok(text), Ok(underlay)) => {
                let carried6 = subnet6.filter(|_| mtu >= IPV6_MIN_MTU);
                state.wireguard_peers.push(WireguardPeer {
                    node: lease.node.clone(),
                    subnet: Some(peer.subnet),
                    underlay: *underlay,
                    public_key: text.to_string(),
                    subnet6: carried6,
                });
                PeerPath::Wireguard
            }
        };
        if let PeerPath::Skipped(_) = &plan.path {
            state.wireguard_blocked.push(peer.subnet);
        }
        plan.path6 = peer.v6.as_ref().map(|v6| match (v6, &plan.path) {
            (Err(reason), _) => PeerPath::Skipped(reason.clone()),
            (Ok(_), PeerPath::Skipped(reason)) => PeerPath::Skipped(reason.clone()),
            (Ok(_), _) if mtu < IPV6_MIN_MTU => PeerPath::Skipped(format!(
                "wireguard: the device MTU {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}; \
                 raise the underlay MTU or the wireguard mtu (its IPv6 traffic is never sent \
                 in clear instead)"
            )),
            (Ok(_), _) => PeerPath::Wireguard,
        });
        let carried6 = matches!(plan.path6, Some(PeerPath::Wireguard));
        plan.subnet6 = subnet6.filter(|_| carried6);
        if let Some(subnet6) = subnet6.filter(|_| !carried6) {
            state.wireguard_blocked6.push(subnet6);
        }
    }
    drop_clear_objects(&mut state, &moved, &moved6);
    finish(state, device)
}

/// [`encrypt`] on an IPv6-only node: its peers (screened by IPv6 subnet and underlay alone,
/// as the inner backend screened them) are reached over the IPv6 underlay, each with its IPv6
/// subnet as its only allowed IPs; the device has no IPv4 underlay address, and its MTU
/// leaves room for the IPv6 outer header. With CrossSubnet, the peers on this node's IPv6
/// segment keep the clear path.
fn encrypt_ipv6_only(
    settings: &Settings,
    ipv6_pools: &[Ipv6Net],
    node: &LocalNode,
    leases: &[Lease],
    mut state: DesiredState,
) -> DesiredState {
    let peers: Vec<Peer6> = screen_ipv6_only(node, ipv6_pools, leases);
    debug_assert_eq!(peers.len(), state.peers.len());
    let wanted: Vec<bool> = peers
        .iter()
        .map(|p| p.problem.is_none() && !(settings.cross_subnet && p.on_segment6(node)))
        .collect();
    let device = settings.device(node, true);
    let mtu = device.mtu;
    let holders = key_holders(
        peers
            .iter()
            .zip(&wanted)
            .filter(|(_, w)| **w)
            .map(|(p, _)| p.lease),
    );
    let mut moved6: HashSet<Ipv6Net> = HashSet::new();
    for ((peer, plan), wanted) in peers.iter().zip(&mut state.peers).zip(wanted) {
        if !wanted {
            continue;
        }
        debug_assert!(plan.node == peer.lease.node && plan.path6.is_some());
        moved6.insert(peer.subnet6);
        let path = match (usable_key(peer.lease, &holders), peer.underlay6(node)) {
            (Err(reason), _) => PeerPath::Skipped(reason),
            (Ok(_), Err(reason)) => PeerPath::Skipped(format!(
                "wireguard: {reason}; its traffic is never sent in clear instead"
            )),
            (Ok(_), Ok(_)) if mtu < IPV6_MIN_MTU => PeerPath::Skipped(format!(
                "wireguard: the device MTU {mtu} is below IPv6's minimum of {IPV6_MIN_MTU}; \
                 raise the underlay MTU or the wireguard mtu (its traffic is never sent in \
                 clear instead)"
            )),
            (Ok(text), Ok(underlay6)) => {
                state.wireguard_peers.push(WireguardPeer {
                    node: peer.lease.node.clone(),
                    subnet: None,
                    underlay: underlay6.into(),
                    public_key: text.to_string(),
                    subnet6: Some(peer.subnet6),
                });
                PeerPath::Wireguard
            }
        };
        if let PeerPath::Skipped(_) = &path {
            state.wireguard_blocked6.push(peer.subnet6);
        }
        *plan = peer.plan(path);
    }
    drop_clear_objects(&mut state, &HashSet::new(), &moved6);
    finish(state, device)
}

/// The routes into the device for every WireGuard peer (its subnet of each family), all
/// routes in subnet order, and the device.
fn finish(mut state: DesiredState, device: WireguardDevice) -> DesiredState {
    for peer in &state.wireguard_peers {
        state
            .routes
            .extend(peer.subnet.map(|subnet| route(subnet, subnet)));
        state.routes.extend(peer.subnet6.map(route6));
    }
    // In subnet order, as every backend lists them (a stable sort keeps the rest as it was).
    state
        .routes
        .sort_by_key(|r| (r.dst.network(), r.dst.prefix_len()));
    state.wireguard = Some(device);
    state
}

/// The nodes publishing each well-formed key among `leases` (the peers to encrypt).
/// WireGuard knows a peer by its key: two peers with one key could not be told apart (nor
/// could a peer claiming to be another), so neither is programmed ([`usable_key`]).
fn key_holders<'a>(leases: impl Iterator<Item = &'a Lease>) -> BTreeMap<[u8; 32], Vec<&'a str>> {
    let mut holders: BTreeMap<[u8; 32], Vec<&str>> = BTreeMap::new();
    for lease in leases {
        if let Some(key) = lease_key(lease) {
            holders.entry(key).or_default().push(&lease.node);
        }
    }
    holders
}

/// The public key (as its lease writes it) of a peer to encrypt, or why it has none usable:
/// none published, malformed, or published by other nodes too (`holders`, of
/// [`key_holders`]).
fn usable_key<'a>(
    lease: &'a Lease,
    holders: &BTreeMap<[u8; 32], Vec<&str>>,
) -> Result<&'a str, String> {
    match (&lease.wireguard_public_key, lease_key(lease)) {
        (None, _) => Err(
            "wireguard: the peer publishes no WireGuard public key (not running WireGuard \
             yet?); its traffic is never sent in clear instead"
                .into(),
        ),
        (Some(_), None) => {
            Err("wireguard: the peer's public key is not 32 bytes of standard base64".into())
        }
        (Some(text), Some(key)) if holders.get(&key).is_some_and(|h| h.len() > 1) => Err(format!(
            "wireguard: public key {} is published by several nodes ({})",
            wg_key::short(text),
            holders[&key].join(", ")
        )),
        (Some(text), Some(_)) => Ok(text),
    }
}

/// A peer's public key, when its lease carries a well-formed one.
fn lease_key(lease: &Lease) -> Option<[u8; 32]> {
    lease
        .wireguard_public_key
        .as_deref()
        .and_then(wg_key::decode)
}

/// Removes the clear routes, VXLAN neighbours and FDB entries, and tunnel peers of the
/// subnets in `moved` and the IPv6 subnets in `moved6`.
fn drop_clear_objects(
    state: &mut DesiredState,
    moved: &HashSet<Ipv4Net>,
    moved6: &HashSet<Ipv6Net>,
) {
    state.routes.retain(|r| match r.dst {
        IpNet::V4(dst) => !moved.contains(&dst),
        IpNet::V6(dst) => !moved6.contains(&dst),
    });
    // A tunnel peer carries both families of one node: it goes with its IPv4 subnet (its
    // IPv6 one on a node of an IPv6-only cluster, which has no other).
    state.tunnel_peers.retain(|t| match t.subnet {
        Some(subnet) => !moved.contains(&subnet),
        None => !t.subnet6.is_some_and(|s| moved6.contains(&s)),
    });
    let gateways: HashSet<IpAddr> = moved
        .iter()
        .map(|s| IpAddr::from(s.network()))
        .chain(moved6.iter().map(|s| IpAddr::from(s.network())))
        .collect();
    state.neighbours.retain(|n| !gateways.contains(&n.ip));
    // An FDB entry serves the neighbours with its MAC (one node under two leases shares one):
    // it goes with the last of them.
    let macs: HashSet<MacAddr> = state.neighbours.iter().map(|n| n.mac).collect();
    state.fdb.retain(|f| macs.contains(&f.mac));
}
