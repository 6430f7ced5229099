//! The guest ABI between the host VMM and the hyp: the vCPU context the host allocates
//! and the hyp runs, the VM descriptor, the argument rules of the VM hypercalls, and the
//! synchronous-external-abort injection the hyp performs on the host's request.
//!
//! # Summary (issue 4, item 1)
//!
//! nVHE, non-protected: the host owns guest RAM and every structure below; the hyp
//! reaches host memory through `kern_hyp_va` of the host's **linear-map VA** after
//! checking it. Every memory argument of a VM call is a linear-map VA (never a KIMAGE
//! VA, never a PA); the hyp refuses one that is not [`crate::hypercall::is_linear_va`],
//! not mapped at EL2 (its stage 1 maps all RAM except its own carve-out), or that
//! overlaps the carve-out.
//!
//! | call (`x0 = 0xC600_0000 \| id`) | arguments | result (x0 = 0) |
//! | --- | --- | --- |
//! | `VmCreate` | x1 = linear VA of the stage-2 table pool (page aligned, and aligned to the root table's size: [`root_align`]), x2 = pool bytes (page multiple, at least [`MIN_POOL_PAGES`] pages), x3 = IPA bits (0 = default: 40, capped to the CPU) | x1 = VM handle, x2 = VMID, x3 = IPA bits, x4 = root table PA |
//! | `VmMap` | x1 = handle, x2 = IPA, x3 = linear VA of the backing host RAM, x4 = bytes (all page aligned) | — (normal write-back memory, RWX) |
//! | `VcpuRun` | x1 = handle, x2 = linear VA of a [`VcpuContext`] (16-byte aligned) | x1 = exit kind (`shared::exit::KIND_*`); the record is in `VcpuContext::exit` |
//! | `VmDestroy` | x1 = handle | — (stage 2 and TLBs of the VMID invalidated; the pool is the host's again) |
//! | `VmUnmap` | x1 = handle, x2 = IPA, x3 = bytes (page aligned, inside the IPA space, every page mapped: [`check_unmap_args`]) | x1 = [`TlbiPath`] taken, x2 = TLBI-by-IPA instructions issued |
//!
//! Failures: x0 = INVALID_PARAMETER (−3) with an [`crate::hypercall::HcallError`] in
//! x1, and nothing changed (a `VmMap` is checked completely — range, overlap, pool
//! space — before the first descriptor is written). VM calls answer `NotReady` until the
//! host has closed setup with `FinaliseSetup` (which tells the hyp its carve-out).
//!
//! * **The pool** is host RAM the host gives up for the VM's lifetime: the hyp writes the
//!   stage-2 tables there (root first, then one page per table), zeroing each page as it
//!   takes it. The host must not touch it until `VmDestroy` returned.
//! * **Mappings** are 2 MiB blocks where IPA, PA and length allow, 4 KiB pages
//!   elsewhere; an IPA range that overlaps anything already mapped is refused
//!   (`Overlap`). The backing must be physically contiguous RAM (a linear-map range is).
//! * **Unmapping** (`VmUnmap`) clears the stage-2 entries of the range and invalidates
//!   the TLBs for exactly that range before it returns, so no vCPU can reach the pages
//!   afterwards and the host may reuse them. It is refused while a vCPU of the VM runs
//!   (`Busy`: no vCPU may walk tables that change) and when any page of the range is not
//!   mapped (`NotGuestMapped`). A 2 MiB block the range covers only in part is **split**
//!   (a level-3 table with the same translation replaces it, then the range's pages are
//!   cleared); that table comes from the pool, so a split can fail with `NoMemory`. A
//!   block-sized map later lands as pages in such a table. The invalidation (with the
//!   VM's VTTBR loaded): `DSB ISHST`, the range by IPA — `TLBI RIPAS2E1IS` ranges where
//!   the CPUs have FEAT_TLBIRANGE (`HAS_TLB_RANGE`), else one `TLBI IPAS2E1IS` per page
//!   ([`TlbiPath`]) — then `DSB ISH`, `TLBI VMALLE1IS` (combined stage-1+2 entries may
//!   hold the old translation), `DSB ISH`, `ISB`.
//! * **`VcpuRun`** copies PC, PSTATE, the injection request, VBAR_EL1 and SCTLR_EL1
//!   out of the context once ([`EntrySnapshot`]), checks that copy and enters the guest
//!   from it ([`prepare_entry`]): another host CPU rewriting the context meanwhile
//!   cannot make the hyp enter anything but AArch64 EL0/EL1. The context must not lie
//!   in the VM's own pool (`HypMemory`). FAR/HPFAR in [`LastExit`] are those of an
//!   abort exit and 0 for every other exit. Then it
//!   loads the context, runs the guest until the first exit the hyp does
//!   not absorb, saves the context and returns. Exits: HVC, SMC, WFI/WFE, trapped system
//!   registers, MMIO (stage-2 fault with a valid syndrome outside guest RAM), aborts
//!   (no syndrome, outside the IPA space), IRQ/FIQ, SError. The hyp never advances the
//!   PC itself: the host adds [`crate::exit::Exit::pc_advance`] to `gpr.pc` when it
//!   completes an exit by emulation. **SMC** traps (EC 0x17) with the PC still *at* the
//!   SMC: the host writes the result registers and adds 4 (or injects an undefined
//!   instruction with [`INJECT_UNDEF`], the PC left at the SMC). **HVC** returns past itself already.
//! * **Stopping a guest** from another CPU: while a guest runs, physical IRQs and FIQs
//!   are routed to EL2 (`HCR_EL2.IMO/FMO`), and any one of them ends the run with
//!   [`crate::exit::Exit::Irq`] without being acknowledged; the host takes the
//!   interrupt at EL1 as soon as the hypercall returns (if its own PSTATE.I allows).
//!   So the host stops a vCPU by sending that CPU an SGI (or by its own timer) and then
//!   not calling `VcpuRun` again.
//! * **Injection**: set [`VcpuContext::inject`] before `VcpuRun`; the hyp delivers a
//!   synchronous external abort ([`inject_sea`]) or an Undefined Instruction exception
//!   ([`inject_undef`], for the instruction at `gpr.pc`) to the guest's EL1 exactly as
//!   hardware would, clears the field and runs the guest from its synchronous vector.
//! * **Timer**: the guest owns the virtual timer (CNTV_*, switched with the context);
//!   its physical timer and CNTP_* are trapped (system-register exit). The hyp disables
//!   the guest's virtual timer on exit (its value is saved), so it cannot fire into
//!   the host; the host reads `sys.cntv_ctl_el0` / `cntv_cval_el0` to see if it is due.
//! * **One CPU at a time** per context: the hyp claims `VcpuContext::running` for the
//!   run and refuses a context that another CPU runs (`Busy`). `VmDestroy` and
//!   `VmUnmap` are refused while any vCPU of the VM runs.

use crate::exit::{Exit, ExitRecord, ExitRecordError};
use crate::hypercall::{is_linear_va, HcallError};
use crate::stage2::Stage2Geometry;
use crate::vgic::VgicCpuIf;

/// The general-purpose state of a vCPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GuestGprs {
    /// x0–x30.
    pub x: [u64; 31],
    /// SP_EL1.
    pub sp_el1: u64,
    /// The guest's PC (ELR_EL2 while it is trapped).
    pub pc: u64,
    /// The guest's PSTATE (SPSR_EL2 while it is trapped); see [`check_pstate`].
    pub pstate: u64,
}

/// The guest EL1 (and EL0) system registers the world switch saves and loads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct GuestSysRegs {
    /// SCTLR_EL1.
    pub sctlr_el1: u64,
    /// CPACR_EL1.
    pub cpacr_el1: u64,
    /// TTBR0_EL1.
    pub ttbr0_el1: u64,
    /// TTBR1_EL1.
    pub ttbr1_el1: u64,
    /// TCR_EL1.
    pub tcr_el1: u64,
    /// MAIR_EL1.
    pub mair_el1: u64,
    /// AMAIR_EL1.
    pub amair_el1: u64,
    /// VBAR_EL1.
    pub vbar_el1: u64,
    /// CONTEXTIDR_EL1.
    pub contextidr_el1: u64,
    /// TPIDR_EL0.
    pub tpidr_el0: u64,
    /// TPIDR_EL1.
    pub tpidr_el1: u64,
    /// TPIDRRO_EL0.
    pub tpidrro_el0: u64,
    /// SP_EL0.
    pub sp_el0: u64,
    /// ELR_EL1.
    pub elr_el1: u64,
    /// SPSR_EL1.
    pub spsr_el1: u64,
    /// ESR_EL1.
    pub esr_el1: u64,
    /// FAR_EL1.
    pub far_el1: u64,
    /// AFSR0_EL1.
    pub afsr0_el1: u64,
    /// AFSR1_EL1.
    pub afsr1_el1: u64,
    /// PAR_EL1.
    pub par_el1: u64,
    /// CNTKCTL_EL1.
    pub cntkctl_el1: u64,
    /// MDSCR_EL1.
    pub mdscr_el1: u64,
    /// CSSELR_EL1.
    pub csselr_el1: u64,
    /// CNTV_CTL_EL0 (the guest's virtual timer control).
    pub cntv_ctl_el0: u64,
    /// CNTV_CVAL_EL0 (the guest's virtual timer compare value).
    pub cntv_cval_el0: u64,
    /// Keeps the block a multiple of 16 bytes.
    pub _reserved: u64,
}

/// FP/SIMD state: v0–v31, FPSR, FPCR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct FpRegs {
    /// v0–v31 (q-register view).
    pub v: [u128; 32],
    /// FPSR.
    pub fpsr: u64,
    /// FPCR.
    pub fpcr: u64,
}

/// Pointer-authentication keys (APIA, APIB, APDA, APDB, APGA; low word then high
/// word), switched only on CPUs with address authentication (`HAS_ADDRESS_AUTH`), where
/// the guest runs with `HCR_EL2.API/APK` set and may use them untrapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct PtrAuthKeys {
    /// The ten key halves in the order above.
    pub keys: [u64; 10],
}

/// ESR_ELx.ISS.WnR: the faulting data access was a write.
const ESR_WNR_SHIFT: u64 = 6;

/// No injection pending.
pub const INJECT_NONE: u64 = 0;
/// Inject a synchronous external abort on a data access at [`Injection::far`].
pub const INJECT_DABT: u64 = 1;
/// Inject a synchronous external abort on an instruction fetch at [`Injection::far`].
pub const INJECT_IABT: u64 = 2;
/// Like [`INJECT_DABT`], for a data access that was a write (ESR_EL1.WnR set, as the
/// hardware reports a faulting store).
pub const INJECT_DABT_WRITE: u64 = 3;
/// Inject an Undefined Instruction exception (ESR_EL1.EC = 0, "unknown reason") for
/// the instruction at the guest's PC ([`inject_undef`]); [`Injection::far`] is ignored.
pub const INJECT_UNDEF: u64 = 4;

/// An abort the hyp delivers to the guest before it next runs it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Injection {
    /// [`INJECT_NONE`], [`INJECT_DABT`], [`INJECT_DABT_WRITE`], [`INJECT_IABT`] or
    /// [`INJECT_UNDEF`]; the hyp resets it to [`INJECT_NONE`] once delivered. Any other
    /// value: `BadInjection`, nothing run.
    pub kind: u64,
    /// The faulting virtual address the guest sees in FAR_EL1 (aborts only).
    pub far: u64,
}

/// What the last `VcpuRun` ended with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct LastExit {
    /// The decoded exit in its wire form (`shared::exit`).
    pub record: ExitRecord,
    /// Which vector: 0 synchronous, 1 IRQ, 2 FIQ, 3 SError.
    pub vector: u64,
    /// ESR_EL2 as read at the exit (0 for IRQ/FIQ).
    pub esr: u64,
    /// FAR_EL2 as read at an instruction/data-abort exit; 0 for any other exit
    /// (`shared::exit::exit_fault_regs`).
    pub far: u64,
    /// HPFAR_EL2 as read at an instruction/data-abort exit; 0 for any other exit.
    pub hpfar: u64,
}

/// One vCPU, in host memory (16-byte aligned; passed by linear-map VA).
///
/// The host fills it before the first run (see [`VcpuContext::new`]) and may change any
/// field between runs; the hyp reads the whole context on entry and writes it on exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C, align(16))]
pub struct VcpuContext {
    /// x0–x30, SP_EL1, PC, PSTATE.
    pub gpr: GuestGprs,
    /// EL1/EL0 system registers.
    pub sys: GuestSysRegs,
    /// FP/SIMD registers.
    pub fp: FpRegs,
    /// Pointer-authentication keys.
    pub ptrauth: PtrAuthKeys,
    /// The MPIDR the guest reads (VMPIDR_EL2 while it runs); bit 31 (RES1) is forced.
    pub vmpidr: u64,
    /// A pending abort injection.
    pub inject: Injection,
    /// Set by the hyp while a CPU runs this context (claimed atomically); the host
    /// leaves it 0.
    pub running: u64,
    /// The last exit.
    pub exit: LastExit,
    /// The virtual GIC CPU interface (list registers, VMCR, active priorities).
    pub vgic: VgicCpuIf,
    /// CNTVOFF_EL2 while the guest runs: the VM's virtual-counter offset (the host
    /// writes the same value into every vCPU of a VM, so its virtual count starts near
    /// zero, as KVM does).
    pub cntvoff: u64,
}

/// SCTLR_EL1 RES1 bits (11, 20, 22, 23, 28, 29): a guest's reset value, MMU off.
pub const SCTLR_EL1_RESET: u64 = 0x30d0_0800;
/// SPSR/PSTATE mode field M[4:0] mask.
pub const PSTATE_MODE_MASK: u64 = 0x1f;
/// Mode EL0t.
pub const PSTATE_EL0T: u64 = 0x0;
/// Mode EL1t (EL1 with SP_EL0).
pub const PSTATE_EL1T: u64 = 0x4;
/// Mode EL1h (EL1 with SP_EL1).
pub const PSTATE_EL1H: u64 = 0x5;
/// PSTATE.{D,A,I,F}.
pub const PSTATE_DAIF: u64 = 0xf << 6;
/// PSTATE.IL (illegal execution state), never valid from the host.
pub const PSTATE_IL: u64 = 1 << 20;
/// PSTATE.SS (software step); the hyp does not single-step guests.
pub const PSTATE_SS: u64 = 1 << 21;
/// PSTATE.PAN.
pub const PSTATE_PAN: u64 = 1 << 22;
/// PSTATE.SSBS.
pub const PSTATE_SSBS: u64 = 1 << 12;
/// SCTLR_EL1.SPAN: when 0, taking an exception to EL1 sets PSTATE.PAN.
pub const SCTLR_EL1_SPAN: u64 = 1 << 23;
/// SCTLR_EL1.DSSBS: the PSTATE.SSBS value on exception entry to EL1.
pub const SCTLR_EL1_DSSBS: u64 = 1 << 44;
/// VMPIDR bit 31, RES1.
pub const MPIDR_RES1: u64 = 1 << 31;

impl VcpuContext {
    /// A vCPU at reset as the arm64 boot protocol wants it: EL1h, DAIF masked, MMU off,
    /// `pc` = entry, `x0` = first argument (the DTB), everything else zero.
    pub fn new(pc: u64, x0: u64, mpidr: u64) -> Self {
        let mut c = Self::default();
        c.gpr.pc = pc;
        c.gpr.x[0] = x0;
        c.gpr.pstate = PSTATE_EL1H | PSTATE_DAIF;
        c.sys.sctlr_el1 = SCTLR_EL1_RESET;
        c.vmpidr = mpidr | MPIDR_RES1;
        c
    }

    /// The typed last exit.
    pub fn last_exit(&self) -> Result<Exit, ExitRecordError> {
        self.exit.record.decode()
    }

    /// Register `n` as an emulated instruction sees it (31 = XZR reads 0).
    pub fn reg(&self, n: u8) -> u64 {
        self.gpr.x.get(usize::from(n)).copied().unwrap_or(0)
    }

    /// Writes register `n` (31 = XZR: the value is discarded).
    pub fn set_reg(&mut self, n: u8, v: u64) {
        if let Some(r) = self.gpr.x.get_mut(usize::from(n)) {
            *r = v;
        }
    }
}

/// Byte offsets of the fields the world-switch assembly uses. The asserts below pin the
/// numbers, so a layout change fails the build of both sides instead of silently
/// shifting the assembly.
pub mod offset {
    use super::{FpRegs, GuestGprs, VcpuContext};
    use core::mem::offset_of;
    /// `gpr.x[0]`.
    pub const X0: usize = offset_of!(VcpuContext, gpr) + offset_of!(GuestGprs, x);
    /// `gpr.sp_el1`.
    pub const SP_EL1: usize = offset_of!(VcpuContext, gpr) + offset_of!(GuestGprs, sp_el1);
    /// `gpr.pc`.
    pub const PC: usize = offset_of!(VcpuContext, gpr) + offset_of!(GuestGprs, pc);
    /// `gpr.pstate`.
    pub const PSTATE: usize = offset_of!(VcpuContext, gpr) + offset_of!(GuestGprs, pstate);
    /// `sys`.
    pub const SYS: usize = offset_of!(VcpuContext, sys);
    /// `fp.v[0]`.
    pub const FP_V0: usize = offset_of!(VcpuContext, fp) + offset_of!(FpRegs, v);
    /// `fp.fpsr`.
    pub const FPSR: usize = offset_of!(VcpuContext, fp) + offset_of!(FpRegs, fpsr);
    /// `fp.fpcr`.
    pub const FPCR: usize = offset_of!(VcpuContext, fp) + offset_of!(FpRegs, fpcr);
    /// `ptrauth`.
    pub const PTRAUTH: usize = offset_of!(VcpuContext, ptrauth);
    /// `vmpidr`.
    pub const VMPIDR: usize = offset_of!(VcpuContext, vmpidr);
    /// `inject`.
    pub const INJECT: usize = offset_of!(VcpuContext, inject);
    /// `running`.
    pub const RUNNING: usize = offset_of!(VcpuContext, running);
    /// `exit`.
    pub const EXIT: usize = offset_of!(VcpuContext, exit);
    /// `vgic`.
    pub const VGIC: usize = offset_of!(VcpuContext, vgic);
    /// `cntvoff`.
    pub const CNTVOFF: usize = offset_of!(VcpuContext, cntvoff);
    /// Offset of `v` within [`FpRegs`] (the switch assembly's FP block pointer).
    pub const FP_BLOCK_V0: usize = offset_of!(FpRegs, v);
    /// Offset of `fpsr` within [`FpRegs`].
    pub const FP_BLOCK_FPSR: usize = offset_of!(FpRegs, fpsr);
}

/// Bytes of a [`VcpuContext`].
pub const VCPU_CONTEXT_SIZE: usize = core::mem::size_of::<VcpuContext>();

// The ABI, in numbers: what the hyp's assembly and any other user rely on.
const _: () = {
    use offset as o;
    assert!(o::X0 == 0 && o::SP_EL1 == 248 && o::PC == 256 && o::PSTATE == 264);
    assert!(o::SYS == 272);
    assert!(core::mem::size_of::<GuestSysRegs>() == 26 * 8);
    assert!(o::FP_V0 == 480 && o::FPSR == 992 && o::FPCR == 1000);
    assert!(o::FP_BLOCK_V0 == 0 && o::FP_BLOCK_FPSR == 512);
    assert!(o::PTRAUTH == 1008 && o::VMPIDR == 1088 && o::INJECT == 1096);
    assert!(o::RUNNING == 1112 && o::EXIT == 1120);
    assert!(core::mem::size_of::<LastExit>() == 56);
    assert!(core::mem::size_of::<crate::vgic::VgicCpuIf>() == 30 * 8);
    assert!(o::VGIC == 1176 && o::CNTVOFF == 1416);
    assert!(VCPU_CONTEXT_SIZE == 1424);
    assert!(core::mem::align_of::<VcpuContext>() == 16);
    assert!(core::mem::size_of::<FpRegs>() == 528);
};

/// What `VmCreate` tells the host about the new VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmDescriptor {
    /// The handle the other VM calls take.
    pub handle: u64,
    /// The VMID the hyp gave it.
    pub vmid: u16,
    /// The IPA size of its stage 2.
    pub ipa_bits: u8,
    /// The PA of its stage-2 root table (inside the pool).
    pub root_pa: u64,
}

/// Most VMs the hyp holds at once (its VM table is static: no heap at EL2).
pub const MAX_VMS: usize = 16;
/// Fewest pool pages `VmCreate` accepts beyond the root's first page: one table per
/// level below the root (up to 3), so the first 4 KiB mapping always fits.
pub const MIN_POOL_PAGES: u64 = 4;
/// Page size of the stage-2 tables and mappings.
pub const PAGE: u64 = 4096;
/// Block size of a level-2 stage-2 block mapping.
pub const BLOCK_2M: u64 = 2 << 20;

/// A VM handle: `generation << 8 | slot`, so a handle of a destroyed VM is refused
/// even when its slot was reused. Never 0.
pub const fn vm_handle(slot: usize, generation: u32) -> u64 {
    ((generation as u64) << 8) | (slot as u64 & 0xff)
}

/// The slot and generation of a handle, if the slot is in range.
pub const fn split_vm_handle(handle: u64) -> Option<(usize, u32)> {
    let slot = (handle & 0xff) as usize;
    if slot >= MAX_VMS || handle >> 40 != 0 {
        return None;
    }
    Some((slot, (handle >> 8) as u32))
}

/// The alignment a pool needs: its first page(s) hold the root table, which must be
/// aligned to its size (concatenated roots: up to 16 pages).
pub fn root_align(ipa_bits: u8) -> Result<u64, HcallError> {
    Stage2Geometry::new(ipa_bits)
        .map(|g| g.root_align())
        .map_err(|_| HcallError::BadIpaBits)
}

/// Checks a `VmCreate` pool: a page-aligned (and root-aligned) linear-map range of at
/// least [`MIN_POOL_PAGES`] pages plus the root. The EL2 mapping is the hyp's check.
pub fn check_pool(va: u64, bytes: u64, ipa_bits: u8) -> Result<u64, HcallError> {
    let align = root_align(ipa_bits)?;
    if !va.is_multiple_of(align) || !bytes.is_multiple_of(PAGE) {
        return Err(HcallError::Misaligned);
    }
    let root_pages = align / PAGE;
    if bytes / PAGE < root_pages + MIN_POOL_PAGES - 1 {
        return Err(HcallError::NoMemory);
    }
    check_linear_range(va, bytes)?;
    Ok(bytes / PAGE)
}

/// Checks that `[va, va + bytes)` is a non-empty range inside the linear map.
pub fn check_linear_range(va: u64, bytes: u64) -> Result<(), HcallError> {
    let last = va
        .checked_add(bytes)
        .and_then(|e| e.checked_sub(1))
        .ok_or(HcallError::OutOfRange)?;
    if bytes == 0 || !is_linear_va(va) || !is_linear_va(last) {
        return Err(HcallError::OutOfRange);
    }
    Ok(())
}

/// Checks the pure part of a `VmMap`: everything page aligned, non-empty, the IPA range
/// inside `2^ipa_bits`, the backing inside the linear map.
pub fn check_map_args(ipa: u64, va: u64, bytes: u64, ipa_bits: u8) -> Result<(), HcallError> {
    if !ipa.is_multiple_of(PAGE) || !va.is_multiple_of(PAGE) || !bytes.is_multiple_of(PAGE) {
        return Err(HcallError::Misaligned);
    }
    if bytes == 0 {
        return Err(HcallError::OutOfRange);
    }
    let end = ipa.checked_add(bytes).ok_or(HcallError::OutOfRange)?;
    if ipa_bits >= 64 || end > 1u64 << ipa_bits {
        return Err(HcallError::OutOfRange);
    }
    check_linear_range(va, bytes)
}

/// Checks the pure part of a `VmUnmap`: IPA and length page aligned, non-empty, the
/// range inside `2^ipa_bits`. Whether every page is mapped is the walker's check.
pub fn check_unmap_args(ipa: u64, bytes: u64, ipa_bits: u8) -> Result<(), HcallError> {
    if !ipa.is_multiple_of(PAGE) || !bytes.is_multiple_of(PAGE) {
        return Err(HcallError::Misaligned);
    }
    if bytes == 0 {
        return Err(HcallError::OutOfRange);
    }
    let end = ipa.checked_add(bytes).ok_or(HcallError::OutOfRange)?;
    if ipa_bits >= 64 || end > 1u64 << ipa_bits {
        return Err(HcallError::OutOfRange);
    }
    Ok(())
}

/// How the hyp invalidated the TLBs for a `VmUnmap` (its reply `x1`), as the
/// `HAS_TLB_RANGE` alternative chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum TlbiPath {
    /// One `TLBI IPAS2E1IS` per page (no FEAT_TLBIRANGE).
    PerPage = 1,
    /// `TLBI RIPAS2E1IS` ranges (FEAT_TLBIRANGE), plus one page for an odd count.
    Range = 2,
}

impl TlbiPath {
    /// The path with reply code `x1`, if it is one.
    pub const fn from_code(x1: u64) -> Option<TlbiPath> {
        match x1 {
            1 => Some(TlbiPath::PerPage),
            2 => Some(TlbiPath::Range),
            _ => None,
        }
    }

    /// A short name for messages and selftest lines: `per-page` or `range`.
    pub const fn name(self) -> &'static str {
        match self {
            TlbiPath::PerPage => "per-page",
            TlbiPath::Range => "range",
        }
    }
}

/// Checks the pure part of a `VcpuRun` context pointer: 16-byte aligned, the whole
/// context inside the linear map.
pub fn check_context_ptr(va: u64) -> Result<(), HcallError> {
    if !va.is_multiple_of(16) {
        return Err(HcallError::Misaligned);
    }
    check_linear_range(va, VCPU_CONTEXT_SIZE as u64)
}

/// PSTATE bits the host may hand the hyp for the guest: NZCV, DIT, UAO, PAN, SSBS,
/// BTYPE, D, A, I, F, TCO and the mode (checked by [`check_pstate`]).
pub const PSTATE_ALLOWED: u64 = (0xf << 28)
    | (1 << 24)
    | (1 << 23)
    | PSTATE_PAN
    | (1 << 25)
    | PSTATE_SSBS
    | (3 << 10)
    | PSTATE_DAIF
    | PSTATE_MODE_MASK;

/// Checks the PSTATE the hyp is asked to return to: AArch64 EL0t, EL1t or EL1h only (an
/// EL2 mode would hand EL2 to the guest), and no bits outside [`PSTATE_ALLOWED`].
pub const fn check_pstate(pstate: u64) -> Result<(), HcallError> {
    if pstate & !PSTATE_ALLOWED != 0 {
        return Err(HcallError::BadPstate);
    }
    match pstate & PSTATE_MODE_MASK {
        PSTATE_EL0T | PSTATE_EL1T | PSTATE_EL1H => Ok(()),
        _ => Err(HcallError::BadPstate),
    }
}

/// The guest registers an injected synchronous external abort changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InjectedAbort {
    /// New ESR_EL1.
    pub esr_el1: u64,
    /// New FAR_EL1.
    pub far_el1: u64,
    /// New ELR_EL1: the PC of the faulting instruction.
    pub elr_el1: u64,
    /// New SPSR_EL1: the PSTATE at the fault.
    pub spsr_el1: u64,
    /// The new PC: the guest's vector for the exception.
    pub pc: u64,
    /// The new PSTATE.
    pub pstate: u64,
}

/// DFSC/IFSC 0x10: synchronous external abort, not on a translation table walk.
pub const FSC_SEA: u64 = 0x10;

/// Where the guest was when the abort happened: the registers exception entry reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultSite {
    /// PC of the faulting instruction.
    pub pc: u64,
    /// PSTATE at the fault (must have passed [`check_pstate`]).
    pub pstate: u64,
    /// VBAR_EL1.
    pub vbar_el1: u64,
    /// SCTLR_EL1 (SPAN, DSSBS).
    pub sctlr_el1: u64,
}

/// What hardware does when an access at `far` aborts with a synchronous external abort
/// at `site` (`data` says data access or fetch):
///
/// * EC = data abort 0x25 / instruction abort 0x21 when the guest was at EL1 ("same
///   EL"), 0x24 / 0x20 when at EL0 ("lower EL"); IL = 1; FSC = 0x10; a data abort
///   also reports WnR = 0 (the access direction is not known to the host);
/// * ELR_EL1 = PC, SPSR_EL1 = PSTATE, FAR_EL1 = `far`;
/// * PC = VBAR_EL1 + 0x000 (from EL1t), 0x200 (from EL1h), 0x400 (from EL0);
/// * PSTATE = EL1h with D, A, I, F set; PAN set if the CPU has PAN (`has_pan`) and
///   SCTLR_EL1.SPAN is 0 (else kept); SSBS = SCTLR_EL1.DSSBS if the CPU has SSBS
///   (`has_ssbs`).
pub const fn inject_sea(
    data: bool,
    write: bool,
    far: u64,
    site: FaultSite,
    has_pan: bool,
    has_ssbs: bool,
) -> InjectedAbort {
    let pstate = site.pstate;
    let from_el0 = pstate & PSTATE_MODE_MASK == PSTATE_EL0T;
    let ec: u64 = match (data, from_el0) {
        (true, true) => 0x24,
        (true, false) => 0x25,
        (false, true) => 0x20,
        (false, false) => 0x21,
    };
    let (pc, new) = exception_entry(site, has_pan, has_ssbs);
    InjectedAbort {
        esr_el1: (ec << 26) | (1 << 25) | ((data && write) as u64) << ESR_WNR_SHIFT | FSC_SEA,
        far_el1: far,
        elr_el1: site.pc,
        spsr_el1: pstate,
        pc,
        pstate: new,
    }
}

/// ESR_EL1 of an Undefined Instruction exception: EC 0 ("unknown reason"), IL = 1 (the
/// guest is AArch64: every instruction is 32 bits), ISS 0.
pub const ESR_UNDEF: u64 = 1 << 25;

/// What hardware does when the instruction at `site.pc` is UNDEFINED: ESR_EL1 =
/// [`ESR_UNDEF`], ELR_EL1 = the instruction (so a handler that emulates it adds 4),
/// SPSR_EL1 = PSTATE, and the same vector and PSTATE as [`inject_sea`] (the synchronous
/// vector for the guest's mode: +0x000 from EL1t, +0x200 from EL1h, +0x400 from EL0;
/// EL1h, DAIF set, PAN/SSBS per SCTLR_EL1). FAR_EL1 is UNKNOWN for this class; the
/// result gives 0 rather than leaking a stale address.
pub const fn inject_undef(site: FaultSite, has_pan: bool, has_ssbs: bool) -> InjectedAbort {
    let (pc, pstate) = exception_entry(site, has_pan, has_ssbs);
    InjectedAbort {
        esr_el1: ESR_UNDEF,
        far_el1: 0,
        elr_el1: site.pc,
        spsr_el1: site.pstate,
        pc,
        pstate,
    }
}

/// The PC and PSTATE of a synchronous exception taken to EL1 from `site`.
const fn exception_entry(site: FaultSite, has_pan: bool, has_ssbs: bool) -> (u64, u64) {
    let pstate = site.pstate;
    let vector = match pstate & PSTATE_MODE_MASK {
        PSTATE_EL1T => 0x000,
        PSTATE_EL1H => 0x200,
        _ => 0x400,
    };
    let mut new = PSTATE_EL1H | PSTATE_DAIF;
    if has_pan && site.sctlr_el1 & SCTLR_EL1_SPAN == 0 {
        new |= PSTATE_PAN;
    } else if has_pan {
        new |= pstate & PSTATE_PAN;
    }
    if has_ssbs && site.sctlr_el1 & SCTLR_EL1_DSSBS != 0 {
        new |= PSTATE_SSBS;
    }
    (site.vbar_el1.wrapping_add(vector), new)
}

/// The host-writable fields of a [`VcpuContext`] that decide how the guest is entered,
/// copied out of host memory **once** by the hyp before it checks them. The context
/// lives in host RAM and another host CPU may rewrite it at any time, so the hyp checks
/// and then uses this copy, never the context again (a PSTATE re-read after its check
/// could name EL2 and make the ERET land in the hyp with a host-chosen PC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntrySnapshot {
    /// `gpr.pc`.
    pub pc: u64,
    /// `gpr.pstate`.
    pub pstate: u64,
    /// `inject.kind`.
    pub inject_kind: u64,
    /// `inject.far`.
    pub inject_far: u64,
    /// `sys.vbar_el1`.
    pub vbar_el1: u64,
    /// `sys.sctlr_el1`.
    pub sctlr_el1: u64,
}

/// How the guest is entered: ELR_EL2/SPSR_EL2, and the injected exception's EL1
/// registers if one was pending. `pstate` always passes [`check_pstate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestEntry {
    /// The PC the guest starts at (ELR_EL2).
    pub pc: u64,
    /// The PSTATE it starts with (SPSR_EL2): AArch64 EL0t, EL1t or EL1h.
    pub pstate: u64,
    /// The injection delivered on the way in, if any.
    pub injected: Option<InjectedAbort>,
}

/// Checks one snapshot of the context (injection kind, then PSTATE) and computes the
/// entry from the same values: nothing the host changes afterwards can reach ELR/SPSR.
pub const fn prepare_entry(
    s: EntrySnapshot,
    has_pan: bool,
    has_ssbs: bool,
) -> Result<GuestEntry, HcallError> {
    match s.inject_kind {
        INJECT_NONE | INJECT_DABT | INJECT_DABT_WRITE | INJECT_IABT | INJECT_UNDEF => {}
        _ => return Err(HcallError::BadInjection),
    }
    if let Err(e) = check_pstate(s.pstate) {
        return Err(e);
    }
    if s.inject_kind == INJECT_NONE {
        return Ok(GuestEntry {
            pc: s.pc,
            pstate: s.pstate,
            injected: None,
        });
    }
    let site = FaultSite {
        pc: s.pc,
        pstate: s.pstate,
        vbar_el1: s.vbar_el1,
        sctlr_el1: s.sctlr_el1,
    };
    let a = if s.inject_kind == INJECT_UNDEF {
        inject_undef(site, has_pan, has_ssbs)
    } else {
        let data = s.inject_kind != INJECT_IABT;
        inject_sea(
            data,
            s.inject_kind == INJECT_DABT_WRITE,
            s.inject_far,
            site,
            has_pan,
            has_ssbs,
        )
    };
    Ok(GuestEntry {
        pc: a.pc,
        pstate: a.pstate,
        injected: Some(a),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::{AccessWidth, MmioAccess};

    fn site(pc: u64, pstate: u64, vbar_el1: u64, sctlr_el1: u64) -> FaultSite {
        FaultSite {
            pc,
            pstate,
            vbar_el1,
            sctlr_el1,
        }
    }

    fn snap(pstate: u64, kind: u64) -> EntrySnapshot {
        EntrySnapshot {
            pc: 0x4000_0010,
            pstate,
            inject_kind: kind,
            inject_far: 0x1234,
            vbar_el1: 0x4000_0800,
            sctlr_el1: SCTLR_EL1_RESET,
        }
    }

    #[test]
    fn entry_refuses_el2_and_bad_injections_from_one_snapshot() {
        // EL2t/EL2h, AArch32, IL: refused whether or not an injection is pending.
        for bad in [0x8, 0x9, 0x3c9, 0x10, 0x3c5 | PSTATE_IL] {
            for kind in [INJECT_NONE, INJECT_DABT, INJECT_UNDEF] {
                assert_eq!(
                    prepare_entry(snap(bad, kind), true, true),
                    Err(HcallError::BadPstate),
                    "{bad:#x} kind {kind}"
                );
            }
        }
        assert_eq!(
            prepare_entry(snap(0x3c5, 5), true, true),
            Err(HcallError::BadInjection)
        );
        let plain = prepare_entry(snap(0x3c4, INJECT_NONE), false, false);
        assert_eq!(
            plain,
            Ok(GuestEntry {
                pc: 0x4000_0010,
                pstate: 0x3c4,
                injected: None
            })
        );
    }

    #[test]
    fn entry_with_injection_matches_the_injection_helpers() {
        let s = snap(0x3c5, INJECT_DABT_WRITE);
        let e = prepare_entry(s, true, false).unwrap();
        let site = FaultSite {
            pc: s.pc,
            pstate: s.pstate,
            vbar_el1: s.vbar_el1,
            sctlr_el1: s.sctlr_el1,
        };
        let want = inject_sea(true, true, 0x1234, site, true, false);
        assert_eq!(e.injected, Some(want));
        assert_eq!((e.pc, e.pstate), (want.pc, want.pstate));
        let i = prepare_entry(snap(0, INJECT_IABT), true, true).unwrap();
        assert_eq!(i.injected.map(|a| a.esr_el1 >> 26), Some(0x20));
        let u = prepare_entry(snap(0x3c5, INJECT_UNDEF), true, true).unwrap();
        assert_eq!(u.injected.map(|a| a.esr_el1), Some(ESR_UNDEF));
    }

    proptest::proptest! {
        #[test]
        fn entry_pstate_is_always_a_guest_state(
            pstate in proptest::prelude::any::<u64>(),
            kind in 0u64..8,
            sctlr in proptest::prelude::any::<u64>(),
            pan in proptest::prelude::any::<bool>(),
            ssbs in proptest::prelude::any::<bool>(),
        ) {
            let mut s = snap(pstate, kind);
            s.sctlr_el1 = sctlr;
            if let Ok(e) = prepare_entry(s, pan, ssbs) {
                proptest::prop_assert_eq!(check_pstate(e.pstate), Ok(()));
                proptest::prop_assert_eq!(check_pstate(pstate), Ok(()));
            }
        }
    }

    #[test]
    fn reset_context_follows_the_boot_protocol() {
        let c = VcpuContext::new(0x4008_0000, 0x4800_0000, 1);
        assert_eq!(c.gpr.pc, 0x4008_0000);
        assert_eq!(c.gpr.x[0], 0x4800_0000);
        assert_eq!(c.gpr.pstate, 0x3c5, "EL1h, DAIF masked");
        assert_eq!(c.sys.sctlr_el1 & 1, 0, "MMU off");
        assert_eq!(c.vmpidr, 0x8000_0001);
        assert_eq!(check_pstate(c.gpr.pstate), Ok(()));
        assert_eq!(c.last_exit(), Err(ExitRecordError::UnknownKind(0)));
    }

    #[test]
    fn registers_and_xzr() {
        let mut c = VcpuContext::default();
        c.set_reg(5, 42);
        c.set_reg(31, 7);
        assert_eq!(c.reg(5), 42);
        assert_eq!(c.reg(31), 0);
        assert_eq!(c.gpr.sp_el1, 0, "XZR write does not land in SP");
    }

    #[test]
    fn last_exit_decodes_the_record() {
        let mut c = VcpuContext::default();
        let exit = Exit::Mmio(MmioAccess {
            ipa: 0x0900_0000,
            write: true,
            width: AccessWidth::Double,
            sign_extend: false,
            reg: 0,
            sixty_four: true,
            acquire_release: false,
        });
        c.exit.record = exit.encode();
        assert_eq!(c.last_exit(), Ok(exit));
    }

    #[test]
    fn pstate_rules() {
        for ok in [
            0x3c5,
            0x3c4,
            0x0,
            0xf000_03c5,
            0x3c5 | PSTATE_PAN | PSTATE_SSBS,
        ] {
            assert_eq!(check_pstate(ok), Ok(()), "{ok:#x}");
        }
        // EL2h, EL2t, EL3h, EL1 with the wrong SP bit pattern, AArch32, IL, SS.
        for bad in [0x3c9, 0x8, 0xd, 0x6, 0x10, 0x3c5 | PSTATE_IL, PSTATE_SS | 5] {
            assert_eq!(check_pstate(bad), Err(HcallError::BadPstate), "{bad:#x}");
        }
    }

    #[test]
    fn map_arguments() {
        let va = 0xffff_0000_4800_0000;
        assert_eq!(check_map_args(0x4000_0000, va, 0x20_0000, 40), Ok(()));
        assert_eq!(
            check_map_args(0x4000_0800, va, 0x1000, 40),
            Err(HcallError::Misaligned)
        );
        assert_eq!(
            check_map_args(0x4000_0000, va + 8, 0x1000, 40),
            Err(HcallError::Misaligned)
        );
        assert_eq!(
            check_map_args(0x4000_0000, va, 0x1001, 40),
            Err(HcallError::Misaligned)
        );
        assert_eq!(
            check_map_args(0x4000_0000, va, 0, 40),
            Err(HcallError::OutOfRange)
        );
        // The last page of a 40-bit space is fine, one more is not.
        assert_eq!(check_map_args((1 << 40) - 0x1000, va, 0x1000, 40), Ok(()));
        assert_eq!(
            check_map_args((1 << 40) - 0x1000, va, 0x2000, 40),
            Err(HcallError::OutOfRange)
        );
        assert_eq!(
            check_map_args(u64::MAX - 0xfff, va, 0x2000, 40),
            Err(HcallError::OutOfRange)
        );
        // Backing outside the linear map (a KIMAGE VA, a PA).
        for bad in [0xffff_8000_0800_0000u64, 0x4000_0000] {
            assert_eq!(
                check_map_args(0x4000_0000, bad, 0x1000, 40),
                Err(HcallError::OutOfRange),
                "{bad:#x}"
            );
        }
    }

    #[test]
    fn unmap_arguments_and_paths() {
        assert_eq!(check_unmap_args(0x4000_0000, 0x2000, 40), Ok(()));
        assert_eq!(
            check_unmap_args(0x4000_0800, 0x1000, 40),
            Err(HcallError::Misaligned)
        );
        assert_eq!(
            check_unmap_args(0x4000_0000, 0x1800, 40),
            Err(HcallError::Misaligned)
        );
        assert_eq!(
            check_unmap_args(0x4000_0000, 0, 40),
            Err(HcallError::OutOfRange)
        );
        assert_eq!(check_unmap_args((1 << 40) - 0x1000, 0x1000, 40), Ok(()));
        assert_eq!(
            check_unmap_args((1 << 40) - 0x1000, 0x2000, 40),
            Err(HcallError::OutOfRange)
        );
        assert_eq!(
            check_unmap_args(u64::MAX - 0xfff, 0x2000, 48),
            Err(HcallError::OutOfRange)
        );
        for p in [TlbiPath::PerPage, TlbiPath::Range] {
            assert_eq!(TlbiPath::from_code(p as u64), Some(p));
        }
        assert_eq!(TlbiPath::from_code(0), None);
        assert_eq!(TlbiPath::from_code(3), None);
        assert_eq!(TlbiPath::Range.name(), "range");
        assert_eq!(TlbiPath::PerPage.name(), "per-page");
    }

    #[test]
    fn context_pointer_and_pool() {
        assert_eq!(check_context_ptr(0xffff_0000_4000_0010), Ok(()));
        assert_eq!(
            check_context_ptr(0xffff_0000_4000_0008),
            Err(HcallError::Misaligned)
        );
        assert_eq!(check_context_ptr(0x1000), Err(HcallError::OutOfRange));
        // The context's last byte must be linear too.
        let top = crate::hypercall::LINEAR_MAP_START + crate::hypercall::LINEAR_MAP_SIZE - 16;
        assert_eq!(check_context_ptr(top), Err(HcallError::OutOfRange));

        // 40-bit IPA: two concatenated root pages, 8 KiB alignment.
        assert_eq!(root_align(40), Ok(0x2000));
        assert_eq!(root_align(44), Ok(0x1000));
        assert_eq!(root_align(20), Err(HcallError::BadIpaBits));
        let va = 0xffff_0000_4800_0000;
        assert_eq!(check_pool(va, 16 * PAGE, 40), Ok(16));
        assert_eq!(
            check_pool(va + 0x1000, 16 * PAGE, 40),
            Err(HcallError::Misaligned)
        );
        assert_eq!(check_pool(va, 4 * PAGE, 40), Err(HcallError::NoMemory));
        assert_eq!(check_pool(va, 5 * PAGE, 40), Ok(5));
    }

    #[test]
    fn handles() {
        let h = vm_handle(3, 7);
        assert_eq!(split_vm_handle(h), Some((3, 7)));
        assert_ne!(vm_handle(0, 1), 0);
        assert_eq!(split_vm_handle(MAX_VMS as u64), None);
        assert_eq!(split_vm_handle(1 << 45), None);
    }

    #[test]
    fn sea_from_el1h_goes_to_the_current_el_spx_vector() {
        let a = inject_sea(
            true,
            false,
            0x1234,
            site(0x4008_0010, 0x3c5, 0x4009_0000, SCTLR_EL1_RESET),
            false,
            false,
        );
        assert_eq!(a.esr_el1, 0x9600_0010, "EC 0x25, IL, SEA");
        assert_eq!(a.far_el1, 0x1234);
        assert_eq!((a.elr_el1, a.spsr_el1), (0x4008_0010, 0x3c5));
        assert_eq!(a.pc, 0x4009_0200);
        assert_eq!(a.pstate, 0x3c5);
    }

    #[test]
    fn sea_from_el0_and_el1t_and_fetches() {
        let el0 = inject_sea(
            false,
            false,
            0x40,
            site(0x1000, 0x0, 0x8000, 0),
            false,
            false,
        );
        assert_eq!(el0.esr_el1, (0x20 << 26) | (1 << 25) | 0x10);
        assert_eq!(el0.pc, 0x8400);
        assert_eq!(el0.pstate, 0x3c5);
        let el1t = inject_sea(false, false, 0, site(0x1000, 0x4, 0x8000, 0), false, false);
        assert_eq!(el1t.esr_el1 >> 26, 0x21);
        assert_eq!(el1t.pc, 0x8000);
        let el0_data = inject_sea(true, false, 0, site(0, 0x3c0, 0, 0), false, false);
        assert_eq!(el0_data.esr_el1 >> 26, 0x24);
        // A faulting store reports WnR; a fetch never does.
        let store = inject_sea(true, true, 0, site(0, 0x3c5, 0, 0), false, false);
        assert_eq!(store.esr_el1, 0x9600_0050);
        let fetch = inject_sea(false, true, 0, site(0, 0x3c5, 0, 0), false, false);
        assert_eq!(fetch.esr_el1, 0x8600_0010);
    }

    #[test]
    fn sea_pan_and_ssbs_follow_sctlr() {
        // SPAN = 0: PAN set on entry; SPAN = 1: PAN kept from before.
        let a = inject_sea(true, false, 0, site(0, 0x3c5, 0, 0), true, false);
        assert_ne!(a.pstate & PSTATE_PAN, 0);
        let b = inject_sea(
            true,
            false,
            0,
            site(0, 0x3c5, 0, SCTLR_EL1_SPAN),
            true,
            false,
        );
        assert_eq!(b.pstate & PSTATE_PAN, 0);
        // Without PAN the bit never appears.
        let c = inject_sea(true, false, 0, site(0, 0x3c5, 0, 0), false, false);
        assert_eq!(c.pstate & PSTATE_PAN, 0);
        let d = inject_sea(
            true,
            false,
            0,
            site(0, 0x3c5, 0, SCTLR_EL1_DSSBS),
            false,
            true,
        );
        assert_ne!(d.pstate & PSTATE_SSBS, 0);
        let e = inject_sea(
            true,
            false,
            0,
            site(0, 0x3c5, 0, SCTLR_EL1_DSSBS),
            false,
            false,
        );
        assert_eq!(e.pstate & PSTATE_SSBS, 0);
    }

    #[test]
    fn undef_reports_ec0_at_the_instruction() {
        let u = inject_undef(
            site(
                0x4008_0010,
                0x3c5 | PSTATE_PAN,
                0x4009_0000,
                SCTLR_EL1_RESET,
            ),
            false,
            false,
        );
        assert_eq!(u.esr_el1, 0x0200_0000, "EC 0, IL 1, ISS 0");
        assert_eq!(u.esr_el1 >> 26, 0);
        assert_eq!(
            u.elr_el1, 0x4008_0010,
            "ELR = the undefined instruction itself"
        );
        assert_eq!(u.spsr_el1, 0x3c5 | PSTATE_PAN);
        assert_eq!(u.pc, 0x4009_0200, "current EL with SP_ELx");
        assert_eq!(u.pstate, 0x3c5);
        assert_eq!(u.far_el1, 0);
    }

    #[test]
    fn undef_vectors_and_pstate_follow_the_mode() {
        let el0 = inject_undef(site(0x1000, 0x0, 0x8000, 0), false, false);
        assert_eq!((el0.pc, el0.pstate, el0.spsr_el1), (0x8400, 0x3c5, 0));
        let el1t = inject_undef(site(0x1000, 0x4, 0x8000, 0), false, false);
        assert_eq!(el1t.pc, 0x8000);
        // The same PAN/SSBS rules as any exception entry.
        let pan = inject_undef(site(0, 0x3c5, 0, 0), true, false);
        assert_ne!(pan.pstate & PSTATE_PAN, 0);
        let span = inject_undef(site(0, 0x3c5, 0, SCTLR_EL1_SPAN), true, false);
        assert_eq!(span.pstate & PSTATE_PAN, 0);
        let ssbs = inject_undef(site(0, 0x3c5, 0, SCTLR_EL1_DSSBS), false, true);
        assert_ne!(ssbs.pstate & PSTATE_SSBS, 0);
        // Entry state equals an abort's from the same site.
        let s = site(0x2000, 0x3c4, 0x9000, SCTLR_EL1_DSSBS);
        let a = inject_sea(true, false, 0, s, true, true);
        let u = inject_undef(s, true, true);
        assert_eq!((a.pc, a.pstate, a.elr_el1), (u.pc, u.pstate, u.elr_el1));
    }
}
