//! bgp: routing by BGP with no encapsulation (Calico's BGP networking over `Never` pools).
//! Leases still say which nodes exist (the agent peers with them), but this backend programs
//! nothing for them: the routes come from the BGP speaker's Loc-RIB, which the agent adds to
//! the desired state. Peers are listed with the path `bgp` so status shows every node.

use twill_types::cluster::BackendKind;
use twill_types::desired::{DesiredState, PeerPath};
use twill_types::lease::Lease;

use crate::screen::screen;
use crate::{Backend, LocalNode, lease_of};

/// The bgp backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bgp;

impl Backend for Bgp {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(node, BackendKind::Bgp, None, None)
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        let mut state = DesiredState::default();
        for peer in screen(node, peers) {
            let path = match peer.problem.clone() {
                Some(problem) => PeerPath::Skipped(problem),
                None => PeerPath::Bgp,
            };
            state.peers.push(peer.plan(path));
        }
        state
    }

    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        node.underlay_mtu
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::Ipv4Net;

    fn node() -> LocalNode {
        LocalNode {
            name: "h1".into(),
            subnet: "10.244.1.0/24".parse().unwrap(),
            public_net: "192.168.1.11/24".parse().unwrap(),
            underlay_dev: "eth0".into(),
            underlay_mtu: 1500,
            subnet6: None,
            public_net6: None,
        }
    }

    fn lease(name: &str, subnet: &str, public: &str) -> Lease {
        Lease {
            node: name.into(),
            subnet: Some(subnet.parse::<Ipv4Net>().unwrap()),
            public_net: Some(public.parse().unwrap()),
            backend: BackendKind::Bgp,
            vtep_mac: None,
            wireguard_public_key: None,
            subnet6: None,
            public_net6: None,
            vtep_mac6: None,
        }
    }

    #[test]
    fn lists_peers_and_programs_nothing() {
        let peers = [
            lease("h2", "10.244.2.0/24", "192.168.2.12/24"),
            lease("h1", "10.244.1.0/24", "192.168.1.11/24"),
            lease("h3", "10.244.3.0/24", "192.168.1.11/24"),
        ];
        let d = Bgp.desired(&node(), &peers);
        assert!(d.routes.is_empty() && d.vxlan.is_none() && d.tunnel.is_none());
        assert_eq!(d.peers.len(), 2);
        assert_eq!(d.peers[0].path, PeerPath::Bgp);
        // A lease claiming this node's own underlay address is refused as elsewhere.
        assert!(matches!(d.peers[1].path, PeerPath::Skipped(_)));
        assert_eq!(Bgp.local_lease(&node()).backend, BackendKind::Bgp);
    }
}
