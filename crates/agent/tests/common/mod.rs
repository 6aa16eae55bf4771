//! Shared by the agent's lease tests: the lease a node asks for, nodes joining at once, and
//! a fresh embedded store.

#![allow(dead_code)]

use std::time::Duration;

use tempfile::TempDir;
use twill_agent::lease::{self, Held};
use twill_store::Store;
use twill_types::cluster::{BackendKind, ClusterConfig};
use twill_types::lease::Lease;

pub const TTL: Duration = Duration::from_secs(60);

/// The IPv4-only lease node `node` asks for; the allocator picks its subnet.
pub fn wanted(node: &str) -> Lease {
    Lease {
        node: node.to_string(),
        subnet: None,
        public_net: Some("192.168.0.10/24".parse().unwrap()),
        backend: BackendKind::HostGw,
        vtep_mac: None,
        wireguard_public_key: None,
        subnet6: None,
        public_net6: None,
        vtep_mac6: None,
    }
}

/// Nodes `node0` to `node{n-1}`, asking for `wanted` leases at once; what each got.
pub async fn join_at_once(
    store: &Store,
    cfg: &ClusterConfig,
    n: usize,
    wanted: fn(&str) -> Lease,
) -> Vec<Held> {
    let mut tasks = Vec::new();
    for i in 0..n {
        let (store, cfg) = (store.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            lease::acquire(&store, &cfg, wanted(&format!("node{i}")), None, TTL)
                .await
                .unwrap()
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        held.push(t.await.unwrap());
    }
    held
}

/// A new embedded store in a temporary directory, which must be kept while the store is used.
pub async fn embedded_store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().join("store.redb").display());
    let store = Store::connect_or_create(&url).await.unwrap();
    (dir, store)
}
