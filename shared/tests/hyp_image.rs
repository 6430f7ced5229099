//! The hyp image format: a valid image round-trips; every corrupted header field, the
//! checksum, the alternative table and the relocation list are refused with the specific
//! error; `apply_relocations` rebases exactly the listed slots and writes nothing when
//! anything is wrong; any single corrupted byte is detected.

use proptest::prelude::*;
use shared::alternative::{AltRecord, CB_BIT};
use shared::hyp_image::{
    apply_relocations, encode_header, fnv1a64, seal, write_checksum, Entry, HypImage,
    HypImageError, HypLayout, ImageRange, Region, RelocProblem, CHECKSUMMED_FROM, HEADER_SIZE,
};

const SLOTS: [(u32, u64); 3] = [(0x3000, 0x2000), (0x3008, 0x4000), (0x4010, 0x7000)];

/// A small but complete layout: text with idmap, both vectors, rodata, data with a
/// per-CPU block, two alternative records, three relocations, bss after the file.
fn layout() -> HypLayout {
    HypLayout {
        image_size: 0x5024,
        mem_size: 0x7000,
        text: ImageRange::new(0x1000, 0x2000),
        rodata: ImageRange::new(0x3000, 0x100),
        data: ImageRange::new(0x4000, 0x1000),
        bss: ImageRange::new(0x6000, 0x800),
        idmap: ImageRange::new(0x1000, 0x800),
        init_entry: 0x1000,
        host_vector: 0x2000,
        alt: ImageRange::new(0x5000, 24),
        relocs: ImageRange::new(0x5018, 12),
        percpu: ImageRange::new(0x4000, 0x1000),
        stack_size: 0x1000,
    }
}

/// Image bytes for `l` with the header of `l` and a correct checksum, *without* the
/// layout checks `seal` runs, so tests can build images with one bad field.
fn raw_image(l: &HypLayout) -> Vec<u8> {
    let base = layout();
    let mut img = vec![0u8; l.image_size as usize];
    for (i, b) in img.iter_mut().enumerate().skip(0x1000) {
        *b = (i * 7 + 3) as u8; // distinct, non-zero-ish contents everywhere
    }
    // Records: a plain one (orig 0x1800, replacement 0x2900, 8 bytes each) and a
    // callback (orig 0x2800, 20 bytes, id 1).
    let at0 = base.alt.offset as i64;
    let recs = [
        AltRecord {
            orig_offset: (0x1800 - at0) as i32,
            alt_offset: (0x2900 - (at0 + 4)) as i32,
            cpucap: 7,
            orig_len: 8,
            alt_len: 8,
        },
        AltRecord {
            orig_offset: (0x2800 - (at0 + 12)) as i32,
            alt_offset: 1,
            cpucap: CB_BIT | 3,
            orig_len: 20,
            alt_len: 0,
        },
    ];
    put_records(&mut img, base.alt.offset, &recs);
    put_relocs(&mut img, base.relocs.offset, &SLOTS.map(|s| s.0));
    for (slot, value) in SLOTS {
        put64(&mut img, slot, value);
    }
    img[..HEADER_SIZE].copy_from_slice(&encode_header(l));
    write_checksum(&mut img).unwrap();
    img
}

fn put_records(img: &mut [u8], at: u32, recs: &[AltRecord]) {
    for (i, r) in recs.iter().enumerate() {
        let o = at as usize + i * 12;
        img[o..o + 12].copy_from_slice(&r.to_bytes());
    }
}

fn put_relocs(img: &mut [u8], at: u32, offs: &[u32]) {
    for (i, off) in offs.iter().enumerate() {
        let o = at as usize + i * 4;
        img[o..o + 4].copy_from_slice(&off.to_le_bytes());
    }
}

fn put64(img: &mut [u8], at: u32, v: u64) {
    img[at as usize..at as usize + 8].copy_from_slice(&v.to_le_bytes());
}

fn get64(img: &[u8], at: u32) -> u64 {
    u64::from_le_bytes(img[at as usize..at as usize + 8].try_into().unwrap())
}

fn valid() -> Vec<u8> {
    let l = layout();
    let mut img = raw_image(&l);
    seal(&l, &mut img).expect("the reference layout is valid");
    img
}

/// Parses an image whose layout differs from the reference by `f`.
fn parse_with(f: impl FnOnce(&mut HypLayout)) -> Result<(), HypImageError> {
    let mut l = layout();
    f(&mut l);
    let img = raw_image(&l);
    HypImage::parse(&img).map(|_| ())
}

/// Parses the reference image after `f` changed its bytes (checksum recomputed).
fn parse_edited(f: impl FnOnce(&mut Vec<u8>)) -> Result<(), HypImageError> {
    let mut img = valid();
    f(&mut img);
    write_checksum(&mut img).unwrap();
    HypImage::parse(&img).map(|_| ())
}

#[test]
fn valid_image_round_trips() {
    let img = valid();
    let parsed = HypImage::parse(&img).unwrap();
    assert_eq!(*parsed.layout(), layout());
    assert_eq!(parsed.alt_count(), 2);
    assert_eq!(
        parsed.relocations().collect::<Vec<_>>(),
        SLOTS.map(|s| s.0).to_vec()
    );
    assert_eq!(parsed.range_bytes(layout().text).len(), 0x2000);
    assert!(parsed.range_bytes(layout().bss).is_empty());
    // The checksum is FNV-1a 64 of everything after the checksum field.
    let stored = u64::from_le_bytes(img[8..16].try_into().unwrap());
    assert_eq!(stored, fnv1a64(&img[CHECKSUMMED_FROM..]));
}

#[test]
fn header_identity_fields_are_checked() {
    let mut img = valid();
    img[0] ^= 1;
    assert_eq!(HypImage::parse(&img).unwrap_err(), HypImageError::BadMagic);
    assert_eq!(
        parse_edited(|i| i[0x10] = 2),
        Err(HypImageError::UnsupportedVersion(2))
    );
    assert_eq!(
        parse_edited(|i| i[0x14] = 0x68),
        Err(HypImageError::BadHeaderSize(0x68))
    );
    assert_eq!(
        parse_edited(|i| i[0x6c] = 1),
        Err(HypImageError::ReservedNotZero(1))
    );
    assert_eq!(
        HypImage::parse(&img[..HEADER_SIZE - 1]).unwrap_err(),
        HypImageError::TooShort(HEADER_SIZE - 1)
    );
}

#[test]
fn image_size_must_match_the_bytes() {
    let img = valid();
    let short = &img[..img.len() - 4];
    assert_eq!(
        HypImage::parse(short).unwrap_err(),
        HypImageError::SizeMismatch {
            header: 0x5024,
            actual: 0x5020
        }
    );
    let mut long = img.clone();
    long.push(0);
    assert!(matches!(
        HypImage::parse(&long),
        Err(HypImageError::SizeMismatch { .. })
    ));
}

#[test]
fn checksum_is_verified() {
    let mut img = valid();
    img[0x1234] ^= 0x40;
    assert!(matches!(
        HypImage::parse(&img),
        Err(HypImageError::ChecksumMismatch { .. })
    ));
    let mut img = valid();
    img[8] ^= 1;
    assert!(matches!(
        HypImage::parse(&img),
        Err(HypImageError::ChecksumMismatch { .. })
    ));
}

#[test]
fn sizes_are_checked() {
    assert_eq!(
        parse_with(|l| l.mem_size = 0x6800),
        Err(HypImageError::BadMemSize(0x6800))
    );
    assert_eq!(
        parse_with(|l| l.mem_size = 0x5000),
        Err(HypImageError::BadMemSize(0x5000))
    );
    assert_eq!(
        parse_with(|l| l.stack_size = 0),
        Err(HypImageError::BadStackSize(0))
    );
    assert_eq!(
        parse_with(|l| l.stack_size = 0x1800),
        Err(HypImageError::BadStackSize(0x1800))
    );
}

#[test]
fn section_offsets_are_checked() {
    assert_eq!(
        parse_with(|l| l.rodata.offset = 0x3100),
        Err(HypImageError::Misaligned {
            region: Region::Rodata,
            offset: 0x3100,
            align: 0x1000
        })
    );
    // Text may not start in the header page.
    assert_eq!(
        parse_with(|l| {
            l.text = ImageRange::new(0, 0x3000);
            l.idmap.offset = 0;
            l.init_entry = 0;
        }),
        Err(HypImageError::Overlap(Region::Header, Region::Text))
    );
    // Text running into rodata.
    assert_eq!(
        parse_with(|l| l.text.size = 0x2001),
        Err(HypImageError::Overlap(Region::Text, Region::Rodata))
    );
    // Data before rodata.
    assert_eq!(
        parse_with(|l| l.data.offset = 0x2000),
        Err(HypImageError::Overlap(Region::Rodata, Region::Data))
    );
    assert_eq!(
        parse_with(|l| l.text.size = 0),
        Err(HypImageError::Empty(Region::Text))
    );
    assert_eq!(
        parse_with(|l| l.data.size = 0x2000),
        Err(HypImageError::OutsideImage {
            region: Region::Data,
            offset: 0x4000,
            size: 0x2000,
            limit: 0x5024
        })
    );
    assert_eq!(
        parse_with(|l| l.bss.size = 0x1800),
        Err(HypImageError::OutsideImage {
            region: Region::Bss,
            offset: 0x6000,
            size: 0x1800,
            limit: 0x7000
        })
    );
    assert_eq!(
        parse_with(|l| {
            l.image_size = 0x6024;
            l.mem_size = 0x8000;
        }),
        Err(HypImageError::BssInFile {
            offset: 0x6000,
            image_size: 0x6024
        })
    );
}

#[test]
fn idmap_percpu_and_entries_are_checked() {
    assert_eq!(
        parse_with(|l| l.idmap.size = 0),
        Err(HypImageError::Empty(Region::Idmap))
    );
    assert_eq!(
        parse_with(|l| l.idmap = ImageRange::new(0x2000, 0x2000)),
        Err(HypImageError::OutOfBounds {
            region: Region::Idmap,
            offset: 0x2000,
            size: 0x2000,
            within: Region::Text
        })
    );
    assert!(matches!(
        parse_with(|l| l.idmap.size = 0x1800),
        Err(HypImageError::BadSize {
            region: Region::Idmap,
            ..
        })
    ));
    assert_eq!(
        parse_with(|l| l.init_entry = 0x1004),
        Err(HypImageError::EntryMisaligned {
            entry: Entry::Init,
            offset: 0x1004
        })
    );
    // Init must be in the identity-mapped part, the host vector anywhere in text.
    assert_eq!(
        parse_with(|l| l.init_entry = 0x2000),
        Err(HypImageError::EntryOutside {
            entry: Entry::Init,
            offset: 0x2000,
            within: Region::Idmap
        })
    );
    assert_eq!(
        parse_with(|l| l.host_vector = 0x3000),
        Err(HypImageError::EntryOutside {
            entry: Entry::HostVector,
            offset: 0x3000,
            within: Region::Text
        })
    );
    assert_eq!(
        parse_with(|l| l.host_vector = 0x2400),
        Err(HypImageError::EntryMisaligned {
            entry: Entry::HostVector,
            offset: 0x2400
        })
    );
    assert!(matches!(
        parse_with(|l| l.percpu = ImageRange::new(0x3000, 0x1000)),
        Err(HypImageError::OutOfBounds {
            region: Region::Percpu,
            within: Region::Data,
            ..
        })
    ));
}

#[test]
fn alt_table_range_is_checked() {
    assert_eq!(
        parse_with(|l| l.alt.size = 20),
        Err(HypImageError::BadSize {
            region: Region::AltTable,
            size: 20,
            unit: 12
        })
    );
    assert_eq!(
        parse_with(|l| l.alt.offset = 0x5002),
        Err(HypImageError::Misaligned {
            region: Region::AltTable,
            offset: 0x5002,
            align: 4
        })
    );
    assert_eq!(
        parse_with(|l| l.alt.offset = 0x1100),
        Err(HypImageError::Overlap(Region::AltTable, Region::Text))
    );
    assert_eq!(
        parse_with(|l| l.alt.offset = 0x10),
        Err(HypImageError::Overlap(Region::AltTable, Region::Header))
    );
    assert!(matches!(
        parse_with(|l| l.alt.offset = 0x5018),
        Err(HypImageError::OutsideImage {
            region: Region::AltTable,
            ..
        })
    ));
    assert_eq!(
        parse_with(|l| l.alt.size = 36),
        Err(HypImageError::Overlap(Region::AltTable, Region::RelocList))
    );
}

#[test]
fn alt_records_must_point_into_text() {
    let at = layout().alt.offset;
    let outside = AltRecord {
        orig_offset: (0x3000 - at as i64) as i32,
        alt_offset: (0x2900 - (at as i64 + 4)) as i32,
        cpucap: 7,
        orig_len: 8,
        alt_len: 8,
    };
    assert_eq!(
        parse_edited(|i| put_records(i, at, &[outside])),
        Err(HypImageError::AltRecord {
            index: 0,
            target: 0x3000,
            replacement: false
        })
    );
    let bad_repl = AltRecord {
        alt_offset: -0x2000,
        ..AltRecord::from_bytes(&valid()[at as usize..]).unwrap()
    };
    assert!(matches!(
        parse_edited(|i| put_records(i, at, &[bad_repl])),
        Err(HypImageError::AltRecord {
            index: 0,
            replacement: true,
            ..
        })
    ));
    // A site that ends past text (last word straddles the end).
    let straddle = AltRecord {
        orig_offset: (0x2ffc - (at as i64 + 12)) as i32,
        alt_offset: 1,
        cpucap: CB_BIT | 3,
        orig_len: 8,
        alt_len: 0,
    };
    assert!(matches!(
        parse_edited(|i| put_records(i, at + 12, &[straddle])),
        Err(HypImageError::AltRecord { index: 1, .. })
    ));
}

#[test]
fn relocation_list_is_checked() {
    let at = layout().relocs.offset;
    let bad = |offs: [u32; 3]| parse_edited(|i| put_relocs(i, at, &offs));
    let err = |index, offset, problem| {
        Err(HypImageError::Reloc {
            index,
            offset,
            problem,
        })
    };
    // Into text.
    assert_eq!(
        bad([0x1000, 0x3008, 0x4010]),
        err(0, 0x1000, RelocProblem::OutsideData)
    );
    // Misaligned.
    assert_eq!(
        bad([0x3000, 0x3004, 0x4010]),
        err(1, 0x3004, RelocProblem::Misaligned)
    );
    // Out of range (past the file, past data, into the alt table).
    assert_eq!(
        bad([0x3000, 0x3008, 0x9000]),
        err(2, 0x9000, RelocProblem::OutsideData)
    );
    assert_eq!(
        bad([0x3000, 0x3008, 0x5000]),
        err(2, 0x5000, RelocProblem::OutsideData)
    );
    // Just past the end of rodata.
    assert_eq!(
        bad([0x3000, 0x3100, 0x4010]),
        err(1, 0x3100, RelocProblem::OutsideData)
    );
    // Not ascending / duplicate.
    assert_eq!(
        bad([0x3008, 0x3000, 0x4010]),
        err(1, 0x3000, RelocProblem::NotAscending)
    );
    assert_eq!(
        bad([0x3000, 0x3000, 0x4010]),
        err(1, 0x3000, RelocProblem::NotAscending)
    );
    assert_eq!(
        parse_with(|l| l.relocs.size = 10),
        Err(HypImageError::BadSize {
            region: Region::RelocList,
            size: 10,
            unit: 4
        })
    );
    assert_eq!(
        parse_with(|l| l.relocs.offset = 0x4ff8),
        Err(HypImageError::Overlap(Region::RelocList, Region::Data))
    );
}

#[test]
fn relocation_rebases_exactly_the_listed_slots() {
    let base = 0x0000_8000_4000_0000;
    let before = valid();
    let mut img = before.clone();
    assert_eq!(apply_relocations(&mut img, base), Ok(3));
    let mut changed = 0;
    for (slot, value) in SLOTS {
        assert_eq!(get64(&img, slot), base + value);
        changed += 8;
    }
    let diff = before.iter().zip(&img).filter(|(a, b)| a != b).count();
    assert!(diff <= changed, "only slot bytes may change ({diff} did)");
}

#[test]
fn bad_relocations_write_nothing() {
    let at = layout().relocs.offset;
    // A list with a good first entry and a bad last one: the first must stay untouched.
    let mut img = valid();
    put_relocs(&mut img, at, &[0x3000, 0x3008, 0x5008]);
    write_checksum(&mut img).unwrap();
    let before = img.clone();
    assert!(matches!(
        apply_relocations(&mut img, 0x8000_0000_0000),
        Err(HypImageError::Reloc {
            index: 2,
            problem: RelocProblem::OutsideData,
            ..
        })
    ));
    assert_eq!(img, before);

    // A slot whose value is not an image offset (the last one).
    let mut img = valid();
    put64(&mut img, 0x4010, 0x7008);
    write_checksum(&mut img).unwrap();
    let before = img.clone();
    assert_eq!(
        apply_relocations(&mut img, 0x8000_0000_0000),
        Err(HypImageError::Reloc {
            index: 2,
            offset: 0x4010,
            problem: RelocProblem::ValueOutsideImage(0x7008)
        })
    );
    assert_eq!(img, before);

    // Base + value overflowing.
    let mut img = valid();
    let before = img.clone();
    assert!(matches!(
        apply_relocations(&mut img, u64::MAX - 0xfff),
        Err(HypImageError::Reloc {
            problem: RelocProblem::Overflow(_),
            ..
        })
    ));
    assert_eq!(img, before);

    // Unaligned base, and a corrupted image.
    assert_eq!(
        apply_relocations(&mut img, 0x8000_0000_0800),
        Err(HypImageError::UnalignedBase(0x8000_0000_0800))
    );
    img[0x3001] ^= 1;
    let before = img.clone();
    assert!(apply_relocations(&mut img, 0x8000_0000_0000).is_err());
    assert_eq!(img, before);
}

#[test]
fn relocating_twice_is_refused() {
    let mut img = valid();
    apply_relocations(&mut img, 0x8000_0000_0000).unwrap();
    // The rebased slots changed the bytes, so the checksum no longer holds; reseal to
    // reach the slot-value check.
    write_checksum(&mut img).unwrap();
    let before = img.clone();
    assert!(matches!(
        apply_relocations(&mut img, 0x8000_0000_0000),
        Err(HypImageError::Reloc {
            index: 0,
            problem: RelocProblem::ValueOutsideImage(_),
            ..
        })
    ));
    assert_eq!(img, before);
}

#[test]
fn seal_refuses_an_invalid_layout() {
    let mut l = layout();
    l.host_vector = 0x1234;
    let mut img = raw_image(&layout());
    assert!(matches!(
        seal(&l, &mut img),
        Err(HypImageError::EntryMisaligned { .. })
    ));
}

#[test]
fn errors_name_what_is_wrong() {
    let e = HypImageError::Reloc {
        index: 2,
        offset: 0x1000,
        problem: RelocProblem::OutsideData,
    };
    let s = e.to_string();
    assert!(s.contains("relocation 2") && s.contains("0x1000") && s.contains("rodata"));
    let s = HypImageError::Overlap(Region::AltTable, Region::Text).to_string();
    assert!(s.contains("alternative table") && s.contains("text"));
}

proptest! {
    #[test]
    fn any_single_byte_corruption_is_detected(pos in CHECKSUMMED_FROM..0x5024usize, flip in 1u8..=255) {
        let mut img = valid();
        img[pos] ^= flip;
        prop_assert!(HypImage::parse(&img).is_err());
    }

    #[test]
    fn any_corruption_of_magic_or_checksum_is_detected(pos in 0..CHECKSUMMED_FROM, flip in 1u8..=255) {
        let mut img = valid();
        img[pos] ^= flip;
        prop_assert!(HypImage::parse(&img).is_err());
    }
}
