//! Check bookkeeping: every check prints one line ending in ` ok` or ` FAILED`, and
//! failures are counted (from any CPU) into the status the guest reports. A firmware
//! deviation the guest tolerates (see `smp.rs`) ends in ` DEVIATION` instead.

use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

static FAILURES: AtomicU32 = AtomicU32::new(0);
static DEVIATIONS: AtomicU32 = AtomicU32::new(0);

/// Prints `<what> ok` or `<what> FAILED` and counts a failure; returns `ok`.
pub fn record(ok: bool, what: fmt::Arguments) -> bool {
    crate::println!("{} {}", what, if ok { "ok" } else { "FAILED" });
    if !ok {
        fail();
    }
    ok
}

/// Counts one failure without printing (the caller has said why).
pub fn fail() {
    FAILURES.fetch_add(1, Ordering::SeqCst);
}

/// Prints `<what> DEVIATION`: a result the specification forbids, from firmware that
/// is not this project's hypervisor (bare QEMU), tolerated and counted separately.
pub fn deviation(what: fmt::Arguments) {
    crate::println!("{what} DEVIATION");
    DEVIATIONS.fetch_add(1, Ordering::SeqCst);
}

/// Tolerated deviations so far.
pub fn deviations() -> u32 {
    DEVIATIONS.load(Ordering::SeqCst)
}

/// Failures so far.
pub fn failures() -> u32 {
    FAILURES.load(Ordering::SeqCst)
}

/// `check!(condition, "format", args…)`: one check line, counted when false.
#[macro_export]
macro_rules! check {
    ($ok:expr, $($arg:tt)*) => {
        $crate::check::record($ok, format_args!($($arg)*))
    };
}
