//! The flags several `twill` commands share, each declared once here and flattened into every
//! command that takes it (`#[command(flatten)]`), so that names, environment variables,
//! defaults and help stay the same everywhere:
//!
//! - [`StoreArgs`]: `--store` (`TWILL_STORE`) and the credentials etcd asks for: flannel's
//!   `--etcd-cafile --etcd-certfile --etcd-keyfile` and etcd's own users (`--etcd-username`,
//!   the password from `--etcd-password-file` or the environment, never from the command line
//!   where `ps` shows it, and never printed). [`OptionalStoreArgs`] is the same for `twill
//!   status`, where the store is optional (clap cannot flatten an `Option<StoreArgs>`: with
//!   the URL required inside, the group is never taken as given).
//! - [`DataDirArgs`]: `--data-dir`, the node's data directory (default `/var/lib/twill`).
//! - [`JsonArgs`]: `--json`, machine-readable output.
//!
//! `twill node leave --data-dir` is optional and means "also clean this directory": it is
//! declared there, not here.

use std::path::PathBuf;

use anyhow::Context;
use twill_store::{EtcdAuth, Store};

/// The environment variable holding etcd's password (when no password file is given).
pub const PASSWORD_ENV: &str = "TWILL_ETCD_PASSWORD";

/// How to reach etcd securely. Empty: plain HTTP, no user.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdArgs {
    /// The CA that signed etcd's certificate: etcd is spoken to over TLS (https).
    #[arg(
        id = "etcd_ca_file",
        long = "etcd-cafile",
        env = "TWILL_ETCD_CAFILE",
        value_name = "PATH"
    )]
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for an etcd started with --client-cert-auth.
    #[arg(
        id = "etcd_cert_file",
        long = "etcd-certfile",
        env = "TWILL_ETCD_CERTFILE",
        value_name = "PATH",
        requires = "etcd_key_file"
    )]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        id = "etcd_key_file",
        long = "etcd-keyfile",
        env = "TWILL_ETCD_KEYFILE",
        value_name = "PATH",
        requires = "etcd_cert_file"
    )]
    pub key_file: Option<PathBuf>,
    /// A user of etcd's authentication (`etcdctl auth enable`).
    #[arg(
        id = "etcd_username",
        long = "etcd-username",
        env = "TWILL_ETCD_USERNAME",
        value_name = "USER"
    )]
    pub username: Option<String>,
    /// A file holding the user's password (its first line); without it the password comes
    /// from the environment variable TWILL_ETCD_PASSWORD.
    #[arg(
        id = "etcd_password_file",
        long = "etcd-password-file",
        env = "TWILL_ETCD_PASSWORD_FILE",
        value_name = "PATH",
        requires = "etcd_username"
    )]
    pub password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// The credentials, with the password read from its file or the environment.
    pub fn auth(&self) -> anyhow::Result<EtcdAuth> {
        self.auth_from(std::env::var(PASSWORD_ENV).ok())
    }

    fn auth_from(&self, password_env: Option<String>) -> anyhow::Result<EtcdAuth> {
        let password = match &self.password_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| {
                    format!("reading the etcd password file {}", path.display())
                })?;
                let line = text.lines().next().unwrap_or("");
                anyhow::ensure!(
                    !line.is_empty(),
                    "the etcd password file {} is empty",
                    path.display()
                );
                Some(line.to_string())
            }
            None => password_env.filter(|p| !p.is_empty()),
        };
        anyhow::ensure!(
            password.is_none() || self.username.is_some(),
            "{PASSWORD_ENV} is set but no user: give --etcd-username (or TWILL_ETCD_USERNAME)"
        );
        Ok(EtcdAuth {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            username: self.username.clone(),
            password,
        })
    }

    /// Opens the store at `url` with these credentials.
    pub async fn connect(&self, url: &str) -> anyhow::Result<Store> {
        Ok(Store::connect_with(url, &self.auth()?).await?)
    }
}

/// The environment variable `--store` is read from.
pub const STORE_ENV: &str = "TWILL_STORE";

/// Where the agent keeps its files and the CNI plugin finds them (its `dataDir`).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/twill";

/// `--store URL` with the etcd credentials.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct StoreArgs {
    /// `etcd://HOST:PORT[,HOST:PORT...]` (TLS when --etcd-cafile is given, or with
    /// `etcds://`), `embedded` or `embedded:PATH`.
    #[arg(long = "store", env = STORE_ENV, value_name = "URL")]
    pub url: String,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

/// `--store URL` with the etcd credentials, for a command that works without a store too.
#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct OptionalStoreArgs {
    /// Also ask this store (`etcd://HOST:PORT[,HOST:PORT...]`, `etcds://...`, `embedded` or
    /// `embedded:PATH`).
    #[arg(long = "store", env = STORE_ENV)]
    pub url: Option<String>,
    #[command(flatten)]
    pub etcd: EtcdArgs,
}

impl OptionalStoreArgs {
    /// The store, when one was given.
    pub fn into_store(self) -> Option<StoreArgs> {
        let etcd = self.etcd;
        self.url.map(|url| StoreArgs { url, etcd })
    }
}

/// `--data-dir DIR`.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct DataDirArgs {
    /// The node's data directory (the CNI plugin's `dataDir`): the node file, the agent's
    /// status, the pods' address state.
    #[arg(long, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

/// `--json`.
#[derive(clap::Args, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonArgs {
    /// Machine-readable output: JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl StoreArgs {
    /// A store URL without credentials.
    pub fn new(url: impl Into<String>) -> StoreArgs {
        StoreArgs {
            url: url.into(),
            etcd: EtcdArgs::default(),
        }
    }

    /// Opens the store.
    pub async fn connect(&self) -> anyhow::Result<Store> {
        self.etcd.connect(&self.url).await
    }
}

impl std::fmt::Display for StoreArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        store: StoreArgs,
    }

    #[test]
    fn flags_parse_and_the_password_stays_out_of_sight() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "hunter2\nignored\n").unwrap();
        let cmd = Cmd::try_parse_from([
            "t",
            "--store",
            "etcd://10.0.0.1:2379",
            "--etcd-cafile",
            "/ca.pem",
            "--etcd-certfile",
            "/c.pem",
            "--etcd-keyfile",
            "/k.pem",
            "--etcd-username",
            "root",
            "--etcd-password-file",
            pw.to_str().unwrap(),
        ])
        .unwrap();
        let auth = cmd.store.etcd.auth_from(Some("from-env".into())).unwrap();
        assert_eq!(auth.password.as_deref(), Some("hunter2"));
        assert_eq!(auth.username.as_deref(), Some("root"));
        assert_eq!(auth.ca_file, Some("/ca.pem".into()));
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert_eq!(cmd.store.to_string(), "etcd://10.0.0.1:2379");

        let env_only = EtcdArgs {
            username: Some("root".into()),
            ..EtcdArgs::default()
        };
        let auth = env_only.auth_from(Some("from-env".into())).unwrap();
        assert_eq!(auth.password.as_deref(), Some("from-env"));
        let err = EtcdArgs::default()
            .auth_from(Some("from-env".into()))
            .unwrap_err();
        assert!(err.to_string().contains("--etcd-username"), "{err}");
        assert!(!err.to_string().contains("from-env"), "{err}");

        // A certificate without its key is refused by clap.
        assert!(
            Cmd::try_parse_from(["t", "--store", "embedded", "--etcd-certfile", "/c"]).is_err()
        );
    }
}
