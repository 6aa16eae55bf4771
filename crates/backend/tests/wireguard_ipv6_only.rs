//! WireGuard on a node of an IPv6-only cluster (issue 15): the wireguard backend, and
//! `wireguard: {enabled: true}` on host-gw and vxlan, planned from configs as the agent reads
//! them. Peers are screened by their IPv6 subnet and underlay alone; each encrypted peer's
//! IPv6 subnet is its only allowed IPs and goes into `twill.wg`, its endpoint is its IPv6
//! underlay address, the device has no IPv4 underlay address and leaves room for the IPv6
//! outer header; nothing IPv4 is planned, and a peer without an IPv6 underlay, a key, a
//! unique key or room for IPv6 is skipped with the reason (blocked, never clear). Goldens pin
//! the whole desired state.

mod common;

use std::net::Ipv4Addr;

use common::{golden, net6, routes};
use proptest::prelude::*;
use twill_backend::vxlan::{IPV6_UNDERLAY_OVERHEAD, vtep_mac6};
use twill_backend::wireguard::{DEVICE, must_not_route_in_clear};
use twill_backend::{LocalNode, for_config};
use twill_types::cluster::{BackendKind, ClusterConfig};
use twill_types::desired::{DesiredState, PeerPath};
use twill_types::lease::Lease;
use twill_types::wg_key;

/// The device MTU over the IPv6 underlay: 1500 − 60 (WireGuard over IPv4) − 20.
const MTU6: u32 = 1420;

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

/// An IPv6-only peer's lease (no IPv4 part), publishing key `[key; 32]` unless 0.
fn lease(name: &str, subnet6: &str, public6: Option<&str>, key: u8, backend: BackendKind) -> Lease {
    Lease {
        node: name.into(),
        subnet: None,
        public_net: None,
        backend,
        vtep_mac: None,
        wireguard_public_key: (key != 0).then(|| wg_key::encode(&[key; 32])),
        subnet6: Some(net6(subnet6)),
        public_net6: public6.map(net6),
        vtep_mac6: (backend == BackendKind::Vxlan).then(|| vtep_mac6(name, 1)),
    }
}

/// node-b and node-c on this node's IPv6 segment, node-d behind a router, node-e without an
/// IPv6 underlay address, node-f without a key, and this node's own lease.
fn peers(backend: BackendKind) -> Vec<Lease> {
    vec![
        lease(
            "node-d",
            "fd00:10:244:4::/64",
            Some("fd00:2::13/64"),
            4,
            backend,
        ),
        lease(
            "node-b",
            "fd00:10:244:2::/64",
            Some("fd00:1::11/64"),
            2,
            backend,
        ),
        lease(
            "node-a",
            "fd00:10:244:1::/64",
            Some("fd00:1::10/64"),
            1,
            backend,
        ),
        lease(
            "node-c",
            "fd00:10:244:3::/64",
            Some("fd00:1::12/64"),
            3,
            backend,
        ),
        lease("node-e", "fd00:10:244:5::/64", None, 5, backend),
        lease(
            "node-f",
            "fd00:10:244:6::/64",
            Some("fd00:1::16/64"),
            0,
            backend,
        ),
    ]
}

/// An IPv6-only cluster in twill's form: `top` names the backend and the wireguard section.
fn config(top: &str) -> ClusterConfig {
    let c = ClusterConfig::parse(&format!(
        "{top}\npools:\n  - {{name: p6, cidr: 'fd00:10:244::/56', blockSize: 64}}\n"
    ))
    .unwrap_or_else(|e| panic!("{top}: {e}"));
    assert!(c.pools.is_empty(), "IPv6-only");
    c
}

const WIREGUARD: &str = "backend: wireguard";
const WIREGUARD_CROSS: &str = "backend: wireguard\nwireguard: {enabled: true, mode: CrossSubnet}";
const ENCRYPTED_VXLAN: &str = "backend: vxlan\nwireguard: {enabled: true}";
const ENCRYPTED_VXLAN_CROSS: &str = "backend: vxlan\nwireguard: {enabled: true, mode: CrossSubnet}";
const ENCRYPTED_HOSTGW: &str = "backend: host-gw\nwireguard: {enabled: true}";

/// The plan and pod MTU of `top` for node-a and `leases`.
fn plan_of(top: &str, leases: &[Lease]) -> (DesiredState, u32) {
    let backend = for_config(&config(top)).unwrap();
    (backend.desired(&node(), leases), backend.pod_mtu(&node()))
}

/// Each peer's (node, path), asserting it has no IPv4 part and `path6` equals `path`.
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

fn path_of<'a>(paths: &'a [(String, PeerPath)], node: &str) -> &'a PeerPath {
    &paths.iter().find(|(n, _)| n == node).unwrap().1
}

fn skipped_because(paths: &[(String, PeerPath)], node: &str, why: &str) {
    match path_of(paths, node) {
        PeerPath::Skipped(reason) => assert!(reason.contains(why), "{node}: {reason}"),
        other => panic!("{node}: {other:?}, not skipped because {why}"),
    }
}

/// Nothing IPv4 anywhere: no IPv4 route, neighbour, FDB entry, peer subnet, blocked subnet
/// or underlay; the device sends from the IPv6 underlay only.
fn no_ipv4(state: &DesiredState) {
    assert!(state.vxlan.is_none() && state.tunnel.is_none(), "{state:?}");
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
    assert!(state.wireguard_blocked.is_empty(), "{state:?}");
    for p in &state.wireguard_peers {
        assert_eq!(p.subnet, None, "{p:?}");
        assert!(p.subnet6.is_some() && p.underlay.is_ipv6(), "{p:?}");
    }
    let dev = state.wireguard.as_ref().expect("the WireGuard device");
    assert_eq!(dev.local, Ipv4Addr::UNSPECIFIED, "no IPv4 underlay");
    assert_eq!(dev.local6, Some("fd00:1::10".parse().unwrap()));
}

fn endpoints(state: &DesiredState) -> Vec<String> {
    state
        .wireguard_peers
        .iter()
        .map(|p| format!("{} {} at {}", p.node, p.subnet6.unwrap(), p.underlay))
        .collect()
}

#[test]
fn wireguard_backend_ipv6_only_golden() {
    let (state, pod_mtu) = plan_of(WIREGUARD, &peers(BackendKind::Wireguard));
    golden("wg-ipv6-only-backend.json", &state);
    no_ipv4(&state);
    let dev = state.wireguard.as_ref().unwrap();
    assert_eq!(
        (dev.name.as_str(), dev.port, dev.mtu),
        (DEVICE, 51820, MTU6)
    );
    assert_eq!(pod_mtu, MTU6);
    // Routed peers too: WireGuard needs no shared segment.
    assert_eq!(
        endpoints(&state),
        [
            "node-b fd00:10:244:2::/64 at fd00:1::11",
            "node-c fd00:10:244:3::/64 at fd00:1::12",
            "node-d fd00:10:244:4::/64 at fd00:2::13",
        ]
    );
    assert_eq!(
        routes(&state),
        [
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev twill.wg onlink",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev twill.wg onlink",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill.wg onlink",
        ]
    );
    let paths = paths(&state);
    assert_eq!(paths.len(), 5, "own lease dropped: {paths:?}");
    for n in ["node-b", "node-c", "node-d"] {
        assert_eq!(path_of(&paths, n), &PeerPath::Wireguard, "{n}");
    }
    skipped_because(&paths, "node-e", "publishes no IPv6 underlay address");
    skipped_because(&paths, "node-f", "publishes no WireGuard public key");
    // The keyless peer is blocked (no clear route may lead there); the one without an
    // underlay was refused by screening, as every backend refuses it.
    assert_eq!(state.wireguard_blocked6, [net6("fd00:10:244:6::/64")]);
    assert!(must_not_route_in_clear(
        &state,
        net6("fd00:10:244:6:1::/80").into()
    ));
    assert!(must_not_route_in_clear(
        &state,
        net6("fd00:10:244:2::/64").into()
    ));
    assert!(!must_not_route_in_clear(
        &state,
        net6("fd00:99::/64").into()
    ));
    // Status lists programmed peers' IPv6 subnets only.
    let plan = |n: &str| state.peers.iter().find(|p| p.node == n).unwrap();
    assert_eq!(plan("node-b").subnet6, Some(net6("fd00:10:244:2::/64")));
    assert_eq!(plan("node-f").subnet6, None);
    // The JSON of an IPv6-only peer has no IPv4 keys.
    let json = serde_json::to_string(&state.wireguard_peers[0]).unwrap();
    assert!(!json.contains("\"subnet\""), "{json}");
}

#[test]
fn wireguard_backend_ipv6_only_cross_subnet_routes_the_segment_in_clear() {
    let (state, _) = plan_of(WIREGUARD_CROSS, &peers(BackendKind::Wireguard));
    no_ipv4(&state);
    assert_eq!(
        routes(&state),
        [
            "fd00:10:244:2::/64 via fd00:1::11 dev eth0",
            "fd00:10:244:3::/64 via fd00:1::12 dev eth0",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill.wg onlink",
            "fd00:10:244:6::/64 via fd00:1::16 dev eth0",
        ]
    );
    let paths = paths(&state);
    assert_eq!(path_of(&paths, "node-b"), &PeerPath::Direct);
    assert_eq!(path_of(&paths, "node-d"), &PeerPath::Wireguard);
    // On the segment no key is needed: node-f is routed in clear, as CrossSubnet says.
    assert_eq!(path_of(&paths, "node-f"), &PeerPath::Direct);
    assert!(state.wireguard_blocked6.is_empty(), "{state:?}");
    assert_eq!(
        endpoints(&state),
        ["node-d fd00:10:244:4::/64 at fd00:2::13"]
    );
}

#[test]
fn encrypted_vxlan_ipv6_only_golden() {
    let (state, pod_mtu) = plan_of(ENCRYPTED_VXLAN, &peers(BackendKind::Vxlan));
    golden("wg-ipv6-only-encrypt-vxlan.json", &state);
    no_ipv4(&state);
    // The IPv6 VTEP stays (peers must reach it), but carries no encrypted peer.
    let vtep = state.vxlan6.as_ref().expect("twill6.1");
    assert_eq!(vtep.name, "twill6.1");
    assert!(
        state.neighbours.is_empty() && state.fdb.is_empty(),
        "{state:?}"
    );
    assert!(
        state.routes.iter().all(|r| r.dev == DEVICE),
        "{:?}",
        routes(&state)
    );
    assert_eq!(endpoints(&state).len(), 3);
    let paths = paths(&state);
    skipped_because(&paths, "node-f", "publishes no WireGuard public key");
    // Pods cannot know which peers are encrypted: the smaller of vxlan's and WireGuard's.
    assert_eq!(pod_mtu, MTU6.min(1500 - IPV6_UNDERLAY_OVERHEAD));
}

#[test]
fn encrypted_vxlan_ipv6_only_cross_subnet_keeps_the_segment_on_the_vtep() {
    let (state, _) = plan_of(ENCRYPTED_VXLAN_CROSS, &peers(BackendKind::Vxlan));
    no_ipv4(&state);
    assert_eq!(
        routes(&state),
        [
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev twill6.1 onlink",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev twill6.1 onlink",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill.wg onlink",
            "fd00:10:244:6::/64 via fd00:10:244:6:: dev twill6.1 onlink",
        ]
    );
    let fdb: Vec<String> = state.fdb.iter().map(|f| f.dst.to_string()).collect();
    assert_eq!(fdb, ["fd00:1::11", "fd00:1::12", "fd00:1::16"]);
    assert_eq!(
        endpoints(&state),
        ["node-d fd00:10:244:4::/64 at fd00:2::13"]
    );
}

#[test]
fn encrypted_hostgw_ipv6_only_reaches_peers_off_the_segment() {
    let (state, pod_mtu) = plan_of(ENCRYPTED_HOSTGW, &peers(BackendKind::HostGw));
    no_ipv4(&state);
    let paths = paths(&state);
    // host-gw alone skips node-d (not on the segment); WireGuard does not need one.
    assert_eq!(path_of(&paths, "node-d"), &PeerPath::Wireguard);
    assert!(
        state.routes.iter().all(|r| r.dev == DEVICE),
        "{:?}",
        routes(&state)
    );
    assert_eq!(pod_mtu, MTU6);
}

#[test]
fn ipv6_only_peers_sharing_a_key_or_with_a_bad_one_are_skipped() {
    let mut leases = peers(BackendKind::Wireguard);
    // node-g claims node-b's key; node-h's key is not base64 of 32 bytes.
    leases.push(lease(
        "node-g",
        "fd00:10:244:7::/64",
        Some("fd00:1::17/64"),
        2,
        BackendKind::Wireguard,
    ));
    let mut bad = lease(
        "node-h",
        "fd00:10:244:8::/64",
        Some("fd00:1::18/64"),
        0,
        BackendKind::Wireguard,
    );
    bad.wireguard_public_key = Some("not a key".into());
    leases.push(bad);
    let (state, _) = plan_of(WIREGUARD, &leases);
    no_ipv4(&state);
    let paths = paths(&state);
    skipped_because(
        &paths,
        "node-b",
        "published by several nodes (node-b, node-g)",
    );
    skipped_because(&paths, "node-g", "published by several nodes");
    skipped_because(&paths, "node-h", "not 32 bytes of standard base64");
    assert_eq!(
        endpoints(&state),
        [
            "node-c fd00:10:244:3::/64 at fd00:1::12",
            "node-d fd00:10:244:4::/64 at fd00:2::13",
        ]
    );
    for blocked in ["2", "6", "7", "8"] {
        let subnet6 = net6(&format!("fd00:10:244:{blocked}::/64"));
        assert!(state.wireguard_blocked6.contains(&subnet6), "{subnet6}");
        assert!(
            !state.routes.iter().any(|r| r.dst == subnet6.into()),
            "{:?}",
            routes(&state)
        );
    }
}

#[test]
fn ipv6_only_device_below_ipv6_minimum_mtu_blocks_every_peer() {
    // A small underlay: 1350 − 80 = 1270 < 1280, where Linux turns IPv6 off on the device.
    let n = LocalNode {
        underlay_mtu: 1350,
        ..node()
    };
    let backend = for_config(&config(WIREGUARD)).unwrap();
    let state = backend.desired(&n, &peers(BackendKind::Wireguard));
    assert_eq!(state.wireguard.as_ref().unwrap().mtu, 1270);
    assert!(state.wireguard_peers.is_empty(), "{state:?}");
    assert!(state.routes.is_empty(), "{:?}", routes(&state));
    let paths = paths(&state);
    skipped_because(&paths, "node-b", "below IPv6's minimum of 1280");
    assert_eq!(state.wireguard_blocked6.len(), 4, "{state:?}");
}

#[test]
fn ipv6_only_wireguard_leases_publish_no_ipv4_part() {
    for top in [WIREGUARD, ENCRYPTED_VXLAN, ENCRYPTED_HOSTGW] {
        let l = for_config(&config(top)).unwrap().local_lease(&node());
        assert_eq!(
            (l.subnet, l.public_net, l.vtep_mac),
            (None, None, None),
            "{top}"
        );
        assert_eq!(l.subnet6, node().subnet6, "{top}");
        assert_eq!(l.public_net6, node().public_net6, "{top}");
    }
}

proptest! {
    /// Whatever subset of the peers in whatever order, on every backend: the plan does not
    /// depend on the order, nothing IPv4 appears, and no subnet of a peer to encrypt
    /// (encrypted or blocked) has a route anywhere but into `twill.wg`.
    #[test]
    fn ipv6_only_encryption_never_routes_in_clear(
        keep in proptest::collection::vec(any::<bool>(), 6),
        shuffle in any::<u64>(),
        top in prop::sample::select(vec![WIREGUARD, ENCRYPTED_VXLAN, ENCRYPTED_HOSTGW]),
    ) {
        let kind = config(top).backend.kind;
        let mut leases: Vec<Lease> = peers(kind)
            .into_iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(l, _)| l)
            .collect();
        let (state, _) = plan_of(top, &leases);
        let n = leases.len();
        if n > 1 {
            leases.rotate_left((shuffle % n as u64) as usize);
        }
        prop_assert_eq!(&plan_of(top, &leases).0, &state);
        no_ipv4(&state);
        let encrypted: Vec<_> = state
            .wireguard_peers
            .iter()
            .filter_map(|p| p.subnet6)
            .chain(state.wireguard_blocked6.iter().copied())
            .collect();
        for r in &state.routes {
            if encrypted.iter().any(|s| ipnet::IpNet::V6(*s).contains(&r.dst.addr())) {
                prop_assert_eq!(r.dev.as_str(), DEVICE, "{:?}", r);
            }
        }
        for p in &state.peers {
            let wanted = p.path == PeerPath::Wireguard;
            let listed = state.wireguard_peers.iter().any(|w| w.node == p.node);
            prop_assert_eq!(wanted, listed, "{:?}", p);
        }
    }
}
