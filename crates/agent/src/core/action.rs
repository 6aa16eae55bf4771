//! What the agent's core asks the shell (`run.rs`) to do, and the readable text form of it
//! that the replay goldens hold.

use std::fmt::Write as _;
use std::sync::Arc;

use ipnet::{IpNet, Ipv6Net};
use serde::Serialize;
use twill_dataplane::reconcile::Plan;
use twill_types::bgp_auth::BgpAuth;
use twill_types::cluster::BgpPeer;
use twill_types::desired::{DesiredState, PeerPath};
use twill_types::lease::Lease;
use twill_types::node::{LeaseEvent, PeerStatus, PolicyStatus};

/// One thing to do. Those marked "answered" are answered by an event of their own, fed back
/// into the core before the next action runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Make the kernel match `desired` (the tunnel engine, then the reconciler: peers' routes,
    /// neighbours, FDB, devices, NAT, host protection, sysctls, addresses); `leases` are the
    /// peers' leases it was computed from (for the record). Answered:
    /// [`super::Event::Reconciled`].
    Reconcile {
        desired: Arc<DesiredState>,
        leases: Vec<Lease>,
    },
    /// Hand BGP route changes to the reconciler without waiting (its outcome comes as
    /// [`super::Event::RouteDeltaDone`], later).
    SubmitRoutes(Box<Plan>),
    /// Ask the store itself about our lease. Answered: [`super::Event::LeaseChecked`].
    CheckLease,
    /// Keep the store lease alive. Answered: [`super::Event::Renewed`].
    RenewLease,
    /// Renew again in a second rather than a third of the TTL later.
    RenewSoon,
    /// Lease again, preferring `subnet` (the held lease's key subnet: IPv4, or IPv6 on an
    /// IPv6-only node), publishing `lease`. Answered: [`super::Event::Reacquired`].
    Reacquire {
        lease: Lease,
        subnet: IpNet,
    },
    /// Write `lease` (our lease with a new WireGuard public key) under the key we hold, with
    /// the store lease we hold. Answered: [`super::Event::LeasePublished`].
    PublishLease {
        lease: Lease,
    },
    /// Give the speaker the sessions the topology asks for now. Answered:
    /// [`super::Event::BgpPeersSynced`].
    SyncBgpPeers {
        leases: Vec<Lease>,
        store_peers: Vec<BgpPeer>,
    },
    /// Read the speaker's sessions and routes into the BGP status. Answered:
    /// [`super::Event::BgpStatusRefreshed`].
    RefreshBgpStatus {
        settled: bool,
    },
    /// Write status.json (the shell adds pid, time, tunnel counters and the BGP status).
    WriteStatus(Status),
    /// End the loop.
    Exit(ExitReason),
    Log(Level, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// SIGTERM or SIGINT: stop, leaving the dataplane as it is.
    Signal,
    /// `twill node leave` removed our lease: clear local state.
    Left,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
}

/// The core's part of status.json.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The node's key subnet (IPv4; IPv6 on an IPv6-only node).
    pub subnet: IpNet,
    pub in_sync: bool,
    pub peers: Vec<PeerStatus>,
    pub policy: Option<PolicyStatus>,
    pub lease_events: Vec<LeaseEvent>,
}

impl Action {
    /// The action as readable lines (deterministic: everything in the order the core made it).
    pub fn render(&self) -> String {
        let mut out = String::new();
        match self {
            Action::Reconcile { desired, leases } => {
                let nodes: Vec<&str> = leases.iter().map(|l| l.node.as_str()).collect();
                let _ = writeln!(out, "reconcile (leases of: {})", nodes.join(" "));
                render_desired(&mut out, desired);
            }
            Action::SubmitRoutes(plan) => {
                let _ = writeln!(out, "submit routes");
                for r in &plan.add_routes {
                    let _ = writeln!(
                        out,
                        "  add {} via {} dev {}{}",
                        r.dst,
                        r.via,
                        r.dev,
                        onlink(r.onlink)
                    );
                }
                for r in &plan.replace_routes {
                    let _ = writeln!(
                        out,
                        "  replace {} via {} dev {}{}",
                        r.dst,
                        r.via,
                        r.dev,
                        onlink(r.onlink)
                    );
                }
                for r in &plan.delete_routes {
                    let via = r.via.map(|v| v.to_string()).unwrap_or_default();
                    let _ = writeln!(out, "  delete {} via {via}", r.dst);
                }
            }
            Action::CheckLease => out.push_str("check lease\n"),
            Action::RenewLease => out.push_str("renew lease\n"),
            Action::RenewSoon => out.push_str("renew again in 1 s\n"),
            Action::Reacquire { lease, subnet } => {
                let _ = writeln!(out, "lease again: {} preferring {subnet}", lease.node);
            }
            Action::PublishLease { lease } => {
                let key = lease.wireguard_public_key.as_deref().unwrap_or("-");
                let _ = writeln!(
                    out,
                    "publish lease: {} {} wireguard key {}",
                    lease.node,
                    lease.key_subnet().map_or("-".into(), |s| s.to_string()),
                    twill_types::wg_key::short(key)
                );
            }
            Action::SyncBgpPeers {
                leases,
                store_peers,
            } => {
                let nodes: Vec<&str> = leases.iter().map(|l| l.node.as_str()).collect();
                let routers: Vec<String> = store_peers
                    .iter()
                    .map(|p| format!("{} as {}{}", p.address, p.as_number, auth(&p.auth)))
                    .collect();
                let _ = writeln!(
                    out,
                    "sync bgp peers (nodes: {}; store peers: {})",
                    nodes.join(" "),
                    routers.join(", ")
                );
            }
            Action::RefreshBgpStatus { settled } => {
                let _ = writeln!(out, "refresh bgp status (settled {settled})");
            }
            Action::WriteStatus(status) => render_status(&mut out, status),
            Action::Exit(reason) => {
                let _ = writeln!(out, "exit: {reason:?}");
            }
            Action::Log(level, message) => {
                let _ = writeln!(out, "log {level:?}: {message}");
            }
        }
        out
    }
}

fn onlink(on: bool) -> &'static str {
    if on { " onlink" } else { "" }
}

fn auth(a: &BgpAuth) -> &'static str {
    if a.has_password() { " md5" } else { "" }
}

fn path(p: &PeerPath) -> String {
    match p {
        PeerPath::Skipped(why) => format!("skipped ({why})"),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn render_desired(out: &mut String, d: &DesiredState) {
    if let Some(v) = &d.vxlan {
        let _ = writeln!(
            out,
            "  vxlan {} vni {} port {} local {} dev {} mtu {} addr {}",
            v.name, v.vni, v.port, v.local, v.underlay, v.mtu, v.address
        );
    }
    if let Some(t) = &d.tunnel {
        let _ = writeln!(
            out,
            "  tunnel {} {:?} mtu {} local {}",
            t.name, t.encap, t.mtu, t.local
        );
    }
    for p in &d.peers {
        let _ = writeln!(
            out,
            "  peer {} {} at {}: {}{}",
            p.node,
            or_dash(p.subnet),
            or_dash(p.public_ip),
            path(&p.path),
            ipv6_part(p.subnet6, p.path6.as_ref())
        );
    }
    for r in &d.routes {
        let _ = writeln!(
            out,
            "  route {} via {} dev {}{}",
            r.dst,
            r.via,
            r.dev,
            onlink(r.onlink)
        );
    }
    for n in &d.neighbours {
        let _ = writeln!(out, "  neighbour {} lladdr {} dev {}", n.ip, n.mac, n.dev);
    }
    for f in &d.fdb {
        let _ = writeln!(out, "  fdb {} dst {} dev {}", f.mac, f.dst, f.dev);
    }
    for t in &d.tunnel_peers {
        // A peer of an IPv6-only cluster is known by its IPv6 subnet.
        let subnet = t
            .subnet
            .map_or_else(|| or_dash(t.subnet6), |s| s.to_string());
        let _ = writeln!(out, "  tunnel peer {} {} at {}", t.node, subnet, t.underlay);
    }
    if let Some(w) = &d.wireguard {
        let local6 = w.local6.map(|a| format!(" local6 {a}")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  wireguard {} port {} mtu {} local {}{local6} keepalive {}",
            w.name, w.port, w.mtu, w.local, w.persistent_keepalive
        );
    }
    for w in &d.wireguard_peers {
        // Its subnets, IPv4 first (an IPv6-only cluster's peers have only the IPv6 one).
        let subnets: Vec<String> = (w.subnet.iter().map(ToString::to_string))
            .chain(w.subnet6.iter().map(ToString::to_string))
            .collect();
        let _ = writeln!(
            out,
            "  wireguard peer {} {} at {} key {}",
            w.node,
            subnets.join(" "),
            w.underlay,
            twill_types::wg_key::short(&w.public_key)
        );
    }
    if !d.wireguard_blocked.is_empty() {
        let _ = writeln!(
            out,
            "  wireguard blocks clear routes into {}",
            list(&d.wireguard_blocked)
        );
    }
    if !d.wireguard_blocked6.is_empty() {
        let _ = writeln!(
            out,
            "  wireguard blocks clear IPv6 routes into {}",
            list(&d.wireguard_blocked6)
        );
    }
    for (name, value) in &d.sysctls {
        let _ = writeln!(out, "  sysctl {name} = {value}");
    }
    for a in &d.addresses {
        let _ = writeln!(out, "  address {} dev {}", a.address, a.dev);
    }
    if !d.masquerade.is_empty() {
        let _ = writeln!(out, "  masquerade from {}", list(&d.masquerade));
    }
    if let Some(g) = &d.host_guard {
        let senders: Vec<String> = g
            .elements
            .vxlan_peers
            .iter()
            .map(|(ip, subnet)| format!("{ip}>{subnet}"))
            .collect();
        let _ = writeln!(
            out,
            "  host guard: workloadToHost {} allow [{}] control hosts [{}] vxlan senders [{}]",
            g.rules.workload_to_host,
            list(&g.rules.allow_ports),
            list(&g.elements.control_hosts),
            senders.join(" ")
        );
        if !g.rules.pools6.is_empty() {
            let _ = writeln!(
                out,
                "  host guard ipv6: pods [{}] control hosts [{}]",
                list(&g.rules.pools6),
                list(&g.elements.control_hosts6)
            );
        }
    }
}

/// A peer's IPv6 part for the renders ("" when it has none).
fn ipv6_part(subnet6: Option<Ipv6Net>, path6: Option<&PeerPath>) -> String {
    match (subnet6, path6) {
        (_, None) => String::new(),
        (Some(s), Some(p)) => format!("; ipv6 {s}: {}", path(p)),
        (None, Some(p)) => format!("; ipv6: {}", path(p)),
    }
}

/// Items separated by spaces.
fn list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// An IPv4 part a peer of an IPv6-only cluster lacks shows as `-`.
fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or("-".into(), |v| v.to_string())
}

fn render_status(out: &mut String, s: &Status) {
    let _ = writeln!(
        out,
        "write status: subnet {} in sync {}",
        s.subnet, s.in_sync
    );
    for p in &s.peers {
        let state = match (&p.error, p.programmed) {
            (Some(e), _) => format!("error: {e}"),
            (None, true) => "programmed".to_string(),
            (None, false) => "not programmed".to_string(),
        };
        let _ = writeln!(
            out,
            "  peer {} {} {}: {state}{}",
            p.node,
            or_dash(p.subnet),
            path(&p.path),
            ipv6_part(p.subnet6, p.path6.as_ref())
        );
    }
    if let Some(p) = &s.policy {
        let _ = writeln!(
            out,
            "  policy in sync {} policies {}+{} endpoints {}/{} applied {}{}",
            p.in_sync,
            p.network_policies,
            p.cluster_policies,
            p.local_endpoints,
            p.endpoints,
            p.applied,
            p.error
                .as_ref()
                .map(|e| format!(" error: {e}"))
                .unwrap_or_default()
        );
    }
    for e in &s.lease_events {
        let again = e.leased_again.map(|s| s.to_string()).unwrap_or("-".into());
        let _ = writeln!(
            out,
            "  lease event at {} {} {} -> {again}: {}",
            e.at, e.event, e.subnet, e.message
        );
    }
}
