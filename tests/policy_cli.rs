//! `twill policy`, `twill namespace` and `twill endpoint`: the real binary against a real etcd
//! (started by the test) and against the embedded store. Policies applied from a file land at
//! their store keys and nowhere else; a bad file changes nothing; labels set with the CLI
//! change what `twill policy explain` decides. No root needed: nothing here touches the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use twill_policy::{Endpoint, PolicyDoc};
use twill_store::Store;
use twill_store::testing::EtcdServer;
use twill_types::keys;

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

/// One store under test, alive as long as the test.
enum Backend {
    Embedded(tempfile::TempDir),
    Etcd(EtcdServer),
}

impl Backend {
    /// An embedded store, created as `twill cluster init` would (no verb here creates one).
    fn embedded() -> Backend {
        let b = Backend::Embedded(tempfile::tempdir().unwrap());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(Store::connect_or_create(&b.url())).unwrap();
        b
    }

    fn etcd() -> Backend {
        Backend::Etcd(EtcdServer::start())
    }

    fn url(&self) -> String {
        match self {
            Backend::Embedded(dir) => {
                format!("embedded:{}", dir.path().join("store.redb").display())
            }
            Backend::Etcd(etcd) => etcd.url(),
        }
    }

    /// Runs `f` with a store handle (dropped afterwards, so the embedded file is only held
    /// by the binary while it runs).
    fn with_store<T>(&self, f: impl AsyncFnOnce(&Store) -> T) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = Store::connect(&self.url()).await.unwrap();
            f(&store).await
        })
    }

    /// Every key and value in the store, and its revision.
    fn snapshot(&self) -> (BTreeMap<String, Vec<u8>>, i64) {
        self.with_store(async |s| {
            let (kvs, rev) = s.list("/").await.unwrap();
            (kvs.into_iter().map(|kv| (kv.key, kv.value)).collect(), rev)
        })
    }

    /// Publishes an endpoint as the agent of its node does.
    fn publish(&self, ep: &Endpoint) {
        let bytes = serde_json::to_vec(ep).unwrap();
        let key = keys::endpoint_key(&ep.namespace, &ep.name);
        self.with_store(async |s| s.put(&key, &bytes, None).await.unwrap());
    }

    /// Runs twill with the store in TWILL_STORE, as an operator would set it once.
    fn twill(&self, args: &[&str]) -> Output {
        Command::new(TWILL)
            .args(args)
            .env("TWILL_STORE", self.url())
            .output()
            .unwrap()
    }

    /// Runs twill, expecting success; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.twill(args);
        assert!(
            out.status.success(),
            "twill {args:?} failed: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stdout(&out)
    }

    /// Runs twill, expecting exit code 1; its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.twill(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "twill {args:?} should fail: {}{}",
            stdout(&out),
            stderr(&out)
        );
        stderr(&out)
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// Two Kubernetes policies in two namespaces and a cluster policy, with a comment-only
/// document in between (skipped, as kubectl does).
const POLICIES: &str = "\
# web accepts port 80 from namespaces of team a
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: web
  namespace: prod
spec:
  podSelector:
    matchLabels:
      app: web
  ingress:
  - from:
    - namespaceSelector:
        matchLabels:
          team: a
    ports:
    - protocol: TCP
      port: 80
---
# nothing here
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-egress
  namespace: dev
spec:
  podSelector: {}
  policyTypes: [Egress]
---
apiVersion: twill.dev/v1
kind: ClusterPolicy
metadata:
  name: quarantine
spec:
  order: 10
  selector:
    matchExpressions:
    - {key: quarantine, operator: Exists}
  types: [Egress]
  egress:
  - action: Deny
";

fn apply_list_reapply_delete(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "policies.yaml", POLICIES);
    let out = b.ok(&["policy", "apply", "-f", &file]);
    assert_eq!(
        out,
        "networkpolicy prod/web created\nnetworkpolicy dev/deny-egress created\n\
         clusterpolicy quarantine created\n"
    );

    // Exactly the three documented keys, each holding its document.
    let (kvs, rev) = b.snapshot();
    let policy_keys: Vec<&str> = kvs
        .keys()
        .filter(|k| k.starts_with(keys::POLICY_PREFIX))
        .map(String::as_str)
        .collect();
    assert_eq!(
        policy_keys,
        [
            "/twill/policy/cluster/quarantine",
            "/twill/policy/k8s/dev/deny-egress",
            "/twill/policy/k8s/prod/web",
        ]
    );
    let web: PolicyDoc =
        serde_json::from_slice(&kvs[&keys::network_policy_key("prod", "web")]).unwrap();
    let PolicyDoc::NetworkPolicy(web) = web else {
        panic!("{web:?}")
    };
    assert_eq!((web.namespace.as_str(), web.ingress.len()), ("prod", 1));
    let q: PolicyDoc =
        serde_json::from_slice(&kvs[&keys::cluster_policy_key("quarantine")]).unwrap();
    assert!(matches!(q, PolicyDoc::ClusterPolicy(p) if p.order == Some(10.0)));

    let list = b.ok(&["policy", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(
        lines[0].starts_with("KIND") && lines[0].contains("SUMMARY"),
        "{list}"
    );
    // Cluster policies first (they are evaluated first), then by namespace and name.
    let cols = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
    assert_eq!(cols(lines[1]), "ClusterPolicy - quarantine");
    assert_eq!(cols(lines[2]), "NetworkPolicy dev deny-egress");
    assert_eq!(cols(lines[3]), "NetworkPolicy prod web");
    assert!(
        lines[1].contains("order 10") && lines[1].contains("1 egress rule"),
        "{list}"
    );
    assert!(
        lines[3].contains("app=web") && lines[3].contains("1 ingress rule"),
        "{list}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&b.ok(&["policy", "list", "--json"])).unwrap();
    assert_eq!(json.as_array().unwrap().len(), 3);
    assert_eq!(json[2]["kind"], "NetworkPolicy");
    assert_eq!(json[2]["namespace"], "prod");

    // Applying again changes nothing, not even the revision (agents are not woken).
    let out = b.ok(&["policy", "apply", "-f", &file]);
    assert_eq!(
        out,
        "networkpolicy prod/web unchanged\nnetworkpolicy dev/deny-egress unchanged\n\
         clusterpolicy quarantine unchanged\n"
    );
    assert_eq!(b.snapshot().1, rev);

    // One policy changed, from stdin with `--store` given explicitly.
    let changed = POLICIES.replace("port: 80", "port: 8080");
    let mut child = Command::new(TWILL)
        .args(["policy", "apply", "--store", &b.url(), "-f", "-"])
        .env_remove("TWILL_STORE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), changed.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "networkpolicy prod/web configured\nnetworkpolicy dev/deny-egress unchanged\n\
         clusterpolicy quarantine unchanged\n"
    );

    // Deleting: a missing name fails and deletes nothing, even the names that exist.
    let err = b.fails(&["policy", "delete", "-n", "dev", "deny-egress", "nope"]);
    assert!(err.contains("networkpolicy dev/nope not found"), "{err}");
    assert!(err.contains("nothing was deleted"), "{err}");
    assert!(!err.contains("deny-egress not found"), "{err}");
    let err = b.fails(&["policy", "delete", "web"]);
    assert!(err.contains("networkpolicy default/web not found"), "{err}");
    let err = b.fails(&["policy", "delete", "--cluster", "web"]);
    assert!(err.contains("clusterpolicy web not found"), "{err}");
    assert_eq!(
        b.ok(&["policy", "list", "--json"])
            .matches("\"kind\"")
            .count(),
        3
    );

    assert_eq!(
        b.ok(&[
            "policy",
            "delete",
            "-n",
            "dev",
            "deny-egress",
            "deny-egress"
        ]),
        "networkpolicy dev/deny-egress deleted\n"
    );
    assert_eq!(
        b.ok(&["policy", "delete", "--cluster", "quarantine"]),
        "clusterpolicy quarantine deleted\n"
    );
    // What the file defines: prod/web is still there, the other two are not.
    let err = b.fails(&["policy", "delete", "-f", &file]);
    assert!(
        err.contains("networkpolicy dev/deny-egress, clusterpolicy quarantine not found"),
        "{err}"
    );
    assert!(
        b.snapshot()
            .0
            .contains_key(&keys::network_policy_key("prod", "web"))
    );
    assert_eq!(
        b.ok(&["policy", "delete", "-f", &file, "--ignore-not-found"]),
        "networkpolicy prod/web deleted\n"
    );
    let (kvs, _) = b.snapshot();
    assert!(
        !kvs.keys().any(|k| k.starts_with(keys::POLICY_PREFIX)),
        "{kvs:?}"
    );
    assert!(b.ok(&["policy", "list"]).contains("no policies"));
    assert_eq!(b.ok(&["policy", "list", "--json"]).trim(), "[]");

    // Nothing to name: clap refuses before anything runs.
    let out = b.twill(&["policy", "delete"]);
    assert!(!out.status.success());
    let out = b.twill(&["policy", "delete", "--cluster", "-n", "x", "q"]);
    assert!(!out.status.success());
}

#[test]
fn apply_list_reapply_delete_embedded() {
    apply_list_reapply_delete(&Backend::embedded());
}

#[test]
fn apply_list_reapply_delete_etcd() {
    apply_list_reapply_delete(&Backend::etcd());
}

/// A valid document 1 and 2 that would create new policies, then `bad` as document 3.
fn third_document_bad(bad: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: new-one, namespace: prod}}\nspec: {{podSelector: {{}}}}\n---\n\
         apiVersion: twill.dev/v1\nkind: ClusterPolicy\nmetadata: {{name: new-two}}\n\
         spec: {{selector: {{}}, ingress: [{{action: Deny}}]}}\n---\n{bad}"
    )
}

fn invalid_files_change_nothing(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    b.ok(&[
        "policy",
        "apply",
        "-f",
        &write(dir.path(), "good.yaml", POLICIES),
    ]);
    let before = b.snapshot();

    let cases = [
        (
            "indent.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n   \
             namespace: prod\nspec:\n  podSelector: {}\n"
                .to_string(),
            "document 1, line 5",
        ),
        (
            "unknown.yaml",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  \
             namespace: prod\nspec:\n  podSelector: {}\n  ingres: []\n"
                .to_string(),
            "document 1, line 8 (NetworkPolicy prod/web): unknown field `ingres`",
        ),
        (
            "cidr.yaml",
            third_document_bad(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: c\n  \
                 namespace: dev\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    \
                 - ipBlock:\n        cidr: 10.0.0.0/33\n",
            ),
            "document 3, line 21 (NetworkPolicy dev/c): spec.ingress[0].from[0].ipBlock.cidr: \
             \"10.0.0.0/33\" is not a valid CIDR",
        ),
        (
            "changed-then-bad.yaml",
            // A change to a stored policy first, then an error: the change is not written.
            format!(
                "{}---\nkind: NetworkPolicy\n",
                POLICIES.replace("port: 80", "port: 81")
            ),
            "document 4",
        ),
    ];
    for (name, text, needle) in cases {
        let path = write(dir.path(), name, &text);
        let err = b.fails(&["policy", "apply", "-f", &path]);
        assert!(
            err.contains(name) && err.contains(needle),
            "{name}: {err:?} should name the file and say {needle:?}"
        );
        assert!(err.contains("nothing was changed"), "{err}");
        assert_eq!(b.snapshot(), before, "{name} changed the store");
    }

    let err = b.fails(&[
        "policy",
        "apply",
        "-f",
        &write(dir.path(), "empty.yaml", "# x\n"),
    ]);
    assert!(err.contains("no policy documents"), "{err}");
    let err = b.fails(&["policy", "apply", "-f", "/nonexistent/p.yaml"]);
    assert!(err.contains("/nonexistent/p.yaml"), "{err}");
    // Deleting what a bad file defines deletes nothing either.
    let err = b.fails(&[
        "policy",
        "delete",
        "-f",
        &dir.path().join("cidr.yaml").display().to_string(),
    ]);
    assert!(err.contains("document 3"), "{err}");
    assert_eq!(b.snapshot(), before);
}

#[test]
fn invalid_files_change_nothing_embedded() {
    invalid_files_change_nothing(&Backend::embedded());
}

#[test]
fn invalid_files_change_nothing_etcd() {
    invalid_files_change_nothing(&Backend::etcd());
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
        node: "node-1".into(),
        interface: format!("tw{name}"),
        named_ports: vec![],
    }
}

/// The first line of `explain`'s answer says ALLOWED or DENIED.
fn verdict(out: &str) -> &str {
    let first = out.lines().next().unwrap_or("");
    if first.ends_with("ALLOWED") {
        "allowed"
    } else if first.ends_with("DENIED") {
        "denied"
    } else {
        panic!("no verdict in {out:?}")
    }
}

fn labels_change_what_explain_says(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    b.ok(&[
        "policy",
        "apply",
        "-f",
        &write(dir.path(), "p.yaml", POLICIES),
    ]);
    // Endpoints as the agent of their node publishes them.
    let web = endpoint("prod", "web", "10.1.0.5", &[("app", "web")]);
    let client = endpoint("x", "client", "10.1.1.7", &[("app", "client")]);
    b.publish(&web);
    b.publish(&client);

    let explain = |extra: &[&str]| {
        let mut args = vec!["policy", "explain", "x/client", "prod/web"];
        args.extend_from_slice(extra);
        b.ok(&args)
    };
    let out = explain(&["80"]);
    assert_eq!(verdict(&out), "denied", "{out}");
    assert!(out.starts_with("10.1.1.7 -> 10.1.0.5:80/TCP"), "{out}");
    assert!(
        out.contains("ingress of prod/web: isolated by NetworkPolicy prod/web, no rule allows"),
        "{out}"
    );
    assert!(
        out.contains("egress of x/client: no policy selects"),
        "{out}"
    );

    assert_eq!(
        b.ok(&["namespace", "label", "x", "team=a", "env=test"]),
        "namespace x labeled\n"
    );
    let out = explain(&["80/tcp"]);
    assert_eq!(verdict(&out), "allowed", "{out}");
    assert!(
        out.contains("ingress of prod/web: allowed by NetworkPolicy prod/web ingress rule 0"),
        "{out}"
    );
    // The rule is for TCP 80 only.
    assert_eq!(verdict(&explain(&["80/udp"])), "denied");
    assert_eq!(verdict(&explain(&["443"])), "denied");
    let json: serde_json::Value = serde_json::from_str(&explain(&["80", "--json"])).unwrap();
    assert_eq!(json["allowed"], true);
    assert_eq!(
        json["ingress"]["reason"]["K8sRule"]["policy"],
        "NetworkPolicy prod/web"
    );
    assert_eq!(json["ingress"]["reason"]["K8sRule"]["index"], 0);
    // An address outside every endpoint is not in a team=a namespace.
    let out = b.ok(&["policy", "explain", "192.0.2.1", "prod/web", "80"]);
    assert_eq!(verdict(&out), "denied", "{out}");
    assert!(
        out.contains("egress of 192.0.2.1: not an endpoint"),
        "{out}"
    );
    // By address, the endpoint is found.
    assert_eq!(
        verdict(&b.ok(&["policy", "explain", "10.1.1.7", "10.1.0.5", "80"])),
        "allowed"
    );

    let ns_list = b.ok(&["namespace", "list"]);
    let x = ns_list.lines().find(|l| l.starts_with("x ")).unwrap();
    assert!(x.contains("env=test,team=a"), "{ns_list}");
    let prod = ns_list.lines().find(|l| l.starts_with("prod ")).unwrap();
    assert_eq!(
        prod.split_whitespace().collect::<Vec<_>>(),
        ["prod", "1", "1", "<none>"]
    );
    assert_eq!(
        b.ok(&["namespace", "label", "x", "team=a"]),
        "namespace x unchanged\n"
    );

    // A quarantined endpoint may not send anywhere, whatever the namespaced policies say.
    assert_eq!(
        b.ok(&["endpoint", "label", "x/client", "quarantine=yes", "app-"]),
        "endpoint x/client labeled\n"
    );
    let out = explain(&["80"]);
    assert_eq!(verdict(&out), "denied", "{out}");
    assert!(
        out.contains("egress of x/client: denied by ClusterPolicy quarantine egress rule 0 (Deny)"),
        "{out}"
    );
    let eps: serde_json::Value =
        serde_json::from_str(&b.ok(&["endpoint", "list", "--json"])).unwrap();
    let c = eps
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "client")
        .unwrap();
    assert_eq!(c["labels"], serde_json::json!({"quarantine": "yes"}));
    let table = b.ok(&["endpoint", "list"]);
    assert!(table.starts_with("NAMESPACE"), "{table}");
    let row = table.lines().find(|l| l.starts_with("x ")).unwrap();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>(),
        ["x", "client", "node-1", "10.1.1.7", "quarantine=yes"]
    );

    // The agent republishing the endpoint with the runtime's labels does not undo the user's.
    let republished = endpoint("x", "client", "10.1.1.7", &[("app", "client"), ("v", "2")]);
    b.publish(&republished);
    assert_eq!(verdict(&explain(&["80"])), "denied");
    b.ok(&["endpoint", "label", "x/client", "quarantine-"]);
    assert_eq!(verdict(&explain(&["80"])), "allowed");
    b.ok(&["namespace", "label", "x", "team-"]);
    assert_eq!(verdict(&explain(&["80"])), "denied");

    // Errors name what is wrong and change nothing.
    let before = b.snapshot();
    let err = b.fails(&["policy", "explain", "x/client", "prod/nope", "80"]);
    assert!(err.contains("no endpoint prod/nope"), "{err}");
    let err = b.fails(&["policy", "explain", "x/client", "prod/web", "80/gre"]);
    assert!(err.contains("\"gre\""), "{err}");
    let err = b.fails(&["endpoint", "label", "x/ghost", "a=b"]);
    assert!(err.contains("no endpoint x/ghost"), "{err}");
    let err = b.fails(&["endpoint", "label", "client", "a=b"]);
    assert!(err.contains("NAMESPACE/NAME"), "{err}");
    let err = b.fails(&["namespace", "label", "x", "team"]);
    assert!(err.contains("KEY=VALUE"), "{err}");
    let err = b.fails(&["namespace", "label", "x", "bad key=1"]);
    assert!(err.contains("\"bad key=1\""), "{err}");
    let err = b.fails(&["namespace", "label", "X", "a=1"]);
    assert!(err.contains("lowercase"), "{err}");
    let err = b.fails(&["namespace", "label", "x", "kubernetes.io/metadata.name=y"]);
    assert!(err.contains("namespace's name"), "{err}");
    assert_eq!(b.snapshot(), before);

    // A namespace nobody described gets its key on first label.
    b.ok(&["namespace", "label", "fresh", "gone-"]);
    let fresh: serde_json::Value =
        serde_json::from_slice(&b.snapshot().0[&keys::namespace_key("fresh")]).unwrap();
    assert_eq!(fresh, serde_json::json!({"name": "fresh", "labels": {}}));
}

#[test]
fn labels_change_what_explain_says_embedded() {
    labels_change_what_explain_says(&Backend::embedded());
}

#[test]
fn labels_change_what_explain_says_etcd() {
    labels_change_what_explain_says(&Backend::etcd());
}

/// A value another twill version (or a person) left in the store is skipped with a warning
/// naming its key; everything else still works.
#[test]
fn unreadable_store_values_are_skipped_with_a_warning() {
    let b = Backend::embedded();
    let dir = tempfile::tempdir().unwrap();
    b.ok(&[
        "policy",
        "apply",
        "-f",
        &write(dir.path(), "p.yaml", POLICIES),
    ]);
    let key = keys::network_policy_key("prod", "from-the-future");
    b.with_store(async |s| {
        s.put(&key, b"{\"kind\":\"NetworkPolicyV9\"}", None)
            .await
            .unwrap()
    });
    let out = b.twill(&["policy", "list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("skipping store key {key}")),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out).lines().count(), 4);
    b.publish(&endpoint("prod", "web", "10.1.0.5", &[]));
    let out = b.twill(&["policy", "explain", "192.0.2.1", "prod/web", "80"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains(&key), "{}", stderr(&out));
}

/// `count` ClusterPolicies `pNNN`, each with `order` (so two versions differ).
fn many_policies(count: usize, order: u32) -> String {
    (0..count)
        .map(|i| {
            format!(
                "apiVersion: twill.dev/v1\nkind: ClusterPolicy\nmetadata: {{name: p{i:03}}}\n\
                 spec: {{order: {order}, selector: {{}}, ingress: [{{action: Deny}}]}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The stored policies' keys and mod revisions.
fn policy_revisions(b: &Backend) -> BTreeMap<String, i64> {
    b.with_store(async |s| {
        let (kvs, _) = s.list(keys::POLICY_PREFIX).await.unwrap();
        kvs.into_iter()
            .map(|kv| (kv.key, kv.mod_revision))
            .collect()
    })
}

/// `policy apply` is one transaction whatever the size: with etcd's default `--max-txn-ops`
/// (128) a file of 300 new policies is refused whole, saying why, and nothing lands; 120 land
/// at one revision; a later apply writes only what changed, also at one revision, and prints
/// exactly that.
#[test]
fn apply_is_all_or_nothing_whatever_the_size_etcd() {
    let b = Backend::etcd();
    let dir = tempfile::tempdir().unwrap();
    let before = b.snapshot();
    let big = write(dir.path(), "big.yaml", &many_policies(300, 1));
    let out = b.twill(&["policy", "apply", "-f", &big]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    for needle in ["300 changes", "--max-txn-ops", "128", "nothing was written"] {
        assert!(err.contains(needle), "{err:?} lacks {needle:?}");
    }
    assert_eq!(stdout(&out), "", "nothing written, nothing reported");
    assert_eq!(b.snapshot(), before, "a refused apply changed the store");

    let file = write(dir.path(), "p.yaml", &many_policies(120, 1));
    let out = b.ok(&["policy", "apply", "-f", &file]);
    let expected: String = (0..120)
        .map(|i| format!("clusterpolicy p{i:03} created\n"))
        .collect();
    assert_eq!(out, expected);
    let revs = policy_revisions(&b);
    assert_eq!(revs.len(), 120);
    let first: BTreeSet<i64> = revs.values().copied().collect();
    assert_eq!(
        first.len(),
        1,
        "written in more than one transaction: {first:?}"
    );

    // Five changed: five configured, the rest unchanged and untouched.
    let text = many_policies(120, 1);
    let docs: Vec<&str> = text.split("---\n").collect();
    let changed: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            if i % 25 == 0 {
                d.replace("order: 1,", "order: 2,")
            } else {
                d.to_string()
            }
        })
        .collect();
    let file = write(dir.path(), "p2.yaml", &changed.join("---\n"));
    let out = b.ok(&["policy", "apply", "-f", &file]);
    let configured: Vec<&str> = out.lines().filter(|l| l.ends_with(" configured")).collect();
    assert_eq!(
        configured,
        [
            "clusterpolicy p000 configured",
            "clusterpolicy p025 configured",
            "clusterpolicy p050 configured",
            "clusterpolicy p075 configured",
            "clusterpolicy p100 configured"
        ]
    );
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" unchanged")).count(),
        115
    );
    let after = policy_revisions(&b);
    let moved: BTreeSet<i64> = after
        .iter()
        .filter(|(k, r)| revs[*k] != **r)
        .map(|(_, r)| *r)
        .collect();
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(after.iter().filter(|(k, r)| revs[*k] != **r).count(), 5);

    // Deleting them all is one transaction too.
    let out = b.ok(&["policy", "delete", "-f", &file]);
    assert_eq!(out.lines().count(), 120);
    assert!(policy_revisions(&b).is_empty());
}

/// The embedded store takes any size in one transaction: 300 policies all land.
#[test]
fn apply_is_all_or_nothing_whatever_the_size_embedded() {
    let b = Backend::embedded();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "big.yaml", &many_policies(300, 1));
    let out = b.ok(&["policy", "apply", "-f", &file]);
    assert_eq!(out.lines().filter(|l| l.ends_with(" created")).count(), 300);
    assert_eq!(policy_revisions(&b).len(), 300);
    let out = b.ok(&["policy", "apply", "-f", &file]);
    assert_eq!(
        out.lines().filter(|l| l.ends_with(" unchanged")).count(),
        300
    );
}

/// A policy changed by another writer between apply's read and its write: the whole apply
/// fails, says nothing was written, and none of its other changes landed. (Another process
/// rewrites one policy of the file in a loop; apply is run until it meets the conflict.)
fn a_conflicting_writer_makes_apply_write_nothing(b: &Backend) {
    let dir = tempfile::tempdir().unwrap();
    let v1 = write(dir.path(), "v1.yaml", &many_policies(100, 1));
    let v2 = write(dir.path(), "v2.yaml", &many_policies(100, 2));
    b.ok(&["policy", "apply", "-f", &v1]);
    let hot = keys::cluster_policy_key("p050");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (url, hot, stop) = (b.url(), hot.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let s = Store::connect(&url).await.unwrap();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n += 1;
                    s.put(&hot, format!("{{\"hammer\":{n}}}").as_bytes(), None)
                        .await
                        .unwrap();
                }
            })
        })
    };
    let order_of = |b: &Backend| -> BTreeMap<String, Option<i64>> {
        b.with_store(async |s| {
            let (kvs, _) = s.list(keys::POLICY_PREFIX).await.unwrap();
            kvs.into_iter()
                .filter(|kv| kv.key != hot)
                .map(|kv| {
                    let order = match serde_json::from_slice::<PolicyDoc>(&kv.value) {
                        Ok(PolicyDoc::ClusterPolicy(p)) => p.order.map(|o| o as i64),
                        other => panic!("{}: {other:?}", kv.key),
                    };
                    (kv.key, order)
                })
                .collect()
        })
    };
    let mut conflicts = 0;
    for _ in 0..40 {
        let out = b.twill(&["policy", "apply", "-f", &v2]);
        let orders: BTreeSet<Option<i64>> = order_of(b).into_values().collect();
        if out.status.success() {
            assert_eq!(orders, BTreeSet::from([Some(2)]), "{}", stdout(&out));
            // Back to v1 for the next round (the hot key may conflict again: retry).
            while !b.twill(&["policy", "apply", "-f", &v1]).status.success() {}
        } else {
            let err = stderr(&out);
            assert!(
                err.contains("changed since this command read them")
                    && err.contains("nothing was written"),
                "{err}"
            );
            assert_eq!(stdout(&out), "");
            assert_eq!(orders, BTreeSet::from([Some(1)]), "part of the set landed");
            conflicts += 1;
            if conflicts >= 3 {
                break;
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hammer.join().unwrap();
    assert!(
        conflicts > 0,
        "the concurrent writer never conflicted with apply"
    );
}

#[test]
fn a_conflicting_writer_makes_apply_write_nothing_etcd() {
    a_conflicting_writer_makes_apply_write_nothing(&Backend::etcd());
}

#[test]
fn a_conflicting_writer_makes_apply_write_nothing_embedded() {
    a_conflicting_writer_makes_apply_write_nothing(&Backend::embedded());
}

/// etcd down: apply fails and says so; when it is back, nothing of the file is there.
#[test]
fn apply_with_the_store_down_writes_nothing() {
    let mut etcd = EtcdServer::start();
    let url = etcd.url();
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.yaml", &many_policies(50, 1));
    etcd.stop();
    let out = Command::new(TWILL)
        .args(["policy", "apply", "--store", &url, "-f", &file])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("127.0.0.1"), "{}", stderr(&out));
    etcd.restart();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (kvs, _) = rt.block_on(async {
        let s = Store::connect(&url).await.unwrap();
        s.list(keys::POLICY_PREFIX).await.unwrap()
    });
    assert!(kvs.is_empty(), "{} policies landed", kvs.len());
}
