//! Cross-checks `shared::insn` against LLVM's assembler, an independent implementation of
//! the A64 encodings.
//!
//! For every instruction kind, thousands of operand sets from a fixed-seed PRNG are
//! rendered as assembly, assembled in one `llvm-mc -show-encoding` run per kind, and each
//! encoding is compared with ours. About one operand set in ten is deliberately invalid
//! (out of reach, misaligned, too wide, bad register): there our encoder must return an
//! error and llvm-mc must report an error on that very line. Every word llvm-mc produces
//! must also decode back to the operands it was made from. Finally, every logical
//! immediate enumerated from `(N, immr, imms)` is assembled and compared both ways.

use shared::insn::{decode, decode_bitmask_imm, encode_bitmask_imm, Cond, Insn};
use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

/// Operand sets per kind (the invalid ones are on top of the ≥ 2000 valid ones).
const PER_KIND: usize = 2600;
/// The minimum number of encodings compared per kind.
const MIN_COMPARED: usize = 2000;

/// xorshift64*: small, deterministic, good enough to spread operands.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (n > 0; the bias is irrelevant here).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    fn bool(&mut self) -> bool {
        self.next() & 1 == 1
    }

    /// One chance in `n`.
    fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

/// A PC-relative offset for a `bits`-wide field of `scale`-byte units: mostly valid and
/// biased towards the limits, sometimes just out of reach or misaligned.
fn pcrel(rng: &mut Rng, bits: u32, scale: i64) -> i64 {
    let min = -(1i64 << (bits - 1)) * scale;
    let max = ((1i64 << (bits - 1)) - 1) * scale;
    match rng.below(40) {
        0 => min,
        1 => max,
        2 => 0,
        3 => min - scale,
        4 => max + scale,
        5 if scale > 1 => rng.range(min / scale, max / scale) * scale + rng.range(1, scale - 1),
        6 => rng.range(min / 2, max / 2) * 4096,
        _ => rng.range(min / scale, max / scale) * scale,
    }
}

/// A register number, occasionally one that does not exist.
fn reg(rng: &mut Rng) -> u8 {
    if rng.one_in(80) {
        32 + rng.below(8) as u8
    } else {
        rng.below(32) as u8
    }
}

/// `x<r>`, with 31 as XZR.
fn x(r: u8) -> String {
    if r == 31 {
        "xzr".into()
    } else {
        format!("x{r}")
    }
}

/// `w<r>`, with 31 as WZR.
fn w(r: u8) -> String {
    if r == 31 {
        "wzr".into()
    } else {
        format!("w{r}")
    }
}

/// `x<r>`, with 31 as SP.
fn xsp(r: u8) -> String {
    if r == 31 {
        "sp".into()
    } else {
        format!("x{r}")
    }
}

/// `w<r>`, with 31 as WSP.
fn wsp(r: u8) -> String {
    if r == 31 {
        "wsp".into()
    } else {
        format!("w{r}")
    }
}

/// The general register of the width `sf` selects, 31 = ZR.
fn gpr(sf: bool, r: u8) -> String {
    if sf {
        x(r)
    } else {
        w(r)
    }
}

/// Condition suffixes, written out here (with the `hs`/`lo` spellings) rather than taken
/// from the crate.
const CONDS: [&str; 16] = [
    "eq", "ne", "hs", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt", "gt", "le", "al", "nv",
];

/// A 64-bit value that is often a logical immediate and often nearly one.
fn logical_candidate(rng: &mut Rng) -> u64 {
    if rng.one_in(20) {
        return rng.next();
    }
    let esize = 2u32 << rng.below(6);
    // Run lengths 0 and esize give all-zeros/all-ones, which must be refused.
    let k = if rng.one_in(20) {
        if rng.bool() {
            0
        } else {
            esize
        }
    } else {
        rng.range(1, i64::from(esize) - 1) as u32
    };
    let run = if k == 64 { u64::MAX } else { (1u64 << k) - 1 };
    let r = rng.below(u64::from(esize)) as u32;
    let mask = if esize == 64 {
        u64::MAX
    } else {
        (1u64 << esize) - 1
    };
    let elem = if r == 0 {
        run
    } else {
        ((run >> r) | (run << (esize - r))) & mask
    };
    let mut v = 0;
    let mut i = 0;
    while i < 64 {
        v |= elem << i;
        i += esize;
    }
    if rng.one_in(8) {
        v ^= 1 << rng.below(64);
    }
    v
}

/// One instruction kind: its name and a generator of (operands, assembly text).
type Gen = fn(&mut Rng) -> (Insn, String);

/// Operand sets to draw for a kind: the AND kinds draw more, since about a quarter of
/// their candidates are (deliberately) not logical immediates.
fn draws(kind: &str) -> usize {
    if kind.starts_with("and") {
        PER_KIND * 3 / 2
    } else {
        PER_KIND
    }
}

fn kinds() -> Vec<(&'static str, Gen)> {
    vec![
        ("b", |r| {
            let offset = pcrel(r, 26, 4);
            (Insn::B { offset }, format!("b #{offset}"))
        }),
        ("bl", |r| {
            let offset = pcrel(r, 26, 4);
            (Insn::Bl { offset }, format!("bl #{offset}"))
        }),
        ("b.cond", |r| {
            let c = r.below(16) as u8;
            let offset = pcrel(r, 19, 4);
            (
                Insn::BCond {
                    cond: Cond::from_bits(c),
                    offset,
                },
                format!("b.{} #{offset}", CONDS[usize::from(c)]),
            )
        }),
        ("cbz/cbnz", |r| {
            let (sf, nonzero, rt) = (r.bool(), r.bool(), reg(r));
            let offset = pcrel(r, 19, 4);
            let m = if nonzero { "cbnz" } else { "cbz" };
            (
                Insn::Cbz {
                    sf,
                    nonzero,
                    rt,
                    offset,
                },
                format!("{m} {}, #{offset}", gpr(sf, rt)),
            )
        }),
        ("tbz/tbnz", |r| {
            let (nonzero, rt) = (r.bool(), reg(r));
            let bit = if r.one_in(60) { 64 } else { r.below(64) as u8 };
            let offset = pcrel(r, 14, 4);
            let m = if nonzero { "tbnz" } else { "tbz" };
            (
                Insn::Tbz {
                    nonzero,
                    rt,
                    bit,
                    offset,
                },
                format!("{m} {}, #{bit}, #{offset}", gpr(bit >= 32, rt)),
            )
        }),
        ("adr", |r| {
            let rd = reg(r);
            let offset = pcrel(r, 21, 1);
            (
                Insn::Adr { rd, offset },
                format!("adr {}, #{offset}", x(rd)),
            )
        }),
        ("adrp", |r| {
            let rd = reg(r);
            let offset = pcrel(r, 21, 4096);
            (
                Insn::Adrp { rd, offset },
                format!("adrp {}, #{offset}", x(rd)),
            )
        }),
        ("movz w", |r| move_wide(r, false, false)),
        ("movz x", |r| move_wide(r, false, true)),
        ("movk w", |r| move_wide(r, true, false)),
        ("movk x", |r| move_wide(r, true, true)),
        ("add w (imm)", |r| add_imm(r, false)),
        ("add x (imm)", |r| add_imm(r, true)),
        ("and w (imm)", |r| and_imm(r, false)),
        ("and x (imm)", |r| and_imm(r, true)),
        ("extr w", |r| extr(r, false, false)),
        ("extr x", |r| extr(r, true, false)),
        ("ror w", |r| extr(r, false, true)),
        ("ror x", |r| extr(r, true, true)),
        ("br", |r| {
            let rn = reg(r);
            (Insn::Br { rn }, format!("br {}", x(rn)))
        }),
        ("hvc", |r| {
            let imm16 = r.next() as u16;
            (Insn::Hvc { imm16 }, format!("hvc #{imm16:#x}"))
        }),
        ("smc", |r| {
            let imm16 = r.next() as u16;
            (Insn::Smc { imm16 }, format!("smc #{imm16}"))
        }),
        ("ldr w/x (literal)", |r| {
            let (sf, rt) = (r.bool(), reg(r));
            let offset = pcrel(r, 19, 4);
            (
                Insn::LdrLiteral { sf, rt, offset },
                format!("ldr {}, #{offset}", gpr(sf, rt)),
            )
        }),
        ("ldr s/d/q (literal)", |r| {
            let (opc, rt) = (r.below(3) as u8, reg(r));
            let offset = pcrel(r, 19, 4);
            let v = ["s", "d", "q"][usize::from(opc)];
            (
                Insn::LdrSimdLiteral { opc, rt, offset },
                format!("ldr {v}{rt}, #{offset}"),
            )
        }),
        ("ldrsw (literal)", |r| {
            let rt = reg(r);
            let offset = pcrel(r, 19, 4);
            (
                Insn::LdrswLiteral { rt, offset },
                format!("ldrsw {}, #{offset}", x(rt)),
            )
        }),
        ("prfm (literal)", |r| {
            let prfop = if r.one_in(60) { 32 } else { r.below(32) as u8 };
            let offset = pcrel(r, 19, 4);
            (
                Insn::PrfmLiteral { prfop, offset },
                format!("prfm #{prfop}, #{offset}"),
            )
        }),
    ]
}

fn move_wide(r: &mut Rng, k: bool, sf: bool) -> (Insn, String) {
    let rd = reg(r);
    let imm16 = r.next() as u16;
    // Valid shifts are multiples of 16 below the width; sometimes ask for one that is not.
    let shift = match r.below(30) {
        0 => 8,
        1 => 32,
        2 => 48,
        _ => r.below(if sf { 4 } else { 2 }) as u8 * 16,
    };
    let m = if k { "movk" } else { "movz" };
    let text = format!("{m} {}, #{imm16:#x}, lsl #{shift}", gpr(sf, rd));
    let insn = if k {
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
    };
    (insn, text)
}

fn add_imm(r: &mut Rng, sf: bool) -> (Insn, String) {
    let (rd, rn) = (reg(r), reg(r));
    // 4096 with LSL #12 does not fit (llvm-mc turns an unshifted 4096 into 1, LSL #12).
    let lsl12 = r.bool();
    let imm12 = if lsl12 && r.one_in(40) {
        4096
    } else {
        r.below(4096) as u16
    };
    let reg_sp = if sf { xsp } else { wsp };
    let shift = if lsl12 { ", lsl #12" } else { "" };
    (
        Insn::AddImm {
            sf,
            rd,
            rn,
            imm12,
            lsl12,
        },
        format!("add {}, {}, #{imm12}{shift}", reg_sp(rd), reg_sp(rn)),
    )
}

fn and_imm(r: &mut Rng, sf: bool) -> (Insn, String) {
    let (rd, rn) = (reg(r), reg(r));
    let mut imm = logical_candidate(r);
    if !sf {
        if !r.one_in(30) {
            imm &= 0xffff_ffff;
        } else if imm >> 32 == 0xffff_ffff {
            // llvm-mc takes a sign-extended 32-bit value as that value (`#-4` written
            // in 64 bits); our API wants the plain 32-bit value, so keep the upper half
            // something that is neither.
            imm ^= 1 << (32 + r.below(32));
        }
    }
    let rd_s = if sf { xsp(rd) } else { wsp(rd) };
    (
        Insn::AndImm { sf, rd, rn, imm },
        format!("and {rd_s}, {}, #{imm:#x}", gpr(sf, rn)),
    )
}

fn extr(r: &mut Rng, sf: bool, ror: bool) -> (Insn, String) {
    let (rd, rn) = (reg(r), reg(r));
    let rm = if ror { rn } else { reg(r) };
    let width = if sf { 64 } else { 32 };
    let lsb = if r.one_in(40) {
        width
    } else {
        r.below(u64::from(width)) as u8
    };
    let text = if ror {
        format!("ror {}, {}, #{lsb}", gpr(sf, rd), gpr(sf, rn))
    } else {
        format!(
            "extr {}, {}, {}, #{lsb}",
            gpr(sf, rd),
            gpr(sf, rn),
            gpr(sf, rm)
        )
    };
    (
        Insn::Extr {
            sf,
            rd,
            rn,
            rm,
            lsb,
        },
        text,
    )
}

/// What llvm-mc made of a batch of lines.
struct Assembled {
    /// Encodings of the accepted lines, in order.
    words: Vec<u32>,
    /// 1-based numbers of the lines it reported an error on.
    error_lines: BTreeSet<usize>,
}

/// Assembles `lines` in one llvm-mc run.
fn llvm_mc(lines: &[String]) -> Assembled {
    let child = Command::new("llvm-mc")
        .args(["-triple=aarch64", "-mattr=+v8a", "-show-encoding"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("llvm-mc not found: run scripts/setup")
        }
        Err(e) => panic!("cannot run llvm-mc: {e}"),
    };
    let mut stdin = child.stdin.take().expect("stdin was piped");
    let input = lines.join("\n") + "\n";
    // Feed from another thread so a full stdout pipe cannot deadlock us.
    let feeder = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("llvm-mc ran");
    feeder
        .join()
        .expect("feeder thread")
        .expect("wrote llvm-mc input");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);

    let mut words = Vec::new();
    for line in stdout.lines() {
        let Some((_, rest)) = line.split_once("// encoding: [") else {
            continue;
        };
        let bytes: Vec<u8> = rest
            .trim_end_matches(']')
            .split(',')
            .map(|b| {
                u8::from_str_radix(b.trim().trim_start_matches("0x"), 16)
                    .unwrap_or_else(|e| panic!("bad byte {b:?} in {line:?}: {e}"))
            })
            .collect();
        let bytes: [u8; 4] = bytes
            .try_into()
            .unwrap_or_else(|b| panic!("not a 4-byte encoding: {b:?} in {line:?}"));
        words.push(u32::from_le_bytes(bytes));
    }
    let mut error_lines = BTreeSet::new();
    for line in stderr.lines() {
        if let Some(rest) = line.strip_prefix("<stdin>:") {
            if rest.contains(": error:") {
                let n = rest.split(':').next().and_then(|n| n.parse().ok());
                error_lines.insert(n.unwrap_or_else(|| panic!("unparsed error {line:?}")));
            }
        }
    }
    if error_lines.is_empty() {
        assert!(
            out.status.success(),
            "llvm-mc failed without a line error:\n{stderr}"
        );
    }
    Assembled { words, error_lines }
}

/// Per-kind tally.
struct Tally {
    /// Encodings compared (both sides encoded).
    compared: usize,
    /// Invalid operand sets both sides refused.
    refused: usize,
}

/// Compares our encoder with llvm-mc on `cases`; returns the tally or the mismatches.
fn cross_check(cases: &[(Insn, String)]) -> Result<Tally, Vec<String>> {
    let lines: Vec<String> = cases.iter().map(|(_, t)| t.clone()).collect();
    let got = llvm_mc(&lines);
    let ours: Vec<_> = cases.iter().map(|(i, _)| i.encode()).collect();
    let mut problems = Vec::new();

    let we_refuse: BTreeSet<usize> = (0..cases.len())
        .filter(|&i| ours[i].is_err())
        .map(|i| i + 1)
        .collect();
    for n in we_refuse.symmetric_difference(&got.error_lines) {
        let (insn, text) = &cases[n - 1];
        problems.push(format!(
            "line {n} `{text}`: llvm-mc {}, we gave {:?} for {insn:?}",
            if got.error_lines.contains(n) {
                "refused"
            } else {
                "accepted"
            },
            ours[n - 1]
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }

    let accepted: Vec<usize> = (0..cases.len()).filter(|&i| ours[i].is_ok()).collect();
    if accepted.len() != got.words.len() {
        return Err(vec![format!(
            "{} lines accepted but {} encodings printed",
            accepted.len(),
            got.words.len()
        )]);
    }
    for (&i, &theirs) in accepted.iter().zip(&got.words) {
        let (insn, text) = &cases[i];
        if let Ok(mine) = ours[i] {
            if mine != theirs {
                problems.push(format!(
                    "`{text}`: llvm-mc {theirs:#010x}, ours {mine:#010x} ({insn:?})"
                ));
            }
        }
        // The decode direction, on llvm's word.
        if decode(theirs) != Some(*insn) {
            problems.push(format!(
                "`{text}`: decode({theirs:#010x}) = {:?}, expected {insn:?}",
                decode(theirs)
            ));
        }
    }
    if problems.is_empty() {
        Ok(Tally {
            compared: accepted.len(),
            refused: we_refuse.len(),
        })
    } else {
        Err(problems)
    }
}

/// Reports a failed kind with its first mismatches.
fn fail(kind: &str, problems: &[String]) -> String {
    let shown: Vec<&str> = problems.iter().take(12).map(String::as_str).collect();
    format!(
        "{kind}: {} mismatches with llvm-mc, first ones:\n  {}",
        problems.len(),
        shown.join("\n  ")
    )
}

#[test]
fn encoders_match_llvm_mc() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut failures = Vec::new();
    for (kind, gen) in kinds() {
        let cases: Vec<(Insn, String)> = (0..draws(kind)).map(|_| gen(&mut rng)).collect();
        match cross_check(&cases) {
            Ok(t) => {
                eprintln!(
                    "{kind:>22}: {:>5} encodings match llvm-mc, {:>4} invalid operand sets refused by both",
                    t.compared, t.refused
                );
                if t.compared < MIN_COMPARED {
                    failures.push(format!("{kind}: only {} compared", t.compared));
                }
            }
            Err(p) => failures.push(fail(kind, &p)),
        }
    }
    // NOP has no operands: its single encoding is checked once.
    match cross_check(&[(Insn::Nop, "nop".to_string())]) {
        Ok(t) => eprintln!(
            "{:>22}: {:>5} encoding matches llvm-mc (no operands)",
            "nop", t.compared
        ),
        Err(p) => failures.push(fail("nop", &p)),
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every canonical `(N, immr, imms)` of a width, with its decoded value.
fn all_logical_immediates(sf: bool) -> Vec<(u8, u8, u8, u64)> {
    let mut out = Vec::new();
    for n in 0..=u8::from(sf) {
        for imms in 0..64u8 {
            // The element size is 2^len, len the highest set bit of N:NOT(imms); only
            // rotations below it are canonical.
            let combined = (u32::from(n) << 6) | u32::from(!imms & 0x3f);
            if combined < 2 {
                continue;
            }
            let esize = 1u8 << (31 - combined.leading_zeros());
            for immr in 0..esize {
                if let Some(v) = decode_bitmask_imm(n, immr, imms, sf) {
                    out.push((n, immr, imms, v));
                }
            }
        }
    }
    out
}

#[test]
fn every_logical_immediate_matches_llvm_mc() {
    let mut failures = Vec::new();
    for (sf, expected) in [(true, 5334), (false, 1302)] {
        let all = all_logical_immediates(sf);
        let width = if sf { 64 } else { 32 };
        assert_eq!(all.len(), expected, "{width}-bit logical immediates");
        let mut problems = Vec::new();
        let mut cases = Vec::new();
        for &(n, immr, imms, value) in &all {
            if encode_bitmask_imm(value, sf) != Some((n, immr, imms)) {
                problems.push(format!(
                    "{value:#x}: encode gives {:?}, enumerated from {:?}",
                    encode_bitmask_imm(value, sf),
                    (n, immr, imms)
                ));
            }
            let (rd, rn) = (3, 4);
            // The word built from the fields directly, not through the encoder.
            let word = (u32::from(sf) << 31)
                | 0x1200_0000
                | (u32::from(n) << 22)
                | (u32::from(immr) << 16)
                | (u32::from(imms) << 10)
                | (rn << 5)
                | rd;
            let insn = Insn::AndImm {
                sf,
                rd: rd as u8,
                rn: rn as u8,
                imm: value,
            };
            if decode(word) != Some(insn) {
                problems.push(format!(
                    "decode({word:#010x}) = {:?}, expected {insn:?}",
                    decode(word)
                ));
            }
            let text = format!("and {}, {}, #{value:#x}", gpr(sf, 3), gpr(sf, 4));
            cases.push((insn, text));
        }
        match cross_check(&cases) {
            Ok(t) => {
                eprintln!(
                    "{:>22}: {:>5} enumerated logical immediates match llvm-mc",
                    format!("and {width}-bit (all)"),
                    t.compared
                );
                assert_eq!(t.compared, expected);
            }
            Err(p) => problems.extend(p),
        }
        if !problems.is_empty() {
            failures.push(fail(&format!("{width}-bit logical immediates"), &problems));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
