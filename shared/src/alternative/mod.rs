//! The alternative record (Linux's 12-byte `alt_instr`), callback ids and the site macros.
//!
//! Both images carry their records in an `.altinstructions` section. A plain record points
//! at original and replacement code of equal length; a callback record has bit 15 of its
//! cap field set, `alt_len == 0`, and — because a hyp-image record cannot point at host
//! code — holds a [`CallbackId`] in `alt_offset` instead of a PC-relative pointer. The
//! host resolves the id to one of its functions when it patches (see [`crate::patch`]).

mod macros;
mod record;

#[cfg(target_arch = "aarch64")]
pub use macros::{
    boot_capabilities_finalized, final_ctr_el0, kern_hyp_va, kimage_voffset, speculation_barrier,
    system_capabilities_finalized,
};
pub use macros::{callback_cap_field, callback_template_bytes, plain_cap_field, site_cap_number};
pub use record::{AltRecord, RecordError, ALT_RECORD_SIZE, CB_BIT};

/// Callbacks, named by a small stable id because the hyp image cannot point at host code.
/// Both images use the same ids; the patcher's resolver maps them to host functions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u16)]
pub enum CallbackId {
    /// `alt_cb_patch_nops`: every template word becomes a NOP. Serves every `likely` check.
    PatchNops = 0,
    /// `kvm_update_va_mask`: the five-instruction `kern_hyp_va` transform.
    KernHypVa = 1,
    /// `kvm_get_kimage_voffset`: MOVZ/MOVK×3 of kimage_voffset.
    KimageVoffset = 2,
    /// `kvm_compute_final_ctr_el0`: MOVZ/MOVK×3 of the sanitised CTR_EL0.
    FinalCtrEl0 = 3,
    /// `kvm_patch_vector_branch`: MOVZ/MOVK×2 + BR to the hyp vector (Spectre-v3a).
    HypVectorBranch = 4,
    /// `spectre_bhb_patch_loop_iter`: `MOVZ Wd, #k` with the system BHB loop count.
    BhbLoopIter = 5,
}

impl CallbackId {
    /// Every callback id, in id order.
    pub const ALL: [CallbackId; NCALLBACKS] = [
        CallbackId::PatchNops,
        CallbackId::KernHypVa,
        CallbackId::KimageVoffset,
        CallbackId::FinalCtrEl0,
        CallbackId::HypVectorBranch,
        CallbackId::BhbLoopIter,
    ];

    /// The id with raw value `raw`, if it is known.
    pub const fn from_raw(raw: u32) -> Option<CallbackId> {
        if (raw as usize) < NCALLBACKS {
            Some(CallbackId::ALL[raw as usize])
        } else {
            None
        }
    }

    /// The raw value stored in a record's `alt_offset`.
    pub const fn raw(self) -> u32 {
        self as u32
    }

    /// Number of template instructions the callback needs, or `None` if any length
    /// (at least one instruction) will do.
    pub const fn template_len(self) -> Option<usize> {
        match self {
            CallbackId::PatchNops => None,
            CallbackId::KernHypVa => Some(5),
            CallbackId::KimageVoffset | CallbackId::FinalCtrEl0 | CallbackId::HypVectorBranch => {
                Some(4)
            }
            CallbackId::BhbLoopIter => Some(1),
        }
    }

    /// The Linux function this callback corresponds to.
    pub const fn linux_name(self) -> &'static str {
        match self {
            CallbackId::PatchNops => "alt_cb_patch_nops",
            CallbackId::KernHypVa => "kvm_update_va_mask",
            CallbackId::KimageVoffset => "kvm_get_kimage_voffset",
            CallbackId::FinalCtrEl0 => "kvm_compute_final_ctr_el0",
            CallbackId::HypVectorBranch => "kvm_patch_vector_branch",
            CallbackId::BhbLoopIter => "spectre_bhb_patch_loop_iter",
        }
    }
}

/// Number of callback ids.
pub const NCALLBACKS: usize = 6;
