//! Anti-spoofing against the real kernel with real traffic, inside private
//! network namespaces (a "host" and "containers" attached by veths).

mod common;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use common::{Netns, median_of, require_root, veth};
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
    let j = ns.nft_json(&format!("list chain {family} twill antispoof"));
    j["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i.get("rule").is_some())
        .count()
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

    // Our hand-encoded keys, as nft decodes them.
    assert_eq!(
        nft_elements(&h, "bridge", "allowed4"),
        pairs(&[("tw1", "10.99.0.2"), ("tw2", "10.99.0.3")])
    );
    assert!(nft_elements(&h, "inet", "allowed4").is_empty());
    // ... and as we decode them.
    let listed = h.run(|| list_sources(Mode::Bridge)).unwrap();
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
    assert_eq!(
        nft_elements(&h, "bridge", "allowed6"),
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
    assert_eq!(
        h.run(|| list_sources(Mode::Bridge)).unwrap(),
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
    assert_eq!(rule_count(&h, "inet"), 4);

    h.run(|| allow_source(Mode::Bridge, "tw7", &ips(&["10.5.0.7", "fd05::7"])))
        .unwrap();
    // A flushed chain is restored; the sets (live containers) keep their
    // elements.
    h.sh("nft flush chain bridge twill antispoof");
    base(&h, d1.path());
    assert_eq!(rule_count(&h, "bridge"), 4);
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
