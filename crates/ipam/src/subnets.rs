//! Node subnets cut from the cluster's pools: which subnets a pool offers a node, and which one
//! a joining node tries to lease, and the IPv6 subnet that goes with a node's IPv4 subnet in a
//! dual-stack cluster. In an IPv6-only cluster (no IPv4 pool) the IPv6 subnet is chosen
//! directly from the IPv6 pools, the same way ([`pick_subnet6`]).
//!
//! Pure: the caller passes the subnets already leased (from the store) and a seed; the store's
//! compare-and-swap on the lease key settles the race when two nodes still pick the same one.

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use twill_types::cluster::{ClusterConfig, Pool, Pool6};

/// Every node subnet of `pool`, from `subnet_min` to `subnet_max` in address order. Lazy: a
/// /8 cut into /30s is not materialized.
pub fn candidates(pool: &Pool) -> impl Iterator<Item = Ipv4Net> + use<> {
    Cut::of(pool)
        .into_iter()
        .flat_map(|cut| (0..cut.count).map(move |i| cut.nth(i)))
}

/// Whether `subnet` is one of `pool`'s [`candidates`].
pub fn is_candidate(pool: &Pool, subnet: Ipv4Net) -> bool {
    Cut::of(pool).is_some_and(|c| c.index_of(subnet).is_some())
}

/// The subnet a joining node should try to lease, or `None` when every pool is full.
///
/// `preferred` (typically the subnet the node held before a restart, so its pods keep their
/// addresses) wins if it is a free candidate of some pool. Otherwise the pools are tried in
/// order, and within a pool the candidates are visited in a seed-derived order (a random
/// start and a random stride coprime to the count), so nodes that join together with
/// different seeds rarely pick the same subnet. The walk stops at the first free candidate:
/// its cost grows with the taken subnets met on the way, not with the pool's size.
///
/// A candidate is free when it overlaps no subnet in `taken`: leases made under an older
/// config may have another block size. Entries of `taken` that are not inside a pool (a stray
/// or forged lease key such as `/twill/leases/0.0.0.0-0`, a net wider than a pool, a subnet
/// of another network) cannot be a node subnet of this config and are ignored, so one such key
/// cannot make every pool look full.
pub fn pick_subnet(
    config: &ClusterConfig,
    taken: &HashSet<Ipv4Net>,
    preferred: Option<Ipv4Net>,
    seed: u64,
) -> Option<Ipv4Net> {
    let inside: HashSet<Ipv4Net> = taken
        .iter()
        .copied()
        .filter(|t| counts_as_taken(config, *t))
        .collect();
    let taken = Taken::new(&inside);
    if let Some(subnet) = preferred
        && !taken.overlaps(subnet)
        && config.pools.iter().any(|p| is_candidate(p, subnet))
    {
        return Some(subnet);
    }
    config.pools.iter().enumerate().find_map(|(i, pool)| {
        let cut = Cut::of(pool)?;
        let mixed = mix(seed ^ mix(i as u64));
        let mut index = mixed % cut.count;
        let stride = coprime_stride(mix(mixed).into(), cut.count.into());
        let stride = u64::try_from(stride).expect("a stride is below the count");
        for _ in 0..cut.count {
            let subnet = cut.nth(index);
            if !taken.overlaps(subnet) {
                return Some(subnet);
            }
            index = (index + stride) % cut.count;
        }
        None
    })
}

/// Whether a leased subnet can hold back candidates of `config`: it lies inside one of its
/// pools (the pool itself included: a node subnet of an older config may be as large). A net
/// wider than every pool it touches, or outside them all, is ignored by [`pick_subnet`].
pub fn counts_as_taken(config: &ClusterConfig, subnet: Ipv4Net) -> bool {
    config.pools.iter().any(|p| p.cidr.contains(&subnet))
}

/// The IPv6 subnet of the node that leases `subnet4`, in a dual-stack cluster.
///
/// Derived, not chosen: the n-th candidate of `config.pools` (pools in order, each from
/// `subnet_min` to `subnet_max`) goes with the n-th candidate of `config.ipv6_pools` counted the
/// same way. The IPv6 subnet is thus unique whenever the IPv4 one is, and travels in the same
/// lease record, written by the same compare-and-swap: no second key can disagree with it.
///
/// `None` when `subnet4` is no candidate of any pool, when the config has no IPv6 pool, or when
/// the IPv6 pools have fewer candidates than the index (a config validation rejects that).
pub fn subnet6_for(config: &ClusterConfig, subnet4: Ipv4Net) -> Option<Ipv6Net> {
    let mut index = index4_of(config, subnet4)?;
    for pool in &config.ipv6_pools {
        let count = pool.subnet_count();
        if index < count {
            return nth6(pool, index);
        }
        index -= count;
    }
    None
}

/// The position of `subnet4` among all candidates of `config.pools`, pools in order.
fn index4_of(config: &ClusterConfig, subnet4: Ipv4Net) -> Option<u128> {
    let mut before = 0u128;
    for pool in &config.pools {
        let Some(cut) = Cut::of(pool) else { continue };
        if let Some(i) = cut.index_of(subnet4) {
            return Some(before + u128::from(i));
        }
        before += u128::from(cut.count);
    }
    None
}

/// The `index`-th candidate of `pool`; `index` is below `pool.subnet_count()`, so the result
/// lies between `subnet_min` and `subnet_max`.
fn nth6(pool: &Pool6, index: u128) -> Option<Ipv6Net> {
    Cut6::of(pool).map(|cut| cut.nth(index))
}

/// Whether `subnet` is one of `pool`'s node subnets: of its block size, aligned, between
/// `subnet_min` and `subnet_max`.
pub fn is_candidate6(pool: &Pool6, subnet: Ipv6Net) -> bool {
    Cut6::of(pool).is_some_and(|c| c.index_of(subnet).is_some())
}

/// Every node subnet of an IPv6 `pool`, from `subnet_min` to `subnet_max` in address order.
/// Lazy: a /48 cut into /112s is not materialized.
pub fn candidates6(pool: &Pool6) -> impl Iterator<Item = Ipv6Net> + use<> {
    Cut6::of(pool)
        .into_iter()
        .flat_map(|cut| (0..cut.count).map(move |i| cut.nth(i)))
}

/// [`pick_subnet`] for an IPv6-only cluster: the IPv6 subnet a joining node should try to
/// lease from `config.ipv6_pools`, or `None` when every IPv6 pool is full. Same rules:
/// `preferred` wins when it is a free candidate, otherwise each pool is walked in a
/// seed-derived order and the first candidate that overlaps nothing in `taken` is chosen;
/// entries of `taken` outside every IPv6 pool are ignored.
pub fn pick_subnet6(
    config: &ClusterConfig,
    taken: &HashSet<Ipv6Net>,
    preferred: Option<Ipv6Net>,
    seed: u64,
) -> Option<Ipv6Net> {
    let inside: Vec<(u128, u128)> = taken
        .iter()
        .filter(|t| counts_as_taken6(config, **t))
        .map(|t| (u128::from(t.network()), u128::from(t.broadcast())))
        .collect();
    let taken = Taken::from_ranges(inside);
    let overlaps =
        |n: Ipv6Net| taken.overlaps_range(u128::from(n.network()), u128::from(n.broadcast()));
    if let Some(subnet) = preferred
        && !overlaps(subnet)
        && config.ipv6_pools.iter().any(|p| is_candidate6(p, subnet))
    {
        return Some(subnet);
    }
    config.ipv6_pools.iter().enumerate().find_map(|(i, pool)| {
        let cut = Cut6::of(pool)?;
        let mixed = mix(seed ^ mix(i as u64));
        let random = (u128::from(mixed) << 64) | u128::from(mix(mixed));
        let mut index = random % cut.count;
        let stride = coprime_stride(random.rotate_left(64), cut.count);
        // A huge pool is never walked to its end: the walk stops at the first free candidate.
        let mut left = cut.count;
        while left > 0 {
            let subnet = cut.nth(index);
            if !overlaps(subnet) {
                return Some(subnet);
            }
            index = (index + stride) % cut.count;
            left -= 1;
        }
        None
    })
}

/// [`counts_as_taken`] for the IPv6 pools.
pub fn counts_as_taken6(config: &ClusterConfig, subnet: Ipv6Net) -> bool {
    config.ipv6_pools.iter().any(|p| p.cidr.contains(&subnet))
}

/// An IPv6 pool's candidates as arithmetic, as [`Cut`] for IPv4: `count` blocks from the
/// `first`-th block of the address space.
#[derive(Clone, Copy)]
struct Cut6 {
    first: u128,
    block: u8,
    count: u128,
}

impl Cut6 {
    /// `None` for a pool with no candidates (an invalid pool: validated configs have some).
    fn of(pool: &Pool6) -> Option<Cut6> {
        let count = pool.subnet_count();
        let min = pool.subnet_min;
        (count > 0 && min.addr() == min.network()).then(|| Cut6 {
            first: block_index(min.network(), pool.block_size),
            block: pool.block_size,
            count,
        })
    }

    fn nth(self, i: u128) -> Ipv6Net {
        // A /0 block is the whole space (and `<< 128` would overflow).
        let addr = (self.first + i)
            .checked_shl(128 - u32::from(self.block))
            .unwrap_or(0);
        Ipv6Net::new(Ipv6Addr::from(addr), self.block).expect("block is a prefix length")
    }

    fn index_of(self, subnet: Ipv6Net) -> Option<u128> {
        let aligned = subnet.addr() == subnet.network();
        let offset = block_index(subnet.addr(), self.block).checked_sub(self.first)?;
        (subnet.prefix_len() == self.block && aligned && offset < self.count).then_some(offset)
    }
}

/// Which `block`-sized block of the IPv6 space `addr` lies in.
fn block_index(addr: Ipv6Addr, block: u8) -> u128 {
    u128::from(addr)
        .checked_shr(128 - u32::from(block))
        .unwrap_or(0)
}

/// A pool's candidates as arithmetic: `count` blocks of `2^(32 - block)` addresses from
/// `first`.
#[derive(Clone, Copy)]
struct Cut {
    first: u64,
    block: u8,
    count: u64,
}

impl Cut {
    /// `None` for a pool with no candidates (an invalid pool: validated configs have some).
    fn of(pool: &Pool) -> Option<Cut> {
        let count = pool.subnet_count();
        (count > 0 && pool.subnet_min.addr() == pool.subnet_min.network()).then(|| Cut {
            first: u64::from(u32::from(pool.subnet_min.addr())),
            block: pool.block_size,
            count,
        })
    }

    fn size(self) -> u64 {
        1 << (32 - u32::from(self.block))
    }

    fn nth(self, i: u64) -> Ipv4Net {
        let addr = u32::try_from(self.first + i * self.size()).expect("inside the pool");
        Ipv4Net::new(Ipv4Addr::from(addr), self.block).expect("block is a prefix length")
    }

    fn index_of(self, subnet: Ipv4Net) -> Option<u64> {
        let addr = u64::from(u32::from(subnet.addr()));
        let aligned = subnet.addr() == subnet.network();
        let offset = addr.checked_sub(self.first)?;
        (subnet.prefix_len() == self.block && aligned && offset / self.size() < self.count)
            .then_some(offset / self.size())
    }
}

/// The taken subnets as sorted, merged address intervals, to test overlap whatever the
/// prefix lengths (IPv4 addresses widened to `u128`, so both families share it).
struct Taken(Vec<(u128, u128)>);

impl Taken {
    fn new(taken: &HashSet<Ipv4Net>) -> Taken {
        Taken::from_ranges(taken.iter().map(|n| span(*n)).collect())
    }

    fn from_ranges(mut ranges: Vec<(u128, u128)>) -> Taken {
        ranges.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1.saturating_add(1) => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        Taken(merged)
    }

    fn overlaps(&self, subnet: Ipv4Net) -> bool {
        let (start, end) = span(subnet);
        self.overlaps_range(start, end)
    }

    fn overlaps_range(&self, start: u128, end: u128) -> bool {
        let i = self.0.partition_point(|r| r.1 < start);
        self.0.get(i).is_some_and(|r| r.0 <= end)
    }
}

/// First and last address of `net` (host bits ignored).
fn span(net: Ipv4Net) -> (u128, u128) {
    (
        u128::from(u32::from(net.network())),
        u128::from(u32::from(net.broadcast())),
    )
}

/// A stride in `1..count` (1 when `count` is 1) sharing no factor with `count`, so that
/// stepping by it visits every index once.
fn coprime_stride(random: u128, count: u128) -> u128 {
    if count <= 2 {
        return 1;
    }
    let mut stride = 1 + random % (count - 1);
    while gcd(stride, count) != 1 {
        stride = if stride + 1 >= count { 1 } else { stride + 1 };
    }
    stride
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// SplitMix64's finalizer: neighbouring seeds (e.g. node indices) give unrelated outputs.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use twill_types::cluster::{Backend, BackendKind};

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn pool(name: &str, cidr: &str, block: u8, min: &str, max: &str) -> Pool {
        Pool {
            name: name.into(),
            cidr: net(cidr),
            block_size: block,
            subnet_min: Ipv4Net::new(min.parse().unwrap(), block).unwrap(),
            subnet_max: Ipv4Net::new(max.parse().unwrap(), block).unwrap(),
            nat_outgoing: true,
        }
    }

    fn config(pools: Vec<Pool>) -> ClusterConfig {
        let c = ClusterConfig {
            pools,
            ipv6_pools: Vec::new(),
            backend: Backend::with_defaults(BackendKind::Vxlan),
            bgp: None,
            wireguard: None,
            host_access: Default::default(),
        };
        c.validate().unwrap();
        c
    }

    fn set(nets: &[&str]) -> HashSet<Ipv4Net> {
        nets.iter().map(|s| net(s)).collect()
    }

    #[test]
    fn candidates_run_from_min_to_max() {
        let p = pool("a", "10.244.0.0/16", 24, "10.244.1.0", "10.244.4.0");
        let all: Vec<_> = candidates(&p).map(|n| n.to_string()).collect();
        assert_eq!(
            all,
            [
                "10.244.1.0/24",
                "10.244.2.0/24",
                "10.244.3.0/24",
                "10.244.4.0/24"
            ]
        );
        assert!(is_candidate(&p, net("10.244.3.0/24")));
        for not in [
            "10.244.0.0/24",
            "10.244.5.0/24",
            "10.244.3.0/25",
            "10.244.3.1/24",
        ] {
            assert!(!is_candidate(&p, net(not)), "{not}");
        }
        // The top of the address space does not overflow.
        let p = pool(
            "top",
            "255.255.255.0/24",
            30,
            "255.255.255.4",
            "255.255.255.252",
        );
        assert_eq!(candidates(&p).count(), 63);
        assert_eq!(candidates(&p).last(), Some(net("255.255.255.252/30")));
        // A huge pool is lazy.
        let p = pool("big", "10.0.0.0/8", 30, "10.0.0.4", "10.255.255.252");
        assert_eq!(candidates(&p).nth(1_000_000), Some(net("10.61.9.4/30")));
    }

    #[test]
    fn preferred_wins_when_free_and_valid() {
        let c = config(vec![pool(
            "a",
            "10.244.0.0/16",
            24,
            "10.244.1.0",
            "10.244.255.0",
        )]);
        let p = net("10.244.7.0/24");
        assert_eq!(pick_subnet(&c, &set(&[]), Some(p), 1), Some(p));
        // Taken, misaligned, outside or below SubnetMin: ignored, another one is picked.
        for (taken, preferred) in [
            (set(&["10.244.7.0/24"]), p),
            (set(&["10.244.0.0/20"]), p),
            (set(&[]), net("10.244.7.0/25")),
            (set(&[]), net("10.245.7.0/24")),
            (set(&[]), net("10.244.0.0/24")),
        ] {
            let got = pick_subnet(&c, &taken, Some(preferred), 1).unwrap();
            assert_ne!(got, preferred);
            assert!(is_candidate(&c.pools[0], got));
        }
    }

    #[test]
    fn pools_fill_in_order_and_then_none() {
        let c = config(vec![
            pool("a", "10.1.0.0/24", 26, "10.1.0.64", "10.1.0.192"),
            pool("b", "10.2.0.0/24", 26, "10.2.0.64", "10.2.0.192"),
        ]);
        let mut taken = HashSet::new();
        for seed in 0..6 {
            let got = pick_subnet(&c, &taken, None, seed).unwrap();
            let expected_pool = if taken.len() < 3 {
                "10.1.0.0/24"
            } else {
                "10.2.0.0/24"
            };
            assert!(net(expected_pool).contains(&got), "{got}");
            assert!(taken.insert(got));
        }
        assert_eq!(pick_subnet(&c, &taken, None, 99), None);
        // A lease from an older config with a larger block blocks what it covers.
        let taken = set(&["10.1.0.0/24", "10.2.0.0/25"]);
        assert_eq!(pick_subnet(&c, &taken, None, 5), Some(net("10.2.0.128/26")));
        assert_eq!(
            pick_subnet(&c, &taken, None, 6),
            pick_subnet(&c, &taken, None, 5)
        );
    }

    #[test]
    fn seeds_spread_joining_nodes() {
        let c = config(vec![pool(
            "a",
            "10.244.0.0/16",
            24,
            "10.244.1.0",
            "10.244.255.0",
        )]);
        let picks: HashSet<_> = (0..20u64)
            .map(|seed| pick_subnet(&c, &HashSet::new(), None, seed).unwrap())
            .collect();
        // 20 draws from 255 collide about once on average; these seeds do not at all.
        assert!(picks.len() >= 19, "{}", picks.len());
        // Deterministic per seed.
        assert_eq!(
            pick_subnet(&c, &HashSet::new(), None, 42),
            pick_subnet(&c, &HashSet::new(), None, 42)
        );
    }

    #[test]
    fn huge_pool_is_sampled_not_enumerated() {
        let c = config(vec![pool(
            "a",
            "10.0.0.0/8",
            30,
            "10.0.0.4",
            "10.255.255.252",
        )]);
        let mut taken = HashSet::new();
        for seed in 0..2000 {
            let got = pick_subnet(&c, &taken, None, seed).unwrap();
            assert!(taken.insert(got), "{got} picked twice");
        }
    }

    #[test]
    fn leases_outside_the_pools_are_ignored() {
        let c = config(vec![pool(
            "a",
            "10.244.0.0/16",
            24,
            "10.244.1.0",
            "10.244.255.0",
        )]);
        // A stray key `/twill/leases/0.0.0.0-0`, a wider net, another network.
        for stray in ["0.0.0.0/0", "10.0.0.0/8", "10.244.0.0/15", "192.168.0.0/24"] {
            let taken = set(&[stray]);
            let got = pick_subnet(&c, &taken, None, 7)
                .unwrap_or_else(|| panic!("a lease of {stray} made the pool look full"));
            assert!(is_candidate(&c.pools[0], got), "{got}");
            assert!(!counts_as_taken(&c, net(stray)), "{stray}");
        }
        // Inside the pool, any length still counts (leases of an older block size).
        assert!(counts_as_taken(&c, net("10.244.0.0/17")));
        assert!(counts_as_taken(&c, net("10.244.7.0/24")));
        let taken = set(&["0.0.0.0/0", "10.244.0.0/17"]);
        let got = pick_subnet(&c, &taken, None, 3).unwrap();
        assert!(
            got.addr() >= "10.244.128.0".parse::<Ipv4Addr>().unwrap(),
            "{got}"
        );
        // Everything taken plus a stray key: full is still full.
        let all: HashSet<Ipv4Net> = candidates(&c.pools[0]).chain([net("0.0.0.0/0")]).collect();
        assert_eq!(pick_subnet(&c, &all, None, 1), None);
    }

    #[test]
    fn strides_are_coprime() {
        for count in 1..200 {
            for random in [0, 1, 7, 12345, u128::from(u64::MAX), u128::MAX] {
                let s = coprime_stride(random, count);
                assert!(s >= 1 && (count == 1 || s < count), "{count} {s}");
                assert_eq!(gcd(s, count), 1, "{count} {s}");
            }
        }
    }

    fn arb_case() -> impl Strategy<Value = (ClusterConfig, HashSet<Ipv4Net>, Option<Ipv4Net>, u64)>
    {
        let pool = (26u8..=30, 0u64..64, 0u64..64);
        (
            proptest::collection::vec(pool, 1..3),
            proptest::collection::vec((0u32..1024, 24u8..=30), 0..80),
            proptest::option::of((0u32..1024, 24u8..=30)),
            any::<u64>(),
        )
            .prop_map(|(pools, taken, preferred, seed)| {
                // Pool i is 10.0.i.0/24 with a random block and random bounds.
                let pools = pools
                    .into_iter()
                    .enumerate()
                    .map(|(i, (block, a, b))| {
                        let count = 1u64 << (block - 24);
                        let (lo, hi) = ((a % count).min(b % count), (a % count).max(b % count));
                        let base = u32::from(Ipv4Addr::new(10, 0, i as u8, 0));
                        let at = |n: u64| {
                            let addr = base + (n << (32 - block)) as u32;
                            Ipv4Net::new(Ipv4Addr::from(addr), block).unwrap()
                        };
                        Pool {
                            name: format!("p{i}"),
                            cidr: Ipv4Net::new(Ipv4Addr::from(base), 24).unwrap(),
                            block_size: block,
                            subnet_min: at(lo),
                            subnet_max: at(hi),
                            nat_outgoing: true,
                        }
                    })
                    .collect();
                // Taken and preferred subnets anywhere in 10.0.0.0/22, of any length.
                let sub = |(offset, len): (u32, u8)| {
                    Ipv4Net::new(
                        Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 0, 0, 0)) + offset),
                        len,
                    )
                    .unwrap()
                    .trunc()
                };
                (
                    config(pools),
                    taken.into_iter().map(sub).collect(),
                    preferred.map(sub),
                    seed,
                )
            })
    }

    fn pool6(name: &str, block: u8, min: &str, max: &str) -> Pool6 {
        let min: Ipv6Net = Ipv6Net::new(min.parse().unwrap(), block).unwrap();
        Pool6 {
            name: name.into(),
            cidr: Ipv6Net::new(min.addr(), 48).unwrap().trunc(),
            block_size: block,
            subnet_min: min,
            subnet_max: Ipv6Net::new(max.parse().unwrap(), block).unwrap(),
            nat_outgoing: false,
        }
    }

    fn net6(s: &str) -> Ipv6Net {
        s.parse().unwrap()
    }

    #[test]
    fn subnet6_follows_the_ipv4_index_across_pools() {
        let mut c = config(vec![
            pool("a", "10.1.0.0/24", 26, "10.1.0.64", "10.1.0.192"),
            pool("b", "10.2.0.0/24", 26, "10.2.0.0", "10.2.0.192"),
        ]);
        // No IPv6 pool: an IPv4-only cluster.
        assert_eq!(subnet6_for(&c, net("10.1.0.64/26")), None);
        c.ipv6_pools = vec![
            pool6("x", 64, "fd00:0:0:10::", "fd00:0:0:11::"),
            pool6("y", 120, "fd01::100", "fd01::f00"),
        ];
        let pairs = [
            ("10.1.0.64/26", "fd00:0:0:10::/64"),
            ("10.1.0.128/26", "fd00:0:0:11::/64"),
            ("10.1.0.192/26", "fd01::100/120"),
            ("10.2.0.0/26", "fd01::200/120"),
            ("10.2.0.192/26", "fd01::500/120"),
        ];
        for (v4, v6) in pairs {
            assert_eq!(subnet6_for(&c, net(v4)), Some(net6(v6)), "{v4}");
        }
        // Not a candidate: below subnet_min, misaligned, another length, outside every pool.
        for v4 in [
            "10.1.0.0/26",
            "10.1.0.65/26",
            "10.1.0.64/27",
            "10.3.0.0/26",
            "0.0.0.0/0",
        ] {
            assert_eq!(subnet6_for(&c, net(v4)), None, "{v4}");
        }
        // Too few IPv6 candidates for the index (validation rejects such a config).
        c.ipv6_pools.truncate(1);
        assert_eq!(subnet6_for(&c, net("10.1.0.192/26")), None);
        // The top of the IPv6 space does not overflow.
        c.ipv6_pools = vec![pool6(
            "top",
            122,
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffc0",
        )];
        assert_eq!(
            subnet6_for(&c, net("10.1.0.128/26")),
            Some(net6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff40/122"))
        );
        assert_eq!(
            subnet6_for(&c, net("10.1.0.192/26")),
            Some(net6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff80/122"))
        );
        assert_eq!(
            subnet6_for(&c, net("10.2.0.0/26")),
            Some(net6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffc0/122"))
        );
        assert_eq!(subnet6_for(&c, net("10.2.0.64/26")), None);
    }

    /// IPv6 pools for the property tests: pool i is `fd00:i::/48` with a random block and
    /// random bounds.
    fn arb_pools6() -> impl Strategy<Value = Vec<Pool6>> {
        proptest::collection::vec((56u8..=122, 0u128..40, 0u128..40), 0..4).prop_map(|pools| {
            pools
                .into_iter()
                .enumerate()
                .map(|(i, (block, a, b))| {
                    let (lo, hi) = (a.min(b), a.max(b));
                    let base = u128::from(Ipv6Addr::new(0xfd00, i as u16, 0, 0, 0, 0, 0, 0));
                    let at = |n: u128| {
                        Ipv6Net::new(Ipv6Addr::from(base + (n << (128 - block))), block).unwrap()
                    };
                    Pool6 {
                        name: format!("v6-{i}"),
                        cidr: Ipv6Net::new(Ipv6Addr::from(base), 48).unwrap(),
                        block_size: block,
                        subnet_min: at(lo),
                        subnet_max: at(hi),
                        nat_outgoing: false,
                    }
                })
                .collect()
        })
    }

    fn config6(pools6: Vec<Pool6>) -> ClusterConfig {
        let c = ClusterConfig {
            pools: Vec::new(),
            ipv6_pools: pools6,
            backend: Backend::with_defaults(BackendKind::Vxlan),
            bgp: None,
            wireguard: None,
            host_access: Default::default(),
        };
        c.validate().unwrap();
        c
    }

    #[test]
    fn ipv6_only_picks_from_the_ipv6_pools_until_full() {
        let c = config6(vec![
            pool6("x", 120, "fd00::100", "fd00::300"),
            pool6("y", 64, "fd01:0:0:10::", "fd01:0:0:11::"),
        ]);
        assert!(is_candidate6(&c.ipv6_pools[0], net6("fd00::200/120")));
        for not in [
            "fd00::/120",
            "fd00::400/120",
            "fd00::280/121",
            "fd00::201/120",
        ] {
            assert!(!is_candidate6(&c.ipv6_pools[0], net6(not)), "{not}");
        }
        let preferred = net6("fd01:0:0:11::/64");
        assert_eq!(
            pick_subnet6(&c, &HashSet::new(), Some(preferred), 1),
            Some(preferred)
        );
        let mut taken = HashSet::new();
        for seed in 0..5 {
            let got = pick_subnet6(&c, &taken, None, seed).unwrap();
            // The first pool fills first.
            let first = taken.len() < 3;
            assert_eq!(is_candidate6(&c.ipv6_pools[0], got), first, "{got}");
            assert_eq!(is_candidate6(&c.ipv6_pools[1], got), !first, "{got}");
            assert!(taken.insert(got), "{got} picked twice");
        }
        assert_eq!(pick_subnet6(&c, &taken, None, 9), None);
        // Taken preferred: another one (none left here).
        assert_eq!(pick_subnet6(&c, &taken, Some(preferred), 9), None);
        // Stray keys outside the pools hold nothing back; a wider one inside does.
        let stray: HashSet<Ipv6Net> = [net6("::/0"), net6("fd02::/64")].into();
        assert!(pick_subnet6(&c, &stray, None, 3).is_some());
        assert!(!counts_as_taken6(&c, net6("::/0")));
        let wide: HashSet<Ipv6Net> = [net6("fd00::/118"), net6("fd01::/48")].into();
        assert_eq!(pick_subnet6(&c, &wide, None, 3), None);
    }

    #[test]
    fn ipv6_huge_pool_is_sampled_not_enumerated() {
        let c = config6(vec![pool6(
            "big",
            122,
            "fd00::",
            "fd00:0:0:ffff:ffff:ffff:ffff:ffc0",
        )]);
        assert_eq!(
            candidates6(&c.ipv6_pools[0]).nth(2),
            Some(net6("fd00::80/122"))
        );
        let mut taken = HashSet::new();
        for seed in 0..500 {
            let got = pick_subnet6(&c, &taken, None, seed).unwrap();
            assert!(is_candidate6(&c.ipv6_pools[0], got), "{got}");
            assert!(taken.insert(got), "{got} picked twice");
        }
        assert_eq!(
            pick_subnet6(&c, &HashSet::new(), None, 42),
            pick_subnet6(&c, &HashSet::new(), None, 42)
        );
    }

    proptest! {
        #[test]
        fn picks_a_free_candidate_iff_one_exists((c, taken, preferred, seed) in arb_case()) {
            // Taken subnets that are not inside a pool (wider, or elsewhere) hold nothing back.
            let free = |n: Ipv4Net| !taken.iter().filter(|t| counts_as_taken(&c, **t)).any(|t| t.contains(&n.network()) || n.contains(&t.network()));
            let any_free = c.pools.iter().flat_map(candidates).any(free);
            match pick_subnet(&c, &taken, preferred, seed) {
                None => prop_assert!(!any_free),
                Some(got) => {
                    prop_assert!(free(got), "{} overlaps a taken subnet", got);
                    let pool = c.pools.iter().find(|p| is_candidate(p, got));
                    prop_assert!(pool.is_some(), "{} is no candidate", got);
                    let pool = pool.unwrap();
                    prop_assert!(pool.subnet_min.addr() <= got.addr() && got.addr() <= pool.subnet_max.addr());
                    if let Some(p) = preferred.filter(|p| free(*p) && c.pools.iter().any(|pl| is_candidate(pl, *p))) {
                        prop_assert_eq!(got, p);
                    }
                    // Earlier pools are full.
                    for earlier in c.pools.iter().take_while(|p| !is_candidate(p, got)) {
                        if preferred != Some(got) {
                            prop_assert!(!candidates(earlier).any(free));
                        }
                    }
                }
            }
        }

        #[test]
        fn candidates_match_the_count((c, _, _, _) in arb_case()) {
            for pool in &c.pools {
                let all: Vec<_> = candidates(pool).collect();
                prop_assert_eq!(all.len() as u64, pool.subnet_count());
                prop_assert_eq!(all.first(), Some(&pool.subnet_min));
                prop_assert_eq!(all.last(), Some(&pool.subnet_max));
                prop_assert!(all.iter().all(|n| is_candidate(pool, *n)));
            }
        }

        #[test]
        fn subnet6_is_a_bijection_within_bounds((mut c, taken, _, _) in arb_case(), pools6 in arb_pools6()) {
            c.ipv6_pools = pools6;
            let count6: u128 = c.ipv6_pools.iter().map(Pool6::subnet_count).sum();
            let all4: Vec<Ipv4Net> = c.pools.iter().flat_map(candidates).collect();
            let mut seen = HashSet::new();
            for (n, v4) in all4.iter().enumerate() {
                let got = subnet6_for(&c, *v4);
                if (n as u128) < count6 {
                    let v6 = got.unwrap();
                    prop_assert!(seen.insert(v6), "{} given twice", v6);
                    let inside = c.ipv6_pools.iter().any(|p| {
                        p.block_size == v6.prefix_len()
                            && p.cidr.contains(&v6)
                            && p.subnet_min.addr() <= v6.addr()
                            && v6.addr() <= p.subnet_max.addr()
                    });
                    prop_assert!(inside, "{} is outside the IPv6 pools' bounds", v6);
                } else {
                    prop_assert_eq!(got, None);
                }
            }
            // Every IPv6 candidate is reached when there are enough IPv4 ones.
            prop_assert_eq!(seen.len() as u128, count6.min(all4.len() as u128));
            // Anything that is not an IPv4 candidate has no IPv6 subnet.
            for t in taken {
                if !c.pools.iter().any(|p| is_candidate(p, t)) {
                    prop_assert_eq!(subnet6_for(&c, t), None, "{}", t);
                }
            }
        }

        #[test]
        fn ipv6_picks_a_free_candidate_iff_one_exists(
            pools6 in arb_pools6().prop_filter("some pool", |p| !p.is_empty()),
            taken in proptest::collection::vec((0u128..64, 0usize..4, 100u8..=124), 0..40),
            seed in any::<u64>(),
        ) {
            let c = ClusterConfig { pools: Vec::new(), ipv6_pools: pools6, ..config(vec![pool("a", "10.1.0.0/24", 26, "10.1.0.64", "10.1.0.192")]) };
            // Taken subnets near the start of the pools, of any length.
            let taken: HashSet<Ipv6Net> = taken
                .into_iter()
                .map(|(n, i, len)| {
                    let base = u128::from(Ipv6Addr::new(0xfd00, i as u16, 0, 0, 0, 0, 0, 0));
                    Ipv6Net::new(Ipv6Addr::from(base + (n << (128 - u32::from(len)))), len).unwrap().trunc()
                })
                .collect();
            let free = |n: Ipv6Net| !taken.iter().filter(|t| counts_as_taken6(&c, **t)).any(|t| t.contains(&n.network()) || n.contains(&t.network()));
            // Small pools only are enumerated here.
            let small = c.ipv6_pools.iter().all(|p| p.subnet_count() < 4096);
            match pick_subnet6(&c, &taken, None, seed) {
                None => prop_assert!(small && !c.ipv6_pools.iter().flat_map(candidates6).any(free)),
                Some(got) => {
                    prop_assert!(free(got), "{} overlaps a taken subnet", got);
                    prop_assert!(c.ipv6_pools.iter().any(|p| is_candidate6(p, got)), "{} is no candidate", got);
                }
            }
        }
    }
}
