//! Pure codecs for the two wire formats and the receive-path checks.
//!
//! Everything here works on byte slices and never allocates, so the fast path can call it per
//! packet and the fuzz target can throw arbitrary bytes at it.
//!
//! - **udp** (Flannel's framing): the UDP payload is the inner IPv4 packet and nothing else.
//! - **ipip** (IP protocol 4, as Linux's `ipip` driver): an outer IPv4 header immediately
//!   followed by the inner IPv4 packet. The outer header follows Linux's defaults for a tunnel
//!   made with `ip link add type ipip` (see [`encode_ipip_header`]).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

/// IP protocol number of IPv4-in-IPv4.
pub const IPPROTO_IPIP: u8 = 4;
/// Length of an option-less IPv4 header.
pub const IPV4_HEADER_LEN: usize = 20;
/// Bytes the udp framing adds in front of an inner packet (outer IPv4 + UDP).
pub const UDP_OVERHEAD: u32 = 28;
/// Bytes the ipip framing adds in front of an inner packet (outer IPv4).
pub const IPIP_OVERHEAD: u32 = 20;

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
    /// An outer header whose protocol is not 4 (ipip framing only).
    NotIpip,
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
    let total = (inner.total_len + IPV4_HEADER_LEN).min(usize::from(u16::MAX)) as u16;
    let ecn = match inner.tos & ECN_MASK {
        ECN_CE => ECN_ECT0,
        other => other,
    };
    out[0] = 0x45;
    out[1] = ecn;
    out[2..4].copy_from_slice(&total.to_be_bytes());
    out[4..6].copy_from_slice(&[0, 0]);
    out[6..8].copy_from_slice(&FLAG_DF.to_be_bytes());
    out[8] = inner.ttl;
    out[9] = IPPROTO_IPIP;
    out[10..12].copy_from_slice(&[0, 0]);
    out[12..16].copy_from_slice(&src.octets());
    out[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&out[..]);
    out[10..12].copy_from_slice(&sum.to_be_bytes());
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

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
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
