//! Speakers talking to each other (and to a hand-driven peer) over loopback, in process:
//! connection collisions, iBGP full mesh, peer removal, and the receiving side of graceful
//! restart (stale routes kept, dropped at End-of-RIB or when the restart time runs out).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use netgauze_bgp_pkt::BgpMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::timeout;
use twill_bgp::codec::{self, GrCap, Incoming, OpenInfo};
use twill_bgp::{Afi, PathAttrs, PeerConfig, Speaker, SpeakerEvent, State};

const T: Duration = Duration::from_secs(15);

mod common;
use common::{ip, peer_of, speaker};

/// Collects events and answers questions about them.
struct Events {
    rx: UnboundedReceiver<SpeakerEvent>,
    seen: Vec<SpeakerEvent>,
}

impl Events {
    fn new(rx: UnboundedReceiver<SpeakerEvent>) -> Events {
        Events {
            rx,
            seen: Vec::new(),
        }
    }

    /// Takes the events that came, one best-route change per entry.
    fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            match e {
                SpeakerEvent::BestRoutes(changes) => self.seen.extend(
                    changes
                        .into_iter()
                        .map(|c| SpeakerEvent::BestRoutes(vec![c])),
                ),
                e => self.seen.push(e),
            }
        }
    }

    async fn wait(&mut self, what: &str, mut f: impl FnMut(&[SpeakerEvent]) -> bool) {
        let start = Instant::now();
        loop {
            self.drain();
            if f(&self.seen) {
                return;
            }
            assert!(
                start.elapsed() < T,
                "timed out waiting for {what}: {:#?}",
                self.seen
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The latest best-route state of a prefix: None never seen, Some(None) withdrawn.
    fn best(&mut self, prefix: &str) -> Option<Option<twill_bgp::Route>> {
        self.drain();
        let p: IpNet = prefix.parse().unwrap();
        self.seen.iter().rev().find_map(|e| match e {
            SpeakerEvent::BestRoutes(c) if c[0].prefix == p => Some(c[0].best.clone()),
            _ => None,
        })
    }

    async fn wait_route(&mut self, prefix: &str, present: bool) -> Option<twill_bgp::Route> {
        let p: IpNet = prefix.parse().unwrap();
        self.wait(prefix, |seen| {
            seen.iter().rev().find_map(|e| match e {
                SpeakerEvent::BestRoutes(c) if c[0].prefix == p => Some(c[0].best.is_some()),
                _ => None,
            }) == Some(present)
        })
        .await;
        self.best(prefix).flatten()
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_connects_resolve_to_one_stable_session() {
    // Several rounds: both sides connect at once, so the collision path is taken in most.
    for round in 0..4u8 {
        let (a, ea) = speaker(10 + round * 2, 65001).await;
        let (b, eb) = speaker(11 + round * 2, 65002).await;
        let (la, lb) = (10 + round * 2, 11 + round * 2);
        let (mut ea, mut eb) = (Events::new(ea), Events::new(eb));
        a.originate("10.1.0.0/24".parse().unwrap(), None).unwrap();
        b.originate("10.2.0.0/24".parse().unwrap(), None).unwrap();
        a.add_peer(peer_of(la, &b, lb, 65002)).unwrap();
        b.add_peer(peer_of(lb, &a, la, 65001)).unwrap();
        let ra = ea.wait_route("10.2.0.0/24", true).await.unwrap();
        assert_eq!(ra.attrs.next_hop, ip(lb));
        eb.wait_route("10.1.0.0/24", true).await;
        // Stable: still one Established session each a little later, no withdrawals.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(state(&a, ip(lb)).await, State::Established, "round {round}");
        assert_eq!(state(&b, ip(la)).await, State::Established, "round {round}");
        assert!(ea.best("10.2.0.0/24").flatten().is_some());
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ibgp_full_mesh_and_peer_removal() {
    let (a, ea) = speaker(30, 65000).await;
    let (b, eb) = speaker(31, 65000).await;
    let (c, ec) = speaker(32, 65000).await;
    let (mut ea, mut eb, mut ec) = (Events::new(ea), Events::new(eb), Events::new(ec));
    for (s, me, others) in [
        (&a, 30, [(&b, 31), (&c, 32)]),
        (&b, 31, [(&a, 30), (&c, 32)]),
        (&c, 32, [(&a, 30), (&b, 31)]),
    ] {
        for (o, ol) in others {
            s.add_peer(peer_of(me, o, ol, 65000)).unwrap();
        }
    }
    a.originate("10.30.0.0/24".parse().unwrap(), None).unwrap();
    let rb = eb.wait_route("10.30.0.0/24", true).await.unwrap();
    let rc = ec.wait_route("10.30.0.0/24", true).await.unwrap();
    for r in [&rb, &rc] {
        assert_eq!(r.source, twill_bgp::Source::Peer(ip(30)));
        assert_eq!(r.attrs.local_pref, Some(100));
        assert!(r.attrs.as_path.is_empty());
        assert_eq!(r.attrs.originator_id, None);
    }
    // Split horizon: B did not pass A's route on to C (C has exactly one path, from A).
    let st = c.status().await.unwrap();
    let from_b = st.peers.iter().find(|p| p.address == ip(31)).unwrap();
    assert_eq!(from_b.prefixes.received, 0, "{st:?}");
    // A removes B: B loses A's route (Cease, no graceful restart); C keeps it.
    a.remove_peer(ip(31)).unwrap();
    eb.wait_route("10.30.0.0/24", false).await;
    assert!(ec.best("10.30.0.0/24").flatten().is_some());
    // A itself still has its own route and no longer lists B.
    assert!(ea.best("10.30.0.0/24").flatten().is_some());
    assert!(
        a.status()
            .await
            .unwrap()
            .peers
            .iter()
            .all(|p| p.address != ip(31))
    );
}

// ---- a hand-driven peer for graceful restart ----

async fn read_msg(s: &mut TcpStream) -> Option<Incoming> {
    let mut hdr = [0u8; 19];
    timeout(T, s.read_exact(&mut hdr)).await.ok()?.ok()?;
    let len = usize::from(u16::from_be_bytes([hdr[16], hdr[17]]));
    let mut body = vec![0u8; len - 19];
    s.read_exact(&mut body).await.ok()?;
    let mut f = hdr.to_vec();
    f.extend(body);
    Some(codec::decode_message(&f, true).unwrap())
}

async fn send(s: &mut TcpStream, m: &BgpMessage) {
    s.write_all(&codec::encode_message(m).unwrap())
        .await
        .unwrap();
}

/// Connects as 127.0.0.41 / AS 65002 with graceful restart (R bit as given).
async fn gr_peer(addr: SocketAddr, restarting: bool, gr_time: u16) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(ip(41), 0)).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let open = OpenInfo {
        asn: 65002,
        hold_time: 30,
        router_id: Ipv4Addr::new(10, 0, 0, 41),
        families: [Afi::Ipv4].into(),
        asn4: true,
        route_refresh: true,
        graceful_restart: Some(GrCap {
            restarting,
            time: gr_time,
            families: vec![(Afi::Ipv4, true)],
        }),
    };
    send(&mut s, &open.to_message()).await;
    let Some(Incoming::Open(theirs)) = read_msg(&mut s).await else {
        panic!("no OPEN")
    };
    // The speaker advertises graceful restart with the F bit for its families.
    let gr = theirs.graceful_restart.expect("speaker advertises GR");
    assert!(gr.families.contains(&(Afi::Ipv4, true)));
    assert_eq!(read_msg(&mut s).await, Some(Incoming::Keepalive));
    send(&mut s, &BgpMessage::KeepAlive).await;
    s
}

fn announce(prefixes: &[&str]) -> BgpMessage {
    let a = PathAttrs {
        as_path: vec![twill_bgp::AsSegment {
            set: false,
            asns: vec![65002],
        }],
        ..PathAttrs::local(Some(ip(41)), Afi::Ipv4)
    };
    let list: Vec<(PathAttrs, IpNet)> = prefixes
        .iter()
        .map(|p| (a.clone(), p.parse().unwrap()))
        .collect();
    codec::encode_updates(&list, &[], true).unwrap().remove(0)
}

async fn gr_speaker() -> (Speaker, Events) {
    let (s, e) = speaker(40, 65001).await;
    let mut p = PeerConfig::new(ip(41), 65002);
    p.passive = true;
    s.add_peer(p).unwrap();
    (s, Events::new(e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_receiver_keeps_stale_routes_until_end_of_rib() {
    let (s, mut ev) = gr_speaker().await;
    let addr = s.listen_addr().unwrap();
    let mut p = gr_peer(addr, false, 60).await;
    send(&mut p, &announce(&["10.41.1.0/24", "10.41.2.0/24"])).await;
    ev.wait_route("10.41.2.0/24", true).await;
    // The peer vanishes without a NOTIFICATION.
    drop(p);
    ev.wait("routes marked stale", |seen| {
        seen.iter().any(
            |e| matches!(e, SpeakerEvent::BestRoutes(c) if c[0].best.as_ref().is_some_and(|b| b.stale)),
        )
    })
    .await;
    let st = s.status().await.unwrap();
    assert_eq!(st.peers[0].prefixes.stale, 2, "{st:?}");
    assert!(
        ev.best("10.41.1.0/24").flatten().is_some(),
        "stale route withdrawn"
    );
    // It comes back restarting, re-announces only 10.41.1.0/24, then End-of-RIB.
    let mut p = gr_peer(addr, true, 60).await;
    send(&mut p, &announce(&["10.41.1.0/24"])).await;
    send(&mut p, &codec::end_of_rib(Afi::Ipv4)).await;
    ev.wait_route("10.41.2.0/24", false).await;
    let r = ev
        .best("10.41.1.0/24")
        .flatten()
        .expect("refreshed route kept");
    assert!(!r.stale);
    assert_eq!(s.status().await.unwrap().peers[0].prefixes.stale, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_receiver_drops_stale_routes_after_restart_time() {
    let (s, mut ev) = gr_speaker().await;
    let p = {
        let mut p = gr_peer(s.listen_addr().unwrap(), false, 2).await;
        send(&mut p, &announce(&["10.41.3.0/24"])).await;
        ev.wait_route("10.41.3.0/24", true).await;
        p
    };
    let gone = Instant::now();
    drop(p);
    ev.wait_route("10.41.3.0/24", false).await;
    let took = gone.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(6),
        "stale route dropped after {took:?} with a 2 s restart time"
    );
}
