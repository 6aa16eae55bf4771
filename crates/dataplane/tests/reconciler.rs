//! The reconciler against the real kernel, in a namespace this test creates: partial plans
//! handed over land in order, and a full reconcile queued after them sees all of them; each
//! batch reports its outcome, with the kernel's refusal of a change named (which is what makes
//! the agent reconcile).

mod in_netns;
use in_netns::in_ns;

use std::time::Duration;

use twill_dataplane::reconcile::{ObservedRoute, Plan, Reconciler, Rtnl};
use twill_testkit::{Netns, require_root};
use twill_types::desired::{DesiredState, RouteSpec};

fn route(third: u8, gw: u8) -> RouteSpec {
    RouteSpec {
        dst: format!("100.64.{third}.0/24").parse().unwrap(),
        via: std::net::Ipv4Addr::new(10, 9, 0, gw).into(),
        dev: "eth0".into(),
        onlink: false,
    }
}

/// A namespace with eth0 (10.9.0.1/24) up, the end of a veth pair whose other end eth1 is
/// up too when `carrier`.
fn veth_ns(name: &str, carrier: bool) -> Netns {
    require_root();
    let ns = Netns::new(name);
    ns.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    if carrier {
        ns.ok(&["ip", "link", "set", "eth1", "up"]);
    }
    ns.ok(&["ip", "link", "set", "eth0", "up"]);
    ns.ok(&["ip", "addr", "add", "10.9.0.1/24", "dev", "eth0"]);
    ns
}

#[test]
#[ignore = "needs root"]
fn partial_plans_land_in_order_before_a_reconcile_and_report_refusals() {
    let ns = veth_ns("rw", false);
    let outcomes = in_ns(&ns, || async {
        let (writer, mut outcomes) = Reconciler::start(Rtnl::new().unwrap());
        // Three hand-overs: the second replaces what the first added.
        writer.submit(Plan {
            add_routes: (0..200).map(|i| route(i, 2)).collect(),
            ..Plan::default()
        });
        writer.submit(Plan {
            replace_routes: vec![route(7, 3)],
            ..Plan::default()
        });
        writer.submit(Plan {
            delete_routes: vec![ObservedRoute::from_spec(&route(8, 2))],
            ..Plan::default()
        });
        // The same queue: the reconcile reads a kernel holding all three.
        let mut routes: Vec<RouteSpec> =
            (0..200).filter(|i| *i != 8).map(|i| route(i, 2)).collect();
        routes[7] = route(7, 3);
        let reconciled = writer
            .reconcile(DesiredState {
                routes,
                ..DesiredState::default()
            })
            .await
            .unwrap();
        assert!(reconciled.plan.is_empty(), "{}", reconciled.plan);
        assert!(reconciled.report.is_none());
        assert_eq!(reconciled.observed.expect("read").routes.len(), 199);
        let mut reports = Vec::new();
        while let Ok(r) = outcomes.try_recv() {
            reports.push(r);
        }
        // A change the kernel refuses: an exclusive add of what is there.
        writer.submit(Plan {
            add_routes: vec![route(9, 5)],
            ..Plan::default()
        });
        let refused = tokio::time::timeout(Duration::from_secs(5), outcomes.recv())
            .await
            .expect("an outcome")
            .expect("the writer runs");
        (reports, refused)
    });
    let (reports, refused) = outcomes;
    assert!(
        !reports.is_empty() && reports.iter().all(|r| r.is_empty()),
        "{reports:?}"
    );
    let routes = ns.ip_json(&["route", "show", "proto", "117"]);
    assert_eq!(routes.as_array().unwrap().len(), 199);
    let gw = |dst: &str| ns.ip_json(&["route", "show", dst])[0]["gateway"].clone();
    assert_eq!(gw("100.64.7.0/24"), "10.9.0.3");
    assert_eq!(gw("100.64.9.0/24"), "10.9.0.2");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0].contains("add route 100.64.9.0/24"),
        "{refused:?}"
    );
}

/// A table through one next hop goes through one nexthop object of twill's; a reconcile
/// leaves the routes as they are (they read back with their gateway), deletes the object
/// once no route uses it, and `remove_all` (node leave) leaves no object behind.
#[test]
#[ignore = "needs root"]
fn shared_next_hops_become_nexthop_objects_that_reconciles_clean_up() {
    use twill_dataplane::reconcile;
    // A nexthop object needs its link's carrier (without it the routes keep plain gateways).
    let ns = veth_ns("nh", true);
    let objects = || ns.ip_json(&["nexthop", "show", "proto", "117"]);
    let routes = || ns.ip_json(&["route", "show", "proto", "117"]);
    let table = |gw: u8| DesiredState {
        routes: (0..50).map(|i| route(i, gw)).collect(),
        ..DesiredState::default()
    };
    in_ns(&ns, || async {
        let nl = Rtnl::new().unwrap();
        // The reconciler programs the table through one object; a reconcile of the same
        // table queued behind it finds nothing to change.
        let (writer, _outcomes) = Reconciler::start(nl.clone());
        writer.submit(Plan {
            add_routes: table(2).routes,
            ..Plan::default()
        });
        let reconciled = writer.reconcile(table(2)).await.unwrap();
        assert!(reconciled.plan.is_empty(), "{}", reconciled.plan);
        let objs = objects();
        assert_eq!(objs.as_array().unwrap().len(), 1, "{objs}");
        let r = routes();
        assert_eq!(r.as_array().unwrap().len(), 50);
        assert!(
            r.as_array()
                .unwrap()
                .iter()
                .all(|r| r["nhid"] == objs[0]["id"]),
            "{r}"
        );

        // A reconcile of the same table finds nothing to change.
        let d = table(2);
        let plan = reconcile::diff(&d, &reconcile::observe(&nl, &d).await.unwrap());
        assert!(plan.is_empty(), "{plan}");

        // The table moves to another next hop: the old object is idle, and the
        // next reconcile deletes it (not the routes, which no longer use it).
        let d = table(3);
        let plan = reconcile::diff(&d, &reconcile::observe(&nl, &d).await.unwrap());
        assert_eq!(plan.replace_routes.len(), 50, "{plan}");
        assert!(reconcile::apply(&nl, &plan).await.unwrap().is_ok());
        let plan = reconcile::diff(&d, &reconcile::observe(&nl, &d).await.unwrap());
        assert_eq!(plan.delete_nexthops.len(), 1, "{plan}");
        assert_eq!(plan.changes(), 1, "{plan}");
        assert!(reconcile::apply(&nl, &plan).await.unwrap().is_ok());
        let objs = objects();
        assert_eq!(objs.as_array().unwrap().len(), 1, "{objs}");
        assert_eq!(objs[0]["gateway"], "10.9.0.3");
        let r = routes();
        assert_eq!(r.as_array().unwrap().len(), 50, "{r}");
        assert!(
            r.as_array()
                .unwrap()
                .iter()
                .all(|r| r["gateway"] == "10.9.0.3"),
            "{r}"
        );

        // Node leave: nothing of twill's is left.
        assert!(reconcile::remove_all(&nl).await.unwrap().is_ok());
    });
    assert!(objects().as_array().unwrap().is_empty());
    assert!(routes().as_array().unwrap().is_empty());
}

/// A change the kernel refuses is retried by the reconciler itself (no second reconcile is
/// asked for): once what it needed exists, the retry lands and the object's status is done.
#[test]
#[ignore = "needs root"]
fn refused_changes_are_retried_with_backoff_until_they_land() {
    use twill_dataplane::reconcile::{ObjectKey, ObjectStatus};
    let ns = veth_ns("rt", false);
    let dst: ipnet::Ipv4Net = "100.64.50.0/24".parse().unwrap();
    let key = ObjectKey::Route(dst.into());
    let statuses = in_ns(&ns, || async {
        let (reconciler, _outcomes) = Reconciler::start(Rtnl::new().unwrap());
        // Through a link that is not there yet: refused.
        let desired = DesiredState {
            routes: vec![RouteSpec {
                dst: dst.into(),
                via: "10.9.0.2".parse().unwrap(),
                dev: "eth9".into(),
                onlink: true,
            }],
            ..DesiredState::default()
        };
        let reconciled = reconciler.reconcile(desired).await.unwrap();
        let report = reconciled.report.expect("a plan was applied");
        assert_eq!(report.failures.len(), 1, "{report}");
        let first = reconciler.snapshot().get(&key).cloned();
        assert!(
            matches!(first, Some(ObjectStatus::Error { attempts: 1, ref reason, .. }) if reason.contains("eth9")),
            "{first:?}"
        );
        ns.ok(&[
            "ip", "link", "add", "eth9", "type", "veth", "peer", "name", "eth10",
        ]);
        ns.ok(&["ip", "link", "set", "eth10", "up"]);
        ns.ok(&["ip", "link", "set", "eth9", "up"]);
        // Retries come after 200 ms, 400 ms, 800 ms, ...: well within 5 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline && reconciler.snapshot().contains_key(&key) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        reconciler.snapshot()
    });
    // Done: no longer pending or in error.
    assert_eq!(statuses.get(&key), None, "{statuses:?}");
    let routes = ns.ip_json(&["route", "show", "proto", "117"]);
    assert_eq!(routes[0]["dst"], "100.64.50.0/24", "{routes}");
    assert_eq!(routes[0]["dev"], "eth9", "{routes}");
}
