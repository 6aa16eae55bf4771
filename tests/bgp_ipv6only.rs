//! BGP without IPv4 and without IPv6 underlays (issue 15), with real agents, real etcd, real
//! BIRD 2 and pods attached by the real plugin, in network namespaces built here (the lab
//! does not build IPv6-only clusters yet). Root only (`--include-ignored`).
//!
//! - Two nodes of an IPv6-only cluster (no IPv4 address on their underlay, etcd reached over
//!   IPv6) route by BGP through BIRD as their route reflector over IPv6 sessions: BIRD learns
//!   both nodes' IPv6 subnets and sees their router IDs hashed from their node names, each
//!   node's kernel holds the other's subnet via its IPv6 underlay address (protocol 117),
//!   and pods ping each other over IPv6; no pod reaches a node's BGP port.
//! - The same nodes in the default full mesh (twill to twill over IPv6), with BIRD as an
//!   eBGP top-of-rack router by IPv6 address: it learns both subnets, and its own prefix is
//!   installed by both nodes.
//! - A dual-stack node without an IPv6 underlay address sends its IPv6 subnet over its IPv4
//!   session with an IPv4-mapped next hop and its link-local one; its peer routes to it by
//!   the link-local one, it routes to the peer by the peer's IPv6 address, and pods of the
//!   two ping each other over IPv6. BIRD, as an IPv4-only eBGP router with `extended next
//!   hop` on its IPv6 channel, takes that subnet via the node's IPv4 address (without it,
//!   BIRD treats those routes as withdrawn: it reads the mapped address as an IPv4 one).
//!
//! Every namespace is made here with a unique name and removed (its processes killed) on
//! drop, pass or fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use twill_testkit::{Background, Call, Cni, Netns, TempDir, require_root, veth};

mod bgp_common;
use bgp_common::{TWILL, bird_peer6};

/// Generous bounds: a loaded 2-core machine, agents that lease, peer and program.
const T60: Duration = Duration::from_secs(60);

/// Polls `f` until it gives a value or `timeout` passes; the failure says what was last
/// seen (`seen` is called then).
#[track_caller]
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    seen: impl Fn() -> String,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}; last seen:\n{}",
            seen()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One node: its namespace, its agent, its data dir and the plugin's CNI_PATH.
struct Node {
    name: String,
    ns: Netns,
    data: TempDir,
    log: PathBuf,
    cni: Cni,
    _cni_dir: TempDir,
    _agent: Option<Background>,
}

impl Node {
    /// A host namespace with `eth0` on the switch's bridge (port `port`), no address yet.
    fn new(name: &str, tag: &str, sw: &Netns, port: &str) -> Node {
        let ns = Netns::new(&format!("{tag}{name}"));
        veth(&ns, "eth0", sw, port);
        sw.ok(&["ip", "link", "set", port, "master", "br0"]);
        let (cni, cni_dir) = Cni::new(Path::new(TWILL), &ns);
        let data = TempDir::new(&format!("{tag}{name}"));
        let log = data.path().join("agent.log");
        Node {
            name: name.into(),
            ns,
            data,
            log,
            cni,
            _cni_dir: cni_dir,
            _agent: None,
        }
    }

    fn start_agent(&mut self, store: &str) {
        let data_dir = self.data.path().join("data");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                self.ns.name(),
                TWILL,
                "agent",
                "--store",
                store,
            ])
            .args(["--node-name", &self.name, "--iface", "eth0", "--data-dir"])
            .arg(&data_dir)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        self._agent = Some(Background(child));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let text =
            std::fs::read_to_string(self.data.path().join("data/status.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// The node's IPv6 pod subnet, once its agent is in sync.
    fn subnet6(&self) -> String {
        wait_for(
            &format!("{}'s agent in sync with an IPv6 subnet", self.name),
            T60,
            || {
                let s = self.status();
                (s["inSync"] == true)
                    .then(|| s["subnet6"].as_str().map(str::to_string))
                    .flatten()
            },
            || format!("status {}\nlog:\n{}", self.status(), self.log()),
        )
    }

    /// `ip -6 route show proto 117`: (destination, gateway, device).
    fn twill_routes6(&self) -> Vec<(String, String, String)> {
        let v = self.ns.ip_json(&["-6", "route", "show", "proto", "117"]);
        let field = |r: &Value, key: &str| r[key].as_str().unwrap_or("").to_string();
        v.as_array()
            .into_iter()
            .flatten()
            .map(|r| (field(r, "dst"), field(r, "gateway"), field(r, "dev")))
            .collect()
    }

    /// Waits for the kernel route to `dst` that the agent installed from BGP; its gateway.
    fn bgp_route6(&self, dst: &str) -> String {
        wait_for(
            &format!("{}'s BGP route to {dst}", self.name),
            T60,
            || {
                self.twill_routes6()
                    .into_iter()
                    .find(|(d, _, dev)| d == dst && dev == "eth0")
                    .map(|(_, gw, _)| gw)
            },
            || format!("{:?}\nlog:\n{}", self.twill_routes6(), self.log()),
        )
    }

    /// Attaches a pod by the real plugin in cluster mode; its IPv6 address.
    fn pod(&self, id: &str, pod: &Netns) -> String {
        let conf = json!({
            "cniVersion": "1.1.0",
            "name": "bgp6",
            "type": "twill",
            "dataDir": self.data.path().join("data"),
        });
        let path = pod.path();
        let out = self.cni.call(&Call {
            plugin: "twill",
            command: "ADD",
            container_id: id,
            netns: Some(&path),
            ifname: "eth0",
            args: None,
            config: &conf,
            path: None,
        });
        let result = out.ok();
        result["ips"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|ip| ip["address"].as_str())
            .find(|a| a.contains(':'))
            .unwrap_or_else(|| panic!("no IPv6 address: {result}"))
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }
}

/// The switch: a namespace with bridge `br0` holding `address` (the store's, etcd runs
/// here on it).
fn switch(tag: &str, address: &str) -> Netns {
    let sw = Netns::new(&format!("{tag}sw"));
    sw.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    sw.ok(&["ip", "link", "set", "br0", "up"]);
    let mut add = vec!["ip", "addr", "add", address, "dev", "br0"];
    if address.contains(':') {
        add.push("nodad");
    }
    sw.ok(&add);
    sw
}

/// etcd in `sw`, serving clients at `client` (a URL), with its data in `dir`.
fn etcd(sw: &Netns, client: &str, dir: &Path) -> Background {
    let data = dir.join("etcd");
    let peer = "http://127.0.0.1:2380";
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            sw.name(),
            "etcd",
            "--name",
            "t",
            "--data-dir",
        ])
        .arg(&data)
        .args([
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
        ])
        .args([
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
        ])
        .args(["--initial-cluster", &format!("t={peer}")])
        .args(["--listen-metrics-urls", "http://127.0.0.1:2381"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd.log")).unwrap())
        .spawn()
        .unwrap();
    Background(child)
}

/// BIRD in a namespace of its own on the switch's bridge (port `port`), at `address`.
struct Bird {
    /// Kept for BIRD's life: dropping it ends BIRD and its link.
    _ns: Netns,
    sock: PathBuf,
    _bird: Background,
}

impl Bird {
    /// Starts BIRD with router ID `router_id` (given: BIRD cannot take one from an IPv6-only
    /// namespace) and the protocols of `body`, its files in `dir`.
    fn start(
        tag: &str,
        sw: &Netns,
        address: &str,
        dir: &Path,
        router_id: &str,
        body: &str,
    ) -> Bird {
        let ns = Netns::new(&format!("{tag}rr"));
        veth(&ns, "eth0", sw, "prr");
        sw.ok(&["ip", "link", "set", "prr", "master", "br0"]);
        let mut add = vec!["ip", "addr", "add", address, "dev", "eth0"];
        if address.contains(':') {
            add.push("nodad");
        }
        ns.ok(&add);
        let conf = format!("router id {router_id};\nprotocol device {{ scan time 1; }}\n{body}");
        let conf_path = dir.join("bird.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let sock = dir.join("bird.ctl");
        let pid = dir.join("bird.pid");
        let bird = ns.spawn(&[
            "bird",
            "-f",
            "-c",
            conf_path.to_str().unwrap(),
            "-s",
            sock.to_str().unwrap(),
            "-P",
            pid.to_str().unwrap(),
        ]);
        Bird {
            _ns: ns,
            sock,
            _bird: bird,
        }
    }

    /// `birdc -s SOCKET ARGS`: its output.
    fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.sock)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// `twill cluster init` from `node` (retried while etcd starts).
fn cluster_init(node: &Node, store: &str, yaml: &str) {
    let file = node.data.path().join("cluster.yaml");
    std::fs::write(&file, yaml).unwrap();
    let file = file.to_str().unwrap();
    let start = Instant::now();
    loop {
        let out = node
            .ns
            .exec(&[TWILL, "cluster", "init", "--store", store, "-f", file]);
        if out.status.success() {
            return;
        }
        assert!(
            start.elapsed() < T60,
            "cluster init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Nodes h1 (fd00:1::11) and h2 (fd00:1::12) on the switch, with no IPv4 address on their
/// underlay links.
fn ipv6_only_nodes(tag: &str, sw: &Netns) -> Vec<Node> {
    let nodes: Vec<Node> = [("h1", "fd00:1::11"), ("h2", "fd00:1::12")]
        .into_iter()
        .enumerate()
        .map(|(i, (name, ip))| {
            let n = Node::new(name, tag, sw, &format!("p{}", i + 1));
            let address = format!("{ip}/64");
            n.ns.ok(&["ip", "addr", "add", &address, "dev", "eth0", "nodad"]);
            n
        })
        .collect();
    for n in &nodes {
        let v4 = n.ns.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
        assert!(
            v4.as_array()
                .unwrap()
                .iter()
                .all(|l| l["addr_info"].as_array().is_none_or(Vec::is_empty)),
            "{v4}"
        );
    }
    nodes
}

/// Whether `birdc show route` output has `prefix` from protocol `proto` via `via`.
fn bird_route(routes: &str, prefix: &str, proto: &str, via: &str) -> bool {
    // `PREFIX  unicast [PROTOCOL ...]`, then `\tvia ADDRESS on eth0`.
    let lines: Vec<&str> = routes.lines().collect();
    lines.windows(2).any(|w| {
        w[0].starts_with(&format!("{prefix} "))
            && w[0].contains(&format!("[{proto} "))
            && w[1].trim_start().starts_with(&format!("via {via} "))
    })
}

#[test]
#[ignore = "needs root"]
fn ipv6_only_nodes_route_pods_by_bgp_through_bird() {
    require_root();
    let tag = "b6o";
    let dir = TempDir::new("b6o");
    let sw = switch(tag, "fd00:1::100/64");
    let _etcd = etcd(&sw, "http://[fd00:1::100]:2379", dir.path());
    let store = "etcd://[fd00:1::100]:2379";

    // BIRD: the route reflector of both nodes, over IPv6 only (its namespace has no IPv4,
    // so its router ID is given, as BIRD requires there).
    let mut body = String::new();
    for (name, ip) in [("h1", "fd00:1::11"), ("h2", "fd00:1::12")] {
        body += &bird_peer6(name, "fd00:1::1", 64512, ip, 64512, "rr client;");
    }
    let bird = Bird::start(tag, &sw, "fd00:1::1/64", dir.path(), "10.255.0.1", &body);
    let birdc = |args: &[&str]| bird.birdc(args);

    let mut nodes = ipv6_only_nodes(tag, &sw);
    // Not a mesh: BIRD reflects every route, so each node's kernel route comes through it.
    cluster_init(
        &nodes[0],
        store,
        "backend: bgp\npools:\n  - {name: pods6, cidr: \"fd00:10:244::/56\"}\n\
         bgp:\n  nodeToNodeMesh: false\n  peers:\n    - {address: \"fd00:1::1\", asNumber: 64512}\n",
    );
    for n in &mut nodes {
        n.start_agent(store);
    }
    let subnets: Vec<String> = nodes.iter().map(Node::subnet6).collect();
    assert_ne!(subnets[0], subnets[1]);

    // Each kernel routes the other's subnet via its IPv6 underlay address, learned by BGP.
    assert_eq!(nodes[0].bgp_route6(&subnets[1]), "fd00:1::12");
    assert_eq!(nodes[1].bgp_route6(&subnets[0]), "fd00:1::11");
    // BIRD has both subnets, from the nodes' IPv6 addresses, and their hashed router IDs.
    let routes = birdc(&["show", "route"]);
    for ((subnet, via), node) in subnets
        .iter()
        .zip(["fd00:1::11", "fd00:1::12"])
        .zip(["h1", "h2"])
    {
        assert!(
            bird_route(&routes, subnet, node, via),
            "BIRD lacks {subnet} from {node} via {via}:\n{routes}"
        );
    }
    for n in &nodes {
        let proto = birdc(&["show", "protocols", "all", &n.name]);
        let id = twill_types::cluster::hashed_router_id(&n.name).to_string();
        assert!(
            proto.contains("Established") && proto.contains(&format!("Neighbor ID:      {id}")),
            "{proto}"
        );
        // The agent says the same (its status file follows within a second or so): one
        // session, with BIRD, up.
        let status = wait_for(
            &format!("{}'s status to show its session with BIRD", n.name),
            T60,
            || {
                let status = n.status();
                let up = status["bgp"]["peers"]
                    .as_array()?
                    .iter()
                    .any(|p| p["state"] == "Established");
                up.then_some(status)
            },
            || format!("{}", n.status()),
        );
        assert_eq!(status["bgp"]["routerId"], id.as_str(), "{status}");
        let peers = status["bgp"]["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 1, "{status}");
        assert_eq!(peers[0]["address"], "fd00:1::1", "{status}");
    }
    // Only IPv6 BGP sockets: nothing listens or connects on BGP's port over IPv4.
    for n in &nodes {
        let ss = n.ns.ok(&[
            "ss",
            "-Htn4",
            "state",
            "all",
            "( sport = :179 or dport = :179 )",
        ]);
        assert!(ss.trim().is_empty(), "IPv4 TCP in {}: {ss}", n.name);
    }

    // Pods of the two nodes, attached by the plugin, ping each other over IPv6.
    let (pa, pb) = (
        Netns::new(&format!("{tag}pa")),
        Netns::new(&format!("{tag}pb")),
    );
    let a6 = nodes[0].pod("pod-a", &pa);
    let b6 = nodes[1].pod("pod-b", &pb);
    assert!(
        a6.starts_with(subnets[0].split("::").next().unwrap()),
        "{a6}"
    );
    wait_for(
        "pod-a to ping pod-b over IPv6",
        T60,
        || pa.ping(&b6, 1).then_some(()),
        || format!("{:?}", nodes[0].twill_routes6()),
    );
    assert!(pb.ping(&a6, 3), "pod-b to pod-a");

    // A pod reaches no node's BGP port over IPv6 (its own node's, or the other's), while
    // the sessions stay up and pods still talk.
    for target in ["fd00:1::11", "fd00:1::12"] {
        let probe = format!("exec 3<>/dev/tcp/{target}/179");
        let out = pa.exec(&["timeout", "3", "bash", "-c", &probe]);
        assert!(!out.status.success(), "pod-a connected to {target}:179");
    }
    // The probe itself works: from the other node the port answers.
    let out = nodes[1].ns.exec(&[
        "timeout",
        "3",
        "bash",
        "-c",
        "exec 3<>/dev/tcp/fd00:1::11/179",
    ]);
    assert!(out.status.success(), "h2 to h1:179: {out:?}");
    for n in &nodes {
        let proto = birdc(&["show", "protocols", &n.name]);
        assert!(proto.contains("Established"), "{proto}");
    }
    assert!(pa.ping(&b6, 3), "pod-a to pod-b after the probes");
}

/// The default full mesh between IPv6-only nodes (twill to twill over IPv6, both ends with
/// hashed router IDs), with BIRD as an eBGP top-of-rack router by IPv6 address: it learns
/// both subnets and announces a prefix of its own, which both kernels install.
#[test]
#[ignore = "needs root"]
fn ipv6_only_mesh_with_bird_as_top_of_rack() {
    require_root();
    let tag = "b6m";
    let dir = TempDir::new("b6m");
    let sw = switch(tag, "fd00:1::100/64");
    let _etcd = etcd(&sw, "http://[fd00:1::100]:2379", dir.path());
    let store = "etcd://[fd00:1::100]:2379";
    let mut body = "protocol static own6 { ipv6; route fd00:99::/64 unreachable; }\n".to_string();
    for (name, ip) in [("h1", "fd00:1::11"), ("h2", "fd00:1::12")] {
        body += &bird_peer6(name, "fd00:1::1", 65000, ip, 64512, "");
    }
    let bird = Bird::start(tag, &sw, "fd00:1::1/64", dir.path(), "10.255.0.1", &body);
    let mut nodes = ipv6_only_nodes(tag, &sw);
    cluster_init(
        &nodes[0],
        store,
        "pools:\n  - {name: pods6, cidr: \"fd00:10:244::/56\"}\n\
         bgp:\n  peers:\n    - {address: \"fd00:1::1\", asNumber: 65000}\n",
    );
    for n in &mut nodes {
        n.start_agent(store);
    }
    let subnets: Vec<String> = nodes.iter().map(Node::subnet6).collect();
    // The mesh: each node routes the other's subnet via its address; BIRD's own prefix
    // via BIRD.
    assert_eq!(nodes[0].bgp_route6(&subnets[1]), "fd00:1::12");
    assert_eq!(nodes[1].bgp_route6(&subnets[0]), "fd00:1::11");
    for n in &nodes {
        assert_eq!(n.bgp_route6("fd00:99::/64"), "fd00:1::1");
        // Both sessions up: the mesh and the router (BIRD may pass a node's route on with
        // its next hop unchanged before the mesh session is up, so the route alone does
        // not show it).
        let other = if n.name == "h1" {
            "fd00:1::12"
        } else {
            "fd00:1::11"
        };
        wait_for(
            &format!("{}'s sessions with BIRD and {other}", n.name),
            T60,
            || {
                let status = n.status();
                let mut up: Vec<String> = status["bgp"]["peers"]
                    .as_array()?
                    .iter()
                    .filter(|p| p["state"] == "Established")
                    .filter_map(|p| p["address"].as_str().map(str::to_string))
                    .collect();
                up.sort_unstable();
                (up == ["fd00:1::1", other]).then_some(())
            },
            || format!("{}\nlog:\n{}", n.status(), n.log()),
        );
    }
    let routes = wait_for(
        "BIRD to learn both subnets",
        T60,
        || {
            // Per session: each node re-advertises the other's subnet too (eBGP, next hop
            // self), so BIRD's best path may be either; each node's own must be there.
            let from = |node: &str| bird.birdc(&["show", "route", "protocol", node]);
            let (h1, h2) = (from("h1"), from("h2"));
            let both = bird_route(&h1, &subnets[0], "h1", "fd00:1::11")
                && bird_route(&h2, &subnets[1], "h2", "fd00:1::12");
            both.then_some(h1 + &h2)
        },
        || bird.birdc(&["show", "route", "all"]),
    );
    assert!(routes.contains("[AS64512i]"), "{routes}");

    let (pa, pb) = (
        Netns::new(&format!("{tag}pa")),
        Netns::new(&format!("{tag}pb")),
    );
    let a6 = nodes[0].pod("pod-a", &pa);
    let b6 = nodes[1].pod("pod-b", &pb);
    wait_for(
        "pod-a to ping pod-b over IPv6",
        T60,
        || pa.ping(&b6, 1).then_some(()),
        || format!("{:?}", nodes[0].twill_routes6()),
    );
    assert!(pb.ping(&a6, 3), "pod-b to pod-a");
}

#[test]
#[ignore = "needs root"]
fn a_dual_stack_node_without_an_ipv6_underlay_is_reached_by_its_link_local_address() {
    require_root();
    let tag = "b4m";
    let dir = TempDir::new("b4m");
    let sw = switch(tag, "192.168.77.100/24");
    let _etcd = etcd(&sw, "http://192.168.77.100:2379", dir.path());
    let store = "etcd://192.168.77.100:2379";
    // h3: IPv4 underlay only; h4: both.
    let mut nodes: Vec<Node> = ["h3", "h4"]
        .into_iter()
        .enumerate()
        .map(|(i, name)| Node::new(name, tag, &sw, &format!("p{}", i + 1)))
        .collect();
    nodes[0]
        .ns
        .ok(&["ip", "addr", "add", "192.168.77.13/24", "dev", "eth0"]);
    nodes[1]
        .ns
        .ok(&["ip", "addr", "add", "192.168.77.14/24", "dev", "eth0"]);
    nodes[1].ns.ok(&[
        "ip",
        "addr",
        "add",
        "fd00:77::14/64",
        "dev",
        "eth0",
        "nodad",
    ]);
    // h3's link-local address, once out of duplicate address detection: what h4 routes to.
    let h3_link_local = wait_for(
        "h3's link-local address",
        T60,
        || {
            let v = nodes[0].ns.ip_json(&["-6", "addr", "show", "dev", "eth0"]);
            v[0]["addr_info"].as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["scope"] == "link" && x.get("tentative").is_none())
                    .and_then(|x| x["local"].as_str().map(str::to_string))
            })
        },
        || format!("{}", nodes[0].ns.ip_json(&["-6", "addr"])),
    );
    // BIRD as an eBGP router with only IPv4 on the link too, peering with h3 over IPv4 for
    // both families.
    let body = "protocol bgp h3 {\n  local 192.168.77.1 as 65000;\n  neighbor 192.168.77.13 as 64512;\n  \
         hold time 3; connect retry time 1; connect delay time 1; error wait time 1, 2;\n  \
         direct;\n  ipv4 { import all; export none; };\n  ipv6 { import all; export none; extended next hop on; };\n}\n";
    let bird = Bird::start(
        tag,
        &sw,
        "192.168.77.1/24",
        dir.path(),
        "192.168.77.1",
        body,
    );
    cluster_init(
        &nodes[0],
        store,
        "backend: bgp\npools:\n  - {name: pods, cidr: 10.244.0.0/16}\n  - {name: pods6, cidr: \"fd00:10:244::/56\"}\n\
         bgp:\n  peers:\n    - {address: 192.168.77.1, asNumber: 65000, node: h3}\n",
    );
    for n in &mut nodes {
        n.start_agent(store);
    }
    let subnets: Vec<String> = nodes.iter().map(Node::subnet6).collect();
    // h4 reaches h3's subnet by h3's link-local address (the IPv4-mapped global next hop
    // has no kernel route); h3 reaches h4's by h4's IPv6 address, on the link.
    assert_eq!(nodes[1].bgp_route6(&subnets[0]), h3_link_local);
    assert_eq!(nodes[0].bgp_route6(&subnets[1]), "fd00:77::14");
    // Over the one session there is, IPv4, h3 sent its IPv4 address mapped as the global
    // next hop, as BIRD sends it (the status file follows the kernel within a second or so).
    let h4 = &nodes[1];
    let status = wait_for(
        "h4's status to show h3's IPv6 route",
        T60,
        || {
            let status = h4.status();
            let from_h3 = status["bgp"]["routes"]
                .as_array()?
                .iter()
                .any(|r| r["prefix"] == subnets[0].as_str());
            from_h3.then_some(status)
        },
        || format!("{}", h4.status()),
    );
    let peers = status["bgp"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{status}");
    assert_eq!(peers[0]["address"], "192.168.77.13", "{status}");
    let from_h3 = status["bgp"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["prefix"] == subnets[0].as_str())
        .unwrap();
    assert_eq!(from_h3["nextHop"], "::ffff:192.168.77.13", "{status}");
    // BIRD, told that IPv6 routes may have IPv4 next hops (`extended next hop`, RFC 4798's
    // IPv4-mapped form for IPv6), takes h3's IPv6 subnet via h3's IPv4 address.
    let bird_has = || {
        let routes = bird.birdc(&["show", "route", "table", "master6"]);
        let lines: Vec<&str> = routes.lines().collect();
        lines
            .windows(2)
            .any(|w| {
                w[0].starts_with(&format!("{} ", subnets[0]))
                    && w[1].trim_start().starts_with("via 192.168.77.13 ")
            })
            .then_some(())
    };
    wait_for("BIRD to learn h3's IPv6 subnet", T60, bird_has, || {
        bird.birdc(&["show", "route", "all"]) + &bird.birdc(&["show", "protocols", "all", "h3"])
    });

    let (pa, pb) = (
        Netns::new(&format!("{tag}pa")),
        Netns::new(&format!("{tag}pb")),
    );
    let a6 = nodes[0].pod("pod-a", &pa);
    let b6 = nodes[1].pod("pod-b", &pb);
    wait_for(
        "pod-a to ping pod-b over IPv6",
        T60,
        || pa.ping(&b6, 1).then_some(()),
        || {
            format!(
                "{:?} / {:?}",
                nodes[0].twill_routes6(),
                nodes[1].twill_routes6()
            )
        },
    );
    assert!(pb.ping(&a6, 3), "pod-b to pod-a");
}

/// `twill bgp peer add` refuses an IPv4 router for an IPv6-only cluster (no node could reach
/// it) and stores an IPv6 one. No root: an embedded store in a temporary directory.
#[test]
fn bgp_peer_add_takes_only_ipv6_routers_in_an_ipv6_only_cluster() {
    let dir = TempDir::new("b6cli");
    let store = format!("embedded:{}", dir.path().join("store.redb").display());
    let file = dir.path().join("cluster.yaml");
    std::fs::write(
        &file,
        "pools:\n  - {name: pods6, cidr: \"fd00:10:244::/56\"}\nbgp: {}\n",
    )
    .unwrap();
    let twill = |args: &[&str]| Command::new(TWILL).args(args).output().unwrap();
    let file = file.to_str().unwrap();
    let out = twill(&[
        "cluster",
        "init",
        "--store",
        &store,
        "-f",
        file,
        "--allow-overlap",
    ]);
    assert!(out.status.success(), "{out:?}");
    let out = twill(&[
        "bgp",
        "peer",
        "add",
        "192.168.1.1",
        "--as",
        "65000",
        "--store",
        &store,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("192.168.1.1 is an IPv4 address") && err.contains("IPv6-only"),
        "{err}"
    );
    let out = twill(&[
        "bgp",
        "peer",
        "add",
        "fd00:1::1",
        "--as",
        "65000",
        "--store",
        &store,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("fd00:1::1"),
        "{out:?}"
    );
}
