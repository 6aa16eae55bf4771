//! What the agent's core is told: store mirror events, BGP speaker events, timer ticks,
//! signals, and the answers to the I/O it asked for. Every input is stamped with the time it
//! happened, so the core never reads a clock; all of it (de)serializes, so a real agent's
//! inputs can be recorded (`TWILL_RECORD_EVENTS`) and replayed.

use std::net::{IpAddr, SocketAddr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use twill_types::MacAddr;
use twill_types::cluster::ClusterConfig;
use twill_types::desired::RouteSpec;
use twill_types::lease::Lease;
use twill_types::node::PolicyStatus;

/// Milliseconds since the agent started (monotonic).
pub type Millis = u64;

/// One line of an event log: how the core was set up, or one input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Record {
    Start(Box<Start>),
    Input(Input),
}

/// What the agent knew when its loop began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    pub config: ClusterConfig,
    pub node: NodeSetup,
    /// The store key of our lease, and the lease under it.
    pub lease_key: String,
    pub lease: Lease,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpStart>,
    /// The store's endpoints (of `--store`): the host protection keeps pods from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub store_endpoints: Vec<SocketAddr>,
}

/// This node, as the backends see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSetup {
    pub name: String,
    /// The node's IPv4 pod subnet and underlay address; None on an IPv6-only node (whose
    /// IPv6 ones are its lease's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_net: Option<Ipv4Net>,
    pub underlay_dev: String,
    pub underlay_mtu: u32,
}

/// The BGP speaker as started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpStart {
    /// When the speaker started.
    pub started: Millis,
    /// A node file of ours was found: a previous agent ran here.
    pub restarting: bool,
    /// The routes of a previous agent found in the kernel at start (graceful restart), kept
    /// until BGP settles; None when this is no restart or the kernel could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retained: Option<Vec<RouteSpec>>,
}

/// One input of the core, with the time it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    /// Milliseconds since the agent started.
    pub at: Millis,
    /// Unix time in seconds (only for timestamps shown to people, e.g. lease events).
    pub unix: u64,
    pub event: Event,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The loop starts (external BGP peers of the config need no lease: start them).
    Started,
    /// The store mirror of every lease.
    Leases(StoreEvent),
    /// The lease events queued together are all in: decide what they call for.
    LeasesDone,
    /// The store mirror of external BGP peers.
    BgpPeers(StoreEvent),
    /// One event of the BGP speaker.
    Speaker(SpeakerChange),
    /// The speaker events queued together are all in.
    SpeakerDone,
    /// The reconciler's answer to a partial plan: its failures (empty when all went in).
    RouteDeltaDone { failed: Vec<String> },
    /// The deadline of [`crate::core::Core::wake_at`] is reached.
    Wake,
    /// The resync timer: repair the kernel even without store events.
    ResyncTick,
    /// The renew timer (a third of the lease TTL, or 1 s after a failure).
    RenewTick,
    /// The status timer (every second: tunnel counters, BGP sessions and settling).
    StatusTick,
    /// The policy task's status changed.
    Policy(PolicyStatus),
    /// SIGTERM or SIGINT.
    Signal,
    /// Answer to [`super::Action::CheckLease`].
    LeaseChecked(LeaseCheck),
    /// Answer to [`super::Action::RenewLease`].
    Renewed(Renewal),
    /// Answer to [`super::Action::Reacquire`].
    Reacquired(Result<LeaseHeld, String>),
    /// Answer to [`super::Action::Reconcile`].
    Reconciled(ReconcileOutcome),
    /// Answer to [`super::Action::SyncBgpPeers`]: the sessions the speaker dropped and
    /// (re)started.
    BgpPeersSynced {
        removed: Vec<IpAddr>,
        added: Vec<IpAddr>,
    },
    /// Answer to [`super::Action::RefreshBgpStatus`]: whether the status changed.
    BgpStatusRefreshed { changed: bool },
    /// The node's WireGuard key file holds a new key (`twill node rotate-key`); the engine
    /// uses it already. Only the public key is here: events are recorded.
    WireguardKey { public_key: String },
    /// The answer to [`super::Action::PublishLease`]: None when written.
    LeasePublished { error: Option<String> },
}

/// A store mirror event (keys and values as text: everything twill stores is JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreEvent {
    InSync(Vec<Kv>),
    Put(Kv),
    Delete(String),
    Lost(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kv {
    pub key: String,
    pub value: String,
}

impl From<twill_store::MirrorEvent> for StoreEvent {
    fn from(ev: twill_store::MirrorEvent) -> StoreEvent {
        use twill_store::MirrorEvent;
        let kv = |kv: twill_store::KeyValue| Kv {
            key: kv.key,
            value: String::from_utf8_lossy(&kv.value).into_owned(),
        };
        match ev {
            MirrorEvent::InSync(all) => StoreEvent::InSync(all.into_iter().map(kv).collect()),
            MirrorEvent::Put(one) => StoreEvent::Put(kv(one)),
            MirrorEvent::Delete(key) => StoreEvent::Delete(key),
            MirrorEvent::Lost(why) => StoreEvent::Lost(why),
        }
    }
}

/// A speaker event, as far as the agent uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpeakerChange {
    /// Best routes changed: the next hop of each prefix learned from a peer (None: no route
    /// from a peer any more), IPv4 and IPv6 unicast alike.
    BestRoutes(Vec<(IpNet, Option<IpAddr>)>),
    PeerState {
        peer: IpAddr,
        state: twill_bgp::State,
    },
}

impl From<twill_bgp::SpeakerEvent> for SpeakerChange {
    fn from(ev: twill_bgp::SpeakerEvent) -> SpeakerChange {
        match ev {
            // Which of them can be installed (a next hop of the prefix's family, not this
            // node, ...) is the core's decision.
            twill_bgp::SpeakerEvent::BestRoutes(changes) => SpeakerChange::BestRoutes(
                changes
                    .iter()
                    .map(|change| {
                        let hop = twill_bgp::learned_route(change).map(|(_, nh)| nh);
                        (change.prefix, hop)
                    })
                    .collect(),
            ),
            twill_bgp::SpeakerEvent::PeerState { peer, state } => {
                SpeakerChange::PeerState { peer, state }
            }
        }
    }
}

/// What the store says about our lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseCheck {
    /// Ours (the lease as the store has it), or nothing certain (None: the store did not
    /// answer): look again later.
    Held(Option<Lease>),
    /// `twill node leave` removed it.
    Left,
    /// Lost some other way: `deleted`, `taken` or `expired`, and what happened.
    Lost { event: String, message: String },
}

/// What renewing the store lease gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Renewal {
    Renewed,
    /// The store lease no longer exists: it expired.
    Expired,
    /// The store did not answer (retry soon).
    Failed(String),
}

/// The lease held after leasing again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseHeld {
    pub key: String,
    pub lease: Lease,
}

/// What a reconcile left in the kernel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileOutcome {
    /// Why the reconcile failed as a whole (the kernel could not be read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
    /// Objects of the desired state the kernel lacks afterwards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<Missing>,
    /// Objects the kernel refused, with its reason and the attempts so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<Refused>,
}

/// An object of the desired state the kernel does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missing {
    Route { dst: IpNet, via: IpAddr },
    Neighbour { ip: IpAddr },
    Fdb { mac: MacAddr, dst: IpAddr },
}

/// A kernel object the reconciler keeps retrying.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    pub object: ObjectRef,
    pub reason: String,
    pub attempts: u32,
}

/// The reconciler's name of an object (`twill_dataplane::reconcile::ObjectKey`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectRef {
    Device(String),
    Route(IpNet),
    Neighbour(IpAddr),
    Fdb(MacAddr),
    Sysctl(String),
    Address(String),
    Table(String),
    Chain(String),
}
