//! A real NIC's GRO coalesces IPIP packets (the kernel does it even without the ipip module),
//! so the raw socket can hand the engine one outer packet holding a TCP super-packet far
//! larger than the TUN MTU. The engine must give it to the kernel as a TSO packet to be cut
//! again, not as one oversized packet the next hop would refuse.
//!
//! The lab's veths do no GRO, so the test builds such a packet itself: h1 sends a 4 KB inner
//! TCP segment over IPIP without DF; h1's kernel fragments the outer packet and h2's
//! reassembles it before the raw socket sees it, as GRO would have.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use common::{H1, H2, Lab};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use twill_tunnel::Encap;
use twill_tunnel::wire::{build_ipv4, checksum};

/// p2's TCP counters (`/proc/net/snmp`): segments in, resets out, checksum errors.
fn tcp_counters(lab: &Lab) -> (u64, u64, u64) {
    let out = lab.p2.ok(&["cat", "/proc/net/snmp"]);
    let tcp: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("Tcp:"))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let get = |name: &str| {
        let i = tcp[0].iter().position(|n| *n == name).unwrap();
        tcp[1][i].parse::<u64>().unwrap()
    };
    (get("InSegs"), get("OutRsts"), get("InCsumErrors"))
}

#[test]
#[ignore = "needs root"]
fn ipip_tcp_super_packet_is_segmented_again() {
    let lab = Lab::new("co", false);
    let (_t1, t2) = lab.start_pair(Encap::Ipip, "twill.tun", 1);
    lab.route_via("twill.tun");
    lab.set_pod_mtu(1480);
    assert!(lab.wait_reachable(Duration::from_secs(3)));
    let before = tcp_counters(&lab);
    let peer_before = t2.stats().peers[0].rx_packets;

    // Inner: 10.244.1.2:40000 -> 10.244.2.2:9, ACK, 4000 bytes of payload.
    let (src, dst) = (Ipv4Addr::new(10, 244, 1, 2), Ipv4Addr::new(10, 244, 2, 2));
    let mut tcp = vec![0u8; 20 + 4000];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&9u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&1u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10;
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6]);
    pseudo.extend_from_slice(&(tcp.len() as u16).to_be_bytes());
    pseudo.extend_from_slice(&tcp);
    let sum = checksum(&pseudo);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut inner = Vec::new();
    build_ipv4(src, dst, 6, 64, &tcp, &mut inner);

    Lab::in_ns(&lab.h1, || {
        // Not IP_HDRINCL: the kernel builds the outer header and fragments it.
        let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(4))).unwrap();
        s.bind(&SockAddr::from(SocketAddrV4::new(H1, 0))).unwrap();
        s.send_to(&inner, &SockAddr::from(SocketAddrV4::new(H2, 0)))
            .expect("send coalesced-size IPIP packet");
    });
    std::thread::sleep(Duration::from_millis(300));
    let after = tcp_counters(&lab);
    let stats = t2.stats();
    println!(
        "p2 TCP (in segments, out resets, checksum errors): {before:?} -> {after:?}; {stats:?}"
    );
    assert_eq!(stats.peers[0].rx_packets, peer_before + 1, "{stats:?}");
    assert_eq!(stats.drops.total(), 0, "{stats:?}");
    // The pod's TCP took the data (no listener on port 9, so it answers with a reset), with a
    // valid checksum. Sent as one 4040-byte packet instead, it would have been refused at
    // p2's 1480-byte link and never reached TCP.
    assert!(after.0 > before.0, "no TCP segment reached p2");
    assert!(after.1 > before.1, "p2 did not answer the segment");
    assert_eq!(after.2, before.2, "checksum errors at p2");
}
