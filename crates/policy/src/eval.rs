//! The reference semantics: whether one connection is allowed, and why.
//!
//! This is what `twill policy explain FROM TO PORT/PROTO` shows, and what the compiled
//! nftables rules are tested against. A connection from A to B is allowed when
//! - A's egress allows it (if A is an endpoint; a plain address has no policy), and
//! - B's ingress allows it (if B is an endpoint).
//!
//! Each direction is decided for the endpoint on that side:
//! 1. cluster policies selecting the endpoint for the direction, in `order` (then name):
//!    the first matching rule with Allow or Deny decides; Log is recorded and evaluation goes
//!    on; Pass skips every remaining cluster policy;
//! 2. then (after a Pass, or when no cluster rule decided) the Kubernetes policies: if none
//!    selects the endpoint for the direction it is not isolated and the connection is allowed;
//!    otherwise it is allowed only if some rule of some selecting policy allows it (union).
//!
//! Replies of an allowed connection are always allowed (conntrack in the dataplane), so only
//! the direction of the connection's first packet is evaluated.

use std::fmt;
use std::net::IpAddr;

use serde::Serialize;

use crate::model::{
    Action, ClusterRule, Direction, Endpoint, Entity, K8sRule, NetworkPolicy, Peer, PolicyPort,
    PortValue, Protocol, World,
};

/// One end of a connection as the user names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Party {
    /// An endpoint by `namespace/name`.
    Endpoint(String),
    /// An address: an endpoint's address means that endpoint.
    Ip(IpAddr),
}

impl Party {
    /// `10.1.2.3`, `fd00::1`, `ns/name`, or `name` (namespace `default`).
    pub fn parse(text: &str) -> Party {
        match text.parse::<IpAddr>() {
            Ok(ip) => Party::Ip(ip),
            Err(_) => Party::Endpoint(text.to_string()),
        }
    }
}

impl fmt::Display for Party {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Party::Endpoint(id) => f.write_str(id),
            Party::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// Reads the `PORT[/PROTO]` argument of `twill policy explain`: `80`, `80/tcp`, `53/UDP`,
/// `icmp` (protocol default TCP, as in Kubernetes).
pub fn parse_port_proto(text: &str) -> Result<(u16, Protocol), String> {
    let (port, proto) = match text.split_once('/') {
        Some((p, proto)) => (Some(p), proto),
        None if text.parse::<u16>().is_ok() => (Some(text), "TCP"),
        None => (None, text),
    };
    let protocol = Protocol::from_name(proto)
        .ok_or_else(|| format!("{proto:?} is not one of TCP, UDP, SCTP, ICMP, ICMPv6"))?;
    let port = match port {
        None | Some("") if !protocol.has_ports() => 0,
        None | Some("") => {
            return Err(format!(
                "{text:?}: {protocol} needs a port, as in 80/{protocol}"
            ));
        }
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number (0-65535)"))?,
    };
    Ok((port, protocol))
}

/// A rule of a policy: which policy, which direction, which index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// `ClusterPolicy NAME` or `NetworkPolicy NS/NAME`.
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} rule {}",
            self.policy,
            self.direction.word(),
            self.index
        )
    }
}

/// Why one direction was allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Reason {
    /// This side is not an endpoint; no policy applies to it.
    NotAnEndpoint,
    /// A cluster rule with Allow or Deny decided.
    ClusterRule { rule: RuleRef, action: Action },
    /// No Kubernetes policy selects the endpoint for this direction.
    NotIsolated,
    /// Allowed by this rule of a selecting Kubernetes policy (the first one in policy order).
    K8sRule(RuleRef),
    /// Isolated by these policies, and none of their rules allows the connection.
    Isolated { policies: Vec<String> },
}

/// The decision for one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub direction: Direction,
    /// The endpoint the direction belongs to (`ns/name`), or the address.
    pub subject: String,
    pub allowed: bool,
    pub reason: Reason,
    /// Log rules that matched on the way.
    pub logged: Vec<RuleRef>,
    /// The Pass rule that handed over to the Kubernetes policies, if any.
    pub passed: Option<RuleRef>,
}

/// The decision for a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub egress: Verdict,
    pub ingress: Verdict,
}

/// Why `explain` could not evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("no endpoint {0} (name endpoints as namespace/name)")]
    UnknownEndpoint(String),
    #[error("endpoint {0} has no addresses")]
    NoAddress(String),
    #[error("{from} and {to} have no address family in common")]
    NoCommonFamily { from: String, to: String },
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = if self.allowed { "allowed" } else { "denied" };
        let dir = self.direction.word();
        let subject = &self.subject;
        match &self.reason {
            Reason::NotAnEndpoint => write!(
                f,
                "{dir} of {subject}: not an endpoint, no policy applies: allowed"
            )?,
            Reason::ClusterRule { rule, action } => {
                write!(f, "{dir} of {subject}: {word} by {rule} ({action})")?
            }
            Reason::NotIsolated => write!(
                f,
                "{dir} of {subject}: no policy selects {subject} for {dir}: allowed by default"
            )?,
            Reason::K8sRule(rule) => write!(f, "{dir} of {subject}: allowed by {rule}")?,
            Reason::Isolated { policies } => write!(
                f,
                "{dir} of {subject}: isolated by {}, no rule allows: denied",
                policies.join(", ")
            )?,
        }
        if let Some(p) = &self.passed {
            write!(f, " (after Pass by {p})")?;
        }
        for l in &self.logged {
            write!(f, " [logged by {l}]")?;
        }
        Ok(())
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let port = if self.protocol.has_ports() {
            format!(":{}", self.port)
        } else {
            String::new()
        };
        writeln!(
            f,
            "{} -> {}{port}/{}: {}",
            self.src,
            self.dst,
            self.protocol,
            if self.allowed { "ALLOWED" } else { "DENIED" }
        )?;
        writeln!(f, "  {}", self.egress)?;
        write!(f, "  {}", self.ingress)
    }
}

/// A resolved end of the connection.
#[derive(Clone, Copy)]
pub(crate) struct Side<'a> {
    pub ip: IpAddr,
    pub endpoint: Option<&'a Endpoint>,
}

/// The connection's packet, as policy sees it.
#[derive(Clone, Copy)]
pub(crate) struct Conn<'a> {
    pub src: Side<'a>,
    pub dst: Side<'a>,
    pub protocol: Protocol,
    pub port: u16,
}

fn resolve<'a>(
    world: &'a World,
    party: &Party,
) -> Result<(Option<&'a Endpoint>, Vec<IpAddr>), ExplainError> {
    match party {
        Party::Ip(ip) => Ok((world.endpoint_by_ip(*ip), vec![*ip])),
        Party::Endpoint(id) => {
            let ep = world
                .endpoint_by_id(id)
                .ok_or_else(|| ExplainError::UnknownEndpoint(id.clone()))?;
            if ep.addresses.is_empty() {
                return Err(ExplainError::NoAddress(id.clone()));
            }
            Ok((Some(ep), ep.addresses.clone()))
        }
    }
}

/// Whether a connection from `from` to `to` on `port`/`protocol` is allowed, and which rule
/// of which policy decides. An endpoint given by name uses its address of the family the
/// other side has (IPv4 first). `port` is ignored for ICMP.
pub fn explain(
    world: &World,
    from: &Party,
    to: &Party,
    port: u16,
    protocol: Protocol,
) -> Result<Decision, ExplainError> {
    let (src_ep, src_ips) = resolve(world, from)?;
    let (dst_ep, dst_ips) = resolve(world, to)?;
    let pair = src_ips
        .iter()
        .flat_map(|s| dst_ips.iter().map(move |d| (*s, *d)))
        .filter(|(s, d)| s.is_ipv4() == d.is_ipv4())
        .min_by_key(|(s, _)| !s.is_ipv4());
    let Some((src, dst)) = pair else {
        return Err(ExplainError::NoCommonFamily {
            from: from.to_string(),
            to: to.to_string(),
        });
    };
    // ICMP means the ICMP of the connection's family.
    let protocol = match (protocol, src.is_ipv4()) {
        (Protocol::Icmp, false) => Protocol::Icmpv6,
        (Protocol::Icmpv6, true) => Protocol::Icmp,
        (p, _) => p,
    };
    let conn = Conn {
        src: Side {
            ip: src,
            endpoint: src_ep,
        },
        dst: Side {
            ip: dst,
            endpoint: dst_ep,
        },
        protocol,
        port: if protocol.has_ports() { port } else { 0 },
    };
    Ok(decide(world, &conn))
}

pub(crate) fn decide(world: &World, conn: &Conn) -> Decision {
    let egress = direction_verdict(world, conn, Direction::Egress);
    let ingress = direction_verdict(world, conn, Direction::Ingress);
    Decision {
        allowed: egress.allowed && ingress.allowed,
        src: conn.src.ip,
        dst: conn.dst.ip,
        protocol: conn.protocol,
        port: conn.port,
        egress,
        ingress,
    }
}

fn direction_verdict(world: &World, conn: &Conn, dir: Direction) -> Verdict {
    let (me, _remote) = match dir {
        Direction::Egress => (conn.src, conn.dst),
        Direction::Ingress => (conn.dst, conn.src),
    };
    let mut v = Verdict {
        direction: dir,
        subject: me.ip.to_string(),
        allowed: true,
        reason: Reason::NotAnEndpoint,
        logged: Vec::new(),
        passed: None,
    };
    let Some(ep) = me.endpoint else {
        return v;
    };
    v.subject = ep.id();
    'tiers: for cp in world
        .cluster_policies
        .iter()
        .filter(|p| p.selects(world, ep, dir))
    {
        for (index, rule) in cp.rules(dir).iter().enumerate() {
            if !cluster_rule_matches(world, rule, conn) {
                continue;
            }
            let rule_ref = RuleRef {
                policy: format!("ClusterPolicy {}", cp.name),
                direction: dir,
                index,
            };
            match rule.action {
                Action::Allow | Action::Deny => {
                    v.allowed = rule.action == Action::Allow;
                    v.reason = Reason::ClusterRule {
                        rule: rule_ref,
                        action: rule.action,
                    };
                    return v;
                }
                Action::Log => v.logged.push(rule_ref),
                Action::Pass => {
                    v.passed = Some(rule_ref);
                    break 'tiers;
                }
            }
        }
    }
    let selecting: Vec<&NetworkPolicy> = world
        .network_policies
        .iter()
        .filter(|p| p.selects(ep, dir))
        .collect();
    if selecting.is_empty() {
        v.reason = Reason::NotIsolated;
        return v;
    }
    for p in &selecting {
        for (index, rule) in p.rules(dir).iter().enumerate() {
            if k8s_rule_matches(world, p, rule, conn, dir) {
                v.reason = Reason::K8sRule(RuleRef {
                    policy: format!("NetworkPolicy {}", p.id()),
                    direction: dir,
                    index,
                });
                return v;
            }
        }
    }
    v.allowed = false;
    v.reason = Reason::Isolated {
        policies: selecting
            .iter()
            .map(|p| format!("NetworkPolicy {}", p.id()))
            .collect(),
    };
    v
}

/// Whether a Kubernetes peer means `side` (for a policy in `namespace`).
pub(crate) fn peer_matches(world: &World, namespace: &str, peer: &Peer, side: Side) -> bool {
    match peer {
        Peer::IpBlock(block) => block.contains(side.ip),
        Peer::Pods {
            pod_selector,
            namespace_selector,
        } => {
            let Some(ep) = side.endpoint else {
                return false;
            };
            let ns_ok = match namespace_selector {
                Some(sel) => sel.matches(&world.namespace_labels(&ep.namespace)),
                None => ep.namespace == namespace,
            };
            ns_ok && pod_selector.as_ref().is_none_or(|s| s.matches(&ep.labels))
        }
    }
}

/// Whether one `ports` item allows the connection; named ports are looked up on the
/// destination endpoint (for ingress the selected one, for egress the peer).
pub(crate) fn port_matches(p: &PolicyPort, conn: &Conn) -> bool {
    if p.protocol != conn.protocol {
        return false;
    }
    match &p.port {
        None => true,
        Some(PortValue::Number(lo)) => (*lo..=p.end_port.unwrap_or(*lo)).contains(&conn.port),
        Some(PortValue::Named(name)) => {
            conn.dst
                .endpoint
                .and_then(|ep| ep.named_port(name, conn.protocol))
                == Some(conn.port)
        }
    }
}

fn k8s_rule_matches(
    world: &World,
    policy: &NetworkPolicy,
    rule: &K8sRule,
    conn: &Conn,
    dir: Direction,
) -> bool {
    let remote = match dir {
        Direction::Ingress => conn.src,
        Direction::Egress => conn.dst,
    };
    let peers_ok = rule.peers.is_empty()
        || rule
            .peers
            .iter()
            .any(|p| peer_matches(world, &policy.namespace, p, remote));
    let ports_ok = rule.ports.is_empty() || rule.ports.iter().any(|p| port_matches(p, conn));
    peers_ok && ports_ok
}

/// Whether an entity's address part and endpoint part hold for `side`.
pub(crate) fn entity_matches(world: &World, e: &Entity, side: Side) -> bool {
    if e.needs_endpoint() {
        let Some(ep) = side.endpoint else {
            return false;
        };
        if !e.selector.as_ref().is_none_or(|s| s.matches(&ep.labels)) {
            return false;
        }
        if !e
            .namespace_selector
            .as_ref()
            .is_none_or(|s| s.matches(&world.namespace_labels(&ep.namespace)))
        {
            return false;
        }
    }
    (e.nets.is_empty() || e.nets.iter().any(|n| n.contains(&side.ip)))
        && !e.not_nets.iter().any(|n| n.contains(&side.ip))
}

fn cluster_rule_matches(world: &World, rule: &ClusterRule, conn: &Conn) -> bool {
    rule.protocol.is_none_or(|p| p == conn.protocol)
        && entity_matches(world, &rule.source, conn.src)
        && entity_matches(world, &rule.destination, conn.dst)
        && (rule.destination.ports.is_empty()
            || rule.destination.ports.iter().any(|r| r.contains(conn.port)))
}
