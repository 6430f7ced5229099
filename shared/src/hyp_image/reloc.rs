//! Rebasing the image's 64-bit slots to the hyp VA it will run at.

use super::{rd64, HypImage, HypImageError, RelocProblem, PAGE_SIZE};

/// Rebases `image` (a complete, unmodified hyp image) to run at hyp VA `hyp_va_base`,
/// the VA of image offset 0: each slot of the relocation list holds a link-time address
/// (an image offset `v` in `0..=mem_size`) and becomes `hyp_va_base + v`.
///
/// Everything is checked first: the whole image with [`HypImage::parse`] (so the
/// checksum must still match: rebase before patching), a page-aligned base, every slot's
/// value and the sums. On any error nothing has been written. Returns the number of
/// slots rebased. Relocating twice fails, because the slots then hold hyp VAs, not
/// image offsets.
pub fn apply_relocations(image: &mut [u8], hyp_va_base: u64) -> Result<usize, HypImageError> {
    if !hyp_va_base.is_multiple_of(u64::from(PAGE_SIZE)) {
        return Err(HypImageError::UnalignedBase(hyp_va_base));
    }
    let parsed = HypImage::parse(image)?;
    let layout = *parsed.layout();
    let mem_size = u64::from(layout.mem_size);
    let mut count = 0;
    for (index, offset) in parsed.relocations().enumerate() {
        let value = rd64(image, offset as usize);
        let bad = |problem| HypImageError::Reloc {
            index,
            offset,
            problem,
        };
        if value > mem_size {
            return Err(bad(RelocProblem::ValueOutsideImage(value)));
        }
        if hyp_va_base.checked_add(value).is_none() {
            return Err(bad(RelocProblem::Overflow(value)));
        }
        count += 1;
    }
    // All slots were checked; only now write. The list lies outside rodata and data
    // (checked by `parse`), so writing slots cannot change the entries still to be read.
    let list = layout.relocs.offset as usize;
    for i in 0..count {
        let at = list + i * 4;
        let mut w = [0u8; 4];
        w.copy_from_slice(&image[at..at + 4]);
        let slot = u32::from_le_bytes(w) as usize;
        let value = rd64(image, slot).wrapping_add(hyp_va_base);
        image[slot..slot + 8].copy_from_slice(&value.to_le_bytes());
    }
    Ok(count)
}
