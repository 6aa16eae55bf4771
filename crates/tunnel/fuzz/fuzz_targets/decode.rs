//! Fuzz target: the receive-path validation (udp payload and ipip packet decoding plus the
//! peer/local subnet policy) on arbitrary bytes. It must never panic, and whatever it accepts
//! must lie within the input and satisfy the policy; for both inner families (IPv6 over the
//! IPv4 underlay: udp payload or protocol 41), and what a raw IPv6 socket returns over an IPv6
//! underlay (`ip6tnl`: the inner packet alone, next header 4 or 41); and for a node of an
//! IPv6-only cluster, which must accept no IPv4 at all.
#![no_main]

use ipnet::{Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;
use twill_tunnel::wire;

fuzz_target!(|data: &[u8]| {
    for next_header in [wire::IPPROTO_IPIP, wire::IPPROTO_IPV6] {
        if let Ok(inner) = wire::decode_ip6tnl_payload(next_header, data) {
            assert!(inner.offset == 0 && inner.len <= data.len());
            assert_eq!(inner.header.tunnel_protocol(), next_header);
            assert_eq!(wire::parse_inner(&data[..inner.len]), Ok(inner.header));
        }
    }
    let peer: Ipv4Net = "10.244.1.0/24".parse().unwrap();
    let local: Ipv4Net = "10.244.2.0/24".parse().unwrap();
    let any: Ipv4Net = "0.0.0.0/0".parse().unwrap();
    for ipip in [false, true] {
        for (p, l) in [(&peer, &local), (&any, &any)] {
            if let Ok(inner) = wire::receive_check(ipip, data, p, l) {
                assert!(inner.offset + inner.len <= data.len());
                assert!(inner.len >= inner.header.header_len);
                assert!(p.contains(&inner.header.src) && l.contains(&inner.header.dst));
                let again = wire::parse_ipv4(&data[inner.offset..inner.offset + inner.len]);
                assert_eq!(again, Ok(inner.header));
            }
        }
        let peer6: Ipv6Net = "fd00:1::/64".parse().unwrap();
        let local6: Ipv6Net = "fd00:2::/64".parse().unwrap();
        let any6: Ipv6Net = "::/0".parse().unwrap();
        // Dual stack, everything open, and an IPv6-only node (no IPv4 subnet at either end).
        for (p, l) in [
            ((Some(&peer), Some(&peer6)), (Some(&local), Some(&local6))),
            ((Some(&any), Some(&any6)), (Some(&any), Some(&any6))),
            ((None, Some(&any6)), (None, Some(&any6))),
        ] {
            if let Ok(inner) = wire::receive_check_any(ipip, data, p, l) {
                assert!(inner.offset + inner.len <= data.len());
                let src = inner.header.src();
                let dst = inner.header.dst();
                let (ps, ls) = match (src, dst) {
                    (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => {
                        (p.0.is_some_and(|n| n.contains(&s)), l.0.is_some_and(|n| n.contains(&d)))
                    }
                    (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => (
                        p.1.is_some_and(|n| n.contains(&s)),
                        l.1.is_some_and(|n| n.contains(&d)),
                    ),
                    _ => (false, false),
                };
                assert!(ps && ls);
                let again = wire::parse_inner(&data[inner.offset..inner.offset + inner.len]);
                assert_eq!(again, Ok(inner.header));
            }
        }
    }
});
