//! The plugin on real kernel objects: hosts and pods are network namespaces, the plugin binary
//! is run exactly as a runtime runs it, and assertions read `ip -j` / `nft -j` and send real
//! traffic. All tests need root (`--include-ignored`).

mod common;

use std::collections::HashSet;

use common::{Host, OUTSIDE, result_ip};
use serde_json::{Value, json};
use twill_testkit::Netns;

#[test]
#[ignore = "needs root"]
fn bridge_mode_add_ping_del() {
    let host = Host::new("br");
    let conf = host.conf("1.1.0", json!({}));
    let (a, b) = (Netns::new("br-a"), Netns::new("br-b"));
    let ra = host.add("ctr-a", &a, &conf).ok();
    let rb = host.add("ctr-b", &b, &conf).ok();

    // Result: bridge, host veth, container interface; both families; default routes.
    let bridge = conf["bridge"].as_str().unwrap();
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["interfaces"][0]["name"], bridge);
    assert!(
        ra["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .starts_with("tw")
    );
    assert_eq!(ra["interfaces"][2]["name"], "eth0");
    assert_eq!(ra["interfaces"][2]["sandbox"], a.path());
    assert_eq!(ra["ips"].as_array().unwrap().len(), 2);
    assert_eq!(ra["ips"][0]["interface"], 2);
    assert_eq!(ra["ips"][0]["gateway"], "10.88.0.1");
    assert_eq!(ra["ips"][1]["gateway"], "fd88::1");

    // Kernel state: the host veth is a port of the bridge; the bridge holds the gateways.
    let hveth = ra["interfaces"][1]["name"].as_str().unwrap();
    let link = host.ns.link(hveth).expect("host veth exists");
    assert_eq!(link["master"], bridge);
    let gws = host.ns.addresses(bridge);
    assert!(gws.contains(&"10.88.0.1/16".to_string()), "{gws:?}");
    assert!(gws.contains(&"fd88::1/64".to_string()), "{gws:?}");
    let ip_a = result_ip(&ra, true);
    assert!(a.addresses("eth0").contains(&format!("{ip_a}/16")));
    assert_eq!(
        a.link("eth0").unwrap()["address"],
        ra["interfaces"][2]["mac"]
    );
    let routes = a.ip_json(&["route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], "10.88.0.1");

    // Real traffic: pod to pod on both families, pod to gateway, pod out via the host.
    let ip_b = result_ip(&rb, true);
    assert!(a.ping(&ip_b, 3), "pod a cannot reach pod b");
    assert!(b.ping(&ip_a, 3), "pod b cannot reach pod a");
    assert!(
        a.ping(&result_ip(&rb, false), 3),
        "pod a cannot reach pod b over IPv6"
    );
    assert!(a.ping("10.88.0.1", 2), "pod cannot reach its gateway");
    assert!(
        a.ping(common::HOST_UPLINK, 2),
        "pod cannot reach the host's uplink address"
    );

    // DEL removes the veth and frees the address; DEL again and DEL without netns succeed.
    host.del("ctr-a", Some(&a), &conf).ok();
    assert!(host.ns.link(hveth).is_none(), "host veth left behind");
    assert!(a.link("eth0").is_none(), "container interface left behind");
    assert!(!host.allocations().iter().any(|(_, c)| c == "ctr-a"));
    host.del("ctr-a", Some(&a), &conf).ok();
    host.del("ctr-a", None, &conf).ok();
    drop(b);
    host.del("ctr-b", None, &conf).ok();
    assert!(host.allocations().is_empty(), "{:?}", host.allocations());
    assert!(
        !host.ns.link_names().iter().any(|n| n.starts_with("tw")),
        "{:?}",
        host.ns.link_names()
    );
}

#[test]
#[ignore = "needs root"]
fn routed_mode_dual_stack() {
    let host = Host::new("rt");
    let conf = host.conf("1.1.0", json!({"mode": "routed"}));
    let (a, b) = (Netns::new("rt-a"), Netns::new("rt-b"));
    let ra = host.add("ctr-a", &a, &conf).ok();
    let rb = host.add("ctr-b", &b, &conf).ok();

    // No bridge: host veth and container interface only; link-local gateways.
    assert_eq!(ra["interfaces"].as_array().unwrap().len(), 2);
    assert_eq!(ra["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(ra["ips"][1]["gateway"], "fe80::1");
    assert!(
        host.ns.link(conf["bridge"].as_str().unwrap()).is_none(),
        "routed mode made a bridge"
    );
    let ip_a = result_ip(&ra, true);
    assert!(a.addresses("eth0").contains(&format!("{ip_a}/32")));

    // Host routes: one /32 (/128) per container through its veth, marked with twill's protocol.
    let hveth = ra["interfaces"][0]["name"].as_str().unwrap();
    let routes = host.ns.ip_json(&["route", "show", "proto", "116"]);
    assert!(
        routes
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == ip_a && r["dev"] == hveth),
        "{routes}"
    );
    let routes6 = host.ns.ip_json(&["-6", "route", "show", "proto", "116"]);
    assert!(
        routes6
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["dst"] == result_ip(&ra, false) && r["dev"] == hveth),
        "{routes6}"
    );

    assert!(a.ping(&result_ip(&rb, true), 3), "routed pod-to-pod IPv4");
    assert!(a.ping(&result_ip(&rb, false), 3), "routed pod-to-pod IPv6");
    assert!(a.ping(common::HOST_UPLINK, 2), "routed pod to host");
    // Proxy ARP answered for the link-local gateway.
    let neigh = a.ip_json(&["neigh", "show", "169.254.1.1"]);
    assert_eq!(neigh[0]["lladdr"], ra["interfaces"][0]["mac"], "{neigh}");

    host.del("ctr-a", Some(&a), &conf).ok();
    host.del("ctr-b", Some(&b), &conf).ok();
    assert!(
        host.ns
            .ip_json(&["route", "show", "proto", "116"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
#[ignore = "needs root"]
fn ipv6_only_bridge() {
    let host = Host::new("v6");
    let conf = host.conf("1.0.0", json!({"ranges": ["fd99:1::/64"]}));
    let (a, b) = (Netns::new("v6-a"), Netns::new("v6-b"));
    let ra = host.add("a", &a, &conf).ok();
    let rb = host.add("b", &b, &conf).ok();
    assert_eq!(ra["ips"].as_array().unwrap().len(), 1);
    assert!(a.ping(&result_ip(&rb, false), 3));
    assert!(b.ping(&result_ip(&ra, false), 3));
}

#[test]
#[ignore = "needs root"]
fn result_formats_follow_the_requested_version() {
    let host = Host::new("ver");
    for (i, version) in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
        .iter()
        .enumerate()
    {
        let conf = host.conf(version, json!({}));
        let pod = Netns::new("ver-p");
        let id = format!("v{i}");
        let r = host.add(&id, &pod, &conf).ok();
        assert_eq!(r["cniVersion"], *version);
        let ip = &r["ips"][0];
        if version.starts_with("0.") {
            assert_eq!(ip["version"], "4", "{r}");
        } else {
            assert!(ip.get("version").is_none(), "{r}");
        }
        assert_eq!(
            r["interfaces"][2].get("mtu").is_some(),
            *version == "1.1.0",
            "{r}"
        );
        host.del(&id, Some(&pod), &conf).ok();
    }
}

#[test]
#[ignore = "needs root"]
fn add_fails_when_interface_exists_and_leaves_nothing() {
    let host = Host::new("ex");
    let conf = host.conf("1.1.0", json!({}));
    let pod = Netns::new("ex-p");
    pod.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "other",
    ]);
    let before = host.ns.link_names();
    let err = host.add("c1", &pod, &conf).err(101);
    assert!(err["msg"].as_str().unwrap().contains("eth0"));
    assert!(host.allocations().is_empty(), "failed ADD kept an address");
    assert_eq!(host.ns.link_names(), before, "failed ADD left links");

    // Second ADD of the same attachment after a good one also fails, and keeps the first intact.
    let pod2 = Netns::new("ex-q");
    let r = host.add("c2", &pod2, &conf).ok();
    host.add("c2", &pod2, &conf).err(101);
    assert_eq!(
        host.allocations().len(),
        2,
        "dual-stack pod holds two addresses"
    );
    assert!(pod2.ping(r["ips"][0]["gateway"].as_str().unwrap(), 1));
}

#[test]
#[ignore = "needs root"]
fn full_range_is_a_clear_error_and_reserved_addresses_are_never_given() {
    let host = Host::new("full");
    let conf = host.conf("1.1.0", json!({"ranges": ["10.77.0.0/29"]}));
    let mut pods = Vec::new();
    let mut got = HashSet::new();
    for i in 0..5 {
        let pod = Netns::new("full-p");
        let r = host.add(&format!("c{i}"), &pod, &conf).ok();
        got.insert(result_ip(&r, true));
        pods.push(pod);
    }
    let expected: HashSet<String> = (2..=6).map(|i| format!("10.77.0.{i}")).collect();
    assert_eq!(
        got, expected,
        "network .0, gateway .1 and broadcast .7 must never be handed out"
    );

    let status = host.call("twill", "STATUS", "", None, &conf);
    let v = status.err(50);
    assert!(v["msg"].as_str().unwrap().contains("full"), "{v}");

    let pod = Netns::new("full-x");
    let before = host.ns.link_names();
    let v = host.add("c-extra", &pod, &conf).err(100);
    assert!(v["msg"].as_str().unwrap().contains("10.77.0.0/29"), "{v}");
    assert_eq!(host.ns.link_names(), before);
    assert!(pod.link("eth0").is_none());

    host.del("c0", Some(&pods[0]), &conf).ok();
    host.call("twill", "STATUS", "", None, &conf).ok();
    host.add("c-extra", &pod, &conf).ok();
}

#[test]
#[ignore = "needs root"]
fn check_passes_then_detects_tampering() {
    let host = Host::new("chk");
    for mode in ["bridge", "routed"] {
        // One host, two networks: the routed one must not reuse the range whose gateway the
        // bridge holds (a range overlapping a host address is refused).
        let conf = host.conf(
            "1.1.0",
            json!({"mode": mode, "ipMasq": true, "ranges": ranges_for(mode)}),
        );
        let pod = Netns::new("chk-p");
        let id = format!("chk-{mode}");
        let result = host.add(&id, &pod, &conf).ok();
        let mut with_prev = conf.clone();
        with_prev["prevResult"] = result.clone();
        host.call("twill", "CHECK", &id, Some(&pod), &with_prev)
            .ok();

        // An address removed inside the container.
        let addr = result["ips"][0]["address"].as_str().unwrap();
        pod.ok(&["ip", "addr", "del", addr, "dev", "eth0"]);
        let v = host
            .call("twill", "CHECK", &id, Some(&pod), &with_prev)
            .err(110);
        assert!(
            v["msg"]
                .as_str()
                .unwrap()
                .contains(addr.split('/').next().unwrap()),
            "{v}"
        );
        pod.ok(&["ip", "addr", "add", addr, "dev", "eth0"]);

        // A route removed.
        pod.ok(&["ip", "-6", "route", "del", "default"]);
        let v = host
            .call("twill", "CHECK", &id, Some(&pod), &with_prev)
            .err(110);
        assert!(v["msg"].as_str().unwrap().contains("route"), "{v}");

        // A MAC changed.
        let pod2 = Netns::new("chk-q");
        let id2 = format!("chk2-{mode}");
        let r2 = host.add(&id2, &pod2, &conf).ok();
        let mut prev2 = conf.clone();
        prev2["prevResult"] = r2;
        host.call("twill", "CHECK", &id2, Some(&pod2), &prev2).ok();
        pod2.ok(&["ip", "link", "set", "eth0", "address", "02:11:22:33:44:55"]);
        let v = host
            .call("twill", "CHECK", &id2, Some(&pod2), &prev2)
            .err(110);
        assert!(v["msg"].as_str().unwrap().contains("MAC"), "{v}");

        // The masquerade chain flushed away by someone else.
        let pod3 = Netns::new("chk-r");
        let id3 = format!("chk3-{mode}");
        let r3 = host.add(&id3, &pod3, &conf).ok();
        let mut prev3 = conf.clone();
        prev3["prevResult"] = r3;
        host.call("twill", "CHECK", &id3, Some(&pod3), &prev3).ok();
        host.ns
            .ok(&["nft", "delete", "chain", "inet", "twill", "masq-twillnet"]);
        let v = host
            .call("twill", "CHECK", &id3, Some(&pod3), &prev3)
            .err(110);
        assert!(v["msg"].as_str().unwrap().contains("masquerade"), "{v}");
        // ... and the next ADD repairs it.
        let pod4 = Netns::new("chk-s");
        host.add(&format!("chk4-{mode}"), &pod4, &conf).ok();
        host.call("twill", "CHECK", &id3, Some(&pod3), &prev3).ok();
    }
}

#[test]
#[ignore = "needs root"]
fn gc_releases_everything_not_listed() {
    let host = Host::new("gc");
    let conf = host.conf("1.1.0", json!({}));
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("gc-p")).collect();
    let results: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| host.add(&format!("g{i}"), p, &conf).ok())
        .collect();
    assert_eq!(host.allocations().len(), 8);

    // Keep g0 (new key) — the others are leaked: GC must release them and remove their veths.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g0", "ifname": "eth0"}]);
    host.call("twill", "GC", "", None, &gc).ok();
    let owners: HashSet<String> = host.allocations().into_iter().map(|(_, c)| c).collect();
    assert_eq!(owners, HashSet::from(["g0".to_string()]));
    for (i, r) in results.iter().enumerate() {
        let veth = r["interfaces"][1]["name"].as_str().unwrap();
        assert_eq!(host.ns.link(veth).is_some(), i == 0, "veth of g{i}");
    }
    assert!(pods[0].ping("10.88.0.1", 1), "kept attachment still works");

    // The older key is understood too.
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([]);
    host.call("twill", "GC", "", None, &gc).ok();
    assert!(host.allocations().is_empty());
    // GC needs the list.
    host.call("twill", "GC", "", None, &conf).err(7);
}

#[test]
#[ignore = "needs root"]
fn ip_masq_rewrites_source_to_the_host() {
    let host = Host::new("nat");
    let conf = host.conf("1.1.0", json!({"ipMasq": true}));
    let pod = Netns::new("nat-p");
    let r = host.add("n1", &pod, &conf).ok();
    let table = host.ns.nft_table("inet", "twill").expect("twill table");
    let text = table.to_string();
    assert!(
        text.contains("masq-twillnet") && text.contains("masquerade"),
        "{text}"
    );

    // The outside world has no route to the pods: replies only come back if the source was
    // rewritten to the host's uplink address.
    let server = host.outside.spawn(&[
        "/usr/bin/python3", "-c",
        "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',8081));s.listen();c,a=s.accept();c.sendall(a[0].encode());c.close()",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let out = pod.ok(&[
        "/usr/bin/python3", "-c",
        &format!("import socket;c=socket.create_connection(('{OUTSIDE}',8081),timeout=3);print(c.recv(100).decode())"),
    ]);
    assert_eq!(out.trim(), common::HOST_UPLINK, "source seen outside");
    drop(server);

    // Pod-to-pod traffic inside the range is not masqueraded.
    let pod2 = Netns::new("nat-q");
    let r2 = host.add("n2", &pod2, &conf).ok();
    let _ = r;
    let ip2 = result_ip(&r2, true);
    let _srv = pod2.spawn(&[
        "/usr/bin/python3", "-c",
        "import socket;s=socket.socket();s.bind(('0.0.0.0',8082));s.listen();c,a=s.accept();c.sendall(a[0].encode());c.close()",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let seen = pod.ok(&["/usr/bin/python3", "-c", &format!("import socket;c=socket.create_connection(('{ip2}',8082),timeout=3);print(c.recv(100).decode())")]);
    assert_eq!(seen.trim(), result_ip(&r, true));
}

#[test]
#[ignore = "needs root"]
fn spoofed_sources_are_dropped() {
    let host = Host::new("spf");
    for mode in ["bridge", "routed"] {
        let conf = host.conf("1.1.0", json!({"mode": mode, "ranges": ranges_for(mode)}));
        let (a, b) = (Netns::new("spf-a"), Netns::new("spf-b"));
        let ra = host.add(&format!("a-{mode}"), &a, &conf).ok();
        let rb = host.add(&format!("b-{mode}"), &b, &conf).ok();
        let ip_b = result_ip(&rb, true);
        assert!(a.ping(&ip_b, 2), "{mode}: genuine source works");
        // The container claims another address of the range (b's neighbour) and sends from it.
        let prefix = if mode == "bridge" { "16" } else { "32" };
        a.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/{prefix}", spoof_for(mode)),
            "dev",
            "eth0",
        ]);
        let spoofed = a.exec(&["ping", "-c", "2", "-W", "1", "-I", spoof_for(mode), &ip_b]);
        assert!(
            !spoofed.status.success(),
            "{mode}: spoofed source got through"
        );
        assert!(a.ping(&ip_b, 2), "{mode}: genuine source still works");
        let _ = ra;
    }
}

#[test]
#[ignore = "needs root"]
fn mtu_defaults_to_the_uplink_and_can_be_set() {
    let host = Host::new("mtu");
    host.ns.ok(&["ip", "link", "set", "uplink", "mtu", "1400"]);
    let conf = host.conf("1.1.0", json!({}));
    let pod = Netns::new("mtu-p");
    let r = host.add("m1", &pod, &conf).ok();
    assert_eq!(pod.link("eth0").unwrap()["mtu"], 1400);
    assert_eq!(r["interfaces"][2]["mtu"], 1400);
    let conf = host.conf(
        "1.1.0",
        json!({"mtu": 1300, "mode": "routed", "ranges": ranges_for("routed")}),
    );
    let pod = Netns::new("mtu-q");
    host.add("m2", &pod, &conf).ok();
    assert_eq!(pod.link("eth0").unwrap()["mtu"], 1300);
}

/// Ranges per mode for tests that run both modes on one host: the bridge holds the first
/// range's gateway, so the routed network gets its own.
fn ranges_for(mode: &str) -> Value {
    if mode == "bridge" {
        json!(["10.88.0.0/16", "fd88::/64"])
    } else {
        json!(["10.89.0.0/16", "fd89::/64"])
    }
}

/// An address of the mode's range that no pod holds.
fn spoof_for(mode: &str) -> &'static str {
    if mode == "bridge" {
        "10.88.200.200"
    } else {
        "10.89.200.200"
    }
}
