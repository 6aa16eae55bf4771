//! The desired content of the agent's host protection table (`inet twill-host`) as plain
//! data: what pods may reach of the nodes, and who may send to the VXLAN port. Computed purely
//! from the cluster config, the node and its peers ([`HostGuardSpec::for_node`]); the
//! dataplane renders it to nftables and keeps the kernel equal to it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::cluster::{self, BackendKind, ClusterConfig, HostPort, WorkloadToHost};
use crate::lease::Lease;

/// The parts of the rule set whose change rewrites the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rules {
    /// The cluster's pools: any pod's source.
    pub pools: Vec<Ipv4Net>,
    /// This node's pod subnet: the sources of its own (bridged) pods.
    pub node_subnet: Ipv4Net,
    pub workload_to_host: WorkloadToHost,
    pub allow_ports: Vec<HostPort>,
    /// Control-plane TCP ports (BGP, etcd, the store endpoints' ports).
    pub control_tcp: Vec<u16>,
    /// Every tunnel's UDP port.
    pub tunnel_udp: Vec<u16>,
    /// The kernel VXLAN port whose senders are checked (vxlan backend only).
    pub vxlan_port: Option<u16>,
}

/// The parts that change with peers and store endpoints: set elements only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Elements {
    /// Every node of the cluster (this one included) and every store endpoint.
    pub control_hosts: BTreeSet<Ipv4Addr>,
    /// `(peer underlay address, peer subnet)`: who may send what to the VXLAN port.
    pub vxlan_peers: BTreeSet<(Ipv4Addr, Ipv4Net)>,
}

/// Everything `inet twill-host` holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostGuardSpec {
    pub rules: Rules,
    pub elements: Elements,
}

impl HostGuardSpec {
    /// The rule set of a node: its config, its subnet and underlay address, the peers'
    /// leases (ours excluded or not, it is skipped) and the store's endpoints.
    pub fn for_node(
        config: &ClusterConfig,
        node_subnet: Ipv4Net,
        node_addr: Ipv4Addr,
        peers: &[Lease],
        store_endpoints: &[SocketAddr],
    ) -> HostGuardSpec {
        let mut control_tcp = cluster::control_tcp_ports(config);
        let mut control_hosts = BTreeSet::from([node_addr]);
        for ep in store_endpoints {
            if let SocketAddr::V4(v4) = ep {
                control_hosts.insert(*v4.ip());
            }
            control_tcp.push(ep.port());
        }
        control_tcp.sort_unstable();
        control_tcp.dedup();
        let vxlan = config.backend.kind == BackendKind::Vxlan;
        let mut vxlan_peers = BTreeSet::new();
        for p in peers.iter().filter(|p| p.subnet != node_subnet) {
            control_hosts.insert(p.public_ip());
            if vxlan {
                vxlan_peers.insert((p.public_ip(), p.subnet.trunc()));
            }
        }
        let mut allow_ports = config.host_access.workload_to_host_ports.clone();
        allow_ports.sort();
        allow_ports.dedup();
        HostGuardSpec {
            rules: Rules {
                pools: Ipv4Net::aggregate(&config.pools.iter().map(|p| p.cidr).collect()),
                node_subnet: node_subnet.trunc(),
                workload_to_host: config.host_access.workload_to_host,
                allow_ports,
                control_tcp,
                tunnel_udp: cluster::tunnel_udp_ports(config),
                vxlan_port: vxlan.then_some(config.backend.port),
            },
            elements: Elements {
                control_hosts,
                vxlan_peers,
            },
        }
    }
}

/// The store endpoints of a store URL (`etcd://HOST:PORT[,HOST:PORT...]`, any scheme, with or
/// without `http(s)://` per endpoint). Endpoints given by name are left out (their addresses
/// are not known without a lookup); `embedded` stores have none.
pub fn store_endpoints(url: &str) -> Vec<SocketAddr> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    rest.split(',')
        .filter_map(|ep| {
            let ep = ep.trim();
            let ep = ep.split_once("://").map_or(ep, |(_, r)| r);
            let ep = ep.split(['/', '?']).next().unwrap_or(ep);
            ep.parse::<SocketAddr>().ok()
        })
        .collect()
}
