//! Helpers of the bare-QEMU guest tests: the test guest's Image is built once per test
//! binary, booted directly by QEMU at EL1 (virtualization off, so QEMU's own PSCI
//! answers over HVC, no hypervisor involved), at most [`MAX_PARALLEL`] machines at a
//! time, each stopped at [`BOOT_TIMEOUT`].
//!
//! The Image comes from `GUEST_IMAGE` when set (a prebuilt one); otherwise the first
//! test builds it with [`xtask::guest::build_guest`].
#![warn(missing_docs)]

use shared::guest_abi;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

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

/// QEMU's arguments for a bare EL1 boot of `image`.
pub fn qemu_args(image: &Path, cpu: &str, smp: u32, append: Option<&str>) -> Vec<String> {
    // `max` emulates pointer authentication with QARMA by default, several times slower
    // under TCG than the implementation-defined algorithm.
    let cpu = if cpu == "max" {
        "max,pauth-impdef=on".to_string()
    } else {
        cpu.to_string()
    };
    let mut a: Vec<String> = [
        "-M",
        "virt,gic-version=3",
        "-cpu",
        &cpu,
        "-smp",
        &smp.to_string(),
        "-m",
        MEM,
        "-nographic",
        // No network card (see xtask::qemu: the default one needs an option ROM).
        "-nic",
        "none",
        "-no-reboot",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push(image.display().to_string());
    if let Some(args) = append {
        a.extend(["-append".to_string(), args.to_string()]);
    }
    a
}

/// Boots `image` on bare QEMU and collects its console until it powers off (or the
/// timeout). Panics if QEMU cannot be started.
pub fn boot_image(image: &Path, cpu: &str, smp: u32, append: Option<&str>) -> Run {
    let what = format!(
        "guest on bare QEMU -cpu {cpu} -smp {smp}{}",
        append
            .map(|a| format!(" -append {a:?}"))
            .unwrap_or_default()
    );
    let qemu = xtask::qemu::find_on_path(xtask::qemu::QEMU).unwrap_or_else(|| {
        panic!(
            "{}: {} is not installed (Debian/Ubuntu: apt-get install qemu-system-arm)",
            what,
            xtask::qemu::QEMU
        )
    });
    let _slot = xtask::qemu::QemuSlot::take();
    let start = Instant::now();
    let mut child = Command::new(qemu)
        .args(qemu_args(image, cpu, smp, append))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start QEMU: {e}"));
    let pump = |r: Box<dyn std::io::Read + Send>, prefix: &'static str| {
        std::thread::spawn(move || {
            BufReader::new(r)
                .split(b'\n')
                .map_while(Result::ok)
                .map(|l| {
                    let s = String::from_utf8_lossy(&l).replace('\r', "");
                    format!("{prefix}{s}")
                })
                .collect::<Vec<_>>()
        })
    };
    let out = child.stdout.take().map(|o| pump(Box::new(o), ""));
    let err = child.stderr.take().map(|e| pump(Box::new(e), "qemu: "));
    let mut exited = false;
    while start.elapsed() < BOOT_TIMEOUT {
        if matches!(child.try_wait(), Ok(Some(_))) {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    let elapsed = start.elapsed();
    let collect = |h: Option<std::thread::JoinHandle<Vec<String>>>| {
        h.and_then(|h| h.join().ok()).unwrap_or_default()
    };
    let mut lines = collect(out);
    lines.extend(collect(err));
    eprintln!("{what}: {:.2} s", elapsed.as_secs_f64());
    Run {
        what,
        lines,
        exited,
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
