//! Nexthop object messages (`RTM_*NEXTHOP`, `struct nhmsg`), written and read as bytes:
//! netlink-packet-route has no type for them. Only single-gateway objects (IPv4 or IPv6), the
//! kind [`crate::bulk`] creates for next hops that many routes share.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};

/// Length of a netlink message header (`struct nlmsghdr`).
pub(crate) const NLMSG_HDRLEN: usize = 16;
/// The message type of a nexthop object in a dump.
pub(crate) const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_BLACKHOLE: u16 = 4;
const NHA_OIF: u16 = 5;
const NHA_GATEWAY: u16 = 6;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const RTNH_F_ONLINK: u32 = 4;

/// A kernel nexthop object of a single gateway (`ip nexthop add id ID via GW dev DEV`); its
/// family is the gateway's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nexthop {
    pub id: u32,
    pub gateway: IpAddr,
    /// Link index.
    pub oif: u32,
    pub onlink: bool,
    pub protocol: u8,
}

/// The request that creates nexthop object `nexthop` (exclusive: "exists" when its id is
/// taken), asking for an acknowledgement.
pub(crate) fn new_nexthop_request(seq: u32, nexthop: &Nexthop) -> Vec<u8> {
    let mut attrs = Vec::new();
    put_attr(&mut attrs, NHA_ID, &nexthop.id.to_ne_bytes());
    put_attr(&mut attrs, NHA_OIF, &nexthop.oif.to_ne_bytes());
    let family = match nexthop.gateway {
        IpAddr::V4(gw) => {
            put_attr(&mut attrs, NHA_GATEWAY, &gw.octets());
            AF_INET
        }
        IpAddr::V6(gw) => {
            put_attr(&mut attrs, NHA_GATEWAY, &gw.octets());
            AF_INET6
        }
    };
    let flags = if nexthop.onlink { RTNH_F_ONLINK } else { 0 };
    nexthop_request(
        RTM_NEWNEXTHOP,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
        family,
        nexthop.protocol,
        flags,
        &attrs,
    )
}

/// The request that deletes nexthop object `id`, asking for an acknowledgement.
pub(crate) fn delete_nexthop_request(seq: u32, id: u32) -> Vec<u8> {
    let mut attrs = Vec::new();
    put_attr(&mut attrs, NHA_ID, &id.to_ne_bytes());
    nexthop_request(
        RTM_DELNEXTHOP,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        0,
        0,
        0,
        &attrs,
    )
}

/// The request that dumps every nexthop object.
pub(crate) fn dump_nexthops_request(seq: u32) -> Vec<u8> {
    nexthop_request(
        RTM_GETNEXTHOP,
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        0,
        0,
        0,
        &[],
    )
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

/// A nexthop request (`struct nhmsg` and attributes); netlink-packet-route has no type for
/// these messages. `family` 0 (`AF_UNSPEC`) is for requests by id and dumps, which cover
/// both families.
fn nexthop_request(
    kind: u16,
    flags: u16,
    seq: u32,
    family: u8,
    protocol: u8,
    nh_flags: u32,
    attrs: &[u8],
) -> Vec<u8> {
    let len = NLMSG_HDRLEN + 8 + attrs.len();
    let mut buf = Vec::with_capacity(len);
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0, protocol, 0]);
    buf.extend_from_slice(&nh_flags.to_ne_bytes());
    buf.extend_from_slice(attrs);
    buf
}

/// A single-gateway nexthop object from an `RTM_NEWNEXTHOP` payload (None for groups,
/// blackholes and objects without a gateway).
pub(crate) fn parse_nexthop(payload: &[u8]) -> Option<Nexthop> {
    if payload.len() < 8 || ![AF_INET, AF_INET6].contains(&payload[0]) {
        return None;
    }
    let protocol = payload[2];
    let flags = u32::from_ne_bytes(payload[4..8].try_into().ok()?);
    let (mut id, mut oif, mut gateway) = (None, None, None);
    let mut off = 8;
    while off + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[off], payload[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([payload[off + 2], payload[off + 3]]) & 0x3fff;
        if len < 4 || off + len > payload.len() {
            break;
        }
        let value = &payload[off + 4..off + len];
        let word = || value.try_into().ok().map(u32::from_ne_bytes);
        match kind {
            NHA_ID => id = word(),
            NHA_OIF => oif = word(),
            NHA_GATEWAY => {
                gateway = <[u8; 4]>::try_from(value)
                    .map(|o| IpAddr::from(Ipv4Addr::from(o)))
                    .or_else(|_| <[u8; 16]>::try_from(value).map(|o| Ipv6Addr::from(o).into()))
                    .ok();
            }
            NHA_GROUP | NHA_BLACKHOLE => return None,
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some(Nexthop {
        id: id?,
        gateway: gateway?,
        oif: oif?,
        onlink: flags & RTNH_F_ONLINK != 0,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nexthop_messages_round_trip() {
        let nexthop = Nexthop {
            id: 117 << 24,
            gateway: Ipv4Addr::new(10, 9, 0, 1).into(),
            oif: 7,
            onlink: true,
            protocol: 117,
        };
        let req = new_nexthop_request(9, &nexthop);
        assert_eq!(
            u32::from_ne_bytes(req[..4].try_into().unwrap()) as usize,
            req.len()
        );
        assert_eq!(parse_nexthop(&req[NLMSG_HDRLEN..]), Some(nexthop));
        // A group is not a single gateway.
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NHA_ID, &nexthop.id.to_ne_bytes());
        put_attr(&mut attrs, NHA_OIF, &7u32.to_ne_bytes());
        put_attr(&mut attrs, NHA_GATEWAY, &[10, 9, 0, 1]);
        put_attr(&mut attrs, NHA_GROUP, &[0; 8]);
        let req = nexthop_request(RTM_NEWNEXTHOP, NLM_F_REQUEST, 9, AF_INET, 117, 0, &attrs);
        assert_eq!(parse_nexthop(&req[NLMSG_HDRLEN..]), None);
    }

    #[test]
    fn ipv6_nexthops_are_of_family_inet6_with_a_16_byte_gateway() {
        let nexthop = Nexthop {
            id: (117 << 24) + 1,
            gateway: "fe80::1".parse().unwrap(),
            oif: 3,
            onlink: false,
            protocol: 117,
        };
        let req = new_nexthop_request(5, &nexthop);
        assert_eq!(req[NLMSG_HDRLEN], AF_INET6);
        assert_eq!(parse_nexthop(&req[NLMSG_HDRLEN..]), Some(nexthop));
    }

    #[test]
    fn delete_and_dump_requests_are_whole_messages() {
        for req in [
            delete_nexthop_request(3, 117 << 24),
            dump_nexthops_request(4),
        ] {
            assert_eq!(
                u32::from_ne_bytes(req[..4].try_into().unwrap()) as usize,
                req.len()
            );
        }
    }
}
