//! The host protection table (`inet twill-host`): the rule set computed from data against
//! golden files (no root), and applied to a real kernel inside a private network namespace
//! (root): written whole once, elements only when peers change, nothing when nothing does,
//! repaired after a flush, removed. `TWILL_BLESS=1` rewrites the golden files.

mod common;

use std::net::{Ipv4Addr, SocketAddr};

use common::{Netns, golden, require_root};
use ipnet::Ipv4Net;
use twill_dataplane::hostguard::{self, Applied, HostGuard, Render, Spec, store_endpoints};
use twill_types::cluster::{BackendKind, ClusterConfig, Pool6};
use twill_types::lease::Lease;

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn lease(node: &str, subnet: &str, public: &str) -> Lease {
    Lease {
        node: node.into(),
        subnet: Some(net(subnet)),
        public_net: Some(net(public)),
        backend: BackendKind::Vxlan,
        vtep_mac: None,
        wireguard_public_key: None,
        subnet6: None,
        public_net6: None,
        vtep_mac6: None,
    }
}

fn config(text: &str) -> ClusterConfig {
    ClusterConfig::parse(text).unwrap_or_else(|e| panic!("{e}"))
}

/// Three nodes: us (h1) and two peers, deliberately out of order; our own lease is among
/// them, as the agent's peer map has it, and must be skipped.
fn peers() -> Vec<Lease> {
    vec![
        lease("h3", "10.244.3.0/24", "192.168.100.13/24"),
        lease("h1", "10.244.1.0/24", "192.168.100.11/24"),
        lease("h2", "10.244.2.0/24", "192.168.100.12/24"),
    ]
}

fn etcd() -> Vec<SocketAddr> {
    vec!["192.168.100.1:2379".parse().unwrap()]
}

fn vxlan_spec() -> Spec {
    let c = config(
        "workloadToHostPorts = [\"udp:123\", \"tcp:22\", \"tcp:30000-32767\"]\n\
         [[pools]]\nname = \"pods\"\ncidr = \"10.244.0.0/16\"\n",
    );
    Spec::for_node(
        &c,
        Some(net("10.244.1.0/24")),
        Some(Ipv4Addr::new(192, 168, 100, 11)),
        &peers(),
        &etcd(),
    )
}

#[test]
fn vxlan_table_matches_golden() {
    golden("hostguard-vxlan.nft", &vxlan_spec().table_script());
}

#[test]
fn udp_accept_bgp_table_matches_golden() {
    let c = config(
        "backend = \"udp\"\nport = 9000\nworkloadToHost = \"Accept\"\n\
         [bgp]\nlistenPort = 1790\n\
         [[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/16\"\n\
         [[pools]]\nname = \"b\"\ncidr = \"10.250.0.0/16\"\n",
    );
    let endpoints = vec![
        "10.0.0.1:2379".parse().unwrap(),
        "10.0.0.2:12379".parse().unwrap(),
    ];
    let spec = Spec::for_node(
        &c,
        Some(net("10.244.1.0/24")),
        Some(Ipv4Addr::new(192, 168, 100, 11)),
        &peers(),
        &endpoints,
    );
    // No kernel VXLAN: no receiver check here (the tunnel engine and its fast path make it).
    assert_eq!(spec.rules.vxlan_port, None);
    assert!(spec.elements.vxlan_peers.is_empty());
    assert_eq!(spec.rules.tunnel_udp, vec![8285, 8472, 9000]);
    assert_eq!(spec.rules.control_tcp, vec![179, 1790, 2379, 2380, 12379]);
    golden("hostguard-udp-accept.nft", &spec.table_script());
}

#[test]
fn spec_from_config_and_peers() {
    let spec = vxlan_spec();
    let r = &spec.rules;
    assert_eq!(r.pools, vec![net("10.244.0.0/16")]);
    assert_eq!(r.node_subnet, Some(net("10.244.1.0/24")));
    assert_eq!(r.vxlan_port, Some(8472));
    assert_eq!(r.control_tcp, vec![179, 2379, 2380]);
    assert_eq!(r.tunnel_udp, vec![8285, 8472]);
    let allow: Vec<String> = r.allow_ports.iter().map(|p| p.to_string()).collect();
    assert_eq!(allow, ["tcp:22", "tcp:30000-32767", "udp:123"]);
    let hosts: Vec<String> = spec
        .elements
        .control_hosts
        .iter()
        .map(|a| a.to_string())
        .collect();
    assert_eq!(
        hosts,
        [
            "192.168.100.1",
            "192.168.100.11",
            "192.168.100.12",
            "192.168.100.13"
        ]
    );
    // Our own lease is not a VXLAN sender.
    let senders: Vec<(Ipv4Addr, Ipv4Net)> = spec.elements.vxlan_peers.iter().copied().collect();
    assert_eq!(
        senders,
        vec![
            (Ipv4Addr::new(192, 168, 100, 12), net("10.244.2.0/24")),
            (Ipv4Addr::new(192, 168, 100, 13), net("10.244.3.0/24")),
        ]
    );
    // The inner source is compared as raw payload: subnets are integer ranges in network
    // byte order.
    let script = spec.elements_script();
    assert!(
        script.contains("192.168.100.12 . 0x0af40200-0x0af402ff"),
        "{script}"
    );
}

#[test]
fn peers_change_only_elements() {
    let a = vxlan_spec();
    let mut fewer = peers();
    fewer.retain(|l| l.node != "h3");
    fewer.push(lease("h4", "10.244.4.0/24", "192.168.100.14/24"));
    let b = Spec::for_node(
        &config(
            "workloadToHostPorts = [\"tcp:22\"]\n[[pools]]\nname = \"pods\"\ncidr = \"10.244.0.0/16\"\n",
        ),
        Some(net("10.244.1.0/24")),
        Some(Ipv4Addr::new(192, 168, 100, 11)),
        &fewer,
        &etcd(),
    );
    // Different allow-lists are different rules...
    assert_ne!(a.rules, b.rules);
    // ...but with the same config only the elements differ.
    let c = Spec::for_node(
        &config(
            "workloadToHostPorts = [\"udp:123\", \"tcp:22\", \"tcp:30000-32767\"]\n\
             [[pools]]\nname = \"pods\"\ncidr = \"10.244.0.0/16\"\n",
        ),
        Some(net("10.244.1.0/24")),
        Some(Ipv4Addr::new(192, 168, 100, 11)),
        &fewer,
        &etcd(),
    );
    assert_eq!(a.rules, c.rules);
    assert_ne!(a.elements, c.elements);
    let script = c.elements_script();
    assert!(
        !script.contains("chain") && !script.contains("rule"),
        "{script}"
    );
    assert!(script.contains("192.168.100.14 . 0x0af40400-0x0af404ff"));
    assert!(!script.contains("192.168.100.13"));
}

#[test]
fn host_gw_has_no_vxlan_check() {
    let c = config("backend = \"host-gw\"\n[[pools]]\nname = \"p\"\ncidr = \"10.244.0.0/16\"\n");
    let spec = Spec::for_node(
        &c,
        Some(net("10.244.1.0/24")),
        Some(Ipv4Addr::new(192, 168, 100, 11)),
        &peers(),
        &[],
    );
    let script = spec.table_script();
    assert!(!script.contains("vxlan"), "{script}");
    // Still every node is a control host.
    assert_eq!(spec.elements.control_hosts.len(), 3);
}

#[test]
fn store_endpoints_from_urls() {
    let eps = |u: &str| -> Vec<String> {
        store_endpoints(u)
            .into_iter()
            .map(|a| a.to_string())
            .collect()
    };
    assert_eq!(eps("etcd://192.168.100.1:2379"), ["192.168.100.1:2379"]);
    assert_eq!(
        eps("etcd://10.0.0.1:2379, http://10.0.0.2:2381,etcd.example:2379"),
        ["10.0.0.1:2379", "10.0.0.2:2381"]
    );
    assert_eq!(eps("etcds://https://10.0.0.3:2379/"), ["10.0.0.3:2379"]);
    // IPv6 endpoints (a node of an IPv6-only underlay).
    assert_eq!(
        eps("etcd://[fd00:1::1]:2379,http://[::1]:2381/"),
        ["[fd00:1::1]:2379", "[::1]:2381"]
    );
    assert!(eps("embedded").is_empty());
    assert!(eps("embedded:/var/lib/twill/store.redb").is_empty());
}

fn table(ns: &Netns) -> String {
    ns.sh("nft list table inet twill-host")
}

#[test]
#[ignore = "needs root"]
fn apply_update_repair_remove() {
    require_root();
    let ns = Netns::new("hostguard");
    let mut guard = HostGuard::new();
    let a = vxlan_spec();
    assert_eq!(ns.run(|| guard.apply(&a)).unwrap(), Applied::Table);
    let t = table(&ns);
    assert!(t.contains("udp dport 8472 jump vxlan_in"), "{t}");
    assert!(t.contains("tcp . 30000-32767"), "{t}");
    assert!(
        t.contains("type nat hook prerouting priority dstnat - 10"),
        "{t}"
    );
    assert_eq!(ns.run(|| guard.apply(&a)).unwrap(), Applied::Unchanged);

    // A peer leaves, another joins: only the sets change.
    let mut fewer = peers();
    fewer.retain(|l| l.node != "h3");
    fewer.push(lease("h4", "10.244.4.0/24", "192.168.100.14/24"));
    let c = Spec::for_node(
        &config(
            "workloadToHostPorts = [\"udp:123\", \"tcp:22\", \"tcp:30000-32767\"]\n\
             [[pools]]\nname = \"pods\"\ncidr = \"10.244.0.0/16\"\n",
        ),
        Some(net("10.244.1.0/24")),
        Some(Ipv4Addr::new(192, 168, 100, 11)),
        &fewer,
        &etcd(),
    );
    assert_eq!(ns.run(|| guard.apply(&c)).unwrap(), Applied::Elements);
    let t = table(&ns);
    assert!(t.contains("192.168.100.14 . 0xaf40400-0xaf404ff"), "{t}");
    assert!(!t.contains("192.168.100.13"), "{t}");

    // Someone flushed the ruleset: the next apply writes the table again.
    ns.sh("nft flush ruleset");
    assert_eq!(ns.run(|| guard.apply(&c)).unwrap(), Applied::Table);
    assert!(table(&ns).contains("192.168.100.14"));

    // A config change rewrites the table (Accept).
    let accept = Spec::for_node(
        &config(
            "workloadToHost = \"Accept\"\n[[pools]]\nname = \"pods\"\ncidr = \"10.244.0.0/16\"\n",
        ),
        Some(net("10.244.1.0/24")),
        Some(Ipv4Addr::new(192, 168, 100, 11)),
        &fewer,
        &etcd(),
    );
    assert_eq!(ns.run(|| guard.apply(&accept)).unwrap(), Applied::Table);
    assert!(table(&ns).contains("counter packets 0 bytes 0 accept"));

    ns.run(hostguard::remove).unwrap();
    assert!(!ns.ok("nft list table inet twill-host"));
    // Removing what is not there is fine.
    ns.run(hostguard::remove).unwrap();
}

/// h1 in a dual-stack cluster: h2 has an IPv6 underlay and subnet, h3 only an IPv6 subnet
/// (it reaches us over IPv4), and the store has an IPv6 endpoint too.
fn dual_spec(peers: &[Lease]) -> Spec {
    let mut c = config("[[pools]]\nname = \"pods\"\ncidr = \"10.244.0.0/16\"\n");
    c.ipv6_pools.push(Pool6 {
        name: "pods6".into(),
        cidr: "fd00:10:244::/56".parse().unwrap(),
        block_size: 64,
        subnet_min: "fd00:10:244:1::/64".parse().unwrap(),
        subnet_max: "fd00:10:244:ff::/64".parse().unwrap(),
        nat_outgoing: true,
    });
    let mut endpoints = etcd();
    endpoints.push("[fd00:100::1]:2379".parse().unwrap());
    Spec::for_node(
        &c,
        Some(net("10.244.1.0/24")),
        Some(Ipv4Addr::new(192, 168, 100, 11)),
        peers,
        &endpoints,
    )
    .with_ipv6(
        &c,
        Some("fd00:10:244:1::/64".parse().unwrap()),
        Some("fd00:100::11".parse().unwrap()),
        peers,
        &endpoints,
    )
}

fn dual_peers() -> Vec<Lease> {
    let mut peers = peers();
    for p in &mut peers {
        let n = p.subnet.unwrap().network().octets()[2];
        p.subnet6 = Some(format!("fd00:10:244:{n}::/64").parse().unwrap());
        if p.node != "h3" {
            p.public_net6 = Some(format!("fd00:100::1{n}/64").parse().unwrap());
        }
    }
    peers
}

#[test]
fn dual_stack_vxlan_table_matches_golden() {
    let spec = dual_spec(&dual_peers());
    let e = &spec.elements;
    let hosts6: Vec<String> = e.control_hosts6.iter().map(|a| a.to_string()).collect();
    assert_eq!(hosts6, ["fd00:100::1", "fd00:100::11", "fd00:100::12"]);
    // Both peers may send IPv6 pod packets over IPv4; only h2 over IPv6.
    let v46: Vec<String> = e
        .vxlan_peers46
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    assert_eq!(
        v46,
        [
            "192.168.100.12 fd00:10:244:2::/64",
            "192.168.100.13 fd00:10:244:3::/64"
        ]
    );
    let v6: Vec<String> = e
        .vxlan_peers6
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect();
    assert_eq!(v6, ["fd00:100::12 fd00:10:244:2::/64"]);
    golden("hostguard-vxlan-dual.nft", &spec.table_script());
}

#[test]
fn an_ipv4_only_cluster_gets_no_ipv6_rules() {
    let spec = vxlan_spec().with_ipv6(
        &config("[[pools]]\nname = \"pods\"\ncidr = \"10.244.0.0/16\"\n"),
        None,
        Some("fd00:100::11".parse().unwrap()),
        &dual_peers(),
        &etcd(),
    );
    assert_eq!(spec, vxlan_spec());
    assert!(!spec.table_script().contains("ip6"));
}

#[test]
#[ignore = "needs root"]
fn dual_stack_table_is_applied_read_back_and_updated() {
    require_root();
    let ns = Netns::new("hostguard6");
    let mut guard = HostGuard::new();
    let a = dual_spec(&dual_peers());
    assert_eq!(ns.run(|| guard.apply(&a)).unwrap(), Applied::Table);
    let t = table(&ns);
    assert!(t.contains("ip6 saddr fd00:10:244::/56 jump pod_in"), "{t}");
    assert!(
        t.contains("ip6 saddr fd00:10:244:1::/64 jump workload_in"),
        "{t}"
    );
    assert!(
        t.contains(
            "ip6 daddr @control_hosts6 tcp dport @control_tcp counter packets 0 bytes 0 drop"
        ),
        "{t}"
    );
    assert!(
        t.contains(
            "fd00:100::12 . 0xfd000010024400020000000000000000-0xfd00001002440002ffffffffffffffff"
        ),
        "{t}"
    );
    // A restarted agent (no record) reads the IPv6 elements back: nothing to do.
    let mut fresh = HostGuard::new();
    assert_eq!(ns.run(|| fresh.apply(&a)).unwrap(), Applied::Unchanged);
    // h2 loses its IPv6 underlay: only the sets change.
    let mut peers = dual_peers();
    peers
        .iter_mut()
        .find(|p| p.node == "h2")
        .unwrap()
        .public_net6 = None;
    let b = dual_spec(&peers);
    assert_eq!(ns.run(|| fresh.apply(&b)).unwrap(), Applied::Elements);
    let t = table(&ns);
    assert!(!t.contains("fd00:100::12"), "{t}");
    ns.run(hostguard::remove).unwrap();
}
