//! The checks every backend runs on peers' leases before planning anything: sort them (so
//! the desired state does not depend on the store's order), drop this node's own lease, and
//! mark the ones no backend could program, with the reason shown in status.
//!
//! Leases are written by other nodes (or by hand), so nothing here trusts them: a lease that
//! would route pod traffic into the underlay, to this node itself or on top of another
//! peer's subnet is refused rather than programmed.

use std::net::Ipv4Addr;

use twill_types::cluster::overlaps;
use twill_types::desired::{PeerPath, PeerPlan, RouteSpec};
use twill_types::lease::Lease;

use crate::LocalNode;

/// A peer's lease, and why it cannot be programmed at all (if it cannot).
pub(crate) struct Peer<'a> {
    pub lease: &'a Lease,
    pub problem: Option<String>,
}

impl Peer<'_> {
    /// The peer shares the node's L2 segment, so a plain route via its address works.
    pub fn on_segment(&self, node: &LocalNode) -> bool {
        node.public_net.contains(&self.lease.public_ip())
    }

    pub fn direct_route(&self, node: &LocalNode) -> RouteSpec {
        RouteSpec {
            dst: self.lease.subnet.into(),
            via: self.lease.public_ip().into(),
            dev: node.underlay_dev.clone(),
            onlink: false,
        }
    }

    pub fn plan(&self, path: PeerPath) -> PeerPlan {
        PeerPlan {
            node: self.lease.node.clone(),
            subnet: self.lease.subnet,
            public_ip: self.lease.public_ip(),
            path,
            subnet6: None,
        }
    }
}

/// The peers sorted by subnet, without this node's own lease (the one with its subnet) and
/// without exact duplicates.
pub(crate) fn screen<'a>(node: &LocalNode, peers: &'a [Lease]) -> Vec<Peer<'a>> {
    let mut leases: Vec<&Lease> = peers.iter().filter(|l| l.subnet != node.subnet).collect();
    leases.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    leases.dedup();
    let mut peers: Vec<Peer> = leases
        .into_iter()
        .map(|lease| Peer {
            lease,
            problem: problem(node, lease),
        })
        .collect();
    mark_overlaps(&mut peers);
    peers
}

/// A total order (so equal inputs in any order give equal outputs), subnet first.
fn sort_key(l: &Lease) -> impl Ord + '_ {
    (
        (u32::from(l.subnet.network()), l.subnet.prefix_len()),
        &l.node,
        (l.public_net.addr(), l.public_net.prefix_len()),
        l.backend.name(),
        l.vtep_mac,
    )
}

/// What makes a lease unusable on its own.
fn problem(node: &LocalNode, lease: &Lease) -> Option<String> {
    let subnet = lease.subnet;
    let ip = lease.public_ip();
    let segment = node.public_net.trunc();
    let problem = if lease.node == node.name {
        "the lease carries this node's own name (a stale lease of this node?)".to_string()
    } else if subnet.addr() != subnet.network() {
        format!("subnet {subnet} has host bits set")
    } else if subnet.prefix_len() > 30 {
        format!("subnet {subnet} is longer than /30")
    } else if overlaps(subnet, node.subnet) {
        format!(
            "subnet {subnet} overlaps this node's subnet {}",
            node.subnet
        )
    } else if subnet.contains(&node.public_net.addr()) {
        // The route would swallow the underlay traffic that carries everything else.
        format!(
            "subnet {subnet} contains this node's underlay address {}",
            node.public_net.addr()
        )
    } else if !is_host_address(ip) {
        format!("underlay address {ip} is not a unicast host address")
    } else if ip == node.public_net.addr() {
        format!("underlay address {ip} is this node's own")
    } else if segment.prefix_len() <= 30 && (ip == segment.network() || ip == segment.broadcast()) {
        format!("underlay address {ip} is the network or broadcast address of {segment}")
    } else if subnet.contains(&ip) || node.subnet.contains(&ip) {
        format!("underlay address {ip} lies inside a pod subnet")
    } else {
        return None;
    };
    Some(problem)
}

fn is_host_address(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast())
}

/// Peers whose subnets overlap each other: which one is right is not ours to guess, so none
/// is programmed (the kernel would take the longest prefix, silently). `peers` is sorted by
/// network address, so overlapping subnets form runs.
fn mark_overlaps(peers: &mut [Peer]) {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut run_end = 0u32;
    for (i, peer) in peers.iter().enumerate() {
        if peer.problem.is_some() {
            continue;
        }
        let (start, end) = (
            u32::from(peer.lease.subnet.network()),
            u32::from(peer.lease.subnet.broadcast()),
        );
        match runs.last_mut() {
            Some(run) if start <= run_end => {
                run.push(i);
                run_end = run_end.max(end);
            }
            _ => {
                runs.push(vec![i]);
                run_end = end;
            }
        }
    }
    for run in runs.into_iter().filter(|run| run.len() > 1) {
        for &i in &run {
            let others: Vec<String> = run
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| format!("{} ({})", peers[j].lease.node, peers[j].lease.subnet))
                .collect();
            peers[i].problem = Some(format!(
                "subnet {} overlaps the subnet of {}; neither is programmed until one leaves",
                peers[i].lease.subnet,
                others.join(", ")
            ));
        }
    }
}
