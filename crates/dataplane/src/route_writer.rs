//! The route writer: a task that applies the route-only plans the agent hands over (its BGP
//! deltas), in order, taking whatever queued up while the kernel was busy with the last one.
//! The agent works out the next changes while the kernel takes the previous ones, so a table
//! that streams in is programmed at the kernel's pace. [`RouteWriter::flush`] waits until
//! everything handed over is done (a reconcile calls it before it reads the kernel), and
//! each batch's outcome comes back to the agent, which reconciles at once after a failure
//! and shortly after the last batch of a burst otherwise (to check and report the result).

use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use crate::peers::{self, AgentHandle, Plan};

enum Job {
    Changes(Box<Plan>),
    Flush(oneshot::Sender<()>),
}

/// Handle to the writer task (which ends when the handle is dropped).
pub struct RouteWriter {
    tx: mpsc::UnboundedSender<Job>,
}

impl RouteWriter {
    /// Starts the task; the receiver gets, for each batch programmed, its errors (empty when
    /// every change was accepted).
    pub fn start(nl: AgentHandle) -> (RouteWriter, mpsc::UnboundedReceiver<Vec<String>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (failures_tx, failures) = mpsc::unbounded_channel();
        tokio::spawn(run(nl, rx, failures_tx));
        (RouteWriter { tx }, failures)
    }

    /// Queues a plan (applied after everything queued before it).
    pub fn submit(&self, plan: Plan) {
        if !plan.is_empty() {
            let _ = self.tx.send(Job::Changes(Box::new(plan)));
        }
    }

    /// Waits until every change queued so far is programmed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Job::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(
    nl: AgentHandle,
    mut rx: mpsc::UnboundedReceiver<Job>,
    failures: mpsc::UnboundedSender<Vec<String>>,
) {
    while let Some(job) = rx.recv().await {
        let mut plans = Vec::new();
        let mut flushed = Vec::new();
        let mut next = Some(job);
        // Everything queued meanwhile is one batch, applied in order; a flush is answered once
        // the batch (which holds all that was queued before it) is done.
        while let Some(job) = next.take().or_else(|| rx.try_recv().ok()) {
            match job {
                Job::Changes(plan) => plans.push(*plan),
                Job::Flush(done) => flushed.push(done),
            }
        }
        if !plans.is_empty() {
            let t = Instant::now();
            let routes: usize = plans.iter().map(|p| p.changes()).sum();
            let failed: Vec<String> = match peers::apply_routes(&nl, &plans).await {
                Ok(report) => report.failures.iter().map(|f| f.to_string()).collect(),
                Err(e) => vec![format!("applying {routes} route changes: {e}")],
            };
            tracing::debug!(
                routes,
                failed = failed.len(),
                took_ms = t.elapsed().as_millis() as u64,
                "bgp routes programmed"
            );
            let _ = failures.send(failed);
        }
        for done in flushed {
            let _ = done.send(());
        }
    }
}
