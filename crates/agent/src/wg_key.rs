//! The node's WireGuard private key on disk: `<data-dir>/wireguard.key`, standard base64 and a
//! newline (as `wg genkey` writes it), mode 0600.
//!
//! - The agent creates it at its first start and reuses it after every restart, so peers keep
//!   their sessions' key; `twill node rotate-key` replaces it with a new one.
//! - Both write a new key through a temporary file created O_EXCL (mode 0600 whatever the
//!   umask) and a rename ([`twill_types::fs::write_atomic`]): nothing is ever written through
//!   a symlink planted at the path, and a reader sees the old key or the new one.
//! - Reading opens the file O_NOFOLLOW: a symlink at the path is refused, never followed
//!   (whoever planted it could make the agent use a key they know). A file another user owns is
//!   refused; one readable by others is made 0600 again.
//! - The key itself is never printed or logged, and errors never quote the file's content.
//!
//! The running agent notices a rotation by the file's identity ([`FileId`]: device, inode,
//! size, change time), which it checks every 250 ms: a rename always gives a new inode.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use twill_tunnel::wg::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::files::FILE_MODE;

/// File name of the key inside the data directory.
pub const KEY_FILE: &str = "wireguard.key";

/// A key file holds 44 characters and a newline; anything much longer is not one.
const MAX_KEY_FILE: u64 = 256;

/// The key file's path in a data directory.
pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// What tells one version of the key file from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    ctime_ns: i128,
}

impl FileId {
    fn of(meta: &std::fs::Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            ctime_ns: i128::from(meta.ctime()) * 1_000_000_000 + i128::from(meta.ctime_nsec()),
        }
    }

    /// The identity of whatever is at `path` now (a symlink's own, not its target's); None
    /// when nothing is there or it cannot be read.
    pub fn at(path: &Path) -> Option<FileId> {
        std::fs::symlink_metadata(path).ok().map(|m| FileId::of(&m))
    }
}

/// The key at `path` and the identity of the file it was read from; None when there is no
/// file.
pub fn read(path: &Path) -> anyhow::Result<Option<(PrivateKey, FileId)>> {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => bail!(
            "{} is a symlink: refusing to read a WireGuard key through it (remove it; the \
             agent then makes a new key)",
            path.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let meta = file
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        bail!(
            "{} is owned by uid {}, not by uid {me} that runs twill: refusing its WireGuard key",
            path.display(),
            meta.uid()
        );
    }
    if meta.mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "the WireGuard key file was readable by others; making it 0600 (consider rotating \
             the key: `twill node rotate-key`)"
        );
        file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))
            .with_context(|| format!("making {} mode 0600", path.display()))?;
    }
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_KEY_FILE)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", path.display()))?;
    let key = PrivateKey::from_base64(text.trim()).map_err(|_| {
        anyhow::anyhow!(
            "{} does not hold a WireGuard private key (32 bytes in standard base64, as `wg \
             genkey` writes)",
            path.display()
        )
    })?;
    Ok(Some((key, FileId::of(&meta))))
}

/// Writes a new random key to `path` (atomically, 0600) and returns it with the new file's
/// identity.
pub fn write_new(path: &Path) -> anyhow::Result<(PrivateKey, FileId)> {
    let key = PrivateKey::generate().context("generating a WireGuard key")?;
    let text = key.to_base64();
    let mut bytes = Zeroizing::new(Vec::with_capacity(text.len() + 1));
    bytes.extend_from_slice(text.as_bytes());
    bytes.push(b'\n');
    twill_types::fs::write_atomic(path, &bytes, FILE_MODE)?;
    let id = FileId::at(path).with_context(|| format!("reading {} back", path.display()))?;
    Ok((key, id))
}

/// The node's key: the one in the data directory, or a new one written there (first start).
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<(PrivateKey, FileId)> {
    let path = key_path(data_dir);
    match read(&path)? {
        Some(found) => Ok(found),
        None => {
            let created = write_new(&path)?;
            tracing::info!(
                path = %path.display(), public_key = %created.0.public_key(),
                "created this node's WireGuard key"
            );
            Ok(created)
        }
    }
}

/// `twill node rotate-key`: a new key in place of the old one; the running agent picks it up
/// within a second and publishes the new public key. Returns the old and new public keys.
pub fn rotate(data_dir: &Path) -> anyhow::Result<(Option<PublicKey>, PublicKey)> {
    crate::files::private_dir(data_dir)?;
    let path = key_path(data_dir);
    let old = read(&path)?.map(|(k, _)| k.public_key());
    let (new, _) = write_new(&path)?;
    Ok((old, new.public_key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn created_once_0600_and_the_same_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (key, id) = load_or_create(dir.path()).unwrap();
        let path = key_path(dir.path());
        assert_eq!(mode(&path), 0o600);
        // What `wg genkey` writes: 44 characters of base64 and a newline.
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.len(), 45);
        assert!(text.ends_with('\n'));
        // A restart reads the same key from the same file.
        let (again, id_again) = load_or_create(dir.path()).unwrap();
        assert!(again == key);
        assert_eq!(id, id_again);
        // And nothing about it shows in Debug.
        assert_eq!(format!("{again:?}"), "PrivateKey(<redacted>)");
    }

    #[test]
    fn a_symlink_at_the_path_is_refused_and_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let path = key_path(dir.path());
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        let err = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        // A symlink to a real key file is refused too: the agent never follows one.
        let (_, _) = write_new(&victim).unwrap();
        assert!(read(&path).is_err());
        // Rotating refuses as well, and leaves the target as it was.
        let target_before = std::fs::read(&victim).unwrap();
        assert!(rotate(dir.path()).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), target_before);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn a_bad_file_is_refused_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(dir.path());
        std::fs::write(&path, "c2VjcmV0LWJ1dC1ub3QtYS1rZXk=\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = format!("{:#}", read(&path).unwrap_err());
        assert!(
            err.contains("does not hold a WireGuard private key"),
            "{err}"
        );
        assert!(!err.contains("c2VjcmV0"), "{err}");
        // A key readable by others is still used, and made private again.
        write_new(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read(&path).unwrap().is_some());
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn rotation_writes_a_new_key_with_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (key, id) = load_or_create(dir.path()).unwrap();
        let (old, new) = rotate(dir.path()).unwrap();
        assert_eq!(old, Some(key.public_key()));
        assert_ne!(new, key.public_key());
        let path = key_path(dir.path());
        assert_ne!(
            FileId::at(&path),
            Some(id),
            "the agent's check sees the change"
        );
        let (read_back, _) = read(&path).unwrap().unwrap();
        assert_eq!(read_back.public_key(), new);
        assert_eq!(mode(&path), 0o600);
        // Only the key file is left: no temporary file behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [KEY_FILE]);
        // Rotating before any agent ran makes the first key.
        let fresh = tempfile::tempdir().unwrap();
        let (old, new) = rotate(fresh.path()).unwrap();
        assert_eq!(old, None);
        assert_eq!(
            read(&key_path(fresh.path()))
                .unwrap()
                .unwrap()
                .0
                .public_key(),
            new
        );
    }
}
