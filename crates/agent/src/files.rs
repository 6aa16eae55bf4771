//! Files the agent leaves in its data directory: the node file (read by the CNI plugin) and the
//! status (read by `twill status`). Written atomically, so a reader never sees half a file.
//!
//! Modes are set explicitly, whatever the umask: directories the agent keeps state in are 0700
//! and every file it writes is 0600 (only root reads them: the plugin and `twill status` run as
//! root, and the data directory is 0700 anyway, so a wider file mode would give nobody more).

use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Mode of every file the agent writes.
pub const FILE_MODE: u32 = 0o600;
/// Mode of the directories the agent keeps its state in.
pub const DIR_MODE: u32 = twill_types::fs::PRIVATE_DIR_MODE;

/// Creates `dir` (and missing parents) as a private directory: see
/// [`twill_types::fs::private_dir`] (owned by the agent's user, mode exactly 0700; a symlink,
/// a non-directory or another user's directory is refused).
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    Ok(twill_types::fs::private_dir(dir)?)
}

/// Writes `value` as JSON to `path` through a temporary file and a rename; the file is 0600.
pub fn write_json(path: &Path, value: &impl Serialize) -> anyhow::Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_private(path, &bytes)
}

/// A 64-bit fingerprint of `value`'s JSON form, computed without building it (to tell whether
/// a file written from it would change).
pub fn json_fingerprint(value: &impl Serialize) -> anyhow::Result<u64> {
    use std::hash::{DefaultHasher, Hasher};
    struct HashWriter(DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(DefaultHasher::new());
    serde_json::to_writer(&mut w, value)?;
    Ok(w.0.finish())
}

/// Writes `bytes` to `path` atomically (temporary file, rename) with mode 0600 whatever the
/// umask; the directory is created (0700) when missing.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.is_dir() {
        private_dir(dir)?;
    }
    Ok(twill_types::fs::write_atomic(path, bytes, FILE_MODE)?)
}

/// Reads a JSON file; `Ok(None)` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("{} is not valid", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Removes a file; a missing file is fine.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// The umask is per process: tests that change it take this lock.
    static UMASK: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn modes_are_explicit_whatever_the_umask() {
        let _g = UMASK.lock().unwrap();
        let old = nix::sys::stat::umask(nix::sys::stat::Mode::empty());
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let file = data.join("node.json");
        let r = write_json(&file, &serde_json::json!({"a": 1}));
        // An existing, too open directory is tightened.
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let r2 = private_dir(&open);
        // An existing file is replaced by a 0600 one, whatever its mode was.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let r3 = write_json(&file, &serde_json::json!({"a": 2}));
        nix::sys::stat::umask(old);
        r.unwrap();
        r2.unwrap();
        r3.unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&open), 0o700);
        let back: serde_json::Value = read_json(&file).unwrap().unwrap();
        assert_eq!(back["a"], 2);
    }

    #[test]
    fn a_symlink_or_a_file_is_not_a_private_dir() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(private_dir(&link).is_err());
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(private_dir(&file).is_err());
    }
}
