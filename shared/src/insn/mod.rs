//! A64 instruction encoders and decoders: what the patcher relocates and what the
//! callbacks emit. Every encoder range-checks its operands and returns an error rather
//! than truncating. [`Insn`] is the one decoded form; [`Insn::encode`] and [`decode`]
//! are inverses on every instruction this module knows.
//!
//! Register numbers are plain `u8` in `0..=31`; 31 means XZR or SP as the
//! instruction defines it. `sf` selects the 64-bit (X) form.
//!
//! Files: this one holds the types and the small helpers; `codec.rs` the bit layout of
//! each class (encoder and decoder side by side); `bitmask.rs` the logical-immediate
//! maths. `shared/tests/insn_llvm_mc.rs` cross-checks every encoder against LLVM's
//! assembler.

use core::fmt;

mod bitmask;
mod codec;
#[cfg(test)]
mod tests;

pub use bitmask::{decode_bitmask_imm, encode_bitmask_imm};

/// The A64 NOP (`hint #0`).
pub const NOP: u32 = 0xd503_201f;

/// Condition codes of `B.cond`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum Cond {
    Eq = 0,
    Ne = 1,
    Cs = 2,
    Cc = 3,
    Mi = 4,
    Pl = 5,
    Vs = 6,
    Vc = 7,
    Hi = 8,
    Ls = 9,
    Ge = 10,
    Lt = 11,
    Gt = 12,
    Le = 13,
    Al = 14,
    Nv = 15,
}

/// A decoded instruction of one of the classes this project encodes or must recognise.
/// Branch and PC-relative offsets are in bytes, relative to the instruction's own address
/// (for ADRP: relative to its 4 KiB page, and a multiple of 4096).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Insn {
    /// `NOP`.
    Nop,
    /// `B label`, ±128 MiB.
    B {
        /// Byte offset, a multiple of 4 in `-2^27..=2^27-4`.
        offset: i64,
    },
    /// `BL label`, ±128 MiB.
    Bl {
        /// Byte offset, a multiple of 4 in `-2^27..=2^27-4`.
        offset: i64,
    },
    /// `B.cond label`, ±1 MiB.
    BCond {
        /// The condition.
        cond: Cond,
        /// Byte offset, a multiple of 4 in `-2^20..=2^20-4`.
        offset: i64,
    },
    /// `CBZ`/`CBNZ Rt, label`, ±1 MiB.
    Cbz {
        /// 64-bit register (X) form.
        sf: bool,
        /// `CBNZ` rather than `CBZ`.
        nonzero: bool,
        /// Tested register (31 = ZR).
        rt: u8,
        /// Byte offset, a multiple of 4 in `-2^20..=2^20-4`.
        offset: i64,
    },
    /// `TBZ`/`TBNZ Rt, #bit, label`, ±32 KiB; `bit` in 0..=63 (the X form iff bit ≥ 32).
    Tbz {
        /// `TBNZ` rather than `TBZ`.
        nonzero: bool,
        /// Tested register (31 = ZR).
        rt: u8,
        /// Tested bit number.
        bit: u8,
        /// Byte offset, a multiple of 4 in `-2^15..=2^15-4`.
        offset: i64,
    },
    /// `ADR Xd, label`, ±1 MiB.
    Adr {
        /// Destination (31 = XZR).
        rd: u8,
        /// Byte offset in `-2^20..=2^20-1`.
        offset: i64,
    },
    /// `ADRP Xd, label`, ±4 GiB in pages; `offset` is a multiple of 4096.
    Adrp {
        /// Destination (31 = XZR).
        rd: u8,
        /// Offset between the 4 KiB pages, a multiple of 4096 in `-2^32..=2^32-4096`.
        offset: i64,
    },
    /// `MOVZ Rd, #imm16, LSL #shift` (`shift` 0/16 for W, 0/16/32/48 for X).
    Movz {
        /// 64-bit register (X) form.
        sf: bool,
        /// Destination (31 = ZR).
        rd: u8,
        /// The 16-bit immediate.
        imm16: u16,
        /// Left shift of the immediate.
        shift: u8,
    },
    /// `MOVK Rd, #imm16, LSL #shift`.
    Movk {
        /// 64-bit register (X) form.
        sf: bool,
        /// Destination (31 = ZR).
        rd: u8,
        /// The 16-bit immediate.
        imm16: u16,
        /// Left shift of the immediate (0/16 for W, 0/16/32/48 for X).
        shift: u8,
    },
    /// `ADD Rd|SP, Rn|SP, #imm12 {, LSL #12}`.
    AddImm {
        /// 64-bit register (X) form.
        sf: bool,
        /// Destination (31 = SP).
        rd: u8,
        /// Source (31 = SP).
        rn: u8,
        /// The unsigned 12-bit immediate, `0..=4095`.
        imm12: u16,
        /// Whether the immediate is shifted left by 12.
        lsl12: bool,
    },
    /// `AND Rd|SP, Rn, #imm` with `imm` a valid logical (bitmask) immediate for the width.
    AndImm {
        /// 64-bit register (X) form.
        sf: bool,
        /// Destination (31 = SP).
        rd: u8,
        /// Source (31 = ZR).
        rn: u8,
        /// The mask value (upper 32 bits clear for the W form).
        imm: u64,
    },
    /// `EXTR Rd, Rn, Rm, #lsb` (`ROR Rd, Rn, #lsb` when `rn == rm`).
    Extr {
        /// 64-bit register (X) form.
        sf: bool,
        /// Destination (31 = ZR).
        rd: u8,
        /// High half source (31 = ZR).
        rn: u8,
        /// Low half source (31 = ZR).
        rm: u8,
        /// Lowest extracted bit, below the register width.
        lsb: u8,
    },
    /// `BR Xn`.
    Br {
        /// Target register.
        rn: u8,
    },
    /// `HVC #imm16`.
    Hvc {
        /// The call immediate.
        imm16: u16,
    },
    /// `SMC #imm16`.
    Smc {
        /// The call immediate.
        imm16: u16,
    },
    /// `LDR Rt, label` (general register, W/X), a literal load.
    LdrLiteral {
        /// 64-bit register (X) form.
        sf: bool,
        /// Destination (31 = ZR).
        rt: u8,
        /// Byte offset, a multiple of 4 in `-2^20..=2^20-4`.
        offset: i64,
    },
    /// `LDR St|Dt|Qt, label` (SIMD&FP literal load; `opc` 0/1/2 = S/D/Q).
    LdrSimdLiteral {
        /// Size: 0 = S, 1 = D, 2 = Q.
        opc: u8,
        /// Destination SIMD&FP register.
        rt: u8,
        /// Byte offset, a multiple of 4 in `-2^20..=2^20-4`.
        offset: i64,
    },
    /// `LDRSW Xt, label`.
    LdrswLiteral {
        /// Destination (31 = XZR).
        rt: u8,
        /// Byte offset, a multiple of 4 in `-2^20..=2^20-4`.
        offset: i64,
    },
    /// `PRFM #prfop, label`.
    PrfmLiteral {
        /// Prefetch operation, `0..=31`.
        prfop: u8,
        /// Byte offset, a multiple of 4 in `-2^20..=2^20-4`.
        offset: i64,
    },
}

/// Why an instruction could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsnError {
    /// A register number above 31.
    BadRegister(u8),
    /// A PC-relative offset outside the instruction's reach.
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
        /// Lowest reachable offset.
        min: i64,
        /// Highest reachable offset.
        max: i64,
    },
    /// A PC-relative offset that is not a multiple of the required alignment.
    OffsetMisaligned {
        /// The offset asked for.
        offset: i64,
        /// The required alignment in bytes.
        align: i64,
    },
    /// An immediate outside its field (`what` names the operand).
    ImmediateOutOfRange {
        /// The operand, e.g. `"ADD imm12"`.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A value that no logical (bitmask) immediate of this width can express.
    NotABitmaskImmediate {
        /// The value asked for.
        value: u64,
        /// Whether the 64-bit form was asked for.
        sf: bool,
    },
}

impl fmt::Display for InsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            InsnError::BadRegister(r) => write!(f, "register number {r} is not in 0..=31"),
            InsnError::OffsetOutOfRange { offset, min, max } => write!(
                f,
                "PC-relative offset {offset} is out of reach (allowed {min}..={max})"
            ),
            InsnError::OffsetMisaligned { offset, align } => write!(
                f,
                "PC-relative offset {offset} is not a multiple of {align}"
            ),
            InsnError::ImmediateOutOfRange { what, value } => {
                write!(f, "{what} value {value} does not fit the instruction")
            }
            InsnError::NotABitmaskImmediate { value, sf } => write!(
                f,
                "{value:#x} is not a {}-bit logical immediate",
                if sf { 64 } else { 32 }
            ),
        }
    }
}

impl Cond {
    /// The condition with the given 4-bit encoding (higher bits are ignored).
    pub const fn from_bits(bits: u8) -> Cond {
        match bits & 0xf {
            0 => Cond::Eq,
            1 => Cond::Ne,
            2 => Cond::Cs,
            3 => Cond::Cc,
            4 => Cond::Mi,
            5 => Cond::Pl,
            6 => Cond::Vs,
            7 => Cond::Vc,
            8 => Cond::Hi,
            9 => Cond::Ls,
            10 => Cond::Ge,
            11 => Cond::Lt,
            12 => Cond::Gt,
            13 => Cond::Le,
            14 => Cond::Al,
            _ => Cond::Nv,
        }
    }

    /// The assembler suffix, e.g. `"eq"` for `b.eq`.
    pub const fn mnemonic(self) -> &'static str {
        match self {
            Cond::Eq => "eq",
            Cond::Ne => "ne",
            Cond::Cs => "cs",
            Cond::Cc => "cc",
            Cond::Mi => "mi",
            Cond::Pl => "pl",
            Cond::Vs => "vs",
            Cond::Vc => "vc",
            Cond::Hi => "hi",
            Cond::Ls => "ls",
            Cond::Ge => "ge",
            Cond::Lt => "lt",
            Cond::Gt => "gt",
            Cond::Le => "le",
            Cond::Al => "al",
            Cond::Nv => "nv",
        }
    }
}

/// Decodes `word`, or `None` if it is not one of the classes in [`Insn`].
///
/// Reserved field combinations inside a class (a W-form MOVZ/MOVK with shift 32/48, an
/// EXTR whose N differs from sf, SIMD&FP literal opc 3, a reserved or non-canonical
/// logical immediate) also give `None`, so that `decode(w)?.encode() == Ok(w)` always.
pub fn decode(word: u32) -> Option<Insn> {
    codec::decode(word)
}

impl Insn {
    /// Encodes the instruction, checking every operand.
    pub fn encode(&self) -> Result<u32, InsnError> {
        codec::encode(self)
    }

    /// The PC-relative branch offset of B/BL/B.cond/CBZ/CBNZ/TBZ/TBNZ, else `None`.
    pub fn branch_offset(&self) -> Option<i64> {
        match *self {
            Insn::B { offset }
            | Insn::Bl { offset }
            | Insn::BCond { offset, .. }
            | Insn::Cbz { offset, .. }
            | Insn::Tbz { offset, .. } => Some(offset),
            _ => None,
        }
    }

    /// The same branch with a new offset (range- and alignment-checked on encode);
    /// `None` if this is not an immediate branch.
    pub fn with_branch_offset(&self, offset: i64) -> Option<Insn> {
        let mut out = *self;
        match &mut out {
            Insn::B { offset: o }
            | Insn::Bl { offset: o }
            | Insn::BCond { offset: o, .. }
            | Insn::Cbz { offset: o, .. }
            | Insn::Tbz { offset: o, .. } => *o = offset,
            _ => return None,
        }
        Some(out)
    }

    /// Whether this reads memory or computes an address PC-relatively in a way the
    /// patcher cannot relocate: the literal loads and ADR (Linux's "uses literal" class).
    pub fn is_unrelocatable_literal(&self) -> bool {
        matches!(
            self,
            Insn::Adr { .. }
                | Insn::LdrLiteral { .. }
                | Insn::LdrSimdLiteral { .. }
                | Insn::LdrswLiteral { .. }
                | Insn::PrfmLiteral { .. }
        )
    }
}

/// Destination register field (bits 4:0).
pub const fn rd(word: u32) -> u8 {
    (word & 0x1f) as u8
}

/// First source register field (bits 9:5).
pub const fn rn(word: u32) -> u8 {
    ((word >> 5) & 0x1f) as u8
}

// Convenience constructors used by the callbacks; each is `Insn::… .encode()`.

/// `B` to `offset` bytes away.
pub fn b(offset: i64) -> Result<u32, InsnError> {
    Insn::B { offset }.encode()
}

/// `MOVZ Xd, #imm16, LSL #shift`.
pub fn movz_x(rd: u8, imm16: u16, shift: u8) -> Result<u32, InsnError> {
    Insn::Movz {
        sf: true,
        rd,
        imm16,
        shift,
    }
    .encode()
}

/// `MOVK Xd, #imm16, LSL #shift`.
pub fn movk_x(rd: u8, imm16: u16, shift: u8) -> Result<u32, InsnError> {
    Insn::Movk {
        sf: true,
        rd,
        imm16,
        shift,
    }
    .encode()
}

/// `ADD Xd, Xn, #imm` where `imm` fits in 12 bits, or is a 12-bit value shifted left 12.
/// Register 31 is SP. Values below 4096 (including 0) use the unshifted form.
pub fn add_x_imm(rd: u8, rn: u8, imm: u64) -> Result<u32, InsnError> {
    let (imm12, lsl12) = if imm <= 0xfff {
        (imm, false)
    } else if imm & 0xfff == 0 && imm >> 12 <= 0xfff {
        (imm >> 12, true)
    } else {
        return Err(InsnError::ImmediateOutOfRange {
            what: "ADD immediate",
            value: imm,
        });
    };
    Insn::AddImm {
        sf: true,
        rd,
        rn,
        // Both branches above leave at most 12 bits.
        imm12: imm12 as u16,
        lsl12,
    }
    .encode()
}

/// `AND Xd, Xn, #mask` (any valid 64-bit bitmask immediate).
pub fn and_x_imm(rd: u8, rn: u8, mask: u64) -> Result<u32, InsnError> {
    Insn::AndImm {
        sf: true,
        rd,
        rn,
        imm: mask,
    }
    .encode()
}

/// `ROR Xd, Xn, #shift` (`EXTR Xd, Xn, Xn, #shift`), `shift` in 0..=63.
pub fn ror_x(rd: u8, rn: u8, shift: u8) -> Result<u32, InsnError> {
    Insn::Extr {
        sf: true,
        rd,
        rn,
        rm: rn,
        lsb: shift,
    }
    .encode()
}

/// `BR Xn`.
pub fn br(rn: u8) -> Result<u32, InsnError> {
    Insn::Br { rn }.encode()
}

/// `BL` to `offset` bytes away.
pub fn bl(offset: i64) -> Result<u32, InsnError> {
    Insn::Bl { offset }.encode()
}

/// `HVC #imm16`.
pub fn hvc(imm16: u16) -> Result<u32, InsnError> {
    Insn::Hvc { imm16 }.encode()
}

/// `SMC #imm16`.
pub fn smc(imm16: u16) -> Result<u32, InsnError> {
    Insn::Smc { imm16 }.encode()
}
