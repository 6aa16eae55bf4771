//! The mesh address ring: how peers split one allocation range (say 10.32.0.0/12) among
//! themselves with no store, after Weave Net's IPAM ring. Pure data, no I/O: the agent
//! gossips [`Ring`]s, merges what it receives and persists its own after every change.
//!
//! # Model
//! The ring is a list of *tokens* (addresses inside the range), sorted. Each token carries
//! an [`Entry`]: the peer that owns it and a version. A token owns the addresses from itself
//! up to (not including) the next token, the last one up to the end of the range. Once the
//! ring is claimed its first token is the range's first address, so every address has
//! exactly one owner in any one ring.
//!
//! # Why merging is safe (the CRDT argument)
//! - Only the owner of an entry changes it, and every change bumps its version; tokens are
//!   never deleted. So for each token, versions are totally ordered by causality and
//!   [`Ring::merge`] takes the higher one: merge is commutative, associative and idempotent,
//!   and peers that exchange rings until nothing changes hold identical rings.
//! - New tokens are only created by the owner of the range they split ([`Ring::grant`]), so
//!   a token that appears inside a range *we* own is proof that someone acted on stale or
//!   forged state; merge refuses it rather than giving our addresses away.
//! - What merge cannot order is refused with a [`MergeError`] and leaves the ring as it was:
//!   the same token at the same version with different contents, a newer version of an entry
//!   we own (only we may change it), different ranges or different seed sets.
//!
//! # Invariants ([`Ring::check`])
//! The range is a network address (no host bits); tokens are strictly increasing and inside
//! the range; a claimed ring's first token is the range's first address, so the tokens
//! partition the range and every address is owned by exactly one peer; seeds are sorted
//! and unique.
//!
//! # Addresses
//! IPv4 only for now. All arithmetic goes through `u32` offsets in a handful of helpers
//! (`to_u32`, `end_of`), so IPv6 can follow by making those generic over the address width
//! (`u128`) without touching the merge logic.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use crate::PeerName;

/// One token of the ring: the addresses from `token` to the next token belong to `owner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub token: Ipv4Addr,
    pub owner: PeerName,
    /// Bumped by the owner on every change of this entry; the higher version wins a merge.
    pub version: u64,
}

/// A contiguous run of addresses, both ends included (so a range ending at
/// 255.255.255.255 needs no wider type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl AddrRange {
    /// How many addresses the range holds (at least 1).
    pub fn len(&self) -> u64 {
        u64::from(to_u32(self.last)) - u64::from(to_u32(self.first)) + 1
    }

    /// Never true: a range holds at least its first address. Here for clippy's sake.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        self.first <= addr && addr <= self.last
    }

    /// Whether the two ranges share at least one address.
    pub fn overlaps(&self, other: &AddrRange) -> bool {
        self.first <= other.last && other.first <= self.last
    }
}

impl fmt::Display for AddrRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// One peer's view of how the range is split.
///
/// Serialized as JSON both for gossip and for the data dir; deserializing checks every
/// invariant, so a ring read from the network or from disk is well formed or an error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RingRepr")]
pub struct Ring {
    range: Ipv4Net,
    /// The peer whose view this is: the only peer whose entries this ring may change.
    me: PeerName,
    /// The agreed peer set the range was first split among (sorted, unique); empty until
    /// claimed. Rings claimed by different sets never merge.
    seeds: Vec<PeerName>,
    /// Sorted by token, tokens unique.
    entries: Vec<Entry>,
}

/// The serialized shape of a [`Ring`], checked before it becomes one.
#[derive(Deserialize)]
struct RingRepr {
    range: Ipv4Net,
    me: PeerName,
    seeds: Vec<PeerName>,
    entries: Vec<Entry>,
}

impl TryFrom<RingRepr> for Ring {
    type Error = InvariantError;

    fn try_from(repr: RingRepr) -> Result<Self, Self::Error> {
        let ring = Ring {
            range: repr.range,
            me: repr.me,
            seeds: repr.seeds,
            entries: repr.entries,
        };
        ring.check()?;
        Ok(ring)
    }
}

/// A broken ring invariant (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvariantError {
    #[error("range {0} has host bits set")]
    RangeNotNetwork(Ipv4Net),
    #[error("first token {first} is not the range's first address {start}")]
    FirstTokenNotRangeStart { first: Ipv4Addr, start: Ipv4Addr },
    #[error("tokens not strictly increasing: {prev} then {next}")]
    TokensUnsorted { prev: Ipv4Addr, next: Ipv4Addr },
    #[error("token {token} outside the range {range}")]
    TokenOutsideRange { token: Ipv4Addr, range: Ipv4Net },
    #[error("seeds not sorted and unique")]
    SeedsUnsorted,
    #[error("ring has entries but no seeds")]
    EntriesWithoutSeeds,
}

/// Why a received ring cannot be merged. The local ring is left unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("rings cover different ranges: ours {ours}, theirs {theirs}")]
    DifferentRange { ours: Ipv4Net, theirs: Ipv4Net },
    #[error("rings were first split among different peers: ours {ours:?}, theirs {theirs:?}")]
    DifferentSeeds {
        ours: Vec<PeerName>,
        theirs: Vec<PeerName>,
    },
    #[error(
        "token {}: both rings have version {} but ours is owned by {} and theirs by {}",
        ours.token, ours.version, ours.owner, theirs.owner
    )]
    Conflict { ours: Entry, theirs: Entry },
    #[error(
        "token {} is ours at version {} but they have version {} (owned by {}): only we may change it",
        ours.token, ours.version, theirs.version, theirs.owner
    )]
    NewerVersionOfOurs { ours: Entry, theirs: Entry },
    #[error("their token {} (owned by {}) lies inside a range we own", theirs.token, theirs.owner)]
    TokenInOurRange { theirs: Entry },
    #[error("their ring is malformed: {0}")]
    Malformed(#[from] InvariantError),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    #[error("the ring is already claimed")]
    AlreadyClaimed,
    #[error("no peers to split the range among")]
    NoPeers,
    #[error("range {range} has fewer addresses than the {peers} peers to split it among")]
    RangeTooSmall { range: Ipv4Net, peers: usize },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("a peer cannot grant space to itself")]
    ToSelf,
    #[error("asked for no addresses")]
    ZeroSize,
    #[error("we own no range of two or more addresses to split")]
    NothingToGive,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("a peer cannot take over its own ranges")]
    FromSelf,
}

impl Ring {
    /// An unclaimed ring over `range` (host bits are dropped) as seen by `me`.
    pub fn new(range: Ipv4Net, me: PeerName) -> Ring {
        Ring {
            range: range.trunc(),
            me,
            seeds: Vec::new(),
            entries: Vec::new(),
        }
    }

    pub fn range(&self) -> Ipv4Net {
        self.range
    }

    pub fn me(&self) -> PeerName {
        self.me
    }

    pub fn seeds(&self) -> &[PeerName] {
        &self.seeds
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether the range has been split yet (by [`Ring::claim_for_all`] here or by a merge).
    pub fn is_claimed(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The first split of the range, evenly among an agreed set of peers (Weave's
    /// `--ipalloc-init seed=A,B,C`, or the set a `consensus=N` round agreed on). Every peer
    /// given the same set computes the same ring, so peers may claim independently and
    /// their rings merge; a peer given a different set produces a ring that refuses to
    /// merge ([`MergeError::DifferentSeeds`]). `me` need not be in the set.
    ///
    /// Peers are sorted first; the remainder of an uneven split goes one address each to
    /// the first peers.
    pub fn claim_for_all(&mut self, peers: &[PeerName]) -> Result<(), ClaimError> {
        if self.is_claimed() {
            return Err(ClaimError::AlreadyClaimed);
        }
        let mut seeds = peers.to_vec();
        seeds.sort_unstable();
        seeds.dedup();
        if seeds.is_empty() {
            return Err(ClaimError::NoPeers);
        }
        let size = range_len(self.range);
        let count = seeds.len() as u64;
        if size < count {
            return Err(ClaimError::RangeTooSmall {
                range: self.range,
                peers: seeds.len(),
            });
        }
        let (share, remainder) = (size / count, size % count);
        let mut offset = 0u64;
        let start = u64::from(to_u32(self.range.network()));
        self.entries = seeds
            .iter()
            .enumerate()
            .map(|(index, &owner)| {
                let token = from_u64(start + offset);
                offset += share + u64::from((index as u64) < remainder);
                Entry {
                    token,
                    owner,
                    version: 0,
                }
            })
            .collect();
        self.seeds = seeds;
        Ok(())
    }

    /// Merges a ring received by gossip (or read back from anywhere): per token, the entry
    /// with the higher version wins; tokens only they know are added. Returns whether our
    /// ring changed. On error nothing changes (see [`MergeError`] for what is refused).
    pub fn merge(&mut self, other: &Ring) -> Result<bool, MergeError> {
        // A ring built by hand or deserialized is checked; a merge must not be the place
        // a malformed ring gets in.
        other.check()?;
        if self.range != other.range {
            return Err(MergeError::DifferentRange {
                ours: self.range,
                theirs: other.range,
            });
        }
        if !other.is_claimed() {
            return Ok(false);
        }
        if !self.is_claimed() {
            // Nothing of ours to protect: we learn the split. A peer that lost its data
            // dir learns its own ranges back this way too, which is only safe if it gave
            // nothing away that the sender has not heard of (Weave's weaveworks/weave#2084):
            // the agent must persist the ring after every change, before gossiping it.
            self.seeds = other.seeds.clone();
            self.entries = other.entries.clone();
            return Ok(true);
        }
        if self.seeds != other.seeds {
            return Err(MergeError::DifferentSeeds {
                ours: self.seeds.clone(),
                theirs: other.seeds.clone(),
            });
        }

        let (mut ours, mut theirs) = (
            self.entries.iter().peekable(),
            other.entries.iter().peekable(),
        );
        let mut merged = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        loop {
            let next = match (ours.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(&&mine), None) => {
                    ours.next();
                    mine
                }
                (None, Some(&&their)) => {
                    theirs.next();
                    self.accept_new_token(their)?
                }
                (Some(&&mine), Some(&&their)) => {
                    if mine.token < their.token {
                        ours.next();
                        mine
                    } else if their.token < mine.token {
                        theirs.next();
                        self.accept_new_token(their)?
                    } else {
                        ours.next();
                        theirs.next();
                        self.pick(mine, their)?
                    }
                }
            };
            merged.push(next);
        }
        let changed = merged != self.entries;
        self.entries = merged;
        debug_assert_eq!(self.check(), Ok(()));
        Ok(changed)
    }

    /// A token only they know: new, so created by the owner of the range it splits, which
    /// must not be us.
    fn accept_new_token(&self, theirs: Entry) -> Result<Entry, MergeError> {
        if self.owner(theirs.token) == Some(self.me) {
            return Err(MergeError::TokenInOurRange { theirs });
        }
        Ok(theirs)
    }

    /// The same token in both rings: the higher version wins.
    fn pick(&self, ours: Entry, theirs: Entry) -> Result<Entry, MergeError> {
        if theirs.version > ours.version {
            if ours.owner == self.me {
                return Err(MergeError::NewerVersionOfOurs { ours, theirs });
            }
            Ok(theirs)
        } else if theirs.version == ours.version && theirs != ours {
            Err(MergeError::Conflict { ours, theirs })
        } else {
            Ok(ours)
        }
    }

    /// The peer that owns `addr` in this view; `None` outside the range or before the
    /// ring is claimed.
    pub fn owner(&self, addr: Ipv4Addr) -> Option<PeerName> {
        if !self.range.contains(&addr) {
            return None;
        }
        // Index of the last token <= addr; the first token is the range start, so any
        // address inside a claimed range has one.
        let after = self.entries.partition_point(|entry| entry.token <= addr);
        after.checked_sub(1).map(|index| self.entries[index].owner)
    }

    /// The addresses `peer` owns in this view, adjacent tokens merged into one range,
    /// in address order.
    pub fn owned_ranges(&self, peer: PeerName) -> Vec<AddrRange> {
        let mut ranges: Vec<AddrRange> = Vec::new();
        for index in 0..self.entries.len() {
            if self.entries[index].owner != peer {
                continue;
            }
            push_coalesced(&mut ranges, self.token_range(index));
        }
        ranges
    }

    /// Gives part of our space to `to`, which asked for `size` addresses: our largest
    /// token range (the lowest one on a tie) is split and its upper part handed over, as a
    /// new token owned by `to`. We always keep at least half of that range, so `to` may get
    /// fewer addresses than it asked for. Returns what was handed over.
    pub fn grant(&mut self, to: PeerName, size: u64) -> Result<AddrRange, GrantError> {
        if to == self.me {
            return Err(GrantError::ToSelf);
        }
        if size == 0 {
            return Err(GrantError::ZeroSize);
        }
        let (index, largest) = (0..self.entries.len())
            .filter(|&index| self.entries[index].owner == self.me)
            .map(|index| (index, self.token_range(index)))
            .filter(|(_, range)| range.len() >= 2)
            .fold(
                None,
                |best: Option<(usize, AddrRange)>, candidate| match best {
                    Some(best) if best.1.len() >= candidate.1.len() => Some(best),
                    _ => Some(candidate),
                },
            )
            .ok_or(GrantError::NothingToGive)?;
        let given = size.min(largest.len() / 2);
        // `given` <= len/2, so the split lies strictly inside the range: no token is there.
        let split = from_u64(u64::from(to_u32(largest.last)) + 1 - given);
        self.entries.insert(
            index + 1,
            Entry {
                token: split,
                owner: to,
                version: 0,
            },
        );
        debug_assert_eq!(self.check(), Ok(()));
        Ok(AddrRange {
            first: split,
            last: largest.last,
        })
    }

    /// Weave's `rmpeer`: we take over every token `dead` owns in our view (owner becomes us,
    /// version bumped). Returns the ranges taken over, in address order.
    ///
    /// Weave (`weave rmpeer PEER`, `DELETE /peer/PEER`) does exactly this on the one peer
    /// where it is run, and its docs say to run it on only one peer per dead peer. This
    /// is the one operation where a peer changes entries it does not own, so it is safe
    /// only under two conditions the ring cannot check:
    /// - **One taker.** If two peers take over the same dead peer, each bumps the same
    ///   entries to the same version with a different owner: both believe they own the
    ///   space (duplicate addresses) until their rings meet, and then merge refuses them
    ///   ([`MergeError::Conflict`]) for good. If their views of the dead peer's versions
    ///   differed, the higher one wins silently, and the other peer may already have
    ///   handed out addresses from it. Weave has hit this (two nodes reclaiming the same
    ///   departed peer at once, weaveworks/weave#3190); the caller must serialise takeovers
    ///   (an operator, or an agreement round).
    /// - **Really dead, and fully heard.** The dead peer must never act again (its later
    ///   changes would be refused as conflicts), and the taker must have seen the dead
    ///   peer's last ring: a grant the dead peer made that we never heard of sits inside a
    ///   range we now believe is ours, while the grantee believes it too.
    pub fn transfer_from(&mut self, dead: PeerName) -> Result<Vec<AddrRange>, TransferError> {
        if dead == self.me {
            return Err(TransferError::FromSelf);
        }
        let mut taken: Vec<AddrRange> = Vec::new();
        for index in 0..self.entries.len() {
            if self.entries[index].owner != dead {
                continue;
            }
            self.entries[index].owner = self.me;
            self.entries[index].version += 1;
            push_coalesced(&mut taken, self.token_range(index));
        }
        Ok(taken)
    }

    /// Checks the invariants of the module docs.
    pub fn check(&self) -> Result<(), InvariantError> {
        if self.range.trunc() != self.range {
            return Err(InvariantError::RangeNotNetwork(self.range));
        }
        if self.seeds.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(InvariantError::SeedsUnsorted);
        }
        let Some(first) = self.entries.first() else {
            return Ok(());
        };
        if self.seeds.is_empty() {
            return Err(InvariantError::EntriesWithoutSeeds);
        }
        if first.token != self.range.network() {
            return Err(InvariantError::FirstTokenNotRangeStart {
                first: first.token,
                start: self.range.network(),
            });
        }
        for pair in self.entries.windows(2) {
            if pair[0].token >= pair[1].token {
                return Err(InvariantError::TokensUnsorted {
                    prev: pair[0].token,
                    next: pair[1].token,
                });
            }
        }
        if let Some(outside) = self
            .entries
            .iter()
            .find(|entry| !self.range.contains(&entry.token))
        {
            return Err(InvariantError::TokenOutsideRange {
                token: outside.token,
                range: self.range,
            });
        }
        Ok(())
    }

    /// The JSON form for gossip and for the data dir.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ring always serializes")
    }

    /// Reads a ring back, checking every invariant.
    pub fn from_json(bytes: &[u8]) -> Result<Ring, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The addresses of the token at `index`: from it to just before the next token.
    fn token_range(&self, index: usize) -> AddrRange {
        let first = self.entries[index].token;
        let end = match self.entries.get(index + 1) {
            Some(next) => u64::from(to_u32(next.token)),
            None => end_of(self.range),
        };
        AddrRange {
            first,
            last: from_u64(end - 1),
        }
    }
}

/// Appends `range`, joining it to the last one if they are adjacent.
fn push_coalesced(ranges: &mut Vec<AddrRange>, range: AddrRange) {
    match ranges.last_mut() {
        Some(last) if u64::from(to_u32(last.last)) + 1 == u64::from(to_u32(range.first)) => {
            last.last = range.last;
        }
        _ => ranges.push(range),
    }
}

fn to_u32(addr: Ipv4Addr) -> u32 {
    u32::from(addr)
}

/// Only called with values inside a range, so always below 2^32.
fn from_u64(value: u64) -> Ipv4Addr {
    Ipv4Addr::from(u32::try_from(value).expect("address arithmetic stays inside the range"))
}

/// One past the range's last address (2^32 for 0.0.0.0/0, hence `u64`).
fn end_of(range: Ipv4Net) -> u64 {
    u64::from(to_u32(range.network())) + range_len(range)
}

fn range_len(range: Ipv4Net) -> u64 {
    1u64 << (32 - u32::from(range.prefix_len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: PeerName = PeerName(0xa);
    const B: PeerName = PeerName(0xb);
    const C: PeerName = PeerName(0xc);
    const D: PeerName = PeerName(0xd);

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn range(first: &str, last: &str) -> AddrRange {
        AddrRange {
            first: ip(first),
            last: ip(last),
        }
    }

    /// A ring of /24 claimed by A, B, C, D, as seen by `me`.
    fn claimed(me: PeerName) -> Ring {
        let mut ring = Ring::new(net("10.0.0.0/24"), me);
        ring.claim_for_all(&[D, B, C, A, B]).unwrap();
        ring
    }

    #[test]
    fn new_ring_owns_nothing() {
        let ring = Ring::new(net("10.32.0.7/12"), A);
        assert_eq!(ring.range(), net("10.32.0.0/12"), "host bits dropped");
        assert!(!ring.is_claimed());
        assert_eq!(ring.owner(ip("10.32.0.1")), None);
        assert!(ring.owned_ranges(A).is_empty());
        ring.check().unwrap();
    }

    #[test]
    fn claim_splits_evenly_in_peer_order() {
        let ring = claimed(C);
        ring.check().unwrap();
        assert_eq!(ring.seeds(), &[A, B, C, D]);
        assert_eq!(ring.owned_ranges(A), vec![range("10.0.0.0", "10.0.0.63")]);
        assert_eq!(
            ring.owned_ranges(D),
            vec![range("10.0.0.192", "10.0.0.255")]
        );
        assert_eq!(ring.owner(ip("10.0.0.64")), Some(B));
        assert_eq!(ring.owner(ip("10.0.0.191")), Some(C));
        assert_eq!(ring.owner(ip("10.0.1.0")), None, "outside the range");
        assert!(ring.entries().iter().all(|entry| entry.version == 0));
    }

    #[test]
    fn claim_gives_the_remainder_to_the_first_peers() {
        let mut ring = Ring::new(net("10.0.0.0/29"), A);
        ring.claim_for_all(&[A, B, C]).unwrap();
        let sizes: Vec<u64> = [A, B, C]
            .iter()
            .map(|&peer| ring.owned_ranges(peer)[0].len())
            .collect();
        assert_eq!(sizes, vec![3, 3, 2]);
    }

    #[test]
    fn claim_of_the_whole_space_reaches_the_last_address() {
        let mut ring = Ring::new(net("0.0.0.0/0"), A);
        ring.claim_for_all(&[A, B]).unwrap();
        assert_eq!(
            ring.owned_ranges(B),
            vec![range("128.0.0.0", "255.255.255.255")]
        );
        assert_eq!(ring.owned_ranges(B)[0].len(), 1 << 31);
    }

    #[test]
    fn claim_errors() {
        let mut ring = Ring::new(net("10.0.0.0/31"), A);
        assert_eq!(ring.claim_for_all(&[]), Err(ClaimError::NoPeers));
        assert_eq!(
            ring.claim_for_all(&[A, B, C]),
            Err(ClaimError::RangeTooSmall {
                range: net("10.0.0.0/31"),
                peers: 3
            })
        );
        ring.claim_for_all(&[A, B]).unwrap();
        assert_eq!(ring.claim_for_all(&[A]), Err(ClaimError::AlreadyClaimed));
    }

    #[test]
    fn peers_claiming_the_same_set_agree() {
        let mut a = claimed(A);
        let b = claimed(B);
        assert_eq!(a.merge(&b), Ok(false));
        assert_eq!(a.entries(), b.entries());
    }

    #[test]
    fn an_unclaimed_ring_learns_the_split() {
        let mut fresh = Ring::new(net("10.0.0.0/24"), B);
        let a = claimed(A);
        assert_eq!(fresh.merge(&a), Ok(true));
        assert_eq!(fresh.entries(), a.entries());
        assert_eq!(fresh.seeds(), a.seeds());
        assert_eq!(fresh.me(), B, "merging never changes whose view it is");
        // And an unclaimed ring teaches nothing.
        let mut a = a;
        assert_eq!(a.merge(&Ring::new(net("10.0.0.0/24"), C)), Ok(false));
    }

    #[test]
    fn grant_splits_the_largest_range_and_hands_over_the_top() {
        let mut a = claimed(A);
        let given = a.grant(B, 16).unwrap();
        assert_eq!(given, range("10.0.0.48", "10.0.0.63"));
        assert_eq!(a.owned_ranges(A), vec![range("10.0.0.0", "10.0.0.47")]);
        // B's new range is adjacent to the one it was claimed, so they coalesce.
        assert_eq!(a.owned_ranges(B), vec![range("10.0.0.48", "10.0.0.127")]);
        a.check().unwrap();

        // Asking for more than half gets half: we keep the rest.
        let given = a.grant(C, 1000).unwrap();
        assert_eq!(given, range("10.0.0.24", "10.0.0.47"));

        // B learns of its grant by gossip.
        let mut b = claimed(B);
        assert_eq!(b.merge(&a), Ok(true));
        assert_eq!(b.owned_ranges(B), vec![range("10.0.0.48", "10.0.0.127")]);
        assert_eq!(b.owner(ip("10.0.0.30")), Some(C));
    }

    #[test]
    fn grant_errors() {
        let mut a = claimed(A);
        assert_eq!(a.grant(A, 4), Err(GrantError::ToSelf));
        assert_eq!(a.grant(B, 0), Err(GrantError::ZeroSize));
        let mut tiny = Ring::new(net("10.0.0.0/30"), A);
        assert_eq!(
            tiny.grant(B, 1),
            Err(GrantError::NothingToGive),
            "unclaimed"
        );
        tiny.claim_for_all(&[A, B, C, D]).unwrap();
        assert_eq!(
            tiny.grant(B, 1),
            Err(GrantError::NothingToGive),
            "one address"
        );
        let mut outsider = claimed(PeerName(0xe));
        assert_eq!(outsider.grant(A, 1), Err(GrantError::NothingToGive));
    }

    #[test]
    fn grants_until_nothing_is_left_keep_one_address() {
        let mut a = claimed(A);
        let mut given = 0;
        while let Ok(range) = a.grant(B, 1000) {
            given += range.len();
            a.check().unwrap();
        }
        assert_eq!(given, 63);
        assert_eq!(a.owned_ranges(A), vec![range("10.0.0.0", "10.0.0.0")]);
    }

    #[test]
    fn transfer_takes_every_token_of_the_dead_peer() {
        let mut b = claimed(B);
        b.grant(D, 8).unwrap(); // D now owns 10.0.0.120-127 as well
        let taken = b.transfer_from(D).unwrap();
        assert_eq!(
            taken,
            vec![
                range("10.0.0.120", "10.0.0.127"),
                range("10.0.0.192", "10.0.0.255")
            ]
        );
        assert!(b.owned_ranges(D).is_empty());
        assert_eq!(
            b.owned_ranges(B),
            vec![
                range("10.0.0.64", "10.0.0.127"),
                range("10.0.0.192", "10.0.0.255")
            ]
        );
        // The takeover wins over the dead peer's old entries elsewhere.
        let mut a = claimed(A);
        assert_eq!(a.merge(&b), Ok(true));
        assert_eq!(a.owner(ip("10.0.0.200")), Some(B));
        assert_eq!(b.transfer_from(B), Err(TransferError::FromSelf));
        assert_eq!(b.transfer_from(PeerName(0xe)), Ok(vec![]), "owns nothing");
    }

    #[test]
    fn merge_is_atomic_and_order_free() {
        let mut a = claimed(A);
        a.grant(B, 8).unwrap();
        let mut c = claimed(C);
        c.grant(D, 8).unwrap();
        let mut ac = a.clone();
        ac.merge(&c).unwrap();
        let mut ca = c.clone();
        ca.merge(&a).unwrap();
        assert_eq!(ac.entries(), ca.entries());
        assert_eq!(ac.merge(&ca), Ok(false), "idempotent");
    }

    #[test]
    fn merge_refuses_a_different_range() {
        let mut a = claimed(A);
        let other = Ring::new(net("10.0.1.0/24"), B);
        assert_eq!(
            a.merge(&other),
            Err(MergeError::DifferentRange {
                ours: net("10.0.0.0/24"),
                theirs: net("10.0.1.0/24")
            })
        );
    }

    #[test]
    fn merge_refuses_different_seeds() {
        let mut a = claimed(A);
        let mut b = Ring::new(net("10.0.0.0/24"), B);
        b.claim_for_all(&[A, B]).unwrap();
        let before = a.clone();
        assert!(matches!(
            a.merge(&b),
            Err(MergeError::DifferentSeeds { .. })
        ));
        assert_eq!(a, before);
    }

    #[test]
    fn merge_refuses_two_takeovers_of_one_dead_peer() {
        let mut a = claimed(A);
        let mut b = claimed(B);
        a.transfer_from(D).unwrap();
        b.transfer_from(D).unwrap();
        let before = a.clone();
        let error = a.merge(&b).unwrap_err();
        assert!(matches!(error, MergeError::Conflict { ours, theirs }
            if ours.owner == A && theirs.owner == B && ours.version == 1));
        assert_eq!(a, before, "nothing merged");
        // A third peer can merge one of them but not both.
        let mut c = claimed(C);
        c.merge(&a).unwrap();
        assert!(matches!(c.merge(&b), Err(MergeError::Conflict { .. })));
    }

    #[test]
    fn merge_refuses_a_newer_version_of_our_entry() {
        // B takes over D, but D is alive after all.
        let mut b = claimed(B);
        b.transfer_from(D).unwrap();
        let mut d = claimed(D);
        let before = d.clone();
        assert!(matches!(
            d.merge(&b),
            Err(MergeError::NewerVersionOfOurs { ours, theirs }) if ours.owner == D && theirs.owner == B
        ));
        assert_eq!(d, before);
    }

    #[test]
    fn merge_refuses_a_token_inside_our_range() {
        // A granted space to B, persisted nothing, restarted with its old ring: the grant
        // shows up as a token in a range A believes is its own.
        let old_a = claimed(A);
        let mut a = old_a.clone();
        a.grant(B, 8).unwrap();
        let mut b = claimed(B);
        b.merge(&a).unwrap();
        let mut restarted = old_a;
        assert!(matches!(
            restarted.merge(&b),
            Err(MergeError::TokenInOurRange { theirs }) if theirs.owner == B
        ));
    }

    #[test]
    fn merge_refuses_a_malformed_ring() {
        let mut a = claimed(A);
        let mut bad = claimed(B);
        bad.entries.swap(1, 2);
        assert!(matches!(
            a.merge(&bad),
            Err(MergeError::Malformed(InvariantError::TokensUnsorted { .. }))
        ));
    }

    #[test]
    fn check_catches_each_broken_invariant() {
        let good = claimed(A);
        let mut ring = good.clone();
        ring.range = net("10.0.0.1/24");
        assert!(matches!(
            ring.check(),
            Err(InvariantError::RangeNotNetwork(_))
        ));
        let mut ring = good.clone();
        ring.entries.remove(0);
        assert!(matches!(
            ring.check(),
            Err(InvariantError::FirstTokenNotRangeStart { .. })
        ));
        let mut ring = good.clone();
        ring.entries[2].token = ring.entries[1].token;
        assert!(matches!(
            ring.check(),
            Err(InvariantError::TokensUnsorted { .. })
        ));
        let mut ring = good.clone();
        ring.entries[3].token = ip("10.0.1.0");
        assert!(matches!(
            ring.check(),
            Err(InvariantError::TokenOutsideRange { .. })
        ));
        let mut ring = good.clone();
        ring.seeds.reverse();
        assert_eq!(ring.check(), Err(InvariantError::SeedsUnsorted));
        let mut ring = good;
        ring.seeds.clear();
        assert_eq!(ring.check(), Err(InvariantError::EntriesWithoutSeeds));
    }

    #[test]
    fn json_round_trips_and_is_checked_on_the_way_in() {
        let mut a = claimed(A);
        a.grant(C, 5).unwrap();
        let bytes = a.to_json();
        assert_eq!(Ring::from_json(&bytes).unwrap(), a);

        let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        value["entries"][1]["token"] = "10.0.0.0".into();
        let error = Ring::from_json(value.to_string().as_bytes()).unwrap_err();
        assert!(
            error.to_string().contains("not strictly increasing"),
            "{error}"
        );
        assert!(Ring::from_json(b"{\"range\":\"10.0.0.0/24\"}").is_err());
    }
}
