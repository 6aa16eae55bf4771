//! The agent's side of the userspace tunnel (udp and ipip backends): starting the engine for
//! the desired TUN device, feeding it the tunnelled peers, and turning its counters into status.
//!
//! Each peer comes with the underlay address the backend plan chose for it (IPv4 when both
//! ends have one, else IPv6); the engine opens sockets of the families this node has.
//!
//! The engine keeps its TUN device persistent, so the routes into it survive an agent restart;
//! a restarted agent re-attaches within its first reconcile and traffic resumes.

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use ipnet::{Ipv4Net, Ipv6Net};
use twill_types::desired::{TunnelDevice, TunnelEncap, TunnelPeer};
use twill_types::node::{PeerCounters, TunnelStatus};

/// A running tunnel engine and the spec it was started with.
pub struct Engine {
    tunnel: twill_tunnel::Tunnel,
    spec: TunnelDevice,
    local_subnet: Ipv4Net,
    local_subnet6: Option<Ipv6Net>,
}

impl Engine {
    /// Starts (or re-attaches to) the tunnel in the agent's network namespace, for the node's
    /// pod subnets (`local_subnet6` in a dual-stack cluster).
    pub fn start(
        spec: &TunnelDevice,
        local_subnet: Ipv4Net,
        local_subnet6: Option<Ipv6Net>,
        kernel_path: bool,
    ) -> anyhow::Result<Engine> {
        let encap = match spec.encap {
            TunnelEncap::Udp { port } => twill_tunnel::Encap::Udp { port },
            TunnelEncap::Ipip => twill_tunnel::Encap::Ipip,
        };
        let tunnel = twill_tunnel::Tunnel::start(twill_tunnel::TunnelConfig {
            encap,
            device: spec.name.clone(),
            mtu: spec.mtu,
            local_subnet: Some(local_subnet),
            local_subnet6,
            // 0.0.0.0: this node has no IPv4 underlay (its peers are reached over IPv6).
            local_ip: Some(spec.local).filter(|ip| !ip.is_unspecified()),
            local_ip6: spec.local6,
            queues: 0,
            kernel_path,
            wireguard: None,
        })
        .with_context(|| format!("starting the tunnel on {}", spec.name))?;
        Ok(Engine {
            tunnel,
            spec: spec.clone(),
            local_subnet,
            local_subnet6,
        })
    }

    /// Whether this engine runs exactly `spec` for `local_subnet` and `local_subnet6`.
    pub fn runs(
        &self,
        spec: &TunnelDevice,
        local_subnet: Ipv4Net,
        local_subnet6: Option<Ipv6Net>,
    ) -> bool {
        self.spec == *spec
            && self.local_subnet == local_subnet
            && self.local_subnet6 == local_subnet6
    }

    pub fn set_peers(&self, peers: &[TunnelPeer]) {
        let peers: Vec<twill_tunnel::Peer> = peers
            .iter()
            .map(|p| twill_tunnel::Peer {
                node: p.node.clone(),
                subnet: Some(p.subnet),
                underlay: p.underlay,
                public_key: None,
                subnet6: p.subnet6,
            })
            .collect();
        self.tunnel.set_peers(&peers);
    }

    /// Per-peer counters by node name, and the tunnel's own status (drops by reason).
    pub fn status(&self) -> (HashMap<String, PeerCounters>, TunnelStatus) {
        let stats = self.tunnel.stats();
        let counters = stats
            .peers
            .iter()
            .map(|p| (p.node.clone(), counters_of(p)))
            .collect();
        let status = TunnelStatus {
            device: self.spec.name.clone(),
            encap: self.spec.encap,
            drops: drops_by_reason(&stats.drops),
            kernel_path: stats.kernel_path.clone(),
        };
        (counters, status)
    }

    /// Stops the workers; the device stays (routes into it stay valid for the next agent).
    pub fn shutdown(self) {
        self.tunnel.shutdown();
    }
}

/// A peer's traffic counters from the engine's stats.
pub fn counters_of(p: &twill_tunnel::PeerStats) -> PeerCounters {
    PeerCounters {
        tx_packets: p.tx_packets,
        tx_bytes: p.tx_bytes,
        rx_packets: p.rx_packets,
        rx_bytes: p.rx_bytes,
    }
}

/// The engine's drop counters by reason (`unknownPeer`, `badMac`, ...), as status shows them.
pub fn drops_by_reason(drops: &twill_tunnel::DropCounters) -> BTreeMap<String, u64> {
    match serde_json::to_value(drops) {
        Ok(serde_json::Value::Object(map)) => map
            .into_iter()
            .filter_map(|(k, v)| v.as_u64().map(|n| (k, n)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Removes the tunnel's device if it exists (`twill node leave`, or a backend change).
pub fn remove_device(name: &str) -> anyhow::Result<()> {
    twill_tunnel::delete_device(name).with_context(|| format!("removing {name}"))
}
