//! twill's network policy: Kubernetes `networking.k8s.io/v1` NetworkPolicy with its exact
//! semantics, plus twill's ordered cluster policies (Allow / Deny / Log / Pass), evaluated
//! for `twill policy explain` and compiled into one nftables table per node.
//!
//! Everything here is pure: the agent feeds it the world (namespaces, endpoints, policies)
//! and applies what [`compile()`] and [`render()`] / [`diff()`] produce with one `nft -f`.
//!
//! - [`model`]: the data, and the world it is evaluated in;
//! - [`parse`]: YAML in, validated all-or-nothing, errors with document and line;
//! - [`eval`]: the reference semantics, and `explain`;
//! - [`compile`](mod@compile): one node's rule set as data (sets, chains, dispatch maps);
//! - [`render`](mod@render): that rule set as an `nft -f` script, and the minimal diff.
//!
//! Where policies, namespaces and endpoints live in the store is `twill_types::keys`.
//!
//! # Using it (agent and CLI)
//! ```
//! use twill_policy::{Options, Party, World, compile, diff, explain, parse_documents};
//! use twill_policy::model::{Endpoint, Namespace};
//!
//! // `twill policy apply -f FILE`: parse everything first; store nothing on error.
//! let docs = parse_documents(
//!     "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
//!      metadata: {name: deny, namespace: prod}\nspec: {podSelector: {}}\n",
//! )
//! .map_err(|e| e.to_string())?; // "document 2, line 14 (NetworkPolicy prod/x): ..."
//!
//! let web = Endpoint {
//!     namespace: "prod".into(),
//!     name: "web".into(),
//!     labels: [("app".to_string(), "web".to_string())].into(),
//!     addresses: vec!["10.1.0.5".parse().unwrap()],
//!     node: "n1".into(),
//!     interface: "tw1234".into(),
//!     named_ports: vec![],
//! };
//! let world = World::new(vec![Namespace { name: "prod".into(), labels: Default::default() }],
//!                        vec![web], docs);
//!
//! // `twill policy explain 192.0.2.1 prod/web 80/tcp`
//! let (port, proto) = twill_policy::parse_port_proto("80/tcp")?;
//! let d = explain(&world, &Party::parse("192.0.2.1"), &Party::parse("prod/web"), port, proto)
//!     .map_err(|e| e.to_string())?;
//! assert!(!d.allowed);
//! println!("{d}"); // ... "ingress of prod/web: isolated by NetworkPolicy prod/deny, no rule allows: denied"
//!
//! // The agent: compile for this node; apply `diff(last_applied, &new)` with one `nft -f`
//! // (empty = nothing to do); if that fails (someone flushed the table), apply
//! // `render(&new)`, which replaces the table whatever is there.
//! let new = compile(&world, "n1", Options::default());
//! let script = diff(None, &new);
//! assert!(script.contains("table inet twill-policy"));
//! # Ok::<(), String>(())
//! ```
//!
//! # Cluster policy YAML
//! ```yaml
//! apiVersion: twill.dev/v1
//! kind: ClusterPolicy
//! metadata:
//!   name: quarantine            # cluster-wide: no namespace
//! spec:
//!   order: 10                   # lower first; ties by name; no order = after all ordered
//!   selector:                   # endpoint labels (Kubernetes label selector); required,
//!     matchExpressions:         # `{}` = every endpoint
//!     - {key: quarantine, operator: Exists}
//!   namespaceSelector:          # optional: only endpoints in matching namespaces
//!     matchLabels: {env: prod}
//!   types: [Ingress, Egress]    # default: the directions that have rules
//!   ingress:
//!   - action: Log               # Allow | Deny | Log | Pass
//!   - action: Allow
//!     protocol: TCP             # TCP | UDP | SCTP | ICMP | ICMPv6; ports need TCP/UDP/SCTP
//!     source:                   # every given part must hold
//!       selector: {matchLabels: {app: admin}}       # endpoints only
//!       namespaceSelector: {matchLabels: {team: ops}}
//!       nets: [10.0.0.0/8]
//!       notNets: [10.9.0.0/16]
//!     destination:
//!       ports: [22, "8000:8100"]
//!   - action: Deny
//!   egress:
//!   - action: Pass              # let the Kubernetes policies decide egress
//! ```
//!
//! # Semantics (and the choices made where the references leave room)
//! Per direction of the endpoint (see [`eval`]): cluster policies selecting it, in order; the
//! first matching Allow or Deny decides; Log logs and goes on; Pass skips the remaining cluster
//! policies; then the Kubernetes policies decide exactly as Kubernetes defines (isolated only
//! when selected for that direction, union of rules). A connection needs the source's egress
//! and the destination's ingress; replies of allowed connections always flow (conntrack).
//! - Cluster policies never isolate by themselves: with no decision they fall through to
//!   Kubernetes (unlike Calico's end-of-tier drop). Write a final `Deny` rule to isolate.
//! - `ipBlock` matches any address, pod addresses included (Calico does the same; Kubernetes
//!   leaves pod addresses in ipBlocks implementation-defined).
//! - A cluster entity with `selector` or `namespaceSelector` (even `{}`) matches endpoints
//!   only; one with only `nets`/`notNets` (or nothing) matches any address.
//! - Named ports resolve on the destination endpoint (ingress: the selected endpoint; egress:
//!   the peer), with the port's protocol; a name never matches a plain address.
//! - Traffic from and to the node itself is not policed (only the forward hook is used), as
//!   Kubernetes requires for kubelet probes; host-network pods are not endpoints.
//! - A peer item with no selector and no ipBlock (`- {}`) is refused, as by the API server;
//!   an empty `from: []` / `to: []` is "every peer", like an absent one.
//! - Namespaces carry `kubernetes.io/metadata.name` automatically.
//! - Policy changes apply to new connections; established ones keep flowing (conntrack).

pub mod compile;
pub mod eval;
pub mod model;
pub mod parse;
pub mod render;

pub use compile::{Dispatch, Options, Ruleset, compile};
pub use eval::{
    Decision, ExplainError, Party, Reason, RuleRef, Verdict, explain, parse_port_proto,
};
pub use model::*;
pub use parse::{ParseError, parse_documents};
pub use render::{diff, render};
