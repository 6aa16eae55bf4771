//! The conformance suite: one set of test bodies, each run against the embedded store (in a
//! temporary file) and against a real etcd started for the test, so both implementations are
//! held to the same semantics. Backend-specific tests (etcd restarts, several processes on one
//! embedded file) follow the shared ones.
//!
//! The suite lives inside the crate rather than in `tests/` so it can pause the mirror between
//! its listing and its watch (see [`mirror::Hook`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::mirror::{self, Hook};
use crate::testing::EtcdServer;
use crate::{
    EtcdAuth, Event, KeyValue, LeaseId, MirrorEvent, Store, StoreError, WatchItem, WatchStream,
};

/// One backend under test, alive as long as the test.
enum Harness {
    Embedded(tempfile::TempDir),
    Etcd(EtcdServer),
}

impl Harness {
    fn embedded() -> Harness {
        Harness::Embedded(tempfile::tempdir().unwrap())
    }

    fn etcd() -> Harness {
        Harness::Etcd(EtcdServer::start())
    }

    /// etcd over TLS with `--client-cert-auth`, reached with the client certificate.
    fn etcd_tls() -> Harness {
        Harness::Etcd(EtcdServer::start_tls())
    }

    fn url(&self) -> String {
        match self {
            Harness::Embedded(dir) => {
                format!("embedded:{}", dir.path().join("store.redb").display())
            }
            Harness::Etcd(etcd) => etcd.url(),
        }
    }

    fn auth(&self) -> EtcdAuth {
        match self {
            Harness::Etcd(etcd) => etcd.auth(),
            Harness::Embedded(_) => EtcdAuth::default(),
        }
    }

    async fn store(&self) -> Store {
        match self {
            Harness::Etcd(etcd) => etcd.connect().await.unwrap(),
            Harness::Embedded(_) => Store::connect_or_create(&self.url()).await.unwrap(),
        }
    }
}

/// Waits for something that must come soon; a hang is a failure, not a stuck suite.
async fn soon<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(15), f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

async fn next_item(w: &mut WatchStream) -> Option<WatchItem> {
    soon("a watch item", w.recv()).await
}

/// Collects watched events until one at `until_revision` or later has arrived.
async fn events_until(w: &mut WatchStream, until_revision: i64) -> Vec<Event> {
    let mut out = Vec::new();
    while out
        .last()
        .is_none_or(|e: &Event| e.mod_revision() < until_revision)
    {
        match next_item(w).await {
            Some(WatchItem::Events { events, revision }) => {
                assert!(revision >= events.last().unwrap().mod_revision());
                out.extend(events);
            }
            other => panic!("expected events, got {other:?}"),
        }
    }
    out
}

fn keys(kvs: &[KeyValue]) -> Vec<&str> {
    kvs.iter().map(|kv| kv.key.as_str()).collect()
}

/// Polls `check` until it holds, for at most `within`.
async fn eventually(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    let h = super::Harness::embedded();
                    super::$name(&h).await;
                }
            )*
        }
        mod etcd {
            $(
                #[tokio::test]
                async fn $name() {
                    let h = super::Harness::etcd();
                    super::$name(&h).await;
                }
            )*
        }
        mod etcd_tls {
            $(
                #[tokio::test]
                async fn $name() {
                    let h = super::Harness::etcd_tls();
                    super::$name(&h).await;
                }
            )*
        }
    };
}

conformance!(
    get_put_delete_list,
    create_only_if_absent,
    compare_and_swap,
    concurrent_creates_have_one_winner,
    concurrent_allocations_get_distinct_keys,
    two_handles_on_two_threads_lose_no_update,
    lease_expiry_deletes_its_keys,
    keep_alive_extends_and_revoke_deletes,
    unknown_leases_are_not_found,
    watch_replays_from_a_revision,
    watch_from_a_compacted_revision,
    mirror_reports_state_then_changes,
    mirror_resyncs_after_compaction,
    put_all_writes_and_deletes_at_once,
    put_all_is_seen_whole_by_readers,
    put_all_refuses_a_key_twice,
    put_all_too_large_for_one_transaction_is_all_or_nothing,
    put_all_if_writes_only_when_nothing_changed,
);

async fn get_put_delete_list(h: &Harness) {
    let s = h.store().await;
    assert_eq!(s.get("/a/1").await.unwrap(), None);
    let (empty, rev0) = s.list("/a/").await.unwrap();
    assert!(empty.is_empty());
    assert!(rev0 >= 1);

    let r1 = s.put("/a/1", b"one", None).await.unwrap();
    assert!(r1 > rev0);
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!(
        kv,
        KeyValue {
            key: "/a/1".into(),
            value: b"one".to_vec(),
            create_revision: r1,
            mod_revision: r1,
            lease: None
        }
    );
    let r2 = s.put("/a/1", b"uno", None).await.unwrap();
    assert_eq!(r2, r1 + 1);
    let kv = s.get("/a/1").await.unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r2));
    assert_eq!(kv.value, b"uno");

    // Written out of order, and around the prefix: "/a" and "/ab" are not under "/a/".
    for k in ["/a/3", "/ab", "/a", "/a/2", "/b/1"] {
        s.put(k, k.as_bytes(), None).await.unwrap();
    }
    let last = s.put("/a/0", b"", None).await.unwrap();
    let (kvs, rev) = s.list("/a/").await.unwrap();
    assert_eq!(keys(&kvs), ["/a/0", "/a/1", "/a/2", "/a/3"]);
    assert_eq!(rev, last);
    assert_eq!(kvs[0].value, b"");
    let (all, _) = s.list("").await.unwrap();
    assert_eq!(all.len(), 7);

    assert!(s.delete("/a/1").await.unwrap());
    assert!(!s.delete("/a/1").await.unwrap());
    assert_eq!(s.get("/a/1").await.unwrap(), None);
    let (kvs, rev) = s.list("/a/").await.unwrap();
    assert_eq!(keys(&kvs), ["/a/0", "/a/2", "/a/3"]);
    assert_eq!(
        rev,
        last + 1,
        "a delete is one revision, a no-op delete none"
    );

    // Recreated after deletion: a new create_revision.
    let r = s.put("/a/1", b"again", None).await.unwrap();
    assert_eq!(s.get("/a/1").await.unwrap().unwrap().create_revision, r);
}

async fn put_all_writes_and_deletes_at_once(h: &Harness) {
    let s = h.store().await;
    // Nothing to do: fine, and the current revision.
    let (_, rev0) = s.list("/pa/").await.unwrap();
    assert_eq!(s.put_all(&[], &[]).await.unwrap(), rev0);

    s.put("/pa/old", b"old", None).await.unwrap();
    let r0 = s.put("/pa/keep", b"k", None).await.unwrap();
    let mut w = s.watch("/pa/", r0 + 1).await.unwrap();
    let puts = vec![
        ("/pa/a".to_string(), b"1".to_vec()),
        ("/pa/b".to_string(), b"2".to_vec()),
        ("/pa/keep".to_string(), b"k2".to_vec()),
    ];
    let deletes = vec!["/pa/old".to_string(), "/pa/absent".to_string()];
    let rev = s.put_all(&puts, &deletes).await.unwrap();
    assert!(rev > r0);
    let (kvs, listed) = s.list("/pa/").await.unwrap();
    assert_eq!(
        listed, rev,
        "the returned revision is the store's after the write"
    );
    assert_eq!(keys(&kvs), ["/pa/a", "/pa/b", "/pa/keep"]);
    let keep = kvs.iter().find(|kv| kv.key == "/pa/keep").unwrap();
    assert_eq!(
        (keep.value.as_slice(), keep.create_revision),
        (&b"k2"[..], r0)
    );
    assert!(
        kvs.iter()
            .all(|kv| kv.mod_revision <= rev && kv.mod_revision > r0)
    );

    // A watcher gets the whole change in one batch: three puts and one delete (deleting an
    // absent key is no change).
    match next_item(&mut w).await {
        Some(WatchItem::Events { events, revision }) => {
            assert_eq!(revision, rev);
            let mut got: Vec<(&str, bool)> = events
                .iter()
                .map(|e| (e.key(), matches!(e, Event::Put(_))))
                .collect();
            got.sort();
            assert_eq!(
                got,
                [
                    ("/pa/a", true),
                    ("/pa/b", true),
                    ("/pa/keep", true),
                    ("/pa/old", false)
                ]
            );
        }
        other => panic!("expected one batch of events, got {other:?}"),
    }

    // Only deletes of absent keys: no change, no new revision.
    assert_eq!(
        s.put_all(&[], &["/pa/nothing".to_string()]).await.unwrap(),
        rev
    );
}

/// A writer replaces a whole generation of keys at once while a reader lists: every listing
/// holds exactly one generation, never a mix.
async fn put_all_is_seen_whole_by_readers(h: &Harness) {
    const KEYS: usize = 20;
    const ROUNDS: usize = 15;
    let s = h.store().await;
    let writer = {
        let s = h.store().await;
        tokio::spawn(async move {
            for round in 0..ROUNDS {
                let value = format!("g{round}").into_bytes();
                let puts: Vec<(String, Vec<u8>)> = (0..KEYS)
                    .map(|i| (format!("/gen/{i:02}"), value.clone()))
                    .collect();
                s.put_all(&puts, &[]).await.unwrap();
            }
        })
    };
    let mut seen = BTreeSet::new();
    loop {
        let done = writer.is_finished();
        let (kvs, _) = s.list("/gen/").await.unwrap();
        let generations: BTreeSet<&[u8]> = kvs.iter().map(|kv| kv.value.as_slice()).collect();
        assert!(
            kvs.is_empty() || (kvs.len() == KEYS && generations.len() == 1),
            "a listing saw part of a write: {} keys of generations {generations:?}",
            kvs.len()
        );
        if let Some(g) = generations.first() {
            seen.insert(g.to_vec());
        }
        if done {
            break;
        }
    }
    writer.await.unwrap();
    assert!(seen.contains(&format!("g{}", ROUNDS - 1).into_bytes()));
}

async fn put_all_refuses_a_key_twice(h: &Harness) {
    let s = h.store().await;
    let r0 = s.put("/dup/x", b"x", None).await.unwrap();
    let twice = [
        ("/dup/a".to_string(), b"1".to_vec()),
        ("/dup/a".to_string(), b"2".to_vec()),
    ];
    let err = s.put_all(&twice, &[]).await.unwrap_err();
    assert!(err.to_string().contains("/dup/a"), "{err}");
    let put_and_delete = [("/dup/x".to_string(), b"y".to_vec())];
    let err = s
        .put_all(&put_and_delete, &["/dup/x".to_string()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("/dup/x"), "{err}");
    let (kvs, rev) = s.list("/dup/").await.unwrap();
    assert_eq!((keys(&kvs), rev), (vec!["/dup/x"], r0));
}

/// etcd refuses a transaction of more operations than it allows (128 by default); the
/// embedded store has no such limit. Either way the write is whole or absent.
async fn put_all_too_large_for_one_transaction_is_all_or_nothing(h: &Harness) {
    let s = h.store().await;
    let puts: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("/big/{i:03}"), b"v".to_vec()))
        .collect();
    let result = s.put_all(&puts, &[]).await;
    let (kvs, _) = s.list("/big/").await.unwrap();
    match (h, result) {
        (Harness::Embedded(_), Ok(_)) => assert_eq!(kvs.len(), 300),
        (Harness::Etcd(_), Err(e)) => {
            assert!(e.to_string().contains("too many operations"), "{e}");
            assert!(e.to_string().contains("300 changes"), "{e}");
            assert!(
                kvs.is_empty(),
                "a refused transaction wrote {} keys",
                kvs.len()
            );
        }
        (_, other) => panic!("unexpected result {other:?}"),
    }
}

async fn put_all_if_writes_only_when_nothing_changed(h: &Harness) {
    let s = h.store().await;
    let r1 = s.put("/pi/a", b"a1", None).await.unwrap();
    let expect = |a: i64| vec![("/pi/a".to_string(), a), ("/pi/new".to_string(), 0)];
    let puts = vec![
        ("/pi/a".to_string(), b"a2".to_vec()),
        ("/pi/new".to_string(), b"n".to_vec()),
    ];
    // A stale revision: nothing is written, not even the revision moves.
    assert_eq!(
        s.put_all_if(&expect(r1 - 1), &puts, &[]).await.unwrap(),
        None
    );
    let (kvs, rev) = s.list("/pi/").await.unwrap();
    assert_eq!(rev, r1);
    assert_eq!(keys(&kvs), ["/pi/a"]);
    // A key expected absent that exists: nothing either.
    let r2 = s.put("/pi/new", b"someone else", None).await.unwrap();
    assert_eq!(s.put_all_if(&expect(r1), &puts, &[]).await.unwrap(), None);
    assert_eq!(s.get("/pi/a").await.unwrap().unwrap().value, b"a1");
    assert!(s.delete("/pi/new").await.unwrap());
    let r3 = s.list("/pi/").await.unwrap().1;
    assert!(r3 > r2);
    // Everything as expected: all written, with the deletes, in one step.
    let rev = s
        .put_all_if(&expect(r1), &puts, &["/pi/gone".to_string()])
        .await
        .unwrap()
        .unwrap();
    let (kvs, listed) = s.list("/pi/").await.unwrap();
    assert_eq!(listed, rev);
    assert_eq!(keys(&kvs), ["/pi/a", "/pi/new"]);
    assert_eq!(kvs[0].value, b"a2");
    // Too many changes for etcd: refused whole, with the limit named.
    let many: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("/pi/big/{i:03}"), b"v".to_vec()))
        .collect();
    let expect_many: Vec<(String, i64)> = many.iter().map(|(k, _)| (k.clone(), 0)).collect();
    let result = s.put_all_if(&expect_many, &many, &[]).await;
    let (kvs, _) = s.list("/pi/big/").await.unwrap();
    match (h, result) {
        (Harness::Embedded(_), Ok(Some(_))) => assert_eq!(kvs.len(), 300),
        (Harness::Etcd(_), Err(e)) => {
            assert!(e.to_string().contains("--max-txn-ops"), "{e}");
            assert!(kvs.is_empty(), "a refused transaction wrote {}", kvs.len());
        }
        (_, other) => panic!("unexpected result {other:?}"),
    }
}

async fn create_only_if_absent(h: &Harness) {
    let s = h.store().await;
    let r = s.create("/c/k", b"first", None).await.unwrap().unwrap();
    assert_eq!(s.create("/c/k", b"second", None).await.unwrap(), None);
    let kv = s.get("/c/k").await.unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"first"[..], r));
    // A failed create changes nothing, not even the revision.
    assert_eq!(s.list("/c/").await.unwrap().1, r);
}

async fn compare_and_swap(h: &Harness) {
    let s = h.store().await;
    assert_eq!(
        s.cas("/cas/k", 0, b"x", None).await.unwrap(),
        None,
        "absent never matches"
    );
    assert_eq!(s.cas("/cas/k", 1, b"x", None).await.unwrap(), None);
    assert!(s.get("/cas/k").await.unwrap().is_none());

    let r1 = s.put("/cas/k", b"v1", None).await.unwrap();
    let r2 = s.cas("/cas/k", r1, b"v2", None).await.unwrap().unwrap();
    assert!(r2 > r1);
    assert_eq!(
        s.cas("/cas/k", r1, b"v3", None).await.unwrap(),
        None,
        "stale revision"
    );
    let kv = s.get("/cas/k").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.mod_revision, kv.create_revision),
        (&b"v2"[..], r2, r1)
    );

    assert!(!s.cas_delete("/cas/k", r1).await.unwrap());
    assert!(!s.cas_delete("/cas/absent", r2).await.unwrap());
    assert!(s.get("/cas/k").await.unwrap().is_some());
    assert!(s.cas_delete("/cas/k", r2).await.unwrap());
    assert!(s.get("/cas/k").await.unwrap().is_none());
    assert!(!s.cas_delete("/cas/k", r2).await.unwrap());
}

async fn concurrent_creates_have_one_winner(h: &Harness) {
    let s = h.store().await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                s.create("/race/k", format!("{i}").as_bytes(), None)
                    .await
                    .unwrap()
                    .map(|_| i)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for t in tasks {
        winners.extend(t.await.unwrap());
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let kv = s.get("/race/k").await.unwrap().unwrap();
    assert_eq!(kv.value, format!("{}", winners[0]).as_bytes());
}

async fn concurrent_allocations_get_distinct_keys(h: &Harness) {
    let s = h.store().await;
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                loop {
                    let (kvs, _) = s.list("/alloc/").await.unwrap();
                    let taken: BTreeSet<String> = kvs.into_iter().map(|kv| kv.key).collect();
                    let slot = (0..)
                        .map(|n| format!("/alloc/{n:02}"))
                        .find(|k| !taken.contains(k))
                        .unwrap();
                    if s.create(&slot, format!("{i}").as_bytes(), None)
                        .await
                        .unwrap()
                        .is_some()
                    {
                        return slot;
                    }
                }
            })
        })
        .collect();
    let mut got = BTreeSet::new();
    for t in tasks {
        assert!(got.insert(t.await.unwrap()));
    }
    let want: BTreeSet<String> = (0..20).map(|n| format!("/alloc/{n:02}")).collect();
    assert_eq!(got, want);
    let (kvs, _) = s.list("/alloc/").await.unwrap();
    let owners: BTreeSet<Vec<u8>> = kvs.into_iter().map(|kv| kv.value).collect();
    assert_eq!(owners.len(), 20, "every task owns exactly one key");
}

/// Adds one to a counter by compare-and-swap, retrying on conflict.
async fn increment(s: &Store, key: &str) {
    loop {
        let cur = s.get(key).await.unwrap();
        let n: u64 = cur.as_ref().map_or(0, |kv| {
            std::str::from_utf8(&kv.value).unwrap().parse().unwrap()
        });
        let next = (n + 1).to_string();
        let done = match cur {
            None => s
                .create(key, next.as_bytes(), None)
                .await
                .unwrap()
                .is_some(),
            Some(kv) => s
                .cas(key, kv.mod_revision, next.as_bytes(), None)
                .await
                .unwrap()
                .is_some(),
        };
        if done {
            return;
        }
    }
}

async fn two_handles_on_two_threads_lose_no_update(h: &Harness) {
    let (url, auth) = (h.url(), h.auth());
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let (url, auth) = (url.clone(), auth.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let s = Store::connect_or_create_with(&url, &auth).await.unwrap();
                    for i in 0..25 {
                        increment(&s, "/two/counter").await;
                        s.put(&format!("/two/{t}/{i}"), b"", None).await.unwrap();
                    }
                });
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let s = h.store().await;
    assert_eq!(s.get("/two/counter").await.unwrap().unwrap().value, b"50");
    assert_eq!(s.list("/two/").await.unwrap().0.len(), 51);
}

/// Both backends: etcd raises TTLs below its minimum (2 s by default), so tests use 2 s.
const TTL: Duration = Duration::from_secs(2);

async fn lease_expiry_deletes_its_keys(h: &Harness) {
    let s = h.store().await;
    let lease = s.grant_lease(TTL).await.unwrap();
    let r = s.put("/lease/a", b"a", Some(lease)).await.unwrap();
    s.put("/lease/b", b"b", Some(lease)).await.unwrap();
    s.put("/lease/plain", b"p", None).await.unwrap();
    // Moved off the lease: survives it.
    s.put("/lease/moved", b"m", Some(lease)).await.unwrap();
    s.put("/lease/moved", b"m", None).await.unwrap();
    assert_eq!(s.get("/lease/a").await.unwrap().unwrap().lease, Some(lease));
    let mut w = s.watch("/lease/", r + 1).await.unwrap();

    let granted = Instant::now();
    eventually(
        "the leased keys' expiry",
        Duration::from_secs(10),
        async || s.get("/lease/a").await.unwrap().is_none(),
    )
    .await;
    assert!(
        granted.elapsed() >= TTL - Duration::from_millis(300),
        "expired early"
    );
    let (kvs, _) = s.list("/lease/").await.unwrap();
    assert_eq!(keys(&kvs), ["/lease/moved", "/lease/plain"]);

    // The expiry is in the history, as Delete events.
    let mut deleted = BTreeSet::new();
    while deleted.len() < 2 {
        match next_item(&mut w).await {
            Some(WatchItem::Events { events, .. }) => {
                for e in events {
                    if let Event::Delete { key, .. } = e {
                        deleted.insert(key);
                    }
                }
            }
            other => panic!("expected events, got {other:?}"),
        }
    }
    assert_eq!(
        deleted,
        BTreeSet::from(["/lease/a".into(), "/lease/b".into()])
    );

    assert_eq!(s.keep_alive(lease).await, Err(StoreError::LeaseNotFound));
    assert_eq!(
        s.put("/lease/late", b"", Some(lease)).await,
        Err(StoreError::LeaseNotFound)
    );
    assert!(s.get("/lease/late").await.unwrap().is_none());
}

async fn keep_alive_extends_and_revoke_deletes(h: &Harness) {
    let s = h.store().await;
    let lease = s.grant_lease(TTL).await.unwrap();
    s.put("/ka/k", b"", Some(lease)).await.unwrap();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let ttl = s.keep_alive(lease).await.unwrap();
        assert!(ttl > Duration::ZERO && ttl <= TTL, "{ttl:?}");
    }
    // 3.2 s after the grant, past its TTL: alive thanks to the keep-alives.
    assert!(s.get("/ka/k").await.unwrap().is_some());

    s.revoke_lease(lease).await.unwrap();
    assert!(
        s.get("/ka/k").await.unwrap().is_none(),
        "revoke deletes at once"
    );
    assert_eq!(s.keep_alive(lease).await, Err(StoreError::LeaseNotFound));
    s.revoke_lease(lease).await.unwrap();
}

async fn unknown_leases_are_not_found(h: &Harness) {
    let s = h.store().await;
    let bogus = LeaseId(0x7123_4567_89ab);
    assert_eq!(s.keep_alive(bogus).await, Err(StoreError::LeaseNotFound));
    assert_eq!(
        s.put("/u/k", b"", Some(bogus)).await,
        Err(StoreError::LeaseNotFound)
    );
    assert_eq!(
        s.create("/u/k", b"", Some(bogus)).await,
        Err(StoreError::LeaseNotFound)
    );
    assert!(s.get("/u/k").await.unwrap().is_none());
    s.revoke_lease(bogus).await.unwrap();
    // Two grants are two leases.
    let a = s.grant_lease(TTL).await.unwrap();
    let b = s.grant_lease(TTL).await.unwrap();
    assert_ne!(a, b);
}

async fn watch_replays_from_a_revision(h: &Harness) {
    let s = h.store().await;
    s.put("/w/a", b"0", None).await.unwrap();
    let r1 = s.put("/w/b", b"1", None).await.unwrap();
    s.put("/wx", b"not under /w/", None).await.unwrap();
    let r2 = s.put("/w/a", b"2", None).await.unwrap();
    assert!(s.delete("/w/b").await.unwrap());
    let (_, r3) = s.list("/w/").await.unwrap();

    let mut w = s.watch("/w/", r1).await.unwrap();
    let events = events_until(&mut w, r3).await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(&events[0], Event::Put(kv) if kv.key == "/w/b" && kv.mod_revision == r1));
    let Event::Put(a) = &events[1] else {
        panic!("{events:?}")
    };
    assert_eq!(
        (a.key.as_str(), a.value.as_slice(), a.mod_revision),
        ("/w/a", &b"2"[..], r2)
    );
    assert_eq!(
        events[2],
        Event::Delete {
            key: "/w/b".into(),
            mod_revision: r3
        }
    );

    // Live changes follow, and revision 0 means "from now".
    let mut now = s.watch("/w/", 0).await.unwrap();
    let r4 = s.put("/w/c", b"3", None).await.unwrap();
    for w in [&mut w, &mut now] {
        let events = events_until(w, r4).await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].key(), "/w/c");
        assert_eq!(events[0].mod_revision(), r4);
    }
}

async fn watch_from_a_compacted_revision(h: &Harness) {
    let s = h.store().await;
    let r1 = s.put("/cw/a", b"1", None).await.unwrap();
    s.put("/cw/a", b"2", None).await.unwrap();
    let r3 = s.put("/cw/b", b"3", None).await.unwrap();
    s.compact(r3).await.unwrap();
    s.compact(r1).await.unwrap(); // already compacted: a no-op
    assert!(
        s.compact(r3 + 100).await.is_err(),
        "the future cannot be compacted"
    );

    let mut w = s.watch("/cw/", r1).await.unwrap();
    assert_eq!(
        next_item(&mut w).await,
        Some(WatchItem::Compacted {
            compact_revision: r3
        })
    );
    assert_eq!(next_item(&mut w).await, None, "the stream ends");

    // The compaction revision itself is still watchable.
    let mut w = s.watch("/cw/", r3).await.unwrap();
    let events = events_until(&mut w, r3).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].key(), "/cw/b");
    // Compaction keeps the current state.
    assert_eq!(s.list("/cw/").await.unwrap().0.len(), 2);
}

/// Follows a mirror's events and checks its promises: Puts carry a mod_revision the consumer
/// has not seen for that key, Deletes name a key the consumer holds, and every InSync equals
/// the state the events before it built.
#[derive(Default)]
struct MirrorCheck {
    held: BTreeMap<String, KeyValue>,
    synced: bool,
    lost: usize,
    in_syncs: usize,
    changes: usize,
}

impl MirrorCheck {
    fn apply(&mut self, ev: MirrorEvent) {
        match ev {
            MirrorEvent::InSync(all) => {
                let all: BTreeMap<String, KeyValue> =
                    all.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
                if self.synced {
                    assert_eq!(all, self.held, "InSync disagrees with the events before it");
                }
                self.held = all;
                self.synced = true;
                self.in_syncs += 1;
            }
            MirrorEvent::Put(kv) => {
                assert!(self.synced, "Put before the first InSync");
                if let Some(old) = self.held.get(&kv.key) {
                    assert_ne!(old.mod_revision, kv.mod_revision, "duplicate Put {kv:?}");
                }
                self.held.insert(kv.key.clone(), kv);
                self.changes += 1;
            }
            MirrorEvent::Delete(key) => {
                assert!(self.held.remove(&key).is_some(), "Delete of unknown {key}");
                self.changes += 1;
            }
            MirrorEvent::Lost(_) => self.lost += 1,
        }
    }

    async fn next(&mut self, rx: &mut tokio::sync::mpsc::Receiver<MirrorEvent>) -> MirrorEvent {
        let ev = soon("a mirror event", rx.recv())
            .await
            .expect("mirror ended");
        self.apply(ev.clone());
        ev
    }

    /// Reads events until the copy equals the store's listing and an InSync or change has
    /// confirmed it.
    async fn until_matches(
        &mut self,
        rx: &mut tokio::sync::mpsc::Receiver<MirrorEvent>,
        s: &Store,
        prefix: &str,
    ) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (kvs, _) = s.list(prefix).await.unwrap();
            let want: BTreeMap<String, KeyValue> =
                kvs.into_iter().map(|kv| (kv.key.clone(), kv)).collect();
            if self.synced && self.held == want {
                return;
            }
            assert!(Instant::now() < deadline, "mirror never matched the store");
            if let Ok(Some(ev)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
            {
                self.apply(ev);
            }
        }
    }
}

async fn mirror_reports_state_then_changes(h: &Harness) {
    let s = h.store().await;
    s.put("/m/a", b"a", None).await.unwrap();
    s.put("/m/b", b"b", None).await.unwrap();
    s.put("/mx", b"outside", None).await.unwrap();
    let mut rx = mirror::mirror(s.clone(), "/m/".into());
    let mut check = MirrorCheck::default();
    let MirrorEvent::InSync(all) = check.next(&mut rx).await else {
        panic!("first event is not InSync")
    };
    assert_eq!(keys(&all), ["/m/a", "/m/b"]);

    let rc = s.put("/m/c", b"c", None).await.unwrap();
    s.put("/m/a", b"a2", None).await.unwrap();
    s.delete("/m/b").await.unwrap();
    s.put("/mx", b"still outside", None).await.unwrap();
    match check.next(&mut rx).await {
        MirrorEvent::Put(kv) => assert_eq!((kv.key.as_str(), kv.mod_revision), ("/m/c", rc)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(check.next(&mut rx).await, MirrorEvent::Put(kv) if kv.value == b"a2"));
    assert_eq!(
        check.next(&mut rx).await,
        MirrorEvent::Delete("/m/b".into())
    );
    check.until_matches(&mut rx, &s, "/m/").await;
    assert_eq!(check.lost, 0);

    // Dropping the receiver ends the task; nothing to observe but that it does not panic.
    drop(rx);
    s.put("/m/d", b"d", None).await.unwrap();
}

async fn mirror_resyncs_after_compaction(h: &Harness) {
    let s = h.store().await;
    for k in ["a", "b", "c"] {
        s.put(&format!("/mc/{k}"), k.as_bytes(), None)
            .await
            .unwrap();
    }
    let (listed_tx, listed_rx) = oneshot::channel();
    let (resume_tx, resume_rx) = oneshot::channel();
    let hook = Hook {
        pause_after_first_list: Some((listed_tx, resume_rx)),
    };
    let mut rx = mirror::spawn(s.clone(), "/mc/".into(), hook);
    let mut check = MirrorCheck::default();
    assert!(matches!(check.next(&mut rx).await, MirrorEvent::InSync(all) if all.len() == 3));
    let listed = soon("the mirror's listing", listed_rx).await.unwrap();

    // While the mirror is between its listing and its watch: change, then compact past it.
    s.put("/mc/a", b"a2", None).await.unwrap();
    s.delete("/mc/b").await.unwrap();
    s.put("/mc/d", b"d", None).await.unwrap();
    let now = s.put("/other", b"x", None).await.unwrap();
    s.compact(now).await.unwrap();
    assert!(now > listed + 1);
    resume_tx.send(()).unwrap();

    assert!(matches!(check.next(&mut rx).await, MirrorEvent::Lost(why) if why.contains("compact")));
    // The difference, then the state.
    let mut diff = Vec::new();
    loop {
        match check.next(&mut rx).await {
            MirrorEvent::InSync(_) => break,
            ev => diff.push(ev),
        }
    }
    assert_eq!(diff.len(), 3, "{diff:?}");
    assert!(diff.contains(&MirrorEvent::Delete("/mc/b".into())));
    check.until_matches(&mut rx, &s, "/mc/").await;

    // Watching again.
    s.put("/mc/e", b"e", None).await.unwrap();
    check.until_matches(&mut rx, &s, "/mc/").await;
    assert_eq!((check.lost, check.in_syncs), (1, 2));
}

/// etcd only: the mirror and plain calls survive etcd going away and coming back.
mod etcd_only {
    use super::*;

    #[tokio::test]
    async fn mirror_survives_an_etcd_restart() {
        let mut etcd = EtcdServer::start();
        let s = Store::connect(&etcd.url()).await.unwrap();
        for k in ["a", "b", "c"] {
            s.put(&format!("/mr/{k}"), k.as_bytes(), None)
                .await
                .unwrap();
        }
        let mut rx = mirror::mirror(s.clone(), "/mr/".into());
        let mut check = MirrorCheck::default();
        assert!(matches!(check.next(&mut rx).await, MirrorEvent::InSync(_)));
        s.put("/mr/a", b"a2", None).await.unwrap();
        check.until_matches(&mut rx, &s, "/mr/").await;

        etcd.stop();
        assert!(matches!(check.next(&mut rx).await, MirrorEvent::Lost(_)));
        let err = s.get("/mr/a").await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("127.0.0.1:{}", etcd.client_port())),
            "{err}"
        );

        etcd.restart();
        // Changes right after the restart race the mirror's reconnection: they reach it
        // through the resync or through the new watch, never both.
        let s2 = Store::connect(&etcd.url()).await.unwrap();
        s2.put("/mr/d", b"d", None).await.unwrap();
        s2.delete("/mr/b").await.unwrap();
        s2.put("/mr/c", b"c2", None).await.unwrap();
        check.until_matches(&mut rx, &s, "/mr/").await;
        s.put("/mr/e", b"e", None).await.unwrap();
        check.until_matches(&mut rx, &s, "/mr/").await;
        assert_eq!(check.lost, 1, "Lost is reported once per outage");
        assert!(check.in_syncs >= 2);
    }

    #[tokio::test]
    async fn an_unreachable_etcd_fails_fast_and_clearly() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let started = Instant::now();
        let err = Store::connect(&format!("etcd://127.0.0.1:{port}"))
            .await
            .unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(9),
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, StoreError::Unavailable(_)), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("etcd at 127.0.0.1:{port} unreachable")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn calls_recover_after_a_restart() {
        let mut etcd = EtcdServer::start();
        let s = Store::connect(&etcd.url()).await.unwrap();
        let r = s.put("/r/k", b"1", None).await.unwrap();
        let mut w = s.watch("/r/", r + 1).await.unwrap();
        etcd.stop();
        assert!(matches!(next_item(&mut w).await, Some(WatchItem::Broken(e)) if e.is_retryable()));
        let started = Instant::now();
        assert!(s.put("/r/k", b"2", None).await.unwrap_err().is_retryable());
        assert!(s.watch("/r/", 0).await.unwrap_err().is_retryable());
        assert!(started.elapsed() < Duration::from_secs(12));
        etcd.restart();
        eventually(
            "etcd calls to work again",
            Duration::from_secs(10),
            async || s.put("/r/k", b"3", None).await.is_ok(),
        )
        .await;
        assert_eq!(s.get("/r/k").await.unwrap().unwrap().value, b"3");
        // The data survived the restart.
        assert_eq!(s.get("/r/k").await.unwrap().unwrap().create_revision, r);
    }
}

/// etcd only: TLS with client certificates, and etcd's users.
mod etcd_auth {
    use super::*;
    use crate::pki::Pki;

    /// Every way in without the right credentials fails, quickly and saying why; the right
    /// ones work.
    #[tokio::test]
    async fn tls_etcd_refuses_clients_without_a_certificate_of_its_ca() {
        let etcd = EtcdServer::start_tls();
        let url = etcd.url();
        let good = etcd.auth();
        let s = etcd.connect().await.unwrap();
        s.put("/sec/k", b"v", None).await.unwrap();
        assert!(s.describe().starts_with("etcds://"), "{}", s.describe());

        let started = Instant::now();
        // Plain HTTP to a TLS port.
        let err = Store::connect(&url).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "plain: {err}");
        assert!(err.to_string().contains("--etcd-cafile"), "plain: {err}");
        // TLS, checking etcd, without a client certificate.
        let ca_only = EtcdAuth {
            ca_file: good.ca_file.clone(),
            ..EtcdAuth::default()
        };
        let err = Store::connect_with(&url, &ca_only).await.unwrap_err();
        assert!(err.is_retryable(), "no client certificate: {err}");
        assert!(
            err.to_string().contains("--etcd-certfile"),
            "no client certificate: {err}"
        );
        let err = Store::connect_with(
            &format!("etcds://127.0.0.1:{}", etcd.client_port()),
            &ca_only,
        )
        .await
        .unwrap_err();
        assert!(
            err.is_retryable(),
            "etcds:// without a client certificate: {err}"
        );
        // A client certificate of another CA.
        let dir = tempfile::tempdir().unwrap();
        let rogue = Pki::generate(dir.path(), &["127.0.0.1".into()], &["rogue"]).unwrap();
        let other_ca = EtcdAuth {
            ca_file: good.ca_file.clone(),
            ..rogue.client_auth("rogue")
        };
        let err = Store::connect_with(&url, &other_ca).await.unwrap_err();
        assert!(err.is_retryable(), "rogue client certificate: {err}");
        assert!(
            err.to_string().contains("--etcd-certfile"),
            "rogue client certificate: {err}"
        );
        // The right client certificate, but trusting another CA: etcd is not believed.
        let wrong_ca = EtcdAuth {
            ca_file: Some(rogue.ca()),
            ..good.clone()
        };
        let err = Store::connect_with(&url, &wrong_ca).await.unwrap_err();
        assert!(
            err.to_string().contains("etcd at 127.0.0.1:"),
            "wrong CA: {err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        // Nothing of that reached the data.
        assert_eq!(s.get("/sec/k").await.unwrap().unwrap().value, b"v");
    }

    #[tokio::test]
    async fn unusable_tls_settings_are_clear_errors() {
        let etcd = EtcdServer::start_tls();
        let url = etcd.url();
        let good = etcd.auth();
        let cases = [
            (
                EtcdAuth {
                    ca_file: None,
                    ..good.clone()
                },
                "--etcd-cafile",
            ),
            (
                EtcdAuth {
                    key_file: None,
                    ..good.clone()
                },
                "--etcd-keyfile",
            ),
            (
                EtcdAuth {
                    cert_file: None,
                    ..good.clone()
                },
                "--etcd-certfile",
            ),
            (
                EtcdAuth {
                    ca_file: Some("/nonexistent/ca.pem".into()),
                    ..good.clone()
                },
                "/nonexistent/ca.pem",
            ),
            (
                EtcdAuth {
                    ca_file: good.key_file.clone(),
                    ..good.clone()
                },
                "holds no PEM certificate",
            ),
            (
                EtcdAuth {
                    password: Some("x".into()),
                    ..EtcdAuth::default()
                },
                "--etcd-username",
            ),
        ];
        for (auth, says) in cases {
            let err = Store::connect_with(&url, &auth).await.unwrap_err();
            assert!(matches!(err, StoreError::BadUrl(_)), "{auth:?}: {err}");
            assert!(err.to_string().contains(says), "{auth:?}: {err}");
        }
        let err = Store::connect_with(
            &format!("etcds://127.0.0.1:{}", etcd.client_port()),
            &EtcdAuth::default(),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("--etcd-cafile"), "{err}");
        // An embedded store takes no etcd credentials.
        let dir = tempfile::tempdir().unwrap();
        let embedded = format!("embedded:{}", dir.path().join("s.redb").display());
        let err = Store::connect_with(&embedded, &good).await.unwrap_err();
        assert!(err.to_string().contains("TWILL_ETCD_"), "{err}");
    }

    /// etcd's own users (`etcdctl auth enable` with a root user): the right password works,
    /// a wrong one or none is refused with a clear, non-retryable error that never shows it.
    #[tokio::test]
    async fn user_and_password_authentication() {
        for tls in [false, true] {
            let etcd = if tls {
                EtcdServer::start_tls()
            } else {
                EtcdServer::start()
            };
            let url = etcd.url();
            let password = "s3cret-pa55";
            {
                let mut options = etcd_client::ConnectOptions::new();
                let mut endpoint = format!("http://127.0.0.1:{}", etcd.client_port());
                if let Some(pki) = etcd.pki() {
                    endpoint = format!("https://127.0.0.1:{}", etcd.client_port());
                    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
                    options = options.with_tls(
                        etcd_client::TlsOptions::new()
                            .ca_certificate(etcd_client::Certificate::from_pem(read(pki.ca())))
                            .identity(etcd_client::Identity::from_pem(
                                read(pki.client_cert(crate::testing::CLIENT)),
                                read(pki.client_key(crate::testing::CLIENT)),
                            )),
                    );
                }
                let mut c = etcd_client::Client::connect([endpoint], Some(options))
                    .await
                    .unwrap();
                c.user_add("root", password, None).await.unwrap();
                c.user_grant_role("root", "root").await.unwrap();
                c.user_add("reader", "reader-pw", None).await.unwrap();
                c.auth_enable().await.unwrap();
            }
            let with = |user: Option<&str>, pw: Option<&str>| EtcdAuth {
                username: user.map(String::from),
                password: pw.map(String::from),
                ..etcd.auth()
            };

            let s = Store::connect_with(&url, &with(Some("root"), Some(password)))
                .await
                .unwrap();
            let r = s.put("/auth/k", b"v", None).await.unwrap();
            assert_eq!(s.get("/auth/k").await.unwrap().unwrap().mod_revision, r);
            let mut w = s.watch("/auth/", r).await.unwrap();
            assert!(matches!(
                next_item(&mut w).await,
                Some(WatchItem::Events { .. })
            ));
            let lease = s.grant_lease(Duration::from_secs(30)).await.unwrap();
            s.keep_alive(lease).await.unwrap();

            let err = Store::connect_with(&url, &with(Some("root"), Some("wrong")))
                .await
                .unwrap_err();
            assert!(matches!(err, StoreError::Denied(_)), "tls {tls}: {err}");
            assert!(!err.is_retryable());
            let text = err.to_string();
            assert!(text.contains("user \"root\""), "{text}");
            assert!(text.contains("authentication failed"), "{text}");
            assert!(
                !text.contains("wrong") && !text.contains(password),
                "{text}"
            );
            assert!(!format!("{:?}", with(Some("root"), Some(password))).contains(password));

            // Known user without permission on twill's keys.
            let reader = Store::connect_with(&url, &with(Some("reader"), Some("reader-pw"))).await;
            match reader {
                Err(e) => assert!(matches!(e, StoreError::Denied(_)), "{e}"),
                Ok(r) => {
                    let e = r.delete("/auth/k").await.unwrap_err();
                    assert!(matches!(e, StoreError::Denied(_)), "{e}");
                    assert!(e.to_string().contains("permission denied"), "{e}");
                }
            }
            // No user at all.
            if !tls {
                let err = Store::connect(&url).await.unwrap_err();
                assert!(matches!(err, StoreError::Denied(_)), "{err}");
                assert!(err.to_string().contains("--etcd-username"), "{err}");
            }
            assert_eq!(s.get("/auth/k").await.unwrap().unwrap().value, b"v");
        }
    }
}

/// Embedded only: several processes on one file.
mod embedded_only {
    use super::*;

    const CHILD_ENV: &str = "TWILL_STORE_TEST_CHILD_DB";
    const ROUNDS: usize = 30;

    async fn work(s: &Store, who: &str) {
        // Start together, so the two processes really contend.
        s.put(&format!("/ready/{who}"), b"", None).await.unwrap();
        eventually("the other process", Duration::from_secs(10), async || {
            s.list("/ready/").await.unwrap().0.len() == 2
        })
        .await;
        for i in 0..ROUNDS {
            increment(s, "/x/counter").await;
            s.create(&format!("/x/{who}/{i}"), b"", None)
                .await
                .unwrap()
                .unwrap();
        }
    }

    /// The other process of `two_processes_share_one_file`; does nothing when run normally.
    #[tokio::test]
    async fn child_process_half() {
        let Some(path) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let s = Store::connect(&format!("embedded:{}", path.to_string_lossy()))
            .await
            .unwrap();
        work(&s, "child").await;
    }

    #[tokio::test]
    async fn two_processes_share_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.redb");
        let s = Store::connect_or_create(&format!("embedded:{}", path.display()))
            .await
            .unwrap();
        let (_, start) = s.list("/x/").await.unwrap();
        let mut w = s.watch("/x/", start + 1).await.unwrap();

        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "conformance::embedded_only::child_process_half",
                "--quiet",
            ])
            .env(CHILD_ENV, &path)
            // Its test summary must not end up in this run's output.
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        work(&s, "parent").await;
        let out = soon("the child process", child.wait_with_output())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "child failed: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let total = 2 * ROUNDS;
        assert_eq!(
            s.get("/x/counter").await.unwrap().unwrap().value,
            total.to_string().as_bytes()
        );
        let (kvs, end) = s.list("/x/").await.unwrap();
        assert_eq!(kvs.len(), 1 + total);
        // This process's watch saw every change, the child's included, each once, in order.
        let events = events_until(&mut w, end).await;
        let revs: Vec<i64> = events.iter().map(Event::mod_revision).collect();
        assert!(revs.is_sorted_by(|a, b| a < b), "{revs:?}");
        assert_eq!(
            revs.len(),
            2 * total,
            "one counter change and one create per round"
        );
        assert_eq!(revs.last(), Some(&end));
        let child_keys = events
            .iter()
            .filter(|e| e.key().starts_with("/x/child/"))
            .count();
        assert_eq!(child_keys, ROUNDS);
    }

    #[tokio::test]
    async fn a_store_handle_outlives_other_handles() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("embedded:{}", dir.path().join("s.redb").display());
        let a = Store::connect_or_create(&url).await.unwrap();
        let b = Store::connect(&url).await.unwrap();
        b.put("/k", b"b", None).await.unwrap();
        drop(b);
        assert_eq!(a.get("/k").await.unwrap().unwrap().value, b"b");
        let c = Arc::new(Store::connect(&url).await.unwrap());
        a.put("/k", b"a", None).await.unwrap();
        assert_eq!(c.get("/k").await.unwrap().unwrap().value, b"a");
    }
}
