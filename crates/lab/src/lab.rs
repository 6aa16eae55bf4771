//! A lab: the virtual cluster itself, as [`Lab`], a handle on a lab that exists (its state
//! directory does). This file holds what the lab is and how to find its parts; what is done to
//! it lives in one submodule per concern, each adding its own `impl Lab` block:
//!
//! - [`build`]: `up` step by step (underlay and hosts, store, cluster config, agents, pods
//!   through the real plugin, convergence), recording each step in `state.json`; any failure
//!   removes everything made so far; what grows a running lab (one more pod, a BIRD host);
//!   and `down`.
//! - [`store`]: the lab's store: etcd's certificates and record, the env file, the CLI's
//!   arguments, `etcdctl`, and the cluster config stored with `twill cluster init`.
//! - [`daemons`]: starting, checking, signalling and stopping the agents, etcd and BIRD.
//! - [`probes`]: what the lab asks of a running cluster: agent status, the waits for leases and
//!   convergence, and the pod-to-pod ping matrix.

mod build;
mod daemons;
mod probes;
mod store;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::plan::{self, Target};
use crate::state::{Etcd, Host, Pod, State};
use crate::sys;

pub use build::{CniAddress, down, parse_cni_result, parse_cni_result6};

/// A single CLI call (cluster init, plugin, status) that takes longer than this is hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Lines of a log quoted in an error.
const LOG_LINES: usize = 15;

/// A lab that exists (its state directory does).
#[derive(Debug, Clone)]
pub struct Lab {
    state: State,
    dir: PathBuf,
    verbose: bool,
}

impl Lab {
    /// The lab called `name`, from its state.json.
    pub fn load(name: &str) -> Result<Lab> {
        plan::validate_name(name)?;
        let dir = plan::state_dir(name);
        ensure!(dir.is_dir(), "no lab named {name}");
        let state = State::load(&dir).with_context(|| {
            format!(
                "lab {name} is incomplete (an interrupted `up`?); \
                 remove it with `twill lab down --name {name}`"
            )
        })?;
        Ok(Lab {
            state,
            dir,
            verbose: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn hosts(&self) -> &[Host] {
        &self.state.hosts
    }

    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }

    /// Host `i`'s namespace name.
    pub fn host_ns(&self, i: u32) -> String {
        plan::host_ns(&self.state.name, i)
    }

    /// The namespace of `underlay`, `h<i>` or `h<i>-p<j>`, which must be part of this lab.
    pub fn target_ns(&self, target: &str) -> Result<String> {
        let t = Target::parse(target)?;
        let exists = match t {
            Target::Underlay => true,
            Target::Host(i) => self.state.host(i).is_some(),
            Target::Pod(i, j) => self.state.pods.iter().any(|p| p.host == i && p.index == j),
        };
        ensure!(exists, "lab {} has no {target}", self.state.name);
        Ok(t.netns(&self.state.name))
    }

    /// Runs `cmd` in the target's namespace and returns its output.
    pub fn exec(&self, target: &str, cmd: &[&str]) -> Result<Output> {
        ensure!(!cmd.is_empty(), "no command to run");
        let ns = self.target_ns(target)?;
        sys::ns_command(&ns)
            .args(cmd)
            .output()
            .with_context(|| format!("run {} in {ns}", cmd.join(" ")))
    }

    // ----- small helpers, shared by the submodules -----

    fn host(&self, i: u32) -> Result<&Host> {
        self.state
            .host(i)
            .with_context(|| format!("lab {} has no host h{i}", self.state.name))
    }

    fn etcd(&self) -> Result<&Etcd> {
        self.state.etcd.as_ref().with_context(|| {
            format!(
                "lab {} uses the embedded store (one node): it has no etcd",
                self.state.name
            )
        })
    }

    fn twill(&self) -> Result<&Path> {
        ensure!(
            !self.state.twill.as_os_str().is_empty(),
            "lab {} was built as a bare topology: it has no twill executable",
            self.state.name
        );
        Ok(&self.state.twill)
    }

    fn save(&self) -> Result<()> {
        self.state.save(&self.dir)
    }

    fn say(&self, msg: &str) {
        if self.verbose {
            eprintln!("twill lab {}: {msg}", self.state.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_of_unknown_lab() {
        let err = Lab::load("t-none-such").unwrap_err().to_string();
        assert_eq!(err, "no lab named t-none-such");
        assert!(!down("t-none-such").unwrap());
    }
}
