//! One `#[no_mangle]` function per kind of alternative site, so the machine code the site
//! macros produce can be inspected (`llvm-objdump -d -r`) and checked by
//! `shared/tests/alt_disasm.rs`. Nothing here is meant to run.
//!
//! The checks branch to [`alt_demo_true_path`] / [`alt_demo_false_path`] so that the two
//! outcomes of each check are recognisable by name (call relocations) in the object code.
//! Each function holds exactly one site, with a cap no other function uses, so every record
//! in `.altinstructions` can be matched to its function.
//!
//! The crate only has content when built for AArch64; on the build machine it is empty.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(target_arch = "aarch64")]
mod demo;

#[cfg(target_arch = "aarch64")]
pub use demo::*;
