//! Running the host Image under `qemu-system-aarch64` (virt, virtualization=on, GICv3),
//! streaming its console, and reading the host's exit status.
//!
//! Status protocol (see `el1-host/src/status.rs`): the host's last line is
//! `host: exit status=<n>`, after which it powers off with PSCI SYSTEM_OFF and QEMU
//! exits. QEMU runs without semihosting, so nothing in the guest can choose QEMU's own
//! exit code. A run that ends without the line is a failure; a run that does not end is
//! killed at the timeout.
//!
//! With a guest ([`QemuConfig::initrd`] holds a guest bundle, `crate::bundle`), the host
//! also prints `guest <vm>: exit status=<n> reason=<reason>`
//! (`shared::guest_abi::ExitLine`) before its own status line. The run then succeeds only
//! if the host's status is 0 *and* the guest's is 0; a missing guest line is a failure.

use shared::guest_abi::parse_exit_line;
/// The guest exit line and its parts, for users of [`Report::guest`].
pub use shared::guest_abi::{ExitLine, ExitReason, STATUS_ABORT, STATUS_ERROR, STATUS_TIMEOUT};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-aarch64";
// The host's status line, read with the host's own definition of it.
pub use el1_host::status::{parse_status_line, STATUS_PREFIX};
/// CPU models the project supports.
pub const CPU_MODELS: [&str; 4] = ["cortex-a53", "cortex-a57", "cortex-a72", "max"];

/// One QEMU run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QemuConfig {
    /// The arm64 Image to boot.
    pub image: PathBuf,
    /// `-cpu` model.
    pub cpu: String,
    /// Number of CPUs.
    pub smp: u32,
    /// `-m` size, e.g. `1G`.
    pub mem: String,
    /// Kernel command line (`-append`).
    pub append: Option<String>,
    /// Kill QEMU after this long; `None` waits forever (used with `--gdb`).
    pub timeout: Option<Duration>,
    /// Start halted with a gdb server on :1234.
    pub gdb: bool,
    /// The host's initrd (`-initrd`): a guest bundle. A guest exit line is then required.
    pub initrd: Option<PathBuf>,
    /// `-icount shift=0`: one instruction per nanosecond of virtual time (benchmarks).
    pub icount: bool,
    /// Boot at EL2 (`virtualization=on`, the hypervisor's case); `false` boots the image
    /// at EL1 with QEMU's own PSCI (the test guest without the hypervisor).
    pub virtualization: bool,
}

impl QemuConfig {
    /// Defaults of `cargo xtask qemu`: max, 2 CPUs, 1G, 60 s.
    pub fn new(image: PathBuf) -> Self {
        Self {
            image,
            cpu: "max".into(),
            smp: 2,
            mem: "1G".into(),
            append: None,
            timeout: Some(Duration::from_secs(60)),
            gdb: false,
            initrd: None,
            icount: false,
            virtualization: true,
        }
    }

    /// QEMU's arguments.
    pub fn args(&self) -> Vec<String> {
        // `max` emulates pointer authentication with QARMA by default, which is several
        // times slower under TCG than the implementation-defined algorithm.
        let cpu = if self.cpu == "max" {
            "max,pauth-impdef=on".to_string()
        } else {
            self.cpu.clone()
        };
        let machine = if self.virtualization {
            "virt,virtualization=on,gic-version=3"
        } else {
            "virt,gic-version=3"
        };
        let mut a: Vec<String> = [
            "-M",
            machine,
            "-cpu",
            &cpu,
            "-smp",
            &self.smp.to_string(),
            "-m",
            &self.mem,
            "-nographic",
            // No network card: nothing uses one, and QEMU's default NIC needs the
            // ipxe-qemu option ROM, which a minimal QEMU install does not have.
            "-nic",
            "none",
            "-no-reboot",
            "-kernel",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(self.image.display().to_string());
        if let Some(append) = &self.append {
            a.extend(["-append".into(), append.clone()]);
        }
        if let Some(initrd) = &self.initrd {
            a.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        if self.icount {
            a.extend(["-icount".into(), "shift=0".into()]);
        }
        if self.gdb {
            a.extend(["-s".into(), "-S".into()]);
        }
        a
    }

    /// Checks the values before QEMU sees them.
    pub fn validate(&self) -> Result<(), QemuError> {
        if !(1..=8).contains(&self.smp) {
            return Err(QemuError::BadOption(format!(
                "--smp {}: expected 1 to 8 CPUs",
                self.smp
            )));
        }
        if parse_mem(&self.mem).is_none() {
            return Err(QemuError::BadOption(format!(
                "--mem {}: expected a size such as 512M or 4G",
                self.mem
            )));
        }
        if self.cpu.is_empty() || self.cpu.contains(',') {
            return Err(QemuError::BadOption(format!(
                "--cpu {:?}: expected a model name such as {}",
                self.cpu,
                CPU_MODELS.join(", ")
            )));
        }
        Ok(())
    }
}

/// Parses a QEMU memory size (`512M`, `1G`, `1024`, …) into bytes.
pub fn parse_mem(s: &str) -> Option<u64> {
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "M"),
    };
    let n: u64 = digits.parse().ok()?;
    let shift = match unit {
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift).filter(|&b| b > 0)
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The host printed its status line (the last one wins) and QEMU exited.
    Status(u32),
    /// QEMU exited without a status line.
    NoStatusLine(Option<i32>),
    /// QEMU was killed at the timeout.
    TimedOut(Duration),
}

/// The result of a run: how it ended and everything it printed.
#[derive(Clone, Debug)]
pub struct Report {
    /// How it ended.
    pub outcome: Outcome,
    /// All console lines (QEMU's own stderr lines prefixed `qemu: `).
    pub lines: Vec<String>,
    /// The guest's exit line, when a guest was run (the last one wins).
    pub guest: Option<ExitLine>,
    /// Whether a guest was expected (an initrd was passed): its exit line is required.
    pub expect_guest: bool,
}

/// Clamps a status to a process exit code: 0 stays 0, anything else becomes 1..=255.
fn exit_code_of(n: u32) -> u8 {
    match n {
        0 => 0,
        n => u8::try_from(n).unwrap_or(255).max(1),
    }
}

impl Report {
    /// The process exit code `cargo xtask qemu` uses: the host's status if it is not 0
    /// (clamped to 1..=255 when it does not fit), else the guest's status when a guest was
    /// expected (1 if its exit line is missing), else 0; 1 if there is no status line.
    pub fn exit_code(&self) -> u8 {
        match (&self.outcome, self.expect_guest, &self.guest) {
            (Outcome::Status(0), false, _) => 0,
            (Outcome::Status(0), true, Some(g)) => exit_code_of(g.status),
            (Outcome::Status(0), true, None) => 1,
            (Outcome::Status(n), _, _) => exit_code_of(*n),
            _ => 1,
        }
    }

    /// A one-line description of a failed run (`None` on success).
    pub fn failure(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Status(0) => match (self.expect_guest, &self.guest) {
                (false, _) => None,
                (true, Some(g)) if g.status == 0 => None,
                (true, Some(g)) => Some(format!(
                    "guest {} exited with status {} (reason {})",
                    g.vm,
                    g.status,
                    g.reason.name()
                )),
                (true, None) => {
                    Some("the host finished without a `guest <vm>: exit status=` line".to_string())
                }
            },
            Outcome::Status(n) => Some(format!("host reported exit status {n}")),
            Outcome::NoStatusLine(code) => Some(format!(
                "QEMU exited ({}) without the host's `{STATUS_PREFIX}<n>` line",
                code.map_or("killed by a signal".into(), |c| format!("code {c}"))
            )),
            Outcome::TimedOut(t) => Some(format!(
                "timed out after {} s: QEMU killed (the host neither finished nor powered off)",
                t.as_secs()
            )),
        }
    }
}

/// Why QEMU could not be run at all.
#[derive(Debug)]
pub enum QemuError {
    /// The binary is not on PATH.
    NotInstalled,
    /// Spawning or waiting failed.
    Io(std::io::Error),
    /// A command-line value is invalid.
    BadOption(String),
    /// The image file does not exist.
    NoImage(PathBuf),
}

impl fmt::Display for QemuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotInstalled => write!(
                f,
                "{QEMU} is not installed; on Debian/Ubuntu: sudo apt-get install qemu-system-arm \
                 (or run scripts/setup)"
            ),
            Self::Io(e) => write!(f, "running {QEMU}: {e}"),
            Self::BadOption(s) => write!(f, "{s}"),
            Self::NoImage(p) => write!(f, "no Image at {} (run `cargo xtask build`)", p.display()),
        }
    }
}

impl std::error::Error for QemuError {}

/// Finds a program on PATH.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

enum Event {
    Line(String),
    Closed,
}

fn pump(reader: impl Read + Send + 'static, prefix: &'static str, tx: mpsc::Sender<Event>) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(reader);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let s = String::from_utf8_lossy(&buf);
                    let line = s.trim_end_matches(['\n', '\r']).replace('\r', "");
                    if tx.send(Event::Line(format!("{prefix}{line}"))).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = tx.send(Event::Closed);
    });
}

/// Boots the image and waits for the end; `on_line` sees each console line as it comes.
pub fn run(cfg: &QemuConfig, mut on_line: impl FnMut(&str)) -> Result<Report, QemuError> {
    cfg.validate()?;
    if !cfg.image.is_file() {
        return Err(QemuError::NoImage(cfg.image.clone()));
    }
    let qemu = find_on_path(QEMU).ok_or(QemuError::NotInstalled)?;
    let mut child = Command::new(qemu)
        .args(cfg.args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(QemuError::Io)?;
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        pump(out, "", tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        pump(err, "qemu: ", tx.clone());
    }
    drop(tx);

    let start = Instant::now();
    let mut lines = Vec::new();
    let mut status = None;
    let mut guest = None;
    let mut open = 2;
    while open > 0 {
        let wait = match cfg.timeout {
            Some(t) => match t.checked_sub(start.elapsed()) {
                Some(left) => left,
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Report {
                        outcome: Outcome::TimedOut(t),
                        lines,
                        guest,
                        expect_guest: cfg.initrd.is_some(),
                    });
                }
            },
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait) {
            Ok(Event::Line(line)) => {
                on_line(&line);
                if !line.starts_with("qemu: ") {
                    if let Some(n) = parse_status_line(&line) {
                        status = Some(n);
                    }
                    if let Some(g) = parse_exit_line(&line) {
                        guest = Some(g);
                    }
                }
                // A guest flooding its console for the whole time limit must not make
                // xtask's memory grow without bound: keep the first lines only.
                if lines.len() < MAX_KEPT_LINES {
                    lines.push(line);
                } else if lines.len() == MAX_KEPT_LINES {
                    lines.push(format!(
                        "xtask: further console lines not kept (limit {MAX_KEPT_LINES})"
                    ));
                }
            }
            Ok(Event::Closed) => open -= 1,
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let exit: ExitStatus = child.wait().map_err(QemuError::Io)?;
    let outcome = match status {
        Some(n) => Outcome::Status(n),
        None => Outcome::NoStatusLine(exit.code()),
    };
    Ok(Report {
        outcome,
        lines,
        guest,
        expect_guest: cfg.initrd.is_some(),
    })
}

/// Installs QEMU when it is missing and this process may: running as root with apt-get
/// available. Otherwise returns [`QemuError::NotInstalled`] (whose message says how).
pub fn ensure_installed() -> Result<(), QemuError> {
    if ensure_package(QEMU, "qemu-system-arm") {
        Ok(())
    } else {
        Err(QemuError::NotInstalled)
    }
}

/// Whether `binary` is on PATH, installing Debian's `package` first when it is missing and
/// this process may (root, with apt-get); says on stderr what it installs.
pub fn ensure_package(binary: &str, package: &str) -> bool {
    if find_on_path(binary).is_some() {
        return true;
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root || find_on_path("apt-get").is_none() {
        return false;
    }
    eprintln!("xtask: {binary} is missing; installing {package} with apt-get");
    for args in [&["update"][..], &["install", "-y", package][..]] {
        let ok = Command::new("apt-get")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return false;
        }
    }
    find_on_path(binary).is_some()
}

/// Where `cargo xtask build` puts the Image, for a workspace root.
pub fn image_path(root: &Path) -> PathBuf {
    root.join("target/aarch64-unknown-none/release/el1-host.img")
}

/// Console lines a [`Report`] keeps (they are all streamed to `on_line` regardless).
pub const MAX_KEPT_LINES: usize = 200_000;

/// QEMU machines one test process runs at once: CI machines have 2 cores, and TCG keeps
/// one busy per vCPU thread that is not idle.
pub const MAX_PARALLEL_QEMUS: usize = 2;

static FREE_SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(MAX_PARALLEL_QEMUS), Condvar::new());

/// One of the [`MAX_PARALLEL_QEMUS`] places a test takes before it starts QEMU; dropping
/// it gives the place back.
pub struct QemuSlot(());

impl QemuSlot {
    /// Waits for a free place and takes it.
    pub fn take() -> QemuSlot {
        let (free, cv) = &FREE_SLOTS;
        let mut n = free.lock().unwrap_or_else(|e| e.into_inner());
        while *n == 0 {
            n = cv.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n -= 1;
        QemuSlot(())
    }
}

impl Drop for QemuSlot {
    fn drop(&mut self) {
        let (free, cv) = &FREE_SLOTS;
        *free.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        cv.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_for_max_and_a53() {
        let mut c = QemuConfig::new("k.img".into());
        c.append = Some("loglevel=debug nokaslr".into());
        let a = c.args();
        let pos = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(a[pos("-cpu") + 1], "max,pauth-impdef=on");
        assert_eq!(a[pos("-smp") + 1], "2");
        assert_eq!(a[pos("-m") + 1], "1G");
        assert_eq!(a[pos("-M") + 1], "virt,virtualization=on,gic-version=3");
        assert_eq!(a[pos("-append") + 1], "loglevel=debug nokaslr");
        assert!(!a.iter().any(|x| x.contains("semihosting")));
        assert!(!a.contains(&"-S".to_string()));
        c.cpu = "cortex-a53".into();
        c.gdb = true;
        c.append = None;
        let a = c.args();
        assert!(a.contains(&"cortex-a53".to_string()));
        assert!(a.contains(&"-s".to_string()) && a.contains(&"-S".to_string()));
        assert!(!a.contains(&"-append".to_string()));
    }

    #[test]
    fn option_validation() {
        let mut c = QemuConfig::new("k.img".into());
        assert!(c.validate().is_ok());
        c.smp = 0;
        assert!(matches!(c.validate(), Err(QemuError::BadOption(_))));
        c.smp = 4;
        c.mem = "lots".into();
        assert!(c.validate().unwrap_err().to_string().contains("--mem lots"));
        c.mem = "4G".into();
        c.cpu = "max,sve=off".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn guest_status_decides_when_a_guest_was_expected() {
        let r = |outcome, guest| Report {
            outcome,
            lines: vec![],
            guest,
            expect_guest: true,
        };
        let g = |status, reason| {
            Some(ExitLine {
                vm: 0,
                status,
                reason,
            })
        };
        let ok = r(Outcome::Status(0), g(0, ExitReason::GuestExit));
        assert_eq!((ok.exit_code(), ok.failure()), (0, None));
        let bad = r(Outcome::Status(0), g(3, ExitReason::GuestExit));
        assert_eq!(bad.exit_code(), 3);
        assert!(bad.failure().unwrap().contains("status 3"));
        let t = r(Outcome::Status(0), g(124, ExitReason::Timeout));
        assert_eq!(t.exit_code(), 124);
        assert!(t.failure().unwrap().contains("reason timeout"));
        let missing = r(Outcome::Status(0), None);
        assert_eq!(missing.exit_code(), 1);
        assert!(missing.failure().unwrap().contains("without a `guest"));
        // A host failure wins over a guest success.
        let host = r(Outcome::Status(4), g(0, ExitReason::SystemOff));
        assert_eq!(host.exit_code(), 4);
        let mut c = QemuConfig::new("k.img".into());
        c.initrd = Some("b.bin".into());
        c.icount = true;
        let a = c.args();
        let pos = |s: &str| a.iter().position(|x| x == s).unwrap();
        assert_eq!(a[pos("-initrd") + 1], "b.bin");
        assert_eq!(a[pos("-icount") + 1], "shift=0");
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_mem("512M"), Some(512 << 20));
        assert_eq!(parse_mem("4G"), Some(4 << 30));
        assert_eq!(parse_mem("1024"), Some(1 << 30));
        assert_eq!(parse_mem("0G"), None);
        assert_eq!(parse_mem("1T"), None);
        assert_eq!(parse_mem(""), None);
    }

    #[test]
    fn status_lines_and_exit_codes() {
        assert_eq!(parse_status_line("host: exit status=0"), Some(0));
        assert_eq!(parse_status_line("\rhost: exit status=3\r"), Some(3));
        assert_eq!(parse_status_line("host: exit status=x"), None);
        let r = |outcome| Report {
            outcome,
            lines: vec![],
            guest: None,
            expect_guest: false,
        };
        assert_eq!(r(Outcome::Status(0)).exit_code(), 0);
        assert_eq!(r(Outcome::Status(3)).exit_code(), 3);
        assert_eq!(r(Outcome::Status(256)).exit_code(), 255);
        assert_eq!(r(Outcome::NoStatusLine(Some(0))).exit_code(), 1);
        let t = r(Outcome::TimedOut(Duration::from_secs(7)));
        assert_eq!(t.exit_code(), 1);
        assert!(t.failure().unwrap().starts_with("timed out after 7 s"));
        assert!(r(Outcome::NoStatusLine(Some(0)))
            .failure()
            .unwrap()
            .contains("without the host's"));
    }
}
