//! Per-CPU EL2 set-up: the init vector table (the `__kvm_hyp_init` analogue, LINUX-FACTS
//! §6.2) and the stub-call handler, both in the identity-mapped page because they run
//! with the EL2 MMU off.
//!
//! The host installs the init vector with the hyp-stub HVC_SET_VECTORS (physical address),
//! then issues the SMCCC call `0xC600_0000` with x1 = physical address of this CPU's
//! [`InitParams`]. The handler programs TPIDR, SP, MAIR, HCR, VTTBR, VTCR, TTBR0 (+CnP),
//! TCR (PS from ID_AA64MMFR0_EL1.PARange, capped at 48 bits), invalidates the TLBs, turns
//! the MMU on (+PAuth keys enabled, +BTI), records where the stub handler lives and sets
//! VBAR_EL2 to the host vector's hyp VA — the Spectre-v3a hardened table on affected
//! systems. Only x0–x3 are changed.
//!
//! The cap-dependent steps are alternatives (no cap state is read): `HAS_CNP` sets
//! TTBR0_EL2.CnP, `HAS_ADDRESS_AUTH` sets SCTLR_EL2.{EnIA,EnIB,EnDA,EnDB}, `BTI` sets
//! SCTLR_EL2.BT, `SPECTRE_V3A` picks the hardened vector table. The host patches this page
//! like the rest of the image before it cleans the image to PoC and installs it.
//!
//! The host vectors' hyp VAs and the VA of `__hyp_idmap_stub_pa` come from pointer slots
//! in rodata that the host rebased (relocation list); they are read while the MMU is still
//! off, through PC-relative physical addresses.

use crate::asm_alt::asm_alt_plain;
use core::arch::global_asm;
use shared::alternative::plain_cap_field;
use shared::cpucaps::Cap;
use shared::hypercall::{init_params_offset as params, stub, HCALL_BASE};

// The init parameters are shared with the host; the assembly reads them by offset.
#[allow(unused_imports)]
pub use shared::hypercall::InitParams;

/// SCTLR_EL2 RES1 bits: the MMU-off value.
pub const SCTLR_EL2_MMU_OFF: u64 = 0x30c5_0830;
/// SCTLR_EL2 with M, C, SA, I, WXN, IESB and ITFSB on top of RES1.
pub const SCTLR_EL2_MMU_ON: u64 = 0x20_30ed_183d;
/// SCTLR_EL2.BT: BTI checks for guarded pages at EL2.
const SCTLR_EL2_BT: u64 = 1 << 36;
const _: () = assert!(HCALL_BASE == 0xc600 << 16);

global_asm!(
    // Pointer slots the host rebases to hyp VAs; read before the MMU is on.
    ".pushsection .data.rel.ro.hyp_init_ptrs, \"aw\"",
    ".balign 8",
    "__hyp_init_ptrs:",
    ".quad __hyp_host_vector",
    ".quad __hyp_idmap_stub_pa",
    ".quad __hyp_host_vector_hardened",
    ".popsection",
    // Written once per CPU by init (same value each time): where the stub handler sits
    // physically, so the host vector can reach it to turn the MMU off.
    ".pushsection .data.hyp_idmap_stub_pa, \"aw\"",
    ".balign 8",
    ".global __hyp_idmap_stub_pa",
    "__hyp_idmap_stub_pa:",
    ".quad 0",
    ".popsection",
    //
    ".pushsection .hyp.idmap.text, \"ax\"",
    ".balign 2048",
    ".global __hyp_init_vectors",
    "__hyp_init_vectors:",
    // Entries 0-7: exceptions from EL2 itself; none are expected during init.
    ".rept 8",
    ".balign 128",
    "b __hyp_init_invalid",
    ".endr",
    // Entry 8: synchronous from a lower EL in AArch64 (the host's HVC).
    ".balign 128",
    "b __hyp_do_init",
    ".rept 7",
    ".balign 128",
    "b __hyp_init_invalid",
    ".endr",
    ".balign 128",
    //
    "__hyp_init_invalid:",
    "wfe",
    "b __hyp_init_invalid",
    //
    "__hyp_do_init:",
    "cmp x0, #{stub_nr}",
    "b.lo __hyp_idmap_stub_hvc",
    // SMCCC hint bit 16 is ignored, as Linux does.
    "and x2, x0, #0xfffffffffffeffff",
    "movz x3, #0xc600, lsl #16",
    "cmp x2, x3",
    "b.eq 1f",
    "mov x0, #-1", // SMCCC NOT_SUPPORTED
    "eret",
    "1:",
    "ldr x0, [x1, #{tpidr}]",
    "msr tpidr_el2, x0",
    "ldr x0, [x1, #{stack}]",
    "mov sp, x0",
    "ldr x0, [x1, #{mair}]",
    "msr mair_el2, x0",
    "ldr x0, [x1, #{hcr}]",
    "msr hcr_el2, x0",
    "ldr x0, [x1, #{vttbr}]",
    "msr vttbr_el2, x0",
    "ldr x0, [x1, #{vtcr}]",
    "msr vtcr_el2, x0",
    "ldr x0, [x1, #{pgd}]",
    // CnP: the tables are the same on every CPU.
    asm_alt_plain!("nop", "orr x0, x0, #1", "cap_cnp"),
    "msr ttbr0_el2, x0",
    "ldr x0, [x1, #{tcr}]",
    "mrs x2, id_aa64mmfr0_el1",
    "and x2, x2, #0xf",
    "mov x3, #5", // PARange 5 = 48 bits: the most this hyp's tables describe
    "cmp x2, x3",
    "csel x2, x2, x3, ls",
    "bfi x0, x2, #16, #3",
    "msr tcr_el2, x0",
    "isb",
    "tlbi alle2",
    "tlbi vmalls12e1",
    "dsb sy",
    // MMU still off: PC-relative addresses are physical, the slots hold hyp VAs.
    "adrp x1, __hyp_init_ptrs",
    "add x1, x1, :lo12:__hyp_init_ptrs",
    "ldr x3, [x1, #8]", // hyp VA of __hyp_idmap_stub_pa
    // Hyp VA of the host vector, or of its hardened twin on Spectre-v3a systems.
    asm_alt_plain!("ldr x1, [x1]", "ldr x1, [x1, #16]", "cap_v3a"),
    "adr x2, __hyp_idmap_stub_hvc",
    "movz x0, #{sctlr_lo}",
    "movk x0, #{sctlr_mid}, lsl #16",
    "movk x0, #{sctlr_hi}, lsl #32",
    // Pointer authentication: EnIA | EnIB, EnDA, EnDB.
    asm_alt_plain!(
        "nop\nnop\nnop",
        "orr x0, x0, #0xc0000000\norr x0, x0, #0x8000000\norr x0, x0, #0x2000",
        "cap_pauth"
    ),
    asm_alt_plain!("nop", "orr x0, x0, #{sctlr_bt}", "cap_bti"),
    "msr sctlr_el2, x0",
    "isb",
    // MMU on; this page is identity mapped, the data store goes through the hyp VA.
    "str x2, [x3]",
    "msr vbar_el2, x1",
    "isb",
    "mov x0, #0",
    "eret",
    //
    // Stub calls, entered with the identity mapping in force (MMU on or off).
    // SET_VECTORS is served only from the init vector (the host vector refuses it).
    // Changes x0 and x5 (and x1..x2 for SOFT_RESTART, which does not return).
    ".global __hyp_idmap_stub_hvc",
    "__hyp_idmap_stub_hvc:",
    "cmp x0, #{set_vectors}",
    "b.ne 1f",
    "msr vbar_el2, x1",
    "isb",
    "mov x0, #0",
    "eret",
    "1:",
    "cmp x0, #{soft_restart}",
    "b.eq 2f",
    "cmp x0, #{reset_vectors}",
    "b.eq 2f",
    "movz x0, #{stub_err_lo}",
    "movk x0, #{stub_err_hi}, lsl #16",
    "eret",
    "2:",
    "movz x5, #{off_lo}",
    "movk x5, #{off_hi}, lsl #16",
    "msr sctlr_el2, x5",
    "isb",
    // MMU off now: adr yields the physical address of the init vector, which serves
    // the stub ABI from here on.
    "adr x5, __hyp_init_vectors",
    "msr vbar_el2, x5",
    "isb",
    "cmp x0, #{soft_restart}",
    "b.ne 3f",
    "mov x5, x1",
    "mov x0, x2",
    "mov x1, x3",
    "mov x2, x4",
    "br x5",
    "3:",
    "mov x0, #0",
    "eret",
    ".popsection",
    stub_nr = const stub::HVC_STUB_HCALL_NR,
    tpidr = const params::TPIDR_EL2,
    stack = const params::STACK_HYP_VA,
    mair = const params::MAIR_EL2,
    hcr = const params::HCR_EL2,
    vttbr = const params::VTTBR,
    vtcr = const params::VTCR,
    pgd = const params::PGD_PA,
    tcr = const params::TCR_EL2,
    sctlr_lo = const SCTLR_EL2_MMU_ON & 0xffff,
    sctlr_mid = const (SCTLR_EL2_MMU_ON >> 16) & 0xffff,
    sctlr_hi = const (SCTLR_EL2_MMU_ON >> 32) & 0xffff,
    sctlr_bt = const SCTLR_EL2_BT,
    off_lo = const SCTLR_EL2_MMU_OFF & 0xffff,
    off_hi = const (SCTLR_EL2_MMU_OFF >> 16) & 0xffff,
    set_vectors = const stub::HVC_SET_VECTORS,
    soft_restart = const stub::HVC_SOFT_RESTART,
    reset_vectors = const stub::HVC_RESET_VECTORS,
    stub_err_lo = const stub::HVC_STUB_ERR & 0xffff,
    stub_err_hi = const (stub::HVC_STUB_ERR >> 16) & 0xffff,
    cap_cnp = const plain_cap_field(Cap::HasCnp.number()),
    cap_v3a = const plain_cap_field(Cap::SpectreV3a.number()),
    cap_pauth = const plain_cap_field(Cap::HasAddressAuth.number()),
    cap_bti = const plain_cap_field(Cap::Bti.number()),
);
