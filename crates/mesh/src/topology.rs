//! The mesh's topology: who is connected to whom, as every peer learns it by gossip.
//!
//! Each peer publishes one [`PeerEntry`] about itself: its name, a nickname for humans, a UID
//! drawn at start (so a restarted peer is a new incarnation), a version it bumps on every
//! change, and its connections. Every peer keeps a [`Topology`]: the entries it has heard,
//! one per peer name, merged so that stale news never wins. From it a peer computes
//!
//! - unicast routes ([`Topology::routes`]): the next hop towards every reachable peer, by
//!   shortest path over *symmetric established* connections (both ends report the
//!   connection and both say it is established, so a half-open or one-sided link is never
//!   used), ties broken by the lowest peer name so every run gives the same answer;
//! - broadcast trees ([`Topology::broadcast_next_hops`]): for a broadcast started by a given
//!   source, the neighbours to forward it to. The tree is the shortest-path tree rooted at
//!   the source with the same tie-break, so every peer holding the same topology computes
//!   the same tree and a flood reaches each reachable peer exactly once, with no loops.
//!
//! Merging is a join: per name, the entry with the greater `(version, uid)` wins. That order
//! is total, so merges commute, are idempotent and need no ordered delivery; duplicated,
//! reordered or stale gossip converges to the same state. A restarted peer starts again at
//! version 1 with a fresh UID, and its old incarnation (higher version) would beat it; when a
//! peer hears an entry under its own name that is not exactly its own, it lifts its version
//! above that one, so its next gossip wins everywhere (Weave Net's rule, too). A peer never
//! takes someone else's word about itself.
//!
//! Nothing here does I/O; the agent serialises [`Topology::gossip_data`] (serde) on its
//! connections. Updates from gossip are bounded ([`MAX_PEERS`], [`MAX_CONNECTIONS`],
//! [`MAX_NICKNAME_LEN`]): an oversized update is refused whole, before anything changes.
//! The proto layer bounds the frame size, so deserialising cannot allocate without bound
//! either.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

pub use crate::PeerName;

/// The most peers a topology holds (known ones plus the new ones an update would add).
/// Weave Net meshes are tens to hundreds of peers; this leaves headroom and caps memory.
pub const MAX_PEERS: usize = 1024;

/// The most connections one entry may list: a peer connects to at most every other peer.
pub const MAX_CONNECTIONS: usize = MAX_PEERS;

/// The longest nickname (bytes) accepted from gossip.
pub const MAX_NICKNAME_LEN: usize = 255;

/// One connection as the peer that holds it reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    /// The peer at the other end.
    pub peer: PeerName,
    /// The other end's address as this peer sees it.
    pub address: SocketAddr,
    /// The handshake completed and traffic flows (not just attempted).
    pub established: bool,
    /// This peer dialled it (as opposed to accepting it).
    pub outbound: bool,
}

/// What one peer says about itself; the unit of gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub name: PeerName,
    pub nickname: String,
    /// Drawn at start; a different UID under the same name is a restarted peer.
    pub uid: u64,
    /// Bumped by the peer on every change of its entry.
    pub version: u64,
    pub connections: Vec<Connection>,
}

impl PeerEntry {
    /// The order in which entries for one name supersede each other.
    fn precedence(&self) -> (u64, u64) {
        (self.version, self.uid)
    }
}

/// Why an update was refused. Nothing of a refused update is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error("update carries {count} entries, more than the {max} peers allowed")]
    TooManyEntries { count: usize, max: usize },
    #[error("peer {peer} lists {count} connections, more than the {max} allowed")]
    TooManyConnections {
        peer: PeerName,
        count: usize,
        max: usize,
    },
    #[error("peer {peer}'s nickname is {len} bytes, more than the {max} allowed")]
    NicknameTooLong {
        peer: PeerName,
        len: usize,
        max: usize,
    },
    #[error("update would grow the topology to {count} peers, more than the {max} allowed")]
    TopologyFull { count: usize, max: usize },
}

/// What a merge changed: the names whose entries are new or newer (to gossip onwards).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Peers whose entry this merge added or replaced, plus `me` if my version was lifted.
    pub updated: BTreeSet<PeerName>,
    /// I heard of an entry under my own name that was not mine (an echo of a previous
    /// incarnation): my version now exceeds it and my entry must be gossiped again.
    pub self_bumped: bool,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.updated.is_empty()
    }
}

/// My view of the mesh: one entry per known peer, mine included.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    me: PeerName,
    entries: BTreeMap<PeerName, PeerEntry>,
}

impl Topology {
    /// A fresh view holding only my own entry, at version 1 with no connections. `uid` must
    /// be drawn anew at every start (random), so that peers tell this incarnation apart.
    pub fn new(me: PeerName, nickname: impl Into<String>, uid: u64) -> Self {
        let entry = PeerEntry {
            name: me,
            nickname: nickname.into(),
            uid,
            version: 1,
            connections: Vec::new(),
        };
        Topology {
            me,
            entries: BTreeMap::from([(me, entry)]),
        }
    }

    pub fn me(&self) -> PeerName {
        self.me
    }

    /// My own entry.
    pub fn own_entry(&self) -> &PeerEntry {
        &self.entries[&self.me]
    }

    pub fn entry(&self, name: PeerName) -> Option<&PeerEntry> {
        self.entries.get(&name)
    }

    /// All entries, ordered by name.
    pub fn entries(&self) -> impl Iterator<Item = &PeerEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Replaces my connections and bumps my version. Refused (nothing changes) if there are
    /// more than [`MAX_CONNECTIONS`]: every other peer would refuse the entry.
    pub fn update_self(&mut self, connections: Vec<Connection>) -> Result<(), TopologyError> {
        if connections.len() > MAX_CONNECTIONS {
            return Err(TopologyError::TooManyConnections {
                peer: self.me,
                count: connections.len(),
                max: MAX_CONNECTIONS,
            });
        }
        let own = self
            .entries
            .get_mut(&self.me)
            .expect("own entry is never removed");
        own.connections = connections;
        own.version = own.version.saturating_add(1);
        Ok(())
    }

    /// Merges entries heard by gossip, keeping per name the greater `(version, uid)`. The
    /// update is checked whole against the bounds first; a refused update changes nothing.
    pub fn merge(&mut self, update: &[PeerEntry]) -> Result<Changes, TopologyError> {
        self.check_bounds(update)?;
        let mut changes = Changes::default();
        for incoming in update {
            if incoming.name == self.me {
                let own = self.entries.get_mut(&self.me).expect("own entry");
                // Anything under my name that is not exactly my entry is an older
                // incarnation (or a forgery); it must lose to my next gossip everywhere.
                if incoming.precedence() != own.precedence() && incoming.version >= own.version {
                    own.version = incoming.version.saturating_add(1);
                    changes.self_bumped = true;
                    changes.updated.insert(self.me);
                }
                continue;
            }
            match self.entries.get_mut(&incoming.name) {
                Some(known) if known.precedence() >= incoming.precedence() => {}
                Some(known) => {
                    *known = incoming.clone();
                    changes.updated.insert(incoming.name);
                }
                None => {
                    self.entries.insert(incoming.name, incoming.clone());
                    changes.updated.insert(incoming.name);
                }
            }
        }
        Ok(changes)
    }

    fn check_bounds(&self, update: &[PeerEntry]) -> Result<(), TopologyError> {
        if update.len() > MAX_PEERS {
            return Err(TopologyError::TooManyEntries {
                count: update.len(),
                max: MAX_PEERS,
            });
        }
        let mut new_names = BTreeSet::new();
        for entry in update {
            if entry.connections.len() > MAX_CONNECTIONS {
                return Err(TopologyError::TooManyConnections {
                    peer: entry.name,
                    count: entry.connections.len(),
                    max: MAX_CONNECTIONS,
                });
            }
            if entry.nickname.len() > MAX_NICKNAME_LEN {
                return Err(TopologyError::NicknameTooLong {
                    peer: entry.name,
                    len: entry.nickname.len(),
                    max: MAX_NICKNAME_LEN,
                });
            }
            if !self.entries.contains_key(&entry.name) {
                new_names.insert(entry.name);
            }
        }
        let count = self.entries.len() + new_names.len();
        if count > MAX_PEERS {
            return Err(TopologyError::TopologyFull {
                count,
                max: MAX_PEERS,
            });
        }
        Ok(())
    }

    /// What to send a neighbour: every entry I know (periodic gossip, and a new connection's
    /// first exchange).
    pub fn gossip_data(&self) -> Vec<PeerEntry> {
        self.entries.values().cloned().collect()
    }

    /// What to send after a change: only the named entries (e.g. [`Changes::updated`], or
    /// `[me]` after [`Topology::update_self`]); unknown names are skipped.
    pub fn gossip_data_for<'a>(
        &self,
        names: impl IntoIterator<Item = &'a PeerName>,
    ) -> Vec<PeerEntry> {
        names
            .into_iter()
            .filter_map(|name| self.entries.get(name).cloned())
            .collect()
    }

    /// Drops the entries of peers I can no longer reach, following every connection any
    /// peer reports (established or not, in the direction it reports it): generous on
    /// purpose, so a peer that is only being connected to is not forgotten and re-learnt.
    /// Returns the names dropped.
    pub fn garbage_collect(&mut self) -> Vec<PeerName> {
        let mut reached = BTreeSet::from([self.me]);
        let mut queue = VecDeque::from([self.me]);
        while let Some(name) = queue.pop_front() {
            let Some(entry) = self.entries.get(&name) else {
                continue;
            };
            for conn in &entry.connections {
                if reached.insert(conn.peer) {
                    queue.push_back(conn.peer);
                }
            }
        }
        let dropped: Vec<PeerName> = self
            .entries
            .keys()
            .filter(|name| !reached.contains(name))
            .copied()
            .collect();
        for name in &dropped {
            self.entries.remove(name);
        }
        dropped
    }

    /// The neighbours of `name` over symmetric established connections, ascending: both
    /// entries are known, each lists the other, and both say established.
    pub fn symmetric_neighbours(&self, name: PeerName) -> Vec<PeerName> {
        self.symmetric_adjacency().remove(&name).unwrap_or_default()
    }

    /// The whole symmetric established graph, each neighbour list ascending and deduplicated.
    /// Built in one pass over all connections (linear in their number, which the bounds cap)
    /// rather than by scanning the other end's list per connection.
    fn symmetric_adjacency(&self) -> HashMap<PeerName, Vec<PeerName>> {
        let established: HashSet<(PeerName, PeerName)> = self
            .entries
            .values()
            .flat_map(|entry| {
                entry
                    .connections
                    .iter()
                    .filter(move |c| c.established && c.peer != entry.name)
                    .map(move |c| (entry.name, c.peer))
            })
            .collect();
        let mut adjacency: HashMap<PeerName, Vec<PeerName>> = HashMap::new();
        for &(from, to) in &established {
            // Both entries are known by construction: `to` listed `from` itself.
            if established.contains(&(to, from)) {
                adjacency.entry(from).or_default().push(to);
            }
        }
        for neighbours in adjacency.values_mut() {
            neighbours.sort_unstable();
        }
        adjacency
    }

    /// Breadth-first search from `root` over symmetric established connections, neighbours
    /// in ascending name order. Returns each reached peer's parent (the root maps to
    /// itself): the shortest-path tree with the lowest-name tie-break.
    fn shortest_path_tree(&self, root: PeerName) -> BTreeMap<PeerName, PeerName> {
        let mut parent = BTreeMap::new();
        if !self.entries.contains_key(&root) {
            return parent;
        }
        let adjacency = self.symmetric_adjacency();
        parent.insert(root, root);
        let mut queue = VecDeque::from([root]);
        while let Some(name) = queue.pop_front() {
            for &next in adjacency.get(&name).map(Vec::as_slice).unwrap_or_default() {
                if let std::collections::btree_map::Entry::Vacant(slot) = parent.entry(next) {
                    slot.insert(name);
                    queue.push_back(next);
                }
            }
        }
        parent
    }

    /// Unicast routes: for every peer I can reach (not me), the neighbour to send to. Shortest
    /// path by hop count over symmetric established connections; among equally short paths
    /// the one the BFS finds first with neighbours taken in ascending name order.
    pub fn routes(&self) -> HashMap<PeerName, PeerName> {
        let parent = self.shortest_path_tree(self.me);
        let mut next_hop = HashMap::with_capacity(parent.len());
        // BFS discovered parents before children, but the map is ordered by name: walk up
        // each path, memoising, so every lookup is cheap.
        for &dest in parent.keys() {
            if dest == self.me {
                continue;
            }
            let mut path = vec![dest];
            let hop = loop {
                let last = *path.last().expect("non-empty");
                if let Some(&hop) = next_hop.get(&last) {
                    break hop;
                }
                let up = parent[&last];
                if up == self.me {
                    break last;
                }
                path.push(up);
            };
            for name in path {
                next_hop.insert(name, hop);
            }
        }
        next_hop
    }

    /// For a broadcast started by `source`, the neighbours I forward it to, ascending: my
    /// children in the shortest-path tree rooted at `source`. Empty if the source or I am not
    /// in that tree. Peers with the same topology compute the same tree, so a flood reaches
    /// every peer reachable from the source exactly once.
    pub fn broadcast_next_hops(&self, source: PeerName) -> Vec<PeerName> {
        let parent = self.shortest_path_tree(source);
        if !parent.contains_key(&self.me) {
            return Vec::new();
        }
        parent
            .iter()
            .filter(|&(&child, &up)| up == self.me && child != self.me)
            .map(|(&child, _)| child)
            .collect()
    }
}
