//! Running the `nft` binary for the rare, rule-shaped changes (creating
//! tables, sets, chains and rules).
//!
//! Why `nft` and not netlink here: rules are compiled to nf_tables bytecode
//! (payload offsets, lookups, set dependencies), which `nft` does correctly
//! and which we do not want to re-implement. These paths run only when
//! twill's objects are missing or outdated (first ADD on a node, after a
//! ruleset flush, after a config change), so the process start is acceptable.
//! Every change is ONE `nft -f -` invocation, which the kernel applies as one
//! atomic transaction.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::Error;

/// Where `nft` lives when `PATH` (often minimal for CNI plugins) misses it.
const FALLBACK_DIRS: &[&str] = &["/usr/sbin", "/sbin", "/usr/local/sbin", "/usr/bin", "/bin"];

/// Finds the `nft` binary: `PATH` first, then the usual sbin directories.
pub fn find_nft() -> Result<PathBuf, Error> {
    find_in(
        std::env::var_os("PATH")
            .as_deref()
            .map(std::env::split_paths)
            .into_iter()
            .flatten(),
    )
}

fn find_in(path_dirs: impl Iterator<Item = PathBuf>) -> Result<PathBuf, Error> {
    path_dirs
        .chain(FALLBACK_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join("nft"))
        .find(|p| is_executable(p))
        .ok_or(Error::NftMissing)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Applies `script` with `nft -f -` as one transaction. `what` names the
/// change for error messages.
pub fn apply(what: &str, script: &str) -> Result<(), Error> {
    let nft = find_nft()?;
    let mut child = Command::new(&nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::NftSpawn {
            nft: nft.clone(),
            source,
        })?;
    // Write then close stdin so nft sees EOF; a write error (nft died early)
    // is reported through its exit status and stderr below.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| Error::NftSpawn {
        nft: nft.clone(),
        source,
    })?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::NftFailed {
        what: what.to_string(),
        status: out.status.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        script: script.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_nft_names_the_package() {
        // Search an empty directory only (plus fallbacks, which may really
        // hold nft on this machine, so only check the error text itself).
        let err = Error::NftMissing.to_string();
        assert!(err.contains("the nft binary (Debian package nftables) is required for ipMasq"));
        let dir = tempfile::tempdir().unwrap();
        let found = find_in(std::iter::once(dir.path().to_path_buf()));
        if let Ok(p) = found {
            assert!(FALLBACK_DIRS.iter().any(|d| p.starts_with(d)));
        }
    }

    #[test]
    fn path_is_searched_first() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("nft");
        std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_in(std::iter::once(dir.path().to_path_buf())).unwrap(),
            fake
        );
    }
}
