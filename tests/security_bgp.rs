//! BGP authentication in the lab (issue 12, item 3), against real BIRD 2: TCP-MD5 passwords
//! (RFC 2385) and TTL security (GTSM, RFC 5082) between twill and BIRD and between twill
//! nodes, and the attack that made them necessary: with natOutgoing, a pod's connection to
//! its node's BGP peer leaves with the node's own address, and its OPEN claimed to be the node.
//! Each attack is run from a pod as an attacker would, and must fail while the real sessions
//! stay Established and every pod still reaches every other (ping matrix before and after).
//! Passwords never show in `twill bgp status --json`, `twill cluster show` or the logs.
//! Root only (`--include-ignored`); each test has its own lab, removed by a guard.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_lab::{Backend, Lab, LabSpec, Underlay};
use twill_testkit::{random_suffix, require_root};

mod bgp_common;
use bgp_common::{TWILL, bird_peer, dump_logs, up, wait_until};

const T60: Duration = Duration::from_secs(60);

/// Removes the lab (and the test's password files) on drop, pass or fail.
struct Guard(String, Vec<PathBuf>);

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.0, &["show", "protocols", "all"]);
        }
        let _ = twill_lab::down(&self.0);
        for f in &self.1 {
            let _ = std::fs::remove_file(f);
        }
    }
}

fn guard() -> (String, Guard) {
    let name = format!("s{}", random_suffix(5));
    (name.clone(), Guard(name, Vec::new()))
}

/// A password file for the agents (mode 0600), removed by the guard.
fn password_file(g: &mut Guard, tag: &str, password: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("twill-{}-{tag}.key", g.0));
    std::fs::write(&p, format!("{password}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    g.1.push(p.clone());
    p
}

/// BIRD's view of protocol `proto`: (state, since), e.g. ("Established", "20:31:02.123").
fn bird_session(lab: &Lab, proto: &str) -> (String, String) {
    let out = lab.birdc("router", &["show", "protocols"]).unwrap();
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(proto))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // name proto table state since info
            (
                f.get(5).copied().unwrap_or("").to_string(),
                f.get(4).copied().unwrap_or("").to_string(),
            )
        })
        .unwrap_or_default()
}

fn bird_has(lab: &Lab, prefix: &str) -> bool {
    lab.birdc("router", &["show", "route", prefix])
        .unwrap()
        .contains(prefix)
}

/// `twill bgp status --json` of host `i`, raw and parsed.
fn bgp_status(lab: &Lab, i: u32) -> (String, Value) {
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
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let v = serde_json::from_str(&text).unwrap();
    (text, v)
}

/// Host `i`'s session state with `peer`, or None while its agent has not reported a BGP
/// speaker (just after a restart).
fn try_session_state(lab: &Lab, i: u32, peer: &str) -> Option<String> {
    let out = Command::new(TWILL)
        .args(["bgp", "status", "--json", "--data-dir"])
        .arg(&lab.hosts()[i as usize - 1].data_dir)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let peers = v["peers"].as_array()?;
    let p = peers.iter().find(|p| p["address"] == peer)?;
    Some(p["state"].as_str().unwrap_or_default().to_string())
}

/// Host `i`'s session with `peer`: (state, Unix time it reached Established).
fn session(lab: &Lab, i: u32, peer: &str) -> (String, u64) {
    bgp_status(lab, i).1["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["address"] == peer)
        .map(|p| {
            (
                p["state"].as_str().unwrap_or("").to_string(),
                p["since"].as_u64().unwrap_or(0),
            )
        })
        .unwrap_or_default()
}

fn twill_routes(lab: &Lab, i: u32) -> String {
    let out = lab
        .exec(&format!("h{i}"), &["ip", "route", "show", "proto", "117"])
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Runs the twill CLI in host h1 (where the lab's store is reachable), with `env` first.
fn twill_in_h1(lab: &Lab, env: &[&str], args: &[&str]) -> std::process::Output {
    let store = lab.store_args();
    let mut a = vec!["env"];
    a.extend_from_slice(env);
    a.push(TWILL);
    a.extend_from_slice(args);
    a.extend(store.iter().map(String::as_str));
    lab.exec("h1", &a).unwrap()
}

fn cluster_show(lab: &Lab) -> String {
    let out = twill_in_h1(lab, &[], &["cluster", "show"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// No output of twill's and no agent log holds any of `secrets`.
fn assert_never_printed(lab: &Lab, secrets: &[&str]) {
    let mut shown = vec![("cluster show".to_string(), cluster_show(lab))];
    for h in lab.hosts() {
        shown.push((
            format!("bgp status --json on {}", h.node),
            bgp_status(lab, h.index).0,
        ));
        shown.push((
            format!("{} agent log", h.node),
            std::fs::read_to_string(&h.log).unwrap_or_default(),
        ));
    }
    for (what, text) in &shown {
        for s in secrets {
            assert!(!text.contains(s), "{what} shows a BGP password:\n{text}");
        }
    }
}

/// The hijack, from a pod: TCP to `peer`:179 (leaving with the node's address, natOutgoing),
/// an OPEN as the node (its AS and router ID), a KEEPALIVE and an UPDATE announcing
/// 10.66.0.0/24. Prints what happened: `connect-failed ...`, or `connected` then each
/// message type received (1 = OPEN) and `closed`.
const HIJACK: &str = r#"
import socket, struct, sys, time
peer, asn, rid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket()
if len(sys.argv) > 4:
    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, int(sys.argv[4]))
s.settimeout(5)
try:
    s.connect((peer, 179))
except Exception as e:
    print("connect-failed", type(e).__name__, flush=True)
    sys.exit(0)
print("connected", flush=True)
def msg(t, body):
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), t) + body
caps = bytes([2, 6, 65, 4]) + struct.pack("!I", asn) + bytes([2, 6, 1, 4, 0, 1, 0, 1])
opn = struct.pack("!BHH4sB", 4, asn if asn < 65536 else 23456, 3, socket.inet_aton(rid), len(caps)) + caps
attrs = bytes([0x40, 1, 1, 0]) + bytes([0x40, 2, 6, 2, 1]) + struct.pack("!I", asn) \
    + bytes([0x40, 3, 4]) + socket.inet_aton(rid)
upd = struct.pack("!H", 0) + struct.pack("!H", len(attrs)) + attrs + bytes([24, 10, 66, 0])
try:
    s.sendall(msg(1, opn) + msg(4, b"") + msg(2, upd))
    end = time.time() + 6
    buf = b""
    while time.time() < end:
        d = s.recv(4096)
        if not d:
            break
        buf += d
        while len(buf) >= 19:
            n = struct.unpack("!H", buf[16:18])[0]
            if len(buf) < n:
                break
            print("received", buf[18], flush=True)
            if buf[18] == 4:
                s.sendall(msg(4, b""))
            buf = buf[n:]
except Exception as e:
    print("error", type(e).__name__, flush=True)
print("closed", flush=True)
"#;

fn hijack(lab: &Lab, pod: &str, peer: &str, asn: u32, rid: &str) -> String {
    hijack_with(lab, pod, &[peer, &asn.to_string(), rid])
}

/// The attack script run in `target` with `args` (peer, AS, router id and, optionally, the TTL
/// its packets leave with).
fn hijack_with(lab: &Lab, pod: &str, args: &[&str]) -> String {
    let mut cmd = vec!["python3", "-c", HIJACK];
    cmd.extend_from_slice(args);
    let out = lab.exec(pod, &cmd).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the attack script failed: {text}");
    eprintln!("hijack {args:?} from {pod}: {}", text.replace('\n', " "));
    text
}

/// The eBGP top-of-rack of tests/bgp_lab.rs with two nodes (h1 in 192.168.1.0/24, h2 in
/// 192.168.2.0/24), each session keyed: h1's as `h1_auth` says (YAML keys; BIRD: `tor_h1`),
/// h2's from a password file on the nodes and with TTL security on both sides.
fn tor_spec(name: &str, h1_auth: &str, tor_h1: &str, h2_file: &Path, tor_h2: &str) -> LabSpec {
    let tor = bird_peer(
        "h1",
        "192.168.1.1",
        65000,
        "192.168.1.11",
        65001,
        &format!("password \"{tor_h1}\";"),
    ) + &bird_peer(
        "h2",
        "192.168.2.1",
        65000,
        "192.168.2.12",
        65002,
        &format!("password \"{tor_h2}\"; ttl security on;"),
    );
    LabSpec::new(name)
        .nodes(2)
        .pods_per_node(1)
        .underlay(Underlay::Routed)
        .backend(Backend::Bgp)
        .bird_router(tor)
        .bgp(format!(
            "nodeToNodeMesh: false
             holdTime: 3
             nodes:
               h1: {{asNumber: 65001}}
               h2: {{asNumber: 65002}}
             peers:
               - {{address: 192.168.1.1, asNumber: 65000, node: h1, {h1_auth}}}
               - {{address: 192.168.2.1, asNumber: 65000, node: h2, passwordFile: {}, ttlSecurity: true}}",
            h2_file.display()
        ))
}

#[test]
#[ignore = "needs root"]
fn md5_and_ttl_security_with_bird_and_the_pod_hijack_fails() {
    require_root();
    let (name, mut g) = guard();
    let h1_pw = "tor-h1-Secret-0451";
    let h2_pw = "tor-h2-Secret-9187";
    let h2_file = password_file(&mut g, "h2", h2_pw);
    let lab = up(&tor_spec(
        &name,
        &format!("password: \"{h1_pw}\""),
        h1_pw,
        &h2_file,
        h2_pw,
    ));
    let s1 = lab.host_status(1).unwrap().subnet.unwrap();
    let s2 = lab.host_status(2).unwrap().subnet.unwrap();
    // Both keyed sessions come up and routes flow through the ToR both ways.
    for (proto, s) in [("h1", &s1), ("h2", &s2)] {
        wait_until(&format!("BIRD {proto} Established"), T60, || {
            bird_session(&lab, proto).0 == "Established"
        });
        wait_until(&format!("{s} in BIRD"), T60, || bird_has(&lab, s));
    }
    wait_until("h1 routes h2's block via the ToR", T60, || {
        twill_routes(&lab, 1).contains(&format!("{s2} via 192.168.1.1"))
    });
    wait_until("h2 routes h1's block via the ToR", T60, || {
        twill_routes(&lab, 2).contains(&format!("{s1} via 192.168.2.1"))
    });
    assert_eq!(session(&lab, 1, "192.168.1.1").0, "Established");
    assert_eq!(session(&lab, 2, "192.168.2.1").0, "Established");
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "before: {}", m.render());

    // The hijack from h1's pod: it claims to be h1 (AS 65001, router ID 192.168.1.11).
    let since = bird_session(&lab, "h1").1;
    let since1 = session(&lab, 1, "192.168.1.1").1;
    let out = hijack(&lab, "h1-p1", "192.168.1.1", 65001, "192.168.1.11");
    // BIRD's kernel drops the unsigned SYN: no connection, so no OPEN from BIRD either.
    assert!(out.contains("connect-failed"), "{out}");
    assert!(
        !out.contains("received 1"),
        "BIRD answered the pod's OPEN: {out}"
    );
    // The real session never went down, nothing the pod announced is anywhere.
    assert_eq!(
        bird_session(&lab, "h1"),
        ("Established".to_string(), since),
        "h1's session flapped"
    );
    assert!(
        !bird_has(&lab, "10.66.0.0/24"),
        "BIRD took the pod's prefix"
    );
    assert!(bird_has(&lab, &s1), "h1's block was withdrawn");
    assert!(!twill_routes(&lab, 2).contains("10.66.0.0"));
    assert_eq!(
        session(&lab, 1, "192.168.1.1"),
        ("Established".into(), since1)
    );
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "after: {}", m.render());
    // Still the same session on h1's side.
    assert_eq!(
        session(&lab, 1, "192.168.1.1"),
        ("Established".into(), since1)
    );

    // The passwords are nowhere to be read.
    assert_never_printed(&lab, &[h1_pw, h2_pw]);
    let shown = cluster_show(&lab);
    assert!(shown.contains("<redacted>"), "{shown}");
    assert!(shown.contains(&h2_file.display().to_string()), "{shown}");
}

#[test]
#[ignore = "needs root"]
fn wrong_password_gives_no_session() {
    require_root();
    let (name, mut g) = guard();
    let h1_file = password_file(&mut g, "h1", "h1-right-password");
    let h2_file = password_file(&mut g, "h2", "tor-h2-right");
    let mut lab = up(&tor_spec(
        &name,
        &format!("passwordFile: {}", h1_file.display()),
        "h1-right-password",
        &h2_file,
        "tor-h2-right",
    ));
    wait_until("BIRD h1 and h2 Established", T60, || {
        bird_session(&lab, "h1").0 == "Established" && bird_session(&lab, "h2").0 == "Established"
    });
    // h1's agent comes back with a password BIRD does not have.
    std::fs::write(&h1_file, "h1-wrong-password\n").unwrap();
    lab.kill_agent(1, twill_lab::Signal::SIGTERM).unwrap();
    lab.start_agent(1).unwrap();
    // (the new agent's status replaces what the old one last wrote)
    wait_until("h1's new agent reports its session down", T60, || {
        // Until the new agent reports its speaker, `twill bgp status` says it runs none.
        let Some(st) = try_session_state(&lab, 1, "192.168.1.1") else {
            return false;
        };
        lab.agent_alive(1) && !st.is_empty() && st != "Established"
    });
    // Watch h1's session for a while (BIRD retries every second, twill too): never up.
    let since2 = bird_session(&lab, "h2").1;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let bird = bird_session(&lab, "h1").0;
        assert_ne!(bird, "Established", "BIRD took h1's wrong password");
        let (st, _) = session(&lab, 1, "192.168.1.1");
        assert_ne!(st, "Established", "h1 got a session with a wrong password");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The control: h2's session, with the right password, never moved.
    assert_eq!(
        bird_session(&lab, "h2"),
        ("Established".to_string(), since2)
    );
    // And the right password again, without a restart: the agent reads the file at every
    // peer sync (the resync, every 60 s by default, at the latest) and re-keys the session.
    std::fs::write(&h1_file, "h1-right-password\n").unwrap();
    wait_until(
        "BIRD h1 Established again",
        Duration::from_secs(150),
        || bird_session(&lab, "h1").0 == "Established",
    );
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "{}", m.render());
    assert_never_printed(
        &lab,
        &["h1-wrong-password", "h1-right-password", "tor-h2-right"],
    );
}

/// Two nodes on the L2 underlay in a keyed mesh with TTL security; BIRD (AS 65000, at
/// 192.168.100.1) peers with h1 through `twill bgp peer add --password-env --ttl-security`
/// and announces 10.77.0.0/24. A pod of h1 then tries to take over h1's session with h2.
#[test]
#[ignore = "needs root"]
fn keyed_mesh_and_cli_peer_and_the_pod_hijack_of_a_node_fails() {
    require_root();
    let (name, mut g) = guard();
    let mesh_pw = "mesh-Secret-7731";
    let bird_pw = "bird-Secret-2264";
    let mesh_file = password_file(&mut g, "mesh", mesh_pw);
    let bird = bird_peer(
        "h1",
        "192.168.100.1",
        65000,
        "192.168.100.11",
        64512,
        &format!("password \"{bird_pw}\"; ttl security on;"),
    ) + "protocol static { ipv4; route 10.77.0.0/24 blackhole; }\n";
    let spec = LabSpec::new(&name)
        .nodes(2)
        .pods_per_node(1)
        .backend(Backend::Bgp)
        .bird_router(bird)
        .bgp(format!(
            "holdTime: 3
             passwordFile: {}
             ttlSecurity: true",
            mesh_file.display()
        ));
    let lab = up(&spec);
    let s1 = lab.host_status(1).unwrap().subnet.unwrap();
    wait_until("the mesh session", T60, || {
        session(&lab, 1, "192.168.100.12").0 == "Established"
            && session(&lab, 2, "192.168.100.11").0 == "Established"
    });
    wait_until("h2 routes h1's block", T60, || {
        twill_routes(&lab, 2).contains(&format!("{s1} via 192.168.100.11"))
    });
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "before: {}", m.render());

    // BIRD as an external peer of h1, added by the CLI with the password from its env.
    let env = format!("SEC_BGP_PW={bird_pw}");
    let out = twill_in_h1(
        &lab,
        &[&env],
        &[
            "bgp",
            "peer",
            "add",
            "192.168.100.1",
            "--as",
            "65000",
            "--node",
            "h1",
            "--password-env",
            "SEC_BGP_PW",
            "--ttl-security",
        ],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(!said.contains(bird_pw), "{said}");
    wait_until("BIRD's session with h1", T60, || {
        bird_session(&lab, "h1").0 == "Established"
    });
    wait_until("h1 learns BIRD's 10.77.0.0/24", T60, || {
        twill_routes(&lab, 1).contains("10.77.0.0/24 via 192.168.100.1")
    });

    // The hijack of the mesh: h1's pod claims to be h1 to h2.
    let (_, up_before) = session(&lab, 2, "192.168.100.11");
    let out = hijack(&lab, "h1-p1", "192.168.100.12", 64512, "192.168.100.11");
    assert!(
        !out.contains("received 1"),
        "h2 answered the pod's OPEN: {out}"
    );
    // And the same against BIRD (keyed and TTL-checked).
    let since = bird_session(&lab, "h1").1;
    let out_bird = hijack(&lab, "h1-p1", "192.168.100.1", 64512, "192.168.100.11");
    assert!(
        !out_bird.contains("received 1"),
        "BIRD answered the pod's OPEN: {out_bird}"
    );
    assert_eq!(bird_session(&lab, "h1"), ("Established".to_string(), since));
    assert_eq!(
        session(&lab, 2, "192.168.100.11"),
        ("Established".into(), up_before),
        "h2's session with h1 restarted"
    );
    assert_eq!(session(&lab, 1, "192.168.100.12").0, "Established");
    assert!(!twill_routes(&lab, 2).contains("10.66.0.0"));
    assert!(!bird_has(&lab, "10.66.0.0/24"));
    assert!(twill_routes(&lab, 2).contains(&format!("{s1} via 192.168.100.11")));
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "after: {}", m.render());

    assert_never_printed(&lab, &[mesh_pw, bird_pw]);
}

/// TTL security alone (no password) between two nodes on one L2 segment. The pod's own hijack
/// never reaches h2's port (host protection drops pods' traffic to control-plane ports before
/// NAT), so what TTL security must stop is shown the way the pod's packets would arrive without
/// that protection: from h1's own address, but having crossed one hop (TTL 254, as h1 forwards
/// a pod's packet). TCP completes, but h2 drops the connection before its speaker uses it.
#[test]
#[ignore = "needs root"]
fn ttl_security_alone_stops_the_pod_hijack_of_a_node() {
    require_root();
    let (name, _g) = guard();
    let spec = LabSpec::new(&name)
        .nodes(2)
        .pods_per_node(1)
        .backend(Backend::Bgp)
        .bgp("holdTime: 3\nttlSecurity: true");
    let lab = up(&spec);
    let s1 = lab.host_status(1).unwrap().subnet.unwrap();
    wait_until("the mesh session", T60, || {
        session(&lab, 2, "192.168.100.11").0 == "Established"
    });
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "before: {}", m.render());
    let before = session(&lab, 2, "192.168.100.11");
    let out = hijack(&lab, "h1-p1", "192.168.100.12", 64512, "192.168.100.11");
    assert!(
        !out.contains("received 1"),
        "h2 answered the pod's OPEN: {out}"
    );
    let out = hijack_with(
        &lab,
        "h1",
        &["192.168.100.12", "64512", "192.168.100.11", "254"],
    );
    assert!(
        !out.contains("received 1"),
        "h2 answered an OPEN that came with TTL 254: {out}"
    );
    let log = &lab.hosts()[1].log;
    wait_until("h2 says why it dropped the connection", T60, || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("dropped a connection: its SYN came with a TTL below 255")
    });
    assert_eq!(
        session(&lab, 2, "192.168.100.11"),
        before,
        "h2's session restarted"
    );
    assert!(!twill_routes(&lab, 2).contains("10.66.0.0"));
    assert!(twill_routes(&lab, 2).contains(&format!("{s1} via 192.168.100.11")));
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "after: {}", m.render());
}
