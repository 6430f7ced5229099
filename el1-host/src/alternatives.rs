//! Applying the host's alternatives passes to its own running image.
//!
//! - [`apply_boot_pass`]: on the boot CPU before any secondary starts; caps = the boot
//!   CPU's, mask = its BOOT-scope caps, callbacks: [`BootPassCallbacks`] (shared NOP only).
//! - [`apply_system_pass`]: once the caps are final, inside [`crate::smp::stop_machine`];
//!   caps = the final set, mask = `FinalCaps::system_mask()`; callbacks: the caller's
//!   [`SystemPassCallbacks`] when the hyp layout exists, else [`HostCallbacks`]. In the
//!   same window the caller's `also` hook runs (the hyp image's system pass).
//!
//! # How text is written
//!
//! Kernel text is RX at its KIMAGE VA, and its linear-map alias is read-only from the
//! start (`arch::mmu`). For one pass, [`TextAlias`] maps the image's PA again at
//! [`TEXT_ALIAS_VA`] — text read-write, the rest up to the end of the record table
//! read-only, never executable — and unmaps it (with a broadcast TLB invalidation) right
//! after. The patcher reads records and computes addresses at the KIMAGE VA and writes
//! through the alias. Each patched range is then cleaned and invalidated to PoC by the
//! sanitised CTR_EL0.DminLine (`DC CIVAC`, by its execution VA); at the end `DSB ISH`,
//! `IC IALLUIS` (unless HAS_CACHE_DIC is final), `DSB ISH`, `ISB` (LINUX-FACTS §4.3). The
//! other CPUs, waiting in the rendezvous, execute an ISB before they go on.
//!
//! # No patch sites here
//!
//! This module, `crate::smp` and shared's patcher, encoders, callbacks and layout code are
//! linked into the `.text.nopatch` output section (linker/el1-host.ld), and xtask fails the
//! build if any alternative site lands there: the code that patches (and the rendezvous
//! that waits while it does) never runs an instruction that is being rewritten. Nothing
//! here uses the host's patched atomics or locks while the window is open; cap tests are
//! plain reads of the [`FinalCaps`] value (like Linux's `cpus_have_cap`). Outside the
//! window (mapping the alias, printing) ordinary code is called.

use crate::arch::mmu::{ImageSections, KernelTables, MmuError};
use crate::arch::{barrier, cache};
use crate::println;
use core::fmt;
use core::ops::Range;
use el1_host::layout::{align_up, KernelImage, IOREMAP_BASE, IOREMAP_SIZE, PAGE_SIZE};
use shared::alternative::CallbackId;
use shared::callbacks::{BootPassCallbacks, SystemPassCallbacks};
use shared::cpucaps::{BootCpu, Cap, CapSet, FinalCaps};
use shared::patch::{
    apply_alternatives_with, CallbackError, CallbackResolver, CallbackSite, PatchError, PatchReport,
};
use shared::va_layout::{patch_bhb_loop_iter, patch_mov_imm64, patch_nops};

/// VA of the temporary writable alias of the image: above the MMIO window, where nothing
/// else is ever mapped.
pub const TEXT_ALIAS_VA: u64 = 0xffff_8002_0000_0000;
const _: () = assert!(TEXT_ALIAS_VA >= IOREMAP_BASE + IOREMAP_SIZE);

/// Link-time VA range of the host's alternative records, `__alt_instructions` ..
/// `__alt_instructions_end` (linker/el1-host.ld): the one place that names them.
pub fn alt_table() -> Range<u64> {
    extern "C" {
        static __alt_instructions: u8;
        static __alt_instructions_end: u8;
    }
    // Only the addresses of the linker-defined symbols are taken; nothing is read.
    core::ptr::addr_of!(__alt_instructions) as u64
        ..core::ptr::addr_of!(__alt_instructions_end) as u64
}

/// Why a pass could not be applied.
#[derive(Debug)]
pub enum AltError {
    /// The record table is not inside the image after the text.
    TableOutsideImage {
        /// The table's VA range.
        table: Range<u64>,
        /// The image's first VA.
        text: u64,
    },
    /// The temporary alias could not be mapped or unmapped.
    Alias(MmuError),
    /// The patcher refused the pass (nothing was written).
    Patch(PatchError),
}

impl fmt::Display for AltError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TableOutsideImage { table, text } => write!(
                f,
                "record table {:#x}..{:#x} is not inside the image starting at {text:#x}",
                table.start, table.end
            ),
            Self::Alias(e) => write!(f, "temporary text alias: {e}"),
            Self::Patch(e) => write!(f, "patcher refused the pass: {e}"),
        }
    }
}

impl From<MmuError> for AltError {
    fn from(e: MmuError) -> Self {
        Self::Alias(e)
    }
}

/// The host's resolver for its own system pass when no hyp layout is given: host sites
/// use only the shared NOP callback, and the callbacks whose values the host knows
/// without the hyp layout are served too. Layout callbacks (`kern_hyp_va`, the hyp
/// vector branch) are refused, so a host site that needs them fails validation and
/// nothing is written.
#[derive(Debug, Clone, Copy)]
pub struct HostCallbacks {
    /// The host's kimage_voffset.
    pub kimage_voffset: u64,
    /// The sanitised CTR_EL0.
    pub ctr_el0: u64,
    /// The Spectre-BHB loop count (0: not needed).
    pub bhb_loop_k: u8,
}

impl CallbackResolver for HostCallbacks {
    fn supports(&self, id: CallbackId) -> bool {
        match id {
            CallbackId::PatchNops | CallbackId::KimageVoffset | CallbackId::FinalCtrEl0 => true,
            CallbackId::BhbLoopIter => self.bhb_loop_k != 0,
            CallbackId::KernHypVa | CallbackId::HypVectorBranch => false,
        }
    }

    fn patch(&self, site: &CallbackSite<'_>, out: &mut [u32]) -> Result<(), CallbackError> {
        match site.id {
            CallbackId::PatchNops => patch_nops(site, out),
            CallbackId::KimageVoffset => patch_mov_imm64(self.kimage_voffset, site, out),
            CallbackId::FinalCtrEl0 => patch_mov_imm64(self.ctr_el0, site, out),
            CallbackId::BhbLoopIter if self.bhb_loop_k != 0 => {
                patch_bhb_loop_iter(self.bhb_loop_k, site, out)
            }
            other => Err(CallbackError::Unsupported(other)),
        }
    }
}

/// The temporary alias of the image used to write its text (see the module docs).
struct TextAlias {
    /// Bytes mapped: text read-write, then read-only up to the end of the table.
    len: u64,
    /// Bytes of text (read-write part).
    text_len: u64,
    /// Execution VA of the image's first byte.
    exec_base: u64,
    /// The record table as offsets into the image.
    table: Range<usize>,
}

impl TextAlias {
    fn map(tables: &mut KernelTables, image: &KernelImage) -> Result<TextAlias, AltError> {
        let s = ImageSections::get();
        let table = alt_table();
        if table.start < s.etext || table.start > table.end || table.end > s.end {
            return Err(AltError::TableOutsideImage {
                table,
                text: s.text,
            });
        }
        let text_len = s.etext - s.text;
        let len = align_up(table.end - s.text, PAGE_SIZE).unwrap_or(u64::MAX);
        tables.map_alias(TEXT_ALIAS_VA, image.load_pa, text_len, true)?;
        if len > text_len {
            if let Err(e) = tables.map_alias(
                TEXT_ALIAS_VA + text_len,
                image.load_pa + text_len,
                len - text_len,
                false,
            ) {
                let _ = tables.unmap_alias(TEXT_ALIAS_VA, text_len);
                return Err(e.into());
            }
        }
        Ok(TextAlias {
            len,
            text_len,
            exec_base: s.text,
            table: (table.start - s.text) as usize..(table.end - s.text) as usize,
        })
    }

    fn unmap(self, tables: &mut KernelTables) -> Result<(), AltError> {
        tables.unmap_alias(TEXT_ALIAS_VA, self.text_len)?;
        if self.len > self.text_len {
            tables.unmap_alias(TEXT_ALIAS_VA + self.text_len, self.len - self.text_len)?;
        }
        Ok(())
    }
}

/// One pass's inputs, all plain values (read while the window is open).
struct PassInputs<'a> {
    caps: CapSet,
    mask: CapSet,
    resolver: &'a dyn CallbackResolver,
    /// D-cache line for `DC CIVAC`, from the sanitised CTR_EL0.
    dline: usize,
    /// Whether the I-cache must be invalidated (no HAS_CACHE_DIC).
    invalidate_icache: bool,
}

/// The patch and its cache maintenance; runs with the other CPUs (if any) parked in the
/// rendezvous. Nothing written if the patcher refuses the pass.
#[inline(never)]
fn patch_text(alias: &TextAlias, p: &PassInputs<'_>) -> Result<PatchReport, PatchError> {
    // SAFETY: the alias maps `alias.len` bytes of the image (text writable, the rest up to
    // the record table read-only) for the duration of the pass, at a VA nothing else uses;
    // the patcher writes only inside validated original ranges, which are text.
    let image =
        unsafe { core::slice::from_raw_parts_mut(TEXT_ALIAS_VA as *mut u8, alias.len as usize) };
    let dline = p.dline;
    let report = apply_alternatives_with(
        image,
        alias.exec_base,
        alias.table.clone(),
        &p.caps,
        &p.mask,
        p.resolver,
        &mut |site| cache::dc_civac_range(site.exec_range.start, site.exec_range.end, dline),
    );
    barrier::dsb_ish();
    if p.invalidate_icache {
        cache::ic_ialluis();
        barrier::dsb_ish();
    }
    barrier::isb();
    report
}

fn print_report(pass: &str, r: &PatchReport) {
    println!(
        "alternatives: image=host pass={pass} entries={} applied={} callbacks={}",
        r.entries,
        r.applied,
        r.callback_total()
    );
}

/// Applies the boot pass to the running host image (single CPU: call before any
/// secondary starts) and prints its `alternatives:` line.
pub fn apply_boot_pass(
    boot: &BootCpu,
    tables: &mut KernelTables,
    image: &KernelImage,
) -> Result<PatchReport, AltError> {
    let alias = TextAlias::map(tables, image)?;
    let inputs = PassInputs {
        caps: boot.caps(),
        mask: boot.boot_mask(),
        resolver: &BootPassCallbacks,
        dline: cache::dcache_line_of(boot.regs().effective_ctr()),
        // DIC is a SYSTEM cap, not known yet: full maintenance.
        invalidate_icache: true,
    };
    let r = patch_text(&alias, &inputs);
    alias.unmap(tables)?;
    let r = r.map_err(AltError::Patch)?;
    print_report("boot", &r);
    Ok(r)
}

/// Applies the system pass to the running host image inside `smp::stop_machine`, then
/// calls `also` in the same window, and prints the host's `alternatives:` line.
///
/// `resolver`: the full [`SystemPassCallbacks`] when the hyp layout exists; `None` uses
/// [`HostCallbacks`] (enough for every host site).
///
/// `also` runs on this CPU after the host image is patched and synchronised (so every
/// host alternative, the atomics and locks included, is already live here), while the
/// other CPUs still wait in the rendezvous: it is where the hyp image's system pass
/// goes. It must not wait for another CPU or start a cross-call. It is not called if the
/// host pass was refused.
pub fn apply_system_pass(
    fin: &FinalCaps,
    tables: &mut KernelTables,
    image: &KernelImage,
    resolver: Option<&SystemPassCallbacks>,
    also: &mut dyn FnMut(),
) -> Result<PatchReport, AltError> {
    let host = HostCallbacks {
        kimage_voffset: image.voffset(),
        ctr_el0: fin.sanitised_ctr_el0(),
        bhb_loop_k: fin.spectre_bhb_loop_k(),
    };
    let resolver: &dyn CallbackResolver = match resolver {
        Some(r) => r,
        None => &host,
    };
    let inputs = PassInputs {
        caps: fin.caps(),
        mask: fin.system_mask(),
        resolver,
        dline: cache::dcache_line_of(fin.sanitised_ctr_el0()),
        invalidate_icache: !fin.has(Cap::HasCacheDic),
    };
    let alias = TextAlias::map(tables, image)?;
    let r = crate::smp::stop_machine(|| {
        let r = patch_text(&alias, &inputs);
        if r.is_ok() {
            also();
        }
        r
    });
    alias.unmap(tables)?;
    let r = r.map_err(AltError::Patch)?;
    print_report("system", &r);
    Ok(r)
}

/// Checks the text protections the passes rely on, after the system pass: the image's
/// text is readable but not writable at its KIMAGE VA and through its linear-map alias,
/// and the temporary alias is gone. Prints `selftest: host-text-ro ok|FAILED …`.
pub fn selftest_text_protection(linear: &el1_host::layout::LinearMap, image: &KernelImage) -> bool {
    use crate::arch::at;
    let s = ImageSections::get();
    let lm_text = linear.pa_to_va(image.load_pa).ok();
    let mut problems: [Option<&str>; 5] = [None; 5];
    // A control: the probe must see ordinary data as writable, or it proves nothing.
    static CONTROL: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);
    if !at::writable(CONTROL.as_ptr() as u64) {
        problems[4] = Some("the write probe reports writable data as read-only");
    }
    if !at::readable(s.text) || at::writable(s.text) || at::writable(s.etext - 4) {
        problems[0] = Some("kernel text is not read-only at its KIMAGE VA");
    }
    match lm_text {
        Some(va) if at::writable(va) || at::writable(va + (s.etext - s.text) - 4) => {
            problems[1] = Some("the linear alias of kernel text is writable");
        }
        Some(_) => {}
        None => problems[2] = Some("the image is not in the linear map"),
    }
    if at::readable(TEXT_ALIAS_VA) {
        problems[3] = Some("the temporary text alias is still mapped");
    }
    match problems.iter().flatten().next() {
        None => {
            println!("selftest: host-text-ro ok");
            true
        }
        Some(p) => {
            println!("selftest: host-text-ro FAILED {p}");
            false
        }
    }
}
