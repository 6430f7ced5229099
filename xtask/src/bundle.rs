//! Writing the guest bundle (`shared::guest_abi::bundle`) that `cargo xtask qemu` passes
//! to the host as its initrd: the guest kernel, its initrd, its command line, guest RAM
//! size, vCPU count and time limit in one checked file.
//!
//! Before writing, the kernel and initrd are checked with the host's own placement rules
//! (`el1_host::vmm::launch::check_kernel`): a truncated Image, a bad header or files too
//! large for guest RAM are refused here, with the message the host would print, before
//! QEMU starts.

use el1_host::vmm::guest_image::KernelFormat;
use el1_host::vmm::launch;
use shared::guest_abi::bundle::{padding, Header, FLAG_RAW_KERNEL};
use std::path::{Path, PathBuf};

/// The bundle format itself (header, checksum, parser), for tools and tests.
pub use shared::guest_abi::bundle as format;

/// Default guest RAM: 128 MiB.
pub const DEFAULT_GUEST_MEM: u64 = 128 << 20;

/// What to put in a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSpec {
    /// The guest kernel (arm64 Image, or a raw binary with `raw`).
    pub kernel: PathBuf,
    /// The guest's initrd.
    pub initrd: Option<PathBuf>,
    /// The guest's command line.
    pub append: String,
    /// Guest RAM in bytes.
    pub guest_mem: u64,
    /// vCPUs (0: one per host CPU).
    pub vcpus: u32,
    /// Seconds before the host stops the guest (0: never).
    pub timeout_secs: u32,
    /// Load the kernel as a raw binary even if it looks like an Image.
    pub raw: bool,
}

impl GuestSpec {
    /// A spec for `kernel` with the defaults: no initrd, empty command line, 128 MiB,
    /// one vCPU per host CPU, no time limit.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            append: String::new(),
            guest_mem: DEFAULT_GUEST_MEM,
            vcpus: 0,
            timeout_secs: 0,
            raw: false,
        }
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the guest {what} {}: {e}", path.display()))
}

/// Builds the bundle bytes from the parts, checking them as the host will.
pub fn encode(
    kernel: &[u8],
    initrd: Option<&[u8]>,
    append: &str,
    guest_mem: u64,
    vcpus: u32,
    timeout_secs: u32,
    raw: bool,
) -> Result<Vec<u8>, String> {
    let header = Header {
        kernel_size: kernel.len() as u64,
        initrd_size: initrd.map_or(0, |i| i.len() as u64),
        append_size: append.len() as u64,
        guest_mem,
        vcpus,
        timeout_secs,
        flags: if raw { FLAG_RAW_KERNEL } else { 0 },
    };
    header.validate().map_err(|e| e.to_string())?;
    let format = if raw {
        KernelFormat::Raw
    } else {
        KernelFormat::Auto
    };
    launch::check_kernel(kernel, format, initrd.map(|i| i.len() as u64), guest_mem)
        .map_err(|e| e.to_string())?;
    assemble(&header, kernel, initrd.unwrap_or(&[]), append)
}

/// Lays out a bundle — header, kernel, initrd and command line, each padded as the
/// format says — without checking the parts (tests use it to hand the host bundles that
/// only the host's own checks refuse).
pub fn assemble(
    header: &Header,
    kernel: &[u8],
    initrd: &[u8],
    append: &str,
) -> Result<Vec<u8>, String> {
    let head = header
        .encode(kernel, initrd, append.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(head.len() + kernel.len() + initrd.len() + append.len() + 16);
    out.extend_from_slice(&head);
    out.extend_from_slice(kernel);
    out.resize(out.len() + padding(kernel.len() as u64), 0);
    out.extend_from_slice(initrd);
    out.resize(out.len() + padding(initrd.len() as u64), 0);
    out.extend_from_slice(append.as_bytes());
    Ok(out)
}

/// Reads the spec's files, checks them and writes the bundle to `out`.
pub fn write(spec: &GuestSpec, out: &Path) -> Result<PathBuf, String> {
    let kernel = read(&spec.kernel, "kernel")?;
    let initrd = spec
        .initrd
        .as_deref()
        .map(|p| read(p, "initrd"))
        .transpose()?;
    let bytes = encode(
        &kernel,
        initrd.as_deref(),
        &spec.append,
        spec.guest_mem,
        spec.vcpus,
        spec.timeout_secs,
        spec.raw,
    )
    .map_err(|e| format!("{}: {e}", spec.kernel.display()))?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    std::fs::write(out, &bytes).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    Ok(out.to_path_buf())
}

/// Where `cargo xtask qemu` writes the bundle.
pub fn bundle_path(root: &Path) -> PathBuf {
    root.join("target/guest-bundle/bundle.bin")
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::guest_abi::bundle::Bundle;

    fn image(image_size: u64, len: usize) -> Vec<u8> {
        let mut k = vec![0u8; len];
        k[16..24].copy_from_slice(&image_size.to_le_bytes());
        k[0x38..0x3c].copy_from_slice(b"ARM\x64");
        k
    }

    #[test]
    fn a_good_bundle_parses_back() {
        let k = image(0x20_0000, 5000);
        let b = encode(&k, Some(&[9; 33]), "bench", 64 << 20, 2, 30, false).unwrap();
        let p = Bundle::parse(&b).unwrap();
        assert_eq!(p.kernel, &k[..]);
        assert_eq!(p.initrd, Some(&[9u8; 33][..]));
        assert_eq!(p.append, "bench");
        assert_eq!((p.header.vcpus, p.header.timeout_secs), (2, 30));
    }

    #[test]
    fn malformed_guests_are_refused_before_qemu() {
        let k = image(0x20_0000, 5000);
        // Truncated header.
        let e = encode(&k[..60], None, "", 64 << 20, 0, 0, false).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
        // Too large for guest RAM.
        let e = encode(&image(200 << 20, 4096), None, "", 64 << 20, 0, 0, false).unwrap_err();
        assert!(e.contains("does not fit in guest RAM"), "{e}");
        // Bad header: text_offset not 4 KiB aligned.
        let mut bad = k.clone();
        bad[8] = 0x10;
        let e = encode(&bad, None, "", 64 << 20, 0, 0, false).unwrap_err();
        assert!(e.contains("text_offset"), "{e}");
        // Guest RAM that is not a 2 MiB multiple.
        let e = encode(&k, None, "", (64 << 20) + 4096, 0, 0, false).unwrap_err();
        assert!(e.contains("multiple of 2 MiB"), "{e}");
        // An initrd that does not fit.
        let e = encode(&k, Some(&vec![0; 70 << 20]), "", 64 << 20, 0, 0, false).unwrap_err();
        assert!(e.contains("initrd does not fit"), "{e}");
    }
}
