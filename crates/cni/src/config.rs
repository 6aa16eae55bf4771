//! The plugin's inputs: the CNI environment and twill's network configuration, parsed and
//! validated up front so that a bad input fails before anything is changed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::spec::{CniError, Dns, Version, code};
use twill_types::node::{self, NodeFile};

/// Where persistent state lives unless the configuration says otherwise.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/twill";
/// The bridge of `bridge` mode unless the configuration names another.
pub const DEFAULT_BRIDGE: &str = "twill0";

/// How containers are attached to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A Linux bridge holding the gateway addresses, one veth port per container.
    Bridge,
    /// No bridge: a veth per container, a host route per address, link-local gateway.
    Routed,
}

/// The CNI verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

/// The CNI_* environment of one call.
#[derive(Debug, Clone)]
pub struct Env {
    pub command: Command,
    pub container_id: String,
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: HashMap<String, String>,
}

impl Env {
    /// Reads and validates the environment for the verb in `CNI_COMMAND`.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let bad = |msg: String| CniError::new(code::INVALID_ENV, msg);
        let raw = get("CNI_COMMAND").unwrap_or_default();
        let command = match raw.as_str() {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => {
                return Err(bad(format!(
                    "unknown CNI_COMMAND {other:?}: expected ADD, DEL, CHECK, STATUS, GC or VERSION"
                )));
            }
        };
        let per_container = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = get("CNI_CONTAINERID").unwrap_or_default();
        let ifname = get("CNI_IFNAME").unwrap_or_default();
        let netns = get("CNI_NETNS")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        if per_container {
            if container_id.is_empty() {
                return Err(bad(format!("CNI_CONTAINERID is required for {raw}")));
            }
            if !container_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            {
                return Err(bad(format!(
                    "CNI_CONTAINERID {container_id:?} has characters other than letters, digits, '_', '.' and '-'"
                )));
            }
            validate_ifname(&ifname).map_err(|m| bad(format!("CNI_IFNAME: {m}")))?;
            if command != Command::Del && netns.is_none() {
                return Err(bad(format!("CNI_NETNS is required for {raw}")));
            }
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())
            .map_err(|m| bad(format!("CNI_ARGS: {m}")))?;
        Ok(Env {
            command,
            container_id,
            netns,
            ifname,
            args,
        })
    }
}

/// Linux interface name rules (what `dev_valid_name` accepts).
pub fn validate_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > 15 {
        return Err(format!("interface name {name:?} is longer than 15 bytes"));
    }
    if name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        return Err(format!(
            "interface name {name:?} is not a valid Linux interface name"
        ));
    }
    Ok(())
}

fn parse_args(s: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for pair in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// The plugin's configuration as the runtime passes it on stdin (one plugin of a list).
#[derive(Debug, Clone)]
pub struct NetConf {
    pub version: Version,
    pub name: String,
    pub mode: Mode,
    pub bridge: String,
    pub ranges: Vec<IpNet>,
    pub ip_masq: bool,
    pub data_dir: PathBuf,
    pub mtu: Option<u32>,
    pub dns: Dns,
    /// `prevResult`, as given (CHECK, DEL, and ADD when twill is not first in a chain).
    pub prev_result: Option<Value>,
    /// Raw `cni.dev/valid-attachments` (or the older `cni.dev/attachments`) of GC.
    pub valid_attachments: Option<Value>,
    /// Cluster mode: no `ranges` given, the node's subnet comes from the agent's node file.
    pub cluster: Cluster,
    /// The pod's labels (`runtimeConfig.labels`), for network policy.
    pub labels: BTreeMap<String, String>,
}

/// Where the network's ranges come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cluster {
    /// `ranges` were given in the configuration.
    Off,
    /// The agent's node file was read; `ranges` holds its subnet, and in a dual-stack cluster
    /// its IPv6 subnet after it.
    Ready(NodeFile),
    /// Cluster mode, but the agent has not written the node file yet (the reason says why).
    Pending(String),
}

impl NetConf {
    /// In cluster mode before the agent wrote the node file: code 11 ("try again later").
    pub fn require_ranges(&self) -> Result<(), CniError> {
        match &self.cluster {
            Cluster::Pending(why) => Err(CniError::new(code::TRY_AGAIN_LATER, why.clone())),
            _ => Ok(()),
        }
    }
}

/// Reads the agent's node file. `Ok(None)` when it does not exist yet.
fn read_node_file(data_dir: &Path) -> Result<Option<NodeFile>, String> {
    let path = node::node_file(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("node file {} is not valid: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("node file {} cannot be read: {e}", path.display())),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    bridge: Option<String>,
    #[serde(default)]
    ranges: Option<Vec<String>>,
    #[serde(default)]
    ip_masq: bool,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Value>,
    #[serde(default, rename = "cni.dev/attachments")]
    attachments: Option<Value>,
    #[serde(default)]
    runtime_config: Option<RawRuntimeConfig>,
}

/// The runtime's per-container data (CNI conventions: capabilities passed as
/// `runtimeConfig`); twill reads the pod's labels there.
#[derive(Deserialize, Default)]
struct RawRuntimeConfig {
    #[serde(default)]
    labels: Option<Value>,
}

/// Labels as an object (`{"app": "web"}`) or as a list of `{"key": .., "value": ..}`.
fn parse_labels(v: &Value) -> Result<BTreeMap<String, String>, String> {
    let bad = || {
        format!(
            "runtimeConfig.labels must be an object of strings or a list of {{\"key\", \"value\"}}, not {v}"
        )
    };
    let mut out = BTreeMap::new();
    match v {
        Value::Object(map) => {
            for (k, val) in map {
                out.insert(k.clone(), val.as_str().ok_or_else(bad)?.to_string());
            }
        }
        Value::Array(items) => {
            for item in items {
                let k = item.get("key").and_then(Value::as_str).ok_or_else(bad)?;
                let val = item.get("value").and_then(Value::as_str).ok_or_else(bad)?;
                out.insert(k.to_string(), val.to_string());
            }
        }
        Value::Null => {}
        _ => return Err(bad()),
    }
    Ok(out)
}

/// Only the version, for VERSION and for choosing the format of an error.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    serde_json::from_slice::<Value>(stdin)
        .ok()?
        .get("cniVersion")?
        .as_str()
        .map(str::to_string)
}

impl NetConf {
    /// Parses and validates a configuration. Decode failures are code 6, unsupported versions
    /// code 1, invalid values code 7.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("cannot decode the network configuration on stdin: {e}"),
            )
        })?;
        let invalid = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
        let version_text = raw.cni_version.unwrap_or_default();
        let version = Version::parse(&version_text).ok_or_else(|| {
            CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {version_text:?} is not supported; twill supports {}",
                    crate::spec::SUPPORTED_VERSIONS.join(", ")
                ),
            )
        })?;
        if !valid_network_name(&raw.name) {
            return Err(invalid(format!(
                "network name {:?} must start with a letter or digit and use only letters, \
                 digits, '_', '.' and '-' (CNI SPEC)",
                raw.name
            )));
        }
        if raw.name == twill_types::node::AGENT_NAT_NETWORK {
            return Err(invalid(format!(
                "network name {:?} is reserved for the twill agent's natOutgoing chain",
                raw.name
            )));
        }
        let mode = match raw.mode.as_deref().unwrap_or("bridge") {
            "bridge" => Mode::Bridge,
            "routed" => Mode::Routed,
            other => {
                return Err(invalid(format!(
                    "mode {other:?} is unknown: use \"bridge\" or \"routed\""
                )));
            }
        };
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        validate_ifname(&bridge).map_err(|m| invalid(format!("bridge: {m}")))?;
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if !data_dir.is_absolute() {
            return Err(invalid(format!(
                "dataDir {:?} must be an absolute path, e.g. {DEFAULT_DATA_DIR:?}",
                data_dir.display().to_string()
            )));
        }
        // No `ranges` at all means cluster mode: the node agent owns the node's subnet.
        let (ranges, cluster) = match raw.ranges {
            Some(list) => (parse_ranges(list).map_err(invalid)?, Cluster::Off),
            None => match read_node_file(&data_dir).map_err(invalid)? {
                Some(node) if !(576..=65535).contains(&node.mtu) => {
                    return Err(invalid(format!(
                        "node file {}: mtu {} is out of range 576..=65535",
                        node::node_file(&data_dir).display(),
                        node.mtu
                    )));
                }
                Some(node) => {
                    // IPv4 first: the result lists the pod's addresses in this order. A node
                    // of an IPv6-only cluster has only its IPv6 subnet.
                    let subnets: Vec<IpNet> = (node.subnet.map(IpNet::V4).into_iter())
                        .chain(node.subnet6.map(IpNet::V6))
                        .collect();
                    if subnets.is_empty() {
                        return Err(invalid(format!(
                            "node file {} has neither subnet nor subnet6",
                            node::node_file(&data_dir).display()
                        )));
                    }
                    for subnet in &subnets {
                        check_not_reserved(subnet).map_err(|m| {
                            invalid(format!(
                                "node file {}: subnet {m}",
                                node::node_file(&data_dir).display()
                            ))
                        })?;
                    }
                    (subnets, Cluster::Ready(node))
                }
                None => (
                    Vec::new(),
                    Cluster::Pending(format!(
                        "no \"ranges\" given and the twill agent has not written {} yet: \
                         start `twill agent` on this node (or give \"ranges\")",
                        node::node_file(&data_dir).display()
                    )),
                ),
            },
        };
        let mtu = match (&cluster, raw.mtu) {
            (_, Some(m)) => Some(m),
            (Cluster::Ready(node), None) => Some(node.mtu),
            _ => None,
        };
        if let Some(mtu) = raw.mtu {
            let min = if ranges.iter().any(|r| r.addr().is_ipv6()) {
                1280
            } else {
                576
            };
            if !(min..=65535).contains(&mtu) {
                return Err(invalid(format!("mtu {mtu} is out of range {min}..=65535")));
            }
        }
        Ok(NetConf {
            version,
            name: raw.name,
            mode,
            bridge,
            ranges,
            ip_masq: raw.ip_masq,
            data_dir,
            mtu,
            dns: raw.dns.unwrap_or_default(),
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments.or(raw.attachments),
            cluster,
            labels: match raw.runtime_config.and_then(|r| r.labels) {
                Some(v) => parse_labels(&v).map_err(invalid)?,
                None => BTreeMap::new(),
            },
        })
    }

    /// The directory of this network's address allocations.
    pub fn ipam_dir(&self) -> PathBuf {
        self.data_dir.join("ipam").join(&self.name)
    }

    /// The directory of twill's firewall stamps.
    pub fn firewall_dir(&self) -> PathBuf {
        self.data_dir.join("firewall")
    }
}

/// A CNI network name as the SPEC defines it: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$` (so never
/// `.` or `..`, which would name a directory outside `<dataDir>/ipam`).
pub fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// Address blocks no pod range may overlap: the whole space, "this network", loopback,
/// link-local, multicast and the reserved/broadcast block, and their IPv6 equivalents
/// (unspecified, loopback, IPv4-mapped, link-local, multicast).
pub const RESERVED_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "\"this network\""),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved (and broadcast)"),
    ("::/128", "the unspecified address"),
    ("::1/128", "loopback"),
    ("::ffff:0:0/96", "IPv4-mapped"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// Whether two prefixes share any address (one contains the other).
pub fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Refuses a range that overlaps a reserved block (see [`RESERVED_RANGES`]).
pub fn check_not_reserved(net: &IpNet) -> Result<(), String> {
    for (block, what) in RESERVED_RANGES {
        let block: IpNet = block.parse().expect("literal");
        if overlaps(net, &block) {
            return Err(format!(
                "{net} overlaps {block} ({what}), which pods must never be given"
            ));
        }
    }
    Ok(())
}

fn parse_ranges(raw: Vec<String>) -> Result<Vec<IpNet>, String> {
    if raw.is_empty() {
        return Err("\"ranges\" is empty: give one IPv4 and/or one IPv6 range, e.g. [\"10.88.0.0/16\", \"fd88::/64\"], or leave \"ranges\" out to use the node subnet of the twill agent".into());
    }
    let mut out: Vec<IpNet> = Vec::new();
    for r in raw {
        let net: IpNet = r
            .parse()
            .map_err(|_| format!("range {r:?} is not a CIDR such as 10.88.0.0/16"))?;
        if net.trunc() != net {
            return Err(format!(
                "range {r} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        check_not_reserved(&net).map_err(|m| format!("range {m}"))?;
        if out
            .iter()
            .any(|o| o.addr().is_ipv4() == net.addr().is_ipv4())
        {
            return Err(format!(
                "range {r}: at most one IPv4 and one IPv6 range may be given (dual-stack)"
            ));
        }
        out.push(net);
    }
    Ok(out)
}

/// One input of the parser's fuzz target and property tests: `CNI_ARGS` up to the first NUL
/// byte, the network configuration (with its `runtimeConfig`) after it. Parses both and
/// panics if anything that parses breaks an invariant: a spec network name, an absolute
/// `dataDir`, no reserved range, a valid interface name for the bridge.
#[doc(hidden)]
pub fn check_parse(data: &[u8]) {
    let (args, conf) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&[][..], data),
    };
    let args = String::from_utf8_lossy(args).into_owned();
    let vars = |k: &str| match k {
        "CNI_COMMAND" => Some("DEL".to_string()),
        "CNI_CONTAINERID" => Some("c1".to_string()),
        "CNI_IFNAME" => Some("eth0".to_string()),
        "CNI_ARGS" => Some(args.clone()),
        _ => None,
    };
    if let Ok(env) = Env::from_vars(vars) {
        for k in env.args.keys() {
            assert!(!k.contains(';'), "CNI_ARGS key {k:?} holds a separator");
        }
    }
    let _ = peek_version(conf);
    // Cluster mode reads `<dataDir>/node.json`: keep the fuzzer off the real filesystem.
    let Ok(value) = serde_json::from_slice::<Value>(conf) else {
        assert!(NetConf::parse(conf).is_err());
        return;
    };
    // `"ranges": null` is the same as no `ranges` (serde's Option): cluster mode, checked above
    // only for not panicking.
    if value.get("ranges").is_none_or(Value::is_null) {
        return;
    }
    if let Ok(c) = NetConf::parse(conf) {
        assert!(valid_network_name(&c.name), "{:?}", c.name);
        assert!(c.data_dir.is_absolute(), "{:?}", c.data_dir);
        assert!(!c.ranges.is_empty() && c.ranges.len() <= 2);
        for r in &c.ranges {
            assert!(check_not_reserved(r).is_ok(), "{r}");
            assert_eq!(r.trunc(), *r);
        }
        assert!(validate_ifname(&c.bridge).is_ok());
        assert_eq!(c.cluster, Cluster::Off);
        assert!(!c.ipam_dir().components().any(|p| matches!(
            p,
            std::path::Component::ParentDir | std::path::Component::CurDir
        )));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn add_needs_container_netns_and_ifname() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ])
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("CNI_CONTAINERID"));
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("CNI_NETNS"));
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c/1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/x"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("characters"));
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "a-very-long-interface"),
            ("CNI_NETNS", "/x"),
        ])
        .unwrap_err();
        assert!(e.msg.contains("longer than 15"));
    }

    #[test]
    fn del_does_not_need_netns_and_unknown_verbs_are_refused() {
        assert!(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0")
            ])
            .is_ok()
        );
        let e = env(&[("CNI_COMMAND", "FROB")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
    }

    #[test]
    fn cni_args_are_parsed() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "K8S_POD_NAME=a;IgnoreUnknown=1"),
        ])
        .unwrap();
        assert_eq!(e.args["K8S_POD_NAME"], "a");
        assert!(
            env(&[
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "c1"),
                ("CNI_IFNAME", "eth0"),
                ("CNI_ARGS", "garbage")
            ])
            .is_err()
        );
    }

    #[test]
    fn config_defaults_and_errors() {
        let c = NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","type":"twill","ranges":["10.88.0.0/16","fd88::/64"],"extra":1}"#).unwrap();
        assert_eq!(c.mode, Mode::Bridge);
        assert_eq!(c.bridge, "twill0");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.ranges.len(), 2);

        let e = NetConf::parse(b"{not json").unwrap_err();
        assert_eq!(e.code, code::DECODE);
        let e = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"n","ranges":["10.0.0.0/8"]}"#)
            .unwrap_err();
        assert_eq!(e.code, code::INCOMPATIBLE_VERSION);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","ranges":["10.0.0.1/8"]}"#)
            .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        assert!(e.msg.contains("10.0.0.0/8"));
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","mode":"tunnel","ranges":["10.0.0.0/8"]}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, code::INVALID_CONFIG);
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ranges":["10.0.0.0/8","10.1.0.0/16"]}"#,
        )
        .unwrap_err();
        assert!(e.msg.contains("at most one IPv4"));
        // No `ranges` (or `"ranges": null`): cluster mode, pending until the agent writes the
        // node file.
        let c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","dataDir":"/nonexistent/twill"}"#)
                .unwrap();
        assert!(matches!(c.cluster, Cluster::Pending(_)));
        let null = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ranges":null,"dataDir":"/nonexistent/twill"}"#,
        )
        .unwrap();
        assert!(matches!(null.cluster, Cluster::Pending(_)));
        let e = c.require_ranges().unwrap_err();
        assert_eq!(e.code, code::TRY_AGAIN_LATER);
        assert!(e.msg.contains("/nonexistent/twill/node.json"));
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","ranges":["fd00::/64"],"mtu":1000}"#,
        )
        .unwrap_err();
        assert!(e.msg.contains("mtu"));
    }

    #[test]
    fn names_data_dirs_and_reserved_ranges() {
        for name in ["n", "N1", "9", "a.b-c_d"] {
            assert!(valid_network_name(name), "{name}");
        }
        for name in ["", ".", "..", "-a", "_a", ".a", "a/b", "a b", "é"] {
            assert!(!valid_network_name(name), "{name}");
        }
        for dir in ["", "rel", "./x"] {
            let conf = format!(
                r#"{{"cniVersion":"1.0.0","name":"n","ranges":["10.0.0.0/8"],"dataDir":"{dir}"}}"#
            );
            let e = NetConf::parse(conf.as_bytes()).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.msg.contains("dataDir"), "{}", e.msg);
        }
        for bad in [
            "0.0.0.0/0",
            "127.0.0.0/8",
            "169.254.0.0/16",
            "224.0.0.0/4",
            "240.0.0.0/4",
            "::/0",
            "::1/128",
            "fe80::/10",
            "ff00::/8",
        ] {
            assert!(check_not_reserved(&bad.parse().unwrap()).is_err(), "{bad}");
        }
        for good in [
            "10.0.0.0/8",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "fd00::/8",
            "2001:db8::/32",
        ] {
            assert!(check_not_reserved(&good.parse().unwrap()).is_ok(), "{good}");
        }
    }

    #[test]
    fn check_parse_accepts_anything_without_panicking() {
        check_parse(b"");
        check_parse(b"K8S_POD_NAME=a;x\0{}");
        check_parse(br#"{"cniVersion":"1.1.0","name":"n","ranges":["10.0.0.0/24"]}"#);
        check_parse(br#"{"cniVersion":"1.1.0","name":"..","ranges":["10.0.0.0/24"]}"#);
    }
}
