//! Applying one alternatives pass to an image held as bytes.
//!
//! The patcher is pure: it is given the image's bytes, the address those bytes execute
//! at, the offset range of the record table inside them, the cap set, the pass mask and a
//! [`CallbackResolver`]. It validates every record before it writes anything; on any bad
//! record the image is left untouched and the error names the record and the reason.
//!
//! | file | owns |
//! | --- | --- |
//! | `mod.rs` | the entry points, the report, the callback contract |
//! | `apply.rs` | validation rounds and the write phase |
//! | `relocate.rs` | moving one replacement instruction (branches, ADRP, literals) |
//! | `error.rs` | [`PatchError`] and its reasons |
//! | `testimage.rs` | (tests only) a builder for synthetic images |
//!
//! Selection is Linux's: a record is applied iff its cap is in the pass mask and in the
//! cap set (LINUX-FACTS §4.5). Validation covers every record, applied or not; only the
//! resolver question ("can you run this callback now?") and the output computation are
//! limited to the records this pass applies.

mod apply;
mod error;
mod relocate;
#[cfg(test)]
pub(crate) mod testimage;
#[cfg(test)]
mod tests;

pub use apply::MAX_SITE_WORDS;
pub use error::{PatchError, RecordFault, RelocError, TableError};

use crate::alternative::{CallbackId, NCALLBACKS};
use crate::cpucaps::{Cap, CapSet};
use crate::insn::InsnError;
use core::fmt;
use core::ops::Range;

/// What a successful pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchReport {
    /// Records in the table.
    pub entries: usize,
    /// Records applied (cap in the set and in the pass mask), plain and callback.
    pub applied: usize,
    /// Applied callback records per callback id (indexed by [`CallbackId::raw`]).
    pub callbacks: [usize; NCALLBACKS],
}

impl PatchReport {
    /// Applied callback records of all ids.
    pub fn callback_total(&self) -> usize {
        self.callbacks.iter().sum()
    }
}

impl fmt::Display for PatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} alternatives applied ({} by callback)",
            self.applied,
            self.entries,
            self.callback_total()
        )
    }
}

/// One site the write phase has just written, handed to the caller for cache maintenance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchedSite {
    /// Index of the record in the table.
    pub index: usize,
    /// Byte offset of the record in the image.
    pub record_offset: usize,
    /// The bytes written, as image offsets.
    pub image_range: Range<usize>,
    /// The bytes written, as execution addresses (what `DC CIVAC` is given).
    pub exec_range: Range<u64>,
    /// The callback that produced the words, or `None` for a plain replacement.
    pub callback: Option<CallbackId>,
}

/// Applies one alternatives pass to `image`.
///
/// * `image`: the whole image, writable (on the target, a writable alias of its text).
/// * `exec_base`: the address `image[0]` executes at. Record pointers, branch targets and
///   ADRP pages are all computed from execution addresses, so the bytes may be written
///   through any alias.
/// * `table`: byte range of the `.altinstructions` records inside `image`.
/// * `caps`, `pass_mask`: a record is applied iff its cap is in both.
/// * `resolver`: runs the callbacks of applied callback records.
///
/// Every record is validated and every applied record's output computed before the first
/// byte is written; on error the image is unchanged (except for
/// [`PatchError::Incomplete`], which only a resolver breaking its contract can cause).
/// The resolver is therefore called twice per applied callback record.
///
/// Cost: linear in the table plus the overlap check, which is O(n log n) for a table
/// sorted by original address (what a linker emits) and O(n²) otherwise. No heap; about
/// 0.5 KiB of stack for the per-site buffers.
pub fn apply_alternatives(
    image: &mut [u8],
    exec_base: u64,
    table: Range<usize>,
    caps: &CapSet,
    pass_mask: &CapSet,
    resolver: &dyn CallbackResolver,
) -> Result<PatchReport, PatchError> {
    apply_alternatives_with(
        image,
        exec_base,
        table,
        caps,
        pass_mask,
        resolver,
        &mut |_| {},
    )
}

/// [`apply_alternatives`], calling `on_patched` after each site is written, in record
/// order, with the site's ranges (for cache maintenance; the caller needs no buffer).
pub fn apply_alternatives_with(
    image: &mut [u8],
    exec_base: u64,
    table: Range<usize>,
    caps: &CapSet,
    pass_mask: &CapSet,
    resolver: &dyn CallbackResolver,
    on_patched: &mut dyn FnMut(&PatchedSite),
) -> Result<PatchReport, PatchError> {
    let pass = apply::Pass {
        exec_base,
        table,
        caps,
        mask: pass_mask,
        resolver,
    };
    let count = pass.check_table(image.len())?;
    let report = pass.validate(image, count)?;
    pass.write(image, count, on_patched)?;
    Ok(report)
}

/// Runs every check of [`apply_alternatives`] (including the callbacks, into a scratch
/// buffer) without writing: what the pass would do, or why it would be refused. For
/// build-time checks of an image.
pub fn check_alternatives(
    image: &[u8],
    exec_base: u64,
    table: Range<usize>,
    caps: &CapSet,
    pass_mask: &CapSet,
    resolver: &dyn CallbackResolver,
) -> Result<PatchReport, PatchError> {
    let pass = apply::Pass {
        exec_base,
        table,
        caps,
        mask: pass_mask,
        resolver,
    };
    let count = pass.check_table(image.len())?;
    pass.validate(image, count)
}

/// What a callback sees of its site.
#[derive(Debug, Clone, Copy)]
pub struct CallbackSite<'a> {
    /// The record's cap (a callback runs only when it is in the set and in the pass).
    pub cap: Cap,
    /// Which callback.
    pub id: CallbackId,
    /// Execution address of the first template instruction.
    pub exec_addr: u64,
    /// The template instructions as they are in the image now.
    pub original: &'a [u32],
}

/// Why a callback refused its site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackError {
    /// The resolver cannot run this callback (for example a layout callback in the boot
    /// pass, before the layout exists).
    Unsupported(CallbackId),
    /// The template has the wrong number of instructions.
    TemplateLength {
        /// What the callback needs.
        expected: usize,
        /// What the site has.
        found: usize,
    },
    /// A template instruction is not of the kind the callback harvests registers from.
    UnexpectedTemplate {
        /// Index of the instruction in the template.
        index: usize,
        /// The instruction word.
        word: u32,
    },
    /// The value to emit cannot be encoded.
    Encode(InsnError),
}

impl fmt::Display for CallbackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallbackError::Unsupported(id) => {
                write!(
                    f,
                    "callback {} is not available in this pass",
                    id.linux_name()
                )
            }
            CallbackError::TemplateLength { expected, found } => write!(
                f,
                "template has {found} instructions, the callback needs {expected}"
            ),
            CallbackError::UnexpectedTemplate { index, word } => {
                write!(
                    f,
                    "template instruction {index} ({word:#010x}) is not the expected kind"
                )
            }
            CallbackError::Encode(e) => write!(f, "cannot encode the patched instruction: {e}"),
        }
    }
}

impl From<InsnError> for CallbackError {
    fn from(e: InsnError) -> Self {
        CallbackError::Encode(e)
    }
}

/// Maps callback ids to the code that runs them. The host implements this once per pass
/// (the boot pass knows only [`CallbackId::PatchNops`]; the system pass knows the layout).
pub trait CallbackResolver {
    /// Whether this resolver can run `id`; asked for every callback record while
    /// validating, before anything is written.
    fn supports(&self, id: CallbackId) -> bool;

    /// Computes the patched words for `site` into `out` (`out.len() ==
    /// site.original.len()`; `out` starts as a copy of the original, so words the
    /// callback leaves alone keep their default instruction). Must be deterministic: the
    /// patcher calls it once to validate and once to write.
    fn patch(&self, site: &CallbackSite<'_>, out: &mut [u32]) -> Result<(), CallbackError>;
}
