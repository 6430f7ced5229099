//! Helpers of the bare-QEMU guest tests: the test guest's Image is built once per test
//! binary, booted directly by QEMU at EL1 (virtualization off, so QEMU's own PSCI
//! answers over HVC, no hypervisor involved), at most [`MAX_PARALLEL`] machines at a
//! time, each stopped at [`BOOT_TIMEOUT`].
//!
//! The Image comes from `GUEST_IMAGE` when set (a prebuilt one); otherwise the first
//! test builds it with [`xtask::guest::build_guest`].
#![warn(missing_docs)]

use shared::guest_abi;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use xtask::qemu::{Outcome, QemuConfig};

/// QEMU machines allowed at once (one limit for every QEMU test).
pub use xtask::qemu::MAX_PARALLEL_QEMUS as MAX_PARALLEL;
/// Per-boot timeout.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);
/// Guest RAM.
pub const MEM: &str = "128M";

/// The guest Image (built at most once per test binary).
pub fn image() -> &'static PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let root = xtask::build::workspace_root();
        if let Some(p) = std::env::var_os("GUEST_IMAGE").filter(|p| !p.is_empty()) {
            let p = root.join(p);
            assert!(p.is_file(), "GUEST_IMAGE={} is not a file", p.display());
            return p;
        }
        xtask::guest::build_guest(&root).unwrap_or_else(|e| panic!("building the guest: {e}"))
    })
}

/// One finished boot.
pub struct Run {
    /// What was booted, for messages.
    pub what: String,
    /// Console lines (QEMU's stderr lines prefixed `qemu: `).
    pub lines: Vec<String>,
    /// QEMU stopped by itself (the guest powered off) rather than at the timeout.
    pub exited: bool,
    /// Wall time of the QEMU run.
    pub elapsed: Duration,
}

/// Boots `image` on bare QEMU (at EL1, no hypervisor) and collects its console until it
/// powers off (or the timeout). Panics if QEMU cannot be started.
pub fn boot_image(image: &Path, cpu: &str, smp: u32, append: Option<&str>) -> Run {
    let what = format!(
        "guest on bare QEMU -cpu {cpu} -smp {smp}{}",
        append
            .map(|a| format!(" -append {a:?}"))
            .unwrap_or_default()
    );
    let mut cfg = QemuConfig::new(image.to_path_buf());
    cfg.cpu = cpu.into();
    cfg.smp = smp;
    cfg.mem = MEM.into();
    cfg.append = append.map(str::to_string);
    cfg.timeout = Some(BOOT_TIMEOUT);
    cfg.virtualization = false;
    let _slot = xtask::qemu::QemuSlot::take();
    let start = Instant::now();
    let report = xtask::qemu::run(&cfg, |_| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
    let elapsed = start.elapsed();
    eprintln!("{what}: {:.2} s", elapsed.as_secs_f64());
    Run {
        what,
        lines: report.lines,
        exited: !matches!(report.outcome, Outcome::TimedOut(_)),
        elapsed,
    }
}

/// Boots the shared guest Image.
pub fn boot(cpu: &str, smp: u32, append: Option<&str>) -> Run {
    boot_image(image(), cpu, smp, append)
}

impl Run {
    /// All console lines, for assertion messages.
    pub fn transcript(&self) -> String {
        self.lines.join("\n")
    }

    /// Guest lines starting with `prefix`.
    pub fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.lines
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// The one guest line starting with `prefix`; panics unless there is exactly one.
    pub fn line(&self, prefix: &str) -> &str {
        let l = self.lines_starting(prefix);
        assert_eq!(
            l.len(),
            1,
            "{}: want one line starting `{prefix}`\n{}",
            self.what,
            self.transcript()
        );
        l[0]
    }

    /// Asserts a line starting with `prefix` exists and ends in ` ok`.
    pub fn assert_ok(&self, prefix: &str) {
        let l = self.line(prefix);
        assert!(
            l.ends_with(" ok"),
            "{}: `{l}` is not ok\n{}",
            self.what,
            self.transcript()
        );
    }

    /// Asserts the guest powered off after `guest-status: 0` as its last line, with no
    /// FAILED check, no unexpected exception or panic, and only the one tolerated kind
    /// of DEVIATION (QEMU's unserialised CPU_ON race).
    pub fn assert_passed(&self) {
        let t = self.transcript();
        assert!(
            self.exited,
            "{}: QEMU did not stop within {} s\n{t}",
            self.what,
            BOOT_TIMEOUT.as_secs()
        );
        let guest: Vec<&String> = self
            .lines
            .iter()
            .filter(|l| !l.starts_with("qemu: "))
            .collect();
        let last = guest.last().map(|l| l.as_str()).unwrap_or("");
        assert_eq!(
            guest_abi::parse_status_line(last),
            Some(0),
            "{}: the last line is `{last}`, not `guest-status: 0`\n{t}",
            self.what
        );
        for l in &guest {
            assert!(!l.ends_with("FAILED"), "{}: `{l}`\n{t}", self.what);
            assert!(
                !l.starts_with("exception:") && !l.contains("panic"),
                "{}: `{l}`\n{t}",
                self.what
            );
            if l.ends_with("DEVIATION") {
                assert!(
                    l.starts_with("smp: race for cpu") && l.contains("both calls returned SUCCESS"),
                    "{}: unexpected kind of deviation `{l}`\n{t}",
                    self.what
                );
            }
        }
    }
}
