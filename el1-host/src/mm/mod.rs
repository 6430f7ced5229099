//! Memory management: the kernel heap (page tables live in `arch::mmu`).

pub mod heap;
