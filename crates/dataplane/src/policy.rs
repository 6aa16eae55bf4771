//! Network policy in the kernel: applying the scripts `twill_policy` renders (one `nft -f`
//! transaction each, in table `inet twill-policy`), and letting bridged pod traffic through
//! the IP hooks so policy sees two pods on the same bridge too.

use crate::Error;

/// The policy table (family `inet`).
pub const TABLE: &str = "twill-policy";

/// The transaction that removes the policy table (nothing when it is not there).
pub fn remove_script() -> String {
    format!("table inet {TABLE} {{}}\ndelete table inet {TABLE}\n")
}

/// Applies one policy script atomically; `what` names the change in errors.
pub fn apply(what: &str, script: &str) -> Result<(), Error> {
    crate::nftcli::apply(what, script)
}

/// Sends bridged IPv4 and IPv6 frames through the IP netfilter hooks of this network namespace
/// (`net.bridge.bridge-nf-call-iptables` and `-ip6tables`, as Kubernetes requires), so the
/// policy's forward chain sees traffic between pods on one bridge. Returns false when the
/// kernel has no bridge netfilter (routed pods need none).
pub fn enable_bridge_hooks() -> Result<bool, Error> {
    let dir = std::path::Path::new("/proc/sys/net/bridge");
    if !dir.exists() {
        return Ok(false);
    }
    for key in ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables"] {
        let path = dir.join(key);
        std::fs::write(&path, "1").map_err(|source| Error::Io {
            op: format!("write {}", path.display()),
            source,
        })?;
    }
    Ok(true)
}
