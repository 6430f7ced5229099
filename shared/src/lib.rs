//! The crate both images and the build tool share.
//!
//! Everything here is pure logic over plain values and byte slices, so the whole crate is
//! unit-tested on the build machine (`cargo test`). The only machine-specific part is the
//! `asm!` emitted by the alternative macros, which compiles for AArch64 targets only.
//!
//! | module | owns |
//! | --- | --- |
//! | [`cpucaps`] | the capability list, detection from ID registers, sanitisation, finalisation, boot-argument overrides |
//! | [`alternative`] | the 12-byte alternative record, callback ids, the site macros |
//! | [`insn`] | A64 instruction encoders and decoders used by the patcher and the callbacks |
//! | [`patch`] | applying one alternatives pass to an image held as bytes |
//! | [`hyp_image`] | the hyp image file format: header, checksum, verification, relocation |
//! | [`hypercall`] | the host ↔ hyp ABI: call ids, return codes, init parameters |
//! | [`va_layout`] | the hyp VA layout (`kern_hyp_va`) and the layout callbacks |
//! | [`callbacks`] | the boot-pass and system-pass callback resolvers |
//! | [`exit`] | the typed guest exit record: decoding from ESR/FAR/HPFAR and its wire form |
//! | [`stage2`] | stage-2 parameters: VTCR_EL2, VTTBR_EL2, table geometry, descriptor attributes |
//! | [`vcpu`] | the guest ABI: vCPU context, VM calls' argument rules, abort injection |
//! | [`vgic`] | the virtual GIC CPU interface the host and the hyp share: list registers, ICH_* state, SGI decoding |
//! | [`guest_abi`] | how a guest reports its status, the exit line, the guest bundle xtask hands the host |
#![cfg_attr(not(test), no_std)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod alternative;
pub mod callbacks;
pub mod cpucaps;
pub mod exit;
pub mod guest_abi;
pub mod hyp_image;
pub mod hypercall;
pub mod insn;
pub mod patch;
pub mod stage2;
pub mod va_layout;
pub mod vcpu;
pub mod vgic;
