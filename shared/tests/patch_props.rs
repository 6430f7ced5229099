//! Property tests and a fuzz-style harness for `shared::patch`.
//!
//! * Random valid tables (random sites, caps, masks, replacement contents with internal
//!   and leaving branches and ADRP, callbacks, shuffled record order) patch
//!   deterministically, apply exactly the records whose cap is in set ∩ mask, produce
//!   the right words, and touch no byte outside the sites they report.
//! * Random corruptions of a valid image's table either patch (touching only reported
//!   sites) or are refused with the image unchanged.
//! * Arbitrary bytes, table ranges, bases and caps never make the patcher panic, and a
//!   refusal never writes.
//!
//! Case counts: `PROPTEST_CASES` sets every property's count; the defaults keep the whole
//! file well under 30 s in a debug build.

use proptest::prelude::*;
use shared::alternative::{self, CallbackId, ALT_RECORD_SIZE, CB_BIT, NCALLBACKS};
use shared::callbacks::BootPassCallbacks;
use shared::cpucaps::{Cap, CapSet, NCAPS};
use shared::insn::{self, Insn, NOP};
use shared::patch::{
    apply_alternatives, apply_alternatives_with, check_alternatives, CallbackError,
    CallbackResolver, CallbackSite, PatchError, PatchReport, PatchedSite, RecordFault,
};
use std::ops::Range;

// `testimage.rs` names crate items as `crate::alternative::…`, which the `alternative`
// import above makes resolve here.
#[path = "../src/patch/testimage.rs"]
#[allow(dead_code)]
mod testimage;

use testimage::{word_at, ImageBuilder};

/// `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(default),
        // Shrinking a fuzz failure is useful; an endless shrink is not.
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------
// Encoders (by hand, LINUX-FACTS §1.6) for the words the generators place.

fn enc_branch(class: u8, off: i64, reg: u8, misc: u8) -> u32 {
    let imm26 = (off >> 2) as u32 & 0x03ff_ffff;
    let imm19 = ((off >> 2) as u32 & 0x7_ffff) << 5;
    let imm14 = ((off >> 2) as u32 & 0x3fff) << 5;
    let rt = u32::from(reg & 31);
    match class % 7 {
        0 => 0x1400_0000 | imm26,                                    // B
        1 => 0x9400_0000 | imm26,                                    // BL
        2 => 0x5400_0000 | imm19 | u32::from(misc & 15),             // B.cond
        3 => 0x3400_0000 | (u32::from(misc & 1) << 31) | imm19 | rt, // CBZ
        4 => 0x3500_0000 | (u32::from(misc & 1) << 31) | imm19 | rt, // CBNZ
        5 => {
            let bit = u32::from(misc & 63);
            0x3600_0000 | ((bit >> 5) << 31) | ((bit & 31) << 19) | imm14 | rt // TBZ
        }
        _ => {
            let bit = u32::from(misc & 63);
            0x3700_0000 | ((bit >> 5) << 31) | ((bit & 31) << 19) | imm14 | rt // TBNZ
        }
    }
}

fn enc_adrp(rd: u8, pages: i64) -> u32 {
    let imm = pages as u32 & 0x1f_ffff;
    0x9000_0000 | ((imm & 3) << 29) | ((imm >> 2) << 5) | u32::from(rd & 31)
}

/// Whether the patcher would treat `w` as anything but an opaque word.
fn is_special(w: u32) -> bool {
    match insn::decode(w) {
        Some(i) => {
            i.branch_offset().is_some()
                || matches!(i, Insn::Adrp { .. })
                || i.is_unrelocatable_literal()
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------
// Valid images.

/// One replacement word, resolved to an encoding once the layout is known.
#[derive(Debug, Clone)]
enum WordSpec {
    /// An opaque word (neither branch, ADRP nor literal).
    Other(u32),
    /// An immediate branch to `R0 + 4 * (pick % (len + 1))` (internal, the end label
    /// included) or to word `pick` of the image (usually leaving the replacement).
    Branch {
        class: u8,
        internal: bool,
        pick: u32,
        reg: u8,
        misc: u8,
    },
    /// `ADRP` to a page near its own.
    Adrp { rd: u8, pages: i64 },
}

#[derive(Debug, Clone)]
enum KindSpec {
    Plain(Vec<WordSpec>),
    Callback(CallbackId),
}

#[derive(Debug, Clone)]
struct SiteSpec {
    gap_words: usize,
    alt_gap_words: usize,
    len_words: usize,
    cap: u16,
    kind: KindSpec,
}

#[derive(Debug, Clone)]
struct ImageSpec {
    sites: Vec<SiteSpec>,
    /// Permutation of record order.
    order: Vec<usize>,
    exec_base: u64,
    set: u64,
    mask: u64,
}

fn word_spec() -> impl Strategy<Value = WordSpec> {
    prop_oneof![
        4 => any::<u32>().prop_map(|w| WordSpec::Other(if is_special(w) { NOP } else { w })),
        4 => (any::<u8>(), any::<bool>(), any::<u32>(), any::<u8>(), any::<u8>()).prop_map(
            |(class, internal, pick, reg, misc)| WordSpec::Branch { class, internal, pick, reg, misc }
        ),
        1 => (any::<u8>(), -8i64..=8).prop_map(|(rd, pages)| WordSpec::Adrp { rd, pages }),
    ]
}

fn site_spec() -> impl Strategy<Value = SiteSpec> {
    let len = prop_oneof![8 => 1usize..=6, 1 => 1usize..=63];
    (len, 0usize..4, 0usize..4, 0u16..NCAPS as u16, 0u8..6).prop_flat_map(
        |(len, gap_words, alt_gap_words, cap, kind)| {
            let kind = match kind {
                0..=2 => proptest::collection::vec(word_spec(), len)
                    .prop_map(KindSpec::Plain)
                    .boxed(),
                3 => Just(KindSpec::Callback(CallbackId::PatchNops)).boxed(),
                _ => Just(KindSpec::Callback(CallbackId::KernHypVa)).boxed(),
            };
            kind.prop_map(move |kind| {
                // A layout callback needs its exact template size.
                let len_words = match &kind {
                    KindSpec::Callback(id) => id.template_len().unwrap_or(len),
                    KindSpec::Plain(_) => len,
                };
                SiteSpec {
                    gap_words,
                    alt_gap_words,
                    len_words,
                    cap,
                    kind,
                }
            })
        },
    )
}

fn image_spec() -> impl Strategy<Value = ImageSpec> {
    proptest::collection::vec(site_spec(), 0..10).prop_flat_map(|sites| {
        let n = sites.len();
        (
            Just(sites),
            Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            // At least 1 MiB so ADRP pages stay positive; 4-byte aligned.
            ((1u64 << 20)..(1u64 << 47)).prop_map(|b| b & !3),
            any::<u64>(),
            any::<u64>(),
        )
            .prop_map(|(sites, order, exec_base, set, mask)| ImageSpec {
                sites,
                order,
                exec_base,
                set,
                mask,
            })
    })
}

fn capset(bits: u64) -> CapSet {
    Cap::ALL
        .iter()
        .copied()
        .filter(|c| bits >> c.number() & 1 != 0)
        .collect()
}

/// Where a site ended up.
#[derive(Debug, Clone)]
struct Placed {
    orig: usize,
    alt: Option<usize>,
    len: usize,
    cap: u16,
    callback: Option<CallbackId>,
}

struct Built {
    bytes: Vec<u8>,
    table: Range<usize>,
    /// Placed sites, in record (table) order.
    records: Vec<Placed>,
}

fn build(spec: &ImageSpec) -> Built {
    // Originals first, then replacements, then the table.
    let mut cursor = 0x40;
    let mut placed: Vec<Placed> = Vec::new();
    for s in &spec.sites {
        let orig = cursor + 4 * s.gap_words;
        cursor = orig + 4 * s.len_words;
        placed.push(Placed {
            orig,
            alt: None,
            len: s.len_words * 4,
            cap: s.cap,
            callback: match s.kind {
                KindSpec::Callback(id) => Some(id),
                KindSpec::Plain(_) => None,
            },
        });
    }
    for (s, p) in spec.sites.iter().zip(placed.iter_mut()) {
        if let KindSpec::Plain(_) = s.kind {
            let alt = cursor + 4 * s.alt_gap_words;
            cursor = alt + p.len;
            p.alt = Some(alt);
        }
    }
    let table_at = cursor + 8;
    let image_len = table_at + spec.sites.len() * ALT_RECORD_SIZE + 0x20;

    let mut b = ImageBuilder::new(image_len);
    for (s, p) in spec.sites.iter().zip(&placed) {
        let (KindSpec::Plain(words), Some(alt)) = (&s.kind, p.alt) else {
            continue;
        };
        let encoded: Vec<u32> = words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let a = alt + 4 * i;
                match *w {
                    WordSpec::Other(w) => w,
                    WordSpec::Branch {
                        class,
                        internal,
                        pick,
                        reg,
                        misc,
                    } => {
                        let target = if internal {
                            alt + 4 * (pick as usize % (words.len() + 1))
                        } else {
                            4 * (pick as usize % (image_len / 4))
                        };
                        enc_branch(class, target as i64 - a as i64, reg, misc)
                    }
                    WordSpec::Adrp { rd, pages } => enc_adrp(rd, pages),
                }
            })
            .collect();
        b.words(alt, &encoded);
    }
    let records: Vec<Placed> = spec.order.iter().map(|&i| placed[i].clone()).collect();
    for p in &records {
        match (p.callback, p.alt) {
            (Some(id), _) => b.callback(p.orig, p.len as u8, p.cap, id),
            (None, Some(alt)) => b.plain(p.orig, alt, p.len as u8, p.cap),
            (None, None) => unreachable!("plain sites are placed"),
        };
    }
    let img = b.build(table_at);
    Built {
        bytes: img.bytes,
        table: img.table,
        records,
    }
}

/// A deterministic stand-in for the layout callbacks: NOPs for the NOP callback, a mix
/// of the template and the site address otherwise. Supports the ids in `supported`;
/// fails (deterministically) for the ids in `failing`.
struct Fake {
    supported: u8,
    failing: u8,
}

impl Fake {
    const ALL: Fake = Fake {
        supported: 0xff,
        failing: 0,
    };

    fn word(site_addr: u64, i: usize, w: u32) -> u32 {
        w.rotate_left(7) ^ (site_addr as u32) ^ (i as u32).wrapping_mul(0x9e37_79b9)
    }
}

impl CallbackResolver for Fake {
    fn supports(&self, id: CallbackId) -> bool {
        self.supported >> id.raw() & 1 != 0
    }

    fn patch(&self, site: &CallbackSite<'_>, out: &mut [u32]) -> Result<(), CallbackError> {
        if self.failing >> site.id.raw() & 1 != 0 {
            return Err(CallbackError::UnexpectedTemplate {
                index: 0,
                word: site.original.first().copied().unwrap_or(0),
            });
        }
        if site.id == CallbackId::PatchNops {
            out.fill(NOP);
        } else {
            for (i, (o, w)) in out.iter_mut().zip(site.original).enumerate() {
                *o = Fake::word(site.exec_addr, i, *w);
            }
        }
        Ok(())
    }
}

/// Runs a pass on a copy of `bytes`; returns the result, the sites reported and the
/// resulting bytes.
fn run(
    bytes: &[u8],
    exec_base: u64,
    table: Range<usize>,
    set: &CapSet,
    mask: &CapSet,
    r: &dyn CallbackResolver,
) -> (Result<PatchReport, PatchError>, Vec<PatchedSite>, Vec<u8>) {
    let mut out = bytes.to_vec();
    let mut sites = Vec::new();
    let res = apply_alternatives_with(&mut out, exec_base, table, set, mask, r, &mut |s| {
        sites.push(s.clone())
    });
    (res, sites, out)
}

/// A successful pass: its report, the sites it reported, the image afterwards.
type Outcome = (PatchReport, Vec<PatchedSite>, Vec<u8>);

/// What an independent, brute-force reading of the validation rules expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// The table as a whole is unusable.
    Table,
    /// Record `index` is bad on its own (the first such record).
    Record(usize),
    /// Record `index`'s original overlaps that of earlier record `other`.
    OrigOverlap(usize, usize),
    /// Record `index`'s replacement overlaps the original of record `other` (the
    /// lowest-addressed such original).
    AltOverlap(usize, usize),
    /// Every structural rule holds; only relocation or a callback may still refuse.
    Structurally,
}

fn model(
    bytes: &[u8],
    base: u64,
    table: &Range<usize>,
    set: &CapSet,
    mask: &CapSet,
    r: &dyn CallbackResolver,
) -> Verdict {
    let len = bytes.len();
    if table.start > table.end
        || table.end > len
        || u128::from(base) + len as u128 > u128::from(u64::MAX)
        || !(table.end - table.start).is_multiple_of(12)
        || !(base + table.start as u64).is_multiple_of(4)
    {
        return Verdict::Table;
    }
    let n = (table.end - table.start) / 12;
    let field = |at: usize, k: usize| -> i128 {
        let b = &bytes[at + k..at + k + 4];
        i128::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let in_image = |start: i128, l: usize| -> Option<Range<usize>> {
        (start >= 0 && start + l as i128 <= len as i128).then(|| start as usize..start as usize + l)
    };
    let disjoint = |a: &Range<usize>, b: &Range<usize>| a.end <= b.start || b.end <= a.start;
    let aligned = |r: &Range<usize>| (base + r.start as u64).is_multiple_of(4);
    // (orig, Some(alt) for plain records)
    let mut parsed: Vec<(Range<usize>, Option<Range<usize>>)> = Vec::new();
    for i in 0..n {
        let at = table.start + 12 * i;
        let cpucap = u16::from_le_bytes([bytes[at + 8], bytes[at + 9]]);
        let (olen, alen) = (usize::from(bytes[at + 10]), usize::from(bytes[at + 11]));
        let cap = cpucap & 0x7fff;
        let callback = cpucap & 0x8000 != 0;
        let selected = set.has_number(cap) && mask.has_number(cap);
        let orig = in_image(at as i128 + field(at, 0), olen);
        let ok_orig = matches!(&orig, Some(o) if aligned(o) && disjoint(o, table));
        let mut ok = usize::from(cap) < NCAPS && olen != 0 && olen % 4 == 0 && ok_orig;
        let mut alt = None;
        if callback {
            let raw = field(at, 4);
            let id = (0..NCALLBACKS as i128)
                .contains(&raw)
                .then(|| CallbackId::ALL[raw as usize]);
            ok &= alen == 0
                && match id {
                    Some(id) => {
                        id.template_len().is_none_or(|t| t * 4 == olen)
                            && (!selected || r.supports(id))
                    }
                    None => false,
                };
        } else {
            alt = in_image(at as i128 + 4 + field(at, 4), alen);
            ok &= alen == olen && matches!(&alt, Some(a) if aligned(a) && disjoint(a, table));
        }
        if !ok {
            return Verdict::Record(i);
        }
        parsed.push((orig.unwrap_or(0..0), alt));
    }
    for i in 0..n {
        for j in 0..i {
            if !disjoint(&parsed[i].0, &parsed[j].0) {
                return Verdict::OrigOverlap(i, j);
            }
        }
    }
    for i in 0..n {
        if let Some(alt) = &parsed[i].1 {
            let hit = (0..n)
                .filter(|&j| !disjoint(alt, &parsed[j].0))
                .min_by_key(|&j| parsed[j].0.start);
            if let Some(j) = hit {
                return Verdict::AltOverlap(i, j);
            }
        }
    }
    Verdict::Structurally
}

/// The property every pass must have whatever its input: it refuses exactly what the
/// brute-force model refuses (same record, same other record), a refusal writes
/// nothing, a success writes only inside the sites it reports (which lie in the image,
/// in record order), the dry run agrees, and a deterministic resolver never sees
/// `Incomplete`.
fn check_contract(
    bytes: &[u8],
    exec_base: u64,
    table: Range<usize>,
    set: &CapSet,
    mask: &CapSet,
    r: &dyn CallbackResolver,
) -> Result<Option<Outcome>, TestCaseError> {
    let (res, sites, after) = run(bytes, exec_base, table.clone(), set, mask, r);
    let dry = check_alternatives(bytes, exec_base, table.clone(), set, mask, r);
    prop_assert_eq!(&dry, &res);
    let verdict = model(bytes, exec_base, &table, set, mask, r);
    match (verdict, &res) {
        (Verdict::Table, Err(PatchError::Table { .. })) => {}
        (Verdict::Record(i), Err(PatchError::Record { index, reason, .. })) => {
            prop_assert_eq!(i, *index);
            let structural = !matches!(
                reason,
                RecordFault::OrigOverlapsOrig { .. }
                    | RecordFault::AltOverlapsOrig { .. }
                    | RecordFault::Relocation { .. }
                    | RecordFault::Callback { .. }
            );
            prop_assert!(structural, "{:?}", reason);
        }
        (Verdict::OrigOverlap(i, j), Err(PatchError::Record { index, reason, .. })) => {
            prop_assert_eq!(
                (i, RecordFault::OrigOverlapsOrig { other: j }),
                (*index, *reason)
            );
        }
        (Verdict::AltOverlap(i, j), Err(PatchError::Record { index, reason, .. })) => {
            prop_assert_eq!(
                (i, RecordFault::AltOverlapsOrig { other: j }),
                (*index, *reason)
            );
        }
        (Verdict::Structurally, Ok(_)) => {}
        (
            Verdict::Structurally,
            Err(PatchError::Record {
                reason: RecordFault::Relocation { .. } | RecordFault::Callback { .. },
                ..
            }),
        ) => {}
        (v, res) => {
            return Err(TestCaseError::fail(format!(
                "model says {v:?}, patcher says {res:?}"
            )));
        }
    }
    match res {
        Err(e) => {
            prop_assert!(!matches!(e, PatchError::Incomplete { .. }), "{}", e);
            prop_assert!(sites.is_empty());
            prop_assert!(after == bytes, "refused pass wrote: {}", e);
            // Every error renders.
            prop_assert!(!e.to_string().is_empty());
            Ok(None)
        }
        Ok(report) => {
            prop_assert_eq!(report.applied, sites.len());
            let mut counted = [0usize; NCALLBACKS];
            for s in &sites {
                if let Some(id) = s.callback {
                    counted[id.raw() as usize] += 1;
                }
            }
            prop_assert_eq!(counted, report.callbacks);
            for w in sites.windows(2) {
                prop_assert!(w[0].index < w[1].index);
            }
            for s in &sites {
                prop_assert!(s.image_range.end <= bytes.len());
                prop_assert_eq!(
                    s.exec_range.clone(),
                    exec_base + s.image_range.start as u64..exec_base + s.image_range.end as u64
                );
            }
            for (i, (x, y)) in bytes.iter().zip(&after).enumerate() {
                if !sites.iter().any(|s| s.image_range.contains(&i)) {
                    prop_assert_eq!(x, y, "byte {:#x} outside the reported sites changed", i);
                }
            }
            Ok(Some((report, sites, after)))
        }
    }
}

fn page(x: i64) -> i64 {
    x & !0xfff
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn valid_tables_patch_exactly_the_selected_sites(spec in image_spec()) {
        let built = build(&spec);
        let (set, mask) = (capset(spec.set), capset(spec.mask));
        let base = spec.exec_base;
        let outcome = check_contract(&built.bytes, base, built.table.clone(), &set, &mask, &Fake::ALL)?;
        let Some((report, sites, after)) = outcome else {
            return Err(TestCaseError::fail("a valid table was refused"));
        };

        // Deterministic.
        let (again, sites2, after2) = run(&built.bytes, base, built.table.clone(), &set, &mask, &Fake::ALL);
        prop_assert_eq!(again, Ok(report));
        prop_assert_eq!(&sites2, &sites);
        prop_assert!(after2 == after);

        prop_assert_eq!(report.entries, built.records.len());
        let selected: Vec<usize> = built
            .records
            .iter()
            .enumerate()
            .filter(|(_, p)| set.has_number(p.cap) && mask.has_number(p.cap))
            .map(|(i, _)| i)
            .collect();
        prop_assert_eq!(sites.iter().map(|s| s.index).collect::<Vec<_>>(), selected.clone());

        for (index, p) in built.records.iter().enumerate() {
            let n = p.len / 4;
            let before: Vec<u32> = (0..n).map(|i| word_at(&built.bytes, p.orig + 4 * i)).collect();
            let now: Vec<u32> = (0..n).map(|i| word_at(&after, p.orig + 4 * i)).collect();
            if !selected.contains(&index) {
                prop_assert_eq!(now, before, "record {} not selected but written", index);
                continue;
            }
            let to = base as i64 + p.orig as i64;
            match (p.callback, p.alt) {
                (Some(CallbackId::PatchNops), _) => prop_assert!(now.iter().all(|&w| w == NOP)),
                (Some(_), _) => {
                    for i in 0..n {
                        prop_assert_eq!(now[i], Fake::word(to as u64, i, before[i]));
                    }
                }
                (None, Some(alt)) => {
                    let r0 = base as i64 + alt as i64;
                    for (i, &got) in now.iter().enumerate() {
                        let w = word_at(&built.bytes, alt + 4 * i);
                        let (a, pc) = (r0 + 4 * i as i64, to + 4 * i as i64);
                        match insn::decode(w) {
                            Some(insn) if insn.branch_offset().is_some() => {
                                let t = a + insn.branch_offset().unwrap_or(0);
                                if r0 <= t && t <= r0 + p.len as i64 {
                                    prop_assert_eq!(got, w, "internal branch changed");
                                } else {
                                    // Same instruction, reaching the same target from pc.
                                    prop_assert_eq!(insn::decode(got), insn.with_branch_offset(t - pc));
                                    let moved = insn::decode(got).and_then(|m| m.branch_offset());
                                    prop_assert_eq!(moved.map(|o| pc + o), Some(t));
                                }
                            }
                            Some(Insn::Adrp { rd, offset }) => {
                                let target = page(a) + offset;
                                prop_assert_eq!(
                                    insn::decode(got),
                                    Some(Insn::Adrp { rd, offset: target - page(pc) })
                                );
                            }
                            _ => prop_assert_eq!(got, w),
                        }
                    }
                }
                (None, None) => unreachable!(),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Corrupted tables.

#[derive(Debug, Clone)]
enum Corruption {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        value: u8,
    },
    /// Shorten the table range.
    Truncate {
        by: usize,
    },
    /// Move the table start forward.
    ShiftStart {
        by: usize,
    },
    /// Overwrite a record's cap field with a small cap (so more records get selected).
    SetCap {
        record: usize,
        cap: u16,
    },
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        6 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Corruption::FlipBit { at, bit }),
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, value)| Corruption::SetByte { at, value }),
        // Whole records dropped (still a valid shape) or a partial record.
        1 => prop_oneof![Just(12usize), Just(24), 1usize..=23].prop_map(|by| Corruption::Truncate { by }),
        1 => prop_oneof![Just(12usize), 1usize..=3].prop_map(|by| Corruption::ShiftStart { by }),
        3 => (any::<usize>(), 0u16..(NCAPS as u16 + 2)).prop_map(|(record, cap)| Corruption::SetCap { record, cap }),
    ]
}

proptest! {
    #![proptest_config(config(2048))]

    #[test]
    fn corrupted_tables_patch_or_are_refused_untouched(
        spec in image_spec(),
        corruptions in proptest::collection::vec(corruption(), 1..4),
        resolver_bits in any::<(u8, u8)>(),
    ) {
        let built = build(&spec);
        let mut bytes = built.bytes.clone();
        let mut table = built.table.clone();
        for c in &corruptions {
            let len = table.end.saturating_sub(table.start);
            match *c {
                Corruption::FlipBit { at, bit } if len > 0 => bytes[table.start + at % len] ^= 1 << bit,
                Corruption::SetByte { at, value } if len > 0 => bytes[table.start + at % len] = value,
                Corruption::Truncate { by } => table.end = table.end.saturating_sub(by),
                Corruption::ShiftStart { by } => table.start += by,
                Corruption::SetCap { record, cap } if len >= ALT_RECORD_SIZE => {
                    let at = table.start + (record % (len / ALT_RECORD_SIZE)) * ALT_RECORD_SIZE + 8;
                    let cb = u16::from_le_bytes([bytes[at], bytes[at + 1]]) & CB_BIT;
                    bytes[at..at + 2].copy_from_slice(&(cap | cb).to_le_bytes());
                }
                _ => {}
            }
        }
        let resolver = Fake { supported: resolver_bits.0, failing: resolver_bits.1 & 0x3e };
        let (set, mask) = (capset(spec.set), capset(spec.mask));
        let (all, base) = (CapSet::all(), spec.exec_base);
        check_contract(&bytes, base, table.clone(), &set, &mask, &resolver)?;
        check_contract(&bytes, base, table.clone(), &all, &all, &Fake::ALL)?;
        check_contract(&bytes, base, table, &all, &all, &BootPassCallbacks)?;
    }
}

// ---------------------------------------------------------------------------------------
// Fuzz: arbitrary input.

fn table_range(len: usize) -> impl Strategy<Value = Range<usize>> {
    let edge = prop_oneof![
        8 => 0..=len + 16,
        1 => Just(usize::MAX),
        1 => any::<usize>(),
    ];
    // Mostly well-shaped (aligned, whole records, inside the image) so the records get
    // looked at; sometimes anything at all.
    let shaped = (0..=len / 4, 0..=len / ALT_RECORD_SIZE).prop_map(move |(s, n)| {
        let start = 4 * s;
        start..start + ALT_RECORD_SIZE * n.min((len - start) / ALT_RECORD_SIZE)
    });
    prop_oneof![
        3 => shaped,
        1 => (edge.clone(), edge).prop_map(|(a, b)| a..b),
    ]
}

fn exec_base() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => any::<u64>().prop_map(|b| b & !3),
        1 => any::<u64>(),
        1 => (0u64..0x2000).prop_map(|b| u64::MAX - b),
        1 => 0u64..0x2000,
    ]
}

/// Bytes whose table area holds plausible records: small offsets, small caps, lengths
/// that are mostly multiples of 4, callback bits and small ids. Reaches far deeper into
/// validation than uniform bytes.
fn plausible_image() -> impl Strategy<Value = (Vec<u8>, Range<usize>)> {
    // Positions relative to the table start: sometimes anywhere (4-aligned or not),
    // often on a coarse 16-byte grid close below the table, where sites touch and
    // overlap a lot.
    let pos = prop_oneof![
        1 => -0x600i32..0x10,
        2 => (-0x20i32..0).prop_map(|x| x * 16),
    ];
    // Each field is usually valid, so that whole tables often pass round 2 and the
    // overlap, relocation and callback rounds get exercised too.
    let record = (
        pos.clone(),
        pos,
        prop_oneof![12 => 0u16..NCAPS as u16, 1 => 0u16..0x8000],
        any::<bool>(),
        prop_oneof![12 => (1u8..12).prop_map(|w| w * 4), 1 => any::<u8>()],
        prop_oneof![12 => Just(None), 1 => any::<u8>().prop_map(Some)],
        prop_oneof![12 => 0i32..NCALLBACKS as i32, 1 => any::<i32>()],
        any::<bool>(),
    );
    (
        proptest::collection::vec(any::<u32>(), 0x180..0x200),
        proptest::collection::vec(record, 0..8),
        // Sorted by original address, like a linked table (the patcher's fast path).
        any::<bool>(),
    )
        .prop_map(|(code, mut records, sorted)| {
            if sorted {
                records.sort_by_key(|r| r.0 & !3);
            }
            let mut bytes: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
            let start = bytes.len();
            for (i, (orig, alt, cap, cb, len, alt_len, id, fit)) in records.into_iter().enumerate()
            {
                let at = start + i * ALT_RECORD_SIZE;
                // Usually give a layout callback the template size it needs.
                let len = match CallbackId::from_raw(id as u32).and_then(|c| c.template_len()) {
                    Some(n) if cb && fit => 4 * n as u8,
                    _ => len,
                };
                let rec = alternative::AltRecord {
                    orig_offset: (orig & !3) - at as i32 + start as i32,
                    alt_offset: if cb {
                        id
                    } else {
                        (alt & !3) - at as i32 + start as i32
                    },
                    cpucap: cap | if cb { CB_BIT } else { 0 },
                    orig_len: len,
                    alt_len: alt_len.unwrap_or(if cb { 0 } else { len }),
                };
                bytes.extend_from_slice(&rec.to_bytes());
            }
            let end = bytes.len();
            bytes.extend_from_slice(&[0; 16]);
            (bytes, start..end)
        })
}

/// Tables of otherwise valid plain and callback records packed onto a small grid, sorted
/// or not: sites touch, overlap each other and overlap replacements often, which is
/// where the patcher's two overlap algorithms (sorted fast path, general path) must
/// agree with the model.
fn packed_image() -> impl Strategy<Value = (Vec<u8>, Range<usize>)> {
    let record = (
        0usize..24,
        0usize..24,
        prop_oneof![Just(4u8), Just(8), Just(16), Just(32)],
        prop_oneof![4 => Just(false), 1 => Just(true)],
    );
    (proptest::collection::vec(record, 1..6), any::<bool>()).prop_map(|(mut recs, sorted)| {
        if sorted {
            recs.sort_by_key(|r| r.0);
        }
        let mut b = ImageBuilder::new(0x200);
        for (orig, alt, len, cb) in recs {
            if cb {
                b.callback(16 * orig, len, 0, CallbackId::PatchNops);
            } else {
                b.plain(16 * orig, 16 * alt, len, 0);
            }
        }
        let img = b.build(0x1c0);
        (img.bytes, img.table)
    })
}

proptest! {
    #![proptest_config(config(8192))]

    #[test]
    fn fuzz_arbitrary_bytes_never_panic(
        (bytes, table) in proptest::collection::vec(any::<u8>(), 0..512)
            .prop_flat_map(|b| { let n = b.len(); (Just(b), table_range(n)) }),
        base in exec_base(),
        set in any::<u64>(),
        mask in any::<u64>(),
        resolver_bits in any::<(u8, u8)>(),
    ) {
        let resolver = Fake { supported: resolver_bits.0, failing: resolver_bits.1 };
        check_contract(&bytes, base, table, &capset(set), &capset(mask), &resolver)?;
    }

    #[test]
    fn packed_tables_match_the_model((bytes, table) in packed_image(), page in 0u64..4) {
        let all = CapSet::all();
        check_contract(&bytes, 0x4000_0000 + 0x1000 * page, table, &all, &all, &Fake::ALL)?;
    }

    #[test]
    fn fuzz_plausible_records_never_panic(
        (bytes, table) in plausible_image(),
        base in exec_base(),
        set in any::<u64>(),
        mask in any::<u64>(),
        resolver_bits in any::<(u8, u8)>(),
    ) {
        let resolver = Fake { supported: resolver_bits.0, failing: resolver_bits.1 };
        check_contract(&bytes, base, table.clone(), &capset(set), &capset(mask), &resolver)?;
        check_contract(&bytes, base, table, &CapSet::all(), &CapSet::all(), &Fake::ALL)?;
    }
}

/// Plain sanity check that the harness itself can see a patch happen (so the properties
/// above are not vacuous).
#[test]
fn harness_sees_a_patch() {
    let mut b = ImageBuilder::new(0x200);
    b.words(0x100, &[0x1400_0010])
        .plain(0x40, 0x100, 4, Cap::HasSb.number());
    let img = b.build(0x180);
    let mut bytes = img.bytes.clone();
    let r = apply_alternatives(
        &mut bytes,
        0x1000,
        img.table.clone(),
        &CapSet::of(&[Cap::HasSb]),
        &CapSet::all(),
        &BootPassCallbacks,
    )
    .expect("valid");
    assert_eq!(r.applied, 1);
    // B +0x40 from 0x100 targets 0x140; from 0x40 that is +0x100.
    assert_eq!(word_at(&bytes, 0x40), 0x1400_0040);
}
