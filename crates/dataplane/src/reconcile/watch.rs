//! Whether a full reconcile needs to read the kernel at all: [`Watch`] keeps a fingerprint of
//! the last desired state the kernel took entirely, and listens to the kernel's notifications
//! ([`KernelEvents`]) for anything that could have touched twill's objects since.
//!
//! The agent reconciles on every periodic resync; with thousands of peers, reading them back
//! and diffing is most of what a resync costs, and almost always finds nothing. As Calico's
//! felix and cilium do, the kernel is read again only when it may have drifted: a notification
//! concerning a route of twill's protocol, a route to a destination twill wants, a route
//! through a `twill.*` link, a neighbour or FDB entry or an address of such a link, a change
//! of such a link or of a link twill's objects use (the VXLAN underlay, the devices of its
//! routes), a nexthop object of twill's, or lost notifications. Changes made through the
//! reconciler's own sockets are not notifications of drift (the kernel names the socket);
//! those it cannot tell apart (FDB entries and links carry no sender) make the next resync
//! read the kernel once.
//!
//! Only small things are kept: a 64-bit hash of the desired state, the destinations of its
//! routes (sorted, for lookups) and the indexes and names of the links concerned.

use std::hash::{DefaultHasher, Hash, Hasher};

use ipnet::IpNet;
use tracing::{debug, warn};
use twill_netlink::{Change, KernelEvents};
use twill_types::desired::{DesiredState, PEER_ROUTE_PROTOCOL};

use super::Rtnl;
use super::model::{Observed, Plan, is_twill_link};

/// The kernel as last reconciled, and whether it may have changed since.
#[derive(Debug)]
pub struct Watch {
    /// None when notifications are unavailable: every reconcile reads the kernel.
    events: Option<KernelEvents>,
    /// The fingerprint of the desired state that the kernel took entirely at the last full
    /// reconcile (None when that reconcile left something undone, or the kernel has been
    /// written since by other means).
    clean: Option<u64>,
    /// A notification since the last read concerned twill's objects.
    dirty: bool,
    /// Destinations of the desired routes, sorted.
    destinations: Vec<IpNet>,
    /// Indexes of twill's links as last read.
    twill_links: Vec<u32>,
    /// Names of the other links twill's objects use.
    used_links: Vec<String>,
}

/// A 64-bit fingerprint of a desired state (every field, through its `Hash`).
pub fn fingerprint(desired: &DesiredState) -> u64 {
    let mut h = DefaultHasher::new();
    desired.hash(&mut h);
    h.finish()
}

impl Watch {
    /// Subscribes, in the calling thread's namespace (which must be `nl`'s), to the kernel's
    /// notifications other than of `nl`'s own changes. Without them (an error here), every
    /// reconcile reads the kernel, as it always did.
    pub fn new(nl: &Rtnl) -> Watch {
        let events = KernelEvents::new(&nl.port_ids())
            .inspect_err(|e| {
                warn!("kernel notifications unavailable, every resync reads the kernel: {e}")
            })
            .ok();
        Watch {
            events,
            clean: None,
            dirty: true,
            destinations: Vec::new(),
            twill_links: Vec::new(),
            used_links: Vec::new(),
        }
    }

    /// True when the kernel still holds `desired` exactly: it is the state last reconciled
    /// with nothing left undone, and no notification since concerned twill's objects.
    pub fn unchanged(&mut self, desired_fingerprint: u64) -> bool {
        self.take_notifications();
        !self.dirty && self.clean == Some(desired_fingerprint)
    }

    /// The kernel is about to be read: notifications up to now are reflected in what is read.
    /// (Those that arrive while it is being read make the next reconcile read it again.)
    pub fn reading(&mut self) {
        self.take_notifications();
        self.dirty = false;
    }

    /// The kernel was written outside a full reconcile (or one failed): the next reads it.
    pub fn forget(&mut self) {
        self.clean = None;
    }

    /// A full reconcile of `desired` (fingerprint `fp`) read the kernel and applied `plan`;
    /// `observed` is what the kernel held before the plan, `done` whether every change was
    /// accepted and nothing is in error.
    pub fn reconciled(
        &mut self,
        desired: &DesiredState,
        fp: u64,
        observed: &Observed,
        plan: &Plan,
        done: bool,
    ) {
        // A device created or recreated has an index not read yet: its neighbour and FDB
        // notifications could not be told apart, so the next reconcile reads it.
        let devices_kept = plan.devices.is_empty() && plan.delete_devices.is_empty();
        self.clean = (done && plan.ignored.is_empty() && devices_kept && self.events.is_some())
            .then_some(fp);
        self.destinations = desired.routes.iter().map(|r| r.dst).collect();
        self.destinations.sort_unstable();
        self.destinations.dedup();
        self.destinations.shrink_to_fit();
        self.twill_links = observed.vxlan.iter().map(|v| v.index).collect();
        let mut used: Vec<String> = desired
            .routes
            .iter()
            .map(|r| &r.dev)
            .chain(
                desired
                    .vxlan
                    .iter()
                    .chain(&desired.vxlan6)
                    .map(|v| &v.underlay),
            )
            .filter(|dev| !is_twill_link(dev))
            .cloned()
            .collect();
        used.sort_unstable();
        used.dedup();
        self.used_links = used;
    }

    /// Reads the notifications queued so far; any that concerns twill's objects (or a loss of
    /// notifications, or a socket that fails) marks the kernel dirty.
    fn take_notifications(&mut self) {
        let Some(events) = &mut self.events else {
            self.dirty = true;
            return;
        };
        let mut dirty = false;
        let mut first = None;
        let outcome = events.drain(|change| {
            if !dirty
                && concerns_twill(
                    &change,
                    &self.destinations,
                    &self.twill_links,
                    &self.used_links,
                )
            {
                dirty = true;
                first = Some(change);
            }
        });
        if let Err(e) = &outcome {
            warn!("reading kernel notifications: {e}");
        }
        if dirty {
            debug!(change = ?first, "the kernel changed behind the reconciler");
        }
        self.dirty |= dirty || outcome.is_err();
    }
}

/// Whether `change` may concern an object twill owns or relies on.
fn concerns_twill(
    change: &Change,
    destinations: &[IpNet],
    twill_links: &[u32],
    used_links: &[String],
) -> bool {
    match change {
        Change::Lost => true,
        Change::Route(r) => {
            r.protocol == PEER_ROUTE_PROTOCOL
                || r.oif.is_some_and(|i| twill_links.contains(&i))
                || destinations.binary_search(&r.dst).is_ok()
        }
        Change::Neighbour { index } | Change::Address { index } => twill_links.contains(index),
        Change::Link { index, name } => {
            twill_links.contains(index)
                || name
                    .as_deref()
                    .is_some_and(|n| is_twill_link(n) || used_links.iter().any(|u| u == n))
        }
        Change::Nexthop { protocol } => *protocol == PEER_ROUTE_PROTOCOL,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_netlink::IpRoute;

    fn route(dst: &str, protocol: u8, oif: u32) -> Change {
        Change::Route(IpRoute {
            dst: dst.parse().unwrap(),
            protocol,
            oif: Some(oif),
            unicast: true,
            ..IpRoute::default()
        })
    }

    #[test]
    fn only_changes_near_twills_objects_concern_it() {
        let destinations: Vec<IpNet> = vec!["10.1.0.0/24".parse().unwrap()];
        let twill = [7];
        let used = ["eth0".to_string()];
        let concerns = |c: &Change| concerns_twill(c, &destinations, &twill, &used);
        // Twill's protocol, a wanted destination (someone else's route replacing twill's),
        // a route through twill's link.
        assert!(concerns(&route("10.9.0.0/24", PEER_ROUTE_PROTOCOL, 2)));
        assert!(concerns(&route("10.1.0.0/24", 4, 2)));
        assert!(concerns(&route("10.9.0.0/24", 2, 7)));
        // A pod's route of the CNI plugin (protocol 116) elsewhere.
        assert!(!concerns(&route("10.9.0.5/32", 116, 3)));
        assert!(concerns(&Change::Neighbour { index: 7 }));
        assert!(!concerns(&Change::Neighbour { index: 2 }));
        assert!(concerns(&Change::Address { index: 7 }));
        assert!(!concerns(&Change::Address { index: 3 }));
        let link = |index, name: &str| Change::Link {
            index,
            name: Some(name.to_string()),
        };
        assert!(concerns(&link(9, "twill.1")));
        assert!(concerns(&link(2, "eth0")));
        assert!(!concerns(&link(12, "veth1234")));
        assert!(concerns(&Change::Nexthop {
            protocol: PEER_ROUTE_PROTOCOL
        }));
        assert!(!concerns(&Change::Nexthop { protocol: 4 }));
        assert!(concerns(&Change::Lost));
    }

    #[test]
    fn fingerprints_differ_when_anything_differs() {
        let a = DesiredState::default();
        let mut b = DesiredState::default();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.routes.push(twill_types::desired::RouteSpec {
            dst: "10.1.0.0/24".parse().unwrap(),
            via: "10.9.0.2".parse().unwrap(),
            dev: "eth0".into(),
            onlink: false,
        });
        assert_ne!(fingerprint(&a), fingerprint(&b));
    }
}
