//! CPU capabilities: the one list of caps, sets of caps, and (in submodules) detection
//! from ID registers, sanitisation across CPUs, finalisation and boot-argument overrides.
//!
//! Cap numbers are stable: `ALWAYS_BOOT` = 0, `ALWAYS_SYSTEM` = 1, then the rest in
//! Linux's (alphabetical) order. Alternative records carry these numbers, so both images
//! and the host must agree on them — which they do by all using this module.

mod set;

pub use set::CapSet;

/// Defines [`Cap`], its numbering and its Linux names in one place.
macro_rules! define_caps {
    ($($variant:ident = $num:literal => $name:literal,)*) => {
        /// One CPU capability. The discriminant is the cap number stored in alternative
        /// records (low 15 bits of the `cpucap` field).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum Cap {
            $(
                #[doc = concat!("`ARM64_", $name, "`")]
                $variant = $num,
            )*
        }

        impl Cap {
            /// Every cap, in number order (`Cap::ALL[n].number() == n`).
            pub const ALL: [Cap; NCAPS] = [$(Cap::$variant,)*];

            /// The Linux name without the `ARM64_` prefix, as printed in `cpucaps:` lines.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Cap::$variant => $name,)*
                }
            }
        }

        /// Number of caps; valid cap numbers are `0..NCAPS`.
        pub const NCAPS: usize = [$($num,)*].len();
    };
}

define_caps! {
    AlwaysBoot = 0 => "ALWAYS_BOOT",
    AlwaysSystem = 1 => "ALWAYS_SYSTEM",
    Bti = 2 => "BTI",
    HasAddressAuth = 3 => "HAS_ADDRESS_AUTH",
    HasArmv84Ttl = 4 => "HAS_ARMv8_4_TTL",
    HasCacheDic = 5 => "HAS_CACHE_DIC",
    HasCacheIdc = 6 => "HAS_CACHE_IDC",
    HasCnp = 7 => "HAS_CNP",
    HasCrc32 = 8 => "HAS_CRC32",
    HasE0pd = 9 => "HAS_E0PD",
    HasGenericAuth = 10 => "HAS_GENERIC_AUTH",
    HasLseAtomics = 11 => "HAS_LSE_ATOMICS",
    HasPan = 12 => "HAS_PAN",
    HasRasExtn = 13 => "HAS_RAS_EXTN",
    HasRng = 14 => "HAS_RNG",
    HasSb = 15 => "HAS_SB",
    HasStage2Fwb = 16 => "HAS_STAGE2_FWB",
    HasSysregGicCpuif = 17 => "HAS_SYSREG_GIC_CPUIF",
    HasTlbRange = 18 => "HAS_TLB_RANGE",
    HasVirtHostExtn = 19 => "HAS_VIRT_HOST_EXTN",
    KvmProtectedMode = 20 => "KVM_PROTECTED_MODE",
    SpectreBhb = 21 => "SPECTRE_BHB",
    SpectreV3a = 22 => "SPECTRE_V3A",
    Ssbs = 23 => "SSBS",
    Sve = 24 => "SVE",
    Workaround1742098 = 25 => "WORKAROUND_1742098",
    Workaround843419 = 26 => "WORKAROUND_843419",
    Workaround845719 = 27 => "WORKAROUND_845719",
    WorkaroundSpeculativeAt = 28 => "WORKAROUND_SPECULATIVE_AT",
}

impl Cap {
    /// The cap number as stored in alternative records.
    pub const fn number(self) -> u16 {
        self as u16
    }

    /// The cap with number `n`, if there is one.
    pub const fn from_number(n: u16) -> Option<Cap> {
        if (n as usize) < NCAPS {
            Some(Cap::ALL[n as usize])
        } else {
            None
        }
    }

    /// Looks a cap up by its Linux name (with or without the `ARM64_` prefix).
    pub fn from_name(name: &str) -> Option<Cap> {
        let name = name.strip_prefix("ARM64_").unwrap_or(name);
        Cap::ALL.iter().copied().find(|c| c.name() == name)
    }
}

// The callback flag lives in bit 15 of the record's cap field.
const _: () = assert!(NCAPS < (1 << 15));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_and_fixed_at_the_start() {
        assert_eq!(Cap::AlwaysBoot.number(), 0);
        assert_eq!(Cap::AlwaysSystem.number(), 1);
        for (i, cap) in Cap::ALL.iter().enumerate() {
            assert_eq!(cap.number() as usize, i);
            assert_eq!(Cap::from_number(i as u16), Some(*cap));
            assert_eq!(Cap::from_name(cap.name()), Some(*cap));
        }
        assert_eq!(Cap::from_number(NCAPS as u16), None);
    }

    #[test]
    fn names_after_the_always_caps_are_sorted_like_linux() {
        let names: Vec<_> = Cap::ALL[2..].iter().map(|c| c.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_by_key(|n| n.to_ascii_uppercase());
        assert_eq!(names, sorted);
    }
}
