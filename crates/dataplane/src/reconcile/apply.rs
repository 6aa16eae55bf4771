//! Running a [`Plan`] against the kernel: in dependency order, pipelined on one netlink
//! socket; route changes go through the handle's bulk socket (many per system call).

use std::collections::HashMap;
use std::fmt;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use twill_netlink::libc_errno::ENODEV;
use twill_netlink::{Error, FdbEntry, IpRoute, Neighbour, Result, RouteChange, VxlanSpec};
use twill_types::desired::{
    DesiredState, FdbSpec, NeighSpec, PEER_ROUTE_PROTOCOL, RouteSpec, VxlanDevice,
};

use super::host::{HostWriters, apply_addresses, apply_host_first};
use super::model::ObjectKey;
use super::model::{
    ApplyFailure, ApplyReport, DeviceAdjust, DeviceChange, ObservedFdb, ObservedRoute, Plan,
};
use super::observe::{observe, our_nexthops};
use super::{IN_FLIGHT, Rtnl, diff};

/// One pipelined request of [`apply`].
enum Op<'a> {
    DeleteRoute(&'a ObservedRoute),
    ReplaceNeighbour(&'a NeighSpec),
    ReplaceFdb(&'a FdbSpec),
    DeleteNeighbour(&'a NeighSpec),
    DeleteFdb(&'a ObservedFdb),
    AddRoute(&'a RouteSpec),
    ReplaceRoute(&'a RouteSpec),
}

impl fmt::Display for Op<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::DeleteRoute(r) => write!(
                f,
                "delete route {} proto {PEER_ROUTE_PROTOCOL} metric {}",
                r.dst, r.metric
            ),
            Op::AddRoute(r) | Op::ReplaceRoute(r) => {
                let verb = if matches!(self, Op::AddRoute(_)) {
                    "add"
                } else {
                    "replace"
                };
                write!(f, "{verb} route {} via {} dev {}", r.dst, r.via, r.dev)?;
                if r.onlink {
                    write!(f, " onlink")?;
                }
                Ok(())
            }
            Op::ReplaceNeighbour(n) => {
                write!(f, "set neighbour {} lladdr {} dev {}", n.ip, n.mac, n.dev)
            }
            Op::DeleteNeighbour(n) => write!(f, "delete neighbour {} dev {}", n.ip, n.dev),
            Op::ReplaceFdb(e) => write!(f, "set fdb {} dst {} dev {}", e.mac, e.dst, e.dev),
            Op::DeleteFdb(e) => write!(f, "delete fdb {} dst {} dev {}", e.mac, e.dst, e.dev),
        }
    }
}

fn no_link(name: &str) -> Error {
    Error::Kernel {
        op: format!("look up link {name}"),
        errno: ENODEV,
    }
}

impl Op<'_> {
    /// The object this operation changes.
    fn object(&self) -> ObjectKey {
        match *self {
            Op::DeleteRoute(r) => ObjectKey::Route(r.dst),
            Op::AddRoute(r) | Op::ReplaceRoute(r) => ObjectKey::Route(r.dst),
            Op::ReplaceNeighbour(n) | Op::DeleteNeighbour(n) => ObjectKey::Neighbour(n.ip),
            Op::ReplaceFdb(e) => ObjectKey::Fdb(e.mac),
            Op::DeleteFdb(e) => ObjectKey::Fdb(e.mac),
        }
    }

    /// The route change of a route operation (the only kind [`run_route_changes`] is given).
    fn route_change(&self, links: &HashMap<String, u32>) -> Result<RouteChange> {
        let index = |name: &str| links.get(name).copied().ok_or_else(|| no_link(name));
        match *self {
            Op::DeleteRoute(r) => Ok(RouteChange::Delete(IpRoute {
                dst: r.dst,
                gateway: r.via,
                protocol: PEER_ROUTE_PROTOCOL,
                metric: r.metric,
                tos: r.tos,
                ..IpRoute::default()
            })),
            Op::AddRoute(r) => index(&r.dev).map(|i| RouteChange::Add(route_of(r, i))),
            Op::ReplaceRoute(r) => index(&r.dev).map(|i| RouteChange::Replace(route_of(r, i))),
            _ => unreachable!("{self} is not a route operation"),
        }
    }

    async fn run(&self, nl: &Rtnl, links: &HashMap<String, u32>) -> Result<()> {
        let index = |name: &str| links.get(name).copied().ok_or_else(|| no_link(name));
        match *self {
            Op::DeleteRoute(_) | Op::AddRoute(_) | Op::ReplaceRoute(_) => {
                unreachable!("route operations go through run_route_changes")
            }
            Op::ReplaceNeighbour(n) => {
                let neigh = Neighbour {
                    ip: n.ip,
                    mac: n.mac.0,
                };
                nl.replace_neighbour(index(&n.dev)?, neigh).await
            }
            Op::ReplaceFdb(e) => {
                nl.replace_fdb(index(&e.dev)?, &FdbEntry::new(e.mac.0, e.dst))
                    .await
            }
            // With the link gone, so is everything on it.
            Op::DeleteNeighbour(n) => match links.get(&n.dev) {
                Some(&i) => nl.delete_neighbour(i, n.ip).await,
                None => Ok(()),
            },
            Op::DeleteFdb(e) => match links.get(&e.dev) {
                Some(&i) => {
                    let entry = FdbEntry {
                        mac: e.mac.0,
                        dst: e.dst,
                        port: e.port,
                        vni: e.vni,
                        ifindex: e.ifindex,
                    };
                    nl.delete_fdb(i, &entry).await
                }
                None => Ok(()),
            },
        }
    }
}

fn route_of(r: &RouteSpec, oif: u32) -> IpRoute {
    IpRoute {
        dst: r.dst,
        gateway: Some(r.via),
        oif: Some(oif),
        onlink: r.onlink,
        protocol: PEER_ROUTE_PROTOCOL,
        metric: 0,
        tos: 0,
        unicast: true,
        nhid: None,
    }
}

/// The plan's route additions and replacements, in the order they are applied.
fn route_updates(plan: &Plan) -> Vec<Op<'_>> {
    let adds = plan.add_routes.iter().map(Op::AddRoute);
    adds.chain(plan.replace_routes.iter().map(Op::ReplaceRoute))
        .collect()
}

/// Applies plans made only of route changes (the agent's BGP deltas; anything else in them
/// is left out), in order, each one's deletions before its additions and replacements, all
/// in one pass through the bulk socket.
pub async fn apply_routes(nl: &Rtnl, plans: &[Plan]) -> Result<ApplyReport> {
    let start = Instant::now();
    let mut report = ApplyReport::default();
    let links = link_indexes(nl).await?;
    let mut ops = Vec::new();
    for plan in plans {
        ops.extend(plan.delete_routes.iter().map(Op::DeleteRoute));
        ops.extend(route_updates(plan));
    }
    run_route_changes(nl, &links, ops, &mut report).await;
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Runs route operations in order through the handle's bulk socket (many per system call:
/// a BGP table is thousands of routes), recording every outcome.
async fn run_route_changes(
    nl: &Rtnl,
    links: &HashMap<String, u32>,
    ops: Vec<Op<'_>>,
    report: &mut ApplyReport,
) {
    let mut sent = Vec::new();
    let mut changes = Vec::new();
    for op in ops {
        match op.route_change(links) {
            Ok(change) => {
                sent.push(op);
                changes.push(change);
            }
            Err(error) => report.fail(op.to_string(), op.object(), error),
        }
    }
    if changes.is_empty() {
        return;
    }
    let outcomes = nl.route_changes(changes).await;
    for (op, outcome) in sent.iter().zip(outcomes) {
        report.record(outcome.map_err(|error| ApplyFailure {
            item: op.to_string(),
            object: Some(op.object()),
            error,
        }));
    }
}

/// Runs `ops` with up to [`IN_FLIGHT`] outstanding, recording every outcome.
///
/// The requests are boxed as `Send` futures one by one: a stream combinator's closure over
/// borrowed operations otherwise hides from the compiler that the whole future is `Send`
/// (a known limit of its inference of higher-ranked lifetimes), and [`super::Reconciler`] runs this in a task of its own.
async fn run_pipelined<'a>(
    nl: &'a Rtnl,
    links: &'a HashMap<String, u32>,
    ops: Vec<Op<'a>>,
    report: &mut ApplyReport,
) {
    let requests: Vec<BoxFuture<'a, std::result::Result<(), ApplyFailure>>> = ops
        .into_iter()
        .map(|op| {
            async move {
                op.run(nl, links).await.map_err(|error| ApplyFailure {
                    item: op.to_string(),
                    object: Some(op.object()),
                    error,
                })
            }
            .boxed()
        })
        .collect();
    let mut results = futures::stream::iter(requests).buffer_unordered(IN_FLIGHT);
    while let Some(outcome) = results.next().await {
        report.record(outcome);
    }
}

/// Every link's index by name (one dump).
async fn link_indexes(nl: &Rtnl) -> Result<HashMap<String, u32>> {
    let links = nl.links().await?;
    Ok(links.into_iter().map(|l| (l.name, l.index)).collect())
}

async fn link_index(nl: &Rtnl, name: &str) -> Result<u32> {
    nl.link_by_name(name)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| no_link(name))
}

async fn delete_device(nl: &Rtnl, name: &str) -> Result<()> {
    match nl.link_by_name(name).await? {
        Some(l) => nl.delete_link(l.index).await,
        None => Ok(()),
    }
}

async fn create_device(nl: &Rtnl, d: &VxlanDevice, report: &mut ApplyReport) {
    let item = format!(
        "create vxlan device {} (vni {} port {} local {} dev {})",
        d.name, d.vni, d.port, d.local, d.underlay
    );
    let created = async {
        let underlay = link_index(nl, &d.underlay).await?;
        nl.create_vxlan(&VxlanSpec {
            name: d.name.clone(),
            vni: d.vni,
            local: d.local,
            underlay,
            port: d.port,
            mac: d.mac.0,
            mtu: d.mtu,
            learning: false,
            up: true,
        })
        .await
    }
    .await;
    match created {
        Ok(index) => {
            report.done += 1;
            let added = nl.add_address(index, d.address).await;
            report.record(added.map_err(|error| ApplyFailure {
                item: format!("add address {} to {}", d.address, d.name),
                object: Some(ObjectKey::Device(d.name.clone())),
                error,
            }));
        }
        Err(error) => report.fail(item, ObjectKey::Device(d.name.clone()), error),
    }
}

async fn adjust_device(nl: &Rtnl, a: &DeviceAdjust, report: &mut ApplyReport) {
    let index = match link_index(nl, &a.name).await {
        Ok(i) => i,
        Err(error) => {
            return report.fail(
                format!("adjust vxlan device {}", a.name),
                ObjectKey::Device(a.name.clone()),
                error,
            );
        }
    };
    if let Some(mtu) = a.mtu {
        let r = nl.set_link_mtu(index, mtu).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("set mtu {mtu} on {}", a.name),
            object: Some(ObjectKey::Device(a.name.clone())),
            error,
        }));
    }
    if let Some(mac) = a.mac {
        let r = nl.set_link_mac(index, mac.0).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("set address {mac} on {}", a.name),
            object: Some(ObjectKey::Device(a.name.clone())),
            error,
        }));
    }
    // Add before deleting, so that the device always has an address.
    for addr in &a.add_addresses {
        let r = nl.add_address(index, *addr).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("add address {addr} to {}", a.name),
            object: Some(ObjectKey::Device(a.name.clone())),
            error,
        }));
    }
    for addr in &a.delete_addresses {
        let r = nl.delete_address(index, *addr).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("delete address {addr} from {}", a.name),
            object: Some(ObjectKey::Device(a.name.clone())),
            error,
        }));
    }
    if a.up {
        let r = nl.set_link_up(index, true).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("set {} up", a.name),
            object: Some(ObjectKey::Device(a.name.clone())),
            error,
        }));
    }
}

/// Applies `plan` in the handle's namespace (nft and sysctls: the calling thread's), with
/// writers that hold no record of earlier writes. See [`apply_with`].
pub async fn apply(nl: &Rtnl, plan: &Plan) -> Result<ApplyReport> {
    apply_with(nl, plan, &mut HostWriters::default()).await
}

/// Applies `plan`. Order:
/// 1. sysctls, the host protection table and the masquerade chain, so that traffic of a new
///    peer is accepted (and forwarded) as soon as a route lets it come;
/// 2. stale routes go, while whatever they point at still exists;
/// 3. devices no longer desired go (before a new device that may want their VNI and port);
/// 4. the desired devices (IPv4's, then IPv6's) are created, recreated or adjusted (address,
///    up);
/// 5. links made elsewhere (the TUN device) get their one address;
/// 6. neighbours and FDB entries are set, then stale ones deleted (a stale remote of a MAC
///    that stays is deleted only after the entry was rewritten, so it is never missing);
/// 7. routes are added and replaced last: a route via a VXLAN next hop only carries traffic
///    once the next hop's neighbour and FDB entries exist.
///
/// Each step's requests are pipelined. A failed item is recorded in the report and does not
/// stop the rest; an object that is already gone counts as deleted.
pub async fn apply_with(nl: &Rtnl, plan: &Plan, writers: &mut HostWriters) -> Result<ApplyReport> {
    let start = Instant::now();
    let mut report = ApplyReport::default();
    let no_links = HashMap::new();
    apply_host_first(plan, writers, &mut report);

    let deletes = plan.delete_routes.iter().map(Op::DeleteRoute).collect();
    run_route_changes(nl, &no_links, deletes, &mut report).await;
    delete_nexthops(nl, plan.delete_nexthops.clone(), &mut report).await;

    for name in &plan.delete_devices {
        let r = delete_device(nl, name).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("delete vxlan device {name}"),
            object: Some(ObjectKey::Device(name.clone())),
            error,
        }));
    }

    for change in &plan.devices {
        match change {
            DeviceChange::Create(d) => create_device(nl, d, &mut report).await,
            DeviceChange::Recreate { device, .. } => match delete_device(nl, &device.name).await {
                Ok(()) => create_device(nl, device, &mut report).await,
                Err(error) => report.fail(
                    format!("delete vxlan device {}", device.name),
                    ObjectKey::Device(device.name.clone()),
                    error,
                ),
            },
            DeviceChange::Adjust(a) => adjust_device(nl, a, &mut report).await,
        }
    }
    apply_addresses(nl, plan, &mut report).await;

    let entries = plan.replace_neighbours.len()
        + plan.replace_fdb.len()
        + plan.delete_neighbours.len()
        + plan.delete_fdb.len()
        + plan.add_routes.len()
        + plan.replace_routes.len();
    if entries > 0 {
        // One dump resolves every link name the remaining requests use.
        let links = link_indexes(nl).await?;
        run_pipelined(
            nl,
            &links,
            plan.replace_neighbours
                .iter()
                .map(Op::ReplaceNeighbour)
                .chain(plan.replace_fdb.iter().map(Op::ReplaceFdb))
                .collect(),
            &mut report,
        )
        .await;
        run_pipelined(
            nl,
            &links,
            plan.delete_neighbours
                .iter()
                .map(Op::DeleteNeighbour)
                .chain(plan.delete_fdb.iter().map(Op::DeleteFdb))
                .collect(),
            &mut report,
        )
        .await;
        run_route_changes(nl, &links, route_updates(plan), &mut report).await;
    }

    report.elapsed = start.elapsed();
    tracing::debug!(plan = %plan, report = %report, "applied peer dataplane plan");
    Ok(report)
}

/// Deletes every route of [`PEER_ROUTE_PROTOCOL`] (both families), every VXLAN device of
/// twill's (`twill.*`, `twill6.*`, with their neighbours and FDB entries), twill's nexthop
/// objects, the host protection and policy tables and the cluster's masquerade chain, for a
/// node that leaves the cluster. Sysctls stay as they are, and so does the TUN device (its
/// engine's; it goes with the engine).
pub async fn remove_all(nl: &Rtnl) -> Result<ApplyReport> {
    remove_all_with(nl, &mut HostWriters::default()).await
}

/// [`remove_all`] with the reconciler's writers (whose records it clears).
pub async fn remove_all_with(nl: &Rtnl, writers: &mut HostWriters) -> Result<ApplyReport> {
    let nothing = DesiredState::default();
    let observed = observe(nl, &nothing).await?;
    let mut report = apply_with(nl, &diff(&nothing, &observed), writers).await?;
    let policy = crate::policy::apply("removes the policy table", &crate::policy::remove_script());
    report.record(policy.map_err(|e| {
        super::host::failure(
            format!("delete table inet {}", crate::policy::TABLE),
            ObjectKey::policy_table(),
            "nft",
            e,
        )
    }));
    // The routes are gone, so every nexthop object of twill's is idle now.
    let ours = our_nexthops(nl).await;
    delete_nexthops(nl, ours, &mut report).await;
    Ok(report)
}

async fn delete_nexthops(nl: &Rtnl, ids: Vec<u32>, report: &mut ApplyReport) {
    if ids.is_empty() {
        return;
    }
    let items: Vec<String> = ids
        .iter()
        .map(|id| format!("delete nexthop {id}"))
        .collect();
    for (item, outcome) in items.into_iter().zip(nl.delete_nexthops(ids).await) {
        report.record(outcome.map_err(|error| ApplyFailure {
            item,
            object: None,
            error,
        }));
    }
}
