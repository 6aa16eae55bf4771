//! Bad input over real TCP on loopback (no root needed): a hand-driven peer sends malformed
//! UPDATEs, header garbage and wrong OPENs to a running speaker, and garbage comes from an
//! address that is not a peer. RFC 7606: malformed attributes withdraw the routes and keep
//! the session; header and OPEN errors get the right NOTIFICATION; nothing panics.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;
use twill_bgp::codec::{self, Incoming, OpenInfo, Outgoing};
use twill_bgp::{Afi, PeerConfig, Speaker, SpeakerConfig, SpeakerEvent, State};

const T: Duration = Duration::from_secs(10);

async fn start() -> (Speaker, UnboundedReceiver<SpeakerEvent>) {
    let mut cfg = SpeakerConfig::new(65001, Ipv4Addr::new(10, 0, 0, 1));
    cfg.listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.hold_time = 30;
    let mut p = PeerConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 65002);
    p.passive = true;
    cfg.peers.push(p);
    cfg.local_routes
        .push(("10.44.1.0/24".parse().unwrap(), None));
    Speaker::start(cfg).await.unwrap()
}

async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut hdr = [0u8; 19];
    s.read_exact(&mut hdr).await.ok()?;
    let len = usize::from(u16::from_be_bytes([hdr[16], hdr[17]]));
    let mut body = vec![0u8; len.saturating_sub(19)];
    s.read_exact(&mut body).await.ok()?;
    let mut f = hdr.to_vec();
    f.extend(body);
    Some(f)
}

async fn read_msg(s: &mut TcpStream) -> Option<Incoming> {
    let f = timeout(T, read_frame(s)).await.ok()??;
    Some(codec::decode_message(&f, true).expect("speaker sent a valid message"))
}

fn peer_open(asn: u32) -> Vec<u8> {
    let o = OpenInfo {
        asn,
        hold_time: 30,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        families: [Afi::Ipv4].into(),
        asn4: true,
        route_refresh: true,
        graceful_restart: None,
    };
    codec::encode_message(&o.to_message()).unwrap()
}

fn keepalive() -> Vec<u8> {
    let mut k = vec![0xff; 16];
    k.extend_from_slice(&[0, 19, 4]);
    k
}

fn raw_update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(nlri);
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(&body);
    msg
}

const GOOD: &[u8] = &[
    0x40, 1, 1, 0, // ORIGIN IGP
    0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea, // AS_PATH SEQ [65002]
    0x40, 3, 4, 127, 0, 0, 1, // NEXT_HOP
];
const NLRI: &[u8] = &[24, 10, 9, 0];

/// Establishes the session as the peer 127.0.0.1 / AS 65002 and reads the initial table.
async fn establish(addr: SocketAddr) -> (TcpStream, Vec<Incoming>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&peer_open(65002)).await.unwrap();
    assert!(matches!(read_msg(&mut s).await, Some(Incoming::Open(o)) if o.asn == 65001));
    assert_eq!(read_msg(&mut s).await, Some(Incoming::Keepalive));
    s.write_all(&keepalive()).await.unwrap();
    let mut initial = Vec::new();
    loop {
        match read_msg(&mut s).await.expect("initial table") {
            Incoming::Update(u) if u.end_of_rib == Some(Afi::Ipv4) => break,
            m => initial.push(m),
        }
    }
    (s, initial)
}

/// Waits for the next best-route event for `prefix`; true when it is a route, false when
/// it is a withdrawal.
async fn next_best(ev: &mut UnboundedReceiver<SpeakerEvent>, prefix: &str) -> bool {
    let p: IpNet = prefix.parse().unwrap();
    loop {
        if let SpeakerEvent::BestRoutes(changes) = timeout(T, ev.recv())
            .await
            .expect("event in time")
            .expect("speaker alive")
            && let Some(c) = changes.iter().rev().find(|c| c.prefix == p)
        {
            return c.best.is_some();
        }
    }
}

async fn peer_state(speaker: &Speaker) -> State {
    speaker.status().await.unwrap().peers[0].state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_updates_withdraw_and_keep_the_session() {
    let (speaker, mut ev) = start().await;
    let (mut s, initial) = establish(speaker.listen_addr().unwrap()).await;
    // The initial table carried our prefix, eBGP style.
    let Some(Incoming::Update(u)) = initial.first() else {
        panic!("{initial:?}")
    };
    assert_eq!(
        u.announced[0].1,
        vec!["10.44.1.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(u.announced[0].0.as_path_flat(), vec![65001]);
    assert_eq!(u.announced[0].0.next_hop, IpAddr::V4(Ipv4Addr::LOCALHOST));

    let mut bad_len = GOOD.to_vec();
    bad_len.extend_from_slice(&[0xc0, 99, 200, 1, 2, 3]); // length beyond the section
    let mut bad_flags = GOOD.to_vec();
    bad_flags[0] = 0x80; // ORIGIN marked optional non-transitive
    let mut bad_path = GOOD.to_vec();
    bad_path[8] = 4; // AS_PATH segment says 4 ASes, carries 1
    let mut unknown_wk = GOOD.to_vec();
    unknown_wk.extend_from_slice(&[0x40, 77, 2, 0, 0]); // unrecognised well-known
    let mut short_nh = GOOD[..13].to_vec();
    short_nh.extend_from_slice(&[0x40, 3, 2, 127, 0]); // NEXT_HOP of 2 octets

    for (name, bad) in [
        ("attribute length", bad_len),
        ("well-known flags", bad_flags),
        ("AS_PATH", bad_path),
        ("unrecognised well-known", unknown_wk),
        ("NEXT_HOP length", short_nh),
    ] {
        s.write_all(&raw_update(GOOD, NLRI)).await.unwrap();
        assert!(
            next_best(&mut ev, "10.9.0.0/24").await,
            "good UPDATE before {name}"
        );
        s.write_all(&raw_update(&bad, NLRI)).await.unwrap();
        assert!(
            !next_best(&mut ev, "10.9.0.0/24").await,
            "malformed {name}: route not withdrawn"
        );
        assert_eq!(peer_state(&speaker).await, State::Established, "{name}");
    }
    // No NOTIFICATION came back on the session: only keepalives, if anything.
    s.write_all(&keepalive()).await.unwrap();
    let mut buf = [0u8; 64];
    match timeout(Duration::from_millis(300), s.read(&mut buf)).await {
        Err(_) => {}
        Ok(Ok(n)) => assert!(n > 0 && buf[18] == 4, "unexpected message type {}", buf[18]),
        Ok(Err(e)) => panic!("session broke: {e}"),
    }
    let st = speaker.status().await.unwrap();
    assert_eq!(st.peers[0].prefixes.accepted, 0);
    assert_eq!(st.peers[0].prefixes.sent, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_garbage_resets_with_a_header_error_and_the_speaker_lives_on() {
    let (speaker, _ev) = start().await;
    let addr = speaker.listen_addr().unwrap();
    let (mut s, _) = establish(addr).await;
    let mut junk = vec![0xabu8; 16];
    junk.extend_from_slice(&[0, 19, 4]);
    s.write_all(&junk).await.unwrap();
    match read_msg(&mut s).await {
        Some(Incoming::Notification(n)) => {
            let bytes = codec::encode_message(&Outgoing::Notification(n).to_message()).unwrap();
            assert_eq!(bytes[19], 1, "error code: Message Header Error");
            assert_eq!(bytes[20], 1, "subcode: Connection Not Synchronized");
        }
        other => panic!("expected NOTIFICATION, got {other:?}"),
    }
    assert_eq!(read_frame(&mut s).await, None, "connection not closed");
    // The speaker is fine and takes the peer back.
    let (_s2, initial) = establish(addr).await;
    assert!(!initial.is_empty());
    assert_eq!(peer_state(&speaker).await, State::Established);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_from_the_wrong_as_gets_bad_peer_as() {
    let (speaker, _ev) = start().await;
    let mut s = TcpStream::connect(speaker.listen_addr().unwrap())
        .await
        .unwrap();
    s.write_all(&peer_open(65099)).await.unwrap();
    assert!(matches!(read_msg(&mut s).await, Some(Incoming::Open(_))));
    let f = timeout(T, read_frame(&mut s))
        .await
        .unwrap()
        .expect("NOTIFICATION");
    assert_eq!(
        (f[18], f[19], f[20]),
        (3, 2, 2),
        "OPEN Message Error / Bad Peer AS"
    );
    assert_ne!(peer_state(&speaker).await, State::Established);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_an_unconfigured_address_is_refused() {
    let (speaker, _ev) = start().await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut s = sock.connect(speaker.listen_addr().unwrap()).await.unwrap();
    let _ = s
        .write_all(b"GET / HTTP/1.0\r\n\r\n\x00\x01\x02garbage")
        .await;
    let f = timeout(T, read_frame(&mut s))
        .await
        .unwrap()
        .expect("NOTIFICATION");
    assert_eq!(
        (f[18], f[19], f[20]),
        (3, 6, 5),
        "Cease / Connection Rejected"
    );
    assert_eq!(read_frame(&mut s).await, None, "connection not closed");
    // Many more, quickly: nothing changes for the speaker.
    for i in 0..50u8 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.3:0".parse().unwrap()).unwrap();
        if let Ok(mut s) = sock.connect(speaker.listen_addr().unwrap()).await {
            let _ = s.write_all(&[i; 300]).await;
        }
    }
    let st = speaker.status().await.unwrap();
    assert_eq!(st.peers.len(), 1);
    assert_ne!(st.peers[0].state, State::Established);
}
