//! The hyp selftests (issue 3, item 6). Each prints one `selftest: <name> ok|FAILED
//! <detail>` line; the per-CPU parts run on every CPU through `on_each_cpu` and leave
//! their raw answers in [`CpuResults`], which the boot CPU then compares:
//!
//! * `hyp-caps`: the hyp's cap-evaluation call (one alternative site per cap) returns the
//!   bitmap of FinalCaps on every CPU;
//! * `kern-hyp-va`: the hyp's patched `kern_hyp_va` of sample linear VAs equals the host's
//!   layout formula on every CPU, and a word the host wrote is what the hyp reads at that
//!   hyp VA;
//! * `hyp-constants`: kimage_voffset and CTR_EL0 from the hyp's patched immediates equal
//!   the host's values on every CPU;
//! * `hyp-abi`: unknown ids, the init id, a closed setup call and malformed addresses
//!   are refused with the right code, a host instruction that traps to EL2 without
//!   being a call (SME under CPTR_EL2.TSM, where the CPU has SME) is skipped instead of
//!   stopping the hyp, and afterwards the hyp still answers (every CPU);
//! * `hyp-vectors`: with SPECTRE_V3A every host call on every CPU entered through the
//!   hardened vectors, without it none did.

use super::install::{call, hcall};
use crate::println;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shared::cpucaps::{Cap, CapSet, FinalCaps};
use shared::hypercall::{
    decode_reply, HcallError, HcallFailure, HcallId, CAP_WORDS, HCALL_BASE, HYP_ABI_VERSION,
    NR_HCALLS,
};
use shared::va_layout::HypVaLayout;

/// What one CPU's selftest calls returned (raw; compared on the boot CPU).
#[derive(Default)]
pub struct CpuResults {
    ran: AtomicBool,
    caps_x0: AtomicU64,
    caps: [AtomicU64; CAP_WORDS],
    khv_bad: AtomicU64,
    khv_first_va: AtomicU64,
    khv_first_got: AtomicU64,
    read_x0: AtomicU64,
    read_val: AtomicU64,
    const_x0: AtomicU64,
    kimage_voffset: AtomicU64,
    ctr_el0: AtomicU64,
    abi_bad: AtomicU64,
    vec_x0: AtomicU64,
    hardened: AtomicU64,
    calls: AtomicU64,
    traps: AtomicU64,
}

/// What the per-CPU part needs to know (set once before it runs).
pub struct Expect {
    /// The host's layout, for the `kern_hyp_va` formula.
    pub layout: HypVaLayout,
    /// Linear VAs to translate.
    pub samples: Vec<u64>,
    /// Linear VA of a word the host filled with [`Expect::magic`].
    pub magic_va: u64,
    /// The value at `magic_va`.
    pub magic: u64,
}

/// The ABI checks that need no per-CPU data: each a call and the failure it must get.
/// Returns how many did not behave.
fn abi_checks(expect: &Expect) -> (u64, String) {
    let mut bad = 0;
    let mut first = String::new();
    // First, so the calls below show the hyp survived it.
    if let Some(Err(why)) = sme_trap_check() {
        first = why;
        bad += 1;
    }
    let mut check = |what: &str, x0: u64, args: [u64; 3], want: Result<u64, HcallFailure>| {
        let (r0, r) = hcall(x0, args);
        let got = decode_reply(r0, r[0]);
        if got != want {
            if bad == 0 {
                let _ = write!(first, "{what}: got {got:?}, want {want:?}");
            }
            bad += 1;
        }
    };
    let nosup = Err(HcallFailure::NotSupported);
    let inval = |e| Err(HcallFailure::InvalidParameter(Ok(e)));
    check("unknown id", HCALL_BASE | NR_HCALLS as u64, [0; 3], nosup);
    check("unknown id 0x7fff", HCALL_BASE | 0x7fff, [0; 3], nosup);
    check(
        "init id at runtime",
        HcallId::HypInit.smccc_func(),
        [0; 3],
        nosup,
    );
    check(
        "setup call after finalise",
        HcallId::GetMdcrEl2.smccc_func(),
        [0; 3],
        nosup,
    );
    let read = HcallId::HostRead64.smccc_func();
    check(
        "misaligned read",
        read,
        [expect.magic_va + 4, 0, 0],
        inval(HcallError::Misaligned),
    );
    check(
        "user address",
        read,
        [0x1000, 0, 0],
        inval(HcallError::OutOfRange),
    );
    check(
        "kernel image address",
        read,
        [el1_host::layout::KIMAGE_VADDR, 0, 0],
        inval(HcallError::OutOfRange),
    );
    // A linear-map VA far beyond RAM: in range, but the hyp has no mapping there.
    let (_, hi) = expect.layout.linear_span();
    let beyond = (hi + (1 << 40)) & !7;
    if shared::hypercall::is_linear_va(beyond) {
        check(
            "address beyond RAM",
            read,
            [beyond, 0, 0],
            inval(HcallError::NotMapped),
        );
    }
    check(
        "kern_hyp_va of a user address",
        HcallId::KernHypVa.smccc_func(),
        [0x1000, 0, 0],
        inval(HcallError::OutOfRange),
    );
    // The hyp is still there and still right.
    check(
        "ping afterwards",
        HcallId::Ping.smccc_func(),
        [0; 3],
        Ok(HYP_ABI_VERSION),
    );
    check(
        "valid read afterwards",
        read,
        [expect.magic_va, 0, 0],
        Ok(expect.magic),
    );
    (bad, first)
}

/// Whether this CPU implements SME (ID_AA64PFR1_EL1.SME, bits 27:24).
fn has_sme() -> bool {
    let pfr1: u64;
    // SAFETY: reading an ID register has no side effects.
    unsafe { core::arch::asm!("mrs {}, id_aa64pfr1_el1", out(reg) pfr1, options(nomem, nostack)) };
    (pfr1 >> 24) & 0xf != 0
}

/// A host trap that is not a call: the host executes an SME instruction (`RDSVL`) with
/// SME and FP enabled at EL1 (CPACR_EL1.SMEN/FPEN) but trapped to EL2 by the host's
/// CPTR_EL2.TSM. The hyp must refuse it (skip it with no effect: x0 keeps its value)
/// instead of stopping. `None` without SME: then nothing traps.
fn sme_trap_check() -> Option<Result<(), String>> {
    if !has_sme() {
        return None;
    }
    const SENTINEL: u64 = 0x5eed_cafe;
    let x0: u64;
    // SAFETY: CPACR_EL1 and DAIF are restored before the block ends; with IRQs masked no
    // other host code runs with SME/FP enabled. RDSVL only reads the streaming vector
    // length into x0 (the hyp skips it, so x0 keeps SENTINEL).
    unsafe {
        core::arch::asm!(
            "mrs {daif}, daif",
            "msr daifset, #3",
            "mrs {old}, cpacr_el1",
            "orr {t}, {old}, #0x300000",  // FPEN
            "orr {t}, {t}, #0x3000000",   // SMEN
            "msr cpacr_el1, {t}",
            "isb",
            ".inst 0x04bf5820",           // rdsvl x0, #1 (FEAT_SME)
            "msr cpacr_el1, {old}",
            "isb",
            "msr daif, {daif}",
            daif = out(reg) _,
            old = out(reg) _,
            t = out(reg) _,
            inout("x0") SENTINEL => x0,
            options(nostack)
        )
    };
    Some(if x0 == SENTINEL {
        Ok(())
    } else {
        Err(alloc::format!(
            "SME instruction trapped by CPTR_EL2.TSM: x0={x0:#x}, want it skipped ({SENTINEL:#x})"
        ))
    })
}

/// Runs this CPU's part of the selftests.
pub fn run_this_cpu(expect: &Expect, out: &CpuResults) {
    let (x0, r) = hcall(HcallId::EvalCaps.smccc_func(), [0; 3]);
    out.caps_x0.store(x0, Ordering::Relaxed);
    for (w, v) in out.caps.iter().zip(r) {
        w.store(v, Ordering::Relaxed);
    }

    let mut bad = 0;
    for &va in &expect.samples {
        let got = call(HcallId::KernHypVa, [va, 0, 0]).map(|r| r[0]);
        if got != Ok(expect.layout.kern_hyp_va(va)) {
            if bad == 0 {
                out.khv_first_va.store(va, Ordering::Relaxed);
                out.khv_first_got
                    .store(got.unwrap_or(u64::MAX), Ordering::Relaxed);
            }
            bad += 1;
        }
    }
    out.khv_bad.store(bad, Ordering::Relaxed);
    let (x0, r) = hcall(HcallId::HostRead64.smccc_func(), [expect.magic_va, 0, 0]);
    out.read_x0.store(x0, Ordering::Relaxed);
    out.read_val.store(r[0], Ordering::Relaxed);

    let (x0, r) = hcall(HcallId::PatchedConstants.smccc_func(), [0; 3]);
    out.const_x0.store(x0, Ordering::Relaxed);
    out.kimage_voffset.store(r[0], Ordering::Relaxed);
    out.ctr_el0.store(r[1], Ordering::Relaxed);

    out.abi_bad.store(abi_checks(expect).0, Ordering::Relaxed);

    // Last, so every call above is counted.
    let (x0, r) = hcall(HcallId::VectorStats.smccc_func(), [0; 3]);
    out.vec_x0.store(x0, Ordering::Relaxed);
    out.hardened.store(r[0], Ordering::Relaxed);
    out.calls.store(r[1], Ordering::Relaxed);
    out.traps.store(r[2], Ordering::Relaxed);
    out.ran.store(true, Ordering::Release);
}

/// Compares every CPU's results with the host's values and prints the selftest lines.
/// Returns the number of selftests that failed.
pub fn evaluate(
    caps: &FinalCaps,
    kimage_voffset: u64,
    expect: &Expect,
    results: &[CpuResults],
) -> usize {
    let want = caps.caps();
    let ran: Vec<(usize, &CpuResults)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.ran.load(Ordering::Acquire))
        .collect();
    let n = ran.len();
    let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
    // The first CPU whose results `bad` rejects, with its detail.
    let first_bad = |bad: &dyn Fn(&CpuResults) -> Option<String>| -> Option<String> {
        if n == 0 {
            return Some(String::from("no CPU ran the selftests"));
        }
        ran.iter()
            .find_map(|(cpu, r)| bad(r).map(|why| alloc::format!("cpu{cpu}: {why}")))
    };
    let mut failed = 0;

    let f = first_bad(&|r| {
        let mut words = [0u64; CAP_WORDS];
        for (w, a) in words.iter_mut().zip(&r.caps) {
            *w = ld(a);
        }
        let got = CapSet::from_words(words);
        let x0 = ld(&r.caps_x0);
        (x0 != 0 || got != want).then(|| {
            alloc::format!(
                "x0={x0:#x} missing=[{}] extra=[{}]",
                want.intersection(got.complement()),
                got.intersection(want.complement())
            )
        })
    });
    failed += usize::from(!report(
        "hyp-caps",
        f,
        n,
        &alloc::format!("caps={}", want.len()),
    ));

    let f = first_bad(&|r| {
        if ld(&r.khv_bad) != 0 {
            let va = ld(&r.khv_first_va);
            return Some(alloc::format!(
                "{} of {} samples differ, first va={va:#x} hyp={:#x} host={:#x}",
                ld(&r.khv_bad),
                expect.samples.len(),
                ld(&r.khv_first_got),
                expect.layout.kern_hyp_va(va)
            ));
        }
        let got = decode_reply(ld(&r.read_x0), ld(&r.read_val));
        (got != Ok(expect.magic)).then(|| {
            alloc::format!(
                "read of va={:#x} through the hyp mapping gave {got:?}, want {:#x}",
                expect.magic_va,
                expect.magic
            )
        })
    });
    failed += usize::from(!report(
        "kern-hyp-va",
        f,
        n,
        &alloc::format!("samples={}", expect.samples.len()),
    ));

    let ctr = caps.sanitised_ctr_el0();
    let f = first_bad(&|r| {
        let (x0, kv, c) = (ld(&r.const_x0), ld(&r.kimage_voffset), ld(&r.ctr_el0));
        (x0 != 0 || kv != kimage_voffset || c != ctr).then(|| {
            alloc::format!(
                "x0={x0:#x} kimage_voffset={kv:#x} (host {kimage_voffset:#x}) ctr_el0={c:#x} (host {ctr:#x})"
            )
        })
    });
    failed += usize::from(!report(
        "hyp-constants",
        f,
        n,
        &alloc::format!("kimage_voffset={kimage_voffset:#x} ctr_el0={ctr:#x}"),
    ));

    // The boot CPU runs the ABI checks once more to name the first misbehaving call.
    let (boot_bad, boot_first) = abi_checks(expect);
    let f = if boot_bad != 0 {
        Some(alloc::format!(
            "{boot_bad} checks failed, first: {boot_first}"
        ))
    } else {
        first_bad(&|r| {
            (ld(&r.abi_bad) != 0).then(|| alloc::format!("{} checks failed", ld(&r.abi_bad)))
        })
    };
    let sme = if has_sme() {
        "host-sme-trap=refused"
    } else {
        "host-sme-trap=absent"
    };
    failed += usize::from(!report("hyp-abi", f, n, sme));

    let hardened = caps.has(Cap::SpectreV3a);
    let f = first_bad(&|r| {
        // Refused host traps (the SME check) enter through the vectors too.
        let (x0, h, c, t) = (ld(&r.vec_x0), ld(&r.hardened), ld(&r.calls), ld(&r.traps));
        let good = x0 == 0 && c > 0 && if hardened { h == c + t } else { h == 0 };
        (!good).then(|| {
            alloc::format!(
                "x0={x0:#x} hardened entries={h} host calls={c} refused traps={t}, SPECTRE_V3A {}",
                if hardened { "set" } else { "not set" }
            )
        })
    });
    let path = if hardened { "hardened" } else { "direct" };
    failed += usize::from(!report("hyp-vectors", f, n, &alloc::format!("path={path}")));
    failed
}

/// Prints one selftest line; returns whether it passed.
fn report(name: &str, failure: Option<String>, cpus: usize, detail: &str) -> bool {
    match failure {
        None => {
            let sep = if detail.is_empty() { "" } else { " " };
            println!("selftest: {name} ok cpus={cpus}{sep}{detail}");
            true
        }
        Some(why) => {
            println!("selftest: {name} FAILED {why}");
            false
        }
    }
}
