//! twill's own form (TOML, YAML, or JSON with `pools`): Calico-style pools with their
//! encapsulation modes, the backend keys, the `bgp` section and the host access keys, read
//! into the normalized config (see [`ClusterConfig::parse`] for the rules).

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Deserialize;

use super::auth::{RawSecret, Secret};
use super::bgp::{BgpConfig, RawBgp, from_raw_bgp};
use super::error::ConfigError;
use super::fields::{
    At, PoolPlaces, TWILL_FIELDS, check_block, check_cidr, default_block, default_block6, fail,
    parse_addr, parse_addr6, parse_net, prefix_len,
};
use super::host_access::from_raw_host_access;
use super::model::{
    Backend, BackendKind, ClusterConfig, EncapMode, Pool, Pool6, Wireguard, default_bounds,
    default_bounds6,
};
use super::validate::validate;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawTwill {
    backend: Option<String>,
    vni: Option<i64>,
    port: Option<i64>,
    direct_routing: Option<bool>,
    pools: Option<Vec<RawPool>>,
    bgp: Option<RawBgp>,
    wireguard: Option<RawWireguard>,
    workload_to_host: Option<String>,
    workload_to_host_ports: Option<Vec<String>>,
}

/// Calico's `wireguard` switch, as a block: present (and not `enabled: false`), it encrypts
/// node-to-node pod traffic whatever the backend; with `backend: wireguard` it holds that
/// backend's settings.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawWireguard {
    enabled: Option<bool>,
    listen_port: Option<i64>,
    mtu: Option<i64>,
    mode: Option<String>,
    persistent_keepalive: Option<i64>,
    preshared_key: Option<RawSecret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPool {
    name: Option<String>,
    cidr: Option<String>,
    block_size: Option<i64>,
    subnet_min: Option<String>,
    subnet_max: Option<String>,
    vxlan_mode: Option<String>,
    ipip_mode: Option<String>,
    nat_outgoing: Option<bool>,
}

/// What one pool's Calico modes ask for.
struct PoolModes {
    pool: String,
    /// The pool's path (`pools[1]`), which errors about its modes name.
    path: String,
    vxlan: EncapMode,
    ipip: EncapMode,
}

impl PoolModes {
    /// The backend and direct routing these modes mean ("Never" for both: no encapsulation,
    /// which is host-gw).
    fn implied(&self) -> (BackendKind, bool) {
        match (self.vxlan, self.ipip) {
            (EncapMode::Always, _) => (BackendKind::Vxlan, false),
            (EncapMode::CrossSubnet, _) => (BackendKind::Vxlan, true),
            (_, EncapMode::Always) => (BackendKind::Ipip, false),
            (_, EncapMode::CrossSubnet) => (BackendKind::Ipip, true),
            (EncapMode::Never, EncapMode::Never) => (BackendKind::HostGw, false),
        }
    }

    fn describe(&self) -> String {
        match (self.vxlan, self.ipip) {
            (EncapMode::Never, EncapMode::Never) => format!(
                "pool {} has vxlanMode and ipipMode Never (no encapsulation: host-gw)",
                self.pool
            ),
            (mode, EncapMode::Never) => format!("pool {} has vxlanMode {mode}", self.pool),
            (_, mode) => format!("pool {} has ipipMode {mode}", self.pool),
        }
    }

    /// The path of the mode that decides (`pools[0].vxlanMode`; vxlanMode when neither is set).
    fn field(&self) -> String {
        let key = if self.ipip != EncapMode::Never && self.vxlan == EncapMode::Never {
            "ipipMode"
        } else {
            "vxlanMode"
        };
        format!("{}.{key}", self.path)
    }
}

fn parse_mode(at: &At, field: &str, text: Option<&str>) -> Result<EncapMode, ConfigError> {
    match text {
        None => Ok(EncapMode::Never),
        Some(text) => EncapMode::from_name(text).ok_or_else(|| {
            ConfigError::invalid(
                at.field(field),
                format!("{at}{field} {text:?} must be Always, CrossSubnet or Never"),
            )
        }),
    }
}

/// twill's form as its parser read it, defaults filled in, then validated.
pub(super) fn from_twill(raw: RawTwill) -> Result<ClusterConfig, ConfigError> {
    let fields = &TWILL_FIELDS;
    let raw_pools = match raw.pools {
        Some(pools) if !pools.is_empty() => pools,
        _ => {
            return fail(ConfigError::missing(
                "pools",
                "pools: at least one pool (with a name and a cidr) is required",
            ));
        }
    };
    // Calico's modes speak only if some pool sets one; then a missing mode is Never, as in
    // Calico, except in IPv6 pools, which follow the IPv4 pools (twill runs one backend for
    // both families). If none does, `backend` alone decides (vxlan by default).
    let modes_set = raw_pools
        .iter()
        .any(|p| p.vxlan_mode.is_some() || p.ipip_mode.is_some());
    let mut pools = Vec::with_capacity(raw_pools.len());
    let mut ipv6_pools = Vec::new();
    // Where each pool of either family was written, for the paths of validation's errors.
    let (mut places4, mut places6) = (Vec::new(), Vec::new());
    let mut modes = Vec::with_capacity(raw_pools.len());
    for (i, raw) in raw_pools.into_iter().enumerate() {
        let name = match raw.name {
            Some(name) if !name.trim().is_empty() => name,
            Some(_) => {
                return fail(ConfigError::invalid(
                    format!("pools[{i}].name"),
                    format!("pools[{i}]: name must not be empty"),
                ));
            }
            None => {
                return fail(ConfigError::missing(
                    format!("pools[{i}].name"),
                    format!("pools[{i}]: name is missing"),
                ));
            }
        };
        let at = fields.at(i, &name);
        let Some(cidr) = raw.cidr else {
            return fail(ConfigError::missing(
                at.field("cidr"),
                format!("{at}cidr is missing"),
            ));
        };
        let names = &fields.pool;
        let cidr = parse_net(&at, names.cidr, &cidr)?;
        check_cidr(&at, names.cidr, cidr)?;
        let block = match (raw.block_size, cidr) {
            (None, IpNet::V4(cidr)) => default_block(&at, names.cidr, cidr)?,
            (None, IpNet::V6(cidr)) => default_block6(&at, names.cidr, cidr)?,
            (Some(len), _) => {
                let len = prefix_len(&at, names.block, len, cidr.max_prefix_len())?;
                check_block(&at, names, cidr, len)?;
                len
            }
        };
        let bound = |field: &str, text: Option<String>| {
            text.map(|text| parse_bound(&at, field, &text, cidr, block))
                .transpose()
        };
        let subnet_min = bound(names.min, raw.subnet_min)?;
        let subnet_max = bound(names.max, raw.subnet_max)?;
        let vxlan = parse_mode(&at, "vxlanMode", raw.vxlan_mode.as_deref())?;
        let ipip = parse_mode(&at, "ipipMode", raw.ipip_mode.as_deref())?;
        if vxlan != EncapMode::Never && ipip != EncapMode::Never {
            return fail(ConfigError::conflict(
                at.field("vxlanMode"),
                at.field("ipipMode"),
                format!(
                    "{at}vxlanMode {vxlan} and ipipMode {ipip} are both set; a pool uses one \
                     encapsulation (set the other to Never)"
                ),
            ));
        }
        let pool_modes = PoolModes {
            pool: name.clone(),
            path: format!("pools[{i}]"),
            vxlan,
            ipip,
        };
        let nat_outgoing = raw.nat_outgoing.unwrap_or(true);
        match cidr {
            IpNet::V4(cidr) => {
                let (default_min, default_max) = default_bounds(cidr, block);
                modes.push(pool_modes);
                places4.push(i);
                pools.push(Pool {
                    name,
                    cidr,
                    block_size: block,
                    subnet_min: subnet_min.map_or(default_min, v4_net),
                    subnet_max: subnet_max.map_or(default_max, v4_net),
                    nat_outgoing,
                });
            }
            IpNet::V6(cidr) => {
                if ipip != EncapMode::Never {
                    return fail(ConfigError::invalid(
                        at.field("ipipMode"),
                        format!(
                            "{at}ipipMode {ipip}: IPIP carries IPv4 only, and cidr {cidr} is \
                             IPv6; an IPv6 pool takes vxlanMode (or ipipMode Never)"
                        ),
                    ));
                }
                if raw.vxlan_mode.is_some() || raw.ipip_mode.is_some() {
                    modes.push(pool_modes);
                }
                let (default_min, default_max) = default_bounds6(cidr, block);
                places6.push(i);
                ipv6_pools.push(Pool6 {
                    name,
                    cidr,
                    block_size: block,
                    subnet_min: subnet_min.map_or(default_min, v6_net),
                    subnet_max: subnet_max.map_or(default_max, v6_net),
                    nat_outgoing,
                });
            }
        }
    }
    let implied = if modes_set {
        let first = &modes[0];
        if let Some(other) = modes.iter().find(|m| m.implied() != first.implied()) {
            return fail(ConfigError::conflict(
                other.field(),
                first.field(),
                format!(
                    "pools disagree on encapsulation: {} but {}; twill runs one backend per \
                     cluster",
                    first.describe(),
                    other.describe()
                ),
            ));
        }
        Some((first.implied(), first))
    } else {
        None
    };

    let explicit = match raw.backend.as_deref() {
        None => None,
        Some(name) => Some(BackendKind::from_name(name).ok_or_else(|| {
            ConfigError::unsupported(
                "backend",
                format!(
                    "backend {name:?} is not supported: twill supports {}",
                    BackendKind::list()
                ),
            )
        })?),
    };
    let bgp = raw.bgp.map(from_raw_bgp).transpose()?;
    let kind = match (explicit, implied) {
        // A bgp section without encapsulation asks for routing by BGP.
        (None, None) if bgp.is_some() => BackendKind::Bgp,
        (None, Some(((BackendKind::HostGw, _), _))) if bgp.is_some() => BackendKind::Bgp,
        (None, None) => BackendKind::Vxlan,
        (Some(BackendKind::Bgp), None | Some(((BackendKind::HostGw, _), _))) => BackendKind::Bgp,
        (None, Some(((kind, _), _))) => kind,
        (Some(kind), None) => kind,
        // WireGuard carries traffic itself; Calico runs it over pools that say Never.
        (Some(BackendKind::Wireguard), Some(((BackendKind::HostGw, _), _))) => {
            BackendKind::Wireguard
        }
        (Some(kind), Some(((implied_kind, _), modes))) => {
            if kind != implied_kind {
                return fail(ConfigError::conflict(
                    "backend",
                    modes.field(),
                    format!(
                        "backend {:?} conflicts with the pools' modes: {}, which means \
                         {implied_kind}; drop `backend` or make them agree",
                        kind.name(),
                        modes.describe()
                    ),
                ));
            }
            kind
        }
    };
    // `directRouting = true` asks for direct routes, and so does CrossSubnet; `false` (the
    // default, often left in templates) asks for nothing. Only asking for direct routes while
    // a pool says Always (encapsulate to every peer) is a contradiction.
    let implied_direct = implied
        .filter(|((k, _), _)| k.has_direct_routing())
        .map(|((_, direct), modes)| (direct, modes));
    let direct_routing = match (raw.direct_routing, implied_direct) {
        (Some(true), Some((false, modes))) => {
            return fail(ConfigError::conflict(
                "directRouting",
                modes.field(),
                format!(
                    "directRouting = true conflicts with the pools' modes: {} (Always \
                     encapsulates to every peer; CrossSubnet routes directly within a subnet)",
                    modes.describe()
                ),
            ));
        }
        (explicit, implied) => {
            explicit.unwrap_or(false) || implied.is_some_and(|(direct, _)| direct)
        }
    };
    let mut backend = Backend::with_defaults(kind);
    backend.direct_routing = direct_routing;
    let mut wireguard = from_raw_wireguard(raw.wireguard, kind)?;
    if let Some(vni) = raw.vni {
        if kind != BackendKind::Vxlan {
            return fail(ConfigError::conflict(
                "vni",
                "backend",
                format!("vni applies only to the vxlan backend, not {kind}"),
            ));
        }
        backend.vni = u32::try_from(vni).unwrap_or(u32::MAX);
    }
    if let Some(port) = raw.port {
        if !kind.uses_port() {
            return fail(ConfigError::conflict(
                "port",
                "backend",
                format!("port applies only to the vxlan, udp and wireguard backends, not {kind}"),
            ));
        }
        backend.port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ConfigError::invalid(
                    "port",
                    format!("port {port} is not a UDP port (1 to 65535)"),
                )
            })?;
    }
    // The wireguard backend's port is `port` or `wireguard.listenPort`: one number.
    if let Some((wg, explicit)) = wireguard
        .as_mut()
        .filter(|_| kind == BackendKind::Wireguard)
    {
        match (raw.port, *explicit) {
            (Some(_), true) if wg.listen_port != backend.port => {
                return fail(ConfigError::conflict(
                    "wireguard.listenPort",
                    "port",
                    format!(
                        "wireguard.listenPort {} and port {} disagree: the wireguard backend \
                         listens on one port (give one of them)",
                        wg.listen_port, backend.port
                    ),
                ));
            }
            (Some(_), _) => wg.listen_port = backend.port,
            (None, _) => backend.port = wg.listen_port,
        }
    }
    let wireguard = wireguard.map(|(wg, _)| wg);

    // `backend = "bgp"` alone means BGP with every default.
    let bgp = bgp.or_else(|| (kind == BackendKind::Bgp).then(BgpConfig::default));
    let host_access = from_raw_host_access(raw.workload_to_host, raw.workload_to_host_ports)?;
    let config = ClusterConfig {
        pools,
        ipv6_pools,
        backend,
        bgp,
        wireguard,
        host_access,
    };
    validate(&config, fields, &PoolPlaces::listed(places4, places6))?;
    Ok(config)
}

/// A `subnetMin`/`subnetMax` of twill's form: an address (as in Flannel) or a subnet of the
/// block size, of the family of the pool's `cidr`.
fn parse_bound(
    at: &At,
    field: &str,
    text: &str,
    cidr: IpNet,
    block: u8,
) -> Result<IpNet, ConfigError> {
    if text.contains('/') {
        let net = parse_net(at, field, text)?;
        if net.max_prefix_len() != cidr.max_prefix_len() {
            return fail(ConfigError::invalid(
                at.field(field),
                format!(
                    "{at}{field} {net} is {} but cidr {cidr} is {}",
                    family(net),
                    family(cidr)
                ),
            ));
        }
        if net.prefix_len() != block {
            return fail(ConfigError::invalid(
                at.field(field),
                format!("{at}{field} {net} must have the blockSize /{block}"),
            ));
        }
        return Ok(net);
    }
    let addr = match cidr {
        IpNet::V4(_) => IpAddr::V4(parse_addr(at, field, text)?),
        IpNet::V6(_) => IpAddr::V6(parse_addr6(at, field, text)?),
    };
    Ok(IpNet::new(addr, block).expect("block sizes are checked to fit their family"))
}

fn family(net: IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "IPv4",
        IpNet::V6(_) => "IPv6",
    }
}

/// A bound of an IPv4 pool (`parse_bound` keeps the pool's family).
fn v4_net(net: IpNet) -> Ipv4Net {
    match net {
        IpNet::V4(net) => net,
        IpNet::V6(_) => unreachable!("the bounds of an IPv4 pool are IPv4"),
    }
}

/// A bound of an IPv6 pool (`parse_bound` keeps the pool's family).
fn v6_net(net: IpNet) -> Ipv6Net {
    match net {
        IpNet::V6(net) => net,
        IpNet::V4(_) => unreachable!("the bounds of an IPv6 pool are IPv6"),
    }
}

/// The WireGuard settings of the `wireguard` block (None when there is no block or it says
/// `enabled: false`, except with the wireguard backend, which always has them), and whether
/// the block gave `listenPort`. Ranges of single values are checked here; how they fit the
/// rest of the config (ports, the key's length) in `validate`.
fn from_raw_wireguard(
    raw: Option<RawWireguard>,
    kind: BackendKind,
) -> Result<Option<(Wireguard, bool)>, ConfigError> {
    let wireguard_backend = kind == BackendKind::Wireguard;
    let Some(raw) = raw else {
        return Ok(wireguard_backend.then(|| (Wireguard::with_port(kind.default_port()), false)));
    };
    match (raw.enabled, wireguard_backend) {
        (Some(false), true) => {
            return fail(ConfigError::conflict(
                "wireguard.enabled",
                "backend",
                "wireguard.enabled is false but the backend is wireguard: WireGuard carries \
                 every peer's traffic there (choose another backend to turn it off)",
            ));
        }
        (Some(false), false) => return Ok(None),
        _ => {}
    }
    let mut wg = Wireguard::with_port(crate::cluster::DEFAULT_WIREGUARD_PORT);
    let explicit_port = raw.listen_port.is_some();
    if let Some(port) = raw.listen_port {
        wg.listen_port = u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                ConfigError::invalid(
                    "wireguard.listenPort",
                    format!("wireguard.listenPort {port} is not a UDP port (1 to 65535)"),
                )
            })?;
    }
    if let Some(mtu) = raw.mtu {
        // Its range is checked with the rest; a negative number is no MTU at all.
        wg.mtu = Some(u32::try_from(mtu).map_err(|_| {
            ConfigError::invalid("wireguard.mtu", format!("wireguard.mtu {mtu} is negative"))
        })?);
    }
    if let Some(mode) = raw.mode {
        wg.mode = match EncapMode::from_name(&mode) {
            Some(EncapMode::Never) => {
                return fail(ConfigError::invalid(
                    "wireguard.mode",
                    "wireguard.mode Never: use enabled: false to turn WireGuard off",
                ));
            }
            Some(mode) => mode,
            None => {
                return fail(ConfigError::invalid(
                    "wireguard.mode",
                    format!("wireguard.mode {mode:?} must be Always or CrossSubnet"),
                ));
            }
        };
    }
    if let Some(seconds) = raw.persistent_keepalive {
        wg.persistent_keepalive = u16::try_from(seconds).map_err(|_| {
            ConfigError::invalid(
                "wireguard.persistentKeepalive",
                format!(
                    "wireguard.persistentKeepalive {seconds} is out of range: 0 (off) to 65535 \
                     seconds"
                ),
            )
        })?;
    }
    wg.preshared_key = raw.preshared_key.map(|s| Secret::new(s.0));
    Ok(Some((wg, explicit_port)))
}
