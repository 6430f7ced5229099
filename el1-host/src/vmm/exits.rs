//! What the VMM does with each guest exit: one small function per [`Exit`] kind, over
//! plain values ([`VcpuContext`], the device bus, the PSCI state machine), so every
//! decision is tested on the build machine. The run loop (`vmm_run` in the kernel
//! binary) calls [`VmModel::handle_exit`] and carries out the returned [`Step`].
//!
//! | exit | handling |
//! | --- | --- |
//! | HVC #0, SMC #0 | [`shared::guest_abi`] calls first (GUEST_EXIT ends the VM with the status, NULL_HVC returns SUCCESS), then PSCI/SMCCC ([`super::psci`]); an SMC is completed like an HVC and the PC moved past it. Any other immediate: Undefined Instruction injected at the HVC/SMC (SMCCC uses immediate 0 only; this VMM implements no other hypervisor call) |
//! | MMIO | the [`MmioBus`]; a load's value goes to its register; PC + 4. An access no device accepts gets a synchronous external abort injected at the guest's faulting address (FAR) |
//! | data / instruction abort | synchronous external abort injected (the hyp builds ESR/FAR/ELR as hardware would) |
//! | WFI / WFE | PC + 4, then the host waits ([`Step::Wait`]) |
//! | system register | [`sysreg_action`]: group-3 ID registers read the filtered view ([`super::idregs`]), writes to them and IMPLEMENTATION DEFINED registers (`TIDCP`) get an Undefined Instruction; ACTLR_EL1 and the set/way cache operations read as zero / ignore writes (reported, the first few); the EL1 physical timer is emulated ([`super::timer`]); ICC_SGI1R/ASGI1R/SGI0R_EL1 writes raise SGIs in the [`super::vgic`]; ICC_SRE_EL1 reads SRE|DFB|DIB and ignores writes; PMU/SPE registers get an Undefined Instruction (no PMU shown); debug registers: MDSCR_EL1 is the context's, OSLSR_EL1 reads "unlocked", the rest read as zero / ignore writes (breakpoints not virtualised yet); any other trapped encoding gets an Undefined Instruction |
//! | IRQ | [`Step::HostIrq`]: the host handles its interrupt and checks its deadlines |
//! | unknown: EC 0x00, SVE (0x19), SME (0x1D) | Undefined Instruction injected, as the hardware of the CPU the guest is shown (no SVE/SME) would raise |
//! | SError, any other unknown class | the VM ends with reason `abort` |
//! | PSCI CPU_OFF of the last vCPU on | the VM ends with reason `abort` (no vCPU could ever start another) |
//!
//! Each injected fault is logged, the first `FAULT_REPORTS` of a VM only, so a guest
//! faulting in a loop cannot flood the host console. The first end of a VM wins
//! ([`VmModel::end`]); every vCPU then stops.

use super::idregs::{self, GuestIdRegs};
use super::mmio::{MmioBus, MmioOutcome};
use super::psci::{Psci, PsciAction};
use super::timer::{PhysTimer, PhysTimerReg};
use super::vgic::{SharedVgic, INTID_PTIMER};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use shared::exit::{esr as esr_fields, AbortCause, Exit, SysRegAccess};
use shared::guest_abi::{
    self, ExitReason, GuestCall, GuestEnd, STATUS_ABORT, STATUS_ERROR, STATUS_TIMEOUT,
};
use shared::vcpu::{
    Injection, VcpuContext, INJECT_DABT, INJECT_DABT_WRITE, INJECT_IABT, INJECT_UNDEF,
};

/// How many trapped system-register accesses are reported before going quiet.
const SYSREG_REPORTS: u32 = 8;
/// How many injected faults (aborts, Undefined Instructions) are reported before going
/// quiet: a guest that faults in a loop must not turn each exit into a host log line.
const FAULT_REPORTS: u64 = 64;

/// How a VM ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmEnd {
    /// Why.
    pub reason: ExitReason,
    /// The status `cargo xtask qemu` exits with.
    pub status: u32,
}

impl VmEnd {
    /// The VMM stopped the guest at its time limit.
    pub const TIMEOUT: VmEnd = VmEnd {
        reason: ExitReason::Timeout,
        status: STATUS_TIMEOUT,
    };
    /// The VMM aborted the guest.
    pub const ABORT: VmEnd = VmEnd {
        reason: ExitReason::Abort,
        status: STATUS_ABORT,
    };
    /// The VMM could not run the guest.
    pub const ERROR: VmEnd = VmEnd {
        reason: ExitReason::Error,
        status: STATUS_ERROR,
    };
}

/// What the run loop does next with the vCPU whose exit was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Run the guest again.
    Resume,
    /// Wait for an event (WFE) or interrupt (WFI) on the host, then run the guest again.
    Wait {
        /// The guest executed WFE (a short wait is enough).
        wfe: bool,
    },
    /// Run the guest again, and start vCPU `vcpu` at `entry` with x0 = `context`.
    Start {
        /// The vCPU to start.
        vcpu: usize,
        /// Its entry point.
        entry: u64,
        /// Its x0.
        context: u64,
    },
    /// This vCPU is off (PSCI CPU_OFF): stop running it.
    Off,
    /// The VM is over (this is the end that won).
    End(VmEnd),
    /// A host interrupt ended the run: handle it, check deadlines, run again.
    HostIrq,
}

/// Sentinel of "no status reported".
const NO_STATUS: u64 = u64::MAX;

/// The VMM's state of one VM that every vCPU shares: PSCI, devices, status, end.
pub struct VmModel {
    /// The VM's number in `guest <vm>:` lines.
    pub id: u32,
    /// PSCI power states of the vCPUs.
    pub psci: Psci,
    /// The emulated devices.
    pub bus: spin::Mutex<MmioBus>,
    reported: AtomicU64,
    end: spin::Once<VmEnd>,
    sysreg_reports: AtomicU32,
    fault_reports: AtomicU64,
    id_regs: GuestIdRegs,
    /// The virtual GIC (its distributor and redistributors are also on `bus`).
    pub vgic: SharedVgic,
    /// Each vCPU's emulated EL1 physical timer.
    pub ptimers: Vec<spin::Mutex<PhysTimer>>,
    clock: fn() -> u64,
}

fn no_clock() -> u64 {
    0
}

impl VmModel {
    /// A VM with these vCPUs' PSCI states, devices and virtual GIC (one vCPU per
    /// redistributor).
    pub fn new(id: u32, psci: Psci, bus: MmioBus, vgic: SharedVgic) -> Self {
        let nvcpus = vgic.lock().vcpus();
        Self {
            id,
            psci,
            bus: spin::Mutex::new(bus),
            reported: AtomicU64::new(NO_STATUS),
            end: spin::Once::new(),
            sysreg_reports: AtomicU32::new(0),
            fault_reports: AtomicU64::new(0),
            id_regs: GuestIdRegs::default(),
            vgic,
            ptimers: (0..nvcpus)
                .map(|_| spin::Mutex::new(PhysTimer::default()))
                .collect(),
            clock: no_clock,
        }
    }

    /// The same VM reading the physical count with `clock` (the emulated physical
    /// timer compares against it); without it the count reads 0.
    pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
        self.clock = clock;
        self
    }

    /// The same VM with the guest ID-register view `id_regs` (normally
    /// [`GuestIdRegs::from_host`] of the host's sanitised registers). Without it the
    /// guest sees [`GuestIdRegs::baseline`].
    pub fn with_id_regs(mut self, id_regs: GuestIdRegs) -> Self {
        self.id_regs = id_regs;
        self
    }

    /// The guest's ID-register view.
    pub fn id_regs(&self) -> &GuestIdRegs {
        &self.id_regs
    }

    /// Ends the VM with `e` unless it has ended already; returns the end that holds.
    pub fn end(&self, e: VmEnd) -> VmEnd {
        *self.end.call_once(|| e)
    }

    /// How the VM ended, if it has.
    pub fn ended(&self) -> Option<VmEnd> {
        self.end.get().copied()
    }

    /// The last status the guest reported with GUEST_EXIT.
    pub fn reported(&self) -> Option<u32> {
        match self.reported.load(Ordering::Acquire) {
            NO_STATUS => None,
            n => Some(n as u32),
        }
    }

    /// Handles one exit of vCPU `vcpu` and updates its context (registers, PC,
    /// injection) so that running it again continues correctly.
    pub fn handle_exit(&self, vcpu: usize, ctx: &mut VcpuContext, exit: Exit) -> Step {
        match exit {
            Exit::Hvc { imm } => self.call(vcpu, ctx, imm, "hvc"),
            Exit::Smc { imm } => {
                ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                self.call(vcpu, ctx, imm, "smc")
            }
            Exit::Mmio(access) => {
                let value = ctx.reg(access.reg);
                let result = self.bus.lock().handle(&access, value);
                match result {
                    Ok(MmioOutcome::Load { reg, value }) => {
                        ctx.set_reg(reg, value);
                        ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                    }
                    Ok(MmioOutcome::Stored) => {
                        ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                    }
                    Err(e) => {
                        if self.report_fault() {
                            log::info!(
                                "guest {}: vcpu{vcpu}: {e}: synchronous external abort injected",
                                self.id
                            );
                        }
                        inject(
                            ctx,
                            if access.write {
                                INJECT_DABT_WRITE
                            } else {
                                INJECT_DABT
                            },
                        );
                    }
                }
                Step::Resume
            }
            Exit::DataAbort { ipa, esr, cause } => {
                if self.report_fault() {
                    log::info!(
                        "guest {}: vcpu{vcpu}: data abort at IPA {ipa:#x} ({}, pc {:#x}): \
                         synchronous external abort injected",
                        self.id,
                        match cause {
                            AbortCause::NoSyndrome => "outside RAM and devices",
                            c => c.name(),
                        },
                        ctx.gpr.pc
                    );
                }
                // Report the direction the hardware reported (ESR.ISS.WnR, bit 6).
                let write = esr & (1 << 6) != 0;
                inject(
                    ctx,
                    if write {
                        INJECT_DABT_WRITE
                    } else {
                        INJECT_DABT
                    },
                );
                Step::Resume
            }
            Exit::InstructionAbort { ipa, .. } => {
                if self.report_fault() {
                    log::info!(
                        "guest {}: vcpu{vcpu}: instruction fetch at IPA {ipa:#x} outside RAM: \
                         synchronous external abort injected",
                        self.id
                    );
                }
                inject(ctx, INJECT_IABT);
                Step::Resume
            }
            Exit::Wfx { wfe } => {
                ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                Step::Wait { wfe }
            }
            Exit::SysReg(s) => {
                match sysreg_action(&self.id_regs, &s) {
                    SysRegAction::Read(v) => {
                        ctx.set_reg(s.rt, v);
                        ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                    }
                    SysRegAction::RazWi => {
                        self.report_sysreg(vcpu, ctx, &s, "reads as zero, writes ignored");
                        if s.read {
                            ctx.set_reg(s.rt, 0);
                        }
                        ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                    }
                    SysRegAction::Undef => {
                        self.report_sysreg(vcpu, ctx, &s, "undefined instruction injected");
                        inject_undef(ctx);
                    }
                    SysRegAction::Mdscr => {
                        if s.read {
                            ctx.set_reg(s.rt, ctx.sys.mdscr_el1);
                        } else {
                            ctx.sys.mdscr_el1 = ctx.reg(s.rt);
                        }
                        ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                    }
                    SysRegAction::Sgi { group1 } => {
                        self.vgic.lock().send_sgi(vcpu, ctx.reg(s.rt), group1);
                        ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                    }
                    SysRegAction::IgnoreWrite => {
                        ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                    }
                    SysRegAction::PhysTimer(reg) => {
                        let now = (self.clock)();
                        if let Some(t) = self.ptimers.get(vcpu) {
                            let mut t = t.lock();
                            if s.read {
                                ctx.set_reg(s.rt, t.read(reg, now));
                            } else {
                                t.write(reg, ctx.reg(s.rt), now);
                            }
                            // The output follows the registers at once (a guest that
                            // reprograms its deadline drops a pending interrupt).
                            self.vgic.lock().set_level(vcpu, INTID_PTIMER, t.level(now));
                        }
                        ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                    }
                }
                Step::Resume
            }
            Exit::Irq => Step::HostIrq,
            Exit::SError { esr } => {
                log::error!(
                    "guest {}: vcpu{vcpu}: SError (esr {esr:#x}) at pc {:#x}: VM aborted",
                    self.id,
                    ctx.gpr.pc
                );
                Step::End(self.end(VmEnd::ABORT))
            }
            Exit::Unknown { esr } => match esr_fields::ec(esr) {
                // What the guest's CPU (as its ID registers describe it) would do with
                // the instruction: an Undefined Instruction exception. The PC is still
                // at the instruction for these classes.
                esr_fields::EC_UNKNOWN | esr_fields::EC_SVE | esr_fields::EC_SME => {
                    if self.report_fault() {
                        log::info!(
                            "guest {}: vcpu{vcpu}: {} at pc {:#x}: undefined instruction injected",
                            self.id,
                            match esr_fields::ec(esr) {
                                esr_fields::EC_SVE => "SVE access",
                                esr_fields::EC_SME => "SME access",
                                _ => "trap with unknown reason",
                            },
                            ctx.gpr.pc
                        );
                    }
                    inject_undef(ctx);
                    Step::Resume
                }
                // Every other class reaching the host is an impossible state: the hyp
                // enables no trap that produces it (AArch32 classes: guests run AArch64
                // only and their ID registers say so; FP, PAuth, debug, ERET traps are
                // never set for guests), so the hyp and the VMM disagree and continuing
                // would emulate something unknown.
                ec => {
                    log::error!(
                        "guest {}: vcpu{vcpu}: exit the VMM does not handle (esr {esr:#x}, \
                         ec {ec:#x}) at pc {:#x}: VM aborted",
                        self.id,
                        ctx.gpr.pc
                    );
                    Step::End(self.end(VmEnd::ABORT))
                }
            },
        }
    }

    /// Whether to log this injected fault: true for the first [`FAULT_REPORTS`]; the
    /// next one logs that the rest go unreported.
    fn report_fault(&self) -> bool {
        let n = self.fault_reports.fetch_add(1, Ordering::Relaxed);
        if n == FAULT_REPORTS {
            log::info!(
                "guest {}: {FAULT_REPORTS} injected faults reported; further ones are not",
                self.id
            );
        }
        n < FAULT_REPORTS
    }

    /// Logs a trapped system-register access (the first [`SYSREG_REPORTS`] only).
    fn report_sysreg(&self, vcpu: usize, ctx: &VcpuContext, s: &SysRegAccess, what: &str) {
        if self.sysreg_reports.fetch_add(1, Ordering::Relaxed) < SYSREG_REPORTS {
            log::warn!(
                "guest {}: vcpu{vcpu}: {} of system register op0={} op1={} CRn={} CRm={} \
                 op2={} at pc {:#x}: {what}",
                self.id,
                if s.read { "read" } else { "write" },
                s.op0,
                s.op1,
                s.crn,
                s.crm,
                s.op2,
                ctx.gpr.pc
            );
        }
    }

    /// An SMCCC call through HVC or SMC (the PC is already past the instruction).
    ///
    /// SMCCC calls use immediate 0 only, and this VMM implements no other hypervisor
    /// call: any other immediate gets an Undefined Instruction exception reported at the
    /// HVC/SMC itself (ELR_EL1 = its address), as on a CPU where it does nothing.
    fn call(&self, vcpu: usize, ctx: &mut VcpuContext, imm: u16, how: &str) -> Step {
        if imm != 0 {
            if self.report_fault() {
                log::info!(
                    "guest {}: vcpu{vcpu}: {how} #{imm:#x} is not an SMCCC call: \
                     undefined instruction injected",
                    self.id
                );
            }
            // Back to the instruction: ELR_EL2 was past the HVC, and the SMC caller
            // already moved the PC past the SMC.
            ctx.gpr.pc = ctx.gpr.pc.wrapping_sub(4);
            inject_undef(ctx);
            return Step::Resume;
        }
        let (x0, x1) = (ctx.reg(0), ctx.reg(1));
        match guest_abi::decode(x0, x1) {
            Some(GuestCall::Null) => {
                ctx.set_reg(0, guest_abi::RET_SUCCESS as u64);
                return Step::Resume;
            }
            Some(GuestCall::Exit(status)) => {
                self.reported.store(u64::from(status), Ordering::Release);
                ctx.set_reg(0, guest_abi::RET_SUCCESS as u64);
                return Step::End(self.end(VmEnd {
                    reason: ExitReason::GuestExit,
                    status,
                }));
            }
            None => {}
        }
        let regs = [x0, x1, ctx.reg(2), ctx.reg(3)];
        match self.psci.handle(vcpu, regs) {
            PsciAction::Return(r) => {
                for (i, v) in r.into_iter().enumerate() {
                    ctx.set_reg(i as u8, v);
                }
                Step::Resume
            }
            PsciAction::StartVcpu {
                vcpu: target,
                entry,
                context,
            } => {
                ctx.set_reg(0, 0);
                Step::Start {
                    vcpu: target,
                    entry,
                    context,
                }
            }
            PsciAction::WaitForInterrupt => {
                ctx.set_reg(0, 0);
                Step::Wait { wfe: false }
            }
            PsciAction::StopVcpu => Step::Off,
            PsciAction::AllOff => {
                log::error!(
                    "guest {}: vcpu{vcpu}: PSCI CPU_OFF of the last vCPU that was on: \
                     nothing can run again, VM aborted",
                    self.id
                );
                Step::End(self.end(VmEnd::ABORT))
            }
            PsciAction::PowerOff => Step::End(self.power_end(GuestEnd::SystemOff)),
            PsciAction::Reset => Step::End(self.power_end(GuestEnd::SystemReset)),
        }
    }

    fn power_end(&self, how: GuestEnd) -> VmEnd {
        let reason = match how {
            GuestEnd::SystemOff => ExitReason::SystemOff,
            GuestEnd::SystemReset => ExitReason::SystemReset,
        };
        self.end(VmEnd {
            reason,
            status: guest_abi::final_status(self.reported(), how),
        })
    }
}

/// What the VMM does with a trapped system-register access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SysRegAction {
    /// Write this value to the transfer register and complete the MRS (PC + 4).
    Read(u64),
    /// Complete the access: a read gives zero, a write is ignored (PC + 4).
    RazWi,
    /// Inject an Undefined Instruction exception at the access (PC unchanged).
    Undef,
    /// MDSCR_EL1 (trapped by `MDCR_EL2.TDA` with the other debug registers): a read
    /// gives the context's `mdscr_el1`, a write stores into it (the world switch loads
    /// it into the hardware on the next entry); PC + 4.
    Mdscr,
    /// ICC_SGI1R_EL1 (`group1`), ICC_ASGI1R_EL1 or ICC_SGI0R_EL1 written: the VMM
    /// raises the SGI on its targets; PC + 4. (Trapped by HCR_EL2.IMO.)
    Sgi {
        /// Group-1 SGIs may be raised (only ICC_SGI1R_EL1).
        group1: bool,
    },
    /// A write that has no effect, done silently (ICC_SRE_EL1: SRE is fixed); PC + 4.
    IgnoreWrite,
    /// The EL1 physical timer (CNTP_TVAL/CTL/CVAL_EL0), emulated per vCPU; PC + 4.
    PhysTimer(PhysTimerReg),
}

/// ICC_SRE_EL1 as a guest reads it: SRE, DFB, DIB set (the system-register interface is
/// the only one; IRQ and FIQ bypass disabled), as KVM's GICv3 reports it.
pub const ICC_SRE_EL1_GUEST: u64 = 0x7;

/// MDSCR_EL1: op0 2, op1 0, CRn 0, CRm 2, op2 2.
const MDSCR_EL1: (u8, u8, u8, u8, u8) = (2, 0, 0, 2, 2);
/// OSLSR_EL1: op0 2, op1 0, CRn 1, CRm 1, op2 4.
const OSLSR_EL1: (u8, u8, u8, u8, u8) = (2, 0, 1, 1, 4);
/// OSLSR_EL1 as the guest reads it: OSLM = 0b10 (bit 3: the OS lock is implemented),
/// OSLK = 0 (unlocked), whatever the guest wrote to OSLAR_EL1.
pub const OSLSR_UNLOCKED: u64 = 0x8;

/// Whether `s` is a PMU register (PMCR_EL0, PMCNTEN*, PMOVS*, PMSWINC, PMSELR, PMCEID*,
/// PMCCNTR, PMXEV*, PMUSERENR, PMINTEN*, PMMIR, PMEVCNTR/TYPER<n>, PMCCFILTR) or an
/// SPE register (PMS*, PMB*): op0 3, op1 0 or 3, CRn 9 with CRm 9..=14, or CRn 14 with
/// CRm 8..=15 (CRn 14 CRm 0..=3 are the generic timer's).
fn is_pmu_or_spe(s: &SysRegAccess) -> bool {
    s.op0 == 3
        && matches!(s.op1, 0 | 3)
        && ((s.crn == 9 && (9..=14).contains(&s.crm)) || (s.crn == 14 && s.crm >= 8))
}

/// The policy for a trapped MRS/MSR/SYS from the guest:
///
/// * group-3 ID registers (`HCR_EL2.TID3`): a read returns the view's value; a write is
///   UNDEFINED (they are read-only);
/// * IMPLEMENTATION DEFINED encodings (`HCR_EL2.TIDCP`: op0 = 1 or 3 with CRn = 11 or
///   15): UNDEFINED — the guest is not told which core it runs on well enough to use them;
/// * ACTLR_EL1 (`TACR`) and the data-cache set/way operations (`TSW`: DC ISW/CSW/CISW):
///   architecturally present, so read as zero and ignore writes (set/way operations are
///   not needed: guest RAM is coherent normal memory);
/// * the EL1 physical timer CNTP_TVAL/CTL/CVAL_EL0 (`CNTHCTL_EL2.EL1PCEN` clear):
///   emulated per vCPU ([`SysRegAction::PhysTimer`]), as KVM does in nVHE;
/// * ICC_SGI1R_EL1, ICC_ASGI1R_EL1, ICC_SGI0R_EL1 (trapped by `HCR_EL2.IMO`): writes
///   raise SGIs ([`SysRegAction::Sgi`]), reads are UNDEFINED (write-only registers);
///   ICC_SRE_EL1 (`ICC_SRE_EL2.Enable` clear): reads [`ICC_SRE_EL1_GUEST`], writes are
///   ignored;
/// * PMU and SPE registers (`MDCR_EL2.TPM`/`TPMCR`/`TPMS`): UNDEFINED, as on a CPU
///   without them — the guest's ID_AA64DFR0_EL1 shows PMUVer = PMSVer = 0;
/// * debug registers (op0 = 2, op1 = 0 or 3; `MDCR_EL2.TDA`/`TDOSA`/`TDRA`): MDSCR_EL1
///   is the context's own ([`SysRegAction::Mdscr`]); OSLSR_EL1 reads
///   [`OSLSR_UNLOCKED`]; everything else (OSLAR, OSDLR, DBGPRCR, DBGB/WVR/CR<n>,
///   MDCCINT, DBGCLAIM*, MDRAR, the DCC registers, ...) reads as zero and ignores
///   writes. Breakpoints and watchpoints are not virtualised yet: the guest sees the
///   hardware's BRP/WRP counts (DebugVer 6), so Linux's debug-monitor setup (clearing
///   the OS lock, writing MDSCR_EL1) works, but the registers are inert — the
///   hardware's stay the host's;
/// * anything else: UNDEFINED (no other trap is enabled for guests; an encoding that
///   reaches the VMM anyway is one the guest's CPU does not have).
pub fn sysreg_action(id: &GuestIdRegs, s: &SysRegAccess) -> SysRegAction {
    let e = s.encoding();
    if idregs::is_id_space(e) {
        return match (s.read, id.read(e)) {
            (true, Some(v)) => SysRegAction::Read(v),
            _ => SysRegAction::Undef,
        };
    }
    if is_pmu_or_spe(s) {
        return SysRegAction::Undef;
    }
    match (s.op0, s.op1, s.crn, s.crm, s.op2) {
        (3, 0, 12, 11, op2 @ 5..=7) => {
            return if s.read {
                SysRegAction::Undef
            } else {
                SysRegAction::Sgi { group1: op2 == 5 }
            };
        }
        (3, 0, 12, 12, 5) => {
            return if s.read {
                SysRegAction::Read(ICC_SRE_EL1_GUEST)
            } else {
                SysRegAction::IgnoreWrite
            };
        }
        (3, 3, 14, 2, op2) => {
            if let Some(reg) = PhysTimerReg::from_op2(op2) {
                return SysRegAction::PhysTimer(reg);
            }
        }
        _ => {}
    }
    if s.op0 == 2 && matches!(s.op1, 0 | 3) {
        let reg = (s.op0, s.op1, s.crn, s.crm, s.op2);
        return if reg == MDSCR_EL1 {
            SysRegAction::Mdscr
        } else if reg == OSLSR_EL1 && s.read {
            SysRegAction::Read(OSLSR_UNLOCKED)
        } else {
            SysRegAction::RazWi
        };
    }
    let impdef = (s.op0 == 1 || s.op0 == 3) && (s.crn == 11 || s.crn == 15);
    let actlr = (s.op0, s.op1, s.crn, s.crm, s.op2) == (3, 0, 1, 0, 1);
    let set_way = s.op0 == 1
        && s.op1 == 0
        && s.crn == 7
        && matches!(s.crm, 6 | 10 | 14)
        && s.op2 == 2
        && !s.read;
    if impdef {
        SysRegAction::Undef
    } else if actlr || set_way {
        SysRegAction::RazWi
    } else {
        SysRegAction::Undef
    }
}

/// Asks the hyp to deliver an Undefined Instruction exception for the instruction at the
/// guest's PC before it runs the guest again.
fn inject_undef(ctx: &mut VcpuContext) {
    ctx.inject = Injection {
        kind: INJECT_UNDEF,
        far: 0,
    };
}

/// Asks the hyp to deliver a synchronous external abort at the guest's faulting address
/// (FAR_EL2 as read at this exit) before it runs the guest again. The PC stays at the
/// faulting instruction, as for a real abort.
fn inject(ctx: &mut VcpuContext, kind: u64) {
    ctx.inject = Injection {
        kind,
        far: ctx.exit.far,
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::map;
    use crate::vmm::pl011::Pl011;
    use crate::vmm::psci::ArchWorkarounds;
    use crate::vmm::vgic::Vgic;
    use shared::exit::{AccessWidth, MmioAccess, SysRegAccess};
    use shared::vcpu::INJECT_NONE;
    use smccc::psci::{
        PSCI_CPU_OFF, PSCI_CPU_ON_64, PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
    };
    use std::sync::{Arc, Mutex};

    const PC: u64 = 0x4008_0100;

    fn vm(n: u64) -> (VmModel, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let mut bus = MmioBus::new();
        bus.add(
            map::PL011_BASE,
            map::PL011_SIZE,
            Box::new(Pl011::new(Box::new(move |l: &str| {
                sink.lock().unwrap().push(l.to_string())
            }))),
        )
        .unwrap();
        let mpidrs: Vec<u64> = (0..n).collect();
        let psci = Psci::new(
            &mpidrs,
            0,
            map::RAM_BASE..map::RAM_BASE + map::DEFAULT_RAM_SIZE,
            ArchWorkarounds::default(),
        )
        .unwrap();
        let gic: SharedVgic = Arc::new(spin::Mutex::new(Vgic::new(&mpidrs)));
        (VmModel::new(0, psci, bus, gic).with_clock(|| 5000), lines)
    }

    fn ctx() -> VcpuContext {
        let mut c = VcpuContext::new(PC, 0, 0);
        c.exit.far = 0x0b00_0010;
        c
    }

    fn hvc(m: &VmModel, vcpu: usize, c: &mut VcpuContext, x: [u64; 4]) -> Step {
        c.gpr.x[..4].copy_from_slice(&x);
        m.handle_exit(vcpu, c, Exit::Hvc { imm: 0 })
    }

    fn mmio(ipa: u64, write: bool, width: AccessWidth, reg: u8) -> Exit {
        Exit::Mmio(MmioAccess {
            ipa,
            write,
            width,
            sign_extend: false,
            reg,
            sixty_four: false,
            acquire_release: false,
        })
    }

    #[test]
    fn guest_abi_calls() {
        let (m, _) = vm(1);
        let mut c = ctx();
        assert_eq!(
            hvc(&m, 0, &mut c, [guest_abi::NULL_HVC.into(), 0, 0, 0]),
            Step::Resume
        );
        assert_eq!(c.gpr.x[0], 0);
        assert_eq!(c.gpr.pc, PC, "HVC returns past itself already");
        assert_eq!(m.ended(), None);
        let step = hvc(&m, 0, &mut c, [guest_abi::GUEST_EXIT.into(), 3, 0, 0]);
        let end = VmEnd {
            reason: ExitReason::GuestExit,
            status: 3,
        };
        assert_eq!(step, Step::End(end));
        assert_eq!(m.ended(), Some(end));
        assert_eq!(m.reported(), Some(3));
        // A later end does not replace the first.
        assert_eq!(m.end(VmEnd::TIMEOUT), end);
    }

    #[test]
    fn psci_through_hvc_and_smc() {
        let (m, _) = vm(2);
        let mut c = ctx();
        assert_eq!(
            hvc(&m, 0, &mut c, [PSCI_VERSION.into(), 0, 0, 0]),
            Step::Resume
        );
        assert_eq!(c.gpr.x[0], 0x1_0000);
        // The same call through SMC moves the PC past the SMC.
        c.gpr.x[0] = PSCI_VERSION.into();
        assert_eq!(m.handle_exit(0, &mut c, Exit::Smc { imm: 0 }), Step::Resume);
        assert_eq!(c.gpr.x[0], 0x1_0000);
        assert_eq!(c.gpr.pc, PC + 4);
        // An unknown id is NOT_SUPPORTED.
        assert_eq!(hvc(&m, 0, &mut c, [0x8600_01ff, 0, 0, 0]), Step::Resume);
        assert_eq!(c.gpr.x[0] as i64, -1);
        // A non-zero immediate is not SMCCC: UNDEF at the HVC (ELR was past it), x0 kept.
        c.gpr.x[0] = PSCI_VERSION.into();
        assert_eq!(m.handle_exit(0, &mut c, Exit::Hvc { imm: 1 }), Step::Resume);
        assert_eq!(c.gpr.x[0], u64::from(PSCI_VERSION));
        assert_eq!((c.inject.kind, c.gpr.pc), (INJECT_UNDEF, PC));
        // The same for an SMC: the PC stays at the SMC.
        c.inject.kind = INJECT_NONE;
        assert_eq!(m.handle_exit(0, &mut c, Exit::Smc { imm: 7 }), Step::Resume);
        assert_eq!((c.inject.kind, c.gpr.pc), (INJECT_UNDEF, PC));
        c.inject.kind = INJECT_NONE;
        c.gpr.pc = PC + 4;
        // CPU_ON starts the target; the caller sees SUCCESS.
        let step = hvc(&m, 0, &mut c, [PSCI_CPU_ON_64.into(), 1, 0x4010_0000, 77]);
        assert_eq!(
            step,
            Step::Start {
                vcpu: 1,
                entry: 0x4010_0000,
                context: 77
            }
        );
        assert_eq!(c.gpr.x[0], 0);
        assert!(m.psci.vcpu_started(1));
        let mut c1 = ctx();
        assert_eq!(
            hvc(&m, 1, &mut c1, [PSCI_CPU_OFF.into(), 0, 0, 0]),
            Step::Off
        );
        assert_eq!(m.ended(), None, "vCPU 0 is still on");
        // The last vCPU on turns off: the VM is over instead of waiting forever.
        assert_eq!(
            hvc(&m, 0, &mut c, [PSCI_CPU_OFF.into(), 0, 0, 0]),
            Step::End(VmEnd::ABORT)
        );
        assert_eq!(m.ended(), Some(VmEnd::ABORT));
    }

    #[test]
    fn power_off_and_reset_use_the_reported_status() {
        let (m, _) = vm(1);
        let mut c = ctx();
        assert_eq!(
            hvc(&m, 0, &mut c, [PSCI_SYSTEM_OFF.into(), 0, 0, 0]),
            Step::End(VmEnd {
                reason: ExitReason::SystemOff,
                status: 0
            })
        );
        let (m, _) = vm(1);
        assert_eq!(
            hvc(&m, 0, &mut c, [PSCI_SYSTEM_RESET.into(), 0, 0, 0]),
            Step::End(VmEnd {
                reason: ExitReason::SystemReset,
                status: guest_abi::STATUS_RESET_UNREPORTED
            })
        );
    }

    #[test]
    fn pl011_output_and_bad_accesses() {
        let (m, lines) = vm(1);
        let mut c = ctx();
        for b in b"hi\n" {
            c.gpr.x[5] = u64::from(*b);
            let step = m.handle_exit(0, &mut c, mmio(map::PL011_BASE, true, AccessWidth::Byte, 5));
            assert_eq!(step, Step::Resume);
        }
        assert_eq!(c.gpr.pc, PC + 12);
        assert_eq!(lines.lock().unwrap().as_slice(), ["hi"]);
        // FR reads TXFE | RXFE into the destination register.
        m.handle_exit(
            0,
            &mut c,
            mmio(map::PL011_BASE + 0x18, false, AccessWidth::Word, 9),
        );
        assert_eq!(c.gpr.x[9], 0x90);
        assert_eq!(c.gpr.pc, PC + 16);
        // A 64-bit access is refused: abort injected, PC stays.
        let step = m.handle_exit(
            0,
            &mut c,
            mmio(map::PL011_BASE, false, AccessWidth::Double, 9),
        );
        assert_eq!(step, Step::Resume);
        assert_eq!(c.gpr.pc, PC + 16);
        assert_eq!(
            c.inject,
            Injection {
                kind: INJECT_DABT,
                far: 0x0b00_0010
            }
        );
        // Nothing at the address: the same.
        c.inject.kind = INJECT_NONE;
        m.handle_exit(0, &mut c, mmio(0x0b00_0010, false, AccessWidth::Word, 1));
        assert_eq!(c.inject.kind, INJECT_DABT);
    }

    #[test]
    fn a_faulting_loop_is_reported_a_bounded_number_of_times() {
        let (m, _) = vm(1);
        let mut c = ctx();
        let fault = Exit::DataAbort {
            ipa: 0x0b00_0000,
            esr: 0,
            cause: AbortCause::NoSyndrome,
        };
        for _ in 0..3 * FAULT_REPORTS {
            c.inject.kind = INJECT_NONE;
            assert_eq!(m.handle_exit(0, &mut c, fault), Step::Resume);
            assert_eq!(c.inject.kind, INJECT_DABT, "every fault is still injected");
        }
        assert!(!m.report_fault(), "quiet after {FAULT_REPORTS} reports");
        let (fresh, _) = vm(1);
        let reported = (0..3 * FAULT_REPORTS)
            .filter(|_| fresh.report_fault())
            .count();
        assert_eq!(reported as u64, FAULT_REPORTS);
    }

    #[test]
    fn register_31_is_the_zero_register_for_mmio() {
        let (m, lines) = vm(1);
        let mut c = ctx();
        c.gpr.x[30] = 0x41;
        // A store from register 31 stores zero (XZR), not x30 or anything else.
        let st = mmio(map::PL011_BASE, true, AccessWidth::Byte, 31);
        assert_eq!(m.handle_exit(0, &mut c, st), Step::Resume);
        // A load into register 31 is discarded; no general register changes.
        let before = c.gpr.x;
        let ld = mmio(map::PL011_BASE + 0x18, false, AccessWidth::Word, 31);
        assert_eq!(m.handle_exit(0, &mut c, ld), Step::Resume);
        assert_eq!(c.gpr.x, before);
        assert_eq!((c.gpr.pc, c.inject.kind), (PC + 8, INJECT_NONE));
        m.bus.lock().flush();
        assert_eq!(lines.lock().unwrap().as_slice(), ["\\x00"]);
    }

    #[test]
    fn aborts_are_injected_on_the_right_side() {
        let (m, _) = vm(1);
        let mut c = ctx();
        let step = m.handle_exit(
            0,
            &mut c,
            Exit::DataAbort {
                ipa: 0x0b00_0000,
                esr: 0,
                cause: AbortCause::NoSyndrome,
            },
        );
        assert_eq!(step, Step::Resume);
        assert_eq!(c.inject.kind, INJECT_DABT);
        let mut c = ctx();
        m.handle_exit(
            0,
            &mut c,
            Exit::InstructionAbort {
                ipa: 0x0b00_0000,
                esr: 0,
            },
        );
        assert_eq!(c.inject.kind, INJECT_IABT);
        assert_eq!(c.gpr.pc, PC);
        assert_eq!(m.ended(), None, "the VM carries on");
    }

    #[test]
    fn waits_sysregs_irqs_and_the_unhandled() {
        let (m, _) = vm(1);
        let mut c = ctx();
        assert_eq!(
            m.handle_exit(0, &mut c, Exit::Wfx { wfe: false }),
            Step::Wait { wfe: false }
        );
        assert_eq!(c.gpr.pc, PC + 4);
        c.gpr.x[7] = 55;
        let read = SysRegAccess::from_encoding(0xdf11, 7, true);
        assert_eq!(m.handle_exit(0, &mut c, Exit::SysReg(read)), Step::Resume);
        assert_eq!((c.gpr.x[7], c.gpr.pc), (0, PC + 8));
        assert_eq!(m.handle_exit(0, &mut c, Exit::Irq), Step::HostIrq);
        assert_eq!(c.gpr.pc, PC + 8);
        assert_eq!(
            m.handle_exit(0, &mut c, Exit::Unknown { esr: 0x3 << 26 }),
            Step::End(VmEnd::ABORT)
        );
        assert_eq!(m.ended(), Some(VmEnd::ABORT));
    }

    #[test]
    fn sve_sme_and_unknown_traps_become_undef() {
        let (m, _) = vm(1);
        for ec in [0x00u64, 0x19, 0x1d] {
            let mut c = ctx();
            let esr = (ec << 26) | (1 << 25);
            assert_eq!(
                m.handle_exit(0, &mut c, Exit::Unknown { esr }),
                Step::Resume,
                "ec {ec:#x}"
            );
            assert_eq!(c.inject.kind, INJECT_UNDEF, "ec {ec:#x}");
            assert_eq!(c.gpr.pc, PC, "ELR stays at the instruction");
        }
        assert_eq!(m.ended(), None, "the VM carries on");
        // A class the hyp never produces still ends the VM.
        let mut c = ctx();
        assert_eq!(
            m.handle_exit(0, &mut c, Exit::Unknown { esr: 0x07 << 26 }),
            Step::End(VmEnd::ABORT)
        );
    }

    #[test]
    fn id_registers_read_the_view_and_refuse_writes() {
        let host = shared::cpucaps::IdRegs {
            pfr0: 0x1_0000_1111 | (1 << 32),
            ..Default::default()
        };
        let view = GuestIdRegs::from_host(
            &host,
            idregs::HypSupport {
                ptrauth: false,
                ipa_bits: 40,
            },
        );
        let m = vm(1).0.with_id_regs(view);
        assert_eq!(m.id_regs(), &view);
        let mut c = ctx();
        c.gpr.x[3] = 0xdead;
        let pfr0 = SysRegAccess::from_encoding(idregs::enc::PFR0, 3, true);
        assert_eq!(m.handle_exit(0, &mut c, Exit::SysReg(pfr0)), Step::Resume);
        assert_eq!(c.gpr.x[3], view.read(idregs::enc::PFR0).unwrap());
        assert_eq!((c.gpr.x[3] >> 32) & 0xf, 0, "SVE hidden");
        assert_eq!(c.gpr.pc, PC + 4);
        assert_eq!(c.inject.kind, INJECT_NONE);
        // ZCR-less: ZFR0 reads zero; a reserved ID encoding too.
        for e in [idregs::enc::ZFR0, 0xc03f] {
            c.gpr.x[4] = 1;
            let r = SysRegAccess::from_encoding(e, 4, true);
            m.handle_exit(0, &mut c, Exit::SysReg(r));
            assert_eq!(c.gpr.x[4], 0, "{e:#x}");
        }
        // A write is UNDEF, the PC stays.
        let pc = c.gpr.pc;
        let w = SysRegAccess::from_encoding(idregs::enc::PFR0, 3, false);
        assert_eq!(m.handle_exit(0, &mut c, Exit::SysReg(w)), Step::Resume);
        assert_eq!((c.inject.kind, c.gpr.pc), (INJECT_UNDEF, pc));
    }

    #[test]
    fn sysreg_policy() {
        let v = GuestIdRegs::default();
        let acc = |op0, op1, crn, crm, op2, read| SysRegAccess {
            op0,
            op1,
            crn,
            crm,
            op2,
            rt: 0,
            read,
        };
        // ACTLR_EL1, DC CISW: present, RAZ/WI.
        for a in [
            acc(3, 0, 1, 0, 1, true),
            acc(3, 0, 1, 0, 1, false),
            acc(1, 0, 7, 14, 2, false),
            acc(1, 0, 7, 6, 2, false),
        ] {
            assert_eq!(sysreg_action(&v, &a), SysRegAction::RazWi, "{a:?}");
        }
        // CNTP_CTL/CVAL/TVAL_EL0: emulated.
        for (a, reg) in [
            (acc(3, 3, 14, 2, 1, false), PhysTimerReg::Ctl),
            (acc(3, 3, 14, 2, 2, true), PhysTimerReg::Cval),
            (acc(3, 3, 14, 2, 0, true), PhysTimerReg::Tval),
        ] {
            assert_eq!(sysreg_action(&v, &a), SysRegAction::PhysTimer(reg), "{a:?}");
        }
        // ICC_SGI1R_EL1 / ICC_ASGI1R_EL1 / ICC_SGI0R_EL1 writes; reads are UNDEFINED.
        assert_eq!(
            sysreg_action(&v, &acc(3, 0, 12, 11, 5, false)),
            SysRegAction::Sgi { group1: true }
        );
        assert_eq!(
            sysreg_action(&v, &acc(3, 0, 12, 11, 7, false)),
            SysRegAction::Sgi { group1: false }
        );
        assert_eq!(
            sysreg_action(&v, &acc(3, 0, 12, 11, 5, true)),
            SysRegAction::Undef
        );
        assert_eq!(
            sysreg_action(&v, &acc(3, 0, 12, 12, 5, true)),
            SysRegAction::Read(ICC_SRE_EL1_GUEST)
        );
        assert_eq!(
            sysreg_action(&v, &acc(3, 0, 12, 12, 5, false)),
            SysRegAction::IgnoreWrite
        );
        // IMPLEMENTATION DEFINED space (CRn 11/15, op0 1 or 3), unknown encodings,
        // ID writes: UNDEF.
        for a in [
            acc(3, 1, 15, 2, 1, true),
            acc(3, 0, 11, 0, 0, false),
            acc(1, 0, 15, 0, 0, false),
            acc(3, 0, 0, 4, 0, false),
            acc(3, 0, 9, 12, 0, true),
            acc(3, 3, 14, 2, 3, true),
        ] {
            assert_eq!(sysreg_action(&v, &a), SysRegAction::Undef, "{a:?}");
        }
        assert_eq!(
            sysreg_action(&v, &acc(3, 0, 0, 4, 0, true)),
            SysRegAction::Read(v.read(idregs::enc::PFR0).unwrap())
        );
    }

    fn sysreg(op1: u8, crn: u8, crm: u8, op2: u8, rt: u8, read: bool) -> Exit {
        Exit::SysReg(SysRegAccess {
            op0: 3,
            op1,
            crn,
            crm,
            op2,
            rt,
            read,
        })
    }

    #[test]
    fn a_guest_sgi_write_raises_the_sgi_on_its_targets() {
        let (m, _) = vm(2);
        let mut c = ctx();
        // SGI 5 to Aff0 {0, 1}: both vCPUs, the sender included.
        c.gpr.x[3] = (5 << 24) | 0b11;
        assert_eq!(
            m.handle_exit(1, &mut c, sysreg(0, 12, 11, 5, 3, false)),
            Step::Resume
        );
        assert_eq!(c.gpr.pc, PC + 4);
        let g = m.vgic.lock();
        assert!(g.irq(0, 5).unwrap().pending() && g.irq(1, 5).unwrap().pending());
    }

    #[test]
    fn the_emulated_physical_timer_drives_ppi_30() {
        let (m, _) = vm(1);
        let mut c = ctx();
        // CVAL = 4000 (the clock reads 5000), then ENABLE: the interrupt is up.
        c.gpr.x[1] = 4000;
        m.handle_exit(0, &mut c, sysreg(3, 14, 2, 2, 1, false));
        c.gpr.x[1] = 1;
        m.handle_exit(0, &mut c, sysreg(3, 14, 2, 1, 1, false));
        assert!(m.vgic.lock().irq(0, INTID_PTIMER).unwrap().level);
        m.handle_exit(0, &mut c, sysreg(3, 14, 2, 1, 2, true));
        assert_eq!(c.gpr.x[2], 0b101, "ENABLE | ISTATUS");
        // TVAL = 100: the deadline moves past now and the line drops.
        c.gpr.x[1] = 100;
        m.handle_exit(0, &mut c, sysreg(3, 14, 2, 0, 1, false));
        assert!(!m.vgic.lock().irq(0, INTID_PTIMER).unwrap().level);
        assert_eq!(m.ptimers[0].lock().deadline(), Some(5100));
        // ICC_SRE_EL1 reads SRE|DFB|DIB.
        m.handle_exit(0, &mut c, sysreg(0, 12, 12, 5, 4, true));
        assert_eq!(c.gpr.x[4], ICC_SRE_EL1_GUEST);
    }

    #[test]
    fn pmu_registers_are_undefined() {
        let v = GuestIdRegs::default();
        let (m, _) = vm(1);
        let acc = |op1, crn, crm, op2, read| SysRegAccess {
            op0: 3,
            op1,
            crn,
            crm,
            op2,
            rt: 2,
            read,
        };
        // PMCR_EL0, PMCNTENSET_EL0, PMSELR_EL0, PMCCNTR_EL0, PMXEVTYPER_EL0,
        // PMUSERENR_EL0, PMINTENSET_EL1, PMEVCNTR0_EL0, PMEVTYPER30_EL0, PMCCFILTR_EL0,
        // PMSCR_EL1 (SPE).
        for a in [
            acc(3, 9, 12, 0, true),
            acc(3, 9, 12, 1, false),
            acc(3, 9, 12, 5, false),
            acc(3, 9, 13, 0, true),
            acc(3, 9, 13, 1, false),
            acc(3, 9, 14, 0, true),
            acc(0, 9, 14, 1, false),
            acc(3, 14, 8, 0, true),
            acc(3, 14, 15, 6, false),
            acc(3, 14, 15, 7, true),
            acc(0, 9, 9, 0, false),
        ] {
            assert_eq!(sysreg_action(&v, &a), SysRegAction::Undef, "{a:?}");
            let mut c = ctx();
            c.gpr.x[2] = 0x77;
            assert_eq!(m.handle_exit(0, &mut c, Exit::SysReg(a)), Step::Resume);
            assert_eq!((c.inject.kind, c.gpr.pc), (INJECT_UNDEF, PC), "{a:?}");
            assert_eq!(c.gpr.x[2], 0x77, "{a:?}: no value written");
        }
        // The timer registers next to them in CRn 14 are not PMU registers.
        assert_eq!(
            sysreg_action(&v, &acc(3, 14, 2, 1, true)),
            SysRegAction::PhysTimer(PhysTimerReg::Ctl)
        );
    }

    #[test]
    fn debug_registers_are_present_but_inert() {
        let v = GuestIdRegs::default();
        let (m, _) = vm(1);
        let acc = |op1, crn, crm, op2, rt, read| SysRegAccess {
            op0: 2,
            op1,
            crn,
            crm,
            op2,
            rt,
            read,
        };
        // OSLSR_EL1: OS lock implemented, unlocked.
        let mut c = ctx();
        c.gpr.x[4] = u64::MAX;
        let oslsr = acc(0, 1, 1, 4, 4, true);
        assert_eq!(m.handle_exit(0, &mut c, Exit::SysReg(oslsr)), Step::Resume);
        assert_eq!(
            (c.gpr.x[4], c.gpr.pc, c.inject.kind),
            (0x8, PC + 4, INJECT_NONE)
        );
        // OSLAR_EL1 = 0 and DBGBVR0_EL1 / DBGBCR0_EL1 / DBGWCR3_EL1 / OSDLR_EL1 /
        // MDCCINT_EL1 writes: ignored, PC advanced, the context's registers unchanged.
        let before = c.sys;
        c.gpr.x[5] = 0x4008_0000;
        for (i, a) in [
            acc(0, 1, 0, 4, 31, false),
            acc(0, 0, 0, 4, 5, false),
            acc(0, 0, 0, 5, 5, false),
            acc(0, 0, 3, 7, 5, false),
            acc(0, 1, 3, 4, 5, false),
            acc(0, 0, 2, 0, 5, false),
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(sysreg_action(&v, &a), SysRegAction::RazWi, "{a:?}");
            assert_eq!(m.handle_exit(0, &mut c, Exit::SysReg(a)), Step::Resume);
            assert_eq!(c.gpr.pc, PC + 8 + 4 * i as u64, "{a:?}");
            assert_eq!(c.inject.kind, INJECT_NONE, "{a:?}");
        }
        assert_eq!(c.sys, before, "writes ignored");
        assert_eq!(c.gpr.x[5], 0x4008_0000);
        // Reads of DBGBVR0_EL1, MDRAR_EL1, DBGCLAIMCLR_EL1, MDCCSR_EL0: zero.
        for a in [
            acc(0, 0, 0, 4, 6, true),
            acc(0, 1, 0, 0, 6, true),
            acc(0, 7, 9, 6, 6, true),
            acc(3, 0, 1, 0, 6, true),
        ] {
            c.gpr.x[6] = 0x55;
            m.handle_exit(0, &mut c, Exit::SysReg(a));
            assert_eq!((c.gpr.x[6], c.inject.kind), (0, INJECT_NONE), "{a:?}");
        }
        // MDSCR_EL1 is the context's own: a write stores, a read returns it.
        let mut c = ctx();
        c.gpr.x[7] = 1 << 12;
        let w = acc(0, 0, 2, 2, 7, false);
        assert_eq!(sysreg_action(&v, &w), SysRegAction::Mdscr);
        m.handle_exit(0, &mut c, Exit::SysReg(w));
        assert_eq!((c.sys.mdscr_el1, c.gpr.pc), (1 << 12, PC + 4));
        c.sys.mdscr_el1 |= 1 << 15;
        let r = acc(0, 0, 2, 2, 8, true);
        m.handle_exit(0, &mut c, Exit::SysReg(r));
        assert_eq!((c.gpr.x[8], c.gpr.pc), ((1 << 12) | (1 << 15), PC + 8));
        // A write of XZR clears it.
        m.handle_exit(0, &mut c, Exit::SysReg(acc(0, 0, 2, 2, 31, false)));
        assert_eq!(c.sys.mdscr_el1, 0);
        // op0 2 with op1 1 (trace) is not a debug register the hyp traps: UNDEF.
        assert_eq!(
            sysreg_action(&v, &acc(1, 0, 2, 0, 0, true)),
            SysRegAction::Undef
        );
    }
}
