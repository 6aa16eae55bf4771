//! Faults of a running cluster, with real agents, real etcd and real traffic (root only):
//! a node leaving (also while a peer's agent is down), agents SIGKILLed during a 100 pps ping,
//! etcd stopped and restarted, and 20 nodes joining at once.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_lab::{Backend, Lab, LabSpec, Signal};
use twill_testkit::{random_suffix, require_root};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = twill_lab::down(&self.0);
    }
}

fn lab(spec: impl FnOnce(LabSpec) -> LabSpec) -> (Lab, Guard) {
    let name = format!("f{}", random_suffix(5));
    let guard = Guard(name.clone());
    let lab = Lab::up(&spec(LabSpec::new(&name)), Path::new(TWILL))
        .unwrap_or_else(|e| panic!("lab up: {e:#}"));
    (lab, guard)
}

fn json(lab: &Lab, host: &str, cmd: &[&str]) -> Value {
    let out = lab.exec(host, cmd).unwrap();
    assert!(out.status.success(), "{cmd:?} in {host}: {out:?}");
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Value::Array(vec![]);
    }
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{cmd:?} in {host}: not JSON ({e}): {out:?}"))
}

/// What host `host` has in the kernel for a peer: (route to its subnet, neighbour for its
/// VTEP address, FDB entries for its VTEP MAC).
fn kernel_has(lab: &Lab, host: &str, subnet: &str, vtep_mac: &str) -> (bool, bool, usize) {
    let routes = json(lab, host, &["ip", "-j", "route", "show", "proto", "117"]);
    let route = routes
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["dst"] == subnet);
    let net_addr = subnet.split('/').next().unwrap();
    let neighs = json(lab, host, &["ip", "-j", "neigh", "show", "dev", "twill.1"]);
    let neigh = neighs
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["dst"] == net_addr);
    let fdb = json(
        lab,
        host,
        &["bridge", "-j", "fdb", "show", "dev", "twill.1"],
    );
    let fdb_count = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["mac"] == vtep_mac)
        .count();
    (route, neigh, fdb_count)
}

/// The VTEP MAC of host `i`'s VXLAN device, as its peers' FDB entries name it.
fn vtep_mac(lab: &Lab, i: u32) -> String {
    let link = json(
        lab,
        &format!("h{i}"),
        &["ip", "-j", "link", "show", "twill.1"],
    );
    link[0]["address"].as_str().unwrap().to_string()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn subnet(lab: &Lab, i: u32) -> String {
    lab.host_status(i).unwrap().subnet.unwrap()
}

fn leave(lab: &Lab, i: u32) {
    let host = &lab.state().hosts[i as usize - 1];
    let data_dir = host.data_dir.to_str().unwrap();
    let store = lab.store_args();
    let mut cmd = vec![TWILL, "node", "leave"];
    cmd.extend(store.iter().map(String::as_str));
    cmd.extend(["--node-name", &host.node, "--data-dir", data_dir]);
    let out = lab.exec(&format!("h{i}"), &cmd).unwrap();
    assert!(out.status.success(), "node leave: {out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("released"));
}

fn ping(lab: &Lab, from: &str, to: std::net::Ipv4Addr) -> bool {
    lab.exec(from, &["ping", "-c", "1", "-W", "1", &to.to_string()])
        .unwrap()
        .status
        .success()
}

#[test]
#[ignore = "needs root"]
fn node_leave_clears_every_peer_even_one_whose_agent_was_down() {
    require_root();
    let (mut lab, _g) = lab(|s| s.nodes(4).backend(Backend::Vxlan).pods_per_node(1));
    lab.wait_converged(Duration::from_secs(20)).unwrap();
    let gone = subnet(&lab, 4);
    let gone_mac = vtep_mac(&lab, 4);
    let kept = subnet(&lab, 2);
    let kept_mac = vtep_mac(&lab, 2);
    for h in ["h1", "h2", "h3"] {
        assert_eq!(
            kernel_has(&lab, h, &gone, &gone_mac),
            (true, true, 1),
            "{h} before leave"
        );
    }

    // h1's agent is down while h4 leaves.
    lab.kill_agent(1, Signal::SIGKILL).unwrap();
    lab.kill_agent(4, Signal::SIGTERM).unwrap();
    leave(&lab, 4);

    for h in ["h2", "h3"] {
        wait_for(&format!("{h} to drop h4"), Duration::from_secs(10), || {
            kernel_has(&lab, h, &gone, &gone_mac) == (false, false, 0)
        });
        if h != "h2" {
            assert_eq!(
                kernel_has(&lab, h, &kept, &kept_mac),
                (true, true, 1),
                "{h} lost h2"
            );
        }
    }
    // The leaving node removed its own twill state.
    let links = json(&lab, "h4", &["ip", "-j", "link", "show"]);
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ifname"] == "twill.1")
    );
    let routes = json(&lab, "h4", &["ip", "-j", "route", "show", "proto", "117"]);
    assert!(
        routes.as_array().unwrap().is_empty(),
        "h4 kept routes: {routes}"
    );
    assert!(!lab.state().hosts[3].data_dir.join("node.json").exists());

    // Nothing removes h4 from h1 while its agent is down; the returning agent does.
    assert_eq!(kernel_has(&lab, "h1", &gone, &gone_mac), (true, true, 1));
    lab.start_agent(1).unwrap();
    wait_for(
        "the restarted h1 to drop h4",
        Duration::from_secs(10),
        || kernel_has(&lab, "h1", &gone, &gone_mac) == (false, false, 0),
    );
    assert_eq!(kernel_has(&lab, "h1", &kept, &kept_mac), (true, true, 1));
    let pod = |h: u32| lab.pods().iter().find(|p| p.host == h).unwrap().ip4();
    assert!(ping(&lab, "h1-p1", pod(2)) && ping(&lab, "h3-p1", pod(1)));
}

/// Agents killed with SIGKILL and restarted while pods on different hosts ping each other at
/// 100 packets per second: not one packet is lost, and the restarted agents change nothing.
#[test]
#[ignore = "needs root"]
fn agent_sigkill_and_restart_lose_no_packet() {
    require_root();
    let (mut lab, _g) = lab(|s| s.nodes(2).backend(Backend::Vxlan).pods_per_node(1));
    lab.wait_converged(Duration::from_secs(20)).unwrap();
    let dst = lab.pods().iter().find(|p| p.host == 2).unwrap().ip4();
    let link_before = json(&lab, "h1", &["ip", "-j", "-d", "link", "show", "twill.1"]);
    let applied = |lab: &Lab, i: usize| {
        std::fs::read_to_string(&lab.state().hosts[i - 1].log)
            .unwrap()
            .matches(" applied")
            .count()
    };
    let applied_before = (applied(&lab, 1), applied(&lab, 2));

    let ns = lab.target_ns("h1-p1").unwrap();
    let pinger = Command::new("ip")
        .args([
            "netns", "exec", &ns, "ping", "-i", "0.01", "-c", "500", "-W", "2",
        ])
        .arg(dst.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    for i in [1, 2] {
        lab.kill_agent(i, Signal::SIGKILL).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        lab.start_agent(i).unwrap();
        std::thread::sleep(Duration::from_millis(700));
    }
    lab.wait_converged(Duration::from_secs(20)).unwrap();
    let out = pinger.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("500 packets transmitted, 500 received"),
        "packets were lost:\n{text}"
    );
    // The restarted agents found everything right and changed nothing.
    assert_eq!(
        json(&lab, "h1", &["ip", "-j", "-d", "link", "show", "twill.1"])[0]["ifindex"],
        link_before[0]["ifindex"],
        "the VXLAN device was recreated"
    );
    assert_eq!((applied(&lab, 1), applied(&lab, 2)), applied_before);
}

/// etcd stops and comes back: agents keep the dataplane meanwhile, then resync and follow
/// changes made after the restart.
#[test]
#[ignore = "needs root"]
fn etcd_restart_agents_recover_and_follow_changes() {
    require_root();
    let (mut lab, _g) = lab(|s| s.nodes(3).backend(Backend::Vxlan).pods_per_node(1));
    lab.wait_converged(Duration::from_secs(20)).unwrap();
    let gone = subnet(&lab, 3);
    let gone_mac = vtep_mac(&lab, 3);
    lab.stop_etcd().unwrap();
    // The agents notice the store is gone (and will have to resync, not just carry on).
    wait_for(
        "the agents to notice etcd is gone",
        Duration::from_secs(15),
        || (1..=3).all(|i| !lab.host_status(i).unwrap().in_sync),
    );
    let pod2 = lab.pods().iter().find(|p| p.host == 2).unwrap().ip4();
    assert!(
        ping(&lab, "h1-p1", pod2),
        "traffic stopped without the store"
    );
    for i in 1..=3 {
        assert!(lab.agent_alive(i), "agent h{i} died without its store");
    }
    lab.start_etcd().unwrap();
    lab.wait_converged(Duration::from_secs(20)).unwrap();
    lab.kill_agent(3, Signal::SIGTERM).unwrap();
    leave(&lab, 3);
    for h in ["h1", "h2"] {
        wait_for(
            &format!("{h} to follow a change after etcd's restart"),
            Duration::from_secs(15),
            || kernel_has(&lab, h, &gone, &gone_mac) == (false, false, 0),
        );
    }
    assert!(lab.host_status(1).unwrap().in_sync);
    assert!(ping(&lab, "h1-p1", pod2));
}

/// 20 nodes start at once: 20 distinct subnets, and every agent programs its 19 peers.
#[test]
#[ignore = "needs root"]
fn twenty_nodes_join_at_once() {
    require_root();
    let (lab, _g) = lab(|s| s.nodes(20).backend(Backend::HostGw).pods_per_node(0));
    let statuses = lab.wait_converged(Duration::from_secs(60)).unwrap();
    let subnets: std::collections::HashSet<_> =
        statuses.iter().map(|s| s.subnet.clone().unwrap()).collect();
    assert_eq!(subnets.len(), 20, "subnets: {subnets:?}");
    for s in &statuses {
        assert_eq!(s.peers.len(), 19, "{}", s.node);
        assert!(
            s.peers.iter().all(|p| p.programmed),
            "{}: {:?}",
            s.node,
            s.peers
        );
    }
    let routes = json(&lab, "h7", &["ip", "-j", "route", "show", "proto", "117"]);
    assert_eq!(routes.as_array().unwrap().len(), 19);
}

/// Pods get the underlay MTU minus VXLAN's 50 bytes, and traffic leaving the cluster is
/// masqueraded: the underlay namespace has no route back to pod subnets, so a pod's ping to it
/// only gets an answer through the node's address.
#[test]
#[ignore = "needs root"]
fn pod_mtu_and_nat_outgoing() {
    require_root();
    let (lab, _g) = lab(|s| s.nodes(2).backend(Backend::Vxlan).pods_per_node(1));
    lab.wait_converged(Duration::from_secs(20)).unwrap();
    let link = json(&lab, "h1-p1", &["ip", "-j", "link", "show", "eth0"]);
    assert_eq!(link[0]["mtu"], 1450);
    let routes = json(&lab, "underlay", &["ip", "-j", "route", "show"]);
    assert!(
        !routes.to_string().contains("10.244."),
        "the underlay must not route pod subnets for this test to mean anything"
    );
    let outside = twill_lab::plan::store_ip(lab.state().underlay);
    assert!(
        ping(&lab, "h1-p1", outside),
        "pod cannot reach outside the cluster"
    );
    let nft = lab
        .exec(
            "h1",
            &[
                "nft",
                "list",
                "chain",
                "inet",
                "twill",
                "masq-_twill_cluster",
            ],
        )
        .unwrap();
    let rules = String::from_utf8_lossy(&nft.stdout);
    assert!(
        rules.contains("10.244.0.0/16") && rules.contains("masquerade"),
        "{rules}"
    );
}

/// `twill node leave` while the node's agent runs: the agent sees its lease gone, clears the
/// node's twill state and exits; the peers drop the node.
#[test]
#[ignore = "needs root"]
fn node_leave_with_its_agent_running() {
    require_root();
    let (lab, _g) = lab(|s| s.nodes(3).backend(Backend::Vxlan).pods_per_node(0));
    lab.wait_converged(Duration::from_secs(20)).unwrap();
    let gone = subnet(&lab, 3);
    let gone_mac = vtep_mac(&lab, 3);
    let store = lab.store_args();
    let mut cmd = vec![TWILL, "node", "leave"];
    cmd.extend(store.iter().map(String::as_str));
    cmd.extend(["--node-name", "h3"]);
    let out = lab.exec("h1", &cmd).unwrap();
    assert!(out.status.success(), "{out:?}");
    wait_for("h3's agent to leave", Duration::from_secs(10), || {
        !lab.agent_alive(3)
    });
    let links = json(&lab, "h3", &["ip", "-j", "link", "show"]);
    assert!(
        !links
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["ifname"] == "twill.1")
    );
    assert!(
        json(&lab, "h3", &["ip", "-j", "route", "show", "proto", "117"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(!lab.state().hosts[2].data_dir.join("node.json").exists());
    for h in ["h1", "h2"] {
        wait_for(&format!("{h} to drop h3"), Duration::from_secs(10), || {
            kernel_has(&lab, h, &gone, &gone_mac) == (false, false, 0)
        });
    }
    let log = std::fs::read_to_string(&lab.state().hosts[2].log).unwrap();
    assert!(log.contains("twill node leave"), "{log}");
}
