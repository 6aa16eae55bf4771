//! The desired content of the agent's host protection table (`inet twill-host`) as plain
//! data: what pods may reach of the nodes, and who may send to the VXLAN port. Computed purely
//! from the cluster config, the node and its peers ([`HostGuardSpec::for_node`]); the
//! dataplane renders it to nftables and keeps the kernel equal to it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::cluster::{self, BackendKind, ClusterConfig, HostPort, WorkloadToHost};
use crate::lease::Lease;

/// The parts of the rule set whose change rewrites the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rules {
    /// The cluster's pools: any pod's source.
    pub pools: Vec<Ipv4Net>,
    /// This node's pod subnet: the sources of its own (bridged) pods. None on an IPv6-only
    /// node: the table then has no IPv4 rules for pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_subnet: Option<Ipv4Net>,
    pub workload_to_host: WorkloadToHost,
    pub allow_ports: Vec<HostPort>,
    /// Control-plane TCP ports (BGP, etcd, the store endpoints' ports).
    pub control_tcp: Vec<u16>,
    /// Every tunnel's UDP port.
    pub tunnel_udp: Vec<u16>,
    /// The kernel VXLAN port whose senders are checked (vxlan backend only).
    pub vxlan_port: Option<u16>,
    /// The cluster's IPv6 pools (a dual-stack cluster): any pod's IPv6 source. Empty: the
    /// table has no IPv6 rules (and an IPv4-only cluster's table is unchanged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pools6: Vec<Ipv6Net>,
    /// This node's IPv6 pod subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_subnet6: Option<Ipv6Net>,
}

/// The parts that change with peers and store endpoints: set elements only.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Elements {
    /// Every node of the cluster (this one included) and every store endpoint.
    pub control_hosts: BTreeSet<Ipv4Addr>,
    /// `(peer underlay address, peer subnet)`: who may send what to the VXLAN port.
    pub vxlan_peers: BTreeSet<(Ipv4Addr, Ipv4Net)>,
    /// The IPv6 underlay addresses of every node (this one included) and the IPv6 store
    /// endpoints (dual-stack clusters).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub control_hosts6: BTreeSet<Ipv6Addr>,
    /// `(peer IPv4 underlay address, peer IPv6 subnet)`: IPv6 pod packets a peer sends over
    /// its IPv4 underlay.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub vxlan_peers46: BTreeSet<(Ipv4Addr, Ipv6Net)>,
    /// `(peer IPv6 underlay address, peer IPv6 subnet)`: IPv6 pod packets a peer sends over
    /// its IPv6 underlay.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub vxlan_peers6: BTreeSet<(Ipv6Addr, Ipv6Net)>,
}

/// Everything `inet twill-host` holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HostGuardSpec {
    pub rules: Rules,
    pub elements: Elements,
}

impl HostGuardSpec {
    /// The rule set of a node: its config, its subnet and underlay address (none on an
    /// IPv6-only node), the peers' leases (ours excluded or not, it is skipped) and the
    /// store's endpoints.
    pub fn for_node(
        config: &ClusterConfig,
        node_subnet: Option<Ipv4Net>,
        node_addr: Option<Ipv4Addr>,
        peers: &[Lease],
        store_endpoints: &[SocketAddr],
    ) -> HostGuardSpec {
        let mut control_tcp = cluster::control_tcp_ports(config);
        let mut control_hosts: BTreeSet<Ipv4Addr> = node_addr.into_iter().collect();
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
        let own = node_subnet.map(|n| n.trunc());
        for p in peers
            .iter()
            .filter(|p| own.is_none() || p.subnet.map(|s| s.trunc()) != own)
        {
            control_hosts.extend(p.public_ip());
            if vxlan && let (Some(ip), Some(subnet)) = (p.public_ip(), p.subnet) {
                vxlan_peers.insert((ip, subnet.trunc()));
            }
        }
        let mut allow_ports = config.host_access.workload_to_host_ports.clone();
        allow_ports.sort();
        allow_ports.dedup();
        HostGuardSpec {
            rules: Rules {
                pools: Ipv4Net::aggregate(&config.pools.iter().map(|p| p.cidr).collect()),
                node_subnet: own,
                workload_to_host: config.host_access.workload_to_host,
                allow_ports,
                control_tcp,
                tunnel_udp: cluster::tunnel_udp_ports(config),
                vxlan_port: vxlan.then_some(config.backend.port),
                pools6: Vec::new(),
                node_subnet6: None,
            },
            elements: Elements {
                control_hosts,
                vxlan_peers,
                ..Elements::default()
            },
        }
    }

    /// Adds the IPv6 half of a dual-stack cluster to a spec made by [`for_node`]: pods'
    /// IPv6 sources (any pool, this node's subnet), the nodes' and store endpoints' IPv6
    /// addresses as control hosts, and who may send IPv6 pod packets to the VXLAN port (a
    /// peer from either of its underlay addresses, with an inner source in its IPv6 subnet).
    /// Nothing changes for a cluster without IPv6 pools.
    ///
    /// [`for_node`]: HostGuardSpec::for_node
    pub fn with_ipv6(
        mut self,
        config: &ClusterConfig,
        node_subnet6: Option<Ipv6Net>,
        node_addr6: Option<Ipv6Addr>,
        peers: &[Lease],
        store_endpoints: &[SocketAddr],
    ) -> HostGuardSpec {
        if !config.has_ipv6() {
            return self;
        }
        self.rules.pools6 = Ipv6Net::aggregate(&config.ipv6_pools.iter().map(|p| p.cidr).collect());
        self.rules.node_subnet6 = node_subnet6.map(|n| n.trunc());
        let e = &mut self.elements;
        e.control_hosts6.extend(node_addr6);
        for ep in store_endpoints {
            if let SocketAddr::V6(v6) = ep {
                e.control_hosts6.insert(*v6.ip());
            }
        }
        let vxlan = self.rules.vxlan_port.is_some();
        let own = self.rules.node_subnet;
        let own6 = self.rules.node_subnet6;
        for p in peers.iter().filter(|p| match own {
            Some(own) => p.subnet.map(|s| s.trunc()) != Some(own),
            None => own6.is_none() || p.subnet6.map(|s| s.trunc()) != own6,
        }) {
            let public6 = p.public_ip6();
            e.control_hosts6.extend(public6);
            let Some(subnet6) = p.subnet6.filter(|_| vxlan) else {
                continue;
            };
            if let Some(addr) = p.public_ip() {
                e.vxlan_peers46.insert((addr, subnet6.trunc()));
            }
            if let Some(addr) = public6 {
                e.vxlan_peers6.insert((addr, subnet6.trunc()));
            }
        }
        self
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
