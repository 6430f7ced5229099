//! Cache maintenance by VA.
//!
//! - [`clean_to_poc`]: data another CPU reads with its MMU (and so its caches) off.
//! - The plain building blocks the alternatives patcher uses inside its no-patch window
//!   ([`dc_civac_range`], [`ic_ialluis`]): no alternative sites, so they are safe to run
//!   while text is rewritten; they are `#[inline(always)]` and end up in the patcher's
//!   own section.
//! - [`sync_text`]: making code just written visible to instruction fetch, for text that
//!   is written after the system pass (the hyp image the loader copies and patches). It
//!   skips what the system's caches make unnecessary, chosen by alternatives:
//!   HAS_CACHE_IDC (no D-cache clean to PoU needed for I/D coherence) and HAS_CACHE_DIC
//!   (no I-cache invalidation needed). Both are SYSTEM caps: until the system pass the
//!   full sequence runs. Code that will run with the MMU off is cleaned to PoC whatever
//!   IDC says ([`TextTarget::MmuOff`]).

use shared::cap_likely;
use shared::cpucaps::Cap;

/// Bytes of the smallest data-cache line given a CTR_EL0 value (DminLine, bits 16..19).
pub const fn dcache_line_of(ctr: u64) -> usize {
    4 << ((ctr >> 16) & 0xf)
}

/// Smallest data-cache line size in bytes of this CPU (CTR_EL0.DminLine).
fn dcache_line() -> usize {
    dcache_line_of(super::sysreg::ctr_el0())
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

/// `DC CIVAC` (clean and invalidate to PoC) for every `line`-byte line overlapping
/// `[start, end)`, starting at the line-aligned start. No barrier: the caller issues one
/// `DSB ISH` after the last range. `line` must be a power of two.
#[inline(always)]
pub fn dc_civac_range(start: u64, end: u64, line: usize) {
    let line = line as u64;
    let mut addr = start & !(line - 1);
    while addr < end {
        // SAFETY: DC CIVAC writes back and invalidates a line of mapped memory (the
        // caller's range); memory contents do not change.
        unsafe {
            core::arch::asm!("dc civac, {}", in(reg) addr, options(nostack, preserves_flags))
        };
        addr += line;
    }
}

/// Invalidates all instruction caches to PoU, inner shareable (broadcast to every CPU).
/// No barrier: the caller follows it with `DSB ISH` and `ISB`.
#[inline(always)]
pub fn ic_ialluis() {
    // SAFETY: invalidating instruction caches only discards cached copies of memory.
    unsafe { core::arch::asm!("ic ialluis", options(nostack, preserves_flags)) }
}

/// Where code made visible by [`sync_text`] will run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextTarget {
    /// With the MMU and caches on (ordinary code): PoU is enough.
    MmuOn,
    /// With the MMU off (EL2 init, idmap code): must be cleaned to PoC.
    MmuOff,
}

/// Whether the HAS_CACHE_IDC site of [`sync_text`] has been patched in.
#[inline(always)]
pub fn idc_site() -> bool {
    cap_likely!(Cap::HasCacheIdc)
}

/// Whether the HAS_CACHE_DIC site of [`sync_text`] has been patched in.
#[inline(always)]
pub fn dic_site() -> bool {
    cap_likely!(Cap::HasCacheDic)
}

/// Makes the instructions just written to `[start, start + len)` (by VA, through this
/// mapping or an alias of the same memory) visible to instruction fetch on every CPU,
/// doing only what the system's caches need (see the module documentation). The caller
/// executes an ISB on the CPU that will run the code, if it is not this one.
#[inline(never)]
pub fn sync_text(start: usize, len: usize, target: TextTarget) {
    let ctr = super::sysreg::ctr_el0();
    let (start, end) = (start as u64, start.saturating_add(len) as u64);
    if target == TextTarget::MmuOff {
        dc_civac_range(start, end, dcache_line_of(ctr));
    } else if !idc_site() {
        let line = dcache_line_of(ctr) as u64;
        let mut addr = start & !(line - 1);
        while addr < end {
            // SAFETY: DC CVAU writes back a line of mapped memory to PoU; contents do
            // not change.
            unsafe {
                core::arch::asm!("dc cvau, {}", in(reg) addr, options(nostack, preserves_flags))
            };
            addr += line;
        }
    }
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
    if !dic_site() {
        // All of it, broadcast: the code may be fetched through another VA (the hyp's
        // own mapping), which invalidation by this VA would not reach on a VIPT I-cache.
        ic_ialluis();
        // SAFETY: a barrier has no memory-safety effect.
        unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
    }
    // SAFETY: a barrier has no memory-safety effect.
    unsafe { core::arch::asm!("isb", options(nostack, preserves_flags)) };
}
