//! [`CapSet`]: a fixed-size bitmap of caps.

use super::{Cap, NCAPS};
use core::fmt;

const WORDS: usize = NCAPS.div_ceil(64);

/// A set of caps. Plain data: anyone can build one (detection results, pass masks).
/// The system-wide final set is a `FinalCaps`, which wraps one of these and cannot be
/// built outside finalisation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapSet {
    bits: [u64; WORDS],
}

impl CapSet {
    /// The empty set.
    pub const EMPTY: CapSet = CapSet { bits: [0; WORDS] };

    /// Every cap.
    pub const fn all() -> CapSet {
        let mut s = CapSet::EMPTY;
        let mut i = 0;
        while i < NCAPS {
            s.bits[i / 64] |= 1 << (i % 64);
            i += 1;
        }
        s
    }

    /// The set holding exactly `caps`.
    pub const fn of(caps: &[Cap]) -> CapSet {
        let mut s = CapSet::EMPTY;
        let mut i = 0;
        while i < caps.len() {
            s = s.with(caps[i]);
            i += 1;
        }
        s
    }

    /// This set plus `cap`.
    #[must_use]
    pub const fn with(mut self, cap: Cap) -> CapSet {
        let n = cap.number() as usize;
        self.bits[n / 64] |= 1 << (n % 64);
        self
    }

    /// This set minus `cap`.
    #[must_use]
    pub const fn without(mut self, cap: Cap) -> CapSet {
        let n = cap.number() as usize;
        self.bits[n / 64] &= !(1 << (n % 64));
        self
    }

    /// Adds `cap`.
    pub fn insert(&mut self, cap: Cap) {
        *self = self.with(cap);
    }

    /// Removes `cap`.
    pub fn remove(&mut self, cap: Cap) {
        *self = self.without(cap);
    }

    /// Whether `cap` is in the set.
    pub const fn has(&self, cap: Cap) -> bool {
        self.has_number(cap.number())
    }

    /// Whether cap number `n` is in the set; numbers `>= NCAPS` are never in a set (this is
    /// the test the patcher uses on raw record fields).
    pub const fn has_number(&self, n: u16) -> bool {
        let n = n as usize;
        n < NCAPS && self.bits[n / 64] & (1 << (n % 64)) != 0
    }

    /// Union.
    #[must_use]
    pub const fn union(mut self, other: CapSet) -> CapSet {
        let mut i = 0;
        while i < WORDS {
            self.bits[i] |= other.bits[i];
            i += 1;
        }
        self
    }

    /// Intersection.
    #[must_use]
    pub const fn intersection(mut self, other: CapSet) -> CapSet {
        let mut i = 0;
        while i < WORDS {
            self.bits[i] &= other.bits[i];
            i += 1;
        }
        self
    }

    /// The caps not in this set (within `0..NCAPS`).
    #[must_use]
    pub const fn complement(self) -> CapSet {
        let all = CapSet::all();
        let mut out = CapSet::EMPTY;
        let mut i = 0;
        while i < WORDS {
            out.bits[i] = !self.bits[i] & all.bits[i];
            i += 1;
        }
        out
    }

    /// Whether the set is empty.
    pub const fn is_empty(&self) -> bool {
        let mut i = 0;
        while i < WORDS {
            if self.bits[i] != 0 {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Number of caps in the set.
    pub fn len(&self) -> usize {
        self.bits.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// The caps in the set, in number order.
    pub fn iter(&self) -> impl Iterator<Item = Cap> + '_ {
        Cap::ALL.iter().copied().filter(move |c| self.has(*c))
    }

    /// The set as one bitmap word per 64 caps (bit `n % 64` of word `n / 64` is cap `n`);
    /// this is the form the cap-evaluation selftest returns from EL2.
    pub const fn words(&self) -> [u64; WORDS] {
        self.bits
    }

    /// Builds a set from [`CapSet::words`] output; bits at or above `NCAPS` are dropped.
    pub const fn from_words(words: [u64; WORDS]) -> CapSet {
        CapSet { bits: words }.intersection(CapSet::all())
    }
}

/// Comma-separated Linux names, the format of the `cpucaps:` lines.
impl fmt::Display for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, cap) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(cap.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for CapSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CapSet{{{self}}}")
    }
}

impl FromIterator<Cap> for CapSet {
    fn from_iter<I: IntoIterator<Item = Cap>>(iter: I) -> Self {
        let mut s = CapSet::EMPTY;
        for c in iter {
            s.insert(c);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let a = CapSet::of(&[Cap::AlwaysBoot, Cap::HasSb]);
        let b = CapSet::of(&[Cap::HasSb, Cap::HasRng]);
        assert_eq!(a.intersection(b), CapSet::of(&[Cap::HasSb]));
        assert_eq!(a.union(b).len(), 3);
        assert!(!a.complement().has(Cap::HasSb));
        assert_eq!(a.complement().len(), NCAPS - 2);
        assert!(!CapSet::all().has_number(NCAPS as u16));
        assert!(!CapSet::all().has_number(0x8000));
        assert_eq!(a.to_string(), "ALWAYS_BOOT,HAS_SB");
        assert_eq!(CapSet::from_words(a.words()), a);
    }
}
