//! The kernel heap: a buddy allocator that starts on a static block in bss (enough for the
//! page tables and boot data, usable before the linear map exists) and later grows by the
//! free RAM, reached through the linear map.

use buddy_system_allocator::LockedHeap;

/// Bytes of the static first block.
const STATIC_HEAP_SIZE: usize = 2 * 1024 * 1024;

#[repr(C, align(4096))]
struct StaticHeap([u8; STATIC_HEAP_SIZE]);

static mut STATIC_HEAP: StaticHeap = StaticHeap([0; STATIC_HEAP_SIZE]);

#[global_allocator]
static HEAP: LockedHeap<32> = LockedHeap::empty();

/// Hands the static block to the allocator. Call once, first thing on the boot CPU.
pub fn init() {
    // SAFETY: called once before any allocation; STATIC_HEAP is used by nothing else, so
    // the allocator becomes its only owner.
    unsafe {
        let start = core::ptr::addr_of_mut!(STATIC_HEAP) as usize;
        HEAP.lock().init(start, STATIC_HEAP_SIZE);
    }
}

/// Adds `[start, end)` (VAs) to the heap.
///
/// # Safety
///
/// The range must be mapped read-write, unused by anything else, for the rest of the
/// kernel's life.
pub unsafe fn add(start: usize, end: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { HEAP.lock().add_to_heap(start, end) }
}

/// Total bytes the allocator manages.
pub fn total_bytes() -> usize {
    HEAP.lock().stats_total_bytes()
}
