//! twill's speaker against real BIRD 2 in network namespaces (needs root, `bird2`).
//!
//! Every test builds its own namespaces (removed on drop, pass or fail), runs BIRD with its
//! own config, socket and pid file in a temporary directory, and runs twill's speaker (the
//! `speaker` example) inside a namespace with `ip netns exec`, reading its events as JSON
//! lines. Assertions read `birdc show route` / `show protocols` and twill's events.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use twill_testkit::{Netns, TempDir, require_root, run, veth};

fn speaker_bin() -> PathBuf {
    // tests run from target/<profile>/deps; cargo test builds examples next to it.
    let exe = std::env::current_exe().expect("test exe");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("examples/speaker");
    assert!(
        bin.exists(),
        "{} missing: run through `cargo test -p twill-bgp` (it builds the example)",
        bin.display()
    );
    bin
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// twill's speaker running in a namespace.
struct Twill {
    child: Child,
    stdin: ChildStdin,
    events: Arc<Mutex<Vec<Value>>>,
    _log: TempDir,
}

impl Twill {
    fn start(ns: &Netns, args: &[&str]) -> Twill {
        let log = TempDir::new("bgp-speaker");
        let err = std::fs::File::create(log.path().join("stderr")).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.name()])
            .arg(speaker_bin())
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn speaker");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    ev.lock().unwrap().push(v);
                }
            }
        });
        Twill {
            child,
            stdin,
            events,
            _log: log,
        }
    }

    fn pid(&self) -> Pid {
        // `ip netns exec` execs the program, so the child's pid is the speaker's.
        Pid::from_raw(self.child.id() as i32)
    }

    fn events(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// The latest best route event for `prefix`: Some(best) (Null when withdrawn).
    fn best(&self, prefix: &str) -> Option<Value> {
        self.events()
            .iter()
            .rev()
            .find(|e| e["event"] == "best_route" && e["prefix"] == prefix)
            .map(|e| e["best"].clone())
    }

    fn learned(&self, prefix: &str) -> Option<Value> {
        self.best(prefix)
            .filter(|b| b.is_object() && b["source"].is_object())
    }

    fn state(&self, peer: &str) -> Option<String> {
        self.events()
            .iter()
            .rev()
            .find(|e| e["event"] == "peer_state" && e["peer"] == peer)
            .and_then(|e| e["state"].as_str().map(str::to_string))
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn status(&mut self) -> Value {
        let before = self.events().len();
        self.command("status");
        let mut got = None;
        wait_until("status", Duration::from_secs(5), || {
            got = self.events()[before..]
                .iter()
                .find(|e| e["event"] == "status")
                .cloned();
            got.is_some()
        });
        got.unwrap()["status"].clone()
    }

    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Twill {
    fn drop(&mut self) {
        let _ = kill(self.pid(), Signal::SIGCONT);
        self.sigkill();
        if std::thread::panicking() {
            // The speaker's log is the first thing to read when a lab test fails.
            let log = std::fs::read_to_string(self._log.path().join("stderr")).unwrap_or_default();
            eprintln!("---- speaker stderr ----\n{log}");
        }
    }
}

/// Writes `conf` to file `name` in `dir` and has `program` parse it first (`program
/// flags... PATH`), so a mistake fails here with the daemon's message; the file's path.
fn checked_config(dir: &TempDir, name: &str, conf: &str, program: &str, flags: &[&str]) -> PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, conf).unwrap();
    let mut args = flags.to_vec();
    args.push(path.to_str().unwrap());
    let out = run(program, &args);
    assert!(
        out.status.success(),
        "bad {program} config: {}{}\n{conf}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// BIRD 2 in a namespace, in the foreground so the test owns the process.
struct Bird {
    child: Child,
    dir: TempDir,
}

impl Bird {
    fn start(ns: &Netns, conf: &str) -> Bird {
        let dir = TempDir::new("bird");
        let conf_path = checked_config(&dir, "bird.conf", conf, "bird", &["-p", "-c"]);
        let sock = dir.path().join("bird.sock");
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "bird", "-f", "-c"])
            .arg(&conf_path)
            .arg("-s")
            .arg(&sock)
            .arg("-P")
            .arg(dir.path().join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bird");
        let b = Bird { child, dir };
        wait_until("bird socket", Duration::from_secs(10), || sock.exists());
        b
    }

    fn birdc(&self, args: &[&str]) -> String {
        let sock = self.dir.path().join("bird.sock");
        let mut a = vec!["-s", sock.to_str().unwrap()];
        a.extend_from_slice(args);
        // birdc exits non-zero for "Network not found": read its output either way.
        String::from_utf8_lossy(&run("birdc", &a).stdout).into_owned()
    }

    fn route(&self, prefix: &str) -> String {
        self.birdc(&["show", "route", prefix, "all"])
    }

    fn has_route(&self, prefix: &str) -> bool {
        self.birdc(&["show", "route", prefix]).contains(prefix)
    }

    fn established(&self, proto: &str) -> bool {
        self.birdc(&["show", "protocols", proto])
            .contains("Established")
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- bird ----\n{}",
                self.birdc(&["show", "protocols", "all"])
            );
        }
        let _ = kill(self.pid(), Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bird_conf(router_id: &str, body: &str) -> String {
    format!(
        "router id {router_id};\nprotocol device {{ }}\n\
         protocol static s4 {{ ipv4; route 10.50.0.0/24 blackhole; }}\n\
         protocol static s6 {{ ipv6; route 2001:db8:50::/64 blackhole; }}\n{body}"
    )
}

/// A BGP protocol block with fast timers.
fn bird_bgp(name: &str, local: &str, las: u32, neighbor: &str, nas: u32, extra: &str) -> String {
    // BIRD needs an IPv6 next hop of its own for IPv6 routes over an IPv4 session: its
    // address on the link, ::fe in `pair`, ::<n> in `star`.
    let v6 = if local == "10.0.0.2" && nas != las {
        "2001:db8:ff::fe".to_string()
    } else {
        format!("2001:db8:ff::{}", local.rsplit('.').next().unwrap())
    };
    format!(
        "protocol bgp {name} {{\n  local {local} as {las};\n  neighbor {neighbor} as {nas};\n  \
         connect retry time 1; connect delay time 1; error wait time 1, 2;\n  \
         graceful restart on; direct;\n  {extra}\n  \
         ipv4 {{ import all; export all; gateway direct; }};\n  \
         ipv6 {{ import all; export all; gateway direct; next hop address {v6}; }};\n}}\n"
    )
}

/// Two namespaces on one link: twill at 10.0.0.1, BIRD at 10.0.0.2 (and IPv6 ::1 / ::fe).
fn pair() -> (Netns, Netns) {
    let t = Netns::new("bgpt");
    let r = Netns::new("bgpr");
    veth(&t, "vt", &r, "vr");
    t.ok(&["ip", "addr", "add", "10.0.0.1/24", "dev", "vt"]);
    r.ok(&["ip", "addr", "add", "10.0.0.2/24", "dev", "vr"]);
    t.ok(&[
        "ip",
        "addr",
        "add",
        "2001:db8:ff::1/64",
        "dev",
        "vt",
        "nodad",
    ]);
    r.ok(&[
        "ip",
        "addr",
        "add",
        "2001:db8:ff::fe/64",
        "dev",
        "vr",
        "nodad",
    ]);
    (t, r)
}

const T30: Duration = Duration::from_secs(30);

fn twill_ebgp_args(hold: &str, extra: &[&'static str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--asn",
        "65001",
        "--router-id",
        "10.0.0.1",
        "--listen",
        "0.0.0.0:179",
        "--connect-retry",
        "1",
        "--hold",
        hold,
        "--next-hop-v6",
        "2001:db8:ff::1",
        "--peer",
        "10.0.0.2,65002",
        "--originate",
        "10.44.1.0/24",
        "--originate",
        "2001:db8:44::/64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
#[ignore = "needs root"]
fn ebgp_with_bird_exchanges_routes_both_ways() {
    require_root();
    let (t, r) = pair();
    let bird = Bird::start(
        &r,
        &bird_conf(
            "10.0.0.2",
            &bird_bgp("twill", "10.0.0.2", 65002, "10.0.0.1", 65001, ""),
        ),
    );
    let mut tw = Twill::start(&t, &strs(&twill_ebgp_args("90", &[])));
    wait_until("session Established", T30, || bird.established("twill"));
    // twill's prefixes in BIRD, from AS 65001 with twill's address as next hop.
    wait_until("twill routes in BIRD", T30, || {
        bird.has_route("10.44.1.0/24") && bird.has_route("2001:db8:44::/64")
    });
    let r4 = bird.route("10.44.1.0/24");
    assert!(r4.contains("BGP.as_path: 65001"), "{r4}");
    assert!(r4.contains("BGP.next_hop: 10.0.0.1"), "{r4}");
    let r6 = bird.route("2001:db8:44::/64");
    // IPv6 over the IPv4 session: the configured global next hop plus the link-local
    // address of the shared link (RFC 2545).
    let twill_ll = link_local(&t, "vt");
    assert!(
        r6.contains(&format!("BGP.next_hop: 2001:db8:ff::1 {twill_ll}")),
        "{r6}"
    );
    // BIRD's static routes arrive at twill as best-route events.
    wait_until("BIRD routes at twill", T30, || {
        tw.learned("10.50.0.0/24").is_some() && tw.learned("2001:db8:50::/64").is_some()
    });
    let b4 = tw.learned("10.50.0.0/24").unwrap();
    assert_eq!(b4["attrs"]["next_hop"], "10.0.0.2");
    assert_eq!(b4["source"]["peer"], "10.0.0.2");
    assert_eq!(b4["attrs"]["as_path"][0]["asns"][0], 65002);
    let b6 = tw.learned("2001:db8:50::/64").unwrap();
    assert_eq!(b6["attrs"]["next_hop"], "2001:db8:ff::fe");
    // The status view counts what was exchanged.
    let st = tw.status();
    let p = &st["peers"][0];
    assert_eq!(p["state"], "Established", "{st}");
    assert_eq!(p["remote_as"], 65002);
    assert_eq!(p["prefixes"]["accepted"], 2, "{st}");
    assert_eq!(p["prefixes"]["sent"], 2, "{st}");
    // A prefix originated at run time appears, and a withdrawn one goes.
    tw.command("originate 10.44.2.0/24");
    wait_until("new prefix in BIRD", T30, || bird.has_route("10.44.2.0/24"));
    tw.command("withdraw 10.44.1.0/24");
    wait_until("withdrawn prefix gone from BIRD", T30, || {
        !bird.has_route("10.44.1.0/24")
    });
    // Route refresh: BIRD answers with its table again; the session stays up.
    tw.command("refresh 10.0.0.2");
    std::thread::sleep(Duration::from_millis(500));
    assert!(bird.established("twill"));
    assert_eq!(tw.state("10.0.0.2").as_deref(), Some("Established"));
}

/// Three namespaces on one bridge (in `hub`): addresses 10.0.0.<n>/24 for each.
fn star(names: &[&str]) -> (Netns, Vec<Netns>) {
    let hub = Netns::new("bgph");
    hub.ok(&["ip", "link", "add", "br0", "type", "bridge"]);
    hub.ok(&["ip", "link", "set", "br0", "up"]);
    let mut nodes = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let ns = Netns::new(n);
        let port = format!("p{i}");
        veth(&ns, "eth0", &hub, &port);
        hub.ok(&["ip", "link", "set", &port, "master", "br0"]);
        ns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("10.0.0.{}/24", i + 1),
            "dev",
            "eth0",
        ]);
        ns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("2001:db8:ff::{}/64", i + 1),
            "dev",
            "eth0",
            "nodad",
        ]);
        nodes.push(ns);
    }
    (hub, nodes)
}

fn ibgp_twill(ns: &Netns, me: u8, peers: &[(&str, bool)], originate: &str) -> Twill {
    let id = format!("10.0.0.{me}");
    let nh6 = format!("2001:db8:ff::{me}");
    let mut args: Vec<String> = vec![
        "--asn".into(),
        "65000".into(),
        "--router-id".into(),
        id,
        "--listen".into(),
        "0.0.0.0:179".into(),
        "--connect-retry".into(),
        "1".into(),
        "--next-hop-v6".into(),
        nh6,
        "--originate".into(),
        originate.into(),
    ];
    for (p, client) in peers {
        args.push("--peer".into());
        args.push(if *client {
            format!("{p},65000,client")
        } else {
            format!("{p},65000")
        });
    }
    if peers.iter().any(|(_, c)| *c) {
        args.push("--cluster-id".into());
        args.push("10.255.0.1".into());
    }
    Twill::start(ns, &strs(&args))
}

#[test]
#[ignore = "needs root"]
fn bird_route_reflector_reflects_between_two_twill_speakers() {
    require_root();
    let (_hub, nodes) = star(&["rr", "t1", "t2"]);
    let rr = format!(
        "{}{}",
        bird_bgp(
            "c1",
            "10.0.0.1",
            65000,
            "10.0.0.2",
            65000,
            "rr client; rr cluster id 1.1.1.1;"
        ),
        bird_bgp(
            "c2",
            "10.0.0.1",
            65000,
            "10.0.0.3",
            65000,
            "rr client; rr cluster id 1.1.1.1;"
        ),
    );
    let bird = Bird::start(&nodes[0], &bird_conf("10.0.0.1", &rr));
    let t1 = ibgp_twill(&nodes[1], 2, &[("10.0.0.1", false)], "10.44.2.0/24");
    let t2 = ibgp_twill(&nodes[2], 3, &[("10.0.0.1", false)], "10.44.3.0/24");
    wait_until("both sessions up", T30, || {
        bird.established("c1") && bird.established("c2")
    });
    wait_until("t1's prefix reflected to t2", T30, || {
        t2.learned("10.44.2.0/24").is_some()
    });
    let b = t2.learned("10.44.2.0/24").unwrap();
    assert_eq!(b["attrs"]["originator_id"], "10.0.0.2", "{b}");
    assert_eq!(
        b["attrs"]["cluster_list"],
        serde_json::json!(["1.1.1.1"]),
        "{b}"
    );
    assert_eq!(b["attrs"]["next_hop"], "10.0.0.2", "{b}");
    assert!(b["attrs"]["as_path"].as_array().unwrap().is_empty(), "{b}");
    wait_until("t2's prefix reflected to t1", T30, || {
        t1.learned("10.44.3.0/24").is_some()
    });
    assert_eq!(
        t1.learned("10.44.3.0/24").unwrap()["attrs"]["originator_id"],
        "10.0.0.3"
    );
    // BIRD's own routes reach both as plain iBGP routes.
    wait_until("BIRD static at t1", T30, || {
        t1.learned("10.50.0.0/24").is_some()
    });
    // Neither twill speaker got its own prefix back.
    assert!(t1.learned("10.44.2.0/24").is_none());
    assert!(t2.learned("10.44.3.0/24").is_none());
}

#[test]
#[ignore = "needs root"]
fn twill_route_reflector_reflects_between_bird_and_twill_clients() {
    require_root();
    let (_hub, nodes) = star(&["trr", "bird", "tc"]);
    let rr = ibgp_twill(
        &nodes[0],
        1,
        &[("10.0.0.2", true), ("10.0.0.3", true)],
        "10.44.1.0/24",
    );
    let bird = Bird::start(
        &nodes[1],
        &bird_conf(
            "10.0.0.2",
            &bird_bgp("twillrr", "10.0.0.2", 65000, "10.0.0.1", 65000, ""),
        ),
    );
    let client = ibgp_twill(&nodes[2], 3, &[("10.0.0.1", false)], "10.44.3.0/24");
    wait_until("BIRD session to twill RR", T30, || {
        bird.established("twillrr")
    });
    // BIRD's prefix reaches the twill client through the twill reflector.
    wait_until("BIRD prefix at the twill client", T30, || {
        client.learned("10.50.0.0/24").is_some()
    });
    let b = client.learned("10.50.0.0/24").unwrap();
    assert_eq!(b["attrs"]["originator_id"], "10.0.0.2", "{b}");
    assert_eq!(
        b["attrs"]["cluster_list"],
        serde_json::json!(["10.255.0.1"]),
        "{b}"
    );
    assert_eq!(b["attrs"]["next_hop"], "10.0.0.2", "{b}");
    // The twill client's prefix reaches BIRD with the reflection attributes.
    wait_until("twill client prefix in BIRD", T30, || {
        bird.has_route("10.44.3.0/24")
    });
    let r = bird.route("10.44.3.0/24");
    assert!(r.contains("BGP.originator_id: 10.0.0.3"), "{r}");
    assert!(r.contains("BGP.cluster_list: 10.255.0.1"), "{r}");
    assert!(r.contains("BGP.next_hop: 10.0.0.3"), "{r}");
    // The reflector's own prefix reaches both, without reflection attributes.
    wait_until("RR's own prefix in BIRD", T30, || {
        bird.has_route("10.44.1.0/24")
    });
    assert!(!bird.route("10.44.1.0/24").contains("originator_id"));
    wait_until("RR's own prefix at client", T30, || {
        client.learned("10.44.1.0/24").is_some()
    });
    assert!(client.learned("10.44.1.0/24").unwrap()["attrs"]["originator_id"].is_null());
    drop(rr);
}

#[test]
#[ignore = "needs root"]
fn graceful_restart_bird_keeps_twill_routes_across_a_sigkill() {
    require_root();
    let (t, r) = pair();
    let bird = Bird::start(
        &r,
        &bird_conf(
            "10.0.0.2",
            &bird_bgp("twill", "10.0.0.2", 65002, "10.0.0.1", 65001, ""),
        ),
    );
    let mut tw = Twill::start(&t, &strs(&twill_ebgp_args("90", &[])));
    wait_until("session Established", T30, || bird.established("twill"));
    wait_until("twill route in BIRD", T30, || {
        bird.has_route("10.44.1.0/24")
    });
    let since_before = bird.birdc(&["show", "protocols", "twill"]);

    // Watch BIRD's table continuously from another thread while twill dies and comes back.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sock = bird.dir.path().join("bird.sock");
    let watcher = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let (mut polls, mut missing, mut stale_seen, mut down_seen) = (0, 0, false, false);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = sock.to_str().unwrap();
                let out = String::from_utf8_lossy(
                    &run("birdc", &["-s", s, "show", "route", "10.44.1.0/24", "all"]).stdout,
                )
                .into_owned();
                polls += 1;
                if !out.contains("10.44.1.0/24") {
                    missing += 1;
                }
                let p = String::from_utf8_lossy(
                    &run("birdc", &["-s", s, "show", "protocols", "all", "twill"]).stdout,
                )
                .into_owned();
                if !p.contains("BGP state:          Established") {
                    down_seen = true;
                }
                // BIRD 2 keeps the routes (stale) while this shows, and has no per-route
                // stale flag in `show route`.
                if p.contains("Neighbor graceful restart active") {
                    stale_seen = true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (polls, missing, stale_seen, down_seen)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    tw.sigkill();
    std::thread::sleep(Duration::from_secs(2));
    let tw2 = Twill::start(&t, &strs(&twill_ebgp_args("90", &["--restarting"])));
    wait_until("session re-Established", T30, || {
        bird.established("twill") && tw2.state("10.0.0.2").as_deref() == Some("Established")
    });
    // Past End-of-RIB the route is fresh again; give BIRD a moment to finish its GR.
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (polls, missing, stale_seen, down_seen) = watcher.join().unwrap();
    assert!(polls > 20, "too few polls ({polls}) to mean anything");
    assert!(
        down_seen,
        "BIRD never saw the session go down: the restart did not happen"
    );
    assert!(stale_seen, "BIRD never ran graceful restart for twill");
    assert_eq!(
        missing, 0,
        "BIRD lost twill's route in {missing} of {polls} polls"
    );
    assert_ne!(since_before, bird.birdc(&["show", "protocols", "twill"]));
    assert!(bird.has_route("10.44.1.0/24"));
    // twill's End-of-RIB ends BIRD's graceful restart well before the 120 s restart time.
    wait_until(
        "BIRD's graceful restart to end",
        Duration::from_secs(10),
        || {
            !bird
                .birdc(&["show", "protocols", "all", "twill"])
                .contains("graceful restart active")
        },
    );
}

#[test]
#[ignore = "needs root"]
fn graceful_restart_route_not_readvertised_is_dropped_at_end_of_rib() {
    require_root();
    let (t, r) = pair();
    let bird = Bird::start(
        &r,
        &bird_conf(
            "10.0.0.2",
            &bird_bgp("twill", "10.0.0.2", 65002, "10.0.0.1", 65001, ""),
        ),
    );
    let mut tw = Twill::start(
        &t,
        &strs(&twill_ebgp_args("90", &["--originate", "10.44.9.0/24"])),
    );
    wait_until("both routes in BIRD", T30, || {
        bird.has_route("10.44.1.0/24") && bird.has_route("10.44.9.0/24")
    });
    tw.sigkill();
    std::thread::sleep(Duration::from_secs(1));
    // Still there (stale) while twill is away.
    assert!(bird.has_route("10.44.9.0/24"));
    let _tw2 = Twill::start(&t, &strs(&twill_ebgp_args("90", &["--restarting"])));
    wait_until("10.44.9.0/24 gone after End-of-RIB", T30, || {
        !bird.has_route("10.44.9.0/24")
    });
    assert!(bird.has_route("10.44.1.0/24"));
}

#[test]
#[ignore = "needs root"]
fn dead_peer_is_withdrawn_after_the_hold_time() {
    require_root();
    let (t, r) = pair();
    let bird = Bird::start(
        &r,
        &bird_conf(
            "10.0.0.2",
            &bird_bgp(
                "twill",
                "10.0.0.2",
                65002,
                "10.0.0.1",
                65001,
                "hold time 3;",
            ),
        ),
    );
    let tw = Twill::start(&t, &strs(&twill_ebgp_args("3", &[])));
    wait_until("BIRD route at twill", T30, || {
        tw.learned("10.50.0.0/24").is_some()
    });
    // BIRD stops without closing anything: only the hold timer can tell.
    kill(bird.pid(), Signal::SIGSTOP).unwrap();
    let start = Instant::now();
    wait_until(
        "withdrawal after hold time",
        Duration::from_secs(15),
        || tw.best("10.50.0.0/24").is_some_and(|b| b.is_null()),
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "withdrawn after {took:?} with a 3 s hold time"
    );
    assert_ne!(tw.state("10.0.0.2").as_deref(), Some("Established"));
    kill(bird.pid(), Signal::SIGCONT).unwrap();
    // And back: the session re-establishes by itself and the route returns.
    wait_until("route back after BIRD resumes", T30, || {
        tw.learned("10.50.0.0/24").is_some()
    });

    // The other direction: twill stops; BIRD withdraws twill's routes after its hold time.
    wait_until("twill route in BIRD", T30, || {
        bird.has_route("10.44.1.0/24")
    });
    kill(tw.pid(), Signal::SIGSTOP).unwrap();
    let start = Instant::now();
    wait_until(
        "BIRD withdraws after hold time",
        Duration::from_secs(15),
        || !bird.has_route("10.44.1.0/24"),
    );
    assert!(start.elapsed() < Duration::from_secs(8));
    kill(tw.pid(), Signal::SIGCONT).unwrap();
}

#[test]
#[ignore = "needs root"]
fn unconfigured_neighbour_is_refused_with_cease() {
    require_root();
    let (t, r) = pair();
    let _tw = Twill::start(
        &t,
        &[
            "--asn",
            "65001",
            "--router-id",
            "10.0.0.1",
            "--listen",
            "0.0.0.0:179",
            "--peer",
            "10.0.0.99,65002,passive",
        ],
    );
    // BIRD at 10.0.0.2 is not a configured peer.
    let bird = Bird::start(
        &r,
        &bird_conf(
            "10.0.0.2",
            &bird_bgp("twill", "10.0.0.2", 65002, "10.0.0.1", 65001, ""),
        ),
    );
    wait_until("BIRD sees the refusal", T30, || {
        let s = bird.birdc(&["show", "protocols", "all", "twill"]);
        s.contains("Connection rejected")
    });
    assert!(!bird.established("twill"));
}

/// GoBGP (`gobgpd`) in a namespace, its gRPC API on the namespace's loopback; driven with the
/// `gobgp` CLI.
struct GoBgp {
    child: Child,
    ns_name: String,
    dir: TempDir,
}

impl GoBgp {
    fn start(ns: &Netns, conf: &str) -> GoBgp {
        let dir = TempDir::new("gobgp");
        let conf_path = checked_config(&dir, "gobgpd.toml", conf, "gobgpd", &["-d", "-f"]);
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns.name(), "gobgpd", "-p", "-f"])
            .arg(&conf_path)
            .args(["--api-hosts", "127.0.0.1:50051", "--pprof-disable"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn gobgpd");
        let g = GoBgp {
            child,
            ns_name: ns.name().to_string(),
            dir,
        };
        wait_until("gobgpd API", T30, || g.gobgp(&["global"]).status.success());
        g
    }

    fn gobgp(&self, args: &[&str]) -> std::process::Output {
        let mut a = vec!["netns", "exec", &self.ns_name, "gobgp"];
        a.extend_from_slice(args);
        run("ip", &a)
    }

    fn gobgp_ok(&self, args: &[&str]) -> String {
        let out = self.gobgp(args);
        assert!(
            out.status.success(),
            "gobgp {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for GoBgp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
            eprintln!("---- gobgpd ----\n{log}");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gobgp_conf(asn: u32, router_id: &str, neighbour: &str, neighbour_as: u32) -> String {
    format!(
        "[global.config]\n  as = {asn}\n  router-id = \"{router_id}\"\n\n\
         [[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{neighbour}\"\n    \
         peer-as = {neighbour_as}\n  [neighbors.timers.config]\n    connect-retry = 1\n  \
         [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      \
         afi-safi-name = \"ipv4-unicast\"\n"
    )
}

/// RFC 4271 §5: GoBGP sends a route with standard, extended and large communities; twill
/// passes it on (eBGP in, iBGP out) and BIRD receives all three unchanged. twill's own event
/// shows the two it does not model carried with the Partial bit (flags 0xe0).
#[test]
#[ignore = "needs root"]
fn communities_of_every_kind_pass_through_twill_from_gobgp_to_bird() {
    require_root();
    let (_hub, nodes) = star(&["gob", "tw", "bird"]);
    let gobgp = GoBgp::start(&nodes[0], &gobgp_conf(65002, "10.0.0.1", "10.0.0.2", 65001));
    let tw = Twill::start(
        &nodes[1],
        &[
            "--asn",
            "65001",
            "--router-id",
            "10.0.0.2",
            "--listen",
            "0.0.0.0:179",
            "--connect-retry",
            "1",
            "--peer",
            "10.0.0.1,65002",
            "--peer",
            "10.0.0.3,65001",
        ],
    );
    let bird = Bird::start(
        &nodes[2],
        &bird_conf(
            "10.0.0.3",
            &bird_bgp("twill", "10.0.0.3", 65001, "10.0.0.2", 65001, ""),
        ),
    );
    gobgp.gobgp_ok(&[
        "global",
        "rib",
        "add",
        "-a",
        "ipv4",
        "10.60.0.0/24",
        "community",
        "65002:1,65002:2",
        "rt",
        "65002:7",
        "large-community",
        "65002:10:20",
    ]);
    wait_until("GoBGP's route at twill", T30, || {
        tw.learned("10.60.0.0/24").is_some()
    });
    let b = tw.learned("10.60.0.0/24").unwrap();
    let carried = b["attrs"]["unknown"].as_array().unwrap().clone();
    let codes: Vec<(u64, u64)> = carried
        .iter()
        .map(|a| (a["code"].as_u64().unwrap(), a["flags"].as_u64().unwrap()))
        .collect();
    assert_eq!(codes, vec![(16, 0xe0), (32, 0xe0)], "{b}");

    wait_until("GoBGP's route in BIRD through twill", T30, || {
        bird.has_route("10.60.0.0/24")
    });
    let r = bird.route("10.60.0.0/24");
    assert!(r.contains("BGP.as_path: 65002"), "{r}");
    assert!(r.contains("BGP.community: (65002,1) (65002,2)"), "{r}");
    assert!(r.contains("BGP.ext_community: (rt, 65002, 7)"), "{r}");
    assert!(r.contains("BGP.large_community: (65002, 10, 20)"), "{r}");
}

/// The IPv6 link-local address of `dev`, once duplicate address detection has passed (BIRD
/// ignores a tentative one).
fn link_local(ns: &Netns, dev: &str) -> String {
    let mut found = None;
    wait_until(
        &format!("a usable link-local address on {dev}"),
        T30,
        || {
            let v = ns.ip_json(&["-6", "addr", "show", "dev", dev, "scope", "link"]);
            found = v
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
                .filter(|a| a["tentative"].is_null())
                .find_map(|a| a["local"].as_str().map(str::to_string));
            found.is_some()
        },
    );
    found.unwrap()
}

/// RFC 4760 + RFC 2545 on an IPv6 session: twill and BIRD negotiate only IPv6 unicast;
/// twill's prefix reaches BIRD with twill's global address plus its link-local one as next
/// hop, BIRD's reaches twill with both of BIRD's; no IPv4 route crosses the session.
#[test]
#[ignore = "needs root"]
fn ipv6_session_with_bird_carries_global_and_link_local_next_hops() {
    require_root();
    let (t, r) = pair();
    let twill_ll = link_local(&t, "vt");
    let bird_ll = link_local(&r, "vr");
    let bird = Bird::start(
        &r,
        &bird_conf(
            "10.0.0.2",
            "protocol bgp twill6 {\n  local 2001:db8:ff::fe as 65002;\n  \
             neighbor 2001:db8:ff::1 as 65001;\n  \
             connect retry time 1; connect delay time 1; error wait time 1, 2;\n  direct;\n  \
             ipv6 { import all; export all; gateway direct; };\n}\n",
        ),
    );
    let tw = Twill::start(
        &t,
        &[
            "--asn",
            "65001",
            "--router-id",
            "10.0.0.1",
            "--listen",
            "[::]:179",
            "--connect-retry",
            "1",
            "--peer",
            "2001:db8:ff::fe,65002",
            "--originate",
            "2001:db8:44::/64",
            "--originate",
            "10.44.1.0/24",
        ],
    );
    wait_until("IPv6 session Established", T30, || {
        bird.established("twill6")
    });
    wait_until("twill's IPv6 prefix in BIRD", T30, || {
        bird.has_route("2001:db8:44::/64")
    });
    let r6 = bird.route("2001:db8:44::/64");
    assert!(
        r6.contains(&format!("BGP.next_hop: 2001:db8:ff::1 {twill_ll}")),
        "{r6}"
    );
    assert!(r6.contains("BGP.as_path: 65001"), "{r6}");
    wait_until("BIRD's IPv6 prefix at twill", T30, || {
        tw.learned("2001:db8:50::/64").is_some()
    });
    let b = tw.learned("2001:db8:50::/64").unwrap();
    assert_eq!(b["attrs"]["next_hop"], "2001:db8:ff::fe", "{b}");
    assert_eq!(b["attrs"]["next_hop_local"], bird_ll.as_str(), "{b}");
    assert_eq!(b["source"]["peer"], "2001:db8:ff::fe", "{b}");
    // Only IPv6 unicast was negotiated: no IPv4 prefix went either way.
    assert!(!bird.has_route("10.44.1.0/24"));
    assert!(tw.learned("10.50.0.0/24").is_none());
}

/// A BIRD iBGP client of twill's reflector over IPv6, announcing `prefix`.
fn bird_v6_client(n: u8, prefix: &str) -> String {
    format!(
        "router id 10.0.0.{n};\nprotocol device {{ }}\n\
         protocol static s6 {{ ipv6; route {prefix} blackhole; }}\n\
         protocol bgp twillrr {{\n  local 2001:db8:ff::{n} as 65000;\n  \
         neighbor 2001:db8:ff::1 as 65000;\n  \
         connect retry time 1; connect delay time 1; error wait time 1, 2;\n  direct;\n  \
         ipv6 {{ import all; export all; gateway direct; }};\n}}\n"
    )
}

/// RFC 4456 for IPv6: twill reflects IPv6 routes between two BIRD clients over IPv6
/// sessions, adding ORIGINATOR_ID and CLUSTER_LIST and leaving the next hop alone, and, as
/// all three share one link, the originator's link-local next hop too (RFC 2545).
#[test]
#[ignore = "needs root"]
fn twill_reflects_ipv6_routes_between_bird_clients_over_ipv6_sessions() {
    require_root();
    let (_hub, nodes) = star(&["trr6", "b6a", "b6b"]);
    let lls: Vec<String> = nodes.iter().map(|n| link_local(n, "eth0")).collect();
    let b2 = Bird::start(&nodes[1], &bird_v6_client(2, "2001:db8:52::/64"));
    let b3 = Bird::start(&nodes[2], &bird_v6_client(3, "2001:db8:53::/64"));
    let rr = Twill::start(
        &nodes[0],
        &[
            "--asn",
            "65000",
            "--router-id",
            "10.0.0.1",
            "--listen",
            "[::]:179",
            "--connect-retry",
            "1",
            "--cluster-id",
            "10.255.0.1",
            "--peer",
            "2001:db8:ff::2,65000,client",
            "--peer",
            "2001:db8:ff::3,65000,client",
            "--originate",
            "2001:db8:41::/64",
        ],
    );
    wait_until("both IPv6 sessions up", T30, || {
        b2.established("twillrr") && b3.established("twillrr")
    });
    wait_until("b2's prefix reflected to b3", T30, || {
        b3.has_route("2001:db8:52::/64")
    });
    let r = b3.route("2001:db8:52::/64");
    assert!(r.contains("BGP.originator_id: 10.0.0.2"), "{r}");
    assert!(r.contains("BGP.cluster_list: 10.255.0.1"), "{r}");
    let at_rr = rr.learned("2001:db8:52::/64").unwrap();
    assert_eq!(at_rr["attrs"]["next_hop"], "2001:db8:ff::2", "{at_rr}");
    // BIRD sent its link-local address too; reflected on the same link, it stays.
    assert_eq!(at_rr["attrs"]["next_hop_local"], lls[1].as_str(), "{at_rr}");
    assert!(
        r.contains(&format!("BGP.next_hop: 2001:db8:ff::2 {}", lls[1])),
        "{r}"
    );
    wait_until("b3's prefix reflected to b2", T30, || {
        b2.has_route("2001:db8:53::/64")
    });
    assert!(
        b2.route("2001:db8:53::/64")
            .contains("BGP.originator_id: 10.0.0.3")
    );
    // The reflector's own prefix: next hop twill's global and link-local addresses.
    wait_until("the reflector's prefix at b2", T30, || {
        b2.has_route("2001:db8:41::/64")
    });
    let own = b2.route("2001:db8:41::/64");
    assert!(
        own.contains(&format!("BGP.next_hop: 2001:db8:ff::1 {}", lls[0])),
        "{own}"
    );
    assert!(!own.contains("originator_id"), "{own}");
}
