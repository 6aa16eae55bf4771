//! Reading a cluster config: which form a text is in ([`ConfigForm`]), handing it to that
//! form's reader, and the normalized JSON the store holds.

use super::error::ConfigError;
use super::fields::fail;
use super::flannel::parse_flannel;
use super::model::ClusterConfig;
use super::twill_form::{RawTwill, from_twill};

impl ClusterConfig {
    /// Parses and validates a cluster config in any accepted form:
    /// - text starting with `{` is JSON: Flannel's net-conf.json, or (when it has a `pools`
    ///   key) twill's own form, or the normalized form that [`ClusterConfig::to_json`] writes;
    /// - anything else is twill's own form in TOML, or else in YAML.
    ///
    /// When neither TOML nor YAML accepts the text, the error is the one of the parser the
    /// text looks written for, with its line numbers.
    ///
    /// **Flannel's net-conf.json** is read as flanneld reads it: keys match case-insensitively,
    /// `null` is a missing key, a missing `Backend` means udp. `SubnetLen` defaults to 24, or
    /// to the Network prefix + 2 when the Network is longer than /22 (a Network longer than
    /// /28 is refused); an explicit `SubnetLen` must leave at least four subnets. `SubnetMin`
    /// defaults to the network's second subnet (the first is never leased) and `SubnetMax` to
    /// its last. The one pool is named `default`, with NAT outgoing on. `"EnableIPv6": true`
    /// adds an IPv6 pool `default6` (dual-stack) from `IPv6Network` (required then),
    /// `IPv6SubnetLen` (default 64, or the prefix + 2 when `IPv6Network` is longer than /62;
    /// an explicit one leaves at least four subnets and is at most /122), `IPv6SubnetMin` and
    /// `IPv6SubnetMax` (defaults as for IPv4), NAT outgoing on; without it the IPv6 keys are
    /// checked for form and ignored, as flanneld does. `"EnableIPv4": false` with
    /// `"EnableIPv6": true` is an IPv6-only cluster: no IPv4 pool (the IPv4 keys are checked
    /// for form and unused).
    ///
    /// **twill's own form** (keys: `backend`, `vni`, `port`, `directRouting`, `wireguard`,
    /// `pools`; per
    /// pool: `name`, `cidr`, `blockSize`, `subnetMin`, `subnetMax`, `vxlanMode`, `ipipMode`,
    /// `natOutgoing`): a missing `blockSize` follows Flannel's `SubnetLen` rule (so 24 for
    /// pools of /22 or larger), bounds default as in Flannel, `natOutgoing` defaults to true.
    /// If no pool sets `vxlanMode` or `ipipMode`, `backend` decides (vxlan by default). If any
    /// does, a missing mode is `Never` as in Calico, all pools must mean the same backend, and
    /// they decide it: `Always` is that encapsulation, `CrossSubnet` is that encapsulation with
    /// direct routing, `Never` for both is host-gw; an explicit `backend` must agree (except
    /// `wireguard` over `Never`, which is how Calico runs WireGuard). A `wireguard` block
    /// (`enabled`, default true when the block is there; `listenPort`, `mtu`, `mode` Always or
    /// CrossSubnet, `persistentKeepalive`, `presharedKey`) encrypts node-to-node pod traffic
    /// on any backend, or holds the wireguard backend's settings.
    ///
    /// A pool whose `cidr` is IPv6 is an IPv6 pool (dual-stack; with IPv6 pools only, an
    /// IPv6-only cluster): `blockSize` defaults to 64 (or the prefix + 2 for pools longer than /62) and
    /// may be anything from the prefix + 1 to /122; `subnetMin`, `subnetMax` and
    /// `natOutgoing` are as for IPv4. Its `ipipMode` may only be `Never` (IPIP carries IPv4
    /// only); without modes it follows the IPv4 pools, with `vxlanMode` it must agree with
    /// them.
    ///
    /// Dual-stack configs (either form) run on every backend (the `wireguard` block carries
    /// both families too, BGP-learned routes included), and need at least as many leasable
    /// IPv6 node subnets as IPv4 ones: a node's IPv6 subnet is the one at its IPv4 subnet's
    /// index. IPv6-only configs run on every backend too (over the nodes' IPv6 underlay); their
    /// BGP peers must be IPv6 routers.
    pub fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        if text.trim_start().starts_with('{') {
            return parse_json(text);
        }
        let toml_err = match toml::from_str::<toml::Table>(text) {
            // The text is TOML: errors from here on are about its content, and TOML's error
            // carries the position.
            Ok(_) => {
                let raw = toml::from_str::<RawTwill>(text)
                    .map_err(|e| ConfigError::syntax("TOML", e.to_string().trim_end()))?;
                return from_twill(raw);
            }
            Err(e) => e,
        };
        match serde_saphyr::from_str::<RawTwill>(text) {
            Ok(raw) => from_twill(raw),
            Err(yaml_err) if !looks_like_toml(text) => {
                fail(ConfigError::syntax("YAML", yaml_err.to_string().trim_end()))
            }
            Err(_) => fail(ConfigError::syntax("TOML", toml_err.to_string().trim_end())),
        }
    }

    /// Reads the normalized form written by [`ClusterConfig::to_json`] (what the store holds),
    /// and validates it: the store may hold anything.
    pub fn from_json(text: &str) -> Result<ClusterConfig, ConfigError> {
        let config: ClusterConfig = serde_json::from_str(text)
            .map_err(|e| ConfigError::syntax("cluster config JSON", e))?;
        config.validate()?;
        Ok(config)
    }

    /// The normalized form as compact JSON, as the store holds it under
    /// [`CONFIG_KEY`](crate::keys::CONFIG_KEY).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a ClusterConfig always serializes")
    }
}

/// JSON: Flannel's net-conf.json, twill's form, or the normalized form.
fn parse_json(text: &str) -> Result<ClusterConfig, ConfigError> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| ConfigError::syntax("JSON", e))?;
    let Some(object) = value.as_object() else {
        return fail(ConfigError::syntax("JSON", "the config must be an object"));
    };
    match object.get("pools") {
        // Only twill's forms have `pools`; the normalized one has an object as `backend`.
        Some(_) if object.get("backend").is_some_and(|b| b.is_object()) => {
            let config: ClusterConfig =
                serde_json::from_value(value).map_err(|e| ConfigError::syntax("JSON", e))?;
            config.validate()?;
            Ok(config)
        }
        Some(_) => {
            let raw: RawTwill =
                serde_json::from_value(value).map_err(|e| ConfigError::syntax("JSON", e))?;
            from_twill(raw)
        }
        None => parse_flannel(object),
    }
}

/// Whether text that neither parser accepted reads more like TOML (`key = value`, `[table]`)
/// than YAML (`key: value`, `- item`), to report the error of the parser the user meant.
fn looks_like_toml(text: &str) -> bool {
    let (mut toml, mut yaml) = (0, 0);
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            toml += 1;
        }
        if line.starts_with("- ") {
            yaml += 1;
        }
        match line.find(['=', ':']).map(|i| line.as_bytes()[i]) {
            Some(b'=') => toml += 1,
            Some(b':') => yaml += 1,
            _ => {}
        }
    }
    toml > yaml
}
