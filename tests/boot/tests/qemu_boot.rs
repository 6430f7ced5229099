//! Boots the host under QEMU for each supported CPU model with 1 and 4 CPUs, and with a
//! bad boot argument, and checks what it reports.

use boot_tests::boot;

fn boots_with_all_cpus(cpu: &str, smp: u32) {
    let b = boot(cpu, smp, None);
    b.assert_success();
    b.assert_cpus_online(smp);
    let banner = b.lines_starting("host: el1-host");
    assert_eq!(banner.len(), 1, "{}: banner\n{}", b.what, b.transcript());
    assert!(banner[0].contains("entered at EL2"), "{}", banner[0]);
    let layout = b.lines_starting("layout: ");
    assert_eq!(layout.len(), 1, "{}", b.transcript());
    assert!(
        layout[0].contains("kimage_vaddr=0xffff800008000000"),
        "{}",
        layout[0]
    );
    assert!(
        layout[0].contains("page_offset=0xffff000000000000"),
        "{}",
        layout[0]
    );
    assert!(
        b.lines_starting("memory: ram=1024 MiB").len() == 1,
        "{}",
        b.transcript()
    );
}

macro_rules! model_tests {
    ($($name:ident: $cpu:literal, $smp:literal;)*) => {
        $(
            #[test]
            fn $name() {
                boots_with_all_cpus($cpu, $smp);
            }
        )*
    };
}

model_tests! {
    cortex_a53_smp1: "cortex-a53", 1;
    cortex_a53_smp4: "cortex-a53", 4;
    cortex_a57_smp1: "cortex-a57", 1;
    cortex_a57_smp4: "cortex-a57", 4;
    cortex_a72_smp1: "cortex-a72", 1;
    cortex_a72_smp4: "cortex-a72", 4;
    max_smp1: "max", 1;
    max_smp4: "max", 4;
}

#[test]
fn bad_loglevel_warns_and_still_boots() {
    let b = boot("cortex-a57", 2, Some("loglevel=banana"));
    b.assert_success();
    b.assert_cpus_online(2);
    let warned = b.report.lines.iter().any(|l| {
        l.contains("warn: bootargs: ignoring loglevel=banana") && l.contains("keeping info")
    });
    assert!(
        warned,
        "no warning about loglevel=banana\n{}",
        b.transcript()
    );
    // The default level (info) stayed in force.
    assert!(
        b.report.lines.iter().any(|l| l.contains("info: bootargs:")),
        "{}",
        b.transcript()
    );
}

#[test]
fn loglevel_warn_hides_info_but_not_the_status_lines() {
    let b = boot("cortex-a53", 2, Some("loglevel=warn"));
    b.assert_success();
    b.assert_cpus_online(2);
    assert!(
        !b.report.lines.iter().any(|l| l.contains("] info: ")),
        "info lines printed at loglevel=warn\n{}",
        b.transcript()
    );
}

#[test]
fn panic_prints_location_and_fails() {
    let b = boot("cortex-a72", 2, Some("host.test_fault=panic"));
    assert_eq!(
        b.report.outcome,
        xtask::qemu::Outcome::Status(1),
        "{}",
        b.transcript()
    );
    let panic = b.lines_starting("panic: ");
    assert_eq!(panic.len(), 1, "{}", b.transcript());
    assert!(panic[0].contains("el1-host/src/main.rs:"), "{}", panic[0]);
    assert!(
        b.report
            .lines
            .iter()
            .any(|l| l.contains("requested a panic")),
        "{}",
        b.transcript()
    );
    assert_eq!(b.report.exit_code(), 1);
}

#[test]
fn unexpected_exception_is_dumped_and_fails() {
    let b = boot("max", 1, Some("host.test_fault=abort"));
    assert_eq!(
        b.report.outcome,
        xtask::qemu::Outcome::Status(2),
        "{}",
        b.transcript()
    );
    let exc = b.lines_starting("exception: sync EL1h");
    assert_eq!(exc.len(), 1, "{}", b.transcript());
    // A data abort from the current EL (EC 0x25) at address 0.
    assert!(
        exc[0].contains("(ec=0x25)") && exc[0].contains("far=0x0 "),
        "{}",
        exc[0]
    );
    assert_eq!(b.lines_starting("  x0 ").len(), 1, "{}", b.transcript());
}
