//! Hand-built images, one per behaviour of the patcher. Expected instruction words are
//! encoded here by hand (LINUX-FACTS §1.6), independently of `crate::insn`.

use super::testimage::{filler, AltField, ImageBuilder, RecordSpec, TestImage};
use super::*;
use crate::alternative::CB_BIT;
use crate::callbacks::BootPassCallbacks;
use crate::cpucaps::NCAPS;
use crate::insn::NOP;
use std::cell::{Cell, RefCell};
use std::vec::Vec;

const BASE: u64 = 0x4008_0000;
const SB: u16 = Cap::HasSb.number();
const RNG: u16 = Cap::HasRng.number();

// Hand encoders; `off` in bytes.
fn b(off: i64) -> u32 {
    0x1400_0000 | ((off >> 2) as u32 & 0x03ff_ffff)
}
fn bl(off: i64) -> u32 {
    0x9400_0000 | ((off >> 2) as u32 & 0x03ff_ffff)
}
fn bcond(cond: u32, off: i64) -> u32 {
    0x5400_0000 | (((off >> 2) as u32 & 0x7_ffff) << 5) | cond
}
fn cbz_x(rt: u32, off: i64) -> u32 {
    0xb400_0000 | (((off >> 2) as u32 & 0x7_ffff) << 5) | rt
}
fn cbnz_w(rt: u32, off: i64) -> u32 {
    0x3500_0000 | (((off >> 2) as u32 & 0x7_ffff) << 5) | rt
}
fn tbz(rt: u32, bit: u32, off: i64) -> u32 {
    0x3600_0000 | ((bit >> 5) << 31) | ((bit & 31) << 19) | (((off >> 2) as u32 & 0x3fff) << 5) | rt
}
fn tbnz(rt: u32, bit: u32, off: i64) -> u32 {
    tbz(rt, bit, off) | 0x0100_0000
}
fn adr_like(base: u32, rd: u32, imm: i64) -> u32 {
    let imm = imm as u32 & 0x1f_ffff;
    base | ((imm & 3) << 29) | ((imm >> 2) << 5) | rd
}
fn adrp(rd: u32, pages: i64) -> u32 {
    adr_like(0x9000_0000, rd, pages)
}
fn adr(rd: u32, off: i64) -> u32 {
    adr_like(0x1000_0000, rd, off)
}
fn lit(base: u32, rt: u32, off: i64) -> u32 {
    base | (((off >> 2) as u32 & 0x7_ffff) << 5) | rt
}
fn movz(rd: u32, imm: u32) -> u32 {
    0xd280_0000 | (imm << 5) | rd
}

fn caps(c: &[Cap]) -> CapSet {
    CapSet::of(c)
}

fn run(
    img: &mut TestImage,
    set: CapSet,
    mask: CapSet,
    r: &dyn CallbackResolver,
) -> Result<PatchReport, PatchError> {
    let table = img.table.clone();
    apply_alternatives(&mut img.bytes, BASE, table, &set, &mask, r)
}

/// Applies with `set` = `mask` = {HasSb} unless told otherwise and expects success.
fn apply_ok(img: &mut TestImage) -> PatchReport {
    run(img, caps(&[Cap::HasSb]), CapSet::all(), &BootPassCallbacks).expect("pass should succeed")
}

/// Expects the pass to fail and the image to be unchanged; returns the error.
fn apply_err_with(
    img: &TestImage,
    base: u64,
    set: CapSet,
    mask: CapSet,
    r: &dyn CallbackResolver,
) -> PatchError {
    let mut bytes = img.bytes.clone();
    let err = apply_alternatives(&mut bytes, base, img.table.clone(), &set, &mask, r)
        .expect_err("pass should be refused");
    assert_eq!(bytes, img.bytes, "a refused pass must not write ({err})");
    // The dry run agrees.
    assert_eq!(
        check_alternatives(&img.bytes, base, img.table.clone(), &set, &mask, r),
        Err(err)
    );
    err
}

fn apply_err(img: &TestImage) -> PatchError {
    apply_err_with(
        img,
        BASE,
        caps(&[Cap::HasSb]),
        CapSet::all(),
        &BootPassCallbacks,
    )
}

fn record_fault(err: PatchError) -> (usize, usize, RecordFault) {
    match err {
        PatchError::Record {
            index,
            offset,
            reason,
        } => (index, offset, reason),
        other => panic!("expected a record error, got {other:?}"),
    }
}

/// Asserts that only the bytes in `changed` differ between `before` and `after`.
fn assert_only_changed(before: &[u8], after: &[u8], changed: Range<usize>) {
    assert_eq!(before.len(), after.len());
    for (i, (x, y)) in before.iter().zip(after).enumerate() {
        if !changed.contains(&i) {
            assert_eq!(x, y, "byte {i:#x} changed outside the patched sites");
        }
    }
}

#[test]
fn patch_plain_replacement_is_copied() {
    let repl = [movz(1, 7), movz(2, 9), 0xd503_3f9f /* dsb sy */];
    let mut builder = ImageBuilder::new(0x1000);
    builder.words(0x800, &repl).plain(0x100, 0x800, 12, SB);
    let mut img = builder.build(0xf00);
    let before = img.bytes.clone();

    let mut sites = Vec::new();
    let table = img.table.clone();
    let report = apply_alternatives_with(
        &mut img.bytes,
        BASE,
        table,
        &caps(&[Cap::HasSb]),
        &CapSet::all(),
        &BootPassCallbacks,
        &mut |s| sites.push(s.clone()),
    )
    .unwrap();

    assert_eq!(img.words(0x100, 3), repl);
    assert_only_changed(&before, &img.bytes, 0x100..0x10c);
    assert_eq!(
        report,
        PatchReport {
            entries: 1,
            applied: 1,
            callbacks: [0; NCALLBACKS]
        }
    );
    assert_eq!(
        sites,
        [PatchedSite {
            index: 0,
            record_offset: 0xf00,
            image_range: 0x100..0x10c,
            exec_range: BASE + 0x100..BASE + 0x10c,
            callback: None,
        }]
    );
}

#[test]
fn patch_internal_branches_are_copied_verbatim() {
    // R0 = 0x800, 4 words, end label = R0 + 16.
    let repl = [
        b(8),           // -> R0 + 8
        cbz_x(3, 12),   // R0+4 -> R0 + 16, the end label exactly
        bcond(1, -8),   // R0+8 -> R0
        tbnz(0, 40, 4), // R0+12 -> R0 + 16, the end label
    ];
    let mut builder = ImageBuilder::new(0x1000);
    builder.words(0x800, &repl).plain(0x100, 0x800, 16, SB);
    let mut img = builder.build(0xf00);
    apply_ok(&mut img);
    assert_eq!(img.words(0x100, 4), repl);
}

#[test]
fn patch_leaving_branches_are_retargeted() {
    // O0 = 0x100, R0 = 0x900 (0x800 bytes later). Each branch leaves the replacement, so
    // its new offset is target - site = old offset + (R0 - O0) = old + 0x800.
    let (o0, r0) = (0x100usize, 0x900usize);
    let delta = (r0 - o0) as i64;
    let targets: [i64; 7] = [0x40, 0xc00, 0x20, 0x0, 0x900 + 28 + 4, 0x8fc, 0x104];
    // Word i sits at R0 + 4i; offsets chosen so each target is absolute `targets[i]`.
    let off = |i: usize| targets[i] - (r0 + 4 * i) as i64;
    let repl = [
        b(off(0)),
        bl(off(1)),
        bcond(0xb, off(2)),
        cbz_x(5, off(3)),
        cbnz_w(6, off(4)),   // one word past the end label: outside
        tbz(7, 3, off(5)),   // one word before R0: outside
        tbnz(8, 63, off(6)), // inside the *original* range: still outside the replacement
    ];
    let mut builder = ImageBuilder::new(0x1000);
    builder.words(r0, &repl).plain(o0, r0, 28, SB);
    let mut img = builder.build(0xf00);
    apply_ok(&mut img);
    let expected = [
        b(off(0) + delta),
        bl(off(1) + delta),
        bcond(0xb, off(2) + delta),
        cbz_x(5, off(3) + delta),
        cbnz_w(6, off(4) + delta),
        tbz(7, 3, off(5) + delta),
        tbnz(8, 63, off(6) + delta),
    ];
    assert_eq!(img.words(o0, 7), expected);
    // And each one now reaches its original absolute target from its new address.
    for (i, &t) in targets.iter().enumerate() {
        assert_eq!((o0 + 4 * i) as i64 + off(i) + delta, t);
    }
}

#[test]
fn patch_branch_backwards_retargeted() {
    // Replacement before the original: offsets shrink.
    let mut builder = ImageBuilder::new(0x2000);
    builder
        .words(0x100, &[b(-0x100)])
        .plain(0x1800, 0x100, 4, SB);
    let mut img = builder.build(0x1f00);
    apply_ok(&mut img);
    assert_eq!(img.word(0x1800), b(-0x1800));
}

#[test]
fn patch_tbz_out_of_range_is_refused() {
    // The site is 36 KiB below the replacement; TBZ reaches ±32 KiB.
    let (o0, r0) = (0x100usize, 0x9100usize);
    let word = tbz(1, 2, 0x40); // R0 -> R0 + 0x40, outside the 8-byte replacement
    let mut builder = ImageBuilder::new(0xa000);
    builder.words(r0, &[movz(0, 0), word]).plain(o0, r0, 8, SB);
    let img = builder.build(0x9f00);
    let (index, offset, reason) = record_fault(apply_err(&img));
    assert_eq!((index, offset), (0, 0x9f00));
    match reason {
        RecordFault::Relocation {
            word_index: 1,
            word: w,
            reason:
                RelocError::BranchOutOfRange {
                    target,
                    site,
                    error: Some(crate::insn::InsnError::OffsetOutOfRange { .. }),
                },
        } => {
            assert_eq!(w, word);
            assert_eq!(target, BASE + r0 as u64 + 4 + 0x40);
            assert_eq!(site, BASE + o0 as u64 + 4);
        }
        other => panic!("unexpected {other:?}"),
    }
    // The same TBZ 16 KiB away is fine.
    let mut builder = ImageBuilder::new(0xa000);
    builder.words(0x4100, &[word]).plain(o0, 0x4100, 4, SB);
    let mut img = builder.build(0x9f00);
    apply_ok(&mut img);
    assert_eq!(img.word(o0), tbz(1, 2, 0x40 + 0x4000));
}

#[test]
fn patch_bcond_out_of_range_is_refused() {
    // ±1 MiB for B.cond: replacement 1 MiB + 4 KiB above the site.
    let (o0, r0) = (0x100usize, 0x10_1100usize);
    let mut builder = ImageBuilder::new(0x10_2000);
    builder.words(r0, &[bcond(0, 0x10)]).plain(o0, r0, 4, SB);
    let img = builder.build(0x10_1f00);
    let (_, _, reason) = record_fault(apply_err(&img));
    assert!(
        matches!(
            reason,
            RecordFault::Relocation {
                word_index: 0,
                reason: RelocError::BranchOutOfRange { .. },
                ..
            }
        ),
        "{reason:?}"
    );
}

#[test]
fn patch_adrp_is_retargeted_page_relatively() {
    // Site on page 0 of the image, replacement on page 3; ADRP points two pages above
    // the replacement's page, i.e. at page 5. From page 0 that is +5 pages.
    let mut builder = ImageBuilder::new(0x4000);
    builder
        .words(0x3010, &[adrp(1, 2), 0x9100_0421 /* add x1, x1, #1 */])
        .plain(0x0ff8, 0x3010, 8, SB);
    let mut img = builder.build(0x3f00);
    apply_ok(&mut img);
    assert_eq!(img.words(0x0ff8, 2), [adrp(1, 5), 0x9100_0421]);

    // Same image executing at a base that is not page aligned: pages are taken from
    // execution addresses. The site 0x4000_17f8 is on page 0x4000_1000, the replacement
    // 0x4000_3810 on page 0x4000_3000, so the target is page 0x4000_5000: +4 pages from
    // the site (image offsets alone would say +5).
    const BASE2: u64 = 0x4000_0800;
    let mut img = builder.build(0x3f00);
    let table = img.table.clone();
    apply_alternatives(
        &mut img.bytes,
        BASE2,
        table,
        &caps(&[Cap::HasSb]),
        &CapSet::all(),
        &BootPassCallbacks,
    )
    .unwrap();
    assert_eq!(img.word(0x0ff8), adrp(1, 4));
}

#[test]
fn patch_adrp_out_of_range_is_refused() {
    // ADRP already at its maximum reach (+0xfffff pages); moving it one page back breaks it.
    let mut builder = ImageBuilder::new(0x3000);
    builder
        .words(0x2000, &[adrp(0, 0xf_ffff)])
        .plain(0x1000, 0x2000, 4, SB);
    let img = builder.build(0x2f00);
    let (_, _, reason) = record_fault(apply_err(&img));
    assert!(
        matches!(
            reason,
            RecordFault::Relocation {
                reason: RelocError::AdrpOutOfRange { .. },
                ..
            }
        ),
        "{reason:?}"
    );
}

#[test]
fn patch_adr_and_literal_loads_are_refused() {
    let bad = [
        adr(0, 0x10),
        lit(0x5800_0000, 1, 0x20),  // LDR X1, literal
        lit(0x1800_0000, 2, 0x20),  // LDR W2, literal
        lit(0x9800_0000, 3, -0x20), // LDRSW X3, literal
        lit(0xd800_0000, 0, 0x40),  // PRFM, literal
        lit(0x1c00_0000, 4, 0x8),   // LDR S4, literal
    ];
    for word in bad {
        let mut builder = ImageBuilder::new(0x1000);
        builder
            .words(0x800, &[movz(0, 1), word])
            .plain(0x100, 0x800, 8, SB);
        let img = builder.build(0xf00);
        let (_, _, reason) = record_fault(apply_err(&img));
        assert_eq!(
            reason,
            RecordFault::Relocation {
                word_index: 1,
                word,
                reason: RelocError::Literal
            },
            "{word:#010x}"
        );
        // Not selected in this pass: nothing is computed, nothing refused.
        let mut img = img.clone();
        let before = img.bytes.clone();
        let r = run(&mut img, CapSet::EMPTY, CapSet::all(), &BootPassCallbacks).unwrap();
        assert_eq!(r.applied, 0);
        assert_eq!(img.bytes, before);
    }
}

#[test]
fn patch_selection_needs_cap_in_set_and_in_mask() {
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .words(0x800, &[movz(1, 1)])
        .words(0x804, &[movz(2, 2)])
        .plain(0x100, 0x800, 4, SB)
        .plain(0x200, 0x804, 4, RNG);
    let img = builder.build(0xf00);
    let cases = [
        // (set, mask, sb applied, rng applied)
        (caps(&[Cap::HasSb]), CapSet::all(), true, false),
        (
            caps(&[Cap::HasSb, Cap::HasRng]),
            caps(&[Cap::HasRng]),
            false,
            true,
        ),
        (caps(&[Cap::HasRng]), caps(&[Cap::HasSb]), false, false),
        (CapSet::all(), CapSet::all(), true, true),
        (CapSet::all(), CapSet::EMPTY, false, false),
    ];
    for (set, mask, sb, rng) in cases {
        let mut img = img.clone();
        let r = run(&mut img, set, mask, &BootPassCallbacks).unwrap();
        assert_eq!(r.entries, 2);
        assert_eq!(r.applied, usize::from(sb) + usize::from(rng));
        assert_eq!(img.word(0x100), if sb { movz(1, 1) } else { filler(0x100) });
        assert_eq!(
            img.word(0x200),
            if rng { movz(2, 2) } else { filler(0x200) }
        );
    }
}

#[test]
fn patch_nops_callback_writes_nops() {
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .words(0x100, &[b(0x40), movz(0, 0), movz(1, 1)])
        .callback(0x100, 12, SB, CallbackId::PatchNops);
    let mut img = builder.build(0xf00);
    let before = img.bytes.clone();
    let r = apply_ok(&mut img);
    assert_eq!(img.words(0x100, 3), [NOP; 3]);
    assert_only_changed(&before, &img.bytes, 0x100..0x10c);
    assert_eq!(r.callbacks[CallbackId::PatchNops as usize], 1);
    assert_eq!(r.applied, 1);
    assert_eq!(r.callback_total(), 1);
}

/// What [`Fake`] was shown: cap, id, address, template.
type Seen = (Cap, CallbackId, u64, Vec<u32>);

/// A resolver that records what it is shown and writes words derived from the site.
struct Fake {
    ids: &'static [CallbackId],
    seen: RefCell<Vec<Seen>>,
    /// Leave word 1 alone (to show defaults survive).
    skip_word_1: bool,
}

impl CallbackResolver for Fake {
    fn supports(&self, id: CallbackId) -> bool {
        self.ids.contains(&id)
    }
    fn patch(&self, site: &CallbackSite<'_>, out: &mut [u32]) -> Result<(), CallbackError> {
        self.seen
            .borrow_mut()
            .push((site.cap, site.id, site.exec_addr, site.original.to_vec()));
        assert_eq!(out, site.original, "out starts as a copy of the template");
        for (i, w) in out.iter_mut().enumerate() {
            if !(self.skip_word_1 && i == 1) {
                *w = movz(i as u32, (site.exec_addr as u32 >> 2) & 0xffff);
            }
        }
        Ok(())
    }
}

#[test]
fn patch_fake_callback_sees_site_and_writes() {
    let template = [movz(3, 0), movz(3, 1), movz(3, 2), movz(3, 3)];
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .words(0x200, &template)
        .callback(0x200, 16, SB, CallbackId::KimageVoffset)
        .callback(0x300, 4, RNG, CallbackId::BhbLoopIter); // not selected
    let mut img = builder.build(0xf00);
    let fake = Fake {
        ids: &[CallbackId::KimageVoffset],
        seen: RefCell::new(Vec::new()),
        skip_word_1: true,
    };
    let r = run(&mut img, caps(&[Cap::HasSb]), CapSet::all(), &fake).unwrap();
    let addr = BASE + 0x200;
    let v = (addr as u32 >> 2) & 0xffff;
    assert_eq!(
        img.words(0x200, 4),
        [movz(0, v), movz(3, 1), movz(2, v), movz(3, v)]
    );
    assert_eq!(img.word(0x300), filler(0x300));
    let seen = fake.seen.borrow();
    // Once to validate, once to write, with the same site.
    assert_eq!(seen.len(), 2);
    for s in seen.iter() {
        assert_eq!(
            *s,
            (
                Cap::HasSb,
                CallbackId::KimageVoffset,
                addr,
                template.to_vec()
            )
        );
    }
    assert_eq!(r.callbacks[CallbackId::KimageVoffset as usize], 1);
    assert_eq!(r.callback_total(), 1);
}

#[test]
fn patch_unsupported_callback_is_refused_only_when_selected() {
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .words(0x800, &[movz(1, 1)])
        .plain(0x80, 0x800, 4, SB)
        .callback(0x100, 20, SB, CallbackId::KernHypVa);
    let img = builder.build(0xf00);
    let (index, offset, reason) = record_fault(apply_err(&img));
    assert_eq!((index, offset), (1, img.record_offset(1)));
    assert_eq!(
        reason,
        RecordFault::UnsupportedCallback {
            id: CallbackId::KernHypVa
        }
    );
    // HasSb not in this pass's mask: the NOP-only resolver is enough.
    let mut img2 = img.clone();
    let r = run(
        &mut img2,
        caps(&[Cap::HasSb]),
        caps(&[Cap::HasRng]),
        &BootPassCallbacks,
    )
    .unwrap();
    assert_eq!(r.applied, 0);
    assert_eq!(img2, img);
}

#[test]
fn patch_unknown_callback_id_is_refused() {
    for raw in [99, -1, NCALLBACKS as i32] {
        let mut builder = ImageBuilder::new(0x1000);
        builder.record(RecordSpec {
            orig: 0x100,
            alt: AltField::Raw(raw),
            cpucap: RNG | CB_BIT,
            orig_len: 4,
            alt_len: 0,
        });
        let img = builder.build(0xf00);
        // Refused even though the record is not selected: the table is bad.
        let err = apply_err_with(&img, BASE, CapSet::EMPTY, CapSet::all(), &BootPassCallbacks);
        assert_eq!(record_fault(err).2, RecordFault::UnknownCallback { raw });
    }
}

#[test]
fn patch_callback_template_size_is_checked() {
    let cases = [
        (CallbackId::KernHypVa, 4usize, 5usize),
        (CallbackId::KimageVoffset, 5, 4),
        (CallbackId::FinalCtrEl0, 1, 4),
        (CallbackId::HypVectorBranch, 3, 4),
        (CallbackId::BhbLoopIter, 2, 1),
    ];
    for (id, found, expected) in cases {
        let mut builder = ImageBuilder::new(0x1000);
        builder.callback(0x100, (found * 4) as u8, RNG, id);
        let img = builder.build(0xf00);
        let err = apply_err_with(&img, BASE, CapSet::EMPTY, CapSet::EMPTY, &BootPassCallbacks);
        assert_eq!(
            record_fault(err).2,
            RecordFault::TemplateLength {
                id,
                expected,
                found
            }
        );
    }
}

#[test]
fn patch_callback_with_alt_len_is_refused() {
    let mut builder = ImageBuilder::new(0x1000);
    builder.record(RecordSpec {
        orig: 0x100,
        alt: AltField::Raw(0),
        cpucap: SB | CB_BIT,
        orig_len: 4,
        alt_len: 4,
    });
    let img = builder.build(0xf00);
    assert_eq!(
        record_fault(apply_err(&img)).2,
        RecordFault::CallbackAltLen { alt_len: 4 }
    );
}

#[test]
fn patch_callback_error_is_a_validation_error() {
    struct Refuses;
    impl CallbackResolver for Refuses {
        fn supports(&self, _: CallbackId) -> bool {
            true
        }
        fn patch(&self, site: &CallbackSite<'_>, _: &mut [u32]) -> Result<(), CallbackError> {
            Err(CallbackError::UnexpectedTemplate {
                index: 0,
                word: site.original[0],
            })
        }
    }
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .words(0x800, &[movz(1, 1)])
        .plain(0x80, 0x800, 4, SB) // valid and earlier: must not be written either
        .callback(0x100, 4, SB, CallbackId::BhbLoopIter);
    let img = builder.build(0xf00);
    let err = apply_err_with(&img, BASE, caps(&[Cap::HasSb]), CapSet::all(), &Refuses);
    assert_eq!(
        record_fault(err),
        (
            1,
            0xf0c,
            RecordFault::Callback {
                id: CallbackId::BhbLoopIter,
                error: CallbackError::UnexpectedTemplate {
                    index: 0,
                    word: filler(0x100)
                }
            }
        )
    );
}

#[test]
fn patch_resolver_failing_only_when_writing_reports_incomplete() {
    struct Flaky(Cell<u32>);
    impl CallbackResolver for Flaky {
        fn supports(&self, _: CallbackId) -> bool {
            true
        }
        fn patch(&self, _: &CallbackSite<'_>, out: &mut [u32]) -> Result<(), CallbackError> {
            self.0.set(self.0.get() + 1);
            // Calls: validate record 0, validate record 1, write record 0, write record 1.
            if self.0.get() == 4 {
                return Err(CallbackError::Unsupported(CallbackId::PatchNops));
            }
            out.fill(NOP);
            Ok(())
        }
    }
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .callback(0x100, 4, SB, CallbackId::PatchNops)
        .callback(0x200, 4, SB, CallbackId::PatchNops);
    let mut img = builder.build(0xf00);
    let err = run(
        &mut img,
        caps(&[Cap::HasSb]),
        CapSet::all(),
        &Flaky(Cell::new(0)),
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            PatchError::Incomplete {
                index: 1,
                offset: 0xf0c,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(img.word(0x100), NOP);
    assert_eq!(img.word(0x200), filler(0x200));
}

#[test]
fn patch_cap_out_of_range_is_refused() {
    for cpucap in [NCAPS as u16, 0x7fff, NCAPS as u16 | CB_BIT] {
        let mut builder = ImageBuilder::new(0x1000);
        builder.record(RecordSpec {
            orig: 0x100,
            alt: if cpucap & CB_BIT != 0 {
                AltField::Raw(0)
            } else {
                AltField::At(0x800)
            },
            cpucap,
            orig_len: 4,
            alt_len: if cpucap & CB_BIT != 0 { 0 } else { 4 },
        });
        let img = builder.build(0xf00);
        let err = apply_err_with(&img, BASE, CapSet::all(), CapSet::all(), &BootPassCallbacks);
        assert_eq!(
            record_fault(err).2,
            RecordFault::CapOutOfRange {
                cap: cpucap & !CB_BIT
            }
        );
    }
}

#[test]
fn patch_offsets_outside_the_image_are_refused() {
    // Original past the end; replacement past the end; original before the start.
    let cases: [(usize, usize, u8); 3] = [(0xffc, 0x800, 8), (0x100, 0xffc, 8), (0x100, 0x800, 4)];
    for (i, (orig, alt, len)) in cases.into_iter().enumerate() {
        let mut builder = ImageBuilder::new(0x1000);
        builder.plain(orig, alt, len, SB);
        let mut img = builder.build(0xf00);
        if i == 2 {
            // orig_offset = -0x1000 from the record at 0xf00: image offset -0x100.
            img.bytes[0xf00..0xf04].copy_from_slice(&(-0x1000i32).to_le_bytes());
        }
        let reason = record_fault(apply_err(&img)).2;
        match i {
            0 => assert_eq!(
                reason,
                RecordFault::OrigOutOfImage {
                    start: 0xffc,
                    len: 8
                }
            ),
            1 => assert_eq!(
                reason,
                RecordFault::AltOutOfImage {
                    start: 0xffc,
                    len: 8
                }
            ),
            _ => assert_eq!(
                reason,
                RecordFault::OrigOutOfImage {
                    start: -0x100,
                    len: 4
                }
            ),
        }
    }
    // Extreme offsets do not overflow anything.
    let mut builder = ImageBuilder::new(0x1000);
    builder.plain(0x100, 0x800, 4, SB);
    let mut img = builder.build(0xf00);
    img.bytes[0xf00..0xf04].copy_from_slice(&i32::MAX.to_le_bytes());
    img.bytes[0xf04..0xf08].copy_from_slice(&i32::MIN.to_le_bytes());
    assert!(matches!(
        record_fault(apply_err(&img)).2,
        RecordFault::OrigOutOfImage { .. }
    ));
}

#[test]
fn patch_bad_table_ranges_are_refused() {
    let mut builder = ImageBuilder::new(0x1000);
    builder.plain(0x100, 0x800, 4, SB);
    let img = builder.build(0xf00);
    let with_table = |table: Range<usize>| TestImage {
        bytes: img.bytes.clone(),
        table,
    };
    let table_err = |t: &TestImage| match apply_err(t) {
        PatchError::Table { reason, .. } => reason,
        other => panic!("expected a table error, got {other:?}"),
    };
    assert_eq!(
        table_err(&with_table(0xff8..0x1004)),
        TableError::OutOfImage { image_len: 0x1000 }
    );
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 0xf0c..0xf00;
    assert_eq!(
        table_err(&with_table(reversed)),
        TableError::OutOfImage { image_len: 0x1000 }
    );
    assert_eq!(
        table_err(&with_table(0xf00..0xf0b)),
        TableError::PartialRecord { len: 11 }
    );
    assert_eq!(
        table_err(&with_table(0xf00..0xf10)),
        TableError::PartialRecord { len: 16 }
    );
    // An empty table is fine and does nothing.
    let mut empty = with_table(0x10..0x10);
    let before = empty.bytes.clone();
    assert_eq!(apply_ok(&mut empty).entries, 0);
    assert_eq!(empty.bytes, before);
    // An image whose addresses wrap.
    let err = apply_err_with(
        &img,
        u64::MAX - 0xfff,
        CapSet::all(),
        CapSet::all(),
        &BootPassCallbacks,
    );
    assert!(
        matches!(
            err,
            PatchError::Table {
                reason: TableError::AddressOverflow { .. },
                ..
            }
        ),
        "{err:?}"
    );
    // Ending one page below the top of the address space is fine.
    let mut top = img.clone();
    let table = top.table.clone();
    let r = apply_alternatives(
        &mut top.bytes,
        u64::MAX - 0x1fff,
        table,
        &CapSet::all(),
        &CapSet::all(),
        &BootPassCallbacks,
    )
    .unwrap();
    assert_eq!(r.applied, 1);
}

#[test]
fn patch_misalignment_is_refused() {
    let mut builder = ImageBuilder::new(0x1000);
    builder.plain(0x100, 0x800, 4, SB);
    // Table at an unaligned offset.
    let img = builder.build(0xf02);
    assert!(matches!(
        apply_err(&img),
        PatchError::Table {
            reason: TableError::Misaligned { addr },
            ..
        } if addr == BASE + 0xf02
    ));
    // Unaligned execution base: the table is the first thing found misaligned.
    let img = builder.build(0xf00);
    assert!(matches!(
        apply_err_with(
            &img,
            BASE + 2,
            CapSet::all(),
            CapSet::all(),
            &BootPassCallbacks
        ),
        PatchError::Table {
            reason: TableError::Misaligned { .. },
            ..
        }
    ));

    let mut builder = ImageBuilder::new(0x1000);
    builder.plain(0x102, 0x800, 4, SB);
    let img = builder.build(0xf00);
    assert_eq!(
        record_fault(apply_err(&img)).2,
        RecordFault::OrigMisaligned { addr: BASE + 0x102 }
    );

    let mut builder = ImageBuilder::new(0x1000);
    builder.plain(0x100, 0x801, 4, SB);
    let img = builder.build(0xf00);
    assert_eq!(
        record_fault(apply_err(&img)).2,
        RecordFault::AltMisaligned { addr: BASE + 0x801 }
    );
}

#[test]
fn patch_lengths_are_checked() {
    let mut builder = ImageBuilder::new(0x1000);
    builder.record(RecordSpec {
        orig: 0x100,
        alt: AltField::At(0x800),
        cpucap: SB,
        orig_len: 8,
        alt_len: 4,
    });
    let img = builder.build(0xf00);
    // Refused whether selected or not.
    let err = apply_err_with(&img, BASE, CapSet::EMPTY, CapSet::EMPTY, &BootPassCallbacks);
    assert_eq!(
        record_fault(err).2,
        RecordFault::LengthMismatch {
            orig_len: 8,
            alt_len: 4
        }
    );
    for len in [0u8, 6, 253] {
        let mut builder = ImageBuilder::new(0x1000);
        builder.plain(0x100, 0x800, len, SB);
        let img = builder.build(0xf00);
        assert_eq!(
            record_fault(apply_err(&img)).2,
            RecordFault::BadOrigLen { len }
        );
    }
    // The longest site, 63 words, is fine.
    let repl: Vec<u32> = (0..63).map(|i| movz(i % 31, i)).collect();
    let mut builder = ImageBuilder::new(0x1000);
    builder.words(0x800, &repl).plain(0x100, 0x800, 252, SB);
    let mut img = builder.build(0xf00);
    apply_ok(&mut img);
    assert_eq!(img.words(0x100, 63), repl);
}

#[test]
fn patch_overlaps_are_refused() {
    // (sites as (orig, alt, len), index of the refused record, fault)
    type Case = (&'static [(usize, usize, u8)], usize, RecordFault);
    let cases: [Case; 7] = [
        // Sorted originals, the second starting inside the first.
        (
            &[(0x100, 0x800, 8), (0x104, 0x900, 4)],
            1,
            RecordFault::OrigOverlapsOrig { other: 0 },
        ),
        // Unsorted table; record 2 overlaps record 0, not its neighbour.
        (
            &[(0x200, 0x800, 8), (0x100, 0x900, 4), (0x1fc, 0xa00, 8)],
            2,
            RecordFault::OrigOverlapsOrig { other: 0 },
        ),
        // A replacement inside another record's original.
        (
            &[(0x100, 0x800, 8), (0x200, 0x104, 4)],
            1,
            RecordFault::AltOverlapsOrig { other: 0 },
        ),
        // A replacement over its own original.
        (
            &[(0x100, 0x104, 8)],
            0,
            RecordFault::AltOverlapsOrig { other: 0 },
        ),
        // A replacement spanning two originals: the lower-addressed one is named,
        // although it comes later in the (unsorted) table.
        (
            &[
                (0x300, 0x800, 4),
                (0x108, 0xa00, 4),
                (0x100, 0xa04, 4),
                (0xb00, 0x100, 12),
            ],
            3,
            RecordFault::AltOverlapsOrig { other: 2 },
        ),
        // The same in a sorted table.
        (
            &[(0x100, 0xa00, 4), (0x108, 0xa04, 4), (0xb00, 0x100, 12)],
            2,
            RecordFault::AltOverlapsOrig { other: 0 },
        ),
        // Sorted; the replacement starts exactly where one original ends (no overlap)
        // and runs into the next one.
        (
            &[(0x100, 0xa00, 4), (0x104, 0xa04, 4), (0xb00, 0x104, 4)],
            2,
            RecordFault::AltOverlapsOrig { other: 1 },
        ),
    ];
    for (sites, index, fault) in cases {
        let mut builder = ImageBuilder::new(0x1000);
        for &(orig, alt, len) in sites {
            builder.plain(orig, alt, len, RNG);
        }
        let img = builder.build(0xf00);
        // Refused even though nothing is selected.
        let err = apply_err_with(&img, BASE, CapSet::EMPTY, CapSet::EMPTY, &BootPassCallbacks);
        assert_eq!(
            record_fault(err),
            (index, 0xf00 + 12 * index, fault),
            "{sites:x?}"
        );
    }
    // Callback templates overlap too.
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .callback(0x100, 8, SB, CallbackId::PatchNops)
        .callback(0x104, 8, SB, CallbackId::PatchNops);
    let img = builder.build(0xf00);
    assert_eq!(
        record_fault(apply_err(&img)).2,
        RecordFault::OrigOverlapsOrig { other: 0 }
    );
    // Adjacent sites are fine.
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .callback(0x100, 8, SB, CallbackId::PatchNops)
        .callback(0x108, 8, SB, CallbackId::PatchNops);
    let mut img = builder.build(0xf00);
    assert_eq!(apply_ok(&mut img).applied, 2);
}

#[test]
fn patch_sites_overlapping_the_table_are_refused() {
    let mut builder = ImageBuilder::new(0x1000);
    builder.plain(0xf08, 0x800, 8, SB);
    let img = builder.build(0xf00);
    assert_eq!(
        record_fault(apply_err(&img)).2,
        RecordFault::OrigOverlapsTable
    );

    let mut builder = ImageBuilder::new(0x1000);
    builder.plain(0x100, 0xefc, 8, SB);
    let img = builder.build(0xf00);
    assert_eq!(
        record_fault(apply_err(&img)).2,
        RecordFault::AltOverlapsTable
    );
}

#[test]
fn patch_a_bad_later_record_stops_everything() {
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .words(0x800, &[movz(1, 1)])
        .plain(0x100, 0x800, 4, SB)
        .plain(0x200, 0x804, 8, 0x7ff0);
    let img = builder.build(0xf00);
    assert_eq!(
        record_fault(apply_err(&img)),
        (1, 0xf0c, RecordFault::CapOutOfRange { cap: 0x7ff0 })
    );
}

#[test]
fn patch_check_alternatives_matches_apply() {
    let mut builder = ImageBuilder::new(0x1000);
    builder
        .words(0x800, &[b(0x400)])
        .plain(0x100, 0x800, 4, SB)
        .callback(0x200, 8, SB, CallbackId::PatchNops)
        .callback(0x300, 8, RNG, CallbackId::PatchNops);
    let mut img = builder.build(0xf00);
    let before = img.bytes.clone();
    let set = caps(&[Cap::HasSb, Cap::HasRng]);
    let mask = caps(&[Cap::HasSb]);
    let dry = check_alternatives(
        &before,
        BASE,
        img.table.clone(),
        &set,
        &mask,
        &BootPassCallbacks,
    )
    .unwrap();
    let real = run(&mut img, set, mask, &BootPassCallbacks).unwrap();
    assert_eq!(dry, real);
    assert_eq!(real.applied, 2);
    assert_eq!(real.callbacks, [1, 0, 0, 0, 0, 0]);
    assert_eq!(
        real.to_string(),
        "2 of 3 alternatives applied (1 by callback)"
    );
    assert_eq!(img.word(0x100), b(0x400 + 0x700));
}

#[test]
fn patch_errors_display_record_and_reason() {
    let e = PatchError::Record {
        index: 3,
        offset: 0xf24,
        reason: RecordFault::TemplateLength {
            id: CallbackId::KernHypVa,
            expected: 5,
            found: 4,
        },
    };
    assert_eq!(
        e.to_string(),
        "alternative record 3 (image offset 0xf24): kvm_update_va_mask needs a template of 5 \
         instructions, the site has 4"
    );
    let e = PatchError::Table {
        start: 0xf00,
        end: 0xf0b,
        reason: TableError::PartialRecord { len: 11 },
    };
    assert_eq!(
        e.to_string(),
        "alternatives table 0xf00..0xf0b: length 11 is not a multiple of the 12-byte record"
    );
    let e = RecordFault::Relocation {
        word_index: 1,
        word: 0x1000_0000,
        reason: RelocError::Literal,
    };
    assert_eq!(
        e.to_string(),
        "replacement instruction 1 (0x10000000): literal loads and ADR cannot be moved out of a \
         replacement"
    );
}
