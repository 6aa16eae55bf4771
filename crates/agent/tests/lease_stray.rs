//! Lease keys that cannot be a node subnet of the config (written by hand, by a bug, or by
//! someone with store access: `/twill/leases/0.0.0.0-0`, a net wider than the pool, a subnet
//! of another network) do not stop new nodes from joining: the allocator ignores them. Against
//! a real etcd (started by the test) and the embedded store.

mod common;

use std::collections::HashSet;

use common::{TTL, embedded_store, wanted};
use twill_agent::lease;
use twill_store::Store;
use twill_store::testing::EtcdServer;
use twill_types::cluster::ClusterConfig;

async fn stray_lease_keys_do_not_block_joins(store: Store) {
    // A small pool: a /28 cut into /30s leaves three node subnets (the first is never leased).
    let cfg = ClusterConfig::parse(
        r#"{"Network":"10.9.0.0/28","SubnetLen":30,"Backend":{"Type":"host-gw"}}"#,
    )
    .unwrap();
    for stray in [
        "/twill/leases/0.0.0.0-0",
        "/twill/leases/10.0.0.0-8",
        "/twill/leases/10.9.0.0-27",
        "/twill/leases/192.168.0.0-24",
    ] {
        store.put(stray, b"{}", None).await.unwrap();
    }
    let mut subnets = HashSet::new();
    for i in 0..3 {
        let held = lease::acquire(&store, &cfg, wanted(&format!("n{i}")), None, TTL)
            .await
            .unwrap_or_else(|e| panic!("node n{i} could not join: {e:#}"));
        let subnet = held.lease.subnet.unwrap();
        assert!(cfg.pools[0].cidr.contains(&subnet));
        assert!(subnets.insert(subnet), "{subnet}");
    }
    // The pool is really full now: the next node gets the usual clear error.
    let err = lease::acquire(&store, &cfg, wanted("n3"), None, TTL)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("no free subnet"), "{err:#}");
}

#[tokio::test]
async fn etcd_ignores_stray_lease_keys() {
    let etcd = EtcdServer::start();
    let store = Store::connect(&etcd.url()).await.unwrap();
    stray_lease_keys_do_not_block_joins(store).await;
}

#[tokio::test]
async fn embedded_ignores_stray_lease_keys() {
    let (_dir, store) = embedded_store().await;
    stray_lease_keys_do_not_block_joins(store).await;
}
