//! Checking and placing what a guest boots from: its kernel, an optional initrd and the
//! device tree, inside guest RAM, before anything runs. A malformed or oversized file is
//! refused here with an [`ImageError`] that says what is wrong.
//!
//! # Kernel formats
//!
//! - **arm64 Linux Image** (the arm64 boot protocol): a 64-byte header with the magic
//!   `ARM\x64` at 0x38, little-endian `text_offset` at 0x08, `image_size` at 0x10 (the
//!   memory the kernel occupies, bss included) and `flags` at 0x18 (bit 0: big-endian
//!   kernel, refused). The image goes `text_offset` bytes above a 2 MiB-aligned base (the
//!   lowest one in RAM), and the whole `image_size` from there must fit. An
//!   `image_size` of 0 marks a pre-3.17 kernel: `text_offset` is then taken as 0x80000
//!   and the file length as the size. If the image carries an EFI stub (`MZ` at 0 and a
//!   PE header at the offset in 0x3C) its section table says how long the file must
//!   be, which catches a truncated Image.
//! - **raw binary**: anything without the magic, loaded at RAM base + 0x80000 (64 KiB
//!   aligned) and entered at its first byte.
//!
//! # Placement
//!
//! ```text
//! RAM base (2 MiB aligned)                                             RAM end
//! | text_offset | kernel image_size | pad to 2 MiB | initrd | ...free... | DTB slot |
//! ```
//!
//! The DTB gets the last 2 MiB-aligned 2 MiB of RAM ([`DTB_SLOT`]): the boot protocol
//! wants it 8-byte aligned, at most 2 MiB, and alone in its 2 MiB block. The initrd
//! follows the kernel at the next 2 MiB boundary.

use crate::layout::PhysRange;
use core::fmt;

/// Offset of the magic in the Image header.
pub const IMAGE_MAGIC_OFFSET: usize = 0x38;
/// The magic: "ARM\x64".
pub const IMAGE_MAGIC: [u8; 4] = *b"ARM\x64";
/// Size of the Image header.
pub const IMAGE_HEADER_SIZE: usize = 64;
/// `text_offset` assumed when `image_size` is 0 (kernels before 3.17).
pub const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// Where a raw binary goes, relative to the RAM base.
pub const RAW_LOAD_OFFSET: u64 = 0x8_0000;
/// Alignment of the Image's base and of the DTB's block.
pub const SZ_2M: u64 = 2 << 20;
/// Room reserved for the DTB at the top of RAM (also its maximum size).
pub const DTB_SLOT: u64 = SZ_2M;

/// Which kernel format to expect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// An Image if the magic is there, otherwise a raw binary.
    Auto,
    /// Must be an arm64 Linux Image.
    Image,
    /// A raw binary, whatever it contains.
    Raw,
}

/// What was found, for the logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoadedFormat {
    /// An arm64 Linux Image.
    Image {
        /// Its `text_offset`.
        text_offset: u64,
        /// Its `image_size` (after the pre-3.17 rule).
        image_size: u64,
        /// Its `flags`.
        flags: u64,
    },
    /// A raw binary.
    Raw,
}

/// Where everything goes in guest RAM (IPAs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLayout {
    /// What kind of kernel it is.
    pub format: LoadedFormat,
    /// The kernel file's bytes, where they are copied.
    pub kernel: PhysRange,
    /// The memory the kernel owns: from the RAM base (the Image's 2 MiB-aligned base)
    /// to the end of `image_size` (or of the file, for a raw binary).
    pub kernel_reserved: PhysRange,
    /// The initrd, if any.
    pub initrd: Option<PhysRange>,
    /// The slot the DTB is written into (at most [`DTB_SLOT`] bytes, 2 MiB aligned).
    pub dtb: PhysRange,
    /// The entry point: the first byte of the kernel.
    pub entry: u64,
}

/// Why a guest cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageError {
    /// The kernel file is empty.
    EmptyKernel,
    /// The file is shorter than its own header says.
    Truncated {
        /// What needed the bytes.
        what: &'static str,
        /// Bytes needed.
        need: u64,
        /// Bytes in the file.
        have: u64,
    },
    /// An Image was required but the magic is missing.
    BadMagic,
    /// The Image is a big-endian kernel.
    BigEndian,
    /// `text_offset` is not 4 KiB aligned or not below 2 MiB.
    BadTextOffset(u64),
    /// `image_size` is smaller than the file.
    ImageSizeTooSmall {
        /// The header's value.
        image_size: u64,
        /// The file length.
        file_len: u64,
    },
    /// Guest RAM is not usable: base not 2 MiB aligned, or size not a 2 MiB multiple or
    /// too small to hold even the DTB slot, or it wraps.
    BadRam {
        /// RAM base.
        base: u64,
        /// RAM size.
        size: u64,
    },
    /// Something does not fit in guest RAM.
    TooLarge {
        /// What does not fit.
        what: &'static str,
        /// Where it would end.
        end: u64,
        /// Where the space for it ends.
        limit: u64,
    },
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::EmptyKernel => write!(f, "guest kernel file is empty"),
            Self::Truncated { what, need, have } => write!(
                f,
                "guest kernel is truncated: {what} needs {need} bytes, the file has {have}"
            ),
            Self::BadMagic => write!(
                f,
                "guest kernel is not an arm64 Image (no \"ARM\\x64\" magic at offset 0x38)"
            ),
            Self::BigEndian => write!(f, "guest kernel is a big-endian Image"),
            Self::BadTextOffset(t) => write!(
                f,
                "guest Image header has a bad text_offset {t:#x} (must be 4 KiB aligned and below 2 MiB)"
            ),
            Self::ImageSizeTooSmall {
                image_size,
                file_len,
            } => write!(
                f,
                "guest Image header says image_size {image_size:#x}, smaller than the file ({file_len:#x} bytes)"
            ),
            Self::BadRam { base, size } => write!(
                f,
                "guest RAM {base:#x}+{size:#x} is unusable (needs 2 MiB alignment and more than 2 MiB)"
            ),
            Self::TooLarge { what, end, limit } => write!(
                f,
                "{what} does not fit in guest RAM: it would end at {end:#x}, the space ends at {limit:#x}"
            ),
        }
    }
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_le_bytes(a))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([s[0], s[1]]))
}

/// Whether `kernel` carries the Image magic.
pub fn has_image_magic(kernel: &[u8]) -> bool {
    kernel.get(IMAGE_MAGIC_OFFSET..IMAGE_MAGIC_OFFSET + 4) == Some(&IMAGE_MAGIC[..])
}

/// For an Image with an EFI stub: the file length its PE section table requires.
/// `Ok(None)` if there is no stub.
fn pe_required_len(kernel: &[u8]) -> Result<Option<u64>, ImageError> {
    if kernel.get(0..2) != Some(b"MZ") {
        return Ok(None);
    }
    let have = kernel.len() as u64;
    let truncated = |what, need: u64| ImageError::Truncated { what, need, have };
    let pe = u64::from(le_u32(kernel, 0x3c).unwrap_or(0));
    // Signature (4) + COFF header (20).
    let coff_end = pe + 24;
    if coff_end > have {
        return Err(truncated("the PE header", coff_end));
    }
    let pe = pe as usize;
    if kernel.get(pe..pe + 4) != Some(b"PE\0\0") {
        // "MZ" without a PE header: not an EFI stub after all.
        return Ok(None);
    }
    let sections = u64::from(le_u16(kernel, pe + 6).unwrap_or(0));
    let opt_size = u64::from(le_u16(kernel, pe + 20).unwrap_or(0));
    let table = coff_end + opt_size;
    let table_end = table + 40 * sections;
    if table_end > have {
        return Err(truncated("the PE section table", table_end));
    }
    let mut need = table_end;
    for i in 0..sections {
        let s = (table + 40 * i) as usize;
        let size = u64::from(le_u32(kernel, s + 16).unwrap_or(0));
        let ptr = u64::from(le_u32(kernel, s + 20).unwrap_or(0));
        need = need.max(ptr + size);
    }
    if need > have {
        return Err(truncated("the PE sections", need));
    }
    Ok(Some(need))
}

const fn align_up(v: u64, a: u64) -> Option<u64> {
    match v.checked_add(a - 1) {
        Some(x) => Some(x & !(a - 1)),
        None => None,
    }
}

/// Checks the kernel (and initrd size) and works out the guest layout in
/// `[ram_base, ram_base + ram_size)`. Nothing is copied; see [`copy_into_ram`].
pub fn plan(
    kernel: &[u8],
    format: KernelFormat,
    initrd_len: Option<u64>,
    ram_base: u64,
    ram_size: u64,
) -> Result<GuestLayout, ImageError> {
    let bad_ram = ImageError::BadRam {
        base: ram_base,
        size: ram_size,
    };
    let ram_end = ram_base.checked_add(ram_size).ok_or(bad_ram)?;
    if !ram_base.is_multiple_of(SZ_2M) || !ram_size.is_multiple_of(SZ_2M) || ram_size <= DTB_SLOT {
        return Err(bad_ram);
    }
    if kernel.is_empty() {
        return Err(ImageError::EmptyKernel);
    }
    let file_len = kernel.len() as u64;
    let is_image = match format {
        KernelFormat::Raw => false,
        // A file too short for a header is reported as truncated just below.
        KernelFormat::Image if kernel.len() >= IMAGE_HEADER_SIZE && !has_image_magic(kernel) => {
            return Err(ImageError::BadMagic);
        }
        KernelFormat::Image => true,
        KernelFormat::Auto => has_image_magic(kernel),
    };
    if is_image && kernel.len() < IMAGE_HEADER_SIZE {
        // The magic sits at 0x38..0x3c, so a cut-off header can still carry it.
        return Err(ImageError::Truncated {
            what: "the Image header",
            need: IMAGE_HEADER_SIZE as u64,
            have: file_len,
        });
    }
    let dtb = (ram_end - DTB_SLOT)..ram_end;
    let (format, kernel_at, reserved_end) = if is_image {
        let header = |at| {
            le_u64(kernel, at).ok_or(ImageError::Truncated {
                what: "the Image header",
                need: IMAGE_HEADER_SIZE as u64,
                have: file_len,
            })
        };
        let mut text_offset = header(0x08)?;
        let mut image_size = header(0x10)?;
        let flags = header(0x18)?;
        if flags & 1 != 0 {
            return Err(ImageError::BigEndian);
        }
        if image_size == 0 {
            text_offset = LEGACY_TEXT_OFFSET;
            image_size = file_len;
        }
        if !text_offset.is_multiple_of(4096) || text_offset >= SZ_2M {
            return Err(ImageError::BadTextOffset(text_offset));
        }
        if image_size < file_len {
            return Err(ImageError::ImageSizeTooSmall {
                image_size,
                file_len,
            });
        }
        pe_required_len(kernel)?;
        let at = ram_base + text_offset;
        let end = at.checked_add(image_size).ok_or(ImageError::TooLarge {
            what: "the kernel",
            end: u64::MAX,
            limit: dtb.start,
        })?;
        (
            LoadedFormat::Image {
                text_offset,
                image_size,
                flags,
            },
            at,
            end,
        )
    } else {
        let at = ram_base + RAW_LOAD_OFFSET;
        (LoadedFormat::Raw, at, at.saturating_add(file_len))
    };
    if reserved_end > dtb.start {
        return Err(ImageError::TooLarge {
            what: "the kernel",
            end: reserved_end,
            limit: dtb.start,
        });
    }
    let initrd = match initrd_len {
        None => None,
        Some(len) => {
            let start = align_up(reserved_end, SZ_2M).unwrap_or(u64::MAX);
            let end = start.saturating_add(len);
            if end > dtb.start {
                return Err(ImageError::TooLarge {
                    what: "the initrd",
                    end,
                    limit: dtb.start,
                });
            }
            Some(start..end)
        }
    };
    Ok(GuestLayout {
        format,
        kernel: kernel_at..kernel_at + file_len,
        kernel_reserved: ram_base..reserved_end,
        initrd,
        dtb,
        entry: kernel_at,
    })
}

/// Why the planned files cannot be copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyError {
    /// A range lies outside the RAM slice, or a file's length differs from the plan.
    OutOfRange {
        /// Which file.
        what: &'static str,
    },
}

impl fmt::Display for CopyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OutOfRange { what } => {
                write!(f, "{what} does not match the planned guest layout")
            }
        }
    }
}

/// Copies kernel, initrd and DTB into `ram` (the guest's RAM as the host sees it,
/// starting at IPA `ram_base`) at the places `layout` planned, zeroing the kernel's
/// bss (the boot protocol does not require it, but stale host data must not leak).
pub fn copy_into_ram(
    ram: &mut [u8],
    ram_base: u64,
    layout: &GuestLayout,
    kernel: &[u8],
    initrd: Option<&[u8]>,
    dtb: &[u8],
) -> Result<(), CopyError> {
    fn slot<'r>(
        ram: &'r mut [u8],
        ram_base: u64,
        r: &PhysRange,
        what: &'static str,
    ) -> Result<&'r mut [u8], CopyError> {
        let err = CopyError::OutOfRange { what };
        let start = usize::try_from(r.start.checked_sub(ram_base).ok_or(err)?).map_err(|_| err)?;
        let end = usize::try_from(r.end.checked_sub(ram_base).ok_or(err)?).map_err(|_| err)?;
        ram.get_mut(start..end).ok_or(err)
    }
    // Saturating: a hand-made layout with an inverted range must not panic.
    let len = |r: &PhysRange| r.end.saturating_sub(r.start);
    if kernel.len() as u64 != len(&layout.kernel) {
        return Err(CopyError::OutOfRange { what: "the kernel" });
    }
    let initrd_pair = match (initrd, &layout.initrd) {
        (Some(data), Some(r)) if data.len() as u64 == len(r) => Some((data, r)),
        (None, None) => None,
        _ => return Err(CopyError::OutOfRange { what: "the initrd" }),
    };
    if dtb.len() as u64 > len(&layout.dtb) {
        return Err(CopyError::OutOfRange { what: "the DTB" });
    }
    // Check every range before writing anything.
    slot(ram, ram_base, &layout.kernel_reserved, "the kernel")?;
    slot(ram, ram_base, &layout.dtb, "the DTB")?;
    if let Some((_, r)) = initrd_pair {
        slot(ram, ram_base, r, "the initrd")?;
    }
    slot(ram, ram_base, &layout.kernel_reserved, "the kernel")?.fill(0);
    slot(ram, ram_base, &layout.kernel, "the kernel")?.copy_from_slice(kernel);
    if let Some((data, r)) = initrd_pair {
        slot(ram, ram_base, r, "the initrd")?.copy_from_slice(data);
    }
    let dtb_slot = slot(ram, ram_base, &layout.dtb, "the DTB")?;
    dtb_slot.fill(0);
    dtb_slot[..dtb.len()].copy_from_slice(dtb);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    const BASE: u64 = 0x4000_0000;
    const MIB: u64 = 1 << 20;

    /// An Image of `len` bytes with the given header fields.
    fn image(len: usize, text_offset: u64, image_size: u64, flags: u64) -> Vec<u8> {
        let mut k = vec![0u8; len.max(IMAGE_HEADER_SIZE)];
        k[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes()); // b +64
        k[8..16].copy_from_slice(&text_offset.to_le_bytes());
        k[16..24].copy_from_slice(&image_size.to_le_bytes());
        k[24..32].copy_from_slice(&flags.to_le_bytes());
        k[0x38..0x3c].copy_from_slice(&IMAGE_MAGIC);
        k.truncate(len);
        k
    }

    #[test]
    fn modern_image_at_the_ram_base() {
        let k = image(0x1000, 0, 0x30_0000, 0b1010);
        let l = plan(&k, KernelFormat::Auto, None, BASE, 128 * MIB).unwrap();
        assert_eq!(
            l.format,
            LoadedFormat::Image {
                text_offset: 0,
                image_size: 0x30_0000,
                flags: 0b1010
            }
        );
        assert_eq!(l.entry, BASE);
        assert_eq!(l.kernel, BASE..BASE + 0x1000);
        assert_eq!(l.kernel_reserved, BASE..BASE + 0x30_0000);
        assert_eq!(l.dtb, BASE + 126 * MIB..BASE + 128 * MIB);
        assert_eq!(l.initrd, None);
    }

    #[test]
    fn text_offset_is_honoured_and_initrd_follows() {
        let k = image(0x2345, 0x8_0000, 0x10_0000, 0);
        let l = plan(&k, KernelFormat::Image, Some(0x1234), BASE, 64 * MIB).unwrap();
        assert_eq!(l.entry, BASE + 0x8_0000);
        assert_eq!(l.kernel_reserved, BASE..BASE + 0x18_0000);
        // Next 2 MiB boundary after the kernel's end.
        assert_eq!(l.initrd, Some(BASE + 2 * MIB..BASE + 2 * MIB + 0x1234));
        assert_eq!(l.dtb.start % SZ_2M, 0);
        assert!(l.dtb.start >= l.initrd.clone().unwrap().end);
    }

    #[test]
    fn legacy_image_size_zero() {
        let k = image(0x3000, 0x1234, 0, 0);
        let l = plan(&k, KernelFormat::Auto, None, BASE, 16 * MIB).unwrap();
        assert_eq!(
            l.entry,
            BASE + LEGACY_TEXT_OFFSET,
            "text_offset ignored when image_size is 0"
        );
        assert_eq!(l.kernel_reserved.end, BASE + LEGACY_TEXT_OFFSET + 0x3000);
    }

    #[test]
    fn raw_binary() {
        let k = vec![0xd5u8; 100];
        let l = plan(&k, KernelFormat::Auto, Some(10), BASE, 8 * MIB).unwrap();
        assert_eq!(l.format, LoadedFormat::Raw);
        assert_eq!(l.entry, BASE + 0x8_0000);
        assert_eq!(l.entry % 0x1_0000, 0, "64 KiB aligned");
        assert_eq!(l.kernel, BASE + 0x8_0000..BASE + 0x8_0000 + 100);
        // Forcing raw ignores a magic.
        let img = image(0x1000, 0, 0x1000, 0);
        assert_eq!(
            plan(&img, KernelFormat::Raw, None, BASE, 8 * MIB)
                .unwrap()
                .format,
            LoadedFormat::Raw
        );
    }

    #[test]
    fn malformed_images_are_refused() {
        let p = |k: &[u8], f| plan(k, f, None, BASE, 128 * MIB);
        assert_eq!(p(&[], KernelFormat::Auto), Err(ImageError::EmptyKernel));
        assert_eq!(
            p(&[0; 63], KernelFormat::Image),
            Err(ImageError::Truncated {
                what: "the Image header",
                need: 64,
                have: 63
            })
        );
        assert_eq!(
            p(&[0; 4096], KernelFormat::Image),
            Err(ImageError::BadMagic)
        );
        // Magic present but the header cut short right after it.
        let short = image(0x3c, 0, 0x1000, 0);
        assert!(matches!(
            p(&short, KernelFormat::Auto),
            Err(ImageError::Truncated { .. })
        ));
        assert_eq!(
            p(&image(0x1000, 0, 0x800, 0), KernelFormat::Auto),
            Err(ImageError::ImageSizeTooSmall {
                image_size: 0x800,
                file_len: 0x1000
            })
        );
        assert_eq!(
            p(&image(0x1000, 0x123, 0x2000, 0), KernelFormat::Auto),
            Err(ImageError::BadTextOffset(0x123))
        );
        assert_eq!(
            p(&image(0x1000, 4 * MIB, 0x2000, 0), KernelFormat::Auto),
            Err(ImageError::BadTextOffset(4 * MIB))
        );
        assert_eq!(
            p(&image(0x1000, 0, 0x2000, 1), KernelFormat::Auto),
            Err(ImageError::BigEndian)
        );
        let err = p(&image(0x1000, 0x123, 0x2000, 0), KernelFormat::Auto).unwrap_err();
        assert!(std::format!("{err}").contains("text_offset 0x123"), "{err}");
    }

    /// An Image with an EFI stub whose one section ends at `section_end`.
    fn efi_image(len: usize, section_end: u32) -> Vec<u8> {
        let mut k = image(len.max(0x200), 0, 0x10_0000, 0);
        k[0..2].copy_from_slice(b"MZ");
        k[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        k[0x40..0x44].copy_from_slice(b"PE\0\0");
        k[0x46..0x48].copy_from_slice(&1u16.to_le_bytes()); // one section
        k[0x54..0x56].copy_from_slice(&0u16.to_le_bytes()); // no optional header
                                                            // Section header at 0x58: raw size at +16, raw pointer at +20.
        k[0x58 + 16..0x58 + 20].copy_from_slice(&(section_end - 0x100).to_le_bytes());
        k[0x58 + 20..0x58 + 24].copy_from_slice(&0x100u32.to_le_bytes());
        k.truncate(len);
        k
    }

    #[test]
    fn truncated_efi_image_is_caught() {
        let whole = efi_image(0x4000, 0x4000);
        assert!(plan(&whole, KernelFormat::Auto, None, BASE, 16 * MIB).is_ok());
        let cut = efi_image(0x3000, 0x4000);
        assert_eq!(
            plan(&cut, KernelFormat::Auto, None, BASE, 16 * MIB),
            Err(ImageError::Truncated {
                what: "the PE sections",
                need: 0x4000,
                have: 0x3000
            })
        );
        // Cut inside the section table.
        let mut tiny = efi_image(0x200, 0x200);
        tiny.truncate(0x60);
        assert!(matches!(
            plan(&tiny, KernelFormat::Auto, None, BASE, 16 * MIB),
            Err(ImageError::Truncated { .. })
        ));
    }

    #[test]
    fn too_large_for_guest_ram() {
        let k = image(0x1000, 0, 15 * MIB, 0);
        assert_eq!(
            plan(&k, KernelFormat::Auto, None, BASE, 16 * MIB),
            Err(ImageError::TooLarge {
                what: "the kernel",
                end: BASE + 15 * MIB,
                limit: BASE + 14 * MIB
            })
        );
        let k = image(0x1000, 0, 4 * MIB, 0);
        assert!(matches!(
            plan(&k, KernelFormat::Auto, Some(11 * MIB), BASE, 16 * MIB),
            Err(ImageError::TooLarge {
                what: "the initrd",
                ..
            })
        ));
        assert!(plan(&k, KernelFormat::Auto, Some(8 * MIB), BASE, 16 * MIB).is_ok());
        let huge = image(0x1000, 0, u64::MAX - 10, 0);
        assert!(matches!(
            plan(&huge, KernelFormat::Auto, None, BASE, 16 * MIB),
            Err(ImageError::TooLarge { .. })
        ));
        assert!(matches!(
            plan(&k, KernelFormat::Auto, None, BASE + 4096, 16 * MIB),
            Err(ImageError::BadRam { .. })
        ));
        assert!(matches!(
            plan(&k, KernelFormat::Auto, None, BASE, 2 * MIB),
            Err(ImageError::BadRam { .. })
        ));
        assert!(matches!(
            plan(&k, KernelFormat::Auto, None, u64::MAX - SZ_2M + 1, 4 * MIB),
            Err(ImageError::BadRam { .. })
        ));
    }

    #[test]
    fn copy_places_every_byte() {
        let k = image(0x1800, 0x8_0000, 0x2000, 0);
        let initrd = vec![0x5au8; 300];
        let dtb = vec![0xd0u8; 100];
        let l = plan(&k, KernelFormat::Auto, Some(300), BASE, 8 * MIB).unwrap();
        let mut ram = vec![0xffu8; (8 * MIB) as usize];
        copy_into_ram(&mut ram, BASE, &l, &k, Some(&initrd), &dtb).unwrap();
        let at = |ipa: u64| (ipa - BASE) as usize;
        assert_eq!(&ram[at(l.kernel.start)..at(l.kernel.end)], &k[..]);
        assert!(
            ram[at(l.kernel.end)..at(l.kernel_reserved.end)]
                .iter()
                .all(|&b| b == 0),
            "bss zeroed"
        );
        let ir = l.initrd.clone().unwrap();
        assert_eq!(&ram[at(ir.start)..at(ir.end)], &initrd[..]);
        assert_eq!(&ram[at(l.dtb.start)..at(l.dtb.start) + 100], &dtb[..]);
        assert_eq!(ram[at(l.dtb.start) + 100], 0);
        // A mismatched file or a small RAM slice is refused before anything is written.
        let mut small = vec![0xeeu8; (4 * MIB) as usize];
        assert!(copy_into_ram(&mut small, BASE, &l, &k, Some(&initrd), &dtb).is_err());
        assert!(small.iter().all(|&b| b == 0xee));
        assert!(copy_into_ram(&mut ram, BASE, &l, &k, None, &dtb).is_err());
        let mut inverted = l.clone();
        inverted.dtb = l.dtb.end..l.dtb.start;
        assert!(copy_into_ram(&mut ram, BASE, &inverted, &k, Some(&initrd), &dtb).is_err());
        assert!(copy_into_ram(&mut ram, BASE, &l, &k[1..], Some(&initrd), &dtb).is_err());
    }
}
