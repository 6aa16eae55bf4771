//! Mean cost of the per-pod anti-spoofing set updates of a CNI ADD/DEL
//! (`allow_source`/`forget_source`, `allow_mac`/`forget_mac`) and of the
//! per-ADD base check, against the real kernel in a fresh network namespace.
//! Run in release with `--nocapture` to compare netlink encoders; the bounds
//! only catch a hot path that spawns `nft` or waits for an RCU grace period.

mod common;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::{Netns, require_root};
use twill_dataplane::firewall::{allow_mac, forget_mac};
use twill_dataplane::{
    Mode, allow_source, ensure_antispoof_base, forget_source, list_sources, source_allowed,
};

const PAIRS: u32 = 500;

fn micros_per_op(total: Duration, ops: u32) -> f64 {
    total.as_secs_f64() * 1e6 / f64::from(ops)
}

#[test]
#[ignore = "needs root"]
fn per_pod_set_updates() {
    require_root();
    let h = Netns::new("nfnltime");
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    h.run(|| {
        ensure_antispoof_base(dir).unwrap();
        let v4 = |i: u32| IpAddr::from([10, 1, (i >> 8) as u8, i as u8]);
        let v6 = |i: u32| {
            IpAddr::from([
                0xfd,
                0x99,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                (i >> 8) as u8,
                i as u8,
            ])
        };
        let mac = |i: u32| [0x02, 0, 0, 0, (i >> 8) as u8, i as u8];

        for mode in [Mode::Bridge, Mode::Routed] {
            let (mut allow, mut forget) = (Duration::ZERO, Duration::ZERO);
            for i in 0..PAIRS {
                let ifname = format!("tw{i}");
                let addrs = [v4(i), v6(i)];
                let t = Instant::now();
                allow_source(mode, &ifname, &addrs).unwrap();
                allow += t.elapsed();
                assert!(source_allowed(mode, &ifname, addrs[0]).unwrap());
                let t = Instant::now();
                forget_source(mode, &ifname, &addrs).unwrap();
                forget += t.elapsed();
                assert!(!source_allowed(mode, &ifname, addrs[1]).unwrap());
            }
            assert!(list_sources(mode).unwrap().is_empty());
            let (a, f) = (micros_per_op(allow, PAIRS), micros_per_op(forget, PAIRS));
            println!("{mode:?}: allow_source {a:.1} µs, forget_source {f:.1} µs (mean of {PAIRS})");
            assert!(a < 5000.0 && f < 5000.0, "{mode:?}: {a} / {f} µs");
        }

        let (mut allow, mut forget) = (Duration::ZERO, Duration::ZERO);
        for i in 0..PAIRS {
            let ifname = format!("tw{i}");
            let t = Instant::now();
            allow_mac(Mode::Bridge, &ifname, mac(i)).unwrap();
            allow += t.elapsed();
            let t = Instant::now();
            forget_mac(Mode::Bridge, &ifname).unwrap();
            forget += t.elapsed();
        }
        assert!(list_sources(Mode::Bridge).unwrap().is_empty());
        let (a, f) = (micros_per_op(allow, PAIRS), micros_per_op(forget, PAIRS));
        println!("Bridge: allow_mac {a:.1} µs, forget_mac {f:.1} µs (mean of {PAIRS})");
        assert!(a < 5000.0 && f < 5000.0, "{a} / {f} µs");

        let t = Instant::now();
        for _ in 0..PAIRS {
            assert!(!ensure_antispoof_base(dir).unwrap());
        }
        let b = micros_per_op(t.elapsed(), PAIRS);
        println!("ensure_antispoof_base (in place) {b:.1} µs (mean of {PAIRS})");
        assert!(b < 5000.0, "{b} µs");
    });
}
