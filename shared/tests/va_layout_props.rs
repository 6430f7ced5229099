//! The hyp VA layout and the layout callbacks against LINUX-FACTS §5: the worked examples
//! of §5.5 word for word, the §5.1 rules (randomisation, NOP rule, size limit), and
//! property tests that run the patched instructions through a small A64 interpreter and
//! compare the result with `HypVaLayout::kern_hyp_va` and with the §5.1 formula
//! recomputed here independently.

use proptest::prelude::*;
use shared::alternative::CallbackId;
use shared::callbacks::SystemPassCallbacks;
use shared::cpucaps::Cap;
use shared::insn::{self, Insn, NOP};
use shared::patch::{CallbackError, CallbackResolver, CallbackSite};
use shared::va_layout::{
    kern_hyp_va_template, kimage_voffset, patch_bhb_loop_iter, patch_hyp_vector_branch,
    patch_kern_hyp_va, patch_mov_imm64, HypVaLayout, LayoutError, LayoutParams, RamRange,
};

const GIB: u64 = 1 << 30;
const QEMU_RAM: u64 = 0x4000_0000;
const KERNEL_PA: u64 = 0x4020_0000;
const PAGE_OFFSET_48: u64 = 0xffff_0000_0000_0000;

// ---------------------------------------------------------------------------------------
// A tiny interpreter for the instructions the callbacks emit.

/// Register file: x0..x30, SP, and the target of the last BR.
#[derive(Debug, Clone)]
struct Machine {
    x: [u64; 31],
    sp: u64,
    branched_to: Option<u64>,
}

impl Machine {
    fn new(fill: u64) -> Self {
        let mut x = [0u64; 31];
        for (i, r) in x.iter_mut().enumerate() {
            *r = fill.rotate_left(i as u32 * 7) ^ (i as u64);
        }
        Machine {
            x,
            sp: fill ^ 0x5555,
            branched_to: None,
        }
    }

    /// Reads register `r`; 31 is SP where the instruction says so, else XZR.
    fn read(&self, r: u8, sp: bool) -> u64 {
        match (r, sp) {
            (31, true) => self.sp,
            (31, false) => 0,
            _ => self.x[r as usize],
        }
    }

    fn write(&mut self, r: u8, sp: bool, v: u64) {
        match (r, sp) {
            (31, true) => self.sp = v,
            (31, false) => {}
            _ => self.x[r as usize] = v,
        }
    }

    /// Executes `words` in order; panics on anything the callbacks must not emit.
    fn run(&mut self, words: &[u32]) {
        for &w in words {
            let i = insn::decode(w).unwrap_or_else(|| panic!("undecodable word {w:#010x}"));
            match i {
                Insn::Nop => {}
                Insn::AndImm {
                    sf: true,
                    rd,
                    rn,
                    imm,
                } => {
                    let v = self.read(rn, false) & imm;
                    self.write(rd, true, v);
                }
                Insn::Extr {
                    sf: true,
                    rd,
                    rn,
                    rm,
                    lsb,
                } => {
                    let lo = self.read(rm, false);
                    let hi = self.read(rn, false);
                    let v = if lsb == 0 {
                        lo
                    } else {
                        (lo >> lsb) | (hi << (64 - lsb))
                    };
                    self.write(rd, false, v);
                }
                Insn::AddImm {
                    sf: true,
                    rd,
                    rn,
                    imm12,
                    lsl12,
                } => {
                    let imm = u64::from(imm12) << if lsl12 { 12 } else { 0 };
                    let v = self.read(rn, true).wrapping_add(imm);
                    self.write(rd, true, v);
                }
                Insn::Movz {
                    sf,
                    rd,
                    imm16,
                    shift,
                } => {
                    let v = u64::from(imm16) << shift;
                    self.write(rd, false, if sf { v } else { v & 0xffff_ffff });
                }
                Insn::Movk {
                    sf,
                    rd,
                    imm16,
                    shift,
                } => {
                    let old = self.read(rd, false);
                    let v = (old & !(0xffffu64 << shift)) | (u64::from(imm16) << shift);
                    self.write(rd, false, if sf { v } else { v & 0xffff_ffff });
                }
                Insn::Br { rn } => self.branched_to = Some(self.read(rn, false)),
                other => panic!("callback emitted an unexpected instruction {other:?}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn site(id: CallbackId, exec_addr: u64, original: &[u32]) -> CallbackSite<'_> {
    CallbackSite {
        cap: Cap::AlwaysSystem,
        id,
        exec_addr,
        original,
    }
}

fn ram(base: u64, size: u64) -> [RamRange; 1] {
    [RamRange { base, size }]
}

fn qemu_layout(size: u64, seed: Option<u64>) -> HypVaLayout {
    let r = ram(QEMU_RAM, size);
    let mut p = LayoutParams::new(&r, KERNEL_PA, KERNEL_PA);
    p.seed = seed;
    HypVaLayout::compute(&p).expect("valid layout")
}

fn patch_kva(layout: &HypVaLayout, template: &[u32; 5]) -> [u32; 5] {
    let mut out = *template;
    patch_kern_hyp_va(layout, &site(CallbackId::KernHypVa, 0, template), &mut out)
        .expect("kern_hyp_va patched");
    out
}

/// The default `mov_q`-style template on `rd`: `movz rd,#0; movk rd,#0,lsl 16/32/48`.
fn mov_q_template(rd: u8) -> [u32; 4] {
    [
        insn::movz_x(rd, 0, 0).expect("movz"),
        insn::movk_x(rd, 0, 16).expect("movk"),
        insn::movk_x(rd, 0, 32).expect("movk"),
        insn::movk_x(rd, 0, 48).expect("movk"),
    ]
}

fn patch_mov_q(value: u64, rd: u8) -> [u32; 4] {
    let t = mov_q_template(rd);
    let mut out = t;
    patch_mov_imm64(value, &site(CallbackId::KimageVoffset, 0, &t), &mut out)
        .expect("mov_q patched");
    out
}

// ---------------------------------------------------------------------------------------
// LINUX-FACTS §5.5, word for word.

#[test]
fn worked_example_1gib() {
    let l = qemu_layout(GIB, None);
    assert_eq!(
        l.linear_span(),
        (0xffff_0000_0000_0000, 0xffff_0000_3fff_ffff)
    );
    assert_eq!(l.tag_lsb(), 30);
    assert_eq!(l.va_mask(), 0x3fff_ffff);
    assert_eq!(l.tag_val(), 0x20000);
    let words = patch_kva(&l, &kern_hyp_va_template(0).expect("template"));
    assert_eq!(
        words,
        [
            0x9240_7400,
            0x93C0_7800,
            0x9100_0000,
            0x9140_8000,
            0x93C0_8800
        ]
    );
    assert_eq!(l.kern_hyp_va(0xffff_0000_1234_5678), 0x0000_8000_1234_5678);
    let mut m = Machine::new(1);
    m.x[0] = 0xffff_0000_1234_5678;
    m.run(&words);
    assert_eq!(m.x[0], 0x0000_8000_1234_5678);
    assert_eq!(l.hyp_physvirt_offset(), 0xffff_8000_4000_0000);
    assert_eq!(l.hyp_pa(0x0000_8000_1234_5678), Some(0x5234_5678));
    // Random range 0x20000..=0x3ffff: 17 random bits, 30..=46.
    assert_eq!(qemu_layout(GIB, Some(u64::MAX)).tag_val(), 0x3ffff);
    assert_eq!(qemu_layout(GIB, Some(0)).tag_val(), 0x20000);
}

#[test]
fn worked_example_4gib() {
    let l = qemu_layout(4 * GIB, None);
    assert_eq!(
        l.linear_span(),
        (0xffff_0000_0000_0000, 0xffff_0000_ffff_ffff)
    );
    assert_eq!(l.tag_lsb(), 32);
    assert_eq!(l.va_mask(), 0xffff_ffff);
    assert_eq!(l.tag_val(), 0x8000);
    let words = patch_kva(&l, &kern_hyp_va_template(0).expect("template"));
    assert_eq!(
        words,
        [
            0x9240_7C00,
            0x93C0_8000,
            0x9100_0000,
            0x9140_2000,
            0x93C0_8000
        ]
    );
    assert_eq!(l.kern_hyp_va(0xffff_0000_dead_b000), 0x0000_8000_dead_b000);
    let mut m = Machine::new(2);
    m.x[0] = 0xffff_0000_dead_b000;
    m.run(&words);
    assert_eq!(m.x[0], 0x0000_8000_dead_b000);
    assert_eq!(l.hyp_physvirt_offset(), 0xffff_8000_4000_0000);
    assert_eq!(qemu_layout(4 * GIB, Some(u64::MAX)).tag_val(), 0xffff);
}

#[test]
fn worked_example_random_tag() {
    let l = qemu_layout(GIB, Some(0x2a5f3 << 30));
    assert_eq!(l.tag_val(), 0x2a5f3);
    let words = patch_kva(&l, &kern_hyp_va_template(0).expect("template"));
    assert_eq!(words[2], 0x9117_cc00, "add x0,x0,#0x5f3");
    assert_eq!(words[3], 0x9140_a800, "add x0,x0,#0x2a,lsl#12");
    assert_eq!(l.hyp_base(), 0x0000_a97c_c000_0000);
    let mut m = Machine::new(3);
    m.x[0] = 0xffff_0000_0000_0000;
    m.run(&words);
    assert_eq!(m.x[0], 0x0000_a97c_c000_0000);
}

#[test]
fn worked_example_straddling() {
    // 4 GiB at linear offset 3 GiB: RAM at PA 4 GiB, linear map starting at PA 1 GiB.
    let r = ram(4 * GIB, 4 * GIB);
    let mut p = LayoutParams::new(&r, 4 * GIB, 4 * GIB);
    p.memstart = GIB;
    let l = HypVaLayout::compute(&p).expect("valid layout");
    assert_eq!(
        l.linear_span(),
        (0xffff_0000_c000_0000, 0xffff_0001_bfff_ffff)
    );
    assert_eq!(l.tag_lsb(), 33);
}

#[test]
fn worked_example_kimage_voffset() {
    let v = kimage_voffset(0xffff_8000_0800_0000, 0x4020_0000);
    assert_eq!(v, 0xffff_7fff_c7e0_0000);
    assert_eq!(
        patch_mov_q(v, 1),
        [0xD280_0001, 0xF2B8_FC01, 0xF2CF_FFE1, 0xF2FF_FFE1]
    );
}

#[test]
fn worked_example_ctr_el0() {
    // Cortex-A57/A72 and Cortex-A53 models.
    assert_eq!(
        patch_mov_q(0x8444_c004, 0),
        [0xD298_0080, 0xF2B0_8880, 0xF2C0_0000, 0xF2E0_0000]
    );
    assert_eq!(
        patch_mov_q(0x8444_8004, 0),
        [0xD290_0080, 0xF2B0_8880, 0xF2C0_0000, 0xF2E0_0000]
    );
}

// ---------------------------------------------------------------------------------------
// §5.1/§5.2 rules.

#[test]
fn zero_tag_leaves_only_the_and() {
    // Idmap in the upper half and no random bits: tag_val == 0.
    let base = 0x8000_0000_0000;
    let r = ram(base, GIB);
    let l = HypVaLayout::compute(&LayoutParams::new(&r, base, base)).expect("valid layout");
    assert_eq!(l.tag_val(), 0);
    let t = kern_hyp_va_template(7).expect("template");
    let words = patch_kva(&l, &t);
    assert_eq!(words[0], insn::and_x_imm(7, 7, 0x3fff_ffff).expect("and"));
    assert_eq!(words[1..], [NOP; 4]);
    let mut m = Machine::new(4);
    let k = PAGE_OFFSET_48 + 0x1234_5678;
    m.x[7] = k;
    m.run(&words);
    assert_eq!(m.x[7], 0x1234_5678);
    assert_eq!(m.x[7], l.kern_hyp_va(k));
}

#[test]
fn too_small_ram_span_is_refused() {
    // 8 MiB at an aligned base: lo ^ hi = 0x7fffff, tag_lsb 23, 25 tag bits.
    let r = ram(QEMU_RAM, 8 << 20);
    let err = HypVaLayout::compute(&LayoutParams::new(&r, KERNEL_PA, KERNEL_PA))
        .expect_err("8 MiB span cannot hold the tag");
    assert_eq!(
        err,
        LayoutError::TagTooWide {
            tag_lsb: 23,
            va_bits: 48
        }
    );
    assert!(err.to_string().contains("tag_lsb 23"), "{err}");
    // One more page reaches bit 23: tag_lsb 24, 24 tag bits, which fit.
    let r = ram(QEMU_RAM, (8 << 20) + 4096);
    let l = HypVaLayout::compute(&LayoutParams::new(&r, KERNEL_PA, KERNEL_PA))
        .expect("24 tag bits fit");
    assert_eq!(l.tag_lsb(), 24);
    assert_eq!(l.tag_val(), 0x80_0000);
    let words = patch_kva(&l, &kern_hyp_va_template(0).expect("template"));
    assert_eq!(words[3], 0x9160_0000, "add x0,x0,#0x800,lsl#12");
}

#[test]
fn nokaslr_disables_randomisation() {
    let r = ram(QEMU_RAM, GIB);
    let mut p = LayoutParams::new(&r, KERNEL_PA, KERNEL_PA);
    p.seed = Some(0xdead_beef_cafe_f00d);
    let random = HypVaLayout::compute(&p).expect("valid layout");
    assert_ne!(random.tag_val(), 0x20000);
    p.nokaslr = true;
    let fixed = HypVaLayout::compute(&p).expect("valid layout");
    assert_eq!(fixed.tag_val(), 0x20000);
    assert_eq!(fixed, qemu_layout(GIB, None));
}

#[test]
fn no_randomisation_when_linear_map_uses_bit_v_minus_2() {
    // Two pages 2^46 apart: lo ^ hi has bit 46 set, so tag_lsb == V - 1 = 47.
    let r = [
        RamRange {
            base: QEMU_RAM,
            size: 4096,
        },
        RamRange {
            base: QEMU_RAM + (1 << 46),
            size: 4096,
        },
    ];
    let mut p = LayoutParams::new(&r, KERNEL_PA, QEMU_RAM);
    p.seed = Some(u64::MAX);
    let l = HypVaLayout::compute(&p).expect("valid layout");
    assert_eq!(l.tag_lsb(), 47);
    assert_eq!(l.tag_val(), 1);
}

#[test]
fn system_resolver_patches_all_ids() {
    let sys = SystemPassCallbacks {
        layout: qemu_layout(GIB, None),
        kimage_voffset: 0xffff_7fff_c7e0_0000,
        ctr_el0: 0x8444_c004,
        hyp_vector: 0x0000_8000_0040_0000,
        bhb_loop_k: 32,
    };
    let t = mov_q_template(1);
    let mut out = t;
    sys.patch(&site(CallbackId::KimageVoffset, 0, &t), &mut out)
        .expect("patched");
    assert_eq!(out, [0xD280_0001, 0xF2B8_FC01, 0xF2CF_FFE1, 0xF2FF_FFE1]);
    let bad = [NOP; 3];
    let mut out = bad;
    assert_eq!(
        sys.patch(&site(CallbackId::FinalCtrEl0, 0, &bad), &mut out),
        Err(CallbackError::TemplateLength {
            expected: 4,
            found: 3
        })
    );
}

// ---------------------------------------------------------------------------------------
// Properties.

/// A random layout input: VA size, linear-map start, RAM ranges inside the linear map,
/// idmap PA, hyp text offset, seed, nokaslr.
#[derive(Debug, Clone)]
struct Input {
    va_bits: u8,
    idmap_va_bits: u8,
    memstart: u64,
    ranges: Vec<RamRange>,
    idmap_pa: u64,
    text_frac: u64,
    seed: Option<u64>,
    nokaslr: bool,
}

fn input() -> impl Strategy<Value = Input> {
    (36u8..=48)
        .prop_flat_map(|v| {
            let half = 1u64 << (v - 1);
            let memstart_steps = ((1u64 << 48) - half) / GIB;
            let range = (0..half, 12u32..(v as u32 - 1), any::<u64>());
            (
                Just(v),
                v..=48u8,
                0..=memstart_steps,
                prop::collection::vec(range, 1..4),
                any::<u64>(),
                any::<u64>(),
                prop::option::of(any::<u64>()),
                any::<bool>(),
            )
        })
        .prop_map(
            |(va_bits, idmap_va_bits, step, raw, idmap_raw, text_frac, seed, nokaslr)| {
                let half = 1u64 << (va_bits - 1);
                let memstart = step * GIB;
                let ranges = raw
                    .into_iter()
                    .map(|(off, size_log, r)| {
                        let size = (1u64 << size_log) + r % (1u64 << size_log);
                        let size = size.min(half - off).max(1);
                        RamRange {
                            base: memstart + off,
                            size,
                        }
                    })
                    .collect();
                Input {
                    va_bits,
                    idmap_va_bits,
                    memstart,
                    ranges,
                    idmap_pa: idmap_raw >> (64 - idmap_va_bits),
                    text_frac,
                    seed,
                    nokaslr,
                }
            },
        )
}

/// The §5.1 values, recomputed from scratch: (tag_lsb, tag_val), or `None` when the tag
/// does not fit the two ADDs.
fn reference(inp: &Input, page_offset: u64, first: u64, last: u64) -> Option<(u8, u64)> {
    let v = u32::from(inp.va_bits);
    let lo = page_offset + (first - inp.memstart);
    let hi = page_offset + (last - inp.memstart);
    let diff = lo ^ hi;
    let tag_lsb = if diff == 0 {
        0
    } else {
        64 - diff.leading_zeros()
    };
    if v - tag_lsb > 24 {
        return None;
    }
    let top = 1u64 << (v - 1);
    let mut tag = if inp.idmap_pa & top != 0 { 0 } else { top };
    if let (Some(seed), false) = (inp.seed, inp.nokaslr) {
        if tag_lsb != v - 1 {
            let mut random_bits = 0u64;
            for b in tag_lsb..=(v - 2) {
                random_bits |= 1 << b;
            }
            tag |= seed & random_bits;
        }
    }
    Some((tag_lsb as u8, tag >> tag_lsb))
}

fn reg() -> impl Strategy<Value = u8> {
    0u8..=30
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn kern_hyp_va_site_computes_the_layout(
        inp in input(),
        regs in (reg(), reg(), reg(), reg(), reg()),
        addr_fracs in prop::collection::vec(any::<u64>(), 1..8),
        fill in any::<u64>(),
    ) {
        let page_offset = u64::MAX << inp.va_bits;
        let first = inp.ranges.iter().map(|r| r.base).min().expect("non-empty");
        let last = inp.ranges.iter().map(|r| r.base + r.size - 1).max().expect("non-empty");
        let text_pa = first + inp.text_frac % (last - first + 1);
        let params = LayoutParams {
            ram: &inp.ranges,
            va_bits: inp.va_bits,
            idmap_va_bits: inp.idmap_va_bits,
            page_offset,
            memstart: inp.memstart,
            idmap_pa: inp.idmap_pa,
            hyp_text_pa: text_pa,
            seed: inp.seed,
            nokaslr: inp.nokaslr,
        };
        let got = HypVaLayout::compute(&params);
        let Some((tag_lsb, tag_val)) = reference(&inp, page_offset, first, last) else {
            prop_assert!(matches!(got, Err(LayoutError::TagTooWide { .. })), "{got:?}");
            return Ok(());
        };
        let layout = got.expect("reference says the layout fits");
        prop_assert_eq!(layout.tag_lsb(), tag_lsb);
        prop_assert_eq!(layout.tag_val(), tag_val);
        prop_assert_eq!(layout.va_mask(), (1u64 << tag_lsb) - 1);
        prop_assert_eq!(layout.hyp_va_bits(), inp.va_bits.max(inp.idmap_va_bits));
        prop_assert!(tag_val < 1 << 24);
        // Only the MSB and bits GENMASK(V-2, tag_lsb) can be set in the tag.
        let top = 1u64 << (inp.va_bits - 1);
        let allowed = (top | (top - 1)) & !((1u64 << tag_lsb) - 1);
        prop_assert_eq!(layout.hyp_base() & !allowed, 0);
        prop_assert_eq!(layout.hyp_base() & top == 0, inp.idmap_pa & top != 0);

        // Template: AND d0,n0; ROR d1,d0; ADD d2,d1; ADD d3,d2,LSL12; ROR d0,d3.
        let (n0, d0, d1, d2, d3) = regs;
        let template = [
            insn::and_x_imm(d0, n0, 1).expect("and"),
            insn::ror_x(d1, d0, 1).expect("ror"),
            insn::add_x_imm(d2, d1, 0).expect("add"),
            Insn::AddImm { sf: true, rd: d3, rn: d2, imm12: 0, lsl12: true }
                .encode()
                .expect("add lsl12"),
            insn::ror_x(d0, d3, 63).expect("ror"),
        ];
        let words = patch_kva(&layout, &template);

        let (lo, hi) = layout.linear_span();
        prop_assert_eq!(lo, page_offset + (first - inp.memstart));
        prop_assert_eq!(hi, page_offset + (last - inp.memstart));
        let text_hyp = layout.hyp_va_of_pa(text_pa).expect("text in RAM");
        prop_assert_eq!(layout.hyp_physvirt_offset(), text_pa.wrapping_sub(text_hyp));
        for frac in addr_fracs.iter().copied().chain([0, hi - lo]) {
            let k = lo + frac % (hi - lo + 1);
            let expected = (k & ((1u64 << tag_lsb) - 1)) | (tag_val << tag_lsb);
            prop_assert_eq!(layout.kern_hyp_va(k), expected);
            let mut m = Machine::new(fill);
            m.x[n0 as usize] = k;
            m.run(&words);
            prop_assert_eq!(m.x[d0 as usize], expected, "words {:08x?}", words);
            // The hyp VA maps back to the same PA.
            let pa = layout.virt_to_phys(k).expect("k in the linear map");
            prop_assert_eq!(layout.phys_to_virt(pa), Some(k));
            prop_assert_eq!(layout.hyp_va_of_pa(pa), Some(expected));
            prop_assert_eq!(layout.hyp_pa(expected), Some(pa));
            prop_assert_eq!(expected.wrapping_add(layout.hyp_physvirt_offset()), pa);
            prop_assert!(expected >> inp.va_bits == 0);
        }
    }

    #[test]
    fn mov_q_sequence_loads_the_value(value in any::<u64>(), rd in reg(), fill in any::<u64>(),
                                      nops in any::<[bool; 3]>()) {
        let mut t = mov_q_template(rd);
        for (slot, nop) in t[1..].iter_mut().zip(nops) {
            if nop {
                *slot = NOP;
            }
        }
        let mut out = t;
        patch_mov_imm64(value, &site(CallbackId::FinalCtrEl0, 0, &t), &mut out)
            .expect("patched");
        let mut m = Machine::new(fill);
        m.run(&out);
        prop_assert_eq!(m.x[rd as usize], value);
    }

    #[test]
    fn vector_branch_targets_the_same_entry(
        vector_page in 0u64..((1u64 << 48) >> 11) - 1,
        exec in any::<u64>(),
        fill in any::<u64>(),
    ) {
        let vector = vector_page << 11;
        let t = [NOP; 4];
        let mut out = t;
        patch_hyp_vector_branch(vector, &site(CallbackId::HypVectorBranch, exec, &t), &mut out)
            .expect("patched");
        let mut m = Machine::new(fill);
        m.run(&out);
        let target = vector + (exec & 0x780) + 8;
        prop_assert_eq!(m.branched_to, Some(target));
        prop_assert_eq!(m.x[0], target);
    }

    #[test]
    fn bhb_count_lands_in_template_register(k in 1u8..=255, rd in reg(), sf in any::<bool>(),
                                             fill in any::<u64>()) {
        let t = [Insn::Movz { sf, rd, imm16: 32, shift: 0 }.encode().expect("movz")];
        let mut out = t;
        patch_bhb_loop_iter(k, &site(CallbackId::BhbLoopIter, 0, &t), &mut out).expect("patched");
        let mut m = Machine::new(fill);
        m.run(&out);
        prop_assert_eq!(m.x[rd as usize], u64::from(k));
    }
}
