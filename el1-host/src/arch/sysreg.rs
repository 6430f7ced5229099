//! System-register reads the kernel needs, each a one-instruction `mrs`.

macro_rules! read_sysreg {
    ($(#[$doc:meta])* $fn:ident, $reg:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub fn $fn() -> u64 {
            let v: u64;
            // SAFETY: reading this register at EL1 has no side effects and is permitted
            // (EL2 set up at boot does not trap it).
            unsafe {
                core::arch::asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags));
            }
            v
        }
    };
}

read_sysreg!(
    /// MPIDR_EL1: this CPU's affinity.
    mpidr_el1, "mpidr_el1");
read_sysreg!(
    /// MIDR_EL1: implementer, part and revision.
    midr_el1, "midr_el1");
read_sysreg!(
    /// CNTVCT_EL0: the virtual counter.
    cntvct_el0, "cntvct_el0");
read_sysreg!(
    /// CNTFRQ_EL0: counter frequency in Hz.
    cntfrq_el0, "cntfrq_el0");
read_sysreg!(
    /// TCR_EL1: translation control.
    tcr_el1, "tcr_el1");
read_sysreg!(
    /// MAIR_EL1: memory attributes.
    mair_el1, "mair_el1");
read_sysreg!(
    /// TTBR0_EL1.
    ttbr0_el1, "ttbr0_el1");
read_sysreg!(
    /// TTBR1_EL1.
    ttbr1_el1, "ttbr1_el1");
read_sysreg!(
    /// ESR_EL1: syndrome of the last exception.
    esr_el1, "esr_el1");
read_sysreg!(
    /// ELR_EL1: return address of the last exception.
    elr_el1, "elr_el1");
read_sysreg!(
    /// FAR_EL1: faulting address of the last abort.
    far_el1, "far_el1");
read_sysreg!(
    /// SPSR_EL1: saved state of the last exception.
    spsr_el1, "spsr_el1");
read_sysreg!(
    /// SCTLR_EL1: system control.
    sctlr_el1, "sctlr_el1");
read_sysreg!(
    /// CTR_EL0: cache type.
    ctr_el0, "ctr_el0");

/// Seconds and microseconds since the counter started (for log timestamps).
pub fn uptime() -> (u64, u32) {
    let freq = cntfrq_el0().max(1);
    let ticks = cntvct_el0();
    let secs = ticks / freq;
    let micros = ((ticks % freq) * 1_000_000 / freq) as u32;
    (secs, micros)
}

/// Waits for an event (or a spurious wake-up).
#[inline(always)]
pub fn wfe() {
    // SAFETY: WFE only pauses the CPU.
    unsafe { core::arch::asm!("wfe", options(nomem, nostack, preserves_flags)) }
}

/// Loads from VA 0, which no table maps, to take a data abort on purpose
/// (`host.test_fault=abort`). The exception handler reports it and stops the machine.
pub fn fault_by_unmapped_load() {
    // SAFETY: the load faults before it can return a value; the abort is fatal by design
    // (see `arch::exceptions`), so no Rust state is observed afterwards.
    unsafe {
        core::arch::asm!("ldr {tmp}, [{tmp}]", tmp = inout(reg) 0u64 => _, options(nostack, readonly))
    };
}
