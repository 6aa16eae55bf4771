//! Network policy in the kernel: applying the scripts `twill_policy` renders (one `nft -f`
//! transaction each, in table `inet twill-policy`), and letting bridged pod traffic through
//! the IP hooks so policy sees two pods on the same bridge too.
//!
//! The whole table is written with its [`fingerprint`](crate::nft_state::fingerprint) as
//! the table's comment ([`table_script`]), so the reconciler can tell a table that already
//! holds a definition from any other without running `nft`.

use crate::Error;

/// The policy table (family `inet`).
pub const TABLE: &str = "twill-policy";

/// The transaction that replaces the whole table with `definition` (`table inet
/// twill-policy { ... }`, as `twill_policy::render::table` writes it), the table carrying
/// `mark` (the [`fingerprint`](crate::nft_state::fingerprint) of `definition`) as its
/// comment. The comment is given by the statement that creates the table: nft ignores a
/// comment on a table that exists, so the table is deleted and made again in the same
/// transaction (no packet sees it missing), which also makes the comment right again after
/// incremental changes.
pub fn table_script(definition: &str, mark: &str) -> String {
    format!(
        "add table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         add table inet {TABLE} {{ comment \"{mark}\"; }}\n\
         {definition}"
    )
}

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
