//! The device tree the boot loader passed (x0 at entry), read once into a typed
//! [`BootInfo`] that owns everything the kernel needs later: RAM, CPUs (MPIDRs), the PL011,
//! the GICv3, the PSCI conduit, `/chosen` bootargs and the boot-loader seeds. After this
//! the kernel never looks at the DTB again.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use flat_device_tree::Fdt;

use crate::layout::PhysRange;

/// How PSCI calls reach the firmware (`/psci` `method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PsciMethod {
    /// `hvc`: calls go to EL2.
    Hvc,
    /// `smc`: calls go to EL3 (QEMU's built-in PSCI with `virtualization=on`).
    Smc,
}

/// One CPU node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuInfo {
    /// The affinity value (`reg`), as compared against `MPIDR_EL1 & MPIDR_HWID_MASK`.
    pub mpidr: u64,
}

/// The GICv3 frames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GicInfo {
    /// Distributor frame.
    pub dist: PhysRange,
    /// Redistributor region (the first one).
    pub redist: PhysRange,
}

/// What the kernel takes from the device tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// The DTB's own physical footprint (`totalsize` bytes at the address it was found).
    pub dtb: PhysRange,
    /// RAM regions from every `/memory` node.
    pub memory: Vec<PhysRange>,
    /// `/memreserve/` entries of the DTB header.
    pub reserved: Vec<PhysRange>,
    /// CPU nodes in device-tree order.
    pub cpus: Vec<CpuInfo>,
    /// The PL011 UART (the console).
    pub uart: PhysRange,
    /// The GICv3, if the tree describes one.
    pub gic: Option<GicInfo>,
    /// The PSCI conduit, if the tree describes PSCI.
    pub psci: Option<PsciMethod>,
    /// `/chosen/bootargs` (empty if absent).
    pub bootargs: String,
    /// `/chosen/kaslr-seed`.
    pub kaslr_seed: Option<u64>,
    /// `/chosen/rng-seed` bytes (empty if absent).
    pub rng_seed: Vec<u8>,
}

/// Why the device tree could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DtbError {
    /// The blob is not a valid flattened device tree.
    Parse(String),
    /// A required node is missing.
    Missing(&'static str),
    /// A node's property is malformed.
    Bad {
        /// The node.
        node: &'static str,
        /// What is wrong.
        what: &'static str,
    },
}

impl fmt::Display for DtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Parse(e) => write!(f, "device tree does not parse: {e}"),
            Self::Missing(what) => write!(f, "device tree has no {what}"),
            Self::Bad { node, what } => write!(f, "device tree node {node}: {what}"),
        }
    }
}

/// Affinity bits of MPIDR_EL1 (Aff3, Aff2, Aff1, Aff0).
pub const MPIDR_HWID_MASK: u64 = 0xff_00ff_ffff;

fn range(start: u64, size: u64) -> Option<PhysRange> {
    Some(start..start.checked_add(size)?)
}

impl BootInfo {
    /// Reads the DTB found at physical address `dtb_pa`. `blob` must start at the DTB
    /// header; it may extend past the tree's `totalsize`.
    pub fn from_dtb(blob: &[u8], dtb_pa: u64) -> Result<Self, DtbError> {
        let fdt = Fdt::new(blob).map_err(|e| DtbError::Parse(alloc::format!("{e:?}")))?;
        let dtb = range(dtb_pa, fdt.total_size() as u64).ok_or(DtbError::Bad {
            node: "/",
            what: "DTB extends past the end of the address space",
        })?;

        let mut memory = Vec::new();
        for node in fdt.all_nodes() {
            let is_memory = node
                .property("device_type")
                .and_then(|p| p.as_str())
                .is_some_and(|t| t == "memory");
            if !is_memory {
                continue;
            }
            for r in node.reg() {
                let size = r.size.ok_or(DtbError::Bad {
                    node: "/memory",
                    what: "reg has no size",
                })?;
                if size == 0 {
                    continue;
                }
                memory.push(range(r.starting_address as u64, size as u64).ok_or(
                    DtbError::Bad {
                        node: "/memory",
                        what: "region wraps the address space",
                    },
                )?);
            }
        }
        if memory.is_empty() {
            return Err(DtbError::Missing("memory node with a non-empty reg"));
        }

        let reserved = fdt
            .memory_reservations()
            .filter_map(|r| range(r.address() as u64, r.size() as u64))
            .filter(|r| !r.is_empty())
            .collect();

        let cpus_node = fdt.find_node("/cpus").ok_or(DtbError::Missing("/cpus"))?;
        let mut cpus = Vec::new();
        for cpu in cpus_node.children() {
            let is_cpu = cpu
                .property("device_type")
                .and_then(|p| p.as_str())
                .is_some_and(|t| t == "cpu");
            if !is_cpu {
                continue;
            }
            let reg = cpu.reg().next().ok_or(DtbError::Bad {
                node: "/cpus/cpu",
                what: "no reg",
            })?;
            let mpidr = reg.starting_address as u64;
            if mpidr & !MPIDR_HWID_MASK != 0 {
                return Err(DtbError::Bad {
                    node: "/cpus/cpu",
                    what: "reg has bits outside the MPIDR affinity fields",
                });
            }
            cpus.push(CpuInfo { mpidr });
        }
        if cpus.is_empty() {
            return Err(DtbError::Missing("cpu node"));
        }

        let uart_node = fdt
            .find_compatible(&["arm,pl011"])
            .ok_or(DtbError::Missing("PL011 (compatible \"arm,pl011\")"))?;
        let uart = first_reg(uart_node.reg(), "pl011")?;

        let gic = match fdt.find_compatible(&["arm,gic-v3"]) {
            Some(node) => {
                let mut regs = node.reg();
                let dist = next_reg(&mut regs, "gic-v3")?;
                let redist = next_reg(&mut regs, "gic-v3")?;
                Some(GicInfo { dist, redist })
            }
            None => None,
        };

        let psci = match fdt.find_compatible(&["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]) {
            Some(node) => match node.property("method").and_then(|p| p.as_str()) {
                Some("hvc") => Some(PsciMethod::Hvc),
                Some("smc") => Some(PsciMethod::Smc),
                _ => {
                    return Err(DtbError::Bad {
                        node: "/psci",
                        what: "method is neither \"hvc\" nor \"smc\"",
                    })
                }
            },
            None => None,
        };

        let chosen = fdt.find_node("/chosen");
        let prop = |name: &str| chosen.and_then(|c| c.property(name));
        let bootargs = prop("bootargs")
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .into();
        let kaslr_seed = match prop("kaslr-seed") {
            Some(p) => Some(be_u64(p.value).ok_or(DtbError::Bad {
                node: "/chosen",
                what: "kaslr-seed is not 4 or 8 bytes",
            })?),
            None => None,
        };
        let rng_seed = prop("rng-seed")
            .map(|p| p.value.to_vec())
            .unwrap_or_default();

        Ok(Self {
            dtb,
            memory,
            reserved,
            cpus,
            uart,
            gic,
            psci,
            bootargs,
            kaslr_seed,
            rng_seed,
        })
    }

    /// Index of the CPU whose MPIDR (affinity fields) is `mpidr`.
    pub fn cpu_index(&self, mpidr: u64) -> Option<usize> {
        self.cpus
            .iter()
            .position(|c| c.mpidr == mpidr & MPIDR_HWID_MASK)
    }

    /// Total bytes of RAM.
    pub fn ram_bytes(&self) -> u64 {
        self.memory.iter().map(|r| r.end - r.start).sum()
    }
}

fn next_reg(
    regs: &mut impl Iterator<Item = flat_device_tree::standard_nodes::MemoryRegion>,
    node: &'static str,
) -> Result<PhysRange, DtbError> {
    let r = regs.next().ok_or(DtbError::Bad {
        node,
        what: "reg has too few entries",
    })?;
    let size = r.size.ok_or(DtbError::Bad {
        node,
        what: "reg has no size",
    })?;
    range(r.starting_address as u64, size as u64).ok_or(DtbError::Bad {
        node,
        what: "reg wraps the address space",
    })
}

fn first_reg(
    mut regs: impl Iterator<Item = flat_device_tree::standard_nodes::MemoryRegion>,
    node: &'static str,
) -> Result<PhysRange, DtbError> {
    next_reg(&mut regs, node)
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    match bytes.len() {
        4 => Some(u32::from_be_bytes(bytes.try_into().ok()?).into()),
        8 => Some(u64::from_be_bytes(bytes.try_into().ok()?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `qemu-system-aarch64 -M virt,virtualization=on,gic-version=3,dumpdtb=… -cpu max
    /// -smp 4 -m 1G -append "loglevel=banana console=ttyAMA0"` (QEMU 7.2), with the free
    /// space after the strings block cut off.
    const VIRT: &[u8] = include_bytes!("../tests/data/qemu-virt-max-smp4-1g.dtb");

    #[test]
    fn reads_qemu_virt() {
        let info = BootInfo::from_dtb(VIRT, 0x4800_0000).unwrap();
        assert_eq!(info.memory, vec![0x4000_0000..0x8000_0000]);
        assert_eq!(info.ram_bytes(), 1 << 30);
        assert_eq!(info.dtb, 0x4800_0000..0x4800_0000 + VIRT.len() as u64);
        let mpidrs: Vec<u64> = info.cpus.iter().map(|c| c.mpidr).collect();
        assert_eq!(mpidrs, vec![0, 1, 2, 3]);
        assert_eq!(info.uart, 0x0900_0000..0x0900_1000);
        let gic = info.gic.clone().unwrap();
        assert_eq!(gic.dist, 0x0800_0000..0x0801_0000);
        assert_eq!(gic.redist.start, 0x080a_0000);
        assert_eq!(info.psci, Some(PsciMethod::Smc));
        assert_eq!(info.bootargs, "loglevel=banana console=ttyAMA0");
        assert!(info.kaslr_seed.is_some());
        assert!(!info.rng_seed.is_empty());
        assert_eq!(info.cpu_index(0x8000_0002), Some(2));
        assert_eq!(info.cpu_index(4), None);
    }

    #[test]
    fn rejects_garbage_and_truncation() {
        assert!(matches!(
            BootInfo::from_dtb(&[0u8; 64], 0),
            Err(DtbError::Parse(_))
        ));
        assert!(matches!(
            BootInfo::from_dtb(&VIRT[..VIRT.len() / 2], 0),
            Err(DtbError::Parse(_))
        ));
        let err = DtbError::Missing("/cpus").to_string();
        assert_eq!(err, "device tree has no /cpus");
    }

    #[test]
    fn be_u64_widths() {
        assert_eq!(be_u64(&[0, 0, 1, 2]), Some(0x102));
        assert_eq!(
            be_u64(&[1, 0, 0, 0, 0, 0, 0, 2]),
            Some(0x0100_0000_0000_0002)
        );
        assert_eq!(be_u64(&[1, 2, 3]), None);
    }
}
