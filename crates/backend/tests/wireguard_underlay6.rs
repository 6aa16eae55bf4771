//! WireGuard over an IPv6 underlay (issue 15): which underlay family each WireGuard peer's
//! endpoint is (the rule of udp and ipip: IPv4 when both ends have IPv4 — a dual-stack pair
//! keeps it — else IPv6 when both have IPv6), and what the engine is told. A node without an
//! IPv4 underlay is a node of an IPv6-only cluster: see wireguard_ipv6_only.rs; the engine's
//! side of it is proved in crates/tunnel/tests/wireguard_underlay6.rs.

mod common;

use std::net::Ipv4Addr;

use common::{lease6, node6};
use twill_backend::{LocalNode, for_config};
use twill_types::cluster::{BackendKind, ClusterConfig};
use twill_types::desired::DesiredState;
use twill_types::lease::Lease;
use twill_types::wg_key;

/// The device MTU over the IPv4 underlay (1500 − 60).
const MTU4: u32 = 1440;

/// node-b with both underlay families, node-c with IPv4 only; both publish a key.
fn peers(backend: BackendKind) -> Vec<Lease> {
    let keyed = |mut l: Lease, n: u8| {
        l.wireguard_public_key = Some(wg_key::encode(&[n; 32]));
        l
    };
    vec![
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
        keyed(
            lease6(
                "node-c",
                "10.244.3.0/24",
                "192.168.2.13/24",
                backend,
                "fd00:10:244:3::/64",
                None,
            ),
            3,
        ),
    ]
}

/// A dual-stack cluster in twill's form: `top` names the backend and the wireguard section.
fn config(top: &str) -> ClusterConfig {
    ClusterConfig::parse(&format!(
        "{top}\npools:\n  - {{name: p, cidr: 10.244.0.0/16, blockSize: 24}}\n  - {{name: p6, cidr: fd00:10:244::/48, blockSize: 64}}\n"
    ))
    .unwrap()
}

const WIREGUARD: &str = "backend: wireguard\nwireguard: {enabled: true}";
const ENCRYPTED_HOSTGW: &str = "backend: host-gw\nwireguard: {enabled: true}";

fn plan(top: &str, node: &LocalNode, backend: BackendKind) -> (DesiredState, u32) {
    let b = for_config(&config(top)).unwrap();
    (b.desired(node, &peers(backend)), b.pod_mtu(node))
}

fn endpoints(state: &DesiredState) -> Vec<String> {
    state
        .wireguard_peers
        .iter()
        .map(|p| format!("{} {}", p.node, p.underlay))
        .collect()
}

#[test]
fn a_dual_stack_pair_keeps_the_ipv4_underlay() {
    for (top, backend) in [
        (WIREGUARD, BackendKind::Wireguard),
        (ENCRYPTED_HOSTGW, BackendKind::HostGw),
    ] {
        let node = node6(true);
        let (state, pod_mtu) = plan(top, &node, backend);
        assert_eq!(
            endpoints(&state),
            ["node-b 192.168.1.11", "node-c 192.168.2.13"]
        );
        let dev = state.wireguard.as_ref().unwrap();
        assert_eq!(dev.local, "192.168.1.10".parse::<Ipv4Addr>().unwrap());
        assert_eq!(dev.local6, None, "no peer over IPv6: no IPv6 socket");
        assert_eq!((dev.mtu, pod_mtu), (MTU4, MTU4));
        // The IPv4 JSON of the device is unchanged (no local6 key).
        let json = serde_json::to_string(dev).unwrap();
        assert!(!json.contains("local6"), "{json}");
    }
}
