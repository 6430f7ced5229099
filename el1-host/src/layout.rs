//! The host's virtual-memory layout, laid out like Linux's (48-bit VAs, 4 KiB pages):
//!
//! | VA | what |
//! | --- | --- |
//! | `PAGE_OFFSET` = `0xffff_0000_0000_0000` … | linear map of all RAM: VA = PA − memstart + PAGE_OFFSET |
//! | `KIMAGE_VADDR` = `0xffff_8000_0800_0000` | the kernel image (text RX, rodata R, data/bss RW+XN) |
//! | `IOREMAP_BASE` = `0xffff_8001_0000_0000` … | device MMIO (PL011, …), Device-nGnRE |
//!
//! memstart is the lowest RAM address rounded down to 1 GiB. TTBR0 holds only an
//! identity map of the `.idmap.text` pages (used while a CPU turns its MMU on).
//! The functions here are pure arithmetic on addresses.

use alloc::vec::Vec;
use core::ops::Range;

/// Virtual-address bits of both halves.
pub const VA_BITS: u32 = 48;
/// Translation granule.
pub const PAGE_SIZE: u64 = 4096;
/// Start of the linear map (the first VA of the TTBR1 half).
pub const PAGE_OFFSET: u64 = 0xffff_0000_0000_0000;
/// Where the kernel image is linked (must match `linker/el1-host.ld`).
pub const KIMAGE_VADDR: u64 = 0xffff_8000_0800_0000;
/// First VA of the MMIO window.
pub const IOREMAP_BASE: u64 = 0xffff_8001_0000_0000;
/// Size of the MMIO window.
pub const IOREMAP_SIZE: u64 = 1 << 30;
/// The linear map holds at most this much (the lower half of the TTBR1 space).
pub const LINEAR_MAP_SIZE: u64 = 1 << (VA_BITS - 1);
/// memstart's alignment.
pub const MEMSTART_ALIGN: u64 = 1 << 30;

// The regions must not overlap: linear map, then the image (at most 1 GiB), then MMIO.
const _: () = assert!(KIMAGE_VADDR >= PAGE_OFFSET + LINEAR_MAP_SIZE);
const _: () = assert!(IOREMAP_BASE >= KIMAGE_VADDR + (1 << 30));

/// A physical address range (end exclusive).
pub type PhysRange = Range<u64>;

/// Rounds `x` down to a multiple of `align` (a power of two).
pub const fn align_down(x: u64, align: u64) -> u64 {
    x & !(align - 1)
}

/// Rounds `x` up to a multiple of `align` (a power of two), or `None` on overflow.
pub const fn align_up(x: u64, align: u64) -> Option<u64> {
    match x.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

/// Why a layout could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The device tree listed no RAM.
    NoRam,
    /// RAM spans more than the linear map can hold.
    RamTooLarge {
        /// memstart.
        memstart: u64,
        /// End of the highest RAM region.
        end: u64,
    },
    /// The physical address is not in the linear map.
    NotLinear(u64),
}

impl core::fmt::Display for LayoutError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NoRam => write!(f, "no RAM in the device tree"),
            Self::RamTooLarge { memstart, end } => write!(
                f,
                "RAM {memstart:#x}..{end:#x} is larger than the linear map ({LINEAR_MAP_SIZE:#x} bytes)"
            ),
            Self::NotLinear(pa) => write!(f, "physical address {pa:#x} is outside the linear map"),
        }
    }
}

/// The linear map: which RAM it covers and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinearMap {
    /// Lowest RAM address rounded down to [`MEMSTART_ALIGN`]; maps to [`PAGE_OFFSET`].
    pub memstart: u64,
    /// The RAM regions mapped, sorted, page aligned.
    pub regions: Vec<PhysRange>,
}

impl LinearMap {
    /// Builds the linear map for the given RAM regions (any order; empty ones are dropped;
    /// each is shrunk to whole pages).
    pub fn new(ram: &[PhysRange]) -> Result<Self, LayoutError> {
        let mut regions: Vec<PhysRange> = ram
            .iter()
            .filter_map(|r| {
                let start = align_up(r.start, PAGE_SIZE)?;
                let end = align_down(r.end, PAGE_SIZE);
                (start < end).then_some(start..end)
            })
            .collect();
        regions.sort_by_key(|r| r.start);
        let first = regions.first().ok_or(LayoutError::NoRam)?;
        let memstart = align_down(first.start, MEMSTART_ALIGN);
        let end = regions.iter().map(|r| r.end).max().unwrap_or(first.end);
        if end - memstart > LINEAR_MAP_SIZE {
            return Err(LayoutError::RamTooLarge { memstart, end });
        }
        Ok(Self { memstart, regions })
    }

    /// The linear-map VA of a physical address in RAM.
    pub fn pa_to_va(&self, pa: u64) -> Result<u64, LayoutError> {
        if self.regions.iter().any(|r| r.contains(&pa)) {
            Ok(pa - self.memstart + PAGE_OFFSET)
        } else {
            Err(LayoutError::NotLinear(pa))
        }
    }

    /// The physical address of a linear-map VA (the inverse of [`Self::pa_to_va`]).
    pub fn va_to_pa(&self, va: u64) -> Result<u64, LayoutError> {
        let pa = va
            .checked_sub(PAGE_OFFSET)
            .and_then(|off| off.checked_add(self.memstart))
            .ok_or(LayoutError::NotLinear(va))?;
        self.pa_to_va(pa).map(|_| pa)
    }
}

/// Where the kernel image sits: linked at [`KIMAGE_VADDR`], loaded at `load_pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelImage {
    /// Physical address of the image's first byte.
    pub load_pa: u64,
    /// Bytes from the first byte to the end of bss.
    pub size: u64,
}

impl KernelImage {
    /// `KIMAGE_VADDR - load_pa`, Linux's kimage_voffset (VA − PA for image addresses).
    pub const fn voffset(&self) -> u64 {
        KIMAGE_VADDR.wrapping_sub(self.load_pa)
    }

    /// The physical range the image occupies.
    pub fn phys_range(&self) -> PhysRange {
        self.load_pa..self.load_pa + self.size
    }

    /// The physical address of an image VA, if the VA is inside the image.
    pub fn va_to_pa(&self, va: u64) -> Option<u64> {
        (KIMAGE_VADDR..KIMAGE_VADDR + self.size)
            .contains(&va)
            .then(|| va.wrapping_sub(self.voffset()))
    }

    /// The image VA of a physical address, if the address is inside the image.
    pub fn pa_to_va(&self, pa: u64) -> Option<u64> {
        self.phys_range()
            .contains(&pa)
            .then(|| pa.wrapping_add(self.voffset()))
    }
}

/// The parts of `ram` not covered by any of `reserved`, sorted; pieces smaller than a page
/// are dropped and every piece is page aligned.
pub fn free_ranges(ram: &[PhysRange], reserved: &[PhysRange]) -> Vec<PhysRange> {
    let mut out: Vec<PhysRange> = Vec::new();
    for r in ram {
        let mut pieces = alloc::vec![r.clone()];
        for res in reserved {
            let mut next = Vec::new();
            for p in pieces {
                if res.end <= p.start || res.start >= p.end {
                    next.push(p);
                    continue;
                }
                if p.start < res.start {
                    next.push(p.start..res.start);
                }
                if res.end < p.end {
                    next.push(res.end..p.end);
                }
            }
            pieces = next;
        }
        out.extend(pieces.into_iter().filter_map(|p| {
            let start = align_up(p.start, PAGE_SIZE)?;
            let end = align_down(p.end, PAGE_SIZE);
            (start < end).then_some(start..end)
        }));
    }
    out.sort_by_key(|r| r.start);
    out
}

/// A bump allocator of VAs in the MMIO window; hands out page-aligned ranges that keep the
/// device's offset within its page.
#[derive(Clone, Debug)]
pub struct IoRemapWindow {
    next: u64,
}

impl Default for IoRemapWindow {
    fn default() -> Self {
        Self { next: IOREMAP_BASE }
    }
}

impl IoRemapWindow {
    /// Reserves VAs for the physical range `pa..pa+size`; returns (VA of `pa`, page-aligned
    /// VA range to map, page-aligned PA to map it to), or `None` if the window is full.
    pub fn reserve(&mut self, pa: u64, size: u64) -> Option<(u64, Range<u64>, u64)> {
        let pa_start = align_down(pa, PAGE_SIZE);
        let pa_end = align_up(pa.checked_add(size.max(1))?, PAGE_SIZE)?;
        let len = pa_end - pa_start;
        let va = self.next;
        let end = va.checked_add(len)?;
        if end > IOREMAP_BASE + IOREMAP_SIZE {
            return None;
        }
        self.next = end;
        Some((va + (pa - pa_start), va..end, pa_start))
    }
}

#[cfg(test)]
#[allow(
    clippy::single_range_in_vec_init,
    reason = "lists of RAM regions with one region"
)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_linux_like() {
        assert_eq!(PAGE_OFFSET, 0u64.wrapping_sub(1 << VA_BITS));
        assert_eq!(LINEAR_MAP_SIZE, 1 << 47);
    }

    #[test]
    fn linear_map_of_qemu_virt() {
        let lm = LinearMap::new(&[0x4000_0000..0x8000_0000]).unwrap();
        assert_eq!(lm.memstart, 0x4000_0000);
        assert_eq!(lm.pa_to_va(0x4020_0000), Ok(PAGE_OFFSET + 0x20_0000));
        assert_eq!(lm.va_to_pa(PAGE_OFFSET + 0x20_0000), Ok(0x4020_0000));
        assert_eq!(
            lm.pa_to_va(0x8000_0000),
            Err(LayoutError::NotLinear(0x8000_0000))
        );
        assert_eq!(lm.va_to_pa(0x1000), Err(LayoutError::NotLinear(0x1000)));
    }

    #[test]
    fn memstart_rounds_down_to_1g_and_regions_sort() {
        let lm = LinearMap::new(&[0x1_0000_0000..0x1_4000_0000, 0x7000_1234..0x8000_0000]).unwrap();
        assert_eq!(lm.memstart, 0x4000_0000);
        assert_eq!(lm.regions[0], 0x7000_2000..0x8000_0000);
        assert_eq!(lm.pa_to_va(0x7000_2000), Ok(PAGE_OFFSET + 0x3000_2000));
    }

    #[test]
    fn linear_map_errors() {
        assert_eq!(LinearMap::new(&[]), Err(LayoutError::NoRam));
        assert_eq!(LinearMap::new(&[0x1000..0x1800]), Err(LayoutError::NoRam));
        let huge = LinearMap::new(&[0..(1 << 48)]);
        assert!(matches!(huge, Err(LayoutError::RamTooLarge { .. })));
    }

    #[test]
    fn kernel_image_offsets() {
        let k = KernelImage {
            load_pa: 0x4020_0000,
            size: 0x30_0000,
        };
        assert_eq!(k.voffset(), 0xffff_7fff_c7e0_0000);
        assert_eq!(k.va_to_pa(KIMAGE_VADDR + 0x10), Some(0x4020_0010));
        assert_eq!(k.pa_to_va(0x4020_0010), Some(KIMAGE_VADDR + 0x10));
        assert_eq!(k.va_to_pa(KIMAGE_VADDR + 0x30_0000), None);
        assert_eq!(k.pa_to_va(0x4000_0000), None);
    }

    #[test]
    fn free_ranges_cut_out_reservations() {
        let ram = [0x4000_0000..0x8000_0000];
        let reserved = [0x4020_0000..0x4050_0000, 0x4800_0000..0x4800_1800];
        assert_eq!(
            free_ranges(&ram, &reserved),
            vec![
                0x4000_0000..0x4020_0000,
                0x4050_0000..0x4800_0000,
                0x4800_2000..0x8000_0000
            ]
        );
        assert_eq!(free_ranges(&ram, &[0..u64::MAX]), Vec::<PhysRange>::new());
        assert_eq!(free_ranges(&ram, &[]), ram.to_vec());
    }

    #[test]
    fn ioremap_keeps_page_offset() {
        let mut w = IoRemapWindow::default();
        let (va, range, pa) = w.reserve(0x0900_0000, 0x1000).unwrap();
        assert_eq!(
            (va, range.clone(), pa),
            (
                IOREMAP_BASE,
                IOREMAP_BASE..IOREMAP_BASE + 0x1000,
                0x0900_0000
            )
        );
        let (va2, range2, pa2) = w.reserve(0x0800_0123, 0x1000).unwrap();
        assert_eq!(va2, range.end + 0x123);
        assert_eq!(range2, range.end..range.end + 0x2000);
        assert_eq!(pa2, 0x0800_0000);
        assert!(w.reserve(0, IOREMAP_SIZE).is_none());
    }
}
