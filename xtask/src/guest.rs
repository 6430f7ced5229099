//! Building the test guest (`tests/guest`) and turning it into an arm64 Image.
//!
//! The guest is a static PIE linked at 0 by `linker/guest.ld` (flags below, own target
//! directory so they never mix with other builds). [`pie_to_image`] lays its loadable
//! segments out flat from 0, checks that the entry code can relocate it wherever it is
//! loaded (only `R_AARCH64_RELATIVE` entries, all inside the file, `.rela.dyn` itself
//! in the file), and writes the Image header with [`crate::image::write_header`]:
//! branch to the entry, text_offset 0, image_size up to the end of `.bss`.

use crate::image::{self, ImageHeader, HEADER_SIZE};
use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader, Rela, SectionHeader};
use object::{Object, ObjectSection};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's package (and binary) name.
pub const PACKAGE: &str = "test-guest";
/// Target directory of the guest build (its flags differ from everything else's).
pub const TARGET_DIR: &str = "target/guest-pie";
/// The one relocation type the guest's entry code applies.
pub const R_AARCH64_RELATIVE: u32 = elf::R_AARCH64_RELATIVE.0;

/// What is wrong with the guest's ELF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestImageError {
    /// Not parseable as a little-endian ELF64 for AArch64.
    NotElf(String),
    /// Not `ET_DYN`: the guest was not linked with `-pie`.
    NotPie(u16),
    /// No PT_LOAD segment with contents.
    NoLoadSegments,
    /// The lowest loaded address is not 0 (the link script puts the header there).
    NotLinkedAtZero(u64),
    /// A segment's bytes lie outside the file.
    Truncated(&'static str),
    /// A relocation the entry code cannot apply (type, offset).
    UnsupportedRelocation(u32, u64),
    /// A relocation slot outside the loaded file or not 8-byte aligned.
    BadRelocationSlot(u64),
    /// `.rela.dyn` is not inside the loaded file, so the entry code could not read it.
    RelocationsNotLoaded,
    /// The Image header checks failed.
    Image(image::ImageError),
}

impl fmt::Display for GuestImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotElf(why) => write!(f, "not a little-endian AArch64 ELF64 file: {why}"),
            Self::NotPie(t) => write!(
                f,
                "e_type is {t}, expected ET_DYN (3): was the guest linked with -pie?"
            ),
            Self::NoLoadSegments => write!(f, "no PT_LOAD segment with contents"),
            Self::NotLinkedAtZero(a) => write!(
                f,
                "the lowest loaded address is {a:#x}, expected 0 (linker/guest.ld)"
            ),
            Self::Truncated(what) => write!(f, "{what} lies outside the file"),
            Self::UnsupportedRelocation(t, at) => write!(
                f,
                "relocation type {t} at {at:#x}: only R_AARCH64_RELATIVE (1027) is applied by \
                 the guest's entry code"
            ),
            Self::BadRelocationSlot(at) => write!(
                f,
                "relocation slot {at:#x} is not an aligned 8-byte word inside the loaded file"
            ),
            Self::RelocationsNotLoaded => write!(
                f,
                ".rela.dyn is not inside the loaded file (it must come before .bss)"
            ),
            Self::Image(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for GuestImageError {}

impl From<image::ImageError> for GuestImageError {
    fn from(e: image::ImageError) -> Self {
        Self::Image(e)
    }
}

/// Where [`build_guest`] writes the Image.
pub fn image_path(root: &Path) -> PathBuf {
    root.join(TARGET_DIR)
        .join(crate::build::TARGET)
        .join("release")
        .join(format!("{PACKAGE}.img"))
}

/// Builds the guest (release, static PIE) and writes its arm64 Image; returns its path.
pub fn build_guest(root: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join(TARGET_DIR);
    eprintln!(
        "xtask: building {PACKAGE} (static PIE) in {}",
        target_dir.display()
    );
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", PACKAGE, "--target"])
        .arg(crate::build::TARGET)
        .arg("--target-dir")
        .arg(&target_dir)
        // Highest-precedence flag source, so an outer RUSTFLAGS cannot drop -pie.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            crate::build::static_pie_rustflags(&root.join("linker/guest.ld")).join("\x1f"),
        )
        .env_remove("RUSTFLAGS")
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("building {PACKAGE} failed ({status})"));
    }
    let elf_path = target_dir
        .join(crate::build::TARGET)
        .join("release")
        .join(PACKAGE);
    let elf =
        std::fs::read(&elf_path).map_err(|e| format!("cannot read {}: {e}", elf_path.display()))?;
    let img = pie_to_image(&elf).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    let out = image_path(root);
    std::fs::write(&out, &img).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let h = image::read_header(&img).map_err(|e| e.to_string())?;
    eprintln!(
        "xtask: wrote {} ({} bytes, image_size {:#x})",
        out.display(),
        img.len(),
        h.image_size
    );
    Ok(out)
}

/// Turns the guest's static-PIE ELF into an arm64 Image (see the module comment).
pub fn pie_to_image(bytes: &[u8]) -> Result<Vec<u8>, GuestImageError> {
    let file = ElfFile64::<object::Endianness>::parse(bytes)
        .map_err(|e| GuestImageError::NotElf(e.to_string()))?;
    let endian = file.endian();
    let header = file.elf_header();
    if !file.is_little_endian() || header.e_machine(endian) != elf::EM_AARCH64 {
        return Err(GuestImageError::NotElf("not little-endian AArch64".into()));
    }
    let e_type = header.e_type(endian).0;
    if e_type != elf::ET_DYN.0 {
        return Err(GuestImageError::NotPie(e_type));
    }
    let phdrs = header
        .program_headers(endian, bytes)
        .map_err(|e| GuestImageError::NotElf(e.to_string()))?;
    let loads: Vec<_> = phdrs
        .iter()
        .filter(|p| p.p_type(endian) == elf::PT_LOAD && p.p_memsz(endian) > 0)
        .collect();
    let base = loads
        .iter()
        .map(|p| p.p_vaddr(endian))
        .min()
        .ok_or(GuestImageError::NoLoadSegments)?;
    if base != 0 {
        return Err(GuestImageError::NotLinkedAtZero(base));
    }
    let file_end = loads
        .iter()
        .filter(|p| p.p_filesz(endian) > 0)
        .map(|p| p.p_vaddr(endian).saturating_add(p.p_filesz(endian)))
        .max()
        .ok_or(GuestImageError::NoLoadSegments)?;
    let mem_end = loads
        .iter()
        .map(|p| p.p_vaddr(endian).saturating_add(p.p_memsz(endian)))
        .max()
        .unwrap_or(file_end);
    let len = usize::try_from(file_end).map_err(|_| GuestImageError::Truncated("the image"))?;
    let mut img = vec![0u8; len.max(HEADER_SIZE)];
    for p in loads.iter().filter(|p| p.p_filesz(endian) > 0) {
        let data = p
            .data(endian, bytes)
            .map_err(|_| GuestImageError::Truncated("a PT_LOAD segment"))?;
        let at = p.p_vaddr(endian) as usize;
        img[at..at + data.len()].copy_from_slice(data);
    }
    check_relocations(&file, file_end)?;
    if img[..HEADER_SIZE].iter().any(|&b| b != 0) {
        return Err(image::ImageError::HeaderNotReserved.into());
    }
    let entry = header.e_entry(endian);
    if entry < HEADER_SIZE as u64 || entry >= file_end || !entry.is_multiple_of(4) {
        return Err(image::ImageError::BadEntry(entry).into());
    }
    let code0 = image::branch(entry as i64).ok_or(image::ImageError::BadEntry(entry))?;
    let h = ImageHeader {
        code0,
        code1: 0,
        text_offset: 0,
        image_size: mem_end,
        flags: image::FLAGS,
    };
    image::write_header(&mut img, &h)?;
    if image::verify(&img)? != h {
        return Err(image::ImageError::BadHeader("read-back differs from what was written").into());
    }
    Ok(img)
}

/// Every dynamic relocation must be one the entry code applies, at a slot inside the
/// file, and `.rela.dyn` itself must be loaded.
fn check_relocations(
    file: &ElfFile64<'_, object::Endianness>,
    file_end: u64,
) -> Result<(), GuestImageError> {
    let endian = file.endian();
    for s in file.sections() {
        let h = s.elf_section_header();
        let Some((relas, _)) = h
            .rela(endian, file.data())
            .map_err(|e| GuestImageError::NotElf(e.to_string()))?
        else {
            continue;
        };
        if !relas.is_empty()
            && (s.address() < HEADER_SIZE as u64 || s.address().saturating_add(s.size()) > file_end)
        {
            return Err(GuestImageError::RelocationsNotLoaded);
        }
        for r in relas {
            let (kind, at) = (r.r_type(endian, false).0, r.r_offset(endian));
            if kind != R_AARCH64_RELATIVE {
                return Err(GuestImageError::UnsupportedRelocation(kind, at));
            }
            if !at.is_multiple_of(8) || at < HEADER_SIZE as u64 || at.saturating_add(8) > file_end {
                return Err(GuestImageError::BadRelocationSlot(at));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal AArch64 ELF64 with one PT_LOAD at 0 (`text`, memsz `mem`), entry
    /// `entry`, and a `.rela.dyn` section holding `relas` (offset, type) placed in the
    /// file at `rela_at` (an address inside `text`, or 0 to leave it unloaded).
    fn elf(
        e_type: u16,
        entry: u64,
        text: &[u8],
        mem: u64,
        relas: &[(u64, u32)],
        rela_at: u64,
    ) -> Vec<u8> {
        let mut out = vec![0u8; 64];
        out[0..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&e_type.to_le_bytes());
        out[18..20].copy_from_slice(&183u16.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[52..54].copy_from_slice(&64u16.to_le_bytes());
        // Program header.
        let phoff = out.len() as u64;
        let text_off = 0x1000u64;
        let mut ph = vec![0u8; 56];
        ph[0..4].copy_from_slice(&1u32.to_le_bytes());
        ph[4..8].copy_from_slice(&5u32.to_le_bytes());
        ph[8..16].copy_from_slice(&text_off.to_le_bytes());
        ph[32..40].copy_from_slice(&(text.len() as u64).to_le_bytes());
        ph[40..48].copy_from_slice(&mem.to_le_bytes());
        ph[48..56].copy_from_slice(&0x1000u64.to_le_bytes());
        out.extend_from_slice(&ph);
        out.resize(text_off as usize, 0);
        out.extend_from_slice(text);
        // Relocations.
        let rela_off = out.len() as u64;
        for &(at, kind) in relas {
            out.extend_from_slice(&at.to_le_bytes());
            out.extend_from_slice(&u64::from(kind).to_le_bytes());
            out.extend_from_slice(&0x100u64.to_le_bytes());
        }
        // Section names.
        let shstr_off = out.len() as u64;
        let names = b"\0.rela.dyn\0.shstrtab\0";
        out.extend_from_slice(names);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        // Section headers: null, .rela.dyn, .shstrtab.
        let shoff = out.len() as u64;
        out.extend_from_slice(&[0u8; 64]);
        let mut sh = vec![0u8; 64];
        sh[0..4].copy_from_slice(&1u32.to_le_bytes());
        sh[4..8].copy_from_slice(&4u32.to_le_bytes()); // SHT_RELA
        sh[8..16].copy_from_slice(&2u64.to_le_bytes()); // SHF_ALLOC
        sh[16..24].copy_from_slice(&rela_at.to_le_bytes());
        sh[24..32].copy_from_slice(&rela_off.to_le_bytes());
        sh[32..40].copy_from_slice(&(relas.len() as u64 * 24).to_le_bytes());
        sh[48..56].copy_from_slice(&8u64.to_le_bytes());
        sh[56..64].copy_from_slice(&24u64.to_le_bytes());
        out.extend_from_slice(&sh);
        let mut sh = vec![0u8; 64];
        sh[0..4].copy_from_slice(&11u32.to_le_bytes());
        sh[4..8].copy_from_slice(&3u32.to_le_bytes()); // SHT_STRTAB
        sh[24..32].copy_from_slice(&shstr_off.to_le_bytes());
        sh[32..40].copy_from_slice(&(names.len() as u64).to_le_bytes());
        sh[48..56].copy_from_slice(&1u64.to_le_bytes());
        out.extend_from_slice(&sh);
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[40..48].copy_from_slice(&shoff.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&1u16.to_le_bytes());
        out[58..60].copy_from_slice(&64u16.to_le_bytes());
        out[60..62].copy_from_slice(&3u16.to_le_bytes());
        out[62..64].copy_from_slice(&2u16.to_le_bytes());
        out
    }

    fn text() -> Vec<u8> {
        let mut t = vec![0u8; 0x400];
        t[0x100..0x104].copy_from_slice(&0xd503_201fu32.to_le_bytes()); // nop at the entry
        t
    }

    const DYN: u16 = 3;

    #[test]
    fn writes_a_verified_header_over_the_flat_image() {
        let e = elf(DYN, 0x100, &text(), 0x3000, &[(0x200, 1027)], 0x300);
        let img = pie_to_image(&e).unwrap();
        assert_eq!(img.len(), 0x400);
        let h = image::verify(&img).unwrap();
        assert_eq!(h.code0, image::branch(0x100).unwrap());
        assert_eq!(h.image_size, 0x3000);
        assert_eq!(h.text_offset, 0);
        assert_eq!(&img[0x100..0x104], &0xd503_201fu32.to_le_bytes());
    }

    #[test]
    fn refuses_what_the_entry_code_cannot_relocate() {
        let abs64 = elf(DYN, 0x100, &text(), 0x400, &[(0x200, 257)], 0x300);
        assert_eq!(
            pie_to_image(&abs64),
            Err(GuestImageError::UnsupportedRelocation(257, 0x200))
        );
        let outside = elf(DYN, 0x100, &text(), 0x800, &[(0x600, 1027)], 0x300);
        assert_eq!(
            pie_to_image(&outside),
            Err(GuestImageError::BadRelocationSlot(0x600))
        );
        let misaligned = elf(DYN, 0x100, &text(), 0x400, &[(0x204, 1027)], 0x300);
        assert_eq!(
            pie_to_image(&misaligned),
            Err(GuestImageError::BadRelocationSlot(0x204))
        );
        let unloaded = elf(DYN, 0x100, &text(), 0x400, &[(0x200, 1027)], 0);
        assert_eq!(
            pie_to_image(&unloaded),
            Err(GuestImageError::RelocationsNotLoaded)
        );
    }

    #[test]
    fn refuses_bad_elves() {
        let exec = elf(2, 0x100, &text(), 0x400, &[], 0x300);
        assert_eq!(pie_to_image(&exec), Err(GuestImageError::NotPie(2)));
        let in_header = elf(DYN, 0x8, &text(), 0x400, &[], 0x300);
        assert_eq!(
            pie_to_image(&in_header),
            Err(GuestImageError::Image(image::ImageError::BadEntry(0x8)))
        );
        let mut t = text();
        t[0] = 1;
        let no_room = elf(DYN, 0x100, &t, 0x400, &[], 0x300);
        assert_eq!(
            pie_to_image(&no_room),
            Err(GuestImageError::Image(image::ImageError::HeaderNotReserved))
        );
        assert!(matches!(
            pie_to_image(b"not an elf"),
            Err(GuestImageError::NotElf(_))
        ));
        let msg = GuestImageError::NotPie(2).to_string();
        assert!(msg.contains("-pie"), "{msg}");
    }
}
