//! A node's lease as published in the store at
//! [`lease_key`](crate::keys::lease_key) (the key space is in [`keys`](crate::keys)).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::MacAddr;
use crate::cluster::BackendKind;

/// What a node publishes about itself: its subnet, how to reach it, backend data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// The node's name (unique in the cluster).
    pub node: String,
    /// The node's IPv4 pod subnet; none in an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Ipv4Net>,
    /// The node's IPv4 underlay address, with the prefix of its underlay subnet: peers whose
    /// `public_ip` lies in a node's `public_net` share its L2 segment. None for a node with
    /// an IPv6 underlay only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_net: Option<Ipv4Net>,
    /// The backend this node programs.
    pub backend: BackendKind,
    /// The MAC address of the node's VXLAN device (vxlan backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac: Option<MacAddr>,
    /// The node's WireGuard public key in standard base64 (44 characters), when WireGuard
    /// runs. A peer that should be reached through WireGuard and publishes none (or a
    /// malformed one) is not programmed at all: never in clear instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key: Option<String>,
    /// The node's IPv6 pod subnet: in a dual-stack cluster leased with `subnet` in this one
    /// record, in an IPv6-only cluster the subnet the lease is keyed by (Flannel's
    /// `IPv6Subnet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<Ipv6Net>,
    /// The node's IPv6 underlay address with its prefix (Flannel's `PublicIPv6`), when it has
    /// one: backends use the family both ends have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_net6: Option<Ipv6Net>,
    /// The MAC address of the node's IPv6 VXLAN device (Flannel's `BackendV6Data.VtepMAC`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_mac6: Option<MacAddr>,
}

impl Lease {
    /// The subnet that names the lease's store key
    /// ([`lease_key_of`](crate::keys::lease_key_of)): the IPv4 subnet, or in an IPv6-only
    /// cluster the IPv6 one. None for a lease with neither (which no store key can hold).
    pub fn key_subnet(&self) -> Option<IpNet> {
        match (self.subnet, self.subnet6) {
            (Some(subnet), _) => Some(IpNet::V4(subnet)),
            (None, Some(subnet6)) => Some(IpNet::V6(subnet6)),
            (None, None) => None,
        }
    }

    /// The node's IPv4 underlay address, when it has one.
    pub fn public_ip(&self) -> Option<Ipv4Addr> {
        self.public_net.map(|n| n.addr())
    }

    /// The node's IPv6 underlay address, when it has one.
    pub fn public_ip6(&self) -> Option<Ipv6Addr> {
        self.public_net6.map(|n| n.addr())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_json_is_stable() {
        let lease = Lease {
            node: "n1".into(),
            subnet: Some("10.244.3.0/24".parse().unwrap()),
            public_net: Some("192.168.1.10/24".parse().unwrap()),
            backend: BackendKind::Vxlan,
            vtep_mac: Some("02:00:00:00:00:01".parse().unwrap()),
            wireguard_public_key: None,
            subnet6: None,
            public_net6: None,
            vtep_mac6: None,
        };
        let json = serde_json::to_string(&lease).unwrap();
        assert_eq!(
            json,
            r#"{"node":"n1","subnet":"10.244.3.0/24","publicNet":"192.168.1.10/24","backend":"vxlan","vtepMac":"02:00:00:00:00:01"}"#
        );
        assert_eq!(serde_json::from_str::<Lease>(&json).unwrap(), lease);
        assert_eq!(lease.public_ip(), Some("192.168.1.10".parse().unwrap()));
        assert_eq!(lease.key_subnet(), Some("10.244.3.0/24".parse().unwrap()));
    }

    #[test]
    fn dual_stack_lease_json_round_trips() {
        let json = r#"{"node":"n1","subnet":"10.244.3.0/24","publicNet":"192.168.1.10/24","backend":"vxlan","vtepMac":"02:00:00:00:00:01","subnet6":"fd00:10:244:3::/64","publicNet6":"fd00:1::10/64","vtepMac6":"02:00:00:00:00:02"}"#;
        let lease: Lease = serde_json::from_str(json).unwrap();
        assert_eq!(lease.subnet6, Some("fd00:10:244:3::/64".parse().unwrap()));
        assert_eq!(lease.public_ip6(), Some("fd00:1::10".parse().unwrap()));
        assert_eq!(serde_json::to_string(&lease).unwrap(), json);
        // Dual-stack: keyed by the IPv4 subnet.
        assert_eq!(lease.key_subnet(), Some("10.244.3.0/24".parse().unwrap()));
    }

    #[test]
    fn ipv6_only_lease_json_has_no_ipv4_fields() {
        let json = r#"{"node":"n1","backend":"host-gw","subnet6":"fd00:10:244:3::/64","publicNet6":"fd00:1::10/64"}"#;
        let lease: Lease = serde_json::from_str(json).unwrap();
        assert_eq!(
            (lease.subnet, lease.public_net, lease.public_ip()),
            (None, None, None)
        );
        assert_eq!(
            lease.key_subnet(),
            Some("fd00:10:244:3::/64".parse().unwrap())
        );
        assert_eq!(serde_json::to_string(&lease).unwrap(), json);
        let neither = Lease {
            subnet6: None,
            ..lease
        };
        assert_eq!(neither.key_subnet(), None);
    }
}
