//! The host vector table (the `__kvm_hyp_host_vector` analogue, LINUX-FACTS §6.3) and the
//! save/restore of the host's general-purpose registers around the Rust handlers.
//!
//! * Exceptions taken from EL2 itself, and lower-EL IRQ/FIQ/SError: hyp panic.
//! * Lower-EL synchronous (AArch64 and AArch32): an HVC with x0 below
//!   `HVC_STUB_HCALL_NR` is a hyp-stub call; RESET_VECTORS and SOFT_RESTART go to the
//!   stub handler in the identity-mapped page (it turns the MMU off), the others return
//!   HVC_STUB_ERR. Everything else saves x0–x30 into a [`HostContext`] on the hyp stack
//!   and calls [`handle_host_trap`]; the registers are restored from the context, so a
//!   handler changes exactly what it writes there.

use crate::hyp_init::{HVC_RESET_VECTORS, HVC_SOFT_RESTART, HVC_STUB_ERR, HVC_STUB_HCALL_NR};
use crate::{hypercall, sysreg};
use core::arch::global_asm;

/// The host's x0–x30 as saved on entry (x0 is at index 0).
#[repr(C)]
pub struct HostContext {
    /// General-purpose registers x0..x30.
    pub regs: [u64; 31],
    /// Keeps the frame a multiple of 16 bytes.
    _pad: u64,
}

/// Bytes the context occupies on the stack.
const CTXT_SIZE: usize = core::mem::size_of::<HostContext>();
const _: () = assert!(CTXT_SIZE == 256);

/// Exception class of an HVC executed in AArch64 state.
const EC_HVC64: u64 = 0x16;

/// Rust side of every lower-EL synchronous exception that is not a stub call.
extern "C" fn handle_host_trap(ctxt: &mut HostContext) {
    match (sysreg::esr_el2() >> 26) & 0x3f {
        EC_HVC64 => hypercall::handle_host_hcall(ctxt),
        _ => crate::hyp_panic(),
    }
}

global_asm!(
    ".pushsection .hyp.vectors, \"ax\"",
    ".balign 2048",
    ".global __hyp_host_vector",
    "__hyp_host_vector:",
    // Current EL with SP_EL0, then with SP_ELx: the hyp itself faulted.
    ".rept 8",
    ".balign 128",
    "b __hyp_vec_invalid",
    ".endr",
    // Lower EL, AArch64: synchronous, IRQ, FIQ, SError.
    ".balign 128",
    "b __hyp_host_sync",
    ".rept 3",
    ".balign 128",
    "b __hyp_vec_invalid",
    ".endr",
    // Lower EL, AArch32: synchronous, IRQ, FIQ, SError.
    ".balign 128",
    "b __hyp_host_sync",
    ".rept 3",
    ".balign 128",
    "b __hyp_vec_invalid",
    ".endr",
    ".balign 128",
    "__hyp_host_vector_end:",
    //
    "__hyp_vec_invalid:",
    "wfe",
    "b __hyp_vec_invalid",
    //
    "__hyp_host_sync:",
    "stp x0, x1, [sp, #-16]!",
    "mrs x0, esr_el2",
    "ubfx x0, x0, #26, #6",
    "cmp x0, #{ec_hvc64}",
    "b.ne 1f",
    "ldr x0, [sp]",
    "cmp x0, #{stub_nr}",
    "b.hs 1f",
    "ldp x0, x1, [sp], #16",
    // Stub call. Only the two MMU-off calls are served once the hyp is installed.
    "cmp x0, #{soft_restart}",
    "b.eq 2f",
    "cmp x0, #{reset_vectors}",
    "b.eq 2f",
    "movz x0, #{stub_err_lo}",
    "movk x0, #{stub_err_hi}, lsl #16",
    "eret",
    "2:",
    // Physical (= identity-mapped) address of the stub handler, recorded by init.
    "adrp x5, __hyp_idmap_stub_pa",
    "ldr x5, [x5, :lo12:__hyp_idmap_stub_pa]",
    "br x5",
    //
    "1:",
    "ldp x0, x1, [sp], #16",
    "sub sp, sp, #{ctxt}",
    "stp x0, x1, [sp, #0]",
    "stp x2, x3, [sp, #16]",
    "stp x4, x5, [sp, #32]",
    "stp x6, x7, [sp, #48]",
    "stp x8, x9, [sp, #64]",
    "stp x10, x11, [sp, #80]",
    "stp x12, x13, [sp, #96]",
    "stp x14, x15, [sp, #112]",
    "stp x16, x17, [sp, #128]",
    "stp x18, x19, [sp, #144]",
    "stp x20, x21, [sp, #160]",
    "stp x22, x23, [sp, #176]",
    "stp x24, x25, [sp, #192]",
    "stp x26, x27, [sp, #208]",
    "stp x28, x29, [sp, #224]",
    "str x30, [sp, #240]",
    "mov x0, sp",
    "bl {handler}",
    "ldp x0, x1, [sp, #0]",
    "ldp x2, x3, [sp, #16]",
    "ldp x4, x5, [sp, #32]",
    "ldp x6, x7, [sp, #48]",
    "ldp x8, x9, [sp, #64]",
    "ldp x10, x11, [sp, #80]",
    "ldp x12, x13, [sp, #96]",
    "ldp x14, x15, [sp, #112]",
    "ldp x16, x17, [sp, #128]",
    "ldp x18, x19, [sp, #144]",
    "ldp x20, x21, [sp, #160]",
    "ldp x22, x23, [sp, #176]",
    "ldp x24, x25, [sp, #192]",
    "ldp x26, x27, [sp, #208]",
    "ldp x28, x29, [sp, #224]",
    "ldr x30, [sp, #240]",
    "add sp, sp, #{ctxt}",
    "eret",
    ".popsection",
    ec_hvc64 = const EC_HVC64,
    stub_nr = const HVC_STUB_HCALL_NR,
    soft_restart = const HVC_SOFT_RESTART,
    reset_vectors = const HVC_RESET_VECTORS,
    stub_err_lo = const HVC_STUB_ERR & 0xffff,
    stub_err_hi = const (HVC_STUB_ERR >> 16) & 0xffff,
    ctxt = const CTXT_SIZE,
    handler = sym handle_host_trap,
);
