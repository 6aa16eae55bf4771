//! The node's subnet lease: acquired with compare-and-swap, kept alive with a store lease,
//! reused after a restart, released by `twill node leave`.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use twill_store::{KeyValue, LeaseId, Store};
use twill_types::cluster::ClusterConfig;
use twill_types::lease::{LEASES_PREFIX, Lease, lease_key, subnet_of_key};

/// A lease this node holds.
#[derive(Debug, Clone)]
pub struct Held {
    pub lease: Lease,
    pub key: String,
    /// The store lease that keeps the key alive.
    pub store_lease: LeaseId,
}

/// Decodes every lease under the prefix; keys or values that do not parse are skipped (another
/// node's bad data must not stop this one) and returned as warnings.
pub fn decode_all(kvs: &[KeyValue]) -> (Vec<(String, Lease)>, Vec<String>) {
    let mut leases = Vec::new();
    let mut warnings = Vec::new();
    for kv in kvs {
        match decode(kv) {
            Ok(lease) => leases.push((kv.key.clone(), lease)),
            Err(e) => warnings.push(e),
        }
    }
    (leases, warnings)
}

/// Decodes one lease and checks that its key names its subnet.
pub fn decode(kv: &KeyValue) -> Result<Lease, String> {
    let subnet =
        subnet_of_key(&kv.key).ok_or_else(|| format!("ignoring {}: not a lease key", kv.key))?;
    let lease: Lease = serde_json::from_slice(&kv.value)
        .map_err(|e| format!("ignoring {}: invalid lease: {e}", kv.key))?;
    if lease.subnet != subnet {
        return Err(format!(
            "ignoring {}: it holds subnet {} instead",
            kv.key, lease.subnet
        ));
    }
    Ok(lease)
}

/// Takes (or re-takes) a subnet for `wanted.node`. `wanted.subnet` is ignored except as a
/// preference; `previous` is the subnet this node had before (from its node file).
pub async fn acquire(
    store: &Store,
    config: &ClusterConfig,
    mut wanted: Lease,
    previous: Option<Ipv4Net>,
    ttl: Duration,
) -> anyhow::Result<Held> {
    let store_lease = store
        .grant_lease(ttl)
        .await
        .context("granting a store lease")?;
    let value_for = |lease: &Lease| serde_json::to_vec(lease).expect("lease serializes");
    for attempt in 0..200u64 {
        let (kvs, _) = store.list(LEASES_PREFIX).await?;
        // Our own lease from before a restart: keep its subnet, refresh its data and TTL.
        if let Some(kv) = kvs.iter().find(|kv| {
            decode(kv).is_ok_and(|l| l.node == wanted.node && config.pool_of(l.subnet).is_some())
        }) {
            wanted.subnet = subnet_of_key(&kv.key).expect("decoded above");
            let written = store
                .cas(
                    &kv.key,
                    kv.mod_revision,
                    &value_for(&wanted),
                    Some(store_lease),
                )
                .await?;
            if written.is_some() {
                return Ok(Held {
                    key: kv.key.clone(),
                    lease: wanted,
                    store_lease,
                });
            }
            continue;
        }
        let taken: HashSet<Ipv4Net> = kvs.iter().filter_map(|kv| subnet_of_key(&kv.key)).collect();
        let seed = seed_for(&wanted.node, attempt);
        let Some(subnet) = twill_ipam::subnets::pick_subnet(config, &taken, previous, seed) else {
            let pools: Vec<String> = config.pools.iter().map(|p| p.cidr.to_string()).collect();
            bail!(
                "no free subnet: every node subnet of {} is leased ({} leases); \
                 remove nodes with `twill node leave` or add a pool",
                pools.join(", "),
                taken.len()
            );
        };
        wanted.subnet = subnet;
        let key = lease_key(subnet);
        if store
            .create(&key, &value_for(&wanted), Some(store_lease))
            .await?
            .is_some()
        {
            return Ok(Held {
                key,
                lease: wanted,
                store_lease,
            });
        }
        // Another node took it between our list and create: look again.
    }
    bail!("could not lease a subnet after 200 attempts (too much contention?)")
}

/// A per-node, per-attempt seed so concurrent joiners spread over the pool.
fn seed_for(node: &str, attempt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ attempt.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Deletes every lease of `node`; returns the subnets released.
pub async fn release_node(store: &Store, node: &str) -> anyhow::Result<Vec<Ipv4Net>> {
    let (kvs, _) = store.list(LEASES_PREFIX).await?;
    let mut released = Vec::new();
    for kv in &kvs {
        if let Ok(lease) = decode(kv)
            && lease.node == node
            && store.cas_delete(&kv.key, kv.mod_revision).await?
        {
            released.push(lease.subnet);
        }
    }
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_differ_per_node_and_attempt() {
        assert_ne!(seed_for("n1", 0), seed_for("n2", 0));
        assert_ne!(seed_for("n1", 0), seed_for("n1", 1));
        assert_eq!(seed_for("n1", 3), seed_for("n1", 3));
    }
}
