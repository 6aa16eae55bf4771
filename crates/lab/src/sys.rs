//! The lab's few kinds of contact with the system: `ip` commands, named network namespaces,
//! detached daemons (agents, etcd) that outlive the `twill lab up` process, and a TCP probe
//! from inside a namespace. Plain `ip` invocations rather than netlink: this is a test and demo
//! tool, and every step can be replayed by hand from the error message.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

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

/// The command line, for messages.
pub fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
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

/// Starts `cmd` as a daemon: its own process group (a Ctrl-C or hangup of the terminal that
/// ran `twill lab up` does not reach it), stdin from /dev/null, stdout and stderr appended to
/// `log`. Returns its pid; nobody waits for it here, since it is meant to outlive this process
/// (`alive` and `stop` reap it when it is our child).
pub fn spawn_daemon(cmd: &mut Command, log: &Path, banner: &str) -> Result<u32> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open {}", log.display()))?;
    writeln!(file, "--- twill lab: {banner}: {}", show(cmd))?;
    // The twill binary is the CNI plugin whenever this is set; a daemon must never be.
    cmd.env_remove("CNI_COMMAND")
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0);
    #[allow(clippy::zombie_processes)] // reaped by `alive`, or by init once we exit
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", show(cmd)))?;
    let args = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    DAEMONS.lock().unwrap().push((child.id(), args));
    Ok(child.id())
}

/// Daemons this process started and has not reaped. Only these are reaped by `alive`: any
/// other child (a test's own `Child` that happens to run in a lab namespace) keeps its exit
/// status for its owner.
/// Each with the command line it was started with.
static DAEMONS: std::sync::Mutex<Vec<(u32, Vec<String>)>> = std::sync::Mutex::new(Vec::new());

/// How daemons this process started and reaped ended, by pid, for error messages.
static ENDED: std::sync::Mutex<Vec<(u32, String)>> = std::sync::Mutex::new(Vec::new());

/// Reaps `pid` if it is a daemon we started that has ended. `Some(Some(args))`: ours and
/// still running (unreaped, so its pid cannot belong to anyone else), started with `args`;
/// `Some(None)`: ours and it just ended; `None`: not (or no longer) one of ours.
fn reap_if_ours(pid: u32) -> Option<Option<Vec<String>>> {
    let mut daemons = DAEMONS.lock().unwrap();
    let at = daemons.iter().position(|(p, _)| *p == pid)?;
    match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => Some(Some(daemons[at].1.clone())),
        status => {
            daemons.swap_remove(at);
            let how = match status {
                Ok(WaitStatus::Exited(_, code)) => format!("exited with code {code}"),
                Ok(WaitStatus::Signaled(_, sig, _)) => format!("was killed by {sig}"),
                other => format!("ended ({other:?})"),
            };
            let mut ended = ENDED.lock().unwrap();
            if ended.len() >= 256 {
                ended.remove(0);
            }
            ended.push((pid, how));
            Some(None)
        }
    }
}

/// How a daemon this process started ended ("exited with code 1", "was killed by SIGKILL"),
/// once it has been reaped.
pub fn how_it_ended(pid: u32) -> Option<String> {
    reap_if_ours(pid);
    let ended = ENDED.lock().unwrap();
    ended
        .iter()
        .rev()
        .find(|(p, _)| *p == pid)
        .map(|(_, how)| how.clone())
}

/// True while `pid` runs (a zombie counts as gone). Reaps it first when it is a daemon we
/// started, so a long-lived caller such as a test does not collect dead agents as zombies.
pub fn alive(pid: u32) -> bool {
    reap_if_ours(pid);
    if kill(Pid::from_raw(pid as i32), None).is_err() {
        return false;
    }
    // State is the field after the command name, which is in parentheses and may hold spaces.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// True when `pid` runs with `arg` as one of its arguments. The lab checks this before it
/// signals a recorded pid, since after a reboot or a crash the number may belong to a stranger.
pub fn runs_with_arg(pid: u32, arg: &str) -> bool {
    // A process in the middle of execve (or of its exit) shows an empty command line.
    for _ in 0..2000 {
        if !alive(pid) {
            return false;
        }
        match std::fs::read(format!("/proc/{pid}/cmdline")) {
            Ok(c) if c.is_empty() => std::thread::sleep(Duration::from_millis(1)),
            Ok(c) => return c.split(|&b| b == 0).any(|a| a == arg.as_bytes()),
            Err(_) => return false,
        }
    }
    // Still there with an empty command line after 2 s: a daemon this process started (its
    // pid cannot be anyone else's until we reap it) that a loaded machine is still exec'ing is
    // judged by the command line it was started with.
    reap_if_ours(pid)
        .flatten()
        .is_some_and(|args| args.iter().any(|a| a == arg))
}

/// Waits until `pid` is gone; false on timeout.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops all `pids` together: SIGTERM, up to `grace` for them to exit, then SIGKILL.
pub fn stop_all(pids: &[u32], grace: Duration) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    for &pid in pids {
        let left = deadline.saturating_duration_since(Instant::now());
        if !wait_gone(pid, left) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            wait_gone(pid, Duration::from_secs(2));
        }
    }
}

/// The last `lines` lines of a log, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_err()
    {
        return format!("(no log at {})", path.display());
    }
    let all: Vec<&str> = text.lines().collect();
    let tail = all[all.len().saturating_sub(lines)..].join("\n");
    format!("last lines of {}:\n{tail}", path.display())
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
    fn log_tail_takes_the_end() {
        let dir = twill_testkit::TempDir::new("lab-log");
        let log = dir.path().join("a.log");
        std::fs::write(&log, "1\n2\n3\n4\n").unwrap();
        assert!(log_tail(&log, 2).ends_with("\n3\n4"));
        assert!(log_tail(&log, 10).ends_with("\n1\n2\n3\n4"));
        assert!(log_tail(&dir.path().join("none"), 2).starts_with("(no log"));
    }

    #[test]
    fn daemons_are_detached_logged_and_reaped() {
        let dir = twill_testkit::TempDir::new("lab-daemon");
        let log = dir.path().join("d.log");
        let pid = spawn_daemon(Command::new("sleep").arg("30"), &log, "test daemon").unwrap();
        assert!(alive(pid));
        assert!(runs_with_arg(pid, "30"));
        assert!(!runs_with_arg(pid, "3"));
        // Its own process group, so terminal signals to ours miss it.
        assert_eq!(
            nix::unistd::getpgid(Some(Pid::from_raw(pid as i32))).unwrap(),
            Pid::from_raw(pid as i32)
        );
        stop_all(&[pid], Duration::from_secs(2));
        assert!(!alive(pid));
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "--- twill lab: test daemon: sleep 30\n");
    }

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

    #[test]
    fn show_quotes_nothing_but_joins() {
        let mut c = Command::new("ip");
        c.args(["-n", "x", "link"]);
        assert_eq!(show(&c), "ip -n x link");
    }
}
