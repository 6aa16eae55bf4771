//! Kubernetes NetworkPolicy semantics and the ordered cluster policies, checked with
//! `explain` on the upstream e2e test world (see `common`), one test per upstream case.

mod common;

use common::*;
use twill_policy::model::Protocol::{Sctp, Tcp, Udp};
use twill_policy::model::*;
use twill_policy::{Party, Reason, explain};

/// A NetworkPolicy document in namespace `ns` with `spec` (indented by two spaces).
fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

fn cp(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: twill.dev/v1\nkind: ClusterPolicy\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

#[test]
fn no_policy_allows_everything() {
    check(&world(""), 80, Tcp, &Reach::new(true));
}

#[test]
fn default_deny_ingress() {
    let w = world(&np(
        "x",
        "deny",
        "  podSelector: {}\n  policyTypes: [Ingress]\n",
    ));
    let want = Reach::new(true).set(|_| true, in_ns("x"), false);
    check(&w, 80, Tcp, &want);
    check(&w, 81, Udp, &want);
}

#[test]
fn default_deny_egress() {
    let w = world(&np(
        "x",
        "deny",
        "  podSelector: {}\n  policyTypes: [Egress]\n",
    ));
    check(
        &w,
        80,
        Tcp,
        &Reach::new(true).set(in_ns("x"), |_| true, false),
    );
}

#[test]
fn default_deny_all() {
    let w = world(&np(
        "x",
        "deny",
        "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
    ));
    let want = Reach::new(true)
        .set(in_ns("x"), |_| true, false)
        .set(|_| true, in_ns("x"), false);
    check(&w, 80, Tcp, &want);
}

#[test]
fn allow_all_ingress_with_empty_rule() {
    let w = world(&np("x", "allow", "  podSelector: {}\n  ingress:\n  - {}\n"));
    check(&w, 80, Tcp, &Reach::new(true));
}

#[test]
fn pod_selector_within_namespace() {
    // x/a accepts only from pods with pod=b in x.
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {pod: b}}\n",
    ));
    let want = Reach::new(true).to("x/a", false).pair("x/b", "x/a", true);
    check(&w, 80, Tcp, &want);
}

#[test]
fn allow_from_all_namespaces() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {}\n",
    ));
    check(&w, 80, Tcp, &Reach::new(true));
}

#[test]
fn allow_from_namespace_by_label() {
    // Only namespaces other than x (ns in (y, z)).
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions:\n        - {key: ns, operator: NotIn, values: [x]}\n",
    ));
    let want = Reach::new(true)
        .to("x/a", false)
        .set(|p| !p.starts_with("x/"), is("x/a"), true);
    check(&w, 80, Tcp, &want);
}

#[test]
fn namespace_by_default_name_label() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels: {kubernetes.io/metadata.name: y}\n",
    ));
    let want = Reach::new(true)
        .to("x/a", false)
        .set(in_ns("y"), is("x/a"), true);
    check(&w, 80, Tcp, &want);
}

#[test]
fn pod_and_namespace_selector_in_one_peer_is_and() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: b}}\n",
    ));
    let want = Reach::new(true).to("x/a", false).pair("y/b", "x/a", true);
    check(&w, 80, Tcp, &want);
}

#[test]
fn pod_and_namespace_selector_in_two_peers_is_or() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {ns: y}}\n    - podSelector: {matchLabels: {pod: b}}\n",
    ));
    // All of y, and x/b (podSelector alone means the policy's namespace).
    let want = Reach::new(true)
        .to("x/a", false)
        .set(in_ns("y"), is("x/a"), true)
        .pair("x/b", "x/a", true);
    check(&w, 80, Tcp, &want);
}

#[test]
fn pod_selector_with_match_expressions() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions:\n        - {key: pod, operator: In, values: [b]}\n",
    ));
    check(
        &w,
        80,
        Tcp,
        &Reach::new(true).to("x/a", false).pair("x/b", "x/a", true),
    );
}

#[test]
fn policy_based_on_ports() {
    // Only port 81 from namespaces y, z.
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n    ports:\n    - port: 81\n",
    ));
    check(&w, 80, Tcp, &Reach::new(true).to("x/a", false));
    check(
        &w,
        81,
        Tcp,
        &Reach::new(true)
            .to("x/a", false)
            .set(|p| !p.starts_with("x/"), is("x/a"), true),
    );
    // TCP was meant: UDP to 81 is not allowed.
    check(&w, 81, Udp, &Reach::new(true).to("x/a", false));
}

#[test]
fn stacked_policies_are_a_union() {
    let w = world(&format!(
        "{}{}",
        np(
            "x",
            "p80",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 80}]\n"
        ),
        np(
            "x",
            "p81",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81}]\n"
        ),
    ));
    check(&w, 80, Tcp, &Reach::new(true));
    check(&w, 81, Tcp, &Reach::new(true));
    check(&w, 82, Tcp, &Reach::new(true).to("x/a", false));
}

#[test]
fn allow_all_takes_precedence_over_deny_all() {
    let w = world(&format!(
        "{}{}",
        np(
            "x",
            "deny",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"
        ),
        np(
            "x",
            "allow",
            "  podSelector: {}\n  ingress: [{}]\n  egress: [{}]\n"
        ),
    ));
    check(&w, 80, Tcp, &Reach::new(true));
}

#[test]
fn named_port_on_ingress() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-80-tcp}]\n",
    ));
    check(&w, 80, Tcp, &Reach::new(true));
    check(&w, 81, Tcp, &Reach::new(true).to("x/a", false));
    // The name says TCP; the protocol field defaults to TCP, so UDP 80 does not match it.
    check(&w, 80, Udp, &Reach::new(true).to("x/a", false));
}

#[test]
fn named_port_on_egress_resolves_on_the_destination() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: serve-81-udp, protocol: UDP}]\n",
    ));
    check(&w, 81, Udp, &Reach::new(true));
    check(&w, 80, Udp, &Reach::new(true).from("x/a", false));
    // Without policyTypes the egress section also makes the policy isolate ingress.
    let w2 = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  egress:\n  - ports: [{port: serve-81-udp, protocol: UDP}]\n",
    ));
    check(&w2, 81, Udp, &Reach::new(true).to("x/a", false));
    // To a plain address a name means nothing.
    let d = explain(
        &w,
        &Party::parse("x/a"),
        &Party::parse("192.0.2.1"),
        81,
        Udp,
    )
    .unwrap();
    assert!(!d.allowed, "{d}");
}

#[test]
fn end_port_range() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 80, endPort: 81, protocol: TCP}]\n",
    ));
    check(&w, 80, Tcp, &Reach::new(true));
    check(&w, 81, Tcp, &Reach::new(true));
    check(&w, 79, Tcp, &Reach::new(true).to("x/a", false));
    check(&w, 82, Tcp, &Reach::new(true).to("x/a", false));
}

#[test]
fn protocol_without_port_is_every_port_of_it() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: UDP}]\n",
    ));
    check(&w, 80, Udp, &Reach::new(true));
    check(&w, 12345, Udp, &Reach::new(true));
    check(&w, 80, Tcp, &Reach::new(true).to("x/a", false));
    // SCTP is not TCP.
    check(&w, 80, Sctp, &Reach::new(true).to("x/a", false));
}

#[test]
fn sctp_policy_isolates_and_allows_only_sctp() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 80, protocol: SCTP}]\n",
    ));
    check(&w, 80, Sctp, &Reach::new(true));
    check(&w, 80, Tcp, &Reach::new(true).to("x/a", false));
}

#[test]
fn egress_denied_at_client_even_if_server_allows() {
    let w = world(&format!(
        "{}{}",
        np(
            "x",
            "client",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"
        ),
        np("y", "server", "  podSelector: {}\n  ingress: [{}]\n"),
    ));
    let d = explain(&w, &Party::parse("x/a"), &Party::parse("y/b"), 80, Tcp).unwrap();
    assert!(!d.allowed);
    assert!(d.ingress.allowed);
    assert_eq!(
        d.egress.reason,
        Reason::Isolated {
            policies: vec!["NetworkPolicy x/client".into()]
        }
    );
    check(&w, 80, Tcp, &Reach::new(true).from("x/a", false));
}

#[test]
fn egress_to_pod_by_pod_and_namespace_selector() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {ns: y}}\n      podSelector: {matchLabels: {pod: a}}\n",
    ));
    check(
        &w,
        80,
        Tcp,
        &Reach::new(true).from("x/a", false).pair("x/a", "y/a", true),
    );
}

#[test]
fn ingress_and_egress_controlled_independently() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n  egress:\n  - to: [{podSelector: {matchLabels: {pod: c}}}]\n",
    ));
    let want = Reach::new(true)
        .to("x/a", false)
        .from("x/a", false)
        .pair("x/b", "x/a", true)
        .pair("x/a", "x/c", true);
    check(&w, 80, Tcp, &want);
}

#[test]
fn egress_to_cidr_and_except() {
    // x/a may reach 10.0.2.0/24 (namespace y) except y/b.
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.2/32]}\n",
    ));
    let want = Reach::new(true)
        .from("x/a", false)
        .pair("x/a", "y/a", true)
        .pair("x/a", "y/c", true);
    check(&w, 80, Tcp, &want);
    let ok = explain(
        &w,
        &Party::parse("x/a"),
        &Party::parse("10.0.2.200"),
        443,
        Tcp,
    )
    .unwrap();
    assert!(ok.allowed, "{ok}");
    let no = explain(
        &w,
        &Party::parse("x/a"),
        &Party::parse("10.0.3.1"),
        443,
        Tcp,
    )
    .unwrap();
    assert!(!no.allowed, "{no}");
    // The IPv6 address of y/a is not in the block.
    let v6 = explain(
        &w,
        &Party::parse("fd00::1:1"),
        &Party::parse("fd00::2:1"),
        80,
        Tcp,
    )
    .unwrap();
    assert!(!v6.allowed, "{v6}");
}

#[test]
fn address_in_except_of_one_policy_and_cidr_of_another_is_allowed() {
    let w = world(&format!(
        "{}{}",
        np(
            "x",
            "p1",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.2.0/24, except: [10.0.2.2/32]}}]\n"
        ),
        np(
            "x",
            "p2",
            "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.2.2/32}}]\n"
        ),
    ));
    let d = explain(&w, &Party::parse("x/a"), &Party::parse("y/b"), 80, Tcp).unwrap();
    assert!(d.allowed, "{d}");
    assert_eq!(
        d.egress.reason,
        Reason::K8sRule(twill_policy::RuleRef {
            policy: "NetworkPolicy x/p2".into(),
            direction: Direction::Egress,
            index: 0
        })
    );
}

#[test]
fn ip_block_matches_external_sources_on_ingress() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 192.0.2.0/24}}]\n",
    ));
    assert!(
        explain(
            &w,
            &Party::parse("192.0.2.9"),
            &Party::parse("x/a"),
            80,
            Tcp
        )
        .unwrap()
        .allowed
    );
    assert!(
        !explain(
            &w,
            &Party::parse("198.51.100.1"),
            &Party::parse("x/a"),
            80,
            Tcp
        )
        .unwrap()
        .allowed
    );
    // A pod selector peer never matches a plain address.
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n",
    ));
    assert!(
        !explain(
            &w,
            &Party::parse("192.0.2.9"),
            &Party::parse("x/a"),
            80,
            Tcp
        )
        .unwrap()
        .allowed
    );
}

#[test]
fn policies_in_other_namespaces_do_not_select() {
    // The selector matches pod=a, but only in the policy's namespace.
    let w = world(&np("y", "deny", "  podSelector: {matchLabels: {pod: a}}\n"));
    check(&w, 80, Tcp, &Reach::new(true).to("y/a", false));
}

#[test]
fn updated_and_deleted_policies() {
    let mut w = world(&np("x", "p", "  podSelector: {}\n"));
    check(
        &w,
        80,
        Tcp,
        &Reach::new(true).set(|_| true, in_ns("x"), false),
    );
    // Update: allow from y.
    for doc in twill_policy::parse_documents(&np(
        "x",
        "p",
        "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]\n",
    ))
    .unwrap()
    {
        w.upsert(doc);
    }
    check(
        &w,
        80,
        Tcp,
        &Reach::new(true).set(|p| !p.starts_with("y/"), in_ns("x"), false),
    );
    // Relabel namespace z to ns=y: z is now allowed too.
    w.namespaces[2].labels.insert("ns".into(), "y".into());
    check(
        &w,
        80,
        Tcp,
        &Reach::new(true).set(in_ns("x"), in_ns("x"), false),
    );
    // Relabel pod x/b out of the... policy selects all of x anyway; delete the policy.
    assert!(w.remove_network_policy("x", "p"));
    assert!(!w.remove_network_policy("x", "p"));
    check(&w, 80, Tcp, &Reach::new(true));
}

#[test]
fn explain_messages() {
    let w = world(&format!(
        "{}{}",
        np("x", "deny", "  podSelector: {}\n"),
        np(
            "y",
            "web",
            "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{ports: [{port: 80}]}]\n"
        ),
    ));
    let d = explain(&w, &Party::parse("y/b"), &Party::parse("x/a"), 80, Tcp).unwrap();
    let text = d.to_string();
    assert!(
        text.contains("10.0.2.2 -> 10.0.1.1:80/TCP: DENIED"),
        "{text}"
    );
    assert!(
        text.contains("egress of y/b: no policy selects y/b for egress: allowed by default"),
        "{text}"
    );
    assert!(
        text.contains("ingress of x/a: isolated by NetworkPolicy x/deny, no rule allows: denied"),
        "{text}"
    );
    let d = explain(&w, &Party::parse("x/a"), &Party::parse("y/a"), 80, Tcp).unwrap();
    assert!(
        d.to_string()
            .contains("allowed by NetworkPolicy y/web ingress rule 0"),
        "{d}"
    );
    // IPv6 when asked by address.
    let d = explain(
        &w,
        &Party::parse("fd00::1:1"),
        &Party::parse("y/a"),
        80,
        Tcp,
    )
    .unwrap();
    assert_eq!(d.dst.to_string(), "fd00::2:1");
    assert!(explain(&w, &Party::parse("q/zz"), &Party::parse("y/a"), 80, Tcp).is_err());
    assert!(
        explain(
            &w,
            &Party::parse("10.0.1.1"),
            &Party::parse("fd00::1"),
            80,
            Tcp
        )
        .is_err()
    );
}

// ---- cluster policies ---------------------------------------------------------------------

#[test]
fn cluster_deny_beats_kubernetes_allow() {
    let w = world(&format!(
        "{}{}",
        np("x", "allow", "  podSelector: {}\n  ingress: [{}]\n"),
        cp(
            "no-z",
            "  order: 10\n  selector: {}\n  namespaceSelector: {matchLabels: {ns: x}}\n  ingress:\n  - action: Deny\n    source:\n      namespaceSelector: {matchLabels: {ns: z}}\n",
        ),
    ));
    check(
        &w,
        80,
        Tcp,
        &Reach::new(true).set(in_ns("z"), in_ns("x"), false),
    );
    let d = explain(&w, &Party::parse("z/a"), &Party::parse("x/b"), 80, Tcp).unwrap();
    assert!(
        d.to_string()
            .contains("denied by ClusterPolicy no-z ingress rule 0 (Deny)"),
        "{d}"
    );
}

#[test]
fn cluster_allow_beats_kubernetes_isolation() {
    let w = world(&format!(
        "{}{}",
        np("x", "deny", "  podSelector: {}\n"),
        cp(
            "monitoring",
            "  order: 5\n  selector: {}\n  ingress:\n  - action: Allow\n    protocol: TCP\n    source:\n      selector: {matchLabels: {pod: c}}\n      namespaceSelector: {matchLabels: {ns: z}}\n    destination:\n      ports: [\"80:81\"]\n",
        ),
    ));
    let want = Reach::new(true)
        .set(|_| true, in_ns("x"), false)
        .set(is("z/c"), in_ns("x"), true);
    check(&w, 80, Tcp, &want);
    check(&w, 81, Tcp, &want);
    check(
        &w,
        82,
        Tcp,
        &Reach::new(true).set(|_| true, in_ns("x"), false),
    );
    check(
        &w,
        80,
        Udp,
        &Reach::new(true).set(|_| true, in_ns("x"), false),
    );
}

#[test]
fn cluster_order_first_decision_wins() {
    // order 1 allows from y, order 2 denies everything: y still gets in.
    let w = world(&format!(
        "{}{}",
        cp(
            "b-deny",
            "  order: 2\n  selector: {matchLabels: {pod: a}}\n  ingress:\n  - action: Deny\n"
        ),
        cp(
            "a-allow",
            "  order: 1\n  selector: {matchLabels: {pod: a}}\n  ingress:\n  - action: Allow\n    source: {namespaceSelector: {matchLabels: {ns: y}}}\n",
        ),
    ));
    let want = Reach::new(true)
        .set(|_| true, |p| p.ends_with("/a"), false)
        .set(in_ns("y"), |p| p.ends_with("/a"), true);
    check(&w, 80, Tcp, &want);
}

#[test]
fn pass_hands_over_to_kubernetes_policies() {
    // Pass for x, then a later Deny-all that x skips; Kubernetes decides for x.
    let w = world(&format!(
        "{}{}{}",
        cp(
            "pass",
            "  order: 1\n  selector: {}\n  ingress:\n  - action: Log\n  - action: Pass\n    source: {namespaceSelector: {matchLabels: {ns: x}}}\n",
        ),
        cp(
            "deny",
            "  order: 2\n  selector: {}\n  ingress:\n  - action: Deny\n"
        ),
        np(
            "y",
            "allow-x-only",
            "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]\n"
        ),
    ));
    // Only sources in x get past the cluster tier; then y admits x/a only, others admit all.
    let want = Reach::new(false)
        .set(in_ns("x"), |p| !p.starts_with("y/"), true)
        .set(is("x/a"), in_ns("y"), true);
    check(&w, 80, Tcp, &want);
    let d = explain(&w, &Party::parse("x/b"), &Party::parse("y/a"), 80, Tcp).unwrap();
    assert_eq!(
        d.ingress.passed.as_ref().unwrap().policy,
        "ClusterPolicy pass"
    );
    assert_eq!(d.ingress.logged.len(), 1);
    assert!(
        d.to_string()
            .contains("isolated by NetworkPolicy y/allow-x-only"),
        "{d}"
    );
    assert!(
        d.to_string()
            .contains("[logged by ClusterPolicy pass ingress rule 0]"),
        "{d}"
    );
}

#[test]
fn no_cluster_decision_falls_through_like_pass() {
    let w = world(&cp(
        "log-only",
        "  order: 1\n  selector: {}\n  types: [Ingress, Egress]\n  ingress: [{action: Log}]\n  egress: [{action: Log}]\n",
    ));
    check(&w, 80, Tcp, &Reach::new(true));
    let d = explain(&w, &Party::parse("x/a"), &Party::parse("y/a"), 80, Tcp).unwrap();
    assert_eq!(d.ingress.reason, Reason::NotIsolated);
    assert_eq!(d.egress.logged.len(), 1);
}

#[test]
fn cluster_egress_nets_and_not_nets() {
    // Egress from x/a: deny 10.0.0.0/16 except namespace z's /24 (notNets carve it out).
    let w = world(&cp(
        "egress",
        "  order: 1\n  selector: {matchLabels: {pod: a}}\n  namespaceSelector: {matchLabels: {ns: x}}\n  egress:\n  - action: Deny\n    destination:\n      nets: [10.0.0.0/16]\n      notNets: [10.0.3.0/24]\n",
    ));
    let want = Reach::new(true)
        .set(is("x/a"), |_| true, false)
        .set(is("x/a"), in_ns("z"), true);
    check(&w, 80, Tcp, &want);
    // The IPv6 addresses are outside the nets.
    assert!(
        explain(
            &w,
            &Party::parse("fd00::1:1"),
            &Party::parse("fd00::2:1"),
            80,
            Tcp
        )
        .unwrap()
        .allowed
    );
}

#[test]
fn cluster_icmp_and_protocols() {
    let w = world(&cp(
        "no-icmp",
        "  order: 1\n  selector: {}\n  ingress:\n  - action: Deny\n    protocol: ICMP\n",
    ));
    assert!(
        !explain(
            &w,
            &Party::parse("x/a"),
            &Party::parse("y/a"),
            0,
            Protocol::Icmp
        )
        .unwrap()
        .allowed
    );
    check(&w, 80, Tcp, &Reach::new(true));
}

#[test]
fn empty_from_list_is_every_source_but_empty_ingress_is_none() {
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {}\n  ingress: [{from: [], ports: []}]\n",
    ));
    check(&w, 80, Tcp, &Reach::new(true));
    let w = world(&np("x", "p", "  podSelector: {}\n  ingress: []\n"));
    check(
        &w,
        80,
        Tcp,
        &Reach::new(true).set(|_| true, in_ns("x"), false),
    );
}

#[test]
fn traffic_between_pods_of_one_namespace_is_policed_too() {
    // Isolation is per pod, not per namespace boundary.
    let w = world(&np(
        "x",
        "p",
        "  podSelector: {matchLabels: {pod: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {pod: c}}}]}]\n",
    ));
    check(
        &w,
        80,
        Tcp,
        &Reach::new(true).to("x/b", false).pair("x/c", "x/b", true),
    );
}
