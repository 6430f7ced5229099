//! Checks the machine code and records that the alternative site macros produce, by building
//! `tests/alt-demo` for `aarch64-unknown-none` and reading its rlib.
//!
//! Route: the rlib's ELF members are read with the `object` crate, *unlinked*. That keeps
//! the test free of linker scripts and of `--gc-sections` (which would drop an unreferenced
//! `.altinstructions`), and it is exact: each record field that points at code carries an
//! `R_AARCH64_PREL32` relocation whose symbol + addend names the section and offset of the
//! site, so a record is resolved to (function section, offset) without guessing link
//! addresses. Branches inside one section (the check's `b` to its false path, the
//! replacement `b` to the true path) are resolved by the assembler and read from the bytes;
//! calls to the demo's path functions stay `R_AARCH64_JUMP26`/`CALL26` relocations, which
//! is how the true and false paths are recognised. `llvm-objdump -d` is the independent
//! disassembler for the mnemonic-level checks (no memory access, template shapes).
//!
//! A second test builds small throwaway crates against `shared` to prove that bad sites
//! (cap number `>= NCAPS`, unequal plain halves, wrong callback template size) do not build.

use object::elf::{RelocationType, R_AARCH64_CALL26, R_AARCH64_JUMP26, R_AARCH64_PREL32};
use object::read::archive::ArchiveFile;
use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationTarget, SymbolKind,
    SymbolSection,
};
use shared::alternative::{AltRecord, CallbackId, ALT_RECORD_SIZE, CB_BIT};
use shared::cpucaps::{Cap, NCAPS};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const NOP: u32 = 0xd503_201f;
const RET: u32 = 0xd65f_03c0;
/// `sb`, written as `.inst` in the demo because the assembler is not given the feature.
const SB: u32 = 0xd503_30ff;

const TRUE_PATH: &str = "alt_demo_true_path";
const FALSE_PATH: &str = "alt_demo_false_path";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("shared/ has a parent directory")
        .to_path_buf()
}

fn cargo() -> PathBuf {
    std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO")))
}

fn llvm_objdump() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("llvm-objdump"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| panic!("llvm-objdump not found: run scripts/setup"))
}

fn is_b(word: u32) -> bool {
    word & 0xfc00_0000 == 0x1400_0000
}

/// Target offset of a `B` at `at`, from its imm26 field.
fn b_target(at: u64, word: u32) -> u64 {
    let imm26 = i64::from(word & 0x03ff_ffff);
    let off = ((imm26 << 38) >> 38) * 4;
    at.wrapping_add(off as u64)
}

/// One relocation as needed here: its type, the symbol's name, and where symbol + addend
/// points (section and offset) when the symbol is defined in this object.
#[derive(Debug, Clone)]
struct Reloc {
    r_type: RelocationType,
    symbol: String,
    target: Option<(usize, u64)>,
}

#[derive(Debug)]
struct Section {
    name: String,
    data: Vec<u8>,
    align: u64,
    relocs: BTreeMap<u64, Reloc>,
}

impl Section {
    fn word(&self, off: u64) -> u32 {
        let o = off as usize;
        let b = self
            .data
            .get(o..o + 4)
            .unwrap_or_else(|| panic!("{}: no instruction at {off:#x}", self.name));
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loc {
    section: usize,
    offset: u64,
}

/// A record with its code pointers resolved through the relocations.
#[derive(Debug)]
struct Record {
    raw: AltRecord,
    orig: Loc,
    /// Replacement code (plain records only).
    alt: Option<Loc>,
}

#[derive(Debug)]
struct Function {
    section: usize,
    address: u64,
    size: u64,
}

/// One ELF member of the rlib that holds code.
#[derive(Debug)]
struct Obj {
    sections: BTreeMap<usize, Section>,
    functions: BTreeMap<String, Function>,
    alt_section: Option<usize>,
    records: Vec<Record>,
}

impl Obj {
    fn parse(bytes: &[u8]) -> Obj {
        let file = object::File::parse(bytes).expect("rlib member is an object file");
        let mut sections = BTreeMap::new();
        let mut alt_section = None;
        for s in file.sections() {
            let name = s.name().unwrap_or("").to_string();
            let mut relocs = BTreeMap::new();
            for (off, r) in s.relocations() {
                let RelocationFlags::Elf { r_type } = r.flags() else {
                    panic!("{name}: non-ELF relocation");
                };
                let (symbol, target) = match r.target() {
                    RelocationTarget::Symbol(i) => {
                        let sym = file.symbol_by_index(i).expect("relocation symbol exists");
                        let target = match sym.section() {
                            SymbolSection::Section(sec) => {
                                Some((sec.0, sym.address().wrapping_add(r.addend() as u64)))
                            }
                            _ => None,
                        };
                        (sym.name().unwrap_or("").to_string(), target)
                    }
                    other => panic!("{name}: unexpected relocation target {other:?}"),
                };
                relocs.insert(
                    off,
                    Reloc {
                        r_type,
                        symbol,
                        target,
                    },
                );
            }
            if name == ".altinstructions" {
                alt_section = Some(s.index().0);
            }
            sections.insert(
                s.index().0,
                Section {
                    name,
                    data: s.data().expect("section data").to_vec(),
                    align: s.align(),
                    relocs,
                },
            );
        }
        let mut functions = BTreeMap::new();
        for sym in file.symbols() {
            if sym.kind() != SymbolKind::Text {
                continue;
            }
            if let (Ok(name), Some(section)) = (sym.name(), sym.section_index()) {
                if name.starts_with('$') {
                    continue; // mapping symbols ($x, $d)
                }
                functions.insert(
                    name.to_string(),
                    Function {
                        section: section.0,
                        address: sym.address(),
                        size: sym.size(),
                    },
                );
            }
        }
        let mut obj = Obj {
            sections,
            functions,
            alt_section,
            records: Vec::new(),
        };
        obj.records = obj.read_records();
        obj
    }

    fn read_records(&self) -> Vec<Record> {
        let Some(idx) = self.alt_section else {
            return Vec::new();
        };
        let sec = &self.sections[&idx];
        assert!(
            sec.align >= 4,
            ".altinstructions alignment {} (must be >= 4)",
            sec.align
        );
        assert_eq!(
            sec.data.len() % ALT_RECORD_SIZE,
            0,
            ".altinstructions size {} is not a multiple of {ALT_RECORD_SIZE}",
            sec.data.len()
        );
        let prel32 = |at: u64, what: &str| -> Loc {
            let r = sec
                .relocs
                .get(&at)
                .unwrap_or_else(|| panic!("record field at {at:#x} ({what}) has no relocation"));
            assert_eq!(
                r.r_type, R_AARCH64_PREL32,
                "record field at {at:#x} ({what}): relocation type {:?}",
                r.r_type
            );
            let (section, offset) = r
                .target
                .unwrap_or_else(|| panic!("record field at {at:#x} points outside this object"));
            Loc { section, offset }
        };
        sec.data
            .chunks_exact(ALT_RECORD_SIZE)
            .enumerate()
            .map(|(i, bytes)| {
                let at = (i * ALT_RECORD_SIZE) as u64;
                let raw = AltRecord::from_bytes(bytes).expect("12 bytes");
                let orig = prel32(at, "orig_offset");
                let alt = if raw.is_callback() {
                    assert!(
                        !sec.relocs.contains_key(&(at + 4)),
                        "callback record at {at:#x}: alt_offset must be a plain id, not relocated"
                    );
                    None
                } else {
                    Some(prel32(at + 4, "alt_offset"))
                };
                Record { raw, orig, alt }
            })
            .collect()
    }

    /// The function whose body holds `loc`.
    fn function_at(&self, loc: Loc) -> Option<&str> {
        self.functions
            .iter()
            .find(|(_, f)| {
                f.section == loc.section
                    && loc.offset >= f.address
                    && loc.offset < f.address + f.size
            })
            .map(|(n, _)| n.as_str())
    }

    /// Follows straight-line code and direct branches from `loc` until a call or tail call
    /// of a function (a JUMP26/CALL26 relocation) and returns that function's name.
    fn path_from(&self, loc: Loc) -> String {
        let sec = &self.sections[&loc.section];
        let mut at = loc.offset;
        for _ in 0..64 {
            if let Some(r) = sec.relocs.get(&at) {
                if r.r_type == R_AARCH64_JUMP26 || r.r_type == R_AARCH64_CALL26 {
                    return r.symbol.clone();
                }
            }
            let w = sec.word(at);
            assert_ne!(
                w, RET,
                "{}: path from {loc:?} returns before any call",
                sec.name
            );
            at = if is_b(w) { b_target(at, w) } else { at + 4 };
        }
        panic!("{}: path from {loc:?} does not reach a call", sec.name);
    }
}

/// The built demo: its objects and the `llvm-objdump -d -r` listing of the rlib.
struct Demo {
    objs: Vec<Obj>,
    /// Section name → (offset, mnemonic, operands), from llvm-objdump.
    disasm: BTreeMap<String, Vec<(u64, String, String)>>,
    /// The raw llvm-objdump output, for printing.
    listing: String,
}

fn build_demo() -> PathBuf {
    let root = workspace_root();
    let target_dir = root.join("target").join("alt-demo");
    let out = Command::new(cargo())
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", &target_dir)
        .args([
            "build",
            "--release",
            "--target",
            "aarch64-unknown-none",
            "-p",
            "alt-demo",
        ])
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building alt-demo failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join("aarch64-unknown-none/release/libalt_demo.rlib")
}

fn parse_listing(listing: &str) -> BTreeMap<String, Vec<(u64, String, String)>> {
    let mut map: BTreeMap<String, Vec<(u64, String, String)>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in listing.lines() {
        if let Some(rest) = line.strip_prefix("Disassembly of section ") {
            current = Some(rest.trim_end_matches(':').to_string());
            continue;
        }
        let Some(sec) = &current else { continue };
        // Instruction lines: "<hex offset>: <mnemonic> <operands>"; relocation lines have
        // a 16-digit offset followed by "R_AARCH64_…" and are skipped.
        let t = line.trim_start();
        let Some((off, rest)) = t.split_once(':') else {
            continue;
        };
        let Ok(off) = u64::from_str_radix(off, 16) else {
            continue;
        };
        let rest = rest.trim();
        if rest.is_empty() || rest.starts_with("R_AARCH64_") {
            continue;
        }
        let (mnemonic, operands) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
        map.entry(sec.clone()).or_default().push((
            off,
            mnemonic.to_string(),
            operands.trim().to_string(),
        ));
    }
    map
}

fn demo() -> &'static Demo {
    static DEMO: OnceLock<Demo> = OnceLock::new();
    DEMO.get_or_init(|| {
        let objdump = llvm_objdump();
        let rlib = build_demo();
        let data = std::fs::read(&rlib).expect("read the alt-demo rlib");
        let archive = ArchiveFile::parse(&*data).expect("rlib is an archive");
        let mut objs = Vec::new();
        for member in archive.members() {
            let member = member.expect("archive member");
            let name = String::from_utf8_lossy(member.name()).to_string();
            if !name.ends_with(".o") {
                continue; // lib.rmeta
            }
            objs.push(Obj::parse(member.data(&*data).expect("member data")));
        }
        assert!(!objs.is_empty(), "no object files in {}", rlib.display());
        let out = Command::new(&objdump)
            .args(["-d", "-r", "--no-show-raw-insn"])
            .arg(&rlib)
            .output()
            .expect("llvm-objdump runs");
        assert!(
            out.status.success(),
            "llvm-objdump failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8_lossy(&out.stdout).to_string();
        Demo {
            objs,
            disasm: parse_listing(&listing),
            listing,
        }
    })
}

impl Demo {
    /// The single record whose original code lies in function `func`, with its object.
    fn record_of(&self, func: &str) -> (&Obj, &Record) {
        let mut found = Vec::new();
        for obj in &self.objs {
            for r in &obj.records {
                if obj.function_at(r.orig) == Some(func) {
                    found.push((obj, r));
                }
            }
        }
        assert_eq!(
            found.len(),
            1,
            "records for {func}: {:?}",
            found.iter().map(|(_, r)| r).collect::<Vec<_>>()
        );
        found.remove(0)
    }

    fn section_name(&self, obj: &Obj, loc: Loc) -> String {
        obj.sections[&loc.section].name.clone()
    }

    /// llvm-objdump's instructions of the section holding `loc`, from `loc` on.
    fn insns_at(&self, obj: &Obj, loc: Loc, n: usize) -> Vec<(String, String)> {
        let name = self.section_name(obj, loc);
        let insns = self
            .disasm
            .get(&name)
            .unwrap_or_else(|| panic!("llvm-objdump listed no section {name}"));
        let v: Vec<_> = insns
            .iter()
            .filter(|(off, _, _)| *off >= loc.offset)
            .take(n)
            .map(|(_, m, o)| (m.clone(), o.clone()))
            .collect();
        assert_eq!(
            v.len(),
            n,
            "{name}: fewer than {n} instructions at {:#x}",
            loc.offset
        );
        v
    }

    /// Prints llvm-objdump's listing of one section (shown with `--nocapture`).
    fn print_section(&self, section: &str) {
        let mut on = false;
        for line in self.listing.lines() {
            if line.starts_with("Disassembly of section ") {
                on = line.contains(&format!("section {section}:"));
            }
            if on {
                println!("{line}");
            }
        }
    }
}

/// Asserts the shape of a likely check in `func`: one `b` to the false path, fall-through
/// to the true path, a PatchNops callback record for `cap` covering just that instruction.
fn assert_likely_site(func: &str, cap: Cap) {
    let d = demo();
    let (obj, r) = d.record_of(func);
    assert_eq!(r.raw.cpucap, cap.number() | CB_BIT, "{func}: cap field");
    assert_eq!(
        r.raw.callback(),
        Some(CallbackId::PatchNops),
        "{func}: callback id"
    );
    assert_eq!((r.raw.orig_len, r.raw.alt_len), (4, 0), "{func}: lengths");
    let w = obj.sections[&r.orig.section].word(r.orig.offset);
    assert!(is_b(w), "{func}: site is {w:#010x}, not a `b`");
    let taken = Loc {
        offset: b_target(r.orig.offset, w),
        ..r.orig
    };
    let through = Loc {
        offset: r.orig.offset + 4,
        ..r.orig
    };
    assert_eq!(
        obj.path_from(taken),
        FALSE_PATH,
        "{func}: unpatched branch target"
    );
    assert_eq!(
        obj.path_from(through),
        TRUE_PATH,
        "{func}: fall-through once NOPed"
    );
    let insn = d.insns_at(obj, r.orig, 1);
    assert_eq!(insn[0].0, "b", "{func}: llvm-objdump disagrees: {insn:?}");
}

#[test]
fn likely_check_is_one_branch_to_the_false_path() {
    assert_likely_site("alt_demo_likely", Cap::HasLseAtomics);
    demo().print_section(".text.alt_demo_likely");
}

#[test]
fn system_capabilities_finalized_is_a_likely_check_of_always_system() {
    assert_likely_site("alt_demo_finalized", Cap::AlwaysSystem);
}

#[test]
fn unlikely_check_is_one_nop_replaced_by_a_branch_to_the_true_path() {
    let d = demo();
    let func = "alt_demo_unlikely";
    let (obj, r) = d.record_of(func);
    assert_eq!(
        r.raw.cpucap,
        Cap::HasPan.number(),
        "plain record, cap HAS_PAN"
    );
    assert_eq!((r.raw.orig_len, r.raw.alt_len), (4, 4));
    let sec = &obj.sections[&r.orig.section];
    assert_eq!(sec.word(r.orig.offset), NOP, "site is not a nop");
    let through = Loc {
        offset: r.orig.offset + 4,
        ..r.orig
    };
    assert_eq!(obj.path_from(through), FALSE_PATH, "unpatched fall-through");

    // The replacement sits in subsection 1 of the same section, after the function body.
    let alt = r.alt.expect("plain record has a replacement");
    assert_eq!(
        alt.section, r.orig.section,
        "replacement in another section"
    );
    let f = &obj.functions[func];
    assert!(
        alt.offset >= f.address + f.size,
        "replacement at {:#x} inside the function body (ends {:#x})",
        alt.offset,
        f.address + f.size
    );
    assert!(
        !sec.relocs.contains_key(&alt.offset),
        "replacement branch left to the linker"
    );
    let w = sec.word(alt.offset);
    assert!(is_b(w), "replacement is {w:#010x}, not a `b`");
    let yes = Loc {
        offset: b_target(alt.offset, w),
        ..alt
    };
    assert_eq!(obj.path_from(yes), TRUE_PATH, "replacement branch target");
    assert_eq!(d.insns_at(obj, r.orig, 1)[0].0, "nop");
    d.print_section(".text.alt_demo_unlikely");
}

#[test]
fn check_functions_do_not_access_memory() {
    let d = demo();
    for func in ["alt_demo_likely", "alt_demo_unlikely", "alt_demo_finalized"] {
        let section = format!(".text.{func}");
        let insns = d
            .disasm
            .get(&section)
            .unwrap_or_else(|| panic!("llvm-objdump listed no section {section}"));
        assert!(!insns.is_empty());
        for (off, m, ops) in insns {
            let memory = ["ld", "st", "cas", "swp", "prf"]
                .iter()
                .any(|p| m.starts_with(p));
            assert!(!memory, "{func}+{off:#x}: memory access `{m} {ops}`");
        }
    }
    // The test can see memory accesses: the opaque path functions do use the stack.
    let path = &d.disasm[&format!(".text.{TRUE_PATH}")];
    assert!(path.iter().any(|(_, m, _)| m.starts_with("ld")));
}

#[test]
fn plain_alternatives_record_equal_halves() {
    let d = demo();

    let (obj, r) = d.record_of("alt_demo_plain_barrier");
    assert_eq!(r.raw.cpucap, Cap::HasSb.number());
    assert_eq!((r.raw.orig_len, r.raw.alt_len), (8, 8));
    let orig = d.insns_at(obj, r.orig, 2);
    assert_eq!(orig[0], ("dsb".to_string(), "nsh".to_string()));
    assert_eq!(orig[1].0, "isb");
    let alt = r.alt.expect("replacement");
    let sec = &obj.sections[&alt.section];
    assert_eq!(sec.word(alt.offset), SB);
    assert_eq!(sec.word(alt.offset + 4), NOP);

    let (obj, r) = d.record_of("alt_demo_plain_operands");
    assert_eq!(r.raw.cpucap, Cap::HasCrc32.number());
    assert_eq!((r.raw.orig_len, r.raw.alt_len), (4, 4));
    let alt = r.alt.expect("replacement");
    let (o, a) = (&d.insns_at(obj, r.orig, 1)[0], &d.insns_at(obj, alt, 1)[0]);
    assert_eq!((o.0.as_str(), a.0.as_str()), ("add", "sub"));
    // Both halves use the registers the compiler allocated for the same operands.
    assert_eq!(o.1, a.1, "operands differ between halves");
}

#[test]
fn kern_hyp_va_site_is_the_five_instruction_template() {
    let d = demo();
    let (obj, r) = d.record_of("alt_demo_kern_hyp_va");
    assert_eq!(r.raw.cpucap, Cap::AlwaysSystem.number() | CB_BIT);
    assert_eq!(r.raw.callback(), Some(CallbackId::KernHypVa));
    assert_eq!((r.raw.orig_len, r.raw.alt_len), (20, 0));
    let insns = d.insns_at(obj, r.orig, 5);
    let mnemonics: Vec<_> = insns.iter().map(|(m, _)| m.as_str()).collect();
    assert_eq!(mnemonics, ["and", "ror", "add", "add", "ror"]);
    // Rd == Rn, and the same register in all five.
    let regs: Vec<Vec<&str>> = insns
        .iter()
        .map(|(_, o)| o.split(',').take(2).map(str::trim).collect())
        .collect();
    let reg = regs[0][0];
    assert!(reg.starts_with('x'), "64-bit register expected, got {reg}");
    for r in &regs {
        assert_eq!(r, &[reg, reg], "template operands {insns:?}");
    }
}

#[test]
fn movz_movk_sites_carry_their_callback_ids() {
    let d = demo();
    for (func, cb) in [
        ("alt_demo_final_ctr_el0", CallbackId::FinalCtrEl0),
        ("alt_demo_kimage_voffset", CallbackId::KimageVoffset),
    ] {
        let (obj, r) = d.record_of(func);
        assert_eq!(r.raw.cpucap, Cap::AlwaysSystem.number() | CB_BIT, "{func}");
        assert_eq!(r.raw.callback(), Some(cb), "{func}");
        assert_eq!((r.raw.orig_len, r.raw.alt_len), (16, 0), "{func}");
        let sec = &obj.sections[&r.orig.section];
        let words: Vec<u32> = (0..4).map(|i| sec.word(r.orig.offset + 4 * i)).collect();
        let rd = words[0] & 31;
        for (i, w) in words.iter().enumerate() {
            // MOVZ (i = 0) / MOVK (i > 0), 64-bit, hw = i, imm16 = 0.
            let opc = if i == 0 { 0xd280_0000 } else { 0xf280_0000 };
            assert_eq!(
                *w,
                opc | ((i as u32) << 21) | rd,
                "{func}: template word {i} is {w:#010x}"
            );
        }
    }
}

#[test]
fn every_record_belongs_to_one_demo_site() {
    let d = demo();
    let total: usize = d.objs.iter().map(|o| o.records.len()).sum();
    let sites = [
        "alt_demo_likely",
        "alt_demo_unlikely",
        "alt_demo_finalized",
        "alt_demo_plain_barrier",
        "alt_demo_plain_operands",
        "alt_demo_kern_hyp_va",
        "alt_demo_final_ctr_el0",
        "alt_demo_kimage_voffset",
    ];
    for s in sites {
        d.record_of(s); // exactly one each
    }
    assert_eq!(total, sites.len(), "records outside the demo sites");
    for obj in &d.objs {
        for r in &obj.records {
            assert!((r.raw.cap_number() as usize) < NCAPS);
            assert_eq!(r.raw.orig_len % 4, 0);
            if r.raw.is_callback() {
                assert_eq!(r.raw.alt_len, 0);
            } else {
                assert_eq!(r.raw.alt_len, r.raw.orig_len);
            }
        }
    }
}

/// Builds a throwaway crate whose `lib.rs` is `src` against `shared` for
/// aarch64-unknown-none; returns whether it built and the compiler's stderr.
fn build_snippet(dir: &Path, src: &str) -> (bool, String) {
    let root = workspace_root();
    std::fs::create_dir_all(dir).expect("create snippet dir");
    // `[workspace]` makes the snippet its own workspace although it sits under target/.
    let manifest = format!(
        "[package]\nname = \"alt-snippet\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n\
         [lib]\npath = \"lib.rs\"\n\n[dependencies]\nshared = {{ path = {:?} }}\n\n[workspace]\n",
        root.join("shared")
    );
    std::fs::write(dir.join("Cargo.toml"), manifest).expect("write Cargo.toml");
    std::fs::write(dir.join("lib.rs"), src).expect("write lib.rs");
    let out = Command::new(cargo())
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .args(["build", "--target", "aarch64-unknown-none"])
        .output()
        .expect("cargo runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn bad_sites_do_not_build() {
    let dir = workspace_root().join("target").join("alt-demo-snippet");
    let last = NCAPS - 1;
    let prelude = "#![no_std]\nuse shared::alternative::CallbackId;\nuse shared::cpucaps::Cap;\n";
    let kern_hyp_va_template = r#""and {r}, {r}, #1", "ror {r}, {r}, #1", "add {r}, {r}, #0", "add {r}, {r}, #0, lsl #12""#;

    // Control: the same forms with valid arguments build, so the failures below are
    // caused by what each case changes.
    let good = format!(
        "{prelude}\
         pub fn likely() -> bool {{ shared::cap_likely!(number = {last}) }}\n\
         pub fn unlikely() -> bool {{ shared::cap_unlikely!(number = {last}) }}\n\
         pub fn plain() {{ unsafe {{ shared::alternative!(cap_number = {last}, default = [\"nop\", \"nop\"], replacement = [\"isb\", \"nop\"]) }} }}\n\
         pub fn cb(mut v: u64) -> u64 {{ unsafe {{ shared::alternative_cb!(cap = Cap::AlwaysSystem, callback = CallbackId::KernHypVa, template = [{kern_hyp_va_template}, \"ror {{r}}, {{r}}, #63\"], r = inout(reg) v) }} v }}\n"
    );
    let (ok, err) = build_snippet(&dir, &good);
    assert!(ok, "valid sites failed to build:\n{err}");

    let n = NCAPS;
    let cases = [
        (
            "likely with cap NCAPS",
            format!("{prelude}pub fn f() -> bool {{ shared::cap_likely!(number = {n}) }}\n"),
            "cap number out of range",
        ),
        (
            "unlikely with cap NCAPS",
            format!("{prelude}pub fn f() -> bool {{ shared::cap_unlikely!(number = {n}) }}\n"),
            "cap number out of range",
        ),
        (
            "plain alternative with cap NCAPS",
            format!("{prelude}pub fn f() {{ unsafe {{ shared::alternative!(cap_number = {n}, default = [\"nop\"], replacement = [\"isb\"]) }} }}\n"),
            "cap number out of range",
        ),
        (
            "plain alternative with a longer replacement",
            format!("{prelude}pub fn f() {{ unsafe {{ shared::alternative!(cap = Cap::HasSb, default = [\"nop\"], replacement = [\"isb\", \"nop\"]) }} }}\n"),
            ".org",
        ),
        (
            "plain alternative with a shorter replacement",
            format!("{prelude}pub fn f() {{ unsafe {{ shared::alternative!(cap = Cap::HasSb, default = [\"nop\", \"nop\"], replacement = [\"isb\"]) }} }}\n"),
            ".org",
        ),
        (
            "kern_hyp_va callback with four template instructions",
            format!("{prelude}pub fn f(mut v: u64) -> u64 {{ unsafe {{ shared::alternative_cb!(cap = Cap::AlwaysSystem, callback = CallbackId::KernHypVa, template = [{kern_hyp_va_template}], r = inout(reg) v) }} v }}\n"),
            ".org",
        ),
    ];
    for (what, src, expect) in cases {
        let (ok, err) = build_snippet(&dir, &src);
        assert!(!ok, "{what}: built, but must not");
        assert!(
            err.contains(expect),
            "{what}: error does not mention {expect:?}:\n{err}"
        );
    }
}
