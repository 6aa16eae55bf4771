//! Per-object status of what the [`Reconciler`](super::Reconciler) manages: each route (by
//! destination), neighbour (by address), FDB entry (by MAC) and the VXLAN device is pending
//! (handed over, not yet applied), done, or in error with the kernel's reason and the number
//! of attempts. An object in error is retried after [`backoff`] of its attempts; success
//! resets it. Pure: the clock is passed in.
//!
//! Only objects that are pending or in error are kept: an object the reconciler manages and
//! holds no entry for is done. A table of thousands of peers costs no memory here once it is
//! programmed, and a periodic reconcile that changes nothing touches nothing here.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::model::{ApplyReport, ObjectKey, Plan};

/// The first retry of a failed change comes after this long...
pub const FIRST_RETRY: Duration = Duration::from_millis(200);
/// ...doubling with every failed attempt up to this.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// How long to wait before the next attempt after `attempts` failed ones (at least one).
pub fn backoff(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

/// Where one object stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStatus {
    /// A change is handed over and not applied yet.
    Pending,
    /// The kernel refused the last change; it is tried again at `retry_at`.
    Error {
        reason: String,
        attempts: u32,
        retry_at: Instant,
    },
}

/// The objects the reconciler manages that are not done: pending or in error.
#[derive(Debug, Clone, Default)]
pub struct Statuses {
    objects: BTreeMap<ObjectKey, ObjectStatus>,
}

impl Statuses {
    /// Every object that is pending or in error (an object missing here is done, or not
    /// the reconciler's).
    pub fn snapshot(&self) -> BTreeMap<ObjectKey, ObjectStatus> {
        self.objects.clone()
    }

    /// The status of `key` if it is pending or in error; None when it is done (or not the
    /// reconciler's).
    pub fn get(&self, key: &ObjectKey) -> Option<&ObjectStatus> {
        self.objects.get(key)
    }

    /// When the earliest retry is due (None when nothing is in error).
    pub fn next_retry(&self) -> Option<Instant> {
        self.objects
            .values()
            .filter_map(|s| match s {
                ObjectStatus::Error { retry_at, .. } => Some(*retry_at),
                _ => None,
            })
            .min()
    }

    /// A change of `key` is handed over. An object in error stays so (with its attempts)
    /// until the change is applied.
    pub fn pending(&mut self, key: ObjectKey) {
        self.objects.entry(key).or_insert(ObjectStatus::Pending);
    }

    /// The kernel refused a change of `key`.
    pub fn failed(&mut self, key: ObjectKey, reason: String, now: Instant) {
        let attempts = match self.objects.get(&key) {
            Some(ObjectStatus::Error { attempts, .. }) => attempts + 1,
            _ => 1,
        };
        let retry_at = now + backoff(attempts);
        self.objects.insert(
            key,
            ObjectStatus::Error {
                reason,
                attempts,
                retry_at,
            },
        );
    }

    /// The kernel holds `key` as desired.
    pub fn done(&mut self, key: &ObjectKey) {
        self.objects.remove(key);
    }

    /// `key` is gone and no longer desired.
    pub fn forget(&mut self, key: &ObjectKey) {
        self.objects.remove(key);
    }

    /// After a full reconcile (which applies every pending change): an object whose change
    /// failed is in error (one attempt more than before); every other one is done, or, no
    /// longer desired and deleted, forgotten: either way it has no entry.
    pub fn after_full(&mut self, report: &ApplyReport, now: Instant) {
        let failed = failures(report);
        let (mut old, policy) = std::mem::take(&mut self.objects)
            .into_iter()
            .partition(|(key, _)| key.in_full_reconcile());
        self.objects = policy;
        for (key, reason) in failed {
            if let Some(status) = old.remove(&key) {
                self.objects.insert(key.clone(), status);
            }
            self.failed(key, reason, now);
        }
    }

    /// After a batch of partial plans was applied: their objects are done (or, deleted,
    /// forgotten) unless their change failed.
    pub fn after_partial(&mut self, plans: &[Plan], report: &ApplyReport, now: Instant) {
        let failed = failures(report);
        for plan in plans {
            for r in plan.add_routes.iter().chain(&plan.replace_routes) {
                let key = ObjectKey::Route(r.dst);
                if !failed.contains_key(&key) {
                    self.done(&key);
                }
            }
            for r in &plan.delete_routes {
                let key = ObjectKey::Route(r.dst);
                if !failed.contains_key(&key) {
                    self.forget(&key);
                }
            }
        }
        for (key, reason) in failed {
            self.failed(key, reason, now);
        }
    }

    /// Whether an object a full reconcile decides is in error (so its desired state is
    /// kept for the retry).
    pub fn full_reconcile_errors(&self) -> bool {
        self.errors().any(|(key, _)| key.in_full_reconcile())
    }

    /// The objects in error.
    pub fn errors(&self) -> impl Iterator<Item = (&ObjectKey, &ObjectStatus)> {
        self.objects
            .iter()
            .filter(|(_, s)| matches!(s, ObjectStatus::Error { .. }))
    }

    /// A retry could not be made at all: each object in error counts one more failed attempt
    /// (for the same reason), so the next retry waits longer.
    pub fn failed_again(&mut self, now: Instant) {
        let failed: Vec<(ObjectKey, String)> = self
            .objects
            .iter()
            .filter_map(|(k, s)| match s {
                ObjectStatus::Error { reason, .. } => Some((k.clone(), reason.clone())),
                _ => None,
            })
            .collect();
        for (key, reason) in failed {
            self.failed(key, reason, now);
        }
    }
}

/// The failures of a report by object (the first reason per object wins).
fn failures(report: &ApplyReport) -> BTreeMap<ObjectKey, String> {
    let mut failed = BTreeMap::new();
    for f in &report.failures {
        if let Some(key) = &f.object {
            failed.entry(key.clone()).or_insert_with(|| f.to_string());
        }
    }
    failed
}

/// The statuses, shared by the reconciler's task and its handles; a panic while they were
/// held leaves them usable (each update is a whole entry).
pub(super) fn lock(statuses: &Mutex<Statuses>) -> MutexGuard<'_, Statuses> {
    statuses.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::model::ApplyFailure;
    use super::*;
    use twill_types::desired::RouteSpec;

    #[test]
    fn backoff_doubles_from_200_ms_to_30_s() {
        let ms = |a| backoff(a).as_millis();
        assert_eq!(ms(1), 200);
        assert_eq!(ms(2), 400);
        assert_eq!(ms(3), 800);
        assert_eq!(ms(8), 25_600);
        assert_eq!(ms(9), 30_000);
        assert_eq!(ms(1000), 30_000);
        assert_eq!(ms(u32::MAX), 30_000);
    }

    fn route(dst: &str) -> RouteSpec {
        RouteSpec {
            dst: dst.parse().unwrap(),
            via: "10.9.0.2".parse().unwrap(),
            dev: "eth0".into(),
            onlink: false,
        }
    }

    fn refused(dst: &str) -> ApplyReport {
        ApplyReport {
            failures: vec![ApplyFailure {
                item: format!("add route {dst}"),
                object: Some(ObjectKey::Route(dst.parse().unwrap())),
                error: twill_netlink::Error::Kernel {
                    op: "add route".into(),
                    errno: 17,
                },
            }],
            ..ApplyReport::default()
        }
    }

    #[test]
    fn failures_back_off_success_resets_and_gone_objects_are_forgotten() {
        let a = ObjectKey::Route("10.1.0.0/16".parse().unwrap());
        let b = ObjectKey::Route("10.2.0.0/16".parse().unwrap());
        let t0 = Instant::now();
        let mut s = Statuses::default();
        assert_eq!(s.next_retry(), None);

        s.after_full(&refused("10.2.0.0/16"), t0);
        assert_eq!(s.get(&a), None, "done: no entry");
        match s.get(&b) {
            Some(ObjectStatus::Error {
                reason, attempts, ..
            }) => {
                assert_eq!(*attempts, 1);
                assert!(reason.starts_with("add route 10.2.0.0/16: "), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.next_retry(), Some(t0 + FIRST_RETRY));

        // Handed over again while in error: still in error (the attempt is not done yet).
        s.pending(b.clone());
        assert!(matches!(s.get(&b), Some(ObjectStatus::Error { .. })));
        s.pending(a.clone());
        assert_eq!(s.get(&a), Some(&ObjectStatus::Pending));

        // The retry fails again: twice the wait.
        let t1 = t0 + FIRST_RETRY;
        s.after_full(&refused("10.2.0.0/16"), t1);
        assert_eq!(s.next_retry(), Some(t1 + 2 * FIRST_RETRY));
        let attempts = |s: &Statuses| -> Vec<u32> {
            s.errors()
                .map(|(_, e)| match e {
                    ObjectStatus::Error { attempts, .. } => *attempts,
                    _ => unreachable!(),
                })
                .collect()
        };
        assert_eq!(attempts(&s), vec![2]);
        // A retry that could not run at all counts as a failed attempt too.
        s.failed_again(t1);
        assert_eq!(attempts(&s), vec![3]);
        assert_eq!(s.next_retry(), Some(t1 + 4 * FIRST_RETRY));

        // Success resets it (an object no longer desired and deleted is forgotten alike).
        s.after_full(&ApplyReport::default(), t1);
        assert_eq!(s.get(&a), None);
        assert_eq!(s.get(&b), None);
        assert_eq!(s.next_retry(), None);

        // A failed deletion of an object no longer desired stays in error.
        s.after_full(&refused("10.1.0.0/16"), t1);
        assert!(matches!(
            s.get(&a),
            Some(ObjectStatus::Error { attempts: 1, .. })
        ));
    }

    #[test]
    fn partial_plans_mark_done_forget_deleted_and_keep_failures() {
        let t0 = Instant::now();
        let mut s = Statuses::default();
        let added = Plan {
            add_routes: vec![route("10.1.0.0/16"), route("10.2.0.0/16")],
            ..Plan::default()
        };
        for r in &added.add_routes {
            s.pending(ObjectKey::Route(r.dst));
        }
        s.after_partial(std::slice::from_ref(&added), &refused("10.2.0.0/16"), t0);
        let a = ObjectKey::Route("10.1.0.0/16".parse().unwrap());
        let b = ObjectKey::Route("10.2.0.0/16".parse().unwrap());
        assert_eq!(s.get(&a), None, "done: no entry");
        assert!(matches!(s.get(&b), Some(ObjectStatus::Error { .. })));

        let deleted = Plan {
            delete_routes: vec![super::super::model::ObservedRoute::from_spec(&route(
                "10.1.0.0/16",
            ))],
            ..Plan::default()
        };
        s.after_partial(&[deleted], &ApplyReport::default(), t0);
        assert_eq!(s.get(&a), None);
        assert!(matches!(s.get(&b), Some(ObjectStatus::Error { .. })));
    }
}
