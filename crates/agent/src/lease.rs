//! The node's subnet lease: acquired with compare-and-swap, kept alive with a store lease,
//! reused after a restart, released by `twill node leave`. In a dual-stack cluster the same
//! record carries the node's IPv6 subnet, derived from its IPv4 one
//! ([`twill_ipam::subnets::subnet6_for`]), so both are taken in one write. In an IPv6-only
//! cluster (no IPv4 pool) the IPv6 subnet is chosen from the IPv6 pools
//! ([`twill_ipam::subnets::pick_subnet6`]) and names the key
//! ([`lease_key6`](twill_types::keys::lease_key6)), with the same compare-and-swap.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use twill_store::{KeyValue, LeaseId, Store};
use twill_types::cluster::ClusterConfig;
use twill_types::hash::fnv1a;
use twill_types::keys::{
    LEASES_PREFIX, key_subnet_of_key, lease_key_of, leave_key, subnet_of_key, subnet6_of_key,
};
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
    match lease.key_subnet() {
        Some(IpNet::V4(subnet)) => admit4(config, key, &lease, subnet)?,
        Some(IpNet::V6(subnet6)) => admit6(config, key, &lease, subnet6)?,
        None => unreachable!("decode_entry checked the key names the lease's subnet"),
    }
    Ok(lease)
}

/// The checks of a lease keyed by its IPv4 subnet (IPv4 and dual-stack clusters).
fn admit4(config: &ClusterConfig, key: &str, lease: &Lease, subnet: Ipv4Net) -> Result<(), String> {
    match config.pool_of(subnet) {
        Some(pool) if twill_ipam::subnets::is_candidate(pool, subnet) => {}
        _ => {
            return Err(format!(
                "ignoring {key}: {subnet} is not a node subnet of the cluster's pools"
            ));
        }
    }
    // The IPv6 subnet goes with the IPv4 one; any other would route someone else's pods (or
    // any IPv6 prefix) to this node. A lease without one (an older agent's) is fine.
    if let Some(subnet6) = lease.subnet6
        && Some(subnet6) != twill_ipam::subnets::subnet6_for(config, subnet)
    {
        return Err(format!(
            "ignoring {key}: {subnet6} is not the IPv6 subnet of {subnet} in the cluster's IPv6 \
             pools"
        ));
    }
    // The backends of a cluster with IPv4 pools reach a peer's IPv4 pods over IPv4.
    if lease.public_net.is_none() {
        return Err(format!(
            "ignoring {key}: it publishes no IPv4 underlay address (publicNet), which a cluster \
             with IPv4 pools needs"
        ));
    }
    Ok(())
}

/// The checks of a lease keyed by its IPv6 subnet: only an IPv6-only cluster has them.
fn admit6(
    config: &ClusterConfig,
    key: &str,
    lease: &Lease,
    subnet6: Ipv6Net,
) -> Result<(), String> {
    if !config.pools.is_empty() {
        return Err(format!(
            "ignoring {key}: an IPv6-only lease, but the cluster has IPv4 pools"
        ));
    }
    match config.pool6_of(subnet6) {
        Some(pool) if twill_ipam::subnets::is_candidate6(pool, subnet6) => {}
        _ => {
            return Err(format!(
                "ignoring {key}: {subnet6} is not a node subnet of the cluster's IPv6 pools"
            ));
        }
    }
    if lease.public_net6.is_none() {
        return Err(format!(
            "ignoring {key}: it publishes no IPv6 underlay address (publicNet6), which an \
             IPv6-only cluster needs"
        ));
    }
    Ok(())
}

/// Decodes one lease and checks that its key names its subnet.
pub fn decode(kv: &KeyValue) -> Result<Lease, String> {
    decode_entry(&kv.key, &kv.value)
}

fn decode_entry(key: &str, value: &[u8]) -> Result<Lease, String> {
    let subnet =
        key_subnet_of_key(key).ok_or_else(|| format!("ignoring {key}: not a lease key"))?;
    let lease: Lease =
        serde_json::from_slice(value).map_err(|e| format!("ignoring {key}: invalid lease: {e}"))?;
    match lease.key_subnet() {
        Some(held) if held == subnet => Ok(lease),
        Some(held) => Err(format!("ignoring {key}: it holds subnet {held} instead")),
        None => Err(format!("ignoring {key}: it holds no subnet")),
    }
}

/// Whether a lease keyed by `subnet` belongs to `config`'s pools: IPv4 subnets to the IPv4
/// pools, IPv6 ones (the keys of an IPv6-only cluster) to the IPv6 pools of a config without
/// IPv4 pools.
fn in_pools(config: &ClusterConfig, subnet: IpNet) -> bool {
    match subnet {
        IpNet::V4(subnet) => config.pool_of(subnet).is_some(),
        IpNet::V6(subnet6) => config.pools.is_empty() && config.pool6_of(subnet6).is_some(),
    }
}

/// The underlay address that identifies a node's host: its IPv4 one, else its IPv6 one.
fn host_address(lease: &Lease) -> Option<IpAddr> {
    lease
        .public_ip()
        .map(IpAddr::V4)
        .or_else(|| lease.public_ip6().map(IpAddr::V6))
}

/// Sets `wanted`'s subnets to those of `subnet` (its key subnet): an IPv4 subnet with the
/// IPv6 one derived from it, or an IPv6-only cluster's IPv6 subnet alone.
fn take(config: &ClusterConfig, wanted: &mut Lease, subnet: IpNet) {
    (wanted.subnet, wanted.subnet6) = match subnet {
        IpNet::V4(subnet) => (
            Some(subnet),
            twill_ipam::subnets::subnet6_for(config, subnet),
        ),
        IpNet::V6(subnet6) => (None, Some(subnet6)),
    };
}

/// The free subnet a joining node tries: from the IPv4 pools, or in an IPv6-only cluster from
/// the IPv6 pools. The error says which pools are full.
fn pick(
    config: &ClusterConfig,
    kvs: &[KeyValue],
    previous: Option<IpNet>,
    seed: u64,
) -> anyhow::Result<IpNet> {
    let (picked, pools, taken) = if config.pools.is_empty() {
        let taken: HashSet<Ipv6Net> = kvs
            .iter()
            .filter_map(|kv| subnet6_of_key(&kv.key))
            .collect();
        let preferred = match previous {
            Some(IpNet::V6(p)) => Some(p),
            _ => None,
        };
        let pools: Vec<String> = config
            .ipv6_pools
            .iter()
            .map(|p| p.cidr.to_string())
            .collect();
        let picked = twill_ipam::subnets::pick_subnet6(config, &taken, preferred, seed);
        (picked.map(IpNet::V6), pools, taken.len())
    } else {
        let taken: HashSet<Ipv4Net> = kvs.iter().filter_map(|kv| subnet_of_key(&kv.key)).collect();
        let preferred = match previous {
            Some(IpNet::V4(p)) => Some(p),
            _ => None,
        };
        let pools: Vec<String> = config.pools.iter().map(|p| p.cidr.to_string()).collect();
        let picked = twill_ipam::subnets::pick_subnet(config, &taken, preferred, seed);
        (picked.map(IpNet::V4), pools, taken.len())
    };
    match picked {
        Some(subnet) => Ok(subnet),
        None => bail!(
            "no free subnet: every node subnet of {} is leased ({taken} leases); remove nodes \
             with `twill node leave` or add a pool",
            pools.join(", "),
        ),
    }
}

/// Takes (or re-takes) a subnet for `wanted.node`. `wanted.subnet` is ignored except as a
/// preference; `previous` is the subnet this node had before (from its node file: the IPv4
/// subnet, or the IPv6 one in an IPv6-only cluster). `wanted.subnet6` is ignored too: the
/// lease written carries the IPv6 subnet derived from the IPv4 one (none in an IPv4-only
/// cluster), also when it rewrites an older agent's lease that had none; in an IPv6-only
/// cluster it is the subnet picked, and `wanted.subnet` is cleared.
pub async fn acquire(
    store: &Store,
    config: &ClusterConfig,
    mut wanted: Lease,
    previous: Option<IpNet>,
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
        let ours = |l: &Lease| {
            l.node == wanted.node && l.key_subnet().is_some_and(|s| in_pools(config, s))
        };
        if let Some(kv) = kvs.iter().find(|kv| decode(kv).is_ok_and(|l| ours(&l))) {
            let existing = decode(kv).expect("decoded above");
            let subnet = existing.key_subnet().expect("ours() checked it");
            if kv.lease.is_some() && host_address(&existing) != host_address(&wanted) {
                // Same name, another address, lease still kept alive: most likely two hosts
                // with one name. Taking it over would put both on one subnet.
                let address = host_address(&existing)
                    .map_or_else(|| "no underlay address".to_string(), |a| a.to_string());
                bail!(
                    "node name {} already holds {subnet} for {address} and that lease is alive: \
                     is another host using this name? Give --node-name, or run `twill node \
                     leave` for it",
                    wanted.node,
                );
            }
            take(config, &mut wanted, subnet);
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
        let subnet = pick(config, &kvs, previous, seed_for(&wanted.node, attempt))?;
        take(config, &mut wanted, subnet);
        let key = lease_key_of(subnet);
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
            Ok(current)
                if current.node == lease.node && current.key_subnet() == lease.key_subnet() => {}
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
/// deletion is a leave); returns the subnets released (the subnets naming their keys).
pub async fn release_node(store: &Store, node: &str) -> anyhow::Result<Vec<IpNet>> {
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
            && let Some(subnet) = lease.key_subnet()
            && store.cas_delete(&kv.key, kv.mod_revision).await?
        {
            released.push(subnet);
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
            subnet: Some(subnet.parse().unwrap()),
            public_net: Some("192.168.0.9/24".parse().unwrap()),
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
