//! What the dual-stack and IPv6-only lab tests share: building a lab of either family, reading
//! what the agents report and programmed for IPv6 (subnets, paths, `ip -6 route`), a TCP
//! listener that says which source it saw (for natOutgoing), and a capture of marked `ping -6`s
//! decoded by a scapy script (`wire_check.py`, `tunnel_wire_check.py`).

// Each test crate that includes this uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use twill_lab::{Backend, IpFamily, Lab, LabSpec, Underlay};
use twill_testkit::{random_suffix, require_root};

use crate::lab_common::{Guard, UnderlayCapture, pod_ip6, spawn_in_ns};

pub const TWILL: &str = env!("CARGO_BIN_EXE_twill");
pub const VXLAN_PORT: u16 = 8472;
pub const WIRE_CHECK: &str = include_str!("wire_check.py");
pub const TUNNEL_WIRE_CHECK: &str = include_str!("tunnel_wire_check.py");
/// The udp backend's default port (Flannel's).
pub const UDP_PORT: u16 = 8285;
/// The Debian python with scapy (a python3 earlier on PATH may lack it).
pub const SCAPY_PYTHON: &str = "/usr/bin/python3";

/// A lab of `family` with `nodes` hosts and one pod each.
pub fn spec_of(family: IpFamily, backend: Backend, underlay: Underlay, nodes: u32) -> LabSpec {
    LabSpec::new(format!("d{}", random_suffix(5)))
        .nodes(nodes)
        .backend(backend)
        .underlay(underlay)
        .ip_family(family)
        .pods_per_node(1)
}

/// Builds the lab and waits until every agent has programmed every peer.
pub fn up(spec: LabSpec) -> (Lab, Guard) {
    require_root();
    let guard = Guard(spec.name.clone());
    let lab = Lab::up(&spec, Path::new(TWILL)).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    lab.wait_converged(Duration::from_secs(30)).unwrap();
    (lab, guard)
}

/// Host `i`'s IPv6 pod subnet, as its agent reports it.
pub fn subnet6(lab: &Lab, i: u32) -> String {
    lab.host_status(i)
        .unwrap()
        .subnet6
        .unwrap_or_else(|| panic!("h{i} reports no IPv6 subnet"))
}

/// Host `i`'s IPv6 underlay address.
pub fn host_ip6(lab: &Lab, i: u32) -> String {
    lab.state().host(i).unwrap().ip6.unwrap().to_string()
}

/// Host `from`'s IPv6 routes to host `to`'s IPv6 pod subnet (`ip -6 -j route`).
pub fn routes6(lab: &Lab, from: u32, to: u32) -> Vec<Value> {
    let dst = subnet6(lab, to);
    let out = lab
        .exec(
            &format!("h{from}"),
            &["ip", "-6", "-j", "route", "show", &dst],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// The one IPv6 route from host `from` to host `to`'s pods.
pub fn route6(lab: &Lab, from: u32, to: u32) -> Value {
    let routes = routes6(lab, from, to);
    assert_eq!(routes.len(), 1, "h{from} -> h{to}: {routes:?}");
    routes[0].clone()
}

/// The path host `from`'s agent reports for peer `to` (`direct`, `vxlan`, `skipped`, ...)
/// and its reason.
pub fn path(lab: &Lab, from: u32, to: u32) -> (String, Option<String>) {
    let s = lab.host_status(from).unwrap();
    let p = s
        .peers
        .iter()
        .find(|p| p.node == format!("h{to}"))
        .unwrap_or_else(|| panic!("h{from} does not know h{to}: {s:?}"));
    (p.path.via.clone(), p.path.reason.clone())
}

/// Runs a one-connection TCP listener on `[::]:7777` in namespace `ns` and returns it once it
/// listens; its next stdout line is the peer address it saw.
const LISTEN: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 7777)); s.listen(1); s.settimeout(30)
print("ready", flush=True)
c, peer = s.accept()
print(peer[0], flush=True)
c.sendall(b"ok"); c.close()
"#;

/// Connects to `[ip]:7777` and expects `ok`.
const CONNECT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], 7777), timeout=5)
got = c.recv(16)
assert got == b"ok", got
"#;

/// Which source address a listener in namespace `ns` sees when `client` (a lab target)
/// connects to `ip` over TCP.
pub fn source_seen(lab: &Lab, ns: &str, client: &str, ip: &str) -> String {
    let mut listener = spawn_in_ns(ns, &["python3", "-c", LISTEN]);
    let mut lines = BufReader::new(listener.stdout.take().unwrap()).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(
        ready.as_deref(),
        Some("ready"),
        "the listener did not start"
    );
    let out = lab.exec(client, &["python3", "-c", CONNECT, ip]).unwrap();
    assert!(out.status.success(), "{client} -> [{ip}]:7777: {out:?}");
    let peer = lines.next().and_then(Result::ok).unwrap_or_default();
    let _ = listener.wait();
    peer
}

/// natOutgoing of the IPv6 pool, with a world namespace outside the cluster (which has no
/// route to the pods' IPv6 network: replies only come back if the pod's source was
/// masqueraded): pods on both nodes reach it and it sees their node's IPv6 underlay address;
/// between pods on two nodes the source stays the pod's own.
pub fn assert_nat_outgoing6(lab: &mut Lab) {
    let (world, _) = lab.add_outside_host(0).unwrap();
    let world6 = lab.outside_host_ip6(0).unwrap().to_string();
    let ping = lab
        .exec(
            "h1-p1",
            &["ping", "-6", "-n", "-c", "3", "-W", "2", &world6],
        )
        .unwrap();
    assert!(
        ping.status.success(),
        "h1-p1 -> world {world6}: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    for i in [1, 2] {
        let pod = format!("h{i}-p1");
        assert_eq!(source_seen(lab, &world, &pod, &world6), host_ip6(lab, i));
    }
    let h2_pod = lab.target_ns("h2-p1").unwrap();
    assert_eq!(
        source_seen(lab, &h2_pod, "h1-p1", &pod_ip6(lab, 2)),
        pod_ip6(lab, 1)
    );
}

/// Pings with a marker between h1's and h2's first pods over IPv6, both ways, while the
/// underlay is captured, and decodes the capture with `wire_check.py`.
pub fn wire_report(lab: &Lab) -> Value {
    wire_report_by(lab, WIRE_CHECK, VXLAN_PORT)
}

/// [`wire_report`] decoded by `script` (called with the capture, `port`, both pods' IPv6
/// addresses and the marker).
pub fn wire_report_by(lab: &Lab, script: &str, port: u16) -> Value {
    let (a, b) = (pod_ip6(lab, 1), pod_ip6(lab, 2));
    let marker = format!("twill6{}", random_suffix(6));
    let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    let capture = UnderlayCapture::start(lab, "not port 2379 and not port 2380");
    for (from, to) in [("h1-p1", &b), ("h2-p1", &a)] {
        let ping = lab
            .exec(
                from,
                &[
                    "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-p", &hex, to,
                ],
            )
            .unwrap();
        assert!(ping.status.success(), "{from} -> {to}: {ping:?}");
    }
    let pcap = capture.stop();
    let out = Command::new(SCAPY_PYTHON)
        .args(["-c", script])
        .arg(&pcap.0)
        .args([&port.to_string(), &a, &b, &marker])
        .output()
        .expect("run the capture check");
    assert!(
        out.status.success(),
        "the capture check failed (needs python3-scapy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{}: wire {report}", lab.name());
    report
}

/// The outer address pairs of `report[key]` are h1's and h2's `addr` (either order).
pub fn assert_outer_pairs(report: &Value, key: &str, h1: &str, h2: &str) {
    for pair in report[key].as_array().unwrap() {
        let pair: Vec<&str> = pair
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(
            pair == [h1, h2] || pair == [h2, h1],
            "outer addresses ({key}) are not the nodes' underlay: {report}"
        );
    }
}

/// Kills a child process (a server that would otherwise wait for a client) when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
