//! Reading this CPU's ID registers into a [`shared::cpucaps::IdRegs`] snapshot, the only
//! input cap detection takes from the hardware.
//!
//! The snapshot is what the CPU reports, with one correction Linux also makes: the GIC
//! field of ID_AA64PFR0_EL1 says whether a GICv3 system-register CPU interface exists,
//! but it is usable only if ICC_SRE_EL1.SRE can be set (EL2 may keep it clear). The bit is
//! set here and read back; if it does not stick, the field is cleared in the snapshot so
//! HAS_SYSREG_GIC_CPUIF is not detected.

use shared::cpucaps::{fields, IdRegs};

/// ICC_SRE_EL1.SRE: system-register interface enable.
const ICC_SRE_EL1_SRE: u64 = 1 << 0;

macro_rules! mrs {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading an ID register at EL1 has no side effects; none of them is
        // trapped by the EL2 set-up of `arch::head`.
        unsafe {
            core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags));
        }
        v
    }};
}

/// This CPU's ID registers, as read (no overrides applied), with the GIC correction
/// described in the module documentation.
pub fn read_this_cpu() -> IdRegs {
    let mut regs = IdRegs {
        midr: mrs!("midr_el1"),
        revidr: mrs!("revidr_el1"),
        ctr: mrs!("ctr_el0"),
        clidr: mrs!("clidr_el1"),
        pfr0: mrs!("id_aa64pfr0_el1"),
        pfr1: mrs!("id_aa64pfr1_el1"),
        isar0: mrs!("id_aa64isar0_el1"),
        isar1: mrs!("id_aa64isar1_el1"),
        // ID_AA64ISAR2_EL1 by its encoding: older assemblers lack the name.
        isar2: mrs!("s3_0_c0_c6_2"),
        mmfr0: mrs!("id_aa64mmfr0_el1"),
        mmfr1: mrs!("id_aa64mmfr1_el1"),
        mmfr2: mrs!("id_aa64mmfr2_el1"),
        dfr0: mrs!("id_aa64dfr0_el1"),
    };
    if regs.field_raw(&fields::PFR0_GIC) != 0 && !gic_sre_sticks() {
        regs.set_field_raw(&fields::PFR0_GIC, 0);
    }
    regs
}

/// Sets ICC_SRE_EL1.SRE and reports whether it reads back as set. Only called when
/// ID_AA64PFR0_EL1.GIC says the register exists.
fn gic_sre_sticks() -> bool {
    let sre: u64;
    // SAFETY: ICC_SRE_EL1 exists (the caller checked PFR0.GIC); setting SRE only selects
    // the system-register interface of the GIC CPU interface, which the host does not use
    // through memory-mapped registers. Interrupts are masked at this point.
    unsafe {
        core::arch::asm!(
            "mrs {v}, s3_0_c12_c12_5",      // ICC_SRE_EL1
            "orr {v}, {v}, #{sre}",
            "msr s3_0_c12_c12_5, {v}",
            "isb",
            "mrs {v}, s3_0_c12_c12_5",
            v = out(reg) sre,
            sre = const ICC_SRE_EL1_SRE,
            options(nomem, nostack, preserves_flags),
        );
    }
    sre & ICC_SRE_EL1_SRE != 0
}
