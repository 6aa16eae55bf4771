//! The lab on real namespaces (root only, `--include-ignored`): the underlay topologies, `down`
//! and its exactness, and the whole `up` flow run against `fake-twill.sh`, a stand-in that
//! speaks the agent's and the plugin's interfaces (the full flow with the real binary is
//! `tests/lab_up.rs` in the root package). Every test uses its own lab name, so they run in
//! parallel, and a guard removes the lab even when an assertion fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use twill_lab::plan::{self, Backend, Underlay};
use twill_lab::{Lab, LabCommand, LabName, LabSpec, Outcome, Output, Signal, run};
use twill_testkit::{TempDir, random_suffix, require_root};

/// Removes lab `name` on drop, pass or fail.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = twill_lab::down(&self.0);
    }
}

fn unique() -> (String, Guard) {
    let name = format!("t{}", random_suffix(5));
    (name.clone(), Guard(name))
}

/// `fake-twill.sh` copied into a fresh directory under `file_name`, executable.
fn fake_twill(file_name: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("lab-fake");
    let exe = dir.path().join(file_name);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-twill.sh"),
        &exe,
    )
    .unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    (dir, exe)
}

fn lab_namespaces(name: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|ns| plan::belongs_to(name, ns))
        .map(str::to_string)
        .collect()
}

/// Pids of processes whose command line mentions the lab's state directory.
fn lab_processes(name: &str) -> Vec<u32> {
    let needle = plan::state_dir(name).display().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .collect()
}

fn assert_gone(name: &str) {
    assert_eq!(
        lab_namespaces(name),
        Vec::<String>::new(),
        "namespaces left"
    );
    assert!(!plan::state_dir(name).exists(), "state dir left");
    assert_eq!(lab_processes(name), Vec::<u32>::new(), "processes left");
}

fn ping(lab: &Lab, from: &str, ip: &str) -> bool {
    lab.exec(from, &["ping", "-c", "1", "-W", "1", ip])
        .unwrap()
        .status
        .success()
}

fn stdout(lab: &Lab, target: &str, cmd: &[&str]) -> String {
    let out = lab.exec(target, cmd).unwrap();
    assert!(out.status.success(), "{cmd:?} in {target} failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root"]
fn l2_topology_hosts_reach_each_other_and_down_removes_it() {
    require_root();
    let (name, _g) = unique();
    let lab = Lab::build_topology(&LabSpec::new(&name).nodes(3)).unwrap();
    assert_eq!(lab.hosts().len(), 3);
    assert_eq!(lab.host_ns(2), format!("twl-{name}-h2"));
    assert!(
        stdout(&lab, "underlay", &["ip", "-br", "addr", "show", "br0"])
            .contains("192.168.100.1/24")
    );
    for h in lab.hosts() {
        let target = h.node.as_str();
        assert!(
            stdout(&lab, target, &["ip", "-br", "addr", "show", "eth0"])
                .contains(&format!("{}/24", h.ip4()))
        );
        assert!(
            stdout(&lab, target, &["ip", "route"]).contains("default via 192.168.100.1 dev eth0")
        );
        assert_eq!(
            stdout(&lab, target, &["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
            "1"
        );
        assert!(stdout(&lab, target, &["ip", "link", "show", "eth0"]).contains("mtu 1500"));
        for other in lab.hosts() {
            assert!(
                ping(&lab, target, &other.ip4().to_string()),
                "{} -> {}",
                h.node,
                other.ip4()
            );
        }
        assert!(ping(&lab, target, "192.168.100.1"));
    }
    let state = Lab::load(&name).unwrap().state().clone();
    assert_eq!(&state, lab.state());
    assert_eq!(state.store, "etcd://192.168.100.1:2379");
    assert!(state.pods.is_empty() && state.etcd.is_none());

    lab.down().unwrap();
    assert_gone(&name);
    // Idempotent: a second down finds nothing.
    assert!(!twill_lab::down(&name).unwrap());
}

#[test]
#[ignore = "needs root"]
fn routed_topology_crosses_the_router() {
    require_root();
    let (name, _g) = unique();
    let lab =
        Lab::build_topology(&LabSpec::new(&name).nodes(4).underlay(Underlay::Routed)).unwrap();
    let ips: Vec<String> = lab.hosts().iter().map(|h| h.ip4().to_string()).collect();
    assert_eq!(
        ips,
        [
            "192.168.1.11",
            "192.168.2.12",
            "192.168.1.13",
            "192.168.2.14"
        ]
    );
    assert_eq!(
        stdout(&lab, "underlay", &["sysctl", "-n", "net.ipv4.ip_forward"]).trim(),
        "1"
    );
    assert!(stdout(&lab, "h2", &["ip", "route"]).contains("default via 192.168.2.1 dev eth0"));
    for a in ["h1", "h2", "h3", "h4"] {
        for ip in &ips {
            assert!(ping(&lab, a, ip), "{a} -> {ip}");
        }
        // Both subnets reach the store address (on br1).
        assert!(ping(&lab, a, "192.168.1.1"));
    }
    // Across the router is one more hop than within a subnet.
    let ttl = |from: &str, to: &str| {
        let out = stdout(&lab, from, &["ping", "-c", "1", "-W", "1", to]);
        out.split("ttl=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(ttl("h1", "192.168.1.13"), "64");
    assert_eq!(ttl("h1", "192.168.2.12"), "63");
    lab.down().unwrap();
    assert_gone(&name);
}

#[test]
#[ignore = "needs root"]
fn down_removes_unrecorded_namespaces_and_only_its_own() {
    require_root();
    let (name, _g) = unique();
    let other = format!("{name}-x");
    let _g2 = Guard(other.clone());
    let lab = Lab::build_topology(&LabSpec::new(&name).nodes(1)).unwrap();
    // Left by an interrupted `up` (not in state.json), with a process inside.
    for ns in [
        plan::pod_ns(&name, 1, 1),
        plan::host_ns(&name, 7),
        plan::underlay_ns(&other),
    ] {
        assert!(
            Command::new("ip")
                .args(["netns", "add", &ns])
                .status()
                .unwrap()
                .success()
        );
    }
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &plan::pod_ns(&name, 1, 1), "sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    // A lab whose name extends this one's is not this one's.
    assert_eq!(lab_namespaces(&name).len(), 4);
    lab.down().unwrap();
    assert_gone(&name);
    assert!(sleeper.wait().is_ok());
    assert_eq!(lab_namespaces(&other), [plan::underlay_ns(&other)]);
    // A lab with only namespaces (no state dir) is removed too.
    assert!(twill_lab::down(&other).unwrap());
    assert_gone(&other);
}

#[test]
#[ignore = "needs root"]
fn refuses_an_existing_lab_and_leftovers() {
    require_root();
    let (name, _g) = unique();
    let lab = Lab::build_topology(&LabSpec::new(&name).nodes(2)).unwrap();
    let err = Lab::build_topology(&LabSpec::new(&name).nodes(2))
        .unwrap_err()
        .to_string();
    assert!(err.contains("already exists"), "{err}");
    let (_dir, exe) = fake_twill("twill");
    let err = Lab::up(&LabSpec::new(&name), &exe).unwrap_err().to_string();
    assert!(err.contains("already exists"), "{err}");
    // The refusal touched nothing.
    assert_eq!(lab_namespaces(&name).len(), 3);
    assert!(Lab::load(&name).is_ok());
    lab.down().unwrap();

    let (name, _g) = unique();
    Command::new("ip")
        .args(["netns", "add", &plan::host_ns(&name, 1)])
        .status()
        .unwrap();
    let err = Lab::build_topology(&LabSpec::new(&name))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("still there") && err.contains("twill lab down"),
        "{err}"
    );
    assert!(twill_lab::down(&name).unwrap());
    assert_gone(&name);
}

#[test]
#[ignore = "needs root"]
fn fake_up_l2_ping_faults_down() {
    require_root();
    let (name, _g) = unique();
    let (_dir, exe) = fake_twill("twill");
    let spec = LabSpec::new(&name)
        .nodes(3)
        .backend(Backend::HostGw)
        .pods_per_node(2);
    let mut lab = Lab::up(&spec, &exe).unwrap();

    let st = lab.state().clone();
    assert_eq!(st.twill, exe);
    assert!(lab.etcd_alive());
    assert_eq!(st.pods.len(), 6);
    let pod_ips: Vec<String> = st.pods.iter().map(|p| p.address.clone().unwrap()).collect();
    assert_eq!(
        pod_ips,
        [
            "10.244.1.2/24",
            "10.244.1.3/24",
            "10.244.2.2/24",
            "10.244.2.3/24",
            "10.244.3.2/24",
            "10.244.3.3/24"
        ]
    );
    for h in 1..=3 {
        assert!(lab.agent_alive(h));
        assert!(
            lab.state()
                .host(h)
                .unwrap()
                .data_dir
                .join("node.json")
                .exists()
        );
        let log = std::fs::read_to_string(&lab.state().host(h).unwrap().log).unwrap();
        assert!(log.contains("--- twill lab: start agent"), "{log}");
        assert!(log.contains("fake agent"), "{log}");
    }
    let net_conf = std::fs::read_to_string(lab.dir().join("net-conf.json")).unwrap();
    assert!(net_conf.contains(r#""Type": "host-gw""#), "{net_conf}");

    let m = lab.ping_matrix();
    assert!(m.all_ok(), "{}", m.render());
    assert_eq!(m.probes.len(), 30);
    assert!(m.probes.iter().all(|p| p.outcome == Outcome::Ok));

    // The CLI over the same lab.
    assert_eq!(
        run(
            LabCommand::Ping {
                lab: LabName { name: name.clone() },
                output: Output { json: false }
            },
            &exe
        )
        .unwrap(),
        0
    );
    assert_eq!(
        run(
            LabCommand::Status {
                lab: LabName { name: name.clone() },
                output: Output { json: true }
            },
            &exe
        )
        .unwrap(),
        0
    );
    let exec = |target: &str, cmd: &[&str]| {
        run(
            LabCommand::Exec {
                lab: LabName { name: name.clone() },
                target: target.into(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
            },
            &exe,
        )
    };
    assert_eq!(exec("h1-p2", &["true"]).unwrap(), 0);
    assert_eq!(exec("underlay", &["sh", "-c", "exit 7"]).unwrap(), 7);
    assert!(exec("h4", &["true"]).is_err());
    assert!(exec("h1-p3", &["true"]).is_err());

    // Agent killed and restarted: the same command line, appended to its log.
    let old = lab.state().host(2).unwrap().agent_pid.unwrap();
    lab.kill_agent(2, Signal::SIGKILL).unwrap();
    assert!(!lab.agent_alive(2));
    assert!(lab.wait_converged(Duration::from_millis(300)).is_err());
    assert!(lab.kill_agent(2, Signal::SIGTERM).is_err());
    let new = lab.start_agent(2).unwrap();
    assert_ne!(old, new);
    assert!(lab.start_agent(2).is_err(), "started twice");
    assert_eq!(
        Lab::load(&name).unwrap().state().host(2).unwrap().agent_pid,
        Some(new)
    );
    let statuses = lab.wait_converged(Duration::from_secs(10)).unwrap();
    assert_eq!(statuses.len(), 3);
    assert!(statuses.iter().all(|s| s.peers.len() == 2));
    lab.kill_agent(3, Signal::SIGTERM).unwrap();
    let log = std::fs::read_to_string(&lab.state().host(3).unwrap().log).unwrap();
    assert!(log.contains("fake agent h3: stopping"), "{log}");
    lab.start_agent(3).unwrap();
    lab.wait_converged(Duration::from_secs(10)).unwrap();

    // etcd stopped and started again.
    lab.stop_etcd().unwrap();
    assert!(!lab.etcd_alive());
    lab.start_etcd().unwrap();
    assert!(lab.etcd_alive());
    assert!(lab.start_etcd().is_err(), "started twice");

    let pids: Vec<u32> = lab_processes(&name);
    assert!(pids.len() >= 4, "agents and etcd: {pids:?}");
    assert_eq!(
        run(
            LabCommand::Down {
                lab: LabName { name: name.clone() }
            },
            &exe
        )
        .unwrap(),
        0
    );
    assert_gone(&name);
    assert_eq!(
        run(
            LabCommand::Down {
                lab: LabName { name: name.clone() }
            },
            &exe
        )
        .unwrap(),
        0
    );
}

#[test]
#[ignore = "needs root"]
fn fake_up_routed_host_gw_skips_across_subnets() {
    require_root();
    let (name, _g) = unique();
    let (_dir, exe) = fake_twill("twill");
    let spec = LabSpec::new(&name)
        .nodes(4)
        .backend(Backend::HostGw)
        .underlay(Underlay::Routed)
        .pods_per_node(1);
    let lab = Lab::up(&spec, &exe).unwrap();
    assert_eq!(lab.state().store, "etcd://192.168.1.1:2379");
    let statuses = lab.wait_converged(Duration::from_secs(5)).unwrap();
    let skipped: Vec<&str> = statuses[0].skipped().map(|p| p.node.as_str()).collect();
    assert_eq!(skipped, ["h2", "h4"]);

    let m = lab.ping_matrix();
    assert!(m.all_ok(), "{}", m.render());
    assert_eq!(m.get("h1-p1", "h3-p1").unwrap().outcome, Outcome::Ok);
    assert_eq!(m.get("h2-p1", "h4-p1").unwrap().outcome, Outcome::Ok);
    assert_eq!(m.get("h1-p1", "h2-p1").unwrap().outcome, Outcome::Skipped);
    assert_eq!(m.get("h4-p1", "h3-p1").unwrap().outcome, Outcome::Skipped);
    // And those really are unreachable, not merely unprobed.
    assert!(!ping(&lab, "h1-p1", &lab.pods()[1].ip4().to_string()));
    let text = m.render();
    assert!(
        text.contains("all 4 expected paths ok; 8 not expected"),
        "{text}"
    );
    lab.down().unwrap();
    assert_gone(&name);
}

#[test]
#[ignore = "needs root"]
fn fake_up_single_node_uses_the_embedded_store() {
    require_root();
    let (name, _g) = unique();
    let (_dir, exe) = fake_twill("twill");
    // No etcd is needed, even a missing one.
    let spec = LabSpec::new(&name).nodes(1).etcd_bin("/nonexistent");
    let lab = Lab::up(&spec, &exe).unwrap();
    assert!(lab.state().etcd.is_none());
    assert_eq!(
        lab.state().store,
        format!("embedded:/run/twill/lab/{name}/store.redb")
    );
    assert!(lab.ping_matrix().all_ok());
    let mut lab2 = Lab::load(&name).unwrap();
    assert!(
        lab2.stop_etcd()
            .unwrap_err()
            .to_string()
            .contains("embedded")
    );
    lab.down().unwrap();
    assert_gone(&name);
}

#[test]
#[ignore = "needs root"]
fn failed_up_leaves_nothing_behind() {
    require_root();
    let (name, _g) = unique();
    let (_dir, exe) = fake_twill("twill-fail-agent");
    let err = Lab::up(&LabSpec::new(&name).nodes(3), &exe).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("the agent of h2 exited before it got a lease"),
        "{msg}"
    );
    assert!(msg.contains("injected failure"), "log tail missing: {msg}");
    assert!(msg.contains("everything it had made is removed"), "{msg}");
    assert_gone(&name);

    // A plugin that fails: its CNI error JSON is in the message.
    let (name, _g) = unique();
    let (dir, exe) = fake_twill("twill");
    let script = std::fs::read_to_string(&exe).unwrap().replace(
        "cni_add\n  exit",
        "echo '{\"cniVersion\":\"1.1.0\",\"code\":100,\"msg\":\"range full\"}'; exit 1",
    );
    std::fs::write(dir.path().join("twill"), script).unwrap();
    let err = Lab::up(&LabSpec::new(&name).nodes(2), &exe).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("CNI ADD of pod h1-p1 on h1 failed"), "{msg}");
    assert!(msg.contains("range full"), "{msg}");
    assert_gone(&name);
}
