//! Why a pass was refused: [`PatchError`] and the reasons it carries.

use super::CallbackError;
use crate::alternative::{CallbackId, ALT_RECORD_SIZE};
use crate::insn::InsnError;
use core::fmt;

/// Why the patcher refused a pass.
///
/// Every variant except [`PatchError::Incomplete`] is reported before anything is
/// written: the image is then byte-for-byte what it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchError {
    /// The record table as a whole is unusable; no record was looked at.
    Table {
        /// Start of the table as given (byte offset in the image).
        start: usize,
        /// End of the table as given (byte offset in the image, exclusive).
        end: usize,
        /// What is wrong.
        reason: TableError,
    },
    /// One record is bad (or would produce bad code).
    Record {
        /// Index of the record in the table.
        index: usize,
        /// Byte offset of the record in the image.
        offset: usize,
        /// What is wrong.
        reason: RecordFault,
    },
    /// The resolver failed on the second (writing) call for a site it accepted on the
    /// first (validating) call. This breaks the [`super::CallbackResolver`] contract; the
    /// records before `index` that were selected have been written, nothing after.
    Incomplete {
        /// Index of the record whose callback failed.
        index: usize,
        /// Byte offset of the record in the image.
        offset: usize,
        /// What the callback said.
        reason: RecordFault,
    },
}

/// Why the record table as a whole is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// The table range is reversed or ends past the image.
    OutOfImage {
        /// Length of the image in bytes.
        image_len: usize,
    },
    /// The table length is not a multiple of the record size.
    PartialRecord {
        /// Length of the table in bytes.
        len: usize,
    },
    /// The table's execution address is not 4-byte aligned.
    Misaligned {
        /// Execution address of the table.
        addr: u64,
    },
    /// The image's execution addresses would run past the top of the address space.
    AddressOverflow {
        /// Execution address of the image's first byte.
        exec_base: u64,
        /// Length of the image in bytes.
        image_len: usize,
    },
}

/// Why one record is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFault {
    /// The record's 12 bytes could not be read. Cannot happen once the table passed its
    /// own checks; it exists so that no path of the patcher panics.
    Truncated,
    /// The cap number (callback bit stripped) is not a known cap.
    CapOutOfRange {
        /// The cap number.
        cap: u16,
    },
    /// `orig_len` is zero or not a multiple of 4.
    BadOrigLen {
        /// The length in bytes.
        len: u8,
    },
    /// The original code does not lie inside the image.
    OrigOutOfImage {
        /// Where it would start, as a byte offset from the image start.
        start: i64,
        /// Its length in bytes.
        len: u8,
    },
    /// The replacement code does not lie inside the image.
    AltOutOfImage {
        /// Where it would start, as a byte offset from the image start.
        start: i64,
        /// Its length in bytes.
        len: u8,
    },
    /// The original code's execution address is not 4-byte aligned.
    OrigMisaligned {
        /// The address.
        addr: u64,
    },
    /// The replacement code's execution address is not 4-byte aligned.
    AltMisaligned {
        /// The address.
        addr: u64,
    },
    /// The original code overlaps the record table.
    OrigOverlapsTable,
    /// The replacement code overlaps the record table.
    AltOverlapsTable,
    /// A plain record whose replacement is not as long as its original.
    LengthMismatch {
        /// `orig_len`.
        orig_len: u8,
        /// `alt_len`.
        alt_len: u8,
    },
    /// A callback record with replacement bytes.
    CallbackAltLen {
        /// `alt_len`.
        alt_len: u8,
    },
    /// A callback record whose id is not a known [`CallbackId`].
    UnknownCallback {
        /// The raw `alt_offset` field.
        raw: i32,
    },
    /// A callback record whose template is not the size its callback needs.
    TemplateLength {
        /// The callback.
        id: CallbackId,
        /// Instructions the callback needs.
        expected: usize,
        /// Instructions the site has.
        found: usize,
    },
    /// A selected callback record whose callback the resolver cannot run in this pass.
    UnsupportedCallback {
        /// The callback.
        id: CallbackId,
    },
    /// The original code overlaps another record's original code.
    OrigOverlapsOrig {
        /// Index of the other record.
        other: usize,
    },
    /// The replacement code overlaps a record's original code.
    AltOverlapsOrig {
        /// Index of the record whose original code it overlaps (may be this record).
        other: usize,
    },
    /// A replacement instruction cannot be moved to the original site.
    Relocation {
        /// Index of the instruction in the replacement.
        word_index: usize,
        /// The instruction word.
        word: u32,
        /// Why.
        reason: RelocError,
    },
    /// The callback refused the site.
    Callback {
        /// The callback.
        id: CallbackId,
        /// What it said.
        error: CallbackError,
    },
}

/// Why one replacement instruction cannot be moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelocError {
    /// A literal load or ADR: PC-relative data access the patcher does not relocate.
    Literal,
    /// A branch leaving the replacement whose target is out of reach from the site (or
    /// outside the address space).
    BranchOutOfRange {
        /// Execution address of the branch target.
        target: u64,
        /// Execution address the branch would run at.
        site: u64,
        /// The encoder's complaint, if it got that far.
        error: Option<InsnError>,
    },
    /// An ADRP whose target page is out of reach from the site's page.
    AdrpOutOfRange {
        /// Execution address of the target page.
        target_page: u64,
        /// Execution address the ADRP would run at.
        site: u64,
        /// The encoder's complaint, if it got that far.
        error: Option<InsnError>,
    },
}

impl fmt::Display for PatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchError::Table { start, end, reason } => {
                write!(f, "alternatives table {start:#x}..{end:#x}: {reason}")
            }
            PatchError::Record {
                index,
                offset,
                reason,
            } => write!(
                f,
                "alternative record {index} (image offset {offset:#x}): {reason}"
            ),
            PatchError::Incomplete {
                index,
                offset,
                reason,
            } => write!(
                f,
                "alternative record {index} (image offset {offset:#x}) failed while writing, \
                 image partly patched: {reason}"
            ),
        }
    }
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TableError::OutOfImage { image_len } => {
                write!(f, "not a range inside the image ({image_len:#x} bytes)")
            }
            TableError::PartialRecord { len } => write!(
                f,
                "length {len} is not a multiple of the {ALT_RECORD_SIZE}-byte record"
            ),
            TableError::Misaligned { addr } => {
                write!(f, "execution address {addr:#x} is not 4-byte aligned")
            }
            TableError::AddressOverflow {
                exec_base,
                image_len,
            } => write!(
                f,
                "an image of {image_len:#x} bytes at {exec_base:#x} runs past the top of the \
                 address space"
            ),
        }
    }
}

impl fmt::Display for RecordFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordFault::Truncated => write!(f, "record cannot be read"),
            RecordFault::CapOutOfRange { cap } => write!(f, "cap number {cap} is not a known cap"),
            RecordFault::BadOrigLen { len } => {
                write!(f, "original length {len} is not a non-zero multiple of 4")
            }
            RecordFault::OrigOutOfImage { start, len } => write!(
                f,
                "original code at image offset {start:#x} (+{len} bytes) is outside the image"
            ),
            RecordFault::AltOutOfImage { start, len } => write!(
                f,
                "replacement code at image offset {start:#x} (+{len} bytes) is outside the image"
            ),
            RecordFault::OrigMisaligned { addr } => {
                write!(f, "original code at {addr:#x} is not 4-byte aligned")
            }
            RecordFault::AltMisaligned { addr } => {
                write!(f, "replacement code at {addr:#x} is not 4-byte aligned")
            }
            RecordFault::OrigOverlapsTable => {
                write!(f, "original code overlaps the alternatives table")
            }
            RecordFault::AltOverlapsTable => {
                write!(f, "replacement code overlaps the alternatives table")
            }
            RecordFault::LengthMismatch { orig_len, alt_len } => write!(
                f,
                "replacement length {alt_len} differs from original length {orig_len}"
            ),
            RecordFault::CallbackAltLen { alt_len } => write!(
                f,
                "callback record has replacement length {alt_len}, must be 0"
            ),
            RecordFault::UnknownCallback { raw } => write!(f, "unknown callback id {raw}"),
            RecordFault::TemplateLength {
                id,
                expected,
                found,
            } => write!(
                f,
                "{} needs a template of {expected} instructions, the site has {found}",
                id.linux_name()
            ),
            RecordFault::UnsupportedCallback { id } => write!(
                f,
                "callback {} is not available in this pass",
                id.linux_name()
            ),
            RecordFault::OrigOverlapsOrig { other } => {
                write!(f, "original code overlaps that of record {other}")
            }
            RecordFault::AltOverlapsOrig { other } => {
                write!(
                    f,
                    "replacement code overlaps the original code of record {other}"
                )
            }
            RecordFault::Relocation {
                word_index,
                word,
                reason,
            } => write!(
                f,
                "replacement instruction {word_index} ({word:#010x}): {reason}"
            ),
            RecordFault::Callback { id, error } => {
                write!(f, "callback {}: {error}", id.linux_name())
            }
        }
    }
}

impl fmt::Display for RelocError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelocError::Literal => write!(
                f,
                "literal loads and ADR cannot be moved out of a replacement"
            ),
            RelocError::BranchOutOfRange {
                target,
                site,
                error,
            } => {
                write!(
                    f,
                    "branch target {target:#x} is out of reach from {site:#x}"
                )?;
                match error {
                    Some(e) => write!(f, " ({e})"),
                    None => Ok(()),
                }
            }
            RelocError::AdrpOutOfRange {
                target_page,
                site,
                error,
            } => {
                write!(
                    f,
                    "ADRP page {target_page:#x} is out of reach from {site:#x}"
                )?;
                match error {
                    Some(e) => write!(f, " ({e})"),
                    None => Ok(()),
                }
            }
        }
    }
}
