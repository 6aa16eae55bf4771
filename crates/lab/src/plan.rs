//! The lab's plan, computed from its name and options alone: namespace names, underlay
//! addresses, store URL, the agent's, etcd's and the plugin's inputs, and which pod pairs are
//! expected to reach each other. Nothing here touches the kernel, so all of it is unit-tested.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use twill_store::pki::Pki;

/// Where every lab keeps its state; `/run` so that a reboot (which also drops the namespaces)
/// leaves no stale lab behind.
pub const STATE_ROOT: &str = "/run/twill/lab";
/// The cluster's pod network (Flannel's default).
pub const POD_NETWORK: &str = "10.244.0.0/16";
/// Prefix length of each node's pod subnet.
pub const SUBNET_LEN: u8 = 24;
/// The cluster's IPv6 pod network in dual-stack labs: a ULA /56, room for 256 node /64s.
pub const POD_NETWORK6: &str = "fd00:10:244::/56";
/// Prefix length of each node's IPv6 pod subnet (Flannel's default `IPv6SubnetLen`).
pub const SUBNET_LEN6: u8 = 64;
/// Prefix length of every underlay segment's IPv6 subnet.
pub const UNDERLAY_PREFIX6: u8 = 64;
/// The lab name used when none is given.
pub const DEFAULT_NAME: &str = "lab";
/// Every namespace of every lab starts with this, so `down` can find them without state.
pub const NS_PREFIX: &str = "twl-";
/// Host and pod interface name (veth names are limited to 15 characters inside a namespace,
/// so the lab never derives them from the lab name).
pub const IFACE: &str = "eth0";
/// etcd's client port on the underlay.
pub const ETCD_PORT: u16 = 2379;
/// etcd's plain-HTTP `/health` (`--listen-metrics-urls`), on the underlay namespace's
/// loopback only: the lab's readiness probe, whatever the client port asks for.
pub const ETCD_METRICS_PORT: u16 = 2381;
/// The client certificate the CLI (and tests, and tools) use on a lab's etcd; each agent has
/// its own, named after its node.
pub const CLI_CLIENT: &str = "cli";
/// Bounds that keep every host address inside its /24 (10 + i <= 254) and every pod inside
/// its node's /24.
pub const MAX_NODES: u32 = 240;
pub const MAX_PODS_PER_NODE: u32 = 200;
/// The UDP port of every node's WireGuard (Flannel's and Calico's default).
pub const WIREGUARD_PORT: u16 = 51820;

/// `Display` as the name `$name` gives: what the command line and the configs call it.
macro_rules! display_as {
    ($ty:ty, $name:ident) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.$name())
            }
        }
    };
}

/// How traffic between nodes is carried (Flannel's `Backend.Type`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    HostGw,
    #[default]
    Vxlan,
    Udp,
    Ipip,
    /// Routing by BGP, no encapsulation (a twill cluster config with a `bgp` section).
    Bgp,
    /// Every node-to-node pod packet encrypted by WireGuard (Flannel's `wireguard` backend).
    Wireguard,
}

/// Which node-to-node pod traffic `--encrypt` sends through WireGuard on a backend that is
/// otherwise clear (twill's `wireguard.mode`, after Calico's CrossSubnet).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum EncryptMode {
    /// All of it.
    #[default]
    Always,
    /// Only traffic to nodes on another underlay subnet; peers on this one stay clear.
    CrossSubnet,
}

impl EncryptMode {
    /// The name in twill's cluster config (`wireguard.mode`).
    pub fn config_name(self) -> &'static str {
        match self {
            EncryptMode::Always => "Always",
            EncryptMode::CrossSubnet => "CrossSubnet",
        }
    }
}

display_as!(EncryptMode, config_name);

/// How the CNI plugin attaches pods on each host (its `mode`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum PodMode {
    /// Pods on a bridge `twill0` (Flannel's layout).
    #[default]
    Bridge,
    /// Each pod a /32 route to its veth, no bridge (Calico's layout).
    Routed,
}

impl PodMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PodMode::Bridge => "bridge",
            PodMode::Routed => "routed",
        }
    }
}

impl Backend {
    /// The name in net-conf.json and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::HostGw => "host-gw",
            Backend::Vxlan => "vxlan",
            Backend::Udp => "udp",
            Backend::Ipip => "ipip",
            Backend::Bgp => "bgp",
            Backend::Wireguard => "wireguard",
        }
    }
}

display_as!(Backend, as_str);

/// How the hosts are joined.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum Underlay {
    /// One bridge, one subnet: every host is every other host's L2 neighbour.
    #[default]
    L2,
    /// A router between two subnets (odd hosts in one, even hosts in the other), so host-gw
    /// must skip peers and DirectRouting must encapsulate across subnets.
    Routed,
}

impl Underlay {
    pub fn as_str(self) -> &'static str {
        match self {
            Underlay::L2 => "l2",
            Underlay::Routed => "routed",
        }
    }
}

display_as!(Underlay, as_str);

/// Which of the pods' addresses a matrix probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

/// Which address families the lab's underlay and pods have (`--ip-family`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "kebab-case")]
pub enum IpFamily {
    /// IPv4 only: what every lab was before dual-stack.
    #[default]
    Ipv4,
    /// IPv6 only: the underlay links and the pods have IPv6 addresses alone, and the
    /// cluster has only an IPv6 pool (Flannel's `EnableIPv4: false`).
    Ipv6,
    /// Both: every underlay link and every pod has an IPv4 and an IPv6 address.
    Dual,
}

impl IpFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
            IpFamily::Dual => "dual",
        }
    }

    /// Whether the underlay and the pods have IPv6 addresses.
    pub fn has_ipv6(self) -> bool {
        self != IpFamily::Ipv4
    }

    /// Whether the underlay and the pods have IPv4 addresses.
    pub fn has_ipv4(self) -> bool {
        self != IpFamily::Ipv6
    }

    /// For `skip_serializing_if`: IPv4 labs keep the records they always had.
    pub fn is_ipv4(&self) -> bool {
        *self == IpFamily::Ipv4
    }
}

display_as!(IpFamily, as_str);

/// The IPv6 twin of an underlay address: `192.168.C.D` is `fd00:C::D` (the same digits, read
/// as hex), so the IPv6 address names its host and segment at a glance as the IPv4 one does.
pub fn underlay6(v4: Ipv4Addr) -> Ipv6Addr {
    let [_, _, c, d] = v4.octets();
    format!("fd00:{c}::{d}")
        .parse()
        .expect("decimal octets are valid hex groups")
}

/// Refuses names that would escape the state directory or make namespace names ambiguous.
pub fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if name.is_empty() || name.len() > 32 || !ok_chars || name.starts_with('-') {
        bail!("invalid lab name {name:?}: use 1 to 32 letters, digits, '_' or '-' (not first)");
    }
    Ok(())
}

/// The namespace of the underlay (bridge or router, and etcd).
pub fn underlay_ns(lab: &str) -> String {
    format!("{NS_PREFIX}{lab}-u")
}

/// The namespace of host `i` (from 1).
pub fn host_ns(lab: &str, i: u32) -> String {
    format!("{NS_PREFIX}{lab}-h{i}")
}

/// The namespace of pod `j` (from 1) of host `i`.
pub fn pod_ns(lab: &str, i: u32, j: u32) -> String {
    format!("{NS_PREFIX}{lab}-h{i}-p{j}")
}

/// Host `i`'s node name in the cluster.
pub fn node_name(i: u32) -> String {
    format!("h{i}")
}

/// Pod `j` of host `i` as users name it (`lab exec h1-p2`, matrix labels).
pub fn pod_name(i: u32, j: u32) -> String {
    format!("h{i}-p{j}")
}

/// The lab's state directory.
pub fn state_dir(lab: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(lab)
}

/// Host `i`'s agent data directory (also the plugin's `dataDir`).
pub fn host_dir(lab: &str, i: u32) -> PathBuf {
    state_dir(lab).join(node_name(i))
}

/// A namespace of a lab, as users name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Underlay,
    Host(u32),
    Pod(u32, u32),
}

impl Target {
    /// Parses `underlay` (or `u`), `h<i>` or `h<i>-p<j>`.
    pub fn parse(s: &str) -> Result<Target> {
        fn index(s: &str) -> Option<u32> {
            // Only plain decimal: "h01" would otherwise alias "h1".
            if s.is_empty() || s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok()
        }
        if s == "underlay" || s == "u" {
            return Ok(Target::Underlay);
        }
        let parsed = s
            .strip_prefix('h')
            .and_then(|rest| match rest.split_once("-p") {
                None => index(rest).map(Target::Host),
                Some((h, p)) => Some(Target::Pod(index(h)?, index(p)?)),
            });
        match parsed {
            Some(t) => Ok(t),
            None => bail!("unknown target {s:?}: use underlay, h<i> (a host) or h<i>-p<j> (a pod)"),
        }
    }

    /// The namespace name of this target in lab `lab`.
    pub fn netns(self, lab: &str) -> String {
        match self {
            Target::Underlay => underlay_ns(lab),
            Target::Host(i) => host_ns(lab, i),
            Target::Pod(i, j) => pod_ns(lab, i, j),
        }
    }
}

/// True when namespace `netns` is one of lab `lab`'s. Exact, so that `down` of lab `a` never
/// touches lab `a-b` (whose names also start with `twl-a-`).
pub fn belongs_to(lab: &str, netns: &str) -> bool {
    let rest = netns
        .strip_prefix(NS_PREFIX)
        .and_then(|rest| rest.strip_prefix(lab))
        .and_then(|rest| rest.strip_prefix('-'));
    match rest {
        Some("u") => true,
        Some(rest) => matches!(Target::parse(rest), Ok(Target::Host(_) | Target::Pod(..))),
        None => false,
    }
}

/// One underlay segment: a bridge in the underlay namespace and its address (the gateway of
/// the hosts attached to it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub bridge: &'static str,
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// Its IPv6 gateway in dual-stack labs (prefix [`UNDERLAY_PREFIX6`]).
    pub gateway6: Ipv6Addr,
}

/// The segments of an underlay, first one holding the store address.
pub fn segments(underlay: Underlay) -> Vec<Segment> {
    let segment = |bridge, gateway: Ipv4Addr| Segment {
        bridge,
        gateway,
        prefix_len: 24,
        gateway6: underlay6(gateway),
    };
    match underlay {
        Underlay::L2 => vec![segment("br0", Ipv4Addr::new(192, 168, 100, 1))],
        Underlay::Routed => vec![
            segment("br1", Ipv4Addr::new(192, 168, 1, 1)),
            segment("br2", Ipv4Addr::new(192, 168, 2, 1)),
        ],
    }
}

/// Host `i`'s place on the underlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddr {
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Ipv4Addr,
    /// The underlay bridge its `eth0` is plugged into; equal bridges mean one L2 segment.
    pub bridge: &'static str,
    /// Its veth's name in the underlay namespace.
    pub port: String,
    /// Its IPv6 address and gateway in dual-stack labs ([`underlay6`] of the IPv4 ones).
    pub ip6: Ipv6Addr,
    pub gateway6: Ipv6Addr,
}

/// Host `i` (from 1): l2 puts every host on 192.168.100.0/24; routed puts odd hosts on
/// 192.168.1.0/24 and even hosts on 192.168.2.0/24. The last octet is always 10 + i, so an
/// address names its host at a glance.
pub fn host_addr(underlay: Underlay, i: u32) -> HostAddr {
    assert!((1..=MAX_NODES).contains(&i), "host index {i} out of range");
    let segs = segments(underlay);
    let seg = match underlay {
        Underlay::L2 => &segs[0],
        Underlay::Routed => &segs[if i % 2 == 1 { 0 } else { 1 }],
    };
    let [a, b, c, _] = seg.gateway.octets();
    let ip = Ipv4Addr::new(a, b, c, (10 + i) as u8);
    HostAddr {
        ip,
        prefix_len: seg.prefix_len,
        gateway: seg.gateway,
        bridge: seg.bridge,
        port: format!("v{i}"),
        ip6: underlay6(ip),
        gateway6: seg.gateway6,
    }
}

/// The address etcd listens on: the first segment's gateway, which every host reaches
/// (directly, or through the router).
pub fn store_ip(underlay: Underlay) -> Ipv4Addr {
    segments(underlay)[0].gateway
}

/// The address etcd listens on in a lab of `family`: [`store_ip`], or its IPv6 twin in an
/// IPv6-only lab (whose hosts have no IPv4 underlay to reach it by).
pub fn store_addr(underlay: Underlay, family: IpFamily) -> IpAddr {
    if family.has_ipv4() {
        store_ip(underlay).into()
    } else {
        segments(underlay)[0].gateway6.into()
    }
}

/// `ip:port`, with an IPv6 address in brackets (as URLs and etcd's flags write it).
pub fn host_port(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// The store URL the agents and `cluster init` get: one node needs no etcd.
pub fn store_url(lab: &str, nodes: u32, underlay: Underlay, family: IpFamily) -> String {
    if nodes == 1 {
        format!("embedded:{}", state_dir(lab).join("store.redb").display())
    } else {
        format!(
            "etcd://{}",
            host_port(store_addr(underlay, family), ETCD_PORT)
        )
    }
}

/// Flannel's net-conf.json for the lab's cluster (the wireguard backend with its
/// `ListenPort`; a dual-stack lab with Flannel's `EnableIPv6`, `IPv6Network` and
/// `IPv6SubnetLen`, whose pool masquerades like the IPv4 one, as flanneld's `--ip-masq`; an
/// IPv6-only lab with those and `EnableIPv4: false` instead of `Network`).
pub fn net_conf(backend: Backend, direct_routing: bool, ip_family: IpFamily) -> Value {
    let mut conf = json!({
        "Backend": {"Type": backend.as_str(), "DirectRouting": direct_routing},
    });
    if ip_family.has_ipv4() {
        conf["Network"] = POD_NETWORK.into();
        conf["SubnetLen"] = SUBNET_LEN.into();
    } else {
        conf["EnableIPv4"] = false.into();
    }
    if backend == Backend::Wireguard {
        conf["Backend"]["ListenPort"] = WIREGUARD_PORT.into();
    }
    if ip_family.has_ipv6() {
        conf["EnableIPv6"] = true.into();
        conf["IPv6Network"] = POD_NETWORK6.into();
        conf["IPv6SubnetLen"] = SUBNET_LEN6.into();
    }
    conf
}

/// twill's own cluster config in YAML, for labs with a `bgp` section: the lab's pod network as
/// one pool, the backend, and `bgp_yaml` (the section's body, YAML) indented under `bgp:`.
pub fn cluster_yaml(backend: Backend, direct_routing: bool, bgp_yaml: &str) -> String {
    twill_yaml(
        backend,
        direct_routing,
        None,
        Some(bgp_yaml),
        IpFamily::Ipv4,
    )
}

/// twill's own cluster config in YAML, which labs with a `bgp` section or with `--encrypt`
/// need: the backend, the `wireguard` switch that encrypts node-to-node pod traffic whatever
/// the backend (with `encrypt`), the lab's pod network as one pool (a dual-stack lab's IPv6
/// one as a second), and the `bgp` section (`bgp_yaml`, its body in YAML, indented under
/// `bgp:`).
pub fn twill_yaml(
    backend: Backend,
    direct_routing: bool,
    encrypt: Option<EncryptMode>,
    bgp_yaml: Option<&str>,
    ip_family: IpFamily,
) -> String {
    let mut y = format!("backend: {}\n", backend.as_str());
    if direct_routing {
        y.push_str("directRouting: true\n");
    }
    if let Some(mode) = encrypt {
        y.push_str(&format!(
            "wireguard:\n  enabled: true\n  listenPort: {WIREGUARD_PORT}\n  mode: {mode}\n"
        ));
    }
    y.push_str("pools:\n");
    if ip_family.has_ipv4() {
        y.push_str(&format!(
            "  - name: default\n    cidr: {POD_NETWORK}\n    blockSize: {SUBNET_LEN}\n"
        ));
    }
    if ip_family.has_ipv6() {
        y.push_str(&format!(
            "  - name: default6\n    cidr: {POD_NETWORK6}\n    blockSize: {SUBNET_LEN6}\n"
        ));
    }
    let Some(bgp_yaml) = bgp_yaml else {
        return y;
    };
    y.push_str("bgp:\n");
    let body: Vec<&str> = bgp_yaml.lines().filter(|l| !l.trim().is_empty()).collect();
    if body.is_empty() {
        y.push_str("  {}\n");
    }
    // Re-indent under `bgp:` whatever indentation the caller used; the first line may
    // start right after an opening quote, so it does not count.
    let strip = body
        .iter()
        .skip(1)
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    for (n, l) in body.iter().enumerate() {
        y.push_str("  ");
        let indent = l.len() - l.trim_start().len();
        y.push_str(if n == 0 {
            l.trim_start()
        } else {
            &l[strip.min(indent)..]
        });
        y.push('\n');
    }
    y
}

/// BIRD's config for a lab router: its router ID, the device protocol, kernel export (so the
/// namespace forwards along what BIRD learned) and the caller's protocols.
pub fn bird_conf(router_id: Ipv4Addr, body: &str) -> String {
    format!(
        "router id {router_id};\nprotocol device {{ scan time 1; }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; }}\n{body}\n"
    )
}

/// The plugin's network configuration: no `ranges`, so it runs in cluster mode and takes the
/// node's subnet from the agent's files in `dataDir`.
pub fn cni_conf(data_dir: &Path, pod_mode: PodMode) -> Value {
    json!({
        "cniVersion": "1.1.0",
        "name": "lab",
        "type": "twill",
        "mode": pod_mode.as_str(),
        "dataDir": data_dir.display().to_string(),
    })
}

/// The arguments that point twill at the store: `--store URL` and, for an etcd with TLS, the
/// CA and the client certificate of `client` from the PKI directory `pki`.
pub fn store_args(store_url: &str, pki: Option<&Path>, client: &str) -> Vec<String> {
    let mut args = vec!["--store".to_string(), store_url.to_string()];
    if let Some(pki) = pki {
        let pki = Pki::at(pki);
        let path = |p: PathBuf| p.display().to_string();
        args.extend([
            "--etcd-cafile".into(),
            path(pki.ca()),
            "--etcd-certfile".into(),
            path(pki.client_cert(client)),
            "--etcd-keyfile".into(),
            path(pki.client_key(client)),
        ]);
    }
    args
}

/// The agent's arguments (after the twill executable); `store` from [`store_args`];
/// `public_ip6`, the host's IPv6 underlay address in dual-stack labs (`--public-ipv6`).
pub fn agent_args(
    store: &[String],
    i: u32,
    data_dir: &Path,
    public_ip6: Option<Ipv6Addr>,
) -> Vec<String> {
    let mut args = vec!["agent".to_string()];
    args.extend_from_slice(store);
    args.extend([
        "--node-name".into(),
        node_name(i),
        "--iface".into(),
        IFACE.into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ]);
    if let Some(ip6) = public_ip6 {
        args.extend(["--public-ipv6".into(), ip6.to_string()]);
    }
    args
}

/// etcd's arguments: clients on the underlay address (and loopback, for `lab exec underlay
/// etcdctl ...`), peers on loopback since there is one member, `/health` on loopback (plain
/// HTTP, for the lab's readiness probe), and transactions of up to 10000 operations (a `twill
/// policy apply` of a large file is then one transaction, as it is on a production etcd
/// configured for it). With a PKI directory every client and peer URL is TLS and every client
/// must show a certificate of the lab's CA (`--client-cert-auth`).
pub fn etcd_args(ip: IpAddr, data_dir: &Path, pki: Option<&Path>) -> Vec<String> {
    let scheme = if pki.is_some() { "https" } else { "http" };
    let client = format!("{scheme}://{}", host_port(ip, ETCD_PORT));
    let peer = format!("{scheme}://127.0.0.1:2380");
    let mut args: Vec<String> = vec![
        "--name".into(),
        "lab".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen-client-urls".into(),
        format!("{client},{scheme}://127.0.0.1:{ETCD_PORT}"),
        "--advertise-client-urls".into(),
        client,
        "--listen-peer-urls".into(),
        peer.clone(),
        "--initial-advertise-peer-urls".into(),
        peer.clone(),
        "--initial-cluster".into(),
        format!("lab={peer}"),
        "--initial-cluster-state".into(),
        "new".into(),
        "--logger".into(),
        "zap".into(),
        "--log-outputs".into(),
        "stderr".into(),
        "--max-txn-ops".into(),
        "10000".into(),
        "--listen-metrics-urls".into(),
        format!("http://127.0.0.1:{ETCD_METRICS_PORT}"),
    ];
    if let Some(pki) = pki {
        let pki = Pki::at(pki);
        let path = |p: PathBuf| p.display().to_string();
        args.extend([
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            path(pki.ca()),
            "--cert-file".into(),
            path(pki.server_cert()),
            "--key-file".into(),
            path(pki.server_key()),
            "--peer-client-cert-auth".into(),
            "--peer-trusted-ca-file".into(),
            path(pki.ca()),
            "--peer-cert-file".into(),
            path(pki.server_cert()),
            "--peer-key-file".into(),
            path(pki.server_key()),
        ]);
    }
    args
}

/// The names etcd's certificate is valid for: its underlay address and loopback.
pub fn etcd_server_names(ip: IpAddr) -> Vec<String> {
    vec![ip.to_string(), "127.0.0.1".into(), "localhost".into()]
}

/// etcdctl's flags for the lab's etcd from the underlay namespace (over loopback), with the
/// CLI's client certificate when etcd has TLS.
pub fn etcdctl_args(pki: Option<&Path>) -> Vec<String> {
    let mut args = vec!["--endpoints".to_string()];
    match pki {
        Some(pki) => {
            let pki = Pki::at(pki);
            args.extend([
                format!("https://127.0.0.1:{ETCD_PORT}"),
                format!("--cacert={}", pki.ca().display()),
                format!("--cert={}", pki.client_cert(CLI_CLIENT).display()),
                format!("--key={}", pki.client_key(CLI_CLIENT).display()),
            ]);
        }
        None => args.push(format!("http://127.0.0.1:{ETCD_PORT}")),
    }
    args
}

/// The lines of the lab's env file: `twill` (TWILL_STORE, TWILL_ETCD_*) and `etcdctl`
/// (ETCDCTL_*) reach the lab's store from a host namespace after `. FILE`.
pub fn store_env(store_url: &str, etcd_ip: Option<IpAddr>, pki: Option<&Path>) -> String {
    let mut out = format!("export TWILL_STORE={store_url}\n");
    if let Some(ip) = etcd_ip {
        let scheme = if pki.is_some() { "https" } else { "http" };
        let endpoint = host_port(ip, ETCD_PORT);
        out += &format!("export ETCDCTL_ENDPOINTS={scheme}://{endpoint}\n");
    }
    if let Some(pki) = pki {
        let pki = Pki::at(pki);
        let (ca, cert, key) = (
            pki.ca().display().to_string(),
            pki.client_cert(CLI_CLIENT).display().to_string(),
            pki.client_key(CLI_CLIENT).display().to_string(),
        );
        out += &format!(
            "export TWILL_ETCD_CAFILE={ca}\nexport TWILL_ETCD_CERTFILE={cert}\n\
             export TWILL_ETCD_KEYFILE={key}\nexport ETCDCTL_CACERT={ca}\n\
             export ETCDCTL_CERT={cert}\nexport ETCDCTL_KEY={key}\n"
        );
    }
    out
}

/// Whether a pod on host `from` should reach a pod on host `to`. The one exception is host-gw
/// across the routed underlay's subnets: host-gw can only route via an L2 neighbour and has no
/// encapsulation to fall back on (DirectRouting changes nothing for it), so the agent skips
/// such peers. Every other backend encapsulates where it cannot route directly, and so does
/// WireGuard encryption of every peer (`--encrypt`, mode Always: the tunnel runs over the
/// routed underlay, as Calico's does); CrossSubnet encryption carries exactly the peers on
/// other subnets, the ones host-gw skips.
pub fn expected_reachable(
    backend: Backend,
    underlay: Underlay,
    encrypt: Option<EncryptMode>,
    from: u32,
    to: u32,
) -> bool {
    if from == to || backend != Backend::HostGw || encrypt.is_some() {
        return true;
    }
    host_addr(underlay, from).bridge == host_addr(underlay, to).bridge
}

/// Whether pod traffic from host `from` to host `to` crosses the underlay encrypted: always
/// with the wireguard backend, with `--encrypt` Always, and across subnets with CrossSubnet.
pub fn expected_encrypted(
    backend: Backend,
    underlay: Underlay,
    encrypt: Option<EncryptMode>,
    from: u32,
    to: u32,
) -> bool {
    if from == to {
        return false;
    }
    match (backend, encrypt) {
        (Backend::Wireguard, _) | (_, Some(EncryptMode::Always)) => true,
        (_, Some(EncryptMode::CrossSubnet)) => {
            host_addr(underlay, from).bridge != host_addr(underlay, to).bridge
        }
        (_, None) => false,
    }
}

/// What the lab's summary lines add for `--encrypt` (nothing for a clear lab, so their text
/// stays what it always was).
pub fn encryption_note(encrypt: Option<EncryptMode>) -> String {
    match encrypt {
        Some(mode) => format!(", encrypted with WireGuard ({mode})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bgp_cluster_yaml() {
        let y = cluster_yaml(
            Backend::Bgp,
            false,
            "\n    asNumber: 65000\n    peers:\n      - {address: 1.2.3.4, asNumber: 1}\n",
        );
        assert_eq!(
            y,
            "backend: bgp\npools:\n  - name: default\n    cidr: 10.244.0.0/16\n    blockSize: 24\nbgp:\n  asNumber: 65000\n  peers:\n    - {address: 1.2.3.4, asNumber: 1}\n"
        );
        assert!(cluster_yaml(Backend::Bgp, false, "").ends_with("bgp:\n  {}\n"));
        // A dual-stack lab's IPv6 pod network is a second pool, which bgp carries.
        let y = twill_yaml(
            Backend::Bgp,
            false,
            None,
            Some("holdTime: 3"),
            IpFamily::Dual,
        );
        let c =
            twill_types::cluster::ClusterConfig::parse(&y).unwrap_or_else(|e| panic!("{y}: {e}"));
        assert_eq!(c.ipv6_pools.len(), 1, "{y}");
        assert_eq!(c.ipv6_pools[0].cidr.to_string(), POD_NETWORK6);
        assert_eq!(c.ipv6_pools[0].block_size, SUBNET_LEN6);
        let y = cluster_yaml(
            Backend::Bgp,
            false,
            "holdTime: 3\n      nodes:\n        h1: {asNumber: 1}",
        );
        assert!(
            y.ends_with("bgp:\n  holdTime: 3\n  nodes:\n    h1: {asNumber: 1}\n"),
            "{y}"
        );
    }

    #[test]
    fn names() {
        assert_eq!(underlay_ns("lab"), "twl-lab-u");
        assert_eq!(host_ns("lab", 3), "twl-lab-h3");
        assert_eq!(pod_ns("lab", 3, 2), "twl-lab-h3-p2");
        assert_eq!(node_name(12), "h12");
        assert_eq!(pod_name(1, 2), "h1-p2");
        assert_eq!(state_dir("x"), Path::new("/run/twill/lab/x"));
        assert_eq!(host_dir("x", 2), Path::new("/run/twill/lab/x/h2"));
    }

    #[test]
    fn name_validation() {
        for ok in ["lab", "t1a2b", "my_lab", "a-b", "A9"] {
            validate_name(ok).unwrap();
        }
        for bad in ["", "-x", "a/b", "..", "a b", "ü", &"x".repeat(33)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("underlay").unwrap(), Target::Underlay);
        assert_eq!(Target::parse("u").unwrap(), Target::Underlay);
        assert_eq!(Target::parse("h1").unwrap(), Target::Host(1));
        assert_eq!(Target::parse("h12-p3").unwrap(), Target::Pod(12, 3));
        for bad in [
            "h", "h0", "h01", "x1", "h1-p", "h1-q2", "h1-p2-p3", "h-1", "h1p2", "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(Target::Pod(2, 1).netns("t"), "twl-t-h2-p1");
        assert_eq!(Target::Underlay.netns("t"), "twl-t-u");
    }

    #[test]
    fn namespace_ownership_is_exact() {
        assert!(belongs_to("a", "twl-a-u"));
        assert!(belongs_to("a", "twl-a-h1"));
        assert!(belongs_to("a", "twl-a-h10-p2"));
        // Another lab whose name extends this one's.
        assert!(!belongs_to("a", "twl-a-b-u"));
        assert!(!belongs_to("a", "twl-a-b-h1"));
        assert!(!belongs_to("a", "twl-a-h1-h1-p1"));
        assert!(belongs_to("a-h1", "twl-a-h1-h1-p1"));
        assert!(!belongs_to("a-h1", "twl-a-h1-p1"));
        // Strangers.
        assert!(!belongs_to("a", "twl-ab-u"));
        assert!(!belongs_to("a", "tw-a-u"));
        assert!(!belongs_to("a", "twl-a-"));
        assert!(!belongs_to("a", "twl-a-x"));
        assert!(!belongs_to("a", "twl-a-underlay"));
    }

    #[test]
    fn l2_addresses() {
        let h1 = host_addr(Underlay::L2, 1);
        assert_eq!(h1.ip, Ipv4Addr::new(192, 168, 100, 11));
        assert_eq!(h1.gateway, Ipv4Addr::new(192, 168, 100, 1));
        assert_eq!(h1.prefix_len, 24);
        assert_eq!(h1.bridge, "br0");
        assert_eq!(h1.port, "v1");
        let h2 = host_addr(Underlay::L2, 2);
        assert_eq!(h2.ip, Ipv4Addr::new(192, 168, 100, 12));
        assert_eq!(h2.bridge, "br0");
        assert_eq!(
            host_addr(Underlay::L2, MAX_NODES).ip,
            Ipv4Addr::new(192, 168, 100, 250)
        );
        assert_eq!(store_ip(Underlay::L2), Ipv4Addr::new(192, 168, 100, 1));
        assert_eq!(segments(Underlay::L2).len(), 1);
    }

    #[test]
    fn routed_addresses() {
        let h1 = host_addr(Underlay::Routed, 1);
        assert_eq!(h1.ip, Ipv4Addr::new(192, 168, 1, 11));
        assert_eq!(h1.gateway, Ipv4Addr::new(192, 168, 1, 1));
        assert_eq!(h1.bridge, "br1");
        let h2 = host_addr(Underlay::Routed, 2);
        assert_eq!(h2.ip, Ipv4Addr::new(192, 168, 2, 12));
        assert_eq!(h2.gateway, Ipv4Addr::new(192, 168, 2, 1));
        assert_eq!(h2.bridge, "br2");
        assert_eq!(host_addr(Underlay::Routed, 3).bridge, "br1");
        assert_eq!(store_ip(Underlay::Routed), Ipv4Addr::new(192, 168, 1, 1));
        let segs = segments(Underlay::Routed);
        assert_eq!(segs.len(), 2);
        assert_eq!(segs[1].gateway, Ipv4Addr::new(192, 168, 2, 1));
    }

    #[test]
    fn store_urls() {
        assert_eq!(
            store_url("x", 1, Underlay::L2, IpFamily::Ipv4),
            "embedded:/run/twill/lab/x/store.redb"
        );
        assert_eq!(
            store_url("x", 3, Underlay::L2, IpFamily::Ipv4),
            "etcd://192.168.100.1:2379"
        );
        assert_eq!(
            store_url("x", 2, Underlay::Routed, IpFamily::Dual),
            "etcd://192.168.1.1:2379"
        );
        // An IPv6-only lab's hosts reach etcd at the segment gateway's IPv6 twin.
        assert_eq!(
            store_url("x", 2, Underlay::Routed, IpFamily::Ipv6),
            "etcd://[fd00:1::1]:2379"
        );
        assert_eq!(
            store_url("x", 1, Underlay::L2, IpFamily::Ipv6),
            "embedded:/run/twill/lab/x/store.redb"
        );
    }

    #[test]
    fn configs() {
        assert_eq!(
            net_conf(Backend::HostGw, false, IpFamily::Ipv4).to_string(),
            r#"{"Backend":{"DirectRouting":false,"Type":"host-gw"},"Network":"10.244.0.0/16","SubnetLen":24}"#
        );
        assert_eq!(
            net_conf(Backend::Vxlan, true, IpFamily::Ipv4)["Backend"]["DirectRouting"],
            true
        );
        let c = cni_conf(Path::new("/run/twill/lab/x/h1"), PodMode::Bridge);
        assert_eq!(c["dataDir"], "/run/twill/lab/x/h1");
        assert_eq!(c["type"], "twill");
        assert!(c.get("ranges").is_none());
        let store = store_args("etcd://192.168.100.1:2379", None, "h2");
        assert_eq!(
            agent_args(&store, 2, Path::new("/d"), None).join(" "),
            "agent --store etcd://192.168.100.1:2379 --node-name h2 --iface eth0 --data-dir /d"
        );
        let store = store_args("etcd://192.168.100.1:2379", Some(Path::new("/p")), "h2");
        assert_eq!(
            agent_args(&store, 2, Path::new("/d"), None).join(" "),
            "agent --store etcd://192.168.100.1:2379 --etcd-cafile /p/ca.pem \
             --etcd-certfile /p/client-h2.pem --etcd-keyfile /p/client-h2-key.pem \
             --node-name h2 --iface eth0 --data-dir /d"
        );
        let e = etcd_args(Ipv4Addr::new(192, 168, 1, 1).into(), Path::new("/e"), None).join(" ");
        assert!(e.contains("--listen-client-urls http://192.168.1.1:2379,http://127.0.0.1:2379"));
        assert!(e.contains("--data-dir /e"));
        assert!(!e.contains("cert"));
        let e = etcd_args(
            Ipv4Addr::new(192, 168, 1, 1).into(),
            Path::new("/e"),
            Some(Path::new("/p")),
        )
        .join(" ");
        assert!(e.contains("--listen-client-urls https://192.168.1.1:2379,https://127.0.0.1:2379"));
        assert!(e.contains("--advertise-client-urls https://192.168.1.1:2379"));
        assert!(e.contains("--listen-peer-urls https://127.0.0.1:2380"));
        assert!(e.contains("--client-cert-auth --trusted-ca-file /p/ca.pem"));
        assert!(e.contains("--cert-file /p/server.pem --key-file /p/server-key.pem"));
        assert!(e.contains("--peer-client-cert-auth"));
        assert!(e.contains("--listen-metrics-urls http://127.0.0.1:2381"));
        assert!(!e.contains("http://192.168.1.1"));
        let env = store_env(
            "etcd://192.168.1.1:2379",
            Some(Ipv4Addr::new(192, 168, 1, 1).into()),
            Some(Path::new("/p")),
        );
        assert!(env.contains("export ETCDCTL_ENDPOINTS=https://192.168.1.1:2379\n"));
        assert!(env.contains("export TWILL_ETCD_CERTFILE=/p/client-cli.pem\n"));
        assert!(env.contains("export ETCDCTL_KEY=/p/client-cli-key.pem\n"));
    }

    #[test]
    fn backend_names() {
        use clap::ValueEnum;
        for b in Backend::value_variants() {
            assert_eq!(Backend::from_str(b.as_str(), false).unwrap(), *b);
            assert_eq!(serde_json::to_value(b).unwrap(), b.as_str());
        }
        for u in Underlay::value_variants() {
            assert_eq!(Underlay::from_str(u.as_str(), false).unwrap(), *u);
            assert_eq!(serde_json::to_value(u).unwrap(), u.as_str());
        }
    }

    #[test]
    fn reachability_rules() {
        use Backend::*;
        use Underlay::*;
        // Same host, and everything on l2, always.
        for b in [HostGw, Vxlan, Udp, Ipip, Wireguard] {
            assert!(expected_reachable(b, L2, None, 1, 2));
            assert!(expected_reachable(b, Routed, None, 2, 2));
            // Encapsulating backends cross the router.
            if b != HostGw {
                assert!(expected_reachable(b, Routed, None, 1, 2));
            }
        }
        // host-gw on the routed underlay: same subnet yes, across no, both ways.
        assert!(expected_reachable(HostGw, Routed, None, 1, 3));
        assert!(expected_reachable(HostGw, Routed, None, 2, 4));
        assert!(!expected_reachable(HostGw, Routed, None, 1, 2));
        assert!(!expected_reachable(HostGw, Routed, None, 4, 1));
        // WireGuard carries host-gw's peers across the router.
        for mode in [EncryptMode::Always, EncryptMode::CrossSubnet] {
            assert!(expected_reachable(HostGw, Routed, Some(mode), 1, 2));
        }
    }

    #[test]
    fn encryption_rules() {
        use Backend::*;
        use EncryptMode::*;
        use Underlay::*;
        assert!(expected_encrypted(Wireguard, L2, None, 1, 2));
        assert!(!expected_encrypted(Wireguard, L2, None, 2, 2));
        assert!(!expected_encrypted(Vxlan, Routed, None, 1, 2));
        assert!(expected_encrypted(HostGw, L2, Some(Always), 1, 2));
        assert!(expected_encrypted(Bgp, Routed, Some(Always), 1, 3));
        // CrossSubnet: h1 and h3 share a segment on the routed underlay, h2 does not.
        assert!(!expected_encrypted(Vxlan, Routed, Some(CrossSubnet), 1, 3));
        assert!(expected_encrypted(Vxlan, Routed, Some(CrossSubnet), 1, 2));
        assert!(expected_encrypted(Vxlan, Routed, Some(CrossSubnet), 2, 3));
        assert!(!expected_encrypted(Vxlan, L2, Some(CrossSubnet), 1, 2));
    }

    /// What the lab writes is what the agent's config parser reads as meant.
    #[test]
    fn generated_configs_parse() {
        use twill_types::cluster::{BackendKind, ClusterConfig, EncapMode};
        let wg =
            ClusterConfig::parse(&net_conf(Backend::Wireguard, false, IpFamily::Ipv4).to_string())
                .unwrap();
        assert_eq!(wg.backend.kind, BackendKind::Wireguard);
        assert_eq!(wg.backend.port, WIREGUARD_PORT);
        for (backend, mode, bgp) in [
            (Backend::HostGw, EncryptMode::Always, None),
            (Backend::Vxlan, EncryptMode::CrossSubnet, None),
            (Backend::Udp, EncryptMode::Always, None),
            (Backend::Bgp, EncryptMode::Always, Some("holdTime: 3")),
        ] {
            let text = twill_yaml(backend, false, Some(mode), bgp, IpFamily::Ipv4);
            let c = ClusterConfig::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.backend.kind.to_string(), backend.as_str(), "{text}");
            let wg = c
                .wireguard
                .unwrap_or_else(|| panic!("no wireguard: {text}"));
            assert_eq!(wg.listen_port, WIREGUARD_PORT);
            let want = match mode {
                EncryptMode::Always => EncapMode::Always,
                EncryptMode::CrossSubnet => EncapMode::CrossSubnet,
            };
            assert_eq!(wg.mode, want, "{text}");
        }
    }

    #[test]
    fn encrypted_configs() {
        let wg = net_conf(Backend::Wireguard, false, IpFamily::Ipv4);
        assert_eq!(
            wg.to_string(),
            r#"{"Backend":{"DirectRouting":false,"ListenPort":51820,"Type":"wireguard"},"Network":"10.244.0.0/16","SubnetLen":24}"#
        );
        assert!(
            net_conf(Backend::Vxlan, false, IpFamily::Ipv4)["Backend"]
                .get("ListenPort")
                .is_none()
        );
        assert_eq!(
            twill_yaml(
                Backend::Vxlan,
                true,
                Some(EncryptMode::CrossSubnet),
                None,
                IpFamily::Ipv4
            ),
            "backend: vxlan\ndirectRouting: true\nwireguard:\n  enabled: true\n  listenPort: 51820\n  mode: CrossSubnet\npools:\n  - name: default\n    cidr: 10.244.0.0/16\n    blockSize: 24\n"
        );
        let y = twill_yaml(
            Backend::Bgp,
            false,
            Some(EncryptMode::Always),
            Some("holdTime: 3"),
            IpFamily::Ipv4,
        );
        assert!(
            y.starts_with("backend: bgp\nwireguard:\n  enabled: true\n  listenPort: 51820\n  mode: Always\npools:"),
            "{y}"
        );
        assert!(y.ends_with("bgp:\n  holdTime: 3\n"), "{y}");
        assert_eq!(
            twill_yaml(Backend::Bgp, false, None, Some("a: 1"), IpFamily::Ipv4),
            cluster_yaml(Backend::Bgp, false, "a: 1")
        );
    }
}

#[cfg(test)]
mod dual_stack_tests {
    use super::*;

    #[test]
    fn ipv6_underlay_addresses() {
        assert_eq!(
            underlay6(Ipv4Addr::new(192, 168, 100, 11)),
            "fd00:100::11".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            underlay6(Ipv4Addr::new(192, 168, 2, 250)),
            "fd00:2::250".parse::<Ipv6Addr>().unwrap()
        );
        let h1 = host_addr(Underlay::L2, 1);
        assert_eq!(h1.ip6.to_string(), "fd00:100::11");
        assert_eq!(h1.gateway6.to_string(), "fd00:100::1");
        let h2 = host_addr(Underlay::Routed, 2);
        assert_eq!(h2.ip6.to_string(), "fd00:2::12");
        assert_eq!(h2.gateway6.to_string(), "fd00:2::1");
        assert_eq!(host_addr(Underlay::Routed, 3).ip6.to_string(), "fd00:1::13");
        let segs = segments(Underlay::Routed);
        assert_eq!(segs[0].gateway6.to_string(), "fd00:1::1");
        assert_eq!(segs[1].gateway6.to_string(), "fd00:2::1");
        // Every host of the largest lab has its own address.
        let all: std::collections::HashSet<Ipv6Addr> = (1..=MAX_NODES)
            .map(|i| host_addr(Underlay::L2, i).ip6)
            .collect();
        assert_eq!(all.len(), MAX_NODES as usize);
    }

    #[test]
    fn ip_family_names() {
        use clap::ValueEnum;
        for f in IpFamily::value_variants() {
            assert_eq!(IpFamily::from_str(f.as_str(), false).unwrap(), *f);
            assert_eq!(serde_json::to_value(f).unwrap(), f.as_str());
        }
        assert!(!IpFamily::Ipv4.has_ipv6());
        assert!(IpFamily::Dual.has_ipv6());
        assert_eq!(IpFamily::default(), IpFamily::Ipv4);
    }

    #[test]
    fn dual_stack_configs() {
        // IPv4 labs write exactly what they always wrote.
        assert!(
            net_conf(Backend::Vxlan, false, IpFamily::Ipv4)
                .get("EnableIPv6")
                .is_none()
        );
        assert_eq!(
            net_conf(Backend::HostGw, false, IpFamily::Dual).to_string(),
            r#"{"Backend":{"DirectRouting":false,"Type":"host-gw"},"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":64,"Network":"10.244.0.0/16","SubnetLen":24}"#
        );
        let store = store_args("etcd://192.168.100.1:2379", None, "h2");
        let ip6 = host_addr(Underlay::L2, 2).ip6;
        assert_eq!(
            agent_args(&store, 2, Path::new("/d"), Some(ip6)).join(" "),
            "agent --store etcd://192.168.100.1:2379 --node-name h2 --iface eth0 --data-dir /d \
             --public-ipv6 fd00:100::12"
        );
    }

    /// Dual-stack WireGuard: the wireguard backend in Flannel's form and encryption in
    /// twill's form both parse to a dual-stack cluster with WireGuard.
    #[test]
    fn dual_stack_wireguard_configs_parse() {
        use twill_types::cluster::ClusterConfig;
        let flannel = net_conf(Backend::Wireguard, false, IpFamily::Dual).to_string();
        let c = ClusterConfig::parse(&flannel).unwrap_or_else(|e| panic!("{flannel}: {e}"));
        assert!(
            c.wireguard().is_some() && c.ipv6_pools.len() == 1,
            "{flannel}"
        );
        for mode in [EncryptMode::Always, EncryptMode::CrossSubnet] {
            let text = twill_yaml(Backend::Vxlan, false, Some(mode), None, IpFamily::Dual);
            let c = ClusterConfig::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert!(c.wireguard.is_some(), "{text}");
            assert_eq!(c.ipv6_pools.len(), 1, "{text}");
            assert_eq!(c.ipv6_pools[0].cidr.to_string(), POD_NETWORK6);
            assert_eq!(c.ipv6_pools[0].block_size, SUBNET_LEN6);
        }
    }

    /// The dual-stack config the lab writes is what the agent's parser reads as a dual-stack
    /// cluster whose IPv6 pool masquerades like the IPv4 one.
    #[test]
    fn dual_stack_config_parses() {
        use twill_types::cluster::{BackendKind, ClusterConfig};
        for (backend, direct_routing) in [
            (Backend::HostGw, false),
            (Backend::Vxlan, false),
            (Backend::Vxlan, true),
        ] {
            let text = net_conf(backend, direct_routing, IpFamily::Dual).to_string();
            let c = ClusterConfig::parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.backend.kind.to_string(), backend.as_str());
            assert!(matches!(
                c.backend.kind,
                BackendKind::HostGw | BackendKind::Vxlan
            ));
            assert_eq!(c.ipv6_pools.len(), 1, "{text}");
            let pool = &c.ipv6_pools[0];
            assert_eq!(pool.cidr.to_string(), POD_NETWORK6);
            assert_eq!(pool.block_size, SUBNET_LEN6);
            assert!(pool.nat_outgoing, "{text}");
            assert!(c.pools[0].nat_outgoing);
        }
    }

    /// An IPv6-only lab: Flannel's form without `Network` and with `EnableIPv4: false`,
    /// twill's form with the IPv6 pool alone; both parse to a cluster without IPv4 pools;
    /// etcd listens (and its certificate is valid) on the IPv6 gateway, in brackets where a
    /// URL needs them.
    #[test]
    fn ipv6_only_configs() {
        use twill_types::cluster::ClusterConfig;
        assert!(IpFamily::Ipv6.has_ipv6() && !IpFamily::Ipv6.has_ipv4());
        assert!(IpFamily::Dual.has_ipv4() && IpFamily::Ipv4.has_ipv4());
        let flannel = net_conf(Backend::Vxlan, true, IpFamily::Ipv6);
        assert_eq!(
            flannel.to_string(),
            r#"{"Backend":{"DirectRouting":true,"Type":"vxlan"},"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","IPv6SubnetLen":64}"#
        );
        let c = ClusterConfig::parse(&flannel.to_string()).unwrap();
        assert!(c.pools.is_empty() && c.ipv6_pools.len() == 1, "{flannel}");
        assert!(c.ipv6_pools[0].nat_outgoing);
        let yaml = twill_yaml(Backend::HostGw, false, None, None, IpFamily::Ipv6);
        assert_eq!(
            yaml,
            "backend: host-gw\npools:\n  - name: default6\n    cidr: fd00:10:244::/56\n    blockSize: 64\n"
        );
        let c = ClusterConfig::parse(&yaml).unwrap_or_else(|e| panic!("{yaml}: {e}"));
        assert!(c.pools.is_empty() && c.ipv6_pools.len() == 1, "{yaml}");
        let ip = store_addr(Underlay::L2, IpFamily::Ipv6);
        assert_eq!(ip.to_string(), "fd00:100::1");
        assert_eq!(
            store_addr(Underlay::L2, IpFamily::Dual).to_string(),
            "192.168.100.1"
        );
        let e = etcd_args(ip, Path::new("/e"), Some(Path::new("/p"))).join(" ");
        assert!(
            e.contains("--listen-client-urls https://[fd00:100::1]:2379,https://127.0.0.1:2379"),
            "{e}"
        );
        assert!(
            e.contains("--advertise-client-urls https://[fd00:100::1]:2379"),
            "{e}"
        );
        assert_eq!(etcd_server_names(ip)[0], "fd00:100::1");
        let env = store_env("etcd://[fd00:100::1]:2379", Some(ip), None);
        assert!(
            env.contains("export ETCDCTL_ENDPOINTS=http://[fd00:100::1]:2379\n"),
            "{env}"
        );
    }
}
