//! The image checksum: FNV-1a, 64-bit.
//!
//! Chosen because it needs no table and no dependency, and because every step
//! `h -> (h ^ byte) * PRIME` is a bijection of `h` for a fixed byte (the prime is odd), so
//! two inputs of equal length that differ in exactly one byte always hash differently: a
//! single corrupted byte is always detected. It is an integrity check against accidents
//! (truncation, a stray write, a bad copy), not a defence against a forger.

/// FNV-1a 64-bit offset basis.
pub const FNV1A64_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV1A64_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV1A64_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV1A64_PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_vectors() {
        // Reference values of the FNV-1a 64 specification.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }
}
