//! twill-dataplane: twill's own kernel state.
//!
//! - [`reconcile`]: the node agent's one writer: routes, VXLAN devices, neighbours and FDB
//!   entries for the other nodes (IPv4 and IPv6), and the node's own sysctls, TUN address, masquerade chain,
//!   host protection and policy tables: observe, diff against the desired state, apply
//!   (async, over [`twill_netlink::Rtnl`]).
//! - [`nft_state`]: what the kernel holds of an nft object against its writer's record.
//! - [`firewall`]: masquerade per network (`ipMasq`) and anti-spoofing of
//!   container source addresses, in twill's own `inet twill` and
//!   `bridge twill` tables.
//! - [`hostguard`]: the agent's `inet twill-host` table: what pods may reach of the nodes
//!   (workload-to-host protection, control-plane ports) and who may send to the VXLAN port.
//! - `nfnl` (private): the nfnetlink client (requests encoded with
//!   `netlink-packet-netfilter`) that keeps the per-container operations
//!   free of process spawns.
//! - [`policy`]: applying network policy rule sets; bridge netfilter hooks.
//! - `nftcli` (private): running `nft -f -` for the rare rule changes.
//!
//! Everything applies to the network namespace of the calling thread (for [`reconcile`]: the
//! namespace the netlink handle was created in).

mod error;
pub mod firewall;
pub mod hostguard;
mod nfnl;
pub mod nft_state;
mod nftcli;
pub mod policy;
pub mod reconcile;

pub use error::Error;
pub use firewall::{
    Mode, allow_source, ensure_antispoof_base, ensure_masquerade, forget_source, list_sources,
    masquerade_present, nft_binary, remove_masquerade, source_allowed,
};
