//! Every key of twill's store (etcd or the embedded store; the same layout in both), with the
//! functions that build and read them. Values are JSON.
//!
//! | Key                                          | Value                                   | Written by                          |
//! |----------------------------------------------|-----------------------------------------|-------------------------------------|
//! | `/twill/config`                              | the cluster config ([`ClusterConfig`])  | `twill cluster init`                |
//! | `/twill/leases/<a.b.c.d>-<len>`              | a node subnet's [`Lease`], on a store lease with a TTL the node's agent keeps alive (Flannel's layout, under twill's prefix) | the node's agent |
//! | `/twill/leases/0.0.0.0-0&<ipv6>-<len>`       | the same in an IPv6-only cluster, keyed by the node's IPv6 subnet (Flannel's key for a lease without IPv4 subnet) | the node's agent |
//! | `/twill/leaving/<node>`                      | a leave marker: the node's agent leaves only when it finds one, a lease that disappears without it is leased again | `twill node leave` |
//! | `/twill/bgp/peers/<address>[@<node>]`        | an external BGP peer ([`BgpPeer`]) for every node, or for one | `twill bgp peer add`  |
//! | `/twill/policy/k8s/<namespace>/<name>`       | a Kubernetes NetworkPolicy              | `twill policy apply`                |
//! | `/twill/policy/cluster/<name>`               | a ClusterPolicy                         | `twill policy apply`                |
//! | `/twill/namespaces/<name>`                   | a namespace and its labels (one with endpoints but no key has none besides `kubernetes.io/metadata.name`) | `twill namespace label` |
//! | `/twill/endpoints/<namespace>/<name>`        | a pod as a policy endpoint, with the labels the runtime gave the CNI plugin | the agent of the pod's node |
//! | `/twill/endpoint-labels/<namespace>/<name>`  | label changes of an endpoint, kept apart so the agent republishing the runtime's labels never undoes them | `twill endpoint label` |
//!
//! The policy values are the model types of `twill-policy`.
//!
//! [`ClusterConfig`]: crate::cluster::ClusterConfig
//! [`Lease`]: crate::lease::Lease
//! [`BgpPeer`]: crate::cluster::BgpPeer

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Key of the cluster config.
pub const CONFIG_KEY: &str = "/twill/config";

/// Prefix of all lease keys.
pub const LEASES_PREFIX: &str = "/twill/leases/";

/// Where `twill node leave` marks a node as leaving, before it deletes the node's lease: the
/// node's agent leaves only when it finds this marker; a lease that disappears without it
/// (deleted by hand, taken, expired) is leased again.
pub const LEAVING_PREFIX: &str = "/twill/leaving/";

/// Where `twill bgp peer add` keeps external peers: `<prefix><address>` for every node,
/// `<prefix><address>@<node>` for one node. Agents mirror it and apply changes live.
pub const BGP_PEERS_PREFIX: &str = "/twill/bgp/peers/";

/// Both kinds of policy.
pub const POLICY_PREFIX: &str = "/twill/policy/";
/// Kubernetes NetworkPolicies, by namespace and name.
pub const NETWORK_POLICY_PREFIX: &str = "/twill/policy/k8s/";
/// twill's ordered ClusterPolicies, by name.
pub const CLUSTER_POLICY_PREFIX: &str = "/twill/policy/cluster/";
/// Namespaces and their labels.
pub const NAMESPACE_PREFIX: &str = "/twill/namespaces/";
/// Pods as policy endpoints, by namespace and name.
pub const ENDPOINT_PREFIX: &str = "/twill/endpoints/";
/// Users' label changes of endpoints, by namespace and name.
pub const ENDPOINT_LABELS_PREFIX: &str = "/twill/endpoint-labels/";

/// The store key of a node subnet's lease.
pub fn lease_key(subnet: Ipv4Net) -> String {
    format!(
        "{LEASES_PREFIX}{}-{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The subnet named by a lease key, if the key is one of an IPv4 subnet.
pub fn subnet_of_key(key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(LEASES_PREFIX)?;
    let (addr, len) = rest.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (net.network() == net.addr()).then_some(net)
}

/// What stands for the missing IPv4 subnet in the key of an IPv6-only lease: Flannel names
/// such a lease `0.0.0.0-0&<IPv6 subnet>` (its empty IPv4 subnet, then the IPv6 one).
const NO_IPV4_SUBNET: &str = "0.0.0.0-0&";

/// The store key of a node's IPv6 subnet's lease in an IPv6-only cluster, as Flannel names
/// it: `/twill/leases/0.0.0.0-0&fd00:10:244:3::-64` (the address in its canonical text).
pub fn lease_key6(subnet6: Ipv6Net) -> String {
    format!(
        "{LEASES_PREFIX}{NO_IPV4_SUBNET}{}-{}",
        subnet6.network(),
        subnet6.prefix_len()
    )
}

/// The IPv6 subnet named by an IPv6-only lease key, if the key is one exactly as
/// [`lease_key6`] writes it (one subnet has one key: another spelling of the address, or
/// host bits, is no lease key).
pub fn subnet6_of_key(key: &str) -> Option<Ipv6Net> {
    let rest = key
        .strip_prefix(LEASES_PREFIX)?
        .strip_prefix(NO_IPV4_SUBNET)?;
    let (addr, len) = rest.rsplit_once('-')?;
    let net = Ipv6Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (net.network() == net.addr() && lease_key6(net) == key).then_some(net)
}

/// The store key of a lease keyed by `subnet` ([`Lease::key_subnet`](crate::lease::Lease::key_subnet)).
pub fn lease_key_of(subnet: IpNet) -> String {
    match subnet {
        IpNet::V4(subnet) => lease_key(subnet),
        IpNet::V6(subnet6) => lease_key6(subnet6),
    }
}

/// The subnet named by a lease key of either kind.
pub fn key_subnet_of_key(key: &str) -> Option<IpNet> {
    subnet_of_key(key)
        .map(IpNet::V4)
        .or_else(|| subnet6_of_key(key).map(IpNet::V6))
}

/// The leave marker of `node`.
pub fn leave_key(node: &str) -> String {
    format!("{LEAVING_PREFIX}{node}")
}

pub fn network_policy_key(namespace: &str, name: &str) -> String {
    format!("{NETWORK_POLICY_PREFIX}{namespace}/{name}")
}

pub fn cluster_policy_key(name: &str) -> String {
    format!("{CLUSTER_POLICY_PREFIX}{name}")
}

pub fn namespace_key(name: &str) -> String {
    format!("{NAMESPACE_PREFIX}{name}")
}

pub fn endpoint_key(namespace: &str, name: &str) -> String {
    format!("{ENDPOINT_PREFIX}{namespace}/{name}")
}

pub fn endpoint_labels_key(namespace: &str, name: &str) -> String {
    format!("{ENDPOINT_LABELS_PREFIX}{namespace}/{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_keys_round_trip() {
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(lease_key(net), "/twill/leases/10.244.3.0-24");
        assert_eq!(subnet_of_key(&lease_key(net)), Some(net));
        assert_eq!(subnet_of_key("/twill/leases/10.244.3.1-24"), None);
        assert_eq!(subnet_of_key("/twill/config"), None);
        assert_eq!(subnet_of_key("/twill/leases/x-24"), None);
    }

    #[test]
    fn ipv6_only_lease_keys_round_trip_as_flannel_names_them() {
        let net: Ipv6Net = "fd00:10:244:3::/64".parse().unwrap();
        let key = lease_key6(net);
        assert_eq!(key, "/twill/leases/0.0.0.0-0&fd00:10:244:3::-64");
        assert_eq!(subnet6_of_key(&key), Some(net));
        assert_eq!(key_subnet_of_key(&key), Some(IpNet::V6(net)));
        assert_eq!(lease_key_of(IpNet::V6(net)), key);
        // Not an IPv4 lease key (an older agent ignores it).
        assert_eq!(subnet_of_key(&key), None);
        for not in [
            "/twill/leases/0.0.0.0-0&fd00:10:244:3::1-64",
            "/twill/leases/0.0.0.0-0&fd00:10:244:03::-64",
            "/twill/leases/0.0.0.0-0&fd00:0010:244:3:0:0:0:0-64",
            "/twill/leases/0.0.0.0-0&fd00:10:244:3::-129",
            "/twill/leases/0.0.0.0-0&fd00:10:244:3::",
            "/twill/leases/10.0.0.0-8&fd00:10:244:3::-64",
            "/twill/leases/fd00:10:244:3::-64",
        ] {
            assert_eq!(key_subnet_of_key(not), None, "{not}");
        }
        let v4: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(key_subnet_of_key(&lease_key(v4)), Some(IpNet::V4(v4)));
    }

    #[test]
    fn policy_keys_nest_under_their_prefixes() {
        assert_eq!(
            network_policy_key("prod", "web"),
            "/twill/policy/k8s/prod/web"
        );
        assert!(network_policy_key("a", "b").starts_with(POLICY_PREFIX));
        assert!(cluster_policy_key("q").starts_with(POLICY_PREFIX));
        assert_eq!(endpoint_key("x", "a"), "/twill/endpoints/x/a");
        // Endpoint keys and label keys never share a prefix scan.
        assert!(!endpoint_labels_key("x", "a").starts_with(ENDPOINT_PREFIX));
    }

    #[test]
    fn kinds_never_share_a_prefix_scan() {
        let prefixes = [
            LEASES_PREFIX,
            LEAVING_PREFIX,
            BGP_PEERS_PREFIX,
            POLICY_PREFIX,
            NAMESPACE_PREFIX,
            ENDPOINT_PREFIX,
            ENDPOINT_LABELS_PREFIX,
        ];
        for a in prefixes {
            assert!(a.starts_with("/twill/") && a.ends_with('/'), "{a}");
            assert!(!CONFIG_KEY.starts_with(a));
            for b in prefixes {
                assert!(a == b || !b.starts_with(a), "{b} lies under {a}");
            }
        }
        assert_eq!(leave_key("n1"), "/twill/leaving/n1");
    }
}
