//! twill lab: a virtual cluster on one machine, for users (`twill lab ...`) and for tests.
//!
//! A lab is made of network namespaces only: an underlay (`twl-<name>-u`: one bridge, or a
//! router between two subnets), hosts (`twl-<name>-h<i>`) each running a real `twill agent`,
//! and pods (`twl-<name>-h<i>-p<j>`) attached by the real CNI plugin exactly as a runtime
//! attaches them. With more than one host the store is a real etcd in the underlay namespace.
//! Nothing is added to the root namespace; `down` removes every namespace, process and file.
//!
//! - [`plan`]: names, addresses and expected reachability (pure).
//! - [`Lab`] / [`LabSpec`]: build, inspect, disturb and remove a lab (also for tests).
//! - [`Matrix`]: the pod-to-pod ping matrix.
//! - [`LabCommand`] / [`run`]: the `twill lab` subcommands.

mod cli;
mod lab;
pub mod matrix;
pub mod plan;
pub mod state;
pub mod status;
mod sys;

pub use cli::{LabCommand, UpArgs, run};
pub use lab::{Lab, LabSpec, down, parse_cni_result};
pub use matrix::{Matrix, Outcome, Probe};
pub use nix::sys::signal::Signal;
pub use plan::{Backend, PodMode, Underlay};
pub use state::{Host, Pod, State};
pub use status::{AgentStatus, PeerPath, PeerStatus};
