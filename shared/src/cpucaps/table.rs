//! The cap table: for every [`Cap`] its scope and late-CPU policy ([`CapType`], Linux's
//! `type` bits) and its detection [`Rule`]; the MIDR range lists of the errata; and
//! [`detect`], the pure function from one CPU's registers plus software inputs to caps.

use super::regs::{fields, Field, IdRegs, Midr, CTR_DIC_BIT, CTR_IDC_BIT};
use super::{Cap, CapSet, KvmMode, NCAPS};
use core::ops::BitOr;

/// Where a cap is detected (exactly one per cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Detected on the boot CPU only, before secondaries start; applied in the boot pass;
    /// every later CPU is verified against it.
    BootCpu,
    /// Detected on each CPU; the system has it if any CPU does (before finalisation).
    LocalCpu,
    /// Detected once, at finalisation, from the sanitised registers.
    System,
}

/// A set of [`Scope`]s, to ask [`detect`] for some scopes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// No scope.
    pub const NONE: Scopes = Scopes(0);
    /// [`Scope::BootCpu`].
    pub const BOOT_CPU: Scopes = Scopes(4);
    /// [`Scope::LocalCpu`].
    pub const LOCAL_CPU: Scopes = Scopes(1);
    /// [`Scope::System`].
    pub const SYSTEM: Scopes = Scopes(2);
    /// Every scope.
    pub const ALL: Scopes = Scopes(7);

    /// Whether `scope` is in the set.
    pub const fn contains(self, scope: Scope) -> bool {
        let bit = match scope {
            Scope::BootCpu => 4,
            Scope::LocalCpu => 1,
            Scope::System => 2,
        };
        self.0 & bit != 0
    }

    /// Union.
    #[must_use]
    pub const fn union(self, other: Scopes) -> Scopes {
        Scopes(self.0 | other.0)
    }
}

impl BitOr for Scopes {
    type Output = Scopes;
    fn bitor(self, rhs: Scopes) -> Scopes {
        self.union(rhs)
    }
}

/// Linux's u16 cap `type`: one scope bit plus late-CPU policy bits (LINUX-FACTS §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CapType(u16);

impl CapType {
    /// Scope bit: each CPU.
    pub const SCOPE_LOCAL_CPU: u16 = 0x01;
    /// Scope bit: sanitised system view.
    pub const SCOPE_SYSTEM: u16 = 0x02;
    /// Scope bit: boot CPU.
    pub const SCOPE_BOOT_CPU: u16 = 0x04;
    /// A late CPU may have the cap although the system does not.
    pub const PERMITTED_FOR_LATE_CPU: u16 = 0x10;
    /// A late CPU may lack the cap although the system has it.
    pub const OPTIONAL_FOR_LATE_CPU: u16 = 0x20;
    /// A conflict stops the system instead of parking the CPU.
    pub const PANIC_ON_CONFLICT: u16 = 0x40;

    /// Errata: per CPU; a late CPU may lack it but must not bring a new one.
    pub const LOCAL_CPU_ERRATUM: CapType = CapType(0x21);
    /// Ordinary features: sanitised view; a late CPU may have more, not less.
    pub const SYSTEM_FEATURE: CapType = CapType(0x12);
    /// Per-CPU features that never conflict (each CPU enables what it has).
    pub const WEAK_LOCAL_CPU_FEATURE: CapType = CapType(0x31);
    /// Per-CPU features fixed by the boot CPU (same bits as an erratum).
    pub const BOOT_RESTRICTED_CPU_LOCAL_FEATURE: CapType = CapType(0x21);
    /// Boot-CPU features every CPU must match exactly; a conflict is fatal.
    pub const STRICT_BOOT_CPU_FEATURE: CapType = CapType(0x44);
    /// Boot-CPU features a later CPU must have if the boot CPU had them.
    pub const BOOT_CPU_FEATURE: CapType = CapType(0x14);

    /// The raw Linux bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// The scope (the boot bit wins if several were set; the table sets exactly one).
    pub const fn scope(self) -> Scope {
        if self.0 & Self::SCOPE_BOOT_CPU != 0 {
            Scope::BootCpu
        } else if self.0 & Self::SCOPE_LOCAL_CPU != 0 {
            Scope::LocalCpu
        } else {
            Scope::System
        }
    }

    /// Whether a late CPU may have the cap when the system does not.
    pub const fn late_cpu_permitted(self) -> bool {
        self.0 & Self::PERMITTED_FOR_LATE_CPU != 0
    }

    /// Whether a late CPU may lack the cap when the system has it.
    pub const fn late_cpu_optional(self) -> bool {
        self.0 & Self::OPTIONAL_FOR_LATE_CPU != 0
    }

    /// Whether a conflict on this cap is fatal for the system (not just the CPU).
    pub const fn panic_on_conflict(self) -> bool {
        self.0 & Self::PANIC_ON_CONFLICT != 0
    }
}

/// A range of CPU models and revisions (`rVpR`, inclusive on both ends), optionally
/// with a REVIDR bit that marks one revision as already fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MidrRange {
    /// MIDR implementer code.
    pub implementer: u8,
    /// MIDR part number.
    pub part: u16,
    /// First affected (variant, revision).
    pub first: (u8, u8),
    /// Last affected (variant, revision).
    pub last: (u8, u8),
    /// (variant, revision, REVIDR mask): that revision is fixed if any mask bit is set.
    pub fixed_by_revidr: Option<(u8, u8, u64)>,
}

impl MidrRange {
    /// Every revision of a part.
    pub const fn all_versions(implementer: u8, part: u16) -> MidrRange {
        MidrRange::revisions(implementer, part, (0, 0), (0xf, 0xf))
    }

    /// Revisions `first..=last` of a part.
    pub const fn revisions(
        implementer: u8,
        part: u16,
        first: (u8, u8),
        last: (u8, u8),
    ) -> MidrRange {
        MidrRange {
            implementer,
            part,
            first,
            last,
            fixed_by_revidr: None,
        }
    }

    /// This range, except that `rVpR` is fixed when REVIDR has a bit of `mask` set.
    pub const fn fixed_by_revidr(mut self, variant: u8, revision: u8, mask: u64) -> MidrRange {
        self.fixed_by_revidr = Some((variant, revision, mask));
        self
    }

    /// Whether a CPU with these MIDR/REVIDR values is in the range and not fixed.
    pub const fn matches(&self, midr: u64, revidr: u64) -> bool {
        let m = Midr(midr);
        if m.implementer() != self.implementer || m.part() != self.part {
            return false;
        }
        let rv = (m.variant() as u16) << 4 | m.revision() as u16;
        let lo = (self.first.0 as u16) << 4 | self.first.1 as u16;
        let hi = (self.last.0 as u16) << 4 | self.last.1 as u16;
        if rv < lo || rv > hi {
            return false;
        }
        match self.fixed_by_revidr {
            Some((v, r, mask)) => !(m.variant() == v && m.revision() == r && revidr & mask != 0),
            None => true,
        }
    }
}

/// Whether any range of `list` matches.
pub const fn midr_in_list(list: &[MidrRange], midr: u64, revidr: u64) -> bool {
    let mut i = 0;
    while i < list.len() {
        if list[i].matches(midr, revidr) {
            return true;
        }
        i += 1;
    }
    false
}

/// MIDR implementer and part numbers used by the lists below.
pub mod parts {
    /// Arm Ltd.
    pub const IMP_ARM: u8 = 0x41;
    /// Broadcom.
    pub const IMP_BRCM: u8 = 0x42;
    /// HiSilicon.
    pub const IMP_HISI: u8 = 0x48;
    /// Ampere.
    pub const IMP_AMPERE: u8 = 0xc0;
    /// Cortex-A53.
    pub const CORTEX_A53: u16 = 0xd03;
    /// Cortex-A35.
    pub const CORTEX_A35: u16 = 0xd04;
    /// Cortex-A55.
    pub const CORTEX_A55: u16 = 0xd05;
    /// Cortex-A57.
    pub const CORTEX_A57: u16 = 0xd07;
    /// Cortex-A72.
    pub const CORTEX_A72: u16 = 0xd08;
    /// Cortex-A73.
    pub const CORTEX_A73: u16 = 0xd09;
    /// Cortex-A75.
    pub const CORTEX_A75: u16 = 0xd0a;
    /// Cortex-A76.
    pub const CORTEX_A76: u16 = 0xd0b;
    /// Neoverse N1.
    pub const NEOVERSE_N1: u16 = 0xd0c;
    /// Cortex-A77.
    pub const CORTEX_A77: u16 = 0xd0d;
    /// Neoverse V1.
    pub const NEOVERSE_V1: u16 = 0xd40;
    /// Cortex-A78.
    pub const CORTEX_A78: u16 = 0xd41;
    /// Cortex-A78AE.
    pub const CORTEX_A78AE: u16 = 0xd42;
    /// Cortex-X1.
    pub const CORTEX_X1: u16 = 0xd44;
    /// Cortex-A710.
    pub const CORTEX_A710: u16 = 0xd47;
    /// Cortex-X2.
    pub const CORTEX_X2: u16 = 0xd48;
    /// Neoverse N2.
    pub const NEOVERSE_N2: u16 = 0xd49;
    /// Cortex-A78C.
    pub const CORTEX_A78C: u16 = 0xd4b;
    /// Broadcom Brahma-B53.
    pub const BRAHMA_B53: u16 = 0x100;
    /// HiSilicon TSV110.
    pub const HISI_TSV110: u16 = 0xd01;
    /// AmpereOne (Ampere1).
    pub const AMPERE1: u16 = 0xac3;
}

use parts::*;

const fn arm(part: u16) -> MidrRange {
    MidrRange::all_versions(IMP_ARM, part)
}

const fn arm_revs(part: u16, first: (u8, u8), last: (u8, u8)) -> MidrRange {
    MidrRange::revisions(IMP_ARM, part, first, last)
}

/// Erratum 843419 (ADRP at page end): A53 r0p0–r0p4; r0p4 is fixed when REVIDR bit 8 is set.
pub const ERRATUM_843419: &[MidrRange] =
    &[arm_revs(CORTEX_A53, (0, 0), (0, 4)).fixed_by_revidr(0, 4, 1 << 8)];
/// Erratum 845719 (32-bit EL0 load corruption): A53 r0p0–r0p4.
pub const ERRATUM_845719: &[MidrRange] = &[arm_revs(CORTEX_A53, (0, 0), (0, 4))];
/// Erratum 832075 (device load-acquire): A57 r0p0–r1p2.
pub const ERRATUM_832075: &[MidrRange] = &[arm_revs(CORTEX_A57, (0, 0), (1, 2))];
/// Erratum 834220 (stage-2 fault reporting): A57 r0p0–r1p2.
pub const ERRATUM_834220: &[MidrRange] = &[arm_revs(CORTEX_A57, (0, 0), (1, 2))];
/// Erratum 1742098 (AArch32 AES): A57 r1p0 and later, every A72.
pub const ERRATUM_1742098: &[MidrRange] =
    &[arm_revs(CORTEX_A57, (1, 0), (0xf, 0xf)), arm(CORTEX_A72)];
/// Speculative AT errata: 1165522 (A76 r0p0–r2p0), 1319367/1319537 (every A57/A72),
/// 1530923 (A55 r0p0–r2p0).
pub const ERRATUM_SPECULATIVE_AT: &[MidrRange] = &[
    arm_revs(CORTEX_A76, (0, 0), (2, 0)),
    arm(CORTEX_A57),
    arm(CORTEX_A72),
    arm_revs(CORTEX_A55, (0, 0), (2, 0)),
];
/// Spectre-v3a (indirect hyp vectors needed): every A57 and A72.
pub const SPECTRE_V3A_CPUS: &[MidrRange] = &[arm(CORTEX_A57), arm(CORTEX_A72)];
/// CPUs unaffected by Spectre-v2 (besides those reporting CSV2).
pub const SPECTRE_V2_SAFE: &[MidrRange] = &[
    arm(CORTEX_A35),
    arm(CORTEX_A53),
    arm(CORTEX_A55),
    MidrRange::all_versions(IMP_BRCM, BRAHMA_B53),
    MidrRange::all_versions(IMP_HISI, HISI_TSV110),
];
/// CPUs unaffected by Spectre-v4.
pub const SPECTRE_V4_SAFE: &[MidrRange] = &[
    arm(CORTEX_A35),
    arm(CORTEX_A53),
    arm(CORTEX_A55),
    MidrRange::all_versions(IMP_BRCM, BRAHMA_B53),
];
const BHB_K32: &[MidrRange] = &[
    arm(CORTEX_A78),
    arm(CORTEX_A78AE),
    arm(CORTEX_A78C),
    arm(CORTEX_X1),
    arm(CORTEX_A710),
    arm(CORTEX_X2),
    arm(NEOVERSE_N2),
    arm(NEOVERSE_V1),
];
const BHB_K24: &[MidrRange] = &[arm(CORTEX_A76), arm(CORTEX_A77), arm(NEOVERSE_N1)];
const BHB_K11: &[MidrRange] = &[MidrRange::all_versions(IMP_AMPERE, AMPERE1)];
const BHB_K8: &[MidrRange] = &[arm(CORTEX_A57), arm(CORTEX_A72)];
/// CPUs whose Spectre-BHB mitigation is a firmware call.
pub const SPECTRE_BHB_FW_CPUS: &[MidrRange] = &[arm(CORTEX_A73), arm(CORTEX_A75)];

/// The Spectre-BHB loop count `k` for a MIDR (0 = the loop mitigation does not apply):
/// the number of taken branches the BHB-clearing loop must execute. The BHB callback
/// patches the system-wide maximum (see `FinalCaps::spectre_bhb_loop_k`).
pub const fn spectre_bhb_loop_k(midr: u64) -> u8 {
    if midr_in_list(BHB_K32, midr, 0) {
        32
    } else if midr_in_list(BHB_K24, midr, 0) {
        24
    } else if midr_in_list(BHB_K11, midr, 0) {
        11
    } else if midr_in_list(BHB_K8, midr, 0) {
        8
    } else {
        0
    }
}

/// What firmware answered to one SMCCC `ARCH_WORKAROUND_n` feature query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum FwWorkaround {
    /// No answer / not supported (QEMU's built-in PSCI: SMCCC 1.0).
    #[default]
    Unavailable,
    /// The call exists and mitigates the issue on this CPU.
    Mitigates,
    /// Firmware says this CPU does not need it.
    NotRequired,
}

/// Firmware answers for the Spectre workaround calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Firmware {
    /// `ARCH_WORKAROUND_1` (Spectre-v2).
    pub wa1: FwWorkaround,
    /// `ARCH_WORKAROUND_2` (Spectre-v4).
    pub wa2: FwWorkaround,
    /// `ARCH_WORKAROUND_3` (Spectre-BHB).
    pub wa3: FwWorkaround,
}

impl Firmware {
    /// No workaround calls (QEMU without EL3 firmware).
    pub const NONE: Firmware = Firmware {
        wa1: FwWorkaround::Unavailable,
        wa2: FwWorkaround::Unavailable,
        wa3: FwWorkaround::Unavailable,
    };
}

/// Facts about the platform that are not in the ID registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Platform {
    /// The host kernel stays at EL2 (VHE). Always false in this project: the host is an
    /// nVHE kernel that drops to EL1, so `HAS_VIRT_HOST_EXTN` is never detected.
    pub keeps_el2: bool,
    /// This is a kdump kernel (CnP is not used then).
    pub kdump: bool,
    /// Firmware Spectre workaround answers.
    pub firmware: Firmware,
}

impl Platform {
    /// This project under QEMU: nVHE host, not kdump, no firmware workarounds.
    pub const NVHE_QEMU: Platform = Platform {
        keeps_el2: false,
        kdump: false,
        firmware: Firmware::NONE,
    };
}

/// Everything detection reads besides the ID registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SoftwareInputs {
    /// From `kvm-arm.mode=`.
    pub kvm_mode: KvmMode,
    /// Platform facts.
    pub platform: Platform,
}

/// How a cap is detected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Always true (ALWAYS_*, and the weak caps whose per-CPU enable checks the field).
    Always,
    /// `field >= min` (signed comparison for signed fields).
    Field {
        /// The field read.
        field: Field,
        /// Minimum value.
        min: i64,
    },
    /// `field >= min`, and not a kdump kernel (CnP).
    FieldUnlessKdump {
        /// The field read.
        field: Field,
        /// Minimum value.
        min: i64,
    },
    /// Pointer-auth level: `field >= min` on the boot CPU; any other CPU must also
    /// have exactly the boot CPU's value.
    AddressAuth {
        /// The field read.
        field: Field,
        /// Minimum value.
        min: i64,
    },
    /// Any of the three address-auth algorithm caps matches.
    AddressAuthAny,
    /// Any of the three generic-auth algorithm fields is set in the sanitised view
    /// (also when verifying a late CPU, as Linux does).
    GenericAuthAny,
    /// CTR_EL0.IDC of the effective CTR (sanitised for the system view).
    CacheIdc,
    /// CTR_EL0.DIC.
    CacheDic,
    /// The kernel keeps EL2 and `MMFR1.VH >= 1` (never true for this nVHE host).
    VirtHost,
    /// `kvm-arm.mode=protected` on a host that does not keep EL2.
    KvmProtected,
    /// The CPU's MIDR/REVIDR is in the list.
    Midr(&'static [MidrRange]),
    /// Spectre-v2: no CSV2, not safe-listed, and firmware does not say "not required".
    SpectreV2,
    /// Spectre-v4: not safe-listed, and (SSBS present, or firmware does not say "not
    /// required"). The cap means "affected", so SSBS CPUs have it too.
    SpectreV4,
    /// Spectre-BHB: not CSV2.3, and (CLRBHB, or a loop count, or firmware mitigation).
    SpectreBhb,
}

/// One row of the cap table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapInfo {
    /// The cap.
    pub cap: Cap,
    /// Scope and late-CPU policy.
    pub ty: CapType,
    /// Detection rule.
    pub rule: Rule,
}

const fn row(cap: Cap, ty: CapType, rule: Rule) -> CapInfo {
    CapInfo { cap, ty, rule }
}

const fn ge(field: Field, min: i64) -> Rule {
    Rule::Field { field, min }
}

const fn pauth(field: Field) -> Rule {
    Rule::AddressAuth { field, min: 1 }
}

/// The cap table, indexed by cap number.
///
/// BTI is a strict boot-CPU feature, as in a kernel built with `CONFIG_ARM64_BTI_KERNEL`;
/// the GIC CPU interface relies on `PFR0.GIC` alone (the arch layer must clear that field
/// in the snapshot if ICC_SRE_EL1.SRE does not stick).
pub const CAP_TABLE: [CapInfo; NCAPS] = {
    use CapType as T;
    use Rule as R;
    [
        row(Cap::AlwaysBoot, T::BOOT_CPU_FEATURE, R::Always),
        row(Cap::AlwaysSystem, T::SYSTEM_FEATURE, R::Always),
        row(Cap::Bti, T::STRICT_BOOT_CPU_FEATURE, ge(fields::PFR1_BT, 1)),
        row(Cap::Has32bitEl0, T::SYSTEM_FEATURE, ge(fields::PFR0_EL0, 2)),
        row(Cap::Has32bitEl1, T::SYSTEM_FEATURE, ge(fields::PFR0_EL1, 2)),
        row(Cap::HasAddressAuth, T::BOOT_CPU_FEATURE, R::AddressAuthAny),
        row(
            Cap::HasAddressAuthArchQarma3,
            T::BOOT_CPU_FEATURE,
            pauth(fields::ISAR2_APA3),
        ),
        row(
            Cap::HasAddressAuthArchQarma5,
            T::BOOT_CPU_FEATURE,
            pauth(fields::ISAR1_APA),
        ),
        row(
            Cap::HasAddressAuthImpDef,
            T::BOOT_CPU_FEATURE,
            pauth(fields::ISAR1_API),
        ),
        row(Cap::HasAmuExtn, T::WEAK_LOCAL_CPU_FEATURE, R::Always),
        row(
            Cap::HasArmv84Ttl,
            T::SYSTEM_FEATURE,
            ge(fields::MMFR2_TTL, 1),
        ),
        row(Cap::HasCacheDic, T::SYSTEM_FEATURE, R::CacheDic),
        row(Cap::HasCacheIdc, T::SYSTEM_FEATURE, R::CacheIdc),
        row(
            Cap::HasCnp,
            T::SYSTEM_FEATURE,
            R::FieldUnlessKdump {
                field: fields::MMFR2_CNP,
                min: 1,
            },
        ),
        row(Cap::HasCrc32, T::SYSTEM_FEATURE, ge(fields::ISAR0_CRC32, 1)),
        row(Cap::HasDcpodp, T::SYSTEM_FEATURE, ge(fields::ISAR1_DPB, 2)),
        row(Cap::HasDcpop, T::SYSTEM_FEATURE, ge(fields::ISAR1_DPB, 1)),
        row(Cap::HasE0pd, T::SYSTEM_FEATURE, ge(fields::MMFR2_E0PD, 1)),
        row(Cap::HasGenericAuth, T::SYSTEM_FEATURE, R::GenericAuthAny),
        row(
            Cap::HasGenericAuthArchQarma3,
            T::SYSTEM_FEATURE,
            ge(fields::ISAR2_GPA3, 1),
        ),
        row(
            Cap::HasGenericAuthArchQarma5,
            T::SYSTEM_FEATURE,
            ge(fields::ISAR1_GPA, 1),
        ),
        row(
            Cap::HasGenericAuthImpDef,
            T::SYSTEM_FEATURE,
            ge(fields::ISAR1_GPI, 1),
        ),
        row(Cap::HasLdapr, T::SYSTEM_FEATURE, ge(fields::ISAR1_LRCPC, 1)),
        row(
            Cap::HasLseAtomics,
            T::SYSTEM_FEATURE,
            ge(fields::ISAR0_ATOMIC, 2),
        ),
        row(Cap::HasPan, T::SYSTEM_FEATURE, ge(fields::MMFR1_PAN, 1)),
        row(Cap::HasRasExtn, T::SYSTEM_FEATURE, ge(fields::PFR0_RAS, 1)),
        row(Cap::HasRng, T::SYSTEM_FEATURE, ge(fields::ISAR0_RNDR, 1)),
        row(Cap::HasSb, T::SYSTEM_FEATURE, ge(fields::ISAR1_SB, 1)),
        row(
            Cap::HasStage2Fwb,
            T::SYSTEM_FEATURE,
            ge(fields::MMFR2_FWB, 1),
        ),
        row(
            Cap::HasSysregGicCpuif,
            T::STRICT_BOOT_CPU_FEATURE,
            ge(fields::PFR0_GIC, 1),
        ),
        row(
            Cap::HasTlbRange,
            T::SYSTEM_FEATURE,
            ge(fields::ISAR0_TLB, 2),
        ),
        row(
            Cap::HasVirtHostExtn,
            T::STRICT_BOOT_CPU_FEATURE,
            R::VirtHost,
        ),
        row(Cap::HwDbm, T::WEAK_LOCAL_CPU_FEATURE, R::Always),
        row(Cap::KvmProtectedMode, T::SYSTEM_FEATURE, R::KvmProtected),
        row(Cap::Sme, T::SYSTEM_FEATURE, ge(fields::PFR1_SME, 1)),
        row(Cap::SpectreBhb, T::LOCAL_CPU_ERRATUM, R::SpectreBhb),
        row(Cap::SpectreV2, T::LOCAL_CPU_ERRATUM, R::SpectreV2),
        row(
            Cap::SpectreV3a,
            T::LOCAL_CPU_ERRATUM,
            R::Midr(SPECTRE_V3A_CPUS),
        ),
        row(Cap::SpectreV4, T::LOCAL_CPU_ERRATUM, R::SpectreV4),
        row(Cap::Ssbs, T::SYSTEM_FEATURE, ge(fields::PFR1_SSBS, 1)),
        row(Cap::Sve, T::SYSTEM_FEATURE, ge(fields::PFR0_SVE, 1)),
        row(
            Cap::Workaround1742098,
            T::LOCAL_CPU_ERRATUM,
            R::Midr(ERRATUM_1742098),
        ),
        row(
            Cap::Workaround834220,
            T::LOCAL_CPU_ERRATUM,
            R::Midr(ERRATUM_834220),
        ),
        row(
            Cap::Workaround843419,
            T::LOCAL_CPU_ERRATUM,
            R::Midr(ERRATUM_843419),
        ),
        row(
            Cap::Workaround845719,
            T::LOCAL_CPU_ERRATUM,
            R::Midr(ERRATUM_845719),
        ),
        row(
            Cap::WorkaroundDeviceLoadAcquire,
            T::LOCAL_CPU_ERRATUM,
            R::Midr(ERRATUM_832075),
        ),
        row(
            Cap::WorkaroundSpeculativeAt,
            T::LOCAL_CPU_ERRATUM,
            R::Midr(ERRATUM_SPECULATIVE_AT),
        ),
    ]
};

// The table is indexed by cap number; a mistake here is a build failure.
const _: () = {
    let mut i = 0;
    while i < NCAPS {
        assert!(CAP_TABLE[i].cap as usize == i);
        i += 1;
    }
};

impl Cap {
    /// This cap's row of [`CAP_TABLE`].
    pub const fn info(self) -> &'static CapInfo {
        &CAP_TABLE[self as usize]
    }

    /// This cap's scope.
    pub const fn scope(self) -> Scope {
        self.info().ty.scope()
    }
}

/// The caps whose scope is in `scopes`.
pub const fn caps_with_scope(scopes: Scopes) -> CapSet {
    let mut s = CapSet::EMPTY;
    let mut i = 0;
    while i < NCAPS {
        if scopes.contains(CAP_TABLE[i].ty.scope()) {
            s = s.with(CAP_TABLE[i].cap);
        }
        i += 1;
    }
    s
}

/// How a rule is being evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eval {
    /// On the boot CPU, at boot.
    Boot,
    /// On one CPU: LOCAL detection, or verifying a CPU against the system.
    Local,
    /// On the sanitised registers.
    System,
}

/// What a rule reads: the CPU under test and the reference (boot/sanitised) registers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub cpu: &'a IdRegs,
    pub reference: &'a IdRegs,
    pub sw: &'a SoftwareInputs,
}

fn address_auth(field: &Field, min: i64, ctx: &Ctx<'_>, eval: Eval) -> bool {
    let boot_val = ctx.reference.field(field);
    match eval {
        Eval::Boot | Eval::System => boot_val >= min,
        Eval::Local => {
            let v = ctx.cpu.field(field);
            v >= min && v == boot_val
        }
    }
}

fn spectre_v2(cpu: &IdRegs, fw: &Firmware) -> bool {
    if cpu.field(&fields::PFR0_CSV2) >= 1 || midr_in_list(SPECTRE_V2_SAFE, cpu.midr, cpu.revidr) {
        return false;
    }
    fw.wa1 != FwWorkaround::NotRequired
}

fn spectre_v4(cpu: &IdRegs, fw: &Firmware) -> bool {
    if midr_in_list(SPECTRE_V4_SAFE, cpu.midr, cpu.revidr) {
        return false;
    }
    // SSBS mitigates but the CPU is still "affected": the cap stays set.
    cpu.field(&fields::PFR1_SSBS) >= 1 || fw.wa2 != FwWorkaround::NotRequired
}

fn spectre_bhb(cpu: &IdRegs, fw: &Firmware) -> bool {
    if cpu.field(&fields::PFR0_CSV2) >= 3 {
        return false;
    }
    cpu.field(&fields::ISAR2_CLRBHB) >= 1
        || spectre_bhb_loop_k(cpu.midr) != 0
        || fw.wa3 == FwWorkaround::Mitigates
        || midr_in_list(SPECTRE_BHB_FW_CPUS, cpu.midr, cpu.revidr)
}

/// Evaluates one row.
pub(crate) fn matches(info: &CapInfo, ctx: &Ctx<'_>, eval: Eval) -> bool {
    let regs = if eval == Eval::System {
        ctx.reference
    } else {
        ctx.cpu
    };
    let fw = &ctx.sw.platform.firmware;
    match info.rule {
        Rule::Always => true,
        Rule::Field { field, min } => regs.field(&field) >= min,
        Rule::FieldUnlessKdump { field, min } => {
            !ctx.sw.platform.kdump && regs.field(&field) >= min
        }
        Rule::AddressAuth { field, min } => address_auth(&field, min, ctx, eval),
        Rule::AddressAuthAny => [fields::ISAR1_APA, fields::ISAR2_APA3, fields::ISAR1_API]
            .iter()
            .any(|f| address_auth(f, 1, ctx, eval)),
        Rule::GenericAuthAny => [fields::ISAR1_GPA, fields::ISAR2_GPA3, fields::ISAR1_GPI]
            .iter()
            .any(|f| ctx.reference.field(f) >= 1),
        Rule::CacheIdc => {
            let ctr = if eval == Eval::System {
                regs.ctr
            } else {
                regs.effective_ctr()
            };
            ctr & CTR_IDC_BIT != 0
        }
        Rule::CacheDic => regs.ctr & CTR_DIC_BIT != 0,
        Rule::VirtHost => ctx.sw.platform.keeps_el2 && regs.field(&fields::MMFR1_VH) >= 1,
        Rule::KvmProtected => ctx.sw.kvm_mode == KvmMode::Protected && !ctx.sw.platform.keeps_el2,
        Rule::Midr(list) => midr_in_list(list, ctx.cpu.midr, ctx.cpu.revidr),
        Rule::SpectreV2 => spectre_v2(ctx.cpu, fw),
        Rule::SpectreV4 => spectre_v4(ctx.cpu, fw),
        Rule::SpectreBhb => spectre_bhb(ctx.cpu, fw),
    }
}

/// Evaluates every cap of `scopes` on one register set.
pub(crate) fn detect_in(ctx: &Ctx<'_>, scopes: Scopes, eval_for: impl Fn(Scope) -> Eval) -> CapSet {
    let mut out = CapSet::EMPTY;
    for info in CAP_TABLE.iter() {
        let scope = info.ty.scope();
        if scopes.contains(scope) && matches(info, ctx, eval_for(scope)) {
            out.insert(info.cap);
        }
    }
    out
}

/// The caps of `scopes` that one register set has.
///
/// Pass a CPU's registers (after overrides) for [`Scope::BootCpu`] and
/// [`Scope::LocalCpu`], and sanitised registers for [`Scope::System`] (for one CPU:
/// [`sanitise`](super::sanitise)`(&[regs])`, whose CTR already carries the effective IDC). Each cap is
/// evaluated the way Linux evaluates it in its own scope (a boot-scope cap as on the boot
/// CPU, a system cap on `regs` as the sanitised view).
pub fn detect(regs: &IdRegs, sw: &SoftwareInputs, scopes: Scopes) -> CapSet {
    let ctx = Ctx {
        cpu: regs,
        reference: regs,
        sw,
    };
    detect_in(&ctx, scopes, |s| match s {
        Scope::BootCpu => Eval::Boot,
        Scope::LocalCpu => Eval::Local,
        Scope::System => Eval::System,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_exactly_one_scope_bit() {
        for info in CAP_TABLE.iter() {
            let scope_bits = info.ty.bits() & 0x7;
            assert_eq!(scope_bits.count_ones(), 1, "{}", info.cap.name());
        }
        assert_eq!(Cap::AlwaysBoot.scope(), Scope::BootCpu);
        assert_eq!(Cap::AlwaysSystem.scope(), Scope::System);
        assert_eq!(Cap::WorkaroundSpeculativeAt.scope(), Scope::LocalCpu);
        assert!(caps_with_scope(Scopes::BOOT_CPU).has(Cap::HasAddressAuth));
        assert!(!caps_with_scope(Scopes::BOOT_CPU).has(Cap::HasGenericAuth));
    }

    #[test]
    fn type_bits_are_linux_values() {
        assert_eq!(CapType::LOCAL_CPU_ERRATUM.bits(), 0x21);
        assert_eq!(CapType::SYSTEM_FEATURE.bits(), 0x12);
        assert_eq!(CapType::WEAK_LOCAL_CPU_FEATURE.bits(), 0x31);
        assert_eq!(CapType::STRICT_BOOT_CPU_FEATURE.bits(), 0x44);
        assert_eq!(CapType::BOOT_CPU_FEATURE.bits(), 0x14);
        assert!(CapType::STRICT_BOOT_CPU_FEATURE.panic_on_conflict());
        assert!(!CapType::STRICT_BOOT_CPU_FEATURE.late_cpu_permitted());
        assert!(CapType::LOCAL_CPU_ERRATUM.late_cpu_optional());
        assert!(!CapType::LOCAL_CPU_ERRATUM.late_cpu_permitted());
    }

    fn a53(rev: u8, revidr: u64) -> (u64, u64) {
        (0x410f_d030 | rev as u64, revidr)
    }

    #[test]
    fn erratum_843419_respects_revision_and_revidr() {
        for rev in 0..=4 {
            let (m, r) = a53(rev, 0);
            assert!(midr_in_list(ERRATUM_843419, m, r), "r0p{rev}");
        }
        let (m, r) = a53(4, 1 << 8);
        assert!(!midr_in_list(ERRATUM_843419, m, r));
        // The REVIDR fix is specific to r0p4.
        let (m, r) = a53(3, 1 << 8);
        assert!(midr_in_list(ERRATUM_843419, m, r));
        assert!(midr_in_list(ERRATUM_845719, m, r));
        let (m, r) = a53(5, 0);
        assert!(!midr_in_list(ERRATUM_843419, m, r));
        // r1p0 is past the range.
        assert!(!midr_in_list(ERRATUM_845719, 0x411f_d030, 0));
    }

    #[test]
    fn a57_and_a72_ranges() {
        let a57_r1p0 = 0x411f_d070;
        let a57_r1p3 = 0x411f_d073;
        let a57_r0p0 = 0x410f_d070;
        let a72_r0p3 = 0x410f_d083;
        assert!(midr_in_list(ERRATUM_832075, a57_r1p0, 0));
        assert!(!midr_in_list(ERRATUM_832075, a57_r1p3, 0));
        assert!(midr_in_list(ERRATUM_834220, a57_r0p0, 0));
        assert!(midr_in_list(ERRATUM_1742098, a57_r1p0, 0));
        assert!(!midr_in_list(ERRATUM_1742098, a57_r0p0, 0));
        assert!(midr_in_list(ERRATUM_1742098, a72_r0p3, 0));
        assert!(!midr_in_list(ERRATUM_832075, a72_r0p3, 0));
        for m in [a57_r0p0, a57_r1p3, a72_r0p3] {
            assert!(midr_in_list(ERRATUM_SPECULATIVE_AT, m, 0));
            assert!(midr_in_list(SPECTRE_V3A_CPUS, m, 0));
            assert_eq!(spectre_bhb_loop_k(m), 8);
        }
        // Another implementer with the same part number is not an A57.
        assert!(!midr_in_list(SPECTRE_V3A_CPUS, 0x511f_d070, 0));
    }

    #[test]
    fn bhb_loop_counts() {
        assert_eq!(spectre_bhb_loop_k(0x410f_d034), 0); // A53
        assert_eq!(spectre_bhb_loop_k(0x000f_0510), 0); // QEMU max
        assert_eq!(spectre_bhb_loop_k(0x414f_d0b1), 24); // A76 r4p1
        assert_eq!(spectre_bhb_loop_k(0x411f_d410), 32); // A78
        assert_eq!(spectre_bhb_loop_k(0xc00f_ac30), 11); // Ampere1
    }

    #[test]
    fn spectre_rules_read_fields_and_firmware() {
        let sw = SoftwareInputs::default();
        let a72 = IdRegs {
            midr: 0x410f_d083,
            ..IdRegs::default()
        };
        let caps = detect(&a72, &sw, Scopes::LOCAL_CPU);
        assert!(caps.has(Cap::SpectreV2) && caps.has(Cap::SpectreV4) && caps.has(Cap::SpectreBhb));
        // CSV2 clears v2 (not BHB unless CSV2.3).
        let csv2 = a72.with_field_raw(&fields::PFR0_CSV2, 1);
        let caps = detect(&csv2, &sw, Scopes::LOCAL_CPU);
        assert!(!caps.has(Cap::SpectreV2) && caps.has(Cap::SpectreBhb));
        let csv2_3 = a72.with_field_raw(&fields::PFR0_CSV2, 3);
        assert!(!detect(&csv2_3, &sw, Scopes::LOCAL_CPU).has(Cap::SpectreBhb));
        // Firmware "not required" clears v2 and v4 on a vulnerable CPU.
        let fw = SoftwareInputs {
            platform: Platform {
                firmware: Firmware {
                    wa1: FwWorkaround::NotRequired,
                    wa2: FwWorkaround::NotRequired,
                    wa3: FwWorkaround::Unavailable,
                },
                ..Platform::NVHE_QEMU
            },
            ..sw
        };
        let caps = detect(&a72, &fw, Scopes::LOCAL_CPU);
        assert!(!caps.has(Cap::SpectreV2) && !caps.has(Cap::SpectreV4));
        // An unknown CPU is BHB-affected only if firmware mitigates it or CLRBHB exists.
        let other = IdRegs {
            midr: 0x000f_0510,
            ..IdRegs::default()
        };
        assert!(!detect(&other, &sw, Scopes::LOCAL_CPU).has(Cap::SpectreBhb));
        let clrbhb = other.with_field_raw(&fields::ISAR2_CLRBHB, 1);
        assert!(detect(&clrbhb, &sw, Scopes::LOCAL_CPU).has(Cap::SpectreBhb));
        let fw3 = SoftwareInputs {
            platform: Platform {
                firmware: Firmware {
                    wa3: FwWorkaround::Mitigates,
                    ..Firmware::NONE
                },
                ..Platform::NVHE_QEMU
            },
            ..sw
        };
        assert!(detect(&other, &fw3, Scopes::LOCAL_CPU).has(Cap::SpectreBhb));
    }

    #[test]
    fn software_caps() {
        let regs = IdRegs {
            mmfr1: 0x100,
            mmfr2: 1,
            ..IdRegs::default()
        }; // VH=1, CnP=1
        let mut sw = SoftwareInputs::default();
        assert!(!detect(&regs, &sw, Scopes::ALL).has(Cap::HasVirtHostExtn));
        assert!(detect(&regs, &sw, Scopes::ALL).has(Cap::HasCnp));
        sw.platform.keeps_el2 = true;
        assert!(detect(&regs, &sw, Scopes::ALL).has(Cap::HasVirtHostExtn));
        sw.kvm_mode = KvmMode::Protected;
        assert!(!detect(&regs, &sw, Scopes::ALL).has(Cap::KvmProtectedMode));
        sw.platform.keeps_el2 = false;
        assert!(detect(&regs, &sw, Scopes::ALL).has(Cap::KvmProtectedMode));
        sw.platform.kdump = true;
        assert!(!detect(&regs, &sw, Scopes::ALL).has(Cap::HasCnp));
    }

    #[test]
    fn detect_honours_requested_scopes() {
        let sw = SoftwareInputs::default();
        let regs = IdRegs {
            midr: 0x410f_d034,
            isar0: 0x10000,
            ..IdRegs::default()
        };
        assert_eq!(
            detect(&regs, &sw, Scopes::BOOT_CPU),
            CapSet::of(&[Cap::AlwaysBoot])
        );
        assert_eq!(
            detect(&regs, &sw, Scopes::SYSTEM),
            CapSet::of(&[Cap::AlwaysSystem, Cap::HasCrc32])
        );
        assert_eq!(detect(&regs, &sw, Scopes::NONE), CapSet::EMPTY);
    }
}
