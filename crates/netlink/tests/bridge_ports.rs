//! [`Handle::bridge_ports`] against the real kernel: a bridge's forwarding table as
//! (MAC, port), only that bridge's, without the addresses the bridge keeps for the host.

use std::path::Path;

use twill_netlink::Handle;
use twill_testkit::{Netns, require_root};

const POD: [u8; 6] = [0x02, 0x74, 0x77, 0, 0, 9];
const OTHER: [u8; 6] = [0x02, 0x74, 0x77, 0, 0, 10];

fn text(mac: [u8; 6]) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

#[test]
#[ignore = "needs root"]
fn bridge_ports_lists_one_bridges_learned_and_static_entries() {
    require_root();
    let ns = Netns::new("nlbp");
    for (br, a, b) in [("br0", "p0", "q0"), ("br1", "p1", "q1")] {
        ns.ok(&["ip", "link", "add", br, "type", "bridge"]);
        ns.ok(&["ip", "link", "add", a, "type", "veth", "peer", "name", b]);
        ns.ok(&["ip", "link", "set", a, "master", br]);
        for dev in [br, a, b] {
            ns.ok(&["ip", "link", "set", dev, "up"]);
        }
    }
    ns.ok(&[
        "bridge",
        "fdb",
        "add",
        &text(POD),
        "dev",
        "p0",
        "master",
        "static",
    ]);
    ns.ok(&[
        "bridge",
        "fdb",
        "add",
        &text(OTHER),
        "dev",
        "p1",
        "master",
        "static",
    ]);

    let netns = twill_netlink::netns::Netns::open(Path::new(&ns.path())).expect("open netns");
    let (br0, p0, got) = netns
        .run(|| {
            let mut h = Handle::new().expect("netlink handle");
            let br0 = h.link_by_name("br0").unwrap().expect("br0");
            let p0 = h.link_by_name("p0").unwrap().expect("p0");
            let got = h.bridge_ports(br0.index).expect("forwarding table");
            (br0, p0, got)
        })
        .expect("enter netns");
    // q0 may have sent something (IPv6 DAD) through p0 already: a learned entry like POD's.
    assert!(got.contains(&(POD, p0.index)), "{got:?}");
    for (mac, port) in &got {
        assert_eq!(*port, p0.index, "only br0's port: {got:?}");
        assert_ne!(*mac, OTHER, "an entry of br1: {got:?}");
        assert!(
            Some(*mac) != p0.mac && Some(*mac) != br0.mac,
            "the host's own addresses are not pods': {got:?}"
        );
    }
}
