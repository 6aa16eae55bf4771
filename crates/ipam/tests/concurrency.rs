//! Many allocators on one store directory at once: threads that each open
//! the store themselves (separate open file descriptions, so the flock
//! really arbitrates between them) and separate OS processes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;

use twill_ipam::{Error, Range, Store};

fn range(s: &str) -> Range {
    Range::new(s.parse().unwrap()).unwrap()
}

/// Reads the state file with a fresh store and checks it against itself:
/// every allocation appears once and lies in an assignable address.
fn check_file(dir: &Path, ranges: &[Range]) -> Vec<(String, String, Vec<IpAddr>)> {
    let store = Store::open(dir).unwrap();
    let text = std::fs::read_to_string(store.state_path()).unwrap();
    let attachments = store.lock().unwrap().attachments();
    let addrs: Vec<IpAddr> = attachments.iter().flat_map(|a| a.2.clone()).collect();
    let distinct: HashSet<IpAddr> = addrs.iter().copied().collect();
    assert_eq!(distinct.len(), addrs.len(), "an address is held twice");
    // The JSON object would silently merge duplicate keys on parse, so also
    // count the records in the raw text.
    assert_eq!(text.matches("\"container_id\"").count(), addrs.len());
    for a in &addrs {
        assert!(
            ranges.iter().any(|r| r.is_assignable(*a)),
            "{a} not assignable"
        );
    }
    attachments
}

#[test]
fn threads_with_separate_opens_get_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let ranges = [range("10.99.0.0/24"), range("fd99::/64")];
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let dir = dir.path().to_path_buf();
            let ranges = ranges.clone();
            thread::spawn(move || {
                let mut got = Vec::new();
                for i in 0..25 {
                    // A fresh open per allocation, as separate CNI
                    // invocations would do.
                    let store = Store::open(&dir).unwrap();
                    let mut locked = store.lock().unwrap();
                    got.extend(
                        locked
                            .allocate(&ranges, &format!("t{t}-c{i}"), "eth0")
                            .unwrap(),
                    );
                }
                got
            })
        })
        .collect();
    let all: Vec<IpAddr> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    assert_eq!(all.len(), 400);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), 400);

    let attachments = check_file(dir.path(), &ranges);
    assert_eq!(attachments.len(), 200);
    assert!(
        attachments
            .iter()
            .all(|(_, _, a)| a.len() == 2 && a[0].is_ipv4() && a[1].is_ipv6())
    );
}

#[test]
fn racing_for_the_last_addresses_never_oversubscribes() {
    let dir = tempfile::tempdir().unwrap();
    let ranges = [range("10.98.0.0/27")]; // 29 usable
    let handles: Vec<_> = (0..8)
        .map(|t| {
            let dir = dir.path().to_path_buf();
            let ranges = ranges.clone();
            thread::spawn(move || {
                let store = Store::open(&dir).unwrap();
                let (mut ok, mut full) = (0, 0);
                for i in 0..5 {
                    match store
                        .lock()
                        .unwrap()
                        .allocate(&ranges, &format!("t{t}-{i}"), "eth0")
                    {
                        Ok(_) => ok += 1,
                        Err(Error::RangeFull { usable: 29, .. }) => full += 1,
                        Err(e) => panic!("unexpected error: {e}"),
                    }
                }
                (ok, full)
            })
        })
        .collect();
    let (ok, full) = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |acc, x| (acc.0 + x.0, acc.1 + x.1));
    assert_eq!((ok, full), (29, 11));
    assert_eq!(check_file(dir.path(), &ranges).len(), 29);
}

const WORKER_ENV: &str = "TWILL_IPAM_TEST_ALLOC_WORKER";

/// Not a test on its own: `processes_get_distinct_addresses` re-runs this
/// test binary with only this test selected and `WORKER_ENV` set.
#[test]
fn alloc_worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let (dir, tag) = spec.split_once('|').unwrap();
    let ranges = [range("10.97.0.0/24")];
    let store = Store::open(Path::new(dir)).unwrap();
    for i in 0..50 {
        store
            .lock()
            .unwrap()
            .allocate(&ranges, &format!("{tag}-{i}"), "eth0")
            .unwrap();
    }
}

#[test]
fn processes_get_distinct_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|p| {
            Command::new(&exe)
                .args(["--exact", "alloc_worker", "--test-threads=1"])
                .env(WORKER_ENV, format!("{}|p{p}", dir.path().display()))
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "worker failed:\n{stdout}");
        // Guard against the filter silently matching nothing.
        assert!(stdout.contains("1 passed"), "{stdout}");
    }
    let attachments = check_file(dir.path(), &[range("10.97.0.0/24")]);
    assert_eq!(attachments.len(), 200);
}
