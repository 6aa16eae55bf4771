//! The underlay capture check of dual-stack WireGuard labs, shared by wireguard6_lab.rs and
//! bgp6_lab.rs: IPv6 marker traffic between pods on different hosts while the underlay is
//! captured, decoded by scapy (`wire_check.py`) to prove no pod IPv6 packet crossed in clear.

use std::process::{Child, Command};

use serde_json::Value;
use twill_lab::Lab;
use twill_testkit::random_suffix;

use crate::lab_common::{UnderlayCapture, spawn_in};

/// The lab's WireGuard port.
pub const PORT: u16 = 51820;
const WIRE_CHECK: &str = include_str!("wire_check.py");
/// The Debian python with scapy (a python3 earlier on PATH may lack it).
const SCAPY_PYTHON: &str = "/usr/bin/python3";

/// A TCP echo server on [::]:7777 for marker exchanges (runs until killed or 60 s).
const ECHO6: &str = include_str!("echo6.py");

/// Sends the marker to [ip]:7777 and expects it back.
const SEND_MARKER6: &str = include_str!("send_marker6.py");

/// Runs IPv6 marker traffic between every pair of pods on different hosts (TCP echo and
/// pings whose payload is the marker) while the underlay is captured, then decodes the
/// capture; `clear_pairs` are the host pairs whose traffic may be clear (both underlay
/// families of each).
pub fn wire_proof6(lab: &Lab, clear_pairs: &[(u32, u32)]) -> Value {
    wire_proof6_on(lab, clear_pairs, PORT)
}

/// [`wire_proof6`] with WireGuard on `port` (an IPv6-only Flannel config without `Mode` listens
/// on `ListenPortV6`, 51821, as flanneld's `separate` does).
pub fn wire_proof6_on(lab: &Lab, clear_pairs: &[(u32, u32)], port: u16) -> Value {
    let marker = format!("twillwg6{}", random_suffix(6));
    let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    // The store's and BGP's own sessions are control traffic between hosts, not pod packets.
    let capture = UnderlayCapture::start(lab, "not port 2379 and not port 2380 and not port 179");
    let servers: Vec<Child> = lab
        .pods()
        .iter()
        .map(|p| spawn_in(lab, &p.name, &["python3", "-c", ECHO6]))
        .collect();
    for a in lab.pods() {
        for b in lab.pods().iter().filter(|b| b.host != a.host) {
            let dst = b
                .ip6
                .expect("pods of a dual-stack lab have IPv6")
                .to_string();
            let out = lab
                .exec(&a.name, &["python3", "-c", SEND_MARKER6, &dst, &marker])
                .unwrap();
            assert!(out.status.success(), "{} -> {}: {out:?}", a.name, b.name);
            let ping = lab
                .exec(
                    &a.name,
                    &[
                        "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-p", &hex, &dst,
                    ],
                )
                .unwrap();
            assert!(ping.status.success(), "{} -> {}: {ping:?}", a.name, b.name);
        }
    }
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    let pcap = capture.stop();
    let mut cmd = Command::new(SCAPY_PYTHON);
    cmd.args(["-c", WIRE_CHECK])
        .arg(&pcap.0)
        .arg(port.to_string())
        .arg(&marker)
        .arg(twill_lab::plan::POD_NETWORK6);
    for (a, b) in clear_pairs {
        let (ha, hb) = (lab.state().host(*a).unwrap(), lab.state().host(*b).unwrap());
        if let (Some(a4), Some(b4)) = (ha.ip, hb.ip) {
            cmd.arg(format!("{a4}-{b4}"));
        }
        if let (Some(a6), Some(b6)) = (ha.ip6, hb.ip6) {
            cmd.arg(format!("{a6}-{b6}"));
        }
    }
    let out = cmd.output().expect("run the capture check");
    assert!(
        out.status.success(),
        "the capture check failed (needs python3-scapy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{}: wire {report}", lab.name());
    assert_eq!(report["notWireguardCount"], 0, "{report}");
    assert_eq!(
        report["clearPod6Count"], 0,
        "pod IPv6 packets in the clear: {report}"
    );
    assert_eq!(
        report["markerCount"], 0,
        "the marker crossed in clear: {report}"
    );
    assert!(
        report["wgTypes"]["4"].as_u64().unwrap_or(0) > 0,
        "no WireGuard transport message on the wire: {report}"
    );
    report
}
