//! The receive side of WireGuard without sockets: classify a datagram, find its peer, let the
//! peer's `Tunn` authenticate and decrypt it, and say what to do with the result through a
//! [`Sink`] (deliver an inner packet, send a reply, count a drop). The carrier's sink writes
//! to the TUN batch and the socket; the fuzz harness's sink only records.
//!
//! Order of checks, cheapest first, so unauthenticated input costs as little as possible:
//! message type and size (boringtun's parser), then for handshake messages mac1 and, under
//! load, the cookie (mac2) through the shared rate limiter — before any Diffie-Hellman; then
//! the peer: an initiation by the static key it carries (`parse_handshake_anon`), every other
//! message by our receiver index; only then the peer's `Tunn` (replay window before AEAD).

use std::net::SocketAddr;
use std::sync::MutexGuard;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};

use super::PublicKey;
use super::state::Identity;
use crate::peers::PeerTable;
use crate::wire::DropReason;

/// WireGuard message types (first byte; the next three are zero).
const MSG_HANDSHAKE_RESPONSE: u8 = 2;
const MSG_COOKIE_REPLY: u8 = 3;

/// Where the results of [`receive`] go.
pub(crate) trait Sink {
    /// Room for the next decrypted inner packet (at least as long as any datagram).
    fn room(&mut self) -> &mut [u8];
    /// The first `len` bytes of [`Sink::room`] are an inner packet from peer `peer`: apply the
    /// receive policy and keep it.
    fn deliver(&mut self, peer: usize, len: usize);
    /// Sends `datagram` to `to`; `peer` when it carries pod traffic of that peer (counted).
    fn send(&mut self, to: SocketAddr, datagram: &[u8], peer: Option<usize>);
    fn drop(&mut self, reason: DropReason);
}

/// The drop counter for a boringtun error.
pub(crate) fn reason(e: &WireGuardError) -> DropReason {
    use WireGuardError as E;
    match e {
        E::WrongKey | E::WrongIndex | E::NoCurrentSession => DropReason::UnknownKey,
        E::InvalidMac | E::InvalidAeadTag => DropReason::BadMac,
        E::DuplicateCounter => DropReason::Replay,
        E::InvalidCounter => DropReason::StaleCounter,
        E::InvalidTai64nTimestamp
        | E::WrongTai64nTimestamp
        | E::UnexpectedPacket
        | E::UnderLoad
        | E::ConnectionExpired
        | E::LockFailed => DropReason::HandshakeRejected,
        E::DestinationBufferTooSmall
        | E::IncorrectPacketLength
        | E::WrongPacketType
        | E::InvalidPacket => DropReason::Malformed,
    }
}

/// Processes the datagrams `buf` holds (several of `segment` bytes each when the kernel
/// coalesced them, UDP GRO), all from `src` (of either underlay family). Consecutive data messages of one peer are
/// handled under one lock of its `Tunn`.
pub(crate) fn receive(
    table: &PeerTable,
    identity: &Identity,
    scratch: &mut [u8],
    buf: &[u8],
    segment: usize,
    src: SocketAddr,
    sink: &mut impl Sink,
) {
    if buf.is_empty() {
        sink.drop(DropReason::Malformed);
        return;
    }
    let mut held: Option<(usize, MutexGuard<'_, Option<Tunn>>)> = None;
    for dgram in buf.chunks(segment.max(1)) {
        let packet = match identity
            .limiter
            .verify_packet(Some(src.ip()), dgram, scratch)
        {
            Ok(p) => p,
            Err(TunnResult::WriteToNetwork(cookie)) => {
                sink.send(src, cookie, None);
                sink.drop(DropReason::CookieSent);
                continue;
            }
            Err(TunnResult::Err(e)) => {
                sink.drop(reason(&e));
                continue;
            }
            Err(_) => {
                sink.drop(DropReason::Malformed);
                continue;
            }
        };
        let (peer, data) = match &packet {
            Packet::HandshakeInit(p) => {
                match parse_handshake_anon(&identity.secret, &identity.public, p) {
                    Ok(half) => (
                        table
                            .wg_by_key
                            .get(&PublicKey(half.peer_static_public))
                            .copied(),
                        false,
                    ),
                    Err(e) => {
                        sink.drop(reason(&e));
                        continue;
                    }
                }
            }
            Packet::HandshakeResponse(p) => (table.wg_peer_by_index(p.receiver_idx), false),
            Packet::PacketCookieReply(p) => (table.wg_peer_by_index(p.receiver_idx), false),
            Packet::PacketData(p) => (table.wg_peer_by_index(p.receiver_idx), true),
        };
        let Some(peer) = peer else {
            sink.drop(DropReason::UnknownKey);
            if data {
                if let Some((p, mut guard)) = held.take() {
                    flush_queued(table, p, &mut guard, scratch, sink);
                }
                stale_session_hint(table, src, scratch, sink);
            }
            continue;
        };
        let Some(wg) = table.entries[peer].wg.as_ref() else {
            sink.drop(DropReason::UnknownKey);
            continue;
        };
        if held.as_ref().is_some_and(|(p, _)| *p != peer)
            && let Some((p, mut guard)) = held.take()
        {
            flush_queued(table, p, &mut guard, scratch, sink);
        }
        let (_, guard) = held.get_or_insert_with(|| (peer, wg.lock()));
        let Some(tunn) = guard.as_mut() else {
            sink.drop(DropReason::UnknownKey);
            continue;
        };
        // boringtun verifies the message again (cheap: mac1 is already known good); that
        // counts a handshake twice towards the rate limit, which only halves the limit.
        let src_ip = Some(src.ip());
        if data {
            match tunn.decapsulate(src_ip, dgram, sink.room()) {
                TunnResult::WriteToTunnelV4(inner, _) | TunnResult::WriteToTunnelV6(inner, _) => {
                    let len = inner.len();
                    wg.authenticated_from(src);
                    sink.deliver(peer, len);
                }
                // A keepalive.
                TunnResult::Done => wg.authenticated_from(src),
                TunnResult::Err(WireGuardError::NoCurrentSession) => {
                    sink.drop(DropReason::UnknownKey);
                    if wg.may_hint() {
                        initiate(tunn, wg.endpoint(), scratch, sink);
                    }
                }
                TunnResult::Err(e) => sink.drop(reason(&e)),
                TunnResult::WriteToNetwork(_) => sink.drop(DropReason::Malformed),
            }
            continue;
        }
        match tunn.decapsulate(src_ip, dgram, scratch) {
            TunnResult::WriteToNetwork(reply) => {
                if reply.first() == Some(&MSG_COOKIE_REPLY) {
                    sink.send(src, reply, None);
                    sink.drop(DropReason::CookieSent);
                    continue;
                }
                // A handshake response (to an initiation) or a keepalive (to a response):
                // the message was authenticated by the peer's key.
                wg.authenticated_from(src);
                sink.send(src, reply, None);
            }
            TunnResult::Done => {
                // A cookie reply proves nothing about its sender; only handshakes roam.
                if dgram.first() == Some(&MSG_HANDSHAKE_RESPONSE) {
                    wg.authenticated_from(src);
                }
            }
            TunnResult::Err(e) => {
                sink.drop(reason(&e));
                continue;
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {
                sink.drop(DropReason::Malformed);
                continue;
            }
        }
        if let Some((p, mut guard)) = held.take() {
            flush_queued(table, p, &mut guard, scratch, sink);
        }
    }
    if let Some((p, mut guard)) = held.take() {
        flush_queued(table, p, &mut guard, scratch, sink);
    }
}

/// A data message from a peer's address for a session we do not have means the peer still
/// uses one we dropped (we restarted, or removed and re-added it): start a handshake rather
/// than wait for its timers (15 s). The source is not authenticated, so this happens at most
/// once a second per peer.
fn stale_session_hint(
    table: &PeerTable,
    src: SocketAddr,
    scratch: &mut [u8],
    sink: &mut impl Sink,
) {
    let Some(wg) = table
        .by_source(src.ip())
        .and_then(|i| table.entries[i].wg.as_ref())
    else {
        return;
    };
    if !wg.may_hint() {
        return;
    }
    if let Some(tunn) = wg.lock().as_mut() {
        initiate(tunn, wg.endpoint(), scratch, sink);
    }
}

fn initiate(tunn: &mut Tunn, to: SocketAddr, scratch: &mut [u8], sink: &mut impl Sink) {
    if let TunnResult::WriteToNetwork(msg) = tunn.format_handshake_initiation(scratch, false) {
        sink.send(to, msg, None);
    }
}

/// Sends the packets boringtun queued while it had no session with peer `peer` (its
/// documented pattern: decapsulate an empty datagram until it has nothing to write).
fn flush_queued(
    table: &PeerTable,
    peer: usize,
    guard: &mut MutexGuard<'_, Option<Tunn>>,
    scratch: &mut [u8],
    sink: &mut impl Sink,
) {
    let (Some(tunn), Some(wg)) = (guard.as_mut(), table.entries[peer].wg.as_ref()) else {
        return;
    };
    let to = wg.endpoint();
    while let TunnResult::WriteToNetwork(msg) = tunn.decapsulate(None, &[], scratch) {
        sink.send(to, msg, Some(peer));
    }
}
