//! The node agent's peer dataplane: observe what twill owns in the kernel, diff it against the
//! backend's [`DesiredState`], and apply the difference.
//!
//! Ownership is what keeps this safe on a shared host: twill's routes carry
//! [`PEER_ROUTE_PROTOCOL`], twill's VXLAN devices are named `twill.*`, and every neighbour and
//! FDB entry on such a device is twill's. [`observe`] reads only those, so [`diff`] can only
//! ever plan to change or delete them; nothing else in the kernel is touched, and a desired
//! object that would sit outside that space (a neighbour on the underlay, say) is refused and
//! listed in [`Plan::ignored`] instead.
//!
//! [`diff`] is pure. [`apply`] runs a plan in dependency order and keeps up to [`IN_FLIGHT`]
//! requests outstanding on one netlink socket, so a thousand peers take a few thousand
//! round trips' worth of kernel work but almost none of the waiting. Re-observing after an
//! apply gives an empty plan: every attribute compared here is one the kernel reports back
//! exactly as it was written (route protocol and `onlink` flag, neighbour state `PERMANENT`,
//! FDB `self permanent` without port/VNI overrides).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use ipnet::Ipv4Net;
pub use twill_netlink::AgentHandle;
use twill_netlink::libc_errno::ENODEV;
use twill_netlink::{Error, FdbEntry, Ipv4Route, Neighbour, Result, RouteChange, VxlanSpec};
use twill_types::MacAddr;
use twill_types::desired::{
    DesiredState, FdbSpec, NeighSpec, PEER_ROUTE_PROTOCOL, RouteSpec, VxlanDevice,
};

/// Name prefix of the links twill owns.
pub const LINK_PREFIX: &str = "twill.";

/// Requests kept outstanding on the socket while applying. Enough to hide the round trip;
/// small enough that acknowledgements (and error replies, which echo the request) never fill
/// the socket's receive buffer.
pub const IN_FLIGHT: usize = 256;

/// A twill-owned VXLAN device as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVxlan {
    pub name: String,
    pub index: u32,
    pub vni: u32,
    pub port: u16,
    pub local: Option<Ipv4Addr>,
    /// Name of the underlay link (None when the device has none, or it is unknown).
    pub underlay: Option<String>,
    pub learning: bool,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
    pub addresses: Vec<Ipv4Net>,
}

/// A route of [`PEER_ROUTE_PROTOCOL`] in the main table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservedRoute {
    pub dst: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    /// Output link name (None for multipath routes or an unknown index).
    pub dev: Option<String>,
    pub onlink: bool,
    pub metric: u32,
    pub tos: u8,
    /// False for blackhole, unreachable, ... routes.
    pub unicast: bool,
}

impl ObservedRoute {
    /// The observation of a route that [`apply`] wrote for `spec`.
    pub fn from_spec(spec: &RouteSpec) -> ObservedRoute {
        ObservedRoute {
            dst: spec.dst,
            via: Some(spec.via),
            dev: Some(spec.dev.clone()),
            onlink: spec.onlink,
            metric: 0,
            tos: 0,
            unicast: true,
        }
    }

    /// True when this is the route [`apply`] writes for `spec`.
    pub fn matches(&self, spec: &RouteSpec) -> bool {
        *self == ObservedRoute::from_spec(spec)
    }

    /// True when a route for the same destination written by twill would replace this one
    /// (same destination, TOS and metric, which is the kernel's identity of a route).
    fn is_primary(&self) -> bool {
        self.metric == 0 && self.tos == 0
    }
}

/// A permanent FDB entry (one remote) of a twill VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservedFdb {
    pub dev: String,
    pub mac: MacAddr,
    pub dst: Ipv4Addr,
    /// Overrides of the device's port, VNI and underlay link; twill never sets them.
    pub port: Option<u16>,
    pub vni: Option<u32>,
    pub ifindex: Option<u32>,
}

impl ObservedFdb {
    /// The observation of an entry that [`apply`] wrote for `spec`.
    pub fn from_spec(spec: &FdbSpec) -> ObservedFdb {
        ObservedFdb {
            dev: spec.dev.clone(),
            mac: spec.mac,
            dst: spec.dst,
            port: None,
            vni: None,
            ifindex: None,
        }
    }

    /// True when this is the entry [`apply`] writes for `spec`.
    pub fn matches(&self, spec: &FdbSpec) -> bool {
        *self == ObservedFdb::from_spec(spec)
    }
}

/// twill's own kernel state, as read by [`observe`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every VXLAN device named `twill.*`.
    pub vxlan: Vec<ObservedVxlan>,
    /// Every main-table IPv4 route of [`PEER_ROUTE_PROTOCOL`].
    pub routes: Vec<ObservedRoute>,
    /// Permanent IPv4 neighbours of the desired VXLAN device.
    pub neighbours: Vec<NeighSpec>,
    /// Permanent FDB entries of the desired VXLAN device (all-zero MAC excluded).
    pub fdb: Vec<ObservedFdb>,
    /// Ids of twill's nexthop objects (of [`PEER_ROUTE_PROTOCOL`], made by the bulk route
    /// writer for next hops that many routes share) that no route goes through any more.
    pub idle_nexthops: Vec<u32>,
}

/// What to do to the desired VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceChange {
    /// Create it, with its address, up.
    Create(VxlanDevice),
    /// Delete the existing device and create it again: its VNI, port, local address,
    /// underlay or learning mode differ, which the kernel cannot change in place. Everything
    /// on it (routes, neighbours, FDB) goes with it and is planned again.
    Recreate { device: VxlanDevice, reason: String },
    /// Change it in place.
    Adjust(DeviceAdjust),
}

/// In-place changes to an existing VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeviceAdjust {
    pub name: String,
    pub mtu: Option<u32>,
    pub mac: Option<MacAddr>,
    pub add_addresses: Vec<Ipv4Net>,
    pub delete_addresses: Vec<Ipv4Net>,
    /// Set it up (it is down).
    pub up: bool,
}

/// The changes that bring the kernel to the desired state. Built by [`diff`], run by
/// [`apply`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub device: Option<DeviceChange>,
    /// twill VXLAN devices that are no longer desired.
    pub delete_devices: Vec<String>,
    /// Missing routes. Added exclusively, so that a route of another owner with the same
    /// destination is reported rather than overwritten.
    pub add_routes: Vec<RouteSpec>,
    /// twill's routes whose gateway, link or flags differ.
    pub replace_routes: Vec<RouteSpec>,
    pub delete_routes: Vec<ObservedRoute>,
    /// Idle nexthop objects of twill's.
    pub delete_nexthops: Vec<u32>,
    pub replace_neighbours: Vec<NeighSpec>,
    pub delete_neighbours: Vec<NeighSpec>,
    pub replace_fdb: Vec<FdbSpec>,
    pub delete_fdb: Vec<ObservedFdb>,
    /// Desired objects that were not planned, with the reason (outside what twill owns,
    /// or contradicting an earlier entry).
    pub ignored: Vec<String>,
}

impl Plan {
    /// True when there is nothing to change (ignored entries do not count).
    pub fn is_empty(&self) -> bool {
        self.changes() == 0
    }

    /// The number of kernel objects to create, change or delete.
    pub fn changes(&self) -> usize {
        usize::from(self.device.is_some())
            + self.delete_devices.len()
            + self.add_routes.len()
            + self.replace_routes.len()
            + self.delete_routes.len()
            + self.delete_nexthops.len()
            + self.replace_neighbours.len()
            + self.delete_neighbours.len()
            + self.replace_fdb.len()
            + self.delete_fdb.len()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.device {
            None => write!(f, "device: keep")?,
            Some(DeviceChange::Create(d)) => write!(f, "device: create {}", d.name)?,
            Some(DeviceChange::Recreate { device, reason }) => {
                write!(f, "device: recreate {} ({reason})", device.name)?;
            }
            Some(DeviceChange::Adjust(a)) => write!(f, "device: adjust {}", a.name)?,
        }
        if !self.delete_devices.is_empty() {
            write!(f, ", delete {}", self.delete_devices.join(" "))?;
        }
        write!(
            f,
            "; routes +{} ~{} -{}; neighbours ~{} -{}; fdb ~{} -{}",
            self.add_routes.len(),
            self.replace_routes.len(),
            self.delete_routes.len(),
            self.replace_neighbours.len(),
            self.delete_neighbours.len(),
            self.replace_fdb.len(),
            self.delete_fdb.len(),
        )?;
        if !self.delete_nexthops.is_empty() {
            write!(f, "; nexthops -{}", self.delete_nexthops.len())?;
        }
        if !self.ignored.is_empty() {
            write!(f, "; {} ignored", self.ignored.len())?;
        }
        Ok(())
    }
}

/// One change that the kernel refused.
#[derive(Debug)]
pub struct ApplyFailure {
    /// What was being changed, e.g. `add route 10.244.2.0/24 via 10.244.2.0 dev twill.1 onlink`.
    pub item: String,
    pub error: Error,
}

impl fmt::Display for ApplyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.item, self.error)
    }
}

/// The outcome of [`apply`]: failures do not stop the other changes.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Changes the kernel accepted (including deletions of objects already gone).
    pub done: usize,
    pub failures: Vec<ApplyFailure>,
    pub elapsed: Duration,
}

impl ApplyReport {
    pub fn is_ok(&self) -> bool {
        self.failures.is_empty()
    }

    fn record(&mut self, outcome: std::result::Result<(), ApplyFailure>) {
        match outcome {
            Ok(()) => self.done += 1,
            Err(f) => self.failures.push(f),
        }
    }

    fn fail(&mut self, item: impl Into<String>, error: Error) {
        self.failures.push(ApplyFailure {
            item: item.into(),
            error,
        });
    }
}

impl fmt::Display for ApplyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} changes in {:.1?}, {} failed",
            self.done,
            self.elapsed,
            self.failures.len()
        )?;
        for failure in &self.failures {
            write!(f, "\n  {failure}")?;
        }
        Ok(())
    }
}

fn is_twill_link(name: &str) -> bool {
    name.starts_with(LINK_PREFIX)
}

// ===== observe =====

/// Reads twill's own state from the kernel (the handle's namespace): its routes, its VXLAN
/// devices, and the neighbours and FDB entries of the desired device.
pub async fn observe(nl: &AgentHandle, desired: &DesiredState) -> Result<Observed> {
    let links = nl.links().await?;
    let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let ours: Vec<_> = links
        .iter()
        .filter(|l| is_twill_link(&l.name) && l.kind.as_deref() == Some("vxlan"))
        .collect();
    let desired_dev = desired
        .vxlan
        .as_ref()
        .and_then(|d| ours.iter().find(|l| l.name == d.name));

    let addresses = futures::future::try_join_all(ours.iter().map(|l| nl.ipv4_addresses(l.index)));
    let routes = nl.ipv4_routes(Some(PEER_ROUTE_PROTOCOL));
    let neighbours = async {
        match desired_dev {
            Some(l) => nl.permanent_neighbours(l.index).await,
            None => Ok(Vec::new()),
        }
    };
    let fdb = async {
        match desired_dev {
            Some(l) => nl.fdb_entries(l.index).await,
            None => Ok(Vec::new()),
        }
    };
    let (addresses, routes, neighbours, fdb) =
        futures::try_join!(addresses, routes, neighbours, fdb)?;
    let used: HashSet<u32> = routes.iter().filter_map(|r| r.nhid).collect();
    let idle_nexthops = our_nexthops(nl)
        .await
        .into_iter()
        .filter(|id| !used.contains(id))
        .collect();

    let vxlan = ours
        .iter()
        .zip(addresses)
        .map(|(l, addresses)| {
            // The kernel always reports a VXLAN device's parameters; were they missing, the
            // zero values make the device differ from any desired one, so it is recreated.
            let info = l.vxlan.clone().unwrap_or(twill_netlink::VxlanInfo {
                vni: 0,
                port: 0,
                local: None,
                underlay: None,
                learning: true,
            });
            ObservedVxlan {
                name: l.name.clone(),
                index: l.index,
                vni: info.vni,
                port: info.port,
                local: info.local,
                underlay: info
                    .underlay
                    .and_then(|i| names.get(&i).map(|n| n.to_string())),
                learning: info.learning,
                mac: l.mac.map(MacAddr),
                mtu: l.mtu,
                up: l.up,
                addresses,
            }
        })
        .collect();
    let routes = routes
        .into_iter()
        .map(|r| ObservedRoute {
            dst: r.dst,
            via: r.gateway,
            dev: r.oif.and_then(|i| names.get(&i).map(|n| n.to_string())),
            onlink: r.onlink,
            metric: r.metric,
            tos: r.tos,
            unicast: r.unicast,
        })
        .collect();
    let dev_name = desired_dev.map(|l| l.name.clone()).unwrap_or_default();
    let neighbours = neighbours
        .into_iter()
        .map(|n| NeighSpec {
            dev: dev_name.clone(),
            ip: n.ip,
            mac: MacAddr(n.mac),
        })
        .collect();
    let fdb = fdb
        .into_iter()
        .map(|e| ObservedFdb {
            dev: dev_name.clone(),
            mac: MacAddr(e.mac),
            dst: e.dst,
            port: e.port,
            vni: e.vni,
            ifindex: e.ifindex,
        })
        .collect();
    Ok(Observed {
        vxlan,
        routes,
        neighbours,
        fdb,
        idle_nexthops,
    })
}

// ===== diff =====

/// Why an existing device cannot be adjusted into the desired one, if it cannot.
fn recreate_reason(want: &VxlanDevice, have: &ObservedVxlan) -> Option<String> {
    let mut diffs = Vec::new();
    if have.vni != want.vni {
        diffs.push(format!("vni {} -> {}", have.vni, want.vni));
    }
    if have.port != want.port {
        diffs.push(format!("port {} -> {}", have.port, want.port));
    }
    if have.local != Some(want.local) {
        let old = have.local.map_or("none".to_string(), |a| a.to_string());
        diffs.push(format!("local {old} -> {}", want.local));
    }
    if have.underlay.as_deref() != Some(want.underlay.as_str()) {
        let old = have.underlay.as_deref().unwrap_or("none");
        diffs.push(format!("underlay {old} -> {}", want.underlay));
    }
    if have.learning {
        diffs.push("learning on -> off".to_string());
    }
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

fn adjust(want: &VxlanDevice, have: &ObservedVxlan) -> Option<DeviceAdjust> {
    let a = DeviceAdjust {
        name: want.name.clone(),
        mtu: (have.mtu != want.mtu).then_some(want.mtu),
        mac: (have.mac != Some(want.mac)).then_some(want.mac),
        add_addresses: if have.addresses.contains(&want.address) {
            Vec::new()
        } else {
            vec![want.address]
        },
        // The device is twill's, so any other address on it is a leftover (e.g. of an earlier
        // node subnet).
        delete_addresses: have
            .addresses
            .iter()
            .filter(|a| **a != want.address)
            .copied()
            .collect(),
        up: !have.up,
    };
    let unchanged = a.mtu.is_none()
        && a.mac.is_none()
        && a.add_addresses.is_empty()
        && a.delete_addresses.is_empty()
        && !a.up;
    (!unchanged).then_some(a)
}

/// The changes that turn `observed` into `desired`. Pure: no kernel access.
pub fn diff(desired: &DesiredState, observed: &Observed) -> Plan {
    let mut plan = Plan {
        // Idle when observed: a route that this plan adds or replaces gets its own next hop
        // (the bulk writer forgets the objects it is told to delete).
        delete_nexthops: observed.idle_nexthops.clone(),
        ..Plan::default()
    };

    // The device. "fresh" means it will be (re)made, so nothing on it survives.
    let mut device: Option<&str> = None;
    let mut fresh = false;
    let mut neighbours_flushed = false;
    if let Some(want) = &desired.vxlan {
        if !is_twill_link(&want.name) {
            plan.ignored.push(format!(
                "vxlan device {}: not named {LINK_PREFIX}*, so twill would not own it",
                want.name
            ));
        } else {
            device = Some(&want.name);
            match observed.vxlan.iter().find(|o| o.name == want.name) {
                None => {
                    plan.device = Some(DeviceChange::Create(want.clone()));
                    fresh = true;
                }
                Some(have) => {
                    if let Some(reason) = recreate_reason(want, have) {
                        plan.device = Some(DeviceChange::Recreate {
                            device: want.clone(),
                            reason,
                        });
                        fresh = true;
                    } else {
                        let a = adjust(want, have);
                        // Changing a device's MAC makes the kernel flush its ARP entries,
                        // permanent ones included (NETDEV_CHANGEADDR).
                        neighbours_flushed = a.as_ref().is_some_and(|a| a.mac.is_some());
                        plan.device = a.map(DeviceChange::Adjust);
                    }
                }
            }
        }
    }
    for o in &observed.vxlan {
        if Some(o.name.as_str()) != device {
            plan.delete_devices.push(o.name.clone());
        }
    }
    // Routes through a device that is recreated vanish with it; do not plan to touch them.
    let vanishing = if fresh { device } else { None };

    diff_routes(desired, observed, vanishing, &mut plan);
    diff_neighbours(
        desired,
        observed,
        device,
        fresh || neighbours_flushed,
        &mut plan,
    );
    diff_fdb(desired, observed, device, fresh, &mut plan);
    plan
}

fn diff_routes(
    desired: &DesiredState,
    observed: &Observed,
    vanishing: Option<&str>,
    plan: &mut Plan,
) {
    let mut want: BTreeMap<Ipv4Net, &RouteSpec> = BTreeMap::new();
    for r in &desired.routes {
        match want.get(&r.dst) {
            Some(first) if *first != r => plan.ignored.push(format!(
                "route {} via {} dev {}: contradicts an earlier route to the same destination",
                r.dst, r.via, r.dev
            )),
            Some(_) => {}
            None => {
                want.insert(r.dst, r);
            }
        }
    }
    let mut have: BTreeMap<Ipv4Net, Vec<&ObservedRoute>> = BTreeMap::new();
    for o in &observed.routes {
        if vanishing.is_some() && o.dev.as_deref() == vanishing {
            continue;
        }
        have.entry(o.dst).or_default().push(o);
    }
    for (dst, w) in &want {
        let hs = have.remove(dst).unwrap_or_default();
        let mut primary = None;
        for o in hs {
            if primary.is_none() && o.is_primary() {
                primary = Some(o);
            } else {
                // A second route of ours to the same destination (another metric or TOS)
                // would shadow or be shadowed by the desired one.
                plan.delete_routes.push(o.clone());
            }
        }
        match primary {
            None => plan.add_routes.push((*w).clone()),
            Some(o) if !o.matches(w) => plan.replace_routes.push((*w).clone()),
            Some(_) => {}
        }
    }
    for hs in have.into_values() {
        plan.delete_routes.extend(hs.into_iter().cloned());
    }
}

fn diff_neighbours(
    desired: &DesiredState,
    observed: &Observed,
    device: Option<&str>,
    fresh: bool,
    plan: &mut Plan,
) {
    let mut want: BTreeMap<Ipv4Addr, &NeighSpec> = BTreeMap::new();
    for n in &desired.neighbours {
        if Some(n.dev.as_str()) != device {
            plan.ignored.push(format!(
                "neighbour {} lladdr {} dev {}: not on twill's VXLAN device",
                n.ip, n.mac, n.dev
            ));
            continue;
        }
        match want.get(&n.ip) {
            Some(first) if *first != n => plan.ignored.push(format!(
                "neighbour {} lladdr {} dev {}: contradicts an earlier entry for the address",
                n.ip, n.mac, n.dev
            )),
            Some(_) => {}
            None => {
                want.insert(n.ip, n);
            }
        }
    }
    let have: BTreeMap<Ipv4Addr, &NeighSpec> = if fresh {
        BTreeMap::new()
    } else {
        observed
            .neighbours
            .iter()
            .filter(|n| Some(n.dev.as_str()) == device)
            .map(|n| (n.ip, n))
            .collect()
    };
    for (ip, w) in &want {
        if have.get(ip).is_none_or(|h| h.mac != w.mac) {
            plan.replace_neighbours.push((*w).clone());
        }
    }
    for (ip, h) in &have {
        if !want.contains_key(ip) {
            plan.delete_neighbours.push((*h).clone());
        }
    }
}

fn diff_fdb(
    desired: &DesiredState,
    observed: &Observed,
    device: Option<&str>,
    fresh: bool,
    plan: &mut Plan,
) {
    let mut want: BTreeMap<MacAddr, &FdbSpec> = BTreeMap::new();
    for e in &desired.fdb {
        if Some(e.dev.as_str()) != device {
            plan.ignored.push(format!(
                "fdb {} dst {} dev {}: not on twill's VXLAN device",
                e.mac, e.dst, e.dev
            ));
            continue;
        }
        match want.get(&e.mac) {
            Some(first) if *first != e => plan.ignored.push(format!(
                "fdb {} dst {} dev {}: contradicts an earlier entry for the MAC",
                e.mac, e.dst, e.dev
            )),
            Some(_) => {}
            None => {
                want.insert(e.mac, e);
            }
        }
    }
    let mut have: BTreeMap<MacAddr, Vec<&ObservedFdb>> = BTreeMap::new();
    if !fresh {
        for e in &observed.fdb {
            if Some(e.dev.as_str()) == device {
                have.entry(e.mac).or_default().push(e);
            }
        }
    }
    for (mac, w) in &want {
        let hs = have.remove(mac).unwrap_or_default();
        if !hs.iter().any(|h| h.matches(w)) {
            plan.replace_fdb.push((*w).clone());
        }
        // Any other remote for the MAC is stale. `apply` deletes these after the replacement,
        // which rewrites the entry in place, so traffic to the peer never loses its entry.
        plan.delete_fdb
            .extend(hs.into_iter().filter(|h| !h.matches(w)).cloned());
    }
    for hs in have.into_values() {
        plan.delete_fdb.extend(hs.into_iter().cloned());
    }
}

// ===== apply =====

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
    /// The route change of a route operation (the only kind [`run_route_changes`] is given).
    fn route_change(&self, links: &HashMap<String, u32>) -> Result<RouteChange> {
        let index = |name: &str| links.get(name).copied().ok_or_else(|| no_link(name));
        match *self {
            Op::DeleteRoute(r) => Ok(RouteChange::Delete(Ipv4Route {
                dst: r.dst,
                gateway: r.via,
                protocol: PEER_ROUTE_PROTOCOL,
                metric: r.metric,
                tos: r.tos,
                ..Ipv4Route::default()
            })),
            Op::AddRoute(r) => index(&r.dev).map(|i| RouteChange::Add(route_of(r, i))),
            Op::ReplaceRoute(r) => index(&r.dev).map(|i| RouteChange::Replace(route_of(r, i))),
            _ => unreachable!("{self} is not a route operation"),
        }
    }

    async fn run(&self, nl: &AgentHandle, links: &HashMap<String, u32>) -> Result<()> {
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

fn route_of(r: &RouteSpec, oif: u32) -> Ipv4Route {
    Ipv4Route {
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
/// in one pass through the bulk socket. Unlike [`apply`], its future can run as a task of
/// its own.
pub async fn apply_routes(nl: &AgentHandle, plans: &[Plan]) -> Result<ApplyReport> {
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
    nl: &AgentHandle,
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
            Err(error) => report.fail(op.to_string(), error),
        }
    }
    if changes.is_empty() {
        return;
    }
    let outcomes = nl.route_changes(changes).await;
    for (op, outcome) in sent.iter().zip(outcomes) {
        report.record(outcome.map_err(|error| ApplyFailure {
            item: op.to_string(),
            error,
        }));
    }
}

/// Runs `ops` with up to [`IN_FLIGHT`] outstanding, recording every outcome.
async fn run_pipelined<'a>(
    nl: &AgentHandle,
    links: &HashMap<String, u32>,
    ops: impl Iterator<Item = Op<'a>>,
    report: &mut ApplyReport,
) {
    let mut results = futures::stream::iter(ops)
        .map(|op| async move {
            op.run(nl, links).await.map_err(|error| ApplyFailure {
                item: op.to_string(),
                error,
            })
        })
        .buffer_unordered(IN_FLIGHT);
    while let Some(outcome) = results.next().await {
        report.record(outcome);
    }
}

/// Every link's index by name (one dump).
async fn link_indexes(nl: &AgentHandle) -> Result<HashMap<String, u32>> {
    let links = nl.links().await?;
    Ok(links.into_iter().map(|l| (l.name, l.index)).collect())
}

async fn link_index(nl: &AgentHandle, name: &str) -> Result<u32> {
    nl.link_by_name(name)
        .await?
        .map(|l| l.index)
        .ok_or_else(|| no_link(name))
}

async fn delete_device(nl: &AgentHandle, name: &str) -> Result<()> {
    match nl.link_by_name(name).await? {
        Some(l) => nl.delete_link(l.index).await,
        None => Ok(()),
    }
}

async fn create_device(nl: &AgentHandle, d: &VxlanDevice, report: &mut ApplyReport) {
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
            let added = nl.add_ipv4_address(index, d.address).await;
            report.record(added.map_err(|error| ApplyFailure {
                item: format!("add address {} to {}", d.address, d.name),
                error,
            }));
        }
        Err(error) => report.fail(item, error),
    }
}

async fn adjust_device(nl: &AgentHandle, a: &DeviceAdjust, report: &mut ApplyReport) {
    let index = match link_index(nl, &a.name).await {
        Ok(i) => i,
        Err(error) => return report.fail(format!("adjust vxlan device {}", a.name), error),
    };
    if let Some(mtu) = a.mtu {
        let r = nl.set_link_mtu(index, mtu).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("set mtu {mtu} on {}", a.name),
            error,
        }));
    }
    if let Some(mac) = a.mac {
        let r = nl.set_link_mac(index, mac.0).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("set address {mac} on {}", a.name),
            error,
        }));
    }
    // Add before deleting, so that the device always has an address.
    for addr in &a.add_addresses {
        let r = nl.add_ipv4_address(index, *addr).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("add address {addr} to {}", a.name),
            error,
        }));
    }
    for addr in &a.delete_addresses {
        let r = nl.delete_ipv4_address(index, *addr).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("delete address {addr} from {}", a.name),
            error,
        }));
    }
    if a.up {
        let r = nl.set_link_up(index, true).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("set {} up", a.name),
            error,
        }));
    }
}

/// Applies `plan` in the handle's namespace. Order:
/// 1. stale routes go first, while whatever they point at still exists;
/// 2. devices no longer desired go (before a new device that may want their VNI and port);
/// 3. the desired device is created, recreated or adjusted (address, up);
/// 4. neighbours and FDB entries are set, then stale ones deleted (a stale remote of a MAC
///    that stays is deleted only after the entry was rewritten, so it is never missing);
/// 5. routes are added and replaced last: a route via a VXLAN next hop only carries traffic
///    once the next hop's neighbour and FDB entries exist.
///
/// Each step's requests are pipelined. A failed item is recorded in the report and does not
/// stop the rest; an object that is already gone counts as deleted.
pub async fn apply(nl: &AgentHandle, plan: &Plan) -> Result<ApplyReport> {
    let start = Instant::now();
    let mut report = ApplyReport::default();
    let no_links = HashMap::new();

    let deletes = plan.delete_routes.iter().map(Op::DeleteRoute).collect();
    run_route_changes(nl, &no_links, deletes, &mut report).await;
    delete_nexthops(nl, plan.delete_nexthops.clone(), &mut report).await;

    for name in &plan.delete_devices {
        let r = delete_device(nl, name).await;
        report.record(r.map_err(|error| ApplyFailure {
            item: format!("delete vxlan device {name}"),
            error,
        }));
    }

    match &plan.device {
        None => {}
        Some(DeviceChange::Create(d)) => create_device(nl, d, &mut report).await,
        Some(DeviceChange::Recreate { device, .. }) => {
            match delete_device(nl, &device.name).await {
                Ok(()) => create_device(nl, device, &mut report).await,
                Err(error) => report.fail(format!("delete vxlan device {}", device.name), error),
            }
        }
        Some(DeviceChange::Adjust(a)) => adjust_device(nl, a, &mut report).await,
    }

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
                .chain(plan.replace_fdb.iter().map(Op::ReplaceFdb)),
            &mut report,
        )
        .await;
        run_pipelined(
            nl,
            &links,
            plan.delete_neighbours
                .iter()
                .map(Op::DeleteNeighbour)
                .chain(plan.delete_fdb.iter().map(Op::DeleteFdb)),
            &mut report,
        )
        .await;
        run_route_changes(nl, &links, route_updates(plan), &mut report).await;
    }

    report.elapsed = start.elapsed();
    tracing::debug!(plan = %plan, report = %report, "applied peer dataplane plan");
    Ok(report)
}

/// Makes `want` the only IPv4 address of link `name` (the userspace tunnel's TUN device, which
/// its engine creates; the diff above manages only VXLAN devices).
pub async fn set_only_address(nl: &AgentHandle, name: &str, want: Ipv4Net) -> Result<()> {
    let Some(link) = nl.link_by_name(name).await? else {
        return Err(Error::Kernel {
            op: format!("address {want} on {name}"),
            errno: ENODEV,
        });
    };
    let have = nl.ipv4_addresses(link.index).await?;
    for stale in have.iter().filter(|a| **a != want) {
        nl.delete_ipv4_address(link.index, *stale).await?;
    }
    if !have.contains(&want) {
        nl.add_ipv4_address(link.index, want).await?;
    }
    Ok(())
}

/// Deletes every route of [`PEER_ROUTE_PROTOCOL`] and every `twill.*` VXLAN device (with
/// their neighbours and FDB entries), for a node that leaves the cluster.
pub async fn remove_all(nl: &AgentHandle) -> Result<ApplyReport> {
    let nothing = DesiredState::default();
    let observed = observe(nl, &nothing).await?;
    let mut report = apply(nl, &diff(&nothing, &observed)).await?;
    // The routes are gone, so every nexthop object of twill's is idle now.
    let ours = our_nexthops(nl).await;
    delete_nexthops(nl, ours, &mut report).await;
    Ok(report)
}

/// Ids of the nexthop objects of [`PEER_ROUTE_PROTOCOL`] (none on a kernel that cannot list
/// nexthop objects: it has none of twill's either).
async fn our_nexthops(nl: &AgentHandle) -> Vec<u32> {
    let all = nl.nexthops().await.unwrap_or_default();
    all.into_iter()
        .filter(|nh| nh.protocol == PEER_ROUTE_PROTOCOL)
        .map(|nh| nh.id)
        .collect()
}

async fn delete_nexthops(nl: &AgentHandle, ids: Vec<u32>, report: &mut ApplyReport) {
    if ids.is_empty() {
        return;
    }
    let items: Vec<String> = ids
        .iter()
        .map(|id| format!("delete nexthop {id}"))
        .collect();
    for (item, outcome) in items.into_iter().zip(nl.delete_nexthops(ids).await) {
        report.record(outcome.map_err(|error| ApplyFailure { item, error }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr([0x02, 0, 0, 0, 0, last])
    }

    fn device() -> VxlanDevice {
        VxlanDevice {
            name: "twill.1".into(),
            vni: 1,
            port: 8472,
            local: "10.9.0.1".parse().unwrap(),
            underlay: "eth0".into(),
            mac: mac(1),
            mtu: 1450,
            address: "10.244.1.0/32".parse().unwrap(),
        }
    }

    /// The desired state of a VXLAN node with peers 2..=n+1.
    fn vxlan_state(peers: u8) -> DesiredState {
        let mut d = DesiredState {
            vxlan: Some(device()),
            ..DesiredState::default()
        };
        for p in 2..peers + 2 {
            let vtep: Ipv4Addr = format!("10.244.{p}.0").parse().unwrap();
            d.routes.push(RouteSpec {
                dst: format!("10.244.{p}.0/24").parse().unwrap(),
                via: vtep,
                dev: "twill.1".into(),
                onlink: true,
            });
            d.neighbours.push(NeighSpec {
                dev: "twill.1".into(),
                ip: vtep,
                mac: mac(p),
            });
            d.fdb.push(FdbSpec {
                dev: "twill.1".into(),
                mac: mac(p),
                dst: format!("10.9.0.{p}").parse().unwrap(),
            });
        }
        d
    }

    /// What `observe` reads back after `apply` wrote `d`.
    fn written(d: &DesiredState) -> Observed {
        Observed {
            vxlan: d
                .vxlan
                .iter()
                .map(|v| ObservedVxlan {
                    name: v.name.clone(),
                    index: 7,
                    vni: v.vni,
                    port: v.port,
                    local: Some(v.local),
                    underlay: Some(v.underlay.clone()),
                    learning: false,
                    mac: Some(v.mac),
                    mtu: v.mtu,
                    up: true,
                    addresses: vec![v.address],
                })
                .collect(),
            routes: d.routes.iter().map(ObservedRoute::from_spec).collect(),
            neighbours: d.neighbours.clone(),
            fdb: d.fdb.iter().map(ObservedFdb::from_spec).collect(),
            idle_nexthops: Vec::new(),
        }
    }

    #[test]
    fn idle_nexthops_are_deleted() {
        let d = vxlan_state(2);
        let mut o = written(&d);
        o.idle_nexthops = vec![NEXTHOP_ID, NEXTHOP_ID + 1];
        let plan = diff(&d, &o);
        assert_eq!(plan.delete_nexthops, o.idle_nexthops);
        assert_eq!(plan.changes(), 2, "{plan}");
    }

    const NEXTHOP_ID: u32 = twill_netlink::bulk::NEXTHOP_ID_BASE;

    #[test]
    fn nothing_wanted_nothing_there_is_empty() {
        let plan = diff(&DesiredState::default(), &Observed::default());
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.changes(), 0);
    }

    #[test]
    fn from_scratch_creates_everything() {
        let d = vxlan_state(3);
        let plan = diff(&d, &Observed::default());
        assert_eq!(plan.device, Some(DeviceChange::Create(device())));
        assert_eq!(plan.add_routes, d.routes);
        assert!(plan.replace_routes.is_empty() && plan.delete_routes.is_empty());
        assert_eq!(plan.replace_neighbours, d.neighbours);
        assert_eq!(plan.replace_fdb, d.fdb);
        assert!(plan.delete_neighbours.is_empty() && plan.delete_fdb.is_empty());
        assert!(plan.ignored.is_empty());
        assert_eq!(plan.changes(), 1 + 3 * 3);
        assert_eq!(
            plan.to_string(),
            "device: create twill.1; routes +3 ~0 -0; neighbours ~3 -0; fdb ~3 -0"
        );
    }

    #[test]
    fn what_apply_wrote_needs_nothing() {
        let d = vxlan_state(5);
        let plan = diff(&d, &written(&d));
        assert!(plan.is_empty(), "{plan}");
    }

    #[test]
    fn removed_peer_is_deleted_and_others_kept() {
        let before = vxlan_state(3);
        let mut after = before.clone();
        after.routes.remove(1);
        after.neighbours.remove(1);
        after.fdb.remove(1);
        let plan = diff(&after, &written(&before));
        assert_eq!(plan.device, None);
        assert_eq!(
            plan.delete_routes,
            vec![ObservedRoute::from_spec(&before.routes[1])]
        );
        assert_eq!(plan.delete_neighbours, vec![before.neighbours[1].clone()]);
        assert_eq!(
            plan.delete_fdb,
            vec![ObservedFdb::from_spec(&before.fdb[1])]
        );
        assert_eq!(plan.changes(), 3);
    }

    #[test]
    fn changed_vni_recreates_and_replans_everything_on_the_device() {
        let before = vxlan_state(2);
        let mut after = before.clone();
        after.vxlan.as_mut().unwrap().vni = 2;
        let plan = diff(&after, &written(&before));
        match &plan.device {
            Some(DeviceChange::Recreate { device, reason }) => {
                assert_eq!(device.vni, 2);
                assert_eq!(reason, "vni 1 -> 2");
            }
            other => panic!("expected recreate, got {other:?}"),
        }
        // The kernel drops the old device's routes, neighbours and FDB with it.
        assert!(plan.delete_routes.is_empty() && plan.delete_neighbours.is_empty());
        assert!(plan.delete_fdb.is_empty());
        assert_eq!(plan.add_routes, after.routes);
        assert_eq!(plan.replace_neighbours, after.neighbours);
        assert_eq!(plan.replace_fdb, after.fdb);
    }

    #[test]
    fn port_local_underlay_and_learning_recreate() {
        let d = vxlan_state(0);
        let base = written(&d);
        type Change = fn(&mut ObservedVxlan);
        let cases: [(&str, Change); 4] = [
            ("port 4789 -> 8472", |o| o.port = 4789),
            ("local 10.9.0.9 -> 10.9.0.1", |o| {
                o.local = Some("10.9.0.9".parse().unwrap())
            }),
            ("underlay eth1 -> eth0", |o| {
                o.underlay = Some("eth1".into())
            }),
            ("learning on -> off", |o| o.learning = true),
        ];
        for (want, change) in cases {
            let mut o = base.clone();
            change(&mut o.vxlan[0]);
            match diff(&d, &o).device {
                Some(DeviceChange::Recreate { reason, .. }) => assert_eq!(reason, want),
                other => panic!("{want}: expected recreate, got {other:?}"),
            }
        }
    }

    #[test]
    fn mtu_mac_address_and_up_are_adjusted_in_place() {
        let d = vxlan_state(1);
        let mut o = written(&d);
        let v = &mut o.vxlan[0];
        v.mtu = 1400;
        v.mac = Some(mac(9));
        v.up = false;
        v.addresses = vec!["10.244.7.0/32".parse().unwrap()];
        let plan = diff(&d, &o);
        assert_eq!(
            plan.device,
            Some(DeviceChange::Adjust(DeviceAdjust {
                name: "twill.1".into(),
                mtu: Some(1450),
                mac: Some(mac(1)),
                add_addresses: vec!["10.244.1.0/32".parse().unwrap()],
                delete_addresses: vec!["10.244.7.0/32".parse().unwrap()],
                up: true,
            }))
        );
        // Routes and FDB entries survive; the kernel flushes the neighbours with the MAC
        // change, so they are set again.
        assert_eq!(plan.replace_neighbours, d.neighbours);
        assert_eq!(plan.changes(), 2);

        let mut o = written(&d);
        o.vxlan[0].mtu = 1400;
        let plan = diff(&d, &o);
        assert_eq!(
            plan.changes(),
            1,
            "an MTU change alone keeps the neighbours"
        );
    }

    #[test]
    fn stale_devices_are_deleted_foreign_names_refused() {
        let mut o = written(&vxlan_state(0));
        o.vxlan[0].name = "twill.old".into();
        let plan = diff(&vxlan_state(0), &o);
        assert_eq!(plan.delete_devices, vec!["twill.old".to_string()]);
        assert!(matches!(plan.device, Some(DeviceChange::Create(_))));

        let mut d = vxlan_state(1);
        d.vxlan.as_mut().unwrap().name = "flannel.1".into();
        let plan = diff(&d, &Observed::default());
        assert_eq!(plan.device, None);
        // Routes via any link are fine (they carry twill's protocol); neighbours and FDB
        // entries are only ever twill's on a twill device.
        assert_eq!(plan.add_routes.len(), 1);
        assert!(plan.replace_neighbours.is_empty() && plan.replace_fdb.is_empty());
        assert_eq!(plan.ignored.len(), 3, "{:?}", plan.ignored);
    }

    #[test]
    fn entries_off_the_device_are_ignored() {
        let mut d = vxlan_state(1);
        d.neighbours.push(NeighSpec {
            dev: "eth0".into(),
            ip: "10.9.0.7".parse().unwrap(),
            mac: mac(7),
        });
        d.fdb.push(FdbSpec {
            dev: "twill.9".into(),
            mac: mac(7),
            dst: "10.9.0.7".parse().unwrap(),
        });
        let mut o = written(&vxlan_state(1));
        // Observed entries of other links are never planned for deletion.
        o.neighbours.push(NeighSpec {
            dev: "eth0".into(),
            ip: "10.9.0.8".parse().unwrap(),
            mac: mac(8),
        });
        let plan = diff(&d, &o);
        assert!(plan.is_empty(), "{plan}");
        assert_eq!(plan.ignored.len(), 2, "{:?}", plan.ignored);
        assert!(plan.to_string().ends_with("; 2 ignored"));
    }

    #[test]
    fn route_differences() {
        let d = vxlan_state(1);
        let base = written(&d);
        let mut o = base.clone();
        o.routes[0].via = Some("10.244.9.0".parse().unwrap());
        assert_eq!(diff(&d, &o).replace_routes, d.routes);
        let mut o = base.clone();
        o.routes[0].onlink = false;
        assert_eq!(diff(&d, &o).replace_routes, d.routes);
        let mut o = base.clone();
        o.routes[0].dev = Some("eth0".into());
        assert_eq!(diff(&d, &o).replace_routes, d.routes);
        let mut o = base.clone();
        o.routes[0].unicast = false;
        assert_eq!(diff(&d, &o).replace_routes, d.routes);

        // Another metric is another route: it goes, and the desired one is added.
        let mut o = base.clone();
        o.routes[0].metric = 100;
        let plan = diff(&d, &o);
        assert_eq!(plan.delete_routes, vec![o.routes[0].clone()]);
        assert_eq!(plan.add_routes, d.routes);

        // Both present: only the extra goes.
        let mut o = base.clone();
        let mut extra = o.routes[0].clone();
        extra.metric = 5;
        o.routes.insert(0, extra.clone());
        let plan = diff(&d, &o);
        assert_eq!(plan.delete_routes, vec![extra]);
        assert_eq!(plan.changes(), 1);
    }

    #[test]
    fn contradicting_desired_routes_keep_the_first() {
        let mut d = vxlan_state(1);
        let mut other = d.routes[0].clone();
        other.via = "10.244.8.0".parse().unwrap();
        d.routes.push(other);
        d.routes.push(d.routes[0].clone()); // an exact duplicate is harmless
        let plan = diff(&d, &Observed::default());
        assert_eq!(plan.add_routes, vec![d.routes[0].clone()]);
        assert_eq!(plan.ignored.len(), 1);
    }

    #[test]
    fn neighbour_mac_change_is_a_replace() {
        let d = vxlan_state(2);
        let mut o = written(&d);
        o.neighbours[1].mac = mac(99);
        let plan = diff(&d, &o);
        assert_eq!(plan.replace_neighbours, vec![d.neighbours[1].clone()]);
        assert_eq!(plan.changes(), 1);
    }

    #[test]
    fn fdb_remote_change_replaces_then_deletes_the_old_remote() {
        let d = vxlan_state(1);
        let mut o = written(&d);
        o.fdb[0].dst = "10.9.0.99".parse().unwrap();
        let plan = diff(&d, &o);
        assert_eq!(plan.replace_fdb, d.fdb);
        assert_eq!(plan.delete_fdb, vec![o.fdb[0].clone()]);

        // A port override is not what twill writes.
        let mut o = written(&d);
        o.fdb[0].port = Some(9999);
        let plan = diff(&d, &o);
        assert_eq!(plan.replace_fdb, d.fdb);
        assert_eq!(plan.delete_fdb, vec![o.fdb[0].clone()]);

        // The right remote plus a stale one (a flooded MAC): only the stale one goes.
        let mut o = written(&d);
        let mut stale = o.fdb[0].clone();
        stale.dst = "10.9.0.50".parse().unwrap();
        o.fdb.push(stale.clone());
        let plan = diff(&d, &o);
        assert!(plan.replace_fdb.is_empty());
        assert_eq!(plan.delete_fdb, vec![stale]);
    }

    #[test]
    fn host_gw_without_device_removes_the_old_device() {
        let d = DesiredState {
            routes: vec![RouteSpec {
                dst: "10.244.2.0/24".parse().unwrap(),
                via: "10.9.0.2".parse().unwrap(),
                dev: "eth0".into(),
                onlink: false,
            }],
            ..DesiredState::default()
        };
        let before = vxlan_state(1);
        let plan = diff(&d, &written(&before));
        assert_eq!(plan.device, None);
        assert_eq!(plan.delete_devices, vec!["twill.1".to_string()]);
        // Same destination, now via the underlay: replaced in place.
        assert_eq!(plan.replace_routes, d.routes);
        assert!(plan.delete_routes.is_empty());
        // Neighbours and FDB go with the device.
        assert!(plan.delete_neighbours.is_empty() && plan.delete_fdb.is_empty());
    }

    #[test]
    fn everything_goes_when_nothing_is_desired() {
        let before = vxlan_state(2);
        let plan = diff(&DesiredState::default(), &written(&before));
        assert_eq!(plan.delete_devices, vec!["twill.1".to_string()]);
        assert_eq!(plan.delete_routes.len(), 2);
        assert_eq!(plan.changes(), 3);
    }
}
