//! The crate's single error type, shared by the pure `pool` layer and the
//! on-disk `store` layer.
//!
//! Every message is written for the person operating the node: it names the
//! file, range or address involved and, where there is one, the way out.
//! Nothing here performs I/O.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;

/// Why an address inside a range can never be handed to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reserved {
    /// The IPv4 network address (all host bits zero).
    Network,
    /// The IPv6 network address, which RFC 4291 reserves as the
    /// subnet-router anycast address.
    SubnetRouterAnycast,
    /// The range's gateway, which lives on the host side.
    Gateway,
    /// The IPv4 broadcast address (all host bits one).
    Broadcast,
}

impl fmt::Display for Reserved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reserved::Network => "network address",
            Reserved::SubnetRouterAnycast => "subnet-router anycast address",
            Reserved::Gateway => "gateway",
            Reserved::Broadcast => "broadcast address",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being attempted ("open", "read", "lock", ...).
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "IPAM state file {} is corrupt ({reason}); run `{}` to rebuild it from its \
         previous generation and the addresses in use on this node (do not delete it: \
         addresses still in use would be handed out again)",
        path.display(),
        repair_command(path)
    )]
    Corrupt { path: PathBuf, reason: String },

    #[error(
        "IPAM state file {} has format version {found}, but this twill only understands \
         version {supported}; it was probably written by a newer twill",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u64,
        supported: u64,
    },

    #[error(
        "no free address left in {subnet}: all {usable} usable addresses are allocated; \
         delete containers or run CNI GC to reclaim leaked ones"
    )]
    RangeFull { subnet: IpNet, usable: u128 },

    #[error(
        "container {container_id} interface {ifname} already holds {}",
        join(addresses)
    )]
    AlreadyAllocated {
        container_id: String,
        ifname: String,
        addresses: Vec<IpAddr>,
    },

    #[error("invalid range {subnet}: {reason}")]
    InvalidRange { subnet: IpNet, reason: String },

    #[error(
        "requested address {address} is not inside any configured range ({})",
        join(ranges)
    )]
    NotInRange { address: IpAddr, ranges: Vec<IpNet> },

    #[error(
        "requested address {address} is the {reserved} of {subnet} and is never assigned \
         to a container"
    )]
    ReservedAddress {
        address: IpAddr,
        subnet: IpNet,
        reserved: Reserved,
    },

    #[error(
        "requested address {address} is already in use by container {container_id} \
         interface {ifname}"
    )]
    AddressInUse {
        address: IpAddr,
        container_id: String,
        ifname: String,
    },

    #[error("invalid IPAM request: {0}")]
    InvalidRequest(String),
}

/// The `twill ipam repair` command line for the state file `path`
/// (`<dataDir>/ipam/<network>/state.json`).
pub fn repair_command(path: &std::path::Path) -> String {
    let dir = path.parent();
    let network = dir
        .and_then(|d| d.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "NETWORK".into());
    match dir.and_then(|d| d.parent()).and_then(|d| d.parent()) {
        Some(data_dir) if !data_dir.as_os_str().is_empty() => {
            format!(
                "twill ipam repair {network} --data-dir {}",
                data_dir.display()
            )
        }
        _ => format!("twill ipam repair {network}"),
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}
