//! Dual-stack pods across the userspace engine (issue 15): IPv6 pod packets over the IPv4
//! underlay (udp framing, and protocol 41 as Linux's `sit` for ipip), with the receive checks
//! of IPv4 (unknown outer source, spoofed inner source) applied to IPv6 too.
//!
//! The kernel fast path (tc BPF) carries IPv6 pod packets as well: the same framing byte for
//! byte, GSO super-packets kept whole, and everything doubtful passed to the engine, which
//! drops and counts it.
//!
//! The lab of `common` gets IPv6: pods p1 fd00:1::2/64 behind h1 and p2 fd00:2::2/64 behind
//! h2. The wire-format tests capture with tcpdump on h2's underlay and in p1 and check the
//! bytes themselves: outer header field by field, inner packet byte for byte (only the hop
//! limit h1 decremented differs from what p1 sent).

mod common;

use std::net::SocketAddrV4;
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

/// The TUN device's (rx, tx) packet counters on `host`: what the engine wrote into the kernel
/// (decapsulated packets) and what the kernel handed to the engine (packets to encapsulate).
/// Packets the kernel fast path carries pass neither.
fn engine_io(lab: &Lab, host: u8) -> (u64, u64) {
    let v = lab.host(host).ip_json(&["-s", "link", "show", DEV]);
    let n = |dir: &str| v[0]["stats64"][dir]["packets"].as_u64().expect("packets");
    (n("rx"), n("tx"))
}

/// Pings sent in each direction by [`ipv6_takes_the_kernel_path`].
const PINGS: u64 = 20;

/// The kernel fast path (tc BPF) carries IPv6 pod packets both ways: the engine neither writes
/// nor reads any of the pings and their replies (the TUN device's counters stay still; the
/// send side may see a stray packet of the kernel's own, which the engine discards), while
/// the peers' counters, which include the programs' own, rise by every packet. Nothing is
/// dropped.
fn ipv6_takes_the_kernel_path(encap: Encap, tag: &str) {
    let lab = Lab::new(tag, false);
    lab.add_pods6();
    let (t1, t2) = start_pair_with(&lab, encap, 1, true);
    assert!(lab.wait_reachable(Duration::from_secs(10)));
    assert!(
        wait_reachable6(&lab),
        "ping -6 with the fast path: {:?}",
        t1.stats()
    );
    let (io1, io2) = (engine_io(&lab, 1), engine_io(&lab, 2));
    let (s1, s2) = (t1.stats().peers[0].clone(), t2.stats().peers[0].clone());
    let out = lab.p1.exec(&[
        "ping",
        "-6",
        "-q",
        "-c",
        &PINGS.to_string(),
        "-i",
        "0.02",
        "-W",
        "1",
        P2_6,
    ]);
    assert!(out.status.success(), "ping -6 p1 -> p2: {out:?}");
    let (after1, after2) = (engine_io(&lab, 1), engine_io(&lab, 2));
    assert_eq!(
        after1.0, io1.0,
        "h1's engine wrote echo replies: {after1:?}"
    );
    assert_eq!(
        after2.0, io2.0,
        "h2's engine wrote echo requests: {after2:?}"
    );
    for (host, before, after) in [(1, io1.1, after1.1), (2, io2.1, after2.1)] {
        assert!(
            after - before < PINGS / 4,
            "h{host}'s engine was handed {} packets for {PINGS} pings",
            after - before
        );
    }
    let (a1, a2) = (t1.stats().peers[0].clone(), t2.stats().peers[0].clone());
    assert!(a1.tx_packets >= s1.tx_packets + PINGS, "{a1:?}");
    assert!(a1.rx_packets >= s1.rx_packets + PINGS, "{a1:?}");
    assert!(a2.rx_packets >= s2.rx_packets + PINGS, "{a2:?}");
    assert!(a2.tx_packets >= s2.tx_packets + PINGS, "{a2:?}");
    // Inner bytes, as the engine counts them: an echo request of ping's default 64 bytes of
    // ICMPv6 is 104 bytes of IPv6.
    assert!(a2.rx_bytes >= s2.rx_bytes + PINGS * 104, "{a2:?}");
    // IPv4 next to it stays on the fast path too.
    assert!(lab.p1.ping(common::P2, 5));
    assert_eq!(engine_io(&lab, 2).0, io2.0, "IPv4 through h2's engine");
    assert_eq!(t1.stats().drops.total(), 0, "{:?}", t1.stats());
    assert_eq!(t2.stats().drops.total(), 0, "{:?}", t2.stats());
}

#[test]
#[ignore = "needs root"]
fn ipv6_takes_the_udp_kernel_path() {
    ipv6_takes_the_kernel_path(UDP, "k6u");
}

#[test]
#[ignore = "needs root"]
fn ipv6_takes_the_ipip_kernel_path() {
    ipv6_takes_the_kernel_path(Encap::Ipip, "k6i");
}

/// (bytes, packets) `dev` in `ns` has sent.
fn tx(ns: &twill_testkit::Netns, dev: &str) -> (u64, u64) {
    let v = ns.ip_json(&["-s", "link", "show", dev]);
    let tx = &v[0]["stats64"]["tx"];
    (
        tx["bytes"].as_u64().expect("tx bytes"),
        tx["packets"].as_u64().expect("tx packets"),
    )
}

/// Moves p2 behind a bridge `cni0` in h2 that holds the pods' gateways of both families, as
/// the CNI plugin does (before any traffic, so p2 learns the bridge's MAC for them).
fn bridge_pod2(lab: &Lab) {
    let h2 = &lab.h2;
    h2.ok(&["ip", "addr", "flush", "dev", "vp2"]);
    h2.ok(&["ip", "link", "add", "cni0", "type", "bridge"]);
    h2.ok(&["ip", "addr", "add", "10.244.2.1/24", "dev", "cni0"]);
    h2.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:2::1/64",
        "dev",
        "cni0",
        "nodad",
    ]);
    h2.ok(&["ip", "link", "set", "cni0", "up"]);
    h2.ok(&["ip", "link", "set", "vp2", "master", "cni0"]);
}

/// A TCP stream over IPv6 through the kernel fast path keeps its GSO super-packets whole: h1
/// sends them encapsulated as one (its underlay veth counts packets far larger than the
/// MTU), and h2 hands them decapsulated to the pod's bridge port as one (past the bridge,
/// which would segment them in software). The engine carries none of it.
fn ipv6_super_packets_stay_whole(encap: Encap, tag: &str) {
    let lab = Lab::new(tag, false);
    lab.add_pods6();
    bridge_pod2(&lab);
    let (_t1, _t2) = start_pair_with(&lab, encap, 1, true);
    assert!(wait_reachable6(&lab));
    let _server = lab.p2.spawn(&["iperf3", "-s"]);

    // The port map is copied from the bridge's forwarding table about once a second; p2 is
    // in the table since it answered the pings.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (bridged, port, sent, engine) = loop {
        let before = (
            tx(&lab.h2, "cni0"),
            tx(&lab.h2, "vp2"),
            tx(&lab.h1, "eth0"),
            (engine_io(&lab, 1), engine_io(&lab, 2)),
        );
        let out = lab.p1.exec(&["iperf3", "-6", "-c", P2_6, "-t", "2", "-J"]);
        let after = (
            tx(&lab.h2, "cni0"),
            tx(&lab.h2, "vp2"),
            tx(&lab.h1, "eth0"),
            (engine_io(&lab, 1), engine_io(&lab, 2)),
        );
        if !out.status.success() {
            assert!(Instant::now() < deadline, "iperf3 -6: {out:?}");
            continue;
        }
        let bridged = after.0.0 - before.0.0;
        let port = (after.1.0 - before.1.0, after.1.1 - before.1.1);
        let sent = (after.2.0 - before.2.0, after.2.1 - before.2.1);
        let engine = (
            after.3.0.0 - before.3.0.0 + after.3.1.0 - before.3.1.0,
            after.3.0.1 - before.3.0.1 + after.3.1.1 - before.3.1.1,
        );
        if bridged < port.0 / 20 || Instant::now() > deadline {
            break (bridged, port, sent, engine);
        }
    };
    let per_packet = |(bytes, packets): (u64, u64)| bytes / packets.max(1);
    println!(
        "{encap:?} IPv6: h1 sent {sent:?} (bytes, packets: {} B each), p2's port got {port:?} \
         ({} B each), the bridge itself {bridged} bytes; engine (rx, tx) {engine:?}",
        per_packet(sent),
        per_packet(port)
    );
    assert!(port.0 > 10_000_000, "little traffic reached p2: {port:?}");
    assert!(
        bridged < port.0 / 20,
        "the bridge still forwards the tunnel's traffic: {bridged} of {} bytes",
        port.0
    );
    assert!(
        per_packet(port) > 3000,
        "p2's port got segments, not super-packets: {port:?}"
    );
    assert!(
        per_packet(sent) > 3000,
        "h1 sent segments, not super-packets: {sent:?}"
    );
    assert_eq!(engine.0, 0, "the engines decapsulated some of the stream");
    assert!(
        engine.1 < 5,
        "the engines encapsulated some of the stream: {engine:?}"
    );
}

#[test]
#[ignore = "needs root"]
fn ipv6_super_packets_stay_whole_through_udp() {
    ipv6_super_packets_stay_whole(UDP, "g6u");
}

#[test]
#[ignore = "needs root"]
fn ipv6_super_packets_stay_whole_through_ipip() {
    ipv6_super_packets_stay_whole(Encap::Ipip, "g6i");
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

/// A tunnel packet taken apart: the outer headers (IPv4, and UDP for udp) and the inner packet.
type Tunnelled = (Vec<u8>, Vec<u8>);

/// The outer headers and the inner packet of an underlay frame from h1 to h2, after checking
/// the outer headers field by field; `None` for frames that are not the tunnel's.
fn inner_of(frame: &[u8], ipip: bool) -> Option<Result<Tunnelled, String>> {
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
    let room = if ipip { 20 } else { 28 };
    if outer.len() < room + 40 {
        return None;
    }
    let inner = &outer[room..];
    // sit's defaults: DSCP 0 with the inner ECN (CE sent as ECT(0)), TTL = inner hop limit;
    // the udp socket's: TOS 0, TTL 64. Both: DF, not a fragment.
    let ecn = match (inner[1] >> 4) & 3 {
        3 => 2,
        e => e,
    };
    let (tos, ttl) = if ipip { (ecn, inner[7]) } else { (0, 64) };
    if outer[9] != if ipip { wire::IPPROTO_IPV6 } else { 17 } {
        return None;
    }
    for (at, want) in [(1, tos), (6, 0x40), (7, 0x00), (8, ttl)] {
        if outer[at] != want {
            return Some(Err(format!(
                "outer byte {at} is {:#04x}, want {want:#04x}: {:02x?}",
                outer[at],
                &outer[..20]
            )));
        }
    }
    if !ipip {
        let udp = &outer[20..];
        let port = DEFAULT_UDP_PORT.to_be_bytes();
        let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
        if udp[..2] != port || udp[2..4] != port || len != udp.len() {
            return Some(Err(format!("UDP header {:02x?}", &udp[..8])));
        }
    }
    Some(Ok((outer[..room].to_vec(), inner.to_vec())))
}

/// Pings p2 from p1 over IPv6 with traffic class `tclass` until three tunnelled echo
/// requests captured on h2's underlay match one p1 sent (by everything after the IPv6
/// header; tcpdump starts listening some time after it was spawned, and either file may lag
/// the other by a packet). Checks each inner packet byte for byte against p1's and returns
/// the outer headers of the three.
fn tunnelled_echo_requests(lab: &Lab, ipip: bool, tclass: &str, tag: &str) -> Vec<Vec<u8>> {
    let dir = TempDir::new("tun6fmt");
    let under = dir.path().join("underlay.pcap");
    let pod = dir.path().join("pod.pcap");
    let filter = if ipip { "ip proto 41" } else { "udp port 8285" };
    let _cap1 = capture_eth0(&lab.h2, &under, filter);
    let _cap2 = capture_eth0(&lab.p1, &pod, "icmp6");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pairs = Vec::new();
    while pairs.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "{tag}: only {} tunnelled echo requests matched one of p1's",
            pairs.len()
        );
        lab.p1.exec(&[
            "ping", "-6", "-q", "-c", "1", "-W", "1", "-Q", tclass, "-p", "c0ffee11", P2_6,
        ]);
        let originals: Vec<Vec<u8>> = pcap_frames(&pod)
            .into_iter()
            .filter(|f| f.len() > 14 && f[12..14] == [0x86, 0xdd] && is_our_echo6(&f[14..]))
            .map(|f| f[14..].to_vec())
            .collect();
        let captured = pcap_frames(&under)
            .iter()
            .filter_map(|f| inner_of(f, ipip))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        pairs = captured
            .into_iter()
            .filter(|(_, i)| is_our_echo6(i))
            .filter_map(|(outer, i)| {
                let sent = originals.iter().find(|o| o[40..] == i[40..])?.clone();
                Some((outer, i, sent))
            })
            .collect();
    }
    pairs
        .into_iter()
        .map(|(outer, inner, mut sent)| {
            // The only change on the way: h1 forwarded the packet (hop limit - 1).
            sent[7] -= 1;
            assert_eq!(
                inner, sent,
                "{tag}: the inner packet is the pod's, byte for byte"
            );
            outer
        })
        .collect()
}

fn ipv6_wire_format(encap: Encap, tag: &str) {
    let lab = Lab::new(tag, false);
    lab.add_pods6();
    let (_t1, _t2) = start_pair(&lab, encap, 1);
    assert!(wait_reachable6(&lab));
    tunnelled_echo_requests(&lab, encap == Encap::Ipip, "0", tag);
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

/// The kernel fast path writes the engine's bytes: the same pings (traffic class DSCP EF
/// with CE, which sit's defaults turn into ECT(0) outside; and plain) cross a lab with the
/// engine alone and one with the fast path; the captures must show the same outer headers
/// byte for byte, the same inner packets as p1 sent, and the engine must not have seen the
/// fast path's. Two fields of udp's headers the engine leaves to its UDP socket: the kernel
/// picks the IPv4 identification (any value is right for a DF packet, RFC 6864; the fast
/// path writes 0, as the engine's ipip does) and computes a UDP checksum (the fast path sends
/// none, valid over IPv4); the header checksum follows the identification.
fn ipv6_kernel_path_wire_format(encap: Encap, tag: &str) {
    let ipip = encap == Encap::Ipip;
    let mut outers = Vec::new();
    for kernel_path in [false, true] {
        let tag = format!("{tag}{}", if kernel_path { "k" } else { "e" });
        let lab = Lab::new(&tag, false);
        lab.add_pods6();
        let (_t1, _t2) = start_pair_with(&lab, encap, 1, kernel_path);
        assert!(wait_reachable6(&lab));
        let engine_rx = engine_io(&lab, 2).0;
        let mut seen = Vec::new();
        for tclass in ["0xbb", "0"] {
            seen.push(tunnelled_echo_requests(&lab, ipip, tclass, &tag)[0].clone());
        }
        if kernel_path {
            assert_eq!(
                engine_io(&lab, 2).0,
                engine_rx,
                "the fast path, not the engine, must have decapsulated the echo requests"
            );
        }
        outers.push(seen);
    }
    let socket_fields = |mut outer: Vec<u8>| {
        if !ipip {
            for at in [4, 5, 10, 11, 26, 27] {
                outer[at] = 0;
            }
        }
        outer
    };
    for (engine, kernel) in outers[0].iter().zip(&outers[1]) {
        assert_eq!(
            socket_fields(engine.clone()),
            socket_fields(kernel.clone()),
            "outer headers: engine {engine:02x?}, kernel fast path {kernel:02x?}"
        );
        assert_eq!(kernel[4..6], [0, 0], "the fast path's identification");
        if !ipip {
            assert_eq!(
                kernel[26..28],
                [0, 0],
                "the fast path sends no UDP checksum"
            );
        }
    }
    if ipip {
        assert_eq!(outers[1][0][1], 0x02, "CE inside is ECT(0) outside");
    }
}

#[test]
#[ignore = "needs root"]
fn ipv6_in_udp_kernel_path_wire_format_is_the_engines() {
    ipv6_kernel_path_wire_format(UDP, "w6u");
}

#[test]
#[ignore = "needs root"]
fn ipv6_in_protocol_41_kernel_path_wire_format_is_the_engines() {
    ipv6_kernel_path_wire_format(Encap::Ipip, "w6i");
}

/// Sends `inner` to h2's tunnel from the namespace the calling thread is in, whose underlay
/// address is `src`: as the payload of protocol 41 (the kernel writes the outer header), or
/// as a UDP payload to port 8285 without a UDP checksum, as the kernel fast path sends it
/// (a datagram with one would go past the fast path's checks straight to the engine).
fn send_to_h2(src: std::net::Ipv4Addr, ipip: bool, inner: &[u8]) {
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
        let (sock, dst) = common::raw_socket_to_h2();
        let (mut udp, mut pkt) = (Vec::new(), Vec::new());
        common::encapsulate_to_h2(src, false, inner, &mut udp, &mut pkt);
        sock.send_to(&pkt, &dst).expect("send udp");
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

/// Forged IPv6 tunnel packets (unknown outer source, inner source outside the peer's IPv6
/// subnet, inner destination outside ours, IPv6 from a peer without an IPv6 subnet) are
/// dropped and counted by the engine; with the kernel fast path, which passes all of them to
/// the engine untouched, too (a packet the fast path took would not reach the engine's
/// counters), while the legitimate IPv6 traffic takes the fast path.
fn forged_ipv6_is_dropped_and_counted(encap: Encap, tag: &str, kernel_path: bool) {
    let ipip = encap == Encap::Ipip;
    let lab = Lab::new(tag, true);
    lab.add_pods6();
    let (_t1, t2) = start_pair_with(&lab, encap, 1, kernel_path);
    assert!(wait_reachable6(&lab));
    let x = lab.x.as_ref().unwrap();
    let h2_sees = |d: &twill_tunnel::DropCounters| (d.unknown_peer, d.spoofed_inner_source);
    let before = h2_sees(&t2.stats().drops);

    // An attacker that is no peer, with a perfectly plausible inner packet.
    Lab::in_ns(x, || {
        for _ in 0..5 {
            send_to_h2(common::X, ipip, &echo6(P1_6, P2_6));
        }
    });
    wait_drops(&t2, "unknown outer source", before.0 + 5, |d| {
        d.unknown_peer
    });

    // The peer h1 (a compromised node, or a pod's packet the host forwards blindly) with an
    // inner source outside its IPv6 subnet: another node's pods, and this node's own.
    Lab::in_ns(&lab.h1, || {
        for src in ["fd00:3::2", "fd00:2::9", "::ffff:10.244.1.2"] {
            send_to_h2(H1, ipip, &echo6(src, P2_6));
        }
    });
    wait_drops(&t2, "spoofed inner source", before.1 + 3, |d| {
        d.spoofed_inner_source
    });

    // To a destination that is not this node's.
    let foreign = t2.stats().drops.foreign_inner_destination;
    Lab::in_ns(&lab.h1, || send_to_h2(H1, ipip, &echo6(P1_6, "fd00:3::2")));
    wait_drops(&t2, "foreign inner destination", foreign + 1, |d| {
        d.foreign_inner_destination
    });

    // A peer without an IPv6 subnet may send no IPv6 at all.
    t2.set_peers(&[Lab::peer_of(1)]);
    let spoofed = t2.stats().drops.spoofed_inner_source;
    Lab::in_ns(&lab.h1, || send_to_h2(H1, ipip, &echo6(P1_6, P2_6)));
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
    if kernel_path {
        let engine_rx = engine_io(&lab, 2).0;
        assert!(ping6_five_times(&lab), "ping -6 -c 5 p1 -> p2");
        assert_eq!(
            engine_io(&lab, 2).0,
            engine_rx,
            "legitimate IPv6 takes the fast path again"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn forged_ipv6_in_udp_is_dropped_and_counted() {
    forged_ipv6_is_dropped_and_counted(UDP, "s6u", false);
}

#[test]
#[ignore = "needs root"]
fn forged_ipv6_in_protocol_41_is_dropped_and_counted() {
    forged_ipv6_is_dropped_and_counted(Encap::Ipip, "s6i", false);
}

#[test]
#[ignore = "needs root"]
fn forged_ipv6_in_udp_passes_the_kernel_path_to_the_engine() {
    forged_ipv6_is_dropped_and_counted(UDP, "s6v", true);
}

#[test]
#[ignore = "needs root"]
fn forged_ipv6_in_protocol_41_passes_the_kernel_path_to_the_engine() {
    forged_ipv6_is_dropped_and_counted(Encap::Ipip, "s6k", true);
}
