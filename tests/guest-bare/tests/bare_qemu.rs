//! Boots the test guest directly on QEMU (EL1, QEMU's built-in PSCI over HVC, no
//! hypervisor) on every supported CPU model with 1 and 4 CPUs, at a second load
//! address, and with the benchmark hook on, and checks what it reports.

use guest_bare_tests::{boot, boot_image, image, Run};
use shared::guest_abi::{self, BENCH_EMPTY_LOOP, BENCH_MMIO_READ, BENCH_NULL_HVC};

/// The PSCI calls whose PSCI_FEATURES the guest checks.
const FEATURE_CALLS: [&str; 8] = [
    "PSCI_VERSION",
    "PSCI_FEATURES",
    "CPU_ON",
    "CPU_OFF",
    "AFFINITY_INFO",
    "MIGRATE_INFO_TYPE",
    "SYSTEM_OFF",
    "SYSTEM_RESET",
];

/// Everything a passing run of `smp` CPUs must have printed.
fn check_run(r: &Run, smp: u32) {
    r.assert_passed();
    let t = r.transcript();
    // Entry state and DTB.
    r.assert_ok("guest: entered at EL1, MMU off");
    r.assert_ok("guest: dtb at ");
    r.assert_ok("guest: image 2 MiB aligned inside RAM 0x40000000..0x48000000");
    assert_eq!(r.line("dtb: pl011="), "dtb: pl011=0x9000000 (dtb)");
    assert_eq!(r.line("dtb: psci method="), "dtb: psci method=hvc (dtb)");
    assert_eq!(r.line("dtb: cpus="), format!("dtb: cpus={smp} (dtb)"));
    // PSCI and SMCCC.
    r.assert_ok("psci: PSCI_VERSION -> 1.");
    for call in FEATURE_CALLS {
        r.assert_ok(&format!("psci: PSCI_FEATURES({call} "));
    }
    r.assert_ok("psci: PSCI_FEATURES(unknown ");
    r.assert_ok("psci: MIGRATE_INFO_TYPE -> ");
    r.assert_ok("smccc: PSCI_FEATURES(SMCCC_VERSION) -> ");
    let unknown = r.lines_starting("smccc: unknown function ");
    assert_eq!(unknown.len(), 4, "{}: unknown ids\n{t}", r.what);
    assert!(unknown
        .iter()
        .all(|l| l.ends_with("-> NOT_SUPPORTED (want NOT_SUPPORTED) ok")));
    assert_eq!(
        r.line("guest-abi: NULL_HVC"),
        "guest-abi: NULL_HVC 0x86000101 -> NOT_SUPPORTED (no hypervisor channel)"
    );
    r.assert_ok("psci: CPU_ON cpu0 (the caller itself) -> ALREADY_ON");
    r.assert_ok("psci: CPU_ON mpidr=0xff00ffffff (no such CPU) -> INVALID_PARAMETERS");
    r.assert_ok("psci: AFFINITY_INFO mpidr=0xff00ffffff (no such CPU) -> INVALID_PARAMETERS");
    r.assert_ok("psci: AFFINITY_INFO cpu0 (the caller itself) -> ON");
    // Injected aborts: three data aborts (two loads, one store), one instruction abort.
    let aborts = r.lines_starting("abort: ");
    assert_eq!(aborts.len(), 4, "{}: abort lines\n{t}", r.what);
    r.assert_ok("abort: data load hole 0xb000000: vector=4 ESR_EL1=0x96000010 EC=0x25 DFSC=0x10");
    r.assert_ok("abort: data load above RAM 0x48000000: vector=4 ESR_EL1=0x96000010 EC=0x25");
    r.assert_ok("abort: data store hole 0xb000000: vector=4 ESR_EL1=0x96000050 EC=0x25");
    r.assert_ok("abort: instruction fetch hole 0xb000000: vector=4 ESR_EL1=0x86000010 EC=0x21");
    // The interrupt checks pass on QEMU's own GICv3 too (the reference the virtual one
    // is held to).
    let irq = r.lines_starting("irq: ");
    assert_eq!(
        irq.len(),
        8 + 2 * (smp as usize - 1),
        "{}: irq lines\n{t}",
        r.what
    );
    assert!(
        irq.iter().all(|l| l.ends_with(" ok")),
        "{}: irq lines\n{t}",
        r.what
    );
    // Secondaries: each started, checked itself, and turned off.
    for i in 1..smp {
        r.assert_ok(&format!("psci: AFFINITY_INFO cpu{i} before CPU_ON -> OFF"));
        r.assert_ok(&format!(
            "psci: CPU_ON cpu{i} mpidr={i:#x} context={i:#x} -> SUCCESS"
        ));
        r.assert_ok(&format!("psci: AFFINITY_INFO cpu{i} while running -> ON"));
        r.assert_ok(&format!(
            "psci: CPU_ON cpu{i} again while it runs -> ALREADY_ON"
        ));
        let own = r
            .lines_starting(&format!("smp: cpu{i} mpidr={i:#x} (want {i:#x}) context="))
            .len();
        assert!(own >= 1, "{}: cpu{i} did not report\n{t}", r.what);
    }
    // The race, with four CPUs: one round per remaining CPU, both orders.
    let races: Vec<&str> = r
        .lines_starting("smp: race for cpu")
        .into_iter()
        .filter(|l| l.contains(" first): "))
        .collect();
    if smp >= 3 {
        assert_eq!(races.len(), smp as usize - 2, "{}: race lines\n{t}", r.what);
        assert!(races.iter().any(|l| l.contains("(boot CPU first)")), "{t}");
        assert!(races.iter().any(|l| l.contains("(racer first)")), "{t}");
    } else {
        assert!(races.is_empty(), "{t}");
        r.line("smp: CPU_ON race skipped: needs 3 CPUs");
    }
}

fn boots_and_passes(cpu: &str, smp: u32) {
    let r = boot(cpu, smp, None);
    check_run(&r, smp);
}

#[test]
fn cortex_a53_1_cpu() {
    boots_and_passes("cortex-a53", 1);
}

#[test]
fn cortex_a53_4_cpus() {
    boots_and_passes("cortex-a53", 4);
}

#[test]
fn cortex_a57_1_cpu() {
    boots_and_passes("cortex-a57", 1);
}

#[test]
fn cortex_a57_4_cpus() {
    boots_and_passes("cortex-a57", 4);
}

#[test]
fn cortex_a72_1_cpu() {
    boots_and_passes("cortex-a72", 1);
}

#[test]
fn cortex_a72_4_cpus() {
    boots_and_passes("cortex-a72", 4);
}

#[test]
fn max_1_cpu() {
    boots_and_passes("max", 1);
}

#[test]
fn max_4_cpus() {
    boots_and_passes("max", 4);
}

/// The guest relocates itself: loaded 14 MiB higher (QEMU honours a text_offset in the
/// header), it still passes and says where it runs.
#[test]
fn runs_at_another_load_address() {
    let mut img = std::fs::read(image()).expect("read the guest Image");
    let h = xtask::image::read_header(&img).expect("guest Image header");
    assert_eq!(h.text_offset, 0, "the built Image has text_offset 0");
    img[8..16].copy_from_slice(&(16u64 << 20).to_le_bytes());
    let dir = std::env::temp_dir().join(format!("guest-bare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let moved = dir.join("guest-at-16m.img");
    std::fs::write(&moved, &img).expect("write the moved Image");
    let r = boot_image(&moved, "cortex-a57", 4, None);
    let _ = std::fs::remove_dir_all(&dir);
    check_run(&r, 4);
    let banner = r.line("guest: test guest at ");
    assert!(
        banner.starts_with("guest: test guest at 0x41000000.."),
        "{}: `{banner}`",
        r.what
    );
}

/// `bench=<n>` in the boot arguments runs the three benchmarks with n iterations.
#[test]
fn bench_hook_prints_three_measurements() {
    let r = boot("cortex-a72", 1, Some("bench=300"));
    check_run(&r, 1);
    let t = r.transcript();
    let counter = r.line("bench: counter=cntvct frequency=");
    let freq: u64 = counter
        .rsplit('=')
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    assert!(freq > 0, "{}: `{counter}`", r.what);
    let lines: Vec<_> = r
        .lines
        .iter()
        .filter_map(|l| guest_abi::parse_bench_line(l))
        .collect();
    let names: Vec<&str> = lines.iter().map(|b| b.name).collect();
    assert_eq!(
        names,
        [BENCH_NULL_HVC, BENCH_MMIO_READ, BENCH_EMPTY_LOOP],
        "{t}"
    );
    for b in &lines {
        assert_eq!(b.iterations, 300, "{t}");
        assert!(b.cycles > 0, "{}: {b:?}", r.what);
    }
    let quiet = boot("cortex-a72", 1, Some("console=ttyAMA0 benchmark"));
    quiet.assert_passed();
    assert!(
        quiet.lines_starting("bench: ").is_empty(),
        "{}",
        quiet.transcript()
    );
}
