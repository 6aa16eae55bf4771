//! Network policy on this node: one task that keeps `table inet twill-policy` equal to what
//! the cluster's policies say about this node's endpoints.
//!
//! Inputs, all turned into one in-memory [`World`]:
//! - the store (mirrored): policies, namespaces, every node's endpoints, label overrides
//!   (layout in [`twill_types::keys`]);
//! - this node's endpoints, which the CNI plugin records in `<data-dir>/endpoints/` (they
//!   survive agent restarts) and announces on the agent socket; the agent publishes them to
//!   the store for the other nodes.
//!
//! After every change (a short burst of changes costs one pass) the task compiles the world
//! for this node (pure, [`twill_policy::compile`]) and applies the difference to the last
//! applied rule set as one nft transaction (only set elements when only memberships changed;
//! the whole table otherwise). A plugin waiting on the socket is answered only after the
//! apply that covers its endpoint, and only once the task is in sync with the store: a pod
//! starts with its policies in force. At every resync the whole table goes to the dataplane
//! reconciler, which writes it only when the kernel's table is not the one it last wrote for
//! it (the table's fingerprint comment and rules per chain): a quiet node's resync runs no
//! `nft` and leaves the policy status, so `status.json`, as it was.
//!
//! Publication is reconciled, not just announced: at every resync and whenever the store
//! comes back (a mirror is in sync again after an outage) the task makes the store's endpoint
//! records of this node equal to the local records. A local record that cannot be read (EMFILE,
//! EACCES, ...) is "unknown", never "absent": its last known value stays, and while any record
//! (or the directory itself) is unknown nothing of this node is unpublished.
//!
//! The socket serves root only and bounds everything a client can make it hold: it lives in
//! the 0700 data directory with mode 0600, the peer's credentials are checked (uid 0), a request
//! line is at most [`MAX_LINE`] bytes and must arrive within [`READ_TIMEOUT`], and at most
//! [`MAX_CONNECTIONS`] connections are served at once (at the cap the oldest one still waiting
//! for its request line is closed to make room, so idle connections cannot keep a plugin out;
//! when none is idle the newcomer is closed at once).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::{info, warn};
use twill_policy::{
    ClusterPolicy, Dispatch, Endpoint, LabelOverrides, Namespace, NetworkPolicy, Options,
    PolicyDoc, Ruleset, World, render,
};
use twill_store::{KeyValue, MirrorEvent, Store};
use twill_types::keys;
use twill_types::node::{self, PolicyStatus};

use crate::policy::Item;
use twill_dataplane::reconcile::{PolicyWrite, PolicyWriter, WholePolicy};

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

/// A client has this long to send its whole request line.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest request line (the plugin's are under 200 bytes).
pub const MAX_LINE: usize = 64 * 1024;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 128;
/// How long a request waits for the policy task's answer (the plugin gives up after 10 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest endpoint record read from the spool.
const MAX_RECORD: u64 = 1024 * 1024;

/// Starts the task: binds the socket first (so a plugin that finds it can rely on an answer),
/// then runs until the process ends. The handle ends only if the task fails.
pub fn spawn(
    store: Store,
    node: String,
    data_dir: PathBuf,
    resync: Duration,
    status: SharedStatus,
    writer: PolicyWriter,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    // Only root may write records the agent publishes, or talk to the socket.
    crate::files::private_dir(&data_dir)?;
    crate::files::private_dir(&node::endpoints_dir(&data_dir))?;
    let path = node::agent_socket(&data_dir);
    // A socket file left by a previous agent refuses connections; replace it.
    let _ = std::fs::remove_file(&path);
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    // Before the first accept, whatever the umask (the directory is 0700 already).
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} mode 0600", path.display()))?;
    match twill_dataplane::policy::enable_bridge_hooks() {
        Ok(true) => {}
        Ok(false) => {
            warn!("no bridge netfilter: policy between pods on one bridge is not enforced")
        }
        Err(e) => warn!("enabling bridge netfilter: {e}"),
    }
    let (requests_tx, requests) = mpsc::channel(256);
    tokio::spawn(accept(
        listener,
        requests_tx,
        Arc::new(Gate::new(MAX_CONNECTIONS)),
    ));
    let sync = PolicySync {
        publisher: spawn_publisher(store.clone()),
        store,
        node,
        data_dir,
        state: WorldState::default(),
        applied: None,
        writer,
        waiting: Vec::new(),
        status,
        resync,
        spool_complete: false,
        lost: [false; 4],
    };
    Ok(tokio::spawn(sync.run(requests)))
}

/// A plugin's request and where to send the answer.
struct Pending {
    request: Request,
    reply: oneshot::Sender<Reply>,
}

/// Admission to the socket: at most `cap` connections, the oldest idle one (still waiting for
/// its request line) closed to make room for a newcomer.
struct Gate {
    permits: Arc<Semaphore>,
    /// Connections that have not sent their request line yet, oldest first, with the way to
    /// close each.
    idle: Mutex<VecDeque<(u64, oneshot::Sender<()>)>>,
    next_id: AtomicU64,
    refused: AtomicU64,
    evicted: AtomicU64,
}

impl Gate {
    fn new(cap: usize) -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(cap)),
            idle: Mutex::new(VecDeque::new()),
            next_id: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    /// A place for one more connection: free, or made by closing the oldest idle one (waiting
    /// at most a second for it to go). None when every connection is busy with a request.
    async fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Some(p);
        }
        let oldest = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let (_, close) = oldest?;
        let _ = close.send(());
        let n = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n.is_multiple_of(1000) {
            warn!(
                evicted = n,
                "agent socket: {MAX_CONNECTIONS} connections open; closing the oldest idle one"
            );
        }
        tokio::time::timeout(Duration::from_secs(1), self.permits.clone().acquire_owned())
            .await
            .ok()?
            .ok()
    }

    /// Records an idle connection; the receiver fires when it must close.
    fn idle(&self) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((id, tx));
        (id, rx)
    }

    /// The connection has its request (or is gone): it may no longer be closed for room.
    fn busy(&self, id: u64) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = idle.iter().position(|(x, _)| *x == id) {
            idle.remove(i);
        }
    }

    /// Counts (and now and then logs) a refused connection.
    fn refuse(&self, why: &str) {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if n == 1 || n.is_multiple_of(1000) {
            warn!(refused = n, "agent socket: refused a connection: {why}");
        }
    }
}

/// Only root may ask the agent anything: the credentials the kernel recorded at connect().
fn authorize(stream: &UnixStream) -> Result<(), String> {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 => Ok(()),
        Ok(cred) => Err(format!(
            "peer uid {} pid {:?} is not root",
            cred.uid(),
            cred.pid()
        )),
        Err(e) => Err(format!("reading the peer's credentials: {e}")),
    }
}

async fn accept(listener: UnixListener, requests: mpsc::Sender<Pending>, gate: Arc<Gate>) {
    let mut accept_errors = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and the like: retrying at once would only spin.
                accept_errors += 1;
                if accept_errors == 1 || accept_errors.is_multiple_of(100) {
                    warn!(errors = accept_errors, "agent socket: accept: {e}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(why) = authorize(&stream) {
            gate.refuse(&why);
            continue;
        }
        let Some(permit) = gate.admit().await else {
            gate.refuse("every connection is busy with a request");
            continue;
        };
        let (id, close) = gate.idle();
        let requests = requests.clone();
        let gate = gate.clone();
        tokio::spawn(async move {
            let r = serve(stream, requests, close, || gate.busy(id)).await;
            gate.busy(id);
            drop(permit);
            if let Err(e) = r {
                tracing::debug!("agent socket: {e:#}");
            }
        });
    }
}

/// What reading a request line gave.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Request(Vec<u8>),
    /// The client closed without sending anything.
    Closed,
    TooLong,
    /// Nothing complete within the timeout.
    Late,
}

/// Reads one line of at most `max` bytes within `timeout`; never buffers more than `max + 1`.
async fn read_request<R: tokio::io::AsyncRead + Unpin>(
    read: R,
    max: usize,
    timeout: Duration,
) -> std::io::Result<Line> {
    let mut line = Vec::new();
    let mut limited = BufReader::new(read.take(max as u64 + 1));
    match tokio::time::timeout(timeout, limited.read_until(b'\n', &mut line)).await {
        Err(_) => Ok(Line::Late),
        Ok(Err(e)) => Err(e),
        Ok(Ok(0)) => Ok(Line::Closed),
        Ok(Ok(_)) if line.len() > max && !line.ends_with(b"\n") => Ok(Line::TooLong),
        Ok(Ok(_)) => Ok(Line::Request(line)),
    }
}

async fn serve(
    stream: UnixStream,
    requests: mpsc::Sender<Pending>,
    close: oneshot::Receiver<()>,
    busy: impl FnOnce(),
) -> anyhow::Result<()> {
    let (read, mut write) = stream.into_split();
    let line = tokio::select! {
        line = read_request(read, MAX_LINE, READ_TIMEOUT) => line?,
        // Closed to make room for a newer connection.
        _ = close => return Ok(()),
    };
    busy();
    let refused = |why: String| Reply {
        ok: false,
        error: Some(why),
    };
    let reply = match line {
        Line::Closed => return Ok(()),
        Line::TooLong => refused(format!("request longer than {MAX_LINE} bytes")),
        Line::Late => refused(format!(
            "no complete request line within {} s",
            READ_TIMEOUT.as_secs()
        )),
        Line::Request(line) => match serde_json::from_slice::<Request>(&line) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                requests
                    .send(Pending { request, reply: tx })
                    .await
                    .map_err(|_| anyhow::anyhow!("policy task gone"))?;
                match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(_)) => refused("the policy task stopped".into()),
                    Err(_) => refused(format!(
                        "no policy apply within {} s",
                        ANSWER_TIMEOUT.as_secs()
                    )),
                }
            }
            Err(e) => refused(format!("bad request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| anyhow::anyhow!("the client does not read its answer"))??;
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
    /// Writes to the store's endpoint records, in order.
    publisher: mpsc::UnboundedSender<Publish>,
    node: String,
    data_dir: PathBuf,
    state: WorldState,
    applied: Option<Arc<Ruleset>>,
    /// Writes `inet twill-policy` through the dataplane reconciler's queue.
    writer: PolicyWriter,
    /// Plugins waiting for the next apply.
    waiting: Vec<oneshot::Sender<Reply>>,
    status: SharedStatus,
    resync: Duration,
    /// The last read of the local records read every one of them: only then may a store
    /// record of this node without a local record be unpublished.
    spool_complete: bool,
    /// Which prefixes' mirrors reported the store lost and are not in sync again yet.
    lost: [bool; 4],
}

/// One write to the store's endpoint records.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Publish {
    Put(String, Vec<u8>),
    Delete(String),
}

/// Runs the writes one after the other (so a later write of a key never lands before an
/// earlier one); a failed write is logged, and the next reconciliation repairs it.
fn spawn_publisher(store: Store) -> mpsc::UnboundedSender<Publish> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Publish>();
    tokio::spawn(async move {
        while let Some(op) = rx.recv().await {
            let (key, r) = match op {
                Publish::Put(key, value) => {
                    let r = store.put(&key, &value, None).await.map(drop);
                    (key, r)
                }
                Publish::Delete(key) => {
                    let r = store.delete(&key).await.map(drop);
                    (key, r)
                }
            };
            if let Err(e) = r {
                warn!("publishing {key}: {e} (the next reconciliation retries)");
            }
        }
    });
    tx
}

/// What has to be written so that the store's records of `node` equal `local`. `published` is
/// the store's endpoint records as mirrored. With `complete` false (some local record could not
/// be read) nothing is deleted: an unknown record is not an absent one.
fn publication_plan(
    node: &str,
    local: &BTreeMap<String, Endpoint>,
    published: &BTreeMap<String, Endpoint>,
    complete: bool,
) -> (Vec<Publish>, usize) {
    let mut ours: BTreeMap<String, &Endpoint> = BTreeMap::new();
    for e in local.values() {
        ours.insert(keys::endpoint_key(&e.namespace, &e.name), e);
    }
    let mut plan = Vec::new();
    let mut kept = 0;
    for (key, e) in published {
        if e.node == node && !ours.contains_key(key) {
            if complete {
                plan.push(Publish::Delete(key.clone()));
            } else {
                kept += 1;
            }
        }
    }
    for (key, e) in ours {
        if published.get(&key) != Some(e) {
            let v = serde_json::to_vec(e).expect("endpoints serialize");
            plan.push(Publish::Put(key, v));
        }
    }
    (plan, kept)
}

impl PolicySync {
    async fn run(mut self, mut requests: mpsc::Receiver<Pending>) -> anyhow::Result<()> {
        self.rescan_spool();
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
        drop(events_tx);
        let mut resync = tokio::time::interval(self.resync);
        resync.tick().await;
        // Publication is reconciled at the first sync, at every resync, and whenever a mirror
        // is in sync again after losing the store.
        let mut republish = true;
        loop {
            let mut dirty = false;
            let mut full = false;
            tokio::select! {
                ev = events.recv() => {
                    let Some((i, ev)) = ev else {
                        anyhow::bail!("the store mirrors of network policy stopped");
                    };
                    republish |= matches!(ev, MirrorEvent::InSync(_));
                    dirty |= self.on_event(i, ev);
                }
                Some(p) = requests.recv() => dirty |= self.on_request(p),
                _ = resync.tick() => {
                    self.rescan_spool();
                    dirty = true;
                    full = true;
                    republish = true;
                }
            }
            // Take whatever else is already queued or arrives within the burst window.
            loop {
                tokio::select! {
                    biased;
                    Some((i, ev)) = events.recv() => {
                        republish |= matches!(ev, MirrorEvent::InSync(_));
                        dirty |= self.on_event(i, ev);
                    }
                    Some(p) = requests.recv() => dirty |= self.on_request(p),
                    _ = tokio::time::sleep(BURST) => break,
                }
            }
            if !self.state.in_sync() {
                continue;
            }
            if republish && !self.lost.iter().any(|l| *l) {
                self.publish_all();
                republish = false;
            }
            if dirty || !self.waiting.is_empty() {
                self.apply(full).await;
            }
        }
    }

    fn on_event(&mut self, which: usize, ev: MirrorEvent) -> bool {
        match ev {
            MirrorEvent::InSync(all) => {
                self.lost[which] = false;
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
                self.lost[which] = true;
                warn!("policy: store lost ({why}); keeping the rules in force");
                false
            }
        }
    }

    fn on_request(&mut self, p: Pending) -> bool {
        match &p.request {
            Request::Add { container_id } => {
                match read_endpoint(&self.data_dir, container_id, &self.node) {
                    Ok(ep) => {
                        self.publish(Some(&ep), &ep.namespace.clone(), &ep.name.clone());
                        self.state.local.insert(container_id.clone(), ep);
                        self.waiting.push(p.reply);
                        true
                    }
                    Err(e) => {
                        let _ = p.reply.send(Reply {
                            ok: false,
                            error: Some(e.to_string()),
                        });
                        false
                    }
                }
            }
            Request::Del { container_id } => {
                let gone = self.state.local.remove(container_id);
                if let Some(ep) = &gone {
                    // Another interface of the same pod keeps the pod published: this DEL
                    // takes away only its own attachment.
                    let other = self
                        .state
                        .local
                        .values()
                        .find(|e| e.namespace == ep.namespace && e.name == ep.name)
                        .cloned();
                    self.publish(other.as_ref(), &ep.namespace, &ep.name);
                }
                self.waiting.push(p.reply);
                gone.is_some()
            }
        }
    }

    /// Reads the local records again: catches up with records whose announcement the agent
    /// missed (a plugin that gave up waiting, a DEL while the agent was down). A record (or the
    /// whole directory) that cannot be read keeps what was known of it.
    fn rescan_spool(&mut self) {
        let dir = node::endpoints_dir(&self.data_dir);
        // The plugin may have made it again (after someone removed it) under a loose umask.
        let spool = crate::files::private_dir(&dir)
            .map_err(|e| format!("{e:#}"))
            .and_then(|()| read_spool(&self.data_dir, &self.node));
        let spool = match spool {
            Ok(spool) => spool,
            Err(e) => {
                warn!(
                    "reading this node's endpoint records: {e}; keeping the {} known ones \
                     (a failed read is not an empty directory)",
                    self.state.local.len()
                );
                self.spool_complete = false;
                return;
            }
        };
        self.spool_complete = merge_spool(&mut self.state.local, spool);
    }

    /// Writes (or deletes) one of our endpoints in the store, in the background.
    fn publish(&self, ep: Option<&Endpoint>, namespace: &str, name: &str) {
        let key = keys::endpoint_key(namespace, name);
        let op = match ep {
            Some(e) => Publish::Put(key, serde_json::to_vec(e).expect("endpoints serialize")),
            None => Publish::Delete(key),
        };
        let _ = self.publisher.send(op);
    }

    /// Makes the store's endpoints of this node equal to the local ones (in the background, in
    /// order with the single writes).
    fn publish_all(&mut self) {
        let (plan, kept) = publication_plan(
            &self.node,
            &self.state.local,
            &self.state.endpoints,
            self.spool_complete,
        );
        if kept > 0 {
            warn!(
                kept,
                "not unpublishing endpoints without a local record: some local records could \
                 not be read"
            );
        }
        for op in plan {
            match &op {
                Publish::Delete(key) => info!("removing {key}: no such pod on this node any more"),
                Publish::Put(key, _) => info!("publishing {key}"),
            }
            let _ = self.publisher.send(op);
        }
    }

    /// Compiles and applies; answers the waiting plugins.
    async fn apply(&mut self, full: bool) {
        let started = Instant::now();
        let world = self.state.world(&self.node);
        let new = Arc::new(twill_policy::compile(
            &world,
            &self.node,
            Options {
                dispatch: Dispatch::Address,
            },
        ));
        let result = if full || self.applied.is_none() {
            // The whole table, at every resync (which repairs what changed behind our back)
            // and first: the reconciler writes it only when the kernel's table is not already
            // the one it last wrote for this definition.
            self.writer.apply_table(render::table(&new)).await
        } else {
            let script = twill_policy::diff(self.applied.as_deref(), &new);
            if script.is_empty() {
                Ok(PolicyWrite::Unchanged)
            } else {
                // Refused, a change is followed by the whole table (it may have been changed
                // behind our back); the reconciler renders it only then.
                let new = new.clone();
                let whole = Box::new(move || twill_policy::render(&new)) as WholePolicy;
                let wrote = self.writer.apply(script, Some(whole)).await;
                wrote.map(|()| PolicyWrite::Written)
            }
        };
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
        // Nothing written, nothing of the last apply changes (status.json stays as it is).
        if !matches!(result, Ok(PolicyWrite::Unchanged)) {
            st.last_apply_us = took.as_micros() as u64;
        }
        if let Ok(PolicyWrite::Written) = result {
            st.applied += 1;
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

/// Why a record was not read.
#[derive(Debug)]
enum RecordError {
    /// It is not there (any more).
    Gone,
    /// It could not be read (EMFILE, EACCES, EIO, ...): what it holds is unknown.
    Unreadable(String),
    /// It was read and is not a record this agent accepts.
    Invalid(String),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Gone => write!(f, "no such endpoint record"),
            RecordError::Unreadable(e) | RecordError::Invalid(e) => write!(f, "{e}"),
        }
    }
}

/// Reads one record: a regular file owned by the agent's user (the plugin runs as root), at
/// most [`MAX_RECORD`] bytes, describing an endpoint of this node.
fn read_endpoint(data_dir: &Path, container_id: &str, node: &str) -> Result<Endpoint, RecordError> {
    if container_id.is_empty() || container_id.contains('/') || container_id.starts_with('.') {
        return Err(RecordError::Invalid(format!(
            "invalid container id {container_id:?}"
        )));
    }
    let path = endpoint_path(data_dir, container_id);
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RecordError::Gone),
        Err(e) => return Err(RecordError::Unreadable(at(&e))),
    };
    if !meta.is_file() {
        return Err(RecordError::Invalid(at(&"not a regular file")));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(RecordError::Invalid(at(&format!(
            "owned by uid {}, not by the agent's uid {me}",
            meta.uid()
        ))));
    }
    let mut bytes = Vec::new();
    let read =
        std::fs::File::open(&path).and_then(|f| f.take(MAX_RECORD + 1).read_to_end(&mut bytes));
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(RecordError::Gone),
        Err(e) => return Err(RecordError::Unreadable(at(&e))),
    }
    if bytes.len() as u64 > MAX_RECORD {
        return Err(RecordError::Invalid(at(&"larger than 1 MiB")));
    }
    let ep: Endpoint = serde_json::from_slice(&bytes).map_err(|e| RecordError::Invalid(at(&e)))?;
    if ep.node != node {
        return Err(RecordError::Invalid(at(&format!(
            "describes an endpoint of node {:?}, not of this node",
            ep.node
        ))));
    }
    Ok(ep)
}

/// The local records as one read found them.
#[derive(Debug, Default)]
struct Spool {
    records: BTreeMap<String, Endpoint>,
    /// Records that exist but could not be read: their content is unknown.
    unknown: BTreeSet<String>,
}

/// Makes `local` what a successful read of the spool found, keeping the known value of every
/// record that could not be read; true when every record was read.
fn merge_spool(local: &mut BTreeMap<String, Endpoint>, spool: Spool) -> bool {
    let Spool { records, unknown } = spool;
    local.retain(|id, _| records.contains_key(id) || unknown.contains(id));
    local.extend(records);
    unknown.is_empty()
}

/// Every endpoint file (at start: pods made while the agent was down are covered too). Err
/// when the directory itself could not be read: then nothing is known.
fn read_spool(data_dir: &Path, node: &str) -> Result<Spool, String> {
    let dir_path = node::endpoints_dir(data_dir);
    let dir = std::fs::read_dir(&dir_path).map_err(|e| format!("{}: {e}", dir_path.display()))?;
    let mut out = Spool::default();
    for entry in dir {
        let entry = entry.map_err(|e| format!("{}: {e}", dir_path.display()))?;
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(id) = name.strip_suffix(".json") else {
            continue;
        };
        match read_endpoint(data_dir, id, node) {
            Ok(ep) => {
                out.records.insert(id.to_string(), ep);
            }
            Err(RecordError::Gone) => {}
            Err(RecordError::Unreadable(e)) => {
                warn!("endpoint record {e}: keeping what was known of it");
                out.unknown.insert(id.to_string());
            }
            Err(RecordError::Invalid(e)) => warn!("ignoring endpoint record {e}"),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(name: &str, node: &str) -> Endpoint {
        Endpoint {
            namespace: "default".into(),
            name: name.into(),
            labels: Default::default(),
            addresses: vec!["10.1.0.5".parse().unwrap()],
            node: node.into(),
            interface: "tw0".into(),
            named_ports: vec![],
        }
    }

    fn published(eps: &[&Endpoint]) -> BTreeMap<String, Endpoint> {
        eps.iter()
            .map(|e| (keys::endpoint_key(&e.namespace, &e.name), (*e).clone()))
            .collect()
    }

    #[test]
    fn publication_makes_the_store_equal_to_the_local_records() {
        let (a, b, c, other) = (ep("a", "n1"), ep("b", "n1"), ep("c", "n1"), ep("x", "n2"));
        let local: BTreeMap<String, Endpoint> =
            [("ca".to_string(), a.clone()), ("cc".to_string(), c.clone())].into();
        // b is ours and gone; c is ours and unpublished (added while the store was down);
        // another node's record is none of our business.
        let store = published(&[&a, &b, &other]);
        let (plan, kept) = publication_plan("n1", &local, &store, true);
        assert_eq!(kept, 0);
        assert_eq!(
            plan,
            vec![
                Publish::Delete(keys::endpoint_key("default", "b")),
                Publish::Put(
                    keys::endpoint_key("default", "c"),
                    serde_json::to_vec(&c).unwrap()
                ),
            ]
        );
        // Nothing to do once equal.
        let store = published(&[&a, &c, &other]);
        assert!(publication_plan("n1", &local, &store, true).0.is_empty());
    }

    #[test]
    fn an_incomplete_read_never_unpublishes() {
        let (a, b) = (ep("a", "n1"), ep("b", "n1"));
        let store = published(&[&a, &b]);
        // Whatever the local view says, an incomplete read deletes nothing.
        let (plan, kept) = publication_plan("n1", &BTreeMap::new(), &store, false);
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(kept, 2);
    }

    #[test]
    fn an_unreadable_record_keeps_its_known_value() {
        let (a, b) = (ep("a", "n1"), ep("b", "n1"));
        let mut local: BTreeMap<String, Endpoint> =
            [("ca".to_string(), a.clone()), ("cb".to_string(), b.clone())].into();
        // "cb" exists but could not be read (EMFILE): it stays, and the read is incomplete.
        let spool = Spool {
            records: [("ca".to_string(), a.clone())].into(),
            unknown: ["cb".to_string()].into(),
        };
        assert!(!merge_spool(&mut local, spool));
        assert_eq!(local.len(), 2);
        // A complete read that no longer has "cb": it is gone.
        let spool = Spool {
            records: [("ca".to_string(), a.clone())].into(),
            unknown: BTreeSet::new(),
        };
        assert!(merge_spool(&mut local, spool));
        assert_eq!(local.keys().collect::<Vec<_>>(), vec!["ca"]);
    }

    #[test]
    fn a_directory_that_cannot_be_read_is_an_error_not_empty() {
        let dir = tempfile::tempdir().unwrap();
        // The endpoints directory is a file: read_dir fails (ENOTDIR), as it would with EMFILE.
        std::fs::write(node::endpoints_dir(dir.path()), "x").unwrap();
        assert!(read_spool(dir.path(), "n1").is_err());
    }

    #[test]
    fn records_are_checked() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        let eps = node::endpoints_dir(dir.path());
        std::fs::create_dir(&eps).unwrap();
        let write = |id: &str, e: &Endpoint| {
            std::fs::write(
                eps.join(format!("{id}.json")),
                serde_json::to_vec(e).unwrap(),
            )
            .unwrap()
        };
        write("good", &ep("a", "n1"));
        write("othernode", &ep("b", "n2"));
        std::fs::write(eps.join("broken.json"), "{").unwrap();
        std::fs::create_dir(eps.join("adir.json")).unwrap();
        std::os::unix::fs::symlink(eps.join("good.json"), eps.join("link.json")).unwrap();
        std::fs::write(eps.join("good.json.tmp"), "partial").unwrap();
        if me == 0 {
            // A record someone else owns is not believed.
            write("forged", &ep("f", "n1"));
            std::os::unix::fs::chown(eps.join("forged.json"), Some(65534), Some(65534)).unwrap();
        }
        let spool = read_spool(dir.path(), "n1").unwrap();
        assert_eq!(spool.records.keys().collect::<Vec<_>>(), vec!["good"]);
        assert!(spool.unknown.is_empty());
        assert!(matches!(
            read_endpoint(dir.path(), "missing", "n1"),
            Err(RecordError::Gone)
        ));
        assert!(matches!(
            read_endpoint(dir.path(), "../good", "n1"),
            Err(RecordError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn request_lines_are_bounded_in_size_and_time() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"{\"op\":\"add\"}\n").await.unwrap();
        assert_eq!(
            read_request(server, 64, Duration::from_secs(5))
                .await
                .unwrap(),
            Line::Request(b"{\"op\":\"add\"}\n".to_vec())
        );

        // An endless line: refused after max + 1 bytes, without reading the rest.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let writer = tokio::spawn(async move {
            let chunk = vec![b'x'; 4096];
            let mut sent = 0usize;
            while client.write_all(&chunk).await.is_ok() {
                sent += chunk.len();
                if sent > 64 << 20 {
                    break;
                }
            }
            sent
        });
        assert_eq!(
            read_request(server, 1000, Duration::from_secs(5))
                .await
                .unwrap(),
            Line::TooLong
        );
        // The reader is gone: the writer stops long before 64 MiB.
        assert!(writer.await.unwrap() < 1 << 20);

        // Nothing (or not a whole line) within the timeout.
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"{\"op\"").await.unwrap();
        assert_eq!(
            read_request(server, 64, Duration::from_millis(100))
                .await
                .unwrap(),
            Line::Late
        );
        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        assert_eq!(
            read_request(server, 64, Duration::from_secs(5))
                .await
                .unwrap(),
            Line::Closed
        );
    }

    /// Idle connections beyond the cap make room for a real request, and the agent's
    /// connections stay at the cap; a client that is not root is refused.
    #[tokio::test]
    async fn idle_connections_cannot_keep_a_request_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (tx, mut rx) = mpsc::channel::<Pending>(16);
        let gate = Arc::new(Gate::new(4));
        tokio::spawn(accept(listener, tx, gate.clone()));
        tokio::spawn(async move {
            while let Some(p) = rx.recv().await {
                let _ = p.reply.send(Reply {
                    ok: true,
                    error: None,
                });
            }
        });
        let root = nix::unistd::geteuid().is_root();
        let mut idle = Vec::new();
        for _ in 0..50 {
            idle.push(UnixStream::connect(&path).await.unwrap());
        }
        let mut c = UnixStream::connect(&path).await.unwrap();
        c.write_all(b"{\"op\":\"add\",\"containerId\":\"x\"}\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            BufReader::new(&mut c).read_line(&mut answer),
        )
        .await
        .unwrap()
        .unwrap();
        if root {
            assert_eq!(answer.trim(), r#"{"ok":true}"#);
            // At most the cap is held: the others were closed.
            assert!(gate.permits.available_permits() <= 4);
            let mut closed = 0;
            for s in &mut idle {
                let mut buf = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await
                {
                    closed += 1;
                }
            }
            assert!(closed >= 46, "only {closed} of 50 idle connections closed");
        } else {
            // Not root: refused (closed without an answer).
            assert_eq!(answer, "");
        }
    }
}
