//! What the agent leaves on local disk for the CNI plugin: the node's subnet and the pod MTU.
//! The plugin reads it on every call, so it keeps working while the agent restarts.

use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::cluster::BackendKind;

/// File name of the node file inside the data directory (default `/var/lib/twill`).
pub const NODE_FILE: &str = "node.json";
/// The network name of the agent's natOutgoing chain (`inet twill masq-_twill_cluster`),
/// reserved so no CNI network's masquerade chain can collide with it.
pub const AGENT_NAT_NETWORK: &str = "_twill_cluster";

/// File name of the agent's status inside the data directory (read by `twill status`).
pub const STATUS_FILE: &str = "status.json";

/// The node file's path in a data directory.
pub fn node_file(data_dir: &Path) -> PathBuf {
    data_dir.join(NODE_FILE)
}

/// Where the CNI plugin records this node's endpoints (one JSON file per container, named by
/// the container id) for the agent's network policy; they outlive agent restarts.
pub fn endpoints_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("endpoints")
}

/// The agent's socket: the plugin asks there for a new endpoint's policy to be in force
/// before its ADD returns.
pub fn agent_socket(data_dir: &Path) -> PathBuf {
    data_dir.join("agent.sock")
}

/// What the plugin sends on the agent socket (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum AgentRequest {
    /// The endpoint file of this container was written: enforce its policy, then answer.
    Add { container_id: String },
    /// The container is gone (its file was removed).
    Del { container_id: String },
}

/// The agent's answer (one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentReply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The node's share of the cluster, as the plugin needs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeFile {
    pub node: String,
    /// Pods on this node get IPv4 addresses from here; none on a node of an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// MTU for pod interfaces (the underlay's minus the encapsulation overhead).
    pub mtu: u32,
    pub backend: BackendKind,
    /// All IPv4 pools of the cluster (traffic to them is never masqueraded); none in an
    /// IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_networks: Vec<Ipv4Net>,
    /// The node's IPv6 pod subnet in a dual-stack cluster (pods get an address from each) or
    /// an IPv6-only one (pods get only this one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// All IPv6 pools of the cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cluster_networks6: Vec<Ipv6Net>,
    /// The agent enforces network policy: the plugin records each endpoint and waits, on the
    /// agent socket, until its policy is in force.
    #[serde(default)]
    pub policy: bool,
}

/// One peer as the agent last programmed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerStatus {
    pub node: String,
    /// Its IPv4 pod subnet and underlay address (none in an IPv6-only cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<std::net::Ipv4Addr>,
    pub path: crate::desired::PeerPath,
    /// Its IPv6 pod subnet, in a dual-stack cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// How its IPv6 pod traffic goes (or why it is skipped), in a dual-stack cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path6: Option<crate::desired::PeerPath>,
    /// Everything this peer needs is in the kernel (false for skipped peers and failures).
    pub programmed: bool,
    /// The last programming error for this peer, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Traffic through the userspace tunnel to and from this peer (udp, ipip, WireGuard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<PeerCounters>,
    /// The WireGuard session with this peer, when WireGuard carries its traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardPeerStatus>,
}

/// One peer's WireGuard session (its bytes are the peer's `counters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireguardPeerStatus {
    /// Its public key, standard base64 (44 characters).
    pub public_key: String,
    /// Where its packets go now (`ip:port`: its underlay address until it roams); null
    /// before any.
    pub endpoint: Option<String>,
    /// Seconds since the current session's handshake; null without a session.
    pub last_handshake_secs: Option<u64>,
}

/// This node's WireGuard engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WireguardStatus {
    /// `twill.wg`.
    pub device: String,
    pub port: u16,
    /// This node's public key (the private key is in the data directory, never shown).
    pub public_key: String,
    /// Dropped packets by reason: WireGuard's (`unknownKey`, `badMac`, `replay`,
    /// `staleCounter`, `handshakeRejected`; `cookiesSent` counts handshakes answered with a
    /// cookie under load) and the engine's (`spoofedInnerSource`, `malformed`, ...).
    pub drops: std::collections::BTreeMap<String, u64>,
}

/// Packets and bytes the tunnel carried for one peer since the agent started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerCounters {
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

/// The userspace tunnel as the agent runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelStatus {
    pub device: String,
    pub encap: crate::desired::TunnelEncap,
    /// Dropped packets by reason (unknown peer, spoofed inner source, malformed, ...).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// The underlay interface when the kernel fast path (tc BPF) carries the traffic of known
    /// peers; absent when the userspace engine carries everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_path: Option<String>,
}

/// The agent's view of its node, written after every reconcile (`status.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub node: String,
    /// The node's IPv4 pod subnet and underlay address (none on an IPv6-only node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    pub backend: BackendKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<std::net::Ipv4Addr>,
    /// The node's IPv6 pod subnet and IPv6 underlay address, when it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip6: Option<std::net::Ipv6Addr>,
    /// The store it uses, e.g. `etcd://10.0.0.1:2379`.
    pub store: String,
    /// The agent holds a complete, current copy of the cluster's leases.
    pub in_sync: bool,
    /// Process id of the agent that wrote this.
    pub pid: u32,
    /// Unix time (seconds) of the write.
    pub updated: u64,
    pub peers: Vec<PeerStatus>,
    /// The userspace tunnel, for the udp and ipip backends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel: Option<TunnelStatus>,
    /// The WireGuard engine, when WireGuard runs (the wireguard backend, or encryption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardStatus>,
    /// Network policy on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyStatus>,
    /// The BGP speaker, when the cluster config has a bgp section.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpStatus>,
    /// What happened to this node's lease behind the agent's back (deleted, taken by another
    /// node, expired) and how the agent leased again, oldest first (the last few only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lease_events: Vec<LeaseEvent>,
}

/// The node's lease was lost without `twill node leave`, and what the agent did about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseEvent {
    /// Unix time (seconds) the loss was noticed.
    pub at: u64,
    /// `deleted` (the key was removed while the store lease lived), `taken` (another node's
    /// lease is under the key), `expired` (the store lease ran out).
    pub event: String,
    /// The subnet the node held (its lease's key: the IPv4 one, the IPv6 one on an
    /// IPv6-only node).
    pub subnet: IpNet,
    /// The subnet the node holds again (the same one when it was still free); None while
    /// leasing again has not succeeded yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leased_again: Option<IpNet>,
    /// What the agent did, for people.
    pub message: String,
}

/// The node's BGP speaker: what `twill bgp status` and `twill bgp routes` print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpStatus {
    pub as_number: u32,
    pub router_id: std::net::Ipv4Addr,
    /// False while a restarted agent still keeps its old BGP routes in the kernel, waiting
    /// for its peers to resend theirs (graceful restart).
    pub settled: bool,
    pub peers: Vec<BgpPeerStatus>,
    /// The Loc-RIB: the best route of every prefix.
    pub routes: Vec<BgpRouteStatus>,
}

/// One BGP session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeerStatus {
    pub address: std::net::IpAddr,
    pub as_number: u32,
    /// `node-mesh`, `route-reflector`, `rr-client` or `external`.
    pub kind: String,
    /// The cluster node behind the address, for node peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The session state (`Established`, `Active`, ...).
    pub state: String,
    /// Unix time (seconds) the session reached Established, while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    pub received: usize,
    pub accepted: usize,
    pub sent: usize,
    pub stale: usize,
}

/// One Loc-RIB route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpRouteStatus {
    pub prefix: ipnet::IpNet,
    pub next_hop: std::net::IpAddr,
    pub as_path: Vec<u32>,
    /// The peer it came from; None for this node's own prefixes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<std::net::IpAddr>,
    pub best: bool,
    pub stale: bool,
}

/// The state of network policy on a node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// Policies, namespaces and endpoints are all mirrored from the store.
    pub in_sync: bool,
    /// Network policies and cluster policies known.
    pub network_policies: usize,
    pub cluster_policies: usize,
    /// Endpoints in the cluster, and those on this node.
    pub endpoints: usize,
    pub local_endpoints: usize,
    /// nftables transactions applied since the agent started.
    pub applied: u64,
    /// Microseconds the last compile and apply took.
    pub last_apply_us: u64,
    /// Unix time (seconds) of the last successful apply.
    pub applied_at: u64,
    /// The last apply's error, until an apply succeeds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
