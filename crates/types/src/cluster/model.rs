//! The normalized cluster config: its types, the constants and defaults they are built from,
//! and the questions callers ask of a config (which pool holds an address, how many subnets a
//! pool has, how much each packet loses to encapsulation).
//!
//! Every form is read into these types; the store holds them as JSON.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::auth::Secret;
use super::bgp::BgpConfig;
use super::host_access::HostAccess;

/// How traffic between nodes is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BackendKind {
    /// Plain routes via the peer's address; peers must share the L2 segment.
    #[serde(rename = "host-gw")]
    HostGw,
    /// Kernel VXLAN with Flannel's scheme (route + ARP + FDB per peer).
    #[serde(rename = "vxlan")]
    Vxlan,
    /// Userspace UDP encapsulation over TUN (issue 4).
    #[serde(rename = "udp")]
    Udp,
    /// IP-in-IP (issue 4).
    #[serde(rename = "ipip")]
    Ipip,
    /// Every peer through WireGuard (twill's userspace engine on the TUN device `twill.wg`).
    #[serde(rename = "wireguard")]
    Wireguard,
    /// No encapsulation and no lease-based routes: the BGP speaker's learned routes are the
    /// routes (Calico's BGP networking with `Never` pools).
    #[serde(rename = "bgp")]
    Bgp,
}

/// Calico's encapsulation modes for `vxlanMode` / `ipipMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum EncapMode {
    /// Encapsulate traffic to every peer.
    Always,
    /// Encapsulate only to peers in another underlay subnet; route directly otherwise.
    CrossSubnet,
    /// Never encapsulate.
    #[default]
    Never,
}

/// The backend settings of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub kind: BackendKind,
    /// VXLAN network identifier (Flannel's `VNI`, default 1). 0 for backends other than vxlan,
    /// which have no VNI.
    pub vni: u32,
    /// UDP port of the encapsulation (Flannel's `Port`; vxlan default 8472, udp 8285,
    /// wireguard's `ListenPort` 51820). 0 for host-gw and ipip, which use no port.
    pub port: u16,
    /// Route directly to peers on the same underlay subnet, encapsulate to the rest
    /// (Flannel's `DirectRouting`, Calico's `CrossSubnet`).
    pub direct_routing: bool,
}

/// One pool of pod addresses, cut into one subnet per node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool {
    /// A name for messages and status (`default` for Flannel's single network).
    pub name: String,
    pub cidr: Ipv4Net,
    /// Prefix length of each node's subnet (Flannel's `SubnetLen`, Calico's `blockSize`).
    pub block_size: u8,
    /// First and last node subnet that may be leased (Flannel's `SubnetMin`/`SubnetMax`);
    /// both are subnets of `cidr` with prefix `block_size`.
    pub subnet_min: Ipv4Net,
    pub subnet_max: Ipv4Net,
    /// Masquerade pod traffic that leaves the cluster's pools. Always true for Flannel's
    /// net-conf.json, which has no such key: flanneld is nearly always run with `--ip-masq`.
    pub nat_outgoing: bool,
}

/// One pool of IPv6 pod addresses, cut into one subnet per node (Flannel's `IPv6Network`,
/// `IPv6SubnetLen`, `IPv6SubnetMin`/`IPv6SubnetMax`; a Calico-style pool whose `cidr` is
/// IPv6). A node leases at most one IPv6 subnet, beside its IPv4 one, in the same record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Pool6 {
    pub name: String,
    pub cidr: Ipv6Net,
    /// Prefix length of each node's subnet (Flannel's `IPv6SubnetLen`, default 64; Calico's
    /// `blockSize`, at most [`MAX_BLOCK_SIZE6`](super::MAX_BLOCK_SIZE6)).
    pub block_size: u8,
    /// First and last node subnet that may be leased; both are subnets of `cidr` with prefix
    /// `block_size`.
    pub subnet_min: Ipv6Net,
    pub subnet_max: Ipv6Net,
    /// Masquerade IPv6 pod traffic that leaves the cluster's IPv6 pools (as Calico does for
    /// IPv6 pools with `natOutgoing`).
    pub nat_outgoing: bool,
}

/// The normalized cluster config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConfig {
    /// At least one pool; pools never overlap.
    pub pools: Vec<Pool>,
    /// IPv6 pools (a dual-stack cluster); pools never overlap. Skipped when empty so IPv4-only
    /// configs keep their normalized form.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ipv6_pools: Vec<Pool6>,
    pub backend: Backend,
    /// Routing by BGP (Calico-like); absent: no BGP speaker runs. Skipped when absent so
    /// configs without it keep their normalized form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpConfig>,
    /// WireGuard between nodes: the settings of the `wireguard` backend (always present with
    /// it), or encryption of node-to-node pod traffic on any other backend (Calico's
    /// `wireguard: {enabled: true}`). Absent: nothing is encrypted. Skipped when absent so
    /// configs without it keep their normalized form.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wireguard: Option<Wireguard>,
    /// What pods may reach of their own node (`workloadToHost`, `workloadToHostPorts`; top-level
    /// keys of twill's form, defaults for Flannel's). Left out of the normalized form when it is
    /// the default, so configs without it keep their normalized form.
    #[serde(flatten)]
    pub host_access: HostAccess,
}

/// WireGuard's settings (Flannel's `ListenPort`, `PSK`, `PersistentKeepaliveInterval`;
/// Calico's `wireguard` block with twill's `mode`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Wireguard {
    /// The UDP port every node listens on (and sends to).
    pub listen_port: u16,
    /// The WireGuard device's MTU; default: the underlay's less [`WIREGUARD_OVERHEAD`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// `Always`: every peer's pod traffic is encrypted; `CrossSubnet`: only the traffic to
    /// peers outside this node's underlay subnet (the rest takes the backend's clear path).
    #[serde(default = "always")]
    pub mode: EncapMode,
    /// Seconds between keepalives to each peer (0: off, WireGuard's default).
    #[serde(default)]
    pub persistent_keepalive: u16,
    /// A pre-shared key mixed into every handshake (WireGuard's optional post-quantum
    /// layer): standard base64 of 32 bytes, the same on every node. A secret: `Debug` hides it
    /// and [`Wireguard::redacted`] is what printing code shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preshared_key: Option<Secret>,
}

fn always() -> EncapMode {
    EncapMode::Always
}

/// Bytes each packet loses to WireGuard on an IPv4 underlay: outer IPv4 20 + UDP 8 +
/// WireGuard's header 16 and tag 16.
pub const WIREGUARD_OVERHEAD: u32 = 60;
/// The smallest WireGuard MTU: the datagram size every IPv4 host must accept (RFC 791).
pub const MIN_WIREGUARD_MTU: u32 = 576;
/// The largest WireGuard MTU (a TUN device's limit).
pub const MAX_WIREGUARD_MTU: u32 = 65_535 - WIREGUARD_OVERHEAD;

impl Wireguard {
    /// The settings with every default: port `listen_port`, mode Always, no keepalive, no
    /// pre-shared key, the MTU from the underlay.
    pub fn with_port(listen_port: u16) -> Wireguard {
        Wireguard {
            listen_port,
            mtu: None,
            mode: EncapMode::Always,
            persistent_keepalive: 0,
            preshared_key: None,
        }
    }

    /// The settings as printing code shows them: the pre-shared key replaced by a placeholder.
    pub fn redacted(&self) -> Wireguard {
        Wireguard {
            preshared_key: self
                .preshared_key
                .as_ref()
                .map(|_| Secret::new(super::auth::REDACTED)),
            ..self.clone()
        }
    }

    /// The device MTU on an underlay of `underlay_mtu`.
    pub fn device_mtu(&self, underlay_mtu: u32) -> u32 {
        self.mtu
            .unwrap_or_else(|| underlay_mtu.saturating_sub(WIREGUARD_OVERHEAD))
    }
}

/// Flannel's default VXLAN network identifier.
pub const DEFAULT_VNI: u32 = 1;
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Linux's VXLAN port, which Flannel keeps (IANA's 4789 came later; mixing them breaks peers).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// Flannel's udp backend port.
pub const DEFAULT_UDP_PORT: u16 = 8285;
/// Flannel's wireguard backend `ListenPort`.
pub const DEFAULT_WIREGUARD_PORT: u16 = 51820;

impl BackendKind {
    /// Every backend, in the order messages list them.
    pub const ALL: [BackendKind; 6] = [
        BackendKind::Udp,
        BackendKind::Vxlan,
        BackendKind::HostGw,
        BackendKind::Ipip,
        BackendKind::Wireguard,
        BackendKind::Bgp,
    ];

    /// The name used in configs and leases (`host-gw`, `vxlan`, ...).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::HostGw => "host-gw",
            BackendKind::Vxlan => "vxlan",
            BackendKind::Udp => "udp",
            BackendKind::Ipip => "ipip",
            BackendKind::Wireguard => "wireguard",
            BackendKind::Bgp => "bgp",
        }
    }

    /// The backend with this config name.
    pub fn from_name(name: &str) -> Option<BackendKind> {
        BackendKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Bytes each packet to a peer loses to encapsulation, so pods' MTU is the underlay's
    /// minus this.
    pub fn mtu_overhead(self) -> u32 {
        match self {
            // Outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
            BackendKind::Vxlan => 50,
            // Outer IPv4 20 + UDP 8; the payload is the bare IP packet.
            BackendKind::Udp => 28,
            BackendKind::Ipip => 20,
            BackendKind::HostGw | BackendKind::Bgp => 0,
            // The underlay is IPv4 (twill has no IPv6 yet): outer IPv4 20 + UDP 8 + its own 32.
            BackendKind::Wireguard => WIREGUARD_OVERHEAD,
        }
    }

    /// The default UDP port, or 0 for backends that use none.
    pub fn default_port(self) -> u16 {
        match self {
            BackendKind::Vxlan => DEFAULT_VXLAN_PORT,
            BackendKind::Udp => DEFAULT_UDP_PORT,
            BackendKind::Wireguard => DEFAULT_WIREGUARD_PORT,
            BackendKind::HostGw | BackendKind::Ipip | BackendKind::Bgp => 0,
        }
    }

    pub(super) fn uses_port(self) -> bool {
        self.default_port() != 0
    }

    /// Only encapsulating backends that can also route directly have a `DirectRouting` switch.
    pub(super) fn has_direct_routing(self) -> bool {
        matches!(
            self,
            BackendKind::Vxlan | BackendKind::Ipip | BackendKind::Udp
        )
    }

    pub(super) fn list() -> String {
        BackendKind::ALL.map(BackendKind::name).join(", ")
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl EncapMode {
    /// The name used in configs (`Always`, `CrossSubnet`, `Never`; case matters, as in Calico).
    pub fn name(self) -> &'static str {
        match self {
            EncapMode::Always => "Always",
            EncapMode::CrossSubnet => "CrossSubnet",
            EncapMode::Never => "Never",
        }
    }

    /// The mode with this config name.
    pub fn from_name(name: &str) -> Option<EncapMode> {
        [EncapMode::Always, EncapMode::CrossSubnet, EncapMode::Never]
            .into_iter()
            .find(|m| m.name() == name)
    }
}

impl fmt::Display for EncapMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Backend {
    /// The settings of `kind` with Flannel's defaults.
    pub fn with_defaults(kind: BackendKind) -> Backend {
        Backend {
            kind,
            vni: if kind == BackendKind::Vxlan {
                DEFAULT_VNI
            } else {
                0
            },
            port: kind.default_port(),
            direct_routing: false,
        }
    }
}

impl Pool {
    /// How many node subnets lie between `subnet_min` and `subnet_max`, both included
    /// (0 if they are out of order or not of the block size).
    pub fn subnet_count(&self) -> u64 {
        let (min, max) = (self.subnet_min, self.subnet_max);
        if min.prefix_len() != self.block_size || max.prefix_len() != self.block_size {
            return 0;
        }
        let shift = 32 - u32::from(self.block_size);
        let (lo, hi) = (
            u32::from(min.addr()) >> shift,
            u32::from(max.addr()) >> shift,
        );
        if lo > hi { 0 } else { u64::from(hi - lo) + 1 }
    }
}

impl Pool6 {
    /// How many node subnets lie between `subnet_min` and `subnet_max`, both included
    /// (0 if they are out of order or not of the block size).
    pub fn subnet_count(&self) -> u128 {
        let (min, max) = (self.subnet_min, self.subnet_max);
        if min.prefix_len() != self.block_size || max.prefix_len() != self.block_size {
            return 0;
        }
        let shift = 128 - u32::from(self.block_size);
        let (lo, hi) = (
            u128::from(min.addr()) >> shift,
            u128::from(max.addr()) >> shift,
        );
        if lo > hi { 0 } else { hi - lo + 1 }
    }
}

impl ClusterConfig {
    /// Whether the cluster gives pods IPv6 addresses (it has an IPv6 pool).
    pub fn has_ipv6(&self) -> bool {
        !self.ipv6_pools.is_empty()
    }

    /// Whether `ip` is a pod address of some IPv6 pool.
    pub fn contains6(&self, ip: Ipv6Addr) -> bool {
        self.ipv6_pools.iter().any(|p| p.cidr.contains(&ip))
    }

    /// The IPv6 pool a subnet lies in, whatever its prefix.
    pub fn pool6_of(&self, subnet: Ipv6Net) -> Option<&Pool6> {
        self.ipv6_pools.iter().find(|p| p.cidr.contains(&subnet))
    }

    /// Whether `ip` is a pod address of some pool.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.pools.iter().any(|p| p.cidr.contains(&ip))
    }

    /// The pool a subnet lies in, whatever its prefix (pools never overlap, so there is at
    /// most one).
    pub fn pool_of(&self, subnet: Ipv4Net) -> Option<&Pool> {
        self.pools.iter().find(|p| p.cidr.contains(&subnet))
    }

    /// Bytes per packet the backend's encapsulation takes (see [`BackendKind::mtu_overhead`]).
    pub fn mtu_overhead(&self) -> u32 {
        self.backend.kind.mtu_overhead()
    }

    /// The WireGuard settings when WireGuard carries any traffic: the `wireguard` backend's
    /// (its defaults when the config has none), or encryption on another backend.
    pub fn wireguard(&self) -> Option<Wireguard> {
        match (&self.wireguard, self.backend.kind) {
            (Some(wg), _) => Some(wg.clone()),
            (None, BackendKind::Wireguard) => Some(Wireguard::with_port(self.backend.port)),
            (None, _) => None,
        }
    }
}

/// The `n`th subnet of length `block` in `cidr`.
fn nth_subnet(cidr: Ipv4Net, block: u8, n: u64) -> Ipv4Net {
    let start = u64::from(u32::from(cidr.network())) + (n << (32 - u32::from(block)));
    let addr = Ipv4Addr::from(u32::try_from(start).unwrap_or(u32::MAX));
    Ipv4Net::new(addr, block).expect("block sizes are checked to be at most 30")
}

/// The first and last node subnet by default. The first subnet of the network is skipped, as
/// Flannel does: its network address is the network's own, which the VXLAN device would
/// carry as its address.
pub(super) fn default_bounds(cidr: Ipv4Net, block: u8) -> (Ipv4Net, Ipv4Net) {
    let count = 1u64 << (block - cidr.prefix_len());
    (
        nth_subnet(cidr, block, 1),
        nth_subnet(cidr, block, count - 1),
    )
}

/// The `n`th subnet of length `block` in `cidr`. `n` is below the number of such subnets
/// (`2^(block - prefix)`), so the offset stays below `2^(128 - prefix)` and, added to the
/// network address (whose last `128 - prefix` bits are zero), never overflows; `block` is at
/// least 1, so the shift is at most 127.
fn nth_subnet6(cidr: Ipv6Net, block: u8, n: u128) -> Ipv6Net {
    let offset = n << (128 - u32::from(block));
    let addr = Ipv6Addr::from(u128::from(cidr.network()) | offset);
    Ipv6Net::new(addr, block).expect("IPv6 block sizes are checked to be at most 122")
}

/// The first and last IPv6 node subnet by default: the first subnet is skipped, as for IPv4
/// (and as Flannel does for its `IPv6SubnetMin`). `block` is longer than the prefix of `cidr`.
pub(super) fn default_bounds6(cidr: Ipv6Net, block: u8) -> (Ipv6Net, Ipv6Net) {
    // At most 2^122 (a /0 cut into /122s): fits.
    let count = 1u128 << (block - cidr.prefix_len());
    (
        nth_subnet6(cidr, block, 1),
        nth_subnet6(cidr, block, count - 1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{DEFAULT_IPV6_SUBNET_LEN, MAX_BLOCK_SIZE6};

    fn net6(text: &str) -> Ipv6Net {
        text.parse().unwrap()
    }

    #[test]
    fn default_ipv6_bounds_hold_at_the_edges_of_the_address_space() {
        // The whole space cut in two: the second half is the only leasable subnet.
        assert_eq!(
            default_bounds6(net6("::/0"), 1),
            (net6("8000::/1"), net6("8000::/1"))
        );
        // The whole space cut into /122s: 2^122 subnets, the last one at the very top.
        let (min, max) = default_bounds6(net6("::/0"), MAX_BLOCK_SIZE6);
        assert_eq!(
            (min, max),
            (
                net6("::40/122"),
                net6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffc0/122")
            )
        );
        let pool = Pool6 {
            name: "all".into(),
            cidr: net6("::/0"),
            block_size: MAX_BLOCK_SIZE6,
            subnet_min: min,
            subnet_max: max,
            nat_outgoing: false,
        };
        assert_eq!(pool.subnet_count(), (1u128 << 122) - 1);
        // A network at the top of the space, cut once more than it must be.
        assert_eq!(
            default_bounds6(net6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff00/120"), 122),
            (
                net6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ff40/122"),
                net6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffc0/122")
            )
        );
        assert_eq!(
            default_bounds6(net6("fd00:10:244::/56"), DEFAULT_IPV6_SUBNET_LEN),
            (net6("fd00:10:244:1::/64"), net6("fd00:10:244:ff::/64"))
        );
    }
}
