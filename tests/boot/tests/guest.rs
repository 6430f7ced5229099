//! Boots guests under the hypervisor (issue 4 item 7): the host Image with a guest bundle
//! as its initrd, exactly what `cargo xtask qemu` does.
//!
//! - the test guest (`tests/guest`) on every CPU model with 1 and 4 vCPUs: exit status 0
//!   through GUEST_EXIT, its PSCI checks and the injected aborts (a hole in the guest's
//!   map, above its RAM, data and instruction side) survived;
//! - a guest that faults (`fault`: an undefined instruction its vectors do not expect):
//!   non-zero status;
//! - a guest that spins forever (`spin`): stopped by the host's timeout with a clear
//!   message and `reason=timeout`;
//! - malformed guest files (truncated Image, bad header, too large for guest RAM, a
//!   damaged bundle), written past xtask's own checks: refused by the host with a clear
//!   message before any guest code runs, `reason=error`.
//!
//! At most two QEMU machines run at once.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use xtask::bundle::format::Header;
use xtask::qemu::{self, Outcome, QemuConfig, Report};
use xtask::qemu::{ExitReason, STATUS_ERROR, STATUS_TIMEOUT};

const TIMEOUT: Duration = Duration::from_secs(120);
/// The guest time limit of the normal runs (well below [`TIMEOUT`]).
const GUEST_TIMEOUT_SECS: u32 = 90;

/// The test guest's Image, built once.
fn guest_image() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        xtask::guest::build_guest(&xtask::build::workspace_root())
            .unwrap_or_else(|e| panic!("cannot build the test guest: {e}"))
    })
}

/// A scratch file for one test's bundle.
fn bundle_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = xtask::build::workspace_root().join("target/guest-bundle/tests");
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(format!("{name}.bin"));
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A bundle written with the format's encoder only, past xtask's kernel checks (so the
/// host's own checks are what is tested).
fn raw_bundle(kernel: &[u8], append: &str, guest_mem: u64) -> Vec<u8> {
    let h = Header {
        kernel_size: kernel.len() as u64,
        initrd_size: 0,
        append_size: append.len() as u64,
        guest_mem,
        vcpus: 0,
        timeout_secs: 30,
        flags: 0,
    };
    xtask::bundle::assemble(&h, kernel, &[], append).unwrap()
}

struct Run {
    what: String,
    report: Report,
}

impl Run {
    fn transcript(&self) -> String {
        self.report.lines.join("\n")
    }
    fn has(&self, needle: &str) -> bool {
        self.report.lines.iter().any(|l| l.contains(needle))
    }
    fn count(&self, prefix: &str, suffix: &str) -> usize {
        self.report
            .lines
            .iter()
            .filter(|l| l.starts_with(prefix) && l.trim_end().ends_with(suffix))
            .count()
    }
    /// The host finished normally and printed a guest exit line with this reason.
    fn assert_guest_end(&self, reason: ExitReason) -> u32 {
        assert_eq!(
            self.report.outcome,
            Outcome::Status(0),
            "{}: the host must finish normally whatever the guest did\n{}",
            self.what,
            self.transcript()
        );
        let g = self
            .report
            .guest
            .unwrap_or_else(|| panic!("{}: no guest exit line\n{}", self.what, self.transcript()));
        assert_eq!(
            g.reason,
            reason,
            "{}: exit reason\n{}",
            self.what,
            self.transcript()
        );
        assert!(
            !self.has("panic:")
                && !self
                    .report
                    .lines
                    .iter()
                    .any(|l| l.starts_with("exception:")),
            "{}: the host crashed\n{}",
            self.what,
            self.transcript()
        );
        g.status
    }
}

fn boot(what: &str, cpu: &str, smp: u32, bundle: PathBuf) -> Run {
    let image = boot_tests::image().clone();
    let _slot = xtask::qemu::QemuSlot::take();
    let mut cfg = QemuConfig::new(image);
    cfg.cpu = cpu.into();
    cfg.smp = smp;
    cfg.timeout = Some(TIMEOUT);
    cfg.initrd = Some(bundle);
    let what = format!("{what} (-cpu {cpu} -smp {smp})");
    let start = Instant::now();
    let report = qemu::run(&cfg, |_| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!(
        "boot {what}: {:?} guest={:?} in {:.1} s",
        report.outcome,
        report.guest,
        start.elapsed().as_secs_f64()
    );
    Run { what, report }
}

fn test_guest_bundle(name: &str, append: &str, timeout_secs: u32) -> PathBuf {
    let mut spec = xtask::bundle::GuestSpec::new(guest_image().clone());
    spec.append = append.into();
    spec.timeout_secs = timeout_secs;
    let out = xtask::build::workspace_root()
        .join("target/guest-bundle/tests")
        .join(format!("{name}.bin"));
    xtask::bundle::write(&spec, &out).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The test guest's interrupt checks (`tests/guest/src/irq.rs`).
const IRQ_CHECKS: usize = 8;

fn check_test_guest(cpu: &str, smp: u32) {
    let bundle = test_guest_bundle(&format!("ok-{cpu}-{smp}"), "", GUEST_TIMEOUT_SECS);
    let r = boot("test guest", cpu, smp, bundle);
    let status = r.assert_guest_end(ExitReason::GuestExit);
    assert_eq!(status, 0, "{}: guest status\n{}", r.what, r.transcript());
    assert!(
        r.has("guest 0: guest-status: 0"),
        "{}\n{}",
        r.what,
        r.transcript()
    );
    assert_eq!(r.report.exit_code(), 0);
    // PSCI went through the VMM: the version, and CPU_ON for every other vCPU.
    assert!(
        r.has("guest 0: psci: PSCI_VERSION -> 1.0"),
        "{}: no PSCI_VERSION line\n{}",
        r.what,
        r.transcript()
    );
    assert_eq!(
        r.count("guest 0: psci: CPU_ON cpu", "-> SUCCESS ok"),
        smp as usize - 1,
        "{}: CPU_ON lines\n{}",
        r.what,
        r.transcript()
    );
    if smp >= 3 {
        assert!(r.has("guest 0: smp: race for cpu"), "{}", r.transcript());
    }
    // Four injected aborts survived: two loads, a store, an instruction fetch.
    assert_eq!(
        r.count("guest 0: abort: ", " ok"),
        4,
        "{}: abort lines\n{}",
        r.what,
        r.transcript()
    );
    // A consistent CPU: ID_AA64PFR0_EL1 shows no SVE, and an SVE instruction and an
    // SVE register access are Undefined Instructions the guest survives (on max the
    // hardware has SVE, so this is the hypervisor's doing).
    // The PMU is absent (PMCR_EL0 is an Undefined Instruction) and the OS lock works
    // as Linux uses it (no exception; OSLSR_EL1 reads "implemented, unlocked").
    assert_eq!(
        r.count("guest 0: idregs: ", " ok"),
        5,
        "{}: idregs lines\n{}",
        r.what,
        r.transcript()
    );
    for line in [
        "guest 0: idregs: mrs PMCR_EL0 -> undefined instruction",
        "guest 0: idregs: OSLAR_EL1=0, OSLSR_EL1=0x8 (want 0x8), exception: 0 ok",
    ] {
        assert!(r.has(line), "{}: no {line:?}\n{}", r.what, r.transcript());
    }
    // The interrupt checks ran against the virtual GIC and every one passed: GIC
    // identification, SGI to self, priority mask, active state, both timers, WFI, and
    // an IPI round trip with every other vCPU (its set-up and the IPIs).
    assert_eq!(
        r.count("guest 0: irq: ", " ok"),
        IRQ_CHECKS + 2 * (smp as usize - 1),
        "{}: irq lines\n{}",
        r.what,
        r.transcript()
    );
    if cpu == "max" {
        assert!(
            r.has("SVE=0 (want 0 under the hypervisor) ok"),
            "{}: no SVE=0 line\n{}",
            r.what,
            r.transcript()
        );
    }
}

#[test]
fn test_guest_cortex_a53() {
    check_test_guest("cortex-a53", 1);
    check_test_guest("cortex-a53", 4);
}

#[test]
fn test_guest_cortex_a57() {
    check_test_guest("cortex-a57", 1);
    check_test_guest("cortex-a57", 4);
}

#[test]
fn test_guest_cortex_a72() {
    check_test_guest("cortex-a72", 1);
    check_test_guest("cortex-a72", 4);
}

#[test]
fn test_guest_max() {
    check_test_guest("max", 1);
    check_test_guest("max", 4);
}

#[test]
fn a_faulting_guest_fails_and_the_host_carries_on() {
    let r = boot(
        "faulting guest",
        "cortex-a57",
        2,
        test_guest_bundle("fault", "fault", GUEST_TIMEOUT_SECS),
    );
    let status = r.assert_guest_end(ExitReason::GuestExit);
    assert_ne!(status, 0, "{}\n{}", r.what, r.transcript());
    assert!(
        r.has("guest 0: exception: unexpected"),
        "{}",
        r.transcript()
    );
    assert_ne!(r.report.exit_code(), 0);
}

#[test]
fn a_spinning_guest_is_stopped_by_the_timeout() {
    let r = boot(
        "spinning guest",
        "cortex-a53",
        2,
        test_guest_bundle("spin", "spin", 4),
    );
    let status = r.assert_guest_end(ExitReason::Timeout);
    assert_eq!(status, STATUS_TIMEOUT);
    assert!(
        r.has("guest 0: guest: spin: looping forever"),
        "{}",
        r.transcript()
    );
    assert!(
        r.has("guest 0: stopped by the host: no end within the 4 s time limit"),
        "{}: no clear timeout message\n{}",
        r.what,
        r.transcript()
    );
    assert_eq!(r.report.exit_code(), STATUS_TIMEOUT as u8);
}

#[test]
fn a_guest_cannot_forge_the_status_lines() {
    // Lines a status parser would take as the host's or the VMM's, a terminal escape,
    // all in the command line: the VMM prints it, and the test guest echoes it through
    // its UART (`dtb: bootargs="…"`), one console line per line break.
    let forged = "x\nhost: exit status=0\nexit status=0 reason=guest-exit\n\u{1b}[2K\n";
    let r = boot(
        "forging guest",
        "cortex-a53",
        1,
        test_guest_bundle("forge", forged, GUEST_TIMEOUT_SECS),
    );
    assert_eq!(r.assert_guest_end(ExitReason::GuestExit), 0);
    assert!(
        r.has("guest 0: host: exit status\\x3d0")
            && r.has("guest 0: exit status\\x3d0 reason=guest-exit"),
        "{}: the guest's lines, escaped\n{}",
        r.what,
        r.transcript()
    );
    let host_status = r
        .report
        .lines
        .iter()
        .filter(|l| qemu::parse_status_line(l).is_some())
        .count();
    let exit_lines = r
        .report
        .lines
        .iter()
        .filter(|l| l.starts_with("guest 0: exit status="))
        .count();
    assert_eq!(
        (host_status, exit_lines),
        (1, 1),
        "{}: only the host prints status lines\n{}",
        r.what,
        r.transcript()
    );
    assert!(
        !r.report.lines.iter().any(|l| l.contains('\u{1b}')),
        "{}: a raw escape reached the console\n{}",
        r.what,
        r.transcript()
    );
}

/// A guest Image header: magic, text_offset, image_size.
fn image_header(text_offset: u64, image_size: u64, len: usize) -> Vec<u8> {
    let mut k = vec![0u8; len];
    k[8..16].copy_from_slice(&text_offset.to_le_bytes());
    k[16..24].copy_from_slice(&image_size.to_le_bytes());
    k[0x38..0x3c].copy_from_slice(b"ARM\x64");
    k
}

fn check_refused(name: &str, bundle: Vec<u8>, message: &str) {
    let r = boot(name, "cortex-a53", 1, bundle_file(name, &bundle));
    let status = r.assert_guest_end(ExitReason::Error);
    assert_eq!(status, STATUS_ERROR);
    assert!(
        r.report
            .lines
            .iter()
            .any(|l| l.starts_with("guest 0: refused: ") && l.contains(message)),
        "{}: want a `guest 0: refused: …{message}…` line\n{}",
        r.what,
        r.transcript()
    );
    // Nothing of the guest ran: the VMM printed nothing on its behalf.
    let guest_lines = r
        .report
        .lines
        .iter()
        .filter(|l| {
            l.starts_with("guest 0: ") && !l.contains("refused") && !l.contains("exit status=")
        })
        .count();
    assert_eq!(guest_lines, 0, "{}\n{}", r.what, r.transcript());
}

#[test]
fn malformed_guest_files_are_refused_before_anything_runs() {
    // The Image header cut short (the magic is still there).
    check_refused(
        "truncated",
        raw_bundle(&image_header(0, 0x10_0000, 64)[..60], "", 64 << 20),
        "truncated",
    );
    // text_offset not 4 KiB aligned.
    check_refused(
        "bad-header",
        raw_bundle(&image_header(0x123, 0x10_0000, 4096), "", 64 << 20),
        "bad text_offset",
    );
    // image_size larger than guest RAM.
    check_refused(
        "too-large",
        raw_bundle(&image_header(0, 200 << 20, 4096), "", 64 << 20),
        "does not fit in guest RAM",
    );
    // A damaged bundle: one payload byte flipped after the checksum was computed.
    let mut damaged = raw_bundle(&image_header(0, 0x10_0000, 4096), "", 64 << 20);
    let last = damaged.len() - 1;
    damaged[last] ^= 1;
    check_refused("damaged", damaged, "checksum mismatch");
}
