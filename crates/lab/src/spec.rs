//! What a lab is made of, before it exists: [`LabSpec`], the options of `twill lab up` and of
//! tests that build a lab, and the checks that refuse what cannot be built before anything is
//! made.

use std::path::PathBuf;

use anyhow::{Result, ensure};

use crate::plan::{self, Backend, EncryptMode, IpFamily, PodMode, Underlay};

/// What to build; see [`Lab::up`](crate::Lab::up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    pub name: String,
    pub nodes: u32,
    pub backend: Backend,
    pub direct_routing: bool,
    /// WireGuard encryption of node-to-node pod traffic on a clear backend (twill's
    /// `wireguard` switch); the wireguard backend encrypts without it.
    pub encrypt: Option<EncryptMode>,
    pub underlay: Underlay,
    /// IPv4 only (the default), or dual-stack underlay and pods.
    pub ip_family: IpFamily,
    /// Hosts of a dual-stack lab whose underlay link stays IPv4 only (their pods still get
    /// IPv6): peers must carry their pods' IPv6 over the IPv4 underlay.
    pub ipv4_underlay_hosts: Vec<u32>,
    pub pod_mode: PodMode,
    pub pods_per_node: u32,
    pub etcd_bin: PathBuf,
    /// etcd speaks only TLS and asks every client for a certificate of the lab's CA (the
    /// default); false runs it on plain HTTP, open to anyone who reaches it.
    pub etcd_tls: bool,
    /// Progress lines on stderr (the CLI turns this on).
    pub verbose: bool,
    /// The `bgp` section (YAML body): the cluster config is then twill's YAML form with it.
    pub bgp: Option<String>,
    /// BIRD protocols (config body) for a BIRD router in the underlay namespace, started
    /// before the agents: a top-of-rack for the routed underlay, a reflector on l2.
    pub bird_router: Option<String>,
}

impl LabSpec {
    /// Two hosts on an L2 underlay, VXLAN, two pods each.
    pub fn new(name: impl Into<String>) -> LabSpec {
        LabSpec {
            name: name.into(),
            nodes: 2,
            backend: Backend::Vxlan,
            direct_routing: false,
            encrypt: None,
            underlay: Underlay::L2,
            ip_family: IpFamily::Ipv4,
            ipv4_underlay_hosts: Vec::new(),
            pod_mode: PodMode::Bridge,
            pods_per_node: 2,
            etcd_bin: PathBuf::from("/usr/bin/etcd"),
            etcd_tls: true,
            verbose: false,
            bgp: None,
            bird_router: None,
        }
    }

    /// A cluster config with this `bgp` section (YAML body, any indentation).
    pub fn bgp(mut self, section: impl Into<String>) -> LabSpec {
        self.bgp = Some(section.into());
        self
    }

    /// Runs BIRD with these protocols in the underlay namespace (see [`plan::bird_conf`]).
    pub fn bird_router(mut self, protocols: impl Into<String>) -> LabSpec {
        self.bird_router = Some(protocols.into());
        self
    }

    pub fn nodes(mut self, n: u32) -> LabSpec {
        self.nodes = n;
        self
    }

    pub fn backend(mut self, b: Backend) -> LabSpec {
        self.backend = b;
        self
    }

    pub fn direct_routing(mut self, on: bool) -> LabSpec {
        self.direct_routing = on;
        self
    }

    /// Encrypts node-to-node pod traffic with WireGuard (`mode`: all of it, or only across
    /// underlay subnets).
    pub fn encrypt(mut self, mode: EncryptMode) -> LabSpec {
        self.encrypt = Some(mode);
        self
    }

    pub fn underlay(mut self, u: Underlay) -> LabSpec {
        self.underlay = u;
        self
    }

    /// `--ip-family`: dual gives every underlay link and every pod an IPv6 address too.
    pub fn ip_family(mut self, f: IpFamily) -> LabSpec {
        self.ip_family = f;
        self
    }

    /// In a dual-stack lab, leaves these hosts' underlay link without IPv6 (for tests).
    pub fn ipv4_underlay_hosts(mut self, hosts: impl Into<Vec<u32>>) -> LabSpec {
        self.ipv4_underlay_hosts = hosts.into();
        self
    }

    /// Whether host `i`'s underlay link has an IPv6 address.
    pub fn has_underlay6(&self, i: u32) -> bool {
        self.ip_family.has_ipv6() && !self.ipv4_underlay_hosts.contains(&i)
    }

    pub fn pod_mode(mut self, m: PodMode) -> LabSpec {
        self.pod_mode = m;
        self
    }

    pub fn pods_per_node(mut self, k: u32) -> LabSpec {
        self.pods_per_node = k;
        self
    }

    pub fn etcd_bin(mut self, path: impl Into<PathBuf>) -> LabSpec {
        self.etcd_bin = path.into();
        self
    }

    /// TLS with client certificates on the lab's etcd (default true).
    pub fn etcd_tls(mut self, on: bool) -> LabSpec {
        self.etcd_tls = on;
        self
    }

    pub fn verbose(mut self, on: bool) -> LabSpec {
        self.verbose = on;
        self
    }

    /// Refuses what cannot be built, before anything is made.
    pub fn validate(&self) -> Result<()> {
        plan::validate_name(&self.name)?;
        ensure!(
            (1..=plan::MAX_NODES).contains(&self.nodes),
            "--nodes must be 1 to {}, not {}",
            plan::MAX_NODES,
            self.nodes
        );
        ensure!(
            self.backend != Backend::Bgp || self.bgp.is_some(),
            "the bgp backend needs a bgp section (LabSpec::bgp, or --bgp FILE)"
        );
        ensure!(
            self.backend != Backend::Wireguard || self.encrypt.is_none(),
            "--encrypt is for the clear backends: the wireguard backend encrypts everything"
        );
        ensure!(
            self.pods_per_node <= plan::MAX_PODS_PER_NODE,
            "--pods-per-node must be at most {}, not {}",
            plan::MAX_PODS_PER_NODE,
            self.pods_per_node
        );
        self.validate_ip_family()
    }

    /// Dual-stack and IPv6-only labs run every backend (bgp with BIRD routers too), clear or
    /// encrypted; only a dual-stack lab can leave some hosts' underlay without IPv6.
    fn validate_ip_family(&self) -> Result<()> {
        ensure!(
            self.ipv4_underlay_hosts.is_empty()
                || (self.ip_family == IpFamily::Dual
                    && self
                        .ipv4_underlay_hosts
                        .iter()
                        .all(|i| (1..=self.nodes).contains(i))),
            "IPv4-only underlay hosts are for dual-stack labs, and must be hosts of the lab"
        );
        Ok(())
    }

    /// One node runs on the embedded store; more need etcd.
    pub fn needs_etcd(&self) -> bool {
        self.nodes > 1
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn spec_builder_and_validation() {
        let s = LabSpec::new("t1")
            .nodes(5)
            .backend(Backend::HostGw)
            .direct_routing(true)
            .underlay(Underlay::Routed)
            .pods_per_node(3)
            .etcd_bin("/opt/etcd")
            .verbose(true);
        assert_eq!(s.nodes, 5);
        assert_eq!(s.backend, Backend::HostGw);
        assert!(s.direct_routing);
        assert_eq!(s.underlay, Underlay::Routed);
        assert_eq!(s.pods_per_node, 3);
        assert_eq!(s.etcd_bin, Path::new("/opt/etcd"));
        s.validate().unwrap();
        assert!(s.needs_etcd());
        assert!(!LabSpec::new("x").nodes(1).needs_etcd());
        assert!(LabSpec::new("x").nodes(0).validate().is_err());
        assert!(LabSpec::new("x").nodes(241).validate().is_err());
        assert!(LabSpec::new("x").pods_per_node(201).validate().is_err());
        LabSpec::new("x").pods_per_node(0).validate().unwrap();
        assert!(LabSpec::new("a/b").validate().is_err());
        let enc = LabSpec::new("x").encrypt(EncryptMode::CrossSubnet);
        assert_eq!(enc.encrypt, Some(EncryptMode::CrossSubnet));
        enc.validate().unwrap();
        LabSpec::new("x")
            .backend(Backend::Wireguard)
            .validate()
            .unwrap();
        assert!(
            LabSpec::new("x")
                .backend(Backend::Wireguard)
                .encrypt(EncryptMode::Always)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn ip_family_validation() {
        let dual = |b| LabSpec::new("x").backend(b).ip_family(IpFamily::Dual);
        assert_eq!(dual(Backend::Vxlan).ip_family, IpFamily::Dual);
        dual(Backend::Vxlan).validate().unwrap();
        dual(Backend::HostGw).validate().unwrap();
        dual(Backend::Vxlan)
            .underlay(Underlay::Routed)
            .direct_routing(true)
            .validate()
            .unwrap();
        dual(Backend::Udp).validate().unwrap();
        dual(Backend::Ipip)
            .underlay(Underlay::Routed)
            .validate()
            .unwrap();
        dual(Backend::Wireguard).validate().unwrap();
        dual(Backend::Bgp).bgp("asNumber: 1").validate().unwrap();
        dual(Backend::Bgp)
            .underlay(Underlay::Routed)
            .bgp("asNumber: 1")
            .bird_router("")
            .validate()
            .unwrap();
        dual(Backend::Vxlan)
            .encrypt(EncryptMode::Always)
            .validate()
            .unwrap();
        dual(Backend::Bgp)
            .bgp("asNumber: 1")
            .encrypt(EncryptMode::Always)
            .validate()
            .unwrap();
        let v6 = |b| LabSpec::new("x").backend(b).ip_family(IpFamily::Ipv6);
        for b in [Backend::HostGw, Backend::Vxlan, Backend::Udp, Backend::Ipip] {
            v6(b).validate().unwrap();
            v6(b)
                .underlay(Underlay::Routed)
                .direct_routing(true)
                .validate()
                .unwrap();
        }
        v6(Backend::Vxlan)
            .pod_mode(PodMode::Routed)
            .validate()
            .unwrap();
        v6(Backend::Wireguard).validate().unwrap();
        v6(Backend::HostGw)
            .encrypt(EncryptMode::CrossSubnet)
            .validate()
            .unwrap();
        v6(Backend::Bgp)
            .underlay(Underlay::Routed)
            .bgp("asNumber: 1")
            .bird_router("")
            .validate()
            .unwrap();
        assert!(
            v6(Backend::Vxlan)
                .ipv4_underlay_hosts([1])
                .validate()
                .is_err()
        );
        assert!(v6(Backend::Vxlan).has_underlay6(2));
        let mixed = dual(Backend::Vxlan).ipv4_underlay_hosts([2]);
        mixed.validate().unwrap();
        assert!(mixed.has_underlay6(1) && !mixed.has_underlay6(2));
        assert!(!LabSpec::new("x").has_underlay6(1));
        assert!(
            dual(Backend::Vxlan)
                .ipv4_underlay_hosts([3])
                .validate()
                .is_err()
        );
        assert!(
            LabSpec::new("x")
                .ipv4_underlay_hosts([1])
                .validate()
                .is_err()
        );
        // IPv4 labs keep every option they had.
        LabSpec::new("x").backend(Backend::Udp).validate().unwrap();
    }
}
