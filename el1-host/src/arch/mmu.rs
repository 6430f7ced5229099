//! The final page tables and the switch to them.
//!
//! The early assembly maps the image with coarse RWX blocks. [`KernelTables::build`] makes
//! the real layout of [`el1_host::layout`] with `aarch64-paging`: in TTBR1 the image with
//! per-section permissions (text RX, rodata R, data/bss RW+XN), the linear map of all
//! RAM (RW+XN) and the MMIO window (Device-nGnRE, XN); in TTBR0 only the identity map of
//! `.idmap.text` (RX), which secondary CPUs run from while they turn their MMU on.

use aarch64_paging::descriptor::{El1Attributes, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El1And0, MemoryRegion, PageTable, Translation, VaRange};
use aarch64_paging::Mapping;
use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::ops::Range;
use core::ptr::NonNull;
use el1_host::layout::{IoRemapWindow, KernelImage, LinearMap, KIMAGE_VADDR};

/// The image's section boundaries (link-time VAs), from the linker script's symbols.
#[derive(Clone, Debug)]
pub struct ImageSections {
    /// `_text`: first byte of the image (the Image header).
    pub text: u64,
    /// `_etext`: end of code, start of rodata.
    pub etext: u64,
    /// `_erodata`: end of rodata, start of data.
    pub erodata: u64,
    /// `_end`: end of bss.
    pub end: u64,
    /// `.idmap.text` range.
    pub idmap_text: Range<u64>,
}

macro_rules! linker_symbol_addr {
    ($name:ident) => {{
        extern "C" {
            static $name: u8;
        }
        // Only the address of the linker-defined symbol is taken; nothing is read.
        core::ptr::addr_of!($name) as u64
    }};
}

impl ImageSections {
    /// Reads the linker script's symbols.
    pub fn get() -> Self {
        Self {
            text: linker_symbol_addr!(_text),
            etext: linker_symbol_addr!(_etext),
            erodata: linker_symbol_addr!(_erodata),
            end: linker_symbol_addr!(_end),
            idmap_text: linker_symbol_addr!(__idmap_text_start)
                ..linker_symbol_addr!(__idmap_text_end),
        }
    }
}

/// Page-table pages come from the heap; their VA is either in the image (the static
/// heap in bss) or in the linear map (RAM added later).
pub struct KernelTranslation {
    image: KernelImage,
    linear: LinearMap,
}

const TABLE_LAYOUT: Layout = match Layout::from_size_align(4096, 4096) {
    Ok(l) => l,
    Err(_) => panic!("page-table layout"),
};

impl KernelTranslation {
    fn va_to_pa(&self, va: u64) -> u64 {
        self.image
            .va_to_pa(va)
            .or_else(|| self.linear.va_to_pa(va).ok())
            .expect("page-table page is neither in the image nor in the linear map")
    }
}

impl Translation<El1Attributes> for KernelTranslation {
    fn allocate_table(&mut self) -> (NonNull<PageTable<El1Attributes>>, PhysicalAddress) {
        // SAFETY: TABLE_LAYOUT has a non-zero size.
        let ptr = unsafe { alloc_zeroed(TABLE_LAYOUT) };
        let ptr = NonNull::new(ptr.cast::<PageTable<El1Attributes>>())
            .expect("out of memory for page tables");
        let pa = self.va_to_pa(ptr.as_ptr() as u64);
        (ptr, PhysicalAddress(pa as usize))
    }

    unsafe fn deallocate_table(&mut self, page_table: NonNull<PageTable<El1Attributes>>) {
        // SAFETY: the caller guarantees the page came from allocate_table, which used this
        // layout.
        unsafe { dealloc(page_table.as_ptr().cast(), TABLE_LAYOUT) }
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<El1Attributes>> {
        let pa = pa.0 as u64;
        let va = self
            .image
            .pa_to_va(pa)
            .or_else(|| self.linear.pa_to_va(pa).ok())
            .expect("page-table PA is neither in the image nor in RAM");
        NonNull::new(va as *mut PageTable<El1Attributes>).expect("non-null VA")
    }
}

const NORMAL: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_0)
    .union(El1Attributes::INNER_SHAREABLE)
    .union(El1Attributes::ACCESSED);
const XN: El1Attributes = El1Attributes::PXN.union(El1Attributes::UXN);
const TEXT: El1Attributes = NORMAL
    .union(El1Attributes::READ_ONLY)
    .union(El1Attributes::UXN);
const RODATA: El1Attributes = NORMAL.union(El1Attributes::READ_ONLY).union(XN);
const DATA: El1Attributes = NORMAL.union(XN);
/// Device-nGnRE (MAIR index 4), never executable.
const DEVICE: El1Attributes = El1Attributes::VALID
    .union(El1Attributes::ATTRIBUTE_INDEX_4)
    .union(El1Attributes::ACCESSED)
    .union(XN);

/// Why the final tables could not be built.
#[derive(Debug)]
pub enum MmuError {
    /// `aarch64-paging` refused a mapping.
    Map(&'static str, aarch64_paging::MapError),
    /// The MMIO window is full.
    IoRemapFull,
}

impl core::fmt::Display for MmuError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Map(what, e) => write!(f, "cannot map {what}: {e}"),
            Self::IoRemapFull => write!(f, "MMIO window is full"),
        }
    }
}

/// The kernel's final translation tables.
pub struct KernelTables {
    ttbr1: Mapping<KernelTranslation, El1And0>,
    ttbr0: Mapping<KernelTranslation, El1And0>,
    io: IoRemapWindow,
}

fn region(r: Range<u64>) -> MemoryRegion {
    MemoryRegion::new(r.start as usize, r.end as usize)
}

impl KernelTables {
    /// Builds the tables (not yet live).
    pub fn build(
        image: KernelImage,
        linear: &LinearMap,
        sections: &ImageSections,
    ) -> Result<Self, MmuError> {
        let tr = || KernelTranslation {
            image,
            linear: linear.clone(),
        };
        let mut ttbr1 = Mapping::with_asid_and_va_range(tr(), 0, 0, El1And0, VaRange::Upper);
        let mut ttbr0 = Mapping::with_asid_and_va_range(tr(), 0, 0, El1And0, VaRange::Lower);
        let pa = |va: u64| PhysicalAddress(va.wrapping_sub(image.voffset()) as usize);
        let map = |m: &mut Mapping<KernelTranslation, El1And0>,
                   what: &'static str,
                   va: Range<u64>,
                   pa: PhysicalAddress,
                   flags: El1Attributes| {
            m.map_range(&region(va), pa, flags, Constraints::empty())
                .map_err(|e| MmuError::Map(what, e))
        };
        debug_assert_eq!(sections.text, KIMAGE_VADDR);
        map(
            &mut ttbr1,
            "text",
            sections.text..sections.etext,
            pa(sections.text),
            TEXT,
        )?;
        map(
            &mut ttbr1,
            "rodata",
            sections.etext..sections.erodata,
            pa(sections.etext),
            RODATA,
        )?;
        map(
            &mut ttbr1,
            "data/bss",
            sections.erodata..sections.end,
            pa(sections.erodata),
            DATA,
        )?;
        for r in &linear.regions {
            let va = linear
                .pa_to_va(r.start)
                .map_err(|_| MmuError::IoRemapFull)?;
            map(
                &mut ttbr1,
                "linear map",
                va..va + (r.end - r.start),
                PhysicalAddress(r.start as usize),
                DATA,
            )?;
        }
        // The linear alias of kernel text is read-only from the start (Linux makes it so
        // after patching, `mark_linear_text_alias_ro`): text is written only through the
        // temporary alias of `crate::alternatives`, mapped for one pass at a time.
        let text_pa = pa(sections.text).0 as u64..pa(sections.etext).0 as u64;
        if let Ok(va) = linear.pa_to_va(text_pa.start) {
            map(
                &mut ttbr1,
                "linear alias of text",
                va..va + (text_pa.end - text_pa.start),
                PhysicalAddress(text_pa.start as usize),
                RODATA,
            )?;
        }
        let idmap = pa(sections.idmap_text.start).0 as u64..pa(sections.idmap_text.end).0 as u64;
        map(
            &mut ttbr0,
            "idmap text",
            idmap.clone(),
            PhysicalAddress(idmap.start as usize),
            TEXT,
        )?;
        Ok(Self {
            ttbr1,
            ttbr0,
            io: IoRemapWindow::default(),
        })
    }

    /// Maps a device's registers into the MMIO window (before the tables go live);
    /// returns the VA of `pa`.
    pub fn ioremap(&mut self, pa: u64, size: u64) -> Result<u64, MmuError> {
        let (va, range, pa_page) = self.io.reserve(pa, size).ok_or(MmuError::IoRemapFull)?;
        self.ttbr1
            .map_range(
                &region(range),
                PhysicalAddress(pa_page as usize),
                DEVICE,
                Constraints::empty(),
            )
            .map_err(|e| MmuError::Map("MMIO", e))?;
        Ok(va)
    }

    /// Maps `len` bytes of physical memory at `pa` to `va` (page aligned, in a VA range
    /// nothing else uses), never executable, read-write if `writable`: a temporary alias
    /// (the alternatives pass writes text through one). Works on live tables: the range
    /// was invalid, so no break-before-make is needed.
    pub fn map_alias(
        &mut self,
        va: u64,
        pa: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), MmuError> {
        let flags = if writable { DATA } else { RODATA };
        self.ttbr1
            .map_range(
                &region(va..va + len),
                PhysicalAddress(pa as usize),
                flags,
                Constraints::NO_BLOCK_MAPPINGS,
            )
            .map_err(|e| MmuError::Map("alias", e))
    }

    /// Removes an alias made by [`Self::map_alias`] (same range); the TLB entries are
    /// invalidated on every CPU (broadcast) before this returns.
    pub fn unmap_alias(&mut self, va: u64, len: u64) -> Result<(), MmuError> {
        self.ttbr1
            .map_range(
                &region(va..va + len),
                PhysicalAddress(0),
                El1Attributes::empty(),
                Constraints::NO_BLOCK_MAPPINGS,
            )
            .map_err(|e| MmuError::Map("alias", e))
    }

    /// TTBR0 value (root PA) for the identity map.
    pub fn ttbr0(&self) -> u64 {
        self.ttbr0.root_address().0 as u64
    }

    /// TTBR1 value (root PA) for the kernel half.
    pub fn ttbr1(&self) -> u64 {
        self.ttbr1.root_address().0 as u64
    }

    /// Switches this CPU from the early tables to these.
    ///
    /// # Safety
    ///
    /// Must run on the boot CPU at the KIMAGE VA with the early tables live, and the
    /// tables must map everything the kernel uses from now on (image, stack, heap).
    pub unsafe fn activate(&self, image: KernelImage) {
        // Only the addresses of these assembly symbols are used.
        let replace = super::head::symbols::idmap_replace_ttbr1 as *const () as u64;
        let reserved = core::ptr::addr_of!(super::head::symbols::reserved_pg_dir) as u64;
        let replace_pa = image.va_to_pa(replace).expect("routine is in the image");
        let reserved_pa = image.va_to_pa(reserved).expect("table is in the image");
        // SAFETY: idmap_replace_ttbr1 runs from the early TTBR0 identity map (it is in
        // .idmap.text, identity-mapped by the early tables), uses no stack and touches only
        // x0/x1 and TTBR1; it returns to our KIMAGE VA, which the new TTBR1 maps to the
        // same PA. Then TTBR0 goes through the empty table to the final identity map.
        unsafe {
            core::arch::asm!(
                "blr {f}",
                f = in(reg) replace_pa,
                inout("x0") self.ttbr1() => _,
                inout("x1") reserved_pa => _,
                out("x30") _,
                options(nostack),
            );
            core::arch::asm!(
                "msr ttbr0_el1, {reserved}",
                "isb",
                "tlbi vmalle1",
                "dsb nsh",
                "isb",
                "msr ttbr0_el1, {new}",
                "isb",
                reserved = in(reg) reserved_pa,
                new = in(reg) self.ttbr0(),
                options(nostack),
            );
        }
        self.ttbr1.mark_active();
        self.ttbr0.mark_active();
    }
}
