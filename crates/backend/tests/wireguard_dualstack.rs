//! WireGuard in a dual-stack cluster (issue 15): both families of an encrypted peer go
//! through `twill.wg` (its IPv6 subnet is one of its allowed IPs), on the wireguard backend
//! and with encryption on host-gw, vxlan, udp and ipip; no clear IPv6 object of an encrypted
//! peer survives; CrossSubnet decides per peer for both families; peers WireGuard cannot carry
//! (no key, a device MTU below IPv6's minimum) are blocked in both families; beside BGP, the
//! encrypted IPv6 subnet a learned prefix lies in; and the property that, whatever the leases,
//! no encrypted or blocked IPv6 subnet keeps a clear route. Golden desired states in
//! `tests/golden/wg-dual-*.json` (`TWILL_BLESS=1` rewrites them).

mod common;

use common::{golden, lease, lease6, net, net6, node6, routes};
use ipnet::IpNet;
use proptest::prelude::*;
use twill_backend::for_config;
use twill_backend::wireguard::{DEVICE, encrypted_subnet6_of, must_not_route_in_clear};
use twill_types::cluster::{BackendKind, ClusterConfig};
use twill_types::desired::{DesiredState, PeerPath};
use twill_types::lease::Lease;
use twill_types::wg_key;

fn key(n: u8) -> String {
    wg_key::encode(&[n; 32])
}

/// A dual-stack peer publishing key `n`.
fn keyed(mut lease: Lease, n: u8) -> Lease {
    lease.wireguard_public_key = Some(key(n));
    lease
}

/// Peers of `backend`, out of order: node-b on both our segments, node-c on neither, node-d
/// without a key, node-f IPv4 only, node-h with an IPv6 subnet outside the cluster's pools.
fn peers(backend: BackendKind) -> Vec<Lease> {
    vec![
        keyed(
            lease6(
                "node-c",
                "10.244.3.0/24",
                "192.168.2.13/24",
                backend,
                "fd00:10:244:3::/64",
                Some("fd00:2::13/64"),
            ),
            3,
        ),
        keyed(
            lease6(
                "node-b",
                "10.244.2.0/24",
                "192.168.1.11/24",
                backend,
                "fd00:10:244:2::/64",
                Some("fd00:1::11/64"),
            ),
            2,
        ),
        lease6(
            "node-d",
            "10.244.4.0/24",
            "192.168.2.14/24",
            backend,
            "fd00:10:244:4::/64",
            Some("fd00:2::14/64"),
        ),
        lease(
            "node-f",
            "10.244.6.0/24",
            "192.168.2.16/24",
            backend,
            Some(key(6)),
        ),
        keyed(
            lease6(
                "node-h",
                "10.244.8.0/24",
                "192.168.2.18/24",
                backend,
                "fd00:99::/64",
                None,
            ),
            8,
        ),
    ]
}

/// A dual-stack config in twill's form: `top` names the backend and the wireguard section.
fn config(top: &str) -> ClusterConfig {
    ClusterConfig::parse(&format!(
        "{top}\npools:\n  - {{name: p, cidr: 10.244.0.0/16, blockSize: 24}}\n  - {{name: p6, cidr: fd00:10:244::/48, blockSize: 64}}\n"
    ))
    .unwrap()
}

fn desired(top: &str, backend: BackendKind) -> DesiredState {
    for_config(&config(top))
        .unwrap()
        .desired(&node6(true), &peers(backend))
}

/// Each peer as "node path path6 subnet6".
fn paths(state: &DesiredState) -> Vec<String> {
    state
        .peers
        .iter()
        .map(|p| format!("{} {:?} {:?} {:?}", p.node, p.path, p.path6, p.subnet6))
        .collect()
}

/// WireGuard peers as "node subnet subnet6".
fn wg_peers(state: &DesiredState) -> Vec<String> {
    state
        .wireguard_peers
        .iter()
        .map(|p| format!("{} {} {:?}", p.node, p.subnet.unwrap(), p.subnet6))
        .collect()
}

const NO_KEY: &str = "wireguard: the peer publishes no WireGuard public key (not running \
                      WireGuard yet?); its traffic is never sent in clear instead";
const NOT_IN_POOLS: &str = "IPv6 subnet fd00:99::/64 is not in the cluster's IPv6 pools";

/// Nothing of an encrypted peer is left on a clear path in either family: one route per
/// subnet, into twill.wg, and no neighbour, FDB entry or tunnel peer of it.
fn assert_no_clear_path(state: &DesiredState) {
    for peer in &state.wireguard_peers {
        let subnets: Vec<IpNet> = peer
            .subnet
            .map(IpNet::V4)
            .into_iter()
            .chain(peer.subnet6.map(IpNet::V6))
            .collect();
        for subnet in subnets {
            let via: Vec<_> = state.routes.iter().filter(|r| r.dst == subnet).collect();
            assert_eq!(via.len(), 1, "{}: {via:?}", peer.node);
            assert_eq!(via[0].dev, DEVICE, "{}", peer.node);
            assert!(
                state.neighbours.iter().all(|n| n.ip != subnet.network()),
                "{}: a neighbour for {subnet}",
                peer.node
            );
        }
        assert!(state.tunnel_peers.iter().all(|t| t.node != peer.node));
    }
    // Blocked subnets have no route at all.
    for blocked in &state.wireguard_blocked6 {
        assert!(
            state.routes.iter().all(|r| r.dst != IpNet::V6(*blocked)),
            "{blocked} is blocked but routed"
        );
    }
    let macs: Vec<_> = state.neighbours.iter().map(|n| n.mac).collect();
    assert!(state.fdb.iter().all(|f| macs.contains(&f.mac)));
}

#[test]
fn wireguard_backend_carries_both_families() {
    let state = for_config(
        &ClusterConfig::parse(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/48","IPv6SubnetLen":64,"Backend":{"Type":"wireguard","Mode":"auto"}}"#,
        )
        .unwrap(),
    )
    .unwrap()
    .desired(&node6(true), &peers(BackendKind::Wireguard));
    golden("wg-dual-backend.json", &state);
    assert_no_clear_path(&state);
    assert_eq!(
        routes(&state),
        [
            "10.244.2.0/24 via 10.244.2.0 dev twill.wg onlink",
            "10.244.3.0/24 via 10.244.3.0 dev twill.wg onlink",
            "10.244.6.0/24 via 10.244.6.0 dev twill.wg onlink",
            "10.244.8.0/24 via 10.244.8.0 dev twill.wg onlink",
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev twill.wg onlink",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev twill.wg onlink",
        ]
    );
    assert_eq!(
        wg_peers(&state),
        [
            "node-b 10.244.2.0/24 Some(fd00:10:244:2::/64)",
            "node-c 10.244.3.0/24 Some(fd00:10:244:3::/64)",
            "node-f 10.244.6.0/24 None",
            "node-h 10.244.8.0/24 None",
        ]
    );
    assert_eq!(
        paths(&state),
        [
            "node-b Wireguard Some(Wireguard) Some(fd00:10:244:2::/64)".to_string(),
            "node-c Wireguard Some(Wireguard) Some(fd00:10:244:3::/64)".to_string(),
            format!("node-d Skipped({NO_KEY:?}) Some(Skipped({NO_KEY:?})) None"),
            "node-f Wireguard None None".to_string(),
            format!("node-h Wireguard Some(Skipped({NOT_IN_POOLS:?})) None"),
        ]
    );
    // Neither family of the peer without a key may be routed in clear by anyone.
    assert_eq!(state.wireguard_blocked, [net("10.244.4.0/24")]);
    assert_eq!(state.wireguard_blocked6, [net6("fd00:10:244:4::/64")]);
    assert_eq!(state.wireguard.unwrap().mtu, 1440);
}

#[test]
fn encryption_moves_both_families_off_every_clear_path() {
    use BackendKind::{HostGw, Ipip, Udp, Vxlan};
    for (kind, name) in [
        (HostGw, "host-gw"),
        (Vxlan, "vxlan"),
        (Udp, "udp"),
        (Ipip, "ipip"),
    ] {
        let state = desired(
            &format!("backend: {name}\nwireguard: {{enabled: true}}"),
            kind,
        );
        assert_no_clear_path(&state);
        assert_eq!(
            wg_peers(&state),
            [
                "node-b 10.244.2.0/24 Some(fd00:10:244:2::/64)",
                "node-c 10.244.3.0/24 Some(fd00:10:244:3::/64)",
                "node-f 10.244.6.0/24 None",
                "node-h 10.244.8.0/24 None",
            ],
            "{name}"
        );
        // The IPv6 subnet of the peer without a key is neither encrypted nor clear.
        assert!(
            routes(&state)
                .iter()
                .all(|r| !r.starts_with("fd00:10:244:4::")),
            "{name}: {:?}",
            routes(&state)
        );
        assert_eq!(state.wireguard_blocked6, [net6("fd00:10:244:4::/64")]);
        if kind == Vxlan {
            golden("wg-dual-encrypt-vxlan.json", &state);
            // The IPv6 VTEP stays (peers reach it before this node knows them), empty.
            assert!(state.vxlan6.is_some());
            assert!(
                state.neighbours.is_empty() && state.fdb.is_empty(),
                "{state:?}"
            );
        }
    }
}

#[test]
fn cross_subnet_decides_once_per_peer_for_both_families() {
    let state = desired(
        "backend: vxlan\ndirectRouting: true\nwireguard: {enabled: true, mode: CrossSubnet}",
        BackendKind::Vxlan,
    );
    golden("wg-dual-encrypt-vxlan-cross-subnet.json", &state);
    assert_no_clear_path(&state);
    // node-b shares our segments: both families keep vxlan's direct routes, in clear.
    let routes = routes(&state);
    assert!(
        routes.contains(&"10.244.2.0/24 via 192.168.1.11 dev eth0".to_string()),
        "{routes:?}"
    );
    assert!(
        routes.contains(&"fd00:10:244:2::/64 via fd00:1::11 dev eth0".to_string()),
        "{routes:?}"
    );
    // node-c is beyond them: both families through WireGuard.
    assert_eq!(
        wg_peers(&state),
        [
            "node-c 10.244.3.0/24 Some(fd00:10:244:3::/64)",
            "node-f 10.244.6.0/24 None",
            "node-h 10.244.8.0/24 None",
        ]
    );
    let b = state.peers.iter().find(|p| p.node == "node-b").unwrap();
    assert_eq!(
        (&b.path, &b.path6),
        (&PeerPath::Direct, &Some(PeerPath::Direct))
    );
}

#[test]
fn a_device_mtu_below_ipv6_minimum_blocks_ipv6_with_the_reason() {
    let state = desired(
        "backend: vxlan\nwireguard: {enabled: true, mtu: 1200}",
        BackendKind::Vxlan,
    );
    assert_no_clear_path(&state);
    let b = state.peers.iter().find(|p| p.node == "node-b").unwrap();
    assert_eq!(b.path, PeerPath::Wireguard);
    let Some(PeerPath::Skipped(reason)) = &b.path6 else {
        panic!("node-b's IPv6 part: {:?}", b.path6);
    };
    assert!(
        reason.contains("device MTU 1200 is below IPv6's minimum of 1280"),
        "{reason}"
    );
    assert_eq!(b.subnet6, None);
    assert!(state.wireguard_peers.iter().all(|p| p.subnet6.is_none()));
    assert!(routes(&state).iter().all(|r| !r.starts_with("fd00:")));
    assert_eq!(
        state.wireguard_blocked6,
        [
            net6("fd00:10:244:2::/64"),
            net6("fd00:10:244:3::/64"),
            net6("fd00:10:244:4::/64"),
        ]
    );
}

#[test]
fn no_route_learned_elsewhere_may_reach_an_encrypted_or_blocked_ipv6_subnet_in_clear() {
    let state = desired(
        "backend: host-gw\nwireguard: {enabled: true}",
        BackendKind::HostGw,
    );
    let v6 = |s: &str| IpNet::V6(net6(s));
    for inside in [
        "fd00:10:244:2::/64",
        "fd00:10:244:2:1::/80",
        "fd00:10:244:3::5/128",
        "fd00:10:244:4::/64",
    ] {
        assert!(must_not_route_in_clear(&state, v6(inside)), "{inside}");
    }
    for outside in ["fd00:10:244:9::/64", "2001:db8::/32", "fd00:10:244::/48"] {
        assert!(!must_not_route_in_clear(&state, v6(outside)), "{outside}");
    }
    // IPv4 as before.
    assert!(must_not_route_in_clear(
        &state,
        IpNet::V4(net("10.244.4.0/24"))
    ));
}

#[test]
fn encryption_on_bgp_takes_both_families_and_finds_the_subnet_of_a_learned_prefix() {
    for top in [
        "backend: bgp\nbgp: {}\nwireguard: {enabled: true}",
        "backend: vxlan\nbgp: {asNumber: 64512}\nwireguard: {enabled: true}",
    ] {
        let kind = config(top).backend.kind;
        let state = desired(top, kind);
        assert_no_clear_path(&state);
        assert_eq!(
            wg_peers(&state),
            [
                "node-b 10.244.2.0/24 Some(fd00:10:244:2::/64)",
                "node-c 10.244.3.0/24 Some(fd00:10:244:3::/64)",
                "node-f 10.244.6.0/24 None",
                "node-h 10.244.8.0/24 None",
            ],
            "{top}"
        );
        assert_eq!(state.wireguard_blocked6, [net6("fd00:10:244:4::/64")]);
        // Where the agent sends a route BGP learned: into the subnet that holds it.
        assert_eq!(
            encrypted_subnet6_of(&state, net6("fd00:10:244:3:8000::/65")),
            Some(net6("fd00:10:244:3::/64")),
            "{top}"
        );
        for not_encrypted in [
            "fd00:10:244:4::/64",
            "fd00:10:244:4:1::/80",
            "fd00:10:244::/48",
            "2001:db8::/64",
        ] {
            assert_eq!(
                encrypted_subnet6_of(&state, net6(not_encrypted)),
                None,
                "{top}: {not_encrypted}"
            );
        }
    }
}

#[test]
fn an_ipv4_only_node_programs_no_ipv6_for_dual_stack_peers() {
    // Peers that publish IPv6 subnets, seen by a node of a cluster without IPv6 pools.
    let state = for_config(
        &ClusterConfig::parse(
            "backend: vxlan\nwireguard: {enabled: true}\npools:\n  - {name: p, cidr: 10.244.0.0/16}\n",
        )
        .unwrap(),
    )
    .unwrap()
    .desired(&common::node(), &peers(BackendKind::Vxlan));
    assert!(state.wireguard_peers.iter().all(|p| p.subnet6.is_none()));
    assert!(state.wireguard_blocked6.is_empty());
    assert!(routes(&state).iter().all(|r| !r.starts_with("fd00:")));
    assert!(state.peers.iter().all(|p| p.subnet6.is_none()));
    let json = serde_json::to_string(&state.wireguard_peers).unwrap();
    assert!(!json.contains("subnet6"), "{json}");
}

/// A dual-stack (or, sometimes, IPv4-only) lease with random segments of both families, key
/// and backend; subnets may collide (the screening refuses those).
fn arb_lease() -> impl Strategy<Value = Lease> {
    (
        2u8..12,
        prop_oneof![Just(1u8), Just(2u8)],
        prop::option::of(prop_oneof![Just(1u8), Just(2u8)]),
        1u8..6,
        prop::option::of(0u8..4),
        prop_oneof![
            Just(BackendKind::Vxlan),
            Just(BackendKind::HostGw),
            Just(BackendKind::Udp)
        ],
        any::<bool>(),
    )
        .prop_map(|(third, segment, segment6, host, key_n, backend, dual)| {
            let name = format!("n{third}-{host}");
            let subnet = format!("10.244.{third}.0/24");
            let public = format!("192.168.{segment}.{}/24", 10 + host);
            let mut l = if dual {
                let public6 = segment6.map(|s| format!("fd00:{s}::{}/64", 10 + host));
                lease6(
                    &name,
                    &subnet,
                    &public,
                    backend,
                    &format!("fd00:10:244:{third}::/64"),
                    public6.as_deref(),
                )
            } else {
                lease(&name, &subnet, &public, backend, None)
            };
            l.wireguard_public_key = key_n.map(key);
            l
        })
}

proptest! {
    #[test]
    fn encrypted_ipv6_subnets_never_keep_a_clear_path(
        leases in proptest::collection::vec(arb_lease(), 0..10),
        top in prop_oneof![
            Just("backend: wireguard\nwireguard: {enabled: true}"),
            Just("backend: wireguard\nwireguard: {enabled: true, mode: CrossSubnet}"),
            Just("backend: vxlan\nwireguard: {enabled: true}"),
            Just("backend: vxlan\ndirectRouting: true\nwireguard: {enabled: true, mode: CrossSubnet}"),
            Just("backend: host-gw\nwireguard: {enabled: true}"),
            Just("backend: udp\nwireguard: {enabled: true, mtu: 1200}"),
        ],
        underlay6 in any::<bool>(),
    ) {
        let cfg = config(top);
        let state = for_config(&cfg).unwrap().desired(&node6(underlay6), &leases);
        assert_no_clear_path(&state);
        // A peer's IPv6 subnet goes into twill.wg exactly when its plan says WireGuard, and
        // then it is listed as the peer's allowed IPv6 subnet.
        for plan in &state.peers {
            let wg = state.wireguard_peers.iter().find(|p| p.node == plan.node && p.subnet == plan.subnet);
            let carried = plan.path6 == Some(PeerPath::Wireguard);
            prop_assert_eq!(wg.and_then(|p| p.subnet6), plan.subnet6.filter(|_| carried));
            if carried {
                prop_assert_eq!(&plan.path, &PeerPath::Wireguard);
            }
        }
        // Blocked IPv6 subnets are those of encrypted-or-blocked peers that WireGuard does
        // not carry, and none is also carried.
        for blocked in &state.wireguard_blocked6 {
            prop_assert!(state.wireguard_peers.iter().all(|p| p.subnet6 != Some(*blocked)));
            prop_assert!(must_not_route_in_clear(&state, IpNet::V6(*blocked)));
        }
        // With Always, no IPv6 route reaches a peer but through WireGuard.
        if cfg.wireguard().unwrap().mode == twill_types::cluster::EncapMode::Always {
            prop_assert!(
                state.routes.iter().filter(|r| matches!(r.dst, IpNet::V6(_))).all(|r| r.dev == DEVICE),
                "{:?}", routes(&state)
            );
        }
    }
}
