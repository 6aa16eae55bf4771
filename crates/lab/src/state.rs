//! `state.json`: what a lab is made of, so that `status`, `exec`, `ping`, `down` and tests in
//! other processes can find its namespaces, addresses and processes. Written after every
//! step of `up` (a crashed `up` still leaves a usable record) and replaced atomically.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::plan::{Backend, EncryptMode, Family, IpFamily, PodMode, Underlay};

/// The file name inside the lab's state directory.
pub const STATE_FILE: &str = "state.json";
/// Bumped when the layout changes incompatibly.
pub const STATE_VERSION: u32 = 1;

/// A whole lab.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub version: u32,
    pub name: String,
    pub backend: Backend,
    pub direct_routing: bool,
    /// WireGuard encryption of node-to-node pod traffic on a backend that is otherwise clear
    /// (`--encrypt`); absent for clear labs and for the wireguard backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt: Option<EncryptMode>,
    pub underlay: Underlay,
    /// Dual-stack labs only (IPv4 labs, and labs made before dual-stack, have no key).
    #[serde(default, skip_serializing_if = "IpFamily::is_ipv4")]
    pub ip_family: IpFamily,
    /// Labs made before pod modes existed used bridges.
    #[serde(default)]
    pub pod_mode: PodMode,
    pub pods_per_node: u32,
    /// The twill executable the lab runs (agents, plugin, status); empty for a lab that only
    /// has its topology.
    pub twill: PathBuf,
    /// The store URL every agent was given.
    pub store: String,
    pub underlay_ns: String,
    /// None with the embedded store (one node).
    pub etcd: Option<Etcd>,
    pub hosts: Vec<Host>,
    pub pods: Vec<Pod>,
    /// BIRD routers of the lab (BGP labs only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub birds: Vec<Bird>,
}

/// A BIRD 2 daemon in one of the lab's namespaces; its files live in the state directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bird {
    /// A name unique in the lab (`tor`, `rr`, `client`, ...).
    pub name: String,
    pub netns: String,
    /// Its address (also its router ID).
    pub ip: Ipv4Addr,
    pub conf: PathBuf,
    /// The control socket, for `birdc -s`.
    pub socket: PathBuf,
    pub log: PathBuf,
    pub pid: Option<u32>,
}

/// The lab's etcd, running in the underlay namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Etcd {
    pub bin: PathBuf,
    pub pid: Option<u32>,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Where its clients reach it: the first segment's IPv4 gateway, or its IPv6 twin in an
    /// IPv6-only lab.
    pub ip: IpAddr,
    /// The directory of the CA and certificates when etcd speaks TLS and asks every client
    /// for a certificate (the default); None for a plain etcd (`--plain-etcd`, or labs made
    /// before TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pki: Option<PathBuf>,
}

/// One host: a namespace with `eth0` on the underlay, an agent and its data directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// From 1; the node is `h<index>`.
    pub index: u32,
    pub node: String,
    pub netns: String,
    /// Its IPv4 underlay address, prefix length and gateway (none in an IPv6-only lab).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_len: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// The underlay bridge it is plugged into (its L2 segment).
    pub bridge: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub agent_pid: Option<u32>,
    /// Its IPv6 underlay address (prefix [`crate::plan::UNDERLAY_PREFIX6`]) and gateway, in
    /// dual-stack and IPv6-only labs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway6: Option<Ipv6Addr>,
}

/// One pod, attached by the plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pod {
    /// Its host's index.
    pub host: u32,
    /// From 1 within its host.
    pub index: u32,
    /// `h<i>-p<j>`.
    pub name: String,
    pub netns: String,
    /// Its IPv4 address, and as the plugin returned it (with prefix length); none in an
    /// IPv6-only lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The Kubernetes identity it was given (`namespace/name`), if any: the plugin got it in
    /// CNI_ARGS, with its labels in runtimeConfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// Its IPv6 address in dual-stack and IPv6-only labs, and as the plugin returned it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address6: Option<String>,
}

impl Pod {
    /// Pod `j` of host `i`, as the plugin's ADD result gave its IPv4 address (none in an
    /// IPv6-only lab: see [`Pod::with_ipv6`]).
    pub fn attached(
        i: u32,
        j: u32,
        netns: String,
        v4: Option<(String, Ipv4Addr)>,
        identity: Option<String>,
    ) -> Pod {
        let (address, ip) = v4.map(|(a, ip)| (Some(a), Some(ip))).unwrap_or_default();
        Pod {
            host: i,
            index: j,
            name: crate::plan::pod_name(i, j),
            netns,
            ip,
            address,
            identity,
            ip6: None,
            address6: None,
        }
    }

    /// Its IPv4 address; pods of IPv4 and dual-stack labs have one (tests of such labs use
    /// this).
    pub fn ip4(&self) -> Ipv4Addr {
        self.ip
            .unwrap_or_else(|| panic!("pod {} has no IPv4 address (an IPv6-only lab)", self.name))
    }

    /// Its address: the IPv4 one, or the IPv6 one in an IPv6-only lab.
    pub fn any_ip(&self) -> IpAddr {
        match (self.ip, self.ip6) {
            (Some(ip), _) => ip.into(),
            (None, Some(ip6)) => ip6.into(),
            (None, None) => unreachable!("the lab records a pod only with an address"),
        }
    }

    /// The same pod with the IPv6 address the plugin gave it (as returned, and the address).
    pub fn with_ipv6(mut self, v6: Option<(String, Ipv6Addr)>) -> Pod {
        (self.address6, self.ip6) = v6.map(|(a, ip)| (Some(a), Some(ip))).unwrap_or_default();
        self
    }

    /// Its address of `family`, if it has one.
    pub fn addr(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4 => self.ip.map(IpAddr::from),
            Family::Ipv6 => self.ip6.map(IpAddr::from),
        }
    }
}

impl Host {
    /// Its IPv4 underlay address; hosts of IPv4 and dual-stack labs have one (tests of such
    /// labs use this).
    pub fn ip4(&self) -> Ipv4Addr {
        self.ip.unwrap_or_else(|| {
            panic!(
                "host {} has no IPv4 underlay address (an IPv6-only lab)",
                self.node
            )
        })
    }

    /// Its underlay address: the IPv4 one, or the IPv6 one in an IPv6-only lab.
    pub fn underlay_ip(&self) -> IpAddr {
        match (self.ip, self.ip6) {
            (Some(ip), _) => ip.into(),
            (None, Some(ip6)) => ip6.into(),
            (None, None) => unreachable!("the lab gives every host an underlay address"),
        }
    }
}

impl State {
    /// Reads `dir/state.json`.
    pub fn load(dir: &Path) -> Result<State> {
        let path = dir.join(STATE_FILE);
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let state: State =
            serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        anyhow::ensure!(
            state.version == STATE_VERSION,
            "{} has version {}, this twill understands {STATE_VERSION}",
            path.display(),
            state.version
        );
        Ok(state)
    }

    /// Writes `dir/state.json` by rename, so a reader never sees half a file.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)? + "\n";
        // Readable by anyone, as `std::fs::write` made it (0666 less the usual umask 022): it
        // holds names and addresses of the lab, no secret.
        twill_types::fs::write_atomic(&dir.join(STATE_FILE), text.as_bytes(), 0o644)?;
        Ok(())
    }

    /// Host `i` (from 1).
    pub fn host(&self, i: u32) -> Option<&Host> {
        self.hosts.iter().find(|h| h.index == i)
    }

    pub fn host_mut(&mut self, i: u32) -> Option<&mut Host> {
        self.hosts.iter_mut().find(|h| h.index == i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> State {
        State {
            version: STATE_VERSION,
            name: "t".into(),
            backend: Backend::HostGw,
            direct_routing: true,
            encrypt: None,
            underlay: Underlay::Routed,
            ip_family: IpFamily::Ipv4,
            pod_mode: PodMode::Routed,
            pods_per_node: 1,
            twill: "/usr/bin/twill".into(),
            store: "etcd://192.168.1.1:2379".into(),
            underlay_ns: "twl-t-u".into(),
            etcd: Some(Etcd {
                bin: "/usr/bin/etcd".into(),
                pid: Some(42),
                data_dir: "/run/twill/lab/t/etcd".into(),
                log: "/run/twill/lab/t/etcd.log".into(),
                ip: Ipv4Addr::new(192, 168, 1, 1).into(),
                pki: None,
            }),
            hosts: vec![Host {
                index: 1,
                node: "h1".into(),
                netns: "twl-t-h1".into(),
                ip: Some(Ipv4Addr::new(192, 168, 1, 11)),
                prefix_len: Some(24),
                gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
                bridge: "br1".into(),
                data_dir: "/run/twill/lab/t/h1".into(),
                log: "/run/twill/lab/t/h1/agent.log".into(),
                agent_pid: None,
                ip6: None,
                gateway6: None,
            }],
            birds: Vec::new(),
            pods: vec![Pod {
                host: 1,
                index: 1,
                name: "h1-p1".into(),
                netns: "twl-t-h1-p1".into(),
                ip: Some(Ipv4Addr::new(10, 244, 7, 2)),
                address: Some("10.244.7.2/24".into()),
                identity: Some("x/a".into()),
                ip6: None,
                address6: None,
            }],
        }
    }

    #[test]
    fn round_trip() {
        let dir = twill_testkit::TempDir::new("lab-state");
        let s = sample();
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), s);
        // Nothing left beside it (no temporary file).
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [STATE_FILE]);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        // The names users and scripts grep for.
        for needle in [
            r#""backend": "host-gw""#,
            r#""underlay": "routed""#,
            r#""agentPid": null"#,
            r#""directRouting": true"#,
            r#""ip": "192.168.1.11""#,
            r#""prefixLen": 24"#,
            r#""address": "10.244.7.2/24""#,
        ] {
            assert!(text.contains(needle), "{needle} missing in {text}");
        }
        assert_eq!(s.host(1).unwrap().node, "h1");
        assert!(s.host(2).is_none());
    }

    /// IPv4 labs write no dual-stack key; dual-stack labs round-trip theirs.
    #[test]
    fn dual_stack_fields() {
        let dir = twill_testkit::TempDir::new("lab-state");
        let s = sample();
        s.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        for key in ["ipFamily", "ip6", "gateway6", "address6"] {
            assert!(!text.contains(key), "{key} in an IPv4 lab's state: {text}");
        }
        let mut dual = sample();
        dual.ip_family = IpFamily::Dual;
        dual.hosts[0].ip6 = Some("fd00:1::11".parse().unwrap());
        dual.hosts[0].gateway6 = Some("fd00:1::1".parse().unwrap());
        dual.pods[0] = dual.pods[0].clone().with_ipv6(Some((
            "fd00:10:244:7::2/64".into(),
            "fd00:10:244:7::2".parse().unwrap(),
        )));
        dual.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), dual);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.contains(r#""ipFamily": "dual""#), "{text}");
        let pod = &dual.pods[0];
        assert_eq!(
            pod.addr(Family::Ipv6).unwrap().to_string(),
            "fd00:10:244:7::2"
        );
        assert_eq!(pod.addr(Family::Ipv4).unwrap().to_string(), "10.244.7.2");
        assert_eq!(sample().pods[0].addr(Family::Ipv6), None);
    }

    /// An IPv6-only lab's hosts and pods have no IPv4 keys at all, and round-trip.
    #[test]
    fn ipv6_only_fields() {
        let dir = twill_testkit::TempDir::new("lab-state");
        let mut v6 = sample();
        v6.ip_family = IpFamily::Ipv6;
        let h = &mut v6.hosts[0];
        (h.ip, h.prefix_len, h.gateway) = (None, None, None);
        h.ip6 = Some("fd00:1::11".parse().unwrap());
        h.gateway6 = Some("fd00:1::1".parse().unwrap());
        v6.pods[0] = Pod::attached(1, 1, "twl-t-h1-p1".into(), None, None).with_ipv6(Some((
            "fd00:10:244:7::2/64".into(),
            "fd00:10:244:7::2".parse().unwrap(),
        )));
        v6.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()).unwrap(), v6);
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        let parts = serde_json::to_string(&(&v6.hosts, &v6.pods)).unwrap();
        for key in [r#""ip":"#, "prefixLen", r#""gateway":"#, r#""address":"#] {
            assert!(
                !parts.contains(key),
                "{key} in an IPv6-only lab's hosts or pods: {parts}"
            );
        }
        assert!(text.contains(r#""ipFamily": "ipv6""#), "{text}");
        assert_eq!(v6.hosts[0].underlay_ip().to_string(), "fd00:1::11");
        assert_eq!(v6.pods[0].any_ip().to_string(), "fd00:10:244:7::2");
        assert_eq!(v6.pods[0].addr(Family::Ipv4), None);
        assert_eq!(sample().hosts[0].underlay_ip().to_string(), "192.168.1.11");
        assert_eq!(sample().pods[0].any_ip().to_string(), "10.244.7.2");
    }

    #[test]
    fn refuses_other_versions_and_garbage() {
        let dir = twill_testkit::TempDir::new("lab-state");
        let mut s = sample();
        s.version = 99;
        s.save(dir.path()).unwrap();
        assert!(
            State::load(dir.path())
                .unwrap_err()
                .to_string()
                .contains("version 99")
        );
        std::fs::write(dir.path().join(STATE_FILE), "{").unwrap();
        assert!(State::load(dir.path()).is_err());
        let missing = twill_testkit::TempDir::new("lab-state");
        assert!(State::load(missing.path()).is_err());
    }
}
