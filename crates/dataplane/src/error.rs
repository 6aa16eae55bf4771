//! The crate's error type. Messages say what failed and what to do about it,
//! because they end up verbatim in CNI error results read by operators.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "the nft binary (Debian package nftables) is required for ipMasq and container \
         anti-spoofing, but it is neither in PATH nor in /usr/sbin, /sbin or /usr/local/sbin: \
         install it (apt-get install nftables)"
    )]
    NftMissing,

    #[error("could not run {}: {source}", nft.display())]
    NftSpawn {
        nft: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "nft rejected the transaction that {what} ({status}): {stderr}\nthe transaction was:\n{script}"
    )]
    NftFailed {
        what: String,
        status: String,
        stderr: String,
        script: String,
    },

    #[error("{op}: cannot talk to nf_tables over netlink: {source}{hint}")]
    Netlink {
        op: String,
        #[source]
        source: io::Error,
        hint: &'static str,
    },

    /// The kernel answered a netlink request with an error.
    #[error("{op}: the kernel answered: {reason}")]
    Kernel {
        op: String,
        errno: i32,
        reason: String,
    },

    #[error("{op}: unexpected netlink reply from the kernel: {detail}")]
    Protocol { op: String, detail: String },

    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "invalid CNI network name {0:?} for ipMasq: use 1 to 250 letters, digits, '_', '.' or '-'"
    )]
    InvalidNetworkName(String),

    #[error("invalid interface name {name:?} for anti-spoofing: {reason}")]
    InvalidIfname { name: String, reason: &'static str },

    #[error("ipMasq for network {0:?} needs at least one IP range")]
    NoRanges(String),

    #[error("cannot {action} {}: {source}", path.display())]
    State {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The errno the kernel answered with, for [`Error::Kernel`].
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}
