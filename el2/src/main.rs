//! The EL2 hyp. Built by `cargo xtask build` for `aarch64-unknown-none` as a
//! position-independent executable and turned into the hyp image.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

use core::panic::PanicInfo;

#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
