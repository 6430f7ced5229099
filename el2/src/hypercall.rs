//! The host hypercall table (DESIGN §6) with the ABI of `shared::hypercall`: SMCCC fast
//! calls owned by the vendor hypervisor, `x0 = 0xC600_0000 | id`, arguments in x1…; on
//! success x0 = 0 and results in x1…; an unknown id, an id without a handler, the init id
//! or a setup call after `FinaliseSetup` gets x0 = NOT_SUPPORTED (−1); an argument that
//! fails validation gets x0 = INVALID_PARAMETER (−3) with the reason in x1, and changes
//! nothing.
//!
//! The table is an array of function pointers in rodata: its slots are exactly what the
//! image's relocation list rebases. After the bounds check on the id, a speculation
//! barrier (an `HAS_SB` alternative) keeps the table load from running ahead of it.

use crate::entry::HostContext;
use crate::{caps, percpu, sysreg};
use core::sync::atomic::{AtomicBool, Ordering};
use shared::hypercall::{
    check_read64_arg, decode_func, is_linear_va, HcallError, HcallId, CAP_WORDS, HYP_ABI_VERSION,
    NR_HCALLS, SMCCC_INVALID_PARAMETER, SMCCC_NOT_SUPPORTED, SMCCC_SUCCESS,
};

/// A host-call handler: reads its arguments from the context, writes its results into
/// x1… of it; x0 is the dispatcher's.
type Handler = fn(&mut HostContext) -> Result<(), HcallError>;

/// Set by `FinaliseSetup`; from then on setup calls are refused on every CPU. Hyp-owned
/// state (like Linux's "pKVM initialised" key), not capability state.
static SETUP_CLOSED: AtomicBool = AtomicBool::new(false);

/// The dispatch table, indexed by id.
static HOST_HCALLS: [Option<Handler>; NR_HCALLS] = {
    let mut t: [Option<Handler>; NR_HCALLS] = [None; NR_HCALLS];
    // Init runs only through the init vector, with the MMU off.
    t[HcallId::HypInit as usize] = None;
    t[HcallId::GetMdcrEl2 as usize] = Some(handle_get_mdcr_el2);
    t[HcallId::FinaliseSetup as usize] = Some(handle_finalise_setup);
    t[HcallId::FlushVmContext as usize] = Some(handle_flush_vm_context);
    t[HcallId::Ping as usize] = Some(handle_ping);
    t[HcallId::EvalCaps as usize] = Some(handle_eval_caps);
    t[HcallId::KernHypVa as usize] = Some(handle_kern_hyp_va);
    t[HcallId::PatchedConstants as usize] = Some(handle_patched_constants);
    t[HcallId::VectorStats as usize] = Some(handle_vector_stats);
    t[HcallId::HostRead64 as usize] = Some(handle_host_read64);
    t[HcallId::VmCreate as usize] = Some(crate::vm::handle_create);
    t[HcallId::VmMap as usize] = Some(crate::vm::handle_map);
    t[HcallId::VcpuRun as usize] = Some(crate::vm::handle_run);
    t[HcallId::VmDestroy as usize] = Some(crate::vm::handle_destroy);
    t[HcallId::VmUnmap as usize] = Some(crate::vm::handle_unmap);
    t
};

fn handle_get_mdcr_el2(ctxt: &mut HostContext) -> Result<(), HcallError> {
    ctxt.regs[1] = sysreg::mdcr_el2();
    Ok(())
}

fn handle_finalise_setup(ctxt: &mut HostContext) -> Result<(), HcallError> {
    crate::vm::set_carveout(ctxt.regs[1], ctxt.regs[2])?;
    SETUP_CLOSED.store(true, Ordering::Release);
    ctxt.regs[1] = 0;
    Ok(())
}

fn handle_flush_vm_context(ctxt: &mut HostContext) -> Result<(), HcallError> {
    sysreg::flush_all_guest_contexts();
    ctxt.regs[1] = 0;
    Ok(())
}

fn handle_ping(ctxt: &mut HostContext) -> Result<(), HcallError> {
    ctxt.regs[1] = HYP_ABI_VERSION;
    Ok(())
}

fn handle_eval_caps(ctxt: &mut HostContext) -> Result<(), HcallError> {
    let mut words = [0u64; CAP_WORDS];
    caps::hyp_eval_caps(&mut words);
    ctxt.regs[1..=CAP_WORDS].copy_from_slice(&words);
    Ok(())
}

fn handle_kern_hyp_va(ctxt: &mut HostContext) -> Result<(), HcallError> {
    let va = ctxt.regs[1];
    if !is_linear_va(va) {
        return Err(HcallError::OutOfRange);
    }
    ctxt.regs[1] = shared::alternative::kern_hyp_va(va);
    Ok(())
}

fn handle_patched_constants(ctxt: &mut HostContext) -> Result<(), HcallError> {
    ctxt.regs[1] = shared::alternative::kimage_voffset();
    ctxt.regs[2] = shared::alternative::final_ctr_el0();
    Ok(())
}

fn handle_vector_stats(ctxt: &mut HostContext) -> Result<(), HcallError> {
    let cpu = percpu::this_cpu();
    ctxt.regs[1] = cpu.hardened_entries.load(Ordering::Relaxed);
    ctxt.regs[2] = cpu.host_calls.load(Ordering::Relaxed);
    ctxt.regs[3] = cpu.host_traps_refused.load(Ordering::Relaxed);
    Ok(())
}

/// The hyp image itself (text to the end of bss): hyp memory even before
/// `FinaliseSetup` tells the hyp its whole carve-out.
fn in_hyp_image(hyp_va: u64) -> bool {
    extern "C" {
        static __hyp_text_start: u8;
        static __hyp_end: u8;
    }
    // Only the addresses of the linker symbols are taken (PC-relative, so hyp VAs).
    let start = core::ptr::addr_of!(__hyp_text_start) as u64;
    let end = core::ptr::addr_of!(__hyp_end) as u64;
    (start..end).contains(&hyp_va)
}

/// Selftest-only: reads a host word through the hyp's mapping. Nothing of the hyp's own
/// (its carve-out: image, per-CPU blocks, stacks) may come out this way. The carve-out
/// check is on the hyp VA, after `kern_hyp_va`, so a linear VA beyond RAM whose masked
/// hyp VA aliases into the carve-out is caught too. Unmapped addresses answer
/// `NotMapped` first: which carve-out pages EL2 maps is no secret from the host, which
/// built those tables.
fn handle_host_read64(ctxt: &mut HostContext) -> Result<(), HcallError> {
    let va = ctxt.regs[1];
    check_read64_arg(va)?;
    let hyp_va = shared::alternative::kern_hyp_va(va);
    if sysreg::translate_read(hyp_va).is_none() {
        return Err(HcallError::NotMapped);
    }
    // 8-byte aligned, so the word cannot straddle the carve-out's edge.
    if in_hyp_image(hyp_va) || crate::vm::overlaps_carveout(hyp_va, 8) {
        return Err(HcallError::HypMemory);
    }
    // SAFETY: the address is 8-byte aligned and the hyp's stage 1 maps it readable (the
    // AT above); it is host RAM in the linear map, which the host may change under us,
    // hence the volatile read of a plain integer.
    ctxt.regs[1] = unsafe { core::ptr::read_volatile(hyp_va as *const u64) };
    Ok(())
}

/// The handler for SMCCC function id `x0`, if there is one and it may run now.
fn lookup(x0: u64) -> Option<Handler> {
    let id = HcallId::from_number(decode_func(x0)?)?;
    sysreg::speculation_barrier();
    if id.is_setup() && SETUP_CLOSED.load(Ordering::Acquire) {
        return None;
    }
    HOST_HCALLS.get(id as usize).copied().flatten()
}

/// Decodes and runs one host hypercall; x0/x1… of `ctxt` receive the SMCCC result.
pub fn handle_host_hcall(ctxt: &mut HostContext) {
    match lookup(ctxt.regs[0]) {
        Some(handler) => match handler(ctxt) {
            Ok(()) => ctxt.regs[0] = SMCCC_SUCCESS,
            Err(e) => {
                ctxt.regs[0] = SMCCC_INVALID_PARAMETER;
                ctxt.regs[1] = e.code();
            }
        },
        None => ctxt.regs[0] = SMCCC_NOT_SUPPORTED,
    }
}
