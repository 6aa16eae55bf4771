//! The tunnel port is open to the network: 100,000 random and malicious packets from a third
//! host on the underlay (some with the outer source forged as the real peer) must all be
//! dropped and counted by reason, while the pods' ping keeps flowing, and the engine must
//! survive.

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{
    H1, H2, Lab, P2, Rng, X, encapsulate_to_h2, ping_p1_to_p2_in_background, ping_summary,
    raw_socket_to_h2, snmp_counter,
};
use twill_tunnel::wire::{self, build_ipv4};
use twill_tunnel::{DEFAULT_UDP_PORT, Encap};

const PER_KIND: u64 = 20_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Random bytes, outer source forged as the peer: malformed.
    Random,
    /// Valid inner packet whose source is outside the peer's subnet: spoofed.
    SpoofedInner,
    /// Valid inner packet for an address outside our pod subnet: foreign destination.
    ForeignInner,
    /// An inner header cut short or lying about its length: malformed.
    Truncated,
    /// A valid-looking packet from a host that is no peer: unknown peer.
    UnknownSource,
}

const KINDS: [Kind; 5] = [
    Kind::Random,
    Kind::SpoofedInner,
    Kind::ForeignInner,
    Kind::Truncated,
    Kind::UnknownSource,
];

/// The encapsulated payload (udp payload or ipip body) and the outer source of one packet.
fn craft(kind: Kind, rng: &mut Rng, body: &mut Vec<u8>) -> Ipv4Addr {
    let pod1 = Ipv4Addr::new(10, 244, 1, 2);
    let pod2 = Ipv4Addr::new(10, 244, 2, 2);
    let mut payload = vec![0u8; rng.below(200) as usize + 8];
    rng.fill(&mut payload);
    match kind {
        Kind::Random => {
            let mut b = vec![0u8; rng.below(1400) as usize];
            rng.fill(&mut b);
            // Keep it invalid for sure: a random version nibble other than 4.
            if let Some(f) = b.first_mut()
                && *f >> 4 == 4
            {
                *f ^= 0x80;
            }
            *body = b;
            H1
        }
        Kind::SpoofedInner => {
            let src = Ipv4Addr::new(10, 244, 9, rng.below(250) as u8 + 1);
            build_ipv4(src, pod2, 17, 64, &payload, body);
            H1
        }
        Kind::ForeignInner => {
            // An address of h2 itself, outside its pod subnet.
            build_ipv4(pod1, H2, 1, 64, &payload, body);
            H1
        }
        Kind::Truncated => {
            build_ipv4(pod1, pod2, 6, 64, &payload, body);
            if rng.below(2) == 0 {
                body.truncate(rng.below(20) as usize);
            } else {
                // Total length beyond the datagram (header checksum fixed up).
                let claimed = (body.len() + 1 + rng.below(100) as usize) as u16;
                body[2..4].copy_from_slice(&claimed.to_be_bytes());
                body[10] = 0;
                body[11] = 0;
                let s = wire::checksum(&body[..20]);
                body[10..12].copy_from_slice(&s.to_be_bytes());
            }
            H1
        }
        Kind::UnknownSource => {
            build_ipv4(pod1, pod2, 17, 64, &payload, body);
            X
        }
    }
}

/// Sends PER_KIND packets of every kind from the attacker namespace, paced; returns when done.
fn attack(ipip: bool) {
    let (sock, dst) = raw_socket_to_h2();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut body = Vec::new();
    let mut udp = Vec::new();
    let mut pkt = Vec::new();
    let total = PER_KIND * KINDS.len() as u64;
    for i in 0..total {
        let kind = KINDS[(i % KINDS.len() as u64) as usize];
        let src = craft(kind, &mut rng, &mut body);
        encapsulate_to_h2(src, ipip, &body, &mut udp, &mut pkt);
        sock.send_to(&pkt, &dst).expect("send garbage");
        // About 40,000 packets a second: a flood, but one the socket buffers absorb.
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_micros(2500));
        }
    }
}

/// The kernel's own drops before our socket (buffer overflows), to account for every packet.
fn kernel_drops(lab: &Lab, ipip: bool) -> u64 {
    if ipip {
        // /proc/net/raw: last column is drops.
        let out = lab.h2.ok(&["cat", "/proc/net/raw"]);
        out.lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum()
    } else {
        snmp_counter(&lab.h2, "Udp:", "RcvbufErrors").unwrap_or(0)
    }
}

fn garbage_is_dropped_and_counted(encap: Encap, tag: &str, kernel_path: bool) {
    let ipip = encap == Encap::Ipip;
    let lab = Lab::new(tag, true);
    let (t1, t2) = lab.start_pair_with(encap, "twill.tun", 0, kernel_path);
    lab.route_via("twill.tun");
    lab.set_pod_mtu(1500 - encap.overhead());
    assert!(lab.wait_reachable(Duration::from_secs(3)));
    let before = t2.stats().drops;
    let kernel_before = kernel_drops(&lab, ipip);

    // Good traffic: 100 pings a second for 5 s, while the flood runs.
    let pinger = ping_p1_to_p2_in_background(&lab);
    let started = Instant::now();
    Lab::in_ns(lab.x.as_ref().unwrap(), || attack(ipip));
    let flood_took = started.elapsed();
    let ping = pinger.join().unwrap();
    std::thread::sleep(Duration::from_millis(500));

    let (sent, received, avg) = ping_summary(&String::from_utf8_lossy(&ping.stdout));
    let after = t2.stats().drops;
    let kernel = kernel_drops(&lab, ipip) - kernel_before;
    let d = |a: u64, b: u64| a - b;
    let unknown = d(after.unknown_peer, before.unknown_peer);
    let spoofed = d(after.spoofed_inner_source, before.spoofed_inner_source);
    let foreign = d(
        after.foreign_inner_destination,
        before.foreign_inner_destination,
    );
    let malformed = d(after.malformed, before.malformed);
    let counted = d(after.total(), before.total());
    let total = PER_KIND * KINDS.len() as u64;
    let loss = 100.0 * (sent - received) as f64 / sent.max(1) as f64;
    println!(
        "{encap:?}: {total} garbage packets in {flood_took:?}: unknown_peer {unknown}, \
         spoofed_inner_source {spoofed}, foreign_inner_destination {foreign}, malformed {malformed}, \
         kernel socket drops {kernel}; pods' ping {received}/{sent} ({loss:.1}% loss, avg {avg} ms)"
    );
    assert_eq!(
        counted + kernel,
        total,
        "every garbage packet is either counted by the engine or dropped by the kernel before it"
    );
    assert!(kernel <= total / 100, "too many kernel drops: {kernel}");
    for (name, got) in [
        ("unknown_peer", unknown),
        ("spoofed_inner_source", spoofed),
        ("foreign_inner_destination", foreign),
    ] {
        assert!(
            got <= PER_KIND && got + kernel >= PER_KIND,
            "{name}: {got} of {PER_KIND}"
        );
    }
    assert!(
        malformed <= 2 * PER_KIND && malformed + kernel >= 2 * PER_KIND,
        "malformed: {malformed}"
    );
    assert!(loss <= 1.0, "pods lost {loss}% of their pings");
    assert_eq!(after.send_errors, 0);
    // Still alive and well.
    assert!(lab.p1.ping(P2, 3));
    assert_eq!(t1.stats().drops.total(), 0, "{:?}", t1.stats());
}

#[test]
#[ignore = "needs root"]
fn udp_garbage_is_dropped_and_counted() {
    garbage_is_dropped_and_counted(
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        },
        "gu",
        false,
    );
}

#[test]
#[ignore = "needs root"]
fn ipip_garbage_is_dropped_and_counted() {
    garbage_is_dropped_and_counted(Encap::Ipip, "gi", false);
}

/// The kernel fast path forwards none of it: every hostile packet still reaches the engine
/// and is counted by reason.
#[test]
#[ignore = "needs root"]
fn ipip_kernel_path_garbage_is_dropped_and_counted() {
    garbage_is_dropped_and_counted(Encap::Ipip, "gk", true);
}

#[test]
#[ignore = "needs root"]
fn udp_kernel_path_garbage_is_dropped_and_counted() {
    garbage_is_dropped_and_counted(
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        },
        "gv",
        true,
    );
}
