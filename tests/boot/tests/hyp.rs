//! Boots the host with its hyp under QEMU and checks the hyp's lines (DESIGN §7): the
//! `va-layout:` line, both `alternatives: image=hyp` passes, `hyp: mode=nvhe cpus=N …
//! ready` and every `selftest:` line ok — for each CPU model with 1 and 4 CPUs, for
//! several RAM sizes, with `nokaslr` — and that a corrupted hyp image (header magic,
//! checksum, alternative table, relocation list) is refused with a clear message and
//! nothing patched or installed.
//!
//! The corrupted images are copies of the normal host Image with the embedded hyp image
//! changed in place (same length, so nothing is rebuilt); for the alternative-table and
//! relocation corruptions the checksum is recomputed, so the refusal has to come from the
//! check of that table, not from the checksum.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use xtask::qemu::{self, Outcome, QemuConfig, Report};

const TIMEOUT: Duration = Duration::from_secs(90);
/// The selftests the host runs on its hyp.
const SELFTESTS: [&str; 6] = [
    "hyp-caps",
    "kern-hyp-va",
    "hyp-constants",
    "hyp-abi",
    "hyp-vectors",
    // A one-page guest run on every CPU: Hvc, Mmio write of 42, a read of two data
    // pages before and after VmUnmap, Wfx, Smc, an injected abort (issue 4).
    "hyp-vcpu",
];

struct Run {
    what: String,
    report: Report,
}

impl Run {
    fn transcript(&self) -> String {
        self.report.lines.join("\n")
    }
    fn lines(&self, prefix: &str) -> Vec<&str> {
        self.report
            .lines
            .iter()
            .map(|l| l.trim_end())
            .filter(|l| l.starts_with(prefix))
            .collect()
    }
    fn one(&self, prefix: &str) -> &str {
        let l = self.lines(prefix);
        assert_eq!(
            l.len(),
            1,
            "{}: want one `{prefix}` line\n{}",
            self.what,
            self.transcript()
        );
        l[0]
    }
}

fn boot_image(image: &Path, cpu: &str, smp: u32, mem: &str, append: Option<&str>) -> Run {
    let _slot = xtask::qemu::QemuSlot::take();
    let mut cfg = QemuConfig::new(image.to_path_buf());
    cfg.cpu = cpu.into();
    cfg.smp = smp;
    cfg.mem = mem.into();
    cfg.append = append.map(Into::into);
    cfg.timeout = Some(TIMEOUT);
    let what = format!(
        "{} -cpu {cpu} -smp {smp} -m {mem} -append {append:?}",
        image
            .file_name()
            .map_or("?".into(), |n| n.to_string_lossy())
    );
    let start = Instant::now();
    let report = qemu::run(&cfg, |_| {}).unwrap_or_else(|e| panic!("{what}: {e}"));
    eprintln!(
        "boot {what}: {:?} in {:.1} s",
        report.outcome,
        start.elapsed().as_secs_f64()
    );
    Run { what, report }
}

/// `key=value` fields of a line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

fn hex(line: &str, key: &str) -> u64 {
    let v = field(line, key).unwrap_or_else(|| panic!("no {key}= in `{line}`"));
    let digits = v
        .strip_prefix("0x")
        .unwrap_or_else(|| panic!("{key}={v}: not 0x-prefixed in `{line}`"));
    assert!(
        !digits.is_empty()
            && digits
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{key}={v}: not lower-case hex in `{line}`"
    );
    assert!(
        digits == "0" || !digits.starts_with('0'),
        "{key}={v}: padded in `{line}`"
    );
    u64::from_str_radix(digits, 16).unwrap()
}

fn dec(line: &str, key: &str) -> u64 {
    field(line, key)
        .unwrap_or_else(|| panic!("no {key}= in `{line}`"))
        .parse()
        .unwrap_or_else(|_| panic!("{key}= is not decimal in `{line}`"))
}

/// Checks a successful boot with the hyp; returns the `va-layout:` line's tag_lsb.
fn check_hyp_boot(r: &Run, smp: u32, nokaslr: bool) -> u8 {
    assert_eq!(
        r.report.outcome,
        Outcome::Status(0),
        "{}: {}\n{}",
        r.what,
        r.report.failure().unwrap_or_default(),
        r.transcript()
    );
    let va = r.one("va-layout: ");
    let keys = [
        "va_bits",
        "tag_lsb",
        "va_mask",
        "tag_val",
        "hyp_pa",
        "hyp_base",
        "kimage_vaddr",
        "kimage_voffset",
        "ctr_el0",
    ];
    let got_keys: Vec<&str> = va
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split('=').next())
        .collect();
    assert_eq!(got_keys, keys, "{}: field order of `{va}`", r.what);
    assert_eq!(dec(va, "va_bits"), 48, "{va}");
    let tag_lsb = dec(va, "tag_lsb");
    let mask = hex(va, "va_mask");
    let tag_val = hex(va, "tag_val");
    assert_eq!(mask, (1u64 << tag_lsb) - 1, "{va}");
    // The hyp half is the one the idmap (low RAM, bit 47 clear) is not in.
    assert_eq!(
        (tag_val << tag_lsb) >> 47,
        1,
        "{va}: hyp range not in the upper half"
    );
    let hyp_pa = hex(va, "hyp_pa");
    let hyp_base = hex(va, "hyp_base");
    let layout = r.one("layout: ");
    let memstart = hex(layout, "memstart");
    // hyp_base = kern_hyp_va(linear VA of hyp_pa).
    let linear = 0xffff_0000_0000_0000u64 + (hyp_pa - memstart);
    assert_eq!(hyp_base, (linear & mask) | (tag_val << tag_lsb), "{va}");
    assert_eq!(hex(va, "kimage_vaddr"), hex(layout, "kimage_vaddr"), "{va}");
    assert_eq!(
        hex(va, "kimage_voffset"),
        hex(layout, "kimage_voffset"),
        "{va}"
    );
    assert_eq!(hyp_pa % (2 << 20), 0, "{va}: carve-out not 2 MiB aligned");
    if nokaslr {
        assert_eq!(
            tag_val,
            1 << (47 - tag_lsb),
            "{va}: nokaslr must leave no random bits"
        );
    }

    for pass in ["boot", "system"] {
        let l = r.one(&format!("alternatives: image=hyp pass={pass} "));
        let (e, a) = (dec(l, "entries"), dec(l, "applied"));
        assert!(e > 0 && a <= e && dec(l, "callbacks") <= a, "{l}");
    }
    let sys = r.one("alternatives: image=hyp pass=system ");
    // The system pass always applies the ALWAYS_SYSTEM layout callbacks.
    assert!(dec(sys, "callbacks") >= 3, "{sys}");

    let ready = r.one("hyp: mode=");
    assert_eq!(field(ready, "mode"), Some("nvhe"), "{ready}");
    assert_eq!(dec(ready, "cpus"), u64::from(smp), "{ready}");
    assert!(
        dec(ready, "image") > 0 && ready.ends_with(" ready"),
        "{ready}"
    );

    for name in SELFTESTS {
        let l = r.one(&format!("selftest: {name} "));
        assert!(
            l.starts_with(&format!("selftest: {name} ok")),
            "{}: {l}\n{}",
            r.what,
            r.transcript()
        );
        assert_eq!(dec(l, "cpus"), u64::from(smp), "{l}");
    }
    assert!(
        r.lines("selftest: ").iter().all(|l| !l.contains("FAILED")),
        "{}",
        r.transcript()
    );
    tag_lsb as u8
}

/// Boots `cpu` with `smp` CPUs and `mem` of RAM and checks every hyp line; `tag_lsb` is
/// what the RAM size implies (RAM starts at 1 GiB on QEMU virt, memstart = RAM base).
fn model(cpu: &str, smp: u32, mem: &str, tag_lsb: u8) {
    let r = boot_image(boot_tests::image(), cpu, smp, mem, None);
    assert_eq!(check_hyp_boot(&r, smp, false), tag_lsb, "{}", r.what);
    let v = r.one("selftest: hyp-vectors ");
    let want = if cpu == "cortex-a57" || cpu == "cortex-a72" {
        "path=hardened"
    } else {
        "path=direct"
    };
    assert!(v.contains(want), "{}: {v}", r.what);
    // VmUnmap's TLB invalidation: the HAS_TLB_RANGE alternative takes the range path
    // only where the CPU has FEAT_TLBIRANGE (of these models, `max`).
    let u = r.one("selftest: hyp-vcpu ");
    let want = if cpu == "max" { "range" } else { "per-page" };
    assert_eq!(field(u, "tlbi"), Some(want), "{}: {u}", r.what);
    assert!(
        field(u, "exits").is_some_and(|e| e.contains("unmapped-read")),
        "{}: {u}",
        r.what
    );
}

/// One test per CPU model, CPU count and RAM size.
macro_rules! model_tests {
    ($($cpu_name:ident = $cpu:literal;)*) => {
        $(
            mod $cpu_name {
                use super::model;
                #[test] fn smp1_512m() { model($cpu, 1, "512M", 29); }
                #[test] fn smp4_512m() { model($cpu, 4, "512M", 29); }
                #[test] fn smp1_1g() { model($cpu, 1, "1G", 30); }
                #[test] fn smp4_1g() { model($cpu, 4, "1G", 30); }
                #[test] fn smp1_3g() { model($cpu, 1, "3G", 32); }
                #[test] fn smp4_3g() { model($cpu, 4, "3G", 32); }
                #[test] fn smp1_4g() { model($cpu, 1, "4G", 32); }
                #[test] fn smp4_4g() { model($cpu, 4, "4G", 32); }
            }
        )*
    };
}

model_tests! {
    cortex_a53 = "cortex-a53";
    cortex_a57 = "cortex-a57";
    cortex_a72 = "cortex-a72";
    max = "max";
}

#[test]
fn hyp_nokaslr_has_no_random_tag_bits() {
    let r = boot_image(boot_tests::image(), "max", 2, "1G", Some("nokaslr"));
    check_hyp_boot(&r, 2, true);
    assert_eq!(hex(r.one("va-layout: "), "tag_val"), 0x20000);
}

// ---- Corrupted hyp images ----

const MAGIC: &[u8; 8] = b"RSHYPIMG";

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn rd32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The embedded hyp image inside the host Image: the magic followed by a version-1
/// header whose checksum matches (the magic alone also occurs in the host's code).
fn find_hyp(img: &[u8]) -> std::ops::Range<usize> {
    let mut found = Vec::new();
    for at in img
        .windows(8)
        .enumerate()
        .filter(|(_, w)| w == MAGIC)
        .map(|(i, _)| i)
    {
        let Some(h) = img.get(at..at + 0x70) else {
            continue;
        };
        let size = rd32(h, 0x18) as usize;
        if rd32(h, 0x10) != 1 || rd32(h, 0x14) != 0x70 {
            continue;
        }
        let Some(body) = img.get(at..at + size) else {
            continue;
        };
        if u64::from_le_bytes(body[8..16].try_into().unwrap()) == fnv1a64(&body[16..]) {
            found.push(at..at + size);
        }
    }
    assert_eq!(found.len(), 1, "embedded hyp images found: {found:?}");
    found.remove(0)
}

fn reseal(hyp: &mut [u8]) {
    let sum = fnv1a64(&hyp[16..]);
    hyp[8..16].copy_from_slice(&sum.to_le_bytes());
}

/// Writes a copy of the host Image with its hyp image corrupted as `kind` says.
fn corrupted_image(kind: &str) -> PathBuf {
    let mut img = std::fs::read(boot_tests::image()).expect("host Image");
    let range = find_hyp(&img);
    let hyp = &mut img[range];
    match kind {
        "header" => hyp[0] ^= 0x20,
        // A text byte (page 1) changes and the checksum is left stale.
        "checksum" => hyp[0x1000] ^= 0xff,
        "alt" => {
            // First record's orig_offset moved 1 MiB away: outside text.
            let (off, size) = (rd32(hyp, 0x50) as usize, rd32(hyp, 0x54));
            assert!(size >= 12, "hyp image has no alternative records");
            let v = rd32(hyp, off).wrapping_add(1 << 20);
            hyp[off..off + 4].copy_from_slice(&v.to_le_bytes());
            reseal(hyp);
        }
        "reloc" => {
            // First relocation entry made misaligned.
            let (off, size) = (rd32(hyp, 0x58) as usize, rd32(hyp, 0x5c));
            assert!(size >= 4, "hyp image has no relocations");
            let v = rd32(hyp, off) + 4;
            hyp[off..off + 4].copy_from_slice(&v.to_le_bytes());
            reseal(hyp);
        }
        other => panic!("unknown corruption {other}"),
    }
    let dir = xtask::build::workspace_root().join("target/hyp-corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("el1-host-hyp-{kind}.img"));
    std::fs::write(&path, &img).unwrap();
    path
}

fn refused(kind: &str, reason: &str) {
    let image = corrupted_image(kind);
    let r = boot_image(&image, "cortex-a57", 2, "1G", None);
    let line = r.one("hyp: refused: ");
    assert!(
        line.contains(reason),
        "{}: want `{reason}` in `{line}`",
        r.what
    );
    // Nothing laid out, patched or installed; the host still ran to its end and
    // reported failure.
    for absent in [
        "va-layout:",
        "alternatives: image=hyp",
        "hyp: mode=",
        "selftest: hyp-",
    ] {
        assert!(
            r.lines(absent).is_empty(),
            "{}: printed `{absent}`\n{}",
            r.what,
            r.transcript()
        );
    }
    assert!(r.lines("panic:").is_empty(), "{}", r.transcript());
    assert!(
        matches!(r.report.outcome, Outcome::Status(s) if s != 0),
        "{}: {:?}\n{}",
        r.what,
        r.report.outcome,
        r.transcript()
    );
    // The host itself was fine: its own selftests and caps still ran.
    assert_eq!(
        r.lines("smp: cpus=2 online=2").len(),
        1,
        "{}",
        r.transcript()
    );
}

#[test]
fn corrupted_header_is_refused() {
    refused("header", "bad magic");
}

#[test]
fn corrupted_checksum_is_refused() {
    refused("checksum", "checksum mismatch");
}

#[test]
fn corrupted_alternative_table_is_refused() {
    refused("alt", "alternative record 0");
}

#[test]
fn corrupted_relocation_list_is_refused() {
    refused("reloc", "relocation 0");
}
