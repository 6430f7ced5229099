//! The thin architecture layer: the only place with `asm!`, system registers and raw
//! pointers to hardware. Everything above it is ordinary Rust.

pub mod cache;
pub mod exceptions;
pub mod head;
pub mod mmu;
pub mod sysreg;
