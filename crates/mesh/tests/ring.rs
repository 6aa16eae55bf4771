//! Property tests of the address ring as a distributed system: 3–6 peers run random
//! sequences of claims, gossip (through partitions, with reordering, duplicates and stale
//! deliveries), grants, restarts from their persisted ring, deaths and `rmpeer` takeovers.
//!
//! Checked after every step, for every live peer: its ring keeps its invariants, and no two
//! peers *believe they own* the same address (the union over peers of "what my own ring
//! says is mine" never overlaps: that is what stops two hosts handing out one address).
//! Every merge of gossip must succeed: nothing in these runs is a misuse the ring should
//! refuse. After healing (every message delivered, then everyone merges with everyone until
//! nothing changes) all live peers hold identical rings; before that, merging any two live
//! peers' rings is commutative and idempotent.
//!
//! `rmpeer` is run the only way the ring documents as safe: once per dead peer, on a peer
//! that has received the dead peer's last ring, and the dead peer never comes back.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use proptest::prelude::*;
use proptest::sample::Index;
use twill_mesh::ring::{AddrRange, PeerName, Ring};

#[derive(Clone, Debug)]
enum Op {
    /// The peer runs the agreed first split (every peer uses the same set: all of them).
    Claim(usize),
    /// The sender's current ring is put on the wire to `to`, if no partition is in the way.
    Send {
        from: usize,
        to: usize,
    },
    /// One message on the wire (any of them: reordering) arrives; `keep` leaves a copy on
    /// the wire to arrive again later (a duplicate, by then stale).
    Deliver {
        message: Index,
        keep: bool,
    },
    Grant {
        from: usize,
        to: usize,
        size: u64,
    },
    /// The peer restarts from the ring it persisted after its last change.
    Restart(usize),
    /// Peers whose bit is set can only talk to each other, the rest likewise.
    Partition(u8),
    /// The peer dies for good (never more than all but two).
    Kill(usize),
    /// `taker` runs `rmpeer` on one of the dead peers nobody took over yet, after
    /// receiving that peer's last ring.
    RmPeer {
        taker: usize,
        dead: Index,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let peer = || 0..6usize;
    prop_oneof![
        3 => peer().prop_map(Op::Claim),
        8 => (peer(), peer()).prop_map(|(from, to)| Op::Send { from, to }),
        8 => (any::<Index>(), any::<bool>()).prop_map(|(message, keep)| Op::Deliver { message, keep }),
        10 => (peer(), peer(), 1..200u64).prop_map(|(from, to, size)| Op::Grant { from, to, size }),
        1 => peer().prop_map(Op::Restart),
        1 => any::<u8>().prop_map(Op::Partition),
        1 => peer().prop_map(Op::Kill),
        2 => (peer(), any::<Index>()).prop_map(|(taker, dead)| Op::RmPeer { taker, dead }),
    ]
}

struct Cluster {
    names: Vec<PeerName>,
    rings: Vec<Ring>,
    /// What each peer last wrote to its data dir (after every change, as the agent does).
    persisted: Vec<Vec<u8>>,
    alive: Vec<bool>,
    /// The ring a dead peer held when it died; `None` once some peer took it over.
    last_words: Vec<Option<Ring>>,
    side: Vec<bool>,
    /// (destination, the sender's ring when sent).
    wire: Vec<(usize, Ring)>,
}

impl Cluster {
    fn new(peers: usize, range: Ipv4Net) -> Cluster {
        // Names unrelated to indices, so the seed order is not the index order.
        let names: Vec<PeerName> = (0..peers)
            .map(|index| PeerName(0x5eed_0000 ^ (index as u64 * 0x9e37)))
            .collect();
        let rings: Vec<Ring> = names.iter().map(|&name| Ring::new(range, name)).collect();
        Cluster {
            persisted: rings.iter().map(Ring::to_json).collect(),
            rings,
            alive: vec![true; peers],
            last_words: vec![None; peers],
            side: vec![false; peers],
            names,
            wire: Vec::new(),
        }
    }

    fn persist(&mut self, peer: usize) {
        self.persisted[peer] = self.rings[peer].to_json();
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let n = self.rings.len();
        match *op {
            Op::Claim(peer) => {
                let peer = peer % n;
                if self.alive[peer] {
                    let names = self.names.clone();
                    // Refused once claimed (by itself or by learning the split): fine.
                    if self.rings[peer].claim_for_all(&names).is_ok() {
                        self.persist(peer);
                    }
                }
            }
            Op::Send { from, to } => {
                let (from, to) = (from % n, to % n);
                if from != to && self.alive[from] && self.side[from] == self.side[to] {
                    self.wire.push((to, self.rings[from].clone()));
                }
            }
            Op::Deliver { message, keep } => {
                if self.wire.is_empty() {
                    return Ok(());
                }
                let index = message.index(self.wire.len());
                let (to, ring) = if keep {
                    self.wire[index].clone()
                } else {
                    self.wire.swap_remove(index)
                };
                self.deliver(to, &ring)?;
            }
            Op::Grant { from, to, size } => {
                let (from, to) = (from % n, to % n);
                // A grant to a peer that has since died is allowed: the grantor may not
                // know yet. Refusals (nothing to give, to itself) change nothing.
                if self.alive[from] && self.rings[from].grant(self.names[to], size).is_ok() {
                    self.persist(from);
                }
            }
            Op::Restart(peer) => {
                let peer = peer % n;
                if self.alive[peer] {
                    let reloaded = Ring::from_json(&self.persisted[peer])
                        .map_err(|error| TestCaseError::fail(format!("reload: {error}")))?;
                    prop_assert_eq!(&reloaded, &self.rings[peer], "persisted after every change");
                    self.rings[peer] = reloaded;
                }
            }
            Op::Partition(mask) => {
                for peer in 0..n {
                    self.side[peer] = mask & (1 << peer) != 0;
                }
            }
            Op::Kill(peer) => {
                let peer = peer % n;
                if self.alive[peer] && self.alive.iter().filter(|&&alive| alive).count() > 2 {
                    self.alive[peer] = false;
                    self.last_words[peer] = Some(self.rings[peer].clone());
                }
            }
            Op::RmPeer { taker, ref dead } => {
                let taker = taker % n;
                let unclaimed: Vec<usize> = (0..n)
                    .filter(|&peer| self.last_words[peer].is_some())
                    .collect();
                if self.alive[taker] && !unclaimed.is_empty() {
                    let dead = unclaimed[dead.index(unclaimed.len())];
                    let last = self.last_words[dead].take().expect("filtered on it");
                    self.deliver(taker, &last)?;
                    self.rings[taker]
                        .transfer_from(self.names[dead])
                        .map_err(|error| TestCaseError::fail(error.to_string()))?;
                    self.persist(taker);
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, to: usize, ring: &Ring) -> Result<bool, TestCaseError> {
        if !self.alive[to] {
            return Ok(false);
        }
        let changed = self.rings[to].merge(ring).map_err(|error| {
            TestCaseError::fail(format!(
                "peer {} refused gossip from {}: {error}",
                self.names[to],
                ring.me()
            ))
        })?;
        if changed {
            self.persist(to);
        }
        Ok(changed)
    }

    /// Every live ring is well formed, and no address is believed owned by two live peers.
    fn check_safety(&self) -> Result<(), TestCaseError> {
        let mut believed: Vec<(PeerName, AddrRange)> = Vec::new();
        for (peer, ring) in self.rings.iter().enumerate() {
            if !self.alive[peer] {
                continue;
            }
            ring.check()
                .map_err(|error| TestCaseError::fail(format!("{}: {error}", ring.me())))?;
            prop_assert_eq!(ring.me(), self.names[peer]);
            for range in ring.owned_ranges(ring.me()) {
                if let Some((other, theirs)) =
                    believed.iter().find(|(_, theirs)| theirs.overlaps(&range))
                {
                    prop_assert!(
                        false,
                        "{} believes it owns {range} and {other} believes it owns {theirs}",
                        ring.me()
                    );
                }
                believed.push((ring.me(), range));
            }
        }
        Ok(())
    }

    /// Merge as a CRDT join on the states this run reached: for any two live peers, merging
    /// either way round gives the same entries, and merging again changes nothing.
    fn check_merge_algebra(&self) -> Result<(), TestCaseError> {
        let live: Vec<&Ring> = (0..self.rings.len())
            .filter(|&peer| self.alive[peer])
            .map(|peer| &self.rings[peer])
            .collect();
        for (index, a) in live.iter().enumerate() {
            for b in &live[index + 1..] {
                let (mut ab, mut ba) = ((*a).clone(), (*b).clone());
                ab.merge(b)
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                ba.merge(a)
                    .map_err(|error| TestCaseError::fail(error.to_string()))?;
                prop_assert_eq!(ab.entries(), ba.entries());
                prop_assert_eq!(ab.merge(b), Ok(false));
                prop_assert_eq!(ab.merge(&ba), Ok(false));
            }
        }
        Ok(())
    }

    /// Everything on the wire arrives (stale or not), then live peers gossip all to all
    /// until a whole round changes nothing.
    fn heal(&mut self) -> Result<(), TestCaseError> {
        for (to, ring) in std::mem::take(&mut self.wire) {
            self.deliver(to, &ring)?;
            self.check_safety()?;
        }
        let live: Vec<usize> = (0..self.rings.len())
            .filter(|&peer| self.alive[peer])
            .collect();
        let mut rounds = 0;
        loop {
            let mut changed = false;
            for &to in &live {
                for &from in &live {
                    if from != to {
                        let ring = self.rings[from].clone();
                        changed |= self.deliver(to, &ring)?;
                        self.check_safety()?;
                    }
                }
            }
            if !changed {
                break;
            }
            rounds += 1;
            prop_assert!(rounds <= 3, "gossip did not settle in 3 all-to-all rounds");
        }
        let first = &self.rings[live[0]];
        for &peer in &live[1..] {
            prop_assert_eq!(
                self.rings[peer].entries(),
                first.entries(),
                "entries of {}",
                self.names[peer]
            );
            prop_assert_eq!(self.rings[peer].seeds(), first.seeds());
        }
        Ok(())
    }
}

fn scenario() -> impl Strategy<Value = (usize, Ipv4Net, Vec<Op>)> {
    (3..=6usize, 20..=26u8, prop::collection::vec(op(), 1..120)).prop_map(|(peers, prefix, ops)| {
        let range = Ipv4Net::new(Ipv4Addr::new(10, 32, 0, 0), prefix)
            .unwrap()
            .trunc();
        (peers, range, ops)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2500, ..ProptestConfig::default() })]

    #[test]
    fn peers_never_both_own_an_address_and_converge_after_healing(
        (peers, range, ops) in scenario()
    ) {
        let mut cluster = Cluster::new(peers, range);
        for op in &ops {
            cluster.apply(op)?;
            cluster.check_safety()?;
        }
        cluster.check_merge_algebra()?;
        cluster.heal()?;
        // Nothing is lost either: the converged ring gives every address to exactly one
        // peer (dead ones included, until someone takes them over).
        let ring = &cluster.rings[cluster.alive.iter().position(|&alive| alive).unwrap()];
        if ring.is_claimed() {
            let total: u64 = cluster
                .names
                .iter()
                .flat_map(|&name| ring.owned_ranges(name))
                .map(|range| range.len())
                .sum();
            prop_assert_eq!(total, 1u64 << (32 - range.prefix_len()));
        }
    }
}
