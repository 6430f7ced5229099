//! Address-translation probes (`AT S1E1R/W` + PAR_EL1): whether this CPU's current
//! tables let EL1 read or write a VA, without touching it. Used to prove that kernel
//! text and its linear alias are not writable and that the patching alias is gone.

/// Whether an EL1 access of the given kind to `va` would translate without a fault.
fn probe(va: u64, write: bool) -> bool {
    let par: u64;
    // SAFETY: AT only performs a translation-table walk and writes PAR_EL1, which
    // nothing else in the host relies on; the ISB makes the result visible to the MRS.
    unsafe {
        if write {
            core::arch::asm!("at s1e1w, {va}", "isb", "mrs {par}, par_el1", va = in(reg) va, par = out(reg) par, options(nostack, preserves_flags));
        } else {
            core::arch::asm!("at s1e1r, {va}", "isb", "mrs {par}, par_el1", va = in(reg) va, par = out(reg) par, options(nostack, preserves_flags));
        }
    }
    // PAR_EL1.F (bit 0) = 1: the translation faulted.
    par & 1 == 0
}

/// Whether EL1 can read `va`.
pub fn readable(va: u64) -> bool {
    probe(va, false)
}

/// Whether EL1 can write `va`.
pub fn writable(va: u64) -> bool {
    probe(va, true)
}
