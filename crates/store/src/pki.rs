//! Certificates for etcd over TLS, made in-process (rcgen): a CA, etcd's server certificate
//! and one client certificate per user of the store. `twill lab` and the tests use it so that
//! every etcd they start asks for a client certificate signed by its own CA.
//!
//! Files (PEM, mode 0600, in a directory of mode 0700): `ca.pem`, `server.pem`,
//! `server-key.pem`, and `client-NAME.pem` / `client-NAME-key.pem` per client. The CA's key is
//! not kept: no one can sign another certificate for this etcd afterwards.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use crate::EtcdAuth;

/// The CA certificate's file name.
pub const CA_FILE: &str = "ca.pem";
/// etcd's certificate and key.
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server-key.pem";

/// The files of one PKI directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    /// The PKI in `dir` (made by [`Pki::generate`]).
    pub fn at(dir: impl Into<PathBuf>) -> Pki {
        Pki { dir: dir.into() }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join(CA_FILE)
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.join(SERVER_CERT_FILE)
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.join(SERVER_KEY_FILE)
    }

    pub fn client_cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("client-{name}.pem"))
    }

    pub fn client_key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("client-{name}-key.pem"))
    }

    /// The credentials of client `name`: the CA and its certificate and key.
    pub fn client_auth(&self, name: &str) -> EtcdAuth {
        EtcdAuth {
            ca_file: Some(self.ca()),
            cert_file: Some(self.client_cert(name)),
            key_file: Some(self.client_key(name)),
            ..EtcdAuth::default()
        }
    }

    /// Makes a new CA in `dir` (created 0700 if absent), etcd's server certificate for
    /// `server_names` (IP addresses and DNS names; it serves and, between etcd members,
    /// connects with it) and a client certificate for each of `clients` (its common name).
    /// Existing files are replaced.
    pub fn generate(
        dir: impl Into<PathBuf>,
        server_names: &[String],
        clients: &[&str],
    ) -> std::io::Result<Pki> {
        let pki = Pki::at(dir);
        std::fs::create_dir_all(&pki.dir)?;
        std::fs::set_permissions(&pki.dir, std::fs::Permissions::from_mode(0o700))?;

        let ca_key = KeyPair::generate().map_err(io)?;
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(io)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.distinguished_name
            .push(DnType::CommonName, "twill etcd CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(io)?;
        write_private(&pki.ca(), ca_cert.pem().as_bytes())?;
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |names: Vec<String>, cn: &str, usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().map_err(io)?;
            let mut params = CertificateParams::new(names).map_err(io)?;
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &issuer).map_err(io)?;
            Ok::<_, std::io::Error>((cert.pem(), key.serialize_pem()))
        };
        let (cert, key) = leaf(
            server_names.to_vec(),
            "etcd",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )?;
        write_private(&pki.server_cert(), cert.as_bytes())?;
        write_private(&pki.server_key(), key.as_bytes())?;
        for name in clients {
            let (cert, key) = leaf(Vec::new(), name, vec![ExtendedKeyUsagePurpose::ClientAuth])?;
            write_private(&pki.client_cert(name), cert.as_bytes())?;
            write_private(&pki.client_key(name), key.as_bytes())?;
        }
        Ok(pki)
    }
}

fn io(e: rcgen::Error) -> std::io::Error {
    std::io::Error::other(format!("making a certificate: {e}"))
}

/// Writes `path` with mode 0600 whatever the umask (replacing the file and its mode).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_pem() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(
            dir.path().join("pki"),
            &["127.0.0.1".into(), "localhost".into()],
            &["h1", "cli"],
        )
        .unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&pki.dir), 0o700);
        for p in [
            pki.ca(),
            pki.server_cert(),
            pki.server_key(),
            pki.client_cert("h1"),
            pki.client_key("h1"),
            pki.client_cert("cli"),
            pki.client_key("cli"),
        ] {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
            let text = std::fs::read_to_string(&p).unwrap();
            assert!(text.starts_with("-----BEGIN "), "{}", p.display());
        }
        assert!(
            !std::fs::read_to_string(pki.ca())
                .unwrap()
                .contains("PRIVATE")
        );
        assert_eq!(std::fs::read_dir(&pki.dir).unwrap().count(), 7);
    }
}
