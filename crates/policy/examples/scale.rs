//! The world of `bench/policy.sh` (1000 NetworkPolicies over 1000 endpoints, 250 of them
//! selecting one server pod), compiled for the server's node: compile time, the biggest chain,
//! the rules on the server's ingress path and the biggest set.
//!
//! `cargo run --release -p twill-policy --example scale [POLICIES] [ENDPOINTS] [SERVER_POLICIES]`

use std::fmt::Write as _;
use std::time::Instant;

use twill_policy::model::{Endpoint, Namespace};
use twill_policy::{Options, World, compile, parse_documents, render};

const N_NS: usize = 10;
const TIERS: [&str; 4] = ["web", "api", "db", "cache"];

fn ns_name(k: usize) -> String {
    format!("ns{k:02}")
}

fn app_labels(a: usize) -> Vec<(String, String)> {
    vec![
        ("app".into(), format!("app{a:02}")),
        ("tier".into(), TIERS[a % 4].into()),
        ("version".into(), format!("v{}", 1 + a % 2)),
    ]
}

fn endpoint(
    ns: String,
    name: String,
    labels: Vec<(String, String)>,
    ip: String,
    node: &str,
) -> Endpoint {
    Endpoint {
        interface: format!("tw{}", ip.replace('.', "")),
        namespace: ns,
        name,
        labels: labels.into_iter().collect(),
        addresses: vec![ip.parse().unwrap()],
        node: node.into(),
        named_ports: vec![],
    }
}

fn world(n_pol: usize, n_ep: usize, n_srv: usize) -> World {
    let namespaces = (0..N_NS)
        .map(|k| Namespace {
            name: ns_name(k),
            labels: [
                ("team".to_string(), format!("team{}", k % 4)),
                (
                    "env".to_string(),
                    if k % 2 == 0 { "prod" } else { "staging" }.to_string(),
                ),
            ]
            .into(),
        })
        .collect();
    let mut eps = vec![
        endpoint(
            "ns00".into(),
            "server".into(),
            vec![
                ("app".into(), "server".into()),
                ("tier".into(), "web".into()),
                ("role".into(), "server".into()),
            ],
            "10.244.1.2".into(),
            "h2",
        ),
        endpoint(
            "ns01".into(),
            "loadgen".into(),
            vec![
                ("app".into(), "loadgen".into()),
                ("role".into(), "client".into()),
            ],
            "10.244.0.2".into(),
            "h1",
        ),
    ];
    for r in 0..18 {
        let k = [0, 2, 3, 4, 5, 6, 7, 8, 9][r % 9];
        let a = (r * 7) % 25;
        let host = if r % 2 == 0 { "h1" } else { "h2" };
        let ip = format!("10.244.{}.{}", if host == "h1" { 0 } else { 1 }, 3 + r);
        eps.push(endpoint(
            ns_name(k),
            format!("real-app{a:02}-{r:02}"),
            app_labels(a),
            ip,
            host,
        ));
    }
    for i in 0..n_ep.saturating_sub(eps.len()) {
        let k = i % N_NS;
        let a = (i / N_NS) % 25;
        let mut labels = app_labels(a);
        labels.push(("pod-template-hash".into(), format!("h{:03}", i % 97)));
        let ip = format!("10.244.{}.{}", 255 - i / 250, 1 + i % 250);
        eps.push(endpoint(
            ns_name(k),
            format!("app{a:02}-{i:04}"),
            labels,
            ip,
            &format!("fake-node-{:02}", i % 40),
        ));
    }
    let mut docs = String::new();
    let mut pol = |ns: &str, name: &str, podsel: &str, ingress: &str, egress: Option<&str>| {
        let types = if egress.is_some() {
            "[Ingress, Egress]"
        } else {
            "[Ingress]"
        };
        let _ = write!(
            docs,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  podSelector: {podsel}\n  policyTypes: {types}\n  ingress: {ingress}\n"
        );
        if let Some(e) = egress {
            let _ = writeln!(docs, "  egress: {e}");
        }
    };
    for i in 0..n_srv {
        let a = i % 25;
        let mut vals = ["server".to_string(), format!("app{a:02}")];
        vals.sort();
        let sels = [
            "{matchLabels: {tier: web}}".to_string(),
            format!(
                "{{matchExpressions: [{{key: app, operator: In, values: [{}, {}]}}]}}",
                vals[0], vals[1]
            ),
            "{matchLabels: {role: server}}".to_string(),
            "{}".to_string(),
        ];
        let rules = [
            format!(
                "{{from: [{{podSelector: {{matchLabels: {{app: app{a:02}}}}}}}, {{podSelector: {{matchLabels: {{app: app{:02}}}}}, namespaceSelector: {{matchLabels: {{team: team{}}}}}}}], ports: [{{port: {}}}]}}",
                (a + 7) % 25,
                i % 4,
                8000 + i % 900
            ),
            format!(
                "{{from: [{{ipBlock: {{cidr: 172.16.{}.0/24, except: [172.16.{}.128/28]}}}}], ports: [{{port: {}, endPort: {}}}]}}",
                i % 256,
                i % 256,
                9000 + i % 500,
                9010 + i % 500
            ),
            format!(
                "{{from: [{{podSelector: {{matchLabels: {{role: client}}}}, namespaceSelector: {{}}}}], ports: [{{port: {}}}]}}",
                8443 + i % 50
            ),
        ];
        let n = if i % 3 != 0 { 1 + i % 3 } else { 3 };
        pol(
            "ns00",
            &format!("srv-{i:04}"),
            &sels[i % 4],
            &format!("[{}]", rules[..n].join(", ")),
            None,
        );
    }
    pol(
        "ns00",
        "zz-allow-clients",
        "{matchLabels: {app: server}}",
        "[{from: [{podSelector: {matchLabels: {role: client}}, namespaceSelector: {}}], ports: [{port: 5201}, {port: 7000}]}]",
        None,
    );
    for i in 0..n_pol.saturating_sub(n_srv + 1) {
        let k = 1 + i % (N_NS - 1);
        let ns = ns_name(k);
        let a = i % 25;
        match i % 8 {
            0 if k != 1 => pol(
                &ns,
                &format!("deny-egress-{i:04}"),
                &format!("{{matchLabels: {{app: app{a:02}}}}}"),
                "[]",
                Some(&format!(
                    "[{{to: [{{ipBlock: {{cidr: 10.96.0.10/32}}}}], ports: [{{port: 53, protocol: UDP}}, {{port: 53}}]}}, {{to: [{{podSelector: {{matchLabels: {{app: app{:02}}}}}}}], ports: [{{port: 5432}}]}}]",
                    (a + 1) % 25
                )),
            ),
            1 => pol(
                &ns,
                &format!("from-ns-{i:04}"),
                &format!("{{matchLabels: {{app: app{a:02}}}}}"),
                "[{from: [{namespaceSelector: {matchLabels: {env: prod}}}], ports: [{port: 8080}]}]",
                None,
            ),
            2 => pol(
                &ns,
                &format!("tier-{i:04}"),
                "{matchExpressions: [{key: tier, operator: In, values: [api, db]}]}",
                &format!(
                    "[{{from: [{{podSelector: {{matchLabels: {{tier: web}}}}}}, {{podSelector: {{matchLabels: {{tier: api}}}}, namespaceSelector: {{matchLabels: {{team: team{}}}}}}}], ports: [{{port: {}, endPort: {}}}]}}]",
                    k % 4,
                    8000 + a,
                    8100 + a
                ),
                None,
            ),
            3 => pol(
                &ns,
                &format!("cidr-{i:04}"),
                &format!(
                    "{{matchLabels: {{app: app{a:02}, version: v{}}}}}",
                    1 + a % 2
                ),
                &format!(
                    "[{{from: [{{ipBlock: {{cidr: 10.{}.0.0/16, except: [10.{}.{}.0/24]}}}}]}}, {{from: [{{ipBlock: {{cidr: 192.168.{}.0/24}}}}], ports: [{{port: 443}}]}}]",
                    i % 200,
                    i % 200,
                    i % 256,
                    i % 256
                ),
                None,
            ),
            4 => pol(
                &ns,
                &format!("ports-{i:04}"),
                &format!("{{matchLabels: {{app: app{a:02}}}}}"),
                &format!(
                    "[{{ports: [{{port: {}}}, {{port: {}, protocol: UDP}}]}}]",
                    9100 + a,
                    9200 + a
                ),
                None,
            ),
            5 => pol(
                &ns,
                &format!("monitoring-{i:04}"),
                "{matchExpressions: [{key: app, operator: Exists}]}",
                &format!(
                    "[{{from: [{{podSelector: {{matchLabels: {{app: prometheus}}}}, namespaceSelector: {{matchLabels: {{team: team{}}}}}}}], ports: [{{port: 9090}}, {{port: 9091}}]}}]",
                    i % 4
                ),
                None,
            ),
            6 => pol(
                &ns,
                &format!("app-{i:04}"),
                &format!("{{matchLabels: {{app: app{a:02}}}}}"),
                &format!(
                    "[{{from: [{{podSelector: {{matchLabels: {{app: app{:02}}}}}}}, {{podSelector: {{matchLabels: {{app: app{:02}}}}}}}, {{podSelector: {{matchLabels: {{app: app{a:02}}}}}, namespaceSelector: {{matchLabels: {{env: staging}}}}}}], ports: [{{port: {}}}]}}]",
                    (a + 3) % 25,
                    (a + 5) % 25,
                    8000 + i % 500
                ),
                None,
            ),
            _ => pol(
                &ns,
                &format!("mixed-{i:04}"),
                &format!("{{matchLabels: {{tier: {}}}}}", TIERS[a % 4]),
                &format!(
                    "[{{from: [{{podSelector: {{matchLabels: {{app: app{a:02}}}}}}}, {{ipBlock: {{cidr: 100.64.{}.0/24}}}}], ports: [{{port: {}, endPort: {}}}, {{port: 53, protocol: UDP}}]}}]",
                    i % 256,
                    7100 + a,
                    7199 + a
                ),
                None,
            ),
        }
    }
    let docs = parse_documents(&docs).unwrap_or_else(|e| panic!("{e}"));
    World::new(namespaces, eps, docs)
}

fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (n_pol, n_ep, n_srv) = (arg(1, 1000), arg(2, 1000), arg(3, 250));
    let w = world(n_pol, n_ep, n_srv);
    println!(
        "world: {} policies, {} endpoints",
        w.network_policies.len(),
        w.endpoints.len()
    );
    for node in ["h2", "fake-node-00"] {
        let mut times = Vec::new();
        let mut rs = None;
        for _ in 0..5 {
            let t = Instant::now();
            rs = Some(compile(&w, node, Options::default()));
            times.push(t.elapsed());
        }
        times.sort();
        let rs = rs.unwrap();
        let (big_chain, big_rules) = rs
            .chains
            .iter()
            .map(|(n, c)| (n.clone(), c.rules.len()))
            .max_by_key(|(_, l)| *l)
            .unwrap_or_default();
        let (big_set, big_elems) = rs
            .sets
            .iter()
            .map(|(n, s)| (n.clone(), s.elements.len()))
            .max_by_key(|(_, l)| *l)
            .unwrap_or_default();
        let elements: usize = rs.sets.values().map(|s| s.elements.len()).sum();
        let rules: usize = rs.chains.values().map(|c| c.rules.len()).sum();
        let script = render(&rs);
        println!(
            "node {node}: compile min {:?} median {:?}; {} chains / {rules} rules (biggest {big_chain}: {big_rules} rules); {} sets / {elements} elements (biggest {big_set}: {big_elems}); script {} bytes",
            times[0],
            times[times.len() / 2],
            rs.chains.len(),
            rs.sets.len(),
            script.len()
        );
        if let Some(path) = std::env::var_os("SCALE_SCRIPT")
            && node == "h2"
        {
            std::fs::write(path, script).unwrap();
        }
    }
}
