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
