//! Moving one replacement instruction to the address it will execute at
//! (LINUX-FACTS §1.5): branches that leave the replacement and ADRP are re-targeted,
//! literal loads and ADR are refused, everything else is copied as is.

use super::error::RelocError;
use crate::insn::{self, Insn};

/// Where a replacement block comes from and where it goes, as execution addresses.
#[derive(Debug, Clone, Copy)]
pub(super) struct Move {
    /// First replacement instruction (`R0`).
    pub from: u64,
    /// First original instruction, where the replacement will run.
    pub to: u64,
    /// Length of the replacement in bytes.
    pub len: u64,
}

/// Page base of `addr` for ADRP arithmetic.
const fn page(addr: i128) -> i128 {
    addr & !0xfff
}

/// Clamps an offset to `i64`; anything clamped is far beyond every encoder's reach, so the
/// encoder still reports it as out of range.
fn clamp_offset(off: i128) -> i64 {
    i64::try_from(off).unwrap_or(if off < 0 { i64::MIN } else { i64::MAX })
}

/// The word to write for replacement word `i` (`word`) of `mv`.
pub(super) fn relocate(mv: Move, i: usize, word: u32) -> Result<u32, RelocError> {
    let Some(insn) = insn::decode(word) else {
        return Ok(word);
    };
    if insn.is_unrelocatable_literal() {
        return Err(RelocError::Literal);
    }
    // i < 63, so these cannot overflow: the caller checked that both blocks lie inside an
    // image that does not wrap the address space.
    let a = i128::from(mv.from) + 4 * i as i128;
    let p = i128::from(mv.to) + 4 * i as i128;
    let r0 = i128::from(mv.from);

    if let Some(off) = insn.branch_offset() {
        let target = a + i128::from(off);
        // Inclusive end: a branch to the label just past the replacement means "just past
        // the sequence", which the verbatim copy also means at the original site.
        if r0 <= target && target <= r0 + i128::from(mv.len) {
            return Ok(word);
        }
        let out_of_range = |error| RelocError::BranchOutOfRange {
            target: target as u64,
            site: p as u64,
            error,
        };
        if target < 0 || target > i128::from(u64::MAX) {
            return Err(out_of_range(None));
        }
        let moved = insn
            .with_branch_offset(clamp_offset(target - p))
            .ok_or(out_of_range(None))?;
        return moved.encode().map_err(|e| out_of_range(Some(e)));
    }

    if let Insn::Adrp { rd, offset } = insn {
        let target_page = page(a) + i128::from(offset);
        let out_of_range = |error| RelocError::AdrpOutOfRange {
            target_page: target_page as u64,
            site: p as u64,
            error,
        };
        if target_page < 0 || target_page > i128::from(u64::MAX) {
            return Err(out_of_range(None));
        }
        let moved = Insn::Adrp {
            rd,
            offset: clamp_offset(target_page - page(p)),
        };
        return moved.encode().map_err(|e| out_of_range(Some(e)));
    }

    Ok(word)
}
