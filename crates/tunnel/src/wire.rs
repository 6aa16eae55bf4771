//! Pure codecs for the two wire formats and the receive-path checks.
//!
//! Everything here works on byte slices and never allocates, so the fast path can call it per
//! packet and the fuzz target can throw arbitrary bytes at it.
//!
//! - **udp** (Flannel's framing): the UDP payload is the inner IPv4 or IPv6 packet and nothing
//!   else; the version nibble tells the family.
//! - **ipip** over an IPv4 underlay: an outer IPv4 header immediately followed by the inner
//!   packet, with protocol 4 for IPv4 (Linux's `ipip`) and 41 for IPv6 (Linux's `sit`, 6in4,
//!   RFC 4213). The outer header follows Linux's defaults for a tunnel made with
//!   `ip link add type ipip` / `type sit` (see [`encode_ipv4_outer`]).
//!
//! - **ipip** over an IPv6 underlay (Linux's `ip6tnl`, `mode any`, RFC 2473): an outer IPv6
//!   header with next header 4 (IPv4 inside) or 41 (IPv6 inside). The kernel builds that header
//!   for a raw IPv6 socket and strips it (and any extension header, such as `ip6tnl`'s Tunnel
//!   Encapsulation Limit option) on receive, so the engine only sees the inner packet here
//!   ([`decode_ip6tnl_payload`]). We send no encapsulation limit option (as `ip6tnl
//!   encaplimit none`): a real `ip6tnl` accepts packets with or without one.
//!
//! Inner IPv6 packets are carried as they are: extension headers and fragments are neither
//! parsed nor changed. The receive checks use the fixed header's source and destination, which
//! no extension header can change (a routing header's final destination is only a further
//! hop, and it must then still lie in a subnet the sender may reach through us).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

/// IP protocol number of IPv4-in-IPv4.
pub const IPPROTO_IPIP: u8 = 4;
/// IP protocol number of IPv6-in-IPv4 (6in4, Linux's `sit`) and IPv6-in-IPv6.
pub const IPPROTO_IPV6: u8 = 41;
/// Length of an option-less IPv4 header.
pub const IPV4_HEADER_LEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HEADER_LEN: usize = 40;
/// Bytes the udp framing adds in front of an inner packet (outer IPv4 + UDP).
pub const UDP_OVERHEAD: u32 = 28;
/// Bytes the ipip framing adds in front of an inner packet (outer IPv4).
pub const IPIP_OVERHEAD: u32 = 20;
/// Bytes the udp framing adds over an IPv6 underlay (outer IPv6 + UDP).
pub const UDP6_OVERHEAD: u32 = 48;
/// Bytes the ipip framing adds over an IPv6 underlay (outer IPv6, no extension header).
pub const IPIP6_OVERHEAD: u32 = 40;
/// The hop limit of the outer IPv6 header: `ip6tnl`'s default (`hoplimit 64`).
pub const IP6TNL_HOP_LIMIT: u32 = 64;

const FLAG_DF: u16 = 0x4000;
const ECN_MASK: u8 = 0x03;
const ECN_CE: u8 = 0x03;
const ECN_ECT0: u8 = 0x02;

/// Why bytes are not an acceptable IPv4 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// Shorter than the header it claims (or than 20 bytes).
    Truncated,
    /// Version nibble is not 4.
    NotIpv4,
    /// IHL below 5.
    BadHeaderLength,
    /// Total length below the header length or beyond the bytes received.
    BadTotalLength,
    /// Header checksum does not verify.
    BadChecksum,
    /// An outer header whose protocol is not 4 or 41 (ipip framing only).
    NotIpip,
    /// Version nibble is not 6, or the payload length runs past the bytes received.
    NotIpv6,
    /// Version nibble is neither 4 nor 6.
    NotIp,
}

/// Why the engine dropped a packet; each maps to one counter in [`crate::DropCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum DropReason {
    /// The outer source is not a peer's underlay address.
    UnknownPeer,
    /// The inner source is outside the sending peer's subnet.
    SpoofedInnerSource,
    /// The inner destination is outside this node's subnet.
    ForeignInnerDestination,
    /// Truncated or invalid headers, or not IPv4.
    Malformed,
    /// A packet from the TUN device towards a subnet no peer owns.
    NoPeerForDestination,
    /// The kernel refused to send.
    SendError,
    /// WireGuard: a handshake from a static key that is no current peer's, or a message for
    /// a receiver index (session) we do not have.
    UnknownKey,
    /// WireGuard: a MAC or AEAD tag that does not verify.
    BadMac,
    /// WireGuard: a data message whose counter was already received.
    Replay,
    /// WireGuard: a data message older than the replay window.
    StaleCounter,
    /// WireGuard: a handshake refused by the protocol (old timestamp, unexpected message).
    HandshakeRejected,
    /// WireGuard: a handshake answered with a cookie reply under load (not processed).
    CookieSent,
}

/// The fields of an IPv4 header the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Header {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// IHL * 4.
    pub header_len: usize,
    /// The header's total length field: the packet ends there even if more bytes follow.
    pub total_len: usize,
    pub protocol: u8,
    pub ttl: u8,
    pub tos: u8,
    pub dont_fragment: bool,
}

/// Validates an IPv4 header at the start of `buf`: version 4, IHL >= 5, header within `buf`,
/// IHL*4 <= total length <= `buf.len()`, header checksum.
pub fn parse_ipv4(buf: &[u8]) -> Result<Ipv4Header, WireError> {
    let Some(first) = buf.first() else {
        return Err(WireError::Truncated);
    };
    if first >> 4 != 4 {
        return Err(WireError::NotIpv4);
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < IPV4_HEADER_LEN {
        return Err(WireError::BadHeaderLength);
    }
    if buf.len() < header_len {
        return Err(WireError::Truncated);
    }
    let total_len = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    if total_len < header_len || total_len > buf.len() {
        return Err(WireError::BadTotalLength);
    }
    if checksum(&buf[..header_len]) != 0 {
        return Err(WireError::BadChecksum);
    }
    let flags = u16::from_be_bytes([buf[6], buf[7]]);
    Ok(Ipv4Header {
        src: Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]),
        dst: Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]),
        header_len,
        total_len,
        protocol: buf[9],
        ttl: buf[8],
        tos: buf[1],
        dont_fragment: flags & FLAG_DF != 0,
    })
}

/// The fields of a fixed IPv6 header the engine uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv6Header {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// 40 + the payload length field: the packet ends there even if more bytes follow.
    pub total_len: usize,
    pub next_header: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
}

/// Validates a fixed IPv6 header at the start of `buf`: version 6, 40 bytes, 40 + payload
/// length <= `buf.len()`. Jumbograms (payload length 0 with a hop-by-hop option) are taken as
/// the empty packet they claim to be.
pub fn parse_ipv6(buf: &[u8]) -> Result<Ipv6Header, WireError> {
    let Some(first) = buf.first() else {
        return Err(WireError::Truncated);
    };
    if first >> 4 != 6 {
        return Err(WireError::NotIpv6);
    }
    if buf.len() < IPV6_HEADER_LEN {
        return Err(WireError::Truncated);
    }
    let total_len = IPV6_HEADER_LEN + usize::from(u16::from_be_bytes([buf[4], buf[5]]));
    if total_len > buf.len() {
        return Err(WireError::BadTotalLength);
    }
    let addr = |at: usize| {
        let mut o = [0u8; 16];
        o.copy_from_slice(&buf[at..at + 16]);
        Ipv6Addr::from(o)
    };
    Ok(Ipv6Header {
        src: addr(8),
        dst: addr(24),
        total_len,
        next_header: buf[6],
        hop_limit: buf[7],
        traffic_class: (buf[0] << 4) | (buf[1] >> 4),
    })
}

/// An inner packet's header, of either family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InnerHeader {
    V4(Ipv4Header),
    V6(Ipv6Header),
}

impl InnerHeader {
    pub fn src(&self) -> IpAddr {
        match self {
            InnerHeader::V4(h) => h.src.into(),
            InnerHeader::V6(h) => h.src.into(),
        }
    }

    pub fn dst(&self) -> IpAddr {
        match self {
            InnerHeader::V4(h) => h.dst.into(),
            InnerHeader::V6(h) => h.dst.into(),
        }
    }

    /// The packet's length by its header.
    pub fn total_len(&self) -> usize {
        match self {
            InnerHeader::V4(h) => h.total_len,
            InnerHeader::V6(h) => h.total_len,
        }
    }

    /// TTL or hop limit.
    pub fn ttl(&self) -> u8 {
        match self {
            InnerHeader::V4(h) => h.ttl,
            InnerHeader::V6(h) => h.hop_limit,
        }
    }

    /// TOS or traffic class (DSCP and ECN).
    pub fn tos(&self) -> u8 {
        match self {
            InnerHeader::V4(h) => h.tos,
            InnerHeader::V6(h) => h.traffic_class,
        }
    }

    /// The IP protocol number that carries this packet inside IP: 4 or 41.
    pub fn tunnel_protocol(&self) -> u8 {
        match self {
            InnerHeader::V4(_) => IPPROTO_IPIP,
            InnerHeader::V6(_) => IPPROTO_IPV6,
        }
    }
}

impl From<Ipv4Header> for InnerHeader {
    fn from(h: Ipv4Header) -> InnerHeader {
        InnerHeader::V4(h)
    }
}

/// Validates an inner packet of either family at the start of `buf`, by its version nibble.
pub fn parse_inner(buf: &[u8]) -> Result<InnerHeader, WireError> {
    match buf.first().map(|b| b >> 4) {
        None => Err(WireError::Truncated),
        Some(4) => parse_ipv4(buf).map(InnerHeader::V4),
        Some(6) => parse_ipv6(buf).map(InnerHeader::V6),
        Some(_) => Err(WireError::NotIp),
    }
}

/// An inner packet of either family found inside a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnyInner {
    pub header: InnerHeader,
    /// Offset of the inner packet in the decoded bytes.
    pub offset: usize,
    /// Length of the inner packet (by its header).
    pub len: usize,
}

/// Decodes a udp-framed payload of either family (trailing bytes past the inner packet's
/// length are ignored).
pub fn decode_udp_payload_any(payload: &[u8]) -> Result<AnyInner, WireError> {
    let header = parse_inner(payload)?;
    Ok(AnyInner {
        header,
        offset: 0,
        len: header.total_len(),
    })
}

/// Decodes a whole outer IPv4 packet of the ipip framing of either inner family: protocol 4
/// with a valid inner IPv4 packet, or 41 with a valid inner IPv6 one, within the outer total
/// length. Returns the outer source and the inner packet.
pub fn decode_ipip_any(packet: &[u8]) -> Result<(Ipv4Addr, AnyInner), WireError> {
    let outer = parse_ipv4(packet)?;
    let body = &packet[outer.header_len..outer.total_len];
    let header = match outer.protocol {
        IPPROTO_IPIP => InnerHeader::V4(parse_ipv4(body)?),
        IPPROTO_IPV6 => InnerHeader::V6(parse_ipv6(body)?),
        _ => return Err(WireError::NotIpip),
    };
    Ok((
        outer.src,
        AnyInner {
            header,
            offset: outer.header_len,
            len: header.total_len(),
        },
    ))
}

/// An inner packet found inside a datagram: its header and where it lies in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner {
    pub header: Ipv4Header,
    /// Offset of the inner packet in the decoded bytes.
    pub offset: usize,
    /// Length of the inner packet (its total length field).
    pub len: usize,
}

/// Decodes a udp-framed payload (the payload *is* the inner packet; trailing bytes past its
/// total length are ignored, as the kernel would trim them).
pub fn decode_udp_payload(payload: &[u8]) -> Result<Inner, WireError> {
    let header = parse_ipv4(payload)?;
    Ok(Inner {
        header,
        offset: 0,
        len: header.total_len,
    })
}

/// A decoded ipip packet: the outer addresses and the inner packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipip {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub inner: Inner,
}

/// Decodes a whole outer IPv4 packet (what a raw `IPPROTO_IPIP` socket returns): outer header
/// valid with protocol 4, then a valid inner IPv4 packet within the outer total length.
pub fn decode_ipip(packet: &[u8]) -> Result<Ipip, WireError> {
    let outer = parse_ipv4(packet)?;
    if outer.protocol != IPPROTO_IPIP {
        return Err(WireError::NotIpip);
    }
    let body = &packet[outer.header_len..outer.total_len];
    let header = parse_ipv4(body)?;
    Ok(Ipip {
        outer_src: outer.src,
        outer_dst: outer.dst,
        inner: Inner {
            header,
            offset: outer.header_len,
            len: header.total_len,
        },
    })
}

/// Writes the 20-byte outer header for `inner`, the way Linux's ipip driver does with its
/// defaults (`ip link add type ipip`: `pmtudisc` on, `ttl inherit`, `tos 0`):
/// - DF always set (pmtudisc; Linux ORs in the inner DF, which is implied),
/// - TTL copied from the inner packet (`ttl 0` = inherit),
/// - DSCP 0 with the inner ECN bits encapsulated (CE becomes ECT(0), RFC 6040 normal mode),
/// - identification 0 and checksum filled in here (the kernel picks an ID for a raw
///   `IP_HDRINCL` packet whose ID is 0, and then recomputes the checksum itself).
pub fn encode_ipip_header(
    out: &mut [u8; IPV4_HEADER_LEN],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    inner: &Ipv4Header,
) {
    encode_ipv4_outer(out, src, dst, &InnerHeader::V4(*inner));
}

/// The outer ECN for an inner TOS / traffic class: the inner ECN bits, with CE sent as ECT(0)
/// (RFC 6040 normal mode, as Linux's tunnels do).
fn outer_ecn(inner_tos: u8) -> u8 {
    match inner_tos & ECN_MASK {
        ECN_CE => ECN_ECT0,
        other => other,
    }
}

/// Writes the 20-byte outer IPv4 header for an inner packet of either family: protocol 4 for
/// IPv4 (Linux's `ipip`), 41 for IPv6 (Linux's `sit`). Both drivers' defaults are the same:
/// DF set, TTL / hop limit inherited, DSCP 0 with the inner ECN (see [`encode_ipip_header`]).
pub fn encode_ipv4_outer(
    out: &mut [u8; IPV4_HEADER_LEN],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    inner: &InnerHeader,
) {
    let total = (inner.total_len() + IPV4_HEADER_LEN).min(usize::from(u16::MAX)) as u16;
    let ecn = outer_ecn(inner.tos());
    out[0] = 0x45;
    out[1] = ecn;
    out[2..4].copy_from_slice(&total.to_be_bytes());
    out[4..6].copy_from_slice(&[0, 0]);
    out[6..8].copy_from_slice(&FLAG_DF.to_be_bytes());
    out[8] = inner.ttl();
    out[9] = inner.tunnel_protocol();
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&out[..]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// The traffic class of the outer IPv6 header for an inner packet of either family, as
/// `ip6tnl` sets it by default (`tclass 0`, flow label 0): DSCP 0 with the inner ECN bits
/// encapsulated (CE becomes ECT(0), RFC 6040 normal mode).
pub fn ip6tnl_traffic_class(inner: &InnerHeader) -> u8 {
    outer_ecn(inner.tos())
}

/// Decodes what a raw IPv6 socket of protocol `next_header` (4 or 41) returns over an IPv6
/// underlay: the inner packet alone (the kernel stripped the outer header and its extension
/// headers), IPv4 for 4 and IPv6 for 41; trailing bytes past the inner length are ignored.
pub fn decode_ip6tnl_payload(next_header: u8, payload: &[u8]) -> Result<AnyInner, WireError> {
    let header = match next_header {
        IPPROTO_IPIP => InnerHeader::V4(parse_ipv4(payload)?),
        IPPROTO_IPV6 => InnerHeader::V6(parse_ipv6(payload)?),
        _ => return Err(WireError::NotIpip),
    };
    Ok(AnyInner {
        header,
        offset: 0,
        len: header.total_len(),
    })
}

/// The receive-path policy for a decoded inner packet from a known peer: its source must lie
/// in the sender's subnet and its destination in ours.
pub fn admit(
    inner: &Ipv4Header,
    peer_subnet: &Ipv4Net,
    local_subnet: &Ipv4Net,
) -> Result<(), DropReason> {
    if !peer_subnet.contains(&inner.src) {
        return Err(DropReason::SpoofedInnerSource);
    }
    if !local_subnet.contains(&inner.dst) {
        return Err(DropReason::ForeignInnerDestination);
    }
    Ok(())
}

/// The receive-path policy for an inner packet of either family from a known peer: its source
/// must lie in the sender's subnet of that family and its destination in ours. On a node
/// without a subnet of the packet's family, the packet is malformed (as on a single-family
/// tunnel, where only that family is a packet: IPv4 on an IPv4-only cluster's node, IPv6 on
/// an IPv6-only one's); from a peer without one, any source of that family is spoofed.
pub fn admit_any(
    inner: &InnerHeader,
    peer_subnet: Option<&Ipv4Net>,
    peer_subnet6: Option<&Ipv6Net>,
    local_subnet: Option<&Ipv4Net>,
    local_subnet6: Option<&Ipv6Net>,
) -> Result<(), DropReason> {
    match inner {
        InnerHeader::V4(_) if local_subnet.is_none() => Err(DropReason::Malformed),
        InnerHeader::V4(h) => match (peer_subnet, local_subnet) {
            (Some(peer), Some(local)) => admit(h, peer, local),
            _ => Err(DropReason::SpoofedInnerSource),
        },
        InnerHeader::V6(_) if local_subnet6.is_none() => Err(DropReason::Malformed),
        InnerHeader::V6(h) => {
            if !peer_subnet6.is_some_and(|n| n.contains(&h.src)) {
                return Err(DropReason::SpoofedInnerSource);
            }
            if !local_subnet6.is_some_and(|n| n.contains(&h.dst)) {
                return Err(DropReason::ForeignInnerDestination);
            }
            Ok(())
        }
    }
}

/// The Internet checksum (RFC 1071) of `data`; 0 when `data` already holds a valid checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds a minimal valid IPv4 packet (header + `payload`), for tests and tools.
pub fn build_ipv4(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: u8,
    ttl: u8,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    let total = (IPV4_HEADER_LEN + payload.len()) as u16;
    out.extend_from_slice(&[0x45, 0]);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0x40, 0, ttl, protocol, 0, 0]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    let sum = checksum(&out[..IPV4_HEADER_LEN]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
    out.extend_from_slice(payload);
}

/// Builds a minimal IPv6 packet (fixed header + `payload`), for tests and tools.
pub fn build_ipv6(
    src: Ipv6Addr,
    dst: Ipv6Addr,
    next_header: u8,
    hop_limit: u8,
    payload: &[u8],
    out: &mut Vec<u8>,
) {
    out.clear();
    out.extend_from_slice(&[0x60, 0, 0, 0]);
    out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    out.extend_from_slice(&[next_header, hop_limit]);
    out.extend_from_slice(&src.octets());
    out.extend_from_slice(&dst.octets());
    out.extend_from_slice(payload);
}

/// [`receive_check`] for both inner families over an IPv4 underlay: decode per framing
/// (udp payload, or a whole outer IPv4 packet with protocol 4 or 41), then [`admit_any`]
/// (a subnet of a family either end lacks is None).
pub fn receive_check_any(
    ipip: bool,
    bytes: &[u8],
    peer: (Option<&Ipv4Net>, Option<&Ipv6Net>),
    local: (Option<&Ipv4Net>, Option<&Ipv6Net>),
) -> Result<AnyInner, DropReason> {
    let inner = if ipip {
        decode_ipip_any(bytes).map_err(|_| DropReason::Malformed)?.1
    } else {
        decode_udp_payload_any(bytes).map_err(|_| DropReason::Malformed)?
    };
    admit_any(&inner.header, peer.0, peer.1, local.0, local.1)?;
    Ok(inner)
}

/// Everything the receive path does to bytes before it trusts them, minus the peer lookup:
/// decode per framing, then [`admit`] against `peer_subnet`/`local_subnet`. The fuzz target
/// and the property tests drive this.
pub fn receive_check(
    ipip: bool,
    bytes: &[u8],
    peer_subnet: &Ipv4Net,
    local_subnet: &Ipv4Net,
) -> Result<Inner, DropReason> {
    let inner = if ipip {
        decode_ipip(bytes).map_err(|_| DropReason::Malformed)?.inner
    } else {
        decode_udp_payload(bytes).map_err(|_| DropReason::Malformed)?
    };
    admit(&inner.header, peer_subnet, local_subnet)?;
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn arb_packet() -> impl Strategy<Value = (Ipv4Addr, Ipv4Addr, u8, u8, u8, Vec<u8>)> {
        (
            any::<u32>().prop_map(Ipv4Addr::from),
            any::<u32>().prop_map(Ipv4Addr::from),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..1500),
        )
    }

    #[test]
    fn checksum_of_known_header() {
        // Example header from RFC 1071 discussions (Wikipedia "IPv4 header checksum").
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0);
        let mut z = h;
        z[10] = 0;
        z[11] = 0;
        assert_eq!(checksum(&z), 0xb861);
    }

    #[test]
    fn rejects_each_kind_of_bad_header() {
        let mut p = Vec::new();
        build_ipv4(
            Ipv4Addr::new(10, 0, 1, 2),
            Ipv4Addr::new(10, 0, 2, 2),
            6,
            64,
            &[1, 2, 3, 4],
            &mut p,
        );
        assert!(parse_ipv4(&p).is_ok());
        assert_eq!(parse_ipv4(&[]), Err(WireError::Truncated));
        let mut v6 = p.clone();
        v6[0] = 0x65;
        assert_eq!(parse_ipv4(&v6), Err(WireError::NotIpv4));
        let mut ihl = p.clone();
        ihl[0] = 0x44;
        assert_eq!(parse_ipv4(&ihl), Err(WireError::BadHeaderLength));
        let mut long = p.clone();
        long[3] = 200;
        assert_eq!(parse_ipv4(&long), Err(WireError::BadTotalLength));
        let mut short = p.clone();
        short[2] = 0;
        short[3] = 10;
        assert_eq!(parse_ipv4(&short), Err(WireError::BadTotalLength));
        let mut csum = p.clone();
        csum[12] ^= 1;
        assert_eq!(parse_ipv4(&csum), Err(WireError::BadChecksum));
        let mut opts = p.clone();
        opts[0] = 0x46; // claims 24 bytes of header, buffer has 24 but total length is 24
        assert!(parse_ipv4(&opts[..19]).is_err());
    }

    #[test]
    fn ipip_header_follows_linux_defaults() {
        let mut inner = Vec::new();
        build_ipv4(
            Ipv4Addr::new(10, 0, 1, 2),
            Ipv4Addr::new(10, 0, 2, 2),
            1,
            63,
            &[0; 8],
            &mut inner,
        );
        inner[1] = 0xb8 | ECN_CE; // DSCP EF, CE
        inner[6] = 0; // inner without DF
        inner[10] = 0;
        inner[11] = 0;
        let s = checksum(&inner[..20]);
        inner[10..12].copy_from_slice(&s.to_be_bytes());
        let ih = parse_ipv4(&inner).unwrap();
        let mut out = [0u8; 20];
        encode_ipip_header(
            &mut out,
            Ipv4Addr::new(192, 168, 0, 1),
            Ipv4Addr::new(192, 168, 0, 2),
            &ih,
        );
        let mut pkt = out.to_vec();
        pkt.extend_from_slice(&inner);
        let d = decode_ipip(&pkt).unwrap();
        assert_eq!(d.outer_src, Ipv4Addr::new(192, 168, 0, 1));
        assert_eq!(d.outer_dst, Ipv4Addr::new(192, 168, 0, 2));
        assert_eq!(d.inner.header, ih);
        let outer = parse_ipv4(&pkt).unwrap();
        assert!(outer.dont_fragment);
        assert_eq!(outer.ttl, 63);
        assert_eq!(outer.tos, ECN_ECT0);
        assert_eq!(outer.total_len, pkt.len());
    }

    #[test]
    fn admit_checks_both_subnets() {
        let mut p = Vec::new();
        build_ipv4(
            Ipv4Addr::new(10, 0, 1, 2),
            Ipv4Addr::new(10, 0, 2, 2),
            6,
            64,
            &[],
            &mut p,
        );
        let h = parse_ipv4(&p).unwrap();
        assert_eq!(admit(&h, &net("10.0.1.0/24"), &net("10.0.2.0/24")), Ok(()));
        assert_eq!(
            admit(&h, &net("10.0.3.0/24"), &net("10.0.2.0/24")),
            Err(DropReason::SpoofedInnerSource)
        );
        assert_eq!(
            admit(&h, &net("10.0.1.0/24"), &net("10.0.3.0/24")),
            Err(DropReason::ForeignInnerDestination)
        );
    }

    #[test]
    fn ipv6_in_ipv4_follows_sit_defaults_and_admits_by_subnet6() {
        let (src, dst) = ("fd00:1::2".parse().unwrap(), "fd00:2::2".parse().unwrap());
        let mut inner = Vec::new();
        build_ipv6(src, dst, 58, 63, &[128, 0, 0, 0], &mut inner);
        inner[0] = 0x6b; // traffic class 0xb3: DSCP 44, CE
        inner[1] = 0x30;
        let h = parse_inner(&inner).unwrap();
        assert_eq!(h.tos(), 0xb3);
        let mut out = [0u8; 20];
        encode_ipv4_outer(
            &mut out,
            Ipv4Addr::new(192, 0, 2, 1),
            Ipv4Addr::new(192, 0, 2, 2),
            &h,
        );
        assert_eq!(
            out[..10],
            [0x45, ECN_ECT0, 0, 64, 0, 0, 0x40, 0, 63, IPPROTO_IPV6]
        );
        let mut pkt = out.to_vec();
        pkt.extend_from_slice(&inner);
        let (outer_src, d) = decode_ipip_any(&pkt).unwrap();
        assert_eq!(outer_src, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!((d.header, d.offset, d.len), (h, 20, 44));
        // The outer protocol must match the inner version.
        pkt[9] = IPPROTO_IPIP;
        pkt[10..12].copy_from_slice(&[0, 0]);
        let sum = checksum(&pkt[..20]);
        pkt[10..12].copy_from_slice(&sum.to_be_bytes());
        assert!(decode_ipip_any(&pkt).is_err());

        let v4 = net("10.0.1.0/24");
        let n6 = |s: &str| s.parse::<Ipv6Net>().unwrap();
        let (peer6, local6) = (n6("fd00:1::/64"), n6("fd00:2::/64"));
        assert_eq!(
            admit_any(&h, Some(&v4), Some(&peer6), Some(&v4), Some(&local6)),
            Ok(())
        );
        assert_eq!(
            admit_any(&h, Some(&v4), None, Some(&v4), Some(&local6)),
            Err(DropReason::SpoofedInnerSource)
        );
        assert_eq!(
            admit_any(
                &h,
                Some(&v4),
                Some(&n6("fd00:3::/64")),
                Some(&v4),
                Some(&local6)
            ),
            Err(DropReason::SpoofedInnerSource)
        );
        assert_eq!(
            admit_any(&h, Some(&v4), Some(&peer6), Some(&v4), Some(&peer6)),
            Err(DropReason::ForeignInnerDestination)
        );
        assert_eq!(
            admit_any(&h, Some(&v4), Some(&peer6), Some(&v4), None),
            Err(DropReason::Malformed)
        );
        // A node of an IPv6-only cluster (no IPv4 subnet) and its peers (none either): IPv6
        // is checked as ever, and no IPv4 packet is one.
        assert_eq!(
            admit_any(&h, None, Some(&peer6), None, Some(&local6)),
            Ok(())
        );
        assert_eq!(
            admit_any(&h, None, Some(&peer6), None, Some(&peer6)),
            Err(DropReason::ForeignInnerDestination)
        );
        let mut v4_bytes = Vec::new();
        build_ipv4(
            Ipv4Addr::new(10, 0, 1, 2),
            Ipv4Addr::new(10, 0, 1, 3),
            1,
            64,
            &[],
            &mut v4_bytes,
        );
        let InnerHeader::V4(h4) = parse_inner(&v4_bytes).unwrap() else {
            panic!("an IPv4 packet")
        };
        let v4_inner = InnerHeader::V4(h4);
        assert_eq!(
            admit_any(&v4_inner, None, Some(&peer6), None, Some(&local6)),
            Err(DropReason::Malformed)
        );
        // On a node with IPv4 pods, IPv4 from a peer without any is spoofed.
        assert_eq!(
            admit_any(&v4_inner, None, Some(&peer6), Some(&v4), Some(&local6)),
            Err(DropReason::SpoofedInnerSource)
        );
        assert_eq!(
            admit_any(&v4_inner, Some(&v4), None, Some(&v4), None),
            Ok(())
        );
        assert_eq!(parse_ipv6(&inner[..39]), Err(WireError::Truncated));
        assert_eq!(parse_ipv6(&inner[..43]), Err(WireError::BadTotalLength));
    }

    #[test]
    fn ip6tnl_payload_must_match_the_next_header() {
        let (src, dst) = ("fd00:1::2".parse().unwrap(), "fd00:2::2".parse().unwrap());
        let mut v6 = Vec::new();
        build_ipv6(src, dst, 58, 64, &[128, 0, 0, 0], &mut v6);
        v6[1] = 0x30; // traffic class 0x03: CE
        let mut v4 = Vec::new();
        build_ipv4(
            Ipv4Addr::new(10, 0, 1, 2),
            Ipv4Addr::new(10, 0, 2, 2),
            1,
            64,
            &[8, 0, 0, 0],
            &mut v4,
        );
        let d6 = decode_ip6tnl_payload(IPPROTO_IPV6, &v6).unwrap();
        assert_eq!((d6.offset, d6.len), (0, 44));
        assert_eq!(ip6tnl_traffic_class(&d6.header), ECN_ECT0);
        let d4 = decode_ip6tnl_payload(IPPROTO_IPIP, &v4).unwrap();
        assert_eq!((d4.offset, d4.len), (0, 24));
        assert_eq!(ip6tnl_traffic_class(&d4.header), 0);
        // IPv6 announced as IPv4 (next header 4) or the other way round is malformed.
        assert!(decode_ip6tnl_payload(IPPROTO_IPIP, &v6).is_err());
        assert!(decode_ip6tnl_payload(IPPROTO_IPV6, &v4).is_err());
        assert!(decode_ip6tnl_payload(17, &v4).is_err());
        // Trailing bytes past the inner length are ignored, truncation is not.
        v4.extend_from_slice(&[0; 7]);
        assert_eq!(decode_ip6tnl_payload(IPPROTO_IPIP, &v4).unwrap().len, 24);
        assert!(decode_ip6tnl_payload(IPPROTO_IPV6, &v6[..43]).is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode_udp_payload_any(&bytes);
            let _ = decode_ipip_any(&bytes);
            let _ = decode_ip6tnl_payload(4, &bytes);
            let _ = decode_ip6tnl_payload(41, &bytes);
            let (p6, l6) = ("fd00:1::/64".parse().unwrap(), "::/0".parse().unwrap());
            let _ = receive_check_any(true, &bytes, (Some(&net("10.0.1.0/24")), Some(&p6)), (Some(&net("10.0.2.0/24")), Some(&l6)));
            let _ = parse_ipv4(&bytes);
            let _ = decode_udp_payload(&bytes);
            let _ = decode_ipip(&bytes);
            let _ = receive_check(true, &bytes, &net("10.0.1.0/24"), &net("10.0.2.0/24"));
            let _ = receive_check(false, &bytes, &net("0.0.0.0/0"), &net("0.0.0.0/0"));
        }

        #[test]
        fn round_trips_valid_packets((src, dst, proto, ttl, tos, payload) in arb_packet()) {
            let mut p = Vec::new();
            build_ipv4(src, dst, proto, ttl, &payload, &mut p);
            p[1] = tos;
            p[10] = 0;
            p[11] = 0;
            let s = checksum(&p[..20]);
            p[10..12].copy_from_slice(&s.to_be_bytes());
            let inner = decode_udp_payload(&p).unwrap();
            prop_assert_eq!(inner.len, p.len());
            prop_assert_eq!(inner.header.src, src);
            prop_assert_eq!(inner.header.dst, dst);
            prop_assert_eq!(inner.header.protocol, proto);
            prop_assert_eq!(inner.header.ttl, ttl);

            let (osrc, odst) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
            let mut hdr = [0u8; 20];
            encode_ipip_header(&mut hdr, osrc, odst, &inner.header);
            let mut outer = hdr.to_vec();
            outer.extend_from_slice(&p);
            let d = decode_ipip(&outer).unwrap();
            prop_assert_eq!(d.outer_src, osrc);
            prop_assert_eq!(d.outer_dst, odst);
            prop_assert_eq!(d.inner.header, inner.header);
            prop_assert_eq!(&outer[d.inner.offset..d.inner.offset + d.inner.len], &p[..]);
        }

        #[test]
        fn any_truncation_is_rejected((src, dst, proto, ttl, _tos, payload) in arb_packet(), cut in any::<prop::sample::Index>()) {
            let mut p = Vec::new();
            build_ipv4(src, dst, proto, ttl, &payload, &mut p);
            let n = cut.index(p.len());
            prop_assert!(decode_udp_payload(&p[..n]).is_err());
            let mut hdr = [0u8; 20];
            let h = parse_ipv4(&p).unwrap();
            encode_ipip_header(&mut hdr, src, dst, &h);
            let mut outer = hdr.to_vec();
            outer.extend_from_slice(&p);
            let m = cut.index(outer.len());
            prop_assert!(decode_ipip(&outer[..m]).is_err());
        }
    }
}
