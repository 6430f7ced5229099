//! The guest's exception vectors (VBAR_EL1) and what happens on an exception.
//!
//! Every vector saves x0–x30, ELR_EL1 and SPSR_EL1 into a [`Frame`] on the current
//! stack and calls [`handle`]. A synchronous exception the abort tests armed with
//! [`arm`] is recorded and resumed by the armed rule: skip the faulting instruction
//! (ELR += 4) or return to the link register (an instruction fetch made with `blr`).
//! Anything else is fatal: the guest prints what it took and reports failure.

use crate::arch;
use core::arch::global_asm;
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Saved registers, in the layout the assembly below writes.
#[repr(C)]
pub struct Frame {
    /// x0–x30.
    pub x: [u64; 31],
    /// ELR_EL1: where `eret` returns.
    pub elr: u64,
    /// SPSR_EL1.
    pub spsr: u64,
}

const FRAME_SIZE: usize = core::mem::size_of::<Frame>().next_multiple_of(16);
const _: () = assert!(core::mem::size_of::<Frame>() == 33 * 8);

// One 128-byte slot per vector: make room for the frame, save x0/x1, pass the vector
// number in x0. The common part saves the rest, calls Rust, restores ELR/SPSR (which
// the handler may have changed) and all registers, and returns.
macro_rules! vector {
    ($n:literal) => {
        concat!(
            ".balign 0x80\n",
            "sub sp, sp, #{frame}\n",
            "stp x0, x1, [sp]\n",
            "mov x0, #",
            $n,
            "\n",
            "b guest_vector_common\n"
        )
    };
}

global_asm!(
    ".section .text.vectors, \"ax\"",
    ".balign 2048",
    ".global guest_vectors",
    "guest_vectors:",
    vector!(0), vector!(1), vector!(2), vector!(3),
    vector!(4), vector!(5), vector!(6), vector!(7),
    vector!(8), vector!(9), vector!(10), vector!(11),
    vector!(12), vector!(13), vector!(14), vector!(15),
    "guest_vector_common:",
    "    stp x2, x3, [sp, #16]",
    "    stp x4, x5, [sp, #32]",
    "    stp x6, x7, [sp, #48]",
    "    stp x8, x9, [sp, #64]",
    "    stp x10, x11, [sp, #80]",
    "    stp x12, x13, [sp, #96]",
    "    stp x14, x15, [sp, #112]",
    "    stp x16, x17, [sp, #128]",
    "    stp x18, x19, [sp, #144]",
    "    stp x20, x21, [sp, #160]",
    "    stp x22, x23, [sp, #176]",
    "    stp x24, x25, [sp, #192]",
    "    stp x26, x27, [sp, #208]",
    "    stp x28, x29, [sp, #224]",
    "    mrs x2, elr_el1",
    "    mrs x3, spsr_el1",
    "    str x30, [sp, #240]",
    "    stp x2, x3, [sp, #248]",
    "    mov x1, sp",
    "    bl {handler}",
    "    ldp x2, x3, [sp, #248]",
    "    msr elr_el1, x2",
    "    msr spsr_el1, x3",
    "    ldp x0, x1, [sp]",
    "    ldp x2, x3, [sp, #16]",
    "    ldp x4, x5, [sp, #32]",
    "    ldp x6, x7, [sp, #48]",
    "    ldp x8, x9, [sp, #64]",
    "    ldp x10, x11, [sp, #80]",
    "    ldp x12, x13, [sp, #96]",
    "    ldp x14, x15, [sp, #112]",
    "    ldp x16, x17, [sp, #128]",
    "    ldp x18, x19, [sp, #144]",
    "    ldp x20, x21, [sp, #160]",
    "    ldp x22, x23, [sp, #176]",
    "    ldp x24, x25, [sp, #192]",
    "    ldp x26, x27, [sp, #208]",
    "    ldp x28, x29, [sp, #224]",
    "    ldr x30, [sp, #240]",
    "    add sp, sp, #{frame}",
    "    eret",
    frame = const FRAME_SIZE,
    handler = sym handle,
);

/// Installs the vectors on this CPU.
pub fn install() {
    let base: u64;
    // SAFETY: computes a PC-relative address; no memory access.
    unsafe {
        core::arch::asm!(
            "adrp {0}, guest_vectors",
            "add {0}, {0}, :lo12:guest_vectors",
            out(reg) base,
            options(nomem, nostack, pure)
        )
    };
    // SAFETY: `guest_vectors` is the 2 KiB-aligned table above, part of the image.
    unsafe { arch::set_vbar(base) };
}

/// How to resume after the armed exception.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Resume {
    /// ELR += 4: skip the faulting load or store.
    Skip = 1,
    /// ELR = x30: return to the caller of a `blr` to a bad address.
    LinkRegister = 2,
}

/// What the armed exception looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// ESR_EL1.
    pub esr: u64,
    /// FAR_EL1.
    pub far: u64,
    /// ELR_EL1 at the exception.
    pub elr: u64,
    /// Vector number (4 = synchronous, current EL, SP_ELx).
    pub vector: u64,
}

/// Armed resume rule (0 = not armed). The abort tests run on the boot CPU only.
static ARMED: AtomicU8 = AtomicU8::new(0);
static TAKEN_ESR: AtomicU64 = AtomicU64::new(0);
static TAKEN_FAR: AtomicU64 = AtomicU64::new(0);
static TAKEN_ELR: AtomicU64 = AtomicU64::new(0);
/// Vector number + 1 of the recorded exception (0 = none).
static TAKEN_VECTOR: AtomicU64 = AtomicU64::new(0);

/// Expects one synchronous exception, resumed by `how`.
pub fn arm(how: Resume) {
    TAKEN_VECTOR.store(0, Ordering::SeqCst);
    ARMED.store(how as u8, Ordering::SeqCst);
}

/// Disarms and returns what was taken since [`arm`], if anything.
pub fn disarm() -> Option<Taken> {
    ARMED.store(0, Ordering::SeqCst);
    match TAKEN_VECTOR.swap(0, Ordering::SeqCst) {
        0 => None,
        v => Some(Taken {
            esr: TAKEN_ESR.load(Ordering::SeqCst),
            far: TAKEN_FAR.load(Ordering::SeqCst),
            elr: TAKEN_ELR.load(Ordering::SeqCst),
            vector: v - 1,
        }),
    }
}

const VECTOR_NAMES: [&str; 4] = ["synchronous", "IRQ", "FIQ", "SError"];
const VECTOR_ORIGINS: [&str; 4] = [
    "current EL with SP_EL0",
    "current EL with SP_ELx",
    "lower EL (AArch64)",
    "lower EL (AArch32)",
];

/// Called by the vectors with the vector number (0–15) and the saved frame.
extern "C" fn handle(vector: u64, frame: &mut Frame) {
    // IRQ from the current EL (SP_ELx): the interrupt checks' handler.
    if vector == 5 {
        crate::irq::on_irq();
        return;
    }
    let esr = arch::esr();
    let far = arch::far();
    // Only a synchronous exception from this EL can be one the tests caused.
    if vector == 4 {
        let how = ARMED.swap(0, Ordering::SeqCst);
        if how != 0 {
            TAKEN_ESR.store(esr, Ordering::SeqCst);
            TAKEN_FAR.store(far, Ordering::SeqCst);
            TAKEN_ELR.store(frame.elr, Ordering::SeqCst);
            TAKEN_VECTOR.store(vector + 1, Ordering::SeqCst);
            if how == Resume::Skip as u8 {
                frame.elr += 4;
            } else {
                frame.elr = frame.x[30];
            }
            return;
        }
    }
    let v = vector as usize % 16;
    crate::console::print_line_unlocked(format_args!(
        "exception: unexpected {} exception from {} on cpu mpidr={:#x}: ESR_EL1={esr:#x} \
         ELR_EL1={:#x} FAR_EL1={far:#x} SPSR_EL1={:#x}",
        VECTOR_NAMES[v % 4],
        VECTOR_ORIGINS[v / 4],
        arch::my_affinity(),
        frame.elr,
        frame.spsr
    ));
    crate::check::fail();
    crate::run::finish()
}
