//! Helpers shared by the BGP lab tests (`bgp_lab.rs`, `bgp6_lab.rs`, `security_bgp.rs`):
//! starting a lab, waiting, BIRD peer blocks with the lab's fast timers, and the logs to read
//! on failure. Each test file uses some of them.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use twill_lab::{Lab, LabSpec};

pub const TWILL: &str = env!("CARGO_BIN_EXE_twill");

/// The agents' logs and BIRD's `birdc <birdc_show...>`, the first thing to read when a lab
/// test fails.
pub fn dump_logs(name: &str, birdc_show: &[&str]) {
    let Ok(lab) = Lab::load(name) else { return };
    for h in lab.hosts() {
        let log = std::fs::read_to_string(&h.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(25).collect();
        eprintln!(
            "---- {} agent log (last lines) ----\n{}",
            h.node,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    for b in &lab.state().birds {
        eprintln!(
            "---- BIRD {} ----\n{}",
            b.name,
            lab.birdc(&b.name, birdc_show).unwrap_or_default()
        );
    }
}

pub fn up(spec: &LabSpec) -> Lab {
    Lab::up(spec, Path::new(TWILL)).unwrap_or_else(|e| panic!("lab up: {e:#}"))
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A BIRD `protocol bgp` block with the lab's fast timers.
pub fn bird_peer(
    name: &str,
    local: &str,
    las: u32,
    neighbor: &str,
    nas: u32,
    extra: &str,
) -> String {
    format!(
        "protocol bgp {name} {{\n  local {local} as {las};\n  neighbor {neighbor} as {nas};\n  \
         hold time 3; connect retry time 1; connect delay time 1; error wait time 1, 2;\n  \
         graceful restart on; direct;\n  {extra}\n  \
         ipv4 {{ import all; export all; {channel} }};\n}}\n",
        channel = if las == nas { "gateway direct;" } else { "" }
    )
}

/// A BIRD `protocol bgp` block for an IPv6 session (`local` and `neighbor` IPv6 addresses),
/// carrying IPv6 unicast only, with the lab's fast timers.
pub fn bird_peer6(
    name: &str,
    local: &str,
    las: u32,
    neighbor: &str,
    nas: u32,
    extra: &str,
) -> String {
    format!(
        "protocol bgp {name} {{\n  local {local} as {las};\n  neighbor {neighbor} as {nas};\n  \
         hold time 3; connect retry time 1; connect delay time 1; error wait time 1, 2;\n  \
         graceful restart on; direct;\n  {extra}\n  \
         ipv6 {{ import all; export all; {channel} }};\n}}\n",
        channel = if las == nas { "gateway direct;" } else { "" }
    )
}

/// BIRD's IPv6 kernel export, so a router namespace forwards IPv6 along what BIRD learned
/// (the lab's BIRD config exports IPv4 only).
pub const BIRD_KERNEL6: &str = "protocol kernel kernel6 { ipv6 { import none; export all; }; }\n";
