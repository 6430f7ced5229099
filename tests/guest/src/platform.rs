//! What the guest learns from its DTB: the PL011, the PSCI conduit, the CPUs' MPIDRs,
//! the RAM range and the boot arguments. Anything the DTB lacks falls back to QEMU
//! virt's value, and [`Platform::report`] says which ones did.

use crate::arch;
use crate::boot::MAX_CPUS;
use crate::console::DEFAULT_PL011;
use crate::smccc::Conduit;
use flat_device_tree::Fdt;

/// QEMU virt's RAM base.
const DEFAULT_RAM_BASE: u64 = 0x4000_0000;
/// The RAM size assumed without a `/memory` node (QEMU's and our VMM's default).
const DEFAULT_RAM_SIZE: u64 = 128 << 20;
/// The arm64 boot protocol's limit on a DTB.
const MAX_DTB_SIZE: usize = 2 << 20;
/// FDT header magic.
const FDT_MAGIC: u32 = 0xd00d_feed;

/// Where a value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The DTB.
    Dtb,
    /// QEMU virt's default (the DTB lacks the node or property).
    Default,
}

/// The machine as the guest sees it.
pub struct Platform {
    /// DTB physical address (x0 at entry).
    pub dtb: u64,
    /// Why the DTB could not be used at all, if it could not.
    pub dtb_error: Option<&'static str>,
    /// PL011 base.
    pub uart: (usize, Source),
    /// PSCI conduit.
    pub conduit: (Conduit, Source),
    /// MPIDR affinity of each CPU, boot CPU included, in DTB order.
    pub cpus: [u64; MAX_CPUS],
    /// Entries of `cpus` in use.
    pub ncpus: usize,
    /// CPUs the DTB lists (may exceed [`MAX_CPUS`]).
    pub cpus_listed: usize,
    /// Where `cpus` came from.
    pub cpus_source: Source,
    /// First RAM range (base, size).
    pub ram: (u64, u64, Source),
    /// `/chosen/bootargs` ("" when absent).
    pub bootargs: &'static str,
}

impl Platform {
    /// Reads the DTB at `dtb` (falls back to QEMU virt for whatever is missing).
    pub fn from_dtb(dtb: u64) -> Self {
        let mut p = Platform {
            dtb,
            dtb_error: None,
            uart: (DEFAULT_PL011, Source::Default),
            conduit: (Conduit::Hvc, Source::Default),
            cpus: [0; MAX_CPUS],
            ncpus: 1,
            cpus_listed: 1,
            cpus_source: Source::Default,
            ram: (DEFAULT_RAM_BASE, DEFAULT_RAM_SIZE, Source::Default),
            bootargs: "",
        };
        p.cpus[0] = arch::my_affinity();
        match dtb_bytes(dtb) {
            Ok(bytes) => match Fdt::new(bytes) {
                Ok(fdt) => p.read(&fdt),
                Err(_) => p.dtb_error = Some("the FDT parser rejected it"),
            },
            Err(why) => p.dtb_error = Some(why),
        }
        p
    }

    fn read(&mut self, fdt: &Fdt<'static>) {
        let uart = fdt
            .chosen()
            .ok()
            .and_then(|c| c.stdout())
            .map(|s| s.node())
            .filter(|n| {
                n.compatible()
                    .is_some_and(|c| c.all().any(|s| s == "arm,pl011"))
            })
            .or_else(|| fdt.find_compatible(&["arm,pl011"]))
            .and_then(|n| n.reg().next());
        if let Some(r) = uart {
            self.uart = (r.starting_address as usize, Source::Dtb);
        }
        let method = fdt
            .find_node("/psci")
            .and_then(|n| n.property("method"))
            .and_then(|p| p.as_str());
        match method {
            Some("hvc") => self.conduit = (Conduit::Hvc, Source::Dtb),
            Some("smc") => self.conduit = (Conduit::Smc, Source::Dtb),
            _ => {}
        }
        let mut n = 0;
        let mut listed = 0;
        for id in fdt.cpus().filter_map(|c| c.ids().ok()?.first().ok()) {
            if n < MAX_CPUS {
                self.cpus[n] = arch::affinity(id as u64);
                n += 1;
            }
            listed += 1;
        }
        if n > 0 {
            self.ncpus = n;
            self.cpus_listed = listed;
            self.cpus_source = Source::Dtb;
        }
        if let Some(r) = fdt.memory().ok().and_then(|m| m.regions().next()) {
            if let Some(size) = r.size {
                self.ram = (r.starting_address as u64, size as u64, Source::Dtb);
            }
        }
        if let Some(args) = fdt.chosen().ok().and_then(|c| c.bootargs()) {
            self.bootargs = args;
        }
    }

    /// The index of this CPU in `cpus`, if the DTB lists it.
    pub fn my_index(&self) -> Option<usize> {
        let me = arch::my_affinity();
        self.cpus[..self.ncpus].iter().position(|&c| c == me)
    }

    /// Prints what was found and where each value came from.
    pub fn report(&self) {
        let from = |s: Source| match s {
            Source::Dtb => "dtb",
            Source::Default => "QEMU virt default: not in the DTB",
        };
        if let Some(why) = self.dtb_error {
            crate::println!(
                "dtb: {:#x} unusable ({why}); using QEMU virt defaults for everything",
                self.dtb
            );
        }
        crate::println!("dtb: pl011={:#x} ({})", self.uart.0, from(self.uart.1));
        crate::println!(
            "dtb: psci method={} ({})",
            self.conduit.0.name(),
            from(self.conduit.1)
        );
        crate::println!(
            "dtb: cpus={} ({}){}",
            self.cpus_listed,
            from(self.cpus_source),
            if self.cpus_listed > self.ncpus {
                " (only the first 8 are used)"
            } else {
                ""
            }
        );
        for (i, c) in self.cpus[..self.ncpus].iter().enumerate() {
            crate::println!("dtb: cpu{i} mpidr={c:#x}");
        }
        crate::println!(
            "dtb: memory={:#x}+{:#x} ({})",
            self.ram.0,
            self.ram.1,
            from(self.ram.2)
        );
        crate::println!("dtb: bootargs=\"{}\"", self.bootargs);
    }
}

/// The DTB as a byte slice, after the checks the boot protocol allows: non-zero,
/// 8-byte aligned, FDT magic, a total size within 2 MiB.
fn dtb_bytes(dtb: u64) -> Result<&'static [u8], &'static str> {
    if dtb == 0 {
        return Err("x0 was 0");
    }
    if !dtb.is_multiple_of(8) {
        return Err("not 8-byte aligned");
    }
    let header = dtb as *const u32;
    // SAFETY: the boot loader passed this address as the DTB; the two header words are
    // read one at a time (an unmapped address would abort, and the vectors report it).
    let (magic, size) = unsafe {
        (
            u32::from_be(core::ptr::read_volatile(header)),
            u32::from_be(core::ptr::read_volatile(header.add(1))),
        )
    };
    if magic != FDT_MAGIC {
        return Err("no FDT magic");
    }
    let size = size as usize;
    if !(40..=MAX_DTB_SIZE).contains(&size) {
        return Err("total size out of range");
    }
    // SAFETY: the header says the blob is `size` bytes; it stays in place for the
    // guest's lifetime (the guest writes only inside its own image and to MMIO).
    Ok(unsafe { core::slice::from_raw_parts(dtb as *const u8, size) })
}
