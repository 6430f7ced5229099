//! PSCI through the `smccc` crate, with the conduit the device tree names. The conduit is
//! also kept in an atomic so the panic path can power off without the boot information.

use core::sync::atomic::{AtomicU8, Ordering};
use el1_host::bootinfo::PsciMethod;
use smccc::{Hvc, Smc};

pub use smccc::psci::Error;

static CONDUIT: AtomicU8 = AtomicU8::new(0);

/// Records the conduit for later calls.
pub fn set_method(method: PsciMethod) {
    let v = match method {
        PsciMethod::Hvc => 1,
        PsciMethod::Smc => 2,
    };
    CONDUIT.store(v, Ordering::Release);
}

fn method() -> Option<PsciMethod> {
    match CONDUIT.load(Ordering::Acquire) {
        1 => Some(PsciMethod::Hvc),
        2 => Some(PsciMethod::Smc),
        _ => None,
    }
}

/// CPU_ON: starts the CPU with affinity `mpidr` at PA `entry` with x0 = `context`.
/// `None` if no PSCI conduit is known.
pub fn cpu_on(mpidr: u64, entry: u64, context: u64) -> Option<Result<(), Error>> {
    Some(match method()? {
        PsciMethod::Hvc => smccc::psci::cpu_on::<Hvc>(mpidr, entry, context),
        PsciMethod::Smc => smccc::psci::cpu_on::<Smc>(mpidr, entry, context),
    })
}

/// SYSTEM_OFF. Returns only if it failed or no conduit is known.
pub fn system_off() -> Option<Error> {
    let r = match method()? {
        PsciMethod::Hvc => smccc::psci::system_off::<Hvc>(),
        PsciMethod::Smc => smccc::psci::system_off::<Smc>(),
    };
    r.err()
}
