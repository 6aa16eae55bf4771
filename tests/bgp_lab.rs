//! Routing by BGP in the lab, against real BIRD 2: twill agents (real binary, real plugin,
//! etcd) peering with a BIRD top-of-rack, with BIRD as their route reflector, and reflecting
//! for a BIRD client themselves; graceful restart of a SIGKILLed agent with no loss; peers
//! that die withdrawn after the hold time; the `twill bgp` CLI. Root only
//! (`--include-ignored`); each test has its own lab, removed by a guard pass or fail.
//!
//! Assertions read real state: `birdc show route`, `ip route show proto 117` in the hosts,
//! `ip link` (no encapsulation device), ping between pods, `twill bgp status --json`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_lab::{Backend, Lab, LabSpec, Signal, Underlay};
use twill_testkit::{random_suffix, require_root};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");
const T30: Duration = Duration::from_secs(30);

/// Removes the lab on drop, pass or fail (BIRD included: `down` stops it).
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.0);
        }
        let _ = twill_lab::down(&self.0);
    }
}

/// The agents' and BIRDs' logs, the first thing to read when a lab test fails.
fn dump_logs(name: &str) {
    let Ok(lab) = Lab::load(name) else { return };
    for h in lab.hosts() {
        let log = std::fs::read_to_string(&h.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        eprintln!(
            "---- {} agent log (last lines) ----\n{}",
            h.node,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    for b in &lab.state().birds {
        eprintln!(
            "---- BIRD {} ----\n{}",
            b.name,
            lab.birdc(&b.name, &["show", "protocols"])
                .unwrap_or_default()
        );
    }
}

fn name() -> (String, Guard) {
    let name = format!("b{}", random_suffix(5));
    (name.clone(), Guard(name))
}

fn up(spec: &LabSpec) -> Lab {
    Lab::up(spec, Path::new(TWILL)).unwrap_or_else(|e| panic!("lab up: {e:#}"))
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A BIRD `protocol bgp` block with the lab's fast timers.
fn bird_peer(name: &str, local: &str, las: u32, neighbor: &str, nas: u32, extra: &str) -> String {
    format!(
        "protocol bgp {name} {{\n  local {local} as {las};\n  neighbor {neighbor} as {nas};\n  \
         hold time 3; connect retry time 1; connect delay time 1; error wait time 1, 2;\n  \
         graceful restart on;\n  {extra}\n  \
         ipv4 {{ import all; export all; {channel} }};\n}}\n",
        channel = if las == nas { "gateway direct;" } else { "" }
    )
}

/// Host `i`'s pod subnet, from its status.
fn subnet(lab: &Lab, i: u32) -> String {
    lab.host_status(i)
        .unwrap()
        .subnet
        .unwrap_or_else(|| panic!("h{i} has no subnet"))
}

/// `ip -j route show proto 117` of host `i`: (destination, gateway, onlink).
fn twill_routes(lab: &Lab, i: u32) -> Vec<(String, String)> {
    let out = lab
        .exec(
            &format!("h{i}"),
            &["ip", "-j", "route", "show", "proto", "117"],
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn has_route_via(lab: &Lab, i: u32, dst: &str, via: &str) -> bool {
    twill_routes(lab, i)
        .iter()
        .any(|(d, g)| d == dst && g == via)
}

fn bird_has(lab: &Lab, bird: &str, prefix: &str) -> bool {
    lab.birdc(bird, &["show", "route", prefix])
        .unwrap()
        .contains(prefix)
}

/// No encapsulation device of twill's in host `i`.
fn assert_no_tunnel(lab: &Lab, i: u32) {
    let out = lab.exec(&format!("h{i}"), &["ip", "-o", "link"]).unwrap();
    let links = String::from_utf8_lossy(&out.stdout);
    assert!(
        !links.contains("twill."),
        "h{i} has an encapsulation device:\n{links}"
    );
}

fn ping(lab: &Lab, from: &str, ip: &str) -> bool {
    lab.exec(from, &["ping", "-n", "-q", "-c", "1", "-W", "1", ip])
        .is_ok_and(|o| o.status.success())
}

fn pod_ip(lab: &Lab, host: u32) -> String {
    lab.pods()
        .iter()
        .find(|p| p.host == host)
        .unwrap()
        .ip
        .to_string()
}

/// The eBGP top-of-rack lab: three nodes on the routed underlay (h1, h3 in 192.168.1.0/24,
/// h2 in 192.168.2.0/24), each in its own AS, peering only with BIRD (AS 65000) in the
/// router namespace; no node-to-node mesh, no encapsulation.
fn tor_spec(name: &str) -> LabSpec {
    let mut tor = String::new();
    for i in 1..=3u32 {
        let (local, ip) = if i % 2 == 1 {
            ("192.168.1.1", format!("192.168.1.{}", 10 + i))
        } else {
            ("192.168.2.1", format!("192.168.2.{}", 10 + i))
        };
        tor += &bird_peer(&format!("h{i}"), local, 65000, &ip, 65000 + i, "");
    }
    LabSpec::new(name)
        .nodes(3)
        .pods_per_node(1)
        .underlay(Underlay::Routed)
        .backend(Backend::Bgp)
        .bird_router(tor)
        .bgp(
            "nodeToNodeMesh: false
             holdTime: 3
             nodes:
               h1: {asNumber: 65001}
               h2: {asNumber: 65002}
               h3: {asNumber: 65003}
             peers:
               - {address: 192.168.1.1, asNumber: 65000, node: h1}
               - {address: 192.168.2.1, asNumber: 65000, node: h2}
               - {address: 192.168.1.1, asNumber: 65000, node: h3}",
        )
}

#[test]
#[ignore = "needs root"]
fn tor_ebgp_routes_pods_without_encapsulation() {
    require_root();
    let (name, _g) = name();
    let lab = up(&tor_spec(&name));
    let subnets: Vec<String> = (1..=3).map(|i| subnet(&lab, i)).collect();
    // Every node's block (aggregated: the /24, not per pod) is in BIRD, from its own AS.
    for (i, s) in subnets.iter().enumerate() {
        wait_until(&format!("{s} in BIRD"), T30, || bird_has(&lab, "router", s));
        let r = lab.birdc("router", &["show", "route", s, "all"]).unwrap();
        assert!(r.contains(&format!("BGP.as_path: {}", 65001 + i)), "{r}");
    }
    let all = lab.birdc("router", &["show", "route"]).unwrap();
    assert!(!all.contains("/32"), "per-pod routes in BIRD:\n{all}");
    // The other subnet's nodes are reached through the ToR, with plain routes of proto 117.
    assert!(
        has_route_via(&lab, 1, &subnets[1], "192.168.1.1"),
        "{:?}",
        twill_routes(&lab, 1)
    );
    assert!(
        has_route_via(&lab, 2, &subnets[0], "192.168.2.1"),
        "{:?}",
        twill_routes(&lab, 2)
    );
    assert!(
        twill_routes(&lab, 2).iter().any(|(d, _)| *d == subnets[2]),
        "{:?}",
        twill_routes(&lab, 2)
    );
    for i in 1..=3 {
        assert_no_tunnel(&lab, i);
    }
    // Pods in different subnets (and in the same one) reach each other.
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "{}", m.render());
    // The path really is the ToR: the first hop from h1's pod to h2's pod is the router.
    let out = lab
        .exec(
            "h1-p1",
            &["traceroute", "-n", "-q", "1", "-w", "1", &pod_ip(&lab, 2)],
        )
        .ok();
    if let Some(out) = out.filter(|o| o.status.success()) {
        let t = String::from_utf8_lossy(&out.stdout);
        assert!(t.contains("192.168.1.1"), "{t}");
    }
}
