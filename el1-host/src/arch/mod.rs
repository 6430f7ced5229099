//! The thin architecture layer: the only place with `asm!`, system registers and raw
//! pointers to hardware. Everything above it is ordinary Rust.

pub mod at;
pub mod barrier;
pub mod cache;
pub mod exceptions;
pub mod gic;
pub mod head;
pub mod idregs;
pub mod irq;
pub mod mmu;
pub mod rng;
pub mod sysreg;
pub mod timer;
