//! An agent frozen (SIGSTOP) past its lease TTL loses the lease in the store; when it runs
//! again it leases the same subnet back and keeps its node: it must not mistake the expiry for
//! `twill node leave` and wipe its state (root: runs in namespaces it creates).

use std::time::{Duration, Instant};

use serde_json::Value;
use twill_testkit::{Netns, require_root, veth};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

fn twill(ns: &Netns, args: &[&str]) -> std::process::Output {
    let mut cmd = vec![TWILL];
    cmd.extend_from_slice(args);
    ns.exec(&cmd)
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root"]
fn frozen_agent_gets_its_lease_back_after_expiry() {
    require_root();
    let host = Netns::new("exp");
    let other = Netns::new("expo");
    veth(&host, "eth0", &other, "peer0");
    host.ok(&["ip", "addr", "add", "192.168.9.2/24", "dev", "eth0"]);
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("store.redb").display());
    let data = dir.path().join("data");
    let conf = dir.path().join("net-conf.json");
    std::fs::write(
        &conf,
        r#"{"Network":"10.50.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let out = twill(
        &host,
        &[
            "cluster",
            "init",
            "--store",
            &store,
            "-f",
            conf.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");

    let data_s = data.to_str().unwrap();
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut agent = twill_testkit::Background(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                host.name(),
                TWILL,
                "agent",
                "--store",
                &store,
            ])
            .args(["--node-name", "n1", "--iface", "eth0", "--data-dir", data_s])
            .args(["--lease-ttl", "3"])
            .stdin(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let status = || -> Option<Value> {
        serde_json::from_slice(&std::fs::read(data.join("status.json")).ok()?).ok()
    };
    wait_for("the agent to be in sync", Duration::from_secs(15), || {
        status().is_some_and(|s| s["inSync"] == true)
    });
    let subnet = status().unwrap()["subnet"].clone();
    let link_before = host.ok(&["ip", "-j", "link", "show", "twill.1"]);

    let pid = agent.0.id().to_string();
    // `ip netns exec` execs the agent, so the child's pid is the agent's.
    twill_testkit::run_ok("kill", &["-STOP", &pid]);
    std::thread::sleep(Duration::from_secs(6));
    twill_testkit::run_ok("kill", &["-CONT", &pid]);

    // It notices the expiry (its lease and key are gone), leases again and carries on.
    wait_for("the agent to lease again", Duration::from_secs(15), || {
        std::fs::read_to_string(&log_path)
            .unwrap()
            .contains("our lease expired; leasing again")
    });
    let leases_in_store = || {
        let out = twill(
            &host,
            &["status", "--data-dir", data_s, "--json", "--store", &store],
        );
        serde_json::from_slice::<Value>(&out.stdout).ok()?["leasesInStore"].as_u64()
    };
    wait_for(
        "the lease to be back in the store",
        Duration::from_secs(10),
        || leases_in_store() == Some(1),
    );
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        agent.0.try_wait().unwrap().is_none(),
        "the agent exited after its lease expired"
    );
    let st = status().unwrap();
    assert_eq!(st["subnet"], subnet, "the node changed subnet: {st}");
    assert!(data.join("node.json").exists(), "the node file was removed");
    assert_eq!(
        host.ok(&["ip", "-j", "link", "show", "twill.1"]),
        link_before,
        "the VXLAN device was touched"
    );
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        !log.contains("twill node leave"),
        "expiry taken for a leave:\n{log}"
    );
    let _ = agent.0.kill();
}
