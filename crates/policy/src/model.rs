//! The policy model: the world a decision is made in (namespaces, endpoints, policies) and
//! the two kinds of policy twill enforces.
//!
//! - [`NetworkPolicy`] is Kubernetes `networking.k8s.io/v1` NetworkPolicy after the API
//!   server's defaulting (namespace `default`, protocol TCP, `policyTypes` filled in), so the
//!   evaluator and the compiler never repeat those rules.
//! - [`ClusterPolicy`] is twill's ordered, cluster-wide policy (Calico's GlobalNetworkPolicy
//!   in spirit): evaluated before any Kubernetes policy, lower `order` first, rules with the
//!   actions Allow, Deny, Log and Pass.
//!
//! Everything here is plain data that validates on the way in ([`crate::parse`]); the types
//! serialize to JSON so the store can hold them and golden files can show them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Labels of a namespace or endpoint. Ordered so that output is stable.
pub type Labels = BTreeMap<String, String>;

/// Label changes made by `twill endpoint label`: a value sets the label, `null` removes it
/// (even when the runtime gave it). Stored apart from the endpoint (at
/// `twill_types::keys::endpoint_labels_key`) so that the agent republishing the runtime's
/// labels never undoes a user's change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelOverrides {
    pub labels: BTreeMap<String, Option<String>>,
}

impl LabelOverrides {
    /// The runtime's labels with these changes applied.
    pub fn apply(&self, base: &Labels) -> Labels {
        let mut out = base.clone();
        for (k, v) in &self.labels {
            match v {
                Some(v) => {
                    out.insert(k.clone(), v.clone());
                }
                None => {
                    out.remove(k);
                }
            }
        }
        out
    }
}

/// A namespace and its labels (namespace selectors match these).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
}

/// A container port with a name, which Kubernetes policies may refer to by that name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A workload endpoint (a pod, or a container outside Kubernetes) anywhere in the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub labels: Labels,
    /// IPv4 and IPv6 addresses of the endpoint.
    pub addresses: Vec<IpAddr>,
    /// The node the endpoint runs on.
    pub node: String,
    /// The host-side interface (veth) of the endpoint on its node.
    pub interface: String,
    /// Named container ports, for policies that use `port: http`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub named_ports: Vec<NamedPort>,
}

impl Endpoint {
    /// `namespace/name`, the way messages name an endpoint.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The port number a named port has on this endpoint for `protocol`.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.named_ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }
}

/// Transport protocols a policy can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// Only in cluster policies (Kubernetes policies cannot name ICMP).
    Icmp,
    /// Only in cluster policies.
    Icmpv6,
}

impl Protocol {
    /// The name used in YAML and in `explain` (`TCP`, `UDP`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
            Protocol::Icmp => "ICMP",
            Protocol::Icmpv6 => "ICMPv6",
        }
    }

    /// The protocol for a name, case-insensitively (`tcp` and `TCP` both work on the CLI).
    pub fn from_name(name: &str) -> Option<Protocol> {
        [
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Sctp,
            Protocol::Icmp,
            Protocol::Icmpv6,
        ]
        .into_iter()
        .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Whether packets of this protocol carry ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Udp | Protocol::Sctp)
    }

    /// The name nft uses for `meta l4proto`.
    pub fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
            Protocol::Icmp => "icmp",
            Protocol::Icmpv6 => "icmpv6",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Operators of a label selector's `matchExpressions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One `matchExpressions` item.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    /// Sorted and deduplicated (order does not change the meaning, and a canonical form lets
    /// equal selectors share one nftables set).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// A Kubernetes label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Sorted, so that equal selectors compare equal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// Whether every requirement holds for `labels` (Kubernetes semantics: `NotIn` and
    /// `DoesNotExist` hold when the key is absent).
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => !value.is_some_and(|v| r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }

    /// True for `{}`, which selects everything.
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

impl fmt::Display for LabelSelector {
    /// `app=web,tier in (a,b),!debug`, like kubectl; `{}` for the empty selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for r in &self.match_expressions {
            parts.push(match r.operator {
                Operator::In => format!("{} in ({})", r.key, r.values.join(",")),
                Operator::NotIn => format!("{} notin ({})", r.key, r.values.join(",")),
                Operator::Exists => r.key.clone(),
                Operator::DoesNotExist => format!("!{}", r.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// A direction of traffic relative to the selected endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "Ingress",
            Direction::Egress => "Egress",
        }
    }

    /// The lowercase word used in messages and nft names.
    pub fn word(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A CIDR with exceptions (`ipBlock`). Networks are stored truncated (host bits cleared).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IpBlock {
    pub cidr: IpNet,
    /// Each a strict subset of `cidr`, of the same family.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// One `from`/`to` item of a Kubernetes rule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum Peer {
    /// `podSelector` and/or `namespaceSelector`. Without a namespace selector the pods are
    /// those of the policy's own namespace; without a pod selector, all pods of the selected
    /// namespaces.
    ///
    /// Stored as `podSelector`/`namespaceSelector`; the snake_case names records were stored
    /// with before are still read (an unread selector would silently widen the peer to every
    /// pod of the policy's namespace).
    Pods {
        #[serde(
            default,
            alias = "pod_selector",
            skip_serializing_if = "Option::is_none"
        )]
        pod_selector: Option<LabelSelector>,
        #[serde(
            default,
            alias = "namespace_selector",
            skip_serializing_if = "Option::is_none"
        )]
        namespace_selector: Option<LabelSelector>,
    },
    IpBlock(IpBlock),
}

/// A port of a Kubernetes rule: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PortValue {
    Number(u16),
    Named(String),
}

/// One `ports` item of a Kubernetes rule. `port: None` means every port of the protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyPort {
    pub protocol: Protocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortValue>,
    /// Only with a numeric `port`, and then at least `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<u16>,
}

/// An ingress or egress rule of a Kubernetes policy. Empty `peers` = every peer (absent or
/// empty `from`/`to`); empty `ports` = every port and protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct K8sRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PolicyPort>,
}

/// A Kubernetes NetworkPolicy, defaulted as the API server does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    pub name: String,
    pub namespace: String,
    pub pod_selector: LabelSelector,
    /// After defaulting: `Ingress` always when unset, plus `Egress` when there are egress
    /// rules.
    pub policy_types: Vec<Direction>,
    pub ingress: Vec<K8sRule>,
    pub egress: Vec<K8sRule>,
}

impl NetworkPolicy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy isolates `ep` for `dir`: it selects the endpoint and has that
    /// direction in its policy types.
    pub fn selects(&self, ep: &Endpoint, dir: Direction) -> bool {
        ep.namespace == self.namespace
            && self.policy_types.contains(&dir)
            && self.pod_selector.matches(&ep.labels)
    }

    pub fn rules(&self, dir: Direction) -> &[K8sRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What a cluster rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// The connection is allowed in this direction; nothing after it is looked at.
    Allow,
    /// The connection is refused; nothing after it is looked at.
    Deny,
    /// Logged; evaluation continues with the next rule.
    Log,
    /// The remaining cluster policies are skipped; Kubernetes policies decide.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
            Action::Log => "Log",
            Action::Pass => "Pass",
        })
    }
}

/// An inclusive port range (a single port is `lo == hi`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { lo: 0, hi: 65535 };

    pub fn contains(self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}:{}", self.lo, self.hi)
        }
    }
}

/// Which endpoints (or addresses) one side of a cluster rule means. All given parts must
/// hold (AND); an entity with nothing set matches every address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entity {
    /// Endpoint labels; when set (or `namespace_selector` is), only endpoints match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Labels of the endpoint's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// The address must lie in one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<IpNet>,
    /// The address must lie in none of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_nets: Vec<IpNet>,
    /// Destination ports (only meaningful on the destination side; see [`ClusterRule`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRange>,
}

impl Entity {
    /// Whether the entity has an endpoint part (then plain addresses never match it).
    pub fn needs_endpoint(&self) -> bool {
        self.selector.is_some() || self.namespace_selector.is_some()
    }
}

/// One rule of a cluster policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRule {
    pub action: Action,
    /// None: any protocol. Ports (on the destination) require TCP, UDP or SCTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    #[serde(default)]
    pub source: Entity,
    #[serde(default)]
    pub destination: Entity,
}

/// twill's ordered cluster-wide policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPolicy {
    pub name: String,
    /// Lower first; equal orders are broken by name; policies without an order come after
    /// all that have one (as in Calico).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// Endpoints the policy applies to (labels of the endpoint).
    pub selector: LabelSelector,
    /// Restricts the policy to endpoints in matching namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    pub types: Vec<Direction>,
    pub ingress: Vec<ClusterRule>,
    pub egress: Vec<ClusterRule>,
}

impl ClusterPolicy {
    /// Whether the policy applies to `ep` in `dir`.
    pub fn selects(&self, world: &World, ep: &Endpoint, dir: Direction) -> bool {
        self.types.contains(&dir)
            && self.selector.matches(&ep.labels)
            && self
                .namespace_selector
                .as_ref()
                .is_none_or(|s| s.matches(&world.namespace_labels(&ep.namespace)))
    }

    pub fn rules(&self, dir: Direction) -> &[ClusterRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// One parsed policy document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum PolicyDoc {
    NetworkPolicy(NetworkPolicy),
    ClusterPolicy(ClusterPolicy),
}

/// Everything a decision depends on. Policies are kept in a canonical order (cluster
/// policies by order then name; Kubernetes policies by namespace then name), which
/// [`World::new`] establishes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct World {
    pub namespaces: Vec<Namespace>,
    pub endpoints: Vec<Endpoint>,
    pub network_policies: Vec<NetworkPolicy>,
    pub cluster_policies: Vec<ClusterPolicy>,
}

/// The label Kubernetes puts on every namespace (since 1.21), so selectors may name a
/// namespace by name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl World {
    /// A world with its policies sorted into evaluation order.
    pub fn new(
        namespaces: Vec<Namespace>,
        endpoints: Vec<Endpoint>,
        docs: impl IntoIterator<Item = PolicyDoc>,
    ) -> World {
        let mut world = World {
            namespaces,
            endpoints,
            ..World::default()
        };
        for doc in docs {
            world.upsert(doc);
        }
        world
    }

    /// Adds a policy or replaces the one with the same identity (namespace/name for
    /// Kubernetes policies, name for cluster policies), keeping the canonical order.
    pub fn upsert(&mut self, doc: PolicyDoc) {
        match doc {
            PolicyDoc::NetworkPolicy(p) => {
                self.network_policies
                    .retain(|q| (&q.namespace, &q.name) != (&p.namespace, &p.name));
                self.network_policies.push(p);
                self.network_policies
                    .sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            }
            PolicyDoc::ClusterPolicy(p) => {
                self.cluster_policies.retain(|q| q.name != p.name);
                self.cluster_policies.push(p);
                self.cluster_policies.sort_by(|a, b| {
                    let key = |p: &ClusterPolicy| p.order.unwrap_or(f64::INFINITY);
                    key(a).total_cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
                });
            }
        }
    }

    /// Removes the NetworkPolicy `namespace/name`; false when there was none.
    pub fn remove_network_policy(&mut self, namespace: &str, name: &str) -> bool {
        let before = self.network_policies.len();
        self.network_policies
            .retain(|p| (p.namespace.as_str(), p.name.as_str()) != (namespace, name));
        self.network_policies.len() != before
    }

    /// Removes the ClusterPolicy `name`; false when there was none.
    pub fn remove_cluster_policy(&mut self, name: &str) -> bool {
        let before = self.cluster_policies.len();
        self.cluster_policies.retain(|p| p.name != name);
        self.cluster_policies.len() != before
    }

    /// Labels of a namespace, with [`NAMESPACE_NAME_LABEL`] added as the API server does; a
    /// namespace nobody described has only that one.
    pub fn namespace_labels(&self, name: &str) -> Labels {
        let mut labels = self
            .namespaces
            .iter()
            .find(|n| n.name == name)
            .map(|n| n.labels.clone())
            .unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
        labels
    }

    /// The endpoint with this address, if any.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.addresses.contains(&ip))
    }

    /// The endpoint `namespace/name` (or `name` in namespace `default`).
    pub fn endpoint_by_id(&self, id: &str) -> Option<&Endpoint> {
        let (ns, name) = id.split_once('/').unwrap_or(("default", id));
        self.endpoints
            .iter()
            .find(|e| e.namespace == ns && e.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_set_and_remove() {
        let base: Labels = [("app".to_string(), "web".to_string())].into();
        let o = LabelOverrides {
            labels: [
                ("app".to_string(), None),
                ("tier".to_string(), Some("db".to_string())),
            ]
            .into(),
        };
        let got = o.apply(&base);
        assert_eq!(got.get("tier").map(String::as_str), Some("db"));
        assert!(!got.contains_key("app"));
    }
}
