//! The per-CPU block. The image carries one template ([`HYP_PERCPU`], in `.hyp.percpu`);
//! the host gives every CPU its own copy and sets that CPU's TPIDR_EL2 to the distance
//! from the template to the copy (Linux's per-CPU offsets), so
//! `&HYP_PERCPU + TPIDR_EL2` is this CPU's block. Hyp-owned state only: counters the
//! selftests read, never capability state.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicU64, Ordering};
use shared::vcpu::FpRegs;

/// One CPU's counters. The hardened vector stubs increment `hardened_entries` from
/// assembly at offset 0.
#[repr(C)]
pub struct PerCpu {
    /// Exceptions that came in through the hardened (Spectre-v3a) vector table.
    pub hardened_entries: AtomicU64,
    /// Host calls this CPU handled.
    pub host_calls: AtomicU64,
    /// Deferred SErrors found in DISR_EL1 (RAS) on entry.
    pub deferred_serrors: AtomicU64,
    /// Host traps other than HVC (an SMC, an SME instruction under CPTR_EL2.TSM, ...)
    /// that the hyp refused by skipping the instruction.
    pub host_traps_refused: AtomicU64,
    /// The host's FP/SIMD registers while this CPU runs a guest (written and read only
    /// by the world-switch assembly on this CPU).
    pub host_fp: UnsafeCell<FpRegs>,
}

// SAFETY: the counters are atomics; `host_fp` is touched only by the CPU that owns the
// block (its world switch), never shared.
unsafe impl Sync for PerCpu {}

/// Offset of [`PerCpu::hardened_entries`], used by the vector assembly.
pub const HARDENED_ENTRIES_OFFSET: usize = core::mem::offset_of!(PerCpu, hardened_entries);

/// The template block. Never used directly (the template is not any CPU's block):
/// always through [`this_cpu`].
#[no_mangle]
#[link_section = ".hyp.percpu"]
pub static HYP_PERCPU: PerCpu = PerCpu {
    hardened_entries: AtomicU64::new(0),
    host_calls: AtomicU64::new(0),
    deferred_serrors: AtomicU64::new(0),
    host_traps_refused: AtomicU64::new(0),
    host_fp: UnsafeCell::new(FpRegs {
        v: [0; 32],
        fpsr: 0,
        fpcr: 0,
    }),
};

/// This CPU's block.
pub fn this_cpu() -> &'static PerCpu {
    let off = crate::sysreg::tpidr_el2();
    let addr = (&HYP_PERCPU as *const PerCpu as u64).wrapping_add(off);
    // SAFETY: the host set TPIDR_EL2 so that `addr` is this CPU's copy of the template,
    // mapped read-write in the hyp's stage 1, as long-lived as the hyp; only this CPU
    // writes it, through atomics.
    unsafe { &*(addr as *const PerCpu) }
}

/// Adds one to a counter (this CPU only, so relaxed ordering is enough).
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
