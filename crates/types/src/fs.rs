//! Files replaced whole: the one temporary-file-and-rename of the workspace (agent files, CNI
//! endpoint records, IPAM state, firewall stamps, the lab's state); and the one way a private
//! state directory is made ([`private_dir`]).
//!
//! The new content goes to a temporary file in the destination's directory (rename(2) is atomic
//! only within one file system), created O_EXCL after removing whatever was left at that name,
//! so a planted file or symlink is never written through; its mode is set with fchmod, so the
//! umask cannot change it. rename(2) over the old file then means a reader (or a process killed
//! half-way) sees the complete old or the complete new content, never a mix.
//!
//! No fsync, of the file or the directory: none of the callers wants one. Their files must
//! survive process crashes and kills, after which the page cache still holds the data; only a
//! power loss or a kernel crash could lose the last writes (ext4's `auto_da_alloc` flushes the
//! data before a rename-over), and then every container of the node died too. The IPAM state is
//! written on every CNI ADD/DEL, where an fsync would cost milliseconds.

use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A step of an atomic write that failed, with the file it was about.
#[derive(Debug, thiserror::Error)]
#[error("cannot {action} {}: {source}", path.display())]
pub struct WriteError {
    /// What was being attempted ("create", "write", "replace", ...).
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl From<WriteError> for io::Error {
    fn from(e: WriteError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

/// Replaces `path` with `bytes`, the file ending up with exactly `mode` (e.g. `0o600`). The
/// temporary file's name is unique per process and call, so concurrent writers of one file
/// never share one (the last rename wins).
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    stage(&unique_temp_path(path), bytes, mode)?.replace(path)
}

/// Writes `bytes` to the temporary file `tmp` (mode exactly `mode`), for a caller that names
/// it itself (one holding a lock, whose leftover from a killed run is then replaced rather than
/// kept) or that has something to do between the write and the rename. `tmp` must be in the
/// directory of the file it will replace.
pub fn stage(tmp: &Path, bytes: &[u8], mode: u32) -> Result<Staged, WriteError> {
    let err = |action| {
        move |source| WriteError {
            action,
            path: tmp.to_path_buf(),
            source,
        }
    };
    match std::fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err("remove the leftover")(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(err("create"))?;
    // From here on the file is ours: removed again when anything fails.
    let staged = Staged {
        tmp: Some(tmp.to_path_buf()),
    };
    // The umask may have taken bits away, never added them; fchmod states the mode exactly.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err("set the mode of"))?;
    file.write_all(bytes).map_err(err("write"))?;
    Ok(staged)
}

/// A complete temporary file waiting to replace its destination; removed when dropped unreplaced.
#[derive(Debug)]
pub struct Staged {
    tmp: Option<PathBuf>,
}

impl Staged {
    /// Renames the temporary file over `path`.
    pub fn replace(mut self, path: &Path) -> Result<(), WriteError> {
        let tmp = self.tmp.take().expect("a staged file is replaced once");
        std::fs::rename(&tmp, path).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            WriteError {
                action: "replace",
                path: path.to_path_buf(),
                source,
            }
        })
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// `.<name>.tmp.<pid>.<n>` next to `path`: hidden, and with no extension a directory scan for
/// `*.json` records would take.
fn unique_temp_path(path: &Path) -> PathBuf {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!(".{name}.tmp.{}.{n}", std::process::id()))
}

/// Mode of every directory twill keeps state in.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) and makes it a private directory: owned by this
/// process's effective user, mode exactly 0700 whatever the umask or an older twill left. A
/// symlink, a non-directory, or a directory another user owns is refused: whoever owns it
/// could put records there that twill would believe.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("creating {}: {e}", dir.display())))?;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", dir.display())))?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by uid {me} that runs twill: refusing to keep state \
                 there (another user could forge what twill reads from it)",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o7777 != PRIVATE_DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE)).map_err(
            |e| io::Error::new(e.kind(), format!("making {} mode 0700: {e}", dir.display())),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn replaces_the_file_with_exactly_the_mode_and_leaves_nothing_behind() {
        let d = tempfile_dir();
        let path = d.join("f.json");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert_eq!(mode_of(&path), 0o600);
        write_atomic(&path, b"newer", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"newer");
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(names(&d), ["f.json"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_planted_symlink_at_the_temporary_name_is_not_written_through() {
        let d = tempfile_dir();
        let victim = d.join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let tmp = d.join("f.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        stage(&tmp, b"x", 0o600)
            .unwrap()
            .replace(&d.join("f"))
            .unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(d.join("f")).unwrap(), b"x");
        assert!(!tmp.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn failures_name_the_step_and_remove_the_temporary_file() {
        let d = tempfile_dir();
        // A directory at the destination: the rename fails, the temporary file goes.
        let path = d.join("dir");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("sub"), b"").unwrap();
        let err = write_atomic(&path, b"x", 0o600).unwrap_err();
        assert_eq!(err.action, "replace");
        assert!(err.to_string().contains("dir"), "{err}");
        assert_eq!(names(&d), ["dir"]);
        // A staged file dropped unreplaced is removed.
        let tmp = d.join("t");
        drop(stage(&tmp, b"x", 0o600).unwrap());
        assert!(!tmp.exists());
        // A missing directory: nothing to create the file in.
        let err = write_atomic(&d.join("none/f"), b"x", 0o600).unwrap_err();
        assert_eq!(err.action, "create");
        assert_eq!(io::Error::from(err).kind(), io::ErrorKind::NotFound);
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// A fresh directory (twill-types has no tempfile dependency).
    fn tempfile_dir() -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let d = std::env::temp_dir().join(format!(
            "twill-types-fs-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        d
    }
}
