//! The ports of the cluster's own control plane and tunnels, which pods never reach whatever
//! `workloadToHost` / `workloadToHostPorts` say (host protection closes them on every node).

use super::bgp::DEFAULT_BGP_PORT;
use super::model::{BackendKind, ClusterConfig, DEFAULT_UDP_PORT, DEFAULT_VXLAN_PORT};

/// The TCP ports of the cluster's control plane that pods never reach on any node, whatever
/// `workloadToHostPorts` says: BGP (179 and the configured listen port) and etcd's client and
/// peer ports (the store's own endpoints add theirs at run time).
pub fn control_tcp_ports(config: &ClusterConfig) -> Vec<u16> {
    let mut ports = vec![DEFAULT_BGP_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT];
    if let Some(bgp) = &config.bgp {
        ports.push(bgp.listen_port);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The UDP ports of every tunnel twill runs (vxlan, udp, WireGuard) that pods never send to,
/// on any node and anywhere else: twill's defaults, the configured port of a vxlan or udp
/// backend, and WireGuard's listen port when WireGuard runs.
pub fn tunnel_udp_ports(config: &ClusterConfig) -> Vec<u16> {
    let mut ports = vec![DEFAULT_VXLAN_PORT, DEFAULT_UDP_PORT];
    if matches!(config.backend.kind, BackendKind::Vxlan | BackendKind::Udp)
        && config.backend.port != 0
    {
        ports.push(config.backend.port);
    }
    if let Some(wg) = config.wireguard() {
        ports.push(wg.listen_port);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// etcd's default client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's default peer port.
pub const ETCD_PEER_PORT: u16 = 2380;
