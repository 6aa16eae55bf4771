//! The reconciler's watch of the kernel, in a namespace this test creates: a resync of the
//! desired state last reconciled reads nothing while the kernel is quiet; a route, neighbour,
//! FDB entry or the VXLAN device deleted behind its back (or a route of someone else's
//! replacing one of twill's) is read and repaired by the next resync; changes to other objects
//! are no reason to read, and a storm of them that overruns the notification socket is. The
//! IPv6 objects of a dual-stack node are watched alike.

mod in_netns;
use in_netns::in_ns;

use std::net::Ipv4Addr;

use twill_dataplane::reconcile::{Reconciled, Reconciler, Rtnl};
use twill_testkit::{Netns, require_root};
use twill_types::MacAddr;
use twill_types::desired::{DesiredState, FdbSpec, NeighSpec, RouteSpec, VxlanDevice};

fn mac(n: u8) -> MacAddr {
    MacAddr([0x02, 0x74, 0x77, 0x00, 0x00, n])
}

fn vtep(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, n, 0)
}

/// A VXLAN node (twill.1 over eth0, 10.9.0.1) with peers 2..=peers at 10.9.0.N.
fn vxlan_state(peers: u8) -> DesiredState {
    let mut d = DesiredState {
        vxlan: Some(VxlanDevice {
            name: "twill.1".into(),
            vni: 1,
            port: 8472,
            local: "10.9.0.1".parse().unwrap(),
            underlay: "eth0".into(),
            mac: mac(1),
            mtu: 1450,
            address: "10.244.1.0/32".parse().unwrap(),
        }),
        ..DesiredState::default()
    };
    for n in 2..=peers {
        d.routes.push(RouteSpec {
            dst: format!("{}/24", vtep(n)).parse().unwrap(),
            via: vtep(n).into(),
            dev: "twill.1".into(),
            onlink: true,
        });
        d.neighbours.push(NeighSpec {
            dev: "twill.1".into(),
            ip: vtep(n).into(),
            mac: mac(n),
        });
        d.fdb.push(FdbSpec {
            dev: "twill.1".into(),
            mac: mac(n),
            dst: Ipv4Addr::new(10, 9, 0, n).into(),
        });
    }
    d
}

/// A namespace with eth0 (10.9.0.1/24) up, one end of a veth pair.
fn underlay_ns(name: &str) -> Netns {
    require_root();
    let ns = Netns::new(name);
    ns.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ns.ok(&["ip", "link", "set", "eth1", "up"]);
    ns.ok(&["ip", "link", "set", "eth0", "up"]);
    ns.ok(&["ip", "addr", "add", "10.9.0.1/24", "dev", "eth0"]);
    ns
}

/// Reconciles `want`; insists that whatever was applied was accepted.
async fn resync(r: &Reconciler, want: &DesiredState) -> Reconciled {
    let done = r.reconcile(want.clone()).await.expect("reconcile");
    if let Some(report) = &done.report {
        assert!(report.is_ok(), "{report}");
    }
    done
}

/// Resyncs until one reads nothing (at most `limit` reads); returns how many read.
async fn settle(r: &Reconciler, want: &DesiredState, limit: u64) -> u64 {
    let before = r.kernel_reads();
    loop {
        if resync(r, want).await.observed.is_none() {
            return r.kernel_reads() - before;
        }
        assert!(
            r.kernel_reads() - before <= limit,
            "still reading the kernel after {limit} resyncs"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn resyncs_read_the_kernel_only_when_it_may_have_drifted_and_repair_drift() {
    let ns = underlay_ns("wd");
    let neighbour = |n: u8| {
        ns.ok(&["ip", "-j", "neigh", "show", "dev", "twill.1"])
            .contains(&format!("\"{}\"", vtep(n)))
    };
    let fdb = |n: u8| {
        ns.ok(&["bridge", "-j", "fdb", "show", "dev", "twill.1"])
            .contains(&format!("\"{}\"", Ipv4Addr::new(10, 9, 0, n)))
    };
    let route_proto = |n: u8| {
        let r = ns.ip_json(&["route", "show", &format!("{}/24", vtep(n))]);
        r[0]["protocol"].as_str().map(str::to_string)
    };
    in_ns(&ns, || async {
        let (r, _outcomes) = Reconciler::start(Rtnl::new().unwrap());
        let want = vxlan_state(9);
        let first = resync(&r, &want).await;
        assert!(!first.plan.is_empty() && first.observed.is_some());
        // The device was created (its FDB entries notify without a sender): one more read.
        settle(&r, &want, 2).await;
        // Quiet kernel: no reads, nothing planned.
        let reads = r.kernel_reads();
        for _ in 0..5 {
            let again = resync(&r, &want).await;
            assert!(again.observed.is_none() && again.plan.is_empty());
        }
        assert_eq!(r.kernel_reads(), reads);

        // Someone else's changes to other objects are no reason to read.
        ns.ok(&["ip", "route", "add", "192.0.2.0/24", "via", "10.9.0.7"]);
        ns.ok(&[
            "ip", "link", "add", "pod0", "type", "veth", "peer", "name", "pod1",
        ]);
        ns.ok(&[
            "ip",
            "neigh",
            "add",
            "10.9.0.50",
            "lladdr",
            "02:00:00:00:00:50",
            "dev",
            "eth0",
        ]);
        assert!(resync(&r, &want).await.observed.is_none());
        assert_eq!(r.kernel_reads(), reads);

        // Drift: each is read and repaired by the next resync.
        let drift: [(&str, &[&str]); 4] = [
            ("a route", &["ip", "route", "del", "10.244.3.0/24"]),
            (
                "a neighbour",
                &["ip", "neigh", "del", "10.244.4.0", "dev", "twill.1"],
            ),
            (
                "an fdb entry",
                &[
                    "bridge",
                    "fdb",
                    "del",
                    "02:74:77:00:00:05",
                    "dev",
                    "twill.1",
                    "dst",
                    "10.9.0.5",
                ],
            ),
            ("the vxlan device", &["ip", "link", "del", "twill.1"]),
        ];
        for (what, cmd) in drift {
            let reads = r.kernel_reads();
            ns.ok(cmd);
            let repaired = resync(&r, &want).await;
            assert_eq!(r.kernel_reads(), reads + 1, "{what}: not read");
            assert!(!repaired.plan.is_empty(), "{what}: nothing planned");
            assert!(route_proto(3).as_deref() == Some("117"), "{what}: route 3");
            assert!(neighbour(4), "{what}: neighbour");
            assert!(fdb(5), "{what}: fdb");
            // Repairs through the reconciler's own sockets are not drift; FDB entries and
            // links notify without a sender, so repairing them costs one more read.
            settle(&r, &want, 2).await;
        }

        // Someone else's route replacing one of twill's: read, and refused (twill never
        // overwrites what is not its own); repaired once it is gone.
        let reads = r.kernel_reads();
        ns.ok(&[
            "ip",
            "route",
            "replace",
            "10.244.6.0/24",
            "via",
            "10.9.0.6",
            "dev",
            "eth0",
        ]);
        let refused = r.reconcile(want.clone()).await.expect("reconcile");
        assert_eq!(
            r.kernel_reads(),
            reads + 1,
            "a foreign route to a wanted destination"
        );
        let report = refused.report.expect("applied");
        assert!(report.to_string().contains("10.244.6.0/24"), "{report}");
        let theirs = ns.ip_json(&["route", "show", "10.244.6.0/24"]);
        assert_eq!(theirs[0]["dev"], "eth0", "{theirs}");
        ns.ok(&["ip", "route", "del", "10.244.6.0/24"]);
        let repaired = resync(&r, &want).await;
        assert!(repaired.observed.is_some() && !repaired.plan.is_empty());
        assert_eq!(route_proto(6).as_deref(), Some("117"));
        settle(&r, &want, 2).await;
    });
}

#[test]
#[ignore = "needs root"]
fn a_notification_storm_that_overruns_the_socket_makes_the_next_resync_read() {
    let ns = underlay_ns("ws");
    let batch = |first: u32, count: u32| {
        let lines: String = (first..first + count)
            .map(|i| {
                let [_, b, c, d] = i.to_be_bytes();
                format!(
                    "route add 198.{}.{c}.{d}/32 via 10.9.0.7 dev eth0\n",
                    18 + b
                )
            })
            .collect();
        let path = std::env::temp_dir().join(format!("twill-watch-{}-{first}", std::process::id()));
        std::fs::write(&path, lines).unwrap();
        ns.ok(&["ip", "-batch", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
    };
    in_ns(&ns, || async {
        let (r, _outcomes) = Reconciler::start(Rtnl::new().unwrap());
        let want = vxlan_state(5);
        resync(&r, &want).await;
        settle(&r, &want, 2).await;
        let reads = r.kernel_reads();
        // A few unrelated routes fit the socket's buffer and are told apart.
        batch(0, 50);
        assert!(resync(&r, &want).await.observed.is_none());
        assert_eq!(r.kernel_reads(), reads);
        // Far more than it holds: notifications are lost, so anything may have changed.
        batch(50, 20_000);
        let after = resync(&r, &want).await;
        assert!(
            after.observed.is_some(),
            "an overrun must make the resync read"
        );
        assert_eq!(r.kernel_reads(), reads + 1);
        assert!(after.plan.is_empty(), "{}", after.plan);
        // And then it is quiet again.
        assert!(resync(&r, &want).await.observed.is_none());
        assert_eq!(r.kernel_reads(), reads + 1);
    });
}

/// The IPv6 half of a dual-stack node (`twill6.6` over the IPv4 underlay): the kernel's
/// notifications of its IPv6 objects count like the IPv4 ones. Quiet, nothing is read; an
/// IPv6 route, an NDP neighbour, an IPv6 address deleted behind the reconciler's back, or
/// an IPv6 route of twill's protocol added by someone, are read and repaired; someone
/// else's IPv6 route is no reason to read.
#[test]
#[ignore = "needs root"]
fn ipv6_drift_is_read_and_repaired_and_other_ipv6_changes_are_not() {
    let ns = underlay_ns("w6");
    let mut want = vxlan_state(3);
    want.vxlan6 = Some(VxlanDevice {
        name: "twill6.6".into(),
        vni: 6,
        port: 8472,
        local: "10.9.0.1".parse().unwrap(),
        underlay: "eth0".into(),
        mac: mac(0x61),
        mtu: 1430,
        address: "fd00:244:1::/128".parse().unwrap(),
    });
    for n in 2..=3u8 {
        let vtep: std::net::IpAddr = format!("fd00:244:{n}::").parse().unwrap();
        want.routes.push(RouteSpec {
            dst: format!("fd00:244:{n}::/64").parse().unwrap(),
            via: vtep,
            dev: "twill6.6".into(),
            onlink: true,
        });
        want.neighbours.push(NeighSpec {
            dev: "twill6.6".into(),
            ip: vtep,
            mac: mac(0x60 + n),
        });
        want.fdb.push(FdbSpec {
            dev: "twill6.6".into(),
            mac: mac(0x60 + n),
            dst: Ipv4Addr::new(10, 9, 0, n).into(),
        });
    }
    let has = |args: &[&str], what: &str| ns.ok(args).contains(what);
    in_ns(&ns, || async {
        let (r, _outcomes) = Reconciler::start(Rtnl::new().unwrap());
        resync(&r, &want).await;
        settle(&r, &want, 3).await;
        let reads = r.kernel_reads();
        assert!(resync(&r, &want).await.observed.is_none());

        ns.ok(&["ip", "-6", "route", "add", "2001:db8:5::/64", "dev", "eth0"]);
        assert!(resync(&r, &want).await.observed.is_none());
        assert_eq!(r.kernel_reads(), reads, "someone else's IPv6 route");

        let route = ["ip", "-6", "route", "show", "proto", "117"];
        let neigh = [
            "ip",
            "-6",
            "neigh",
            "show",
            "dev",
            "twill6.6",
            "nud",
            "permanent",
        ];
        let addr = [
            "ip", "-6", "addr", "show", "dev", "twill6.6", "scope", "global",
        ];
        let drift: [(&str, &[&str]); 4] = [
            (
                "an IPv6 route",
                &["ip", "-6", "route", "del", "fd00:244:2::/64"],
            ),
            (
                "an NDP neighbour",
                &[
                    "ip",
                    "-6",
                    "neigh",
                    "del",
                    "fd00:244:3::",
                    "dev",
                    "twill6.6",
                ],
            ),
            (
                "the IPv6 address",
                &[
                    "ip",
                    "-6",
                    "addr",
                    "del",
                    "fd00:244:1::/128",
                    "dev",
                    "twill6.6",
                ],
            ),
            (
                "an IPv6 route of twill's protocol it does not want",
                &[
                    "ip",
                    "-6",
                    "route",
                    "add",
                    "fd00:244:9::/64",
                    "via",
                    "fd00:244:3::",
                    "dev",
                    "twill6.6",
                    "onlink",
                    "proto",
                    "117",
                ],
            ),
        ];
        for (what, cmd) in drift {
            let reads = r.kernel_reads();
            ns.ok(cmd);
            let repaired = resync(&r, &want).await;
            assert_eq!(r.kernel_reads(), reads + 1, "{what}: not read");
            assert!(!repaired.plan.is_empty(), "{what}: nothing planned");
            assert!(has(&route, "fd00:244:2::/64"), "{what}: route");
            assert!(!has(&route, "fd00:244:9::/64"), "{what}: stray route");
            assert!(has(&neigh, "fd00:244:3::"), "{what}: neighbour");
            assert!(has(&addr, "fd00:244:1::/128"), "{what}: address");
            settle(&r, &want, 3).await;
        }
    });
}
