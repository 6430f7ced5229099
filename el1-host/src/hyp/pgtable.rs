//! The hyp's EL2 stage-1 tables, built by the host with `aarch64-paging`'s EL2 regime in
//! the carve-out's page-table pool (so the tables are hyp memory, as in Linux).
//!
//! | hyp VA | PA | permissions |
//! | --- | --- | --- |
//! | image text (idmap page included) | carve-out | RX |
//! | image rodata | carve-out | R, XN |
//! | image data, bss | carve-out | RW, XN |
//! | each CPU's per-CPU block | carve-out | RW, XN |
//! | each CPU's stack; the page below it is left unmapped (guard) | carve-out | RW, XN |
//! | the idmap page, at VA = PA | carve-out | RX |
//! | all other RAM at `kern_hyp_va(linear VA)` (non-protected mode) | RAM | RW, XN |
//!
//! Not mapped: the image's host-only tables (alternatives, relocation list), the init
//! parameters (read with the MMU off) and the page-table pool. Hyp VAs of RAM are
//! `kern_hyp_va` of the linear VA, so everything in the carve-out is at the hyp VA the
//! relocations and `kern_hyp_va` sites assume. Ranges never overlap, so no block is ever
//! split or replaced and the tables are built without TLB maintenance (they are not live).

use super::loader::{Carveout, CarveoutPlan, Loaded, Refusal};
use aarch64_paging::descriptor::{El23Attributes, PhysicalAddress};
use aarch64_paging::paging::{Constraints, El2, MemoryRegion, PageTable, Translation};
use aarch64_paging::Mapping;
use core::ops::Range;
use core::ptr::NonNull;
use el1_host::layout::{PhysRange, PAGE_SIZE};

/// Hands out the zeroed pages of the carve-out's pool.
struct Pool {
    /// PA of the first pool page.
    pa: u64,
    /// Linear-map VA of the first pool page.
    va: u64,
    /// Pages in the pool.
    pages: u64,
    /// Pages handed out.
    used: u64,
}

impl Translation<El23Attributes> for Pool {
    fn allocate_table(&mut self) -> (NonNull<PageTable<El23Attributes>>, PhysicalAddress) {
        // The pool is sized for far more tables than the layout of the module
        // documentation can need (see `loader::PT_POOL_PAGES`).
        assert!(
            self.used < self.pages,
            "hyp: page-table pool of {} pages exhausted",
            self.pages
        );
        let off = self.used * PAGE_SIZE;
        self.used += 1;
        let ptr = NonNull::new((self.va + off) as *mut PageTable<El23Attributes>)
            .expect("linear-map VAs are not null");
        (ptr, PhysicalAddress((self.pa + off) as usize))
    }

    unsafe fn deallocate_table(&mut self, _page_table: NonNull<PageTable<El23Attributes>>) {
        // Pool pages are never reused: the tables are built once and kept.
    }

    fn physical_to_virtual(&self, pa: PhysicalAddress) -> NonNull<PageTable<El23Attributes>> {
        let off = (pa.0 as u64).wrapping_sub(self.pa);
        assert!(
            off < self.pages * PAGE_SIZE,
            "hyp table PA outside the pool"
        );
        NonNull::new((self.va + off) as *mut PageTable<El23Attributes>)
            .expect("linear-map VAs are not null")
    }
}

const NORMAL: El23Attributes = El23Attributes::VALID
    .union(El23Attributes::ATTRIBUTE_INDEX_0)
    .union(El23Attributes::INNER_SHAREABLE)
    .union(El23Attributes::ACCESSED)
    // AP[1] is RES1 in the EL2 regime.
    .union(El23Attributes::USER_RES1);
const TEXT: El23Attributes = NORMAL.union(El23Attributes::READ_ONLY);
const RODATA: El23Attributes = NORMAL
    .union(El23Attributes::READ_ONLY)
    .union(El23Attributes::XN);
const DATA: El23Attributes = NORMAL.union(El23Attributes::XN);

fn page_range(start: u64, len: u64) -> Range<u64> {
    let lo = start & !(PAGE_SIZE - 1);
    let hi = (start + len).div_ceil(PAGE_SIZE) * PAGE_SIZE;
    lo..hi
}

/// Builds the tables; returns the root's PA (TTBR0_EL2 without CnP).
pub fn build(
    carve: &Carveout,
    plan: &CarveoutPlan,
    loaded: &Loaded,
    ram: &[PhysRange],
    linear_va: impl Fn(u64) -> Option<u64>,
) -> Result<u64, Refusal> {
    let pool = Pool {
        pa: carve.pa.start + plan.pool_off,
        va: carve.va + plan.pool_off,
        pages: (plan.total - plan.pool_off) / PAGE_SIZE,
        used: 0,
    };
    let mut m = Mapping::new(pool, 0, El2);
    let base_pa = carve.pa.start;
    let base_va = loaded.hyp_base;
    let mut map = |what: &'static str, off: Range<u64>, flags: El23Attributes| {
        if off.is_empty() {
            return Ok(());
        }
        m.map_range(
            &MemoryRegion::new((base_va + off.start) as usize, (base_va + off.end) as usize),
            PhysicalAddress((base_pa + off.start) as usize),
            flags,
            Constraints::empty(),
        )
        .map_err(|e| Refusal::Tables(what, e))
    };
    let l = &loaded.layout;
    let r = |x: shared::hyp_image::ImageRange| page_range(u64::from(x.offset), u64::from(x.size));
    map("text", r(l.text), TEXT)?;
    map("rodata", r(l.rodata), RODATA)?;
    map("data", r(l.data), DATA)?;
    map("bss", r(l.bss), DATA)?;
    for cpu in 0..plan.ncpus {
        let p = plan.percpu(cpu);
        map("per-CPU block", p..p + plan.percpu_stride, DATA)?;
        map("stack", plan.stack(cpu), DATA)?;
    }

    // The idmap page at VA = PA, for the instructions around the MMU switch.
    let idmap = page_range(base_pa + u64::from(l.idmap.offset), u64::from(l.idmap.size));
    m.map_range(
        &MemoryRegion::new(idmap.start as usize, idmap.end as usize),
        PhysicalAddress(idmap.start as usize),
        TEXT,
        Constraints::empty(),
    )
    .map_err(|e| Refusal::Tables("idmap", e))?;

    // The host's RAM at its hyp VAs, minus the carve-out (mapped above, piece by piece).
    for region in ram {
        for piece in el1_host::layout::free_ranges(
            core::slice::from_ref(region),
            core::slice::from_ref(&carve.pa),
        ) {
            let Some(lin) = linear_va(piece.start) else {
                continue;
            };
            let hva = loaded.va.kern_hyp_va(lin);
            m.map_range(
                &MemoryRegion::new(hva as usize, (hva + (piece.end - piece.start)) as usize),
                PhysicalAddress(piece.start as usize),
                DATA,
                Constraints::empty(),
            )
            .map_err(|e| Refusal::Tables("linear map", e))?;
        }
    }
    let root = m.root_address().0 as u64;
    log::info!(
        "hyp: EL2 stage 1 root={root:#x}, {} table pages",
        m.translation().used
    );
    // The tables live for good; the mapping object must not free them.
    core::mem::forget(m);
    Ok(root)
}
