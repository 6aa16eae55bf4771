//! The backends against golden desired states for a fixed set of peers, plus the cases around
//! them: skipped peers, the direct-routing split, MAC stability, MTU, bad leases, and the
//! properties (order does not matter, nothing panics).
//!
//! Golden files live in `tests/golden/`; `TWILL_BLESS=1 cargo test -p twill-backend` rewrites
//! them from the current output (then review the diff by hand).

mod common;

use common::{golden, net, node};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use proptest::prelude::*;
use twill_backend::vxlan::{device_name, vtep_mac};
use twill_backend::{Backend, HostGw, Tunnel, UnsupportedBackend, Vxlan, for_config};
use twill_types::MacAddr;
use twill_types::cluster::{BackendKind, ClusterConfig};
use twill_types::desired::{DesiredState, PeerPath, TunnelEncap};
use twill_types::lease::Lease;

/// A peer's lease without a WireGuard key.
fn lease(name: &str, subnet: &str, public: &str, backend: BackendKind) -> Lease {
    common::lease(name, subnet, public, backend, None)
}

/// The fixed peers of the golden files, deliberately out of order.
fn peers() -> Vec<Lease> {
    use BackendKind::*;
    vec![
        // Another segment, no VTEP MAC.
        lease("node-e", "10.244.5.0/24", "192.168.2.11/24", HostGw),
        // Same segment, vxlan.
        lease("node-b", "10.244.2.0/24", "192.168.1.11/24", Vxlan),
        // Our own lease: ignored.
        lease("node-a", "10.244.1.0/24", "192.168.1.10/24", Vxlan),
        // Same segment, no VTEP MAC.
        lease("node-d", "10.244.4.0/24", "192.168.1.12/24", HostGw),
        // Another segment, vxlan.
        lease("node-c", "10.244.3.0/24", "192.168.2.10/24", Vxlan),
        // Claims our underlay address.
        lease("node-f", "10.244.6.0/24", "192.168.1.10/24", Vxlan),
    ]
}

fn vxlan(direct_routing: bool) -> Vxlan {
    Vxlan::new(1, 8472, direct_routing).unwrap()
}

fn paths(state: &DesiredState) -> Vec<(String, PeerPath)> {
    state
        .peers
        .iter()
        .map(|p| (p.node.clone(), p.path.clone()))
        .collect()
}

fn skipped_reason(state: &DesiredState, node: &str) -> String {
    match state.peers.iter().find(|p| p.node == node).map(|p| &p.path) {
        Some(PeerPath::Skipped(reason)) => reason.clone(),
        other => panic!("{node}: {other:?}"),
    }
}

#[test]
fn hostgw_golden() {
    golden("hostgw.json", &HostGw::default().desired(&node(), &peers()));
}

#[test]
fn vxlan_golden() {
    golden("vxlan.json", &vxlan(false).desired(&node(), &peers()));
}

#[test]
fn vxlan_direct_routing_golden() {
    golden("vxlan-direct.json", &vxlan(true).desired(&node(), &peers()));
}

#[test]
fn for_config_picks_the_backend() {
    let parse = |text: &str| ClusterConfig::parse(text).unwrap();
    let hostgw = for_config(&parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#,
    ))
    .unwrap();
    assert_eq!(
        hostgw.desired(&node(), &peers()),
        HostGw::default().desired(&node(), &peers())
    );
    let vx = for_config(&parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    ))
    .unwrap();
    assert_eq!(
        vx.desired(&node(), &peers()),
        vxlan(true).desired(&node(), &peers())
    );

    let udp = for_config(&parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":9000}}"#,
    ))
    .unwrap();
    assert_eq!(
        udp.desired(&node(), &peers()),
        Tunnel::new(TunnelEncap::Udp { port: 9000 }, false).desired(&node(), &peers())
    );
    assert_eq!(udp.pod_mtu(&node()), 1500 - 28);
    let ipip = for_config(&parse(
        "[[pools]]\nname = \"p\"\ncidr = \"10.244.0.0/16\"\nipipMode = \"CrossSubnet\"\n",
    ))
    .unwrap();
    assert_eq!(
        ipip.desired(&node(), &peers()),
        Tunnel::new(TunnelEncap::Ipip, true).desired(&node(), &peers())
    );
    assert_eq!(ipip.pod_mtu(&node()), 1500 - 20);

    // The wireguard backend and encryption are covered by tests/wireguard.rs.
    let wg = for_config(&parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#,
    ))
    .unwrap();
    assert_eq!(wg.local_lease(&node()).backend, BackendKind::Wireguard);
    let err = Vxlan::new(0, 8472, false).err().unwrap();
    assert!(matches!(err, UnsupportedBackend(_)), "{err}");
}

#[test]
fn local_leases() {
    let n = node();
    let l = vxlan(false).local_lease(&n);
    assert_eq!(
        l,
        Lease {
            node: "node-a".into(),
            subnet: n.subnet,
            public_net: n.public_net,
            backend: BackendKind::Vxlan,
            vtep_mac: Some("ee:a1:74:b0:d8:83".parse().unwrap()),
            wireguard_public_key: None,
            subnet6: None,
            public_net6: None,
            vtep_mac6: None,
        }
    );
    assert_eq!(
        vxlan(false).desired(&n, &[]).vxlan.unwrap().mac,
        l.vtep_mac.unwrap()
    );
    let l = HostGw::default().local_lease(&n);
    assert_eq!((l.backend, l.vtep_mac), (BackendKind::HostGw, None));
    // Before the agent has a subnet: still a lease (to fill in), no panic.
    let mut unleased = n.clone();
    unleased.subnet = None;
    assert_eq!(
        vxlan(false).local_lease(&unleased).vtep_mac,
        Some(vtep_mac("node-a", 1))
    );
    let state = vxlan(false).desired(&unleased, &peers());
    assert!(state.routes.is_empty(), "{state:?}");
}

#[test]
fn vtep_mac_is_stable_and_locally_administered_unicast() {
    // Pinned: peers hold this MAC in their FDB; changing the derivation breaks upgrades.
    assert_eq!(vtep_mac("node-a", 1).to_string(), "ee:a1:74:b0:d8:83");
    assert_eq!(vtep_mac("node-b", 1).to_string(), "ca:37:da:e3:c6:75");
    assert_eq!(vtep_mac("node-a", 1), vtep_mac("node-a", 1));
    assert_ne!(vtep_mac("node-a", 1), vtep_mac("node-a", 2));
    assert_ne!(vtep_mac("node-a", 1), vtep_mac("node-b", 1));
    for name in ["", "a", "node-1", "a-very-long-node-name.example.internal"] {
        for vni in [1, 42, 16_777_215] {
            let m = vtep_mac(name, vni).0;
            assert_eq!(m[0] & 0x01, 0, "unicast: {name} {vni}");
            assert_eq!(m[0] & 0x02, 0x02, "locally administered: {name} {vni}");
        }
    }
}

#[test]
fn mtu() {
    let mut n = node();
    assert_eq!(HostGw::default().pod_mtu(&n), 1500);
    assert_eq!(vxlan(false).pod_mtu(&n), 1450);
    // Direct routing still encapsulates some peers.
    assert_eq!(vxlan(true).pod_mtu(&n), 1450);
    n.underlay_mtu = 9001;
    assert_eq!(vxlan(true).pod_mtu(&n), 8951);
    assert_eq!(vxlan(true).desired(&n, &[]).vxlan.unwrap().mtu, 8951);
    n.underlay_mtu = 20;
    assert_eq!(vxlan(false).pod_mtu(&n), 0);
}

#[test]
fn vxlan_device() {
    let state = Vxlan::new(16_777_215, 4789, false)
        .unwrap()
        .desired(&node(), &[]);
    let dev = state.vxlan.unwrap();
    assert_eq!(dev.name, "twill.16777215");
    assert!(dev.name.len() <= 15);
    assert_eq!(device_name(7), "twill.7");
    assert_eq!((dev.vni, dev.port), (16_777_215, 4789));
    assert_eq!(
        dev.local,
        "192.168.1.10".parse::<std::net::Ipv4Addr>().unwrap()
    );
    assert_eq!(dev.address, (net("10.244.1.0/32")).into());
    assert_eq!(dev.underlay, "eth0");
    assert!(Vxlan::new(0, 8472, false).is_err());
}

#[test]
fn direct_routing_splits_by_segment() {
    let state = vxlan(true).desired(&node(), &peers());
    let direct: Vec<_> = state
        .routes
        .iter()
        .filter(|r| r.dev == "eth0")
        .map(|r| r.dst)
        .collect();
    let encap: Vec<_> = state
        .routes
        .iter()
        .filter(|r| r.dev == "twill.1")
        .map(|r| r.dst)
        .collect();
    assert_eq!(
        direct,
        [net("10.244.2.0/24").into(), net("10.244.4.0/24").into()]
    );
    assert_eq!(encap, [IpNet::from(net("10.244.3.0/24"))]);
    assert!(
        state
            .routes
            .iter()
            .all(|r| r.onlink == (r.dev == "twill.1"))
    );
    // Only encapsulated peers have neighbour and FDB entries.
    assert_eq!(state.neighbours.len(), 1);
    assert_eq!(state.fdb.len(), 1);
    assert_eq!(
        state.fdb[0].dst,
        "192.168.2.10".parse::<std::net::Ipv4Addr>().unwrap()
    );
}

#[test]
fn bad_leases_are_skipped_with_a_reason() {
    use BackendKind::Vxlan as V;
    let mut broken = vec![
        lease("host-bits", "10.244.7.1/24", "192.168.1.20/24", V),
        lease("too-long", "10.244.8.0/31", "192.168.1.21/24", V),
        lease("overlaps-us", "10.244.0.0/16", "192.168.1.22/24", V),
        lease("underlay", "192.168.0.0/16", "192.168.1.23/24", V),
        lease("loopback", "10.244.9.0/24", "127.0.0.1/8", V),
        lease("zero", "10.244.10.0/24", "0.0.0.0/0", V),
        lease("bcast", "10.244.11.0/24", "192.168.1.255/24", V),
        lease("in-pods", "10.244.12.0/24", "10.244.12.5/24", V),
        lease("node-a", "10.244.13.0/24", "192.168.1.10/24", V),
        lease("dup-1", "10.244.20.0/24", "192.168.2.30/24", V),
        lease("dup-2", "10.244.20.0/25", "192.168.2.31/24", V),
        lease("no-mac", "10.244.21.0/24", "192.168.2.32/24", V),
        lease("multicast-mac", "10.244.22.0/24", "192.168.2.33/24", V),
        lease("our-mac", "10.244.23.0/24", "192.168.2.34/24", V),
        lease("same-mac-1", "10.244.24.0/24", "192.168.2.35/24", V),
        lease("same-mac-2", "10.244.25.0/24", "192.168.2.36/24", V),
    ];
    let set_mac = |ls: &mut Vec<Lease>, name: &str, mac: Option<MacAddr>| {
        ls.iter_mut().find(|l| l.node == name).unwrap().vtep_mac = mac;
    };
    set_mac(&mut broken, "no-mac", None);
    set_mac(
        &mut broken,
        "multicast-mac",
        Some("01:00:5e:00:00:01".parse().unwrap()),
    );
    set_mac(&mut broken, "our-mac", Some(vtep_mac("node-a", 1)));
    set_mac(&mut broken, "same-mac-2", Some(vtep_mac("same-mac-1", 1)));
    let good = lease("good", "10.244.30.0/24", "192.168.2.40/24", V);
    broken.push(good.clone());

    let state = vxlan(false).desired(&node(), &broken);
    for (name, needle) in [
        ("host-bits", "subnet 10.244.7.1/24 has host bits set"),
        ("too-long", "subnet 10.244.8.0/31 is longer than /30"),
        ("overlaps-us", "overlaps this node's subnet 10.244.1.0/24"),
        (
            "underlay",
            "contains this node's underlay address 192.168.1.10",
        ),
        (
            "loopback",
            "underlay address 127.0.0.1 is not a unicast host address",
        ),
        (
            "zero",
            "underlay address 0.0.0.0 is not a unicast host address",
        ),
        (
            "bcast",
            "192.168.1.255 is the network or broadcast address of 192.168.1.0/24",
        ),
        (
            "in-pods",
            "underlay address 10.244.12.5 lies inside a pod subnet",
        ),
        ("node-a", "this node's own name"),
        ("dup-1", "overlaps the subnet of dup-2 (10.244.20.0/25)"),
        ("dup-2", "overlaps the subnet of dup-1 (10.244.20.0/24)"),
        ("no-mac", "vxlan: the lease has no VTEP MAC"),
        (
            "multicast-mac",
            "VTEP MAC 01:00:5e:00:00:01 is not a unicast address",
        ),
        ("our-mac", "is this node's own"),
        (
            "same-mac-1",
            "is also published by same-mac-2 (192.168.2.36)",
        ),
        (
            "same-mac-2",
            "is also published by same-mac-1 (192.168.2.35)",
        ),
    ] {
        let reason = skipped_reason(&state, name);
        assert!(
            reason.contains(needle),
            "{name}: {reason:?} lacks {needle:?}"
        );
    }
    // Only the good peer is programmed.
    assert_eq!(state.routes.len(), 1);
    assert_eq!(state.routes[0].dst, good.subnet.unwrap().into());
    assert_eq!(state.neighbours.len(), 1);
    assert_eq!(state.fdb.len(), 1);
    assert_eq!(state.peers.len(), broken.len());

    // host-gw applies the same checks.
    let state = HostGw::default().desired(&node(), &broken);
    assert!(skipped_reason(&state, "dup-1").contains("overlaps the subnet of dup-2"));
    assert!(skipped_reason(&state, "host-bits").contains("host bits"));
    assert!(state.routes.is_empty(), "{:?}", state.routes);
}

#[test]
fn one_node_under_two_leases_keeps_one_fdb_entry() {
    // A restarted peer that took a new subnet before its old lease expired.
    let old = lease(
        "node-b",
        "10.244.2.0/24",
        "192.168.2.11/24",
        BackendKind::Vxlan,
    );
    let new = lease(
        "node-b",
        "10.244.9.0/24",
        "192.168.2.11/24",
        BackendKind::Vxlan,
    );
    let state = vxlan(false).desired(&node(), &[new, old.clone(), old]);
    assert_eq!(
        paths(&state),
        [
            ("node-b".into(), PeerPath::Vxlan),
            ("node-b".into(), PeerPath::Vxlan)
        ]
    );
    assert_eq!(state.routes.len(), 2);
    assert_eq!(state.neighbours.len(), 2);
    assert_eq!(state.fdb.len(), 1);
}

#[test]
fn own_lease_is_ignored_whoever_holds_it() {
    let own = lease(
        "node-a",
        "10.244.1.0/24",
        "192.168.1.10/24",
        BackendKind::Vxlan,
    );
    assert_eq!(vxlan(false).desired(&node(), &[own]).peers, []);
    assert_eq!(
        HostGw::default().desired(&node(), &[]),
        DesiredState::default()
    );
}

fn arb_lease() -> impl Strategy<Value = Lease> {
    (
        0u8..6,
        (0u32..64, 20u8..=32),
        (0u32..8, 0u8..=32),
        any::<bool>(),
        proptest::option::of(0u8..4),
    )
        .prop_map(|(name, (sub, sub_len), (ip, ip_len), vx, mac)| {
            let subnet = Ipv4Net::new(
                std::net::Ipv4Addr::from(
                    u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)) + (sub << 8),
                ),
                sub_len,
            )
            .unwrap();
            let public_net = Ipv4Net::new(
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(192, 168, 1, 8)) + ip),
                ip_len,
            )
            .unwrap();
            Lease {
                node: format!("node-{}", (b'a' + name) as char),
                subnet: Some(subnet),
                public_net: Some(public_net),
                backend: if vx {
                    BackendKind::Vxlan
                } else {
                    BackendKind::HostGw
                },
                vtep_mac: mac.map(|m| MacAddr([0x02, 0, 0, 0, 0, m])),
                wireguard_public_key: None,
                subnet6: None,
                public_net6: None,
                vtep_mac6: None,
            }
        })
}

fn backends() -> Vec<Box<dyn Backend>> {
    vec![
        Box::new(HostGw::default()),
        Box::new(vxlan(false)),
        Box::new(vxlan(true)),
    ]
}

proptest! {
    #[test]
    fn any_leases_give_a_consistent_state(leases in proptest::collection::vec(arb_lease(), 0..12), seed in any::<u64>()) {
        let n = node();
        for backend in backends() {
            let state = backend.desired(&n, &leases);
            // Deterministic whatever the store's order.
            let mut shuffled = leases.clone();
            let len = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % len);
            shuffled.reverse();
            prop_assert_eq!(&backend.desired(&n, &shuffled), &state);

            // Sorted by subnet; never our own subnet; routes only for programmed peers.
            let subnets: Vec<_> = state.peers.iter().map(|p| (p.subnet.unwrap().network(), p.subnet.unwrap().prefix_len())).collect();
            let mut sorted = subnets.clone();
            sorted.sort();
            prop_assert_eq!(&subnets, &sorted);
            prop_assert!(state.peers.iter().all(|p| p.subnet != n.subnet));
            let programmed: Vec<_> = state.peers.iter().filter(|p| !matches!(p.path, PeerPath::Skipped(_))).collect();
            prop_assert_eq!(state.routes.len(), programmed.len());
            for (route, peer) in state.routes.iter().zip(&programmed) {
                prop_assert_eq!(route.dst, IpNet::V4(peer.subnet.unwrap()));
                prop_assert!(!route.dst.contains(&IpAddr::V4(n.public_net4().addr())));
                prop_assert!(route.dst.network() != n.subnet4().network());
            }
            // Programmed subnets never overlap each other.
            for (i, a) in state.routes.iter().enumerate() {
                for b in &state.routes[i + 1..] {
                    prop_assert!(!a.dst.contains(&b.dst.network()) && !b.dst.contains(&a.dst.network()));
                }
            }
            // One FDB destination per MAC.
            for (i, a) in state.fdb.iter().enumerate() {
                prop_assert!(state.fdb[i + 1..].iter().all(|b| b.mac != a.mac));
            }
        }
    }
}

/// The golden peers as if they all ran `kind` (the tunnel only talks to its own kind).
fn tunnel_peers(kind: BackendKind) -> Vec<Lease> {
    let mut peers = peers();
    for p in &mut peers {
        if p.node != "node-e" {
            p.backend = kind;
            p.vtep_mac = None;
        }
    }
    peers
}

#[test]
fn udp_golden() {
    let udp = Tunnel::new(TunnelEncap::Udp { port: 8285 }, false);
    golden(
        "udp.json",
        &udp.desired(&node(), &tunnel_peers(BackendKind::Udp)),
    );
}

#[test]
fn ipip_cross_subnet_golden() {
    let ipip = Tunnel::new(TunnelEncap::Ipip, true);
    let state = ipip.desired(&node(), &tunnel_peers(BackendKind::Ipip));
    golden("ipip-direct.json", &state);
    // Same segment: direct; other segment: tunnelled; another backend's node: skipped.
    assert_eq!(
        paths(&state)
            .into_iter()
            .map(|(n, p)| format!("{n} {p:?}"))
            .collect::<Vec<_>>(),
        [
            "node-b Direct",
            "node-c Ipip",
            "node-d Direct",
            "node-e Skipped(\"ipip: the peer runs the host-gw backend and cannot decapsulate ipip\")",
            "node-f Skipped(\"underlay address 192.168.1.10 is this node's own\")",
        ]
    );
}

#[test]
fn tunnel_peers_sharing_an_address_are_both_skipped() {
    let udp = Tunnel::new(TunnelEncap::Udp { port: 8285 }, false);
    let peers = vec![
        lease("x", "10.244.7.0/24", "192.168.3.5/24", BackendKind::Udp),
        lease("y", "10.244.8.0/24", "192.168.3.5/24", BackendKind::Udp),
        lease("z", "10.244.9.0/24", "192.168.3.6/24", BackendKind::Udp),
    ];
    let state = udp.desired(&node(), &peers);
    assert!(skipped_reason(&state, "x").contains("several nodes (x, y)"));
    assert!(skipped_reason(&state, "y").contains("several nodes"));
    assert_eq!(state.tunnel_peers.len(), 1);
    assert_eq!(state.tunnel_peers[0].node, "z");
    assert_eq!(state.routes.len(), 1);
    assert_eq!(state.routes[0].dev, "twill.tun");
    assert!(state.routes[0].onlink);
}
