//! Detached daemons and the pids the lab records for them: starting a program so that it
//! outlives `twill lab up` (own process group, output appended to a log), reaping the ones this
//! process started, telling whether a recorded pid still runs and is still the same program,
//! stopping a set of them (SIGTERM, then SIGKILL), and the tail of a log for error messages.
//! Liveness lives here in one piece: `alive`, `runs_with_arg` and `how_it_ended` all go through
//! the one table of daemons this process started and has not reaped.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::cmdline::show;

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
    // A daemon this process started and has not reaped is judged by the command line it was
    // started with: its pid cannot be anyone else's until we reap it, and its own command
    // line reads differently while it is still being exec'ed (`ip netns exec` → twill) on a
    // loaded machine. It must still run, though: a killed multi-threaded daemon cannot be
    // reaped until its last thread is gone, while its leader is already a zombie.
    match reap_if_ours(pid) {
        Some(Some(args)) => return alive(pid) && args.iter().any(|a| a == arg),
        Some(None) => return false,
        None => {}
    }
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
    // Still an empty command line after 2 s, and not ours: nothing says it is the one.
    false
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
}
