//! The few EL2 system-register accesses, barriers and TLB maintenance the Rust side of
//! the hyp needs. Everything else (vectors, init) is assembly in its own file.
//! Cap-dependent ones are alternatives: the speculation barrier (`HAS_SB`), DISR_EL1,
//! which exists only with the RAS extension (its callers check `HAS_RAS_EXTN` with
//! `cap_likely!`), stage-2 invalidation by IPA range (`HAS_TLB_RANGE`) and the host
//! stage-1 fence while a guest VMID is borrowed (`WORKAROUND_SPECULATIVE_AT`).

use core::arch::asm;
use shared::cap_unlikely;
use shared::cpucaps::Cap;
use shared::stage2::{tlbi_insn, TlbiInsn, TlbiIpaOp, TlbiIpaOps};

/// ESR_EL2: syndrome of the exception being handled.
pub fn esr_el2() -> u64 {
    let v: u64;
    // SAFETY: reading ESR_EL2 at EL2 has no side effects.
    unsafe { asm!("mrs {}, esr_el2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Steps the host past the instruction that trapped (ELR_EL2 += 4, or 2 for a 16-bit
/// T32 instruction: ESR_EL2.IL = 0), so the host resumes after it.
pub fn skip_host_insn(esr: u64) {
    let len: u64 = if esr & (1 << 25) != 0 { 4 } else { 2 };
    // SAFETY: ELR_EL2 holds the host's return address while the hyp handles its trap;
    // the host resumes at the next instruction, nothing else reads it meanwhile.
    unsafe {
        asm!(
            "mrs {t}, elr_el2",
            "add {t}, {t}, {len}",
            "msr elr_el2, {t}",
            t = out(reg) _,
            len = in(reg) len,
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// MDCR_EL2: the hyp's debug/PMU trap configuration.
pub fn mdcr_el2() -> u64 {
    let v: u64;
    // SAFETY: reading MDCR_EL2 at EL2 has no side effects.
    unsafe { asm!("mrs {}, mdcr_el2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// TPIDR_EL2: this CPU's per-CPU offset, set by init.
pub fn tpidr_el2() -> u64 {
    let v: u64;
    // SAFETY: reading TPIDR_EL2 at EL2 has no side effects.
    unsafe { asm!("mrs {}, tpidr_el2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// Reads and clears DISR_EL1 (a deferred SError recorded by `esb`); whether one was
/// pending. Only call when the system has `HAS_RAS_EXTN`: without RAS the register
/// does not exist and the access is UNDEFINED.
pub fn take_deferred_serror() -> bool {
    take_disr() != 0
}

/// Reads and clears DISR_EL1; the deferred-SError record (0: none). Same rule as
/// [`take_deferred_serror`]: only with `HAS_RAS_EXTN`.
pub fn take_disr() -> u64 {
    let v: u64;
    // SAFETY: DISR_EL1 exists (the caller checked HAS_RAS_EXTN); reading it and writing
    // zero only acknowledges the deferred error.
    unsafe {
        asm!(
            "mrs {v}, s3_0_c12_c1_1", // DISR_EL1
            "cbz {v}, 1f",
            "msr s3_0_c12_c1_1, xzr",
            "1:",
            v = out(reg) v,
            options(nomem, nostack)
        )
    };
    v
}

pub use shared::alternative::speculation_barrier;

/// The PA behind hyp VA `va` if the hyp's stage 1 maps it readable (AT S1E2R).
pub fn translate_read(va: u64) -> Option<u64> {
    let par: u64;
    // SAFETY: AT only fills PAR_EL1; the ISB makes the result visible to the MRS. The host
    // does not keep anything in PAR_EL1 across a hypercall (it is the host's scratch
    // result register for its own AT instructions, which it reads right after them).
    unsafe {
        asm!(
            "at s1e2r, {va}",
            "isb",
            "mrs {par}, par_el1",
            va = in(reg) va,
            par = out(reg) par,
            options(nostack, preserves_flags)
        )
    };
    // PAR_EL1.F (bit 0) set: the walk faulted.
    if par & 1 != 0 {
        return None;
    }
    Some((par & 0x0000_ffff_ffff_f000) | (va & 0xfff))
}

/// The PA behind hyp VA `va` if the hyp's stage 1 maps it writable (AT S1E2W).
pub fn translate_write(va: u64) -> Option<u64> {
    let par: u64;
    // SAFETY: as in `translate_read`: AT only fills PAR_EL1, read right after the ISB.
    unsafe {
        asm!(
            "at s1e2w, {va}",
            "isb",
            "mrs {par}, par_el1",
            va = in(reg) va,
            par = out(reg) par,
            options(nostack, preserves_flags)
        )
    };
    if par & 1 != 0 {
        return None;
    }
    Some((par & 0x0000_ffff_ffff_f000) | (va & 0xfff))
}

/// ID_AA64MMFR0_EL1 (PARange) and ID_AA64MMFR1_EL1 (VMIDBits) of this CPU, for VTCR.
pub fn mmfr0_mmfr1() -> (u64, u64) {
    let (a, b): (u64, u64);
    // SAFETY: reading ID registers has no side effects.
    unsafe {
        asm!(
            "mrs {a}, id_aa64mmfr0_el1",
            "mrs {b}, id_aa64mmfr1_el1",
            a = out(reg) a,
            b = out(reg) b,
            options(nomem, nostack, preserves_flags)
        )
    };
    (a, b)
}

/// Makes new stage-2 descriptors visible to table walks on every CPU.
pub fn publish_tables() {
    // SAFETY: a barrier.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// TCR_EL1.EPD0 | EPD1: no EL1&0 stage-1 walks from TTBR0/TTBR1.
const TCR_EPD: u64 = (1 << 7) | (1 << 23);

/// Runs `f` with VTTBR_EL2 = `vttbr` (TLBIs by VMID or IPA act on its VMID) and puts the
/// old value back; this CPU runs no guest meanwhile (the hyp runs with interrupts
/// masked). With the speculative-AT erratum (A57/A72) the live host stage 1 must not
/// walk while a guest's VMID is loaded (the walk could combine the two), so its walks
/// are disabled (TCR_EL1.EPD0/EPD1; the host's MMU is on) for that time.
fn with_vmid<R>(vttbr: u64, f: impl FnOnce() -> R) -> R {
    let host_tcr = if cap_unlikely!(Cap::WorkaroundSpeculativeAt) {
        let tcr: u64;
        // SAFETY: the host's EL1 state is live but the host does not run until the hyp
        // returns; TCR_EL1 is restored below, before that.
        unsafe {
            asm!(
                "mrs {t}, tcr_el1",
                "orr {e}, {t}, {epd}",
                "msr tcr_el1, {e}",
                "isb",
                t = out(reg) tcr,
                e = out(reg) _,
                epd = in(reg) TCR_EPD,
                options(nostack, preserves_flags)
            )
        };
        Some(tcr)
    } else {
        None
    };
    let old: u64;
    // SAFETY: VTTBR_EL2 is only read by EL1&0 translations, none of which run while the
    // hyp does; the old value is put back below.
    unsafe {
        asm!(
            "mrs {old}, vttbr_el2",
            "msr vttbr_el2, {new}",
            "isb",
            old = out(reg) old,
            new = in(reg) vttbr,
            options(nostack, preserves_flags)
        )
    };
    let r = f();
    // SAFETY: as above: the host's value back.
    unsafe {
        asm!(
            "msr vttbr_el2, {old}",
            "isb",
            old = in(reg) old,
            options(nostack, preserves_flags)
        )
    };
    if let Some(tcr) = host_tcr {
        // SAFETY: the host's own TCR_EL1 value, read above.
        unsafe {
            asm!(
                "msr tcr_el1, {t}",
                "isb",
                t = in(reg) tcr,
                options(nostack, preserves_flags)
            )
        };
    }
    r
}

/// Invalidates every stage-1 and stage-2 TLB entry of the VMID in `vttbr` (inner
/// shareable), with VTTBR_EL2 borrowed ([`with_vmid`]).
pub fn flush_vmid(vttbr: u64) {
    with_vmid(vttbr, || {
        // SAFETY: TLB invalidation only drops cached translations; the barriers order
        // it after the table writes and before the hyp continues.
        unsafe {
            asm!(
                "dsb ishst",
                "tlbi vmalls12e1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
    });
}

/// Whether stage-2 invalidations by IPA use FEAT_TLBIRANGE ranges: the `HAS_TLB_RANGE`
/// alternative (a `nop` patched to a branch), so the answer is in the text, not loaded.
#[inline(always)]
pub fn tlb_range() -> bool {
    cap_unlikely!(Cap::HasTlbRange)
}

/// Invalidates the TLBs of the VMID in `vttbr` for an IPA range after its stage-2
/// entries were cleared: `DSB ISHST` (the cleared descriptors reach the walkers), the
/// instructions of `ops` (built by `shared::stage2::tlbi_ipa_ops` with the
/// [`tlb_range`] answer), `DSB ISH`, `TLBI VMALLE1IS` (combined stage-1+2 entries may
/// still hold the old translation), `DSB ISH`, `ISB` — all with VTTBR_EL2 borrowed
/// ([`with_vmid`]). Returns the number of invalidation-by-IPA instructions issued.
pub fn invalidate_ipa_range(vttbr: u64, ops: TlbiIpaOps) -> u64 {
    with_vmid(vttbr, || {
        // SAFETY: a barrier.
        unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
        let mut n = 0;
        for op in ops {
            match op {
                // SAFETY: TLB invalidation by IPA only drops cached translations.
                TlbiIpaOp::Page(x) => unsafe {
                    asm!("tlbi ipas2e1is, {x}", x = in(reg) x, options(nostack, preserves_flags))
                },
                // SAFETY: as above. Only reached with HAS_TLB_RANGE (the ops are ranges
                // only when `tlb_range()` said so), so the instruction exists. The
                // assembler refuses the mnemonic without the tlb-rmi feature, hence the
                // word from `shared::stage2::tlbi_insn` (checked against llvm-mc).
                TlbiIpaOp::Range(x) => unsafe {
                    asm!(
                        ".inst {insn} // tlbi ripas2e1is, x9",
                        insn = const tlbi_insn(TlbiInsn::Ripas2e1is, 9),
                        in("x9") x,
                        options(nostack, preserves_flags)
                    )
                },
            }
            n += 1;
        }
        // SAFETY: TLB invalidation and barriers only.
        unsafe {
            asm!(
                "dsb ish",
                "tlbi vmalle1is",
                "dsb ish",
                "isb",
                options(nostack, preserves_flags)
            )
        };
        n
    })
}

/// Invalidates all EL1&0 stage-1 and stage-2 TLB entries (all VMIDs) and the instruction
/// caches in the inner-shareable domain: what the host asks for when VMIDs roll over.
pub fn flush_all_guest_contexts() {
    // SAFETY: TLB and I-cache invalidation only drop cached translations/instructions;
    // the barriers order them before the host continues.
    unsafe {
        asm!(
            "dsb ishst",
            "tlbi alle1is",
            "ic ialluis",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
}

/// Waits for an event (low-power idle in a stop loop).
pub fn wfe() {
    // SAFETY: WFE only pauses the CPU.
    unsafe { asm!("wfe", options(nomem, nostack, preserves_flags)) };
}
