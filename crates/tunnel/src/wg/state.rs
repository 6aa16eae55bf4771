//! WireGuard state shared by the workers, the handle and the timer thread: this node's
//! identity (key pair + cookie rate limiter, swapped whole on rotation) and, per peer, one
//! boringtun `Tunn` behind a mutex with its stable index and its (roaming) endpoint.
//!
//! The per-peer state hangs off the peer table's entries, so `set_peers` swaps it together
//! with the rest of the table: a peer whose key is unchanged keeps its `Tunn` (sessions,
//! counters, replay windows); a removed peer's `Tunn` is dropped at once, and a worker still
//! holding the previous table finds the slot empty, so a node that leaves loses access
//! immediately.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use socket2::Socket;
use zeroize::Zeroizing;

use super::{PrivateKey, PublicKey, WireguardConfig};
use crate::Shared;
use crate::peers::{FastMap, PeerTable};
pub(crate) use crate::wg_peer::WgPeer;

/// Handshake messages per second processed without proof of the sender's address; beyond
/// it, each must carry a valid cookie MAC (mac2) or is answered with a cookie reply only.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// How often the timer thread runs each peer's rekey/keepalive/retry timers.
const TIMER_TICK: Duration = Duration::from_millis(100);
/// Room for any message boringtun writes outside the data path (handshakes, keepalives,
/// queued packets flushed after a handshake).
pub(crate) const CONTROL_BUF: usize = 65_536 + 64;
/// Peer indices are 24 bits: boringtun puts a session counter in the low 8 of the 32-bit
/// index it sends.
const INDEX_MASK: u32 = 0x00ff_ffff;

/// This node's key pair and the rate limiter keyed by its public key (mac1, cookies).
pub(crate) struct Identity {
    pub secret: x25519::StaticSecret,
    pub public: x25519::PublicKey,
    pub limiter: Arc<RateLimiter>,
}

impl Identity {
    pub(crate) fn new(key: &PrivateKey) -> Identity {
        let secret = key.secret().clone();
        let public = x25519::PublicKey::from(&secret);
        Identity {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
        }
    }
}

/// WireGuard state of the tunnel.
pub(crate) struct WgShared {
    pub identity: ArcSwap<Identity>,
    psk: Option<Zeroizing<[u8; 32]>>,
    keepalive: u16,
    port: u16,
    next_index: Mutex<u32>,
    /// Duplicates of the first queue's sockets, for messages sent outside a worker's batch
    /// (timers, handshakes started by rotation), so they leave from the WireGuard port.
    control: ControlSockets,
}

/// One socket per underlay family the node has (IPv4, IPv6).
pub(crate) struct ControlSockets {
    pub v4: Option<Socket>,
    pub v6: Option<Socket>,
}

impl ControlSockets {
    /// The socket that sends to `to`, if the node has its family.
    pub(crate) fn for_dest(&self, to: &SocketAddr) -> Option<&Socket> {
        match to {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }
}

impl WgShared {
    pub(crate) fn new(cfg: &WireguardConfig, port: u16, control: ControlSockets) -> WgShared {
        let mut start = [0u8; 4];
        {
            use ring::rand::SecureRandom;
            // An unpredictable first index only makes indices harder to guess; any works.
            let _ = ring::rand::SystemRandom::new().fill(&mut start);
        }
        WgShared {
            identity: ArcSwap::from_pointee(Identity::new(&cfg.private_key)),
            psk: cfg.preshared_key.map(Zeroizing::new),
            keepalive: cfg.persistent_keepalive,
            port,
            next_index: Mutex::new(u32::from_le_bytes(start) & INDEX_MASK),
            control,
        }
    }

    pub(crate) fn public_key(&self) -> PublicKey {
        PublicKey(self.identity.load().public.to_bytes())
    }

    fn new_tunn(&self, identity: &Identity, peer: &PublicKey, index: u32) -> Tunn {
        Tunn::new(
            identity.secret.clone(),
            peer.x25519(),
            self.psk.as_deref().copied(),
            (self.keepalive > 0).then_some(self.keepalive),
            index,
            Some(Arc::clone(&identity.limiter)),
        )
    }

    /// Gives `table` (just built from the configured peers) the WireGuard state of its
    /// entries, reusing `old`'s for unchanged keys, and empties the state of peers that are
    /// gone. Returns the entries whose key is new for their node: a handshake is started with
    /// them at once, since the peer may be rotating and will not retry for seconds.
    pub(crate) fn attach(&self, table: &mut PeerTable, old: &PeerTable) -> Vec<usize> {
        let identity = self.identity.load();
        let kept: HashMap<PublicKey, &Arc<WgPeer>> = old
            .entries
            .iter()
            .filter_map(|e| e.wg.as_ref().map(|w| (w.key, w)))
            .collect();
        let old_keys: HashMap<&str, PublicKey> = old
            .entries
            .iter()
            .filter_map(|e| e.wg.as_ref().map(|w| (e.peer.node.as_str(), w.key)))
            .collect();
        let mut in_use: HashSet<u32> = kept.values().map(|w| w.index).collect();
        let mut initiate = Vec::new();
        let mut by_index = FastMap::default();
        let mut by_key = HashMap::new();
        for (i, e) in table.entries.iter_mut().enumerate() {
            let Some(key) = e.peer.public_key else {
                continue;
            };
            if by_key.contains_key(&key) {
                continue;
            }
            // Either family; a peer of a family this node has no socket for is kept (its
            // sends count as errors) so that it can still roam to one it has.
            let configured = SocketAddr::new(e.peer.underlay, self.port);
            let wg = match kept.get(&key) {
                Some(w) => {
                    w.configure(configured);
                    Arc::clone(w)
                }
                None => {
                    let index = self.alloc_index(&mut in_use);
                    if old_keys
                        .get(e.peer.node.as_str())
                        .is_some_and(|k| *k != key)
                    {
                        initiate.push(i);
                    }
                    Arc::new(WgPeer::new(
                        key,
                        index,
                        self.new_tunn(&identity, &key, index),
                        configured,
                    ))
                }
            };
            by_index.insert(wg.index, i);
            by_key.insert(key, i);
            e.wg = Some(wg);
        }
        for (key, w) in &kept {
            if !by_key.contains_key(key) {
                w.lock().take();
            }
        }
        table.wg_by_index = by_index;
        table.wg_by_key = by_key;
        initiate
    }

    fn alloc_index(&self, in_use: &mut HashSet<u32>) -> u32 {
        let mut next = self.next_index.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            *next = next.wrapping_add(1) & INDEX_MASK;
            if in_use.insert(*next) {
                return *next;
            }
        }
    }

    /// Switches to `key`: every peer's `Tunn` gets it (boringtun drops their sessions) and a
    /// handshake is started with each peer right away.
    pub(crate) fn set_private_key(&self, key: &PrivateKey, table: &PeerTable) {
        let identity = Arc::new(Identity::new(key));
        self.identity.store(Arc::clone(&identity));
        for e in &table.entries {
            if let Some(w) = &e.wg
                && let Some(t) = w.lock().as_mut()
            {
                t.set_static_private(
                    identity.secret.clone(),
                    identity.public,
                    Some(Arc::clone(&identity.limiter)),
                );
                self.initiate(t, w);
            }
        }
        tracing::info!(public_key = %PublicKey(identity.public.to_bytes()).short(), "WireGuard key rotated");
    }

    /// Sends a fresh handshake initiation to the peers at `entries` of `table`.
    pub(crate) fn initiate_with(&self, table: &PeerTable, entries: &[usize]) {
        for &i in entries {
            if let Some(w) = table.entries.get(i).and_then(|e| e.wg.as_ref())
                && let Some(t) = w.lock().as_mut()
            {
                self.initiate(t, w);
            }
        }
    }

    fn initiate(&self, t: &mut Tunn, w: &WgPeer) {
        let mut buf = [0u8; 256];
        if let TunnResult::WriteToNetwork(msg) = t.format_handshake_initiation(&mut buf, true) {
            self.send_control(msg, w.endpoint());
        }
    }

    fn send_control(&self, msg: &[u8], to: SocketAddr) {
        let Some(sock) = self.control.for_dest(&to) else {
            tracing::debug!(%to, "WireGuard control send: no underlay address of its family");
            return;
        };
        if let Err(e) = sock.send_to(msg, &to.into()) {
            tracing::debug!(error = %e, %to, "WireGuard control send failed");
        }
    }

    /// The timer thread: every [`TIMER_TICK`] runs each peer's timers and sends what they
    /// ask for (handshake retries, rekeys, keepalives); every second resets the handshake
    /// rate count. Returns when the tunnel stops.
    pub(crate) fn run_timers(&self, shared: &Shared) {
        let mut buf = vec![0u8; CONTROL_BUF];
        let mut last_reset = Instant::now();
        while !shared.stop.load(Ordering::Relaxed) {
            let table = shared.peers.load();
            for e in &table.entries {
                let Some(w) = &e.wg else { continue };
                let mut tunn = w.lock();
                let Some(t) = tunn.as_mut() else { continue };
                if let TunnResult::WriteToNetwork(msg) = t.update_timers(&mut buf) {
                    self.send_control(msg, w.endpoint());
                }
            }
            drop(table);
            if last_reset.elapsed() >= Duration::from_secs(1) {
                self.identity.load().limiter.reset_count();
                last_reset = Instant::now();
            }
            let mut fds = [PollFd::new(shared.stop_fd.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(TIMER_TICK.as_millis() as u16));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    use crate::Peer;

    fn peer(node: &str, n: u8, key: PublicKey) -> Peer {
        Peer {
            node: node.into(),
            subnet: Some(format!("10.244.{n}.0/24").parse().unwrap()),
            subnet6: None,
            underlay: Ipv4Addr::new(127, 0, 0, n).into(),
            public_key: Some(key),
        }
    }

    fn table(wg: &WgShared, peers: &[Peer], old: &PeerTable) -> (PeerTable, Vec<usize>) {
        let mut t = PeerTable::build(peers, 51820, Some(old));
        let initiate = wg.attach(&mut t, old);
        (t, initiate)
    }

    #[test]
    fn unchanged_keys_keep_their_state_and_removed_ones_lose_it() {
        let control = ControlSockets {
            v4: Some(Socket::from(
                std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
            )),
            v6: None,
        };
        let cfg = WireguardConfig {
            private_key: PrivateKey::generate(),
            preshared_key: None,
            persistent_keepalive: 0,
        };
        let wg = WgShared::new(&cfg, 51820, control);
        let (a, b, a2) = (
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
            PrivateKey::generate().public_key(),
        );
        let without_key = Peer {
            public_key: None,
            ..peer("c", 3, a)
        };
        let (t1, initiate) = table(
            &wg,
            &[peer("a", 1, a), peer("b", 2, b), without_key],
            &PeerTable::default(),
        );
        assert!(initiate.is_empty(), "new peers handshake on demand");
        assert!(
            t1.entries[2].wg.is_none(),
            "a peer without key gets no state"
        );
        let (wa, wb) = (
            Arc::clone(t1.entries[0].wg.as_ref().unwrap()),
            Arc::clone(t1.entries[1].wg.as_ref().unwrap()),
        );
        assert_ne!(wa.index, wb.index);
        assert!(wa.index <= INDEX_MASK && wb.index <= INDEX_MASK);
        assert_eq!(t1.wg_peer_by_index(wb.index << 8 | 7), Some(1));
        assert_eq!(t1.wg_by_key.get(&a), Some(&0));

        // b leaves: its Tunn goes at once, even for holders of the old table.
        let (t2, _) = table(&wg, &[peer("a", 1, a)], &t1);
        assert!(Arc::ptr_eq(t2.entries[0].wg.as_ref().unwrap(), &wa));
        assert!(wb.lock().is_none());
        assert!(wa.lock().is_some());
        assert_eq!(t2.wg_peer_by_index(wb.index << 8), None);

        // a rotates its key: new state, and a handshake is started with it right away.
        let (t3, initiate) = table(&wg, &[peer("a", 1, a2)], &t2);
        assert_eq!(initiate, vec![0]);
        let wa2 = t3.entries[0].wg.as_ref().unwrap();
        assert_ne!(wa2.index, wa.index);
        assert!(wa.lock().is_none(), "the old key's session is gone");
        assert_eq!(
            wa2.endpoint(),
            SocketAddr::from(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 51820))
        );

        // A peer known by its IPv6 underlay address starts at that address.
        let six = Peer {
            underlay: Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2).into(),
            ..peer("a", 1, a2)
        };
        let (t4, _) = table(&wg, &[six], &t3);
        let wa6 = t4.entries[0].wg.as_ref().unwrap();
        assert!(Arc::ptr_eq(wa6, t3.entries[0].wg.as_ref().unwrap()));
        assert_eq!(
            wa6.endpoint(),
            SocketAddr::from(SocketAddrV6::new(
                Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2),
                51820,
                0,
                0
            ))
        );
    }

    #[test]
    fn roaming_follows_authenticated_sources_and_config_resets_it() {
        let tunn_key = PrivateKey::generate();
        let tunn = Tunn::new(
            tunn_key.secret().clone(),
            PrivateKey::generate().public_key().x25519(),
            None,
            None,
            1,
            None,
        );
        let configured: SocketAddr = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 51820).into();
        let w = WgPeer::new(tunn_key.public_key(), 1, tunn, configured);
        let roamed: SocketAddr = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 7), 40000).into();
        w.authenticated_from(roamed);
        assert_eq!(w.endpoint(), roamed);
        // Across families too: the next authenticated packet came over IPv6.
        let roamed6: SocketAddr = "[2001:db8::7]:40001".parse().unwrap();
        w.authenticated_from(roamed6);
        assert_eq!(w.endpoint(), roamed6);
        w.authenticated_from(roamed);
        assert_eq!(w.endpoint(), roamed);
        w.configure(configured);
        assert_eq!(
            w.endpoint(),
            roamed,
            "the same configuration keeps the roamed one"
        );
        let moved: SocketAddr = "[2001:db8::9]:51820".parse().unwrap();
        w.configure(moved);
        assert_eq!(w.endpoint(), moved);
        assert!(w.may_hint());
        assert!(!w.may_hint(), "at most one hinted handshake a second");
    }
}
