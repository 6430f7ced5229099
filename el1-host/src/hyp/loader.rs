//! Loading the hyp image into its carve-out: the carve-out plan, the copy, verification,
//! the VA layout, relocation and both alternatives passes.
//!
//! Order, and why:
//! 1. copy the embedded image into the carve-out (bss and the rest zeroed) and verify the
//!    copy with `HypImage::parse` — nothing is trusted before that;
//! 2. compute the hyp VA layout (`HypVaLayout::compute`) and print the `va-layout:` line;
//! 3. check both alternatives passes without writing (every record, every callback);
//! 4. rebase the relocation list to the image's hyp VA (`apply_relocations` re-verifies
//!    the checksum, so it must come before any patching);
//! 5. the BOOT pass (mask `FinalCaps::boot_mask`): what Linux's boot-CPU pass would have
//!    patched had the hyp been part of the kernel image, so it comes first;
//! 6. the SYSTEM pass (mask `FinalCaps::system_mask`, every layout callback).
//!
//! The two masks are disjoint and cover every cap, so after both passes each site of the
//! image reflects the final cap set. The image is not running yet, so neither pass needs
//! a rendezvous; the bytes are written through the host's linear-map alias.

use crate::println;
use core::fmt;
use core::ops::Range;
use el1_host::layout::{PhysRange, PAGE_SIZE};
use shared::callbacks::{BootPassCallbacks, SystemPassCallbacks};
use shared::cpucaps::FinalCaps;
use shared::hyp_image::{apply_relocations, HypImage, HypImageError, HypLayout};
use shared::hypercall::InitParams;
use shared::patch::{apply_alternatives_with, check_alternatives, PatchError, PatchReport};
use shared::va_layout::{HypVaLayout, LayoutError, LayoutParams, RamRange};

/// Page-table pages reserved for the hyp's stage 1. The linear map is made of 1 GiB and
/// 2 MiB blocks; pages are needed only around the carve-out and for the idmap, so a
/// handful suffice for any RAM size this host boots with.
pub const PT_POOL_PAGES: u64 = 48;

/// Why the hyp was not loaded. Printed as `hyp: refused: <this>`.
#[derive(Debug)]
pub enum Refusal {
    /// The embedded image failed verification.
    Image(HypImageError),
    /// No free RAM range is large enough for the carve-out.
    NoMemory {
        /// Bytes needed.
        size: u64,
    },
    /// More CPUs than the per-CPU areas can describe.
    TooManyCpus(usize),
    /// The hyp VA layout cannot be computed.
    Layout(LayoutError),
    /// The carve-out is not inside the RAM the layout covers.
    CarveoutOutsideRam(u64),
    /// Rebasing failed.
    Relocate(HypImageError),
    /// An alternatives pass refused the image.
    Patch(&'static str, PatchError),
    /// The EL2 stage-1 tables could not be built.
    Tables(&'static str, aarch64_paging::MapError),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Image(e) => write!(f, "{e}"),
            Refusal::NoMemory { size } => {
                write!(f, "no free RAM range for the {size:#x}-byte carve-out")
            }
            Refusal::TooManyCpus(n) => write!(f, "{n} CPUs is more than the hyp supports"),
            Refusal::Layout(e) => write!(f, "hyp VA layout: {e}"),
            Refusal::CarveoutOutsideRam(pa) => {
                write!(f, "carve-out at {pa:#x} is outside the RAM span")
            }
            Refusal::Relocate(e) => write!(f, "relocation: {e}"),
            Refusal::Patch(pass, e) => write!(f, "{pass} alternatives pass: {e}"),
            Refusal::Tables(what, e) => write!(f, "EL2 stage 1: cannot map {what}: {e}"),
        }
    }
}

/// Where each part lives in the carve-out (byte offsets from its start).
#[derive(Debug, Clone, Copy)]
pub struct CarveoutPlan {
    /// CPUs with a per-CPU block and a stack.
    pub ncpus: usize,
    /// Bytes of the image in memory (bss included), page multiple.
    pub image_size: u64,
    /// First per-CPU block; CPU `i`'s is at `percpu_off + i * percpu_stride`.
    pub percpu_off: u64,
    /// Bytes per per-CPU block (the template rounded up to pages, at least one page).
    pub percpu_stride: u64,
    /// First stack slot; CPU `i`'s is at `stacks_off + i * stack_stride`: one unmapped
    /// guard page, then the stack.
    pub stacks_off: u64,
    /// Guard page plus stack.
    pub stack_stride: u64,
    /// Bytes of one stack.
    pub stack_size: u64,
    /// The init parameters of every CPU, one [`InitParams`] each.
    pub params_off: u64,
    /// The page-table pool.
    pub pool_off: u64,
    /// Total bytes (page multiple; the carve-out itself is rounded up to 2 MiB).
    pub total: u64,
}

/// Most CPUs the plan accepts (the host's own limit).
pub const MAX_HYP_CPUS: usize = 64;

fn pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl CarveoutPlan {
    /// The plan for an image with layout `l` on `ncpus` CPUs.
    pub fn new(l: &HypLayout, ncpus: usize) -> Result<CarveoutPlan, Refusal> {
        if ncpus == 0 || ncpus > MAX_HYP_CPUS {
            return Err(Refusal::TooManyCpus(ncpus));
        }
        let n = ncpus as u64;
        let image_size = pages(u64::from(l.mem_size));
        let percpu_stride = pages(u64::from(l.percpu.size)).max(PAGE_SIZE);
        let percpu_off = image_size;
        let stacks_off = percpu_off + n * percpu_stride;
        let stack_size = pages(u64::from(l.stack_size));
        let stack_stride = PAGE_SIZE + stack_size;
        let params_off = stacks_off + n * stack_stride;
        let pool_off = params_off + pages(n * core::mem::size_of::<InitParams>() as u64);
        let total = pool_off + PT_POOL_PAGES * PAGE_SIZE;
        Ok(CarveoutPlan {
            ncpus,
            image_size,
            percpu_off,
            percpu_stride,
            stacks_off,
            stack_stride,
            stack_size,
            params_off,
            pool_off,
            total,
        })
    }

    /// Offset of CPU `cpu`'s per-CPU block.
    pub fn percpu(&self, cpu: usize) -> u64 {
        self.percpu_off + cpu as u64 * self.percpu_stride
    }

    /// Offsets of CPU `cpu`'s stack (without its guard page).
    pub fn stack(&self, cpu: usize) -> Range<u64> {
        let lo = self.stacks_off + cpu as u64 * self.stack_stride + PAGE_SIZE;
        lo..lo + self.stack_size
    }

    /// Offset of CPU `cpu`'s init parameters.
    pub fn params(&self, cpu: usize) -> u64 {
        self.params_off + (cpu * core::mem::size_of::<InitParams>()) as u64
    }
}

/// The carve-out as the host sees it: PA range and the linear-map VA of its start.
#[derive(Debug, Clone)]
pub struct Carveout {
    /// Physical range.
    pub pa: PhysRange,
    /// Linear-map VA of `pa.start`.
    pub va: u64,
}

impl Carveout {
    /// The whole carve-out as bytes.
    ///
    /// # Safety
    ///
    /// The carve-out must be mapped RW in the linear map and used by nothing else while
    /// the slice lives (it was taken out of RAM before the heap; only the loader touches
    /// it until the hyp is installed).
    pub unsafe fn bytes(&self) -> &'static mut [u8] {
        let len = (self.pa.end - self.pa.start) as usize;
        // SAFETY: forwarded from the caller.
        unsafe { core::slice::from_raw_parts_mut(self.va as *mut u8, len) }
    }
}

/// What the loader hands on to the table builder and the installer.
pub struct Loaded {
    /// The verified header layout.
    pub layout: HypLayout,
    /// The hyp VA layout.
    pub va: HypVaLayout,
    /// Hyp VA of image offset 0.
    pub hyp_base: u64,
    /// Bytes of the embedded image (what `hyp: … image=` prints).
    pub file_size: usize,
    /// The `va-layout:` line, printed by [`Loaded::print_summary`].
    va_line: VaLine,
    /// What the boot pass did.
    pub boot: PatchReport,
    /// What the system pass did.
    pub system: PatchReport,
}

/// The values of the `va-layout:` line that are not in [`HypVaLayout`].
#[derive(Clone, Copy)]
struct VaLine {
    hyp_pa: u64,
    kimage_vaddr: u64,
    kimage_voffset: u64,
    ctr_el0: u64,
}

impl Loaded {
    /// Prints the `va-layout:` line and the hyp image's two `alternatives:` lines.
    /// Separate from [`load`] because loading runs inside the patching rendezvous.
    pub fn print_summary(&self) {
        let (va, l) = (&self.va, &self.va_line);
        println!(
            "va-layout: va_bits={} tag_lsb={} va_mask={:#x} tag_val={:#x} hyp_pa={:#x} hyp_base={:#x} kimage_vaddr={:#x} kimage_voffset={:#x} ctr_el0={:#x}",
            va.va_bits(),
            va.tag_lsb(),
            va.va_mask(),
            va.tag_val(),
            l.hyp_pa,
            self.hyp_base,
            l.kimage_vaddr,
            l.kimage_voffset,
            l.ctr_el0,
        );
        print_pass("boot", &self.boot);
        print_pass("system", &self.system);
    }
}

/// Everything the layout and the system pass need from the rest of the host.
pub struct LoadInputs<'a> {
    /// RAM regions (PAs).
    pub ram: &'a [PhysRange],
    /// PA mapped at the start of the linear map.
    pub memstart: u64,
    /// The host image's VA − PA.
    pub kimage_voffset: u64,
    /// The host image's link VA (for the `va-layout:` line).
    pub kimage_vaddr: u64,
    /// Random bits for the tag, if the host has entropy.
    pub seed: Option<u64>,
    /// `nokaslr` on the command line.
    pub nokaslr: bool,
    /// The final caps.
    pub caps: &'a FinalCaps,
}

fn print_pass(pass: &str, r: &PatchReport) {
    println!(
        "alternatives: image=hyp pass={pass} entries={} applied={} callbacks={}",
        r.entries,
        r.applied,
        r.callback_total()
    );
}

/// Copies `image` into the carve-out, verifies, lays out, relocates and patches it.
/// On error nothing of the carve-out is used by anyone (the caller leaves it idle).
pub fn load(
    image: &[u8],
    carve: &Carveout,
    plan: &CarveoutPlan,
    inp: &LoadInputs<'_>,
) -> Result<Loaded, Refusal> {
    // SAFETY: the carve-out is reserved for the hyp and only the loader uses it now.
    let mem = unsafe { carve.bytes() };
    mem.fill(0);
    let file = mem.get_mut(..image.len()).ok_or(Refusal::NoMemory {
        size: image.len() as u64,
    })?;
    file.copy_from_slice(image);
    let layout = *HypImage::parse(file).map_err(Refusal::Image)?.layout();
    if u64::from(layout.mem_size) > plan.image_size {
        return Err(Refusal::Image(HypImageError::BadMemSize(layout.mem_size)));
    }

    let ram: alloc::vec::Vec<RamRange> = inp
        .ram
        .iter()
        .map(|r| RamRange {
            base: r.start,
            size: r.end - r.start,
        })
        .collect();
    let pa = carve.pa.start;
    let mut params = LayoutParams::new(
        &ram,
        pa + u64::from(layout.idmap.offset),
        pa + u64::from(layout.text.offset),
    );
    params.memstart = inp.memstart;
    params.seed = inp.seed;
    params.nokaslr = inp.nokaslr;
    let va = HypVaLayout::compute(&params).map_err(Refusal::Layout)?;
    let hyp_base = va.hyp_va_of_pa(pa).ok_or(Refusal::CarveoutOutsideRam(pa))?;
    let ctr = inp.caps.sanitised_ctr_el0();
    let va_line = VaLine {
        hyp_pa: pa,
        kimage_vaddr: inp.kimage_vaddr,
        kimage_voffset: inp.kimage_voffset,
        ctr_el0: ctr,
    };

    let table = layout.alt.offset as usize..layout.alt.end() as usize;
    let caps = inp.caps.caps();
    let system = SystemPassCallbacks {
        layout: va,
        kimage_voffset: inp.kimage_voffset,
        ctr_el0: ctr,
        hyp_vector: hyp_base + u64::from(layout.host_vector),
        bhb_loop_k: inp.caps.spectre_bhb_loop_k(),
    };
    // Both passes are checked in full before anything is written, so a bad record
    // leaves the image exactly as it was copied: not rebased, not patched.
    let file = &mut mem[..image.len()];
    check_alternatives(
        file,
        hyp_base,
        table.clone(),
        &caps,
        &inp.caps.boot_mask(),
        &BootPassCallbacks,
    )
    .map_err(|e| Refusal::Patch("boot", e))?;
    check_alternatives(
        file,
        hyp_base,
        table.clone(),
        &caps,
        &inp.caps.system_mask(),
        &system,
    )
    .map_err(|e| Refusal::Patch("system", e))?;
    let relocs = apply_relocations(file, hyp_base).map_err(Refusal::Relocate)?;
    log::info!("hyp: {relocs} relocations rebased to {hyp_base:#x}");

    let boot = apply_alternatives_with(
        file,
        hyp_base,
        table.clone(),
        &caps,
        &inp.caps.boot_mask(),
        &BootPassCallbacks,
        &mut |_| {},
    )
    .map_err(|e| Refusal::Patch("boot", e))?;
    let sys = apply_alternatives_with(
        file,
        hyp_base,
        table,
        &caps,
        &inp.caps.system_mask(),
        &system,
        &mut |_| {},
    )
    .map_err(|e| Refusal::Patch("system", e))?;
    Ok(Loaded {
        layout,
        va,
        hyp_base,
        file_size: image.len(),
        va_line,
        boot,
        system: sys,
    })
}
