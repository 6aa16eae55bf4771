//! Crash safety: worker processes allocate and release in a loop and are
//! SIGKILLed at random instants. Afterwards the state must parse, hold no
//! address twice, contain every operation a worker had seen complete, and
//! still accept new allocations (a killed lock holder must not wedge it).
//!
//! `fork` would need unsafe code, so workers are this test binary re-run
//! with only `crash_worker` selected and an environment variable set.

use std::collections::{BTreeMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use twill_ipam::{Range, Store};

const WORKER_ENV: &str = "TWILL_IPAM_TEST_CRASH_WORKER";
/// Live allocations each worker keeps before it starts releasing.
const LIVE: usize = 10;
/// Allocations of long-gone containers present in the state, so that each
/// write takes a while and kills regularly land in the middle of one.
const FILLERS: u32 = 1500;

fn ranges() -> [Range; 1] {
    [Range::new("10.66.0.0/16".parse().unwrap()).unwrap()]
}

/// Not a test on its own: see the module comment.
#[test]
fn crash_worker() {
    let Ok(spec) = std::env::var(WORKER_ENV) else {
        return;
    };
    let (dir, tag) = spec.split_once('|').unwrap();
    let store = Store::open(Path::new(dir)).unwrap();
    // Unbuffered appends: a line is in the page cache, hence survives the
    // SIGKILL, as soon as write_all returns, and it is written only after
    // the operation it reports has completed.
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(Path::new(dir).join(format!("{tag}.log")))
        .unwrap();
    for i in 0usize.. {
        let id = format!("{tag}-{i}");
        let got = store
            .lock()
            .unwrap()
            .allocate(&ranges(), &id, "eth0")
            .unwrap();
        log.write_all(format!("ok {id} {}\n", got[0]).as_bytes())
            .unwrap();
        if i >= LIVE {
            let old = format!("{tag}-{}", i - LIVE);
            store.lock().unwrap().release(&old, "eth0").unwrap();
            log.write_all(format!("rel {old}\n").as_bytes()).unwrap();
        }
    }
}

/// xorshift64*: no rand dependency needed for jitter.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn sigkilled_writers_never_corrupt_the_state() {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("crash test seed {seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let exe = std::env::current_exe().unwrap();
    // Written by hand (it is the documented format) because 1500 separate
    // allocations would eat the time budget.
    let fillers: Vec<String> = (0..FILLERS)
        .map(|i| {
            let a =
                std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 66, 128, 0)) + i);
            format!(r#""{a}":{{"container_id":"filler-{i:058}","ifname":"eth0"}}"#)
        })
        .collect();
    let seeded = format!(
        "{{\"version\":1,\"allocations\":{{\n{}\n}},\"last_reserved\":{{}}}}\n",
        fillers.join(",\n")
    );
    std::fs::write(store.state_path(), seeded).unwrap();
    let is_filler = |c: &str| c.starts_with("filler-");
    let started = Instant::now();
    let mut rounds = 0;
    let mut kills_mid_write = 0;
    let mut torn_tmp_files = 0;

    while rounds < 8 || (started.elapsed() < Duration::from_secs(3) && rounds < 40) {
        // Even rounds: two workers killed at a random instant. Odd rounds:
        // one worker, killed the moment its next state.json.tmp appears,
        // i.e. in the middle of a write, the instant that matters most.
        let targeted = rounds % 2 == 1;
        let tags: Vec<String> = (0..if targeted { 1 } else { 2 })
            .map(|w| format!("r{rounds}w{w}"))
            .collect();
        let tmp = dir.path().join("state.json.tmp");
        let _ = std::fs::remove_file(&tmp);
        let mut children: Vec<_> = tags
            .iter()
            .map(|tag| {
                Command::new(&exe)
                    .args(["--exact", "crash_worker", "--nocapture", "--test-threads=1"])
                    .env(WORKER_ENV, format!("{}|{tag}", dir.path().display()))
                    .stdout(Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 + rng.below(100)));
        if targeted {
            let deadline = Instant::now() + Duration::from_millis(300);
            while !tmp.exists() && Instant::now() < deadline {}
        }
        for c in &mut children {
            c.kill().unwrap(); // SIGKILL
            // The worker never exits on its own, so it must have been killed.
            assert!(!c.wait().unwrap().success());
        }
        if let Ok(left) = std::fs::read(&tmp) {
            kills_mid_write += 1;
            if serde_json::from_slice::<serde_json::Value>(&left).is_err() {
                torn_tmp_files += 1;
            }
        }

        // Taking the lock proves the dead holders released it; loading
        // proves the file is whole.
        let mut locked = store.lock().expect("state unreadable after SIGKILL");
        let attachments = locked.attachments();
        let addrs: Vec<IpAddr> = attachments.iter().flat_map(|a| a.2.clone()).collect();
        assert_eq!(addrs.iter().collect::<HashSet<_>>().len(), addrs.len());
        let text = std::fs::read_to_string(store.state_path()).unwrap();
        assert_eq!(text.matches("\"container_id\"").count(), addrs.len());
        assert_eq!(
            attachments.iter().filter(|a| is_filler(&a.0)).count(),
            FILLERS as usize
        );
        let in_state: BTreeMap<&str, IpAddr> = attachments
            .iter()
            .map(|(c, _, a)| {
                assert_eq!(a.len(), 1, "{c} holds {a:?}");
                (c.as_str(), a[0])
            })
            .collect();

        for tag in &tags {
            // What the worker saw complete: nothing acknowledged may be lost
            // and nothing released may linger, except for the one operation
            // in flight when it was killed.
            let log =
                std::fs::read_to_string(dir.path().join(format!("{tag}.log"))).unwrap_or_default();
            let mut acked: BTreeMap<String, Option<IpAddr>> = BTreeMap::new();
            for line in log.lines() {
                let mut f = line.split(' ');
                match (f.next(), f.next(), f.next()) {
                    (Some("ok"), Some(id), Some(a)) => {
                        acked.insert(id.into(), Some(a.parse().unwrap()));
                    }
                    (Some("rel"), Some(id), None) => {
                        acked.insert(id.into(), None);
                    }
                    _ => panic!("bad log line {line:?}"),
                }
            }
            let mut disagreements = 0;
            for (id, want) in &acked {
                match (want, in_state.get(id.as_str())) {
                    (Some(a), Some(b)) => assert_eq!(a, b, "{id} moved"),
                    (None, None) => {}
                    _ => disagreements += 1, // release in flight
                }
            }
            let prefix = format!("{tag}-");
            disagreements += in_state
                .keys()
                .filter(|id| id.starts_with(&prefix) && !acked.contains_key(**id))
                .count(); // allocation in flight
            assert!(
                disagreements <= 1,
                "{tag}: {disagreements} lost/ghost operations"
            );
        }

        // Still usable after the crash, and GC reclaims the dead workers'
        // addresses (as CNI GC would for containers that no longer exist).
        let fresh = locked.allocate(&ranges(), "after-crash", "eth0").unwrap();
        assert!(!addrs.contains(&fresh[0]));
        let released = locked.retain(|c, _| is_filler(c)).unwrap();
        assert_eq!(released.len(), attachments.len() + 1 - FILLERS as usize);
        assert!(released.iter().all(|a| !is_filler(&a.0)));
        assert_eq!(locked.attachments().len(), FILLERS as usize);
        drop(locked);
        rounds += 1;
    }
    eprintln!(
        "crash test: {rounds} rounds in {:?}; {kills_mid_write} kills hit a write, \
         {torn_tmp_files} of them left a torn tmp file",
        started.elapsed()
    );
    // The counts are timing dependent, hence only reported: a kill can land
    // just after the rename even in targeted rounds.
}
