//! The virtual GICv3 CPU interface as the host and the hyp share it, split as pKVM
//! splits it: the host VMM owns the interrupt model (distributor, redistributors,
//! which interrupt goes in which list register); the hyp only moves state between the
//! [`VgicCpuIf`] in the vCPU context and the `ICH_*_EL2` registers around a guest run.
//!
//! | direction | fields |
//! | --- | --- |
//! | host → hyp (entry) | `lr[..used_lrs]`, `hcr` (maintenance enables only: [`ich_hcr::HOST_ALLOWED`]), `vmcr`, `ap0r`, `ap1r` |
//! | hyp → host (exit) | `lr[..min(used_lrs, ListRegs)]`, `hcr` (with EOIcount), `vmcr`, `ap0r`, `ap1r`, `misr`, `elrsr`, `nr_lrs` |
//!
//! The hyp clamps `used_lrs` to what the CPU implements (`ICH_VTR_EL2.ListRegs`),
//! writes every implemented list register on entry (zero beyond `used_lrs`), forces
//! `ICH_HCR_EL2.En`, and turns the interface off (`ICH_HCR_EL2 = 0`) before the host
//! runs again. List registers beyond the clamp come back as the host wrote them.
//!
//! Also here: the list-register encoding ([`Lr`]) and the `ICC_SGI1R_EL1` decoding
//! ([`Sgi1r`]) the VMM uses when a guest's SGI write traps.

/// The most list registers the architecture allows (`ICH_VTR_EL2.ListRegs` + 1 ≤ 16).
pub const MAX_LRS: usize = 16;

/// The virtual CPU interface of one vCPU (part of [`crate::vcpu::VcpuContext`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct VgicCpuIf {
    /// `ICH_LR<n>_EL2` values ([`Lr`]).
    pub lr: [u64; MAX_LRS],
    /// How many of `lr` the host filled (entry); the hyp loads at most `nr_lrs` of them.
    pub used_lrs: u64,
    /// `ICH_HCR_EL2`: the host's maintenance-interrupt enables on entry; on exit the
    /// value the guest left (EOIcount in bits 31:27).
    pub hcr: u64,
    /// `ICH_VMCR_EL2`: the guest's view of its CPU interface (PMR, BPRs, group enables).
    pub vmcr: u64,
    /// `ICH_AP0R<n>_EL2` (active priorities, group 0); only those the CPU implements.
    pub ap0r: [u64; 4],
    /// `ICH_AP1R<n>_EL2` (active priorities, group 1).
    pub ap1r: [u64; 4],
    /// `ICH_MISR_EL2` at the exit: which maintenance conditions held.
    pub misr: u64,
    /// `ICH_ELRSR_EL2` at the exit: bit n set when LR n holds no interrupt.
    pub elrsr: u64,
    /// `ICH_VTR_EL2.ListRegs + 1`, written by the hyp at every exit (0 before the first).
    pub nr_lrs: u64,
}

/// `ICH_HCR_EL2` bits.
pub mod ich_hcr {
    /// En: the virtual CPU interface is enabled.
    pub const EN: u64 = 1 << 0;
    /// UIE: maintenance interrupt when at most one list register holds an interrupt.
    pub const UIE: u64 = 1 << 1;
    /// LRENPIE: maintenance interrupt while EOIcount is non-zero.
    pub const LRENPIE: u64 = 1 << 2;
    /// NPIE: maintenance interrupt when no list register is pending.
    pub const NPIE: u64 = 1 << 3;
    /// EOIcount (31:27): EOIs that found no list register.
    pub const EOICOUNT_SHIFT: u32 = 27;
    /// Mask of EOIcount.
    pub const EOICOUNT_MASK: u64 = 0x1f << EOICOUNT_SHIFT;
    /// The bits the host may ask for: maintenance enables, never a trap bit (TC, TALL0,
    /// TALL1, TSEI, TDIR are the hyp's to decide) and never EOIcount.
    pub const HOST_ALLOWED: u64 = UIE | LRENPIE | NPIE | (0xf << 4);
}

/// `ICH_HCR_EL2` for a guest run: the host's allowed maintenance enables and En.
pub const fn guest_ich_hcr(host: u64) -> u64 {
    (host & ich_hcr::HOST_ALLOWED) | ich_hcr::EN
}

/// `ICH_VTR_EL2` fields the hyp needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vtr {
    /// Implemented list registers (1–16).
    pub list_regs: usize,
    /// Implemented `ICH_AP{0,1}R<n>_EL2` registers per group (1, 2 or 4).
    pub apr_regs: usize,
}

impl Vtr {
    /// Decodes `ICH_VTR_EL2`: ListRegs (4:0) + 1; PREbits (28:26) + 1 preemption bits,
    /// of which 5 need one active-priority register, 6 two and 7 four.
    pub const fn decode(vtr: u64) -> Self {
        let pre_bits = ((vtr >> 26) & 7) + 1;
        let apr_regs = match pre_bits {
            0..=5 => 1,
            6 => 2,
            _ => 4,
        };
        Self {
            list_regs: (vtr & 0x1f) as usize + 1,
            apr_regs,
        }
    }
}

/// The state field of a list register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrState {
    /// Holds nothing.
    Invalid,
    /// Pending.
    Pending,
    /// Active.
    Active,
    /// Active and pending.
    PendingActive,
}

impl LrState {
    /// Whether the state includes pending.
    pub const fn pending(self) -> bool {
        matches!(self, Self::Pending | Self::PendingActive)
    }
    /// Whether the state includes active.
    pub const fn active(self) -> bool {
        matches!(self, Self::Active | Self::PendingActive)
    }
    /// The state from its two parts.
    pub const fn from_parts(pending: bool, active: bool) -> Self {
        match (pending, active) {
            (false, false) => Self::Invalid,
            (true, false) => Self::Pending,
            (false, true) => Self::Active,
            (true, true) => Self::PendingActive,
        }
    }
}

/// One `ICH_LR<n>_EL2` value, decoded: vINTID (31:0), pINTID (44:32, with HW) or EOI
/// (41, without HW), Priority (55:48), Group (60), HW (61), State (63:62).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lr {
    /// The virtual INTID the guest acknowledges.
    pub vintid: u32,
    /// With `hw`: the physical INTID the guest's deactivation deactivates.
    pub pintid: Option<u16>,
    /// Without `hw`: a maintenance interrupt when the guest deactivates it.
    pub eoi: bool,
    /// Priority (the CPU uses its implemented high-order bits).
    pub priority: u8,
    /// Group 1 (else group 0).
    pub group1: bool,
    /// Pending / active.
    pub state: LrState,
}

impl Lr {
    const STATE_SHIFT: u32 = 62;
    const HW: u64 = 1 << 61;
    const GROUP: u64 = 1 << 60;
    const PRIORITY_SHIFT: u32 = 48;
    const PINTID_SHIFT: u32 = 32;
    const PINTID_MASK: u64 = 0x1fff;
    const EOI: u64 = 1 << 41;

    /// The register value.
    pub const fn encode(&self) -> u64 {
        let state = match self.state {
            LrState::Invalid => 0,
            LrState::Pending => 1,
            LrState::Active => 2,
            LrState::PendingActive => 3,
        };
        let mut v = (state << Self::STATE_SHIFT)
            | ((self.priority as u64) << Self::PRIORITY_SHIFT)
            | self.vintid as u64;
        if self.group1 {
            v |= Self::GROUP;
        }
        match self.pintid {
            Some(p) => v |= Self::HW | ((p as u64 & Self::PINTID_MASK) << Self::PINTID_SHIFT),
            None if self.eoi => v |= Self::EOI,
            None => {}
        }
        v
    }

    /// Decodes a register value.
    pub const fn decode(v: u64) -> Self {
        let state = match v >> Self::STATE_SHIFT {
            0 => LrState::Invalid,
            1 => LrState::Pending,
            2 => LrState::Active,
            _ => LrState::PendingActive,
        };
        let hw = v & Self::HW != 0;
        Self {
            vintid: v as u32,
            pintid: if hw {
                Some(((v >> Self::PINTID_SHIFT) & Self::PINTID_MASK) as u16)
            } else {
                None
            },
            eoi: !hw && v & Self::EOI != 0,
            priority: (v >> Self::PRIORITY_SHIFT) as u8,
            group1: v & Self::GROUP != 0,
            state,
        }
    }
}

/// `ICH_VMCR_EL2` fields the VMM reads.
pub mod vmcr {
    /// VENG0: virtual group 0 enabled.
    pub const VENG0: u64 = 1 << 0;
    /// VENG1: virtual group 1 enabled.
    pub const VENG1: u64 = 1 << 1;
    /// VPMR (31:24): the guest's priority mask.
    pub const fn vpmr(vmcr: u64) -> u8 {
        (vmcr >> 24) as u8
    }
}

/// A guest's write of `ICC_SGI1R_EL1` (or `ICC_ASGI1R_EL1`/`ICC_SGI0R_EL1`, same
/// layout): TargetList (15:0), Aff1 (23:16), INTID (27:24), Aff2 (39:32), IRM (40),
/// RS (47:44), Aff3 (55:48).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sgi1r {
    /// The SGI (0–15).
    pub intid: u32,
    /// Every PE but the sender (Interrupt Routing Mode 1).
    pub all_but_self: bool,
    /// Aff3.Aff2.Aff1 of the targets, packed as in MPIDR (Aff3 at 39:32).
    pub aff321: u64,
    /// Range selector: TargetList bit n means Aff0 = RS * 16 + n.
    pub rs: u8,
    /// TargetList.
    pub target_list: u16,
}

impl Sgi1r {
    /// Decodes the written value.
    pub const fn decode(v: u64) -> Self {
        Self {
            intid: ((v >> 24) & 0xf) as u32,
            all_but_self: v & (1 << 40) != 0,
            aff321: (((v >> 48) & 0xff) << 32)
                | (((v >> 32) & 0xff) << 16)
                | (((v >> 16) & 0xff) << 8),
            rs: ((v >> 44) & 0xf) as u8,
            target_list: v as u16,
        }
    }

    /// Whether the PE with affinity `mpidr` (MPIDR_EL1 layout) is a target, the sender
    /// `sender_mpidr` included when the list names it.
    pub const fn targets(&self, mpidr: u64, sender_mpidr: u64) -> bool {
        let m = mpidr & AFFINITY_MASK;
        if self.all_but_self {
            return m != sender_mpidr & AFFINITY_MASK;
        }
        if m & !0xff != self.aff321 {
            return false;
        }
        let aff0 = (m & 0xff) as u32;
        let base = self.rs as u32 * 16;
        aff0 >= base && aff0 < base + 16 && self.target_list & (1 << (aff0 - base)) != 0
    }
}

/// The affinity fields of MPIDR_EL1 (Aff3 39:32, Aff2 23:16, Aff1 15:8, Aff0 7:0).
pub const AFFINITY_MASK: u64 = 0xff_00ff_ffff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_round_trips_and_matches_the_architected_layout() {
        let lr = Lr {
            vintid: 27,
            pintid: Some(27),
            eoi: false,
            priority: 0xa0,
            group1: true,
            state: LrState::Pending,
        };
        let v = lr.encode();
        // State 01, HW, Group, priority 0xa0, pINTID 27, vINTID 27.
        assert_eq!(
            v,
            (1 << 62) | (1 << 61) | (1 << 60) | (0xa0 << 48) | (27 << 32) | 27
        );
        assert_eq!(Lr::decode(v), lr);
        let soft = Lr {
            vintid: 33,
            pintid: None,
            eoi: true,
            priority: 0,
            group1: false,
            state: LrState::PendingActive,
        };
        assert_eq!(soft.encode(), (3 << 62) | (1 << 41) | 33);
        assert_eq!(Lr::decode(soft.encode()), soft);
        assert_eq!(Lr::decode(0).state, LrState::Invalid);
    }

    #[test]
    fn the_host_cannot_set_trap_bits_or_eoicount() {
        // TC (10), TALL0 (11), TALL1 (12), TSEI (13), TDIR (14), EOIcount.
        let hostile = (0x1f << 10) | ich_hcr::EOICOUNT_MASK;
        assert_eq!(guest_ich_hcr(hostile), ich_hcr::EN);
        assert_eq!(
            guest_ich_hcr(ich_hcr::UIE | ich_hcr::NPIE),
            ich_hcr::EN | ich_hcr::UIE | ich_hcr::NPIE
        );
    }

    #[test]
    fn vtr_decodes_list_registers_and_active_priority_registers() {
        // QEMU: 4 list registers, 5 preemption and 5 priority bits.
        let qemu = (4 << 29) | (4 << 26) | 3;
        assert_eq!(
            Vtr::decode(qemu),
            Vtr {
                list_regs: 4,
                apr_regs: 1
            }
        );
        assert_eq!(Vtr::decode((5 << 26) | 15).apr_regs, 2);
        assert_eq!(
            Vtr::decode((6 << 26) | 15),
            Vtr {
                list_regs: 16,
                apr_regs: 4
            }
        );
    }

    #[test]
    fn sgi1r_targets_by_affinity_list_and_range() {
        // SGI 3 to Aff1 = 0, Aff0 in {0, 2}.
        let s = Sgi1r::decode((3 << 24) | 0b101);
        assert_eq!(s.intid, 3);
        assert!(s.targets(0x8000_0000, 0x8000_0001), "RES1 bit 31 ignored");
        assert!(!s.targets(1, 0));
        assert!(s.targets(2, 2), "the sender itself when the list names it");
        assert!(!s.targets(0x100, 0), "other Aff1");
        // Aff3 = 1, Aff2 = 2, Aff1 = 3, RS = 1: TargetList bit 0 means Aff0 = 16.
        let far = Sgi1r::decode((1 << 48) | (1 << 44) | (2 << 32) | (3 << 16) | 1);
        assert!(far.targets(0x01_0002_0310, 0));
        assert!(!far.targets(0x01_0002_0300, 0));
        // IRM = 1: all but the sender.
        let all = Sgi1r::decode((1 << 40) | (5 << 24));
        assert!(all.targets(1, 0) && !all.targets(0, 0));
    }
}
