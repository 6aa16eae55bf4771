//! The agent's decisions as a pure step function: [`Core::step`] takes one stamped input
//! ([`Input`]: a store or speaker event, a timer tick, a signal, or the answer to I/O the
//! core asked for) and returns the [`Action`]s it calls for. It does no I/O, reads no clock
//! (time comes with each input) and uses no randomness, so a recorded event log replays to
//! the same actions (`tests/replay.rs`). The I/O shell around it is [`crate::run`].
//!
//! Actions that ask a question (check the lease, renew it, lease again, reconcile, sync the
//! BGP sessions, read the BGP status) are answered by an event the shell feeds back before it
//! runs the next action, so the core waits for at most one answer at a time ([`Waiting`]).

pub mod action;
mod bgp;
pub mod event;
mod host;
mod status;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use twill_backend::{Backend, LocalNode};
use twill_types::cluster::ClusterConfig;
use twill_types::desired::DesiredState;
use twill_types::lease::Lease;
use twill_types::node::{LeaseEvent, PeerStatus, PolicyStatus};

pub use action::{Action, ExitReason, Level, Status};
pub use bgp::SETTLE_DEADLINE;
pub use event::{
    BgpStart, Event, Input, Kv, LeaseCheck, LeaseHeld, Millis, Missing, NodeSetup, ObjectRef,
    ReconcileOutcome, Record, Refused, Renewal, SpeakerChange, Start, StoreEvent,
};

use crate::bgp::Retained;
use crate::lease;

/// Quiet time after a batch of BGP route changes before the reconcile that checks them.
const BGP_CHECK_DELAY: Millis = 200;

/// The last this many lease events are kept for `twill status`.
const LEASE_EVENTS_KEPT: usize = 16;

/// The agent's state: everything its decisions depend on.
pub struct Core {
    config: ClusterConfig,
    backend: Box<dyn Backend + Send + Sync>,
    node: LocalNode,
    /// The store's endpoints: control-plane addresses pods never reach.
    store_endpoints: Vec<SocketAddr>,
    /// Our lease's key and the lease we publish under it.
    held_key: String,
    held_lease: Lease,
    /// Every lease in the store, by key (our own included).
    peers: BTreeMap<String, Lease>,
    in_sync: bool,
    /// The lease was lost (deleted, taken, expired) and leasing again has not succeeded yet.
    lease_lost: bool,
    /// What happened to the lease behind the agent's back, for `twill status`.
    lease_events: Vec<LeaseEvent>,
    policy: PolicyStatus,
    /// Peers as last reconciled, for status rewrites between reconciles.
    last_peers: Vec<PeerStatus>,
    /// The last desired state has a userspace tunnel or WireGuard (their counters change
    /// every second).
    tunnel: bool,
    /// Our lease with a new WireGuard key still has to reach the store (retried every
    /// second).
    publish_pending: bool,
    synced_once: bool,
    bgp: Option<bgp::BgpCore>,
    /// A lease event of the current burst changed the peer map.
    leases_dirty: bool,
    /// A speaker event of the current burst changed the learned routes.
    routes_dirty: bool,
    /// When to reconcile after the last batch of BGP route changes.
    bgp_check_at: Option<Millis>,
    waiting: Option<Waiting>,
    /// The desired state being reconciled and how many leases it came from (until its
    /// outcome arrives).
    reconciling: Option<(Arc<DesiredState>, usize)>,
    /// What to do once the BGP status is read.
    after_refresh: Option<AfterRefresh>,
    now: Millis,
    unix: u64,
}

/// The answer the core waits for, and what comes after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    LeaseCheck(Next),
    /// Leasing again; `lost` when the lease was lost just now (then a failure is written to
    /// the status at once).
    Reacquire {
        lost: bool,
        next: Next,
    },
    Renew,
}

/// What follows a lease check or leasing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// The end of a burst of lease events: reconcile if they changed something.
    Reconcile { dirty: bool },
    /// The renew timer: renew (or lease again).
    Renew,
    /// A renewal: if leasing again failed, try again in a second.
    RetryIfFailed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterRefresh {
    Write,
    /// Only if the BGP status changed or tunnel counters are shown.
    WriteIfChanged,
}

impl Core {
    /// The core as the agent's loop starts.
    pub fn new(start: Start) -> Result<Core, String> {
        let backend = twill_backend::for_config(&start.config).map_err(|e| e.to_string())?;
        let n = start.node;
        let node = LocalNode {
            name: n.name,
            subnet: n.subnet,
            public_net: n.public_net,
            underlay_dev: n.underlay_dev,
            underlay_mtu: n.underlay_mtu,
            // The node's IPv6 side is what its lease publishes (the shell derives it when
            // leasing), so the two never disagree.
            subnet6: start.lease.subnet6,
            public_net6: start.lease.public_net6,
        };
        let bgp = start.bgp.map(|b| {
            let retained = b.retained.map(|routes| Retained {
                routes,
                until: b.started + SETTLE_DEADLINE,
            });
            bgp::BgpCore::new(b.started, b.restarting, retained)
        });
        Ok(Core {
            store_endpoints: start.store_endpoints,
            config: start.config,
            backend,
            node,
            held_key: start.lease_key,
            held_lease: start.lease,
            peers: BTreeMap::new(),
            in_sync: false,
            lease_lost: false,
            lease_events: Vec::new(),
            policy: PolicyStatus::default(),
            last_peers: Vec::new(),
            tunnel: false,
            publish_pending: false,
            synced_once: false,
            bgp,
            leases_dirty: false,
            routes_dirty: false,
            bgp_check_at: None,
            waiting: None,
            reconciling: None,
            after_refresh: None,
            now: 0,
            unix: 0,
        })
    }

    /// When the core wants a [`Event::Wake`] (None: no deadline).
    pub fn wake_at(&self) -> Option<Millis> {
        self.bgp_check_at
    }

    /// This node's subnet now, the one its lease is keyed by: IPv4, or IPv6 on an IPv6-only
    /// node (it changes when leasing again finds it taken).
    pub fn subnet(&self) -> ipnet::IpNet {
        match (self.node.subnet, self.node.subnet6) {
            (Some(subnet), _) => subnet.into(),
            (None, Some(subnet6)) => subnet6.into(),
            (None, None) => unreachable!("every held lease has a subnet of one family"),
        }
    }

    /// Applies one input; returns what to do, in order.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        self.now = input.at;
        self.unix = input.unix;
        let mut out = Vec::new();
        match input.event {
            Event::Started => {
                if let Some(b) = &self.bgp {
                    out.push(Action::SyncBgpPeers {
                        leases: Vec::new(),
                        store_peers: b.store_peers(),
                    });
                }
            }
            Event::Leases(ev) => {
                let dirty = self.on_lease_event(ev, &mut out);
                self.leases_dirty |= dirty;
            }
            Event::LeasesDone => {
                let dirty = std::mem::take(&mut self.leases_dirty);
                self.check_lease_then(Next::Reconcile { dirty }, &mut out);
            }
            Event::BgpPeers(ev) => {
                let changed = match &mut self.bgp {
                    Some(b) => b.on_store_event(ev, &mut out),
                    None => false,
                };
                if changed {
                    self.sync_bgp_peers(&mut out);
                }
            }
            Event::Speaker(ev) => {
                if let Some(b) = &mut self.bgp {
                    self.routes_dirty |= b.on_event(ev, self.now, &mut out);
                }
            }
            Event::SpeakerDone => {
                let dirty = std::mem::take(&mut self.routes_dirty);
                if let Some(b) = self.bgp.as_ref().filter(|_| dirty) {
                    // bench/bgp.sh reads this to time the table's arrival.
                    out.push(Action::Log(
                        Level::Debug,
                        format!("bgp: learned routes changed learned={}", b.learned_len()),
                    ));
                    if self.in_sync {
                        self.program_bgp_changes(&mut out);
                    }
                }
            }
            Event::RouteDeltaDone { failed } => {
                if failed.is_empty() {
                    // Once the burst is over: read back, repair if needed, and write the
                    // status (the deltas themselves never read the kernel).
                    self.bgp_check_at = Some(self.now + BGP_CHECK_DELAY);
                } else {
                    for f in failed {
                        out.push(Action::Log(Level::Warn, f));
                    }
                    // Whatever the kernel holds now, the reconcile makes it right.
                    self.reconcile_if_in_sync(&mut out);
                }
            }
            Event::Wake => {
                if self.bgp_check_at.is_some_and(|at| at <= self.now) {
                    self.bgp_check_at = None;
                    self.reconcile_if_in_sync(&mut out);
                }
            }
            Event::ResyncTick => self.reconcile_if_in_sync(&mut out),
            Event::RenewTick => self.check_lease_then(Next::Renew, &mut out),
            Event::StatusTick => self.status_tick(&mut out),
            Event::Policy(policy) => {
                self.policy = policy;
                out.push(self.write_status());
            }
            Event::Signal => out.push(Action::Exit(ExitReason::Signal)),
            Event::LeaseChecked(check) => self.lease_checked(check, &mut out),
            Event::Renewed(renewal) => self.renewed(renewal, &mut out),
            Event::Reacquired(result) => self.reacquired(result, &mut out),
            Event::Reconciled(outcome) => self.reconciled(outcome, &mut out),
            Event::BgpPeersSynced { removed, added } => {
                if let Some(b) = &mut self.bgp {
                    b.synced(&removed, &added);
                }
            }
            Event::WireguardKey { public_key } => self.key_rotated(public_key, &mut out),
            Event::LeasePublished { error } => {
                self.publish_pending = error.is_some();
                match error {
                    Some(e) => out.push(Action::Log(
                        Level::Warn,
                        format!("publishing the new WireGuard public key: {e}; retrying in 1 s"),
                    )),
                    None => out.push(Action::Log(
                        Level::Info,
                        "published the new WireGuard public key".into(),
                    )),
                }
            }
            Event::BgpStatusRefreshed { changed } => match self.after_refresh.take() {
                Some(AfterRefresh::Write) => out.push(self.write_status()),
                Some(AfterRefresh::WriteIfChanged) if changed || self.tunnel => {
                    out.push(self.write_status())
                }
                _ => {}
            },
        }
        out
    }

    /// Applies one lease mirror event to the peer map; true when it changed something.
    fn on_lease_event(&mut self, ev: StoreEvent, out: &mut Vec<Action>) -> bool {
        match ev {
            StoreEvent::InSync(all) => {
                let mut peers = BTreeMap::new();
                for kv in all {
                    match lease::admit_entry(&self.config, &kv.key, kv.value.as_bytes()) {
                        Ok(lease) => {
                            peers.insert(kv.key, lease);
                        }
                        Err(w) => out.push(Action::Log(Level::Warn, w)),
                    }
                }
                self.peers = peers;
                if !self.in_sync {
                    out.push(Action::Log(
                        Level::Info,
                        format!("in sync with the store leases={}", self.peers.len()),
                    ));
                }
                self.in_sync = true;
                true
            }
            StoreEvent::Put(kv) => {
                match lease::admit_entry(&self.config, &kv.key, kv.value.as_bytes()) {
                    Ok(lease) => self.peers.insert(kv.key, lease.clone()) != Some(lease),
                    Err(w) => {
                        out.push(Action::Log(Level::Warn, w));
                        self.peers.remove(&kv.key).is_some()
                    }
                }
            }
            StoreEvent::Delete(key) => self.peers.remove(&key).is_some(),
            StoreEvent::Lost(why) => {
                out.push(Action::Log(
                    Level::Warn,
                    format!("lost the store ({why}); keeping the dataplane as it is"),
                ));
                self.in_sync = false;
                out.push(self.write_status());
                false
            }
        }
    }

    /// Asks the store about our lease when the mirror no longer shows it as ours, then goes
    /// on with `next` (at once when no question is needed). Any loss but a leave (the key
    /// deleted by hand, another node's lease under it, the store lease expired) makes the
    /// agent lease again and keep the dataplane.
    fn check_lease_then(&mut self, next: Next, out: &mut Vec<Action>) {
        let ours = self
            .peers
            .get(&self.held_key)
            .is_some_and(|l| l.node == self.node.name);
        if !self.in_sync || self.lease_lost || ours {
            self.then(next, true, out);
        } else {
            self.waiting = Some(Waiting::LeaseCheck(next));
            out.push(Action::CheckLease);
        }
    }

    fn then(&mut self, next: Next, ok: bool, out: &mut Vec<Action>) {
        match next {
            Next::Reconcile { dirty } => {
                if dirty {
                    self.reconcile_if_in_sync(out);
                }
            }
            Next::Renew => self.renew(out),
            Next::RetryIfFailed => {
                if !ok {
                    // Retry soon rather than a third of the TTL later: two missed renewals
                    // in a row could let the lease expire.
                    out.push(Action::RenewSoon);
                }
            }
        }
    }

    fn lease_checked(&mut self, check: LeaseCheck, out: &mut Vec<Action>) {
        let next = match self.waiting.take() {
            Some(Waiting::LeaseCheck(next)) => next,
            _ => Next::Reconcile { dirty: false },
        };
        match check {
            LeaseCheck::Held(lease) => {
                if let Some(lease) = lease {
                    self.peers.insert(self.held_key.clone(), lease);
                }
                self.then(next, true, out);
            }
            LeaseCheck::Left => out.push(Action::Exit(ExitReason::Left)),
            LeaseCheck::Lost { event, message } => self.lose_lease(event, message, next, out),
        }
    }

    /// Renews the lease (or, after a loss, leases again).
    fn renew(&mut self, out: &mut Vec<Action>) {
        if self.lease_lost {
            self.reacquire(false, Next::RetryIfFailed, out);
        } else {
            self.waiting = Some(Waiting::Renew);
            out.push(Action::RenewLease);
        }
    }

    fn renewed(&mut self, renewal: Renewal, out: &mut Vec<Action>) {
        self.waiting = None;
        match renewal {
            Renewal::Renewed => {}
            Renewal::Expired => self.lose_lease(
                "expired".into(),
                "our lease expired".into(),
                Next::RetryIfFailed,
                out,
            ),
            Renewal::Failed(e) => {
                out.push(Action::Log(
                    Level::Warn,
                    format!("renewing the lease failed ({e}); retrying in 1 s"),
                ));
                out.push(Action::RenewSoon);
            }
        }
    }

    /// The lease is gone without a leave: record it, say so, and lease again (the dataplane
    /// is left as it is meanwhile: pods keep talking).
    fn lose_lease(&mut self, event: String, message: String, next: Next, out: &mut Vec<Action>) {
        out.push(Action::Log(
            Level::Warn,
            format!(
                "{message}; leasing again, the dataplane stays as it is subnet={} event={event}",
                self.subnet()
            ),
        ));
        self.lease_events.push(LeaseEvent {
            at: self.unix,
            event,
            subnet: self.subnet(),
            leased_again: None,
            message: format!("{message}; leasing again"),
        });
        if self.lease_events.len() > LEASE_EVENTS_KEPT {
            self.lease_events.remove(0);
        }
        self.lease_lost = true;
        self.reacquire(true, next, out);
    }

    fn reacquire(&mut self, lost: bool, next: Next, out: &mut Vec<Action>) {
        self.waiting = Some(Waiting::Reacquire { lost, next });
        out.push(Action::Reacquire {
            lease: self.held_lease.clone(),
            subnet: self.subnet(),
        });
    }

    fn reacquired(&mut self, result: Result<LeaseHeld, String>, out: &mut Vec<Action>) {
        let (lost, next) = match self.waiting.take() {
            Some(Waiting::Reacquire { lost, next }) => (lost, next),
            _ => (false, Next::Reconcile { dirty: false }),
        };
        // The lease is keyed by the subnet of the family the node's pods live in first:
        // IPv4, or IPv6 on an IPv6-only node; it must be the same family as before.
        let before = self.subnet();
        let result = result.and_then(|held| match held.lease.key_subnet() {
            Some(now) if now.addr().is_ipv4() == before.addr().is_ipv4() => Ok((held, now)),
            _ if before.addr().is_ipv4() => Err(format!("{} holds no IPv4 subnet", held.key)),
            _ => Err(format!("{} holds no IPv6 subnet", held.key)),
        });
        let ok = match result {
            Ok((held, now)) => {
                if now != before {
                    // Pods already running hold addresses of the old subnet: say so loudly.
                    out.push(Action::Log(
                        Level::Warn,
                        format!(
                            "the old subnet was taken by another node; new pods use the new \
                             one old={before} new={now}"
                        ),
                    ));
                }
                self.node.subnet = held.lease.subnet;
                // The IPv6 subnet follows the IPv4 one when leasing again moved it.
                self.node.subnet6 = held.lease.subnet6;
                self.node.public_net6 = held.lease.public_net6;
                self.peers.insert(held.key.clone(), held.lease.clone());
                self.held_key = held.key;
                self.held_lease = held.lease;
                self.lease_lost = false;
                let message = if now == before {
                    format!("leased {now} again")
                } else {
                    format!("{before} was taken; leased {now} (new pods use it)")
                };
                out.push(Action::Log(
                    Level::Info,
                    format!("{message} subnet={now} key={}", self.held_key),
                ));
                if let Some(ev) = self.lease_events.last_mut() {
                    ev.leased_again = Some(now);
                    ev.message = format!("{}; {message}", ev.message);
                }
                out.push(self.write_status());
                true
            }
            Err(e) => {
                out.push(Action::Log(
                    Level::Warn,
                    format!("leasing again failed: {e}; retrying in 1 s"),
                ));
                if lost {
                    out.push(self.write_status());
                }
                false
            }
        };
        self.then(next, ok, out);
    }

    /// The engine switched to a new WireGuard key: our lease must say so (peers encrypt to
    /// the key in it), now and after any leasing again.
    fn key_rotated(&mut self, public_key: String, out: &mut Vec<Action>) {
        if self.held_lease.wireguard_public_key.as_deref() == Some(public_key.as_str()) {
            return;
        }
        out.push(Action::Log(
            Level::Info,
            format!(
                "wireguard: the key file holds a new key; publishing public key {}",
                twill_types::wg_key::short(&public_key)
            ),
        ));
        self.held_lease.wireguard_public_key = Some(public_key);
        self.publish_lease(out);
    }

    fn publish_lease(&mut self, out: &mut Vec<Action>) {
        if self.lease_lost {
            // Leasing again publishes `held_lease`, new key included.
            self.publish_pending = false;
            return;
        }
        self.publish_pending = true;
        out.push(Action::PublishLease {
            lease: self.held_lease.clone(),
        });
    }

    /// Every lease but ours.
    fn lease_list(&self) -> Vec<Lease> {
        self.peers
            .values()
            .filter(|l| l.node != self.node.name)
            .cloned()
            .collect()
    }

    /// The one desired state: the backend's for the peers' leases, the routes BGP learned,
    /// and (after a restart, until BGP settles) the routes a previous agent left.
    fn desired_state(&mut self, leases: &[Lease], out: &mut Vec<Action>) -> DesiredState {
        let mut desired = self.backend.desired(&self.node, leases);
        if let Some(b) = &mut self.bgp {
            b.add_routes(&self.node, &mut desired);
            let settled = b.settle(self.now, out);
            if let Some(retained) = &b.retained {
                if retained.holds(settled, self.now) {
                    retained.add_missing(&mut desired);
                } else {
                    out.push(Action::Log(
                        Level::Info,
                        format!(
                            "graceful restart over: routes BGP did not learn again go routes={}",
                            retained.routes.len()
                        ),
                    ));
                    b.retained = None;
                }
            }
        }
        host::host_objects(
            &self.config,
            &self.node,
            leases,
            &self.store_endpoints,
            &mut desired,
        );
        desired
    }

    fn reconcile_if_in_sync(&mut self, out: &mut Vec<Action>) {
        if self.in_sync {
            self.reconcile(out);
        }
    }

    /// Computes the desired state from the peer map and asks the shell to make the kernel
    /// match it.
    fn reconcile(&mut self, out: &mut Vec<Action>) {
        let leases = self.lease_list();
        if self.bgp.is_some() {
            self.sync_bgp_peers(out);
        }
        let desired = self.desired_state(&leases, out);
        if let Some(b) = &mut self.bgp {
            b.reconciled(&desired);
        }
        self.tunnel = desired.tunnel.is_some() || desired.wireguard.is_some();
        let desired = Arc::new(desired);
        self.reconciling = Some((desired.clone(), leases.len()));
        out.push(Action::Reconcile { desired, leases });
    }

    fn reconciled(&mut self, outcome: ReconcileOutcome, out: &mut Vec<Action>) {
        let Some((desired, leases)) = self.reconciling.take() else {
            return;
        };
        if let Some(e) = &outcome.failed {
            out.push(Action::Log(
                Level::Warn,
                format!("programming the dataplane: {e}"),
            ));
        }
        self.last_peers = status::peer_status(&desired, &outcome);
        drop(desired);
        if !self.synced_once {
            self.synced_once = true;
            out.push(Action::Log(
                Level::Info,
                format!(
                    "first reconcile done peers={leases} elapsed_ms={}",
                    self.now
                ),
            ));
        }
        match &self.bgp {
            // Sessions and routes as of this reconcile, so status never lags the kernel.
            Some(b) => {
                self.after_refresh = Some(AfterRefresh::Write);
                out.push(Action::RefreshBgpStatus {
                    settled: b.settled(),
                });
            }
            None => out.push(self.write_status()),
        }
    }

    fn sync_bgp_peers(&self, out: &mut Vec<Action>) {
        if let Some(b) = &self.bgp {
            out.push(Action::SyncBgpPeers {
                leases: self.lease_list(),
                store_peers: b.store_peers(),
            });
        }
    }

    /// Hands the learned routes that changed since the last reconcile or delta (only those)
    /// to the reconciler as a partial plan (a failure there falls back to a full reconcile).
    fn program_bgp_changes(&mut self, out: &mut Vec<Action>) {
        let leases = self.lease_list();
        let desired = self.backend.desired(&self.node, &leases);
        let Some(b) = &mut self.bgp else {
            return;
        };
        let plan = b.take_delta(&self.node, &desired);
        if !plan.is_empty() {
            out.push(Action::SubmitRoutes(Box::new(plan)));
        }
    }

    /// Every second: a lease with a new WireGuard key not published yet, BGP settling (the
    /// routes kept for graceful restart may go), the BGP status, and tunnel counters.
    fn status_tick(&mut self, out: &mut Vec<Action>) {
        if self.publish_pending {
            self.publish_lease(out);
        }
        let Some(b) = &mut self.bgp else {
            if self.tunnel {
                out.push(self.write_status());
            }
            return;
        };
        let was = b.settled();
        if b.settle(self.now, out) && !was && self.in_sync {
            // The reconcile reads the BGP status and writes the status itself.
            self.reconcile(out);
            return;
        }
        self.after_refresh = Some(AfterRefresh::WriteIfChanged);
        out.push(Action::RefreshBgpStatus {
            settled: b.settled(),
        });
    }

    fn write_status(&self) -> Action {
        Action::WriteStatus(Status {
            subnet: self.subnet(),
            in_sync: self.in_sync,
            peers: self.last_peers.clone(),
            policy: Some(self.policy.clone()),
            lease_events: self.lease_events.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_backend::vxlan::{vtep_mac, vtep_mac6};
    use twill_types::cluster::{BackendKind, Pool6};
    use twill_types::desired::PeerPath;

    fn lease(name: &str, i: u8) -> Lease {
        Lease {
            node: name.into(),
            subnet: Some(format!("10.244.{i}.0/24").parse().unwrap()),
            public_net: Some(format!("192.168.1.{i}/24").parse().unwrap()),
            backend: BackendKind::Vxlan,
            vtep_mac: Some(vtep_mac(name, 1)),
            wireguard_public_key: None,
            subnet6: Some(format!("fd00:10:244:{i}::/64").parse().unwrap()),
            public_net6: Some(format!("fd00:1::{i}/64").parse().unwrap()),
            vtep_mac6: Some(vtep_mac6(name, 1)),
        }
    }

    /// A dual-stack vxlan node whose IPv6 side comes from its lease.
    fn dual_core() -> Core {
        let mut config =
            ClusterConfig::parse(r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#)
                .unwrap();
        config.ipv6_pools.push(Pool6 {
            name: "v6".into(),
            cidr: "fd00:10:244::/48".parse().unwrap(),
            block_size: 64,
            subnet_min: "fd00:10:244:1::/64".parse().unwrap(),
            subnet_max: "fd00:10:244:ff::/64".parse().unwrap(),
            nat_outgoing: false,
        });
        let own = lease("n1", 1);
        Core::new(Start {
            config,
            node: NodeSetup {
                name: "n1".into(),
                subnet: Some(own.subnet.unwrap()),
                public_net: Some(own.public_net.unwrap()),
                underlay_dev: "eth0".into(),
                underlay_mtu: 1500,
            },
            lease_key: "leases/10.244.1.0-24".into(),
            lease: own,
            bgp: None,
            store_endpoints: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn the_nodes_ipv6_side_is_its_leases() {
        let mut core = dual_core();
        assert_eq!(core.node.subnet6, core.held_lease.subnet6);
        assert_eq!(core.node.public_net6, core.held_lease.public_net6);
        let desired = core.desired_state(&[lease("n2", 2)], &mut Vec::new());
        assert_eq!(desired.sysctls["net.ipv6.conf.all.forwarding"], "1");
        assert_eq!(
            desired.vxlan6.as_ref().map(|d| d.name.as_str()),
            Some("twill6.1")
        );
        assert_eq!(desired.peers[0].path6, Some(PeerPath::Vxlan));

        // Leasing again elsewhere moves the IPv6 subnet with the IPv4 one.
        let mut moved = lease("n1", 3);
        moved.public_net = core.held_lease.public_net;
        core.reacquired(
            Ok(LeaseHeld {
                key: "leases/10.244.3.0-24".into(),
                lease: moved,
            }),
            &mut Vec::new(),
        );
        assert_eq!(
            core.node.subnet6,
            Some("fd00:10:244:3::/64".parse().unwrap())
        );
        let desired = core.desired_state(&[lease("n2", 2)], &mut Vec::new());
        assert_eq!(
            desired.vxlan6.unwrap().address,
            "fd00:10:244:3::/128".parse::<ipnet::IpNet>().unwrap()
        );
    }
}
