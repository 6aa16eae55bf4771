//! udp and ipip in an IPv6-only cluster (issue 15), for real (root only): two nodes whose
//! underlay has no IPv4 address at all run the real `twill agent` against a real etcd (in a
//! namespace of its own, reached over IPv6), pods are attached by the real plugin binary, and
//! `ping -6` crosses from a pod on one node to a pod on the other through the userspace
//! tunnel. A capture of the underlay proves how: the pod's packet inside IPv6 UDP to the
//! tunnel port (udp) or right after an outer IPv6 header with next header 41 (ipip, as Linux's
//! `ip6tnl`), from one node's IPv6 underlay address to the other's, and no IPv4 frame at all.
//!
//! Then an attacker plays the underlay: packets forged from an address that is no peer's, and
//! from a real peer with inner sources outside its pod subnet, must not reach the pod (a
//! capture in the pod sees none of them), are counted by reason in the agent's status, and
//! legitimate traffic keeps flowing.
//!
//! Lab: namespaces `sw` (a bridge), `st` (etcd, fd00:77::100), `n1` and `n2` (the nodes,
//! fd00:77::1 and ::2), `x` (the attacker, fd00:77::3), all on the bridge; a pod per node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_testkit::{Background, Call, Cni, Netns, TempDir, random_suffix, require_root, veth};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");
const FORGE: &str = include_str!("ipv6_only_tunnel/forge.py");
const ETCD: &str = "fd00:77::100";
const X: &str = "fd00:77::3";
const UDP_PORT: u16 = 8285;
/// The payload pattern of the legitimate pings (`ping -p`), and of the forged packets.
const GOOD: &str = "5eed6011";
const BAD: &str = "bad0f00d";

/// Polls `f` until it holds or `secs` pass; panics with `what` and the last value seen.
fn wait_for<T: std::fmt::Debug>(what: &str, secs: u64, mut f: impl FnMut() -> (bool, T)) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (ok, seen) = f();
        if ok {
            return seen;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {secs} s; last seen: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node: its namespace, its agent, its data directory (node file, status) and a pod.
struct Node {
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

    /// A drop counter of the tunnel in the agent's status.
    fn drops(&self, reason: &str) -> u64 {
        self.status()["tunnel"]["drops"][reason]
            .as_u64()
            .unwrap_or(0)
    }

    /// Attaches `pod` with the real plugin (cluster mode: the agent's node file) and returns
    /// its IPv6 address.
    fn attach(&self, id: &str, pod: &Netns) -> String {
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": "twillnet",
            "type": "twill",
            "bridge": format!("tbr{}", random_suffix(5)),
            "dataDir": self.data,
        });
        let path = pod.path();
        let result = self
            .cni
            .call(&Call {
                plugin: "twill",
                command: "ADD",
                container_id: id,
                netns: Some(&path),
                ifname: "eth0",
                args: None,
                config: &conf,
                path: None,
            })
            .ok();
        let ips = result["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 1, "an IPv6-only pod has one address: {result}");
        let address = ips[0]["address"].as_str().unwrap();
        assert!(address.contains(':'), "{result}");
        address.split('/').next().unwrap().to_string()
    }
}

struct Cluster {
    nodes: Vec<Node>,
    x: Netns,
    _etcd: Background,
    dir: TempDir,
    // Namespaces drop last: their processes are killed with them.
    _st: Netns,
    _sw: Netns,
}

/// A namespace on the bridge with only an IPv6 address on its eth0 (no DAD: usable at once).
fn underlay_host(sw: &Netns, tag: &str, name: &str, ip6: &str) -> Netns {
    let ns = Netns::new(&format!("{tag}{name}"));
    let port = format!("{name}p{}", random_suffix(3));
    veth(&ns, "eth0", sw, &port);
    sw.ok(&["ip", "link", "set", &port, "master", "br0"]);
    ns.ok(&["sysctl", "-qw", "net.ipv6.conf.eth0.disable_ipv6=0"]);
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
    ns
}

fn spawn_logged(ns: &Netns, args: &[&str], log: &Path) -> Background {
    Background(
        Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Two IPv6-only nodes of a cluster with this Flannel backend, their agents in sync and each
/// programming the other through the tunnel.
fn cluster(tag: &str, backend: &str, path: &str) -> Cluster {
    require_root();
    let dir = TempDir::new(tag);
    let sw = Netns::new(&format!("{tag}sw"));
    sw.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    sw.ok(&["ip", "link", "set", "br0", "up"]);
    let st = underlay_host(&sw, tag, "st", ETCD);
    let x = underlay_host(&sw, tag, "x", X);
    let etcd_url = format!("http://[{ETCD}]:2379");
    let peer_url = "http://127.0.0.1:2380";
    let etcd_data = dir.path().join("etcd");
    let etcd = spawn_logged(
        &st,
        &[
            "etcd",
            "--name",
            "st",
            "--data-dir",
            etcd_data.to_str().unwrap(),
            "--listen-client-urls",
            &etcd_url,
            "--advertise-client-urls",
            &etcd_url,
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
            "--initial-cluster",
            &format!("st={peer_url}"),
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
        ],
        &dir.path().join("etcd.log"),
    );
    let store = format!("etcd://[{ETCD}]:2379");
    let mut nodes = Vec::new();
    for i in 1..=2 {
        let ip6 = format!("fd00:77::{i}");
        let ns = underlay_host(&sw, tag, &format!("n{i}"), &ip6);
        let (cni, cni_dir) = Cni::new(Path::new(TWILL), &ns);
        nodes.push(Node {
            ns,
            ip6,
            data: dir.path().join(format!("data{i}")),
            log: dir.path().join(format!("agent{i}.log")),
            agent: None,
            cni,
            _cni_dir: cni_dir,
        });
    }
    // etcd answers over the IPv6 underlay.
    let n1 = &nodes[0].ns;
    wait_for("etcd to answer over IPv6", 60, || {
        let out = n1.exec(&["etcdctl", "--endpoints", &etcd_url, "endpoint", "health"]);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    });
    let config = dir.path().join("net.json");
    std::fs::write(
        &config,
        json!({"EnableIPv4": false, "EnableIPv6": true, "IPv6Network": "fd00:10:244::/56",
               "Backend": {"Type": backend}})
        .to_string(),
    )
    .unwrap();
    let out = n1.exec(&[
        TWILL,
        "cluster",
        "init",
        "--store",
        &store,
        "-f",
        config.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains(&format!("IPv6-only, backend {backend}")),
        "{said}"
    );
    for (i, node) in nodes.iter_mut().enumerate() {
        let name = format!("n{}", i + 1);
        node.agent = Some(spawn_logged(
            &node.ns,
            &[
                TWILL,
                "agent",
                "--store",
                &store,
                "--node-name",
                &name,
                "--iface",
                "eth0",
                "--data-dir",
                node.data.to_str().unwrap(),
            ],
            &node.log,
        ));
    }
    for (i, node) in nodes.iter().enumerate() {
        let other = format!("n{}", 2 - i);
        wait_for(
            &format!("n{} in sync, programming {other} through the tunnel", i + 1),
            60,
            || {
                let s = node.status();
                let peer = s["peers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["node"] == other.as_str())
                    .cloned();
                let ok = s["inSync"] == true
                    && peer.as_ref().is_some_and(|p| {
                        p["path"]["via"] == path
                            && p["path6"]["via"] == path
                            && p["programmed"] == true
                    });
                (ok, format!("status {s}\nlog:\n{}", node.log()))
            },
        );
    }
    Cluster {
        nodes,
        x,
        _etcd: etcd,
        dir,
        _st: st,
        _sw: sw,
    }
}

/// The frames of a pcap file as tcpdump -w writes it here (microsecond format, host byte
/// order, little-endian); a record still being written is left out.
fn pcap_frames(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).unwrap_or_default();
    if b.len() < 24 || b[..4] != 0xa1b2_c3d4u32.to_le_bytes() {
        return Vec::new();
    }
    let mut frames = Vec::new();
    let mut at = 24;
    while at + 16 <= b.len() {
        let caplen = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap()) as usize;
        at += 16;
        let Some(frame) = b.get(at..at + caplen) else {
            break;
        };
        frames.push(frame.to_vec());
        at += caplen;
    }
    frames
}

fn capture(ns: &Netns, dev: &str, file: &Path, filter: &str) -> Background {
    ns.spawn(&[
        "tcpdump",
        "--immediate-mode",
        "-U",
        "-n",
        "-s",
        "0",
        "-i",
        dev,
        "-w",
        file.to_str().unwrap(),
        filter,
    ])
}

fn addr6(s: &str) -> [u8; 16] {
    s.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

/// `ip` is an ICMPv6 echo request (from `src`, if given) to `dst` whose payload carries
/// `pattern`.
fn is_echo(ip: &[u8], src: Option<&str>, dst: &str, pattern: &str) -> bool {
    let marker: Vec<u8> = (0..pattern.len() / 2)
        .map(|i| u8::from_str_radix(&pattern[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    ip.len() > 48
        && ip[0] >> 4 == 6
        && ip[6] == 58
        && ip[40] == 128
        && src.is_none_or(|src| ip[8..24] == addr6(src))
        && ip[24..40] == addr6(dst)
        && ip[48..].windows(marker.len()).any(|w| w == marker)
}

/// What the underlay capture shows: tunnelled echo requests of pod a to pod b (outer source
/// and destination, for each), the same packets in the clear, and IPv4 frames.
#[derive(Debug, Default)]
struct Wire {
    tunnelled: Vec<(String, String)>,
    clear: usize,
    ipv4_frames: usize,
}

fn read_wire(file: &Path, ipip: bool, pod_a: &str, pod_b: &str) -> Wire {
    let mut wire = Wire::default();
    for f in pcap_frames(file) {
        if f.len() < 14 {
            continue;
        }
        match [f[12], f[13]] {
            [0x08, 0x00] | [0x08, 0x06] => wire.ipv4_frames += 1,
            [0x86, 0xdd] if f.len() >= 54 => {
                let outer = &f[14..];
                if is_echo(outer, Some(pod_a), pod_b, GOOD) {
                    wire.clear += 1;
                    continue;
                }
                let body = &outer[40..];
                let inner = match outer[6] {
                    41 if ipip => body,
                    17 if !ipip && body.len() > 8 && body[2..4] == UDP_PORT.to_be_bytes() => {
                        &body[8..]
                    }
                    _ => continue,
                };
                if is_echo(inner, Some(pod_a), pod_b, GOOD) {
                    let ip = |b: &[u8]| {
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b).unwrap()).to_string()
                    };
                    wire.tunnelled.push((ip(&outer[8..24]), ip(&outer[24..40])));
                }
            }
            _ => {}
        }
    }
    wire
}

fn ping6(pod: &Netns, dst: &str) -> bool {
    pod.exec(&["ping", "-6", "-c", "1", "-W", "1", "-p", GOOD, dst])
        .status
        .success()
}

/// Sends a forged tunnel packet from `from` (whose address is `src`) to n2.
fn forge(from: &Netns, ipip: bool, src: &str, inner_src: &str, inner_dst: &str) {
    let port = UDP_PORT.to_string();
    let mode = if ipip { "ipip" } else { "udp" };
    from.ok(&[
        "python3",
        "-c",
        FORGE,
        mode,
        src,
        "fd00:77::2",
        &port,
        inner_src,
        inner_dst,
        BAD,
    ]);
}

fn pods_talk_over_the_ipv6_underlay_and_forgeries_are_dropped(backend: &str, tag: &str) {
    let ipip = backend == "ipip";
    let c = cluster(tag, backend, backend);
    let (n1, n2) = (&c.nodes[0], &c.nodes[1]);
    // The tunnel device, with the MTU of an IPv6 outer header, and no IPv4 anywhere.
    let mtu = if ipip { 1500 - 40 } else { 1500 - 48 };
    for n in [n1, n2] {
        let tun = n.ns.link("twill.tun").expect("twill.tun");
        assert_eq!(tun["mtu"], mtu, "{tun}");
        assert!(n.ns.addresses("eth0").iter().all(|a| a.contains(':')));
        let s = n.status();
        assert!(
            s.get("subnet").is_none() && s.get("publicIp").is_none(),
            "{s}"
        );
        assert_eq!(s["tunnel"]["device"], "twill.tun", "{s}");
    }
    // `twill status` shows the node and its tunnelled peer.
    let out = n2
        .ns
        .exec(&[TWILL, "status", "--data-dir", n2.data.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        said.contains(&format!("node n2  IPv6-only  backend {backend}")),
        "{said}"
    );
    assert!(said.contains("n1"), "{said}");
    let pod_a = Netns::new(&format!("{tag}pa"));
    let pod_b = Netns::new(&format!("{tag}pb"));
    let a6 = n1.attach("pod-a", &pod_a);
    let b6 = n2.attach("pod-b", &pod_b);
    assert_eq!(pod_a.link("eth0").unwrap()["mtu"], mtu);
    // n2's route to n1's pods goes into the tunnel.
    let subnet1 = n1.status()["subnet6"].as_str().unwrap().to_string();
    let routes = n2.ns.ip_json(&["-6", "route", "show", &subnet1]);
    assert_eq!(routes[0]["dev"], "twill.tun", "{routes}");

    // Pod to pod, and what the underlay carried.
    let under = c.dir.path().join("underlay.pcap");
    let _cap = capture(&n2.ns, "eth0", &under, "");
    let wire = wait_for(
        "ping -6 pod a -> pod b, seen tunnelled on the underlay",
        60,
        || {
            let ok = ping6(&pod_a, &b6);
            let wire = read_wire(&under, ipip, &a6, &b6);
            (ok && wire.tunnelled.len() >= 3, wire)
        },
    );
    for (src, dst) in &wire.tunnelled {
        assert_eq!(
            (src.as_str(), dst.as_str()),
            (n1.ip6.as_str(), n2.ip6.as_str())
        );
    }
    assert_eq!(wire.clear, 0, "pod packets in the clear: {wire:?}");
    assert_eq!(wire.ipv4_frames, 0, "IPv4 on the underlay: {wire:?}");
    assert!(ping6(&pod_b, &a6), "pod b -> pod a");
    wait_for("the tunnel counters of n1 in n2's status", 30, || {
        let s = n2.status();
        let rx = s["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["node"] == "n1")
            .map_or(0, |p| p["counters"]["rxPackets"].as_u64().unwrap_or(0));
        (rx >= 3, s)
    });

    // The attacks, while pod b's own capture proves what reaches it: first a legitimate ping
    // shows the capture is live.
    let in_pod = c.dir.path().join("pod.pcap");
    let _pod_cap = capture(&pod_b, "eth0", &in_pod, "icmp6");
    // Echo requests to pod b with `pattern` (from `src`, if given) in its capture.
    let seen = |pattern: &str, src: Option<&str>| {
        pcap_frames(&in_pod)
            .iter()
            .filter(|f| f.len() > 14 && f[12..14] == [0x86, 0xdd])
            .filter(|f| is_echo(&f[14..], src, &b6, pattern))
            .count()
    };
    wait_for("pod b's capture to see pod a's ping", 30, || {
        let ok = ping6(&pod_a, &b6);
        (ok && seen(GOOD, Some(&a6)) > 0, seen(GOOD, None))
    });
    let (unknown0, spoofed0) = (n2.drops("unknownPeer"), n2.drops("spoofedInnerSource"));
    // A host that is no peer, with a plausible inner packet (pod a to pod b).
    forge(&c.x, ipip, X, &a6, &b6);
    // The real peer n1 with inner sources outside its pod subnet: a third node's pods, pod b's
    // own neighbour, and n1's underlay address.
    let subnet2 = n2.status()["subnet6"].as_str().unwrap().to_string();
    let neighbour_of_b = format!("{}ff", subnet2.split('/').next().unwrap());
    for inner_src in ["fd00:10:244:ee::5", &neighbour_of_b, &n1.ip6] {
        forge(&n1.ns, ipip, &n1.ip6, inner_src, &b6);
    }
    wait_for("n2 to count the forgeries by reason", 30, || {
        let (unknown, spoofed) = (n2.drops("unknownPeer"), n2.drops("spoofedInnerSource"));
        (
            unknown > unknown0 && spoofed >= spoofed0 + 3,
            (unknown, spoofed, n2.status()["tunnel"].clone()),
        )
    });
    // Legitimate traffic still flows, and after it nothing forged reached pod b.
    wait_for("pod a -> pod b after the attacks", 30, || {
        (ping6(&pod_a, &b6), ())
    });
    assert_eq!(seen(BAD, None), 0, "a forged packet reached pod b");
    assert!(seen(GOOD, Some(&a6)) >= 2);
    eprintln!(
        "{backend}: underlay {wire:?}; pod b saw {} good echo requests; n2's tunnel {}",
        seen(GOOD, Some(&a6)),
        n2.status()["tunnel"]
    );
}

#[test]
#[ignore = "needs root"]
fn udp_in_an_ipv6_only_cluster() {
    pods_talk_over_the_ipv6_underlay_and_forgeries_are_dropped("udp", "t6u");
}

#[test]
#[ignore = "needs root"]
fn ipip_in_an_ipv6_only_cluster() {
    pods_talk_over_the_ipv6_underlay_and_forgeries_are_dropped("ipip", "t6i");
}
