//! What the VMM does with each guest exit: one small function per [`Exit`] kind, over
//! plain values ([`VcpuContext`], the device bus, the PSCI state machine), so every
//! decision is tested on the build machine. The run loop (`vmm_run` in the kernel
//! binary) calls [`VmModel::handle_exit`] and carries out the returned [`Step`].
//!
//! | exit | handling |
//! | --- | --- |
//! | HVC #0, SMC #0 | [`shared::guest_abi`] calls first (GUEST_EXIT ends the VM with the status, NULL_HVC returns SUCCESS), then PSCI/SMCCC ([`super::psci`]); an SMC is completed like an HVC and the PC moved past it. Any other immediate: NOT_SUPPORTED |
//! | MMIO | the [`MmioBus`]; a load's value goes to its register; PC + 4. An access no device accepts gets a synchronous external abort injected at the guest's faulting address (FAR) |
//! | data / instruction abort | synchronous external abort injected (the hyp builds ESR/FAR/ELR as hardware would) |
//! | WFI / WFE | PC + 4, then the host waits ([`Step::Wait`]) |
//! | system register | reads as zero, writes ignored, PC + 4, reported (the first few) |
//! | IRQ | [`Step::HostIrq`]: the host handles its interrupt and checks its deadlines |
//! | SError, unknown | the VM ends with reason `abort` |
//!
//! The first end of a VM wins ([`VmModel::end`]); every vCPU then stops.

use super::mmio::{MmioBus, MmioOutcome};
use super::psci::{Psci, PsciAction};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use shared::exit::{AbortCause, Exit};
use shared::guest_abi::{
    self, ExitReason, GuestCall, GuestEnd, STATUS_ABORT, STATUS_ERROR, STATUS_TIMEOUT,
};
use shared::vcpu::{Injection, VcpuContext, INJECT_DABT, INJECT_DABT_WRITE, INJECT_IABT};

/// SMCCC NOT_SUPPORTED as a register value.
const NOT_SUPPORTED: u64 = -1i64 as u64;
/// How many trapped system-register accesses are reported before going quiet.
const SYSREG_REPORTS: u32 = 8;

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
}

impl VmModel {
    /// A VM with these vCPUs' PSCI states and devices.
    pub fn new(id: u32, psci: Psci, bus: MmioBus) -> Self {
        Self {
            id,
            psci,
            bus: spin::Mutex::new(bus),
            reported: AtomicU64::new(NO_STATUS),
            end: spin::Once::new(),
            sysreg_reports: AtomicU32::new(0),
        }
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
                        log::info!(
                            "guest {}: vcpu{vcpu}: {e}: synchronous external abort injected",
                            self.id
                        );
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
                log::info!(
                    "guest {}: vcpu{vcpu}: instruction fetch at IPA {ipa:#x} outside RAM: \
                     synchronous external abort injected",
                    self.id
                );
                inject(ctx, INJECT_IABT);
                Step::Resume
            }
            Exit::Wfx { wfe } => {
                ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
                Step::Wait { wfe }
            }
            Exit::SysReg(s) => {
                if self.sysreg_reports.fetch_add(1, Ordering::Relaxed) < SYSREG_REPORTS {
                    log::warn!(
                        "guest {}: vcpu{vcpu}: {} of system register op0={} op1={} CRn={} CRm={} \
                         op2={} at pc {:#x}: not emulated (reads as zero, writes ignored)",
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
                if s.read {
                    ctx.set_reg(s.rt, 0);
                }
                ctx.gpr.pc = ctx.gpr.pc.wrapping_add(exit.pc_advance());
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
            Exit::Unknown { esr } => {
                log::error!(
                    "guest {}: vcpu{vcpu}: exit the VMM does not handle (esr {esr:#x}, ec {:#x}) \
                     at pc {:#x}: VM aborted",
                    self.id,
                    shared::exit::esr::ec(esr),
                    ctx.gpr.pc
                );
                Step::End(self.end(VmEnd::ABORT))
            }
        }
    }

    /// An SMCCC call through HVC or SMC (the PC is already past the instruction).
    fn call(&self, vcpu: usize, ctx: &mut VcpuContext, imm: u16, how: &str) -> Step {
        if imm != 0 {
            log::info!(
                "guest {}: vcpu{vcpu}: {how} #{imm:#x} is not an SMCCC call: NOT_SUPPORTED",
                self.id
            );
            ctx.set_reg(0, NOT_SUPPORTED);
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
        (VmModel::new(0, psci, bus), lines)
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
        // An unknown id and a non-zero immediate are NOT_SUPPORTED.
        assert_eq!(hvc(&m, 0, &mut c, [0x8600_01ff, 0, 0, 0]), Step::Resume);
        assert_eq!(c.gpr.x[0] as i64, -1);
        c.gpr.x[0] = PSCI_VERSION.into();
        assert_eq!(m.handle_exit(0, &mut c, Exit::Hvc { imm: 1 }), Step::Resume);
        assert_eq!(c.gpr.x[0] as i64, -1);
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
}
