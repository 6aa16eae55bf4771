//! The compiler and renderer against golden files, and the compiled rule set against the
//! reference evaluation (`explain`) on fixed and random worlds.
//!
//! Golden files live in `tests/golden/`; `TWILL_BLESS=1 cargo test -p twill-policy` rewrites
//! them (check the diff by hand before committing).

mod common;

use common::*;
use twill_policy::compile::{Element, Packet};
use twill_policy::model::*;
use twill_policy::{Dispatch, Options, Party, compile, diff, explain, render};

fn golden_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn golden_text(name: &str, text: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("TWILL_BLESS").is_some() {
        std::fs::write(&path, text).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (TWILL_BLESS=1 writes it)", path.display()));
    assert_eq!(
        text,
        expected,
        "{} differs (TWILL_BLESS=1 rewrites it)",
        path.display()
    );
}

/// A bit of everything: deny-all, namespace + pod peers, ipBlock with except, ports with
/// endPort, named ports both ways, and ordered cluster rules with Log/Pass/Deny/Allow.
pub const MIXED: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
      podSelector: {matchLabels: {pod: b}}
    - podSelector: {matchLabels: {pod: c}}
    - ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}
    ports:
    - {port: 80, endPort: 81}
    - {port: serve-80-udp, protocol: UDP}
  egress:
  - to:
    - namespaceSelector: {matchLabels: {ns: z}}
    ports:
    - {port: serve-81-tcp}
  - to:
    - ipBlock: {cidr: 2001:db8::/32}
---
apiVersion: twill.dev/v1
kind: ClusterPolicy
metadata: {name: baseline}
spec:
  order: 10
  selector: {}
  types: [Ingress, Egress]
  ingress:
  - action: Log
    protocol: ICMP
  - action: Pass
    source: {namespaceSelector: {matchLabels: {ns: y}}}
  - action: Deny
    source: {nets: [10.0.3.0/24]}
  egress:
  - action: Allow
    protocol: UDP
    destination: {nets: [10.96.0.10/32], ports: [53]}
  - action: Deny
    destination: {nets: [0.0.0.0/0], notNets: [10.0.0.0/8]}
"#;

fn mixed() -> World {
    world(MIXED)
}

#[test]
fn golden_rule_set_and_script() {
    let w = mixed();
    let rs = compile(&w, "node1", Options::default());
    twill_testkit::golden_json(&golden_dir(), "node1.json", &rs);
    golden_text("node1.nft", &render(&rs));
    let rs = compile(
        &w,
        "node2",
        Options {
            dispatch: Dispatch::Address,
        },
    );
    golden_text("node2-address.nft", &render(&rs));
}

#[test]
fn no_policy_means_an_empty_table() {
    let rs = compile(&world(""), "node1", Options::default());
    assert!(rs.chains.is_empty() && rs.ingress.is_empty() && rs.sets.is_empty());
    golden_text("empty.nft", &render(&rs));
}

#[test]
fn endpoint_churn_elsewhere_is_an_element_diff() {
    let w = mixed();
    let old = compile(&w, "node1", Options::default());
    assert_eq!(diff(Some(&old), &old), "");
    // A new pod in y labelled pod=b on node2: joins the peer set of x/web.
    let mut w2 = w.clone();
    w2.endpoints.push(Endpoint {
        namespace: "y".into(),
        name: "b2".into(),
        labels: labels(&[("pod", "b")]),
        addresses: vec!["10.0.2.9".parse().unwrap()],
        node: "node2".into(),
        interface: "twyb2".into(),
        named_ports: vec![],
    });
    let new = compile(&w2, "node1", Options::default());
    let script = diff(Some(&old), &new);
    // It joins two sets: baseline's Pass source (namespace y), and x/a's allowed
    // peer . protocol . port (x/web's peer y, pod=b, on 80-81/TCP and serve-80-udp).
    let lines: Vec<&str> = script.lines().collect();
    assert_eq!(lines.len(), 2, "{script}");
    assert!(
        lines[0].starts_with("add element inet twill-policy kp4-")
            && lines[0].ends_with("{ 10.0.2.9 . tcp . 80-81, 10.0.2.9 . udp . 80 }"),
        "{script}"
    );
    assert!(
        lines[1].starts_with("add element inet twill-policy pa4-")
            && lines[1].ends_with("{ 10.0.2.9 }"),
        "{script}"
    );
    // And back: deletes only.
    let back = diff(Some(&new), &old);
    assert_eq!(back.lines().count(), 2, "{back}");
    assert!(
        back.lines()
            .all(|l| l.starts_with("delete element inet twill-policy ")),
        "{back}"
    );
    // A peer next to an existing one: the range it joins is replaced, deletes first.
    let mut w4 = w.clone();
    let mut b3 = w2.endpoints.last().unwrap().clone();
    b3.name = "b3".into();
    b3.addresses = vec!["10.0.1.4".parse().unwrap()]; // next to x/c, also a peer
    w4.endpoints.push(b3);
    let next = diff(Some(&old), &compile(&w4, "node1", Options::default()));
    assert!(!next.contains("delete table"), "{next}");
    assert!(
        next.contains("delete element inet twill-policy kp4-")
            && next.contains("{ 10.0.1.3-10.0.1.4 . tcp . 80-81, 10.0.1.3-10.0.1.4 . udp . 80 }"),
        "{next}"
    );
    // A new policy changes rules: full replace.
    let mut w3 = w.clone();
    for d in twill_policy::parse_documents(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n, namespace: y}\nspec: {podSelector: {}}\n",
    )
    .unwrap()
    {
        w3.upsert(d);
    }
    let full = diff(Some(&old), &compile(&w3, "node1", Options::default()));
    assert!(
        full.starts_with("table inet twill-policy {}\ndelete table inet twill-policy\n"),
        "{full}"
    );
}

#[test]
fn a_local_endpoint_with_the_same_policies_is_a_map_element() {
    let w = mixed();
    let old = compile(&w, "node1", Options::default());
    let mut w2 = w.clone();
    // Another pod like x/b on node1: same chains, new dispatch entries and set elements.
    let mut b2 = w.endpoint_by_id("x/b").unwrap().clone();
    b2.name = "b2".into();
    b2.addresses = vec!["10.0.1.9".parse().unwrap(), "fd00::1:9".parse().unwrap()];
    b2.interface = "twxb2".into();
    w2.endpoints.push(b2);
    let new = compile(&w2, "node1", Options::default());
    let script = diff(Some(&old), &new);
    assert!(!script.contains("delete table"), "{script}");
    assert!(
        script.contains("add element inet twill-policy ingress-dispatch { \"twxb2\" : jump in-"),
        "{script}"
    );
    assert!(
        script.contains("add element inet twill-policy egress-dispatch { \"twxb2\" : jump eg-"),
        "{script}"
    );
}

#[test]
fn ip_block_except_becomes_ranges() {
    let rs = compile(&mixed(), "node1", Options::default());
    let kp: Vec<&twill_policy::compile::Set> = rs
        .sets
        .iter()
        .filter(|(n, _)| n.starts_with("kp4-"))
        .map(|(_, s)| s)
        .collect();
    let lo: std::net::IpAddr = "192.0.2.0".parse().unwrap();
    let hi: std::net::IpAddr = "192.0.2.127".parse().unwrap();
    assert!(
        kp.iter()
            .any(|s| s.elements.contains(&Element::NetProtoPort(
                lo,
                hi,
                Protocol::Tcp,
                PortRange { lo: 80, hi: 81 }
            )))
    );
    assert!(!kp.iter().any(|s| s.elements.iter().any(|e| matches!(
        e,
        Element::NetProtoPort(_, b, _, _) if *b > hi && b.to_string().starts_with("192.0.2.")
    ))));
}

/// nft refuses overlapping elements in an interval set: every interval set's elements must be
/// disjoint.
fn assert_disjoint(rs: &twill_policy::Ruleset) {
    fn num(ip: &std::net::IpAddr) -> u128 {
        match ip {
            std::net::IpAddr::V4(a) => u128::from(u32::from(*a)),
            std::net::IpAddr::V6(a) => u128::from(*a),
        }
    }
    for (name, set) in &rs.sets {
        let boxes: Vec<(u128, u128, Option<Protocol>, u16, u16)> = set
            .elements
            .iter()
            .filter_map(|e| match e {
                Element::Range(a, b) => Some((num(a), num(b), None, 0, 0)),
                Element::NetProtoPort(a, b, p, r) => Some((num(a), num(b), Some(*p), r.lo, r.hi)),
                Element::ProtoPort(p, r) => Some((0, 0, Some(*p), r.lo, r.hi)),
                Element::Addr(_) => None,
            })
            .collect();
        for (i, x) in boxes.iter().enumerate() {
            assert!(x.0 <= x.1 && x.3 <= x.4, "set {name}: empty element {x:?}");
            for y in &boxes[i + 1..] {
                let overlap = x.0 <= y.1 && y.0 <= x.1 && x.2 == y.2 && x.3 <= y.4 && y.3 <= x.4;
                assert!(!overlap, "set {name}: {x:?} overlaps {y:?}");
            }
        }
    }
}

/// Every pair of the nine pods, on both families, four ports, three protocols, on both
/// nodes and both dispatch kinds: what node N's rule set does equals what `explain` says
/// about the checks N is responsible for (egress of its endpoints, ingress to them).
fn agree(w: &World) {
    for node in ["node1", "node2"] {
        for dispatch in [Dispatch::Interface, Dispatch::Address] {
            let rs = compile(w, node, Options { dispatch });
            assert_disjoint(&rs);
            for a in &w.endpoints {
                for b in &w.endpoints {
                    if a.id() == b.id() {
                        continue;
                    }
                    let pairs = a.addresses.iter().flat_map(|sa| {
                        b.addresses
                            .iter()
                            .filter(move |sb| sb.is_ipv4() == sa.is_ipv4())
                            .map(move |sb| (sa, sb))
                    });
                    for (sa, sb) in pairs {
                        for (port, proto) in [
                            (80, Protocol::Tcp),
                            (81, Protocol::Tcp),
                            (81, Protocol::Udp),
                            (80, Protocol::Sctp),
                            (53, Protocol::Udp),
                            (0, Protocol::Icmp),
                        ] {
                            agree_one(w, &rs, node, Party::Ip(*sa), Party::Ip(*sb), port, proto);
                        }
                    }
                }
                for ext in [
                    "192.0.2.7",
                    "192.0.2.200",
                    "10.96.0.10",
                    "2001:db8::1",
                    "198.51.100.1",
                ] {
                    let ext: std::net::IpAddr = ext.parse().unwrap();
                    for sa in &a.addresses {
                        if sa.is_ipv4() != ext.is_ipv4() {
                            continue;
                        }
                        for (port, proto) in [(80, Protocol::Tcp), (53, Protocol::Udp)] {
                            agree_one(w, &rs, node, Party::Ip(*sa), Party::Ip(ext), port, proto);
                            agree_one(w, &rs, node, Party::Ip(ext), Party::Ip(*sa), port, proto);
                        }
                    }
                }
            }
        }
    }
}

fn agree_one(
    w: &World,
    rs: &twill_policy::Ruleset,
    node: &str,
    from: Party,
    to: Party,
    port: u16,
    proto: Protocol,
) {
    let d = explain(w, &from, &to, port, proto).unwrap();
    let ep = |p: &Party| match p {
        Party::Ip(ip) => w.endpoint_by_ip(*ip),
        Party::Endpoint(_) => unreachable!(),
    };
    let (src, dst) = (ep(&from), ep(&to));
    let src_local = src.filter(|e| e.node == node);
    let dst_local = dst.filter(|e| e.node == node);
    if src_local.is_none() && dst_local.is_none() {
        return;
    }
    let expected =
        (src_local.is_none() || d.egress.allowed) && (dst_local.is_none() || d.ingress.allowed);
    let pkt = Packet {
        iif: src_local.map(|e| e.interface.clone()),
        oif: dst_local.map(|e| e.interface.clone()),
        src: d.src,
        dst: d.dst,
        protocol: d.protocol,
        port: d.port,
    };
    assert_eq!(
        rs.accepts(&pkt),
        expected,
        "node {node} {:?}: {pkt:?}\n{d}",
        rs.dispatch
    );
}

#[test]
fn compiled_agrees_with_explain_on_the_mixed_world() {
    agree(&mixed());
}

mod random {
    //! Random worlds: random labels on the nine pods and three namespaces, and random
    //! policies drawn from a small vocabulary, so that selectors actually overlap.
    use super::*;
    use proptest::prelude::*;

    fn selector() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{}".to_string()),
            (0..3usize).prop_map(|i| format!("{{matchLabels: {{pod: {}}}}}", PODS[i])),
            (0..2usize).prop_map(|i| format!("{{matchLabels: {{tier: t{i}}}}}")),
            Just("{matchExpressions: [{key: tier, operator: Exists}]}".to_string()),
            Just("{matchExpressions: [{key: tier, operator: NotIn, values: [t0]}]}".to_string()),
        ]
    }

    fn ns_selector() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{}".to_string()),
            (0..3usize).prop_map(|i| format!("{{matchLabels: {{ns: {}}}}}", NAMESPACES[i])),
            Just("{matchLabels: {env: prod}}".to_string()),
        ]
    }

    fn peer() -> impl Strategy<Value = String> {
        prop_oneof![
            selector().prop_map(|s| format!("{{podSelector: {s}}}")),
            ns_selector().prop_map(|s| format!("{{namespaceSelector: {s}}}")),
            (selector(), ns_selector())
                .prop_map(|(p, n)| format!("{{podSelector: {p}, namespaceSelector: {n}}}")),
            Just("{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}".to_string()),
            Just("{ipBlock: {cidr: 10.0.1.0/24}}".to_string()),
            Just("{ipBlock: {cidr: 192.0.2.0/24}}".to_string()),
            Just("{ipBlock: {cidr: 'fd00::/96', except: ['fd00::1:0/112']}}".to_string()),
        ]
    }

    fn port() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{port: 80}".to_string()),
            Just("{port: 80, endPort: 81}".to_string()),
            Just("{protocol: UDP}".to_string()),
            Just("{protocol: UDP, port: 53}".to_string()),
            Just("{port: serve-81-tcp}".to_string()),
            Just("{port: serve-81-udp, protocol: UDP}".to_string()),
            Just("{protocol: SCTP, port: 80}".to_string()),
        ]
    }

    fn rule(peer_key: &'static str) -> impl Strategy<Value = String> {
        (
            prop::option::of(prop::collection::vec(peer(), 0..3)),
            prop::option::of(prop::collection::vec(port(), 0..3)),
        )
            .prop_map(move |(peers, ports)| {
                let mut parts = Vec::new();
                if let Some(p) = peers {
                    parts.push(format!("{peer_key}: [{}]", p.join(", ")));
                }
                if let Some(p) = ports {
                    parts.push(format!("ports: [{}]", p.join(", ")));
                }
                format!("{{{}}}", parts.join(", "))
            })
    }

    fn k8s_policy() -> impl Strategy<Value = String> {
        (
            0..3usize,
            selector(),
            prop::option::of(prop::collection::vec(rule("from"), 0..3)),
            prop::option::of(prop::collection::vec(rule("to"), 0..3)),
            prop_oneof![Just(""), Just("[Ingress]"), Just("[Egress]"), Just("[Ingress, Egress]")],
        )
            .prop_map(|(ns, sel, ingress, egress, types)| {
                let mut spec = format!("  podSelector: {sel}\n");
                if !types.is_empty() {
                    spec.push_str(&format!("  policyTypes: {types}\n"));
                }
                if let Some(r) = ingress {
                    spec.push_str(&format!("  ingress: [{}]\n", r.join(", ")));
                }
                if let Some(r) = egress {
                    spec.push_str(&format!("  egress: [{}]\n", r.join(", ")));
                }
                format!(
                    "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: NAME, namespace: {}}}\nspec:\n{spec}",
                    NAMESPACES[ns]
                )
            })
    }

    fn entity() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("{}".to_string()),
            selector().prop_map(|s| format!("{{selector: {s}}}")),
            ns_selector().prop_map(|s| format!("{{namespaceSelector: {s}}}")),
            Just("{nets: [10.0.0.0/16], notNets: [10.0.3.0/24]}".to_string()),
            Just("{notNets: [10.0.1.0/24, 'fd00::2:0/112']}".to_string()),
            Just("{nets: ['fd00::/64', 192.0.2.0/24]}".to_string()),
            (selector(), Just("{nets: [10.0.1.0/24]}")).prop_map(|(s, _)| format!(
                "{{selector: {s}, nets: [10.0.1.0/24, 'fd00::1:0/112']}}"
            )),
        ]
    }

    fn cluster_rule() -> impl Strategy<Value = String> {
        (
            prop_oneof![Just("Allow"), Just("Deny"), Just("Log"), Just("Pass")],
            prop_oneof![
                Just(""),
                Just(", protocol: TCP, destination: {ports: [80]}"),
                Just(", protocol: UDP, destination: {ports: ['50:90']}"),
                Just(", protocol: ICMP"),
                Just(", protocol: TCP"),
            ],
            entity(),
            entity(),
        )
            .prop_map(|(action, proto, src, dst)| {
                // The destination ports variant carries its own destination.
                if proto.contains("destination") {
                    format!("{{action: {action}{proto}, source: {src}}}")
                } else {
                    format!("{{action: {action}{proto}, source: {src}, destination: {dst}}}")
                }
            })
    }

    fn cluster_policy() -> impl Strategy<Value = String> {
        (
            0..5i32,
            selector(),
            prop::option::of(ns_selector()),
            prop::collection::vec(cluster_rule(), 0..3),
            prop::collection::vec(cluster_rule(), 0..3),
        )
            .prop_map(|(order, sel, ns, ingress, egress)| {
                let mut spec = format!("  order: {order}\n  selector: {sel}\n  types: [Ingress, Egress]\n");
                if let Some(n) = ns {
                    spec.push_str(&format!("  namespaceSelector: {n}\n"));
                }
                spec.push_str(&format!("  ingress: [{}]\n  egress: [{}]\n", ingress.join(", "), egress.join(", ")));
                format!("apiVersion: twill.dev/v1\nkind: ClusterPolicy\nmetadata: {{name: NAME}}\nspec:\n{spec}")
            })
    }

    fn random_world() -> impl Strategy<Value = World> {
        (
            prop::collection::vec(k8s_policy(), 0..4),
            prop::collection::vec(cluster_policy(), 0..3),
            prop::collection::vec(prop::option::of(0..2usize), 9),
            prop::collection::vec(any::<bool>(), 3),
            prop::collection::vec(any::<bool>(), 9),
        )
            .prop_map(|(k8s, cluster, tiers, prod, extra)| {
                let mut docs = Vec::new();
                for (i, p) in k8s.iter().enumerate() {
                    docs.push(p.replace("NAME", &format!("k{i}")));
                }
                for (i, p) in cluster.iter().enumerate() {
                    docs.push(p.replace("NAME", &format!("c{i}")));
                }
                let text = docs.join("\n---\n");
                let mut w = world(&text);
                for (ep, tier) in w.endpoints.iter_mut().zip(tiers) {
                    if let Some(t) = tier {
                        ep.labels.insert("tier".into(), format!("t{t}"));
                    }
                }
                // A second IPv4 address (outside 10.0.0.0/16) on some pods, so that cluster
                // rules can match some of an endpoint's addresses and not others.
                for (ep, x) in w.endpoints.iter_mut().zip(extra) {
                    if x {
                        let second = match ep.addresses[0] {
                            std::net::IpAddr::V4(a) => {
                                let o = a.octets();
                                format!("10.9.{}.{}", o[2], o[3]).parse().unwrap()
                            }
                            other => other,
                        };
                        ep.addresses.push(second);
                    }
                }
                for (ns, p) in w.namespaces.iter_mut().zip(prod) {
                    if p {
                        ns.labels.insert("env".into(), "prod".into());
                    }
                }
                w
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn compiled_agrees_with_explain(w in random_world()) {
            agree(&w);
        }

        #[test]
        fn rendered_scripts_are_deterministic(w in random_world()) {
            let a = render(&compile(&w, "node1", Options::default()));
            let mut shuffled = w.clone();
            shuffled.endpoints.reverse();
            let b = render(&compile(&shuffled, "node1", Options::default()));
            prop_assert_eq!(a, b);
        }
    }
}
