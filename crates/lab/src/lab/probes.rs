//! What the lab asks of a running cluster: each agent's `twill status`, the waits of `up`
//! (every agent holds its lease; every agent has programmed its peers), and the pod-to-pod
//! ping matrices (`ping`, and `ping -6` in a dual-stack lab).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{CALL_TIMEOUT, LOG_LINES, Lab};
use crate::matrix::{ATTEMPTS, Family, MAX_PARALLEL, Matrix};
use crate::plan;
use crate::process;
use crate::status::AgentStatus;
use crate::sys;

impl Lab {
    /// `twill status --data-dir D --json` of host `i`, as printed.
    pub fn host_status_json(&self, i: u32) -> Result<Value> {
        let host = self.host(i)?;
        let mut cmd = sys::ns_command(&host.netns);
        cmd.arg(self.twill()?)
            .args(["status", "--data-dir"])
            .arg(&host.data_dir)
            .arg("--json")
            .env_remove("CNI_COMMAND");
        let out = sys::run_with_timeout(&mut cmd, b"", CALL_TIMEOUT)?;
        ensure!(
            out.status.success(),
            "`twill status` on {} failed ({}): {}{}",
            host.node,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`twill status --json` on {} printed no JSON: {}",
                host.node,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Host `i`'s agent status, parsed.
    pub fn host_status(&self, i: u32) -> Result<AgentStatus> {
        let v = self.host_status_json(i)?;
        serde_json::from_value(v)
            .with_context(|| format!("`twill status --json` on h{i} is not in the agent's format"))
    }

    /// Waits until every agent runs, is in sync and has programmed (or knowingly skipped)
    /// every other host (in a dual-stack lab: and knows its own and every routed peer's IPv6
    /// subnet); returns their statuses, in host order.
    pub fn wait_converged(&self, timeout: Duration) -> Result<Vec<AgentStatus>> {
        let deadline = Instant::now() + timeout;
        let nodes = self.state.hosts.len() as u32;
        let dual = self.state.ip_family.has_ipv6();
        loop {
            let mut ready = Vec::new();
            let mut waiting = Vec::new();
            for h in &self.state.hosts {
                if !self.agent_alive(h.index) {
                    waiting.push((h, "agent not running".to_string()));
                    continue;
                }
                match self.host_status(h.index) {
                    Ok(s) => match if dual {
                        s.converged_dual(h.index, nodes)
                    } else {
                        s.converged(h.index, nodes)
                    }
                    .and_then(|()| self.no_encrypted_peer_skipped(h.index, &s))
                    {
                        Ok(()) => ready.push(s),
                        Err(why) => waiting.push((h, why)),
                    },
                    Err(e) => waiting.push((h, format!("{e:#}"))),
                }
            }
            if waiting.is_empty() {
                return Ok(ready);
            }
            if Instant::now() >= deadline {
                let mut msg = format!("the agents did not converge within {timeout:?}:");
                for (h, why) in &waiting {
                    msg += &format!("\n  {}: {why}", h.node);
                }
                // One log is usually enough to see why; all of them would bury it.
                msg += &format!("\n{}", process::log_tail(&waiting[0].0.log, LOG_LINES));
                bail!(msg);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// With WireGuard a peer is skipped until it publishes its key (never carried in clear
    /// meanwhile): in an encrypted lab, a skipped peer that should be reachable is one the
    /// agent has yet to program, not one it leaves out for good.
    fn no_encrypted_peer_skipped(&self, i: u32, s: &AgentStatus) -> Result<(), String> {
        let st = &self.state;
        if st.backend != plan::Backend::Wireguard && st.encrypt.is_none() {
            return Ok(());
        }
        let early: Vec<String> = s
            .skipped()
            .filter(|p| {
                let k = p.node.strip_prefix('h').and_then(|k| k.parse().ok());
                k.is_some_and(|k| {
                    plan::expected_reachable(st.backend, st.underlay, st.encrypt, i, k)
                })
            })
            .map(|p| format!("{} {}", p.node, p.path))
            .collect();
        if early.is_empty() {
            Ok(())
        } else {
            Err(early.join(", "))
        }
    }

    /// Pings from every pod to every other pod (see [`Matrix`]); pairs that are not expected
    /// to be reachable (host-gw across the routed underlay's subnets) are not probed.
    pub fn ping_matrix(&self) -> Matrix {
        self.matrix(Family::Ipv4)
    }

    /// `ping -6` from every pod to every other pod's IPv6 address, in a dual-stack lab (None
    /// in an IPv4 lab); the same pairs are expected to be reachable as with IPv4.
    pub fn ping6_matrix(&self) -> Option<Matrix> {
        self.state
            .ip_family
            .has_ipv6()
            .then(|| self.matrix(Family::Ipv6))
    }

    fn matrix(&self, family: Family) -> Matrix {
        let (backend, underlay, encrypt) =
            (self.state.backend, self.state.underlay, self.state.encrypt);
        Matrix::run(
            &self.state.pods,
            family,
            |a, b| plan::expected_reachable(backend, underlay, encrypt, a.host, b.host),
            |a, to| ping(&a.netns, to),
            MAX_PARALLEL,
            ATTEMPTS,
        )
    }

    /// Waits for every agent's node.json: it is written once the agent holds its lease, and
    /// the plugin needs it to ADD pods. In a dual-stack lab it must name the node's IPv6
    /// subnet too, or the plugin would give pods IPv4 only.
    pub(super) fn wait_leases(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let dual = self.state.ip_family.has_ipv6();
        loop {
            let mut waiting = Vec::new();
            for h in &self.state.hosts {
                let node_file = h.data_dir.join("node.json");
                if node_file.exists() && (!dual || has_subnet6(&node_file)) {
                    continue;
                }
                if !self.agent_alive(h.index) {
                    bail!(
                        "the agent of {} exited before it got a lease ({})\n{}",
                        h.node,
                        h.agent_pid
                            .and_then(process::how_it_ended)
                            .unwrap_or_else(|| "not a child of this process".into()),
                        process::log_tail(&h.log, LOG_LINES)
                    );
                }
                waiting.push(h);
            }
            let Some(first) = waiting.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let nodes: Vec<&str> = waiting.iter().map(|h| h.node.as_str()).collect();
                let what = if dual {
                    "no node.json with an IPv6 subnet in their data dirs"
                } else {
                    "no node.json in their data dirs"
                };
                bail!(
                    "no lease within {timeout:?} for {} ({what})\n{}",
                    nodes.join(", "),
                    process::log_tail(&first.log, LOG_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One ICMP (or ICMPv6) echo from namespace `ns`.
fn ping(ns: &str, ip: IpAddr) -> bool {
    let mut cmd = sys::ns_command(ns);
    cmd.arg("ping");
    if ip.is_ipv6() {
        cmd.arg("-6");
    }
    cmd.args(["-n", "-q", "-c", "1", "-W", "1", &ip.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether the agent's node.json names an IPv6 subnet (`subnet6`). A file being replaced or
/// not yet readable counts as not yet.
fn has_subnet6(node_file: &std::path::Path) -> bool {
    std::fs::read(node_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|v| v["subnet6"].is_string())
}
