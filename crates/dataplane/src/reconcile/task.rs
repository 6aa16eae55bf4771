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
//! Because both go through one queue, a reconcile always reads a kernel that already holds
//! every partial plan handed over before it.

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};
use twill_netlink::Result;
use twill_types::desired::DesiredState;

use super::model::{ApplyReport, Observed, ObservedFdb, ObservedRoute, Plan};
use super::{AgentHandle, apply, apply_routes, diff, observe};

/// What a full reconcile found and did.
#[derive(Debug)]
pub struct Reconciled {
    /// What the kernel holds afterwards.
    pub observed: Observed,
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
}

/// Handle to the reconciler task (which ends when the handle is dropped).
pub struct Reconciler {
    tx: mpsc::UnboundedSender<Job>,
}

impl Reconciler {
    /// Starts the task on `nl`; the receiver gets, for each batch of partial plans programmed,
    /// its errors (empty when every change was accepted).
    pub fn start(nl: AgentHandle) -> (Reconciler, mpsc::UnboundedReceiver<Vec<String>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
        tokio::spawn(run(nl, rx, outcomes_tx));
        (Reconciler { tx }, outcomes)
    }

    /// Queues a partial plan (route changes only; applied after everything queued before it).
    pub fn submit(&self, plan: Plan) {
        if !plan.is_empty() {
            let _ = self.tx.send(Job::Partial(Box::new(plan)));
        }
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

async fn run(
    nl: AgentHandle,
    mut rx: mpsc::UnboundedReceiver<Job>,
    outcomes: mpsc::UnboundedSender<Vec<String>>,
) {
    let mut next = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match rx.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        match job {
            Job::Full { desired, done } => {
                let _ = done.send(full(&nl, &desired).await);
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
                let _ = outcomes.send(partial(&nl, &plans).await);
            }
        }
    }
}

/// Applies a batch of partial plans; returns the failures.
async fn partial(nl: &AgentHandle, plans: &[Plan]) -> Vec<String> {
    let t = Instant::now();
    let routes: usize = plans.iter().map(|p| p.changes()).sum();
    let failed: Vec<String> = match apply_routes(nl, plans).await {
        Ok(report) => report.failures.iter().map(|f| f.to_string()).collect(),
        Err(e) => vec![format!("applying {routes} route changes: {e}")],
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
async fn full(nl: &AgentHandle, desired: &DesiredState) -> Result<Reconciled> {
    let observed = observe(nl, desired).await?;
    let plan = diff(desired, &observed);
    for why in &plan.ignored {
        warn!("not applied: {why}");
    }
    if plan.is_empty() {
        return Ok(Reconciled {
            observed,
            plan,
            report: None,
        });
    }
    let t = Instant::now();
    let report = apply(nl, &plan).await?;
    info!(plan = %plan, took_ms = t.elapsed().as_millis() as u64, "applied");
    for failure in &report.failures {
        warn!("{failure}");
    }
    let observed = if report.is_ok() && plan.ignored.is_empty() {
        // The kernel acknowledged every change, so it now holds exactly the desired state;
        // reading it back would double the cost of a large update. The periodic resync
        // observes for real.
        as_programmed(desired, observed)
    } else {
        observe(nl, desired).await?
    };
    Ok(Reconciled {
        observed,
        plan,
        report: Some(report),
    })
}

/// The kernel state after every change of a plan to reach `desired` was acknowledged.
pub fn as_programmed(desired: &DesiredState, before: Observed) -> Observed {
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
    }
}
