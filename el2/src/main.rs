//! The EL2 hyp. Built by `cargo xtask hyp-image` for `aarch64-unknown-none-softfloat` as a
//! position-independent executable (linked by `linker/el2.ld` at base 0) and turned into
//! the hyp image that the host loads, relocates, patches and installs.
//!
//! | file | owns |
//! | --- | --- |
//! | `hyp_init.rs` | the init vector and per-CPU EL2 set-up with the MMU off (idmap page) |
//! | `entry.rs` | the host vector table, its Spectre-v3a hardened twin, and the save/restore of the host's registers |
//! | `hypercall.rs` | the host hypercall table and its handlers (ABI in `shared::hypercall`) |
//! | `caps.rs` | the cap-evaluation selftest: one alternative check per cap |
//! | `percpu.rs` | the per-CPU block (counters the selftests read) |
//! | `asm_alt.rs` | alternative records written from `global_asm!` |
//! | `sysreg.rs` | the few system-register accesses and barriers the Rust code needs |
//! | `vm.rs` | the VM table, the VM hypercalls, host-memory checks, guest stage-2 tables |
//! | `switch.rs` | the world switch: EL1/EL2 state of host and guest, exit decoding |
//! | `vgic.rs` | the virtual GIC CPU interface around a guest run (list registers, VMCR, APRs, ICH_HCR) |
//! | `switch_asm.rs` | `__guest_enter`/`__guest_exit` (general and FP/SIMD registers) and the guest vectors |
//!
//! The hyp holds no capability state: every cap check is an alternative site (a
//! `cap_likely!`/`cap_unlikely!`/`alternative!`/`alternative_cb!` in Rust, or a record
//! written by hand in the assembly), so a cap costs one patched instruction and no load.
//!
//! # Why general-registers only
//!
//! xtask builds this crate for `aarch64-unknown-none-softfloat`, so the compiler never
//! uses FP/SIMD registers (no `memcpy` through q-registers, no float code), as Linux builds
//! its hyp code `-mgeneral-regs-only`. The hyp runs between host instructions on the
//! host's registers: it saves only x0–x30, so touching a v-register would corrupt host
//! state, and CPTR_EL2 may trap FP at EL2 once guests run lazily switched FP state.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod asm_alt;
mod caps;
mod entry;
mod hyp_init;
mod hypercall;
mod percpu;
mod switch;
mod switch_asm;
mod sysreg;
mod vgic;
mod vm;

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
