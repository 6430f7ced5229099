//! PSCI 1.0 and SMCCC 1.1 for guests, as a state machine over the vCPUs' power states.
//!
//! The guest calls through HVC (the device tree says `method = "hvc"`; a trapped SMC is
//! handled the same way). The VMM passes the caller's x0..x3 to [`Psci::handle`] and
//! carries out the returned [`PsciAction`]. Each vCPU's power state is an atomic, and
//! CPU_ON claims its target with one compare-exchange, so vCPUs running on different
//! host CPUs may call concurrently: when several race to start the same vCPU exactly
//! one wins and every other caller gets ALREADY_ON, as KVM answers.
//!
//! | call | answer |
//! | --- | --- |
//! | PSCI_VERSION | 1.0 (0x0001_0000) |
//! | PSCI_FEATURES(fid) | 0 for every function below, NOT_SUPPORTED otherwise |
//! | CPU_SUSPEND (32/64) | standby only: the vCPU waits for an interrupt, then SUCCESS |
//! | CPU_OFF | the calling vCPU stops; no return. When it was the last vCPU on (none on or pending), [`PsciAction::AllOff`]: nothing can ever run again, so the VMM ends the VM |
//! | CPU_ON (32/64) | SUCCESS and the target starts at `entry` with x0 = `context`; INVALID_PARAMETERS for an unknown or malformed MPIDR; INVALID_ADDRESS for an entry outside guest RAM or not 4-byte aligned; ALREADY_ON (also while another caller's start is pending, as KVM) |
//! | AFFINITY_INFO (32/64) | ON 0 / OFF 1 / ON_PENDING 2 at level 0; INVALID_PARAMETERS for other levels or an unknown MPIDR |
//! | MIGRATE_INFO_TYPE | 2: no trusted OS needs migrating |
//! | SYSTEM_OFF, SYSTEM_RESET | the VM powers off / resets; no return |
//! | SMCCC_VERSION | 1.1 (0x0001_0001) |
//! | SMCCC_ARCH_FEATURES(fid) | 0 for SMCCC_VERSION and ARCH_FEATURES; for ARCH_WORKAROUND_1/2/3 0 only if [`ArchWorkarounds`] says the host provides it, else NOT_SUPPORTED |
//! | anything else | NOT_SUPPORTED (−1) |
//!
//! The 32-bit (SMC32) forms take their arguments from the low 32 bits of the registers.
//! PSCI 1.0 names INVALID_ADDRESS (−9) as the answer to an entry point the
//! implementation knows to be invalid, so that is what a CPU_ON outside RAM returns
//! (PSCI 0.2 used INVALID_PARAMETERS; 1.0 callers handle both).

use alloc::vec::Vec;
use core::fmt;
use core::ops::Range;
use core::sync::atomic::{AtomicU8, Ordering};
use smccc::arch::{
    SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_1, SMCCC_ARCH_WORKAROUND_2, SMCCC_ARCH_WORKAROUND_3,
    SMCCC_VERSION,
};
use smccc::psci::{
    PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_32, PSCI_CPU_ON_64,
    PSCI_CPU_SUSPEND_32, PSCI_CPU_SUSPEND_64, PSCI_FEATURES, PSCI_MIGRATE_INFO_TYPE,
    PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
};

/// PSCI return codes (negative values are sign-extended into x0).
pub mod ret {
    /// Success.
    pub const SUCCESS: i32 = 0;
    /// The function is not implemented.
    pub const NOT_SUPPORTED: i32 = -1;
    /// A parameter is wrong.
    pub const INVALID_PARAMETERS: i32 = -2;
    /// The operation is refused.
    pub const DENIED: i32 = -3;
    /// CPU_ON: the target is already on.
    pub const ALREADY_ON: i32 = -4;
    /// CPU_ON: an earlier CPU_ON for the target is still in progress.
    pub const ON_PENDING: i32 = -5;
    /// Something went wrong inside the implementation.
    pub const INTERNAL_FAILURE: i32 = -6;
    /// The entry address is known to be invalid.
    pub const INVALID_ADDRESS: i32 = -9;
}

/// PSCI_VERSION's answer: major 1, minor 0.
pub const PSCI_VERSION_1_0: u32 = 0x0001_0000;
/// SMCCC_VERSION's answer: 1.1.
pub const SMCCC_VERSION_1_1: u32 = 0x0001_0001;
/// MIGRATE_INFO_TYPE's answer: a trusted OS is not present or needs no migration.
pub const MIGRATE_INFO_NOT_REQUIRED: u64 = 2;
/// The MPIDR bits that are affinity fields (Aff3 [39:32], Aff2..Aff0 [23:0]).
pub const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// A vCPU's power state as PSCI sees it. The numbers are AFFINITY_INFO's answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PowerState {
    /// Running (or runnable).
    On = 0,
    /// Off: CPU_ON may start it.
    Off = 1,
    /// A CPU_ON won the race; the host has not started it yet.
    OnPending = 2,
}

impl PowerState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Self::On,
            2 => Self::OnPending,
            _ => Self::Off,
        }
    }
}

/// Which SMCCC firmware workarounds the host can offer the guest (each needs real
/// work at EL2, so none is advertised unless the caller says it is provided).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchWorkarounds {
    /// SMCCC_ARCH_WORKAROUND_1 (Spectre v2 branch-predictor invalidation).
    pub wa1: bool,
    /// SMCCC_ARCH_WORKAROUND_2 (Spectre v4 SSBD).
    pub wa2: bool,
    /// SMCCC_ARCH_WORKAROUND_3 (Spectre-BHB).
    pub wa3: bool,
}

/// What the VMM does after a PSCI/SMCCC call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciAction {
    /// Resume the caller with these values in x0..x3.
    Return([u64; 4]),
    /// Resume the caller with x0 = SUCCESS and start vCPU `vcpu` at `entry` with
    /// x0 = `context` (EL1h, MMU off, as for the boot vCPU). Call
    /// [`Psci::vcpu_started`] once it runs.
    StartVcpu {
        /// Index of the vCPU to start.
        vcpu: usize,
        /// Its entry point (an IPA inside guest RAM).
        entry: u64,
        /// Its x0.
        context: u64,
    },
    /// CPU_SUSPEND (standby): let the caller wait for an interrupt, then resume it with
    /// x0 = SUCCESS.
    WaitForInterrupt,
    /// CPU_OFF: stop the calling vCPU; it has been marked off.
    StopVcpu,
    /// CPU_OFF of the last vCPU that was on (no other is on or pending): the caller
    /// is marked off and no vCPU can ever call CPU_ON again, so the VM is over.
    AllOff,
    /// SYSTEM_OFF: the VM is finished.
    PowerOff,
    /// SYSTEM_RESET: restart the VM (call [`Psci::reset`]).
    Reset,
}

/// Why a [`Psci`] could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciSetupError {
    /// No vCPUs.
    NoVcpus,
    /// An MPIDR has bits outside the affinity fields.
    BadMpidr(u64),
    /// Two vCPUs have the same MPIDR.
    DuplicateMpidr(u64),
    /// The boot vCPU index is out of range.
    BadBootVcpu(usize),
    /// Guest RAM is empty.
    EmptyRam,
}

impl fmt::Display for PsciSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVcpus => write!(f, "a VM needs at least one vCPU"),
            Self::BadMpidr(m) => write!(f, "MPIDR {m:#x} has bits outside the affinity fields"),
            Self::DuplicateMpidr(m) => write!(f, "MPIDR {m:#x} is used by two vCPUs"),
            Self::BadBootVcpu(i) => write!(f, "boot vCPU {i} does not exist"),
            Self::EmptyRam => write!(f, "guest RAM is empty"),
        }
    }
}

struct Vcpu {
    mpidr: u64,
    state: AtomicU8,
}

/// The PSCI view of one VM: its vCPUs and their power states. `Sync`: every method
/// takes `&self`, so the vCPUs' host CPUs share one instance.
pub struct Psci {
    vcpus: Vec<Vcpu>,
    boot: usize,
    ram: Range<u64>,
    workarounds: ArchWorkarounds,
}

fn ret(code: i32) -> PsciAction {
    PsciAction::Return([code as i64 as u64, 0, 0, 0])
}

fn value(v: u64) -> PsciAction {
    PsciAction::Return([v, 0, 0, 0])
}

impl Psci {
    /// A VM whose vCPU `i` has affinity `mpidrs[i]`; vCPU `boot` is on, the rest off.
    /// CPU_ON entry points must lie in `ram`.
    pub fn new(
        mpidrs: &[u64],
        boot: usize,
        ram: Range<u64>,
        workarounds: ArchWorkarounds,
    ) -> Result<Self, PsciSetupError> {
        if mpidrs.is_empty() {
            return Err(PsciSetupError::NoVcpus);
        }
        if boot >= mpidrs.len() {
            return Err(PsciSetupError::BadBootVcpu(boot));
        }
        if ram.is_empty() {
            return Err(PsciSetupError::EmptyRam);
        }
        for (i, &m) in mpidrs.iter().enumerate() {
            if m & !MPIDR_AFFINITY_MASK != 0 {
                return Err(PsciSetupError::BadMpidr(m));
            }
            if mpidrs[..i].contains(&m) {
                return Err(PsciSetupError::DuplicateMpidr(m));
            }
        }
        let psci = Self {
            vcpus: mpidrs
                .iter()
                .map(|&mpidr| Vcpu {
                    mpidr,
                    state: AtomicU8::new(PowerState::Off as u8),
                })
                .collect(),
            boot,
            ram,
            workarounds,
        };
        psci.reset();
        Ok(psci)
    }

    /// Back to the state after [`Psci::new`]: the boot vCPU on, the others off (for
    /// SYSTEM_RESET, once every vCPU has stopped).
    pub fn reset(&self) {
        for (i, v) in self.vcpus.iter().enumerate() {
            let s = if i == self.boot {
                PowerState::On
            } else {
                PowerState::Off
            };
            v.state.store(s as u8, Ordering::Release);
        }
    }

    /// Number of vCPUs.
    pub fn vcpu_count(&self) -> usize {
        self.vcpus.len()
    }

    /// The vCPU with affinity `mpidr`.
    pub fn vcpu_by_mpidr(&self, mpidr: u64) -> Option<usize> {
        self.vcpus.iter().position(|v| v.mpidr == mpidr)
    }

    /// vCPU `vcpu`'s power state.
    pub fn state(&self, vcpu: usize) -> Option<PowerState> {
        let v = self.vcpus.get(vcpu)?;
        Some(PowerState::from_u8(v.state.load(Ordering::Acquire)))
    }

    /// The host started a vCPU that a CPU_ON claimed: ON_PENDING becomes ON. Returns
    /// false (and changes nothing) if the vCPU was not pending.
    pub fn vcpu_started(&self, vcpu: usize) -> bool {
        self.vcpus.get(vcpu).is_some_and(|v| {
            v.state
                .compare_exchange(
                    PowerState::OnPending as u8,
                    PowerState::On as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        })
    }

    /// Handles one call from vCPU `caller` with its x0..x3.
    pub fn handle(&self, caller: usize, regs: [u64; 4]) -> PsciAction {
        // SMCCC passes the function id in W0.
        let fid = regs[0] as u32;
        let is32 = fid & (1 << 30) == 0;
        let arg = |i: usize| if is32 { regs[i] & 0xffff_ffff } else { regs[i] };
        match fid {
            PSCI_VERSION => value(PSCI_VERSION_1_0.into()),
            PSCI_FEATURES => {
                if Self::is_psci_function(arg(1) as u32) {
                    ret(ret::SUCCESS)
                } else {
                    ret(ret::NOT_SUPPORTED)
                }
            }
            PSCI_CPU_SUSPEND_32 | PSCI_CPU_SUSPEND_64 => PsciAction::WaitForInterrupt,
            PSCI_CPU_OFF => self.cpu_off(caller),
            PSCI_CPU_ON_32 | PSCI_CPU_ON_64 => self.cpu_on(arg(1), arg(2), arg(3)),
            PSCI_AFFINITY_INFO_32 | PSCI_AFFINITY_INFO_64 => self.affinity_info(arg(1), arg(2)),
            PSCI_MIGRATE_INFO_TYPE => value(MIGRATE_INFO_NOT_REQUIRED),
            PSCI_SYSTEM_OFF => PsciAction::PowerOff,
            PSCI_SYSTEM_RESET => PsciAction::Reset,
            SMCCC_VERSION => value(SMCCC_VERSION_1_1.into()),
            SMCCC_ARCH_FEATURES => self.arch_features(arg(1) as u32),
            _ => ret(ret::NOT_SUPPORTED),
        }
    }

    /// Whether PSCI_FEATURES reports `fid` as implemented.
    fn is_psci_function(fid: u32) -> bool {
        matches!(
            fid,
            PSCI_VERSION
                | PSCI_FEATURES
                | PSCI_CPU_SUSPEND_32
                | PSCI_CPU_SUSPEND_64
                | PSCI_CPU_OFF
                | PSCI_CPU_ON_32
                | PSCI_CPU_ON_64
                | PSCI_AFFINITY_INFO_32
                | PSCI_AFFINITY_INFO_64
                | PSCI_MIGRATE_INFO_TYPE
                | PSCI_SYSTEM_OFF
                | PSCI_SYSTEM_RESET
                // Linux probes SMCCC 1.1 by asking PSCI_FEATURES about SMCCC_VERSION.
                | SMCCC_VERSION
        )
    }

    fn arch_features(&self, fid: u32) -> PsciAction {
        let w = self.workarounds;
        let supported = match fid {
            SMCCC_VERSION | SMCCC_ARCH_FEATURES => true,
            SMCCC_ARCH_WORKAROUND_1 => w.wa1,
            SMCCC_ARCH_WORKAROUND_2 => w.wa2,
            SMCCC_ARCH_WORKAROUND_3 => w.wa3,
            _ => false,
        };
        ret(if supported {
            ret::SUCCESS
        } else {
            ret::NOT_SUPPORTED
        })
    }

    fn cpu_off(&self, caller: usize) -> PsciAction {
        let Some(v) = self.vcpus.get(caller) else {
            return ret(ret::INTERNAL_FAILURE);
        };
        // Only a running vCPU can call; anything else is the VMM's bug, not the guest's.
        // SeqCst here, in CPU_ON and in the scan below: when the last two vCPUs on call
        // CPU_OFF at once, the second of them must see the first one off, so that
        // exactly the last one reports AllOff (never neither).
        match v.state.compare_exchange(
            PowerState::On as u8,
            PowerState::Off as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) if self.all_off() => PsciAction::AllOff,
            Ok(_) => PsciAction::StopVcpu,
            Err(_) => ret(ret::DENIED),
        }
    }

    /// No vCPU is on or pending: only a vCPU that is on can start another, so none
    /// will ever run again.
    fn all_off(&self) -> bool {
        self.vcpus
            .iter()
            .all(|v| v.state.load(Ordering::SeqCst) == PowerState::Off as u8)
    }

    fn cpu_on(&self, target: u64, entry: u64, context: u64) -> PsciAction {
        if target & !MPIDR_AFFINITY_MASK != 0 {
            return ret(ret::INVALID_PARAMETERS);
        }
        let Some(vcpu) = self.vcpu_by_mpidr(target) else {
            return ret(ret::INVALID_PARAMETERS);
        };
        if !entry.is_multiple_of(4) || !self.ram.contains(&entry) {
            return ret(ret::INVALID_ADDRESS);
        }
        // The one compare-exchange that decides a race: only the caller that moves the
        // target from OFF to ON_PENDING starts it.
        match self.vcpus[vcpu].state.compare_exchange(
            PowerState::Off as u8,
            PowerState::OnPending as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) => PsciAction::StartVcpu {
                vcpu,
                entry,
                context,
            },
            // A target another caller is starting is ON to every later caller, as KVM
            // answers (guest code written against KVM accepts SUCCESS or ALREADY_ON).
            Err(_) => ret(ret::ALREADY_ON),
        }
    }

    fn affinity_info(&self, target: u64, level: u64) -> PsciAction {
        if level != 0 || target & !MPIDR_AFFINITY_MASK != 0 {
            return ret(ret::INVALID_PARAMETERS);
        }
        match self.vcpu_by_mpidr(target).and_then(|i| self.state(i)) {
            Some(s) => value(s as u64),
            None => ret(ret::INVALID_PARAMETERS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    const RAM: Range<u64> = 0x4000_0000..0x4800_0000;
    const ENTRY: u64 = 0x4008_0000;

    fn vm(n: u64) -> Psci {
        let mpidrs: Vec<u64> = (0..n).collect();
        Psci::new(&mpidrs, 0, RAM, ArchWorkarounds::default()).unwrap()
    }

    fn x0(a: PsciAction) -> i64 {
        match a {
            PsciAction::Return(r) => r[0] as i64,
            other => panic!("expected a return, got {other:?}"),
        }
    }

    fn call(p: &Psci, caller: usize, fid: u32, a1: u64, a2: u64, a3: u64) -> PsciAction {
        p.handle(caller, [u64::from(fid), a1, a2, a3])
    }

    #[test]
    fn versions_and_constants() {
        let p = vm(1);
        assert_eq!(x0(call(&p, 0, PSCI_VERSION, 0, 0, 0)), 0x1_0000);
        assert_eq!(x0(call(&p, 0, SMCCC_VERSION, 0, 0, 0)), 0x1_0001);
        assert_eq!(x0(call(&p, 0, PSCI_MIGRATE_INFO_TYPE, 0, 0, 0)), 2);
        // Upper bits of x0 are not part of the function id.
        assert_eq!(
            x0(p.handle(
                0,
                [0xffff_ffff_0000_0000 | u64::from(PSCI_VERSION), 0, 0, 0]
            )),
            0x1_0000
        );
    }

    #[test]
    fn features_lists_exactly_what_is_implemented() {
        let p = vm(1);
        for fid in [
            PSCI_VERSION,
            PSCI_FEATURES,
            PSCI_CPU_OFF,
            PSCI_CPU_ON_32,
            PSCI_CPU_ON_64,
            PSCI_AFFINITY_INFO_32,
            PSCI_AFFINITY_INFO_64,
            PSCI_MIGRATE_INFO_TYPE,
            PSCI_SYSTEM_OFF,
            PSCI_SYSTEM_RESET,
            PSCI_CPU_SUSPEND_64,
            SMCCC_VERSION,
        ] {
            assert_eq!(
                x0(call(&p, 0, PSCI_FEATURES, fid.into(), 0, 0)),
                0,
                "{fid:#x}"
            );
        }
        for fid in [
            smccc::psci::PSCI_SYSTEM_SUSPEND_64,
            smccc::psci::PSCI_MIGRATE_64,
            smccc::psci::PSCI_SYSTEM_RESET2_64,
            0xdead_beef,
        ] {
            assert_eq!(
                x0(call(&p, 0, PSCI_FEATURES, fid.into(), 0, 0)),
                -1,
                "{fid:#x}"
            );
        }
    }

    #[test]
    fn arch_features_follow_the_workaround_config() {
        let p = vm(1);
        assert_eq!(
            x0(call(&p, 0, SMCCC_ARCH_FEATURES, SMCCC_VERSION.into(), 0, 0)),
            0
        );
        for wa in [
            SMCCC_ARCH_WORKAROUND_1,
            SMCCC_ARCH_WORKAROUND_2,
            SMCCC_ARCH_WORKAROUND_3,
        ] {
            assert_eq!(x0(call(&p, 0, SMCCC_ARCH_FEATURES, wa.into(), 0, 0)), -1);
        }
        let with = Psci::new(
            &[0],
            0,
            RAM,
            ArchWorkarounds {
                wa1: true,
                wa2: false,
                wa3: true,
            },
        )
        .unwrap();
        let f = |wa: u32| x0(call(&with, 0, SMCCC_ARCH_FEATURES, wa.into(), 0, 0));
        assert_eq!(
            (
                f(SMCCC_ARCH_WORKAROUND_1),
                f(SMCCC_ARCH_WORKAROUND_2),
                f(SMCCC_ARCH_WORKAROUND_3)
            ),
            (0, -1, 0)
        );
    }

    #[test]
    fn unknown_ids_are_not_supported() {
        let p = vm(2);
        for fid in [
            0u32,
            0x8400_0005,
            0xc400_0005,
            0x8400_000e,
            0xc600_0000,
            0x8600_0000,
            0xffff_ffff,
        ] {
            assert_eq!(x0(call(&p, 0, fid, 1, ENTRY, 0)), -1, "{fid:#x}");
        }
        assert_eq!(p.state(1), Some(PowerState::Off), "nothing happened");
    }

    #[test]
    fn cpu_on_off_lifecycle() {
        let p = vm(4);
        assert_eq!(
            call(&p, 0, PSCI_CPU_ON_64, 2, ENTRY, 0x1234),
            PsciAction::StartVcpu {
                vcpu: 2,
                entry: ENTRY,
                context: 0x1234
            }
        );
        assert_eq!(p.state(2), Some(PowerState::OnPending));
        assert_eq!(x0(call(&p, 0, PSCI_AFFINITY_INFO_64, 2, 0, 0)), 2);
        assert_eq!(
            x0(call(&p, 1, PSCI_CPU_ON_64, 2, ENTRY, 0)),
            ret::ALREADY_ON.into(),
            "a CPU_ON of a vCPU being started gets ALREADY_ON, as from KVM"
        );
        assert!(p.vcpu_started(2));
        assert!(!p.vcpu_started(2), "only once");
        assert_eq!(x0(call(&p, 0, PSCI_AFFINITY_INFO_64, 2, 0, 0)), 0);
        assert_eq!(
            x0(call(&p, 0, PSCI_CPU_ON_64, 2, ENTRY, 0)),
            ret::ALREADY_ON.into()
        );
        assert_eq!(
            x0(call(&p, 2, PSCI_CPU_ON_64, 0, ENTRY, 0)),
            ret::ALREADY_ON.into()
        );
        // CPU_OFF from vCPU 2 stops it; it can be started again.
        // (vCPU 0 is still on, so this is not the last one.)
        assert_eq!(call(&p, 2, PSCI_CPU_OFF, 0, 0, 0), PsciAction::StopVcpu);
        assert_eq!(x0(call(&p, 0, PSCI_AFFINITY_INFO_32, 2, 0, 0)), 1);
        assert!(matches!(
            call(&p, 0, PSCI_CPU_ON_64, 2, ENTRY, 0),
            PsciAction::StartVcpu { .. }
        ));
        // A CPU_OFF from a vCPU that is not on is refused.
        assert_eq!(x0(call(&p, 3, PSCI_CPU_OFF, 0, 0, 0)), ret::DENIED.into());
    }

    #[test]
    fn cpu_on_parameter_checks() {
        let p = vm(2);
        let on = |target, entry| x0(call(&p, 0, PSCI_CPU_ON_64, target, entry, 0));
        assert_eq!(
            on(7, ENTRY),
            ret::INVALID_PARAMETERS.into(),
            "unknown MPIDR"
        );
        assert_eq!(
            on(1 | 1 << 31, ENTRY),
            ret::INVALID_PARAMETERS.into(),
            "non-affinity bits"
        );
        assert_eq!(
            on(1, 0x0900_0000),
            ret::INVALID_ADDRESS.into(),
            "entry in MMIO"
        );
        assert_eq!(
            on(1, RAM.end),
            ret::INVALID_ADDRESS.into(),
            "entry just past RAM"
        );
        assert_eq!(
            on(1, ENTRY + 2),
            ret::INVALID_ADDRESS.into(),
            "misaligned entry"
        );
        assert_eq!(
            p.state(1),
            Some(PowerState::Off),
            "failed calls change nothing"
        );
        // The 32-bit form ignores the upper halves of its arguments.
        assert_eq!(
            call(
                &p,
                0,
                PSCI_CPU_ON_32,
                0xffff_ffff_0000_0001,
                0xffff_ffff_0000_0000 | ENTRY,
                0x1_0000_0005
            ),
            PsciAction::StartVcpu {
                vcpu: 1,
                entry: ENTRY,
                context: 5
            }
        );
    }

    #[test]
    fn affinity_info_levels() {
        let p = Psci::new(
            &[0x0, 0x100, 0x1_0000_0000],
            1,
            RAM,
            ArchWorkarounds::default(),
        )
        .unwrap();
        assert_eq!(
            x0(call(&p, 0, PSCI_AFFINITY_INFO_64, 0x100, 0, 0)),
            0,
            "boot vCPU 1 is on"
        );
        assert_eq!(
            x0(call(&p, 0, PSCI_AFFINITY_INFO_64, 0x1_0000_0000, 0, 0)),
            1
        );
        assert_eq!(
            x0(call(&p, 0, PSCI_AFFINITY_INFO_64, 0x100, 1, 0)),
            ret::INVALID_PARAMETERS.into()
        );
        assert_eq!(
            x0(call(&p, 0, PSCI_AFFINITY_INFO_64, 0x200, 0, 0)),
            ret::INVALID_PARAMETERS.into()
        );
    }

    #[test]
    fn system_calls_and_reset() {
        let p = vm(2);
        assert_eq!(call(&p, 0, PSCI_SYSTEM_OFF, 0, 0, 0), PsciAction::PowerOff);
        assert_eq!(call(&p, 1, PSCI_SYSTEM_RESET, 0, 0, 0), PsciAction::Reset);
        assert_eq!(
            call(&p, 0, PSCI_CPU_SUSPEND_64, 0, 0, 0),
            PsciAction::WaitForInterrupt
        );
        assert!(matches!(
            call(&p, 0, PSCI_CPU_ON_64, 1, ENTRY, 0),
            PsciAction::StartVcpu { .. }
        ));
        p.reset();
        assert_eq!(
            (p.state(0), p.state(1)),
            (Some(PowerState::On), Some(PowerState::Off))
        );
    }

    #[test]
    fn setup_errors() {
        let w = ArchWorkarounds::default();
        assert_eq!(
            Psci::new(&[], 0, RAM, w).err(),
            Some(PsciSetupError::NoVcpus)
        );
        assert_eq!(
            Psci::new(&[0, 0], 0, RAM, w).err(),
            Some(PsciSetupError::DuplicateMpidr(0))
        );
        assert_eq!(
            Psci::new(&[1 << 24], 0, RAM, w).err(),
            Some(PsciSetupError::BadMpidr(1 << 24))
        );
        assert_eq!(
            Psci::new(&[0], 1, RAM, w).err(),
            Some(PsciSetupError::BadBootVcpu(1))
        );
        assert_eq!(
            Psci::new(&[0], 0, 5..5, w).err(),
            Some(PsciSetupError::EmptyRam)
        );
        assert!(std::format!("{}", PsciSetupError::DuplicateMpidr(0x100)).contains("0x100"));
        // An out-of-range caller is an internal failure, not a panic.
        assert_eq!(
            x0(call(&vm(1), 9, PSCI_CPU_OFF, 0, 0, 0)),
            ret::INTERNAL_FAILURE.into()
        );
    }

    #[test]
    fn cpu_off_of_the_last_vcpu_ends_the_vm() {
        let p = vm(3);
        // A single vCPU turning itself off: nothing can start anything again.
        assert_eq!(call(&vm(1), 0, PSCI_CPU_OFF, 0, 0, 0), PsciAction::AllOff);
        // vCPU 0 starts 1, then turns off: 1 is pending, so the VM goes on.
        assert!(matches!(
            call(&p, 0, PSCI_CPU_ON_64, 1, ENTRY, 0),
            PsciAction::StartVcpu { .. }
        ));
        assert_eq!(call(&p, 0, PSCI_CPU_OFF, 0, 0, 0), PsciAction::StopVcpu);
        assert!(p.vcpu_started(1));
        // vCPU 1, the last one on, turns off.
        assert_eq!(call(&p, 1, PSCI_CPU_OFF, 0, 0, 0), PsciAction::AllOff);
        assert_eq!(p.state(2), Some(PowerState::Off));
    }

    #[test]
    fn racing_cpu_off_always_ends_the_vm() {
        const N: usize = 4;
        for round in 0..200 {
            let p = Arc::new(vm(N as u64));
            for t in 1..N {
                call(&p, 0, PSCI_CPU_ON_64, t as u64, ENTRY, 0);
                assert!(p.vcpu_started(t));
            }
            let barrier = Arc::new(std::sync::Barrier::new(N));
            let handles: Vec<_> = (0..N)
                .map(|caller| {
                    let p = p.clone();
                    let barrier = barrier.clone();
                    thread::spawn(move || {
                        barrier.wait();
                        call(&p, caller, PSCI_CPU_OFF, 0, 0, 0)
                    })
                })
                .collect();
            let results: Vec<PsciAction> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let last = results.iter().filter(|r| **r == PsciAction::AllOff).count();
            assert!(last >= 1, "round {round}: nobody ended the VM: {results:?}");
        }
    }

    #[test]
    fn racing_cpu_on_has_exactly_one_winner() {
        const CALLERS: usize = 4;
        for round in 0..200 {
            let p = Arc::new(vm(CALLERS as u64 + 1));
            let target = CALLERS as u64; // the last vCPU
            let barrier = Arc::new(std::sync::Barrier::new(CALLERS));
            let handles: Vec<_> = (0..CALLERS)
                .map(|caller| {
                    let p = p.clone();
                    let barrier = barrier.clone();
                    thread::spawn(move || {
                        barrier.wait();
                        call(&p, caller, PSCI_CPU_ON_64, target, ENTRY, caller as u64)
                    })
                })
                .collect();
            let results: Vec<PsciAction> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let winners: Vec<_> = results
                .iter()
                .filter(|r| matches!(r, PsciAction::StartVcpu { .. }))
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            for r in &results {
                if let PsciAction::Return(x) = r {
                    assert_eq!(
                        x[0] as i64,
                        ret::ALREADY_ON.into(),
                        "round {round}: every loser gets ALREADY_ON: {results:?}"
                    );
                }
            }
            assert_eq!(p.state(CALLERS), Some(PowerState::OnPending));
        }
    }
}
