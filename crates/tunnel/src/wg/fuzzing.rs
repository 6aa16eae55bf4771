//! A harness around the WireGuard receive path for the fuzz target and the tests: the real
//! classification and decapsulation ([`super::ingress::receive`]) against one peer with an
//! established session, with a sink that applies the inner-address policy and records the
//! outcome instead of writing to sockets or a TUN device.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use boringtun::noise::{Tunn, TunnResult};
use ipnet::Ipv4Net;

use super::PrivateKey;
use super::ingress::{self, Sink};
use super::state::{Identity, WgPeer};
use crate::Peer;
use crate::peers::{PeerTable, reason_index};
use crate::wire::{self, DropReason};

const PEER_INDEX: u32 = 0x00_1234;
const PEER_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 51820);

/// What the receive path did with the datagrams fed so far.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Inner packets that passed the policy.
    pub delivered: u64,
    /// Datagrams sent back (handshake responses, cookies, queued packets).
    pub sent: u64,
    /// Drops, indexed like the engine's counters.
    pub drops: [u64; 12],
}

impl Outcome {
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[reason_index(r)]
    }
}

/// Our side (the receive path under test) and the peer's side (a plain boringtun `Tunn`).
pub struct Harness {
    table: PeerTable,
    identity: Identity,
    peer: Tunn,
    scratch: Vec<u8>,
    sink: RecordingSink,
}

struct RecordingSink {
    room: Vec<u8>,
    subnet: Ipv4Net,
    local: Ipv4Net,
    outcome: Outcome,
    last_sent: Vec<u8>,
}

impl Sink for RecordingSink {
    fn room(&mut self) -> &mut [u8] {
        &mut self.room
    }

    fn deliver(&mut self, _peer: usize, len: usize) {
        match wire::parse_ipv4(&self.room[..len])
            .map_err(|_| DropReason::Malformed)
            .and_then(|h| wire::admit(&h, &self.subnet, &self.local).map(|()| h))
        {
            Ok(h) => {
                assert!(h.total_len == len && self.subnet.contains(&h.src));
                self.outcome.delivered += 1;
            }
            Err(r) => self.drop(r),
        }
    }

    fn send(&mut self, _to: SocketAddr, datagram: &[u8], _peer: Option<usize>) {
        self.outcome.sent += 1;
        self.last_sent.clear();
        self.last_sent.extend_from_slice(datagram);
    }

    fn drop(&mut self, reason: DropReason) {
        self.outcome.drops[reason_index(reason)] += 1;
    }
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}

impl Harness {
    /// Two fresh key pairs, and a completed handshake between them.
    pub fn new() -> Harness {
        let ours = PrivateKey::generate();
        let theirs = PrivateKey::generate();
        let identity = Identity::new(&ours);
        let subnet: Ipv4Net = "10.244.1.0/24".parse().expect("subnet");
        let mut table = PeerTable::build(
            &[Peer {
                node: "peer".into(),
                subnet: Some(subnet),
                subnet6: None,
                underlay: (*PEER_ADDR.ip()).into(),
                public_key: Some(theirs.public_key()),
            }],
            PEER_ADDR.port(),
            None,
        );
        let tunn = Tunn::new(
            identity.secret.clone(),
            theirs.public_key().x25519(),
            None,
            None,
            PEER_INDEX,
            Some(Arc::clone(&identity.limiter)),
        );
        table.entries[0].wg = Some(Arc::new(WgPeer::new(
            theirs.public_key(),
            PEER_INDEX,
            tunn,
            PEER_ADDR.into(),
        )));
        table.wg_by_index.insert(PEER_INDEX, 0);
        table.wg_by_key.insert(theirs.public_key(), 0);
        let peer = Tunn::new(
            theirs.secret().clone(),
            ours.public_key().x25519(),
            None,
            None,
            0x00_0777,
            None,
        );
        let mut h = Harness {
            table,
            identity,
            peer,
            scratch: vec![0u8; super::state::CONTROL_BUF],
            sink: RecordingSink {
                room: vec![0u8; 65_536 + 64],
                subnet,
                local: "10.244.2.0/24".parse().expect("subnet"),
                outcome: Outcome::default(),
                last_sent: Vec::new(),
            },
        };
        let mut buf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) = h.peer.format_handshake_initiation(&mut buf, false)
        else {
            panic!("no handshake initiation");
        };
        let init = init.to_vec();
        h.feed(&init);
        let response = h.sink.last_sent.clone();
        let TunnResult::WriteToNetwork(keepalive) = h.peer.decapsulate(None, &response, &mut buf)
        else {
            panic!("handshake response not accepted");
        };
        let keepalive = keepalive.to_vec();
        h.feed(&keepalive);
        h.sink.outcome = Outcome::default();
        h
    }

    /// Feeds `data` as one datagram received from the peer's address (at most 65,535 bytes
    /// are used, as UDP carries no more).
    pub fn feed(&mut self, data: &[u8]) {
        let data = &data[..data.len().min(65_535)];
        ingress::receive(
            &self.table,
            &self.identity,
            &mut self.scratch,
            data,
            data.len(),
            PEER_ADDR.into(),
            &mut self.sink,
        );
    }

    /// Encrypts `inner` in the peer's current session and feeds the data message: reaches
    /// the checks of the decrypted inner packet.
    pub fn feed_sealed(&mut self, inner: &[u8]) {
        let inner = &inner[..inner.len().min(65_000)];
        let mut buf = vec![0u8; inner.len() + 256];
        if let TunnResult::WriteToNetwork(msg) = self.peer.encapsulate(inner, &mut buf) {
            let msg = msg.to_vec();
            self.feed(&msg);
        }
    }

    /// The last datagram the peer sealed, for replaying it.
    pub fn seal(&mut self, inner: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; inner.len() + 256];
        match self.peer.encapsulate(inner, &mut buf) {
            TunnResult::WriteToNetwork(msg) => msg.to_vec(),
            _ => Vec::new(),
        }
    }

    pub fn outcome(&self) -> &Outcome {
        &self.sink.outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 20 + payload.len()];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        let c = wire::checksum(&p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..].copy_from_slice(payload);
        p
    }

    #[test]
    fn authenticated_packets_pass_and_everything_else_is_counted() {
        let mut h = Harness::new();
        let good = ipv4([10, 244, 1, 5], [10, 244, 2, 7], b"hello");
        h.feed_sealed(&good);
        assert_eq!(h.outcome().delivered, 1);

        // Inner source outside the peer's subnet: authenticated, but refused by the policy.
        h.feed_sealed(&ipv4([10, 9, 9, 9], [10, 244, 2, 7], b"x"));
        assert_eq!(h.outcome().dropped(DropReason::SpoofedInnerSource), 1);

        let sealed = h.seal(&good);
        h.feed(&sealed);
        h.feed(&sealed);
        assert_eq!(h.outcome().delivered, 2);
        assert_eq!(h.outcome().dropped(DropReason::Replay), 1);

        let mut forged = h.seal(&good);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        h.feed(&forged);
        assert_eq!(h.outcome().dropped(DropReason::BadMac), 1);

        // A data message for a receiver index we never gave out.
        let mut stray = h.seal(&good);
        stray[4..8].copy_from_slice(&0x0099_0000u32.to_le_bytes());
        h.feed(&stray);
        assert_eq!(h.outcome().dropped(DropReason::UnknownKey), 1);

        // A handshake initiation from a key we do not know (mac1 is right: it is for us).
        let stranger = PrivateKey::generate();
        let mut t = Tunn::new(
            stranger.secret().clone(),
            x25519_public(&h),
            None,
            None,
            1,
            None,
        );
        let mut buf = vec![0u8; 256];
        if let TunnResult::WriteToNetwork(init) = t.format_handshake_initiation(&mut buf, false) {
            let init = init.to_vec();
            h.feed(&init);
        }
        assert_eq!(h.outcome().dropped(DropReason::UnknownKey), 2);

        for junk in [&b""[..], b"\x01\x00\x00\x00", &[4u8; 40], &[1u8; 148]] {
            h.feed(junk);
        }
        assert_eq!(h.outcome().delivered, 2);
        assert_eq!(h.outcome().dropped(DropReason::Malformed), 4);
    }

    fn x25519_public(h: &Harness) -> boringtun::x25519::PublicKey {
        h.identity.public
    }
}
