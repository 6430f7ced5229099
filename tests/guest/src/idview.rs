//! The CPU the hypervisor shows the guest must be consistent: ID_AA64PFR0_EL1 must not
//! advertise SVE (the world switch does not carry SVE state), and an SVE instruction or
//! an SVE system-register access must then behave as on a CPU without SVE — an
//! Undefined Instruction exception (ESR_EL1.EC = 0, IL = 1, ELR_EL1 = the instruction),
//! which the guest survives by skipping it.
//!
//! The same for the PMU (PMUVer = 0: PMCR_EL0 is an Undefined Instruction), while the
//! OS lock that Linux's debug-monitor setup clears works (OSLSR_EL1 reads "unlocked").
//!
//! Only under this project's hypervisor (NULL_HVC answered): on bare QEMU `-cpu max`
//! the CPU really has SVE and the instructions work. CPACR_EL1.ZEN is opened for the
//! test so that EL1's own SVE trap (EC 0x19 to EL1) does not hide what EL2 does.

use crate::exceptions::{self, Resume};
use core::arch::asm;

/// CPACR_EL1.ZEN (bits 17:16): SVE not trapped at EL1/EL0.
const CPACR_ZEN: u64 = 3 << 16;

/// Runs the checks (boot CPU).
pub fn run() {
    if !crate::psci::hypervisor_channel() {
        crate::println!("idregs: not under this project's hypervisor: SVE checks not run");
        return;
    }
    let pfr0: u64;
    // SAFETY: reading an ID register has no side effects (it may trap to the VMM).
    unsafe { asm!("mrs {}, id_aa64pfr0_el1", out(reg) pfr0, options(nomem, nostack)) };
    let sve = (pfr0 >> 32) & 0xf;
    crate::check!(
        sve == 0,
        "idregs: ID_AA64PFR0_EL1={pfr0:#x} SVE={sve} (want 0 under the hypervisor)"
    );

    let cpacr: u64;
    // SAFETY: CPACR_EL1 is this guest's own; opening ZEN only changes whether SVE
    // instructions trap at EL1, and it is restored below.
    unsafe {
        asm!("mrs {0}, cpacr_el1", "orr {1}, {0}, #{zen}", "msr cpacr_el1, {1}", "isb",
             out(reg) cpacr, out(reg) _, zen = const CPACR_ZEN, options(nostack))
    };
    undef("SVE rdvl x0, #1", |pc| {
        // SAFETY: expected to raise an Undefined Instruction exception; the armed
        // handler skips it. If it executed, it would only write x0 (declared).
        unsafe {
            asm!("adr {pc}, 1f", "1: .inst 0x04bf5020",
                 pc = out(reg) *pc, out("x0") _, options(nostack))
        }
    });
    undef("mrs ZCR_EL1", |pc| {
        // SAFETY: as above; `mrs` of ZCR_EL1 (s3_0_c1_c2_0) writes only x0.
        unsafe {
            asm!("adr {pc}, 1f", "1: mrs x0, s3_0_c1_c2_0",
                 pc = out(reg) *pc, out("x0") _, options(nostack))
        }
    });
    // SAFETY: restores the value read above.
    unsafe { asm!("msr cpacr_el1, {}", "isb", in(reg) cpacr, options(nostack)) };

    // No PMU is shown (PMUVer = 0) and the hypervisor traps the real one: a PMU
    // register access is an Undefined Instruction.
    undef("mrs PMCR_EL0", |pc| {
        // SAFETY: expected to raise an Undefined Instruction exception; the armed
        // handler skips it. If it executed, it would only write x0 (declared).
        unsafe {
            asm!("adr {pc}, 1f", "1: mrs x0, pmcr_el0",
                 pc = out(reg) *pc, out("x0") _, options(nostack))
        }
    });
    os_lock();
}

/// Clears the OS lock and reads its status, as Linux's debug-monitor setup does: the
/// hypervisor traps both and must complete them without an exception, reporting the
/// lock as implemented and unlocked (OSLSR_EL1 = 0x8).
fn os_lock() {
    let oslsr: u64;
    exceptions::arm(Resume::Skip);
    // SAFETY: OSLAR_EL1/OSLSR_EL1 are this guest's own debug registers; writing 0
    // unlocks the OS lock, which only enables debug features the guest does not use.
    unsafe {
        asm!("msr oslar_el1, xzr", "isb", "mrs {}, oslsr_el1",
             out(reg) oslsr, options(nostack))
    };
    let taken = exceptions::disarm();
    crate::check!(
        taken.is_none() && oslsr == 0x8,
        "idregs: OSLAR_EL1=0, OSLSR_EL1={oslsr:#x} (want 0x8), exception: {}",
        match taken {
            Some(t) => t.esr,
            None => 0,
        }
    );
}

/// Runs `insn` (which stores its own address through the argument) and checks that it
/// raised an Undefined Instruction exception at that address.
fn undef(name: &str, insn: impl FnOnce(&mut u64)) {
    let mut pc = 0u64;
    exceptions::arm(Resume::Skip);
    insn(&mut pc);
    let Some(t) = exceptions::disarm() else {
        crate::check!(false, "idregs: {name}: executed, no exception taken");
        return;
    };
    let ec = (t.esr >> 26) & 0x3f;
    let il = (t.esr >> 25) & 1;
    crate::check!(
        t.vector == 4 && ec == 0 && il == 1 && t.elr == pc,
        "idregs: {name} -> undefined instruction: vector={} ESR_EL1={:#x} EC={ec:#x} IL={il} \
         ELR_EL1=insn+{:#x} skipped",
        t.vector,
        t.esr,
        t.elr.wrapping_sub(pc)
    );
}
