//! Cap detection, sanitisation, finalisation and late-CPU checks on the exact ID registers
//! QEMU 7.2 reports for its CPU models (QEMU-ID-REGISTERS.md; GICv3 board).

use proptest::prelude::*;
use shared::cpucaps::{
    detect, fields, BootArgs, BootCpu, Cap, CapSet, ConflictKind, DiagnosticKind, FinalCaps,
    IdRegs, Platform, Scopes, SoftwareInputs,
};

/// Read with `mrs` at EL2 on `qemu-system-aarch64 -M virt,virtualization=on,gic-version=3`.
const DUMP: &str = "
== cortex-a53
midr_el1=0x00000000410fd034
revidr_el1=0x0000000000000000
ctr_el0=0x0000000084448004
clidr_el1=0x000000000a200023
id_aa64pfr0_el1=0x0000000001000222
id_aa64pfr1_el1=0x0000000000000000
id_aa64isar0_el1=0x0000000000011120
id_aa64isar1_el1=0x0000000000000000
s3_0_c0_c6_2=0x0000000000000000
id_aa64mmfr0_el1=0x0000000000001122
id_aa64mmfr1_el1=0x0000000000000000
id_aa64mmfr2_el1=0x0000000000000000
id_aa64dfr0_el1=0x0000000010305106
== cortex-a57
midr_el1=0x00000000411fd070
revidr_el1=0x0000000000000000
ctr_el0=0x000000008444c004
clidr_el1=0x000000000a200023
id_aa64pfr0_el1=0x0000000001000222
id_aa64pfr1_el1=0x0000000000000000
id_aa64isar0_el1=0x0000000000011120
id_aa64isar1_el1=0x0000000000000000
s3_0_c0_c6_2=0x0000000000000000
id_aa64mmfr0_el1=0x0000000000001124
id_aa64mmfr1_el1=0x0000000000000000
id_aa64mmfr2_el1=0x0000000000000000
id_aa64dfr0_el1=0x0000000010305106
== cortex-a72
midr_el1=0x00000000410fd083
revidr_el1=0x0000000000000000
ctr_el0=0x000000008444c004
clidr_el1=0x000000000a200023
id_aa64pfr0_el1=0x0000000001000222
id_aa64pfr1_el1=0x0000000000000000
id_aa64isar0_el1=0x0000000000011120
id_aa64isar1_el1=0x0000000000000000
s3_0_c0_c6_2=0x0000000000000000
id_aa64mmfr0_el1=0x0000000000001124
id_aa64mmfr1_el1=0x0000000000000000
id_aa64mmfr2_el1=0x0000000000000000
id_aa64dfr0_el1=0x0000000010305106
== max
midr_el1=0x00000000000f0510
revidr_el1=0x0000000000000000
ctr_el0=0x000000008444c004
clidr_el1=0x0000000002000023
id_aa64pfr0_el1=0x1201001121110222
id_aa64pfr1_el1=0x0000000001000021
id_aa64isar0_el1=0x1221111110212120
id_aa64isar1_el1=0x0011111101211012
s3_0_c0_c6_2=0x0000000000000000
id_aa64mmfr0_el1=0x0000032310201126
id_aa64mmfr1_el1=0x0000011010211122
id_aa64mmfr2_el1=0x1021011010011011
id_aa64dfr0_el1=0x0000000010305609
== max,pauth-impdef=on
midr_el1=0x00000000000f0510
revidr_el1=0x0000000000000000
ctr_el0=0x000000008444c004
clidr_el1=0x0000000002000023
id_aa64pfr0_el1=0x1201001121110222
id_aa64pfr1_el1=0x0000000001000021
id_aa64isar0_el1=0x1221111110212120
id_aa64isar1_el1=0x0011111110211102
s3_0_c0_c6_2=0x0000000000000000
id_aa64mmfr0_el1=0x0000032310201126
id_aa64mmfr1_el1=0x0000011010211122
id_aa64mmfr2_el1=0x1021011010011011
id_aa64dfr0_el1=0x0000000010305609
";

fn model(name: &str) -> IdRegs {
    let header = format!("== {name}\n");
    let start = DUMP
        .find(&header)
        .unwrap_or_else(|| panic!("no model {name}"))
        + header.len();
    let block = DUMP[start..].split("==").next().unwrap();
    IdRegs::from_dump(block).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn a53() -> IdRegs {
    model("cortex-a53")
}
fn a57() -> IdRegs {
    model("cortex-a57")
}
fn a72() -> IdRegs {
    model("cortex-a72")
}
fn max() -> IdRegs {
    model("max")
}
fn max_impdef() -> IdRegs {
    model("max,pauth-impdef=on")
}

/// Boots `boot`, brings up `secondaries` (all must be accepted) and finalises.
fn system(cmdline: &str, boot: &IdRegs, secondaries: &[IdRegs]) -> FinalCaps {
    let mut args = BootArgs::parse(cmdline);
    let mut bringup = BootCpu::new(boot, &mut args, Platform::NVHE_QEMU).start_secondaries();
    for (i, cpu) in secondaries.iter().enumerate() {
        if let Err(e) = bringup.add_secondary(cpu) {
            panic!("secondary {i} rejected: {e}");
        }
    }
    bringup.finalize()
}

const COMMON: &[Cap] = &[
    Cap::AlwaysBoot,
    Cap::AlwaysSystem,
    Cap::Has32bitEl0,
    Cap::Has32bitEl1,
    Cap::HasAmuExtn,
    Cap::HasCrc32,
    Cap::HasSysregGicCpuif,
    Cap::HwDbm,
];

fn with_common(extra: &[Cap]) -> CapSet {
    CapSet::of(COMMON).union(CapSet::of(extra))
}

fn expected_a53() -> CapSet {
    with_common(&[Cap::Workaround843419, Cap::Workaround845719])
}

fn expected_a57() -> CapSet {
    with_common(&[
        Cap::SpectreBhb,
        Cap::SpectreV2,
        Cap::SpectreV3a,
        Cap::SpectreV4,
        Cap::Workaround1742098,
        Cap::Workaround834220,
        Cap::WorkaroundDeviceLoadAcquire,
        Cap::WorkaroundSpeculativeAt,
    ])
}

fn expected_a72() -> CapSet {
    with_common(&[
        Cap::SpectreBhb,
        Cap::SpectreV2,
        Cap::SpectreV3a,
        Cap::SpectreV4,
        Cap::Workaround1742098,
        Cap::WorkaroundSpeculativeAt,
    ])
}

/// `max` without the pointer-auth caps (which differ between the two max variants).
fn expected_max_base() -> CapSet {
    with_common(&[
        Cap::Bti,
        Cap::HasArmv84Ttl,
        Cap::HasCacheIdc,
        Cap::HasCnp,
        Cap::HasDcpodp,
        Cap::HasDcpop,
        Cap::HasE0pd,
        Cap::HasLdapr,
        Cap::HasLseAtomics,
        Cap::HasPan,
        Cap::HasRasExtn,
        Cap::HasRng,
        Cap::HasSb,
        Cap::HasStage2Fwb,
        Cap::HasTlbRange,
        Cap::Sme,
        Cap::SpectreV4,
        Cap::Ssbs,
        Cap::Sve,
    ])
}

fn expected_max() -> CapSet {
    expected_max_base().union(CapSet::of(&[
        Cap::HasAddressAuth,
        Cap::HasAddressAuthArchQarma5,
        Cap::HasGenericAuth,
        Cap::HasGenericAuthArchQarma5,
    ]))
}

fn expected_max_impdef() -> CapSet {
    expected_max_base().union(CapSet::of(&[
        Cap::HasAddressAuth,
        Cap::HasAddressAuthImpDef,
        Cap::HasGenericAuth,
        Cap::HasGenericAuthImpDef,
    ]))
}

#[test]
fn single_cpu_models_give_the_linux_cap_sets_and_ctr() {
    let cases = [
        ("cortex-a53", a53(), expected_a53(), 0x8444_8004u64),
        ("cortex-a57", a57(), expected_a57(), 0x8444_c004),
        ("cortex-a72", a72(), expected_a72(), 0x8444_c004),
        ("max", max(), expected_max(), 0x9444_c004),
        (
            "max,pauth-impdef=on",
            max_impdef(),
            expected_max_impdef(),
            0x9444_c004,
        ),
    ];
    for (name, regs, expected, ctr) in cases {
        let f = system("", &regs, &[]);
        println!(
            "{name}: final={} ctr_el0={:#x}",
            f.caps(),
            f.sanitised_ctr_el0()
        );
        assert_eq!(f.caps(), expected, "{name}: got {}", f.caps());
        assert_eq!(f.sanitised_ctr_el0(), ctr, "{name}");
        // The pure per-scope function agrees with the staged pipeline on one CPU: CPU
        // registers for BOOT/LOCAL caps, sanitised ones for SYSTEM caps.
        let sw = SoftwareInputs::default();
        let sanitised = shared::cpucaps::sanitise(&[regs]).unwrap();
        let pure = detect(&regs, &sw, Scopes::BOOT_CPU | Scopes::LOCAL_CPU).union(detect(
            &sanitised,
            &sw,
            Scopes::SYSTEM,
        ));
        assert_eq!(pure, expected, "{name}");
        // Two identical CPUs give the same result as one.
        assert_eq!(system("", &regs, &[regs]).caps(), expected, "{name} x2");
    }
}

#[test]
fn gicv2_board_has_no_gic_sysreg_cap() {
    let mut regs = max();
    regs.set_field_raw(&fields::PFR0_GIC, 0);
    let f = system("", &regs, &[]);
    assert_eq!(f.caps(), expected_max().without(Cap::HasSysregGicCpuif));
}

#[test]
fn nolse_removes_lse_atomics_only() {
    let f = system("console=ttyAMA0 arm64.nolse loglevel=7", &max(), &[]);
    assert_eq!(f.caps(), expected_max().without(Cap::HasLseAtomics));
    assert_eq!(f.sanitised().field(&fields::ISAR0_ATOMIC), 0);
}

#[test]
fn nopauth_removes_both_auth_caps() {
    for (name, regs) in [("max", max()), ("max,pauth-impdef=on", max_impdef())] {
        let f = system("arm64.nopauth", &regs, &[]);
        assert_eq!(f.caps(), expected_max_base(), "{name}");
        assert!(!f.has(Cap::HasAddressAuth) && !f.has(Cap::HasGenericAuth));
    }
}

#[test]
fn protected_mode_sets_the_cap_and_clears_vh() {
    let f = system("kvm-arm.mode=protected", &max(), &[]);
    assert_eq!(f.caps(), expected_max().with(Cap::KvmProtectedMode));
    assert_eq!(f.sanitised().field(&fields::MMFR1_VH), 0);
    let n = system("kvm-arm.mode=nvhe", &max(), &[]);
    assert_eq!(n.caps(), expected_max());
    assert_eq!(n.sanitised().field(&fields::MMFR1_VH), 0);
    assert_eq!(
        system("", &max(), &[]).sanitised().field(&fields::MMFR1_VH),
        1
    );
}

#[test]
fn invalid_overrides_change_nothing_and_are_reported() {
    let line = "id_aa64isar0.atomic=3 id_aa64isar1.apa=2 id_aa64mmfr1.vh=0x10 \
                id_aa64zzz0.x=1 id_aa64pfr0.nosuch=0 id_aa64pfr1.bt=two arm64.nothing \
                kvm-arm.mode=vhe foo.bar=1 quiet";
    let mut args = BootArgs::parse(line);
    let boot = BootCpu::new(&max(), &mut args, Platform::NVHE_QEMU);
    let f = boot.start_secondaries().finalize();
    assert_eq!(f.caps(), expected_max());
    assert_eq!(*f.sanitised(), *system("", &max(), &[]).sanitised());
    let diags: Vec<_> = args.diagnostics().iter().copied().collect();
    let tokens: Vec<_> = diags.iter().map(|d| d.token).collect();
    assert_eq!(
        tokens,
        [
            "id_aa64mmfr1.vh=0x10",
            "id_aa64zzz0.x=1",
            "id_aa64pfr0.nosuch=0",
            "id_aa64pfr1.bt=two",
            "arm64.nothing",
            "kvm-arm.mode=vhe",
            // Unsafe overrides are found when checked against the boot CPU, after parsing.
            "id_aa64isar0.atomic=3",
            "id_aa64isar1.apa=2",
        ]
    );
    assert!(matches!(
        diags[6].kind,
        DiagnosticKind::Unsafe {
            current: 2,
            requested: 3,
            ..
        }
    ));
    assert!(matches!(
        diags[7].kind,
        DiagnosticKind::Unsafe {
            current: 1,
            requested: 2,
            ..
        }
    ));
    for d in &diags {
        let text = d.to_string();
        assert!(text.contains(d.token), "{text}");
    }
}

#[test]
fn max_boot_with_a53_secondary_is_refused_on_boot_caps() {
    let mut args = BootArgs::parse("");
    let mut s = BootCpu::new(&max(), &mut args, Platform::NVHE_QEMU).start_secondaries();
    let err = s.add_secondary(&a53()).unwrap_err();
    println!("max boot + a53 secondary: {err}");
    let boot_mismatch = ConflictKind::BootCapMismatch {
        system_has: true,
        cpu_has: false,
    };
    let got: Vec<_> = err.iter().map(|c| (c.cap, c.kind, c.fatal)).collect();
    assert_eq!(
        got,
        [
            (Cap::Bti, boot_mismatch, true),
            (Cap::HasAddressAuth, boot_mismatch, false),
            (Cap::HasAddressAuthArchQarma5, boot_mismatch, false),
        ]
    );
    assert_eq!(s.cpus(), 1);
    assert_eq!(s.finalize().caps(), expected_max());
}

#[test]
fn mixed_max_and_a53_sanitise_to_the_intersection() {
    let f = system("arm64.nobti arm64.nopauth", &max(), &[a53()]);
    println!(
        "max + a53 (nobti nopauth): final={} ctr_el0={:#x}",
        f.caps(),
        f.sanitised_ctr_el0()
    );
    let expected = CapSet::of(COMMON).union(CapSet::of(&[
        Cap::SpectreV4,        // local: the max CPU is affected
        Cap::Workaround843419, // local: the A53
        Cap::Workaround845719,
    ]));
    assert_eq!(f.caps(), expected, "got {}", f.caps());
    let s = f.sanitised();
    for (field, value) in [
        (fields::ISAR0_ATOMIC, 0),
        (fields::ISAR0_RNDR, 0),
        (fields::ISAR1_SB, 0),
        (fields::PFR1_SSBS, 0),
        (fields::ISAR0_AES, 2),
        (fields::ISAR0_CRC32, 1),
        (fields::MMFR0_PARANGE, 2),
        (fields::DFR0_DEBUGVER, 6), // exact field, CPUs differ: safe value
        (fields::DFR0_PMUVER, 0),
        (fields::PFR0_GIC, 1),
    ] {
        assert_eq!(s.field(&field), value, "{}", field.qualified());
    }
    // No effective IDC on the A53, VIPT L1I on the A53.
    assert_eq!(f.sanitised_ctr_el0(), 0x8444_8004);
    assert_eq!(f.cpus(), 2);
}

#[test]
fn late_a53_on_a_max_system_lists_every_conflict() {
    let f = system("", &max(), &[]);
    let err = f.check_late_cpu(&a53()).unwrap_err();
    println!("late a53 on max: {err}");
    let boot_mismatch = ConflictKind::BootCapMismatch {
        system_has: true,
        cpu_has: false,
    };
    let mut expected = vec![
        (Cap::Bti, boot_mismatch),
        (Cap::HasAddressAuth, boot_mismatch),
        (Cap::HasAddressAuthArchQarma5, boot_mismatch),
    ];
    for cap in [
        Cap::HasArmv84Ttl,
        Cap::HasCacheIdc,
        Cap::HasCnp,
        Cap::HasDcpodp,
        Cap::HasDcpop,
        Cap::HasE0pd,
        Cap::HasGenericAuthArchQarma5,
        Cap::HasLdapr,
        Cap::HasLseAtomics,
        Cap::HasPan,
        Cap::HasRasExtn,
        Cap::HasRng,
        Cap::HasSb,
        Cap::HasStage2Fwb,
        Cap::HasTlbRange,
        Cap::Sme,
        Cap::Ssbs,
        Cap::Sve,
    ] {
        expected.push((cap, ConflictKind::MissingRequired));
    }
    expected.push((Cap::Workaround843419, ConflictKind::NotPermitted));
    expected.push((Cap::Workaround845719, ConflictKind::NotPermitted));
    expected.sort_by_key(|(c, _)| c.number());
    let got: Vec<_> = err.iter().map(|c| (c.cap, c.kind)).collect();
    assert_eq!(got, expected);
    assert!(err.is_fatal());
    // SPECTRE_V4 is an erratum: a late CPU may lack it.
    assert!(err.reason(Cap::SpectreV4).is_none());
    let text = err.to_string();
    assert!(
        text.contains("WORKAROUND_845719: this CPU has it, the system does not"),
        "{text}"
    );
    assert!(
        text.contains("HAS_LSE_ATOMICS: the system has it, this CPU lacks it"),
        "{text}"
    );
    // The same CPU model is accepted.
    assert_eq!(f.check_late_cpu(&max()), Ok(()));
}

#[test]
fn late_max_on_an_a53_system_follows_each_caps_policy() {
    let f = system("", &a53(), &[a53()]);
    assert_eq!(f.caps(), expected_a53());
    let err = f.check_late_cpu(&max()).unwrap_err();
    println!("late max on a53: {err}");
    let got: Vec<_> = err.iter().map(|c| (c.cap, c.kind, c.fatal)).collect();
    assert_eq!(
        got,
        [
            // Strict boot cap: a late CPU may not bring it.
            (
                Cap::Bti,
                ConflictKind::BootCapMismatch {
                    system_has: false,
                    cpu_has: true
                },
                true
            ),
            // New erratum the system never patched for.
            (Cap::SpectreV4, ConflictKind::NotPermitted, false),
        ]
    );
    // Everything else max adds (LSE, SVE, pointer auth, ...) is permitted, and the A53
    // errata max lacks are optional.
    let without_bti = {
        let mut r = max();
        r.set_field_raw(&fields::PFR1_BT, 0);
        r
    };
    let err = f.check_late_cpu(&without_bti).unwrap_err();
    assert_eq!(err.caps(), CapSet::of(&[Cap::SpectreV4]));
    assert!(!err.is_fatal());
}

#[test]
fn a57_and_a72_mix() {
    let f = system("", &a57(), &[a72()]);
    assert_eq!(f.caps(), expected_a57());
    assert_eq!(f.sanitised_ctr_el0(), 0x8444_c004);
    assert_eq!(f.spectre_bhb_loop_k(), 8);
    // The other way round the A57's errata come in as LOCAL caps of the secondary.
    let g = system("", &a72(), &[a57()]);
    assert_eq!(g.caps(), expected_a57());
    assert_eq!(*g.sanitised(), *f.sanitised());
    // Late CPUs: an A72 may join the A57 system; an A57 may not join an A72-only one.
    assert_eq!(f.check_late_cpu(&a72()), Ok(()));
    let a72_only = system("", &a72(), &[]);
    let err = a72_only.check_late_cpu(&a57()).unwrap_err();
    let got: Vec<_> = err.iter().map(|c| (c.cap, c.kind)).collect();
    assert_eq!(
        got,
        [
            (Cap::Workaround834220, ConflictKind::NotPermitted),
            (Cap::WorkaroundDeviceLoadAcquire, ConflictKind::NotPermitted),
        ]
    );
}

#[test]
fn masks_partition_the_caps() {
    let f = system("", &max(), &[]);
    let boot = CapSet::of(&[
        Cap::AlwaysBoot,
        Cap::Bti,
        Cap::HasAddressAuth,
        Cap::HasAddressAuthArchQarma5,
        Cap::HasSysregGicCpuif,
    ]);
    assert_eq!(f.boot_mask(), boot);
    assert_eq!(f.system_mask().intersection(f.boot_mask()), CapSet::EMPTY);
    assert_eq!(f.system_mask().union(f.boot_mask()), CapSet::all());
    assert_eq!(f.spectre_bhb_loop_k(), 0);
}

fn models() -> [IdRegs; 5] {
    [a53(), a57(), a72(), max(), max_impdef()]
}

proptest! {
    // Integration tests have no lib.rs beside them to store regressions next to.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Sanitisation does not depend on the order CPUs come up in.
    #[test]
    fn sanitised_registers_are_order_independent(
        picks in proptest::collection::vec(0usize..5, 1..6),
        rotate in 0usize..6,
    ) {
        let all = models();
        let cpus: Vec<IdRegs> = picks.iter().map(|&i| all[i]).collect();
        let mut rotated = cpus.clone();
        let len = rotated.len();
        rotated.rotate_left(rotate % len);
        prop_assert_eq!(shared::cpucaps::sanitise(&cpus), shared::cpucaps::sanitise(&rotated));
        let mut rev = cpus.clone();
        rev.reverse();
        prop_assert_eq!(
            shared::cpucaps::sanitised_ctr_el0(&cpus),
            shared::cpucaps::sanitised_ctr_el0(&rev)
        );
    }

    /// A system's SYSTEM caps never exceed those of any single CPU in it.
    #[test]
    fn system_caps_are_within_each_cpu(picks in proptest::collection::vec(0usize..3, 1..5)) {
        // A53/A57/A72 only: they share every boot-scope cap, so none is refused.
        let all = models();
        let cpus: Vec<IdRegs> = picks.iter().map(|&i| all[i]).collect();
        let f = system("", &cpus[0], &cpus[1..]);
        let sw = SoftwareInputs::default();
        for cpu in &cpus {
            let own = detect(&shared::cpucaps::sanitise(&[*cpu]).unwrap(), &sw, Scopes::SYSTEM);
            let sys = f.caps().intersection(shared::cpucaps::caps_with_scope(Scopes::SYSTEM));
            prop_assert_eq!(sys.intersection(own), sys);
        }
    }
}
