//! Dual-stack pods across the userspace engine (issue 15): IPv6 pod packets over the IPv4
//! underlay (udp framing, and protocol 41 as Linux's `sit` for ipip), with the receive checks
//! of IPv4 (unknown outer source, spoofed inner source) applied to IPv6 too.
//!
//! The lab of `common` gets IPv6: pods p1 fd00:1::2/64 behind h1 and p2 fd00:2::2/64 behind
//! h2. The wire-format tests capture with tcpdump on h2's underlay and in p1 and check the
//! bytes themselves: outer header field by field, inner packet byte for byte (only the hop
//! limit h1 decremented differs from what p1 sent).

mod common;

use std::net::{SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use common::{H1, H2, Lab, capture_eth0, pcap_frames};
use socket2::{Domain, Protocol, Socket, Type};
use twill_testkit::TempDir;
use twill_tunnel::wire::{self, build_ipv6};
use twill_tunnel::{DEFAULT_UDP_PORT, Encap, Peer, Tunnel, TunnelConfig};

const UDP: Encap = Encap::Udp {
    port: DEFAULT_UDP_PORT,
};
const DEV: &str = "twill.tun";
const P1_6: &str = "fd00:1::2";
const P2_6: &str = "fd00:2::2";
const PATTERN: [u8; 4] = [0xc0, 0xff, 0xee, 0x11];

fn config(encap: Encap, host: u8, queues: usize) -> TunnelConfig {
    TunnelConfig {
        local_subnet6: Some(format!("fd00:{host}::/64").parse().unwrap()),
        ..Lab::config(encap, DEV, host, queues)
    }
}

fn peer(host: u8) -> Peer {
    Peer {
        subnet6: Some(format!("fd00:{host}::/64").parse().unwrap()),
        ..Lab::peer_of(host)
    }
}

/// Starts both tunnels, each with the other as a dual-stack peer, and routes both families
/// of the other's pods into the device.
fn start_pair(lab: &Lab, encap: Encap, queues: usize) -> (Tunnel, Tunnel) {
    start_pair_with(lab, encap, queues, false)
}

/// [`start_pair`] with the kernel fast path on or off.
fn start_pair_with(lab: &Lab, encap: Encap, queues: usize, kernel_path: bool) -> (Tunnel, Tunnel) {
    let start = |host: u8| {
        let cfg = TunnelConfig {
            kernel_path,
            ..config(encap, host, queues)
        };
        let t = Lab::in_ns(lab.host(host), || Tunnel::start(cfg)).expect("start tunnel");
        if kernel_path {
            assert_eq!(t.kernel_path_device().as_deref(), Some("eth0"));
        }
        t
    };
    let t1 = start(1);
    let t2 = start(2);
    t1.set_peers(&[peer(2)]);
    t2.set_peers(&[peer(1)]);
    lab.route_via(DEV);
    lab.h1
        .ok(&["ip", "-6", "route", "replace", "fd00:2::/64", "dev", DEV]);
    lab.h2
        .ok(&["ip", "-6", "route", "replace", "fd00:1::/64", "dev", DEV]);
    lab.set_pod_mtu(1500 - encap.overhead());
    (t1, t2)
}

fn ping6(lab: &Lab) -> bool {
    lab.p1
        .exec(&[
            "ping", "-6", "-q", "-c", "1", "-W", "1", "-p", "c0ffee11", P2_6,
        ])
        .status
        .success()
}

/// Five quick pings from p1 to p2's IPv6 address; whether ping succeeded.
fn ping6_five_times(lab: &Lab) -> bool {
    lab.p1
        .exec(&["ping", "-6", "-q", "-c", "5", "-i", "0.05", "-W", "1", P2_6])
        .status
        .success()
}

fn wait_reachable6(lab: &Lab) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping6(lab) {
            return true;
        }
    }
    false
}

fn both_families_flow(encap: Encap, tag: &str) {
    let lab = Lab::new(tag, false);
    lab.add_pods6();
    let (t1, t2) = start_pair(&lab, encap, 2);
    assert!(wait_reachable6(&lab), "ping -6 p1 -> p2: {:?}", t1.stats());
    assert!(ping6_five_times(&lab), "ping -6 -c 5 p1 -> p2");
    assert!(
        lab.wait_reachable(Duration::from_secs(10)),
        "IPv4 next to IPv6"
    );
    // TCP over IPv6 through the engine: TSO super-packets of IPv6 are segmented and carried.
    let _server = lab.p2.spawn(&["iperf3", "-s"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let ok = loop {
        let out = lab.p1.exec(&["iperf3", "-6", "-c", P2_6, "-n", "2M"]);
        if out.status.success() {
            break true;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(ok, "iperf3 -6 through the tunnel: {last}");
    let s1 = t1.stats();
    let s2 = t2.stats();
    assert_eq!(s1.peers[0].subnet6, Some("fd00:2::/64".parse().unwrap()));
    assert!(s1.peers[0].tx_bytes > 500_000, "{s1:?}");
    assert!(s2.peers[0].rx_bytes > 500_000, "{s2:?}");
    assert_eq!(s2.drops.spoofed_inner_source, 0, "{s2:?}");
    assert_eq!(s2.drops.malformed, 0, "{s2:?}");
    assert_eq!(s1.drops.total(), 0, "{s1:?}");
}

#[test]
#[ignore = "needs root"]
fn ipv6_pods_ping_over_udp_on_ipv4() {
    both_families_flow(UDP, "d6u");
}

#[test]
#[ignore = "needs root"]
fn ipv6_pods_ping_over_ipip_on_ipv4() {
    both_families_flow(Encap::Ipip, "d6i");
}

/// The kernel fast path (tc BPF) carries IPv4 only: IPv6 reaches the engine untouched in
/// both directions and is counted there, and nothing counts as dropped.
fn ipv6_bypasses_the_kernel_path(encap: Encap, tag: &str) {
    let lab = Lab::new(tag, false);
    lab.add_pods6();
    let (t1, t2) = start_pair_with(&lab, encap, 1, true);
    assert!(lab.wait_reachable(Duration::from_secs(10)));
    assert!(
        wait_reachable6(&lab),
        "ping -6 with the fast path: {:?}",
        t1.stats()
    );
    let engine_rx = |t: &Tunnel| t.stats().peers[0].rx_packets;
    let (tun_before, rx_before) = (lab.tun_tx_packets(1, DEV), engine_rx(&t2));
    assert!(lab.p1.ping(common::P2, 5));
    assert_eq!(
        lab.tun_tx_packets(1, DEV),
        tun_before,
        "IPv4 to a known peer stays on the fast path"
    );
    assert!(ping6_five_times(&lab), "ping -6 -c 5 p1 -> p2");
    assert!(
        lab.tun_tx_packets(1, DEV) >= tun_before + 5,
        "IPv6 goes to the engine"
    );
    // h2 counted both: the IPv4 echo requests in the fast path's counters, the IPv6 ones in
    // the engine's, both under the same peer.
    assert!(engine_rx(&t2) >= rx_before + 10, "{:?}", t2.stats());
    assert_eq!(t1.stats().drops.total(), 0, "{:?}", t1.stats());
    assert_eq!(t2.stats().drops.total(), 0, "{:?}", t2.stats());
}

#[test]
#[ignore = "needs root"]
fn ipv6_bypasses_the_udp_kernel_path() {
    ipv6_bypasses_the_kernel_path(UDP, "k6u");
}

#[test]
#[ignore = "needs root"]
fn ipv6_bypasses_the_ipip_kernel_path() {
    ipv6_bypasses_the_kernel_path(Encap::Ipip, "k6i");
}

/// An echo request of our pattern from p1 to p2, as an IPv6 packet.
fn is_our_echo6(ip: &[u8]) -> bool {
    ip.len() > 48
        && ip[0] >> 4 == 6
        && ip[6] == 58
        && ip[40] == 128
        && ip[8..24] == P1_6.parse::<std::net::Ipv6Addr>().unwrap().octets()
        && ip.windows(4).any(|w| w == PATTERN)
}

/// The inner packet of an underlay frame from h1 to h2 after checking the outer headers
/// byte by byte; `None` for frames that are not the tunnel's.
fn inner_of(frame: &[u8], ipip: bool) -> Option<Result<Vec<u8>, String>> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let outer = &frame[14..];
    if outer[12..16] != H1.octets() || outer[16..20] != H2.octets() {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([outer[2], outer[3]]));
    if outer[0] != 0x45 || total != outer.len() || wire::checksum(&outer[..20]) != 0 {
        return Some(Err(format!("outer IPv4 header {:02x?}", &outer[..20])));
    }
    if ipip {
        if outer[9] != wire::IPPROTO_IPV6 {
            return None;
        }
        let inner = &outer[20..];
        // sit's defaults: DF, TTL = inner hop limit, DSCP 0 with the inner ECN (0 for ping),
        // not a fragment.
        let expect = [(1, 0x00), (6, 0x40), (7, 0x00), (8, inner[7])];
        for (at, want) in expect {
            if outer[at] != want {
                return Some(Err(format!(
                    "outer byte {at} is {:#04x}, want {want:#04x}: {:02x?}",
                    outer[at],
                    &outer[..20]
                )));
            }
        }
        Some(Ok(inner.to_vec()))
    } else {
        if outer[9] != 17 {
            return None;
        }
        let udp = &outer[20..];
        let port = DEFAULT_UDP_PORT.to_be_bytes();
        let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp[..2] != port || udp[2..4] != port || len != udp.len() {
            return Some(Err(format!("UDP header {:02x?}", &udp[..8])));
        }
        Some(Ok(udp[8..].to_vec()))
    }
}

fn ipv6_wire_format(encap: Encap, tag: &str) {
    let ipip = encap == Encap::Ipip;
    let lab = Lab::new(tag, false);
    lab.add_pods6();
    let (_t1, _t2) = start_pair(&lab, encap, 1);
    assert!(wait_reachable6(&lab));
    let dir = TempDir::new("tun6fmt");
    let under = dir.path().join("underlay.pcap");
    let pod = dir.path().join("pod.pcap");
    let filter = if ipip { "ip proto 41" } else { "udp port 8285" };
    let _cap1 = capture_eth0(&lab.h2, &under, filter);
    let _cap2 = capture_eth0(&lab.p1, &pod, "icmp6");
    // Ping until three tunnelled echo requests match one p1 sent (by everything after the
    // IPv6 header; tcpdump starts listening some time after it was spawned, and either file
    // may lag the other by a packet).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pairs = Vec::new();
    while pairs.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "{tag}: only {} tunnelled echo requests matched one of p1's",
            pairs.len()
        );
        ping6(&lab);
        let originals: Vec<Vec<u8>> = pcap_frames(&pod)
            .into_iter()
            .filter(|f| f.len() > 14 && f[12..14] == [0x86, 0xdd] && is_our_echo6(&f[14..]))
            .map(|f| f[14..].to_vec())
            .collect();
        let inners = pcap_frames(&under)
            .iter()
            .filter_map(|f| inner_of(f, ipip))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        pairs = inners
            .into_iter()
            .filter(|i| is_our_echo6(i))
            .filter_map(|i| {
                let sent = originals.iter().find(|o| o[40..] == i[40..])?.clone();
                Some((i, sent))
            })
            .collect();
    }
    for (inner, mut sent) in pairs {
        // The only change on the way: h1 forwarded the packet (hop limit - 1).
        sent[7] -= 1;
        assert_eq!(inner, sent, "the inner packet is the pod's, byte for byte");
    }
}

#[test]
#[ignore = "needs root"]
fn ipv6_in_udp_on_ipv4_wire_format() {
    ipv6_wire_format(UDP, "f6u");
}

#[test]
#[ignore = "needs root"]
fn ipv6_in_protocol_41_on_ipv4_wire_format() {
    ipv6_wire_format(Encap::Ipip, "f6i");
}

/// Sends `inner` to h2's tunnel from the namespace the calling thread is in: as a UDP payload
/// to port 8285, or as the payload of protocol 41 (the kernel writes the outer header).
fn send_to_h2(ipip: bool, inner: &[u8]) {
    if ipip {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(wire::IPPROTO_IPV6))),
        )
        .expect("raw protocol-41 socket");
        s.send_to(inner, &SocketAddrV4::new(H2, 0).into())
            .expect("send protocol 41");
    } else {
        let s = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
        s.send_to(inner, SocketAddrV4::new(H2, DEFAULT_UDP_PORT))
            .expect("send udp");
    }
}

fn echo6(src: &str, dst: &str) -> Vec<u8> {
    let mut p = Vec::new();
    build_ipv6(
        src.parse().unwrap(),
        dst.parse().unwrap(),
        58,
        64,
        &[128, 0, 0, 0, 0, 1, 0, 1],
        &mut p,
    );
    p
}

/// Waits until `counter` of h2's drops reaches `want`.
fn wait_drops(
    t: &Tunnel,
    what: &str,
    want: u64,
    counter: impl Fn(&twill_tunnel::DropCounters) -> u64,
) {
    // Generous: on a loaded 2-CPU machine the engine's workers may wait for a core, and a
    // busy poll here would take one from them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = t.stats().drops;
        if counter(&d) >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: want {want}, have {d:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn forged_ipv6_is_dropped_and_counted(encap: Encap, tag: &str) {
    let ipip = encap == Encap::Ipip;
    let lab = Lab::new(tag, true);
    lab.add_pods6();
    let (_t1, t2) = start_pair(&lab, encap, 1);
    assert!(wait_reachable6(&lab));
    let x = lab.x.as_ref().unwrap();
    let h2_sees = |d: &twill_tunnel::DropCounters| (d.unknown_peer, d.spoofed_inner_source);
    let before = h2_sees(&t2.stats().drops);

    // An attacker that is no peer, with a perfectly plausible inner packet.
    Lab::in_ns(x, || {
        for _ in 0..5 {
            send_to_h2(ipip, &echo6(P1_6, P2_6));
        }
    });
    wait_drops(&t2, "unknown outer source", before.0 + 5, |d| {
        d.unknown_peer
    });

    // The peer h1 (a compromised node, or a pod's packet the host forwards blindly) with an
    // inner source outside its IPv6 subnet: another node's pods, and this node's own.
    Lab::in_ns(&lab.h1, || {
        for src in ["fd00:3::2", "fd00:2::9", "::ffff:10.244.1.2"] {
            send_to_h2(ipip, &echo6(src, P2_6));
        }
    });
    wait_drops(&t2, "spoofed inner source", before.1 + 3, |d| {
        d.spoofed_inner_source
    });

    // To a destination that is not this node's.
    let foreign = t2.stats().drops.foreign_inner_destination;
    Lab::in_ns(&lab.h1, || send_to_h2(ipip, &echo6(P1_6, "fd00:3::2")));
    wait_drops(&t2, "foreign inner destination", foreign + 1, |d| {
        d.foreign_inner_destination
    });

    // A peer without an IPv6 subnet may send no IPv6 at all.
    t2.set_peers(&[Lab::peer_of(1)]);
    let spoofed = t2.stats().drops.spoofed_inner_source;
    Lab::in_ns(&lab.h1, || send_to_h2(ipip, &echo6(P1_6, P2_6)));
    wait_drops(&t2, "IPv6 from an IPv4-only peer", spoofed + 1, |d| {
        d.spoofed_inner_source
    });
    assert!(
        !ping6(&lab),
        "h2 must not accept IPv6 from a peer without an IPv6 subnet"
    );
    // ... while the legitimate traffic of both families flowed, and IPv4 still does.
    t2.set_peers(&[peer(1)]);
    assert!(wait_reachable6(&lab));
    assert!(lab.wait_reachable(Duration::from_secs(10)));
}

#[test]
#[ignore = "needs root"]
fn forged_ipv6_in_udp_is_dropped_and_counted() {
    forged_ipv6_is_dropped_and_counted(UDP, "s6u");
}

#[test]
#[ignore = "needs root"]
fn forged_ipv6_in_protocol_41_is_dropped_and_counted() {
    forged_ipv6_is_dropped_and_counted(Encap::Ipip, "s6i");
}
