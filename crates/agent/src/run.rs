//! The agent's main loop: the I/O shell around [`crate::core`]. Tasks (the store mirrors,
//! the BGP speaker, timers, the policy task, signals) become events; the core's actions
//! become store calls, speaker calls, reconciles and status writes.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use ipnet::IpNet;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tracing::{info, warn};
use twill_backend::LocalNode;
use twill_dataplane::reconcile::{
    self, ObjectKey, ObjectStatus, Observed, ObservedFdb, ObservedRoute, Reconciler, Rtnl,
};
use twill_store::{Store, StoreError};
use twill_types::cluster::{BgpPeer, ClusterConfig};
use twill_types::desired::{DesiredState, NeighSpec, PeerPath, RouteSpec};
use twill_types::keys::{BGP_PEERS_PREFIX, CONFIG_KEY, LEASES_PREFIX};
use twill_types::lease::Lease;
use twill_types::node::{self, AgentStatus, NodeFile, PolicyStatus};

use crate::core::{
    Action, BgpStart, Core, Event, ExitReason, Input, Kv, LeaseCheck, LeaseHeld, Level, Missing,
    NodeSetup, ObjectRef, ReconcileOutcome, Record, Refused, Renewal, Start, Status, StoreEvent,
};
use crate::lease::{self, Held};
use crate::tunnel::Engine;
use crate::wg_key::FileId;
use crate::wireguard::WgEngine;
use crate::{files, underlay};

/// How often the WireGuard key file's identity is checked for a rotation (so a new key is in
/// use and published well within a second).
const KEY_CHECK: Duration = Duration::from_millis(250);

/// At most this many speaker events (each the route changes of one UPDATE, up to about a
/// thousand) are taken per programming step.
const BGP_BATCH: usize = 32;

/// Set to a file path, the agent appends each input of its core there as a JSON line (the
/// first line says how the core started), for `tests/replay.rs`; set to a directory, to
/// `<node>.events.jsonl` in it. Inline BGP passwords are replaced by a placeholder.
pub const RECORD_EVENTS_ENV: &str = "TWILL_RECORD_EVENTS";

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
    /// The node's IPv6 underlay address (`--public-ipv6`); it must be on the underlay
    /// interface. Without it a dual-stack node takes that interface's first global one.
    pub public_ipv6: Option<Ipv6Addr>,
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

/// This node before it leases, in an IPv6-only cluster: only an IPv6 underlay (`--public-ipv6`
/// or the first usable global IPv6 address of the underlay interface), no IPv4 at all.
fn ipv6_only_node(opts: &AgentOptions) -> anyhow::Result<LocalNode> {
    if let Some(ip) = opts.public_ip {
        warn!("--public-ip {ip} is ignored: the cluster is IPv6-only");
    }
    let underlay = underlay::discover6(opts.iface.as_deref(), opts.public_ipv6)?;
    info!(
        iface = %underlay.iface, address6 = %underlay.net6, mtu = underlay.mtu,
        "IPv6-only underlay found"
    );
    Ok(LocalNode {
        name: opts.node_name.clone(),
        subnet: None,
        public_net: None,
        underlay_dev: underlay.iface,
        underlay_mtu: underlay.mtu,
        // The lease gives the IPv6 subnet.
        subnet6: None,
        public_net6: Some(underlay.net6),
    })
}

/// This node before it leases, in a cluster with IPv4 pools: its IPv4 underlay, and its IPv6
/// one when the cluster is dual-stack and the interface has one.
fn dual_or_ipv4_node(opts: &AgentOptions, config: &ClusterConfig) -> anyhow::Result<LocalNode> {
    let underlay = underlay::discover(opts.iface.as_deref(), opts.public_ip)?;
    // Checked whatever the cluster (a wrong --public-ipv6 is an error, not ignored), used
    // only where pods have IPv6 addresses.
    let public_net6 =
        underlay::ipv6_of(&underlay.iface, opts.public_ipv6)?.filter(|_| config.has_ipv6());
    info!(
        iface = %underlay.iface, address = %underlay.net, mtu = underlay.mtu,
        address6 = ?public_net6, "underlay found"
    );
    if !config.has_ipv6() && opts.public_ipv6.is_some() {
        warn!("--public-ipv6 is ignored: the cluster has no IPv6 pool");
    }
    if config.has_ipv6() && public_net6.is_none() {
        info!(
            "no global IPv6 address on {}: IPv6 pod traffic goes over the IPv4 underlay",
            underlay.iface
        );
    }
    Ok(LocalNode {
        name: opts.node_name.clone(),
        // The lease gives the subnets (the IPv6 one goes with the IPv4 one).
        subnet: None,
        public_net: Some(underlay.net),
        underlay_dev: underlay.iface,
        underlay_mtu: underlay.mtu,
        subnet6: None,
        public_net6,
    })
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
    let mut node = if config.pools.is_empty() {
        ipv6_only_node(&opts)?
    } else {
        dual_or_ipv4_node(&opts, &config)?
    };
    let node_path = node::node_file(&opts.data_dir);
    let previous: Option<NodeFile> = files::read_json(&node_path).unwrap_or(None);
    let previous = previous.filter(|n| n.node == opts.node_name);
    // A node file of ours means an agent ran here before: this start is a restart.
    let restarting = previous.is_some();
    // The subnet it held: the IPv4 one, or in an IPv6-only cluster the IPv6 one.
    let previous_subnet =
        previous.and_then(|n| n.subnet.map(IpNet::V4).or_else(|| n.subnet6.map(IpNet::V6)));
    // A leave marker of an earlier `twill node leave` must not make this run leave.
    lease::clear_leave_marker(&store, &opts.node_name).await?;
    // WireGuard: this node's key (made at the first start, the same after a restart), whose
    // public half goes into the lease.
    let wg_key = match config.wireguard() {
        Some(_) => Some(crate::wg_key::load_or_create(&opts.data_dir)?),
        None => None,
    };
    let mut local_lease = backend.local_lease(&node);
    local_lease.wireguard_public_key = wg_key.as_ref().map(|(k, _)| k.public_key().to_string());
    let held = lease::acquire(
        &store,
        &config,
        local_lease,
        previous_subnet,
        opts.lease_ttl,
    )
    .await?;
    node.subnet = held.lease.subnet;
    node.subnet6 = held.lease.subnet6;
    if node.public_net.is_some() && node.subnet.is_none() {
        bail!("{} holds no IPv4 subnet", held.key);
    }
    if node.public_net.is_none() && node.subnet6.is_none() {
        bail!("{} holds no IPv6 subnet", held.key);
    }
    info!(subnet = ?node.subnet, subnet6 = ?node.subnet6, key = %held.key, "lease held");
    let node_file = NodeFile {
        node: opts.node_name.clone(),
        subnet: node.subnet,
        mtu: backend.pod_mtu(&node),
        backend: config.backend.kind,
        cluster_networks: config.pools.iter().map(|p| p.cidr).collect(),
        subnet6: held.lease.subnet6,
        cluster_networks6: config.ipv6_pools.iter().map(|p| p.cidr).collect(),
        policy: true,
    };
    let nl = Rtnl::new().context("opening the agent's netlink socket")?;
    // The one writer of twill's kernel objects (the policy table included); only BGP hands
    // it partial plans, so only with BGP are their outcomes awaited.
    let (reconciler, outcomes) = Reconciler::start(nl.clone());
    // Policy first: the socket must answer before the node file tells plugins to ask it.
    let policy = crate::policy_sync::SharedStatus::default();
    let policy_task = crate::policy_sync::spawn(
        store.clone(),
        opts.node_name.clone(),
        opts.data_dir.clone(),
        opts.resync,
        policy.clone(),
        reconciler.policy_writer(),
    )?;
    files::write_json(&node_path, &node_file)?;

    let bgp = match config.bgp.clone() {
        Some(cfg) => Some(
            crate::bgp::BgpSide::start(cfg, &node, restarting)
                .await
                .context("starting the BGP speaker")?,
        ),
        None => None,
    };
    let bgp_started = started.elapsed().as_millis() as u64;
    let route_outcomes = bgp.is_some().then_some(outcomes);
    // A restart with BGP: the routes the previous agent left are kept while peers come back.
    // They are read here, once, before anything is written.
    let retained = match &bgp {
        Some(_) if restarting => retained_routes(&nl).await,
        _ => None,
    };
    let start = Start {
        config: config.clone(),
        node: NodeSetup {
            name: node.name.clone(),
            subnet: node.subnet,
            public_net: node.public_net,
            underlay_dev: node.underlay_dev.clone(),
            underlay_mtu: node.underlay_mtu,
        },
        lease_key: held.key.clone(),
        lease: held.lease.clone(),
        bgp: bgp.as_ref().map(|_| BgpStart {
            started: bgp_started,
            restarting,
            retained,
        }),
        store_endpoints: twill_types::desired::host_guard::store_endpoints(&opts.store),
    };
    let recorder = match std::env::var_os(RECORD_EVENTS_ENV) {
        Some(path) => {
            let mut path = PathBuf::from(path);
            if path.is_dir() {
                // One file per node, so the agents of a lab can share the setting.
                path.push(format!("{}.events.jsonl", opts.node_name));
            }
            Some(open_recording(&path, &start)?)
        }
        None => None,
    };
    let core = Core::new(start).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut agent = Agent {
        core,
        recorder,
        bgp,
        reconciler,
        opts: opts.clone(),
        store: store.clone(),
        config,
        node,
        held,
        nl,
        started,
        tunnel: None,
        wireguard: None,
        wg_key,
        wg_swept: false,
        status_written: None,
        release_after_status: false,
        node_file,
        policy,
        policy_task,
        renew_soon: false,
    };
    agent.main_loop(route_outcomes).await
}

/// Opens (appending) the file the agent's inputs are recorded in, and writes how the core
/// starts.
fn open_recording(
    path: &std::path::Path,
    start: &Start,
) -> anyhow::Result<std::io::LineWriter<std::fs::File>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // The log holds the cluster's leases and config: private, and never written through a
    // symlink planted at its path.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(files::FILE_MODE)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
        .with_context(|| format!("{RECORD_EVENTS_ENV}={}", path.display()))?;
    let mut out = std::io::LineWriter::new(file);
    let mut start = start.clone();
    if let Some(bgp) = &mut start.config.bgp {
        twill_types::cluster::redact(bgp);
    }
    start.config.wireguard = start.config.wireguard.map(|wg| wg.redacted());
    let line = serde_json::to_string(&Record::Start(Box::new(start)))?;
    writeln!(out, "{line}")?;
    info!(path = %path.display(), "recording the agent's events");
    Ok(out)
}

/// Replaces the inline passwords of the BGP peers in `ev` by a placeholder.
fn redact_peers(ev: &mut StoreEvent) {
    let redact = |kv: &mut Kv| {
        if let Ok(mut peer) = serde_json::from_str::<BgpPeer>(&kv.value) {
            peer.auth = peer.auth.redacted();
            kv.value = serde_json::to_string(&peer).expect("peers serialize");
        }
    };
    match ev {
        StoreEvent::InSync(all) => all.iter_mut().for_each(redact),
        StoreEvent::Put(kv) => redact(kv),
        StoreEvent::Delete(_) | StoreEvent::Lost(_) => {}
    }
}

/// The routes of twill's that the kernel holds now, to keep while BGP comes back (None when
/// the kernel cannot be read: nothing is kept then).
async fn retained_routes(nl: &Rtnl) -> Option<Vec<RouteSpec>> {
    match reconcile::observe(nl, &DesiredState::default()).await {
        Ok(observed) => {
            let retained = crate::bgp::kept_routes(&observed.routes);
            info!(
                routes = retained.len(),
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

/// The I/O shell around [`Core`]: it turns what its tasks report into events, feeds them to
/// the core, and runs the actions the core returns.
struct Agent {
    core: Core,
    /// Where each input is appended as a JSON line (`TWILL_RECORD_EVENTS`).
    recorder: Option<std::io::LineWriter<std::fs::File>>,
    /// The BGP speaker, when the cluster config has a bgp section.
    bgp: Option<crate::bgp::BgpSide>,
    /// Writes the peer dataplane: full reconciles, and BGP route changes between them.
    reconciler: Reconciler,
    opts: AgentOptions,
    store: Store,
    config: ClusterConfig,
    node: LocalNode,
    held: Held,
    nl: Rtnl,
    started: Instant,
    /// The userspace tunnel engine (udp, ipip backends).
    tunnel: Option<Engine>,
    /// The WireGuard engine (wireguard backend, or encryption).
    wireguard: Option<WgEngine>,
    /// This node's WireGuard key and the identity of the file it was read from (rotation
    /// replaces the file); None without WireGuard.
    wg_key: Option<(twill_tunnel::wg::PrivateKey, FileId)>,
    /// A leftover WireGuard device of an earlier run was looked for (without WireGuard).
    wg_swept: bool,
    /// The fingerprint of the status last written but for its time (nothing is written while
    /// it stays the same).
    status_written: Option<u64>,
    /// A reconcile ran since the last status write: its freed memory is returned after it.
    release_after_status: bool,
    /// What the CNI plugin reads from disk.
    node_file: NodeFile,
    /// Network policy's state, kept by its task.
    policy: crate::policy_sync::SharedStatus,
    /// The policy task; it ends only when it fails.
    policy_task: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The core asked to renew again in a second.
    renew_soon: bool,
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
        let mut key_check = self.wg_key.is_some().then(|| {
            let mut t = tokio::time::interval(KEY_CHECK);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let origin = tokio::time::Instant::from_std(self.started);
        let mut exit = self.feed(Event::Started).await;
        while exit.is_none() {
            let wake = self
                .core
                .wake_at()
                .map(|at| origin + Duration::from_millis(at));
            exit = tokio::select! {
                ev = recv_or_never(&mut bgp_events) => {
                    let Some(ev) = ev else { bail!("the BGP speaker stopped") };
                    // A table arrives as a stream of changes: program what is queued now,
                    // without waiting for the rest, so the kernel fills while more arrives
                    // (the next batch is whatever queued up meanwhile).
                    let mut batch = vec![ev];
                    let rx = bgp_events.as_mut().expect("just received");
                    while batch.len() <= BGP_BATCH {
                        let Some(ev) = rx.try_one() else { break };
                        batch.push(ev);
                    }
                    self.feed_all(batch.into_iter().map(|ev| Event::Speaker(ev.into())), Event::SpeakerDone).await
                }
                failed = recv_or_never(&mut route_outcomes) => {
                    let Some(failed) = failed else { bail!("the reconciler stopped") };
                    self.feed(Event::RouteDeltaDone { failed }).await
                }
                _ = sleep_until_opt(wake) => self.feed(Event::Wake).await,
                ev = recv_or_never(&mut bgp_peers) => {
                    let Some(ev) = ev else { bail!("the store mirror of BGP peers stopped") };
                    self.feed(Event::BgpPeers(ev.into())).await
                }
                ev = events.recv() => {
                    let Some(ev) = ev else { bail!("the store mirror stopped") };
                    // Take everything already queued (and whatever follows within 2 ms of the
                    // last event, for at most 100 ms) so a burst of leases costs one
                    // reconcile, not one per lease.
                    let mut burst = vec![ev];
                    let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
                    while let Ok(Some(ev)) =
                        tokio::time::timeout_at(deadline, next_soon(&mut events)).await
                    {
                        burst.push(ev);
                    }
                    self.feed_all(burst.into_iter().map(|ev| Event::Leases(ev.into())), Event::LeasesDone).await
                }
                _ = resync.tick() => self.feed(Event::ResyncTick).await,
                _ = policy.changed.notified() => self.feed(Event::Policy(self.policy_now())).await,
                _ = counters.tick() => self.feed(Event::StatusTick).await,
                _ = tick_or_never(&mut key_check) => match self.check_key_file() {
                    Some(ev) => self.feed(ev).await,
                    None => None,
                },
                res = &mut self.policy_task => {
                    match res {
                        Ok(Ok(())) => bail!("network policy stopped"),
                        Ok(Err(e)) => bail!("network policy stopped: {e:#}"),
                        Err(e) => bail!("network policy stopped: {e}"),
                    }
                }
                _ = renew.tick() => self.feed(Event::RenewTick).await,
                _ = sigterm.recv() => self.feed(Event::Signal).await,
                _ = sigint.recv() => self.feed(Event::Signal).await,
            };
            if std::mem::take(&mut self.renew_soon) {
                // Retry soon rather than a third of the TTL later: two missed renewals in a
                // row could let the lease expire.
                renew.reset_after(Duration::from_secs(1));
            }
        }
        match exit.expect("the loop ends with a reason") {
            ExitReason::Signal => {
                // The BGP sessions end without a NOTIFICATION when the process exits, so
                // peers keep our routes (graceful restart) until the next agent's End-of-RIB.
                info!("stopping; the dataplane stays as it is");
                if let Some(engine) = self.tunnel.take() {
                    engine.shutdown();
                }
                if let Some(engine) = self.wireguard.take() {
                    engine.shutdown();
                }
                Ok(())
            }
            ExitReason::Left => {
                info!("this node's lease was removed (twill node leave): clearing local state");
                if let Some(b) = &self.bgp {
                    // Cease: peers drop our routes now instead of keeping them as stale.
                    let _ = b.speaker.shutdown().await;
                }
                if let Some(engine) = self.tunnel.take() {
                    engine.shutdown();
                }
                if let Some(engine) = self.wireguard.take() {
                    engine.shutdown();
                }
                clear_local_state(&self.nl, &self.reconciler, &self.opts.data_dir).await
            }
        }
    }

    /// Feeds each of `events`, then `done` (unless one of them ends the loop).
    async fn feed_all(
        &mut self,
        events: impl Iterator<Item = Event>,
        done: Event,
    ) -> Option<ExitReason> {
        for ev in events {
            if let Some(exit) = self.feed(ev).await {
                return Some(exit);
            }
        }
        self.feed(done).await
    }

    /// Gives one event to the core and runs the actions it returns, in order; an action's
    /// answer is fed back at once and its actions run before the ones after it.
    async fn feed(&mut self, event: Event) -> Option<ExitReason> {
        let mut queue: VecDeque<Action> = self.step(event).into();
        while let Some(action) = queue.pop_front() {
            if let Action::Exit(reason) = action {
                return Some(reason);
            }
            if let Some(answer) = self.execute(action).await {
                for a in self.step(answer).into_iter().rev() {
                    queue.push_front(a);
                }
            }
        }
        None
    }

    /// Stamps an event with the time, records it when asked to, and steps the core.
    fn step(&mut self, event: Event) -> Vec<Action> {
        let input = Input {
            at: self.started.elapsed().as_millis() as u64,
            unix: unix_now(),
            event,
        };
        self.record(&input);
        self.core.step(input)
    }

    /// Appends `input` to the recording, if there is one (inline BGP passwords redacted).
    fn record(&mut self, input: &Input) {
        use std::io::Write;
        if let Some(out) = &mut self.recorder {
            let mut input = input.clone();
            if let Event::BgpPeers(ev) = &mut input.event {
                redact_peers(ev);
            }
            let line = serde_json::to_string(&Record::Input(input)).expect("records serialize");
            if let Err(e) = writeln!(out, "{line}") {
                warn!("recording events: {e}; recording stops");
                self.recorder = None;
            }
        }
    }

    /// Runs one action; returns the answer for those that have one.
    async fn execute(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Reconcile { desired, .. } => {
                Some(Event::Reconciled(self.reconcile(&desired).await))
            }
            Action::SubmitRoutes(plan) => {
                self.reconciler.submit(*plan);
                // Let the writer start on it now: this loop would otherwise go on taking
                // queued events first, and the kernel would sit idle meanwhile.
                tokio::task::yield_now().await;
                None
            }
            Action::CheckLease => Some(Event::LeaseChecked(self.lease_state().await)),
            Action::RenewLease => {
                let renewal = match self.store.keep_alive(self.held.store_lease).await {
                    Ok(_) => Renewal::Renewed,
                    Err(StoreError::LeaseNotFound) => Renewal::Expired,
                    Err(e) => Renewal::Failed(e.to_string()),
                };
                Some(Event::Renewed(renewal))
            }
            Action::RenewSoon => {
                self.renew_soon = true;
                None
            }
            Action::Reacquire { lease, subnet } => Some(Event::Reacquired(
                self.reacquire(lease, subnet)
                    .await
                    .map_err(|e| format!("{e:#}")),
            )),
            Action::PublishLease { lease } => {
                let error = lease::republish(&self.store, &mut self.held, lease)
                    .await
                    .err()
                    .map(|e| format!("{e:#}"));
                Some(Event::LeasePublished { error })
            }
            Action::SyncBgpPeers {
                leases,
                store_peers,
            } => {
                let b = self.bgp.as_mut()?;
                let (removed, added) = b.sync_peers(&leases, &store_peers);
                Some(Event::BgpPeersSynced { removed, added })
            }
            Action::RefreshBgpStatus { settled } => {
                let b = self.bgp.as_mut()?;
                let changed = b.refresh_status(settled).await;
                Some(Event::BgpStatusRefreshed { changed })
            }
            Action::WriteStatus(status) => {
                self.write_status(status);
                if std::mem::take(&mut self.release_after_status) {
                    crate::memory::release_freed();
                }
                None
            }
            Action::Exit(_) => None,
            Action::Log(level, message) => {
                match level {
                    Level::Debug => tracing::debug!("{message}"),
                    Level::Info => info!("{message}"),
                    Level::Warn => warn!("{message}"),
                }
                None
            }
        }
    }

    /// Asks the store itself (not the mirror, whose queued events may predate a re-lease).
    /// `twill node leave` leaves a marker before deleting the lease; any other loss is not a
    /// leave.
    async fn lease_state(&mut self) -> LeaseCheck {
        let lost = |event: &str, message: String| LeaseCheck::Lost {
            event: event.to_string(),
            message,
        };
        match self.store.get(&self.held.key).await {
            Ok(Some(kv)) => match lease::admit(&self.config, &kv) {
                Ok(lease) if lease.node == self.node.name => LeaseCheck::Held(Some(lease)),
                Ok(lease) => lost(
                    "taken",
                    format!(
                        "our lease {} was taken: node {} holds it now",
                        self.held.key, lease.node
                    ),
                ),
                Err(w) => lost(
                    "taken",
                    format!("our lease {} was overwritten ({w})", self.held.key),
                ),
            },
            Ok(None) => match lease::leave_marker(&self.store, &self.node.name).await {
                Ok(true) => LeaseCheck::Left,
                Ok(false) => match self.store.keep_alive(self.held.store_lease).await {
                    Err(StoreError::LeaseNotFound) => {
                        lost("expired", "our lease expired".to_string())
                    }
                    _ => lost(
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
                    LeaseCheck::Held(None)
                }
            },
            Err(e) => {
                warn!("checking our lease: {e}");
                LeaseCheck::Held(None)
            }
        }
    }

    /// Takes the same subnet again if it is still free (a new one otherwise), with a new store
    /// lease; the old store lease, if it still lives, keeps nothing any more and is revoked.
    async fn reacquire(&mut self, lease: Lease, subnet: IpNet) -> anyhow::Result<LeaseHeld> {
        let held = lease::acquire(
            &self.store,
            &self.config,
            lease,
            Some(subnet),
            self.opts.lease_ttl,
        )
        .await?;
        // The same families as before (the core checks it too).
        let subnet = held.lease.subnet;
        if subnet.is_some() != self.node.subnet.is_some()
            || held.lease.subnet6.is_none() && subnet.is_none()
        {
            bail!(
                "{} does not hold a subnet of this node's families",
                held.key
            );
        }
        if (subnet, held.lease.subnet6) != (self.node.subnet, self.node.subnet6) {
            self.node.subnet = subnet;
            self.node.subnet6 = held.lease.subnet6;
            self.node_file.subnet = subnet;
            self.node_file.subnet6 = held.lease.subnet6;
            files::write_json(&node::node_file(&self.opts.data_dir), &self.node_file)?;
        }
        let old = self.held.store_lease;
        self.held = held;
        if old != self.held.store_lease {
            let _ = self.store.revoke_lease(old).await;
        }
        Ok(LeaseHeld {
            key: self.held.key.clone(),
            lease: self.held.lease.clone(),
        })
    }

    /// Makes the kernel match `desired`: the tunnel engine, then the reconciler (after the
    /// BGP changes handed over before); says what the kernel lacks afterwards.
    async fn reconcile(&mut self, desired: &DesiredState) -> ReconcileOutcome {
        if let Err(e) = self.ensure_tunnel(desired).await {
            warn!("{e:#}");
        }
        if let Err(e) = self.ensure_wireguard(desired).await {
            warn!("{e:#}");
        }
        let mut outcome = match self.reconciler.reconcile(desired.clone()).await {
            Ok(reconciled) => {
                // The kernel was read: after the status that follows, the reconcile's
                // transient memory (dumps, plan, status JSON) goes back to the kernel. A
                // resync that read nothing allocated little.
                self.release_after_status |= reconciled.observed.is_some();
                ReconcileOutcome {
                    // Not read (None): the kernel holds this desired state, which the last
                    // reconcile left with nothing missing, and nothing has touched it since.
                    missing: reconciled
                        .observed
                        .as_ref()
                        .map(|observed| missing_objects(desired, observed))
                        .unwrap_or_default(),
                    ..ReconcileOutcome::default()
                }
            }
            Err(e) => ReconcileOutcome {
                failed: Some(format!("{e:#}")),
                ..ReconcileOutcome::default()
            },
        };
        outcome.refused = refused_objects(&self.reconciler.errors());
        outcome
    }

    /// Starts, restarts or stops the tunnel engine to match the desired state, and gives it
    /// the current peers (before routes into it are added, so the first packet finds its peer).
    async fn ensure_tunnel(&mut self, desired: &DesiredState) -> anyhow::Result<()> {
        // A node of an IPv6-only cluster has no IPv4 subnet: its engine carries IPv6 alone.
        let (subnet, subnet6) = (self.node.subnet, self.node.subnet6);
        match (&desired.tunnel, &self.tunnel) {
            (Some(spec), Some(engine)) if engine.runs(spec, subnet, subnet6) => {}
            (Some(spec), _) => {
                if let Some(old) = self.tunnel.take() {
                    old.shutdown();
                }
                let engine = Engine::start(spec, subnet, subnet6, self.opts.kernel_path)?;
                engine.set_peers(&desired.tunnel_peers);
                info!(device = %spec.name, "tunnel engine running");
                self.tunnel = Some(engine);
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

    /// Starts, restarts or stops the WireGuard engine to match the desired state and gives it
    /// the current peers with their keys (before the routes into it are added). Without
    /// WireGuard, a device an earlier run left (the config changed) is removed once.
    async fn ensure_wireguard(&mut self, desired: &DesiredState) -> anyhow::Result<()> {
        // An IPv6-only node has no IPv4 subnet: its engine carries IPv6 alone.
        let (subnet, subnet6) = (self.node.subnet, self.node.subnet6);
        match (&desired.wireguard, &self.wireguard) {
            (Some(spec), Some(engine)) if engine.runs(spec, subnet, subnet6) => {}
            (Some(spec), _) => {
                if let Some(old) = self.wireguard.take() {
                    old.shutdown();
                }
                let Some((key, _)) = &self.wg_key else {
                    bail!("WireGuard is wanted but this agent has no key (the config changed?)");
                };
                let psk = self
                    .config
                    .wireguard()
                    .and_then(|wg| wg.preshared_key)
                    .and_then(|psk| twill_types::wg_key::decode(psk.expose()));
                let engine = WgEngine::start(spec, subnet, subnet6, key.clone(), psk)?;
                engine.set_peers(&desired.wireguard_peers);
                info!(
                    device = %spec.name, port = spec.port, public_key = %key.public_key(),
                    "wireguard engine running"
                );
                self.wireguard = Some(engine);
            }
            (None, Some(_)) => {
                if let Some(old) = self.wireguard.take() {
                    old.shutdown();
                }
                crate::tunnel::remove_device(twill_backend::wireguard::DEVICE)?;
            }
            (None, None) => {
                if !std::mem::replace(&mut self.wg_swept, true)
                    && self
                        .nl
                        .link_by_name(twill_backend::wireguard::DEVICE)
                        .await?
                        .is_some()
                {
                    info!("removing the WireGuard device of an earlier run (no WireGuard now)");
                    crate::tunnel::remove_device(twill_backend::wireguard::DEVICE)?;
                }
            }
        }
        if let Some(engine) = &self.wireguard {
            engine.set_peers(&desired.wireguard_peers);
        }
        Ok(())
    }

    /// Looks at the WireGuard key file: when it is another file than the one the key came
    /// from (`twill node rotate-key` renamed a new one over it), switches the engine to the
    /// new key and tells the core, which republishes the lease. A file that is missing or
    /// cannot be read leaves the current key in use (said once per file).
    fn check_key_file(&mut self) -> Option<Event> {
        let path = crate::wg_key::key_path(&self.opts.data_dir);
        let (_, known) = self.wg_key.as_ref()?;
        let now = FileId::at(&path);
        if now == Some(*known) {
            return None;
        }
        let (key, id) = match crate::wg_key::read(&path) {
            Ok(Some(found)) => found,
            Ok(None) => {
                warn!(path = %path.display(), "the WireGuard key file is gone; keeping the key in use");
                self.remember_key_file(now);
                return None;
            }
            Err(e) => {
                warn!("{e:#}; keeping the WireGuard key in use");
                self.remember_key_file(now);
                return None;
            }
        };
        let public_key = key.public_key();
        if let Some(engine) = &self.wireguard {
            engine.set_private_key(key.clone());
        }
        info!(%public_key, "wireguard: switched to the rotated key");
        self.wg_key = Some((key, id));
        Some(Event::WireguardKey {
            public_key: public_key.to_string(),
        })
    }

    /// Notes `id` as seen, so a file that could not be used is not read again until it
    /// changes.
    fn remember_key_file(&mut self, id: Option<FileId>) {
        if let (Some((_, known)), Some(id)) = (&mut self.wg_key, id) {
            *known = id;
        }
    }

    fn policy_now(&self) -> PolicyStatus {
        self.policy
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Writes status.json: the core's part, with fresh tunnel counters and BGP status.
    fn write_status(&mut self, core: Status) {
        let path = self.opts.data_dir.join(node::STATUS_FILE);
        let mut peers = core.peers;
        let tunnel = self.tunnel.as_ref().map(|engine| {
            let (counters, status) = engine.status();
            for p in &mut peers {
                p.counters = counters.get(&p.node).copied();
            }
            status
        });
        let wireguard = self.wireguard.as_ref().map(|engine| {
            let (sessions, status) = engine.status();
            for p in peers.iter_mut().filter(|p| p.path == PeerPath::Wireguard) {
                if let Some((counters, session)) = sessions.get(&p.node) {
                    p.counters = Some(*counters);
                    p.wireguard = Some(session.clone());
                }
            }
            status
        });
        let mut status = AgentStatus {
            node: self.node.name.clone(),
            subnet: self.node.subnet,
            backend: self.config.backend.kind,
            public_ip: self.node.public_net.map(|n| n.addr()),
            subnet6: self.node.subnet6,
            public_ip6: self.node.public_net6.map(|n| n.addr()),
            store: self.store.describe(),
            in_sync: core.in_sync,
            pid: std::process::id(),
            updated: 0,
            peers,
            tunnel,
            wireguard,
            policy: core.policy,
            bgp: self.bgp.as_ref().and_then(|b| b.status.clone()),
            lease_events: core.lease_events,
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

/// The objects of `desired` the kernel does not hold (`observed` after the reconcile).
fn missing_objects(desired: &DesiredState, observed: &Observed) -> Vec<Missing> {
    let routes: HashSet<&ObservedRoute> = observed.routes.iter().collect();
    let neighbours: HashSet<&NeighSpec> = observed.neighbours.iter().collect();
    let fdb: HashSet<&ObservedFdb> = observed.fdb.iter().collect();
    let routes = desired
        .routes
        .iter()
        .filter(|r| !routes.contains(&ObservedRoute::from_spec(r)))
        .map(|r| Missing::Route {
            dst: r.dst,
            via: r.via,
        });
    let neighbours = desired
        .neighbours
        .iter()
        .filter(|n| !neighbours.contains(n))
        .map(|n| Missing::Neighbour { ip: n.ip });
    let fdb = desired
        .fdb
        .iter()
        .filter(|f| !fdb.contains(&ObservedFdb::from_spec(f)))
        .map(|f| Missing::Fdb {
            mac: f.mac,
            dst: f.dst,
        });
    routes.chain(neighbours).chain(fdb).collect()
}

/// The reconciler's objects in error, with the kernel's reason.
fn refused_objects(errors: &BTreeMap<ObjectKey, ObjectStatus>) -> Vec<Refused> {
    errors
        .iter()
        .filter_map(|(key, status)| match status {
            ObjectStatus::Error {
                reason, attempts, ..
            } => Some(Refused {
                object: match key {
                    ObjectKey::Device(name) => ObjectRef::Device(name.clone()),
                    ObjectKey::Route(dst) => ObjectRef::Route(*dst),
                    ObjectKey::Neighbour(ip) => ObjectRef::Neighbour(*ip),
                    ObjectKey::Fdb(mac) => ObjectRef::Fdb(*mac),
                    ObjectKey::Sysctl(name) => ObjectRef::Sysctl(name.clone()),
                    ObjectKey::Address(dev) => ObjectRef::Address(dev.clone()),
                    ObjectKey::Table(name) => ObjectRef::Table(name.clone()),
                    ObjectKey::Chain(name) => ObjectRef::Chain(name.clone()),
                },
                reason: reason.clone(),
                attempts: *attempts,
            }),
            ObjectStatus::Pending => None,
        })
        .collect()
}

/// Sleeps until `at`; never, when there is no deadline.
async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next tick of an optional interval; never, when there is none.
async fn tick_or_never(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
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

/// Removes everything the agent made on this node: the TUN devices (tunnel, WireGuard), and
/// through the reconciler peer routes, the VXLAN device, the cluster's masquerade chain, the
/// host protection and policy tables; then the node and status files and the WireGuard key
/// (a node that joins again gets a new one).
pub async fn clear_local_state(
    nl: &Rtnl,
    reconciler: &Reconciler,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    if nl
        .link_by_name(twill_backend::tunnel::DEVICE)
        .await?
        .is_some()
    {
        crate::tunnel::remove_device(twill_backend::tunnel::DEVICE)?;
    }
    if nl
        .link_by_name(twill_backend::wireguard::DEVICE)
        .await?
        .is_some()
    {
        crate::tunnel::remove_device(twill_backend::wireguard::DEVICE)?;
    }
    let report = reconciler.remove_all().await?;
    if !report.failures.is_empty() {
        anyhow::bail!("removing twill's routes, devices and tables: {report}");
    }
    // The stamp an agent before the one reconciler kept for the chain.
    files::remove(
        &data_dir
            .join("firewall")
            .join(format!("masq-{NAT_NETWORK}")),
    )?;
    files::remove(&node::node_file(data_dir))?;
    files::remove(&data_dir.join(node::STATUS_FILE))?;
    files::remove(&crate::wg_key::key_path(data_dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_bgp_peers_carry_no_inline_password() {
        let kv = |value: &str| Kv {
            key: "/twill/bgp/peers/10.0.0.1".into(),
            value: value.into(),
        };
        let mut ev = StoreEvent::InSync(vec![kv(
            r#"{"address":"10.0.0.1","asNumber":65000,"password":"s3cret"}"#,
        )]);
        redact_peers(&mut ev);
        let StoreEvent::InSync(all) = ev else {
            unreachable!()
        };
        assert!(!all[0].value.contains("s3cret"), "{}", all[0].value);
        let peer = BgpPeer::from_store(&all[0].key, all[0].value.as_bytes()).unwrap();
        assert_eq!(peer.as_number, 65000);
        assert!(peer.auth.has_password());
    }
}
