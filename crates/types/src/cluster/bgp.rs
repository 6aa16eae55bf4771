//! The `bgp` section (routing by BGP, Calico-like): who peers with whom and with which AS
//! numbers, its defaults and invariants, how any form's `bgp` keys are read, and the external
//! peers `twill bgp peer add` keeps in the store.
//!
//! Router IDs: BGP needs a 32-bit one per speaker, which nodes with an IPv4 underlay take from
//! that address (as Calico and BIRD do). A node of an IPv6-only cluster has none, so it
//! derives one from its node name ([`hashed_router_id`], Calico's `CALICO_ROUTER_ID=hash`),
//! stable across restarts and address changes; `bgp.routerId: hash` makes every node do so,
//! and `bgp.nodes.NAME.routerId` pins one node's (for the rare hash collision, or operators
//! who number their routers as BIRD asks in IPv6-only setups). [`BgpConfig::router_id`]
//! decides.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::auth::{BgpAuth, RawSecret, Secret};
use super::error::ConfigError;
use super::fields::{At, fail, parse_addr};
use crate::hash::fnv1a;
use crate::keys::BGP_PEERS_PREFIX;

/// Calico's default AS number for a cluster.
pub const DEFAULT_AS: u32 = 64512;
/// BGP's port.
pub const DEFAULT_BGP_PORT: u16 = 179;
/// BGP's usual hold time.
pub const DEFAULT_HOLD_TIME: u16 = 90;

/// The `bgp` section: who peers with whom and with which AS numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpConfig {
    /// The cluster's AS (each node's, unless `nodes` says otherwise).
    pub as_number: u32,
    /// Every node peers with every other node. Off when `route_reflectors` is set.
    pub node_to_node_mesh: bool,
    /// Nodes that reflect routes: they peer among themselves, every other node is their client.
    pub route_reflectors: Vec<String>,
    /// The reflectors' cluster ID (each reflector's router ID when unset).
    pub cluster_id: Option<Ipv4Addr>,
    pub listen_port: u16,
    pub hold_time: u16,
    pub graceful_restart: bool,
    /// Per-node settings, by node name.
    pub nodes: BTreeMap<String, BgpNode>,
    /// Routers outside the cluster (e.g. top-of-rack), for every node or for one.
    pub peers: Vec<BgpPeer>,
    /// Protection of the sessions between twill nodes (mesh and route reflectors):
    /// `password`/`passwordFile`/`passwordEnv`, `ttlSecurity` (see [`BgpAuth`]).
    #[serde(flatten)]
    pub auth: BgpAuth,
    /// How nodes without a `bgp.nodes.NAME.routerId` choose their router ID (`bgp.routerId`;
    /// absent from the normalized form when it is the default).
    #[serde(default, skip_serializing_if = "RouterIdMode::is_default")]
    pub router_id: RouterIdMode,
}

/// How a node chooses its BGP router ID when `bgp.nodes.NAME.routerId` does not give it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouterIdMode {
    /// Its IPv4 underlay address; on a node without one (IPv6-only), the hash of its name.
    #[default]
    Address,
    /// The hash of its node name on every node (`bgp.routerId: hash`).
    Hash,
}

impl RouterIdMode {
    fn is_default(&self) -> bool {
        *self == RouterIdMode::default()
    }
}

/// Per-node BGP settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpNode {
    pub as_number: u32,
    /// This node's router ID, whatever its addresses (`bgp.nodes.NAME.routerId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_id: Option<Ipv4Addr>,
}

/// The router ID a node derives from its name: 64-bit FNV-1a of the name's bytes, folded to
/// 32 bits (the high half XORed into the low one), 0.0.0.1 in place of the invalid 0.0.0.0.
/// Fixed forever: a changed ID would reset every session of every node after an upgrade.
/// Distinct names collide with probability about n²/2³³ for n nodes (one in a million for
/// 100 nodes); `bgp.nodes.NAME.routerId` settles a collision the agent reports.
pub fn hashed_router_id(node: &str) -> Ipv4Addr {
    let h = fnv1a(node.bytes());
    let folded = (h ^ (h >> 32)) as u32;
    Ipv4Addr::from(folded.max(1))
}

/// An external BGP peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpPeer {
    pub address: IpAddr,
    pub as_number: u32,
    /// Only this node peers with it; every node when None.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The session's password and TTL security (see [`BgpAuth`]).
    #[serde(flatten)]
    pub auth: BgpAuth,
}

impl Default for BgpConfig {
    fn default() -> Self {
        BgpConfig {
            as_number: DEFAULT_AS,
            node_to_node_mesh: true,
            route_reflectors: Vec::new(),
            cluster_id: None,
            listen_port: DEFAULT_BGP_PORT,
            hold_time: DEFAULT_HOLD_TIME,
            graceful_restart: true,
            nodes: BTreeMap::new(),
            peers: Vec::new(),
            auth: BgpAuth::default(),
            router_id: RouterIdMode::default(),
        }
    }
}

impl BgpConfig {
    /// The AS of node `name`: its own, or the cluster's.
    pub fn node_as(&self, name: &str) -> u32 {
        self.nodes
            .get(name)
            .map(|n| n.as_number)
            .unwrap_or(self.as_number)
    }

    /// The BGP router ID of node `name`, whose IPv4 underlay address is `ipv4_underlay` (None
    /// on a node of an IPv6-only cluster): its `bgp.nodes` entry's, else that address unless
    /// `bgp.routerId` is `hash`, else the hash of its name ([`hashed_router_id`]).
    pub fn router_id(&self, name: &str, ipv4_underlay: Option<Ipv4Addr>) -> Ipv4Addr {
        if let Some(id) = self.nodes.get(name).and_then(|n| n.router_id) {
            return id;
        }
        match (self.router_id, ipv4_underlay) {
            (RouterIdMode::Address, Some(address)) => address,
            _ => hashed_router_id(name),
        }
    }

    /// Whether node `name` is a route reflector.
    pub fn is_reflector(&self, name: &str) -> bool {
        self.route_reflectors.iter().any(|r| r == name)
    }

    /// Checks the invariants of the normalized form (field names as in the config).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_as("bgp.asNumber", self.as_number)?;
        if self.listen_port == 0 {
            return fail(ConfigError::invalid(
                "bgp.listenPort",
                "bgp.listenPort must not be 0",
            ));
        }
        // RFC 4271 §4.2: zero (no keepalives) or at least three seconds.
        if self.hold_time != 0 && self.hold_time < 3 {
            return fail(ConfigError::invalid(
                "bgp.holdTime",
                format!(
                    "bgp.holdTime {} is too short: BGP needs 0 or at least 3 seconds",
                    self.hold_time
                ),
            ));
        }
        if !self.route_reflectors.is_empty() && self.node_to_node_mesh {
            return fail(ConfigError::conflict(
                "bgp.nodeToNodeMesh",
                "bgp.routeReflectors",
                "bgp.nodeToNodeMesh must be false when bgp.routeReflectors is set: the \
                 reflectors replace the full mesh",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (i, rr) in self.route_reflectors.iter().enumerate() {
            let field = format!("bgp.routeReflectors[{i}]");
            if rr.trim().is_empty() {
                return fail(ConfigError::invalid(
                    &field,
                    format!("{field} must be a node name"),
                ));
            }
            if !seen.insert(rr) {
                return fail(ConfigError::invalid(
                    field,
                    format!("bgp.routeReflectors lists node {rr:?} twice"),
                ));
            }
        }
        if let Some(id) = self.cluster_id
            && (id.is_unspecified() || id.is_broadcast())
        {
            return fail(ConfigError::invalid(
                "bgp.clusterId",
                format!("bgp.clusterId {id} is not a usable cluster ID"),
            ));
        }
        for (name, node) in &self.nodes {
            if name.trim().is_empty() {
                return fail(ConfigError::invalid(
                    "bgp.nodes",
                    "bgp.nodes: a node name must not be empty",
                ));
            }
            check_as(&format!("bgp.nodes.{name}.asNumber"), node.as_number)?;
            if let Some(id) = node.router_id {
                let field = format!("bgp.nodes.{name}.routerId");
                if id.is_unspecified() {
                    return fail(ConfigError::invalid(
                        &field,
                        format!("{field} 0.0.0.0 is not a router ID: BGP needs a non-zero one"),
                    ));
                }
                // Two speakers with one ID refuse each other's sessions, and a reflector
                // drops one's routes as the other's loops.
                if let Some((other, _)) = self
                    .nodes
                    .iter()
                    .find(|(other, n)| *other < name && n.router_id == Some(id))
                {
                    return fail(ConfigError::conflict(
                        &field,
                        format!("bgp.nodes.{other}.routerId"),
                        format!(
                            "{field} {id} is node {other}'s router ID too: each node needs its own"
                        ),
                    ));
                }
            }
        }
        self.auth.validate("bgp.")?;
        let mut peers = std::collections::HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            check_as(&format!("bgp.peers[{i}].asNumber"), p.as_number)?;
            p.auth.validate(&format!("bgp.peers[{i}]."))?;
            if p.address.is_unspecified() || p.address.is_multicast() || p.address.is_loopback() {
                return fail(ConfigError::invalid(
                    format!("bgp.peers[{i}].address"),
                    format!(
                        "bgp.peers[{i}].address {} is not a router's address",
                        p.address
                    ),
                ));
            }
            if let Some(node) = &p.node
                && node.trim().is_empty()
            {
                return fail(ConfigError::invalid(
                    format!("bgp.peers[{i}].node"),
                    format!("bgp.peers[{i}].node must be a node name"),
                ));
            }
            if !peers.insert((p.address, p.node.clone())) {
                return fail(ConfigError::invalid(
                    format!("bgp.peers[{i}]"),
                    format!(
                        "bgp.peers[{i}]: peer {} is listed twice{}",
                        p.address,
                        p.node
                            .as_ref()
                            .map(|n| format!(" for node {n}"))
                            .unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl BgpPeer {
    /// The peer's store key.
    pub fn key(&self) -> String {
        match &self.node {
            Some(node) => format!("{BGP_PEERS_PREFIX}{}@{node}", self.address),
            None => format!("{BGP_PEERS_PREFIX}{}", self.address),
        }
    }

    /// Reads a peer the store holds (written by another node or by hand: validated).
    pub fn from_store(key: &str, value: &[u8]) -> Result<BgpPeer, ConfigError> {
        let peer: BgpPeer = serde_json::from_slice(value)
            .map_err(|e| ConfigError::syntax(key, format!("not a BGP peer: {e}")))?;
        let stored = |error: ConfigError| ConfigError::Stored {
            key: key.to_string(),
            error: Box::new(error),
        };
        check_as("asNumber", peer.as_number).map_err(stored)?;
        // The message names every field under the key, as `bgp.` prefixes them in a config
        // ("K: password, K: passwordFile and K: passwordEnv: give one of them"); the error
        // keeps that text and takes the key off the fields' paths.
        let prefix = format!("{key}: ");
        peer.auth
            .validate(&prefix)
            .map_err(|e| stored(e.relative_to(&prefix)))?;
        if peer.key() != key {
            return Err(stored(ConfigError::conflict(
                "address",
                "key",
                format!(
                    "holds peer {} which belongs at {}",
                    peer.address,
                    peer.key()
                ),
            )));
        }
        Ok(peer)
    }
}

/// AS 0 is reserved (RFC 7607) and 23456 is AS_TRANS (RFC 6793): neither names a router.
fn check_as(field: &str, asn: u32) -> Result<(), ConfigError> {
    match asn {
        0 => fail(ConfigError::invalid(
            field,
            format!("{field} 0 is reserved: use 1 to 4294967295"),
        )),
        23456 => fail(ConfigError::invalid(
            field,
            format!("{field} 23456 is AS_TRANS, reserved for 2-octet speakers: use another AS"),
        )),
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// The `bgp` keys as written, in twill's form and (as twill's addition) in Flannel's.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawBgp {
    as_number: Option<i64>,
    node_to_node_mesh: Option<bool>,
    route_reflectors: Option<Vec<String>>,
    cluster_id: Option<String>,
    listen_port: Option<i64>,
    hold_time: Option<i64>,
    graceful_restart: Option<bool>,
    nodes: Option<BTreeMap<String, RawBgpNode>>,
    peers: Option<Vec<RawBgpPeer>>,
    password: Option<RawSecret>,
    password_file: Option<String>,
    password_env: Option<String>,
    ttl_security: Option<bool>,
    router_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBgpNode {
    as_number: Option<i64>,
    router_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBgpPeer {
    address: Option<String>,
    as_number: Option<i64>,
    node: Option<String>,
    password: Option<RawSecret>,
    password_file: Option<String>,
    password_env: Option<String>,
    ttl_security: Option<bool>,
}

/// The protection keys of a `bgp` section or peer.
fn raw_auth(
    password: Option<RawSecret>,
    password_file: Option<String>,
    password_env: Option<String>,
    ttl_security: Option<bool>,
) -> BgpAuth {
    BgpAuth {
        password: password.map(|p| Secret::new(p.0)),
        password_file: password_file.map(std::path::PathBuf::from),
        password_env,
        ttl_security: ttl_security.unwrap_or(false),
    }
}

fn as_number(field: &str, n: i64) -> Result<u32, ConfigError> {
    let asn = u32::try_from(n).map_err(|_| {
        ConfigError::invalid(
            field,
            format!("{field} {n} is not an AS number (1 to 4294967295)"),
        )
    })?;
    check_as(field, asn)?;
    Ok(asn)
}

/// The `bgp` section of any form, defaults filled in, then validated.
pub(super) fn from_raw_bgp(raw: RawBgp) -> Result<BgpConfig, ConfigError> {
    let d = BgpConfig::default();
    let route_reflectors = raw.route_reflectors.unwrap_or_default();
    // Reflectors replace the mesh; saying both is a contradiction `validate` reports.
    let mesh = raw.node_to_node_mesh.unwrap_or(route_reflectors.is_empty());
    let cluster_id = raw
        .cluster_id
        .map(|t| parse_addr(&At::top(), "bgp.clusterId", &t))
        .transpose()?;
    let listen_port = match raw.listen_port {
        None => d.listen_port,
        Some(p) => u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
            ConfigError::invalid(
                "bgp.listenPort",
                format!("bgp.listenPort {p} is not a TCP port (1 to 65535)"),
            )
        })?,
    };
    let hold_time = match raw.hold_time {
        None => d.hold_time,
        Some(h) => u16::try_from(h).map_err(|_| {
            ConfigError::invalid(
                "bgp.holdTime",
                format!("bgp.holdTime {h} is out of range: 0 or 3 to 65535 seconds"),
            )
        })?,
    };
    let cluster_as = match raw.as_number {
        None => d.as_number,
        Some(n) => as_number("bgp.asNumber", n)?,
    };
    let router_id = match raw.router_id.as_deref() {
        None => RouterIdMode::default(),
        Some("hash") => RouterIdMode::Hash,
        Some(other) => {
            return fail(ConfigError::invalid(
                "bgp.routerId",
                format!(
                    "bgp.routerId {other:?} is not a way to choose router IDs: the only one is \
                     \"hash\" (every node hashes its name; without the key a node takes its IPv4 \
                     underlay address, or hashes its name when it has none); one node's own ID \
                     goes in bgp.nodes.NAME.routerId"
                ),
            ));
        }
    };
    let mut nodes = BTreeMap::new();
    for (name, n) in raw.nodes.unwrap_or_default() {
        let field = format!("bgp.nodes.{name}.asNumber");
        let node_as = match (n.as_number, &n.router_id) {
            (Some(asn), _) => as_number(&field, asn)?,
            // An entry only for the router ID keeps the cluster's AS.
            (None, Some(_)) => cluster_as,
            (None, None) => {
                return fail(ConfigError::missing(&field, format!("{field} is missing")));
            }
        };
        let router_id = n
            .router_id
            .map(|t| parse_addr(&At::top(), &format!("bgp.nodes.{name}.routerId"), &t))
            .transpose()?;
        nodes.insert(
            name,
            BgpNode {
                as_number: node_as,
                router_id,
            },
        );
    }
    let mut peers = Vec::new();
    for (i, p) in raw.peers.unwrap_or_default().into_iter().enumerate() {
        let field = format!("bgp.peers[{i}].address");
        let Some(address) = p.address else {
            return fail(ConfigError::missing(&field, format!("{field} is missing")));
        };
        let address: IpAddr = address.parse().map_err(|_| {
            ConfigError::invalid(
                &field,
                format!("{field} {address:?} is not an IP address such as 192.168.1.1"),
            )
        })?;
        let field = format!("bgp.peers[{i}].asNumber");
        let Some(asn) = p.as_number else {
            return fail(ConfigError::missing(&field, format!("{field} is missing")));
        };
        peers.push(BgpPeer {
            address,
            as_number: as_number(&field, asn)?,
            node: p.node,
            auth: raw_auth(p.password, p.password_file, p.password_env, p.ttl_security),
        });
    }
    let config = BgpConfig {
        as_number: cluster_as,
        node_to_node_mesh: mesh,
        route_reflectors,
        cluster_id,
        listen_port,
        hold_time,
        graceful_restart: raw.graceful_restart.unwrap_or(d.graceful_restart),
        nodes,
        peers,
        auth: raw_auth(
            raw.password,
            raw.password_file,
            raw.password_env,
            raw.ttl_security,
        ),
        router_id,
    };
    config.validate()?;
    Ok(config)
}

/// Replaces every inline password of a `bgp` section (its own and its peers') by
/// [`REDACTED`], for printing.
pub fn redact(bgp: &mut BgpConfig) {
    bgp.auth = bgp.auth.redacted();
    for p in &mut bgp.peers {
        p.auth = p.auth.redacted();
    }
}
