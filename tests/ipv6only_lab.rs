//! IPv6-only clusters in the lab (`--ip-family ipv6`), with real agents (root only): hosts
//! whose underlay links have no IPv4 address, etcd reached over IPv6 with TLS, pods with only
//! an IPv6 address, and the `ping -6` matrix for host-gw, vxlan, udp and ipip on the L2 and
//! the routed underlay (host-gw via the peers' IPv6 addresses and skipping cross-subnet peers
//! with a reason, vxlan through the IPv6 VTEP alone, udp and ipip through the TUN device over
//! the IPv6 underlay, DirectRouting direct within a subnet and encapsulated across, routed
//! pods); VXLAN, IPv6 UDP and ip6tnl framing over IPv6 on the wire (scapy); IPv6 natOutgoing
//! to a world namespace; WireGuard (the backend on both underlays, and CrossSubnet encryption
//! on vxlan) with only WireGuard over IPv6 on the wire; BGP's mesh over IPv6 sessions (BIRD as
//! top-of-rack of an IPv6-only cluster is in tests/bgp6_lab.rs); `twill lab up/ping/status` on
//! the command line.
//! Needs tcpdump and python3-scapy (for /usr/bin/python3).

mod dualstack;
mod lab_common;
mod wireguard6;

use std::process::Command;

use dualstack::*;
use lab_common::{Guard, pod_ip6};
use serde_json::Value;
use twill_lab::{Backend, EncryptMode, IpFamily, Lab, LabSpec, Outcome, PodMode, Underlay};
use twill_testkit::random_suffix;

/// An IPv6-only lab of `nodes` hosts with one pod each.
fn spec(backend: Backend, underlay: Underlay, nodes: u32) -> LabSpec {
    spec_of(IpFamily::Ipv6, backend, underlay, nodes)
}

/// The `ping -6` matrix holds every pair it should and probed every pod; the IPv4 one has
/// nothing to probe. Returns how many pairs were skipped as not expected to be reachable.
fn assert_matrix6(lab: &Lab) -> usize {
    let m = lab.ping_matrix();
    assert!(
        m.pods.is_empty() && m.probes.is_empty(),
        "an IPv6-only lab's pods have IPv4 addresses: {:?}",
        lab.pods()
    );
    let m6 = lab
        .ping6_matrix()
        .expect("an IPv6-only lab has a ping -6 matrix");
    assert_eq!(m6.pods.len(), lab.pods().len(), "{:?}", lab.pods());
    assert!(m6.all_ok(), "{}", m6.render());
    assert!(
        m6.probes.iter().any(|p| p.outcome == Outcome::Ok),
        "nothing was probed:\n{}",
        m6.render()
    );
    eprintln!("{}:\n{}", lab.name(), m6.render());
    m6.probes
        .iter()
        .filter(|p| p.outcome == Outcome::Skipped)
        .count()
}

/// `ip -4 -j addr` of `target` (a host or pod) has no address but loopback's: no IPv4 on any
/// link of an IPv6-only lab's hosts and pods.
fn assert_no_ipv4(lab: &Lab, target: &str) {
    let out = lab
        .exec(target, &["ip", "-4", "-j", "addr", "show"])
        .unwrap();
    let links: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let with_ipv4: Vec<&Value> = links.iter().filter(|l| l["ifname"] != "lo").collect();
    assert!(with_ipv4.is_empty(), "{target} has IPv4: {with_ipv4:?}");
}

/// The agent of host `i` made no IPv4 pod network objects: no IPv4 VTEP, no IPv4 forwarding.
fn assert_no_ipv4_dataplane(lab: &Lab, i: u32) {
    let h = format!("h{i}");
    let link = lab.exec(&h, &["ip", "link", "show", "twill.1"]).unwrap();
    assert!(!link.status.success(), "{h} has an IPv4 VTEP");
    let fwd = lab
        .exec(&h, &["sysctl", "-n", "net.ipv4.ip_forward"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "0", "{h}");
}

#[test]
#[ignore = "needs root"]
fn host_gw_ipv6_only_on_l2() {
    let (lab, _g) = up(spec(Backend::HostGw, Underlay::L2, 2).pods_per_node(2));
    assert_eq!(assert_matrix6(&lab), 0);
    assert!(lab.state().store.starts_with("etcd://[fd00:100::1]:"));
    for i in 1..=2 {
        let h = lab.state().host(i).unwrap();
        assert!(h.ip.is_none() && h.gateway.is_none(), "{h:?}");
        assert_no_ipv4(&lab, &format!("h{i}"));
        assert_no_ipv4(&lab, &format!("h{i}-p1"));
        assert_no_ipv4_dataplane(&lab, i);
        let s = lab.host_status(i).unwrap();
        assert!(s.subnet.is_none() && s.public_ip.is_none(), "{s:?}");
        assert_eq!(s.public_ip6.as_deref(), Some(host_ip6(&lab, i).as_str()));
    }
    // host-gw routes each peer's IPv6 pods via its IPv6 underlay address.
    for (from, to) in [(1, 2), (2, 1)] {
        let r = route6(&lab, from, to);
        assert_eq!(r["gateway"], host_ip6(&lab, to), "h{from} -> h{to}: {r}");
        assert_eq!(r["dev"], "eth0", "{r}");
        assert_eq!(path(&lab, from, to).0, "direct");
    }
}

#[test]
#[ignore = "needs root"]
fn host_gw_ipv6_only_skips_cross_subnet_peers() {
    // h1 and h3 share a subnet; h2 is across the router.
    let (lab, _g) = up(spec(Backend::HostGw, Underlay::Routed, 3));
    assert_eq!(assert_matrix6(&lab), 4);
    assert!(lab.state().store.starts_with("etcd://[fd00:1::1]:"));
    let (via, reason) = path(&lab, 1, 2);
    assert_eq!(via, "skipped");
    assert!(
        reason
            .as_deref()
            .is_some_and(|r| r.contains("not on this node's IPv6 segment")),
        "{reason:?}"
    );
    assert!(routes6(&lab, 1, 2).is_empty(), "{:?}", routes6(&lab, 1, 2));
    assert_eq!(route6(&lab, 1, 3)["gateway"], host_ip6(&lab, 3));
    // Not merely unprobed: h2's pod really is unreachable from h1's.
    let to = pod_ip6(&lab, 2);
    let ping = lab
        .exec("h1-p1", &["ping", "-6", "-c", "1", "-W", "1", &to])
        .unwrap();
    assert!(!ping.status.success(), "h1-p1 reached {to} across subnets");
}

#[test]
#[ignore = "needs root"]
fn vxlan_ipv6_only_across_a_router() {
    // Every peer through the IPv6 VTEP, across the router too; pods attached routed (Calico's
    // layout) for once.
    let (lab, _g) = up(spec(Backend::Vxlan, Underlay::Routed, 3).pod_mode(PodMode::Routed));
    assert_eq!(assert_matrix6(&lab), 0);
    for to in [2, 3] {
        assert_eq!(route6(&lab, 1, to)["dev"], "twill6.1");
        assert_eq!(path(&lab, 1, to).0, "vxlan");
    }
    for i in 1..=3 {
        assert_no_ipv4_dataplane(&lab, i);
    }
    assert_no_ipv4(&lab, "h2-p1");
}

#[test]
#[ignore = "needs root"]
fn vxlan_direct_routing_ipv6_only_across_a_router() {
    let (lab, _g) = up(spec(Backend::Vxlan, Underlay::Routed, 3).direct_routing(true));
    assert_eq!(assert_matrix6(&lab), 0);
    // h3 shares h1's subnet: a plain route via its IPv6 address; h2 is across the router:
    // through the IPv6 VTEP, both ways.
    assert_eq!(path(&lab, 1, 3).0, "direct");
    let r = route6(&lab, 1, 3);
    assert_eq!(r["gateway"], host_ip6(&lab, 3), "{r}");
    assert_eq!(r["dev"], "eth0", "{r}");
    assert_eq!(path(&lab, 1, 2).0, "vxlan");
    assert_eq!(route6(&lab, 1, 2)["dev"], "twill6.1");
    assert_eq!(route6(&lab, 2, 1)["dev"], "twill6.1");
}

/// Pod IPv6 between two vxlan nodes of an IPv6-only cluster crosses the underlay as VXLAN
/// over IPv6 between the nodes' IPv6 addresses, never in the clear; and nothing on the wire
/// is IPv4 (the underlay has none).
#[test]
#[ignore = "needs root"]
fn vxlan_ipv6_only_carries_pods_in_vxlan_over_ipv6() {
    let (lab, _g) = up(spec(Backend::Vxlan, Underlay::L2, 2));
    let report = wire_report(&lab);
    assert!(
        report["v6InV6"].as_u64().unwrap_or(0) >= 12,
        "pod IPv6 not in VXLAN over IPv6: {report}"
    );
    assert_eq!(report["v6InV4"], 0, "{report}");
    assert_eq!(report["clearV6"], 0, "pod IPv6 in the clear: {report}");
    assert_outer_pairs(&report, "outer6", &host_ip6(&lab, 1), &host_ip6(&lab, 2));
}

/// udp and ipip in an IPv6-only cluster: the pods' IPv6 goes through the TUN device over the
/// IPv6 underlay (IPv6 UDP to 8285, or ip6tnl's next header 41), between the nodes' IPv6
/// addresses, never in the clear and never over IPv4 (there is none).
fn tunnel_ipv6_only_on_l2(backend: Backend, key: &str, via: &str) {
    let (lab, _g) = up(spec(backend, Underlay::L2, 2).pods_per_node(2));
    assert_eq!(assert_matrix6(&lab), 0);
    for (from, to) in [(1, 2), (2, 1)] {
        assert_eq!(
            route6(&lab, from, to)["dev"],
            "twill.tun",
            "h{from} -> h{to}"
        );
        assert_eq!(path(&lab, from, to).0, via);
        assert_no_ipv4_dataplane(&lab, from);
    }
    let report = wire_report_by(&lab, TUNNEL_WIRE_CHECK, UDP_PORT);
    // 3 requests and 3 replies each way, each seen on at least one bridge port.
    assert!(
        report[key].as_u64().unwrap_or(0) >= 12,
        "{backend:?}: pod IPv6 not in {key}: {report}"
    );
    let total: u64 = ["udp6", "ipip6", "udp6in6", "ipip6in6"]
        .iter()
        .map(|k| report[*k].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(
        total,
        report[key].as_u64().unwrap(),
        "{backend:?}: {report}"
    );
    assert_eq!(report["clearV6"], 0, "{backend:?}: in the clear: {report}");
    assert_outer_pairs(&report, "outer6", &host_ip6(&lab, 1), &host_ip6(&lab, 2));
}

#[test]
#[ignore = "needs root"]
fn udp_ipv6_only_on_l2() {
    tunnel_ipv6_only_on_l2(Backend::Udp, "udp6in6", "udp");
}

#[test]
#[ignore = "needs root"]
fn ipip_ipv6_only_on_l2() {
    tunnel_ipv6_only_on_l2(Backend::Ipip, "ipip6in6", "ipip");
}

#[test]
#[ignore = "needs root"]
fn udp_ipv6_only_across_a_router() {
    let (lab, _g) = up(spec(Backend::Udp, Underlay::Routed, 3));
    assert_eq!(assert_matrix6(&lab), 0);
    for to in [2, 3] {
        assert_eq!(route6(&lab, 1, to)["dev"], "twill.tun");
        assert_eq!(path(&lab, 1, to).0, "udp");
    }
}

#[test]
#[ignore = "needs root"]
fn ipip_direct_routing_ipv6_only_across_a_router() {
    let (lab, _g) = up(spec(Backend::Ipip, Underlay::Routed, 3).direct_routing(true));
    assert_eq!(assert_matrix6(&lab), 0);
    assert_eq!(path(&lab, 1, 3).0, "direct");
    assert_eq!(route6(&lab, 1, 3)["gateway"], host_ip6(&lab, 3));
    assert_eq!(path(&lab, 1, 2).0, "ipip");
    assert_eq!(route6(&lab, 1, 2)["dev"], "twill.tun");
    assert_eq!(route6(&lab, 2, 1)["dev"], "twill.tun");
}

/// The wireguard backend in an IPv6-only cluster (Flannel's net-conf, no `Mode`: flanneld's
/// one IPv6 device on `ListenPortV6`, 51821): every peer's IPv6 pods through `twill.wg`, and
/// the underlay carries only WireGuard, over IPv6, with nothing of the pods in clear.
#[test]
#[ignore = "needs root"]
fn wireguard_ipv6_only_on_l2() {
    let (lab, _g) = up(spec(Backend::Wireguard, Underlay::L2, 2).pods_per_node(2));
    assert_eq!(assert_matrix6(&lab), 0);
    for (from, to) in [(1, 2), (2, 1)] {
        assert_eq!(
            route6(&lab, from, to)["dev"],
            "twill.wg",
            "h{from} -> h{to}"
        );
        assert_no_ipv4_dataplane(&lab, from);
    }
    let report = wireguard6::wire_proof6_on(&lab, &[], 51821);
    assert_eq!(report["notIpv6Count"], 0, "IPv4 on the underlay: {report}");
}

/// The wireguard backend across a router in an IPv6-only cluster: every peer, on either
/// subnet, through `twill.wg` over the routed IPv6 underlay.
#[test]
#[ignore = "needs root"]
fn wireguard_ipv6_only_across_a_router() {
    let (lab, _g) = up(spec(Backend::Wireguard, Underlay::Routed, 3));
    assert_eq!(assert_matrix6(&lab), 0);
    for to in [2, 3] {
        assert_eq!(route6(&lab, 1, to)["dev"], "twill.wg", "h1 -> h{to}");
    }
    assert_eq!(route6(&lab, 2, 1)["dev"], "twill.wg");
}

/// BGP's node-to-node mesh on the L2 underlay of an IPv6-only cluster: sessions over IPv6,
/// each node's IPv6 block installed on the others via its IPv6 underlay address.
#[test]
#[ignore = "needs root"]
fn bgp_mesh_ipv6_only_on_l2() {
    let (lab, _g) = up(spec(Backend::Bgp, Underlay::L2, 3).bgp("holdTime: 3"));
    // Learned routes appear as the sessions come up; the matrix waits for nothing else.
    for (from, to) in [(1, 2), (1, 3), (2, 1), (3, 2)] {
        lab_common::wait_for(
            &format!("h{from}'s BGP route to h{to}"),
            30,
            || match routes6(&lab, from, to).first() {
                Some(r) if r["gateway"] == host_ip6(&lab, to) => Ok(()),
                r => Err(format!("{r:?}")),
            },
        );
        assert_eq!(route6(&lab, from, to)["dev"], "eth0");
    }
    assert_eq!(assert_matrix6(&lab), 0);
}

/// WireGuard encryption (`--encrypt`, CrossSubnet) on vxlan in an IPv6-only cluster across a
/// router: h3 shares h1's subnet and stays on the IPv6 VTEP, h2 is across it and encrypted.
#[test]
#[ignore = "needs root"]
fn encrypted_vxlan_ipv6_only_cross_subnet() {
    let spec = spec(Backend::Vxlan, Underlay::Routed, 3).encrypt(EncryptMode::CrossSubnet);
    let (lab, _g) = up(spec);
    assert_eq!(assert_matrix6(&lab), 0);
    assert_eq!(route6(&lab, 1, 2)["dev"], "twill.wg");
    assert_eq!(route6(&lab, 2, 1)["dev"], "twill.wg");
    assert_eq!(route6(&lab, 1, 3)["dev"], "twill6.1");
    let report = wireguard6::wire_proof6(&lab, &[(1, 3)]);
    assert_eq!(report["notIpv6Count"], 0, "IPv4 on the underlay: {report}");
}

/// natOutgoing of the IPv6 pool: a pod reaches a world namespace that has no route to the pod
/// network, which sees the node's IPv6 underlay address; pods see each other's own address.
#[test]
#[ignore = "needs root"]
fn nat_outgoing_ipv6_only_to_the_world() {
    let (mut lab, _g) = up(spec(Backend::HostGw, Underlay::L2, 2));
    assert_nat_outgoing6(&mut lab);
    assert_eq!(
        lab.outside_host_ip6(0).unwrap().to_string(),
        "fd00:100::240"
    );
}

/// The command line: `twill lab up --ip-family ipv6` builds it, `lab status` shows IPv6
/// addresses and subnets only, `lab ping` prints the `ping -6` matrix alone and `--json` has
/// an empty IPv4 matrix, the IPv6 one under `ipv6`, and `ok` over both.
#[test]
#[ignore = "needs root"]
fn lab_cli_builds_an_ipv6_only_lab() {
    twill_testkit::require_root();
    let name = format!("d{}", random_suffix(5));
    let _g = Guard(name.clone());
    let out = Command::new(TWILL)
        .args(["lab", "up", "--name", &name, "--nodes", "2"])
        .args([
            "--backend",
            "vxlan",
            "--ip-family",
            "ipv6",
            "--pods-per-node",
            "1",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("underlay l2 (IPv6-only, pods in fd00:10:244::/56)"),
        "{text}"
    );
    assert!(text.contains("store etcd://[fd00:100::1]:2379"), "{text}");
    assert!(
        text.contains("h1   fd00:100::11    subnet fd00:10:244:"),
        "{text}"
    );
    assert!(!text.contains("10.244."), "{text}");
    let lab = Lab::load(&name).unwrap();
    let out = Command::new(TWILL)
        .args(["lab", "ping", "--name", &name])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("from\\to"), "{text}");
    assert!(text.contains("ping -6: all 2 expected paths ok"), "{text}");
    assert_eq!(text.matches("expected paths").count(), 1, "{text}");
    let out = Command::new(TWILL)
        .args(["lab", "ping", "--json", "--name", &name])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true, "{json}");
    assert_eq!(json["pods"], serde_json::json!([]), "{json}");
    assert_eq!(json["ipv6"]["ok"], true, "{json}");
    assert_eq!(json["ipv6"]["pods"][1]["ip"], pod_ip6(&lab, 2), "{json}");
    let out = Command::new(TWILL)
        .args(["lab", "status", "--json", "--name", &name])
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ipFamily"], "ipv6", "{json}");
    assert_eq!(json["hosts"][1]["ip6"], "fd00:100::12", "{json}");
    assert!(json["hosts"][1]["ip"].is_null(), "{json}");
    assert!(json["pods"][0].get("ip").is_none(), "{json}");
    let out = Command::new(TWILL)
        .args(["lab", "down", "--name", &name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(!twill_lab::plan::state_dir(&name).exists());
}
