//! The mirror: a task that keeps an in-memory copy of a prefix and reports every change to
//! it exactly once, across store restarts, broken connections and compaction.
//!
//! It lists the prefix, reports the listing ([`MirrorEvent::InSync`]), then watches from the
//! listing's revision + 1. When the watch is compacted away or breaks, it reports
//! [`MirrorEvent::Lost`] once, lists again (retrying with backoff while the store is down),
//! reports the difference between the new listing and its copy as Put/Delete events, reports
//! InSync again and watches on. Because it compares mod_revisions with its copy, an event it
//! already reported (from the old watch, or from a listing) is never reported twice.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::{Event, KeyValue, Store, WatchItem};

/// What the mirror reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorEvent {
    /// The full current state of the prefix, sorted by key: sent first, and again after every
    /// resync (preceded by Put/Delete events for what changed while the mirror was blind).
    InSync(Vec<KeyValue>),
    /// A key was created or changed.
    Put(KeyValue),
    /// A key was deleted.
    Delete(String),
    /// The mirror lost the store (unreachable, or its history was compacted) and is retrying;
    /// sent once per outage. Until the next InSync the copy may be stale.
    Lost(String),
}

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CHANNEL: usize = 256;

/// Starts mirroring `prefix` of `store`. The task ends when the receiver is dropped. Must be
/// called inside a tokio runtime.
pub fn mirror(store: Store, prefix: String) -> mpsc::Receiver<MirrorEvent> {
    spawn(store, prefix, Hook::default())
}

pub(crate) fn spawn(store: Store, prefix: String, hook: Hook) -> mpsc::Receiver<MirrorEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let m = Mirror {
        store,
        prefix,
        tx,
        held: BTreeMap::new(),
        synced_once: false,
        lost: false,
        hook,
    };
    tokio::spawn(m.run());
    rx
}

/// A test's way to pause the mirror between its first listing and its first watch (so the
/// test can change and compact the store meanwhile). Nothing outside tests.
#[derive(Default)]
pub(crate) struct Hook {
    #[cfg(test)]
    pub pause_after_first_list: Option<(
        tokio::sync::oneshot::Sender<i64>,
        tokio::sync::oneshot::Receiver<()>,
    )>,
}

impl Hook {
    async fn after_list(&mut self, _revision: i64) {
        #[cfg(test)]
        if let Some((listed, resume)) = self.pause_after_first_list.take() {
            let _ = listed.send(_revision);
            let _ = resume.await;
        }
    }
}

struct Mirror {
    store: Store,
    prefix: String,
    tx: mpsc::Sender<MirrorEvent>,
    held: BTreeMap<String, KeyValue>,
    synced_once: bool,
    /// Lost was reported and no InSync followed yet.
    lost: bool,
    hook: Hook,
}

/// The receiver is gone: stop.
struct Closed;

impl Mirror {
    async fn run(mut self) {
        let _ = self.run_until_closed().await;
    }

    async fn run_until_closed(&mut self) -> Result<(), Closed> {
        let mut backoff = BACKOFF_START;
        loop {
            let (kvs, revision) = match self.store.list(&self.prefix).await {
                Ok(listing) => listing,
                Err(e) => {
                    self.lose(format!("listing {}: {e}", self.prefix)).await?;
                    self.sleep(&mut backoff).await?;
                    continue;
                }
            };
            backoff = BACKOFF_START;
            self.resync(kvs).await?;
            self.hook.after_list(revision).await;

            let mut stream = match self.store.watch(&self.prefix, revision + 1).await {
                Ok(s) => s,
                Err(e) => {
                    self.lose(format!("watching {}: {e}", self.prefix)).await?;
                    self.sleep(&mut backoff).await?;
                    continue;
                }
            };
            loop {
                let item = tokio::select! {
                    _ = self.tx.closed() => return Err(Closed),
                    item = stream.recv() => item,
                };
                match item {
                    Some(WatchItem::Events { events, .. }) => {
                        for ev in events {
                            self.apply(ev).await?;
                        }
                    }
                    // History is gone: relist at once, nothing is wrong with the store.
                    Some(WatchItem::Compacted { compact_revision }) => {
                        self.lose(format!(
                            "watch of {} fell behind compaction (at revision {compact_revision})",
                            self.prefix
                        ))
                        .await?;
                        break;
                    }
                    Some(WatchItem::Broken(e)) => {
                        self.lose(format!("watch of {} broke: {e}", self.prefix))
                            .await?;
                        self.sleep(&mut backoff).await?;
                        break;
                    }
                    None => {
                        self.lose(format!("watch of {} ended", self.prefix)).await?;
                        self.sleep(&mut backoff).await?;
                        break;
                    }
                }
            }
        }
    }

    async fn send(&self, ev: MirrorEvent) -> Result<(), Closed> {
        self.tx.send(ev).await.map_err(|_| Closed)
    }

    async fn lose(&mut self, why: String) -> Result<(), Closed> {
        if self.lost {
            tracing::debug!("store mirror still lost: {why}");
            return Ok(());
        }
        self.lost = true;
        self.send(MirrorEvent::Lost(format!(
            "{} ({}); retrying",
            why,
            self.store.describe()
        )))
        .await
    }

    async fn sleep(&self, backoff: &mut Duration) -> Result<(), Closed> {
        tokio::select! {
            _ = self.tx.closed() => return Err(Closed),
            _ = tokio::time::sleep(*backoff) => {}
        }
        *backoff = (*backoff * 2).min(BACKOFF_MAX);
        Ok(())
    }

    /// Adopts a fresh listing: reports what differs from the copy (unless this is the first
    /// listing), then the listing itself.
    async fn resync(&mut self, kvs: Vec<KeyValue>) -> Result<(), Closed> {
        let fresh: BTreeMap<String, KeyValue> =
            kvs.iter().map(|kv| (kv.key.clone(), kv.clone())).collect();
        if self.synced_once {
            for kv in &kvs {
                // A different mod_revision, even a lower one (etcd recreated from scratch),
                // means a different value.
                let same = self
                    .held
                    .get(&kv.key)
                    .is_some_and(|h| h.mod_revision == kv.mod_revision);
                if !same {
                    self.send(MirrorEvent::Put(kv.clone())).await?;
                }
            }
            let vanished: Vec<String> = self
                .held
                .keys()
                .filter(|k| !fresh.contains_key(*k))
                .cloned()
                .collect();
            for key in vanished {
                self.send(MirrorEvent::Delete(key)).await?;
            }
        }
        self.held = fresh;
        self.synced_once = true;
        self.lost = false;
        self.send(MirrorEvent::InSync(kvs)).await
    }

    /// Applies one watched change, unless the copy already reflects it or something newer.
    async fn apply(&mut self, ev: Event) -> Result<(), Closed> {
        match ev {
            Event::Put(kv) => {
                if self
                    .held
                    .get(&kv.key)
                    .is_some_and(|h| h.mod_revision >= kv.mod_revision)
                {
                    return Ok(());
                }
                self.held.insert(kv.key.clone(), kv.clone());
                self.send(MirrorEvent::Put(kv)).await
            }
            Event::Delete { key, mod_revision } => {
                // Only a key held at an older revision: anything else is already gone.
                if self
                    .held
                    .get(&key)
                    .is_none_or(|h| h.mod_revision >= mod_revision)
                {
                    return Ok(());
                }
                self.held.remove(&key);
                self.send(MirrorEvent::Delete(key)).await
            }
        }
    }
}
