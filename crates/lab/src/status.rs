//! The agent's status as `twill status --json` prints it, and the lab's test of convergence:
//! in sync with the store, and every other host's subnet either programmed or knowingly
//! skipped. Parsing is lenient about fields the lab does not use, so the agent can grow its
//! output without breaking the lab.

use serde::{Deserialize, Serialize};

use crate::plan::node_name;

/// `twill status --json` of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct AgentStatus {
    pub node: String,
    pub subnet: Option<String>,
    pub backend: Option<String>,
    pub public_ip: Option<String>,
    /// Its IPv6 pod subnet and IPv6 underlay address, in a dual-stack cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_ip6: Option<String>,
    pub in_sync: bool,
    pub peers: Vec<PeerStatus>,
}

/// One peer as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct PeerStatus {
    pub node: String,
    pub subnet: Option<String>,
    pub public_ip: Option<String>,
    /// Its IPv6 pod subnet, in a dual-stack cluster, once its IPv6 part is programmed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnet6: Option<String>,
    pub path: PeerPath,
    /// How its IPv6 pod traffic goes (or why it is skipped), in a dual-stack cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path6: Option<PeerPath>,
    pub programmed: bool,
    /// The agent's last programming error for this peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The peer's WireGuard session, when traffic to it is encrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<WireguardPeer>,
}

/// A peer's WireGuard as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct WireguardPeer {
    /// Its public key, base64 as `wg` prints it.
    pub public_key: String,
    /// Where its authenticated packets last came from (`ip:port`).
    pub endpoint: Option<String>,
    /// Seconds since the last completed handshake; None before the first.
    pub last_handshake_secs: Option<u64>,
}

impl std::fmt::Display for WireguardPeer {
    /// `wg AbCdEfGh, handshake 3 s ago` (the key's first 8 characters, as `twill status`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let short: String = self.public_key.chars().take(8).collect();
        match self.last_handshake_secs {
            Some(s) => write!(f, "wg {short}, handshake {s} s ago"),
            None => write!(f, "wg {short}, no handshake yet"),
        }
    }
}

/// How traffic to a peer goes: `direct`, the backend's encapsulation (`vxlan`, ...), or
/// `skipped` with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct PeerPath {
    pub via: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl PeerPath {
    pub fn skipped(&self) -> bool {
        self.via == "skipped"
    }
}

impl std::fmt::Display for PeerPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.reason {
            Some(r) => write!(f, "{} ({r})", self.via),
            None => f.write_str(&self.via),
        }
    }
}

impl AgentStatus {
    /// Parses `twill status --json` output.
    pub fn parse(json: &str) -> Result<AgentStatus, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Ok when host `index` of an `nodes`-host lab is converged; otherwise what is missing,
    /// for the timeout message.
    pub fn converged(&self, index: u32, nodes: u32) -> Result<(), String> {
        let me = node_name(index);
        if self.node != me {
            return Err(format!("reports node {:?}, expected {me:?}", self.node));
        }
        if !self.in_sync {
            return Err("not in sync with the store".into());
        }
        let mut missing = Vec::new();
        for k in (1..=nodes).filter(|&k| k != index) {
            let peer = node_name(k);
            match self.peers.iter().find(|p| p.node == peer) {
                None => missing.push(format!("{peer} unknown")),
                Some(p) if !p.programmed && !p.path.skipped() => match &p.error {
                    Some(e) => missing.push(format!("{peer} not programmed ({e})")),
                    None => missing.push(format!("{peer} not programmed")),
                },
                Some(_) => {}
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join(", "))
        }
    }

    /// In a dual-stack lab, also: the node has its IPv6 subnet, and has an IPv6 path (or a
    /// reason to skip one) for every peer it routes to (a peer it learnt before that peer had
    /// an IPv6 subnet is not done yet).
    pub fn converged_dual(&self, index: u32, nodes: u32) -> Result<(), String> {
        self.converged(index, nodes)?;
        if self.subnet6.is_none() {
            return Err("no IPv6 subnet".into());
        }
        let missing: Vec<&str> = self
            .peers
            .iter()
            .filter(|p| !p.path.skipped() && p.path6.is_none())
            .map(|p| p.node.as_str())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("no IPv6 path for {} yet", missing.join(", ")))
        }
    }

    /// Peers whose IPv6 part the node does not route to although it routes their IPv4 part,
    /// with the reason (the peers skipped altogether are [`AgentStatus::skipped`]).
    pub fn skipped6(&self) -> impl Iterator<Item = &PeerStatus> {
        self.peers
            .iter()
            .filter(|p| !p.path.skipped() && p.path6.as_ref().is_some_and(PeerPath::skipped))
    }

    /// Peers the node does not route to, with the reason.
    pub fn skipped(&self) -> impl Iterator<Item = &PeerStatus> {
        self.peers.iter().filter(|p| p.path.skipped())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = r#"{"node": "h1", "subnet": "10.244.3.0/24", "backend": "host-gw",
        "publicIp": "192.168.1.11", "inSync": true, "future": [1, 2],
        "peers": [
          {"node": "h2", "subnet": "10.244.7.0/24", "publicIp": "192.168.2.12",
           "path": {"via": "skipped", "reason": "not on this L2 segment"}, "programmed": false},
          {"node": "h3", "subnet": "10.244.9.0/24", "publicIp": "192.168.1.13",
           "path": {"via": "direct"}, "programmed": true}
        ]}"#;

    #[test]
    fn parses_the_agent_contract() {
        let s = AgentStatus::parse(H1).unwrap();
        assert_eq!(s.node, "h1");
        assert_eq!(s.subnet.as_deref(), Some("10.244.3.0/24"));
        assert_eq!(s.public_ip.as_deref(), Some("192.168.1.11"));
        assert!(s.in_sync);
        assert_eq!(s.peers.len(), 2);
        assert!(s.peers[0].path.skipped());
        assert_eq!(
            s.peers[0].path.to_string(),
            "skipped (not on this L2 segment)"
        );
        assert_eq!(s.peers[1].path.to_string(), "direct");
        assert_eq!(
            s.skipped().map(|p| p.node.as_str()).collect::<Vec<_>>(),
            ["h2"]
        );
        assert!(AgentStatus::parse("not json").is_err());
    }

    #[test]
    fn wireguard_peers() {
        let s = AgentStatus::parse(
            r#"{"node":"h1","inSync":true,"peers":[{"node":"h2","path":{"via":"wireguard"},
              "programmed":true,"wireguard":{"publicKey":"xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=",
              "endpoint":"192.168.100.12:51820","lastHandshakeSecs":3}},
              {"node":"h3","path":{"via":"wireguard"},"wireguard":{"publicKey":"AAAAAAAAAAAx"}}]}"#,
        )
        .unwrap();
        let wg = s.peers[0].wireguard.as_ref().unwrap();
        assert_eq!(wg.endpoint.as_deref(), Some("192.168.100.12:51820"));
        assert_eq!(wg.to_string(), "wg xTIBA5rb, handshake 3 s ago");
        assert_eq!(
            s.peers[1].wireguard.as_ref().unwrap().to_string(),
            "wg AAAAAAAA, no handshake yet"
        );
        assert!(AgentStatus::parse(H1).unwrap().peers[0].wireguard.is_none());
    }

    #[test]
    fn convergence() {
        let s = AgentStatus::parse(H1).unwrap();
        assert_eq!(s.converged(1, 3), Ok(()));
        // A fourth host it does not know yet.
        assert_eq!(s.converged(1, 4), Err("h4 unknown".into()));
        assert!(s.converged(2, 3).unwrap_err().contains("expected \"h2\""));

        let mut late = s.clone();
        late.peers[1].programmed = false;
        assert_eq!(late.converged(1, 3), Err("h3 not programmed".into()));
        late.peers[1].error = Some("File exists".into());
        assert_eq!(
            late.converged(1, 3),
            Err("h3 not programmed (File exists)".into())
        );
        late.in_sync = false;
        assert_eq!(
            late.converged(1, 3),
            Err("not in sync with the store".into())
        );

        // A single node has no peers to wait for.
        let alone = AgentStatus {
            node: "h1".into(),
            in_sync: true,
            ..Default::default()
        };
        assert_eq!(alone.converged(1, 1), Ok(()));
    }

    #[test]
    fn dual_stack_convergence() {
        let mut s = AgentStatus::parse(H1).unwrap();
        assert_eq!(s.converged_dual(1, 3), Err("no IPv6 subnet".into()));
        s.subnet6 = Some("fd00:10:244:3::/64".into());
        // h2 is skipped: its IPv6 part does not matter; h3 is routed to.
        assert_eq!(
            s.converged_dual(1, 3),
            Err("no IPv6 path for h3 yet".into())
        );
        s.peers[1].path6 = Some(PeerPath {
            via: "skipped".into(),
            reason: Some("no IPv6 underlay".into()),
        });
        // A knowingly skipped IPv6 part is converged, and listed.
        assert_eq!(s.converged_dual(1, 3), Ok(()));
        assert_eq!(
            s.skipped6().map(|p| p.node.as_str()).collect::<Vec<_>>(),
            ["h3"]
        );
        s.peers[1].path6 = Some(PeerPath {
            via: "direct".into(),
            reason: None,
        });
        s.peers[1].subnet6 = Some("fd00:10:244:9::/64".into());
        assert_eq!(s.converged_dual(1, 3), Ok(()));
        assert_eq!(s.skipped6().count(), 0);
        s.in_sync = false;
        assert_eq!(
            s.converged_dual(1, 3),
            Err("not in sync with the store".into())
        );
        let parsed = AgentStatus::parse(
            r#"{"node":"h1","subnet6":"fd00:10:244:3::/64","publicIp6":"fd00:100::11",
              "peers":[{"node":"h2","subnet6":"fd00:10:244:4::/64","path6":{"via":"vxlan"}}]}"#,
        )
        .unwrap();
        assert_eq!(parsed.public_ip6.as_deref(), Some("fd00:100::11"));
        assert_eq!(
            parsed.peers[0].subnet6.as_deref(),
            Some("fd00:10:244:4::/64")
        );
        assert_eq!(parsed.peers[0].path6.as_ref().unwrap().via, "vxlan");
    }
}
