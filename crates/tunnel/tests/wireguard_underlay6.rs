//! WireGuard over an IPv6 underlay (issue 15: "both families inside, either family outside"):
//! two engines on hosts without IPv4 underlay sockets carry IPv4 and IPv6 pods in IPv6 UDP;
//! forged and garbage datagrams arriving over IPv6 are dropped and counted while traffic
//! flows; a peer roams to an authenticated packet's source of the other family; and twill
//! interoperates with a standard WireGuard peer (wireguard-go + wg) over IPv6.
//!
//! The lab of `common` gets IPv6 underlay addresses (h1 fd00:77::1, h2 fd00:77::2, x
//! fd00:77::3) and IPv6 pods (p1 fd00:1::2, p2 fd00:2::2).

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use common::{H1, H1_6, H2, H2_6, Lab, NET1, NET2, P1, P2, X_6};
use twill_testkit::{Background, TempDir};
use twill_tunnel::wg::{self, PrivateKey, PublicKey, WireguardConfig};
use twill_tunnel::{Encap, Peer, Tunnel, TunnelConfig, TunnelStats};

const DEV: &str = "twill.wg";
const PORT: u16 = wg::DEFAULT_PORT;
const ENCAP: Encap = Encap::Wireguard { port: PORT };
const P1_6: &str = "fd00:1::2";
const P2_6: &str = "fd00:2::2";
const NET1_6: &str = "fd00:1::/64";
const NET2_6: &str = "fd00:2::/64";

fn underlay6(host: u8) -> std::net::Ipv6Addr {
    if host == 1 { H1_6 } else { H2_6 }
}

/// WireGuard on `host` with its IPv6 underlay address (and its IPv4 one with `with_ipv4`),
/// carrying both pod families; the MTU leaves room for the IPv6 outer header.
fn config(host: u8, key: &PrivateKey, with_ipv4: bool) -> TunnelConfig {
    let cfg = Lab::config(ENCAP, DEV, host, 2);
    TunnelConfig {
        mtu: 1500 - ENCAP.overhead6(),
        local_subnet6: Some(format!("fd00:{host}::/64").parse().unwrap()),
        local_ip: cfg.local_ip.filter(|_| with_ipv4),
        local_ip6: Some(underlay6(host)),
        wireguard: Some(WireguardConfig {
            private_key: key.clone(),
            preshared_key: None,
            persistent_keepalive: 0,
        }),
        ..cfg
    }
}

/// Node `host` as a dual-stack WireGuard peer known by its IPv6 underlay address.
fn peer6(host: u8, key: PublicKey) -> Peer {
    Peer {
        subnet6: Some(format!("fd00:{host}::/64").parse().unwrap()),
        underlay: underlay6(host).into(),
        public_key: Some(key),
        ..Lab::peer_of(host)
    }
}

fn lab6(tag: &str, attacker: bool) -> Lab {
    let lab = Lab::new(tag, attacker);
    lab.add_underlay6();
    lab.add_pods6();
    lab
}

fn start(lab: &Lab, host: u8, cfg: TunnelConfig) -> Tunnel {
    Lab::in_ns(lab.host(host), || Tunnel::start(cfg)).expect("start WireGuard tunnel")
}

/// Routes both families of the other host's pods into `dev` on `hosts`, and sets the pods'
/// MTU.
fn route_pods(lab: &Lab, hosts: &[u8], dev: &str, mtu: u32) {
    for &host in hosts {
        let other = 3 - host;
        let ns = lab.host(host);
        let (v4, v6) = (format!("10.244.{other}.0/24"), format!("fd00:{other}::/64"));
        ns.ok(&["ip", "route", "replace", &v4, "dev", dev]);
        ns.ok(&["ip", "-6", "route", "replace", &v6, "dev", dev]);
    }
    lab.set_pod_mtu(mtu);
}

/// Both engines over the IPv6 underlay, each with the other as its peer.
fn start_pair6(lab: &Lab, with_ipv4: bool) -> (Tunnel, Tunnel, PrivateKey, PrivateKey) {
    let (k1, k2) = (PrivateKey::generate(), PrivateKey::generate());
    let t1 = start(lab, 1, config(1, &k1, with_ipv4));
    let t2 = start(lab, 2, config(2, &k2, with_ipv4));
    t1.set_peers(&[peer6(2, k2.public_key())]);
    t2.set_peers(&[peer6(1, k1.public_key())]);
    route_pods(lab, &[1, 2], DEV, 1500 - ENCAP.overhead6());
    (t1, t2, k1, k2)
}

fn ping(from: &twill_testkit::Netns, dst: &str) -> bool {
    from.exec(&["ping", "-q", "-c", "1", "-W", "1", "-s", "600", dst])
        .status
        .success()
}

/// Pings `dst` from `from` until one answer comes (the first handshake takes a moment).
fn wait_ping(from: &twill_testkit::Netns, dst: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping(from, dst) {
            return true;
        }
    }
    false
}

/// `iperf3 -n 2M` from `from` to `dst`, retried until it succeeds or 20 s pass.
fn iperf(from: &twill_testkit::Netns, dst: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = from.exec(&["iperf3", "-c", dst, "-n", "2M"]);
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
    }
}

/// Waits until `cond` holds for `t`'s stats, saying what was last seen.
fn wait_stats(t: &Tunnel, what: &str, cond: impl Fn(&TunnelStats) -> bool) {
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

fn endpoint(t: &Tunnel) -> Option<SocketAddr> {
    t.stats().peers[0].wireguard.as_ref()?.endpoint
}

fn both_families_over_ipv6(tag: &str, with_ipv4: bool) {
    let lab = lab6(tag, false);
    let (t1, t2, _, _) = start_pair6(&lab, with_ipv4);
    assert!(
        wait_ping(&lab.p1, P2_6),
        "ping -6 p1 -> p2: {:?}",
        t1.stats()
    );
    assert!(wait_ping(&lab.p1, P2), "ping p1 -> p2: {:?}", t1.stats());
    let _server = lab.p2.spawn(&["iperf3", "-s"]);
    iperf(&lab.p1, P2_6).unwrap_or_else(|e| panic!("iperf3 over IPv6 inside: {e}"));
    iperf(&lab.p1, P2).unwrap_or_else(|e| panic!("iperf3 over IPv4 inside: {e}"));
    // iperf3 -n ends once the client has written its data, not when it arrived: wait for it.
    wait_stats(&t2, "the streams at h2", |s| {
        s.peers[0].rx_bytes > 2_000_000
    });
    let (s1, s2) = (t1.stats(), t2.stats());
    assert_eq!(
        endpoint(&t1),
        Some(SocketAddr::new(H2_6.into(), PORT)),
        "{s1:?}"
    );
    assert_eq!(
        endpoint(&t2),
        Some(SocketAddr::new(H1_6.into(), PORT)),
        "{s2:?}"
    );
    assert!(s1.peers[0].tx_bytes > 2_000_000, "{s1:?}");
    assert_eq!(s1.drops.total(), 0, "{s1:?}");
    assert_eq!(s2.drops.total(), 0, "{s2:?}");
}

#[test]
#[ignore = "needs root"]
fn wireguard_over_an_ipv6_only_underlay_carries_both_families() {
    both_families_over_ipv6("wu6o", false);
}

#[test]
#[ignore = "needs root"]
fn wireguard_over_ipv6_on_a_dual_stack_underlay_carries_both_families() {
    both_families_over_ipv6("wu6d", true);
}

#[test]
#[ignore = "needs root"]
fn a_wireguard_peer_roams_to_an_authenticated_source_of_the_other_family() {
    let lab = lab6("wu6r", false);
    let (k1, k2) = (PrivateKey::generate(), PrivateKey::generate());
    let t1 = start(&lab, 1, config(1, &k1, true));
    let t2 = start(&lab, 2, config(2, &k2, true));
    // h1 knows h2 by its IPv6 address, h2 knows h1 by its IPv4 one: the first authenticated
    // packet from h1 (over IPv6) moves h2's endpoint for it to IPv6.
    t1.set_peers(&[peer6(2, k2.public_key())]);
    t2.set_peers(&[Peer {
        underlay: H1.into(),
        ..peer6(1, k1.public_key())
    }]);
    assert_eq!(endpoint(&t2), Some(SocketAddr::new(H1.into(), PORT)));
    route_pods(&lab, &[1, 2], DEV, 1500 - ENCAP.overhead6());
    assert!(wait_ping(&lab.p1, P2), "ping p1 -> p2: {:?}", t2.stats());
    wait_stats(&t2, "h2 roams to h1's IPv6 source", |s| {
        s.peers[0].wireguard.as_ref().and_then(|w| w.endpoint)
            == Some(SocketAddr::new(H1_6.into(), PORT))
    });
    assert!(
        wait_ping(&lab.p2, P1_6),
        "ping -6 p2 -> p1: {:?}",
        t2.stats()
    );
    assert_eq!(t2.stats().drops.total(), 0, "{:?}", t2.stats());
    // A new configured address replaces the roamed one.
    t2.set_peers(&[peer6(1, k1.public_key())]);
    assert_eq!(endpoint(&t2), Some(SocketAddr::new(H1_6.into(), PORT)));
    t2.set_peers(&[Peer {
        underlay: H1.into(),
        ..peer6(1, k1.public_key())
    }]);
    assert_eq!(endpoint(&t2), Some(SocketAddr::new(H1.into(), PORT)));
}

/// A handshake initiation to `to` from a key h2 does not know, made by a plain boringtun
/// `Tunn` (so its mac1 is valid for h2's key: it gets as far as the peer lookup).
fn foreign_initiation(to: PublicKey) -> Vec<u8> {
    let stranger = boringtun::x25519::StaticSecret::from(PrivateKey::generate().to_bytes());
    let mut tunn = Tunn::new(
        stranger,
        boringtun::x25519::PublicKey::from(to.0),
        None,
        None,
        9,
        None,
    );
    let mut buf = vec![0u8; 256];
    match tunn.format_handshake_initiation(&mut buf, false) {
        TunnResult::WriteToNetwork(m) => m.to_vec(),
        _ => panic!("no initiation"),
    }
}

#[test]
#[ignore = "needs root"]
fn forged_and_garbage_datagrams_over_ipv6_are_dropped_and_counted() {
    let lab = lab6("wu6g", true);
    let (t1, t2, _, k2) = start_pair6(&lab, false);
    assert!(
        wait_ping(&lab.p1, P2_6),
        "ping -6 p1 -> p2: {:?}",
        t1.stats()
    );
    let before = t2.stats();
    assert_eq!(before.drops.total(), 0, "{:?}", before.drops);
    let x = lab.x.as_ref().expect("attacker");
    let sock = Lab::in_ns(x, || UdpSocket::bind((X_6, 0)).expect("bind on x"));
    let to = SocketAddr::new(H2_6.into(), PORT);
    // Garbage: no WireGuard message type.
    sock.send_to(&[0xffu8; 100], to).unwrap();
    // A data message for a receiver index h2 never gave out (header, counter, a "tag").
    let mut data = vec![4u8, 0, 0, 0, 0xee, 0xee, 0xee, 0xee];
    data.extend_from_slice(&[0u8; 8 + 16 + 32]);
    sock.send_to(&data, to).unwrap();
    // A well-formed handshake from a stranger's key.
    sock.send_to(&foreign_initiation(k2.public_key()), to)
        .unwrap();
    wait_stats(&t2, "the forged datagrams", |s| {
        s.drops.malformed == 1 && s.drops.unknown_key == 2
    });
    let s = t2.stats();
    assert_eq!(
        s.drops.total(),
        3,
        "nothing else was dropped: {:?}",
        s.drops
    );
    assert_eq!(s.peers[0].rx_packets, before.peers[0].rx_packets, "{s:?}");
    // The peer's traffic still flows.
    assert!(ping(&lab.p1, P2_6), "ping -6 after the forgeries");
    assert!(ping(&lab.p1, P2), "ping after the forgeries");
}

/// A wireguard-go device in h2 (private key `key`) with twill on h1 as its peer at h1's IPv6
/// underlay address, allowed IPs both of h1's pod subnets, routing both into it; returns the
/// daemon. wireguard-go's control sockets (/var/run/wireguard/<name>.sock) are shared by all
/// namespaces, so the name is unique to this run.
fn wireguard_go(lab: &Lab, tmp: &TempDir, key: &PrivateKey, twill: PublicKey) -> Background {
    let name = format!("wgu6{}", twill_testkit::random_suffix(6));
    let daemon = lab.h2.spawn(&["wireguard-go", "-f", &name]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.h2.link(&name).is_none() {
        assert!(Instant::now() < deadline, "wireguard-go made no {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let key_file = tmp.path().join("wg.key");
    std::fs::write(&key_file, key.to_base64().as_bytes()).unwrap();
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
        &format!("[{H1_6}]:{PORT}"),
        "allowed-ips",
        &format!("{NET1},{NET1_6}"),
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
fn interoperates_with_wireguard_go_over_an_ipv6_underlay() {
    let lab = lab6("wu6i", false);
    // No IPv4 on h2's underlay at all: whatever wireguard-go sends is IPv6.
    lab.h2.ok(&[
        "ip",
        "-4",
        "addr",
        "del",
        &format!("{H2}/24"),
        "dev",
        "eth0",
    ]);
    let tmp = TempDir::new("wgu6i");
    let (k1, k2) = (PrivateKey::generate(), PrivateKey::generate());
    let t1 = start(&lab, 1, config(1, &k1, false));
    t1.set_peers(&[peer6(2, k2.public_key())]);
    lab.h1.ok(&["ip", "route", "replace", NET2, "dev", DEV]);
    lab.h1
        .ok(&["ip", "-6", "route", "replace", NET2_6, "dev", DEV]);
    let _daemon = wireguard_go(&lab, &tmp, &k2, k1.public_key());
    // wireguard-go's device MTU (1420) is twill's over IPv6 (1500 − 80).
    lab.set_pod_mtu(1500 - ENCAP.overhead6());

    // twill initiates (IPv4 inside), then the standard peer answers over both families.
    assert!(wait_ping(&lab.p1, P2), "ping p1 -> p2: {:?}", t1.stats());
    assert!(
        wait_ping(&lab.p1, P2_6),
        "ping -6 p1 -> p2: {:?}",
        t1.stats()
    );
    assert!(wait_ping(&lab.p2, P1), "ping p2 -> p1: {:?}", t1.stats());
    assert!(
        wait_ping(&lab.p2, P1_6),
        "ping -6 p2 -> p1: {:?}",
        t1.stats()
    );
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
    assert_eq!(endpoint(&t1), Some(SocketAddr::new(H2_6.into(), PORT)));
    assert_eq!(s.drops.total(), 0, "{:?}", s.drops);
    // wireguard-go saw twill at its IPv6 address.
    let out = lab.h2.exec(&["wg", "show", "all", "endpoints"]);
    let endpoints = String::from_utf8_lossy(&out.stdout);
    assert!(
        endpoints.contains(&format!("[{H1_6}]:{PORT}")),
        "wireguard-go's endpoint for twill: {endpoints}"
    );
}
