//! The cluster config: which ranges pods get addresses from, how nodes' subnets are cut from
//! them, and how traffic crosses between nodes.
//!
//! Accepted forms (see [`ClusterConfig::parse`]):
//! - Flannel's net-conf.json, as is.
//! - twill's own form, in TOML or YAML, with Calico-style pools.
//!
//! Both become one normalized [`ClusterConfig`], which is what the store holds (as JSON).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// How traffic between nodes is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendKind {
    /// Plain routes via the peer's address; peers must share the L2 segment.
    #[serde(rename = "host-gw")]
    HostGw,
    /// Kernel VXLAN with Flannel's scheme (route + ARP + FDB per peer).
    #[serde(rename = "vxlan")]
    Vxlan,
    /// Userspace UDP encapsulation over TUN (issue 4).
    #[serde(rename = "udp")]
    Udp,
    /// IP-in-IP (issue 4).
    #[serde(rename = "ipip")]
    Ipip,
    /// WireGuard (later).
    #[serde(rename = "wireguard")]
    Wireguard,
}

/// Calico's encapsulation modes for `vxlanMode` / `ipipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum EncapMode {
    /// Encapsulate traffic to every peer.
    Always,
    /// Encapsulate only to peers in another underlay subnet; route directly otherwise.
    CrossSubnet,
    /// Never encapsulate.
    #[default]
    Never,
}

/// The backend settings of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub kind: BackendKind,
    /// VXLAN network identifier (Flannel's `VNI`, default 1).
    pub vni: u32,
    /// UDP port of the encapsulation (Flannel's `Port`; vxlan default 8472, udp 8285).
    pub port: u16,
    /// Route directly to peers on the same underlay subnet, encapsulate to the rest
    /// (Flannel's `DirectRouting`, Calico's `CrossSubnet`).
    pub direct_routing: bool,
}

/// One pool of pod addresses, cut into one subnet per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// A name for messages and status (`default` for Flannel's single network).
    pub name: String,
    pub cidr: Ipv4Net,
    /// Prefix length of each node's subnet (Flannel's `SubnetLen`, Calico's `blockSize`).
    pub block_size: u8,
    /// First and last node subnet that may be leased (Flannel's `SubnetMin`/`SubnetMax`);
    /// both are subnets of `cidr` with prefix `block_size`.
    pub subnet_min: Ipv4Net,
    pub subnet_max: Ipv4Net,
    /// Masquerade pod traffic that leaves the cluster's pools.
    pub nat_outgoing: bool,
}

/// The normalized cluster config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// At least one pool; pools never overlap.
    pub pools: Vec<Pool>,
    pub backend: Backend,
}

/// Why a cluster config was refused; the message names the field and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[allow(dead_code)]
fn _unused(_: Ipv4Addr) {}
