//! Replays recorded event logs through the agent's pure core and compares the actions (and
//! the status written) after each event with a golden file, without root or a kernel.
//!
//! Each scenario is `tests/replay/<name>.events.jsonl`: a `start` record (config, node,
//! lease, BGP start), then one `input` per line, as `TWILL_RECORD_EVENTS=path twill agent`
//! records them (a restarted agent appends another `start`) or written by hand. Those named
//! `recorded_*` were recorded from lab tests (`TWILL_RECORD_EVENTS=<dir>` records each node's
//! agent to `<dir>/<node>.events.jsonl`). Its golden is `tests/replay/<name>.golden`.
//! `UPDATE_GOLDEN=1 cargo test -p twill-agent --test replay` rewrites the goldens.

use std::fmt::Write as _;
use std::path::PathBuf;

use twill_agent::core::{Core, Record};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/replay")
}

/// The core's actions after each input of the scenario's log, as text.
fn replay(name: &str) -> String {
    let path = dir().join(format!("{name}.events.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let parse = |(n, line): (usize, &str)| -> Record {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("{}:{}: {e}", path.display(), n + 1))
    };
    let Record::Start(start) = parse(lines.next().expect("a start record")) else {
        panic!("{}: the first record must be `start`", path.display());
    };
    let mut core = Core::new(*start).expect("the start record makes a core");
    let mut out = String::new();
    for (i, line) in lines {
        let input = match parse((i, line)) {
            Record::Input(input) => input,
            // The agent was started again (a restart appends to the same log).
            Record::Start(start) => {
                let _ = writeln!(out, "#{} start again", i + 1);
                core = Core::new(*start).expect("the start record makes a core");
                continue;
            }
        };
        let event = serde_json::to_string(&input.event).expect("events serialize");
        let _ = writeln!(out, "#{} at {} ms: {event}", i + 1, input.at);
        for action in core.step(input) {
            for line in action.render().lines() {
                let _ = writeln!(out, "  {line}");
            }
        }
    }
    out
}

/// Compares the replay with the golden file (or rewrites it with `UPDATE_GOLDEN=1`).
fn check(name: &str) {
    let got = replay(name);
    let path = dir().join(format!("{name}.golden"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    if got != want {
        panic!(
            "{name}: the replay differs from {} (UPDATE_GOLDEN=1 rewrites it):\n{}",
            path.display(),
            diff(&want, &got)
        );
    }
}

/// The lines of `want` and `got` that differ, with a little context.
fn diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let mut out = String::new();
    let same_head = w.iter().zip(&g).take_while(|(a, b)| a == b).count();
    let same_tail = w[same_head..]
        .iter()
        .rev()
        .zip(g[same_head..].iter().rev())
        .take_while(|(a, b)| a == b)
        .count();
    for line in &w[same_head.saturating_sub(3)..same_head] {
        let _ = writeln!(out, "  {line}");
    }
    for line in &w[same_head..w.len() - same_tail] {
        let _ = writeln!(out, "- {line}");
    }
    for line in &g[same_head..g.len() - same_tail] {
        let _ = writeln!(out, "+ {line}");
    }
    out
}

#[test]
fn every_log_has_a_test() {
    let mut logs: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".events.jsonl").map(str::to_string)
        })
        .collect();
    logs.sort();
    let mut tested = SCENARIOS.to_vec();
    tested.sort();
    assert_eq!(logs, tested);
}

const SCENARIOS: &[&str] = &[
    "join",
    "peer_leave_while_down",
    "lease_lost",
    "store_outage",
    "bgp_graceful_restart",
    "policy_change",
    "cross_subnet",
    "cross_subnet_ipip",
    "recorded_lease_expiry",
    "recorded_bgp_restart",
    "bgp_encrypted",
    "dual_stack_encrypted",
    "bgp_dualstack",
    "bgp_dualstack_encrypted",
    "ipv6_only",
    "ipv6_only_ipip",
    "ipv6_only_encrypted",
];

#[test]
fn join() {
    check("join");
}

#[test]
fn peer_leave_while_down() {
    check("peer_leave_while_down");
}

#[test]
fn lease_lost() {
    check("lease_lost");
}

#[test]
fn store_outage() {
    check("store_outage");
}

#[test]
fn bgp_graceful_restart() {
    check("bgp_graceful_restart");
}

#[test]
fn policy_change() {
    check("policy_change");
}

#[test]
fn cross_subnet() {
    check("cross_subnet");
}

#[test]
fn cross_subnet_ipip() {
    check("cross_subnet_ipip");
}

/// Recorded from `tests/lease_expiry.rs`: a frozen agent's store lease expired.
#[test]
fn recorded_lease_expiry() {
    check("recorded_lease_expiry");
}

/// Recorded from `tests/bgp_lab.rs` (`restarted_agent_keeps_its_routes_in_bird`): node h1's
/// agent, killed and started again, keeps its BGP routes until its peers are back.
#[test]
fn recorded_bgp_restart() {
    check("recorded_bgp_restart");
}

/// BGP with WireGuard encryption: learned routes inside an encrypted peer's subnet go into
/// twill.wg, those into a peer that has no key yet go nowhere, until its key arrives.
#[test]
fn bgp_encrypted() {
    check("bgp_encrypted");
}

/// Dual stack with WireGuard on vxlan (CrossSubnet): the peer on our segment keeps vxlan's
/// direct routes for both families, the one beyond goes through twill.wg with both subnets,
/// the one without a key is blocked in both families until it publishes one, and a peer that
/// leaves takes both of its routes along.
#[test]
fn dual_stack_encrypted() {
    check("dual_stack_encrypted");
}

/// Dual-stack BGP: the IPv6 routes learned (over an IPv6 session, or with a link-local next
/// hop) go into the desired state and the deltas next to the IPv4 ones, and never one for
/// this node's own IPv6 subnet or with an IPv4-mapped next hop; the host guard keeps pods
/// off the BGP port over IPv6 too.
#[test]
fn bgp_dualstack() {
    check("bgp_dualstack");
}

/// Dual-stack BGP with WireGuard: learned IPv6 routes inside an encrypted peer's IPv6 subnet
/// go into twill.wg next to the IPv4 ones (whatever their next hop: a global, link-local or
/// IPv4-mapped one), those into a peer without a key yet go nowhere in either family until
/// its key arrives, routes outside every peer's subnets stay clear, and a withdrawn one is
/// deleted from twill.wg.
#[test]
fn bgp_dualstack_encrypted() {
    check("bgp_dualstack_encrypted");
}

/// A node of an IPv6-only vxlan cluster (no IPv4 subnet or underlay): only `twill6.1`, peers
/// by their IPv6 subnet (on the segment, routed, without an IPv6 underlay: skipped), no IPv4
/// forwarding or guard rules; its lease is taken and it leases another IPv6 subnet; a peer
/// leaves.
#[test]
fn ipv6_only() {
    check("ipv6_only");
}

/// A node of an IPv6-only ipip cluster with DirectRouting: the TUN device over the IPv6
/// underlay (no IPv4 address on it), a plain route to the peer on its IPv6 segment, the
/// routed peer through the tunnel (a tunnel peer known by its IPv6 subnet and underlay
/// address), the one without an IPv6 underlay skipped; its lease is taken and it leases
/// another IPv6 subnet; a peer leaves.
#[test]
fn ipv6_only_ipip() {
    check("ipv6_only_ipip");
}

/// A node of an IPv6-only vxlan cluster with WireGuard (Always): `twill6.1` stays but carries
/// nothing; the peer on the segment and the routed one go into `twill.wg` by their IPv6
/// subnet, at their IPv6 underlay (the device has no IPv4 underlay address, `local6` its
/// IPv6 one, and an MTU with the IPv6 outer header); the routed one is blocked until it
/// publishes its key; the one without an IPv6 underlay is skipped; the node leases another
/// IPv6 subnet; a peer leaves with its route.
#[test]
fn ipv6_only_encrypted() {
    check("ipv6_only_encrypted");
}
