//! Per-namespace sysctls (`/proc/sys/net/...`), written for the calling thread's namespace.

use std::fs;
use std::path::Path;

use crate::{Error, Result};

/// Sets `/proc/sys/<path>` to `value` unless it already is (a read is cheaper than a write,
/// which runs the kernel's notifier chains).
pub fn set(path: &str, value: &str) -> Result<()> {
    let full = Path::new("/proc/sys").join(path);
    if fs::read_to_string(&full).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    fs::write(&full, value).map_err(|e| Error::io(format!("set sysctl {path} = {value}"), e))
}
