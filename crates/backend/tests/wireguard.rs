//! The wireguard backend and WireGuard encryption on the other backends, against golden
//! desired states (`tests/golden/wg-*.json`; `TWILL_BLESS=1` rewrites them), plus the rules
//! around them: which peers are encrypted (Always, CrossSubnet), what an encrypted peer loses
//! of its clear path, which peers are refused (no key, a malformed key, a shared key), the MTU,
//! and the property that no encrypted subnet ever keeps a clear route.

mod common;

use common::{golden, lease, net, node};
use proptest::prelude::*;
use twill_backend::for_config;
use twill_backend::wireguard::{DEVICE, Settings, encrypted_subnet_of};
use twill_types::cluster::{BackendKind, ClusterConfig};
use twill_types::desired::{DesiredState, PeerPath};
use twill_types::lease::Lease;
use twill_types::wg_key;

/// A well-formed public key, one per `n`.
fn key(n: u8) -> String {
    wg_key::encode(&[n; 32])
}

/// The golden peers, all running `backend`, deliberately out of order.
fn peers(backend: BackendKind) -> Vec<Lease> {
    vec![
        // Another segment.
        lease(
            "node-e",
            "10.244.5.0/24",
            "192.168.2.11/24",
            backend,
            Some(key(5)),
        ),
        // Same segment.
        lease(
            "node-b",
            "10.244.2.0/24",
            "192.168.1.11/24",
            backend,
            Some(key(2)),
        ),
        // Our own lease: ignored.
        lease(
            "node-a",
            "10.244.1.0/24",
            "192.168.1.10/24",
            backend,
            Some(key(1)),
        ),
        // Same segment, no key published (yet).
        lease("node-d", "10.244.4.0/24", "192.168.1.12/24", backend, None),
        // Another segment.
        lease(
            "node-c",
            "10.244.3.0/24",
            "192.168.2.10/24",
            backend,
            Some(key(3)),
        ),
        // Another segment, a key that is not one.
        lease(
            "node-g",
            "10.244.7.0/24",
            "192.168.2.12/24",
            backend,
            Some("bm90IGEga2V5".into()),
        ),
    ]
}

fn config(text: &str) -> ClusterConfig {
    ClusterConfig::parse(text).unwrap()
}

fn desired(config_text: &str, backend: BackendKind) -> (DesiredState, u32) {
    let backend_impl = for_config(&config(config_text)).unwrap();
    (
        backend_impl.desired(&node(), &peers(backend)),
        backend_impl.pod_mtu(&node()),
    )
}

fn path_of(state: &DesiredState, node: &str) -> PeerPath {
    state
        .peers
        .iter()
        .find(|p| p.node == node)
        .map(|p| p.path.clone())
        .unwrap_or_else(|| panic!("no peer {node}"))
}

fn skipped(state: &DesiredState, node: &str) -> String {
    match path_of(state, node) {
        PeerPath::Skipped(reason) => reason,
        other => panic!("{node} is {other:?}, not skipped"),
    }
}

/// Nothing of an encrypted peer is left on a clear path: its one route goes into twill.wg,
/// and no neighbour, FDB entry or tunnel peer of it remains.
fn assert_no_clear_path(state: &DesiredState) {
    for peer in &state.wireguard_peers {
        let subnet = peer
            .subnet
            .expect("peers of an IPv4 cluster have an IPv4 subnet");
        let routes: Vec<_> = state
            .routes
            .iter()
            .filter(|r| r.dst == subnet.into())
            .collect();
        assert_eq!(routes.len(), 1, "{}: {routes:?}", peer.node);
        assert_eq!(routes[0].dev, DEVICE);
        assert!(
            state.neighbours.iter().all(|n| n.ip != subnet.network()),
            "{}",
            peer.node
        );
        assert!(state.tunnel_peers.iter().all(|t| t.subnet != Some(subnet)));
    }
    let macs: Vec<_> = state.neighbours.iter().map(|n| n.mac).collect();
    assert!(state.fdb.iter().all(|f| macs.contains(&f.mac)));
}

#[test]
fn wireguard_backend_golden() {
    let (state, mtu) = desired(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":51821,"PersistentKeepaliveInterval":25}}"#,
        BackendKind::Wireguard,
    );
    golden("wg-backend.json", &state);
    assert_no_clear_path(&state);
    let device = state.wireguard.clone().expect("the WireGuard device");
    assert_eq!((device.name.as_str(), device.port), (DEVICE, 51821));
    assert_eq!(device.persistent_keepalive, 25);
    assert_eq!(device.local, node().public_net4().addr());
    // 1500 less IPv4 20 + UDP 8 + WireGuard 32, for the device and the pods alike.
    assert_eq!((device.mtu, mtu), (1440, 1440));
    // Every peer with a good key, on the segment or not.
    for (name, n) in [("node-b", 2), ("node-c", 3), ("node-e", 5)] {
        assert_eq!(path_of(&state, name), PeerPath::Wireguard, "{name}");
        let peer = state
            .wireguard_peers
            .iter()
            .find(|p| p.node == name)
            .unwrap();
        assert_eq!(peer.public_key, key(n));
    }
    assert!(state.vxlan.is_none() && state.tunnel.is_none());
    // The secure default: no key, no traffic (not clear traffic).
    assert!(skipped(&state, "node-d").contains("publishes no WireGuard public key"));
    assert!(
        state
            .routes
            .iter()
            .all(|r| r.dst != (net("10.244.4.0/24")).into())
    );
    assert!(skipped(&state, "node-g").contains("not 32 bytes"));
    // Nothing else (BGP, routes kept over a restart) may route there in clear either.
    assert_eq!(
        state.wireguard_blocked,
        vec![net("10.244.4.0/24"), net("10.244.7.0/24")]
    );
    // Our own underlay address, claimed by nobody here; and our own lease is never a peer.
    assert!(state.peers.iter().all(|p| p.node != "node-a"));
}

#[test]
fn wireguard_backend_cross_subnet_routes_the_segment_directly() {
    let (state, _) = desired(
        "backend: wireguard\nwireguard:\n  mode: CrossSubnet\npools:\n  - name: p\n    cidr: 10.244.0.0/16\n",
        BackendKind::Wireguard,
    );
    golden("wg-backend-cross-subnet.json", &state);
    assert_no_clear_path(&state);
    // On the segment: a plain route, key or no key.
    for name in ["node-b", "node-d"] {
        assert_eq!(path_of(&state, name), PeerPath::Direct, "{name}");
    }
    for name in ["node-c", "node-e"] {
        assert_eq!(path_of(&state, name), PeerPath::Wireguard, "{name}");
    }
    assert!(matches!(path_of(&state, "node-g"), PeerPath::Skipped(_)));
}

#[test]
fn encryption_on_host_gw_golden() {
    let (state, mtu) = desired(
        "backend: host-gw\nwireguard:\n  enabled: true\npools:\n  - name: p\n    cidr: 10.244.0.0/16\n",
        BackendKind::HostGw,
    );
    golden("wg-encrypt-hostgw.json", &state);
    assert_no_clear_path(&state);
    // host-gw could not reach node-c and node-e (another segment); WireGuard can.
    for name in ["node-b", "node-c", "node-e"] {
        assert_eq!(path_of(&state, name), PeerPath::Wireguard, "{name}");
    }
    assert!(skipped(&state, "node-d").contains("no WireGuard public key"));
    assert_eq!(mtu, 1440);
    assert_eq!(state.wireguard.unwrap().port, 51820);
}

#[test]
fn encryption_on_vxlan_golden() {
    let (state, mtu) = desired(
        "backend: vxlan\nwireguard:\n  enabled: true\n  listenPort: 51999\n  mtu: 1400\npools:\n  - name: p\n    cidr: 10.244.0.0/16\n",
        BackendKind::Vxlan,
    );
    golden("wg-encrypt-vxlan.json", &state);
    assert_no_clear_path(&state);
    // The VTEP stays (a peer without a key... is not reached in clear either).
    assert!(state.vxlan.is_some());
    assert!(state.neighbours.is_empty() && state.fdb.is_empty());
    assert_eq!(state.wireguard.as_ref().unwrap().mtu, 1400);
    // The smaller of VXLAN's 1450 and the configured 1400.
    assert_eq!(mtu, 1400);
}

#[test]
fn encryption_on_udp_golden() {
    let (state, mtu) = desired(
        r#"{"pools":[{"name":"p","cidr":"10.244.0.0/16"}],"backend":"udp","wireguard":{"enabled":true}}"#,
        BackendKind::Udp,
    );
    golden("wg-encrypt-udp.json", &state);
    assert_no_clear_path(&state);
    assert!(state.tunnel.is_some(), "the udp tunnel still receives");
    assert!(state.tunnel_peers.is_empty());
    // udp's 1472 against WireGuard's 1440.
    assert_eq!(mtu, 1440);
}

#[test]
fn encryption_cross_subnet_on_vxlan_golden() {
    let (state, _) = desired(
        "backend: vxlan\nwireguard:\n  mode: CrossSubnet\npools:\n  - name: p\n    cidr: 10.244.0.0/16\n",
        BackendKind::Vxlan,
    );
    golden("wg-encrypt-vxlan-cross-subnet.json", &state);
    assert_no_clear_path(&state);
    // The segment keeps VXLAN (node-d too: it needs no key there).
    for name in ["node-b", "node-d"] {
        assert_eq!(path_of(&state, name), PeerPath::Vxlan, "{name}");
    }
    for name in ["node-c", "node-e"] {
        assert_eq!(path_of(&state, name), PeerPath::Wireguard, "{name}");
    }
    assert_eq!(state.neighbours.len(), 2);
    assert_eq!(state.fdb.len(), 2);
}

#[test]
fn encryption_on_bgp_takes_the_peers_subnets() {
    let (state, _) = desired(
        "backend: bgp\nbgp: {}\nwireguard: {}\npools:\n  - name: p\n    cidr: 10.244.0.0/16\n",
        BackendKind::Bgp,
    );
    assert_no_clear_path(&state);
    assert_eq!(path_of(&state, "node-c"), PeerPath::Wireguard);
    assert_eq!(
        encrypted_subnet_of(&state, net("10.244.3.128/25")),
        Some(net("10.244.3.0/24"))
    );
    assert_eq!(encrypted_subnet_of(&state, net("10.244.4.0/26")), None);
    assert_eq!(encrypted_subnet_of(&state, net("10.244.0.0/16")), None);
}

#[test]
fn a_key_published_twice_is_refused_for_both() {
    let mut leases = peers(BackendKind::Wireguard);
    for l in &mut leases {
        if l.node == "node-e" {
            l.wireguard_public_key = Some(key(3));
        }
    }
    let backend = for_config(&config(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#,
    ))
    .unwrap();
    let state = backend.desired(&node(), &leases);
    for name in ["node-c", "node-e"] {
        let reason = skipped(&state, name);
        assert!(
            reason.contains("published by several nodes (node-c, node-e)"),
            "{reason}"
        );
        // The short form only: status shows 8 characters of a key.
        assert!(!reason.contains(&key(3)), "{reason}");
    }
    assert_eq!(path_of(&state, "node-b"), PeerPath::Wireguard);
}

#[test]
fn no_wireguard_without_the_switch() {
    let plain = for_config(&config(
        "backend: vxlan\nwireguard:\n  enabled: false\npools:\n  - name: p\n    cidr: 10.244.0.0/16\n",
    ))
    .unwrap();
    let state = plain.desired(&node(), &peers(BackendKind::Vxlan));
    assert!(state.wireguard.is_none() && state.wireguard_peers.is_empty());
    assert_eq!(plain.pod_mtu(&node()), 1450);
    // Skipped when empty: existing golden files keep their form.
    let json = serde_json::to_string(&state).unwrap();
    assert!(!json.contains("wireguard"), "{json}");
}

#[test]
fn settings_from_the_config() {
    let cfg = config(
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard","ListenPort":4000,"PersistentKeepaliveInterval":5,"MTU":1300}}"#,
    );
    let settings = Settings::from(&cfg.wireguard().unwrap());
    assert_eq!(
        settings,
        Settings {
            port: 4000,
            mtu: Some(1300),
            cross_subnet: false,
            persistent_keepalive: 5
        }
    );
    assert_eq!(settings.device(&node(), false).mtu, 1300);
}

fn arb_lease() -> impl Strategy<Value = Lease> {
    (
        1u8..12,
        prop_oneof![Just(1u8), Just(2u8)],
        1u8..6,
        prop::option::of(0u8..4),
        any::<bool>(),
    )
        .prop_map(|(third, segment, host, key_n, vxlan)| {
            let backend = if vxlan {
                BackendKind::Vxlan
            } else {
                BackendKind::HostGw
            };
            lease(
                &format!("n{third}-{host}"),
                &format!("10.244.{third}.0/24"),
                &format!("192.168.{segment}.{}/24", 10 + host),
                backend,
                key_n.map(key),
            )
        })
}

proptest! {
    #[test]
    fn encrypted_subnets_never_keep_a_clear_path(
        leases in proptest::collection::vec(arb_lease(), 0..10),
        config_index in 0usize..5,
    ) {
        let configs = [
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"wireguard"}}"#,
            "backend: wireguard\nwireguard: {mode: CrossSubnet}\npools: [{name: p, cidr: 10.244.0.0/16}]\n",
            "backend: vxlan\nwireguard: {}\npools: [{name: p, cidr: 10.244.0.0/16}]\n",
            "backend: vxlan\ndirectRouting: true\nwireguard: {mode: CrossSubnet}\npools: [{name: p, cidr: 10.244.0.0/16}]\n",
            "backend: udp\nwireguard: {}\npools: [{name: p, cidr: 10.244.0.0/16}]\n",
        ];
        let cfg = config(configs[config_index]);
        let backend = for_config(&cfg).unwrap();
        let state = backend.desired(&node(), &leases);
        assert_no_clear_path(&state);
        // One WireGuard peer per key, and each a programmed peer with a route.
        let mut keys: Vec<_> = state.wireguard_peers.iter().map(|p| &p.public_key).collect();
        keys.sort();
        keys.dedup();
        prop_assert_eq!(keys.len(), state.wireguard_peers.len());
        let encrypted = state.peers.iter().filter(|p| p.path == PeerPath::Wireguard).count();
        prop_assert_eq!(encrypted, state.wireguard_peers.len());
        // Routes stay in subnet order, one per programmed peer.
        let programmed = state.peers.iter().filter(|p| !matches!(p.path, PeerPath::Skipped(_))).count();
        prop_assert_eq!(state.routes.len(), programmed);
        let dsts: Vec<_> = state.routes.iter().map(|r| (r.dst.network(), r.dst.prefix_len())).collect();
        let mut sorted = dsts.clone();
        sorted.sort();
        prop_assert_eq!(dsts, sorted);
        // With Always, nothing reaches a peer but WireGuard.
        if !cfg.wireguard().unwrap().mode.eq(&twill_types::cluster::EncapMode::CrossSubnet) {
            prop_assert!(state.routes.iter().all(|r| r.dev == DEVICE));
        }
    }
}
