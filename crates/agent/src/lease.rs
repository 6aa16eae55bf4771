//! The node's subnet lease: acquired with compare-and-swap, kept alive with a store lease,
//! reused after a restart, released by `twill node leave`. In a dual-stack cluster the same
//! record carries the node's IPv6 subnet, derived from its IPv4 one
//! ([`twill_ipam::subnets::subnet6_for`]), so both are taken in one write.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::Ipv4Net;
use twill_store::{KeyValue, LeaseId, Store};
use twill_types::cluster::ClusterConfig;
use twill_types::hash::fnv1a;
use twill_types::keys::{LEASES_PREFIX, lease_key, leave_key, subnet_of_key};
use twill_types::lease::Lease;

/// A lease this node holds.
#[derive(Debug, Clone)]
pub struct Held {
    pub lease: Lease,
    pub key: String,
    /// The store lease that keeps the key alive.
    pub store_lease: LeaseId,
}

/// Decodes one lease and checks that its subnet is a node subnet of one of the cluster's pools
/// (a lease for 0.0.0.0/1 would otherwise become a route for half the Internet). Keys or
/// values that do not parse are skipped by the callers (another node's bad data must neither
/// stop this one nor steer its routes) with the error as a warning.
pub fn admit(config: &ClusterConfig, kv: &KeyValue) -> Result<Lease, String> {
    admit_entry(config, &kv.key, &kv.value)
}

/// [`admit`] for a key and its value.
pub fn admit_entry(config: &ClusterConfig, key: &str, value: &[u8]) -> Result<Lease, String> {
    let lease = decode_entry(key, value)?;
    match config.pool_of(lease.subnet) {
        Some(pool) if twill_ipam::subnets::is_candidate(pool, lease.subnet) => {}
        _ => {
            return Err(format!(
                "ignoring {key}: {} is not a node subnet of the cluster's pools",
                lease.subnet
            ));
        }
    }
    // The IPv6 subnet goes with the IPv4 one; any other would route someone else's pods (or
    // any IPv6 prefix) to this node. A lease without one (an older agent's) is fine.
    if let Some(subnet6) = lease.subnet6
        && Some(subnet6) != twill_ipam::subnets::subnet6_for(config, lease.subnet)
    {
        return Err(format!(
            "ignoring {key}: {subnet6} is not the IPv6 subnet of {} in the cluster's IPv6 pools",
            lease.subnet
        ));
    }
    Ok(lease)
}

/// Decodes one lease and checks that its key names its subnet.
pub fn decode(kv: &KeyValue) -> Result<Lease, String> {
    decode_entry(&kv.key, &kv.value)
}

fn decode_entry(key: &str, value: &[u8]) -> Result<Lease, String> {
    let subnet = subnet_of_key(key).ok_or_else(|| format!("ignoring {key}: not a lease key"))?;
    let lease: Lease =
        serde_json::from_slice(value).map_err(|e| format!("ignoring {key}: invalid lease: {e}"))?;
    if lease.subnet != subnet {
        return Err(format!(
            "ignoring {key}: it holds subnet {} instead",
            lease.subnet
        ));
    }
    Ok(lease)
}

/// Takes (or re-takes) a subnet for `wanted.node`. `wanted.subnet` is ignored except as a
/// preference; `previous` is the subnet this node had before (from its node file).
/// `wanted.subnet6` is ignored too: the lease written carries the IPv6 subnet derived from
/// the IPv4 one (none in an IPv4-only cluster), also when it rewrites an older agent's lease
/// that had none.
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
            let existing = decode(kv).expect("decoded above");
            if kv.lease.is_some() && existing.public_net.addr() != wanted.public_net.addr() {
                // Same name, another address, lease still kept alive: most likely two hosts
                // with one name. Taking it over would put both on one subnet.
                bail!(
                    "node name {} already holds {} for {} and that lease is alive: is another \
                     host using this name? Give --node-name, or run `twill node leave` for it",
                    wanted.node,
                    existing.subnet,
                    existing.public_net.addr()
                );
            }
            wanted.subnet = existing.subnet;
            wanted.subnet6 = twill_ipam::subnets::subnet6_for(config, existing.subnet);
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
        wanted.subnet6 = twill_ipam::subnets::subnet6_for(config, subnet);
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

/// Writes `lease` (ours, with new data such as a rotated WireGuard key) under the key we hold,
/// kept alive by the store lease we hold: compare-and-swap against what is there, and only if
/// it is still our node's lease (a lost lease is leased again, not overwritten here).
pub async fn republish(store: &Store, held: &mut Held, lease: Lease) -> anyhow::Result<()> {
    for _ in 0..5 {
        let Some(kv) = store.get(&held.key).await? else {
            bail!("our lease {} is not in the store", held.key);
        };
        match decode(&kv) {
            Ok(current) if current.node == lease.node && current.subnet == lease.subnet => {}
            _ => bail!("{} no longer holds this node's lease", held.key),
        }
        let value = serde_json::to_vec(&lease).expect("lease serializes");
        if store
            .cas(&held.key, kv.mod_revision, &value, Some(held.store_lease))
            .await?
            .is_some()
        {
            held.lease = lease;
            return Ok(());
        }
        // Written meanwhile (our own renewal does not write it; someone else did): look again.
    }
    bail!("{} kept changing while publishing it", held.key)
}

/// A per-node, per-attempt seed so concurrent joiners spread over the pool.
fn seed_for(node: &str, attempt: u64) -> u64 {
    fnv1a(node.bytes()) ^ attempt.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// How long a leave marker lives (an agent started later removes it at once anyway).
const LEAVE_MARKER_TTL: Duration = Duration::from_secs(600);

/// True when `twill node leave` marked `node` as leaving.
pub async fn leave_marker(store: &Store, node: &str) -> Result<bool, twill_store::StoreError> {
    Ok(store.get(&leave_key(node)).await?.is_some())
}

/// Removes `node`'s leave marker: an agent that starts joins, whatever an earlier leave said.
pub async fn clear_leave_marker(store: &Store, node: &str) -> anyhow::Result<()> {
    store
        .delete(&leave_key(node))
        .await
        .map(drop)
        .with_context(|| format!("removing the leave marker {}", leave_key(node)))
}

/// Deletes every lease of `node`, after marking it as leaving (so its running agent knows the
/// deletion is a leave); returns the subnets released.
pub async fn release_node(store: &Store, node: &str) -> anyhow::Result<Vec<Ipv4Net>> {
    let (kvs, _) = store.list(LEASES_PREFIX).await?;
    if kvs
        .iter()
        .any(|kv| decode(kv).is_ok_and(|l| l.node == node))
    {
        let lease = store
            .grant_lease(LEAVE_MARKER_TTL)
            .await
            .context("granting a store lease for the leave marker")?;
        let marker = serde_json::json!({ "node": node });
        store
            .put(&leave_key(node), marker.to_string().as_bytes(), Some(lease))
            .await
            .with_context(|| format!("writing the leave marker {}", leave_key(node)))?;
    }
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

    fn kv(key: &str, subnet: &str) -> KeyValue {
        let lease = Lease {
            node: "x".into(),
            subnet: subnet.parse().unwrap(),
            public_net: "192.168.0.9/24".parse().unwrap(),
            backend: twill_types::cluster::BackendKind::HostGw,
            vtep_mac: None,
            wireguard_public_key: None,
            subnet6: None,
            public_net6: None,
            vtep_mac6: None,
        };
        KeyValue {
            key: key.into(),
            value: serde_json::to_vec(&lease).unwrap(),
            create_revision: 1,
            mod_revision: 1,
            lease: None,
        }
    }

    #[test]
    fn only_node_subnets_of_the_pools_are_admitted() {
        let config = ClusterConfig::parse(r#"{"Network":"10.244.0.0/16","SubnetLen":24}"#).unwrap();
        assert!(admit(&config, &kv("/twill/leases/10.244.7.0-24", "10.244.7.0/24")).is_ok());
        for (key, subnet) in [
            ("/twill/leases/0.0.0.0-1", "0.0.0.0/1"),
            ("/twill/leases/10.244.0.0-17", "10.244.0.0/17"),
            ("/twill/leases/10.244.7.0-25", "10.244.7.0/25"),
            ("/twill/leases/10.9.0.0-24", "10.9.0.0/24"),
            // SubnetMin skips the pool's first subnet, as in Flannel.
            ("/twill/leases/10.244.0.0-24", "10.244.0.0/24"),
        ] {
            let err = admit(&config, &kv(key, subnet)).unwrap_err();
            assert!(err.contains("not a node subnet"), "{subnet}: {err}");
        }
        let err = admit(&config, &kv("/twill/leases/10.244.8.0-24", "10.244.7.0/24")).unwrap_err();
        assert!(err.contains("holds subnet"), "{err}");
    }

    #[test]
    fn seeds_differ_per_node_and_attempt() {
        assert_ne!(seed_for("n1", 0), seed_for("n2", 0));
        assert_ne!(seed_for("n1", 0), seed_for("n1", 1));
        assert_eq!(seed_for("n1", 3), seed_for("n1", 3));
    }
}
