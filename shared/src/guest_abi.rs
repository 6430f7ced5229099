//! The guest ↔ VMM ABI: how a guest reports its result and the calls the test guest
//! (`tests/guest`) makes to the hypervisor, plus the console lines tools read.
//! Documented for users in `docs/guest-status.md`; both the guest and the host/xtask
//! side use these numbers so they cannot disagree.
//!
//! # Calls
//!
//! SMCCC fast calls, SMC32 convention, owner 6 ("vendor-specific hypervisor service"),
//! made with the conduit the guest's DTB names (`/psci` `method`, `hvc` under this
//! project's hypervisor):
//!
//! | id | name | arguments | reply |
//! | --- | --- | --- | --- |
//! | [`GUEST_EXIT`] | report the guest's status | `w1` = status (0 = success, else number of failures) | `x0 = 0`; the VMM may instead end the VM here and never return |
//! | [`NULL_HVC`] | do nothing (benchmark round trip) | none | `x0 = 0` |
//!
//! The function numbers avoid 0xFF00–0xFFFF, which SMCCC reserves in every owner range
//! for the general queries (call count, call UID, revision). A VMM without this channel
//! (bare QEMU's built-in PSCI, for one) answers NOT_SUPPORTED (−1); the guest takes that
//! as "no hypervisor channel" and just powers off.
//!
//! # Ending a guest
//!
//! The test guest prints [`STATUS_PREFIX`]`<n>` as its last line, calls [`GUEST_EXIT`]
//! with `n`, then PSCI SYSTEM_OFF. The VMM maps the end of a guest to a status with
//! [`final_status`]: the last reported status wins; SYSTEM_OFF without a report is 0 (a
//! generic kernel that shuts down cleanly); SYSTEM_RESET without a report is
//! [`STATUS_RESET_UNREPORTED`], because the VMM never restarts a guest and a kernel that
//! panics and reboots must not count as a success.
//!
//! # Handing a guest to the host
//!
//! [`bundle`]: the file `cargo xtask qemu` passes as the host's initrd (kernel, initrd,
//! command line, guest RAM size, vCPU count, timeout).

pub mod bundle;

/// SMCCC function-id bit 31: fast call.
pub const FAST_CALL: u32 = 1 << 31;
/// SMCCC owner number of the vendor-specific hypervisor service (bits 29:24).
pub const OWNER_VENDOR_HYP: u32 = 6;
/// The first id of this ABI's block: fast, SMC32, vendor hypervisor, number 0x0100.
pub const GUEST_CALL_BASE: u32 = FAST_CALL | (OWNER_VENDOR_HYP << 24) | 0x0100;
const _: () = assert!(GUEST_CALL_BASE == 0x8600_0100);
/// Report the guest's status in `w1`.
pub const GUEST_EXIT: u32 = GUEST_CALL_BASE;
/// A call that does nothing: the benchmark's guest → hypervisor round trip.
pub const NULL_HVC: u32 = GUEST_CALL_BASE + 1;
/// SMCCC hint bit (bit 16, "no live SVE state"); the VMM ignores it when decoding.
pub const SMCCC_HINT: u32 = 1 << 16;

/// SMCCC SUCCESS.
pub const RET_SUCCESS: i64 = 0;
/// SMCCC NOT_SUPPORTED: what a VMM without this ABI answers.
pub const RET_NOT_SUPPORTED: i64 = -1;

/// One call of this ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestCall {
    /// [`GUEST_EXIT`] with its status.
    Exit(u32),
    /// [`NULL_HVC`].
    Null,
}

/// Decodes a guest call from `x0` and `x1`. Only `w0` is the function id and only `w1`
/// an argument (SMC32 convention: the upper halves are ignored); the SMCCC hint bit is
/// ignored. `None` for any id outside this ABI.
pub const fn decode(x0: u64, x1: u64) -> Option<GuestCall> {
    let id = (x0 as u32) & !SMCCC_HINT;
    match id {
        GUEST_EXIT => Some(GuestCall::Exit(x1 as u32)),
        NULL_HVC => Some(GuestCall::Null),
        _ => None,
    }
}

/// How a guest asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEnd {
    /// PSCI SYSTEM_OFF.
    SystemOff,
    /// PSCI SYSTEM_RESET (the VMM ends the VM; it never restarts one).
    SystemReset,
}

/// The status of a guest that reset without reporting one.
pub const STATUS_RESET_UNREPORTED: u32 = 1;

/// The exit status of a guest: the last status it reported through [`GUEST_EXIT`] if
/// any, else 0 for SYSTEM_OFF and [`STATUS_RESET_UNREPORTED`] for SYSTEM_RESET.
pub const fn final_status(reported: Option<u32>, end: GuestEnd) -> u32 {
    match (reported, end) {
        (Some(n), _) => n,
        (None, GuestEnd::SystemOff) => 0,
        (None, GuestEnd::SystemReset) => STATUS_RESET_UNREPORTED,
    }
}

/// Why a VM ended: the `reason=` word of the VMM's exit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reported its status with [`GUEST_EXIT`]; the VMM ended the VM there.
    GuestExit,
    /// PSCI SYSTEM_OFF (status per [`final_status`]).
    SystemOff,
    /// PSCI SYSTEM_RESET (status per [`final_status`]; the VMM never restarts a guest).
    SystemReset,
    /// The VMM stopped a guest that ran past its time limit ([`STATUS_TIMEOUT`]).
    Timeout,
    /// The guest did something the VMM cannot continue from: an SError, an exit of a
    /// kind it does not handle ([`STATUS_ABORT`]).
    Abort,
    /// The VMM could not start or run the guest: bad guest files, no hypervisor, no
    /// memory, a refused hypercall ([`STATUS_ERROR`]).
    Error,
}

impl ExitReason {
    /// Every reason.
    pub const ALL: [ExitReason; 6] = [
        Self::GuestExit,
        Self::SystemOff,
        Self::SystemReset,
        Self::Timeout,
        Self::Abort,
        Self::Error,
    ];

    /// The word printed after `reason=`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::GuestExit => "guest-exit",
            Self::SystemOff => "system-off",
            Self::SystemReset => "system-reset",
            Self::Timeout => "timeout",
            Self::Abort => "abort",
            Self::Error => "error",
        }
    }

    /// The reason named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.name() == name)
    }
}

/// Status of a guest stopped at its time limit (as GNU `timeout` reports one).
pub const STATUS_TIMEOUT: u32 = 124;
/// Status of a guest the VMM had to abort.
pub const STATUS_ABORT: u32 = 125;
/// Status when the VMM could not start or run the guest.
pub const STATUS_ERROR: u32 = 126;

/// The VMM's last line about a VM: `guest <vm>: exit status=<n> reason=<reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitLine {
    /// The VM's number.
    pub vm: u32,
    /// The guest's status (0 = success).
    pub status: u32,
    /// Why it ended.
    pub reason: ExitReason,
}

impl core::fmt::Display for ExitLine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "guest {}: exit status={} reason={}",
            self.vm,
            self.status,
            self.reason.name()
        )
    }
}

/// Reads an exit line (leading text before `guest ` is tolerated, nothing after the
/// reason is).
pub fn parse_exit_line(line: &str) -> Option<ExitLine> {
    let rest = &line[line.find("guest ")? + "guest ".len()..];
    let (vm, rest) = rest.split_once(": exit status=")?;
    let (status, reason) = rest.trim_end().split_once(" reason=")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(vm) || !digits(status) {
        return None;
    }
    Some(ExitLine {
        vm: vm.parse().ok()?,
        status: status.parse().ok()?,
        reason: ExitReason::from_name(reason)?,
    })
}

/// What starts the guest's last console line; the status follows in decimal.
pub const STATUS_PREFIX: &str = "guest-status: ";

/// Reads the status from a console line that contains the status line (the VMM's
/// `guest <vm>: ` prefix may come first). `None` unless the text after
/// [`STATUS_PREFIX`] is a decimal number and nothing else.
pub fn parse_status_line(line: &str) -> Option<u32> {
    let at = line.find(STATUS_PREFIX)?;
    let digits = line[at + STATUS_PREFIX.len()..].trim_end();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The boot-argument word that makes the test guest run its benchmarks; `bench=<n>`
/// also sets the iteration count.
pub const BENCH_ARG: &str = "bench";
/// Iterations of each benchmark when `bench` has no count.
pub const BENCH_DEFAULT_ITERATIONS: u64 = 1000;
/// What starts a benchmark line.
pub const BENCH_PREFIX: &str = "bench: ";
/// Benchmark: [`NULL_HVC`] round trips.
pub const BENCH_NULL_HVC: &str = "null_hvc";
/// Benchmark: reads of an emulated MMIO register (the PL011 flag register).
pub const BENCH_MMIO_READ: &str = "mmio_read";
/// Benchmark (measured by the host, printed as `host: bench: host_ping …`): null
/// host → hyp hypercalls (`Ping`).
pub const BENCH_HOST_PING: &str = "host_ping";
/// Benchmark: an empty counted loop (the baseline).
pub const BENCH_EMPTY_LOOP: &str = "empty_loop";

/// Whether the kernel command line asks for the benchmarks, and how many iterations:
/// `Some(n)` for a `bench` word (default count) or `bench=<n>` with `n > 0`.
pub fn bench_iterations(bootargs: &str) -> Option<u64> {
    bootargs.split_ascii_whitespace().find_map(|w| {
        if w == BENCH_ARG {
            Some(BENCH_DEFAULT_ITERATIONS)
        } else {
            let n: u64 = w.strip_prefix(BENCH_ARG)?.strip_prefix('=')?.parse().ok()?;
            (n > 0).then_some(n)
        }
    })
}

/// One `bench: <name> iterations=<n> cycles=<c>` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchLine<'a> {
    /// Benchmark name.
    pub name: &'a str,
    /// Operations measured.
    pub iterations: u64,
    /// Counter ticks (CNTVCT_EL0) for all of them.
    pub cycles: u64,
}

/// Parses a benchmark line (a prefix before [`BENCH_PREFIX`] is allowed).
pub fn parse_bench_line(line: &str) -> Option<BenchLine<'_>> {
    let rest = &line[line.find(BENCH_PREFIX)? + BENCH_PREFIX.len()..];
    let mut words = rest.split_ascii_whitespace();
    let name = words.next()?;
    let iterations = words.next()?.strip_prefix("iterations=")?.parse().ok()?;
    let cycles = words.next()?.strip_prefix("cycles=")?.parse().ok()?;
    if words.next().is_some() {
        return None;
    }
    Some(BenchLine {
        name,
        iterations,
        cycles,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fast_smc32_vendor_hyp_outside_the_query_range() {
        for id in [GUEST_EXIT, NULL_HVC] {
            assert_eq!(id >> 31, 1, "{id:#x} fast call");
            assert_eq!((id >> 30) & 1, 0, "{id:#x} SMC32");
            assert_eq!((id >> 24) & 0x3f, 6, "{id:#x} owner");
            assert!((id & 0xffff) < 0xff00, "{id:#x} in the general-query range");
        }
        assert_ne!(GUEST_EXIT, NULL_HVC);
    }

    #[test]
    fn decode_ignores_upper_halves_and_the_hint() {
        assert_eq!(decode(GUEST_EXIT as u64, 7), Some(GuestCall::Exit(7)));
        assert_eq!(
            decode(
                0xffff_ffff_0000_0000 | (GUEST_EXIT | SMCCC_HINT) as u64,
                0x1_0000_0003
            ),
            Some(GuestCall::Exit(3))
        );
        assert_eq!(decode(NULL_HVC as u64, 99), Some(GuestCall::Null));
        assert_eq!(decode(0x8400_0000, 0), None); // PSCI_VERSION
        assert_eq!(decode((GUEST_EXIT | 1 << 30) as u64, 0), None); // SMC64 variant
        assert_eq!(decode((NULL_HVC + 1) as u64, 0), None);
    }

    #[test]
    fn final_status_rules() {
        assert_eq!(final_status(None, GuestEnd::SystemOff), 0);
        assert_eq!(final_status(Some(3), GuestEnd::SystemOff), 3);
        assert_eq!(final_status(Some(0), GuestEnd::SystemReset), 0);
        assert_eq!(
            final_status(None, GuestEnd::SystemReset),
            STATUS_RESET_UNREPORTED
        );
        assert_ne!(STATUS_RESET_UNREPORTED, 0);
    }

    #[test]
    fn exit_lines_round_trip_and_reject_garbage() {
        for reason in ExitReason::ALL {
            let l = ExitLine {
                vm: 3,
                status: 124,
                reason,
            };
            let text = std::format!("{l}");
            assert!(text.starts_with("guest 3: exit status=124 reason="));
            assert_eq!(parse_exit_line(&text), Some(l));
            assert_eq!(parse_exit_line(&std::format!("\r{text}\r")), Some(l));
        }
        assert_eq!(parse_exit_line("guest 0: exit status=0 reason=bored"), None);
        assert_eq!(
            parse_exit_line("guest 0: exit status= reason=timeout"),
            None
        );
        assert_eq!(
            parse_exit_line("guest x: exit status=1 reason=timeout"),
            None
        );
        assert_eq!(
            parse_exit_line("guest 0: exit status=1 reason=timeout now"),
            None
        );
        assert_eq!(parse_exit_line("guest 0: guest-status: 0"), None);
        assert_eq!(parse_exit_line("host: exit status=0"), None);
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line("guest-status: 0"), Some(0));
        assert_eq!(parse_status_line("guest 1: guest-status: 12\r"), Some(12));
        assert_eq!(parse_status_line("guest-status: "), None);
        assert_eq!(parse_status_line("guest-status: 1x"), None);
        assert_eq!(parse_status_line("guest-status: -1"), None);
        assert_eq!(parse_status_line("status: 0"), None);
    }

    #[test]
    fn bench_arguments() {
        assert_eq!(bench_iterations(""), None);
        assert_eq!(bench_iterations("console=ttyAMA0"), None);
        assert_eq!(
            bench_iterations("a bench b"),
            Some(BENCH_DEFAULT_ITERATIONS)
        );
        assert_eq!(bench_iterations("bench=500"), Some(500));
        assert_eq!(bench_iterations("bench=0"), None);
        assert_eq!(bench_iterations("bench=x"), None);
        assert_eq!(bench_iterations("benchmark"), None);
        assert_eq!(bench_iterations("nobench"), None);
    }

    #[test]
    fn bench_lines() {
        assert_eq!(
            parse_bench_line("guest 0: bench: null_hvc iterations=1000 cycles=4242"),
            Some(BenchLine {
                name: BENCH_NULL_HVC,
                iterations: 1000,
                cycles: 4242
            })
        );
        assert_eq!(
            parse_bench_line("bench: x iterations=1 cycles=2 extra"),
            None
        );
        assert_eq!(parse_bench_line("bench: x iterations=1"), None);
        assert_eq!(parse_bench_line("bench: x cycles=2 iterations=1"), None);
        assert_eq!(
            parse_bench_line("bench: counter=cntvct frequency=62500000"),
            None
        );
    }
}
