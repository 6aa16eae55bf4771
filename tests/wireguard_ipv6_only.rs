//! WireGuard in an IPv6-only cluster with real agents (issue 15; root only). Two nodes whose
//! underlay has no IPv4 address at all share a bridge (in a namespace of its own, which also
//! runs the test's etcd on that IPv6 segment); each runs the real `twill agent`, and a pod on
//! each is attached by the real plugin. Proved on the kernel and on the wire:
//! - the wireguard backend (Flannel's net-conf.json with `EnableIPv4: false` and no `Mode`,
//!   so flanneld's `separate`: one device on `ListenPortV6`, 51821) and vxlan with
//!   `wireguard: {enabled: true}` (twill's form, port 51820): each node has `twill.wg`, routes
//!   the other's IPv6 pod subnet into it and nothing IPv4; `ping -6` between the pods works;
//!   an underlay capture decoded by scapy (tests/wireguard6/wire_check.py) shows only
//!   WireGuard over IPv6 UDP on the port (transport messages among them) and no pod packet or
//!   marker in clear;
//! - attacks: a host on the segment that is no peer sends random datagrams, handshake
//!   initiations with a valid MAC1 for the node's public key, and replays of captured
//!   transport messages — all dropped and counted by reason while the pods keep talking; and
//!   a peer (authenticated) sending packets whose inner IPv6 source lies outside its subnet
//!   has them dropped as spoofed, none reaching the pod.
//!
//! Needs etcd, tcpdump and python3-scapy (for /usr/bin/python3).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_testkit::{Background, Cni, Netns, TempDir, random_suffix, require_root, veth};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");
/// The bridge's address on the segment, where etcd listens.
const ETCD_IP: &str = "fd00:1::1";
const POD_NET6: &str = "fd00:10:244::/56";
const WIRE_CHECK: &str = include_str!("wireguard6/wire_check.py");
/// The Debian python with scapy (a python3 earlier on PATH may lack it).
const SCAPY_PYTHON: &str = "/usr/bin/python3";

/// Polls `f` until it returns Ok, for up to `secs`; panics with what it last said.
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match f() {
            Ok(v) => return v,
            Err(last) if Instant::now() > deadline => {
                panic!("timed out after {secs} s waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Starts `cmd` in namespace `ns` with stdout piped (and stderr to `log`, or dropped).
fn spawn_in(ns: &Netns, cmd: &[&str], log: Option<&Path>) -> Child {
    let stderr = match log {
        Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
        None => Stdio::null(),
    };
    Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .args(cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// One node: its namespace, underlay address, data directory, agent and plugin.
struct Node {
    name: String,
    ns: Netns,
    ip6: String,
    data: PathBuf,
    log: PathBuf,
    agent: Option<Background>,
    cni: Cni,
    _cni_dir: TempDir,
}

impl Node {
    fn status(&self) -> Value {
        std::fs::read_to_string(self.data.join("status.json"))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sum of the WireGuard drop counters with these names in its status.
    fn drops(&self, names: &[&str]) -> u64 {
        let st = self.status();
        names
            .iter()
            .filter_map(|n| st["wireguard"]["drops"][*n].as_u64())
            .sum()
    }

    fn all_drops(&self) -> u64 {
        self.status()["wireguard"]["drops"]
            .as_object()
            .map(|m| m.values().filter_map(Value::as_u64).sum())
            .unwrap_or(0)
    }

    /// Attaches a pod (a namespace of its own) with the real plugin; its IPv6 address.
    fn add_pod(&self, id: &str, pod: &Netns) -> String {
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": "wg6only",
            "type": "twill",
            "dataDir": self.data,
        });
        let out = self.cni.call(&twill_testkit::Call {
            plugin: "twill",
            command: "ADD",
            container_id: id,
            netns: Some(&pod.path()),
            ifname: "eth0",
            args: None,
            config: &conf,
            path: None,
        });
        let result = out.ok();
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "an IPv6-only pod has one address: {result}");
        let address = ips[0]["address"].as_str().unwrap();
        assert!(address.contains(':'), "{result}");
        address.split('/').next().unwrap().to_string()
    }
}

/// The segment (a bridge in its own namespace, with etcd), the nodes on it, and what the
/// test keeps until it ends (dropping the namespaces kills every process in them).
struct Cluster {
    underlay: Netns,
    nodes: Vec<Node>,
    dir: TempDir,
    _etcd: Background,
    store: String,
}

impl Cluster {
    /// The segment, etcd, the cluster config `config` (in a file named `file`) and `n`
    /// nodes with their agents, converged: every node in sync with every peer programmed.
    fn up(tag: &str, file: &str, config: &str, n: u32) -> Cluster {
        require_root();
        let dir = TempDir::new(&format!("{tag}-{}", random_suffix(4)));
        let underlay = Netns::new(&format!("{tag}u"));
        for cmd in [
            "ip link add br0 type bridge",
            "ip link set br0 up",
            &format!("ip -6 addr add {ETCD_IP}/64 dev br0 nodad"),
        ] {
            let out = underlay.sh(cmd);
            assert!(out.status.success(), "{cmd}: {}", text(&out));
        }
        let etcd_log = dir.path().join("etcd.log");
        let etcd = Background(
            Command::new("ip")
                .args(["netns", "exec", underlay.name(), "etcd"])
                .args(["--name", "t", "--data-dir"])
                .arg(dir.path().join("etcd"))
                .args([
                    "--listen-client-urls",
                    &format!("http://[{ETCD_IP}]:2379"),
                    "--advertise-client-urls",
                    &format!("http://[{ETCD_IP}]:2379"),
                    "--listen-peer-urls",
                    "http://[::1]:2380",
                    "--initial-advertise-peer-urls",
                    "http://[::1]:2380",
                    "--initial-cluster",
                    "t=http://[::1]:2380",
                    "--listen-metrics-urls",
                    "http://[::1]:2381",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&etcd_log).unwrap())
                .spawn()
                .expect("run etcd (apt-get install etcd-server)"),
        );
        wait_for("etcd to answer", 60, || {
            let out = underlay.exec(&[
                "etcdctl",
                &format!("--endpoints=http://[{ETCD_IP}]:2379"),
                "endpoint",
                "health",
            ]);
            out.status.success().then_some(()).ok_or_else(|| {
                format!(
                    "{}\n{}",
                    text(&out),
                    std::fs::read_to_string(&etcd_log).unwrap_or_default()
                )
            })
        });
        let store = format!("etcd://[{ETCD_IP}]:2379");
        let nodes: Vec<Node> = (1..=n)
            .map(|i| {
                let ns = Netns::new(&format!("{tag}{i}"));
                let port = format!("p{i}{}", random_suffix(4));
                veth(&ns, "eth0", &underlay, &port);
                underlay.ok(&["ip", "link", "set", &port, "master", "br0"]);
                let ip6 = format!("fd00:1::1{i}");
                ns.ok(&[
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ]);
                let (cni, cni_dir) = Cni::new(Path::new(TWILL), &ns);
                Node {
                    name: format!("h{i}"),
                    data: dir.path().join(format!("h{i}")),
                    log: dir.path().join(format!("h{i}.log")),
                    ns,
                    ip6,
                    agent: None,
                    cni,
                    _cni_dir: cni_dir,
                }
            })
            .collect();
        // The config, stored as `twill cluster init` stores it (run on a node: it checks
        // the pools against that host's networks).
        let path = dir.path().join(file);
        std::fs::write(&path, config).unwrap();
        let out = nodes[0].ns.exec(&[
            TWILL,
            "cluster",
            "init",
            "--store",
            &store,
            "-f",
            path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "cluster init: {}", text(&out));
        let mut cluster = Cluster {
            underlay,
            nodes,
            dir,
            _etcd: etcd,
            store,
        };
        for i in 0..cluster.nodes.len() {
            cluster.start_agent(i);
        }
        cluster.wait_converged();
        cluster
    }

    fn start_agent(&mut self, i: usize) {
        let store = self.store.clone();
        let node = &mut self.nodes[i];
        let child = Command::new("ip")
            .args(["netns", "exec", node.ns.name(), TWILL, "agent"])
            .args([
                "--store",
                &store,
                "--node-name",
                &node.name,
                "--iface",
                "eth0",
            ])
            .arg("--data-dir")
            .arg(&node.data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&node.log).unwrap())
            .spawn()
            .unwrap();
        node.agent = Some(Background(child));
    }

    /// Every agent in sync, knowing every other node as a WireGuard peer with the kernel
    /// programmed.
    fn wait_converged(&mut self) {
        let want = self.nodes.len() - 1;
        for node in &mut self.nodes {
            let agent = node.agent.as_mut().unwrap();
            let log = node.log.clone();
            let data = node.data.clone();
            wait_for(&format!("{} to converge", node.name), 60, || {
                if let Some(code) = agent.0.try_wait().unwrap() {
                    panic!(
                        "the agent stopped ({code}); its log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                let st: Value = std::fs::read_to_string(data.join("status.json"))
                    .ok()
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .unwrap_or(Value::Null);
                let peers = st["peers"].as_array().cloned().unwrap_or_default();
                let ready = st["inSync"] == true
                    && peers.len() == want
                    && peers
                        .iter()
                        .all(|p| p["programmed"] == true && p["path"]["via"] == "wireguard");
                ready.then_some(()).ok_or_else(|| st.to_string())
            });
        }
    }

    fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).unwrap()
    }
}

/// What every node of an IPv6-only WireGuard cluster must have: no IPv4 address but
/// loopback's, `twill.wg` with no IPv4 address, the other nodes' IPv6 subnets routed into
/// it, no IPv4 route, and WireGuard peers at their IPv6 underlay address on `port`.
fn assert_ipv6_only_wireguard(cluster: &Cluster, port: u16) {
    for node in &cluster.nodes {
        let v4 = node.ns.ok(&["ip", "-4", "-o", "addr", "show"]);
        assert!(
            v4.lines().all(|l| l.contains(" lo ")),
            "{}: IPv4 addresses {v4}",
            node.name
        );
        assert!(node.ns.link("twill.wg").is_some(), "{}", node.name);
        let routes4 = node.ns.ok(&["ip", "-4", "route", "show"]);
        assert!(routes4.trim().is_empty(), "{}: {routes4}", node.name);
        let st = node.status();
        assert_eq!(st["wireguard"]["port"], port, "{st}");
        assert!(
            st.get("subnet").is_none() && st.get("publicIp").is_none(),
            "{st}"
        );
        for peer in st["peers"].as_array().unwrap() {
            let other = cluster.node(peer["node"].as_str().unwrap());
            let subnet6 = peer["subnet6"].as_str().unwrap();
            assert_eq!(peer["path6"]["via"], "wireguard", "{peer}");
            assert!(peer.get("subnet").is_none(), "{peer}");
            let routes = node.ns.ip_json(&["-6", "route", "show", "exact", subnet6]);
            assert_eq!(routes[0]["dev"], "twill.wg", "{}: {routes}", node.name);
            assert_eq!(
                peer["wireguard"]["endpoint"],
                format!("[{}]:{port}", other.ip6),
                "{peer}"
            );
        }
    }
}

/// A TCP echo server on [::]:7777 (runs until killed or 60 s).
const ECHO6: &str = include_str!("wireguard6/echo6.py");

/// Sends the marker to [ip]:7777 and expects it back.
const SEND_MARKER6: &str = include_str!("wireguard6/send_marker6.py");

/// tcpdump on `dev` in `ns` writing to a file, until stopped.
struct Capture {
    child: Child,
    file: PathBuf,
}

impl Capture {
    fn start(ns: &Netns, dev: &str, file: PathBuf, filter: &str) -> Capture {
        // Its messages go to a file, not a pipe: a pipe closed early would kill it (SIGPIPE)
        // at its next message.
        let log = file.with_extension("log");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "tcpdump", "-i", dev, "-n"])
            // Packets as they come: with the default buffer timeout, ones still in the
            // kernel's ring when SIGINT arrives are lost.
            .args(["--immediate-mode", "-U", "-w"])
            .arg(&file)
            .args(filter.split_whitespace())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("run tcpdump");
        // tcpdump says "listening on" once it captures.
        wait_for("tcpdump to listen", 20, || {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            said.contains("listening on").then_some(()).ok_or(said)
        });
        Capture { child, file }
    }

    /// Stops tcpdump (SIGINT flushes the file) and returns the file.
    fn stop(mut self) -> PathBuf {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        self.file.clone()
    }
}

/// IPv6 marker traffic (TCP echo, pings with the marker as payload) between the pods both
/// ways while h1's underlay is captured; the capture decoded by scapy must show only
/// WireGuard on `port` (over IPv6), transport messages among it, and nothing of the pods'
/// in clear. Returns the capture (for replays) and the report.
fn wire_proof(cluster: &Cluster, pods: &[(&Netns, String)], port: u16) -> (PathBuf, Value) {
    let marker = format!("twillwg6only{}", random_suffix(6));
    let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
    let h1 = cluster.node("h1");
    // etcd's sessions are the nodes' control traffic, not pod packets.
    let capture = Capture::start(
        &h1.ns,
        "eth0",
        cluster.dir.path().join("underlay.pcap"),
        "not port 2379",
    );
    let mut servers: Vec<Child> = pods
        .iter()
        .map(|(ns, _)| spawn_in(ns, &["python3", "-c", ECHO6], None))
        .collect();
    for s in &mut servers {
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(s.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
    }
    for (a, _) in pods {
        for (_, dst) in pods.iter().filter(|(b, _)| b.name() != a.name()) {
            let out = a.exec(&["python3", "-c", SEND_MARKER6, dst, &marker]);
            assert!(
                out.status.success(),
                "{} -> {dst}: {}",
                a.name(),
                text(&out)
            );
            let out = a.exec(&[
                "ping", "-6", "-c", "3", "-i", "0.2", "-W", "2", "-p", &hex, dst,
            ]);
            assert!(
                out.status.success(),
                "{} -> {dst}: {}",
                a.name(),
                text(&out)
            );
        }
    }
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    let pcap = capture.stop();
    let out = Command::new(SCAPY_PYTHON)
        .args(["-c", WIRE_CHECK])
        .arg(&pcap)
        .arg(port.to_string())
        .arg(&marker)
        .arg(POD_NET6)
        .output()
        .expect("run the capture check");
    assert!(
        out.status.success(),
        "the capture check failed (needs python3-scapy): {}",
        text(&out)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("wire: {report}");
    assert!(report["packets"].as_u64().unwrap_or(0) > 0, "{report}");
    assert_eq!(report["notWireguardCount"], 0, "{report}");
    assert_eq!(report["notIpv6Count"], 0, "IPv4 on the underlay: {report}");
    assert_eq!(
        report["clearPod6Count"], 0,
        "pod packets in clear: {report}"
    );
    assert_eq!(report["markerCount"], 0, "the marker in clear: {report}");
    assert!(
        report["wgTypes"]["4"].as_u64().unwrap_or(0) > 0,
        "no WireGuard transport message on the wire: {report}"
    );
    (pcap, report)
}

/// Hostile datagrams to [dst]:port from a host that is no peer: random bytes, handshake
/// initiations with a valid MAC1 for the node's public key `pub` (which anyone can compute)
/// but no peer's key behind them, and replays of the transport messages in `replay_file`
/// (hex, one per line); paced to `rate` a second. Prints the count sent.
const HOSTILE6: &str = r#"
import base64, hashlib, os, random, socket, sys, time
dst, port, count, pub, replay_file, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), base64.b64decode(sys.argv[4]), sys.argv[5], float(sys.argv[6])
replays = [bytes.fromhex(l) for l in open(replay_file).read().split()]
mac1_key = hashlib.blake2s(b"mac1----" + pub).digest()
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
r = random.Random(7)
start = time.monotonic()
sent = 0
for i in range(count):
    if i % 100 == 0:
        time.sleep(max(0.0, start + i / rate - time.monotonic()))
    k = i % 3
    if k == 0:
        b = os.urandom(r.randrange(0, 1400))
    elif k == 1 and replays:
        b = replays[i % len(replays)]
    else:
        body = b"\x01\x00\x00\x00" + os.urandom(112)
        b = body + hashlib.blake2s(body, digest_size=16, key=mac1_key).digest() + b"\x00" * 16
    s.sendto(b, (dst, port)); sent += 1
print(sent)
"#;

/// The UDP payloads (hex, one per line) of the WireGuard transport messages to `dst` in a
/// capture.
const TRANSPORT_PAYLOADS: &str = r#"
import sys
from scapy.all import PcapReader, IPv6, UDP, raw
with PcapReader(sys.argv[1]) as packets:
    for p in packets:
        if IPv6 in p and UDP in p and p[IPv6].dst == sys.argv[2] and raw(p[UDP].payload)[:1] == b"\x04":
            print(raw(p[UDP].payload).hex())
"#;

/// The kernel's count of UDP6 datagrams dropped for a full socket buffer in `ns`.
fn udp6_rcvbuf_errors(ns: &Netns) -> u64 {
    let snmp = ns.ok(&["cat", "/proc/net/snmp6"]);
    snmp.lines()
        .find_map(|l| l.strip_prefix("Udp6RcvbufErrors"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Udp6RcvbufErrors in {snmp}"))
}

/// A host on the segment that is no peer attacks h1's WireGuard port; then h2, a peer, sends
/// h1's pod packets with an inner IPv6 source outside its own subnet. Everything is dropped
/// and counted; the pods keep talking.
fn attacks(cluster: &Cluster, pods: &[(&Netns, String)], pcap: &Path, port: u16) {
    let (h1, h2) = (cluster.node("h1"), cluster.node("h2"));
    let (pod1, pod2) = (&pods[0], &pods[1]);
    // The outsider: on the bridge, an address of the segment, no agent, no key anyone knows.
    let outsider = Netns::new("wg6x");
    let link = format!("px{}", random_suffix(4));
    veth(&outsider, "eth0", &cluster.underlay, &link);
    cluster
        .underlay
        .ok(&["ip", "link", "set", &link, "master", "br0"]);
    outsider.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        "fd00:1::99/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    let replays = cluster.dir.path().join("replays.hex");
    let out = Command::new(SCAPY_PYTHON)
        .args(["-c", TRANSPORT_PAYLOADS])
        .arg(pcap)
        .arg(&h1.ip6)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !out.stdout.is_empty(),
        "no transport message to h1 captured"
    );
    std::fs::write(&replays, &out.stdout).unwrap();
    let h1_key = h1.status()["wireguard"]["publicKey"]
        .as_str()
        .unwrap()
        .to_string();
    let before = h1.all_drops();
    let rcvbuf_before = udp6_rcvbuf_errors(&h1.ns);
    let pinger = spawn_in(
        pod1.0,
        &["ping", "-6", "-i", "0.05", "-c", "100", "-W", "1", &pod2.1],
        None,
    );
    let sent: u64 = outsider
        .ok(&[
            "python3",
            "-c",
            HOSTILE6,
            &h1.ip6,
            &port.to_string(),
            "3000",
            &h1_key,
            replays.to_str().unwrap(),
            "1000",
        ])
        .trim()
        .parse()
        .unwrap();
    assert_eq!(sent, 3000);
    let ping = pinger.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&ping.stdout).to_string();
    assert!(
        said.contains(" 0% packet loss") || said.contains(" 1% packet loss"),
        "the pods stopped talking under attack: {said}"
    );
    wait_for("h1 to count the attack", 20, || {
        let grew = h1.all_drops() - before;
        let kernel = udp6_rcvbuf_errors(&h1.ns) - rcvbuf_before;
        (grew + kernel >= sent)
            .then_some(())
            .ok_or_else(|| format!("{grew} + {kernel} of {sent}: {}", h1.status()["wireguard"]))
    });
    let st = h1.status();
    eprintln!(
        "outsider: {sent} datagrams; h1 {}",
        st["wireguard"]["drops"]
    );
    assert!(
        h1.drops(&["replay", "staleCounter"]) >= 900,
        "replays not counted: {}",
        st["wireguard"]
    );
    // Under the load, initiations are answered with a cookie, or refused for lacking the
    // cookie's MAC (badMac); random bytes are malformed.
    assert!(
        h1.drops(&["handshakeRejected", "unknownKey", "cookiesSent", "badMac"]) >= 900,
        "forged initiations not counted: {}",
        st["wireguard"]
    );
    assert!(
        h1.drops(&["malformed"]) >= 900,
        "random datagrams not counted: {}",
        st["wireguard"]
    );
    // The outsider never became a peer or an endpoint.
    assert!(
        st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["wireguard"]["endpoint"] == format!("[{}]:{port}", h2.ip6)),
        "{st}"
    );

    // A forged inner source from an authenticated peer: h2 (the node) sends pod1 pings from
    // an address of the pool outside its own subnet, through its WireGuard session.
    let forged = "fd00:10:244:ff::7";
    h2.ns.ok(&[
        "ip",
        "-6",
        "addr",
        "add",
        &format!("{forged}/128"),
        "dev",
        "lo",
        "nodad",
    ]);
    let seen = Capture::start(
        pod1.0,
        "eth0",
        cluster.dir.path().join("pod1.pcap"),
        &format!("ip6 src {forged}"),
    );
    let spoofed_before = h1.drops(&["spoofedInnerSource"]);
    let out = h2.ns.exec(&[
        "ping", "-6", "-c", "20", "-i", "0.05", "-W", "1", "-I", forged, &pod1.1,
    ]);
    assert!(
        !out.status.success(),
        "forged pings answered: {}",
        text(&out)
    );
    wait_for("h1 to count the spoofed packets", 20, || {
        let n = h1.drops(&["spoofedInnerSource"]) - spoofed_before;
        (n >= 20)
            .then_some(())
            .ok_or_else(|| format!("{n} counted: {}", h1.status()["wireguard"]))
    });
    let pcap = seen.stop();
    let out = Command::new("tcpdump")
        .args(["-nr"])
        .arg(&pcap)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, 0, "spoofed packets reached the pod: {}", text(&out));
    // The legitimate traffic still flows.
    assert!(pod1.0.ping(&pod2.1, 3) && pod2.0.ping(&pod1.1, 3));
}

/// Attaches a pod to each of h1 and h2; the pods' namespaces and IPv6 addresses.
fn pods(cluster: &Cluster) -> (Netns, Netns, String, String) {
    let (p1, p2) = (Netns::new("wg6p1"), Netns::new("wg6p2"));
    let a1 = cluster.node("h1").add_pod("pod1", &p1);
    let a2 = cluster.node("h2").add_pod("pod2", &p2);
    (p1, p2, a1, a2)
}

#[test]
#[ignore = "needs root"]
fn wireguard_backend_in_an_ipv6_only_cluster() {
    // Flannel's form, no Mode: flanneld's separate, whose only device (an IPv6-only
    // cluster's) listens on ListenPortV6, 51821 by default.
    let cluster = Cluster::up(
        "wg6o",
        "net-conf.json",
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"wireguard"}}"#,
        2,
    );
    let port = 51821;
    assert_ipv6_only_wireguard(&cluster, port);
    let (p1, p2, a1, a2) = pods(&cluster);
    assert!(a1.starts_with("fd00:10:244:") && a2.starts_with("fd00:10:244:"));
    let pods = [(&p1, a1), (&p2, a2)];
    wait_for("ping -6 between the pods", 20, || {
        (p1.ping(&pods[1].1, 1) && p2.ping(&pods[0].1, 1))
            .then_some(())
            .ok_or_else(|| {
                format!(
                    "h1: {}\nh2: {}\nlogs:\n{}\n{}",
                    cluster.node("h1").status(),
                    cluster.node("h2").status(),
                    cluster.node("h1").log(),
                    cluster.node("h2").log()
                )
            })
    });
    let (pcap, _) = wire_proof(&cluster, &pods, port);
    // Sessions over IPv6, both ways.
    for node in &cluster.nodes {
        let st = node.status();
        let peer = &st["peers"][0];
        assert!(
            peer["wireguard"]["lastHandshakeSecs"].is_u64(),
            "{}: {peer}",
            node.name
        );
        assert!(
            peer["counters"]["rxPackets"].as_u64().unwrap_or(0) > 0,
            "{}: {peer}",
            node.name
        );
    }
    attacks(&cluster, &pods, &pcap, port);
}

#[test]
#[ignore = "needs root"]
fn encrypted_vxlan_in_an_ipv6_only_cluster() {
    let cluster = Cluster::up(
        "wg6v",
        "cluster.yaml",
        "backend: vxlan\nwireguard: {enabled: true}\npools:\n  - {name: p6, cidr: 'fd00:10:244::/56', blockSize: 64}\n",
        2,
    );
    let port = 51820;
    assert_ipv6_only_wireguard(&cluster, port);
    // The IPv6 VTEP is there (peers must reach it), without the IPv4 one.
    for node in &cluster.nodes {
        assert!(node.ns.link("twill6.1").is_some(), "{}", node.name);
        assert!(node.ns.link("twill.1").is_none(), "{}", node.name);
        let neigh = node.ns.ip_json(&["-6", "neigh", "show", "dev", "twill6.1"]);
        assert_eq!(
            neigh,
            json!([]),
            "{}: the clear path stays empty",
            node.name
        );
    }
    let (p1, p2, a1, a2) = pods(&cluster);
    let pods = [(&p1, a1), (&p2, a2)];
    wait_for("ping -6 between the pods", 20, || {
        (p1.ping(&pods[1].1, 1) && p2.ping(&pods[0].1, 1))
            .then_some(())
            .ok_or_else(|| cluster.node("h1").status().to_string())
    });
    wire_proof(&cluster, &pods, port);
}
