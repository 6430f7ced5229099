//! The arm64 Linux Image format: turns the el1-host ELF into a flat binary whose first
//! 64 bytes are the Image header, so QEMU (or any arm64 boot loader) loads it at a
//! 2 MiB-aligned address, passes the DTB in x0 and honours `-append`.
//!
//! Header (all little endian):
//!
//! | offset | field | value written |
//! | --- | --- | --- |
//! | 0 | code0 (u32) | `b <entry>`: branch to the ELF entry point |
//! | 4 | code1 (u32) | 0 |
//! | 8 | text_offset (u64) | 0 (load at the start of a 2 MiB-aligned block) |
//! | 16 | image_size (u64) | bytes from the image start to the end of bss |
//! | 24 | flags (u64) | LE, 4 KiB pages, "anywhere in physical memory" |
//! | 32..56 | res2..res4 | 0 |
//! | 56 | magic (u32) | `"ARM\x64"` |
//! | 60 | res5 (u32) | 0 (no PE/COFF header) |

use std::fmt;

/// Size of the header.
pub const HEADER_SIZE: usize = 64;
/// `"ARM\x64"` read as a little-endian u32.
pub const MAGIC: u32 = u32::from_le_bytes(*b"ARM\x64");
/// flags bit 0: kernel endianness (0 = little).
pub const FLAG_BE: u64 = 1 << 0;
/// flags bits 1–2: page size (1 = 4 KiB).
pub const FLAG_PAGE_4K: u64 = 1 << 1;
/// flags bit 3: the 2 MiB-aligned base may be anywhere in physical memory.
pub const FLAG_PHYS_ANYWHERE: u64 = 1 << 3;
/// The flags this project's images carry.
pub const FLAGS: u64 = FLAG_PAGE_4K | FLAG_PHYS_ANYWHERE;
/// The image base must be 2 MiB aligned (text_offset is 0).
pub const IMAGE_ALIGN: u64 = 2 << 20;

/// The decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// First instruction.
    pub code0: u32,
    /// Second instruction.
    pub code1: u32,
    /// Load offset from a 2 MiB boundary.
    pub text_offset: u64,
    /// Effective image size including bss.
    pub image_size: u64,
    /// Flags.
    pub flags: u64,
}

/// What is wrong with an ELF or an Image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// Not a little-endian 64-bit AArch64 ELF executable.
    NotAarch64Elf(&'static str),
    /// A header or table points outside the file.
    Truncated(&'static str),
    /// No loadable segment.
    NoLoadSegments,
    /// The first loadable address is not 2 MiB aligned.
    Misaligned(u64),
    /// The entry point is not inside the loaded text or not 4-byte aligned.
    BadEntry(u64),
    /// The first 64 bytes of the image are not the zeroed header placeholder.
    HeaderNotReserved,
    /// A header field does not have the value this project writes.
    BadHeader(&'static str),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAarch64Elf(why) => write!(f, "not an AArch64 ELF64 executable: {why}"),
            Self::Truncated(what) => write!(f, "ELF is truncated: {what} lies outside the file"),
            Self::NoLoadSegments => write!(f, "ELF has no PT_LOAD segment"),
            Self::Misaligned(a) => write!(f, "image base {a:#x} is not 2 MiB aligned"),
            Self::BadEntry(e) => write!(
                f,
                "entry point {e:#x} is not a 4-byte aligned address in the image past its header"
            ),
            Self::HeaderNotReserved => write!(
                f,
                "the first 64 bytes of the image are not the zeroed header placeholder \
                 (.head.text must come first)"
            ),
            Self::BadHeader(field) => write!(f, "Image header field {field} is wrong"),
        }
    }
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// One PT_LOAD segment.
#[derive(Clone, Copy, Debug)]
struct Load {
    offset: u64,
    vaddr: u64,
    filesz: u64,
    memsz: u64,
}

/// Reads the entry point and the PT_LOAD segments of an ELF64 AArch64 executable.
fn read_elf(elf: &[u8]) -> Result<(u64, Vec<Load>), ImageError> {
    if elf.get(0..4) != Some(b"\x7fELF".as_slice()) {
        return Err(ImageError::NotAarch64Elf("bad magic"));
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(ImageError::NotAarch64Elf("not 64-bit little endian"));
    }
    const EM_AARCH64: u16 = 183;
    const ET_EXEC: u16 = 2;
    const PT_LOAD: u32 = 1;
    if u16_at(elf, 18) != Some(EM_AARCH64) {
        return Err(ImageError::NotAarch64Elf("machine is not AArch64"));
    }
    if u16_at(elf, 16) != Some(ET_EXEC) {
        return Err(ImageError::NotAarch64Elf("not ET_EXEC"));
    }
    let entry = u64_at(elf, 24).ok_or(ImageError::Truncated("ELF header"))?;
    let phoff = u64_at(elf, 32).ok_or(ImageError::Truncated("ELF header"))? as usize;
    let phentsize = u16_at(elf, 54).ok_or(ImageError::Truncated("ELF header"))? as usize;
    let phnum = u16_at(elf, 56).ok_or(ImageError::Truncated("ELF header"))? as usize;
    let mut loads = Vec::new();
    for i in 0..phnum {
        let ph = phoff
            .checked_add(
                i.checked_mul(phentsize)
                    .ok_or(ImageError::Truncated("program headers"))?,
            )
            .ok_or(ImageError::Truncated("program headers"))?;
        let p_type = u32_at(elf, ph).ok_or(ImageError::Truncated("program headers"))?;
        if p_type != PT_LOAD {
            continue;
        }
        let field = |o| u64_at(elf, ph + o).ok_or(ImageError::Truncated("program headers"));
        let load = Load {
            offset: field(8)?,
            vaddr: field(16)?,
            filesz: field(32)?,
            memsz: field(40)?,
        };
        let end = load.offset.checked_add(load.filesz);
        if end.is_none_or(|e| e > elf.len() as u64) {
            return Err(ImageError::Truncated("a PT_LOAD segment"));
        }
        if load.memsz > 0 {
            loads.push(load);
        }
    }
    if loads.is_empty() {
        return Err(ImageError::NoLoadSegments);
    }
    Ok((entry, loads))
}

/// Encodes `b +offset` (offset a multiple of 4 within ±128 MiB).
pub fn branch(offset: i64) -> Option<u32> {
    if offset % 4 != 0 || !(-(1 << 27)..(1 << 27)).contains(&offset) {
        return None;
    }
    Some(0x1400_0000 | ((offset >> 2) as u32 & 0x03ff_ffff))
}

/// Writes the header into the first 64 bytes of `image`.
pub fn write_header(image: &mut [u8], header: &ImageHeader) -> Result<(), ImageError> {
    let h = image
        .get_mut(..HEADER_SIZE)
        .ok_or(ImageError::Truncated("the Image header"))?;
    h.fill(0);
    h[0..4].copy_from_slice(&header.code0.to_le_bytes());
    h[4..8].copy_from_slice(&header.code1.to_le_bytes());
    h[8..16].copy_from_slice(&header.text_offset.to_le_bytes());
    h[16..24].copy_from_slice(&header.image_size.to_le_bytes());
    h[24..32].copy_from_slice(&header.flags.to_le_bytes());
    h[56..60].copy_from_slice(&MAGIC.to_le_bytes());
    Ok(())
}

/// Reads a header back; checks the magic.
pub fn read_header(image: &[u8]) -> Result<ImageHeader, ImageError> {
    if image.len() < HEADER_SIZE {
        return Err(ImageError::Truncated("the Image header"));
    }
    if u32_at(image, 56) != Some(MAGIC) {
        return Err(ImageError::BadHeader("magic"));
    }
    Ok(ImageHeader {
        code0: u32_at(image, 0).unwrap_or_default(),
        code1: u32_at(image, 4).unwrap_or_default(),
        text_offset: u64_at(image, 8).unwrap_or_default(),
        image_size: u64_at(image, 16).unwrap_or_default(),
        flags: u64_at(image, 24).unwrap_or_default(),
    })
}

/// Checks a finished Image the way a boot loader would read it, plus this project's own
/// expectations: the magic, a branch in code0 that lands inside the file past the header,
/// text_offset 0, an image_size covering the file, the flags, and zero reserved fields.
pub fn verify(image: &[u8]) -> Result<ImageHeader, ImageError> {
    let h = read_header(image)?;
    if h.code0 & 0xfc00_0000 != 0x1400_0000 {
        return Err(ImageError::BadHeader("code0 (not a B instruction)"));
    }
    let imm = (h.code0 & 0x03ff_ffff) as i64;
    let target = ((imm << 38) >> 36) as u64; // sign-extend imm26, times 4
    if target < HEADER_SIZE as u64 || target >= image.len() as u64 {
        return Err(ImageError::BadHeader(
            "code0 (branch target outside the image)",
        ));
    }
    if h.text_offset != 0 {
        return Err(ImageError::BadHeader("text_offset"));
    }
    if h.image_size < image.len() as u64 {
        return Err(ImageError::BadHeader("image_size (smaller than the file)"));
    }
    if h.flags != FLAGS {
        return Err(ImageError::BadHeader("flags"));
    }
    if image[32..56].iter().chain(&image[60..64]).any(|&b| b != 0) {
        return Err(ImageError::BadHeader("reserved fields"));
    }
    Ok(h)
}

/// Turns the kernel ELF into an arm64 Image: the loadable segments laid out flat from
/// the lowest address, with the header written over the reserved first 64 bytes, then
/// verified.
pub fn elf_to_image(elf: &[u8]) -> Result<Vec<u8>, ImageError> {
    let (entry, loads) = read_elf(elf)?;
    let base = loads.iter().map(|l| l.vaddr).min().unwrap_or_default();
    if base % IMAGE_ALIGN != 0 {
        return Err(ImageError::Misaligned(base));
    }
    let file_end = loads
        .iter()
        .filter(|l| l.filesz > 0)
        .map(|l| l.vaddr + l.filesz)
        .max()
        .unwrap_or(base);
    let mem_end = loads
        .iter()
        .map(|l| l.vaddr + l.memsz)
        .max()
        .unwrap_or(base);
    let len = usize::try_from(file_end - base).map_err(|_| ImageError::Truncated("image"))?;
    let mut image = vec![0u8; len.max(HEADER_SIZE)];
    for l in loads.iter().filter(|l| l.filesz > 0) {
        let dst = (l.vaddr - base) as usize;
        let src = &elf[l.offset as usize..(l.offset + l.filesz) as usize];
        image[dst..dst + src.len()].copy_from_slice(src);
    }
    if image[..HEADER_SIZE].iter().any(|&b| b != 0) {
        return Err(ImageError::HeaderNotReserved);
    }
    let entry_off = entry.wrapping_sub(base);
    if entry < base + HEADER_SIZE as u64 || entry_off >= len as u64 || entry_off % 4 != 0 {
        return Err(ImageError::BadEntry(entry));
    }
    let code0 = branch(entry_off as i64).ok_or(ImageError::BadEntry(entry))?;
    let header = ImageHeader {
        code0,
        code1: 0,
        text_offset: 0,
        image_size: mem_end - base,
        flags: FLAGS,
    };
    write_header(&mut image, &header)?;
    let back = verify(&image)?;
    if back != header {
        return Err(ImageError::BadHeader(
            "read-back differs from what was written",
        ));
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 AArch64 executable with the given PT_LOAD segments
    /// (vaddr, file bytes, memsz) and entry point.
    fn elf(entry: u64, segs: &[(u64, Vec<u8>, u64)]) -> Vec<u8> {
        let phoff = 64u64;
        let data_off = phoff + 56 * segs.len() as u64;
        let mut out = vec![0u8; data_off as usize];
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&183u16.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut off = data_off;
        for (i, (vaddr, bytes, memsz)) in segs.iter().enumerate() {
            let ph = (phoff + 56 * i as u64) as usize;
            out[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
            out[ph + 8..ph + 16].copy_from_slice(&off.to_le_bytes());
            out[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
            out[ph + 32..ph + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            out[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
            off += bytes.len() as u64;
        }
        for (_, bytes, _) in segs {
            out.extend_from_slice(bytes);
        }
        out
    }

    const BASE: u64 = 0xffff_8000_0800_0000;

    fn text() -> Vec<u8> {
        let mut t = vec![0u8; 0x1000];
        t[0x100..0x104].copy_from_slice(&0xd503_201fu32.to_le_bytes()); // nop at the entry
        t
    }

    #[test]
    fn header_fields_are_written_and_verified() {
        let e = elf(
            BASE + 0x100,
            &[(BASE, text(), 0x1000), (BASE + 0x2000, vec![7; 16], 0x5000)],
        );
        let img = elf_to_image(&e).unwrap();
        assert_eq!(img.len(), 0x2010);
        assert_eq!(&img[56..60], b"ARM\x64");
        assert_eq!(u32_at(&img, 0), Some(0x1400_0040)); // b +0x100
        assert_eq!(u64_at(&img, 8), Some(0));
        assert_eq!(u64_at(&img, 16), Some(0x7000)); // to the end of bss
        assert_eq!(u64_at(&img, 24), Some(0b1010));
        assert_eq!(&img[0x2000..0x2010], &[7; 16]);
        assert_eq!(&img[0x100..0x104], &0xd503_201fu32.to_le_bytes());
        let h = verify(&img).unwrap();
        assert_eq!(h.flags & FLAG_BE, 0);
    }

    #[test]
    fn branch_encoding() {
        assert_eq!(branch(0), Some(0x1400_0000));
        assert_eq!(branch(4), Some(0x1400_0001));
        assert_eq!(branch(-4), Some(0x17ff_ffff));
        assert_eq!(branch(2), None);
        assert_eq!(branch(1 << 27), None);
    }

    #[test]
    fn refuses_bad_elves() {
        assert_eq!(
            elf_to_image(b"not an elf"),
            Err(ImageError::NotAarch64Elf("bad magic"))
        );
        let misaligned = elf(BASE + 0x1100, &[(BASE + 0x1000, text(), 0x1000)]);
        assert_eq!(
            elf_to_image(&misaligned),
            Err(ImageError::Misaligned(BASE + 0x1000))
        );
        let mut t = text();
        t[0] = 1;
        let no_room = elf(BASE + 0x100, &[(BASE, t, 0x1000)]);
        assert_eq!(elf_to_image(&no_room), Err(ImageError::HeaderNotReserved));
        let entry_in_header = elf(BASE + 8, &[(BASE, text(), 0x1000)]);
        assert_eq!(
            elf_to_image(&entry_in_header),
            Err(ImageError::BadEntry(BASE + 8))
        );
        let mut trunc = elf(BASE + 0x100, &[(BASE, text(), 0x1000)]);
        trunc.truncate(trunc.len() - 1);
        assert_eq!(
            elf_to_image(&trunc),
            Err(ImageError::Truncated("a PT_LOAD segment"))
        );
    }

    #[test]
    fn verify_catches_each_bad_field() {
        let good = elf_to_image(&elf(BASE + 0x100, &[(BASE, text(), 0x3000)])).unwrap();
        assert!(verify(&good).is_ok());
        let cases: [(usize, u8, &str); 5] = [
            (56, b'X', "magic"),
            (3, 0x00, "code0 (not a B instruction)"),
            (8, 1, "text_offset"),
            (24, 0b1011, "flags"),
            (40, 1, "reserved fields"),
        ];
        for (off, val, field) in cases {
            let mut bad = good.clone();
            bad[off] = val;
            assert_eq!(verify(&bad), Err(ImageError::BadHeader(field)), "{field}");
        }
        let mut small = good.clone();
        small[16..24].copy_from_slice(&16u64.to_le_bytes());
        assert_eq!(
            verify(&small),
            Err(ImageError::BadHeader("image_size (smaller than the file)"))
        );
        let mut far = good.clone();
        far[0..4].copy_from_slice(&branch(0x10_0000).unwrap().to_le_bytes());
        assert_eq!(
            verify(&far),
            Err(ImageError::BadHeader(
                "code0 (branch target outside the image)"
            ))
        );
    }
}
