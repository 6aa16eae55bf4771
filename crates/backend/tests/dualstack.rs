//! host-gw and vxlan in a dual-stack cluster (issue 15): golden desired states for the IPv6
//! paths (host-gw on and off the IPv6 segment; vxlan over an IPv6 underlay, through the IPv4
//! VTEP for peers without one, and with direct routing), the screening of peers' IPv6 parts,
//! the IPv6 VTEP's MAC, name and MTU, the published lease, and the properties (order does not
//! matter, IPv6 routes only for programmed IPv6 parts, nothing panics).
//!
//! Golden files live in `tests/golden/` (`TWILL_BLESS=1` rewrites them).

mod common;

use common::{golden, lease6, net6, node, node6, pools6, routes};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv6Net};
use proptest::prelude::*;
use twill_backend::vxlan::{device_name6, vtep_mac, vtep_mac6};
use twill_backend::{Backend, HostGw, Vxlan, for_config};
use twill_types::MacAddr;
use twill_types::cluster::{BackendKind, ClusterConfig, Pool6};
use twill_types::desired::{DesiredState, PeerPath};
use twill_types::lease::Lease;

use BackendKind::{HostGw as H, Vxlan as V};

fn hostgw() -> HostGw {
    HostGw::new(pools6())
}

fn vxlan(direct_routing: bool) -> Vxlan {
    Vxlan::new(1, 8472, direct_routing)
        .unwrap()
        .with_ipv6_pools(pools6())
}

/// An IPv4-only peer's lease.
fn lease4(name: &str, subnet: &str, public: &str, backend: BackendKind) -> Lease {
    common::lease(name, subnet, public, backend, None)
}

/// Each peer's (IPv4 path, IPv6 path, listed IPv6 subnet).
fn paths(state: &DesiredState) -> Vec<(String, PeerPath, Option<PeerPath>, Option<String>)> {
    state
        .peers
        .iter()
        .map(|p| {
            (
                p.node.clone(),
                p.path.clone(),
                p.path6.clone(),
                p.subnet6.map(|s| s.to_string()),
            )
        })
        .collect()
}

fn path6(state: &DesiredState, node: &str) -> PeerPath {
    let peer = state.peers.iter().find(|p| p.node == node).unwrap();
    peer.path6
        .clone()
        .unwrap_or_else(|| panic!("{node}: no IPv6 path"))
}

fn skipped6(state: &DesiredState, node: &str) -> String {
    match path6(state, node) {
        PeerPath::Skipped(reason) => reason,
        other => panic!("{node}: {other:?}"),
    }
}

/// Peers on our IPv4 and IPv6 segments (fd00:1::/64), and an IPv4-only one.
fn l2_peers() -> Vec<Lease> {
    vec![
        lease6(
            "node-c",
            "10.244.3.0/24",
            "192.168.1.12/24",
            H,
            "fd00:10:244:3::/64",
            Some("fd00:1::12/64"),
        ),
        lease6(
            "node-b",
            "10.244.2.0/24",
            "192.168.1.11/24",
            H,
            "fd00:10:244:2::/64",
            Some("fd00:1::11/64"),
        ),
        lease4("node-d", "10.244.4.0/24", "192.168.1.13/24", H),
        // Our own lease: ignored.
        lease6(
            "node-a",
            "10.244.1.0/24",
            "192.168.1.10/24",
            H,
            "fd00:10:244:1::/64",
            Some("fd00:1::10/64"),
        ),
    ]
}

#[test]
fn hostgw_dual_stack_l2_golden() {
    let state = hostgw().desired(&node6(true), &l2_peers());
    golden("hostgw-dual.json", &state);
    assert_eq!(
        routes(&state),
        [
            "10.244.2.0/24 via 192.168.1.11 dev eth0",
            "fd00:10:244:2::/64 via fd00:1::11 dev eth0",
            "10.244.3.0/24 via 192.168.1.12 dev eth0",
            "fd00:10:244:3::/64 via fd00:1::12 dev eth0",
            "10.244.4.0/24 via 192.168.1.13 dev eth0",
        ]
    );
    let d = state.peers.iter().find(|p| p.node == "node-d").unwrap();
    assert_eq!((d.path6.clone(), d.subnet6), (None, None), "IPv4-only peer");
    assert_eq!(state.vxlan6, None);
}

#[test]
fn hostgw_over_link_local_addresses() {
    let mut n = node6(true);
    n.public_net6 = Some(net6("fe80::10/64"));
    let peer = lease6(
        "node-b",
        "10.244.2.0/24",
        "192.168.1.11/24",
        H,
        "fd00:10:244:2::/64",
        Some("fe80::11/64"),
    );
    let state = hostgw().desired(&n, &[peer]);
    assert_eq!(
        routes(&state)[1],
        "fd00:10:244:2::/64 via fe80::11 dev eth0",
        "a link-local next hop needs its device: it has one"
    );
}

#[test]
fn hostgw_dual_stack_skips_ipv6_off_segment_golden() {
    let peers = vec![
        lease6(
            "node-b",
            "10.244.2.0/24",
            "192.168.1.11/24",
            H,
            "fd00:10:244:2::/64",
            Some("fd00:1::11/64"),
        ),
        // IPv4 on our segment, IPv6 on another one.
        lease6(
            "node-e",
            "10.244.5.0/24",
            "192.168.1.15/24",
            H,
            "fd00:10:244:5::/64",
            Some("fd00:2::15/64"),
        ),
        // No IPv6 underlay address.
        lease6(
            "node-f",
            "10.244.6.0/24",
            "192.168.1.16/24",
            H,
            "fd00:10:244:6::/64",
            None,
        ),
        // IPv4 on another segment, IPv6 on ours.
        lease6(
            "node-g",
            "10.244.7.0/24",
            "192.168.2.17/24",
            H,
            "fd00:10:244:7::/64",
            Some("fd00:1::17/64"),
        ),
    ];
    let state = hostgw().desired(&node6(true), &peers);
    golden("hostgw-dual-off-segment.json", &state);
    assert_eq!(
        skipped6(&state, "node-e"),
        "host-gw: peer fd00:2::15 is not on this node's IPv6 segment fd00:1::/64; use vxlan"
    );
    assert_eq!(
        skipped6(&state, "node-f"),
        "host-gw: the peer publishes no IPv6 underlay address"
    );
    // Each family on its own: node-g's IPv6 part is routed, its IPv4 part skipped.
    let g = state.peers.iter().find(|p| p.node == "node-g").unwrap();
    assert!(matches!(g.path, PeerPath::Skipped(_)), "{g:?}");
    assert_eq!(g.path6, Some(PeerPath::Direct));
    assert_eq!(g.subnet6, Some(net6("fd00:10:244:7::/64")));
    // A skipped IPv6 part lists no IPv6 subnet; never a route via an IPv4 gateway.
    let e = state.peers.iter().find(|p| p.node == "node-e").unwrap();
    assert_eq!((e.path.clone(), e.subnet6), (PeerPath::Direct, None));
    assert!(state.routes.iter().all(|r| matches!(
        (r.dst, r.via),
        (IpNet::V4(_), IpAddr::V4(_)) | (IpNet::V6(_), IpAddr::V6(_))
    )));
    // Without an IPv6 underlay address of our own, no IPv6 route at all.
    let state = hostgw().desired(&node6(false), &peers);
    assert_eq!(
        skipped6(&state, "node-b"),
        "host-gw: this node has no IPv6 underlay address"
    );
    assert!(state.routes.iter().all(|r| matches!(r.dst, IpNet::V4(_))));
}

/// vxlan peers: node-b on both our segments, node-c on neither, node-d without an IPv6
/// underlay (on our IPv4 segment), node-e on our IPv6 segment only.
fn vxlan_peers() -> Vec<Lease> {
    vec![
        lease6(
            "node-e",
            "10.244.5.0/24",
            "192.168.2.15/24",
            V,
            "fd00:10:244:5::/64",
            Some("fd00:1::15/64"),
        ),
        lease6(
            "node-b",
            "10.244.2.0/24",
            "192.168.1.11/24",
            V,
            "fd00:10:244:2::/64",
            Some("fd00:1::11/64"),
        ),
        lease6(
            "node-d",
            "10.244.4.0/24",
            "192.168.1.14/24",
            V,
            "fd00:10:244:4::/64",
            None,
        ),
        lease6(
            "node-c",
            "10.244.3.0/24",
            "192.168.2.13/24",
            V,
            "fd00:10:244:3::/64",
            Some("fd00:2::13/64"),
        ),
    ]
}

#[test]
fn vxlan_dual_stack_over_an_ipv6_underlay_golden() {
    let peers: Vec<Lease> = vxlan_peers()
        .into_iter()
        .filter(|l| l.node != "node-d")
        .collect();
    let state = vxlan(false).desired(&node6(true), &peers);
    golden("vxlan-dual.json", &state);
    let dev6 = state.vxlan6.clone().expect("the IPv6 VTEP");
    assert_eq!(dev6.name, "twill6.1");
    assert_eq!(dev6.local, "fd00:1::10".parse::<IpAddr>().unwrap());
    assert_eq!(
        dev6.address,
        "fd00:10:244:1::/128".parse::<IpNet>().unwrap()
    );
    assert_eq!(dev6.mac, vtep_mac6("node-a", 1));
    assert_eq!((dev6.vni, dev6.port, dev6.mtu), (1, 8472, 1430));
    assert_eq!(dev6.underlay, "eth0");
    assert_eq!(state.vxlan.as_ref().unwrap().mtu, 1450);
    for peer in &state.peers {
        assert_eq!(
            (peer.path.clone(), peer.path6.clone()),
            (PeerPath::Vxlan, Some(PeerPath::Vxlan))
        );
    }
    // Everything IPv6 on twill6.1, the FDB entries to the peers' IPv6 underlay addresses.
    let c6 = "fd00:10:244:3::".parse::<IpAddr>().unwrap();
    let neigh = state.neighbours.iter().find(|n| n.ip == c6).unwrap();
    assert_eq!(
        (neigh.dev.as_str(), neigh.mac),
        ("twill6.1", vtep_mac6("node-c", 1))
    );
    let fdb = state
        .fdb
        .iter()
        .find(|f| f.mac == vtep_mac6("node-c", 1))
        .unwrap();
    assert_eq!(
        (fdb.dev.as_str(), fdb.dst),
        ("twill6.1", "fd00:2::13".parse().unwrap())
    );
    assert!(
        routes(&state)
            .contains(&"fd00:10:244:3::/64 via fd00:10:244:3:: dev twill6.1 onlink".to_string())
    );
}

#[test]
fn vxlan_dual_stack_with_a_peer_without_ipv6_underlay_golden() {
    let peers: Vec<Lease> = vxlan_peers()
        .into_iter()
        .filter(|l| ["node-b", "node-d"].contains(&l.node.as_str()))
        .collect();
    let state = vxlan(false).desired(&node6(true), &peers);
    golden("vxlan-dual-v4-peer.json", &state);
    assert_eq!(
        routes(&state),
        [
            "10.244.2.0/24 via 10.244.2.0 dev twill.1 onlink",
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev twill6.1 onlink",
            "10.244.4.0/24 via 10.244.4.0 dev twill.1 onlink",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill.1 onlink",
        ]
    );
    // node-d's IPv6 neighbour is its IPv4 VTEP MAC on twill.1, whose one FDB entry leads to
    // its IPv4 underlay address.
    let d6 = "fd00:10:244:4::".parse::<IpAddr>().unwrap();
    let neigh = state.neighbours.iter().find(|n| n.ip == d6).unwrap();
    assert_eq!(
        (neigh.dev.as_str(), neigh.mac),
        ("twill.1", vtep_mac("node-d", 1))
    );
    let d_fdb: Vec<_> = state
        .fdb
        .iter()
        .filter(|f| f.mac == vtep_mac("node-d", 1))
        .collect();
    assert_eq!(d_fdb.len(), 1);
    assert_eq!(
        (d_fdb[0].dev.as_str(), d_fdb[0].dst),
        ("twill.1", "192.168.1.14".parse().unwrap())
    );

    // This node without an IPv6 underlay: no IPv6 VTEP, everything through twill.1 over IPv4,
    // and the pods' MTU is IPv4 VXLAN's.
    let n = node6(false);
    let state = vxlan(false).desired(&n, &peers);
    assert_eq!(state.vxlan6, None);
    assert!(
        state.routes.iter().all(|r| r.dev == "twill.1"),
        "{:?}",
        routes(&state)
    );
    assert!(state.fdb.iter().all(|f| matches!(f.dst, IpAddr::V4(_))));
    assert_eq!(vxlan(false).pod_mtu(&n), 1450);
}

#[test]
fn vxlan_dual_stack_direct_routing_golden() {
    let state = vxlan(true).desired(&node6(true), &vxlan_peers());
    golden("vxlan-dual-direct.json", &state);
    assert_eq!(
        routes(&state),
        [
            "10.244.2.0/24 via 192.168.1.11 dev eth0",
            "fd00:10:244:2::/64 via fd00:1::11 dev eth0",
            "10.244.3.0/24 via 10.244.3.0 dev twill.1 onlink",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev twill6.1 onlink",
            "10.244.4.0/24 via 192.168.1.14 dev eth0",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill.1 onlink",
            "10.244.5.0/24 via 10.244.5.0 dev twill.1 onlink",
            "fd00:10:244:5::/64 via fd00:1::15 dev eth0",
        ]
    );
    // node-d is routed directly over IPv4, yet its IPv6 traffic needs its IPv4 VTEP: the FDB
    // entry is there.
    assert!(
        state
            .fdb
            .iter()
            .any(|f| f.dev == "twill.1" && f.mac == vtep_mac("node-d", 1))
    );
    assert!(
        !state
            .fdb
            .iter()
            .any(|f| f.mac == vtep_mac("node-b", 1) || f.mac == vtep_mac6("node-b", 1))
    );
}

#[test]
fn ipv6_parts_that_cannot_be_used_are_skipped_and_the_ipv4_part_is_not() {
    let l = |name: &str, i: u8, subnet6: &str, public6: Option<&str>| {
        lease6(
            name,
            &format!("10.244.{i}.0/24"),
            &format!("192.168.2.{i}/24"),
            V,
            subnet6,
            public6,
        )
    };
    let mut peers = vec![
        l("host-bits", 10, "fd00:10:244:a::1/64", Some("fd00:2::a/64")),
        l("outside", 11, "fd00:99::/64", Some("fd00:2::b/64")),
        l("too-long", 12, "fd00:10:244:c::/127", Some("fd00:2::c/64")),
        l("overlaps-us", 13, "fd00:10:244::/56", Some("fd00:2::d/64")),
        l(
            "swallows-underlay",
            14,
            "fd00:10:244:e::/64",
            Some("fd00:2::e/64"),
        ),
        l("multicast", 15, "fd00:10:244:f::/64", Some("ff02::1/64")),
        l(
            "our-address",
            16,
            "fd00:10:244:10::/64",
            Some("fd00:1::10/64"),
        ),
        l(
            "in-pods",
            17,
            "fd00:10:244:11::/64",
            Some("fd00:10:244:11::5/64"),
        ),
        l("dup-1", 18, "fd00:10:244:20::/64", Some("fd00:2::12/64")),
        l("dup-2", 19, "fd00:10:244:20::/80", Some("fd00:2::13/64")),
        l("no-mac6", 20, "fd00:10:244:21::/64", Some("fd00:2::14/64")),
        l("our-mac6", 21, "fd00:10:244:22::/64", Some("fd00:2::15/64")),
        l(
            "same-mac6-1",
            22,
            "fd00:10:244:23::/64",
            Some("fd00:2::16/64"),
        ),
        l(
            "same-mac6-2",
            23,
            "fd00:10:244:24::/64",
            Some("fd00:2::17/64"),
        ),
        l("good", 30, "fd00:10:244:30::/64", Some("fd00:2::30/64")),
    ];
    let mut n = node6(true);
    // An underlay address inside a peer's (pooled) IPv6 subnet, to see it refused.
    n.public_net6 = Some(net6("fd00:10:244:e::99/64"));
    let set = |ls: &mut Vec<Lease>, name: &str, f: &dyn Fn(&mut Lease)| {
        f(ls.iter_mut().find(|l| l.node == name).unwrap())
    };
    set(&mut peers, "no-mac6", &|l| l.vtep_mac6 = None);
    set(&mut peers, "our-mac6", &|l| {
        l.vtep_mac6 = Some(vtep_mac6("node-a", 1))
    });
    set(&mut peers, "same-mac6-2", &|l| {
        l.vtep_mac6 = Some(vtep_mac6("same-mac6-1", 1))
    });
    let state = vxlan(false).desired(&n, &peers);
    for (name, needle) in [
        (
            "host-bits",
            "IPv6 subnet fd00:10:244:a::1/64 has host bits set",
        ),
        (
            "outside",
            "IPv6 subnet fd00:99::/64 is not in the cluster's IPv6 pools",
        ),
        (
            "too-long",
            "IPv6 subnet fd00:10:244:c::/127 is longer than /122",
        ),
        (
            "overlaps-us",
            "overlaps this node's IPv6 subnet fd00:10:244:1::/64",
        ),
        (
            "swallows-underlay",
            "contains this node's IPv6 underlay address fd00:10:244:e::99",
        ),
        (
            "multicast",
            "IPv6 underlay address ff02::1 is not a unicast host address",
        ),
        (
            "in-pods",
            "IPv6 underlay address fd00:10:244:11::5 lies inside a pod subnet",
        ),
        (
            "dup-1",
            "overlaps the IPv6 subnet of dup-2 (fd00:10:244:20::/80)",
        ),
        (
            "dup-2",
            "overlaps the IPv6 subnet of dup-1 (fd00:10:244:20::/64)",
        ),
        ("no-mac6", "vxlan: the lease has no IPv6 VTEP MAC"),
        ("our-mac6", "is this node's own"),
        (
            "same-mac6-1",
            "is also published by same-mac6-2 (fd00:2::17)",
        ),
        (
            "same-mac6-2",
            "is also published by same-mac6-1 (fd00:2::16)",
        ),
    ] {
        let reason = skipped6(&state, name);
        assert!(
            reason.contains(needle),
            "{name}: {reason:?} lacks {needle:?}"
        );
    }
    // "our-address" is on our IPv6 underlay address (fd00:1::10 is no longer ours here).
    n.public_net6 = Some(net6("fd00:1::10/64"));
    let state2 = vxlan(false).desired(&n, &peers);
    assert!(
        skipped6(&state2, "our-address")
            .contains("IPv6 underlay address fd00:1::10 is this node's own")
    );
    // The IPv4 parts are all programmed; of the IPv6 parts only the good one.
    assert!(
        state.peers.iter().all(|p| p.path == PeerPath::Vxlan),
        "{:?}",
        paths(&state)
    );
    let v6_routes: Vec<_> = state
        .routes
        .iter()
        .filter(|r| matches!(r.dst, IpNet::V6(_)))
        .collect();
    assert_eq!(
        v6_routes.len(),
        2,
        "good and our-address: {:?}",
        routes(&state)
    );
    let listed: Vec<_> = state.peers.iter().filter_map(|p| p.subnet6).collect();
    assert_eq!(
        listed,
        [net6("fd00:10:244:10::/64"), net6("fd00:10:244:30::/64")]
    );

    // host-gw applies the same screening.
    let state = hostgw().desired(&n, &peers);
    assert!(skipped6(&state, "outside").contains("not in the cluster's IPv6 pools"));
    assert!(skipped6(&state, "dup-1").contains("overlaps the IPv6 subnet of dup-2"));
}

#[test]
fn a_refused_lease_refuses_its_ipv6_part_and_an_ipv4_only_node_ignores_ipv6() {
    let peer = lease6(
        "node-b",
        "10.244.1.0/25",
        "192.168.1.11/24",
        H,
        "fd00:10:244:2::/64",
        Some("fd00:1::11/64"),
    );
    let state = hostgw().desired(&node6(true), &[peer]);
    assert!(skipped6(&state, "node-b").contains("overlaps this node's subnet 10.244.1.0/24"));
    let ok = lease6(
        "node-b",
        "10.244.2.0/24",
        "192.168.1.11/24",
        H,
        "fd00:10:244:2::/64",
        Some("fd00:1::11/64"),
    );
    let state = hostgw().desired(&node(), std::slice::from_ref(&ok));
    assert_eq!(
        skipped6(&state, "node-b"),
        "this node has no IPv6 pod subnet"
    );
    assert_eq!(state.routes.len(), 1);
    // A backend of an IPv4-only cluster (no IPv6 pools) refuses every IPv6 subnet.
    let state = HostGw::default().desired(&node6(true), &[ok]);
    assert!(skipped6(&state, "node-b").contains("not in the cluster's IPv6 pools"));
}

#[test]
fn ipv6_vtep_mac_is_stable_distinct_and_locally_administered_unicast() {
    // Pinned: peers hold this MAC in their FDB; changing the derivation breaks upgrades.
    assert_eq!(vtep_mac6("node-a", 1).to_string(), "66:1f:db:f7:da:0a");
    for name in ["", "a", "node-a", "a-very-long-node-name.example.internal"] {
        for vni in [1, 42, 16_777_215] {
            let m = vtep_mac6(name, vni);
            assert_ne!(m, vtep_mac(name, vni), "{name} {vni}");
            assert_eq!(m.0[0] & 0x01, 0, "unicast: {name} {vni}");
            assert_eq!(m.0[0] & 0x02, 0x02, "locally administered: {name} {vni}");
        }
    }
    assert_ne!(vtep_mac6("node-a", 1), vtep_mac6("node-a", 2));
    assert_eq!(device_name6(16_777_215), "twill6.16777215");
}

#[test]
fn dual_stack_local_leases() {
    let n = node6(true);
    let l = vxlan(false).local_lease(&n);
    assert_eq!(l.subnet6, n.subnet6);
    assert_eq!(l.public_net6, n.public_net6);
    assert_eq!(l.vtep_mac6, Some(vtep_mac6("node-a", 1)));
    assert_eq!(
        l.vtep_mac6,
        vxlan(false).desired(&n, &[]).vxlan6.map(|d| d.mac)
    );
    // The IPv6 VTEP MAC is published with an IPv6 subnet, even before an IPv6 underlay.
    assert_eq!(
        vxlan(false).local_lease(&node6(false)).vtep_mac6,
        Some(vtep_mac6("node-a", 1))
    );
    let l = hostgw().local_lease(&n);
    assert_eq!(
        (l.subnet6, l.public_net6, l.vtep_mac6),
        (n.subnet6, n.public_net6, None)
    );
    // A dual-stack cluster's node publishes its IPv6 VTEP MAC before its IPv6 subnet is
    // derived (the agent makes the lease, then takes it with the subnets).
    let l = vxlan(false).local_lease(&node());
    assert_eq!(
        (l.subnet6, l.public_net6, l.vtep_mac6),
        (None, None, Some(vtep_mac6("node-a", 1)))
    );
    // An IPv4-only cluster: nothing of IPv6.
    let l = Vxlan::new(1, 8472, false).unwrap().local_lease(&node());
    assert_eq!((l.subnet6, l.public_net6, l.vtep_mac6), (None, None, None));
}

#[test]
fn dual_stack_mtu_fits_both_vteps() {
    let mut n = node6(true);
    assert_eq!(vxlan(false).pod_mtu(&n), 1430);
    assert_eq!(vxlan(true).pod_mtu(&n), 1430);
    assert_eq!(hostgw().pod_mtu(&n), 1500);
    n.underlay_mtu = 9000;
    let state = vxlan(false).desired(&n, &[]);
    assert_eq!(state.vxlan.unwrap().mtu, 8950);
    assert_eq!(state.vxlan6.unwrap().mtu, 8930);
    // Peers or not, the IPv6 VTEP is there (peers must reach it first).
    assert_eq!(
        vxlan(false).desired(&node6(true), &[]).vxlan6.unwrap().name,
        "twill6.1"
    );
    assert_eq!(vxlan(false).pod_mtu(&node6(false)), 1450);
}

#[test]
fn dual_stack_desired_state_does_not_depend_on_lease_order() {
    let mut peers = vxlan_peers();
    peers.extend(l2_peers());
    for backend in [
        Box::new(hostgw()) as Box<dyn Backend>,
        Box::new(vxlan(false)),
        Box::new(vxlan(true)),
    ] {
        let state = backend.desired(&node6(true), &peers);
        for k in 0..peers.len() {
            let mut shuffled = peers.clone();
            shuffled.rotate_left(k);
            shuffled.reverse();
            assert_eq!(backend.desired(&node6(true), &shuffled), state);
        }
    }
}

#[test]
fn for_config_passes_the_ipv6_pools() {
    let mut config = ClusterConfig::parse(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
    )
    .unwrap();
    config.ipv6_pools.push(Pool6 {
        name: "v6".into(),
        cidr: net6("fd00:10:244::/48"),
        block_size: 64,
        subnet_min: net6("fd00:10:244:1::/64"),
        subnet_max: net6("fd00:10:244:ffff::/64"),
        nat_outgoing: false,
    });
    let backend = for_config(&config).unwrap();
    assert_eq!(
        backend.desired(&node6(true), &vxlan_peers()),
        vxlan(true).desired(&node6(true), &vxlan_peers())
    );
    config.backend.kind = BackendKind::HostGw;
    let backend = for_config(&config).unwrap();
    assert_eq!(
        backend.desired(&node6(true), &l2_peers()),
        hostgw().desired(&node6(true), &l2_peers())
    );
}

fn arb_lease6() -> impl Strategy<Value = Lease> {
    (
        (0u8..6, 1u8..8, any::<bool>(), 0u8..3),
        (0u16..8, 60u8..=66),
        proptest::option::of((0u16..3, 0u16..6)),
        proptest::option::of(0u8..4),
    )
        .prop_map(|((name, sub, vx, seg4), (sub6, len6), public6, mac6)| {
            let name = format!("node-{}", (b'b' + name) as char);
            let backend = if vx { V } else { H };
            let mut lease = lease6(
                &name,
                &format!("10.244.{sub}.0/24"),
                &format!("192.168.{}.{}/24", 1 + seg4 / 2, 20 + sub),
                backend,
                &format!("fd00:10:244:{sub6}::/64"),
                None,
            );
            lease.subnet6 = Some(
                Ipv6Net::new(format!("fd00:10:244:{sub6}::").parse().unwrap(), len6)
                    .unwrap()
                    .trunc(),
            );
            lease.public_net6 =
                public6.map(|(seg, host)| net6(&format!("fd00:{seg}::{:x}/64", 0x20 + host)));
            if let Some(m) = mac6 {
                lease.vtep_mac6 = Some(MacAddr([0x02, 6, 0, 0, 0, m]));
            }
            lease
        })
}

proptest! {
    #[test]
    fn any_dual_stack_leases_give_a_consistent_state(
        leases in proptest::collection::vec(arb_lease6(), 0..10),
        underlay6 in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let n = node6(underlay6);
        let backends: Vec<Box<dyn Backend>> = vec![Box::new(hostgw()), Box::new(vxlan(false)), Box::new(vxlan(true))];
        for backend in backends {
            let state = backend.desired(&n, &leases);
            let mut shuffled = leases.clone();
            let len = shuffled.len().max(1);
            shuffled.rotate_left((seed as usize) % len);
            shuffled.reverse();
            prop_assert_eq!(&backend.desired(&n, &shuffled), &state);
            // IPv6 routes exactly for the peers whose IPv6 part is programmed (and listed).
            let programmed6: Vec<_> = state.peers.iter().filter(|p| matches!(p.path6, Some(ref p) if !matches!(p, PeerPath::Skipped(_)))).collect();
            prop_assert!(programmed6.iter().all(|p| p.subnet6.is_some()));
            prop_assert_eq!(state.peers.iter().filter(|p| p.subnet6.is_some()).count(), programmed6.len());
            let routes6: Vec<_> = state.routes.iter().filter(|r| matches!(r.dst, IpNet::V6(_))).collect();
            prop_assert_eq!(routes6.len(), programmed6.len());
            for r in &routes6 {
                prop_assert!(matches!(r.via, IpAddr::V6(_)));
                prop_assert!(!r.dst.contains(&IpAddr::V6(n.subnet6.unwrap().network())));
                if let Some(own6) = n.public_net6 {
                    prop_assert!(!r.dst.contains(&IpAddr::V6(own6.addr())));
                }
            }
            for (i, a) in routes6.iter().enumerate() {
                for b in &routes6[i + 1..] {
                    prop_assert!(!a.dst.contains(&b.dst.network()) && !b.dst.contains(&a.dst.network()));
                }
            }
            // One FDB destination per MAC and device; nothing on twill6.1 without the device.
            for (i, a) in state.fdb.iter().enumerate() {
                prop_assert!(state.fdb[i + 1..].iter().all(|b| b.mac != a.mac || b.dev != a.dev));
            }
            let has6 = state.vxlan6.is_some();
            prop_assert!(has6 || state.routes.iter().all(|r| r.dev != "twill6.1"));
            prop_assert_eq!(has6, underlay6 && state.vxlan.is_some());
        }
    }
}
