//! The two callback resolvers the host hands to the patcher: one per alternatives pass.
//!
//! The boot pass runs before the hyp VA layout exists, so [`BootPassCallbacks`] knows
//! only the shared NOP callback. [`SystemPassCallbacks`] carries every value the layout
//! callbacks emit and runs all of them.
//!
//! Cap tagging: a callback runs only when its record's cap is in the finalized set and
//! in the pass. The hyp-vector-branch sites are tagged with `SPECTRE_V3A` and the BHB
//! loop-count sites with `SPECTRE_BHB` themselves (Linux tags them `ALWAYS_SYSTEM` and
//! tests the cap inside the callback); so these callbacks never test a cap, and on an
//! unaffected system their templates (NOPs / the default count) stay as they are.

use crate::alternative::CallbackId;
use crate::patch::{CallbackError, CallbackResolver, CallbackSite};
use crate::va_layout::{
    patch_bhb_loop_iter, patch_hyp_vector_branch, patch_kern_hyp_va, patch_mov_imm64, patch_nops,
    HypVaLayout,
};

/// Resolver for the boot pass: only [`CallbackId::PatchNops`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BootPassCallbacks;

impl CallbackResolver for BootPassCallbacks {
    fn supports(&self, id: CallbackId) -> bool {
        id == CallbackId::PatchNops
    }

    fn patch(&self, site: &CallbackSite<'_>, out: &mut [u32]) -> Result<(), CallbackError> {
        match site.id {
            CallbackId::PatchNops => patch_nops(site, out),
            other => Err(CallbackError::Unsupported(other)),
        }
    }
}

/// Resolver for the system pass: every callback id, with the values they emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemPassCallbacks {
    /// The hyp VA layout (for `kern_hyp_va` sites).
    pub layout: HypVaLayout,
    /// Kernel-image VA − PA of the host image (see [`crate::va_layout::kimage_voffset`]).
    pub kimage_voffset: u64,
    /// The system-wide sanitised CTR_EL0.
    pub ctr_el0: u64,
    /// Hyp VA of the real hyp vector table (2 KiB aligned).
    pub hyp_vector: u64,
    /// The system's Spectre-BHB loop count (8, 11, 24 or 32; not 0).
    pub bhb_loop_k: u8,
}

impl CallbackResolver for SystemPassCallbacks {
    fn supports(&self, _id: CallbackId) -> bool {
        true
    }

    fn patch(&self, site: &CallbackSite<'_>, out: &mut [u32]) -> Result<(), CallbackError> {
        match site.id {
            CallbackId::PatchNops => patch_nops(site, out),
            CallbackId::KernHypVa => patch_kern_hyp_va(&self.layout, site, out),
            CallbackId::KimageVoffset => patch_mov_imm64(self.kimage_voffset, site, out),
            CallbackId::FinalCtrEl0 => patch_mov_imm64(self.ctr_el0, site, out),
            CallbackId::HypVectorBranch => patch_hyp_vector_branch(self.hyp_vector, site, out),
            CallbackId::BhbLoopIter => patch_bhb_loop_iter(self.bhb_loop_k, site, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpucaps::Cap;
    use crate::insn::NOP;
    use crate::va_layout::{kern_hyp_va_template, mov_imm64_words, LayoutParams, RamRange};

    fn system() -> SystemPassCallbacks {
        let ram = [RamRange {
            base: 0x4000_0000,
            size: 1 << 30,
        }];
        let layout = HypVaLayout::compute(&LayoutParams::new(&ram, 0x4020_0000, 0x4020_0000))
            .expect("valid layout");
        SystemPassCallbacks {
            layout,
            kimage_voffset: 0xffff_7fff_c7e0_0000,
            ctr_el0: 0x8444_c004,
            hyp_vector: 0x0000_8000_0030_0000,
            bhb_loop_k: 24,
        }
    }

    fn run(
        r: &dyn CallbackResolver,
        id: CallbackId,
        template: &[u32],
    ) -> Result<[u32; 8], CallbackError> {
        let mut buf = [0u32; 8];
        let out = &mut buf[..template.len()];
        out.copy_from_slice(template);
        let site = CallbackSite {
            cap: Cap::AlwaysSystem,
            id,
            exec_addr: 0x1000,
            original: template,
        };
        r.patch(&site, out)?;
        Ok(buf)
    }

    #[test]
    fn boot_pass_only_nops() {
        let boot = BootPassCallbacks;
        for id in CallbackId::ALL {
            assert_eq!(boot.supports(id), id == CallbackId::PatchNops);
        }
        let t = [0x1400_0002u32];
        assert_eq!(run(&boot, CallbackId::PatchNops, &t).map(|b| b[0]), Ok(NOP));
        let kv = kern_hyp_va_template(0).expect("template");
        assert_eq!(
            run(&boot, CallbackId::KernHypVa, &kv),
            Err(CallbackError::Unsupported(CallbackId::KernHypVa))
        );
    }

    #[test]
    fn system_pass_dispatches_by_id() {
        let sys = system();
        assert!(CallbackId::ALL.iter().all(|&id| sys.supports(id)));
        let mq = mov_imm64_words(1, 0).expect("template");
        let got = run(&sys, CallbackId::KimageVoffset, &mq).expect("patched");
        assert_eq!(
            got[..4],
            mov_imm64_words(1, sys.kimage_voffset).expect("words")
        );
        let got = run(&sys, CallbackId::FinalCtrEl0, &mq).expect("patched");
        assert_eq!(got[..4], mov_imm64_words(1, sys.ctr_el0).expect("words"));
        let kv = kern_hyp_va_template(0).expect("template");
        let got = run(&sys, CallbackId::KernHypVa, &kv).expect("patched");
        assert_eq!(got[0], 0x9240_7400);
        let got = run(&sys, CallbackId::HypVectorBranch, &[NOP; 4]).expect("patched");
        assert_eq!(got[3], 0xd61f_0000);
        let got = run(&sys, CallbackId::BhbLoopIter, &mq[..1]).expect("patched");
        assert_eq!(got[0], crate::insn::movz_x(1, 24, 0).expect("movz"));
        let got = run(&sys, CallbackId::PatchNops, &kv).expect("patched");
        assert_eq!(got[..5], [NOP; 5]);
        // A kern_hyp_va template given to the MOV-q callback is refused, not mangled.
        assert!(matches!(
            run(&sys, CallbackId::KimageVoffset, &kv[..4]),
            Err(CallbackError::UnexpectedTemplate { index: 0, .. })
        ));
    }
}
