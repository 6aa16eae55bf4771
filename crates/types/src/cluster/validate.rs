//! The invariants every accepted config has, checked on the normalized config whatever form it
//! came from (messages name the fields in that form's words): pools well formed, disjoint and
//! clear of reserved ranges, backend settings in range, host access and BGP consistent. Also
//! the check against the networks of the host `twill cluster init` runs on.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::control_ports::{control_tcp_ports, tunnel_udp_ports};
use super::error::ConfigError;
use super::fields::{ConfigForm, Fields, TWILL_FIELDS, check_block, check_cidr, fail};
use super::host_access::PortProto;
use super::model::{
    Backend, BackendKind, ClusterConfig, EncapMode, MAX_VNI, MAX_WIREGUARD_MTU, MIN_WIREGUARD_MTU,
    Pool,
};

impl ClusterConfig {
    /// Checks the invariants every accepted config has (fields named as in the normalized
    /// form and in twill's TOML/YAML).
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate(self, &TWILL_FIELDS)
    }

    /// Refuses a pool that overlaps a network of this host (the subnet of one of its
    /// addresses, or a route's destination): its pods would take addresses the host already
    /// reaches elsewhere, and the host would route to pods what was meant for that network.
    /// The caller leaves out what must not count (default routes, twill's own networks).
    pub fn check_host_networks(
        &self,
        host: &[HostNet],
        form: ConfigForm,
    ) -> Result<(), ConfigError> {
        let fields = form.fields();
        for (i, pool) in self.pools.iter().enumerate() {
            if let Some(h) = host.iter().find(|h| overlaps(h.net, pool.cidr)) {
                let at = fields.at(i, &pool.name);
                return fail(ConfigError::conflict(
                    at.field(fields.cidr),
                    h.source.clone(),
                    format!(
                        "{at}{} {} overlaps {} of this host ({}): pods would take addresses the \
                         host already uses or routes elsewhere; choose a range the host does not \
                         use",
                        fields.cidr, pool.cidr, h.net, h.source
                    ),
                ));
            }
        }
        Ok(())
    }
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

/// Whether two IPv4 networks share an address (one contains the other).
pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// IPv4 ranges no pool may overlap, with what they are: none of their addresses can be a
/// pod's (pools are IPv4 only; IPv6 pools are refused by the parser).
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

/// Checks a config built from a form whose fields are named `fields`.
pub(super) fn validate(config: &ClusterConfig, fields: &Fields) -> Result<(), ConfigError> {
    if config.pools.is_empty() {
        return fail(ConfigError::missing(
            "pools",
            "pools: at least one pool is required",
        ));
    }
    let mut names = std::collections::HashMap::new();
    for (i, pool) in config.pools.iter().enumerate() {
        validate_pool(i, pool, fields)?;
        if let Some(first) = names.insert(pool.name.as_str(), i) {
            return fail(ConfigError::conflict(
                format!("pools[{i}].name"),
                format!("pools[{first}].name"),
                format!(
                    "pool name {:?} is used twice; pool names must be unique",
                    pool.name
                ),
            ));
        }
    }
    for (i, b) in config.pools.iter().enumerate() {
        if let Some((j, a)) = config.pools[..i]
            .iter()
            .enumerate()
            .find(|(_, a)| overlaps(a.cidr, b.cidr))
        {
            return fail(ConfigError::conflict(
                fields.at(i, &b.name).field(fields.cidr),
                fields.at(j, &a.name).field(fields.cidr),
                format!(
                    "pool {} {} overlaps pool {} {}",
                    b.name, b.cidr, a.name, a.cidr
                ),
            ));
        }
    }
    validate_backend(&config.backend, fields)?;
    validate_wireguard(config, fields)?;
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

fn validate_pool(index: usize, pool: &Pool, fields: &Fields) -> Result<(), ConfigError> {
    if pool.name.trim().is_empty() {
        return fail(ConfigError::invalid(
            format!("pools[{index}].name"),
            "pool name must not be empty",
        ));
    }
    let at = fields.at(index, &pool.name);
    check_cidr(&at, fields, pool.cidr)?;
    if let Some((range, what)) = reserved_overlap(pool.cidr) {
        return fail(ConfigError::invalid(
            at.field(fields.cidr),
            format!(
                "{at}{} {} overlaps {range}, {what}: pod addresses must be ordinary unicast \
                 addresses (e.g. a private range such as 10.244.0.0/16)",
                fields.cidr, pool.cidr
            ),
        ));
    }
    check_block(&at, fields, pool.cidr, pool.block_size)?;
    for (field, bound) in [(fields.min, pool.subnet_min), (fields.max, pool.subnet_max)] {
        if bound.prefix_len() != pool.block_size {
            return fail(ConfigError::invalid(
                at.field(field),
                format!(
                    "{at}{field} {bound} must have the {} /{}",
                    fields.block, pool.block_size
                ),
            ));
        }
        if bound.addr() != bound.network() {
            return fail(ConfigError::invalid(
                at.field(field),
                format!(
                    "{at}{field} {} is not aligned to {} /{}; did you mean {}?",
                    bound.addr(),
                    fields.block,
                    pool.block_size,
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
                    fields.cidr,
                    pool.cidr
                ),
            ));
        }
    }
    if pool.subnet_min.addr() > pool.subnet_max.addr() {
        return fail(ConfigError::conflict(
            at.field(fields.min),
            at.field(fields.max),
            format!(
                "{at}{} {} is above {} {}: no node subnet is left",
                fields.min,
                pool.subnet_min.addr(),
                fields.max,
                pool.subnet_max.addr()
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
