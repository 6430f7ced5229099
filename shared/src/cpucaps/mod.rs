//! CPU capabilities: the one list of caps ([`Cap`]), sets of caps ([`CapSet`]), and in
//! submodules the ID-register snapshot and sanitisation ([`IdRegs`], [`Sanitiser`]), the
//! cap table and detection ([`CAP_TABLE`], [`detect`]), boot-argument overrides
//! ([`BootArgs`]) and finalisation ([`BootCpu`] → [`Bringup`] → [`FinalCaps`]).
//!
//! Cap numbers are stable: `ALWAYS_BOOT` = 0, `ALWAYS_SYSTEM` = 1, then the rest in
//! Linux's (alphabetical) order. Alternative records carry these numbers, so both images
//! and the host must agree on them — which they do by all using this module.
//!
//! Everything here is pure: the arch layer reads the registers with `mrs` into an
//! [`IdRegs`] and hands it over; nothing allocates.

mod finalize;
mod overrides;
pub mod regs;
mod set;
mod table;

pub use finalize::{BootCpu, Bringup, Conflict, ConflictKind, ConflictList, FinalCaps};
pub use overrides::{
    BootArgs, Diagnostic, DiagnosticKind, Diagnostics, FieldOverride, FieldOverrides, KvmMode,
    MAX_DIAGNOSTICS, MAX_FIELD_OVERRIDES,
};
pub use regs::{
    fields, sanitise, sanitised_ctr_el0, DumpError, Field, IdRegs, Midr, Reg, SafeRule, Sanitiser,
};
pub use set::CapSet;
pub use table::{
    caps_with_scope, detect, midr_in_list, parts, spectre_bhb_loop_k, CapInfo, CapType, Firmware,
    FwWorkaround, MidrRange, Platform, Rule, Scope, Scopes, SoftwareInputs, CAP_TABLE,
};

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

        /// Invokes the macro named by its argument once, with every [`Cap`] variant
        /// name in number order, each followed by a comma: `for_each_cap!(m)` expands
        /// to `m!(AlwaysBoot, AlwaysSystem, …,)`. For code that needs one site per cap
        /// (the hyp's cap-evaluation hypercall) without a second copy of the list.
        #[macro_export]
        macro_rules! for_each_cap {
            ($m:ident) => {
                $m!($($variant,)*)
            };
        }
    };
}

define_caps! {
    AlwaysBoot = 0 => "ALWAYS_BOOT",
    AlwaysSystem = 1 => "ALWAYS_SYSTEM",
    Bti = 2 => "BTI",
    Has32bitEl0 = 3 => "HAS_32BIT_EL0",
    Has32bitEl1 = 4 => "HAS_32BIT_EL1",
    HasAddressAuth = 5 => "HAS_ADDRESS_AUTH",
    HasAddressAuthArchQarma3 = 6 => "HAS_ADDRESS_AUTH_ARCH_QARMA3",
    HasAddressAuthArchQarma5 = 7 => "HAS_ADDRESS_AUTH_ARCH_QARMA5",
    HasAddressAuthImpDef = 8 => "HAS_ADDRESS_AUTH_IMP_DEF",
    HasAmuExtn = 9 => "HAS_AMU_EXTN",
    HasArmv84Ttl = 10 => "HAS_ARMv8_4_TTL",
    HasCacheDic = 11 => "HAS_CACHE_DIC",
    HasCacheIdc = 12 => "HAS_CACHE_IDC",
    HasCnp = 13 => "HAS_CNP",
    HasCrc32 = 14 => "HAS_CRC32",
    HasDcpodp = 15 => "HAS_DCPODP",
    HasDcpop = 16 => "HAS_DCPOP",
    HasE0pd = 17 => "HAS_E0PD",
    HasGenericAuth = 18 => "HAS_GENERIC_AUTH",
    HasGenericAuthArchQarma3 = 19 => "HAS_GENERIC_AUTH_ARCH_QARMA3",
    HasGenericAuthArchQarma5 = 20 => "HAS_GENERIC_AUTH_ARCH_QARMA5",
    HasGenericAuthImpDef = 21 => "HAS_GENERIC_AUTH_IMP_DEF",
    HasLdapr = 22 => "HAS_LDAPR",
    HasLseAtomics = 23 => "HAS_LSE_ATOMICS",
    HasPan = 24 => "HAS_PAN",
    HasRasExtn = 25 => "HAS_RAS_EXTN",
    HasRng = 26 => "HAS_RNG",
    HasSb = 27 => "HAS_SB",
    HasStage2Fwb = 28 => "HAS_STAGE2_FWB",
    HasSysregGicCpuif = 29 => "HAS_SYSREG_GIC_CPUIF",
    HasTlbRange = 30 => "HAS_TLB_RANGE",
    HasVirtHostExtn = 31 => "HAS_VIRT_HOST_EXTN",
    HwDbm = 32 => "HW_DBM",
    KvmProtectedMode = 33 => "KVM_PROTECTED_MODE",
    Sme = 34 => "SME",
    SpectreBhb = 35 => "SPECTRE_BHB",
    SpectreV2 = 36 => "SPECTRE_V2",
    SpectreV3a = 37 => "SPECTRE_V3A",
    SpectreV4 = 38 => "SPECTRE_V4",
    Ssbs = 39 => "SSBS",
    Sve = 40 => "SVE",
    Workaround1742098 = 41 => "WORKAROUND_1742098",
    Workaround834220 = 42 => "WORKAROUND_834220",
    Workaround843419 = 43 => "WORKAROUND_843419",
    Workaround845719 = 44 => "WORKAROUND_845719",
    WorkaroundDeviceLoadAcquire = 45 => "WORKAROUND_DEVICE_LOAD_ACQUIRE",
    WorkaroundSpeculativeAt = 46 => "WORKAROUND_SPECULATIVE_AT",
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
    fn for_each_cap_lists_every_cap_in_number_order() {
        macro_rules! collect {
            ($($c:ident,)*) => {
                [$(Cap::$c,)*]
            };
        }
        assert_eq!(for_each_cap!(collect), Cap::ALL);
    }

    #[test]
    fn names_after_the_always_caps_are_sorted_like_linux() {
        let names: Vec<_> = Cap::ALL[2..].iter().map(|c| c.name()).collect();
        let mut sorted = names.clone();
        sorted.sort_by_key(|n| n.to_ascii_uppercase());
        assert_eq!(names, sorted);
    }
}
