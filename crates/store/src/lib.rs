//! twill's cluster store: a small etcd-shaped key-value API with two implementations behind
//! one [`Store`] enum, so the agent and the CLI never care which one they talk to.
//!
//! - [`EtcdStore`] ([`etcd`]): a real etcd cluster, for multi-host clusters.
//! - [`EmbeddedStore`] ([`embedded`]): one redb file, for a single host with nothing to install.
//!   Several processes may share the file.
//! - [`fn@mirror`] ([`mod@mirror`]): a task that keeps an in-memory copy of a prefix and
//!   survives store restarts and compactions without missing or repeating a change.
//! - [`testing`]: an etcd server started for tests (this crate's and other crates').
//!
//! Both implementations keep etcd's semantics: one global revision that every change bumps,
//! per-key create/mod revisions, leases whose expiry deletes the keys attached to them, and a
//! watch that replays history from a revision until that history is compacted.

mod codec;
pub mod embedded;
pub mod etcd;
pub mod mirror;
pub mod pki;
pub mod testing;

#[cfg(test)]
mod conformance;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;

pub use embedded::EmbeddedStore;
pub use etcd::{EtcdAuth, EtcdStore};
pub use mirror::{MirrorEvent, mirror};

/// Where `Store::connect("embedded")` keeps its file.
pub const DEFAULT_EMBEDDED_PATH: &str = "/var/lib/twill/store.redb";

/// One key as stored, with etcd's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision that created the key (since its last deletion).
    pub create_revision: i64,
    /// The revision of the key's last change.
    pub mod_revision: i64,
    /// The lease the key is attached to; the key is deleted when the lease ends.
    pub lease: Option<LeaseId>,
}

/// A store lease: a TTL that keys can be attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // etcdctl prints lease ids in hex; the same form lets an operator match them up.
        write!(f, "{:x}", self.0)
    }
}

/// One change to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put(KeyValue),
    /// `mod_revision` is the revision of the deletion.
    Delete {
        key: String,
        mod_revision: i64,
    },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    pub fn mod_revision(&self) -> i64 {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// What a [`WatchStream`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// Changes in revision order. `revision` is the store revision the watcher has caught up to
    /// (at least the last event's).
    Events { events: Vec<Event>, revision: i64 },
    /// The requested history is gone: everything before `compact_revision` was compacted. The
    /// stream ends; list again and watch from the listing's revision + 1.
    Compacted { compact_revision: i64 },
    /// The connection to the store broke. The stream ends.
    Broken(StoreError),
}

/// Everything that can go wrong talking to a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached or did not answer in time (retryable).
    #[error("{0}")]
    Unavailable(String),
    /// The lease expired or was revoked.
    #[error("store lease not found (expired or revoked)")]
    LeaseNotFound,
    /// The store URL is malformed, or its credentials (TLS files, user) are unusable.
    #[error("{0}")]
    BadUrl(String),
    /// The embedded store file does not exist (only `twill cluster init` creates one).
    #[error("{0}")]
    Missing(String),
    /// The store refused who we are: a wrong password, an unknown user, no permission.
    #[error("{0}")]
    Denied(String),
    /// The store holds data it cannot decode.
    #[error("{0}")]
    Corrupt(String),
    /// Anything else the store refused.
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// True when trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A stream of [`WatchItem`]s. Dropping it stops the watch.
pub struct WatchStream {
    rx: mpsc::Receiver<WatchItem>,
    task: tokio::task::AbortHandle,
}

impl WatchStream {
    fn new(rx: mpsc::Receiver<WatchItem>, task: tokio::task::AbortHandle) -> Self {
        WatchStream { rx, task }
    }

    /// The next item; `None` once the watch has ended (after `Compacted` or `Broken`).
    pub async fn recv(&mut self) -> Option<WatchItem> {
        self.rx.recv().await
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl futures::Stream for WatchStream {
    type Item = WatchItem;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchItem>> {
        self.rx.poll_recv(cx)
    }
}

impl std::fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

/// A store handle. Cloning is cheap and clones share one connection (or one open file).
#[derive(Clone, Debug)]
pub enum Store {
    Embedded(EmbeddedStore),
    Etcd(EtcdStore),
}

/// What a store URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// The endpoints, and whether the URL asked for TLS (`etcds://`).
    Etcd(Vec<String>, bool),
    Embedded(std::path::PathBuf),
}

fn parse_url(url: &str) -> Result<Target> {
    let bad = |why: &str| {
        StoreError::BadUrl(format!(
            "store URL {url:?}: {why} (expected etcd://HOST:PORT[,HOST:PORT...] (etcds:// for \
             TLS), embedded or embedded:PATH)"
        ))
    };
    let etcd = url
        .strip_prefix("etcd://")
        .map(|rest| (rest, false))
        .or_else(|| url.strip_prefix("etcds://").map(|rest| (rest, true)));
    if let Some((rest, tls)) = etcd {
        let endpoints: Vec<String> = rest.split(',').map(|e| e.trim().to_string()).collect();
        for endpoint in &endpoints {
            let Some((host, port)) = endpoint.rsplit_once(':') else {
                return Err(bad(&format!("endpoint {endpoint:?} has no port")));
            };
            if host.is_empty() || host.contains('/') {
                return Err(bad(&format!("endpoint {endpoint:?} has no host")));
            }
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(bad(&format!("endpoint {endpoint:?} has a bad port")));
            }
        }
        Ok(Target::Etcd(endpoints, tls))
    } else if url == "embedded" {
        Ok(Target::Embedded(DEFAULT_EMBEDDED_PATH.into()))
    } else if let Some(path) = url.strip_prefix("embedded:") {
        if path.is_empty() {
            return Err(bad("empty path"));
        }
        Ok(Target::Embedded(path.into()))
    } else {
        Err(bad("unknown scheme"))
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Embedded($s) => $e,
            Store::Etcd($s) => $e,
        }
    };
}

impl Store {
    /// Opens a store: `etcd://HOST:PORT[,HOST:PORT...]`, `embedded` (the file
    /// [`DEFAULT_EMBEDDED_PATH`]) or `embedded:PATH`. An etcd store is probed once, so an
    /// unreachable cluster is reported here as [`StoreError::Unavailable`].
    ///
    /// An embedded store must already exist (see [`EmbeddedStore::open_existing`]): a missing
    /// or empty file is an error, and nothing is created. Only what starts a cluster creates
    /// one, with [`Store::connect_or_create`].
    pub async fn connect(url: &str) -> Result<Store> {
        Store::connect_with(url, &EtcdAuth::default()).await
    }

    /// As [`Store::connect`], but an embedded store file that does not exist yet is created
    /// (with its parent directories): for `twill cluster init` and tests.
    pub async fn connect_or_create(url: &str) -> Result<Store> {
        Self::connect_as(url, &EtcdAuth::default(), true).await
    }

    /// [`Store::connect`] with credentials for etcd. etcd is spoken to over TLS when the URL
    /// is `etcds://` or `auth` names a TLS file (TLS needs the CA file); a user in `auth` logs
    /// in to etcd's own authentication. Credentials given for an embedded store are an error
    /// (they would protect nothing).
    pub async fn connect_with(url: &str, auth: &EtcdAuth) -> Result<Store> {
        Self::connect_as(url, auth, false).await
    }

    /// [`Store::connect_with`], creating a missing embedded store file (`twill cluster init`).
    pub async fn connect_or_create_with(url: &str, auth: &EtcdAuth) -> Result<Store> {
        Self::connect_as(url, auth, true).await
    }

    async fn connect_as(url: &str, auth: &EtcdAuth, create: bool) -> Result<Store> {
        match parse_url(url)? {
            Target::Etcd(endpoints, tls) => Ok(Store::Etcd(
                EtcdStore::connect_with(endpoints, auth, tls).await?,
            )),
            Target::Embedded(_) if !auth.is_empty() => Err(StoreError::BadUrl(format!(
                "store {url:?} is an embedded file: the etcd TLS and user options do not apply \
                 to it (unset TWILL_ETCD_* or drop the --etcd-* flags)"
            ))),
            Target::Embedded(path) if create => {
                Ok(Store::Embedded(EmbeddedStore::open(path).await?))
            }
            Target::Embedded(path) => {
                Ok(Store::Embedded(EmbeddedStore::open_existing(path).await?))
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        dispatch!(self, s => s.get(key).await)
    }

    /// All keys under `prefix`, sorted by key, and the store revision the listing is
    /// consistent at.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        dispatch!(self, s => s.list(prefix).await)
    }

    /// Writes a key; returns the new revision. A lease that does not exist (any more) is
    /// [`StoreError::LeaseNotFound`].
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<i64> {
        dispatch!(self, s => s.put(key, value, lease).await)
    }

    /// Creates a key only if it is absent: `Some(revision)` when created, `None` when it existed.
    pub async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>> {
        dispatch!(self, s => s.create(key, value, lease).await)
    }

    /// Writes a key only if its mod_revision is `expected_mod_revision`: `Some(revision)` when
    /// written, `None` when the key changed or is absent (an absent key never matches).
    pub async fn cas(
        &self,
        key: &str,
        expected_mod_revision: i64,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>> {
        dispatch!(self, s => s.cas(key, expected_mod_revision, value, lease).await)
    }

    /// Writes every `puts` key and deletes every `deletes` key in one atomic step: a reader
    /// (a `get`, a `list` or a watch) sees all of the changes or none, and a failure applies
    /// none. Returns the store revision after the change (the current revision when nothing
    /// changed: an empty call, or only deletes of absent keys). No key may appear twice across
    /// both lists (etcd refuses that in one transaction; which should win is a guess).
    ///
    /// etcd commits everything as one transaction at one revision; the embedded store commits
    /// one write transaction in which each change takes its own consecutive revision (its log
    /// holds one change per revision), all becoming visible together. etcd also bounds the
    /// operations of one transaction (`--max-txn-ops`, 128 by default) and its request size;
    /// beyond that it refuses the call and nothing is written.
    pub async fn put_all(&self, puts: &[(String, Vec<u8>)], deletes: &[String]) -> Result<i64> {
        let mut seen = std::collections::HashSet::new();
        for key in puts.iter().map(|(k, _)| k).chain(deletes) {
            if !seen.insert(key.as_str()) {
                return Err(StoreError::Other(format!(
                    "key {key:?} is given twice in one atomic write"
                )));
            }
        }
        dispatch!(self, s => s.put_all(puts, deletes).await)
    }

    /// [`Store::put_all`] guarded by compares: the changes are made only if every key of
    /// `expect` still has the mod revision given (0: the key must not exist), all in the same
    /// atomic step. `Ok(None)` when some key changed since: nothing was written. The compares
    /// count apart from the changes against etcd's `--max-txn-ops`.
    pub async fn put_all_if(
        &self,
        expect: &[(String, i64)],
        puts: &[(String, Vec<u8>)],
        deletes: &[String],
    ) -> Result<Option<i64>> {
        let mut seen = std::collections::HashSet::new();
        for key in puts.iter().map(|(k, _)| k).chain(deletes) {
            if !seen.insert(key.as_str()) {
                return Err(StoreError::Other(format!(
                    "key {key:?} is given twice in one atomic write"
                )));
            }
        }
        dispatch!(self, s => s.put_all_if(expect, puts, deletes).await)
    }

    /// Deletes a key; true when it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        dispatch!(self, s => s.delete(key).await)
    }

    /// Deletes a key only if its mod_revision is `expected_mod_revision`; true when deleted.
    pub async fn cas_delete(&self, key: &str, expected_mod_revision: i64) -> Result<bool> {
        dispatch!(self, s => s.cas_delete(key, expected_mod_revision).await)
    }

    /// Grants a lease. etcd counts TTLs in whole seconds (rounded up here) and may raise a
    /// short one to its minimum (2 s with default settings).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        dispatch!(self, s => s.grant_lease(ttl).await)
    }

    /// Refreshes a lease once and returns its remaining TTL; [`StoreError::LeaseNotFound`]
    /// when it expired or was revoked.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        dispatch!(self, s => s.keep_alive(lease).await)
    }

    /// Revokes a lease, deleting its keys. Revoking a lease that is already gone is not an error.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        dispatch!(self, s => s.revoke_lease(lease).await)
    }

    /// Watches `prefix` from `from_revision` (inclusive; 0 means "changes after now").
    /// Yields batches of events in revision order, or [`WatchItem::Compacted`] when that
    /// history is gone, or [`WatchItem::Broken`] when the connection broke; after either of
    /// those the stream ends.
    pub async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        dispatch!(self, s => s.watch(prefix, from_revision).await)
    }

    /// Discards history before `revision`: a watch from an earlier revision then yields
    /// [`WatchItem::Compacted`]. Compacting to a revision already compacted is a no-op; a
    /// revision beyond the current one is an error.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        dispatch!(self, s => s.compact(revision).await)
    }

    /// Where this store lives, for messages: `etcd://127.0.0.1:2379` or `embedded:/path`.
    pub fn describe(&self) -> String {
        dispatch!(self, s => s.describe())
    }
}

/// The part of a key range that etcd calls `range_end` for a prefix: the smallest key greater
/// than every key with the prefix, or `None` when no such key exists (prefix empty or all 0xff).
pub(crate) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            parse_url("etcd://10.0.0.1:2379,etcd-b:2379").unwrap(),
            Target::Etcd(vec!["10.0.0.1:2379".into(), "etcd-b:2379".into()], false)
        );
        assert_eq!(
            parse_url("etcd://[::1]:2379").unwrap(),
            Target::Etcd(vec!["[::1]:2379".into()], false)
        );
        assert_eq!(
            parse_url("etcds://10.0.0.1:2379").unwrap(),
            Target::Etcd(vec!["10.0.0.1:2379".into()], true)
        );
        assert_eq!(
            parse_url("embedded").unwrap(),
            Target::Embedded(DEFAULT_EMBEDDED_PATH.into())
        );
        assert_eq!(
            parse_url("embedded:/tmp/x.redb").unwrap(),
            Target::Embedded("/tmp/x.redb".into())
        );
        for bad in [
            "",
            "etcd://",
            "etcd://host",
            "etcd://:2379",
            "etcd://host:0",
            "etcd://host:99999",
            "etcd://a:1,,b:2",
            "embedded:",
            "etcds://",
            "http://127.0.0.1:2379",
        ] {
            let err = parse_url(bad).unwrap_err();
            assert!(matches!(err, StoreError::BadUrl(_)), "{bad}: {err}");
            assert!(err.to_string().contains("expected etcd://"), "{err}");
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/"), Some(b"/a0".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }
}
