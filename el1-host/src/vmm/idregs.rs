//! The CPU a guest is told it has: the VMM's answers to the guest's reads of the
//! group-3 ID registers (`op0=3, op1=0, CRn=0, CRm=1..7`), which the hyp traps for every
//! guest (`HCR_EL2.TID3`).
//!
//! A guest must see a consistent CPU: what the ID registers advertise must work under
//! this hypervisor, and what does not work must not be advertised. The view is a
//! filtered copy of the host's sanitised registers ([`GuestIdRegs::from_host`]):
//!
//! | register | guest view |
//! | --- | --- |
//! | ID_AA64PFR0 | EL0 = EL1 = 1 (AArch64 only: exits from AArch32 are not decoded); SVE, SEL2, MPAM, AMU = 0 (not switched or trapped); EL2, EL3, FP, AdvSIMD, GIC, RAS (the switch synchronises errors with ESB/DISR on exit; the guest's DISR is the virtual one under `HCR_EL2.AMO`), DIT, CSV2, CSV3 kept |
//! | ID_AA64PFR1 | SME, MTE, MPAM_frac = 0; BT, SSBS, RAS_frac kept |
//! | ID_AA64ISAR0 | kept |
//! | ID_AA64ISAR1/2 | kept, except MOPS = 0 (EL1 needs `HCRX_EL2.MSCEn`, never set) and the pointer-authentication fields (APA, API, GPA, GPI, APA3, GPA3) = 0 unless the hyp switches the keys (`HAS_ADDRESS_AUTH`) |
//! | ID_AA64MMFR0 | PARange clamped to the VM's IPA size; FGT = 0 (EL2 only); rest kept |
//! | ID_AA64MMFR1 | VH, TWED, HCX = 0 (EL2 features; the guest has no EL2); rest kept |
//! | ID_AA64MMFR2 | NV, FWB, EVT = 0 (EL2 features); rest kept |
//! | ID_AA64DFR0 | DebugVer = 6 (Armv8.0 debug, the lowest value an Armv8 CPU can report; Linux needs a valid one); BRPs, WRPs, CTX_CMPs, DoubleLock kept (the guest's breakpoint registers are the hardware's); PMUVer, PMSVer, TraceVer, TraceFilt = 0 (no PMU, SPE, TRBE or trace for guests) |
//! | ID_AA64ZFR0, SMFR0 | 0 (no SVE/SME) |
//! | every other encoding of the group (AArch32 ID_*, MVFR*, PFR2, DFR1/2, AFR0/1, ISAR3, MMFR3/4, FPFR0, reserved ones) | 0 |
//!
//! Fields the sanitised copy does not describe are already RES0 there and stay 0 here:
//! the view is built field by field from zero, never by clearing bits of a raw value.
//! MIDR and MPIDR are not in the group (the guest reads VPIDR/VMPIDR). A write to an ID
//! register is UNDEFINED (the VMM injects an Undefined Instruction exception).

use shared::cpucaps::fields::*;
use shared::cpucaps::{Cap, Field, FinalCaps, IdRegs};

/// The IPA size a VM has when the VMM is not told otherwise (the hyp's default).
pub const DEFAULT_IPA_BITS: u8 = 40;

/// `op0:op1:CRn:CRm:op2` packings (as [`shared::exit::SysRegAccess::encoding`]) of the
/// registers the view fills in.
pub mod enc {
    /// ID_AA64PFR0_EL1.
    pub const PFR0: u32 = 0xc020;
    /// ID_AA64PFR1_EL1.
    pub const PFR1: u32 = 0xc021;
    /// ID_AA64ZFR0_EL1.
    pub const ZFR0: u32 = 0xc024;
    /// ID_AA64SMFR0_EL1.
    pub const SMFR0: u32 = 0xc025;
    /// ID_AA64DFR0_EL1.
    pub const DFR0: u32 = 0xc028;
    /// ID_AA64ISAR0_EL1.
    pub const ISAR0: u32 = 0xc030;
    /// ID_AA64ISAR1_EL1.
    pub const ISAR1: u32 = 0xc031;
    /// ID_AA64ISAR2_EL1.
    pub const ISAR2: u32 = 0xc032;
    /// ID_AA64MMFR0_EL1.
    pub const MMFR0: u32 = 0xc038;
    /// ID_AA64MMFR1_EL1.
    pub const MMFR1: u32 = 0xc039;
    /// ID_AA64MMFR2_EL1.
    pub const MMFR2: u32 = 0xc03a;
}

/// Whether `encoding` is in the group-3 ID space `HCR_EL2.TID3` traps: op0 = 3,
/// op1 = 0, CRn = 0, CRm = 1..=7 (any op2, reserved encodings included).
pub const fn is_id_space(encoding: u32) -> bool {
    let crm = (encoding >> 3) & 0xf;
    encoding & !0x7f == 0xc000 && crm >= 1 && crm <= 7
}

/// What the hypervisor supports beyond the sanitised registers themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HypSupport {
    /// The hyp switches the pointer-authentication keys and runs guests with
    /// `HCR_EL2.API/APK` (the host has `HAS_ADDRESS_AUTH`).
    pub ptrauth: bool,
    /// The VM's IPA size in bits (PARange is clamped to it).
    pub ipa_bits: u8,
}

/// The guest's ID-register view (see the module documentation for the rules).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestIdRegs {
    view: IdRegs,
}

/// Copies the listed fields of `from` into `to`.
fn keep(to: &mut u64, from: u64, fields: &[Field]) {
    for f in fields {
        *to = f.with_raw(*to, f.raw(from));
    }
}

/// The largest PARange code whose address size fits in `bits` (at least 0: 32 bits).
const fn parange_for_bits(bits: u8) -> u64 {
    const SIZES: [u8; 7] = [32, 36, 40, 42, 44, 48, 52];
    let mut code = 0;
    let mut i = 0;
    while i < SIZES.len() {
        if SIZES[i] <= bits {
            code = i as u64;
        }
        i += 1;
    }
    code
}

/// A plain Armv8.0 CPU with a GICv3 CPU interface (every CPU model this project runs
/// on has one): the host view [`GuestIdRegs::baseline`] filters.
const fn baseline_host() -> IdRegs {
    let mut r = IdRegs::ZERO;
    // EL0/EL1/EL2 AArch64, FP and AdvSIMD (0 = implemented), GIC system registers.
    r.pfr0 = PFR0_EL0.with_raw(0, 1);
    r.pfr0 = PFR0_EL1.with_raw(r.pfr0, 1);
    r.pfr0 = PFR0_EL2.with_raw(r.pfr0, 1);
    r.pfr0 = PFR0_GIC.with_raw(r.pfr0, 1);
    // 4 KiB granule only (TGran4 = 0 is "supported"; TGran64 0xf is "not"), 8-bit ASIDs.
    r.mmfr0 = MMFR0_TGRAN64.with_raw(0, 0xf);
    r.mmfr0 = MMFR0_PARANGE.with_raw(r.mmfr0, 6);
    // The architectural minimum: 2 breakpoints, 2 watchpoints, no double lock.
    r.dfr0 = DFR0_DEBUGVER.with_raw(0, 6);
    r.dfr0 = DFR0_BRPS.with_raw(r.dfr0, 1);
    r.dfr0 = DFR0_WRPS.with_raw(r.dfr0, 1);
    r.dfr0 = DFR0_DOUBLELOCK.with_raw(r.dfr0, 0xf);
    r
}

impl GuestIdRegs {
    /// The view of a guest on a host whose sanitised registers are `host`.
    pub fn from_host(host: &IdRegs, hyp: HypSupport) -> Self {
        let mut v = IdRegs::default();

        v.pfr0 = PFR0_EL0.with_raw(0, 1);
        v.pfr0 = PFR0_EL1.with_raw(v.pfr0, 1);
        keep(
            &mut v.pfr0,
            host.pfr0,
            &[
                PFR0_EL2,
                PFR0_EL3,
                PFR0_FP,
                PFR0_ADVSIMD,
                PFR0_GIC,
                PFR0_RAS,
                PFR0_DIT,
                PFR0_CSV2,
                PFR0_CSV3,
            ],
        );
        keep(&mut v.pfr1, host.pfr1, &[PFR1_BT, PFR1_SSBS, PFR1_RAS_FRAC]);

        keep(&mut v.isar0, host.isar0, ISAR0);
        let pauth1: &[Field] = &[ISAR1_APA, ISAR1_API, ISAR1_GPA, ISAR1_GPI];
        let pauth2: &[Field] = &[ISAR2_APA3, ISAR2_GPA3];
        for f in ISAR1 {
            if hyp.ptrauth || !pauth1.contains(f) {
                keep(&mut v.isar1, host.isar1, core::slice::from_ref(f));
            }
        }
        for f in ISAR2 {
            if *f != ISAR2_MOPS && (hyp.ptrauth || !pauth2.contains(f)) {
                keep(&mut v.isar2, host.isar2, core::slice::from_ref(f));
            }
        }

        for f in MMFR0 {
            if *f != MMFR0_FGT && *f != MMFR0_PARANGE {
                keep(&mut v.mmfr0, host.mmfr0, core::slice::from_ref(f));
            }
        }
        let parange = MMFR0_PARANGE
            .raw(host.mmfr0)
            .min(parange_for_bits(hyp.ipa_bits));
        v.mmfr0 = MMFR0_PARANGE.with_raw(v.mmfr0, parange);
        for f in MMFR1 {
            if ![MMFR1_VH, MMFR1_TWED, MMFR1_HCX].contains(f) {
                keep(&mut v.mmfr1, host.mmfr1, core::slice::from_ref(f));
            }
        }
        for f in MMFR2 {
            if ![MMFR2_NV, MMFR2_FWB, MMFR2_EVT].contains(f) {
                keep(&mut v.mmfr2, host.mmfr2, core::slice::from_ref(f));
            }
        }

        v.dfr0 = DFR0_DEBUGVER.with_raw(0, 6);
        keep(
            &mut v.dfr0,
            host.dfr0,
            &[DFR0_BRPS, DFR0_WRPS, DFR0_CTX_CMPS, DFR0_DOUBLELOCK],
        );
        Self { view: v }
    }

    /// The view for a VM with `ipa_bits` of IPA space on a host whose finalised caps are
    /// `caps` (the kernel's `cpufeature::final_caps()`): its sanitised registers, with
    /// pointer authentication kept when the hyp switches the keys (`HAS_ADDRESS_AUTH`).
    pub fn from_final(caps: &FinalCaps, ipa_bits: u8) -> Self {
        Self::from_host(
            caps.sanitised(),
            HypSupport {
                ptrauth: caps.has(Cap::HasAddressAuth),
                ipa_bits,
            },
        )
    }

    /// The view used when the VMM was not given the host's registers: a plain Armv8.0
    /// CPU (AArch64 EL0–EL2, FP/AdvSIMD, GICv3 system registers, 4 KiB pages, 8-bit
    /// ASIDs, two breakpoints and watchpoints), which every supported host CPU can run.
    pub fn baseline(ipa_bits: u8) -> Self {
        Self::from_host(
            &baseline_host(),
            HypSupport {
                ptrauth: false,
                ipa_bits,
            },
        )
    }

    /// The filtered registers.
    pub const fn regs(&self) -> &IdRegs {
        &self.view
    }

    /// What a guest read of the register with this encoding returns; `None` if the
    /// encoding is not in the group-3 ID space ([`is_id_space`]). Encodings the view
    /// does not fill in read as zero.
    pub const fn read(&self, encoding: u32) -> Option<u64> {
        if !is_id_space(encoding) {
            return None;
        }
        let v = &self.view;
        Some(match encoding {
            enc::PFR0 => v.pfr0,
            enc::PFR1 => v.pfr1,
            enc::DFR0 => v.dfr0,
            enc::ISAR0 => v.isar0,
            enc::ISAR1 => v.isar1,
            enc::ISAR2 => v.isar2,
            enc::MMFR0 => v.mmfr0,
            enc::MMFR1 => v.mmfr1,
            enc::MMFR2 => v.mmfr2,
            // ZFR0, SMFR0, the AArch32 registers and everything reserved.
            _ => 0,
        })
    }
}

impl Default for GuestIdRegs {
    fn default() -> Self {
        Self::baseline(DEFAULT_IPA_BITS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QEMU `-cpu max`-like host: SVE, SME, MTE, AMU, MPAM, RAS, PAuth, MOPS, NV,
    /// PMUv3 and SPE all present, 48-bit PA.
    fn rich_host() -> IdRegs {
        IdRegs {
            midr: 0x000f_0510,
            pfr0: 0x1101_1011_1111_2222 | (1 << 44) | (1 << 40),
            pfr1: 0x0000_0000_0102_1221,
            isar0: 0x1221_1111_2111_2120,
            isar1: 0x0011_1112_1121_1111,
            isar2: 0x0000_0000_0011_1111,
            mmfr0: 0x1000_0000_0010_1125 | (1 << 56),
            mmfr1: 0x0000_0111_1012_2122,
            mmfr2: 0x1221_0011_1101_1011,
            dfr0: 0x0000_0001_f210_5609,
            ..IdRegs::default()
        }
    }

    fn support(ptrauth: bool, ipa_bits: u8) -> HypSupport {
        HypSupport { ptrauth, ipa_bits }
    }

    #[test]
    fn hidden_features_read_zero() {
        let host = rich_host();
        assert_ne!(PFR0_SVE.raw(host.pfr0), 0, "the fixture has SVE");
        let g = GuestIdRegs::from_host(&host, support(true, 40));
        let pfr0 = g.read(enc::PFR0).unwrap();
        for f in [PFR0_SVE, PFR0_SEL2, PFR0_MPAM, PFR0_AMU] {
            assert_eq!(f.raw(pfr0), 0, "{}", f.name);
        }
        assert_eq!((PFR0_EL0.raw(pfr0), PFR0_EL1.raw(pfr0)), (1, 1));
        for f in [
            PFR0_EL2,
            PFR0_FP,
            PFR0_ADVSIMD,
            PFR0_GIC,
            PFR0_RAS,
            PFR0_CSV3,
        ] {
            assert_eq!(f.raw(pfr0), f.raw(host.pfr0), "{} kept", f.name);
        }
        let pfr1 = g.read(enc::PFR1).unwrap();
        for f in [PFR1_SME, PFR1_MTE, PFR1_MPAM_FRAC] {
            assert_eq!(f.raw(pfr1), 0, "{}", f.name);
        }
        assert_eq!(PFR1_BT.raw(pfr1), 1);
        assert_eq!(PFR1_SSBS.raw(pfr1), 2);
        assert_eq!(g.read(enc::ZFR0), Some(0));
        assert_eq!(g.read(enc::SMFR0), Some(0));
        let isar2 = g.read(enc::ISAR2).unwrap();
        assert_eq!(ISAR2_MOPS.raw(isar2), 0);
        assert_eq!(ISAR2_WFXT.raw(isar2), ISAR2_WFXT.raw(host.isar2));
        assert_eq!(MMFR0_FGT.raw(g.read(enc::MMFR0).unwrap()), 0);
        assert_eq!(MMFR1_VH.raw(g.read(enc::MMFR1).unwrap()), 0);
        assert_eq!(MMFR2_NV.raw(g.read(enc::MMFR2).unwrap()), 0);
        assert_eq!(
            MMFR2_CNP.raw(g.read(enc::MMFR2).unwrap()),
            MMFR2_CNP.raw(host.mmfr2)
        );
        assert_eq!(g.read(enc::ISAR0), Some(host.isar0 & g.regs().isar0));
        assert_eq!(
            ISAR0_ATOMIC.raw(g.read(enc::ISAR0).unwrap()),
            ISAR0_ATOMIC.raw(host.isar0)
        );
    }

    #[test]
    fn undescribed_bits_never_leak() {
        let all = IdRegs {
            pfr0: u64::MAX,
            pfr1: u64::MAX,
            isar0: u64::MAX,
            isar1: u64::MAX,
            isar2: u64::MAX,
            mmfr0: u64::MAX,
            mmfr1: u64::MAX,
            mmfr2: u64::MAX,
            dfr0: u64::MAX,
            ..IdRegs::default()
        };
        let g = GuestIdRegs::from_host(&all, support(true, 52));
        // PFR1 bits above SME (NMI, GCS, CSV2_frac...) are not described: zero.
        assert_eq!(g.read(enc::PFR1).unwrap() >> 28, 0);
        // PFR1.SME (bits 24..28) hidden too; only BT, SSBS, RAS_frac survive.
        assert_eq!(g.read(enc::PFR1), Some(0xf0ff));
        // DFR0: TraceVer (7:4), TraceFilt (43:40) and PMUVer/PMSVer are zero.
        let dfr0 = g.read(enc::DFR0).unwrap();
        assert_eq!(dfr0 & 0xf0, 0);
        assert_eq!((dfr0 >> 40) & 0xf, 0);
        assert_eq!(DFR0_PMUVER.raw(dfr0), 0);
        assert_eq!(DFR0_PMSVER.raw(dfr0), 0);
        assert_eq!(DFR0_DEBUGVER.raw(dfr0), 6);
        assert_eq!(DFR0_BRPS.raw(dfr0), 0xf);
    }

    #[test]
    fn pointer_auth_follows_the_hyp() {
        let host = rich_host();
        let on = GuestIdRegs::from_host(&host, support(true, 40));
        let off = GuestIdRegs::from_host(&host, support(false, 40));
        let isar1 = |g: &GuestIdRegs| g.read(enc::ISAR1).unwrap();
        assert_eq!(ISAR1_APA.raw(isar1(&on)), ISAR1_APA.raw(host.isar1));
        assert_ne!(ISAR1_APA.raw(isar1(&on)), 0);
        for f in [ISAR1_APA, ISAR1_API, ISAR1_GPA, ISAR1_GPI] {
            assert_eq!(f.raw(isar1(&off)), 0, "{}", f.name);
        }
        assert_eq!(
            ISAR1_LRCPC.raw(isar1(&off)),
            ISAR1_LRCPC.raw(host.isar1),
            "other fields kept"
        );
    }

    #[test]
    fn parange_is_clamped_to_the_ipa_space() {
        let host = rich_host();
        let pa = |bits| {
            MMFR0_PARANGE.raw(
                GuestIdRegs::from_host(&host, support(true, bits))
                    .view
                    .mmfr0,
            )
        };
        assert_eq!(MMFR0_PARANGE.raw(host.mmfr0), 5, "48-bit host");
        assert_eq!(pa(40), 2);
        assert_eq!(pa(44), 4);
        assert_eq!(pa(41), 2, "round down to a size PARange can express");
        assert_eq!(pa(52), 5, "never above the host");
        assert_eq!(pa(20), 0);
    }

    #[test]
    fn id_space_and_other_encodings() {
        let g = GuestIdRegs::from_host(&rich_host(), support(true, 40));
        assert!(is_id_space(0xc008), "ID_PFR0_EL1 (CRm 1)");
        assert!(is_id_space(0xc03f), "reserved CRm 7 op2 7");
        assert!(!is_id_space(0xc000), "MIDR_EL1 (CRm 0)");
        assert!(!is_id_space(0xc005), "MPIDR_EL1");
        assert!(!is_id_space(0xc040), "CRm 8");
        assert!(!is_id_space(0xc820), "op1 1");
        assert!(!is_id_space(0x8020), "op0 2");
        assert_eq!(g.read(0xc000), None);
        // AArch32 and reserved encodings read as zero.
        for e in [
            0xc008, 0xc010, 0xc018, 0xc023, 0xc029, 0xc02c, 0xc033, 0xc03b, 0xc03f,
        ] {
            assert_eq!(g.read(e), Some(0), "{e:#x}");
        }
    }

    #[test]
    fn baseline_is_a_plain_v8_cpu() {
        let g = GuestIdRegs::default();
        let pfr0 = g.read(enc::PFR0).unwrap();
        assert_eq!(
            pfr0, 0x0100_0111,
            "EL0-2 AArch64, no EL3, FP/AdvSIMD, GICv3 sysregs"
        );
        assert_eq!(PFR0_SVE.raw(pfr0), 0);
        assert_eq!(MMFR0_PARANGE.raw(g.read(enc::MMFR0).unwrap()), 2);
        assert_eq!(MMFR0_TGRAN4.raw(g.read(enc::MMFR0).unwrap()), 0);
        let dfr0 = g.read(enc::DFR0).unwrap();
        assert_eq!(dfr0, 0xf0_0010_1006);
        assert_eq!(g.read(enc::ISAR0), Some(0));
    }
}
