//! A builder for synthetic images: code words at chosen offsets plus an alternatives table
//! whose PC-relative fields are computed from absolute offsets.
//!
//! Test-only. The unit tests use it as `crate::patch::testimage`; `tests/patch_props.rs`
//! (and xtask's tests, if they want it) include this file with `#[path]`, so it names
//! crate items only as `crate::alternative::…`, which the including crate re-exports.

use crate::alternative::{AltRecord, CallbackId, CB_BIT};
use std::ops::Range;
use std::vec::Vec;

/// The filler word at byte offset `off`: a `MOVZ` distinct for each word (so a stray
/// write shows) and neither a branch nor a literal load (so it relocates as itself).
pub fn filler(off: usize) -> u32 {
    let n = (off / 4) as u32;
    0xd280_0000 | ((n & 0xffff) << 5) | (n % 31)
}

/// What a record's `alt_offset` field points at.
#[derive(Debug, Clone, Copy)]
pub enum AltField {
    /// Replacement code at this image offset (the field becomes relative to record + 4).
    At(usize),
    /// This raw field value (callback ids, or deliberately bad values).
    Raw(i32),
}

/// A record described with absolute image offsets.
#[derive(Debug, Clone, Copy)]
pub struct RecordSpec {
    /// Image offset of the original code.
    pub orig: usize,
    /// The `alt_offset` field.
    pub alt: AltField,
    /// The raw `cpucap` field (cap number, plus [`CB_BIT`] for callbacks).
    pub cpucap: u16,
    /// `orig_len` in bytes.
    pub orig_len: u8,
    /// `alt_len` in bytes.
    pub alt_len: u8,
}

/// Builds a [`TestImage`].
#[derive(Debug, Clone)]
pub struct ImageBuilder {
    bytes: Vec<u8>,
    records: Vec<RecordSpec>,
}

/// A built image: its bytes and where its table is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    /// The image.
    pub bytes: Vec<u8>,
    /// Byte range of the table.
    pub table: Range<usize>,
}

impl ImageBuilder {
    /// An image of `len` bytes of [`filler`] (a trailing partial word stays zero).
    pub fn new(len: usize) -> ImageBuilder {
        let mut bytes = vec![0u8; len];
        for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&filler(i * 4).to_le_bytes());
        }
        ImageBuilder {
            bytes,
            records: Vec::new(),
        }
    }

    /// Writes `words` from byte offset `off`.
    pub fn words(&mut self, off: usize, words: &[u32]) -> &mut ImageBuilder {
        for (i, w) in words.iter().enumerate() {
            let at = off + 4 * i;
            self.bytes[at..at + 4].copy_from_slice(&w.to_le_bytes());
        }
        self
    }

    /// Adds a plain record: `len` bytes at `orig` replaced by `len` bytes at `alt` when
    /// cap number `cap` is selected.
    pub fn plain(&mut self, orig: usize, alt: usize, len: u8, cap: u16) -> &mut ImageBuilder {
        self.record(RecordSpec {
            orig,
            alt: AltField::At(alt),
            cpucap: cap,
            orig_len: len,
            alt_len: len,
        })
    }

    /// Adds a callback record for the `len`-byte template at `orig`.
    pub fn callback(
        &mut self,
        orig: usize,
        len: u8,
        cap: u16,
        id: CallbackId,
    ) -> &mut ImageBuilder {
        self.record(RecordSpec {
            orig,
            alt: AltField::Raw(id.raw() as i32),
            cpucap: cap | CB_BIT,
            orig_len: len,
            alt_len: 0,
        })
    }

    /// Adds any record.
    pub fn record(&mut self, spec: RecordSpec) -> &mut ImageBuilder {
        self.records.push(spec);
        self
    }

    /// The image with the table written at byte offset `table_at` (the image grows if
    /// the table does not fit).
    pub fn build(&self, table_at: usize) -> TestImage {
        let mut bytes = self.bytes.clone();
        let end = table_at + self.records.len() * 12;
        if bytes.len() < end {
            bytes.resize(end, 0);
        }
        for (i, spec) in self.records.iter().enumerate() {
            let at = table_at + 12 * i;
            let rel = |target: usize, base: usize| -> i32 {
                i32::try_from(target as i64 - base as i64).expect("test image offset fits in i32")
            };
            let record = AltRecord {
                orig_offset: rel(spec.orig, at),
                alt_offset: match spec.alt {
                    AltField::At(alt) => rel(alt, at + 4),
                    AltField::Raw(raw) => raw,
                },
                cpucap: spec.cpucap,
                orig_len: spec.orig_len,
                alt_len: spec.alt_len,
            };
            bytes[at..at + 12].copy_from_slice(&record.to_bytes());
        }
        TestImage {
            bytes,
            table: table_at..end,
        }
    }
}

impl TestImage {
    /// The word at byte offset `off`.
    pub fn word(&self, off: usize) -> u32 {
        word_at(&self.bytes, off)
    }

    /// `n` words from byte offset `off`.
    pub fn words(&self, off: usize, n: usize) -> Vec<u32> {
        (0..n).map(|i| self.word(off + 4 * i)).collect()
    }

    /// Byte offset of record `index`.
    pub fn record_offset(&self, index: usize) -> usize {
        self.table.start + 12 * index
    }
}

/// The little-endian word at byte offset `off` of `bytes`.
pub fn word_at(bytes: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
}
