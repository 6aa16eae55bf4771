//! udp and ipip in a dual-stack cluster (issue 15): golden desired states for the IPv6 paths
//! through the userspace tunnel (over the IPv4 underlay), with DirectRouting (a plain IPv6
//! route to peers on this node's IPv6 segment), the IPv6 minimum MTU, `for_config` passing the
//! IPv6 pools, and the properties (order does not matter, IPv6 routes and tunnel peers' IPv6
//! subnets only for programmed IPv6 parts).
//!
//! Golden files live in `tests/golden/` (`TWILL_BLESS=1` rewrites them).

mod common;

use common::{golden, lease, lease6, net6, node, node6, pools6, routes};

use ipnet::IpNet;
use twill_backend::{Backend, Tunnel, for_config};
use twill_types::cluster::{BackendKind, ClusterConfig, Pool6};
use twill_types::desired::{DesiredState, PeerPath, TunnelEncap};
use twill_types::lease::Lease;

use BackendKind::{HostGw as H, Ipip as I, Udp as U};

fn udp() -> Tunnel {
    Tunnel::new(TunnelEncap::Udp { port: 8285 }, false).with_ipv6_pools(pools6())
}

fn ipip(direct_routing: bool) -> Tunnel {
    Tunnel::new(TunnelEncap::Ipip, direct_routing).with_ipv6_pools(pools6())
}

/// Each peer as "node path path6 subnet6".
fn paths(state: &DesiredState) -> Vec<String> {
    state
        .peers
        .iter()
        .map(|p| format!("{} {:?} {:?} {:?}", p.node, p.path, p.path6, p.subnet6))
        .collect()
}

/// Tunnel peers as "node subnet underlay subnet6".
fn tunnel_peers(state: &DesiredState) -> Vec<String> {
    state
        .tunnel_peers
        .iter()
        .map(|p| {
            format!(
                "{} {} {} {:?}",
                p.node,
                p.subnet.expect("an IPv4 subnet"),
                p.underlay,
                p.subnet6
            )
        })
        .collect()
}

/// Peers of `backend`: node-b on both our segments, node-c on neither, node-d without an IPv6
/// underlay address (on our IPv4 segment), node-e on our IPv6 segment only, node-f IPv4 only,
/// node-g of another backend.
fn peers(backend: BackendKind) -> Vec<Lease> {
    vec![
        lease6(
            "node-e",
            "10.244.5.0/24",
            "192.168.2.15/24",
            backend,
            "fd00:10:244:5::/64",
            Some("fd00:1::15/64"),
        ),
        lease6(
            "node-b",
            "10.244.2.0/24",
            "192.168.1.11/24",
            backend,
            "fd00:10:244:2::/64",
            Some("fd00:1::11/64"),
        ),
        lease6(
            "node-d",
            "10.244.4.0/24",
            "192.168.1.14/24",
            backend,
            "fd00:10:244:4::/64",
            None,
        ),
        lease6(
            "node-c",
            "10.244.3.0/24",
            "192.168.2.13/24",
            backend,
            "fd00:10:244:3::/64",
            Some("fd00:2::13/64"),
        ),
        lease("node-f", "10.244.6.0/24", "192.168.2.16/24", backend, None),
        lease6(
            "node-g",
            "10.244.7.0/24",
            "192.168.2.17/24",
            H,
            "fd00:10:244:7::/64",
            Some("fd00:2::17/64"),
        ),
    ]
}

#[test]
fn udp_dual_stack_golden() {
    let state = udp().desired(&node6(true), &peers(U));
    golden("udp-dual.json", &state);
    assert_eq!(
        routes(&state),
        [
            "10.244.2.0/24 via 10.244.2.0 dev twill.tun onlink",
            "fd00:10:244:2::/64 via fd00:10:244:2:: dev twill.tun onlink",
            "10.244.3.0/24 via 10.244.3.0 dev twill.tun onlink",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev twill.tun onlink",
            "10.244.4.0/24 via 10.244.4.0 dev twill.tun onlink",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill.tun onlink",
            "10.244.5.0/24 via 10.244.5.0 dev twill.tun onlink",
            "fd00:10:244:5::/64 via fd00:10:244:5:: dev twill.tun onlink",
            "10.244.6.0/24 via 10.244.6.0 dev twill.tun onlink",
        ]
    );
    assert_eq!(
        tunnel_peers(&state),
        [
            "node-b 10.244.2.0/24 192.168.1.11 Some(fd00:10:244:2::/64)",
            "node-c 10.244.3.0/24 192.168.2.13 Some(fd00:10:244:3::/64)",
            "node-d 10.244.4.0/24 192.168.1.14 Some(fd00:10:244:4::/64)",
            "node-e 10.244.5.0/24 192.168.2.15 Some(fd00:10:244:5::/64)",
            "node-f 10.244.6.0/24 192.168.2.16 None",
        ]
    );
    let g = state.peers.iter().find(|p| p.node == "node-g").unwrap();
    let reason = "udp: the peer runs the host-gw backend and cannot decapsulate udp";
    assert_eq!(g.path, PeerPath::Skipped(reason.into()));
    assert_eq!(g.path6, Some(PeerPath::Skipped(reason.into())));
    assert_eq!(g.subnet6, None);
    // The same without an IPv6 underlay on this node: the tunnel runs over IPv4 anyway.
    assert_eq!(udp().desired(&node6(false), &peers(U)).routes, state.routes);
}

#[test]
fn ipip_dual_stack_golden() {
    let state = ipip(false).desired(&node6(true), &peers(I));
    golden("ipip-dual.json", &state);
    assert!(
        state
            .peers
            .iter()
            .filter(|p| p.node != "node-g" && p.node != "node-f")
            .all(|p| p.path == PeerPath::Ipip && p.path6 == Some(PeerPath::Ipip))
    );
    assert_eq!(
        state
            .tunnel_peers
            .iter()
            .filter(|p| p.subnet6.is_some())
            .count(),
        4
    );
}

#[test]
fn ipip_dual_stack_direct_routing_golden() {
    let state = ipip(true).desired(&node6(true), &peers(I));
    golden("ipip-dual-direct.json", &state);
    assert_eq!(
        routes(&state),
        [
            "10.244.2.0/24 via 192.168.1.11 dev eth0",
            "fd00:10:244:2::/64 via fd00:1::11 dev eth0",
            "10.244.3.0/24 via 10.244.3.0 dev twill.tun onlink",
            "fd00:10:244:3::/64 via fd00:10:244:3:: dev twill.tun onlink",
            "10.244.4.0/24 via 192.168.1.14 dev eth0",
            "fd00:10:244:4::/64 via fd00:10:244:4:: dev twill.tun onlink",
            "10.244.5.0/24 via 10.244.5.0 dev twill.tun onlink",
            "fd00:10:244:5::/64 via fd00:1::15 dev eth0",
            "10.244.6.0/24 via 10.244.6.0 dev twill.tun onlink",
        ]
    );
    // node-d is routed directly over IPv4, yet its IPv6 traffic needs the tunnel: the engine
    // knows it (with its IPv4 subnet, which no route sends into the tunnel). node-b is all
    // direct, so the engine does not know it; node-e's IPv6 part is direct.
    assert_eq!(
        tunnel_peers(&state),
        [
            "node-c 10.244.3.0/24 192.168.2.13 Some(fd00:10:244:3::/64)",
            "node-d 10.244.4.0/24 192.168.1.14 Some(fd00:10:244:4::/64)",
            "node-e 10.244.5.0/24 192.168.2.15 None",
            "node-f 10.244.6.0/24 192.168.2.16 None",
        ]
    );
    assert_eq!(
        paths(&state)[..4],
        [
            "node-b Direct Some(Direct) Some(fd00:10:244:2::/64)",
            "node-c Ipip Some(Ipip) Some(fd00:10:244:3::/64)",
            "node-d Direct Some(Ipip) Some(fd00:10:244:4::/64)",
            "node-e Ipip Some(Direct) Some(fd00:10:244:5::/64)",
        ]
    );
}

#[test]
fn ipv6_is_skipped_when_the_tunnel_mtu_is_below_the_ipv6_minimum() {
    let mut n = node6(true);
    // 1299 - 20 = 1279 for ipip; 1300 - 20 = 1280 is enough.
    n.underlay_mtu = 1299;
    let state = ipip(false).desired(&n, &peers(I));
    let b = state.peers.iter().find(|p| p.node == "node-b").unwrap();
    assert_eq!(b.path, PeerPath::Ipip);
    assert_eq!(
        b.path6,
        Some(PeerPath::Skipped(
            "ipip: the tunnel MTU 1279 is below IPv6's minimum of 1280; raise the underlay MTU"
                .into()
        ))
    );
    assert!(state.routes.iter().all(|r| matches!(r.dst, IpNet::V4(_))));
    assert!(state.tunnel_peers.iter().all(|p| p.subnet6.is_none()));
    n.underlay_mtu = 1300;
    let state = ipip(false).desired(&n, &peers(I));
    assert_eq!(state.tunnel.as_ref().unwrap().mtu, 1280);
    assert_eq!(
        state
            .tunnel_peers
            .iter()
            .filter(|p| p.subnet6.is_some())
            .count(),
        4
    );
    // udp adds 28 bytes.
    n.underlay_mtu = 1307;
    let state = udp().desired(&n, &peers(U));
    assert!(state.tunnel_peers.iter().all(|p| p.subnet6.is_none()));
}

#[test]
fn ipv4_only_clusters_and_nodes_carry_no_ipv6() {
    // No IPv6 pools: peers' IPv6 subnets are not in them.
    let state = Tunnel::new(TunnelEncap::Ipip, false).desired(&node6(true), &peers(I));
    assert!(state.routes.iter().all(|r| matches!(r.dst, IpNet::V4(_))));
    assert!(state.tunnel_peers.iter().all(|p| p.subnet6.is_none()));
    // An IPv4-only node ignores its peers' IPv6 parts.
    let state = ipip(false).desired(&node(), &peers(I));
    assert!(state.routes.iter().all(|r| matches!(r.dst, IpNet::V4(_))));
    assert!(state.tunnel_peers.iter().all(|p| p.subnet6.is_none()));
}

#[test]
fn dual_stack_tunnel_state_does_not_depend_on_lease_order() {
    for (backend, kind) in [(udp(), U), (ipip(false), I), (ipip(true), I)] {
        let peers = peers(kind);
        let state = backend.desired(&node6(true), &peers);
        for k in 0..peers.len() {
            let mut shuffled = peers.clone();
            shuffled.rotate_left(k);
            shuffled.reverse();
            assert_eq!(backend.desired(&node6(true), &shuffled), state);
        }
        // IPv6 routes exactly for the programmed IPv6 parts.
        let programmed6 = state.peers.iter().filter(|p| p.subnet6.is_some()).count();
        let routes6 = state
            .routes
            .iter()
            .filter(|r| matches!(r.dst, IpNet::V6(_)))
            .count();
        assert_eq!(routes6, programmed6);
    }
}

#[test]
fn for_config_passes_the_ipv6_pools_to_udp_and_ipip() {
    let mut config =
        ClusterConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":8285}}"#)
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
        backend.desired(&node6(true), &peers(U)),
        udp().desired(&node6(true), &peers(U))
    );
    config.backend.kind = BackendKind::Ipip;
    config.backend.direct_routing = true;
    let backend = for_config(&config).unwrap();
    assert_eq!(
        backend.desired(&node6(true), &peers(I)),
        ipip(true).desired(&node6(true), &peers(I))
    );
}
