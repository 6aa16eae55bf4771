//! twill's CNI plugin: reads the CNI environment and configuration, runs a verb, and writes the
//! result or a CNI error to stdout, as SPEC 1.1.0 says.
//!
//! - [`spec`]: CNI data types and result formats.
//! - [`config`]: environment and network configuration, validated before anything changes.
//! - [`plumbing`]: bridge, veth, addresses, routes (through `twill-netlink`).
//! - [`verbs`]: ADD, DEL, CHECK, STATUS, GC.

pub mod config;
pub mod endpoint;
pub mod plumbing;
pub mod repair;
pub mod sandbox;
pub mod spec;
pub mod verbs;

use std::io::{Read, Write};

use serde_json::json;

use config::{Command, Env, NetConf, peek_version};
use spec::{CniError, LATEST_VERSION, SUPPORTED_VERSIONS, code};

/// The most configuration the plugin reads from stdin (a network configuration with a large
/// prevResult is a few KiB; GC's list of valid attachments for a thousand pods ~100 KiB).
pub const MAX_STDIN: usize = 1 << 20;

/// Reads the configuration from `input`, at most [`MAX_STDIN`] bytes: more is an error
/// (code 6), never an unbounded allocation.
pub fn read_stdin(input: impl Read) -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    input
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(code::IO, format!("cannot read stdin: {e}")))?;
    if buf.len() > MAX_STDIN {
        return Err(CniError::new(
            code::DECODE,
            format!(
                "the network configuration on stdin is larger than {} KiB",
                MAX_STDIN / 1024
            ),
        ));
    }
    Ok(buf)
}

/// The plugin's process: reads the environment and (bounded) stdin, runs the verb, writes
/// stdout. Returns the exit code.
pub fn main_with_stdin() -> i32 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match read_stdin(std::io::stdin().lock()) {
        Ok(stdin) => run(|k| std::env::var(k).ok(), &stdin, &mut out),
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(LATEST_VERSION));
            1
        }
    }
}

/// Runs one plugin invocation. `var` reads the environment, `stdin` is the configuration;
/// output goes to `out`. Returns the process exit code.
pub fn run(var: impl Fn(&str) -> Option<String>, stdin: &[u8], out: &mut impl Write) -> i32 {
    let version = peek_version(stdin)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| LATEST_VERSION.to_string());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(&var, stdin)))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(CniError::new(
                code::IO,
                format!("twill plugin failed unexpectedly: {what}"),
            ))
        });
    match outcome {
        Ok(Some(value)) => {
            let _ = writeln!(out, "{value}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            let _ = writeln!(out, "{}", e.to_json(&version));
            1
        }
    }
}

fn dispatch(
    var: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
) -> Result<Option<serde_json::Value>, CniError> {
    let env = Env::from_vars(var)?;
    if env.command == Command::Version {
        return Ok(Some(
            json!({"cniVersion": LATEST_VERSION, "supportedVersions": SUPPORTED_VERSIONS}),
        ));
    }
    let conf = NetConf::parse(stdin)?;
    match env.command {
        Command::Add => verbs::add(&env, &conf).map(Some),
        Command::Del => verbs::del(&env, &conf).map(|()| None),
        Command::Check => verbs::check(&env, &conf).map(|()| None),
        Command::Status => verbs::status(&conf).map(|()| None),
        Command::Gc => verbs::gc(&conf).map(|()| None),
        Command::Version => unreachable!("handled above"),
    }
}
