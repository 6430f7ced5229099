//! The exit-status protocol between the host kernel and `cargo xtask qemu`.
//!
//! QEMU runs without semihosting (a guest at EL1 could otherwise use it to stop the
//! machine with any status it likes), so the host reports its status on the console:
//! the last thing it prints is one line `host: exit status=<n>` (decimal, 0 = success),
//! and then it powers the machine off with PSCI SYSTEM_OFF. xtask exits with `<n>`; a
//! run that ends without that line is a failure, and a run that does not end is killed
//! at a timeout.

/// What starts the status line; the decimal status and a newline follow it.
pub const STATUS_PREFIX: &str = "host: exit status=";

/// The statuses the host reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// Boot completed and every check passed.
    Success = 0,
    /// The kernel panicked (the panic message precedes the status line).
    Panic = 1,
    /// An exception the kernel does not handle was taken (the register dump precedes it).
    UnexpectedException = 2,
    /// Some CPUs listed in the device tree did not come up.
    CpusMissing = 3,
    /// A `selftest:` line reported FAILED (the line says what).
    SelftestFailed = 4,
}

impl ExitStatus {
    /// The number printed after [`STATUS_PREFIX`].
    pub const fn code(self) -> u8 {
        self as u8
    }
}

/// Reads the status from one console line, if it is the status line.
///
/// The line must start with the prefix (leading whitespace such as a carriage return is
/// tolerated), so a guest line (`guest <vm>: …`) can never be taken for it; anything but
/// digits after it makes the line not a status line.
pub fn parse_status_line(line: &str) -> Option<u32> {
    let digits = line.trim_start().strip_prefix(STATUS_PREFIX)?.trim_end();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_host_prints() {
        let line = format!("{STATUS_PREFIX}{}\r", ExitStatus::CpusMissing.code());
        assert_eq!(parse_status_line(&line), Some(3));
        assert_eq!(parse_status_line("host: exit status=0"), Some(0));
        // Only at the start of a line: a guest's console line cannot carry it.
        assert_eq!(parse_status_line("guest 0: host: exit status=0"), None);
    }

    #[test]
    fn rejects_other_lines() {
        assert_eq!(parse_status_line("host: exit status="), None);
        assert_eq!(parse_status_line("host: exit status=1x"), None);
        assert_eq!(parse_status_line("smp: 4 of 4 CPUs up"), None);
    }
}
