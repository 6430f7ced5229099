//! The EL2 hyp. Built by `cargo xtask hyp-image` for `aarch64-unknown-none` as a
//! position-independent executable (linked by `linker/el2.ld` at base 0) and turned into
//! the hyp image that the host loads, relocates, patches and installs.
//!
//! | file | owns |
//! | --- | --- |
//! | `hyp_init.rs` | the init vector and per-CPU EL2 set-up with the MMU off (idmap page) |
//! | `entry.rs` | the host vector table and the save/restore of the host's registers |
//! | `hypercall.rs` | the host hypercall table and its handlers |
//! | `sysreg.rs` | the few system-register accesses the Rust code needs |
//!
//! The hyp holds no capability state: every cap check is an alternative site.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod entry;
mod hyp_init;
mod hypercall;
mod sysreg;

use core::panic::PanicInfo;

/// Stops this CPU at EL2. There is nothing to report to from here yet; the host sees the
/// hypercall never return.
fn hyp_panic() -> ! {
    loop {
        sysreg::wfe();
    }
}

#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    hyp_panic()
}
