//! Flannel's net-conf.json: read the way flanneld reads it, with Flannel's own field names in
//! messages (`Network`, `SubnetLen`, `Backend.VNI`, ...).

use std::net::Ipv6Addr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::auth::Secret;
use super::bgp::{BgpConfig, RawBgp, from_raw_bgp};
use super::error::ConfigError;
use super::fields::{
    At, FLANNEL_FIELDS, Fields, PoolFields, PoolPlaces, check_block, check_cidr, default_block,
    default_block6, fail, parse_addr, parse_addr6, prefix_len,
};
use super::host_access::HostAccess;
use super::model::{
    Backend, BackendKind, ClusterConfig, Pool, Pool6, Wireguard, default_bounds, default_bounds6,
};
use super::validate::validate;

/// The wireguard backend calls its port `ListenPort`.
const FLANNEL_WIREGUARD_FIELDS: Fields = Fields {
    port: "Backend.ListenPort",
    ..FLANNEL_FIELDS
};

/// The wireguard backend of an IPv6-only cluster in flanneld's `separate` mode, whose one
/// device (flanneld's `flannel-wg-v6`) listens on `ListenPortV6`.
const FLANNEL_WIREGUARD6_FIELDS: Fields = Fields {
    port: "Backend.ListenPortV6",
    wireguard: super::fields::WireguardFields {
        port: "Backend.ListenPortV6",
        ..FLANNEL_FIELDS.wireguard
    },
    ..FLANNEL_FIELDS
};

/// flanneld's default `ListenPortV6`, the port of its IPv6 device in `separate` mode.
const FLANNEL_DEFAULT_LISTEN_PORT_V6: u16 = 51821;

const FLANNEL_KEYS: &str = "Network, SubnetLen, SubnetMin, SubnetMax, Backend, EnableIPv4, \
                            EnableIPv6, IPv6Network, IPv6SubnetLen, IPv6SubnetMin, \
                            IPv6SubnetMax, EnableNFTables, BGP";

/// The name of the IPv6 pool of a dual-stack net-conf.json (the IPv4 one is `default`).
const FLANNEL_POOL6_NAME: &str = "default6";

fn flannel_str<'a>(key: &str, value: &'a serde_json::Value) -> Result<&'a str, ConfigError> {
    value
        .as_str()
        .ok_or_else(|| ConfigError::invalid(key, format!("{key} must be a string, not {value}")))
}

fn flannel_bool(key: &str, value: &serde_json::Value) -> Result<bool, ConfigError> {
    value.as_bool().ok_or_else(|| {
        ConfigError::invalid(key, format!("{key} must be true or false, not {value}"))
    })
}

fn flannel_uint(key: &str, value: &serde_json::Value) -> Result<u64, ConfigError> {
    value.as_u64().ok_or_else(|| {
        ConfigError::invalid(
            key,
            format!("{key} must be a non-negative integer, not {value}"),
        )
    })
}

/// Flannel's WireGuard modes (`Backend.Mode`; Go compares them as written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlannelWgMode {
    /// flanneld's default: a device per family (`flannel-wg` on `ListenPort`, `flannel-wg-v6`
    /// on `ListenPortV6`), IPv6 between the nodes' IPv6 addresses.
    Separate,
    /// One device for both families, peers at the address flanneld prefers.
    Auto,
    /// One device for both families, peers at their IPv4 address.
    Ipv4,
    /// One device for both families, peers at their IPv6 address.
    Ipv6,
}

/// The keys of Flannel's wireguard backend about address families, as written: checked once
/// `EnableIPv6` is known ([`check_wireguard_families`]).
#[derive(Default)]
struct FlannelWgFamilies {
    /// `Backend.Mode` (the key as written, and the mode).
    mode: Option<(String, FlannelWgMode)>,
    /// `Backend.ListenPortV6` (the key as written, and the port).
    listen_port_v6: Option<(String, u16)>,
}

/// Flannel's IPv6 keys, as written (`IPv6SubnetLen` already read as a number).
#[derive(Default)]
struct Flannel6<'a> {
    /// `EnableIPv6`: the other keys count only when it is true, as in flanneld.
    enabled: bool,
    network: Option<&'a str>,
    subnet_len: Option<u64>,
    min: Option<&'a str>,
    max: Option<&'a str>,
}

/// Flannel's net-conf.json, read the way flanneld reads it: keys match case-insensitively and
/// a `null` value is the same as a missing key (Go's `encoding/json`), zero `SubnetLen`,
/// `IPv6SubnetLen` and `Port` mean the default, and a missing `Backend` means udp. The IPv6
/// keys are read (their values must be well formed, as Go's decoder insists) but, as in
/// flanneld, used only with `"EnableIPv6": true`.
pub(super) fn parse_flannel(
    object: &serde_json::Map<String, serde_json::Value>,
) -> Result<ClusterConfig, ConfigError> {
    let (mut network, mut subnet_len, mut min, mut max, mut backend, mut bgp) =
        (None, None, None, None, None, None);
    let mut ipv6 = Flannel6::default();
    // `EnableIPv4` as written (its key's spelling, for messages); true when missing.
    let mut enable_ipv4 = None;
    for (key, value) in object {
        if value.is_null() {
            continue;
        }
        match key.to_ascii_lowercase().as_str() {
            "network" => network = Some(flannel_str(key, value)?),
            "subnetlen" => subnet_len = Some(flannel_uint(key, value)?),
            "subnetmin" => min = Some(flannel_str(key, value)?),
            "subnetmax" => max = Some(flannel_str(key, value)?),
            "backend" => backend = Some(value),
            // twill's addition: the bgp section of its own form, same keys.
            "bgp" => {
                let raw: RawBgp = serde_json::from_value(value.clone())
                    .map_err(|e| ConfigError::syntax(key, e))?;
                bgp = Some(from_raw_bgp(raw)?);
            }
            "enableipv4" => enable_ipv4 = Some((key.as_str(), flannel_bool(key, value)?)),
            "enableipv6" => ipv6.enabled = flannel_bool(key, value)?,
            "ipv6network" => ipv6.network = Some(flannel_str(key, value)?),
            "ipv6subnetlen" => ipv6.subnet_len = Some(flannel_uint(key, value)?),
            "ipv6subnetmin" => ipv6.min = Some(flannel_str(key, value)?),
            "ipv6subnetmax" => ipv6.max = Some(flannel_str(key, value)?),
            // twill always programs nftables, so either value is fine.
            "enablenftables" => {
                flannel_bool(key, value)?;
            }
            _ => {
                return fail(ConfigError::unknown_key(
                    key,
                    format!(
                        "unknown key {key:?} in Flannel's net-conf.json (known: {FLANNEL_KEYS})"
                    ),
                ));
            }
        }
    }

    let (mut backend, mut wireguard, families, mut fields) = flannel_backend(backend)?;
    let pools = match enable_ipv4 {
        Some((key, false)) => {
            // IPv6-only, as flanneld reads it: the IPv4 keys are checked for form and unused.
            if !ipv6.enabled {
                return fail(ConfigError::conflict(
                    key,
                    "EnableIPv6",
                    format!(
                        "{key} is false but EnableIPv6 is not true: an IPv6-only cluster needs \
                         \"EnableIPv6\": true and an IPv6Network such as fd00:10:244::/56"
                    ),
                ));
            }
            if let Some(network) = network {
                flannel_network(network)?;
            }
            for (field, text) in [("SubnetMin", min), ("SubnetMax", max)] {
                if let Some(text) = text {
                    parse_addr(&At::top(), field, text)?;
                }
            }
            Vec::new()
        }
        _ => vec![flannel_pool4(network, subnet_len, min, max, fields)?],
    };
    // The backend's port is WireGuard's (the wireguard backend) or none of its business.
    let ipv6_only = pools.is_empty();
    if let Some(wg) = &mut wireguard
        && let Some(port) =
            check_wireguard_families(&families, ipv6_only, ipv6.enabled, backend.port)?
    {
        wg.listen_port = port;
        backend.port = port;
        fields = &FLANNEL_WIREGUARD6_FIELDS;
    }
    let config = ClusterConfig {
        pools,
        ipv6_pools: flannel_pool6(&ipv6, fields)?.into_iter().collect(),
        bgp: bgp.or_else(|| (backend.kind == BackendKind::Bgp).then(BgpConfig::default)),
        backend,
        wireguard,
        // Flannel's form has no such keys: the defaults (Drop, no ports).
        host_access: HostAccess::default(),
    };
    validate(&config, fields, &PoolPlaces::normalized())?;
    Ok(config)
}

/// The IPv4 pool of `Network`, `SubnetLen`, `SubnetMin` and `SubnetMax`.
fn flannel_pool4(
    network: Option<&str>,
    subnet_len: Option<u64>,
    min: Option<&str>,
    max: Option<&str>,
    fields: &Fields,
) -> Result<Pool, ConfigError> {
    let Some(network) = network else {
        return fail(ConfigError::missing(
            "Network",
            r#"Network is missing: net-conf.json needs e.g. "Network": "10.244.0.0/16""#,
        ));
    };
    let top = At::top();
    let cidr = flannel_network(network)?;
    check_cidr(&top, fields.pool.cidr, IpNet::V4(cidr))?;
    let block = match subnet_len {
        None | Some(0) => default_block(&top, "Network", cidr)?,
        Some(len) => {
            let len = prefix_len(&top, fields.pool.block, len, 32)?;
            check_block(&top, &fields.pool, IpNet::V4(cidr), len)?;
            at_least_four_subnets(&fields.pool, IpNet::V4(cidr), len)?;
            len
        }
    };
    let (default_min, default_max) = default_bounds(cidr, block);
    let bound = |field: &str, text: Option<&str>, default: Ipv4Net| match text {
        None => Ok(default),
        Some(text) => Ok(Ipv4Net::new(parse_addr(&top, field, text)?, block)
            .expect("block sizes are checked to be at most 30")),
    };
    Ok(Pool {
        name: "default".into(),
        cidr,
        block_size: block,
        subnet_min: bound("SubnetMin", min, default_min)?,
        subnet_max: bound("SubnetMax", max, default_max)?,
        nat_outgoing: true,
    })
}

/// `Network`, which is IPv4: an IPv6 network there is pointed to its own key.
fn flannel_network(text: &str) -> Result<Ipv4Net, ConfigError> {
    if let Ok(net) = text.parse::<Ipv4Net>() {
        return Ok(net);
    }
    if text.parse::<Ipv6Net>().is_ok() {
        return fail(ConfigError::invalid(
            "Network",
            format!(
                "Network {text} is an IPv6 network: Network is the IPv4 one; give IPv6 as \
                 IPv6Network with EnableIPv6: true (dual-stack)"
            ),
        ));
    }
    fail(ConfigError::invalid(
        "Network",
        format!("Network {text:?} is not an IPv4 network in CIDR form such as 10.244.0.0/16"),
    ))
}

/// `IPv6Network`, which is IPv6.
fn flannel_network6(text: &str) -> Result<Ipv6Net, ConfigError> {
    if let Ok(net) = text.parse::<Ipv6Net>() {
        return Ok(net);
    }
    let problem = if text.parse::<Ipv4Net>().is_ok() {
        format!("IPv6Network {text} is an IPv4 network: IPv6Network must be IPv6")
    } else {
        format!("IPv6Network {text:?} is not an IPv6 network in CIDR form such as fd00:10:244::/56")
    };
    fail(ConfigError::invalid("IPv6Network", problem))
}

/// Flannel never leases the first subnet, so it insists on at least four.
fn at_least_four_subnets(names: &PoolFields, cidr: IpNet, len: u8) -> Result<(), ConfigError> {
    if len < cidr.prefix_len() + 2 {
        return fail(ConfigError::invalid(
            names.block,
            format!(
                "{} /{len} cuts {} {cidr} into fewer than four subnets; Flannel requires {} /{} \
                 or longer",
                names.block,
                names.cidr,
                names.block,
                cidr.prefix_len() + 2
            ),
        ));
    }
    Ok(())
}

/// The IPv6 pool of Flannel's IPv6 keys when `EnableIPv6` is true. Every value is checked
/// for form whether or not it is, as Go's decoder does; flanneld ignores them otherwise, and
/// so does twill.
fn flannel_pool6(keys: &Flannel6, fields: &Fields) -> Result<Option<Pool6>, ConfigError> {
    let names = &fields.pool6;
    let top = At::top();
    let cidr = keys.network.map(flannel_network6).transpose()?;
    let len = keys
        .subnet_len
        .map(|len| prefix_len(&top, names.block, len, 128))
        .transpose()?;
    let min = keys
        .min
        .map(|text| parse_addr6(&top, names.min, text))
        .transpose()?;
    let max = keys
        .max
        .map(|text| parse_addr6(&top, names.max, text))
        .transpose()?;
    if !keys.enabled {
        return Ok(None);
    }
    let Some(cidr) = cidr else {
        return fail(ConfigError::missing(
            names.cidr,
            r#"IPv6Network is missing: EnableIPv6 needs e.g. "IPv6Network": "fd00:10:244::/56""#,
        ));
    };
    check_cidr(&top, names.cidr, IpNet::V6(cidr))?;
    let block = match len {
        None | Some(0) => default_block6(&top, names.cidr, cidr)?,
        Some(len) => {
            check_block(&top, names, IpNet::V6(cidr), len)?;
            at_least_four_subnets(names, IpNet::V6(cidr), len)?;
            len
        }
    };
    let (default_min, default_max) = default_bounds6(cidr, block);
    let bound = |addr: Option<Ipv6Addr>, default| {
        addr.map_or(default, |addr| {
            Ipv6Net::new(addr, block).expect("IPv6 block sizes are checked to be at most 122")
        })
    };
    Ok(Some(Pool6 {
        name: FLANNEL_POOL6_NAME.into(),
        cidr,
        block_size: block,
        subnet_min: bound(min, default_min),
        subnet_max: bound(max, default_max),
        nat_outgoing: true,
    }))
}

/// The backend, its WireGuard settings and address-family keys (the wireguard backend only)
/// and the names of its fields.
fn flannel_backend(
    value: Option<&serde_json::Value>,
) -> Result<
    (
        Backend,
        Option<Wireguard>,
        FlannelWgFamilies,
        &'static Fields,
    ),
    ConfigError,
> {
    let mut families = FlannelWgFamilies::default();
    let Some(value) = value else {
        return Ok((
            Backend::with_defaults(BackendKind::Udp),
            None,
            families,
            &FLANNEL_FIELDS,
        ));
    };
    let Some(object) = value.as_object() else {
        return fail(ConfigError::invalid(
            "Backend",
            format!(r#"Backend must be an object such as {{"Type": "vxlan"}}, not {value}"#),
        ));
    };
    let type_name = object
        .iter()
        .find(|(k, v)| k.eq_ignore_ascii_case("type") && !v.is_null())
        .map(|(k, v)| flannel_str(&format!("Backend.{k}"), v))
        .transpose()?;
    let Some(type_name) = type_name else {
        return fail(ConfigError::missing(
            "Backend.Type",
            format!(
                "Backend.Type is missing: use one of {}",
                BackendKind::list()
            ),
        ));
    };
    let Some(kind) = BackendKind::from_name(type_name) else {
        return fail(ConfigError::unsupported(
            "Backend.Type",
            format!(
                "Backend.Type {type_name:?} is not supported: twill supports {}",
                BackendKind::list()
            ),
        ));
    };
    let fields = if kind == BackendKind::Wireguard {
        &FLANNEL_WIREGUARD_FIELDS
    } else {
        &FLANNEL_FIELDS
    };
    let mut backend = Backend::with_defaults(kind);
    let mut wireguard =
        (kind == BackendKind::Wireguard).then(|| Wireguard::with_port(backend.port));
    for (key, value) in object {
        let lower = key.to_ascii_lowercase();
        if value.is_null() || lower == "type" {
            continue;
        }
        let name = format!("Backend.{key}");
        match (kind, lower.as_str()) {
            (BackendKind::Vxlan, "vni") => {
                let vni = flannel_uint(&name, value)?;
                backend.vni = u32::try_from(vni).unwrap_or(u32::MAX);
            }
            (BackendKind::Vxlan | BackendKind::Udp, "port")
            | (BackendKind::Wireguard, "listenport") => {
                let port = flannel_uint(&name, value)?;
                if port != 0 {
                    backend.port = u16::try_from(port).map_err(|_| {
                        ConfigError::invalid(
                            &name,
                            format!("{name} {port} is not a UDP port (1 to 65535)"),
                        )
                    })?;
                }
            }
            // Flannel's udp has no DirectRouting; twill's does (same-segment peers get routes).
            (BackendKind::Vxlan | BackendKind::Ipip | BackendKind::Udp, "directrouting") => {
                backend.direct_routing = flannel_bool(&name, value)?;
            }
            // Tools that template net-conf.json often write `"DirectRouting": false` for every
            // backend; only `true` would ask for something these backends cannot do.
            (BackendKind::HostGw | BackendKind::Wireguard | BackendKind::Bgp, "directrouting") => {
                if flannel_bool(&name, value)? {
                    return fail(ConfigError::conflict(
                        &name,
                        "Backend.Type",
                        format!(
                            "{name} is not available with the {kind} backend: use vxlan, udp or \
                             ipip"
                        ),
                    ));
                }
            }
            // Off is what twill does anyway.
            (BackendKind::Vxlan, "gbp" | "learning") => {
                if flannel_bool(&name, value)? {
                    return fail(ConfigError::unsupported(
                        &name,
                        format!("{name} is not supported by twill's vxlan backend"),
                    ));
                }
            }
            (BackendKind::Wireguard, "psk") => {
                // Checked (32 bytes of base64) with the rest of the config; never quoted.
                let psk = value.as_str().ok_or_else(|| {
                    ConfigError::invalid(&name, format!("{name} must be a base64 string"))
                })?;
                if let Some(wg) = &mut wireguard {
                    wg.preshared_key = Some(Secret::new(psk));
                }
            }
            (BackendKind::Wireguard, "persistentkeepaliveinterval") => {
                let seconds = flannel_uint(&name, value)?;
                let seconds = u16::try_from(seconds).map_err(|_| {
                    ConfigError::invalid(
                        &name,
                        format!("{name} {seconds} is out of range: 0 (off) to 65535 seconds"),
                    )
                })?;
                if let Some(wg) = &mut wireguard {
                    wg.persistent_keepalive = seconds;
                }
            }
            (BackendKind::Wireguard, "mtu") => {
                let mtu = flannel_uint(&name, value)?;
                if let Some(wg) = &mut wireguard {
                    wg.mtu = Some(u32::try_from(mtu).unwrap_or(u32::MAX));
                }
            }
            (BackendKind::Wireguard, "mode") => {
                let mode = match flannel_str(&name, value)? {
                    "separate" => FlannelWgMode::Separate,
                    "auto" => FlannelWgMode::Auto,
                    "ipv4" => FlannelWgMode::Ipv4,
                    "ipv6" => FlannelWgMode::Ipv6,
                    other => {
                        return fail(ConfigError::invalid(
                            &name,
                            format!(
                                "{name} {other:?} is not one of Flannel's modes: separate, auto, \
                                 ipv4 or ipv6"
                            ),
                        ));
                    }
                };
                families.mode = Some((name, mode));
            }
            (BackendKind::Wireguard, "listenportv6") => {
                let port = flannel_uint(&name, value)?;
                let port = u16::try_from(port).map_err(|_| {
                    ConfigError::invalid(
                        &name,
                        format!("{name} {port} is not a UDP port (1 to 65535)"),
                    )
                })?;
                families.listen_port_v6 = Some((name, port));
            }
            (BackendKind::Vxlan, "mtu" | "macprefix") => {
                return fail(ConfigError::unsupported(
                    &name,
                    format!("{name} is a Flannel {kind} option twill does not support yet"),
                ));
            }
            _ => {
                let known = match kind {
                    BackendKind::Vxlan => "Type, VNI, Port, DirectRouting",
                    BackendKind::Udp => "Type, Port, DirectRouting",
                    BackendKind::Ipip => "Type, DirectRouting",
                    BackendKind::Wireguard => {
                        "Type, ListenPort, ListenPortV6, PSK, PersistentKeepaliveInterval, MTU, \
                         Mode"
                    }
                    BackendKind::HostGw | BackendKind::Bgp => "Type",
                };
                return fail(ConfigError::unknown_key(
                    &name,
                    format!("unknown key {name:?} for the {kind} backend (known: {known})"),
                ));
            }
        }
    }
    if let Some(wg) = &mut wireguard {
        wg.listen_port = backend.port;
    }
    Ok((backend, wireguard, families, fields))
}

/// Flannel's `Mode` and `ListenPortV6` against what twill runs: one WireGuard device,
/// `twill.wg`, carrying both families over either underlay (IPv4 wherever both ends have
/// one). So, in a cluster with IPv4 pools:
/// - `auto` and `ipv4` are exactly that (and no `Mode` means it too, although flanneld's
///   default is `separate`: twill has no second device to give a dual-stack cluster);
/// - `separate` is refused on a dual-stack cluster, where it would mean a second device and
///   port for IPv6 (on an IPv4-only one it is the same single device, and accepted);
/// - `ipv6` (peers at their IPv6 underlay address even when both ends have IPv4) is refused;
/// - `ListenPortV6` is accepted when it names `ListenPort`'s port, or when it means nothing
///   (IPv4 only, or with `auto` / `ipv4`, where flanneld ignores it too); otherwise it would
///   be a second port for IPv6 and is refused.
///
/// In an IPv6-only cluster (`ipv6_only`) flanneld makes one device too, and twill follows it:
/// - `separate` (and no `Mode`, flanneld's default) makes only flanneld's IPv6 device, on
///   `ListenPortV6` (51821 when missing or 0): twill's device listens there, so the port is
///   returned (`ListenPort` then means nothing, as in flanneld);
/// - `auto` and `ipv6` make the one device on `ListenPort`, peers at their IPv6 addresses
///   (`ListenPortV6` means nothing);
/// - `ipv4` is refused: it sends to the peers' IPv4 addresses, which they do not have.
///
/// Returns the WireGuard port when it is not `listen_port` (`ListenPort` or its default).
fn check_wireguard_families(
    families: &FlannelWgFamilies,
    ipv6_only: bool,
    enable_ipv6: bool,
    listen_port: u16,
) -> Result<Option<u16>, ConfigError> {
    if ipv6_only {
        return match &families.mode {
            Some((name, FlannelWgMode::Ipv4)) => fail(ConfigError::unsupported(
                name,
                format!(
                    "{name} ipv4 sends WireGuard to the peers' IPv4 addresses, and this cluster \
                     is IPv6-only (EnableIPv4 false): use \"Mode\": \"ipv6\" or \"auto\""
                ),
            )),
            Some((_, FlannelWgMode::Auto | FlannelWgMode::Ipv6)) => Ok(None),
            None | Some((_, FlannelWgMode::Separate)) => Ok(Some(match families.listen_port_v6 {
                None | Some((_, 0)) => FLANNEL_DEFAULT_LISTEN_PORT_V6,
                Some((_, port)) => port,
            })),
        };
    }
    let one_device = "twill carries both families through one WireGuard device (twill.wg) on \
                      Backend.ListenPort";
    match &families.mode {
        Some((name, FlannelWgMode::Separate)) if enable_ipv6 => {
            return fail(ConfigError::unsupported(
                name,
                format!(
                    "{name} separate asks for a second WireGuard device and port for IPv6 \
                     (flanneld's flannel-wg-v6 on ListenPortV6); {one_device}: use \
                     \"Mode\": \"auto\" or leave Mode out"
                ),
            ));
        }
        Some((name, FlannelWgMode::Ipv6)) => {
            return fail(ConfigError::unsupported(
                name,
                format!(
                    "{name} ipv6 sends WireGuard to the peers' IPv6 addresses; in a cluster with \
                     IPv4 pools twill's WireGuard runs over the IPv4 underlay wherever both ends \
                     have one: use \"Mode\": \"auto\" or \"ipv4\" (ipv6 is for IPv6-only \
                     clusters, EnableIPv4 false)"
                ),
            ));
        }
        _ => {}
    }
    let single_by_choice = matches!(
        families.mode,
        Some((_, FlannelWgMode::Auto | FlannelWgMode::Ipv4))
    );
    if let Some((name, port)) = &families.listen_port_v6
        && enable_ipv6
        && !single_by_choice
        && *port != listen_port
    {
        return fail(ConfigError::unsupported(
            name,
            format!(
                "{name} {port} would be a second WireGuard port for IPv6 (flanneld's separate \
                 mode); {one_device} {listen_port}: leave {name} out or set it to {listen_port}"
            ),
        ));
    }
    Ok(None)
}
