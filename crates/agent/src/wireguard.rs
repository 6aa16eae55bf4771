//! The agent's side of WireGuard: a second [`twill_tunnel::Tunnel`] (encapsulation
//! WireGuard, device `twill.wg`) started whenever the desired state has the WireGuard device,
//! fed the peers with their public keys, switched to a rotated private key, and turned into
//! status (per peer: key, endpoint, last handshake, bytes; drops by reason).
//!
//! Each peer comes with the underlay address the backend plan chose for it (IPv4 when both
//! ends have one, else IPv6); the engine listens on the WireGuard port on each underlay
//! address the device spec gives it, so peers may also roam to either family.
//!
//! On a node of an IPv6-only cluster the engine has no IPv4 subnet and no IPv4 underlay: it
//! carries IPv6 pods alone, to peers known by their IPv6 subnet and reached over IPv6.
//!
//! Like the udp/ipip engine, its TUN device is persistent: routes into it survive an agent
//! restart, and the next agent re-attaches with the same key (read from the key file), so
//! peers' sessions resume with a new handshake.

use std::collections::HashMap;
use std::str::FromStr;

use anyhow::Context;
use ipnet::{Ipv4Net, Ipv6Net};
use twill_tunnel::wg::{PrivateKey, PublicKey, WireguardConfig};
use twill_types::desired::{WireguardDevice, WireguardPeer};
use twill_types::node::{PeerCounters, WireguardPeerStatus, WireguardStatus};

use crate::tunnel::{counters_of, drops_by_reason};

/// A running WireGuard engine and the device spec it was started with.
pub struct WgEngine {
    tunnel: twill_tunnel::Tunnel,
    spec: WireguardDevice,
    local_subnet: Option<Ipv4Net>,
    local_subnet6: Option<Ipv6Net>,
}

/// What status shows of one peer.
pub type PeerView = (PeerCounters, WireguardPeerStatus);

impl WgEngine {
    /// Starts (or re-attaches to) the WireGuard device with this node's key. With an IPv6
    /// subnet (dual-stack, IPv6-only), the device carries IPv6 pod traffic; without an IPv4
    /// one (IPv6-only), only that.
    pub fn start(
        spec: &WireguardDevice,
        local_subnet: Option<Ipv4Net>,
        local_subnet6: Option<Ipv6Net>,
        key: PrivateKey,
        preshared_key: Option<[u8; 32]>,
    ) -> anyhow::Result<WgEngine> {
        let tunnel = twill_tunnel::Tunnel::start(twill_tunnel::TunnelConfig {
            encap: twill_tunnel::Encap::Wireguard { port: spec.port },
            device: spec.name.clone(),
            mtu: spec.mtu,
            local_subnet,
            local_subnet6,
            // 0.0.0.0: this node has no IPv4 underlay (its peers are reached over IPv6).
            local_ip: Some(spec.local).filter(|ip| !ip.is_unspecified()),
            local_ip6: spec.local6,
            queues: 0,
            kernel_path: false,
            wireguard: Some(WireguardConfig {
                private_key: key,
                preshared_key,
                persistent_keepalive: spec.persistent_keepalive,
            }),
        })
        .with_context(|| format!("starting WireGuard on {}", spec.name))?;
        Ok(WgEngine {
            tunnel,
            spec: spec.clone(),
            local_subnet,
            local_subnet6,
        })
    }

    /// Whether this engine runs exactly `spec` for `local_subnet` and `local_subnet6`.
    pub fn runs(
        &self,
        spec: &WireguardDevice,
        local_subnet: Option<Ipv4Net>,
        local_subnet6: Option<Ipv6Net>,
    ) -> bool {
        self.spec == *spec
            && self.local_subnet == local_subnet
            && self.local_subnet6 == local_subnet6
    }

    /// The peers, their keys and allowed IPs (their subnet of each family WireGuard carries;
    /// the backends passed only well-formed, distinct keys).
    pub fn set_peers(&self, peers: &[WireguardPeer]) {
        let peers: Vec<twill_tunnel::Peer> = peers
            .iter()
            .filter_map(|p| {
                Some(twill_tunnel::Peer {
                    node: p.node.clone(),
                    subnet: p.subnet,
                    underlay: p.underlay,
                    public_key: Some(PublicKey::from_str(&p.public_key).ok()?),
                    subnet6: p.subnet6,
                })
            })
            .collect();
        self.tunnel.set_peers(&peers);
    }

    /// Rotation: handshakes use `key` from now on.
    pub fn set_private_key(&self, key: PrivateKey) {
        self.tunnel.set_private_key(key);
    }

    /// Per-peer counters and sessions by node name, and the engine's own status.
    pub fn status(&self) -> (HashMap<String, PeerView>, WireguardStatus) {
        let stats = self.tunnel.stats();
        let peers = stats
            .peers
            .iter()
            .filter_map(|p| {
                let wg = p.wireguard.as_ref()?;
                let session = WireguardPeerStatus {
                    public_key: wg.public_key.to_string(),
                    endpoint: wg.endpoint.map(|e| e.to_string()),
                    last_handshake_secs: wg.last_handshake_secs,
                };
                Some((p.node.clone(), (counters_of(p), session)))
            })
            .collect();
        let status = WireguardStatus {
            device: self.spec.name.clone(),
            port: self.spec.port,
            public_key: self
                .tunnel
                .public_key()
                .map(|k| k.to_string())
                .unwrap_or_default(),
            drops: drops_by_reason(&stats.drops),
        };
        (peers, status)
    }

    /// Stops the workers; the device stays (routes into it stay valid for the next agent).
    pub fn shutdown(self) {
        self.tunnel.shutdown();
    }
}
