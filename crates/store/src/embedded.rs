//! The embedded store: etcd's data model in one redb file, for a single host.
//!
//! Tables:
//! - `kv`: key → value record (the `codec` module: value, create/mod revision, lease).
//! - `log`: revision → the one change made at that revision, so a watch can replay history.
//!   Revisions before `meta.compact_revision` are gone (trimmed past [`LOG_LIMIT`] entries, or
//!   by [`EmbeddedStore::compact`]).
//! - `meta`: the global revision, the compact revision, the next lease id.
//! - `leases`: lease id → (expiry in wall-clock ms, TTL in ms); `lease_keys`: lease → its keys.
//!
//! Several processes share the file (the agent runs while the CLI reads and writes): the
//! database is opened in redb's multi-writer mode, where every process keeps it open and write
//! transactions take a byte-range lock in turn. A writer waits at most [`LOCK_WAIT`] for
//! another process's transaction before giving up with [`StoreError::Unavailable`].
//!
//! Leases expire lazily: every write transaction, and every read that sees an expired lease
//! (the watch poller reads every 50 ms), first deletes expired leases and their keys, logging
//! a Delete for each key, exactly as etcd's lessor would.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{
    Builder, ConcurrencyMode, Database, DatabaseError, MultimapTable, MultimapTableDefinition,
    ReadableDatabase, ReadableTable, Table, TableDefinition, TransactionError, WriteTransaction,
};
use tokio::sync::mpsc;

use crate::codec::{self, ValueRecord};
use crate::{Event, KeyValue, LeaseId, Result, StoreError, WatchItem, WatchStream};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Lease id → (expires at, wall-clock ms since the epoch; TTL in ms).
const LEASES: TableDefinition<i64, (i64, i64)> = TableDefinition::new("leases");
const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");

const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compact_revision";
const META_NEXT_LEASE: &str = "next_lease";

/// The revision of an empty store, as in etcd: the first change is revision 2.
const INITIAL_REVISION: i64 = 1;

/// How long an operation waits for another process that holds the file.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Log entries kept for watches; older ones are trimmed as if compacted.
pub const LOG_LIMIT: i64 = 10_000;
/// How often a watch looks for new revisions. redb has no change notification across
/// processes (another process's commit is only seen by reading), so a watch polls the global
/// revision; one read of one meta entry every 50 ms costs next to nothing and keeps the
/// latency well below what the agent cares about.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A store in a redb file. Clones share the open file.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    path: PathBuf,
    log_limit: i64,
    /// Serialises this process's writers so they queue instead of spinning on redb's
    /// cross-process lock, which only `try_begin_write` can wait on with a bound.
    writers: Mutex<()>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedStore {
    /// Opens (creating it and its parent directories if needed) the store file at `path`.
    /// Only what creates a store uses this (`twill cluster init`, tests); everything else
    /// opens an existing store with [`EmbeddedStore::open_existing`].
    pub async fn open(path: impl Into<PathBuf>) -> Result<EmbeddedStore> {
        Self::open_with_log_limit(path.into(), LOG_LIMIT).await
    }

    /// Opens the store file at `path`, which must already be a twill store: a missing file, an
    /// empty (zero-length) one or a database without the store's tables is an error
    /// ([`StoreError::Corrupt`] for the last two), never silently a new, empty store that
    /// would drop the cluster's config and leases. Creates nothing, not even directories.
    pub async fn open_existing(path: impl Into<PathBuf>) -> Result<EmbeddedStore> {
        let path = path.into();
        let inner = blocking(move || Inner::open_as(path, LOG_LIMIT, Open::Existing)).await?;
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    pub(crate) async fn open_with_log_limit(path: PathBuf, log_limit: i64) -> Result<Self> {
        let inner = blocking(move || Inner::open_as(path, log_limit, Open::OrCreate)).await?;
        Ok(EmbeddedStore {
            inner: Arc::new(inner),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn describe(&self) -> String {
        format!("embedded:{}", self.inner.path.display())
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        blocking(move || f(&inner)).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_string();
        self.run(move |db| db.read(|r| r.get(&key))).await
    }

    pub async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64)> {
        let prefix = prefix.to_string();
        self.run(move |db| db.read(|r| Ok((r.list(&prefix)?, r.revision()?))))
            .await
    }

    pub async fn put(&self, key: &str, value: &[u8], lease: Option<LeaseId>) -> Result<i64> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |db| db.write(|w| w.put(&key, value, lease)))
            .await
    }

    pub async fn create(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |db| {
            db.write(|w| match w.get(&key)? {
                Some(_) => Ok(None),
                None => w.put(&key, value, lease).map(Some),
            })
        })
        .await
    }

    pub async fn cas(
        &self,
        key: &str,
        expected_mod_revision: i64,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Option<i64>> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.run(move |db| {
            db.write(|w| match w.get(&key)? {
                Some(rec) if rec.mod_revision == expected_mod_revision => {
                    w.put(&key, value, lease).map(Some)
                }
                _ => Ok(None),
            })
        })
        .await
    }

    pub async fn delete(&self, key: &str) -> Result<bool> {
        let key = key.to_string();
        self.run(move |db| db.write(|w| Ok(w.delete(&key)?.is_some())))
            .await
    }

    pub async fn put_all(&self, puts: &[(String, Vec<u8>)], deletes: &[String]) -> Result<i64> {
        let (puts, deletes) = (puts.to_vec(), deletes.to_vec());
        // One write transaction: an error in any change returns before the commit, so the
        // transaction is dropped (aborted) and nothing is written.
        self.run(move |db| {
            db.write(|w| {
                for (key, value) in puts {
                    w.put(&key, value, None)?;
                }
                for key in &deletes {
                    w.delete(key)?;
                }
                Ok(w.revision)
            })
        })
        .await
    }

    pub async fn put_all_if(
        &self,
        expect: &[(String, i64)],
        puts: &[(String, Vec<u8>)],
        deletes: &[String],
    ) -> Result<Option<i64>> {
        let (expect, puts, deletes) = (expect.to_vec(), puts.to_vec(), deletes.to_vec());
        // One write transaction: the compares see exactly what the changes replace.
        self.run(move |db| {
            db.write(|w| {
                for (key, revision) in &expect {
                    let current = w.get(key)?.map_or(0, |rec| rec.mod_revision);
                    if current != *revision {
                        return Ok(None);
                    }
                }
                for (key, value) in puts {
                    w.put(&key, value, None)?;
                }
                for key in &deletes {
                    w.delete(key)?;
                }
                Ok(Some(w.revision))
            })
        })
        .await
    }

    pub async fn cas_delete(&self, key: &str, expected_mod_revision: i64) -> Result<bool> {
        let key = key.to_string();
        self.run(move |db| {
            db.write(|w| match w.get(&key)? {
                Some(rec) if rec.mod_revision == expected_mod_revision => {
                    Ok(w.delete(&key)?.is_some())
                }
                _ => Ok(false),
            })
        })
        .await
    }

    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self.run(move |db| db.write(|w| w.grant(ttl_ms))).await
    }

    pub async fn keep_alive(&self, lease: LeaseId) -> Result<Duration> {
        self.run(move |db| db.write(|w| w.keep_alive(lease))).await
    }

    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.run(move |db| db.write(|w| w.revoke(lease.0))).await
    }

    pub async fn compact(&self, revision: i64) -> Result<()> {
        self.run(move |db| db.write(|w| w.compact(revision))).await
    }

    pub async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream> {
        // "Now" is fixed here, not when the poller first runs, so a change made right after
        // this returns is never missed.
        let current = self.run(|db| db.read(|r| r.revision())).await?;
        let next = if from_revision <= 0 {
            current + 1
        } else {
            from_revision
        };
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(poll_watch(self.clone(), prefix.to_string(), next, tx));
        Ok(WatchStream::new(rx, task.abort_handle()))
    }
}

async fn poll_watch(
    store: EmbeddedStore,
    prefix: String,
    mut next: i64,
    tx: mpsc::Sender<WatchItem>,
) {
    loop {
        let prefix2 = prefix.clone();
        let polled = store
            .run(move |db| db.read(|r| r.changes_since(&prefix2, next)))
            .await;
        let item = match polled {
            Err(e) => Some(WatchItem::Broken(e)),
            Ok(Changes::Compacted(compact_revision)) => {
                Some(WatchItem::Compacted { compact_revision })
            }
            Ok(Changes::Events { events, revision }) => {
                next = next.max(revision + 1);
                (!events.is_empty()).then_some(WatchItem::Events { events, revision })
            }
        };
        if let Some(item) = item {
            let last = !matches!(item, WatchItem::Events { .. });
            if tx.send(item).await.is_err() || last {
                return;
            }
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
    }
}

enum Changes {
    Compacted(i64),
    Events { events: Vec<Event>, revision: i64 },
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(format!("embedded store task failed: {e}")))?
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// Whether opening a store file may create it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    OrCreate,
    Existing,
}

/// Why the file at `path` cannot be opened as an existing store, if it cannot.
fn check_existing(path: &Path) -> Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(StoreError::Missing(format!(
                "embedded store at {}: no such file; `twill cluster init --store embedded:{}`                  creates the store",
                path.display(),
                path.display()
            )));
        }
        Err(e) => {
            return Err(StoreError::Other(format!(
                "embedded store at {}: {e}",
                path.display()
            )));
        }
    };
    if !meta.is_file() {
        return Err(StoreError::Other(format!(
            "embedded store at {}: not a regular file",
            path.display()
        )));
    }
    if meta.len() == 0 {
        return Err(StoreError::Corrupt(format!(
            "embedded store at {} is empty (zero length): it holds no cluster config and no              leases, and is not re-initialised behind your back. Restore it from a backup, or              remove it and run `twill cluster init` to start a new cluster",
            path.display()
        )));
    }
    Ok(())
}

impl Inner {
    fn open_as(path: PathBuf, log_limit: i64, mode: Open) -> Result<Inner> {
        if mode == Open::Existing {
            check_existing(&path)?;
        } else if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Other(format!(
                    "embedded store at {}: cannot create directory {}: {e}",
                    path.display(),
                    dir.display()
                ))
            })?;
        }
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            let mut builder = Builder::new();
            builder
                .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                .set_cache_size(16 << 20);
            let opened = match mode {
                Open::OrCreate => builder.create(&path),
                // Never creates the file (it may have been removed since it was checked).
                Open::Existing => builder.open(&path),
            };
            match opened {
                Ok(db) => break db,
                // Another process holds the file in a mode that excludes ours (an exclusive
                // writer, or a redb of another locking generation): it may let go soon.
                Err(DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch)
                    if Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(
                    e @ (DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch),
                ) => {
                    return Err(StoreError::Unavailable(format!(
                        "embedded store at {} is locked by another process (waited {}s): {e}",
                        path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                Err(e) => return Err(db_err(&path, "opening", e)),
            }
        };
        let inner = Inner {
            db,
            path,
            log_limit,
            writers: Mutex::new(()),
        };
        match mode {
            Open::OrCreate => inner.create_tables()?,
            Open::Existing => inner.check_tables()?,
        }
        Ok(inner)
    }

    /// An existing store has its meta table (written by the commit that created the store).
    fn check_tables(&self) -> Result<()> {
        let txn = self.db.begin_read().map_err(|e| self.err("reading", e))?;
        if txn.open_table(META).is_ok() {
            return Ok(());
        }
        Err(StoreError::Corrupt(format!(
            "embedded store at {}: a database without twill's tables (was its creation              interrupted?); not re-initialised. Remove it and run `twill cluster init` to start              a new cluster",
            self.path.display()
        )))
    }

    fn create_tables(&self) -> Result<()> {
        let txn = self.db.begin_read().map_err(|e| self.err("reading", e))?;
        if txn.open_table(META).is_ok() {
            return Ok(());
        }
        drop(txn);
        self.write(|_| Ok(()))?;
        Ok(())
    }

    fn err(&self, what: &str, e: impl Into<redb::Error>) -> StoreError {
        db_err(&self.path, what, e)
    }

    fn begin_write(&self) -> Result<WriteTransaction> {
        let deadline = Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.db.try_begin_write() {
                Ok(txn) => return Ok(txn),
                Err(TransactionError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Err(TransactionError::WouldBlock) => {
                    return Err(StoreError::Unavailable(format!(
                        "embedded store at {}: another process kept it locked for {}s",
                        self.path.display(),
                        LOCK_WAIT.as_secs()
                    )));
                }
                Err(e) => return Err(self.err("starting a write", e)),
            }
        }
    }

    /// Runs `f` in one write transaction, after deleting expired leases. Commits only when
    /// something changed, so a failed compare costs no fsync.
    fn write<T>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<T>) -> Result<T> {
        let _queue = self.writers.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.begin_write()?;
        let (out, dirty) = {
            let mut w = Writer::new(&txn, self)?;
            w.sweep_expired()?;
            let out = f(&mut w)?;
            (out, w.dirty || w.tables_created)
        };
        if dirty {
            txn.commit().map_err(|e| self.err("committing", e))?;
        } else {
            txn.abort().map_err(|e| self.err("aborting", e))?;
        }
        Ok(out)
    }

    /// Runs `f` on a consistent snapshot. A snapshot holding an expired lease is not used:
    /// the expiry is carried out first, as etcd would have done already.
    fn read<T>(&self, f: impl Fn(&Reader<'_>) -> Result<T>) -> Result<T> {
        loop {
            let txn = self.db.begin_read().map_err(|e| self.err("reading", e))?;
            let r = Reader::new(&txn, self)?;
            if !r.has_expired_lease()? {
                return f(&r);
            }
            drop(r);
            drop(txn);
            self.write(|_| Ok(()))?;
        }
    }
}

fn db_err(path: &Path, what: &str, e: impl Into<redb::Error>) -> StoreError {
    match e.into() {
        redb::Error::Corrupted(msg) => StoreError::Corrupt(format!(
            "embedded store at {} is corrupted ({what}): {msg}",
            path.display()
        )),
        e => StoreError::Other(format!(
            "embedded store at {} ({what}): {e}",
            path.display()
        )),
    }
}

/// Attaches the store's path to a redb error.
trait Ctx<T> {
    fn ctx(self, inner: &Inner) -> Result<T>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for std::result::Result<T, E> {
    fn ctx(self, inner: &Inner) -> Result<T> {
        self.map_err(|e| inner.err("accessing", e))
    }
}

fn corrupt(path: &Path, what: String) -> StoreError {
    StoreError::Corrupt(format!("embedded store at {}: {what}", path.display()))
}

struct Reader<'a> {
    kv: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    log: redb::ReadOnlyTable<i64, &'static [u8]>,
    meta: redb::ReadOnlyTable<&'static str, i64>,
    leases: redb::ReadOnlyTable<i64, (i64, i64)>,
    inner: &'a Inner,
}

impl<'a> Reader<'a> {
    fn new(txn: &redb::ReadTransaction, inner: &'a Inner) -> Result<Self> {
        Ok(Reader {
            kv: txn.open_table(KV).ctx(inner)?,
            log: txn.open_table(LOG).ctx(inner)?,
            meta: txn.open_table(META).ctx(inner)?,
            leases: txn.open_table(LEASES).ctx(inner)?,
            inner,
        })
    }

    fn has_expired_lease(&self) -> Result<bool> {
        let now = now_ms();
        for entry in self.leases.iter().ctx(self.inner)? {
            let (_, v) = entry.ctx(self.inner)?;
            if v.value().0 <= now {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn meta(&self, name: &str, default: i64) -> Result<i64> {
        let v = self.meta.get(name).ctx(self.inner)?;
        Ok(v.map_or(default, |g| g.value()))
    }

    fn revision(&self) -> Result<i64> {
        self.meta(META_REVISION, INITIAL_REVISION)
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let Some(bytes) = self.kv.get(key).ctx(self.inner)? else {
            return Ok(None);
        };
        let rec = decode_value(self.inner, key, bytes.value())?;
        Ok(Some(rec.into_kv(key.to_string())))
    }

    fn list(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        let mut out = Vec::new();
        for entry in self.kv.range(prefix..).ctx(self.inner)? {
            let (k, v) = entry.ctx(self.inner)?;
            let key = k.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push(decode_value(self.inner, key, v.value())?.into_kv(key.to_string()));
        }
        Ok(out)
    }

    fn changes_since(&self, prefix: &str, next: i64) -> Result<Changes> {
        let compacted = self.meta(META_COMPACTED, 0)?;
        if next < compacted {
            return Ok(Changes::Compacted(compacted));
        }
        let revision = self.revision()?;
        let mut events = Vec::new();
        if next <= revision {
            for entry in self.log.range(next..=revision).ctx(self.inner)? {
                let (rev, bytes) = entry.ctx(self.inner)?;
                let ev = codec::decode_event(bytes.value()).map_err(|e| {
                    corrupt(&self.inner.path, format!("log entry {}: {e}", rev.value()))
                })?;
                if ev.key().starts_with(prefix) {
                    events.push(ev);
                }
            }
        }
        Ok(Changes::Events { events, revision })
    }
}

fn decode_value(inner: &Inner, key: &str, bytes: &[u8]) -> Result<ValueRecord> {
    codec::decode_value(bytes).map_err(|e| corrupt(&inner.path, format!("key {key:?}: {e}")))
}

struct Writer<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    log: Table<'t, i64, &'static [u8]>,
    meta: Table<'t, &'static str, i64>,
    leases: Table<'t, i64, (i64, i64)>,
    lease_keys: MultimapTable<'t, i64, &'static str>,
    inner: &'t Inner,
    revision: i64,
    now: i64,
    dirty: bool,
    tables_created: bool,
}

impl<'t> Writer<'t> {
    fn new(txn: &'t WriteTransaction, inner: &'t Inner) -> Result<Self> {
        // Opening a missing table in a write transaction creates it; that must be committed.
        let tables_created = txn.list_tables().ctx(inner)?.count() < 4;
        let meta = txn.open_table(META).ctx(inner)?;
        let revision = meta
            .get(META_REVISION)
            .ctx(inner)?
            .map_or(INITIAL_REVISION, |g| g.value());
        Ok(Writer {
            kv: txn.open_table(KV).ctx(inner)?,
            log: txn.open_table(LOG).ctx(inner)?,
            leases: txn.open_table(LEASES).ctx(inner)?,
            lease_keys: txn.open_multimap_table(LEASE_KEYS).ctx(inner)?,
            meta,
            inner,
            revision,
            now: now_ms(),
            dirty: false,
            tables_created,
        })
    }

    fn meta(&self, name: &str, default: i64) -> Result<i64> {
        let v = self.meta.get(name).ctx(self.inner)?;
        Ok(v.map_or(default, |g| g.value()))
    }

    fn set_meta(&mut self, name: &str, value: i64) -> Result<()> {
        self.meta.insert(name, value).ctx(self.inner)?;
        self.dirty = true;
        Ok(())
    }

    fn get(&self, key: &str) -> Result<Option<ValueRecord>> {
        let Some(bytes) = self.kv.get(key).ctx(self.inner)? else {
            return Ok(None);
        };
        decode_value(self.inner, key, bytes.value()).map(Some)
    }

    /// Bumps the global revision and logs `event` at it.
    fn log(&mut self, event: impl FnOnce(i64) -> Event) -> Result<i64> {
        self.revision += 1;
        let rev = self.revision;
        self.set_meta(META_REVISION, rev)?;
        let bytes = codec::encode_event(&event(rev));
        self.log.insert(rev, bytes.as_slice()).ctx(self.inner)?;
        // Every revision after the first holds exactly one entry, so the log's length is known
        // without counting it.
        let keep_from = rev - self.inner.log_limit + 1;
        if keep_from > self.meta(META_COMPACTED, 0)? {
            self.compact_to(keep_from)?;
        }
        Ok(rev)
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<i64> {
        if let Some(l) = lease
            && self.leases.get(l.0).ctx(self.inner)?.is_none()
        {
            return Err(StoreError::LeaseNotFound);
        }
        let old = self.get(key)?;
        let old_lease = old.as_ref().and_then(|o| o.lease);
        if old_lease != lease {
            if let Some(o) = old_lease {
                self.lease_keys.remove(o.0, key).ctx(self.inner)?;
            }
            if let Some(n) = lease {
                self.lease_keys.insert(n.0, key).ctx(self.inner)?;
            }
        }
        let rec = ValueRecord {
            value,
            create_revision: old.map_or(self.revision + 1, |o| o.create_revision),
            mod_revision: self.revision + 1,
            lease,
        };
        let encoded = codec::encode_value(&rec);
        self.kv.insert(key, encoded.as_slice()).ctx(self.inner)?;
        let kv = rec.into_kv(key.to_string());
        self.log(|_| Event::Put(kv))
    }

    /// Deletes a key; the revision of the deletion, or None when it did not exist.
    fn delete(&mut self, key: &str) -> Result<Option<i64>> {
        let Some(old) = self.get(key)? else {
            return Ok(None);
        };
        self.kv.remove(key).ctx(self.inner)?;
        if let Some(l) = old.lease {
            self.lease_keys.remove(l.0, key).ctx(self.inner)?;
        }
        let key = key.to_string();
        self.log(|mod_revision| Event::Delete { key, mod_revision })
            .map(Some)
    }

    fn sweep_expired(&mut self) -> Result<()> {
        let mut expired = Vec::new();
        for entry in self.leases.iter().ctx(self.inner)? {
            let (id, v) = entry.ctx(self.inner)?;
            if v.value().0 <= self.now {
                expired.push(id.value());
            }
        }
        for id in expired {
            self.revoke(id)?;
        }
        Ok(())
    }

    fn revoke(&mut self, id: i64) -> Result<()> {
        if self.leases.remove(id).ctx(self.inner)?.is_none() {
            return Ok(());
        }
        self.dirty = true;
        let mut keys = Vec::new();
        for k in self.lease_keys.remove_all(id).ctx(self.inner)? {
            keys.push(k.ctx(self.inner)?.value().to_string());
        }
        for key in keys {
            self.delete(&key)?;
        }
        Ok(())
    }

    fn grant(&mut self, ttl_ms: i64) -> Result<LeaseId> {
        // Seeded by the clock so that a lease id from a store file that was since deleted and
        // recreated cannot name a new lease.
        let id = self.meta(META_NEXT_LEASE, 1)?.max(self.now);
        self.set_meta(META_NEXT_LEASE, id + 1)?;
        self.leases
            .insert(id, (self.now.saturating_add(ttl_ms), ttl_ms))
            .ctx(self.inner)?;
        Ok(LeaseId(id))
    }

    fn keep_alive(&mut self, lease: LeaseId) -> Result<Duration> {
        let Some((_, ttl_ms)) = self.leases.get(lease.0).ctx(self.inner)?.map(|g| g.value()) else {
            return Err(StoreError::LeaseNotFound);
        };
        self.leases
            .insert(lease.0, (self.now.saturating_add(ttl_ms), ttl_ms))
            .ctx(self.inner)?;
        self.dirty = true;
        Ok(Duration::from_millis(ttl_ms.unsigned_abs()))
    }

    fn compact(&mut self, revision: i64) -> Result<()> {
        if revision > self.revision {
            return Err(StoreError::Other(format!(
                "embedded store at {}: cannot compact to revision {revision}, beyond the current \
                 revision {}",
                self.inner.path.display(),
                self.revision
            )));
        }
        if revision > self.meta(META_COMPACTED, 0)? {
            self.compact_to(revision)?;
        }
        Ok(())
    }

    /// Drops log entries before `revision`.
    fn compact_to(&mut self, revision: i64) -> Result<()> {
        loop {
            let first = self.log.first().ctx(self.inner)?.map(|(k, _)| k.value());
            match first {
                Some(rev) if rev < revision => {
                    self.log.remove(rev).ctx(self.inner)?;
                }
                _ => break,
            }
        }
        self.set_meta(META_COMPACTED, revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn log_is_trimmed_past_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open_with_log_limit(dir.path().join("s.redb"), 5)
            .await
            .unwrap();
        let first = store.put("/k/0", b"0", None).await.unwrap();
        for i in 1..10 {
            store.put(&format!("/k/{i}"), b"v", None).await.unwrap();
        }
        let (kvs, rev) = store.list("/k/").await.unwrap();
        assert_eq!(kvs.len(), 10);
        assert_eq!(rev, first + 9);

        let mut w = store.watch("/k/", first).await.unwrap();
        assert_eq!(
            w.recv().await,
            Some(WatchItem::Compacted {
                compact_revision: rev - 4
            })
        );
        assert_eq!(w.recv().await, None);

        // The last five revisions are still there.
        let mut w = store.watch("/k/", rev - 4).await.unwrap();
        let Some(WatchItem::Events { events, revision }) = w.recv().await else {
            panic!("expected events")
        };
        assert_eq!(revision, rev);
        let revs: Vec<i64> = events.iter().map(Event::mod_revision).collect();
        assert_eq!(revs, (rev - 4..=rev).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn parent_directories_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/store.redb");
        let store = EmbeddedStore::open(&path).await.unwrap();
        assert!(path.exists());
        assert_eq!(store.describe(), format!("embedded:{}", path.display()));
    }

    #[tokio::test]
    async fn an_existing_store_must_exist_and_is_never_created() {
        let dir = tempfile::tempdir().unwrap();
        // Missing: an error naming the path, and nothing created (not even directories).
        let path = dir.path().join("a/b/store.redb");
        let err = EmbeddedStore::open_existing(&path).await.unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
        assert!(err.to_string().contains("cluster init"), "{err}");
        assert!(matches!(err, StoreError::Missing(_)), "{err:?}");
        assert!(!dir.path().join("a").exists());
        // Zero length: an error, and the file stays empty.
        let empty = dir.path().join("empty.redb");
        std::fs::write(&empty, b"").unwrap();
        let err = EmbeddedStore::open_existing(&empty).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        assert!(err.to_string().contains("empty"), "{err}");
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
        // A redb database without the store's tables is not a store either.
        let bare = dir.path().join("bare.redb");
        drop(redb::Database::create(&bare).unwrap());
        let err = EmbeddedStore::open_existing(&bare).await.unwrap_err();
        assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
        // A store that exists opens, with its data.
        let real = dir.path().join("real.redb");
        let store = EmbeddedStore::open(&real).await.unwrap();
        store.put("/k", b"v", None).await.unwrap();
        drop(store);
        let store = EmbeddedStore::open_existing(&real).await.unwrap();
        assert_eq!(store.get("/k").await.unwrap().unwrap().value, b"v");
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_store_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.redb");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let err = EmbeddedStore::open(&path).await.unwrap_err();
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }
}
