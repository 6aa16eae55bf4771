//! twill as the first plugin of a chain, followed by the reference `portmap`, `bandwidth` and
//! `tuning` plugins (Debian's containernetworking-plugins), run the way libcni runs a list:
//! ADD in order passing each result on as `prevResult`, CHECK in order with the final result,
//! DEL in reverse order. The reference plugins speak up to spec 1.0.0, so the list is 1.0.0.

mod common;

use common::{HOST_UPLINK, Host, result_ip};
use serde_json::{Value, json};
use twill_testkit::{Call, Netns};

fn plugin_conf(base: &Value, plugin: Value, runtime: Option<Value>, prev: Option<&Value>) -> Value {
    let mut c = plugin;
    c["cniVersion"] = base["cniVersion"].clone();
    c["name"] = base["name"].clone();
    if let Some(rt) = runtime {
        c["runtimeConfig"] = rt;
    }
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    c
}

#[test]
#[ignore = "needs root"]
fn portmap_bandwidth_tuning_chain() {
    for plugin in ["portmap", "bandwidth", "tuning"] {
        assert!(
            std::path::Path::new("/usr/lib/cni").join(plugin).exists(),
            "reference plugin {plugin} is not installed (containernetworking-plugins)"
        );
    }
    let host = Host::new("chain");
    // portmap 1.1.1 (Debian 12) CHECKs its IPv4 rules in ip6tables too whenever ip6tables exists
    // ("could not check ipv6 dnat"), a bug of that version fixed upstream later. Its CHECK is
    // therefore run with a PATH that offers iptables but no ip6tables, and the list is IPv4.
    let twill = host.conf("1.0.0", json!({"ipMasq": true, "ranges": ["10.88.0.0/16"]}));
    let portmap = json!({"type": "portmap", "capabilities": {"portMappings": true}});
    let port_rt =
        json!({"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]});
    let bandwidth = json!({"type": "bandwidth", "capabilities": {"bandwidth": true}});
    let bw_rt = json!({"bandwidth": {"ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000}});
    let tuning = json!({"type": "tuning", "sysctl": {"net.ipv4.conf.eth0.accept_local": "1"}, "promisc": true});

    let pod = Netns::new("chain-p");
    let id = "chained";
    let r1 = host.add(id, &pod, &twill).ok();
    let c2 = plugin_conf(&twill, portmap.clone(), Some(port_rt.clone()), Some(&r1));
    let r2 = host.call("portmap", "ADD", id, Some(&pod), &c2).ok();
    let c3 = plugin_conf(&twill, bandwidth.clone(), Some(bw_rt.clone()), Some(&r2));
    let r3 = host.call("bandwidth", "ADD", id, Some(&pod), &c3).ok();
    let c4 = plugin_conf(&twill, tuning.clone(), None, Some(&r3));
    let result = host.call("tuning", "ADD", id, Some(&pod), &c4).ok();
    assert_eq!(result_ip(&result, true), result_ip(&r1, true));

    // tuning applied its sysctl and flag inside the container.
    assert_eq!(
        pod.ok(&["cat", "/proc/sys/net/ipv4/conf/eth0/accept_local"])
            .trim(),
        "1"
    );
    let flags = pod.link("eth0").unwrap()["flags"].to_string();
    assert!(flags.contains("PROMISC"), "{flags}");
    // bandwidth shaped the host veth it found through twill's result.
    let hveth = r1["interfaces"][1]["name"].as_str().unwrap();
    let qdisc = host.ns.ok(&["tc", "qdisc", "show", "dev", hveth]);
    assert!(qdisc.contains("tbf"), "no tbf on {hveth}: {qdisc}");

    // Real traffic through the mapped port: outside -> host:18080 -> container:80.
    let pod_ip = result_ip(&r1, true);
    let _server = pod.spawn(&[
        "/usr/bin/python3", "-c",
        "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',80));s.listen();\nwhile True:\n c,a=s.accept();c.sendall(b'hello from pod');c.close()",
    ]);
    std::thread::sleep(std::time::Duration::from_millis(400));
    let got = host.outside.ok(&[
        "/usr/bin/python3", "-c",
        &format!("import socket;c=socket.create_connection(('{HOST_UPLINK}',18080),timeout=3);print(c.recv(100).decode())"),
    ]);
    assert_eq!(
        got.trim(),
        "hello from pod",
        "mapped port did not reach the container {pod_ip}"
    );

    // CHECK every plugin with the final result.
    let mut check = twill.clone();
    check["prevResult"] = result.clone();
    host.call("twill", "CHECK", id, Some(&pod), &check).ok();
    let v4_only = twill_testkit::TempDir::new("v4path");
    for tool in ["iptables", "iptables-save", "iptables-restore"] {
        let src = std::fs::canonicalize(std::path::Path::new("/usr/sbin").join(tool)).unwrap();
        std::os::unix::fs::symlink(src, v4_only.path().join(tool)).unwrap();
    }
    let v4_path = format!("{}:/usr/bin:/bin", v4_only.path().display());
    let portmap_check = plugin_conf(
        &twill,
        portmap.clone(),
        Some(port_rt.clone()),
        Some(&result),
    );
    let pod_path = pod.path();
    host.cni
        .call(&Call {
            plugin: "portmap",
            command: "CHECK",
            container_id: id,
            netns: Some(&pod_path),
            ifname: "eth0",
            args: None,
            config: &portmap_check,
            path: Some(&v4_path),
        })
        .ok();
    host.call(
        "bandwidth",
        "CHECK",
        id,
        Some(&pod),
        &plugin_conf(
            &twill,
            bandwidth.clone(),
            Some(bw_rt.clone()),
            Some(&result),
        ),
    )
    .ok();
    host.call(
        "tuning",
        "CHECK",
        id,
        Some(&pod),
        &plugin_conf(&twill, tuning.clone(), None, Some(&result)),
    )
    .ok();

    // DEL in reverse order; everything is gone afterwards, and DEL is repeatable.
    for _ in 0..2 {
        host.call(
            "tuning",
            "DEL",
            id,
            Some(&pod),
            &plugin_conf(&twill, tuning.clone(), None, Some(&result)),
        )
        .ok();
        host.call(
            "bandwidth",
            "DEL",
            id,
            Some(&pod),
            &plugin_conf(
                &twill,
                bandwidth.clone(),
                Some(bw_rt.clone()),
                Some(&result),
            ),
        )
        .ok();
        host.call(
            "portmap",
            "DEL",
            id,
            Some(&pod),
            &plugin_conf(
                &twill,
                portmap.clone(),
                Some(port_rt.clone()),
                Some(&result),
            ),
        )
        .ok();
        let mut del = twill.clone();
        del["prevResult"] = result.clone();
        host.call("twill", "DEL", id, Some(&pod), &del).ok();
    }
    assert!(host.ns.link(hveth).is_none());
    assert!(
        !host.ns.link_names().iter().any(|n| n.starts_with("bwp")),
        "bandwidth's ifb left: {:?}",
        host.ns.link_names()
    );
    assert!(host.allocations().is_empty());
    let nat = host.ns.ok(&["iptables-save", "-t", "nat"]);
    assert!(!nat.contains("18080"), "portmap rules left: {nat}");
}
