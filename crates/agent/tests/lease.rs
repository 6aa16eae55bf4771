//! Subnet leases against a real etcd (started by the test) and the embedded store: 20 nodes
//! joining at once get 20 distinct subnets, a restarted node keeps its subnet, `node leave`
//! frees it for reuse, a full pool is a clear error, and an unrenewed lease expires.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{TTL, embedded_store, join_at_once, wanted};
use twill_agent::lease;
use twill_store::Store;
use twill_store::testing::EtcdServer;
use twill_types::cluster::ClusterConfig;
use twill_types::keys::LEASES_PREFIX;

fn config(text: &str) -> ClusterConfig {
    ClusterConfig::parse(text).unwrap()
}

async fn twenty_concurrent_joins(store: Store) {
    let cfg = config(r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#);
    let mut subnets = HashSet::new();
    for held in join_at_once(&store, &cfg, 20, wanted).await {
        let subnet = held.lease.subnet.unwrap();
        assert!(cfg.pools[0].cidr.contains(&subnet));
        assert!(subnets.insert(subnet), "subnet {subnet} given twice");
    }
    let (kvs, _) = store.list(LEASES_PREFIX).await.unwrap();
    assert_eq!(kvs.len(), 20);
    let nodes: HashSet<String> = kvs
        .iter()
        .map(|kv| lease::decode(kv).unwrap().node)
        .collect();
    assert_eq!(nodes.len(), 20, "one lease per node");
}

async fn restart_reuses_leave_frees_full_errs(store: Store) {
    // A /28 cut into /30s with SubnetMin/Max defaults: a handful of subnets, quickly full.
    let cfg = config(r#"{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"host-gw"}}"#);
    let first = lease::acquire(&store, &cfg, wanted("a"), None, TTL)
        .await
        .unwrap();
    let again = lease::acquire(&store, &cfg, wanted("a"), None, TTL)
        .await
        .unwrap();
    assert_eq!(
        first.lease.subnet, again.lease.subnet,
        "a restarted node keeps its subnet"
    );
    assert_eq!(first.key, again.key);
    let mut n = 0;
    let err = loop {
        match lease::acquire(&store, &cfg, wanted(&format!("x{n}")), None, TTL).await {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 10, "pool never filled");
    };
    let msg = format!("{err:#}");
    assert!(
        msg.contains("no free subnet") && msg.contains("10.9.0.0/28"),
        "{msg}"
    );
    let released = lease::release_node(&store, "a").await.unwrap();
    assert_eq!(released, vec![first.lease.key_subnet().unwrap()]);
    // The leave is marked, so a's running agent leaves instead of leasing again; an agent
    // started later clears the mark and joins.
    assert!(lease::leave_marker(&store, "a").await.unwrap());
    lease::clear_leave_marker(&store, "a").await.unwrap();
    assert!(!lease::leave_marker(&store, "a").await.unwrap());
    // The freed subnet is the only free one, so the next node must get it.
    let b = lease::acquire(&store, &cfg, wanted("b"), None, TTL)
        .await
        .unwrap();
    assert_eq!(b.lease.subnet, first.lease.subnet);
    // A node that comes back after leaving, with its old subnet taken, gets another or an error.
    assert!(
        lease::acquire(&store, &cfg, wanted("a"), first.lease.key_subnet(), TTL)
            .await
            .is_err()
    );
}

/// Two hosts with one node name: the second cannot take over the first one's live lease.
async fn duplicate_node_name_is_refused(store: Store) {
    let cfg = config(r#"{"Network":"10.6.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#);
    let first = lease::acquire(&store, &cfg, wanted("twin"), None, TTL)
        .await
        .unwrap();
    let mut other = wanted("twin");
    other.public_net = Some("192.168.0.77/24".parse().unwrap());
    let err = lease::acquire(&store, &cfg, other, None, TTL)
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("already holds") && msg.contains("192.168.0.10"),
        "{msg}"
    );
    let kv = store.get(&first.key).await.unwrap().unwrap();
    assert_eq!(
        lease::decode(&kv).unwrap().public_net,
        first.lease.public_net
    );
}

async fn unrenewed_lease_expires(store: Store) {
    let cfg = config(r#"{"Network":"10.7.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#);
    let held = lease::acquire(&store, &cfg, wanted("short"), None, Duration::from_secs(2))
        .await
        .unwrap();
    // Renewal keeps it past its TTL...
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(900)).await;
        store.keep_alive(held.store_lease).await.unwrap();
    }
    assert!(store.get(&held.key).await.unwrap().is_some());
    // ...and without renewal it goes away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while store.get(&held.key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lease never expired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The node's preferred (previous) subnet is given back to it when free.
    let back = lease::acquire(&store, &cfg, wanted("short"), held.lease.key_subnet(), TTL)
        .await
        .unwrap();
    assert_eq!(back.lease.subnet, held.lease.subnet);
}

#[tokio::test]
async fn etcd_leases() {
    let etcd = EtcdServer::start();
    let store = Store::connect(&etcd.url()).await.unwrap();
    twenty_concurrent_joins(store.clone()).await;
    restart_reuses_leave_frees_full_errs(store.clone()).await;
    duplicate_node_name_is_refused(store.clone()).await;
    unrenewed_lease_expires(store).await;
}

#[tokio::test]
async fn embedded_leases() {
    let (_dir, store) = embedded_store().await;
    twenty_concurrent_joins(store.clone()).await;
    let (_dir2, store2) = embedded_store().await;
    restart_reuses_leave_frees_full_errs(store2.clone()).await;
    duplicate_node_name_is_refused(store2.clone()).await;
    unrenewed_lease_expires(store2).await;
}
