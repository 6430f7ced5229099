//! The EL1 exception vectors. The IRQ and FIQ entries of "current EL with SP_ELx" go to
//! the host's interrupt entry (`arch::irq`; the host takes interrupts only in short
//! windows). The host expects no other exception at all, so every other entry saves the
//! registers, and [`el1_exception`] prints them with the syndrome and ends the run with a
//! failing status (never a silent hang).

use crate::println;
use el1_host::status::ExitStatus;

/// General-purpose registers as the vector entry saves them.
#[repr(C)]
pub struct Frame {
    /// x0..x30.
    pub x: [u64; 31],
    _pad: u64,
}

const KINDS: [&str; 16] = [
    "sync EL1t",
    "irq EL1t",
    "fiq EL1t",
    "serror EL1t",
    "sync EL1h",
    "irq EL1h",
    "fiq EL1h",
    "serror EL1h",
    "sync EL0/64",
    "irq EL0/64",
    "fiq EL0/64",
    "serror EL0/64",
    "sync EL0/32",
    "irq EL0/32",
    "fiq EL0/32",
    "serror EL0/32",
];

core::arch::global_asm!(
    ".macro el1_vector kind",
    ".balign 128",
    "sub sp, sp, #256",
    "stp x0, x1, [sp]",
    "mov x0, #\\kind",
    "b el1_exception_common",
    ".endm",
    ".macro el1_vector_irq",
    ".balign 128",
    "b host_irq_entry",
    ".endm",

    ".section .text.el1_vectors, \"ax\"",
    ".balign 2048",
    ".global el1_vectors",
    "el1_vectors:",
    "el1_vector 0", "el1_vector 1", "el1_vector 2", "el1_vector 3",
    "el1_vector 4", "el1_vector_irq", "el1_vector_irq", "el1_vector 7",
    "el1_vector 8", "el1_vector 9", "el1_vector 10", "el1_vector 11",
    "el1_vector 12", "el1_vector 13", "el1_vector 14", "el1_vector 15",
    ".balign 128",
    "el1_exception_common:",
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
    "mov x1, sp",
    "bl {handler}",
    "1: wfe",
    "b 1b",
    handler = sym el1_exception,
);

/// Reports an unexpected exception and stops the machine with a failing status.
extern "C" fn el1_exception(kind: u64, frame: &Frame) -> ! {
    use super::sysreg::{elr_el1, esr_el1, far_el1, spsr_el1};
    let name = KINDS.get(kind as usize).copied().unwrap_or("?");
    let esr = esr_el1();
    println!(
        "exception: {name} on cpu mpidr={:#x}: esr={esr:#x} (ec={:#x}) elr={:#x} far={:#x} spsr={:#x}",
        super::sysreg::mpidr_el1() & el1_host::bootinfo::MPIDR_HWID_MASK,
        esr >> 26,
        elr_el1(),
        far_el1(),
        spsr_el1()
    );
    for (i, pair) in frame.x.chunks(2).enumerate() {
        match pair {
            [a, b] => println!("  x{:<2} {a:#018x}  x{:<2} {b:#018x}", 2 * i, 2 * i + 1),
            [a] => println!("  x{:<2} {a:#018x}", 2 * i),
            _ => {}
        }
    }
    crate::exit(ExitStatus::UnexpectedException)
}
