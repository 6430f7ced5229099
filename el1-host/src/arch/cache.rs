//! Data-cache maintenance by VA, for data another CPU reads with its MMU (and so its
//! caches) off.

/// Smallest data-cache line size in bytes (CTR_EL0.DminLine).
fn dcache_line() -> usize {
    4 << ((super::sysreg::ctr_el0() >> 16) & 0xf)
}

/// Cleans `[start, start + len)` to the point of coherency and waits for completion.
pub fn clean_to_poc(start: usize, len: usize) {
    let line = dcache_line();
    let mut addr = start & !(line - 1);
    let end = start.saturating_add(len);
    while addr < end {
        // SAFETY: DC CVAC writes back a line that is mapped (the caller's live object); it
        // does not change memory contents.
        unsafe { core::arch::asm!("dc cvac, {}", in(reg) addr, options(nostack, preserves_flags)) };
        addr += line;
    }
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("dsb sy", options(nostack, preserves_flags)) };
}
