//! `twill-mesh`: the pure parts of twill's mesh mode (issue 16, Weave Net's way: peers that
//! find each other and split an address range among themselves with no store). Nothing here
//! does I/O; the agent drives these state machines from its connections and timers.
//!
//! - [`ring`]: the address ring, a CRDT that splits the allocation range among peers so that
//!   no address is ever owned by two of them, through partitions, concurrent joins, restarts
//!   and `rmpeer`.
//! - [`topology`]: who is connected to whom, versioned so stale news never wins; gossip
//!   merge, unicast routes (shortest paths) and broadcast trees.
//! - [`proto`]: the control protocol's framing: versioned, length-prefixed messages with size
//!   bounds, and the authenticated, encrypted session a password sets up.

pub mod proto;
pub mod ring;
pub mod topology;

use std::fmt;

use serde::{Deserialize, Serialize};

/// A peer's stable identity.
///
/// A `u64` rather than a string: Weave names peers by a 48-bit value (a MAC address or one
/// given with `--name`), which fits; it is `Copy`, compares and sorts cheaply (the ring sorts
/// and compares owners on every merge), and has one canonical encoding, so two peers can
/// never disagree about whether two names are equal (strings bring case and Unicode
/// normalisation questions into a CRDT's equality). Human-friendly names (hostnames) belong
/// to the topology, which maps them to a `PeerName`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PeerName(pub u64);

impl fmt::Display for PeerName {
    /// 12 hex digits, as Weave Net prints its 48-bit names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:012x}", self.0)
    }
}
