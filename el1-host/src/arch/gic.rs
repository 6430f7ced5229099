//! A minimal GICv3 driver for the host: the distributor, this CPU's redistributor and the
//! system-register CPU interface (`ICC_*_EL1`).
//!
//! The host needs only a few private interrupts, all Group 1, level of priority
//! [`PRIORITY`]:
//!
//! - SGI [`SGI_KICK`]: "look at your mailbox" — wakes a CPU waiting in WFI for a vCPU to
//!   start, and makes a CPU running a guest exit to the host (the hyp routes physical
//!   IRQs to EL2 while a guest runs).
//! - PPI 30, the EL1 physical timer ([`super::timer`]): the host's tick, which bounds how
//!   long a guest may run without exiting.
//!
//! No SPI is enabled. QEMU's `virt` board has no GIC security extension (secure=off), so
//! the distributor has one security state (`GICD_CTLR.DS` reads 1): ARE and
//! EnableGrp1 are all the host sets.
//!
//! [`init`] runs once on the boot CPU (distributor), [`init_this_cpu`] on every CPU
//! (redistributor wake-up, SGI/PPI configuration, CPU interface).

use core::sync::atomic::{AtomicUsize, Ordering};

/// The SGI that kicks a CPU.
pub const SGI_KICK: u32 = 0;
/// Priority of every interrupt the host enables (lower is more urgent).
pub const PRIORITY: u8 = 0xa0;
/// Priority mask: everything more urgent than this is signalled.
pub const PMR: u64 = 0xf0;
/// INTIDs from here up are special (1020–1023: spurious and friends).
pub const SPECIAL_INTID: u32 = 1020;

/// Distributor registers (offsets).
mod gicd {
    pub const CTLR: usize = 0x0000;
    pub const TYPER: usize = 0x0004;
    pub const ICENABLER: usize = 0x0180;
    pub const ICPENDR: usize = 0x0280;
    /// CTLR: register write pending.
    pub const CTLR_RWP: u32 = 1 << 31;
    /// CTLR: affinity routing enable (single security state view).
    pub const CTLR_ARE: u32 = 1 << 4;
    /// CTLR: enable Group 1 interrupts.
    pub const CTLR_ENABLE_G1: u32 = 1 << 1;
}

/// Redistributor registers (offsets from RD_base, or from SGI_base = RD_base + 64 KiB).
mod gicr {
    pub const TYPER: usize = 0x0008;
    pub const WAKER: usize = 0x0014;
    pub const SGI_BASE: usize = 0x1_0000;
    pub const IGROUPR0: usize = SGI_BASE + 0x0080;
    pub const ISENABLER0: usize = SGI_BASE + 0x0100;
    pub const ICENABLER0: usize = SGI_BASE + 0x0180;
    pub const ICPENDR0: usize = SGI_BASE + 0x0280;
    pub const ISACTIVER0: usize = SGI_BASE + 0x0300;
    pub const ICACTIVER0: usize = SGI_BASE + 0x0380;
    pub const IPRIORITYR: usize = SGI_BASE + 0x0400;
    pub const ICFGR1: usize = SGI_BASE + 0x0c04;
    /// TYPER: this is the last redistributor of the region.
    pub const TYPER_LAST: u64 = 1 << 4;
    /// TYPER: virtual LPIs supported (two more 64 KiB frames per redistributor).
    pub const TYPER_VLPIS: u64 = 1 << 1;
    /// WAKER: the CPU interface is asleep (write 0 to wake it).
    pub const WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
    /// WAKER: still asleep.
    pub const WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
    /// RD_base + SGI_base frames.
    pub const STRIDE: usize = 0x2_0000;
    /// Stride with the two VLPI frames.
    pub const STRIDE_VLPIS: usize = 0x4_0000;
}

/// Why the GIC could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GicError {
    /// [`init`] has not run (no GIC in the device tree).
    NotInitialised,
    /// No redistributor in the region has this CPU's affinity.
    NoRedistributor {
        /// The CPU's MPIDR affinity.
        mpidr: u64,
    },
    /// A register did not settle (RWP or ChildrenAsleep stuck).
    Timeout(&'static str),
}

impl core::fmt::Display for GicError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotInitialised => write!(f, "GIC: not initialised (no GICv3 in the device tree)"),
            Self::NoRedistributor { mpidr } => {
                write!(f, "GIC: no redistributor for mpidr={mpidr:#x}")
            }
            Self::Timeout(what) => write!(f, "GIC: {what} did not settle"),
        }
    }
}

/// One MMIO frame, reached through its mapping in the host's MMIO window.
#[derive(Clone, Copy)]
struct Frame {
    base: usize,
}

impl Frame {
    fn read32(self, off: usize) -> u32 {
        // SAFETY: `base` maps a GIC frame (Device memory, set up by `init`) that covers
        // `off`; a 32-bit aligned read of a GIC register has no side effect on memory.
        unsafe { core::ptr::read_volatile((self.base + off) as *const u32) }
    }
    fn read64(self, off: usize) -> u64 {
        // SAFETY: as for `read32`; GICR_TYPER is a 64-bit register.
        unsafe { core::ptr::read_volatile((self.base + off) as *const u64) }
    }
    fn write32(self, off: usize, v: u32) {
        // SAFETY: as for `read32`; writes reach only GIC registers.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u32, v) }
    }
}

/// VA of the distributor and of the redistributor region (0 until [`init`]).
static GICD_VA: AtomicUsize = AtomicUsize::new(0);
static GICR_VA: AtomicUsize = AtomicUsize::new(0);
static GICR_LEN: AtomicUsize = AtomicUsize::new(0);

macro_rules! sysreg_rw {
    ($(#[$doc:meta])* $read:ident, $write:ident, $enc:literal) => {
        $(#[$doc])*
        #[inline(always)]
        #[allow(dead_code)]
        fn $read() -> u64 {
            let v: u64;
            // SAFETY: a GIC CPU-interface register; EL2 enabled the system-register
            // interface for EL1 at boot (ICC_SRE_EL2.Enable).
            unsafe { core::arch::asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nostack, preserves_flags)) };
            v
        }
        #[inline(always)]
        #[allow(dead_code)]
        fn $write(v: u64) {
            // SAFETY: as for the read; the callers write values the GICv3 spec defines.
            unsafe { core::arch::asm!(concat!("msr ", $enc, ", {}"), in(reg) v, options(nostack, preserves_flags)) };
        }
    };
}

sysreg_rw!(
    /// ICC_PMR_EL1.
    pmr_read, pmr_write, "s3_0_c4_c6_0");
sysreg_rw!(
    /// ICC_IAR1_EL1 (reading acknowledges).
    iar1_read, iar1_write, "s3_0_c12_c12_0");
sysreg_rw!(
    /// ICC_EOIR1_EL1.
    eoir1_read, eoir1_write, "s3_0_c12_c12_1");
sysreg_rw!(
    /// ICC_BPR1_EL1.
    bpr1_read, bpr1_write, "s3_0_c12_c12_3");
sysreg_rw!(
    /// ICC_CTLR_EL1.
    ctlr_read, ctlr_write, "s3_0_c12_c12_4");
sysreg_rw!(
    /// ICC_SRE_EL1.
    sre_read, sre_write, "s3_0_c12_c12_5");
sysreg_rw!(
    /// ICC_IGRPEN1_EL1.
    igrpen1_read, igrpen1_write, "s3_0_c12_c12_7");
sysreg_rw!(
    /// ICC_SGI1R_EL1.
    sgi1r_read, sgi1r_write, "s3_0_c12_c11_5");

fn isb() {
    super::barrier::isb();
}

/// Spins until `done` or about 100 ms of counter time have passed.
fn wait_for(what: &'static str, mut done: impl FnMut() -> bool) -> Result<(), GicError> {
    let freq = super::sysreg::cntfrq_el0().max(1);
    let deadline = super::sysreg::cntvct_el0() + freq / 10;
    while !done() {
        if super::sysreg::cntvct_el0() > deadline {
            return Err(GicError::Timeout(what));
        }
        core::hint::spin_loop();
    }
    Ok(())
}

/// Records where the frames are mapped and sets up the distributor: affinity routing
/// and Group 1 on, every SPI disabled and not pending. Boot CPU, once, before
/// [`init_this_cpu`] on any CPU.
pub fn init(gicd_va: usize, gicr_va: usize, gicr_len: usize) -> Result<(), GicError> {
    GICD_VA.store(gicd_va, Ordering::Release);
    GICR_VA.store(gicr_va, Ordering::Release);
    GICR_LEN.store(gicr_len, Ordering::Release);
    let d = Frame { base: gicd_va };
    d.write32(gicd::CTLR, 0);
    wait_for("GICD_CTLR.RWP", || {
        d.read32(gicd::CTLR) & gicd::CTLR_RWP == 0
    })?;
    let lines = ((d.read32(gicd::TYPER) & 0x1f) as usize + 1) * 32;
    for n in 1..lines / 32 {
        d.write32(gicd::ICENABLER + 4 * n, u32::MAX);
        d.write32(gicd::ICPENDR + 4 * n, u32::MAX);
    }
    d.write32(gicd::CTLR, gicd::CTLR_ARE);
    wait_for("GICD_CTLR.RWP", || {
        d.read32(gicd::CTLR) & gicd::CTLR_RWP == 0
    })?;
    d.write32(gicd::CTLR, gicd::CTLR_ARE | gicd::CTLR_ENABLE_G1);
    wait_for("GICD_CTLR.RWP", || {
        d.read32(gicd::CTLR) & gicd::CTLR_RWP == 0
    })?;
    Ok(())
}

/// The affinity of an MPIDR as GICR_TYPER[63:32] and ICC_SGI1R_EL1 lay it out:
/// Aff3:Aff2:Aff1:Aff0.
pub const fn packed_affinity(mpidr: u64) -> u64 {
    ((mpidr >> 32) & 0xff) << 24 | (mpidr & 0xff_ffff)
}

/// This CPU's redistributor.
fn my_redistributor() -> Result<Frame, GicError> {
    let base = GICR_VA.load(Ordering::Acquire);
    let len = GICR_LEN.load(Ordering::Acquire);
    if base == 0 {
        return Err(GicError::NotInitialised);
    }
    let mpidr = super::sysreg::mpidr_el1() & el1_host::bootinfo::MPIDR_HWID_MASK;
    let want = packed_affinity(mpidr);
    let mut off = 0;
    while off + gicr::STRIDE <= len {
        let r = Frame { base: base + off };
        let typer = r.read64(gicr::TYPER);
        if typer >> 32 == want {
            return Ok(r);
        }
        if typer & gicr::TYPER_LAST != 0 {
            break;
        }
        off += if typer & gicr::TYPER_VLPIS != 0 {
            gicr::STRIDE_VLPIS
        } else {
            gicr::STRIDE
        };
    }
    Err(GicError::NoRedistributor { mpidr })
}

/// Each CPU's redistributor base (VA), by the CPU's Aff0 (QEMU virt: < 16 per
/// cluster, one cluster in the models used here); 0 = not found yet.
static MY_RD: [AtomicUsize; 16] = [const { AtomicUsize::new(0) }; 16];

/// This CPU's redistributor, from the cache [`init_this_cpu`] filled.
fn my_redistributor_cached() -> Result<Frame, GicError> {
    let aff0 = (super::sysreg::mpidr_el1() & 0xf) as usize;
    match MY_RD[aff0].load(Ordering::Relaxed) {
        0 => my_redistributor(),
        base => Ok(Frame { base }),
    }
}

/// Sets (or clears) the active state of PPI `intid` at this CPU's redistributor. The
/// VMM keeps the physical virtual-timer PPI active while the guest's virtual timer
/// interrupt sits in a list register linked to it (LR.HW): it cannot fire again until
/// the guest deactivates the virtual one, which deactivates the physical one.
pub fn set_ppi_active(intid: u32, active: bool) {
    if !(16..32).contains(&intid) {
        return;
    }
    if let Ok(r) = my_redistributor_cached() {
        let reg = if active {
            gicr::ISACTIVER0
        } else {
            gicr::ICACTIVER0
        };
        r.write32(reg, 1 << intid);
    }
}

/// Sets up this CPU: wakes its redistributor, makes the SGIs and PPIs Group 1 with
/// [`PRIORITY`], enables only [`SGI_KICK`] and the PPIs in `ppis`, and turns on the
/// system-register CPU interface (priority mask [`PMR`], EOI drops priority and
/// deactivates, Group 1 enabled). Interrupts stay masked in PSTATE.
pub fn init_this_cpu(ppis: &[u32]) -> Result<(), GicError> {
    let r = my_redistributor()?;
    MY_RD[(super::sysreg::mpidr_el1() & 0xf) as usize].store(r.base, Ordering::Relaxed);
    let waker = r.read32(gicr::WAKER);
    r.write32(gicr::WAKER, waker & !gicr::WAKER_PROCESSOR_SLEEP);
    wait_for("GICR_WAKER.ChildrenAsleep", || {
        r.read32(gicr::WAKER) & gicr::WAKER_CHILDREN_ASLEEP == 0
    })?;
    r.write32(gicr::ICENABLER0, u32::MAX);
    r.write32(gicr::ICPENDR0, u32::MAX);
    r.write32(gicr::IGROUPR0, u32::MAX);
    let prio = u32::from_ne_bytes([PRIORITY; 4]);
    for n in 0..8 {
        r.write32(gicr::IPRIORITYR + 4 * n, prio);
    }
    // PPIs level-sensitive (the timer's is); SGIs are always edge.
    r.write32(gicr::ICFGR1, 0);
    let mut enable = 1u32 << SGI_KICK;
    for &p in ppis {
        if (16..32).contains(&p) {
            enable |= 1 << p;
        }
    }
    r.write32(gicr::ISENABLER0, enable);

    sre_write(sre_read() | 1);
    isb();
    pmr_write(PMR);
    bpr1_write(0);
    // EOImode 0: one write to EOIR1 drops the priority and deactivates.
    ctlr_write(ctlr_read() & !(1 << 1));
    igrpen1_write(1);
    isb();
    Ok(())
}

/// Acknowledges the most urgent pending Group 1 interrupt: its INTID, or a value
/// ≥ [`SPECIAL_INTID`] if none is pending.
#[inline(always)]
pub fn ack() -> u32 {
    (iar1_read() & 0xff_ffff) as u32
}

/// Ends the handling of `intid` (drop priority and deactivate).
#[inline(always)]
pub fn eoi(intid: u32) {
    eoir1_write(u64::from(intid));
    isb();
}

/// ICC_SGI1R_EL1 value sending SGI `sgi` to the one CPU with affinity `mpidr`.
pub const fn sgi1r_value(sgi: u32, mpidr: u64) -> u64 {
    let aff0 = mpidr & 0xff;
    let aff1 = (mpidr >> 8) & 0xff;
    let aff2 = (mpidr >> 16) & 0xff;
    let aff3 = (mpidr >> 32) & 0xff;
    // TargetList covers Aff0 values 16 * RS .. 16 * RS + 15.
    let rs = aff0 >> 4;
    let target = 1 << (aff0 & 0xf);
    (aff3 << 48) | (rs << 44) | (aff2 << 32) | ((sgi as u64 & 0xf) << 24) | (aff1 << 16) | target
}

/// Sends SGI `sgi` to the CPU with affinity `mpidr`.
pub fn send_sgi(sgi: u32, mpidr: u64) {
    // The SGI must not overtake the stores the target is to see.
    super::barrier::dsb_ish();
    sgi1r_write(sgi1r_value(sgi, mpidr));
    isb();
}

// The kernel binary has no test harness: the encodings are checked at compile time.
const _: () = {
    // CPU 3 of cluster 0: Aff0 3 → TargetList bit 3, SGI 0.
    assert!(sgi1r_value(0, 3) == 1 << 3);
    // Aff1 = 1, Aff0 = 17: RS = 1, TargetList bit 1, SGI 5.
    assert!(sgi1r_value(5, 0x111) == (1 << 44) | (5 << 24) | (1 << 16) | (1 << 1));
    assert!(packed_affinity(0x01_0000_0203) == 0x0100_0203);
};
