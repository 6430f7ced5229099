//! The host's tick: the EL1 physical timer (CNTP_*_EL0, PPI 14 = INTID 30).
//!
//! The host uses the physical timer, as Linux does when it may run guests, because the
//! virtual timer belongs to the guest (the hyp switches CNTV_* with the vCPU context
//! and traps the guest's access to CNTP_*). The timer is one-shot: [`arm_in`] before
//! entering a guest, the interrupt handler disables it ([`on_interrupt`]), and the run
//! loop checks its deadlines and re-arms.

/// INTID of the EL1 physical timer (PPI 14).
pub const INTID: u32 = 30;

/// CNTP_CTL_EL0.ENABLE.
const CTL_ENABLE: u64 = 1 << 0;

/// Counter frequency in Hz (never 0).
pub fn frequency() -> u64 {
    super::sysreg::cntfrq_el0().max(1)
}

/// The physical counter, which the physical timer compares against.
#[inline(always)]
pub fn now() -> u64 {
    let v: u64;
    // SAFETY: EL2 lets EL1 read the physical counter (CNTHCTL_EL2.EL1PCTEN, set at boot);
    // the ISB orders the read after earlier instructions, as a deadline check wants.
    unsafe {
        core::arch::asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

fn write_ctl(v: u64) {
    // SAFETY: CNTP_CTL_EL0 at EL1 is allowed by CNTHCTL_EL2.EL1PCEN (set at boot); it only
    // controls this CPU's timer interrupt.
    unsafe {
        core::arch::asm!("msr cntp_ctl_el0, {}", "isb", in(reg) v, options(nomem, nostack, preserves_flags))
    };
}

fn read_ctl() -> u64 {
    let v: u64;
    // SAFETY: as for `write_ctl`; a read has no side effect.
    unsafe {
        core::arch::asm!("mrs {}, cntp_ctl_el0", out(reg) v, options(nomem, nostack, preserves_flags))
    };
    v
}

/// Fires the timer interrupt `ticks` counter ticks from now (replacing any earlier one).
pub fn arm_in(ticks: u64) {
    let cval = now().saturating_add(ticks);
    // SAFETY: as for `write_ctl`; CNTP_CVAL_EL0 is this CPU's compare value.
    unsafe {
        core::arch::asm!("msr cntp_cval_el0, {}", in(reg) cval, options(nomem, nostack, preserves_flags))
    };
    write_ctl(CTL_ENABLE);
}

/// Fires the timer interrupt when the physical count reaches `cval` (at once if it
/// has), replacing any earlier one.
pub fn arm_at(cval: u64) {
    // SAFETY: as for `write_ctl`; CNTP_CVAL_EL0 is this CPU's compare value.
    unsafe {
        core::arch::asm!("msr cntp_cval_el0, {}", in(reg) cval, options(nomem, nostack, preserves_flags))
    };
    write_ctl(CTL_ENABLE);
}

/// Whether the timer is armed (enabled and not yet fired-and-disabled).
#[inline(always)]
pub fn armed() -> bool {
    read_ctl() & CTL_ENABLE != 0
}

/// Turns the timer off (its interrupt, level-sensitive, drops).
pub fn disarm() {
    write_ctl(0);
}

/// The interrupt handler's part: the tick is one-shot, so it is disabled; whoever
/// waits on a deadline re-reads the counter and re-arms.
pub fn on_interrupt() {
    disarm();
}
