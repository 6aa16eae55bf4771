//! The agent's peer dataplane against the real kernel: VXLAN and host-gw between network
//! namespaces joined by a veth underlay, checked with `ip -j`, `bridge -j fdb` and ping.
//! Every object lives in namespaces these tests create (testkit's guards delete them).

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;
use twill_dataplane::reconcile::{self, ApplyReport, DeviceChange, Plan};
use twill_netlink::Rtnl;
use twill_testkit::{Netns, require_root, veth};
use twill_types::MacAddr;
use twill_types::desired::{DesiredState, FdbSpec, NeighSpec, RouteSpec, VxlanDevice};

/// Runs `f` with a netlink handle inside `ns`, on a thread that entered it and a
/// current-thread runtime built there (the agent's own threads stay in the host namespace).
fn with_nl<T: Send, F: Future<Output = T>>(ns: &Netns, f: impl FnOnce(Rtnl) -> F + Send) -> T {
    let netns = twill_netlink::netns::Netns::open(Path::new(&ns.path())).expect("open netns");
    netns
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async { f(Rtnl::new().expect("netlink handle")).await })
        })
        .expect("enter netns")
}

/// observe + diff + apply, then observe + diff again.
struct Round {
    plan: Plan,
    report: ApplyReport,
    after: Plan,
}

fn converge(ns: &Netns, desired: &DesiredState) -> Round {
    with_nl(ns, |nl| async move {
        let observed = reconcile::observe(&nl, desired).await.expect("observe");
        let plan = reconcile::diff(desired, &observed);
        let report = reconcile::apply(&nl, &plan).await.expect("apply");
        let observed = reconcile::observe(&nl, desired)
            .await
            .expect("observe again");
        let after = reconcile::diff(desired, &observed);
        Round {
            plan,
            report,
            after,
        }
    })
}

/// Converges and insists that everything worked and nothing is left to do.
fn converge_ok(ns: &Netns, desired: &DesiredState) -> Round {
    let round = converge(ns, desired);
    assert!(round.report.is_ok(), "apply failed: {}", round.report);
    assert!(
        round.after.is_empty(),
        "re-observing after apply still plans: {} ({:?})",
        round.after,
        round.after
    );
    round
}

fn vtep_mac(node: u16) -> MacAddr {
    let [hi, lo] = node.to_be_bytes();
    MacAddr([0x02, 0x74, 0x77, 0x00, hi, lo])
}

/// The node subnet of node `n`: 10.244.n.0/24 for small n.
fn subnet_ip(n: u16) -> Ipv4Addr {
    let [hi, lo] = n.to_be_bytes();
    Ipv4Addr::new(10, 244 + hi, lo, 0)
}

fn device(node: u16, local: &str, vni: u32) -> VxlanDevice {
    VxlanDevice {
        name: "twill.1".into(),
        vni,
        port: 8472,
        local: local.parse().unwrap(),
        underlay: "eth0".into(),
        mac: vtep_mac(node),
        mtu: 1450,
        address: format!("{}/32", subnet_ip(node)).parse().unwrap(),
    }
}

/// Adds what a VXLAN backend wants for peer `node` reached at underlay `public`.
fn add_vxlan_peer(d: &mut DesiredState, node: u16, public: Ipv4Addr) {
    let vtep = subnet_ip(node);
    d.routes.push(RouteSpec {
        dst: format!("{vtep}/24").parse().unwrap(),
        via: vtep.into(),
        dev: "twill.1".into(),
        onlink: true,
    });
    d.neighbours.push(NeighSpec {
        dev: "twill.1".into(),
        ip: vtep.into(),
        mac: vtep_mac(node),
    });
    d.fdb.push(FdbSpec {
        dev: "twill.1".into(),
        mac: vtep_mac(node),
        dst: public.into(),
    });
}

/// Two "hosts" joined by a veth underlay: a = 10.9.0.1 (node 1), b = 10.9.0.2 (node 2), each
/// with a pod-like address 10.244.N.1 on its loopback.
fn two_hosts(tag: &str) -> (Netns, Netns) {
    let a = Netns::new(&format!("{tag}a"));
    let b = Netns::new(&format!("{tag}b"));
    veth(&a, "eth0", &b, "eth0");
    a.ok(&["ip", "addr", "add", "10.9.0.1/24", "dev", "eth0"]);
    b.ok(&["ip", "addr", "add", "10.9.0.2/24", "dev", "eth0"]);
    a.ok(&["ip", "addr", "add", "10.244.1.1/32", "dev", "lo"]);
    b.ok(&["ip", "addr", "add", "10.244.2.1/32", "dev", "lo"]);
    (a, b)
}

fn vxlan_state(node: u16, local: &str, peers: &[(u16, &str)]) -> DesiredState {
    let mut d = DesiredState {
        vxlan: Some(device(node, local, 1)),
        ..DesiredState::default()
    };
    for (n, public) in peers {
        add_vxlan_peer(&mut d, *n, public.parse().unwrap());
    }
    d
}

fn json(ns: &Netns, cmd: &[&str]) -> Vec<Value> {
    let out = ns.ok(cmd);
    if out.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str(&out).expect("JSON") {
        Value::Array(a) => a,
        other => panic!("expected an array, got {other}"),
    }
}

/// `(dst, gateway, dev, onlink)` of twill's IPv4 routes, sorted.
fn twill_routes(ns: &Netns) -> Vec<(String, String, String, bool)> {
    twill_routes_of(ns, "-4")
}

/// `(dst, gateway, dev, onlink)` of twill's IPv6 routes, sorted.
fn twill_routes6(ns: &Netns) -> Vec<(String, String, String, bool)> {
    twill_routes_of(ns, "-6")
}

/// `(dst, gateway, dev, onlink)` of `ip FAMILY -j route show proto 117`, sorted.
fn twill_routes_of(ns: &Netns, family: &str) -> Vec<(String, String, String, bool)> {
    let mut out: Vec<_> = json(ns, &["ip", family, "-j", "route", "show", "proto", "117"])
        .iter()
        .map(|r| {
            let flags = r["flags"].as_array().cloned().unwrap_or_default();
            (
                r["dst"].as_str().unwrap_or("").to_string(),
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["dev"].as_str().unwrap_or("").to_string(),
                flags.iter().any(|f| f == "onlink"),
            )
        })
        .collect();
    out.sort();
    out
}

/// `(ip, lladdr, state)` of the neighbours of `dev`, sorted.
fn neighbours(ns: &Netns, dev: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = json(ns, &["ip", "-j", "neigh", "show", "dev", dev])
        .iter()
        .map(|n| {
            (
                n["dst"].as_str().unwrap_or("").to_string(),
                n["lladdr"].as_str().unwrap_or("").to_string(),
                n["state"].to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// `(mac, dst, flags, state)` of `bridge -j fdb show dev DEV`, sorted.
fn fdb(ns: &Netns, dev: &str) -> Vec<(String, String, String, String)> {
    let mut out: Vec<_> = json(ns, &["bridge", "-j", "fdb", "show", "dev", dev])
        .iter()
        .map(|e| {
            (
                e["mac"].as_str().unwrap_or("").to_string(),
                e["dst"].as_str().unwrap_or("").to_string(),
                e["flags"].to_string(),
                e["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn ipv4_addresses(ns: &Netns, dev: &str) -> Vec<String> {
    ns.addresses(dev)
        .into_iter()
        .filter(|a| !a.contains(':'))
        .collect()
}

fn tx_packets(ns: &Netns, dev: &str) -> u64 {
    let v = json(ns, &["ip", "-s", "-j", "link", "show", "dev", dev]);
    v[0]["stats64"]["tx"]["packets"].as_u64().unwrap_or(0)
}

fn ping_from(ns: &Netns, src: &str, dst: &str) -> bool {
    ns.exec(&[
        "ping", "-q", "-c", "2", "-i", "0.05", "-W", "1", "-I", src, dst,
    ])
    .status
    .success()
}

/// Pings from `a`'s address to `b`'s and back (both must answer), and checks that `a`'s
/// pings left through its device `dev`.
fn assert_pings_cross(a: &Netns, b: &Netns, dev: &str, (a_ip, b_ip): (&str, &str)) {
    let before = tx_packets(a, dev);
    assert!(ping_from(a, a_ip, b_ip), "{a_ip} -> {b_ip} over {dev}");
    assert!(ping_from(b, b_ip, a_ip), "{b_ip} -> {a_ip} over {dev}");
    assert!(tx_packets(a, dev) >= before + 2, "pings left through {dev}");
}

#[test]
#[ignore = "needs root"]
fn vxlan_pair_carries_traffic_and_reapplying_is_a_no_op() {
    require_root();
    let (a, b) = two_hosts("vx");
    // Things that are not twill's, which it must leave alone.
    a.ok(&[
        "ip",
        "route",
        "add",
        "192.168.77.0/24",
        "via",
        "10.9.0.2",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    a.ok(&[
        "ip",
        "neigh",
        "add",
        "10.9.0.77",
        "lladdr",
        "02:aa:bb:cc:dd:ee",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let a_state = vxlan_state(1, "10.9.0.1", &[(2, "10.9.0.2")]);
    let b_state = vxlan_state(2, "10.9.0.2", &[(1, "10.9.0.1")]);

    let round = converge_ok(&a, &a_state);
    assert!(matches!(round.plan.devices[..], [DeviceChange::Create(_)]));
    assert_eq!(round.plan.changes(), 4, "{}", round.plan);
    assert_eq!(
        round.report.done, 5,
        "device, its address, route, neighbour, fdb"
    );
    converge_ok(&b, &b_state);

    // The kernel holds exactly what was asked for.
    let link = a.link("twill.1").expect("twill.1 exists");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(link["linkinfo"]["info_kind"], "vxlan");
    assert_eq!(info["id"], 1);
    assert_eq!(info["port"], 8472);
    assert_eq!(info["local"], "10.9.0.1");
    assert_eq!(info["link"], "eth0");
    assert_eq!(info["learning"], false);
    assert_eq!(link["mtu"], 1450);
    assert_eq!(link["address"], "02:74:77:00:00:01");
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(ipv4_addresses(&a, "twill.1"), ["10.244.1.0/32"]);
    assert_eq!(
        twill_routes(&a),
        vec![(
            "10.244.2.0/24".into(),
            "10.244.2.0".into(),
            "twill.1".into(),
            true
        )]
    );
    assert_eq!(
        neighbours(&a, "twill.1"),
        vec![(
            "10.244.2.0".into(),
            "02:74:77:00:00:02".into(),
            r#"["PERMANENT"]"#.into()
        )]
    );
    assert_eq!(
        fdb(&a, "twill.1"),
        vec![(
            "02:74:77:00:00:02".into(),
            "10.9.0.2".into(),
            r#"["self"]"#.into(),
            "permanent".into()
        )]
    );

    // Real traffic crosses the tunnel, both ways.
    assert_pings_cross(&a, &b, "twill.1", ("10.244.1.1", "10.244.2.1"));

    // Applying the same state again changes nothing.
    let again = converge_ok(&a, &a_state);
    assert!(again.plan.is_empty(), "{}", again.plan);
    assert_eq!(again.report.done, 0);

    // Foreign objects are untouched, after apply and after remove_all.
    let foreign_ok = |ns: &Netns| {
        let routes = ns.ip_json(&["route", "show", "proto", "static"]);
        assert_eq!(routes[0]["dst"], "192.168.77.0/24", "{routes}");
        let n = neighbours(ns, "eth0");
        assert!(
            n.iter()
                .any(|(ip, mac, _)| ip == "10.9.0.77" && mac == "02:aa:bb:cc:dd:ee"),
            "{n:?}"
        );
    };
    foreign_ok(&a);
    let report = with_nl(&a, |nl| async move { reconcile::remove_all(&nl).await }).unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(a.link("twill.1").is_none());
    assert!(twill_routes(&a).is_empty());
    foreign_ok(&a);
    assert!(!ping_from(&a, "10.244.1.1", "10.244.2.1"));
}

#[test]
#[ignore = "needs root"]
fn removing_a_peer_removes_only_its_entries() {
    require_root();
    let (a, b) = two_hosts("rm");
    // Leftovers of an earlier run: a route to a peer that left, and a second route (another
    // metric) to a peer that stays. Both are twill's, so both go.
    a.ok(&[
        "ip",
        "route",
        "add",
        "10.244.50.0/24",
        "via",
        "10.9.0.2",
        "dev",
        "eth0",
        "proto",
        "117",
    ]);
    a.ok(&[
        "ip",
        "route",
        "add",
        "10.244.2.0/24",
        "via",
        "10.9.0.2",
        "dev",
        "eth0",
        "proto",
        "117",
        "metric",
        "50",
    ]);
    let full = vxlan_state(
        1,
        "10.9.0.1",
        &[(2, "10.9.0.2"), (3, "10.9.0.3"), (4, "10.9.0.4")],
    );
    let round = converge_ok(&a, &full);
    assert_eq!(round.plan.delete_routes.len(), 2, "{}", round.plan);
    converge_ok(&b, &vxlan_state(2, "10.9.0.2", &[(1, "10.9.0.1")]));
    assert_eq!(twill_routes(&a).len(), 3);

    let mut less = full.clone();
    less.routes.remove(1);
    less.neighbours.remove(1);
    less.fdb.remove(1);
    let round = converge_ok(&a, &less);
    assert_eq!(round.plan.delete_routes.len(), 1);
    assert_eq!(round.plan.delete_neighbours.len(), 1);
    assert_eq!(round.plan.delete_fdb.len(), 1);
    assert_eq!(round.plan.changes(), 3, "{}", round.plan);

    let routes = twill_routes(&a);
    let dsts: Vec<_> = routes.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(dsts, ["10.244.2.0/24", "10.244.4.0/24"]);
    let n = neighbours(&a, "twill.1");
    let ips: Vec<_> = n.iter().map(|n| n.0.as_str()).collect();
    assert_eq!(ips, ["10.244.2.0", "10.244.4.0"]);
    let f = fdb(&a, "twill.1");
    let dsts: Vec<_> = f.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(dsts, ["10.9.0.2", "10.9.0.4"]);
    assert!(
        ping_from(&a, "10.244.1.1", "10.244.2.1"),
        "remaining peer still reachable"
    );

    // A peer whose VTEP moved: the FDB entry is rewritten in place.
    let mut moved = less.clone();
    moved.fdb[1].dst = "10.9.0.44".parse().unwrap();
    let round = converge_ok(&a, &moved);
    assert_eq!(round.plan.replace_fdb.len(), 1);
    assert_eq!(round.plan.delete_fdb.len(), 1);
    let f = fdb(&a, "twill.1");
    let dsts: Vec<_> = f.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(dsts, ["10.9.0.2", "10.9.0.44"]);
}

#[test]
#[ignore = "needs root"]
fn changed_vni_recreates_the_device_and_its_entries() {
    require_root();
    let (a, b) = two_hosts("vni");
    let mut a_state = vxlan_state(1, "10.9.0.1", &[(2, "10.9.0.2")]);
    let mut b_state = vxlan_state(2, "10.9.0.2", &[(1, "10.9.0.1")]);
    converge_ok(&a, &a_state);
    converge_ok(&b, &b_state);
    let old_index = a.link("twill.1").unwrap()["ifindex"].clone();

    a_state.vxlan.as_mut().unwrap().vni = 7;
    b_state.vxlan.as_mut().unwrap().vni = 7;
    let round = converge_ok(&a, &a_state);
    match &round.plan.devices[..] {
        [DeviceChange::Recreate { reason, .. }] => assert_eq!(reason, "vni 1 -> 7"),
        other => panic!("expected recreate, got {other:?}"),
    }
    converge_ok(&b, &b_state);
    let link = a.link("twill.1").unwrap();
    assert_eq!(link["linkinfo"]["info_data"]["id"], 7);
    assert_ne!(link["ifindex"], old_index);
    assert_eq!(twill_routes(&a).len(), 1);
    assert_eq!(neighbours(&a, "twill.1").len(), 1);
    assert_eq!(fdb(&a, "twill.1").len(), 1);
    assert!(
        ping_from(&a, "10.244.1.1", "10.244.2.1"),
        "traffic over the new VNI"
    );
}

#[test]
#[ignore = "needs root"]
fn device_is_adjusted_in_place() {
    require_root();
    let (a, _b) = two_hosts("adj");
    let mut state = vxlan_state(1, "10.9.0.1", &[(2, "10.9.0.2")]);
    converge_ok(&a, &state);
    let index = a.link("twill.1").unwrap()["ifindex"].clone();

    // The node's subnet, MAC and MTU changed: all adjusted while the device is up.
    let dev = state.vxlan.as_mut().unwrap();
    dev.mtu = 1400;
    dev.mac = vtep_mac(0x0101);
    dev.address = "10.244.9.0/32".parse().unwrap();
    let round = converge_ok(&a, &state);
    assert!(
        matches!(round.plan.devices[..], [DeviceChange::Adjust(_)]),
        "{:?}",
        round.plan.devices
    );
    // The kernel flushes a device's neighbours when its MAC changes, so they are set again.
    assert_eq!(round.plan.replace_neighbours.len(), 1, "{}", round.plan);
    assert_eq!(round.plan.changes(), 2, "{}", round.plan);
    let link = a.link("twill.1").unwrap();
    assert_eq!(link["ifindex"], index, "adjusted, not recreated");
    assert_eq!(link["mtu"], 1400);
    assert_eq!(link["address"], "02:74:77:00:01:01");
    assert_eq!(ipv4_addresses(&a, "twill.1"), ["10.244.9.0/32"]);

    // Someone took it down: it comes back up.
    a.ok(&["ip", "link", "set", "twill.1", "down"]);
    let round = converge_ok(&a, &state);
    match &round.plan.devices[..] {
        [DeviceChange::Adjust(adj)] => assert!(adj.up && adj.mtu.is_none()),
        other => panic!("expected adjust, got {other:?}"),
    }
    let link = a.link("twill.1").unwrap();
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    // The peer's entries survived the adjustment.
    assert_eq!(twill_routes(&a).len(), 1);
    assert_eq!(fdb(&a, "twill.1").len(), 1);
}

#[test]
#[ignore = "needs root"]
fn host_gw_routes_go_via_the_underlay() {
    require_root();
    let (a, b) = two_hosts("hgw");
    let route = |dst: &str, via: &str| RouteSpec {
        dst: dst.parse().unwrap(),
        via: via.parse().unwrap(),
        dev: "eth0".into(),
        onlink: false,
    };
    let a_state = DesiredState {
        routes: vec![route("10.244.2.0/24", "10.9.0.2")],
        ..DesiredState::default()
    };
    let b_state = DesiredState {
        routes: vec![route("10.244.1.0/24", "10.9.0.1")],
        ..DesiredState::default()
    };
    converge_ok(&a, &a_state);
    converge_ok(&b, &b_state);
    assert_eq!(
        twill_routes(&a),
        vec![(
            "10.244.2.0/24".into(),
            "10.9.0.2".into(),
            "eth0".into(),
            false
        )]
    );
    assert!(ping_from(&a, "10.244.1.1", "10.244.2.1"), "a -> b host-gw");

    // Switching a to VXLAN replaces the route in place and adds the device; the peer's
    // host-gw route still works for the way back.
    let a_vx = vxlan_state(1, "10.9.0.1", &[(2, "10.9.0.2")]);
    let b_vx = vxlan_state(2, "10.9.0.2", &[(1, "10.9.0.1")]);
    let round = converge_ok(&a, &a_vx);
    assert_eq!(round.plan.replace_routes.len(), 1, "{}", round.plan);
    converge_ok(&b, &b_vx);
    assert_eq!(twill_routes(&a)[0].2, "twill.1");
    assert!(
        ping_from(&a, "10.244.1.1", "10.244.2.1"),
        "a -> b over VXLAN"
    );

    // And back: the device goes, the route is the underlay one again.
    let round = converge_ok(&a, &a_state);
    assert_eq!(round.plan.delete_devices, vec!["twill.1".to_string()]);
    converge_ok(&b, &b_state);
    assert!(a.link("twill.1").is_none());
    assert_eq!(twill_routes(&a)[0].2, "eth0");
    assert!(
        ping_from(&a, "10.244.1.1", "10.244.2.1"),
        "a -> b host-gw again"
    );
}

#[test]
#[ignore = "needs root"]
fn foreign_objects_are_never_overwritten_or_deleted() {
    require_root();
    let (a, _b) = two_hosts("own");
    // Another owner's route to a destination twill wants, another VXLAN device, and a
    // twill-looking name on a link that is not a VXLAN device.
    a.ok(&[
        "ip",
        "route",
        "add",
        "10.244.3.0/24",
        "via",
        "10.9.0.3",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    a.ok(&[
        "ip", "link", "add", "vx9", "type", "vxlan", "id", "9", "local", "10.9.0.1", "dev", "eth0",
        "dstport", "4789",
    ]);
    a.ok(&[
        "ip", "link", "add", "twill.v", "type", "veth", "peer", "name", "twill.w",
    ]);

    let state = vxlan_state(1, "10.9.0.1", &[(2, "10.9.0.2"), (3, "10.9.0.3")]);
    let round = converge(&a, &state);
    assert_eq!(round.report.failures.len(), 1, "{}", round.report);
    let failure = &round.report.failures[0];
    assert!(
        failure.item.contains("10.244.3.0/24") && failure.error.is_exists(),
        "{}: {}",
        failure.item,
        failure.error
    );
    // The foreign route is as it was; the other peer was programmed all the same.
    let statics = a.ip_json(&["route", "show", "proto", "static"]);
    assert_eq!(statics[0]["dst"], "10.244.3.0/24");
    assert_eq!(statics[0]["gateway"], "10.9.0.3");
    assert_eq!(twill_routes(&a).len(), 1);

    let report = with_nl(&a, |nl| async move { reconcile::remove_all(&nl).await }).unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(a.link("twill.1").is_none());
    assert!(a.link("vx9").is_some());
    assert!(a.link("twill.v").is_some());
    assert_eq!(
        a.ip_json(&["route", "show", "proto", "static"])[0]["dst"],
        "10.244.3.0/24"
    );
}

#[test]
#[ignore = "needs root"]
fn a_thousand_peers_program_quickly() {
    require_root();
    const PEERS: u16 = 1000;
    let a = Netns::new("k");
    a.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p",
    ]);
    a.ok(&["ip", "link", "set", "eth0", "up"]);
    a.ok(&["ip", "link", "set", "eth0p", "up"]);
    a.ok(&["ip", "addr", "add", "10.9.0.1/16", "dev", "eth0"]);
    let mut state = vxlan_state(1, "10.9.0.1", &[]);
    for n in 2..PEERS + 2 {
        let [hi, lo] = n.to_be_bytes();
        add_vxlan_peer(&mut state, n, Ipv4Addr::new(10, 9, hi, lo));
    }

    let round = converge_ok(&a, &state);
    assert_eq!(round.plan.changes(), 1 + 3 * usize::from(PEERS));
    eprintln!(
        "{PEERS} peers from empty: {} (plan: {})",
        round.report, round.plan
    );
    assert!(
        round.report.elapsed.as_secs_f64() < 5.0,
        "took {:?}",
        round.report.elapsed
    );
    assert_eq!(twill_routes(&a).len(), usize::from(PEERS));
    assert_eq!(neighbours(&a, "twill.1").len(), usize::from(PEERS));
    assert_eq!(fdb(&a, "twill.1").len(), usize::from(PEERS));

    // A steady-state pass (observe + diff of 3000 entries) and a teardown, timed too.
    let (observe_time, empty) = with_nl(&a, |nl| {
        let state = &state;
        async move {
            let start = Instant::now();
            let observed = reconcile::observe(&nl, state).await.unwrap();
            let plan = reconcile::diff(state, &observed);
            (start.elapsed(), plan.is_empty())
        }
    });
    assert!(empty);
    let report = with_nl(&a, |nl| async move { reconcile::remove_all(&nl).await }).unwrap();
    assert!(report.is_ok(), "{report}");
    eprintln!("observe+diff of {PEERS} peers: {observe_time:.1?}; remove_all: {report}");
    assert!(twill_routes(&a).is_empty());
}

/// The MAC of node `node`'s IPv6 VXLAN device (another than its IPv4 one's, as Flannel's
/// `VtepMAC` and `VtepMACv6`).
fn vtep_mac6(node: u16) -> MacAddr {
    let [hi, lo] = node.to_be_bytes();
    MacAddr([0x02, 0x74, 0x77, 0x06, hi, lo])
}

/// The IPv6 subnet of node `n`: fd00:244:n::/64.
fn subnet6_ip(n: u16) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0xfd00, 0x244, n, 0, 0, 0, 0, 0)
}

/// Node `node`'s device for IPv6 pod traffic, `twill6.<vni>`, its VTEP at `local`.
fn device6(node: u16, local: &str, vni: u32) -> VxlanDevice {
    VxlanDevice {
        name: format!("twill6.{vni}"),
        vni,
        port: 8472,
        local: local.parse().unwrap(),
        underlay: "eth0".into(),
        mac: vtep_mac6(node),
        mtu: 1430,
        address: format!("{}/128", subnet6_ip(node)).parse().unwrap(),
    }
}

/// Adds what a dual-stack VXLAN backend wants for the IPv6 half of peer `node`, whose IPv6
/// VTEP is reached at `public` (IPv6, or IPv4 for a device over an IPv4 underlay).
fn add_vxlan6_peer(d: &mut DesiredState, node: u16, public: &str) {
    let dev = d.vxlan6.as_ref().expect("a vxlan6 device").name.clone();
    let vtep = subnet6_ip(node);
    d.routes.push(RouteSpec {
        dst: format!("{vtep}/64").parse().unwrap(),
        via: vtep.into(),
        dev: dev.clone(),
        onlink: true,
    });
    d.neighbours.push(NeighSpec {
        dev: dev.clone(),
        ip: vtep.into(),
        mac: vtep_mac6(node),
    });
    d.fdb.push(FdbSpec {
        dev,
        mac: vtep_mac6(node),
        dst: public.parse().unwrap(),
    });
}

/// [`two_hosts`] with an IPv6 underlay too (2001:db8:9::1 and ::2 on eth0) and IPv6
/// pod-like addresses fd00:244:N::1 on loopback.
fn two_dual_hosts(tag: &str) -> (Netns, Netns) {
    let (a, b) = two_hosts(tag);
    for (ns, n) in [(&a, 1), (&b, 2)] {
        ns.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("2001:db8:9::{n}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("fd00:244:{n}::1/128"),
            "dev",
            "lo",
        ]);
    }
    (a, b)
}

/// BGP's IPv6 routes whose peer sent only a link-local next hop (RFC 2545): via that address
/// on the underlay device. They carry traffic, and read back as written (re-applying is a
/// no-op).
#[test]
#[ignore = "needs root"]
fn ipv6_routes_via_link_local_next_hops_carry_traffic() {
    require_root();
    let (a, b) = two_dual_hosts("ll6");
    for (ns, n) in [(&a, 1), (&b, 2)] {
        ns.ok(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("fe80::{n}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
    }
    let state = |dst: &str, via: &str| DesiredState {
        routes: vec![RouteSpec {
            dst: dst.parse().unwrap(),
            via: via.parse().unwrap(),
            dev: "eth0".into(),
            onlink: false,
        }],
        ..DesiredState::default()
    };
    converge_ok(&a, &state("fd00:244:2::/64", "fe80::2"));
    converge_ok(&b, &state("fd00:244:1::/64", "fe80::1"));
    assert_eq!(
        twill_routes6(&a),
        vec![(
            "fd00:244:2::/64".into(),
            "fe80::2".into(),
            "eth0".into(),
            false
        )]
    );
    assert!(
        ping_from(&a, "fd00:244:1::1", "fd00:244:2::1"),
        "a -> b via b's link-local address"
    );
    // Again: nothing to do.
    let round = converge_ok(&a, &state("fd00:244:2::/64", "fe80::2"));
    assert!(round.plan.is_empty(), "{}", round.plan);
}

/// The global IPv6 addresses (`addr/prefix`) of `dev`.
fn ipv6_global(ns: &Netns, dev: &str) -> Vec<String> {
    ns.addresses(dev)
        .into_iter()
        .filter(|a| a.contains(':') && !a.starts_with("fe80"))
        .collect()
}

/// A dual-stack node: `twill.1` carries IPv4 pod traffic over the IPv4 underlay, `twill6.1`
/// (same VNI and port, as Flannel's flannel.1 and flannel-v6.1) IPv6 pod traffic over the
/// IPv6 underlay. Both carry traffic, re-applying is a no-op, and node leave removes both
/// and every route of twill's of both families, leaving foreign IPv6 objects alone.
#[test]
#[ignore = "needs root"]
fn dual_stack_vxlan_pair_carries_both_families_and_reapplying_is_a_no_op() {
    require_root();
    let (a, b) = two_dual_hosts("dual");
    // Things that are not twill's, which it must leave alone.
    a.ok(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:99::/64",
        "via",
        "2001:db8:9::2",
        "dev",
        "eth0",
        "proto",
        "static",
    ]);
    a.ok(&[
        "ip",
        "-6",
        "neigh",
        "add",
        "2001:db8:9::77",
        "lladdr",
        "02:aa:bb:cc:dd:ee",
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let dual = |node: u16, local: &str, local6: &str, peer: u16, public: &str, public6: &str| {
        let mut d = vxlan_state(node, local, &[(peer, public)]);
        d.vxlan6 = Some(device6(node, local6, 1));
        add_vxlan6_peer(&mut d, peer, public6);
        d
    };
    let a_state = dual(
        1,
        "10.9.0.1",
        "2001:db8:9::1",
        2,
        "10.9.0.2",
        "2001:db8:9::2",
    );
    let b_state = dual(
        2,
        "10.9.0.2",
        "2001:db8:9::2",
        1,
        "10.9.0.1",
        "2001:db8:9::1",
    );

    let round = converge_ok(&a, &a_state);
    assert!(
        matches!(
            round.plan.devices[..],
            [DeviceChange::Create(_), DeviceChange::Create(_)]
        ),
        "{}",
        round.plan
    );
    assert_eq!(round.plan.changes(), 2 + 2 * 3, "{}", round.plan);
    converge_ok(&b, &b_state);

    // The kernel holds exactly what was asked for.
    let link = a.link("twill6.1").expect("twill6.1 exists");
    let info = &link["linkinfo"]["info_data"];
    assert_eq!(info["id"], 1);
    assert_eq!(info["port"], 8472);
    assert_eq!(info["local6"], "2001:db8:9::1");
    assert_eq!(info["learning"], false);
    assert_eq!(link["mtu"], 1430);
    assert_eq!(link["address"], "02:74:77:06:00:01");
    assert_eq!(ipv6_global(&a, "twill6.1"), ["fd00:244:1::/128"]);
    assert_eq!(ipv4_addresses(&a, "twill.1"), ["10.244.1.0/32"]);
    assert_eq!(
        twill_routes6(&a),
        vec![(
            "fd00:244:2::/64".into(),
            "fd00:244:2::".into(),
            "twill6.1".into(),
            true
        )]
    );
    assert_eq!(twill_routes(&a).len(), 1);
    assert_eq!(
        neighbours(&a, "twill6.1")
            .into_iter()
            .filter(|n| n.2.contains("PERMANENT"))
            .collect::<Vec<_>>(),
        vec![(
            "fd00:244:2::".into(),
            "02:74:77:06:00:02".into(),
            r#"["PERMANENT"]"#.into()
        )]
    );
    assert_eq!(
        fdb(&a, "twill6.1")
            .into_iter()
            .filter(|e| e.3 == "permanent" && e.0 != "00:00:00:00:00:00")
            .collect::<Vec<_>>(),
        vec![(
            "02:74:77:06:00:02".into(),
            "2001:db8:9::2".into(),
            r#"["self"]"#.into(),
            "permanent".into()
        )]
    );

    // Real traffic of both families crosses the tunnels, both ways.
    assert_pings_cross(&a, &b, "twill6.1", ("fd00:244:1::1", "fd00:244:2::1"));
    assert!(
        ping_from(&a, "10.244.1.1", "10.244.2.1"),
        "a -> b over VXLAN, IPv4"
    );

    // Applying the same state again changes nothing.
    let again = converge_ok(&a, &a_state);
    assert!(again.plan.is_empty(), "{}", again.plan);
    assert_eq!(again.report.done, 0);

    // Dropping the IPv6 half deletes its device and routes only.
    let v4_only = vxlan_state(1, "10.9.0.1", &[(2, "10.9.0.2")]);
    let round = converge_ok(&a, &v4_only);
    assert_eq!(round.plan.delete_devices, ["twill6.1"], "{}", round.plan);
    assert!(a.link("twill6.1").is_none());
    assert!(twill_routes6(&a).is_empty());
    assert!(
        ping_from(&a, "10.244.1.1", "10.244.2.1"),
        "IPv4 still flows"
    );
    converge_ok(&a, &a_state);

    // Node leave: nothing of twill's of either family; the foreign objects stay.
    let report = with_nl(&a, |nl| async move { reconcile::remove_all(&nl).await }).unwrap();
    assert!(report.is_ok(), "{report}");
    assert!(a.link("twill.1").is_none() && a.link("twill6.1").is_none());
    assert!(twill_routes(&a).is_empty() && twill_routes6(&a).is_empty());
    let statics = a.ip_json(&["-6", "route", "show", "proto", "static"]);
    assert_eq!(statics[0]["dst"], "fd00:99::/64", "{statics}");
    assert!(
        neighbours(&a, "eth0")
            .iter()
            .any(|(ip, mac, _)| ip == "2001:db8:9::77" && mac == "02:aa:bb:cc:dd:ee")
    );
}

/// The IPv6 device over an IPv4 underlay (its `local` and FDB remotes IPv4, another VNI than
/// the IPv4 device's: the kernel refuses two IPv4 VTEPs of one VNI and port), and the repair
/// of its IPv6 state behind the reconciler's back: a deleted neighbour, a flushed address
/// and a deleted route come back, and an IPv6 route of twill's protocol it does not want
/// goes.
#[test]
#[ignore = "needs root"]
fn ipv6_over_an_ipv4_underlay_is_carried_and_repaired() {
    require_root();
    let (a, b) = two_dual_hosts("v6o4");
    let state = |node: u16, local: &str, peer: u16, public: &str| {
        let mut d = vxlan_state(node, local, &[(peer, public)]);
        d.vxlan6 = Some(device6(node, local, 6));
        add_vxlan6_peer(&mut d, peer, public);
        d
    };
    let a_state = state(1, "10.9.0.1", 2, "10.9.0.2");
    converge_ok(&a, &a_state);
    converge_ok(&b, &state(2, "10.9.0.2", 1, "10.9.0.1"));
    let info = &a.link("twill6.6").expect("twill6.6")["linkinfo"]["info_data"];
    assert_eq!(info["local"], "10.9.0.1");
    assert!(
        ping_from(&a, "fd00:244:1::1", "fd00:244:2::1"),
        "IPv6 over IPv4 VXLAN"
    );

    a.ok(&[
        "ip",
        "-6",
        "neigh",
        "del",
        "fd00:244:2::",
        "dev",
        "twill6.6",
    ]);
    a.ok(&[
        "ip", "-6", "addr", "flush", "dev", "twill6.6", "scope", "global",
    ]);
    a.ok(&[
        "ip",
        "-6",
        "route",
        "del",
        "fd00:244:2::/64",
        "proto",
        "117",
    ]);
    a.ok(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:244:9::/64",
        "via",
        "fd00:244:2::",
        "dev",
        "twill6.6",
        "onlink",
        "proto",
        "117",
    ]);
    let round = converge_ok(&a, &a_state);
    assert_eq!(round.plan.add_routes.len(), 1, "{}", round.plan);
    assert_eq!(round.plan.replace_neighbours.len(), 1, "{}", round.plan);
    assert_eq!(round.plan.delete_routes.len(), 1, "{}", round.plan);
    assert!(round.plan.delete_routes[0].dst.addr().is_ipv6());
    assert!(matches!(round.plan.devices[..], [DeviceChange::Adjust(_)]));
    assert_eq!(ipv6_global(&a, "twill6.6"), ["fd00:244:1::/128"]);
    assert_eq!(twill_routes6(&a).len(), 1);
    assert!(ping_from(&a, "fd00:244:1::1", "fd00:244:2::1"), "repaired");
}
