//! The virtual GICv3's interrupt model, owned by the host VMM (pKVM's split: the hyp
//! only moves list-register state, `shared::vgic`). One [`Vgic`] per VM holds every
//! interrupt's state — enabled, pending (edge latch, software latch, line level),
//! active, priority, group, trigger, SPI routing — and decides which interrupts go in a
//! vCPU's list registers before it runs ([`Vgic::flush`]) and what the guest did with
//! them after ([`Vgic::sync`]).
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | interrupt state, injection (lines, edges, SGIs), list-register flush/sync, wake-up checks |
//! | [`dist`] | the distributor's registers (`GICD_*`, 0x0800_0000) |
//! | [`redist`] | each vCPU's redistributor registers (`GICR_*`, RD and SGI frames) |
//!
//! INTIDs 0–15 are SGIs (edge, enabled at reset, as KVM), 16–31 PPIs (per vCPU),
//! 32–[`NR_IRQS`] SPIs, routed by `GICD_IROUTER` affinity (the 1-of-N mode is not
//! offered, as in KVM). No LPIs, no ITS. The distributor has one security state
//! (`GICD_CTLR.DS` = 1) and affinity routing always on (ARE = 1), as KVM's GICv3.
//!
//! A list register holds an interrupt from [`Vgic::flush`] to [`Vgic::sync`]; while it
//! does, the model's copy is not the truth, so a change that arrives meanwhile (an SGI,
//! a line going high) is recorded in the model and merged at sync. Interrupts that are
//! active always get a list register first (the guest must be able to deactivate
//! them), then pending ones by priority; when more are pending than fit, the underflow
//! maintenance interrupt brings the vCPU back to refill.
//!
//! Changes that make an interrupt deliverable to another vCPU set that vCPU's bit in
//! the kick mask ([`Vgic::take_kicks`]); the run loop kicks its host CPU, so a running
//! guest exits and a waiting vCPU wakes.

pub mod dist;
pub mod redist;

use crate::vmm::mmio::{DeviceError, MmioDevice};
use alloc::sync::Arc;
use alloc::vec::Vec;
use shared::exit::AccessWidth;
use shared::vgic::{ich_hcr, vmcr, Lr, LrState, Sgi1r, VgicCpuIf, AFFINITY_MASK, MAX_LRS};

/// SGIs and PPIs: the private interrupts of each vCPU.
pub const NR_PRIVATE: usize = 32;
/// Interrupt IDs the distributor implements: 32 private + 96 SPIs (GICD_TYPER
/// ITLinesNumber = 3). QEMU virt's devices use SPIs 1 (PL011), 2 (PL031) and 16–47
/// (virtio-mmio).
pub const NR_IRQS: usize = 128;
/// SPIs.
pub const NR_SPIS: usize = NR_IRQS - NR_PRIVATE;
/// The GIC maintenance interrupt (PPI 9).
pub const INTID_MAINTENANCE: u32 = 25;
/// The EL1 virtual timer (PPI 11).
pub const INTID_VTIMER: u32 = 27;
/// The EL1 physical timer (PPI 14).
pub const INTID_PTIMER: u32 = 30;
/// Priority bits the virtual CPU interface implements (QEMU and most CPUs: 5); the
/// low bits of a written priority read as zero, as on such a GIC and in KVM.
pub const PRIORITY_MASK: u8 = 0xf8;
/// How many odd accesses (reserved offsets) are logged per VM.
const ODD_ACCESS_REPORTS: u32 = 16;

/// `GICD_CTLR` bits.
pub mod ctlr {
    /// EnableGrp0.
    pub const ENABLE_G0: u32 = 1 << 0;
    /// EnableGrp1.
    pub const ENABLE_G1: u32 = 1 << 1;
    /// ARE: affinity routing, always on.
    pub const ARE: u32 = 1 << 4;
    /// DS: a single security state.
    pub const DS: u32 = 1 << 6;
}

/// One interrupt's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Irq {
    /// Forwarded to the CPU interface (I[SC]ENABLER).
    pub enabled: bool,
    /// Pending by an edge or a write of I[SC]PENDR (the latch).
    pub latch: bool,
    /// The input line's level (level-sensitive interrupts: pending while high).
    pub level: bool,
    /// Active (acknowledged, not yet deactivated).
    pub active: bool,
    /// Edge-triggered (ICFGR 0b10) rather than level-sensitive.
    pub edge: bool,
    /// Group 1 (IGROUPR).
    pub group1: bool,
    /// Priority (IPRIORITYR), lower is more urgent.
    pub priority: u8,
    /// SPIs: GICD_IROUTER's affinity (MPIDR layout, Aff3 at 39:32).
    pub route: u64,
    /// Linked to this physical PPI: the guest's deactivation deactivates it (LR.HW).
    pub hw: Option<u16>,
    /// In a list register of the vCPU that flushed it.
    in_lr: bool,
    /// Whether the latch was moved into that list register.
    sent_latch: bool,
}

impl Irq {
    fn new(intid: u32) -> Self {
        Self {
            // KVM: SGIs are edge and always start enabled; everything is group 1.
            enabled: intid < 16,
            edge: intid < 16,
            group1: true,
            ..Self::default()
        }
    }

    /// Pending: latched, or a level-sensitive line that is high.
    pub fn pending(&self) -> bool {
        self.latch || (!self.edge && self.level)
    }
}

/// Redistributor state besides the private interrupts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Redist {
    /// GICR_WAKER.ProcessorSleep (ChildrenAsleep follows it at once).
    sleep: bool,
}

/// What [`Vgic::flush`] put in the list registers that the run loop must act on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// PPIs linked to physical interrupts (LR.HW) now in a list register: their
    /// physical counterpart must be active while the guest runs, so it cannot fire
    /// again before the guest deactivates the virtual one.
    pub hw_ppis: u32,
}

/// A VM's virtual GICv3.
pub struct Vgic {
    mpidrs: Vec<u64>,
    ctlr: u32,
    private: Vec<[Irq; NR_PRIVATE]>,
    spis: Vec<Irq>,
    rd: Vec<Redist>,
    kicks: u64,
    odd_reports: u32,
}

impl Vgic {
    /// A GIC at reset for vCPUs with these MPIDRs (at most 64).
    pub fn new(mpidrs: &[u64]) -> Self {
        let private: [Irq; NR_PRIVATE] = core::array::from_fn(|i| Irq::new(i as u32));
        Self {
            mpidrs: mpidrs.iter().map(|m| m & AFFINITY_MASK).collect(),
            ctlr: 0,
            private: alloc::vec![private; mpidrs.len()],
            spis: (NR_PRIVATE..NR_IRQS).map(|i| Irq::new(i as u32)).collect(),
            rd: alloc::vec![Redist { sleep: true }; mpidrs.len()],
            kicks: 0,
            odd_reports: 0,
        }
    }

    /// Number of vCPUs.
    pub fn vcpus(&self) -> usize {
        self.mpidrs.len()
    }

    /// The state of `intid` as `vcpu` sees it (private interrupts are per vCPU).
    pub fn irq(&self, vcpu: usize, intid: u32) -> Option<&Irq> {
        let i = intid as usize;
        if i < NR_PRIVATE {
            self.private.get(vcpu).map(|p| &p[i])
        } else {
            self.spis.get(i - NR_PRIVATE)
        }
    }

    fn irq_mut(&mut self, vcpu: usize, intid: u32) -> Option<&mut Irq> {
        let i = intid as usize;
        if i < NR_PRIVATE {
            self.private.get_mut(vcpu).map(|p| &mut p[i])
        } else {
            self.spis.get_mut(i - NR_PRIVATE)
        }
    }

    /// The vCPU an interrupt is delivered to: `vcpu` for a private one, the vCPU whose
    /// affinity matches IROUTER for an SPI (none if no vCPU matches).
    fn target(&self, vcpu: usize, intid: u32) -> Option<usize> {
        if (intid as usize) < NR_PRIVATE {
            return (vcpu < self.vcpus()).then_some(vcpu);
        }
        let route = self.irq(0, intid)?.route & AFFINITY_MASK;
        self.mpidrs.iter().position(|&m| m == route)
    }

    fn group_enabled(&self, irq: &Irq) -> bool {
        self.ctlr
            & if irq.group1 {
                ctlr::ENABLE_G1
            } else {
                ctlr::ENABLE_G0
            }
            != 0
    }

    /// Enabled, pending and its group on: the CPU interface may signal it.
    fn deliverable(&self, irq: &Irq) -> bool {
        irq.enabled && irq.pending() && self.group_enabled(irq)
    }

    /// Marks the target of `intid` for a kick if the interrupt can now be signalled.
    fn note(&mut self, vcpu: usize, intid: u32) {
        if let (Some(t), Some(irq)) = (self.target(vcpu, intid), self.irq(vcpu, intid)) {
            if self.deliverable(irq) {
                self.kicks |= 1 << t;
            }
        }
    }

    /// Links private interrupt `intid` of every vCPU to physical PPI `pintid` (LR.HW).
    pub fn link_hw(&mut self, intid: u32, pintid: u16) {
        for p in &mut self.private {
            if let Some(irq) = p.get_mut(intid as usize) {
                irq.hw = Some(pintid);
            }
        }
    }

    /// Sets the line level of a level-sensitive input: a private one of `vcpu`
    /// (a timer) or an SPI (`vcpu` ignored). An edge-triggered interrupt latches on the
    /// rising edge.
    pub fn set_level(&mut self, vcpu: usize, intid: u32, level: bool) {
        let Some(irq) = self.irq_mut(vcpu, intid) else {
            return;
        };
        let rising = level && !irq.level;
        irq.level = level;
        if irq.edge && rising {
            irq.latch = true;
        }
        if level {
            self.note(vcpu, intid);
        }
    }

    /// A guest's write of ICC_SGI1R_EL1 (`group1`) or ICC_SGI0R_EL1/ICC_ASGI1R_EL1
    /// (group 0 only, as KVM) from `sender`: latches the SGI on every target vCPU whose
    /// SGI is in an allowed group, the sender included when the target list names it.
    pub fn send_sgi(&mut self, sender: usize, value: u64, group1: bool) {
        let sgi = Sgi1r::decode(value);
        let Some(&me) = self.mpidrs.get(sender) else {
            return;
        };
        for v in 0..self.vcpus() {
            if !sgi.targets(self.mpidrs[v], me) {
                continue;
            }
            let irq = &mut self.private[v][sgi.intid as usize];
            if irq.group1 && !group1 {
                continue;
            }
            irq.latch = true;
            self.note(v, sgi.intid);
        }
    }

    /// The vCPUs that must be kicked since the last call (bit n = vCPU n).
    pub fn take_kicks(&mut self) -> u64 {
        core::mem::take(&mut self.kicks)
    }

    /// Whether `vcpu` has an interrupt the guest's CPU interface would signal (enabled,
    /// pending, its group on, more urgent than the guest's priority mask in `vmcr`):
    /// the condition that ends a WFI, as KVM checks it.
    pub fn has_pending(&self, vcpu: usize, vmcr_value: u64) -> bool {
        let pmr = vmcr::vpmr(vmcr_value);
        self.candidates(vcpu)
            .any(|(_, irq)| self.deliverable(irq) && irq.priority < pmr)
    }

    /// Private interrupts of `vcpu` and the SPIs routed to it.
    fn candidates(&self, vcpu: usize) -> impl Iterator<Item = (u32, &Irq)> + '_ {
        let private = self
            .private
            .get(vcpu)
            .into_iter()
            .flat_map(|p| p.iter().enumerate().map(|(i, irq)| (i as u32, irq)));
        let mine = self.mpidrs.get(vcpu).copied();
        let spis = self
            .spis
            .iter()
            .enumerate()
            .filter(move |(_, irq)| Some(irq.route & AFFINITY_MASK) == mine)
            .map(|(i, irq)| ((i + NR_PRIVATE) as u32, irq));
        private.chain(spis)
    }

    /// Fills `cpuif`'s list registers for a run of `vcpu`: its active interrupts first,
    /// then the deliverable ones by priority; sets the underflow maintenance interrupt
    /// when some did not fit. The caller runs the guest and then calls [`Vgic::sync`].
    pub fn flush(&mut self, vcpu: usize, cpuif: &mut VgicCpuIf) -> Flushed {
        let limit = match cpuif.nr_lrs as usize {
            // Before the first exit the hyp has not said; it clamps what it loads, and
            // an LR it does not load comes back unchanged, so guessing high is safe.
            0 => MAX_LRS,
            n => n.min(MAX_LRS),
        };
        let mut list: Vec<(bool, u8, u32)> = self
            .candidates(vcpu)
            .filter(|(_, irq)| irq.active || self.deliverable(irq))
            .map(|(intid, irq)| (!irq.active, irq.priority, intid))
            .collect();
        list.sort_unstable();
        let mut out = Flushed::default();
        let used = list.len().min(limit);
        for (slot, &(_, _, intid)) in list[..used].iter().enumerate() {
            let deliverable = self.irq(vcpu, intid).is_some_and(|i| self.deliverable(i));
            let Some(irq) = self.irq_mut(vcpu, intid) else {
                continue;
            };
            // A hardware-linked interrupt is never pending and active in an LR: its
            // pending state lives at the physical timer, as in KVM.
            let pending = deliverable && !(irq.hw.is_some() && irq.active);
            let lr = Lr {
                vintid: intid,
                pintid: irq.hw,
                eoi: false,
                priority: irq.priority,
                group1: irq.group1,
                state: LrState::from_parts(pending, irq.active),
            };
            irq.in_lr = true;
            irq.sent_latch = pending && irq.latch;
            if pending {
                irq.latch = false;
            }
            if let Some(p) = irq.hw {
                out.hw_ppis |= 1 << (p & 31);
            }
            cpuif.lr[slot] = lr.encode();
        }
        cpuif.lr[used..].fill(0);
        cpuif.used_lrs = used as u64;
        cpuif.hcr = if list.len() > used { ich_hcr::UIE } else { 0 };
        out
    }

    /// Takes back what the guest did with the list registers [`Vgic::flush`] filled:
    /// acknowledged (active), deactivated (gone), or still pending. Returns the
    /// hardware-linked PPIs still in a list register (pending or active): the others
    /// were deactivated by the guest, which deactivated their physical interrupt too.
    pub fn sync(&mut self, vcpu: usize, cpuif: &VgicCpuIf) -> u32 {
        let mut hw_live = 0;
        let used = (cpuif.used_lrs as usize).min(MAX_LRS);
        for &raw in &cpuif.lr[..used] {
            let lr = Lr::decode(raw);
            let Some(irq) = self.irq_mut(vcpu, lr.vintid) else {
                continue;
            };
            if !irq.in_lr {
                continue;
            }
            irq.active = lr.state.active();
            // Still pending in the LR: the latch it carried is the model's again (a
            // level input is pending through its level anyway).
            if lr.state.pending() && (irq.edge || irq.sent_latch) {
                irq.latch = true;
            }
            irq.in_lr = false;
            irq.sent_latch = false;
            if let (Some(p), false) = (irq.hw, lr.state == LrState::Invalid) {
                hw_live |= 1 << (p & 31);
            }
            // A level line still high after a deactivation is pending again; an edge
            // that arrived meanwhile is in the latch. Either may need this vCPU back.
            let intid = lr.vintid;
            self.note(vcpu, intid);
        }
        hw_live
    }

    /// Logs an access to a reserved or unimplemented offset (the first few per VM).
    fn odd_access(&mut self, what: &str, offset: u64, write: bool) {
        if self.odd_reports < ODD_ACCESS_REPORTS {
            self.odd_reports += 1;
            log::info!(
                "vgic: guest {} of reserved {what} offset {offset:#x}: {}",
                if write { "write" } else { "read" },
                if write { "ignored" } else { "reads as zero" }
            );
        }
    }

    // ---- Register helpers shared by the distributor and the redistributors. ----

    /// A 1-bit-per-interrupt register covering INTIDs `first..first + 32`.
    fn read_bits(&self, vcpu: usize, first: u32, f: impl Fn(&Irq) -> bool) -> u32 {
        (0..32).fold(0, |acc, i| match self.irq(vcpu, first + i) {
            Some(irq) if f(irq) => acc | (1 << i),
            _ => acc,
        })
    }

    /// Applies `f` to every interrupt whose bit is set in `value` (set/clear registers)
    /// or to all 32 with their bit (IGROUPR), then notes kicks.
    fn write_bits(
        &mut self,
        vcpu: usize,
        first: u32,
        value: u32,
        all: bool,
        f: impl Fn(&mut Irq, bool),
    ) {
        for i in 0..32 {
            let bit = value & (1 << i) != 0;
            if !(bit || all) {
                continue;
            }
            if let Some(irq) = self.irq_mut(vcpu, first + i) {
                f(irq, bit);
            } else {
                continue;
            }
            self.note(vcpu, first + i);
        }
    }

    /// Reads `bytes` priorities starting at INTID `first`, little-endian.
    fn read_priorities(&self, vcpu: usize, first: u32, bytes: u32) -> u64 {
        (0..bytes).fold(0, |acc, i| {
            acc | u64::from(self.irq(vcpu, first + i).map_or(0, |irq| irq.priority)) << (8 * i)
        })
    }

    fn write_priorities(&mut self, vcpu: usize, first: u32, bytes: u32, value: u64) {
        for i in 0..bytes {
            if let Some(irq) = self.irq_mut(vcpu, first + i) {
                irq.priority = (value >> (8 * i)) as u8 & PRIORITY_MASK;
            }
        }
    }

    /// ICFGR: two bits per interrupt (bit 1 of each pair: edge), 16 interrupts.
    fn read_config(&self, vcpu: usize, first: u32) -> u32 {
        (0..16).fold(0, |acc, i| match self.irq(vcpu, first + i) {
            Some(irq) if irq.edge => acc | (2 << (2 * i)),
            _ => acc,
        })
    }

    fn write_config(&mut self, vcpu: usize, first: u32, value: u32) {
        for i in 0..16 {
            // SGIs are always edge.
            if first + i < 16 {
                continue;
            }
            if let Some(irq) = self.irq_mut(vcpu, first + i) {
                irq.edge = value & (2 << (2 * i)) != 0;
            }
        }
    }
}

/// The per-interrupt registers at the same offsets in the distributor (SPIs) and the
/// redistributor's SGI frame (SGIs and PPIs).
pub(crate) mod bank {
    /// IGROUPR.
    pub const IGROUPR: u64 = 0x0080;
    /// ISENABLER.
    pub const ISENABLER: u64 = 0x0100;
    /// ICENABLER.
    pub const ICENABLER: u64 = 0x0180;
    /// ISPENDR.
    pub const ISPENDR: u64 = 0x0200;
    /// ICPENDR.
    pub const ICPENDR: u64 = 0x0280;
    /// ISACTIVER.
    pub const ISACTIVER: u64 = 0x0300;
    /// ICACTIVER.
    pub const ICACTIVER: u64 = 0x0380;
    /// IPRIORITYR (byte-accessible).
    pub const IPRIORITYR: u64 = 0x0400;
    /// ICFGR.
    pub const ICFGR: u64 = 0x0C00;
    /// IGRPMODR (RAZ/WI with one security state).
    pub const IGRPMODR: u64 = 0x0D00;
    /// NSACR (RAZ/WI with one security state).
    pub const NSACR: u64 = 0x0E00;
    /// Peripheral ID 2: ArchRev 3 (GICv3) in bits 7:4, as KVM reports it.
    pub const PIDR2: u64 = 0xFFE8;
    /// PIDR2's value.
    pub const PIDR2_GICV3: u64 = 0x3b;
    /// IIDR: implementer Arm (0x43b), product 0, revision 0.
    pub const IIDR_VALUE: u64 = 0x043b;
}

/// Which 1-bit register `off` (relative to a bank) is, and which INTIDs it covers.
pub(crate) enum BitReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

impl BitReg {
    /// The register at `off` and the index of the 32-interrupt word it covers.
    pub(crate) fn at(off: u64) -> Option<(Self, u32)> {
        use bank::*;
        let (reg, base) = match off {
            IGROUPR..0x0100 => (Self::Group, IGROUPR),
            ISENABLER..0x0180 => (Self::SetEnable, ISENABLER),
            ICENABLER..0x0200 => (Self::ClearEnable, ICENABLER),
            ISPENDR..0x0280 => (Self::SetPending, ISPENDR),
            ICPENDR..0x0300 => (Self::ClearPending, ICPENDR),
            ISACTIVER..0x0380 => (Self::SetActive, ISACTIVER),
            ICACTIVER..0x0400 => (Self::ClearActive, ICACTIVER),
            _ => return None,
        };
        Some((reg, ((off - base) / 4) as u32))
    }
}

impl Vgic {
    /// Reads a 1-bit register word covering `first..first + 32` for `vcpu`.
    pub(crate) fn bitreg_read(&self, vcpu: usize, reg: &BitReg, first: u32) -> u32 {
        match reg {
            BitReg::Group => self.read_bits(vcpu, first, |i| i.group1),
            BitReg::SetEnable | BitReg::ClearEnable => self.read_bits(vcpu, first, |i| i.enabled),
            BitReg::SetPending | BitReg::ClearPending => {
                self.read_bits(vcpu, first, |i| i.pending())
            }
            BitReg::SetActive | BitReg::ClearActive => self.read_bits(vcpu, first, |i| i.active),
        }
    }

    /// Writes a 1-bit register word.
    pub(crate) fn bitreg_write(&mut self, vcpu: usize, reg: &BitReg, first: u32, value: u32) {
        match reg {
            BitReg::Group => self.write_bits(vcpu, first, value, true, |i, b| i.group1 = b),
            BitReg::SetEnable => {
                self.write_bits(vcpu, first, value, false, |i, _| i.enabled = true)
            }
            BitReg::ClearEnable => {
                self.write_bits(vcpu, first, value, false, |i, _| i.enabled = false)
            }
            BitReg::SetPending => self.write_bits(vcpu, first, value, false, |i, _| i.latch = true),
            // A level line that is high stays pending: only the latch clears.
            BitReg::ClearPending => {
                self.write_bits(vcpu, first, value, false, |i, _| i.latch = false)
            }
            BitReg::SetActive => self.write_bits(vcpu, first, value, false, |i, _| i.active = true),
            BitReg::ClearActive => {
                self.write_bits(vcpu, first, value, false, |i, _| i.active = false)
            }
        }
    }
}

/// A VM's vGIC, shared by its vCPU threads and the devices that drive its lines. Lock
/// order: the MMIO bus before the vGIC.
pub type SharedVgic = Arc<spin::Mutex<Vgic>>;

/// The distributor frame on the MMIO bus.
pub struct GicdDevice(pub SharedVgic);

impl MmioDevice for GicdDevice {
    fn name(&self) -> &'static str {
        "gicd"
    }
    fn read(&mut self, offset: u64, width: AccessWidth) -> Result<u64, DeviceError> {
        self.0.lock().dist_read(offset, width)
    }
    fn write(&mut self, offset: u64, width: AccessWidth, value: u64) -> Result<(), DeviceError> {
        self.0.lock().dist_write(offset, width, value)
    }
}

/// The redistributors (one per vCPU, [`redist::STRIDE`] apart) on the MMIO bus.
pub struct GicrDevice(pub SharedVgic);

impl MmioDevice for GicrDevice {
    fn name(&self) -> &'static str {
        "gicr"
    }
    fn read(&mut self, offset: u64, width: AccessWidth) -> Result<u64, DeviceError> {
        self.0.lock().redist_read(offset, width)
    }
    fn write(&mut self, offset: u64, width: AccessWidth, value: u64) -> Result<(), DeviceError> {
        self.0.lock().redist_write(offset, width, value)
    }
}

/// One SPI input of the vGIC, as a device model drives it.
#[derive(Clone)]
pub struct IrqLine {
    gic: SharedVgic,
    intid: u32,
}

impl IrqLine {
    /// The line of SPI `spi` (INTID 32 + `spi`).
    pub fn spi(gic: SharedVgic, spi: u32) -> Self {
        Self {
            gic,
            intid: NR_PRIVATE as u32 + spi,
        }
    }

    /// Drives the line to `level`.
    pub fn set(&self, level: bool) {
        self.gic.lock().set_level(0, self.intid, level);
    }
}

#[cfg(test)]
mod tests;
