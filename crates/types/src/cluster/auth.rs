//! How a BGP session is protected: a TCP-MD5 password (RFC 2385) and TTL security (GTSM,
//! RFC 5082). Used by the `bgp` section (for sessions between twill nodes) and by each
//! external peer; flattened into both, so the keys sit next to the others:
//!
//! - `password: "..."`: the secret itself. It is then part of the cluster config (or the peer
//!   record) in the store, in clear (protect the store).
//! - `passwordFile: /path`: each agent reads the secret from this file on its own node
//!   (trailing newline dropped); only the path is in the store.
//! - `passwordEnv: NAME`: each agent reads it from its environment; only the name is in the
//!   store.
//! - `ttlSecurity: true`: like BIRD's `ttl security on`, for directly connected peers.
//!
//! A secret never shows: [`Secret`]'s `Debug` redacts it, and [`BgpAuth::redacted`] is what
//! printing code shows instead of the config.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// The value shown instead of a password.
pub const REDACTED: &str = "<redacted>";

/// Linux's longest TCP-MD5 key (`TCP_MD5SIG_MAXKEYLEN`).
pub const MAX_PASSWORD_LEN: usize = 80;

/// A password. Serialized as itself (the store must hold it when it is given inline), never
/// shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself: only for handing it to the kernel.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(REDACTED)
    }
}

/// A password as written in a config file: a string, and an error that never quotes what
/// was there instead (serde's own would show a number given as a password).
pub struct RawSecret(pub String);

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<RawSecret, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawSecret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a password in quotes")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSecret, E> {
                Ok(RawSecret(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom("a password must be a string in quotes"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(E::custom("a password must be a string in quotes"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom("a password must be a string in quotes"))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom("a password must be a string in quotes"))
            }
        }
        d.deserialize_any(V)
    }
}

/// A session's protection (see the module's documentation for the keys).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BgpAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ttl_security: bool,
}

/// Where a session's password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource<'a> {
    Inline(&'a Secret),
    File(&'a PathBuf),
    Env(&'a str),
}

impl BgpAuth {
    /// Whether a password is configured (in any form).
    pub fn has_password(&self) -> bool {
        self.source().is_some()
    }

    /// The password's source; `validate` makes sure there is at most one.
    pub fn source(&self) -> Option<PasswordSource<'_>> {
        if let Some(s) = &self.password {
            Some(PasswordSource::Inline(s))
        } else if let Some(p) = &self.password_file {
            Some(PasswordSource::File(p))
        } else {
            self.password_env.as_deref().map(PasswordSource::Env)
        }
    }

    /// The same, with an inline password replaced by [`REDACTED`] (for printing).
    pub fn redacted(&self) -> BgpAuth {
        BgpAuth {
            password: self.password.as_ref().map(|_| Secret::new(REDACTED)),
            ..self.clone()
        }
    }

    /// At most one source; an inline password of 1 to 80 bytes; a file path absolute; an
    /// environment variable's name usable. `field` names the section in messages, which
    /// never contain the password.
    pub fn validate(&self, field: &str) -> Result<(), ConfigError> {
        let given = [
            self.password.is_some(),
            self.password_file.is_some(),
            self.password_env.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            return Err(ConfigError::conflict(
                format!("{field}password"),
                format!("{field}passwordFile"),
                format!(
                    "{field}password, {field}passwordFile and {field}passwordEnv: give one of them"
                ),
            ));
        }
        if let Some(s) = &self.password {
            check_password(s.expose()).map_err(|e| {
                ConfigError::invalid(format!("{field}password"), format!("{field}password: {e}"))
            })?;
        }
        if let Some(p) = &self.password_file
            && !p.is_absolute()
        {
            return Err(ConfigError::invalid(
                format!("{field}passwordFile"),
                format!(
                    "{field}passwordFile {} must be an absolute path (each agent reads it on its \
                     own node)",
                    p.display()
                ),
            ));
        }
        if let Some(v) = &self.password_env
            && (v.is_empty() || v.contains('=') || v.contains('\0'))
        {
            return Err(ConfigError::invalid(
                format!("{field}passwordEnv"),
                format!("{field}passwordEnv {v:?} is not an environment variable's name"),
            ));
        }
        Ok(())
    }
}

/// A TCP-MD5 password is 1 to 80 bytes (the message never shows it).
pub fn check_password(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("the password is empty".into());
    }
    if p.len() > MAX_PASSWORD_LEN {
        return Err(format!(
            "the password is {} bytes; TCP-MD5 takes at most {MAX_PASSWORD_LEN}",
            p.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_redacted_never_show_the_password() {
        let a = BgpAuth {
            password: Some(Secret::new("hunter2-hunter2")),
            ..BgpAuth::default()
        };
        assert!(!format!("{a:?}").contains("hunter2"));
        let shown = serde_json::to_string(&a.redacted()).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains(REDACTED));
        // The store form keeps it (it has to, when given inline).
        assert!(serde_json::to_string(&a).unwrap().contains("hunter2"));
    }

    #[test]
    fn validate_sources() {
        let mut a = BgpAuth {
            password: Some(Secret::new("x")),
            password_env: Some("BGP_PW".into()),
            ..BgpAuth::default()
        };
        assert!(a.validate("bgp.").is_err());
        a.password = None;
        assert!(a.validate("bgp.").is_ok());
        a.password_env = Some("A=B".into());
        assert!(a.validate("bgp.").is_err());
        a.password_env = None;
        a.password_file = Some("relative/key".into());
        assert!(a.validate("bgp.").is_err());
        a.password_file = Some("/etc/twill/bgp.key".into());
        assert!(a.validate("bgp.").is_ok());
        let long = BgpAuth {
            password: Some(Secret::new("k".repeat(81))),
            ..BgpAuth::default()
        };
        let e = long.validate("bgp.").unwrap_err();
        assert!(!e.to_string().contains("kkk"), "{e}");
        assert_eq!(e.field(), Some("bgp.password"));
    }
}
