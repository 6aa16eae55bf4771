//! twill's data, shared by the store, the agent, the backends and the CLI. Data only: nothing
//! here touches the kernel, the disk or the network.
//!
//! - [`cluster`]: the cluster config (Flannel's net-conf.json or twill's TOML/YAML pools), parsed
//!   and validated.
//! - [`lease`]: a node's subnet lease as published in the store, and the store's key layout.
//! - [`desired`]: the kernel state a backend wants for a set of peers.
//! - [`node`]: the node file the agent writes for the CNI plugin.
//! - [`mac`]: an Ethernet address with the usual text form.

pub mod bgp_auth;
pub mod cluster;
pub mod desired;
pub mod lease;
pub mod mac;
pub mod node;

pub use mac::MacAddr;
