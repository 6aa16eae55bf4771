//! The policy CLI verbs: `twill policy apply|list|delete|explain`, `twill namespace
//! label|list`, `twill endpoint label|list`. Each returns the process exit code; errors carry
//! a message for people. Everything a verb writes goes to the store in one atomic step (or a
//! compare-and-swap on one key), so a refused or failed command changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use twill_policy::LabelOverrides;
use twill_policy::{
    ClusterPolicy, Labels, NAMESPACE_NAME_LABEL, Namespace, NetworkPolicy, Party, PolicyDoc, World,
    explain, parse_documents, parse_port_proto,
};
use twill_store::Store;
use twill_types::keys::{self, POLICY_PREFIX};

use crate::StoreArgs;
use crate::policy::{
    ArgError, doc_id, parse_endpoint_id, parse_label_args, policy_key, read_endpoints,
    read_namespaces, read_policies, read_world, validate_dns_subdomain, validate_namespace,
};

/// How many times a read-modify-write of one key is retried when someone else changes the key
/// in between.
const CAS_ATTEMPTS: usize = 10;

/// Reads FILE, or stdin for `-`.
fn read_input(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
    }
}

/// Parses a policy file whole; an error names the file, document and line.
fn read_policy_file(file: &Path) -> anyhow::Result<Vec<PolicyDoc>> {
    let text = read_input(file)?;
    let name = if file == Path::new("-") {
        "stdin".to_string()
    } else {
        file.display().to_string()
    };
    let docs = parse_documents(&text).map_err(|e| anyhow!("{name}: {e}; nothing was changed"))?;
    if docs.is_empty() {
        bail!("{name}: no policy documents in it");
    }
    Ok(docs)
}

fn print_warnings(warnings: &[String]) {
    for w in warnings {
        eprintln!("twill: warning: {w}");
    }
}

/// Writes `puts` and `deletes` in one store transaction, only if every key of `expect` still
/// has the mod revision read before (0: still absent), so that what the caller reports as
/// written is exactly what was written. Never split: agents must never see part of a set
/// (one policy of a pair applied, the other not), and a failure must never leave part of it
/// behind. A set larger than the store takes in one transaction (etcd's `--max-txn-ops`, 128
/// by default; its `--max-request-bytes`) is refused whole. `what` names the objects for
/// messages ("policies").
async fn write_atomically(
    store: &Store,
    expect: &[(String, i64)],
    puts: &[(String, Vec<u8>)],
    deletes: &[String],
    what: &str,
) -> anyhow::Result<i64> {
    let changes = puts.len() + deletes.len();
    match store.put_all_if(expect, puts, deletes).await {
        Ok(Some(revision)) => Ok(revision),
        Ok(None) => bail!(
            "{what} in {} changed since this command read them (another writer?); nothing was \
             written: run the command again",
            store.describe()
        ),
        // The request may have reached the store before the connection broke: say what is
        // known, not more.
        Err(e) if e.is_retryable() => bail!(
            "writing {changes} changes to {}: {e}. They are one transaction: either all of them \
             or none were written (`twill policy list` shows which)",
            store.describe()
        ),
        Err(e) => bail!(
            "{} refused the write of {changes} changes as one transaction: {e}; nothing was \
             written. twill never splits it (agents would apply part of the set): raise the \
             store's limit, or apply the file in smaller independent parts",
            store.describe()
        ),
    }
}

/// `twill policy apply -f FILE`: every document of the file or none, in one store transaction
/// (see [`write_atomically`]). Documents already stored as they are are reported `unchanged`
/// and not written again (a write would wake every agent for nothing); the rest are reported
/// `created` or `configured` once the transaction committed, and only then. A policy changed
/// by someone else between this command's read and its write makes the whole apply fail,
/// with nothing written.
pub async fn policy_apply(store_at: &StoreArgs, file: &Path) -> anyhow::Result<i32> {
    let docs = read_policy_file(file)?;
    let store = store_at.connect().await?;
    let (stored, _) = store.list(POLICY_PREFIX).await?;
    let stored: HashMap<String, (Vec<u8>, i64)> = stored
        .into_iter()
        .map(|kv| (kv.key, (kv.value, kv.mod_revision)))
        .collect();
    let mut puts = Vec::new();
    let mut expect = Vec::new();
    let mut report = Vec::new();
    for doc in &docs {
        let key = policy_key(doc);
        let (outcome, revision) = match stored.get(&key) {
            None => ("created", 0),
            // Compared as data, not bytes: a value written by another twill version may
            // spell the same policy differently.
            Some((old, rev))
                if serde_json::from_slice::<PolicyDoc>(old).is_ok_and(|o| &o == doc) =>
            {
                ("unchanged", *rev)
            }
            Some((_, rev)) => ("configured", *rev),
        };
        if outcome != "unchanged" {
            puts.push((key.clone(), serde_json::to_vec(doc)?));
            expect.push((key, revision));
        }
        report.push(format!("{} {outcome}", doc_id(doc)));
    }
    if !puts.is_empty() {
        write_atomically(&store, &expect, &puts, &[], "policies of this file")
            .await
            .with_context(|| format!("applying {}", file.display()))?;
    }
    for line in report {
        println!("{line}");
    }
    Ok(0)
}

/// One line of `twill policy list`'s summary: what a policy selects, its directions and how
/// many rules it has.
fn summary(doc: &PolicyDoc) -> String {
    fn rules(ingress: usize, egress: usize) -> String {
        let n = |count: usize, dir: &str| {
            format!("{count} {dir} rule{}", if count == 1 { "" } else { "s" })
        };
        format!("{}, {}", n(ingress, "ingress"), n(egress, "egress"))
    }
    let types =
        |t: &[twill_policy::Direction]| t.iter().map(|d| d.name()).collect::<Vec<_>>().join(",");
    match doc {
        PolicyDoc::NetworkPolicy(p) => format!(
            "pods {}; types {}; {}",
            p.pod_selector,
            types(&p.policy_types),
            rules(p.ingress.len(), p.egress.len())
        ),
        PolicyDoc::ClusterPolicy(p) => {
            let order = p.order.map_or("none".to_string(), |o| o.to_string());
            let ns = p
                .namespace_selector
                .as_ref()
                .map(|s| format!("; namespaces {s}"))
                .unwrap_or_default();
            format!(
                "order {order}; endpoints {}{ns}; types {}; {}",
                p.selector,
                types(&p.types),
                rules(p.ingress.len(), p.egress.len())
            )
        }
    }
}

/// Prints rows under headers in columns two spaces apart.
fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints a listing: the items as JSON with `--json`; otherwise "no WHAT in STORE" when
/// there are none, or a table of `headers` with one `row` per item.
fn print_listing<T: Serialize>(
    store: &Store,
    json: bool,
    what: &str,
    items: &[T],
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<i32> {
    if json {
        print_json(&items)?;
        return Ok(0);
    }
    if items.is_empty() {
        println!("no {what} in {}", store.describe());
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    print_table(headers, &rows);
    Ok(0)
}

/// `twill policy list [--json]`: cluster policies in evaluation order, then the Kubernetes
/// policies by namespace and name.
pub async fn policy_list(store_at: &StoreArgs, json: bool) -> anyhow::Result<i32> {
    let store = store_at.connect().await?;
    let mut warnings = Vec::new();
    let docs = read_policies(&store, &mut warnings).await?;
    print_warnings(&warnings);
    // World keeps policies in evaluation order.
    let world = World::new(Vec::new(), Vec::new(), docs);
    let docs: Vec<PolicyDoc> = world
        .cluster_policies
        .into_iter()
        .map(PolicyDoc::ClusterPolicy)
        .chain(
            world
                .network_policies
                .into_iter()
                .map(PolicyDoc::NetworkPolicy),
        )
        .collect();
    let headers = ["KIND", "NAMESPACE", "NAME", "SUMMARY"];
    print_listing(&store, json, "policies", &docs, &headers, |doc| {
        let (kind, ns, name) = match doc {
            PolicyDoc::NetworkPolicy(NetworkPolicy {
                namespace, name, ..
            }) => ("NetworkPolicy", namespace.as_str(), name.as_str()),
            PolicyDoc::ClusterPolicy(ClusterPolicy { name, .. }) => {
                ("ClusterPolicy", "-", name.as_str())
            }
        };
        vec![kind.into(), ns.into(), name.into(), summary(doc)]
    })
}

/// What `twill policy delete` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeleteTarget {
    /// NetworkPolicies of one namespace, by name.
    Network {
        namespace: String,
        names: Vec<String>,
    },
    /// ClusterPolicies, by name.
    Cluster(Vec<String>),
    /// Every policy a policy file defines (`-` = stdin).
    File(PathBuf),
}

/// `twill policy delete`: all named policies or none. A policy that is not there is an error
/// (nothing is deleted), unless `ignore_not_found`.
pub async fn policy_delete(
    store_at: &StoreArgs,
    target: &DeleteTarget,
    ignore_not_found: bool,
) -> anyhow::Result<i32> {
    let check_name = |name: &str| {
        validate_dns_subdomain(name).map_err(|e| ArgError(format!("policy name {name:?}: {e}")))
    };
    // (key, how the policy is named in messages)
    let wanted: Vec<(String, String)> = match target {
        DeleteTarget::Network { namespace, names } => {
            validate_namespace(namespace)?;
            names
                .iter()
                .map(|n| {
                    check_name(n)?;
                    Ok((
                        keys::network_policy_key(namespace, n),
                        format!("networkpolicy {namespace}/{n}"),
                    ))
                })
                .collect::<Result<_, ArgError>>()?
        }
        DeleteTarget::Cluster(names) => names
            .iter()
            .map(|n| {
                check_name(n)?;
                Ok((keys::cluster_policy_key(n), format!("clusterpolicy {n}")))
            })
            .collect::<Result<_, ArgError>>()?,
        DeleteTarget::File(file) => read_policy_file(file)?
            .iter()
            .map(|d| (policy_key(d), doc_id(d)))
            .collect(),
    };
    // The same policy named twice is deleted once (one transaction cannot name a key twice).
    let mut seen = BTreeSet::new();
    let wanted: Vec<(String, String)> = wanted
        .into_iter()
        .filter(|(k, _)| seen.insert(k.clone()))
        .collect();
    if wanted.is_empty() {
        bail!("no policy named: give NAME, --cluster NAME or -f FILE");
    }
    let store = store_at.connect().await?;
    let (stored, _) = store.list(POLICY_PREFIX).await?;
    let stored: BTreeMap<String, i64> = stored
        .into_iter()
        .map(|kv| (kv.key, kv.mod_revision))
        .collect();
    let (present, missing): (Vec<_>, Vec<_>) = wanted
        .into_iter()
        .partition(|(k, _)| stored.contains_key(k));
    if !missing.is_empty() && !ignore_not_found {
        let names: Vec<&str> = missing.iter().map(|(_, n)| n.as_str()).collect();
        bail!(
            "{} not found in {}; nothing was deleted (with --ignore-not-found, the ones that exist are)",
            names.join(", "),
            store.describe()
        );
    }
    let deletes: Vec<String> = present.iter().map(|(k, _)| k.clone()).collect();
    let expect: Vec<(String, i64)> = deletes.iter().map(|k| (k.clone(), stored[k])).collect();
    if !deletes.is_empty() {
        write_atomically(&store, &expect, &[], &deletes, "the policies to delete")
            .await
            .with_context(|| format!("deleting from {}", store.describe()))?;
    }
    for (_, name) in present {
        println!("{name} deleted");
    }
    Ok(0)
}

/// `twill policy explain FROM TO PORT[/PROTO] [--json]`: the decision and the rule that made
/// it. Allowed and denied both exit 0: the command answered the question.
pub async fn policy_explain(
    store_at: &StoreArgs,
    from: &str,
    to: &str,
    port: &str,
    json: bool,
) -> anyhow::Result<i32> {
    let (port, protocol) =
        parse_port_proto(port).map_err(|e| anyhow!("PORT[/PROTO] {port:?}: {e}"))?;
    let store = store_at.connect().await?;
    let (world, warnings) = read_world(&store).await?;
    print_warnings(&warnings);
    let decision = explain(
        &world,
        &Party::parse(from),
        &Party::parse(to),
        port,
        protocol,
    )
    .map_err(|e| anyhow!("{e}; looked in {}", store.describe()))?;
    if json {
        print_json(&decision)?;
    } else {
        println!("{decision}");
    }
    Ok(0)
}

/// Reads one key as `T`, changes it with `f` and writes it back only if nobody changed it in
/// between (retrying otherwise). `f` returns false for "nothing to change". Returns whether
/// something was written. A value this twill does not understand is an error, not
/// overwritten: it may hold what a newer twill wrote.
async fn update_key<T: DeserializeOwned + Serialize>(
    store: &Store,
    key: &str,
    mut f: impl FnMut(Option<T>) -> (T, bool),
) -> anyhow::Result<bool> {
    for _ in 0..CAS_ATTEMPTS {
        let current = store.get(key).await?;
        let (old, revision) = match current {
            Some(kv) => {
                let old = serde_json::from_slice::<T>(&kv.value).with_context(|| {
                    format!("store key {key} holds a value this twill does not understand; not changing it")
                })?;
                (Some(old), Some(kv.mod_revision))
            }
            None => (None, None),
        };
        let (new, changed) = f(old);
        if !changed {
            return Ok(false);
        }
        let value = serde_json::to_vec(&new)?;
        let written = match revision {
            Some(r) => store.cas(key, r, &value, None).await?,
            None => store.create(key, &value, None).await?,
        };
        if written.is_some() {
            return Ok(true);
        }
    }
    bail!("store key {key} kept changing while being updated; try again")
}

fn apply_changes(labels: &mut Labels, changes: &BTreeMap<String, Option<String>>) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                labels.insert(k.clone(), v.clone());
            }
            None => {
                labels.remove(k);
            }
        }
    }
}

fn format_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `twill namespace label NAME k=v [k-]...`: changes the namespace's labels, describing the
/// namespace in the store if it was not yet.
pub async fn namespace_label(
    store_at: &StoreArgs,
    name: &str,
    args: &[String],
) -> anyhow::Result<i32> {
    validate_namespace(name)?;
    let changes = parse_label_args(args)?;
    if changes.contains_key(NAMESPACE_NAME_LABEL) {
        bail!(
            "label {NAMESPACE_NAME_LABEL} is always the namespace's name (as in Kubernetes) and \
             cannot be set or removed"
        );
    }
    let store = store_at.connect().await?;
    let written = update_key::<Namespace>(&store, &keys::namespace_key(name), |old| {
        let existed = old.is_some();
        let mut ns = old.unwrap_or_else(|| Namespace {
            name: name.to_string(),
            labels: Labels::new(),
        });
        let before = ns.labels.clone();
        apply_changes(&mut ns.labels, &changes);
        let changed = !existed || ns.labels != before;
        (ns, changed)
    })
    .await?;
    println!(
        "namespace {name} {}",
        if written { "labeled" } else { "unchanged" }
    );
    Ok(0)
}

#[derive(Serialize)]
struct NamespaceRow {
    name: String,
    labels: Labels,
    /// Whether the namespace has a key in the store (else it only has endpoints or policies).
    described: bool,
    endpoints: usize,
    #[serde(rename = "networkPolicies")]
    network_policies: usize,
}

/// `twill namespace list [--json]`: every namespace that is described in the store or has
/// endpoints or NetworkPolicies, with its labels.
pub async fn namespace_list(store_at: &StoreArgs, json: bool) -> anyhow::Result<i32> {
    let store = store_at.connect().await?;
    let mut warnings = Vec::new();
    let namespaces = read_namespaces(&store, &mut warnings).await?;
    let endpoints = read_endpoints(&store, &mut warnings).await?;
    let policies = read_policies(&store, &mut warnings).await?;
    print_warnings(&warnings);
    let mut rows: BTreeMap<String, NamespaceRow> = BTreeMap::new();
    fn row<'a>(rows: &'a mut BTreeMap<String, NamespaceRow>, name: &str) -> &'a mut NamespaceRow {
        rows.entry(name.to_string())
            .or_insert_with(|| NamespaceRow {
                name: name.to_string(),
                labels: Labels::new(),
                described: false,
                endpoints: 0,
                network_policies: 0,
            })
    }
    for ns in namespaces {
        let r = row(&mut rows, &ns.name);
        r.labels = ns.labels;
        r.described = true;
    }
    for ep in &endpoints {
        row(&mut rows, &ep.namespace).endpoints += 1;
    }
    for doc in &policies {
        if let PolicyDoc::NetworkPolicy(p) = doc {
            row(&mut rows, &p.namespace).network_policies += 1;
        }
    }
    let rows: Vec<NamespaceRow> = rows.into_values().collect();
    let headers = ["NAME", "ENDPOINTS", "POLICIES", "LABELS"];
    print_listing(&store, json, "namespaces", &rows, &headers, |r| {
        vec![
            r.name.clone(),
            r.endpoints.to_string(),
            r.network_policies.to_string(),
            format_labels(&r.labels),
        ]
    })
}

/// `twill endpoint label NAMESPACE/NAME k=v [k-]...`: records label changes for an endpoint
/// that exists, apart from the runtime's labels the agent publishes.
pub async fn endpoint_label(
    store_at: &StoreArgs,
    id: &str,
    args: &[String],
) -> anyhow::Result<i32> {
    let (namespace, name) = parse_endpoint_id(id)?;
    let changes = parse_label_args(args)?;
    let store = store_at.connect().await?;
    if store
        .get(&keys::endpoint_key(&namespace, &name))
        .await?
        .is_none()
    {
        bail!(
            "no endpoint {namespace}/{name} in {} (`twill endpoint list` shows them)",
            store.describe()
        );
    }
    let key = keys::endpoint_labels_key(&namespace, &name);
    let written = update_key::<LabelOverrides>(&store, &key, |old| {
        let mut o = old.unwrap_or_default();
        let before = o.clone();
        o.labels.extend(changes.clone());
        let changed = o != before;
        (o, changed)
    })
    .await?;
    println!(
        "endpoint {namespace}/{name} {}",
        if written { "labeled" } else { "unchanged" }
    );
    Ok(0)
}

/// `twill endpoint list [--json]`: every endpoint with its effective labels (the runtime's,
/// changed by `twill endpoint label`).
pub async fn endpoint_list(store_at: &StoreArgs, json: bool) -> anyhow::Result<i32> {
    let store = store_at.connect().await?;
    let mut warnings = Vec::new();
    let endpoints = read_endpoints(&store, &mut warnings).await?;
    print_warnings(&warnings);
    let headers = ["NAMESPACE", "NAME", "NODE", "ADDRESSES", "LABELS"];
    print_listing(&store, json, "endpoints", &endpoints, &headers, |e| {
        let addresses: Vec<String> = e.addresses.iter().map(ToString::to_string).collect();
        vec![
            e.namespace.clone(),
            e.name.clone(),
            e.node.clone(),
            addresses.join(","),
            format_labels(&e.labels),
        ]
    })
}
