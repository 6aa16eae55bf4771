//! Routing IPv6 pods by BGP in dual-stack labs, against real BIRD 2 (issue 15): the node mesh
//! over IPv6 sessions, BIRD as top-of-rack over IPv6 sessions (learning the nodes' IPv6
//! subnets, announcing an IPv6 route of its own), BIRD reflecting the nodes' IPv6 routes, the
//! protections: a wrong TCP-MD5 password over IPv6 gives no session, and a pod cannot reach
//! any node's BGP port over IPv6; and BGP with WireGuard (`--encrypt`): learned IPv6 routes
//! into other nodes' subnets go into `twill.wg`, and the underlay carries only WireGuard. Root
//! only (`--include-ignored`); each test has its own lab, removed by a guard pass or fail.
//!
//! Assertions read real state: `ip -6 route show proto 117` in the hosts, `birdc show route`
//! and `show protocols`, `twill bgp status --json`, ping -6 between pods, TCP from a pod, an
//! underlay capture decoded by scapy (tests/wireguard6/wire_check.py; needs tcpdump and
//! python3-scapy).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_lab::{Backend, EncryptMode, IpFamily, Lab, LabSpec, Underlay};
use twill_testkit::{random_suffix, require_root};

mod bgp_common;
use bgp_common::{BIRD_KERNEL6, TWILL, bird_peer, bird_peer6, dump_logs, up, wait_until};
mod lab_common;
mod wireguard6;
use wireguard6::wire_proof6;

const T30: Duration = Duration::from_secs(30);
/// How long a session that must not come up is watched (several connect retries and hold
/// times of the lab's timers).
const WATCH: Duration = Duration::from_secs(6);

/// Removes the lab on drop, pass or fail (BIRD included: `down` stops it).
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.0, &["show", "protocols", "all"]);
        }
        let _ = twill_lab::down(&self.0);
    }
}

fn name() -> (String, Guard) {
    let name = format!("b6{}", random_suffix(4));
    (name.clone(), Guard(name))
}

fn dual(name: &str) -> LabSpec {
    LabSpec::new(name)
        .nodes(3)
        .pods_per_node(1)
        .backend(Backend::Bgp)
        .ip_family(IpFamily::Dual)
}

/// Host `i`'s IPv6 pod subnet, from its status.
fn subnet6(lab: &Lab, i: u32) -> String {
    lab.host_status(i)
        .unwrap()
        .subnet6
        .unwrap_or_else(|| panic!("h{i} has no IPv6 subnet"))
}

/// `ip -6 route show proto 117` of host `i`: (destination, gateway, device).
fn twill_routes6_on(lab: &Lab, i: u32) -> Vec<(String, String, String)> {
    let out = lab
        .exec(
            &format!("h{i}"),
            &["ip", "-j", "-6", "route", "show", "proto", "117"],
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let field = |r: &Value, key: &str| r[key].as_str().unwrap_or("").to_string();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|r| (field(r, "dst"), field(r, "gateway"), field(r, "dev")))
        .collect()
}

/// `ip -6 route show proto 117` of host `i`: (destination, gateway).
fn twill_routes6(lab: &Lab, i: u32) -> Vec<(String, String)> {
    twill_routes6_on(lab, i)
        .into_iter()
        .map(|(d, g, _)| (d, g))
        .collect()
}

fn has_route6_via(lab: &Lab, i: u32, dst: &str, via: &str) -> bool {
    twill_routes6(lab, i)
        .iter()
        .any(|(d, g)| d == dst && g == via)
}

fn wait_route6(lab: &Lab, i: u32, dst: &str, via: &str) {
    let start = Instant::now();
    while !has_route6_via(lab, i, dst, via) {
        assert!(
            start.elapsed() < T30,
            "h{i} has no route {dst} via {via}; its IPv6 routes of twill: {:?}",
            twill_routes6(lab, i)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bird_has(lab: &Lab, prefix: &str) -> bool {
    lab.birdc("router", &["show", "route", prefix])
        .unwrap()
        .contains(prefix)
}

/// The state of BIRD's protocol `proto` ("Established", "Active", "Connect", ...).
fn bird_state(lab: &Lab, proto: &str) -> String {
    let out = lab.birdc("router", &["show", "protocols"]).unwrap();
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(proto))
        .and_then(|l| l.split_whitespace().nth(5))
        .unwrap_or_default()
        .to_string()
}

/// `twill bgp status --json` of host `i`.
fn bgp_status(lab: &Lab, i: u32) -> Value {
    let out = Command::new(TWILL)
        .args(["bgp", "status", "--json", "--data-dir"])
        .arg(&lab.hosts()[i as usize - 1].data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The state of host `i`'s session with `peer` ("" when it has none).
fn session(lab: &Lab, i: u32, peer: &str) -> String {
    bgp_status(lab, i)["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == peer)
        .map(|p| p["state"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn assert_ping6_all(lab: &Lab) {
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "IPv4:\n{}", m.render());
    let m6 = lab
        .ping6_matrix()
        .expect("a dual-stack lab has a ping -6 matrix");
    assert!(m6.all_ok(), "IPv6:\n{}", m6.render());
}

/// A TCP connection over IPv6 from a pod: `connected`, or `connect-failed <error type>`
/// (`TimeoutError` when the SYN is dropped, `ConnectionRefusedError` on a reset).
const CONNECT6: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6)
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected", flush=True)
except Exception as e:
    print("connect-failed", type(e).__name__, flush=True)
"#;

fn connect6(lab: &Lab, pod: &str, ip: &str, port: u16) -> String {
    let out = lab
        .exec(pod, &["python3", "-c", CONNECT6, ip, &port.to_string()])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{pod} -> [{ip}]:{port}: {text}");
    text
}

/// The node mesh of a dual-stack cluster on the l2 underlay: IPv6 sessions between the nodes'
/// IPv6 underlay addresses, every node's IPv6 subnet in every other node's kernel via that
/// node's IPv6 underlay address, pods ping -6 each other. BIRD in the underlay namespace is
/// an IPv6 router of h1 and h2 with a TCP-MD5 password (and TTL security with h2): h2 has the
/// password and gets the session, h1 a wrong one and never does. And a pod of h1 cannot open
/// the BGP port of its own node or of h2 over IPv6, while another port of h2 answers it.
#[test]
#[ignore = "needs root"]
fn mesh_over_ipv6_sessions_and_its_protections() {
    require_root();
    let (name, _g) = name();
    let router = format!(
        "{}{}{BIRD_KERNEL6}",
        bird_peer6(
            "h1",
            "fd00:100::1",
            65000,
            "fd00:100::11",
            64512,
            "password \"tor-secret\";"
        ),
        bird_peer6(
            "h2",
            "fd00:100::1",
            65000,
            "fd00:100::12",
            64512,
            "password \"tor-secret\"; ttl security on;"
        ),
    );
    let spec = dual(&name).bird_router(router).bgp(
        r#"holdTime: 3
           peers:
             - {address: "fd00:100::1", asNumber: 65000, node: h1, password: "not-the-tor-secret"}
             - {address: "fd00:100::1", asNumber: 65000, node: h2, password: "tor-secret", ttlSecurity: true}"#,
    );
    let lab = up(&spec);
    let subnets6: Vec<String> = (1..=3).map(|i| subnet6(&lab, i)).collect();
    for i in 1..=3u32 {
        for j in (1..=3u32).filter(|j| *j != i) {
            // Each node's IPv6 block, via that node's IPv6 underlay address.
            wait_route6(
                &lab,
                i,
                &subnets6[j as usize - 1],
                &format!("fd00:100::{}", 10 + j),
            );
            let peer = format!("fd00:100::{}", 10 + j);
            wait_until(&format!("h{i}'s IPv6 session with h{j}"), T30, || {
                session(&lab, i, &peer) == "Established"
            });
        }
    }
    assert_ping6_all(&lab);

    // MD5 and TTL security over IPv6: h2's session with BIRD comes up and BIRD learns h2's
    // IPv6 block; h1's, with the wrong password, never does.
    wait_until("BIRD's session with h2", T30, || {
        bird_state(&lab, "h2") == "Established"
    });
    wait_until("h2's IPv6 subnet in BIRD", T30, || {
        bird_has(&lab, &subnets6[1])
    });
    assert_eq!(session(&lab, 2, "fd00:100::1"), "Established");
    // RFC 2545: h2's IPv6 underlay address as global next hop, and its link-local address
    // on the shared link.
    let r = lab
        .birdc("router", &["show", "route", &subnets6[1], "all"])
        .unwrap();
    assert!(r.contains("BGP.next_hop: fd00:100::12 fe80::"), "{r}");
    let start = Instant::now();
    while start.elapsed() < WATCH {
        assert_ne!(bird_state(&lab, "h1"), "Established");
        let h1 = session(&lab, 1, "fd00:100::1");
        assert!(!h1.is_empty() && h1 != "Established", "h1: {h1}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Whatever BIRD knows of h1's block came through h2 (which passes on what the mesh
    // taught it), none from h1 itself.
    let r = lab
        .birdc("router", &["show", "route", &subnets6[0], "all"])
        .unwrap();
    assert!(
        !r.contains("[h1 "),
        "BIRD learned h1's IPv6 subnet from h1 without the password:\n{r}"
    );

    // A pod never reaches a node's BGP port over IPv6: not its own node's (input), not
    // another node's (before NAT, which would make it look like its node, a configured peer).
    for node6 in ["fd00:100::11", "fd00:100::12"] {
        let out = connect6(&lab, "h1-p1", node6, 179);
        assert!(out.starts_with("connect-failed"), "{node6}: {out}");
    }
    // The control: the same pod reaches h2 over IPv6 (a closed port answers with a reset).
    let out = connect6(&lab, "h1-p1", "fd00:100::12", 180);
    assert_eq!(out, "connect-failed ConnectionRefusedError");
}

/// The eBGP top-of-rack over IPv6 sessions: three nodes on the routed underlay (h1, h3 in
/// fd00:1::/64, h2 in fd00:2::/64), each in its own AS, no mesh, peering with BIRD (AS 65000)
/// over IPv4 for the IPv4 routes and over IPv6 for the IPv6 ones. BIRD learns every node's
/// IPv6 block from the node's AS and announces fd00:99::/64; the nodes install it and each
/// other's IPv6 blocks via the router; pods in different subnets ping -6 each other.
#[test]
#[ignore = "needs root"]
fn tor_over_ipv6_sessions() {
    require_root();
    let (name, _g) = name();
    let mut tor =
        format!("protocol static tor6 {{ ipv6; route fd00:99::/64 blackhole; }}\n{BIRD_KERNEL6}");
    let mut peers = String::new();
    for i in 1..=3u32 {
        let seg = if i % 2 == 1 { 1 } else { 2 };
        let (gw, ip) = (
            format!("192.168.{seg}.1"),
            format!("192.168.{seg}.{}", 10 + i),
        );
        let (gw6, ip6) = (format!("fd00:{seg}::1"), format!("fd00:{seg}::{}", 10 + i));
        tor += &bird_peer(&format!("h{i}"), &gw, 65000, &ip, 65000 + i, "");
        tor += &bird_peer6(&format!("h{i}v6"), &gw6, 65000, &ip6, 65000 + i, "");
        peers += &format!(
            "\n  - {{address: {gw}, asNumber: 65000, node: h{i}}}\
             \n  - {{address: \"{gw6}\", asNumber: 65000, node: h{i}}}"
        );
    }
    let spec = dual(&name)
        .underlay(Underlay::Routed)
        .bird_router(tor)
        .bgp(format!(
            "nodeToNodeMesh: false\nholdTime: 3\nnodes:\n  h1: {{asNumber: 65001}}\n  \
             h2: {{asNumber: 65002}}\n  h3: {{asNumber: 65003}}\npeers:{peers}"
        ));
    let lab = up(&spec);
    let subnets6: Vec<String> = (1..=3).map(|i| subnet6(&lab, i)).collect();
    for (i, s) in subnets6.iter().enumerate() {
        wait_until(&format!("{s} in BIRD"), T30, || bird_has(&lab, s));
        let r = lab.birdc("router", &["show", "route", s, "all"]).unwrap();
        assert!(r.contains(&format!("BGP.as_path: {}", 65001 + i)), "{r}");
        // Over the IPv6 session, with the node's IPv6 underlay address as next hop.
        assert!(r.contains(&format!("h{}v6", i + 1)), "{r}");
    }
    // BIRD's own IPv6 route, and the other subnet's nodes, via the router.
    for i in 1..=3u32 {
        let gw6 = if i % 2 == 1 { "fd00:1::1" } else { "fd00:2::1" };
        wait_route6(&lab, i, "fd00:99::/64", gw6);
    }
    wait_route6(&lab, 1, &subnets6[1], "fd00:1::1");
    wait_route6(&lab, 2, &subnets6[0], "fd00:2::1");
    wait_route6(&lab, 2, &subnets6[2], "fd00:2::1");
    for i in 1..=3u32 {
        let seg = if i % 2 == 1 { 1 } else { 2 };
        assert_eq!(
            session(&lab, i, &format!("fd00:{seg}::1")),
            "Established",
            "h{i}"
        );
    }
    assert_ping6_all(&lab);
}

/// An IPv6-only cluster (`--ip-family ipv6`: no IPv4 on any underlay link) routed by BGP
/// with BIRD as top-of-rack across the routed underlay: sessions over IPv6 alone, router IDs
/// hashed from the node names (no IPv4 address to take one from). BIRD learns every node's
/// IPv6 block from the node's AS and announces fd00:99::/64; the nodes install it and each
/// other's blocks via the router; pods in different subnets ping -6 each other.
#[test]
#[ignore = "needs root"]
fn tor_in_an_ipv6_only_cluster() {
    require_root();
    let (name, _g) = name();
    let mut tor =
        format!("protocol static tor6 {{ ipv6; route fd00:99::/64 blackhole; }}\n{BIRD_KERNEL6}");
    let mut peers = String::new();
    for i in 1..=3u32 {
        let seg = if i % 2 == 1 { 1 } else { 2 };
        let (gw6, ip6) = (format!("fd00:{seg}::1"), format!("fd00:{seg}::{}", 10 + i));
        tor += &bird_peer6(&format!("h{i}v6"), &gw6, 65000, &ip6, 65000 + i, "");
        peers += &format!("\n  - {{address: \"{gw6}\", asNumber: 65000, node: h{i}}}");
    }
    let spec = dual(&name)
        .ip_family(IpFamily::Ipv6)
        .underlay(Underlay::Routed)
        .bird_router(tor)
        .bgp(format!(
            "nodeToNodeMesh: false\nholdTime: 3\nnodes:\n  h1: {{asNumber: 65001}}\n  \
             h2: {{asNumber: 65002}}\n  h3: {{asNumber: 65003}}\npeers:{peers}"
        ));
    let lab = up(&spec);
    for h in lab.hosts() {
        assert!(h.ip.is_none(), "{} has an IPv4 underlay address", h.node);
    }
    let subnets6: Vec<String> = (1..=3).map(|i| subnet6(&lab, i)).collect();
    for (i, s) in subnets6.iter().enumerate() {
        wait_until(&format!("{s} in BIRD"), T30, || bird_has(&lab, s));
        let r = lab.birdc("router", &["show", "route", s, "all"]).unwrap();
        assert!(r.contains(&format!("BGP.as_path: {}", 65001 + i)), "{r}");
    }
    for i in 1..=3u32 {
        let gw6 = if i % 2 == 1 { "fd00:1::1" } else { "fd00:2::1" };
        wait_route6(&lab, i, "fd00:99::/64", gw6);
        assert_eq!(session(&lab, i, gw6), "Established", "h{i}");
    }
    wait_route6(&lab, 1, &subnets6[1], "fd00:1::1");
    wait_route6(&lab, 2, &subnets6[0], "fd00:2::1");
    wait_route6(&lab, 2, &subnets6[2], "fd00:2::1");
    // Hashed router IDs: BIRD sees three different ones, none of them an underlay address.
    let protocols = lab.birdc("router", &["show", "protocols", "all"]).unwrap();
    let ids: std::collections::BTreeSet<&str> = protocols
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Neighbor ID:"))
        .map(str::trim)
        .collect();
    assert_eq!(ids.len(), 3, "{protocols}");
    assert_ping6_all(&lab);
}

/// Three nodes on the l2 underlay, iBGP AS 64512, mesh off; the BIRD in the underlay
/// namespace reflects their routes, the IPv6 ones over IPv6 sessions: each node routes
/// straight to the others' IPv6 blocks via their IPv6 underlay addresses (the reflector
/// keeps the originator's next hop).
#[test]
#[ignore = "needs root"]
fn bird_reflects_ipv6_routes() {
    require_root();
    let (name, _g) = name();
    let mut rr = BIRD_KERNEL6.to_string();
    let rr_opts = "rr client; rr cluster id 10.255.0.1;";
    for i in 1..=3u32 {
        rr += &bird_peer(
            &format!("h{i}"),
            "192.168.100.1",
            64512,
            &format!("192.168.100.{}", 10 + i),
            64512,
            rr_opts,
        );
        rr += &bird_peer6(
            &format!("h{i}v6"),
            "fd00:100::1",
            64512,
            &format!("fd00:100::{}", 10 + i),
            64512,
            rr_opts,
        );
    }
    let spec = dual(&name).bird_router(rr).bgp(
        r#"nodeToNodeMesh: false
           holdTime: 3
           peers:
             - {address: 192.168.100.1, asNumber: 64512}
             - {address: "fd00:100::1", asNumber: 64512}"#,
    );
    let lab = up(&spec);
    let subnets6: Vec<String> = (1..=3).map(|i| subnet6(&lab, i)).collect();
    for s in &subnets6 {
        wait_until(&format!("{s} in BIRD"), T30, || bird_has(&lab, s));
    }
    for i in 1..=3u32 {
        for j in (1..=3u32).filter(|j| *j != i) {
            wait_route6(
                &lab,
                i,
                &subnets6[j as usize - 1],
                &format!("fd00:100::{}", 10 + j),
            );
        }
        // Two sessions, both with the reflector; no mesh.
        let st = bgp_status(&lab, i);
        let mut peers: Vec<String> = st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["address"].as_str().unwrap().to_string())
            .collect();
        peers.sort();
        assert_eq!(peers, ["192.168.100.1", "fd00:100::1"], "{st}");
        assert_eq!(session(&lab, i, "fd00:100::1"), "Established");
    }
    assert_ping6_all(&lab);
}

/// h1 is the cluster's route reflector: h2 and h3 are its clients, over IPv4 and IPv6
/// sessions; each client gets the other's IPv6 block reflected with the originator's next
/// hop, and pods ping -6 each other.
#[test]
#[ignore = "needs root"]
fn twill_node_reflects_ipv6_routes() {
    require_root();
    let (name, _g) = name();
    let spec = dual(&name).bgp("routeReflectors: [h1]\nholdTime: 3");
    let lab = up(&spec);
    let subnets6: Vec<String> = (1..=3).map(|i| subnet6(&lab, i)).collect();
    for (i, j) in [(2u32, 3u32), (3, 2), (1, 2), (2, 1)] {
        wait_route6(
            &lab,
            i,
            &subnets6[j as usize - 1],
            &format!("fd00:100::{}", 10 + j),
        );
    }
    for i in 2..=3u32 {
        let st = bgp_status(&lab, i);
        let peers: Vec<(&str, &str)> = st["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["address"].as_str().unwrap(), p["kind"].as_str().unwrap()))
            .collect();
        assert_eq!(
            peers,
            [
                ("192.168.100.11", "route-reflector"),
                ("fd00:100::11", "route-reflector")
            ],
            "{st}"
        );
        assert_eq!(session(&lab, i, "fd00:100::11"), "Established");
    }
    assert_ping6_all(&lab);
}

/// The node mesh with WireGuard on (`--encrypt`), dual stack: BIRD (AS 65000, over IPv6
/// sessions with every node) announces, once it knows the nodes' IPv6 subnets, the half of
/// each that holds its pods (a /65) and a prefix outside the cluster. Every node installs the
/// /65s inside the other nodes' IPv6 subnets into `twill.wg` (via the subnet's network
/// address, not BIRD's next hop), never the one inside its own, and the outside prefix in
/// clear via BIRD; its IPv6 packets to the other nodes' pods take those routes; pods ping -6
/// across nodes, and a capture of the underlay holds WireGuard UDP and no pod packet in clear.
#[test]
#[ignore = "needs root"]
fn encrypted_mesh_sends_learned_ipv6_routes_through_wireguard() {
    require_root();
    let (name, _g) = name();
    let mut router =
        format!("protocol static out6 {{ ipv6; route fd00:99::/64 blackhole; }}\n{BIRD_KERNEL6}");
    for i in 1..=3u32 {
        router += &bird_peer6(
            &format!("h{i}"),
            "fd00:100::1",
            65000,
            &format!("fd00:100::{}", 10 + i),
            64512,
            "",
        );
    }
    let spec = dual(&name)
        .encrypt(EncryptMode::Always)
        .bird_router(router)
        .bgp("holdTime: 3\npeers:\n  - {address: \"fd00:100::1\", asNumber: 65000}");
    let lab = up(&spec);
    let subnets6: Vec<String> = (1..=3).map(|i| subnet6(&lab, i)).collect();
    // The pods' halves of the nodes' subnets, announced by BIRD from now on.
    let halves: Vec<String> = subnets6
        .iter()
        .map(|s| {
            let network = s
                .strip_suffix("/64")
                .unwrap_or_else(|| panic!("{s}: not a /64"));
            format!("{network}/65")
        })
        .collect();
    let bird = lab
        .state()
        .birds
        .iter()
        .find(|b| b.name == "router")
        .expect("the lab's BIRD")
        .clone();
    let mut conf = std::fs::read_to_string(&bird.conf).unwrap();
    conf += "protocol static halves6 {\n  ipv6;\n";
    for half in &halves {
        conf += &format!("  route {half} blackhole;\n");
    }
    conf += "}\n";
    std::fs::write(&bird.conf, conf).unwrap();
    let out = lab.birdc("router", &["configure"]).unwrap();
    assert!(out.contains("Reconfigured"), "{out}");

    for i in 1..=3u32 {
        wait_route6(&lab, i, "fd00:99::/64", "fd00:100::1");
        for j in (1..=3u32).filter(|j| *j != i) {
            let (half, subnet) = (&halves[j as usize - 1], &subnets6[j as usize - 1]);
            let gateway = subnet.trim_end_matches("/64");
            wait_until(&format!("h{i}: {half} into twill.wg"), T30, || {
                twill_routes6_on(&lab, i).contains(&(
                    half.clone(),
                    gateway.to_string(),
                    "twill.wg".into(),
                ))
            });
            // The other node's subnet itself: WireGuard's route, as without BGP.
            let out = lab
                .exec(
                    &format!("h{i}"),
                    &["ip", "-6", "-j", "route", "show", subnet],
                )
                .unwrap();
            let routes: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
            assert!(
                routes.len() == 1 && routes[0]["dev"] == "twill.wg",
                "h{i} -> {subnet}: {routes:?}"
            );
            // Its pods are reached by the learned route.
            let pod6 = lab
                .pods()
                .iter()
                .find(|p| p.host == j)
                .and_then(|p| p.ip6)
                .unwrap()
                .to_string();
            let out = lab
                .exec(&format!("h{i}"), &["ip", "-6", "-j", "route", "get", &pod6])
                .unwrap();
            let got: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            assert_eq!(got[0]["dev"], "twill.wg", "h{i} -> {pod6}: {got}");
        }
        // Never a route into its own subnet, from BIRD or anyone.
        let own = &halves[i as usize - 1];
        assert!(
            twill_routes6(&lab, i).iter().all(|(d, _)| d != own),
            "h{i} routes its own {own}: {:?}",
            twill_routes6(&lab, i)
        );
    }
    assert_ping6_all(&lab);
    wire_proof6(&lab, &[]);
}
