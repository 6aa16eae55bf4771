//! The plugin keeps what belongs to others and bounds what it is given (issue 12): a DEL or GC
//! or a failed ADD deletes only what it can prove is its own; a corrupt address state is
//! recoverable without handing an address out twice; stdin, CNI_NETNS, ranges, names and
//! dataDir are checked before anything changes. Pods and hosts are network namespaces, the
//! plugin is the real `twill` binary run as a runtime runs it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Host, result_ip};
use serde_json::{Value, json};
use twill_cni::plumbing::host_veth_name;
use twill_testkit::{Call, CniOutput, Netns};

fn gc(host: &Host, conf: &Value, valid: &[(&str, &str)]) -> CniOutput {
    let mut conf = conf.clone();
    conf["cni.dev/valid-attachments"] = valid
        .iter()
        .map(|(c, i)| json!({"containerID": c, "ifname": i}))
        .collect();
    host.cni.call(&Call {
        plugin: "twill",
        command: "GC",
        container_id: "",
        netns: None,
        ifname: "",
        args: None,
        config: &conf,
        path: None,
    })
}

/// The link's ifindex in the host namespace (None when it does not exist).
fn ifindex(ns: &Netns, name: &str) -> Option<u64> {
    ns.link(name).and_then(|l| l["ifindex"].as_u64())
}

/// Runs the twill CLI inside the host namespace.
fn twill_cli(host: &Host, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", host.ns.name(), env!("CARGO_BIN_EXE_twill")])
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .expect("run twill")
}

// ===== data loss =====

#[test]
#[ignore = "needs root"]
fn gc_of_one_network_keeps_another_networks_veths_on_the_same_bridge() {
    let host = Host::new("gcb");
    // Two networks on the default bridge (twill0), one dataDir, as a node with two
    // NetworkAttachmentDefinitions has.
    let mut net_a = host.conf("1.1.0", json!({"name": "neta", "ranges": ["10.91.1.0/24"]}));
    net_a.as_object_mut().unwrap().remove("bridge");
    let mut net_b = host.conf("1.1.0", json!({"name": "netb", "ranges": ["10.91.2.0/24"]}));
    net_b.as_object_mut().unwrap().remove("bridge");
    let (a, b, a2) = (
        Netns::new("gcb-a"),
        Netns::new("gcb-b"),
        Netns::new("gcb-a2"),
    );
    host.add("pod-a", &a, &net_a).ok();
    host.add("pod-a2", &a2, &net_a).ok();
    let rb = host.add("pod-b", &b, &net_b).ok();
    let veth_b = rb["interfaces"][1]["name"].as_str().unwrap().to_string();
    let index_b = ifindex(&host.ns, &veth_b).expect("b's veth");
    assert!(
        b.ping("10.91.2.1", 2),
        "b cannot reach its gateway before GC"
    );

    // GC of network A, which keeps only pod-a: pod-a2 (A's) goes, pod-b (B's) stays.
    gc(&host, &net_a, &[("pod-a", "eth0")]).ok();
    assert!(
        host.ns.link(&host_veth_name("pod-a2", "eth0")).is_none(),
        "A's unlisted attachment survived A's GC"
    );
    assert!(host.ns.link(&host_veth_name("pod-a", "eth0")).is_some());
    assert_eq!(
        ifindex(&host.ns, &veth_b),
        Some(index_b),
        "GC of network A deleted network B's veth"
    );
    assert!(b.link("eth0").is_some(), "pod b lost its interface");
    assert!(
        b.ping("10.91.2.1", 3),
        "b cannot reach its gateway after A's GC"
    );
    assert!(
        a.ping("10.91.1.1", 3),
        "a cannot reach its gateway after GC"
    );

    // GC of A keeping nothing, twice, and B's pod still works; B's own GC then collects it.
    gc(&host, &net_a, &[]).ok();
    gc(&host, &net_a, &[]).ok();
    assert_eq!(ifindex(&host.ns, &veth_b), Some(index_b));
    assert!(
        b.ping("10.91.2.1", 3),
        "b cannot reach its gateway after A's GCs"
    );
    gc(&host, &net_b, &[]).ok();
    assert!(
        host.ns.link(&veth_b).is_none(),
        "B's GC kept B's unlisted pod"
    );
}

#[test]
#[ignore = "needs root"]
fn veth_name_collision_is_an_error_that_leaves_the_first_pod_alone() {
    // These two (container ID, ifname) pairs hash to the same host veth name.
    let (first, second) = ("c000222fa", "c0159fe78");
    assert_eq!(
        host_veth_name(first, "eth0"),
        host_veth_name(second, "eth0")
    );
    let veth = host_veth_name(first, "eth0");

    let host = Host::new("col");
    let conf = host.conf("1.1.0", json!({}));
    let (a, b) = (Netns::new("col-a"), Netns::new("col-b"));
    let ra = host.add(first, &a, &conf).ok();
    let ip_a = result_ip(&ra, true);
    let index = ifindex(&host.ns, &veth).expect("first pod's veth");
    assert!(a.ping("10.88.0.1", 2));

    let err = host.add(second, &b, &conf).err(101);
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("collision"), "{msg}");
    // The runtime cleans up after a failed ADD with a DEL (with and without the netns).
    host.del(second, Some(&b), &conf).ok();
    host.del(second, None, &conf).ok();

    assert_eq!(
        ifindex(&host.ns, &veth),
        Some(index),
        "first pod's veth was replaced"
    );
    assert!(a.addresses("eth0").contains(&format!("{ip_a}/16")));
    assert!(a.ping("10.88.0.1", 3), "first pod lost its network");
    assert!(b.link("eth0").is_none(), "second pod got an interface");
    let owners: Vec<String> = host.allocations().into_iter().map(|(_, c)| c).collect();
    assert!(owners.iter().all(|c| c == first), "{owners:?}");
    assert!(!owners.is_empty());

    // The first pod's own DEL still works.
    host.del(first, Some(&a), &conf).ok();
    assert!(host.ns.link(&veth).is_none());
    assert!(host.allocations().is_empty());
}

#[test]
#[ignore = "needs root"]
fn a_veth_whose_address_record_was_lost_is_not_deleted_by_another_add() {
    let host = Host::new("lost");
    let conf = host.conf("1.1.0", json!({}));
    let (a, b) = (Netns::new("lost-a"), Netns::new("lost-b"));
    host.add("ctr-a", &a, &conf).ok();
    let veth = host_veth_name("ctr-a", "eth0");
    let index = ifindex(&host.ns, &veth).unwrap();
    // The record is lost (an empty state, as an old `rm state.json` advice left it).
    let state = host.data.path().join("ipam/twillnet/state.json");
    std::fs::write(
        &state,
        r#"{"version":1,"allocations":{},"last_reserved":{}}"#,
    )
    .unwrap();

    // An ADD for the same attachment into another sandbox must fail and leave a alone.
    host.add("ctr-a", &b, &conf).err(101);
    assert_eq!(
        ifindex(&host.ns, &veth),
        Some(index),
        "a's veth was deleted"
    );
    assert!(a.ping("10.88.0.1", 3), "pod a lost its network");
    assert!(b.link("eth0").is_none());
    assert!(host.allocations().is_empty(), "{:?}", host.allocations());
}

/// A stand-in for the agent's socket: answers every request line with ok and remembers it.
fn fake_agent(data: &Path) -> Arc<Mutex<Vec<Value>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = UnixListener::bind(data.join("agent.sock")).unwrap();
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let mut line = String::new();
            let mut reader = BufReader::new(&stream);
            if reader.read_line(&mut line).is_ok() {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    log.lock().unwrap().push(v);
                }
                let _ = (&stream).write_all(b"{\"ok\":true}\n");
            }
        }
    });
    seen
}

#[test]
#[ignore = "needs root"]
fn del_of_an_interface_never_added_keeps_the_pods_record_and_identity() {
    let host = Host::new("ep");
    let data = host.data.path();
    // Cluster mode with policy: the plugin records endpoints and asks the agent.
    std::fs::write(
        data.join("node.json"),
        json!({"node": "n1", "subnet": "10.92.1.0/24", "mtu": 1450, "backend": "vxlan",
               "clusterNetworks": ["10.92.0.0/16"], "policy": true})
        .to_string(),
    )
    .unwrap();
    let seen = fake_agent(data);
    let mut conf = host.conf("1.1.0", json!({}));
    conf.as_object_mut().unwrap().remove("ranges");
    // The plugin runs under umask 000: its files must get their modes anyway.
    let wrapper = host.cni.cni_path.join("twill-umask0");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\numask 000\nexec {} \"$@\"\n",
            env!("CARGO_BIN_EXE_twill")
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pod = Netns::new("ep-a");
    let path = pod.path();
    let umask0 = |command: &str, ifname: &str, netns: Option<&str>| {
        host.cni.call(&Call {
            plugin: "twill-umask0",
            command,
            container_id: "ctr1",
            netns,
            ifname,
            args: Some("K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web"),
            config: &conf,
            path: None,
        })
    };
    let r = umask0("ADD", "eth0", Some(&path)).ok();
    let veth = r["interfaces"][1]["name"].as_str().unwrap().to_string();
    let dir = data.join("endpoints");
    let record = dir.join("ctr1@eth0.json");
    assert!(record.exists(), "record keyed by (container ID, ifname)");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "endpoints dir under umask 000");
    assert_eq!(mode(&record), 0o600, "record under umask 000");
    assert_eq!(
        seen.lock().unwrap().last().unwrap()["containerId"],
        "ctr1@eth0"
    );
    let before = std::fs::read(&record).unwrap();

    // DEL of eth1, which was never added: nothing of eth0's attachment changes.
    umask0("DEL", "eth1", Some(&path)).ok();
    umask0("DEL", "eth1", None).ok();
    assert_eq!(
        std::fs::read(&record).unwrap(),
        before,
        "eth0's record changed"
    );
    assert!(
        host.ns.link(&veth).is_some(),
        "eth0's host veth was deleted"
    );
    assert!(pod.link("eth0").is_some());
    assert!(
        !host.allocations().is_empty(),
        "eth0's address was released"
    );
    assert!(
        !seen
            .lock()
            .unwrap()
            .iter()
            .any(|v| v["op"] == "del" && v["containerId"].as_str().unwrap().starts_with("ctr1")),
        "the agent was told to forget the pod: {:?}",
        seen.lock().unwrap()
    );
    assert!(pod.ping("10.92.1.1", 2), "pod lost its network");

    // A record written before the upgrade (keyed by container ID alone) is honoured: DEL
    // of another interface keeps it, DEL of its own interface removes it.
    let legacy = dir.join("old1.json");
    std::fs::write(
        &legacy,
        json!({"namespace": "prod", "name": "old", "labels": {}, "addresses": ["10.92.1.99"],
               "node": "n1", "interface": host_veth_name("old1", "eth0"), "namedPorts": []})
        .to_string(),
    )
    .unwrap();
    let legacy_call = |ifname: &str| {
        host.cni.call(&Call {
            plugin: "twill",
            command: "DEL",
            container_id: "old1",
            netns: None,
            ifname,
            args: None,
            config: &conf,
            path: None,
        })
    };
    legacy_call("eth1").ok();
    assert!(
        legacy.exists(),
        "DEL of eth1 removed the old-format record of eth0"
    );
    legacy_call("eth0").ok();
    assert!(!legacy.exists(), "DEL of eth0 kept its old-format record");
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|v| v["op"] == "del" && v["containerId"] == "old1")
    );

    // eth0's own DEL removes its record and tells the agent.
    umask0("DEL", "eth0", Some(&path)).ok();
    assert!(!record.exists());
    assert!(host.ns.link(&veth).is_none());
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|v| v["op"] == "del" && v["containerId"] == "ctr1@eth0")
    );
}

#[test]
#[ignore = "needs root"]
fn corrupt_state_then_del_and_repair_hand_out_no_address_twice() {
    let host = Host::new("rep");
    let conf = host.conf("1.1.0", json!({}));
    let (a, b, c) = (
        Netns::new("rep-a"),
        Netns::new("rep-b"),
        Netns::new("rep-c"),
    );
    host.add("ctr-a", &a, &conf).ok();
    let rb = host.add("ctr-b", &b, &conf).ok();
    let ip_b = result_ip(&rb, true);
    let ip6_b = result_ip(&rb, false);
    let state = host.data.path().join("ipam/twillnet/state.json");
    std::fs::write(&state, b"{\"version\":1,\"allocations\":{\"10.88").unwrap();

    // Every verb reports the corruption and points to the repair, not to deleting the file.
    let e = host.add("ctr-c", &c, &conf).err(104);
    let msg = e["msg"].as_str().unwrap();
    assert!(
        msg.contains("twill ipam repair twillnet --data-dir"),
        "{msg}"
    );
    assert!(!msg.contains("remove the file"), "{msg}");
    assert!(c.link("eth0").is_none(), "failed ADD left an interface");
    // DEL still removes the pod's veth (and says the address waits for the repair).
    let veth_a = host_veth_name("ctr-a", "eth0");
    host.del("ctr-a", Some(&a), &conf).err(104);
    assert!(host.ns.link(&veth_a).is_none(), "DEL left the veth behind");
    assert!(a.link("eth0").is_none());
    assert!(b.ping("10.88.0.1", 2), "pod b lost its network");

    // The repair: from the previous generation (which predates b's ADD) plus what is in use.
    let out = twill_cli(
        &host,
        &[
            "ipam",
            "repair",
            "twillnet",
            "--data-dir",
            host.data.path().to_str().unwrap(),
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "repair failed: {report} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&ip_b),
        "repair did not find b's address in use: {report}"
    );
    let held: Vec<String> = host.allocations().into_iter().map(|(ip, _)| ip).collect();
    assert!(held.contains(&ip_b) && held.contains(&ip6_b), "{held:?}");
    assert!(
        host.data
            .path()
            .join("ipam/twillnet/state.json.corrupt")
            .exists(),
        "the corrupt file was not kept for inspection"
    );

    // Everything works again; no address is handed out twice.
    host.del("ctr-a", Some(&a), &conf).ok();
    let rc = host.add("ctr-c", &c, &conf).ok();
    let ip_c = result_ip(&rc, true);
    assert_ne!(ip_c, ip_b, "b's address was handed out again");
    assert_ne!(result_ip(&rc, false), ip6_b);
    assert!(c.ping(&ip_b, 3), "c cannot reach b");
    // b's DEL releases its (repaired) record; then nothing is left but c.
    host.del("ctr-b", Some(&b), &conf).ok();
    host.del("ctr-c", Some(&c), &conf).ok();
    assert!(host.allocations().is_empty(), "{:?}", host.allocations());
}

// ===== bounds =====

/// Runs the plugin (no namespace needed: these fail before touching the kernel) with a
/// deadline; a hung plugin is killed and reported.
fn plugin_within(env: &[(&str, &str)], stdin: &[u8], limit: Duration) -> (i32, Value, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twill"));
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("plugin still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = start.elapsed();
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), v, elapsed)
}

fn add_env(netns: &str) -> Vec<(&str, &str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

fn conf_with(extra: Value) -> Vec<u8> {
    let mut c = json!({"cniVersion": "1.1.0", "name": "n", "type": "twill",
                       "ranges": ["10.88.0.0/16"], "dataDir": "/nonexistent/twill-sec"});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        c[k] = v;
    }
    c.to_string().into_bytes()
}

fn expect_code(result: (i32, Value, Duration), code: u64, needle: &str) {
    let (exit, v, _) = result;
    assert_ne!(exit, 0, "expected failure, got {v}");
    assert_eq!(v["code"].as_u64(), Some(code), "wrong code in {v}");
    let msg = v["msg"].as_str().unwrap_or("");
    assert!(
        msg.contains(needle),
        "message {msg:?} should mention {needle:?}"
    );
}

#[test]
fn oversized_stdin_is_refused_promptly() {
    // 4 MiB of valid JSON (a huge prevResult): refused, not read whole.
    let mut big = conf_with(json!({}));
    big.pop();
    big.extend_from_slice(b",\"prevResult\":\"");
    big.extend(std::iter::repeat_n(b'x', 4 << 20));
    big.extend_from_slice(b"\"}");
    let r = plugin_within(
        &add_env("/var/run/netns/none"),
        &big,
        Duration::from_secs(30),
    );
    expect_code(r, 6, "larger than 1024 KiB");
    // Just under the limit is still read (and fails later for its own reasons).
    let (_, v, _) = plugin_within(
        &add_env("/var/run/netns/none"),
        &conf_with(json!({"ranges": ["127.0.0.0/8"]})),
        Duration::from_secs(30),
    );
    assert_eq!(v["code"], 7, "{v}");
}

#[test]
fn cni_netns_that_is_not_a_namespace_is_code_4_and_never_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let file = dir.path().join("file");
    std::fs::write(&file, b"not a namespace").unwrap();
    for (path, what) in [
        (fifo.to_str().unwrap(), "FIFO"),
        (file.to_str().unwrap(), "not a namespace file"),
        (dir.path().to_str().unwrap(), "directory"),
        ("/dev/null", "device"),
        ("/nonexistent/netns", "No such file"),
    ] {
        let r = plugin_within(
            &add_env(path),
            &conf_with(json!({})),
            Duration::from_secs(20),
        );
        assert!(r.2 < Duration::from_secs(10), "{path}: took {:?}", r.2);
        expect_code(r, 4, what);
    }
    // CHECK reads CNI_NETNS the same way.
    let mut env = add_env(fifo.to_str().unwrap());
    env[0] = ("CNI_COMMAND", "CHECK");
    let r = plugin_within(
        &env,
        &conf_with(json!({"prevResult": {"cniVersion": "1.1.0", "interfaces": [], "ips": []}})),
        Duration::from_secs(20),
    );
    expect_code(r, 4, "FIFO");
}

#[test]
fn reserved_ranges_names_and_data_dirs_are_refused() {
    let env = add_env("/var/run/netns/none");
    let limit = Duration::from_secs(30);
    for range in [
        "0.0.0.0/0",
        "0.0.0.0/8",
        "127.0.0.0/8",
        "127.1.0.0/16",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "239.1.0.0/16",
        "240.0.0.0/4",
        "8.0.0.0/5",
        "::/0",
        "::1/128",
        "fe80::/10",
        "fe80::/64",
        "ff00::/8",
        "ff02::/64",
    ] {
        let r = plugin_within(&env, &conf_with(json!({"ranges": [range]})), limit);
        if range == "8.0.0.0/5" {
            // An ordinary range is not refused by this check (it fails later: no netns).
            assert_eq!(r.1["code"], 4, "{range}: {}", r.1);
            continue;
        }
        expect_code(r, 7, "overlaps");
    }
    for name in [".", "..", "-net", "_net", ".hidden", "a/b", ""] {
        let r = plugin_within(&env, &conf_with(json!({"name": name})), limit);
        expect_code(r, 7, "network name");
    }
    for ok in ["n", "9net", "my-net.v1_x"] {
        let r = plugin_within(&env, &conf_with(json!({"name": ok})), limit);
        assert_eq!(r.1["code"], 4, "{ok}: {}", r.1);
    }
    for data_dir in ["", "relative/dir", "./twill", "../twill"] {
        let r = plugin_within(&env, &conf_with(json!({"dataDir": data_dir})), limit);
        expect_code(r, 7, "dataDir");
    }
}

#[test]
#[ignore = "needs root"]
fn ranges_overlapping_the_hosts_networks_are_refused_with_nothing_left_behind() {
    let host = Host::new("ovl");
    // The host's uplink is 192.0.2.2/24; it also routes 10.99.0.0/16 somewhere.
    host.ns
        .ok(&["ip", "route", "add", "10.99.0.0/16", "via", common::OUTSIDE]);
    host.ns.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd77::2/64",
        "dev",
        "uplink",
        "nodad",
    ]);
    let pod = Netns::new("ovl-p");
    for (ranges, needle) in [
        (json!(["192.0.2.0/25"]), "192.0.2.2/24"),
        (json!(["192.0.0.0/16"]), "192.0.2.2/24"),
        (json!(["10.99.7.0/24"]), "route 10.99.0.0/16"),
        (json!(["10.88.0.0/16", "fd77::/64"]), "fd77::2/64"),
    ] {
        let conf = host.conf("1.1.0", json!({"ranges": ranges}));
        let e = host.add("ctr-x", &pod, &conf).err(7);
        let msg = e["msg"].as_str().unwrap();
        assert!(msg.contains("overlaps") && msg.contains(needle), "{msg}");
        let bridge = conf["bridge"].as_str().unwrap();
        assert!(
            host.ns.link(bridge).is_none(),
            "a refused ADD made the bridge"
        );
        assert!(pod.link("eth0").is_none());
        assert!(host.allocations().is_empty());
        assert!(!host.ns.link_names().iter().any(|n| n.starts_with("tw")));
    }
    // The routed mode is checked too.
    let conf = host.conf(
        "1.1.0",
        json!({"mode": "routed", "ranges": ["10.99.1.0/24"]}),
    );
    host.add("ctr-x", &pod, &conf).err(7);
    assert!(!host.ns.link_names().iter().any(|n| n.starts_with("tw")));

    // A range the host does not use works, and keeps working with its own bridge addresses.
    let conf = host.conf("1.1.0", json!({}));
    host.add("ctr-x", &pod, &conf).ok();
    assert!(pod.ping("10.88.0.1", 3));
    let pod2 = Netns::new("ovl-q");
    host.add("ctr-y", &pod2, &conf).ok();
    assert!(pod2.ping("10.88.0.1", 3));
    host.del("ctr-x", Some(&pod), &conf).ok();
    host.del("ctr-y", Some(&pod2), &conf).ok();
}
