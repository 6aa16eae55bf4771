//! How a form names the fields, so that messages use the user's own words while errors carry
//! the field's path; and the readers of single values every form shares (a network, a prefix
//! length, an address, the default node subnet length).
//!
//! Both forms' names live here, with [`ConfigForm`] (which form a text is in), where each pool
//! was written ([`PoolPlaces`]) and the limits the readers check (`MAX_BLOCK_SIZE`), so that
//! the forms' readers, the parser and the validation share them without importing each other.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::error::ConfigError;

/// How a form names the fields, so that messages use the user's own words.
pub(super) struct Fields {
    /// The backend's name (`backend`, Flannel's `Backend.Type`).
    pub(super) kind: &'static str,
    /// The fields of an IPv4 pool (Flannel's `Network`, ...).
    pub(super) pool: PoolFields,
    /// The fields of an IPv6 pool (Flannel's `IPv6Network`, ...; twill's form names them as
    /// for IPv4).
    pub(super) pool6: PoolFields,
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

/// How a form names the fields of one pool.
pub(super) struct PoolFields {
    pub(super) cidr: &'static str,
    pub(super) block: &'static str,
    pub(super) min: &'static str,
    pub(super) max: &'static str,
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
/// The longest IPv6 node subnet: /122 leaves 64 addresses per node (Calico's IPv6 default).
pub const MAX_BLOCK_SIZE6: u8 = 122;
/// Flannel's default `IPv6SubnetLen`.
pub const DEFAULT_IPV6_SUBNET_LEN: u8 = 64;

/// Flannel's names of the fields.
pub(super) const FLANNEL_FIELDS: Fields = Fields {
    kind: "Backend.Type",
    pool: PoolFields {
        cidr: "Network",
        block: "SubnetLen",
        min: "SubnetMin",
        max: "SubnetMax",
    },
    pool6: PoolFields {
        cidr: "IPv6Network",
        block: "IPv6SubnetLen",
        min: "IPv6SubnetMin",
        max: "IPv6SubnetMax",
    },
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

/// twill's names of a pool's fields, the same for both families.
const TWILL_POOL_FIELDS: PoolFields = PoolFields {
    cidr: "cidr",
    block: "blockSize",
    min: "subnetMin",
    max: "subnetMax",
};

/// Field names of twill's own form and of the normalized one.
pub(super) const TWILL_FIELDS: Fields = Fields {
    kind: "backend",
    pool: TWILL_POOL_FIELDS,
    pool6: TWILL_POOL_FIELDS,
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
    /// Where the fields of pool `index` of the list `pools`, named `pool`, are.
    pub(super) fn at(&self, index: usize, pool: &str) -> At {
        self.at_in("pools", index, pool)
    }

    /// Where the fields of entry `index` of the pool list `list`, named `pool`, are.
    fn at_in(&self, list: &str, index: usize, pool: &str) -> At {
        if self.per_pool {
            At {
                shown: format!("pool {pool}: "),
                path: format!("{list}[{index}]."),
            }
        } else {
            At::top()
        }
    }
}

/// Where the pools of a config were written, so that paths name the entry the user wrote:
/// twill's form lists the pools of both families in one list `pools`, while the normalized form
/// keeps the IPv4 ones in `pools` and the IPv6 ones in `ipv6Pools`.
pub(super) struct PoolPlaces {
    /// The index in `pools` of each IPv4 pool; empty when it is the pool's own index.
    v4: Vec<usize>,
    /// The index in `list6` of each IPv6 pool; empty when it is the pool's own index.
    v6: Vec<usize>,
    list6: &'static str,
}

impl PoolPlaces {
    /// The normalized form's places (and Flannel's, whose one network per family has no
    /// index).
    pub(super) fn normalized() -> PoolPlaces {
        PoolPlaces {
            v4: Vec::new(),
            v6: Vec::new(),
            list6: "ipv6Pools",
        }
    }

    /// Both families in one list `pools`: `v4[i]` is the index of the `i`th IPv4 pool there,
    /// `v6[i]` that of the `i`th IPv6 pool.
    pub(super) fn listed(v4: Vec<usize>, v6: Vec<usize>) -> PoolPlaces {
        PoolPlaces {
            v4,
            v6,
            list6: "pools",
        }
    }

    /// Where the fields of the `index`th IPv4 pool, named `pool`, are.
    pub(super) fn at(&self, fields: &Fields, index: usize, pool: &str) -> At {
        fields.at(self.v4.get(index).copied().unwrap_or(index), pool)
    }

    /// Where the fields of the `index`th IPv6 pool, named `pool`, are.
    pub(super) fn at6(&self, fields: &Fields, index: usize, pool: &str) -> At {
        let written = self.v6.get(index).copied().unwrap_or(index);
        fields.at_in(self.list6, written, pool)
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

pub(super) fn check_cidr(at: &At, field: &str, cidr: IpNet) -> Result<(), ConfigError> {
    if cidr.addr() != cidr.network() {
        return fail(ConfigError::invalid(
            at.field(field),
            format!(
                "{at}{field} {cidr} has host bits set; did you mean {}?",
                cidr.trunc()
            ),
        ));
    }
    Ok(())
}

/// A node subnet length: longer than the pool's prefix, and no longer than the family's
/// longest node subnet ([`MAX_BLOCK_SIZE`], [`MAX_BLOCK_SIZE6`]).
pub(super) fn check_block(
    at: &At,
    names: &PoolFields,
    cidr: IpNet,
    block: u8,
) -> Result<(), ConfigError> {
    let (max, why) = match cidr {
        IpNet::V4(_) => (MAX_BLOCK_SIZE, "a gateway and at least one pod"),
        IpNet::V6(_) => (MAX_BLOCK_SIZE6, "at least 64 addresses per node"),
    };
    if block > max {
        return fail(ConfigError::invalid(
            at.field(names.block),
            format!(
                "{at}{} /{block} is too long: node subnets must be /{max} or shorter ({why})",
                names.block
            ),
        ));
    }
    if block <= cidr.prefix_len() {
        return fail(ConfigError::invalid(
            at.field(names.block),
            format!(
                "{at}{} /{block} must be longer than the {} prefix /{} to cut {cidr} into node \
                 subnets",
                names.block,
                names.cidr,
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

/// Flannel's default IPv6 node subnet length, the same rule as for IPv4: a /64 when the
/// network holds at least four of them, else a quarter of the network; networks too small for
/// four node subnets of at most [`MAX_BLOCK_SIZE6`] are refused. twill's own IPv6 pools use
/// the same rule for a missing `blockSize`.
pub(super) fn default_block6(at: &At, field: &str, cidr: Ipv6Net) -> Result<u8, ConfigError> {
    let smallest = MAX_BLOCK_SIZE6 - 2;
    match cidr.prefix_len() {
        p if p > smallest => fail(ConfigError::invalid(
            at.field(field),
            format!(
                "{at}{field} {cidr} is too small: the smallest IPv6 network is a /{smallest} \
                 (four /{MAX_BLOCK_SIZE6} node subnets)"
            ),
        )),
        p if p <= DEFAULT_IPV6_SUBNET_LEN - 2 => Ok(DEFAULT_IPV6_SUBNET_LEN),
        p => Ok(p + 2),
    }
}

/// A network of either family (a pool's `cidr` in twill's form).
pub(super) fn parse_net(at: &At, field: &str, text: &str) -> Result<IpNet, ConfigError> {
    text.parse().or_else(|_| {
        fail(ConfigError::invalid(
            at.field(field),
            format!(
                "{at}{field} {text:?} is not a network in CIDR form such as 10.244.0.0/16 or \
                 fd00:10:244::/56"
            ),
        ))
    })
}

/// A prefix length of a family whose addresses have `bits` bits (32 or 128).
pub(super) fn prefix_len<N: Copy + fmt::Display + TryInto<u8>>(
    at: &At,
    field: &str,
    len: N,
    bits: u8,
) -> Result<u8, ConfigError> {
    len.try_into()
        .ok()
        .filter(|len| *len <= bits)
        .ok_or_else(|| {
            ConfigError::invalid(
                at.field(field),
                format!("{at}{field} {len} is not a prefix length (0 to {bits})"),
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

pub(super) fn parse_addr6(at: &At, field: &str, text: &str) -> Result<Ipv6Addr, ConfigError> {
    text.parse().or_else(|_| {
        fail(ConfigError::invalid(
            at.field(field),
            format!("{at}{field} {text:?} is not an IPv6 address such as fd00:10:244:1::"),
        ))
    })
}
