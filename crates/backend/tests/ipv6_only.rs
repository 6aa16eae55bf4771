//! host-gw, vxlan, udp and ipip on a node of an IPv6-only cluster: no IPv4 subnet, no IPv4
//! underlay. Peers are screened by their IPv6 subnet and IPv6 underlay address alone; nothing
//! IPv4 is planned (no IPv4 VTEP, no IPv4 route, no IPv4 tunnel peer); goldens pin the whole
//! desired state.

mod common;

use common::*;
use twill_backend::tunnel::{IPV6_UNDERLAY_EXTRA, Tunnel};
use twill_backend::vxlan::{IPV6_UNDERLAY_OVERHEAD, vtep_mac6};
use twill_backend::{Backend, HostGw, LocalNode, Vxlan};
use twill_types::cluster::{BackendKind, ClusterConfig};
use twill_types::desired::{DesiredState, PeerPath, TunnelEncap};
use twill_types::lease::Lease;

/// node-a of an IPv6-only cluster: fd00:10:244:1::/64, underlay fd00:1::10/64 on eth0.
fn node() -> LocalNode {
    LocalNode {
        name: "node-a".into(),
        subnet: None,
        public_net: None,
        underlay_dev: "eth0".into(),
        underlay_mtu: 1500,
        subnet6: Some(net6("fd00:10:244:1::/64")),
        public_net6: Some(net6("fd00:1::10/64")),
    }
}

/// An IPv6-only peer's lease (no IPv4 part at all).
fn lease(name: &str, subnet6: &str, public6: Option<&str>, backend: BackendKind) -> Lease {
    Lease {
        node: name.into(),
        subnet: None,
        public_net: None,
        backend,
        vtep_mac: None,
        wireguard_public_key: None,
        subnet6: Some(net6(subnet6)),
        public_net6: public6.map(net6),
        vtep_mac6: (backend == BackendKind::Vxlan).then(|| vtep_mac6(name, 1)),
    }
}

fn hostgw() -> HostGw {
    HostGw::new(pools6())
}

fn vxlan(direct_routing: bool) -> Vxlan {
    Vxlan::new(1, 8472, direct_routing)
        .unwrap()
        .with_ipv6_pools(pools6())
}

/// Each peer's (node, path), asserting a peer has no IPv4 part and `path6` equals `path`.
fn paths(state: &DesiredState) -> Vec<(String, PeerPath)> {
    state
        .peers
        .iter()
        .map(|p| {
            assert_eq!((p.subnet, p.public_ip), (None, None), "{p:?}");
            assert_eq!(p.path6.as_ref(), Some(&p.path), "{p:?}");
            (p.node.clone(), p.path.clone())
        })
        .collect()
}

fn no_ipv4(state: &DesiredState) {
    assert!(state.vxlan.is_none(), "no IPv4 VTEP: {:?}", state.vxlan);
    assert!(
        state
            .routes
            .iter()
            .all(|r| r.dst.addr().is_ipv6() && r.via.is_ipv6()),
        "{:?}",
        routes(state)
    );
    assert!(state.neighbours.iter().all(|n| n.ip.is_ipv6()));
    assert!(state.fdb.iter().all(|f| f.dst.is_ipv6()));
    if let Some(tun) = &state.tunnel {
        assert!(tun.local.is_unspecified(), "no IPv4 underlay: {tun:?}");
    }
    assert!(
        state
            .tunnel_peers
            .iter()
            .all(|p| p.subnet.is_none() && p.subnet6.is_some() && p.underlay.is_ipv6()),
        "{:?}",
        state.tunnel_peers
    );
    assert!(state.addresses.is_empty(), "{:?}", state.addresses);
}

/// node-b and node-c on this node's IPv6 segment, node-d behind a router, node-e without an
/// IPv6 underlay address, and this node's own lease.
fn peers(backend: BackendKind) -> Vec<Lease> {
    vec![
        lease(
            "node-d",
            "fd00:10:244:4::/64",
            Some("fd00:2::13/64"),
            backend,
        ),
        lease(
            "node-b",
            "fd00:10:244:2::/64",
            Some("fd00:1::11/64"),
            backend,
        ),
        lease(
            "node-a",
            "fd00:10:244:1::/64",
            Some("fd00:1::10/64"),
            backend,
        ),
        lease(
            "node-c",
            "fd00:10:244:3::/64",
            Some("fd00:1::12/64"),
            backend,
        ),
        lease("node-e", "fd00:10:244:5::/64", None, backend),
    ]
}

#[test]
fn hostgw_ipv6_only_routes_on_segment_and_skips_the_rest_golden() {
    let state = hostgw().desired(&node(), &peers(BackendKind::HostGw));
    golden("hostgw-ipv6-only.json", &state);
    no_ipv4(&state);
    assert_eq!(
        routes(&state),
        [
            "fd00:10:244:2::/64 via fd00:1::11 dev eth0",
            "fd00:10:244:3::/64 via fd00:1::12 dev eth0",
        ]
    );
    let paths = paths(&state);
    assert_eq!(paths.len(), 4, "own lease dropped: {paths:?}");
    assert_eq!(paths[0], ("node-b".into(), PeerPath::Direct));
    assert_eq!(paths[1], ("node-c".into(), PeerPath::Direct));
    let PeerPath::Skipped(why) = &paths[2].1 else {
        panic!("{paths:?}")
    };
    assert!(why.contains("not on this node's IPv6 segment"), "{why}");
    let PeerPath::Skipped(why) = &paths[3].1 else {
        panic!("{paths:?}")
    };
    assert!(why.contains("publishes no IPv6 underlay address"), "{why}");
    // Programmed peers list their IPv6 subnet; skipped ones do not.
    assert_eq!(state.peers[0].subnet6, Some(net6("fd00:10:244:2::/64")));
    assert_eq!(state.peers[2].subnet6, None);
}

#[test]
fn vxlan_ipv6_only_has_only_the_ipv6_vtep_golden() {
    let state = vxlan(false).desired(&node(), &peers(BackendKind::Vxlan));
    golden("vxlan-ipv6-only.json", &state);
    no_ipv4(&state);
    let dev6 = state.vxlan6.as_ref().expect("twill6.1");
    assert_eq!(dev6.name, "twill6.1");
    assert_eq!(dev6.local.to_string(), "fd00:1::10");
    assert_eq!(dev6.address.to_string(), "fd00:10:244:1::/128");
    assert_eq!(dev6.mtu, 1500 - IPV6_UNDERLAY_OVERHEAD);
    assert_eq!(
        routes(&state),
        [
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev twill6.1 onlink",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev twill6.1 onlink",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill6.1 onlink",
        ]
    );
    let fdb: Vec<String> = state.fdb.iter().map(|f| f.dst.to_string()).collect();
    assert_eq!(fdb, ["fd00:1::11", "fd00:1::12", "fd00:2::13"]);
    let paths = paths(&state);
    assert_eq!(
        paths[2],
        ("node-d".into(), PeerPath::Vxlan),
        "routed peers too"
    );
    assert!(matches!(&paths[3].1, PeerPath::Skipped(why) if why.contains("IPv6 underlay")));
    assert_eq!(vxlan(false).pod_mtu(&node()), 1500 - IPV6_UNDERLAY_OVERHEAD);
}

#[test]
fn vxlan_ipv6_only_direct_routing_encapsulates_only_off_segment() {
    let state = vxlan(true).desired(&node(), &peers(BackendKind::Vxlan));
    no_ipv4(&state);
    assert_eq!(
        routes(&state),
        [
            "fd00:10:244:2::/64 via fd00:1::11 dev eth0",
            "fd00:10:244:3::/64 via fd00:1::12 dev eth0",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill6.1 onlink",
        ]
    );
}

#[test]
fn ipv6_only_leases_publish_no_ipv4_part() {
    let n = node();
    let l = vxlan(false).local_lease(&n);
    assert_eq!((l.subnet, l.public_net, l.vtep_mac), (None, None, None));
    assert_eq!(l.vtep_mac6, Some(vtep_mac6("node-a", 1)));
    assert_eq!(l.public_net6, n.public_net6);
    let l = hostgw().local_lease(&n);
    assert_eq!((l.subnet, l.public_net, l.vtep_mac6), (None, None, None));
}

#[test]
fn ipv6_only_peers_with_bad_ipv6_parts_are_skipped_with_the_reason() {
    let mut bad = peers(BackendKind::Vxlan);
    bad.push(lease(
        "out",
        "fd00:99::/64",
        Some("fd00:1::20/64"),
        BackendKind::Vxlan,
    ));
    bad.push(lease(
        "over",
        "fd00:10:244:2::/80",
        Some("fd00:1::21/64"),
        BackendKind::Vxlan,
    ));
    bad.push(lease(
        "mine",
        "fd00:10:244:6::/64",
        Some("fd00:1::10/64"),
        BackendKind::Vxlan,
    ));
    let state = vxlan(false).desired(&node(), &bad);
    no_ipv4(&state);
    let why = |name: &str| match &state.peers.iter().find(|p| p.node == name).unwrap().path {
        PeerPath::Skipped(why) => why.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert!(
        why("out").contains("not in the cluster's IPv6 pools"),
        "{}",
        why("out")
    );
    assert!(why("over").contains("overlaps"), "{}", why("over"));
    assert!(why("node-b").contains("overlaps"), "{}", why("node-b"));
    assert!(why("mine").contains("this node's own"), "{}", why("mine"));
    // The input order does not matter.
    let mut reversed = bad.clone();
    reversed.reverse();
    assert_eq!(vxlan(false).desired(&node(), &reversed), state);
}

const UDP: TunnelEncap = TunnelEncap::Udp { port: 8285 };

fn tunnel(encap: TunnelEncap, direct_routing: bool) -> Tunnel {
    Tunnel::new(encap, direct_routing).with_ipv6_pools(pools6())
}

/// The tunnel peers as (node, underlay, IPv6 subnet).
fn tunnel_peers(state: &DesiredState) -> Vec<(String, String, String)> {
    state
        .tunnel_peers
        .iter()
        .map(|p| {
            let subnet6 = p.subnet6.map(|n| n.to_string()).unwrap_or_default();
            (p.node.clone(), p.underlay.to_string(), subnet6)
        })
        .collect()
}

#[test]
fn udp_ipv6_only_tunnels_every_peer_over_the_ipv6_underlay_golden() {
    let state = tunnel(UDP, false).desired(&node(), &peers(BackendKind::Udp));
    golden("udp-ipv6-only.json", &state);
    no_ipv4(&state);
    let tun = state.tunnel.as_ref().expect("twill.tun");
    assert_eq!(tun.name, "twill.tun");
    assert_eq!(tun.encap, UDP);
    assert_eq!(tun.local6, Some("fd00:1::10".parse().unwrap()));
    // Outer IPv6 (40) + UDP (8).
    assert_eq!(tun.mtu, 1500 - 28 - IPV6_UNDERLAY_EXTRA);
    assert_eq!(tun.mtu, 1452);
    assert_eq!(tunnel(UDP, false).pod_mtu(&node()), 1452);
    assert_eq!(
        routes(&state),
        [
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev twill.tun onlink",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev twill.tun onlink",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill.tun onlink",
        ]
    );
    assert_eq!(
        tunnel_peers(&state),
        [
            (
                "node-b".into(),
                "fd00:1::11".into(),
                "fd00:10:244:2::/64".into()
            ),
            (
                "node-c".into(),
                "fd00:1::12".into(),
                "fd00:10:244:3::/64".into()
            ),
            (
                "node-d".into(),
                "fd00:2::13".into(),
                "fd00:10:244:4::/64".into()
            ),
        ]
    );
    let paths = paths(&state);
    assert_eq!(paths.len(), 4, "own lease dropped: {paths:?}");
    for p in &paths[..3] {
        assert_eq!(p.1, PeerPath::Udp, "{paths:?}");
    }
    assert!(
        matches!(&paths[3], (n, PeerPath::Skipped(why))
            if n == "node-e" && why.contains("publishes no IPv6 underlay address")),
        "{paths:?}"
    );
    assert_eq!(state.peers[0].subnet6, Some(net6("fd00:10:244:2::/64")));
    assert_eq!(state.peers[3].subnet6, None);
}

#[test]
fn ipip_ipv6_only_direct_routing_encapsulates_only_off_segment_golden() {
    let ipip = tunnel(TunnelEncap::Ipip, true);
    let state = ipip.desired(&node(), &peers(BackendKind::Ipip));
    golden("ipip-ipv6-only-direct.json", &state);
    no_ipv4(&state);
    // ip6tnl: the outer IPv6 header alone (40).
    assert_eq!(state.tunnel.as_ref().unwrap().mtu, 1460);
    assert_eq!(ipip.pod_mtu(&node()), 1460);
    assert_eq!(
        routes(&state),
        [
            "fd00:10:244:2::/64 via fd00:1::11 dev eth0",
            "fd00:10:244:3::/64 via fd00:1::12 dev eth0",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill.tun onlink",
        ]
    );
    assert_eq!(
        tunnel_peers(&state),
        [(
            "node-d".into(),
            "fd00:2::13".into(),
            "fd00:10:244:4::/64".into()
        )]
    );
    let paths: Vec<PeerPath> = paths(&state).into_iter().map(|(_, p)| p).collect();
    assert_eq!(
        paths[..3],
        [PeerPath::Direct, PeerPath::Direct, PeerPath::Ipip]
    );
    // Without DirectRouting every peer is encapsulated.
    let state = tunnel(TunnelEncap::Ipip, false).desired(&node(), &peers(BackendKind::Ipip));
    assert_eq!(state.tunnel_peers.len(), 3);
}

#[test]
fn ipv6_only_tunnel_skips_what_it_cannot_carry_with_the_reason() {
    let mut leases = peers(BackendKind::Udp);
    // Another backend (cannot decapsulate udp), and two nodes at one IPv6 underlay address.
    leases.push(lease(
        "vx",
        "fd00:10:244:6::/64",
        Some("fd00:1::16/64"),
        BackendKind::Vxlan,
    ));
    leases.push(lease(
        "twin-1",
        "fd00:10:244:7::/64",
        Some("fd00:1::17/64"),
        BackendKind::Udp,
    ));
    leases.push(lease(
        "twin-2",
        "fd00:10:244:8::/64",
        Some("fd00:1::17/64"),
        BackendKind::Udp,
    ));
    let state = tunnel(UDP, false).desired(&node(), &leases);
    no_ipv4(&state);
    let why = |name: &str| match &state.peers.iter().find(|p| p.node == name).unwrap().path {
        PeerPath::Skipped(why) => why.clone(),
        other => panic!("{name}: {other:?}"),
    };
    assert!(
        why("vx").contains("runs the vxlan backend"),
        "{}",
        why("vx")
    );
    for twin in ["twin-1", "twin-2"] {
        assert!(
            why(twin).contains("fd00:1::17 is published by several nodes"),
            "{}",
            why(twin)
        );
    }
    let nodes: Vec<String> = tunnel_peers(&state).into_iter().map(|p| p.0).collect();
    assert_eq!(nodes, ["node-b", "node-c", "node-d"]);
    // The input order does not matter.
    let mut reversed = leases.clone();
    reversed.reverse();
    assert_eq!(tunnel(UDP, false).desired(&node(), &reversed), state);

    // An underlay too small for IPv6 through the tunnel: tunnelled peers are skipped, direct
    // routes stay.
    let small = LocalNode {
        underlay_mtu: 1300,
        ..node()
    };
    let state = tunnel(UDP, true).desired(&small, &peers(BackendKind::Udp));
    assert_eq!(
        routes(&state),
        [
            "fd00:10:244:2::/64 via fd00:1::11 dev eth0",
            "fd00:10:244:3::/64 via fd00:1::12 dev eth0",
        ]
    );
    assert!(state.tunnel_peers.is_empty());
    let d = state.peers.iter().find(|p| p.node == "node-d").unwrap();
    assert!(
        matches!(&d.path, PeerPath::Skipped(why) if why.contains("below IPv6's minimum")),
        "{d:?}"
    );
}

#[test]
fn ipv6_only_udp_and_ipip_from_the_config() {
    for (kind, text) in [
        (
            BackendKind::Udp,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"udp"}}"#,
        ),
        (
            BackendKind::Ipip,
            r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","Backend":{"Type":"ipip","DirectRouting":true}}"#,
        ),
    ] {
        let config = ClusterConfig::parse(text).unwrap();
        let backend = twill_backend::for_config(&config).unwrap();
        let l = backend.local_lease(&node());
        assert_eq!((l.subnet, l.public_net, l.backend), (None, None, kind));
        assert_eq!(l.public_net6, node().public_net6);
        let state = backend.desired(&node(), &peers(kind));
        no_ipv4(&state);
        let direct = kind == BackendKind::Ipip;
        let encap = match kind {
            BackendKind::Udp => UDP,
            _ => TunnelEncap::Ipip,
        };
        assert_eq!(state, tunnel(encap, direct).desired(&node(), &peers(kind)));
    }
}
