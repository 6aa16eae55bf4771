//! twill's rtnetlink clients and network-namespace helpers.
//!
//! This crate is the only place where twill speaks rtnetlink or switches network namespaces.
//! The CNI plugin's client is synchronous on purpose: the plugin is a short-lived process that
//! makes a handful of requests, and a tokio runtime would cost more to start than the requests
//! take. (netavark and youki made the same choice over the same packet crates.) The node
//! agent's client is asynchronous, because it programs thousands of objects at once and wants
//! many requests in flight on one socket.
//!
//! - [`Handle`]: one netlink socket bound to one network namespace, with typed operations for
//!   links, addresses and routes, one request at a time (the plugin's).
//! - [`rtnl`]: [`Rtnl`], the asynchronous client over `rtnetlink` with many requests in flight
//!   on one socket (links, VXLAN devices, addresses, routes, nexthop objects, neighbours,
//!   FDB; IPv4 and IPv6 alike), one file per object kind (the agent's).
//! - [`bulk`]: route changes in bulk, many requests per system call (BGP tables).
//! - [`codec`]: the route and nexthop messages that [`rtnl`] and [`bulk`] both send and read.
//! - [`netns`]: running code inside another network namespace on a dedicated thread.
//! - [`sysctl`]: the namespace's `net.*` sysctls.

pub mod bulk;
pub mod codec;
mod handle;
pub mod netns;
pub mod rtnl;
pub mod sysctl;

pub use bulk::RouteChange;
pub use codec::nexthop::Nexthop;
pub use codec::route::{Family, IPV6_DEFAULT_METRIC, IpRoute};
pub use handle::{Handle, Link, LinkKind, Route, VethSpec};
pub use rtnl::{
    Change, FdbEntry, InterfaceV4, KernelEvents, LinkState, Neighbour, Rtnl, VxlanInfo, VxlanSpec,
};

use std::io;

/// Errors of netlink requests and namespace switches.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a request; `errno` is the positive error number.
    #[error("{op}: {}", io::Error::from_raw_os_error(*.errno))]
    Kernel { op: String, errno: i32 },
    /// A local I/O failure (socket, namespace file).
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: io::Error,
    },
    /// A reply we could not decode.
    #[error("{op}: undecodable netlink reply: {detail}")]
    Decode { op: String, detail: String },
}

impl Error {
    /// The errno of a kernel refusal, if this is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            Error::Decode { .. } => None,
        }
    }

    /// True when the kernel said the object already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc_errno::EEXIST)
    }

    /// True when the kernel said the object (link, address, route) does not exist.
    pub fn is_not_found(&self) -> bool {
        self.errno().is_some_and(errno_is_not_found)
    }

    pub(crate) fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }
}

/// True for the error numbers with which the kernel says an object is not there.
pub(crate) fn errno_is_not_found(errno: i32) -> bool {
    matches!(
        errno,
        libc_errno::ENODEV | libc_errno::ENOENT | libc_errno::ESRCH | libc_errno::EADDRNOTAVAIL
    )
}

/// The errno values this crate tests for, spelled out so callers need no libc dependency.
pub mod libc_errno {
    pub const ENOENT: i32 = nix::libc::ENOENT;
    pub const ESRCH: i32 = nix::libc::ESRCH;
    pub const EEXIST: i32 = nix::libc::EEXIST;
    pub const ENODEV: i32 = nix::libc::ENODEV;
    pub const EADDRNOTAVAIL: i32 = nix::libc::EADDRNOTAVAIL;
}

pub type Result<T> = std::result::Result<T, Error>;
