//! host-gw: a plain route to each peer's pod subnet via the peer's underlay address (Flannel's
//! host-gw, Calico's "Never" encapsulation). No device, no overhead; it only reaches peers on
//! this node's L2 segment, since the next hop must be directly reachable.

use twill_types::cluster::BackendKind;
use twill_types::desired::{DesiredState, PeerPath};
use twill_types::lease::Lease;

use crate::screen::screen;
use crate::{Backend, LocalNode, lease_of};

/// The host-gw backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostGw;

impl Backend for HostGw {
    fn local_lease(&self, node: &LocalNode) -> Lease {
        lease_of(node, BackendKind::HostGw, None)
    }

    fn desired(&self, node: &LocalNode, peers: &[Lease]) -> DesiredState {
        let mut state = DesiredState::default();
        for peer in screen(node, peers) {
            let path = match peer.problem.clone() {
                Some(problem) => PeerPath::Skipped(problem),
                None if peer.on_segment(node) => {
                    state.routes.push(peer.direct_route(node));
                    PeerPath::Direct
                }
                None => PeerPath::Skipped(format!(
                    "host-gw: peer {} is not on this node's L2 segment {}; use vxlan or \
                     DirectRouting",
                    peer.lease.public_ip(),
                    node.public_net.trunc()
                )),
            };
            state.peers.push(peer.plan(path));
        }
        state
    }

    fn pod_mtu(&self, node: &LocalNode) -> u32 {
        node.underlay_mtu
    }
}
