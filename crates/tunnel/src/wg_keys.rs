//! WireGuard keys as the rest of twill sees them: a [`PrivateKey`] that never shows itself
//! (redacted `Debug`, no `Display`, zeroized on drop) and a [`PublicKey`] written as `wg`
//! writes it (standard base64, 44 characters).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use boringtun::x25519;
use zeroize::Zeroizing;

/// Why a string is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a WireGuard key is 32 bytes in standard base64 (44 characters)")]
    Format,
}

/// A node's static private key (Curve25519). The secret is wiped from memory when dropped.
#[derive(Clone)]
pub struct PrivateKey(x25519::StaticSecret);

impl PrivateKey {
    /// A fresh key from the operating system's random generator (getrandom). Panics if the
    /// kernel cannot supply randomness, which no key could then be made without.
    pub fn generate() -> PrivateKey {
        use ring::rand::SecureRandom;
        let mut bytes = Zeroizing::new([0u8; 32]);
        ring::rand::SystemRandom::new()
            .fill(&mut bytes[..])
            .expect("the system random generator failed");
        PrivateKey::from_bytes(*bytes)
    }

    pub fn from_bytes(bytes: [u8; 32]) -> PrivateKey {
        PrivateKey(x25519::StaticSecret::from(bytes))
    }

    /// The raw secret, for storing it; the caller is responsible for wiping the copy.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }

    /// The secret in standard base64, as `wg genkey` writes it: for the key file only.
    pub fn to_base64(&self) -> Zeroizing<String> {
        let bytes = Zeroizing::new(self.0.to_bytes());
        Zeroizing::new(BASE64.encode(&bytes[..]))
    }

    /// Parses `wg genkey` output (surrounding whitespace allowed).
    pub fn from_base64(s: &str) -> Result<PrivateKey, KeyError> {
        decode_key(s).map(|b| PrivateKey::from_bytes(*b))
    }

    pub(crate) fn secret(&self) -> &x25519::StaticSecret {
        &self.0
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

/// Same key, compared without a data-dependent early exit.
impl PartialEq for PrivateKey {
    fn eq(&self, other: &PrivateKey) -> bool {
        let (a, b) = (
            Zeroizing::new(self.0.to_bytes()),
            Zeroizing::new(other.0.to_bytes()),
        );
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl Eq for PrivateKey {}

/// A node's static public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first 8 base64 characters, for tables and logs.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }

    pub(crate) fn x25519(&self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&BASE64.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<PublicKey, KeyError> {
        decode_key(s).map(|b| PublicKey(*b))
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

fn decode_key(s: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let s = s.trim();
    // 44 characters of base64 hold 33 bytes; anything longer is not a key, so decoding is
    // bounded before it allocates.
    if s.len() != 44 {
        return Err(KeyError::Format);
    }
    let mut out = Zeroizing::new([0u8; 33]);
    let n = BASE64
        .decode_slice(s, &mut out[..])
        .map_err(|_| KeyError::Format)?;
    if n != 32 {
        return Err(KeyError::Format);
    }
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&out[..32]);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_matches_wg() {
        // `wg pubkey` of this private key (RFC 7748 test vector, Alice), as wg prints them.
        let private = PrivateKey::from_base64("dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=\n")
            .expect("private key");
        let public = private.public_key();
        assert_eq!(
            public.to_string(),
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
        );
        assert_eq!(public.short(), "hSDwCYkw");
        assert_eq!(
            private.to_base64().as_str(),
            "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo="
        );
        let json = serde_json::to_string(&public).unwrap();
        assert_eq!(json, "\"hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\"");
        assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), public);
    }

    #[test]
    fn rejects_what_is_not_a_key() {
        for bad in [
            "",
            "abc",
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm==",
            "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=A",
            "!SDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=",
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad}");
            assert!(PrivateKey::from_base64(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_key_never_shows() {
        let k = PrivateKey::generate();
        let shown = format!("{k:?}");
        assert_eq!(shown, "PrivateKey(<redacted>)");
        assert!(!shown.contains(k.to_base64().as_str()));
        assert_eq!(k, k.clone());
        assert_ne!(k, PrivateKey::generate());
        assert_eq!(
            PrivateKey::from_bytes(k.to_bytes()).public_key(),
            k.public_key()
        );
    }
}
