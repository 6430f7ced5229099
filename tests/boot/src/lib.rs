//! Shared helpers of the QEMU boot tests: the host Image is built once per test run,
//! and at most [`MAX_PARALLEL`] QEMU machines run at a time (CI has 2 cores).
//!
//! The Image comes from `EL1_HOST_IMAGE` when set (`cargo xtask test` builds it first and
//! sets it); otherwise the first test runs `cargo xtask build`.
#![warn(missing_docs)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use xtask::qemu::{self, Outcome, QemuConfig, Report};

/// QEMU machines allowed at once (one limit for every QEMU test).
pub use xtask::qemu::MAX_PARALLEL_QEMUS as MAX_PARALLEL;
/// Per-boot timeout.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The Image every test boots (built at most once per test binary).
pub fn image() -> &'static PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Some(p) = std::env::var_os("EL1_HOST_IMAGE").filter(|p| !p.is_empty()) {
            // Relative paths are taken from the workspace root (tests run in their crate).
            let p = xtask::build::workspace_root().join(p);
            assert!(p.is_file(), "EL1_HOST_IMAGE={} is not a file", p.display());
            return p;
        }
        let root = xtask::build::workspace_root();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(&root)
            .args(["xtask", "build"])
            .status()
            .expect("cannot run `cargo xtask build`");
        assert!(status.success(), "`cargo xtask build` failed ({status})");
        qemu::image_path(&root)
    })
}

/// One finished boot.
pub struct Boot {
    /// The runner's report.
    pub report: Report,
    /// Wall time of the QEMU run.
    pub elapsed: Duration,
    /// What was booted (for messages).
    pub what: String,
}

impl Boot {
    /// All console lines joined, for assertion messages.
    pub fn transcript(&self) -> String {
        self.report.lines.join("\n")
    }

    /// Lines starting with `prefix`.
    pub fn lines_starting(&self, prefix: &str) -> Vec<&str> {
        self.report
            .lines
            .iter()
            .map(String::as_str)
            .filter(|l| l.starts_with(prefix))
            .collect()
    }

    /// Asserts the host exited with status 0 and printed no panic or exception.
    pub fn assert_success(&self) {
        assert_eq!(
            self.report.outcome,
            Outcome::Status(0),
            "{}: {}\n--- console ---\n{}",
            self.what,
            self.report.failure().unwrap_or_default(),
            self.transcript()
        );
        for bad in ["panic:", "exception:"] {
            assert!(
                self.lines_starting(bad).is_empty(),
                "{}: printed `{bad}`\n{}",
                self.what,
                self.transcript()
            );
        }
    }

    /// Asserts the host reported `n` CPUs present and all of them online.
    pub fn assert_cpus_online(&self, n: u32) {
        let want = format!("smp: cpus={n} online={n}");
        assert!(
            self.report.lines.iter().any(|l| l == &want),
            "{}: no `{want}` line\n{}",
            self.what,
            self.transcript()
        );
        let up = self
            .lines_starting("smp: cpu")
            .iter()
            .filter(|l| l.contains(" up mpidr="))
            .count() as u32;
        assert_eq!(
            up,
            n - 1,
            "{}: secondaries reporting in\n{}",
            self.what,
            self.transcript()
        );
    }
}

/// Boots the Image with the given CPU model, CPU count and command line.
pub fn boot(cpu: &str, smp: u32, append: Option<&str>) -> Boot {
    let image = image().clone();
    let _slot = xtask::qemu::QemuSlot::take();
    let mut cfg = QemuConfig::new(image);
    cfg.cpu = cpu.into();
    cfg.smp = smp;
    cfg.append = append.map(Into::into);
    cfg.timeout = Some(BOOT_TIMEOUT);
    let what = format!("-cpu {cpu} -smp {smp} -append {append:?}");
    let start = Instant::now();
    let report = qemu::run(&cfg, |_| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
    let elapsed = start.elapsed();
    eprintln!(
        "boot {what}: {:?} in {:.1} s",
        report.outcome,
        elapsed.as_secs_f64()
    );
    Boot {
        report,
        elapsed,
        what,
    }
}
