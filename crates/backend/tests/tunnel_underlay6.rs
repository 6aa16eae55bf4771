//! udp and ipip over an IPv6 underlay (issue 15): which underlay family each tunnelled peer is
//! reached over (IPv4 when both ends have IPv4 — every cluster so far, unchanged — else IPv6
//! when both have IPv6), and the peers that cannot be reached at all. A node without an IPv4
//! underlay is a node of an IPv6-only cluster, whose config refuses udp and ipip for now; the
//! engine's side of it is proved in crates/tunnel/tests/underlay6.rs.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::{lease6, net6, node6, pools6};
use twill_backend::tunnel::peer_underlay;
use twill_backend::{Backend, LocalNode, Tunnel};
use twill_types::cluster::BackendKind;
use twill_types::desired::{DesiredState, PeerPath, TunnelEncap};
use twill_types::lease::Lease;

fn udp() -> Tunnel {
    Tunnel::new(TunnelEncap::Udp { port: 8285 }, false).with_ipv6_pools(pools6())
}

fn ipip(direct_routing: bool) -> Tunnel {
    Tunnel::new(TunnelEncap::Ipip, direct_routing).with_ipv6_pools(pools6())
}

fn kind(t: &Tunnel) -> BackendKind {
    match t.encap {
        TunnelEncap::Udp { .. } => BackendKind::Udp,
        TunnelEncap::Ipip => BackendKind::Ipip,
    }
}

/// node-a without an IPv4 underlay address (IPv6 fd00:1::10/64 only).
fn node_v6_only() -> LocalNode {
    LocalNode {
        public_net: None,
        ..node6(true)
    }
}

/// node-b with both underlay families, node-c IPv4 only.
fn peers(backend: BackendKind) -> Vec<Lease> {
    vec![
        lease6(
            "node-b",
            "10.244.2.0/24",
            "192.168.1.11/24",
            backend,
            "fd00:10:244:2::/64",
            Some("fd00:1::11/64"),
        ),
        lease6(
            "node-c",
            "10.244.3.0/24",
            "192.168.2.13/24",
            backend,
            "fd00:10:244:3::/64",
            None,
        ),
    ]
}

fn tunnel_peers(state: &DesiredState) -> Vec<String> {
    state
        .tunnel_peers
        .iter()
        .map(|p| format!("{} {} {:?}", p.node, p.underlay, p.subnet6))
        .collect()
}

#[test]
fn ipv4_underlay_wins_whenever_both_ends_have_it() {
    let v4 = Some(Ipv4Addr::new(192, 0, 2, 1));
    let v6 = Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let peer4 = Ipv4Addr::new(192, 0, 2, 2);
    let peer6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    let ok = |local, peer| peer_underlay(local, peer).unwrap();
    assert_eq!(ok((v4, v6), (Some(peer4), Some(peer6))), IpAddr::V4(peer4));
    assert_eq!(ok((v4, None), (Some(peer4), None)), IpAddr::V4(peer4));
    assert_eq!(ok((v4, v6), (None, Some(peer6))), IpAddr::V6(peer6));
    assert_eq!(
        ok((None, v6), (Some(peer4), Some(peer6))),
        IpAddr::V6(peer6)
    );
    assert_eq!(ok((None, v6), (None, Some(peer6))), IpAddr::V6(peer6));
    let err = |local, peer| peer_underlay(local, peer).unwrap_err();
    assert!(err((v4, None), (None, Some(peer6))).contains("this node no IPv6"));
    assert!(err((None, v6), (Some(peer4), None)).contains("the peer no IPv6"));
    assert!(err((None, None), (Some(peer4), Some(peer6))).contains("no underlay"));
    assert!(err((v4, v6), (None, None)).contains("publishes no underlay"));
}

#[test]
fn dual_stack_nodes_keep_the_ipv4_underlay() {
    for backend in [udp(), ipip(false)] {
        let node = node6(true);
        let state = backend.desired(&node, &peers(kind(&backend)));
        let dev = state.tunnel.as_ref().unwrap();
        assert_eq!(dev.local6, None);
        assert_eq!(dev.mtu, backend.pod_mtu(&node));
        assert_eq!(dev.mtu, 1500 - backend.overhead());
        assert_eq!(
            tunnel_peers(&state),
            [
                "node-b 192.168.1.11 Some(fd00:10:244:2::/64)",
                "node-c 192.168.2.13 Some(fd00:10:244:3::/64)"
            ]
        );
    }
}

#[test]
fn two_peers_at_one_ipv6_underlay_address_are_refused() {
    let node = node_v6_only();
    let mut leases = peers(BackendKind::Udp);
    leases[1].public_net6 = Some(net6("fd00:1::11/64"));
    let state = udp().desired(&node, &leases);
    assert!(state.tunnel_peers.is_empty(), "{:?}", state.tunnel_peers);
    for p in &state.peers {
        assert!(
            matches!(&p.path, PeerPath::Skipped(r) if r.contains("published by several nodes")),
            "{:?}",
            p.path
        );
    }
}
