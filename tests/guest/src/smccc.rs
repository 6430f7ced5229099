//! SMCCC calls through the conduit the DTB names (`hvc` under our hypervisor and under
//! bare QEMU at EL1, `smc` if a DTB says so), and the names of PSCI return codes.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, Ordering};

/// How calls reach the firmware or hypervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc #0`.
    Hvc,
    /// `smc #0`.
    Smc,
}

impl Conduit {
    /// The DTB's name for it.
    pub const fn name(self) -> &'static str {
        match self {
            Conduit::Hvc => "hvc",
            Conduit::Smc => "smc",
        }
    }
}

static USE_SMC: AtomicBool = AtomicBool::new(false);

/// Selects the conduit for every later call.
pub fn set_conduit(c: Conduit) {
    USE_SMC.store(c == Conduit::Smc, Ordering::SeqCst);
}

/// SMCCC function-id bit 30: SMC64 calling convention.
const SMC64: u32 = 1 << 30;

/// Makes one SMCCC call with up to three arguments and returns the result as a signed
/// value: `x0` for an SMC64 call, `w0` sign-extended for an SMC32 call (whose upper
/// halves SMCCC leaves undefined). x4–x17 are treated as clobbered (SMCCC 1.0 does not
/// preserve them).
pub fn call(function: u32, a1: u64, a2: u64, a3: u64) -> i64 {
    let r: u64;
    if USE_SMC.load(Ordering::Relaxed) {
        // SAFETY: an SMCCC call; the callee may change x0–x17 only, which are declared.
        unsafe {
            asm!("smc #0",
                inout("x0") u64::from(function) => r, inout("x1") a1 => _,
                inout("x2") a2 => _, inout("x3") a3 => _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _,
                out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
                out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                options(nostack))
        };
    } else {
        // SAFETY: as above, through HVC.
        unsafe {
            asm!("hvc #0",
                inout("x0") u64::from(function) => r, inout("x1") a1 => _,
                inout("x2") a2 => _, inout("x3") a3 => _,
                out("x4") _, out("x5") _, out("x6") _, out("x7") _, out("x8") _,
                out("x9") _, out("x10") _, out("x11") _, out("x12") _, out("x13") _,
                out("x14") _, out("x15") _, out("x16") _, out("x17") _,
                options(nostack))
        };
    }
    if function & SMC64 != 0 {
        r as i64
    } else {
        i64::from(r as i32)
    }
}

/// PSCI / SMCCC SUCCESS.
pub const SUCCESS: i64 = 0;
/// NOT_SUPPORTED.
pub const NOT_SUPPORTED: i64 = -1;
/// INVALID_PARAMETERS.
pub const INVALID_PARAMETERS: i64 = -2;
/// ALREADY_ON.
pub const ALREADY_ON: i64 = -4;
/// ON_PENDING.
pub const ON_PENDING: i64 = -5;

/// A return code's PSCI name (or "value" for anything else).
pub const fn ret_name(r: i64) -> &'static str {
    match r {
        0 => "SUCCESS",
        -1 => "NOT_SUPPORTED",
        -2 => "INVALID_PARAMETERS",
        -3 => "DENIED",
        -4 => "ALREADY_ON",
        -5 => "ON_PENDING",
        -6 => "INTERNAL_FAILURE",
        -7 => "NOT_PRESENT",
        -8 => "DISABLED",
        -9 => "INVALID_ADDRESS",
        _ => "value",
    }
}

/// Shows a return value as `NAME` or a number.
pub struct Ret(pub i64);

impl core::fmt::Display for Ret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match ret_name(self.0) {
            "value" => write!(f, "{:#x}", self.0),
            name => f.write_str(name),
        }
    }
}
