//! The reusable parts of xtask, also used by the boot tests (`tests/boot`): the arm64
//! Image writer ([`image`]), the QEMU runner ([`qemu`]) and the host build ([`build`]).
#![warn(missing_docs)]

pub mod bench;
pub mod build;
pub mod bundle;
pub mod guest;
pub mod image;
pub mod linux;
pub mod qemu;
