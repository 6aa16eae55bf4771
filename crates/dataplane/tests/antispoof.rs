//! Anti-spoofing against the real kernel with real traffic, inside private
//! network namespaces (a "host" and "containers" attached by veths).

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use common::{Netns, median_of, require_root, veth};
use twill_dataplane::firewall::{allow_mac, forget_mac, forget_stale_macs, link_local, list_macs};
use twill_dataplane::{
    Mode, allow_source, ensure_antispoof_base, ensure_masquerade, forget_source, list_sources,
    source_allowed,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(s: &[&str]) -> Vec<IpAddr> {
    s.iter().map(|a| ip(a)).collect()
}

/// The elements of an anti-spoofing set as `nft -j` shows them: our own
/// netlink encoding of the concatenated keys is checked against nft's
/// decoding.
fn nft_elements(ns: &Netns, family: &str, set: &str) -> BTreeSet<(String, String)> {
    let j = ns.nft_json(&format!("list set {family} twill {set}"));
    let set = j["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|i| i.get("set"))
        .expect("set object");
    set.get("elem")
        .and_then(|e| e.as_array())
        .map(|elems| {
            elems
                .iter()
                .map(|e| {
                    let c = e["concat"].as_array().expect("concatenated element");
                    (
                        c[0].as_str().unwrap().to_string(),
                        c[1].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(p: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    p.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn rule_count(ns: &Netns, family: &str) -> usize {
    chain_rule_count(ns, family, "antispoof")
}

fn chain_rule_count(ns: &Netns, family: &str, chain: &str) -> usize {
    let j = ns.nft_json(&format!("list chain {family} twill {chain}"));
    j["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("rule").is_some())
        .count()
}

/// The MAC of `eth0` in a container.
fn pod_mac(c: &Netns) -> [u8; 6] {
    let j: serde_json::Value = serde_json::from_str(&c.sh("ip -j link show eth0")).unwrap();
    let text = j[0]["address"].as_str().unwrap();
    let v: Vec<u8> = text
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

fn mac_str(m: &[u8; 6]) -> String {
    twill_types::MacAddr(*m).to_string()
}

/// Binds bridge port `port` to the MAC of container `c` (what the plugin
/// does at ADD with the MAC it gave the container).
fn bind_mac(h: &Netns, port: &str, c: &Netns) {
    let mac = pod_mac(c);
    h.run(|| allow_mac(Mode::Bridge, port, mac))
        .unwrap_or_else(|e| panic!("allow_mac {port}: {e}"));
}

/// Without link-local entries (which `allow_mac` adds).
fn global(set: BTreeSet<(String, String)>) -> BTreeSet<(String, String)> {
    set.into_iter()
        .filter(|(_, a)| !a.starts_with("fe80:"))
        .collect()
}

fn base(h: &Netns, dir: &Path) {
    h.run(|| ensure_antispoof_base(dir))
        .unwrap_or_else(|e| panic!("ensure_antispoof_base: {e}"));
}

/// Host with bridge br0 (10.99.0.1/24, fd99::1/64) and containers attached
/// by veths whose host ends (`host_ifs`) are bridge ports.
fn bridged(host_ifs: &[&str]) -> (Netns, Vec<Netns>) {
    let h = Netns::new("bh");
    h.sh("ip link add br0 type bridge forward_delay 0");
    h.sh("ip addr add 10.99.0.1/24 dev br0");
    h.sh("ip link set br0 up");
    let cs = host_ifs
        .iter()
        .map(|hif| {
            let c = Netns::new("bc");
            veth(&h, hif, &c);
            h.sh(&format!("ip link set {hif} master br0"));
            c
        })
        .collect();
    (h, cs)
}

#[test]
#[ignore = "needs root"]
fn bridge_mode_ipv4_real_traffic() {
    require_root();
    let (h, cs) = bridged(&["tw1", "tw2", "ext0"]);
    let (c1, c2, c3) = (&cs[0], &cs[1], &cs[2]);
    c1.sh("ip addr add 10.99.0.2/24 dev eth0");
    c2.sh("ip addr add 10.99.0.3/24 dev eth0");
    c2.sh("ip addr add 10.99.0.9/24 dev eth0"); // not c2's to use
    c3.sh("ip addr add 10.99.0.4/24 dev eth0"); // on a port not named tw*
    c3.sh("ip addr add 10.99.0.8/24 dev eth0");

    assert!(
        c2.ping(Some("10.99.0.9"), "10.99.0.2", true),
        "control: spoofing works without anti-spoofing"
    );

    let dir = tempfile::tempdir().unwrap();
    base(&h, dir.path());
    h.run(|| {
        allow_source(Mode::Bridge, "tw1", &ips(&["10.99.0.2"]))?;
        allow_source(Mode::Bridge, "tw2", &ips(&["10.99.0.3"]))?;
        // re-adding is fine
        allow_source(Mode::Bridge, "tw2", &ips(&["10.99.0.3"]))
    })
    .unwrap();
    bind_mac(&h, "tw1", c1);
    bind_mac(&h, "tw2", c2);

    // Our hand-encoded keys, as nft decodes them.
    assert_eq!(
        nft_elements(&h, "bridge", "allowed4"),
        pairs(&[("tw1", "10.99.0.2"), ("tw2", "10.99.0.3")])
    );
    assert!(nft_elements(&h, "inet", "allowed4").is_empty());
    // ... and as we decode them (without the link-locals of the MAC bindings).
    let listed: Vec<(String, IpAddr)> = h
        .run(|| list_sources(Mode::Bridge))
        .unwrap()
        .into_iter()
        .filter(|(_, a)| a.is_ipv4())
        .collect();
    assert_eq!(
        listed,
        vec![
            ("tw1".to_string(), ip("10.99.0.2")),
            ("tw2".to_string(), ip("10.99.0.3"))
        ]
    );
    h.run(|| {
        assert!(source_allowed(Mode::Bridge, "tw2", ip("10.99.0.3")).unwrap());
        assert!(!source_allowed(Mode::Bridge, "tw2", ip("10.99.0.9")).unwrap());
        assert!(!source_allowed(Mode::Bridge, "tw1", ip("10.99.0.3")).unwrap());
        assert!(!source_allowed(Mode::Routed, "tw2", ip("10.99.0.3")).unwrap());
    });

    assert!(c1.ping(None, "10.99.0.3", true), "allowed sources talk");
    // Fresh neighbour caches, so the spoofed ping has to ARP with the
    // spoofed sender address too.
    c1.sh("ip neigh flush all");
    c2.sh("ip neigh flush all");
    assert!(
        !c2.ping(Some("10.99.0.9"), "10.99.0.2", false),
        "a spoofed source is dropped"
    );
    assert!(
        c1.sh("ip neigh show 10.99.0.9").trim().is_empty(),
        "the ARP request claiming 10.99.0.9 was dropped too"
    );
    assert!(
        c2.ping(None, "10.99.0.2", true),
        "the allowed address still works"
    );
    assert!(h.ping(None, "10.99.0.3", true), "host <-> container works");
    assert!(
        c3.ping(Some("10.99.0.8"), "10.99.0.2", true),
        "ports not named tw* are not filtered"
    );

    h.run(|| forget_source(Mode::Bridge, "tw2", &ips(&["10.99.0.3"])))
        .unwrap();
    assert!(
        !c2.ping(None, "10.99.0.2", false),
        "a forgotten source is dropped"
    );
    assert!(c1.ping(None, "10.99.0.1", true), "others are unaffected");
    // Idempotent, also with a mix of present and absent elements.
    h.run(|| {
        forget_source(Mode::Bridge, "tw2", &ips(&["10.99.0.3", "10.99.0.9"]))?;
        allow_source(Mode::Bridge, "tw2", &ips(&["10.99.0.3"]))?;
        forget_source(Mode::Bridge, "tw2", &ips(&["10.99.0.9", "10.99.0.3"]))
    })
    .unwrap();
    assert_eq!(
        nft_elements(&h, "bridge", "allowed4"),
        pairs(&[("tw1", "10.99.0.2")])
    );
}

#[test]
#[ignore = "needs root"]
fn bridge_mode_ipv6_real_traffic() {
    require_root();
    let (h, cs) = bridged(&["tw1", "tw2"]);
    let (c1, c2) = (&cs[0], &cs[1]);
    c1.sh("ip addr add fd99::2/64 dev eth0 nodad");
    c2.sh("ip addr add fd99::3/64 dev eth0 nodad");
    c2.sh("ip addr add fd99::9/64 dev eth0 nodad");
    c2.sh("ip addr add 10.99.0.3/24 dev eth0");

    assert!(
        c2.ping(Some("fd99::9"), "fd99::2", true),
        "control: spoofing works without anti-spoofing"
    );
    let dir = tempfile::tempdir().unwrap();
    base(&h, dir.path());
    h.run(|| {
        allow_source(Mode::Bridge, "tw1", &ips(&["fd99::2"]))?;
        // IPv4 and IPv6 in one call (one netlink transaction)
        allow_source(Mode::Bridge, "tw2", &ips(&["fd99::3", "10.99.0.3"]))
    })
    .unwrap();
    bind_mac(&h, "tw1", c1);
    bind_mac(&h, "tw2", c2);
    assert_eq!(
        global(nft_elements(&h, "bridge", "allowed6")),
        pairs(&[("tw1", "fd99::2"), ("tw2", "fd99::3")])
    );
    assert_eq!(
        nft_elements(&h, "bridge", "allowed4"),
        pairs(&[("tw2", "10.99.0.3")])
    );

    assert!(c1.ping(None, "fd99::3", true), "allowed sources talk");
    c1.sh("ip neigh flush all");
    c2.sh("ip neigh flush all");
    assert!(
        !c2.ping(Some("fd99::9"), "fd99::2", false),
        "a spoofed IPv6 source is dropped"
    );
    assert!(
        c2.ping(Some("fd99::3"), "fd99::2", true),
        "the allowed one works"
    );

    h.run(|| forget_source(Mode::Bridge, "tw2", &ips(&["fd99::3"])))
        .unwrap();
    c2.sh("ip neigh flush all");
    assert!(
        !c2.ping(Some("fd99::3"), "fd99::2", false),
        "a forgotten IPv6 source is dropped"
    );
    let listed: Vec<(String, IpAddr)> = h
        .run(|| list_sources(Mode::Bridge))
        .unwrap()
        .into_iter()
        .filter(|(_, a)| !matches!(a, IpAddr::V6(a) if a.segments()[0] == 0xfe80))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("tw1".to_string(), ip("fd99::2")),
            ("tw2".to_string(), ip("10.99.0.3"))
        ]
    );
}

/// Routed attachment: no bridge, /32 routes via each veth, forwarding host.
#[test]
#[ignore = "needs root"]
fn routed_mode_ipv4_real_traffic() {
    require_root();
    let h = Netns::new("rh");
    let c1 = Netns::new("rc");
    let c2 = Netns::new("rc");
    h.sh("sysctl -qw net.ipv4.ip_forward=1");
    for (c, hif, addr) in [(&c1, "tw1", "10.99.1.2"), (&c2, "tw2", "10.99.1.3")] {
        veth(&h, hif, c);
        h.sh(&format!("ip addr add 10.99.1.1/32 dev {hif}"));
        h.sh(&format!("ip route add {addr}/32 dev {hif}"));
        c.sh(&format!("ip addr add {addr}/32 dev eth0"));
        c.sh("ip route add 10.99.1.1/32 dev eth0");
        c.sh("ip route add default via 10.99.1.1 dev eth0");
    }
    // c2 also holds an address that is not its own; the host even routes
    // it back, so only anti-spoofing stands in the way.
    c2.sh("ip addr add 10.99.1.9/32 dev eth0");
    h.sh("ip route add 10.99.1.9/32 dev tw2");

    assert!(
        c2.ping(Some("10.99.1.9"), "10.99.1.2", true),
        "control: spoofing works without anti-spoofing"
    );
    let dir = tempfile::tempdir().unwrap();
    base(&h, dir.path());
    h.run(|| {
        allow_source(Mode::Routed, "tw1", &ips(&["10.99.1.2"]))?;
        allow_source(Mode::Routed, "tw2", &ips(&["10.99.1.3"]))
    })
    .unwrap();
    assert_eq!(
        nft_elements(&h, "inet", "allowed4"),
        pairs(&[("tw1", "10.99.1.2"), ("tw2", "10.99.1.3")])
    );
    assert!(nft_elements(&h, "bridge", "allowed4").is_empty());

    assert!(c1.ping(None, "10.99.1.3", true), "allowed sources talk");
    assert!(
        !c2.ping(Some("10.99.1.9"), "10.99.1.2", false),
        "a spoofed source is dropped"
    );
    assert!(
        c2.ping(None, "10.99.1.2", true),
        "the allowed one still works"
    );
    h.run(|| forget_source(Mode::Routed, "tw2", &ips(&["10.99.1.3"])))
        .unwrap();
    assert!(
        !c2.ping(None, "10.99.1.2", false),
        "a forgotten source is dropped"
    );
    assert!(c1.ping(None, "10.99.1.1", true), "others are unaffected");
}

/// Two plugin processes racing to create the base, then repairs.
#[test]
#[ignore = "needs root"]
fn base_is_race_safe_and_repaired_without_losing_elements() {
    require_root();
    let h = Netns::new("race");
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        for d in [d1.path(), d2.path()] {
            let (h, barrier) = (&h, &barrier);
            s.spawn(move || {
                h.run(|| {
                    barrier.wait();
                    ensure_antispoof_base(d)
                })
                .unwrap()
            });
        }
    });
    assert_eq!(rule_count(&h, "bridge"), 4);
    assert_eq!(rule_count(&h, "inet"), 6);
    assert_eq!(chain_rule_count(&h, "bridge", "as-na"), 6);

    h.run(|| allow_source(Mode::Bridge, "tw7", &ips(&["10.5.0.7", "fd05::7"])))
        .unwrap();
    // A flushed chain is restored; the sets (live containers) keep their
    // elements.
    h.sh("nft flush chain bridge twill antispoof");
    h.sh("nft flush chain bridge twill as-ns");
    base(&h, d1.path());
    assert_eq!(rule_count(&h, "bridge"), 4);
    assert_eq!(chain_rule_count(&h, "bridge", "as-ns"), 5);
    assert!(
        h.run(|| source_allowed(Mode::Bridge, "tw7", ip("10.5.0.7")))
            .unwrap()
    );
    assert!(
        h.run(|| source_allowed(Mode::Bridge, "tw7", ip("fd05::7")))
            .unwrap()
    );

    // After a full flush, adding elements says what to do; forgetting is
    // still fine; ensure_antispoof_base recreates everything.
    h.sh("nft flush ruleset");
    let err = h
        .run(|| allow_source(Mode::Bridge, "tw7", &ips(&["10.5.0.7"])))
        .unwrap_err();
    assert_eq!(err.errno(), Some(libc::ENOENT));
    assert!(err.to_string().contains("ensure_antispoof_base"), "{err}");
    h.run(|| forget_source(Mode::Bridge, "tw7", &ips(&["10.5.0.7"])))
        .unwrap();
    assert!(h.run(|| list_sources(Mode::Routed)).unwrap().is_empty());
    base(&h, d1.path());
    h.run(|| allow_source(Mode::Routed, "tw7", &ips(&["10.5.0.7"])))
        .unwrap();
    assert_eq!(
        nft_elements(&h, "inet", "allowed4"),
        pairs(&[("tw7", "10.5.0.7")])
    );

    let err = h
        .run(|| allow_source(Mode::Routed, "eth0", &ips(&["10.5.0.7"])))
        .unwrap_err();
    assert!(
        err.to_string().contains("does not start with \"tw\""),
        "{err}"
    );
}

/// Per-call cost of the hot paths (run with --nocapture to see the numbers).
#[test]
#[ignore = "needs root"]
fn timings() {
    require_root();
    let h = Netns::new("time");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    base(&h, dir);
    let masq: Vec<ipnet::IpNet> = vec!["10.88.0.0/16".parse().unwrap()];
    h.run(|| {
        ensure_masquerade(dir, "timing", &masq).unwrap();
        let mut i = 0u32;
        let addr = |i: u32| IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        let allow_new = median_of(200, || {
            i += 1;
            allow_source(Mode::Bridge, "tw1", &[addr(i)]).unwrap();
        });
        let allow_again = median_of(200, || {
            allow_source(Mode::Bridge, "tw1", &[addr(7)]).unwrap();
        });
        let check = median_of(200, || {
            assert!(source_allowed(Mode::Bridge, "tw1", addr(7)).unwrap());
        });
        let mut j = 0u32;
        let forget = median_of(200, || {
            j += 1;
            forget_source(Mode::Bridge, "tw1", &[addr(j)]).unwrap();
        });
        let forget_absent = median_of(200, || {
            forget_source(Mode::Bridge, "tw1", &[addr(7), addr(8)]).unwrap();
        });
        for k in 0..200 {
            allow_source(Mode::Routed, "tw2", &[addr(k)]).unwrap();
        }
        let list = median_of(20, || {
            assert_eq!(list_sources(Mode::Routed).unwrap().len(), 200);
        });
        let base_noop = median_of(200, || {
            ensure_antispoof_base(dir).unwrap();
        });
        let masq_noop = median_of(200, || ensure_masquerade(dir, "timing", &masq).unwrap());
        println!("median per call (200 calls each):");
        println!("  allow_source (new element)      {allow_new:?}");
        println!("  allow_source (already present)  {allow_again:?}");
        println!("  source_allowed                  {check:?}");
        println!("  forget_source (present)         {forget:?}");
        println!("  forget_source (2 absent)        {forget_absent:?}");
        println!("  list_sources (200 elements)     {list:?}");
        println!("  ensure_antispoof_base (no-op)   {base_noop:?}");
        println!("  ensure_masquerade (no-op)       {masq_noop:?}");
        // Generous bounds (a loaded 2-core CI box): these must never spawn nft.
        for (what, d) in [
            ("allow_source", allow_new),
            ("forget_source", forget),
            ("ensure_antispoof_base", base_noop),
            ("ensure_masquerade", masq_noop),
        ] {
            assert!(d.as_micros() < 2000, "{what} median {d:?}");
        }
    });
}

// ---- L2 attacks with real frames ---------------------------------------------------

/// Runs a scapy script in a namespace (the Debian python3-scapy, for /usr/bin/python3).
fn scapy(ns: &Netns, code: &str) -> String {
    let script = format!("from scapy.all import *\nconf.verb = 0\n{code}\n");
    let out = ns.cmd(&["/usr/bin/python3", "-c", &script]);
    assert!(
        out.status.success(),
        "scapy in {}: {}{}\n{script}",
        ns.name,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` until it is true or `secs` pass; returns the last answer.
fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

struct Pod {
    ns: Netns,
    port: &'static str,
    mac: [u8; 6],
    v4: String,
    v6: String,
    ll: String,
}

/// Host (bridge br0: 10.99.0.1/24, fd99::1/64) and four pods on ports tw1..tw4
/// (10.99.0.2.., fd99::2..). With `protect`, twill's anti-spoofing binds
/// every port to its pod's addresses and MAC.
fn l2_lab(protect: bool) -> (Netns, Vec<Pod>, tempfile::TempDir) {
    let ports = ["tw1", "tw2", "tw3", "tw4"];
    let (h, cs) = bridged(&ports);
    h.sh("ip addr add fd99::1/64 dev br0 nodad");
    let dir = tempfile::tempdir().unwrap();
    if protect {
        base(&h, dir.path());
    }
    let mut pods = Vec::new();
    for (i, (c, port)) in cs.into_iter().zip(ports).enumerate() {
        let v4 = format!("10.99.0.{}", i + 2);
        let v6 = format!("fd99::{}", i + 2);
        c.sh(&format!("ip addr add {v4}/24 dev eth0"));
        c.sh(&format!("ip addr add {v6}/64 dev eth0 nodad"));
        let mac = pod_mac(&c);
        if protect {
            h.run(|| allow_source(Mode::Bridge, port, &ips(&[&v4, &v6])))
                .unwrap();
            bind_mac(&h, port, &c);
        }
        let ll = link_local(&mac).to_string();
        pods.push(Pod {
            ns: c,
            port,
            mac,
            v4,
            v6,
            ll,
        });
    }
    for p in &pods {
        // The kernel made the EUI-64 link-local we bound; wait for its DAD.
        assert!(
            eventually(20, || {
                let out = p.ns.sh("ip -6 addr show dev eth0 scope link");
                out.contains(&format!("{}/64", p.ll)) && !out.contains("tentative")
            }),
            "{}: link-local {} not ready: {}",
            p.ns.name,
            p.ll,
            p.ns.sh("ip -6 addr show dev eth0")
        );
    }
    (h, pods, dir)
}

/// Legitimate traffic: every pod reaches every other pod and the host on
/// both families, over fresh neighbour caches (ARP and NDP resolution).
fn assert_legit(h: &Netns, pods: &[Pod], when: &str) {
    h.sh("ip neigh flush dev br0");
    for p in pods {
        p.ns.sh("ip neigh flush dev eth0");
    }
    for p in pods {
        for dst in ["10.99.0.1", "fd99::1"] {
            assert!(p.ns.ping(None, dst, true), "{when}: {} -> {dst}", p.port);
        }
        for q in pods {
            if q.port != p.port {
                assert!(
                    p.ns.ping(None, &q.v4, true),
                    "{when}: {} -> {}",
                    p.port,
                    q.v4
                );
                assert!(
                    p.ns.ping(None, &q.v6, true),
                    "{when}: {} -> {}",
                    p.port,
                    q.v6
                );
            }
        }
        let ll = format!("{}%br0", p.ll);
        assert!(h.ping(None, &ll, true), "{when}: host -> {ll}");
    }
}

/// The link-layer address the host's neighbour entry for `addr` holds.
fn host_lladdr(h: &Netns, addr: &str) -> String {
    let j: serde_json::Value =
        serde_json::from_str(&h.sh(&format!("ip -j neigh show {addr} dev br0"))).unwrap();
    j[0]["lladdr"].as_str().unwrap_or("").to_string()
}

/// The port the bridge forwards `mac` to.
fn fdb_port(h: &Netns, mac: &[u8; 6]) -> String {
    let j: serde_json::Value = serde_json::from_str(&h.sh("bridge -j fdb show br br0")).unwrap();
    let mac = mac_str(mac);
    j.as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == mac.as_str() && e.get("vlan").is_none())
        .and_then(|e| e["ifname"].as_str())
        .unwrap_or("")
        .to_string()
}

/// Sends `frames` from `attacker` until `worked` says the attack shows (for
/// at most `secs`; once when `secs` is 0). Re-sending makes the control
/// runs immune to a victim that refreshes its own entry meanwhile.
fn attack(
    secs: u64,
    attacker: &Pod,
    other: &Pod,
    frames: &str,
    mut worked: impl FnMut() -> bool,
) -> bool {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        scapy(&attacker.ns, frames);
        settle(attacker, other);
        if worked() {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
    }
}

/// Something legitimate that travels the attacker's path after its attack
/// frames: once it is answered, the attack frames have been processed.
fn settle(attacker: &Pod, other: &Pod) {
    let _ = attacker.ns.ping(None, &other.v4, true);
    let _ = attacker.ns.ping(None, &other.v6, true);
}

/// A UDP listener on `port` in `ns` that reports every source port it hears
/// until it hears `marker` (or 20 s pass).
fn udp_listener(ns: &Netns, v6: bool, port: u16, marker: u16) -> std::process::Child {
    let (fam, any) = if v6 {
        ("AF_INET6", "'::'")
    } else {
        ("AF_INET", "''")
    };
    let code = format!(
        "import socket, sys, time\n\
         s = socket.socket(socket.{fam}, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
         s.bind(({any}, {port}))\n\
         s.settimeout(1)\n\
         print('ready', flush=True)\n\
         seen = []\n\
         end = time.time() + 20\n\
         while time.time() < end:\n\
         \x20   try:\n\
         \x20       d, a = s.recvfrom(2000)\n\
         \x20   except socket.timeout:\n\
         \x20       continue\n\
         \x20   seen.append(a[1])\n\
         \x20   if a[1] == {marker}:\n\
         \x20       break\n\
         print(' '.join(map(str, seen)), flush=True)\n"
    );
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, "/usr/bin/python3", "-c", &code])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(child.stdout.as_mut().unwrap());
    r.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    child
}

fn listener_heard(child: std::process::Child) -> Vec<u16> {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// What each attack achieved.
#[derive(Debug, Default, PartialEq)]
struct Achieved {
    garp_repoints_host: bool,
    na_repoints_host: bool,
    na_link_local_repoints_host: bool,
    ns_spoof_repoints_host: bool,
    ra_reaches_pod: bool,
    dhcp4_offer_reaches_pod: bool,
    dhcp6_reply_reaches_pod: bool,
    mac_theft_moves_fdb: bool,
    victim_keeps_traffic: bool,
}

/// Plays every L2 attack from pod 3 against pods 2 and 4, observing the
/// host and pod 1. Without `protect`, it shows what each attack does.
// Outcomes are filled in one attack at a time, as the attacks run.
#[allow(clippy::field_reassign_with_default)]
fn l2_attacks(protect: bool) -> Achieved {
    let (h, pods, _dir) = l2_lab(protect);
    let (p1, p2, p3, p4) = (&pods[0], &pods[1], &pods[2], &pods[3]);
    assert_legit(&h, &pods, "before the attacks");
    // The host knows the victims (entries to repoint).
    for dst in [&p2.v4, &p2.v6, &p4.v6] {
        assert!(h.ping(None, dst, true), "host -> {dst}");
    }
    assert!(h.ping(None, &format!("{}%br0", p2.ll), true));
    let am = mac_str(&p3.mac);
    let poll = if protect { 0 } else { 10 };
    let mut got = Achieved::default();

    // Gratuitous ARP claiming pod 2's IPv4 address.
    got.garp_repoints_host = attack(
        poll,
        p3,
        p1,
        &format!(
            "sendp(Ether(src='{am}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=2, hwsrc='{am}', psrc='{v}', \
             hwdst='ff:ff:ff:ff:ff:ff', pdst='{v}'), iface='eth0', count=3)\n\
             sendp(Ether(src='{am}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{am}', psrc='{v}', \
             hwdst='00:00:00:00:00:00', pdst='{v}'), iface='eth0', count=3)",
            v = p2.v4
        ),
        || host_lladdr(&h, &p2.v4) == am,
    );

    // Unsolicited, overriding neighbour advertisements for pod 2's addresses,
    // from pod 3's own global and link-local source.
    for (target, field) in [(&p2.v6, 0), (&p2.ll, 1)] {
        let hit = attack(
            poll,
            p3,
            p1,
            &format!(
                "for src in ['{own}', '{ll}']:\n\
                 \x20   sendp(Ether(src='{am}', dst='33:33:00:00:00:01')/IPv6(src=src, dst='ff02::1', hlim=255)/\
                 ICMPv6ND_NA(tgt='{target}', R=0, S=0, O=1)/ICMPv6NDOptDstLLAddr(lladdr='{am}'), iface='eth0', count=3)",
                own = p3.v6,
                ll = p3.ll
            ),
            || host_lladdr(&h, target) == am,
        );
        if field == 0 {
            got.na_repoints_host = hit;
        } else {
            got.na_link_local_repoints_host = hit;
        }
    }

    // A neighbour solicitation from pod 4's address carrying pod 3's MAC.
    got.ns_spoof_repoints_host = attack(
        poll,
        p3,
        p1,
        &format!(
            "sendp(Ether(src='{am}', dst='33:33:ff:00:00:01')/IPv6(src='{v}', dst='ff02::1:ff00:1', hlim=255)/\
             ICMPv6ND_NS(tgt='fd99::1')/ICMPv6NDOptSrcLLAddr(lladdr='{am}'), iface='eth0', count=3)",
            v = p4.v6
        ),
        || host_lladdr(&h, &p4.v6) == am,
    );

    // A router advertisement offering a prefix and a default route.
    got.ra_reaches_pod = attack(
        poll,
        p3,
        p1,
        &format!(
            "sendp(Ether(src='{am}', dst='33:33:00:00:00:01')/IPv6(src='{ll}', dst='ff02::1', hlim=255)/\
             ICMPv6ND_RA(routerlifetime=1800)/ICMPv6NDOptPrefixInfo(prefix='2001:db8:99::', prefixlen=64, L=1, A=1)/\
             ICMPv6NDOptSrcLLAddr(lladdr='{am}'), iface='eth0', count=3)",
            ll = p3.ll
        ),
        || !p1.ns.sh("ip -6 route show proto ra").trim().is_empty(),
    );

    // DHCP server replies (then a marker from another port that must arrive).
    let l = udp_listener(&p1.ns, false, 68, 6767);
    scapy(
        &p3.ns,
        &format!(
            "for sp in [67, 67, 6767]:\n\
             \x20   sendp(Ether(src='{am}', dst='ff:ff:ff:ff:ff:ff')/IP(src='{v}', dst='255.255.255.255')/\
             UDP(sport=sp, dport=68)/BOOTP(op=2, yiaddr='10.99.0.77')/DHCP(options=[('message-type', 'offer'), 'end']), iface='eth0')",
            v = p3.v4
        ),
    );
    let heard = listener_heard(l);
    assert!(heard.contains(&6767), "the marker must arrive: {heard:?}");
    got.dhcp4_offer_reaches_pod = heard.contains(&67);
    let l = udp_listener(&p1.ns, true, 546, 5470);
    scapy(
        &p3.ns,
        &format!(
            "for sp in [547, 547, 5470]:\n\
             \x20   sendp(Ether(src='{am}', dst='33:33:00:00:00:01')/IPv6(src='{ll}', dst='ff02::1')/\
             UDP(sport=sp, dport=546)/DHCP6_Reply(), iface='eth0')",
            ll = p3.ll
        ),
    );
    let heard = listener_heard(l);
    assert!(heard.contains(&5470), "the marker must arrive: {heard:?}");
    got.dhcp6_reply_reaches_pod = heard.contains(&547);

    // Pod 3 takes pod 2's MAC and speaks with it.
    assert_eq!(fdb_port(&h, &p2.mac), p2.port);
    let vm = mac_str(&p2.mac);
    p3.ns.sh(&format!("ip link set eth0 address {vm}"));
    scapy(
        &p3.ns,
        &format!(
            "sendp(Ether(src='{vm}', dst='ff:ff:ff:ff:ff:ff')/ARP(op=1, hwsrc='{vm}', psrc='{v}', pdst='10.99.0.1'), iface='eth0', count=5)",
            v = p3.v4
        ),
    );
    let _ = p3.ns.ping(None, "10.99.0.1", false);
    got.mac_theft_moves_fdb = eventually(poll, || fdb_port(&h, &p2.mac) == p3.port);
    // Without protection pod 3 now receives what is meant for pod 2 (and may
    // answer it in pod 2's name): this looks only at where frames go.
    got.victim_keeps_traffic = fdb_port(&h, &p2.mac) == p2.port && p1.ns.ping(None, &p2.v4, true);
    if protect {
        p3.ns.sh(&format!("ip link set eth0 address {am}"));
        assert_legit(&h, &pods, "after the attacks");
        assert_eq!(
            host_lladdr(&h, &p2.v6),
            vm,
            "the host still reaches pod 2's MAC"
        );
    }
    got
}

#[test]
#[ignore = "needs root"]
fn bridge_mode_l2_attacks_work_without_protection() {
    require_root();
    let got = l2_attacks(false);
    assert_eq!(
        got,
        Achieved {
            garp_repoints_host: true,
            na_repoints_host: true,
            na_link_local_repoints_host: true,
            ns_spoof_repoints_host: true,
            ra_reaches_pod: true,
            dhcp4_offer_reaches_pod: true,
            dhcp6_reply_reaches_pod: true,
            mac_theft_moves_fdb: true,
            victim_keeps_traffic: false,
        },
        "control: every attack must work on a bare bridge, or the protected run proves nothing"
    );
}

#[test]
#[ignore = "needs root"]
fn bridge_mode_l2_attacks_fail_with_protection() {
    require_root();
    let got = l2_attacks(true);
    assert_eq!(
        got,
        Achieved {
            victim_keeps_traffic: true,
            ..Achieved::default()
        }
    );
}

fn macs_of(h: &Netns) -> Vec<(String, [u8; 6])> {
    h.run(|| list_macs(Mode::Bridge)).unwrap()
}

/// Link-local entries of `bridge twill allowed6`, as nft shows them.
fn link_locals(h: &Netns) -> BTreeSet<(String, String)> {
    nft_elements(h, "bridge", "allowed6")
        .into_iter()
        .filter(|(_, a)| a.starts_with("fe80:"))
        .collect()
}

#[test]
#[ignore = "needs root"]
fn mac_bindings_forget_exactly_their_port_and_are_rebuilt_from_the_kernel() {
    require_root();
    let (h, cs) = bridged(&["tw1", "tw2", "tw3"]);
    let dir = tempfile::tempdir().unwrap();
    base(&h, dir.path());
    let mut want = Vec::new();
    for (i, (c, port)) in cs.iter().zip(["tw1", "tw2", "tw3"]).enumerate() {
        let v4 = format!("10.99.0.{}", i + 2);
        c.sh(&format!("ip addr add {v4}/24 dev eth0"));
        h.run(|| allow_source(Mode::Bridge, port, &ips(&[&v4])))
            .unwrap();
        bind_mac(&h, port, c);
        want.push((port.to_string(), pod_mac(c)));
    }
    assert_eq!(macs_of(&h), want);
    // Our keys as nft decodes them: MAC, link-local, and the raw ND sets.
    let j = h.nft_json("list set bridge twill allowedmac");
    let text = j.to_string();
    for (_, m) in &want {
        assert!(text.contains(&mac_str(m)), "{text}");
    }
    let lls: BTreeSet<(String, String)> = want
        .iter()
        .map(|(p, m)| (p.clone(), link_local(m).to_string()))
        .collect();
    assert_eq!(link_locals(&h), lls);
    let nd = h.sh("nft list set bridge twill ndlladdr");
    let hex: String = want[1].1.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        nd.contains(&format!("0x{}", hex.trim_start_matches('0'))),
        "{nd}"
    );
    assert!(cs[0].ping(None, "10.99.0.3", true));

    // DEL of tw2: its binding (MAC, ND lladdr, link-local) goes, no other.
    h.run(|| forget_mac(Mode::Bridge, "tw2")).unwrap();
    h.run(|| forget_mac(Mode::Bridge, "tw2")).unwrap(); // idempotent
    assert_eq!(macs_of(&h), vec![want[0].clone(), want[2].clone()]);
    let mut lls2 = lls.clone();
    lls2.retain(|(p, _)| p != "tw2");
    assert_eq!(link_locals(&h), lls2);
    assert!(
        !h.sh("nft list set bridge twill ndlladdr")
            .contains(&hex[1..])
    );
    assert!(
        !cs[1].ping(None, "10.99.0.2", false),
        "an unbound port is dropped"
    );
    assert!(cs[0].ping(None, "10.99.0.4", true), "others are unaffected");

    // GC: bindings of interfaces that are gone, and only those.
    h.run(|| allow_mac(Mode::Bridge, "tw2", want[1].1)).unwrap();
    h.sh("ip link del tw3");
    h.run(|| forget_stale_macs(Mode::Bridge)).unwrap();
    assert_eq!(macs_of(&h), vec![want[0].clone(), want[1].clone()]);

    // A flushed ruleset: the bindings come back from the kernel (each
    // bridged tw* veth's peer MAC), the addresses from the caller.
    h.sh("nft flush ruleset");
    assert!(h.run(|| ensure_antispoof_base(dir.path())).unwrap());
    assert_eq!(macs_of(&h), vec![want[0].clone(), want[1].clone()]);
    h.run(|| {
        allow_source(Mode::Bridge, "tw1", &ips(&["10.99.0.2"]))?;
        allow_source(Mode::Bridge, "tw2", &ips(&["10.99.0.3"]))
    })
    .unwrap();
    assert!(cs[0].ping(None, "10.99.0.3", true), "traffic flows again");
}

/// The anti-spoofing ruleset of twill before MAC binding, as it wrote it.
const OLD_RULESET: &str = r#"add table bridge twill
add set bridge twill allowed4 { type ifname . ipv4_addr; }
add set bridge twill allowed6 { type ifname . ipv6_addr; }
add chain bridge twill antispoof { type filter hook prerouting priority -300; policy accept; }
flush chain bridge twill antispoof
add rule bridge twill antispoof iifname != "tw*" accept
add rule bridge twill antispoof ether type ip iifname . ip saddr != @allowed4 drop
add rule bridge twill antispoof ether type arp arp saddr ip != 0.0.0.0 iifname . arp saddr ip != @allowed4 drop
add rule bridge twill antispoof ether type ip6 ip6 saddr != { ::, fe80::/10 } iifname . ip6 saddr != @allowed6 drop
add table inet twill
add set inet twill allowed4 { type ifname . ipv4_addr; }
add set inet twill allowed6 { type ifname . ipv6_addr; }
add chain inet twill antispoof { type filter hook prerouting priority raw; policy accept; }
flush chain inet twill antispoof
add rule inet twill antispoof iifname != "tw*" accept
add rule inet twill antispoof meta iifkind != "veth" accept
add rule inet twill antispoof meta nfproto ipv4 iifname . ip saddr != @allowed4 drop
add rule inet twill antispoof meta nfproto ipv6 ip6 saddr != { ::, fe80::/10 } iifname . ip6 saddr != @allowed6 drop
"#;

#[test]
#[ignore = "needs root"]
fn upgrade_from_a_ruleset_without_mac_binding_keeps_pods_talking() {
    require_root();
    let (h, cs) = bridged(&["tw1", "tw2", "tw3"]);
    h.sh("ip addr add fd99::1/64 dev br0 nodad");
    let dir = tempfile::tempdir().unwrap();
    // The old plugin's state: its ruleset, its stamp, its elements.
    let f = dir.path().join("old.nft");
    std::fs::write(&f, OLD_RULESET).unwrap();
    h.sh(&format!("nft -f {}", f.display()));
    std::fs::write(dir.path().join("antispoof"), OLD_RULESET).unwrap();
    for (i, (c, port)) in cs.iter().zip(["tw1", "tw2", "tw3"]).enumerate() {
        let (v4, v6) = (format!("10.99.0.{}", i + 2), format!("fd99::{}", i + 2));
        c.sh(&format!("ip addr add {v4}/24 dev eth0"));
        c.sh(&format!("ip addr add {v6}/64 dev eth0 nodad"));
        h.sh(&format!(
            "nft add element bridge twill allowed4 {{ \"{port}\" . {v4} }}"
        ));
        h.sh(&format!(
            "nft add element bridge twill allowed6 {{ \"{port}\" . {v6} }}"
        ));
    }
    // Pod 3 copied pod 2's MAC before the upgrade: neither gets bound.
    let m2 = pod_mac(&cs[1]);
    cs[2].sh(&format!("ip link set eth0 address {}", mac_str(&m2)));
    assert!(cs[0].ping(None, "fd99::2", true));

    // The upgraded plugin's first ADD.
    assert!(
        !h.run(|| ensure_antispoof_base(dir.path())).unwrap(),
        "the address sets survived"
    );
    assert_eq!(rule_count(&h, "bridge"), 4);
    assert_eq!(rule_count(&h, "inet"), 6);
    assert_eq!(macs_of(&h), vec![("tw1".to_string(), pod_mac(&cs[0]))]);
    // The ND target set got the old IPv6 addresses: NDP resolution works.
    let t = h.sh("nft list set bridge twill ndtarget6");
    assert!(t.contains("0xfd990000000000000000000000000002"), "{t}");
    h.sh("ip neigh flush dev br0");
    cs[0].sh("ip neigh flush dev eth0");
    assert!(
        cs[0].ping(None, "fd99::1", true),
        "pod 1 over IPv6 after the upgrade"
    );
    assert!(
        cs[0].ping(None, "10.99.0.1", true),
        "pod 1 over IPv4 after the upgrade"
    );
    assert!(
        !cs[2].ping(None, "10.99.0.1", false),
        "the MAC copier is cut off"
    );
    // Stamp rewritten: the next ADD takes the fast path.
    assert!(!h.run(|| ensure_antispoof_base(dir.path())).unwrap());
}

/// Routed mode: a pod's router advertisement must not make the host route
/// via the pod (a host with accept_ra=2, as SLAAC-configured routers have),
/// and its DHCP replies must not reach the host.
#[test]
#[ignore = "needs root"]
fn routed_mode_router_advertisements_and_dhcp_replies_from_pods_are_dropped() {
    require_root();
    let h = Netns::new("rra");
    let c = Netns::new("rrc");
    h.sh("sysctl -qw net.ipv6.conf.all.forwarding=1");
    h.sh("sysctl -qw net.ipv6.conf.default.accept_ra=2");
    veth(&h, "tw1", &c);
    h.sh("sysctl -qw net.ipv6.conf.tw1.accept_ra=2");
    h.sh("ip addr add fd99:1::1/64 dev tw1 nodad");
    c.sh("ip addr add fd99:1::2/64 dev eth0 nodad");
    c.sh("ip addr add 10.99.1.2/32 dev eth0");
    h.sh("ip addr add 10.99.1.1/32 dev tw1");
    h.sh("ip route add 10.99.1.2/32 dev tw1");
    c.sh("ip route add 10.99.1.1/32 dev eth0");
    let mac = mac_str(&pod_mac(&c));
    let ll = link_local(&pod_mac(&c)).to_string();
    assert!(eventually(20, || !c
        .sh("ip -6 addr show dev eth0 scope link")
        .contains("tentative")
        && c.sh("ip -6 addr show dev eth0").contains(&ll)));
    let attack = || {
        scapy(
            &c,
            &format!(
                "sendp(Ether(src='{mac}', dst='33:33:00:00:00:01')/IPv6(src='{ll}', dst='ff02::1', hlim=255)/\
                 ICMPv6ND_RA(routerlifetime=1800)/ICMPv6NDOptSrcLLAddr(lladdr='{mac}'), iface='eth0', count=3)\n\
                 for sp in [67, 6767]:\n\
                 \x20   send(IP(src='10.99.1.2', dst='10.99.1.1')/UDP(sport=sp, dport=68)/BOOTP(op=2), iface='eth0')"
            ),
        );
        // The pod's own traffic after it: once answered, the host has seen the attack.
        assert!(c.ping(None, "10.99.1.1", true));
        assert!(c.ping(None, "fd99:1::1", true));
    };
    let ra_route = || !h.sh("ip -6 route show proto ra").trim().is_empty();

    // Control: without twill's rules the host takes the pod as its router
    // and hears its DHCP reply.
    let l = udp_listener(&h, false, 68, 6767);
    attack();
    assert!(
        eventually(10, ra_route),
        "control: the host must take the RA"
    );
    assert_eq!(listener_heard(l), vec![67, 6767], "control");
    h.sh("ip -6 route flush proto ra");

    let dir = tempfile::tempdir().unwrap();
    base(&h, dir.path());
    h.run(|| allow_source(Mode::Routed, "tw1", &ips(&["10.99.1.2", "fd99:1::2"])))
        .unwrap();
    let l = udp_listener(&h, false, 68, 6767);
    attack();
    assert!(!ra_route(), "the RA was dropped");
    assert_eq!(listener_heard(l), vec![6767], "only the marker");
}
