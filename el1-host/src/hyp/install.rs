//! Talking to EL2: the `hvc` instruction, the per-CPU init parameters, and the per-CPU
//! install (HVC_SET_VECTORS with the init vector's PA, then the init call with this CPU's
//! parameters, LINUX-FACTS §6.2).

use super::loader::{Carveout, CarveoutPlan, Loaded};
use crate::arch::cache::{self, TextTarget};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use shared::hyp_image::{HypLayout, ImageRange};
use shared::hypercall::{self, stub, HcallId, InitParams, HCR_HOST_NVHE_FLAGS};

/// Issues `hvc #0` with `x0..x4 = args` and returns `x0..x4` afterwards: the one place
/// the host enters EL2 (stub calls, host calls, VM calls).
///
/// The hyp changes only the registers it answers in (it restores the rest from its saved
/// context); the stub paths may also change x4 and x5, so x5 is a clobber too.
pub fn hvc(args: [u64; 5]) -> [u64; 5] {
    let [mut x0, mut x1, mut x2, mut x3, mut x4] = args;
    // SAFETY: an HVC to the hyp-stub or to the installed hyp, both of which return here
    // with only x0–x5 changed; the hyp may read and write host memory the arguments name
    // (init parameters, vCPU context, stage-2 pool), hence no `nomem`.
    unsafe {
        core::arch::asm!(
            "hvc #0",
            inout("x0") x0,
            inout("x1") x1,
            inout("x2") x2,
            inout("x3") x3,
            inout("x4") x4,
            lateout("x5") _,
            options(nostack),
        );
    }
    [x0, x1, x2, x3, x4]
}

/// A host call: `x0 = id`, `x1..x3 = args`; returns `(x0, [x1, x2, x3])`.
pub fn hcall(id: u64, args: [u64; 3]) -> (u64, [u64; 3]) {
    let r = hvc([id, args[0], args[1], args[2], 0]);
    (r[0], [r[1], r[2], r[3]])
}

/// A host call by [`HcallId`], decoded: `Ok([x1, x2, x3])` on success.
pub fn call(id: HcallId, args: [u64; 3]) -> Result<[u64; 3], hypercall::HcallFailure> {
    let (x0, r) = hcall(id.smccc_func(), args);
    hypercall::decode_reply(x0, r[0]).map(|_| r)
}

/// Install progress of one CPU.
pub mod state {
    /// Not attempted.
    pub const NONE: u8 = 0;
    /// Init returned success.
    pub const READY: u8 = 1;
    /// HVC_SET_VECTORS failed (x0 in `ret`).
    pub const SET_VECTORS_FAILED: u8 = 2;
    /// The init call failed (x0 in `ret`).
    pub const INIT_FAILED: u8 = 3;
}

/// What a CPU's install left behind.
pub struct CpuInstall {
    /// PA of this CPU's [`InitParams`].
    pub params_pa: u64,
    /// One of [`state`].
    pub state: AtomicU8,
    /// x0 of the failing call.
    pub ret: AtomicU64,
}

/// Writes every CPU's init parameters into the carve-out, copies the per-CPU template
/// into every CPU's block, and returns the per-CPU install slots.
pub fn prepare(
    carve: &Carveout,
    plan: &CarveoutPlan,
    loaded: &Loaded,
    pgd_pa: u64,
    mair: u64,
) -> alloc::vec::Vec<CpuInstall> {
    // SAFETY: the carve-out is the hyp's and nothing runs in it yet.
    let mem = unsafe { carve.bytes() };
    let l = &loaded.layout;
    let template = l.percpu.offset as usize..l.percpu.end() as usize;
    let template_hyp_va = loaded.hyp_base + u64::from(l.percpu.offset);
    (0..plan.ncpus)
        .map(|cpu| {
            let block = plan.percpu(cpu) as usize;
            mem.copy_within(template.clone(), block);
            let stack = plan.stack(cpu);
            let params = InitParams {
                mair_el2: mair,
                tcr_el2: hypercall::tcr_el2(loaded.va.hyp_va_bits()),
                tpidr_el2: (loaded.hyp_base + block as u64).wrapping_sub(template_hyp_va),
                stack_hyp_va: loaded.hyp_base + stack.end,
                stack_pa: carve.pa.start + stack.start,
                pgd_pa,
                hcr_el2: HCR_HOST_NVHE_FLAGS,
                vttbr: 0,
                vtcr: 0,
            };
            let at = plan.params(cpu) as usize;
            let dst = &mut mem[at..at + core::mem::size_of::<InitParams>()];
            for (i, v) in [
                params.mair_el2,
                params.tcr_el2,
                params.tpidr_el2,
                params.stack_hyp_va,
                params.stack_pa,
                params.pgd_pa,
                params.hcr_el2,
                params.vttbr,
                params.vtcr,
            ]
            .iter()
            .enumerate()
            {
                dst[i * 8..i * 8 + 8].copy_from_slice(&v.to_le_bytes());
            }
            CpuInstall {
                params_pa: carve.pa.start + at as u64,
                state: AtomicU8::new(state::NONE),
                ret: AtomicU64::new(0),
            }
        })
        .collect()
}

/// Makes the loaded hyp visible to EL2: the whole carve-out (init parameters, page
/// tables, data) is cleaned to PoC because init reads it with the EL2 MMU off; the idmap
/// page is code run with the MMU off; the rest of the text runs with the MMU on, so
/// `sync_text` skips what HAS_CACHE_IDC / HAS_CACHE_DIC make unnecessary.
pub fn publish(carve: &Carveout, layout: &HypLayout) {
    cache::clean_to_poc(carve.va as usize, (carve.pa.end - carve.pa.start) as usize);
    let at = |r: &ImageRange| (carve.va + u64::from(r.offset)) as usize;
    cache::sync_text(
        at(&layout.idmap),
        layout.idmap.size as usize,
        TextTarget::MmuOff,
    );
    cache::sync_text(
        at(&layout.text),
        layout.text.size as usize,
        TextTarget::MmuOn,
    );
}

/// Installs the hyp on this CPU: stub HVC_SET_VECTORS(init vector PA), then the init
/// call with this CPU's parameters.
pub fn install_this_cpu(init_pa: u64, slot: &CpuInstall) {
    let r = hvc([stub::HVC_SET_VECTORS, init_pa, 0, 0, 0]);
    if r[0] != 0 {
        slot.ret.store(r[0], Ordering::Relaxed);
        slot.state
            .store(state::SET_VECTORS_FAILED, Ordering::Release);
        return;
    }
    let r = hvc([HcallId::HypInit.smccc_func(), slot.params_pa, 0, 0, 0]);
    slot.ret.store(r[0], Ordering::Relaxed);
    let s = if r[0] == hypercall::SMCCC_SUCCESS {
        state::READY
    } else {
        state::INIT_FAILED
    };
    slot.state.store(s, Ordering::Release);
}
