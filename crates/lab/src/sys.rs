//! The lab's few kinds of contact with the system: `ip` commands, named network namespaces,
//! programs run to completion (with a timeout when they may hang), and a TCP probe from inside
//! a namespace; detached daemons are [`crate::process`]'s. Plain `ip` invocations rather than netlink: this is a test and demo
//! tool, and every step can be replayed by hand from the error message.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use crate::cmdline::show;
use crate::process::wait_gone;

/// A `PATH` for the programs the lab runs with a cleared environment (the plugin).
pub const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// True when the effective uid is 0 (read from /proc: nix's `geteuid` needs a feature the
/// workspace does not enable, and libc's is unsafe).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs a command to completion; the error carries the command line and its output.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", show(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}{}",
            show(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// `ip ARGS`, which must succeed.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// `ip netns exec NS`, to which the caller adds the program and its arguments. `ip netns exec`
/// execs the program, so the spawned pid is the program's.
pub fn ns_command(ns: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]);
    c
}

/// `ip netns exec NS sysctl -qw KEY=VALUE`.
pub fn sysctl(ns: &str, setting: &str) -> Result<()> {
    run(ns_command(ns).args(["sysctl", "-qw", setting])).map(drop)
}

/// Runs `cmd` with `input` on its stdin, killing it after `timeout`: the lab calls programs
/// still being written (agent CLI, plugin), and a hang must become an error, not a stuck `up`.
/// Unlike [`run`], a non-zero exit is not an error here; the caller reads the status.
pub fn run_with_timeout(cmd: &mut Command, input: &[u8], timeout: Duration) -> Result<Output> {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot run {}", show(cmd)))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    // A program that exits without reading its input is not an error here.
    let _ = stdin.write_all(input);
    drop(stdin);
    // Readers on threads, so a chatty program cannot block on a full pipe while we poll.
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out_pipe.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err_pipe.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} did not finish within {timeout:?}", show(cmd));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    })
}

/// Names of all named network namespaces.
pub fn netns_list() -> Result<Vec<String>> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    // Lines are "NAME" or "NAME (id: N)".
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect())
}

/// Creates a namespace with its loopback up.
pub fn netns_add(ns: &str) -> Result<()> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])
}

/// Kills every process inside the namespace, then deletes it. Processes first: a namespace
/// that still has processes lives on after `ip netns del`, with its links and routes.
pub fn netns_del(ns: &str) -> Result<()> {
    for pid in netns_pids(ns) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        let _ = wait_gone(pid, Duration::from_secs(2));
    }
    ip(&["netns", "del", ns])
}

/// Pids of the processes in a namespace.
pub fn netns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Runs `f` on a thread that has joined namespace `ns`, so the caller's own namespace is
/// untouched (network namespaces are per thread).
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = Path::new("/run/netns").join(ns);
    let file = File::open(&path).with_context(|| format!("open {}", path.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the lab namespace")?;
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in namespace {ns} panicked"))?
}

/// One HTTP/1.0 GET from inside namespace `ns`; the response (headers and body).
pub fn http_get_in_netns(ns: &str, addr: SocketAddr, path: &str) -> Result<String> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    in_netns(ns, move || {
        let timeout = Duration::from_millis(500);
        let mut s = TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.write_all(request.as_bytes())?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        Ok(response)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_input() {
        let out = run_with_timeout(
            Command::new("sh").args(["-c", "cat; echo err >&2; exit 3"]),
            b"hello",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, b"err\n");
        let start = Instant::now();
        let err = run_with_timeout(
            Command::new("sleep").arg("10"),
            b"",
            Duration::from_millis(200),
        )
        .unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
