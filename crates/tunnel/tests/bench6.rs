//! IPv6 pod-to-pod throughput through the tunnel engine against IPv4 of the same pods on the
//! same tunnel (issue 15's goal: IPv6 >= 0.8x IPv4 on the same backend), interleaved in one
//! run, for udp and ipip over the IPv4 underlay (IPv6 inside: udp payload / protocol 41) and
//! over the IPv6 underlay (udp in IPv6 / ip6tnl). The kernel fast path is off: this measures
//! the engine alone.
//!
//! Figures, not pass/fail: the test asserts only that traffic flows. For real numbers build
//! optimised: `TWILL_BENCH_SECS=5 TWILL_BENCH_REPS=3 cargo test -p twill-tunnel --release
//! --test bench6 -- --include-ignored --nocapture` (`TWILL_BENCH_QUEUES`: tunnel queues,
//! default 0 = one per CPU).

mod common;

use common::{H1_6, H2_6, Lab, P2};
use twill_tunnel::{DEFAULT_UDP_PORT, Encap, Peer, Tunnel, TunnelConfig};

const DEV: &str = "twill.tun";
const P2_6: &str = "fd00:2::2";

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// iperf3 (one stream) from p1 to `dst`: received Gbit/s (0 when it failed). A server still
/// finishing the previous test says it is busy: asked again until it is not (up to 10 s).
fn iperf(lab: &Lab, dst: &str, secs: u64) -> f64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out = lab
            .p1
            .exec(&["iperf3", "-c", dst, "-t", &secs.to_string(), "-J"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(rate) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
            return rate / 1e9;
        }
        let error = v["error"].as_str().unwrap_or_default().to_string();
        if !error.contains("busy") || std::time::Instant::now() > deadline {
            println!("iperf3 to {dst} failed: {error}");
            return 0.0;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn median(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// Starts a dual-stack pair over the IPv4 or the IPv6 underlay; returns the tunnels and the
/// pod MTU.
fn start(lab: &Lab, encap: Encap, queues: usize, ipv6_underlay: bool) -> (Tunnel, Tunnel) {
    let mtu = 1500
        - if ipv6_underlay {
            encap.overhead6()
        } else {
            encap.overhead()
        };
    let tunnel = |host: u8| {
        let base = Lab::config(encap, DEV, host, queues);
        let cfg = TunnelConfig {
            mtu,
            local_subnet6: Some(format!("fd00:{host}::/64").parse().unwrap()),
            local_ip6: ipv6_underlay.then_some(if host == 1 { H1_6 } else { H2_6 }),
            local_ip: base.local_ip.filter(|_| !ipv6_underlay),
            ..base
        };
        Lab::in_ns(lab.host(host), || Tunnel::start(cfg)).expect("start tunnel")
    };
    let peer = |host: u8| {
        let v4 = Lab::peer_of(host);
        Peer {
            subnet6: Some(format!("fd00:{host}::/64").parse().unwrap()),
            underlay: if !ipv6_underlay {
                v4.underlay
            } else if host == 1 {
                H1_6.into()
            } else {
                H2_6.into()
            },
            ..v4
        }
    };
    let (t1, t2) = (tunnel(1), tunnel(2));
    t1.set_peers(&[peer(2)]);
    t2.set_peers(&[peer(1)]);
    lab.route_via(DEV);
    lab.h1
        .ok(&["ip", "-6", "route", "replace", "fd00:2::/64", "dev", DEV]);
    lab.h2
        .ok(&["ip", "-6", "route", "replace", "fd00:1::/64", "dev", DEV]);
    lab.set_pod_mtu(mtu);
    (t1, t2)
}

#[test]
#[ignore = "needs root"]
fn ipv6_vs_ipv4_through_the_engine() {
    let secs = env("TWILL_BENCH_SECS", 2);
    let reps = env("TWILL_BENCH_REPS", 1) as usize;
    let queues = env("TWILL_BENCH_QUEUES", 0) as usize;
    let lab = Lab::new("b6", false);
    lab.add_underlay6();
    lab.add_pods6();
    let _server = lab.p2.spawn(&["iperf3", "-s"]);
    println!(
        "\nIPv6 vs IPv4 pods through the engine (1 stream, {reps} x {secs} s, queues {queues})"
    );
    let udp = Encap::Udp {
        port: DEFAULT_UDP_PORT,
    };
    for (encap, name) in [(udp, "udp"), (Encap::Ipip, "ipip")] {
        for ipv6_underlay in [false, true] {
            let (t1, t2) = start(&lab, encap, queues, ipv6_underlay);
            assert!(lab.wait_reachable(std::time::Duration::from_secs(10)));
            let (mut v4, mut v6) = (Vec::new(), Vec::new());
            for _ in 0..reps {
                v4.push(iperf(&lab, P2, secs));
                v6.push(iperf(&lab, P2_6, secs));
            }
            let (a, b) = (median(&mut v4), median(&mut v6));
            println!(
                "{name:4} over IPv{}: IPv4 {:.2} [{:.2}..{:.2}] Gbit/s, IPv6 {:.2} [{:.2}..{:.2}] Gbit/s, IPv6/IPv4 {:.2}x",
                if ipv6_underlay { 6 } else { 4 },
                a.1,
                a.0,
                a.2,
                b.1,
                b.0,
                b.2,
                b.1 / a.1
            );
            let (d1, d2) = (t1.stats().drops, t2.stats().drops);
            if d1.total() + d2.total() > 0 {
                println!("  drops: h1 {d1:?}, h2 {d2:?}");
            }
            assert!(
                a.1 > 0.0 && b.1 > 0.0,
                "traffic must flow: {:?}",
                t1.stats()
            );
            drop((t1, t2));
        }
    }
}
