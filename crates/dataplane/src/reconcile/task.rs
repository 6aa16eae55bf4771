//! The one writer: a task that owns the agent's netlink handle and does, in the order they
//! were handed over, two kinds of work:
//!
//! - a full reconcile of a desired state ([`Reconciler::reconcile`]): observe, diff, apply,
//!   and answer with what the kernel holds afterwards and the report;
//! - a partial plan ([`Reconciler::submit`], the agent's BGP deltas): route changes applied
//!   through the bulk socket without reading the kernel, everything queued meanwhile taken as
//!   one batch, so a table that streams in is programmed at the kernel's pace while the agent
//!   works out the next changes. Each batch's outcome goes to the receiver [`Reconciler::start`]
//!   returns (the agent reconciles at once after a failure, shortly after a burst otherwise).
//!
//! - a policy script ([`PolicyWriter::apply`], [`PolicyWriter::apply_table`], the policy
//!   task's): `inet twill-policy` written in one `nft -f` transaction, the whole table again
//!   when a change of it is refused, nothing when the whole table handed over is the one the
//!   kernel holds (`policy_table.rs`);
//! - node leave ([`Reconciler::remove_all`]): everything twill owns removed.
//!
//! Because all go through one queue, a reconcile always reads a kernel that already holds
//! every partial plan handed over before it, and no two writers race on the kernel.
//!
//! A full reconcile of the desired state last reconciled with nothing left undone, when no
//! kernel notification since concerned twill's objects, reads nothing and changes nothing
//! ([`Watch`]): the periodic resync of a quiet node costs a hash of its desired state.
//!
//! The task keeps the [`Statuses`] of the objects it manages and, while an object of the last
//! reconcile is in error, that reconcile's desired state (with the partial plans since applied
//! to it). An object the kernel refused is retried by the task itself, with
//! [`backoff`](super::status::backoff) of its attempts, by a reconcile of that desired state;
//! the agent's periodic resync is not needed for it. When everything is done the copy is
//! dropped: a table of thousands of peers is then held once, by the agent, and a resync that
//! changes nothing does not rebuild it here. (A partial plan that fails makes the agent
//! reconcile at once, which keeps the copy if the failure persists.)

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ipnet::IpNet;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use twill_netlink::Result;
use twill_types::desired::{DesiredState, RouteSpec};

use super::host::{HostWriters, diff_host, observe_host};
use super::model::ObjectKey;
use super::model::{ApplyReport, Observed, ObservedFdb, ObservedRoute, Plan};
use super::policy_table::{PolicyTable, PolicyWrite, WholePolicy};
use super::status::{ObjectStatus, Statuses, lock};
use super::watch::{Watch, fingerprint};
use super::{Rtnl, apply_routes, apply_with, diff, observe_with, remove_all_with};

/// What a full reconcile found and did.
#[derive(Debug)]
pub struct Reconciled {
    /// What the kernel holds afterwards; None when it was not read because it cannot have
    /// changed: the desired state is the one of the last reconcile, which left nothing
    /// undone, and no notification since concerned twill's objects.
    pub observed: Option<Observed>,
    /// The plan that was applied (empty when the kernel already matched).
    pub plan: Plan,
    /// The outcome of applying it (None when there was nothing to apply).
    pub report: Option<ApplyReport>,
}

enum Job {
    Full {
        desired: Box<DesiredState>,
        done: oneshot::Sender<Result<Reconciled>>,
    },
    Partial(Box<Plan>),
    Policy {
        script: String,
        whole: Option<WholePolicy>,
        done: oneshot::Sender<std::result::Result<(), crate::Error>>,
    },
    PolicyTable {
        definition: String,
        done: oneshot::Sender<std::result::Result<PolicyWrite, crate::Error>>,
    },
    RemoveAll {
        done: oneshot::Sender<Result<ApplyReport>>,
    },
}

/// Handle to the reconciler task (which ends when every handle, [`PolicyWriter`]s included,
/// is dropped).
pub struct Reconciler {
    tx: mpsc::UnboundedSender<Job>,
    statuses: Arc<Mutex<Statuses>>,
    reads: Arc<AtomicU64>,
}

/// The policy task's way to write `inet twill-policy`: through the reconciler's queue, in
/// order with everything else it writes.
#[derive(Clone)]
pub struct PolicyWriter {
    tx: mpsc::UnboundedSender<Job>,
}

impl PolicyWriter {
    /// Applies a policy script (one `nft -f` transaction); when it is refused and `whole` is
    /// given, the whole table rendered by `whole` instead (the table may have been changed
    /// behind the writer's back). The table's status is `table inet twill-policy`; a refused
    /// whole table is retried by the reconciler with backoff until a later script succeeds.
    pub async fn apply(
        &self,
        script: String,
        whole: Option<WholePolicy>,
    ) -> std::result::Result<(), crate::Error> {
        self.send(|done| Job::Policy {
            script,
            whole,
            done,
        })
        .await
    }

    /// Makes the table hold `definition` (`table inet twill-policy { ... }`, as
    /// `twill_policy::render::table` writes it), in one `nft -f` transaction that gives the
    /// table the definition's fingerprint as its comment; nothing runs when the kernel's table
    /// is already the one this writer last wrote for that definition (see `policy_table.rs`).
    /// Status and retry as [`PolicyWriter::apply`].
    pub async fn apply_table(
        &self,
        definition: String,
    ) -> std::result::Result<PolicyWrite, crate::Error> {
        self.send(|done| Job::PolicyTable { definition, done })
            .await
    }

    async fn send<T>(
        &self,
        job: impl FnOnce(oneshot::Sender<std::result::Result<T, crate::Error>>) -> Job,
    ) -> std::result::Result<T, crate::Error> {
        let (done, wait) = oneshot::channel();
        let stopped = || crate::Error::Io {
            op: "applying network policy".to_string(),
            source: std::io::Error::other("the reconciler task stopped"),
        };
        if self.tx.send(job(done)).is_err() {
            return Err(stopped());
        }
        wait.await.unwrap_or_else(|_| Err(stopped()))
    }
}

impl Reconciler {
    /// Starts the task on `nl` (on a thread in `nl`'s network namespace: the kernel's
    /// notifications are watched from there); the receiver gets, for each batch of partial
    /// plans programmed, its errors (empty when every change was accepted).
    pub fn start(nl: Rtnl) -> (Reconciler, mpsc::UnboundedReceiver<Vec<String>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
        let statuses = Arc::new(Mutex::new(Statuses::default()));
        let reads = Arc::new(AtomicU64::new(0));
        let task = Task {
            writers: HostWriters::default(),
            watch: Watch::new(&nl),
            nl,
            statuses: statuses.clone(),
            reads: reads.clone(),
        };
        tokio::spawn(run(task, rx, outcomes_tx));
        (
            Reconciler {
                tx,
                statuses,
                reads,
            },
            outcomes,
        )
    }

    /// How many full reconciles have read the kernel (those skipped because nothing can have
    /// changed do not count).
    pub fn kernel_reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The status of every object the reconciler manages.
    pub fn snapshot(&self) -> BTreeMap<ObjectKey, ObjectStatus> {
        lock(&self.statuses).snapshot()
    }

    /// The objects in error (cheaper than a whole [`Reconciler::snapshot`]).
    pub fn errors(&self) -> BTreeMap<ObjectKey, ObjectStatus> {
        lock(&self.statuses)
            .errors()
            .map(|(key, status)| (key.clone(), status.clone()))
            .collect()
    }

    /// Queues a partial plan (route changes only; applied after everything queued before it).
    pub fn submit(&self, plan: Plan) {
        if !plan.is_empty() {
            let mut statuses = lock(&self.statuses);
            for key in route_keys(&plan) {
                statuses.pending(key);
            }
            drop(statuses);
            let _ = self.tx.send(Job::Partial(Box::new(plan)));
        }
    }

    /// A writer of the policy table through this reconciler's queue.
    pub fn policy_writer(&self) -> PolicyWriter {
        PolicyWriter {
            tx: self.tx.clone(),
        }
    }

    /// Removes everything twill owns (node leave; see
    /// [`remove_all`](super::remove_all)), after everything queued before, and forgets every
    /// status and retry.
    pub async fn remove_all(&self) -> Result<ApplyReport> {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::RemoveAll { done }).is_err() {
            return Err(stopped());
        }
        wait.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Makes the kernel match `desired` (after everything queued before), and returns what it
    /// holds afterwards.
    pub async fn reconcile(&self, desired: DesiredState) -> Result<Reconciled> {
        let (done, wait) = oneshot::channel();
        let job = Job::Full {
            desired: Box::new(desired),
            done,
        };
        if self.tx.send(job).is_err() {
            return Err(stopped());
        }
        wait.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> twill_netlink::Error {
    twill_netlink::Error::Io {
        op: "reconcile".to_string(),
        source: std::io::Error::other("the reconciler task stopped"),
    }
}

/// The routes a partial plan changes.
fn route_keys(plan: &Plan) -> impl Iterator<Item = ObjectKey> + '_ {
    let updates = plan.add_routes.iter().chain(&plan.replace_routes);
    updates
        .map(|r| ObjectKey::Route(r.dst))
        .chain(plan.delete_routes.iter().map(|r| ObjectKey::Route(r.dst)))
}

/// What the task works with.
struct Task {
    nl: Rtnl,
    statuses: Arc<Mutex<Statuses>>,
    /// The nft writers and their records of what they wrote.
    writers: HostWriters,
    watch: Watch,
    reads: Arc<AtomicU64>,
}

impl Task {
    /// A full reconcile, unless the kernel still holds `desired` exactly.
    async fn full(&mut self, desired: &DesiredState) -> Result<Reconciled> {
        let fp = fingerprint(desired);
        if self.watch.unchanged(fp) {
            // The node's own objects are few and cheap to check (the nft objects' fingerprints,
            // a sysctl, an address), and nft tables and sysctls send no notifications the
            // watch would see: they are always checked. The tables of peers are not read.
            let host = observe_host(&self.nl, desired, &self.writers).await?;
            let mut plan = Plan::default();
            diff_host(desired, &host, &mut plan);
            if plan.is_empty() {
                debug!("resync: nothing changed, the peers' objects are not read");
                return Ok(Reconciled {
                    observed: None,
                    plan,
                    report: None,
                });
            }
        }
        self.watch.reading();
        self.reads.fetch_add(1, Ordering::Relaxed);
        let result = full(&self.nl, desired, &mut self.writers).await;
        match &result {
            Ok(r) => {
                record_full(&self.statuses, r.report.as_ref());
                let done = r.report.as_ref().is_none_or(ApplyReport::is_ok)
                    && lock(&self.statuses).errors().next().is_none();
                let observed = r.observed.as_ref().expect("a full reconcile reads");
                self.watch.reconciled(desired, fp, observed, &r.plan, done);
            }
            Err(_) => self.watch.forget(),
        }
        result
    }
}

async fn run(
    mut task: Task,
    mut rx: mpsc::UnboundedReceiver<Job>,
    outcomes: mpsc::UnboundedSender<Vec<String>>,
) {
    let statuses = task.statuses.clone();
    // The one desired state: the last reconcile's, with the partial plans since.
    let mut desired: Option<OneDesired> = None;
    let mut policy = PolicyTable::default();
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => {
                let retry = lock(&statuses).next_retry();
                tokio::select! {
                    job = rx.recv() => match job {
                        Some(job) => job,
                        None => return,
                    },
                    _ = sleep_until(retry) => {
                        policy.retry_due(&statuses);
                        if lock(&statuses).full_reconcile_errors() {
                            task.watch.forget();
                            retry_failed(&task.nl, desired.as_ref(), &statuses, &mut task.writers)
                                .await;
                        }
                        continue;
                    }
                }
            }
        };
        match job {
            Job::Full {
                desired: want,
                done,
            } => {
                let result = task.full(&want).await;
                // Kept only for retries: while something is in error, or when the reconcile
                // could not run at all.
                let retry_needed = result.is_err() || lock(&statuses).full_reconcile_errors();
                desired = retry_needed.then(|| OneDesired::new(*want));
                let _ = done.send(result);
            }
            Job::Partial(plan) => {
                // Every partial plan queued meanwhile is one batch, applied in order; a full
                // reconcile queued after them waits for the batch.
                let mut plans = vec![*plan];
                while let Ok(job) = rx.try_recv() {
                    match job {
                        Job::Partial(plan) => plans.push(*plan),
                        full => {
                            next = Some(full);
                            break;
                        }
                    }
                }
                task.watch.forget();
                let failed = partial(&task.nl, &plans, &statuses).await;
                if let Some(desired) = &mut desired {
                    desired.absorb(&plans);
                }
                let _ = outcomes.send(failed);
            }
            Job::Policy {
                script,
                whole,
                done,
            } => {
                let _ = done.send(policy.change(script, whole, &statuses));
            }
            Job::PolicyTable { definition, done } => {
                let _ = done.send(policy.table(&definition, &statuses));
            }
            Job::RemoveAll { done } => {
                let result = remove_all_with(&task.nl, &mut task.writers).await;
                task.watch.forget();
                desired = None;
                policy.forget();
                *lock(&statuses) = Statuses::default();
                let _ = done.send(result);
            }
        }
    }
}

/// Sleeps until `at`; never, without a deadline.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A retry is due: reconciles the desired state again, which tries every refused change once
/// more (and repairs whatever else drifted).
async fn retry_failed(
    nl: &Rtnl,
    desired: Option<&OneDesired>,
    statuses: &Mutex<Statuses>,
    writers: &mut HostWriters,
) {
    let failed: Vec<String> = lock(statuses)
        .errors()
        .filter(|(k, _)| k.in_full_reconcile())
        .map(|(k, _)| k.to_string())
        .collect();
    info!(objects = failed.len(), first = ?failed.first(), "retrying refused changes");
    let desired = desired.map(OneDesired::state);
    let outcome = match &desired {
        Some(desired) => full(nl, desired, writers).await.map(|r| (desired, r)),
        None => Err(twill_netlink::Error::Io {
            op: "retry".to_string(),
            source: std::io::Error::other("no desired state yet"),
        }),
    };
    match outcome {
        Ok((_, r)) => record_full(statuses, r.report.as_ref()),
        Err(e) => {
            warn!("retrying refused changes: {e}");
            // Counts as another failed attempt of each, so the next one waits longer.
            lock(statuses).failed_again(Instant::now());
        }
    }
}

fn record_full(statuses: &Mutex<Statuses>, report: Option<&ApplyReport>) {
    let none = ApplyReport::default();
    lock(statuses).after_full(report.unwrap_or(&none), Instant::now());
}

/// The one desired state: the last reconcile's, with the partial plans handed over since.
/// Routes are kept by destination, so absorbing a partial plan costs what it changes, not
/// the size of the table (BGP tables stream in as many small plans).
#[derive(Debug, Clone, Default)]
pub struct OneDesired {
    /// Everything but the routes.
    rest: DesiredState,
    routes: HashMap<IpNet, RouteSpec>,
}

impl OneDesired {
    pub fn new(mut desired: DesiredState) -> OneDesired {
        let mut routes = HashMap::with_capacity(desired.routes.len());
        for r in std::mem::take(&mut desired.routes) {
            // Of contradicting routes to one destination, the first is the one applied.
            routes.entry(r.dst).or_insert(r);
        }
        OneDesired {
            rest: desired,
            routes,
        }
    }

    /// Applies partial plans computed against this state, in order: the routes they add,
    /// replace or delete replace what it had for those destinations.
    pub fn absorb(&mut self, plans: &[Plan]) {
        for plan in plans {
            for r in &plan.delete_routes {
                self.routes.remove(&r.dst);
            }
            for r in plan.add_routes.iter().chain(&plan.replace_routes) {
                self.routes.insert(r.dst, r.clone());
            }
        }
    }

    /// The desired state as a reconcile takes it.
    pub fn state(&self) -> DesiredState {
        let mut routes: Vec<RouteSpec> = self.routes.values().cloned().collect();
        routes.sort_by_key(|r| r.dst);
        DesiredState {
            routes,
            ..self.rest.clone()
        }
    }
}

/// Applies a batch of partial plans; returns the failures.
async fn partial(nl: &Rtnl, plans: &[Plan], statuses: &Mutex<Statuses>) -> Vec<String> {
    let t = Instant::now();
    let routes: usize = plans.iter().map(|p| p.changes()).sum();
    let failed: Vec<String> = match apply_routes(nl, plans).await {
        Ok(report) => {
            lock(statuses).after_partial(plans, &report, Instant::now());
            report.failures.iter().map(|f| f.to_string()).collect()
        }
        Err(e) => {
            let why = format!("applying {routes} route changes: {e}");
            let mut statuses = lock(statuses);
            for key in plans.iter().flat_map(route_keys) {
                statuses.failed(key, why.clone(), Instant::now());
            }
            vec![why]
        }
    };
    debug!(
        routes,
        failed = failed.len(),
        took_ms = t.elapsed().as_millis() as u64,
        "bgp routes programmed"
    );
    failed
}

/// Observes, diffs and applies.
async fn full(nl: &Rtnl, desired: &DesiredState, writers: &mut HostWriters) -> Result<Reconciled> {
    let observed = observe_with(nl, desired, writers).await?;
    let plan = diff(desired, &observed);
    for why in &plan.ignored {
        warn!("not applied: {why}");
    }
    if plan.is_empty() {
        return Ok(Reconciled {
            observed: Some(observed),
            plan,
            report: None,
        });
    }
    let t = Instant::now();
    let report = apply_with(nl, &plan, writers).await?;
    info!(plan = %plan, took_ms = t.elapsed().as_millis() as u64, "applied");
    for failure in &report.failures {
        warn!("{failure}");
    }
    let observed = if report.is_ok() && plan.ignored.is_empty() {
        // The kernel acknowledged every change, so it now holds exactly the desired state;
        // reading it back would double the cost of a large update. The periodic resync
        // observes for real.
        let mut observed = as_programmed(desired, observed);
        if plan.host_changes() > 0 {
            // A few requests: what the writers now hold, from their new records.
            observed.host = observe_host(nl, desired, writers).await?;
        }
        observed
    } else {
        observe_with(nl, desired, writers).await?
    };
    Ok(Reconciled {
        observed: Some(observed),
        plan,
        report: Some(report),
    })
}

/// The kernel state after every change of a plan to reach `desired` was acknowledged.
fn as_programmed(desired: &DesiredState, before: Observed) -> Observed {
    Observed {
        vxlan: before.vxlan,
        routes: desired
            .routes
            .iter()
            .map(ObservedRoute::from_spec)
            .collect(),
        neighbours: desired.neighbours.clone(),
        fdb: desired.fdb.iter().map(ObservedFdb::from_spec).collect(),
        // The plan deleted the idle ones.
        idle_nexthops: Vec::new(),
        host: before.host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dst: &str, gw: u8) -> RouteSpec {
        RouteSpec {
            dst: dst.parse().unwrap(),
            via: std::net::Ipv4Addr::new(10, 9, 0, gw).into(),
            dev: "eth0".into(),
            onlink: false,
        }
    }

    #[test]
    fn partial_plans_are_absorbed_into_the_one_desired_state_in_order() {
        let mut desired = OneDesired::new(DesiredState {
            routes: vec![
                route("10.2.0.0/16", 2),
                route("10.1.0.0/16", 2),
                // A contradiction: the first route to a destination is the one applied.
                route("10.2.0.0/16", 9),
            ],
            ..DesiredState::default()
        });
        assert_eq!(
            desired.state().routes,
            vec![route("10.1.0.0/16", 2), route("10.2.0.0/16", 2)]
        );
        let plans = [
            Plan {
                add_routes: vec![route("10.3.0.0/16", 2)],
                replace_routes: vec![route("10.1.0.0/16", 3)],
                delete_routes: vec![ObservedRoute::from_spec(&route("10.2.0.0/16", 2))],
                ..Plan::default()
            },
            Plan {
                delete_routes: vec![ObservedRoute::from_spec(&route("10.3.0.0/16", 2))],
                ..Plan::default()
            },
        ];
        desired.absorb(&plans);
        assert_eq!(desired.state().routes, vec![route("10.1.0.0/16", 3)]);
    }
}
