//! [`Rtnl`] against the real kernel, inside a namespace this test creates: every
//! operation's effect is checked with `ip -j` / `bridge -j`, and deletions are idempotent.

use std::future::Future;
use std::path::Path;

use twill_netlink::{Family, FdbEntry, IpRoute, Neighbour, Rtnl, VxlanSpec};
use twill_testkit::{Netns, require_root};

fn with_nl<T: Send, F: Future<Output = T>>(ns: &Netns, f: impl FnOnce(Rtnl) -> F + Send) -> T {
    let netns = twill_netlink::netns::Netns::open(Path::new(&ns.path())).expect("open netns");
    netns
        .run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(async { f(Rtnl::new().expect("netlink handle")).await })
        })
        .expect("enter netns")
}

/// A namespace with the veth pair eth0/eth1 up and 10.9.0.1/24 on eth0.
fn veth_ns(name: &str) -> Netns {
    require_root();
    let ns = Netns::new(name);
    ns.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    for dev in ["eth0", "eth1"] {
        ns.ok(&["ip", "link", "set", dev, "up"]);
    }
    ns.ok(&["ip", "addr", "add", "10.9.0.1/24", "dev", "eth0"]);
    ns
}

const MAC: [u8; 6] = [0x02, 0x74, 0x77, 0, 0, 1];
const PEER_MAC: [u8; 6] = [0x02, 0x74, 0x77, 0, 0, 2];

#[test]
#[ignore = "needs root"]
fn rtnl_programs_and_reads_back() {
    let ns = veth_ns("rtnl");
    ns.ok(&["ip", "addr", "add", "10.9.0.99/24", "dev", "eth0"]); // secondary
    ns.ok(&["ip", "addr", "add", "10.8.0.1/24", "dev", "eth1"]);
    ns.ok(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.8.0.254",
        "metric",
        "200",
    ]);
    ns.ok(&[
        "ip",
        "route",
        "add",
        "default",
        "via",
        "10.9.0.254",
        "metric",
        "100",
    ]);

    with_nl(&ns, |nl| async move {
        // Underlay discovery.
        let default = nl
            .default_route_link()
            .await
            .unwrap()
            .expect("default route");
        assert_eq!(default.name, "eth0", "the lower metric wins");
        let eth0 = nl.interface_ipv4("eth0").await.unwrap().unwrap();
        assert_eq!(eth0.address, Some("10.9.0.1/24".parse().unwrap()));
        assert_eq!(eth0.mtu, 1500);
        assert_eq!(eth0.index, default.index);
        assert!(nl.interface_ipv4("nope0").await.unwrap().is_none());
        assert!(nl.link_by_name("nope0").await.unwrap().is_none());

        // A VXLAN device.
        let spec = VxlanSpec {
            name: "twill.9".into(),
            vni: 9,
            local: "10.9.0.1".parse().unwrap(),
            underlay: eth0.index,
            port: 4789,
            mac: MAC,
            mtu: 1450,
            learning: false,
            up: true,
        };
        let index = nl.create_vxlan(&spec).await.unwrap();
        let err = nl.create_vxlan(&spec).await.unwrap_err();
        assert!(err.is_exists(), "{err}");
        let link = nl.link_by_index(index).await.unwrap().unwrap();
        assert_eq!(link.name, "twill.9");
        assert_eq!(link.kind.as_deref(), Some("vxlan"));
        assert_eq!(link.mac, Some(MAC));
        assert_eq!(link.mtu, 1450);
        assert!(link.up);
        let info = link.vxlan.unwrap();
        assert_eq!(
            (
                info.vni,
                info.port,
                info.local,
                info.underlay,
                info.learning
            ),
            (9, 4789, Some(spec.local), Some(eth0.index), false)
        );
        nl.set_link_up(index, false).await.unwrap();
        nl.set_link_mtu(index, 1400).await.unwrap();
        nl.set_link_mac(index, PEER_MAC).await.unwrap();
        let link = nl.link_by_name("twill.9").await.unwrap().unwrap();
        assert_eq!((link.up, link.mtu, link.mac), (false, 1400, Some(PEER_MAC)));
        nl.set_link_up(index, true).await.unwrap();

        // Addresses: adding twice is fine, deleting twice too.
        let addr = "10.244.9.0/32".parse().unwrap();
        nl.add_address(index, addr).await.unwrap();
        nl.add_address(index, addr).await.unwrap();
        assert_eq!(
            nl.addresses(index, Some(Family::V4)).await.unwrap(),
            vec![addr]
        );
        nl.delete_address(index, addr).await.unwrap();
        nl.delete_address(index, addr).await.unwrap();
        assert!(nl.ipv4_addresses(index).await.unwrap().is_empty());

        // Neighbours.
        let neigh = Neighbour {
            ip: "10.244.2.0".parse().unwrap(),
            mac: PEER_MAC,
        };
        nl.replace_neighbour(index, neigh).await.unwrap();
        nl.replace_neighbour(index, neigh).await.unwrap();
        assert_eq!(nl.permanent_neighbours(index).await.unwrap(), vec![neigh]);
        assert!(
            nl.permanent_neighbours(eth0.index)
                .await
                .unwrap()
                .is_empty()
        );

        // FDB: a unicast entry plus two flood (all-zero MAC) remotes, which listing omits.
        let entry = FdbEntry::new(PEER_MAC, "10.9.0.2".parse().unwrap());
        nl.replace_fdb(index, &entry).await.unwrap();
        for dst in ["10.9.0.3", "10.9.0.4"] {
            nl.append_fdb(index, &FdbEntry::new([0; 6], dst.parse().unwrap()))
                .await
                .unwrap();
        }
        assert_eq!(nl.fdb_entries(index).await.unwrap(), vec![entry]);

        // Routes.
        let route = IpRoute {
            dst: "10.244.2.0/24".parse().unwrap(),
            gateway: Some(neigh.ip),
            oif: Some(index),
            onlink: true,
            protocol: 117,
            ..IpRoute::default()
        };
        nl.add_route(&route).await.unwrap();
        let err = nl.add_route(&route).await.unwrap_err();
        assert!(err.is_exists(), "{err}");
        let listed = nl.routes(Some(Family::V4), Some(117)).await.unwrap();
        assert_eq!(
            listed,
            vec![IpRoute {
                unicast: true,
                ..route.clone()
            }]
        );
        let moved = IpRoute {
            gateway: Some("10.9.0.2".parse().unwrap()),
            oif: Some(eth0.index),
            onlink: false,
            ..route.clone()
        };
        nl.replace_route(&moved).await.unwrap();
        let listed = nl.routes(Some(Family::V4), Some(117)).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].oif, listed[0].onlink), (Some(eth0.index), false));
        assert!(nl.routes(Some(Family::V4), None).await.unwrap().len() > 1);
        // Deleting with another protocol leaves the route alone.
        nl.delete_route(&IpRoute {
            protocol: 4,
            ..route.clone()
        })
        .await
        .unwrap();
        assert_eq!(
            nl.routes(Some(Family::V4), Some(117)).await.unwrap().len(),
            1
        );
        // ... and so does deleting with another gateway.
        nl.delete_route(&route).await.unwrap();
        assert_eq!(
            nl.routes(Some(Family::V4), Some(117)).await.unwrap().len(),
            1
        );
        nl.delete_route(&moved).await.unwrap();
        nl.delete_route(&moved).await.unwrap();
        assert!(
            nl.routes(Some(Family::V4), Some(117))
                .await
                .unwrap()
                .is_empty()
        );

        // Deletions are idempotent.
        for _ in 0..2 {
            nl.delete_neighbour(index, neigh.ip).await.unwrap();
            nl.delete_fdb(index, &entry).await.unwrap();
        }
        assert!(nl.permanent_neighbours(index).await.unwrap().is_empty());
        assert!(nl.fdb_entries(index).await.unwrap().is_empty());
        nl.delete_link(index).await.unwrap();
        nl.delete_link(index).await.unwrap();
        assert!(nl.link_by_index(index).await.unwrap().is_none());
    });
    // The kernel's own view agrees: nothing of the test's VXLAN device is left.
    assert!(ns.link("twill.9").is_none());
    assert_eq!(
        ns.ip_json(&["route", "show", "proto", "117"]),
        serde_json::json!([])
    );
}

/// Route changes in bulk: thousands in order (more than one send's worth), exclusive adds that
/// report a route that is there, replacements, and deletions of what is already gone.
#[test]
#[ignore = "needs root"]
fn route_changes_in_bulk() {
    use twill_netlink::RouteChange;
    let ns = veth_ns("bulk");
    // Someone else's route: an exclusive add must not touch it.
    ns.ok(&["ip", "route", "add", "100.64.5.0/24", "via", "10.9.0.77"]);
    let oif: u32 = ns
        .ok(&["cat", "/sys/class/net/eth0/ifindex"])
        .trim()
        .parse()
        .unwrap();
    let route = |i: u32, gw: u8| IpRoute {
        dst: format!("100.{}.{}.0/24", 64 + (i >> 8), i & 255)
            .parse()
            .unwrap(),
        gateway: Some(std::net::Ipv4Addr::new(10, 9, 0, gw).into()),
        oif: Some(oif),
        protocol: 117,
        unicast: true,
        ..IpRoute::default()
    };
    let n = 3000;
    let adds: Vec<RouteChange> = (0..n).map(|i| RouteChange::Add(route(i, 2))).collect();
    let outcomes = with_nl(&ns, |nl| async move { nl.route_changes(adds).await });
    assert_eq!(outcomes.len(), n as usize);
    for (i, o) in outcomes.iter().enumerate() {
        match (i, o) {
            (5, Err(e)) => {
                assert!(e.is_exists(), "{e}");
                assert!(e.to_string().contains("add route 100.64.5.0/24"), "{e}");
            }
            (5, Ok(())) => panic!("an exclusive add replaced another owner's route"),
            (_, o) => assert!(o.is_ok(), "change {i}: {o:?}"),
        }
    }
    let ours = ns.ip_json(&["route", "show", "proto", "117"]);
    assert_eq!(ours.as_array().unwrap().len(), n as usize - 1);
    let theirs = ns.ip_json(&["route", "show", "100.64.5.0/24"]);
    assert_eq!(theirs[0]["gateway"], "10.9.0.77");
    // The routes share one next hop, so they go through one nexthop object of twill's, and
    // read back with its gateway and link.
    let objects = ns.ip_json(&["nexthop", "show", "proto", "117"]);
    assert_eq!(objects.as_array().unwrap().len(), 1, "{objects}");
    assert_eq!(objects[0]["gateway"], "10.9.0.2");
    assert_eq!(objects[0]["id"], twill_netlink::bulk::NEXTHOP_ID_BASE);
    assert!(
        ours.as_array()
            .unwrap()
            .iter()
            .all(|r| r["nhid"] == objects[0]["id"]
                && r["gateway"] == "10.9.0.2"
                && r["dev"] == "eth0"),
        "{ours}"
    );
    let listed = with_nl(&ns, |nl| async move {
        nl.routes(Some(Family::V4), Some(117)).await
    })
    .unwrap();
    assert!(
        listed
            .iter()
            .all(|r| r.nhid == Some(twill_netlink::bulk::NEXTHOP_ID_BASE)
                && r.gateway == Some(std::net::Ipv4Addr::new(10, 9, 0, 2).into())
                && r.oif == Some(oif))
    );

    // Replace a few, delete one twice and one that never was: all succeed, in order.
    let changes = vec![
        RouteChange::Replace(route(1, 3)),
        RouteChange::Delete(route(2, 2)),
        RouteChange::Delete(route(2, 2)),
        RouteChange::Delete(route(n + 10, 2)),
        RouteChange::Add(route(2, 4)),
    ];
    let outcomes = with_nl(&ns, |nl| async move { nl.route_changes(changes).await });
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    let gw = |dst: &str| ns.ip_json(&["route", "show", dst])[0]["gateway"].clone();
    assert_eq!(gw("100.64.1.0/24"), "10.9.0.3");
    assert_eq!(gw("100.64.2.0/24"), "10.9.0.4");

    // A deletion matches the gateway: a route via another gateway stays.
    let outcomes = with_nl(&ns, |nl| async move {
        nl.route_changes(vec![RouteChange::Delete(route(3, 9))])
            .await
    });
    assert!(outcomes[0].is_ok());
    assert_eq!(gw("100.64.3.0/24"), "10.9.0.2");

    // The object vanishes under a handle that knows it (`ip nexthop flush` takes its routes
    // too): the next table still lands, with a new object.
    let again: Vec<RouteChange> = (0..n)
        .filter(|i| *i != 5)
        .map(|i| RouteChange::Replace(route(i, 2)))
        .collect();
    let (first, second) = with_nl(&ns, |nl| async move {
        let first = nl
            .route_changes(vec![
                RouteChange::Replace(route(0, 2)),
                RouteChange::Replace(route(1, 2)),
            ])
            .await;
        let flushed = std::process::Command::new("ip")
            .args(["nexthop", "flush", "proto", "117"])
            .output()
            .unwrap();
        assert!(flushed.status.success());
        (first, nl.route_changes(again).await)
    });
    assert!(
        first.iter().chain(&second).all(|o| o.is_ok()),
        "{first:?} {second:?}"
    );
    let ours = ns.ip_json(&["route", "show", "proto", "117"]);
    assert_eq!(ours.as_array().unwrap().len(), n as usize - 1);
    assert_eq!(gw("100.64.5.0/24"), "10.9.0.77");

    // Objects are listed for the caller to delete, and deleting one takes its routes.
    let ids = with_nl(&ns, |nl| async move {
        let ids: Vec<u32> = nl
            .nexthops()
            .await
            .unwrap()
            .into_iter()
            .filter(|nh| nh.protocol == 117)
            .map(|nh| nh.id)
            .collect();
        let outcomes = nl.delete_nexthops(ids.clone()).await;
        assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
        ids
    });
    assert!(!ids.is_empty());
    // Every route of ours went through the object.
    let ours = ns.ip_json(&["route", "show", "proto", "117"]);
    assert!(ours.as_array().unwrap().is_empty(), "{ours}");
    // A deletion finds its route through any object of its gateway, not only the one twill
    // routes through: here two alike made by hand, the route through the second.
    for id in ["42", "43"] {
        ns.ok(&[
            "ip", "nexthop", "add", "id", id, "via", "10.9.0.2", "dev", "eth0", "proto", "117",
        ]);
    }
    ns.ok(&[
        "ip",
        "route",
        "add",
        "100.70.0.0/24",
        "nhid",
        "43",
        "proto",
        "117",
    ]);
    let by_hand = IpRoute {
        dst: "100.70.0.0/24".parse().unwrap(),
        ..route(0, 2)
    };
    let outcomes = with_nl(&ns, |nl| async move {
        nl.route_changes(vec![
            RouteChange::Add(route(0, 2)),
            RouteChange::Add(route(1, 2)),
            RouteChange::Delete(by_hand),
        ])
        .await
    });
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    let ours = ns.ip_json(&["route", "show", "proto", "117"]);
    assert_eq!(ours.as_array().unwrap().len(), 2, "{ours}");
    assert!(
        ours.as_array().unwrap().iter().all(|r| r["nhid"] == 42),
        "{ours}"
    );
    assert!(
        ns.ip_json(&["route", "show", "100.70.0.0/24"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    ns.ok(&["ip", "nexthop", "flush", "proto", "117"]);
    assert!(
        ns.ip_json(&["nexthop", "show", "proto", "117"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

/// A namespace with the veth pair eth0/eth1 up, 2001:db8:9::1/64 on eth0 and 2001:db8:8::1/64
/// on eth1 (without duplicate address detection, so they are usable at once).
fn veth6_ns(name: &str) -> Netns {
    let ns = veth_ns(name);
    for (addr, dev) in [("2001:db8:9::1/64", "eth0"), ("2001:db8:8::1/64", "eth1")] {
        ns.ok(&["ip", "-6", "addr", "add", addr, "dev", dev, "nodad"]);
    }
    ns
}

fn ifindex(ns: &Netns, dev: &str) -> u32 {
    ns.ok(&["cat", &format!("/sys/class/net/{dev}/ifindex")])
        .trim()
        .parse()
        .unwrap()
}

/// IPv6 routes: exclusive add, list (by family and protocol), replace onto a link-local
/// gateway on a device, onlink, and deletions that match protocol and gateway.
#[test]
#[ignore = "needs root"]
fn rtnl_ipv6_routes() {
    use twill_netlink::IPV6_DEFAULT_METRIC;
    let ns = veth6_ns("rtnl6");
    let (eth0, eth1) = (ifindex(&ns, "eth0"), ifindex(&ns, "eth1"));
    // Someone else's route to the same kind of destination, with another protocol.
    ns.ok(&[
        "ip",
        "-6",
        "route",
        "add",
        "fd00:99::/64",
        "via",
        "2001:db8:9::99",
    ]);
    let route = IpRoute {
        dst: "fd00:244:2::/64".parse().unwrap(),
        gateway: Some("2001:db8:9::2".parse().unwrap()),
        oif: Some(eth0),
        protocol: 117,
        ..IpRoute::default()
    };
    let moved = IpRoute {
        gateway: Some("fe80::2".parse().unwrap()),
        oif: Some(eth1),
        ..route.clone()
    };
    // A gateway outside every connected prefix, taken as on the link.
    let onlink = IpRoute {
        dst: "fd00:244:3::/64".parse().unwrap(),
        gateway: Some("fd00:244:3::".parse().unwrap()),
        oif: Some(eth0),
        onlink: true,
        protocol: 117,
        ..IpRoute::default()
    };
    let (route2, moved2, onlink2) = (route.clone(), moved.clone(), onlink.clone());
    with_nl(&ns, |nl| async move {
        let (route, moved, onlink) = (route2, moved2, onlink2);
        nl.add_route(&route).await.unwrap();
        let err = nl.add_route(&route).await.unwrap_err();
        assert!(err.is_exists(), "{err}");
        nl.add_route(&onlink).await.unwrap();
        let read_back = |r: &IpRoute| IpRoute {
            unicast: true,
            metric: IPV6_DEFAULT_METRIC,
            ..r.clone()
        };
        let mut listed = nl.routes(Some(Family::V6), Some(117)).await.unwrap();
        listed.sort_by_key(|r| r.dst);
        assert_eq!(listed, vec![read_back(&route), read_back(&onlink)]);
        // By family: none of them is IPv4; both families together hold them.
        assert!(
            nl.routes(Some(Family::V4), Some(117))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(nl.routes(None, Some(117)).await.unwrap().len(), 2);
        let all_v6 = nl.routes(Some(Family::V6), None).await.unwrap();
        assert!(
            all_v6
                .iter()
                .any(|r| r.dst == "fd00:99::/64".parse().unwrap())
        );
        assert!(all_v6.iter().all(|r| r.family() == Family::V6));

        // Replace onto a link-local gateway on eth1.
        nl.replace_route(&moved).await.unwrap();
        let listed = nl.routes(Some(Family::V6), Some(117)).await.unwrap();
        let now = listed.iter().find(|r| r.dst == route.dst).unwrap();
        assert_eq!(now, &read_back(&moved));

        // Deleting with another protocol, or another gateway, leaves it alone.
        nl.delete_route(&IpRoute {
            protocol: 4,
            ..moved.clone()
        })
        .await
        .unwrap();
        nl.delete_route(&route).await.unwrap();
        assert_eq!(
            nl.routes(Some(Family::V6), Some(117)).await.unwrap().len(),
            2
        );
        for _ in 0..2 {
            nl.delete_route(&moved).await.unwrap();
            nl.delete_route(&onlink).await.unwrap();
        }
        assert!(nl.routes(None, Some(117)).await.unwrap().is_empty());
    });
    // The kernel's own view: nothing of ours, the other owner's route untouched.
    assert_eq!(
        ns.ip_json(&["-6", "route", "show", "proto", "117"]),
        serde_json::json!([])
    );
    assert_eq!(
        ns.ip_json(&["-6", "route", "show", "fd00:99::/64"])[0]["gateway"],
        "2001:db8:9::99"
    );
}

/// Reads the kernel's view of a route while it is there, as `ip -j` shows it.
fn ip6_route(ns: &Netns, dst: &str) -> serde_json::Value {
    ns.ip_json(&["-6", "route", "show", dst])[0].clone()
}

/// IPv6 routes in bulk: those sharing a next hop go through an IPv6 nexthop object, which is
/// listed and deleted like an IPv4 one.
#[test]
#[ignore = "needs root"]
fn ipv6_route_changes_in_bulk() {
    use twill_netlink::RouteChange;
    let ns = veth6_ns("bulk6");
    let eth0 = ifindex(&ns, "eth0");
    let route = |i: u32| IpRoute {
        dst: format!("fd00:244:{i:x}::/64").parse().unwrap(),
        gateway: Some("2001:db8:9::2".parse().unwrap()),
        oif: Some(eth0),
        protocol: 117,
        ..IpRoute::default()
    };
    let adds = (0..300).map(|i| RouteChange::Add(route(i))).collect();
    let outcomes = with_nl(&ns, |nl| async move { nl.route_changes(adds).await });
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    let objects = ns.ip_json(&["nexthop", "show", "proto", "117"]);
    assert_eq!(objects.as_array().unwrap().len(), 1, "{objects}");
    assert_eq!(objects[0]["gateway"], "2001:db8:9::2");
    let shown = ip6_route(&ns, "fd00:244:7::/64");
    assert_eq!(shown["nhid"], objects[0]["id"], "{shown}");
    let changes = vec![RouteChange::Delete(route(7)), RouteChange::Delete(route(7))];
    let (outcomes, listed, nexthops) = with_nl(&ns, |nl| async move {
        let outcomes = nl.route_changes(changes).await;
        let listed = nl.routes(Some(Family::V6), Some(117)).await.unwrap();
        (outcomes, listed, nl.nexthops().await.unwrap())
    });
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    assert_eq!(listed.len(), 299);
    assert!(
        listed
            .iter()
            .all(|r| r.gateway == route(0).gateway && r.oif == Some(eth0))
    );
    let ours: Vec<u32> = nexthops
        .iter()
        .filter(|nh| nh.protocol == 117 && nh.gateway == route(0).gateway.unwrap())
        .map(|nh| nh.id)
        .collect();
    assert_eq!(ours.len(), 1, "{nexthops:?}");
    let outcomes = with_nl(&ns, |nl| async move { nl.delete_nexthops(ours).await });
    assert!(outcomes.iter().all(|o| o.is_ok()), "{outcomes:?}");
    assert_eq!(
        ns.ip_json(&["-6", "route", "show", "proto", "117"]),
        serde_json::json!([])
    );
}

/// A VXLAN device over IPv6 (`local6`), its IPv6 and IPv4 permanent neighbours, an IPv6 FDB
/// remote, and an IPv6 address; notifications of IPv6 route and neighbour changes.
#[test]
#[ignore = "needs root"]
fn rtnl_ipv6_vxlan_neighbours_and_fdb() {
    use twill_netlink::{Change, KernelEvents};
    let ns = veth6_ns("vx6");
    let eth0 = ifindex(&ns, "eth0");
    let spec = VxlanSpec {
        name: "twill6.9".into(),
        vni: 9,
        local: "2001:db8:9::1".parse().unwrap(),
        underlay: eth0,
        port: 4789,
        mac: MAC,
        mtu: 1430,
        learning: false,
        up: true,
    };
    let v6_neigh = Neighbour {
        ip: "fd00:244:2::".parse().unwrap(),
        mac: PEER_MAC,
    };
    let v4_neigh = Neighbour {
        ip: "10.244.2.0".parse().unwrap(),
        mac: PEER_MAC,
    };
    let entry = FdbEntry::new(PEER_MAC, "2001:db8:9::2".parse().unwrap());
    let index = with_nl(&ns, |nl| async move {
        let index = nl.create_vxlan(&spec).await.unwrap();
        let info = nl
            .link_by_index(index)
            .await
            .unwrap()
            .unwrap()
            .vxlan
            .unwrap();
        assert_eq!(
            (info.vni, info.local, info.underlay, info.learning),
            (9, Some(spec.local), Some(eth0), false)
        );
        let addr = "fd00:244:9::/128".parse().unwrap();
        nl.add_address(index, addr).await.unwrap();
        nl.add_address(index, addr).await.unwrap();
        let v6 = nl.addresses(index, Some(Family::V6)).await.unwrap();
        assert!(v6.contains(&addr), "{v6:?}");
        assert!(
            nl.addresses(index, Some(Family::V4))
                .await
                .unwrap()
                .is_empty()
        );

        for neigh in [v6_neigh, v4_neigh, v6_neigh] {
            nl.replace_neighbour(index, neigh).await.unwrap();
        }
        let mut listed = nl.permanent_neighbours(index).await.unwrap();
        listed.sort();
        let mut want = vec![v6_neigh, v4_neigh];
        want.sort();
        assert_eq!(listed, want);

        nl.replace_fdb(index, &entry).await.unwrap();
        nl.replace_fdb(index, &entry).await.unwrap();
        nl.append_fdb(
            index,
            &FdbEntry::new([0; 6], "2001:db8:9::3".parse().unwrap()),
        )
        .await
        .unwrap();
        assert_eq!(nl.fdb_entries(index).await.unwrap(), vec![entry]);
        index
    });
    // The kernel's view agrees.
    let link = ns.link("twill6.9").expect("the device");
    assert_eq!(link["linkinfo"]["info_data"]["local6"], "2001:db8:9::1");
    let neighbours = ns.ip_json(&["-6", "neigh", "show", "dev", "twill6.9", "nud", "permanent"]);
    assert_eq!(neighbours[0]["dst"], "fd00:244:2::", "{neighbours}");
    let fdb = ns.ok(&["bridge", "-j", "fdb", "show", "dev", "twill6.9"]);
    let fdb: serde_json::Value = serde_json::from_str(&fdb).unwrap();
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == "02:74:77:00:00:02"
                && e["dst"] == "2001:db8:9::2"
                && e["state"] == "permanent"),
        "{fdb}"
    );

    // Notifications of changes made by others, of both families.
    let changes = with_nl(&ns, |_nl| async move {
        let mut events = KernelEvents::new(&[]).unwrap();
        let ip = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
        };
        ip(&[
            "-6",
            "route",
            "add",
            "fd00:244:5::/64",
            "via",
            "fd00:244:2::",
            "dev",
            "twill6.9",
            "onlink",
            "proto",
            "117",
        ]);
        ip(&[
            "-6",
            "neigh",
            "replace",
            "fd00:244:5::",
            "lladdr",
            "02:74:77:00:00:05",
            "dev",
            "twill6.9",
            "nud",
            "permanent",
        ]);
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            events.drain(|c| seen.push(c)).unwrap();
            let route = seen.iter().any(|c| {
                matches!(c, Change::Route(r) if r.dst == "fd00:244:5::/64".parse().unwrap()
                    && r.protocol == 117)
            });
            let neigh = seen
                .iter()
                .any(|c| matches!(c, Change::Neighbour { index: i } if *i == index));
            if route && neigh {
                return Ok(seen);
            }
            std::thread::yield_now();
        }
        Err(seen)
    });
    if let Err(seen) = changes {
        panic!("no IPv6 route and neighbour notifications; saw {seen:?}");
    }

    // Deletions are idempotent.
    with_nl(&ns, |nl| async move {
        for _ in 0..2 {
            nl.delete_neighbour(index, v6_neigh.ip).await.unwrap();
            nl.delete_fdb(index, &entry).await.unwrap();
        }
        let left = nl.permanent_neighbours(index).await.unwrap();
        assert!(!left.contains(&v6_neigh), "{left:?}");
        assert!(nl.fdb_entries(index).await.unwrap().is_empty());
        nl.delete_link(index).await.unwrap();
    });
    assert!(ns.link("twill6.9").is_none());
}
