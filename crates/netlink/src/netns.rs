//! Network namespaces: open one by path and run a closure inside it.
//!
//! `setns(2)` changes the namespace of the calling thread only. Doing it on a thread that also
//! runs other work (or a runtime's worker) leaks the namespace into unrelated code, so every
//! switch here happens on a fresh scoped thread that exits afterwards. Sockets opened on that
//! thread stay bound to the namespace they were created in, which is how a [`crate::Handle`]
//! for a container is made.

use std::fs::File;
use std::os::fd::AsFd;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

use crate::{Error, Result};

/// An open network namespace (a file descriptor of `/proc/PID/ns/net` or a bind mount of it).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: String,
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/NAME` or `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<Netns> {
        let file = File::open(path)
            .map_err(|e| Error::io(format!("open network namespace {}", path.display()), e))?;
        Ok(Netns {
            file,
            path: path.display().to_string(),
        })
    }

    /// A namespace file the caller already opened (and checked), named `path` in messages.
    pub fn from_file(file: File, path: &Path) -> Netns {
        Netns {
            file,
            path: path.display().to_string(),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a dedicated thread that has entered this namespace, and returns its result.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                        Error::io(
                            format!("enter network namespace {}", self.path),
                            std::io::Error::from(e),
                        )
                    })?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}
