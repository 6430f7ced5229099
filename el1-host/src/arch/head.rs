//! Early boot assembly: everything that runs before Rust can, with the MMU off and at
//! physical addresses.
//!
//! - `primary_entry`: the Image entry (x0 = DTB PA, entered at EL2 by QEMU). Sets EL2 up,
//!   installs the hyp stub and drops to EL1h (`el2_setup`), zeroes bss, builds coarse
//!   early tables (the image at its KIMAGE VA in TTBR1 with 2 MiB blocks; the 1 GiB blocks
//!   holding the image and the DTB identity-mapped in TTBR0), turns the MMU on, jumps to
//!   the KIMAGE VA and calls [`crate::primary_main`].
//! - `secondary_entry`: the PSCI CPU_ON entry (x0 = PA of a [`crate::smp::SecondaryBoot`]).
//!   Same EL2 set-up, then the MMU with the final tables it is handed, then
//!   [`crate::smp::secondary_main`].
//! - `__hyp_stub_vectors`: the EL2 stub of LINUX-FACTS §6.1 (see [`stub`] for the ABI).
//! - `idmap_replace_ttbr1`: swaps TTBR1 while running from the TTBR0 identity map.
//!
//! All of it lives in `.idmap.text`, which the final TTBR0 maps at its PA, so a CPU that
//! turns its MMU on keeps fetching from the same addresses.

/// The hyp-stub ABI the EL2 stub implements (`hvc #0`, function in x0).
///
/// | x0 | call | what the stub does |
/// | --- | --- | --- |
/// | 0 | `HVC_SET_VECTORS` | VBAR_EL2 = x1 (PA of a 2 KiB-aligned table); x0 = 0 |
/// | 1 | `HVC_SOFT_RESTART` | at EL2, MMU off: jump to x1 with x0..x2 = x2..x4; no return |
/// | 2 | `HVC_RESET_VECTORS` | already the stub: nothing to do; x0 = 0 |
/// | 3 | `HVC_FINALISE_EL2` | this host stays nVHE and EL2 was fully set up at boot, so there is nothing to finish: x0 = 0 |
/// | other | – | x0 = `HVC_STUB_ERR` |
///
/// Only HVC reaches the stub: HCR_EL2, CPTR_EL2, MDCR_EL2, HSTR_EL2 and the FGT registers
/// are set so that nothing else from EL1 traps to EL2, so the stub does not decode ESR_EL2.
pub use shared::hypercall::stub;

/// SCTLR_EL2 with the MMU off: just the RES1 bits (little endian).
const SCTLR_EL2_MMU_OFF: u64 = 0x30c5_0830;
/// HCR_EL2 for an nVHE host: RW | APK | API | ATA (LINUX-FACTS §6.2).
const HCR_HOST_NVHE_FLAGS: u64 = 0x0100_0300_8000_0000;
/// CNTHCTL_EL2: EL1PCTEN | EL1PCEN, EL1 may use the physical counter and timer.
const CNTHCTL_EL2_EL1_ACCESS: u64 = 0b11;
/// CPTR_EL2 (nVHE): only the RES1 bits, so FP/SIMD and SVE are not trapped.
const CPTR_EL2_DEFAULT: u64 = 0x32ff;
/// ICC_SRE_EL2.SRE: the system-register interface to the GICv3 CPU interface.
const ICC_SRE_EL2_SRE: u64 = 1 << 0;
/// ICC_SRE_EL2.Enable: EL1 may set its own ICC_SRE_EL1.SRE.
const ICC_SRE_EL2_ENABLE: u64 = 1 << 3;
/// SPSR_EL2 for the ERET to the host: EL1h with D, A, I and F masked.
const SPSR_EL1H_DAIF_MASKED: u64 = 0x3c5;
/// SCTLR_EL1 with the MMU off: RES1 bits only.
pub const SCTLR_EL1_MMU_OFF: u64 = 0x30d0_0800;
/// SCTLR_EL1 with the MMU on: RES1 | M | C | SA | I.
pub const SCTLR_EL1_MMU_ON: u64 = 0x30d0_180d;
/// MAIR_EL1 as Linux lays it out: 0 Normal WB, 1 Normal (tagged), 2 Normal NC,
/// 3 Device-nGnRnE, 4 Device-nGnRE.
pub const MAIR_EL1_VALUE: u64 = 0x0000_0004_0044_ffff;
/// TCR_EL1 without IPS: T0SZ = T1SZ = 16 (48-bit), 4 KiB granules, inner-shareable
/// write-back walks for both halves. IPS (bits 32..34) is filled from ID_AA64MMFR0_EL1.
pub const TCR_EL1_BASE: u64 = 0xb510_3510;
/// CPACR_EL1.FPEN = 0b11: FP/SIMD does not trap at EL1.
const CPACR_EL1_FPEN: u64 = 0b11 << 20;
/// Early block descriptor: valid block, AttrIndx 0 (Normal WB), inner shareable, AF.
const EARLY_BLOCK_ATTRS: u64 = 0x701;

core::arch::global_asm!(
    // The Image header: xtask writes code0 (a branch to primary_entry), the sizes, the
    // flags and the magic over these 64 bytes of the flat binary.
    ".section .head.text, \"ax\"",
    ".global _head",
    "_head:",
    ".space 64",

    ".section .idmap.text, \"ax\"",
    // ---- EL2 stub vectors: 16 entries of 128 bytes, 2 KiB aligned. ----
    ".balign 2048",
    ".global __hyp_stub_vectors",
    "__hyp_stub_vectors:",
    ".rept 8",               // current EL with SP0 (4) and SPx (4): not expected
    ".balign 128",
    "b hyp_stub_spin",
    ".endr",
    ".balign 128",           // lower EL, AArch64, synchronous: the HVC calls
    "b hyp_stub_hvc",
    ".rept 7",               // lower EL IRQ/FIQ/SError and AArch32: not expected
    ".balign 128",
    "b hyp_stub_spin",
    ".endr",
    ".balign 128",

    "hyp_stub_spin:",
    "wfe",
    "b hyp_stub_spin",

    "hyp_stub_hvc:",
    "cmp x0, #{set_vectors}",
    "b.ne 1f",
    "msr vbar_el2, x1",
    "mov x0, #0",
    "eret",
    "1: cmp x0, #{soft_restart}",
    "b.ne 2f",
    "mov x30, x1",
    "mov x0, x2",
    "mov x1, x3",
    "mov x2, x4",
    "br x30",
    "2: cmp x0, #{reset_vectors}",
    "b.eq 3f",
    "cmp x0, #{finalise_el2}",
    "b.eq 3f",
    "ldr x0, ={stub_err}",
    "eret",
    "3: mov x0, #0",
    "eret",

    // ---- el2_setup: called with bl, MMU off. At EL2 it initialises EL2 for an nVHE
    // host, installs the stub and "returns" to EL1h by ERET to lr; at EL1 it only puts
    // SCTLR_EL1 into a known state. Clobbers x9, x10. ----
    "el2_setup:",
    // EL1 may use FP/SIMD (Rust code for this target does).
    "mov x9, #{cpacr_fpen}",
    "msr cpacr_el1, x9",
    "mrs x9, CurrentEL",
    "cmp x9, #(2 << 2)",
    "b.eq 1f",
    "ldr x9, ={sctlr_el1_off}",
    "msr sctlr_el1, x9",
    "isb",
    "ret",
    "1:",
    "ldr x9, ={sctlr_el2_off}",
    "msr sctlr_el2, x9",
    "isb",
    "ldr x9, ={hcr}",
    "msr hcr_el2, x9",
    "isb",
    "mov x9, #{cnthctl}",
    "msr cnthctl_el2, x9",
    "msr cntvoff_el2, xzr",
    // MDCR_EL2.HPMN = PMCR_EL0.N when there is a PMUv3, so EL1 sees every counter.
    "mrs x9, id_aa64dfr0_el1",
    "ubfx x9, x9, #8, #4",
    "mov x10, #0",
    "cbz x9, 2f",
    "cmp x9, #0xf",
    "b.eq 2f",
    "mrs x10, pmcr_el0",
    "ubfx x10, x10, #11, #5",
    "2: msr mdcr_el2, x10",
    // GICv3 system registers: let EL1 use them.
    "mrs x9, id_aa64pfr0_el1",
    "ubfx x9, x9, #24, #4",
    "cbz x9, 3f",
    "mrs x9, s3_4_c12_c9_5",      // ICC_SRE_EL2
    "orr x9, x9, #{icc_sre_sre}",
    "orr x9, x9, #{icc_sre_enable}",
    "msr s3_4_c12_c9_5, x9",
    "isb",
    "msr s3_4_c12_c11_0, xzr",    // ICH_HCR_EL2
    "3:",
    "msr hstr_el2, xzr",
    "msr vttbr_el2, xzr",
    "mrs x9, midr_el1",
    "msr vpidr_el2, x9",
    "mrs x9, mpidr_el1",
    "msr vmpidr_el2, x9",
    "mov x9, #{cptr}",
    "msr cptr_el2, x9",
    // Fine-grained traps (FEAT_FGT): none.
    "mrs x9, id_aa64mmfr0_el1",
    "ubfx x9, x9, #56, #4",
    "cbz x9, 4f",
    "msr s3_4_c1_c1_4, xzr",      // HFGRTR_EL2
    "msr s3_4_c1_c1_5, xzr",      // HFGWTR_EL2
    "msr s3_4_c1_c1_6, xzr",      // HFGITR_EL2
    "msr s3_4_c3_c1_4, xzr",      // HDFGRTR_EL2
    "msr s3_4_c3_c1_5, xzr",      // HDFGWTR_EL2
    "4:",
    "adrp x9, __hyp_stub_vectors",
    "add x9, x9, :lo12:__hyp_stub_vectors",
    "msr vbar_el2, x9",
    "ldr x9, ={sctlr_el1_off}",
    "msr sctlr_el1, x9",
    "mov x9, #{spsr}",
    "msr spsr_el2, x9",
    "msr elr_el2, x30",
    "isb",
    "eret",

    // ---- inval_dcache_range(x0 = start, x1 = end): invalidate to PoC, for memory that
    // was written with the MMU (and so the caches) off. Clobbers x2, x3. ----
    "inval_dcache_range:",
    "mrs x3, ctr_el0",
    "ubfx x3, x3, #16, #4",
    "mov x2, #4",
    "lsl x2, x2, x3",             // smallest D-cache line in bytes
    "sub x3, x2, #1",
    "bic x0, x0, x3",
    "5: cmp x0, x1",
    "b.hs 6f",
    "dc ivac, x0",
    "add x0, x0, x2",
    "b 5b",
    "6: dsb sy",
    "ret",

    "early_hang:",
    "wfe",
    "b early_hang",

    // ---- primary_entry ----
    ".global primary_entry",
    "primary_entry:",
    "mov x19, x0",                // DTB PA
    "mrs x20, CurrentEL",
    "lsr x20, x20, #2",           // the EL we were entered at
    "bl el2_setup",
    "adrp x21, _text",            // load PA of the image (2 MiB aligned by the protocol)
    "tst x21, #0x1fffff",
    "b.ne early_hang",
    "adrp x0, __bss_start",
    "adrp x1, __bss_end",
    "7: cmp x0, x1",
    "b.hs 8f",
    "stp xzr, xzr, [x0], #16",
    "b 7b",
    "8: adrp x0, __bss_start",
    "adrp x1, __bss_end",
    "bl inval_dcache_range",

    // TTBR1: the image at its link address with 2 MiB blocks.
    "ldr x0, =_text",
    "adrp x1, early_ttbr1_l0",
    "adrp x2, early_ttbr1_l1",
    "adrp x3, early_ttbr1_l2",
    "ubfx x4, x0, #39, #9",
    "orr x5, x2, #3",
    "str x5, [x1, x4, lsl #3]",
    "ubfx x4, x0, #30, #9",
    "orr x5, x3, #3",
    "str x5, [x2, x4, lsl #3]",
    "ubfx x4, x0, #21, #9",
    "ldr x6, =_end",
    "sub x6, x6, x0",
    "ldr x9, =0x1fffff",
    "add x6, x6, x9",
    "lsr x6, x6, #21",            // 2 MiB blocks to map
    "add x7, x4, x6",
    "cmp x7, #512",
    "b.hi early_hang",
    "ldr x8, ={block}",
    "orr x7, x21, x8",
    "9: str x7, [x3, x4, lsl #3]",
    "add x4, x4, #1",
    "add x7, x7, #0x200000",
    "subs x6, x6, #1",
    "b.ne 9b",

    // TTBR0: identity map of the 1 GiB blocks holding the image and the DTB (at most
    // 2 MiB long), all below 512 GiB.
    "adrp x1, early_ttbr0_l0",
    "adrp x2, early_ttbr0_l1",
    "orr x5, x2, #3",
    "str x5, [x1]",
    "mov x0, x21",
    "bl early_idmap_gib",
    "ldr x0, =_end",
    "ldr x3, =_text",
    "sub x0, x0, x3",
    "add x0, x0, x21",
    "sub x0, x0, #1",
    "bl early_idmap_gib",
    "mov x0, x19",
    "bl early_idmap_gib",
    "add x0, x19, #0x200000",
    "sub x0, x0, #1",
    "bl early_idmap_gib",
    "adrp x0, early_ttbr0_l0",
    "adrp x1, early_tables_end",
    "bl inval_dcache_range",

    // MMU on with the early tables.
    "ldr x0, ={mair}",
    "msr mair_el1, x0",
    "mrs x1, id_aa64mmfr0_el1",
    "and x1, x1, #0xf",           // PARange
    "mov x2, #5",                 // at most 48 bits with 4 KiB descriptors
    "cmp x1, x2",
    "csel x1, x1, x2, ls",
    "ldr x0, ={tcr}",
    "bfi x0, x1, #32, #3",
    "msr tcr_el1, x0",
    "adrp x0, early_ttbr0_l0",
    "msr ttbr0_el1, x0",
    "adrp x0, early_ttbr1_l0",
    "msr ttbr1_el1, x0",
    "isb",
    "tlbi vmalle1",
    "dsb nsh",
    "isb",
    "ldr x0, ={sctlr_el1_on}",
    "msr sctlr_el1, x0",
    "isb",
    "ic iallu",
    "dsb nsh",
    "isb",
    "ldr x8, =primary_high",
    "br x8",

    // early_idmap_gib(x0 = PA): identity-map the 1 GiB block holding x0 in
    // early_ttbr0_l1 (x2). Clobbers x4, x5, x8.
    "early_idmap_gib:",
    "lsr x4, x0, #30",
    "cmp x4, #512",
    "b.hs early_hang",
    "lsl x5, x4, #30",
    "ldr x8, ={block}",
    "orr x5, x5, x8",
    "str x5, [x2, x4, lsl #3]",
    "ret",

    // ---- secondary_entry (PSCI CPU_ON): x0 = PA of the SecondaryBoot block, which the
    // boot CPU cleaned to PoC. ----
    ".global secondary_entry",
    "secondary_entry:",
    "mov x19, x0",
    "bl el2_setup",
    "ldp x1, x2, [x19]",          // ttbr0, ttbr1
    "ldp x3, x4, [x19, #16]",     // tcr, mair
    "ldp x5, x6, [x19, #32]",     // sp, entry
    "ldr x7, [x19, #48]",         // argument
    "msr mair_el1, x4",
    "msr tcr_el1, x3",
    "msr ttbr0_el1, x1",
    "msr ttbr1_el1, x2",
    "isb",
    "tlbi vmalle1",
    "dsb nsh",
    "isb",
    "ldr x8, ={sctlr_el1_on}",
    "msr sctlr_el1, x8",
    "isb",
    "ic iallu",
    "dsb nsh",
    "isb",
    "ldr x8, =secondary_high",
    "br x8",

    // ---- idmap_replace_ttbr1(x0 = new TTBR1, x1 = PA of an empty table): called at its
    // PA through TTBR0, so no TTBR1 mapping is in use while the tables change
    // (break-before-make for the whole half). Uses no stack. ----
    ".global idmap_replace_ttbr1",
    "idmap_replace_ttbr1:",
    "msr ttbr1_el1, x1",
    "isb",
    "tlbi vmalle1",
    "dsb nsh",
    "isb",
    "msr ttbr1_el1, x0",
    "isb",
    "ret",
    ".ltorg",

    // ---- At the KIMAGE VA from here on. ----
    ".section .text.head_high, \"ax\"",
    "primary_high:",
    "adrp x0, boot_stack_top",
    "add x0, x0, :lo12:boot_stack_top",
    "mov sp, x0",
    "adrp x0, el1_vectors",
    "add x0, x0, :lo12:el1_vectors",
    "msr vbar_el1, x0",
    "isb",
    "mov x0, x19",
    "mov x1, x21",
    "mov x2, x20",
    "bl {primary_main}",
    "b early_hang",

    "secondary_high:",
    "mov sp, x5",
    "adrp x8, el1_vectors",
    "add x8, x8, :lo12:el1_vectors",
    "msr vbar_el1, x8",
    "isb",
    "mov x0, x7",
    "blr x6",
    "b early_hang",

    // ---- Early page tables and the boot stack (bss, zeroed above). ----
    ".section .bss.early_tables, \"aw\", %nobits",
    ".balign 4096",
    "early_ttbr0_l0: .space 4096",
    "early_ttbr0_l1: .space 4096",
    "early_ttbr1_l0: .space 4096",
    "early_ttbr1_l1: .space 4096",
    "early_ttbr1_l2: .space 4096",
    "early_tables_end:",
    ".global reserved_pg_dir",
    "reserved_pg_dir: .space 4096",
    ".balign 16",
    "boot_stack: .space {stack_size}",
    "boot_stack_top:",

    set_vectors = const stub::HVC_SET_VECTORS,
    soft_restart = const stub::HVC_SOFT_RESTART,
    reset_vectors = const stub::HVC_RESET_VECTORS,
    finalise_el2 = const stub::HVC_FINALISE_EL2,
    stub_err = const stub::HVC_STUB_ERR,
    sctlr_el2_off = const SCTLR_EL2_MMU_OFF,
    sctlr_el1_off = const SCTLR_EL1_MMU_OFF,
    sctlr_el1_on = const SCTLR_EL1_MMU_ON,
    hcr = const HCR_HOST_NVHE_FLAGS,
    cnthctl = const CNTHCTL_EL2_EL1_ACCESS,
    icc_sre_sre = const ICC_SRE_EL2_SRE,
    icc_sre_enable = const ICC_SRE_EL2_ENABLE,
    cptr = const CPTR_EL2_DEFAULT,
    spsr = const SPSR_EL1H_DAIF_MASKED,
    block = const EARLY_BLOCK_ATTRS,
    cpacr_fpen = const CPACR_EL1_FPEN,
    mair = const MAIR_EL1_VALUE,
    tcr = const TCR_EL1_BASE,
    stack_size = const BOOT_STACK_SIZE,
    primary_main = sym crate::primary_main,
);

/// Stack of the boot CPU.
pub const BOOT_STACK_SIZE: usize = 64 * 1024;

/// The final TTBR1 switch needs an empty table (see `idmap_replace_ttbr1`) and secondary
/// CPUs need their entry's PA; these name the assembly symbols.
pub mod symbols {
    extern "C" {
        /// An all-zero page table (in bss).
        pub static reserved_pg_dir: u8;
        /// The PSCI CPU_ON entry point.
        pub fn secondary_entry();
        /// Swap TTBR1 from the identity map.
        pub fn idmap_replace_ttbr1();
        /// The EL2 stub vector table.
        pub static __hyp_stub_vectors: u8;
    }
}
