//! Why a cluster config was refused: [`ConfigError`] says what kind of problem it is, which
//! field it is about (as a path in the form's own words) and the message users see.
//!
//! The message of each error is its `Display`; it names the field the way the user wrote it
//! (`pool web: cidr`, `Backend.VNI`), while `field` is the path a program can match on
//! (`pools[0].cidr`, `Backend.VNI`).

/// Why a cluster config (or a BGP peer the store holds) was refused.
///
/// `field` is the path of the field in the form that was read: `pools[0].cidr`,
/// `bgp.peers[1].asNumber`, `workloadToHostPorts[2]` in twill's form, `Network` or
/// `Backend.VNI` in Flannel's. `problem` is the whole message, which names the field as the
/// user wrote it; it is what `Display` shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The text is not TOML, YAML or JSON, or does not have the form's shape (a value of the
    /// wrong type, a key twill's form does not have). `form` is what was being read: `TOML`,
    /// `YAML`, `JSON`, `cluster config JSON` (the normalized form), or a key whose value is read
    /// as a whole (Flannel's `BGP`, a store key); `detail` is the parser's message.
    #[error("{form}: {detail}")]
    Syntax { form: String, detail: String },
    /// A required field (or list) is absent or empty.
    #[error("{problem}")]
    Missing { field: String, problem: String },
    /// A field's value is refused: out of range, malformed, misaligned, reserved.
    #[error("{problem}")]
    Invalid { field: String, problem: String },
    /// A key Flannel's form does not have (twill's own form reports these as
    /// [`ConfigError::Syntax`], from its parser).
    #[error("{problem}")]
    UnknownKey { field: String, problem: String },
    /// A setting of Flannel or Calico that twill does not offer (yet): IPv6-only clusters,
    /// some backend options, a backend by another name.
    #[error("{problem}")]
    Unsupported { field: String, problem: String },
    /// `field` contradicts `with`: another field of the config, or something the host
    /// already uses.
    #[error("{problem}")]
    Conflict {
        field: String,
        with: String,
        problem: String,
    },
    /// The BGP peer the store holds under `key` is refused; `error` says why, with fields
    /// named within the peer (`asNumber`, `password`).
    #[error("{key}: {error}")]
    Stored {
        key: String,
        error: Box<ConfigError>,
    },
}

impl ConfigError {
    pub(crate) fn missing(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Missing {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn unknown_key(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::UnknownKey {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn unsupported(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Unsupported {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn conflict(
        field: impl Into<String>,
        with: impl Into<String>,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Conflict {
            field: field.into(),
            with: with.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn syntax(form: impl Into<String>, detail: impl ToString) -> ConfigError {
        ConfigError::Syntax {
            form: form.into(),
            detail: detail.to_string(),
        }
    }

    /// The error with `prefix` taken off the start of its paths and message: for an error
    /// whose fields were named under a prefix (a store key) and that is then reported within
    /// [`ConfigError::Stored`], which shows the prefix once more.
    pub(crate) fn relative_to(self, prefix: &str) -> ConfigError {
        let strip = |text: String| match text.strip_prefix(prefix) {
            Some(rest) => rest.to_string(),
            None => text,
        };
        match self {
            ConfigError::Missing { field, problem } => ConfigError::Missing {
                field: strip(field),
                problem: strip(problem),
            },
            ConfigError::Invalid { field, problem } => ConfigError::Invalid {
                field: strip(field),
                problem: strip(problem),
            },
            ConfigError::UnknownKey { field, problem } => ConfigError::UnknownKey {
                field: strip(field),
                problem: strip(problem),
            },
            ConfigError::Unsupported { field, problem } => ConfigError::Unsupported {
                field: strip(field),
                problem: strip(problem),
            },
            ConfigError::Conflict {
                field,
                with,
                problem,
            } => ConfigError::Conflict {
                field: strip(field),
                with: strip(with),
                problem: strip(problem),
            },
            other @ (ConfigError::Syntax { .. } | ConfigError::Stored { .. }) => other,
        }
    }

    /// The path of the field the error is about (within the stored peer for
    /// [`ConfigError::Stored`]); None for syntax errors, which are about the text.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Syntax { .. } => None,
            ConfigError::Missing { field, .. }
            | ConfigError::Invalid { field, .. }
            | ConfigError::UnknownKey { field, .. }
            | ConfigError::Unsupported { field, .. }
            | ConfigError::Conflict { field, .. } => Some(field),
            ConfigError::Stored { error, .. } => error.field(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{BgpPeer, ClusterConfig};
    use super::*;

    fn refused(text: &str) -> ConfigError {
        match ClusterConfig::parse(text) {
            Ok(c) => panic!("{text}\naccepted: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_bad_pool_cidr_names_the_pool_field() {
        let e = refused("[[pools]]\nname = \"web\"\ncidr = \"10.244.0.1/16\"\n");
        let ConfigError::Invalid { field, problem } = &e else {
            panic!("not Invalid: {e:?}");
        };
        assert_eq!(field, "pools[0].cidr");
        assert!(problem.contains("host bits set"), "{problem}");
        assert!(
            problem.starts_with("pool web: cidr 10.244.0.1/16"),
            "{problem}"
        );
        assert_eq!(e.to_string(), *problem);
        assert_eq!(e.field(), Some("pools[0].cidr"));

        // The second pool's path has its own index.
        let e = refused(
            "[[pools]]\nname = \"a\"\ncidr = \"10.1.0.0/16\"\n\
             [[pools]]\nname = \"b\"\ncidr = \"10.2.0.0/16\"\nblockSize = 31\n",
        );
        assert!(
            matches!(&e, ConfigError::Invalid { field, .. } if field == "pools[1].blockSize"),
            "{e:?}"
        );
    }

    #[test]
    fn overlapping_pools_are_a_conflict_between_both_cidrs() {
        let e = refused(
            "[[pools]]\nname = \"a\"\ncidr = \"10.1.0.0/16\"\n\
             [[pools]]\nname = \"b\"\ncidr = \"10.1.128.0/17\"\n",
        );
        let ConfigError::Conflict {
            field,
            with,
            problem,
        } = &e
        else {
            panic!("not Conflict: {e:?}");
        };
        assert_eq!(
            (field.as_str(), with.as_str()),
            ("pools[1].cidr", "pools[0].cidr")
        );
        assert!(problem.contains("overlaps pool a"), "{problem}");
    }

    #[test]
    fn a_bad_flannel_key_is_named_as_written() {
        let e = refused(r#"{"Network": "10.244.0.0/16", "Subnetlength": 24}"#);
        let ConfigError::UnknownKey { field, problem } = &e else {
            panic!("not UnknownKey: {e:?}");
        };
        assert_eq!(field, "Subnetlength");
        assert!(
            problem.starts_with("unknown key \"Subnetlength\""),
            "{problem}"
        );

        let e = refused(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 0}}"#);
        let ConfigError::Invalid { field, problem } = &e else {
            panic!("not Invalid: {e:?}");
        };
        assert_eq!(field, "Backend.VNI");
        assert!(problem.contains("is out of range"), "{problem}");

        let e =
            refused(r#"{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "MTU": 1400}}"#);
        assert!(
            matches!(&e, ConfigError::Unsupported { field, .. } if field == "Backend.MTU"),
            "{e:?}"
        );

        // Network is Flannel's IPv4 key; IPv6 has keys of its own.
        let e = refused(r#"{"Network": "fd00::/64"}"#);
        assert!(
            matches!(&e, ConfigError::Invalid { field, problem }
                if field == "Network" && problem.contains("IPv6Network")),
            "{e:?}"
        );
        let e = refused(r#"{"Network": "10.244.0.0/16", "EnableIPv4": false}"#);
        assert!(
            matches!(&e, ConfigError::Conflict { field, .. } if field == "EnableIPv4"),
            "{e:?}"
        );

        let e = refused(r#"{"Backend": {"Type": "vxlan"}}"#);
        assert!(
            matches!(&e, ConfigError::Missing { field, .. } if field == "Network"),
            "{e:?}"
        );
    }

    #[test]
    fn a_bad_bgp_as_names_the_as_field() {
        let pool = "[[pools]]\nname = \"p\"\ncidr = \"10.244.0.0/16\"\n";
        let e = refused(&format!("{pool}[bgp]\nasNumber = 23456\n"));
        let ConfigError::Invalid { field, problem } = &e else {
            panic!("not Invalid: {e:?}");
        };
        assert_eq!(field, "bgp.asNumber");
        assert!(problem.contains("AS_TRANS"), "{problem}");

        let e = refused(&format!(
            "{pool}[bgp]\n[[bgp.peers]]\naddress = \"192.0.2.1\"\nasNumber = 0\n"
        ));
        assert!(
            matches!(&e, ConfigError::Invalid { field, problem }
                if field == "bgp.peers[0].asNumber" && problem.contains("0 is reserved")),
            "{e:?}"
        );

        let e = refused(&format!(
            "{pool}[bgp]\nrouteReflectors = [\"n1\"]\nnodeToNodeMesh = true\n"
        ));
        assert!(
            matches!(&e, ConfigError::Conflict { field, with, .. }
                if field == "bgp.nodeToNodeMesh" && with == "bgp.routeReflectors"),
            "{e:?}"
        );
    }

    #[test]
    fn a_stored_peer_error_names_the_key_and_the_field_within_the_peer() {
        let key = "/twill/bgp/peers/192.0.2.1";
        let e = BgpPeer::from_store(key, br#"{"address":"192.0.2.1","asNumber":0}"#).unwrap_err();
        let ConfigError::Stored { key: at, error } = &e else {
            panic!("not Stored: {e:?}");
        };
        assert_eq!(at, key);
        assert!(
            matches!(&**error, ConfigError::Invalid { field, .. } if field == "asNumber"),
            "{error:?}"
        );
        assert_eq!(e.field(), Some("asNumber"));
        assert_eq!(
            e.to_string(),
            format!("{key}: asNumber 0 is reserved: use 1 to 4294967295")
        );

        // Password sources name every field under the key, as before; the paths do not.
        let e = BgpPeer::from_store(
            key,
            br#"{"address":"192.0.2.1","asNumber":5,"password":"a","passwordEnv":"B"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(&e, ConfigError::Stored { error, .. }
                if matches!(&**error, ConfigError::Conflict { field, with, .. }
                    if field == "password" && with == "passwordFile")),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "{key}: password, {key}: passwordFile and {key}: passwordEnv: give one of them"
            )
        );

        let e = BgpPeer::from_store(key, b"[1]").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Syntax { form, detail }
                if form == key && detail.starts_with("not a BGP peer: ")),
            "{e:?}"
        );
    }

    #[test]
    fn syntax_errors_name_the_language() {
        let e = refused("pools = [\n");
        assert!(
            matches!(&e, ConfigError::Syntax { form, .. } if form == "TOML"),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("TOML: "), "{e}");
        assert_eq!(e.field(), None);
        let e = ClusterConfig::from_json("{").unwrap_err();
        assert!(
            matches!(&e, ConfigError::Syntax { form, .. } if form == "cluster config JSON"),
            "{e:?}"
        );
    }
}
