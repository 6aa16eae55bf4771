//! A node's lease as published in the store, and the store's key layout.
//!
//! Key layout (the same in etcd and the embedded store):
//! - `/twill/config`: the [`ClusterConfig`](crate::cluster::ClusterConfig) as JSON.
//! - `/twill/leases/<a.b.c.d>-<len>`: one [`Lease`] per leased node subnet, attached to a
//!   store lease with a TTL that the node's agent keeps alive (Flannel's layout, under twill's
//!   prefix).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::MacAddr;
use crate::cluster::BackendKind;

/// Key of the cluster config.
pub const CONFIG_KEY: &str = "/twill/config";
/// Prefix of all lease keys.
pub const LEASES_PREFIX: &str = "/twill/leases/";

/// The store key of a node subnet's lease.
pub fn lease_key(subnet: Ipv4Net) -> String {
    format!(
        "{LEASES_PREFIX}{}-{}",
        subnet.network(),
        subnet.prefix_len()
    )
}

/// The subnet named by a lease key, if the key is one.
pub fn subnet_of_key(key: &str) -> Option<Ipv4Net> {
    let rest = key.strip_prefix(LEASES_PREFIX)?;
    let (addr, len) = rest.split_once('-')?;
    let net = Ipv4Net::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
    (net.network() == net.addr()).then_some(net)
}

/// What a node publishes about itself: its subnet, how to reach it, backend data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The node's name (unique in the cluster).
    pub node: String,
    /// The node's pod subnet.
    pub subnet: Ipv4Net,
    /// The node's underlay address, with the prefix of its underlay subnet: peers whose
    /// `public_ip` lies in a node's `public_net` share its L2 segment.
    pub public_net: Ipv4Net,
    /// The backend this node programs.
    pub backend: BackendKind,
    /// The MAC address of the node's VXLAN device (vxlan backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
}

impl Lease {
    /// The node's underlay address.
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_net.addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let net: Ipv4Net = "10.244.3.0/24".parse().unwrap();
        assert_eq!(lease_key(net), "/twill/leases/10.244.3.0-24");
        assert_eq!(subnet_of_key(&lease_key(net)), Some(net));
        assert_eq!(subnet_of_key("/twill/leases/10.244.3.1-24"), None);
        assert_eq!(subnet_of_key("/twill/config"), None);
        assert_eq!(subnet_of_key("/twill/leases/x-24"), None);
    }

    #[test]
    fn lease_json_is_stable() {
        let lease = Lease {
            node: "n1".into(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            public_net: "192.168.1.10/24".parse().unwrap(),
            backend: BackendKind::Vxlan,
            vtep_mac: Some("02:00:00:00:00:01".parse().unwrap()),
        };
        let json = serde_json::to_string(&lease).unwrap();
        assert_eq!(
            json,
            r#"{"node":"n1","subnet":"10.244.3.0/24","publicNet":"192.168.1.10/24","backend":"vxlan","vtepMac":"02:00:00:00:00:01"}"#
        );
        assert_eq!(serde_json::from_str::<Lease>(&json).unwrap(), lease);
        assert_eq!(
            lease.public_ip(),
            "192.168.1.10".parse::<Ipv4Addr>().unwrap()
        );
    }
}
