//! Where policy data lives in the store (etcd or the embedded store; the same layout in both).
//! Every value is JSON of this crate's model types.
//!
//! - `/twill/policy/k8s/<namespace>/<name>`: a [`PolicyDoc::NetworkPolicy`].
//! - `/twill/policy/cluster/<name>`: a [`PolicyDoc::ClusterPolicy`].
//! - `/twill/namespaces/<name>`: a [`Namespace`] (its labels; a namespace that has endpoints
//!   but no key has no labels besides `kubernetes.io/metadata.name`).
//! - `/twill/endpoints/<namespace>/<name>`: an [`Endpoint`], published by the agent of the
//!   node the pod runs on, with the labels the runtime gave the CNI plugin.
//! - `/twill/endpoint-labels/<namespace>/<name>`: [`LabelOverrides`] set with
//!   `twill endpoint label`: kept apart from the endpoint so that the agent republishing the
//!   runtime's labels never undoes a user's change.
//!
//! [`PolicyDoc::NetworkPolicy`]: crate::PolicyDoc::NetworkPolicy
//! [`PolicyDoc::ClusterPolicy`]: crate::PolicyDoc::ClusterPolicy
//! [`Namespace`]: crate::Namespace
//! [`Endpoint`]: crate::Endpoint

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Labels;

pub const NETWORK_POLICY_PREFIX: &str = "/twill/policy/k8s/";
pub const CLUSTER_POLICY_PREFIX: &str = "/twill/policy/cluster/";
/// Both kinds of policy.
pub const POLICY_PREFIX: &str = "/twill/policy/";
pub const NAMESPACE_PREFIX: &str = "/twill/namespaces/";
pub const ENDPOINT_PREFIX: &str = "/twill/endpoints/";
pub const ENDPOINT_LABELS_PREFIX: &str = "/twill/endpoint-labels/";

pub fn network_policy_key(namespace: &str, name: &str) -> String {
    format!("{NETWORK_POLICY_PREFIX}{namespace}/{name}")
}

pub fn cluster_policy_key(name: &str) -> String {
    format!("{CLUSTER_POLICY_PREFIX}{name}")
}

pub fn namespace_key(name: &str) -> String {
    format!("{NAMESPACE_PREFIX}{name}")
}

pub fn endpoint_key(namespace: &str, name: &str) -> String {
    format!("{ENDPOINT_PREFIX}{namespace}/{name}")
}

pub fn endpoint_labels_key(namespace: &str, name: &str) -> String {
    format!("{ENDPOINT_LABELS_PREFIX}{namespace}/{name}")
}

/// Label changes made by `twill endpoint label`: a value sets the label, `null` removes it
/// (even when the runtime gave it).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_under_their_prefixes() {
        assert_eq!(
            network_policy_key("prod", "web"),
            "/twill/policy/k8s/prod/web"
        );
        assert!(network_policy_key("a", "b").starts_with(POLICY_PREFIX));
        assert!(cluster_policy_key("q").starts_with(POLICY_PREFIX));
        assert_eq!(endpoint_key("x", "a"), "/twill/endpoints/x/a");
        // Endpoint keys and label keys never share a prefix scan.
        assert!(!endpoint_labels_key("x", "a").starts_with(ENDPOINT_PREFIX));
    }

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
