//! The one stable hash of the workspace, for names and addresses derived from names (VXLAN
//! VTEP MACs, host veth names and MACs, bridge MACs).

/// 64-bit FNV-1a: tiny and fixed forever (std's hasher may change between Rust releases, and a
/// changed hash would rename every existing veth and VTEP after an upgrade), good enough to
/// spread names; not a security hash.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_is_the_published_one() {
        assert_eq!(fnv1a(*b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(*b"foobar"), 0x8594_4171_f739_67e8);
    }
}
