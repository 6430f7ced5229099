//! Writing the header (used by xtask, and by tests to make images).

use super::parse::off;
use super::{
    fnv1a64, HypImage, HypImageError, HypLayout, ImageRange, CHECKSUMMED_FROM, CHECKSUM_OFFSET,
    HEADER_SIZE, MAGIC, VERSION,
};

/// The header bytes for `layout`, with a zero checksum (see [`seal`]).
pub fn encode_header(layout: &HypLayout) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    let mut put = |at: usize, v: u32| h[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(off::VERSION, VERSION);
    put(off::HEADER_SIZE, HEADER_SIZE as u32);
    put(off::IMAGE_SIZE, layout.image_size);
    put(off::MEM_SIZE, layout.mem_size);
    let ranges: [(usize, ImageRange); 8] = [
        (off::TEXT, layout.text),
        (off::RODATA, layout.rodata),
        (off::DATA, layout.data),
        (off::BSS, layout.bss),
        (off::IDMAP, layout.idmap),
        (off::ALT, layout.alt),
        (off::RELOCS, layout.relocs),
        (off::PERCPU, layout.percpu),
    ];
    for (at, r) in ranges {
        put(at, r.offset);
        put(at + 4, r.size);
    }
    put(off::INIT_ENTRY, layout.init_entry);
    put(off::HOST_VECTOR, layout.host_vector);
    put(off::STACK_SIZE, layout.stack_size);
    put(off::RESERVED, 0);
    h[..MAGIC.len()].copy_from_slice(&MAGIC);
    h
}

/// Recomputes and stores the checksum of `image` (whatever its header says otherwise);
/// returns it. Fails only if `image` is shorter than a header.
pub fn write_checksum(image: &mut [u8]) -> Result<u64, HypImageError> {
    if image.len() < HEADER_SIZE {
        return Err(HypImageError::TooShort(image.len()));
    }
    let sum = fnv1a64(&image[CHECKSUMMED_FROM..]);
    image[CHECKSUM_OFFSET..CHECKSUMMED_FROM].copy_from_slice(&sum.to_le_bytes());
    Ok(sum)
}

/// Finishes an image whose sections, alternative table and relocation list are already
/// in place: checks `layout`, writes the header and the checksum, then verifies the
/// result with [`HypImage::parse`], so a sealed image is one the host accepts.
pub fn seal(layout: &HypLayout, image: &mut [u8]) -> Result<(), HypImageError> {
    layout.validate()?;
    if image.len() != layout.image_size as usize {
        return Err(HypImageError::SizeMismatch {
            header: layout.image_size,
            actual: image.len(),
        });
    }
    image[..HEADER_SIZE].copy_from_slice(&encode_header(layout));
    write_checksum(image)?;
    HypImage::parse(image).map(|_| ())
}
