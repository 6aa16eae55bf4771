//! The agent's BGP side: one [`twill_bgp::Speaker`] per node, driven by the cluster config's
//! `bgp` section, the leases the agent already mirrors (mesh and route-reflector peers) and the
//! external peers in the store (`twill bgp peer add`).
//!
//! The speaker's Loc-RIB becomes kernel routes two ways (decided in the agent's core,
//! [`crate::core`], which keeps the learned routes):
//! - the agent's ordinary reconcile adds the learned routes to the backend's desired state
//!   ([`learned_specs`]), so the observe/diff/apply, resync and ownership rules
//!   (protocol 117) are the same as for every other route;
//! - between reconciles, changes are programmed as they stream in ([`route_delta`]):
//!   only the prefixes that changed, without reading the whole table back, so the kernel fills
//!   while the rest of a table is still arriving. The next reconcile checks the result.
//!
//! Dual-stack nodes advertise their IPv6 subnet too (MP-BGP, with their IPv6 underlay address
//! as next hop), listen on their IPv6 underlay address as well, and peer over IPv6 with nodes
//! that have one; learned IPv6 routes take the same two ways into the kernel.
//!
//! A dual-stack node without an IPv6 underlay address sends its IPv6 subnet over its IPv4
//! sessions with an IPv4-mapped next hop (`::ffff:a.b.c.d`, as BIRD does) plus, to peers on
//! its link, its link-local address there (RFC 2545). Peers on that link route to it by the
//! link-local one; elsewhere the route is not installed: Linux has no IPv6 route via an IPv4
//! gateway (`RTA_VIA` is IPv4-only: "IPv6 does not support RTA_VIA attribute").
//!
//! A node of an IPv6-only cluster has no IPv4 at all: its speaker listens on its IPv6
//! underlay address only, peers only over IPv6, advertises only its IPv6 subnet, and takes
//! a router ID hashed from its node name unless the config pins one
//! ([`BgpConfig::router_id`]); a peer that would share that ID is reported.
//!
//! The pure parts ([`topology`], [`learned_specs`], [`route_delta`]) are unit-tested here;
//! [`BgpSide`] is the speaker's I/O (sessions, their keys, status reads).
//!
//! Graceful restart, both ways: a restarted agent sets the R bit so peers keep its prefix
//! until its End-of-RIB, and it keeps its own BGP routes in the kernel until its peers have
//! resent theirs (the core's settling), so neither direction loses a packet. The routes kept
//! are read from the kernel once, at start, and are an explicit input of every reconcile
//! until then ([`Retained`]); the kernel is never read back into the desired state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;
use tracing::{info, warn};
use twill_backend::LocalNode;
use twill_backend::wireguard::{
    encrypted_subnet_of, encrypted_subnet6_of, must_not_route_in_clear,
};
use twill_bgp::{PeerConfig, Source, Speaker, SpeakerConfig, SpeakerEvent};
use twill_dataplane::reconcile::{ObservedRoute, Plan};
use twill_types::bgp_auth::{BgpAuth, PasswordSource};
use twill_types::cluster::{BgpConfig, BgpPeer};
use twill_types::cluster::{overlaps, overlaps6};
use twill_types::desired::{DesiredState, PeerPath, RouteSpec};
use twill_types::lease::Lease;
use twill_types::node::{BgpPeerStatus, BgpRouteStatus, BgpStatus};

/// Reconnect pace: a restarted peer is back within a second (a SYN a second to a peer that
/// is down costs nothing worth saving).
const CONNECT_RETRY: Duration = Duration::from_secs(1);

/// Why a peer is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    NodeMesh,
    /// The peer is one of the cluster's route reflectors.
    RouteReflector,
    /// We reflect routes to this peer.
    RrClient,
    External,
}

impl PeerKind {
    fn name(self) -> &'static str {
        match self {
            PeerKind::NodeMesh => "node-mesh",
            PeerKind::RouteReflector => "route-reflector",
            PeerKind::RrClient => "rr-client",
            PeerKind::External => "external",
        }
    }
}

/// One peer the topology asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantPeer {
    pub remote_as: u32,
    pub kind: PeerKind,
    pub node: Option<String>,
    /// The peer's BGP port (the cluster's listen port for nodes, 179 for routers).
    pub port: u16,
    /// Password and TTL security: the `bgp` section's for nodes, the peer's own for routers.
    pub auth: BgpAuth,
}

/// The underlay address families a node has: both, IPv4 alone (a dual-stack node without
/// an IPv6 underlay address, or an IPv4-only cluster), or IPv6 alone (an IPv6-only cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Underlays {
    pub v4: bool,
    pub v6: bool,
}

impl Underlays {
    pub const V4: Underlays = Underlays {
        v4: true,
        v6: false,
    };
    pub const V6: Underlays = Underlays {
        v4: false,
        v6: true,
    };
    pub const DUAL: Underlays = Underlays { v4: true, v6: true };
}

/// The peers node `me` should have: nodes by the mesh or the reflectors, then external
/// peers of the config and of the store (global, or for `me`). Nodes are peered with over
/// every family both ends have an underlay address of: each session carries what its family
/// can give a next hop to (IPv4 routes on the IPv4 one; IPv6 routes on both, over the IPv4
/// one with the IPv6 next hop the sender advertises, RFC 2545), so either keeps the IPv6
/// routes up while the other is down. Without an IPv4 underlay (an IPv6-only node) nothing
/// is peered with over IPv4, external routers included; without an IPv6 one, configured
/// IPv6 routers are still peered with (routing to them is the operator's). Pure.
pub fn topology(
    cfg: &BgpConfig,
    me: &str,
    underlays: Underlays,
    leases: &[Lease],
    store_peers: &[BgpPeer],
) -> BTreeMap<IpAddr, WantPeer> {
    let mut want = BTreeMap::new();
    let my_as = cfg.node_as(me);
    let i_reflect = cfg.is_reflector(me);
    for l in leases.iter().filter(|l| l.node != me) {
        // A session per family both ends have an underlay address of.
        let address = l.public_ip().filter(|_| underlays.v4);
        let address6 = l.public_ip6().filter(|_| underlays.v6);
        if address.is_none() && address6.is_none() {
            continue;
        }
        let kind = if cfg.node_to_node_mesh {
            PeerKind::NodeMesh
        } else if cfg.is_reflector(&l.node) {
            PeerKind::RouteReflector
        } else if i_reflect {
            PeerKind::RrClient
        } else {
            continue;
        };
        let peer = WantPeer {
            remote_as: cfg.node_as(&l.node),
            kind,
            node: Some(l.node.clone()),
            port: cfg.listen_port,
            auth: cfg.auth.clone(),
        };
        if let Some(ip6) = address6 {
            want.entry(IpAddr::V6(ip6)).or_insert(peer.clone());
        }
        if let Some(ip4) = address {
            want.entry(IpAddr::V4(ip4)).or_insert(peer);
        }
    }
    let external = cfg.peers.iter().chain(store_peers);
    let reachable = |p: &&BgpPeer| underlays.v4 || p.address.is_ipv6();
    for p in external
        .filter(|p| p.node.as_deref().is_none_or(|n| n == me))
        .filter(reachable)
    {
        // A node's own address is never an external router; the config wins over the store.
        let kind = if i_reflect && p.as_number == my_as {
            // Routers in our AS that peer with a reflector are its clients (the usual
            // reason to point an iBGP router at a cluster's reflector).
            PeerKind::RrClient
        } else {
            PeerKind::External
        };
        want.entry(p.address).or_insert(WantPeer {
            remote_as: p.as_number,
            kind,
            node: None,
            port: twill_types::cluster::DEFAULT_BGP_PORT,
            auth: p.auth.clone(),
        });
    }
    want
}

/// The nodes among `leases` whose router ID ([`BgpConfig::router_id`], from their names and
/// IPv4 underlay addresses) is `mine` too, node `me` aside. Pure.
pub fn router_id_clashes(
    cfg: &BgpConfig,
    me: &str,
    mine: Ipv4Addr,
    leases: &[Lease],
) -> Vec<String> {
    leases
        .iter()
        .filter(|l| l.node != me && cfg.router_id(&l.node, l.public_ip()) == mine)
        .map(|l| l.node.clone())
        .collect()
}

/// A session's TCP-MD5 key, read now from where `auth` says (the config itself, a file on
/// this node, or the agent's environment). A file's trailing newline is not part of the key.
/// Errors name the source, never the secret.
pub fn resolve_password(auth: &BgpAuth) -> Result<Option<twill_bgp::Password>, String> {
    let key: Vec<u8> = match auth.source() {
        None => return Ok(None),
        Some(PasswordSource::Inline(s)) => s.expose().as_bytes().to_vec(),
        Some(PasswordSource::File(path)) => {
            let mut b = std::fs::read(path).map_err(|e| {
                format!("cannot read the BGP password file {}: {e}", path.display())
            })?;
            if b.ends_with(b"\n") {
                b.pop();
                if b.ends_with(b"\r") {
                    b.pop();
                }
            }
            b
        }
        Some(PasswordSource::Env(name)) => std::env::var_os(name)
            .ok_or_else(|| format!("the BGP password variable {name} is not set"))?
            .into_encoded_bytes(),
    };
    twill_bgp::Password::new(key)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Kernel routes for the learned best routes, skipping what must not be touched: anything
/// overlapping this node's pod subnet or underlay subnet (of either family), default routes,
/// next hops that are this node, next hops of the other family than the prefix (an IPv6
/// route over an IPv4 session from a peer without an IPv6 next hop: an IPv4-mapped one, when
/// no link-local one came with it, see [`twill_bgp::PathAttrs::installable_next_hop`]), IPv4
/// routes on a node without IPv4 (IPv6-only), and prefixes the backend already routes (tunnel modes, WireGuard). A prefix inside the
/// subnet (of its family) of a peer WireGuard encrypts goes into `twill.wg` instead of to
/// its clear next hop: with encryption on, that peer's pods are reached encrypted whatever
/// BGP says; one inside the subnet of a peer to encrypt that WireGuard cannot reach (no key;
/// for IPv6 also a device MTU below 1280) is not installed at all. IPv6 routes, only on a
/// node with an IPv6 pod subnet, leave by the underlay device: via the peer's global next
/// hop, or its link-local one (RFC 2545) when it sent no global one, which is only
/// meaningful on that device (every twill session runs over the underlay). Pure.
pub fn learned_specs(
    learned: &BTreeMap<IpNet, IpAddr>,
    node: &LocalNode,
    desired: &DesiredState,
) -> Vec<RouteSpec> {
    let carried: HashSet<IpNet> = desired
        .routes
        .iter()
        .map(|r| r.dst)
        .chain(
            desired
                .peers
                .iter()
                .filter(|p| !matches!(p.path, PeerPath::Skipped(_) | PeerPath::Bgp))
                .filter_map(|p| p.subnet.map(IpNet::V4)),
        )
        .chain(desired.peers.iter().filter_map(|p| {
            let by_backend = !matches!(p.path6, None | Some(PeerPath::Skipped(_) | PeerPath::Bgp));
            p.subnet6.filter(|_| by_backend).map(IpNet::V6)
        }))
        .collect();
    learned
        .iter()
        .filter(|(dst, _)| !carried.contains(*dst))
        .filter_map(|(dst, via)| match (*dst, *via) {
            // Only a node with IPv4 takes IPv4 routes (an IPv6-only one has nowhere to send
            // them, nor a subnet they could collide with).
            (IpNet::V4(dst), IpAddr::V4(via)) => learned_spec4(dst, via, node, desired),
            (IpNet::V6(dst), IpAddr::V6(via)) => learned_spec6(dst, via, node, desired),
            _ => None,
        })
        .collect()
}

fn learned_spec4(
    dst: Ipv4Net,
    via: Ipv4Addr,
    node: &LocalNode,
    desired: &DesiredState,
) -> Option<RouteSpec> {
    let (subnet, public_net) = node.ipv4()?;
    let usable = dst.prefix_len() != 0
        && !overlaps(dst, subnet)
        && !overlaps(dst, public_net.trunc())
        && via != public_net.addr()
        && (encrypted_subnet_of(desired, dst).is_some()
            || !must_not_route_in_clear(desired, IpNet::V4(dst)));
    if !usable {
        return None;
    }
    Some(match encrypted_subnet_of(desired, dst) {
        Some(subnet) => twill_backend::wireguard::route(dst, subnet),
        None => RouteSpec {
            dst: dst.into(),
            via: via.into(),
            dev: node.underlay_dev.clone(),
            // A next hop off the underlay subnet (a multi-hop iBGP peer) is only
            // usable as an on-link gateway.
            onlink: !public_net.contains(&via),
        },
    })
}

fn learned_spec6(
    dst: Ipv6Net,
    via: Ipv6Addr,
    node: &LocalNode,
    desired: &DesiredState,
) -> Option<RouteSpec> {
    // Only a dual-stack node (one with an IPv6 pod subnet) takes IPv6 routes: an IPv4-only
    // cluster's kernels stay as they were whatever IPv6 routes its routers offer.
    let ours = node.subnet6?;
    // Never the default route, nor one into this node's subnets or via this node itself.
    let not_ours = dst.prefix_len() != 0
        && !overlaps6(dst, ours)
        && node
            .public_net6
            .is_none_or(|underlay| !overlaps6(dst, underlay.trunc()) && via != underlay.addr());
    if !not_ours {
        return None;
    }
    // Inside an encrypted peer's IPv6 subnet: into twill.wg, as for IPv4. The lease says
    // which peer holds the subnet, so the BGP next hop is not used (it may be an IPv4-mapped
    // one, from a peer that has no IPv6 underlay: WireGuard carries IPv6 over IPv4).
    if let Some(subnet6) = encrypted_subnet6_of(desired, dst) {
        return Some(twill_backend::wireguard::route6_within(dst, subnet6));
    }
    let link_local = via.is_unicast_link_local();
    // An IPv4-mapped next hop (from a peer without an IPv6 underlay, with no link-local one
    // because it is not on our link) cannot be routed to: Linux refuses IPv6 routes via an
    // IPv4 gateway. Peers on our link send their link-local one too, which is used instead.
    let usable = !(via.is_unspecified() || via.is_loopback() || via.is_multicast())
        && via.to_ipv4_mapped().is_none()
        && !must_not_route_in_clear(desired, IpNet::V6(dst));
    usable.then(|| RouteSpec {
        dst: dst.into(),
        via: via.into(),
        dev: node.underlay_dev.clone(),
        // As for IPv4: a global next hop off the IPv6 underlay subnet is an on-link
        // gateway; a link-local one is on the link by definition.
        onlink: !link_local && !node.public_net6.is_some_and(|n| n.contains(&via)),
    })
}

/// A route the agent has programmed, and whether it came from BGP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Programmed {
    pub spec: RouteSpec,
    pub from_bgp: bool,
}

/// The kernel changes for the prefixes in `changed`, from what `programmed` says the kernel
/// holds to what `learned` asks for (through the same rules as [`learned_specs`]): a route
/// the agent does not own yet is added exclusively (a route of another owner is reported,
/// never overwritten), one it owns is replaced, and only routes that came from BGP are ever
/// deleted here. `programmed` is updated to the result. Pure.
pub fn route_delta(
    changed: &BTreeSet<IpNet>,
    learned: &BTreeMap<IpNet, IpAddr>,
    node: &LocalNode,
    desired: &DesiredState,
    programmed: &mut HashMap<IpNet, Programmed>,
) -> Plan {
    let subset: BTreeMap<IpNet, IpAddr> = changed
        .iter()
        .filter_map(|p| learned.get(p).map(|nh| (*p, *nh)))
        .collect();
    let mut want: HashMap<IpNet, RouteSpec> = learned_specs(&subset, node, desired)
        .into_iter()
        .map(|r| (r.dst, r))
        .collect();
    let mut plan = Plan::default();
    for p in changed {
        match (want.remove(p), programmed.get(p)) {
            (Some(spec), have) => {
                match have {
                    // Already there (e.g. kept from before a restart): now BGP's to remove.
                    Some(have) if have.spec == spec => {}
                    Some(_) => plan.replace_routes.push(spec.clone()),
                    None => plan.add_routes.push(spec.clone()),
                }
                programmed.insert(
                    *p,
                    Programmed {
                        spec,
                        from_bgp: true,
                    },
                );
            }
            (None, Some(have)) if have.from_bgp => {
                plan.delete_routes
                    .push(ObservedRoute::from_spec(&have.spec));
                programmed.remove(p);
            }
            (None, _) => {}
        }
    }
    plan
}

/// Starts the speaker on a thread of its own (with its own single-threaded runtime), so its
/// sessions read, answer and keep their hold timers while the agent's loop is busy applying a
/// large table or running `nft`. Its handle and event channel work from any runtime.
async fn start_on_own_thread(
    sc: SpeakerConfig,
) -> anyhow::Result<(Speaker, mpsc::UnboundedReceiver<SpeakerEvent>)> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("twill-bgp".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("BGP runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                match Speaker::start(sc).await {
                    Ok(started) => {
                        let _ = tx.send(Ok(started));
                        // The speaker's tasks live as long as this runtime: for the process.
                        std::future::pending::<()>().await
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into()));
                    }
                }
            })
        })?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the BGP thread ended while starting"))?
}

/// The running speaker: its sessions as given, their keys, and its status as last read. What
/// the agent decides from its events (learned routes, settling, deltas) is in
/// [`crate::core`].
pub struct BgpSide {
    cfg: BgpConfig,
    me: String,
    /// This node's IPv4 underlay address; None on an IPv6-only node.
    my_ip: Option<Ipv4Addr>,
    /// This node's IPv6 underlay address, when it has one.
    my_ip6: Option<Ipv6Addr>,
    pub speaker: Speaker,
    events: Option<mpsc::UnboundedReceiver<SpeakerEvent>>,
    /// Peers given to the speaker.
    running: BTreeMap<IpAddr, WantPeer>,
    /// Their TCP-MD5 keys as given (read again at every sync: a changed key re-adds the peer).
    running_keys: HashMap<IpAddr, Option<twill_bgp::Password>>,
    /// This speaker's router ID, and the nodes already reported for sharing it.
    router_id: Ipv4Addr,
    id_clashes: BTreeSet<String>,
    /// IPv4 routers already reported as unreachable from this IPv6-only node.
    unreachable_reported: BTreeSet<IpAddr>,
    pub status: Option<BgpStatus>,
}

impl BgpSide {
    /// Starts the speaker for this node: listening on its underlay addresses (IPv4 and IPv6,
    /// whichever it has), originating its pod subnets (the IPv6 one with its IPv6 underlay
    /// address as next hop, plus the underlay link's link-local address for peers on that
    /// link, RFC 2545), and (after a restart) asking peers to keep its routes until
    /// End-of-RIB. Its router ID is [`BgpConfig::router_id`]'s.
    pub async fn start(
        cfg: BgpConfig,
        node: &LocalNode,
        restarting: bool,
    ) -> anyhow::Result<BgpSide> {
        let my_ip = node.public_net.map(|n| n.addr());
        let my_ip6 = node.public_net6.map(|n| n.addr());
        let asn = cfg.node_as(&node.name);
        let router_id = cfg.router_id(&node.name, my_ip);
        let mut sc = SpeakerConfig::new(asn, router_id);
        let listen = |ip: IpAddr| SocketAddr::new(ip, cfg.listen_port);
        let mut listen_on = my_ip
            .map(IpAddr::V4)
            .into_iter()
            .chain(my_ip6.map(IpAddr::V6))
            .map(listen);
        sc.listen = Some(
            listen_on
                .next()
                .ok_or_else(|| anyhow::anyhow!("this node has no underlay address"))?,
        );
        sc.listen_also = listen_on.collect();
        sc.next_hop_v6 = my_ip6;
        sc.cluster_id = cfg.cluster_id;
        sc.hold_time = cfg.hold_time;
        sc.connect_retry = CONNECT_RETRY;
        sc.graceful_restart.enabled = cfg.graceful_restart;
        sc.graceful_restart.restarting = restarting && cfg.graceful_restart;
        // Aggregated: the node's blocks, never per pod.
        sc.local_routes
            .extend(node.subnet.map(|subnet| (IpNet::V4(subnet), None)));
        if let Some(subnet6) = node.subnet6 {
            if my_ip6.is_none() {
                warn!(
                    %subnet6,
                    "bgp: this node has no IPv6 underlay address: its IPv6 subnet goes out \
                     with an IPv4-mapped next hop and its link-local address, so peers on \
                     its link route to it and others cannot (Linux routes no IPv6 via an \
                     IPv4 gateway)"
                );
            }
            sc.local_routes.push((IpNet::V6(subnet6), None));
        }
        let (speaker, events) = start_on_own_thread(sc).await?;
        info!(
            asn, %router_id, ipv4 = ?my_ip, port = cfg.listen_port, restarting,
            ipv6 = ?my_ip6, subnet6 = ?node.subnet6,
            "bgp speaker running"
        );
        Ok(BgpSide {
            cfg,
            me: node.name.clone(),
            my_ip,
            my_ip6,
            speaker,
            events: Some(events),
            running: BTreeMap::new(),
            running_keys: HashMap::new(),
            router_id,
            id_clashes: BTreeSet::new(),
            unreachable_reported: BTreeSet::new(),
            status: None,
        })
    }

    /// The speaker's events, for the agent's loop (taken once).
    pub fn take_events(&mut self) -> Option<mpsc::UnboundedReceiver<SpeakerEvent>> {
        self.events.take()
    }

    /// Gives the speaker the peers the topology asks for now (removing, adding and
    /// re-adding changed ones); returns the sessions removed and those (re)added.
    pub fn sync_peers(
        &mut self,
        leases: &[Lease],
        store: &[BgpPeer],
    ) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let underlays = Underlays {
            v4: self.my_ip.is_some(),
            v6: self.my_ip6.is_some(),
        };
        let mut want = topology(&self.cfg, &self.me, underlays, leases, store);
        for ip in self
            .my_ip
            .map(IpAddr::V4)
            .into_iter()
            .chain(self.my_ip6.map(IpAddr::V6))
        {
            want.remove(&ip);
        }
        // The config refuses IPv4 routers in an IPv6-only cluster; `twill bgp peer add` can
        // still store one, which topology leaves out: say why once.
        if self.my_ip.is_none() {
            for p in store.iter().filter(|p| p.address.is_ipv4()) {
                if self.unreachable_reported.insert(p.address) {
                    warn!(
                        peer = %p.address,
                        "bgp: not peering with IPv4 router {}: this node has no IPv4 underlay \
                         (the cluster is IPv6-only); add the router by its IPv6 address",
                        p.address
                    );
                }
            }
        }
        for node in router_id_clashes(&self.cfg, &self.me, self.router_id, leases) {
            if self.id_clashes.insert(node.clone()) {
                warn!(
                    router_id = %self.router_id, %node,
                    "bgp: node {node} has this node's router ID: sessions between them fail \
                     and a reflector drops one's routes; set bgp.nodes.NAME.routerId for one"
                );
            }
        }
        // Each session's key, read now. A key that cannot be read: a running session keeps
        // the one it has; a new one waits (never a session without the key it should have).
        let mut keys = HashMap::new();
        want.retain(|addr, w| match resolve_password(&w.auth) {
            Ok(k) => {
                keys.insert(*addr, k);
                true
            }
            Err(e) => match self.running_keys.get(addr) {
                Some(k) if self.running.get(addr) == Some(w) => {
                    warn!(peer = %addr, "bgp: {e}; the session keeps its key");
                    keys.insert(*addr, k.clone());
                    true
                }
                _ => {
                    warn!(peer = %addr, "bgp: {e}; not peering until it can be read");
                    false
                }
            },
        });
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        for (addr, old) in &self.running {
            if want.get(addr) != Some(old) || keys.get(addr) != self.running_keys.get(addr) {
                info!(peer = %addr, "bgp: removing peer");
                let _ = self.speaker.remove_peer(*addr);
                removed.push(*addr);
            }
        }
        for (addr, w) in &want {
            if self.running.get(addr) == Some(w) && keys.get(addr) == self.running_keys.get(addr) {
                continue;
            }
            let password = keys.get(addr).cloned().flatten();
            info!(
                peer = %addr, asn = w.remote_as, kind = w.kind.name(),
                md5 = password.is_some(), ttl_security = w.auth.ttl_security,
                "bgp: adding peer"
            );
            let mut p = PeerConfig::new(*addr, w.remote_as);
            p.rr_client = w.kind == PeerKind::RrClient;
            p.port = w.port;
            p.graceful_restart = self.cfg.graceful_restart;
            // From the underlay address of the session's family (the one peers know).
            p.local_address = match addr {
                IpAddr::V4(_) => self.my_ip.map(IpAddr::V4),
                IpAddr::V6(_) => self.my_ip6.map(IpAddr::V6),
            };
            p.password = password;
            p.ttl_security = w.auth.ttl_security;
            let _ = self.speaker.add_peer(p);
            added.push(*addr);
        }
        self.running = want;
        self.running_keys = keys;
        (removed, added)
    }

    /// Refreshes [`BgpSide::status`] from the speaker (`settled` as the core has it); true
    /// when it changed.
    pub async fn refresh_status(&mut self, settled: bool) -> bool {
        let Ok(st) = self.speaker.status().await else {
            return false;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let old: HashMap<IpAddr, Option<u64>> = self
            .status
            .iter()
            .flat_map(|s| s.peers.iter().map(|p| (p.address, p.since)))
            .collect();
        let peers = st
            .peers
            .iter()
            .map(|p| {
                let want = self.running.get(&p.address);
                let mut since = p.uptime_secs.map(|u| now.saturating_sub(u));
                // Keep the earlier figure when it only differs by rounding, so an unchanged
                // session does not rewrite the file every second.
                if let (Some(s), Some(Some(o))) = (since, old.get(&p.address))
                    && s.abs_diff(*o) <= 1
                {
                    since = Some(*o);
                }
                BgpPeerStatus {
                    address: p.address,
                    as_number: p.remote_as,
                    kind: want.map(|w| w.kind.name()).unwrap_or("external").into(),
                    node: want.and_then(|w| w.node.clone()),
                    state: format!("{:?}", p.state),
                    since,
                    received: p.prefixes.received,
                    accepted: p.prefixes.accepted,
                    sent: p.prefixes.sent,
                    stale: p.prefixes.stale,
                }
            })
            .collect();
        let routes = st
            .routes
            .iter()
            .map(|r| BgpRouteStatus {
                prefix: r.prefix,
                next_hop: r.attrs.next_hop,
                as_path: r.attrs.as_path_flat(),
                from: match r.source {
                    Source::Peer(a) => Some(a),
                    Source::Local => None,
                },
                best: true,
                stale: r.stale,
            })
            .collect();
        let new = BgpStatus {
            as_number: st.asn,
            router_id: st.router_id,
            settled,
            peers,
            routes,
        };
        let changed = self.status.as_ref() != Some(&new);
        self.status = Some(new);
        changed
    }
}

/// Routes a previous agent left in the kernel, found once when a restarted agent starts:
/// they are what pods use while the peers resend their tables (graceful restart), so every
/// reconcile keeps those the desired state lacks, until BGP has settled or `until` passed.
/// After that the next reconcile removes whatever BGP did not learn again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retained {
    pub routes: Vec<RouteSpec>,
    /// Milliseconds since the agent started.
    pub until: u64,
}

/// The routes of `observed` that twill writes (unicast, via a gateway and a link, default
/// metric and TOS of their family): those a restarted agent keeps.
pub fn kept_routes(observed: &[ObservedRoute]) -> Vec<RouteSpec> {
    observed
        .iter()
        .filter(|o| o.unicast && o.is_primary())
        .filter_map(|o| {
            Some(RouteSpec {
                dst: o.dst,
                via: o.via?,
                dev: o.dev.clone()?,
                onlink: o.onlink,
            })
        })
        .collect()
}

impl Retained {
    /// True while the routes are still to be kept (`now` in milliseconds since the agent
    /// started).
    pub fn holds(&self, settled: bool, now: u64) -> bool {
        !settled && now < self.until
    }

    /// Adds the retained routes to destinations `desired` has no route for, except clear
    /// routes into what must now be encrypted. Pure.
    pub fn add_missing(&self, desired: &mut DesiredState) {
        let have: HashSet<IpNet> = desired.routes.iter().map(|r| r.dst).collect();
        let keep: Vec<RouteSpec> = self
            .routes
            .iter()
            .filter(|r| !have.contains(&r.dst))
            .filter(|r| {
                r.dev == twill_backend::wireguard::DEVICE
                    || !must_not_route_in_clear(desired, r.dst)
            })
            .cloned()
            .collect();
        desired.routes.extend(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twill_types::cluster::{BackendKind, BgpNode};
    use twill_types::desired::PeerPlan;

    fn lease(name: &str, subnet: &str, ip: &str) -> Lease {
        Lease {
            node: name.into(),
            subnet: Some(subnet.parse().unwrap()),
            public_net: Some(format!("{ip}/24").parse().unwrap()),
            backend: BackendKind::Bgp,
            vtep_mac: None,
            wireguard_public_key: None,
            subnet6: None,
            public_net6: None,
            vtep_mac6: None,
        }
    }

    fn leases() -> Vec<Lease> {
        vec![
            lease("h1", "10.244.1.0/24", "192.168.1.11"),
            lease("h2", "10.244.2.0/24", "192.168.1.12"),
            lease("h3", "10.244.3.0/24", "192.168.1.13"),
        ]
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn full_mesh_with_per_node_as() {
        let mut cfg = BgpConfig::default();
        cfg.nodes.insert(
            "h2".into(),
            BgpNode {
                as_number: 65002,
                router_id: None,
            },
        );
        let t = topology(&cfg, "h1", Underlays::V4, &leases(), &[]);
        assert_eq!(t.len(), 2);
        let h2 = &t[&ip("192.168.1.12")];
        assert_eq!(
            (h2.remote_as, h2.kind, h2.node.as_deref(), h2.port),
            (65002, PeerKind::NodeMesh, Some("h2"), 179)
        );
        assert_eq!(t[&ip("192.168.1.13")].remote_as, 64512);
    }

    #[test]
    fn reflectors_and_clients() {
        let cfg = BgpConfig {
            node_to_node_mesh: false,
            route_reflectors: vec!["h1".into()],
            peers: vec![
                BgpPeer {
                    address: ip("192.168.1.200"),
                    as_number: 64512,
                    node: Some("h1".into()),
                    auth: BgpAuth::default(),
                },
                BgpPeer {
                    address: ip("192.168.1.1"),
                    as_number: 65000,
                    node: None,
                    auth: BgpAuth::default(),
                },
            ],
            ..BgpConfig::default()
        };
        // The reflector: every other node and the iBGP router are clients; eBGP stays external.
        let rr = topology(&cfg, "h1", Underlays::V4, &leases(), &[]);
        assert_eq!(rr[&ip("192.168.1.12")].kind, PeerKind::RrClient);
        assert_eq!(rr[&ip("192.168.1.200")].kind, PeerKind::RrClient);
        assert_eq!(rr[&ip("192.168.1.1")].kind, PeerKind::External);
        // A client: only the reflector (and global external peers), not the other client.
        let c = topology(&cfg, "h2", Underlays::V4, &leases(), &[]);
        assert_eq!(
            c.keys().copied().collect::<Vec<_>>(),
            vec![ip("192.168.1.1"), ip("192.168.1.11")]
        );
        assert_eq!(c[&ip("192.168.1.11")].kind, PeerKind::RouteReflector);
        // No mesh, no reflectors: external peers only.
        let none = BgpConfig {
            node_to_node_mesh: false,
            ..BgpConfig::default()
        };
        assert!(topology(&none, "h1", Underlays::V4, &leases(), &[]).is_empty());
    }

    #[test]
    fn passwords_are_read_from_where_the_config_says() {
        use twill_types::bgp_auth::Secret;
        assert_eq!(resolve_password(&BgpAuth::default()), Ok(None));
        let inline = BgpAuth {
            password: Some(Secret::new("inline-pw")),
            ..BgpAuth::default()
        };
        let k = resolve_password(&inline).unwrap().unwrap();
        assert_eq!(k.as_bytes(), b"inline-pw");
        let path =
            std::env::temp_dir().join(format!("twill-bgp-pw-{}-{}", std::process::id(), line!()));
        std::fs::write(&path, "from-a-file\n").unwrap();
        let file = BgpAuth {
            password_file: Some(path.clone()),
            ..BgpAuth::default()
        };
        let k = resolve_password(&file).unwrap().unwrap();
        assert_eq!(k.as_bytes(), b"from-a-file");
        std::fs::remove_file(&path).unwrap();
        let e = resolve_password(&file).unwrap_err();
        assert!(e.contains(&path.display().to_string()), "{e}");
        let env = BgpAuth {
            password_env: Some("TWILL_TEST_SURELY_UNSET_BGP_PW".into()),
            ..BgpAuth::default()
        };
        assert!(resolve_password(&env).unwrap_err().contains("not set"));
        // The mesh's protection goes to node peers, each router's own to routers.
        let cfg = BgpConfig {
            auth: inline.clone(),
            peers: vec![BgpPeer {
                address: ip("10.0.0.1"),
                as_number: 65000,
                node: None,
                auth: BgpAuth {
                    ttl_security: true,
                    ..BgpAuth::default()
                },
            }],
            ..BgpConfig::default()
        };
        let t = topology(&cfg, "h1", Underlays::V4, &leases(), &[]);
        assert_eq!(t[&ip("192.168.1.12")].auth, inline);
        assert!(t[&ip("10.0.0.1")].auth.ttl_security);
        assert!(!t[&ip("10.0.0.1")].auth.has_password());
    }

    #[test]
    fn store_peers_per_node_and_config_wins() {
        let cfg = BgpConfig {
            node_to_node_mesh: false,
            peers: vec![BgpPeer {
                address: ip("10.0.0.1"),
                as_number: 65000,
                node: None,
                auth: BgpAuth::default(),
            }],
            ..BgpConfig::default()
        };
        let store = [
            BgpPeer {
                address: ip("10.0.0.1"),
                as_number: 65099,
                node: None,
                auth: BgpAuth::default(),
            },
            BgpPeer {
                address: ip("10.0.0.2"),
                as_number: 65002,
                node: Some("h2".into()),
                auth: BgpAuth::default(),
            },
        ];
        let t = topology(&cfg, "h1", Underlays::V4, &leases(), &store);
        assert_eq!(t.len(), 1);
        assert_eq!(t[&ip("10.0.0.1")].remote_as, 65000);
        assert_eq!(
            topology(&cfg, "h2", Underlays::V4, &leases(), &store).len(),
            2
        );
    }

    fn node() -> LocalNode {
        LocalNode {
            name: "h1".into(),
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            public_net: Some("192.168.1.11/24".parse().unwrap()),
            underlay_dev: "eth0".into(),
            underlay_mtu: 1500,
            subnet6: None,
            public_net6: None,
        }
    }

    #[test]
    fn learned_routes_become_kernel_routes_safely() {
        let mut learned = BTreeMap::new();
        for (p, nh) in [
            ("10.244.2.0/24", "192.168.1.12"), // a peer's block: installed
            ("10.50.0.0/24", "192.168.2.1"),   // off-subnet next hop: onlink
            ("10.244.1.0/24", "192.168.1.12"), // our own block: never
            ("10.244.0.0/16", "192.168.1.12"), // covers our block: never
            ("192.168.1.0/24", "192.168.1.1"), // the underlay itself: never
            ("0.0.0.0/0", "192.168.1.1"),      // the default route: never
            ("10.60.0.0/24", "192.168.1.11"),  // via ourselves: never
            ("10.244.3.0/24", "192.168.1.13"), // carried by the backend: not twice
        ] {
            learned.insert(p.parse().unwrap(), nh.parse().unwrap());
        }
        let mut desired = DesiredState::default();
        desired.peers.push(PeerPlan {
            node: "h3".into(),
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            public_ip: Some("192.168.1.13".parse().unwrap()),
            path: PeerPath::Vxlan,
            subnet6: None,
            path6: None,
        });
        let specs = learned_specs(&learned, &node(), &desired);
        let got: Vec<(String, String, bool)> = specs
            .iter()
            .map(|r| (r.dst.to_string(), r.via.to_string(), r.onlink))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.50.0.0/24".into(), "192.168.2.1".into(), true),
                ("10.244.2.0/24".into(), "192.168.1.12".into(), false),
            ]
        );
        assert!(specs.iter().all(|r| r.dev == "eth0"));
    }

    #[test]
    fn with_encryption_learned_routes_into_a_peers_subnet_go_through_wireguard() {
        let mut learned = BTreeMap::new();
        for (p, nh) in [
            ("10.244.2.0/24", "192.168.1.12"), // the encrypted peer's block: the backend's
            ("10.244.2.64/26", "192.168.1.12"), // inside it: into twill.wg
            ("10.244.4.0/24", "192.168.1.14"), // a peer to encrypt without a key: nowhere
            ("10.244.4.128/25", "192.168.1.14"),
            ("10.50.0.0/24", "192.168.1.1"), // outside every peer's subnet: clear
        ] {
            learned.insert(p.parse().unwrap(), nh.parse().unwrap());
        }
        let net = |s: &str| -> Ipv4Net { s.parse().unwrap() };
        let mut desired = DesiredState::default();
        desired.peers.push(PeerPlan {
            node: "h2".into(),
            subnet: Some(net("10.244.2.0/24")),
            public_ip: Some("192.168.1.12".parse().unwrap()),
            path: PeerPath::Wireguard,
            subnet6: None,
            path6: None,
        });
        desired.routes.push(twill_backend::wireguard::route(
            net("10.244.2.0/24"),
            net("10.244.2.0/24"),
        ));
        desired
            .wireguard_peers
            .push(twill_types::desired::WireguardPeer {
                node: "h2".into(),
                subnet: Some(net("10.244.2.0/24")),
                underlay: "192.168.1.12".parse().unwrap(),
                public_key: twill_types::wg_key::encode(&[2; 32]),
                subnet6: None,
            });
        desired.wireguard_blocked.push(net("10.244.4.0/24"));
        let specs = learned_specs(&learned, &node(), &desired);
        assert_eq!(
            specs,
            vec![
                RouteSpec {
                    dst: (net("10.50.0.0/24")).into(),
                    via: "192.168.1.1".parse().unwrap(),
                    dev: "eth0".into(),
                    onlink: false,
                },
                RouteSpec {
                    dst: (net("10.244.2.64/26")).into(),
                    via: "10.244.2.0".parse().unwrap(),
                    dev: "twill.wg".into(),
                    onlink: true,
                },
            ]
        );
        // The streaming path follows the same rules.
        let mut programmed = HashMap::new();
        let changed = learned.keys().copied().collect();
        let plan = route_delta(&changed, &learned, &node(), &desired, &mut programmed);
        let mut added = plan.add_routes.clone();
        added.sort();
        let mut want = specs.clone();
        want.sort();
        assert_eq!(added, want);
        // Routes a previous agent left in clear into those subnets are not kept either.
        let retained = Retained {
            routes: vec![
                spec("10.244.2.128/25", "192.168.1.12"),
                spec("10.244.4.0/24", "192.168.1.14"),
                spec("10.60.0.0/24", "192.168.1.1"),
            ],
            until: 30_000,
        };
        let mut with_retained = desired.clone();
        retained.add_missing(&mut with_retained);
        let kept: Vec<String> = with_retained.routes[desired.routes.len()..]
            .iter()
            .map(|r| r.dst.to_string())
            .collect();
        assert_eq!(kept, ["10.60.0.0/24"]);
    }

    fn spec(dst: &str, via: &str) -> RouteSpec {
        RouteSpec {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
            dev: "eth0".into(),
            onlink: false,
        }
    }

    fn set(prefixes: &[&str]) -> BTreeSet<IpNet> {
        prefixes.iter().map(|p| p.parse().unwrap()).collect()
    }

    #[test]
    fn deltas_add_replace_and_delete_only_what_changed_and_is_ours() {
        let desired = DesiredState::default();
        let mut programmed = HashMap::new();
        // A route the reconcile programmed for the backend (not BGP), and one kept from
        // before a restart that BGP now learns the same way.
        for (dst, via, from_bgp) in [
            ("10.244.3.0/24", "192.168.1.13", false),
            ("10.50.2.0/24", "192.168.1.20", false),
        ] {
            programmed.insert(
                dst.parse().unwrap(),
                Programmed {
                    spec: spec(dst, via),
                    from_bgp,
                },
            );
        }
        let mut learned = BTreeMap::new();
        for (p, nh) in [
            ("10.50.1.0/24", "192.168.1.20"),
            ("10.50.2.0/24", "192.168.1.20"),
            ("10.244.1.0/24", "192.168.1.20"), // our own block: never
        ] {
            learned.insert(p.parse().unwrap(), nh.parse().unwrap());
        }
        let changed = set(&["10.50.1.0/24", "10.50.2.0/24", "10.244.1.0/24"]);
        let plan = route_delta(&changed, &learned, &node(), &desired, &mut programmed);
        assert_eq!(plan.add_routes, vec![spec("10.50.1.0/24", "192.168.1.20")]);
        assert!(plan.replace_routes.is_empty() && plan.delete_routes.is_empty());
        assert!(programmed[&"10.50.2.0/24".parse().unwrap()].from_bgp);

        // Only the prefixes named as changed are looked at.
        learned.insert(
            "10.50.9.0/24".parse().unwrap(),
            "192.168.1.20".parse().unwrap(),
        );
        let plan = route_delta(&set(&[]), &learned, &node(), &desired, &mut programmed);
        assert!(plan.is_empty());

        // A new next hop replaces; a withdrawal deletes BGP's route, never the backend's.
        learned.insert(
            "10.50.1.0/24".parse().unwrap(),
            "192.168.1.21".parse().unwrap(),
        );
        learned.remove(&"10.50.2.0/24".parse().unwrap());
        let changed = set(&["10.50.1.0/24", "10.50.2.0/24", "10.244.3.0/24"]);
        let plan = route_delta(&changed, &learned, &node(), &desired, &mut programmed);
        assert_eq!(
            plan.replace_routes,
            vec![spec("10.50.1.0/24", "192.168.1.21")]
        );
        assert_eq!(
            plan.delete_routes,
            vec![ObservedRoute::from_spec(&spec(
                "10.50.2.0/24",
                "192.168.1.20"
            ))]
        );
        assert!(plan.add_routes.is_empty());
        assert!(programmed.contains_key(&"10.244.3.0/24".parse().unwrap()));
        assert!(!programmed.contains_key(&"10.50.2.0/24".parse().unwrap()));

        // Unchanged: nothing to do.
        let plan = route_delta(
            &set(&["10.50.1.0/24"]),
            &learned,
            &node(),
            &desired,
            &mut programmed,
        );
        assert!(plan.is_empty());
    }

    #[test]
    fn retained_routes_fill_only_what_the_desired_state_lacks_until_settled() {
        let observed = |dst: &str, via: &str| ObservedRoute::from_spec(&spec(dst, via));
        let mut blackhole = observed("10.99.0.0/16", "192.168.1.12");
        blackhole.unicast = false;
        let mut metric = observed("10.98.0.0/16", "192.168.1.12");
        metric.metric = 100;
        let mut multipath = observed("10.97.0.0/16", "192.168.1.12");
        multipath.dev = None;
        let start = 0;
        let until = start + 30_000;
        let retained = Retained {
            routes: kept_routes(&[
                observed("10.50.0.0/16", "192.168.1.12"),
                observed("10.51.0.0/16", "192.168.1.13"),
                blackhole,
                metric,
                multipath,
            ]),
            until,
        };
        // Only what twill itself would write is kept.
        assert_eq!(
            retained.routes,
            vec![
                spec("10.50.0.0/16", "192.168.1.12"),
                spec("10.51.0.0/16", "192.168.1.13")
            ]
        );

        // BGP already relearned 10.51/16 another way: that one is not added again.
        let mut desired = DesiredState {
            routes: vec![spec("10.51.0.0/16", "192.168.1.11")],
            ..DesiredState::default()
        };
        assert!(retained.holds(false, start));
        retained.add_missing(&mut desired);
        assert_eq!(
            desired.routes,
            vec![
                spec("10.51.0.0/16", "192.168.1.11"),
                spec("10.50.0.0/16", "192.168.1.12")
            ]
        );

        // Settled, or past the deadline: retention is over.
        assert!(!retained.holds(true, start));
        assert!(!retained.holds(false, until));
        assert!(!retained.holds(false, until + 1_000));
    }

    fn node6() -> LocalNode {
        LocalNode {
            subnet6: Some("fd00:10:244:1::/64".parse().unwrap()),
            public_net6: Some("fd00:1::11/64".parse().unwrap()),
            ..node()
        }
    }

    fn lease6(name: &str, subnet: &str, ip: &str, ip6: Option<&str>) -> Lease {
        Lease {
            subnet6: Some(
                subnet
                    .replace("10.244.", "fd00:10:244:")
                    .replace(".0/24", "::/64")
                    .parse()
                    .unwrap(),
            ),
            public_net6: ip6.map(|a| format!("{a}/64").parse().unwrap()),
            ..lease(name, subnet, ip)
        }
    }

    #[test]
    fn nodes_with_ipv6_underlays_peer_over_ipv6_too() {
        let leases = vec![
            lease6("h1", "10.244.1.0/24", "192.168.1.11", Some("fd00:1::11")),
            lease6("h2", "10.244.2.0/24", "192.168.1.12", Some("fd00:1::12")),
            // An IPv4-only underlay: its IPv6 routes come over the IPv4 session.
            lease6("h3", "10.244.3.0/24", "192.168.1.13", None),
        ];
        let cfg = BgpConfig {
            peers: vec![BgpPeer {
                address: ip("fd00:1::1"),
                as_number: 65000,
                node: None,
                auth: BgpAuth::default(),
            }],
            ..BgpConfig::default()
        };
        let t = topology(&cfg, "h1", Underlays::DUAL, &leases, &[]);
        assert_eq!(
            t.keys().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["192.168.1.12", "192.168.1.13", "fd00:1::1", "fd00:1::12"]
        );
        let h2 = &t[&ip("fd00:1::12")];
        assert_eq!(
            (h2.kind, h2.node.as_deref()),
            (PeerKind::NodeMesh, Some("h2"))
        );
        assert_eq!(h2, &t[&ip("192.168.1.12")]);
        assert_eq!(t[&ip("fd00:1::1")].kind, PeerKind::External);
        // Without an IPv6 underlay of our own: IPv4 sessions only (and the configured
        // router, which is the operator's to route to).
        let t = topology(&cfg, "h1", Underlays::V4, &leases, &[]);
        assert_eq!(
            t.keys().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["192.168.1.12", "192.168.1.13", "fd00:1::1"]
        );
        // Reflectors and their clients over IPv6 as over IPv4.
        let rr = BgpConfig {
            node_to_node_mesh: false,
            route_reflectors: vec!["h1".into()],
            ..BgpConfig::default()
        };
        let t = topology(&rr, "h2", Underlays::DUAL, &leases, &[]);
        assert_eq!(
            t.keys().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["192.168.1.11", "fd00:1::11"]
        );
        assert_eq!(t[&ip("fd00:1::11")].kind, PeerKind::RouteReflector);
        assert_eq!(
            topology(&rr, "h1", Underlays::DUAL, &leases, &[])[&ip("fd00:1::12")].kind,
            PeerKind::RrClient
        );
    }

    #[test]
    fn learned_ipv6_routes_become_kernel_routes_safely() {
        let mut learned: BTreeMap<IpNet, IpAddr> = BTreeMap::new();
        for (p, nh) in [
            ("fd00:10:244:2::/64", "fd00:1::12"), // a peer's block: installed
            ("fd00:50::/64", "fd00:2::1"),        // off-subnet next hop: onlink
            ("fd00:51::/64", "fe80::12"),         // link-local only (RFC 2545): on eth0
            ("fd00:10:244:1::/64", "fd00:1::12"), // our own block: never
            ("fd00:10:244::/56", "fd00:1::12"),   // covers our block: never
            ("fd00:1::/64", "fd00:1::1"),         // the underlay itself: never
            ("::/0", "fd00:1::1"),                // the default route: never
            ("fd00:60::/64", "fd00:1::11"),       // via ourselves: never
            ("fd00:61::/64", "::ffff:192.168.1.12"), // IPv4-mapped (no IPv6 next hop): never
            ("fd00:62::/64", "192.168.1.12"),     // the other family: never
            ("10.70.0.0/24", "fd00:1::12"),       // the other family: never
            ("fd00:10:244:3::/64", "fd00:1::13"), // carried by the backend: not twice
            ("10.244.2.0/24", "192.168.1.12"),    // IPv4 as ever
        ] {
            learned.insert(p.parse().unwrap(), nh.parse().unwrap());
        }
        let mut desired = DesiredState::default();
        desired.peers.push(PeerPlan {
            node: "h3".into(),
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            public_ip: Some("192.168.1.13".parse().unwrap()),
            path: PeerPath::Vxlan,
            subnet6: Some("fd00:10:244:3::/64".parse().unwrap()),
            path6: Some(PeerPath::Vxlan),
        });
        // A peer whose IPv6 part is BGP's does not stop BGP's route.
        desired.peers.push(PeerPlan {
            node: "h2".into(),
            subnet: Some("10.244.2.0/24".parse().unwrap()),
            public_ip: Some("192.168.1.12".parse().unwrap()),
            path: PeerPath::Bgp,
            subnet6: Some("fd00:10:244:2::/64".parse().unwrap()),
            path6: Some(PeerPath::Bgp),
        });
        let specs = learned_specs(&learned, &node6(), &desired);
        let got: Vec<(String, String, bool)> = specs
            .iter()
            .map(|r| (r.dst.to_string(), r.via.to_string(), r.onlink))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.244.2.0/24".into(), "192.168.1.12".into(), false),
                ("fd00:10:244:2::/64".into(), "fd00:1::12".into(), false),
                ("fd00:50::/64".into(), "fd00:2::1".into(), true),
                ("fd00:51::/64".into(), "fe80::12".into(), false),
            ]
        );
        assert!(specs.iter().all(|r| r.dev == "eth0"));
        // A node without an IPv6 underlay still installs what has a usable next hop.
        let no_underlay6 = LocalNode {
            public_net6: None,
            ..node6()
        };
        let specs = learned_specs(&learned, &no_underlay6, &desired);
        assert!(
            specs
                .iter()
                .any(|r| r.dst.to_string() == "fd00:60::/64" && r.onlink)
        );
        // An IPv4-only node installs no IPv6 route at all.
        let specs = learned_specs(&learned, &node(), &desired);
        assert!(specs.iter().all(|r| r.dst.addr().is_ipv4()), "{specs:?}");
    }

    /// A dual-stack desired state with WireGuard as the backend leaves it: h2 encrypted in
    /// both families (its routes into twill.wg), h4 without a key (blocked in both), h5
    /// encrypted for IPv4 while its IPv6 is blocked (as with a device MTU below 1280).
    fn encrypted_dual_stack() -> DesiredState {
        let net = |s: &str| -> Ipv4Net { s.parse().unwrap() };
        let net6 = |s: &str| -> Ipv6Net { s.parse().unwrap() };
        let mut desired = DesiredState::default();
        for (node, subnet, subnet6, key) in [
            ("h2", "10.244.2.0/24", Some("fd00:10:244:2::/64"), 2),
            ("h5", "10.244.5.0/24", None, 5),
        ] {
            desired
                .routes
                .push(twill_backend::wireguard::route(net(subnet), net(subnet)));
            desired
                .routes
                .extend(subnet6.map(|s| twill_backend::wireguard::route6(net6(s))));
            desired
                .wireguard_peers
                .push(twill_types::desired::WireguardPeer {
                    node: node.into(),
                    subnet: Some(net(subnet)),
                    underlay: "192.168.1.12".parse().unwrap(),
                    public_key: twill_types::wg_key::encode(&[key; 32]),
                    subnet6: subnet6.map(net6),
                });
        }
        desired.wireguard_blocked.push(net("10.244.4.0/24"));
        desired.wireguard_blocked6 = vec![net6("fd00:10:244:4::/64"), net6("fd00:10:244:5::/64")];
        desired
    }

    #[test]
    fn with_encryption_learned_ipv6_routes_into_a_peers_subnet_go_through_wireguard() {
        let mut learned: BTreeMap<IpNet, IpAddr> = BTreeMap::new();
        for (p, nh) in [
            ("fd00:10:244:2::/64", "fd00:1::12"), // the encrypted peer's block: the backend's
            ("fd00:10:244:2:40::/80", "fd00:1::12"), // inside it: into twill.wg
            ("fd00:10:244:2:41::/80", "::ffff:192.168.1.12"), // whatever the next hop
            ("fd00:10:244:2:42::/80", "fe80::12"),
            ("fd00:10:244:4::/64", "fd00:1::14"), // a peer to encrypt without a key: nowhere
            ("fd00:10:244:4:80::/80", "fd00:1::14"),
            ("fd00:10:244:5:80::/80", "fd00:1::15"), // IPv6 blocked, IPv4 encrypted: nowhere
            ("fd00:10:244:1:80::/80", "fd00:1::12"), // inside our own block: never
            ("fd00:10:244:2:43::/80", "fd00:1::11"), // via ourselves: never
            ("fd00:50::/64", "fd00:1::1"),           // outside every peer's subnet: clear
            ("10.244.2.64/26", "192.168.1.12"),      // IPv4 as before
        ] {
            learned.insert(p.parse().unwrap(), nh.parse().unwrap());
        }
        let desired = encrypted_dual_stack();
        let wg = |dst: &str, via: &str| RouteSpec {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
            dev: "twill.wg".into(),
            onlink: true,
        };
        let specs = learned_specs(&learned, &node6(), &desired);
        assert_eq!(
            specs,
            vec![
                wg("10.244.2.64/26", "10.244.2.0"),
                wg("fd00:10:244:2:40::/80", "fd00:10:244:2::"),
                wg("fd00:10:244:2:41::/80", "fd00:10:244:2::"),
                wg("fd00:10:244:2:42::/80", "fd00:10:244:2::"),
                RouteSpec {
                    dst: "fd00:50::/64".parse().unwrap(),
                    via: "fd00:1::1".parse().unwrap(),
                    dev: "eth0".into(),
                    onlink: false,
                },
            ]
        );
        // The streaming path follows the same rules.
        let mut programmed = HashMap::new();
        let changed = learned.keys().copied().collect();
        let plan = route_delta(&changed, &learned, &node6(), &desired, &mut programmed);
        let mut added = plan.add_routes.clone();
        added.sort();
        let mut want = specs.clone();
        want.sort();
        assert_eq!(added, want);
        // Once h2's IPv6 subnet is blocked (as when the device MTU falls below 1280), its
        // IPv6 routes leave the kernel rather than stay, or come back in clear; its IPv4
        // route stays in twill.wg.
        let mut blocked = desired.clone();
        let h2_subnet6: Ipv6Net = "fd00:10:244:2::/64".parse().unwrap();
        for peer in &mut blocked.wireguard_peers {
            peer.subnet6 = None;
        }
        blocked.routes.retain(|r| r.dst != IpNet::V6(h2_subnet6));
        blocked.wireguard_blocked6.push(h2_subnet6);
        let plan = route_delta(&changed, &learned, &node6(), &blocked, &mut programmed);
        assert!(
            plan.add_routes.is_empty() && plan.replace_routes.is_empty(),
            "{plan:?}"
        );
        let mut gone: Vec<String> = plan
            .delete_routes
            .iter()
            .map(|r| r.dst.to_string())
            .collect();
        gone.sort();
        assert_eq!(
            gone,
            [
                "fd00:10:244:2:40::/80",
                "fd00:10:244:2:41::/80",
                "fd00:10:244:2:42::/80"
            ]
        );
        // Routes a previous agent left in clear into those subnets are not kept either; its
        // routes into twill.wg are.
        let retained = Retained {
            routes: vec![
                spec("fd00:10:244:2:80::/80", "fd00:1::12"),
                spec("fd00:10:244:4::/64", "fd00:1::14"),
                spec("fd00:10:244:5::/64", "fd00:1::15"),
                wg("fd00:10:244:2:81::/80", "fd00:10:244:2::"),
                spec("fd00:60::/64", "fd00:1::1"),
            ],
            until: 30_000,
        };
        let mut with_retained = desired.clone();
        retained.add_missing(&mut with_retained);
        let kept: Vec<String> = with_retained.routes[desired.routes.len()..]
            .iter()
            .map(|r| r.dst.to_string())
            .collect();
        assert_eq!(kept, ["fd00:10:244:2:81::/80", "fd00:60::/64"]);
        // An IPv4-only node takes none of it.
        let specs = learned_specs(&learned, &node(), &desired);
        assert_eq!(specs, vec![wg("10.244.2.64/26", "10.244.2.0")]);
    }

    #[test]
    fn ipv6_deltas_and_restarts_follow_the_ipv4_rules() {
        let desired = DesiredState::default();
        let mut programmed = HashMap::new();
        let mut learned: BTreeMap<IpNet, IpAddr> = BTreeMap::new();
        learned.insert(
            "fd00:10:244:2::/64".parse().unwrap(),
            "fd00:1::12".parse().unwrap(),
        );
        let changed = set(&["fd00:10:244:2::/64"]);
        let plan = route_delta(&changed, &learned, &node6(), &desired, &mut programmed);
        let want = RouteSpec {
            dst: "fd00:10:244:2::/64".parse().unwrap(),
            via: "fd00:1::12".parse().unwrap(),
            dev: "eth0".into(),
            onlink: false,
        };
        assert_eq!(plan.add_routes, vec![want.clone()]);
        // Withdrawn: BGP's route goes (as the kernel reads it back, metric 1024).
        learned.clear();
        let plan = route_delta(&changed, &learned, &node6(), &desired, &mut programmed);
        let gone = ObservedRoute::from_spec(&want);
        assert_eq!(gone.metric, 1024);
        assert_eq!(plan.delete_routes, vec![gone.clone()]);
        // A restarted agent keeps the IPv6 routes of its predecessor too.
        assert_eq!(kept_routes(&[gone]), vec![want]);
    }

    /// A node of an IPv6-only cluster: no IPv4 subnet or underlay.
    fn node_ipv6_only() -> LocalNode {
        LocalNode {
            subnet: None,
            public_net: None,
            ..node6()
        }
    }

    fn lease_ipv6_only(name: &str, subnet6: &str, ip6: &str) -> Lease {
        Lease {
            subnet: None,
            public_net: None,
            subnet6: Some(subnet6.parse().unwrap()),
            public_net6: Some(format!("{ip6}/64").parse().unwrap()),
            ..lease(name, "10.0.0.0/24", "192.168.1.1")
        }
    }

    #[test]
    fn ipv6_only_nodes_peer_over_ipv6_alone() {
        let leases = vec![
            lease_ipv6_only("h1", "fd00:10:244:1::/64", "fd00:1::11"),
            lease_ipv6_only("h2", "fd00:10:244:2::/64", "fd00:1::12"),
            lease_ipv6_only("h3", "fd00:10:244:3::/64", "fd00:2::13"),
        ];
        // Routers by IPv6 address are peered with; an IPv4 one (from the store: the config
        // refuses it) is not, as nothing could reach it.
        let cfg = BgpConfig {
            peers: vec![BgpPeer {
                address: ip("fd00:1::1"),
                as_number: 65000,
                node: None,
                auth: BgpAuth::default(),
            }],
            ..BgpConfig::default()
        };
        let store = [BgpPeer {
            address: ip("192.168.1.1"),
            as_number: 65000,
            node: None,
            auth: BgpAuth::default(),
        }];
        let t = topology(&cfg, "h1", Underlays::V6, &leases, &store);
        assert_eq!(
            t.keys().map(|a| a.to_string()).collect::<Vec<_>>(),
            ["fd00:1::1", "fd00:1::12", "fd00:2::13"]
        );
        assert_eq!(t[&ip("fd00:2::13")].node.as_deref(), Some("h3"));
        // Reflectors work the same over IPv6.
        let rr = BgpConfig {
            node_to_node_mesh: false,
            route_reflectors: vec!["h1".into()],
            ..BgpConfig::default()
        };
        let t = topology(&rr, "h3", Underlays::V6, &leases, &[]);
        assert_eq!(t.keys().copied().collect::<Vec<_>>(), [ip("fd00:1::11")]);
        assert_eq!(t[&ip("fd00:1::11")].kind, PeerKind::RouteReflector);
        // A dual-stack node keeps both sessions with the nodes that have both underlays, and
        // only an IPv6 one with a node that has no IPv4 (which a dual-stack cluster does not
        // admit, but a lease is another node's word).
        let mut mixed = leases.clone();
        mixed.push(lease6(
            "h4",
            "10.244.4.0/24",
            "192.168.1.14",
            Some("fd00:1::14"),
        ));
        let t = topology(&BgpConfig::default(), "h4", Underlays::DUAL, &mixed, &[]);
        assert_eq!(t.len(), 3);
        let t = topology(&BgpConfig::default(), "h1", Underlays::DUAL, &mixed, &[]);
        assert!(t.contains_key(&ip("192.168.1.14")) && t.contains_key(&ip("fd00:1::14")));
    }

    #[test]
    fn an_ipv6_only_node_installs_only_ipv6_routes() {
        let mut learned: BTreeMap<IpNet, IpAddr> = BTreeMap::new();
        for (p, nh) in [
            ("fd00:10:244:2::/64", "fd00:1::12"), // a peer's block: installed
            ("fd00:10:244:3::/64", "fd00:2::13"), // off the segment: onlink
            ("fd00:10:244:4::/64", "fe80::14"),   // link-local only: on the underlay
            ("fd00:10:244:1::/64", "fd00:1::12"), // our own block: never
            ("fd00:1::/64", "fd00:1::1"),         // the underlay: never
            ("fd00:61::/64", "::ffff:192.168.1.12"), // IPv4-mapped: no kernel route for it
            ("10.244.2.0/24", "192.168.1.12"),    // IPv4: nowhere to send it
        ] {
            learned.insert(p.parse().unwrap(), nh.parse().unwrap());
        }
        let node = node_ipv6_only();
        let desired = DesiredState::default();
        let specs = learned_specs(&learned, &node, &desired);
        let got: Vec<(String, String, bool)> = specs
            .iter()
            .map(|r| (r.dst.to_string(), r.via.to_string(), r.onlink))
            .collect();
        assert_eq!(
            got,
            vec![
                ("fd00:10:244:2::/64".into(), "fd00:1::12".into(), false),
                ("fd00:10:244:3::/64".into(), "fd00:2::13".into(), true),
                ("fd00:10:244:4::/64".into(), "fe80::14".into(), false),
            ]
        );
        // The streaming path agrees.
        let mut programmed = HashMap::new();
        let changed = learned.keys().copied().collect();
        let mut added =
            route_delta(&changed, &learned, &node, &desired, &mut programmed).add_routes;
        added.sort();
        let mut want = specs;
        want.sort();
        assert_eq!(added, want);
    }

    #[test]
    fn router_id_clashes_are_found_by_the_same_rule() {
        let h1 = twill_types::cluster::hashed_router_id("h1");
        let leases = vec![
            lease_ipv6_only("h1", "fd00:10:244:1::/64", "fd00:1::11"),
            lease_ipv6_only("h2", "fd00:10:244:2::/64", "fd00:1::12"),
        ];
        let mut cfg = BgpConfig::default();
        assert!(router_id_clashes(&cfg, "h1", h1, &leases).is_empty());
        // h2 pinned to h1's hash: reported (by name), whichever node looks.
        cfg.nodes.insert(
            "h2".into(),
            BgpNode {
                as_number: 64512,
                router_id: Some(h1),
            },
        );
        assert_eq!(router_id_clashes(&cfg, "h1", h1, &leases), ["h2"]);
        assert_eq!(router_id_clashes(&cfg, "h2", h1, &leases), ["h1"]);
        // Dual-stack nodes are known by their IPv4 underlay address.
        let dual = leases6_dual();
        let id = ip4("192.168.1.12");
        assert_eq!(
            router_id_clashes(&BgpConfig::default(), "h9", id, &dual),
            ["h2"]
        );
    }

    fn leases6_dual() -> Vec<Lease> {
        vec![
            lease6("h1", "10.244.1.0/24", "192.168.1.11", Some("fd00:1::11")),
            lease6("h2", "10.244.2.0/24", "192.168.1.12", None),
        ]
    }

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }
}
