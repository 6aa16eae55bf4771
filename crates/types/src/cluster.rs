//! The cluster config: which ranges pods get addresses from, how nodes' subnets are cut from
//! them, and how traffic crosses between nodes.
//!
//! Accepted forms (see [`ClusterConfig::parse`]):
//! - Flannel's net-conf.json, as is.
//! - twill's own form, in TOML or YAML, with Calico-style pools.
//!
//! Both become one normalized [`ClusterConfig`], which is what the store holds (as JSON).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use crate::bgp_auth::{BgpAuth, Secret};

/// How traffic between nodes is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendKind {
    /// Plain routes via the peer's address; peers must share the L2 segment.
    #[serde(rename = "host-gw")]
    HostGw,
    /// Kernel VXLAN with Flannel's scheme (route + ARP + FDB per peer).
    #[serde(rename = "vxlan")]
    Vxlan,
    /// Userspace UDP encapsulation over TUN (issue 4).
    #[serde(rename = "udp")]
    Udp,
    /// IP-in-IP (issue 4).
    #[serde(rename = "ipip")]
    Ipip,
    /// WireGuard (later).
    #[serde(rename = "wireguard")]
    Wireguard,
    /// No encapsulation and no lease-based routes: the BGP speaker's learned routes are the
    /// routes (Calico's BGP networking with `Never` pools).
    #[serde(rename = "bgp")]
    Bgp,
}

/// Calico's encapsulation modes for `vxlanMode` / `ipipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum EncapMode {
    /// Encapsulate traffic to every peer.
    Always,
    /// Encapsulate only to peers in another underlay subnet; route directly otherwise.
    CrossSubnet,
    /// Never encapsulate.
    #[default]
    Never,
}

/// The backend settings of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub kind: BackendKind,
    /// VXLAN network identifier (Flannel's `VNI`, default 1). 0 for backends other than vxlan,
    /// which have no VNI.
    pub vni: u32,
    /// UDP port of the encapsulation (Flannel's `Port`; vxlan default 8472, udp 8285,
    /// wireguard's `ListenPort` 51820). 0 for host-gw and ipip, which use no port.
    pub port: u16,
    /// Route directly to peers on the same underlay subnet, encapsulate to the rest
    /// (Flannel's `DirectRouting`, Calico's `CrossSubnet`).
    pub direct_routing: bool,
}

/// One pool of pod addresses, cut into one subnet per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// A name for messages and status (`default` for Flannel's single network).
    pub name: String,
    pub cidr: Ipv4Net,
    /// Prefix length of each node's subnet (Flannel's `SubnetLen`, Calico's `blockSize`).
    pub block_size: u8,
    /// First and last node subnet that may be leased (Flannel's `SubnetMin`/`SubnetMax`);
    /// both are subnets of `cidr` with prefix `block_size`.
    pub subnet_min: Ipv4Net,
    pub subnet_max: Ipv4Net,
    /// Masquerade pod traffic that leaves the cluster's pools. Always true for Flannel's
    /// net-conf.json, which has no such key: flanneld is nearly always run with `--ip-masq`.
    pub nat_outgoing: bool,
}

/// The normalized cluster config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// At least one pool; pools never overlap.
    pub pools: Vec<Pool>,
    pub backend: Backend,
    /// Routing by BGP (Calico-like); absent: no BGP speaker runs. Skipped when absent so
    /// configs without it keep their normalized form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpConfig>,
    /// What pods may reach of their own node (`workloadToHost`, `workloadToHostPorts`; top-level
    /// keys of twill's form, defaults for Flannel's). Left out of the normalized form when it is
    /// the default, so configs without it keep their normalized form.
    #[serde(flatten)]
    pub host_access: HostAccess,
}

/// What a node does with a connection from one of its own pods to one of its own addresses
/// (Calico's `DefaultEndpointToHostAction`). DNS (port 53), ICMP echo to the pod's gateway and
/// replies of connections the node opened always pass; control-plane ports (BGP, etcd, tunnel
/// ports) never do, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum WorkloadToHost {
    /// Dropped, except the ports of `workloadToHostPorts` (the default).
    #[default]
    Drop,
    /// Accepted (control-plane ports excepted).
    Accept,
}

impl WorkloadToHost {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadToHost::Drop => "Drop",
            WorkloadToHost::Accept => "Accept",
        }
    }

    /// `Drop` or `Accept`, in any case.
    pub fn from_name(name: &str) -> Option<WorkloadToHost> {
        [WorkloadToHost::Drop, WorkloadToHost::Accept]
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(name))
    }

    fn is_default(&self) -> bool {
        *self == WorkloadToHost::default()
    }
}

impl fmt::Display for WorkloadToHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Pods' access to their own node: see [`WorkloadToHost`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostAccess {
    #[serde(default, skip_serializing_if = "WorkloadToHost::is_default")]
    pub workload_to_host: WorkloadToHost,
    /// Ports pods may reach on their node when `workload_to_host` is Drop (Calico's failsafe
    /// form: `tcp:22`, `udp:123`, `tcp:30000-32767`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_to_host_ports: Vec<HostPort>,
}

/// The transport protocols a [`HostPort`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortProto {
    Tcp,
    Udp,
    Sctp,
}

impl PortProto {
    pub fn name(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
            PortProto::Sctp => "sctp",
        }
    }
}

/// One allow-listed port or port range of one protocol: `tcp:22`, `udp:5000-5100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub proto: PortProto,
    pub first: u16,
    /// Equal to `first` for a single port.
    pub last: u16,
}

impl HostPort {
    /// Whether the entry holds `port`.
    pub fn contains(&self, proto: PortProto, port: u16) -> bool {
        self.proto == proto && (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}:{}", self.proto.name(), self.first)
        } else {
            write!(f, "{}:{}-{}", self.proto.name(), self.first, self.last)
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;

    /// `PROTO:PORT` or `PROTO:FIRST-LAST`, PROTO one of tcp, udp, sctp (any case).
    fn from_str(text: &str) -> Result<HostPort, String> {
        let Some((proto, ports)) = text.split_once(':') else {
            return Err(format!(
                "{text:?} is not PROTO:PORT (e.g. \"tcp:22\", \"udp:123\", \"tcp:30000-32767\")"
            ));
        };
        let proto = match proto.trim().to_ascii_lowercase().as_str() {
            "tcp" => PortProto::Tcp,
            "udp" => PortProto::Udp,
            "sctp" => PortProto::Sctp,
            other => {
                return Err(format!(
                    "{text:?}: protocol {other:?} is not tcp, udp or sctp"
                ));
            }
        };
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{text:?}: {:?} is not a port (1 to 65535)", s.trim()))
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("{text:?}: the range ends before it starts"));
        }
        Ok(HostPort { proto, first, last })
    }
}

impl Serialize for HostPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HostPort, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The TCP ports of the cluster's control plane that pods never reach on any node, whatever
/// `workloadToHostPorts` says: BGP (179 and the configured listen port) and etcd's client and
/// peer ports (the store's own endpoints add theirs at run time).
pub fn control_tcp_ports(config: &ClusterConfig) -> Vec<u16> {
    let mut ports = vec![DEFAULT_BGP_PORT, ETCD_CLIENT_PORT, ETCD_PEER_PORT];
    if let Some(bgp) = &config.bgp {
        ports.push(bgp.listen_port);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The UDP ports of every tunnel twill runs (vxlan, udp) that pods never send to, on any
/// node and anywhere else: twill's defaults and the configured port of a vxlan or udp backend.
pub fn tunnel_udp_ports(config: &ClusterConfig) -> Vec<u16> {
    let mut ports = vec![DEFAULT_VXLAN_PORT, DEFAULT_UDP_PORT];
    if matches!(config.backend.kind, BackendKind::Vxlan | BackendKind::Udp)
        && config.backend.port != 0
    {
        ports.push(config.backend.port);
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// etcd's default client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's default peer port.
pub const ETCD_PEER_PORT: u16 = 2380;

/// `workloadToHostPorts` may not name a control-plane port by itself: it would not open it.
fn validate_host_access(config: &ClusterConfig) -> Result<(), ConfigError> {
    let tcp = control_tcp_ports(config);
    let udp = tunnel_udp_ports(config);
    for (i, p) in config.host_access.workload_to_host_ports.iter().enumerate() {
        let control = match p.proto {
            PortProto::Tcp => &tcp,
            PortProto::Udp => &udp,
            PortProto::Sctp => continue,
        };
        if p.first == p.last && control.contains(&p.first) {
            return fail(format!(
                "workloadToHostPorts[{i}] {p}: a control-plane port (BGP, etcd or a tunnel), \
                 which pods never reach; remove it"
            ));
        }
    }
    Ok(())
}

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
}

/// Per-node BGP settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpNode {
    pub as_number: u32,
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

    /// Whether node `name` is a route reflector.
    pub fn is_reflector(&self, name: &str) -> bool {
        self.route_reflectors.iter().any(|r| r == name)
    }

    /// Checks the invariants of the normalized form (field names as in the config).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_as("bgp.asNumber", self.as_number)?;
        if self.listen_port == 0 {
            return fail("bgp.listenPort must not be 0");
        }
        // RFC 4271 §4.2: zero (no keepalives) or at least three seconds.
        if self.hold_time != 0 && self.hold_time < 3 {
            return fail(format!(
                "bgp.holdTime {} is too short: BGP needs 0 or at least 3 seconds",
                self.hold_time
            ));
        }
        if !self.route_reflectors.is_empty() && self.node_to_node_mesh {
            return fail(
                "bgp.nodeToNodeMesh must be false when bgp.routeReflectors is set: the \
                 reflectors replace the full mesh",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, rr) in self.route_reflectors.iter().enumerate() {
            if rr.trim().is_empty() {
                return fail(format!("bgp.routeReflectors[{i}] must be a node name"));
            }
            if !seen.insert(rr) {
                return fail(format!("bgp.routeReflectors lists node {rr:?} twice"));
            }
        }
        if let Some(id) = self.cluster_id
            && (id.is_unspecified() || id.is_broadcast())
        {
            return fail(format!("bgp.clusterId {id} is not a usable cluster ID"));
        }
        for (name, node) in &self.nodes {
            if name.trim().is_empty() {
                return fail("bgp.nodes: a node name must not be empty");
            }
            check_as(&format!("bgp.nodes.{name}.asNumber"), node.as_number)?;
        }
        self.auth.validate("bgp.").map_err(ConfigError)?;
        let mut peers = std::collections::HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            check_as(&format!("bgp.peers[{i}].asNumber"), p.as_number)?;
            p.auth
                .validate(&format!("bgp.peers[{i}]."))
                .map_err(ConfigError)?;
            if p.address.is_unspecified() || p.address.is_multicast() || p.address.is_loopback() {
                return fail(format!(
                    "bgp.peers[{i}].address {} is not a router's address",
                    p.address
                ));
            }
            if let Some(node) = &p.node
                && node.trim().is_empty()
            {
                return fail(format!("bgp.peers[{i}].node must be a node name"));
            }
            if !peers.insert((p.address, p.node.clone())) {
                return fail(format!(
                    "bgp.peers[{i}]: peer {} is listed twice{}",
                    p.address,
                    p.node
                        .as_ref()
                        .map(|n| format!(" for node {n}"))
                        .unwrap_or_default()
                ));
            }
        }
        Ok(())
    }
}

/// Where `twill bgp peer add` keeps external peers: `<prefix><address>` for every node,
/// `<prefix><address>@<node>` for one node. Agents mirror it and apply changes live.
pub use crate::keys::BGP_PEERS_PREFIX;

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
            .map_err(|e| ConfigError::new(format!("{key}: not a BGP peer: {e}")))?;
        check_as(&format!("{key}: asNumber"), peer.as_number)?;
        peer.auth
            .validate(&format!("{key}: "))
            .map_err(ConfigError)?;
        if peer.key() != key {
            return fail(format!(
                "{key}: holds peer {} which belongs at {}",
                peer.address,
                peer.key()
            ));
        }
        Ok(peer)
    }
}

/// AS 0 is reserved (RFC 7607) and 23456 is AS_TRANS (RFC 6793): neither names a router.
fn check_as(field: &str, asn: u32) -> Result<(), ConfigError> {
    match asn {
        0 => fail(format!("{field} 0 is reserved: use 1 to 4294967295")),
        23456 => fail(format!(
            "{field} 23456 is AS_TRANS, reserved for 2-octet speakers: use another AS"
        )),
        _ => Ok(()),
    }
}

/// Why a cluster config was refused; the message names the field and the problem.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::new(message))
}

/// Flannel's default VXLAN network identifier.
pub const DEFAULT_VNI: u32 = 1;
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Linux's VXLAN port, which Flannel keeps (IANA's 4789 came later; mixing them breaks peers).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Flannel's udp backend port.
pub const DEFAULT_UDP_PORT: u16 = 8285;
/// Flannel's wireguard backend `ListenPort`.
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;
/// The longest node subnet: a /30 still holds a gateway and one pod besides the network and
/// broadcast addresses (Flannel's limit too).
pub const MAX_BLOCK_SIZE: u8 = 30;

impl BackendKind {
    /// Every backend, in the order messages list them.
    pub const ALL: [BackendKind; 6] = [
        BackendKind::Udp,
        BackendKind::Vxlan,
        BackendKind::HostGw,
        BackendKind::Ipip,
        BackendKind::Wireguard,
        BackendKind::Bgp,
    ];

    /// The name used in configs and leases (`host-gw`, `vxlan`, ...).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::HostGw => "host-gw",
            BackendKind::Vxlan => "vxlan",
            BackendKind::Udp => "udp",
            BackendKind::Ipip => "ipip",
            BackendKind::Wireguard => "wireguard",
            BackendKind::Bgp => "bgp",
        }
    }

    /// The backend with this config name.
    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Bytes each packet to a peer loses to encapsulation, so pods' MTU is the underlay's
    /// minus this.
    pub fn mtu_overhead(self) -> u32 {
        match self {
            // Outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
            BackendKind::Vxlan => 50,
            // Outer IPv4 20 + UDP 8; the payload is the bare IP packet.
            BackendKind::Udp => 28,
            BackendKind::Ipip => 20,
            BackendKind::HostGw | BackendKind::Bgp => 0,
            // WireGuard's usual figure: room for an IPv6 outer header (40) + UDP 8 + its own 32.
            BackendKind::Wireguard => 80,
        }
    }

    /// The default UDP port, or 0 for backends that use none.
    pub fn default_port(self) -> u16 {
        match self {
            BackendKind::Vxlan => DEFAULT_VXLAN_PORT,
            BackendKind::Udp => DEFAULT_UDP_PORT,
            BackendKind::Wireguard => DEFAULT_WIREGUARD_PORT,
            BackendKind::HostGw | BackendKind::Ipip | BackendKind::Bgp => 0,
        }
    }

    fn uses_port(self) -> bool {
        self.default_port() != 0
    }

    /// Only encapsulating backends that can also route directly have a `DirectRouting` switch.
    fn has_direct_routing(self) -> bool {
        matches!(
            self,
            BackendKind::Vxlan | BackendKind::Ipip | BackendKind::Udp
        )
    }

    fn list() -> String {
        BackendKind::ALL.map(BackendKind::name).join(", ")
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl EncapMode {
    /// The name used in configs (`Always`, `CrossSubnet`, `Never`; case matters, as in Calico).
    pub fn name(self) -> &'static str {
        match self {
            EncapMode::Always => "Always",
            EncapMode::CrossSubnet => "CrossSubnet",
            EncapMode::Never => "Never",
        }
    }

    /// The mode with this config name.
    pub fn from_name(name: &str) -> Option<EncapMode> {
        [EncapMode::Always, EncapMode::CrossSubnet, EncapMode::Never]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

impl fmt::Display for EncapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Backend {
    /// The settings of `kind` with Flannel's defaults.
    pub fn with_defaults(kind: BackendKind) -> Backend {
        Backend {
            kind,
            vni: if kind == BackendKind::Vxlan {
                DEFAULT_VNI
            } else {
                0
            },
            port: kind.default_port(),
            direct_routing: false,
        }
    }
}

impl Pool {
    /// How many node subnets lie between `subnet_min` and `subnet_max`, both included
    /// (0 if they are out of order or not of the block size).
    pub fn subnet_count(&self) -> u64 {
        let (min, max) = (self.subnet_min, self.subnet_max);
        if min.prefix_len() != self.block_size || max.prefix_len() != self.block_size {
            return 0;
        }
        let shift = 32 - u32::from(self.block_size);
        let (lo, hi) = (
            u32::from(min.addr()) >> shift,
            u32::from(max.addr()) >> shift,
        );
        if lo > hi { 0 } else { u64::from(hi - lo) + 1 }
    }
}

impl ClusterConfig {
    /// Parses and validates a cluster config in any accepted form:
    /// - text starting with `{` is JSON: Flannel's net-conf.json, or (when it has a `pools`
    ///   key) twill's own form, or the normalized form that [`ClusterConfig::to_json`] writes;
    /// - anything else is twill's own form in TOML, or else in YAML.
    ///
    /// When neither TOML nor YAML accepts the text, the error is the one of the parser the
    /// text looks written for, with its line numbers.
    ///
    /// **Flannel's net-conf.json** is read as flanneld reads it: keys match case-insensitively,
    /// `null` is a missing key, a missing `Backend` means udp. `SubnetLen` defaults to 24, or
    /// to the Network prefix + 2 when the Network is longer than /22 (a Network longer than
    /// /28 is refused); an explicit `SubnetLen` must leave at least four subnets. `SubnetMin`
    /// defaults to the network's second subnet (the first is never leased) and `SubnetMax` to
    /// its last. The one pool is named `default`, with NAT outgoing on.
    ///
    /// **twill's own form** (keys: `backend`, `vni`, `port`, `directRouting`, `pools`; per
    /// pool: `name`, `cidr`, `blockSize`, `subnetMin`, `subnetMax`, `vxlanMode`, `ipipMode`,
    /// `natOutgoing`): a missing `blockSize` follows Flannel's `SubnetLen` rule (so 24 for
    /// pools of /22 or larger), bounds default as in Flannel, `natOutgoing` defaults to true.
    /// If no pool sets `vxlanMode` or `ipipMode`, `backend` decides (vxlan by default). If any
    /// does, a missing mode is `Never` as in Calico, all pools must mean the same backend, and
    /// they decide it: `Always` is that encapsulation, `CrossSubnet` is that encapsulation with
    /// direct routing, `Never` for both is host-gw; an explicit `backend` must agree (except
    /// `wireguard` over `Never`, which is how Calico runs WireGuard).
    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim_start().starts_with('{') {
            return parse_json(text);
        }
        let toml_err = match toml::from_str::<toml::Table>(text) {
            // The text is TOML: errors from here on are about its content, and TOML's error
            // carries the position.
            Ok(_) => {
                let raw = toml::from_str::<RawTwill>(text)
                    .map_err(|e| ConfigError::new(format!("TOML: {}", e.to_string().trim_end())))?;
                return from_twill(raw);
            }
            Err(e) => e,
        };
        match serde_saphyr::from_str::<RawTwill>(text) {
            Ok(raw) => from_twill(raw),
            Err(yaml_err) if !looks_like_toml(text) => {
                fail(format!("YAML: {}", yaml_err.to_string().trim_end()))
            }
            Err(_) => fail(format!("TOML: {}", toml_err.to_string().trim_end())),
        }
    }

    /// Reads the normalized form written by [`ClusterConfig::to_json`] (what the store holds),
    /// and validates it: the store may hold anything.
    pub fn from_json(text: &str) -> Result<ClusterConfig, ConfigError> {
        let config: ClusterConfig = serde_json::from_str(text)
            .map_err(|e| ConfigError::new(format!("cluster config JSON: {e}")))?;
        config.validate()?;
        Ok(config)
    }

    /// The normalized form as compact JSON, as the store holds it under
    /// [`CONFIG_KEY`](crate::lease::CONFIG_KEY).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ClusterConfig always serializes")
    }

    /// Checks the invariants every accepted config has (fields named as in the normalized
    /// form and in twill's TOML/YAML).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate(self, &TWILL_FIELDS)
    }

    /// Whether `ip` is a pod address of some pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.pools.iter().any(|p| p.cidr.contains(&ip))
    }

    /// The pool a subnet lies in, whatever its prefix (pools never overlap, so there is at
    /// most one).
    pub fn pool_of(&self, subnet: Ipv4Net) -> Option<&Pool> {
        self.pools.iter().find(|p| p.cidr.contains(&subnet))
    }

    /// Bytes per packet the backend's encapsulation takes (see [`BackendKind::mtu_overhead`]).
    pub fn mtu_overhead(&self) -> u32 {
        self.backend.kind.mtu_overhead()
    }
}

/// How a form names the fields, so that messages use the user's own words.
struct Fields {
    cidr: &'static str,
    block: &'static str,
    min: &'static str,
    max: &'static str,
    vni: &'static str,
    port: &'static str,
    direct_routing: &'static str,
    /// Messages start with `pool <name>: ` (Flannel's one network has no name to show).
    per_pool: bool,
}

const TWILL_FIELDS: Fields = Fields {
    cidr: "cidr",
    block: "blockSize",
    min: "subnetMin",
    max: "subnetMax",
    vni: "vni",
    port: "port",
    direct_routing: "directRouting",
    per_pool: true,
};

const FLANNEL_FIELDS: Fields = Fields {
    cidr: "Network",
    block: "SubnetLen",
    min: "SubnetMin",
    max: "SubnetMax",
    vni: "Backend.VNI",
    port: "Backend.Port",
    direct_routing: "Backend.DirectRouting",
    per_pool: false,
};

const FLANNEL_WIREGUARD_FIELDS: Fields = Fields {
    port: "Backend.ListenPort",
    ..FLANNEL_FIELDS
};

impl Fields {
    fn at(&self, pool: &str) -> String {
        if self.per_pool {
            format!("pool {pool}: ")
        } else {
            String::new()
        }
    }
}

fn validate(config: &ClusterConfig, fields: &Fields) -> Result<(), ConfigError> {
    if config.pools.is_empty() {
        return fail("pools: at least one pool is required");
    }
    let mut names = std::collections::HashSet::new();
    for pool in &config.pools {
        validate_pool(pool, fields)?;
        if !names.insert(pool.name.as_str()) {
            return fail(format!(
                "pool name {:?} is used twice; pool names must be unique",
                pool.name
            ));
        }
    }
    for (i, b) in config.pools.iter().enumerate() {
        if let Some(a) = config.pools[..i].iter().find(|a| overlaps(a.cidr, b.cidr)) {
            return fail(format!(
                "pool {} {} overlaps pool {} {}",
                b.name, b.cidr, a.name, a.cidr
            ));
        }
    }
    validate_backend(&config.backend, fields)?;
    validate_host_access(config)?;
    match &config.bgp {
        Some(bgp) => bgp.validate(),
        None if config.backend.kind == BackendKind::Bgp => {
            fail("the bgp backend needs a bgp section (asNumber, peers, ...)")
        }
        None => Ok(()),
    }
}

/// Whether two IPv4 networks share an address (one contains the other).
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// IPv4 ranges no pool may overlap, with what they are: none of their addresses can be a
/// pod's (pools are IPv4 only; IPv6 pools are refused by the parser).
pub const RESERVED_RANGES: [(Ipv4Net, &str); 5] = [
    (
        Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
        "reserved for \"this network\" (RFC 1122)",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
        "the loopback range",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
        "the link-local range",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
        "the multicast range",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
        "reserved (RFC 1112; with the broadcast address 255.255.255.255)",
    ),
];

/// The first reserved range `net` overlaps, with what it is.
pub fn reserved_overlap(net: Ipv4Net) -> Option<(Ipv4Net, &'static str)> {
    RESERVED_RANGES
        .iter()
        .find(|(range, _)| overlaps(*range, net))
        .copied()
}

/// A network the host already uses: the subnet of one of its addresses, or the destination of
/// one of its routes. `twill cluster init` reads them from the kernel; this crate only
/// compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNet {
    pub net: Ipv4Net,
    /// Where it comes from, for messages: `address 192.168.1.5/24 on eth0`, `route ...`.
    pub source: String,
}

/// Which form a config was written in, so that messages name its fields as the user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigForm {
    /// Flannel's net-conf.json (`Network`, `SubnetLen`, ...).
    Flannel,
    /// twill's own form or the normalized one (`pools`, `cidr`, `blockSize`, ...).
    Twill,
}

impl ConfigForm {
    /// The form of `text` as [`ClusterConfig::parse`] reads it.
    pub fn of(text: &str) -> ConfigForm {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if !text.trim_start().starts_with('{') {
            return ConfigForm::Twill;
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v.get("pools").is_none() => ConfigForm::Flannel,
            _ => ConfigForm::Twill,
        }
    }

    fn fields(self) -> &'static Fields {
        match self {
            ConfigForm::Flannel => &FLANNEL_FIELDS,
            ConfigForm::Twill => &TWILL_FIELDS,
        }
    }
}

impl ClusterConfig {
    /// Refuses a pool that overlaps a network of this host (the subnet of one of its
    /// addresses, or a route's destination): its pods would take addresses the host already
    /// reaches elsewhere, and the host would route to pods what was meant for that network.
    /// The caller leaves out what must not count (default routes, twill's own networks).
    pub fn check_host_networks(
        &self,
        host: &[HostNet],
        form: ConfigForm,
    ) -> Result<(), ConfigError> {
        let fields = form.fields();
        for pool in &self.pools {
            if let Some(h) = host.iter().find(|h| overlaps(h.net, pool.cidr)) {
                return fail(format!(
                    "{}{} {} overlaps {} of this host ({}): pods would take addresses the host \
                     already uses or routes elsewhere; choose a range the host does not use",
                    fields.at(&pool.name),
                    fields.cidr,
                    pool.cidr,
                    h.net,
                    h.source
                ));
            }
        }
        Ok(())
    }
}

fn validate_pool(pool: &Pool, fields: &Fields) -> Result<(), ConfigError> {
    if pool.name.trim().is_empty() {
        return fail("pool name must not be empty");
    }
    let at = fields.at(&pool.name);
    check_cidr(&at, fields, pool.cidr)?;
    if let Some((range, what)) = reserved_overlap(pool.cidr) {
        return fail(format!(
            "{at}{} {} overlaps {range}, {what}: pod addresses must be ordinary unicast \
             addresses (e.g. a private range such as 10.244.0.0/16)",
            fields.cidr, pool.cidr
        ));
    }
    check_block(&at, fields, pool.cidr, pool.block_size)?;
    for (field, bound) in [(fields.min, pool.subnet_min), (fields.max, pool.subnet_max)] {
        if bound.prefix_len() != pool.block_size {
            return fail(format!(
                "{at}{field} {bound} must have the {} /{}",
                fields.block, pool.block_size
            ));
        }
        if bound.addr() != bound.network() {
            return fail(format!(
                "{at}{field} {} is not aligned to {} /{}; did you mean {}?",
                bound.addr(),
                fields.block,
                pool.block_size,
                bound.network()
            ));
        }
        if !pool.cidr.contains(&bound) {
            return fail(format!(
                "{at}{field} {} is outside {} {}",
                bound.addr(),
                fields.cidr,
                pool.cidr
            ));
        }
    }
    if pool.subnet_min.addr() > pool.subnet_max.addr() {
        return fail(format!(
            "{at}{} {} is above {} {}: no node subnet is left",
            fields.min,
            pool.subnet_min.addr(),
            fields.max,
            pool.subnet_max.addr()
        ));
    }
    Ok(())
}

fn check_cidr(at: &str, fields: &Fields, cidr: Ipv4Net) -> Result<(), ConfigError> {
    if cidr.addr() != cidr.network() {
        return fail(format!(
            "{at}{} {cidr} has host bits set; did you mean {}?",
            fields.cidr,
            cidr.trunc()
        ));
    }
    Ok(())
}

fn check_block(at: &str, fields: &Fields, cidr: Ipv4Net, block: u8) -> Result<(), ConfigError> {
    if block > MAX_BLOCK_SIZE {
        return fail(format!(
            "{at}{} /{block} is too long: node subnets must be /{MAX_BLOCK_SIZE} or shorter \
             (a gateway and at least one pod)",
            fields.block
        ));
    }
    if block <= cidr.prefix_len() {
        return fail(format!(
            "{at}{} /{block} must be longer than the {} prefix /{} to cut {cidr} into node subnets",
            fields.block,
            fields.cidr,
            cidr.prefix_len()
        ));
    }
    Ok(())
}

fn validate_backend(backend: &Backend, fields: &Fields) -> Result<(), ConfigError> {
    let kind = backend.kind;
    if kind == BackendKind::Vxlan && !(1..=MAX_VNI).contains(&backend.vni) {
        return fail(format!(
            "{} {} is out of range: a VXLAN network identifier is 1 to {MAX_VNI}",
            fields.vni, backend.vni
        ));
    }
    if kind.uses_port() && backend.port == 0 {
        return fail(format!(
            "{} must not be 0: the {kind} backend needs a UDP port",
            fields.port
        ));
    }
    if backend.direct_routing && !kind.has_direct_routing() {
        return fail(format!(
            "{} applies only to the vxlan and ipip backends, not {kind}",
            fields.direct_routing
        ));
    }
    Ok(())
}

/// Flannel's default node subnet length: a /24 when the network holds at least four of them,
/// else a quarter of the network; networks longer than /28 are refused (Flannel's rules, from
/// its `CheckNetworkConfig`). twill's own pools use the same rule for a missing `blockSize`.
fn default_block(at: &str, field: &str, cidr: Ipv4Net) -> Result<u8, ConfigError> {
    match cidr.prefix_len() {
        p if p > 28 => fail(format!(
            "{at}{field} {cidr} is too small: the smallest network is a /28 (four /30 node subnets)"
        )),
        p if p <= 22 => Ok(24),
        p => Ok(p + 2),
    }
}

/// The `n`th subnet of length `block` in `cidr`.
fn nth_subnet(cidr: Ipv4Net, block: u8, n: u64) -> Ipv4Net {
    let start = u64::from(u32::from(cidr.network())) + (n << (32 - u32::from(block)));
    let addr = Ipv4Addr::from(u32::try_from(start).unwrap_or(u32::MAX));
    Ipv4Net::new(addr, block).expect("block sizes are checked to be at most 30")
}

/// The first and last node subnet by default. The first subnet of the network is skipped, as
/// Flannel does: its network address is the network's own, which the VXLAN device would
/// carry as its address.
fn default_bounds(cidr: Ipv4Net, block: u8) -> (Ipv4Net, Ipv4Net) {
    let count = 1u64 << (block - cidr.prefix_len());
    (
        nth_subnet(cidr, block, 1),
        nth_subnet(cidr, block, count - 1),
    )
}

fn parse_cidr(at: &str, field: &str, text: &str) -> Result<Ipv4Net, ConfigError> {
    if let Ok(net) = text.parse::<Ipv4Net>() {
        return Ok(net);
    }
    if text.parse::<ipnet::Ipv6Net>().is_ok() {
        return fail(format!(
            "{at}{field} {text} is an IPv6 network: IPv6 not supported yet"
        ));
    }
    fail(format!(
        "{at}{field} {text:?} is not an IPv4 network in CIDR form such as 10.244.0.0/16"
    ))
}

fn prefix_len<N: Copy + fmt::Display + TryInto<u8>>(
    at: &str,
    field: &str,
    len: N,
) -> Result<u8, ConfigError> {
    len.try_into().ok().filter(|len| *len <= 32).ok_or_else(|| {
        ConfigError::new(format!(
            "{at}{field} {len} is not a prefix length (0 to 32)"
        ))
    })
}

fn parse_addr(at: &str, field: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
    text.parse().or_else(|_| {
        fail(format!(
            "{at}{field} {text:?} is not an IPv4 address such as 10.244.1.0"
        ))
    })
}

// ---------------------------------------------------------------------------------------------
// JSON: Flannel's net-conf.json, twill's form, or the normalized form.

fn parse_json(text: &str) -> Result<ClusterConfig, ConfigError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ConfigError::new(format!("JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return fail("JSON: the config must be an object");
    };
    match object.get("pools") {
        // Only twill's forms have `pools`; the normalized one has an object as `backend`.
        Some(_) if object.get("backend").is_some_and(|b| b.is_object()) => {
            let config: ClusterConfig = serde_json::from_value(value)
                .map_err(|e| ConfigError::new(format!("JSON: {e}")))?;
            config.validate()?;
            Ok(config)
        }
        Some(_) => {
            let raw: RawTwill = serde_json::from_value(value)
                .map_err(|e| ConfigError::new(format!("JSON: {e}")))?;
            from_twill(raw)
        }
        None => parse_flannel(object),
    }
}

const FLANNEL_KEYS: &str = "Network, SubnetLen, SubnetMin, SubnetMax, Backend, EnableIPv4, \
                            EnableIPv6, EnableNFTables, BGP";

fn flannel_str<'a>(key: &str, value: &'a serde_json::Value) -> Result<&'a str, ConfigError> {
    value
        .as_str()
        .ok_or_else(|| ConfigError::new(format!("{key} must be a string, not {value}")))
}

fn flannel_bool(key: &str, value: &serde_json::Value) -> Result<bool, ConfigError> {
    value
        .as_bool()
        .ok_or_else(|| ConfigError::new(format!("{key} must be true or false, not {value}")))
}

fn flannel_uint(key: &str, value: &serde_json::Value) -> Result<u64, ConfigError> {
    value.as_u64().ok_or_else(|| {
        ConfigError::new(format!("{key} must be a non-negative integer, not {value}"))
    })
}

/// Flannel's net-conf.json, read the way flanneld reads it: keys match case-insensitively and
/// a `null` value is the same as a missing key (Go's `encoding/json`), zero `SubnetLen` and
/// `Port` mean the default, and a missing `Backend` means udp.
fn parse_flannel(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<ClusterConfig, ConfigError> {
    let (mut network, mut subnet_len, mut min, mut max, mut backend, mut bgp) =
        (None, None, None, None, None, None);
    for (key, value) in object {
        if value.is_null() {
            continue;
        }
        match key.to_ascii_lowercase().as_str() {
            "network" => network = Some(flannel_str(key, value)?),
            "subnetlen" => subnet_len = Some(flannel_uint(key, value)?),
            "subnetmin" => min = Some(flannel_str(key, value)?),
            "subnetmax" => max = Some(flannel_str(key, value)?),
            "backend" => backend = Some(value),
            // twill's addition: the bgp section of its own form, same keys.
            "bgp" => {
                let raw: RawBgp = serde_json::from_value(value.clone())
                    .map_err(|e| ConfigError::new(format!("{key}: {e}")))?;
                bgp = Some(from_raw_bgp(raw)?);
            }
            "enableipv4" => {
                if !flannel_bool(key, value)? {
                    return fail(format!(
                        "{key} is false: twill needs IPv4 (IPv6 not supported yet)"
                    ));
                }
            }
            "enableipv6" => {
                if flannel_bool(key, value)? {
                    return fail(format!("{key}: IPv6 not supported yet"));
                }
            }
            "ipv6network" | "ipv6subnetlen" | "ipv6subnetmin" | "ipv6subnetmax" => {
                return fail(format!("{key}: IPv6 not supported yet"));
            }
            // twill always programs nftables, so either value is fine.
            "enablenftables" => {
                flannel_bool(key, value)?;
            }
            _ => {
                return fail(format!(
                    "unknown key {key:?} in Flannel's net-conf.json (known: {FLANNEL_KEYS})"
                ));
            }
        }
    }

    let (backend, fields) = flannel_backend(backend)?;
    let Some(network) = network else {
        return fail(r#"Network is missing: net-conf.json needs e.g. "Network": "10.244.0.0/16""#);
    };
    let cidr = parse_cidr("", "Network", network)?;
    check_cidr("", fields, cidr)?;
    let block = match subnet_len {
        None | Some(0) => default_block("", "Network", cidr)?,
        Some(len) => {
            let len = prefix_len("", fields.block, len)?;
            check_block("", fields, cidr, len)?;
            // Flannel never leases the first subnet, so it insists on at least four.
            if len < cidr.prefix_len() + 2 {
                return fail(format!(
                    "SubnetLen /{len} cuts Network {cidr} into fewer than four subnets; \
                     Flannel requires SubnetLen /{} or longer",
                    cidr.prefix_len() + 2
                ));
            }
            len
        }
    };
    let (default_min, default_max) = default_bounds(cidr, block);
    let bound = |field: &str, text: Option<&str>, default: Ipv4Net| match text {
        None => Ok(default),
        Some(text) => Ok(Ipv4Net::new(parse_addr("", field, text)?, block)
            .expect("block sizes are checked to be at most 30")),
    };
    let config = ClusterConfig {
        pools: vec![Pool {
            name: "default".into(),
            cidr,
            block_size: block,
            subnet_min: bound("SubnetMin", min, default_min)?,
            subnet_max: bound("SubnetMax", max, default_max)?,
            nat_outgoing: true,
        }],
        bgp: bgp.or_else(|| (backend.kind == BackendKind::Bgp).then(BgpConfig::default)),
        backend,
        // Flannel's form has no such keys: the defaults (Drop, no ports).
        host_access: HostAccess::default(),
    };
    validate(&config, fields)?;
    Ok(config)
}

fn flannel_backend(
    value: Option<&serde_json::Value>,
) -> Result<(Backend, &'static Fields), ConfigError> {
    let Some(value) = value else {
        return Ok((Backend::with_defaults(BackendKind::Udp), &FLANNEL_FIELDS));
    };
    let Some(object) = value.as_object() else {
        return fail(format!(
            r#"Backend must be an object such as {{"Type": "vxlan"}}, not {value}"#
        ));
    };
    let type_name = object
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("type") && !v.is_null())
        .map(|(k, v)| flannel_str(&format!("Backend.{k}"), v))
        .transpose()?;
    let Some(type_name) = type_name else {
        return fail(format!(
            "Backend.Type is missing: use one of {}",
            BackendKind::list()
        ));
    };
    let Some(kind) = BackendKind::from_name(type_name) else {
        return fail(format!(
            "Backend.Type {type_name:?} is not supported: twill supports {}",
            BackendKind::list()
        ));
    };
    let fields = if kind == BackendKind::Wireguard {
        &FLANNEL_WIREGUARD_FIELDS
    } else {
        &FLANNEL_FIELDS
    };
    let mut backend = Backend::with_defaults(kind);
    for (key, value) in object {
        let lower = key.to_ascii_lowercase();
        if value.is_null() || lower == "type" {
            continue;
        }
        let name = format!("Backend.{key}");
        match (kind, lower.as_str()) {
            (BackendKind::Vxlan, "vni") => {
                let vni = flannel_uint(&name, value)?;
                backend.vni = u32::try_from(vni).unwrap_or(u32::MAX);
            }
            (BackendKind::Vxlan | BackendKind::Udp, "port")
            | (BackendKind::Wireguard, "listenport") => {
                let port = flannel_uint(&name, value)?;
                if port != 0 {
                    backend.port = u16::try_from(port).map_err(|_| {
                        ConfigError::new(format!("{name} {port} is not a UDP port (1 to 65535)"))
                    })?;
                }
            }
            // Flannel's udp has no DirectRouting; twill's does (same-segment peers get routes).
            (BackendKind::Vxlan | BackendKind::Ipip | BackendKind::Udp, "directrouting") => {
                backend.direct_routing = flannel_bool(&name, value)?;
            }
            // Tools that template net-conf.json often write `"DirectRouting": false` for every
            // backend; only `true` would ask for something these backends cannot do.
            (BackendKind::HostGw | BackendKind::Wireguard | BackendKind::Bgp, "directrouting") => {
                if flannel_bool(&name, value)? {
                    return fail(format!(
                        "{name} is not available with the {kind} backend: use vxlan, udp or ipip"
                    ));
                }
            }
            // Off is what twill does anyway.
            (BackendKind::Vxlan, "gbp" | "learning") => {
                if flannel_bool(&name, value)? {
                    return fail(format!("{name} is not supported by twill's vxlan backend"));
                }
            }
            (BackendKind::Vxlan, "mtu" | "macprefix")
            | (
                BackendKind::Wireguard,
                "psk" | "listenportv6" | "persistentkeepaliveinterval" | "mode" | "mtu",
            ) => {
                return fail(format!(
                    "{name} is a Flannel {kind} option twill does not support yet"
                ));
            }
            _ => {
                let known = match kind {
                    BackendKind::Vxlan => "Type, VNI, Port, DirectRouting",
                    BackendKind::Udp => "Type, Port, DirectRouting",
                    BackendKind::Ipip => "Type, DirectRouting",
                    BackendKind::Wireguard => "Type, ListenPort",
                    BackendKind::HostGw | BackendKind::Bgp => "Type",
                };
                return fail(format!(
                    "unknown key {name:?} for the {kind} backend (known: {known})"
                ));
            }
        }
    }
    Ok((backend, fields))
}

// ---------------------------------------------------------------------------------------------
// twill's own form (TOML, YAML, or JSON with `pools`).

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTwill {
    backend: Option<String>,
    vni: Option<i64>,
    port: Option<i64>,
    direct_routing: Option<bool>,
    pools: Option<Vec<RawPool>>,
    bgp: Option<RawBgp>,
    workload_to_host: Option<String>,
    workload_to_host_ports: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBgp {
    as_number: Option<i64>,
    node_to_node_mesh: Option<bool>,
    route_reflectors: Option<Vec<String>>,
    cluster_id: Option<String>,
    listen_port: Option<i64>,
    hold_time: Option<i64>,
    graceful_restart: Option<bool>,
    nodes: Option<BTreeMap<String, RawBgpNode>>,
    peers: Option<Vec<RawBgpPeer>>,
    password: Option<crate::bgp_auth::RawSecret>,
    password_file: Option<String>,
    password_env: Option<String>,
    ttl_security: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBgpNode {
    as_number: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBgpPeer {
    address: Option<String>,
    as_number: Option<i64>,
    node: Option<String>,
    password: Option<crate::bgp_auth::RawSecret>,
    password_file: Option<String>,
    password_env: Option<String>,
    ttl_security: Option<bool>,
}

/// The protection keys of a `bgp` section or peer.
fn raw_auth(
    password: Option<crate::bgp_auth::RawSecret>,
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
        ConfigError::new(format!("{field} {n} is not an AS number (1 to 4294967295)"))
    })?;
    check_as(field, asn)?;
    Ok(asn)
}

/// The `bgp` section of any form, defaults filled in, then validated.
fn from_raw_bgp(raw: RawBgp) -> Result<BgpConfig, ConfigError> {
    let d = BgpConfig::default();
    let route_reflectors = raw.route_reflectors.unwrap_or_default();
    // Reflectors replace the mesh; saying both is a contradiction `validate` reports.
    let mesh = raw.node_to_node_mesh.unwrap_or(route_reflectors.is_empty());
    let cluster_id = raw
        .cluster_id
        .map(|t| parse_addr("", "bgp.clusterId", &t))
        .transpose()?;
    let listen_port = match raw.listen_port {
        None => d.listen_port,
        Some(p) => u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
            ConfigError::new(format!("bgp.listenPort {p} is not a TCP port (1 to 65535)"))
        })?,
    };
    let hold_time = match raw.hold_time {
        None => d.hold_time,
        Some(h) => u16::try_from(h).map_err(|_| {
            ConfigError::new(format!(
                "bgp.holdTime {h} is out of range: 0 or 3 to 65535 seconds"
            ))
        })?,
    };
    let mut nodes = BTreeMap::new();
    for (name, n) in raw.nodes.unwrap_or_default() {
        let field = format!("bgp.nodes.{name}.asNumber");
        let Some(asn) = n.as_number else {
            return fail(format!("{field} is missing"));
        };
        nodes.insert(
            name,
            BgpNode {
                as_number: as_number(&field, asn)?,
            },
        );
    }
    let mut peers = Vec::new();
    for (i, p) in raw.peers.unwrap_or_default().into_iter().enumerate() {
        let Some(address) = p.address else {
            return fail(format!("bgp.peers[{i}].address is missing"));
        };
        let address: IpAddr = address.parse().map_err(|_| {
            ConfigError::new(format!(
                "bgp.peers[{i}].address {address:?} is not an IP address such as 192.168.1.1"
            ))
        })?;
        let field = format!("bgp.peers[{i}].asNumber");
        let Some(asn) = p.as_number else {
            return fail(format!("{field} is missing"));
        };
        peers.push(BgpPeer {
            address,
            as_number: as_number(&field, asn)?,
            node: p.node,
            auth: raw_auth(p.password, p.password_file, p.password_env, p.ttl_security),
        });
    }
    let config = BgpConfig {
        as_number: match raw.as_number {
            None => d.as_number,
            Some(n) => as_number("bgp.asNumber", n)?,
        },
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
    };
    config.validate()?;
    Ok(config)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPool {
    name: Option<String>,
    cidr: Option<String>,
    block_size: Option<i64>,
    subnet_min: Option<String>,
    subnet_max: Option<String>,
    vxlan_mode: Option<String>,
    ipip_mode: Option<String>,
    nat_outgoing: Option<bool>,
}

/// What one pool's Calico modes ask for.
struct PoolModes {
    pool: String,
    vxlan: EncapMode,
    ipip: EncapMode,
}

impl PoolModes {
    /// The backend and direct routing these modes mean ("Never" for both: no encapsulation,
    /// which is host-gw).
    fn implied(&self) -> (BackendKind, bool) {
        match (self.vxlan, self.ipip) {
            (EncapMode::Always, _) => (BackendKind::Vxlan, false),
            (EncapMode::CrossSubnet, _) => (BackendKind::Vxlan, true),
            (_, EncapMode::Always) => (BackendKind::Ipip, false),
            (_, EncapMode::CrossSubnet) => (BackendKind::Ipip, true),
            (EncapMode::Never, EncapMode::Never) => (BackendKind::HostGw, false),
        }
    }

    fn describe(&self) -> String {
        match (self.vxlan, self.ipip) {
            (EncapMode::Never, EncapMode::Never) => format!(
                "pool {} has vxlanMode and ipipMode Never (no encapsulation: host-gw)",
                self.pool
            ),
            (mode, EncapMode::Never) => format!("pool {} has vxlanMode {mode}", self.pool),
            (_, mode) => format!("pool {} has ipipMode {mode}", self.pool),
        }
    }
}

fn parse_mode(at: &str, field: &str, text: Option<&str>) -> Result<EncapMode, ConfigError> {
    match text {
        None => Ok(EncapMode::Never),
        Some(text) => EncapMode::from_name(text).ok_or_else(|| {
            ConfigError::new(format!(
                "{at}{field} {text:?} must be Always, CrossSubnet or Never"
            ))
        }),
    }
}

fn from_twill(raw: RawTwill) -> Result<ClusterConfig, ConfigError> {
    let fields = &TWILL_FIELDS;
    let raw_pools = match raw.pools {
        Some(pools) if !pools.is_empty() => pools,
        _ => return fail("pools: at least one pool (with a name and a cidr) is required"),
    };
    // Calico's modes speak only if some pool sets one; then a missing mode is Never, as in
    // Calico. If none does, `backend` alone decides (vxlan by default).
    let modes_set = raw_pools
        .iter()
        .any(|p| p.vxlan_mode.is_some() || p.ipip_mode.is_some());
    let mut pools = Vec::with_capacity(raw_pools.len());
    let mut modes = Vec::with_capacity(raw_pools.len());
    for (i, raw) in raw_pools.into_iter().enumerate() {
        let name = match raw.name {
            Some(name) if !name.trim().is_empty() => name,
            Some(_) => return fail(format!("pools[{i}]: name must not be empty")),
            None => return fail(format!("pools[{i}]: name is missing")),
        };
        let at = fields.at(&name);
        let Some(cidr) = raw.cidr else {
            return fail(format!("{at}cidr is missing"));
        };
        let cidr = parse_cidr(&at, fields.cidr, &cidr)?;
        check_cidr(&at, fields, cidr)?;
        let block = match raw.block_size {
            None => default_block(&at, fields.cidr, cidr)?,
            Some(len) => {
                let len = prefix_len(&at, fields.block, len)?;
                check_block(&at, fields, cidr, len)?;
                len
            }
        };
        let (default_min, default_max) = default_bounds(cidr, block);
        let bound = |field: &str, text: Option<String>, default: Ipv4Net| match text {
            None => Ok(default),
            Some(text) => parse_bound(&at, field, &text, block),
        };
        let subnet_min = bound(fields.min, raw.subnet_min, default_min)?;
        let subnet_max = bound(fields.max, raw.subnet_max, default_max)?;
        let vxlan = parse_mode(&at, "vxlanMode", raw.vxlan_mode.as_deref())?;
        let ipip = parse_mode(&at, "ipipMode", raw.ipip_mode.as_deref())?;
        if vxlan != EncapMode::Never && ipip != EncapMode::Never {
            return fail(format!(
                "{at}vxlanMode {vxlan} and ipipMode {ipip} are both set; a pool uses one \
                 encapsulation (set the other to Never)"
            ));
        }
        modes.push(PoolModes {
            pool: name.clone(),
            vxlan,
            ipip,
        });
        pools.push(Pool {
            name,
            cidr,
            block_size: block,
            subnet_min,
            subnet_max,
            nat_outgoing: raw.nat_outgoing.unwrap_or(true),
        });
    }

    let implied = if modes_set {
        let first = &modes[0];
        if let Some(other) = modes.iter().find(|m| m.implied() != first.implied()) {
            return fail(format!(
                "pools disagree on encapsulation: {} but {}; twill runs one backend per cluster",
                first.describe(),
                other.describe()
            ));
        }
        Some((first.implied(), first))
    } else {
        None
    };

    let explicit = match raw.backend.as_deref() {
        None => None,
        Some(name) => Some(BackendKind::from_name(name).ok_or_else(|| {
            ConfigError::new(format!(
                "backend {name:?} is not supported: twill supports {}",
                BackendKind::list()
            ))
        })?),
    };
    let bgp = raw.bgp.map(from_raw_bgp).transpose()?;
    let kind = match (explicit, implied) {
        // A bgp section without encapsulation asks for routing by BGP.
        (None, None) if bgp.is_some() => BackendKind::Bgp,
        (None, Some(((BackendKind::HostGw, _), _))) if bgp.is_some() => BackendKind::Bgp,
        (None, None) => BackendKind::Vxlan,
        (Some(BackendKind::Bgp), None | Some(((BackendKind::HostGw, _), _))) => BackendKind::Bgp,
        (None, Some(((kind, _), _))) => kind,
        (Some(kind), None) => kind,
        // WireGuard carries traffic itself; Calico runs it over pools that say Never.
        (Some(BackendKind::Wireguard), Some(((BackendKind::HostGw, _), _))) => {
            BackendKind::Wireguard
        }
        (Some(kind), Some(((implied_kind, _), modes))) => {
            if kind != implied_kind {
                return fail(format!(
                    "backend {:?} conflicts with the pools' modes: {}, which means {implied_kind}; \
                     drop `backend` or make them agree",
                    kind.name(),
                    modes.describe()
                ));
            }
            kind
        }
    };
    // `directRouting = true` asks for direct routes, and so does CrossSubnet; `false` (the
    // default, often left in templates) asks for nothing. Only asking for direct routes while
    // a pool says Always (encapsulate to every peer) is a contradiction.
    let implied_direct = implied
        .filter(|((k, _), _)| k.has_direct_routing())
        .map(|((_, direct), modes)| (direct, modes));
    let direct_routing = match (raw.direct_routing, implied_direct) {
        (Some(true), Some((false, modes))) => {
            return fail(format!(
                "directRouting = true conflicts with the pools' modes: {} (Always encapsulates \
                 to every peer; CrossSubnet routes directly within a subnet)",
                modes.describe()
            ));
        }
        (explicit, implied) => {
            explicit.unwrap_or(false) || implied.is_some_and(|(direct, _)| direct)
        }
    };
    let mut backend = Backend::with_defaults(kind);
    backend.direct_routing = direct_routing;
    if let Some(vni) = raw.vni {
        if kind != BackendKind::Vxlan {
            return fail(format!("vni applies only to the vxlan backend, not {kind}"));
        }
        backend.vni = u32::try_from(vni).unwrap_or(u32::MAX);
    }
    if let Some(port) = raw.port {
        if !kind.uses_port() {
            return fail(format!(
                "port applies only to the vxlan, udp and wireguard backends, not {kind}"
            ));
        }
        backend.port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ConfigError::new(format!("port {port} is not a UDP port (1 to 65535)"))
            })?;
    }

    // `backend = "bgp"` alone means BGP with every default.
    let bgp = bgp.or_else(|| (kind == BackendKind::Bgp).then(BgpConfig::default));
    let host_access = from_raw_host_access(raw.workload_to_host, raw.workload_to_host_ports)?;
    let config = ClusterConfig {
        pools,
        backend,
        bgp,
        host_access,
    };
    validate(&config, fields)?;
    Ok(config)
}

fn from_raw_host_access(
    action: Option<String>,
    ports: Option<Vec<String>>,
) -> Result<HostAccess, ConfigError> {
    let workload_to_host = match action {
        None => WorkloadToHost::default(),
        Some(name) => WorkloadToHost::from_name(name.trim()).ok_or_else(|| {
            ConfigError::new(format!(
                "workloadToHost {name:?} is not supported: Drop (the default) or Accept"
            ))
        })?,
    };
    let mut workload_to_host_ports = Vec::new();
    for (i, text) in ports.unwrap_or_default().iter().enumerate() {
        let port: HostPort = text
            .parse()
            .map_err(|e| ConfigError::new(format!("workloadToHostPorts[{i}]: {e}")))?;
        if !workload_to_host_ports.contains(&port) {
            workload_to_host_ports.push(port);
        }
    }
    Ok(HostAccess {
        workload_to_host,
        workload_to_host_ports,
    })
}

/// A `subnetMin`/`subnetMax` of twill's form: an address (as in Flannel) or a subnet of the
/// block size.
fn parse_bound(at: &str, field: &str, text: &str, block: u8) -> Result<Ipv4Net, ConfigError> {
    if text.contains('/') {
        let net = parse_cidr(at, field, text)?;
        if net.prefix_len() != block {
            return fail(format!(
                "{at}{field} {net} must have the blockSize /{block}"
            ));
        }
        return Ok(net);
    }
    let addr = parse_addr(at, field, text)?;
    Ok(Ipv4Net::new(addr, block).expect("block sizes are checked to be at most 30"))
}

/// Whether text that neither parser accepted reads more like TOML (`key = value`, `[table]`)
/// than YAML (`key: value`, `- item`), to report the error of the parser the user meant.
fn looks_like_toml(text: &str) -> bool {
    let (mut toml, mut yaml) = (0, 0);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            toml += 1;
        }
        if line.starts_with("- ") {
            yaml += 1;
        }
        match line.find(['=', ':']).map(|i| line.as_bytes()[i]) {
            Some(b'=') => toml += 1,
            Some(b':') => yaml += 1,
            _ => {}
        }
    }
    toml > yaml
}
