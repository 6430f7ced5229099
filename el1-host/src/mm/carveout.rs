//! The hyp carve-out: one physically contiguous, 2 MiB-aligned range of RAM taken before
//! the rest of RAM becomes heap, so the heap never hands any of it out (Linux reserves
//! its hyp memory from memblock at early boot for the same reason, LINUX-FACTS §6.4).

use el1_host::layout::{free_ranges, PhysRange};

/// Alignment of the carve-out: a 2 MiB block, so the host's and the hyp's mappings around
/// it can stay block mappings.
pub const CARVEOUT_ALIGN: u64 = 2 * 1024 * 1024;

/// Picks `size` bytes (rounded up to [`CARVEOUT_ALIGN`]) of RAM that none of `reserved`
/// touches, as high as possible (away from the image and the DTB at the bottom of RAM).
/// `None` if no free range is large enough.
pub fn choose(ram: &[PhysRange], reserved: &[PhysRange], size: u64) -> Option<PhysRange> {
    let size = size.checked_next_multiple_of(CARVEOUT_ALIGN)?;
    free_ranges(ram, reserved).into_iter().rev().find_map(|r| {
        let start = r.end.checked_sub(size)? & !(CARVEOUT_ALIGN - 1);
        (start >= r.start).then_some(start..start + size)
    })
}
