//! The plugin in cluster mode on a node of an IPv6-only cluster (issue 15): the agent's node
//! file has only an IPv6 subnet (no `subnet`, no `clusterNetworks`), and a pod gets only an
//! IPv6 address, an IPv6 default route via the subnet's first address on the bridge, no IPv4
//! address or route, and IPv6 pod-to-pod traffic unmasqueraded. DEL releases the address.
//! Pods and the host are network namespaces, the plugin is the real `twill` binary.

mod common;

use std::time::{Duration, Instant};

use common::{Host, result_ip};
use serde_json::{Value, json};
use twill_testkit::Netns;

/// Writes the agent's node file of an IPv6-only node into the host's data dir.
fn ipv6_only_node(host: &Host) {
    std::fs::write(
        host.data.path().join("node.json"),
        json!({"node": "n1", "mtu": 1430, "backend": "vxlan", "subnet6": "fd00:93:0:1::/64",
               "clusterNetworks6": ["fd00:93::/48"], "policy": false})
        .to_string(),
    )
    .unwrap();
}

/// The cluster-mode configuration: no `ranges`.
fn cluster_conf(host: &Host) -> Value {
    let mut conf = host.conf("1.1.0", json!({"ipMasq": true}));
    conf.as_object_mut().unwrap().remove("ranges");
    conf
}

/// Polls `f` for up to `secs` seconds.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root"]
fn cluster_mode_gives_pods_of_an_ipv6_only_node_only_ipv6() {
    let host = Host::new("c6o");
    ipv6_only_node(&host);
    let conf = cluster_conf(&host);
    let (a, b) = (Netns::new("c6o-a"), Netns::new("c6o-b"));
    let ra = host.add("pod-a", &a, &conf).ok();
    let rb = host.add("pod-b", &b, &conf).ok();

    // One address, IPv6, with its gateway; one default route, IPv6.
    let ips = ra["ips"].as_array().unwrap();
    assert_eq!(ips.len(), 1, "{ra}");
    let address = ips[0]["address"].as_str().unwrap();
    assert!(
        address.starts_with("fd00:93:0:1::") && address.ends_with("/64"),
        "{ra}"
    );
    assert_eq!(ips[0]["gateway"], "fd00:93:0:1::1", "{ra}");
    assert_eq!(
        ra["routes"],
        json!([{"dst": "::/0", "gw": "fd00:93:0:1::1"}]),
        "{ra}"
    );
    assert_eq!(a.ip_json(&["link", "show", "eth0"])[0]["mtu"], 1430);
    // The pod has no IPv4 address and no IPv4 route.
    let v4 = a.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(
        v4.as_array()
            .unwrap()
            .iter()
            .all(|l| l["addr_info"].as_array().is_none_or(|a| a.is_empty())),
        "{v4}"
    );
    assert_eq!(a.ip_json(&["-4", "route", "show"]), json!([]));
    let default6 = a.ip_json(&["-6", "route", "show", "default"]);
    assert_eq!(default6[0]["gateway"], "fd00:93:0:1::1", "{default6}");
    // The bridge has the gateway address, and none of IPv4.
    let bridge = conf["bridge"].as_str().unwrap();
    let addrs = host.ns.addresses(bridge);
    assert!(addrs.iter().any(|x| x == "fd00:93:0:1::1/64"), "{addrs:?}");
    assert!(addrs.iter().all(|x| x.contains(':')), "{addrs:?}");

    // IPv6 to the gateway and to the other pod.
    let b6 = result_ip(&rb, false);
    assert!(
        eventually(20, || a
            .exec(&["ping", "-c", "1", "-W", "1", "fd00:93:0:1::1"])
            .status
            .success()),
        "ping -6 to the gateway"
    );
    assert!(
        eventually(20, || a
            .exec(&["ping", "-c", "1", "-W", "1", &b6])
            .status
            .success()),
        "pod to pod"
    );
    // ipMasq: only IPv6 rules, the cluster's IPv6 pools inside.
    let chain = host
        .ns
        .ok(&["nft", "list", "chain", "inet", "twill", "masq-twillnet"]);
    assert!(
        chain.contains("ip6 saddr fd00:93::/48 ip6 daddr != { fd00:93::/48, ff00::/8 } masquerade"),
        "{chain}"
    );
    assert!(!chain.contains("ip saddr"), "{chain}");

    // DEL releases the address.
    host.del("pod-a", Some(&a), &conf).ok();
    assert!(host.allocations().iter().all(|(_, c)| c != "pod-a"));
    assert!(a.link("eth0").is_none());
}

#[test]
#[ignore = "needs root"]
fn a_node_file_without_any_subnet_is_a_clear_error() {
    let host = Host::new("c6n");
    std::fs::write(
        host.data.path().join("node.json"),
        json!({"node": "n1", "mtu": 1430, "backend": "vxlan"}).to_string(),
    )
    .unwrap();
    let conf = cluster_conf(&host);
    let pod = Netns::new("c6n-a");
    let err = host.add("pod-x", &pod, &conf).err(7);
    assert!(
        err["msg"]
            .as_str()
            .unwrap()
            .contains("has neither subnet nor subnet6"),
        "{err}"
    );
    assert!(pod.link("eth0").is_none());
}
