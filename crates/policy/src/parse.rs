//! Reading policy YAML: Kubernetes NetworkPolicy documents verbatim and twill's ClusterPolicy,
//! several per file, separated by `---`.
//!
//! Why all-or-nothing: `twill policy apply -f` must either take the whole file or change
//! nothing, so everything the compiler relies on (CIDRs, ports, ranges, selector operators,
//! names) is validated here, and the first problem is returned with its document number and
//! line. Rules follow the Kubernetes API server's validation (`ValidateNetworkPolicySpec`)
//! and defaulting (`SetDefaults_NetworkPolicy`), so a policy kubectl accepts is accepted here
//! and means the same.
//!
//! How lines stay right across documents: the file is cut at `---` lines and each document is
//! parsed with the lines before it blanked out, so the YAML parser's own line numbers are
//! those of the file.
//!
//! Unknown fields are an error everywhere except inside `metadata` (Kubernetes puts labels,
//! annotations, uid, resourceVersion, managedFields, ... there) and `status`, which are
//! accepted and ignored, so the output of `kubectl get -o yaml` can be applied as is.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::de::{self, IgnoredAny, Visitor};
use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::model::{
    Action, ClusterPolicy, ClusterRule, Direction, Entity, IpBlock, K8sRule, LabelSelector,
    NetworkPolicy, Operator, Peer, PolicyDoc, PolicyPort, PortRange, PortValue, Protocol,
    Requirement,
};

/// The apiVersion of Kubernetes NetworkPolicy.
pub const K8S_API_VERSION: &str = "networking.k8s.io/v1";
/// The apiVersion of twill's cluster policy.
pub const TWILL_API_VERSION: &str = "twill.dev/v1";

/// Why a policy file was refused: which document (1-based, counting non-empty documents as
/// they appear), which line and column of the file, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {document}, line {line}{}: {message}", policy_suffix(.policy))]
pub struct ParseError {
    pub document: usize,
    pub line: u64,
    pub column: u64,
    /// `NetworkPolicy ns/name` or `ClusterPolicy name`, once known.
    pub policy: Option<String>,
    pub message: String,
}

fn policy_suffix(policy: &Option<String>) -> String {
    policy
        .as_ref()
        .map(|p| format!(" ({p})"))
        .unwrap_or_default()
}

/// Parses every document of `text`; returns all of them or the first error.
///
/// Empty documents (only comments or blank) are skipped, as kubectl does. The same policy
/// twice in one file is an error (which one should win is a guess).
pub fn parse_documents(text: &str) -> Result<Vec<PolicyDoc>, ParseError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut docs = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (index, chunk) in split_documents(text).into_iter().enumerate() {
        let number = index + 1;
        let doc = parse_one(&chunk.padded, number, chunk.first_line)?;
        let id = match &doc {
            PolicyDoc::NetworkPolicy(p) => format!("NetworkPolicy {}", p.id()),
            PolicyDoc::ClusterPolicy(p) => format!("ClusterPolicy {}", p.name),
        };
        if let Some(first) = seen.insert(id.clone(), number) {
            return Err(ParseError {
                document: number,
                line: chunk.first_line,
                column: 1,
                policy: Some(id),
                message: format!("the same policy is already defined in document {first}"),
            });
        }
        docs.push(doc);
    }
    Ok(docs)
}

struct Chunk {
    /// The document with every earlier line blanked, so parser lines are file lines.
    padded: String,
    /// First line of the document in the file (for errors not tied to a value).
    first_line: u64,
}

/// Cuts the file at document markers. A `---` line starts a document (and stays in it: the
/// parser accepts an explicit start); a `...` line ends one. Documents with nothing but
/// comments and blanks are dropped.
fn split_documents(text: &str) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut start = 0usize; // 0-based line where `current` begins
    let flush = |current: &mut Vec<&str>, start: usize, chunks: &mut Vec<Chunk>| {
        let has_content = current.iter().any(|l| {
            let t = l.trim();
            !t.is_empty() && !t.starts_with('#') && !is_marker(l, "---") && !is_marker(l, "...")
        }) || current.iter().any(|l| {
            // `--- {a: 1}` or `--- !tag` carries content on the marker line.
            is_marker(l, "---") && {
                let rest = l[3..].trim();
                !rest.is_empty() && !rest.starts_with('#')
            }
        });
        if has_content {
            let first = current
                .iter()
                .position(|l| {
                    let t = l.trim();
                    !t.is_empty() && !t.starts_with('#') && !is_marker(l, "---")
                })
                .unwrap_or(0);
            let mut padded = "\n".repeat(start);
            for l in current.iter() {
                padded.push_str(l);
                padded.push('\n');
            }
            chunks.push(Chunk {
                padded,
                first_line: (start + first + 1) as u64,
            });
        }
        current.clear();
    };
    for (i, line) in text.lines().enumerate() {
        if is_marker(line, "---") {
            flush(&mut current, start, &mut chunks);
            start = i;
            current.push(line);
        } else if is_marker(line, "...") {
            current.push(line);
            flush(&mut current, start, &mut chunks);
            start = i + 1;
        } else {
            if current.is_empty() {
                start = i;
            }
            current.push(line);
        }
    }
    flush(&mut current, start, &mut chunks);
    chunks
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Collects errors with the document's context.
struct Ctx {
    document: usize,
    first_line: u64,
    policy: Option<String>,
}

impl Ctx {
    fn err<T>(&self, at: Option<(u64, u64)>, message: impl Into<String>) -> Result<T, ParseError> {
        let (line, column) = at.unwrap_or((self.first_line, 1));
        Err(ParseError {
            document: self.document,
            line,
            column,
            policy: self.policy.clone(),
            message: message.into(),
        })
    }
}

fn at<T>(s: &Spanned<T>) -> Option<(u64, u64)> {
    let l = s.referenced;
    (l.line() > 0).then(|| (l.line(), l.column()))
}

fn yaml_error(e: serde_saphyr::Error, document: usize, first_line: u64) -> ParseError {
    let (line, column) = e
        .location()
        .filter(|l| l.line() > 0)
        .map(|l| (l.line(), l.column()))
        .unwrap_or((first_line, 1));
    let mut message = e.without_snippet().to_string();
    // The message repeats the position we already give.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    ParseError {
        document,
        line,
        column,
        policy: None,
        message,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    api_version: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    metadata: Option<RawMeta>,
}

fn parse_one(padded: &str, document: usize, first_line: u64) -> Result<PolicyDoc, ParseError> {
    let header: Header =
        serde_saphyr::from_str(padded).map_err(|e| yaml_error(e, document, first_line))?;
    // Name the policy in errors from the start, when the document says which it is.
    let name = header.metadata.as_ref().and_then(|m| m.name.as_ref());
    let policy = match (header.kind.as_ref().map(|k| k.value.as_str()), name) {
        (Some("NetworkPolicy"), Some(n)) => {
            let ns = header.metadata.as_ref().and_then(|m| m.namespace.as_ref());
            let ns = ns.map_or("default", |n| n.value.as_str());
            Some(format!("NetworkPolicy {ns}/{}", n.value))
        }
        (Some("ClusterPolicy"), Some(n)) => Some(format!("ClusterPolicy {}", n.value)),
        _ => None,
    };
    let mut ctx = Ctx {
        document,
        first_line,
        policy,
    };
    let yaml_error = |e| ParseError {
        policy: ctx.policy.clone(),
        ..yaml_error(e, document, first_line)
    };
    let Some(kind) = header.kind else {
        return ctx.err(
            None,
            "missing `kind` (twill takes kind NetworkPolicy and ClusterPolicy)",
        );
    };
    let Some(api) = header.api_version else {
        return ctx.err(at(&kind), "missing `apiVersion`");
    };
    match (kind.value.as_str(), api.value.as_str()) {
        ("NetworkPolicy", K8S_API_VERSION) => {
            let raw: RawNetworkPolicy = serde_saphyr::from_str(padded).map_err(yaml_error)?;
            network_policy(raw, &mut ctx).map(PolicyDoc::NetworkPolicy)
        }
        ("ClusterPolicy", TWILL_API_VERSION) => {
            let raw: RawClusterPolicy = serde_saphyr::from_str(padded).map_err(yaml_error)?;
            cluster_policy(raw, &mut ctx).map(PolicyDoc::ClusterPolicy)
        }
        ("NetworkPolicy", other) => ctx.err(
            at(&api),
            format!("apiVersion {other:?} is not supported for NetworkPolicy; use {K8S_API_VERSION}"),
        ),
        ("ClusterPolicy", other) => ctx.err(
            at(&api),
            format!("apiVersion {other:?} is not supported for ClusterPolicy; use {TWILL_API_VERSION}"),
        ),
        (other, _) => ctx.err(
            at(&kind),
            format!(
                "kind {other:?} is not a policy twill takes (NetworkPolicy {K8S_API_VERSION}, ClusterPolicy {TWILL_API_VERSION})"
            ),
        ),
    }
}

// ---- raw YAML shapes --------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNetworkPolicy {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: Option<Spanned<RawMeta>>,
    spec: Option<Spanned<RawNpSpec>>,
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

/// Kubernetes object metadata: only the name and namespace mean anything to twill.
#[derive(Deserialize)]
struct RawMeta {
    name: Option<Spanned<String>>,
    namespace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawNpSpec {
    pod_selector: Option<Spanned<RawSelector>>,
    policy_types: Option<Vec<Spanned<String>>>,
    ingress: Option<Vec<Spanned<RawIngress>>>,
    egress: Option<Vec<Spanned<RawEgress>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIngress {
    from: Option<Vec<Spanned<RawPeer>>>,
    ports: Option<Vec<Spanned<RawPort>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEgress {
    to: Option<Vec<Spanned<RawPeer>>>,
    ports: Option<Vec<Spanned<RawPort>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPeer {
    pod_selector: Option<Spanned<RawSelector>>,
    namespace_selector: Option<Spanned<RawSelector>>,
    ip_block: Option<Spanned<RawIpBlock>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIpBlock {
    cidr: Option<Spanned<String>>,
    except: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPort {
    protocol: Option<Spanned<String>>,
    port: Option<Spanned<IntOrString>>,
    end_port: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    match_labels: Option<BTreeMap<String, Spanned<String>>>,
    match_expressions: Option<Vec<Spanned<RawRequirement>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: Option<Spanned<String>>,
    operator: Option<Spanned<String>>,
    values: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawClusterPolicy {
    #[allow(dead_code)]
    api_version: IgnoredAny,
    #[allow(dead_code)]
    kind: IgnoredAny,
    metadata: Option<Spanned<RawMeta>>,
    spec: Option<Spanned<RawCpSpec>>,
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCpSpec {
    order: Option<Spanned<f64>>,
    selector: Option<Spanned<RawSelector>>,
    namespace_selector: Option<Spanned<RawSelector>>,
    types: Option<Vec<Spanned<String>>>,
    ingress: Option<Vec<Spanned<RawClusterRule>>>,
    egress: Option<Vec<Spanned<RawClusterRule>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawClusterRule {
    action: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    source: Option<Spanned<RawEntity>>,
    destination: Option<Spanned<RawEntity>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEntity {
    selector: Option<Spanned<RawSelector>>,
    namespace_selector: Option<Spanned<RawSelector>>,
    nets: Option<Vec<Spanned<String>>>,
    not_nets: Option<Vec<Spanned<String>>>,
    ports: Option<Vec<Spanned<IntOrString>>>,
}

/// Kubernetes' IntOrString: `port: 80` or `port: http`.
enum IntOrString {
    Int(i64),
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a port number or name")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// ---- Kubernetes NetworkPolicy -------------------------------------------------------------

fn metadata(
    meta: Option<Spanned<RawMeta>>,
    ctx: &Ctx,
    namespaced: bool,
) -> Result<(String, Option<String>), ParseError> {
    let Some(meta) = meta else {
        return ctx.err(None, "missing `metadata` (with `name`)");
    };
    let Some(name) = meta.value.name else {
        return ctx.err(at(&meta), "metadata: missing `name`");
    };
    if let Err(why) = dns_subdomain(&name.value) {
        return ctx.err(at(&name), format!("metadata.name {:?}: {why}", name.value));
    }
    let namespace = match meta.value.namespace {
        Some(ns) if !namespaced => {
            return ctx.err(
                at(&ns),
                "metadata.namespace: a ClusterPolicy is cluster-wide and has no namespace",
            );
        }
        Some(ns) => {
            if let Err(why) = dns_label(&ns.value) {
                return ctx.err(at(&ns), format!("metadata.namespace {:?}: {why}", ns.value));
            }
            Some(ns.value)
        }
        None => None,
    };
    Ok((name.value, namespace))
}

fn network_policy(raw: RawNetworkPolicy, ctx: &mut Ctx) -> Result<NetworkPolicy, ParseError> {
    let (name, namespace) = metadata(raw.metadata, ctx, true)?;
    // The API server puts a policy without a namespace into the client's, which for
    // `kubectl apply` without -n is `default`.
    let namespace = namespace.unwrap_or_else(|| "default".to_string());
    ctx.policy = Some(format!("NetworkPolicy {namespace}/{name}"));
    let Some(spec) = raw.spec else {
        return ctx.err(None, "missing `spec`");
    };
    let spec = spec.value;
    // podSelector is required by the API but its zero value is `{}`, which is what a missing
    // one becomes there too.
    let pod_selector = match spec.pod_selector {
        Some(s) => selector(&s, "spec.podSelector", ctx)?,
        None => LabelSelector::default(),
    };
    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.into_iter().flatten().enumerate() {
        let path = format!("spec.ingress[{i}]");
        let rule = rule.value;
        ingress.push(k8s_rule(rule.from, rule.ports, &path, "from", ctx)?);
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.into_iter().flatten().enumerate() {
        let path = format!("spec.egress[{i}]");
        let rule = rule.value;
        egress.push(k8s_rule(rule.to, rule.ports, &path, "to", ctx)?);
    }
    let policy_types = match spec.policy_types {
        Some(types) if !types.is_empty() => {
            if types.len() > 2 {
                return ctx.err(
                    at(&types[2]),
                    "spec.policyTypes: may not specify more than two policyTypes",
                );
            }
            let mut out = Vec::new();
            for (i, t) in types.iter().enumerate() {
                let dir = direction(t, &format!("spec.policyTypes[{i}]"), ctx)?;
                if !out.contains(&dir) {
                    out.push(dir);
                }
            }
            out.sort();
            out
        }
        // SetDefaults_NetworkPolicy: every policy affects ingress; egress only when it has
        // egress rules (an empty `egress: []` does not count).
        _ => {
            let mut out = vec![Direction::Ingress];
            if !egress.is_empty() {
                out.push(Direction::Egress);
            }
            out
        }
    };
    Ok(NetworkPolicy {
        name,
        namespace,
        pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

fn direction(t: &Spanned<String>, path: &str, ctx: &Ctx) -> Result<Direction, ParseError> {
    match t.value.as_str() {
        "Ingress" => Ok(Direction::Ingress),
        "Egress" => Ok(Direction::Egress),
        other => ctx.err(
            at(t),
            format!(
                "{path}: unsupported value {other:?}: supported values: \"Ingress\", \"Egress\""
            ),
        ),
    }
}

fn k8s_rule(
    peers: Option<Vec<Spanned<RawPeer>>>,
    ports: Option<Vec<Spanned<RawPort>>>,
    path: &str,
    peer_field: &str,
    ctx: &Ctx,
) -> Result<K8sRule, ParseError> {
    let mut rule = K8sRule::default();
    for (i, peer) in peers.into_iter().flatten().enumerate() {
        let ppath = format!("{path}.{peer_field}[{i}]");
        let where_ = at(&peer);
        let p = peer.value;
        let peer = match (p.pod_selector, p.namespace_selector, p.ip_block) {
            (None, None, None) => {
                return ctx.err(
                    where_,
                    format!(
                        "{ppath}: must specify a peer (podSelector, namespaceSelector or ipBlock)"
                    ),
                );
            }
            (pods, nss, None) => Peer::Pods {
                pod_selector: pods
                    .map(|s| selector(&s, &format!("{ppath}.podSelector"), ctx))
                    .transpose()?,
                namespace_selector: nss
                    .map(|s| selector(&s, &format!("{ppath}.namespaceSelector"), ctx))
                    .transpose()?,
            },
            (None, None, Some(block)) => {
                Peer::IpBlock(ip_block(block, &format!("{ppath}.ipBlock"), ctx)?)
            }
            (_, _, Some(_)) => {
                return ctx.err(
                    where_,
                    format!("{ppath}: may not specify both ipBlock and another peer"),
                );
            }
        };
        rule.peers.push(peer);
    }
    for (i, port) in ports.into_iter().flatten().enumerate() {
        rule.ports
            .push(k8s_port(port, &format!("{path}.ports[{i}]"), ctx)?);
    }
    Ok(rule)
}

fn k8s_port(port: Spanned<RawPort>, path: &str, ctx: &Ctx) -> Result<PolicyPort, ParseError> {
    let p = port.value;
    let protocol = match &p.protocol {
        None => Protocol::Tcp,
        Some(s) => match s.value.as_str() {
            "TCP" => Protocol::Tcp,
            "UDP" => Protocol::Udp,
            "SCTP" => Protocol::Sctp,
            other => {
                return ctx.err(
                    at(s),
                    format!(
                        "{path}.protocol: unsupported value {other:?}: supported values: \"TCP\", \"UDP\", \"SCTP\""
                    ),
                );
            }
        },
    };
    let value = match &p.port {
        None => None,
        Some(v) => Some(match &v.value {
            IntOrString::Int(n) => {
                PortValue::Number(port_number(*n, at(v), &format!("{path}.port"), ctx)?)
            }
            IntOrString::Str(s) => {
                if let Err(why) = port_name(s) {
                    return ctx.err(at(v), format!("{path}.port {s:?}: {why}"));
                }
                PortValue::Named(s.clone())
            }
        }),
    };
    let end_port = match (&p.end_port, &value) {
        (None, _) => None,
        (Some(e), None) => {
            return ctx.err(
                at(e),
                format!("{path}.endPort: may not be specified when `port` is not specified"),
            );
        }
        (Some(e), Some(PortValue::Named(_))) => {
            return ctx.err(
                at(e),
                format!("{path}.endPort: may not be specified when `port` is non-numeric"),
            );
        }
        (Some(e), Some(PortValue::Number(start))) => {
            let end = port_number(e.value, at(e), &format!("{path}.endPort"), ctx)?;
            if end < *start {
                return ctx.err(
                    at(e),
                    format!(
                        "{path}.endPort: {end} must be greater than or equal to `port` ({start})"
                    ),
                );
            }
            Some(end)
        }
    };
    Ok(PolicyPort {
        protocol,
        port: value,
        end_port,
    })
}

fn port_number(
    n: i64,
    where_: Option<(u64, u64)>,
    path: &str,
    ctx: &Ctx,
) -> Result<u16, ParseError> {
    match u16::try_from(n) {
        Ok(p) if p >= 1 => Ok(p),
        _ => ctx.err(
            where_,
            format!("{path}: {n} must be between 1 and 65535, inclusive"),
        ),
    }
}

/// IANA_SVC_NAME, as Kubernetes checks named ports.
fn port_name(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 15 {
        return Err("a port name must be 1 to 15 characters");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("a port name may contain only lowercase letters, digits and '-'");
    }
    if !s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err("a port name must contain at least one letter (a number must not be quoted)");
    }
    if s.starts_with('-') || s.ends_with('-') || s.contains("--") {
        return Err("a port name must not begin or end with '-' nor contain '--'");
    }
    Ok(())
}

fn parse_net(s: &Spanned<String>, path: &str, ctx: &Ctx) -> Result<IpNet, ParseError> {
    match s.value.trim().parse::<IpNet>() {
        // Kubernetes parses CIDRs "sloppily": host bits are allowed and ignored.
        Ok(net) => Ok(net.trunc()),
        Err(_) => match s.value.trim().parse::<IpAddr>() {
            Ok(_) => ctx.err(
                at(s),
                format!(
                    "{path}: {:?} is an address, not a CIDR (add /32 or /128)",
                    s.value
                ),
            ),
            Err(_) => ctx.err(
                at(s),
                format!(
                    "{path}: {:?} is not a valid CIDR (e.g. 10.9.8.0/24 or 2001:db8::/64)",
                    s.value
                ),
            ),
        },
    }
}

fn ip_block(block: Spanned<RawIpBlock>, path: &str, ctx: &Ctx) -> Result<IpBlock, ParseError> {
    let Some(cidr) = &block.value.cidr else {
        return ctx.err(at(&block), format!("{path}.cidr: required"));
    };
    let net = parse_net(cidr, &format!("{path}.cidr"), ctx)?;
    let mut except = Vec::new();
    for (i, e) in block.value.except.iter().flatten().enumerate() {
        let epath = format!("{path}.except[{i}]");
        let ex = parse_net(e, &epath, ctx)?;
        if !net.contains(&ex) || ex.prefix_len() <= net.prefix_len() {
            return ctx.err(
                at(e),
                format!("{epath}: {ex} must be a strict subset of `cidr` ({net})"),
            );
        }
        except.push(ex);
    }
    except.sort();
    except.dedup();
    Ok(IpBlock { cidr: net, except })
}

fn selector(s: &Spanned<RawSelector>, path: &str, ctx: &Ctx) -> Result<LabelSelector, ParseError> {
    let mut out = LabelSelector::default();
    for (k, v) in s.value.match_labels.iter().flatten() {
        if let Err(why) = label_key(k) {
            return ctx.err(at(v), format!("{path}.matchLabels: key {k:?}: {why}"));
        }
        if let Err(why) = label_value(&v.value) {
            return ctx.err(
                at(v),
                format!("{path}.matchLabels[{k}]: value {:?}: {why}", v.value),
            );
        }
        out.match_labels.insert(k.clone(), v.value.clone());
    }
    for (i, r) in s.value.match_expressions.iter().flatten().enumerate() {
        let rpath = format!("{path}.matchExpressions[{i}]");
        let where_ = at(r);
        let r = &r.value;
        let Some(key) = &r.key else {
            return ctx.err(where_, format!("{rpath}.key: required"));
        };
        if let Err(why) = label_key(&key.value) {
            return ctx.err(at(key), format!("{rpath}.key {:?}: {why}", key.value));
        }
        let Some(op) = &r.operator else {
            return ctx.err(where_, format!("{rpath}.operator: required"));
        };
        let operator = match op.value.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return ctx.err(
                    at(op),
                    format!(
                        "{rpath}.operator: {other:?} is not a valid selector operator (In, NotIn, Exists, DoesNotExist)"
                    ),
                );
            }
        };
        let values: &[Spanned<String>] = r.values.as_deref().unwrap_or_default();
        let needs_values = matches!(operator, Operator::In | Operator::NotIn);
        if needs_values && values.is_empty() {
            return ctx.err(
                at(op),
                format!("{rpath}.values: must be specified when `operator` is 'In' or 'NotIn'"),
            );
        }
        if !needs_values && !values.is_empty() {
            return ctx.err(
                at(&values[0]),
                format!("{rpath}.values: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"),
            );
        }
        let mut vals = BTreeSet::new();
        for v in values {
            if let Err(why) = label_value(&v.value) {
                return ctx.err(at(v), format!("{rpath}.values: {:?}: {why}", v.value));
            }
            vals.insert(v.value.clone());
        }
        out.match_expressions.push(Requirement {
            key: key.value.clone(),
            operator,
            values: vals.into_iter().collect(),
        });
    }
    out.match_expressions.sort();
    out.match_expressions.dedup();
    Ok(out)
}

// ---- names and labels, as Kubernetes validates them (public: the CLI checks its arguments
// with the same rules) ------------------------------------------------------------------------

fn name_part(s: &str, max: usize, extra: &[u8], what: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > max {
        return Err(format!("{what} must be 1 to {max} characters"));
    }
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_alphanumeric();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return Err(format!("{what} must start and end with a letter or digit"));
    }
    if !b.iter().all(|&c| alnum(c) || extra.contains(&c)) {
        let allowed: String = extra
            .iter()
            .map(|&c| format!("'{}'", c as char))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "{what} may contain only letters, digits and {allowed}"
        ));
    }
    Ok(())
}

/// An RFC 1123 subdomain: policy names and label key prefixes.
pub fn dns_subdomain(s: &str) -> Result<(), String> {
    name_part(s, 253, b"-.", "a name")?;
    if s.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err("a name must be lowercase (RFC 1123 subdomain)".into());
    }
    Ok(())
}

/// An RFC 1123 label: namespace names.
pub fn dns_label(s: &str) -> Result<(), String> {
    name_part(s, 63, b"-", "a namespace")?;
    if s.bytes().any(|c| c.is_ascii_uppercase()) {
        return Err("a namespace must be lowercase (RFC 1123 label)".into());
    }
    Ok(())
}

/// A label key: an optional subdomain prefix and `/`, then a name of at most 63 characters.
pub fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix {
        dns_subdomain(p).map_err(|e| format!("prefix: {e}"))?;
    }
    name_part(name, 63, b"-_.", "a label name")
}

/// A label value: empty, or at most 63 letters, digits, `-`, `_`, `.`.
pub fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    name_part(v, 63, b"-_.", "a label value")
}

// ---- cluster policy -------------------------------------------------------------------------

fn cluster_policy(raw: RawClusterPolicy, ctx: &mut Ctx) -> Result<ClusterPolicy, ParseError> {
    let (name, _) = metadata(raw.metadata, ctx, false)?;
    ctx.policy = Some(format!("ClusterPolicy {name}"));
    let Some(spec) = raw.spec else {
        return ctx.err(None, "missing `spec`");
    };
    let spec_at = at(&spec);
    let spec = spec.value;
    let order = match spec.order {
        None => None,
        Some(o) if o.value.is_finite() => Some(o.value),
        Some(o) => return ctx.err(at(&o), "spec.order: must be a finite number"),
    };
    // A missing selector would silently apply to every endpoint; make that explicit (`{}`).
    let Some(sel) = spec.selector else {
        return ctx.err(
            spec_at,
            "spec.selector: required (use `selector: {}` for every endpoint)",
        );
    };
    let selector_ = selector(&sel, "spec.selector", ctx)?;
    let namespace_selector = spec
        .namespace_selector
        .map(|s| selector(&s, "spec.namespaceSelector", ctx))
        .transpose()?;
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        ingress.push(cluster_rule(r, &format!("spec.ingress[{i}]"), ctx)?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        egress.push(cluster_rule(r, &format!("spec.egress[{i}]"), ctx)?);
    }
    let types = match &spec.types {
        Some(types) if !types.is_empty() => {
            let mut out = Vec::new();
            for (i, t) in types.iter().enumerate() {
                let dir = direction(t, &format!("spec.types[{i}]"), ctx)?;
                if !out.contains(&dir) {
                    out.push(dir);
                }
            }
            out.sort();
            for (dir, rules, field) in [
                (Direction::Ingress, &spec.ingress, "ingress"),
                (Direction::Egress, &spec.egress, "egress"),
            ] {
                if let Some(first) = rules
                    .iter()
                    .flatten()
                    .next()
                    .filter(|_| !out.contains(&dir))
                {
                    return ctx.err(
                        at(first),
                        format!("spec.{field}: has rules but spec.types does not list {dir}"),
                    );
                }
            }
            out
        }
        // Calico's default: the directions that have rules, Ingress when none has.
        _ => {
            let mut out = Vec::new();
            if !ingress.is_empty() || egress.is_empty() {
                out.push(Direction::Ingress);
            }
            if !egress.is_empty() {
                out.push(Direction::Egress);
            }
            out
        }
    };
    Ok(ClusterPolicy {
        name,
        order,
        selector: selector_,
        namespace_selector,
        types,
        ingress,
        egress,
    })
}

fn cluster_rule(
    r: &Spanned<RawClusterRule>,
    path: &str,
    ctx: &Ctx,
) -> Result<ClusterRule, ParseError> {
    let Some(action) = &r.value.action else {
        return ctx.err(
            at(r),
            format!("{path}.action: required (Allow, Deny, Log or Pass)"),
        );
    };
    let action_ = match action.value.as_str() {
        "Allow" => Action::Allow,
        "Deny" => Action::Deny,
        "Log" => Action::Log,
        "Pass" => Action::Pass,
        other => {
            return ctx.err(
                at(action),
                format!("{path}.action: {other:?} is not one of Allow, Deny, Log, Pass"),
            );
        }
    };
    let protocol = match &r.value.protocol {
        None => None,
        Some(p) => match Protocol::from_name(&p.value) {
            Some(proto) => Some(proto),
            None => {
                return ctx.err(
                    at(p),
                    format!(
                        "{path}.protocol: {:?} is not one of TCP, UDP, SCTP, ICMP, ICMPv6",
                        p.value
                    ),
                );
            }
        },
    };
    let source = entity(r.value.source.as_ref(), &format!("{path}.source"), ctx)?;
    let destination = entity(
        r.value.destination.as_ref(),
        &format!("{path}.destination"),
        ctx,
    )?;
    if !source.ports.is_empty() {
        let s = r.value.source.as_ref().expect("ports came from a source");
        return ctx.err(
            at(s),
            format!(
                "{path}.source.ports: source ports are not supported; put ports in `destination`"
            ),
        );
    }
    if !destination.ports.is_empty() && !protocol.is_some_and(Protocol::has_ports) {
        let d = r
            .value
            .destination
            .as_ref()
            .expect("ports came from a destination");
        return ctx.err(
            at(d),
            format!("{path}.destination.ports: ports need `protocol` TCP, UDP or SCTP"),
        );
    }
    Ok(ClusterRule {
        action: action_,
        protocol,
        source,
        destination,
    })
}

fn entity(e: Option<&Spanned<RawEntity>>, path: &str, ctx: &Ctx) -> Result<Entity, ParseError> {
    let Some(e) = e else {
        return Ok(Entity::default());
    };
    let raw = &e.value;
    let mut out = Entity::default();
    if let Some(s) = &raw.selector {
        out.selector = Some(selector(s, &format!("{path}.selector"), ctx)?);
    }
    if let Some(s) = &raw.namespace_selector {
        out.namespace_selector = Some(selector(s, &format!("{path}.namespaceSelector"), ctx)?);
    }
    for (field, list, dst) in [
        ("nets", &raw.nets, &mut out.nets),
        ("notNets", &raw.not_nets, &mut out.not_nets),
    ] {
        for (i, n) in list.iter().flatten().enumerate() {
            dst.push(parse_net(n, &format!("{path}.{field}[{i}]"), ctx)?);
        }
        dst.sort();
        dst.dedup();
    }
    for (i, p) in raw.ports.iter().flatten().enumerate() {
        let ppath = format!("{path}.ports[{i}]");
        let range = match &p.value {
            IntOrString::Int(n) => {
                let n = port_number(*n, at(p), &ppath, ctx)?;
                PortRange { lo: n, hi: n }
            }
            IntOrString::Str(s) => {
                let parsed = match s.split_once(':') {
                    Some((lo, hi)) => lo
                        .trim()
                        .parse::<i64>()
                        .ok()
                        .zip(hi.trim().parse::<i64>().ok()),
                    None => s.trim().parse::<i64>().ok().map(|n| (n, n)),
                };
                let Some((lo, hi)) = parsed else {
                    return ctx.err(
                        at(p),
                        format!("{ppath}: {s:?} is not a port or a range like \"8000:8100\""),
                    );
                };
                let lo = port_number(lo, at(p), &ppath, ctx)?;
                let hi = port_number(hi, at(p), &ppath, ctx)?;
                if lo > hi {
                    return ctx.err(at(p), format!("{ppath}: range {s:?} ends before it starts"));
                }
                PortRange { lo, hi }
            }
        };
        out.ports.push(range);
    }
    out.ports.sort();
    out.ports.dedup();
    Ok(out)
}
