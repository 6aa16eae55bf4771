//! twill lab: a virtual cluster on one machine, for users (`twill lab ...`) and for tests.
//!
//! A lab is made of network namespaces only: an underlay (`twl-<name>-u`: one bridge, or a
//! router between two subnets), hosts (`twl-<name>-h<i>`) each running a real `twill agent`,
//! and pods (`twl-<name>-h<i>-p<j>`) attached by the real CNI plugin exactly as a runtime
//! attaches them. With more than one host the store is a real etcd in the underlay namespace.
//! Nothing is added to the root namespace; `down` removes every namespace, process and file.
//!
//! - [`plan`]: names, addresses, configs and expected reachability (pure).
//! - [`LabSpec`]: what a lab is made of, checked before anything is made.
//! - [`Lab`]: a lab that exists, with one module per concern: building and removing it
//!   (`lab::build`, and [`down`]), its store (`lab::store`), its daemons (`lab::daemons`: the
//!   agents, etcd, BIRD) and what is asked of it once it runs (`lab::probes`: status, waits,
//!   pings). Also for tests.
//! - [`state`]: `state.json`, the record of a lab's parts that every process reads.
//! - [`status`]: the agent's `twill status --json`, and when a cluster has converged.
//! - [`Matrix`]: the pod-to-pod ping matrix (and `ping -6`'s in a dual-stack lab).
//! - [`LabCommand`] / [`run`]: the `twill lab` subcommands.
//! - `sys`: `ip` commands, namespaces, timed program runs, probes from inside a namespace;
//!   `process`: detached daemons, their liveness by pid, stopping them, their logs.

mod cli;
mod cmdline;
mod lab;
pub mod matrix;
pub mod plan;
mod process;
mod spec;
pub mod state;
pub mod status;
mod sys;

pub use cli::{LabCommand, LabName, Output, UpArgs, run};
pub use lab::{CniAddress, Lab, down, parse_cni_result, parse_cni_result6};
pub use matrix::{Family, Matrix, Outcome, Probe};
pub use nix::sys::signal::Signal;
pub use plan::{Backend, EncryptMode, IpFamily, PodMode, Underlay};
pub use spec::LabSpec;
pub use state::{Host, Pod, State};
pub use status::{AgentStatus, PeerPath, PeerStatus, WireguardPeer};
