//! twill's data, shared by the store, the agent, the backends and the CLI, and the few small
//! helpers every crate needs. Nothing here touches the kernel or the network; only [`fs`]
//! touches the disk.
//!
//! - [`cluster`]: the cluster config (Flannel's net-conf.json or twill's TOML/YAML pools), parsed
//!   and validated.
//! - [`keys`]: every key of the store, with a table of the key space.
//! - [`lease`]: a node's subnet lease as published in the store.
//! - [`desired`]: the kernel state a backend wants for a set of peers.
//! - [`node`]: the node file the agent writes for the CNI plugin.
//! - [`mac`]: an Ethernet address with the usual text form (`aa:bb:cc:dd:ee:ff`).
//! - [`hash`]: the stable hash names and addresses are derived with (FNV-1a).
//! - [`fs`]: files replaced atomically (temporary file and rename), private state directories.
//! - [`wg_key`]: the base64 text of WireGuard's 32-byte keys (leases' public keys, the
//!   config's pre-shared key), checked without the tunnel crate.

/// BGP passwords (the `auth` of the config's `bgp` section), under their old path.
pub use cluster::auth as bgp_auth;
pub mod cluster;
pub mod desired;
pub mod fs;
pub mod hash;
pub mod keys;
pub mod lease;
pub mod mac;
pub mod node;
pub mod wg_key;

pub use mac::MacAddr;
