//! Host interrupt handling at EL1: the IRQ vector and the dispatch of the few
//! interrupts the host enables ([`super::gic`]).
//!
//! The host runs with PSTATE.I set. It takes interrupts only in a [`window`]: the VMM's
//! run loop opens one after every exit of a guest (an IRQ that arrived while the guest
//! ran ended the run at EL2 without being acknowledged, and stays pending) and after
//! waking from WFI. A CPU waiting in WFI with interrupts masked still wakes when one is
//! pending, so masked waiting never loses a kick.
//!
//! # Vectors
//!
//! The IRQ and FIQ entries of "current EL with SP_ELx" in the one EL1 vector table
//! (`arch::exceptions`) branch to `host_irq_entry`, which saves every caller-saved
//! register (x0–x18, x29, x30, the caller-saved SIMD registers, FPSR/FPCR, ELR/SPSR) and
//! calls [`handle_pending`]; every other entry reports an unexpected exception.
//!
//! # Dispatch
//!
//! | INTID | what | handler |
//! | --- | --- | --- |
//! | [`gic::SGI_KICK`](super::gic::SGI_KICK) | another CPU wants this one to look at its mailbox | counts it; the waking is the point |
//! | [`timer::INTID`](super::timer::INTID) | the host's tick | disarms the one-shot timer |
//! | 27, 25 | the guest's virtual timer (physical PPI) and the GIC maintenance interrupt: they only end a guest run | counted |
//! | anything else | not enabled by the host | counted as unexpected and disabled nowhere else: EOI only |
//!
//! Nothing here prints: an interrupted CPU may hold the console lock.

use super::{gic, timer};
use core::sync::atomic::{AtomicU64, Ordering};

/// Interrupts handled per kind, all CPUs together (for the logs).
pub struct IrqCounts {
    /// Kick SGIs.
    pub kicks: AtomicU64,
    /// Timer ticks.
    pub ticks: AtomicU64,
    /// The guest's interrupts taken by the host: the virtual timer's physical PPI and
    /// the GIC maintenance interrupt (both end a guest run; the VMM acts on the exit).
    pub guest: AtomicU64,
    /// Interrupts the host did not expect.
    pub unexpected: AtomicU64,
}

/// The counters.
pub static COUNTS: IrqCounts = IrqCounts {
    kicks: AtomicU64::new(0),
    ticks: AtomicU64::new(0),
    guest: AtomicU64::new(0),
    unexpected: AtomicU64::new(0),
};

/// Acknowledges and handles every pending interrupt; returns how many there were.
/// Called from the IRQ vector, and usable with interrupts masked (polling).
pub extern "C" fn handle_pending() -> u64 {
    let mut n = 0;
    loop {
        let intid = gic::ack();
        if intid >= gic::SPECIAL_INTID {
            return n;
        }
        n += 1;
        match intid {
            gic::SGI_KICK => {
                COUNTS.kicks.fetch_add(1, Ordering::Relaxed);
            }
            timer::INTID => {
                timer::on_interrupt();
                COUNTS.ticks.fetch_add(1, Ordering::Relaxed);
            }
            el1_host::vmm::vgic::INTID_VTIMER | el1_host::vmm::vgic::INTID_MAINTENANCE => {
                COUNTS.guest.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                COUNTS.unexpected.fetch_add(1, Ordering::Relaxed);
            }
        }
        gic::eoi(intid);
    }
}

/// Lets pending interrupts in for a moment: unmask IRQs, synchronise (a pending IRQ is
/// taken here), mask again.
#[inline(always)]
pub fn window() {
    // SAFETY: the IRQ vector saves and restores everything the interrupted code can
    // hold (see the module documentation), so taking an interrupt between the two DAIF
    // writes is invisible to the caller apart from the handlers' effects.
    unsafe {
        core::arch::asm!(
            "msr daifclr, #2",
            "isb",
            "msr daifset, #2",
            options(nostack)
        )
    };
}

/// Waits for an interrupt (WFI with interrupts masked: a pending one wakes the CPU),
/// then handles what is pending.
pub fn wait_for_interrupt() {
    // SAFETY: WFI only pauses the CPU until an interrupt is pending or another wake-up
    // event; no memory or register state changes.
    unsafe { core::arch::asm!("dsb sy", "wfi", options(nostack, preserves_flags)) };
    window();
}

/// Bytes the IRQ entry saves: x0–x18 (19), x29, x30, ELR, SPSR, FPSR, FPCR → 25 words,
/// padded to 208; then q0–q7 and q16–q31 (24 × 16 = 384).
const FRAME: usize = 208 + 384;
const _: () = assert!(FRAME.is_multiple_of(16));

core::arch::global_asm!(
    ".section .text.host_irq_entry, \"ax\"",
    ".balign 128",
    ".global host_irq_entry",
    "host_irq_entry:",
    "sub sp, sp, #{frame}",
    "stp x0, x1, [sp, #0]",
    "stp x2, x3, [sp, #16]",
    "stp x4, x5, [sp, #32]",
    "stp x6, x7, [sp, #48]",
    "stp x8, x9, [sp, #64]",
    "stp x10, x11, [sp, #80]",
    "stp x12, x13, [sp, #96]",
    "stp x14, x15, [sp, #112]",
    "stp x16, x17, [sp, #128]",
    "stp x18, x29, [sp, #144]",
    "mrs x0, elr_el1",
    "mrs x1, spsr_el1",
    "stp x30, x0, [sp, #160]",
    "mrs x2, fpsr",
    "mrs x3, fpcr",
    "stp x1, x2, [sp, #176]",
    "str x3, [sp, #192]",
    "add x0, sp, #208",
    "stp q0, q1, [x0, #0]",
    "stp q2, q3, [x0, #32]",
    "stp q4, q5, [x0, #64]",
    "stp q6, q7, [x0, #96]",
    "stp q16, q17, [x0, #128]",
    "stp q18, q19, [x0, #160]",
    "stp q20, q21, [x0, #192]",
    "stp q22, q23, [x0, #224]",
    "stp q24, q25, [x0, #256]",
    "stp q26, q27, [x0, #288]",
    "stp q28, q29, [x0, #320]",
    "stp q30, q31, [x0, #352]",
    "bl {handler}",
    "add x0, sp, #208",
    "ldp q0, q1, [x0, #0]",
    "ldp q2, q3, [x0, #32]",
    "ldp q4, q5, [x0, #64]",
    "ldp q6, q7, [x0, #96]",
    "ldp q16, q17, [x0, #128]",
    "ldp q18, q19, [x0, #160]",
    "ldp q20, q21, [x0, #192]",
    "ldp q22, q23, [x0, #224]",
    "ldp q24, q25, [x0, #256]",
    "ldp q26, q27, [x0, #288]",
    "ldp q28, q29, [x0, #320]",
    "ldp q30, q31, [x0, #352]",
    "ldp x1, x2, [sp, #176]",
    "ldr x3, [sp, #192]",
    "msr spsr_el1, x1",
    "msr fpsr, x2",
    "msr fpcr, x3",
    "ldp x30, x0, [sp, #160]",
    "msr elr_el1, x0",
    "ldp x0, x1, [sp, #0]",
    "ldp x2, x3, [sp, #16]",
    "ldp x4, x5, [sp, #32]",
    "ldp x6, x7, [sp, #48]",
    "ldp x8, x9, [sp, #64]",
    "ldp x10, x11, [sp, #80]",
    "ldp x12, x13, [sp, #96]",
    "ldp x14, x15, [sp, #112]",
    "ldp x16, x17, [sp, #128]",
    "ldp x18, x29, [sp, #144]",
    "add sp, sp, #{frame}",
    "eret",
    frame = const FRAME,
    handler = sym handle_pending,
);
