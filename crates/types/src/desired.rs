//! The kernel state a backend wants on one node for a set of peers. The agent's dataplane
//! diffs this against what the kernel has and applies the difference.
//!
//! Everything listed here is twill's own: routes carry [`PEER_ROUTE_PROTOCOL`], the VXLAN
//! device (with all its neighbours and FDB entries) is named by twill, and so are the nft
//! tables and chains. Backends fill the peer part; the agent adds the node's own objects
//! (sysctls, the TUN device's address, masquerading, host protection: [`host_guard`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::MacAddr;

pub mod host_guard;

pub use host_guard::HostGuardSpec;

/// Routing protocol number of the agent's routes to peers' subnets (`ip route ... proto 117`).
/// The CNI plugin's per-container routes use 116; the two never mix.
pub const PEER_ROUTE_PROTOCOL: u8 = 117;

/// A kernel VXLAN device (a VTEP): the IPv4 one carries IPv4 pod traffic, the IPv6 one
/// (Flannel's `flannel-v6.<VNI>` scheme, its own device, MAC, neighbours and FDB) IPv6 pod
/// traffic, over whichever underlay family both ends have.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VxlanDevice {
    /// Link name, e.g. `twill.1`.
    pub name: String,
    pub vni: u32,
    /// Destination UDP port.
    pub port: u16,
    /// Source address of encapsulated packets (the node's underlay address, either family).
    pub local: IpAddr,
    /// The underlay link the VTEP sends through.
    pub underlay: String,
    /// The VTEP's MAC address (published in the lease, so it must stay stable).
    pub mac: MacAddr,
    pub mtu: u32,
    /// The address on the device: the node subnet's network address as /32 (/128 for IPv6),
    /// Flannel's scheme.
    pub address: IpNet,
}

/// A route to a peer's subnet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    pub dst: IpNet,
    pub via: IpAddr,
    /// Output link name.
    pub dev: String,
    /// The gateway is not on a connected subnet of `dev` (VXLAN next hops).
    pub onlink: bool,
}

/// A permanent ARP (IPv4) or NDP (IPv6) entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NeighSpec {
    pub dev: String,
    pub ip: IpAddr,
    pub mac: MacAddr,
}

/// A permanent FDB entry of a VXLAN device: frames for `mac` go to the VTEP at `dst`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FdbSpec {
    pub dev: String,
    pub mac: MacAddr,
    /// The peer VTEP's underlay address, either family.
    pub dst: IpAddr,
}

/// How a peer is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "via", content = "reason")]
pub enum PeerPath {
    /// A plain route via the peer's underlay address.
    Direct,
    /// Through the VXLAN device.
    Vxlan,
    /// Through the userspace tunnel, UDP encapsulation.
    Udp,
    /// Through the userspace tunnel, IP-in-IP.
    Ipip,
    /// By the route BGP learned for the peer's subnet.
    Bgp,
    /// Through WireGuard (the wireguard backend, or encryption on another one).
    Wireguard,
    /// Not programmed, with the reason (e.g. host-gw peer on another L2 segment).
    Skipped(String),
}

/// One peer in the desired state.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerPlan {
    pub node: String,
    /// The peer's IPv4 pod subnet and underlay address; None for a peer of an IPv6-only
    /// cluster (its `path` is then its IPv6 path, the same as `path6`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<Ipv4Addr>,
    pub path: PeerPath,
    /// The peer's IPv6 pod subnet, when its IPv6 part is programmed (`path6` is not
    /// skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// How the peer's IPv6 pod traffic goes, when the peer publishes an IPv6 subnet and the
    /// backend plans IPv6 (host-gw, vxlan): `Skipped` with the reason when only its IPv6 part
    /// is ignored (its IPv4 `path` is unaffected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path6: Option<PeerPath>,
}

/// How the userspace tunnel encapsulates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum TunnelEncap {
    /// The inner IPv4 packet as the UDP payload (Flannel's udp framing).
    Udp { port: u16 },
    /// IP protocol 4, the inner packet right after the outer IPv4 header (Linux ipip).
    Ipip,
}

/// The userspace tunnel's TUN device (owned by the agent's tunnel engine, not by the diff).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelDevice {
    /// Link name, `twill.tun`.
    pub name: String,
    pub encap: TunnelEncap,
    pub mtu: u32,
    /// IPv4 underlay address encapsulated packets are sent from (`0.0.0.0`: the node has no
    /// IPv4 underlay, and every peer is reached over IPv6).
    pub local: Ipv4Addr,
    /// IPv6 underlay address, when a peer is reached over the IPv6 underlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local6: Option<Ipv6Addr>,
}

/// A peer reached through the userspace tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelPeer {
    pub node: String,
    /// Its IPv4 pod subnet; None for a node of an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// Where its packets go and come from: its IPv4 underlay address when both ends have
    /// one, else its IPv6 one.
    pub underlay: IpAddr,
    /// Its IPv6 pod subnet, when its IPv6 traffic goes through the tunnel (dual stack, over
    /// the same underlay; IPv6-only: all its traffic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
}

/// The WireGuard engine's TUN device (owned by the agent's engine, like [`TunnelDevice`]).
/// The private key and the pre-shared key are not here: the desired state is logged, recorded
/// and compared, and secrets are none of that; the agent hands them to the engine itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireguardDevice {
    /// Link name, `twill.wg`.
    pub name: String,
    /// The UDP port the node listens on and peers send to.
    pub port: u16,
    pub mtu: u32,
    /// The node's IPv4 underlay address (WireGuard's source address; `0.0.0.0`: the node has
    /// no IPv4 underlay, and every peer is reached over IPv6).
    pub local: Ipv4Addr,
    /// The node's IPv6 underlay address, when a peer is reached over the IPv6 underlay (or
    /// the node has no IPv4 one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local6: Option<Ipv6Addr>,
    /// Seconds between keepalives to each peer; 0: off.
    pub persistent_keepalive: u16,
}

/// A peer reached through WireGuard: its pod subnets are its allowed IPs, its underlay
/// address (at the device's port) the endpoint it starts at.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireguardPeer {
    pub node: String,
    /// Its IPv4 pod subnet; None for a peer of an IPv6-only cluster (then `subnet6` is all
    /// it carries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// Its IPv4 underlay address when both ends have one, else its IPv6 one.
    pub underlay: IpAddr,
    /// Its public key, standard base64 as in its lease.
    pub public_key: String,
    /// Its IPv6 pod subnet when WireGuard carries its IPv6 traffic (dual-stack, IPv6-only):
    /// then also one of its allowed IPs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
}

/// Everything the node's dataplane should hold for the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    /// The VXLAN device, when the backend uses one.
    pub vxlan: Option<VxlanDevice>,
    /// The IPv6 VXLAN device, when the backend uses one and the cluster is dual-stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan6: Option<VxlanDevice>,
    pub routes: Vec<RouteSpec>,
    pub neighbours: Vec<NeighSpec>,
    pub fdb: Vec<FdbSpec>,
    /// Every peer and how it is (or is not) reached, for status.
    pub peers: Vec<PeerPlan>,
    /// The userspace tunnel, when the backend uses one (udp, ipip).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelDevice>,
    /// The peers the tunnel carries traffic to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tunnel_peers: Vec<TunnelPeer>,
    /// The WireGuard engine's device, whenever WireGuard runs on this node (even with no
    /// peer yet: peers must be able to reach it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardDevice>,
    /// The peers WireGuard carries traffic to, with their keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wireguard_peers: Vec<WireguardPeer>,
    /// Subnets of peers whose traffic must be encrypted but that WireGuard cannot reach (no
    /// usable public key): no route may lead there in clear, whoever learned it (BGP, a
    /// previous agent's routes kept over a restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wireguard_blocked: Vec<Ipv4Net>,
    /// The same for IPv6 subnets: peers' IPv6 subnets whose traffic must be encrypted but
    /// that WireGuard cannot carry (no usable key, a device MTU below IPv6's minimum).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wireguard_blocked6: Vec<Ipv6Net>,
    /// Sysctls of the node's namespace by dotted name (`net.ipv4.ip_forward`) and the value
    /// they must hold. Set, never reverted: one not listed is left as it is.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    /// Links (twill's, made by someone else than the reconciler: the TUN device) that must
    /// hold exactly one IPv4 address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<AddressSpec>,
    /// Sources masqueraded when they leave for a destination outside all of them (the
    /// cluster's pools with `natOutgoing`, IPv4 and IPv6); empty: no masquerade chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masquerade: Vec<IpNet>,
    /// The host protection table `inet twill-host`; None: no table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_guard: Option<HostGuardSpec>,
}

/// The one IPv4 address a link must hold (any other is removed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressSpec {
    pub dev: String,
    pub address: Ipv4Net,
}
