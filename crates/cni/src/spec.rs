//! CNI specification types (SPEC 1.1.0 and the result formats of 0.3.0 … 1.0.0).
//!
//! Hand-written rather than taken from a crate: the only Rust CNI crate (`cni-plugin`) stops at
//! spec 1.0.0 and has been idle since 2022. This module is data and (de)serialisation only.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// Versions whose configuration and result format twill speaks.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest of them.
pub const LATEST_VERSION: &str = "1.1.0";

/// A CNI spec version twill supports, ordered by age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V0_3_0,
    V0_3_1,
    V0_4_0,
    V1_0_0,
    V1_1_0,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        Some(match s {
            "0.3.0" => Version::V0_3_0,
            "0.3.1" => Version::V0_3_1,
            "0.4.0" => Version::V0_4_0,
            "1.0.0" => Version::V1_0_0,
            "1.1.0" => Version::V1_1_0,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Version::V0_3_0 => "0.3.0",
            Version::V0_3_1 => "0.3.1",
            Version::V0_4_0 => "0.4.0",
            Version::V1_0_0 => "1.0.0",
            Version::V1_1_0 => "1.1.0",
        }
    }
}

/// Error codes of the spec, plus twill's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const STATUS_UNAVAILABLE: u32 = 50;
    /// No free address left in a range.
    pub const RANGE_FULL: u32 = 100;
    /// The interface to create exists already in the container.
    pub const INTERFACE_EXISTS: u32 = 101;
    /// The kernel refused a network change (netlink).
    pub const KERNEL: u32 = 102;
    /// The firewall (nftables) could not be programmed.
    pub const FIREWALL: u32 = 103;
    /// Local state (the data directory) could not be read or written.
    pub const STATE: u32 = 104;
    /// CHECK found the container's network different from what ADD made.
    pub const CHECK_FAILED: u32 = 110;
}

/// A CNI error as written to stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn to_json(&self, version: &str) -> Value {
        let mut v = json!({"cniVersion": version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

impl std::fmt::Display for CniError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.msg, self.code)?;
        if !self.details.is_empty() {
            write!(f, ": {}", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// An interface of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
}

/// An address of a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpConfig {
    pub address: IpNet,
    pub gateway: Option<IpAddr>,
    /// Index into the result's interfaces.
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteConfig {
    pub dst: IpNet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings passed through from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_empty()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// The result of ADD, independent of the version it is printed in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<RouteConfig>,
    pub dns: Dns,
}

impl CniResult {
    /// Serialises in the format of `version`: before 1.0.0 each address carries `"version"`;
    /// interface `mtu` exists only from 1.1.0.
    pub fn to_json(&self, version: Version) -> Value {
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if version < Version::V1_1_0 {
                    i.mtu = None;
                }
                serde_json::to_value(i).unwrap_or(Value::Null)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                if version < Version::V1_0_0 {
                    let v = if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    };
                    o.insert("version".into(), v.into());
                }
                o.insert("address".into(), ip.address.to_string().into());
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), gw.to_string().into());
                }
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), i.into());
                }
                Value::Object(o)
            })
            .collect();
        let mut out = json!({"cniVersion": version.as_str(), "interfaces": interfaces, "ips": ips});
        if !self.routes.is_empty() {
            out["routes"] = serde_json::to_value(&self.routes).unwrap_or(Value::Null);
        }
        out["dns"] = serde_json::to_value(&self.dns).unwrap_or(Value::Null);
        out
    }

    /// Parses a result of any supported version (e.g. `prevResult`).
    pub fn from_json(v: &Value) -> Result<CniResult, String> {
        let mut out = CniResult::default();
        if let Some(ifaces) = v.get("interfaces") {
            out.interfaces = serde_json::from_value(ifaces.clone())
                .map_err(|e| format!("prevResult.interfaces: {e}"))?;
        }
        if let Some(ips) = v.get("ips").and_then(Value::as_array) {
            for ip in ips {
                let address = ip
                    .get("address")
                    .and_then(Value::as_str)
                    .ok_or("prevResult.ips[]: address missing")?;
                let address: IpNet = address
                    .parse()
                    .map_err(|e| format!("prevResult.ips[].address {address}: {e}"))?;
                let gateway = match ip.get("gateway").and_then(Value::as_str) {
                    Some(g) => Some(
                        g.parse()
                            .map_err(|e| format!("prevResult.ips[].gateway {g}: {e}"))?,
                    ),
                    None => None,
                };
                let interface = ip
                    .get("interface")
                    .and_then(Value::as_u64)
                    .map(|i| i as usize);
                out.ips.push(IpConfig {
                    address,
                    gateway,
                    interface,
                });
            }
        }
        if let Some(routes) = v.get("routes") {
            out.routes = serde_json::from_value(routes.clone())
                .map_err(|e| format!("prevResult.routes: {e}"))?;
        }
        if let Some(dns) = v.get("dns") {
            out.dns = serde_json::from_value(dns.clone()).unwrap_or_default();
        }
        Ok(out)
    }
}

/// An attachment named in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![
                Interface {
                    name: "tw1".into(),
                    mac: "aa:bb:cc:dd:ee:ff".into(),
                    mtu: Some(1500),
                    sandbox: String::new(),
                },
                Interface {
                    name: "eth0".into(),
                    mac: "02:00:00:00:00:01".into(),
                    mtu: Some(1500),
                    sandbox: "/var/run/netns/x".into(),
                },
            ],
            ips: vec![IpConfig {
                address: "10.88.0.2/16".parse().unwrap(),
                gateway: Some("10.88.0.1".parse().unwrap()),
                interface: Some(1),
            }],
            routes: vec![RouteConfig {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.88.0.1".parse().unwrap()),
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_results_carry_ip_version_and_no_mtu() {
        let v = sample().to_json(Version::V0_3_1);
        assert_eq!(v["cniVersion"], "0.3.1");
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn new_results_have_no_ip_version_and_mtu_only_from_1_1() {
        let v = sample().to_json(Version::V1_0_0);
        assert!(v["ips"][0].get("version").is_none());
        assert!(v["interfaces"][0].get("mtu").is_none());
        let v = sample().to_json(Version::V1_1_0);
        assert_eq!(v["interfaces"][1]["mtu"], 1500);
        assert_eq!(v["interfaces"][1]["sandbox"], "/var/run/netns/x");
    }

    #[test]
    fn results_round_trip_through_json() {
        for version in [
            Version::V0_3_0,
            Version::V0_4_0,
            Version::V1_0_0,
            Version::V1_1_0,
        ] {
            let back = CniResult::from_json(&sample().to_json(version)).unwrap();
            assert_eq!(back.ips, sample().ips);
            assert_eq!(back.routes, sample().routes);
            assert_eq!(back.interfaces.len(), 2);
        }
    }

    #[test]
    fn versions_parse_and_order() {
        for s in SUPPORTED_VERSIONS {
            assert_eq!(Version::parse(s).unwrap().as_str(), *s);
        }
        assert!(Version::parse("0.2.0").is_none());
        assert!(Version::V0_4_0 < Version::V1_0_0);
    }
}
