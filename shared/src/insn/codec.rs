//! The bit layout of every instruction class in [`Insn`]: one encoder arm and one decoder
//! per class, built from shared field helpers so the two directions describe the same
//! layout. The class table [`CLASSES`] is the single list of mask/value pairs.

use super::bitmask::{decode_bitmask_imm, encode_bitmask_imm};
use super::{Cond, Insn, InsnError, NOP};

/// A signed PC-relative immediate field `bits` wide, counting units of `scale` bytes.
#[derive(Clone, Copy)]
pub(super) struct PcRel {
    bits: u32,
    scale: i64,
}

/// B/BL: imm26 words, ±128 MiB.
pub(super) const IMM26: PcRel = PcRel { bits: 26, scale: 4 };
/// B.cond, CBZ/CBNZ, literal loads: imm19 words, ±1 MiB.
pub(super) const IMM19: PcRel = PcRel { bits: 19, scale: 4 };
/// TBZ/TBNZ: imm14 words, ±32 KiB.
pub(super) const IMM14: PcRel = PcRel { bits: 14, scale: 4 };
/// ADR: imm21 bytes, ±1 MiB.
pub(super) const ADR21: PcRel = PcRel { bits: 21, scale: 1 };
/// ADRP: imm21 pages, ±4 GiB.
pub(super) const ADRP21: PcRel = PcRel {
    bits: 21,
    scale: 4096,
};

impl PcRel {
    /// Lowest reachable offset in bytes.
    pub(super) const fn min(self) -> i64 {
        -(1i64 << (self.bits - 1)) * self.scale
    }

    /// Highest reachable offset in bytes.
    pub(super) const fn max(self) -> i64 {
        ((1i64 << (self.bits - 1)) - 1) * self.scale
    }

    /// The field bits (two's complement, `bits` wide) for `offset`, range- and
    /// alignment-checked.
    fn field(self, offset: i64) -> Result<u32, InsnError> {
        let (min, max) = (self.min(), self.max());
        if offset < min || offset > max {
            return Err(InsnError::OffsetOutOfRange { offset, min, max });
        }
        if offset % self.scale != 0 {
            return Err(InsnError::OffsetMisaligned {
                offset,
                align: self.scale,
            });
        }
        // In range, so the quotient fits in `bits` signed bits; keep its low bits.
        Ok(((offset / self.scale) as u32) & ((1u32 << self.bits) - 1))
    }

    /// The byte offset a `bits`-wide field holds.
    fn offset(self, field: u32) -> i64 {
        let shift = 32 - self.bits;
        let units = ((field << shift) as i32) >> shift;
        i64::from(units) * self.scale
    }
}

/// A register field value, checked to be in `0..=31`.
fn reg(r: u8) -> Result<u32, InsnError> {
    if r > 31 {
        Err(InsnError::BadRegister(r))
    } else {
        Ok(u32::from(r))
    }
}

/// `flag` placed at bit `pos`.
fn bit(flag: bool, pos: u32) -> u32 {
    u32::from(flag) << pos
}

/// The field at bits `lo..lo+width` of `w`.
const fn field(w: u32, lo: u32, width: u32) -> u32 {
    (w >> lo) & ((1 << width) - 1)
}

/// ADR/ADRP scatter their 21-bit immediate as immlo (bits 30:29) and immhi (23:5).
fn adr_imm(imm21: u32) -> u32 {
    ((imm21 & 3) << 29) | ((imm21 >> 2) << 5)
}

/// Gathers the 21-bit ADR/ADRP immediate back.
const fn adr_imm_of(w: u32) -> u32 {
    (field(w, 5, 19) << 2) | field(w, 29, 2)
}

/// MOVZ/MOVK: `base | sf | hw | imm16 | Rd`, with the shift checked for the width.
fn move_wide(base: u32, sf: bool, rd: u8, imm16: u16, shift: u8) -> Result<u32, InsnError> {
    let max_shift = if sf { 48 } else { 16 };
    if !shift.is_multiple_of(16) || shift > max_shift {
        return Err(InsnError::ImmediateOutOfRange {
            what: "MOVZ/MOVK shift",
            value: u64::from(shift),
        });
    }
    Ok(base | bit(sf, 31) | (u32::from(shift / 16) << 21) | (u32::from(imm16) << 5) | reg(rd)?)
}

/// Encodes one instruction; see [`Insn::encode`].
pub(super) fn encode(insn: &Insn) -> Result<u32, InsnError> {
    Ok(match *insn {
        Insn::Nop => NOP,
        Insn::B { offset } => 0x1400_0000 | IMM26.field(offset)?,
        Insn::Bl { offset } => 0x9400_0000 | IMM26.field(offset)?,
        Insn::BCond { cond, offset } => 0x5400_0000 | (IMM19.field(offset)? << 5) | cond as u32,
        Insn::Cbz {
            sf,
            nonzero,
            rt,
            offset,
        } => 0x3400_0000 | bit(sf, 31) | bit(nonzero, 24) | (IMM19.field(offset)? << 5) | reg(rt)?,
        Insn::Tbz {
            nonzero,
            rt,
            bit: b,
            offset,
        } => {
            if b > 63 {
                return Err(InsnError::ImmediateOutOfRange {
                    what: "TBZ/TBNZ bit number",
                    value: u64::from(b),
                });
            }
            0x3600_0000
                | (u32::from(b >> 5) << 31)
                | bit(nonzero, 24)
                | (u32::from(b & 31) << 19)
                | (IMM14.field(offset)? << 5)
                | reg(rt)?
        }
        Insn::Adr { rd, offset } => 0x1000_0000 | adr_imm(ADR21.field(offset)?) | reg(rd)?,
        Insn::Adrp { rd, offset } => 0x9000_0000 | adr_imm(ADRP21.field(offset)?) | reg(rd)?,
        Insn::Movz {
            sf,
            rd,
            imm16,
            shift,
        } => move_wide(0x5280_0000, sf, rd, imm16, shift)?,
        Insn::Movk {
            sf,
            rd,
            imm16,
            shift,
        } => move_wide(0x7280_0000, sf, rd, imm16, shift)?,
        Insn::AddImm {
            sf,
            rd,
            rn,
            imm12,
            lsl12,
        } => {
            if imm12 > 0xfff {
                return Err(InsnError::ImmediateOutOfRange {
                    what: "ADD imm12",
                    value: u64::from(imm12),
                });
            }
            0x1100_0000
                | bit(sf, 31)
                | bit(lsl12, 22)
                | (u32::from(imm12) << 10)
                | (reg(rn)? << 5)
                | reg(rd)?
        }
        Insn::AndImm { sf, rd, rn, imm } => {
            let (n, immr, imms) = encode_bitmask_imm(imm, sf)
                .ok_or(InsnError::NotABitmaskImmediate { value: imm, sf })?;
            0x1200_0000
                | bit(sf, 31)
                | (u32::from(n) << 22)
                | (u32::from(immr) << 16)
                | (u32::from(imms) << 10)
                | (reg(rn)? << 5)
                | reg(rd)?
        }
        Insn::Extr {
            sf,
            rd,
            rn,
            rm,
            lsb,
        } => {
            let width = if sf { 64 } else { 32 };
            if lsb >= width {
                return Err(InsnError::ImmediateOutOfRange {
                    what: "EXTR/ROR shift",
                    value: u64::from(lsb),
                });
            }
            // N must equal sf.
            0x1380_0000
                | bit(sf, 31)
                | bit(sf, 22)
                | (reg(rm)? << 16)
                | (u32::from(lsb) << 10)
                | (reg(rn)? << 5)
                | reg(rd)?
        }
        Insn::Br { rn } => 0xd61f_0000 | (reg(rn)? << 5),
        Insn::Hvc { imm16 } => 0xd400_0002 | (u32::from(imm16) << 5),
        Insn::Smc { imm16 } => 0xd400_0003 | (u32::from(imm16) << 5),
        Insn::LdrLiteral { sf, rt, offset } => {
            0x1800_0000 | bit(sf, 30) | (IMM19.field(offset)? << 5) | reg(rt)?
        }
        Insn::LdrSimdLiteral { opc, rt, offset } => {
            if opc > 2 {
                return Err(InsnError::ImmediateOutOfRange {
                    what: "LDR (SIMD&FP literal) opc",
                    value: u64::from(opc),
                });
            }
            0x1c00_0000 | (u32::from(opc) << 30) | (IMM19.field(offset)? << 5) | reg(rt)?
        }
        Insn::LdrswLiteral { rt, offset } => 0x9800_0000 | (IMM19.field(offset)? << 5) | reg(rt)?,
        Insn::PrfmLiteral { prfop, offset } => {
            if prfop > 31 {
                return Err(InsnError::ImmediateOutOfRange {
                    what: "PRFM prfop",
                    value: u64::from(prfop),
                });
            }
            0xd800_0000 | (IMM19.field(offset)? << 5) | u32::from(prfop)
        }
    })
}

/// One instruction class: every word with `word & mask == value` is handed to `decode`,
/// which may still refuse reserved field combinations.
pub(super) struct Class {
    /// Name, for the tests' messages.
    #[cfg_attr(not(test), allow(dead_code, reason = "only the tests read it"))]
    pub(super) name: &'static str,
    /// Bits that identify the class.
    pub(super) mask: u32,
    /// Their required value.
    pub(super) value: u32,
    /// Field extraction.
    pub(super) decode: fn(u32) -> Option<Insn>,
}

/// The known classes; their mask/value pairs are pairwise disjoint (a unit test checks).
pub(super) const CLASSES: &[Class] = &[
    Class {
        name: "NOP",
        mask: 0xffff_ffff,
        value: NOP,
        decode: |_| Some(Insn::Nop),
    },
    Class {
        name: "B/BL",
        mask: 0x7c00_0000,
        value: 0x1400_0000,
        decode: |w| {
            let offset = IMM26.offset(field(w, 0, 26));
            Some(if w >> 31 == 1 {
                Insn::Bl { offset }
            } else {
                Insn::B { offset }
            })
        },
    },
    Class {
        name: "B.cond",
        mask: 0xff00_0010,
        value: 0x5400_0000,
        decode: |w| {
            Some(Insn::BCond {
                cond: Cond::from_bits(field(w, 0, 4) as u8),
                offset: IMM19.offset(field(w, 5, 19)),
            })
        },
    },
    Class {
        name: "CBZ/CBNZ",
        mask: 0x7e00_0000,
        value: 0x3400_0000,
        decode: |w| {
            Some(Insn::Cbz {
                sf: field(w, 31, 1) == 1,
                nonzero: field(w, 24, 1) == 1,
                rt: field(w, 0, 5) as u8,
                offset: IMM19.offset(field(w, 5, 19)),
            })
        },
    },
    Class {
        name: "TBZ/TBNZ",
        mask: 0x7e00_0000,
        value: 0x3600_0000,
        decode: |w| {
            Some(Insn::Tbz {
                nonzero: field(w, 24, 1) == 1,
                rt: field(w, 0, 5) as u8,
                bit: ((field(w, 31, 1) << 5) | field(w, 19, 5)) as u8,
                offset: IMM14.offset(field(w, 5, 14)),
            })
        },
    },
    Class {
        name: "ADR/ADRP",
        mask: 0x1f00_0000,
        value: 0x1000_0000,
        decode: |w| {
            let rd = field(w, 0, 5) as u8;
            let imm = adr_imm_of(w);
            Some(if w >> 31 == 1 {
                Insn::Adrp {
                    rd,
                    offset: ADRP21.offset(imm),
                }
            } else {
                Insn::Adr {
                    rd,
                    offset: ADR21.offset(imm),
                }
            })
        },
    },
    Class {
        name: "MOVZ",
        mask: 0x7f80_0000,
        value: 0x5280_0000,
        decode: |w| {
            let (sf, rd, imm16, shift) = move_wide_fields(w)?;
            Some(Insn::Movz {
                sf,
                rd,
                imm16,
                shift,
            })
        },
    },
    Class {
        name: "MOVK",
        mask: 0x7f80_0000,
        value: 0x7280_0000,
        decode: |w| {
            let (sf, rd, imm16, shift) = move_wide_fields(w)?;
            Some(Insn::Movk {
                sf,
                rd,
                imm16,
                shift,
            })
        },
    },
    Class {
        name: "ADD (immediate)",
        mask: 0x7f80_0000,
        value: 0x1100_0000,
        decode: |w| {
            Some(Insn::AddImm {
                sf: field(w, 31, 1) == 1,
                rd: field(w, 0, 5) as u8,
                rn: field(w, 5, 5) as u8,
                imm12: field(w, 10, 12) as u16,
                lsl12: field(w, 22, 1) == 1,
            })
        },
    },
    Class {
        name: "AND (immediate)",
        mask: 0x7f80_0000,
        value: 0x1200_0000,
        decode: |w| {
            let sf = field(w, 31, 1) == 1;
            let n = field(w, 22, 1) as u8;
            let immr = field(w, 16, 6) as u8;
            let imms = field(w, 10, 6) as u8;
            let imm = decode_bitmask_imm(n, immr, imms, sf)?;
            // Only the canonical triple (immr below the element size) is accepted, so
            // that encoding the result gives back the same word; assemblers emit no other.
            if encode_bitmask_imm(imm, sf) != Some((n, immr, imms)) {
                return None;
            }
            Some(Insn::AndImm {
                sf,
                rd: field(w, 0, 5) as u8,
                rn: field(w, 5, 5) as u8,
                imm,
            })
        },
    },
    Class {
        name: "EXTR",
        mask: 0x7fa0_0000,
        value: 0x1380_0000,
        decode: |w| {
            let sf = field(w, 31, 1) == 1;
            let lsb = field(w, 10, 6) as u8;
            // N must equal sf, and the 32-bit form has only 5 bits of shift.
            if (field(w, 22, 1) == 1) != sf || (!sf && lsb >= 32) {
                return None;
            }
            Some(Insn::Extr {
                sf,
                rd: field(w, 0, 5) as u8,
                rn: field(w, 5, 5) as u8,
                rm: field(w, 16, 5) as u8,
                lsb,
            })
        },
    },
    Class {
        name: "BR",
        mask: 0xffff_fc1f,
        value: 0xd61f_0000,
        decode: |w| {
            Some(Insn::Br {
                rn: field(w, 5, 5) as u8,
            })
        },
    },
    Class {
        name: "HVC",
        mask: 0xffe0_001f,
        value: 0xd400_0002,
        decode: |w| {
            Some(Insn::Hvc {
                imm16: field(w, 5, 16) as u16,
            })
        },
    },
    Class {
        name: "SMC",
        mask: 0xffe0_001f,
        value: 0xd400_0003,
        decode: |w| {
            Some(Insn::Smc {
                imm16: field(w, 5, 16) as u16,
            })
        },
    },
    Class {
        name: "LDR (literal)",
        mask: 0xbf00_0000,
        value: 0x1800_0000,
        decode: |w| {
            Some(Insn::LdrLiteral {
                sf: field(w, 30, 1) == 1,
                rt: field(w, 0, 5) as u8,
                offset: IMM19.offset(field(w, 5, 19)),
            })
        },
    },
    Class {
        name: "LDR (SIMD&FP literal)",
        mask: 0x3f00_0000,
        value: 0x1c00_0000,
        decode: |w| {
            let opc = field(w, 30, 2) as u8;
            // opc 3 is unallocated.
            (opc <= 2).then(|| Insn::LdrSimdLiteral {
                opc,
                rt: field(w, 0, 5) as u8,
                offset: IMM19.offset(field(w, 5, 19)),
            })
        },
    },
    Class {
        name: "LDRSW (literal)",
        mask: 0xff00_0000,
        value: 0x9800_0000,
        decode: |w| {
            Some(Insn::LdrswLiteral {
                rt: field(w, 0, 5) as u8,
                offset: IMM19.offset(field(w, 5, 19)),
            })
        },
    },
    Class {
        name: "PRFM (literal)",
        mask: 0xff00_0000,
        value: 0xd800_0000,
        decode: |w| {
            Some(Insn::PrfmLiteral {
                prfop: field(w, 0, 5) as u8,
                offset: IMM19.offset(field(w, 5, 19)),
            })
        },
    },
];

/// MOVZ/MOVK fields `(sf, rd, imm16, shift)`, or `None` for the W form with hw ≥ 2.
fn move_wide_fields(w: u32) -> Option<(bool, u8, u16, u8)> {
    let sf = field(w, 31, 1) == 1;
    let hw = field(w, 21, 2) as u8;
    if !sf && hw >= 2 {
        return None;
    }
    Some((sf, field(w, 0, 5) as u8, field(w, 5, 16) as u16, hw * 16))
}

/// Decodes one word; see [`super::decode`].
pub(super) fn decode(word: u32) -> Option<Insn> {
    CLASSES
        .iter()
        .find(|c| word & c.mask == c.value)
        .and_then(|c| (c.decode)(word))
}
