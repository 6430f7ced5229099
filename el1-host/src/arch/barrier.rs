//! Barriers and event instructions: the plain ones (`isb`, `dsb`, `sev`), which are never
//! patch sites and so may be used anywhere (the patcher and the stop-machine rendezvous
//! included), and the speculation barrier [`spec_bar`], which is an alternative
//! (`dsb nsh; isb` until the system pass finds HAS_SB on every CPU, then `sb; nop`).

use shared::alternative;

/// Instruction synchronisation barrier.
#[inline(always)]
pub fn isb() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) }
}

/// Data synchronisation barrier, inner shareable, all accesses.
#[inline(always)]
pub fn dsb_ish() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) }
}

/// Data synchronisation barrier, inner shareable, stores only: a store before it is
/// visible to the other CPUs before anything after it (an `sev` in particular).
#[inline(always)]
pub fn dsb_ishst() {
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("dsb ishst", options(nostack, preserves_flags)) }
}

/// Sends an event to every CPU (wakes CPUs waiting in `wfe`).
#[inline(always)]
pub fn sev() {
    // SAFETY: SEV only sets the event register of every PE.
    unsafe { core::arch::asm!("sev", options(nomem, nostack, preserves_flags)) }
}

/// Speculation barrier (`shared::alternative::speculation_barrier`, a HAS_SB site).
#[inline(always)]
pub fn spec_bar() {
    alternative::speculation_barrier()
}

/// `Some(index)` if `index < len`, with a speculation barrier on the in-bounds path so
/// that an out-of-range index cannot be used speculatively to reach past an array (the
/// role of Linux's `array_index_nospec`). For indices that come from hardware (MPIDR), the
/// device tree or another CPU.
///
/// Out of line on purpose: its HAS_SB site then lives here once, not in every caller
/// (some callers are in the no-patch section, where no site may be).
#[inline(never)]
pub fn index_nospec(index: usize, len: usize) -> Option<usize> {
    if index < len {
        spec_bar();
        Some(index)
    } else {
        None
    }
}
