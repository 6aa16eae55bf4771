//! `CNI_NETNS`, checked to be a network namespace before it is used: a path that is anything
//! else (a regular file, a directory, a FIFO, a device) is refused with code 4 ("invalid
//! environment variables") instead of being opened blindly, so a FIFO never blocks the plugin
//! and a device is never opened for its side effects.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::statfs::{NSFS_MAGIC, fstatfs, statfs};
use twill_netlink::netns::Netns;

use crate::spec::{CniError, code};

/// Opens `path` as a network namespace, after checking (without opening it) that it is a
/// namespace file; the opened descriptor is checked again, so a path swapped in between is
/// caught too. Opened with O_NONBLOCK: even a FIFO swapped in at the last instant cannot block.
pub fn open_netns(path: &Path) -> Result<Netns, CniError> {
    let bad = |why: String| {
        CniError::new(
            code::INVALID_ENV,
            format!(
                "CNI_NETNS {} is not a network namespace: {why}",
                path.display()
            ),
        )
    };
    if path.as_os_str().is_empty() {
        return Err(bad("it is empty".into()));
    }
    // stat and statfs follow the magic links of /proc/PID/ns/net without opening anything.
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else {
            "not a namespace file"
        };
        return Err(bad(format!("it is {what}")));
    }
    let fs = statfs(path).map_err(|e| bad(e.to_string()))?;
    if fs.filesystem_type() != NSFS_MAGIC {
        return Err(bad(
            "it is an ordinary file, not a namespace file (/proc/PID/ns/net or a bind mount \
             of one, e.g. /var/run/netns/NAME)"
                .into(),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(|e| bad(e.to_string()))?;
    match fstatfs(&file) {
        Ok(fs) if fs.filesystem_type() == NSFS_MAGIC => {}
        Ok(_) => return Err(bad("it changed into an ordinary file while opened".into())),
        Err(e) => return Err(bad(e.to_string())),
    }
    Ok(Netns::from_file(file, path))
}
