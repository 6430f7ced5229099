//! The hyp-image pipeline: build `el2` as a static PIE, check the ELF, turn it into the
//! flat image of [`shared::hyp_image`] and verify the result with the host's own parser.
//!
//! # What xtask refuses (each error names the section, relocation or symbol)
//!
//! * An ELF that is not ELF64, little-endian, `ET_DYN`, `EM_AARCH64`.
//! * Any `SHT_REL` or `SHT_RELR` section, any `SHT_RELA` section other than `.rela.dyn`,
//!   and any `.rela.dyn` entry that is not `R_AARCH64_RELATIVE` without a symbol. The
//!   image's relocation list can only express "add the base to this slot".
//! * A RELATIVE slot that is not 8-aligned, not inside `.hyp.rodata`/`.hyp.data` (so
//!   never in text), whose addend is not an image offset, or whose link-time content is
//!   neither 0 nor the addend.
//! * `.hyp.text` missing, writable, or not executable; any other executable section.
//! * An allocated section the image would not carry (not in [`KNOWN_SECTIONS`]).
//! * Capability state: a data symbol (`STT_OBJECT`, or an untyped label outside text)
//!   whose name, lower-cased, contains one of [`CAP_STATE_PATTERNS`] (Linux's bitmaps
//!   `cpu_hwcaps`/`system_cpucaps`/`boot_cpucaps`, this project's `CapSet`/`FinalCaps`,
//!   anything from the `cpucaps` module). Functions are exempt: the hyp checks caps only
//!   through alternative sites, which need no data.
//! * For an image with a patcher (the host): an alternative record whose original site
//!   lies in the patcher's own section ([`check_no_patch_sites`]).
//! * A cap query in el2 that is not an alternative: the cap-evaluation function
//!   ([`CAP_EVAL_SYMBOL`]) must hold exactly `NCAPS` alternative sites, one per cap number
//!   ([`check_cap_eval_sites`]). Together with the absence of cap-state data symbols this
//!   is the build-time proof that el2 tests caps only through patched instructions.

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, Rela, SectionHeader};
use object::{Object, ObjectSection, ObjectSymbol};
use shared::alternative::{AltRecord, ALT_RECORD_SIZE};
use shared::hyp_image::{HypImage, HypLayout, ImageRange, PAGE_SIZE};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust target el2 is built for: the soft-float variant, so the compiler never
/// touches FP/SIMD registers at EL2 (the hyp saves only the host's x0–x30; Linux builds
/// its hyp code `-mgeneral-regs-only` for the same reason).
const TARGET: &str = "aarch64-unknown-none-softfloat";
/// Where (under the workspace root) el2 is built with the PIE flags, apart from the
/// ordinary target dir so `el1-host` is never built with them.
const EL2_TARGET_DIR: &str = "target/el2-pie";
/// Where the finished image is written (under the workspace root).
pub const HYP_IMAGE_PATH: &str = "target/hyp-image/el2.hypimg";

/// Allocated sections the pipeline understands. Text, rodata and data are copied into
/// the image, `.altinstructions` too (host-only), `.rela.dyn` becomes the relocation
/// list, the dynamic-linking metadata lld adds to any PIE is dropped, bss is zeroed by
/// the loader.
pub const KNOWN_SECTIONS: [&str; 11] = [
    ".hyp.text",
    ".hyp.rodata",
    ".hyp.data",
    ".hyp.bss",
    ".altinstructions",
    ".rela.dyn",
    ".dynamic",
    ".dynsym",
    ".dynstr",
    ".hash",
    ".gnu.hash",
];

/// Lower-case name fragments that mark a data symbol as capability state.
pub const CAP_STATE_PATTERNS: [&str; 8] = [
    "cpu_hwcaps",
    "system_cpucaps",
    "boot_cpucaps",
    "cpucaps",
    "capset",
    "finalcaps",
    "final_caps",
    "hwcap",
];

/// The el2 function that evaluates every cap through its own alternative site (the
/// `hyp-caps` selftest's hypercall).
pub const CAP_EVAL_SYMBOL: &str = "hyp_eval_caps";

/// Per-CPU hyp stack size used when the ELF does not define `__hyp_stack_size`.
const DEFAULT_STACK_SIZE: u32 = PAGE_SIZE;

const SHT_RELA: u32 = 4;
const SHT_NOBITS: u32 = 8;
const SHT_REL: u32 = 9;
const SHT_RELR: u32 = 19;
const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
const R_AARCH64_RELATIVE: u32 = 1027;

/// One section of the ELF, as the checks need it.
#[derive(Debug, Clone, Default)]
pub struct ElfSection {
    /// Section name.
    pub name: String,
    /// `sh_type`.
    pub sh_type: u32,
    /// `sh_flags`.
    pub flags: u64,
    /// `sh_addr` (the link address; the image offset for el2).
    pub addr: u64,
    /// `sh_size`.
    pub size: u64,
    /// Contents (empty for `SHT_NOBITS`).
    pub data: Vec<u8>,
}

impl ElfSection {
    fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr && addr.saturating_add(len) <= self.addr.saturating_add(self.size)
    }
}

/// One symbol-table entry.
#[derive(Debug, Clone, Default)]
pub struct ElfSymbol {
    /// Symbol name (mangled).
    pub name: String,
    /// `st_value`.
    pub addr: u64,
    /// `st_size` (0 for labels).
    pub size: u64,
    /// Whether it names data: `STT_OBJECT`, or `STT_NOTYPE` in a non-executable section.
    pub is_data: bool,
    /// Name of the section it is defined in, if any.
    pub section: Option<String>,
}

/// One relocation entry and the section that holds it.
#[derive(Debug, Clone, Default)]
pub struct ElfReloc {
    /// The relocation section (`.rela.dyn`, …).
    pub section: String,
    /// `r_offset`.
    pub offset: u64,
    /// `r_type`.
    pub kind: u32,
    /// `r_sym`.
    pub sym: u32,
    /// `r_addend`.
    pub addend: i64,
}

/// What the pipeline reads from an ELF file.
#[derive(Debug, Clone, Default)]
pub struct ElfModel {
    /// Every section.
    pub sections: Vec<ElfSection>,
    /// Every `.symtab` symbol.
    pub symbols: Vec<ElfSymbol>,
    /// Every entry of every `SHT_RELA` section.
    pub relocs: Vec<ElfReloc>,
}

impl ElfModel {
    /// Reads `bytes`, refusing anything but a little-endian ELF64 `ET_DYN` for AArch64.
    pub fn read_pie(bytes: &[u8]) -> Result<ElfModel, String> {
        let file = ElfFile64::<object::Endianness>::parse(bytes)
            .map_err(|e| format!("not an ELF64 file: {e}"))?;
        let endian = file.endian();
        if !file.is_little_endian() {
            return Err("el2 ELF is big-endian; the hyp image is little-endian".into());
        }
        let header = file.elf_header();
        let e_type = header.e_type(endian).0;
        if e_type != elf::ET_DYN.0 {
            return Err(format!(
                "el2 ELF has e_type {e_type}, expected ET_DYN (3): was it linked with -pie?"
            ));
        }
        let machine = header.e_machine(endian).0;
        if machine != elf::EM_AARCH64.0 {
            return Err(format!(
                "el2 ELF has e_machine {machine}, expected EM_AARCH64 (183)"
            ));
        }
        ElfModel::read(&file)
    }

    /// Reads the sections, symbols and RELA entries of any little-endian ELF64 (the host
    /// image too, for [`check_no_patch_sites`]).
    pub fn read(file: &ElfFile64<'_, object::Endianness>) -> Result<ElfModel, String> {
        let endian = file.endian();
        let mut model = ElfModel::default();
        for s in file.sections() {
            let name = s.name().map_err(|e| format!("bad section name: {e}"))?;
            let h = s.elf_section_header();
            let sh_type = h.sh_type(endian).0;
            let data = if sh_type == SHT_NOBITS {
                Vec::new()
            } else {
                s.data()
                    .map_err(|e| format!("section {name}: unreadable contents: {e}"))?
                    .to_vec()
            };
            if let Some((relas, _)) = h
                .rela(endian, file.data())
                .map_err(|e| format!("section {name}: bad relocations: {e}"))?
            {
                for r in relas {
                    model.relocs.push(ElfReloc {
                        section: name.to_string(),
                        offset: r.r_offset(endian),
                        kind: r.r_type(endian, false).0,
                        sym: r.r_sym(endian, false),
                        addend: r.r_addend(endian),
                    });
                }
            }
            model.sections.push(ElfSection {
                name: name.to_string(),
                sh_type,
                flags: h.sh_flags(endian).0,
                addr: h.sh_addr(endian),
                size: h.sh_size(endian),
                data,
            });
        }
        for sym in file.symbols() {
            let name = sym.name().unwrap_or("").to_string();
            if name.is_empty() {
                continue;
            }
            let section = sym
                .section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .and_then(|s| s.name().ok().map(str::to_string));
            let st_type = sym.elf_symbol().st_type().0;
            let in_exec = section
                .as_deref()
                .and_then(|n| model.section(n))
                .is_some_and(|s| s.flags & SHF_EXECINSTR != 0);
            let is_data = st_type == elf::STT_OBJECT.0
                || (st_type == elf::STT_NOTYPE.0 && !in_exec && section.is_some());
            model.symbols.push(ElfSymbol {
                name,
                addr: sym.address(),
                size: sym.size(),
                is_data,
                section,
            });
        }
        Ok(model)
    }

    /// The section called `name`.
    pub fn section(&self, name: &str) -> Option<&ElfSection> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The value of symbol `name`.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.symbols.iter().find(|s| s.name == name).map(|s| s.addr)
    }

    fn require_symbol(&self, name: &str) -> Result<u64, String> {
        self.symbol(name)
            .ok_or_else(|| format!("el2 ELF has no symbol `{name}` (see linker/el2.ld)"))
    }

    /// The section an address falls in, for messages.
    fn section_at(&self, addr: u64) -> &str {
        self.sections
            .iter()
            .find(|s| s.flags & SHF_ALLOC != 0 && s.contains(addr, 1))
            .map_or("<no section>", |s| s.name.as_str())
    }
}

/// Section-kind and permission rules (see the module documentation).
pub fn check_sections(elf: &ElfModel) -> Result<(), String> {
    let text = elf
        .section(".hyp.text")
        .ok_or("el2 ELF has no .hyp.text section")?;
    if text.flags & SHF_WRITE != 0 {
        return Err("section .hyp.text is writable: hyp text must be read-only".into());
    }
    if text.flags & SHF_EXECINSTR == 0 {
        return Err("section .hyp.text is not executable".into());
    }
    for s in &elf.sections {
        match s.sh_type {
            SHT_REL => {
                return Err(format!(
                    "section {} is SHT_REL: only RELA relative relocations are understood",
                    s.name
                ))
            }
            SHT_RELR => {
                return Err(format!(
                    "section {} is SHT_RELR (packed relocations): not understood",
                    s.name
                ))
            }
            SHT_RELA if s.name != ".rela.dyn" => {
                return Err(format!(
                    "relocation section {} is not understood (only .rela.dyn)",
                    s.name
                ))
            }
            _ => {}
        }
        if s.flags & SHF_ALLOC == 0 {
            continue;
        }
        if s.flags & SHF_EXECINSTR != 0 && s.name != ".hyp.text" {
            return Err(format!(
                "section {} is executable: only .hyp.text may hold code",
                s.name
            ));
        }
        if !KNOWN_SECTIONS.contains(&s.name.as_str()) && s.size != 0 {
            return Err(format!(
                "allocated section {} ({:#x} bytes at {:#x}) would not be in the image: place it in linker/el2.ld",
                s.name, s.size, s.addr
            ));
        }
    }
    Ok(())
}

/// Refuses data symbols that hold capability state (rule in the module documentation).
pub fn check_no_cap_state(elf: &ElfModel) -> Result<(), String> {
    for sym in elf.symbols.iter().filter(|s| s.is_data) {
        let lower = sym.name.to_ascii_lowercase();
        if let Some(p) = CAP_STATE_PATTERNS.iter().find(|p| lower.contains(*p)) {
            return Err(format!(
                "el2 holds capability state: data symbol `{}` at {:#x} in {} (matches `{p}`); the hyp must test caps only through alternatives",
                sym.name,
                sym.addr,
                sym.section.as_deref().unwrap_or("<no section>")
            ));
        }
    }
    Ok(())
}

/// Checks that no alternative record in `elf`'s `.altinstructions` has its original code
/// inside section `section_name` (the patcher's own code, which must not patch itself).
/// The section must exist as an output section. Returns the number of records checked.
#[allow(
    dead_code,
    reason = "the host-image pipeline calls it for `.text.nopatch`"
)]
pub fn check_no_patch_sites(elf: &ElfModel, section_name: &str) -> Result<usize, String> {
    let nopatch = elf.section(section_name).ok_or_else(|| {
        format!("no section {section_name}: the patcher must be linked into its own output section")
    })?;
    let Some(alt) = elf.section(".altinstructions") else {
        return Ok(0);
    };
    if !alt.data.len().is_multiple_of(ALT_RECORD_SIZE) {
        return Err(format!(
            ".altinstructions is {:#x} bytes, not a multiple of {ALT_RECORD_SIZE}",
            alt.data.len()
        ));
    }
    let mut n = 0;
    for (i, chunk) in alt.data.chunks_exact(ALT_RECORD_SIZE).enumerate() {
        let rec = AltRecord::from_bytes(chunk).map_err(|e| format!("record {i}: {e}"))?;
        let at = alt.addr + (i * ALT_RECORD_SIZE) as u64;
        let orig = rec.orig_addr(at);
        let end = orig.wrapping_add(u64::from(rec.orig_len));
        // Any byte of the site inside the section counts.
        if orig < nopatch.addr.saturating_add(nopatch.size) && end > nopatch.addr {
            return Err(format!(
                "alternative record {i} (at {at:#x}, cap {}) patches {orig:#x}..{end:#x}, inside {section_name}: the patcher must not patch itself",
                rec.cap_number()
            ));
        }
        n += 1;
    }
    Ok(n)
}

/// The alternative records of `elf`, each with its own address.
fn alt_records(elf: &ElfModel) -> Result<Vec<(u64, AltRecord)>, String> {
    let Some(alt) = elf.section(".altinstructions") else {
        return Ok(Vec::new());
    };
    if !alt.data.len().is_multiple_of(ALT_RECORD_SIZE) {
        return Err(format!(
            ".altinstructions is {:#x} bytes, not a multiple of {ALT_RECORD_SIZE}",
            alt.data.len()
        ));
    }
    alt.data
        .chunks_exact(ALT_RECORD_SIZE)
        .enumerate()
        .map(|(i, chunk)| {
            let rec = AltRecord::from_bytes(chunk).map_err(|e| format!("record {i}: {e}"))?;
            Ok((alt.addr + (i * ALT_RECORD_SIZE) as u64, rec))
        })
        .collect()
}

/// Checks that the function [`CAP_EVAL_SYMBOL`] holds exactly one alternative site per
/// cap: `NCAPS` records whose original code lies inside the function, with cap numbers
/// `0..NCAPS` each exactly once. Returns the number of records.
pub fn check_cap_eval_sites(elf: &ElfModel) -> Result<usize, String> {
    use shared::cpucaps::{Cap, NCAPS};
    let f = elf
        .symbols
        .iter()
        .find(|s| s.name == CAP_EVAL_SYMBOL)
        .ok_or_else(|| {
            format!("el2 has no function `{CAP_EVAL_SYMBOL}` (the cap-evaluation hypercall)")
        })?;
    if f.size == 0 {
        return Err(format!("el2 symbol `{CAP_EVAL_SYMBOL}` has size 0"));
    }
    let range = f.addr..f.addr + f.size;
    let mut seen = [0usize; NCAPS];
    let mut n = 0;
    for (at, rec) in alt_records(elf)? {
        let orig = rec.orig_addr(at);
        if !range.contains(&orig) {
            continue;
        }
        let cap = usize::from(rec.cap_number());
        let slot = seen.get_mut(cap).ok_or_else(|| {
            format!("alternative record at {at:#x} in `{CAP_EVAL_SYMBOL}` has cap number {cap} >= NCAPS")
        })?;
        *slot += 1;
        n += 1;
    }
    let missing: Vec<&str> = (0..NCAPS)
        .filter(|&c| seen[c] == 0)
        .map(|c| Cap::ALL[c].name())
        .collect();
    let doubled: Vec<&str> = (0..NCAPS)
        .filter(|&c| seen[c] > 1)
        .map(|c| Cap::ALL[c].name())
        .collect();
    if !missing.is_empty() || !doubled.is_empty() || n != NCAPS {
        return Err(format!(
            "`{CAP_EVAL_SYMBOL}` ({:#x}..{:#x}) must hold exactly one alternative site per cap ({NCAPS}); it holds {n} (missing: [{}], more than once: [{}]): a cap query that is not an alternative?",
            range.start,
            range.end,
            missing.join(", "),
            doubled.join(", ")
        ));
    }
    Ok(n)
}

/// The RELATIVE relocations as (slot, addend), after checking every entry (rules in
/// the module documentation). Sorted by slot.
pub fn relative_slots(elf: &ElfModel, mem_size: u64) -> Result<Vec<(u64, u64)>, String> {
    let rodata = elf.section(".hyp.rodata");
    let data = elf.section(".hyp.data");
    let mut out = Vec::new();
    for r in &elf.relocs {
        let place = elf.section_at(r.offset);
        if r.kind != R_AARCH64_RELATIVE || r.sym != 0 {
            return Err(format!(
                "relocation type {} (symbol {}) at {:#x} in {place} (from {}): only R_AARCH64_RELATIVE is understood",
                r.kind, r.sym, r.offset, r.section
            ));
        }
        if !r.offset.is_multiple_of(8) {
            return Err(format!(
                "R_AARCH64_RELATIVE at {:#x} in {place} is not 8-byte aligned",
                r.offset
            ));
        }
        let in_data = [rodata, data]
            .into_iter()
            .flatten()
            .any(|s| s.contains(r.offset, 8));
        if !in_data {
            return Err(format!(
                "R_AARCH64_RELATIVE at {:#x} lies in {place}: relocated slots must be in .hyp.rodata or .hyp.data",
                r.offset
            ));
        }
        let addend = u64::try_from(r.addend)
            .ok()
            .filter(|a| *a <= mem_size)
            .ok_or_else(|| {
                format!(
                    "R_AARCH64_RELATIVE at {:#x} in {place} has addend {:#x}, outside the image",
                    r.offset, r.addend
                )
            })?;
        out.push((r.offset, addend));
    }
    out.sort_unstable();
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("two relocations for the slot at {:#x}", w[0].0));
    }
    Ok(out)
}

fn range_of(s: Option<&ElfSection>, fallback: u64) -> Result<ImageRange, String> {
    let (addr, size) = s.map_or((fallback, 0), |s| (s.addr, s.size));
    let offset = u32::try_from(addr).map_err(|_| format!("address {addr:#x} beyond 4 GiB"))?;
    let size = u32::try_from(size).map_err(|_| format!("size {size:#x} beyond 4 GiB"))?;
    Ok(ImageRange::new(offset, size))
}

fn u32_of(v: u64, what: &str) -> Result<u32, String> {
    u32::try_from(v).map_err(|_| format!("{what} {v:#x} does not fit the image format"))
}

/// Runs every check on an el2 ELF and returns the sealed image (already verified with
/// [`HypImage::parse`]).
pub fn make_hyp_image(elf_bytes: &[u8]) -> Result<Vec<u8>, String> {
    let elf = ElfModel::read_pie(elf_bytes)?;
    check_sections(&elf)?;
    check_no_cap_state(&elf)?;
    check_cap_eval_sites(&elf)?;

    let page = u64::from(PAGE_SIZE);
    let text = range_of(elf.section(".hyp.text"), 0)?;
    let rodata = range_of(
        elf.section(".hyp.rodata"),
        text.end().next_multiple_of(page),
    )?;
    let data = range_of(
        elf.section(".hyp.data"),
        rodata.end().next_multiple_of(page),
    )?;
    let alt = range_of(elf.section(".altinstructions"), data.end())?;
    // The relocation list is written over .rela.dyn (24 bytes an entry there, 4 here).
    let list_at = elf
        .section(".rela.dyn")
        .map_or(alt.end().next_multiple_of(4), |s| s.addr);
    let bss_sec = elf.section(".hyp.bss");

    let idmap_start = elf.require_symbol("__hyp_idmap_text_start")?;
    let idmap_end = elf.require_symbol("__hyp_idmap_text_end")?;
    let percpu_start = elf.require_symbol("__hyp_percpu_start")?;
    let percpu_end = elf.require_symbol("__hyp_percpu_end")?;
    let stack_size = elf
        .symbol("__hyp_stack_size")
        .map_or(Ok(DEFAULT_STACK_SIZE), |v| u32_of(v, "__hyp_stack_size"))?;

    // mem_size bounds the RELATIVE addends; compute it from everything allocated.
    let alloc_end = elf
        .sections
        .iter()
        .filter(|s| s.flags & SHF_ALLOC != 0)
        .map(|s| s.addr + s.size)
        .max()
        .unwrap_or(0);
    let mem_size = alloc_end.next_multiple_of(page);
    let slots = relative_slots(&elf, mem_size)?;
    let relocs = ImageRange::new(
        u32_of(list_at, "relocation list offset")?,
        u32_of(slots.len() as u64 * 4, "relocation list size")?,
    );
    let image_size = [data.end(), alt.end(), relocs.end()]
        .into_iter()
        .max()
        .unwrap_or(0);
    let bss = range_of(bss_sec, image_size.next_multiple_of(page))?;

    let layout = HypLayout {
        image_size: u32_of(image_size, "image size")?,
        mem_size: u32_of(mem_size, "memory size")?,
        text,
        rodata,
        data,
        bss,
        idmap: ImageRange::new(
            u32_of(idmap_start, "__hyp_idmap_text_start")?,
            u32_of(idmap_end.saturating_sub(idmap_start), "idmap size")?,
        ),
        init_entry: u32_of(
            elf.require_symbol("__hyp_init_vectors")?,
            "__hyp_init_vectors",
        )?,
        host_vector: u32_of(
            elf.require_symbol("__hyp_host_vector")?,
            "__hyp_host_vector",
        )?,
        alt,
        relocs,
        percpu: ImageRange::new(
            u32_of(percpu_start, "__hyp_percpu_start")?,
            u32_of(percpu_end.saturating_sub(percpu_start), "per-CPU size")?,
        ),
        stack_size,
    };

    let mut image = vec![0u8; image_size as usize];
    for name in [".hyp.text", ".hyp.rodata", ".hyp.data", ".altinstructions"] {
        if let Some(s) = elf.section(name) {
            let at = s.addr as usize;
            image
                .get_mut(at..at + s.data.len())
                .ok_or_else(|| format!("section {name} does not fit the image"))?
                .copy_from_slice(&s.data);
        }
    }
    // A RELA slot's link-time content is not defined to hold the addend (lld leaves 0);
    // the image's list is REL-style, so the addend goes into the slot.
    for &(slot, addend) in &slots {
        let at = slot as usize;
        let cell = image
            .get_mut(at..at + 8)
            .ok_or_else(|| format!("relocated slot {slot:#x} outside the image"))?;
        let old = u64::from_le_bytes(cell.try_into().map_err(|_| "slot size")?);
        if old != 0 && old != addend {
            return Err(format!(
                "relocated slot {slot:#x} in {} holds {old:#x}, neither 0 nor its addend {addend:#x}",
                elf.section_at(slot)
            ));
        }
        cell.copy_from_slice(&addend.to_le_bytes());
    }
    for (i, &(slot, _)) in slots.iter().enumerate() {
        let at = list_at as usize + i * 4;
        image[at..at + 4].copy_from_slice(&(slot as u32).to_le_bytes());
    }
    shared::hyp_image::seal(&layout, &mut image).map_err(|e| e.to_string())?;
    // The self-check: the host's parser accepts exactly what was written.
    HypImage::parse(&image).map_err(|e| format!("self-check failed: {e}"))?;
    Ok(image)
}

/// Builds el2 (release, static PIE, own target dir) and returns the ELF's path.
pub fn build_el2(root: &Path) -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join(EL2_TARGET_DIR);
    eprintln!(
        "xtask: building el2 (static PIE) in {}",
        target_dir.display()
    );
    let status = Command::new(&cargo)
        .current_dir(root)
        .args(["build", "--release", "-p", "el2", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        // Highest-precedence flag source, so a RUSTFLAGS in the environment cannot
        // silently drop -pie; applies only to this invocation.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            xtask::build::static_pie_rustflags(&root.join("linker/el2.ld")).join("\x1f"),
        )
        .env_remove("RUSTFLAGS")
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if !status.success() {
        return Err(format!("building el2 failed ({status})"));
    }
    Ok(target_dir.join(TARGET).join("release").join("el2"))
}

/// Builds el2, checks it and writes the hyp image to [`HYP_IMAGE_PATH`]; returns that
/// path.
pub fn build_hyp_image(root: &Path) -> Result<PathBuf, String> {
    let elf_path = build_el2(root)?;
    let elf =
        std::fs::read(&elf_path).map_err(|e| format!("cannot read {}: {e}", elf_path.display()))?;
    let image = make_hyp_image(&elf).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    let out = root.join(HYP_IMAGE_PATH);
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(&out, &image).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("xtask: hyp image {} ({} bytes)", out.display(), image.len());
    Ok(out)
}

/// The size report of a hyp image file: file and memory size, each region, the number
/// of alternative records and relocations.
pub fn size_report(image_path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(image_path)
        .map_err(|e| format!("cannot read {}: {e}", image_path.display()))?;
    let img = HypImage::parse(&bytes).map_err(|e| format!("{}: {e}", image_path.display()))?;
    let l = img.layout();
    let mut s = format!(
        "hyp image {}: file {} bytes, memory {} bytes\n",
        image_path.display(),
        l.image_size,
        l.mem_size
    );
    for (name, r) in [
        ("text", l.text),
        ("  idmap", l.idmap),
        ("rodata", l.rodata),
        ("data", l.data),
        ("  percpu", l.percpu),
        ("bss", l.bss),
        ("alt table", l.alt),
        ("reloc list", l.relocs),
    ] {
        s += &format!("  {name:<11} {:#08x} {:>7} bytes\n", r.offset, r.size);
    }
    s += &format!(
        "  entries: init {:#x}, host vector {:#x}; stack {} bytes per CPU\n",
        l.init_entry, l.host_vector, l.stack_size
    );
    s += &format!(
        "  alternatives: {} entries; relocations: {}\n",
        img.alt_count(),
        img.relocations().count()
    );
    s += &host_size_report(&workspace_root());
    Ok(s)
}

/// The host half of the size report, from the el1-host ELF the last `cargo xtask build`
/// left (Image size, and `.altinstructions` entries).
fn host_size_report(root: &Path) -> String {
    let elf_path = root
        .join("target")
        .join("aarch64-unknown-none/release/el1-host");
    let img_path = xtask::qemu::image_path(root);
    let Ok(bytes) = std::fs::read(&elf_path) else {
        return format!(
            "host image: {} not built (run `cargo xtask build`)\n",
            elf_path.display()
        );
    };
    let model = ElfFile64::<object::Endianness>::parse(&*bytes)
        .map_err(|e| e.to_string())
        .and_then(|f| ElfModel::read(&f));
    let model = match model {
        Ok(m) => m,
        Err(e) => return format!("host image: {}: {e}\n", elf_path.display()),
    };
    let alt = model
        .section(".altinstructions")
        .map_or(0, |s| s.size as usize / ALT_RECORD_SIZE);
    let image = std::fs::metadata(&img_path).map(|m| m.len());
    format!(
        "host image {}: {}; ELF {}: alternatives: {alt} entries\n",
        img_path.display(),
        image.map_or("not built".into(), |n| format!("{n} bytes")),
        elf_path.display()
    )
}

/// The workspace root (the parent of xtask's manifest directory).
pub fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::alternative::CB_BIT;

    fn sec(name: &str, sh_type: u32, flags: u64, addr: u64, size: u64) -> ElfSection {
        ElfSection {
            name: name.into(),
            sh_type,
            flags,
            addr,
            size,
            data: vec![
                0;
                if sh_type == SHT_NOBITS {
                    0
                } else {
                    size as usize
                }
            ],
        }
    }

    const PROGBITS: u32 = 1;

    /// The shape el2.ld produces: text, rodata, data, alt table, .rela.dyn, bss.
    fn model() -> ElfModel {
        ElfModel {
            sections: vec![
                sec(
                    ".hyp.text",
                    PROGBITS,
                    SHF_ALLOC | SHF_EXECINSTR,
                    0x1000,
                    0x1000,
                ),
                sec(
                    ".hyp.rodata",
                    PROGBITS,
                    SHF_ALLOC | SHF_WRITE,
                    0x2000,
                    0x100,
                ),
                sec(".hyp.data", PROGBITS, SHF_ALLOC | SHF_WRITE, 0x3000, 0x100),
                sec(".altinstructions", PROGBITS, SHF_ALLOC, 0x4000, 0),
                sec(".rela.dyn", SHT_RELA, SHF_ALLOC, 0x4000, 48),
                sec(".hyp.bss", SHT_NOBITS, SHF_ALLOC | SHF_WRITE, 0x5000, 0x100),
                sec(".debug_info", PROGBITS, 0, 0, 0x40),
            ],
            symbols: vec![],
            relocs: vec![
                reloc(0x2000, R_AARCH64_RELATIVE, 0x1800),
                reloc(0x3008, R_AARCH64_RELATIVE, 0x3000),
            ],
        }
    }

    fn reloc(offset: u64, kind: u32, addend: i64) -> ElfReloc {
        ElfReloc {
            section: ".rela.dyn".into(),
            offset,
            kind,
            sym: 0,
            addend,
        }
    }

    fn section_mut<'a>(m: &'a mut ElfModel, name: &str) -> &'a mut ElfSection {
        m.sections.iter_mut().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn a_well_formed_model_passes() {
        let m = model();
        check_sections(&m).unwrap();
        check_no_cap_state(&m).unwrap();
        assert_eq!(
            relative_slots(&m, 0x6000).unwrap(),
            vec![(0x2000, 0x1800), (0x3008, 0x3000)]
        );
    }

    #[test]
    fn writable_or_missing_text_is_refused() {
        let mut m = model();
        section_mut(&mut m, ".hyp.text").flags |= SHF_WRITE;
        let e = check_sections(&m).unwrap_err();
        assert!(e.contains(".hyp.text") && e.contains("writable"), "{e}");
        let mut m = model();
        m.sections.retain(|s| s.name != ".hyp.text");
        assert!(check_sections(&m).unwrap_err().contains(".hyp.text"));
    }

    #[test]
    fn executable_non_text_and_unknown_sections_are_refused() {
        let mut m = model();
        section_mut(&mut m, ".hyp.data").flags |= SHF_EXECINSTR;
        let e = check_sections(&m).unwrap_err();
        assert!(e.contains(".hyp.data") && e.contains("executable"), "{e}");

        let mut m = model();
        m.sections
            .push(sec(".text.stray", PROGBITS, SHF_ALLOC, 0x6000, 0x10));
        let e = check_sections(&m).unwrap_err();
        assert!(e.contains(".text.stray"), "{e}");
    }

    #[test]
    fn rel_relr_and_foreign_rela_sections_are_refused() {
        for (name, ty) in [
            (".rel.dyn", SHT_REL),
            (".relr.dyn", SHT_RELR),
            (".rela.text", SHT_RELA),
        ] {
            let mut m = model();
            m.sections.push(sec(name, ty, 0, 0, 0));
            let e = check_sections(&m).unwrap_err();
            assert!(e.contains(name), "{e}");
        }
    }

    #[test]
    fn relocation_kinds_other_than_relative_are_refused() {
        let mut m = model();
        m.relocs.push(reloc(0x3010, 257, 0)); // R_AARCH64_ABS64
        let e = relative_slots(&m, 0x6000).unwrap_err();
        assert!(
            e.contains("257") && e.contains("0x3010") && e.contains(".hyp.data"),
            "{e}"
        );
        let mut m = model();
        m.relocs[0].sym = 3;
        assert!(relative_slots(&m, 0x6000).is_err());
    }

    #[test]
    fn relative_slots_must_be_aligned_non_text_and_point_into_the_image() {
        let mut m = model();
        m.relocs.push(reloc(0x1008, R_AARCH64_RELATIVE, 0x1000));
        let e = relative_slots(&m, 0x6000).unwrap_err();
        assert!(e.contains("0x1008") && e.contains(".hyp.text"), "{e}");

        let mut m = model();
        m.relocs.push(reloc(0x3004, R_AARCH64_RELATIVE, 0x1000));
        assert!(relative_slots(&m, 0x6000).unwrap_err().contains("aligned"));

        let mut m = model();
        m.relocs.push(reloc(0x3010, R_AARCH64_RELATIVE, 0x6008));
        assert!(relative_slots(&m, 0x6000)
            .unwrap_err()
            .contains("outside the image"));
        let mut m = model();
        m.relocs.push(reloc(0x3010, R_AARCH64_RELATIVE, -8));
        assert!(relative_slots(&m, 0x6000).is_err());

        let mut m = model();
        m.relocs.push(reloc(0x3008, R_AARCH64_RELATIVE, 0x3000));
        assert!(relative_slots(&m, 0x6000)
            .unwrap_err()
            .contains("two relocations"));
    }

    #[test]
    fn capability_state_symbols_are_refused() {
        let data_sym = |name: &str, is_data| ElfSymbol {
            name: name.into(),
            addr: 0x3000,
            size: 8,
            is_data,
            section: Some(".hyp.data".into()),
        };
        for bad in [
            "cpu_hwcaps",
            "system_cpucaps",
            "_ZN6shared7cpucaps3set6CapSet5EMPTY17h0123456789abcdefE",
            "_ZN3el25FINAL17hdeadbeefE_FinalCaps",
        ] {
            let mut m = model();
            m.symbols.push(data_sym(bad, true));
            let e = check_no_cap_state(&m).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        // Code may mention caps; only data is state.
        let mut m = model();
        m.symbols
            .push(data_sym("_ZN6shared7cpucaps3Cap4name17habcE", false));
        m.symbols.push(data_sym("HOST_HCALLS", true));
        check_no_cap_state(&m).unwrap();
    }

    fn alt_model(orig: u64) -> ElfModel {
        let mut m = model();
        m.sections.push(sec(
            ".text.nopatch",
            PROGBITS,
            SHF_ALLOC | SHF_EXECINSTR,
            0x1800,
            0x100,
        ));
        let alt = section_mut(&mut m, ".altinstructions");
        alt.size = 24;
        let rec = |i: u64, orig: u64| {
            AltRecord {
                orig_offset: (orig as i64 - (0x4000 + 12 * i as i64)) as i32,
                alt_offset: 0,
                cpucap: CB_BIT | 2,
                orig_len: 8,
                alt_len: 0,
            }
            .to_bytes()
        };
        alt.data = [rec(0, 0x1000), rec(1, orig)].concat();
        m
    }

    #[test]
    fn patch_sites_in_the_patcher_section_are_refused() {
        assert_eq!(
            check_no_patch_sites(&alt_model(0x1900), ".text.nopatch"),
            Ok(2)
        );
        // Last word of the site inside the section.
        let e = check_no_patch_sites(&alt_model(0x17fc), ".text.nopatch").unwrap_err();
        assert!(e.contains("record 1") && e.contains(".text.nopatch"), "{e}");
        let e = check_no_patch_sites(&alt_model(0x18f8), ".text.nopatch").unwrap_err();
        assert!(e.contains("0x18f8"), "{e}");
        // Just after it.
        assert_eq!(
            check_no_patch_sites(&alt_model(0x1800 + 0x100), ".text.nopatch"),
            Ok(2)
        );
        assert!(check_no_patch_sites(&model(), ".text.nopatch")
            .unwrap_err()
            .contains("no section"));
    }

    /// A model whose `hyp_eval_caps` (0x1100..0x1100+4*n) holds one site per cap in
    /// `caps`, plus one record outside the function.
    fn eval_model(caps: &[u16]) -> ElfModel {
        let mut m = model();
        let f = 0x1100u64;
        m.symbols.push(ElfSymbol {
            name: CAP_EVAL_SYMBOL.into(),
            addr: f,
            size: 4 * caps.len() as u64 + 4,
            is_data: false,
            section: Some(".hyp.text".into()),
        });
        let alt_at = 0x4000u64;
        let mut data = Vec::new();
        let mut rec = |i: usize, orig: u64, cap: u16| {
            let at = alt_at + (i * ALT_RECORD_SIZE) as u64;
            data.extend_from_slice(
                &AltRecord {
                    orig_offset: (orig as i64 - at as i64) as i32,
                    alt_offset: 0,
                    cpucap: CB_BIT | cap,
                    orig_len: 4,
                    alt_len: 0,
                }
                .to_bytes(),
            );
        };
        for (i, &c) in caps.iter().enumerate() {
            rec(i, f + 4 * i as u64, c);
        }
        // A site elsewhere (another function) does not count.
        rec(caps.len(), 0x1000, 5);
        let alt = section_mut(&mut m, ".altinstructions");
        alt.size = data.len() as u64;
        alt.data = data;
        m
    }

    #[test]
    fn cap_eval_function_needs_one_site_per_cap() {
        use shared::cpucaps::NCAPS;
        let all: Vec<u16> = (0..NCAPS as u16).collect();
        assert_eq!(check_cap_eval_sites(&eval_model(&all)), Ok(NCAPS));
        // One cap missing.
        let e = check_cap_eval_sites(&eval_model(&all[1..])).unwrap_err();
        assert!(e.contains("missing: [ALWAYS_BOOT]"), "{e}");
        // One cap twice (a duplicated site), another missing.
        let mut dup = all.clone();
        dup[2] = 3;
        let e = check_cap_eval_sites(&eval_model(&dup)).unwrap_err();
        assert!(
            e.contains("more than once: [HAS_32BIT_EL0]") && e.contains("BTI"),
            "{e}"
        );
        // No such function at all.
        let e = check_cap_eval_sites(&model()).unwrap_err();
        assert!(e.contains(CAP_EVAL_SYMBOL), "{e}");
    }

    #[test]
    fn only_little_endian_aarch64_pies_are_read() {
        use object::write::Object;
        use object::{Architecture, BinaryFormat, Endianness, SectionKind};
        let mut obj = Object::new(BinaryFormat::Elf, Architecture::Aarch64, Endianness::Little);
        let text = obj.add_section(vec![], b".hyp.text".to_vec(), SectionKind::Text);
        obj.append_section_data(text, &[0x1f, 0x20, 0x03, 0xd5], 4);
        let rel = obj.write().unwrap();
        let e = ElfModel::read_pie(&rel).unwrap_err();
        assert!(e.contains("ET_DYN"), "{e}");
        assert!(ElfModel::read_pie(b"not an elf").is_err());
    }

    /// The real thing: el2 as built by the pipeline passes every check, and the image
    /// holds each RELATIVE addend in its slot.
    #[test]
    fn real_el2_becomes_a_valid_image() {
        let root = workspace_root();
        let elf_path = build_el2(&root).expect("el2 builds");
        let bytes = std::fs::read(&elf_path).unwrap();
        let file = ElfFile64::<object::Endianness>::parse(&*bytes).unwrap();
        let elf = ElfModel::read(&file).unwrap();
        let image = make_hyp_image(&bytes).expect("el2 passes the checks");
        let parsed = HypImage::parse(&image).unwrap();
        let l = parsed.layout();
        assert_eq!(
            u64::from(l.host_vector),
            elf.symbol("__hyp_host_vector").unwrap()
        );
        assert_eq!(
            u64::from(l.init_entry),
            elf.symbol("__hyp_init_vectors").unwrap()
        );
        let listed: Vec<u32> = parsed.relocations().collect();
        assert_eq!(listed.len(), elf.relocs.len());
        assert!(!listed.is_empty(), "the hypercall table needs relocations");
        for r in &elf.relocs {
            let at = r.offset as usize;
            let slot = u64::from_le_bytes(image[at..at + 8].try_into().unwrap());
            assert_eq!(slot as i64, r.addend);
            assert!(listed.contains(&(r.offset as u32)));
        }
        // The text bytes are the ELF's.
        let text = elf.section(".hyp.text").unwrap();
        assert_eq!(parsed.range_bytes(l.text), &text.data[..]);
        check_no_cap_state(&elf).unwrap();
        assert_eq!(
            check_cap_eval_sites(&elf),
            Ok(shared::cpucaps::NCAPS),
            "the built el2's cap evaluation"
        );
    }
}
