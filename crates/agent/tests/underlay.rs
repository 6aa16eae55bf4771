//! Finding the node's underlay (root: runs inside namespaces it creates): the default route's
//! interface, `--iface`, `--public-ip`, and clear errors when none fits.

use std::path::Path;

use twill_agent::underlay::discover;
use twill_testkit::{Netns, require_root, veth};

#[test]
#[ignore = "needs root"]
fn underlay_from_default_route_iface_or_public_ip() {
    require_root();
    let host = Netns::new("ul");
    let other = Netns::new("ulo");
    veth(&host, "eth0", &other, "peer0");
    veth(&host, "eth1", &other, "peer1");
    host.ok(&["ip", "addr", "add", "192.168.5.7/24", "dev", "eth0"]);
    host.ok(&["ip", "addr", "add", "10.3.0.9/16", "dev", "eth1"]);
    host.ok(&["ip", "link", "set", "eth1", "mtu", "1400"]);
    let ns = twill_netlink::netns::Netns::open(Path::new(&host.path())).unwrap();

    let err = ns.run(|| discover(None, None)).unwrap().unwrap_err();
    assert!(format!("{err:#}").contains("no default route"), "{err:#}");

    host.ok(&["ip", "route", "add", "default", "via", "10.3.0.1"]);
    let u = ns.run(|| discover(None, None)).unwrap().unwrap();
    assert_eq!(
        (u.iface.as_str(), u.net.to_string(), u.mtu),
        ("eth1", "10.3.0.9/16".into(), 1400)
    );

    let u = ns.run(|| discover(Some("eth0"), None)).unwrap().unwrap();
    assert_eq!(
        (u.iface.as_str(), u.net.to_string()),
        ("eth0", "192.168.5.7/24".into())
    );

    let ip = "192.168.5.7".parse().unwrap();
    let u = ns.run(|| discover(None, Some(ip))).unwrap().unwrap();
    assert_eq!(u.iface, "eth0");

    let err = ns
        .run(|| discover(Some("nope0"), None))
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("--iface nope0"), "{err:#}");
    let missing = "192.168.99.1".parse().unwrap();
    let err = ns
        .run(|| discover(None, Some(missing)))
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("no interface holds"), "{err:#}");
    host.ok(&["ip", "addr", "flush", "dev", "eth0"]);
    let err = ns
        .run(|| discover(Some("eth0"), None))
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("no IPv4 address"), "{err:#}");
}
