//! A64 instruction encoders and decoders: what the patcher relocates and what the
//! callbacks emit. Every encoder range-checks its operands and returns an error rather
//! than truncating. [`Insn`] is the one decoded form; [`Insn::encode`] and [`decode`]
//! are inverses on every instruction this module knows.
//!
//! Register numbers are plain `u8` in `0..=31`; 31 means XZR or SP as the
//! instruction defines it. `sf` selects the 64-bit (X) form.

use core::fmt;

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
    B { offset: i64 },
    /// `BL label`, ±128 MiB.
    Bl { offset: i64 },
    /// `B.cond label`, ±1 MiB.
    BCond { cond: Cond, offset: i64 },
    /// `CBZ`/`CBNZ Rt, label`, ±1 MiB.
    Cbz {
        sf: bool,
        nonzero: bool,
        rt: u8,
        offset: i64,
    },
    /// `TBZ`/`TBNZ Rt, #bit, label`, ±32 KiB; `bit` in 0..=63 (the X form iff bit ≥ 32).
    Tbz {
        nonzero: bool,
        rt: u8,
        bit: u8,
        offset: i64,
    },
    /// `ADR Xd, label`, ±1 MiB.
    Adr { rd: u8, offset: i64 },
    /// `ADRP Xd, label`, ±4 GiB in pages; `offset` is a multiple of 4096.
    Adrp { rd: u8, offset: i64 },
    /// `MOVZ Rd, #imm16, LSL #shift` (`shift` 0/16 for W, 0/16/32/48 for X).
    Movz {
        sf: bool,
        rd: u8,
        imm16: u16,
        shift: u8,
    },
    /// `MOVK Rd, #imm16, LSL #shift`.
    Movk {
        sf: bool,
        rd: u8,
        imm16: u16,
        shift: u8,
    },
    /// `ADD Rd|SP, Rn|SP, #imm12 {, LSL #12}`.
    AddImm {
        sf: bool,
        rd: u8,
        rn: u8,
        imm12: u16,
        lsl12: bool,
    },
    /// `AND Rd|SP, Rn, #imm` with `imm` a valid logical (bitmask) immediate for the width.
    AndImm { sf: bool, rd: u8, rn: u8, imm: u64 },
    /// `EXTR Rd, Rn, Rm, #lsb` (`ROR Rd, Rn, #lsb` when `rn == rm`).
    Extr {
        sf: bool,
        rd: u8,
        rn: u8,
        rm: u8,
        lsb: u8,
    },
    /// `BR Xn`.
    Br { rn: u8 },
    /// `HVC #imm16`.
    Hvc { imm16: u16 },
    /// `SMC #imm16`.
    Smc { imm16: u16 },
    /// `LDR Rt, label` (general register, W/X), a literal load.
    LdrLiteral { sf: bool, rt: u8, offset: i64 },
    /// `LDR St|Dt|Qt, label` (SIMD&FP literal load; `opc` 0/1/2 = S/D/Q).
    LdrSimdLiteral { opc: u8, rt: u8, offset: i64 },
    /// `LDRSW Xt, label`.
    LdrswLiteral { rt: u8, offset: i64 },
    /// `PRFM #prfop, label`.
    PrfmLiteral { prfop: u8, offset: i64 },
}

/// Why an instruction could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsnError {
    /// A register number above 31.
    BadRegister(u8),
    /// A PC-relative offset outside the instruction's reach.
    OffsetOutOfRange { offset: i64, min: i64, max: i64 },
    /// A PC-relative offset that is not a multiple of the required alignment.
    OffsetMisaligned { offset: i64, align: i64 },
    /// An immediate outside its field (`what` names the operand).
    ImmediateOutOfRange { what: &'static str, value: u64 },
    /// A value that no logical (bitmask) immediate of this width can express.
    NotABitmaskImmediate { value: u64, sf: bool },
}

impl fmt::Display for InsnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

/// Decodes `word`, or `None` if it is not one of the classes in [`Insn`].
pub fn decode(word: u32) -> Option<Insn> {
    todo!()
}

impl Insn {
    /// Encodes the instruction, checking every operand.
    pub fn encode(&self) -> Result<u32, InsnError> {
        todo!()
    }

    /// The PC-relative branch offset of B/BL/B.cond/CBZ/CBNZ/TBZ/TBNZ, else `None`.
    pub fn branch_offset(&self) -> Option<i64> {
        todo!()
    }

    /// The same branch with a new offset (range- and alignment-checked on encode);
    /// `None` if this is not an immediate branch.
    pub fn with_branch_offset(&self, offset: i64) -> Option<Insn> {
        todo!()
    }

    /// Whether this reads memory or computes an address PC-relatively in a way the
    /// patcher cannot relocate: the literal loads and ADR (Linux's "uses literal" class).
    pub fn is_unrelocatable_literal(&self) -> bool {
        todo!()
    }
}

/// Encodes `value` as a logical immediate of the given width: `(N, immr, imms)`, or
/// `None` if it is not a repeating, rotated run of ones (all-zeros and all-ones are not).
pub fn encode_bitmask_imm(value: u64, sf: bool) -> Option<(u8, u8, u8)> {
    todo!()
}

/// Decodes a logical immediate's `(N, immr, imms)` for the given width, or `None` if the
/// combination is reserved.
pub fn decode_bitmask_imm(n: u8, immr: u8, imms: u8, sf: bool) -> Option<u64> {
    todo!()
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
pub fn add_x_imm(rd: u8, rn: u8, imm: u64) -> Result<u32, InsnError> {
    todo!()
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
