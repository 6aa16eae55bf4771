//! How a form names the fields, so that messages use the user's own words while errors carry
//! the field's path; and the readers of single values every form shares (a network, a prefix
//! length, an address, the default node subnet length).
//!
//! Both forms' names live here, with [`ConfigForm`] (which form a text is in) and the limits
//! the readers check (`MAX_BLOCK_SIZE`), so that the forms' readers, the parser and the
//! validation share them without importing each other.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::error::ConfigError;

/// How a form names the fields, so that messages use the user's own words.
pub(super) struct Fields {
    /// The backend's name (`backend`, Flannel's `Backend.Type`).
    pub(super) kind: &'static str,
    pub(super) cidr: &'static str,
    pub(super) block: &'static str,
    pub(super) min: &'static str,
    pub(super) max: &'static str,
    pub(super) vni: &'static str,
    pub(super) port: &'static str,
    pub(super) direct_routing: &'static str,
    /// WireGuard's settings (twill's `wireguard` block, the keys of Flannel's wireguard
    /// `Backend`).
    pub(super) wireguard: WireguardFields,
    /// Messages start with `pool <name>: ` and paths with `pools[<index>].` (Flannel's one
    /// network has no name to show and is the whole config).
    pub(super) per_pool: bool,
}

/// How a form names WireGuard's settings.
pub(super) struct WireguardFields {
    pub(super) port: &'static str,
    pub(super) mtu: &'static str,
    pub(super) mode: &'static str,
    pub(super) psk: &'static str,
}

/// The longest node subnet: a /30 still holds a gateway and one pod besides the network and
/// broadcast addresses (Flannel's limit too).
pub const MAX_BLOCK_SIZE: u8 = 30;

/// Flannel's names of the fields.
pub(super) const FLANNEL_FIELDS: Fields = Fields {
    kind: "Backend.Type",
    cidr: "Network",
    block: "SubnetLen",
    min: "SubnetMin",
    max: "SubnetMax",
    vni: "Backend.VNI",
    port: "Backend.Port",
    direct_routing: "Backend.DirectRouting",
    wireguard: WireguardFields {
        port: "Backend.ListenPort",
        mtu: "Backend.MTU",
        mode: "Backend.Mode",
        psk: "Backend.PSK",
    },
    per_pool: false,
};

/// Which form a config was written in, so that messages name its fields as the user did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigForm {
    /// Flannel's net-conf.json (`Network`, `SubnetLen`, ...).
    Flannel,
    /// twill's own form or the normalized one (`pools`, `cidr`, `blockSize`, ...).
    Twill,
}

impl ConfigForm {
    /// The form of `text` as [`ClusterConfig::parse`] reads it.
    pub fn of(text: &str) -> ConfigForm {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if !text.trim_start().starts_with('{') {
            return ConfigForm::Twill;
        }
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) if v.get("pools").is_none() => ConfigForm::Flannel,
            _ => ConfigForm::Twill,
        }
    }

    pub(super) fn fields(self) -> &'static Fields {
        match self {
            ConfigForm::Flannel => &FLANNEL_FIELDS,
            ConfigForm::Twill => &TWILL_FIELDS,
        }
    }
}

/// Field names of twill's own form and of the normalized one.
pub(super) const TWILL_FIELDS: Fields = Fields {
    kind: "backend",
    cidr: "cidr",
    block: "blockSize",
    min: "subnetMin",
    max: "subnetMax",
    vni: "vni",
    port: "port",
    direct_routing: "directRouting",
    wireguard: WireguardFields {
        port: "wireguard.listenPort",
        mtu: "wireguard.mtu",
        mode: "wireguard.mode",
        psk: "wireguard.presharedKey",
    },
    per_pool: true,
};

impl Fields {
    /// Where the fields of pool `index`, named `pool`, are.
    pub(super) fn at(&self, index: usize, pool: &str) -> At {
        if self.per_pool {
            At {
                shown: format!("pool {pool}: "),
                path: format!("pools[{index}]."),
            }
        } else {
            At::top()
        }
    }
}

/// Where a field is: the prefix messages show before its name (`pool web: `) and the prefix
/// of its path (`pools[0].`). Displays as the message prefix.
pub(super) struct At {
    shown: String,
    path: String,
}

impl At {
    /// A field at the top of the config (Flannel's pool fields, twill's `bgp.*`).
    pub(super) fn top() -> At {
        At {
            shown: String::new(),
            path: String::new(),
        }
    }

    /// The path of field `key` here.
    pub(super) fn field(&self, key: &str) -> String {
        format!("{}{key}", self.path)
    }
}

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

pub(super) fn fail<T>(error: ConfigError) -> Result<T, ConfigError> {
    Err(error)
}

pub(super) fn check_cidr(at: &At, fields: &Fields, cidr: Ipv4Net) -> Result<(), ConfigError> {
    if cidr.addr() != cidr.network() {
        return fail(ConfigError::invalid(
            at.field(fields.cidr),
            format!(
                "{at}{} {cidr} has host bits set; did you mean {}?",
                fields.cidr,
                cidr.trunc()
            ),
        ));
    }
    Ok(())
}

pub(super) fn check_block(
    at: &At,
    fields: &Fields,
    cidr: Ipv4Net,
    block: u8,
) -> Result<(), ConfigError> {
    if block > MAX_BLOCK_SIZE {
        return fail(ConfigError::invalid(
            at.field(fields.block),
            format!(
                "{at}{} /{block} is too long: node subnets must be /{MAX_BLOCK_SIZE} or shorter \
                 (a gateway and at least one pod)",
                fields.block
            ),
        ));
    }
    if block <= cidr.prefix_len() {
        return fail(ConfigError::invalid(
            at.field(fields.block),
            format!(
                "{at}{} /{block} must be longer than the {} prefix /{} to cut {cidr} into node \
                 subnets",
                fields.block,
                fields.cidr,
                cidr.prefix_len()
            ),
        ));
    }
    Ok(())
}

/// Flannel's default node subnet length: a /24 when the network holds at least four of them,
/// else a quarter of the network; networks longer than /28 are refused (Flannel's rules, from
/// its `CheckNetworkConfig`). twill's own pools use the same rule for a missing `blockSize`.
pub(super) fn default_block(at: &At, field: &str, cidr: Ipv4Net) -> Result<u8, ConfigError> {
    match cidr.prefix_len() {
        p if p > 28 => fail(ConfigError::invalid(
            at.field(field),
            format!(
                "{at}{field} {cidr} is too small: the smallest network is a /28 (four /30 node \
                 subnets)"
            ),
        )),
        p if p <= 22 => Ok(24),
        p => Ok(p + 2),
    }
}

pub(super) fn parse_cidr(at: &At, field: &str, text: &str) -> Result<Ipv4Net, ConfigError> {
    if let Ok(net) = text.parse::<Ipv4Net>() {
        return Ok(net);
    }
    if text.parse::<ipnet::Ipv6Net>().is_ok() {
        return fail(ConfigError::unsupported(
            at.field(field),
            format!("{at}{field} {text} is an IPv6 network: IPv6 not supported yet"),
        ));
    }
    fail(ConfigError::invalid(
        at.field(field),
        format!("{at}{field} {text:?} is not an IPv4 network in CIDR form such as 10.244.0.0/16"),
    ))
}

pub(super) fn prefix_len<N: Copy + fmt::Display + TryInto<u8>>(
    at: &At,
    field: &str,
    len: N,
) -> Result<u8, ConfigError> {
    len.try_into().ok().filter(|len| *len <= 32).ok_or_else(|| {
        ConfigError::invalid(
            at.field(field),
            format!("{at}{field} {len} is not a prefix length (0 to 32)"),
        )
    })
}

pub(super) fn parse_addr(at: &At, field: &str, text: &str) -> Result<Ipv4Addr, ConfigError> {
    text.parse().or_else(|_| {
        fail(ConfigError::invalid(
            at.field(field),
            format!("{at}{field} {text:?} is not an IPv4 address such as 10.244.1.0"),
        ))
    })
}
