//! The text form of WireGuard's 32-byte keys: standard base64 with padding, 44 characters, as
//! `wg genkey` / `wg pubkey` print them. Leases carry public keys this way and the cluster
//! config its pre-shared key; both come from outside (the store, a file), so they are checked
//! here, where the tunnel crate (which owns the key types) is not a dependency.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;
/// Length of a key's base64 text.
pub const KEY_TEXT_LEN: usize = 44;

/// The 32 bytes of a key written as standard base64; None for anything else (wrong length,
/// another alphabet, missing padding, surrounding spaces).
pub fn decode(text: &str) -> Option<[u8; KEY_LEN]> {
    if text.len() != KEY_TEXT_LEN {
        return None;
    }
    let bytes = STANDARD.decode(text).ok()?;
    bytes.try_into().ok()
}

/// The base64 text of a key.
pub fn encode(key: &[u8; KEY_LEN]) -> String {
    STANDARD.encode(key)
}

/// The first 8 characters of a key's text, as status shows a public key.
pub fn short(text: &str) -> &str {
    text.get(..8).unwrap_or(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_base64_of_32_bytes_is_a_key() {
        let key = [7u8; 32];
        let text = encode(&key);
        assert_eq!(text.len(), KEY_TEXT_LEN);
        assert_eq!(decode(&text), Some(key));
        assert_eq!(short(&text), &text[..8]);
        // 31 and 33 bytes, URL-safe alphabet, no padding, a trailing newline.
        assert_eq!(decode(&STANDARD.encode([1u8; 31])), None);
        assert_eq!(decode(&STANDARD.encode([1u8; 33])), None);
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32]);
        assert_eq!(decode(&url_safe), None);
        assert_eq!(decode(text.trim_end_matches('=')), None);
        assert_eq!(decode(&format!("{text}\n")), None);
        assert_eq!(decode(""), None);
    }
}
