//! IPv6-only cluster configs through the CLI (issue 15): `twill cluster init` stores one and
//! says so, refuses backends that need an IPv4 underlay, and `twill agent` on such a cluster
//! stops with a clear message (its backends do not run IPv6-only nodes yet) instead of
//! touching anything. Each run is in a network namespace of its own (cluster init reads the
//! host's networks).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use twill_testkit::{Background, Netns, require_root};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

fn twill_in(ns: &Netns, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns.name(), TWILL])
        .args(args)
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root"]
fn cluster_init_stores_an_ipv6_only_config_and_the_agent_says_it_cannot_run_it() {
    require_root();
    let ns = Netns::new("v6cli");
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("store.redb").display());
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };

    let udp = write(
        "udp.json",
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"udp"}}"#,
    );
    let out = twill_in(&ns, &["cluster", "init", "--store", &store, "-f", &udp]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("the udp backend needs an IPv4 underlay for now"),
        "{err}"
    );

    let good = write(
        "v6.json",
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}"#,
    );
    let out = twill_in(&ns, &["cluster", "init", "--store", &store, "-f", &good]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("1 IPv6 pool(s), IPv6-only, backend vxlan"),
        "{said}"
    );

    let data = dir.path().join("data");
    let log = dir.path().join("agent.log");
    let mut agent = Background(
        Command::new("ip")
            .args(["netns", "exec", ns.name(), TWILL])
            .args(["agent", "--store", &store, "--node-name", "n1"])
            .args(["--data-dir", data.to_str().unwrap()])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = agent.0.try_wait().unwrap() {
            break status;
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "the agent kept running; its log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("this agent does not run IPv6-only nodes yet"),
        "{err}"
    );
    // It leased nothing and wrote no node file.
    assert!(!data.join("node.json").exists());
    assert_eq!(ns.link_names(), ["lo"]);
}
