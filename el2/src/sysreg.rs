//! The few EL2 system-register accesses and barriers the Rust side of the hyp needs.
//! Everything else (vectors, init) is assembly in its own file.

use core::arch::asm;

/// ESR_EL2: syndrome of the exception being handled.
pub fn esr_el2() -> u64 {
    let v: u64;
    // SAFETY: reading ESR_EL2 at EL2 has no side effects.
    unsafe { asm!("mrs {}, esr_el2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// MDCR_EL2: the hyp's debug/PMU trap configuration.
pub fn mdcr_el2() -> u64 {
    let v: u64;
    // SAFETY: reading MDCR_EL2 at EL2 has no side effects.
    unsafe { asm!("mrs {}, mdcr_el2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Invalidates all EL1&0 stage-1 and stage-2 TLB entries (all VMIDs) and the instruction
/// caches in the inner-shareable domain: what the host asks for when VMIDs roll over.
pub fn flush_all_guest_contexts() {
    // SAFETY: TLB and I-cache invalidation only drop cached translations/instructions;
    // the barriers order them before the host continues.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi alle1is",
            "ic ialluis",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Waits for an event (low-power idle in a stop loop).
pub fn wfe() {
    // SAFETY: WFE only pauses the CPU.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}
