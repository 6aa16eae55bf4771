//! Network policy on this node: one task that keeps `table inet twill-policy` equal to what
//! the cluster's policies say about this node's endpoints.
//!
//! Inputs, all turned into one in-memory [`World`]:
//! - the store (mirrored): policies, namespaces, every node's endpoints, label overrides
//!   (layout in [`twill_policy::keys`]);
//! - this node's endpoints, which the CNI plugin records in `<data-dir>/endpoints/` (they
//!   survive agent restarts) and announces on the agent socket; the agent publishes them to
//!   the store for the other nodes.
//!
//! After every change (a short burst of changes costs one pass) the task compiles the world
//! for this node (pure, [`twill_policy::compile`]) and applies the difference to the last
//! applied rule set as one nft transaction (only set elements when only memberships changed;
//! the whole table otherwise). A plugin waiting on the socket is answered only after the
//! apply that covers its endpoint, and only once the task is in sync with the store: a pod
//! starts with its policies in force.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};
use twill_policy::keys::{self, LabelOverrides};
use twill_policy::{
    ClusterPolicy, Dispatch, Endpoint, Namespace, NetworkPolicy, Options, PolicyDoc, Ruleset, World,
};
use twill_store::{KeyValue, MirrorEvent, Store};
use twill_types::node::{self, PolicyStatus};

use crate::policy::Item;

/// The socket's messages (shared with the plugin).
pub use twill_types::node::{AgentReply as Reply, AgentRequest as Request};

/// The policy state, shared with the agent's main loop, which writes it to `status.json`
/// as soon as `changed` fires.
#[derive(Default)]
pub struct Shared {
    pub status: Mutex<PolicyStatus>,
    pub changed: tokio::sync::Notify,
}

pub type SharedStatus = Arc<Shared>;

/// The store prefixes the world is made of.
const PREFIXES: [&str; 4] = [
    keys::POLICY_PREFIX,
    keys::NAMESPACE_PREFIX,
    keys::ENDPOINT_PREFIX,
    keys::ENDPOINT_LABELS_PREFIX,
];

/// Changes arriving within this long of each other are applied together.
const BURST: Duration = Duration::from_millis(5);

/// Starts the task: binds the socket first (so a plugin that finds it can rely on an answer),
/// then runs until the process ends.
pub fn spawn(
    store: Store,
    node: String,
    data_dir: PathBuf,
    resync: Duration,
    status: SharedStatus,
) -> anyhow::Result<()> {
    let endpoints = node::endpoints_dir(&data_dir);
    std::fs::create_dir_all(&endpoints)
        .with_context(|| format!("creating {}", endpoints.display()))?;
    let path = node::agent_socket(&data_dir);
    // A socket file left by a previous agent refuses connections; replace it.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    match twill_dataplane::policy::enable_bridge_hooks() {
        Ok(true) => {}
        Ok(false) => {
            warn!("no bridge netfilter: policy between pods on one bridge is not enforced")
        }
        Err(e) => warn!("enabling bridge netfilter: {e}"),
    }
    let (requests_tx, requests) = mpsc::channel(256);
    tokio::spawn(accept(listener, requests_tx));
    let sync = PolicySync {
        store,
        node,
        data_dir,
        state: WorldState::default(),
        applied: None,
        waiting: Vec::new(),
        status,
        resync,
    };
    tokio::spawn(async move {
        if let Err(e) = sync.run(requests).await {
            warn!("network policy stopped: {e:#}");
        }
    });
    Ok(())
}

/// A plugin's request and where to send the answer.
struct Pending {
    request: Request,
    reply: oneshot::Sender<Reply>,
}

async fn accept(listener: UnixListener, requests: mpsc::Sender<Pending>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(stream, requests).await {
                warn!("agent socket: {e:#}");
            }
        });
    }
}

async fn serve(stream: UnixStream, requests: mpsc::Sender<Pending>) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    BufReader::new(read).read_line(&mut line).await?;
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let (tx, rx) = oneshot::channel();
            requests
                .send(Pending { request, reply: tx })
                .await
                .map_err(|_| anyhow::anyhow!("policy task gone"))?;
            rx.await.unwrap_or(Reply {
                ok: false,
                error: Some("the policy task stopped".into()),
            })
        }
        Err(e) => Reply {
            ok: false,
            error: Some(format!("bad request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    Ok(())
}

/// The cluster as the store and the local spool describe it.
#[derive(Default)]
struct WorldState {
    network_policies: BTreeMap<String, NetworkPolicy>,
    cluster_policies: BTreeMap<String, ClusterPolicy>,
    namespaces: BTreeMap<String, Namespace>,
    /// Every node's endpoints as published, by store key.
    endpoints: BTreeMap<String, Endpoint>,
    overrides: BTreeMap<String, LabelOverrides>,
    /// This node's endpoints, by container id (from the plugin's files: authoritative here).
    local: BTreeMap<String, Endpoint>,
    /// Which prefixes have been listed completely.
    in_sync: [bool; 4],
}

impl WorldState {
    fn in_sync(&self) -> bool {
        self.in_sync.iter().all(|s| *s)
    }

    /// Applies one key's new value (None: deleted). Values that do not parse are ignored
    /// with a warning: another node may run a newer twill.
    fn set(&mut self, kv: &KeyValue) {
        self.delete(&kv.key);
        let mut warnings = Vec::new();
        let key = kv.key.clone();
        match crate::policy::decode_item(kv, &mut warnings) {
            Some(Item::Overrides(id, o)) => {
                self.overrides.insert(id, o);
            }
            Some(Item::Endpoint(e)) => {
                self.endpoints.insert(key, e);
            }
            Some(Item::Namespace(n)) => {
                self.namespaces.insert(key, n);
            }
            Some(Item::Policy(PolicyDoc::NetworkPolicy(p))) => {
                self.network_policies.insert(key, p);
            }
            Some(Item::Policy(PolicyDoc::ClusterPolicy(p))) => {
                self.cluster_policies.insert(key, p);
            }
            None => {}
        }
        for w in warnings {
            warn!("{w}");
        }
    }

    /// Forgets what `key` held.
    fn delete(&mut self, key: &str) {
        if let Some(id) = key.strip_prefix(keys::ENDPOINT_LABELS_PREFIX) {
            self.overrides.remove(id);
        }
        self.endpoints.remove(key);
        self.namespaces.remove(key);
        self.network_policies.remove(key);
        self.cluster_policies.remove(key);
    }

    /// Replaces everything under prefix `which` with `all`.
    fn replace(&mut self, which: usize, all: &[KeyValue]) {
        match which {
            0 => {
                self.network_policies.clear();
                self.cluster_policies.clear();
            }
            1 => self.namespaces.clear(),
            2 => self.endpoints.clear(),
            _ => self.overrides.clear(),
        }
        for kv in all {
            self.set(kv);
        }
        self.in_sync[which] = true;
    }

    /// The world this node compiles: published endpoints of other nodes, this node's own from
    /// its files, label overrides applied.
    fn world(&self, node: &str) -> World {
        let mut endpoints: HashMap<String, Endpoint> = HashMap::new();
        for e in self.endpoints.values().filter(|e| e.node != node) {
            endpoints.insert(e.id(), e.clone());
        }
        for e in self.local.values() {
            endpoints.insert(e.id(), e.clone());
        }
        let endpoints: Vec<Endpoint> = endpoints
            .into_values()
            .map(|mut e| {
                if let Some(o) = self.overrides.get(&e.id()) {
                    e.labels = o.apply(&e.labels);
                }
                e
            })
            .collect();
        let mut docs: Vec<PolicyDoc> = self
            .network_policies
            .values()
            .cloned()
            .map(PolicyDoc::NetworkPolicy)
            .collect();
        docs.extend(
            self.cluster_policies
                .values()
                .cloned()
                .map(PolicyDoc::ClusterPolicy),
        );
        World::new(self.namespaces.values().cloned().collect(), endpoints, docs)
    }
}

struct PolicySync {
    store: Store,
    node: String,
    data_dir: PathBuf,
    state: WorldState,
    applied: Option<Ruleset>,
    /// Plugins waiting for the next apply.
    waiting: Vec<oneshot::Sender<Reply>>,
    status: SharedStatus,
    resync: Duration,
}

impl PolicySync {
    async fn run(mut self, mut requests: mpsc::Receiver<Pending>) -> anyhow::Result<()> {
        self.state.local = read_spool(&self.data_dir);
        let (events_tx, mut events) = mpsc::channel::<(usize, MirrorEvent)>(1024);
        for (i, prefix) in PREFIXES.iter().enumerate() {
            let mut rx = twill_store::mirror(self.store.clone(), prefix.to_string());
            let tx = events_tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = rx.recv().await {
                    if tx.send((i, ev)).await.is_err() {
                        break;
                    }
                }
            });
        }
        let mut resync = tokio::time::interval(self.resync);
        resync.tick().await;
        let mut published = false;
        loop {
            let mut dirty = false;
            let mut full = false;
            tokio::select! {
                Some((i, ev)) = events.recv() => dirty |= self.on_event(i, ev),
                Some(p) = requests.recv() => dirty |= self.on_request(p),
                _ = resync.tick() => {
                    self.rescan_spool();
                    dirty = true;
                    full = true;
                }
            }
            // Take whatever else is already queued or arrives within the burst window.
            loop {
                tokio::select! {
                    biased;
                    Some((i, ev)) = events.recv() => dirty |= self.on_event(i, ev),
                    Some(p) = requests.recv() => dirty |= self.on_request(p),
                    _ = tokio::time::sleep(BURST) => break,
                }
            }
            if !self.state.in_sync() {
                continue;
            }
            if !published {
                // Once, when the store is known: publish our endpoints, remove stale ones.
                self.publish_all().await;
                published = true;
            }
            if dirty || !self.waiting.is_empty() {
                self.apply(full);
            }
        }
    }

    fn on_event(&mut self, which: usize, ev: MirrorEvent) -> bool {
        match ev {
            MirrorEvent::InSync(all) => {
                self.state.replace(which, &all);
                true
            }
            MirrorEvent::Put(kv) => {
                self.state.set(&kv);
                true
            }
            MirrorEvent::Delete(key) => {
                self.state.delete(&key);
                true
            }
            MirrorEvent::Lost(why) => {
                warn!("policy: store lost ({why}); keeping the rules in force");
                false
            }
        }
    }

    fn on_request(&mut self, p: Pending) -> bool {
        match &p.request {
            Request::Add { container_id } => match read_endpoint(&self.data_dir, container_id) {
                Ok(ep) => {
                    self.publish(Some(&ep), &ep.namespace.clone(), &ep.name.clone());
                    self.state.local.insert(container_id.clone(), ep);
                    self.waiting.push(p.reply);
                    true
                }
                Err(e) => {
                    let _ = p.reply.send(Reply {
                        ok: false,
                        error: Some(e),
                    });
                    false
                }
            },
            Request::Del { container_id } => {
                let gone = self.state.local.remove(container_id);
                if let Some(ep) = &gone {
                    self.publish(None, &ep.namespace.clone(), &ep.name.clone());
                }
                self.waiting.push(p.reply);
                gone.is_some()
            }
        }
    }

    /// Catches up with endpoint files whose announcement the agent missed (a plugin that gave
    /// up waiting, a DEL while the agent was down).
    fn rescan_spool(&mut self) {
        let spool = read_spool(&self.data_dir);
        let gone: Vec<String> = self
            .state
            .local
            .keys()
            .filter(|id| !spool.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            if let Some(ep) = self.state.local.remove(&id) {
                self.publish(None, &ep.namespace, &ep.name);
            }
        }
        for (id, ep) in spool {
            if self.state.local.get(&id) != Some(&ep) {
                self.publish(Some(&ep), &ep.namespace, &ep.name);
                self.state.local.insert(id, ep);
            }
        }
    }

    /// Writes (or deletes) one of our endpoints in the store, in the background.
    fn publish(&self, ep: Option<&Endpoint>, namespace: &str, name: &str) {
        let store = self.store.clone();
        let key = keys::endpoint_key(namespace, name);
        let value = ep.map(|e| serde_json::to_vec(e).expect("endpoints serialize"));
        tokio::spawn(async move {
            let r = match value {
                Some(v) => store.put(&key, &v, None).await.map(drop),
                None => store.delete(&key).await.map(drop),
            };
            if let Err(e) = r {
                warn!("publishing {key}: {e}");
            }
        });
    }

    /// Makes the store's endpoints of this node equal to the local ones.
    async fn publish_all(&mut self) {
        let mut ours: BTreeMap<String, &Endpoint> = BTreeMap::new();
        for e in self.state.local.values() {
            ours.insert(keys::endpoint_key(&e.namespace, &e.name), e);
        }
        for (key, e) in &self.state.endpoints {
            if e.node == self.node && !ours.contains_key(key) {
                info!("removing {key}: no such pod on this node any more");
                if let Err(err) = self.store.delete(key).await {
                    warn!("removing {key}: {err}");
                }
            }
        }
        for (key, e) in ours {
            if self.state.endpoints.get(&key) != Some(e) {
                let v = serde_json::to_vec(e).expect("endpoints serialize");
                if let Err(err) = self.store.put(&key, &v, None).await {
                    warn!("publishing {key}: {err}");
                }
            }
        }
    }

    /// Compiles and applies; answers the waiting plugins.
    fn apply(&mut self, full: bool) {
        let started = Instant::now();
        let world = self.state.world(&self.node);
        let new = twill_policy::compile(
            &world,
            &self.node,
            Options {
                dispatch: Dispatch::Address,
            },
        );
        let script = if full {
            twill_policy::render(&new)
        } else {
            twill_policy::diff(self.applied.as_ref(), &new)
        };
        let mut result = if script.is_empty() {
            Ok(())
        } else {
            twill_dataplane::policy::apply("network policy", &script)
        };
        if result.is_err() && !full {
            // The table may have been changed behind our back: replace it whole.
            result = twill_dataplane::policy::apply("network policy", &twill_policy::render(&new));
        }
        let took = started.elapsed();
        let error = result.as_ref().err().map(|e| e.to_string());
        if let Some(e) = &error {
            warn!("applying network policy: {e}");
        } else {
            self.applied = Some(new);
        }
        for w in self.waiting.drain(..) {
            let _ = w.send(Reply {
                ok: error.is_none(),
                error: error.clone(),
            });
        }
        let mut st = self.status.status.lock().unwrap_or_else(|p| p.into_inner());
        st.in_sync = self.state.in_sync();
        st.network_policies = self.state.network_policies.len();
        st.cluster_policies = self.state.cluster_policies.len();
        st.endpoints = world.endpoints.len();
        st.local_endpoints = self.state.local.len();
        st.last_apply_us = took.as_micros() as u64;
        if error.is_none() {
            if !script.is_empty() {
                st.applied += 1;
            }
            st.applied_at = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
        }
        st.error = error;
        drop(st);
        self.status.changed.notify_one();
    }
}

/// The endpoint file of one container.
fn endpoint_path(data_dir: &Path, container_id: &str) -> PathBuf {
    node::endpoints_dir(data_dir).join(format!("{container_id}.json"))
}

fn read_endpoint(data_dir: &Path, container_id: &str) -> Result<Endpoint, String> {
    if container_id.is_empty() || container_id.contains('/') || container_id.starts_with('.') {
        return Err(format!("invalid container id {container_id:?}"));
    }
    let path = endpoint_path(data_dir, container_id);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// Every endpoint file (at start: pods made while the agent was down are covered too).
fn read_spool(data_dir: &Path) -> BTreeMap<String, Endpoint> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(node::endpoints_dir(data_dir)) else {
        return out;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        match read_endpoint(data_dir, id) {
            Ok(ep) => {
                out.insert(id.to_string(), ep);
            }
            Err(e) => warn!("ignoring endpoint file: {e}"),
        }
    }
    out
}
