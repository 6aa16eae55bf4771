//! The core's BGP state: external peers from the store, the best routes learned, what was
//! programmed of them, the sessions' states, and graceful-restart settling with the routes a
//! previous agent left ([`Retained`]). The speaker itself (its sessions, keys and status
//! reads) is I/O and stays in [`crate::bgp::BgpSide`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;
use twill_backend::LocalNode;
use twill_bgp::State;
use twill_dataplane::reconcile::Plan;
use twill_types::cluster::BgpPeer;
use twill_types::desired::DesiredState;

use super::action::{Action, Level};
use super::event::{Millis, SpeakerChange, StoreEvent};
use crate::bgp::{Programmed, Retained, learned_specs, route_delta};

/// How long a restarted agent keeps its old BGP routes at most while peers come back.
pub const SETTLE_DEADLINE: Millis = 30_000;
/// Quiet time after the last route change before the routes count as complete.
const SETTLE_QUIET: Millis = 1_000;

pub struct BgpCore {
    /// External peers from the store, by key.
    store_peers: BTreeMap<String, BgpPeer>,
    /// Best routes learned from peers, IPv4 and IPv6: prefix → next hop.
    learned: BTreeMap<IpNet, IpAddr>,
    /// Prefixes of `learned` that changed since they were last programmed.
    pending: BTreeSet<IpNet>,
    /// Every route the agent programmed, as of the last reconcile and the deltas since.
    programmed: HashMap<IpNet, Programmed>,
    /// The BGP prefixes of the last reconcile's desired state.
    reconciled_bgp: BTreeSet<IpNet>,
    started: Millis,
    last_change: Millis,
    /// The speaker's sessions and their states.
    states: BTreeMap<IpAddr, State>,
    settled: bool,
    /// Routes of a previous agent kept until BGP settles (a restart only).
    pub retained: Option<Retained>,
}

impl BgpCore {
    pub fn new(started: Millis, restarting: bool, retained: Option<Retained>) -> BgpCore {
        BgpCore {
            store_peers: BTreeMap::new(),
            learned: BTreeMap::new(),
            pending: BTreeSet::new(),
            programmed: HashMap::new(),
            reconciled_bgp: BTreeSet::new(),
            started,
            last_change: started,
            states: BTreeMap::new(),
            // Only a restarted agent has routes of a predecessor worth keeping; a first start
            // installs what it learns right away (and sweeps leftovers as usual).
            settled: !restarting,
            retained,
        }
    }

    pub fn store_peers(&self) -> Vec<BgpPeer> {
        self.store_peers.values().cloned().collect()
    }

    /// A store event about external peers; true when the set changed.
    pub fn on_store_event(&mut self, ev: StoreEvent, out: &mut Vec<Action>) -> bool {
        let before = self.store_peers.clone();
        match ev {
            StoreEvent::InSync(all) => {
                self.store_peers.clear();
                for kv in all {
                    self.admit(&kv.key, &kv.value, out);
                }
            }
            StoreEvent::Put(kv) => {
                self.store_peers.remove(&kv.key);
                self.admit(&kv.key, &kv.value, out);
            }
            StoreEvent::Delete(key) => {
                self.store_peers.remove(&key);
            }
            StoreEvent::Lost(why) => out.push(Action::Log(
                Level::Warn,
                format!("bgp peers: lost the store ({why}); keeping peers"),
            )),
        }
        before != self.store_peers
    }

    fn admit(&mut self, key: &str, value: &str, out: &mut Vec<Action>) {
        match BgpPeer::from_store(key, value.as_bytes()) {
            Ok(p) => {
                self.store_peers.insert(key.to_string(), p);
            }
            Err(e) => out.push(Action::Log(
                Level::Warn,
                format!("ignoring a BGP peer: {e}"),
            )),
        }
    }

    /// A speaker event; true when the learned routes changed.
    pub fn on_event(&mut self, ev: SpeakerChange, now: Millis, out: &mut Vec<Action>) -> bool {
        match ev {
            SpeakerChange::BestRoutes(changes) => {
                self.last_change = now;
                let mut changed = false;
                for (prefix, hop) in changes {
                    let this = match hop {
                        Some(nh) => self.learned.insert(prefix, nh) != Some(nh),
                        None => self.learned.remove(&prefix).is_some(),
                    };
                    if this {
                        self.pending.insert(prefix);
                    }
                    changed |= this;
                }
                changed
            }
            SpeakerChange::PeerState { peer, state } => {
                out.push(Action::Log(
                    Level::Info,
                    format!("bgp: peer state peer={peer} state={state:?}"),
                ));
                if state == State::Established {
                    self.last_change = now;
                }
                self.states.insert(peer, state);
                false
            }
        }
    }

    /// The speaker dropped the `removed` sessions and (re)started the `added` ones.
    pub fn synced(&mut self, removed: &[IpAddr], added: &[IpAddr]) {
        for addr in removed {
            self.states.remove(addr);
        }
        for addr in added {
            self.states.insert(*addr, State::Idle);
        }
    }

    /// True once the routes learned are complete enough to replace what a previous agent
    /// left in the kernel: every peer Established and no change for a second, or 30 s
    /// (at once when this is not a restart). Turns true once and stays.
    pub fn settle(&mut self, now: Millis, out: &mut Vec<Action>) -> bool {
        if !self.settled {
            let all_up = self.states.values().all(|s| *s == State::Established);
            let quiet = now.saturating_sub(self.last_change) >= SETTLE_QUIET;
            let after = now.saturating_sub(self.started);
            if (all_up && quiet) || after >= SETTLE_DEADLINE {
                out.push(Action::Log(
                    Level::Info,
                    format!(
                        "bgp: routes settled routes={} after_ms={after}",
                        self.learned.len()
                    ),
                ));
                self.settled = true;
            }
        }
        self.settled
    }

    /// What [`BgpCore::settle`] last said, without re-evaluating.
    pub fn settled(&self) -> bool {
        self.settled
    }

    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }

    /// Adds the learned routes to the backend's desired state (for a reconcile, which
    /// programs every pending change).
    pub fn add_routes(&mut self, node: &LocalNode, desired: &mut DesiredState) {
        let specs = learned_specs(&self.learned, node, desired);
        self.reconciled_bgp = specs.iter().map(|r| r.dst).collect();
        self.pending.clear();
        desired.routes.extend(specs);
    }

    /// A reconcile applies `desired`: the routes the agent owns from then on.
    pub fn reconciled(&mut self, desired: &DesiredState) {
        self.programmed = desired
            .routes
            .iter()
            .map(|r| {
                let p = Programmed {
                    spec: r.clone(),
                    from_bgp: self.reconciled_bgp.contains(&r.dst),
                };
                (r.dst, p)
            })
            .collect();
    }

    /// The kernel changes for the learned routes that changed since they were last
    /// programmed (see [`route_delta`]); `desired` is the backend's current desired state.
    pub fn take_delta(&mut self, node: &LocalNode, desired: &DesiredState) -> Plan {
        let changed = std::mem::take(&mut self.pending);
        route_delta(&changed, &self.learned, node, desired, &mut self.programmed)
    }
}
