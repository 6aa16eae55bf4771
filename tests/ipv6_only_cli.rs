//! IPv6-only cluster configs through the CLI (issue 15): `twill cluster init` stores one and
//! says so, refuses an IPv4 BGP router its nodes could not reach, and `twill agent` runs a node of
//! such a cluster on an IPv6-only underlay: it leases an IPv6 subnet, writes the node file
//! and status without IPv4 parts, and makes only the IPv6 VTEP. Each run is in a network
//! namespace of its own (cluster init reads the host's networks).

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
fn cluster_init_stores_an_ipv6_only_config_and_the_agent_runs_an_ipv6_only_node() {
    require_root();
    let ns = Netns::new("v6cli");
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("store.redb").display());
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    };

    // Every backend runs IPv6-only, but the nodes cannot reach an IPv4 router.
    let ipv4_router = write(
        "bgp.yaml",
        "backend: bgp\npools:\n  - {name: pods6, cidr: \"fd00:10:244::/56\"}\n\
         bgp:\n  peers:\n    - {address: \"192.0.2.1\", asNumber: 65000}\n",
    );
    let out = twill_in(
        &ns,
        &["cluster", "init", "--store", &store, "-f", &ipv4_router],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "bgp.peers[0].address 192.0.2.1 is an IPv4 address, and this cluster is IPv6-only"
        ),
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

    // The node's underlay: IPv6 only (no IPv4 address anywhere in the namespace).
    for cmd in [
        "ip link set lo up",
        "ip link add eth0 type veth peer name eth0p",
        "ip link set eth0p up",
        "ip link set eth0 up",
        "ip -6 addr add fd00:1::10/64 dev eth0 nodad",
    ] {
        let out = ns.sh(cmd);
        assert!(out.status.success(), "{cmd}: {out:?}");
    }
    let data = dir.path().join("data");
    let log = dir.path().join("agent.log");
    let mut agent = Background(
        Command::new("ip")
            .args(["netns", "exec", ns.name(), TWILL])
            .args([
                "agent",
                "--store",
                &store,
                "--node-name",
                "n1",
                "--iface",
                "eth0",
            ])
            .args(["--data-dir", data.to_str().unwrap()])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let status_path = data.join("status.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status: serde_json::Value = loop {
        if let Some(code) = agent.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            panic!("the agent stopped ({code}); its log:\n{log}");
        }
        let seen = std::fs::read_to_string(&status_path).unwrap_or_default();
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&seen)
            && v["inSync"] == true
            && ns.link("twill6.1").is_some()
        {
            break v;
        }
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "no in-sync status with twill6.1; status: {seen}\nlinks: {:?}\nlog:\n{log}",
            ns.link_names()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The status has the IPv6 fields and no IPv4 ones.
    // A /64 of the pool fd00:10:244::/56.
    let subnet6 = status["subnet6"].as_str().unwrap().to_string();
    let (addr, len) = subnet6.split_once('/').unwrap();
    let seg = addr.parse::<std::net::Ipv6Addr>().unwrap().segments();
    assert_eq!(len, "64", "{status}");
    assert!(
        seg[..3] == [0xfd00, 0x10, 0x244] && seg[3] <= 0xff,
        "{status}"
    );
    assert_eq!(status["publicIp6"], "fd00:1::10", "{status}");
    assert!(status.get("subnet").is_none(), "{status}");
    assert!(status.get("publicIp").is_none(), "{status}");
    // The plugin's node file: the IPv6 subnet only.
    let node_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("node.json")).unwrap()).unwrap();
    assert_eq!(node_file["subnet6"], status["subnet6"], "{node_file}");
    assert!(node_file.get("subnet").is_none(), "{node_file}");
    // Only the IPv6 VTEP, nothing IPv4: no IPv4 forwarding, no IPv4 pod rules in the guard.
    assert!(ns.link("twill.1").is_none(), "{:?}", ns.link_names());
    assert_eq!(ns.ok(&["sysctl", "-n", "net.ipv4.ip_forward"]).trim(), "0");
    assert_eq!(
        ns.ok(&["sysctl", "-n", "net.ipv6.conf.all.forwarding"])
            .trim(),
        "1"
    );
    let guard = ns.ok(&["nft", "list", "table", "inet", "twill-host"]);
    assert!(guard.contains("ip6 saddr fd00:10:244::/56"), "{guard}");
    let ipv4_rules: Vec<&str> = guard
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with("typeof") && (l.contains("ip saddr") || l.contains("ip daddr")))
        .collect();
    assert!(ipv4_rules.is_empty(), "{ipv4_rules:?}\n{guard}");
    // `twill status` prints it too.
    let out = twill_in(&ns, &["status", "--data-dir", data.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("node n1  IPv6-only  backend vxlan"), "{said}");
    assert!(
        said.contains(&format!("ipv6: subnet {subnet6}  public fd00:1::10")),
        "{said}"
    );
    drop(agent);
}
