//! Compiling the policies of one node's local endpoints into an nftables rule set (as data;
//! [`crate::render`](mod@crate::render) writes it as an `nft -f` script).
//!
//! Shape (table `inet twill-policy`, so twill's `inet twill` table is never disturbed):
//! ```text
//! chain forward { type filter hook forward priority filter; policy accept;
//!   ct state established,related accept          # replies of allowed connections
//!   iifname vmap @egress-dispatch                 # from a local endpoint: its egress chain
//!   oifname vmap @ingress-dispatch                # to a local endpoint: its ingress chain
//! }
//! chain in-<hash> {                               # one per distinct rule list
//!   ct state invalid drop
//!   <cluster rules, in order>                     # Allow: accept; Deny: drop; Log: log;
//!                                                 # Pass: goto the Kubernetes chain
//!   goto kin-<hash>                               # nothing decided: Kubernetes decides
//! }
//! chain kin-<hash> {                              # only for isolated endpoints
//!   ip saddr @ka4-<hash> accept                   # peers of the rules without ports
//!   ip saddr . meta l4proto . th dport @kp4-<hash> accept   # peer . protocol . port of
//!   ip6 saddr @ka6-<hash> accept                  # all the other rules, as ranges
//!   ip6 saddr . meta l4proto . th dport @kp6-<hash> accept
//!   drop
//! }
//! ```
//! (each of the four only when some rule can put elements in it).
//! Egress chains are the same with `return` for "allowed": the packet then goes on to the
//! ingress dispatch, because a connection between two local endpoints needs both the egress
//! of one and the ingress of the other.
//!
//! Why the cost per packet does not grow with the number of policies: a packet is dispatched
//! through a verdict map (a hash lookup) to the chain of its endpoint. Its Kubernetes part is
//! at most two set lookups per family whatever the number of policies and rules selecting the
//! endpoint: the union of all of them is in the elements (`kp`: every allowed remote address
//! range . protocol . port range, made disjoint as nft requires; `ka`: the remote ranges
//! allowed on every protocol and port). Cluster policies stay one rule per (rule × family),
//! in order, because their first match decides (Deny, Pass and Log can't be a union); they
//! are few. Endpoints with the same rules share one chain (chains are named by a hash of
//! their content).
//!
//! Why sets are named by what they mean: a set of peer addresses is named by a hash of its
//! selector, and a `ka`/`kp` set by a hash of the rules it is the union of (named ports
//! resolved), not of their elements, so an endpoint appearing or leaving anywhere in the
//! cluster changes only elements, and [`crate::render::diff`] can update them without
//! touching rules. Static sets (CIDRs, ports) are named by their content.
//!
//! Endpoints with no policy for a direction get no chain and no dispatch entry: their traffic
//! is not touched at all (not even `ct state invalid drop`).
//!
//! # Routed and bridge mode
//! - Routed (each pod's veth is routed by the host): every pod packet crosses inet `forward`
//!   with the veth as `iifname`/`oifname`: [`Dispatch::Interface`].
//! - Bridge, traffic leaving the node or arriving from it: routed through the bridge, so the
//!   interface is the bridge, not the veth: [`Dispatch::Address`] keys the maps by the pod's
//!   addresses instead (safe because twill's anti-spoofing pins each veth to its addresses).
//! - Bridge, two pods on the same bridge: the frame is bridged and never reaches inet
//!   `forward` unless `br_netfilter` is loaded (which twill does not want: it sends every
//!   bridged frame through the IP hooks). **Not handled yet.** The proposal is the same
//!   chains in a `table bridge twill-policy` on the bridge `forward` hook, dispatched by
//!   `iifname`/`oifname` (there the veths are the bridge ports). Checked by hand on this
//!   kernel with nft 1.0.6: the whole rule set loads in the bridge family except `ct state`,
//!   which fails with "Protocol error" because bridge conntrack (`nf_conntrack_bridge`,
//!   Linux >= 5.3) is not available here; without it replies cannot be allowed statelessly,
//!   so that hook needs that module (or per-direction reply rules) first.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::eval::{Side, entity_matches, peer_matches};
use crate::model::{
    Action, ClusterPolicy, ClusterRule, Direction, Endpoint, Entity, NetworkPolicy, Peer,
    PortRange, PortValue, Protocol, World,
};

/// The name of twill's policy table.
pub const TABLE: &str = "twill-policy";

/// What the dispatch maps are keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Dispatch {
    /// The host-side interface of the endpoint (`iifname`/`oifname`): routed mode, where each
    /// endpoint's veth is the interface the host routes through.
    #[default]
    Interface,
    /// The endpoint's addresses (`ip saddr`/`ip daddr`): bridge mode, where routed traffic
    /// enters and leaves through the bridge, not the veth. Relies on twill's anti-spoofing
    /// (table `inet twill` / `bridge twill`) so a pod cannot claim another's address.
    Address,
}

/// IPv4 or IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// The highest address of the family, as a number.
    fn max(self) -> u128 {
        match self {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        }
    }

    fn digit(self) -> char {
        match self {
            Family::V4 => '4',
            Family::V6 => '6',
        }
    }
}

/// What a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SetKind {
    /// Addresses (`type ipv4_addr` / `ipv6_addr`).
    Addr(Family),
    /// Address ranges (`flags interval`).
    Net(Family),
    /// `inet_proto . inet_service` with port ranges (`flags interval`).
    ProtoPort,
    /// `ipv4_addr . inet_proto . inet_service` with address and port ranges
    /// (`flags interval`): every (peer, protocol, port) a Kubernetes chain allows. Elements
    /// never overlap (nft refuses overlapping ones).
    NetProtoPort(Family),
}

/// One element of a set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Element {
    Addr(IpAddr),
    /// An inclusive address range.
    Range(IpAddr, IpAddr),
    ProtoPort(Protocol, PortRange),
    /// An inclusive address range, a protocol and a port range.
    NetProtoPort(IpAddr, IpAddr, Protocol, PortRange),
}

/// A named set of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Set {
    pub kind: SetKind,
    pub elements: BTreeSet<Element>,
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    Accept,
    /// Back to the base chain (allowed egress goes on to the ingress check).
    Return,
    Drop,
    /// `log prefix "..."`, then the next rule.
    Log(String),
    Goto(String),
}

/// `ip saddr @set` (remote side of the chain's direction), or `!=` with `negate`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AddrMatch {
    pub set: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub negate: bool,
}

/// How a rule matches the destination port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PortMatch {
    /// `meta l4proto . th dport @set`
    ProtoPorts(String),
    /// `ip saddr . meta l4proto . th dport @set` in ingress chains, `ip daddr ...` in
    /// egress ones: the remote address with the protocol and port, one lookup
    /// ([`SetKind::NetProtoPort`]).
    Remote(String),
}

/// One rule. Every given match must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    /// `ct state invalid`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ct_invalid: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    /// `meta l4proto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// On the remote address: the source in ingress chains, the destination in egress ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote: Vec<AddrMatch>,
    /// When not empty, the local endpoint's address must be one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortMatch>,
    pub verdict: Option<Verdict>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A regular chain: the policy of one or more endpoints in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chain {
    pub direction: Direction,
    pub rules: Vec<Rule>,
}

/// The desired content of table `inet twill-policy` on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    pub node: String,
    pub dispatch: Dispatch,
    pub sets: BTreeMap<String, Set>,
    pub chains: BTreeMap<String, Chain>,
    /// Dispatch key (interface name, or address) of a local endpoint -> its ingress chain.
    pub ingress: BTreeMap<String, String>,
    /// Dispatch key -> egress chain.
    pub egress: BTreeMap<String, String>,
}

/// Options of [`compile`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub dispatch: Dispatch,
}

/// The rule set enforcing every policy for the endpoints of `node`.
pub fn compile(world: &World, node: &str, options: Options) -> Ruleset {
    let mut b = Builder {
        world,
        sets: BTreeMap::new(),
        chains: BTreeMap::new(),
        cache: HashMap::new(),
        set_keys: HashMap::new(),
        ranges: HashMap::new(),
    };
    let mut ingress = BTreeMap::new();
    let mut egress = BTreeMap::new();
    let mut local: Vec<&Endpoint> = world.endpoints.iter().filter(|e| e.node == node).collect();
    local.sort_by_key(|e| (&e.namespace, &e.name));
    for ep in local {
        for dir in [Direction::Ingress, Direction::Egress] {
            let Some(chain) = b.endpoint_chain(ep, dir) else {
                continue;
            };
            let keys: Vec<String> = match options.dispatch {
                Dispatch::Interface => vec![ep.interface.clone()],
                Dispatch::Address => ep.addresses.iter().map(IpAddr::to_string).collect(),
            };
            let map = match dir {
                Direction::Ingress => &mut ingress,
                Direction::Egress => &mut egress,
            };
            for k in keys {
                map.insert(k, chain.clone());
            }
        }
    }
    Ruleset {
        node: node.to_string(),
        dispatch: options.dispatch,
        sets: b.sets,
        chains: b.chains,
        ingress,
        egress,
    }
}

struct Builder<'a> {
    world: &'a World,
    sets: BTreeMap<String, Set>,
    chains: BTreeMap<String, Chain>,
    /// Set name by definition, so selector sets are computed once per compile.
    cache: HashMap<String, String>,
    /// Definition by set name, to catch hash collisions.
    set_keys: HashMap<String, String>,
    /// Address ranges of Kubernetes peers by definition, computed once per compile.
    ranges: HashMap<String, Rc<[(u128, u128)]>>,
}

/// FNV-1a: stable across runs and platforms (names must not change between agent restarts,
/// or every restart would be a full table replace).
fn hash(text: &str) -> String {
    format!("{:012x}", twill_types::hash::fnv1a(text.bytes()) >> 16)
}

/// nft limits comments to 128 bytes.
fn comment(text: String) -> Option<String> {
    let mut t = text;
    if t.len() > 120 {
        let mut cut = 117;
        while !t.is_char_boundary(cut) {
            cut -= 1;
        }
        t.truncate(cut);
        t.push_str("...");
    }
    Some(t)
}

/// One Kubernetes rule as the sets of a chain see it (serialized, it is part of their name).
#[derive(Serialize)]
struct K8sPart<'a> {
    namespace: &'a str,
    peers: &'a [Peer],
    /// No `ports`: every protocol and port.
    any: bool,
    /// Numbers and ranges; in ingress also the names, resolved on the selected endpoint.
    ports: Vec<(Protocol, PortRange)>,
    /// Egress names, resolved on each peer endpoint.
    named: Vec<(&'a str, Protocol)>,
}

fn allow(dir: Direction) -> Verdict {
    match dir {
        Direction::Ingress => Verdict::Accept,
        Direction::Egress => Verdict::Return,
    }
}

impl<'a> Builder<'a> {
    /// Adds the set defined by `key` as `prefix-<hash of key>`. Should two keys ever hash
    /// alike, the later one is renamed rather than silently sharing the other's elements.
    fn add_set(
        &mut self,
        prefix: &str,
        key: &str,
        kind: SetKind,
        elements: BTreeSet<Element>,
    ) -> String {
        let mut salt = 0u32;
        loop {
            let salted = if salt == 0 {
                key.to_string()
            } else {
                format!("{key}#{salt}")
            };
            let name = format!("{prefix}-{}", hash(&salted));
            match self.set_keys.get(&name) {
                Some(k) if k != key => salt += 1,
                Some(_) => return name,
                None => {
                    self.set_keys.insert(name.clone(), key.to_string());
                    self.sets.insert(name.clone(), Set { kind, elements });
                    return name;
                }
            }
        }
    }

    /// Adds a chain named by a hash of its content (so endpoints with the same rules share
    /// it); a different chain with the same hash gets another name.
    fn add_chain(&mut self, prefix: &str, chain: Chain) -> String {
        let key = serde_json::to_string(&chain).expect("chains serialize");
        let mut salt = 0u32;
        loop {
            let salted = if salt == 0 {
                key.clone()
            } else {
                format!("{key}#{salt}")
            };
            let name = format!("{prefix}-{}", hash(&salted));
            match self.chains.get(&name) {
                Some(c) if *c != chain => salt += 1,
                Some(_) => return name,
                None => {
                    self.chains.insert(name.clone(), chain);
                    return name;
                }
            }
        }
    }

    /// The chain for `ep` in `dir`, or None when no policy applies.
    fn endpoint_chain(&mut self, ep: &Endpoint, dir: Direction) -> Option<String> {
        let world = self.world;
        let (top, k8s) = match dir {
            Direction::Ingress => ("in", "kin"),
            Direction::Egress => ("eg", "keg"),
        };
        let selecting: Vec<&NetworkPolicy> = world
            .network_policies
            .iter()
            .filter(|p| p.selects(ep, dir))
            .collect();
        let k8s_rules = (!selecting.is_empty()).then(|| {
            let mut rules = self.k8s_rules(&selecting, ep, dir);
            rules.push(Rule {
                verdict: Some(Verdict::Drop),
                comment: comment(format!(
                    "isolated by {}",
                    selecting
                        .iter()
                        .map(|p| p.id())
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                ..Rule::default()
            });
            rules
        });
        let cluster: Vec<&ClusterPolicy> = world
            .cluster_policies
            .iter()
            .filter(|p| p.selects(world, ep, dir) && !p.rules(dir).is_empty())
            .collect();
        let invalid = Rule {
            ct_invalid: true,
            verdict: Some(Verdict::Drop),
            ..Rule::default()
        };
        if cluster.is_empty() {
            let mut rules = vec![invalid];
            rules.extend(k8s_rules?);
            return Some(self.add_chain(
                top,
                Chain {
                    direction: dir,
                    rules,
                },
            ));
        }
        let hand_over = match k8s_rules {
            None => allow(dir),
            Some(rules) => Verdict::Goto(self.add_chain(
                k8s,
                Chain {
                    direction: dir,
                    rules,
                },
            )),
        };
        let mut rules = vec![invalid];
        for cp in cluster {
            for (i, r) in cp.rules(dir).iter().enumerate() {
                rules.extend(self.cluster_rule(cp, i, r, ep, dir, &hand_over));
            }
        }
        rules.push(Rule {
            verdict: Some(hand_over),
            ..Rule::default()
        });
        Some(self.add_chain(
            top,
            Chain {
                direction: dir,
                rules,
            },
        ))
    }

    /// A static interval set of address ranges, named by content; None when empty.
    fn net_set(&mut self, ranges: Vec<(IpAddr, IpAddr)>, fam: Family) -> Option<String> {
        if ranges.is_empty() {
            return None;
        }
        let elements: BTreeSet<Element> = ranges
            .into_iter()
            .map(|(a, b)| Element::Range(a, b))
            .collect();
        let key = serde_json::to_string(&elements).expect("serializes");
        Some(self.add_set(
            &format!("pn{}", fam.digit()),
            &key,
            SetKind::Net(fam),
            elements,
        ))
    }

    fn proto_port_set(&mut self, elements: BTreeSet<Element>) -> String {
        let key = serde_json::to_string(&elements).expect("serializes");
        self.add_set("pp", &key, SetKind::ProtoPort, elements)
    }

    /// The Kubernetes part of an endpoint's chain in `dir`: per family at most two rules, a
    /// lookup of the remote address in the peers allowed on every port
    /// ([`SetKind::Net`], `ka4-`/`ka6-`) and a lookup of remote address . protocol . port in
    /// the union over all rules of peers × ports ([`SetKind::NetProtoPort`], `kp4-`/`kp6-`),
    /// however many policies and rules select the endpoint.
    ///
    /// The sets are named by a hash of their definition (the rules, with the named ports
    /// resolved on this endpoint), not of their elements: endpoints with the same rules share
    /// them, and an endpoint appearing or leaving anywhere changes only elements. Whether a
    /// family gets a rule depends on the definition alone for the same reason.
    fn k8s_rules(
        &mut self,
        selecting: &[&'a NetworkPolicy],
        ep: &Endpoint,
        dir: Direction,
    ) -> Vec<Rule> {
        let mut parts: Vec<K8sPart<'a>> = Vec::new();
        for p in selecting {
            for r in p.rules(dir) {
                let mut ports = Vec::new();
                let mut named = Vec::new();
                for port in &r.ports {
                    match &port.port {
                        None => ports.push((port.protocol, PortRange::ALL)),
                        Some(PortValue::Number(lo)) => ports.push((
                            port.protocol,
                            PortRange {
                                lo: *lo,
                                hi: port.end_port.unwrap_or(*lo),
                            },
                        )),
                        Some(PortValue::Named(name)) => match dir {
                            // Resolved on the selected endpoint, which is this one.
                            Direction::Ingress => {
                                if let Some(n) = ep.named_port(name, port.protocol) {
                                    ports.push((port.protocol, PortRange { lo: n, hi: n }));
                                }
                            }
                            // Resolved on each peer: elements of that peer's addresses.
                            Direction::Egress => named.push((name.as_str(), port.protocol)),
                        },
                    }
                }
                ports.sort();
                ports.dedup();
                named.sort();
                named.dedup();
                let any = r.ports.is_empty();
                if !any && ports.is_empty() && named.is_empty() {
                    continue; // only names this endpoint does not have: allows nothing
                }
                parts.push(K8sPart {
                    namespace: &p.namespace,
                    peers: &r.peers,
                    any,
                    ports,
                    named,
                });
            }
        }
        let key = serde_json::to_string(&(dir, &parts)).expect("serializes");
        let mut out = Vec::new();
        for fam in Family::BOTH {
            let applies = |part: &K8sPart| {
                part.peers.is_empty()
                    || part.peers.iter().any(|p| match p {
                        Peer::Pods { .. } => true,
                        Peer::IpBlock(b) => Family::of(&b.cidr.addr()) == fam,
                    })
            };
            let any: Vec<&K8sPart> = parts.iter().filter(|p| p.any && applies(p)).collect();
            let ported: Vec<&K8sPart> = parts
                .iter()
                .filter(|p| !p.any && (!p.named.is_empty() || applies(p)))
                .collect();
            if !any.is_empty() {
                let set = self.k8s_any_set(&key, fam, &any);
                out.push(Rule {
                    family: Some(fam),
                    remote: vec![AddrMatch { set, negate: false }],
                    verdict: Some(allow(dir)),
                    comment: comment(format!("Kubernetes {}: any port", dir.word())),
                    ..Rule::default()
                });
            }
            if !ported.is_empty() {
                let set = self.k8s_port_set(&key, fam, &ported);
                out.push(Rule {
                    family: Some(fam),
                    ports: Some(PortMatch::Remote(set)),
                    verdict: Some(allow(dir)),
                    comment: comment(format!("Kubernetes {}: peer . protocol . port", dir.word())),
                    ..Rule::default()
                });
            }
        }
        out
    }

    /// Remote addresses of family `fam` any of `peers` (of a policy in `namespace`) allows,
    /// as sorted disjoint ranges; no peers means every address.
    fn peer_ranges(&mut self, namespace: &str, peers: &[Peer], fam: Family) -> Rc<[(u128, u128)]> {
        if peers.is_empty() {
            return Rc::from(vec![(0, fam.max())]);
        }
        let key = format!(
            "peers{}{namespace}\0{}",
            fam.digit(),
            serde_json::to_string(peers).expect("serializes")
        );
        if let Some(r) = self.ranges.get(&key) {
            return r.clone();
        }
        let world = self.world;
        let pods: Vec<&Peer> = peers
            .iter()
            .filter(|p| matches!(p, Peer::Pods { .. }))
            .collect();
        let mut ranges: Vec<(u128, u128)> = Vec::new();
        if !pods.is_empty() {
            for e in addresses_where(world, fam, |side| {
                pods.iter().any(|p| peer_matches(world, namespace, p, side))
            }) {
                if let Element::Addr(a) = e {
                    ranges.push((to_u128(a), to_u128(a)));
                }
            }
        }
        for p in peers {
            if let Peer::IpBlock(b) = p
                && Family::of(&b.cidr.addr()) == fam
            {
                ranges.extend(
                    subtract(b.cidr, &b.except)
                        .into_iter()
                        .map(|(a, z)| (to_u128(a), to_u128(z))),
                );
            }
        }
        let merged: Rc<[(u128, u128)]> = Rc::from(merge_u128(ranges));
        self.ranges.insert(key, merged.clone());
        merged
    }

    /// The `ka` set: remote addresses the rules without ports allow.
    fn k8s_any_set(&mut self, key: &str, fam: Family, parts: &[&K8sPart]) -> String {
        let key = format!("any{}{key}", fam.digit());
        if let Some(n) = self.cache.get(&key) {
            return n.clone();
        }
        let mut ranges = Vec::new();
        for p in parts {
            ranges.extend(self.peer_ranges(p.namespace, p.peers, fam).iter().copied());
        }
        let elements = merge_u128(ranges)
            .into_iter()
            .map(|(a, z)| Element::Range(from_u128(a, fam), from_u128(z, fam)))
            .collect();
        let name = self.add_set(
            &format!("ka{}", fam.digit()),
            &key,
            SetKind::Net(fam),
            elements,
        );
        self.cache.insert(key, name.clone());
        name
    }

    /// The `kp` set: remote address . protocol . port of the rules with ports, as disjoint
    /// boxes.
    fn k8s_port_set(&mut self, key: &str, fam: Family, parts: &[&K8sPart]) -> String {
        let key = format!("ports{}{key}", fam.digit());
        if let Some(n) = self.cache.get(&key) {
            return n.clone();
        }
        let world = self.world;
        let mut boxes: Vec<(u128, u128, Protocol, PortRange)> = Vec::new();
        for p in parts {
            if !p.ports.is_empty() {
                let ranges = self.peer_ranges(p.namespace, p.peers, fam);
                for (proto, pr) in &p.ports {
                    boxes.extend(ranges.iter().map(|(a, z)| (*a, *z, *proto, *pr)));
                }
            }
            if p.named.is_empty() {
                continue;
            }
            for d in &world.endpoints {
                for addr in d.addresses.iter().filter(|a| Family::of(a) == fam) {
                    let side = Side {
                        ip: *addr,
                        endpoint: Some(d),
                    };
                    let peer_ok = p.peers.is_empty()
                        || p.peers
                            .iter()
                            .any(|peer| peer_matches(world, p.namespace, peer, side));
                    if !peer_ok {
                        continue;
                    }
                    let a = to_u128(*addr);
                    for (n, proto) in &p.named {
                        if let Some(port) = d.named_port(n, *proto) {
                            boxes.push((a, a, *proto, PortRange { lo: port, hi: port }));
                        }
                    }
                }
            }
        }
        let elements = disjoint(boxes)
            .into_iter()
            .map(|(a, z, proto, pr)| {
                Element::NetProtoPort(from_u128(a, fam), from_u128(z, fam), proto, pr)
            })
            .collect();
        let name = self.add_set(
            &format!("kp{}", fam.digit()),
            &key,
            SetKind::NetProtoPort(fam),
            elements,
        );
        self.cache.insert(key, name.clone());
        name
    }

    fn cluster_rule(
        &mut self,
        policy: &ClusterPolicy,
        index: usize,
        rule: &ClusterRule,
        ep: &Endpoint,
        dir: Direction,
        hand_over: &Verdict,
    ) -> Vec<Rule> {
        let world = self.world;
        let (local_entity, remote_entity) = match dir {
            Direction::Ingress => (&rule.destination, &rule.source),
            Direction::Egress => (&rule.source, &rule.destination),
        };
        let note = format!("{} {} rule {index}", policy.name, dir.word());
        let verdict = match rule.action {
            Action::Allow => allow(dir),
            Action::Deny => Verdict::Drop,
            Action::Log => Verdict::Log(log_prefix(&policy.name, dir, index)),
            Action::Pass => hand_over.clone(),
        };
        let ports = if rule.destination.ports.is_empty() {
            None
        } else {
            let proto = rule.protocol.expect("parse requires a protocol with ports");
            let elements = rule
                .destination
                .ports
                .iter()
                .map(|r| Element::ProtoPort(proto, *r))
                .collect();
            Some(PortMatch::ProtoPorts(self.proto_port_set(elements)))
        };
        let mut out = Vec::new();
        for fam in Family::BOTH {
            match (rule.protocol, fam) {
                (Some(Protocol::Icmp), Family::V6) | (Some(Protocol::Icmpv6), Family::V4) => {
                    continue;
                }
                _ => {}
            }
            // The local side is this endpoint: decide it now, per address.
            let mine: Vec<IpAddr> = ep
                .addresses
                .iter()
                .copied()
                .filter(|a| Family::of(a) == fam)
                .collect();
            let matching: Vec<IpAddr> = mine
                .iter()
                .copied()
                .filter(|a| {
                    entity_matches(
                        world,
                        local_entity,
                        Side {
                            ip: *a,
                            endpoint: Some(ep),
                        },
                    )
                })
                .collect();
            if matching.is_empty() {
                continue;
            }
            let local = if matching.len() == mine.len() {
                Vec::new()
            } else {
                matching
            };
            let Some(remote) = self.entity_matches(remote_entity, fam) else {
                continue;
            };
            out.push(Rule {
                family: Some(fam),
                protocol: if ports.is_none() { rule.protocol } else { None },
                remote,
                local,
                ports: ports.clone(),
                verdict: Some(verdict.clone()),
                comment: comment(note.clone()),
                ..Rule::default()
            });
        }
        out
    }

    /// Address matches for a remote entity in `fam`; None when it can match nothing there.
    fn entity_matches(&mut self, e: &Entity, fam: Family) -> Option<Vec<AddrMatch>> {
        let world = self.world;
        if e.needs_endpoint() {
            // Nets and notNets narrow the endpoints' addresses; all of it is in the elements.
            let key = format!(
                "entity{}{}",
                fam.digit(),
                serde_json::to_string(e).expect("serializes")
            );
            let set = match self.cache.get(&key) {
                Some(n) => n.clone(),
                None => {
                    let elements =
                        addresses_where(world, fam, |side| entity_matches(world, e, side));
                    let n = self.add_set(
                        &format!("pa{}", fam.digit()),
                        &key,
                        SetKind::Addr(fam),
                        elements,
                    );
                    self.cache.insert(key, n.clone());
                    n
                }
            };
            return Some(vec![AddrMatch { set, negate: false }]);
        }
        let mut out = Vec::new();
        let of_fam = |nets: &[IpNet]| -> Vec<IpNet> {
            nets.iter()
                .copied()
                .filter(|n| Family::of(&n.addr()) == fam)
                .collect()
        };
        if !e.nets.is_empty() {
            let nets = of_fam(&e.nets);
            let ranges = merge(nets.iter().map(|n| range_of(*n)).collect());
            let set = self.net_set(ranges, fam)?;
            out.push(AddrMatch { set, negate: false });
        }
        let not = of_fam(&e.not_nets);
        if let Some(set) = self.net_set(merge(not.iter().map(|n| range_of(*n)).collect()), fam) {
            out.push(AddrMatch { set, negate: true });
        }
        Some(out)
    }
}

fn log_prefix(policy: &str, dir: Direction, index: usize) -> String {
    // nft allows 127 bytes; keep room for the suffix.
    let mut name = policy.to_string();
    name.truncate(90);
    format!("twill {name} {} {index}: ", dir.word())
}

/// Every address of family `fam` of any endpoint for which `pred` holds.
fn addresses_where(world: &World, fam: Family, pred: impl Fn(Side) -> bool) -> BTreeSet<Element> {
    let mut out = BTreeSet::new();
    for ep in &world.endpoints {
        for addr in ep.addresses.iter().filter(|a| Family::of(a) == fam) {
            if pred(Side {
                ip: *addr,
                endpoint: Some(ep),
            }) {
                out.insert(Element::Addr(*addr));
            }
        }
    }
    out
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

fn from_u128(v: u128, fam: Family) -> IpAddr {
    match fam {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(v as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(v)),
    }
}

fn range_of(net: IpNet) -> (IpAddr, IpAddr) {
    (net.network(), net.broadcast())
}

/// `cidr` minus the `except` networks, as ranges.
fn subtract(cidr: IpNet, except: &[IpNet]) -> Vec<(IpAddr, IpAddr)> {
    let fam = Family::of(&cidr.addr());
    let (lo, hi) = range_of(cidr);
    let mut ranges = vec![(to_u128(lo), to_u128(hi))];
    for e in except {
        let (elo, ehi) = range_of(*e);
        let (elo, ehi) = (to_u128(elo), to_u128(ehi));
        ranges = ranges
            .into_iter()
            .flat_map(|(a, b)| {
                let mut parts = Vec::new();
                if ehi < a || elo > b {
                    parts.push((a, b));
                } else {
                    if elo > a {
                        parts.push((a, elo - 1));
                    }
                    if ehi < b {
                        parts.push((ehi + 1, b));
                    }
                }
                parts
            })
            .collect();
    }
    ranges
        .into_iter()
        .map(|(a, b)| (from_u128(a, fam), from_u128(b, fam)))
        .collect()
}

/// Sorts ranges and merges overlapping or adjacent ones (nft refuses overlapping intervals).
fn merge(ranges: Vec<(IpAddr, IpAddr)>) -> Vec<(IpAddr, IpAddr)> {
    let Some(fam) = ranges.first().map(|r| Family::of(&r.0)) else {
        return Vec::new();
    };
    let mut v: Vec<(u128, u128)> = ranges
        .into_iter()
        .map(|(a, b)| (to_u128(a), to_u128(b)))
        .collect();
    v.sort();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out.into_iter()
        .map(|(a, b)| (from_u128(a, fam), from_u128(b, fam)))
        .collect()
}

/// Sorts ranges and merges overlapping or adjacent ones.
fn merge_u128(mut v: Vec<(u128, u128)>) -> Vec<(u128, u128)> {
    v.sort_unstable();
    let mut out: Vec<(u128, u128)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Addresses `lo..=hi` with the merged port ranges allowed on them.
type Piece = (u128, u128, Vec<(u16, u16)>);

/// Boxes (address range × protocol × port range) rewritten as disjoint boxes covering the
/// same points, as an interval set of concatenations needs: per protocol, the address axis is
/// cut wherever a box starts or ends, the port ranges over each piece are merged, and
/// neighbouring pieces with the same ports are joined again.
fn disjoint(
    boxes: Vec<(u128, u128, Protocol, PortRange)>,
) -> Vec<(u128, u128, Protocol, PortRange)> {
    let mut by_proto: BTreeMap<Protocol, Vec<(u128, u128, PortRange)>> = BTreeMap::new();
    for (a, z, proto, pr) in boxes {
        by_proto.entry(proto).or_default().push((a, z, pr));
    }
    let mut out = Vec::new();
    for (proto, boxes) in by_proto {
        // (position, starts, ports): a box starts at its first address and ends after its
        // last (no end past the top of the address space).
        let mut events: Vec<(u128, bool, PortRange)> = Vec::with_capacity(boxes.len() * 2);
        for (a, z, pr) in boxes {
            events.push((a, true, pr));
            if let Some(after) = z.checked_add(1) {
                events.push((after, false, pr));
            }
        }
        events.sort_unstable_by_key(|e| e.0);
        let mut active: BTreeMap<(u16, u16), usize> = BTreeMap::new();
        let mut current: Option<Piece> = None;
        let flush = |c: Option<Piece>, out: &mut Vec<_>| {
            if let Some((a, z, ports)) = c {
                for (lo, hi) in ports {
                    out.push((a, z, proto, PortRange { lo, hi }));
                }
            }
        };
        let mut i = 0;
        while i < events.len() {
            let pos = events[i].0;
            while i < events.len() && events[i].0 == pos {
                let (_, starts, pr) = events[i];
                let n = active.entry((pr.lo, pr.hi)).or_insert(0);
                if starts {
                    *n += 1;
                } else {
                    *n -= 1;
                    if *n == 0 {
                        active.remove(&(pr.lo, pr.hi));
                    }
                }
                i += 1;
            }
            let end = events.get(i).map_or(u128::MAX, |e| e.0 - 1);
            let mut ports: Vec<(u16, u16)> = Vec::new();
            for &(lo, hi) in active.keys() {
                match ports.last_mut() {
                    Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                    _ => ports.push((lo, hi)),
                }
            }
            if ports.is_empty() {
                flush(current.take(), &mut out);
                continue;
            }
            match &mut current {
                Some((_, z, p)) if *p == ports => *z = end,
                _ => {
                    flush(current.take(), &mut out);
                    current = Some((pos, end, ports));
                }
            }
        }
        flush(current.take(), &mut out);
    }
    out
}

/// A packet as the rule set sees it (the first packet of a connection).
#[derive(Debug, Clone)]
pub struct Packet {
    pub iif: Option<String>,
    pub oif: Option<String>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
}

enum Outcome {
    Accept,
    Drop,
    Return,
}

impl Ruleset {
    /// Interprets the rule set the way nftables runs the rendered table, for a new
    /// connection's first packet: true when the `forward` chain lets it through. Used to test
    /// the compiler against [`crate::eval`]; it is not on any packet path.
    pub fn accepts(&self, pkt: &Packet) -> bool {
        let (eg_key, in_key) = match self.dispatch {
            Dispatch::Interface => (pkt.iif.clone(), pkt.oif.clone()),
            Dispatch::Address => (Some(pkt.src.to_string()), Some(pkt.dst.to_string())),
        };
        if let Some(chain) = eg_key.and_then(|k| self.egress.get(&k)) {
            match self.run(chain, pkt) {
                Outcome::Accept => return true,
                Outcome::Drop => return false,
                Outcome::Return => {}
            }
        }
        if let Some(chain) = in_key.and_then(|k| self.ingress.get(&k)) {
            match self.run(chain, pkt) {
                Outcome::Accept | Outcome::Return => return true,
                Outcome::Drop => return false,
            }
        }
        true
    }

    fn run(&self, chain: &str, pkt: &Packet) -> Outcome {
        let chain = &self.chains[chain];
        for rule in &chain.rules {
            if !self.rule_matches(rule, chain.direction, pkt) {
                continue;
            }
            match &rule.verdict {
                None | Some(Verdict::Log(_)) => {}
                Some(Verdict::Accept) => return Outcome::Accept,
                Some(Verdict::Drop) => return Outcome::Drop,
                Some(Verdict::Return) => return Outcome::Return,
                Some(Verdict::Goto(c)) => return self.run(c, pkt),
            }
        }
        Outcome::Return
    }

    fn in_set(&self, set: &str, probe: impl Fn(&Element) -> bool) -> bool {
        self.sets[set].elements.iter().any(probe)
    }

    fn rule_matches(&self, rule: &Rule, dir: Direction, pkt: &Packet) -> bool {
        if rule.ct_invalid {
            // Only new, valid connections are interpreted.
            return false;
        }
        if rule.family.is_some_and(|f| f != Family::of(&pkt.src)) {
            return false;
        }
        if rule.protocol.is_some_and(|p| p != pkt.protocol) {
            return false;
        }
        let (remote, local) = match dir {
            Direction::Ingress => (pkt.src, pkt.dst),
            Direction::Egress => (pkt.dst, pkt.src),
        };
        let addr_in = |e: &Element| match e {
            Element::Addr(a) => *a == remote,
            Element::Range(a, b) => {
                Family::of(a) == Family::of(&remote)
                    && (to_u128(*a)..=to_u128(*b)).contains(&to_u128(remote))
            }
            _ => false,
        };
        for m in &rule.remote {
            if self.in_set(&m.set, addr_in) == m.negate {
                return false;
            }
        }
        if !rule.local.is_empty() && !rule.local.contains(&local) {
            return false;
        }
        match &rule.ports {
            None => true,
            Some(_) if !pkt.protocol.has_ports() => false,
            Some(PortMatch::ProtoPorts(set)) => self.in_set(set, |e| {
                matches!(e, Element::ProtoPort(p, r) if *p == pkt.protocol && r.contains(pkt.port))
            }),
            Some(PortMatch::Remote(set)) => self.in_set(set, |e| match e {
                Element::NetProtoPort(a, b, p, r) => {
                    Family::of(a) == Family::of(&remote)
                        && (to_u128(*a)..=to_u128(*b)).contains(&to_u128(remote))
                        && *p == pkt.protocol
                        && r.contains(pkt.port)
                }
                _ => false,
            }),
        }
    }
}
