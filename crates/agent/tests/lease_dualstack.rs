//! Dual-stack leases against a real etcd (started by the test) and the embedded store: every
//! lease record carries the node's IPv6 subnet, derived from its IPv4 subnet, written in the
//! same compare-and-swap; it is kept over a restart; an older agent's lease without one is
//! completed; a record with a forged IPv6 subnet is not admitted. And (root, in a namespace)
//! the node's IPv6 underlay address: `--public-ipv6`, or the first usable global address.

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::{TTL, embedded_store, join_at_once};
use ipnet::Ipv6Net;
use twill_agent::lease;
use twill_agent::underlay::ipv6_of;
use twill_ipam::subnets::subnet6_for;
use twill_store::Store;
use twill_store::testing::EtcdServer;
use twill_testkit::{Netns, require_root, veth};
use twill_types::cluster::{ClusterConfig, Pool6};
use twill_types::keys::{LEASES_PREFIX, lease_key};
use twill_types::lease::Lease;

/// 10.244.0.0/16 in /24s (255 node subnets from 10.244.1.0) and fd00:10::/56 in /64s (255
/// from fd00:10:0:1::).
fn dual_stack() -> ClusterConfig {
    let mut cfg = ClusterConfig::parse(
        r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    cfg.ipv6_pools = vec![Pool6 {
        name: "v6".into(),
        cidr: "fd00:10::/56".parse().unwrap(),
        block_size: 64,
        subnet_min: "fd00:10:0:1::/64".parse().unwrap(),
        subnet_max: "fd00:10:0:ff::/64".parse().unwrap(),
        nat_outgoing: false,
    }];
    cfg
}

/// The lease a dual-stack node asks for.
fn wanted(node: &str) -> Lease {
    Lease {
        // Whatever the caller says, the lease gets the derived one.
        subnet6: Some("fd00:ffff::/64".parse().unwrap()),
        public_net6: Some("2001:db8::10/64".parse().unwrap()),
        ..common::wanted(node)
    }
}

/// The lease record in the store (not the copy `acquire` returned).
async fn stored(store: &Store, cfg: &ClusterConfig, key: &str) -> Lease {
    let kv = store.get(key).await.unwrap().expect("the lease is stored");
    lease::admit(cfg, &kv).unwrap()
}

async fn joins_restart_and_upgrade(store: Store) {
    let cfg = dual_stack();
    let mut subnets6 = HashSet::new();
    for held in join_at_once(&store, &cfg, 10, wanted).await {
        let record = stored(&store, &cfg, &held.key).await;
        assert_eq!(record, held.lease);
        let subnet6 = record
            .subnet6
            .expect("a dual-stack lease has an IPv6 subnet");
        assert_eq!(Some(subnet6), subnet6_for(&cfg, record.subnet.unwrap()));
        assert!(cfg.ipv6_pools[0].cidr.contains(&subnet6), "{subnet6}");
        assert!(subnets6.insert(subnet6), "{subnet6} given twice");
        assert_eq!(record.public_net6, wanted("x").public_net6);
    }

    // A restart keeps both subnets.
    let first = lease::acquire(&store, &cfg, wanted("node3"), None, TTL)
        .await
        .unwrap();
    let again = lease::acquire(&store, &cfg, wanted("node3"), None, TTL)
        .await
        .unwrap();
    assert_eq!(
        (first.lease.subnet, first.lease.subnet6),
        (again.lease.subnet, again.lease.subnet6)
    );
    assert_eq!(stored(&store, &cfg, &again.key).await, again.lease);

    // An older agent's lease, without an IPv6 subnet: the upgraded agent completes it in place.
    let subnet: ipnet::Ipv4Net = "10.244.200.0/24".parse().unwrap();
    let mut old = wanted("old");
    (old.subnet, old.subnet6, old.public_net6) = (Some(subnet), None, None);
    let store_lease = store.grant_lease(TTL).await.unwrap();
    store
        .put(
            &lease_key(subnet),
            &serde_json::to_vec(&old).unwrap(),
            Some(store_lease),
        )
        .await
        .unwrap();
    let upgraded = lease::acquire(&store, &cfg, wanted("old"), None, TTL)
        .await
        .unwrap();
    assert_eq!(upgraded.key, lease_key(subnet));
    let record = stored(&store, &cfg, &upgraded.key).await;
    assert_eq!(record.subnet, Some(subnet));
    assert_eq!(record.subnet6, Some("fd00:10:0:c8::/64".parse().unwrap()));

    // A record whose IPv6 subnet is not the derived one (forged, or another config's) is not
    // admitted: it would route someone else's pods to that node.
    let mut forged = record.clone();
    forged.subnet6 = Some(subnet6_for(&cfg, first.lease.subnet.unwrap()).unwrap());
    let key = lease_key(subnet);
    let err = lease::admit_entry(&cfg, &key, &serde_json::to_vec(&forged).unwrap()).unwrap_err();
    assert!(err.contains("is not the IPv6 subnet"), "{err}");
    // An IPv4-only config ignores nothing of an IPv4 lease, and rejects any IPv6 subnet.
    let mut v4_only = cfg.clone();
    v4_only.ipv6_pools.clear();
    let v4 = lease::acquire(&store, &v4_only, wanted("v4"), None, TTL)
        .await
        .unwrap();
    assert_eq!(v4.lease.subnet6, None);
    assert!(lease::admit_entry(&v4_only, &key, &serde_json::to_vec(&record).unwrap()).is_err());
    let (kvs, _) = store.list(LEASES_PREFIX).await.unwrap();
    assert_eq!(kvs.len(), 12);
}

#[tokio::test]
async fn etcd_dual_stack_leases() {
    let etcd = EtcdServer::start();
    let store = Store::connect(&etcd.url()).await.unwrap();
    joins_restart_and_upgrade(store).await;
}

#[tokio::test]
async fn embedded_dual_stack_leases() {
    let (_dir, store) = embedded_store().await;
    joins_restart_and_upgrade(store).await;
}

#[test]
#[ignore = "needs root"]
fn ipv6_underlay_is_the_first_usable_global_address_or_the_flag() {
    require_root();
    let host = Netns::new("ul6");
    let other = Netns::new("ul6o");
    veth(&host, "eth0", &other, "peer0");
    let ns = twill_netlink::netns::Netns::open(Path::new(&host.path())).unwrap();
    let found = |flag: Option<&str>| {
        let flag = flag.map(|f| f.parse().unwrap());
        ns.run(move || ipv6_of("eth0", flag)).unwrap()
    };
    // Only a link-local address (once the link is up): no IPv6 underlay.
    assert_eq!(found(None).unwrap(), None);
    // A deprecated global address (preferred lifetime 0) does not count; a usable one does.
    host.ok(&[
        "ip",
        "addr",
        "add",
        "fd00:1::5/64",
        "dev",
        "eth0",
        "nodad",
        "preferred_lft",
        "0",
    ]);
    assert_eq!(found(None).unwrap(), None);
    host.ok(&["ip", "addr", "add", "fd00:2::7/64", "dev", "eth0", "nodad"]);
    let want: Ipv6Net = "fd00:2::7/64".parse().unwrap();
    assert_eq!(found(None).unwrap(), Some(want));
    // The flag picks the address (deprecated or not: the operator said so)...
    assert_eq!(
        found(Some("fd00:1::5")).unwrap(),
        Some("fd00:1::5/64".parse().unwrap())
    );
    // ...and must be on the interface.
    let err = found(Some("fd00:9::1")).unwrap_err();
    assert!(
        format!("{err:#}").contains("--public-ipv6 fd00:9::1: interface eth0 does not hold"),
        "{err:#}"
    );
}
