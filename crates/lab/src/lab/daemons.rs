//! The lab's daemons: each host's agent, etcd and BIRD routers, started detached (see
//! [`process::spawn_daemon`]) so they outlive `twill lab up`, and recorded by pid in
//! `state.json`. A recorded pid is only trusted while the process still runs with the command
//! line that names its own files (`*_runs`, over [`process::runs_with_arg`]): after a crash or
//! a reboot the number may belong to a stranger, who must never be signalled.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{LOG_LINES, Lab};
use crate::plan;
use crate::process;
use crate::state::{Bird, Etcd, Host, State};
use crate::sys;

/// How long `start_etcd` waits for etcd to answer.
const ETCD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Lab {
    /// True while host `i`'s agent runs.
    pub fn agent_alive(&self, i: u32) -> bool {
        self.state
            .host(i)
            .is_some_and(|h| h.agent_pid.is_some_and(|pid| agent_runs(h, pid)))
    }

    /// Sends `signal` to host `i`'s agent; for SIGTERM, SIGINT and SIGKILL also waits (up to
    /// 5 s) until it has exited, so a test can restart it right away.
    pub fn kill_agent(&self, i: u32, signal: Signal) -> Result<()> {
        let host = self.host(i)?;
        let pid = host
            .agent_pid
            .filter(|&pid| agent_runs(host, pid))
            .with_context(|| format!("the agent of {} is not running", host.node))?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("kill {signal} the agent of {} (pid {pid})", host.node))?;
        if matches!(signal, Signal::SIGTERM | Signal::SIGINT | Signal::SIGKILL) {
            ensure!(
                process::wait_gone(pid, Duration::from_secs(5)),
                "the agent of {} (pid {pid}) still runs 5 s after {signal}",
                host.node
            );
        }
        Ok(())
    }

    /// Starts host `i`'s agent (the same command line as `up`, appending to its log) and
    /// records its pid. Does not wait for it to be ready: see [`Lab::wait_converged`].
    pub fn start_agent(&mut self, i: u32) -> Result<u32> {
        let host = self.host(i)?.clone();
        if let Some(pid) = host.agent_pid.filter(|&pid| agent_runs(&host, pid)) {
            bail!("the agent of {} already runs (pid {pid})", host.node);
        }
        let twill = self.twill()?.to_path_buf();
        let mut cmd = sys::ns_command(&host.netns);
        let store = plan::store_args(&self.state.store, self.pki_dir(), &host.node);
        cmd.arg(&twill)
            .args(plan::agent_args(&store, i, &host.data_dir, host.ip6));
        let pid =
            process::spawn_daemon(&mut cmd, &host.log, &format!("start agent {}", host.node))?;
        self.state.host_mut(i).expect("host exists").agent_pid = Some(pid);
        self.save()?;
        Ok(pid)
    }

    /// Stops etcd (SIGTERM, SIGKILL after 2 s); the agents lose their store.
    pub fn stop_etcd(&mut self) -> Result<()> {
        let etcd = self.etcd()?.clone();
        if let Some(pid) = etcd.pid.filter(|&pid| etcd_runs(&etcd, pid)) {
            process::stop_all(&[pid], STOP_GRACE);
        }
        Ok(())
    }

    /// Starts etcd again on its data directory and waits until it answers.
    pub fn start_etcd(&mut self) -> Result<()> {
        let etcd = self.etcd()?.clone();
        if let Some(pid) = etcd.pid.filter(|&pid| etcd_runs(&etcd, pid)) {
            bail!("etcd already runs (pid {pid})");
        }
        std::fs::create_dir_all(&etcd.data_dir)?;
        let mut cmd = sys::ns_command(&self.state.underlay_ns);
        cmd.arg(&etcd.bin).args(plan::etcd_args(
            etcd.ip,
            &etcd.data_dir,
            etcd.pki.as_deref(),
        ));
        let pid = process::spawn_daemon(&mut cmd, &etcd.log, "start etcd")?;
        self.state.etcd.as_mut().expect("etcd recorded").pid = Some(pid);
        self.save()?;
        self.wait_etcd(pid, ETCD_TIMEOUT)
    }

    /// True while the lab's etcd runs (false with the embedded store).
    pub fn etcd_alive(&self) -> bool {
        self.state
            .etcd
            .as_ref()
            .is_some_and(|e| e.pid.is_some_and(|pid| etcd_runs(e, pid)))
    }

    /// Waits until etcd (`pid`) is healthy; fails at once if it exits.
    fn wait_etcd(&self, pid: u32, timeout: Duration) -> Result<()> {
        let etcd = self.etcd()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, plan::ETCD_METRICS_PORT));
        let deadline = Instant::now() + timeout;
        loop {
            let last = match sys::http_get_in_netns(&self.state.underlay_ns, addr, "/health") {
                Ok(r) if r.contains(r#""health":"true""#) => return Ok(()),
                Ok(r) => r.lines().last().unwrap_or("").to_string(),
                Err(e) => format!("{e:#}"),
            };
            if !process::alive(pid) {
                bail!(
                    "etcd exited while starting\n{}",
                    process::log_tail(&etcd.log, LOG_LINES)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd did not become healthy at http://{addr} within {timeout:?} (last: {last})\n{}",
                    process::log_tail(&etcd.log, LOG_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    // ----- BIRD -----

    /// Starts BIRD 2 called `name` in namespace `ns` with router ID `ip` and `protocols`
    /// (after [`plan::bird_conf`]'s header); its config, socket and log go to the state
    /// directory, and `down` stops it. Waits until its socket answers.
    pub fn start_bird(
        &mut self,
        name: &str,
        ns: &str,
        ip: Ipv4Addr,
        protocols: &str,
    ) -> Result<()> {
        ensure!(
            !self.state.birds.iter().any(|b| b.name == name),
            "lab {} already has a BIRD called {name}",
            self.state.name
        );
        let conf = self.dir.join(format!("bird-{name}.conf"));
        let socket = self.dir.join(format!("bird-{name}.ctl"));
        let log = self.dir.join(format!("bird-{name}.log"));
        std::fs::write(&conf, plan::bird_conf(ip, protocols))
            .with_context(|| format!("write {}", conf.display()))?;
        // Parse first, so a mistake fails with BIRD's own message.
        let check = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&conf)
            .output()
            .context("BIRD 2 is needed (apt-get install bird2)")?;
        ensure!(
            check.status.success(),
            "BIRD refuses {}: {}{}",
            conf.display(),
            String::from_utf8_lossy(&check.stdout).trim(),
            String::from_utf8_lossy(&check.stderr).trim()
        );
        let mut cmd = sys::ns_command(ns);
        cmd.args(["bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(self.dir.join(format!("bird-{name}.pid")));
        let pid = process::spawn_daemon(&mut cmd, &log, &format!("start BIRD {name}"))?;
        self.state.birds.push(Bird {
            name: name.to_string(),
            netns: ns.to_string(),
            ip,
            conf,
            socket: socket.clone(),
            log: log.clone(),
            pid: Some(pid),
        });
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .birdc(name, &["show", "status"])?
            .contains("Daemon is up")
        {
            ensure!(
                process::alive(pid),
                "BIRD {name} exited while starting\n{}",
                process::log_tail(&log, LOG_LINES)
            );
            ensure!(
                Instant::now() < deadline,
                "BIRD {name} did not answer on {} within 10 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The lab's BIRD called `name`.
    pub fn bird(&self, name: &str) -> Result<&Bird> {
        self.state
            .birds
            .iter()
            .find(|b| b.name == name)
            .with_context(|| format!("lab {} has no BIRD called {name}", self.state.name))
    }

    /// `birdc -s SOCKET ARGS...` of BIRD `name`: its output, whatever its exit status
    /// ("Network not found" exits non-zero).
    pub fn birdc(&self, name: &str, args: &[&str]) -> Result<String> {
        let bird = self.bird(name)?;
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&bird.socket)
            .args(args)
            .output()
            .context("run birdc")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends `signal` to BIRD `name` (SIGSTOP to make a peer die silently, SIGCONT back).
    pub fn signal_bird(&self, name: &str, signal: Signal) -> Result<()> {
        let bird = self.bird(name)?;
        let pid = bird
            .pid
            .filter(|&pid| bird_runs(bird, pid))
            .with_context(|| format!("BIRD {name} is not running"))?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("kill {signal} BIRD {name} (pid {pid})"))
    }
}

/// Stops every daemon `state` records that still runs (agents, etcd, BIRD) together:
/// SIGTERM, SIGKILL after [`STOP_GRACE`].
pub(super) fn stop_recorded(state: &State) {
    let mut pids: Vec<u32> = state
        .hosts
        .iter()
        .filter_map(|h| h.agent_pid.filter(|&pid| agent_runs(h, pid)))
        .collect();
    if let Some(e) = &state.etcd
        && let Some(pid) = e.pid.filter(|&pid| etcd_runs(e, pid))
    {
        pids.push(pid);
    }
    for b in &state.birds {
        if let Some(pid) = b.pid.filter(|&pid| bird_runs(b, pid)) {
            // A stopped BIRD (a test's SIGSTOP) must run again to see SIGTERM.
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            pids.push(pid);
        }
    }
    process::stop_all(&pids, STOP_GRACE);
}

/// True when `pid` is host `h`'s agent (its command line names the host's data dir).
fn agent_runs(h: &Host, pid: u32) -> bool {
    process::runs_with_arg(pid, &h.data_dir.to_string_lossy())
}

fn bird_runs(b: &Bird, pid: u32) -> bool {
    process::runs_with_arg(pid, &b.conf.to_string_lossy())
}

fn etcd_runs(e: &Etcd, pid: u32) -> bool {
    process::runs_with_arg(pid, &e.data_dir.to_string_lossy())
}
