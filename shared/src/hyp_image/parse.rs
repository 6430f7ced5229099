//! Reading and verifying an image: nothing in the header is trusted until every check
//! here has passed.

use super::{
    fnv1a64, rd32, rd64, Entry, HypImageError, HypLayout, ImageRange, Region, RelocProblem,
    CHECKSUMMED_FROM, CHECKSUM_OFFSET, HEADER_SIZE, MAGIC, PAGE_SIZE, RELOC_ENTRY_SIZE,
    VECTOR_ALIGN, VECTOR_SIZE, VERSION,
};
use crate::alternative::{AltRecord, ALT_RECORD_SIZE};

/// Field offsets of the version-1 header (see the module documentation).
pub(super) mod off {
    pub const VERSION: usize = 0x10;
    pub const HEADER_SIZE: usize = 0x14;
    pub const IMAGE_SIZE: usize = 0x18;
    pub const MEM_SIZE: usize = 0x1c;
    pub const TEXT: usize = 0x20;
    pub const RODATA: usize = 0x28;
    pub const DATA: usize = 0x30;
    pub const BSS: usize = 0x38;
    pub const IDMAP: usize = 0x40;
    pub const INIT_ENTRY: usize = 0x48;
    pub const HOST_VECTOR: usize = 0x4c;
    pub const ALT: usize = 0x50;
    pub const RELOCS: usize = 0x58;
    pub const PERCPU: usize = 0x60;
    pub const STACK_SIZE: usize = 0x68;
    pub const RESERVED: usize = 0x6c;
}

/// A verified image: the layout from its header plus the bytes it describes.
#[derive(Debug, Clone, Copy)]
pub struct HypImage<'a> {
    layout: HypLayout,
    bytes: &'a [u8],
}

impl<'a> HypImage<'a> {
    /// Verifies `bytes` as a hyp image. In order: length, magic, version, header size,
    /// `image_size == bytes.len()`, checksum, reserved word, then the layout rules of the
    /// module documentation, every alternative record's targets, and every relocation
    /// entry. Nothing taken from the header is used as an offset before it is checked.
    pub fn parse(bytes: &'a [u8]) -> Result<HypImage<'a>, HypImageError> {
        if bytes.len() < HEADER_SIZE {
            return Err(HypImageError::TooShort(bytes.len()));
        }
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(HypImageError::BadMagic);
        }
        let version = rd32(bytes, off::VERSION);
        if version != VERSION {
            return Err(HypImageError::UnsupportedVersion(version));
        }
        let header_size = rd32(bytes, off::HEADER_SIZE);
        if header_size as usize != HEADER_SIZE {
            return Err(HypImageError::BadHeaderSize(header_size));
        }
        let image_size = rd32(bytes, off::IMAGE_SIZE);
        if image_size as usize != bytes.len() {
            return Err(HypImageError::SizeMismatch {
                header: image_size,
                actual: bytes.len(),
            });
        }
        let stored = rd64(bytes, CHECKSUM_OFFSET);
        let computed = fnv1a64(&bytes[CHECKSUMMED_FROM..]);
        if stored != computed {
            return Err(HypImageError::ChecksumMismatch { stored, computed });
        }
        let reserved = rd32(bytes, off::RESERVED);
        if reserved != 0 {
            return Err(HypImageError::ReservedNotZero(reserved));
        }
        let layout = read_layout(bytes);
        layout.validate()?;
        check_alt_records(&layout, bytes)?;
        check_reloc_list(&layout, bytes)?;
        Ok(HypImage { layout, bytes })
    }

    /// The verified layout.
    pub fn layout(&self) -> &HypLayout {
        &self.layout
    }

    /// The whole image.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The bytes of a file-backed range (text, rodata, data, idmap, alt, relocs, percpu);
    /// empty for bss, which is not in the file.
    pub fn range_bytes(&self, r: ImageRange) -> &'a [u8] {
        self.bytes
            .get(r.offset as usize..r.end() as usize)
            .unwrap_or(&[])
    }

    /// The raw alternative table (a whole number of 12-byte records).
    pub fn alt_table(&self) -> &'a [u8] {
        self.range_bytes(self.layout.alt)
    }

    /// Number of alternative records.
    pub fn alt_count(&self) -> usize {
        self.layout.alt.size as usize / ALT_RECORD_SIZE
    }

    /// The slot offsets of the relocation list, ascending.
    pub fn relocations(&self) -> impl Iterator<Item = u32> + 'a {
        reloc_entries(self.bytes, self.layout.relocs)
    }
}

/// The entries of the relocation list stored at `relocs` in `bytes`.
pub(super) fn reloc_entries(bytes: &[u8], relocs: ImageRange) -> impl Iterator<Item = u32> + '_ {
    bytes
        .get(relocs.offset as usize..relocs.end() as usize)
        .unwrap_or(&[])
        .chunks_exact(RELOC_ENTRY_SIZE as usize)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

fn read_range(b: &[u8], at: usize) -> ImageRange {
    ImageRange::new(rd32(b, at), rd32(b, at + 4))
}

/// The layout fields of a header whose length was checked.
fn read_layout(b: &[u8]) -> HypLayout {
    HypLayout {
        image_size: rd32(b, off::IMAGE_SIZE),
        mem_size: rd32(b, off::MEM_SIZE),
        text: read_range(b, off::TEXT),
        rodata: read_range(b, off::RODATA),
        data: read_range(b, off::DATA),
        bss: read_range(b, off::BSS),
        idmap: read_range(b, off::IDMAP),
        init_entry: rd32(b, off::INIT_ENTRY),
        host_vector: rd32(b, off::HOST_VECTOR),
        alt: read_range(b, off::ALT),
        relocs: read_range(b, off::RELOCS),
        percpu: read_range(b, off::PERCPU),
        stack_size: rd32(b, off::STACK_SIZE),
    }
}

fn aligned(region: Region, r: ImageRange, align: u32) -> Result<(), HypImageError> {
    if !r.offset.is_multiple_of(align) {
        return Err(HypImageError::Misaligned {
            region,
            offset: r.offset,
            align,
        });
    }
    Ok(())
}

fn inside_limit(region: Region, r: ImageRange, limit: u32) -> Result<(), HypImageError> {
    if r.end() > u64::from(limit) {
        return Err(HypImageError::OutsideImage {
            region,
            offset: r.offset,
            size: r.size,
            limit,
        });
    }
    Ok(())
}

fn inside(
    region: Region,
    r: ImageRange,
    within: Region,
    w: ImageRange,
) -> Result<(), HypImageError> {
    if !w.contains_span(u64::from(r.offset), u64::from(r.size)) {
        return Err(HypImageError::OutOfBounds {
            region,
            offset: r.offset,
            size: r.size,
            within,
        });
    }
    Ok(())
}

impl HypLayout {
    /// The header-only layout rules (everything [`HypImage::parse`] checks that does not
    /// need the image bytes). The writer runs them too, so xtask cannot emit a layout the
    /// host would refuse.
    pub fn validate(&self) -> Result<(), HypImageError> {
        let l = self;
        let first_page = (HEADER_SIZE as u32).next_multiple_of(PAGE_SIZE);
        let header = ImageRange::new(0, first_page);
        let sections = [
            (Region::Text, l.text),
            (Region::Rodata, l.rodata),
            (Region::Data, l.data),
            (Region::Bss, l.bss),
        ];
        if l.text.size == 0 {
            return Err(HypImageError::Empty(Region::Text));
        }
        // mem_size: a page multiple covering the file (rounded up to a page).
        let file_pages = u64::from(l.image_size).next_multiple_of(u64::from(PAGE_SIZE));
        if !l.mem_size.is_multiple_of(PAGE_SIZE) || u64::from(l.mem_size) < file_pages {
            return Err(HypImageError::BadMemSize(l.mem_size));
        }
        let mut prev = (Region::Header, header);
        for (region, r) in sections {
            aligned(region, r, PAGE_SIZE)?;
            if u64::from(r.offset) < prev.1.end() {
                return Err(HypImageError::Overlap(prev.0, region));
            }
            let limit = if region == Region::Bss {
                l.mem_size
            } else {
                l.image_size
            };
            inside_limit(region, r, limit)?;
            prev = (region, r);
        }
        // bss is not in the file: it must start after the last file byte.
        if l.bss.size != 0 && l.bss.offset < l.image_size {
            return Err(HypImageError::BssInFile {
                offset: l.bss.offset,
                image_size: l.image_size,
            });
        }

        // Init code: inside text, page aligned, at most one page (one identity-mapped page).
        if l.idmap.size == 0 {
            return Err(HypImageError::Empty(Region::Idmap));
        }
        aligned(Region::Idmap, l.idmap, PAGE_SIZE)?;
        inside(Region::Idmap, l.idmap, Region::Text, l.text)?;
        if l.idmap.size > PAGE_SIZE {
            return Err(HypImageError::BadSize {
                region: Region::Idmap,
                size: l.idmap.size,
                unit: PAGE_SIZE,
            });
        }
        for (entry, at, within, w) in [
            (Entry::Init, l.init_entry, Region::Idmap, l.idmap),
            (Entry::HostVector, l.host_vector, Region::Text, l.text),
        ] {
            if !at.is_multiple_of(VECTOR_ALIGN) {
                return Err(HypImageError::EntryMisaligned { entry, offset: at });
            }
            if !w.contains_span(u64::from(at), u64::from(VECTOR_SIZE)) {
                return Err(HypImageError::EntryOutside {
                    entry,
                    offset: at,
                    within,
                });
            }
        }

        // Per-CPU template: inside data, page aligned.
        aligned(Region::Percpu, l.percpu, PAGE_SIZE)?;
        if l.percpu.size != 0 {
            inside(Region::Percpu, l.percpu, Region::Data, l.data)?;
        }
        if l.stack_size == 0 || !l.stack_size.is_multiple_of(PAGE_SIZE) {
            return Err(HypImageError::BadStackSize(l.stack_size));
        }

        // Host-only tables: in the file, outside the header and every section.
        for (region, r, unit) in [
            (
                Region::AltTable,
                l.alt,
                crate::alternative::ALT_RECORD_SIZE as u32,
            ),
            (Region::RelocList, l.relocs, RELOC_ENTRY_SIZE),
        ] {
            aligned(region, r, 4)?;
            if !r.size.is_multiple_of(unit) {
                return Err(HypImageError::BadSize {
                    region,
                    size: r.size,
                    unit,
                });
            }
            inside_limit(region, r, l.image_size)?;
            // An empty table needs no place; a non-empty one must not share bytes.
            for (other, o) in [(Region::Header, header)].into_iter().chain(sections) {
                if r.overlaps(&o) {
                    return Err(HypImageError::Overlap(region, other));
                }
            }
        }
        if l.alt.overlaps(&l.relocs) {
            return Err(HypImageError::Overlap(Region::AltTable, Region::RelocList));
        }
        Ok(())
    }
}

/// Every record's original code (and a plain record's replacement) must lie in text
/// with a length that is a multiple of 4. Records are position independent: their
/// targets are offsets from the record's own image offset (LINUX-FACTS §1.1).
fn check_alt_records(l: &HypLayout, bytes: &[u8]) -> Result<(), HypImageError> {
    let table = bytes
        .get(l.alt.offset as usize..l.alt.end() as usize)
        .unwrap_or(&[]);
    for (index, chunk) in table.chunks_exact(ALT_RECORD_SIZE).enumerate() {
        let Ok(rec) = AltRecord::from_bytes(chunk) else {
            continue; // chunks_exact yields whole records only
        };
        let at = i64::from(l.alt.offset) + (index * ALT_RECORD_SIZE) as i64;
        let in_text = |start: i64, len: u8| {
            len.is_multiple_of(4)
                && start >= 0
                && l.text.contains_span(start as u64, u64::from(len))
        };
        let orig = at + i64::from(rec.orig_offset);
        if !in_text(orig, rec.orig_len) {
            return Err(HypImageError::AltRecord {
                index,
                target: orig,
                replacement: false,
            });
        }
        if !rec.is_callback() {
            let repl = at + 4 + i64::from(rec.alt_offset);
            if !in_text(repl, rec.alt_len) {
                return Err(HypImageError::AltRecord {
                    index,
                    target: repl,
                    replacement: true,
                });
            }
        }
    }
    Ok(())
}

/// Shape of the relocation list: strictly ascending, 8-aligned slots wholly inside
/// rodata or data. (The slot *values* are checked by [`super::apply_relocations`],
/// because after relocation they legitimately hold hyp VAs.)
pub(super) fn check_reloc_list(l: &HypLayout, bytes: &[u8]) -> Result<(), HypImageError> {
    let mut prev: Option<u32> = None;
    for (index, offset) in reloc_entries(bytes, l.relocs).enumerate() {
        let bad = |problem| HypImageError::Reloc {
            index,
            offset,
            problem,
        };
        if !offset.is_multiple_of(8) {
            return Err(bad(RelocProblem::Misaligned));
        }
        if prev.is_some_and(|p| offset <= p) {
            return Err(bad(RelocProblem::NotAscending));
        }
        let slot = u64::from(offset);
        if !l.rodata.contains_span(slot, 8) && !l.data.contains_span(slot, 8) {
            return Err(bad(RelocProblem::OutsideData));
        }
        prev = Some(offset);
    }
    Ok(())
}
