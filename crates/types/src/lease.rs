//! A node's lease as published in the store at
//! [`lease_key`](crate::keys::lease_key) (the key space is in [`keys`](crate::keys)).

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::MacAddr;
use crate::cluster::BackendKind;

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
    /// The node's WireGuard public key in standard base64 (44 characters), when WireGuard
    /// runs. A peer that should be reached through WireGuard and publishes none (or a
    /// malformed one) is not programmed at all: never in clear instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard_public_key: Option<String>,
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
    fn lease_json_is_stable() {
        let lease = Lease {
            node: "n1".into(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            public_net: "192.168.1.10/24".parse().unwrap(),
            backend: BackendKind::Vxlan,
            vtep_mac: Some("02:00:00:00:00:01".parse().unwrap()),
            wireguard_public_key: None,
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
