//! From a guest bundle (`shared::guest_abi::bundle`) to everything a VM needs before its
//! first instruction: the vCPUs and their MPIDRs, the placement of kernel, initrd and
//! DTB in guest RAM ([`super::guest_image`]) and the guest's device tree
//! ([`super::guest_dtb`]). Pure: the run loop copies the result into guest RAM.
//!
//! xtask runs [`check_kernel`] on the same files before it starts QEMU, and the host runs
//! [`plan`] again before anything of the guest runs, so a malformed guest is refused
//! twice with the same message.

use super::guest_dtb::{self, GuestDtbConfig, GuestDtbError};
use super::guest_image::{self, GuestLayout, ImageError, KernelFormat};
use super::map;
use crate::layout::PhysRange;
use alloc::vec::Vec;
use core::fmt;
use flat_device_tree::Fdt;
use shared::guest_abi::bundle::{Bundle, BundleError, FLAG_RAW_KERNEL};

/// Why a guest cannot be launched.
#[derive(Debug, PartialEq, Eq)]
pub enum LaunchError {
    /// The bundle is malformed.
    Bundle(BundleError),
    /// The kernel (or initrd) cannot be placed in guest RAM.
    Image(ImageError),
    /// The guest device tree cannot be written.
    Dtb(GuestDtbError),
    /// More vCPUs than host CPUs (vCPUs run 1:1 on host CPUs).
    TooManyVcpus {
        /// vCPUs asked for.
        asked: u32,
        /// Host CPUs online.
        cpus: usize,
    },
}

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bundle(e) => write!(f, "{e}"),
            Self::Image(e) => write!(f, "{e}"),
            Self::Dtb(e) => write!(f, "{e}"),
            Self::TooManyVcpus { asked, cpus } => write!(
                f,
                "{asked} vCPUs asked for, but only {cpus} host CPUs are online (vCPUs run 1:1 on host CPUs)"
            ),
        }
    }
}

/// Everything the run loop needs to start the VM.
#[derive(Debug, PartialEq, Eq)]
pub struct Launch {
    /// Each vCPU's MPIDR (vCPU `n` runs on host CPU `n` and has its affinity).
    pub mpidrs: Vec<u64>,
    /// Guest RAM (IPAs).
    pub ram: PhysRange,
    /// Where kernel, initrd and DTB go.
    pub layout: GuestLayout,
    /// The guest's device tree.
    pub dtb: Vec<u8>,
    /// Seconds before the host stops the guest (0 = never).
    pub timeout_secs: u32,
}

/// The kernel format a bundle's flags ask for.
pub fn kernel_format(flags: u32) -> KernelFormat {
    if flags & FLAG_RAW_KERNEL != 0 {
        KernelFormat::Raw
    } else {
        KernelFormat::Auto
    }
}

/// Checks that `kernel` (and an initrd of `initrd_len` bytes) fit a guest with
/// `guest_mem` bytes of RAM at [`map::RAM_BASE`]: the check xtask and the host share.
pub fn check_kernel(
    kernel: &[u8],
    format: KernelFormat,
    initrd_len: Option<u64>,
    guest_mem: u64,
) -> Result<GuestLayout, ImageError> {
    guest_image::plan(kernel, format, initrd_len, map::RAM_BASE, guest_mem)
}

/// Plans a VM for `bundle` on a host whose online CPUs have `host_mpidrs`, with
/// `rng_seed` for the guest's `/chosen/rng-seed`.
pub fn plan(
    bundle: &Bundle<'_>,
    host_mpidrs: &[u64],
    rng_seed: &[u8],
) -> Result<Launch, LaunchError> {
    let h = &bundle.header;
    let n = match h.vcpus {
        0 => host_mpidrs.len(),
        v => v as usize,
    };
    if n == 0 || n > host_mpidrs.len() {
        return Err(LaunchError::TooManyVcpus {
            asked: h.vcpus,
            cpus: host_mpidrs.len(),
        });
    }
    let mpidrs = host_mpidrs[..n].to_vec();
    let ram = map::RAM_BASE..map::RAM_BASE + h.guest_mem;
    let layout = check_kernel(
        bundle.kernel,
        kernel_format(h.flags),
        bundle.initrd.map(|i| i.len() as u64),
        h.guest_mem,
    )
    .map_err(LaunchError::Image)?;
    let dtb = guest_dtb::generate(&GuestDtbConfig {
        ram: ram.clone(),
        mpidrs: &mpidrs,
        bootargs: bundle.append,
        initrd: layout.initrd.clone(),
        rng_seed,
    })
    .map_err(LaunchError::Dtb)?;
    Ok(Launch {
        mpidrs,
        ram,
        layout,
        dtb,
        timeout_secs: h.timeout_secs,
    })
}

/// Reads a big-endian cell value of 4 or 8 bytes.
fn be_cells(v: &[u8]) -> Option<u64> {
    match v.len() {
        4 => Some(u64::from(u32::from_be_bytes(v.try_into().ok()?))),
        8 => Some(u64::from_be_bytes(v.try_into().ok()?)),
        _ => None,
    }
}

/// Why the host's initrd (the bundle) could not be found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitrdError {
    /// The device tree does not parse.
    BadDtb,
    /// Only one of `linux,initrd-start` / `-end` is there, or one is not 4 or 8 bytes,
    /// or end < start.
    BadRange,
}

impl fmt::Display for InitrdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadDtb => write!(f, "device tree does not parse"),
            Self::BadRange => write!(
                f,
                "/chosen linux,initrd-start/-end are incomplete or malformed"
            ),
        }
    }
}

/// The host's initrd as `/chosen` `linux,initrd-start`/`-end` describe it; `Ok(None)` if
/// there is none (or it is empty).
pub fn initrd_range(dtb: &[u8]) -> Result<Option<PhysRange>, InitrdError> {
    let fdt = Fdt::new(dtb).map_err(|_| InitrdError::BadDtb)?;
    let Some(chosen) = fdt.find_node("/chosen") else {
        return Ok(None);
    };
    let start = chosen.property("linux,initrd-start");
    let end = chosen.property("linux,initrd-end");
    match (start, end) {
        (None, None) => Ok(None),
        (Some(s), Some(e)) => {
            let s = be_cells(s.value).ok_or(InitrdError::BadRange)?;
            let e = be_cells(e.value).ok_or(InitrdError::BadRange)?;
            match e.checked_sub(s) {
                None => Err(InitrdError::BadRange),
                Some(0) => Ok(None),
                Some(_) => Ok(Some(s..e)),
            }
        }
        _ => Err(InitrdError::BadRange),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::guest_abi::bundle::{padding, Header};
    use vm_fdt::FdtWriter;

    fn image(text_offset: u64, image_size: u64, len: usize) -> Vec<u8> {
        let mut k = vec![0u8; len];
        k[8..16].copy_from_slice(&text_offset.to_le_bytes());
        k[16..24].copy_from_slice(&image_size.to_le_bytes());
        k[0x38..0x3c].copy_from_slice(b"ARM\x64");
        k
    }

    fn bundle_bytes(kernel: &[u8], initrd: &[u8], append: &str, mem: u64, vcpus: u32) -> Vec<u8> {
        let h = Header {
            kernel_size: kernel.len() as u64,
            initrd_size: initrd.len() as u64,
            append_size: append.len() as u64,
            guest_mem: mem,
            vcpus,
            timeout_secs: 10,
            flags: 0,
        };
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

    #[test]
    fn plans_vcpus_layout_and_dtb() {
        let k = image(0, 0x10_0000, 4096);
        let file = bundle_bytes(&k, &[7; 100], "console=ttyAMA0", 64 << 20, 2);
        let b = Bundle::parse(&file).unwrap();
        let l = plan(&b, &[0, 1, 2, 3], &[1, 2, 3]).unwrap();
        assert_eq!(l.mpidrs, [0, 1]);
        assert_eq!(l.ram, 0x4000_0000..0x4400_0000);
        assert_eq!(l.layout.entry, 0x4000_0000);
        assert_eq!(l.layout.initrd, Some(0x4020_0000..0x4020_0064));
        assert_eq!(l.layout.dtb, 0x43e0_0000..0x4400_0000);
        assert_eq!(l.timeout_secs, 10);
        let fdt = Fdt::new(&l.dtb).unwrap();
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            chosen.property("bootargs").unwrap().as_str(),
            Some("console=ttyAMA0")
        );
        assert_eq!(fdt.cpus().count(), 2);
        // The initrd the guest is told about is where the layout puts it.
        assert_eq!(
            be_cells(chosen.property("linux,initrd-start").unwrap().value),
            Some(0x4020_0000)
        );
        // vcpus = 0: one per host CPU.
        let file = bundle_bytes(&k, &[], "", 64 << 20, 0);
        let l = plan(&Bundle::parse(&file).unwrap(), &[0, 1, 2], &[]).unwrap();
        assert_eq!(l.mpidrs, [0, 1, 2]);
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let k = image(0, 0x10_0000, 4096);
        let file = bundle_bytes(&k, &[], "", 64 << 20, 4);
        assert_eq!(
            plan(&Bundle::parse(&file).unwrap(), &[0, 1], &[]),
            Err(LaunchError::TooManyVcpus { asked: 4, cpus: 2 })
        );
        // image_size bigger than RAM minus the DTB slot.
        let big = image(0, 63 << 20, 4096);
        let file = bundle_bytes(&big, &[], "", 64 << 20, 1);
        let e = plan(&Bundle::parse(&file).unwrap(), &[0], &[]).unwrap_err();
        assert!(
            matches!(e, LaunchError::Image(ImageError::TooLarge { .. })),
            "{e}"
        );
        assert!(e.to_string().contains("does not fit in guest RAM"));
        // A truncated Image (header cut).
        let e = check_kernel(&k[..40], KernelFormat::Image, None, 64 << 20).unwrap_err();
        assert!(matches!(e, ImageError::Truncated { .. }));
    }

    fn dtb_with(props: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = FdtWriter::new().unwrap();
        let root = w.begin_node("").unwrap();
        let chosen = w.begin_node("chosen").unwrap();
        for (name, v) in props {
            w.property(name, v).unwrap();
        }
        w.end_node(chosen).unwrap();
        w.end_node(root).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn finds_the_initrd_in_chosen() {
        let s = 0x4800_0000u64.to_be_bytes();
        let e = 0x4810_0000u64.to_be_bytes();
        let d = dtb_with(&[("linux,initrd-start", &s), ("linux,initrd-end", &e)]);
        assert_eq!(initrd_range(&d), Ok(Some(0x4800_0000..0x4810_0000)));
        let s32 = 0x4800_0000u32.to_be_bytes();
        let e32 = 0x4800_1000u32.to_be_bytes();
        let d = dtb_with(&[("linux,initrd-start", &s32), ("linux,initrd-end", &e32)]);
        assert_eq!(initrd_range(&d), Ok(Some(0x4800_0000..0x4800_1000)));
        assert_eq!(initrd_range(&dtb_with(&[])), Ok(None));
        let d = dtb_with(&[("linux,initrd-start", &s)]);
        assert_eq!(initrd_range(&d), Err(InitrdError::BadRange));
        let d = dtb_with(&[("linux,initrd-start", &e), ("linux,initrd-end", &s)]);
        assert_eq!(initrd_range(&d), Err(InitrdError::BadRange));
        assert_eq!(initrd_range(b"not a dtb"), Err(InitrdError::BadDtb));
    }
}
