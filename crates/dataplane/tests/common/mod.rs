//! Test harness: private network namespaces (deleted on drop, including
//! during a panic's unwinding), commands inside them, and running Rust code
//! on a thread switched into one. Tests never touch the root namespace.

#![allow(dead_code)] // each test binary uses a different part

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;

/// True when the kernel tests can run (root: netns creation, nftables).
/// Otherwise prints the skip notice the test then returns on.
/// Kernel tests are `#[ignore = "needs root"]` (listed as ignored, with the reason, in a run
/// without root); run with `--include-ignored`, they insist on root rather than pass vacuously.
pub fn require_root() {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    assert!(root, "this test needs root (network namespaces)");
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace made by this test, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!(
            "twtest-{role}-{}-{n}-{:x}",
            std::process::id(),
            nanos & 0xffff
        );
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("run ip");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.sh("ip link set lo up");
        ns
    }

    /// Runs a command in the namespace.
    pub fn cmd(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// Runs a whitespace-separated command that must succeed; returns stdout.
    pub fn sh(&self, cmdline: &str) -> String {
        let args: Vec<&str> = cmdline.split_whitespace().collect();
        let out = self.cmd(&args);
        assert!(
            out.status.success(),
            "[{}] {cmdline}: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Does the command succeed?
    pub fn ok(&self, cmdline: &str) -> bool {
        let args: Vec<&str> = cmdline.split_whitespace().collect();
        self.cmd(&args).status.success()
    }

    /// One ping (IPv4 or IPv6), optionally from a given source, 1 s timeout.
    /// Retried a few times when `expect_ok` so a first-packet neighbour
    /// resolution hiccup does not make the test flaky.
    pub fn ping(&self, from: Option<&str>, to: &str, expect_ok: bool) -> bool {
        let mut cmd = String::from("ping -n -c 1 -W 1 ");
        if let Some(f) = from {
            cmd.push_str(&format!("-I {f} "));
        }
        cmd.push_str(to);
        let tries = if expect_ok { 5 } else { 1 };
        for _ in 0..tries {
            if self.ok(&cmd) {
                return true;
            }
        }
        false
    }

    /// Runs `f` on a thread whose network namespace is this one; netlink
    /// sockets it opens (and processes it spawns) live in this namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).expect("open netns file");
                nix::sched::setns(&fd, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// `nft -j <args>` parsed.
    pub fn nft_json(&self, args: &str) -> serde_json::Value {
        let out = self.sh(&format!("nft -j {args}"));
        serde_json::from_str(&out).expect("nft -j output is JSON")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Connects `container` to `host` with a veth pair: `host_if` on the host
/// side, `eth0` in the container.
pub fn veth(host: &Netns, host_if: &str, container: &Netns) {
    host.sh(&format!(
        "ip link add {host_if} type veth peer name eth0 netns {}",
        container.name
    ));
    container.sh("ip link set eth0 up");
    host.sh(&format!("ip link set {host_if} up"));
}

/// Median of timed runs of `f`.
pub fn median_of(n: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

/// Compares `actual` with the golden file `tests/golden/<name>`; `TWILL_BLESS=1` rewrites it.
pub fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("TWILL_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (TWILL_BLESS=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (TWILL_BLESS=1 rewrites it)",
        path.display()
    );
}
