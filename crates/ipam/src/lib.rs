//! `twill-ipam`: local address management for the twill CNI plugin.
//!
//! Two layers, kept apart on purpose:
//! - [`pool`]: pure address arithmetic (ranges, reserved addresses, the
//!   round-robin choice of the next free address). No I/O.
//! - [`store`]: the on-disk state under an exclusive flock, written
//!   atomically, recording which container interface holds which address.
//! - [`subnets`]: pure choice of a node's subnet from the cluster's pools,
//!   and the IPv6 subnet derived from it in a dual-stack cluster (for the
//!   agent, not the plugin).
//!
//! Typical use by the plugin:
//!
//! ```no_run
//! # fn main() -> Result<(), twill_ipam::Error> {
//! use twill_ipam::{Range, Store};
//! let ranges = [Range::new("10.88.0.0/16".parse().unwrap())?];
//! let store = Store::open("/var/lib/twill/ipam/mynet".as_ref())?;
//! let addrs = store.lock()?.allocate(&ranges, "c0ffee", "eth0")?;
//! # let _ = addrs; Ok(()) }
//! ```

pub mod error;
pub mod pool;
pub mod store;
pub mod subnets;

pub use error::{Error, Reserved};
pub use pool::{Range, next_free};
pub use store::{Attachment, Locked, RepairBase, STATE_VERSION, Store};
