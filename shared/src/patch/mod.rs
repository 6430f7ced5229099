//! Applying one alternatives pass to an image held as bytes.
//!
//! The patcher is pure: it is given the image's bytes, the address those bytes execute
//! at, the offset range of the record table inside them, the cap set, the pass mask and a
//! [`CallbackResolver`]. It validates every record before it writes anything; on any bad
//! record the image is left untouched and the error names the record and the reason.

use crate::alternative::CallbackId;
use crate::cpucaps::Cap;
use crate::insn::InsnError;
use core::fmt;

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
