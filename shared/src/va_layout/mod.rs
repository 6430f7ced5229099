//! The hyp VA layout (`kern_hyp_va`) and the callbacks that patch layout constants.
//!
//! [`HypVaLayout::compute`] turns the RAM map, the linear-map parameters and the idmap PA
//! into `tag_lsb`, `va_mask` and `tag_val` exactly as LINUX-FACTS §5.1 describes (hyp
//! range in the VA half the idmap is not in; optional random tag bits), and refuses a
//! layout whose tag cannot be patched into the five-instruction site. The `patch_*`
//! functions are the callback bodies; [`crate::callbacks`] maps callback ids to them.

mod layout;
mod patchers;

pub use layout::{
    default_memstart, kimage_voffset, HypVaLayout, LayoutError, LayoutParams, RamRange,
    DEFAULT_PAGE_OFFSET, DEFAULT_VA_BITS, MAX_IDMAP_VA_BITS, MAX_VA_BITS, MEMSTART_ALIGN,
    MIN_VA_BITS, TAG_VAL_BITS,
};
pub use patchers::{
    kern_hyp_va_template, mov_imm64_words, patch_bhb_loop_iter, patch_hyp_vector_branch,
    patch_kern_hyp_va, patch_mov_imm64, patch_nops, BHB_LOOP_ITER_LEN, HYP_VECTOR_BRANCH_LEN,
    KERN_HYP_VA_LEN, MOV_IMM64_LEN, VECTOR_PREAMBLE,
};
