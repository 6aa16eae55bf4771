//! ipMasq chains against the real kernel, inside private network namespaces.

mod common;

use std::path::Path;
use std::time::Instant;

use common::{Netns, golden, require_root, veth};
use ipnet::IpNet;
use twill_dataplane::{ensure_masquerade, remove_masquerade};

fn nets(s: &[&str]) -> Vec<IpNet> {
    s.iter().map(|n| n.parse().unwrap()).collect()
}

/// Rules of `inet twill <chain>` as nft prints them (trimmed lines).
fn chain_rules(ns: &Netns, chain: &str) -> Vec<String> {
    let text = ns.sh(&format!("nft list chain inet twill {chain}"));
    text.lines()
        .map(str::trim)
        .filter(|l| l.contains("masquerade"))
        .map(String::from)
        .collect()
}

/// The agent's cluster-wide chain for a dual-stack cluster: one `ip saddr` rule for the IPv4
/// pools and one `ip6 saddr` rule for the IPv6 ones, in the one `inet` chain (as Calico
/// masquerades the pools of each family with `natOutgoing`).
#[test]
fn dual_stack_cluster_chain_matches_golden() {
    let ranges = nets(&["10.244.0.0/16", "fd00:244::/32", "10.245.0.0/16"]);
    golden(
        "masquerade-dual-stack.nft",
        &twill_dataplane::firewall::masquerade_transaction("_twill_cluster", &ranges),
    );
}

fn ensure(ns: &Netns, dir: &Path, net: &str, ranges: &[&str]) {
    let ranges = nets(ranges);
    ns.run(|| ensure_masquerade(dir, net, &ranges))
        .unwrap_or_else(|e| panic!("ensure_masquerade({net}): {e}"));
}

#[test]
#[ignore = "needs root"]
fn masquerade_chain_lifecycle() {
    require_root();
    let h = Netns::new("masq");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    ensure(&h, dir, "net1", &["10.88.0.0/16", "fd88::/64"]);
    // The chain, as the kernel has it.
    let j = h.nft_json("list table inet twill");
    let items = j["nftables"].as_array().unwrap();
    let chain = items
        .iter()
        .find_map(|i| i.get("chain").filter(|c| c["name"] == "masq-net1"))
        .expect("chain masq-net1 exists");
    assert_eq!(chain["type"], "nat");
    assert_eq!(chain["hook"], "postrouting");
    assert_eq!(chain["prio"], 100); // srcnat
    assert_eq!(chain["policy"], "accept");
    let nrules = items
        .iter()
        .filter(|i| i.get("rule").is_some_and(|r| r["chain"] == "masq-net1"))
        .count();
    assert_eq!(nrules, 2);
    assert_eq!(
        chain_rules(&h, "masq-net1"),
        vec![
            "ip saddr 10.88.0.0/16 ip daddr != { 10.88.0.0/16, 224.0.0.0/4 } masquerade",
            "ip6 saddr fd88::/64 ip6 daddr != { fd88::/64, ff00::/8 } masquerade",
        ]
    );
    assert!(dir.join("masq-net1").is_file(), "stamp written");

    // Already in place: no nft process, nothing rewritten (rule handles stay).
    let before = h.sh("nft -a list chain inet twill masq-net1");
    let ranges = nets(&["10.88.0.0/16", "fd88::/64"]);
    let elapsed = h.run(|| {
        let t = Instant::now();
        for _ in 0..100 {
            ensure_masquerade(dir, "net1", &ranges).unwrap();
        }
        t.elapsed()
    });
    println!(
        "100 no-op ensure_masquerade calls: {elapsed:?} ({:?} per call)",
        elapsed / 100
    );
    assert!(
        elapsed.as_millis() < 100,
        "100 no-op calls took {elapsed:?}: is nft being spawned?"
    );
    assert_eq!(h.sh("nft -a list chain inet twill masq-net1"), before);

    // A host firewall flush is repaired on the next call.
    h.sh("nft flush ruleset");
    assert!(!h.ok("nft list chain inet twill masq-net1"));
    ensure(&h, dir, "net1", &["10.88.0.0/16", "fd88::/64"]);
    assert_eq!(chain_rules(&h, "masq-net1").len(), 2);

    // So is a flushed chain (the rule count no longer matches).
    h.sh("nft flush chain inet twill masq-net1");
    ensure(&h, dir, "net1", &["10.88.0.0/16", "fd88::/64"]);
    assert_eq!(chain_rules(&h, "masq-net1").len(), 2);

    // Someone else's table is never touched.
    h.sh("nft add table inet other");
    h.sh("nft add chain inet other keep");

    // Changing the ranges rewrites the chain.
    ensure(&h, dir, "net1", &["10.79.0.0/16", "10.77.0.0/16"]);
    assert_eq!(
        chain_rules(&h, "masq-net1"),
        vec![
            "ip saddr { 10.77.0.0/16, 10.79.0.0/16 } ip daddr != { 10.77.0.0/16, 10.79.0.0/16, 224.0.0.0/4 } masquerade"
        ]
    );

    // Networks have separate chains and never rewrite each other's rules.
    ensure(&h, dir, "net-2.b_c", &["10.66.0.0/16"]);
    assert_eq!(chain_rules(&h, "masq-net1").len(), 1);
    assert_eq!(chain_rules(&h, "masq-net-2.b_c").len(), 1);

    // Removal: chain and stamp gone, idempotent, others untouched.
    h.run(|| remove_masquerade(dir, "net1")).unwrap();
    assert!(!h.ok("nft list chain inet twill masq-net1"));
    assert!(!dir.join("masq-net1").exists());
    h.run(|| remove_masquerade(dir, "net1")).unwrap();
    assert_eq!(chain_rules(&h, "masq-net-2.b_c").len(), 1);
    assert!(h.ok("nft list chain inet other keep"));

    // Bad input is refused with an actionable message.
    let err = h
        .run(|| ensure_masquerade(dir, "bad name", &ranges))
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid CNI network name"),
        "{err}"
    );
    let err = h.run(|| ensure_masquerade(dir, "net3", &[])).unwrap_err();
    assert!(err.to_string().contains("at least one IP range"), "{err}");
}

/// Real traffic: a container reaches an "outside" host that has no route
/// back to the container network only once masquerade is in place.
#[test]
#[ignore = "needs root"]
fn masquerade_real_traffic() {
    require_root();
    let h = Netns::new("mhost");
    let c = Netns::new("mctr");
    let o = Netns::new("mout");
    h.sh("sysctl -qw net.ipv4.ip_forward=1");
    h.sh("ip link add br0 type bridge forward_delay 0");
    h.sh("ip addr add 10.88.0.1/16 dev br0");
    h.sh("ip link set br0 up");
    veth(&h, "tw1", &c);
    h.sh("ip link set tw1 master br0");
    c.sh("ip addr add 10.88.0.2/16 dev eth0");
    c.sh("ip route add default via 10.88.0.1");
    veth(&h, "up0", &o);
    h.sh("ip addr add 10.77.0.1/24 dev up0");
    o.sh("ip addr add 10.77.0.2/24 dev eth0"); // and no route to 10.88.0.0/16

    assert!(
        c.ping(None, "10.88.0.1", true),
        "container reaches its gateway"
    );
    assert!(
        !c.ping(None, "10.77.0.2", false),
        "control: without masquerade the outside cannot answer"
    );
    let dir = tempfile::tempdir().unwrap();
    ensure(&h, dir.path(), "podnet", &["10.88.0.0/16"]);
    assert!(
        c.ping(None, "10.77.0.2", true),
        "masqueraded traffic gets answered"
    );
}
