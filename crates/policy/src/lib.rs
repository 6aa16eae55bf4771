//! twill's network policy: Kubernetes `networking.k8s.io/v1` NetworkPolicy with its exact
//! semantics, plus twill's ordered cluster policies (Allow / Deny / Log / Pass), evaluated
//! for `twill policy explain` and compiled into one nftables table per node.
//!
//! Everything here is pure: the agent feeds it the world (namespaces, endpoints, policies)
//! and applies what [`compile`](compile::compile) and [`render`] produce with `nft -f`.
//!
//! - [`model`]: the data, and the world it is evaluated in;
//! - [`parse`]: YAML in, validated all-or-nothing, errors with document and line;
//! - [`eval`]: the reference semantics, and `explain`;
//! - [`compile`]: one node's rule set as data (sets, chains, dispatch maps);
//! - [`render`]: that rule set as an `nft -f` script, and the minimal diff between two.

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
