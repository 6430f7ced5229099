//! The callback bodies: pure functions from a site's template and a value to the patched
//! words. Each validates the template before computing anything and writes `out` only
//! when every word encoded, so a refused site is left as it was.
//!
//! Registers are harvested from the template (the compiler chose them). Register 31 is
//! refused everywhere: it means SP in some of these instructions and XZR in others, so a
//! template using it cannot compute what the site is for.

use crate::insn::{self, Insn, InsnError, NOP};
use crate::patch::{CallbackError, CallbackSite};

use super::HypVaLayout;

/// Instructions of the `kern_hyp_va` site.
pub const KERN_HYP_VA_LEN: usize = 5;
/// Instructions of a MOVZ/MOVK×3 value site (kimage_voffset, CTR_EL0).
pub const MOV_IMM64_LEN: usize = 4;
/// Instructions of the hyp-vector branch site.
pub const HYP_VECTOR_BRANCH_LEN: usize = 4;
/// Instructions of the BHB loop-count site.
pub const BHB_LOOP_ITER_LEN: usize = 1;

/// Bytes the hardening stub already executed in each vector entry (`esb` and the
/// `stp x0, x1` push), skipped by the branch into the real vector.
pub const VECTOR_PREAMBLE: u64 = 8;

/// Bits of the site address that select the 128-byte entry of a 2 KiB vector table.
const VECTOR_ENTRY_BITS: u64 = 0x780;

/// Register the hyp-vector branch uses: the stub has saved x0/x1 before the site.
const VECTOR_BRANCH_REG: u8 = 0;

/// Checks that the site and the output both have `expected` instructions.
fn check_len(site: &CallbackSite<'_>, out: &[u32], expected: usize) -> Result<(), CallbackError> {
    let found = site.original.len();
    if found != expected {
        return Err(CallbackError::TemplateLength { expected, found });
    }
    if out.len() != expected {
        return Err(CallbackError::TemplateLength {
            expected,
            found: out.len(),
        });
    }
    Ok(())
}

fn unexpected(site: &CallbackSite<'_>, index: usize) -> CallbackError {
    CallbackError::UnexpectedTemplate {
        index,
        word: site.original[index],
    }
}

/// `alt_cb_patch_nops`: every word of the site becomes a NOP. Any length of at least
/// one instruction.
pub fn patch_nops(site: &CallbackSite<'_>, out: &mut [u32]) -> Result<(), CallbackError> {
    if site.original.is_empty() || out.len() != site.original.len() {
        return Err(CallbackError::TemplateLength {
            expected: site.original.len().max(1),
            found: if site.original.is_empty() {
                0
            } else {
                out.len()
            },
        });
    }
    out.fill(NOP);
    Ok(())
}

/// The `(rd, rn)` of each `kern_hyp_va` template slot, after checking the template is
/// `AND; ROR; ADD; ADD; ROR` (64-bit forms) chained through one register flow: each
/// slot reads what the previous one wrote, and the last writes where the first did
/// (so the result is in the same register when slots 2–5 become NOPs).
fn kern_hyp_va_regs(site: &CallbackSite<'_>) -> Result<[(u8, u8); KERN_HYP_VA_LEN], CallbackError> {
    let mut regs = [(0u8, 0u8); KERN_HYP_VA_LEN];
    for (i, &word) in site.original.iter().enumerate() {
        let (rd, rn) = match (i, insn::decode(word)) {
            (
                0,
                Some(Insn::AndImm {
                    sf: true, rd, rn, ..
                }),
            ) => (rd, rn),
            (
                1 | 4,
                Some(Insn::Extr {
                    sf: true,
                    rd,
                    rn,
                    rm,
                    ..
                }),
            ) if rn == rm => (rd, rn),
            (
                2 | 3,
                Some(Insn::AddImm {
                    sf: true, rd, rn, ..
                }),
            ) => (rd, rn),
            _ => return Err(unexpected(site, i)),
        };
        let chained = i == 0 || rn == regs[i - 1].0;
        let closes = i != KERN_HYP_VA_LEN - 1 || rd == regs[0].0;
        if rd == 31 || rn == 31 || !chained || !closes {
            return Err(unexpected(site, i));
        }
        regs[i] = (rd, rn);
    }
    Ok(regs)
}

/// `kvm_update_va_mask`: the five-instruction `kern_hyp_va` transform (LINUX-FACTS
/// §5.2): `AND va_mask; ROR tag_lsb; ADD tag_val[11:0]; ADD tag_val[23:12], LSL 12;
/// ROR 64 − tag_lsb`, with slots 2–5 NOPs when `tag_val == 0`.
pub fn patch_kern_hyp_va(
    layout: &HypVaLayout,
    site: &CallbackSite<'_>,
    out: &mut [u32],
) -> Result<(), CallbackError> {
    check_len(site, out, KERN_HYP_VA_LEN)?;
    let r = kern_hyp_va_regs(site)?;
    let tag_lsb = layout.tag_lsb();
    let tag_val = layout.tag_val();
    let mut words = [NOP; KERN_HYP_VA_LEN];
    words[0] = insn::and_x_imm(r[0].0, r[0].1, layout.va_mask())?;
    if tag_val != 0 {
        words[1] = insn::ror_x(r[1].0, r[1].1, tag_lsb)?;
        words[2] = insn::add_x_imm(r[2].0, r[2].1, tag_val & 0xfff)?;
        words[3] = insn::add_x_imm(r[3].0, r[3].1, tag_val & 0xff_f000)?;
        words[4] = insn::ror_x(r[4].0, r[4].1, 64 - tag_lsb)?;
    }
    out.copy_from_slice(&words);
    Ok(())
}

/// The four words `MOVZ Xd, #v[15:0]; MOVK Xd, #v[31:16], LSL 16; MOVK Xd, #v[47:32],
/// LSL 32; MOVK Xd, #v[63:48], LSL 48`.
pub fn mov_imm64_words(rd: u8, value: u64) -> Result<[u32; MOV_IMM64_LEN], InsnError> {
    let part = |shift: u8| (value >> shift) as u16;
    Ok([
        insn::movz_x(rd, part(0), 0)?,
        insn::movk_x(rd, part(16), 16)?,
        insn::movk_x(rd, part(32), 32)?,
        insn::movk_x(rd, part(48), 48)?,
    ])
}

/// `kvm_get_kimage_voffset` / `kvm_compute_final_ctr_el0`: loads the 64-bit `value`
/// into Xd with MOVZ/MOVK×3. The template must start with a 64-bit `MOVZ Xd` (Xd is
/// harvested from it; not XZR) and each following slot must be a 64-bit `MOVK` of the
/// same Xd or a NOP — the shape of the `mov_q`-style template, nothing else.
pub fn patch_mov_imm64(
    value: u64,
    site: &CallbackSite<'_>,
    out: &mut [u32],
) -> Result<(), CallbackError> {
    check_len(site, out, MOV_IMM64_LEN)?;
    let rd = match insn::decode(site.original[0]) {
        Some(Insn::Movz { sf: true, rd, .. }) if rd != 31 => rd,
        _ => return Err(unexpected(site, 0)),
    };
    for (i, &word) in site.original.iter().enumerate().skip(1) {
        match insn::decode(word) {
            Some(Insn::Movk {
                sf: true, rd: r, ..
            }) if r == rd => {}
            Some(Insn::Nop) => {}
            _ => return Err(unexpected(site, i)),
        }
    }
    let words = mov_imm64_words(rd, value)?;
    out.copy_from_slice(&words);
    Ok(())
}

/// `kvm_patch_vector_branch`: `MOVZ x0, a[15:0]; MOVK x0, a[31:16], LSL 16; MOVK x0,
/// a[47:32], LSL 32; BR x0` with `a = hyp_vector + (site address & 0x780) + 8`, i.e. the
/// same 128-byte entry of the real vector, past the preamble the stub already ran. The
/// template must be four NOPs. `hyp_vector` must be 2 KiB aligned (VBAR alignment) and
/// `a` must fit in 48 bits (only 48 are materialised); otherwise the site is refused.
///
/// The site is tagged with the SPECTRE_V3A cap itself, so this runs only on affected
/// CPUs and checks no cap.
pub fn patch_hyp_vector_branch(
    hyp_vector: u64,
    site: &CallbackSite<'_>,
    out: &mut [u32],
) -> Result<(), CallbackError> {
    check_len(site, out, HYP_VECTOR_BRANCH_LEN)?;
    if let Some(i) = site.original.iter().position(|&w| w != NOP) {
        return Err(unexpected(site, i));
    }
    let target = (site.exec_addr & VECTOR_ENTRY_BITS) + VECTOR_PREAMBLE;
    let addr = hyp_vector.checked_add(target);
    let addr = match addr {
        Some(a) if hyp_vector & 0x7ff == 0 && a >> 48 == 0 => a,
        _ => {
            return Err(CallbackError::Encode(InsnError::ImmediateOutOfRange {
                what: "hyp vector address (2 KiB aligned, below 2^48)",
                value: hyp_vector,
            }))
        }
    };
    let part = |shift: u8| (addr >> shift) as u16;
    let words = [
        insn::movz_x(VECTOR_BRANCH_REG, part(0), 0)?,
        insn::movk_x(VECTOR_BRANCH_REG, part(16), 16)?,
        insn::movk_x(VECTOR_BRANCH_REG, part(32), 32)?,
        insn::br(VECTOR_BRANCH_REG)?,
    ];
    out.copy_from_slice(&words);
    Ok(())
}

/// `spectre_bhb_patch_loop_iter`: `MOVZ Rd, #k` with the system's BHB loop count, in
/// the template's width (the template must be a `MOVZ`, Rd not the zero register).
/// `k == 0` is refused: the loop counts down before testing, so 0 would spin 2^64 times.
///
/// The site is tagged with the SPECTRE_BHB cap itself, so this runs only when the loop
/// mitigation applies and checks no cap.
pub fn patch_bhb_loop_iter(
    k: u8,
    site: &CallbackSite<'_>,
    out: &mut [u32],
) -> Result<(), CallbackError> {
    check_len(site, out, BHB_LOOP_ITER_LEN)?;
    let (sf, rd) = match insn::decode(site.original[0]) {
        Some(Insn::Movz { sf, rd, .. }) if rd != 31 => (sf, rd),
        _ => return Err(unexpected(site, 0)),
    };
    if k == 0 {
        return Err(CallbackError::Encode(InsnError::ImmediateOutOfRange {
            what: "BHB loop count",
            value: 0,
        }));
    }
    out[0] = Insn::Movz {
        sf,
        rd,
        imm16: u16::from(k),
        shift: 0,
    }
    .encode()?;
    Ok(())
}

/// The default `kern_hyp_va` template on register `reg`, as the hyp's site macro emits
/// it: `AND R,R,#1; ROR R,R,#1; ADD R,R,#0; ADD R,R,#0,LSL #12; ROR R,R,#63`.
pub fn kern_hyp_va_template(reg: u8) -> Result<[u32; KERN_HYP_VA_LEN], InsnError> {
    Ok([
        insn::and_x_imm(reg, reg, 1)?,
        insn::ror_x(reg, reg, 1)?,
        insn::add_x_imm(reg, reg, 0)?,
        Insn::AddImm {
            sf: true,
            rd: reg,
            rn: reg,
            imm12: 0,
            lsl12: true,
        }
        .encode()?,
        insn::ror_x(reg, reg, 63)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alternative::CallbackId;
    use crate::cpucaps::Cap;
    use crate::va_layout::{LayoutParams, RamRange};

    fn site(id: CallbackId, exec_addr: u64, original: &[u32]) -> CallbackSite<'_> {
        CallbackSite {
            cap: Cap::AlwaysSystem,
            id,
            exec_addr,
            original,
        }
    }

    fn one_gib() -> HypVaLayout {
        let ram = [RamRange {
            base: 0x4000_0000,
            size: 1 << 30,
        }];
        HypVaLayout::compute(&LayoutParams::new(&ram, 0x4020_0000, 0x4020_0000))
            .expect("valid layout")
    }

    #[test]
    fn lengths_match_callback_ids() {
        assert_eq!(CallbackId::KernHypVa.template_len(), Some(KERN_HYP_VA_LEN));
        assert_eq!(
            CallbackId::KimageVoffset.template_len(),
            Some(MOV_IMM64_LEN)
        );
        assert_eq!(CallbackId::FinalCtrEl0.template_len(), Some(MOV_IMM64_LEN));
        assert_eq!(
            CallbackId::HypVectorBranch.template_len(),
            Some(HYP_VECTOR_BRANCH_LEN)
        );
        assert_eq!(
            CallbackId::BhbLoopIter.template_len(),
            Some(BHB_LOOP_ITER_LEN)
        );
    }

    #[test]
    fn kern_hyp_va_one_gib_words() {
        let t = kern_hyp_va_template(0).expect("template");
        let mut out = t;
        patch_kern_hyp_va(&one_gib(), &site(CallbackId::KernHypVa, 0, &t), &mut out)
            .expect("patched");
        assert_eq!(
            out,
            [
                0x9240_7400,
                0x93c0_7800,
                0x9100_0000,
                0x9140_8000,
                0x93c0_8800
            ]
        );
    }

    #[test]
    fn kern_hyp_va_rejects_bad_templates() {
        let l = one_gib();
        let t = kern_hyp_va_template(3).expect("template");
        let mut out = [0u32; 5];
        // Wrong length.
        assert_eq!(
            patch_kern_hyp_va(&l, &site(CallbackId::KernHypVa, 0, &t[..4]), &mut out[..4]),
            Err(CallbackError::TemplateLength {
                expected: 5,
                found: 4
            })
        );
        // Each slot replaced by a NOP.
        for i in 0..5 {
            let mut bad = t;
            bad[i] = NOP;
            let mut out = bad;
            assert_eq!(
                patch_kern_hyp_va(&l, &site(CallbackId::KernHypVa, 0, &bad), &mut out),
                Err(CallbackError::UnexpectedTemplate {
                    index: i,
                    word: NOP
                })
            );
            assert_eq!(out, bad, "a refused site is not written");
        }
        // Register 31 and a broken chain.
        let sp = kern_hyp_va_template(31).expect("template");
        assert!(matches!(
            patch_kern_hyp_va(&l, &site(CallbackId::KernHypVa, 0, &sp), &mut out),
            Err(CallbackError::UnexpectedTemplate { index: 0, .. })
        ));
        let mut broken = t;
        broken[2] = insn::add_x_imm(3, 4, 0).expect("add");
        assert!(matches!(
            patch_kern_hyp_va(&l, &site(CallbackId::KernHypVa, 0, &broken), &mut out),
            Err(CallbackError::UnexpectedTemplate { index: 2, .. })
        ));
        // A 32-bit AND is not the template.
        let mut narrow = t;
        narrow[0] = Insn::AndImm {
            sf: false,
            rd: 3,
            rn: 3,
            imm: 1,
        }
        .encode()
        .expect("and w");
        assert!(matches!(
            patch_kern_hyp_va(&l, &site(CallbackId::KernHypVa, 0, &narrow), &mut out),
            Err(CallbackError::UnexpectedTemplate { index: 0, .. })
        ));
    }

    #[test]
    fn mov_imm64_template_checks() {
        let t = mov_imm64_words(5, 0).expect("template");
        let mut out = t;
        patch_mov_imm64(
            0x1234_5678_9abc_def0,
            &site(CallbackId::KimageVoffset, 0, &t),
            &mut out,
        )
        .expect("patched");
        assert_eq!(
            out,
            mov_imm64_words(5, 0x1234_5678_9abc_def0).expect("words")
        );
        // NOPs after the MOVZ are accepted.
        let t2 = [t[0], NOP, NOP, NOP];
        let mut out2 = t2;
        patch_mov_imm64(7, &site(CallbackId::FinalCtrEl0, 0, &t2), &mut out2).expect("patched");
        assert_eq!(out2, mov_imm64_words(5, 7).expect("words"));
        // A MOVK first, or a MOVK of another register, is refused.
        let bad = [t[1], t[1], t[2], t[3]];
        assert!(matches!(
            patch_mov_imm64(7, &site(CallbackId::FinalCtrEl0, 0, &bad), &mut out2),
            Err(CallbackError::UnexpectedTemplate { index: 0, .. })
        ));
        let other = mov_imm64_words(6, 0).expect("template");
        let bad = [t[0], t[1], other[2], t[3]];
        assert!(matches!(
            patch_mov_imm64(7, &site(CallbackId::FinalCtrEl0, 0, &bad), &mut out2),
            Err(CallbackError::UnexpectedTemplate { index: 2, .. })
        ));
    }

    #[test]
    fn vector_branch() {
        let t = [NOP; 4];
        let mut out = t;
        let vector = 0x0000_8000_4080_0800;
        // Entry 9 (offset 0x480) of the hardening vector, site 8 bytes into it.
        let s = site(CallbackId::HypVectorBranch, 0xffff_8000_1000_0488, &t);
        patch_hyp_vector_branch(vector, &s, &mut out).expect("patched");
        let a = vector + 0x480 + 8;
        assert_eq!(
            out[0],
            insn::movz_x(0, (a & 0xffff) as u16, 0).expect("movz")
        );
        assert_eq!(
            out[1],
            insn::movk_x(0, ((a >> 16) & 0xffff) as u16, 16).expect("movk")
        );
        assert_eq!(
            out[2],
            insn::movk_x(0, ((a >> 32) & 0xffff) as u16, 32).expect("movk")
        );
        assert_eq!(out[3], 0xd61f_0000, "br x0");
        // Misaligned vector, address beyond 48 bits, non-NOP template.
        let mut out = t;
        assert!(patch_hyp_vector_branch(vector + 4, &s, &mut out).is_err());
        assert!(patch_hyp_vector_branch(1 << 48, &s, &mut out).is_err());
        assert_eq!(out, t);
        let bad = [NOP, NOP, 0xd61f_0000, NOP];
        assert!(matches!(
            patch_hyp_vector_branch(
                vector,
                &site(CallbackId::HypVectorBranch, 0, &bad),
                &mut out
            ),
            Err(CallbackError::UnexpectedTemplate { index: 2, .. })
        ));
    }

    #[test]
    fn bhb_loop_iter() {
        let x = [insn::movz_x(9, 32, 0).expect("movz")];
        let mut out = x;
        patch_bhb_loop_iter(11, &site(CallbackId::BhbLoopIter, 0, &x), &mut out).expect("ok");
        assert_eq!(out[0], insn::movz_x(9, 11, 0).expect("movz"));
        let w = [Insn::Movz {
            sf: false,
            rd: 2,
            imm16: 32,
            shift: 0,
        }
        .encode()
        .expect("movz w")];
        let mut out = w;
        patch_bhb_loop_iter(24, &site(CallbackId::BhbLoopIter, 0, &w), &mut out).expect("ok");
        assert_eq!(out[0], 0x5280_0302, "movz w2, #24");
        assert!(patch_bhb_loop_iter(0, &site(CallbackId::BhbLoopIter, 0, &w), &mut out).is_err());
        let nop = [NOP];
        assert!(matches!(
            patch_bhb_loop_iter(8, &site(CallbackId::BhbLoopIter, 0, &nop), &mut out),
            Err(CallbackError::UnexpectedTemplate { index: 0, .. })
        ));
    }

    #[test]
    fn nops() {
        let t = [0x1400_0002u32, 0x1400_0001];
        let mut out = t;
        patch_nops(&site(CallbackId::PatchNops, 0, &t), &mut out).expect("ok");
        assert_eq!(out, [NOP, NOP]);
        let mut empty: [u32; 0] = [];
        assert!(patch_nops(&site(CallbackId::PatchNops, 0, &[]), &mut empty).is_err());
    }
}
