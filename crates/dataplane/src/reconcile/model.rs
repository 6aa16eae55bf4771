//! The reconciler's data: what [`observe`](super::observe) reads of twill's kernel state
//! ([`Observed`] and its parts), the [`Plan`] that [`diff`](super::diff) makes of it, the
//! [`ApplyReport`] that [`apply`](super::apply) gives back, and the [`ObjectKey`] each
//! object is known by (in reports and in the reconciler's statuses).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net};
use twill_netlink::{Error, IPV6_DEFAULT_METRIC};
use twill_types::MacAddr;
use twill_types::desired::{
    AddressSpec, FdbSpec, HostGuardSpec, NeighSpec, RouteSpec, VxlanDevice,
};

use crate::hostguard;
pub use crate::nft_state::NftState;

use super::{LINK_PREFIX, LINK_PREFIX6};

/// A twill-owned VXLAN device as the kernel has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedVxlan {
    pub name: String,
    pub index: u32,
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    /// Name of the underlay link (None when the device has none, or it is unknown).
    pub underlay: Option<String>,
    pub learning: bool,
    pub mac: Option<MacAddr>,
    pub mtu: u32,
    pub up: bool,
    /// Its addresses of both families, but the IPv6 link-local ones the kernel gives every
    /// link (they are the kernel's, not twill's).
    pub addresses: Vec<IpNet>,
}

/// A route of [`PEER_ROUTE_PROTOCOL`] in the main table (IPv4 or IPv6).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservedRoute {
    pub dst: IpNet,
    pub via: Option<IpAddr>,
    /// Output link name (None for multipath routes or an unknown index).
    pub dev: Option<String>,
    pub onlink: bool,
    pub metric: u32,
    pub tos: u8,
    /// False for blackhole, unreachable, ... routes.
    pub unicast: bool,
}

impl ObservedRoute {
    /// The observation of a route that [`apply`](super::apply) wrote for `spec` (with the
    /// kernel's default metric, which for IPv6 is not 0).
    pub fn from_spec(spec: &RouteSpec) -> ObservedRoute {
        ObservedRoute {
            dst: spec.dst,
            via: Some(spec.via),
            dev: Some(spec.dev.clone()),
            onlink: spec.onlink,
            metric: default_metric(&spec.dst),
            tos: 0,
            unicast: true,
        }
    }

    /// True when this is the route [`apply`](super::apply) writes for `spec`.
    pub fn matches(&self, spec: &RouteSpec) -> bool {
        *self == ObservedRoute::from_spec(spec)
    }

    /// True when a route for the same destination written by twill would replace this one
    /// (same destination, TOS and metric, which is the kernel's identity of a route).
    pub fn is_primary(&self) -> bool {
        self.metric == default_metric(&self.dst) && self.tos == 0
    }
}

/// The metric the kernel gives a route to `dst` written without one: 0 for IPv4,
/// [`IPV6_DEFAULT_METRIC`] for IPv6.
pub(super) fn default_metric(dst: &IpNet) -> u32 {
    match dst {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => IPV6_DEFAULT_METRIC,
    }
}

/// A permanent FDB entry (one remote) of a twill VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObservedFdb {
    pub dev: String,
    pub mac: MacAddr,
    pub dst: IpAddr,
    /// Overrides of the device's port, VNI and underlay link; twill never sets them.
    pub port: Option<u16>,
    pub vni: Option<u32>,
    pub ifindex: Option<u32>,
}

impl ObservedFdb {
    /// The observation of an entry that [`apply`](super::apply) wrote for `spec`.
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

    /// True when this is the entry [`apply`](super::apply) writes for `spec`.
    pub fn matches(&self, spec: &FdbSpec) -> bool {
        *self == ObservedFdb::from_spec(spec)
    }
}

/// twill's own kernel state, as read by [`observe`](super::observe).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// Every VXLAN device of twill's (named `twill.*` or `twill6.*`).
    pub vxlan: Vec<ObservedVxlan>,
    /// Every main-table route of [`PEER_ROUTE_PROTOCOL`], IPv4 and IPv6.
    pub routes: Vec<ObservedRoute>,
    /// Permanent neighbours (ARP and NDP) of the desired VXLAN devices.
    pub neighbours: Vec<NeighSpec>,
    /// Permanent FDB entries of the desired VXLAN devices (all-zero MAC excluded).
    pub fdb: Vec<ObservedFdb>,
    /// Ids of twill's nexthop objects (of [`PEER_ROUTE_PROTOCOL`], made by the bulk route
    /// writer for next hops that many routes share) that no route goes through any more.
    pub idle_nexthops: Vec<u32>,
    /// The node's own objects.
    pub host: ObservedHost,
}

/// The node's own objects as read from the kernel: the desired sysctls and links only, and
/// twill's masquerade chain and host protection table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedHost {
    /// The value of each desired sysctl (None: it cannot be read).
    pub sysctls: BTreeMap<String, Option<String>>,
    /// The IPv4 addresses of each link a desired address is for (None: no such link).
    pub addresses: BTreeMap<String, Option<Vec<Ipv4Net>>>,
    /// The cluster's masquerade chain, against the transaction last written.
    pub masquerade: NftState<String>,
    /// `inet twill-host`, against the spec last written.
    pub host_guard: NftState<Arc<HostGuardSpec>>,
}

/// What to do to the masquerade chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasqueradeChange {
    /// Rewrite it to masquerade these sources (IPv4 and IPv6).
    Write(Vec<IpNet>),
    /// Delete it.
    Remove,
}

/// Making a link hold exactly one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressChange {
    pub want: AddressSpec,
    /// The addresses it holds besides (deleted after the wanted one is added).
    pub delete: Vec<Ipv4Net>,
    /// Whether the wanted one is missing.
    pub add: bool,
}

/// What to do to a desired VXLAN device.
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
    pub add_addresses: Vec<IpNet>,
    pub delete_addresses: Vec<IpNet>,
    /// Set it up (it is down).
    pub up: bool,
}

/// The changes that bring the kernel to the desired state. Built by [`diff`](super::diff), run by
/// [`apply`](super::apply).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Changes to the desired VXLAN devices (the IPv4 one's first), one per device at most.
    pub devices: Vec<DeviceChange>,
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
    /// Sysctls to set: `(dotted name, value)`.
    pub sysctls: Vec<(String, String)>,
    pub host_guard: Option<hostguard::Change>,
    pub masquerade: Option<MasqueradeChange>,
    pub addresses: Vec<AddressChange>,
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
        self.devices.len()
            + self.delete_devices.len()
            + self.add_routes.len()
            + self.replace_routes.len()
            + self.delete_routes.len()
            + self.delete_nexthops.len()
            + self.replace_neighbours.len()
            + self.delete_neighbours.len()
            + self.replace_fdb.len()
            + self.delete_fdb.len()
            + self.host_changes()
    }

    /// The number of the node's own objects to change (sysctls, addresses, nft).
    pub fn host_changes(&self) -> usize {
        self.sysctls.len()
            + usize::from(self.host_guard.is_some())
            + usize::from(self.masquerade.is_some())
            + self.addresses.len()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.devices.is_empty() {
            write!(f, "device: keep")?;
        }
        for (i, change) in self.devices.iter().enumerate() {
            write!(f, "{}", if i == 0 { "device: " } else { ", " })?;
            match change {
                DeviceChange::Create(d) => write!(f, "create {}", d.name)?,
                DeviceChange::Recreate { device, reason } => {
                    write!(f, "recreate {} ({reason})", device.name)?;
                }
                DeviceChange::Adjust(a) => write!(f, "adjust {}", a.name)?,
            }
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
        for (name, value) in &self.sysctls {
            write!(f, "; sysctl {name}={value}")?;
        }
        match &self.host_guard {
            None => {}
            Some(hostguard::Change::Table(_)) => write!(f, "; host table: write")?,
            Some(hostguard::Change::Elements(_)) => write!(f, "; host table: elements")?,
            Some(hostguard::Change::Remove) => write!(f, "; host table: remove")?,
        }
        match &self.masquerade {
            None => {}
            Some(MasqueradeChange::Write(ranges)) => write!(f, "; masquerade {ranges:?}")?,
            Some(MasqueradeChange::Remove) => write!(f, "; masquerade: remove")?,
        }
        for a in &self.addresses {
            write!(f, "; address {} on {}", a.want.address, a.want.dev)?;
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
    /// The object it was for (None for twill's nexthop objects, which have no status).
    pub object: Option<ObjectKey>,
    pub error: Error,
}

impl fmt::Display for ApplyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.item, self.error)
    }
}

/// The outcome of [`apply`](super::apply): failures do not stop the other changes.
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

    pub(super) fn record(&mut self, outcome: std::result::Result<(), ApplyFailure>) {
        match outcome {
            Ok(()) => self.done += 1,
            Err(f) => self.failures.push(f),
        }
    }

    pub(super) fn fail(&mut self, item: impl Into<String>, object: ObjectKey, error: Error) {
        self.failures.push(ApplyFailure {
            item: item.into(),
            object: Some(object),
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

/// True for the names of links twill owns: `twill.*`, and `twill6.*` (the VXLAN device for
/// IPv6 pod traffic, Flannel's `flannel-v6.<VNI>`).
pub(crate) fn is_twill_link(name: &str) -> bool {
    name.starts_with(LINK_PREFIX) || name.starts_with(LINK_PREFIX6)
}

/// A kernel object the reconciler manages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKey {
    /// A twill VXLAN device, by name (its addresses, MTU, MAC and state included).
    Device(String),
    /// A route of twill's, by destination.
    Route(IpNet),
    /// A neighbour of a VXLAN device, by address.
    Neighbour(IpAddr),
    /// A sysctl of the node's namespace, by dotted name.
    Sysctl(String),
    /// The address of a link made elsewhere (the TUN device), by link name.
    Address(String),
    /// An nft table of twill's (family inet), by name: `twill-host`, `twill-policy`.
    Table(String),
    /// An nft chain of twill's in the table `inet twill` (which the CNI plugin shares), by
    /// name: the cluster's masquerade chain.
    Chain(String),
    /// An FDB entry of a VXLAN device, by MAC.
    Fdb(MacAddr),
}

impl ObjectKey {
    /// The policy table, written by the policy task's jobs rather than by full reconciles.
    pub fn policy_table() -> ObjectKey {
        ObjectKey::Table(crate::policy::TABLE.to_string())
    }

    /// Whether a full reconcile decides this object's status (all but the policy table).
    pub fn in_full_reconcile(&self) -> bool {
        !matches!(self, ObjectKey::Table(name) if name == crate::policy::TABLE)
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectKey::Device(name) => write!(f, "device {name}"),
            ObjectKey::Route(dst) => write!(f, "route {dst}"),
            ObjectKey::Neighbour(ip) => write!(f, "neighbour {ip}"),
            ObjectKey::Fdb(mac) => write!(f, "fdb {mac}"),
            ObjectKey::Sysctl(name) => write!(f, "sysctl {name}"),
            ObjectKey::Address(dev) => write!(f, "address of {dev}"),
            ObjectKey::Table(name) => write!(f, "table inet {name}"),
            ObjectKey::Chain(name) => write!(f, "chain inet twill {name}"),
        }
    }
}
