//! The node's own objects in the one desired state: the sysctls the agent needs (IPv4
//! forwarding unless the node is IPv6-only, and IPv6 forwarding on nodes with IPv6), the TUN
//! device's address, the masquerade chain of the cluster's pools, and the host protection
//! table. Pure: computed from the cluster config, the node, its peers and the store's
//! endpoints; the backends compute the peers' part, this adds the rest (in
//! `Core::desired_state`), and the dataplane reconciler writes both.

use std::net::SocketAddr;

use ipnet::{IpNet, Ipv4Net};
use twill_backend::LocalNode;
use twill_types::cluster::ClusterConfig;
use twill_types::desired::{AddressSpec, DesiredState, HostGuardSpec};
use twill_types::lease::Lease;

/// Adds the node's own objects to `desired` (which holds the backend's part: the TUN device's
/// address depends on it). `peers` are the other nodes' leases; `store_endpoints` are those
/// of the agent's `--store` (control-plane addresses pods never reach).
pub fn host_objects(
    config: &ClusterConfig,
    node: &LocalNode,
    peers: &[Lease],
    store_endpoints: &[SocketAddr],
    desired: &mut DesiredState,
) {
    if !node.is_ipv6_only() {
        // An IPv6-only node leaves the host's IPv4 settings alone.
        desired
            .sysctls
            .insert("net.ipv4.ip_forward".to_string(), "1".to_string());
    }
    if node.subnet6.is_some() {
        // Pods' IPv6 traffic is routed too (only in dual-stack clusters: IPv4-only nodes
        // leave the host's IPv6 settings alone).
        desired
            .sysctls
            .insert("net.ipv6.conf.all.forwarding".to_string(), "1".to_string());
    }
    // The node subnet's network address on each TUN device (as Flannel does with flannel0,
    // and twill with its VXLAN device), so traffic the host itself sends to peers' pods has a
    // source inside this node's subnet and passes the peers' inner-source check.
    let tun_devices = desired.tunnel.iter().map(|t| t.name.clone());
    let wg_device = desired.wireguard.iter().map(|w| w.name.clone());
    // An IPv6-only node has no IPv4 subnet, so its devices get no address: the host's own
    // IPv6 traffic to peers' pods takes its source by IPv6's rules, as on a dual-stack node.
    let addresses: Vec<AddressSpec> = match node.subnet {
        None => Vec::new(),
        Some(subnet) => tun_devices
            .chain(wg_device)
            .map(|dev| AddressSpec {
                dev,
                address: Ipv4Net::new(subnet.network(), 32).expect("/32 is valid"),
            })
            .collect(),
    };
    desired.addresses.extend(addresses);
    // One chain for the cluster: pods of any pool talking to another pool keep their
    // address; leaving the cluster they are masqueraded, if any pool of their family asks.
    let mut masquerade = Vec::new();
    if config.pools.iter().any(|p| p.nat_outgoing) {
        masquerade.extend(config.pools.iter().map(|p| IpNet::V4(p.cidr)));
    }
    if config.ipv6_pools.iter().any(|p| p.nat_outgoing) {
        masquerade.extend(config.ipv6_pools.iter().map(|p| IpNet::V6(p.cidr)));
    }
    desired.masquerade = masquerade;
    desired.host_guard = Some(
        HostGuardSpec::for_node(
            config,
            node.subnet,
            node.public_net.map(|n| n.addr()),
            peers,
            store_endpoints,
        )
        .with_ipv6(
            config,
            node.subnet6,
            node.public_net6.map(|n| n.addr()),
            peers,
            store_endpoints,
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_types::desired::{TunnelDevice, TunnelEncap};

    fn node() -> LocalNode {
        LocalNode {
            name: "n1".into(),
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            public_net: Some("192.168.100.11/24".parse().unwrap()),
            underlay_dev: "eth0".into(),
            underlay_mtu: 1500,
            subnet6: None,
            public_net6: None,
        }
    }

    fn config(json: &str) -> ClusterConfig {
        ClusterConfig::parse(json).unwrap()
    }

    #[test]
    fn every_node_gets_forwarding_and_host_protection_and_nat_follows_the_pools() {
        let cfg = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let mut desired = DesiredState::default();
        let etcd = ["127.0.0.1:2379".parse().unwrap()];
        host_objects(&cfg, &node(), &[], &etcd, &mut desired);
        assert_eq!(desired.sysctls["net.ipv4.ip_forward"], "1");
        assert!(
            !desired.sysctls.contains_key("net.ipv6.conf.all.forwarding"),
            "IPv4 only: IPv6 settings are left alone"
        );
        assert!(desired.addresses.is_empty(), "no TUN device, no address");
        // Flannel's form masquerades the network.
        assert_eq!(desired.masquerade, vec!["10.244.0.0/16".parse().unwrap()]);
        let guard = desired.host_guard.clone().expect("host protection");
        assert_eq!(guard.rules.node_subnet, node().subnet);
        assert!(
            guard
                .elements
                .control_hosts
                .contains(&"127.0.0.1".parse().unwrap())
        );

        let mut no_nat = cfg.clone();
        no_nat.pools[0].nat_outgoing = false;
        host_objects(&no_nat, &node(), &[], &[], &mut desired);
        assert!(desired.masquerade.is_empty(), "no pool asks: no chain");
    }

    #[test]
    fn a_dual_stack_node_forwards_ipv6() {
        let cfg = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#);
        let dual = LocalNode {
            subnet6: Some("fd00:10:244:3::/64".parse().unwrap()),
            ..node()
        };
        let mut desired = DesiredState::default();
        host_objects(&cfg, &dual, &[], &[], &mut desired);
        assert_eq!(desired.sysctls["net.ipv6.conf.all.forwarding"], "1");
        assert_eq!(desired.sysctls["net.ipv4.ip_forward"], "1");
    }

    #[test]
    fn the_tun_device_gets_the_subnets_network_address() {
        let cfg = config(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}"#);
        let mut desired = DesiredState {
            tunnel: Some(TunnelDevice {
                name: "twill.tun".into(),
                encap: TunnelEncap::Udp { port: 8285 },
                mtu: 1472,
                local: "192.168.100.11".parse().unwrap(),
                local6: None,
            }),
            ..DesiredState::default()
        };
        host_objects(&cfg, &node(), &[], &[], &mut desired);
        assert_eq!(
            desired.addresses,
            vec![AddressSpec {
                dev: "twill.tun".into(),
                address: "10.244.3.0/32".parse().unwrap(),
            }]
        );
    }

    #[test]
    fn the_wireguard_device_gets_it_too() {
        let cfg = config(
            "backend: udp
wireguard: {}
pools: [{name: p, cidr: 10.244.0.0/16}]
",
        );
        let backend = twill_backend::for_config(&cfg).unwrap();
        let mut desired = backend.desired(&node(), &[]);
        host_objects(&cfg, &node(), &[], &[], &mut desired);
        let devs: Vec<&str> = desired.addresses.iter().map(|a| a.dev.as_str()).collect();
        assert_eq!(devs, ["twill.tun", "twill.wg"]);
        assert!(
            desired
                .addresses
                .iter()
                .all(|a| a.address == "10.244.3.0/32".parse().unwrap())
        );
        // Pods never reach WireGuard's port.
        let guard = desired.host_guard.unwrap();
        assert!(guard.rules.tunnel_udp.contains(&51820), "{guard:?}");
    }

    #[test]
    fn a_dual_stack_bgp_node_keeps_pods_off_the_bgp_port_over_ipv6_too() {
        let cfg = config(
            "backend: bgp
pools: [{name: p, cidr: 10.244.0.0/16}, {name: p6, cidr: 'fd00:10:244::/56'}]
bgp: {listenPort: 1790}
",
        );
        let dual = LocalNode {
            subnet6: Some("fd00:10:244:3::/64".parse().unwrap()),
            public_net6: Some("fd00:100::11/64".parse().unwrap()),
            ..node()
        };
        let peer = Lease {
            node: "n2".into(),
            subnet: Some("10.244.4.0/24".parse().unwrap()),
            public_net: Some("192.168.100.12/24".parse().unwrap()),
            backend: twill_types::cluster::BackendKind::Bgp,
            vtep_mac: None,
            wireguard_public_key: None,
            subnet6: Some("fd00:10:244:4::/64".parse().unwrap()),
            public_net6: Some("fd00:100::12/64".parse().unwrap()),
            vtep_mac6: None,
        };
        let mut desired = DesiredState::default();
        host_objects(&cfg, &dual, &[peer], &[], &mut desired);
        let guard = desired.host_guard.expect("host protection");
        // The speaker's ports, closed to every pod of either family.
        assert!(
            [179, 1790]
                .iter()
                .all(|p| guard.rules.control_tcp.contains(p)),
            "{guard:?}"
        );
        assert_eq!(
            guard.rules.pools6,
            vec!["fd00:10:244::/56".parse::<ipnet::Ipv6Net>().unwrap()]
        );
        let hosts6: Vec<String> = guard
            .elements
            .control_hosts6
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(hosts6, ["fd00:100::11", "fd00:100::12"]);
        // As nftables has it: an IPv6 pod's connection to any node's BGP port is dropped
        // before NAT, and to this node's on input.
        use twill_dataplane::hostguard::Render;
        let nft = guard.table_script();
        for rule in [
            "prerouting ip6 saddr fd00:10:244::/56 jump pod_out",
            "pod_out ip6 daddr @control_hosts6 tcp dport @control_tcp counter drop",
            "pod_in tcp dport @control_tcp counter drop",
        ] {
            assert!(nft.contains(rule), "{rule} is not in\n{nft}");
        }
    }

    #[test]
    fn an_ipv6_only_node_gets_ipv6_forwarding_nat_and_guard_only() {
        let cfg = config(
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
        );
        let node = LocalNode {
            subnet: None,
            public_net: None,
            subnet6: Some("fd00:10:244:3::/64".parse().unwrap()),
            public_net6: Some("fd00:1::11/64".parse().unwrap()),
            ..node()
        };
        let peer = Lease {
            node: "n2".into(),
            subnet: None,
            public_net: None,
            backend: twill_types::cluster::BackendKind::Vxlan,
            vtep_mac: None,
            wireguard_public_key: None,
            subnet6: Some("fd00:10:244:4::/64".parse().unwrap()),
            public_net6: Some("fd00:1::12/64".parse().unwrap()),
            vtep_mac6: None,
        };
        let etcd = ["[fd00:1::1]:2379".parse().unwrap()];
        let mut desired = DesiredState::default();
        host_objects(&cfg, &node, &[peer], &etcd, &mut desired);
        assert!(
            !desired.sysctls.contains_key("net.ipv4.ip_forward"),
            "IPv6-only: IPv4 settings are left alone: {:?}",
            desired.sysctls
        );
        assert_eq!(desired.sysctls["net.ipv6.conf.all.forwarding"], "1");
        assert_eq!(
            desired.masquerade,
            vec![IpNet::V6("fd00:10:244::/56".parse().unwrap())]
        );
        let guard = desired.host_guard.expect("host protection");
        assert_eq!(guard.rules.node_subnet, None);
        assert!(guard.rules.pools.is_empty());
        assert_eq!(guard.rules.node_subnet6, node.subnet6);
        assert!(guard.elements.control_hosts.is_empty());
        assert!(guard.elements.vxlan_peers.is_empty());
        assert_eq!(
            guard.elements.control_hosts6,
            ["fd00:1::1", "fd00:1::11", "fd00:1::12"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect()
        );
        assert_eq!(
            guard.elements.vxlan_peers6,
            [(
                "fd00:1::12".parse().unwrap(),
                "fd00:10:244:4::/64".parse().unwrap()
            )]
            .into_iter()
            .collect()
        );
        // The rules' JSON has no IPv4 node subnet (and a dual-stack one is unchanged).
        let json = serde_json::to_value(&guard.rules).unwrap();
        assert!(json.get("nodeSubnet").is_none(), "{json}");
    }
}
