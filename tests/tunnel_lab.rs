//! The userspace tunnel (udp and ipip backends) in the lab, with real agents (root only):
//! traffic resumes within 1 s of an agent restart and TCP connections survive it; 100,000
//! random and malicious packets at the tunnel port are dropped and counted while pods keep
//! talking; peers joining and leaving update the tunnel.

mod lab_common;

use std::path::Path;
use std::time::Duration;

use lab_common::{
    Guard, missing_send_times, ping_report, pod_ip, spawn_in, traffic_across_with_output, unix_now,
};
use serde_json::Value;
use twill_lab::{Backend, Lab, LabSpec, Signal};
use twill_testkit::{random_suffix, require_root};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

fn lab(backend: Backend, nodes: u32) -> (Lab, Guard) {
    let name = format!("u{}", random_suffix(5));
    let guard = Guard(name.clone());
    let spec = LabSpec::new(&name)
        .nodes(nodes)
        .backend(backend)
        .pods_per_node(1);
    let lab = Lab::up(&spec, Path::new(TWILL)).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    lab.wait_converged(Duration::from_secs(20)).unwrap();
    (lab, guard)
}

fn status(lab: &Lab, host: u32) -> Value {
    lab.host_status_json(host).unwrap()
}

fn restart_case(backend: Backend) {
    require_root();
    let (mut lab, _g) = lab(backend, 2);
    let mut window = (0.0, 0.0);
    let ((sent, received, gap_ms), ping) = traffic_across_with_output(&mut lab, |lab| {
        window.0 = unix_now();
        lab.kill_agent(1, Signal::SIGKILL).unwrap();
        std::thread::sleep(Duration::from_millis(200));
        lab.start_agent(1).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        lab.kill_agent(2, Signal::SIGKILL).unwrap();
        lab.start_agent(2).unwrap();
        window.1 = unix_now();
    });
    let missing = missing_send_times(&ping, 0.01);
    eprintln!(
        "{backend:?}: {received}/{sent} ping replies, longest gap {gap_ms} ms; missing (seq, \
         sent at) {missing:?}; restarts from {:.3} to {:.3}",
        window.0, window.1
    );
    {
        // The kernel fast path stays attached while an agent is dead: nothing sent from the
        // first kill until 1 s after the last start is lost. (Outside that window a loaded
        // machine drops a ping now and then while the TCP stream ramps up, restart or not:
        // seen at 0.2 s into the run, long before the first kill.)
        for host in [1, 2] {
            assert_eq!(
                status(&lab, host)["tunnel"]["kernelPath"],
                "eth0",
                "{backend:?} runs on the kernel fast path"
            );
        }
        let during: Vec<&(u64, f64)> = missing
            .iter()
            .filter(|(_, t)| t.is_nan() || (window.0 - 0.05..=window.1 + 1.0).contains(t))
            .collect();
        assert!(
            during.is_empty(),
            "with the kernel fast path an agent restart must not lose a packet: lost {during:?} \
             (seq, sent at) between {:.3} and {:.3}\n{ping}",
            window.0,
            window.1
        );
    }
}

#[test]
#[ignore = "needs root"]
fn udp_agent_restart_keeps_tcp_and_resumes_within_a_second() {
    restart_case(Backend::Udp);
}

#[test]
#[ignore = "needs root"]
fn ipip_agent_restart_keeps_tcp_and_resumes_within_a_second() {
    restart_case(Backend::Ipip);
}

/// Sends `count` hostile packets at host 1's tunnel from the underlay namespace: random
/// bytes, inner packets with spoofed sources, truncated headers, and (being outside the
/// cluster) an unknown outer source for all of them.
const GARBAGE: &str = r#"
import os, random, socket, struct, sys
proto, dst, count, pod = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def csum(b):
    s = sum(struct.unpack('!10H', b))
    s = (s & 0xffff) + (s >> 16)
    return ~((s & 0xffff) + (s >> 16)) & 0xffff
def ip4(src, dst, payload, proto=1):
    hdr = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(payload), 0, 0, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack('!H', csum(hdr)) + hdr[12:]
    return hdr + payload
if proto == 'udp':
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    send = lambda b: s.sendto(b, (dst, 8285))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 4)
    send = lambda b: s.sendto(b, (dst, 0))
r = random.Random(7)
sent = 0
for i in range(count):
    k = i % 4
    if k == 0:
        b = os.urandom(r.randrange(0, 1400))
    elif k == 1:
        # A well-formed inner packet to a real pod here, from a source no peer owns.
        b = ip4('10.99.%d.%d' % (r.randrange(256), r.randrange(1, 255)), pod, b'x' * 32)
    elif k == 2:
        b = ip4('1.2.3.4', '10.244.0.2', b'')[: r.randrange(1, 20)]
    else:
        b = bytes([0x45]) + os.urandom(r.randrange(0, 60))
    try:
        send(b); sent += 1
    except OSError:
        pass
print(sent)
"#;

fn garbage_case(backend: Backend, proto: &str) {
    require_root();
    let (lab, _g) = lab(backend, 2);
    let dst = pod_ip(&lab, 2);
    let h1 = lab.state().hosts[0].ip4().to_string();
    let h1_pod = pod_ip(&lab, 1);
    let pinger = spawn_in(
        &lab,
        "h1-p1",
        &["ping", "-D", "-i", "0.01", "-c", "400", "-W", "1", &dst],
    );
    // Half from outside the cluster (unknown outer source), half from a real peer's address
    // (known outer source, so the inner checks and the decoder are what must hold).
    let mut sent = 0;
    for from in ["underlay", "h2"] {
        let attack = lab
            .exec(
                from,
                &["python3", "-c", GARBAGE, proto, &h1, "50000", &h1_pod],
            )
            .unwrap();
        assert!(attack.status.success(), "{attack:?}");
        sent += String::from_utf8_lossy(&attack.stdout)
            .trim()
            .parse::<u64>()
            .unwrap();
    }
    assert!(sent >= 99_000, "only {sent} hostile packets sent");
    let ping = pinger.wait_with_output().unwrap();
    let (tx, rx, _) = ping_report(&String::from_utf8_lossy(&ping.stdout), 10);
    assert!(lab.agent_alive(1), "the agent died under garbage");
    // Status is rewritten every second: wait until the counters include the whole attack.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let (st, dropped) = loop {
        let st = status(&lab, 1);
        let dropped: u64 = st["tunnel"]["drops"]
            .as_object()
            .unwrap_or_else(|| panic!("no tunnel drops in status: {st}"))
            .values()
            .filter_map(Value::as_u64)
            .sum();
        let rx_packets = st["peers"][0]["counters"]["rxPackets"]
            .as_u64()
            .unwrap_or(0);
        if (dropped >= sent && rx_packets >= rx) || std::time::Instant::now() > deadline {
            break (st, dropped);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let drops = &st["tunnel"]["drops"];
    eprintln!("{backend:?}: sent {sent} hostile packets; drops {drops}; ping {rx}/{tx}");
    assert_eq!(
        dropped, sent,
        "every hostile packet is dropped and counted once: {drops}"
    );
    let count = |k: &str| drops[k].as_u64().unwrap_or(0);
    assert!(
        count("unknownPeer") >= 40_000,
        "outsiders not counted: {drops}"
    );
    assert!(
        count("malformed") + count("spoofedInnerSource") + count("foreignInnerDestination")
            >= 20_000,
        "a peer's bad packets were not counted: {drops}"
    );
    assert!(
        rx * 100 >= tx * 99,
        "good traffic lost more than 1%: {rx}/{tx}"
    );
    let peer = &st["peers"][0];
    // Every echo reply came back through the tunnel.
    assert!(
        peer["counters"]["rxPackets"].as_u64().unwrap_or(0) >= rx,
        "{peer}"
    );
}

#[test]
#[ignore = "needs root"]
fn udp_port_survives_100000_hostile_packets() {
    garbage_case(Backend::Udp, "udp");
}

#[test]
#[ignore = "needs root"]
fn ipip_survives_100000_hostile_packets() {
    garbage_case(Backend::Ipip, "ipip");
}

/// A peer leaving drops out of the tunnel; the others keep their counters and traffic.
#[test]
#[ignore = "needs root"]
fn tunnel_peers_follow_joins_and_leaves() {
    require_root();
    let (lab, _g) = lab(Backend::Udp, 3);
    let st = status(&lab, 1);
    let peers: Vec<&str> = st["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node"].as_str().unwrap())
        .collect();
    assert_eq!(peers.len(), 2);
    assert!(
        st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["path"]["via"] == "udp")
    );
    // A node joins (its lease appears in etcd): the engine's own peer table takes it (the
    // per-peer counters in status come from the engine, not from the desired state).
    let joined = r#"{"node":"h9","subnet":"10.244.77.0/24","publicNet":"192.168.100.99/24","backend":"udp"}"#;
    let etcdctl = |args: &[&str]| {
        let out = lab.etcdctl(args).unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    };
    etcdctl(&["put", "/twill/leases/10.244.77.0-24", joined]);
    let engine_knows = |node: &str| {
        status(&lab, 1)["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["node"] == node && p["counters"].is_object())
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("h1's tunnel to take the joining h9", &|| engine_knows("h9"));
    etcdctl(&["del", "/twill/leases/10.244.77.0-24"]);
    wait("h1's tunnel to drop h9", &|| !engine_knows("h9"));

    lab.kill_agent(3, Signal::SIGTERM).unwrap();
    let host = &lab.state().hosts[2];
    let store = lab.store_args();
    let mut cmd = vec![TWILL, "node", "leave"];
    cmd.extend(store.iter().map(String::as_str));
    cmd.extend([
        "--node-name",
        "h3",
        "--data-dir",
        host.data_dir.to_str().unwrap(),
    ]);
    let out = lab.exec("h3", &cmd).unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = status(&lab, 1);
        let nodes: Vec<String> = st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["node"].as_str().unwrap().to_string())
            .collect();
        if nodes == ["h2"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "h3 still in h1's tunnel: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let links = lab
        .exec("h3", &["ip", "link", "show", "twill.tun"])
        .unwrap();
    assert!(
        !links.status.success(),
        "h3 kept its TUN device after leaving"
    );
    let ping = lab
        .exec("h1-p1", &["ping", "-c", "3", "-i", "0.2", &pod_ip(&lab, 2)])
        .unwrap();
    assert!(ping.status.success());
}

/// The loss placement the restart test relies on: a missing reply's send time lies between
/// its neighbours' timestamps, or one interval beyond the last one.
#[test]
fn missing_send_times_places_losses() {
    let out = "[100.000] 64 bytes from 10.0.0.2: icmp_seq=1 ttl=64 time=0.1 ms\n\
               [100.010] 64 bytes from 10.0.0.2: icmp_seq=2 ttl=64 time=0.1 ms\n\
               [100.050] 64 bytes from 10.0.0.2: icmp_seq=5 ttl=64 time=0.1 ms\n\
               \n--- 10.0.0.2 ping statistics ---\n\
               6 packets transmitted, 3 received, 50% packet loss, time 50ms\n";
    let missing = missing_send_times(out, 0.01);
    let seqs: Vec<u64> = missing.iter().map(|m| m.0).collect();
    assert_eq!(seqs, [3, 4, 6]);
    for ((_, t), want) in missing.iter().zip([100.0233, 100.0367, 100.06]) {
        assert!((t - want).abs() < 0.001, "{missing:?}");
    }
}
