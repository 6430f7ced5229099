//! Logical ("bitmask") immediates of AND/ORR/EOR/ANDS: the `(N, immr, imms)` triple and
//! the value it stands for.
//!
//! A logical immediate is an element of 2, 4, 8, 16, 32 or 64 bits holding one run of
//! `k` ones (0 < k < element size) rotated right by `immr`, repeated to fill the register.
//! `N:imms` encodes the element size (in the position of its highest zero bit) and
//! `k - 1`; `immr` is the rotation.

/// Rotates the low `esize` bits of `x` right by `r` (`r < esize`); `x` must fit in `esize`.
const fn ror_elem(x: u64, r: u32, esize: u32) -> u64 {
    if r == 0 {
        x
    } else {
        ((x >> r) | (x << (esize - r))) & ones(esize)
    }
}

/// `n` ones in the low bits, for `n` in `0..=64`.
const fn ones(n: u32) -> u64 {
    if n >= 64 {
        u64::MAX
    } else {
        (1u64 << n) - 1
    }
}

/// Copies the low `esize` bits of `elem` across all 64 bits (`esize` a power of two).
const fn replicate(elem: u64, esize: u32) -> u64 {
    let mut value = elem;
    let mut width = esize;
    while width < 64 {
        value |= value << width;
        width *= 2;
    }
    value
}

/// Encodes `value` as a logical immediate of the given width: `(N, immr, imms)`, or
/// `None` if it is not a repeating, rotated run of ones (all-zeros and all-ones are not).
///
/// For the 32-bit form (`sf == false`) `value` must fit in 32 bits and `N` is always 0.
/// The result is the canonical encoding: the smallest element size and `immr` below it,
/// which is what assemblers emit.
pub fn encode_bitmask_imm(value: u64, sf: bool) -> Option<(u8, u8, u8)> {
    if !sf && value >> 32 != 0 {
        return None;
    }
    // A 32-bit immediate is a 64-bit one whose element size is at most 32.
    let full = if sf { value } else { value | (value << 32) };
    if full == 0 || full == u64::MAX {
        return None;
    }
    // The element size is the smallest period of the value.
    let mut esize = 64u32;
    while esize > 2 && full.rotate_right(esize / 2) == full {
        esize /= 2;
    }
    let elem = full & ones(esize);
    let k = elem.count_ones();
    // Bits that are 1 while the bit below them (cyclically) is 0 start a run; a valid
    // element has exactly one run.
    let below = ((elem << 1) | (elem >> (esize - 1))) & ones(esize);
    let starts = elem & !below;
    if starts.count_ones() != 1 {
        return None;
    }
    let start = starts.trailing_zeros();
    // elem == ROR(ones(k), immr), so the run begins at (esize - immr) % esize.
    let immr = (esize - start) % esize;
    debug_assert_eq!(ror_elem(ones(k), immr, esize), elem);
    let n = u8::from(esize == 64);
    // The size marker: ones above the highest zero, which sits at log2(esize).
    let size_bits = !(2 * esize - 1) & 0x3f;
    let imms = size_bits | (k - 1);
    Some((n, immr as u8, imms as u8))
}

/// Decodes a logical immediate's `(N, immr, imms)` for the given width, or `None` if the
/// combination is reserved (or a field is wider than its 1/6/6 bits).
///
/// As in the architecture, `immr` bits at or above the element size are ignored, so
/// several triples can give one value; [`encode_bitmask_imm`] returns the canonical one.
/// For the 32-bit form the result has the upper 32 bits clear.
pub fn decode_bitmask_imm(n: u8, immr: u8, imms: u8, sf: bool) -> Option<u64> {
    if n > 1 || immr > 0x3f || imms > 0x3f || (!sf && n == 1) {
        return None;
    }
    let combined = (u32::from(n) << 6) | (u32::from(!imms) & 0x3f);
    if combined == 0 {
        return None;
    }
    let len = 31 - combined.leading_zeros();
    if len == 0 {
        // An element of one bit has no room for a run that is neither empty nor full.
        return None;
    }
    let esize = 1u32 << len;
    let levels = esize - 1;
    let s = u32::from(imms) & levels;
    if s == levels {
        // A run filling the whole element would make all-ones.
        return None;
    }
    let r = u32::from(immr) & levels;
    let elem = ror_elem(ones(s + 1), r, esize);
    let value = replicate(elem, esize);
    Some(if sf { value } else { value & 0xffff_ffff })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Element size of a valid triple, for enumeration.
    fn esize_of(n: u8, imms: u8) -> Option<u32> {
        let combined = (u32::from(n) << 6) | (u32::from(!imms) & 0x3f);
        let len = 31u32.checked_sub(combined.leading_zeros())?;
        (len >= 1).then_some(1 << len)
    }

    /// Every canonical triple of a width, with its value.
    fn all_canonical(sf: bool) -> Vec<((u8, u8, u8), u64)> {
        let mut out = Vec::new();
        for n in 0..=u8::from(sf) {
            for imms in 0..64u8 {
                let Some(esize) = esize_of(n, imms) else {
                    continue;
                };
                for immr in 0..esize as u8 {
                    if let Some(v) = decode_bitmask_imm(n, immr, imms, sf) {
                        out.push(((n, immr, imms), v));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn counts_of_valid_immediates() {
        // Sum over element sizes e of e * (e - 1): rotations times run lengths.
        let c64 = all_canonical(true);
        let c32 = all_canonical(false);
        assert_eq!(c64.len(), 5334);
        assert_eq!(c32.len(), 1302);
        let mut values: Vec<u64> = c64.iter().map(|(_, v)| *v).collect();
        values.sort_unstable();
        values.dedup();
        assert_eq!(
            values.len(),
            5334,
            "distinct canonical triples give distinct values"
        );
    }

    #[test]
    fn canonical_triples_round_trip() {
        for sf in [false, true] {
            for (triple, value) in all_canonical(sf) {
                assert_eq!(
                    encode_bitmask_imm(value, sf),
                    Some(triple),
                    "{value:#x} sf={sf}"
                );
                if !sf {
                    assert_eq!(value >> 32, 0);
                }
            }
        }
    }

    #[test]
    fn brute_force_small_elements() {
        // Independent definition for 8-bit elements: a value is valid iff some rotation
        // of a run of k ones (0<k<8) replicated gives it (or a smaller element does).
        let mut expected = std::collections::BTreeSet::new();
        for esize in [2u32, 4, 8] {
            for k in 1..esize {
                for r in 0..esize {
                    let run = (1u64 << k) - 1;
                    let elem = if r == 0 {
                        run
                    } else {
                        ((run >> r) | (run << (esize - r))) & ((1 << esize) - 1)
                    };
                    let mut v = 0u64;
                    for i in (0..64).step_by(esize as usize) {
                        v |= elem << i;
                    }
                    expected.insert(v);
                }
            }
        }
        // Every 8-bit pattern replicated: exactly the expected ones encode.
        for byte in 0..=255u64 {
            let v = byte * 0x0101_0101_0101_0101;
            assert_eq!(
                encode_bitmask_imm(v, true).is_some(),
                expected.contains(&v),
                "{v:#x}"
            );
            let v32 = v & 0xffff_ffff;
            assert_eq!(
                encode_bitmask_imm(v32, false).is_some(),
                expected.contains(&v)
            );
        }
    }

    #[test]
    fn rejects() {
        assert_eq!(encode_bitmask_imm(0, true), None);
        assert_eq!(encode_bitmask_imm(u64::MAX, true), None);
        assert_eq!(encode_bitmask_imm(0, false), None);
        assert_eq!(encode_bitmask_imm(0xffff_ffff, false), None);
        assert_eq!(encode_bitmask_imm(0x1_0000_0000, false), None);
        assert_eq!(encode_bitmask_imm(0xffff_ffff_0000_00ff, false), None);
        assert_eq!(encode_bitmask_imm(0b101, true), None);
        assert_eq!(encode_bitmask_imm(0x1234_5678, false), None);
        // Reserved triples.
        assert_eq!(decode_bitmask_imm(1, 0, 0, false), None);
        assert_eq!(decode_bitmask_imm(1, 0, 63, true), None);
        assert_eq!(decode_bitmask_imm(0, 0, 0b111111, true), None);
        assert_eq!(decode_bitmask_imm(0, 0, 0b111110, true), None);
        assert_eq!(decode_bitmask_imm(0, 0, 0b111101, true), None);
        assert_eq!(decode_bitmask_imm(0, 0, 0b011111, false), None);
        assert_eq!(decode_bitmask_imm(2, 0, 0, true), None);
        assert_eq!(decode_bitmask_imm(1, 64, 0, true), None);
    }

    #[test]
    fn known_values() {
        assert_eq!(encode_bitmask_imm(0x3fff_ffff, true), Some((1, 0, 29)));
        assert_eq!(encode_bitmask_imm(0xffff_ffff, true), Some((1, 0, 31)));
        assert_eq!(
            encode_bitmask_imm(0x5555_5555, false),
            Some((0, 0, 0b111100))
        );
        assert_eq!(
            encode_bitmask_imm(0x8000_0000_0000_0001, true),
            Some((1, 1, 1))
        );
        assert_eq!(encode_bitmask_imm(0xfffe, false), Some((0, 31, 14)));
        // Upper immr bits are ignored below a 64-bit element.
        assert_eq!(
            decode_bitmask_imm(0, 0b100001, 0b111100, true),
            Some(0xaaaa_aaaa_aaaa_aaaa)
        );
    }
}
