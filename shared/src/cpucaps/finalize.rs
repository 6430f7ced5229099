//! Finalisation, as a type-state in Linux's order (LINUX-FACTS §4.2–§4.5):
//!
//! 1. [`BootCpu::new`]: boot CPU's registers (overrides settled and applied), BOOT and
//!    LOCAL caps detected; [`BootCpu::boot_mask`] is the boot-pass mask.
//! 2. [`BootCpu::start_secondaries`] → [`Bringup`]: each secondary is verified against
//!    the BOOT-scope caps ([`Bringup::add_secondary`]); an accepted CPU ORs in its LOCAL
//!    caps and merges its registers, a rejected one changes nothing.
//! 3. [`Bringup::finalize`] → [`FinalCaps`]: SYSTEM caps from the sanitised registers.
//!    `FinalCaps` can only be made here (its fields are private and it is not `Clone`).
//! 4. [`FinalCaps::check_late_cpu`]: every conflict of a CPU brought up later.
//!
//! ```
//! use shared::cpucaps::{BootArgs, BootCpu, Cap, IdRegs, Platform};
//! let cpu = IdRegs { midr: 0x410f_d083, pfr0: 0x0100_0222, ..IdRegs::default() };
//! let mut args = BootArgs::parse("console=ttyAMA0 kvm-arm.mode=protected");
//! let boot = BootCpu::new(&cpu, &mut args, Platform::NVHE_QEMU);
//! // ... apply the boot pass with boot.boot_mask() ...
//! let mut smp = boot.start_secondaries();
//! smp.add_secondary(&cpu).expect("same model");
//! let caps = smp.finalize();
//! assert!(caps.has(Cap::KvmProtectedMode) && caps.has(Cap::SpectreV3a));
//! assert!(caps.check_late_cpu(&cpu).is_ok());
//! ```
//!
//! ```compile_fail,E0451
//! // Outside this module a FinalCaps cannot be built by hand.
//! let f = shared::cpucaps::FinalCaps { caps: shared::cpucaps::CapSet::EMPTY };
//! ```

use super::overrides::{BootArgs, FieldOverrides};
use super::regs::{IdRegs, Sanitiser};
use super::table::{
    caps_with_scope, detect_in, matches, spectre_bhb_loop_k, Ctx, Eval, Platform, Scope, Scopes,
    SoftwareInputs, CAP_TABLE,
};
use super::{Cap, CapSet, NCAPS};
use core::fmt;

/// The boot CPU, detected; the boot pass may be applied with [`BootCpu::boot_mask`].
#[derive(Debug)]
pub struct BootCpu {
    regs: IdRegs,
    caps: CapSet,
    boot_mask: CapSet,
    sanitiser: Sanitiser,
    overrides: FieldOverrides,
    sw: SoftwareInputs,
    bhb_k: u8,
}

impl BootCpu {
    /// Detects the boot CPU's BOOT and LOCAL caps from its raw registers. Unsafe
    /// overrides in `args` are dropped (with diagnostics) against this CPU first; the
    /// rest are applied to it and, later, to every other CPU.
    pub fn new(raw: &IdRegs, args: &mut BootArgs<'_>, platform: Platform) -> BootCpu {
        args.settle(raw);
        let overrides = args.field_overrides();
        let regs = overrides.apply(raw);
        let sw = SoftwareInputs {
            kvm_mode: args.kvm_mode(),
            platform,
        };
        let ctx = Ctx {
            cpu: &regs,
            reference: &regs,
            sw: &sw,
        };
        let caps = detect_in(&ctx, Scopes::BOOT_CPU | Scopes::LOCAL_CPU, |s| match s {
            Scope::BootCpu => Eval::Boot,
            _ => Eval::Local,
        });
        let boot_mask = caps.intersection(caps_with_scope(Scopes::BOOT_CPU));
        let bhb_k = if caps.has(Cap::SpectreBhb) {
            spectre_bhb_loop_k(regs.midr)
        } else {
            0
        };
        BootCpu {
            regs,
            caps,
            boot_mask,
            sanitiser: Sanitiser::new(&regs),
            overrides,
            sw,
            bhb_k,
        }
    }

    /// The boot CPU's registers after overrides.
    pub const fn regs(&self) -> &IdRegs {
        &self.regs
    }

    /// Caps detected on the boot CPU (BOOT and LOCAL scope).
    pub const fn caps(&self) -> CapSet {
        self.caps
    }

    /// The boot-pass mask: the detected caps of BOOT scope.
    pub const fn boot_mask(&self) -> CapSet {
        self.boot_mask
    }

    /// The software inputs detection used.
    pub const fn software(&self) -> &SoftwareInputs {
        &self.sw
    }

    /// Moves on to secondary bring-up (after the boot pass has been applied).
    pub fn start_secondaries(self) -> Bringup {
        Bringup {
            boot: self,
            cpus: 1,
        }
    }
}

/// Secondaries being brought up; not finalised yet.
#[derive(Debug)]
pub struct Bringup {
    boot: BootCpu,
    cpus: u32,
}

impl Bringup {
    /// Verifies one secondary against the BOOT-scope caps. On success its LOCAL caps are
    /// added, its registers merged, and its LOCAL caps returned; on conflict the CPU must
    /// be parked (or the system stopped, see [`ConflictList::is_fatal`]) and nothing
    /// changes.
    pub fn add_secondary(&mut self, raw: &IdRegs) -> Result<CapSet, ConflictList> {
        let b = &mut self.boot;
        let regs = b.overrides.apply(raw);
        let ctx = Ctx {
            cpu: &regs,
            reference: b.sanitiser.regs(),
            sw: &b.sw,
        };
        let conflicts = verify(&ctx, b.caps, Scopes::BOOT_CPU);
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        let local = detect_in(&ctx, Scopes::LOCAL_CPU, |_| Eval::Local);
        b.caps = b.caps.union(local);
        if local.has(Cap::SpectreBhb) {
            b.bhb_k = b.bhb_k.max(spectre_bhb_loop_k(regs.midr));
        }
        b.sanitiser.add(&regs);
        self.cpus += 1;
        Ok(local)
    }

    /// Caps so far (boot CPU's plus accepted secondaries' LOCAL caps).
    pub const fn caps(&self) -> CapSet {
        self.boot.caps
    }

    /// The boot-pass mask (unchanged since the boot CPU).
    pub const fn boot_mask(&self) -> CapSet {
        self.boot.boot_mask
    }

    /// The sanitised registers so far.
    pub const fn sanitised(&self) -> &IdRegs {
        self.boot.sanitiser.regs()
    }

    /// CPUs accepted so far, the boot CPU included.
    pub const fn cpus(&self) -> u32 {
        self.cpus
    }

    /// Detects the SYSTEM caps from the sanitised registers and freezes the result.
    pub fn finalize(self) -> FinalCaps {
        let b = self.boot;
        let sanitised = *b.sanitiser.regs();
        let ctx = Ctx {
            cpu: &sanitised,
            reference: &sanitised,
            sw: &b.sw,
        };
        let system = detect_in(&ctx, Scopes::SYSTEM, |_| Eval::System);
        FinalCaps {
            caps: b.caps.union(system),
            boot_mask: b.boot_mask,
            sanitised,
            overrides: b.overrides,
            sw: b.sw,
            bhb_k: b.bhb_k,
            cpus: self.cpus,
        }
    }
}

/// The finalised, system-wide cap set. Only [`Bringup::finalize`] makes one.
#[derive(Debug, PartialEq, Eq)]
pub struct FinalCaps {
    caps: CapSet,
    boot_mask: CapSet,
    sanitised: IdRegs,
    overrides: FieldOverrides,
    sw: SoftwareInputs,
    bhb_k: u8,
    cpus: u32,
}

impl FinalCaps {
    /// The final cap set (what `cpucaps: final=` prints).
    pub const fn caps(&self) -> CapSet {
        self.caps
    }

    /// Whether the system has `cap`.
    pub const fn has(&self, cap: Cap) -> bool {
        self.caps.has(cap)
    }

    /// The sanitised registers.
    pub const fn sanitised(&self) -> &IdRegs {
        &self.sanitised
    }

    /// The sanitised CTR_EL0 (effective IDC included), as patched into the hyp.
    pub const fn sanitised_ctr_el0(&self) -> u64 {
        self.sanitised.ctr
    }

    /// The boot-pass mask.
    pub const fn boot_mask(&self) -> CapSet {
        self.boot_mask
    }

    /// The system-pass mask: every cap not in the boot mask.
    pub const fn system_mask(&self) -> CapSet {
        self.boot_mask.complement()
    }

    /// The largest Spectre-BHB loop count over the CPUs that need the loop (0 if none).
    pub const fn spectre_bhb_loop_k(&self) -> u8 {
        self.bhb_k
    }

    /// The software inputs detection used.
    pub const fn software(&self) -> &SoftwareInputs {
        &self.sw
    }

    /// The field overrides applied to every CPU.
    pub const fn overrides(&self) -> &FieldOverrides {
        &self.overrides
    }

    /// CPUs that took part in finalisation.
    pub const fn cpus(&self) -> u32 {
        self.cpus
    }

    /// Checks a CPU brought up after finalisation against every cap; lists each conflict.
    pub fn check_late_cpu(&self, raw: &IdRegs) -> Result<(), ConflictList> {
        let regs = self.overrides.apply(raw);
        let ctx = Ctx {
            cpu: &regs,
            reference: &self.sanitised,
            sw: &self.sw,
        };
        let conflicts = verify(&ctx, self.caps, Scopes::ALL);
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(conflicts)
        }
    }
}

/// Verifies one CPU against `system` for the caps of `scopes` (Linux's
/// `verify_local_cpu_caps`, but collecting every conflict instead of stopping at one).
fn verify(ctx: &Ctx<'_>, system: CapSet, scopes: Scopes) -> ConflictList {
    let mut out = ConflictList::EMPTY;
    for info in CAP_TABLE.iter() {
        let scope = info.ty.scope();
        if !scopes.contains(scope) {
            continue;
        }
        let cpu_has = matches(info, ctx, Eval::Local);
        let system_has = system.has(info.cap);
        let kind = if system_has && !cpu_has && !info.ty.late_cpu_optional() {
            ConflictKind::MissingRequired
        } else if !system_has && cpu_has && !info.ty.late_cpu_permitted() {
            ConflictKind::NotPermitted
        } else {
            continue;
        };
        let kind = if scope == Scope::BootCpu {
            ConflictKind::BootCapMismatch {
                system_has,
                cpu_has,
            }
        } else {
            kind
        };
        out.push(info.cap, kind);
    }
    out
}

/// Why a CPU conflicts on one cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictKind {
    /// The system has the cap, the CPU lacks it, and late CPUs may not lack it.
    MissingRequired,
    /// The CPU has a cap the system lacks, and late CPUs may not bring it.
    NotPermitted,
    /// A boot-CPU cap that this CPU does not match the way the boot CPU did.
    BootCapMismatch {
        /// Whether the boot CPU (the system) has the cap.
        system_has: bool,
        /// Whether this CPU matches it.
        cpu_has: bool,
    },
}

/// One conflicting cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Conflict {
    /// The cap.
    pub cap: Cap,
    /// Why.
    pub kind: ConflictKind,
    /// The cap is panic-on-conflict: the system must stop, not just park the CPU.
    pub fatal: bool,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = self.cap.name();
        match self.kind {
            ConflictKind::MissingRequired => write!(
                f,
                "{name}: the system has it, this CPU lacks it, and it is not optional"
            )?,
            ConflictKind::NotPermitted => write!(
                f,
                "{name}: this CPU has it, the system does not, and it is not permitted"
            )?,
            ConflictKind::BootCapMismatch {
                system_has,
                cpu_has,
            } => write!(
                f,
                "{name}: boot CPU cap mismatch (boot CPU {}, this CPU {})",
                if system_has { "has it" } else { "lacks it" },
                if cpu_has {
                    "has it"
                } else {
                    "does not match it"
                }
            )?,
        }
        if self.fatal {
            f.write_str(" [fatal]")?;
        }
        Ok(())
    }
}

/// Every conflict of one CPU, in cap order: the conflicting caps plus one reason code per
/// cap (kept small so it can be returned by value without a heap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictList {
    caps: CapSet,
    codes: [u8; NCAPS],
}

// Reason codes; a boot-cap mismatch is always "has vs lacks" in one direction.
const MISSING: u8 = 1;
const NOT_PERMITTED: u8 = 2;
const BOOT_SYSTEM_ONLY: u8 = 3;
const BOOT_CPU_ONLY: u8 = 4;

impl ConflictList {
    const EMPTY: ConflictList = ConflictList {
        caps: CapSet::EMPTY,
        codes: [0; NCAPS],
    };

    fn push(&mut self, cap: Cap, kind: ConflictKind) {
        let code = match kind {
            ConflictKind::MissingRequired => MISSING,
            ConflictKind::NotPermitted => NOT_PERMITTED,
            ConflictKind::BootCapMismatch {
                system_has: true, ..
            } => BOOT_SYSTEM_ONLY,
            ConflictKind::BootCapMismatch {
                system_has: false, ..
            } => BOOT_CPU_ONLY,
        };
        self.caps.insert(cap);
        self.codes[cap as usize] = code;
    }

    fn decode(&self, cap: Cap) -> Option<Conflict> {
        let kind = match self.codes[cap as usize] {
            MISSING => ConflictKind::MissingRequired,
            NOT_PERMITTED => ConflictKind::NotPermitted,
            BOOT_SYSTEM_ONLY => ConflictKind::BootCapMismatch {
                system_has: true,
                cpu_has: false,
            },
            BOOT_CPU_ONLY => ConflictKind::BootCapMismatch {
                system_has: false,
                cpu_has: true,
            },
            _ => return None,
        };
        Some(Conflict {
            cap,
            kind,
            fatal: cap.info().ty.panic_on_conflict(),
        })
    }

    /// The conflicts, in cap order.
    pub fn iter(&self) -> impl Iterator<Item = Conflict> + '_ {
        self.caps.iter().filter_map(|c| self.decode(c))
    }

    /// Number of conflicting caps.
    pub fn len(&self) -> usize {
        self.caps.len()
    }

    /// Whether there is none.
    pub const fn is_empty(&self) -> bool {
        self.caps.is_empty()
    }

    /// The conflicting caps.
    pub const fn caps(&self) -> CapSet {
        self.caps
    }

    /// The conflict on `cap`, if any.
    pub fn reason(&self, cap: Cap) -> Option<Conflict> {
        self.decode(cap)
    }

    /// Whether any conflict is fatal (the system must stop rather than park the CPU).
    pub fn is_fatal(&self) -> bool {
        self.iter().any(|c| c.fatal)
    }
}

impl fmt::Display for ConflictList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} conflicting cap(s)", self.len())?;
        for (i, c) in self.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            write!(f, "{c}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpucaps::regs::fields;

    const A53: IdRegs = IdRegs {
        midr: 0x410f_d034,
        revidr: 0,
        ctr: 0x8444_8004,
        clidr: 0x0a20_0023,
        pfr0: 0x0100_0222,
        pfr1: 0,
        isar0: 0x11120,
        isar1: 0,
        isar2: 0,
        mmfr0: 0x1122,
        mmfr1: 0,
        mmfr2: 0,
        dfr0: 0x1030_5106,
    };

    const MAX: IdRegs = IdRegs {
        midr: 0x000f_0510,
        revidr: 0,
        ctr: 0x8444_c004,
        clidr: 0x0200_0023,
        pfr0: 0x1201_0011_2111_0222,
        pfr1: 0x0100_0021,
        isar0: 0x1221_1111_1021_2120,
        isar1: 0x0011_1111_0121_1012,
        isar2: 0,
        mmfr0: 0x0000_0323_1020_1126,
        mmfr1: 0x0000_0110_1021_1122,
        mmfr2: 0x1021_0110_1001_1011,
        dfr0: 0x1030_5609,
    };

    fn boot(regs: &IdRegs, cmdline: &str) -> BootCpu {
        let mut args = BootArgs::parse(cmdline);
        BootCpu::new(regs, &mut args, Platform::NVHE_QEMU)
    }

    #[test]
    fn boot_mask_is_detected_boot_scope_caps() {
        let b = boot(&MAX, "");
        assert_eq!(
            b.boot_mask(),
            CapSet::of(&[
                Cap::AlwaysBoot,
                Cap::Bti,
                Cap::HasAddressAuth,
                Cap::HasAddressAuthArchQarma5,
                Cap::HasSysregGicCpuif,
            ])
        );
        // LOCAL caps are detected on the boot CPU but applied in the system pass.
        assert!(b.caps().has(Cap::SpectreV4) && !b.boot_mask().has(Cap::SpectreV4));
        // SYSTEM caps wait for finalisation.
        assert!(!b.caps().has(Cap::HasLseAtomics));
        let f = b.start_secondaries().finalize();
        assert!(f.has(Cap::HasLseAtomics) && f.has(Cap::AlwaysSystem));
        assert_eq!(f.system_mask(), f.boot_mask().complement());
        assert!(f.system_mask().has(Cap::AlwaysSystem) && !f.system_mask().has(Cap::AlwaysBoot));
    }

    #[test]
    fn rejected_secondary_changes_nothing() {
        let mut s = boot(&MAX, "").start_secondaries();
        let before = (*s.sanitised(), s.caps(), s.cpus());
        let err = s.add_secondary(&A53).unwrap_err();
        assert_eq!(
            err.caps(),
            CapSet::of(&[Cap::Bti, Cap::HasAddressAuth, Cap::HasAddressAuthArchQarma5])
        );
        assert!(err.is_fatal(), "BTI is a strict boot cap");
        assert!(!err.reason(Cap::HasAddressAuth).unwrap().fatal);
        assert_eq!((*s.sanitised(), s.caps(), s.cpus()), before);
        let text = err.to_string();
        assert!(
            text.starts_with("3 conflicting cap(s): BTI: boot CPU cap mismatch"),
            "{text}"
        );
    }

    #[test]
    fn pauth_level_must_match_the_boot_cpu() {
        let mut s = boot(&MAX, "").start_secondaries();
        let apa2 = MAX.with_field_raw(&fields::ISAR1_APA, 2);
        let err = s.add_secondary(&apa2).unwrap_err();
        assert_eq!(
            err.caps(),
            CapSet::of(&[Cap::HasAddressAuth, Cap::HasAddressAuthArchQarma5])
        );
        assert_eq!(
            err.reason(Cap::HasAddressAuthArchQarma5).unwrap().kind,
            ConflictKind::BootCapMismatch {
                system_has: true,
                cpu_has: false
            }
        );
        assert!(s.add_secondary(&MAX).is_ok());
        assert_eq!(s.cpus(), 2);
    }

    #[test]
    fn overrides_apply_to_secondaries_and_late_cpus() {
        let mut args = BootArgs::parse("arm64.nolse arm64.nobti");
        let b = BootCpu::new(&MAX, &mut args, Platform::NVHE_QEMU);
        assert_eq!(b.regs().field(&fields::ISAR0_ATOMIC), 0);
        assert!(!b.caps().has(Cap::Bti));
        let mut s = b.start_secondaries();
        // Without the override applied, the secondary's BTI would be a strict conflict.
        assert!(s.add_secondary(&MAX).is_ok());
        let f = s.finalize();
        assert!(!f.has(Cap::HasLseAtomics) && !f.has(Cap::Bti));
        assert_eq!(f.sanitised().field(&fields::ISAR0_ATOMIC), 0);
        assert_eq!(f.check_late_cpu(&MAX), Ok(()));
        // The same late CPU, judged without overrides, would bring a strict boot cap.
        let plain = boot(&MAX, "arm64.nobti").start_secondaries().finalize();
        assert_eq!(plain.check_late_cpu(&MAX), Ok(()));
        let no_override = FinalCaps {
            overrides: FieldOverrides::NONE,
            ..plain
        };
        let err = no_override.check_late_cpu(&MAX).unwrap_err();
        assert_eq!(err.caps(), CapSet::of(&[Cap::Bti]));
    }
}
