//! Dual-stack clusters in the lab (`--ip-family dual`), with real agents (root only): the
//! `ping` and `ping -6` matrices for host-gw, vxlan, udp, ipip and wireguard on the L2 and the
//! routed underlay (vxlan across the router over IPv6, DirectRouting of vxlan and ipip direct
//! within a subnet and encapsulated across, udp and ipip through the tunnel device over the
//! IPv4 underlay, wireguard through twill.wg, host-gw skipping cross-subnet peers with a
//! reason; bgp is in bgp6_lab.rs, wireguard on l2 in wireguard6_lab.rs), the IPv6 routes each agent
//! programs, a TCP stream over IPv6 between pods, IPv6 natOutgoing to a world namespace (the
//! world sees the node's IPv6 underlay address, pods see each other's), and a capture decoded
//! by scapy (tests/dualstack/wire_check.py) proving pod IPv6 crosses the underlay as VXLAN
//! over IPv6 UDP 8472. IPv6-only labs are tests/ipv6only_lab.rs.
//! Needs tcpdump, iperf3 and python3-scapy (for /usr/bin/python3).

mod dualstack;
mod lab_common;

use std::process::Command;

use dualstack::*;
use lab_common::{Guard, pod_ip6, spawn_in, wait_for};
use serde_json::Value;
use twill_lab::{Backend, IpFamily, Lab, LabSpec, Underlay};
use twill_testkit::require_root;

/// A dual-stack lab of `nodes` hosts with one pod each.
fn spec(backend: Backend, underlay: Underlay, nodes: u32) -> LabSpec {
    spec_of(IpFamily::Dual, backend, underlay, nodes)
}

/// Both matrices hold every pair they should, and the IPv6 one probed every pod.
fn assert_matrices(lab: &Lab) {
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "{}", m.render());
    let m6 = lab
        .ping6_matrix()
        .expect("a dual-stack lab has a ping -6 matrix");
    assert_eq!(
        m6.pods.len(),
        lab.pods().len(),
        "pods without an IPv6 address: {:?}",
        lab.pods()
    );
    assert!(m6.all_ok(), "{}", m6.render());
    assert_eq!(
        m6.probes
            .iter()
            .filter(|p| p.outcome == twill_lab::Outcome::Ok)
            .count(),
        m.probes
            .iter()
            .filter(|p| p.outcome == twill_lab::Outcome::Ok)
            .count(),
        "the families differ:\n{}{}",
        m.render(),
        m6.render()
    );
    eprintln!("{}:\n{}{}", lab.name(), m.render(), m6.render());
}

#[test]
#[ignore = "needs root"]
fn host_gw_dual_stack_on_l2() {
    let (lab, _g) = up(spec(Backend::HostGw, Underlay::L2, 2).pods_per_node(2));
    assert_matrices(&lab);
    // host-gw routes IPv6 pods via the peer's IPv6 underlay address.
    for (from, to) in [(1, 2), (2, 1)] {
        let r = route6(&lab, from, to);
        assert_eq!(r["gateway"], host_ip6(&lab, to), "h{from} -> h{to}: {r}");
        assert_eq!(r["dev"], "eth0", "{r}");
    }
}

#[test]
#[ignore = "needs root"]
fn vxlan_dual_stack_on_l2() {
    let (lab, _g) = up(spec(Backend::Vxlan, Underlay::L2, 2).pods_per_node(2));
    assert_matrices(&lab);
    // IPv6 pods go through the IPv6 VTEP (over the IPv6 underlay), not the IPv4 one.
    for (from, to) in [(1, 2), (2, 1)] {
        let r = route6(&lab, from, to);
        assert_eq!(r["dev"], "twill6.1", "h{from} -> h{to}: {r}");
    }
}

#[test]
#[ignore = "needs root"]
fn vxlan_dual_stack_across_a_router() {
    // h1 and h3 on one subnet, h2 on the other: everything encapsulated, over IPv6 too.
    let (lab, _g) = up(spec(Backend::Vxlan, Underlay::Routed, 3));
    assert_matrices(&lab);
    for to in [2, 3] {
        assert_eq!(route6(&lab, 1, to)["dev"], "twill6.1");
        assert_eq!(path(&lab, 1, to).0, "vxlan");
    }
}

/// DirectRouting across a router, 3 nodes: h3 shares h1's subnet and is routed directly via
/// its IPv6 underlay address; h2 is across the router and reached through `dev` (as path
/// `via`), both ways.
fn direct_routing_dual_stack_across_a_router(backend: Backend, via: &str, dev: &str) {
    let (lab, _g) = up(spec(backend, Underlay::Routed, 3).direct_routing(true));
    assert_matrices(&lab);
    assert_eq!(path(&lab, 1, 3).0, "direct");
    let r = route6(&lab, 1, 3);
    assert_eq!(r["gateway"], host_ip6(&lab, 3), "{r}");
    assert_eq!(r["dev"], "eth0", "{r}");
    assert_eq!(path(&lab, 1, 2).0, via);
    assert_eq!(route6(&lab, 1, 2)["dev"], dev);
    assert_eq!(route6(&lab, 2, 1)["dev"], dev);
}

#[test]
#[ignore = "needs root"]
fn vxlan_direct_routing_dual_stack_across_a_router() {
    // Across the router: encapsulated, over IPv6.
    direct_routing_dual_stack_across_a_router(Backend::Vxlan, "vxlan", "twill6.1");
}

/// udp and ipip carry IPv6 pods through the userspace tunnel over the IPv4 underlay: the
/// IPv6 route to each peer leads into `twill.tun`, and both matrices hold.
fn tunnel_dual_stack_on_l2(backend: Backend, via: &str) {
    let (lab, _g) = up(spec(backend, Underlay::L2, 2).pods_per_node(2));
    assert_matrices(&lab);
    for (from, to) in [(1, 2), (2, 1)] {
        let r = route6(&lab, from, to);
        assert_eq!(r["dev"], "twill.tun", "h{from} -> h{to}: {r}");
        assert_eq!(path(&lab, from, to).0, via);
    }
}

#[test]
#[ignore = "needs root"]
fn udp_dual_stack_on_l2() {
    tunnel_dual_stack_on_l2(Backend::Udp, "udp");
}

#[test]
#[ignore = "needs root"]
fn ipip_dual_stack_on_l2() {
    tunnel_dual_stack_on_l2(Backend::Ipip, "ipip");
}

#[test]
#[ignore = "needs root"]
fn udp_dual_stack_across_a_router() {
    let (lab, _g) = up(spec(Backend::Udp, Underlay::Routed, 3));
    assert_matrices(&lab);
    for to in [2, 3] {
        assert_eq!(route6(&lab, 1, to)["dev"], "twill.tun");
        assert_eq!(path(&lab, 1, to).0, "udp");
    }
}

#[test]
#[ignore = "needs root"]
fn wireguard_dual_stack_across_a_router() {
    let (lab, _g) = up(spec(Backend::Wireguard, Underlay::Routed, 3));
    assert_matrices(&lab);
    for to in [2, 3] {
        assert_eq!(route6(&lab, 1, to)["dev"], "twill.wg", "h1 -> h{to}");
    }
}

#[test]
#[ignore = "needs root"]
fn ipip_direct_routing_dual_stack_across_a_router() {
    // Across the router: through the tunnel.
    direct_routing_dual_stack_across_a_router(Backend::Ipip, "ipip", "twill.tun");
}

#[test]
#[ignore = "needs root"]
fn host_gw_dual_stack_skips_cross_subnet_peers() {
    let (lab, _g) = up(spec(Backend::HostGw, Underlay::Routed, 3));
    // The matrices skip the cross-subnet pairs (and say so) and reach the others.
    assert_matrices(&lab);
    let m6 = lab.ping6_matrix().unwrap();
    let skipped = m6
        .probes
        .iter()
        .filter(|p| p.outcome == twill_lab::Outcome::Skipped)
        .count();
    assert_eq!(skipped, 4, "{}", m6.render());
    // twill status: h2 skipped with a reason, h3 direct; no IPv6 route to h2's pods.
    let (via, reason) = path(&lab, 1, 2);
    assert_eq!(via, "skipped");
    assert!(
        reason.as_deref().is_some_and(|r| !r.is_empty()),
        "no reason"
    );
    assert_eq!(path(&lab, 1, 3).0, "direct");
    assert!(routes6(&lab, 1, 2).is_empty(), "{:?}", routes6(&lab, 1, 2));
    assert_eq!(route6(&lab, 1, 3)["gateway"], host_ip6(&lab, 3));
    // `twill lab status` shows it too.
    let out = Command::new(TWILL)
        .args(["lab", "status", "--name", lab.name()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("h2 skipped ("), "{text}");
    assert!(
        text.contains("ipv6 fd00:1::11 subnet6 fd00:10:244:"),
        "{text}"
    );
}

/// `twill lab ping` prints both matrices of a dual-stack lab; `--json` has the IPv6 one under
/// `ipv6`.
#[test]
#[ignore = "needs root"]
fn lab_ping_prints_both_families() {
    let (lab, _g) = up(spec(Backend::Vxlan, Underlay::L2, 2));
    let out = Command::new(TWILL)
        .args(["lab", "ping", "--name", lab.name()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("\nall 2 expected paths ok\n"), "{text}");
    assert!(text.contains("ping -6: all 2 expected paths ok"), "{text}");
    assert!(text.contains(&pod_ip6(&lab, 2)), "{text}");
    let out = Command::new(TWILL)
        .args(["lab", "ping", "--json", "--name", lab.name()])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["ipv6"]["ok"], true, "{json}");
    assert_eq!(json["ipv6"]["pods"][1]["ip"], pod_ip6(&lab, 2), "{json}");
}

#[test]
#[ignore = "needs root"]
fn nat_outgoing_ipv6_to_the_world() {
    let (mut lab, _g) = up(spec(Backend::Vxlan, Underlay::L2, 2));
    assert_nat_outgoing6(&mut lab);
}

#[test]
#[ignore = "needs root"]
fn tcp_stream_over_ipv6_between_pods() {
    let (lab, _g) = up(spec(Backend::Vxlan, Underlay::Routed, 2));
    let dst = pod_ip6(&lab, 2);
    let server = spawn_in(&lab, "h2-p1", &["iperf3", "-s", "-1", "-p", "5201"]);
    let server = KillOnDrop(server);
    // The server listens once its port is bound; poll rather than sleep.
    wait_for("iperf3 to listen in h2-p1", 10, || {
        let out = lab
            .exec("h2-p1", &["ss", "-Htln", "sport = :5201"])
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.trim().is_empty() {
            Err("not listening".into())
        } else {
            Ok(())
        }
    });
    let client = lab
        .exec(
            "h1-p1",
            &["iperf3", "-6", "-c", &dst, "-t", "3", "-b", "50M", "-J"],
        )
        .unwrap();
    let report: Value = serde_json::from_slice(&client.stdout).unwrap_or(Value::Null);
    assert!(
        client.status.success() && report["error"].is_null(),
        "the TCP stream over IPv6 failed: {}",
        String::from_utf8_lossy(&client.stdout)
    );
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(received > 1_000_000, "only {received} bytes: {report}");
    let remote = report["start"]["connected"][0]["remote_host"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(remote, dst, "{report}");
    drop(server);
}

/// Pod IPv6 between two vxlan nodes crosses the underlay as VXLAN over IPv6 (UDP 8472, outer
/// addresses the nodes' IPv6 underlay addresses) carrying the pods' own IPv6 packets; never in
/// the clear, never inside the IPv4 VXLAN.
#[test]
#[ignore = "needs root"]
fn vxlan_carries_pod_ipv6_in_vxlan_over_ipv6() {
    let (lab, _g) = up(spec(Backend::Vxlan, Underlay::L2, 2));
    let report = wire_report(&lab);
    // 3 requests and 3 replies each way, each seen on two bridge ports.
    assert!(
        report["v6InV6"].as_u64().unwrap_or(0) >= 12,
        "pod IPv6 not in VXLAN over IPv6: {report}"
    );
    assert_eq!(report["v6InV4"], 0, "pod IPv6 inside IPv4 VXLAN: {report}");
    assert_eq!(report["clearV6"], 0, "pod IPv6 in the clear: {report}");
    assert_eq!(report["vnis"], serde_json::json!([1]), "{report}");
    assert_outer_pairs(&report, "outer6", &host_ip6(&lab, 1), &host_ip6(&lab, 2));
}

/// Pod IPv6 between two udp (or ipip) nodes crosses the IPv4 underlay inside the tunnel: as
/// the payload of UDP 8285 (udp) or as IPv4 protocol 41 (ipip), the outer addresses the
/// nodes' IPv4 underlay addresses; never in the clear.
#[test]
#[ignore = "needs root"]
fn udp_and_ipip_carry_pod_ipv6_over_the_ipv4_underlay() {
    for (backend, key, other) in [
        (Backend::Udp, "udp6", "ipip6"),
        (Backend::Ipip, "ipip6", "udp6"),
    ] {
        let (lab, _g) = up(spec(backend, Underlay::L2, 2));
        let report = wire_report_by(&lab, TUNNEL_WIRE_CHECK, UDP_PORT);
        // 3 requests and 3 replies each way, each seen on at least one bridge port.
        assert!(
            report[key].as_u64().unwrap_or(0) >= 12,
            "{backend:?}: pod IPv6 not in {key}: {report}"
        );
        assert_eq!(report[other], 0, "{backend:?}: {report}");
        assert_eq!(
            report["clearV6"], 0,
            "{backend:?}: pod IPv6 in the clear: {report}"
        );
        let host_ip = |i| lab.state().host(i).unwrap().ip4().to_string();
        assert_outer_pairs(&report, "outer4", &host_ip(1), &host_ip(2));
    }
}

/// A dual-stack node whose underlay is IPv4 only: its peers carry its pods' IPv6 through the
/// IPv4 VTEP (VXLAN over IPv4 UDP 8472, inner IPv6 pod packets), and both matrices hold.
#[test]
#[ignore = "needs root"]
fn vxlan_carries_pod_ipv6_over_an_ipv4_underlay_when_a_node_lacks_ipv6() {
    let (lab, _g) = up(spec(Backend::Vxlan, Underlay::L2, 2).ipv4_underlay_hosts([2]));
    assert!(lab.state().host(2).unwrap().ip6.is_none());
    assert_matrices(&lab);
    assert_eq!(route6(&lab, 1, 2)["dev"], "twill.1");
    assert_eq!(route6(&lab, 2, 1)["dev"], "twill.1");
    let report = wire_report(&lab);
    assert!(
        report["v6InV4"].as_u64().unwrap_or(0) >= 12,
        "pod IPv6 not in VXLAN over IPv4: {report}"
    );
    assert_eq!(report["v6InV6"], 0, "{report}");
    assert_eq!(report["clearV6"], 0, "pod IPv6 in the clear: {report}");
}

/// The dual-stack underlay alone (no agents): every host and the outside host have their
/// IPv6 address at once (no tentative address waiting for DAD), hosts on one segment reach
/// each other, and the router forwards IPv6 between the segments.
#[test]
#[ignore = "needs root"]
fn dual_stack_underlay_reaches_across_the_router() {
    require_root();
    let spec = spec(Backend::Vxlan, Underlay::Routed, 3);
    let _g = Guard(spec.name.clone());
    let mut lab = Lab::build_topology(&spec).unwrap();
    let (outside, _) = lab.add_outside_host(0).unwrap();
    let outside6 = lab.outside_host_ip6(0).unwrap().to_string();
    assert_eq!(outside6, "fd00:1::240");
    for i in 1..=3 {
        let out = lab
            .exec(
                &format!("h{i}"),
                &["ip", "-6", "-j", "addr", "show", "dev", "eth0"],
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&host_ip6(&lab, i)), "h{i}: {text}");
        assert!(!text.contains("tentative"), "h{i}: {text}");
    }
    assert_eq!(host_ip6(&lab, 2), "fd00:2::12");
    // Within h1's segment, across the router, and to the outside host; both ways.
    for (from, to) in [(1, 3), (1, 2), (2, 3)] {
        let dst = host_ip6(&lab, to);
        let ping = lab
            .exec(
                &format!("h{from}"),
                &["ping", "-6", "-n", "-c", "1", "-W", "2", &dst],
            )
            .unwrap();
        assert!(ping.status.success(), "h{from} -> h{to} ({dst}): {ping:?}");
    }
    let dst = host_ip6(&lab, 2);
    let ping = Command::new("ip")
        .args([
            "netns", "exec", &outside, "ping", "-6", "-n", "-c", "1", "-W", "2", &dst,
        ])
        .output()
        .unwrap();
    assert!(ping.status.success(), "outside -> h2: {ping:?}");
}
