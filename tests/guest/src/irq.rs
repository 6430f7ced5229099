//! Interrupt checks in the style of the GIC test programs, on QEMU virt's GICv3 (the
//! hypervisor's virtual one, or QEMU's own on bare QEMU — the same checks must pass on
//! both): the distributor and this CPU's redistributor identify as a GICv3, an SGI to
//! self arrives once and is acknowledged and EOI'd, the priority mask holds back a
//! less urgent SGI until it is raised, an interrupt stays active until EOI, the virtual
//! and the EL1 physical timers interrupt at (not before) their deadlines, and WFI with
//! interrupts masked wakes for a timer interrupt.
//!
//! The IRQ vector calls [`on_irq`]: it acknowledges (ICC_IAR1_EL1), records the INTID
//! and the counter, quietens a timer (its CTL gets IMASK), and EOIs unless asked to
//! hold the interrupt active.

use crate::arch::{self, wait_until};
use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};

/// QEMU virt's distributor and first redistributor.
const GICD: usize = 0x0800_0000;
const GICR: usize = 0x080a_0000;
const GICR_STRIDE: usize = 0x2_0000;
const SGI_BASE: usize = 0x1_0000;
/// INTIDs used.
const SGI_SELF: u32 = 1;
const SGI_MASKED: u32 = 2;
const PPI_PTIMER: u32 = 30;
const PPI_VTIMER: u32 = 27;
/// The SGI of the IPI round trips between CPUs (`smp.rs`).
pub const SGI_IPI: u32 = 3;
/// The priority the checks give their interrupts.
const PRIO: u8 = 0xa0;

macro_rules! sysreg_rw {
    ($read:ident, $write:ident, $enc:literal) => {
        #[allow(dead_code)]
        fn $read() -> u64 {
            let v: u64;
            // SAFETY: a GIC CPU-interface or timer register at EL1 (QEMU virt has a
            // GICv3 with the system-register interface); a read has no side effect
            // except for IAR, which the caller means.
            unsafe { asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nostack)) };
            v
        }
        #[allow(dead_code)]
        fn $write(v: u64) {
            // SAFETY: as for the read; the values written are the ones the GICv3 and
            // generic-timer specifications define for these checks.
            unsafe { asm!(concat!("msr ", $enc, ", {}"), "isb", in(reg) v, options(nostack)) };
        }
    };
}

sysreg_rw!(pmr, set_pmr, "s3_0_c4_c6_0");
sysreg_rw!(iar1, set_iar1, "s3_0_c12_c12_0");
sysreg_rw!(eoir1, set_eoir1, "s3_0_c12_c12_1");
sysreg_rw!(bpr1, set_bpr1, "s3_0_c12_c12_3");
sysreg_rw!(sre, set_sre, "s3_0_c12_c12_5");
sysreg_rw!(igrpen1, set_igrpen1, "s3_0_c12_c12_7");
sysreg_rw!(sgi1r, set_sgi1r, "s3_0_c12_c11_5");
sysreg_rw!(cntv_ctl, set_cntv_ctl, "cntv_ctl_el0");
sysreg_rw!(cntv_cval, set_cntv_cval, "cntv_cval_el0");
sysreg_rw!(cntp_ctl, set_cntp_ctl, "cntp_ctl_el0");
sysreg_rw!(cntp_cval, set_cntp_cval, "cntp_cval_el0");
sysreg_rw!(cntpct, set_cntpct, "cntpct_el0");
sysreg_rw!(isr, set_isr, "isr_el1");

fn read32(addr: usize) -> u32 {
    // SAFETY: a GIC register of QEMU virt's map (device memory: the MMU is off).
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn write32(addr: usize, v: u32) {
    // SAFETY: as for `read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

fn read64(addr: usize) -> u64 {
    // SAFETY: as for `read32` (GICR_TYPER allows 64-bit reads).
    unsafe { core::ptr::read_volatile(addr as *const u64) }
}

fn write8(addr: usize, v: u8) {
    // SAFETY: as for `read32` (IPRIORITYR is byte-accessible).
    unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
}

/// Unmasks IRQs on this CPU.
pub fn unmask_irqs() {
    // SAFETY: the IRQ vector handles interrupts (`on_irq`).
    unsafe { asm!("msr daifclr, #2", "isb", options(nostack)) };
}

/// Masks IRQs on this CPU.
pub fn mask_irqs() {
    // SAFETY: masking IRQs has no other effect.
    unsafe { asm!("msr daifset, #2", options(nostack)) };
}

fn wfi() {
    // SAFETY: waits for an interrupt; no memory or register effects.
    unsafe { asm!("dsb sy", "wfi", options(nostack)) };
}

/// The last INTID taken, how many were taken, and the counter when the last arrived.
static LAST: AtomicU32 = AtomicU32::new(1023);
static TAKEN: AtomicU32 = AtomicU32::new(0);
static AT: AtomicU64 = AtomicU64::new(0);
/// Leave the next interrupt active (no EOI) instead of ending it.
static HOLD: AtomicBool = AtomicBool::new(false);
/// INTID held active by [`HOLD`].
static HELD: AtomicU32 = AtomicU32::new(1023);

/// IPIs received, by the receiving CPU's Aff0.
static IPIS: [AtomicU32; 16] = [const { AtomicU32::new(0) }; 16];
/// Who a CPU other than it answers an IPI to (0 = nobody: MPIDR affinity 0 is the boot
/// CPU, which never answers, so the value also names it).
static REPLY_TO: AtomicU64 = AtomicU64::new(u64::MAX);

/// IPIs the CPU with affinity `mpidr` has received.
pub fn ipis(mpidr: u64) -> u32 {
    IPIS[(mpidr & 0xf) as usize].load(SeqCst)
}

/// Makes every other CPU answer an IPI with one back to `mpidr`.
pub fn reply_to(mpidr: u64) {
    REPLY_TO.store(mpidr, SeqCst);
}

/// The IRQ vector's handler: acknowledge, record, quieten timers, EOI.
pub fn on_irq() {
    let intid = (iar1() & 0xff_ffff) as u32;
    if intid >= 1020 {
        return;
    }
    if intid == SGI_IPI {
        let me = arch::my_affinity();
        IPIS[(me & 0xf) as usize].fetch_add(1, SeqCst);
        set_eoir1(u64::from(intid));
        let back = REPLY_TO.load(SeqCst);
        if back != me && back != u64::MAX {
            send_sgi(SGI_IPI, back);
        }
        return;
    }
    let now = if intid == PPI_PTIMER {
        cntpct()
    } else {
        arch::counter()
    };
    match intid {
        PPI_VTIMER => set_cntv_ctl(3),
        PPI_PTIMER => set_cntp_ctl(3),
        _ => {}
    }
    AT.store(now, SeqCst);
    LAST.store(intid, SeqCst);
    TAKEN.fetch_add(1, SeqCst);
    if HOLD.swap(false, SeqCst) {
        HELD.store(intid, SeqCst);
    } else {
        set_eoir1(u64::from(intid));
    }
}

/// This CPU's redistributor (RD_base), found by affinity.
fn my_redistributor() -> Option<usize> {
    let me = arch::my_affinity();
    let want = ((me >> 32) & 0xff) << 24 | (me & 0xff_ffff);
    for n in 0..64 {
        let rd = GICR + n * GICR_STRIDE;
        let typer = read64(rd + 8);
        if typer >> 32 == want {
            return Some(rd);
        }
        if typer & (1 << 4) != 0 {
            return None;
        }
    }
    None
}

/// Sets up the distributor (boot CPU) and this CPU's redistributor and CPU interface;
/// enables the private interrupts in `enable` (bit n = INTID n) as group 1 with
/// priority [`PRIO`]. Returns the redistributor.
pub fn init_this_cpu(enable: u32, distributor: bool) -> Option<usize> {
    if distributor {
        // ARE | EnableGrp1 (one security state).
        write32(GICD, (1 << 4) | (1 << 1));
    }
    let rd = my_redistributor()?;
    let waker = read32(rd + 0x14);
    write32(rd + 0x14, waker & !(1 << 1));
    if !wait_until(1, || read32(rd + 0x14) & (1 << 2) == 0) {
        return None;
    }
    let sgi = rd + SGI_BASE;
    write32(sgi + 0x180, u32::MAX); // ICENABLER0
    write32(sgi + 0x280, u32::MAX); // ICPENDR0
    write32(sgi + 0x380, u32::MAX); // ICACTIVER0
    write32(sgi + 0x80, u32::MAX); // IGROUPR0: group 1
    for i in 0..32 {
        write8(sgi + 0x400 + i, PRIO);
    }
    write32(sgi + 0xc04, 0); // PPIs level-sensitive
    write32(sgi + 0x100, enable); // ISENABLER0
    set_sre(sre() | 1);
    set_pmr(0xf0);
    set_bpr1(0);
    set_igrpen1(1);
    Some(rd)
}

/// ICC_SGI1R_EL1 for SGI `sgi` to the CPU with affinity `mpidr`.
pub fn sgi_to(sgi: u32, mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    (((mpidr >> 32) & 0xff) << 48)
        | ((aff0 >> 4) << 44)
        | (((mpidr >> 16) & 0xff) << 32)
        | ((u64::from(sgi) & 0xf) << 24)
        | (((mpidr >> 8) & 0xff) << 16)
        | (1 << (aff0 & 0xf))
}

/// Sends SGI `sgi` to `mpidr`.
pub fn send_sgi(sgi: u32, mpidr: u64) {
    // SAFETY: a barrier: earlier stores are visible before the SGI.
    unsafe { asm!("dsb ish", options(nostack)) };
    set_sgi1r(sgi_to(sgi, mpidr));
}

fn reset_record() {
    TAKEN.store(0, SeqCst);
    LAST.store(1023, SeqCst);
}

/// Runs the checks on the boot CPU (interrupts masked before and after).
pub fn run() {
    let pidr2 = read32(GICD + 0xffe8);
    let typer = read32(GICD + 4);
    crate::check!(
        (pidr2 >> 4) & 0xf == 3 && (typer & 0x1f) >= 1,
        "irq: GICD_PIDR2={pidr2:#x} (ArchRev 3), GICD_TYPER={typer:#x} (ITLinesNumber >= 1)"
    );
    let enable = (1 << SGI_SELF)
        | (1 << SGI_MASKED)
        | (1 << SGI_IPI)
        | (1 << PPI_VTIMER)
        | (1 << PPI_PTIMER);
    let Some(rd) = init_this_cpu(enable, true) else {
        crate::check!(
            false,
            "irq: this CPU's redistributor (by GICR_TYPER affinity) found and awake"
        );
        return;
    };
    crate::check!(
        read32(rd + SGI_BASE + 0x100) & enable == enable,
        "irq: redistributor {rd:#x}: SGIs/PPIs {enable:#x} enabled"
    );
    let freq = arch::cntfrq().max(1);
    let me = arch::my_affinity();

    // An SGI to self: taken once, INTID as sent.
    reset_record();
    unmask_irqs();
    send_sgi(SGI_SELF, me);
    let got = wait_until(2, || TAKEN.load(SeqCst) >= 1);
    mask_irqs();
    crate::check!(
        got && LAST.load(SeqCst) == SGI_SELF && TAKEN.load(SeqCst) == 1,
        "irq: SGI {SGI_SELF} to self -> taken {} time(s), INTID {} (want once, {SGI_SELF})",
        TAKEN.load(SeqCst),
        LAST.load(SeqCst)
    );

    // Priority masking: PMR 0x80 holds back priority 0xa0; raising PMR lets it in.
    reset_record();
    set_pmr(0x80);
    unmask_irqs();
    send_sgi(SGI_MASKED, me);
    spin_for(freq / 50);
    let early = TAKEN.load(SeqCst) != 0;
    set_pmr(0xf0);
    let late = wait_until(2, || TAKEN.load(SeqCst) >= 1);
    mask_irqs();
    crate::check!(
        !early && late && LAST.load(SeqCst) == SGI_MASKED,
        "irq: SGI priority {PRIO:#x} under PMR 0x80 -> {} while masked, {} after PMR 0xf0",
        if early { "taken" } else { "held" },
        if late { "taken" } else { "not taken" }
    );

    // Active state: without EOI the SGI stays active and a second one waits.
    reset_record();
    HOLD.store(true, SeqCst);
    unmask_irqs();
    send_sgi(SGI_SELF, me);
    wait_until(2, || TAKEN.load(SeqCst) >= 1);
    send_sgi(SGI_SELF, me);
    spin_for(freq / 50);
    let while_active = TAKEN.load(SeqCst);
    let active = read32(rd + SGI_BASE + 0x300) & (1 << SGI_SELF) != 0;
    set_eoir1(u64::from(HELD.load(SeqCst)));
    let after = wait_until(2, || TAKEN.load(SeqCst) >= 2);
    mask_irqs();
    crate::check!(
        while_active == 1 && active && after,
        "irq: SGI held active (ISACTIVER0 {}) -> second one taken {} before EOI, {} after",
        if active { "set" } else { "clear" },
        while_active - 1,
        if after { "once" } else { "never" }
    );

    // The virtual timer: interrupt at its deadline, not before.
    reset_record();
    let cval = arch::counter() + freq / 100;
    set_cntv_cval(cval);
    set_cntv_ctl(1);
    unmask_irqs();
    let got = wait_until(2, || TAKEN.load(SeqCst) >= 1);
    mask_irqs();
    let at = AT.load(SeqCst);
    crate::check!(
        got && LAST.load(SeqCst) == PPI_VTIMER && at >= cval,
        "irq: virtual timer (PPI 27) at CNTVCT {at:#x}, deadline {cval:#x} -> {}",
        if got { "taken, not early" } else { "not taken" }
    );
    set_cntv_ctl(0);

    // The EL1 physical timer, likewise.
    reset_record();
    let pcval = cntpct() + freq / 100;
    set_cntp_cval(pcval);
    set_cntp_ctl(1);
    unmask_irqs();
    let got = wait_until(2, || TAKEN.load(SeqCst) >= 1);
    mask_irqs();
    let at = AT.load(SeqCst);
    crate::check!(
        got && LAST.load(SeqCst) == PPI_PTIMER && at >= pcval && cntp_cval() == pcval,
        "irq: physical timer (PPI 30) at CNTPCT {at:#x}, deadline {pcval:#x} -> {}",
        if got { "taken, not early" } else { "not taken" }
    );
    set_cntp_ctl(0);

    // WFI with interrupts masked wakes when the timer's interrupt is pending.
    reset_record();
    let cval = arch::counter() + freq / 200;
    set_cntv_cval(cval);
    set_cntv_ctl(1);
    let mut woke = false;
    for _ in 0..100 {
        wfi();
        if isr() & (1 << 7) != 0 {
            woke = true;
            break;
        }
    }
    let when = arch::counter();
    unmask_irqs();
    let got = wait_until(2, || TAKEN.load(SeqCst) >= 1);
    mask_irqs();
    set_cntv_ctl(0);
    crate::check!(
        woke && when >= cval && got && LAST.load(SeqCst) == PPI_VTIMER,
        "irq: WFI (IRQs masked) woke by the virtual timer: ISR_EL1.I {}, taken {}",
        if woke { "set" } else { "clear" },
        if got { "after unmasking" } else { "never" }
    );
}

/// Spins for `ticks` of the virtual counter.
fn spin_for(ticks: u64) {
    let t0 = arch::counter();
    while arch::counter().wrapping_sub(t0) < ticks {
        core::hint::spin_loop();
    }
}
