//! The two phases of a pass: validate every record and compute every selected site's
//! output without writing, then write.
//!
//! Validation runs in rounds, and the first failure of the earliest round is reported:
//! 1. the table as a whole;
//! 2. each record on its own, in index order (cap, lengths, ranges, alignment, callback
//!    id and template size; for selected callback records also `resolver.supports`);
//! 3. overlaps between records, in index order;
//! 4. the output of each selected record, in index order (relocation, callbacks).
//!
//! Round 3 makes the result independent of record order: no two original ranges overlap,
//! and no replacement overlaps any original range, so no record reads bytes another
//! record writes. That is also what lets the write phase recompute each output from the
//! image and get what round 4 got.

use super::error::{PatchError, RecordFault, TableError};
use super::relocate::{relocate, Move};
use super::{CallbackResolver, CallbackSite, PatchReport, PatchedSite};
use crate::alternative::{AltRecord, CallbackId, ALT_RECORD_SIZE};
use crate::cpucaps::{Cap, CapSet};
use core::ops::Range;

/// Most instructions one site can have: `orig_len` is a `u8` holding a multiple of 4.
pub const MAX_SITE_WORDS: usize = u8::MAX as usize / 4;

/// What a pass needs besides the image bytes.
pub(super) struct Pass<'a> {
    /// Execution address of image byte 0.
    pub exec_base: u64,
    /// Byte range of the record table in the image.
    pub table: Range<usize>,
    /// The cap set.
    pub caps: &'a CapSet,
    /// The caps this pass handles.
    pub mask: &'a CapSet,
    /// Runs callbacks.
    pub resolver: &'a dyn CallbackResolver,
}

/// One record, parsed and checked on its own.
struct Entry {
    cap: Cap,
    orig: Range<usize>,
    kind: Kind,
    /// Whether the record is applied in this pass (cap in set and in mask).
    selected: bool,
}

/// What replaces the original code.
enum Kind {
    /// Replacement code at these image bytes.
    Plain { alt: Range<usize> },
    /// The output of a callback.
    Callback(CallbackId),
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// The image bytes `start..start+len` where `start = base + rel`, if they lie in an image
/// of `image_len` bytes; otherwise the would-be start for the error message.
fn span(image_len: usize, base: usize, rel: i32, len: u8) -> Result<Range<usize>, i64> {
    // base < image_len <= isize::MAX, so the sum cannot overflow an i64.
    let start = i64::try_from(base)
        .unwrap_or(i64::MAX)
        .saturating_add(i64::from(rel));
    let inside = usize::try_from(start)
        .ok()
        .and_then(|s| Some(s..s.checked_add(usize::from(len))?))
        .filter(|r| r.end <= image_len);
    inside.ok_or(start)
}

/// The little-endian words of `bytes`.
fn words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

impl Pass<'_> {
    /// Round 1: the table's shape. Returns the number of records.
    pub fn check_table(&self, image_len: usize) -> Result<usize, PatchError> {
        let fail = |reason| PatchError::Table {
            start: self.table.start,
            end: self.table.end,
            reason,
        };
        if self.table.start > self.table.end || self.table.end > image_len {
            return Err(fail(TableError::OutOfImage { image_len }));
        }
        // Every execution address below is exec_base + an offset <= image_len; refusing a
        // wrapping image once here keeps all of them exact.
        let fits = u64::try_from(image_len)
            .ok()
            .and_then(|len| self.exec_base.checked_add(len));
        if fits.is_none() {
            return Err(fail(TableError::AddressOverflow {
                exec_base: self.exec_base,
                image_len,
            }));
        }
        let len = self.table.end - self.table.start;
        if !len.is_multiple_of(ALT_RECORD_SIZE) {
            return Err(fail(TableError::PartialRecord { len }));
        }
        let addr = self.exec(self.table.start);
        if !addr.is_multiple_of(4) {
            return Err(fail(TableError::Misaligned { addr }));
        }
        Ok(len / ALT_RECORD_SIZE)
    }

    /// Execution address of image offset `off` (`off <= image.len()`, checked in round 1).
    fn exec(&self, off: usize) -> u64 {
        self.exec_base.wrapping_add(off as u64)
    }

    fn record_offset(&self, index: usize) -> usize {
        self.table.start + index * ALT_RECORD_SIZE
    }

    fn fault(&self, index: usize, reason: RecordFault) -> PatchError {
        PatchError::Record {
            index,
            offset: self.record_offset(index),
            reason,
        }
    }

    /// Round 2 for one record (except the resolver question, see [`Pass::validate`]).
    fn entry(&self, image: &[u8], index: usize) -> Result<Entry, RecordFault> {
        let at = self.record_offset(index);
        // The table lies inside the image (round 1), so the record can be read.
        let record = image
            .get(at..)
            .and_then(|b| AltRecord::from_bytes(b).ok())
            .ok_or(RecordFault::Truncated)?;

        let cap_number = record.cap_number();
        let cap =
            Cap::from_number(cap_number).ok_or(RecordFault::CapOutOfRange { cap: cap_number })?;
        let len = record.orig_len;
        if len == 0 || !len.is_multiple_of(4) {
            return Err(RecordFault::BadOrigLen { len });
        }
        let orig = span(image.len(), at, record.orig_offset, len)
            .map_err(|start| RecordFault::OrigOutOfImage { start, len })?;
        let addr = self.exec(orig.start);
        if !addr.is_multiple_of(4) {
            return Err(RecordFault::OrigMisaligned { addr });
        }
        if overlaps(&orig, &self.table) {
            return Err(RecordFault::OrigOverlapsTable);
        }

        let kind = if record.is_callback() {
            if record.alt_len != 0 {
                return Err(RecordFault::CallbackAltLen {
                    alt_len: record.alt_len,
                });
            }
            let id = record.callback().ok_or(RecordFault::UnknownCallback {
                raw: record.alt_offset,
            })?;
            let found = usize::from(len / 4);
            if let Some(expected) = id.template_len() {
                if found != expected {
                    return Err(RecordFault::TemplateLength {
                        id,
                        expected,
                        found,
                    });
                }
            }
            Kind::Callback(id)
        } else {
            if record.alt_len != len {
                return Err(RecordFault::LengthMismatch {
                    orig_len: len,
                    alt_len: record.alt_len,
                });
            }
            // alt_offset is relative to the record's second field.
            let alt = span(image.len(), at + 4, record.alt_offset, len)
                .map_err(|start| RecordFault::AltOutOfImage { start, len })?;
            let addr = self.exec(alt.start);
            if !addr.is_multiple_of(4) {
                return Err(RecordFault::AltMisaligned { addr });
            }
            if overlaps(&alt, &self.table) {
                return Err(RecordFault::AltOverlapsTable);
            }
            Kind::Plain { alt }
        };
        Ok(Entry {
            cap,
            orig,
            kind,
            selected: self.caps.has(cap) && self.mask.has(cap),
        })
    }

    /// The original range of record `index`, which round 2 already accepted.
    fn orig(&self, image: &[u8], index: usize) -> Result<Range<usize>, PatchError> {
        self.entry(image, index)
            .map(|e| e.orig)
            .map_err(|reason| self.fault(index, reason))
    }

    /// Rounds 2 to 4. Writes nothing; returns what a write would do.
    pub fn validate(&self, image: &[u8], count: usize) -> Result<PatchReport, PatchError> {
        let mut report = PatchReport {
            entries: count,
            applied: 0,
            callbacks: [0; crate::alternative::NCALLBACKS],
        };

        // Round 2.
        for index in 0..count {
            let entry = self
                .entry(image, index)
                .map_err(|reason| self.fault(index, reason))?;
            if let (true, Kind::Callback(id)) = (entry.selected, &entry.kind) {
                if !self.resolver.supports(*id) {
                    return Err(self.fault(index, RecordFault::UnsupportedCallback { id: *id }));
                }
            }
        }

        // Round 3.
        self.check_overlaps(image, count)?;

        // Round 4.
        let mut buf = [0u32; MAX_SITE_WORDS];
        for index in 0..count {
            let entry = self
                .entry(image, index)
                .map_err(|reason| self.fault(index, reason))?;
            if !entry.selected {
                continue;
            }
            self.output(image, &entry, &mut buf)
                .map_err(|reason| self.fault(index, reason))?;
            report.applied += 1;
            if let Kind::Callback(id) = entry.kind {
                report.callbacks[id as usize] += 1;
            }
        }
        Ok(report)
    }

    /// Round 3. Overlapping originals would make the result depend on which record is
    /// applied last; a replacement inside some original range would be read after (or
    /// before) that range is rewritten, again depending on order. Both are refused for
    /// every record, selected or not, so a table is valid or not regardless of caps.
    ///
    /// Tables are normally sorted by original address, which allows an O(n log n) check;
    /// other tables get the O(n²) one. Both report the same record and the same `other`:
    /// for originals, the first record overlapping an earlier one and the earliest such
    /// (in a sorted table that is its predecessor); for replacements, the first record
    /// whose replacement overlaps an original and the lowest-addressed such original.
    fn check_overlaps(&self, image: &[u8], count: usize) -> Result<(), PatchError> {
        let mut sorted = true;
        for index in 1..count {
            if self.orig(image, index - 1)?.start > self.orig(image, index)?.start {
                sorted = false;
                break;
            }
        }

        for index in 1..count {
            let orig = self.orig(image, index)?;
            let earlier = if sorted { index - 1..index } else { 0..index };
            for other in earlier {
                if overlaps(&orig, &self.orig(image, other)?) {
                    return Err(self.fault(index, RecordFault::OrigOverlapsOrig { other }));
                }
            }
        }

        for index in 0..count {
            let entry = self
                .entry(image, index)
                .map_err(|reason| self.fault(index, reason))?;
            let Kind::Plain { alt } = entry.kind else {
                continue;
            };
            let hit = if sorted {
                // Originals are sorted and disjoint, so their ends rise too: the first one
                // ending after the replacement starts is the lowest that can overlap it.
                let (mut lo, mut hi) = (0, count);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if self.orig(image, mid)?.end <= alt.start {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
                if lo < count && overlaps(&alt, &self.orig(image, lo)?) {
                    Some(lo)
                } else {
                    None
                }
            } else {
                let mut best: Option<(usize, usize)> = None;
                for other in 0..count {
                    let orig = self.orig(image, other)?;
                    if overlaps(&alt, &orig) && best.is_none_or(|(_, start)| orig.start < start) {
                        best = Some((other, orig.start));
                    }
                }
                best.map(|(other, _)| other)
            };
            if let Some(other) = hit {
                return Err(self.fault(index, RecordFault::AltOverlapsOrig { other }));
            }
        }
        Ok(())
    }

    /// The words a selected record writes, into `buf`; returns how many.
    fn output(
        &self,
        image: &[u8],
        entry: &Entry,
        buf: &mut [u32; MAX_SITE_WORDS],
    ) -> Result<usize, RecordFault> {
        let n = entry.orig.len() / 4;
        let to = self.exec(entry.orig.start);
        match &entry.kind {
            Kind::Plain { alt } => {
                let mv = Move {
                    from: self.exec(alt.start),
                    to,
                    len: alt.len() as u64,
                };
                for (i, (slot, word)) in buf.iter_mut().zip(words(&image[alt.clone()])).enumerate()
                {
                    *slot = relocate(mv, i, word).map_err(|reason| RecordFault::Relocation {
                        word_index: i,
                        word,
                        reason,
                    })?;
                }
            }
            Kind::Callback(id) => {
                let mut original = [0u32; MAX_SITE_WORDS];
                for (slot, word) in original.iter_mut().zip(words(&image[entry.orig.clone()])) {
                    *slot = word;
                }
                // Words the callback leaves alone keep their default instruction.
                buf[..n].copy_from_slice(&original[..n]);
                let site = CallbackSite {
                    cap: entry.cap,
                    id: *id,
                    exec_addr: to,
                    original: &original[..n],
                };
                self.resolver
                    .patch(&site, &mut buf[..n])
                    .map_err(|error| RecordFault::Callback { id: *id, error })?;
            }
        }
        Ok(n)
    }

    /// The write phase, after [`Pass::validate`] succeeded on the same image. Recomputes
    /// each selected record's output (round 3 guarantees no earlier write changed its
    /// inputs) and writes it.
    pub fn write(
        &self,
        image: &mut [u8],
        count: usize,
        on_patched: &mut dyn FnMut(&PatchedSite),
    ) -> Result<(), PatchError> {
        let mut buf = [0u32; MAX_SITE_WORDS];
        for index in 0..count {
            let incomplete = |reason| PatchError::Incomplete {
                index,
                offset: self.record_offset(index),
                reason,
            };
            let entry = self.entry(image, index).map_err(incomplete)?;
            if !entry.selected {
                continue;
            }
            let n = self.output(image, &entry, &mut buf).map_err(incomplete)?;
            for (dst, word) in image[entry.orig.clone()].chunks_exact_mut(4).zip(&buf[..n]) {
                dst.copy_from_slice(&word.to_le_bytes());
            }
            on_patched(&PatchedSite {
                index,
                record_offset: self.record_offset(index),
                exec_range: self.exec(entry.orig.start)..self.exec(entry.orig.end),
                image_range: entry.orig,
                callback: match entry.kind {
                    Kind::Callback(id) => Some(id),
                    Kind::Plain { .. } => None,
                },
            });
        }
        Ok(())
    }
}
