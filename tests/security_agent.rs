//! The node agent's local surfaces and lifecycle under attack (issue 12, items 6, 7, 8, 10),
//! with real agents, real etcd and the real plugin in a lab (root only). Every lab here runs
//! under umask 000, the way the attacks were first reproduced. Each test asserts that the
//! attack fails and that legitimate traffic keeps flowing (ping matrix before and after, and a
//! new pod's ADD).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_lab::{Backend, Lab, LabSpec};
use twill_testkit::{random_suffix, require_root};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");
const NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

/// Removes the lab on drop, pass or fail.
struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = twill_lab::down(&self.0);
    }
}

/// Kills a helper process on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A lab of `nodes` VXLAN hosts with one pod each, built under umask 000 (agents, etcd and the
/// plugin inherit it), converged and with a clean ping matrix.
fn lab(nodes: u32) -> (Lab, Guard) {
    require_root();
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let name = format!("sa{}", random_suffix(4));
    let guard = Guard(name.clone());
    let spec = LabSpec::new(&name)
        .nodes(nodes)
        .backend(Backend::Vxlan)
        .pods_per_node(1);
    let lab = Lab::up(&spec, Path::new(TWILL)).unwrap_or_else(|e| panic!("lab up: {e:#}"));
    lab.wait_converged(Duration::from_secs(30)).unwrap();
    assert_matrix(&lab, "before the attack");
    (lab, guard)
}

fn assert_matrix(lab: &Lab, when: &str) {
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "ping matrix {when}:\n{}", m.render());
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// etcdctl against the lab's etcd (run in the underlay namespace, with the lab's TLS client
/// certificate).
fn etcdctl(lab: &Lab, args: &[&str]) -> std::process::Output {
    lab.etcdctl(args).unwrap()
}

/// The store's values under `prefix`, by key.
fn store_values(lab: &Lab, prefix: &str) -> BTreeMap<String, Value> {
    let out = etcdctl(lab, &["get", "--prefix", prefix, "-w", "json"]);
    assert!(out.status.success(), "etcdctl get: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let b64 = |s: &Value| decode_base64(s.as_str().unwrap_or(""));
    v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .map(|kv| {
                    let key = String::from_utf8(b64(&kv["key"])).unwrap();
                    let value = serde_json::from_slice(&b64(&kv["value"])).unwrap_or(Value::Null);
                    (key, value)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(val(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// This node's endpoint records in the store.
fn published_of(lab: &Lab, node: &str) -> BTreeMap<String, Value> {
    store_values(lab, "/twill/endpoints/")
        .into_iter()
        .filter(|(_, v)| v["node"] == node)
        .collect()
}

fn data_dir(lab: &Lab, i: u32) -> PathBuf {
    lab.state().hosts[i as usize - 1].data_dir.clone()
}

fn agent_pid(lab: &Lab, i: u32) -> u32 {
    lab.state().hosts[i as usize - 1].agent_pid.unwrap()
}

fn agent_log(lab: &Lab, i: u32) -> String {
    std::fs::read_to_string(&lab.state().hosts[i as usize - 1].log).unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs a Python script in host `i`'s namespace, as `user` (None: root).
fn python(lab: &Lab, i: u32, nobody: bool, script: &str, args: &[&str]) -> (bool, String) {
    let mut cmd: Vec<&str> = Vec::new();
    if nobody {
        cmd.extend_from_slice(&NOBODY);
    }
    // The system interpreter: one in root's home is not reachable for nobody.
    cmd.extend_from_slice(&["/usr/bin/python3", "-c", script]);
    cmd.extend_from_slice(args);
    let out = lab.exec(&format!("h{i}"), &cmd).unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Connects to the socket, sends one line, prints the answer (empty when closed without one)
/// or the connect error.
const ASK: &str = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect failed:", e.errno, e.strerror)
    sys.exit(3)
try:
    s.sendall(sys.argv[2].encode() + b"\n")
    print("answer:", s.makefile().readline().strip())
except OSError as e:
    print("answer: <closed>", e)
"#;

/// An unprivileged user under umask 000 can neither talk to the agent socket nor write an
/// endpoint record; and when root loosens the modes by mistake, the socket still refuses a
/// non-root peer (SO_PEERCRED) and the agent refuses a record that root does not own.
#[test]
#[ignore = "needs root"]
fn unprivileged_user_cannot_reach_the_socket_or_forge_an_endpoint() {
    let (mut lab, _g) = lab(2);
    let data = data_dir(&lab, 1);
    let sock = data.join("agent.sock");
    let eps = data.join("endpoints");
    for (p, want) in [
        (&data, 0o700),
        (&eps, 0o700),
        (&sock, 0o600),
        (&data.join("node.json"), 0o600),
        (&data.join("status.json"), 0o600),
    ] {
        assert_eq!(mode(p), want, "{} has mode {:o}", p.display(), mode(p));
    }
    // The lab's own directories above the data directory are open to everyone (umask 000),
    // so only the agent's modes stand between the user and its files.
    for dir in data.ancestors().skip(1) {
        if dir.starts_with("/run/twill") {
            let m = mode(dir);
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(m | 0o005)).unwrap();
        }
    }
    let sock_s = sock.to_str().unwrap();
    let add = |id: &str| format!(r#"{{"op":"add","containerId":"{id}"}}"#);

    // 1. The socket: not reachable.
    let (_, out) = python(&lab, 1, true, ASK, &[sock_s, &add("x")]);
    assert!(
        out.contains("connect failed: 13"),
        "nobody reached the socket: {out}"
    );
    // 2. The records: not writable.
    let forged = format!(
        r#"{{"namespace":"default","name":"forged","labels":{{"role":"admin"}},"addresses":["{}"],"node":"h1","interface":"tw0"}}"#,
        lab.pods()[0].ip4()
    );
    let write_record = format!(
        "open({:?}, 'w').write({forged:?})",
        eps.join("forged.json").to_str().unwrap()
    );
    let (ok, out) = python(&lab, 1, true, &write_record, &[]);
    assert!(
        !ok && out.contains("Permission denied"),
        "nobody wrote a record: {out}"
    );
    assert!(!eps.join("forged.json").exists());

    // 3. Root loosens the modes by mistake: the kernel lets nobody connect, the agent does not.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let existing = std::fs::read_dir(&eps)
        .unwrap()
        .flatten()
        .find_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.strip_suffix(".json").map(str::to_string)
        })
        .expect("the lab's pod has a record");
    let (_, out) = python(&lab, 1, true, ASK, &[sock_s, &add(&existing)]);
    assert!(
        out.contains("answer: <closed>") || out.trim() == "answer:",
        "a non-root peer got an answer: {out}"
    );
    assert!(agent_log(&lab, 1).contains("is not root"));
    // ... and a record nobody manages to write is not believed, even when root announces it.
    std::fs::set_permissions(&eps, std::fs::Permissions::from_mode(0o777)).unwrap();
    let (ok, out) = python(&lab, 1, true, &write_record, &[]);
    assert!(
        ok,
        "could not even plant the record with loose modes: {out}"
    );
    let (_, out) = python(&lab, 1, false, ASK, &[sock_s, &add("forged")]);
    assert!(
        out.contains(r#""ok":false"#) && out.contains("owned by uid 65534"),
        "the agent took a record nobody owns: {out}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        !store_values(&lab, "/twill/endpoints/").contains_key("/twill/endpoints/default/forged"),
        "the forged endpoint was published"
    );
    std::fs::remove_file(eps.join("forged.json")).unwrap();
    for (p, m) in [(&data, 0o700), (&eps, 0o700), (&sock, 0o600)] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    // Legitimate traffic: a new pod's ADD (through the socket) and the matrix.
    lab.add_pod(1, "default", "after", &labels(&[("app", "after")]))
        .expect("a real pod ADD after the attack");
    assert_matrix(&lab, "after the attack");
}

/// Holds up to N idle connections to the socket (reopening those the agent closes) and sends
/// one endless line; reports how many connections it holds and how far the line got.
const FLOOD: &str = r#"
import os, resource, select, socket, sys, threading, time
path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
sent = [0, "open"]
def huge():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    chunk = b"x" * 65536
    try:
        while sent[0] < 3 << 30:
            s.sendall(chunk)
            sent[0] += len(chunk)
        sent[1] = "all sent"
    except OSError as e:
        sent[1] = "closed by the agent"
threading.Thread(target=huge, daemon=True).start()
socks = {}
end = time.time() + secs
opened = closed = 0
last = 0
while time.time() < end:
    while len(socks) < n and time.time() < end:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            s.close()
            break
        socks[s.fileno()] = s
        opened += 1
    p = select.poll()
    for fd in socks:
        p.register(fd, select.POLLIN | select.POLLHUP)
    for fd, ev in p.poll(100):
        socks.pop(fd).close()
        closed += 1
    if time.time() - last > 0.5:
        last = time.time()
        print(f"held {len(socks)} opened {opened} closed {closed} line {sent[0]} {sent[1]}", flush=True)
"#;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Thousands of idle connections (reopened as fast as the agent closes them) and a 3 GiB line
/// from root in the host: a real pod ADD still completes during the attack, the agent's
/// descriptors and memory stay bounded, and the line is cut off early.
#[test]
#[ignore = "needs root"]
fn idle_connections_and_a_huge_line_do_not_stop_a_pod_add() {
    let (mut lab, _g) = lab(2);
    let pid = agent_pid(&lab, 1);
    let (fds_before, rss_before) = (fd_count(pid), rss_kib(pid));
    let sock = data_dir(&lab, 1).join("agent.sock");
    let ns = lab.host_ns(1);
    let report = tempfile::NamedTempFile::new().unwrap();
    let attacker = Killed(
        Command::new("ip")
            .args(["netns", "exec", &ns, "/usr/bin/python3", "-c", FLOOD])
            .args([sock.to_str().unwrap(), "5000", "40"])
            .stdout(Stdio::from(report.reopen().unwrap()))
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let last_report = || {
        std::fs::read_to_string(report.path())
            .unwrap()
            .lines()
            .last()
            .unwrap_or("")
            .to_string()
    };
    let field = |line: &str, name: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    wait_for(
        "the attack to open 2000 connections",
        Duration::from_secs(30),
        || field(&last_report(), "opened") >= 2000,
    );
    let mut max_fds = 0;
    let mut max_rss = 0;
    let mut sample = || {
        max_fds = max_fds.max(fd_count(pid));
        max_rss = max_rss.max(rss_kib(pid));
    };
    sample();
    // A real pod ADD (the plugin waits on the socket) while the attack goes on.
    let t = Instant::now();
    let added = lab.add_pod(1, "default", "during", &labels(&[("app", "during")]));
    let took = t.elapsed();
    sample();
    let during = last_report();
    for _ in 0..10 {
        sample();
        std::thread::sleep(Duration::from_millis(200));
    }
    let end = last_report();
    drop(attacker);
    let pod = added.unwrap_or_else(|e| panic!("pod ADD during the attack: {e:#}\n{during}"));
    eprintln!(
        "ADD took {took:?}; agent fds {fds_before} -> max {max_fds}, RSS {rss_before} KiB -> \
         max {max_rss} KiB; attacker: {end}"
    );
    assert!(
        max_fds <= fds_before + 128 + 32,
        "the agent's descriptors grew from {fds_before} to {max_fds}"
    );
    assert!(
        max_rss <= rss_before + 64 * 1024,
        "the agent's memory grew from {rss_before} KiB to {max_rss} KiB"
    );
    // The attack was real: far more connections than the cap were opened and closed by the
    // agent, and the line was cut off after a few buffers, not read to 3 GiB.
    assert!(field(&end, "closed") > 1000, "{end}");
    assert!(end.contains("closed by the agent"), "{end}");
    assert!(field(&end, "line") < 64 << 20, "{end}");
    assert!(lab.agent_alive(1));
    assert!(!pod.ip4().is_unspecified());
    assert_matrix(&lab, "after the attack");
}

/// `etcdctl del` of a node's lease: the agent leases the same subnet again and keeps its VTEP
/// and routes; pods keep talking; `twill status` shows a lease event.
#[test]
#[ignore = "needs root"]
fn lease_deleted_behind_the_agents_back_is_leased_again() {
    let (lab, _g) = lab(3);
    let pid = agent_pid(&lab, 1);
    let status = lab.host_status_json(1).unwrap();
    let subnet = status["subnet"].as_str().unwrap().to_string();
    let key = format!("/twill/leases/{}", subnet.replace('/', "-"));
    let link = |h: &str| {
        let out = lab
            .exec(h, &["ip", "-j", "link", "show", "twill.1"])
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()[0].clone()
    };
    let routes = |h: &str| {
        let out = lab
            .exec(h, &["ip", "-j", "route", "show", "proto", "117"])
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let mut dsts: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["dst"].as_str().unwrap().to_string())
            .collect();
        dsts.sort();
        dsts
    };
    let (link_before, routes_before) = (link("h1"), routes("h1"));
    assert_eq!(routes_before.len(), 2, "{routes_before:?}");
    // Pods keep pinging across the deletion: h2's pod to h1's pod, 10 per second.
    let to = lab
        .pods()
        .iter()
        .find(|p| p.host == 1)
        .unwrap()
        .ip4()
        .to_string();
    // (It ends by itself after 8 s, pass or fail.)
    let pinger = Command::new("ip")
        .args(["netns", "exec", &lab.pods()[1].netns])
        .args(["ping", "-n", "-q", "-i", "0.1", "-c", "80", &to])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let out = etcdctl(&lab, &["del", &key]);
    assert!(
        String::from_utf8_lossy(&out.stdout).trim() == "1",
        "etcdctl del: {out:?}"
    );
    wait_for("a lease event in status", Duration::from_secs(20), || {
        lab.host_status_json(1).unwrap()["leaseEvents"]
            .as_array()
            .is_some_and(|e| e.last().is_some_and(|e| e["leasedAgain"] == subnet))
    });
    let status = lab.host_status_json(1).unwrap();
    let event = &status["leaseEvents"][0];
    assert_eq!(event["event"], "deleted", "{status}");
    assert_eq!(event["subnet"], subnet);
    assert_eq!(status["subnet"], subnet);
    // The store holds the node's lease again, on the same subnet.
    wait_for(
        "the lease back in the store",
        Duration::from_secs(10),
        || {
            store_values(&lab, &key)
                .get(&key)
                .is_some_and(|v| v["node"] == "h1")
        },
    );
    // The peers route to it again.
    for h in ["h2", "h3"] {
        wait_for(
            &format!("{h} to route to h1"),
            Duration::from_secs(20),
            || routes(h).contains(&subnet),
        );
    }
    let out = pinger.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    let received = out
        .lines()
        .find_map(|l| {
            l.split(", ")
                .nth(1)?
                .strip_suffix(" received")?
                .parse::<u32>()
                .ok()
        })
        .unwrap_or(0);
    assert!(received >= 72, "pods stopped talking: {out}");
    // Nothing was torn down, and the agent is the same process.
    assert_eq!(agent_pid(&lab, 1), pid);
    assert!(lab.agent_alive(1), "the agent exited");
    assert_eq!(
        link("h1")["ifindex"],
        link_before["ifindex"],
        "VTEP recreated"
    );
    assert_eq!(link("h1")["address"], link_before["address"]);
    assert_eq!(routes("h1"), routes_before);
    assert!(data_dir(&lab, 1).join("node.json").exists());
    let log = agent_log(&lab, 1);
    assert!(log.contains("not by a leave"), "{log}");
    assert!(!log.contains("clearing local state"), "{log}");
    // `twill status` says so for people too.
    let out = lab
        .exec(
            "h1",
            &[
                TWILL,
                "status",
                "--data-dir",
                data_dir(&lab, 1).to_str().unwrap(),
            ],
        )
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deleted"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_matrix(&lab, "after the lease was deleted");
}

/// A pod added while etcd is down is published once etcd is back, without an agent restart,
/// so other nodes know it (and apply their policies to it).
#[test]
#[ignore = "needs root"]
fn pod_added_while_etcd_is_down_is_published_when_it_returns() {
    let (mut lab, _g) = lab(2);
    let pid = agent_pid(&lab, 1);
    let before = lab.host_status_json(2).unwrap()["policy"]["endpoints"]
        .as_u64()
        .unwrap();
    lab.stop_etcd().unwrap();
    wait_for("h1 to notice etcd is gone", Duration::from_secs(20), || {
        !lab.host_status(1).unwrap().in_sync
    });
    let pod = lab
        .add_pod(1, "default", "offline", &labels(&[("app", "offline")]))
        .expect("a pod ADD while etcd is down");
    lab.start_etcd().unwrap();
    lab.wait_converged(Duration::from_secs(30)).unwrap();
    wait_for(
        "the offline pod to be published",
        Duration::from_secs(30),
        || {
            published_of(&lab, "h1")
                .get("/twill/endpoints/default/offline")
                .is_some_and(|v| v["addresses"][0] == pod.ip4().to_string())
        },
    );
    wait_for("h2 to know the pod", Duration::from_secs(20), || {
        lab.host_status_json(2).unwrap()["policy"]["endpoints"].as_u64() == Some(before + 1)
    });
    assert_eq!(agent_pid(&lab, 1), pid);
    assert!(lab.agent_alive(1), "the agent was restarted or died");
    assert_matrix(&lab, "after etcd returned");
}

/// The agent runs out of descriptors (its RLIMIT_NOFILE lowered under its feet with prlimit):
/// the resync's read of the endpoint records fails, and nothing of the node is unpublished.
#[test]
#[ignore = "needs root"]
fn failed_read_of_the_records_unpublishes_nothing() {
    let (mut lab, _g) = lab(2);
    lab.add_pod(1, "default", "web", &labels(&[("app", "web")]))
        .unwrap();
    wait_for("h1's endpoints published", Duration::from_secs(20), || {
        published_of(&lab, "h1").len() == 2
    });
    let published = published_of(&lab, "h1");
    let pid = agent_pid(&lab, 1);
    let pid_s = pid.to_string();
    // The lowest free descriptor number: with the soft limit there, every open() fails.
    let used: std::collections::BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !used.contains(n)).unwrap();
    let limits = Command::new("prlimit")
        .args([
            "--pid",
            &pid_s,
            "--nofile",
            "--output",
            "SOFT,HARD",
            "--noheadings",
        ])
        .output()
        .unwrap();
    let limits = String::from_utf8_lossy(&limits.stdout).to_string();
    let mut it = limits.split_whitespace();
    let (soft, hard) = (
        it.next().unwrap().to_string(),
        it.next().unwrap().to_string(),
    );
    let set = |soft: &str| {
        let st = Command::new("prlimit")
            .args(["--pid", &pid_s, &format!("--nofile={soft}:{hard}")])
            .status()
            .unwrap();
        assert!(st.success());
    };
    struct Restore<F: FnMut()>(F);
    impl<F: FnMut()> Drop for Restore<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    set(&lowest_free.to_string());
    let restore = Restore(|| set(&soft));
    // The agent resyncs every 60 s.
    let failed = "a failed read is not an empty directory";
    let deadline = Instant::now() + Duration::from_secs(150);
    while !agent_log(&lab, 1).contains(failed) {
        assert!(Instant::now() < deadline, "no failed read in 150 s");
        assert_eq!(published_of(&lab, "h1"), published, "unpublished meanwhile");
        std::thread::sleep(Duration::from_secs(1));
    }
    // Give a wrong reconciliation time to act, then check again.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        published_of(&lab, "h1"),
        published,
        "unpublished after a failed read"
    );
    drop(restore);
    assert!(lab.agent_alive(1));
    let log = agent_log(&lab, 1);
    assert!(!log.contains("no such pod on this node any more"), "{log}");
    assert_eq!(published_of(&lab, "h1"), published);
    lab.add_pod(1, "default", "after", &labels(&[("app", "after")]))
        .expect("a pod ADD once descriptors are back");
    assert_matrix(&lab, "after the descriptors came back");
}

/// Another node's lease written over this node's key (`etcdctl put`): the subnet is not free
/// any more, so the agent leases a new one, keeps running and its VTEP, and says so; new pods
/// get addresses of the new subnet and reach the other nodes.
#[test]
#[ignore = "needs root"]
fn lease_taken_behind_the_agents_back_is_leased_anew() {
    let (mut lab, _g) = lab(2);
    let pid = agent_pid(&lab, 1);
    let subnet = lab.host_status_json(1).unwrap()["subnet"]
        .as_str()
        .unwrap()
        .to_string();
    let key = format!("/twill/leases/{}", subnet.replace('/', "-"));
    let vtep = |h: &str| {
        let out = lab
            .exec(h, &["ip", "-j", "link", "show", "twill.1"])
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()[0]["ifindex"].clone()
    };
    let vtep_before = vtep("h1");
    let ghost = serde_json::json!({
        "node": "ghost",
        "subnet": subnet,
        "publicNet": "192.0.2.99/24",
        "backend": "vxlan",
        "vtepMac": "02:00:00:00:00:99",
    });
    let out = etcdctl(&lab, &["put", &key, &ghost.to_string()]);
    assert!(out.status.success(), "etcdctl put: {out:?}");
    wait_for("a lease event in status", Duration::from_secs(20), || {
        lab.host_status_json(1).unwrap()["leaseEvents"]
            .as_array()
            .is_some_and(|e| e.last().is_some_and(|e| e["leasedAgain"].is_string()))
    });
    let status = lab.host_status_json(1).unwrap();
    let event = status["leaseEvents"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(event["event"], "taken", "{status}");
    let new_subnet = event["leasedAgain"].as_str().unwrap().to_string();
    assert_ne!(new_subnet, subnet, "{status}");
    assert_eq!(status["subnet"], new_subnet);
    let node_file: Value =
        serde_json::from_slice(&std::fs::read(data_dir(&lab, 1).join("node.json")).unwrap())
            .unwrap();
    assert_eq!(node_file["subnet"], new_subnet);
    let new_key = format!("/twill/leases/{}", new_subnet.replace('/', "-"));
    assert_eq!(store_values(&lab, &new_key)[&new_key]["node"], "h1");
    assert_eq!(store_values(&lab, &key)[&key]["node"], "ghost");
    assert_eq!(agent_pid(&lab, 1), pid);
    assert!(lab.agent_alive(1), "the agent exited");
    assert_eq!(vtep("h1"), vtep_before, "VTEP recreated");
    // A new pod on h1 lives in the new subnet and talks to h2's pod, both ways.
    let pod = lab
        .add_pod(1, "default", "anew", &labels(&[("app", "anew")]))
        .expect("a pod ADD after the re-lease");
    let net: Vec<&str> = new_subnet.split(['.', '/']).collect();
    assert!(
        pod.ip4()
            .to_string()
            .starts_with(&format!("{}.{}.{}.", net[0], net[1], net[2])),
        "{} is not in {new_subnet}",
        pod.ip4()
    );
    let h2_pod = lab.pods().iter().find(|p| p.host == 2).unwrap().clone();
    wait_for(
        "h2's pod to reach the new pod",
        Duration::from_secs(20),
        || {
            lab.exec(
                &h2_pod.name,
                &["ping", "-c", "1", "-W", "1", &pod.ip4().to_string()],
            )
            .unwrap()
            .status
            .success()
        },
    );
    // (h1's old pod keeps an address of the subnet "ghost" holds now: a taken subnet cannot be
    // kept, so the issue asks only for a new lease; the old pod is not probed.)
    let log = agent_log(&lab, 1);
    assert!(log.contains("was taken"), "{log}");
    assert!(!log.contains("clearing local state"), "{log}");
}

/// A fatal condition is an error exit (so `Restart=on-failure` restarts the agent), never 0:
/// here a data directory another user owns, which the agent refuses to keep state in (whoever
/// owns it could plant endpoint records).
#[test]
#[ignore = "needs root"]
fn agent_refuses_a_data_dir_another_user_owns_and_exits_non_zero() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    let store = format!("embedded:{}", dir.path().join("store.redb").display());
    // In a namespace of its own, should it ever get as far as the kernel.
    let ns = twill_testkit::Netns::new("sadd");
    let log = dir.path().join("agent.log");
    let mut agent = Killed(
        Command::new("ip")
            .args(["netns", "exec", ns.name(), TWILL])
            .args(["agent", "--store", &store, "--node-name", "n1"])
            .args(["--data-dir", data.to_str().unwrap()])
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let mut exited = None;
    wait_for("the agent to exit", Duration::from_secs(20), || {
        exited = agent.0.try_wait().unwrap();
        exited.is_some()
    });
    let out = exited.unwrap();
    let err = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.code(), Some(1), "{err}");
    assert!(err.contains("owned by uid 65534"), "{err}");
    assert!(!data.join("agent.sock").exists());
}
