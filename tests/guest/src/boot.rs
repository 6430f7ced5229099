//! Entry code: the Image header placeholder, the boot CPU's self-relocation and `.bss`
//! clearing, the per-CPU stacks, and the secondary entry that PSCI CPU_ON jumps to.
//!
//! The guest is a static PIE linked at 0 and entered, MMU off, wherever the boot loader
//! put it. Until `.rela.dyn` is applied, only PC-relative code may run, so relocation
//! and `.bss` clearing are assembly; Rust starts afterwards on the CPU's own stack.

use core::arch::{asm, global_asm};

/// CPUs the guest can run (stack slots); a DTB with more is tested on the first ones.
pub const MAX_CPUS: usize = 8;
/// Stack bytes per CPU.
pub const STACK_SIZE: usize = 16 * 1024;
/// ELF relocation type the entry code applies (the only one xtask accepts).
const R_AARCH64_RELATIVE: u64 = 1027;
/// CPACR_EL1.FPEN = 0b11: FP/SIMD does not trap (the compiler uses SIMD registers).
const CPACR_FPEN: u64 = 3 << 20;

#[repr(C, align(16))]
struct Stacks([[u8; STACK_SIZE]; MAX_CPUS]);

/// Per-CPU stacks, slot `n` for the CPU started with context id `n` in its low byte.
/// Zero-initialised, so it lives in `.bss`; only the entry code touches it (through `sym`).
static mut STACKS: Stacks = Stacks([[0; STACK_SIZE]; MAX_CPUS]);

// Register use before Rust runs: x19 = DTB or context id, x20 = stack slot.
global_asm!(
    // The boot loader reads the header here; xtask fills it in.
    ".section .head.text, \"ax\"",
    ".global __guest_header",
    "__guest_header:",
    ".space 64",
    "",
    ".section .text.boot, \"ax\"",
    ".global guest_entry",
    "guest_entry:",
    "    mov x19, x0",
    // Apply R_AARCH64_RELATIVE: *(base + offset) = base + addend.
    "    adrp x9, __image_start",
    "    add x9, x9, :lo12:__image_start",
    "    adrp x10, __rela_start",
    "    add x10, x10, :lo12:__rela_start",
    "    adrp x11, __rela_end",
    "    add x11, x11, :lo12:__rela_end",
    "1:  cmp x10, x11",
    "    b.hs 2f",
    "    ldp x12, x13, [x10], #16",
    "    ldr x14, [x10], #8",
    "    cmp x13, #{rel}",
    "    b.ne 1b",
    "    add x14, x14, x9",
    "    str x14, [x9, x12]",
    "    b 1b",
    // Clear .bss (16-byte aligned at both ends by the linker script).
    "2:  adrp x10, __bss_start",
    "    add x10, x10, :lo12:__bss_start",
    "    adrp x11, __bss_end",
    "    add x11, x11, :lo12:__bss_end",
    "3:  cmp x10, x11",
    "    b.hs 4f",
    "    stp xzr, xzr, [x10], #16",
    "    b 3b",
    "4:  mov x20, #0",
    "    bl guest_cpu_setup",
    "    mov x0, x19",
    "    bl {primary}",
    "5:  wfe",
    "    b 5b",
    "",
    // PSCI CPU_ON target: x0 = context id, its low byte the stack slot.
    ".global guest_secondary_entry",
    "guest_secondary_entry:",
    "    mov x19, x0",
    "    and x20, x0, #0xff",
    "    cmp x20, #{max_cpus}",
    "    b.hs 5b",
    "    bl guest_cpu_setup",
    "    mov x0, x19",
    "    bl {secondary}",
    "    b 5b",
    "",
    // x20 = stack slot: EL1h, FP/SIMD on, SP at the top of the slot's stack.
    "guest_cpu_setup:",
    "    msr spsel, #1",
    "    mov x9, #{fpen}",
    "    msr cpacr_el1, x9",
    "    isb",
    "    adrp x9, {stacks}",
    "    add x9, x9, :lo12:{stacks}",
    "    add x10, x20, #1",
    "    mov x11, #{stack_size}",
    "    madd x9, x10, x11, x9",
    "    mov sp, x9",
    "    mov x29, xzr",
    "    ret",
    rel = const R_AARCH64_RELATIVE,
    max_cpus = const MAX_CPUS,
    fpen = const CPACR_FPEN,
    stack_size = const STACK_SIZE,
    stacks = sym STACKS,
    primary = sym crate::run::primary_main,
    secondary = sym crate::smp::secondary_main,
);

/// The address the guest runs at (its first byte, the Image header).
pub fn image_start() -> u64 {
    let a: u64;
    // SAFETY: computes a PC-relative address; no memory access.
    unsafe {
        asm!(
            "adrp {0}, __image_start",
            "add {0}, {0}, :lo12:__image_start",
            out(reg) a,
            options(nomem, nostack, pure)
        )
    };
    a
}

/// The first byte after the guest's `.bss` (and stacks).
pub fn image_end() -> u64 {
    let a: u64;
    // SAFETY: computes a PC-relative address; no memory access.
    unsafe {
        asm!(
            "adrp {0}, __image_end",
            "add {0}, {0}, :lo12:__image_end",
            out(reg) a,
            options(nomem, nostack, pure)
        )
    };
    a
}

/// The physical address of the secondary entry (MMU off: PA = VA), for PSCI CPU_ON.
pub fn secondary_entry() -> u64 {
    let a: u64;
    // SAFETY: computes a PC-relative address; no memory access.
    unsafe {
        asm!(
            "adrp {0}, guest_secondary_entry",
            "add {0}, {0}, :lo12:guest_secondary_entry",
            out(reg) a,
            options(nomem, nostack, pure)
        )
    };
    a
}
