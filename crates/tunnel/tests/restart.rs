//! Restarting the engine keeps the device, its routes and the pods' TCP connections: traffic
//! resumes within a second after `shutdown` + `start`, and after a drop without shutdown (what
//! SIGKILL amounts to: the kernel closes the descriptors). `delete_device` removes the device
//! and refuses links that are not TUN devices.

mod common;

use std::time::{Duration, Instant};

use common::{Lab, NET2, P2};
use twill_tunnel::{DEFAULT_UDP_PORT, Encap, delete_device};

/// Longest run of zero-throughput 0.1 s intervals in an iperf3 JSON report, in seconds, and
/// the total bytes received.
fn longest_gap(report: &serde_json::Value) -> (f64, f64) {
    let mut longest = 0.0f64;
    let mut current = 0.0f64;
    for i in report["intervals"].as_array().into_iter().flatten() {
        let s = &i["sum"];
        let bytes = s["bytes"].as_f64().unwrap_or(0.0);
        let secs = s["seconds"].as_f64().unwrap_or(0.0);
        if bytes == 0.0 {
            current += secs;
            longest = longest.max(current);
        } else {
            current = 0.0;
        }
    }
    let total = report["end"]["sum_received"]["bytes"]
        .as_f64()
        .unwrap_or(0.0);
    (longest, total)
}

fn restart_keeps_connections(encap: Encap, tag: &str, kernel_path: bool) {
    let lab = Lab::new(tag, false);
    let dev = "twill.tun";
    let (t1, t2) = lab.start_pair_with(encap, dev, 1, kernel_path);
    lab.route_via(dev);
    lab.set_pod_mtu(1500 - encap.overhead());
    assert!(lab.wait_reachable(Duration::from_secs(3)));
    let _server = lab.p2.spawn(&["iperf3", "-s", "-1"]);
    std::thread::sleep(Duration::from_millis(300));

    // One TCP connection, 10 s at a modest rate, reported every 0.1 s.
    let client = {
        let p1 = lab.p1.name().to_string();
        std::thread::spawn(move || {
            std::process::Command::new("ip")
                .args([
                    "netns", "exec", &p1, "iperf3", "-c", P2, "-t", "8", "-b", "200M", "-i", "0.1",
                    "-J",
                ])
                .output()
                .expect("run iperf3")
        })
    };
    std::thread::sleep(Duration::from_secs(2));

    // Graceful restart of h1's engine.
    let started = Instant::now();
    t1.shutdown();
    let routes = lab.h1.ok(&["ip", "route", "show", NET2]);
    assert!(
        routes.contains(dev),
        "route on the device must survive: {routes}"
    );
    let t1 = lab.start_with(1, encap, dev, 1, kernel_path);
    t1.set_peers(&[Lab::peer_of(2)]);
    let restart_took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));

    // Abrupt: drop without shutdown (same as the process dying), then start again.
    drop(t1);
    let t1 = lab.start_with(1, encap, dev, 1, kernel_path);
    t1.set_peers(&[Lab::peer_of(2)]);
    // And the other side too.
    drop(t2);
    let t2 = lab.start_with(2, encap, dev, 1, kernel_path);
    t2.set_peers(&[Lab::peer_of(1)]);

    let out = client.join().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success() && report["error"].is_null(),
        "the TCP connection must survive the restarts: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (gap, total) = longest_gap(&report);
    println!(
        "{encap:?}: restart took {restart_took:?}; longest traffic gap {gap:.1} s; {total} bytes"
    );
    assert!(gap < 1.0, "traffic must resume within 1 s, gap was {gap} s");
    assert!(total > 50e6, "too little traffic: {total}");
    assert!(t1.stats().peers[0].tx_packets > 0);
    t1.shutdown();
    t2.shutdown();

    // The device outlives the engine until delete_device.
    assert!(lab.h1.link(dev).is_some());
    let filters = || {
        lab.h1
            .ok(&["tc", "filter", "show", "dev", "eth0", "ingress"])
    };
    assert_eq!(
        filters().contains("twill_decap"),
        kernel_path,
        "the fast path's filter stays on the underlay while the device lives: {}",
        filters()
    );
    Lab::in_ns(&lab.h1, || delete_device(dev)).expect("delete device");
    assert!(lab.h1.link(dev).is_none());
    assert!(
        !filters().contains("twill_decap"),
        "deleting the device removes the fast path from the underlay too"
    );
    Lab::in_ns(&lab.h1, || delete_device(dev)).expect("deleting a missing device is fine");
    let err = Lab::in_ns(&lab.h1, || delete_device("vp1"));
    assert!(err.is_err(), "a veth is not ours to delete");
    assert!(lab.h1.link("vp1").is_some());
}

#[test]
#[ignore = "needs root"]
fn udp_restart_keeps_connections() {
    restart_keeps_connections(
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        },
        "ru",
        false,
    );
}

#[test]
#[ignore = "needs root"]
fn ipip_restart_keeps_connections() {
    restart_keeps_connections(Encap::Ipip, "ri", false);
}

/// With the kernel fast path, the filters stay attached while the engine is down or dead, so
/// tunnelled traffic does not even pause.
#[test]
#[ignore = "needs root"]
fn ipip_kernel_path_restart_keeps_connections() {
    restart_keeps_connections(Encap::Ipip, "rk", true);
}

#[test]
#[ignore = "needs root"]
fn udp_kernel_path_restart_keeps_connections() {
    restart_keeps_connections(
        Encap::Udp {
            port: DEFAULT_UDP_PORT,
        },
        "rv",
        true,
    );
}
