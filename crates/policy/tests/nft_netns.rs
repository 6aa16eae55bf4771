//! The rendered scripts in a real nftables, inside a network namespace of the test's own
//! (never the root namespace's firewall): a few hundred policies load in one `nft -f`, an
//! element-only diff applies on top, and `nft -j list table inet twill-policy` then shows
//! exactly the sets, elements and dispatch entries of the new rule set.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use twill_policy::compile::{Element, SetKind};
use twill_policy::model::*;
use twill_policy::{Dispatch, Options, Ruleset, compile, diff, parse_documents, render};
use twill_testkit::{Netns, TempDir, require_root};

const NAMESPACES: usize = 20;
const PODS: usize = 10;

fn ep(ns: usize, pod: usize) -> Endpoint {
    Endpoint {
        namespace: format!("ns{ns}"),
        name: format!("p{pod}"),
        labels: [
            ("app".to_string(), format!("app{}", pod % 5)),
            ("tier".to_string(), format!("t{}", pod % 3)),
        ]
        .into(),
        addresses: vec![
            format!("10.{}.{}.{}", 1 + ns / 200, ns % 200, pod + 2)
                .parse()
                .unwrap(),
            format!("fd00::{ns:x}:{:x}", pod + 2).parse().unwrap(),
        ],
        node: format!("node{}", pod % 2),
        interface: format!("tw{ns}x{pod}"),
        named_ports: vec![NamedPort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
        }],
    }
}

/// 20 namespaces x 10 pods over two nodes, and 300 policies: per namespace 14 Kubernetes
/// policies of assorted shapes, and 20 cluster policies.
fn big_world() -> World {
    let namespaces = (0..NAMESPACES)
        .map(|n| Namespace {
            name: format!("ns{n}"),
            labels: [("team".to_string(), format!("team{}", n % 4))].into(),
        })
        .collect();
    let endpoints = (0..NAMESPACES)
        .flat_map(|n| (0..PODS).map(move |p| ep(n, p)))
        .collect();
    let mut docs = String::new();
    for n in 0..NAMESPACES {
        for k in 0..14 {
            let app = k % 5;
            let spec = match k % 7 {
                0 => "  podSelector: {}\n  policyTypes: [Ingress]\n".to_string(),
                1 => format!(
                    "  podSelector: {{matchLabels: {{app: app{app}}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: team{}}}}}\n      podSelector: {{matchLabels: {{tier: t{}}}}}\n    ports: [{{port: {}}}, {{port: http}}]\n",
                    k % 4,
                    k % 3,
                    8000 + k
                ),
                2 => format!(
                    "  podSelector: {{matchLabels: {{app: app{app}}}}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {{cidr: 172.{}.0.0/16, except: [172.{}.1.0/24]}}\n    ports: [{{port: 443}}, {{port: 5000, endPort: 5100, protocol: UDP}}]\n",
                    16 + k,
                    16 + k
                ),
                3 => format!(
                    "  podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [t{}]}}]}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: app{app}}}}}}}]\n",
                    k % 3
                ),
                4 => format!(
                    "  podSelector: {{matchLabels: {{app: app{app}}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{namespaceSelector: {{matchLabels: {{team: team{}}}}}}}]\n    ports: [{{port: http}}]\n",
                    k % 4
                ),
                5 => format!(
                    "  podSelector: {{}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: 'fd00:{:x}::/32'}}}}]\n",
                    k
                ),
                _ => "  podSelector: {matchLabels: {app: app0}}\n  ingress: [{}]\n  egress: [{}]\n"
                    .to_string(),
            };
            docs.push_str(&format!(
                "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{k}, namespace: ns{n}}}\nspec:\n{spec}"
            ));
        }
    }
    for c in 0..20 {
        let action = ["Allow", "Deny", "Log", "Pass"][c % 4];
        docs.push_str(&format!(
            "---\napiVersion: twill.dev/v1\nkind: ClusterPolicy\nmetadata: {{name: cp{c}}}\nspec:\n  order: {c}\n  selector: {{matchLabels: {{tier: t{}}}}}\n  types: [Ingress, Egress]\n  ingress:\n  - action: {action}\n    protocol: TCP\n    source: {{namespaceSelector: {{matchLabels: {{team: team{}}}}}}}\n    destination: {{ports: [{}, \"9000:9100\"]}}\n  egress:\n  - action: {action}\n    destination: {{nets: [198.51.{c}.0/24], notNets: [198.51.{c}.128/25]}}\n",
            c % 3,
            c % 4,
            7000 + c
        ));
    }
    let docs = parse_documents(&docs).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(docs.len(), NAMESPACES * 14 + 20);
    World::new(namespaces, endpoints, docs)
}

fn apply(ns: &Netns, dir: &TempDir, name: &str, script: &str) {
    let path = dir.path().join(name);
    std::fs::write(&path, script).unwrap();
    ns.ok(&["nft", "-f", path.to_str().unwrap()]);
}

/// One JSON element as our text form, for the kinds the comparison covers.
fn json_elem(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Object(o) if o.contains_key("prefix") => {
            format!(
                "{}/{}",
                o["prefix"]["addr"].as_str().unwrap(),
                o["prefix"]["len"]
            )
        }
        Value::Object(o) if o.contains_key("range") => {
            format!(
                "{}-{}",
                json_elem(&o["range"][0]),
                json_elem(&o["range"][1])
            )
        }
        Value::Object(o) if o.contains_key("concat") => o["concat"]
            .as_array()
            .unwrap()
            .iter()
            .map(json_elem)
            .collect::<Vec<_>>()
            .join(" . "),
        Value::Object(o) if o.contains_key("elem") => json_elem(&o["elem"]["val"]),
        other => other.to_string(),
    }
}

/// Sets (and maps) of the live table: name -> elements as text; and the chain names.
fn live(ns: &Netns) -> (BTreeMap<String, BTreeSet<String>>, BTreeSet<String>) {
    let v = ns
        .nft_table("inet", "twill-policy")
        .expect("table inet twill-policy exists");
    let mut sets = BTreeMap::new();
    let mut chains = BTreeSet::new();
    for item in v["nftables"].as_array().unwrap() {
        if let Some(s) = item.get("set") {
            let elems = s["elem"]
                .as_array()
                .map(|a| a.iter().map(json_elem).collect())
                .unwrap_or_default();
            sets.insert(s["name"].as_str().unwrap().to_string(), elems);
        }
        if let Some(m) = item.get("map") {
            let elems = m["elem"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|pair| {
                            let target = &pair[1]["jump"]["target"];
                            format!("{} : {}", json_elem(&pair[0]), target.as_str().unwrap())
                        })
                        .collect()
                })
                .unwrap_or_default();
            sets.insert(m["name"].as_str().unwrap().to_string(), elems);
        }
        if let Some(c) = item.get("chain") {
            chains.insert(c["name"].as_str().unwrap().to_string());
        }
    }
    (sets, chains)
}

/// What `live` should show for `rs`: plain address sets and the dispatch maps exactly, the
/// Kubernetes address . protocol . port sets by count (nft may print ranges as prefixes), the
/// other interval sets as not empty.
fn expect_matches(ns: &Netns, rs: &Ruleset) {
    let (sets, chains) = live(ns);
    let mut want_chains: BTreeSet<String> = rs.chains.keys().cloned().collect();
    want_chains.insert("forward".into());
    assert_eq!(chains, want_chains);
    for (name, set) in &rs.sets {
        let got = sets
            .get(name)
            .unwrap_or_else(|| panic!("set {name} missing"));
        match set.kind {
            SetKind::Addr(_) => {
                let want: BTreeSet<String> = set
                    .elements
                    .iter()
                    .map(|e| match e {
                        Element::Addr(a) => a.to_string(),
                        other => panic!("{other:?} in an address set"),
                    })
                    .collect();
                assert_eq!(got, &want, "set {name}");
            }
            // Disjoint ranges: the kernel keeps each as one element.
            SetKind::NetProtoPort(_) => assert_eq!(got.len(), set.elements.len(), "set {name}"),
            _ => assert!(
                !got.is_empty() || set.elements.is_empty(),
                "set {name} is empty in the kernel"
            ),
        }
    }
    assert_eq!(
        sets.len(),
        rs.sets.len() + 2,
        "sets + the two dispatch maps"
    );
    let dispatch = |m: &BTreeMap<String, String>| -> BTreeSet<String> {
        m.iter().map(|(k, c)| format!("{k} : {c}")).collect()
    };
    assert_eq!(sets["ingress-dispatch"], dispatch(&rs.ingress));
    assert_eq!(sets["egress-dispatch"], dispatch(&rs.egress));
}

#[test]
#[ignore = "needs root"]
fn hundreds_of_policies_load_and_diff_in_a_netns() {
    require_root();
    let ns = Netns::new("pol");
    let dir = TempDir::new("policy-nft");
    let world = big_world();
    let rs = compile(&world, "node0", Options::default());
    assert!(rs.chains.len() > 20, "{} chains", rs.chains.len());
    assert!(rs.sets.len() > 50, "{} sets", rs.sets.len());

    let start = std::time::Instant::now();
    apply(&ns, &dir, "full.nft", &render(&rs));
    eprintln!(
        "{} policies, {} chains, {} sets: full load in {:?}",
        world.network_policies.len() + world.cluster_policies.len(),
        rs.chains.len(),
        rs.sets.len(),
        start.elapsed()
    );
    expect_matches(&ns, &rs);

    // A pod appears on the other node: element changes only.
    let mut w2 = world.clone();
    let mut newcomer = ep(3, 99);
    newcomer.addresses = vec!["10.1.3.200".parse().unwrap(), "fd00::3:c8".parse().unwrap()];
    newcomer.node = "node1".into();
    w2.endpoints.push(newcomer);
    let rs2 = compile(&w2, "node0", Options::default());
    let script = diff(Some(&rs), &rs2);
    assert!(
        !script.is_empty() && !script.contains("delete table"),
        "{script}"
    );
    assert!(
        script.lines().all(|l| l.starts_with("add element")),
        "{script}"
    );
    apply(&ns, &dir, "add.nft", &script);
    expect_matches(&ns, &rs2);

    // A local pod appears with the policies of an existing one: map and set elements.
    let mut w3 = w2.clone();
    let mut local = ep(4, 0);
    local.name = "p0-twin".into();
    local.addresses = vec!["10.1.4.201".parse().unwrap(), "fd00::4:c9".parse().unwrap()];
    local.interface = "tw4twin".into();
    w3.endpoints.push(local);
    let rs3 = compile(&w3, "node0", Options::default());
    let script = diff(Some(&rs2), &rs3);
    assert!(!script.contains("delete table"), "{script}");
    assert!(
        script.contains("ingress-dispatch { \"tw4twin\""),
        "{script}"
    );
    apply(&ns, &dir, "local.nft", &script);
    expect_matches(&ns, &rs3);

    // Both leave again: deletes only.
    let script = diff(Some(&rs3), &rs);
    assert!(
        script.lines().all(|l| l.starts_with("delete element")),
        "{script}"
    );
    apply(&ns, &dir, "remove.nft", &script);
    expect_matches(&ns, &rs);

    // A policy is deleted: the rules change, so the table is replaced in one transaction.
    let mut w4 = world.clone();
    w4.network_policies.retain(|p| p.name != "np1");
    let rs4 = compile(&w4, "node0", Options::default());
    let script = diff(Some(&rs), &rs4);
    assert!(script.contains("delete table inet twill-policy"));
    apply(&ns, &dir, "replace.nft", &script);
    expect_matches(&ns, &rs4);

    // Address dispatch (bridge mode) loads too, replacing the interface form.
    let rs5 = compile(
        &w4,
        "node0",
        Options {
            dispatch: Dispatch::Address,
        },
    );
    apply(&ns, &dir, "address.nft", &diff(Some(&rs4), &rs5));
    let (sets, _) = live(&ns);
    assert_eq!(
        sets["ingress-dispatch4"].len() + sets["ingress-dispatch6"].len(),
        rs5.ingress.len()
    );

    // No policy at all: the table goes away.
    apply(&ns, &dir, "remove-all.nft", &twill_policy::render::remove());
    assert!(ns.nft_table("inet", "twill-policy").is_none());
}
