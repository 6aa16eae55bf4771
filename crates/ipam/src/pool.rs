//! Address ranges and the choice of the next free address.
//!
//! This module is pure: no I/O, no clock, no global state. Whether an
//! address is taken is asked through a caller-supplied predicate, so the
//! same logic serves the on-disk store, tests and any future backend.
//! Persistence, locking and ownership records belong in `store`, not here.
//!
//! Addresses are handled as `u128` (IPv4 widened) so one code path covers
//! both families and huge IPv6 ranges never need to be enumerated.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::error::{Error, Reserved};

/// One subnet addresses are handed out from, plus the gateway kept for the
/// host side.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Range {
    pub subnet: IpNet,
    pub gateway: IpAddr,
}

impl Range {
    /// A range whose gateway is the first usable address (`10.88.0.1` for
    /// `10.88.0.0/16`, `fd88::1` for `fd88::/64`).
    pub fn new(subnet: IpNet) -> Result<Range, Error> {
        check_subnet(subnet)?;
        let gateway = from_u128(to_u128(subnet.network()) + 1, subnet);
        Ok(Range { subnet, gateway })
    }

    /// A range with an explicit gateway, which must lie inside the subnet
    /// and must not be the network (or IPv4 broadcast) address.
    pub fn with_gateway(subnet: IpNet, gateway: IpAddr) -> Result<Range, Error> {
        check_subnet(subnet)?;
        let invalid = |reason: String| Error::InvalidRange { subnet, reason };
        if !subnet.contains(&gateway) {
            return Err(invalid(format!(
                "gateway {gateway} lies outside the subnet"
            )));
        }
        let range = Range { subnet, gateway };
        match range.reserved_kind(gateway) {
            Some(Reserved::Gateway) | None => Ok(range),
            Some(kind) => Err(invalid(format!(
                "gateway {gateway} is the {kind} of the subnet"
            ))),
        }
    }

    /// Re-runs the constructors' checks. The fields are public, so a `Range`
    /// built by hand may be invalid; the store calls this before using one.
    pub fn validate(&self) -> Result<(), Error> {
        Range::with_gateway(self.subnet, self.gateway).map(drop)
    }

    /// Whether `ip` lies inside the subnet (reserved addresses included).
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(&ip)
    }

    /// Why `ip` may never be handed out, or `None` if it may (or lies
    /// outside the subnet, which is a different question: see `contains`).
    pub fn reserved_kind(&self, ip: IpAddr) -> Option<Reserved> {
        if !self.contains(ip) {
            return None;
        }
        let v = to_u128(ip);
        let (first, last) = self.candidate_bounds().unwrap_or((u128::MAX, 0));
        if v < first {
            Some(match self.subnet {
                IpNet::V4(_) => Reserved::Network,
                IpNet::V6(_) => Reserved::SubnetRouterAnycast,
            })
        } else if v > last {
            Some(Reserved::Broadcast)
        } else if ip == self.gateway {
            Some(Reserved::Gateway)
        } else {
            None
        }
    }

    /// Whether `ip` is inside the subnet and not reserved.
    pub fn is_assignable(&self, ip: IpAddr) -> bool {
        self.contains(ip) && self.reserved_kind(ip).is_none()
    }

    /// How many addresses can be handed to containers.
    pub fn usable_count(&self) -> u128 {
        let Some((first, last)) = self.candidate_bounds() else {
            return 0;
        };
        // Candidates are [first, last] minus the gateway, which validation
        // guarantees is one of them. This form cannot overflow even for ::/0.
        last - first
    }

    /// Inclusive bounds of the addresses that are not network/broadcast;
    /// `None` only for a hand-built range too small to have any.
    fn candidate_bounds(&self) -> Option<(u128, u128)> {
        let network = to_u128(self.subnet.network());
        let top = to_u128(self.subnet.broadcast());
        let (first, last) = match self.subnet {
            IpNet::V4(_) => (network + 1, top.checked_sub(1)?),
            // IPv6 has no broadcast: the last address is an ordinary one.
            IpNet::V6(_) => (network.checked_add(1)?, top),
        };
        (first <= last).then_some((first, last))
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (gateway {})", self.subnet, self.gateway)
    }
}

fn check_subnet(subnet: IpNet) -> Result<(), Error> {
    let invalid = |reason: String| Err(Error::InvalidRange { subnet, reason });
    if subnet.trunc() != subnet {
        return invalid(format!(
            "host bits are set; the network is {}",
            subnet.trunc()
        ));
    }
    // Network + gateway (+ broadcast) must leave at least one address for a
    // container, and a smaller range is always a configuration mistake.
    let max = match subnet {
        IpNet::V4(_) => 30,
        IpNet::V6(_) => 126,
    };
    if subnet.prefix_len() > max {
        return invalid(format!(
            "the network is too small: the prefix must be /{max} or shorter to leave an \
             address for containers besides the network, gateway and broadcast addresses"
        ));
    }
    Ok(())
}

/// The next address to hand out, or `None` when the range is full.
///
/// Round-robin like the reference host-local plugin: the search starts right
/// after `last` (when `last` lies inside the range) and wraps around, so a
/// freshly released address is not reused at once; stale ARP/neighbour
/// entries and conntrack state pointing at it get time to expire.
///
/// `is_used` is called at most once per candidate and the walk stops at the
/// first free one, so the cost is bounded by the number of used addresses in
/// the range plus one (the skipped gateway), never by the size of the range:
/// an almost empty /64 costs a couple of steps.
pub fn next_free(
    range: &Range,
    is_used: impl Fn(IpAddr) -> bool,
    last: Option<IpAddr>,
) -> Option<IpAddr> {
    let (first, top) = range.candidate_bounds()?;
    // Offsets are relative to `first`; `span` is the highest offset.
    let span = top - first;
    let start = last
        .filter(|ip| range.contains(*ip))
        .map(to_u128)
        .filter(|v| (first..=top).contains(v))
        .map_or(0, |v| if v - first == span { 0 } else { v - first + 1 });
    let gateway = to_u128(range.gateway);

    let mut offset = start;
    loop {
        let v = first + offset;
        if v != gateway {
            let ip = from_u128(v, range.subnet);
            if !is_used(ip) {
                return Some(ip);
            }
        }
        offset = if offset == span { 0 } else { offset + 1 };
        if offset == start {
            return None;
        }
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// Callers only pass values taken from inside `subnet`, so the IPv4
/// narrowing never truncates.
fn from_u128(v: u128, subnet: IpNet) -> IpAddr {
    match subnet {
        IpNet::V4(_) => IpAddr::V4(Ipv4Addr::from(v as u32)),
        IpNet::V6(_) => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::collections::HashSet;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn default_gateway_is_first_usable() {
        assert_eq!(
            Range::new(net("10.88.0.0/16")).unwrap().gateway,
            ip("10.88.0.1")
        );
        assert_eq!(Range::new(net("fd88::/64")).unwrap().gateway, ip("fd88::1"));
        assert_eq!(
            Range::new(net("10.0.0.4/30")).unwrap().gateway,
            ip("10.0.0.5")
        );
    }

    #[test]
    fn host_bits_set_is_rejected_with_a_hint() {
        let err = Range::new(net("10.88.0.5/16")).unwrap_err();
        assert!(matches!(err, Error::InvalidRange { .. }));
        let msg = err.to_string();
        assert!(msg.contains("10.88.0.5/16"), "{msg}");
        assert!(msg.contains("host bits"), "{msg}");
        assert!(msg.contains("10.88.0.0/16"), "{msg}");
        assert!(Range::new(net("fd88::7/64")).is_err());
    }

    #[test]
    fn too_small_networks_are_rejected() {
        for s in ["10.0.0.0/31", "10.0.0.1/32", "fd00::/127", "fd00::/128"] {
            let err = Range::new(net(s)).unwrap_err();
            assert!(err.to_string().contains("too small"), "{s}: {err}");
        }
        assert!(Range::new(net("10.0.0.0/30")).is_ok());
        assert!(Range::new(net("fd00::/126")).is_ok());
        assert_eq!(Range::new(net("10.0.0.0/30")).unwrap().usable_count(), 1);
        assert_eq!(Range::new(net("fd00::/126")).unwrap().usable_count(), 2);
        assert_eq!(
            Range::new(net("10.88.0.0/16")).unwrap().usable_count(),
            65533
        );
        assert_eq!(
            Range::new(net("::/0")).unwrap().usable_count(),
            u128::MAX - 1
        );
    }

    #[test]
    fn explicit_gateway_is_validated() {
        let n = net("10.1.2.0/24");
        let r = Range::with_gateway(n, ip("10.1.2.254")).unwrap();
        assert_eq!(r.gateway, ip("10.1.2.254"));
        for (gw, needle) in [
            ("10.1.3.1", "outside"),
            ("10.1.2.0", "network address"),
            ("10.1.2.255", "broadcast"),
            ("fd00::1", "outside"),
        ] {
            let err = Range::with_gateway(n, ip(gw)).unwrap_err();
            assert!(err.to_string().contains(needle), "{gw}: {err}");
        }
        // IPv6 has no broadcast, so the last address is a fine gateway.
        let r6 = Range::with_gateway(net("fd00::/120"), ip("fd00::ff")).unwrap();
        assert_eq!(r6.reserved_kind(ip("fd00::ff")), Some(Reserved::Gateway));
        assert!(Range::with_gateway(net("fd00::/120"), ip("fd00::")).is_err());
    }

    #[test]
    fn hand_built_invalid_ranges_do_not_panic() {
        for (subnet, gw) in [
            ("10.0.0.0/31", "10.0.0.1"),
            ("0.0.0.0/32", "0.0.0.0"),
            ("fd00::/128", "fd00::"),
        ] {
            let r = Range {
                subnet: net(subnet),
                gateway: ip(gw),
            };
            assert!(r.validate().is_err());
            assert_eq!(r.usable_count(), 0);
            assert_eq!(next_free(&r, |_| false, None), None);
            assert!(!r.is_assignable(ip(gw)));
        }
        let outside = Range {
            subnet: net("10.0.0.0/24"),
            gateway: ip("10.9.9.9"),
        };
        assert!(
            outside
                .validate()
                .unwrap_err()
                .to_string()
                .contains("outside")
        );
        assert!(Range::new(net("10.0.0.0/24")).unwrap().validate().is_ok());
    }

    #[test]
    fn reserved_kinds() {
        let r = Range::new(net("10.0.0.0/29")).unwrap();
        assert_eq!(r.reserved_kind(ip("10.0.0.0")), Some(Reserved::Network));
        assert_eq!(r.reserved_kind(ip("10.0.0.1")), Some(Reserved::Gateway));
        assert_eq!(r.reserved_kind(ip("10.0.0.7")), Some(Reserved::Broadcast));
        assert_eq!(r.reserved_kind(ip("10.0.0.2")), None);
        assert!(r.is_assignable(ip("10.0.0.6")));
        assert!(!r.is_assignable(ip("10.0.0.8")));
        let r6 = Range::new(net("fd00::/64")).unwrap();
        assert_eq!(
            r6.reserved_kind(ip("fd00::")),
            Some(Reserved::SubnetRouterAnycast)
        );
        assert!(r6.is_assignable(ip("fd00::ffff:ffff:ffff:ffff")));
    }

    #[test]
    fn round_robin_starts_after_last_and_wraps() {
        let r = Range::new(net("10.0.0.0/29")).unwrap(); // usable .2 ..= .6
        let none = |_: IpAddr| false;
        assert_eq!(next_free(&r, none, None), Some(ip("10.0.0.2")));
        assert_eq!(
            next_free(&r, none, Some(ip("10.0.0.2"))),
            Some(ip("10.0.0.3"))
        );
        assert_eq!(
            next_free(&r, none, Some(ip("10.0.0.6"))),
            Some(ip("10.0.0.2"))
        );
        // A cursor on a reserved or foreign address restarts at the beginning.
        assert_eq!(
            next_free(&r, none, Some(ip("10.0.0.7"))),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            next_free(&r, none, Some(ip("10.0.0.0"))),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            next_free(&r, none, Some(ip("192.168.0.4"))),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(
            next_free(&r, none, Some(ip("fd00::3"))),
            Some(ip("10.0.0.2"))
        );
        let used: HashSet<IpAddr> = [ip("10.0.0.5"), ip("10.0.0.6"), ip("10.0.0.2")].into();
        let is_used = |a: IpAddr| used.contains(&a);
        assert_eq!(
            next_free(&r, is_used, Some(ip("10.0.0.4"))),
            Some(ip("10.0.0.3"))
        );
    }

    #[test]
    fn full_range_gives_none() {
        let r = Range::new(net("10.0.0.0/30")).unwrap();
        assert_eq!(next_free(&r, |_| false, None), Some(ip("10.0.0.2")));
        assert_eq!(next_free(&r, |a| a == ip("10.0.0.2"), None), None);
        let r6 = Range::new(net("fd00::/126")).unwrap();
        assert_eq!(next_free(&r6, |_| true, Some(ip("fd00::2"))), None);
    }

    #[test]
    fn ipv6_last_address_is_usable_and_wraps() {
        let r = Range::new(net("fd00::/126")).unwrap(); // usable ::2, ::3
        assert_eq!(
            next_free(&r, |_| false, Some(ip("fd00::2"))),
            Some(ip("fd00::3"))
        );
        assert_eq!(
            next_free(&r, |_| false, Some(ip("fd00::3"))),
            Some(ip("fd00::2"))
        );
    }

    #[test]
    fn huge_range_is_not_enumerated() {
        let r = Range::new(net("fd00:1::/64")).unwrap();
        // 1000 used addresses right after the cursor: the walk must step over
        // exactly those, not the whole /64.
        let used: HashSet<IpAddr> = (2u128..1002)
            .map(|v| from_u128(to_u128(ip("fd00:1::")) + v, r.subnet))
            .collect();
        let calls = Cell::new(0u32);
        let got = next_free(
            &r,
            |a| {
                calls.set(calls.get() + 1);
                used.contains(&a)
            },
            None,
        );
        assert_eq!(got, Some(ip("fd00:1::3ea"))); // 0x3ea = 1002
        assert_eq!(calls.get(), 1001);

        // Wrap-around at the top of an IPv6 /0 must not overflow.
        let all = Range::new(net("::/0")).unwrap();
        assert_eq!(
            next_free(
                &all,
                |_| false,
                Some(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"))
            ),
            Some(ip("::2"))
        );
        let all4 = Range::new(net("0.0.0.0/0")).unwrap();
        assert_eq!(
            next_free(&all4, |_| false, Some(ip("255.255.255.254"))),
            Some(ip("0.0.0.2"))
        );
    }

    /// Brute-force model: walk every address of the subnet in round-robin
    /// order and take the first assignable unused one.
    fn model(r: &Range, used: &HashSet<IpAddr>, last: Option<IpAddr>) -> Option<IpAddr> {
        let base = to_u128(r.subnet.network());
        let size = to_u128(r.subnet.broadcast()) - base + 1;
        let start = match last {
            Some(l) if r.contains(l) => to_u128(l) - base + 1,
            _ => 0,
        };
        (0..size)
            .map(|i| from_u128(base + (start + i) % size, r.subnet))
            .find(|a| r.is_assignable(*a) && !used.contains(a))
    }

    /// A small range (v4 /28../30 or v6 /124../126) with an arbitrary
    /// gateway, a random used set and a random cursor (possibly outside).
    fn small_case() -> impl Strategy<Value = (Range, HashSet<IpAddr>, Option<IpAddr>)> {
        (
            any::<bool>(),
            any::<u128>(),
            0u8..=2,
            any::<u64>(),
            any::<u16>(),
            any::<u8>(),
        )
            .prop_map(|(v6, base, shrink, used_bits, gw_pick, last_pick)| {
                let subnet = if v6 {
                    let n = ipnet::Ipv6Net::new(Ipv6Addr::from(base), 124 + shrink).unwrap();
                    IpNet::V6(n.trunc())
                } else {
                    let n = ipnet::Ipv4Net::new(Ipv4Addr::from(base as u32), 28 + shrink).unwrap();
                    IpNet::V4(n.trunc())
                };
                let lo = to_u128(subnet.network());
                let size = to_u128(subnet.broadcast()) - lo + 1;
                let at = |i: u128| from_u128(lo + i, subnet);
                let range = if gw_pick % 3 == 0 {
                    Range::new(subnet).unwrap()
                } else {
                    // Any non-network, non-broadcast address.
                    let cands = if v6 { size - 1 } else { size - 2 };
                    let gw = at(1 + u128::from(gw_pick) % cands);
                    Range::with_gateway(subnet, gw).unwrap()
                };
                let used = (0..size)
                    .filter(|i| used_bits >> (i % 64) & 1 == 1)
                    .map(at)
                    .collect();
                // Mostly inside, sometimes just outside the subnet.
                let last = match last_pick % 8 {
                    0 => None,
                    1 => Some(from_u128(lo.wrapping_add(size), subnet)),
                    _ => Some(at(u128::from(last_pick) % size)),
                };
                (range, used, last)
            })
    }

    proptest! {
        #[test]
        fn next_free_matches_brute_force((range, used, last) in small_case()) {
            let got = next_free(&range, |a| used.contains(&a), last);
            prop_assert_eq!(got, model(&range, &used, last));
            if let Some(a) = got {
                prop_assert!(range.contains(a));
                prop_assert!(a != range.subnet.network());
                prop_assert!(a != range.gateway);
                if range.subnet.addr().is_ipv4() {
                    prop_assert!(a != range.subnet.broadcast());
                }
                prop_assert!(!used.contains(&a));
            } else {
                // Full: every assignable address really is used.
                let lo = to_u128(range.subnet.network());
                let hi = to_u128(range.subnet.broadcast());
                for v in lo..=hi {
                    let a = from_u128(v, range.subnet);
                    prop_assert!(!range.is_assignable(a) || used.contains(&a));
                }
            }
        }

        #[test]
        fn filling_a_range_hands_out_every_usable_address_once(
            (range, _, last) in small_case()
        ) {
            let mut used = HashSet::new();
            let mut cursor = last;
            while let Some(a) = next_free(&range, |x| used.contains(&x), cursor) {
                prop_assert!(range.is_assignable(a));
                prop_assert!(used.insert(a), "{} handed out twice", a);
                cursor = Some(a);
            }
            prop_assert_eq!(used.len() as u128, range.usable_count());
        }

        #[test]
        fn cost_is_bounded_by_used_count(start in any::<u64>(), n_used in 0u32..300) {
            let range = Range::new("fd00:2::/64".parse().unwrap()).unwrap();
            let lo = to_u128(range.subnet.network());
            let cursor = from_u128(lo + u128::from(start) + 1, range.subnet);
            let used: HashSet<IpAddr> = (0..u128::from(n_used))
                .map(|i| from_u128(lo + ((u128::from(start) + 2 + i) % (1u128 << 64)), range.subnet))
                .collect();
            let calls = Cell::new(0u32);
            let got = next_free(&range, |a| { calls.set(calls.get() + 1); used.contains(&a) }, Some(cursor));
            prop_assert!(got.is_some());
            prop_assert!(calls.get() <= n_used + 2);
        }
    }
}
