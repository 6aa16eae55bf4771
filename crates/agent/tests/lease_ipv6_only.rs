//! IPv6-only leases (a cluster without IPv4 pools) against a real etcd (started by the test)
//! and the embedded store: the IPv6 subnet is chosen from the IPv6 pools and names the key
//! (`/twill/leases/0.0.0.0-0&<subnet>-<len>`, as Flannel names it); nodes joining at once get
//! distinct subnets, a restart keeps the subnet, a full pool is a clear error, `node leave`
//! frees a subnet, an unrenewed lease expires and is leased again; peers' records are admitted
//! only when they fit the cluster. etcd is reached over IPv4 and over IPv6 (`etcd://[::1]:PORT`).

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TTL, embedded_store, join_at_once};
use ipnet::{IpNet, Ipv6Net};
use twill_agent::lease;
use twill_ipam::subnets::is_candidate6;
use twill_store::Store;
use twill_store::testing::EtcdServer;
use twill_types::cluster::ClusterConfig;
use twill_types::keys::{LEASES_PREFIX, lease_key, lease_key6};
use twill_types::lease::Lease;

/// fd00:10::/56 in /64s (255 node subnets from fd00:10:0:1::).
fn ipv6_only() -> ClusterConfig {
    ClusterConfig::parse(
        r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap()
}

/// The lease an IPv6-only node (no IPv4 underlay either) asks for.
fn wanted(node: &str) -> Lease {
    Lease {
        subnet: None,
        public_net: None,
        public_net6: Some("2001:db8::10/64".parse().unwrap()),
        ..common::wanted(node)
    }
}

/// The lease record in the store (not the copy `acquire` returned), as a peer admits it.
async fn stored(store: &Store, cfg: &ClusterConfig, key: &str) -> Lease {
    let kv = store.get(key).await.unwrap().expect("the lease is stored");
    lease::admit(cfg, &kv).unwrap()
}

fn subnet6(l: &Lease) -> Ipv6Net {
    l.subnet6.expect("an IPv6-only lease has an IPv6 subnet")
}

async fn joins_and_restart(store: Store) {
    let cfg = ipv6_only();
    let mut subnets = HashSet::new();
    for held in join_at_once(&store, &cfg, 10, wanted).await {
        let record = stored(&store, &cfg, &held.key).await;
        assert_eq!(record, held.lease);
        assert_eq!((record.subnet, record.public_net), (None, None));
        let subnet = subnet6(&record);
        assert_eq!(held.key, lease_key6(subnet));
        assert!(is_candidate6(&cfg.ipv6_pools[0], subnet), "{subnet}");
        assert!(subnets.insert(subnet), "{subnet} given twice");
    }
    // A restart keeps the subnet, under the same key.
    let first = lease::acquire(&store, &cfg, wanted("node3"), None, TTL)
        .await
        .unwrap();
    let again = lease::acquire(&store, &cfg, wanted("node3"), None, TTL)
        .await
        .unwrap();
    assert_eq!(
        (&first.key, first.lease.subnet6),
        (&again.key, again.lease.subnet6)
    );
    assert_eq!(stored(&store, &cfg, &again.key).await, again.lease);
    // Another host with the same name (another IPv6 address) cannot take over a live lease.
    let mut twin = wanted("node3");
    twin.public_net6 = Some("2001:db8::77/64".parse().unwrap());
    let err = lease::acquire(&store, &cfg, twin, None, TTL)
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("already holds") && msg.contains("2001:db8::10"),
        "{msg}"
    );
    let (kvs, _) = store.list(LEASES_PREFIX).await.unwrap();
    assert_eq!(kvs.len(), 10);
}

async fn full_leave_and_expiry(store: Store) {
    // fd00:9::/120 in /122s: SubnetMin skips the first, 3 node subnets.
    let cfg = ClusterConfig::parse(
        "backend = \"vxlan\"\n[[pools]]\nname = \"p6\"\ncidr = \"fd00:9::/120\"\n",
    )
    .unwrap();
    assert_eq!(cfg.ipv6_pools[0].subnet_count(), 3);
    let first = lease::acquire(&store, &cfg, wanted("a"), None, TTL)
        .await
        .unwrap();
    let mut n = 0;
    let err = loop {
        match lease::acquire(&store, &cfg, wanted(&format!("x{n}")), None, TTL).await {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 10, "pool never filled");
    };
    assert_eq!(n, 2);
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no free subnet") && msg.contains("fd00:9::/120"),
        "{msg}"
    );
    // `node leave` frees a's subnet: the only free one, so the next node gets it.
    let released = lease::release_node(&store, "a").await.unwrap();
    assert_eq!(released, vec![IpNet::V6(subnet6(&first.lease))]);
    let b = lease::acquire(&store, &cfg, wanted("b"), None, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(b.lease.subnet6, first.lease.subnet6);
    // Unrenewed, b's lease expires...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get(&b.key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and b, back with its previous subnet as preference, leases it again.
    let back = lease::acquire(&store, &cfg, wanted("b"), b.lease.key_subnet(), TTL)
        .await
        .unwrap();
    assert_eq!((back.key, back.lease.subnet6), (b.key, b.lease.subnet6));
}

#[tokio::test]
async fn etcd_ipv6_only_leases() {
    let etcd = EtcdServer::start();
    let store = Store::connect(&etcd.url()).await.unwrap();
    joins_and_restart(store.clone()).await;
    full_leave_and_expiry(Store::connect(&etcd.url()).await.unwrap()).await;
}

/// A node on an IPv6-only underlay names its etcd by an IPv6 address.
#[tokio::test]
async fn etcd_over_ipv6_ipv6_only_leases() {
    let etcd = EtcdServer::start_ipv6();
    assert!(etcd.url().starts_with("etcd://[::1]:"), "{}", etcd.url());
    let store = Store::connect(&etcd.url()).await.unwrap();
    joins_and_restart(store).await;
}

#[tokio::test]
async fn embedded_ipv6_only_leases() {
    let (_dir, store) = embedded_store().await;
    joins_and_restart(store).await;
    let (_dir2, store2) = embedded_store().await;
    full_leave_and_expiry(store2).await;
}

#[test]
fn peers_admit_only_leases_that_fit_the_cluster() {
    let cfg = ipv6_only();
    let good = Lease {
        subnet6: Some("fd00:10:0:7::/64".parse().unwrap()),
        ..wanted("p")
    };
    let key = lease_key6(subnet6(&good));
    let admit =
        |key: &str, l: &Lease| lease::admit_entry(&cfg, key, &serde_json::to_vec(l).unwrap());
    assert_eq!(admit(&key, &good), Ok(good.clone()));
    // Not a node subnet of the IPv6 pools: below SubnetMin, another length, outside.
    for bad in ["fd00:10::/64", "fd00:10:0:7::/80", "fd00:99::/64"] {
        let l = Lease {
            subnet6: Some(bad.parse().unwrap()),
            ..good.clone()
        };
        let err = admit(&lease_key6(subnet6(&l)), &l).unwrap_err();
        assert!(
            err.contains("not a node subnet of the cluster's IPv6 pools"),
            "{bad}: {err}"
        );
    }
    // The key must name the record's subnet.
    let err = admit(&lease_key6("fd00:10:0:8::/64".parse().unwrap()), &good).unwrap_err();
    assert!(
        err.contains("holds subnet fd00:10:0:7::/64 instead"),
        "{err}"
    );
    // No IPv6 underlay address: nothing to route via.
    let l = Lease {
        public_net6: None,
        ..good.clone()
    };
    assert!(
        admit(&key, &l)
            .unwrap_err()
            .contains("no IPv6 underlay address")
    );
    // An IPv4 lease in an IPv6-only cluster is no node of it.
    let v4 = Lease {
        subnet: Some("10.244.1.0/24".parse().unwrap()),
        public_net: Some("192.168.0.9/24".parse().unwrap()),
        ..good.clone()
    };
    let err = admit(&lease_key(v4.subnet.unwrap()), &v4).unwrap_err();
    assert!(
        err.contains("not a node subnet of the cluster's pools"),
        "{err}"
    );
    // A dual-stack cluster ignores IPv6-only leases, and leases without an IPv4 underlay.
    let dual = ClusterConfig::parse(
        r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/56","Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    let err = lease::admit_entry(&dual, &key, &serde_json::to_vec(&good).unwrap()).unwrap_err();
    assert!(
        err.contains("an IPv6-only lease, but the cluster has IPv4 pools"),
        "{err}"
    );
    let no_v4_underlay = Lease {
        public_net: None,
        subnet6: None,
        ..v4.clone()
    };
    let err = lease::admit_entry(
        &dual,
        &lease_key(v4.subnet.unwrap()),
        &serde_json::to_vec(&no_v4_underlay).unwrap(),
    )
    .unwrap_err();
    assert!(err.contains("no IPv4 underlay address"), "{err}");
}
