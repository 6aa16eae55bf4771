//! The agent's main loop.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ipnet::{IpNet, Ipv4Net};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};
use twill_backend::{Backend, LocalNode};
use twill_dataplane::reconcile::{
    self, ObjectKey, ObjectStatus, Observed, ObservedFdb, ObservedRoute, Reconciler, Rtnl,
};
use twill_store::{MirrorEvent, Store, StoreError};
use twill_types::MacAddr;
use twill_types::cluster::ClusterConfig;
use twill_types::desired::{DesiredState, FdbSpec, NeighSpec, PeerPath, RouteSpec};
use twill_types::keys::{BGP_PEERS_PREFIX, CONFIG_KEY, LEASES_PREFIX};
use twill_types::lease::Lease;
use twill_types::node::{self, AgentStatus, LeaseEvent, NodeFile, PeerStatus, PolicyStatus};

use crate::lease::{self, Held};
use crate::tunnel::Engine;
use crate::{files, underlay};

/// Quiet time after a batch of BGP route changes before the reconcile that checks them.
const BGP_CHECK_DELAY: Duration = Duration::from_millis(200);

/// At most this many speaker events (each the route changes of one UPDATE, up to about a
/// thousand) are taken per programming step.
const BGP_BATCH: usize = 32;

/// The last this many lease events are kept for `twill status`.
const LEASE_EVENTS_KEPT: usize = 16;

/// Name of the masquerade chain of the cluster's pools (reserved: no CNI network may use it).
pub const NAT_NETWORK: &str = node::AGENT_NAT_NETWORK;

/// How the agent was started (`twill agent ...`).
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `etcd://HOST:PORT[,...]`, `embedded` or `embedded:PATH`.
    pub store: String,
    /// TLS files and user for etcd (`--etcd-cafile ...`); empty for plain etcd or embedded.
    pub etcd: twill_store::EtcdAuth,
    pub node_name: String,
    pub public_ip: Option<Ipv4Addr>,
    pub iface: Option<String>,
    /// Where the node file and status live (the CNI plugin's `dataDir`).
    pub data_dir: PathBuf,
    /// TTL of the node's lease; renewed every third of it.
    pub lease_ttl: Duration,
    /// How often the kernel state is re-read and repaired even without store events.
    pub resync: Duration,
    /// Let the kernel fast path (tc BPF) carry ipip traffic; the userspace engine alone if
    /// false.
    pub kernel_path: bool,
}

/// Runs the agent until SIGTERM/SIGINT or `twill node leave` (Ok) or a fatal error (Err: the
/// process exits non-zero, so a supervisor's `Restart=on-failure` restarts it).
pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    // Files and directories the agent (or a library it calls) creates are private even where
    // a mode is not given explicitly; the agent's own state sets its modes explicitly anyway.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    files::private_dir(&opts.data_dir)?;
    let store = connect(&opts.store, &opts.etcd).await?;
    let config = wait_for_config(&store).await?;
    let backend = twill_backend::for_config(&config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let underlay = underlay::discover(opts.iface.as_deref(), opts.public_ip)?;
    info!(
        iface = %underlay.iface, address = %underlay.net, mtu = underlay.mtu,
        "underlay found"
    );
    let mut node = LocalNode {
        name: opts.node_name.clone(),
        subnet: Ipv4Net::default(),
        public_net: underlay.net,
        underlay_dev: underlay.iface.clone(),
        underlay_mtu: underlay.mtu,
    };
    let node_path = node::node_file(&opts.data_dir);
    let previous: Option<NodeFile> = files::read_json(&node_path).unwrap_or(None);
    let previous_subnet = previous
        .filter(|n| n.node == opts.node_name)
        .map(|n| n.subnet);
    // A node file of ours means an agent ran here before: this start is a restart.
    let restarting = previous_subnet.is_some();
    // A leave marker of an earlier `twill node leave` must not make this run leave.
    lease::clear_leave_marker(&store, &opts.node_name).await?;
    let held = lease::acquire(
        &store,
        &config,
        backend.local_lease(&node),
        previous_subnet,
        opts.lease_ttl,
    )
    .await?;
    node.subnet = held.lease.subnet;
    info!(subnet = %node.subnet, key = %held.key, "lease held");
    let node_file = NodeFile {
        node: opts.node_name.clone(),
        subnet: node.subnet,
        mtu: backend.pod_mtu(&node),
        backend: config.backend.kind,
        cluster_networks: config.pools.iter().map(|p| p.cidr).collect(),
        policy: true,
    };
    // Policy first: the socket must answer before the node file tells plugins to ask it.
    let policy = crate::policy_sync::SharedStatus::default();
    let policy_task = crate::policy_sync::spawn(
        store.clone(),
        opts.node_name.clone(),
        opts.data_dir.clone(),
        opts.resync,
        policy.clone(),
    )?;
    files::write_json(&node_path, &node_file)?;
    twill_netlink::sysctl::set("net/ipv4/ip_forward", "1").context("enabling IPv4 forwarding")?;

    let nl = Rtnl::new().context("opening the agent's netlink socket")?;
    let bgp = match config.bgp.clone() {
        Some(cfg) => Some(
            crate::bgp::BgpSide::start(cfg, &node, restarting)
                .await
                .context("starting the BGP speaker")?,
        ),
        None => None,
    };
    // The one writer of peer routes, devices, neighbours and FDB entries; only BGP hands it
    // partial plans, so only with BGP are their outcomes awaited.
    let (reconciler, outcomes) = Reconciler::start(nl.clone());
    let route_outcomes = bgp.is_some().then_some(outcomes);
    // A restart with BGP: the routes the previous agent left are kept while peers come back.
    // They are read here, once, before anything is written.
    let retained = match &bgp {
        Some(b) if restarting => retained_routes(&nl, b.settle_deadline()).await,
        _ => None,
    };
    let mut agent = Agent {
        bgp,
        retained,
        reconciler,
        opts: opts.clone(),
        store: store.clone(),
        config,
        backend,
        node,
        held,
        peers: BTreeMap::new(),
        in_sync: false,
        nl,
        synced_once: false,
        started,
        tunnel: None,
        last_peers: Vec::new(),
        status_written: None,
        node_file,
        policy,
        hostguard: Default::default(),
        policy_task,
        lease_events: Vec::new(),
        lease_lost: false,
    };
    agent.main_loop(route_outcomes).await
}

/// The routes of twill's that the kernel holds now, to keep until `until` (None when the
/// kernel cannot be read: nothing is kept then).
async fn retained_routes(nl: &Rtnl, until: std::time::Instant) -> Option<crate::bgp::Retained> {
    match reconcile::observe(nl, &DesiredState::default()).await {
        Ok(observed) => {
            let retained = crate::bgp::Retained::from_observed(&observed.routes, until);
            info!(
                routes = retained.routes.len(),
                "graceful restart: keeping the routes found"
            );
            Some(retained)
        }
        Err(e) => {
            warn!("reading the routes to keep while BGP comes back: {e}");
            None
        }
    }
}

/// Connects to the store, retrying while it is unreachable (the agent may start before etcd).
async fn connect(url: &str, auth: &twill_store::EtcdAuth) -> anyhow::Result<Store> {
    let mut delay = Duration::from_millis(100);
    loop {
        match Store::connect_with(url, auth).await {
            Ok(store) => return Ok(store),
            Err(e) if !e.is_retryable() => bail!("--store {url}: {e}"),
            Err(e) => {
                warn!("store {url} not usable yet: {e}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// Waits until `twill cluster init` has written the cluster config.
async fn wait_for_config(store: &Store) -> anyhow::Result<ClusterConfig> {
    let mut warned = false;
    loop {
        match store.get(CONFIG_KEY).await {
            Ok(Some(kv)) => {
                return ClusterConfig::from_json(&String::from_utf8_lossy(&kv.value)).map_err(
                    |e| anyhow::anyhow!("the cluster config at {CONFIG_KEY} is invalid: {e}"),
                );
            }
            Ok(None) if !warned => {
                warn!("no cluster config at {CONFIG_KEY} yet: run `twill cluster init`; waiting");
                warned = true;
            }
            Ok(None) => {}
            Err(e) => warn!("reading the cluster config: {e}; retrying"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

struct Agent {
    /// The BGP speaker, when the cluster config has a bgp section.
    bgp: Option<crate::bgp::BgpSide>,
    /// Routes of a previous agent kept until BGP settles (a restart with BGP only).
    retained: Option<crate::bgp::Retained>,
    /// Writes the peer dataplane: full reconciles, and BGP route changes between them.
    reconciler: Reconciler,
    opts: AgentOptions,
    store: Store,
    config: ClusterConfig,
    backend: Box<dyn Backend + Send + Sync>,
    node: LocalNode,
    held: Held,
    /// Every lease in the store, by key (our own included).
    peers: BTreeMap<String, Lease>,
    in_sync: bool,
    nl: Rtnl,
    synced_once: bool,
    started: Instant,
    /// The userspace tunnel engine (udp, ipip backends).
    tunnel: Option<Engine>,
    /// Peers as last reconciled, for status rewrites between reconciles (tunnel counters).
    last_peers: Vec<PeerStatus>,
    /// The fingerprint of the status last written but for its time (nothing is written while
    /// it stays the same).
    status_written: Option<u64>,
    /// What the CNI plugin reads from disk.
    node_file: NodeFile,
    /// Network policy's state, kept by its task.
    policy: crate::policy_sync::SharedStatus,
    /// Workload-to-host protection and the VXLAN senders' check (`inet twill-host`).
    hostguard: twill_dataplane::hostguard::HostGuard,
    /// The policy task; it ends only when it fails.
    policy_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// What happened to the lease behind the agent's back, for `twill status`.
    lease_events: Vec<LeaseEvent>,
    /// The lease was lost (deleted, taken, expired) and leasing again has not succeeded yet.
    lease_lost: bool,
}

/// What the store says about our lease.
enum LeaseCheck {
    /// Ours, or nothing certain (the store did not answer): look again later.
    Held,
    /// `twill node leave` removed it.
    Left,
    /// Lost some other way: `(event, message)`.
    Lost(&'static str, String),
}

/// What ended the loop.
enum Exit {
    Signal,
    Left,
}

impl Agent {
    async fn main_loop(
        &mut self,
        mut route_outcomes: Option<mpsc::UnboundedReceiver<Vec<String>>>,
    ) -> anyhow::Result<()> {
        let mut events = twill_store::mirror(self.store.clone(), LEASES_PREFIX.to_string());
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut renew = tokio::time::interval(self.opts.lease_ttl / 3);
        renew.tick().await;
        let mut resync = tokio::time::interval(self.opts.resync);
        resync.tick().await;
        // Tunnel counters change with every packet; status shows them at this pace.
        let mut counters = tokio::time::interval(Duration::from_secs(1));
        let policy = self.policy.clone();
        let mut bgp_events = self.bgp.as_mut().and_then(|b| b.take_events());
        let mut bgp_peers = self
            .bgp
            .is_some()
            .then(|| twill_store::mirror(self.store.clone(), BGP_PEERS_PREFIX.to_string()));
        if let Some(b) = &mut self.bgp {
            // External peers of the config need no lease: start their sessions now.
            b.sync_peers(&[]);
        }
        // When to reconcile after the last batch of BGP route changes.
        let mut bgp_check: Option<tokio::time::Instant> = None;
        let exit = loop {
            tokio::select! {
                ev = recv_or_never(&mut bgp_events) => {
                    let Some(ev) = ev else { bail!("the BGP speaker stopped") };
                    let b = self.bgp.as_mut().expect("events imply a speaker");
                    let mut dirty = b.on_event(ev);
                    // A table arrives as a stream of changes: program what is queued now,
                    // without waiting for the rest, so the kernel fills while more arrives
                    // (the next batch is whatever queued up meanwhile).
                    let rx = bgp_events.as_mut().expect("just received");
                    for _ in 0..BGP_BATCH {
                        let Some(ev) = rx.try_one() else { break };
                        dirty |= b.on_event(ev);
                    }
                    if dirty {
                        // bench/bgp.sh reads this to time the table's arrival.
                        tracing::debug!(learned = b.learned_len(), "bgp: learned routes changed");
                    }
                    if dirty && self.in_sync {
                        self.program_bgp_changes().await;
                    }
                }
                failed = recv_or_never(&mut route_outcomes) => {
                    let Some(failed) = failed else { bail!("the reconciler stopped") };
                    if failed.is_empty() {
                        // Once the burst is over: read back, repair if needed, and write the
                        // status (the deltas themselves never read the kernel).
                        bgp_check = Some(tokio::time::Instant::now() + BGP_CHECK_DELAY);
                    } else {
                        for f in failed {
                            warn!("{f}");
                        }
                        // Whatever the kernel holds now, the reconcile makes it right.
                        if self.in_sync {
                            self.reconcile().await;
                        }
                    }
                }
                _ = sleep_until_opt(bgp_check) => {
                    bgp_check = None;
                    if self.in_sync {
                        self.reconcile().await;
                    }
                }
                ev = recv_or_never(&mut bgp_peers) => {
                    let Some(ev) = ev else { bail!("the store mirror of BGP peers stopped") };
                    let b = self.bgp.as_mut().expect("mirror implies a speaker");
                    if b.on_store_event(ev) {
                        let leases = self.lease_list();
                        if let Some(b) = &mut self.bgp {
                            b.sync_peers(&leases);
                        }
                    }
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { bail!("the store mirror stopped") };
                    let mut dirty = self.on_event(ev).await?;
                    // Take everything already queued (and whatever follows within 2 ms of the
                    // last event, for at most 100 ms) so a burst of leases costs one
                    // reconcile, not one per lease.
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
                    while let Ok(Some(ev)) =
                        tokio::time::timeout_at(deadline, next_soon(&mut events)).await
                    {
                        dirty |= self.on_event(ev).await?;
                    }
                    if self.check_lease().await {
                        break Exit::Left;
                    }
                    if dirty && self.in_sync {
                        self.reconcile().await;
                    }
                }
                _ = resync.tick() => if self.in_sync { self.reconcile().await },
                _ = policy.changed.notified() => self.write_status(None),
                _ = counters.tick() => {
                    let mut bgp_changed = false;
                    if let Some(b) = &mut self.bgp {
                        let was = b.settled_now();
                        if b.settled() && !was && self.in_sync {
                            // The old routes kept for graceful restart may go now.
                            self.reconcile().await;
                        }
                        if let Some(b) = &mut self.bgp {
                            bgp_changed = b.refresh_status().await;
                        }
                    }
                    if bgp_changed || self.tunnel.is_some() {
                        self.write_status(None)
                    }
                }
                res = &mut self.policy_task => {
                    match res {
                        Ok(Ok(())) => bail!("network policy stopped"),
                        Ok(Err(e)) => bail!("network policy stopped: {e:#}"),
                        Err(e) => bail!("network policy stopped: {e}"),
                    }
                }
                _ = renew.tick() => {
                    if self.check_lease().await {
                        break Exit::Left;
                    }
                    if !self.renew().await {
                        // Retry soon rather than a third of the TTL later: two missed renewals
                        // in a row could let the lease expire.
                        renew.reset_after(Duration::from_secs(1));
                    }
                }
                _ = sigterm.recv() => break Exit::Signal,
                _ = sigint.recv() => break Exit::Signal,
            }
        };
        match exit {
            Exit::Signal => {
                // The BGP sessions end without a NOTIFICATION when the process exits, so
                // peers keep our routes (graceful restart) until the next agent's End-of-RIB.
                info!("stopping; the dataplane stays as it is");
                if let Some(engine) = self.tunnel.take() {
                    engine.shutdown();
                }
                Ok(())
            }
            Exit::Left => {
                info!("this node's lease was removed (twill node leave): clearing local state");
                if let Some(b) = &self.bgp {
                    // Cease: peers drop our routes now instead of keeping them as stale.
                    let _ = b.speaker.shutdown().await;
                }
                if let Some(engine) = self.tunnel.take() {
                    engine.shutdown();
                }
                clear_local_state(&self.nl, &self.opts.data_dir).await
            }
        }
    }

    /// Applies one store event to the peer map; true when it changed something.
    async fn on_event(&mut self, ev: MirrorEvent) -> anyhow::Result<bool> {
        match ev {
            MirrorEvent::InSync(all) => {
                let (leases, warnings) = lease::decode_all(&self.config, &all);
                for w in warnings {
                    warn!("{w}");
                }
                self.peers = leases.into_iter().collect();
                if !self.in_sync {
                    info!(leases = self.peers.len(), "in sync with the store");
                }
                self.in_sync = true;
                Ok(true)
            }
            MirrorEvent::Put(kv) => match lease::admit(&self.config, &kv) {
                Ok(lease) => Ok(self.peers.insert(kv.key, lease.clone()) != Some(lease)),
                Err(w) => {
                    warn!("{w}");
                    Ok(self.peers.remove(&kv.key).is_some())
                }
            },
            MirrorEvent::Delete(key) => Ok(self.peers.remove(&key).is_some()),
            MirrorEvent::Lost(why) => {
                warn!("lost the store ({why}); keeping the dataplane as it is");
                self.in_sync = false;
                self.write_status(None);
                Ok(false)
            }
        }
    }

    /// Looks at our lease when the mirror no longer shows it as ours; true when `twill node
    /// leave` removed it (it leaves a marker before deleting the lease). Any other loss (the
    /// key deleted by hand, another node's lease under it, the store lease expired) is not a
    /// leave: the agent leases again and keeps the dataplane.
    async fn check_lease(&mut self) -> bool {
        if !self.in_sync || self.lease_lost {
            return false;
        }
        if self
            .peers
            .get(&self.held.key)
            .is_some_and(|l| l.node == self.node.name)
        {
            return false;
        }
        match self.lease_state().await {
            LeaseCheck::Held => false,
            LeaseCheck::Left => true,
            LeaseCheck::Lost(event, message) => {
                self.lose_lease(event, message).await;
                false
            }
        }
    }

    /// Asks the store itself (not the mirror, whose queued events may predate a re-lease).
    async fn lease_state(&mut self) -> LeaseCheck {
        match self.store.get(&self.held.key).await {
            Ok(Some(kv)) => match lease::admit(&self.config, &kv) {
                Ok(lease) if lease.node == self.node.name => {
                    self.peers.insert(kv.key, lease);
                    LeaseCheck::Held
                }
                Ok(lease) => LeaseCheck::Lost(
                    "taken",
                    format!(
                        "our lease {} was taken: node {} holds it now",
                        self.held.key, lease.node
                    ),
                ),
                Err(w) => LeaseCheck::Lost(
                    "taken",
                    format!("our lease {} was overwritten ({w})", self.held.key),
                ),
            },
            Ok(None) => match lease::leave_marker(&self.store, &self.node.name).await {
                Ok(true) => LeaseCheck::Left,
                Ok(false) => match self.store.keep_alive(self.held.store_lease).await {
                    Err(StoreError::LeaseNotFound) => {
                        LeaseCheck::Lost("expired", "our lease expired".to_string())
                    }
                    _ => LeaseCheck::Lost(
                        "deleted",
                        format!(
                            "our lease {} was deleted from the store, and not by a leave \
                             (no leave marker)",
                            self.held.key
                        ),
                    ),
                },
                Err(e) => {
                    warn!("checking for a leave marker: {e}");
                    LeaseCheck::Held
                }
            },
            Err(e) => {
                warn!("checking our lease: {e}");
                LeaseCheck::Held
            }
        }
    }

    /// The lease is gone without a leave: record it, say so, and lease again (the dataplane
    /// is left as it is meanwhile: pods keep talking).
    async fn lose_lease(&mut self, event: &'static str, message: String) -> bool {
        warn!(
            subnet = %self.node.subnet, event,
            "{message}; leasing again, the dataplane stays as it is"
        );
        self.lease_events.push(LeaseEvent {
            at: unix_now(),
            event: event.to_string(),
            subnet: self.node.subnet,
            leased_again: None,
            message: format!("{message}; leasing again"),
        });
        if self.lease_events.len() > LEASE_EVENTS_KEPT {
            self.lease_events.remove(0);
        }
        self.lease_lost = true;
        let ok = self.lease_again().await;
        if !ok {
            self.write_status(None);
        }
        ok
    }

    /// Renews the lease (or, after a loss, leases again); false when that failed (retry soon).
    async fn renew(&mut self) -> bool {
        if self.lease_lost {
            return self.lease_again().await;
        }
        match self.store.keep_alive(self.held.store_lease).await {
            Ok(_) => true,
            Err(StoreError::LeaseNotFound) => {
                self.lose_lease("expired", "our lease expired".to_string())
                    .await
            }
            Err(e) => {
                warn!("renewing the lease failed ({e}); retrying in 1 s");
                false
            }
        }
    }

    /// [`Agent::reacquire`], logging instead of failing: the store may be coming back.
    async fn lease_again(&mut self) -> bool {
        let before = self.node.subnet;
        match self.reacquire().await {
            Ok(()) => {
                self.lease_lost = false;
                let now = self.node.subnet;
                let message = if now == before {
                    format!("leased {now} again")
                } else {
                    format!("{before} was taken; leased {now} (new pods use it)")
                };
                info!(subnet = %now, key = %self.held.key, "{message}");
                if let Some(ev) = self.lease_events.last_mut() {
                    ev.leased_again = Some(now);
                    ev.message = format!("{}; {message}", ev.message);
                }
                self.write_status(None);
                true
            }
            Err(e) => {
                warn!("leasing again failed: {e:#}; retrying in 1 s");
                false
            }
        }
    }

    /// Takes the same subnet again if it is still free (a new one otherwise), with a new store
    /// lease; the old store lease, if it still lives, keeps nothing any more and is revoked.
    async fn reacquire(&mut self) -> anyhow::Result<()> {
        let held = lease::acquire(
            &self.store,
            &self.config,
            self.held.lease.clone(),
            Some(self.node.subnet),
            self.opts.lease_ttl,
        )
        .await?;
        if held.lease.subnet != self.node.subnet {
            // Pods already running hold addresses of the old subnet: say so loudly.
            warn!(
                old = %self.node.subnet, new = %held.lease.subnet,
                "the old subnet was taken by another node; new pods use the new one"
            );
            self.node.subnet = held.lease.subnet;
            self.node_file.subnet = held.lease.subnet;
            files::write_json(&node::node_file(&self.opts.data_dir), &self.node_file)?;
        }
        let old = self.held.store_lease;
        self.peers.insert(held.key.clone(), held.lease.clone());
        self.held = held;
        if old != self.held.store_lease {
            let _ = self.store.revoke_lease(old).await;
        }
        Ok(())
    }

    /// Every lease but ours.
    fn lease_list(&self) -> Vec<Lease> {
        self.peers
            .values()
            .filter(|l| l.node != self.node.name)
            .cloned()
            .collect()
    }

    /// Computes the desired state from the peer map and makes the kernel match it.
    async fn reconcile(&mut self) {
        let peers = self.lease_list();
        let mut desired = self.backend.desired(&self.node, &peers);
        if let Some(b) = &mut self.bgp {
            b.sync_peers(&peers);
            b.add_routes(&self.node, &mut desired);
            let settled = b.settled();
            if let Some(retained) = &self.retained {
                if retained.holds(settled, std::time::Instant::now()) {
                    retained.add_missing(&mut desired);
                } else {
                    info!(
                        routes = retained.routes.len(),
                        "graceful restart over: routes BGP did not learn again go"
                    );
                    self.retained = None;
                }
            }
        }
        if let Err(e) = self.ensure_tunnel(&desired).await {
            warn!("{e:#}");
        }
        if let Err(e) = self.update_nat() {
            warn!("natOutgoing: {e:#}");
        }
        if let Err(e) = self.update_hostguard(&peers) {
            warn!("host protection: {e:#}");
        }
        let observed = self.apply(&desired).await.map_err(|e| {
            warn!("programming the dataplane: {e:#}");
        });
        if let Some(b) = &mut self.bgp {
            b.reconciled(&desired);
        }
        if !self.synced_once {
            self.synced_once = true;
            info!(
                peers = peers.len(),
                elapsed_ms = self.started.elapsed().as_millis() as u64,
                "first reconcile done"
            );
        }
        if let Some(b) = &mut self.bgp {
            // Sessions and routes as of this reconcile, so status never lags the kernel.
            b.refresh_status().await;
        }
        match &observed {
            // Nothing read because nothing changed: the peers are as the last status says.
            Ok(None) => self.write_status(None),
            Ok(Some(observed)) => self.write_status(Some((&desired, Some(observed)))),
            Err(()) => self.write_status(Some((&desired, None))),
        }
    }

    /// Hands the learned routes that changed since the last reconcile or delta (only those)
    /// to the reconciler as a partial plan, without waiting for the kernel (a failure there falls back to a
    /// full reconcile).
    async fn program_bgp_changes(&mut self) {
        let peers = self.lease_list();
        let desired = self.backend.desired(&self.node, &peers);
        let Some(b) = &mut self.bgp else {
            return;
        };
        let plan = b.take_delta(&self.node, &desired);
        if !plan.is_empty() {
            self.reconciler.submit(plan);
            // Let the writer start on it now: this loop would otherwise go on taking queued
            // events first, and the kernel would sit idle meanwhile.
            tokio::task::yield_now().await;
        }
    }

    /// Starts, restarts or stops the tunnel engine to match the desired state, and gives it
    /// the current peers (before routes into it are added, so the first packet finds its peer).
    async fn ensure_tunnel(&mut self, desired: &DesiredState) -> anyhow::Result<()> {
        let subnet = self.node.subnet;
        match (&desired.tunnel, &self.tunnel) {
            (Some(spec), Some(engine)) if engine.runs(spec, subnet) => {}
            (Some(spec), _) => {
                if let Some(old) = self.tunnel.take() {
                    old.shutdown();
                }
                let engine = Engine::start(spec, subnet, self.opts.kernel_path)?;
                engine.set_peers(&desired.tunnel_peers);
                info!(device = %spec.name, "tunnel engine running");
                self.tunnel = Some(engine);
                self.address_tunnel(&spec.name).await?;
            }
            (None, Some(_)) => {
                if let Some(old) = self.tunnel.take() {
                    old.shutdown();
                }
                crate::tunnel::remove_device(twill_backend::tunnel::DEVICE)?;
            }
            (None, None) => {}
        }
        if let Some(engine) = &self.tunnel {
            engine.set_peers(&desired.tunnel_peers);
        }
        Ok(())
    }

    /// Gives the TUN device the node subnet's network address (as Flannel does with flannel0,
    /// and twill with its VXLAN device), so traffic the host itself sends to peers' pods has a
    /// source inside this node's subnet and passes the peers' inner-source check.
    async fn address_tunnel(&self, name: &str) -> anyhow::Result<()> {
        let want = Ipv4Net::new(self.node.subnet.network(), 32).expect("/32 is valid");
        Ok(reconcile::set_only_address(&self.nl, name, want).await?)
    }

    /// Has the reconciler make the kernel match `desired` (after the BGP changes handed over
    /// before); returns what the kernel holds afterwards (None: it was not read, as it holds
    /// the desired state of the last reconcile, which was this one).
    async fn apply(&mut self, desired: &DesiredState) -> anyhow::Result<Option<Observed>> {
        let reconciled = self.reconciler.reconcile(desired.clone()).await?;
        Ok(reconciled.observed)
    }

    fn update_nat(&self) -> anyhow::Result<()> {
        let dir = self.opts.data_dir.join("firewall");
        if self.config.pools.iter().any(|p| p.nat_outgoing) {
            let ranges: Vec<IpNet> = self
                .config
                .pools
                .iter()
                .map(|p| IpNet::V4(p.cidr))
                .collect();
            twill_dataplane::firewall::ensure_masquerade(&dir, NAT_NETWORK, &ranges)?;
        } else {
            twill_dataplane::firewall::remove_masquerade(&dir, NAT_NETWORK)?;
        }
        Ok(())
    }

    /// What pods may reach of the nodes, and who may send to the VXLAN port (before routes to
    /// new peers exist, so their traffic is accepted as soon as it can come).
    fn update_hostguard(&mut self, peers: &[Lease]) -> anyhow::Result<()> {
        use twill_dataplane::hostguard::{Applied, Spec, store_endpoints};
        let endpoints = store_endpoints(&self.opts.store);
        let addr = self.node.public_net.addr();
        let spec = Spec::for_node(&self.config, self.node.subnet, addr, peers, &endpoints);
        if self.hostguard.apply(&spec)? == Applied::Table {
            info!("host protection table inet twill-host written");
        }
        Ok(())
    }

    /// Writes status.json: the peers of `state` (or, with None, those of the last reconcile),
    /// in_sync, and fresh tunnel counters.
    fn policy_now(&self) -> PolicyStatus {
        self.policy
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn write_status(&mut self, state: Option<(&DesiredState, Option<&Observed>)>) {
        if let Some((desired, observed)) = state {
            self.last_peers = peer_status(desired, observed, &self.reconciler.errors());
        }
        let path = self.opts.data_dir.join(node::STATUS_FILE);
        let mut peers = self.last_peers.clone();
        let tunnel = self.tunnel.as_ref().map(|engine| {
            let (counters, status) = engine.status();
            for p in &mut peers {
                p.counters = counters.get(&p.node).copied();
            }
            status
        });
        let mut status = AgentStatus {
            node: self.node.name.clone(),
            subnet: self.node.subnet,
            backend: self.config.backend.kind,
            public_ip: self.node.public_net.addr(),
            store: self.store.describe(),
            in_sync: self.in_sync,
            pid: std::process::id(),
            updated: 0,
            peers,
            tunnel,
            policy: Some(self.policy_now()),
            bgp: self.bgp.as_ref().and_then(|b| b.status.clone()),
            lease_events: self.lease_events.clone(),
        };
        // A resync that changed nothing leaves the file (and its time) as it is.
        let fingerprint = files::json_fingerprint(&status).ok();
        if fingerprint.is_some() && fingerprint == self.status_written {
            return;
        }
        status.updated = unix_now();
        self.status_written = None;
        match files::write_json(&path, &status) {
            Ok(()) => self.status_written = fingerprint,
            Err(e) => warn!("writing {}: {e:#}", path.display()),
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Each peer of the desired state, and whether the kernel holds everything it needs.
/// `errors` are the reconciler's objects in error: a peer that misses one says why the kernel
/// refused it.
fn peer_status(
    desired: &DesiredState,
    observed: Option<&Observed>,
    errors: &BTreeMap<ObjectKey, ObjectStatus>,
) -> Vec<PeerStatus> {
    let index = observed.map(|obs| Index::new(desired, obs));
    desired
        .peers
        .iter()
        .map(|p| {
            let error = match (&p.path, &index) {
                (PeerPath::Skipped(_), _) => None,
                (_, None) => Some("the kernel state could not be read".to_string()),
                (PeerPath::Bgp, Some(index)) if !index.routes.contains_key(&p.subnet) => {
                    Some("no route learned by BGP yet".to_string())
                }
                (_, Some(index)) => index.missing_for_peer(p.subnet).map(|missing| {
                    with_kernel_reasons(missing, &index.keys_of_peer(p.subnet), errors)
                }),
            };
            PeerStatus {
                node: p.node.clone(),
                subnet: p.subnet,
                public_ip: p.public_ip,
                programmed: !matches!(p.path, PeerPath::Skipped(_)) && error.is_none(),
                path: p.path.clone(),
                error,
                counters: None,
            }
        })
        .collect()
}

/// Desired and observed state indexed for per-peer lookups, so a status of N peers costs O(N).
struct Index<'a> {
    routes: HashMap<Ipv4Net, Vec<&'a RouteSpec>>,
    neighbours: HashMap<Ipv4Addr, Vec<&'a NeighSpec>>,
    fdb: HashMap<MacAddr, Vec<&'a FdbSpec>>,
    held_routes: HashSet<&'a ObservedRoute>,
    held_neighbours: HashSet<&'a NeighSpec>,
    held_fdb: HashSet<&'a ObservedFdb>,
}

impl<'a> Index<'a> {
    fn new(desired: &'a DesiredState, obs: &'a Observed) -> Index<'a> {
        let mut index = Index {
            routes: HashMap::new(),
            neighbours: HashMap::new(),
            fdb: HashMap::new(),
            held_routes: obs.routes.iter().collect(),
            held_neighbours: obs.neighbours.iter().collect(),
            held_fdb: obs.fdb.iter().collect(),
        };
        for r in &desired.routes {
            index.routes.entry(r.dst).or_default().push(r);
        }
        for n in &desired.neighbours {
            index.neighbours.entry(n.ip).or_default().push(n);
        }
        for f in &desired.fdb {
            index.fdb.entry(f.mac).or_default().push(f);
        }
        index
    }

    /// The reconciler's keys of a peer's route, neighbour and FDB entry.
    fn keys_of_peer(&self, subnet: Ipv4Net) -> Vec<ObjectKey> {
        let mut keys = vec![ObjectKey::Route(subnet)];
        for neigh in self.neighbours.get(&subnet.network()).into_iter().flatten() {
            keys.push(ObjectKey::Neighbour(neigh.ip));
            keys.push(ObjectKey::Fdb(neigh.mac));
        }
        keys
    }

    /// What the kernel lacks of a peer's desired route, neighbour and FDB entry.
    fn missing_for_peer(&self, subnet: Ipv4Net) -> Option<String> {
        let mut missing = Vec::new();
        for route in self.routes.get(&subnet).into_iter().flatten() {
            if !self.held_routes.contains(&ObservedRoute::from_spec(route)) {
                missing.push(format!("route {} via {}", route.dst, route.via));
            }
        }
        for neigh in self.neighbours.get(&subnet.network()).into_iter().flatten() {
            if !self.held_neighbours.contains(neigh) {
                missing.push(format!("neighbour {}", neigh.ip));
            }
            for fdb in self.fdb.get(&neigh.mac).into_iter().flatten() {
                if !self.held_fdb.contains(&ObservedFdb::from_spec(fdb)) {
                    missing.push(format!("fdb {} dst {}", fdb.mac, fdb.dst));
                }
            }
        }
        (!missing.is_empty()).then(|| format!("missing: {}", missing.join(", ")))
    }
}

/// `missing`, followed by why the kernel refused those of `keys` in error (and how often).
fn with_kernel_reasons(
    missing: String,
    keys: &[ObjectKey],
    errors: &BTreeMap<ObjectKey, ObjectStatus>,
) -> String {
    let reasons: Vec<String> = keys
        .iter()
        .filter_map(|key| match errors.get(key) {
            Some(ObjectStatus::Error {
                reason, attempts, ..
            }) => Some(format!("{reason} (attempt {attempts}, retrying)")),
            _ => None,
        })
        .collect();
    if reasons.is_empty() {
        missing
    } else {
        format!("{missing}; refused: {}", reasons.join("; "))
    }
}

/// Sleeps until `at`; never, when there is no deadline.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next message of an optional channel; never, when there is no channel.
async fn recv_or_never<T: Recv>(rx: &mut Option<T>) -> Option<T::Item> {
    match rx {
        Some(rx) => rx.recv_one().await,
        None => std::future::pending().await,
    }
}

/// Bounded and unbounded receivers alike.
trait Recv {
    type Item;
    async fn recv_one(&mut self) -> Option<Self::Item>;
    fn try_one(&mut self) -> Option<Self::Item>;
}

impl<T> Recv for mpsc::Receiver<T> {
    type Item = T;
    async fn recv_one(&mut self) -> Option<T> {
        self.recv().await
    }
    fn try_one(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

impl<T> Recv for mpsc::UnboundedReceiver<T> {
    type Item = T;
    async fn recv_one(&mut self) -> Option<T> {
        self.recv().await
    }
    fn try_one(&mut self) -> Option<T> {
        self.try_recv().ok()
    }
}

/// Waits for the next event only if one is ready (or arrives within 2 ms).
async fn next_soon<R: Recv>(events: &mut R) -> Option<R::Item> {
    if let Some(ev) = events.try_one() {
        return Some(ev);
    }
    tokio::time::timeout(Duration::from_millis(2), events.recv_one())
        .await
        .ok()
        .flatten()
}

/// Removes everything the agent made on this node: peer routes, the VXLAN device, the cluster's
/// masquerade chain, the host protection table, the node and status files.
pub async fn clear_local_state(nl: &Rtnl, data_dir: &std::path::Path) -> anyhow::Result<()> {
    if nl
        .link_by_name(twill_backend::tunnel::DEVICE)
        .await?
        .is_some()
    {
        crate::tunnel::remove_device(twill_backend::tunnel::DEVICE)?;
    }
    let report = reconcile::remove_all(nl).await?;
    if !report.failures.is_empty() {
        anyhow::bail!("removing twill's routes and devices: {report}");
    }
    twill_dataplane::firewall::remove_masquerade(&data_dir.join("firewall"), NAT_NETWORK)?;
    twill_dataplane::hostguard::remove()?;
    twill_dataplane::policy::apply("removing the policy table", &twill_policy::render::remove())?;
    files::remove(&node::node_file(data_dir))?;
    files::remove(&data_dir.join(node::STATUS_FILE))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_object_in_error_carries_the_kernels_reason() {
        let route = ObjectKey::Route("10.244.2.0/24".parse().unwrap());
        let neighbour = ObjectKey::Neighbour("10.244.2.0".parse().unwrap());
        let mut errors = BTreeMap::new();
        errors.insert(
            route.clone(),
            ObjectStatus::Error {
                reason: "add route 10.244.2.0/24 via 10.244.2.0 dev twill.1 onlink: File exists"
                    .into(),
                attempts: 3,
                retry_at: std::time::Instant::now(),
            },
        );
        let missing = "missing: route 10.244.2.0/24 via 10.244.2.0".to_string();
        assert_eq!(
            with_kernel_reasons(missing.clone(), &[route, neighbour.clone()], &errors),
            "missing: route 10.244.2.0/24 via 10.244.2.0; refused: add route 10.244.2.0/24 \
             via 10.244.2.0 dev twill.1 onlink: File exists (attempt 3, retrying)"
        );
        assert_eq!(
            with_kernel_reasons(missing.clone(), &[neighbour], &errors),
            missing
        );
    }
}
