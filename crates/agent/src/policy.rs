//! Network policy data in the store: reading the whole policy [`World`] (policies, namespaces,
//! endpoints with the labels users set on them) for the agent and `twill policy explain`, and
//! the pure helpers of the CLI verbs that change it (label arguments, Kubernetes name and
//! label syntax).
//!
//! The key layout is [`twill_types::keys`]; every value is JSON of `twill_policy`'s model.
//! A value that does not parse is skipped with a warning naming its key instead of failing
//! the whole read: another node may run a newer twill that writes fields this one does not
//! know, and one bad key must not stop policy for everything else.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use twill_policy::{Endpoint, LabelOverrides, Namespace, PolicyDoc, World};
use twill_store::{KeyValue, Store};
use twill_types::keys::{
    self, ENDPOINT_LABELS_PREFIX, ENDPOINT_PREFIX, NAMESPACE_PREFIX, POLICY_PREFIX,
};

/// Reads the policy world from the store; values that do not parse are skipped, each with a
/// warning in the log naming its key.
pub async fn load_world(store: &Store) -> anyhow::Result<World> {
    let (world, warnings) = read_world(store).await?;
    for w in warnings {
        tracing::warn!("{w}");
    }
    Ok(world)
}

/// Like [`load_world`], but hands the warnings back (the CLI prints them for people; the
/// agent logs them).
pub async fn read_world(store: &Store) -> anyhow::Result<(World, Vec<String>)> {
    let mut warnings = Vec::new();
    let docs = read_policies(store, &mut warnings).await?;
    let namespaces = read_namespaces(store, &mut warnings).await?;
    let endpoints = read_endpoints(store, &mut warnings).await?;
    Ok((World::new(namespaces, endpoints, docs), warnings))
}

/// One value under the policy prefixes, decoded and checked against its key.
pub enum Item {
    Policy(PolicyDoc),
    Namespace(Namespace),
    /// As the runtime described it (label overrides not applied).
    Endpoint(Endpoint),
    /// The label changes of endpoint `namespace/name`.
    Overrides(String, LabelOverrides),
}

/// Decodes the value of any key under the policy prefixes (None, with a warning, when it
/// does not parse or describes another key's object; None for keys outside them).
pub fn decode_item(kv: &KeyValue, warnings: &mut Vec<String>) -> Option<Item> {
    let key = kv.key.as_str();
    if let Some(id) = key.strip_prefix(ENDPOINT_LABELS_PREFIX) {
        return Some(Item::Overrides(id.to_string(), decode(kv, warnings)?));
    }
    if key.starts_with(ENDPOINT_PREFIX) {
        let ep: Endpoint = decode(kv, warnings)?;
        return check_key(kv, &keys::endpoint_key(&ep.namespace, &ep.name), warnings)
            .then_some(Item::Endpoint(ep));
    }
    if key.starts_with(NAMESPACE_PREFIX) {
        let ns: Namespace = decode(kv, warnings)?;
        return check_key(kv, &keys::namespace_key(&ns.name), warnings)
            .then_some(Item::Namespace(ns));
    }
    if key.starts_with(POLICY_PREFIX) {
        let doc: PolicyDoc = decode(kv, warnings)?;
        return check_key(kv, &policy_key(&doc), warnings).then_some(Item::Policy(doc));
    }
    None
}

/// Every policy document under [`POLICY_PREFIX`] (each at its [`policy_key`]).
pub async fn read_policies(
    store: &Store,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<PolicyDoc>> {
    read_items(store, POLICY_PREFIX, warnings, |item| match item {
        Item::Policy(doc) => Some(doc),
        _ => None,
    })
    .await
}

/// Every namespace described under [`NAMESPACE_PREFIX`].
pub async fn read_namespaces(
    store: &Store,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<Namespace>> {
    read_items(store, NAMESPACE_PREFIX, warnings, |item| match item {
        Item::Namespace(ns) => Some(ns),
        _ => None,
    })
    .await
}

/// The items of one kind under `prefix`, decoded by [`decode_item`].
async fn read_items<T>(
    store: &Store,
    prefix: &str,
    warnings: &mut Vec<String>,
    pick: impl Fn(Item) -> Option<T>,
) -> anyhow::Result<Vec<T>> {
    let (kvs, _) = store.list(prefix).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| decode_item(kv, warnings).and_then(&pick))
        .collect())
}

/// Every endpoint under [`ENDPOINT_PREFIX`], with the label changes users made
/// ([`LabelOverrides`] at [`ENDPOINT_LABELS_PREFIX`]) applied to the runtime's labels.
pub async fn read_endpoints(
    store: &Store,
    warnings: &mut Vec<String>,
) -> anyhow::Result<Vec<Endpoint>> {
    let (overrides, _) = store.list(ENDPOINT_LABELS_PREFIX).await?;
    let overrides: BTreeMap<String, LabelOverrides> = overrides
        .iter()
        .filter_map(|kv| match decode_item(kv, warnings)? {
            Item::Overrides(id, o) => Some((id, o)),
            _ => None,
        })
        .collect();
    let (kvs, _) = store.list(ENDPOINT_PREFIX).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| match decode_item(kv, warnings)? {
            Item::Endpoint(mut ep) => {
                if let Some(o) = overrides.get(&ep.id()) {
                    ep.labels = o.apply(&ep.labels);
                }
                Some(ep)
            }
            _ => None,
        })
        .collect())
}

/// Decodes one value, or records why not.
pub(crate) fn decode<T: DeserializeOwned>(kv: &KeyValue, warnings: &mut Vec<String>) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            warnings.push(format!(
                "skipping store key {}: not a value this twill understands ({e})",
                kv.key
            ));
            None
        }
    }
}

/// A value stored under another object's key was written by mistake (or by hand): using it
/// would make two keys describe one object, so it is skipped.
fn check_key(kv: &KeyValue, expected: &str, warnings: &mut Vec<String>) -> bool {
    if kv.key == expected {
        return true;
    }
    warnings.push(format!(
        "skipping store key {}: its value describes the object of key {expected}",
        kv.key
    ));
    false
}

/// Where a policy document is stored.
pub fn policy_key(doc: &PolicyDoc) -> String {
    match doc {
        PolicyDoc::NetworkPolicy(p) => keys::network_policy_key(&p.namespace, &p.name),
        PolicyDoc::ClusterPolicy(p) => keys::cluster_policy_key(&p.name),
    }
}

/// How kubectl names an object in its output: `networkpolicy prod/web`,
/// `clusterpolicy quarantine`.
pub fn doc_id(doc: &PolicyDoc) -> String {
    match doc {
        PolicyDoc::NetworkPolicy(p) => format!("networkpolicy {}", p.id()),
        PolicyDoc::ClusterPolicy(p) => format!("clusterpolicy {}", p.name),
    }
}

/// A bad label argument, namespace or endpoint name given on the command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

/// Label changes from `k=v` (set; `k=` sets the empty value) and `k-` (remove) arguments, as
/// `kubectl label` takes them. `None` removes. A key given twice is refused: which one was
/// meant is a guess.
pub fn parse_label_args(args: &[String]) -> Result<BTreeMap<String, Option<String>>, ArgError> {
    if args.is_empty() {
        return Err(ArgError(
            "no labels given: use KEY=VALUE to set a label and KEY- to remove one".into(),
        ));
    }
    let mut out = BTreeMap::new();
    for arg in args {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => {
                validate_label_value(v)
                    .map_err(|e| ArgError(format!("label {arg:?}: value {v:?}: {e}")))?;
                (k, Some(v.to_string()))
            }
            None => match arg.strip_suffix('-') {
                Some(k) => (k, None),
                None => {
                    return Err(ArgError(format!(
                        "label {arg:?}: expected KEY=VALUE to set a label or KEY- to remove one"
                    )));
                }
            },
        };
        validate_label_key(key)
            .map_err(|e| ArgError(format!("label {arg:?}: key {key:?}: {e}")))?;
        if out.insert(key.to_string(), value).is_some() {
            return Err(ArgError(format!("label {key:?} is given twice")));
        }
    }
    Ok(out)
}

/// A Kubernetes label key (the policy parser's rule).
pub fn validate_label_key(key: &str) -> Result<(), String> {
    twill_policy::parse::label_key(key)
}

/// A Kubernetes label value (the policy parser's rule).
pub fn validate_label_value(value: &str) -> Result<(), String> {
    twill_policy::parse::label_value(value)
}

/// A namespace name: an RFC 1123 label.
pub fn validate_namespace(name: &str) -> Result<(), ArgError> {
    twill_policy::parse::dns_label(name).map_err(|e| ArgError(format!("namespace {name:?}: {e}")))
}

/// An RFC 1123 subdomain: the names of policies and the prefixes of label keys.
pub fn validate_dns_subdomain(name: &str) -> Result<(), String> {
    twill_policy::parse::dns_subdomain(name)
}

/// `NAMESPACE/NAME` of an endpoint on the command line.
pub fn parse_endpoint_id(id: &str) -> Result<(String, String), ArgError> {
    match id.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(ArgError(format!(
            "endpoint {id:?}: expected NAMESPACE/NAME, as in prod/web-1"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn label_arguments_set_and_remove() {
        let got =
            parse_label_args(&args(&["team=a", "tier-", "example.com/x=", "a.b_c=1.2-x"])).unwrap();
        assert_eq!(got["team"], Some("a".into()));
        assert_eq!(got["tier"], None);
        assert_eq!(got["example.com/x"], Some(String::new()));
        assert_eq!(got["a.b_c"], Some("1.2-x".into()));
        // `k=v-` sets the value `v-`? No: a value must end with a letter or digit.
        assert!(parse_label_args(&args(&["k=v-"])).is_err());
    }

    #[test]
    fn bad_label_arguments_say_what_is_wrong() {
        for (arg, needle) in [
            ("team", "KEY=VALUE"),
            ("=a", "1 to 63"),
            ("-", "1 to 63"),
            ("te am=a", "only letters"),
            ("team=a b", "value"),
            ("Example.com/x=1", "lowercase"),
            ("a/b/c=1", "prefix"),
            ("/x=1", "prefix"),
            (&format!("{}=1", "k".repeat(64)), "1 to 63"),
            (&format!("k={}", "v".repeat(64)), "1 to 63"),
            ("-k=1", "start and end"),
        ] {
            let err = parse_label_args(&args(&[arg])).unwrap_err().to_string();
            assert!(err.contains(needle), "{arg:?}: {err}");
            assert!(
                err.contains(&format!("{arg:?}")),
                "{arg:?} not named: {err}"
            );
        }
        let err = parse_label_args(&args(&["a=1", "a-"])).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
        assert!(parse_label_args(&[]).is_err());
    }

    #[test]
    fn names_follow_kubernetes() {
        assert!(validate_namespace("prod-1").is_ok());
        for bad in ["Prod", "a.b", "-a", "", &"a".repeat(64)] {
            assert!(validate_namespace(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_endpoint_id("prod/web-1").unwrap(),
            ("prod".to_string(), "web-1".to_string())
        );
        for bad in ["web", "/web", "prod/", "a/b/c"] {
            let err = parse_endpoint_id(bad).unwrap_err().to_string();
            assert!(err.contains("NAMESPACE/NAME"), "{bad}: {err}");
        }
    }

    fn endpoint(ns: &str, name: &str, ip: &str, labels: &[(&str, &str)]) -> Endpoint {
        Endpoint {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            addresses: vec![ip.parse().unwrap()],
            node: "n1".into(),
            interface: "tw0".into(),
            named_ports: vec![],
        }
    }

    #[tokio::test]
    async fn the_world_is_read_from_every_prefix_and_bad_values_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("embedded:{}", dir.path().join("s.redb").display());
        let store = Store::connect_or_create(&url).await.unwrap();
        let docs = twill_policy::parse_documents(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
             metadata: {name: web, namespace: prod}\nspec: {podSelector: {}}\n---\n\
             apiVersion: twill.dev/v1\nkind: ClusterPolicy\nmetadata: {name: q}\n\
             spec: {selector: {}, ingress: [{action: Deny}]}\n",
        )
        .unwrap();
        for doc in &docs {
            let value = serde_json::to_vec(doc).unwrap();
            store.put(&policy_key(doc), &value, None).await.unwrap();
        }
        let ns = Namespace {
            name: "prod".into(),
            labels: [("team".to_string(), "a".to_string())].into(),
        };
        let put_json = async |key: String, v: &dyn erased::Json| {
            store.put(&key, &v.json(), None).await.unwrap();
        };
        put_json(keys::namespace_key("prod"), &ns).await;
        let web = endpoint("prod", "web", "10.1.0.5", &[("app", "web"), ("tier", "fe")]);
        put_json(keys::endpoint_key("prod", "web"), &web).await;
        let db = endpoint("prod", "db", "10.1.0.6", &[("app", "db")]);
        put_json(keys::endpoint_key("prod", "db"), &db).await;
        let overrides = LabelOverrides {
            labels: [
                ("tier".to_string(), None),
                ("team".to_string(), Some("b".to_string())),
            ]
            .into(),
        };
        put_json(keys::endpoint_labels_key("prod", "web"), &overrides).await;
        // What a newer twill, a person or a bug may leave behind.
        for (key, value) in [
            (
                keys::network_policy_key("prod", "future"),
                &b"{\"kind\":\"Other\"}"[..],
            ),
            (keys::namespace_key("broken"), b"not json"),
            (keys::endpoint_key("prod", "half"), b"{\"name\":\"half\"}"),
            (keys::endpoint_labels_key("prod", "db"), b"[]"),
        ] {
            store.put(&key, value, None).await.unwrap();
        }
        // Valid data under the wrong key.
        put_json(keys::endpoint_key("prod", "alias"), &db).await;

        let (world, warnings) = read_world(&store).await.unwrap();
        assert_eq!(world.network_policies.len(), 1);
        assert_eq!(world.cluster_policies.len(), 1);
        assert_eq!(world.namespaces, vec![ns]);
        assert_eq!(world.endpoints.len(), 2);
        let web = world.endpoint_by_id("prod/web").unwrap();
        assert_eq!(
            web.labels,
            [
                ("app".to_string(), "web".to_string()),
                ("team".to_string(), "b".to_string())
            ]
            .into()
        );
        assert_eq!(world.endpoint_by_id("prod/db").unwrap().labels.len(), 1);
        for key in [
            keys::network_policy_key("prod", "future"),
            keys::namespace_key("broken"),
            keys::endpoint_key("prod", "half"),
            keys::endpoint_labels_key("prod", "db"),
            keys::endpoint_key("prod", "alias"),
        ] {
            assert!(
                warnings.iter().any(|w| w.contains(&key)),
                "no warning names {key}: {warnings:?}"
            );
        }
        assert_eq!(warnings.len(), 5, "{warnings:?}");
        assert_eq!(load_world(&store).await.unwrap(), world);
    }

    /// Serializes any model value in the test above without naming its type.
    mod erased {
        pub trait Json {
            fn json(&self) -> Vec<u8>;
        }
        impl<T: serde::Serialize> Json for T {
            fn json(&self) -> Vec<u8> {
                serde_json::to_vec(self).unwrap()
            }
        }
    }
}
