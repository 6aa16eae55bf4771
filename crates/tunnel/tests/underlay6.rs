//! The userspace engine over an IPv6 underlay (issue 15): udp (Flannel's framing in IPv6 UDP)
//! and ipip as Linux's `ip6tnl` in `mode any` (next header 4 for IPv4 inside, 41 for IPv6
//! inside), carrying both pod families, with the receive checks of the IPv4 underlay.
//!
//! The lab of `common` gets IPv6 underlay addresses (h1 fd00:77::1, h2 fd00:77::2, x
//! fd00:77::3) and IPv6 pods. This kernel has no `ip6tnl` module, so interoperability is
//! checked on the wire both ways: what the engine sends is compared field by field with what
//! `ip6tnl` sends with its defaults (hop limit 64, traffic class 0 plus the inner ECN, flow
//! label 0) and the inner packet byte for byte with the pod's; and the engine must take what
//! a default `ip6tnl` sends — including its Tunnel Encapsulation Limit destination option —
//! written byte for byte on a raw socket.
//!
//! Also here: protocol 41 over the IPv4 underlay is received on every queue, each keeping its
//! share of flows (every packet delivered exactly once).

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::time::{Duration, Instant};

use common::{H1, H1_6, H2, H2_6, Lab, X_6, capture_eth0, pcap_frames};
use socket2::{Domain, Protocol, Socket, Type};
use twill_testkit::{Netns, TempDir};
use twill_tunnel::wire::{self, build_ipv4, build_ipv6};
use twill_tunnel::{DEFAULT_UDP_PORT, DropCounters, Encap, Peer, Tunnel, TunnelConfig};

const UDP: Encap = Encap::Udp {
    port: DEFAULT_UDP_PORT,
};
const DEV: &str = "twill.tun";
const P1_6: &str = "fd00:1::2";
const P2_6: &str = "fd00:2::2";
const PATTERN: &str = "c0ffee11";

fn underlay6(host: u8) -> Ipv6Addr {
    if host == 1 { H1_6 } else { H2_6 }
}

/// A dual-stack tunnel on `host` over the IPv6 underlay; `with_ipv4`: the node has its IPv4
/// underlay address too (its peers are still reached over IPv6).
fn config6(encap: Encap, host: u8, queues: usize, with_ipv4: bool) -> TunnelConfig {
    let cfg = Lab::config(encap, DEV, host, queues);
    TunnelConfig {
        mtu: 1500 - encap.overhead6(),
        local_subnet6: Some(format!("fd00:{host}::/64").parse().unwrap()),
        local_ip: cfg.local_ip.filter(|_| with_ipv4),
        local_ip6: Some(underlay6(host)),
        ..cfg
    }
}

/// Node `host` as a peer known by its IPv6 underlay address.
fn peer6(host: u8) -> Peer {
    Peer {
        subnet6: Some(format!("fd00:{host}::/64").parse().unwrap()),
        underlay: underlay6(host).into(),
        ..Lab::peer_of(host)
    }
}

/// A lab with IPv6 pods and an IPv6 underlay (and the attacker x with `attacker`).
fn lab6(tag: &str, attacker: bool) -> Lab {
    let lab = Lab::new(tag, attacker);
    lab.add_underlay6();
    lab.add_pods6();
    lab
}

/// Routes both families of the other host's pods into the device on `hosts` and sets the
/// pods' MTU.
fn route_pods(lab: &Lab, hosts: &[u8], mtu: u32) {
    for &host in hosts {
        let other = 3 - host;
        let ns = lab.host(host);
        let (v4, v6) = (format!("10.244.{other}.0/24"), format!("fd00:{other}::/64"));
        ns.ok(&["ip", "route", "replace", &v4, "dev", DEV]);
        ns.ok(&["ip", "-6", "route", "replace", &v6, "dev", DEV]);
    }
    lab.set_pod_mtu(mtu);
}

fn start6(lab: &Lab, host: u8, cfg: TunnelConfig) -> Tunnel {
    Lab::in_ns(lab.host(host), || Tunnel::start(cfg)).expect("start tunnel")
}

/// Both tunnels over the IPv6 underlay, each with the other as its peer.
fn start_pair6(lab: &Lab, encap: Encap, queues: usize, with_ipv4: bool) -> (Tunnel, Tunnel) {
    let t1 = start6(lab, 1, config6(encap, 1, queues, with_ipv4));
    let t2 = start6(lab, 2, config6(encap, 2, queues, with_ipv4));
    t1.set_peers(&[peer6(2)]);
    t2.set_peers(&[peer6(1)]);
    route_pods(lab, &[1, 2], 1500 - encap.overhead6());
    (t1, t2)
}

fn ping(lab: &Lab, dst: &str) -> bool {
    lab.p1
        .exec(&["ping", "-q", "-c", "1", "-W", "1", "-p", PATTERN, dst])
        .status
        .success()
}

fn wait_ping(lab: &Lab, dst: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping(lab, dst) {
            return true;
        }
    }
    false
}

/// `iperf3 -n 2M` from p1 to `dst`, retried until it succeeds or 20 s pass.
fn iperf(lab: &Lab, dst: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = lab.p1.exec(&["iperf3", "-c", dst, "-n", "2M"]);
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
}

fn both_families_over_ipv6(encap: Encap, tag: &str, with_ipv4: bool) {
    let lab = lab6(tag, false);
    let (t1, t2) = start_pair6(&lab, encap, 2, with_ipv4);
    assert!(wait_ping(&lab, P2_6), "ping -6 p1 -> p2: {:?}", t1.stats());
    assert!(
        wait_ping(&lab, common::P2),
        "ping p1 -> p2: {:?}",
        t1.stats()
    );
    let _server = lab.p2.spawn(&["iperf3", "-s"]);
    iperf(&lab, P2_6).unwrap_or_else(|e| panic!("iperf3 over IPv6 inside: {e}"));
    iperf(&lab, common::P2).unwrap_or_else(|e| panic!("iperf3 over IPv4 inside: {e}"));
    let (s1, s2) = (t1.stats(), t2.stats());
    assert_eq!(s1.peers[0].underlay, IpAddr::V6(H2_6));
    assert!(s1.peers[0].tx_bytes > 2_000_000, "{s1:?}");
    assert!(s2.peers[0].rx_bytes > 2_000_000, "{s2:?}");
    assert_eq!(s1.drops.total(), 0, "{s1:?}");
    assert_eq!(s2.drops.total(), 0, "{s2:?}");
}

#[test]
#[ignore = "needs root"]
fn udp_over_an_ipv6_only_underlay_carries_both_families() {
    both_families_over_ipv6(UDP, "u6o", false);
}

#[test]
#[ignore = "needs root"]
fn ipip_over_an_ipv6_only_underlay_carries_both_families() {
    both_families_over_ipv6(Encap::Ipip, "i6o", false);
}

#[test]
#[ignore = "needs root"]
fn udp_over_ipv6_on_a_dual_stack_underlay() {
    both_families_over_ipv6(UDP, "u6d", true);
}

#[test]
#[ignore = "needs root"]
fn ipip_over_ipv6_on_a_dual_stack_underlay() {
    both_families_over_ipv6(Encap::Ipip, "i6d", true);
}

/// Whether `ip` (an IPv4 or IPv6 packet) is an echo request from p1 carrying our pattern.
fn is_our_echo(ip: &[u8]) -> bool {
    let pattern = [0xc0, 0xff, 0xee, 0x11];
    let from_p1 = match ip.first().map(|b| b >> 4) {
        Some(4) => {
            ip.len() > 28
                && ip[9] == 1
                && ip[20] == 8
                && ip[12..16] == common::P1.parse::<Ipv4Addr>().unwrap().octets()
        }
        Some(6) => {
            ip.len() > 48
                && ip[6] == 58
                && ip[40] == 128
                && ip[8..24] == P1_6.parse::<Ipv6Addr>().unwrap().octets()
        }
        _ => false,
    };
    from_p1 && ip.windows(4).any(|w| w == pattern)
}

/// The inner packet of an underlay frame from h1 to h2 after checking the outer IPv6 header
/// (and UDP header) against `ip6tnl`'s defaults / Flannel's framing; `None` for frames that
/// are not the tunnel's.
fn inner_of6(frame: &[u8], ipip: bool) -> Option<Result<Vec<u8>, String>> {
    if frame.len() < 14 + 40 || frame[12..14] != [0x86, 0xdd] {
        return None;
    }
    let outer = &frame[14..];
    if outer[8..24] != H1_6.octets() || outer[24..40] != H2_6.octets() {
        return None;
    }
    let payload_len = usize::from(u16::from_be_bytes([outer[4], outer[5]]));
    let (next_header, hop_limit) = (outer[6], outer[7]);
    if payload_len + 40 != outer.len() {
        return Some(Err(format!("outer payload length {payload_len}")));
    }
    let body = &outer[40..];
    let inner = if ipip {
        if next_header != wire::IPPROTO_IPIP && next_header != wire::IPPROTO_IPV6 {
            return None;
        }
        let version = if next_header == wire::IPPROTO_IPIP {
            4
        } else {
            6
        };
        if body.first().map(|b| b >> 4) != Some(version) {
            return Some(Err(format!(
                "next header {next_header} carries {body:02x?}"
            )));
        }
        body
    } else {
        if next_header != 17 {
            return None;
        }
        let port = DEFAULT_UDP_PORT.to_be_bytes();
        let len = usize::from(u16::from_be_bytes([body[4], body[5]]));
        if body[2..4] != port || len != body.len() {
            return Some(Err(format!("UDP header {:02x?}", &body[..8])));
        }
        &body[8..]
    };
    // ip6tnl's defaults: version 6, traffic class 0 with the inner ECN (0 for ping), hop
    // limit 64 (the udp socket's default hop limit is 64 too). The flow label is the
    // kernel's automatic one (ip6tnl's too, with the default net.ipv6.auto_flowlabels).
    let traffic_class = |ip: &[u8]| match ip[0] >> 4 {
        4 => ip[1],
        _ => (ip[0] << 4) | (ip[1] >> 4),
    };
    let want_class = if ipip { traffic_class(inner) & 3 } else { 0 };
    if outer[0] >> 4 != 6 || traffic_class(outer) != want_class || hop_limit != 64 {
        return Some(Err(format!("outer IPv6 header {:02x?}", &outer[..40])));
    }
    Some(Ok(inner.to_vec()))
}

/// `sent` as h1 forwards it: TTL / hop limit one less (and the IPv4 header checksum redone).
fn forwarded(mut sent: Vec<u8>) -> Vec<u8> {
    if sent[0] >> 4 == 4 {
        sent[8] -= 1;
        sent[10..12].copy_from_slice(&[0, 0]);
        let sum = wire::checksum(&sent[..20]);
        sent[10..12].copy_from_slice(&sum.to_be_bytes());
    } else {
        sent[7] -= 1;
    }
    sent
}

fn wire_format_over_ipv6(encap: Encap, tag: &str) {
    let ipip = encap == Encap::Ipip;
    let lab = lab6(tag, false);
    let (_t1, _t2) = start_pair6(&lab, encap, 1, false);
    assert!(wait_ping(&lab, P2_6) && wait_ping(&lab, common::P2));
    let dir = TempDir::new("tun6u");
    let under = dir.path().join("underlay.pcap");
    let pod = dir.path().join("pod.pcap");
    let filter = if ipip {
        "ip6 and (ip6 proto 4 or ip6 proto 41)"
    } else {
        "ip6 and udp port 8285"
    };
    let _cap1 = capture_eth0(&lab.h2, &under, filter);
    let _cap2 = capture_eth0(&lab.p1, &pod, "icmp or icmp6");
    // Ping both families until three tunnelled echo requests of each match one p1 sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "{tag}: too few tunnelled echo requests matched p1's"
        );
        ping(&lab, P2_6);
        ping(&lab, common::P2);
        let originals: Vec<Vec<u8>> = pcap_frames(&pod)
            .into_iter()
            .filter(|f| f.len() > 14 && is_our_echo(&f[14..]))
            .map(|f| f[14..].to_vec())
            .collect();
        let inners = pcap_frames(&under)
            .iter()
            .filter_map(|f| inner_of6(f, ipip))
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{tag}: {e}"));
        let matched: Vec<(Vec<u8>, Vec<u8>)> = inners
            .into_iter()
            .filter(|i| is_our_echo(i))
            .filter_map(|i| {
                let sent = originals.iter().find(|o| forwarded((*o).clone()) == i)?;
                Some((i, sent.clone()))
            })
            .collect();
        let of = |v: u8| matched.iter().filter(|(i, _)| i[0] >> 4 == v).count();
        if of(4) >= 3 && of(6) >= 3 {
            break;
        }
    }
}

#[test]
#[ignore = "needs root"]
fn udp_over_ipv6_wire_format() {
    wire_format_over_ipv6(UDP, "w6u");
}

#[test]
#[ignore = "needs root"]
fn ip6tnl_wire_format() {
    wire_format_over_ipv6(Encap::Ipip, "w6i");
}

/// An ICMP echo request from `src` to `dst` (either family) with a valid checksum.
fn echo(src: &str, dst: &str) -> Vec<u8> {
    let mut p = Vec::new();
    match (
        src.parse::<IpAddr>().unwrap(),
        dst.parse::<IpAddr>().unwrap(),
    ) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
            let sum = wire::checksum(&icmp);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            build_ipv4(s, d, 1, 64, &icmp, &mut p);
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let mut icmp = vec![128, 0, 0, 0, 0x12, 0x34, 0, 1];
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&s.octets());
            pseudo.extend_from_slice(&d.octets());
            pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
            pseudo.extend_from_slice(&[0, 0, 0, 58]);
            pseudo.extend_from_slice(&icmp);
            let sum = wire::checksum(&pseudo);
            icmp[2..4].copy_from_slice(&sum.to_be_bytes());
            build_ipv6(s, d, 58, 64, &icmp, &mut p);
        }
        _ => panic!("mixed families"),
    }
    p
}

/// Sends `inner` from `src` (an address of the calling thread's namespace) to h2's tunnel
/// over IPv6: in UDP to port 8285, or as a default `ip6tnl` writes it — outer IPv6 header
/// (hop limit 64), with `encap_limit` the Tunnel Encapsulation Limit destination option
/// (limit 4, padded to 8 bytes: RFC 2473 §5.1), then the inner packet.
fn send6_to_h2(ipip: bool, encap_limit: bool, src: Ipv6Addr, inner: &[u8]) {
    if !ipip {
        let s = UdpSocket::bind(SocketAddr::V6(SocketAddrV6::new(src, 0, 0, 0))).expect("bind");
        s.send_to(
            inner,
            SocketAddr::V6(SocketAddrV6::new(H2_6, DEFAULT_UDP_PORT, 0, 0)),
        )
        .expect("send udp");
        return;
    }
    let next_header = if inner[0] >> 4 == 4 {
        wire::IPPROTO_IPIP
    } else {
        wire::IPPROTO_IPV6
    };
    let mut body = Vec::new();
    let first = if encap_limit {
        // type 4 (encapsulation limit) length 1 value 4, then PadN of 1 byte.
        body.extend_from_slice(&[next_header, 0, 4, 1, 4, 1, 1, 0]);
        60 // destination options
    } else {
        next_header
    };
    body.extend_from_slice(inner);
    let mut pkt = Vec::new();
    build_ipv6(src, H2_6, first, 64, &body, &mut pkt);
    // IPPROTO_RAW over IPv6: we write the whole packet, IPv6 header included.
    let s = Socket::new(
        Domain::IPV6,
        Type::RAW,
        Some(Protocol::from(libc::IPPROTO_RAW)),
    )
    .expect("raw IPv6 socket");
    s.send_to(
        &pkt,
        &SocketAddr::V6(SocketAddrV6::new(H2_6, 0, 0, 0)).into(),
    )
    .expect("send ip6tnl packet");
}

/// Waits until `counter` of `t`'s stats reaches `want`.
fn wait_for(
    t: &Tunnel,
    what: &str,
    want: u64,
    counter: impl Fn(&twill_tunnel::TunnelStats) -> u64,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = t.stats();
        if counter(&s) >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: want {want}, have {s:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a real sender puts on an IPv6 underlay reaches the pod (p2 answers through the
/// tunnel), and forged packets are dropped and counted by reason.
fn receives_and_checks_over_ipv6(encap: Encap, tag: &str) {
    let ipip = encap == Encap::Ipip;
    let lab = lab6(tag, true);
    // Only h2 runs the engine: h1 plays a plain ip6tnl / udp sender.
    let t2 = start6(&lab, 2, config6(encap, 2, 2, false));
    t2.set_peers(&[peer6(1)]);
    route_pods(&lab, &[2], 1500 - encap.overhead6());
    let x = lab.x.as_ref().unwrap();
    let rx = |s: &twill_tunnel::TunnelStats| s.peers[0].rx_packets;
    let tx = |s: &twill_tunnel::TunnelStats| s.peers[0].tx_packets;
    let drops = |f: fn(&DropCounters) -> u64| move |s: &twill_tunnel::TunnelStats| f(&s.drops);

    let mut want_rx = 0;
    for (inner, encap_limit) in [
        (echo(common::P1, common::P2), true),
        (echo(P1_6, P2_6), true),
        (echo(common::P1, common::P2), false),
        (echo(P1_6, P2_6), false),
    ] {
        Lab::in_ns(&lab.h1, || send6_to_h2(ipip, encap_limit, H1_6, &inner));
        want_rx += 1;
        wait_for(&t2, "a legitimate packet", want_rx, rx);
        // p2 answered: the reply went back into the tunnel, to h1.
        wait_for(&t2, "p2's reply", want_rx, tx);
    }
    assert_eq!(t2.stats().drops.total(), 0, "{:?}", t2.stats());

    // An attacker that is no peer (on the same segment), with a plausible inner packet.
    Lab::in_ns(x, || {
        for inner in [echo(common::P1, common::P2), echo(P1_6, P2_6)] {
            send6_to_h2(ipip, true, X_6, &inner);
        }
    });
    wait_for(&t2, "unknown outer source", 2, drops(|d| d.unknown_peer));
    // The peer with inner sources outside its subnets, and to a destination not ours.
    Lab::in_ns(&lab.h1, || {
        for inner in [
            echo("10.244.3.2", common::P2),
            echo("10.244.2.9", common::P2),
            echo("fd00:3::2", P2_6),
            echo("::ffff:10.244.1.2", P2_6),
        ] {
            send6_to_h2(ipip, true, H1_6, &inner);
        }
        send6_to_h2(ipip, true, H1_6, &echo(P1_6, "fd00:3::2"));
    });
    wait_for(
        &t2,
        "spoofed inner source",
        4,
        drops(|d| d.spoofed_inner_source),
    );
    wait_for(
        &t2,
        "foreign inner destination",
        1,
        drops(|d| d.foreign_inner_destination),
    );
    // The same peer known by its IPv4 underlay address only: its IPv6 source is unknown.
    t2.set_peers(&[Peer {
        underlay: H1.into(),
        ..peer6(1)
    }]);
    Lab::in_ns(&lab.h1, || send6_to_h2(ipip, true, H1_6, &echo(P1_6, P2_6)));
    wait_for(
        &t2,
        "peer known by its IPv4 address",
        3,
        drops(|d| d.unknown_peer),
    );
    assert_eq!(rx(&t2.stats()), want_rx, "{:?}", t2.stats());
}

#[test]
#[ignore = "needs root"]
fn udp_over_ipv6_receives_and_drops_forgeries() {
    receives_and_checks_over_ipv6(UDP, "r6u");
}

#[test]
#[ignore = "needs root"]
fn ip6tnl_packets_are_received_and_forgeries_dropped() {
    receives_and_checks_over_ipv6(Encap::Ipip, "r6i");
}

/// The raw protocol-41 sockets bound to `addr` in `ns` and their receive queues (bytes), from
/// /proc/net/raw.
fn proto41_sockets(ns: &Netns, addr: Ipv4Addr) -> Vec<u64> {
    // The address as the kernel prints it: its bytes in memory order, as one hex number.
    let want = format!("{:08X}:0029", u32::from_ne_bytes(addr.octets()));
    ns.ok(&["cat", "/proc/net/raw"])
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some(want.as_str()))
        .filter_map(|l| {
            let queues = l.split_whitespace().nth(4)?;
            u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
        })
        .collect()
}

#[test]
#[ignore = "needs root"]
fn protocol_41_is_received_on_every_queue_exactly_once() {
    let queues = 3;
    let lab = Lab::new("q41", false);
    lab.add_pods6();
    let cfg = |host: u8| TunnelConfig {
        local_subnet6: Some(format!("fd00:{host}::/64").parse().unwrap()),
        ..Lab::config(Encap::Ipip, DEV, host, queues)
    };
    let t2 = start6(&lab, 2, cfg(2));
    t2.set_peers(&[Peer {
        subnet6: Some("fd00:1::/64".parse().unwrap()),
        ..Lab::peer_of(1)
    }]);
    assert_eq!(
        proto41_sockets(&lab.h2, H2).len(),
        queues,
        "one protocol-41 socket per queue"
    );
    // 300 packets of 100 flows (inner sources) from h1, as sit would send them; p2 drops
    // them (bad ICMPv6 checksum), so nothing comes back.
    let n = 300;
    Lab::in_ns(&lab.h1, || {
        let s = Socket::new(
            Domain::IPV4,
            Type::RAW,
            Some(Protocol::from(i32::from(wire::IPPROTO_IPV6))),
        )
        .expect("raw protocol-41 socket");
        for i in 0..n {
            let mut inner = Vec::new();
            let src = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2 + (i % 100) as u16);
            build_ipv6(
                src,
                P2_6.parse().unwrap(),
                58,
                64,
                &[128, 0, 0, 0],
                &mut inner,
            );
            s.send_to(&inner, &SocketAddrV4::new(H2, 0).into())
                .expect("send protocol 41");
        }
    });
    let rx = |s: &twill_tunnel::TunnelStats| s.peers[0].rx_packets;
    wait_for(&t2, "protocol-41 packets", n, rx);
    // Once every socket's queue is empty, no copy can still come: each packet was taken by
    // exactly one queue.
    let deadline = Instant::now() + Duration::from_secs(30);
    while proto41_sockets(&lab.h2, H2).iter().any(|q| *q > 0) {
        assert!(Instant::now() < deadline, "raw queues never drained");
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = t2.stats();
    assert_eq!(rx(&s), n, "{s:?}");
    assert_eq!(s.drops.total(), 0, "{s:?}");
}

/// A node of an IPv6-only cluster: no IPv4 pod subnet (and no IPv4 underlay), peers known by
/// their IPv6 subnet and IPv6 underlay address alone.
fn config_ipv6_only(encap: Encap, host: u8) -> TunnelConfig {
    TunnelConfig {
        local_subnet: None,
        ..config6(encap, host, 2, false)
    }
}

fn peer_ipv6_only(host: u8) -> Peer {
    Peer {
        subnet: None,
        ..peer6(host)
    }
}

/// Two IPv6-only nodes carry their pods' IPv6 over the IPv6 underlay; the receiver keeps its
/// checks (outer source a peer's, inner source inside that peer's IPv6 subnet, inner
/// destination inside ours) and takes no IPv4 at all, even from its peer.
fn ipv6_only_nodes(encap: Encap, tag: &str) {
    let ipip = encap == Encap::Ipip;
    let lab = lab6(tag, true);
    let t1 = start6(&lab, 1, config_ipv6_only(encap, 1));
    let t2 = start6(&lab, 2, config_ipv6_only(encap, 2));
    t1.set_peers(&[peer_ipv6_only(2)]);
    t2.set_peers(&[peer_ipv6_only(1)]);
    for host in [1u8, 2] {
        let other = 3 - host;
        let v6 = format!("fd00:{other}::/64");
        lab.host(host)
            .ok(&["ip", "-6", "route", "replace", &v6, "dev", DEV]);
    }
    lab.set_pod_mtu(1500 - encap.overhead6());
    assert!(wait_ping(&lab, P2_6), "ping -6 p1 -> p2: {:?}", t1.stats());
    let _server = lab.p2.spawn(&["iperf3", "-s"]);
    iperf(&lab, P2_6).unwrap_or_else(|e| panic!("iperf3 between IPv6-only nodes: {e}"));
    // iperf3 -n ends when the client has written: wait for the stream to be carried (the
    // counters see less than the 2 MB, as in the dual-stack tests).
    wait_for(&t1, "the stream through the tunnel", 500_000, |s| {
        s.peers[0].tx_bytes
    });
    let s1 = t1.stats();
    assert_eq!(s1.peers[0].subnet, None);
    assert_eq!(s1.peers[0].underlay, IpAddr::V6(H2_6));
    assert_eq!(s1.drops.total(), 0, "{s1:?}");
    assert_eq!(t2.stats().drops.total(), 0, "{:?}", t2.stats());
    // The serialised stats have no IPv4 subnet.
    let json = serde_json::to_value(&s1).unwrap();
    assert!(json["peers"][0].get("subnet").is_none(), "{json}");

    let drops = |f: fn(&DropCounters) -> u64| move |s: &twill_tunnel::TunnelStats| f(&s.drops);
    // IPv4 from the peer itself: no IPv4 is a packet on this node.
    Lab::in_ns(&lab.h1, || {
        send6_to_h2(ipip, false, H1_6, &echo(common::P1, common::P2));
    });
    wait_for(
        &t2,
        "IPv4 inside, on an IPv6-only node",
        1,
        drops(|d| d.malformed),
    );
    // IPv6 from a host that is no peer.
    Lab::in_ns(lab.x.as_ref().unwrap(), || {
        send6_to_h2(ipip, false, X_6, &echo(P1_6, P2_6));
    });
    wait_for(&t2, "unknown outer source", 1, drops(|d| d.unknown_peer));
    // The peer, with inner sources outside its IPv6 subnet, and to a destination not ours.
    Lab::in_ns(&lab.h1, || {
        for src in ["fd00:3::2", "fd00:2::9", "::ffff:10.244.1.2"] {
            send6_to_h2(ipip, false, H1_6, &echo(src, P2_6));
        }
        send6_to_h2(ipip, false, H1_6, &echo(P1_6, "fd00:3::2"));
    });
    wait_for(
        &t2,
        "spoofed inner source",
        3,
        drops(|d| d.spoofed_inner_source),
    );
    wait_for(
        &t2,
        "foreign inner destination",
        1,
        drops(|d| d.foreign_inner_destination),
    );
    // Each packet counts once, as received or dropped: all six forgeries were dropped (the
    // received count may still grow by the tail of the iperf3 connection).
    let s2 = t2.stats();
    assert_eq!(s2.drops.total(), 6, "{s2:?}");
    // And the pods still talk.
    assert!(wait_ping(&lab, P2_6), "ping -6 after the forgeries");
}

#[test]
#[ignore = "needs root"]
fn udp_between_ipv6_only_nodes() {
    ipv6_only_nodes(UDP, "u6n");
}

#[test]
#[ignore = "needs root"]
fn ipip_between_ipv6_only_nodes() {
    ipv6_only_nodes(Encap::Ipip, "i6n");
}

#[test]
fn a_tunnel_needs_a_pod_subnet() {
    let cfg = TunnelConfig {
        local_subnet: None,
        local_subnet6: None,
        ..config6(UDP, 1, 1, false)
    };
    let err = Tunnel::start(cfg).unwrap_err().to_string();
    assert!(err.contains("no pod subnet"), "{err}");
}
