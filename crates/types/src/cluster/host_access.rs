//! What pods may reach of their own node (`workloadToHost`, `workloadToHostPorts`), and the
//! control-plane ports they never reach whatever the config says.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// What a node does with a connection from one of its own pods to one of its own addresses
/// (Calico's `DefaultEndpointToHostAction`). DNS (port 53), ICMP echo to the pod's gateway and
/// replies of connections the node opened always pass; control-plane ports (BGP, etcd, tunnel
/// ports) never do, whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum WorkloadToHost {
    /// Dropped, except the ports of `workloadToHostPorts` (the default).
    #[default]
    Drop,
    /// Accepted (control-plane ports excepted).
    Accept,
}

impl WorkloadToHost {
    pub fn name(self) -> &'static str {
        match self {
            WorkloadToHost::Drop => "Drop",
            WorkloadToHost::Accept => "Accept",
        }
    }

    /// `Drop` or `Accept`, in any case.
    pub fn from_name(name: &str) -> Option<WorkloadToHost> {
        [WorkloadToHost::Drop, WorkloadToHost::Accept]
            .into_iter()
            .find(|w| w.name().eq_ignore_ascii_case(name))
    }

    fn is_default(&self) -> bool {
        *self == WorkloadToHost::default()
    }
}

impl fmt::Display for WorkloadToHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Pods' access to their own node: see [`WorkloadToHost`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostAccess {
    #[serde(default, skip_serializing_if = "WorkloadToHost::is_default")]
    pub workload_to_host: WorkloadToHost,
    /// Ports pods may reach on their node when `workload_to_host` is Drop (Calico's failsafe
    /// form: `tcp:22`, `udp:123`, `tcp:30000-32767`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workload_to_host_ports: Vec<HostPort>,
}

/// The transport protocols a [`HostPort`] can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PortProto {
    Tcp,
    Udp,
    Sctp,
}

impl PortProto {
    pub fn name(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
            PortProto::Sctp => "sctp",
        }
    }
}

/// One allow-listed port or port range of one protocol: `tcp:22`, `udp:5000-5100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPort {
    pub proto: PortProto,
    pub first: u16,
    /// Equal to `first` for a single port.
    pub last: u16,
}

impl HostPort {
    /// Whether the entry holds `port`.
    pub fn contains(&self, proto: PortProto, port: u16) -> bool {
        self.proto == proto && (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}:{}", self.proto.name(), self.first)
        } else {
            write!(f, "{}:{}-{}", self.proto.name(), self.first, self.last)
        }
    }
}

impl std::str::FromStr for HostPort {
    type Err = String;

    /// `PROTO:PORT` or `PROTO:FIRST-LAST`, PROTO one of tcp, udp, sctp (any case).
    fn from_str(text: &str) -> Result<HostPort, String> {
        let Some((proto, ports)) = text.split_once(':') else {
            return Err(format!(
                "{text:?} is not PROTO:PORT (e.g. \"tcp:22\", \"udp:123\", \"tcp:30000-32767\")"
            ));
        };
        let proto = match proto.trim().to_ascii_lowercase().as_str() {
            "tcp" => PortProto::Tcp,
            "udp" => PortProto::Udp,
            "sctp" => PortProto::Sctp,
            other => {
                return Err(format!(
                    "{text:?}: protocol {other:?} is not tcp, udp or sctp"
                ));
            }
        };
        let port = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{text:?}: {:?} is not a port (1 to 65535)", s.trim()))
        };
        let (first, last) = match ports.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(ports)?;
                (p, p)
            }
        };
        if first > last {
            return Err(format!("{text:?}: the range ends before it starts"));
        }
        Ok(HostPort { proto, first, last })
    }
}

impl Serialize for HostPort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<HostPort, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The host access keys of twill's form (`workloadToHost`, `workloadToHostPorts`), read;
/// repeated ports are kept once.
pub(super) fn from_raw_host_access(
    action: Option<String>,
    ports: Option<Vec<String>>,
) -> Result<HostAccess, ConfigError> {
    let workload_to_host = match action {
        None => WorkloadToHost::default(),
        Some(name) => WorkloadToHost::from_name(name.trim()).ok_or_else(|| {
            ConfigError::unsupported(
                "workloadToHost",
                format!("workloadToHost {name:?} is not supported: Drop (the default) or Accept"),
            )
        })?,
    };
    let mut workload_to_host_ports = Vec::new();
    for (i, text) in ports.unwrap_or_default().iter().enumerate() {
        let port: HostPort = text.parse().map_err(|e| {
            ConfigError::invalid(
                format!("workloadToHostPorts[{i}]"),
                format!("workloadToHostPorts[{i}]: {e}"),
            )
        })?;
        if !workload_to_host_ports.contains(&port) {
            workload_to_host_ports.push(port);
        }
    }
    Ok(HostAccess {
        workload_to_host,
        workload_to_host_ports,
    })
}
