//! The invariants every accepted config has, checked on the normalized config whatever form it
//! came from (messages name the fields in that form's words): pools of both families well
//! formed, disjoint and clear of reserved ranges, enough IPv6 node subnets for the IPv4 ones,
//! backend settings in range and able to carry the pools' families, host access and BGP
//! consistent. Also the check against the networks of the host `twill cluster init` runs on.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::control_ports::{control_tcp_ports, tunnel_udp_ports};
use super::error::ConfigError;
use super::fields::{
    At, ConfigForm, Fields, PoolFields, PoolPlaces, TWILL_FIELDS, check_block, check_cidr, fail,
};
use super::host_access::PortProto;
use super::model::{
    Backend, BackendKind, ClusterConfig, EncapMode, MAX_VNI, MAX_WIREGUARD_MTU, MIN_WIREGUARD_MTU,
    Pool, Pool6,
};

impl ClusterConfig {
    /// Checks the invariants every accepted config has (fields named as in the normalized
    /// form and in twill's TOML/YAML).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate(self, &TWILL_FIELDS, &PoolPlaces::normalized())
    }

    /// Refuses a pool that overlaps a network of this host (the subnet of one of its
    /// addresses, or a route's destination): its pods would take addresses the host already
    /// reaches elsewhere, and the host would route to pods what was meant for that network.
    /// The caller leaves out what must not count (default routes, twill's own networks).
    /// Paths name the pools as the normalized form does (`pools[i]`).
    pub fn check_host_networks(
        &self,
        host: &[HostNet],
        form: ConfigForm,
    ) -> Result<(), ConfigError> {
        let fields = form.fields();
        let places = PoolPlaces::normalized();
        refuse_host_overlap(
            self.pools.iter().map(|p| (p.name.as_str(), p.cidr.into())),
            host.iter().map(|h| (h.net.into(), h.source.as_str())),
            fields.pool.cidr,
            |i, name| places.at(fields, i, name),
        )
    }

    /// [`ClusterConfig::check_host_networks`] for the IPv6 pools and the host's IPv6 networks
    /// (link-local and loopback ones need not be left out: no pool can overlap them). Paths
    /// name the pools as the normalized form does (`ipv6Pools[i]`).
    pub fn check_host_networks6(
        &self,
        host: &[HostNet6],
        form: ConfigForm,
    ) -> Result<(), ConfigError> {
        let fields = form.fields();
        let places = PoolPlaces::normalized();
        refuse_host_overlap(
            self.ipv6_pools
                .iter()
                .map(|p| (p.name.as_str(), p.cidr.into())),
            host.iter().map(|h| (h.net.into(), h.source.as_str())),
            fields.pool6.cidr,
            |i, name| places.at6(fields, i, name),
        )
    }
}

/// Refuses the first of `pools` (name, CIDR) that overlaps one of the host's networks
/// (network, where it comes from); `at` places the `i`th pool, named `name`, and
/// `cidr_field` names its CIDR field. Both lists hold one IP family.
fn refuse_host_overlap<'a>(
    pools: impl Iterator<Item = (&'a str, IpNet)>,
    host: impl Iterator<Item = (IpNet, &'a str)> + Clone,
    cidr_field: &str,
    at: impl Fn(usize, &str) -> At,
) -> Result<(), ConfigError> {
    for (i, (name, cidr)) in pools.enumerate() {
        let overlapping = |&(net, _): &(IpNet, &str)| {
            net.contains(&cidr.network()) || cidr.contains(&net.network())
        };
        if let Some((net, source)) = host.clone().find(overlapping) {
            return host_overlap(&at(i, name), cidr_field, cidr, net, source);
        }
    }
    Ok(())
}

/// The refusal of pool `cidr` (field `field`, at `at`) that overlaps the host's `net`.
fn host_overlap(
    at: &At,
    field: &str,
    cidr: IpNet,
    net: IpNet,
    source: &str,
) -> Result<(), ConfigError> {
    fail(ConfigError::conflict(
        at.field(field),
        source,
        format!(
            "{at}{field} {cidr} overlaps {net} of this host ({source}): pods would take \
             addresses the host already uses or routes elsewhere; choose a range the host does \
             not use"
        ),
    ))
}

/// A network the host already uses: the subnet of one of its addresses, or the destination of
/// one of its routes. `twill cluster init` reads them from the kernel; this crate only
/// compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNet {
    pub net: Ipv4Net,
    /// Where it comes from, for messages: `address 192.168.1.5/24 on eth0`, `route ...`.
    pub source: String,
}

/// An IPv6 network the host already uses, as [`HostNet`] for IPv4.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNet6 {
    pub net: Ipv6Net,
    /// Where it comes from, for messages: `address 2001:db8::5/64 on eth0`, `route ...`.
    pub source: String,
}

/// Whether two IPv4 networks share an address (one contains the other).
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Whether two IPv6 networks share an address (one contains the other).
pub fn overlaps6(a: Ipv6Net, b: Ipv6Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// IPv4 ranges no pool may overlap, with what they are: none of their addresses can be a
/// pod's. (The documentation ranges, such as 192.0.2.0/24, are allowed: labs and examples use
/// them.)
pub const RESERVED_RANGES: [(Ipv4Net, &str); 5] = [
    (
        Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
        "reserved for \"this network\" (RFC 1122)",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
        "the loopback range",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
        "the link-local range",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
        "the multicast range",
    ),
    (
        Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
        "reserved (RFC 1112; with the broadcast address 255.255.255.255)",
    ),
];

/// The first reserved range `net` overlaps, with what it is.
pub fn reserved_overlap(net: Ipv4Net) -> Option<(Ipv4Net, &'static str)> {
    RESERVED_RANGES
        .iter()
        .find(|(range, _)| overlaps(*range, net))
        .copied()
}

/// IPv6 ranges no pool may overlap, with what they are: addresses the kernel treats specially
/// or that stand for IPv4 ones. Unique local addresses (fc00::/7, such as fd00:10:244::/56)
/// are what private clusters use; global unicast ranges and the documentation prefix
/// 2001:db8::/32 are allowed too, as the IPv4 documentation ranges are.
pub const RESERVED_RANGES6: [(Ipv6Net, &str); 9] = [
    (
        Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128),
        "the unspecified address",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128),
        "the loopback address",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 96),
        "the IPv4-compatible range (deprecated, RFC 4291)",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
        "the IPv4-mapped range (RFC 4291)",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
        "the NAT64 well-known prefix (RFC 6052)",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48),
        "the local-use NAT64 prefix (RFC 8215)",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        "the link-local range",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10),
        "the site-local range (deprecated, RFC 3879)",
    ),
    (
        Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
        "the multicast range",
    ),
];

/// The first reserved IPv6 range `net` overlaps, with what it is.
pub fn reserved_overlap6(net: Ipv6Net) -> Option<(Ipv6Net, &'static str)> {
    RESERVED_RANGES6
        .iter()
        .find(|(range, _)| overlaps6(*range, net))
        .copied()
}

/// One pool of either family, as the checks every pool shares see it (its bounds are of its
/// family: [`Pool`] and [`Pool6`] say so in their types).
struct PoolView<'a> {
    name: &'a str,
    cidr: IpNet,
    block: u8,
    min: IpNet,
    max: IpNet,
}

impl<'a> From<&'a Pool> for PoolView<'a> {
    fn from(pool: &'a Pool) -> PoolView<'a> {
        PoolView {
            name: &pool.name,
            cidr: pool.cidr.into(),
            block: pool.block_size,
            min: pool.subnet_min.into(),
            max: pool.subnet_max.into(),
        }
    }
}

impl<'a> From<&'a Pool6> for PoolView<'a> {
    fn from(pool: &'a Pool6) -> PoolView<'a> {
        PoolView {
            name: &pool.name,
            cidr: pool.cidr.into(),
            block: pool.block_size,
            min: pool.subnet_min.into(),
            max: pool.subnet_max.into(),
        }
    }
}

/// Checks a config built from a form whose fields are named `fields` and whose pools were
/// written at `places`.
pub(super) fn validate(
    config: &ClusterConfig,
    fields: &Fields,
    places: &PoolPlaces,
) -> Result<(), ConfigError> {
    if config.pools.is_empty() && !config.has_ipv6() {
        return fail(ConfigError::missing(
            "pools",
            "pools: at least one pool is required",
        ));
    }
    let views4 = config.pools.iter().enumerate().map(|(i, pool)| {
        let at = places.at(fields, i, &pool.name);
        (at, &fields.pool, PoolView::from(pool))
    });
    let views6 = config.ipv6_pools.iter().enumerate().map(|(i, pool)| {
        let at = places.at6(fields, i, &pool.name);
        (at, &fields.pool6, PoolView::from(pool))
    });
    let views: Vec<_> = views4.chain(views6).collect();
    // Names are unique across both families: messages and status name pools by them.
    let mut names = std::collections::HashMap::new();
    for (at, pool_fields, pool) in &views {
        validate_pool(at, pool_fields, pool)?;
        if let Some(first) = names.insert(pool.name, at) {
            return fail(ConfigError::conflict(
                at.field("name"),
                first.field("name"),
                format!(
                    "pool name {:?} is used twice; pool names must be unique",
                    pool.name
                ),
            ));
        }
    }
    for (i, (at, pool_fields, b)) in views.iter().enumerate() {
        if let Some((first_at, first_fields, a)) = views[..i]
            .iter()
            .find(|(_, _, a)| net_overlaps(a.cidr, b.cidr))
        {
            return fail(ConfigError::conflict(
                at.field(pool_fields.cidr),
                first_at.field(first_fields.cidr),
                format!(
                    "pool {} {} overlaps pool {} {}",
                    b.name, b.cidr, a.name, a.cidr
                ),
            ));
        }
    }
    validate_backend(&config.backend, fields)?;
    validate_wireguard(config, fields)?;
    validate_ipv6(config, fields, places)?;
    validate_ipv6_only(config, fields, places)?;
    validate_host_access(config)?;
    match &config.bgp {
        Some(bgp) => bgp.validate(),
        None if config.backend.kind == BackendKind::Bgp => fail(ConfigError::missing(
            "bgp",
            "the bgp backend needs a bgp section (asNumber, peers, ...)",
        )),
        None => Ok(()),
    }
}

/// Whether two networks share an address (never across families).
fn net_overlaps(a: IpNet, b: IpNet) -> bool {
    match (a, b) {
        (IpNet::V4(a), IpNet::V4(b)) => overlaps(a, b),
        (IpNet::V6(a), IpNet::V6(b)) => overlaps6(a, b),
        _ => false,
    }
}

fn reserved_overlap_net(net: IpNet) -> Option<(IpNet, &'static str)> {
    match net {
        IpNet::V4(net) => reserved_overlap(net).map(|(range, what)| (range.into(), what)),
        IpNet::V6(net) => reserved_overlap6(net).map(|(range, what)| (range.into(), what)),
    }
}

/// The checks every pool shares, whatever its family: a network without host bits clear of
/// the reserved ranges, a node subnet length that cuts it, and bounds inside it, of that
/// length, aligned and in order.
fn validate_pool(at: &At, names: &PoolFields, pool: &PoolView) -> Result<(), ConfigError> {
    if pool.name.trim().is_empty() {
        return fail(ConfigError::invalid(
            at.field("name"),
            "pool name must not be empty",
        ));
    }
    check_cidr(at, names.cidr, pool.cidr)?;
    if let Some((range, what)) = reserved_overlap_net(pool.cidr) {
        let example = match pool.cidr {
            IpNet::V4(_) => "10.244.0.0/16",
            IpNet::V6(_) => "fd00:10:244::/56",
        };
        return fail(ConfigError::invalid(
            at.field(names.cidr),
            format!(
                "{at}{} {} overlaps {range}, {what}: pod addresses must be ordinary unicast \
                 addresses (e.g. a private range such as {example})",
                names.cidr, pool.cidr
            ),
        ));
    }
    check_block(at, names, pool.cidr, pool.block)?;
    for (field, bound) in [(names.min, pool.min), (names.max, pool.max)] {
        if bound.prefix_len() != pool.block {
            return fail(ConfigError::invalid(
                at.field(field),
                format!(
                    "{at}{field} {bound} must have the {} /{}",
                    names.block, pool.block
                ),
            ));
        }
        if bound.addr() != bound.network() {
            return fail(ConfigError::invalid(
                at.field(field),
                format!(
                    "{at}{field} {} is not aligned to {} /{}; did you mean {}?",
                    bound.addr(),
                    names.block,
                    pool.block,
                    bound.network()
                ),
            ));
        }
        if !pool.cidr.contains(&bound) {
            return fail(ConfigError::invalid(
                at.field(field),
                format!(
                    "{at}{field} {} is outside {} {}",
                    bound.addr(),
                    names.cidr,
                    pool.cidr
                ),
            ));
        }
    }
    if pool.min.addr() > pool.max.addr() {
        return fail(ConfigError::conflict(
            at.field(names.min),
            at.field(names.max),
            format!(
                "{at}{} {} is above {} {}: no node subnet is left",
                names.min,
                pool.min.addr(),
                names.max,
                pool.max.addr()
            ),
        ));
    }
    Ok(())
}

/// What IPv6 pools ask of the rest (every backend carries IPv6, and WireGuard encryption,
/// on any of them, carries both families, BGP-learned routes too): at least as many IPv6
/// node subnets as IPv4 ones, because a node's IPv6 subnet is the one at its IPv4 subnet's
/// index (the `n`th leasable IPv4 subnet across the IPv4 pools in order goes with the `n`th
/// leasable IPv6 subnet across the IPv6 pools).
fn validate_ipv6(
    config: &ClusterConfig,
    fields: &Fields,
    places: &PoolPlaces,
) -> Result<(), ConfigError> {
    let Some(first6) = config.ipv6_pools.first() else {
        return Ok(());
    };
    let at6 = places.at6(fields, 0, &first6.name);
    let cidr6 = fields.pool6.cidr;
    let total4 = config
        .pools
        .iter()
        .map(|p| u128::from(p.subnet_count()))
        .fold(0, u128::saturating_add);
    let total6 = config
        .ipv6_pools
        .iter()
        .map(Pool6::subnet_count)
        .fold(0, u128::saturating_add);
    if total6 < total4 {
        let first4 = &config.pools[0];
        let at4 = places.at(fields, 0, &first4.name);
        let problem = if fields.per_pool {
            format!(
                "the IPv6 pools hold {total6} node subnets but the IPv4 pools hold {total4}: a \
                 node's IPv6 subnet is the one at its IPv4 subnet's index, so the IPv6 pools \
                 need at least {total4}; widen them, lengthen their {}, or widen their {} to {} \
                 range",
                fields.pool6.block, fields.pool6.min, fields.pool6.max
            )
        } else {
            format!(
                "{cidr6} {} holds {total6} node subnets but {} {} holds {total4}: a node's IPv6 \
                 subnet is the one at its IPv4 subnet's index, so {cidr6} needs at least \
                 {total4}; widen it, lengthen {}, or widen {} to {}",
                first6.cidr,
                fields.pool.cidr,
                first4.cidr,
                fields.pool6.block,
                fields.pool6.min,
                fields.pool6.max
            )
        };
        return fail(ConfigError::conflict(
            at6.field(cidr6),
            at4.field(fields.pool.cidr),
            problem,
        ));
    }
    Ok(())
}

/// What an IPv6-only cluster (IPv6 pools, no IPv4 pool) asks of the rest. Every backend runs
/// over an IPv6 underlay: host-gw routes via the peers' IPv6 addresses, vxlan has its
/// IPv6 VTEP, udp and ipip run the userspace tunnel over the IPv6 underlay (ipip as Linux's
/// `ip6tnl`), WireGuard (the wireguard backend, and the `wireguard` section on any of these)
/// runs over the IPv6 underlay, and BGP peers over IPv6 (router IDs hashed from node names
/// unless `bgp.nodes.NAME.routerId` says, see [`super::bgp`]), so its external peers must be
/// IPv6 routers.
fn validate_ipv6_only(
    config: &ClusterConfig,
    fields: &Fields,
    places: &PoolPlaces,
) -> Result<(), ConfigError> {
    let Some(first6) = config
        .ipv6_pools
        .first()
        .filter(|_| config.pools.is_empty())
    else {
        return Ok(());
    };
    let at6 = places.at6(fields, 0, &first6.name);
    let cidr6 = fields.pool6.cidr;
    // The nodes have no IPv4 address to reach an IPv4 router from.
    let mut peers = config.bgp.iter().flat_map(|b| b.peers.iter().enumerate());
    if let Some((i, peer)) = peers.find(|(_, p)| p.address.is_ipv4()) {
        return fail(ConfigError::conflict(
            format!("bgp.peers[{i}].address"),
            at6.field(cidr6),
            format!(
                "bgp.peers[{i}].address {} is an IPv4 address, and this cluster is IPv6-only \
                 (every pool is IPv6, {at6}{cidr6} {}): its nodes have no IPv4 underlay to \
                 reach it; give the router's IPv6 address",
                peer.address, first6.cidr
            ),
        ));
    }
    Ok(())
}

fn validate_backend(backend: &Backend, fields: &Fields) -> Result<(), ConfigError> {
    let kind = backend.kind;
    if kind == BackendKind::Vxlan && !(1..=MAX_VNI).contains(&backend.vni) {
        return fail(ConfigError::invalid(
            fields.vni,
            format!(
                "{} {} is out of range: a VXLAN network identifier is 1 to {MAX_VNI}",
                fields.vni, backend.vni
            ),
        ));
    }
    if kind.uses_port() && backend.port == 0 {
        return fail(ConfigError::invalid(
            fields.port,
            format!(
                "{} must not be 0: the {kind} backend needs a UDP port",
                fields.port
            ),
        ));
    }
    if backend.direct_routing && !kind.has_direct_routing() {
        return fail(ConfigError::conflict(
            fields.direct_routing,
            fields.kind,
            format!(
                "{} applies only to the vxlan and ipip backends, not {kind}",
                fields.direct_routing
            ),
        ));
    }
    Ok(())
}

/// WireGuard's settings: a port of its own (not the backend's tunnel port, not a control
/// port), an MTU a TUN device can have, a pre-shared key of exactly 32 bytes.
fn validate_wireguard(config: &ClusterConfig, fields: &Fields) -> Result<(), ConfigError> {
    let Some(wg) = &config.wireguard else {
        return Ok(());
    };
    let names = &fields.wireguard;
    let kind = config.backend.kind;
    if wg.listen_port == 0 {
        return fail(ConfigError::invalid(
            names.port,
            format!("{} must not be 0: WireGuard needs a UDP port", names.port),
        ));
    }
    if kind == BackendKind::Wireguard && config.backend.port != wg.listen_port {
        return fail(ConfigError::conflict(
            names.port,
            fields.port,
            format!(
                "{} {} and the backend's port {} disagree",
                names.port, wg.listen_port, config.backend.port
            ),
        ));
    }
    if matches!(kind, BackendKind::Vxlan | BackendKind::Udp)
        && config.backend.port == wg.listen_port
    {
        return fail(ConfigError::conflict(
            names.port,
            fields.port,
            format!(
                "{} {} is the {kind} backend's port too: WireGuard needs a port of its own",
                names.port, wg.listen_port
            ),
        ));
    }
    if control_tcp_ports(config).contains(&wg.listen_port) {
        return fail(ConfigError::invalid(
            names.port,
            format!(
                "{} {} is a control-plane port (BGP or etcd): choose another (51820 is \
                 WireGuard's usual one)",
                names.port, wg.listen_port
            ),
        ));
    }
    if let Some(mtu) = wg.mtu
        && !(MIN_WIREGUARD_MTU..=MAX_WIREGUARD_MTU).contains(&mtu)
    {
        return fail(ConfigError::invalid(
            names.mtu,
            format!(
                "{} {mtu} is out of range: {MIN_WIREGUARD_MTU} to {MAX_WIREGUARD_MTU}",
                names.mtu
            ),
        ));
    }
    if wg.mode == EncapMode::Never {
        return fail(ConfigError::invalid(
            names.mode,
            format!("{} must be Always or CrossSubnet", names.mode),
        ));
    }
    if let Some(psk) = &wg.preshared_key
        && crate::wg_key::decode(psk.expose()).is_none()
    {
        // Never quoted: it is a secret, even when malformed.
        return fail(ConfigError::invalid(
            names.psk,
            format!(
                "{} must be 32 bytes in standard base64 (44 characters, as `wg genpsk` prints)",
                names.psk
            ),
        ));
    }
    Ok(())
}

/// `workloadToHostPorts` may not name a control-plane port by itself: it would not open it.
fn validate_host_access(config: &ClusterConfig) -> Result<(), ConfigError> {
    let tcp = control_tcp_ports(config);
    let udp = tunnel_udp_ports(config);
    for (i, p) in config.host_access.workload_to_host_ports.iter().enumerate() {
        let control = match p.proto {
            PortProto::Tcp => &tcp,
            PortProto::Udp => &udp,
            PortProto::Sctp => continue,
        };
        if p.first == p.last && control.contains(&p.first) {
            return fail(ConfigError::invalid(
                format!("workloadToHostPorts[{i}]"),
                format!(
                    "workloadToHostPorts[{i}] {p}: a control-plane port (BGP, etcd or a tunnel), \
                     which pods never reach; remove it"
                ),
            ));
        }
    }
    Ok(())
}
