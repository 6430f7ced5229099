//! An unmodified Debian arm64 Linux kernel (`cargo xtask linux-guest`: Debian's
//! `linux-image-arm64` and busybox-static) boots under the hypervisor to its `/init`,
//! which checks that every vCPU came online and that the architected timer's interrupt
//! count grows on each of them, prints its marker and verdict, and powers off:
//! 1, 2 and 4 vCPUs on `-cpu max`, 2 on cortex-a53 and cortex-a57.
//!
//! At most two QEMU machines run at once (the shared slot limiter).

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use xtask::linux::{self, CI_WORD, MARKER, PASSED};
use xtask::qemu::{self, ExitReason, Outcome, QemuConfig};

const TIMEOUT: Duration = Duration::from_secs(240);
const GUEST_TIMEOUT_SECS: u32 = 200;

/// The bundle of the Linux guest in CI mode with `smp` vCPUs, built once per count.
fn bundle(smp: u32) -> PathBuf {
    static GUEST: OnceLock<linux::LinuxGuest> = OnceLock::new();
    let root = xtask::build::workspace_root();
    let g = GUEST.get_or_init(|| {
        linux::fetch(&root).unwrap_or_else(|e| panic!("cannot fetch the Linux guest: {e}"))
    });
    let mut spec = xtask::bundle::GuestSpec::new(g.kernel.clone());
    spec.initrd = Some(g.initramfs.clone());
    spec.append = format!("{} {CI_WORD}", linux::DEFAULT_APPEND);
    spec.guest_mem = linux::DEFAULT_MEM;
    spec.timeout_secs = GUEST_TIMEOUT_SECS;
    let out = root
        .join("target/guest-bundle/tests")
        .join(format!("linux-{smp}.bin"));
    xtask::bundle::write(&spec, &out).unwrap_or_else(|e| panic!("bundle: {e}"))
}

fn boots_to_init(cpu: &str, smp: u32) {
    let bundle = bundle(smp);
    let _slot = xtask::qemu::QemuSlot::take();
    let mut cfg = QemuConfig::new(boot_tests::image().clone());
    cfg.cpu = cpu.into();
    cfg.smp = smp;
    cfg.timeout = Some(TIMEOUT);
    cfg.initrd = Some(bundle);
    let start = Instant::now();
    let r = qemu::run(&cfg, |_| {}).unwrap_or_else(|e| panic!("linux -cpu {cpu}: {e}"));
    let t = r.lines.join("\n");
    eprintln!(
        "linux under the hyp, -cpu {cpu} -smp {smp}: {:?} {:?} in {:.1} s",
        r.outcome,
        r.guest,
        start.elapsed().as_secs_f64()
    );
    assert_eq!(r.outcome, Outcome::Status(0), "-cpu {cpu} -smp {smp}\n{t}");
    let g = r.guest.unwrap_or_else(|| panic!("no guest exit line\n{t}"));
    assert_eq!(
        (g.reason, g.status),
        (ExitReason::SystemOff, 0),
        "Linux powers off from /init\n{t}"
    );
    let want = format!("guest 0: {MARKER}: cpus={smp} online=");
    assert!(
        r.lines.iter().any(|l| l.starts_with(&want)),
        "no {want:?}\n{t}"
    );
    assert!(
        r.lines.iter().any(|l| l == &format!("guest 0: {PASSED}")),
        "/init's checks (all vCPUs online, timer interrupts on each) did not pass\n{t}"
    );
}

#[test]
fn linux_max_1_vcpu() {
    boots_to_init("max", 1);
}

#[test]
fn linux_max_2_vcpus() {
    boots_to_init("max", 2);
}

#[test]
fn linux_max_4_vcpus() {
    boots_to_init("max", 4);
}

#[test]
fn linux_cortex_a53_2_vcpus() {
    boots_to_init("cortex-a53", 2);
}

#[test]
fn linux_cortex_a57_2_vcpus() {
    boots_to_init("cortex-a57", 2);
}
