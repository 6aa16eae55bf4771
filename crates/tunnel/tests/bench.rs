//! Pod-to-pod throughput and latency through the tunnel engine (udp and ipip) against a
//! hand-made kernel VXLAN between the same two hosts, measured interleaved in one run.
//!
//! Figures, not pass/fail: the test asserts only that traffic flows. For real numbers build
//! optimised and let it run longer:
//! `TWILL_BENCH_SECS=5 TWILL_BENCH_REPS=3 cargo test -p twill-tunnel --release --test bench -- --include-ignored --nocapture`
//! (`TWILL_BENCH_QUEUES` sets the tunnel queues, default 0 = one per CPU).

mod common;

use std::time::Duration;

use common::{Lab, P2, ping_summary};
use twill_tunnel::{DEFAULT_UDP_PORT, Encap};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// iperf3 from p1 to p2: received Gbit/s.
fn iperf(lab: &Lab, secs: u64, streams: u32) -> f64 {
    let out = lab.p1.exec(&[
        "iperf3",
        "-c",
        P2,
        "-t",
        &secs.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map_or(0.0, |b| b / 1e9)
}

/// Average ping RTT p1 -> p2 in microseconds (200 pings, 5 ms apart).
fn rtt_us(lab: &Lab) -> f64 {
    let out = lab
        .p1
        .exec(&["ping", "-q", "-c", "200", "-i", "0.005", "-W", "1", P2]);
    ping_summary(&String::from_utf8_lossy(&out.stdout)).2 * 1000.0
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

#[test]
#[ignore = "needs root"]
fn pod_to_pod_throughput_vs_kernel_vxlan() {
    let secs = env("TWILL_BENCH_SECS", 2);
    let reps = env("TWILL_BENCH_REPS", 1) as usize;
    let queues = env("TWILL_BENCH_QUEUES", 0) as usize;
    let lab = Lab::new("bn", false);
    lab.kernel_vxlan();
    let udp = Encap::Udp {
        port: DEFAULT_UDP_PORT,
    };
    let (u1, u2) = lab.start_pair(udp, "tw.udp", queues);
    let (i1, i2) = lab.start_pair(Encap::Ipip, "tw.ipip", queues);
    let _server = lab.p2.spawn(&["iperf3", "-s"]);
    std::thread::sleep(Duration::from_millis(300));

    type Setup = fn(&Lab);
    let modes: [(&str, Setup); 3] = [
        ("kernel-vxlan", |l| {
            l.route_via_vxlan();
            l.set_pod_mtu(1450);
        }),
        ("twill-udp", |l| {
            l.route_via("tw.udp");
            l.set_pod_mtu(1472);
        }),
        ("twill-ipip", |l| {
            l.route_via("tw.ipip");
            l.set_pod_mtu(1480);
        }),
    ];
    // results[mode] = (1-stream, 4-stream, rtt) per rep
    let mut results: Vec<[Vec<f64>; 3]> =
        vec![Default::default(), Default::default(), Default::default()];
    for _ in 0..reps {
        for (m, (name, setup)) in modes.iter().enumerate() {
            setup(&lab);
            assert!(
                lab.wait_reachable(Duration::from_secs(5)),
                "{name}: pods cannot reach each other"
            );
            let one = iperf(&lab, secs, 1);
            let four = iperf(&lab, secs, 4);
            let rtt = rtt_us(&lab);
            if std::env::var("TWILL_BENCH_PINGX").is_ok() {
                for args in [["-i", "0.005"], ["-i", "0.0005"], ["-i", "0"]] {
                    let out = lab
                        .p1
                        .exec(&["ping", "-q", "-c", "2000", args[0], args[1], "-W", "1", P2]);
                    println!(
                        "{name} ping {:?}: {:?}",
                        args,
                        ping_summary(&String::from_utf8_lossy(&out.stdout))
                    );
                }
            }
            assert!(one > 0.0 && four > 0.0, "{name}: no TCP throughput");
            results[m][0].push(one);
            results[m][1].push(four);
            results[m][2].push(rtt);
        }
    }

    println!(
        "\npod-to-pod over a veth+bridge underlay (MTU 1500), {reps} rep(s) x {secs} s, tunnel queues {}",
        u1.stats().queues
    );
    println!(
        "{:<14} {:>26} {:>26} {:>22}",
        "path", "TCP 1 stream Gbit/s", "TCP 4 streams Gbit/s", "ping RTT us"
    );
    println!(
        "{:<14} {:>26} {:>26} {:>22}",
        "", "min/med/max", "min/med/max", "min/med/max"
    );
    let mut medians = Vec::new();
    for (m, (name, _)) in modes.iter().enumerate() {
        let (a, b, c) = stats(&mut results[m][0]);
        let (d, e, f) = stats(&mut results[m][1]);
        let (g, h, i) = stats(&mut results[m][2]);
        medians.push((b, e, h));
        println!(
            "{name:<14} {:>26} {:>26} {:>22}",
            format!("{a:.2}/{b:.2}/{c:.2}"),
            format!("{d:.2}/{e:.2}/{f:.2}"),
            format!("{g:.0}/{h:.0}/{i:.0}")
        );
    }
    let (v1, v4, vr) = medians[0];
    for (m, (name, _)) in modes.iter().enumerate().skip(1) {
        let (a, b, c) = medians[m];
        println!(
            "{name}: {:.2}x kernel VXLAN single-stream, {:.2}x with 4 streams, latency {:.2}x",
            a / v1,
            b / v4,
            c / vr
        );
    }
    for t in [&u1, &u2, &i1, &i2] {
        let s = t.stats();
        println!("{} drops: {:?}", s.device, s.drops);
    }
}
