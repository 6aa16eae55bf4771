//! bgp: routing by BGP with no encapsulation (Calico's BGP networking over `Never` pools).
//! Leases still say which nodes exist (the agent peers with them), but this backend programs
//! nothing for them: the routes come from the BGP speaker's Loc-RIB, which the agent adds to
//! the desired state. Peers are listed with the path `bgp` so status shows every node; in a
//! dual-stack cluster their IPv6 part too (advertised as IPv6 unicast over MP-BGP), once it
//! passes the same screening as other backends give it. A node of an IPv6-only cluster lists
//! its peers by their IPv6 subnets alone, screened as host-gw and vxlan screen them there
//! (the speaker peers with them over IPv6).

use ipnet::Ipv6Net;
use twill_types::cluster::BackendKind;
use twill_types::desired::{DesiredState, PeerPath};
use twill_types::lease::Lease;

use crate::screen::{screen, screen_ipv6_only, screen6};
use crate::{Backend, LocalNode, lease_of};

/// The bgp backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bgp {
    /// The cluster's IPv6 pools (none: IPv4 only).
    ipv6_pools: Vec<Ipv6Net>,
}

impl Bgp {
    /// bgp for a cluster with these IPv6 pools (empty for IPv4 only).
    pub fn new(ipv6_pools: Vec<Ipv6Net>) -> Bgp {
        Bgp { ipv6_pools }
    }
}

impl Backend for Bgp {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(node, BackendKind::Bgp, None, None)
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        let mut state = DesiredState::default();
        if node.is_ipv6_only() {
            for peer in screen_ipv6_only(node, &self.ipv6_pools, peers) {
                let path = peer
                    .problem
                    .clone()
                    .map_or(PeerPath::Bgp, PeerPath::Skipped);
                state.peers.push(peer.plan(path));
            }
            return state;
        }
        let mut peers = screen(node, peers);
        screen6(node, &self.ipv6_pools, &mut peers);
        for peer in peers {
            let path = match peer.problem.clone() {
                Some(problem) => PeerPath::Skipped(problem),
                None => PeerPath::Bgp,
            };
            // The route comes from BGP whichever underlay carries it (the peer's IPv6
            // address, or over an IPv4 session with the IPv6 next hop it advertises).
            let path6 = peer.v6.clone().map(|v6| match v6 {
                Ok(_) => PeerPath::Bgp,
                Err(reason) => PeerPath::Skipped(reason),
            });
            state.peers.push(peer.plan6(path, path6));
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
            subnet: Some("10.244.1.0/24".parse().unwrap()),
            public_net: Some("192.168.1.11/24".parse().unwrap()),
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
        let d = Bgp::default().desired(&node(), &peers);
        assert!(d.routes.is_empty() && d.vxlan.is_none() && d.tunnel.is_none());
        assert_eq!(d.peers.len(), 2);
        assert_eq!(d.peers[0].path, PeerPath::Bgp);
        // A lease claiming this node's own underlay address is refused as elsewhere.
        assert!(matches!(d.peers[1].path, PeerPath::Skipped(_)));
        assert_eq!(
            Bgp::default().local_lease(&node()).backend,
            BackendKind::Bgp
        );
    }

    #[test]
    fn dual_stack_peers_get_an_ipv6_path_by_bgp_and_still_no_route() {
        let mut me = node();
        me.subnet6 = Some("fd00:10:244:1::/64".parse().unwrap());
        me.public_net6 = Some("fd00:1::11/64".parse().unwrap());
        let mut h2 = lease("h2", "10.244.2.0/24", "192.168.1.12/24");
        h2.subnet6 = Some("fd00:10:244:2::/64".parse().unwrap());
        h2.public_net6 = Some("fd00:1::12/64".parse().unwrap());
        // Outside the cluster's IPv6 pools: only its IPv6 part is refused.
        let mut h3 = lease("h3", "10.244.3.0/24", "192.168.1.13/24");
        h3.subnet6 = Some("fd99::/64".parse().unwrap());
        // No IPv6 part at all.
        let h4 = lease("h4", "10.244.4.0/24", "192.168.1.14/24");
        let bgp = Bgp::new(vec!["fd00:10:244::/56".parse().unwrap()]);
        let d = bgp.desired(&me, &[h2, h3, h4]);
        assert!(d.routes.is_empty(), "{:?}", d.routes);
        assert_eq!(d.peers[0].path6, Some(PeerPath::Bgp));
        assert_eq!(d.peers[0].subnet6, "fd00:10:244:2::/64".parse().ok());
        assert!(matches!(&d.peers[1].path6, Some(PeerPath::Skipped(r)) if r.contains("pools")));
        assert_eq!(d.peers[1].path, PeerPath::Bgp);
        assert_eq!(d.peers[1].subnet6, None);
        assert_eq!(d.peers[2].path6, None);
        // The lease publishes both parts.
        let l = bgp.local_lease(&me);
        assert_eq!((l.subnet6, l.public_net6), (me.subnet6, me.public_net6));
    }

    #[test]
    fn ipv6_only_peers_are_listed_by_their_ipv6_subnets() {
        let me = LocalNode {
            subnet: None,
            public_net: None,
            subnet6: Some("fd00:10:244:1::/64".parse().unwrap()),
            public_net6: Some("fd00:1::11/64".parse().unwrap()),
            ..node()
        };
        let lease6 = |name: &str, subnet6: &str, public6: Option<&str>| Lease {
            subnet: None,
            public_net: None,
            subnet6: Some(subnet6.parse().unwrap()),
            public_net6: public6.map(|p| p.parse().unwrap()),
            ..lease(name, "10.0.0.0/24", "192.168.1.1/24")
        };
        let peers = [
            lease6("h3", "fd00:10:244:3::/64", None),
            lease6("h2", "fd00:10:244:2::/64", Some("fd00:2::12/64")),
            lease6("h1", "fd00:10:244:1::/64", Some("fd00:1::11/64")),
            lease6("h4", "fd99::/64", Some("fd00:1::14/64")),
        ];
        let bgp = Bgp::new(vec!["fd00:10:244::/56".parse().unwrap()]);
        let d = bgp.desired(&me, &peers);
        // Nothing programmed: the routes are BGP's, whatever segment the peer is on.
        assert!(d.routes.is_empty(), "{:?}", d.routes);
        let paths: Vec<_> = d.peers.iter().map(|p| (p.node.as_str(), &p.path)).collect();
        assert_eq!(paths[0], ("h2", &PeerPath::Bgp));
        assert_eq!(d.peers[0].path6, Some(PeerPath::Bgp));
        assert_eq!((d.peers[0].subnet, d.peers[0].public_ip), (None, None));
        assert!(matches!(paths[1], ("h3", PeerPath::Skipped(r)) if r.contains("no IPv6 underlay")));
        assert!(matches!(paths[2], ("h4", PeerPath::Skipped(r)) if r.contains("pools")));
        // Its lease has only the IPv6 parts.
        let l = bgp.local_lease(&me);
        assert_eq!((l.subnet, l.public_net), (None, None));
        assert_eq!((l.subnet6, l.public_net6), (me.subnet6, me.public_net6));
    }
}
