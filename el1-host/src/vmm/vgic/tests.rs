//! The interrupt model and the register behaviour, on the build machine.

use super::dist::{self, TYPER_VALUE};
use super::redist::{self, SGI_BASE, STRIDE};
use super::*;
use crate::vmm::mmio::DeviceError;
use shared::exit::AccessWidth::{self, Byte, Double, Half, Word};

const MPIDRS: [u64; 2] = [0x8000_0000, 0x8000_0001];
/// VMCR with VPMR = 0xf0 (what Linux programs) and group 1 on.
const VMCR: u64 = (0xf0 << 24) | vmcr::VENG1;

fn gic() -> Vgic {
    Vgic::new(&MPIDRS)
}

fn rd(g: &mut Vgic, off: u64) -> u64 {
    g.dist_read(off, Word).unwrap()
}

fn wr(g: &mut Vgic, off: u64, v: u64) {
    g.dist_write(off, Word, v).unwrap()
}

fn rrd(g: &mut Vgic, vcpu: u64, off: u64, w: AccessWidth) -> u64 {
    g.redist_read(vcpu * STRIDE + off, w).unwrap()
}

fn rwr(g: &mut Vgic, vcpu: u64, off: u64, v: u64) {
    g.redist_write(vcpu * STRIDE + off, Word, v).unwrap()
}

/// The LRs `flush` filled, decoded.
fn lrs(c: &VgicCpuIf) -> Vec<Lr> {
    c.lr[..c.used_lrs as usize]
        .iter()
        .map(|&v| Lr::decode(v))
        .collect()
}

/// The guest acknowledges (pending → active) or deactivates (→ invalid) LR `i`.
fn guest_sets(c: &mut VgicCpuIf, i: usize, state: LrState) {
    let mut lr = Lr::decode(c.lr[i]);
    lr.state = state;
    c.lr[i] = lr.encode();
}

/// An SPI enabled and routed to `vcpu` with the distributor on.
fn enable_spi(g: &mut Vgic, intid: u32, vcpu: usize) {
    wr(g, dist::CTLR, u64::from(ctlr::ENABLE_G1));
    g.dist_write(
        dist::IROUTER + 8 * u64::from(intid),
        Double,
        MPIDRS[vcpu] & 0xff,
    )
    .unwrap();
    wr(
        g,
        bank::ISENABLER + 4 * u64::from(intid / 32),
        1 << (intid % 32),
    );
}

#[test]
fn distributor_identifies_as_a_gicv3_with_one_security_state() {
    let mut g = gic();
    assert_eq!(rd(&mut g, bank::PIDR2) >> 4 & 0xf, 3, "ArchRev 3");
    assert_eq!(rd(&mut g, dist::TYPER), TYPER_VALUE);
    assert_eq!(TYPER_VALUE & 0x1f, 3, "ITLinesNumber: 128 INTIDs");
    assert_eq!(rd(&mut g, dist::CTLR), u64::from(ctlr::ARE | ctlr::DS));
    wr(&mut g, dist::CTLR, 0xffff_ffff);
    assert_eq!(
        rd(&mut g, dist::CTLR),
        u64::from(ctlr::ARE | ctlr::DS | ctlr::ENABLE_G0 | ctlr::ENABLE_G1),
        "only the group enables are writable; RWP reads 0"
    );
    assert_eq!(rd(&mut g, dist::IIDR), bank::IIDR_VALUE);
}

#[test]
fn bad_widths_are_refused_and_reserved_offsets_read_as_zero() {
    let mut g = gic();
    assert_eq!(
        g.dist_read(dist::CTLR, Half),
        Err(DeviceError::BadWidth {
            offset: 0,
            width: Half
        })
    );
    assert!(g.dist_read(dist::CTLR, Byte).is_err());
    assert!(g.dist_read(dist::TYPER, Double).is_err());
    assert!(g.dist_read(0x0102, Word).is_err(), "misaligned");
    assert!(g.dist_write(bank::ISENABLER, Half, 1).is_err());
    // Reserved: zero, writes ignored, no error.
    assert_eq!(rd(&mut g, 0x0020), 0);
    wr(&mut g, 0x0020, 0xffff_ffff);
    assert_eq!(rd(&mut g, 0x0020), 0);
    // Private interrupts' word of the distributor is RAZ/WI with ARE.
    wr(&mut g, bank::ISENABLER, 0xffff_ffff);
    assert_eq!(rd(&mut g, bank::ISENABLER), 0);
    assert!(g.irq(0, 16).is_some_and(|i| !i.enabled));
    // Beyond the last implemented SPI: RAZ/WI.
    wr(&mut g, bank::ISENABLER + 4 * 10, 0xffff_ffff);
    assert_eq!(rd(&mut g, bank::ISENABLER + 4 * 10), 0);
    // The redistributor: a half-word access, and a frame past the last vCPU.
    assert!(g.redist_read(redist::WAKER, Half).is_err());
    assert_eq!(
        g.redist_read(2 * STRIDE, Word),
        Err(DeviceError::BadOffset { offset: 2 * STRIDE })
    );
}

#[test]
fn enable_pending_and_active_registers_set_and_clear() {
    let mut g = gic();
    let w = bank::ISENABLER + 4; // INTIDs 32..63
    wr(&mut g, w, 0b1010);
    assert_eq!(rd(&mut g, w), 0b1010);
    assert_eq!(
        rd(&mut g, bank::ICENABLER + 4),
        0b1010,
        "both read the state"
    );
    wr(&mut g, bank::ICENABLER + 4, 0b0010);
    assert_eq!(rd(&mut g, w), 0b1000);
    wr(&mut g, bank::ISPENDR + 4, 1 << 5);
    assert_eq!(rd(&mut g, bank::ICPENDR + 4), 1 << 5);
    wr(&mut g, bank::ICPENDR + 4, 1 << 5);
    assert_eq!(rd(&mut g, bank::ISPENDR + 4), 0);
    wr(&mut g, bank::ISACTIVER + 4, 1 << 7);
    assert_eq!(rd(&mut g, bank::ICACTIVER + 4), 1 << 7);
    wr(&mut g, bank::ICACTIVER + 4, 1 << 7);
    assert_eq!(rd(&mut g, bank::ISACTIVER + 4), 0);
    // IGROUPR is a plain read/write register.
    wr(&mut g, bank::IGROUPR + 4, 0xffff_0000);
    assert_eq!(rd(&mut g, bank::IGROUPR + 4), 0xffff_0000);
}

#[test]
fn priorities_by_byte_and_word_keep_the_implemented_bits() {
    let mut g = gic();
    g.dist_write(bank::IPRIORITYR + 33, Byte, 0xa7).unwrap();
    assert_eq!(g.dist_read(bank::IPRIORITYR + 33, Byte).unwrap(), 0xa0);
    wr(&mut g, bank::IPRIORITYR + 36, 0x1122_3344);
    assert_eq!(rd(&mut g, bank::IPRIORITYR + 36), 0x1020_3040);
    assert_eq!(g.irq(0, 39).unwrap().priority, 0x10);
    assert!(g.dist_read(bank::IPRIORITYR + 36, Half).is_err());
    // The redistributor's SGI frame: per vCPU.
    g.redist_write(STRIDE + SGI_BASE + bank::IPRIORITYR + 27, Byte, 0x80)
        .unwrap();
    assert_eq!(g.irq(1, 27).unwrap().priority, 0x80);
    assert_eq!(g.irq(0, 27).unwrap().priority, 0);
}

#[test]
fn config_sgis_are_edge_spis_configurable() {
    let mut g = gic();
    assert_eq!(
        rrd(&mut g, 0, SGI_BASE + bank::ICFGR, Word),
        0xaaaa_aaaa,
        "SGIs edge"
    );
    rwr(&mut g, 0, SGI_BASE + bank::ICFGR, 0);
    assert_eq!(rrd(&mut g, 0, SGI_BASE + bank::ICFGR, Word), 0xaaaa_aaaa);
    // SPI 33 (INTIDs 32..47 in ICFGR2): edge.
    wr(&mut g, bank::ICFGR + 8, 0b10 << 2);
    assert!(g.irq(0, 33).unwrap().edge);
    assert_eq!(rd(&mut g, bank::ICFGR + 8), 0b10 << 2);
}

#[test]
fn irouter_routes_by_affinity_in_64_and_32_bit_accesses() {
    let mut g = gic();
    let r = dist::IROUTER + 8 * 40;
    g.dist_write(r, Double, 0x01_0000_0001 | (1 << 31)).unwrap();
    assert_eq!(
        g.dist_read(r, Double).unwrap(),
        0x01_0000_0001,
        "IRM is RAZ/WI (not offered, as KVM)"
    );
    assert_eq!(g.dist_read(r + 4, Word).unwrap(), 1, "upper half: Aff3");
    assert_eq!(g.dist_read(r, Word).unwrap(), 1);
    g.dist_write(r + 4, Word, 0).unwrap();
    assert_eq!(g.dist_read(r, Double).unwrap(), 1);
    assert_eq!(g.target(0, 40), Some(1));
    // The private interrupts' IROUTER slots are reserved.
    g.dist_write(dist::IROUTER + 8 * 5, Double, 1).unwrap();
    assert_eq!(g.dist_read(dist::IROUTER + 8 * 5, Double).unwrap(), 0);
}

#[test]
fn redistributors_report_affinity_number_and_last() {
    let mut g = Vgic::new(&[0x8000_0000, 0x8000_0100, 0x8100_0201]);
    let t0 = rrd(&mut g, 0, redist::TYPER, Double);
    let t2 = rrd(&mut g, 2, redist::TYPER, Double);
    assert_eq!(t0 & redist::TYPER_LAST, 0);
    assert_eq!(t2 & redist::TYPER_LAST, redist::TYPER_LAST);
    assert_eq!(t2 >> 32, 0x0000_0201, "Aff3..Aff0 of vCPU 2");
    assert_eq!(rrd(&mut g, 1, redist::TYPER + 4, Word), 0x100);
    assert_eq!((t2 >> 8) & 0xffff, 2, "processor number");
    assert_eq!(rrd(&mut g, 1, bank::PIDR2, Word) >> 4 & 0xf, 3);
    // WAKER: asleep at reset; the guest wakes it and ChildrenAsleep follows.
    assert_eq!(
        rrd(&mut g, 0, redist::WAKER, Word),
        u64::from(redist::WAKER_SLEEP | redist::WAKER_ASLEEP)
    );
    rwr(&mut g, 0, redist::WAKER, 0);
    assert_eq!(rrd(&mut g, 0, redist::WAKER, Word), 0);
    assert_ne!(rrd(&mut g, 1, redist::WAKER, Word), 0, "per vCPU");
}

#[test]
fn a_routed_spi_goes_to_its_vcpu_only_and_kicks_it() {
    let mut g = gic();
    enable_spi(&mut g, 40, 1);
    g.take_kicks();
    wr(&mut g, bank::ISPENDR + 4, 1 << 8);
    assert_eq!(g.take_kicks(), 0b10, "vCPU 1 is kicked");
    let mut c0 = VgicCpuIf::default();
    g.flush(0, &mut c0);
    assert_eq!(c0.used_lrs, 0);
    let mut c1 = VgicCpuIf::default();
    g.flush(1, &mut c1);
    let l = lrs(&c1);
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].vintid, l[0].state, l[0].group1),
        (40, LrState::Pending, true)
    );
}

#[test]
fn nothing_is_delivered_while_the_distributor_is_off() {
    let mut g = gic();
    enable_spi(&mut g, 40, 0);
    wr(&mut g, dist::CTLR, 0);
    wr(&mut g, bank::ISPENDR + 4, 1 << 8);
    let mut c = VgicCpuIf::default();
    g.flush(0, &mut c);
    assert_eq!(c.used_lrs, 0);
    assert!(!g.has_pending(0, VMCR));
    g.take_kicks();
    wr(&mut g, dist::CTLR, u64::from(ctlr::ENABLE_G1));
    assert_eq!(g.take_kicks(), 1, "enabling the group kicks the target");
    assert!(g.has_pending(0, VMCR));
}

#[test]
fn an_edge_interrupt_is_acknowledged_then_deactivated() {
    let mut g = gic();
    enable_spi(&mut g, 33, 0);
    wr(&mut g, bank::ICFGR + 8, 0b10 << 2);
    g.set_level(0, 33, true);
    g.set_level(0, 33, false);
    assert!(g.irq(0, 33).unwrap().pending(), "the edge latched");
    let mut c = VgicCpuIf::default();
    g.flush(0, &mut c);
    assert_eq!(lrs(&c)[0].state, LrState::Pending);
    guest_sets(&mut c, 0, LrState::Active);
    g.sync(0, &c);
    let irq = g.irq(0, 33).unwrap();
    assert!(irq.active && !irq.pending());
    // Active interrupts keep their LR (the guest must be able to deactivate them).
    g.flush(0, &mut c);
    assert_eq!(lrs(&c)[0].state, LrState::Active);
    // A second edge while active: active and pending.
    g.set_level(0, 33, true);
    g.sync(0, &c);
    g.flush(0, &mut c);
    assert_eq!(lrs(&c)[0].state, LrState::PendingActive);
    guest_sets(&mut c, 0, LrState::Invalid);
    g.sync(0, &c);
    let irq = g.irq(0, 33).unwrap();
    assert!(!irq.active && !irq.pending());
}

#[test]
fn a_level_interrupt_is_pending_while_its_line_is_high() {
    let mut g = gic();
    enable_spi(&mut g, 33, 0);
    g.set_level(0, 33, true);
    let mut c = VgicCpuIf::default();
    g.flush(0, &mut c);
    guest_sets(&mut c, 0, LrState::Active);
    g.sync(0, &c);
    // Still high while active: pending and active.
    g.flush(0, &mut c);
    assert_eq!(lrs(&c)[0].state, LrState::PendingActive);
    // The guest's handler quietens the device; the next flush has only the active state.
    g.sync(0, &c);
    g.set_level(0, 33, false);
    g.flush(0, &mut c);
    assert_eq!(lrs(&c)[0].state, LrState::Active);
    guest_sets(&mut c, 0, LrState::Invalid);
    g.sync(0, &c);
    g.flush(0, &mut c);
    assert_eq!(c.used_lrs, 0);
    // A line that drops before the guest acknowledged: no longer pending.
    g.set_level(0, 33, true);
    g.flush(0, &mut c);
    g.sync(0, &c);
    g.set_level(0, 33, false);
    g.flush(0, &mut c);
    assert_eq!(c.used_lrs, 0);
    // ISPENDR on a level interrupt latches until ICPENDR or the acknowledge.
    wr(&mut g, bank::ISPENDR + 4, 1 << 1);
    g.flush(0, &mut c);
    g.sync(0, &c);
    assert!(
        g.irq(0, 33).unwrap().pending(),
        "an LR still pending keeps the latch"
    );
    g.flush(0, &mut c);
    guest_sets(&mut c, 0, LrState::Active);
    g.sync(0, &c);
    assert!(!g.irq(0, 33).unwrap().pending());
}

#[test]
fn active_first_then_priority_and_underflow_when_lrs_run_out() {
    let mut g = gic();
    wr(&mut g, dist::CTLR, u64::from(ctlr::ENABLE_G1));
    // Six SGIs pending on vCPU 0 with priorities 0x50, 0x40, … ; SGI 5 active.
    for sgi in 0..6u32 {
        g.redist_write(
            SGI_BASE + bank::IPRIORITYR + u64::from(sgi),
            Byte,
            u64::from(0x50 - sgi * 0x10 + 0x50),
        )
        .unwrap();
    }
    rwr(&mut g, 0, SGI_BASE + bank::ISPENDR, 0b01_1111);
    rwr(&mut g, 0, SGI_BASE + bank::ISACTIVER, 0b10_0000);
    let mut c = VgicCpuIf {
        nr_lrs: 4,
        ..VgicCpuIf::default()
    };
    g.flush(0, &mut c);
    let l = lrs(&c);
    assert_eq!(l.len(), 4);
    assert_eq!(l[0].vintid, 5, "the active one first");
    let order: Vec<u32> = l[1..].iter().map(|l| l.vintid).collect();
    assert_eq!(order, [4, 3, 2], "then most urgent first");
    assert_eq!(c.hcr & ich_hcr::UIE, ich_hcr::UIE, "two did not fit");
    // The ones that did not fit are still pending in the model.
    assert!(g.irq(0, 0).unwrap().pending() && g.irq(0, 1).unwrap().pending());
    // The guest handles all four; the refill takes the rest, without underflow.
    for i in 0..4 {
        guest_sets(&mut c, i, LrState::Invalid);
    }
    g.sync(0, &c);
    g.flush(0, &mut c);
    assert_eq!(lrs(&c).iter().map(|l| l.vintid).collect::<Vec<_>>(), [1, 0]);
    assert_eq!(c.hcr, 0);
}

#[test]
fn sgis_reach_the_targets_the_list_names_including_the_sender() {
    let mut g = gic();
    wr(&mut g, dist::CTLR, u64::from(ctlr::ENABLE_G1));
    // SGI 2 from vCPU 0 to Aff0 {0, 1}.
    g.send_sgi(0, (2 << 24) | 0b11, true);
    assert!(g.irq(0, 2).unwrap().pending() && g.irq(1, 2).unwrap().pending());
    assert_eq!(g.take_kicks(), 0b11);
    // IRM: all but self.
    g.send_sgi(1, (1 << 40) | (3 << 24), true);
    assert!(g.irq(0, 3).unwrap().pending() && !g.irq(1, 3).unwrap().pending());
    // A group-0 SGI write does not raise a group-1 SGI.
    g.send_sgi(0, (4 << 24) | 0b10, false);
    assert!(!g.irq(1, 4).unwrap().pending());
    // A disabled SGI latches but is not signalled.
    rwr(&mut g, 1, SGI_BASE + bank::ICENABLER, 1 << 6);
    g.send_sgi(0, (6 << 24) | 0b10, true);
    assert!(g.irq(1, 6).unwrap().pending());
    let mut c = VgicCpuIf::default();
    g.flush(1, &mut c);
    assert_eq!(lrs(&c).iter().map(|l| l.vintid).collect::<Vec<_>>(), [2]);
}

#[test]
fn wfi_wakes_only_for_an_interrupt_above_the_priority_mask() {
    let mut g = gic();
    wr(&mut g, dist::CTLR, u64::from(ctlr::ENABLE_G1));
    g.redist_write(SGI_BASE + bank::IPRIORITYR + 27, Byte, 0xf0)
        .unwrap();
    rwr(&mut g, 0, SGI_BASE + bank::ISENABLER, 1 << 27);
    g.set_level(0, INTID_VTIMER, true);
    assert!(
        !g.has_pending(0, VMCR),
        "priority 0xf0 is masked by PMR 0xf0"
    );
    g.redist_write(SGI_BASE + bank::IPRIORITYR + 27, Byte, 0xa0)
        .unwrap();
    assert!(g.has_pending(0, VMCR));
    assert!(!g.has_pending(1, VMCR), "a PPI is private");
}

#[test]
fn a_hardware_linked_timer_is_never_pending_and_active_in_an_lr() {
    let mut g = gic();
    g.link_hw(INTID_VTIMER, 27);
    wr(&mut g, dist::CTLR, u64::from(ctlr::ENABLE_G1));
    rwr(&mut g, 0, SGI_BASE + bank::ISENABLER, 1 << 27);
    g.set_level(0, INTID_VTIMER, true);
    let mut c = VgicCpuIf::default();
    let f = g.flush(0, &mut c);
    assert_eq!(f.hw_ppis, 1 << 27);
    let l = lrs(&c);
    assert_eq!((l[0].pintid, l[0].state), (Some(27), LrState::Pending));
    guest_sets(&mut c, 0, LrState::Active);
    assert_eq!(
        g.sync(0, &c),
        1 << 27,
        "still in an LR: physical stays active"
    );
    g.flush(0, &mut c);
    assert_eq!(
        lrs(&c)[0].state,
        LrState::Active,
        "the level lives at the timer"
    );
    guest_sets(&mut c, 0, LrState::Invalid);
    assert_eq!(g.sync(0, &c), 0, "deactivated by the guest");
}
