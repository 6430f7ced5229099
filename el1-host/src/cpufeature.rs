//! CPU features of the host: the arch layer's ID-register snapshots turned into caps with
//! `shared::cpucaps`, in Linux's order (LINUX-FACTS §4.2), and the one finalised cap set.
//!
//! 1. [`detect_boot_cpu`]: the boot CPU's registers, the boot arguments' overrides
//!    (diagnostics printed as warnings, the rest applied before detection), BOOT and
//!    LOCAL caps → a [`BootCpu`]; prints `cpucaps: cpu=<n> midr=… caps=…` (every cap this
//!    CPU's own registers satisfy, any scope).
//! 2. [`secondary_detect`] (on each secondary): the same line for that CPU, from its own
//!    registers with the same overrides; [`admit_secondary`] (on the boot CPU) adds it to
//!    the [`Bringup`] or reports `cpucaps: cpu=<n> rejected: <conflicts>`.
//! 3. [`finalize`]: SYSTEM caps from the sanitised registers → the one [`FinalCaps`],
//!    kept in a static readable through [`final_caps`] only after that; prints
//!    `cpucaps: final=…`.
//! 4. After the system alternatives pass: [`cpus_have_final_cap`] (panics before it) and
//!    the self-tests that compare every host check site with the final set.

use crate::arch::{cache, idregs, rng};
use crate::println;
use crate::smp::{self, MAX_CPUS};
use crate::sync::atomic::SelftestError;
use crate::sync::{AtomicsImpl, SpinLock};
use alloc::format;
use core::sync::atomic::{AtomicU8, Ordering};
use shared::alternative::{boot_capabilities_finalized, system_capabilities_finalized};
use shared::cpucaps::{
    detect, sanitise, BootArgs, BootCpu, Bringup, Cap, CapSet, FieldOverrides, FinalCaps, IdRegs,
    Platform, Scopes, SoftwareInputs,
};

/// What a secondary needs to detect its caps the way the boot CPU did: the settled
/// overrides and the software inputs.
static SECONDARY_INPUTS: SpinLock<Option<(FieldOverrides, SoftwareInputs)>> = SpinLock::new(None);

/// The finalised caps; set once by [`finalize`].
static FINAL: spin::Once<FinalCaps> = spin::Once::new();

/// Prints one CPU's line: every cap whose rule this CPU's registers (overrides applied)
/// satisfy, whatever its scope — what this CPU could offer; the `final=` line says what
/// the system as a whole uses.
fn print_cpu_line(cpu: usize, regs: &IdRegs, sw: &SoftwareInputs) {
    // SYSTEM caps read the sanitised view; for one CPU alone that is `sanitise(&[regs])`
    // (whose CTR_EL0 carries the IDC that CLIDR implies).
    let alone = sanitise(core::slice::from_ref(regs)).unwrap_or(*regs);
    let caps: CapSet = detect(regs, sw, Scopes::BOOT_CPU | Scopes::LOCAL_CPU).union(detect(
        &alone,
        sw,
        Scopes::SYSTEM,
    ));
    println!("cpucaps: cpu={cpu} midr={:#x} caps={caps}", regs.midr);
}

/// Detects the boot CPU's caps with the overrides of `cmdline` (the device tree's
/// bootargs) applied; prints its `cpucaps:` line and the diagnostics. `cpu` is its index.
pub fn detect_boot_cpu(cpu: usize, cmdline: &str) -> BootCpu {
    let raw = idregs::read_this_cpu();
    let mut args = BootArgs::parse(cmdline);
    let boot = BootCpu::new(&raw, &mut args, Platform::NVHE_QEMU);
    for d in args.diagnostics().iter() {
        log::warn!("cpucaps: {d}");
    }
    if args.diagnostics().dropped() > 0 {
        log::warn!(
            "cpucaps: {} more rejected boot arguments not listed",
            args.diagnostics().dropped()
        );
    }
    for (o, token) in args.applied() {
        log::info!(
            "cpucaps: `{token}` forces {} to {:#x}",
            o.field.qualified(),
            o.value
        );
    }
    *SECONDARY_INPUTS.lock() = Some((args.field_overrides(), *boot.software()));
    print_cpu_line(cpu, boot.regs(), boot.software());
    boot
}

/// On a secondary CPU: reads its registers, prints its `cpucaps:` line (the boot CPU's
/// overrides applied) and returns the raw registers for the boot CPU to admit.
pub fn secondary_detect(cpu: usize) -> IdRegs {
    let raw = idregs::read_this_cpu();
    let inputs = *SECONDARY_INPUTS.lock();
    let (overrides, sw) = inputs.unwrap_or_default();
    print_cpu_line(cpu, &overrides.apply(&raw), &sw);
    raw
}

/// On the boot CPU: admits secondary `cpu` into the bring-up, or reports why not.
pub fn admit_secondary(bringup: &mut Bringup, cpu: usize, raw: &IdRegs) -> bool {
    match bringup.add_secondary(raw) {
        Ok(_) => true,
        Err(conflicts) => {
            println!("cpucaps: cpu={cpu} rejected: {conflicts}");
            if conflicts.is_fatal() {
                // Linux would stop the system; the issue asks to leave the CPU out and
                // go on, which is safe because it never runs kernel code again.
                log::error!("cpucaps: cpu={cpu} conflicts on a panic-on-conflict cap; parked");
            }
            false
        }
    }
}

/// Finalises the caps of the CPUs brought up, prints `cpucaps: final=…` and keeps the
/// result for [`final_caps`].
///
/// # Panics
///
/// If called twice (there is one finalisation per boot).
pub fn finalize(bringup: Bringup) -> &'static FinalCaps {
    assert!(FINAL.get().is_none(), "cpucaps: finalised twice");
    let fin = FINAL.call_once(|| bringup.finalize());
    println!("cpucaps: final={}", fin.caps());
    log::info!(
        "cpucaps: {} CPUs, sanitised ctr_el0={:#x}",
        fin.cpus(),
        fin.sanitised_ctr_el0()
    );
    fin
}

/// The final caps.
///
/// # Panics
///
/// If called before [`finalize`].
pub fn final_caps() -> &'static FinalCaps {
    match FINAL.get() {
        Some(f) => f,
        None => panic!("cpufeature::final_caps() called before the caps were finalised"),
    }
}

/// Whether the system has `cap`, for code that runs once the system is final. Linux's
/// `cpus_have_final_cap`: it is a bug to ask before the system alternatives pass has run,
/// which is checked with the ALWAYS_SYSTEM site (`system_capabilities_finalized()`).
///
/// # Panics
///
/// If the system pass has not patched this image yet.
pub fn cpus_have_final_cap(cap: Cap) -> bool {
    if !system_capabilities_finalized() {
        panic!(
            "cpus_have_final_cap({}) called before the system alternatives pass",
            cap.name()
        );
    }
    final_caps().has(cap)
}

/// Per-CPU result of the atomics self-test: 0 not run, else [`atomics_code`].
static ATOMICS_RESULT: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];

/// The code a CPU stores for its atomics self-test result.
const fn atomics_code(r: &Result<AtomicsImpl, SelftestError>) -> u8 {
    match r {
        Ok(AtomicsImpl::LlSc) => 1,
        Ok(AtomicsImpl::Lse) => 2,
        Err(_) => 3,
    }
}

/// Runs the atomics self-test on the CPU it is called on (an `on_each_cpu` work item).
fn atomics_on_this_cpu(cpu: usize) {
    let code = atomics_code(&crate::sync::atomic::selftest());
    if let Some(slot) = ATOMICS_RESULT.get(cpu) {
        slot.store(code, Ordering::Release);
    }
}

/// The atomics self-test on every online CPU (each runs the patched sites after its own
/// ISB in the rendezvous); prints `selftest: host-atomics ok (lse|llsc) cpus=<n>`.
fn selftest_atomics() -> bool {
    let want = if cpus_have_final_cap(Cap::HasLseAtomics) {
        AtomicsImpl::Lse
    } else {
        AtomicsImpl::LlSc
    };
    smp::on_each_cpu(atomics_on_this_cpu);
    let mut cpus = 0;
    for cpu in smp::online_cpus() {
        cpus += 1;
        let code = ATOMICS_RESULT
            .get(cpu)
            .map_or(0, |s| s.load(Ordering::Acquire));
        if code != atomics_code(&Ok(want)) {
            // Say why on this CPU if it fails here too, else what the other CPU reported.
            let detail = match crate::sync::atomic::selftest() {
                Err(e) => format!("cpu{cpu}: {e}"),
                Ok(_) if code == 0 => format!("cpu{cpu} did not run the test"),
                Ok(_) if code == 3 => format!("cpu{cpu}: wrong values"),
                Ok(_) => format!(
                    "cpu{cpu} ran {} but the final caps say {}",
                    if code == 2 { "lse" } else { "llsc" },
                    want.name()
                ),
            };
            println!("selftest: host-atomics FAILED {detail}");
            return false;
        }
    }
    println!("selftest: host-atomics ok ({}) cpus={cpus}", want.name());
    true
}

/// The host's self-tests of its own alternatives, run after the system pass. Prints
/// `selftest: host-atomics …` and `selftest: host-alternatives …`; returns whether both
/// passed.
pub fn selftests() -> bool {
    let fin = final_caps();
    let atomics = selftest_atomics();
    // Each host check site against the final set (the atomics' site is checked above).
    let sites: [(&str, bool, bool); 5] = [
        ("ALWAYS_BOOT", boot_capabilities_finalized(), true),
        ("ALWAYS_SYSTEM", system_capabilities_finalized(), true),
        ("HAS_RNG", rng::rng_site(), fin.has(Cap::HasRng)),
        (
            "HAS_CACHE_IDC",
            cache::idc_site(),
            fin.has(Cap::HasCacheIdc),
        ),
        (
            "HAS_CACHE_DIC",
            cache::dic_site(),
            fin.has(Cap::HasCacheDic),
        ),
    ];
    let bad = sites.iter().find(|(_, site, want)| site != want);
    let sites_ok = match bad {
        None => {
            println!(
                "selftest: host-alternatives ok ({} check sites match the final caps)",
                sites.len()
            );
            true
        }
        Some((name, site, want)) => {
            println!(
                "selftest: host-alternatives FAILED {name}: site reads {site}, final caps say {want}"
            );
            false
        }
    };
    atomics && sites_ok
}
