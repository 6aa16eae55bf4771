//! The cluster config: which ranges pods get addresses from, how nodes' subnets are cut from
//! them, and how traffic crosses between nodes.
//!
//! Accepted forms (see [`ClusterConfig::parse`]):
//! - Flannel's net-conf.json, as is (with its IPv6 keys for dual-stack clusters).
//! - twill's own form, in TOML or YAML, with Calico-style pools of either family.
//!
//! Both become one normalized [`ClusterConfig`], which is what the store holds (as JSON).
//!
//! Where things live (everything public is re-exported here, so paths are
//! `twill_types::cluster::X` whatever the file):
//! - `model`: the config types, their constants and defaults.
//! - `validate`: the invariants of any accepted config, and the check against the host's
//!   networks.
//! - `parse`: which form a text is in, the dispatch to its reader, the normalized JSON.
//! - `flannel`: Flannel's net-conf.json and Flannel's field names.
//! - `twill_form`: twill's own form (TOML, YAML, JSON with `pools`).
//! - `host_access`: what pods may reach of their own node.
//! - `bgp`: the `bgp` section and the external peers of the store.
//! - `control_ports`: the ports pods never reach (control plane, tunnels, WireGuard).
//! - `fields`: how forms name fields, and the value readers they share.
//! - `error`: [`ConfigError`], naming the field and the problem.

pub mod auth;
mod bgp;
mod control_ports;
mod error;
mod fields;
mod flannel;
mod host_access;
mod model;
mod parse;
mod twill_form;
mod validate;

pub use auth::{BgpAuth, Secret};
pub use bgp::{
    BgpConfig, BgpNode, BgpPeer, DEFAULT_AS, DEFAULT_BGP_PORT, DEFAULT_HOLD_TIME, RouterIdMode,
    hashed_router_id, redact,
};
pub use control_ports::{ETCD_CLIENT_PORT, ETCD_PEER_PORT, control_tcp_ports, tunnel_udp_ports};
pub use error::ConfigError;
pub use fields::{ConfigForm, DEFAULT_IPV6_SUBNET_LEN, MAX_BLOCK_SIZE, MAX_BLOCK_SIZE6};
pub use host_access::{HostAccess, HostPort, PortProto, WorkloadToHost};
pub use model::{
    Backend, BackendKind, ClusterConfig, DEFAULT_UDP_PORT, DEFAULT_VNI, DEFAULT_VXLAN_PORT,
    DEFAULT_WIREGUARD_PORT, EncapMode, MAX_VNI, MAX_WIREGUARD_MTU, MIN_WIREGUARD_MTU, Pool, Pool6,
    WIREGUARD_OVERHEAD, Wireguard,
};
pub use validate::{
    HostNet, HostNet6, RESERVED_RANGES, RESERVED_RANGES6, overlaps, overlaps6, reserved_overlap,
    reserved_overlap6,
};
