//! The route writer against the real kernel, in a namespace this test creates: changes
//! handed over land in order and `flush` waits for them; each batch reports its outcome, with
//! the kernel's refusal of a change named (which is what makes the agent reconcile).

use std::path::Path;
use std::time::Duration;

use twill_dataplane::peers::{AgentHandle, ObservedRoute, Plan};
use twill_dataplane::route_writer::RouteWriter;
use twill_testkit::{Netns, require_root};
use twill_types::desired::RouteSpec;

fn route(third: u8, gw: u8) -> RouteSpec {
    RouteSpec {
        dst: format!("100.64.{third}.0/24").parse().unwrap(),
        via: std::net::Ipv4Addr::new(10, 9, 0, gw),
        dev: "eth0".into(),
        onlink: false,
    }
}

#[test]
#[ignore = "needs root"]
fn writer_programs_in_order_flushes_and_reports_refusals() {
    require_root();
    let ns = Netns::new("rw");
    ns.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ns.ok(&["ip", "link", "set", "eth0", "up"]);
    ns.ok(&["ip", "addr", "add", "10.9.0.1/24", "dev", "eth0"]);
    let netns = twill_netlink::netns::Netns::open(Path::new(&ns.path())).unwrap();
    let outcomes = netns
        .run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let (writer, mut outcomes) = RouteWriter::start(AgentHandle::new().unwrap());
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
                    writer.flush().await;
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
                })
        })
        .unwrap();
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
