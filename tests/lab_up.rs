//! The whole `twill lab` flow with the real binary: underlay, etcd, `twill cluster init`, real
//! agents, pods attached by the real plugin, convergence, the pod-to-pod ping matrix, faults
//! (agent killed, etcd restarted) and `down`. Root only (`--include-ignored`). Each test uses
//! its own lab name so they run in parallel; a guard removes the lab even when one fails.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use twill_lab::plan;
use twill_lab::{AgentStatus, Backend, Lab, LabSpec, Outcome, PodMode, Signal, Underlay};
use twill_testkit::{random_suffix, require_root};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

/// Removes the lab on drop, pass or fail.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = twill_lab::down(&self.0);
    }
}

fn spec() -> (LabSpec, Guard) {
    let name = format!("t{}", random_suffix(5));
    (LabSpec::new(&name), Guard(name))
}

fn up(spec: &LabSpec) -> Lab {
    Lab::up(spec, Path::new(TWILL)).unwrap_or_else(|e| panic!("lab up: {e:#}"))
}

/// Every pod reaches every pod it should; the matrix is in the message otherwise.
fn assert_all_reach(lab: &Lab) {
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "pods cannot reach each other:\n{}", m.render());
}

fn statuses(lab: &Lab) -> Vec<AgentStatus> {
    lab.wait_converged(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// The path host `from`'s agent reports to `to` (`direct`, `vxlan`, `skipped`, ...).
fn via(statuses: &[AgentStatus], from: usize, to: &str) -> String {
    statuses[from - 1]
        .peers
        .iter()
        .find(|p| p.node == to)
        .unwrap_or_else(|| panic!("h{from} does not know {to}"))
        .path
        .via
        .clone()
}

/// Nothing of the lab is left: namespaces, state, processes.
fn assert_gone(name: &str) {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let left: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| plan::belongs_to(name, ns))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "namespaces left: {left:?}");
    assert!(!plan::state_dir(name).exists(), "state dir left");
    let needle = plan::state_dir(name).display().to_string();
    let procs: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let c = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            c.contains(&needle).then(|| format!("{pid}: {c}"))
        })
        .collect();
    assert!(procs.is_empty(), "processes left: {procs:?}");
}

#[test]
#[ignore = "needs root"]
fn vxlan_on_l2_up_ping_down() {
    require_root();
    let (spec, _g) = spec();
    let lab = up(&spec.nodes(3).backend(Backend::Vxlan).pods_per_node(2));
    assert_eq!(lab.pods().len(), 6);
    let st = statuses(&lab);
    // Distinct subnets from the cluster's network, one per node.
    let mut subnets: Vec<String> = st.iter().map(|s| s.subnet.clone().unwrap()).collect();
    assert!(
        subnets.iter().all(|s| s.starts_with("10.244.")),
        "{subnets:?}"
    );
    subnets.sort();
    subnets.dedup();
    assert_eq!(subnets.len(), 3);
    // Every pod's address is in its host's subnet.
    for p in lab.pods() {
        let subnet = st[p.host as usize - 1].subnet.clone().unwrap();
        let prefix = format!("{}.", subnet.rsplit_once('.').unwrap().0);
        assert!(
            p.ip4().to_string().starts_with(&prefix),
            "{} not in {subnet}",
            p.ip4()
        );
    }
    assert_eq!(via(&st, 1, "h2"), "vxlan");
    assert_all_reach(&lab);
    let name = lab.name().to_string();
    lab.down().unwrap();
    assert_gone(&name);
}

#[test]
#[ignore = "needs root"]
fn host_gw_on_routed_skips_peers_across_subnets() {
    require_root();
    let (spec, _g) = spec();
    let lab = up(&spec
        .nodes(4)
        .backend(Backend::HostGw)
        .underlay(Underlay::Routed)
        .pods_per_node(1));
    let st = statuses(&lab);
    assert_eq!(via(&st, 1, "h3"), "direct");
    assert_eq!(via(&st, 1, "h2"), "skipped");
    assert_eq!(via(&st, 2, "h4"), "direct");
    assert_eq!(via(&st, 2, "h3"), "skipped");
    let reason = st[0].peers.iter().find(|p| p.node == "h2").unwrap();
    assert!(
        reason.path.reason.as_deref().is_some_and(|r| !r.is_empty()),
        "no reason given"
    );

    let m = lab.ping_matrix();
    assert!(m.all_ok(), "{}", m.render());
    assert_eq!(m.get("h1-p1", "h3-p1").unwrap().outcome, Outcome::Ok);
    assert_eq!(m.get("h1-p1", "h2-p1").unwrap().outcome, Outcome::Skipped);
    let name = lab.name().to_string();
    lab.down().unwrap();
    assert_gone(&name);
}

#[test]
#[ignore = "needs root"]
fn vxlan_direct_routing_encapsulates_only_across_subnets() {
    require_root();
    let (spec, _g) = spec();
    let lab = up(&spec
        .nodes(4)
        .backend(Backend::Vxlan)
        .direct_routing(true)
        .underlay(Underlay::Routed)
        .pods_per_node(1));
    let st = statuses(&lab);
    assert_eq!(via(&st, 1, "h3"), "direct");
    assert_eq!(via(&st, 1, "h2"), "vxlan");
    assert_eq!(via(&st, 4, "h2"), "direct");
    assert_eq!(via(&st, 4, "h3"), "vxlan");
    assert_all_reach(&lab);
    let name = lab.name().to_string();
    lab.down().unwrap();
    assert_gone(&name);
}

#[test]
#[ignore = "needs root"]
fn single_node_runs_on_the_embedded_store() {
    require_root();
    let (spec, _g) = spec();
    let lab = up(&spec.nodes(1).backend(Backend::Vxlan).pods_per_node(3));
    assert!(lab.state().etcd.is_none());
    assert!(lab.state().store.starts_with("embedded:"));
    assert_all_reach(&lab);
    let name = lab.name().to_string();
    lab.down().unwrap();
    assert_gone(&name);
}

#[test]
#[ignore = "needs root"]
fn traffic_survives_agent_and_etcd_restarts() {
    require_root();
    let (spec, _g) = spec();
    let mut lab = up(&spec.nodes(3).backend(Backend::Vxlan).pods_per_node(1));
    assert_all_reach(&lab);

    // An agent killed mid-work: its kernel state stays, so traffic keeps flowing.
    lab.kill_agent(2, Signal::SIGKILL).unwrap();
    assert!(!lab.agent_alive(2));
    assert_all_reach(&lab);
    lab.start_agent(2).unwrap();
    statuses(&lab);
    assert_all_reach(&lab);

    // The store goes away and comes back: agents ride it out and resync.
    lab.stop_etcd().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_all_reach(&lab);
    for i in 1..=3 {
        assert!(lab.agent_alive(i), "agent h{i} died without its store");
    }
    lab.start_etcd().unwrap();
    statuses(&lab);
    assert_all_reach(&lab);

    let name = lab.name().to_string();
    lab.down().unwrap();
    assert_gone(&name);
}

/// The rest of the backend × underlay matrix: every pod reaches every pod, and each agent
/// reports the path it chose for each peer.
fn reach_case(backend: Backend, direct_routing: bool, underlay: Underlay, path: &'static str) {
    reach_case_with(
        backend,
        direct_routing,
        underlay,
        PodMode::Bridge,
        |_, _| path,
    );
}

/// Like [`reach_case`], with the pods' mode and the expected path per pair (`from` index,
/// `to` index).
fn reach_case_with(
    backend: Backend,
    direct_routing: bool,
    underlay: Underlay,
    pod_mode: PodMode,
    path: impl Fn(u32, u32) -> &'static str,
) {
    require_root();
    let (spec, _g) = spec();
    let lab = up(&spec
        .nodes(3)
        .backend(backend)
        .direct_routing(direct_routing)
        .underlay(underlay)
        .pod_mode(pod_mode)
        .pods_per_node(1));
    if pod_mode == PodMode::Routed {
        // Calico's layout: no bridge, each pod a host route to its veth.
        for h in ["h1", "h2", "h3"] {
            let out = lab
                .exec(h, &["ip", "-o", "link", "show", "type", "bridge"])
                .unwrap();
            let out = String::from_utf8_lossy(&out.stdout);
            assert!(out.trim().is_empty(), "{h}: a bridge in routed mode: {out}");
        }
    }
    let st = statuses(&lab);
    for (from, to) in [(1, 2), (1, 3), (2, 3), (3, 1)] {
        let to_name = format!("h{to}");
        assert_eq!(
            via(&st, from as usize, &to_name),
            path(from, to),
            "h{from} -> {to_name}"
        );
    }
    assert_all_reach(&lab);
    let name = lab.name().to_string();
    lab.down().unwrap();
    assert_gone(&name);
}

#[test]
#[ignore = "needs root"]
fn host_gw_on_l2_routes_directly() {
    reach_case(Backend::HostGw, false, Underlay::L2, "direct");
}

#[test]
#[ignore = "needs root"]
fn vxlan_on_routed_encapsulates_everything() {
    reach_case(Backend::Vxlan, false, Underlay::Routed, "vxlan");
}

#[test]
#[ignore = "needs root"]
fn vxlan_direct_routing_on_l2_routes_directly() {
    reach_case(Backend::Vxlan, true, Underlay::L2, "direct");
}

/// On the routed underlay odd hosts share one subnet and even hosts the other: DirectRouting
/// routes within a subnet and tunnels across.
fn cross_subnet(tunnel: &'static str) -> impl Fn(u32, u32) -> &'static str {
    move |a, b| if a % 2 == b % 2 { "direct" } else { tunnel }
}

#[test]
#[ignore = "needs root"]
fn udp_on_l2() {
    reach_case(Backend::Udp, false, Underlay::L2, "udp");
}

#[test]
#[ignore = "needs root"]
fn udp_on_routed() {
    reach_case_with(
        Backend::Udp,
        false,
        Underlay::Routed,
        PodMode::Routed,
        |_, _| "udp",
    );
}

#[test]
#[ignore = "needs root"]
fn udp_direct_routing_on_l2() {
    reach_case(Backend::Udp, true, Underlay::L2, "direct");
}

#[test]
#[ignore = "needs root"]
fn udp_direct_routing_on_routed() {
    reach_case_with(
        Backend::Udp,
        true,
        Underlay::Routed,
        PodMode::Bridge,
        cross_subnet("udp"),
    );
}

#[test]
#[ignore = "needs root"]
fn ipip_on_l2() {
    reach_case(Backend::Ipip, false, Underlay::L2, "ipip");
}

#[test]
#[ignore = "needs root"]
fn ipip_on_routed() {
    reach_case(Backend::Ipip, false, Underlay::Routed, "ipip");
}

#[test]
#[ignore = "needs root"]
fn ipip_direct_routing_on_l2() {
    reach_case(Backend::Ipip, true, Underlay::L2, "direct");
}

#[test]
#[ignore = "needs root"]
fn ipip_direct_routing_on_routed() {
    reach_case_with(
        Backend::Ipip,
        true,
        Underlay::Routed,
        PodMode::Routed,
        cross_subnet("ipip"),
    );
}
