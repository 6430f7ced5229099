//! The hyp image: the flat, position-independent file xtask makes from the el2 ELF and the
//! host loads, verifies, relocates and patches (DESIGN §5).
//!
//! # Format (version 1, all integers little-endian)
//!
//! The image is linked at base 0 and an image offset *is* the link-time address: byte `o`
//! of the file is the byte the ELF placed at address `o`. Page 0 holds the header (the
//! linker script leaves it empty); the sections follow at page-aligned offsets.
//!
//! ```text
//! off   size  field
//! 0x00  8     magic          b"RSHYPIMG"
//! 0x08  8     checksum       FNV-1a 64 of bytes [0x10, image_size)  (see [`fnv1a64`])
//! 0x10  4     version        1
//! 0x14  4     header_size    0x70 (bytes of this header)
//! 0x18  4     image_size     bytes in the file
//! 0x1c  4     mem_size       bytes the loader reserves (covers bss), page multiple
//! 0x20  8     text           offset u32, size u32   RX at EL2
//! 0x28  8     rodata         offset, size           R
//! 0x30  8     data           offset, size           RW
//! 0x38  8     bss            offset, size           RW, not in the file (zero it)
//! 0x40  8     idmap          offset, size           init code, inside text, <= 1 page
//! 0x48  4     init_entry     init vector table (2 KiB aligned, inside idmap)
//! 0x4c  4     host_vector    host vector table (2 KiB aligned, inside text)
//! 0x50  8     alt            offset, size   `.altinstructions`, 12-byte records
//! 0x58  8     relocs         offset, size   u32 slot offsets, ascending
//! 0x60  8     percpu         offset, size   per-CPU template block, inside data
//! 0x68  4     stack_size     per-CPU hyp stack bytes (page multiple, non-zero)
//! 0x6c  4     reserved       0
//! ```
//!
//! Layout rules [`HypImage::parse`] enforces: text, rodata, data and bss start on a page
//! boundary, in this order, without overlap, and after the header page; text is not empty;
//! text, rodata and data lie inside the file, bss after the file and inside `mem_size`.
//! The alternative table and the relocation list are 4-byte aligned, inside the file, and
//! overlap neither the header nor any section: the hyp never maps them; the host reads
//! them through its own alias. Every record's original (and, for plain records,
//! replacement) code lies inside text.
//!
//! # Relocations
//!
//! Each relocation-list entry is the image offset of a 64-bit slot, 8-byte aligned and
//! wholly inside rodata or data (never text, which stays free of data the loader
//! writes). As shipped, a slot holds a link-time address, i.e. an image offset in
//! `0..=mem_size`. Rebasing the image to hyp VA `base` replaces it with `base + value`
//! ([`apply_relocations`]). This is the analogue of Linux's gen-hyprel list
//! (LINUX-FACTS §5.3), but the list holds plain offsets and is consumed in place.

mod checksum;
mod parse;
mod reloc;
mod write;

pub use checksum::{fnv1a64, FNV1A64_OFFSET, FNV1A64_PRIME};
pub use parse::HypImage;
pub use reloc::apply_relocations;
pub use write::{encode_header, seal, write_checksum};

use core::fmt;

/// The eight magic bytes at offset 0.
pub const MAGIC: [u8; 8] = *b"RSHYPIMG";
/// The format version this code reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of the version-1 header.
pub const HEADER_SIZE: usize = 0x70;
/// Offset of the checksum field; the checksum covers everything after it.
pub const CHECKSUM_OFFSET: usize = 8;
/// First byte the checksum covers.
pub const CHECKSUMMED_FROM: usize = CHECKSUM_OFFSET + 8;
/// Granule of section permissions (4 KiB pages).
pub const PAGE_SIZE: u32 = 4096;
/// Alignment of an EL2 vector table (VBAR_EL2 bits [10:0] are RES0).
pub const VECTOR_ALIGN: u32 = 2048;
/// Size of an EL2 vector table: 16 entries of 128 bytes.
pub const VECTOR_SIZE: u32 = 2048;
/// Bytes of one relocation-list entry.
pub const RELOC_ENTRY_SIZE: u32 = 4;

/// A byte range of the image: `offset .. offset + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImageRange {
    /// First byte.
    pub offset: u32,
    /// Number of bytes.
    pub size: u32,
}

impl ImageRange {
    /// A range from its offset and size.
    pub const fn new(offset: u32, size: u32) -> ImageRange {
        ImageRange { offset, size }
    }

    /// One past the last byte (computed in 64 bits, so it cannot overflow).
    pub const fn end(&self) -> u64 {
        self.offset as u64 + self.size as u64
    }

    /// Whether `[start, start + len)` lies wholly inside this range.
    pub const fn contains_span(&self, start: u64, len: u64) -> bool {
        start >= self.offset as u64 && start + len <= self.end()
    }

    /// Whether the two ranges share a byte (empty ranges share none).
    pub const fn overlaps(&self, other: &ImageRange) -> bool {
        self.size != 0
            && other.size != 0
            && (self.offset as u64) < other.end()
            && (other.offset as u64) < self.end()
    }
}

/// Every header field after the checksum, as numbers. [`encode_header`] writes it,
/// [`HypImage::parse`] reads and verifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HypLayout {
    /// Bytes in the file.
    pub image_size: u32,
    /// Bytes the loader reserves, bss included.
    pub mem_size: u32,
    /// Hyp code (RX).
    pub text: ImageRange,
    /// Read-only data (R).
    pub rodata: ImageRange,
    /// Initialised data (RW).
    pub data: ImageRange,
    /// Zero-initialised data (RW), not stored in the file.
    pub bss: ImageRange,
    /// The init code that runs with the EL2 MMU off and must be identity mapped.
    pub idmap: ImageRange,
    /// The init vector table (`__kvm_hyp_init` analogue).
    pub init_entry: u32,
    /// The host vector table (`__kvm_hyp_host_vector` analogue).
    pub host_vector: u32,
    /// The alternative records.
    pub alt: ImageRange,
    /// The relocation list.
    pub relocs: ImageRange,
    /// The per-CPU template block the host copies once per CPU.
    pub percpu: ImageRange,
    /// Bytes of hyp stack each CPU needs.
    pub stack_size: u32,
}

/// A named part of the image, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Region {
    /// The header.
    Header,
    /// `text`.
    Text,
    /// `rodata`.
    Rodata,
    /// `data`.
    Data,
    /// `bss`.
    Bss,
    /// `idmap`.
    Idmap,
    /// The alternative table.
    AltTable,
    /// The relocation list.
    RelocList,
    /// The per-CPU block.
    Percpu,
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Region::Header => "header",
            Region::Text => "text",
            Region::Rodata => "rodata",
            Region::Data => "data",
            Region::Bss => "bss",
            Region::Idmap => "idmap",
            Region::AltTable => "alternative table",
            Region::RelocList => "relocation list",
            Region::Percpu => "per-CPU block",
        })
    }
}

/// An entry point named in the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The init vector table.
    Init,
    /// The host vector table.
    HostVector,
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Entry::Init => "init entry",
            Entry::HostVector => "host vector",
        })
    }
}

/// What is wrong with one relocation-list entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelocProblem {
    /// The slot offset is not a multiple of 8.
    Misaligned,
    /// The entry is not greater than the one before it.
    NotAscending,
    /// The slot is not wholly inside rodata or data.
    OutsideData,
    /// The slot's link-time value is not an image offset (`0..=mem_size`); also what a
    /// second relocation of the same image looks like.
    ValueOutsideImage(u64),
    /// `base + value` does not fit in 64 bits.
    Overflow(u64),
}

/// Why an image was refused. Every variant names the field or entry at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypImageError {
    /// Fewer bytes than a header.
    TooShort(usize),
    /// The first eight bytes are not [`MAGIC`].
    BadMagic,
    /// A version this code does not read.
    UnsupportedVersion(u32),
    /// `header_size` is not [`HEADER_SIZE`].
    BadHeaderSize(u32),
    /// `image_size` differs from the number of bytes given.
    SizeMismatch {
        /// What the header says.
        header: u32,
        /// What was given.
        actual: usize,
    },
    /// The stored checksum does not match the bytes.
    ChecksumMismatch {
        /// What the header says.
        stored: u64,
        /// What the bytes hash to.
        computed: u64,
    },
    /// The reserved word is not zero.
    ReservedNotZero(u32),
    /// `mem_size` is not a page multiple or does not cover the file and bss.
    BadMemSize(u32),
    /// `stack_size` is zero or not a page multiple.
    BadStackSize(u32),
    /// A region that must not be empty is.
    Empty(Region),
    /// A region starts at an offset without the alignment it needs.
    Misaligned {
        /// Which region.
        region: Region,
        /// Its offset.
        offset: u32,
        /// The alignment it needs.
        align: u32,
    },
    /// A region's size is not a multiple of its unit.
    BadSize {
        /// Which region.
        region: Region,
        /// Its size.
        size: u32,
        /// The unit.
        unit: u32,
    },
    /// A region lies (partly) outside where it must be.
    OutOfBounds {
        /// Which region.
        region: Region,
        /// Its offset.
        offset: u32,
        /// Its size.
        size: u32,
        /// Where it has to lie.
        within: Region,
    },
    /// A region lies (partly) outside the file or `mem_size`.
    OutsideImage {
        /// Which region.
        region: Region,
        /// Its offset.
        offset: u32,
        /// Its size.
        size: u32,
        /// The limit it crosses.
        limit: u32,
    },
    /// bss starts before the end of the file (its bytes are not stored, so it must not).
    BssInFile {
        /// bss offset.
        offset: u32,
        /// File size.
        image_size: u32,
    },
    /// Two regions share bytes, or a section starts before the one it must follow ends.
    Overlap(Region, Region),
    /// An entry point is outside the region it must be in.
    EntryOutside {
        /// Which entry.
        entry: Entry,
        /// Its offset.
        offset: u32,
        /// The region it must lie in.
        within: Region,
    },
    /// An entry point is not aligned as a vector table.
    EntryMisaligned {
        /// Which entry.
        entry: Entry,
        /// Its offset.
        offset: u32,
    },
    /// An alternative record points outside text (or has a length that is not a multiple
    /// of 4).
    AltRecord {
        /// Index of the record in the table.
        index: usize,
        /// Image offset of the original code (or replacement, see `replacement`).
        target: i64,
        /// Whether the bad pointer is the replacement rather than the original.
        replacement: bool,
    },
    /// A relocation-list entry is bad.
    Reloc {
        /// Index in the list.
        index: usize,
        /// The slot offset it holds.
        offset: u32,
        /// What is wrong.
        problem: RelocProblem,
    },
    /// The hyp VA base is not page aligned.
    UnalignedBase(u64),
}

impl fmt::Display for HypImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HypImageError as E;
        match *self {
            E::TooShort(n) => write!(f, "hyp image: {n} bytes, shorter than the {HEADER_SIZE}-byte header"),
            E::BadMagic => write!(f, "hyp image: bad magic (expected {:?})", "RSHYPIMG"),
            E::UnsupportedVersion(v) => {
                write!(f, "hyp image: format version {v} not supported (expected {VERSION})")
            }
            E::BadHeaderSize(s) => {
                write!(f, "hyp image: header_size {s:#x}, expected {HEADER_SIZE:#x}")
            }
            E::SizeMismatch { header, actual } => write!(
                f,
                "hyp image: header says image_size {header:#x} but {actual:#x} bytes were given"
            ),
            E::ChecksumMismatch { stored, computed } => write!(
                f,
                "hyp image: checksum mismatch (stored {stored:#018x}, computed {computed:#018x})"
            ),
            E::ReservedNotZero(v) => write!(f, "hyp image: reserved header word is {v:#x}, not 0"),
            E::BadMemSize(v) => write!(
                f,
                "hyp image: mem_size {v:#x} is not a page multiple covering the file and bss"
            ),
            E::BadStackSize(v) => {
                write!(f, "hyp image: stack_size {v:#x} is zero or not a page multiple")
            }
            E::Empty(r) => write!(f, "hyp image: {r} is empty"),
            E::Misaligned { region, offset, align } => write!(
                f,
                "hyp image: {region} at {offset:#x} is not {align:#x}-byte aligned"
            ),
            E::BadSize { region, size, unit } => write!(
                f,
                "hyp image: {region} size {size:#x} is not a multiple of {unit}"
            ),
            E::OutOfBounds { region, offset, size, within } => write!(
                f,
                "hyp image: {region} {offset:#x}+{size:#x} is not inside {within}"
            ),
            E::OutsideImage { region, offset, size, limit } => write!(
                f,
                "hyp image: {region} {offset:#x}+{size:#x} crosses the image end {limit:#x}"
            ),
            E::BssInFile { offset, image_size } => write!(
                f,
                "hyp image: bss at {offset:#x} starts inside the file (image_size {image_size:#x})"
            ),
            E::Overlap(a, b) => write!(f, "hyp image: {a} overlaps or is out of order with {b}"),
            E::EntryOutside { entry, offset, within } => {
                write!(f, "hyp image: {entry} {offset:#x} is not inside {within}")
            }
            E::EntryMisaligned { entry, offset } => write!(
                f,
                "hyp image: {entry} {offset:#x} is not {VECTOR_ALIGN}-byte aligned"
            ),
            E::AltRecord { index, target, replacement } => write!(
                f,
                "hyp image: alternative record {index}: {} at image offset {target:#x} is not inside text (or has a bad length)",
                if replacement { "replacement" } else { "original" }
            ),
            E::Reloc { index, offset, problem } => {
                write!(f, "hyp image: relocation {index} (slot {offset:#x}): ")?;
                match problem {
                    RelocProblem::Misaligned => write!(f, "not 8-byte aligned"),
                    RelocProblem::NotAscending => {
                        write!(f, "not above the previous entry (list must be strictly ascending)")
                    }
                    RelocProblem::OutsideData => write!(f, "slot is not inside rodata or data"),
                    RelocProblem::ValueOutsideImage(v) => write!(
                        f,
                        "slot holds {v:#x}, not a link-time image offset (already relocated?)"
                    ),
                    RelocProblem::Overflow(v) => {
                        write!(f, "base + {v:#x} overflows 64 bits")
                    }
                }
            }
            E::UnalignedBase(b) => write!(f, "hyp image: hyp VA base {b:#x} is not page aligned"),
        }
    }
}

/// Little-endian u32 at `off` (caller guarantees the bounds).
fn rd32(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

/// Little-endian u64 at `off` (caller guarantees the bounds).
fn rd64(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}
