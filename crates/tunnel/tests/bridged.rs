//! Bridged pods (the CNI plugin's default layout, Flannel's cni0) behind the kernel fast path:
//! decapsulated TCP super-packets must reach the pod's port whole, past the bridge (which
//! would segment them in software: they keep their tunnel GSO type), and a packet with a
//! spoofed inner source must still fall through to the engine, be counted there, and never
//! reach the pod.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{H1, Lab, P2, encapsulate_to_h2, raw_socket_to_h2, snmp_counter};
use twill_testkit::Netns;
use twill_tunnel::wire::build_ipv4;
use twill_tunnel::{DEFAULT_UDP_PORT, Encap};

const SPOOFED: u64 = 300;

/// Moves p2 behind a bridge `cni0` in h2 that holds the pods' gateway, as the plugin does.
fn bridge_pod2(lab: &Lab) {
    let h2 = &lab.h2;
    h2.ok(&["ip", "addr", "del", "10.244.2.1/24", "dev", "vp2"]);
    h2.ok(&["ip", "link", "add", "cni0", "type", "bridge"]);
    h2.ok(&["ip", "addr", "add", "10.244.2.1/24", "dev", "cni0"]);
    h2.ok(&["ip", "link", "set", "cni0", "up"]);
    h2.ok(&["ip", "link", "set", "vp2", "master", "cni0"]);
}

/// (tx bytes, tx packets) of `dev` in `ns`.
fn tx(ns: &Netns, dev: &str) -> (u64, u64) {
    let v = ns.ip_json(&["-s", "link", "show", dev]);
    let tx = &v[0]["stats64"]["tx"];
    (
        tx["bytes"].as_u64().expect("tx bytes"),
        tx["packets"].as_u64().expect("tx packets"),
    )
}

/// IPv4 packets p2's stack has received (`Ip: InReceives`).
fn ipv4_received(ns: &Netns) -> u64 {
    snmp_counter(ns, "Ip:", "InReceives").expect("Ip: InReceives")
}

/// Sends `SPOOFED` tunnel packets to h2 with the outer source forged as h1 (a real peer) and
/// inner sources outside h1's pod subnet, for p2.
fn spoof(ipip: bool) {
    let (sock, dst) = raw_socket_to_h2();
    let pod2: Ipv4Addr = P2.parse().unwrap();
    let (mut inner, mut udp, mut pkt) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..SPOOFED {
        let src = Ipv4Addr::new(10, 244, 9, (i % 250) as u8 + 1);
        build_ipv4(src, pod2, 17, 64, &[0u8; 64], &mut inner);
        encapsulate_to_h2(H1, ipip, &inner, &mut udp, &mut pkt);
        sock.send_to(&pkt, &dst).expect("send spoofed packet");
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn bridged_pod_gets_super_packets(encap: Encap, tag: &str) {
    let lab = Lab::new(tag, true);
    bridge_pod2(&lab);
    let (_t1, t2) = lab.start_pair_with(encap, "twill.tun", 0, true);
    lab.route_via("twill.tun");
    lab.set_pod_mtu(1500 - encap.overhead());
    assert!(lab.wait_reachable(Duration::from_secs(3)));
    let _server = lab.p2.spawn(&["iperf3", "-s"]);

    // The port map is copied from the bridge's forwarding table about once a second; p2 is
    // in the table since it answered the pings.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (bridged, port) = loop {
        let bridge_before = tx(&lab.h2, "cni0");
        let port_before = tx(&lab.h2, "vp2");
        let out = lab.p1.exec(&["iperf3", "-c", P2, "-t", "2", "-J"]);
        assert!(out.status.success(), "iperf3: {out:?}");
        let bridge_after = tx(&lab.h2, "cni0");
        let port_after = tx(&lab.h2, "vp2");
        let bridged = bridge_after.0 - bridge_before.0;
        let port = (port_after.0 - port_before.0, port_after.1 - port_before.1);
        if bridged < port.0 / 20 || Instant::now() > deadline {
            break (bridged, port);
        }
    };
    let per_packet = port.0 / port.1.max(1);
    println!(
        "{encap:?}: {} bytes to p2's port in {} packets ({per_packet} B each), {bridged} bytes \
         sent by the bridge itself",
        port.0, port.1
    );
    assert!(port.0 > 10_000_000, "little traffic reached p2: {port:?}");
    assert!(
        bridged < port.0 / 20,
        "the bridge still forwards the tunnel's traffic: {bridged} of {} bytes",
        port.0
    );
    assert!(
        per_packet > 3000,
        "p2's port got segments, not super-packets: {per_packet} B per packet"
    );

    // A spoofed inner source from a forged peer address: the engine counts it, p2 never sees it.
    let before = t2.stats().drops.spoofed_inner_source;
    let received = ipv4_received(&lab.p2);
    Lab::in_ns(lab.x.as_ref().unwrap(), || spoof(encap == Encap::Ipip));
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut counted = 0;
    while Instant::now() < deadline {
        counted = t2.stats().drops.spoofed_inner_source - before;
        if counted >= SPOOFED {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(counted, SPOOFED, "spoofed packets counted by the engine");
    assert_eq!(
        ipv4_received(&lab.p2) - received,
        0,
        "a spoofed packet reached p2"
    );
}

#[test]
#[ignore = "needs root"]
fn udp_bridged_pod_gets_super_packets() {
    bridged_pod_gets_super_packets(
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        },
        "bu",
    );
}

#[test]
#[ignore = "needs root"]
fn ipip_bridged_pod_gets_super_packets() {
    bridged_pod_gets_super_packets(Encap::Ipip, "bi");
}
