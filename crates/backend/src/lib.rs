//! twill's backends: for one node, what it publishes in its lease and the kernel state
//! (routes, VXLAN device, neighbours, FDB entries) it wants for its peers. One file per mode:
//! [`hostgw`], [`vxlan`], [`tunnel`] (udp and ipip through the userspace tunnel), [`bgp`]
//! (nothing per peer: the BGP speaker's routes), [`wireguard`] (the wireguard backend, and
//! encryption wrapped around any other backend when the config enables it). Pure: no kernel, no store, no clock; the
//! agent feeds leases in and hands the [`DesiredState`] to the dataplane.
//!
//! Every backend sees the same peers: sorted by subnet, this node's own lease dropped, and
//! leases with impossible data (overlapping subnets, this node's underlay address, ...) kept
//! only as [`PeerPath::Skipped`](twill_types::desired::PeerPath::Skipped) with the reason, so
//! one bad lease never breaks the others.

use ipnet::{Ipv4Net, Ipv6Net};
use twill_types::cluster::{BackendKind, ClusterConfig};
use twill_types::desired::{DesiredState, TunnelEncap};
use twill_types::lease::Lease;

pub mod bgp;
pub mod hostgw;
mod screen;
pub mod tunnel;
pub mod vxlan;
pub mod wireguard;

pub use bgp::Bgp;
pub use hostgw::HostGw;
pub use tunnel::Tunnel;
pub use vxlan::Vxlan;
pub use wireguard::{Encrypted, Wireguard};

/// The node a backend computes for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalNode {
    pub name: String,
    /// The node's pod subnet (its lease); None on an IPv6-only node.
    pub subnet: Option<Ipv4Net>,
    /// The underlay address with the prefix of its subnet: peers inside it share the node's
    /// L2 segment. None on an IPv6-only node (which has only `public_net6`).
    pub public_net: Option<Ipv4Net>,
    /// The underlay link (`eth0`).
    pub underlay_dev: String,
    pub underlay_mtu: u32,
    /// The node's IPv6 pod subnet, in a dual-stack cluster (leased with `subnet`).
    pub subnet6: Option<Ipv6Net>,
    /// The node's IPv6 underlay address with its prefix, when it has one.
    pub public_net6: Option<Ipv6Net>,
}

/// Why a node has its IPv4 parts whenever these are called.
const IPV4_INVARIANT: &str = "only nodes of IPv6-only clusters lack IPv4, and the callers \
     plan IPv4 parts only for a node with an IPv4 subnet and underlay";

impl LocalNode {
    /// The node's IPv4 pod subnet and underlay address, when it has them (every node of a
    /// cluster with IPv4 pools does).
    pub fn ipv4(&self) -> Option<(Ipv4Net, Ipv4Net)> {
        self.subnet.zip(self.public_net)
    }

    /// The IPv4 pod subnet of a node known to have one.
    pub fn subnet4(&self) -> Ipv4Net {
        self.subnet.expect(IPV4_INVARIANT)
    }

    /// The IPv4 underlay of a node known to have one.
    pub fn public_net4(&self) -> Ipv4Net {
        self.public_net.expect(IPV4_INVARIANT)
    }

    /// The node has no IPv4 underlay: it is a node of an IPv6-only cluster (a node of a
    /// cluster with IPv4 pools has one from the start, and its IPv4 subnet once leased).
    pub fn is_ipv6_only(&self) -> bool {
        self.public_net.is_none()
    }
}

/// One mode of carrying traffic between nodes.
pub trait Backend {
    /// What this node publishes in its lease besides subnet/public_net (e.g. VTEP MAC).
    fn local_lease(&self, node: &LocalNode) -> Lease;
    /// Desired kernel state for these peers (the local node's own lease is ignored if present).
    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState;
    /// MTU pods should use.
    fn pod_mtu(&self, node: &LocalNode) -> u32;
}

/// The cluster asks for a backend this build cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnsupportedBackend(pub String);

/// The backend the cluster config selects, wrapped in [`Encrypted`] when the config turns
/// WireGuard encryption on for it.
pub fn for_config(
    config: &ClusterConfig,
) -> Result<Box<dyn Backend + Send + Sync>, UnsupportedBackend> {
    let inner = plain_backend(config)?;
    Ok(match config.wireguard() {
        Some(wg) if config.backend.kind != BackendKind::Wireguard => Box::new(Encrypted {
            inner,
            settings: (&wg).into(),
            ipv6_pools: ipv6_pools(config),
        }),
        _ => inner,
    })
}

/// The backend of `config.backend`, without encryption.
fn plain_backend(
    config: &ClusterConfig,
) -> Result<Box<dyn Backend + Send + Sync>, UnsupportedBackend> {
    let settings = &config.backend;
    match settings.kind {
        BackendKind::HostGw => Ok(Box::new(HostGw::new(ipv6_pools(config)))),
        BackendKind::Bgp => Ok(Box::new(Bgp::new(ipv6_pools(config)))),
        BackendKind::Vxlan => Ok(Box::new(
            Vxlan::new(settings.vni, settings.port, settings.direct_routing)?
                .with_ipv6_pools(ipv6_pools(config)),
        )),
        BackendKind::Udp => Ok(Box::new(
            Tunnel::new(
                TunnelEncap::Udp {
                    port: settings.port,
                },
                settings.direct_routing,
            )
            .with_ipv6_pools(ipv6_pools(config)),
        )),
        BackendKind::Ipip => Ok(Box::new(
            Tunnel::new(TunnelEncap::Ipip, settings.direct_routing)
                .with_ipv6_pools(ipv6_pools(config)),
        )),
        BackendKind::Wireguard => {
            let wg = config
                .wireguard()
                .expect("the wireguard backend always has WireGuard settings");
            Ok(Box::new(Wireguard {
                settings: (&wg).into(),
                ipv6_pools: ipv6_pools(config),
            }))
        }
    }
}

/// The cluster's IPv6 pools: peers' IPv6 subnets outside them are ignored. Every backend
/// carries IPv6 (wireguard as a backend or encryption on any of them; bgp by the routes its
/// speaker learns).
fn ipv6_pools(config: &ClusterConfig) -> Vec<Ipv6Net> {
    config.ipv6_pools.iter().map(|p| p.cidr).collect()
}

/// The lease a node of this backend publishes: its subnets and underlay addresses of both
/// families, and the VTEP MACs (`vtep_mac`, `vtep_mac6` only for vxlan).
fn lease_of(
    node: &LocalNode,
    backend: BackendKind,
    vtep_mac: Option<twill_types::MacAddr>,
    vtep_mac6: Option<twill_types::MacAddr>,
) -> Lease {
    Lease {
        node: node.name.clone(),
        subnet: node.subnet,
        public_net: node.public_net,
        backend,
        vtep_mac,
        // The agent adds it: the key is its, not the backend's.
        wireguard_public_key: None,
        subnet6: node.subnet6,
        public_net6: node.public_net6,
        vtep_mac6,
    }
}
