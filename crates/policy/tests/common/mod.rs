//! The test world of the upstream network-policy e2e suite: namespaces x, y, z with pods
//! a, b, c each, labelled `pod=<name>` and `ns=<namespace>`, spread over two nodes, serving
//! on 80 and 81 (TCP, UDP, SCTP) under upstream's port names (`serve-80-tcp`, ...).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::IpAddr;

use twill_policy::model::*;
use twill_policy::{Party, explain, parse_documents};

pub const NAMESPACES: [&str; 3] = ["x", "y", "z"];
pub const PODS: [&str; 3] = ["a", "b", "c"];

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The address of pod `p` in namespace `ns`: 10.0.<ns>.<pod> and fd00::<ns>:<pod>.
pub fn ip4(ns: usize, pod: usize) -> IpAddr {
    format!("10.0.{}.{}", ns + 1, pod + 1).parse().unwrap()
}

pub fn ip6(ns: usize, pod: usize) -> IpAddr {
    format!("fd00::{}:{}", ns + 1, pod + 1).parse().unwrap()
}

pub fn endpoints() -> Vec<Endpoint> {
    let mut out = Vec::new();
    for (n, ns) in NAMESPACES.iter().enumerate() {
        for (p, pod) in PODS.iter().enumerate() {
            let mut named_ports = Vec::new();
            for port in [80u16, 81] {
                for (proto, word) in [
                    (Protocol::Tcp, "tcp"),
                    (Protocol::Udp, "udp"),
                    (Protocol::Sctp, "sctp"),
                ] {
                    named_ports.push(NamedPort {
                        name: format!("serve-{port}-{word}"),
                        port,
                        protocol: proto,
                    });
                }
            }
            out.push(Endpoint {
                namespace: ns.to_string(),
                name: pod.to_string(),
                labels: labels(&[("pod", pod)]),
                addresses: vec![ip4(n, p), ip6(n, p)],
                // a and b of every namespace on node1, c on node2.
                node: if p < 2 { "node1" } else { "node2" }.to_string(),
                interface: format!("tw{ns}{pod}"),
                named_ports,
            });
        }
    }
    out
}

pub fn namespaces() -> Vec<Namespace> {
    NAMESPACES
        .iter()
        .map(|ns| Namespace {
            name: ns.to_string(),
            labels: labels(&[("ns", ns)]),
        })
        .collect()
}

/// The world with the policies of `yaml`.
pub fn world(yaml: &str) -> World {
    World::new(
        namespaces(),
        endpoints(),
        parse_documents(yaml).unwrap_or_else(|e| panic!("{e}")),
    )
}

/// Which connections between the nine pods are allowed, like upstream's `Reachability`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach(pub BTreeMap<(String, String), bool>);

pub fn all_pods() -> Vec<String> {
    NAMESPACES
        .iter()
        .flat_map(|ns| PODS.iter().map(move |p| format!("{ns}/{p}")))
        .collect()
}

impl Reach {
    pub fn new(default: bool) -> Reach {
        let mut m = BTreeMap::new();
        for a in all_pods() {
            for b in all_pods() {
                if a != b {
                    m.insert((a.clone(), b), default);
                }
            }
        }
        Reach(m)
    }

    /// Sets every pair where `from(src)` and `to(dst)` hold.
    pub fn set(mut self, from: impl Fn(&str) -> bool, to: impl Fn(&str) -> bool, v: bool) -> Reach {
        for ((a, b), x) in self.0.iter_mut() {
            if from(a) && to(b) {
                *x = v;
            }
        }
        self
    }

    pub fn to(self, dst: &str, v: bool) -> Reach {
        let dst = dst.to_string();
        self.set(|_| true, move |b| b == dst, v)
    }

    pub fn from(self, src: &str, v: bool) -> Reach {
        let src = src.to_string();
        self.set(move |a| a == src, |_| true, v)
    }

    pub fn pair(self, src: &str, dst: &str, v: bool) -> Reach {
        let (s, d) = (src.to_string(), dst.to_string());
        self.set(move |a| a == s, move |b| b == d, v)
    }

    /// What `explain` says for every pair.
    pub fn observed(world: &World, port: u16, proto: Protocol) -> Reach {
        let mut r = Reach::new(false);
        for ((a, b), x) in r.0.iter_mut() {
            let d = explain(
                world,
                &Party::Endpoint(a.clone()),
                &Party::Endpoint(b.clone()),
                port,
                proto,
            )
            .unwrap();
            *x = d.allowed;
        }
        r
    }

    /// A grid like upstream's truth table: rows are sources, columns destinations.
    pub fn grid(&self) -> String {
        let pods = all_pods();
        let mut s = String::from("     ");
        for b in &pods {
            s.push_str(&format!("{b:4}"));
        }
        s.push('\n');
        for a in &pods {
            s.push_str(&format!("{a:5}"));
            for b in &pods {
                let c = match self.0.get(&(a.clone(), b.clone())) {
                    None => '.',
                    Some(true) => '+',
                    Some(false) => 'X',
                };
                s.push_str(&format!("{c:4}"));
            }
            s.push('\n');
        }
        s
    }
}

/// Asserts that `explain` over every pair gives `expected`.
pub fn check(world: &World, port: u16, proto: Protocol, expected: &Reach) {
    let got = Reach::observed(world, port, proto);
    assert!(
        got == *expected,
        "port {port}/{proto}\nexpected:\n{}\ngot:\n{}",
        expected.grid(),
        got.grid()
    );
}

pub fn in_ns(ns: &'static str) -> impl Fn(&str) -> bool {
    move |p: &str| p.starts_with(&format!("{ns}/"))
}

pub fn is(pod: &'static str) -> impl Fn(&str) -> bool {
    move |p: &str| p == pod
}
