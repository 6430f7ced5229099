//! The host kernel's pure logic: everything that interprets boot-time input or computes
//! a layout, kept free of `asm!` and system registers so `cargo test -p el1-host --lib`
//! runs it on the build machine. The kernel binary (`main.rs` and `arch/`) calls it.
//!
//! - [`bootinfo`]: the device tree turned into a typed [`bootinfo::BootInfo`].
//! - [`bootargs`]: `/chosen/bootargs` parsing (`loglevel=`, …).
//! - [`layout`]: the virtual-memory layout (KIMAGE VA, linear map, MMIO window) and the
//!   arithmetic on physical ranges the memory setup needs.
//! - [`status`]: the machine-readable exit-status line that `cargo xtask qemu` reads.
//! - [`vmm`]: the VMM's device models (PL011, PSCI), MMIO routing, guest image loading
//!   and guest device-tree generation.
#![cfg_attr(not(test), no_std)]
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

pub mod bootargs;
pub mod bootinfo;
pub mod layout;
pub mod status;
pub mod vmm;
