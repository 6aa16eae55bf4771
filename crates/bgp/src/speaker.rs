//! The speaker: tokio tasks around the pure parts.
//!
//! - One core task owns the [`Rib`] and the peer table. Commands from the agent and reports
//!   from sessions come in; UPDATE contents go out to sessions and [`SpeakerEvent`]s to the
//!   agent. Because only this task touches the RIB, its order of events is the order of truth.
//! - One listener task per listening address accepts connections and hands them to the core,
//!   which passes them to the peer's session or refuses them (NOTIFICATION Cease /
//!   Connection Rejected).
//! - One session task per configured peer runs the [`Fsm`] over one connection at a time
//!   (two briefly, during a collision), with its timers as deadlines.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use ipnet::IpNet;
use netgauze_bgp_pkt::notification::CeaseError;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::codec::Framed;

use crate::attrs::{Afi, PathAttrs};
use crate::codec::{self, BgpCodec, CodecError, GrCap, Incoming, OpenInfo, Outgoing};
use crate::fsm::{Action, Event, Fsm, FsmConfig, Negotiated, State, Timer, collision_keeps_local};
use crate::rib::{BestChange, PeerInfo, PeerUpdate, PrefixCounts, Rib, RibConfig, Route, Source};
use crate::sockopt;

/// Errors the speaker API returns.
#[derive(Debug, thiserror::Error)]
pub enum BgpError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the speaker has stopped")]
    Stopped,
}

/// Graceful restart settings (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    pub enabled: bool,
    /// Restart time we advertise: how long peers keep our routes after we go away.
    pub restart_time: u16,
    /// Set after a restart: the R bit tells peers to keep our routes until our End-of-RIB.
    pub restarting: bool,
}

impl Default for GracefulRestart {
    fn default() -> Self {
        GracefulRestart {
            enabled: true,
            restart_time: 120,
            restarting: false,
        }
    }
}

/// A TCP-MD5 key (RFC 2385). Its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(Vec<u8>);

impl Password {
    /// A key of 1 to 80 bytes (Linux's limit).
    pub fn new(key: impl Into<Vec<u8>>) -> Result<Password, BgpError> {
        let key = key.into();
        if key.is_empty() || key.len() > sockopt::MAX_KEY_LEN {
            return Err(BgpError::Config(format!(
                "a BGP password is 1 to {} bytes, not {}",
                sockopt::MAX_KEY_LEN,
                key.len()
            )));
        }
        Ok(Password(key))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// One configured neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub address: IpAddr,
    pub remote_as: u32,
    /// Our AS on this session, when not the speaker's.
    pub local_as: Option<u32>,
    pub rr_client: bool,
    /// Never connect; wait for the peer.
    pub passive: bool,
    /// Proposed hold time; the speaker's when None.
    pub hold_time: Option<u16>,
    /// The peer's BGP port (179; other values for tests).
    pub port: u16,
    /// Graceful restart with this peer (on by default).
    pub graceful_restart: bool,
    /// Source address for our connections to the peer (the kernel's choice when None).
    pub local_address: Option<IpAddr>,
    /// TCP-MD5 signatures with this key on every segment of the session (RFC 2385): the
    /// listener drops unsigned or wrongly signed segments from the peer's address.
    pub password: Option<Password>,
    /// GTSM (RFC 5082), for directly connected peers: send with TTL 255 and accept only
    /// TTL 255 (BIRD's `ttl security on`).
    pub ttl_security: bool,
}

impl PeerConfig {
    pub fn new(address: IpAddr, remote_as: u32) -> PeerConfig {
        PeerConfig {
            address,
            remote_as,
            local_as: None,
            rr_client: false,
            passive: false,
            hold_time: None,
            port: 179,
            graceful_restart: true,
            local_address: None,
            password: None,
            ttl_security: false,
        }
    }
}

/// The speaker's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Where to accept connections; None for none at all.
    pub listen: Option<SocketAddr>,
    /// Further addresses to accept connections on, each with a listener of its own (a
    /// node's IPv6 underlay address next to its IPv4 one): every peer's TCP-MD5 key goes on
    /// each listener its connections can arrive at.
    pub listen_also: Vec<SocketAddr>,
    /// Route-reflector cluster ID (router ID when unset); used when a peer is a client.
    pub cluster_id: Option<Ipv4Addr>,
    pub hold_time: u16,
    pub connect_retry: Duration,
    pub graceful_restart: GracefulRestart,
    /// Global IPv6 next hop for the IPv6 routes we are next hop for, on sessions that do not
    /// give one: IPv4 sessions (without it, our IPv4 address IPv4-mapped) and IPv6 sessions
    /// between link-local addresses (without it, such routes are not sent). An IPv6 session
    /// over a global address uses that address. On a peer's link the link-local address of
    /// our interface is added (RFC 2545).
    pub next_hop_v6: Option<Ipv6Addr>,
    pub peers: Vec<PeerConfig>,
    /// Prefixes originated from the start, so a restarted speaker advertises them before its
    /// End-of-RIB (and graceful restart withdraws nothing).
    pub local_routes: Vec<(IpNet, Option<IpAddr>)>,
}

impl SpeakerConfig {
    pub fn new(asn: u32, router_id: Ipv4Addr) -> SpeakerConfig {
        SpeakerConfig {
            asn,
            router_id,
            listen: Some(SocketAddr::from(([0, 0, 0, 0], 179))),
            listen_also: Vec::new(),
            cluster_id: None,
            hold_time: 90,
            connect_retry: Duration::from_secs(5),
            graceful_restart: GracefulRestart::default(),
            next_hop_v6: None,
            peers: Vec::new(),
            local_routes: Vec::new(),
        }
    }
}

/// Status of one peer (like `calicoctl node status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub remote_as: u32,
    pub state: State,
    /// Seconds since Established, when it is.
    pub uptime_secs: Option<u64>,
    pub router_id: Option<Ipv4Addr>,
    pub prefixes: PrefixCounts,
}

/// A snapshot of the speaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    pub peers: Vec<PeerStatus>,
    pub routes: Vec<Route>,
}

/// What the agent hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeakerEvent {
    /// The best routes of these prefixes changed (`best` None: no route any more), one event
    /// per UPDATE or peer change, so that a table of thousands of prefixes wakes the agent a
    /// few dozen times rather than once per prefix. Routes from peers are what the agent
    /// installs in the kernel; local ones it already has.
    BestRoutes(Vec<BestChange>),
    PeerState {
        peer: IpAddr,
        state: State,
    },
}

enum Command {
    AddPeer(PeerConfig),
    RemovePeer(IpAddr),
    Originate(IpNet, Option<IpAddr>),
    Withdraw(IpNet),
    RouteRefresh(IpAddr),
    Status(oneshot::Sender<Status>),
    Shutdown(oneshot::Sender<()>),
}

/// Handle to a running speaker; dropping it does not stop the speaker (call
/// [`Speaker::shutdown`]).
#[derive(Debug, Clone)]
pub struct Speaker {
    tx: mpsc::UnboundedSender<Command>,
    /// The bound listen addresses, `listen` first.
    listen: Vec<SocketAddr>,
}

impl Speaker {
    /// Binds the listener and starts the speaker with its configured peers and routes.
    pub async fn start(
        cfg: SpeakerConfig,
    ) -> Result<(Speaker, mpsc::UnboundedReceiver<SpeakerEvent>), BgpError> {
        if cfg.router_id.is_unspecified() {
            return Err(BgpError::Config("router ID 0.0.0.0".into()));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        let mut listen = Vec::new();
        let mut listeners = Vec::new();
        for &addr in cfg.listen.iter().chain(&cfg.listen_also) {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| BgpError::Listen { addr, source })?;
            // Keep every SYN, so the TTL of a connection from a GTSM peer can be checked, and
            // answer with TTL 255.
            sockopt::set_listener_gtsm(&l).map_err(|source| BgpError::Listen { addr, source })?;
            listen.push(
                l.local_addr()
                    .map_err(|source| BgpError::Listen { addr, source })?,
            );
            listeners.push(Arc::new(l));
        }
        // Accepting starts once every address is bound (a failed bind starts nothing).
        for l in &listeners {
            tokio::spawn(accept_loop(l.clone(), in_tx.clone()));
        }
        let core = Core::new(cfg, ev_tx, listeners);
        tokio::spawn(core.run(rx, in_rx));
        Ok((Speaker { tx, listen }, ev_rx))
    }

    /// The bound listen address (with the real port when 0 was asked for).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.first().copied()
    }

    /// Every bound listen address: `listen`, then `listen_also`.
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen
    }

    fn send(&self, c: Command) -> Result<(), BgpError> {
        self.tx.send(c).map_err(|_| BgpError::Stopped)
    }

    pub fn add_peer(&self, p: PeerConfig) -> Result<(), BgpError> {
        self.send(Command::AddPeer(p))
    }

    pub fn remove_peer(&self, addr: IpAddr) -> Result<(), BgpError> {
        self.send(Command::RemovePeer(addr))
    }

    /// Advertises a local prefix; `next_hop` None means our address on each session.
    pub fn originate(&self, prefix: IpNet, next_hop: Option<IpAddr>) -> Result<(), BgpError> {
        self.send(Command::Originate(prefix, next_hop))
    }

    pub fn withdraw(&self, prefix: IpNet) -> Result<(), BgpError> {
        self.send(Command::Withdraw(prefix))
    }

    /// Asks the peer to send its routes again (RFC 2918).
    pub fn route_refresh(&self, peer: IpAddr) -> Result<(), BgpError> {
        self.send(Command::RouteRefresh(peer))
    }

    pub async fn status(&self) -> Result<Status, BgpError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx))?;
        rx.await.map_err(|_| BgpError::Stopped)
    }

    /// Stops every session with NOTIFICATION Cease (peers then drop our routes).
    pub async fn shutdown(&self) -> Result<(), BgpError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Shutdown(tx))?;
        rx.await.map_err(|_| BgpError::Stopped)
    }
}

async fn accept_loop(l: Arc<TcpListener>, tx: mpsc::UnboundedSender<(TcpStream, SocketAddr)>) {
    loop {
        match l.accept().await {
            Ok((s, a)) => {
                if tx.send((s, a)).is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of descriptors and the like: wait a little instead of spinning.
                tracing::warn!("bgp accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Refuses a connection from an address that is not a configured peer.
async fn reject(mut s: TcpStream) {
    let msg = Outgoing::Notification(codec::cease(|value| CeaseError::ConnectionRejected {
        value,
    }))
    .to_message();
    if let Ok(bytes) = codec::encode_message(&msg) {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(&bytes)).await;
    }
    let _ = s.shutdown().await;
}

/// Session → core.
enum Report {
    State(IpAddr, State),
    Up(IpAddr, u64, Box<PeerInfo>, Option<GrCap>),
    Down(IpAddr, u64, bool, u16),
    Update(IpAddr, u64, Box<codec::UpdateIn>),
    Refresh(IpAddr, u64),
}

/// Core → session.
enum ToSession {
    Inbound(TcpStream),
    Routes(u64, PeerUpdate, bool),
    RequestRefresh,
    Stop,
}

struct PeerSlot {
    cfg: PeerConfig,
    tx: mpsc::UnboundedSender<ToSession>,
    state: State,
    since: Option<Instant>,
    router_id: Option<Ipv4Addr>,
    /// Stale routes of this peer go at this time (graceful restart).
    stale_deadline: Option<Instant>,
    /// The Established session the RIB's Adj-RIB-Out describes (0: none); UPDATEs carry it
    /// so a batch computed for an old session is never sent on a new one.
    epoch: u64,
    /// The listener holds this peer's MD5 key (when it has one): its connections are signed.
    listener_keyed: bool,
}

struct Core {
    cfg: SpeakerConfig,
    rib: Rib,
    peers: BTreeMap<IpAddr, PeerSlot>,
    events: mpsc::UnboundedSender<SpeakerEvent>,
    report_tx: mpsc::UnboundedSender<Report>,
    report_rx: Option<mpsc::UnboundedReceiver<Report>>,
    /// The listening sockets, for the peers' MD5 keys.
    listeners: Vec<Arc<TcpListener>>,
}

impl Core {
    fn new(
        cfg: SpeakerConfig,
        events: mpsc::UnboundedSender<SpeakerEvent>,
        listeners: Vec<Arc<TcpListener>>,
    ) -> Core {
        let rib = Rib::new(RibConfig {
            asn: cfg.asn,
            router_id: cfg.router_id,
            cluster_id: cfg.cluster_id,
        });
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        Core {
            cfg,
            rib,
            peers: BTreeMap::new(),
            events,
            report_tx,
            report_rx: Some(report_rx),
            listeners,
        }
    }

    async fn run(
        mut self,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut inbound: mpsc::UnboundedReceiver<(TcpStream, SocketAddr)>,
    ) {
        let mut reports = self.report_rx.take().expect("taken once");
        for (prefix, nh) in std::mem::take(&mut self.cfg.local_routes) {
            let out = self.rib.originate(prefix, nh);
            self.apply(out);
        }
        for p in std::mem::take(&mut self.cfg.peers) {
            self.add_peer(p);
        }
        loop {
            let deadline = self.peers.values().filter_map(|p| p.stale_deadline).min();
            tokio::select! {
                // Commands first: a peer added before it connects must be known when its
                // connection is looked at (unbiased, select picks among ready branches at
                // random, and a connection right after add_peer was sometimes refused).
                biased;
                c = cmds.recv() => match c {
                    None => return self.stop_all(),
                    Some(Command::Shutdown(done)) => {
                        self.stop_all();
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.command(c),
                },
                Some((s, from)) = inbound.recv() => self.inbound(s, from),
                Some(r) = reports.recv() => self.report(r),
                _ = sleep_until_opt(deadline) => {
                    let now = Instant::now();
                    let due: Vec<IpAddr> = self.peers.iter()
                        .filter(|(_, p)| p.stale_deadline.is_some_and(|d| d <= now))
                        .map(|(a, _)| *a).collect();
                    for a in due {
                        self.peers.get_mut(&a).expect("listed").stale_deadline = None;
                        let out = self.rib.flush_stale(a);
                        self.apply(out);
                    }
                }
            }
        }
    }

    /// A connection the listener accepted: to its peer's session, when it passes the peer's
    /// protections, else refused (unconfigured) or dropped without a word (protected).
    fn inbound(&mut self, s: TcpStream, from: SocketAddr) {
        let ip = from.ip().to_canonical();
        let Some(p) = self.peers.get(&ip) else {
            tracing::info!("bgp: refused connection from unconfigured {from}");
            tokio::spawn(reject(s));
            return;
        };
        if p.cfg.password.is_some() && !p.listener_keyed {
            // The kernel could not be told to check its signatures: never trust it.
            tracing::warn!("bgp {ip}: dropped a connection: the listener holds no MD5 key for it");
            return;
        }
        let md5 = p.cfg.password.is_some();
        if md5 || p.cfg.ttl_security {
            match sockopt::check_accepted(&s, from, md5, p.cfg.ttl_security) {
                Ok(None) => {}
                Ok(Some(why)) => {
                    tracing::warn!("bgp {ip}: dropped a connection: {why}");
                    return;
                }
                Err(e) => {
                    tracing::warn!("bgp {ip}: dropped a connection: cannot check its SYN: {e}");
                    return;
                }
            }
        }
        let _ = p.tx.send(ToSession::Inbound(s));
    }

    /// Sets (or removes) the MD5 key for `addr` on every listener its connections can arrive
    /// at: those of its family, and an IPv6 wildcard one (which takes IPv4 connections too);
    /// true when all of them have it.
    fn key_listener(&self, addr: IpAddr, key: Option<&Password>) -> bool {
        let mut keyed = key.is_none();
        for l in &self.listeners {
            let Ok(local) = l.local_addr() else {
                continue;
            };
            let reaches = match (local, addr) {
                (SocketAddr::V4(_), IpAddr::V4(_)) | (SocketAddr::V6(_), IpAddr::V6(_)) => true,
                (SocketAddr::V6(l6), IpAddr::V4(_)) => l6.ip().is_unspecified(),
                (SocketAddr::V4(_), IpAddr::V6(_)) => false,
            };
            if !reaches {
                continue;
            }
            match sockopt::set_md5_key(l.as_ref(), addr, key.map(Password::as_bytes)) {
                Ok(()) => keyed = true,
                Err(e) => {
                    tracing::error!(
                        "bgp {addr}: cannot set the TCP-MD5 key of the listener on {local}: {e}"
                    );
                    return false;
                }
            }
        }
        keyed
    }

    fn stop_all(&mut self) {
        for p in self.peers.values() {
            let _ = p.tx.send(ToSession::Stop);
        }
    }

    fn add_peer(&mut self, p: PeerConfig) {
        let addr = p.address.to_canonical();
        if self.peers.contains_key(&addr) {
            tracing::warn!("bgp: peer {addr} already configured");
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let gr = &self.cfg.graceful_restart;
        let local = OpenInfo {
            asn: p.local_as.unwrap_or(self.cfg.asn),
            hold_time: p.hold_time.unwrap_or(self.cfg.hold_time),
            router_id: self.cfg.router_id,
            families: [Afi::Ipv4, Afi::Ipv6].into(),
            asn4: true,
            route_refresh: true,
            // F bit on: the agent keeps its kernel routes across a restart.
            graceful_restart: (gr.enabled && p.graceful_restart).then(|| GrCap {
                restarting: gr.restarting,
                time: gr.restart_time,
                families: vec![(Afi::Ipv4, true), (Afi::Ipv6, true)],
            }),
        };
        let fsm = Fsm::new(FsmConfig {
            local,
            peer_asn: p.remote_as,
            passive: p.passive,
            connect_retry: self.cfg.connect_retry,
        });
        let session = Session {
            addr,
            port: p.port,
            local_address: p.local_address,
            fsm,
            conn: None,
            outbound: false,
            connecting: None,
            timers: HashMap::new(),
            pending: None,
            open_sent: false,
            epoch: 0,
            reports: self.report_tx.clone(),
            rr_client: p.rr_client,
            next_hop_v6: self.cfg.next_hop_v6,
            gr_enabled: gr.enabled && p.graceful_restart,
            last_gr: None,
            password: p.password.clone(),
            ttl_security: p.ttl_security,
        };
        let listener_keyed = p.password.is_some() && self.key_listener(addr, p.password.as_ref());
        tokio::spawn(session.run(rx));
        self.peers.insert(
            addr,
            PeerSlot {
                cfg: p,
                tx,
                state: State::Idle,
                since: None,
                router_id: None,
                stale_deadline: None,
                epoch: 0,
                listener_keyed,
            },
        );
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::AddPeer(p) => self.add_peer(p),
            Command::RemovePeer(a) => {
                let a = a.to_canonical();
                if let Some(p) = self.peers.remove(&a) {
                    let _ = p.tx.send(ToSession::Stop);
                    if p.cfg.password.is_some() {
                        self.key_listener(a, None);
                    }
                }
                let out = self.rib.remove_peer(a);
                self.apply(out);
            }
            Command::Originate(n, nh) => {
                let out = self.rib.originate(n, nh);
                self.apply(out);
            }
            Command::Withdraw(n) => {
                let out = self.rib.withdraw_local(n);
                self.apply(out);
            }
            Command::RouteRefresh(a) => {
                if let Some(p) = self.peers.get(&a.to_canonical()) {
                    let _ = p.tx.send(ToSession::RequestRefresh);
                }
            }
            Command::Status(tx) => {
                let _ = tx.send(self.status());
            }
            Command::Shutdown(_) => unreachable!("handled in run"),
        }
    }

    fn status(&self) -> Status {
        Status {
            asn: self.cfg.asn,
            router_id: self.cfg.router_id,
            peers: self
                .peers
                .iter()
                .map(|(a, p)| PeerStatus {
                    address: *a,
                    remote_as: p.cfg.remote_as,
                    state: p.state,
                    uptime_secs: p.since.map(|s| s.elapsed().as_secs()),
                    router_id: p.router_id,
                    prefixes: self.rib.counts(a),
                })
                .collect(),
            routes: self.rib.loc_rib().cloned().collect(),
        }
    }

    fn report(&mut self, r: Report) {
        match r {
            Report::State(a, s) => {
                if let Some(p) = self.peers.get_mut(&a)
                    && p.state != s
                {
                    p.state = s;
                    p.since = (s == State::Established).then(Instant::now);
                    let _ = self
                        .events
                        .send(SpeakerEvent::PeerState { peer: a, state: s });
                }
            }
            Report::Up(a, epoch, info, gr) => {
                let Some(p) = self.peers.get_mut(&a) else {
                    return;
                };
                p.router_id = Some(info.router_id);
                p.epoch = epoch;
                // Stale routes left from a graceful restart must be refreshed before End-of-RIB
                // or within the restart time.
                if self.rib.counts(&a).stale > 0 {
                    let t = gr.map(|g| g.time).unwrap_or(0);
                    p.stale_deadline = Some(Instant::now() + Duration::from_secs(t.into()));
                }
                let mut out = self.rib.peer_up(*info);
                let full = out.updates.remove(&a).unwrap_or_default();
                let _ = p.tx.send(ToSession::Routes(epoch, full, true));
                self.apply(out);
            }
            Report::Down(a, _gen, graceful, restart_time) => {
                let out = self.rib.peer_down(a, graceful);
                if let Some(p) = self.peers.get_mut(&a) {
                    p.router_id = None;
                    p.epoch = 0;
                    p.stale_deadline = (graceful && self.rib.counts(&a).stale > 0)
                        .then(|| Instant::now() + Duration::from_secs(restart_time.into()));
                }
                self.apply(out);
            }
            Report::Update(a, _gen, u) => {
                let out = self.rib.update(a, &u);
                // Nothing stale left (End-of-RIB or everything re-announced): no timer.
                if self.rib.counts(&a).stale == 0
                    && let Some(p) = self.peers.get_mut(&a)
                {
                    p.stale_deadline = None;
                }
                self.apply(out);
            }
            Report::Refresh(a, epoch) => {
                if let Some(p) = self.peers.get(&a) {
                    let _ =
                        p.tx.send(ToSession::Routes(epoch, self.rib.refresh(a), false));
                }
            }
        }
    }

    fn apply(&mut self, out: crate::rib::Output) {
        if !out.best.is_empty() {
            let _ = self.events.send(SpeakerEvent::BestRoutes(out.best));
        }
        for (a, u) in out.updates {
            if let Some(p) = self.peers.get(&a) {
                let _ = p.tx.send(ToSession::Routes(p.epoch, u, false));
            }
        }
    }
}

async fn sleep_until_opt(d: Option<Instant>) {
    match d {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

type Conn = Framed<TcpStream, BgpCodec>;
type ConnectFut =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<TcpStream>> + Send>>;

struct Session {
    addr: IpAddr,
    port: u16,
    local_address: Option<IpAddr>,
    fsm: Fsm,
    conn: Option<Conn>,
    /// Whether `conn` is the connection we initiated.
    outbound: bool,
    connecting: Option<ConnectFut>,
    timers: HashMap<Timer, Instant>,
    /// An inbound connection that arrived while ours was in OpenSent: our OPEN has been sent
    /// on it, and the collision is decided when its OPEN tells us the peer's identifier.
    pending: Option<Conn>,
    /// The next OPEN the FSM asks for was already sent (on an adopted pending connection).
    open_sent: bool,
    /// Counts sessions that reached Established; stale route batches are dropped.
    epoch: u64,
    reports: mpsc::UnboundedSender<Report>,
    rr_client: bool,
    next_hop_v6: Option<Ipv6Addr>,
    gr_enabled: bool,
    /// The peer's graceful restart capability on the last Established session.
    last_gr: Option<GrCap>,
    password: Option<Password>,
    ttl_security: bool,
}

async fn next_msg(conn: &mut Option<Conn>) -> Option<Result<Incoming, CodecError>> {
    match conn {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Acknowledges what the peer sends at once instead of after the delayed-ACK timer (re-armed
/// after every message in either direction: Linux goes back to delayed ACKs once we send).
/// A peer that leaves Nagle's algorithm on (BIRD 2 does) holds its next small segment until
/// our ACK: a capture of a 10,000-route table from BIRD showed a 43 ms pause mid-table.
fn quick_ack(conn: &Option<Conn>) {
    if let Some(c) = conn {
        let _ = socket2::SockRef::from(c.get_ref()).set_tcp_quickack(true);
    }
}

async fn connect_done(f: &mut Option<ConnectFut>) -> std::io::Result<TcpStream> {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

impl Session {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<ToSession>) {
        self.step(Event::ManualStart).await;
        loop {
            let deadline = self.timers.values().min().copied();
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None | Some(ToSession::Stop) => {
                        self.step(Event::ManualStop).await;
                        return;
                    }
                    Some(ToSession::Inbound(s)) => self.inbound(s).await,
                    Some(ToSession::Routes(epoch, u, eor)) => {
                        if self.fsm.state() == State::Established && epoch == self.epoch {
                            self.send_routes(u, eor).await;
                        }
                    }
                    Some(ToSession::RequestRefresh) => {
                        if let Some(n) = self.fsm.negotiated().cloned()
                            && self.fsm.state() == State::Established && n.peer.route_refresh {
                            for afi in self.families(&n) {
                                self.send(Outgoing::RouteRefresh(afi)).await;
                            }
                        }
                    }
                },
                r = connect_done(&mut self.connecting) => {
                    self.connecting = None;
                    match r {
                        Ok(s) => {
                            let _ = s.set_nodelay(true);
                            self.conn = Some(Framed::new(s, BgpCodec::default()));
                            self.outbound = true;
                            self.step(Event::TcpConnected).await;
                        }
                        Err(e) => {
                            tracing::debug!("bgp {}: connect: {e}", self.addr);
                            self.step(Event::TcpFailed).await;
                        }
                    }
                }
                m = next_msg(&mut self.conn) => self.incoming(m).await,
                m = next_msg(&mut self.pending) => self.pending_msg(m).await,
                _ = sleep_until_opt(deadline) => {
                    let now = Instant::now();
                    let due: Vec<Timer> = self.timers.iter().filter(|(_, d)| **d <= now).map(|(t, _)| *t).collect();
                    for t in due {
                        self.timers.remove(&t);
                        self.step(Event::TimerExpired(t)).await;
                    }
                }
            }
        }
    }

    fn families(&self, n: &Negotiated) -> BTreeSet<Afi> {
        self.fsm
            .config()
            .local
            .families
            .intersection(&n.peer.families)
            .copied()
            .collect()
    }

    async fn incoming(&mut self, m: Option<Result<Incoming, CodecError>>) {
        quick_ack(&self.conn);
        let ev = match m {
            None => Event::TcpClosed,
            Some(Err(CodecError::Fatal(n))) => {
                tracing::warn!("bgp {}: protocol error, resetting: {n:?}", self.addr);
                Event::DecodeError(n)
            }
            Some(Err(e)) => {
                tracing::debug!("bgp {}: {e}", self.addr);
                Event::TcpClosed
            }
            Some(Ok(Incoming::Open(o))) => Event::OpenReceived(o),
            Some(Ok(Incoming::Keepalive)) => Event::KeepaliveReceived,
            Some(Ok(Incoming::Notification(n))) => {
                tracing::info!("bgp {}: NOTIFICATION received: {n:?}", self.addr);
                Event::NotificationReceived(n)
            }
            Some(Ok(Incoming::RouteRefresh(_))) => {
                let est = self.fsm.state() == State::Established;
                self.step(Event::RouteRefreshReceived).await;
                if est {
                    let _ = self.reports.send(Report::Refresh(self.addr, self.epoch));
                }
                return;
            }
            Some(Ok(Incoming::Update(u))) => {
                let est = self.fsm.state() == State::Established;
                if let Some(why) = &u.treat_as_withdraw {
                    tracing::warn!(
                        "bgp {}: malformed UPDATE, treat-as-withdraw: {why}",
                        self.addr
                    );
                }
                self.step(Event::UpdateReceived).await;
                if est {
                    let _ = self
                        .reports
                        .send(Report::Update(self.addr, self.epoch, Box::new(u)));
                }
                return;
            }
        };
        self.step(ev).await;
    }

    /// An inbound connection from this peer.
    async fn inbound(&mut self, s: TcpStream) {
        let _ = s.set_nodelay(true);
        match self.fsm.state() {
            State::Idle | State::Connect | State::Active => self.adopt(s).await,
            State::OpenSent => {
                // The peer's identifier is not known yet: answer this connection with our
                // OPEN too and decide when either connection brings the peer's OPEN.
                let mut f = Framed::new(s, BgpCodec::default());
                let open = Outgoing::Open(self.fsm.config().local.clone());
                if f.send(open).await.is_ok()
                    && let Some(old) = self.pending.replace(f)
                {
                    tokio::spawn(reject_collision(old.into_inner()));
                }
            }
            State::OpenConfirm => self.collide(s).await,
            State::Established => {
                let gr = self
                    .fsm
                    .negotiated()
                    .is_some_and(|n| n.peer.graceful_restart.is_some());
                if gr && self.gr_enabled {
                    // RFC 4724 §4.2: the peer restarted; the old session is gone.
                    self.step(Event::TcpClosed).await;
                    self.adopt(s).await;
                } else {
                    tokio::spawn(reject_collision(s));
                }
            }
        }
    }

    async fn adopt(&mut self, s: TcpStream) {
        self.connecting = None;
        self.conn = Some(Framed::new(s, BgpCodec::default()));
        self.outbound = false;
        self.step(Event::TcpConnected).await;
    }

    /// RFC 4271 §6.8 once the remote BGP Identifier is known (we are in OpenConfirm).
    async fn collide(&mut self, s: TcpStream) {
        let remote = self.fsm.negotiated().map(|n| n.peer.router_id);
        let keep_ours = remote.is_some_and(|r| {
            self.outbound == collision_keeps_local(self.fsm.config().local.router_id, r)
        });
        if keep_ours {
            tokio::spawn(reject_collision(s));
        } else {
            self.step(Event::CollisionLost).await;
            self.adopt(s).await;
        }
    }

    async fn send(&mut self, m: Outgoing) -> bool {
        let Some(c) = &mut self.conn else {
            return false;
        };
        if let Err(e) = c.send(m).await {
            tracing::debug!("bgp {}: send: {e}", self.addr);
            return false;
        }
        quick_ack(&self.conn);
        true
    }

    async fn send_routes(&mut self, u: PeerUpdate, eor: bool) {
        let Some(n) = self.fsm.negotiated().cloned() else {
            return;
        };
        let fams = self.families(&n);
        let announce: Vec<(PathAttrs, IpNet)> = u
            .announce
            .into_iter()
            .filter(|(_, p)| fams.contains(&Afi::of(p)))
            .collect();
        let withdraw: Vec<IpNet> = u
            .withdraw
            .into_iter()
            .filter(|p| fams.contains(&Afi::of(p)))
            .collect();
        let mut msgs = match codec::encode_updates(&announce, &withdraw, n.peer.asn4) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!("bgp {}: cannot encode UPDATE: {e}", self.addr);
                Vec::new()
            }
        };
        if eor {
            msgs.extend(fams.iter().map(|f| codec::end_of_rib(*f)));
        }
        let Some(c) = &mut self.conn else {
            return;
        };
        let mut ok = true;
        for m in msgs {
            if c.feed(Outgoing::Raw(m)).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok || c.flush().await.is_err() {
            self.step(Event::TcpClosed).await;
        }
    }

    /// Feeds an event and carries out the actions (which may feed further events).
    async fn step(&mut self, ev: Event) {
        let mut queue = vec![ev];
        while let Some(ev) = queue.pop() {
            let before = self.fsm.state();
            let actions = self.fsm.handle(ev);
            for a in actions {
                match a {
                    Action::Connect => {
                        let target = SocketAddr::new(self.addr, self.port);
                        let t = self.fsm.config().connect_retry;
                        let source = self.local_address;
                        let protect = Protect {
                            password: self.password.clone(),
                            ttl_security: self.ttl_security,
                        };
                        self.connecting = Some(Box::pin(async move {
                            tokio::time::timeout(t, connect(target, source, protect))
                                .await
                                .unwrap_or_else(|_| {
                                    Err(std::io::Error::new(
                                        std::io::ErrorKind::TimedOut,
                                        "connect timed out",
                                    ))
                                })
                        }));
                    }
                    Action::Close => {
                        if let Some(mut c) = self.conn.take() {
                            let _ = c.get_mut().shutdown().await;
                        }
                    }
                    Action::Send(Outgoing::Open(_)) if self.open_sent => {}
                    Action::Send(m) => {
                        if !self.send(m).await && self.conn.is_some() {
                            self.conn = None;
                            queue.push(Event::TcpClosed);
                        }
                    }
                    Action::StartTimer(t, d) => {
                        self.timers.insert(t, Instant::now() + d);
                    }
                    Action::StopTimer(t) => {
                        self.timers.remove(&t);
                    }
                    Action::SessionUp(n) => self.up(n),
                    Action::SessionDown(reason) => {
                        let graceful =
                            reason.graceful() && self.gr_enabled && self.last_gr.is_some();
                        let time = self.last_gr.as_ref().map(|g| g.time).unwrap_or(0);
                        tracing::info!(
                            "bgp {}: session down: {reason:?} (graceful: {graceful})",
                            self.addr
                        );
                        let _ = self
                            .reports
                            .send(Report::Down(self.addr, self.epoch, graceful, time));
                    }
                }
            }
            let after = self.fsm.state();
            if after != before {
                let _ = self.reports.send(Report::State(self.addr, after));
            }
        }
        // Our connection failed while a pending one waits: carry on with that one.
        if matches!(
            self.fsm.state(),
            State::Idle | State::Connect | State::Active
        ) && let Some(p) = self.pending.take()
        {
            Box::pin(self.adopt_pending(p, None)).await;
        }
        // Our connection reached OpenConfirm: the identifier is known, decide now.
        if self.fsm.state() == State::OpenConfirm
            && let Some(p) = self.pending.take()
        {
            Box::pin(self.collide_conn(p, None)).await;
        }
    }

    /// A message on the pending connection: its OPEN decides the collision.
    async fn pending_msg(&mut self, m: Option<Result<Incoming, CodecError>>) {
        match m {
            Some(Ok(Incoming::Open(o))) => {
                if let Some(p) = self.pending.take() {
                    self.collide_conn(p, Some(o)).await;
                }
            }
            _ => {
                // Anything else before an OPEN, or a close: forget it.
                self.pending = None;
            }
        }
    }

    /// RFC 4271 §6.8 between the current connection and `p`, whose OPEN may be known.
    async fn collide_conn(&mut self, p: Conn, open: Option<OpenInfo>) {
        let remote = open
            .as_ref()
            .map(|o| o.router_id)
            .or_else(|| self.fsm.negotiated().map(|n| n.peer.router_id));
        let Some(remote) = remote else {
            self.pending = Some(p);
            return;
        };
        let ours_wins = collision_keeps_local(self.fsm.config().local.router_id, remote);
        if self.conn.is_some() && self.outbound == ours_wins {
            tokio::spawn(reject_collision(p.into_inner()));
        } else {
            if self.conn.is_some() {
                self.step(Event::CollisionLost).await;
            }
            self.adopt_pending(p, open).await;
        }
    }

    /// Takes over a pending connection on which our OPEN was already sent.
    async fn adopt_pending(&mut self, p: Conn, open: Option<OpenInfo>) {
        self.connecting = None;
        self.conn = Some(p);
        self.outbound = false;
        self.open_sent = true;
        self.step(Event::TcpConnected).await;
        self.open_sent = false;
        if let Some(o) = open {
            self.step(Event::OpenReceived(o)).await;
        }
    }

    fn up(&mut self, n: Negotiated) {
        self.epoch += 1;
        if let Some(c) = &mut self.conn {
            // Both sides always announce 4-octet AS; a peer that does not gets 2-octet paths.
            c.codec_mut().asn4 = n.peer.asn4;
        }
        let local_addr = self
            .conn
            .as_ref()
            .and_then(|c| c.get_ref().local_addr().ok())
            .map(|a| a.ip().to_canonical())
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let gr = n.peer.graceful_restart.clone();
        self.last_gr = gr.clone();
        let info = PeerInfo {
            addr: self.addr,
            asn: n.peer.asn,
            local_asn: self.fsm.config().local.asn,
            router_id: n.peer.router_id,
            rr_client: self.rr_client,
            local_addr,
            local_v6: self.next_hop_v6,
            link: crate::link::shared_link(
                &crate::link::interface_addresses(),
                local_addr,
                self.addr,
            ),
            families: self.families(&n),
            gr_keep: gr
                .as_ref()
                .map(|g| {
                    g.families
                        .iter()
                        .filter(|(_, f)| *f)
                        .map(|(a, _)| *a)
                        .collect()
                })
                .unwrap_or_default(),
        };
        tracing::info!(
            "bgp {}: session established (AS {}, id {}, from {}, families {:?}, shared link {:?})",
            self.addr,
            n.peer.asn,
            n.peer.router_id,
            info.local_addr,
            info.families,
            info.link
        );
        let _ = self
            .reports
            .send(Report::Up(self.addr, self.epoch, Box::new(info), gr));
    }
}

/// What an outgoing socket is set up with before it connects.
struct Protect {
    password: Option<Password>,
    ttl_security: bool,
}

async fn connect(
    target: SocketAddr,
    source: Option<IpAddr>,
    protect: Protect,
) -> std::io::Result<TcpStream> {
    let sock = if target.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(src) = source {
        sock.bind(SocketAddr::new(src, 0))?;
    }
    // Before connect: the SYN is signed, and leaves with TTL 255.
    if let Some(pw) = &protect.password {
        sockopt::set_md5_key(&sock, target.ip(), Some(pw.as_bytes()))?;
    }
    if protect.ttl_security {
        sockopt::set_gtsm(&sock, target.is_ipv6())?;
    }
    sock.connect(target).await
}

async fn reject_collision(mut s: TcpStream) {
    let msg = Outgoing::Notification(codec::cease(|value| {
        CeaseError::ConnectionCollisionResolution { value }
    }))
    .to_message();
    if let Ok(bytes) = codec::encode_message(&msg) {
        let _ = tokio::time::timeout(Duration::from_secs(2), s.write_all(&bytes)).await;
    }
    let _ = s.shutdown().await;
}

/// For the agent: routes learned from peers in a best-route change (what to install), with
/// [`PathAttrs::installable_next_hop`]: the global next hop, or for an IPv6 route that has
/// none (or only an IPv4-mapped one) the link-local one, to be installed on the interface
/// towards the peer it came from.
pub fn learned_route(c: &BestChange) -> Option<(IpNet, IpAddr)> {
    c.best.as_ref().and_then(|r| match r.source {
        Source::Peer(_) => Some((c.prefix, r.attrs.installable_next_hop())),
        Source::Local => None,
    })
}
