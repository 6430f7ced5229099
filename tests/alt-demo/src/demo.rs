//! The demo functions (AArch64 only).

use shared::alternative::{final_ctr_el0, kern_hyp_va, kimage_voffset};
use shared::cpucaps::Cap;
use shared::{alternative, cap_likely, cap_unlikely};

/// Where a check goes when it reads `true`. Opaque to the optimiser, so every check keeps
/// both outcomes as separate code.
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_true_path() -> u64 {
    core::hint::black_box(1)
}

/// Where a check goes when it reads `false`.
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_false_path() -> u64 {
    core::hint::black_box(0)
}

/// A likely check: `b` to the false path until the LSE-atomics pass NOPs it.
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_likely() -> u64 {
    if cap_likely!(Cap::HasLseAtomics) {
        alt_demo_true_path()
    } else {
        alt_demo_false_path()
    }
}

/// An unlikely check: `nop` until the PAN pass replaces it with `b` to the true path.
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_unlikely() -> u64 {
    if cap_unlikely!(Cap::HasPan) {
        alt_demo_true_path()
    } else {
        alt_demo_false_path()
    }
}

/// `system_capabilities_finalized()`: a likely check of `ALWAYS_SYSTEM`.
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_finalized() -> u64 {
    if shared::alternative::system_capabilities_finalized() {
        alt_demo_true_path()
    } else {
        alt_demo_false_path()
    }
}

/// A plain alternative without operands: speculation barrier `dsb nsh; isb`, replaced by
/// `sb; nop` when the CPUs have SB.
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_plain_barrier() {
    // SAFETY: barriers only; no memory, stack or flags are touched.
    unsafe {
        alternative!(
            cap = Cap::HasSb,
            default = ["dsb nsh", "isb"],
            // `sb` needs a target feature the assembler is not given; its encoding is fixed.
            replacement = [".inst 0xd50330ff // sb", "nop"],
            options(nostack, preserves_flags),
        )
    }
}

/// A plain alternative with positional and named register operands: `x + 1` by default,
/// `x - 1` once patched (arbitrary arithmetic, to show operands in both halves).
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_plain_operands(x: u64) -> u64 {
    let y: u64;
    // SAFETY: register arithmetic only.
    unsafe {
        alternative!(
            cap = Cap::HasCrc32,
            default = ["add {0}, {x}, #1"],
            replacement = ["sub {0}, {x}, #1"],
            lateout(reg) y,
            x = in(reg) x,
            options(pure, nomem, nostack, preserves_flags)
        )
    }
    y
}

/// A `kern_hyp_va` callback site (five instructions on one register).
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_kern_hyp_va(va: u64) -> u64 {
    kern_hyp_va(va)
}

/// A MOVZ/MOVK×3 callback site for the final CTR_EL0.
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_final_ctr_el0() -> u64 {
    final_ctr_el0()
}

/// A MOVZ/MOVK×3 callback site for kimage_voffset.
#[no_mangle]
#[inline(never)]
pub extern "C" fn alt_demo_kimage_voffset() -> u64 {
    kimage_voffset()
}
