//! The guest bundle: how `cargo xtask qemu` hands a guest kernel, its initrd, its command
//! line and its VM settings to the host kernel.
//!
//! xtask writes one file and passes it to QEMU as the host's initrd (`-initrd`); the host
//! finds it through `/chosen` `linux,initrd-start`/`linux,initrd-end` and checks it with
//! [`Bundle::parse`] before anything of the guest runs. A host booted without an initrd
//! runs no guest.
//!
//! # Format (version 1, all integers little-endian)
//!
//! ```text
//! off  size field         meaning
//! 0x00 8    magic         "HYPGUEST"
//! 0x08 4    version       1
//! 0x0c 4    header_size   0x50 (the payload starts here)
//! 0x10 8    kernel_size   bytes of the guest kernel (arm64 Image or raw binary), > 0
//! 0x18 8    initrd_size   bytes of the guest's initrd, 0 = none
//! 0x20 8    append_size   bytes of the guest command line (UTF-8, no NUL), ≤ MAX_APPEND
//! 0x28 8    guest_mem     guest RAM in bytes: a multiple of 2 MiB, MIN_GUEST_MEM..=MAX_GUEST_MEM
//! 0x30 4    vcpus         vCPUs, 0 = one per online host CPU; ≤ MAX_VCPUS
//! 0x34 4    timeout_secs  the host stops the guest after this long, 0 = never
//! 0x38 4    flags         bit 0: the kernel is a raw binary (no Image header check); other bits 0
//! 0x3c 4    reserved      0
//! 0x40 8    checksum      see below
//! 0x48 8    reserved      0
//! 0x50      kernel        kernel_size bytes
//!           (zero padding to the next multiple of 8)
//!           initrd        initrd_size bytes
//!           (zero padding to the next multiple of 8)
//!           append        append_size bytes; the file ends here
//! ```
//!
//! The checksum covers the whole file with the checksum field read as zero: the file is
//! taken as little-endian 64-bit words (the last one zero-padded) and folded FNV-1a style,
//! `h = (h ^ word) * 0x100_0000_01b3` from `h = 0xcbf2_9ce4_8422_2325`. Word-wise, so the
//! host checks a Linux-sized kernel quickly even under TCG. It catches a truncated or
//! damaged file; it is no protection against a deliberate change (the host is not asked
//! to trust the bundle: it validates every field and the kernel itself again).

use core::fmt;

/// The file's first 8 bytes.
pub const MAGIC: [u8; 8] = *b"HYPGUEST";
/// The format version this module reads and writes.
pub const VERSION: u32 = 1;
/// Size of the header; the kernel starts here.
pub const HEADER_SIZE: usize = 0x50;
/// Offset of the checksum field.
pub const CHECKSUM_OFFSET: usize = 0x40;
/// Flag: the kernel is a raw binary, loaded without looking for an Image header.
pub const FLAG_RAW_KERNEL: u32 = 1 << 0;
/// Every flag this version defines.
pub const KNOWN_FLAGS: u32 = FLAG_RAW_KERNEL;
/// The longest guest command line (Linux's arm64 `COMMAND_LINE_SIZE` is 2048, NUL included).
pub const MAX_APPEND: u64 = 2047;
/// Guest RAM granule and minimum: the DTB takes the top 2 MiB, so less than 4 MiB
/// leaves no room for a kernel.
pub const GUEST_MEM_ALIGN: u64 = 2 << 20;
/// The smallest guest RAM.
pub const MIN_GUEST_MEM: u64 = 4 << 20;
/// The largest guest RAM (the guest's RAM at 0x4000_0000 must stay inside a 40-bit IPA space).
pub const MAX_GUEST_MEM: u64 = 255 << 30;
/// Most vCPUs a bundle may ask for.
pub const MAX_VCPUS: u32 = 64;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x100_0000_01b3;

/// The settings and sizes of a bundle (its header without magic, version and checksum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Bytes of the kernel.
    pub kernel_size: u64,
    /// Bytes of the initrd (0 = none).
    pub initrd_size: u64,
    /// Bytes of the command line.
    pub append_size: u64,
    /// Guest RAM in bytes.
    pub guest_mem: u64,
    /// vCPUs (0 = one per online host CPU).
    pub vcpus: u32,
    /// Seconds before the host stops the guest (0 = never).
    pub timeout_secs: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
}

/// A checked bundle: borrowed views of its parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bundle<'a> {
    /// The header's settings.
    pub header: Header,
    /// The guest kernel.
    pub kernel: &'a [u8],
    /// The guest's initrd, if any.
    pub initrd: Option<&'a [u8]>,
    /// The guest command line.
    pub append: &'a str,
}

/// What is wrong with a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BundleError {
    /// Fewer bytes than the header (or than the header says).
    Truncated {
        /// Bytes needed.
        need: u64,
        /// Bytes there.
        have: u64,
    },
    /// More bytes than the header accounts for.
    TrailingBytes {
        /// Bytes the header accounts for.
        expected: u64,
        /// Bytes there.
        have: u64,
    },
    /// The first 8 bytes are not [`MAGIC`].
    BadMagic,
    /// A version this code does not read.
    BadVersion(u32),
    /// `header_size` is not [`HEADER_SIZE`].
    BadHeaderSize(u32),
    /// The kernel is empty.
    EmptyKernel,
    /// A reserved field or flag bit is set.
    Reserved {
        /// Which field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// `guest_mem` is not a 2 MiB multiple in range.
    BadGuestMem(u64),
    /// `vcpus` is above [`MAX_VCPUS`].
    TooManyVcpus(u32),
    /// The command line is longer than [`MAX_APPEND`].
    AppendTooLong(u64),
    /// The command line is not UTF-8 or contains a NUL.
    BadAppend,
    /// The sizes add up to more than 64 bits can hold.
    SizeOverflow,
    /// The checksum does not match.
    BadChecksum {
        /// The header's value.
        stored: u64,
        /// What the bytes give.
        computed: u64,
    },
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Truncated { need, have } => write!(
                f,
                "guest bundle is truncated: needs {need} bytes, has {have}"
            ),
            Self::TrailingBytes { expected, have } => write!(
                f,
                "guest bundle has {have} bytes, its header accounts for {expected}"
            ),
            Self::BadMagic => write!(f, "not a guest bundle (no \"HYPGUEST\" magic)"),
            Self::BadVersion(v) => {
                write!(
                    f,
                    "guest bundle version {v} is not supported (want {VERSION})"
                )
            }
            Self::BadHeaderSize(s) => write!(
                f,
                "guest bundle header size {s:#x} is wrong (want {HEADER_SIZE:#x})"
            ),
            Self::EmptyKernel => write!(f, "guest bundle has an empty kernel"),
            Self::Reserved { field, value } => {
                write!(f, "guest bundle: reserved {field} is {value:#x}, must be 0")
            }
            Self::BadGuestMem(m) => write!(
                f,
                "guest memory {m:#x} must be a multiple of 2 MiB between {} MiB and {} GiB",
                MIN_GUEST_MEM >> 20,
                MAX_GUEST_MEM >> 30
            ),
            Self::TooManyVcpus(n) => {
                write!(f, "guest bundle asks for {n} vCPUs, at most {MAX_VCPUS}")
            }
            Self::AppendTooLong(n) => {
                write!(f, "guest command line is {n} bytes, at most {MAX_APPEND}")
            }
            Self::BadAppend => write!(f, "guest command line is not UTF-8 or contains a NUL"),
            Self::SizeOverflow => write!(f, "guest bundle sizes overflow"),
            Self::BadChecksum { stored, computed } => write!(
                f,
                "guest bundle checksum mismatch: header {stored:#x}, contents {computed:#x} \
                 (file damaged or truncated)"
            ),
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

const fn pad8(n: u64) -> Option<u64> {
    match n.checked_add(7) {
        Some(v) => Some(v & !7),
        None => None,
    }
}

/// Where the parts of a bundle with this header lie: (kernel, initrd, append) offsets and
/// the total file size.
fn offsets(h: &Header) -> Result<(u64, u64, u64, u64), BundleError> {
    let kernel = HEADER_SIZE as u64;
    let initrd = kernel
        .checked_add(pad8(h.kernel_size).ok_or(BundleError::SizeOverflow)?)
        .ok_or(BundleError::SizeOverflow)?;
    let append = initrd
        .checked_add(pad8(h.initrd_size).ok_or(BundleError::SizeOverflow)?)
        .ok_or(BundleError::SizeOverflow)?;
    let total = append
        .checked_add(h.append_size)
        .ok_or(BundleError::SizeOverflow)?;
    Ok((kernel, initrd, append, total))
}

impl Header {
    /// Checks the fields' own rules (not the file around them).
    pub fn validate(&self) -> Result<(), BundleError> {
        if self.kernel_size == 0 {
            return Err(BundleError::EmptyKernel);
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(BundleError::Reserved {
                field: "flags",
                value: u64::from(self.flags & !KNOWN_FLAGS),
            });
        }
        if !self.guest_mem.is_multiple_of(GUEST_MEM_ALIGN)
            || !(MIN_GUEST_MEM..=MAX_GUEST_MEM).contains(&self.guest_mem)
        {
            return Err(BundleError::BadGuestMem(self.guest_mem));
        }
        if self.vcpus > MAX_VCPUS {
            return Err(BundleError::TooManyVcpus(self.vcpus));
        }
        if self.append_size > MAX_APPEND {
            return Err(BundleError::AppendTooLong(self.append_size));
        }
        offsets(self).map(|_| ())
    }

    /// The size of the whole file this header describes.
    pub fn file_size(&self) -> Result<u64, BundleError> {
        offsets(self).map(|o| o.3)
    }

    /// Reads and checks the header alone (the first [`HEADER_SIZE`] bytes of `bytes`),
    /// without the checksum, so a loader can size things before it reads the rest.
    pub fn parse(bytes: &[u8]) -> Result<Header, BundleError> {
        let have = bytes.len() as u64;
        if bytes.len() < HEADER_SIZE {
            // A short file that does not even start like a bundle is reported as such.
            if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
                return Err(BundleError::BadMagic);
            }
            return Err(BundleError::Truncated {
                need: HEADER_SIZE as u64,
                have,
            });
        }
        if bytes[..8] != MAGIC {
            return Err(BundleError::BadMagic);
        }
        let version = u32_at(bytes, 0x08);
        if version != VERSION {
            return Err(BundleError::BadVersion(version));
        }
        let header_size = u32_at(bytes, 0x0c);
        if header_size as usize != HEADER_SIZE {
            return Err(BundleError::BadHeaderSize(header_size));
        }
        for (field, at, width) in [("field 0x3c", 0x3c, 4), ("field 0x48", 0x48, 8)] {
            let value = if width == 4 {
                u64::from(u32_at(bytes, at))
            } else {
                u64_at(bytes, at)
            };
            if value != 0 {
                return Err(BundleError::Reserved { field, value });
            }
        }
        let h = Header {
            kernel_size: u64_at(bytes, 0x10),
            initrd_size: u64_at(bytes, 0x18),
            append_size: u64_at(bytes, 0x20),
            guest_mem: u64_at(bytes, 0x28),
            vcpus: u32_at(bytes, 0x30),
            timeout_secs: u32_at(bytes, 0x34),
            flags: u32_at(bytes, 0x38),
        };
        h.validate()?;
        Ok(h)
    }

    /// The header's bytes with the checksum field zero (see [`Header::encode`]).
    fn raw(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[..8].copy_from_slice(&MAGIC);
        b[0x08..0x0c].copy_from_slice(&VERSION.to_le_bytes());
        b[0x0c..0x10].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        b[0x10..0x18].copy_from_slice(&self.kernel_size.to_le_bytes());
        b[0x18..0x20].copy_from_slice(&self.initrd_size.to_le_bytes());
        b[0x20..0x28].copy_from_slice(&self.append_size.to_le_bytes());
        b[0x28..0x30].copy_from_slice(&self.guest_mem.to_le_bytes());
        b[0x30..0x34].copy_from_slice(&self.vcpus.to_le_bytes());
        b[0x34..0x38].copy_from_slice(&self.timeout_secs.to_le_bytes());
        b[0x38..0x3c].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// The header bytes of a bundle holding these parts (checksum filled in). The file is
    /// this header, then `kernel`, zeros to a multiple of 8, `initrd`, zeros to a
    /// multiple of 8, then `append`; [`padding`] gives the zero counts. The sizes in
    /// `self` must be the parts' lengths.
    pub fn encode(
        &self,
        kernel: &[u8],
        initrd: &[u8],
        append: &[u8],
    ) -> Result<[u8; HEADER_SIZE], BundleError> {
        self.validate()?;
        if kernel.len() as u64 != self.kernel_size
            || initrd.len() as u64 != self.initrd_size
            || append.len() as u64 != self.append_size
        {
            return Err(BundleError::SizeOverflow);
        }
        let mut b = self.raw();
        let mut sum = Checksum::new();
        sum.update(&b);
        sum.update(kernel);
        sum.update(&[0; 8][..padding(self.kernel_size)]);
        sum.update(initrd);
        sum.update(&[0; 8][..padding(self.initrd_size)]);
        sum.update(append);
        b[CHECKSUM_OFFSET..CHECKSUM_OFFSET + 8].copy_from_slice(&sum.finish().to_le_bytes());
        Ok(b)
    }
}

/// Zero bytes that follow a part of `len` bytes (0..=7).
pub const fn padding(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

/// The word-wise FNV-1a checksum of the format, fed in pieces of any length.
#[derive(Clone, Copy, Debug)]
pub struct Checksum {
    hash: u64,
    partial: [u8; 8],
    fill: usize,
}

impl Default for Checksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Checksum {
    /// A checksum over nothing yet.
    pub const fn new() -> Self {
        Self {
            hash: FNV_OFFSET,
            partial: [0; 8],
            fill: 0,
        }
    }

    fn word(&mut self, w: [u8; 8]) {
        self.hash = (self.hash ^ u64::from_le_bytes(w)).wrapping_mul(FNV_PRIME);
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, mut bytes: &[u8]) {
        if self.fill > 0 {
            let take = (8 - self.fill).min(bytes.len());
            self.partial[self.fill..self.fill + take].copy_from_slice(&bytes[..take]);
            self.fill += take;
            bytes = &bytes[take..];
            if self.fill < 8 {
                return;
            }
            let w = self.partial;
            self.word(w);
            self.fill = 0;
        }
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.word(w);
        }
        let rest = chunks.remainder();
        self.partial[..rest.len()].copy_from_slice(rest);
        self.fill = rest.len();
    }

    /// The checksum (a partial last word is zero-padded).
    pub fn finish(mut self) -> u64 {
        if self.fill > 0 {
            let mut w = [0u8; 8];
            w[..self.fill].copy_from_slice(&self.partial[..self.fill]);
            self.word(w);
        }
        self.hash
    }
}

impl<'a> Bundle<'a> {
    /// Checks a whole bundle file and returns views of its parts.
    pub fn parse(bytes: &'a [u8]) -> Result<Bundle<'a>, BundleError> {
        let header = Header::parse(bytes)?;
        let (k, i, a, total) = offsets(&header)?;
        let have = bytes.len() as u64;
        if have < total {
            return Err(BundleError::Truncated { need: total, have });
        }
        if have > total {
            return Err(BundleError::TrailingBytes {
                expected: total,
                have,
            });
        }
        let stored = u64_at(bytes, CHECKSUM_OFFSET);
        let mut sum = Checksum::new();
        sum.update(&bytes[..CHECKSUM_OFFSET]);
        sum.update(&[0; 8]);
        sum.update(&bytes[CHECKSUM_OFFSET + 8..]);
        let computed = sum.finish();
        if stored != computed {
            return Err(BundleError::BadChecksum { stored, computed });
        }
        // Every offset is below `total`, which is the slice's length.
        let part = |at: u64, len: u64| &bytes[at as usize..(at + len) as usize];
        let append = core::str::from_utf8(part(a, header.append_size))
            .ok()
            .filter(|s| !s.contains('\0'))
            .ok_or(BundleError::BadAppend)?;
        Ok(Bundle {
            header,
            kernel: part(k, header.kernel_size),
            initrd: (header.initrd_size > 0).then(|| part(i, header.initrd_size)),
            append,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn header(kernel: &[u8], initrd: &[u8], append: &str) -> Header {
        Header {
            kernel_size: kernel.len() as u64,
            initrd_size: initrd.len() as u64,
            append_size: append.len() as u64,
            guest_mem: 128 << 20,
            vcpus: 4,
            timeout_secs: 30,
            flags: 0,
        }
    }

    fn build(h: &Header, kernel: &[u8], initrd: &[u8], append: &str) -> Vec<u8> {
        let mut v = h
            .encode(kernel, initrd, append.as_bytes())
            .unwrap()
            .to_vec();
        v.extend_from_slice(kernel);
        v.resize(v.len() + padding(kernel.len() as u64), 0);
        v.extend_from_slice(initrd);
        v.resize(v.len() + padding(initrd.len() as u64), 0);
        v.extend_from_slice(append.as_bytes());
        v
    }

    fn sample() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let kernel: Vec<u8> = (0..1001u32).map(|i| (i * 7) as u8).collect();
        let initrd: Vec<u8> = (0..13u8).collect();
        let h = header(&kernel, &initrd, "console=ttyAMA0 bench");
        let file = build(&h, &kernel, &initrd, "console=ttyAMA0 bench");
        (file, kernel, initrd)
    }

    #[test]
    fn round_trip() {
        let (file, kernel, initrd) = sample();
        let b = Bundle::parse(&file).unwrap();
        assert_eq!(b.kernel, &kernel[..]);
        assert_eq!(b.initrd, Some(&initrd[..]));
        assert_eq!(b.append, "console=ttyAMA0 bench");
        assert_eq!(b.header.guest_mem, 128 << 20);
        assert_eq!(b.header.vcpus, 4);
        assert_eq!(b.header.timeout_secs, 30);
        assert_eq!(b.header.file_size().unwrap(), file.len() as u64);
        // No initrd, no command line.
        let h = header(&kernel, &[], "");
        let b2 = build(&h, &kernel, &[], "");
        let p = Bundle::parse(&b2).unwrap();
        assert_eq!(p.initrd, None);
        assert_eq!(p.append, "");
    }

    #[test]
    fn every_damaged_byte_is_caught() {
        let (file, _, _) = sample();
        for at in (0..file.len())
            .step_by(37)
            .chain([CHECKSUM_OFFSET, file.len() - 1])
        {
            let mut bad = file.clone();
            bad[at] ^= 0x10;
            assert!(Bundle::parse(&bad).is_err(), "flipped byte {at} accepted");
        }
    }

    #[test]
    fn truncation_and_trailing_bytes() {
        let (file, _, _) = sample();
        for len in [0, 7, 8, 40, HEADER_SIZE, file.len() - 1] {
            let e = Bundle::parse(&file[..len]).unwrap_err();
            assert!(
                matches!(e, BundleError::Truncated { .. } | BundleError::BadMagic),
                "{len}: {e}"
            );
        }
        let e = Bundle::parse(&file[..file.len() - 1]).unwrap_err();
        assert_eq!(
            e,
            BundleError::Truncated {
                need: file.len() as u64,
                have: file.len() as u64 - 1
            }
        );
        assert!(e.to_string().contains("truncated"));
        let mut long = file.clone();
        long.push(0);
        assert!(matches!(
            Bundle::parse(&long),
            Err(BundleError::TrailingBytes { .. })
        ));
    }

    #[test]
    fn header_rules() {
        let (file, kernel, initrd) = sample();
        let mut bad = file.clone();
        bad[0] = b'X';
        assert_eq!(Bundle::parse(&bad), Err(BundleError::BadMagic));
        let mut bad = file.clone();
        bad[8] = 2;
        assert_eq!(Bundle::parse(&bad), Err(BundleError::BadVersion(2)));
        let mut bad = file.clone();
        bad[0x48] = 1;
        assert!(matches!(
            Bundle::parse(&bad),
            Err(BundleError::Reserved { .. })
        ));
        let base = header(&kernel, &initrd, "x");
        for (h, want) in [
            (
                Header {
                    guest_mem: (128 << 20) + 4096,
                    ..base
                },
                BundleError::BadGuestMem((128 << 20) + 4096),
            ),
            (
                Header {
                    guest_mem: 2 << 20,
                    ..base
                },
                BundleError::BadGuestMem(2 << 20),
            ),
            (Header { vcpus: 65, ..base }, BundleError::TooManyVcpus(65)),
            (
                Header {
                    kernel_size: 0,
                    ..base
                },
                BundleError::EmptyKernel,
            ),
            (
                Header { flags: 6, ..base },
                BundleError::Reserved {
                    field: "flags",
                    value: 6,
                },
            ),
            (
                Header {
                    append_size: MAX_APPEND + 1,
                    ..base
                },
                BundleError::AppendTooLong(MAX_APPEND + 1),
            ),
            (
                Header {
                    kernel_size: u64::MAX - 3,
                    ..base
                },
                BundleError::SizeOverflow,
            ),
            // Each size fits, their sum with the header does not.
            (
                Header {
                    kernel_size: 1 << 63,
                    initrd_size: 1 << 63,
                    ..base
                },
                BundleError::SizeOverflow,
            ),
            (
                Header {
                    kernel_size: u64::MAX - 0x4f,
                    initrd_size: 0,
                    append_size: 0,
                    ..base
                },
                BundleError::SizeOverflow,
            ),
        ] {
            assert_eq!(h.validate(), Err(want), "{h:?}");
        }
    }

    #[test]
    fn append_must_be_text_without_nul() {
        let kernel = [1u8; 16];
        let h = header(&kernel, &[], "a\0b");
        let file = build(&h, &kernel, &[], "a\0b");
        assert_eq!(Bundle::parse(&file), Err(BundleError::BadAppend));
    }

    #[test]
    fn checksum_does_not_depend_on_how_it_is_fed() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut one = Checksum::new();
        one.update(&data);
        let mut many = Checksum::new();
        for c in data.chunks(3) {
            many.update(c);
        }
        assert_eq!(one.finish(), many.finish());
        let mut other = Checksum::new();
        other.update(&data[..99]);
        assert_ne!(other.finish(), one.finish());
    }
}
