//! Parsing: Kubernetes YAML verbatim, cluster policies, defaulting, and errors that name the
//! document and line.

use twill_policy::model::*;
use twill_policy::parse_documents;

const KUBECTL_OUTPUT: &str = r#"
# kubectl get networkpolicy -o yaml, as is
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  annotations:
    kubectl.kubernetes.io/last-applied-configuration: |
      {"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy"}
  creationTimestamp: "2024-01-01T00:00:00Z"
  generation: 1
  labels:
    team: a
  name: test-network-policy
  namespace: prod
  resourceVersion: "12345"
  uid: 0b5f6a1e-0000-4000-8000-000000000000
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes:
  - Ingress
  - Egress
  ingress:
  - from:
    - ipBlock:
        cidr: 172.17.0.0/16
        except:
        - 172.17.1.0/24
    - namespaceSelector:
        matchLabels:
          project: myproject
    - podSelector:
        matchLabels:
          role: frontend
    ports:
    - protocol: TCP
      port: 6379
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/24
    ports:
    - protocol: TCP
      port: 32000
      endPort: 32768
status: {}
---
---
# an empty document above is skipped
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny
spec:
  podSelector: {}
"#;

#[test]
fn kubectl_output_is_accepted_verbatim() {
    let docs = parse_documents(KUBECTL_OUTPUT).unwrap();
    assert_eq!(docs.len(), 2);
    let PolicyDoc::NetworkPolicy(p) = &docs[0] else {
        panic!("not a NetworkPolicy")
    };
    assert_eq!(p.id(), "prod/test-network-policy");
    assert_eq!(p.policy_types, vec![Direction::Ingress, Direction::Egress]);
    assert_eq!(p.ingress[0].peers.len(), 3);
    assert_eq!(
        p.egress[0].ports[0],
        PolicyPort {
            protocol: Protocol::Tcp,
            port: Some(PortValue::Number(32000)),
            end_port: Some(32768)
        }
    );
    let PolicyDoc::NetworkPolicy(d) = &docs[1] else {
        panic!("not a NetworkPolicy")
    };
    assert_eq!(d.id(), "default/default-deny");
    assert_eq!(d.policy_types, vec![Direction::Ingress]);
    assert!(d.ingress.is_empty() && d.pod_selector.is_empty());
}

const CLUSTER: &str = r#"
apiVersion: twill.dev/v1
kind: ClusterPolicy
metadata:
  name: quarantine
spec:
  order: 10
  selector:
    matchExpressions:
    - {key: quarantine, operator: Exists}
  types: [Ingress, Egress]
  ingress:
  - action: Log
  - action: Deny
  egress:
  - action: Allow
    protocol: UDP
    destination:
      nets: [10.96.0.10/32]
      ports: [53]
  - action: Deny
---
apiVersion: twill.dev/v1
kind: ClusterPolicy
metadata:
  name: admin
spec:
  order: 100
  selector: {}
  namespaceSelector:
    matchLabels: {env: prod}
  ingress:
  - action: Allow
    protocol: TCP
    source:
      namespaceSelector:
        matchLabels: {role: monitoring}
      notNets: [10.0.0.0/8]
    destination:
      ports: [9100, "8000:8100"]
  - action: Pass
"#;

#[test]
fn cluster_policies_parse_with_defaults() {
    let docs = parse_documents(CLUSTER).unwrap();
    let PolicyDoc::ClusterPolicy(q) = &docs[0] else {
        panic!()
    };
    assert_eq!(q.order, Some(10.0));
    assert_eq!(
        q.egress[0].destination.ports,
        vec![PortRange { lo: 53, hi: 53 }]
    );
    assert_eq!(q.egress[0].protocol, Some(Protocol::Udp));
    let PolicyDoc::ClusterPolicy(a) = &docs[1] else {
        panic!()
    };
    // No `types`: the directions that have rules.
    assert_eq!(a.types, vec![Direction::Ingress]);
    assert_eq!(
        a.ingress[0].destination.ports,
        vec![
            PortRange { lo: 8000, hi: 8100 },
            PortRange { lo: 9100, hi: 9100 }
        ]
    );
    assert_eq!(a.ingress[0].source.not_nets[0].to_string(), "10.0.0.0/8");
}

#[test]
fn policy_types_default_as_the_api_server_does() {
    let doc = |spec: &str| {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p}}\nspec:\n{spec}"
        );
        match parse_documents(&text).unwrap().remove(0) {
            PolicyDoc::NetworkPolicy(p) => p.policy_types,
            _ => unreachable!(),
        }
    };
    use Direction::*;
    assert_eq!(doc("  podSelector: {}\n"), vec![Ingress]);
    assert_eq!(
        doc("  podSelector: {}\n  egress: [{}]\n"),
        vec![Ingress, Egress]
    );
    // An empty egress list is no egress section.
    assert_eq!(doc("  podSelector: {}\n  egress: []\n"), vec![Ingress]);
    assert_eq!(
        doc("  podSelector: {}\n  policyTypes: [Egress]\n"),
        vec![Egress]
    );
    assert_eq!(
        doc("  podSelector: {}\n  policyTypes: [Egress, Ingress]\n  ingress: [{}]\n"),
        vec![Ingress, Egress]
    );
}

/// Parses `text`, expects an error, checks the document, line and message parts.
fn refused(text: &str, document: usize, line: u64, parts: &[&str]) {
    let err = parse_documents(text).expect_err("should be refused");
    let shown = err.to_string();
    assert_eq!((err.document, err.line), (document, line), "{shown}");
    for p in parts {
        assert!(shown.contains(p), "{shown:?} lacks {p:?}");
    }
}

const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: ns\nspec:\n";

#[test]
fn errors_name_document_and_line() {
    let ok = format!("{HEAD}  podSelector: {{}}\n---\n");
    // Document 2 starts at line 8; its spec at line 14.
    let two = |spec: &str| format!("{ok}{HEAD}{spec}");
    refused(
        &two("  podSelector: {}\n  ingres: []\n"),
        2,
        16,
        &["unknown field `ingres`", "NetworkPolicy"],
    );
    refused(
        &two("  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.0.0.0/33\n"),
        2,
        18,
        &[
            "spec.ingress[0].from[0].ipBlock.cidr",
            "not a valid CIDR",
            "ns/p",
        ],
    );
    refused(
        &two(
            "  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.0.0.0/16\n        except: [10.1.0.0/24]\n",
        ),
        2,
        19,
        &["strict subset"],
    );
    refused(
        &two("  egress:\n  - ports:\n    - port: 80\n      endPort: 79\n"),
        2,
        18,
        &["endPort", "greater than or equal"],
    );
    refused(
        &two("  egress:\n  - ports:\n    - port: http\n      endPort: 90\n"),
        2,
        18,
        &["non-numeric"],
    );
    refused(
        &two("  egress:\n  - ports:\n    - port: 0\n"),
        2,
        17,
        &["between 1 and 65535"],
    );
    refused(
        &two("  egress:\n  - ports:\n    - protocol: ICMP\n"),
        2,
        17,
        &["unsupported value \"ICMP\""],
    );
    refused(
        &two(
            "  podSelector:\n    matchExpressions:\n    - key: a\n      operator: Equals\n      values: [x]\n",
        ),
        2,
        18,
        &["not a valid selector operator"],
    );
    refused(
        &two("  podSelector:\n    matchExpressions:\n    - key: a\n      operator: In\n"),
        2,
        18,
        &["must be specified"],
    );
    refused(
        &two(
            "  podSelector:\n    matchExpressions:\n    - key: a\n      operator: Exists\n      values: [x]\n",
        ),
        2,
        19,
        &["may not be specified"],
    );
    refused(
        &two("  ingress:\n  - from:\n    - {}\n"),
        2,
        17,
        &["must specify a peer"],
    );
    refused(
        &two("  ingress:\n  - from:\n    - podSelector: {}\n      ipBlock: {cidr: 10.0.0.0/8}\n"),
        2,
        17,
        &["may not specify both ipBlock and another peer"],
    );
    refused(
        &two("  policyTypes: [Ingress, Sideways]\n"),
        2,
        15,
        &["unsupported value \"Sideways\""],
    );
    refused(&two("  podSelector: [\n"), 2, 15, &[]);
    refused(
        &two("  podSelector:\n    matchLabels:\n      app: 'bad value'\n"),
        2,
        17,
        &["label value"],
    );
}

#[test]
fn documents_and_kinds() {
    refused(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        1,
        2,
        &["kind \"ConfigMap\""],
    );
    refused(
        "apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {}\n",
        1,
        1,
        &["networking.k8s.io/v1"],
    );
    refused(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {}\n",
        1,
        3,
        &["metadata.name"],
    );
    refused(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x}\nspec: {}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: default}\nspec: {}\n",
        2,
        6,
        &["already defined in document 1"],
    );
    refused(
        "# comment\n\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nspec: {}\n",
        1,
        3,
        &["missing `metadata`"],
    );
    // Empty input is no documents, not an error.
    assert!(parse_documents("# nothing\n---\n").unwrap().is_empty());
}

#[test]
fn cluster_policy_errors() {
    let head = "apiVersion: twill.dev/v1\nkind: ClusterPolicy\nmetadata: {name: c}\nspec:\n";
    let doc = |spec: &str| format!("{head}{spec}");
    refused(&doc("  order: 1\n"), 1, 5, &["spec.selector: required"]);
    refused(
        &doc("  selector: {}\n  ingress:\n  - action: Drop\n"),
        1,
        7,
        &["\"Drop\" is not one of Allow, Deny, Log, Pass"],
    );
    refused(
        &doc(
            "  selector: {}\n  ingress:\n  - action: Allow\n    destination:\n      ports: [80]\n",
        ),
        1,
        9,
        &["ports need `protocol`"],
    );
    refused(
        &doc(
            "  selector: {}\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination:\n      ports: [\"90:80\"]\n",
        ),
        1,
        10,
        &["ends before it starts"],
    );
    refused(
        &doc(
            "  selector: {}\n  ingress:\n  - action: Allow\n    protocol: TCP\n    destination:\n      ports: [\"80-90\"]\n",
        ),
        1,
        10,
        &["like \"8000:8100\""],
    );
    refused(
        &doc("  selector: {}\n  types: [Egress]\n  ingress:\n  - action: Allow\n"),
        1,
        8,
        &["spec.types does not list Ingress"],
    );
    refused(
        &doc(
            "  selector: {}\n  ingress:\n  - action: Allow\n    source:\n      nets: [10.0.0.1]\n",
        ),
        1,
        9,
        &["is an address, not a CIDR"],
    );
    refused(
        &doc("  selector: {}\n  egress:\n  - action: Allow\n    colour: red\n"),
        1,
        8,
        &["unknown field `colour`"],
    );
    refused(
        "apiVersion: twill.dev/v1\nkind: ClusterPolicy\nmetadata: {name: c, namespace: x}\nspec: {selector: {}}\n",
        1,
        3,
        &["cluster-wide"],
    );
}

#[test]
fn port_proto_argument() {
    use twill_policy::parse_port_proto;
    assert_eq!(parse_port_proto("80"), Ok((80, Protocol::Tcp)));
    assert_eq!(parse_port_proto("53/udp"), Ok((53, Protocol::Udp)));
    assert_eq!(parse_port_proto("9/SCTP"), Ok((9, Protocol::Sctp)));
    assert_eq!(parse_port_proto("icmp"), Ok((0, Protocol::Icmp)));
    assert!(parse_port_proto("tcp").is_err());
    assert!(parse_port_proto("80/gre").is_err());
    assert!(parse_port_proto("99999/tcp").is_err());
}

mod never_panics {
    //! Policy YAML comes from users and from the store: any text gives Ok or an error with
    //! a position, never a panic, and whatever parses also compiles and renders.
    use super::*;
    use proptest::prelude::*;
    use twill_policy::{Options, World, compile, render};

    const SEED: &str = include_str!("golden/seed.yaml");

    fn check(text: &str) {
        match parse_documents(text) {
            Ok(docs) => {
                let w = World::new(vec![], vec![], docs);
                let _ = render(&compile(&w, "n", Options::default()));
            }
            Err(e) => {
                assert!(e.document >= 1 && e.line >= 1, "{e:?}");
                assert!(!e.message.is_empty());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
        #[test]
        fn mutated_policies(cut in 0..SEED.len(), len in 0..8usize, insert in "[-:{}\\[\\]a-z0-9/ .\n'\"]{0,6}") {
            let mut text = SEED.as_bytes().to_vec();
            let end = (cut + len).min(text.len());
            text.splice(cut..end, insert.bytes());
            check(&String::from_utf8_lossy(&text));
        }

        #[test]
        fn arbitrary_text(text in "[-:{}\\[\\]a-zA-Z0-9/ .\n#'\"|>&*!]{0,200}") {
            check(&text);
        }
    }
}

/// Regression: stored peers became camelCase (`podSelector`, `namespaceSelector`) while
/// bench/policy.py and records stored before still used `pod_selector`/`namespace_selector`;
/// serde skipped the unknown names and read `{from: [{podSelector: role=client,
/// namespaceSelector: {}}]}` as "every pod of the policy's namespace" (the bench's client
/// refused, an outsider of the policy's namespace let in). Both spellings must mean the same.
#[test]
fn stored_peer_selectors_read_in_both_spellings() {
    let want = Peer::Pods {
        pod_selector: Some(LabelSelector {
            match_labels: [("role".to_string(), "client".to_string())].into(),
            match_expressions: vec![],
        }),
        namespace_selector: Some(LabelSelector::default()),
    };
    for text in [
        r#"{"pods": {"podSelector": {"matchLabels": {"role": "client"}}, "namespaceSelector": {}}}"#,
        r#"{"pods": {"pod_selector": {"matchLabels": {"role": "client"}}, "namespace_selector": {}}}"#,
    ] {
        let got: Peer = serde_json::from_str(text).unwrap();
        assert_eq!(got, want, "{text}");
    }
    let stored = serde_json::to_string(&want).unwrap();
    assert!(
        stored.contains("podSelector") && stored.contains("namespaceSelector"),
        "{stored}"
    );
    assert_eq!(serde_json::from_str::<Peer>(&stored).unwrap(), want);
}
