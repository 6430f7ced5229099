//! Unit and property tests of the encoders/decoders. The cross-check against LLVM's
//! assembler lives in `shared/tests/insn_llvm_mc.rs`.

use super::codec::{CLASSES, IMM14, IMM19, IMM26};
use super::*;
use proptest::prelude::*;

fn enc(i: Insn) -> u32 {
    match i.encode() {
        Ok(w) => w,
        Err(e) => panic!("{i:?} failed to encode: {e}"),
    }
}

#[test]
fn worked_encodings_from_linux_facts() {
    // §1.6
    assert_eq!(NOP, 0xd503_201f);
    assert_eq!(enc(Insn::Nop), 0xd503_201f);
    assert_eq!(br(0), Ok(0xd61f_0000));
    assert_eq!(hvc(0), Ok(0xd400_0002));
    assert_eq!(smc(0), Ok(0xd400_0003));
    // §5.5, 1 GiB of RAM.
    assert_eq!(and_x_imm(0, 0, 0x3fff_ffff), Ok(0x9240_7400));
    assert_eq!(ror_x(0, 0, 30), Ok(0x93c0_7800));
    assert_eq!(add_x_imm(0, 0, 0), Ok(0x9100_0000));
    assert_eq!(add_x_imm(0, 0, 0x20 << 12), Ok(0x9140_8000));
    assert_eq!(ror_x(0, 0, 34), Ok(0x93c0_8800));
    // §5.5, 4 GiB of RAM.
    assert_eq!(and_x_imm(0, 0, 0xffff_ffff), Ok(0x9240_7c00));
    assert_eq!(ror_x(0, 0, 32), Ok(0x93c0_8000));
    assert_eq!(add_x_imm(0, 0, 8 << 12), Ok(0x9140_2000));
    // §5.5 kimage_voffset 0xffff_7fff_c7e0_0000 into x1.
    assert_eq!(movz_x(1, 0, 0), Ok(0xd280_0001));
    assert_eq!(movk_x(1, 0xc7e0, 16), Ok(0xf2b8_fc01));
    assert_eq!(movk_x(1, 0x7fff, 32), Ok(0xf2cf_ffe1));
    assert_eq!(movk_x(1, 0xffff, 48), Ok(0xf2ff_ffe1));
    // §5.5 CTR_EL0 values into x0.
    assert_eq!(movz_x(0, 0xc004, 0), Ok(0xd298_0080));
    assert_eq!(movk_x(0, 0x8444, 16), Ok(0xf2b0_8880));
    assert_eq!(movk_x(0, 0, 32), Ok(0xf2c0_0000));
    assert_eq!(movk_x(0, 0, 48), Ok(0xf2e0_0000));
    assert_eq!(movz_x(0, 0x8004, 0), Ok(0xd290_0080));
    // The §1.6 AND pattern for 2^k - 1.
    for k in 1..64u32 {
        assert_eq!(
            and_x_imm(3, 4, (1u64 << k) - 1),
            Ok(0x9240_0000 | ((k - 1) << 10) | (4 << 5) | 3),
            "k={k}"
        );
    }
}

#[test]
fn decodes_worked_encodings() {
    assert_eq!(decode(0xd503_201f), Some(Insn::Nop));
    assert_eq!(decode(0xd61f_0000), Some(Insn::Br { rn: 0 }));
    assert_eq!(decode(0xd400_0002), Some(Insn::Hvc { imm16: 0 }));
    assert_eq!(decode(0xd400_0003), Some(Insn::Smc { imm16: 0 }));
    assert_eq!(
        decode(0x9240_7400),
        Some(Insn::AndImm {
            sf: true,
            rd: 0,
            rn: 0,
            imm: 0x3fff_ffff
        })
    );
    assert_eq!(
        decode(0x93c0_7800),
        Some(Insn::Extr {
            sf: true,
            rd: 0,
            rn: 0,
            rm: 0,
            lsb: 30
        })
    );
    assert_eq!(
        decode(0x9140_8000),
        Some(Insn::AddImm {
            sf: true,
            rd: 0,
            rn: 0,
            imm12: 0x20,
            lsl12: true
        })
    );
    assert_eq!(
        decode(0xf2b8_fc01),
        Some(Insn::Movk {
            sf: true,
            rd: 1,
            imm16: 0xc7e0,
            shift: 16
        })
    );
}

/// Each PC-relative kind at and just past its limits, plus a misaligned offset.
#[test]
fn pc_relative_limits_are_exact() {
    type Make = fn(i64) -> Insn;
    let kinds: &[(&str, Make, i64, i64, i64)] = &[
        ("B", |o| Insn::B { offset: o }, -(1 << 27), (1 << 27) - 4, 4),
        (
            "BL",
            |o| Insn::Bl { offset: o },
            -(1 << 27),
            (1 << 27) - 4,
            4,
        ),
        (
            "B.cond",
            |o| Insn::BCond {
                cond: Cond::Ne,
                offset: o,
            },
            -(1 << 20),
            (1 << 20) - 4,
            4,
        ),
        (
            "CBZ",
            |o| Insn::Cbz {
                sf: false,
                nonzero: false,
                rt: 1,
                offset: o,
            },
            -(1 << 20),
            (1 << 20) - 4,
            4,
        ),
        (
            "TBNZ",
            |o| Insn::Tbz {
                nonzero: true,
                rt: 1,
                bit: 40,
                offset: o,
            },
            -(1 << 15),
            (1 << 15) - 4,
            4,
        ),
        (
            "ADR",
            |o| Insn::Adr { rd: 2, offset: o },
            -(1 << 20),
            (1 << 20) - 1,
            1,
        ),
        (
            "ADRP",
            |o| Insn::Adrp { rd: 2, offset: o },
            -(1 << 32),
            (1 << 32) - 4096,
            4096,
        ),
        (
            "LDR literal",
            |o| Insn::LdrLiteral {
                sf: true,
                rt: 2,
                offset: o,
            },
            -(1 << 20),
            (1 << 20) - 4,
            4,
        ),
        (
            "LDR q literal",
            |o| Insn::LdrSimdLiteral {
                opc: 2,
                rt: 2,
                offset: o,
            },
            -(1 << 20),
            (1 << 20) - 4,
            4,
        ),
        (
            "LDRSW literal",
            |o| Insn::LdrswLiteral { rt: 2, offset: o },
            -(1 << 20),
            (1 << 20) - 4,
            4,
        ),
        (
            "PRFM literal",
            |o| Insn::PrfmLiteral {
                prfop: 0,
                offset: o,
            },
            -(1 << 20),
            (1 << 20) - 4,
            4,
        ),
    ];
    for &(name, make, min, max, align) in kinds {
        for ok in [min, max, 0, align, -align] {
            let w = enc(make(ok));
            assert_eq!(decode(w), Some(make(ok)), "{name} {ok}");
        }
        for bad in [min - align, max + align, i64::MIN, i64::MAX] {
            assert_eq!(
                make(bad).encode(),
                Err(InsnError::OffsetOutOfRange {
                    offset: bad,
                    min,
                    max
                }),
                "{name} {bad}"
            );
        }
        if align > 1 {
            for bad in [align / 2, -(align / 2), max - 1, min + 1] {
                assert_eq!(
                    make(bad).encode(),
                    Err(InsnError::OffsetMisaligned { offset: bad, align }),
                    "{name} {bad}"
                );
            }
        }
    }
    assert_eq!((IMM26.min(), IMM26.max()), (-(1 << 27), (1 << 27) - 4));
    assert_eq!((IMM19.min(), IMM19.max()), (-(1 << 20), (1 << 20) - 4));
    assert_eq!((IMM14.min(), IMM14.max()), (-(1 << 15), (1 << 15) - 4));
}

#[test]
fn bad_operands_are_errors() {
    let bad = |i: Insn| i.encode().expect_err(&format!("{i:?} should not encode"));
    assert_eq!(br(32), Err(InsnError::BadRegister(32)));
    assert_eq!(movz_x(255, 0, 0), Err(InsnError::BadRegister(255)));
    assert_eq!(ror_x(0, 40, 1), Err(InsnError::BadRegister(40)));
    assert_eq!(and_x_imm(32, 0, 1), Err(InsnError::BadRegister(32)));
    assert!(matches!(
        bad(Insn::Cbz {
            sf: true,
            nonzero: true,
            rt: 32,
            offset: 0
        }),
        InsnError::BadRegister(32)
    ));
    for shift in [1, 8, 15, 17, 64, 255] {
        assert!(matches!(
            movz_x(0, 1, shift),
            Err(InsnError::ImmediateOutOfRange { .. })
        ));
    }
    for shift in [32, 48] {
        assert!(matches!(
            bad(Insn::Movk {
                sf: false,
                rd: 0,
                imm16: 1,
                shift
            }),
            InsnError::ImmediateOutOfRange { .. }
        ));
    }
    assert!(matches!(
        bad(Insn::AddImm {
            sf: true,
            rd: 0,
            rn: 0,
            imm12: 0x1000,
            lsl12: false
        }),
        InsnError::ImmediateOutOfRange { value: 0x1000, .. }
    ));
    for imm in [0x1001, 0x100_0000, 0xfff_f000 + 0x1000, u64::MAX] {
        assert!(
            matches!(
                add_x_imm(0, 0, imm),
                Err(InsnError::ImmediateOutOfRange { .. })
            ),
            "{imm:#x}"
        );
    }
    assert_eq!(add_x_imm(0, 0, 0xfff), Ok(0x913f_fc00));
    assert_eq!(add_x_imm(31, 31, 0xfff_000), Ok(0x917f_ffff));
    assert_eq!(
        ror_x(0, 0, 64).map(|_| ()),
        Err(InsnError::ImmediateOutOfRange {
            what: "EXTR/ROR shift",
            value: 64
        })
    );
    assert!(matches!(
        bad(Insn::Extr {
            sf: false,
            rd: 0,
            rn: 0,
            rm: 0,
            lsb: 32
        }),
        InsnError::ImmediateOutOfRange { .. }
    ));
    assert!(matches!(
        bad(Insn::Tbz {
            nonzero: false,
            rt: 0,
            bit: 64,
            offset: 0
        }),
        InsnError::ImmediateOutOfRange { value: 64, .. }
    ));
    assert!(matches!(
        bad(Insn::LdrSimdLiteral {
            opc: 3,
            rt: 0,
            offset: 0
        }),
        InsnError::ImmediateOutOfRange { value: 3, .. }
    ));
    assert!(matches!(
        bad(Insn::PrfmLiteral {
            prfop: 32,
            offset: 0
        }),
        InsnError::ImmediateOutOfRange { value: 32, .. }
    ));
    for (value, sf) in [
        (0, true),
        (u64::MAX, true),
        (0x1234, true),
        (0xffff_ffff, false),
        (0x1_0000_0001, false),
        (0xffff_ffff_0000_ffff, false),
    ] {
        assert_eq!(
            bad(Insn::AndImm {
                sf,
                rd: 0,
                rn: 0,
                imm: value
            }),
            InsnError::NotABitmaskImmediate { value, sf }
        );
    }
}

#[test]
fn error_messages_name_the_problem() {
    let msg = InsnError::OffsetOutOfRange {
        offset: 1 << 27,
        min: -(1 << 27),
        max: (1 << 27) - 4,
    }
    .to_string();
    assert!(
        msg.contains("134217728") && msg.contains("134217724"),
        "{msg}"
    );
    assert!(InsnError::BadRegister(33).to_string().contains("33"));
    let msg = InsnError::OffsetMisaligned {
        offset: 6,
        align: 4,
    }
    .to_string();
    assert!(msg.contains('6') && msg.contains('4'), "{msg}");
    let msg = InsnError::ImmediateOutOfRange {
        what: "ADD imm12",
        value: 4096,
    }
    .to_string();
    assert!(msg.contains("ADD imm12") && msg.contains("4096"), "{msg}");
    let msg = InsnError::NotABitmaskImmediate {
        value: 0x1234,
        sf: false,
    }
    .to_string();
    assert!(msg.contains("0x1234") && msg.contains("32-bit"), "{msg}");
}

#[test]
fn branch_offset_accessors() {
    let branches = [
        Insn::B { offset: 8 },
        Insn::Bl { offset: -8 },
        Insn::BCond {
            cond: Cond::Gt,
            offset: 12,
        },
        Insn::Cbz {
            sf: true,
            nonzero: false,
            rt: 3,
            offset: 16,
        },
        Insn::Tbz {
            nonzero: true,
            rt: 3,
            bit: 7,
            offset: -20,
        },
    ];
    for b in branches {
        let old = b.branch_offset().expect("a branch");
        let moved = b.with_branch_offset(old + 400).expect("a branch");
        assert_eq!(moved.branch_offset(), Some(old + 400));
        // Only the offset changes.
        assert_eq!(moved.with_branch_offset(old), Some(b));
        assert_eq!(decode(enc(moved)), Some(moved));
        // Out of reach is caught on encode, not silently wrapped.
        assert!(b.with_branch_offset(1 << 40).map(|i| i.encode().is_err()) == Some(true));
    }
    let others = [
        Insn::Nop,
        Insn::Adr { rd: 0, offset: 4 },
        Insn::Adrp {
            rd: 0,
            offset: 4096,
        },
        Insn::Br { rn: 1 },
        Insn::LdrLiteral {
            sf: true,
            rt: 0,
            offset: 8,
        },
    ];
    for o in others {
        assert_eq!(o.branch_offset(), None);
        assert_eq!(o.with_branch_offset(0), None);
    }
}

#[test]
fn unrelocatable_literal_class() {
    let yes = [
        Insn::Adr { rd: 0, offset: 4 },
        Insn::LdrLiteral {
            sf: false,
            rt: 0,
            offset: 8,
        },
        Insn::LdrSimdLiteral {
            opc: 1,
            rt: 0,
            offset: 8,
        },
        Insn::LdrswLiteral { rt: 0, offset: 8 },
        Insn::PrfmLiteral {
            prfop: 0,
            offset: 8,
        },
    ];
    let no = [
        Insn::Nop,
        Insn::Adrp {
            rd: 0,
            offset: 4096,
        },
        Insn::B { offset: 4 },
        Insn::Bl { offset: 4 },
        Insn::BCond {
            cond: Cond::Eq,
            offset: 4,
        },
        Insn::Cbz {
            sf: false,
            nonzero: true,
            rt: 0,
            offset: 4,
        },
        Insn::Tbz {
            nonzero: false,
            rt: 0,
            bit: 0,
            offset: 4,
        },
        Insn::Br { rn: 0 },
        Insn::Hvc { imm16: 0 },
        Insn::Smc { imm16: 0 },
        Insn::Movz {
            sf: true,
            rd: 0,
            imm16: 0,
            shift: 0,
        },
        Insn::AddImm {
            sf: true,
            rd: 0,
            rn: 0,
            imm12: 0,
            lsl12: false,
        },
    ];
    for i in yes {
        assert!(i.is_unrelocatable_literal(), "{i:?}");
    }
    for i in no {
        assert!(!i.is_unrelocatable_literal(), "{i:?}");
    }
}

#[test]
fn cond_round_trips() {
    for bits in 0..16u8 {
        let c = Cond::from_bits(bits);
        assert_eq!(c as u8, bits);
        assert_eq!(c.mnemonic().len(), 2);
    }
}

#[test]
fn classes_are_disjoint() {
    for (i, a) in CLASSES.iter().enumerate() {
        assert_eq!(a.value & !a.mask, 0, "{} value outside its mask", a.name);
        for b in &CLASSES[i + 1..] {
            // Two classes overlap iff their values agree on the bits both masks fix.
            assert_ne!(
                (a.value ^ b.value) & a.mask & b.mask,
                0,
                "{} overlaps {}",
                a.name,
                b.name
            );
        }
    }
}

#[test]
fn reserved_encodings_are_refused() {
    // W-form MOVZ with hw = 2.
    assert_eq!(decode(0x52c0_0000), None);
    // W-form AND with N = 1.
    assert_eq!(decode(0x1240_0000), None);
    // AND with a run filling the element (imms = 0b111111 at 64 bits).
    assert_eq!(decode(0x927f_fc00), None);
    // AND with immr above the 2-bit element size (non-canonical).
    assert_eq!(decode(0x9222_f000), None);
    assert!(decode(0x9200_f000).is_some());
    // EXTR with N != sf, and the W form with lsb >= 32.
    assert_eq!(decode(0x9380_0000), None);
    assert_eq!(decode(0x1380_8000), None);
    // SIMD&FP literal opc 3.
    assert_eq!(decode(0xdc00_0000), None);
    // BC.cond (bit 4 set) and ADDG (bit 23) are other instructions.
    assert_eq!(decode(0x5400_0010), None);
    assert_eq!(decode(0x9180_0000), None);
    // A few unrelated words.
    for w in [
        0,
        0xffff_ffff,
        0xd503_203f,
        0xd63f_0000,
        0xd400_0001,
        0xf940_0000,
    ] {
        assert_eq!(decode(w), None, "{w:#x}");
    }
}

/// Which class a decoded instruction belongs to, by the class table's names.
fn class_name(i: &Insn) -> &'static str {
    match i {
        Insn::Nop => "NOP",
        Insn::B { .. } | Insn::Bl { .. } => "B/BL",
        Insn::BCond { .. } => "B.cond",
        Insn::Cbz { .. } => "CBZ/CBNZ",
        Insn::Tbz { .. } => "TBZ/TBNZ",
        Insn::Adr { .. } | Insn::Adrp { .. } => "ADR/ADRP",
        Insn::Movz { .. } => "MOVZ",
        Insn::Movk { .. } => "MOVK",
        Insn::AddImm { .. } => "ADD (immediate)",
        Insn::AndImm { .. } => "AND (immediate)",
        Insn::Extr { .. } => "EXTR",
        Insn::Br { .. } => "BR",
        Insn::Hvc { .. } => "HVC",
        Insn::Smc { .. } => "SMC",
        Insn::LdrLiteral { .. } => "LDR (literal)",
        Insn::LdrSimdLiteral { .. } => "LDR (SIMD&FP literal)",
        Insn::LdrswLiteral { .. } => "LDRSW (literal)",
        Insn::PrfmLiteral { .. } => "PRFM (literal)",
    }
}

/// The reserved combinations inside a class, written from the architecture's rules
/// independently of the decoder.
fn reserved(class: &str, w: u32) -> bool {
    let sf = w >> 31 == 1;
    match class {
        "MOVZ" | "MOVK" => !sf && (w >> 22) & 1 == 1,
        "AND (immediate)" => {
            let n = (w >> 22) & 1;
            let immr = (w >> 16) & 0x3f;
            let imms = (w >> 10) & 0x3f;
            if !sf && n == 1 {
                return true;
            }
            let esize = if n == 1 {
                64
            } else {
                match imms {
                    0b000000..=0b011111 => 32,
                    0b100000..=0b101111 => 16,
                    0b110000..=0b110111 => 8,
                    0b111000..=0b111011 => 4,
                    0b111100..=0b111101 => 2,
                    _ => return true,
                }
            };
            imms & (esize - 1) == esize - 1 || immr >= esize
        }
        "EXTR" => ((w >> 22) & 1 == 1) != sf || (!sf && (w >> 15) & 1 == 1),
        "LDR (SIMD&FP literal)" => w >> 30 == 3,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Random words of every class: decode accepts exactly the non-reserved ones, as
    /// that class, and encoding gives the word back.
    #[test]
    fn decode_then_encode_is_identity(r in any::<u32>()) {
        for c in CLASSES {
            let w = (r & !c.mask) | c.value;
            match decode(w) {
                Some(i) => {
                    prop_assert!(!reserved(c.name, w), "{} {w:#010x} is reserved", c.name);
                    prop_assert_eq!(class_name(&i), c.name);
                    prop_assert_eq!(i.encode(), Ok(w), "{:?}", i);
                }
                None => prop_assert!(reserved(c.name, w), "{} {w:#010x} refused", c.name),
            }
        }
    }

    /// Any word at all: if it decodes, it re-encodes to itself.
    #[test]
    fn any_decoded_word_round_trips(w in any::<u32>()) {
        if let Some(i) = decode(w) {
            prop_assert_eq!(i.encode(), Ok(w));
        }
    }

    /// Valid operands: encode then decode is the identity.
    #[test]
    fn encode_then_decode_is_identity(i in valid_insn()) {
        let w = i.encode();
        prop_assert!(w.is_ok(), "{:?}: {:?}", i, w);
        if let Ok(w) = w {
            prop_assert_eq!(decode(w), Some(i));
        }
    }
}

/// Offsets of a `bits`-wide field scaled by `scale`, biased towards the two limits.
fn offset(bits: u32, scale: i64) -> impl Strategy<Value = i64> {
    let lo = -(1i64 << (bits - 1));
    let hi = (1i64 << (bits - 1)) - 1;
    prop_oneof![
        3 => lo..=hi,
        1 => prop_oneof![Just(lo), Just(hi), Just(0), Just(-1), Just(1)],
    ]
    .prop_map(move |u| u * scale)
}

fn reg() -> impl Strategy<Value = u8> {
    0u8..32
}

/// Every instruction kind with operands drawn from their full valid ranges.
fn valid_insn() -> impl Strategy<Value = Insn> {
    prop_oneof![
        Just(Insn::Nop),
        offset(26, 4).prop_map(|offset| Insn::B { offset }),
        offset(26, 4).prop_map(|offset| Insn::Bl { offset }),
        (0u8..16, offset(19, 4)).prop_map(|(c, offset)| Insn::BCond {
            cond: Cond::from_bits(c),
            offset
        }),
        (any::<bool>(), any::<bool>(), reg(), offset(19, 4)).prop_map(
            |(sf, nonzero, rt, offset)| Insn::Cbz {
                sf,
                nonzero,
                rt,
                offset
            }
        ),
        (any::<bool>(), reg(), 0u8..64, offset(14, 4)).prop_map(|(nonzero, rt, bit, offset)| {
            Insn::Tbz {
                nonzero,
                rt,
                bit,
                offset,
            }
        }),
        (reg(), offset(21, 1)).prop_map(|(rd, offset)| Insn::Adr { rd, offset }),
        (reg(), offset(21, 4096)).prop_map(|(rd, offset)| Insn::Adrp { rd, offset }),
        (any::<bool>(), any::<bool>(), reg(), any::<u16>(), 0u8..4).prop_map(
            |(k, sf, rd, imm16, hw)| {
                let shift = if sf { hw * 16 } else { (hw & 1) * 16 };
                if k {
                    Insn::Movk {
                        sf,
                        rd,
                        imm16,
                        shift,
                    }
                } else {
                    Insn::Movz {
                        sf,
                        rd,
                        imm16,
                        shift,
                    }
                }
            }
        ),
        (any::<bool>(), reg(), reg(), 0u16..4096, any::<bool>()).prop_map(
            |(sf, rd, rn, imm12, lsl12)| Insn::AddImm {
                sf,
                rd,
                rn,
                imm12,
                lsl12
            }
        ),
        (any::<bool>(), reg(), reg(), 0u8..2, 0u8..64, 0u8..64).prop_filter_map(
            "reserved bitmask",
            |(sf, rd, rn, n, immr, imms)| {
                let imm = decode_bitmask_imm(n, immr, imms, sf)?;
                Some(Insn::AndImm { sf, rd, rn, imm })
            }
        ),
        (any::<bool>(), reg(), reg(), reg(), 0u8..64).prop_map(|(sf, rd, rn, rm, lsb)| {
            Insn::Extr {
                sf,
                rd,
                rn,
                rm,
                lsb: if sf { lsb } else { lsb & 31 },
            }
        }),
        reg().prop_map(|rn| Insn::Br { rn }),
        any::<u16>().prop_map(|imm16| Insn::Hvc { imm16 }),
        any::<u16>().prop_map(|imm16| Insn::Smc { imm16 }),
        (any::<bool>(), reg(), offset(19, 4)).prop_map(|(sf, rt, offset)| Insn::LdrLiteral {
            sf,
            rt,
            offset
        }),
        (0u8..3, reg(), offset(19, 4)).prop_map(|(opc, rt, offset)| Insn::LdrSimdLiteral {
            opc,
            rt,
            offset
        }),
        (reg(), offset(19, 4)).prop_map(|(rt, offset)| Insn::LdrswLiteral { rt, offset }),
        (0u8..32, offset(19, 4)).prop_map(|(prfop, offset)| Insn::PrfmLiteral { prfop, offset }),
    ]
}
