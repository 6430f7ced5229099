//! Computing the hyp VA layout from the RAM map (the analogue of Linux's
//! `kvm_compute_layout`), and the linear-map arithmetic it rests on.

use core::fmt;

/// VA bits of the host's kernel stage 1 in this project's configuration.
pub const DEFAULT_VA_BITS: u8 = 48;

/// Start of the linear map for 48-bit VAs (`-(1 << 48)`).
pub const DEFAULT_PAGE_OFFSET: u64 = 0xffff_0000_0000_0000;

/// Alignment of `memstart` (the PA the linear map starts at): 1 GiB with 4 KiB pages.
pub const MEMSTART_ALIGN: u64 = 1 << 30;

/// How many bits of `tag_val` the two `ADD` immediates of the `kern_hyp_va` site carry
/// (12 plain + 12 shifted).
pub const TAG_VAL_BITS: u8 = 24;

/// Smallest VA size accepted (Linux's smallest `VA_BITS`).
pub const MIN_VA_BITS: u8 = 36;

/// Largest VA size accepted for the layout (Linux computes the hyp layout with 48 bits
/// even when the kernel uses 52-bit LPA2 VAs).
pub const MAX_VA_BITS: u8 = 48;

/// Largest idmap VA size accepted (52-bit PAs need a 52-bit idmap).
pub const MAX_IDMAP_VA_BITS: u8 = 52;

/// The PA the linear map starts at by default: the lowest RAM address rounded down to
/// [`MEMSTART_ALIGN`] (no linear-map randomisation).
pub const fn default_memstart(ram_base: u64) -> u64 {
    ram_base & !(MEMSTART_ALIGN - 1)
}

/// `kimage_voffset`: what to add to a kernel-image PA to get its kernel-image VA
/// (two's complement when the VA is below the PA, which it never is on arm64).
pub const fn kimage_voffset(kimage_vaddr: u64, kimage_pa: u64) -> u64 {
    kimage_vaddr.wrapping_sub(kimage_pa)
}

/// One range of RAM, in physical addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// First byte.
    pub base: u64,
    /// Length in bytes (must not be zero).
    pub size: u64,
}

/// Everything the layout is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutParams<'a> {
    /// The RAM ranges (any order; holes are allowed, the layout spans lowest to highest).
    pub ram: &'a [RamRange],
    /// `vabits_actual` of the host's kernel stage 1, in [`MIN_VA_BITS`]..=[`MAX_VA_BITS`].
    pub va_bits: u8,
    /// VA bits of the idmap (64 − its T0SZ); the hyp uses the larger of this and `va_bits`.
    pub idmap_va_bits: u8,
    /// VA of the start of the linear map, aligned to half the kernel VA space.
    pub page_offset: u64,
    /// PA mapped at `page_offset` (Linux's `memstart_addr`), [`MEMSTART_ALIGN`]-aligned.
    pub memstart: u64,
    /// PA of the hyp's idmap text: the hyp VA range goes in the other half.
    pub idmap_pa: u64,
    /// PA of the hyp text, from which `hyp_physvirt_offset` is computed.
    pub hyp_text_pa: u64,
    /// Random bits for the tag (Linux's `get_random_long()`), used as given: the caller
    /// draws them from its entropy source. `None` means no randomisation.
    pub seed: Option<u64>,
    /// `nokaslr` on the command line: no randomisation even with a seed.
    pub nokaslr: bool,
}

impl<'a> LayoutParams<'a> {
    /// Parameters with this project's defaults: 48-bit VAs and idmap,
    /// [`DEFAULT_PAGE_OFFSET`], [`default_memstart`] of the lowest RAM base, no seed.
    pub fn new(ram: &'a [RamRange], idmap_pa: u64, hyp_text_pa: u64) -> Self {
        let lowest = ram.iter().map(|r| r.base).min().unwrap_or(0);
        LayoutParams {
            ram,
            va_bits: DEFAULT_VA_BITS,
            idmap_va_bits: DEFAULT_VA_BITS,
            page_offset: DEFAULT_PAGE_OFFSET,
            memstart: default_memstart(lowest),
            idmap_pa,
            hyp_text_pa,
            seed: None,
            nokaslr: false,
        }
    }
}

/// Why a layout could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// No RAM ranges were given.
    NoRam,
    /// A RAM range has size zero.
    EmptyRange {
        /// Index of the range.
        index: usize,
    },
    /// A RAM range runs past the end of the 64-bit address space.
    RangeOverflow {
        /// Index of the range.
        index: usize,
    },
    /// `va_bits` outside [`MIN_VA_BITS`]..=[`MAX_VA_BITS`].
    UnsupportedVaBits(u8),
    /// `idmap_va_bits` outside [`MIN_VA_BITS`]..=[`MAX_IDMAP_VA_BITS`].
    UnsupportedIdmapVaBits(u8),
    /// `page_offset` is not aligned to half the kernel VA space, or the linear map would
    /// run past the top of the address space.
    BadPageOffset {
        /// The value given.
        page_offset: u64,
        /// The VA size it was checked against.
        va_bits: u8,
    },
    /// `memstart` is not [`MEMSTART_ALIGN`]-aligned.
    MemstartMisaligned(u64),
    /// Some RAM lies below `memstart`, so the linear map cannot reach it.
    RamBelowMemstart {
        /// Lowest RAM address.
        ram_base: u64,
        /// The linear map's start PA.
        memstart: u64,
    },
    /// Some RAM lies beyond the end of the linear map (`memstart` + half the VA space).
    RamBeyondLinearMap {
        /// Last RAM byte.
        ram_last: u64,
        /// Last PA the linear map covers.
        limit: u64,
    },
    /// The tag does not fit the two 12-bit `ADD` immediates: `va_bits − tag_lsb` must
    /// be at most [`TAG_VAL_BITS`], i.e. the RAM span is too small.
    TagTooWide {
        /// `fls64(lo ^ hi)` of the linear map of RAM.
        tag_lsb: u8,
        /// The VA size.
        va_bits: u8,
    },
    /// The idmap PA is not reachable with the hyp's VA size.
    IdmapOutOfRange {
        /// The idmap PA.
        idmap_pa: u64,
        /// The hyp's VA size.
        hyp_va_bits: u8,
    },
    /// The hyp text PA is not inside RAM.
    HypTextOutsideRam(u64),
}

impl fmt::Display for LayoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            LayoutError::NoRam => write!(f, "no RAM ranges given"),
            LayoutError::EmptyRange { index } => write!(f, "RAM range {index} has size zero"),
            LayoutError::RangeOverflow { index } => {
                write!(f, "RAM range {index} runs past the end of the address space")
            }
            LayoutError::UnsupportedVaBits(v) => write!(
                f,
                "VA size of {v} bits is not supported (need {MIN_VA_BITS}..={MAX_VA_BITS})"
            ),
            LayoutError::UnsupportedIdmapVaBits(v) => write!(
                f,
                "idmap VA size of {v} bits is not supported (need {MIN_VA_BITS}..={MAX_IDMAP_VA_BITS})"
            ),
            LayoutError::BadPageOffset {
                page_offset,
                va_bits,
            } => write!(
                f,
                "PAGE_OFFSET {page_offset:#018x} is not a valid linear-map start for {va_bits}-bit VAs"
            ),
            LayoutError::MemstartMisaligned(m) => {
                write!(f, "memstart {m:#x} is not 1 GiB aligned")
            }
            LayoutError::RamBelowMemstart { ram_base, memstart } => write!(
                f,
                "RAM at {ram_base:#x} lies below the linear map's start PA {memstart:#x}"
            ),
            LayoutError::RamBeyondLinearMap { ram_last, limit } => write!(
                f,
                "RAM up to {ram_last:#x} lies beyond the linear map, which ends at PA {limit:#x}"
            ),
            LayoutError::TagTooWide { tag_lsb, va_bits } => write!(
                f,
                "RAM span too small: tag_lsb {tag_lsb} leaves {} tag bits for {va_bits}-bit VAs, at most {TAG_VAL_BITS} fit the kern_hyp_va site",
                va_bits.saturating_sub(tag_lsb)
            ),
            LayoutError::IdmapOutOfRange {
                idmap_pa,
                hyp_va_bits,
            } => write!(
                f,
                "idmap PA {idmap_pa:#x} is beyond the {hyp_va_bits}-bit hyp VA space"
            ),
            LayoutError::HypTextOutsideRam(pa) => {
                write!(f, "hyp text PA {pa:#x} is not inside RAM")
            }
        }
    }
}

/// The hyp VA layout: `hyp VA = (linear VA & va_mask) | tag_val << tag_lsb`, plus the
/// linear map it is derived from. Only [`HypVaLayout::compute`] builds one, so every
/// value is consistent (the tag fits the patch site, RAM is inside the linear map).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HypVaLayout {
    va_bits: u8,
    hyp_va_bits: u8,
    tag_lsb: u8,
    va_mask: u64,
    tag_val: u64,
    hyp_physvirt_offset: u64,
    page_offset: u64,
    memstart: u64,
    ram_first: u64,
    ram_last: u64,
}

/// Index of the most significant set bit plus one; 0 for 0.
const fn fls64(x: u64) -> u8 {
    (64 - x.leading_zeros()) as u8
}

/// Bits `lo..=hi` set (`hi >= lo`, both below 64).
const fn genmask(hi: u8, lo: u8) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

impl HypVaLayout {
    /// Computes the layout as LINUX-FACTS §5.1 describes, honouring `nokaslr`.
    pub fn compute(p: &LayoutParams<'_>) -> Result<HypVaLayout, LayoutError> {
        let v = p.va_bits;
        if !(MIN_VA_BITS..=MAX_VA_BITS).contains(&v) {
            return Err(LayoutError::UnsupportedVaBits(v));
        }
        if !(MIN_VA_BITS..=MAX_IDMAP_VA_BITS).contains(&p.idmap_va_bits) {
            return Err(LayoutError::UnsupportedIdmapVaBits(p.idmap_va_bits));
        }
        let hyp_va_bits = v.max(p.idmap_va_bits);
        if p.idmap_pa >> hyp_va_bits != 0 {
            return Err(LayoutError::IdmapOutOfRange {
                idmap_pa: p.idmap_pa,
                hyp_va_bits,
            });
        }

        // The linear map covers half of the kernel VA space.
        let half = 1u64 << (v - 1);
        if p.page_offset & (half - 1) != 0 || p.page_offset.checked_add(half - 1).is_none() {
            return Err(LayoutError::BadPageOffset {
                page_offset: p.page_offset,
                va_bits: v,
            });
        }
        if p.memstart & (MEMSTART_ALIGN - 1) != 0 {
            return Err(LayoutError::MemstartMisaligned(p.memstart));
        }

        let (ram_first, ram_last) = ram_span(p.ram)?;
        if ram_first < p.memstart {
            return Err(LayoutError::RamBelowMemstart {
                ram_base: ram_first,
                memstart: p.memstart,
            });
        }
        if ram_last - p.memstart > half - 1 {
            return Err(LayoutError::RamBeyondLinearMap {
                ram_last,
                limit: p.memstart.saturating_add(half - 1),
            });
        }

        let lo = p.page_offset + (ram_first - p.memstart);
        let hi = p.page_offset + (ram_last - p.memstart);
        // Linear VAs of RAM agree in every bit from tag_lsb up, so the low tag_lsb bits
        // alone identify a RAM byte and the rest is free for the tag.
        let tag_lsb = fls64(lo ^ hi);
        if v - tag_lsb > TAG_VAL_BITS {
            return Err(LayoutError::TagTooWide {
                tag_lsb,
                va_bits: v,
            });
        }
        let va_mask = (1u64 << tag_lsb) - 1;

        // Put the hyp range in the VA half the idmap is not in, so they cannot collide.
        let msb = 1u64 << (v - 1);
        let mut tag = msb ^ (p.idmap_pa & msb);
        if let Some(seed) = p.seed {
            if !p.nokaslr && tag_lsb != v - 1 {
                tag |= seed & genmask(v - 2, tag_lsb);
            }
        }
        let tag_val = tag >> tag_lsb;

        let mut layout = HypVaLayout {
            va_bits: v,
            hyp_va_bits,
            tag_lsb,
            va_mask,
            tag_val,
            hyp_physvirt_offset: 0,
            page_offset: p.page_offset,
            memstart: p.memstart,
            ram_first,
            ram_last,
        };
        let text_hyp_va = layout
            .hyp_va_of_pa(p.hyp_text_pa)
            .ok_or(LayoutError::HypTextOutsideRam(p.hyp_text_pa))?;
        layout.hyp_physvirt_offset = p.hyp_text_pa.wrapping_sub(text_hyp_va);
        Ok(layout)
    }

    /// The host kernel's VA size.
    pub const fn va_bits(&self) -> u8 {
        self.va_bits
    }

    /// The hyp stage-1 VA size (`TCR_EL2.T0SZ = 64 − hyp_va_bits`).
    pub const fn hyp_va_bits(&self) -> u8 {
        self.hyp_va_bits
    }

    /// Lowest bit of the tag; the bits below it come from the linear VA.
    pub const fn tag_lsb(&self) -> u8 {
        self.tag_lsb
    }

    /// `(1 << tag_lsb) − 1`.
    pub const fn va_mask(&self) -> u64 {
        self.va_mask
    }

    /// The tag, already shifted down by `tag_lsb` (fits in [`TAG_VAL_BITS`] bits).
    pub const fn tag_val(&self) -> u64 {
        self.tag_val
    }

    /// `tag_val << tag_lsb`: the hyp VA of linear VAs whose low `tag_lsb` bits are zero.
    pub const fn hyp_base(&self) -> u64 {
        self.tag_val << self.tag_lsb
    }

    /// `PA − hyp VA` for every RAM byte (two's complement): `hyp_pa(v) = v + offset`.
    pub const fn hyp_physvirt_offset(&self) -> u64 {
        self.hyp_physvirt_offset
    }

    /// Start VA of the linear map.
    pub const fn page_offset(&self) -> u64 {
        self.page_offset
    }

    /// PA mapped at [`Self::page_offset`].
    pub const fn memstart(&self) -> u64 {
        self.memstart
    }

    /// Lowest and highest RAM byte (PAs, inclusive).
    pub const fn ram_span(&self) -> (u64, u64) {
        (self.ram_first, self.ram_last)
    }

    /// Linear VAs of the lowest and highest RAM byte (Linux's `lo` and `hi`).
    pub const fn linear_span(&self) -> (u64, u64) {
        (
            self.page_offset + (self.ram_first - self.memstart),
            self.page_offset + (self.ram_last - self.memstart),
        )
    }

    /// Hyp VAs of the lowest and highest RAM byte.
    pub const fn hyp_span(&self) -> (u64, u64) {
        let (lo, hi) = self.linear_span();
        (self.kern_hyp_va(lo), self.kern_hyp_va(hi))
    }

    /// What the patched `kern_hyp_va` site computes: `(va & va_mask) | tag_val << tag_lsb`.
    /// Defined for any input; meaningful for linear-map VAs of RAM.
    pub const fn kern_hyp_va(&self, linear_va: u64) -> u64 {
        (linear_va & self.va_mask) | self.hyp_base()
    }

    /// Linear-map VA of a RAM PA, or `None` outside the RAM span.
    pub const fn phys_to_virt(&self, pa: u64) -> Option<u64> {
        if pa < self.ram_first || pa > self.ram_last {
            return None;
        }
        Some(self.page_offset + (pa - self.memstart))
    }

    /// PA of a linear-map VA of RAM, or `None` outside the linear map of the RAM span.
    pub const fn virt_to_phys(&self, va: u64) -> Option<u64> {
        let (lo, hi) = self.linear_span();
        if va < lo || va > hi {
            return None;
        }
        Some(va - self.page_offset + self.memstart)
    }

    /// Hyp VA of a RAM PA, or `None` outside the RAM span.
    pub const fn hyp_va_of_pa(&self, pa: u64) -> Option<u64> {
        match self.phys_to_virt(pa) {
            Some(va) => Some(self.kern_hyp_va(va)),
            None => None,
        }
    }

    /// PA of a hyp VA of RAM (`hyp_va + hyp_physvirt_offset`), or `None` outside the hyp
    /// range of the RAM span.
    pub const fn hyp_pa(&self, hyp_va: u64) -> Option<u64> {
        let (lo, hi) = self.hyp_span();
        if hyp_va < lo || hyp_va > hi {
            return None;
        }
        Some(hyp_va.wrapping_add(self.hyp_physvirt_offset))
    }
}

/// Lowest and highest byte of the RAM ranges, after checking each range.
fn ram_span(ram: &[RamRange]) -> Result<(u64, u64), LayoutError> {
    if ram.is_empty() {
        return Err(LayoutError::NoRam);
    }
    let mut first = u64::MAX;
    let mut last = 0u64;
    for (index, r) in ram.iter().enumerate() {
        if r.size == 0 {
            return Err(LayoutError::EmptyRange { index });
        }
        let end = r
            .base
            .checked_add(r.size - 1)
            .ok_or(LayoutError::RangeOverflow { index })?;
        first = first.min(r.base);
        last = last.max(end);
    }
    Ok((first, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const QEMU_RAM: u64 = 0x4000_0000;
    const KERNEL_PA: u64 = 0x4020_0000;

    fn layout(ram: &[RamRange]) -> Result<HypVaLayout, LayoutError> {
        HypVaLayout::compute(&LayoutParams::new(ram, KERNEL_PA, KERNEL_PA))
    }

    #[test]
    fn helpers() {
        assert_eq!(fls64(0), 0);
        assert_eq!(fls64(1), 1);
        assert_eq!(fls64(0x3fff_ffff), 30);
        assert_eq!(fls64(u64::MAX), 64);
        assert_eq!(genmask(46, 30), 0x0000_7fff_c000_0000);
        assert_eq!(genmask(63, 0), u64::MAX);
        assert_eq!(default_memstart(0x4020_0000), 0x4000_0000);
        assert_eq!(default_memstart(0x1_7fff_ffff), 0x1_4000_0000);
    }

    #[test]
    fn one_gib_no_random() {
        let l = layout(&[RamRange {
            base: QEMU_RAM,
            size: GIB,
        }])
        .expect("valid layout");
        assert_eq!(l.tag_lsb(), 30);
        assert_eq!(l.va_mask(), 0x3fff_ffff);
        assert_eq!(l.tag_val(), 0x20000);
        assert_eq!(l.hyp_va_bits(), 48);
        assert_eq!(l.kern_hyp_va(0xffff_0000_1234_5678), 0x0000_8000_1234_5678);
        assert_eq!(l.hyp_physvirt_offset(), 0xffff_8000_4000_0000);
    }

    #[test]
    fn idmap_in_upper_half_picks_lower_half() {
        let ram = [RamRange {
            base: 0x8000_0000_0000,
            size: GIB,
        }];
        let idmap = 0x8000_0020_0000;
        let l = HypVaLayout::compute(&LayoutParams::new(&ram, idmap, idmap)).expect("valid layout");
        assert_eq!(l.tag_val(), 0);
        assert_eq!(l.hyp_va_of_pa(0x8000_0000_1000), Some(0x1000));
    }

    #[test]
    fn errors() {
        assert_eq!(layout(&[]), Err(LayoutError::NoRam));
        assert_eq!(
            layout(&[RamRange {
                base: QEMU_RAM,
                size: 0
            }]),
            Err(LayoutError::EmptyRange { index: 0 })
        );
        assert_eq!(
            layout(&[
                RamRange {
                    base: QEMU_RAM,
                    size: GIB
                },
                RamRange {
                    base: u64::MAX,
                    size: 2
                }
            ]),
            Err(LayoutError::RangeOverflow { index: 1 })
        );
        // 8 MiB of RAM: tag_lsb 23 leaves 25 tag bits.
        let small = [RamRange {
            base: QEMU_RAM,
            size: 8 << 20,
        }];
        let e = layout(&small).expect_err("too small");
        assert_eq!(
            e,
            LayoutError::TagTooWide {
                tag_lsb: 23,
                va_bits: 48
            }
        );
        assert!(e.to_string().contains("25 tag bits"));
        // One page more reaches bit 23: 24 tag bits, which fit.
        let ok = [RamRange {
            base: QEMU_RAM,
            size: (8 << 20) + 4096,
        }];
        assert_eq!(layout(&ok).map(|l| l.tag_lsb()), Ok(24));

        let ram = [RamRange {
            base: QEMU_RAM,
            size: GIB,
        }];
        let mut p = LayoutParams::new(&ram, KERNEL_PA, KERNEL_PA);
        p.memstart = 2 * GIB;
        assert!(matches!(
            HypVaLayout::compute(&p),
            Err(LayoutError::RamBelowMemstart { .. })
        ));
        p.memstart = GIB + 4096;
        assert_eq!(
            HypVaLayout::compute(&p),
            Err(LayoutError::MemstartMisaligned(GIB + 4096))
        );
        let mut p = LayoutParams::new(&ram, KERNEL_PA, 0x1000);
        assert_eq!(
            HypVaLayout::compute(&p),
            Err(LayoutError::HypTextOutsideRam(0x1000))
        );
        p.hyp_text_pa = KERNEL_PA;
        p.va_bits = 52;
        assert_eq!(
            HypVaLayout::compute(&p),
            Err(LayoutError::UnsupportedVaBits(52))
        );
        p.va_bits = 48;
        p.page_offset = 0xffff_0000_0000_1000;
        assert!(matches!(
            HypVaLayout::compute(&p),
            Err(LayoutError::BadPageOffset { .. })
        ));
        p.page_offset = DEFAULT_PAGE_OFFSET;
        p.idmap_pa = 1 << 48;
        assert!(matches!(
            HypVaLayout::compute(&p),
            Err(LayoutError::IdmapOutOfRange { .. })
        ));
        let huge = [
            RamRange {
                base: QEMU_RAM,
                size: GIB,
            },
            RamRange {
                base: QEMU_RAM + (1 << 47),
                size: 4096,
            },
        ];
        assert!(matches!(
            layout(&huge),
            Err(LayoutError::RamBeyondLinearMap { .. })
        ));
    }

    #[test]
    fn range_checked_translations() {
        let ram = [RamRange {
            base: QEMU_RAM,
            size: GIB,
        }];
        let l = layout(&ram).expect("valid layout");
        assert_eq!(l.phys_to_virt(QEMU_RAM - 1), None);
        assert_eq!(l.phys_to_virt(QEMU_RAM + GIB), None);
        assert_eq!(l.virt_to_phys(DEFAULT_PAGE_OFFSET + GIB), None);
        let (hlo, hi) = l.hyp_span();
        assert_eq!(l.hyp_pa(hlo.wrapping_sub(1)), None);
        assert_eq!(l.hyp_pa(hi + 1), None);
        assert_eq!(l.hyp_pa(hlo), Some(QEMU_RAM));
        assert_eq!(l.hyp_pa(hi), Some(QEMU_RAM + GIB - 1));
    }
}
