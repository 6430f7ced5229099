//! Boots the host under QEMU for each supported CPU model with 1 and 4 CPUs, with
//! `arm64.nolse` and an invalid ID-register override, and with bad boot arguments, and
//! checks what it reports: per-CPU and final caps, the host's alternatives passes and its
//! self-tests of the patched paths.

use boot_tests::{boot, Boot};
use std::collections::BTreeSet;

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
    check_caps_and_alternatives(&b, cpu, smp, Lse::AsModel);
}

/// Whether `arm64.nolse` was given.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lse {
    AsModel,
    Disabled,
}

/// The `cpucaps:`, `alternatives: image=host` and host `selftest:` lines of a boot of
/// `cpu` with `smp` CPUs.
fn check_caps_and_alternatives(b: &Boot, cpu: &str, smp: u32, lse: Lse) {
    let model = models::model(cpu);
    let t = b.transcript();
    // One line per CPU, each CPU once, with the model's MIDR and per-CPU caps.
    let lines = b.lines_starting("cpucaps: cpu=");
    assert_eq!(lines.len(), smp as usize, "{}: cpucaps lines\n{t}", b.what);
    let mut seen = vec![false; smp as usize];
    for l in &lines {
        let c = CpuLine::parse(l).unwrap_or_else(|| panic!("{}: bad line `{l}`", b.what));
        assert!(c.cpu < smp as usize, "{}: `{l}`", b.what);
        assert!(!seen[c.cpu], "{}: cpu={} printed twice\n{t}", b.what, c.cpu);
        seen[c.cpu] = true;
        assert_eq!(c.midr, model.midr, "{}: `{l}`", b.what);
        for cap in model.cpu_caps {
            let want = !(lse == Lse::Disabled && *cap == "HAS_LSE_ATOMICS");
            assert_eq!(c.caps.contains(cap), want, "{}: {cap} in `{l}`", b.what);
        }
        // QEMU's CPUs are identical, so each one alone has exactly the final set.
        assert_eq!(c.caps, expected_final(&model, lse), "{}: `{l}`", b.what);
    }
    // The final set is exactly the model's (the sets shared/tests/cpucaps_qemu_models.rs
    // asserts), minus LSE under arm64.nolse.
    let fin = b.lines_starting("cpucaps: final=");
    assert_eq!(fin.len(), 1, "{}\n{t}", b.what);
    let got: BTreeSet<&str> = fin[0]["cpucaps: final=".len()..].split(',').collect();
    assert_eq!(got, expected_final(&model, lse), "{}: `{}`", b.what, fin[0]);
    // Both host passes ran and applied something; the counts are consistent.
    for pass in ["boot", "system"] {
        let key = format!("alternatives: image=host pass={pass} ");
        let l = b.lines_starting(&key);
        assert_eq!(l.len(), 1, "{}: `{key}`\n{t}", b.what);
        let entries = field(l[0], "entries");
        let applied = field(l[0], "applied");
        let callbacks = field(l[0], "callbacks");
        assert!(applied > 0, "{}: `{}`", b.what, l[0]);
        assert!(
            callbacks <= applied && applied <= entries,
            "{}: `{}`",
            b.what,
            l[0]
        );
    }
    // The boot pass comes after the boot CPU's detection and before any secondary's.
    let lines = &b.report.lines;
    let boot_pass = lines
        .iter()
        .position(|l| l.starts_with("alternatives: image=host pass=boot"));
    for (i, l) in lines.iter().enumerate() {
        if let Some(c) = CpuLine::parse(l) {
            let before = Some(i) < boot_pass;
            assert_eq!(
                before,
                c.cpu == 0,
                "{}: `{l}` vs the boot pass\n{t}",
                b.what
            );
        }
    }
    let expect_impl = if model.final_caps.contains(&"HAS_LSE_ATOMICS") && lse == Lse::AsModel {
        "lse"
    } else {
        "llsc"
    };
    let atomics = format!("selftest: host-atomics ok ({expect_impl}) cpus={smp}");
    assert_eq!(
        b.lines_starting(&atomics).len(),
        1,
        "{}: `{atomics}`\n{t}",
        b.what
    );
    for ok in [
        "selftest: host-alternatives ok",
        "selftest: host-text-ro ok",
    ] {
        assert_eq!(b.lines_starting(ok).len(), 1, "{}: `{ok}`\n{t}", b.what);
    }
    assert!(
        !b.report
            .lines
            .iter()
            .any(|l| l.starts_with("selftest:") && l.contains(" FAILED")),
        "{}: a self-test failed\n{t}",
        b.what
    );
}

/// The model's final cap set, without LSE under `arm64.nolse`.
fn expected_final(model: &models::Model, lse: Lse) -> BTreeSet<&'static str> {
    let mut want: BTreeSet<&str> = model.final_caps.iter().copied().collect();
    if lse == Lse::Disabled {
        want.remove("HAS_LSE_ATOMICS");
    }
    want
}

/// The decimal value of `key=<n>` in `line`.
fn field(line: &str, key: &str) -> u64 {
    let at = line
        .find(&format!(" {key}="))
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"));
    line[at + key.len() + 2..]
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{key}= is not a number in `{line}`"))
}

/// One `cpucaps: cpu=<n> midr=<hex> caps=<names>` line.
struct CpuLine<'a> {
    cpu: usize,
    midr: u64,
    caps: BTreeSet<&'a str>,
}

impl<'a> CpuLine<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let rest = line.strip_prefix("cpucaps: cpu=")?;
        let (cpu, rest) = rest.split_once(" midr=0x")?;
        let (midr, caps) = rest.split_once(" caps=")?;
        Some(Self {
            cpu: cpu.parse().ok()?,
            midr: u64::from_str_radix(midr, 16).ok()?,
            caps: caps.split(',').collect(),
        })
    }
}

/// What each QEMU 7.2 model reports (QEMU-ID-REGISTERS.md) and the caps Linux derives
/// (the names and sets of shared/tests/cpucaps_qemu_models.rs; `max` runs with
/// `pauth-impdef=on`).
mod models {
    pub struct Model {
        pub midr: u64,
        /// Caps every CPU's own line must show.
        pub cpu_caps: &'static [&'static str],
        /// The exact final set.
        pub final_caps: Vec<&'static str>,
    }

    const COMMON: &[&str] = &[
        "ALWAYS_BOOT",
        "ALWAYS_SYSTEM",
        "HAS_32BIT_EL0",
        "HAS_32BIT_EL1",
        "HAS_AMU_EXTN",
        "HAS_CRC32",
        "HAS_SYSREG_GIC_CPUIF",
        "HW_DBM",
    ];

    fn with_common(extra: &[&'static str]) -> Vec<&'static str> {
        COMMON.iter().chain(extra).copied().collect()
    }

    pub fn model(cpu: &str) -> Model {
        match cpu {
            "cortex-a53" => Model {
                midr: 0x410f_d034,
                cpu_caps: &["WORKAROUND_843419", "WORKAROUND_845719"],
                final_caps: with_common(&["WORKAROUND_843419", "WORKAROUND_845719"]),
            },
            "cortex-a57" => Model {
                midr: 0x411f_d070,
                cpu_caps: &["SPECTRE_V3A", "SPECTRE_BHB", "WORKAROUND_834220"],
                final_caps: with_common(&[
                    "SPECTRE_BHB",
                    "SPECTRE_V2",
                    "SPECTRE_V3A",
                    "SPECTRE_V4",
                    "WORKAROUND_1742098",
                    "WORKAROUND_834220",
                    "WORKAROUND_DEVICE_LOAD_ACQUIRE",
                    "WORKAROUND_SPECULATIVE_AT",
                ]),
            },
            "cortex-a72" => Model {
                midr: 0x410f_d083,
                cpu_caps: &["SPECTRE_V3A", "SPECTRE_BHB"],
                final_caps: with_common(&[
                    "SPECTRE_BHB",
                    "SPECTRE_V2",
                    "SPECTRE_V3A",
                    "SPECTRE_V4",
                    "WORKAROUND_1742098",
                    "WORKAROUND_SPECULATIVE_AT",
                ]),
            },
            "max" => Model {
                midr: 0x000f_0510,
                cpu_caps: &[
                    "HAS_LSE_ATOMICS",
                    "HAS_SB",
                    "HAS_RNG",
                    "HAS_ADDRESS_AUTH_IMP_DEF",
                ],
                final_caps: with_common(&[
                    "BTI",
                    "HAS_ARMv8_4_TTL",
                    "HAS_CACHE_IDC",
                    "HAS_CNP",
                    "HAS_DCPODP",
                    "HAS_DCPOP",
                    "HAS_E0PD",
                    "HAS_LDAPR",
                    "HAS_LSE_ATOMICS",
                    "HAS_PAN",
                    "HAS_RAS_EXTN",
                    "HAS_RNG",
                    "HAS_SB",
                    "HAS_STAGE2_FWB",
                    "HAS_TLB_RANGE",
                    "SME",
                    "SPECTRE_V4",
                    "SSBS",
                    "SVE",
                    "HAS_ADDRESS_AUTH",
                    "HAS_ADDRESS_AUTH_IMP_DEF",
                    "HAS_GENERIC_AUTH",
                    "HAS_GENERIC_AUTH_IMP_DEF",
                ]),
            },
            other => panic!("no expectations for CPU model {other}"),
        }
    }
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

#[test]
fn nolse_on_max_removes_lse_and_runs_llsc() {
    let b = boot("max", 4, Some("arm64.nolse"));
    b.assert_success();
    b.assert_cpus_online(4);
    check_caps_and_alternatives(&b, "max", 4, Lse::Disabled);
    assert!(
        b.report
            .lines
            .iter()
            .any(|l| l.contains("info: cpucaps: `arm64.nolse` forces id_aa64isar0.atomic to 0x0")),
        "{}",
        b.transcript()
    );
}

#[test]
fn invalid_override_is_reported_and_changes_nothing() {
    let b = boot("max", 2, Some("id_aa64isar0.atomic=9"));
    b.assert_success();
    b.assert_cpus_online(2);
    let warned = b
        .report
        .lines
        .iter()
        .any(|l| l.contains("warn: cpucaps: `id_aa64isar0.atomic=9` ignored: unsafe override"));
    assert!(warned, "no diagnostic\n{}", b.transcript());
    // Caps exactly as without the argument: LSE stays, and the LSE path runs.
    check_caps_and_alternatives(&b, "max", 2, Lse::AsModel);
}

#[test]
fn kvm_arm_mode_none_leaves_the_hyp_out_and_protected_says_it_is_not_there_yet() {
    let none = boot("cortex-a53", 2, Some("kvm-arm.mode=none"));
    none.assert_success();
    assert_eq!(
        none.lines_starting("hyp: kvm-arm.mode=none: the hyp is not installed")
            .len(),
        1,
        "{}",
        none.transcript()
    );
    assert!(
        none.lines_starting("hyp: mode=").is_empty(),
        "a hyp was installed with kvm-arm.mode=none\n{}",
        none.transcript()
    );

    let protected = boot("cortex-a53", 2, Some("kvm-arm.mode=protected"));
    protected.assert_success();
    assert!(
        protected
            .report
            .lines
            .iter()
            .any(|l| l.contains("warn: hyp: kvm-arm.mode=protected is not implemented yet")),
        "{}",
        protected.transcript()
    );
}
