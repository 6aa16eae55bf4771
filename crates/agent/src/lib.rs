//! twill's node agent.
//!
//! It leases a subnet for its node from the cluster's pools, publishes it (with backend data
//! such as the VTEP MAC) in the store, leaves the node file for the CNI plugin, then mirrors
//! every node's lease and programs the kernel so that every peer's pods are reachable.
//!
//! Data flows one way: store events → the peer map → the backend's pure desired state →
//! the dataplane's observe/diff/apply → the kernel; the status file is the way back out.
//! Nothing in the kernel is touched until the mirror is in sync with the store; the first
//! reconcile then removes twill's stale state (peers that left while the agent was down).
//! SIGTERM and SIGINT stop the agent and leave the dataplane as it is, so traffic keeps flowing
//! and a restarted agent finds nothing to change. The exception is the userspace tunnel (udp,
//! ipip): its engine lives in the agent, so tunnelled traffic pauses until the next agent
//! re-attaches to the persistent TUN device (milliseconds after it is in sync).
//!
//! The agent exits 0 only on a signal or on `twill node leave`, which it recognises by the leave
//! marker the command writes before deleting the lease
//! ([`twill_types::keys::LEAVING_PREFIX`]). A lease lost any other way (deleted by hand, overwritten by another node, expired) is leased again
//! (the same subnet when it is free) with the dataplane left as it is, and reported in the log
//! and in `twill status` (`leaseEvents`). Every other fatal condition is an error exit, so a
//! supervisor's `Restart=on-failure` restarts the agent.
//!
//! Its local state is private whatever the umask: the data directory and `endpoints/` are
//! 0700, every file it writes and its socket 0600, and the socket serves root only (peer
//! credentials) with bounded reads and connections (see [`policy_sync`]).
//!
//! - [`core`]: the agent's decisions as a pure step function (events in, actions out), which
//!   [`run`] drives with I/O and `tests/replay.rs` replays from recorded event logs.
//! - [`lease`]: acquiring, keeping and releasing the node's subnet lease.
//! - [`underlay`]: finding the node's underlay interface and address.
//! - [`files`]: the node file and status file.
//! - [`tunnel`]: running the userspace tunnel engine (udp, ipip).
//! - [`wireguard`]: running the WireGuard engine (device `twill.wg`) with the peers' keys.
//! - [`wg_key`]: the node's WireGuard private key file (0600, never through a symlink) and
//!   its rotation.
//! - [`policy_sync`]: network policy: the store's policies and the node's endpoints compiled
//!   into nftables, and the socket where the CNI plugin waits for a new pod's policy.
//! - [`bgp`]: the BGP speaker: peers from the topology, learned routes into the desired state.
//! - [`store_args`]: the flags commands share: `--store` with etcd's TLS and user flags,
//!   `--data-dir`, `--json`.
//! - [`cli`]: `twill cluster init/show`, `twill node leave`, `twill status`.
//! - [`policy`]: the policy world from the store, and the CLI's label and name helpers.
//! - [`policy_cli`]: `twill policy apply/list/delete/explain`, `twill namespace label/list`,
//!   `twill endpoint label/list`.

pub mod bgp;
pub mod cli;
pub mod core;
pub mod files;
pub mod lease;
pub mod memory;
pub mod policy;
pub mod policy_cli;
pub mod policy_sync;
pub mod tunnel;
pub mod underlay;
pub mod wg_key;
pub mod wireguard;

pub mod run;
pub mod store_args;

pub use run::{AgentOptions, run};
pub use store_args::{DataDirArgs, EtcdArgs, JsonArgs, OptionalStoreArgs, StoreArgs};
