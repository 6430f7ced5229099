//! The world switch (Rust half): host EL1 and EL2 state out, guest state in, run the
//! guest through `switch_asm::__guest_enter`, then everything back, and the exit
//! decoded into the context (`shared::exit`, `shared::vcpu`).
//!
//! Order on entry: pending injection → save host EL1 registers and the EL2 registers
//! the switch changes → (SPECULATIVE_AT: the live host stage 1 stops walking) → stage 2
//! (VTCR, VTTBR) and the guest HCR_EL2 → guest EL1 registers (SCTLR and TCR last, in
//! the erratum's order) → timer, PAuth keys, VMPIDR, CNTVOFF, the virtual GIC CPU
//! interface (`vgic.rs`), vectors, ELR/SPSR → ERET.
//! On exit the same in reverse; the guest's virtual timer is disabled once saved, so it
//! cannot fire into the host.
//!
//! Cap-dependent steps are alternatives: `HAS_ADDRESS_AUTH` (HCR.API/APK and the key
//! switch), `HAS_STAGE2_FWB` (HCR.FWB), `WORKAROUND_SPECULATIVE_AT` (A57/A72 ordering),
//! `HAS_RAS_EXTN` (DISR after the exit's ESB), `SVE`/`SME` (their traps stay on for
//! guests), `HAS_PAN`/`SSBS` (injected exception entry).
//!
//! MDCR_EL2 is switched too: while a guest runs, its PMU, debug, OS-lock, debug-ROM,
//! SPE and trace-filter register accesses trap to EL2 (the VMM emulates them), so the
//! host's PMU and breakpoint programming is out of the guest's reach; MDSCR_EL1 is
//! carried with the other EL1 registers.
//!
//! # The Cortex-A57/A72 speculative-AT erratum (1319367/1319537)
//!
//! These cores may speculatively walk EL1&0 stage-1 tables with a mix of one world's
//! EL1 registers and the other world's stage 2. So while the EL1 translation registers
//! and VTTBR/HCR.VM disagree, stage-1 walks must be impossible: the switch sets
//! TCR_EL1.EPD0/EPD1 (no walks from TTBR0/1) with SCTLR_EL1.M still 1 in the live
//! registers, synchronises, changes stage 2 and the other EL1 registers, and writes the
//! real SCTLR_EL1 and only then the real TCR_EL1, each followed by an ISB.

use crate::percpu;
use crate::switch_asm::{self, vector};
use crate::vgic;
use core::arch::asm;
use core::sync::atomic::{AtomicU64, Ordering};
use shared::cpucaps::Cap;
use shared::exit::{decode_trap, exit_fault_regs, Exit, TrapVector};
use shared::vcpu::{GuestEntry, GuestSysRegs, InjectedAbort, VcpuContext, MPIDR_RES1};
use shared::{cap_likely, cap_unlikely};

/// Reads a system register by name.
macro_rules! rd {
    ($reg:literal) => {{
        let v: u64;
        // SAFETY: reading a system register at EL2 has no side effects.
        unsafe { asm!(concat!("mrs {}, ", $reg), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

/// Writes a system register by name.
macro_rules! wr {
    ($reg:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: the world switch owns these registers while it runs; each write is
        // part of loading one world's state, ordered by the ISBs around the switch.
        unsafe { asm!(concat!("msr ", $reg, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
    }};
}

fn isb() {
    // SAFETY: a barrier.
    unsafe { asm!("isb", options(nomem, nostack, preserves_flags)) };
}

/// HCR_EL2 while a guest runs: VM, SWIO, PTW, FMO, IMO, AMO, FB, BSU = inner shareable,
/// TWI, TWE, TID3 (the VMM answers ID-register reads from its filtered view, so the
/// guest is not told about SVE/SME/MTE/... the switch does not carry), TSC, TIDCP, TACR,
/// TSW, RW (AArch64 EL1).
pub const HCR_GUEST_FLAGS: u64 = (1 << 0)
    | (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 9)
    | (1 << 10)
    | (1 << 13)
    | (1 << 14)
    | (1 << 18)
    | (1 << 19)
    | (1 << 20)
    | (1 << 21)
    | (1 << 22)
    | (1 << 31);
const _: () = assert!(HCR_GUEST_FLAGS == 0x807c_663f);
/// HCR_EL2.APK | API: pointer-authentication keys and instructions untrapped.
const HCR_API_APK: u64 = (1 << 40) | (1 << 41);
/// HCR_EL2.FWB: stage 2 forces the memory type (FEAT_S2FWB).
const HCR_FWB: u64 = 1 << 46;
/// TCR_EL1.EPD0 | EPD1.
const TCR_EPD: u64 = (1 << 7) | (1 << 23);
/// SCTLR_EL1.M.
const SCTLR_M: u64 = 1;
/// CNTHCTL_EL2 (E2H = 0): EL1PCTEN (bit 0) and EL1PCEN (bit 1).
const CNTHCTL_EL1PCTEN: u64 = 1 << 0;
const CNTHCTL_EL1PCEN: u64 = 1 << 1;
/// CPTR_EL2.TZ (SVE) and TSM (SME): traps kept on for guests, whose state the switch
/// does not carry.
const CPTR_TZ: u64 = 1 << 8;
const CPTR_TSM: u64 = 1 << 12;
/// MDCR_EL2.HPMN (bits 4:0): kept from the host (a zero HPMN is UNPREDICTABLE without
/// FEAT_HPMN0, and with TPM set the guest reaches no counter anyway).
const MDCR_HPMN: u64 = 0x1f;
/// MDCR_EL2 bits always set for guests: TPMCR (5) and TPM (6) trap every PMU register,
/// TDA (9) the debug registers (breakpoints, watchpoints, MDSCR_EL1, DCC), TDOSA (10)
/// the OS lock / double lock / power-down registers, TDRA (11) MDRAR_EL1. TDE, HPME
/// and E2PB (13:12) stay 0: debug exceptions go to the guest's EL1, EL2 counters stay
/// off, and an SPE buffer (if any) is EL2's, so EL1 accesses to it trap.
const MDCR_GUEST_TRAPS: u64 = (1 << 5) | (1 << 6) | (1 << 9) | (1 << 10) | (1 << 11);
const _: () = assert!(MDCR_GUEST_TRAPS == 0xe60);
/// MDCR_EL2.TPMS (14): SPE sampling-control registers trap (RES0 without FEAT_SPE).
const MDCR_TPMS: u64 = 1 << 14;
/// MDCR_EL2.TTRF (19): trace-filter registers trap (RES0 without FEAT_TRF).
const MDCR_TTRF: u64 = 1 << 19;

/// MDCR_EL2 while a guest runs: the host's HPMN, every debug/PMU/SPE/trace trap the
/// CPU has (per ID_AA64DFR0_EL1 `dfr0`: PMSVer 35:32, TraceFilt 43:40), nothing else.
/// The guest so cannot reprogram the PMU or the breakpoints the host uses; the VMM
/// emulates what it traps.
fn guest_mdcr(host: u64, dfr0: u64) -> u64 {
    let mut m = (host & MDCR_HPMN) | MDCR_GUEST_TRAPS;
    if (dfr0 >> 32) & 0xf != 0 {
        m |= MDCR_TPMS;
    }
    if (dfr0 >> 40) & 0xf != 0 {
        m |= MDCR_TTRF;
    }
    m
}

/// Saves the EL1/EL0 registers a world owns into `r`.
fn save_el1(r: &mut GuestSysRegs) {
    r.sctlr_el1 = rd!("sctlr_el1");
    r.cpacr_el1 = rd!("cpacr_el1");
    r.ttbr0_el1 = rd!("ttbr0_el1");
    r.ttbr1_el1 = rd!("ttbr1_el1");
    r.tcr_el1 = rd!("tcr_el1");
    r.mair_el1 = rd!("mair_el1");
    r.amair_el1 = rd!("amair_el1");
    r.vbar_el1 = rd!("vbar_el1");
    r.contextidr_el1 = rd!("contextidr_el1");
    r.tpidr_el0 = rd!("tpidr_el0");
    r.tpidr_el1 = rd!("tpidr_el1");
    r.tpidrro_el0 = rd!("tpidrro_el0");
    r.sp_el0 = rd!("sp_el0");
    r.elr_el1 = rd!("elr_el1");
    r.spsr_el1 = rd!("spsr_el1");
    r.esr_el1 = rd!("esr_el1");
    r.far_el1 = rd!("far_el1");
    r.afsr0_el1 = rd!("afsr0_el1");
    r.afsr1_el1 = rd!("afsr1_el1");
    r.par_el1 = rd!("par_el1");
    r.cntkctl_el1 = rd!("cntkctl_el1");
    r.mdscr_el1 = rd!("mdscr_el1");
    r.csselr_el1 = rd!("csselr_el1");
    r.cntv_ctl_el0 = rd!("cntv_ctl_el0");
    r.cntv_cval_el0 = rd!("cntv_cval_el0");
}

/// Loads the EL1/EL0 registers of `r` except SCTLR_EL1 and TCR_EL1 (the caller writes
/// those last, in the order the speculative-AT erratum needs) and the timer control
/// (written after its compare value).
fn load_el1_but_sctlr_tcr(r: &GuestSysRegs) {
    wr!("cpacr_el1", r.cpacr_el1);
    wr!("ttbr0_el1", r.ttbr0_el1);
    wr!("ttbr1_el1", r.ttbr1_el1);
    wr!("mair_el1", r.mair_el1);
    wr!("amair_el1", r.amair_el1);
    wr!("vbar_el1", r.vbar_el1);
    wr!("contextidr_el1", r.contextidr_el1);
    wr!("tpidr_el0", r.tpidr_el0);
    wr!("tpidr_el1", r.tpidr_el1);
    wr!("tpidrro_el0", r.tpidrro_el0);
    wr!("sp_el0", r.sp_el0);
    wr!("elr_el1", r.elr_el1);
    wr!("spsr_el1", r.spsr_el1);
    wr!("esr_el1", r.esr_el1);
    wr!("far_el1", r.far_el1);
    wr!("afsr0_el1", r.afsr0_el1);
    wr!("afsr1_el1", r.afsr1_el1);
    wr!("par_el1", r.par_el1);
    wr!("cntkctl_el1", r.cntkctl_el1);
    wr!("mdscr_el1", r.mdscr_el1);
    wr!("csselr_el1", r.csselr_el1);
    wr!("cntv_cval_el0", r.cntv_cval_el0);
    wr!("cntv_ctl_el0", r.cntv_ctl_el0);
}

/// Writes SCTLR_EL1 and TCR_EL1 of the world being entered. With the speculative-AT
/// erratum the live TCR has EPD0/EPD1 set: SCTLR first, ISB, then the real TCR.
fn load_sctlr_tcr(r: &GuestSysRegs) {
    if cap_unlikely!(Cap::WorkaroundSpeculativeAt) {
        wr!("sctlr_el1", r.sctlr_el1);
        isb();
        wr!("tcr_el1", r.tcr_el1);
    } else {
        wr!("sctlr_el1", r.sctlr_el1);
        wr!("tcr_el1", r.tcr_el1);
    }
}

/// With the speculative-AT erratum: stop EL1&0 stage-1 walks in the live registers
/// (EPD0/EPD1 set, M set) before stage 2 or the EL1 registers change hands.
fn fence_stage1_walks() {
    if cap_unlikely!(Cap::WorkaroundSpeculativeAt) {
        wr!("tcr_el1", rd!("tcr_el1") | TCR_EPD);
        isb();
        wr!("sctlr_el1", rd!("sctlr_el1") | SCTLR_M);
        isb();
    }
}

/// The pointer-authentication keys (APIA, APIB, APDA, APDB, APGA; lo, hi).
fn save_keys(k: &mut [u64; 10]) {
    k[0] = rd!("s3_0_c2_c1_0");
    k[1] = rd!("s3_0_c2_c1_1");
    k[2] = rd!("s3_0_c2_c1_2");
    k[3] = rd!("s3_0_c2_c1_3");
    k[4] = rd!("s3_0_c2_c2_0");
    k[5] = rd!("s3_0_c2_c2_1");
    k[6] = rd!("s3_0_c2_c2_2");
    k[7] = rd!("s3_0_c2_c2_3");
    k[8] = rd!("s3_0_c2_c3_0");
    k[9] = rd!("s3_0_c2_c3_1");
}

fn load_keys(k: &[u64; 10]) {
    wr!("s3_0_c2_c1_0", k[0]);
    wr!("s3_0_c2_c1_1", k[1]);
    wr!("s3_0_c2_c1_2", k[2]);
    wr!("s3_0_c2_c1_3", k[3]);
    wr!("s3_0_c2_c2_0", k[4]);
    wr!("s3_0_c2_c2_1", k[5]);
    wr!("s3_0_c2_c2_2", k[6]);
    wr!("s3_0_c2_c2_3", k[7]);
    wr!("s3_0_c2_c3_0", k[8]);
    wr!("s3_0_c2_c3_1", k[9]);
}

/// The EL2 registers the switch changes, as the host had them.
struct HostEl2 {
    hcr: u64,
    vbar: u64,
    elr: u64,
    spsr: u64,
    vmpidr: u64,
    cnthctl: u64,
    cptr: u64,
    mdcr: u64,
    vttbr: u64,
    vtcr: u64,
    sp_el1: u64,
    cntvoff: u64,
}

/// Writes an injection computed by `shared::vcpu::prepare_entry` into the guest's EL1
/// registers in `ctx` and clears the request. PC and PSTATE go to the hardware from the
/// checked `GuestEntry`, not from here.
pub fn record_injection(ctx: &mut VcpuContext, a: &InjectedAbort) {
    ctx.sys.esr_el1 = a.esr_el1;
    ctx.sys.far_el1 = a.far_el1;
    ctx.sys.elr_el1 = a.elr_el1;
    ctx.sys.spsr_el1 = a.spsr_el1;
    ctx.gpr.pc = a.pc;
    ctx.gpr.pstate = a.pstate;
    ctx.inject.kind = 0;
    ctx.inject.far = 0;
}

/// Runs the guest of `ctx` with stage 2 `vttbr`/`vtcr` until it exits; writes the exit
/// into `ctx.exit` and returns it. The caller validated the context's address and holds
/// it; `entry` is the checked PC/PSTATE (from one snapshot): ELR_EL2/SPSR_EL2 come from
/// it, never from the host-writable context.
pub fn run(ctx: &mut VcpuContext, entry: &GuestEntry, vttbr: u64, vtcr: u64) -> Exit {
    let pauth = cap_likely!(Cap::HasAddressAuth);
    let host = HostEl2 {
        hcr: rd!("hcr_el2"),
        vbar: rd!("vbar_el2"),
        elr: rd!("elr_el2"),
        spsr: rd!("spsr_el2"),
        vmpidr: rd!("vmpidr_el2"),
        cnthctl: rd!("cnthctl_el2"),
        cptr: rd!("cptr_el2"),
        mdcr: rd!("mdcr_el2"),
        vttbr: rd!("vttbr_el2"),
        vtcr: rd!("vtcr_el2"),
        sp_el1: rd!("sp_el1"),
        cntvoff: rd!("cntvoff_el2"),
    };
    let mut host_el1 = GuestSysRegs::default();
    save_el1(&mut host_el1);
    let mut host_keys = [0u64; 10];
    if pauth {
        save_keys(&mut host_keys);
    }

    // ---- Enter. ----
    fence_stage1_walks();
    let mut hcr = HCR_GUEST_FLAGS;
    if pauth {
        hcr |= HCR_API_APK;
    }
    if cap_unlikely!(Cap::HasStage2Fwb) {
        hcr |= HCR_FWB;
    }
    let mut cptr = host.cptr;
    if cap_unlikely!(Cap::Sve) {
        cptr |= CPTR_TZ;
    }
    if cap_unlikely!(Cap::Sme) {
        cptr |= CPTR_TSM;
    }
    wr!("vtcr_el2", vtcr);
    wr!("vttbr_el2", vttbr);
    wr!("hcr_el2", hcr);
    wr!("cptr_el2", cptr);
    wr!("mdcr_el2", guest_mdcr(host.mdcr, rd!("id_aa64dfr0_el1")));
    wr!(
        "cnthctl_el2",
        (host.cnthctl & !CNTHCTL_EL1PCEN) | CNTHCTL_EL1PCTEN
    );
    isb();
    if cap_unlikely!(Cap::WorkaroundSpeculativeAt) {
        // Stage 2 is live; the guest's EL1 registers go in with walks still fenced.
        wr!("tcr_el1", ctx.sys.tcr_el1 | TCR_EPD);
        isb();
    }
    load_el1_but_sctlr_tcr(&ctx.sys);
    wr!("sp_el1", ctx.gpr.sp_el1);
    if pauth {
        load_keys(&ctx.ptrauth.keys);
    }
    load_sctlr_tcr(&ctx.sys);
    wr!("vmpidr_el2", ctx.vmpidr | MPIDR_RES1);
    wr!("cntvoff_el2", ctx.cntvoff);
    let gic = cap_likely!(Cap::HasSysregGicCpuif).then(|| vgic::load(&ctx.vgic));
    wr!("elr_el2", entry.pc);
    wr!("spsr_el2", entry.pstate);
    let guest_vectors: u64;
    // SAFETY: PC-relative address of the guest vector table (a hyp VA).
    unsafe {
        asm!("adr {}, __hyp_guest_vector", out(reg) guest_vectors, options(nomem, nostack, preserves_flags))
    };
    wr!("vbar_el2", guest_vectors);
    isb();

    let host_fp = percpu::this_cpu().host_fp.get();
    // SAFETY: every system register is loaded for the guest; `ctx` is a valid,
    // exclusively held context at a hyp VA; `host_fp` is this CPU's save area. The
    // assembly returns here with the host's general and FP registers intact.
    let vec = unsafe { switch_asm::__guest_enter(ctx, host_fp) };

    // ---- Exit: the syndrome first, before anything can overwrite it. ----
    let esr = rd!("esr_el2");
    let far = rd!("far_el2");
    let hpfar = rd!("hpfar_el2");
    let disr = if cap_likely!(Cap::HasRasExtn) {
        crate::sysreg::take_disr()
    } else {
        0
    };
    ctx.gpr.pc = rd!("elr_el2");
    ctx.gpr.pstate = rd!("spsr_el2");
    ctx.gpr.sp_el1 = rd!("sp_el1");
    save_el1(&mut ctx.sys);
    if pauth {
        save_keys(&mut ctx.ptrauth.keys);
    }
    // The guest's virtual timer must not fire into the host; its state is saved.
    wr!("cntv_ctl_el0", 0);
    wr!("cntvoff_el2", host.cntvoff);
    if let Some(loaded) = &gic {
        vgic::save(&mut ctx.vgic, loaded);
    }

    fence_stage1_walks();
    wr!("hcr_el2", host.hcr);
    wr!("vttbr_el2", host.vttbr);
    wr!("vtcr_el2", host.vtcr);
    wr!("cptr_el2", host.cptr);
    wr!("mdcr_el2", host.mdcr);
    wr!("cnthctl_el2", host.cnthctl);
    isb();
    load_el1_but_sctlr_tcr(&host_el1);
    wr!("sp_el1", host.sp_el1);
    if pauth {
        load_keys(&host_keys);
    }
    load_sctlr_tcr(&host_el1);
    wr!("vmpidr_el2", host.vmpidr);
    wr!("elr_el2", host.elr);
    wr!("spsr_el2", host.spsr);
    wr!("vbar_el2", host.vbar);
    isb();

    let trap = match vec {
        vector::SYNC => TrapVector::Synchronous,
        vector::IRQ => TrapVector::Irq,
        vector::FIQ => TrapVector::Fiq,
        _ => TrapVector::SError,
    };
    // A guest SError deferred by the exit's ESB ends the run as an SError, whatever
    // the vector was (its syndrome is DISR's).
    let (trap, esr) = if disr != 0 {
        (TrapVector::SError, disr)
    } else {
        (trap, esr)
    };
    let exit = decode_trap(trap, esr, far, hpfar);
    ctx.exit.record = exit.encode();
    ctx.exit.vector = match trap {
        TrapVector::Synchronous => vector::SYNC,
        TrapVector::Irq => vector::IRQ,
        TrapVector::Fiq => vector::FIQ,
        TrapVector::SError => vector::SERROR,
    };
    let irq = matches!(trap, TrapVector::Irq | TrapVector::Fiq);
    ctx.exit.esr = if irq { 0 } else { esr };
    // Only an abort's FAR/HPFAR mean anything; otherwise they are stale, never passed on.
    let (far, hpfar) = exit_fault_regs(trap, esr, far, hpfar);
    ctx.exit.far = far;
    ctx.exit.hpfar = hpfar;
    exit
}

/// Claims a context for this CPU: 0 → `marker` in its `running` word.
pub fn claim(running: &AtomicU64, marker: u64) -> bool {
    running
        .compare_exchange(0, marker, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// Releases a context claimed with [`claim`].
pub fn release(running: &AtomicU64) {
    running.store(0, Ordering::Release);
}
