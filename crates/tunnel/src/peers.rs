//! The peer table the workers read on every batch, and the counters behind [`crate::stats`].
//!
//! `set_peers` builds a new immutable [`PeerTable`] and swaps it in atomically (arc-swap), so
//! the fast path never takes a lock: a worker loads the current table once per batch. Lookups
//! are by underlay address of either family (receive: who sent this?) and by longest-prefix match of the inner
//! destination over the peers' subnets of its family (send: where does this go?).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Peer;
use crate::wg_keys::PublicKey;
use crate::wg_peer::WgPeer;
use crate::wire::DropReason;

/// Keys are IPv4 addresses (ours, from the table) and lookups use attacker-chosen addresses,
/// but only inserts can create collisions, and only `set_peers` inserts: a cheap
/// multiplicative hash is enough and SipHash would cost more than the rest of the lookup.
#[derive(Default, Clone, Copy)]
pub(crate) struct U32Hasher(u64);

impl Hasher for U32Hasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn write_u8(&mut self, v: u8) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

pub(crate) type FastMap<V> = HashMap<u32, V, BuildHasherDefault<U32Hasher>>;
/// IPv6 keys hash their bytes (FNV-style, the same argument as for [`U32Hasher`]).
type FastMap6<V> = HashMap<u128, V, BuildHasherDefault<U32Hasher>>;

/// Traffic counters of one peer; kept across `set_peers` while the node stays.
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
}

pub(crate) struct PeerEntry {
    pub peer: Peer,
    /// Where to send: underlay address and the tunnel port (0 for ipip).
    pub addr: SocketAddr,
    pub counters: Arc<PeerCounters>,
    /// The WireGuard peer state (WireGuard tunnels only).
    pub wg: Option<Arc<WgPeer>>,
}

/// An immutable snapshot of the peers.
#[derive(Default)]
pub(crate) struct PeerTable {
    pub entries: Vec<PeerEntry>,
    by_underlay: FastMap<usize>,
    /// Peers with an IPv6 underlay address.
    by_underlay6: FastMap6<usize>,
    /// One map per distinct prefix length, longest first.
    by_prefix: Vec<(u8, FastMap<usize>)>,
    /// The same for the peers' IPv6 subnets.
    by_prefix6: Vec<(u8, FastMap6<usize>)>,
    /// WireGuard: entry by our 24-bit peer index, and by static public key.
    pub wg_by_index: FastMap<usize>,
    pub wg_by_key: HashMap<PublicKey, usize>,
}

impl PeerTable {
    /// Builds a table, reusing the counters of nodes that were in `old`. Later duplicates of
    /// an underlay address or subnet lose to earlier ones.
    pub(crate) fn build(peers: &[Peer], port: u16, old: Option<&PeerTable>) -> PeerTable {
        let old_counters: HashMap<&str, &Arc<PeerCounters>> = old
            .map(|t| {
                t.entries
                    .iter()
                    .map(|e| (e.peer.node.as_str(), &e.counters))
                    .collect()
            })
            .unwrap_or_default();
        let mut table = PeerTable::default();
        for peer in peers {
            let idx = table.entries.len();
            let counters = old_counters
                .get(peer.node.as_str())
                .map(|c| Arc::clone(c))
                .unwrap_or_default();
            match peer.underlay {
                IpAddr::V4(a) => table.by_underlay.entry(u32::from(a)).or_insert(idx),
                IpAddr::V6(a) => table.by_underlay6.entry(u128::from(a)).or_insert(idx),
            };
            if let Some(subnet) = peer.subnet.map(|n| n.trunc()) {
                let len = subnet.prefix_len();
                let slot = match table.by_prefix.iter().position(|(l, _)| *l == len) {
                    Some(i) => i,
                    None => {
                        table.by_prefix.push((len, FastMap::default()));
                        table.by_prefix.len() - 1
                    }
                };
                table.by_prefix[slot]
                    .1
                    .entry(u32::from(subnet.network()))
                    .or_insert(idx);
            }
            if let Some(subnet6) = peer.subnet6.map(|n| n.trunc()) {
                let len = subnet6.prefix_len();
                let slot = match table.by_prefix6.iter().position(|(l, _)| *l == len) {
                    Some(i) => i,
                    None => {
                        table.by_prefix6.push((len, FastMap6::default()));
                        table.by_prefix6.len() - 1
                    }
                };
                table.by_prefix6[slot]
                    .1
                    .entry(u128::from(subnet6.network()))
                    .or_insert(idx);
            }
            table.entries.push(PeerEntry {
                peer: peer.clone(),
                addr: SocketAddr::new(peer.underlay, port),
                counters,
                wg: None,
            });
        }
        table.by_prefix.sort_by_key(|p| std::cmp::Reverse(p.0));
        table.by_prefix6.sort_by_key(|p| std::cmp::Reverse(p.0));
        table
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The peer whose (IPv4) underlay address is `ip`.
    pub(crate) fn by_underlay(&self, ip: Ipv4Addr) -> Option<usize> {
        self.by_underlay.get(&u32::from(ip)).copied()
    }

    /// The peer whose underlay address, of either family, is `ip`. An IPv4-mapped IPv6
    /// address is not the IPv4 address: a peer is known by the family it was given.
    pub(crate) fn by_source(&self, ip: IpAddr) -> Option<usize> {
        match ip {
            IpAddr::V4(a) => self.by_underlay(a),
            IpAddr::V6(a) => self.by_underlay6.get(&u128::from(a)).copied(),
        }
    }

    /// The WireGuard peer a message with this receiver index is for: the index we gave the
    /// peer is in its upper 24 bits.
    pub(crate) fn wg_peer_by_index(&self, receiver_index: u32) -> Option<usize> {
        self.wg_by_index.get(&(receiver_index >> 8)).copied()
    }

    /// The peer whose subnet holds `ip` (longest prefix wins).
    pub(crate) fn by_destination(&self, ip: Ipv4Addr) -> Option<usize> {
        let ip = u32::from(ip);
        for (len, map) in &self.by_prefix {
            let mask = if *len == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(*len))
            };
            if let Some(i) = map.get(&(ip & mask)) {
                return Some(*i);
            }
        }
        None
    }

    /// The peer whose IPv6 subnet holds `ip` (longest prefix wins).
    pub(crate) fn by_destination6(&self, ip: Ipv6Addr) -> Option<usize> {
        let ip = u128::from(ip);
        for (len, map) in &self.by_prefix6 {
            let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
            if let Some(i) = map.get(&(ip & mask)) {
                return Some(*i);
            }
        }
        None
    }
}

/// Global drop counters, one per [`DropReason`].
#[derive(Debug, Default)]
pub(crate) struct DropAtomics([AtomicU64; DROP_REASONS]);

const DROP_REASONS: usize = 12;

pub(crate) fn reason_index(r: DropReason) -> usize {
    match r {
        DropReason::UnknownPeer => 0,
        DropReason::SpoofedInnerSource => 1,
        DropReason::ForeignInnerDestination => 2,
        DropReason::Malformed => 3,
        DropReason::NoPeerForDestination => 4,
        DropReason::SendError => 5,
        DropReason::UnknownKey => 6,
        DropReason::BadMac => 7,
        DropReason::Replay => 8,
        DropReason::StaleCounter => 9,
        DropReason::HandshakeRejected => 10,
        DropReason::CookieSent => 11,
    }
}

impl DropAtomics {
    pub(crate) fn get(&self, r: DropReason) -> u64 {
        self.0[reason_index(r)].load(Ordering::Relaxed)
    }
}

/// Counts of one batch, gathered without atomics and published once at the end of it, so
/// workers on different cores do not bounce counter cache lines per packet.
pub(crate) struct Tally {
    /// Per peer index of the current table: tx packets, tx bytes, rx packets, rx bytes.
    peers: Vec<[u64; 4]>,
    drops: [u64; DROP_REASONS],
    dirty: bool,
}

impl Tally {
    pub(crate) fn new() -> Tally {
        Tally {
            peers: Vec::new(),
            drops: [0; DROP_REASONS],
            dirty: false,
        }
    }

    /// Starts a batch against `table` (allocates only when the table grew).
    pub(crate) fn begin(&mut self, table: &PeerTable) {
        self.peers.clear();
        self.peers.resize(table.len(), [0; 4]);
        self.drops = [0; DROP_REASONS];
        self.dirty = false;
    }

    pub(crate) fn drop(&mut self, r: DropReason, n: u64) {
        self.drops[reason_index(r)] += n;
        self.dirty = true;
    }

    pub(crate) fn tx(&mut self, peer: usize, packets: u64, bytes: u64) {
        if let Some(c) = self.peers.get_mut(peer) {
            c[0] += packets;
            c[1] += bytes;
            self.dirty = true;
        }
    }

    pub(crate) fn rx(&mut self, peer: usize, packets: u64, bytes: u64) {
        if let Some(c) = self.peers.get_mut(peer) {
            c[2] += packets;
            c[3] += bytes;
            self.dirty = true;
        }
    }

    /// Publishes the batch's counts into `table`'s peers and `drops`.
    pub(crate) fn publish(&mut self, table: &PeerTable, drops: &DropAtomics) {
        if !self.dirty {
            return;
        }
        for (i, d) in self.drops.iter().enumerate() {
            if *d != 0 {
                drops.0[i].fetch_add(*d, Ordering::Relaxed);
            }
        }
        for (entry, c) in table.entries.iter().zip(&self.peers) {
            if c == &[0; 4] {
                continue;
            }
            let k = &entry.counters;
            for (atomic, v) in [&k.tx_packets, &k.tx_bytes, &k.rx_packets, &k.rx_bytes]
                .into_iter()
                .zip(c)
            {
                if *v != 0 {
                    atomic.fetch_add(*v, Ordering::Relaxed);
                }
            }
        }
        self.drops = [0; DROP_REASONS];
        for c in &mut self.peers {
            *c = [0; 4];
        }
        self.dirty = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(node: &str, subnet: &str, underlay: [u8; 4]) -> Peer {
        Peer {
            node: node.into(),
            subnet: Some(subnet.parse().unwrap()),
            subnet6: None,
            underlay: Ipv4Addr::from(underlay).into(),
            public_key: None,
        }
    }

    #[test]
    fn lookups_and_longest_prefix() {
        let t = PeerTable::build(
            &[
                peer("a", "10.1.0.0/16", [192, 168, 0, 1]),
                peer("b", "10.1.2.0/24", [192, 168, 0, 2]),
            ],
            8285,
            None,
        );
        assert_eq!(t.by_underlay(Ipv4Addr::new(192, 168, 0, 2)), Some(1));
        assert_eq!(t.by_underlay(Ipv4Addr::new(192, 168, 0, 3)), None);
        assert_eq!(t.by_destination(Ipv4Addr::new(10, 1, 2, 9)), Some(1));
        assert_eq!(t.by_destination(Ipv4Addr::new(10, 1, 3, 9)), Some(0));
        assert_eq!(t.by_destination(Ipv4Addr::new(10, 2, 0, 1)), None);
    }

    #[test]
    fn ipv6_underlay_peers_are_known_by_their_ipv6_address_only() {
        let v6 = |p: Peer, a: &str| Peer {
            underlay: a.parse().unwrap(),
            ..p
        };
        let t = PeerTable::build(
            &[
                peer("a", "10.1.0.0/24", [192, 168, 0, 1]),
                v6(peer("b", "10.1.1.0/24", [0, 0, 0, 0]), "fd00:77::2"),
                v6(peer("c", "10.1.2.0/24", [0, 0, 0, 0]), "::ffff:192.168.0.3"),
            ],
            8285,
            None,
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(t.by_source(ip("192.168.0.1")), Some(0));
        assert_eq!(t.by_source(ip("fd00:77::2")), Some(1));
        assert_eq!(t.by_source(ip("fd00:77::3")), None);
        assert_eq!(t.by_source(ip("::ffff:192.168.0.1")), None);
        assert_eq!(t.by_source(ip("192.168.0.3")), None);
        assert_eq!(t.entries[1].addr, "[fd00:77::2]:8285".parse().unwrap());
        assert_eq!(t.by_destination(Ipv4Addr::new(10, 1, 1, 7)), Some(1));
    }

    #[test]
    fn ipv6_lookups_and_longest_prefix() {
        let six = |p: Peer, s: &str| Peer {
            subnet6: Some(s.parse().unwrap()),
            ..p
        };
        let t = PeerTable::build(
            &[
                six(peer("a", "10.1.0.0/16", [192, 168, 0, 1]), "fd00:1::/48"),
                six(
                    peer("b", "10.1.2.0/24", [192, 168, 0, 2]),
                    "fd00:1:0:2::/64",
                ),
                peer("c", "10.3.0.0/24", [192, 168, 0, 3]),
            ],
            8285,
            None,
        );
        let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        assert_eq!(t.by_destination6(ip("fd00:1:0:2::9")), Some(1));
        assert_eq!(t.by_destination6(ip("fd00:1:0:3::9")), Some(0));
        assert_eq!(t.by_destination6(ip("fd00:2::1")), None);
        // An IPv4 subnet says nothing about IPv6 destinations, and the other way round.
        assert_eq!(t.by_destination(Ipv4Addr::new(10, 3, 0, 1)), Some(2));
        assert_eq!(t.by_destination6(ip("::ffff:10.3.0.1")), None);
        let default = PeerTable::build(
            &[six(peer("d", "10.4.0.0/24", [1, 1, 1, 1]), "::/0")],
            1,
            None,
        );
        assert_eq!(default.by_destination6(ip("2001:db8::1")), Some(0));
    }

    #[test]
    fn counters_survive_a_swap_for_the_same_node() {
        let t1 = PeerTable::build(&[peer("a", "10.1.0.0/24", [1, 1, 1, 1])], 1, None);
        t1.entries[0]
            .counters
            .tx_packets
            .store(7, Ordering::Relaxed);
        let t2 = PeerTable::build(
            &[
                peer("b", "10.2.0.0/24", [2, 2, 2, 2]),
                peer("a", "10.1.0.0/24", [1, 1, 1, 1]),
            ],
            1,
            Some(&t1),
        );
        assert_eq!(t2.entries[1].counters.tx_packets.load(Ordering::Relaxed), 7);
        assert_eq!(t2.entries[0].counters.tx_packets.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn tally_publishes_once() {
        let t = PeerTable::build(&[peer("a", "10.1.0.0/24", [1, 1, 1, 1])], 1, None);
        let drops = DropAtomics::default();
        let mut tally = Tally::new();
        tally.begin(&t);
        tally.tx(0, 2, 100);
        tally.rx(0, 1, 50);
        tally.tx(5, 1, 1); // stale index: ignored
        tally.drop(DropReason::Malformed, 3);
        tally.publish(&t, &drops);
        tally.publish(&t, &drops);
        let c = &t.entries[0].counters;
        assert_eq!(c.tx_packets.load(Ordering::Relaxed), 2);
        assert_eq!(c.tx_bytes.load(Ordering::Relaxed), 100);
        assert_eq!(c.rx_bytes.load(Ordering::Relaxed), 50);
        assert_eq!(drops.get(DropReason::Malformed), 3);
    }
}
