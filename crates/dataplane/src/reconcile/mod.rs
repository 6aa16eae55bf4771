//! The node agent's peer dataplane: observe what twill owns in the kernel, diff it against the
//! backend's [`DesiredState`], and apply the difference.
//!
//! Ownership is what keeps this safe on a shared host: twill's routes (IPv4 and IPv6) carry
//! [`PEER_ROUTE_PROTOCOL`], twill's VXLAN devices are named `twill.*` (and `twill6.*`, the
//! device of IPv6 pod traffic in a dual-stack cluster), and every neighbour and FDB entry on
//! such a device is twill's. [`observe`] reads only those, so [`diff`] can only
//! ever plan to change or delete them; nothing else in the kernel is touched, and a desired
//! object that would sit outside that space (a neighbour on the underlay, say) is refused and
//! listed in [`Plan::ignored`] instead.
//!
//! [`diff`] is pure. [`apply`] runs a plan in dependency order and keeps up to [`IN_FLIGHT`]
//! requests outstanding on one netlink socket, so a thousand peers take a few thousand
//! round trips' worth of kernel work but almost none of the waiting. Re-observing after an
//! apply gives an empty plan: every attribute compared here is one the kernel reports back
//! exactly as it was written (route protocol and `onlink` flag, neighbour state `PERMANENT`,
//! FDB `self permanent` without port/VNI overrides), or as the kernel fills it in the same way
//! every time (the metric 1024 of an IPv6 route written without one).
//!
//! The parts: [`model`] (what is observed, planned and reported), `observe.rs`, `diff.rs`
//! (pure) and `apply.rs`; [`Reconciler`] (`task.rs`) is the one task that writes them, full
//! reconciles and the BGP deltas in between alike; `watch.rs` tells it when a full reconcile
//! need not read the kernel (kernel notifications and a fingerprint of the desired state);
//! `policy_table.rs` writes the policy task's table in the same queue.

mod apply;
mod diff;
mod host;
pub mod model;
mod observe;
mod policy_table;
pub mod status;
mod task;
mod watch;

pub use apply::{apply, apply_routes, apply_with, remove_all, remove_all_with};
pub use diff::diff;
pub use host::HostWriters;
pub use model::ObjectKey;
pub use model::{
    AddressChange, ApplyFailure, ApplyReport, DeviceAdjust, DeviceChange, MasqueradeChange,
    NftState, Observed, ObservedFdb, ObservedHost, ObservedRoute, ObservedVxlan, Plan,
};
pub use observe::{observe, observe_with};
pub use policy_table::{PolicyWrite, WholePolicy};
pub use status::{ObjectStatus, Statuses};
pub use task::{OneDesired, PolicyWriter, Reconciled, Reconciler};
pub use twill_netlink::Rtnl;

/// Name prefix of the links twill owns.
pub const LINK_PREFIX: &str = "twill.";
/// Name prefix of twill's VXLAN devices for IPv6 pod traffic (`twill6.<VNI>`), also its own.
pub const LINK_PREFIX6: &str = "twill6.";

/// Requests kept outstanding on the socket while applying. Enough to hide the round trip;
/// small enough that acknowledgements (and error replies, which echo the request) never fill
/// the socket's receive buffer.
pub const IN_FLIGHT: usize = 256;
