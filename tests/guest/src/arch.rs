//! The few system registers and barriers the guest touches, each behind a small safe
//! function (reads have no side effects at EL1; the one write installs the vectors).

use core::arch::asm;

macro_rules! read_sysreg {
    ($(#[$doc:meta])* $name:ident, $reg:literal) => {
        $(#[$doc])*
        pub fn $name() -> u64 {
            let v: u64;
            // SAFETY: reading this register at EL1 has no side effects.
            unsafe { asm!(concat!("mrs {0}, ", $reg), out(reg) v, options(nomem, nostack)) };
            v
        }
    };
}

read_sysreg!(
    /// CurrentEL (EL in bits 3:2).
    current_el_raw,
    "CurrentEL"
);
read_sysreg!(
    /// MPIDR_EL1.
    mpidr,
    "mpidr_el1"
);
read_sysreg!(
    /// SCTLR_EL1.
    sctlr,
    "sctlr_el1"
);
read_sysreg!(
    /// DAIF (D, A, I, F in bits 9:6).
    daif,
    "daif"
);
read_sysreg!(
    /// ESR_EL1.
    esr,
    "esr_el1"
);
read_sysreg!(
    /// FAR_EL1.
    far,
    "far_el1"
);
read_sysreg!(
    /// CNTFRQ_EL0: the generic timer's frequency in Hz.
    cntfrq,
    "cntfrq_el0"
);

/// The current exception level.
pub fn current_el() -> u64 {
    (current_el_raw() >> 2) & 3
}

/// The affinity fields of an MPIDR (Aff3, Aff2..Aff0), as PSCI and the DTB name a CPU.
pub const fn affinity(mpidr: u64) -> u64 {
    mpidr & 0xff_00ff_ffff
}

/// MPIDR_EL1's affinity fields.
pub fn my_affinity() -> u64 {
    affinity(mpidr())
}

/// SCTLR_EL1.M: the stage-1 MMU is on.
pub const SCTLR_M: u64 = 1 << 0;
/// All four DAIF mask bits.
pub const DAIF_ALL: u64 = 0xf << 6;

/// CNTVCT_EL0, after an ISB so earlier instructions have completed.
pub fn counter() -> u64 {
    let v: u64;
    // SAFETY: ISB and a counter read; no memory access.
    unsafe { asm!("isb", "mrs {0}, cntvct_el0", out(reg) v, options(nomem, nostack)) };
    v
}

/// Installs an exception vector table.
///
/// # Safety
/// `base` must be a 2 KiB-aligned table of valid vectors that stays in place.
pub unsafe fn set_vbar(base: u64) {
    // SAFETY: the caller guarantees the table; the ISB makes it take effect.
    unsafe { asm!("msr vbar_el1, {0}", "isb", in(reg) base, options(nostack)) };
}

/// Waits (bounded by `seconds` of counter time) until `done` holds; false on timeout.
pub fn wait_until(seconds: u64, mut done: impl FnMut() -> bool) -> bool {
    let freq = cntfrq().max(1);
    let start = counter();
    loop {
        if done() {
            return true;
        }
        if counter().wrapping_sub(start) > seconds.saturating_mul(freq) {
            return done();
        }
        core::hint::spin_loop();
    }
}

/// Stops this CPU for good (after a failed power-off).
pub fn halt() -> ! {
    loop {
        // SAFETY: waits for an event; no memory or register effects.
        unsafe { asm!("wfe", options(nomem, nostack)) };
    }
}
