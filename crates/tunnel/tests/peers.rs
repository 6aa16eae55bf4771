//! `set_peers` decides what flows: adding a peer makes its pods reachable, removing it stops
//! the traffic (counted as no_peer_for_destination), and counters follow.

mod common;

use std::time::Duration;

use common::{Lab, P2};
use twill_tunnel::{DEFAULT_UDP_PORT, Encap};

fn peer_table_controls_traffic(encap: Encap, tag: &str, kernel_path: bool) {
    let lab = Lab::new(tag, false);
    let t1 = lab.start_with(1, encap, "twill.tun", 1, kernel_path);
    let t2 = lab.start_with(2, encap, "twill.tun", 1, kernel_path);
    lab.route_via("twill.tun");
    lab.set_pod_mtu(1500 - encap.overhead());
    let s = t1.stats();
    assert_eq!(s.device, "twill.tun");
    assert!(s.offload, "TUN offloads should be on with this kernel");

    // No peers yet: nothing flows, and h1 counts why.
    assert!(!lab.p1.ping(P2, 2), "ping must fail without peers");
    assert!(t1.stats().drops.no_peer_for_destination >= 2);

    t1.set_peers(&[Lab::peer_of(2)]);
    // h2 does not know h1 yet: it drops what h1 sends as coming from an unknown peer.
    assert!(!lab.p1.ping(P2, 2));
    assert!(t2.stats().drops.unknown_peer >= 2, "{:?}", t2.stats());

    t2.set_peers(&[Lab::peer_of(1)]);
    assert!(
        lab.wait_reachable(Duration::from_secs(3)),
        "ping after set_peers"
    );
    let to_engine = lab.tun_tx_packets(1, "twill.tun");
    assert!(lab.p1.ping(P2, 5));
    if kernel_path {
        assert_eq!(
            lab.tun_tx_packets(1, "twill.tun"),
            to_engine,
            "with the kernel fast path, no packet to a known peer goes through the engine"
        );
    }
    let s1 = t1.stats();
    let p = &s1.peers[0];
    assert_eq!(p.node, "h2");
    assert!(p.tx_packets >= 5 && p.rx_packets >= 5, "{s1:?}");
    assert!(p.tx_bytes >= 5 * 84, "{s1:?}");

    // Removing the peer stops traffic; the counters of the kept node survive a swap.
    t1.set_peers(&[]);
    assert!(!lab.p1.ping(P2, 2));
    assert!(t1.stats().peers.is_empty());
    t1.set_peers(&[Lab::peer_of(2)]);
    assert!(lab.wait_reachable(Duration::from_secs(3)));
    let before = t2.stats().peers[0].rx_packets;
    t2.set_peers(&[
        Lab::peer_of(1),
        twill_tunnel::Peer {
            node: "h3".into(),
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            subnet6: None,
            underlay: "192.168.77.9".parse().unwrap(),
            public_key: None,
        },
    ]);
    let after = t2.stats();
    assert_eq!(after.peers.len(), 2);
    assert!(after.peers[0].rx_packets >= before, "{after:?}");
    let json = serde_json::to_value(&after).unwrap();
    assert!(json["drops"]["noPeerForDestination"].is_u64(), "{json}");
    assert!(json["peers"][0]["rxPackets"].is_u64(), "{json}");
    t1.shutdown();
    t2.shutdown();
}

#[test]
#[ignore = "needs root"]
fn udp_peer_table_controls_traffic() {
    peer_table_controls_traffic(
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        },
        "pu",
        false,
    );
}

#[test]
#[ignore = "needs root"]
fn ipip_peer_table_controls_traffic() {
    peer_table_controls_traffic(Encap::Ipip, "pi", false);
}

/// The kernel fast path follows the same peer table: joins open it, leaves close it, and
/// what it does not know still reaches the engine to be counted.
#[test]
#[ignore = "needs root"]
fn ipip_kernel_path_peer_table_controls_traffic() {
    peer_table_controls_traffic(Encap::Ipip, "pk", true);
}

#[test]
#[ignore = "needs root"]
fn udp_kernel_path_peer_table_controls_traffic() {
    peer_table_controls_traffic(
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        },
        "pv",
        true,
    );
}
