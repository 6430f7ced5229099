//! The host vector table (the `__kvm_hyp_host_vector` analogue, LINUX-FACTS §6.3), its
//! Spectre-v3a hardened twin (LINUX-FACTS §2.3–§2.4), and the save/restore of the host's
//! general-purpose registers around the Rust handlers.
//!
//! # The real table, `__hyp_host_vector`
//!
//! Every entry starts with the two-instruction preamble `esb; stp x0, x1, [sp, #-16]!`
//! (`VECTOR_PREAMBLE`, 8 bytes) and then branches to its handler with x0/x1 saved:
//!
//! * Exceptions taken from EL2 itself, and lower-EL IRQ/FIQ/SError: hyp panic.
//! * Lower-EL synchronous (AArch64 and AArch32): an HVC with x0 below
//!   `HVC_STUB_HCALL_NR` is a hyp-stub call; RESET_VECTORS and SOFT_RESTART go to the
//!   stub handler in the identity-mapped page (it turns the MMU off), the others return
//!   HVC_STUB_ERR. Everything else saves x0–x30 into a [`HostContext`] on the hyp stack
//!   and calls [`handle_host_trap`]; the registers are restored from the context, so a
//!   handler changes exactly what it writes there. A trap that is not an HVC is refused
//!   (the instruction skipped, counted), never a hyp panic.
//!
//! # The hardened table, `__hyp_host_vector_hardened`
//!
//! Installed instead of the real one by init on Spectre-v3a systems (an alternative), so
//! that the real table's address is never in VBAR_EL2 (the point of v3a hardening: a
//! leaked VBAR says nothing about where hyp text is). Each 128-byte entry:
//!
//! ```text
//! esb
//! stp  x0, x1, [sp, #-16]!             // the preamble the real entry skips
//! <count the entry in this CPU's block>  // for the hyp-vectors selftest
//! b    2f        ─┐ PatchNops callback, cap SPECTRE_BHB: NOP when the loop is needed
//! movz x0, #32    │ BhbLoopIter callback, cap SPECTRE_BHB: the system's loop count k
//! 1: b . + 4      │ the BHB loop: k taken branches
//! subs x0, x0, #1 │
//! b.ne 1b         │
//! dsb ish; isb   ─┘
//! 2: nop x4        HypVectorBranch callback, cap SPECTRE_V3A:
//!                  movz/movk/movk x0 = real entry + 8; br x0
//! b    __hyp_host_vector + entry + 8   // direct fallback while unpatched
//! ```
//!
//! The callback sites carry the caps themselves (SPECTRE_V3A, SPECTRE_BHB), so on
//! unaffected systems their templates stay as they are.

use crate::asm_alt::asm_alt_cb;
use crate::{hypercall, percpu, sysreg};
use core::arch::global_asm;
use shared::alternative::{callback_cap_field, CallbackId};
use shared::cap_likely;
use shared::cpucaps::Cap;
use shared::hypercall::{stub, SMCCC_NOT_SUPPORTED};

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
/// Exception class of a trapped SMC executed in AArch64 state.
const EC_SMC64: u64 = 0x17;

/// Rust side of every lower-EL synchronous exception that is not a stub call.
extern "C" fn handle_host_trap(ctxt: &mut HostContext) {
    let cpu = percpu::this_cpu();
    // RAS: the `esb` of the preamble deferred any pending SError into DISR_EL1, which
    // exists only with the RAS extension.
    if cap_likely!(Cap::HasRasExtn) && sysreg::take_deferred_serror() {
        percpu::bump(&cpu.deferred_serrors);
    }
    let esr = sysreg::esr_el2();
    match (esr >> 26) & 0x3f {
        EC_HVC64 => {
            percpu::bump(&cpu.host_calls);
            hypercall::handle_host_hcall(ctxt)
        }
        // Anything else the host can make trap here (an SMC under HCR_EL2.TSC, an SME
        // or FP/SVE instruction under CPTR_EL2, a trapped system register) is refused:
        // the instruction is skipped with no effect (an SMC answers NOT_SUPPORTED), so
        // the host cannot stop the hyp by executing it. Every such class is an
        // instruction trap (aborts, alignment and debug exceptions of the host go to EL1:
        // there is no host stage 2 and TDE is 0).
        ec => {
            percpu::bump(&cpu.host_traps_refused);
            if ec == EC_SMC64 {
                ctxt.regs[0] = SMCCC_NOT_SUPPORTED;
            }
            sysreg::skip_host_insn(esr);
        }
    }
}

global_asm!(
    ".pushsection .hyp.vectors, \"ax\"",
    // ---- The real table: preamble, then a branch to the handler. ----
    ".balign 2048",
    ".global __hyp_host_vector",
    "__hyp_host_vector:",
    // Current EL with SP_EL0, then with SP_ELx: the hyp itself faulted.
    ".rept 8",
    ".balign 128",
    "hint #16 // esb",
    "stp x0, x1, [sp, #-16]!",
    "b __hyp_vec_invalid",
    ".endr",
    // Lower EL, AArch64: synchronous, IRQ, FIQ, SError.
    ".balign 128",
    "hint #16 // esb",
    "stp x0, x1, [sp, #-16]!",
    "b __hyp_host_sync",
    ".rept 3",
    ".balign 128",
    "hint #16 // esb",
    "stp x0, x1, [sp, #-16]!",
    "b __hyp_vec_invalid",
    ".endr",
    // Lower EL, AArch32: synchronous, IRQ, FIQ, SError.
    ".balign 128",
    "hint #16 // esb",
    "stp x0, x1, [sp, #-16]!",
    "b __hyp_host_sync",
    ".rept 3",
    ".balign 128",
    "hint #16 // esb",
    "stp x0, x1, [sp, #-16]!",
    "b __hyp_vec_invalid",
    ".endr",
    ".balign 128",
    //
    // ---- The hardened table: 16 identical stubs (see the module documentation). ----
    ".balign 2048",
    ".global __hyp_host_vector_hardened",
    "__hyp_host_vector_hardened:",
    ".rept 16",
    ".balign 128",
    "9:",
    "hint #16 // esb",
    "stp x0, x1, [sp, #-16]!",
    "mrs x0, tpidr_el2",
    "adrp x1, {percpu}",
    "add x1, x1, :lo12:{percpu}",
    "add x1, x1, x0",
    "ldr x0, [x1, #{hits}]",
    "add x0, x0, #1",
    "str x0, [x1, #{hits}]",
    asm_alt_cb!("b 2f", "cap_bhb_cb", "cb_nops"),
    asm_alt_cb!("movz x0, #32", "cap_bhb_cb", "cb_bhb_iter"),
    "1:",
    "b . + 4",
    "subs x0, x0, #1",
    "b.ne 1b",
    "dsb ish",
    "isb",
    "2:",
    asm_alt_cb!("nop\nnop\nnop\nnop", "cap_v3a_cb", "cb_vector"),
    "b __hyp_host_vector + (9b - __hyp_host_vector_hardened) + {preamble}",
    ".endr",
    ".balign 128",
    "__hyp_host_vector_end:",
    //
    "__hyp_vec_invalid:",
    "wfe",
    "b __hyp_vec_invalid",
    //
    // x0 and x1 are on the stack (preamble).
    "__hyp_host_sync:",
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
    stub_nr = const stub::HVC_STUB_HCALL_NR,
    soft_restart = const stub::HVC_SOFT_RESTART,
    reset_vectors = const stub::HVC_RESET_VECTORS,
    stub_err_lo = const stub::HVC_STUB_ERR & 0xffff,
    stub_err_hi = const (stub::HVC_STUB_ERR >> 16) & 0xffff,
    ctxt = const CTXT_SIZE,
    handler = sym handle_host_trap,
    percpu = sym percpu::HYP_PERCPU,
    hits = const percpu::HARDENED_ENTRIES_OFFSET,
    preamble = const shared::va_layout::VECTOR_PREAMBLE,
    cap_bhb_cb = const callback_cap_field(Cap::SpectreBhb.number()),
    cap_v3a_cb = const callback_cap_field(Cap::SpectreV3a.number()),
    cb_nops = const CallbackId::PatchNops.raw(),
    cb_bhb_iter = const CallbackId::BhbLoopIter.raw(),
    cb_vector = const CallbackId::HypVectorBranch.raw(),
);
