//! Session protection over loopback, in process: TCP-MD5 (RFC 2385) and GTSM (RFC 5082).
//! No root needed: TCP_MD5SIG, IP_TTL and IP_MINTTL are ordinary socket options.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;
use twill_bgp::codec::{self, Incoming, OpenInfo};
use twill_bgp::{Afi, Password, PeerConfig, Speaker, SpeakerEvent, State, sockopt};

const T: Duration = Duration::from_secs(20);
/// How long a session that must not come up is watched (several connect retries).
const WATCH: Duration = Duration::from_secs(5);

mod common;
use common::{ip, peer_of, speaker};

fn pw(s: &str) -> Option<Password> {
    Some(Password::new(s).unwrap())
}

async fn state(s: &Speaker, peer: IpAddr) -> State {
    s.status()
        .await
        .unwrap()
        .peers
        .iter()
        .find(|p| p.address == peer)
        .map(|p| p.state)
        .unwrap_or(State::Idle)
}

async fn wait_established(s: &Speaker, peer: IpAddr) {
    let start = Instant::now();
    while state(s, peer).await != State::Established {
        assert!(start.elapsed() < T, "{peer} never reached Established");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for `peer` to be in `want`, then forgets the events so far.
async fn wait_state(
    s: &Speaker,
    peer: IpAddr,
    want: State,
    ev: &mut UnboundedReceiver<SpeakerEvent>,
) {
    let start = Instant::now();
    while state(s, peer).await != want {
        assert!(start.elapsed() < T, "{peer} never reached {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while ev.try_recv().is_ok() {}
}

/// Watches for WATCH that the session with `peer` never leaves the states in `allowed`.
async fn stays_in(s: &Speaker, peer: IpAddr, allowed: &[State]) {
    let start = Instant::now();
    while start.elapsed() < WATCH {
        let st = state(s, peer).await;
        assert!(allowed.contains(&st), "peer {peer} reached {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two speakers, A at `a` and B at `b`, each keyed as given; A originates 10.99.a.0/24.
async fn pair(
    a: u8,
    b: u8,
    key_a: Option<Password>,
    key_b: Option<Password>,
) -> (
    Speaker,
    Speaker,
    UnboundedReceiver<SpeakerEvent>,
    UnboundedReceiver<SpeakerEvent>,
) {
    let (sa, ea) = speaker(a, 65000).await;
    let (sb, eb) = speaker(b, 65000).await;
    let mut pa = peer_of(a, &sb, b, 65000);
    pa.password = key_a;
    let mut pb = peer_of(b, &sa, a, 65000);
    pb.password = key_b;
    sa.add_peer(pa).unwrap();
    sb.add_peer(pb).unwrap();
    sa.originate(format!("10.99.{a}.0/24").parse().unwrap(), None)
        .unwrap();
    (sa, sb, ea, eb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_matching_keys_establish_and_routes_flow() {
    let (a, b, _ea, mut eb) = pair(100, 101, pw("s3cret-mesh"), pw("s3cret-mesh")).await;
    wait_established(&a, ip(101)).await;
    wait_established(&b, ip(100)).await;
    let want: ipnet::IpNet = "10.99.100.0/24".parse().unwrap();
    let start = Instant::now();
    'outer: loop {
        while let Ok(ev) = eb.try_recv() {
            if let SpeakerEvent::BestRoutes(c) = ev
                && c.iter().any(|c| c.prefix == want && c.best.is_some())
            {
                break 'outer;
            }
        }
        assert!(start.elapsed() < T, "B never learned A's prefix");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The key never shows in what the speaker says about its peers.
    let st = format!(
        "{:?} {}",
        a.status().await.unwrap(),
        serde_json::to_string(&a.status().await.unwrap()).unwrap()
    );
    assert!(!st.contains("s3cret"), "{st}");
    let p = PeerConfig {
        password: pw("s3cret-mesh"),
        ..PeerConfig::new(ip(1), 1)
    };
    assert!(!format!("{p:?}").contains("s3cret"));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_wrong_key_gives_no_session() {
    let (a, b, _ea, _eb) = pair(102, 103, pw("right"), pw("wrong")).await;
    let not_up = [State::Idle, State::Connect, State::Active];
    tokio::join!(
        stays_in(&a, ip(103), &not_up),
        stays_in(&b, ip(102), &not_up)
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_missing_key_on_one_side_gives_no_session() {
    let (a, b, _ea, _eb) = pair(104, 105, pw("only-a-has-it"), None).await;
    let not_up = [State::Idle, State::Connect, State::Active];
    tokio::join!(
        stays_in(&a, ip(105), &not_up),
        stays_in(&b, ip(104), &not_up)
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A raw connection from `from` to `to`, signed with `key` when given, with TTL `ttl`.
async fn raw_connect(
    from: IpAddr,
    to: SocketAddr,
    key: Option<&[u8]>,
    ttl: Option<u32>,
) -> std::io::Result<TcpStream> {
    let sock = if to.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(from, 0))?;
    if let Some(k) = key {
        sockopt::set_md5_key(&sock, to.ip(), Some(k))?;
    }
    if let Some(t) = ttl {
        socket2::SockRef::from(&sock).set_ttl_v4(t)?;
    }
    match timeout(Duration::from_secs(3), sock.connect(to)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "connect timed out",
        )),
    }
}

/// Reads one BGP message (None: closed, reset or nothing within the time).
async fn read_msg(s: &mut TcpStream, within: Duration) -> Option<Incoming> {
    let mut hdr = [0u8; 19];
    timeout(within, s.read_exact(&mut hdr)).await.ok()?.ok()?;
    let len = usize::from(u16::from_be_bytes([hdr[16], hdr[17]]));
    let mut body = vec![0u8; len - 19];
    s.read_exact(&mut body).await.ok()?;
    let mut f = hdr.to_vec();
    f.extend(body);
    codec::decode_message(&f, true).ok()
}

fn open_as(asn: u32, id: u8) -> Vec<u8> {
    let open = OpenInfo {
        asn,
        hold_time: 30,
        router_id: Ipv4Addr::new(10, 0, 0, id),
        families: [Afi::Ipv4].into(),
        asn4: true,
        route_refresh: true,
        graceful_restart: None,
    };
    codec::encode_message(&open.to_message()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_connection_to_keyed_listener_never_reaches_the_speaker() {
    let (s, mut ev) = speaker(106, 65000).await;
    let mut p = PeerConfig::new(ip(107), 65000);
    p.passive = true;
    p.password = pw("listener-key");
    s.add_peer(p).unwrap();
    let to = s.listen_addr().unwrap();
    // The speaker's commands come first: once status answers, the key is on the listener.
    wait_state(&s, ip(107), State::Active, &mut ev).await;
    // Unsigned, and wrongly signed: the kernel drops the SYN; no connection, nothing for
    // the speaker (no state change at all).
    let e = raw_connect(ip(107), to, None, None).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    let e = raw_connect(ip(107), to, Some(b"guessed"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
    while let Ok(e) = ev.try_recv() {
        assert!(
            !matches!(e, SpeakerEvent::PeerState { .. }),
            "the speaker saw the connection: {e:?}"
        );
    }
    assert_eq!(state(&s, ip(107)).await, State::Active);
    // The control: signed with the right key, the same connection gets the speaker's OPEN.
    let mut c = raw_connect(ip(107), to, Some(b"listener-key"), None)
        .await
        .unwrap();
    c.write_all(&open_as(65000, 107)).await.unwrap();
    assert!(matches!(read_msg(&mut c, T).await, Some(Incoming::Open(_))));
    // A peer removed takes its key with it: the listener no longer insists on signatures
    // from that address (an unconfigured address is refused with a NOTIFICATION).
    s.remove_peer(ip(107)).unwrap();
    assert!(s.status().await.unwrap().peers.is_empty());
    let mut c = raw_connect(ip(107), to, None, None).await.unwrap();
    assert!(matches!(
        read_msg(&mut c, T).await,
        Some(Incoming::Notification(_))
    ));
    s.shutdown().await.unwrap();
}

/// A speaker listening on an IPv4 and an IPv6 address (a dual-stack node's underlay
/// addresses): each keyed peer's connections are checked on the listener of its family.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_hold_on_every_listener_of_the_peers_family() {
    let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    let mut cfg = twill_bgp::SpeakerConfig::new(65000, Ipv4Addr::new(10, 0, 0, 110));
    cfg.listen = Some(SocketAddr::new(ip(110), 0));
    cfg.listen_also = vec![SocketAddr::new(v6, 0)];
    let (s, mut ev) = Speaker::start(cfg).await.unwrap();
    let [to4, to6] = s.listen_addrs() else {
        panic!("two listeners: {:?}", s.listen_addrs());
    };
    let (to4, to6) = (*to4, *to6);
    assert!(to4.is_ipv4() && to6.is_ipv6(), "{to4} {to6}");
    for (peer, key) in [(ip(111), "key-over-ipv4"), (v6, "key-over-ipv6")] {
        let mut p = PeerConfig::new(peer, 65000);
        p.passive = true;
        p.password = pw(key);
        s.add_peer(p).unwrap();
        wait_state(&s, peer, State::Active, &mut ev).await;
    }
    for (peer, to, key, other_key) in [
        (ip(111), to4, "key-over-ipv4", "key-over-ipv6"),
        (v6, to6, "key-over-ipv6", "key-over-ipv4"),
    ] {
        // Unsigned, or signed with the other peer's key: dropped by the kernel.
        let e = raw_connect(peer, to, None, None).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{peer}: {e}");
        let e = raw_connect(peer, to, Some(other_key.as_bytes()), None)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{peer}: {e}");
        // Its own key: the speaker answers with its OPEN.
        let mut c = raw_connect(peer, to, Some(key.as_bytes()), None)
            .await
            .unwrap_or_else(|e| panic!("{peer} with its key: {e}"));
        c.write_all(&open_as(65000, 111)).await.unwrap();
        assert!(
            matches!(read_msg(&mut c, T).await, Some(Incoming::Open(_))),
            "{peer}"
        );
    }
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtsm_sessions_establish_and_send_ttl_255() {
    // Two speakers with ttl security on both sides: up (loopback keeps TTL 255).
    let (a, _ea) = speaker(108, 65000).await;
    let (b, _eb) = speaker(109, 65000).await;
    let mut pa = peer_of(108, &b, 109, 65000);
    pa.ttl_security = true;
    let mut pb = peer_of(109, &a, 108, 65000);
    pb.ttl_security = true;
    a.add_peer(pa).unwrap();
    b.add_peer(pb).unwrap();
    wait_established(&a, ip(109)).await;
    wait_established(&b, ip(108)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    // What the speaker's own SYN carries: TTL 255.
    let l = TcpListener::bind(SocketAddr::new(ip(111), 0))
        .await
        .unwrap();
    sockopt::set_listener_gtsm(&l).unwrap();
    let (c, _ec) = speaker(110, 65000).await;
    let mut p = PeerConfig::new(ip(111), 65000);
    p.port = l.local_addr().unwrap().port();
    p.local_address = Some(ip(110));
    p.ttl_security = true;
    c.add_peer(p).unwrap();
    let (conn, from) = timeout(T, l.accept()).await.unwrap().unwrap();
    // The check the speaker makes of what it accepts: the SYN came with TTL 255 (the copy
    // is handed out once: a second look finds none), and IP_MINTTL is 255 from then on.
    assert_eq!(sockopt::min_ttl(&conn).unwrap(), 0);
    assert!(sockopt::gtsm_accept(&conn, from).unwrap());
    assert_eq!(sockopt::min_ttl(&conn).unwrap(), 255);
    assert!(sockopt::syn_ttl(&conn).is_err());
    c.shutdown().await.unwrap();
    // A connection with an ordinary TTL does not pass.
    let plain = raw_connect(ip(111), l.local_addr().unwrap(), None, Some(64));
    let (accepted, plain) = tokio::join!(l.accept(), plain);
    let _plain = plain.unwrap();
    let (accepted, from) = accepted.unwrap();
    assert_eq!(from.ip(), ip(111));
    assert!(!sockopt::gtsm_accept(&accepted, from).unwrap());
    assert_eq!(sockopt::min_ttl(&accepted).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtsm_drops_connections_that_arrive_with_a_lower_ttl() {
    let (s, mut ev) = speaker(112, 65000).await;
    let mut p = PeerConfig::new(ip(113), 65000);
    p.passive = true;
    p.ttl_security = true;
    s.add_peer(p).unwrap();
    let to = s.listen_addr().unwrap();
    wait_state(&s, ip(113), State::Active, &mut ev).await;
    // TTL 254: one hop away (a pod behind the node). The kernel completes the handshake,
    // the speaker drops the connection without a word: no OPEN, no state change.
    let mut c = raw_connect(ip(113), to, None, Some(254)).await.unwrap();
    let _ = c.write_all(&open_as(65000, 113)).await;
    assert_eq!(read_msg(&mut c, Duration::from_secs(5)).await, None);
    while let Ok(e) = ev.try_recv() {
        assert!(
            !matches!(e, SpeakerEvent::PeerState { .. }),
            "the speaker used the connection: {e:?}"
        );
    }
    assert_eq!(state(&s, ip(113)).await, State::Active);
    // The control: TTL 255 gets the OPEN.
    let mut c = raw_connect(ip(113), to, None, Some(255)).await.unwrap();
    c.write_all(&open_as(65000, 113)).await.unwrap();
    assert!(matches!(read_msg(&mut c, T).await, Some(Incoming::Open(_))));
    s.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_made_before_the_key_was_set_is_not_taken_as_signed() {
    // The listener had no key yet when the handshake finished (a peer added while the
    // connection sat in the accept queue): its SYN carries no signature, so the check the
    // speaker makes refuses it; a signed one passes.
    let l = TcpListener::bind(SocketAddr::new(ip(115), 0))
        .await
        .unwrap();
    sockopt::set_listener_gtsm(&l).unwrap();
    let to = l.local_addr().unwrap();
    let (a, c) = tokio::join!(l.accept(), raw_connect(ip(114), to, None, None));
    let _c = c.unwrap();
    let (a, from) = a.unwrap();
    assert!(
        sockopt::check_accepted(&a, from, true, false)
            .unwrap()
            .is_some()
    );
    sockopt::set_md5_key(&l, ip(114), Some(b"k")).unwrap();
    let (a, c) = tokio::join!(l.accept(), raw_connect(ip(114), to, Some(b"k"), None));
    let _c = c.unwrap();
    let (a, from) = a.unwrap();
    assert_eq!(
        sockopt::check_accepted(&a, from, true, false).unwrap(),
        None
    );
}
