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
pub mod spec;
pub mod verbs;

use std::io::Write;

use serde_json::json;

use config::{Command, Env, NetConf, peek_version};
use spec::{CniError, LATEST_VERSION, SUPPORTED_VERSIONS, code};

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
