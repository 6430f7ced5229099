//! Memory management: the kernel heap (page tables live in `arch::mmu`) and the hyp
//! carve-out taken out of RAM before the heap gets it.

pub mod carveout;
pub mod heap;
