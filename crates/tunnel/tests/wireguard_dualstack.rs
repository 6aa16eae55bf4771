//! Both families inside WireGuard (issue 15): IPv6 pod packets through the WireGuard carrier
//! over the IPv4 underlay, with the receive checks of IPv4 applied to IPv6 (an authenticated
//! peer may send only from its IPv6 subnet, only into ours), and interoperability with a
//! standard WireGuard peer (wireguard-go + wg) carrying IPv6 too.
//!
//! The lab of `common` gets IPv6: pods p1 fd00:1::2/64 behind h1 and p2 fd00:2::2/64 behind
//! h2; a node's allowed IPs are its IPv4 and its IPv6 pod subnet.

mod common;

use std::net::{Ipv6Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use common::{H1, H2, Lab, NET1, NET2, P2, capture_eth0, ping_summary};
use twill_testkit::{Background, TempDir};
use twill_tunnel::wg::{self, PrivateKey, PublicKey, WireguardConfig};
use twill_tunnel::wire::build_ipv6;
use twill_tunnel::{Encap, Peer, Tunnel, TunnelConfig};

const DEV: &str = "twill.wg";
const PORT: u16 = wg::DEFAULT_PORT;
const ENCAP: Encap = Encap::Wireguard { port: PORT };
/// Pod MTU that fits both twill (1440) and wireguard-go's default device MTU (1420).
const POD_MTU: u32 = 1420;
const P1_6: &str = "fd00:1::2";
const P2_6: &str = "fd00:2::2";
const NET1_6: &str = "fd00:1::/64";
const NET2_6: &str = "fd00:2::/64";
/// The ping payload pattern: must never cross the underlay in clear.
const PATTERN: &str = "5457494c4c36434c454152"; // "TWILL6CLEAR"
const PATTERN_BYTES: &[u8] = b"TWILL6CLEAR";

/// Adds the IPv6 side to the lab's pods and hosts (no DAD: addresses are usable at once).
fn add_ipv6(lab: &Lab) {
    for (host, pod, n) in [(&lab.h1, &lab.p1, 1), (&lab.h2, &lab.p2, 2)] {
        host.ok(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        let gateway = format!("fd00:{n}::1");
        host.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{gateway}/64"),
            "dev",
            &format!("vp{n}"),
            "nodad",
        ]);
        pod.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("fd00:{n}::2/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        pod.ok(&["ip", "-6", "route", "add", "default", "via", &gateway]);
    }
}

fn subnet6(host: u8) -> ipnet::Ipv6Net {
    format!("fd00:{host}::/64").parse().unwrap()
}

fn config(host: u8, key: &PrivateKey) -> TunnelConfig {
    TunnelConfig {
        local_subnet6: Some(subnet6(host)),
        wireguard: Some(WireguardConfig {
            private_key: key.clone(),
            preshared_key: None,
            persistent_keepalive: 0,
        }),
        ..Lab::config(ENCAP, DEV, host, 0)
    }
}

/// Node `host` as a dual-stack WireGuard peer.
fn peer(host: u8, key: PublicKey) -> Peer {
    Peer {
        subnet6: Some(subnet6(host)),
        public_key: Some(key),
        ..Lab::peer_of(host)
    }
}

fn start(lab: &Lab, host: u8, key: &PrivateKey) -> Tunnel {
    let cfg = config(host, key);
    Lab::in_ns(lab.host(host), || Tunnel::start(cfg)).expect("start WireGuard tunnel")
}

/// Routes both families of the other host's pods into the device on each host.
fn route_both_families(lab: &Lab) {
    lab.route_via(DEV);
    lab.h1
        .ok(&["ip", "-6", "route", "replace", NET2_6, "dev", DEV]);
    lab.h2
        .ok(&["ip", "-6", "route", "replace", NET1_6, "dev", DEV]);
    lab.set_pod_mtu(POD_MTU);
}

fn ping6(from: &common::Lab, to: &str, count: u32) -> (u64, u64) {
    let pod = if to == P2_6 { &from.p1 } else { &from.p2 };
    let out = pod.exec(&[
        "ping",
        "-6",
        "-q",
        "-c",
        &count.to_string(),
        "-i",
        "0.05",
        "-W",
        "1",
        "-s",
        "600",
        "-p",
        PATTERN,
        to,
    ]);
    let (sent, received, _) = ping_summary(&String::from_utf8_lossy(&out.stdout));
    (sent, received)
}

/// Pings `to` once a round until one answer comes (the first handshake takes a moment).
fn wait_reachable6(lab: &Lab, to: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping6(lab, to, 1).1 == 1 {
            return true;
        }
    }
    false
}

/// The frames of a pcap file (microsecond format, little-endian, as tcpdump -w writes here).
fn pcap_frames(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_default();
    if b.len() < 24 || b[..4] != 0xa1b2_c3d4u32.to_le_bytes() {
        return Vec::new();
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let incl = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        if at + incl > b.len() {
            break;
        }
        frames.push(b[at..at + incl].to_vec());
        at += incl;
    }
    frames
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
#[ignore = "needs root"]
fn ipv6_pods_talk_through_wireguard_and_only_wireguard_crosses_the_underlay() {
    let lab = Lab::new("w6a", false);
    add_ipv6(&lab);
    let tmp = TempDir::new("wg6cap");
    let pcap = tmp.path().join("underlay.pcap");
    // Everything h2's underlay sees of either family, but the kernel's own chatter (IGMP of
    // the bridge; link-local IPv6: neighbour and router discovery, MLD, DAD).
    let cap = capture_eth0(
        &lab.h2,
        &pcap,
        "(ip and not igmp) or (ip6 and not src net fe80::/10 and not src host ::)",
    );
    let (k1, k2) = (PrivateKey::generate(), PrivateKey::generate());
    let t1 = start(&lab, 1, &k1);
    let t2 = start(&lab, 2, &k2);
    t1.set_peers(&[peer(2, k2.public_key())]);
    t2.set_peers(&[peer(1, k1.public_key())]);
    route_both_families(&lab);

    assert!(
        wait_reachable6(&lab, P2_6),
        "ping -6 p1 -> p2: {:?}",
        t1.stats()
    );
    for to in [P2_6, P1_6] {
        let (sent, received) = ping6(&lab, to, 20);
        assert!(
            sent == 20 && received == 20,
            "ping -6 {to}: {received}/{sent}; {:?} {:?}",
            t1.stats(),
            t2.stats()
        );
    }
    assert!(lab.p1.ping(P2, 3), "IPv4 next to IPv6");
    // TCP over IPv6: TSO super-packets of IPv6 are segmented, encrypted and coalesced again.
    let _server = lab.p2.spawn(&["iperf3", "-s"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    let ok = loop {
        let out = lab.p1.exec(&["iperf3", "-6", "-c", P2_6, "-n", "4M"]);
        if out.status.success() {
            break true;
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(ok, "iperf3 -6 through WireGuard: {last}");
    // tcpdump writes each packet as it comes (-U), possibly a little behind: wait until the
    // file holds the bulk of the stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    let captured = || std::fs::metadata(&pcap).map_or(0, |m| m.len());
    while captured() < 2_500_000 {
        assert!(
            Instant::now() < deadline,
            "the capture holds {} bytes",
            captured()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(cap);

    let frames = pcap_frames(&pcap);
    let mut wireguard_bytes = 0;
    for f in &frames {
        assert!(
            f.len() >= 14 + 28 && f[12..14] == [0x08, 0x00],
            "only IPv4 crosses the underlay, got ethertype {:02x?}",
            &f[12..14.min(f.len())]
        );
        let ip = &f[14..];
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        let udp = &ip[ihl..];
        let (sport, dport) = (
            u16::from_be_bytes([udp[0], udp[1]]),
            u16::from_be_bytes([udp[2], udp[3]]),
        );
        assert!(
            ip[9] == 17 && sport == PORT && dport == PORT,
            "only WireGuard crosses the underlay, got protocol {} ports {sport} -> {dport}",
            ip[9]
        );
        let msg = &udp[8..];
        assert!(
            msg.len() >= 32 && (1..=4).contains(&msg[0]) && msg[1..4] == [0, 0, 0],
            "not a WireGuard message: {:02x?}",
            &msg[..msg.len().min(8)]
        );
        wireguard_bytes += msg.len();
        assert!(
            !contains(f, PATTERN_BYTES),
            "an IPv6 pod packet crossed the underlay in clear"
        );
    }
    assert!(
        wireguard_bytes > 2_000_000,
        "the capture saw the traffic: {wireguard_bytes} bytes"
    );

    let (s1, s2) = (t1.stats(), t2.stats());
    assert_eq!(s1.peers[0].subnet6, Some(subnet6(2)));
    // iperf3 -n ends the test once the client has written its data, not when it arrived.
    assert!(s1.peers[0].tx_bytes > 2_000_000, "{s1:?}");
    assert!(s2.peers[0].rx_bytes > 2_000_000, "{s2:?}");
    assert_eq!(s1.drops.total(), 0, "{:?}", s1.drops);
    assert_eq!(s2.drops.total(), 0, "{:?}", s2.drops);
}

/// The peer h1 played by the test with h1's real key (twill on h1 is not running): a session
/// with h2's engine, through which it sends inner packets of its choosing.
struct ForgedPeer {
    tunn: Tunn,
    sock: UdpSocket,
    buf: Vec<u8>,
}

impl ForgedPeer {
    /// Completes a handshake with h2 from inside h1's namespace.
    fn connect(lab: &Lab, k1: &PrivateKey, h2_key: PublicKey) -> ForgedPeer {
        let sock = Lab::in_ns(&lab.h1, || UdpSocket::bind((H1, PORT)).expect("bind"));
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let secret = boringtun::x25519::StaticSecret::from(k1.to_bytes());
        let tunn = Tunn::new(
            secret,
            boringtun::x25519::PublicKey::from(h2_key.0),
            None,
            None,
            7,
            None,
        );
        let mut peer = ForgedPeer {
            tunn,
            sock,
            buf: vec![0u8; 2048],
        };
        let init = match peer.tunn.format_handshake_initiation(&mut peer.buf, false) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            _ => panic!("no initiation"),
        };
        peer.sock
            .send_to(&init, SocketAddrV4::new(H2, PORT))
            .expect("send initiation");
        let mut reply = vec![0u8; 2048];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no handshake response from h2");
            let Ok((n, _)) = peer.sock.recv_from(&mut reply) else {
                continue;
            };
            // The response completes the session; boringtun answers it with a keepalive.
            match peer.tunn.decapsulate(None, &reply[..n], &mut peer.buf) {
                TunnResult::WriteToNetwork(keepalive) => {
                    let keepalive = keepalive.to_vec();
                    peer.sock
                        .send_to(&keepalive, SocketAddrV4::new(H2, PORT))
                        .expect("send keepalive");
                    return peer;
                }
                TunnResult::Done => return peer,
                _ => continue,
            }
        }
    }

    /// Sends one ICMPv6 echo request from `src` to `dst` through the session.
    fn send_echo6(&mut self, src: &str, dst: &str) {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
        // Echo request type 128; the checksum does not matter to the tunnel's checks.
        let mut inner = Vec::new();
        build_ipv6(src, dst, 58, 64, &[128, 0, 0, 0, 0, 1, 0, 1], &mut inner);
        let msg = match self.tunn.encapsulate(&inner, &mut self.buf) {
            TunnResult::WriteToNetwork(m) => m.to_vec(),
            other => panic!("no data message: {other:?}"),
        };
        self.sock
            .send_to(&msg, SocketAddrV4::new(H2, PORT))
            .expect("send data");
    }
}

/// Waits until `cond` holds for h2's engine stats, saying what was last seen.
fn wait_stats(t: &Tunnel, what: &str, cond: impl Fn(&twill_tunnel::TunnelStats) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = t.stats();
        if cond(&s) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: last seen {s:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root"]
fn an_authenticated_peer_cannot_spoof_an_inner_ipv6_source_or_destination() {
    let lab = Lab::new("w6s", false);
    add_ipv6(&lab);
    let (k1, k2) = (PrivateKey::generate(), PrivateKey::generate());
    let t2 = start(&lab, 2, &k2);
    t2.set_peers(&[peer(1, k1.public_key())]);
    let mut h1 = ForgedPeer::connect(&lab, &k1, k2.public_key());
    wait_stats(&t2, "handshake", |s| {
        s.peers[0]
            .wireguard
            .as_ref()
            .is_some_and(|w| w.last_handshake_secs.is_some())
    });

    // Legitimate: from h1's IPv6 subnet to h2's.
    h1.send_echo6(P1_6, P2_6);
    wait_stats(&t2, "the legitimate packet", |s| s.peers[0].rx_packets >= 1);
    // From another node's IPv6 subnet, from outside every pool, from h1's IPv4-mapped
    // address: all outside h1's IPv6 subnet.
    for src in ["fd00:3::2", "2001:db8::1", "::ffff:10.244.1.2"] {
        h1.send_echo6(src, P2_6);
    }
    wait_stats(&t2, "the spoofed sources", |s| {
        s.drops.spoofed_inner_source == 3
    });
    // To an IPv6 address that is not h2's pods'.
    h1.send_echo6(P1_6, "fd00:9::1");
    wait_stats(&t2, "the foreign destination", |s| {
        s.drops.foreign_inner_destination == 1
    });
    let s = t2.stats();
    assert_eq!(s.peers[0].rx_packets, 1, "{s:?}");
    assert_eq!(
        s.drops.total(),
        4,
        "nothing else was dropped: {:?}",
        s.drops
    );

    // A peer without an IPv6 subnet (an IPv4-only node) sends no IPv6 at all.
    t2.set_peers(&[Peer {
        subnet6: None,
        ..peer(1, k1.public_key())
    }]);
    h1.send_echo6(P1_6, P2_6);
    wait_stats(&t2, "IPv6 from an IPv4-only peer", |s| {
        s.drops.spoofed_inner_source == 4
    });
    assert_eq!(t2.stats().peers[0].rx_packets, 1);
}

/// A wireguard-go device in h2 (private key `key`) with twill on h1 as its peer, allowed IPs
/// both of h1's pod subnets, routing both into it; returns the daemon. wireguard-go's control
/// sockets (/var/run/wireguard/<name>.sock) are shared by all namespaces, so the name is
/// unique to this run.
fn wireguard_go(lab: &Lab, tmp: &TempDir, key: &PrivateKey, twill: PublicKey) -> Background {
    let name = format!("wg6{}", twill_testkit::random_suffix(6));
    let daemon = lab.h2.spawn(&["wireguard-go", "-f", &name]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.h2.link(&name).is_none() {
        assert!(Instant::now() < deadline, "wireguard-go made no {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let key_file = tmp.path().join("wg.key");
    std::fs::write(&key_file, key.to_base64().as_bytes()).unwrap();
    let allowed = format!("{NET1},{NET1_6}");
    lab.h2.ok(&[
        "wg",
        "set",
        &name,
        "private-key",
        key_file.to_str().unwrap(),
        "listen-port",
        &PORT.to_string(),
        "peer",
        &twill.to_string(),
        "endpoint",
        &format!("{H1}:{PORT}"),
        "allowed-ips",
        &allowed,
    ]);
    std::fs::remove_file(&key_file).unwrap();
    lab.h2.ok(&["ip", "link", "set", &name, "up"]);
    lab.h2.ok(&["ip", "route", "replace", NET1, "dev", &name]);
    lab.h2
        .ok(&["ip", "-6", "route", "replace", NET1_6, "dev", &name]);
    daemon
}

#[test]
#[ignore = "needs root"]
fn ipv6_interoperates_with_wireguard_go() {
    let lab = Lab::new("w6i", false);
    add_ipv6(&lab);
    let tmp = TempDir::new("wg6i");
    let (k1, k2) = (PrivateKey::generate(), PrivateKey::generate());
    let t1 = start(&lab, 1, &k1);
    t1.set_peers(&[peer(2, k2.public_key())]);
    lab.h1.ok(&["ip", "route", "replace", NET2, "dev", DEV]);
    lab.h1
        .ok(&["ip", "-6", "route", "replace", NET2_6, "dev", DEV]);
    let _daemon = wireguard_go(&lab, &tmp, &k2, k1.public_key());
    lab.set_pod_mtu(POD_MTU);

    // The standard peer initiates with IPv6 first, then twill answers and sends its own.
    assert!(
        wait_reachable6(&lab, P1_6),
        "ping -6 p2 -> p1 through wireguard-go: {:?}",
        t1.stats()
    );
    for to in [P1_6, P2_6] {
        let (sent, received) = ping6(&lab, to, 10);
        assert!(
            sent == 10 && received == 10,
            "ping -6 {to}: {received}/{sent}; {:?}",
            t1.stats()
        );
    }
    let _server = lab.p1.spawn(&["iperf3", "-s"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let ok = loop {
        if lab
            .p2
            .exec(&["iperf3", "-6", "-c", P1_6, "-n", "1M"])
            .status
            .success()
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(ok, "iperf3 -6 from the standard peer's pod");
    // iperf3 -n ends the test once the client has written its data, not when it arrived:
    // ask only for a good part of it.
    wait_stats(&t1, "the stream from the standard peer", |s| {
        s.peers[0].rx_bytes > 300_000
    });
    let s = t1.stats();
    assert_eq!(s.drops.total(), 0, "{:?}", s.drops);
}
