//! Fuzz target: the receive-path validation (udp payload and ipip packet decoding plus the
//! peer/local subnet policy) on arbitrary bytes. It must never panic, and whatever it accepts
//! must lie within the input and satisfy the policy.
#![no_main]

use ipnet::Ipv4Net;
use libfuzzer_sys::fuzz_target;
use twill_tunnel::wire;

fuzz_target!(|data: &[u8]| {
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
    }
});
