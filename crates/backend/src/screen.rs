//! The checks every backend runs on peers' leases before planning anything: sort them (so
//! the desired state does not depend on the store's order), drop this node's own lease, and
//! mark the ones no backend could program, with the reason shown in status.
//!
//! Leases are written by other nodes (or by hand), so nothing here trusts them: a lease that
//! would route pod traffic into the underlay, to this node itself or on top of another
//! peer's subnet is refused rather than programmed.
//!
//! Only leases with an IPv4 subnet and an IPv4 underlay address become peers here: the agent
//! admits no other lease in a cluster with IPv4 pools (an IPv6-only lease, or a node without
//! an IPv4 underlay, has no IPv4 path for these backends to program).
//!
//! The IPv6 part of a lease (its IPv6 subnet and underlay address) is screened on its own
//! ([`screen6`], for the backends that carry IPv6): when it is unusable only that part is
//! ignored, with the reason, and the peer's IPv4 part is programmed as ever.
//!
//! A node of an IPv6-only cluster has no IPv4 part: its peers are screened by their IPv6
//! subnet and IPv6 underlay address alone ([`screen_ipv6_only`], host-gw, vxlan,
//! udp and ipip).

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use twill_types::cluster::{MAX_BLOCK_SIZE6, overlaps};
use twill_types::desired::{PeerPath, PeerPlan, RouteSpec};
use twill_types::lease::Lease;

use crate::LocalNode;

/// A peer's lease, and why it cannot be programmed at all (if it cannot).
pub(crate) struct Peer<'a> {
    pub lease: &'a Lease,
    /// The lease's IPv4 subnet and underlay address.
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub problem: Option<String>,
    /// Its IPv6 subnet once [`screen6`] admitted it, or why its IPv6 part is ignored; None
    /// when the lease has no IPv6 subnet (or the backend carries no IPv6).
    pub v6: Option<Result<Ipv6Net, String>>,
}

impl Peer<'_> {
    /// The peer shares the node's L2 segment, so a plain route via its address works.
    pub fn on_segment(&self, node: &LocalNode) -> bool {
        node.public_net
            .is_some_and(|net| net.contains(&self.public_ip))
    }

    pub fn direct_route(&self, node: &LocalNode) -> RouteSpec {
        RouteSpec {
            dst: self.subnet.into(),
            via: self.public_ip.into(),
            dev: node.underlay_dev.clone(),
            onlink: false,
        }
    }

    /// The peer's IPv6 underlay address when both ends have one, or why not.
    pub fn underlay6(&self, node: &LocalNode) -> Result<Ipv6Addr, String> {
        underlay6(node, self.lease)
    }

    /// The peer's IPv6 underlay address is on this node's IPv6 segment.
    pub fn on_segment6(&self, node: &LocalNode) -> bool {
        on_segment6(node, self.lease)
    }

    /// A plain route to the peer's IPv6 subnet via its IPv6 underlay address.
    pub fn direct_route6(&self, node: &LocalNode, subnet6: Ipv6Net, via: Ipv6Addr) -> RouteSpec {
        RouteSpec {
            dst: subnet6.into(),
            via: via.into(),
            dev: node.underlay_dev.clone(),
            onlink: false,
        }
    }

    /// The peer's plan with its IPv6 path (None: the peer has no IPv6 part); its IPv6 subnet
    /// is listed when that path is programmed.
    pub fn plan6(&self, path: PeerPath, path6: Option<PeerPath>) -> PeerPlan {
        let programmed6 = path6
            .as_ref()
            .is_some_and(|p| !matches!(p, PeerPath::Skipped(_)));
        PeerPlan {
            node: self.lease.node.clone(),
            subnet: Some(self.subnet),
            public_ip: Some(self.public_ip),
            path,
            subnet6: self.lease.subnet6.filter(|_| programmed6),
            path6,
        }
    }
}

/// The peers sorted by subnet, without this node's own lease (the one with its subnet),
/// without exact duplicates and without leases lacking an IPv4 subnet or underlay address.
/// A node without IPv4 (IPv6-only) has no IPv4 peers: see [`screen_ipv6_only`].
pub(crate) fn screen<'a>(node: &LocalNode, peers: &'a [Lease]) -> Vec<Peer<'a>> {
    let Some(ours) = node.ipv4() else {
        return Vec::new();
    };
    let mut leases: Vec<&Lease> = peers.iter().filter(|l| l.subnet != Some(ours.0)).collect();
    leases.sort_by(|a, b| sort_key(a).cmp(&sort_key(b)));
    leases.dedup();
    let mut peers: Vec<Peer> = leases
        .into_iter()
        .filter_map(|lease| {
            let (subnet, public_ip) = (lease.subnet?, lease.public_ip()?);
            Some(Peer {
                lease,
                subnet,
                public_ip,
                problem: problem(node, ours, lease, subnet, public_ip),
                v6: None,
            })
        })
        .collect();
    mark_overlaps(&mut peers);
    peers
}

/// A total order (so equal inputs in any order give equal outputs), subnet first.
fn sort_key(l: &Lease) -> impl Ord + '_ {
    (
        l.subnet.map(|s| (u32::from(s.network()), s.prefix_len())),
        &l.node,
        l.public_net.map(|n| (n.addr(), n.prefix_len())),
        l.backend.name(),
        l.vtep_mac,
        (l.subnet6, l.public_net6, l.vtep_mac6),
    )
}

/// What makes a lease unusable on its own, for a node with this IPv4 subnet and underlay.
fn problem(
    node: &LocalNode,
    (node_subnet, public_net): (Ipv4Net, Ipv4Net),
    lease: &Lease,
    subnet: Ipv4Net,
    ip: Ipv4Addr,
) -> Option<String> {
    let segment = public_net.trunc();
    let problem = if lease.node == node.name {
        "the lease carries this node's own name (a stale lease of this node?)".to_string()
    } else if subnet.addr() != subnet.network() {
        format!("subnet {subnet} has host bits set")
    } else if subnet.prefix_len() > 30 {
        format!("subnet {subnet} is longer than /30")
    } else if overlaps(subnet, node_subnet) {
        format!("subnet {subnet} overlaps this node's subnet {node_subnet}")
    } else if subnet.contains(&public_net.addr()) {
        // The route would swallow the underlay traffic that carries everything else.
        format!(
            "subnet {subnet} contains this node's underlay address {}",
            public_net.addr()
        )
    } else if !is_host_address(ip) {
        format!("underlay address {ip} is not a unicast host address")
    } else if ip == public_net.addr() {
        format!("underlay address {ip} is this node's own")
    } else if segment.prefix_len() <= 30 && (ip == segment.network() || ip == segment.broadcast()) {
        format!("underlay address {ip} is the network or broadcast address of {segment}")
    } else if subnet.contains(&ip) || node_subnet.contains(&ip) {
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
/// network address.
fn mark_overlaps(peers: &mut [Peer]) {
    let ranges: Vec<(usize, u128, u128)> = peers
        .iter()
        .enumerate()
        .filter(|(_, peer)| peer.problem.is_none())
        .map(|(i, peer)| {
            let subnet = peer.subnet;
            (
                i,
                u128::from(u32::from(subnet.network())),
                u128::from(u32::from(subnet.broadcast())),
            )
        })
        .collect();
    for run in overlap_runs(ranges) {
        for &i in &run {
            let others: Vec<String> = run
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| format!("{} ({})", peers[j].lease.node, peers[j].subnet))
                .collect();
            peers[i].problem = Some(format!(
                "subnet {} overlaps the subnet of {}; neither is programmed until one leaves",
                peers[i].subnet,
                others.join(", ")
            ));
        }
    }
}

/// The groups (of two or more) of `ranges` — (index, first, last address), sorted by first
/// address — that overlap each other, each as their indexes.
fn overlap_runs(ranges: Vec<(usize, u128, u128)>) -> Vec<Vec<usize>> {
    let mut runs: Vec<Vec<usize>> = Vec::new();
    let mut run_end = 0u128;
    for (i, start, end) in ranges {
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
    runs.retain(|run| run.len() > 1);
    runs
}

/// Screens the IPv6 part of each peer (see [`Peer::v6`]): its IPv6 subnet must be a subnet of
/// one of the cluster's IPv6 pools (`pools6`) that overlaps neither this node's nor another
/// peer's, and its IPv6 underlay address (when it has one) must be usable. A peer whose whole
/// lease is refused has its IPv6 part refused for the same reason.
pub(crate) fn screen6(node: &LocalNode, pools6: &[Ipv6Net], peers: &mut [Peer]) {
    for peer in peers.iter_mut() {
        let Some(subnet6) = peer.lease.subnet6 else {
            continue;
        };
        peer.v6 = Some(match &peer.problem {
            Some(problem) => Err(problem.clone()),
            None => problem6(node, pools6, peer.lease, subnet6).map_or(Ok(subnet6), Err),
        });
    }
    mark_overlaps6(peers);
}

/// What makes the IPv6 part of a lease unusable.
fn problem6(
    node: &LocalNode,
    pools6: &[Ipv6Net],
    lease: &Lease,
    subnet6: Ipv6Net,
) -> Option<String> {
    let Some(ours) = node.subnet6 else {
        return Some("this node has no IPv6 pod subnet".into());
    };
    let our_ip6 = node.public_net6.map(|n| n.addr());
    let problem = if subnet6.addr() != subnet6.network() {
        format!("IPv6 subnet {subnet6} has host bits set")
    } else if subnet6.prefix_len() > MAX_BLOCK_SIZE6 {
        format!("IPv6 subnet {subnet6} is longer than /{MAX_BLOCK_SIZE6}")
    } else if !pools6.iter().any(|pool| pool.contains(&subnet6)) {
        format!("IPv6 subnet {subnet6} is not in the cluster's IPv6 pools")
    } else if subnet6.contains(&ours.network()) || ours.contains(&subnet6.network()) {
        format!("IPv6 subnet {subnet6} overlaps this node's IPv6 subnet {ours}")
    } else if let Some(ip6) = our_ip6.filter(|ip6| subnet6.contains(ip6)) {
        // The route would swallow the underlay traffic that carries everything else.
        format!("IPv6 subnet {subnet6} contains this node's IPv6 underlay address {ip6}")
    } else {
        let ip6 = lease.public_ip6()?;
        if ip6.is_unspecified() || ip6.is_loopback() || ip6.is_multicast() {
            format!("IPv6 underlay address {ip6} is not a unicast host address")
        } else if Some(ip6) == our_ip6 {
            format!("IPv6 underlay address {ip6} is this node's own")
        } else if subnet6.contains(&ip6) || ours.contains(&ip6) {
            format!("IPv6 underlay address {ip6} lies inside a pod subnet")
        } else {
            return None;
        }
    };
    Some(problem)
}

/// Peers whose IPv6 subnets overlap each other: none of those IPv6 parts is programmed (as
/// [`mark_overlaps`] for IPv4).
fn mark_overlaps6(peers: &mut [Peer]) {
    let leases: Vec<&Lease> = peers.iter().map(|p| p.lease).collect();
    let mut verdicts: Vec<Option<Result<Ipv6Net, String>>> =
        peers.iter_mut().map(|p| p.v6.take()).collect();
    mark_overlapping6(&leases, &mut verdicts);
    for (peer, v6) in peers.iter_mut().zip(verdicts) {
        peer.v6 = v6;
    }
}

/// Turns the admitted IPv6 subnets (`verdicts[i]`, of `leases[i]`) that overlap each other
/// into refusals naming the others.
fn mark_overlapping6(leases: &[&Lease], verdicts: &mut [Option<Result<Ipv6Net, String>>]) {
    let mut ranges: Vec<(usize, u128, u128)> = verdicts
        .iter()
        .enumerate()
        .filter_map(|(i, v6)| match v6 {
            Some(Ok(subnet6)) => Some((
                i,
                u128::from(subnet6.network()),
                u128::from(subnet6.broadcast()),
            )),
            _ => None,
        })
        .collect();
    ranges.sort_unstable_by_key(|&(i, start, _)| (start, i));
    for run in overlap_runs(ranges) {
        let subnet6_of = |j: usize| leases[j].subnet6.expect("screened peers have one");
        let reasons: Vec<(usize, String)> = run
            .iter()
            .map(|&i| {
                let others: Vec<String> = run
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| format!("{} ({})", leases[j].node, subnet6_of(j)))
                    .collect();
                let reason = format!(
                    "IPv6 subnet {} overlaps the IPv6 subnet of {}; neither is programmed \
                     until one leaves",
                    subnet6_of(i),
                    others.join(", ")
                );
                (i, reason)
            })
            .collect();
        for (i, reason) in reasons {
            verdicts[i] = Some(Err(reason));
        }
    }
}

/// A peer of an IPv6-only node: its lease, its IPv6 subnet, and why that cannot be
/// programmed (if it cannot).
pub(crate) struct Peer6<'a> {
    pub lease: &'a Lease,
    pub subnet6: Ipv6Net,
    pub problem: Option<String>,
}

impl Peer6<'_> {
    /// The peer's IPv6 underlay address when both ends have one, or why not.
    pub fn underlay6(&self, node: &LocalNode) -> Result<Ipv6Addr, String> {
        underlay6(node, self.lease)
    }

    /// The peer's IPv6 underlay address is on this node's IPv6 segment.
    pub fn on_segment6(&self, node: &LocalNode) -> bool {
        on_segment6(node, self.lease)
    }

    /// A plain route to the peer's IPv6 subnet via its IPv6 underlay address.
    pub fn direct_route6(&self, node: &LocalNode, via: Ipv6Addr) -> RouteSpec {
        RouteSpec {
            dst: self.subnet6.into(),
            via: via.into(),
            dev: node.underlay_dev.clone(),
            onlink: false,
        }
    }

    /// The peer's plan: it has only an IPv6 part, so its `path` is its IPv6 path (and
    /// `path6` the same); its IPv6 subnet is listed when that path is programmed.
    pub fn plan(&self, path6: PeerPath) -> PeerPlan {
        let programmed = !matches!(path6, PeerPath::Skipped(_));
        PeerPlan {
            node: self.lease.node.clone(),
            subnet: None,
            public_ip: None,
            path: path6.clone(),
            subnet6: programmed.then_some(self.subnet6),
            path6: Some(path6),
        }
    }
}

/// The peers of an IPv6-only node (one without IPv4): sorted by IPv6 subnet, without this
/// node's own lease (the one with its IPv6 subnet), without exact duplicates and without
/// leases lacking an IPv6 subnet; each screened as [`screen6`] screens IPv6 parts, and a
/// peer without an IPv6 underlay address refused (nothing else could carry its traffic).
pub(crate) fn screen_ipv6_only<'a>(
    node: &LocalNode,
    pools6: &[Ipv6Net],
    peers: &'a [Lease],
) -> Vec<Peer6<'a>> {
    let mut leases: Vec<&Lease> = peers
        .iter()
        .filter(|l| l.subnet6.is_some() && l.subnet6 != node.subnet6)
        .collect();
    leases.sort_by(|a, b| {
        let key = |l: &Lease| l.subnet6.map(|s| (u128::from(s.network()), s.prefix_len()));
        key(a)
            .cmp(&key(b))
            .then_with(|| sort_key(a).cmp(&sort_key(b)))
    });
    leases.dedup();
    let mut verdicts: Vec<Option<Result<Ipv6Net, String>>> = leases
        .iter()
        .map(|lease| {
            let subnet6 = lease.subnet6.expect("filtered above");
            let problem = if lease.node == node.name {
                Some("the lease carries this node's own name (a stale lease of this node?)".into())
            } else if lease.public_ip6().is_none() {
                Some("the peer publishes no IPv6 underlay address".into())
            } else {
                problem6(node, pools6, lease, subnet6)
            };
            Some(problem.map_or(Ok(subnet6), Err))
        })
        .collect();
    mark_overlapping6(&leases, &mut verdicts);
    leases
        .into_iter()
        .zip(verdicts)
        .map(|(lease, verdict)| Peer6 {
            lease,
            subnet6: lease.subnet6.expect("filtered above"),
            problem: verdict.and_then(Result::err),
        })
        .collect()
}

/// A peer's IPv6 underlay address when both ends have one, or why not.
fn underlay6(node: &LocalNode, lease: &Lease) -> Result<Ipv6Addr, String> {
    match (node.public_net6, lease.public_ip6()) {
        (None, _) => Err("this node has no IPv6 underlay address".into()),
        (_, None) => Err("the peer publishes no IPv6 underlay address".into()),
        (Some(_), Some(ip6)) => Ok(ip6),
    }
}

/// A peer's IPv6 underlay address is on this node's IPv6 segment.
fn on_segment6(node: &LocalNode, lease: &Lease) -> bool {
    node.public_net6
        .zip(lease.public_ip6())
        .is_some_and(|(net, ip6)| net.contains(&ip6))
}
