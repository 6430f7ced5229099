//! The assembly half of the world switch: `__guest_enter` (host FP/SIMD out, guest
//! FP/SIMD and general registers in, ERET) and the guest vector table
//! `__hyp_guest_vector` whose entries come back through `__guest_exit` (guest general
//! and FP/SIMD registers out, host FP/SIMD in, return to the Rust caller with the
//! vector number).
//!
//! This is the only hyp code that touches FP/SIMD registers: the crate is built
//! soft-float, so the directives `.arch_extension fp`/`simd` enable the instructions
//! here alone, and the Rust code around it never uses those registers.
//!
//! Frame `__guest_enter` leaves on the hyp stack while the guest runs (128 bytes):
//! `[0]` context pointer, `[8]` host FP save area, `[16..112]` x18–x29, `[112]` x30.
//! The guest exit entries push the guest's x0/x1 below it, so `__guest_exit` finds
//! the context at `[sp + 16]`.

use core::arch::global_asm;
use shared::vcpu::offset;

/// Vector numbers `__guest_enter` returns (which entry the guest left through).
pub mod vector {
    /// Synchronous exception.
    pub const SYNC: u64 = 0;
    /// IRQ.
    pub const IRQ: u64 = 1;
    /// FIQ.
    pub const FIQ: u64 = 2;
    /// SError.
    pub const SERROR: u64 = 3;
}

extern "C" {
    /// Runs the guest whose context is at `ctxt` (hyp VA) until it traps; returns the
    /// [`vector`] number. `host_fp` receives the host's FP/SIMD registers meanwhile.
    /// The caller has loaded every EL2 and EL1 system register for the guest.
    pub fn __guest_enter(
        ctxt: *mut shared::vcpu::VcpuContext,
        host_fp: *mut shared::vcpu::FpRegs,
    ) -> u64;
}

/// Saves q0–q31, FPSR and FPCR at `[$base]` (clobbers x3, x4).
macro_rules! fp_save {
    ($base:literal) => {
        concat!(
            "stp q0, q1, [",
            $base,
            ", #0]\n",
            "stp q2, q3, [",
            $base,
            ", #32]\n",
            "stp q4, q5, [",
            $base,
            ", #64]\n",
            "stp q6, q7, [",
            $base,
            ", #96]\n",
            "stp q8, q9, [",
            $base,
            ", #128]\n",
            "stp q10, q11, [",
            $base,
            ", #160]\n",
            "stp q12, q13, [",
            $base,
            ", #192]\n",
            "stp q14, q15, [",
            $base,
            ", #224]\n",
            "stp q16, q17, [",
            $base,
            ", #256]\n",
            "stp q18, q19, [",
            $base,
            ", #288]\n",
            "stp q20, q21, [",
            $base,
            ", #320]\n",
            "stp q22, q23, [",
            $base,
            ", #352]\n",
            "stp q24, q25, [",
            $base,
            ", #384]\n",
            "stp q26, q27, [",
            $base,
            ", #416]\n",
            "stp q28, q29, [",
            $base,
            ", #448]\n",
            "stp q30, q31, [",
            $base,
            ", #480]\n",
            "mrs x3, fpsr\n",
            "mrs x4, fpcr\n",
            "str x3, [",
            $base,
            ", #512]\n",
            "str x4, [",
            $base,
            ", #520]\n",
        )
    };
}

/// Loads q0–q31, FPSR and FPCR from `[$base]` (clobbers x3, x4).
macro_rules! fp_load {
    ($base:literal) => {
        concat!(
            "ldp q0, q1, [",
            $base,
            ", #0]\n",
            "ldp q2, q3, [",
            $base,
            ", #32]\n",
            "ldp q4, q5, [",
            $base,
            ", #64]\n",
            "ldp q6, q7, [",
            $base,
            ", #96]\n",
            "ldp q8, q9, [",
            $base,
            ", #128]\n",
            "ldp q10, q11, [",
            $base,
            ", #160]\n",
            "ldp q12, q13, [",
            $base,
            ", #192]\n",
            "ldp q14, q15, [",
            $base,
            ", #224]\n",
            "ldp q16, q17, [",
            $base,
            ", #256]\n",
            "ldp q18, q19, [",
            $base,
            ", #288]\n",
            "ldp q20, q21, [",
            $base,
            ", #320]\n",
            "ldp q22, q23, [",
            $base,
            ", #352]\n",
            "ldp q24, q25, [",
            $base,
            ", #384]\n",
            "ldp q26, q27, [",
            $base,
            ", #416]\n",
            "ldp q28, q29, [",
            $base,
            ", #448]\n",
            "ldp q30, q31, [",
            $base,
            ", #480]\n",
            "ldr x3, [",
            $base,
            ", #512]\n",
            "ldr x4, [",
            $base,
            ", #520]\n",
            "msr fpsr, x3\n",
            "msr fpcr, x4\n",
        )
    };
}

/// One lower-EL entry of the guest vector table: ESB (defers a pending SError into
/// DISR_EL1 on RAS systems; a NOP elsewhere), save x0/x1, tell `__guest_exit` which.
macro_rules! guest_entry {
    ($vec:literal) => {
        concat!(
            ".balign 128\n",
            "hint #16 // esb\n",
            "stp x0, x1, [sp, #-16]!\n",
            "mov x1, #",
            $vec,
            "\n",
            "b __guest_exit\n",
        )
    };
}

// The FP block layout the macros assume.
const _: () = assert!(offset::FP_BLOCK_V0 == 0 && offset::FP_BLOCK_FPSR == 512);
const _: () = assert!(offset::X0 == 0 && offset::FPSR == offset::FP_V0 + 512);

global_asm!(
    ".pushsection .text.hyp_switch, \"ax\"",
    ".arch_extension fp",
    ".arch_extension simd",
    ".balign 16",
    ".global __guest_enter",
    "__guest_enter:",
    "sub sp, sp, #128",
    "stp x0, x1, [sp, #0]",
    "stp x18, x19, [sp, #16]",
    "stp x20, x21, [sp, #32]",
    "stp x22, x23, [sp, #48]",
    "stp x24, x25, [sp, #64]",
    "stp x26, x27, [sp, #80]",
    "stp x28, x29, [sp, #96]",
    "str x30, [sp, #112]",
    fp_save!("x1"),
    "add x2, x0, #{fp_v0}",
    fp_load!("x2"),
    "ldp x2, x3, [x0, #16]",
    "ldp x4, x5, [x0, #32]",
    "ldp x6, x7, [x0, #48]",
    "ldp x8, x9, [x0, #64]",
    "ldp x10, x11, [x0, #80]",
    "ldp x12, x13, [x0, #96]",
    "ldp x14, x15, [x0, #112]",
    "ldp x16, x17, [x0, #128]",
    "ldp x18, x19, [x0, #144]",
    "ldp x20, x21, [x0, #160]",
    "ldp x22, x23, [x0, #176]",
    "ldp x24, x25, [x0, #192]",
    "ldp x26, x27, [x0, #208]",
    "ldp x28, x29, [x0, #224]",
    "ldr x30, [x0, #240]",
    "ldp x0, x1, [x0, #0]",
    "eret",
    // Nothing runs past the ERET, not even speculatively.
    "dsb nsh",
    "isb",
    //
    "__guest_exit:",
    // x0/x1 of the guest at [sp], the frame above; x1 = vector number.
    "ldr x0, [sp, #16]",
    "stp x2, x3, [x0, #16]",
    "stp x4, x5, [x0, #32]",
    "stp x6, x7, [x0, #48]",
    "stp x8, x9, [x0, #64]",
    "stp x10, x11, [x0, #80]",
    "stp x12, x13, [x0, #96]",
    "stp x14, x15, [x0, #112]",
    "stp x16, x17, [x0, #128]",
    "stp x18, x19, [x0, #144]",
    "stp x20, x21, [x0, #160]",
    "stp x22, x23, [x0, #176]",
    "stp x24, x25, [x0, #192]",
    "stp x26, x27, [x0, #208]",
    "stp x28, x29, [x0, #224]",
    "str x30, [x0, #240]",
    "ldp x2, x3, [sp], #16",
    "stp x2, x3, [x0, #0]",
    "add x2, x0, #{fp_v0}",
    fp_save!("x2"),
    "ldr x2, [sp, #8]",
    fp_load!("x2"),
    "mov x0, x1",
    "ldp x18, x19, [sp, #16]",
    "ldp x20, x21, [sp, #32]",
    "ldp x22, x23, [sp, #48]",
    "ldp x24, x25, [sp, #64]",
    "ldp x26, x27, [sp, #80]",
    "ldp x28, x29, [sp, #96]",
    "ldr x30, [sp, #112]",
    "add sp, sp, #128",
    "ret",
    ".popsection",
    //
    ".pushsection .hyp.vectors, \"ax\"",
    ".balign 2048",
    ".global __hyp_guest_vector",
    "__hyp_guest_vector:",
    // Exceptions taken from EL2 itself while a guest is loaded: a hyp bug; stop.
    ".rept 8",
    ".balign 128",
    "1: wfe",
    "b 1b",
    ".endr",
    // Lower EL, AArch64 then AArch32: sync, IRQ, FIQ, SError.
    guest_entry!("0"),
    guest_entry!("1"),
    guest_entry!("2"),
    guest_entry!("3"),
    guest_entry!("0"),
    guest_entry!("1"),
    guest_entry!("2"),
    guest_entry!("3"),
    ".balign 128",
    ".popsection",
    fp_v0 = const offset::FP_V0,
);
