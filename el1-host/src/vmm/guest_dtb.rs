//! The guest's device tree, written with rust-vmm's `vm-fdt` (no_std + `alloc`).
//!
//! It describes the QEMU-`virt`-like machine of [`super::map`] so that any arm64 kernel
//! built for that board boots:
//!
//! ```text
//! / { compatible "linux,dummy-virt"; #address-cells 2; #size-cells 2; interrupt-parent &gic
//!   chosen { bootargs; stdout-path "/pl011@9000000"; linux,initrd-start/-end (u64); rng-seed }
//!   memory@<base> { device_type "memory"; reg <base size> }
//!   cpus { #address-cells 1 (2 if an MPIDR has Aff3); #size-cells 0
//!     cpu@<n> { device_type "cpu"; compatible "arm,armv8"; reg <MPIDR>; enable-method "psci" } }
//!   psci { compatible "arm,psci-1.0", "arm,psci-0.2"; method "hvc" }
//!   apb-pclk { compatible "fixed-clock"; #clock-cells 0; clock-frequency 24 MHz;
//!              clock-output-names "clk24mhz"; phandle 1 }
//!   pl011@9000000 { compatible "arm,pl011", "arm,primecell"; reg; interrupts <SPI 1 level-high>;
//!                   clocks <1 1>; clock-names "uartclk", "apb_pclk" }
//!   intc@8000000 { compatible "arm,gic-v3"; interrupt-controller; #interrupt-cells 3;
//!                  #redistributor-regions 1; reg <dist> <redist: 128 KiB per vCPU>; phandle 2 }
//!   timer { compatible "arm,armv8-timer"; always-on; interrupts <PPI 13,14,11,10 level-high> } }
//! ```
//!
//! The GIC and the timer are described as QEMU describes them; the redistributor region
//! covers exactly the VM's vCPUs (the VMM emulates one redistributor per vCPU,
//! `super::vgic`).

use super::guest_image::DTB_SLOT;
use super::map;
use crate::layout::PhysRange;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use vm_fdt::FdtWriter;

/// Phandle of the UART's clock.
pub const CLOCK_PHANDLE: u32 = 1;
/// Phandle of the GIC.
pub const GIC_PHANDLE: u32 = 2;
/// Interrupt specifier: SPI.
const GIC_SPI: u32 = 0;
/// Interrupt specifier: PPI.
const GIC_PPI: u32 = 1;
/// Interrupt specifier flag: level-sensitive, active high.
const IRQ_LEVEL_HIGH: u32 = 4;

/// What the guest's tree describes beyond the fixed board map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestDtbConfig<'a> {
    /// Guest RAM.
    pub ram: PhysRange,
    /// Each vCPU's MPIDR (affinity fields), in vCPU order.
    pub mpidrs: &'a [u64],
    /// The kernel command line.
    pub bootargs: &'a str,
    /// The initrd's placement, if there is one.
    pub initrd: Option<PhysRange>,
    /// Entropy for the guest's RNG (`/chosen/rng-seed`); omitted if empty.
    pub rng_seed: &'a [u8],
}

/// Why the tree could not be written.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestDtbError {
    /// No vCPUs were given.
    NoVcpus,
    /// RAM is empty.
    EmptyRam,
    /// The FDT writer refused something (for example a NUL inside the bootargs).
    Writer(vm_fdt::Error),
    /// The blob exceeds the 2 MiB the boot protocol allows.
    TooLarge(usize),
}

impl fmt::Display for GuestDtbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVcpus => write!(f, "guest device tree: no vCPUs"),
            Self::EmptyRam => write!(f, "guest device tree: RAM is empty"),
            Self::Writer(e) => write!(f, "guest device tree: {e}"),
            Self::TooLarge(n) => write!(
                f,
                "guest device tree is {n} bytes, more than the {DTB_SLOT} the boot protocol allows"
            ),
        }
    }
}

impl From<vm_fdt::Error> for GuestDtbError {
    fn from(e: vm_fdt::Error) -> Self {
        Self::Writer(e)
    }
}

/// The path `/chosen/stdout-path` names.
pub fn uart_path() -> String {
    format!("/pl011@{:x}", map::PL011_BASE)
}

/// Writes the guest's device tree.
pub fn generate(cfg: &GuestDtbConfig<'_>) -> Result<Vec<u8>, GuestDtbError> {
    if cfg.mpidrs.is_empty() {
        return Err(GuestDtbError::NoVcpus);
    }
    if cfg.ram.is_empty() {
        return Err(GuestDtbError::EmptyRam);
    }
    let mut w = FdtWriter::new()?;
    let root = w.begin_node("")?;
    w.property_string("compatible", "linux,dummy-virt")?;
    w.property_u32("#address-cells", 2)?;
    w.property_u32("#size-cells", 2)?;
    w.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let chosen = w.begin_node("chosen")?;
    w.property_string("bootargs", cfg.bootargs)?;
    w.property_string("stdout-path", &uart_path())?;
    if let Some(initrd) = &cfg.initrd {
        w.property_u64("linux,initrd-start", initrd.start)?;
        w.property_u64("linux,initrd-end", initrd.end)?;
    }
    if !cfg.rng_seed.is_empty() {
        w.property("rng-seed", cfg.rng_seed)?;
    }
    w.end_node(chosen)?;

    let memory = w.begin_node(&format!("memory@{:x}", cfg.ram.start))?;
    w.property_string("device_type", "memory")?;
    w.property_array_u64("reg", &[cfg.ram.start, cfg.ram.end - cfg.ram.start])?;
    w.end_node(memory)?;

    // One cell is enough unless some MPIDR uses Aff3 (bits [39:32]).
    let wide = cfg.mpidrs.iter().any(|&m| m > u64::from(u32::MAX));
    let cpus = w.begin_node("cpus")?;
    w.property_u32("#address-cells", if wide { 2 } else { 1 })?;
    w.property_u32("#size-cells", 0)?;
    for &mpidr in cfg.mpidrs {
        let cpu = w.begin_node(&format!("cpu@{mpidr:x}"))?;
        w.property_string("device_type", "cpu")?;
        w.property_string("compatible", "arm,armv8")?;
        if wide {
            w.property_u64("reg", mpidr)?;
        } else {
            w.property_u32("reg", mpidr as u32)?;
        }
        w.property_string("enable-method", "psci")?;
        w.end_node(cpu)?;
    }
    w.end_node(cpus)?;

    let psci = w.begin_node("psci")?;
    w.property_string_list(
        "compatible",
        vec!["arm,psci-1.0".to_string(), "arm,psci-0.2".to_string()],
    )?;
    w.property_string("method", "hvc")?;
    w.end_node(psci)?;

    let clock = w.begin_node("apb-pclk")?;
    w.property_string("compatible", "fixed-clock")?;
    w.property_u32("#clock-cells", 0)?;
    w.property_u32("clock-frequency", map::UART_CLOCK_HZ)?;
    w.property_string("clock-output-names", "clk24mhz")?;
    w.property_phandle(CLOCK_PHANDLE)?;
    w.end_node(clock)?;

    let uart = w.begin_node(&format!("pl011@{:x}", map::PL011_BASE))?;
    w.property_string_list(
        "compatible",
        vec!["arm,pl011".to_string(), "arm,primecell".to_string()],
    )?;
    w.property_array_u64("reg", &[map::PL011_BASE, map::PL011_SIZE])?;
    w.property_array_u32("interrupts", &[GIC_SPI, map::PL011_SPI, IRQ_LEVEL_HIGH])?;
    w.property_array_u32("clocks", &[CLOCK_PHANDLE, CLOCK_PHANDLE])?;
    w.property_string_list(
        "clock-names",
        vec!["uartclk".to_string(), "apb_pclk".to_string()],
    )?;
    w.end_node(uart)?;

    let redist_size = map::GICR_STRIDE * cfg.mpidrs.len() as u64;
    let gic = w.begin_node(&format!("intc@{:x}", map::GICD_BASE))?;
    w.property_string("compatible", "arm,gic-v3")?;
    w.property_null("interrupt-controller")?;
    w.property_u32("#interrupt-cells", 3)?;
    w.property_u32("#redistributor-regions", 1)?;
    w.property_array_u64(
        "reg",
        &[map::GICD_BASE, map::GICD_SIZE, map::GICR_BASE, redist_size],
    )?;
    w.property_phandle(GIC_PHANDLE)?;
    w.end_node(gic)?;

    let timer = w.begin_node("timer")?;
    w.property_string("compatible", "arm,armv8-timer")?;
    w.property_null("always-on")?;
    let mut irqs = Vec::with_capacity(12);
    for ppi in map::TIMER_PPIS {
        irqs.extend_from_slice(&[GIC_PPI, ppi, IRQ_LEVEL_HIGH]);
    }
    w.property_array_u32("interrupts", &irqs)?;
    w.end_node(timer)?;

    w.end_node(root)?;
    let blob = w.finish()?;
    if blob.len() as u64 > DTB_SLOT {
        return Err(GuestDtbError::TooLarge(blob.len()));
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flat_device_tree::Fdt;

    fn be32s(v: &[u8]) -> Vec<u32> {
        v.chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    fn be64s(v: &[u8]) -> Vec<u64> {
        v.chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn strs(v: &[u8]) -> Vec<&str> {
        v.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| core::str::from_utf8(s).unwrap())
            .collect()
    }

    fn prop<'a>(fdt: &'a Fdt<'a>, node: &str, name: &str) -> &'a [u8] {
        fdt.find_node(node)
            .unwrap_or_else(|| panic!("no node {node}"))
            .property(name)
            .unwrap_or_else(|| panic!("no {node}/{name}"))
            .value
    }

    const SEED: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

    fn config(mpidrs: &[u64]) -> GuestDtbConfig<'_> {
        GuestDtbConfig {
            ram: 0x4000_0000..0x4800_0000,
            mpidrs,
            bootargs: "console=ttyAMA0 earlycon",
            initrd: Some(0x4020_0000..0x4021_0000),
            rng_seed: &SEED,
        }
    }

    #[test]
    fn every_property_reads_back() {
        let mpidrs = [0, 1, 2, 0x100];
        let blob = generate(&config(&mpidrs)).unwrap();
        let fdt = Fdt::new(&blob).unwrap();

        assert_eq!(strs(prop(&fdt, "/", "compatible")), ["linux,dummy-virt"]);
        assert_eq!(be32s(prop(&fdt, "/", "#address-cells")), [2]);
        assert_eq!(be32s(prop(&fdt, "/", "#size-cells")), [2]);
        assert_eq!(be32s(prop(&fdt, "/", "interrupt-parent")), [GIC_PHANDLE]);

        // /chosen
        let chosen = fdt.chosen().unwrap();
        assert_eq!(chosen.bootargs(), Some("console=ttyAMA0 earlycon"));
        assert_eq!(
            strs(prop(&fdt, "/chosen", "stdout-path")),
            ["/pl011@9000000"]
        );
        assert!(
            fdt.find_node(&uart_path()).is_some(),
            "stdout-path resolves"
        );
        assert_eq!(
            be64s(prop(&fdt, "/chosen", "linux,initrd-start")),
            [0x4020_0000]
        );
        assert_eq!(
            be64s(prop(&fdt, "/chosen", "linux,initrd-end")),
            [0x4021_0000]
        );
        assert_eq!(prop(&fdt, "/chosen", "rng-seed"), &SEED);

        // memory
        let mem: Vec<_> = fdt.memory().unwrap().regions().collect();
        assert_eq!(mem.len(), 1);
        assert_eq!(mem[0].starting_address as u64, 0x4000_0000);
        assert_eq!(mem[0].size, Some(0x800_0000));
        assert_eq!(
            strs(prop(&fdt, "/memory@40000000", "device_type")),
            ["memory"]
        );

        // cpus: reg = MPIDR, enable-method psci
        assert_eq!(be32s(prop(&fdt, "/cpus", "#address-cells")), [1]);
        assert_eq!(be32s(prop(&fdt, "/cpus", "#size-cells")), [0]);
        let ids: Vec<usize> = fdt
            .cpus()
            .map(|c| c.ids().unwrap().first().unwrap())
            .collect();
        assert_eq!(ids, [0, 1, 2, 0x100]);
        for m in mpidrs {
            let path = std::format!("/cpus/cpu@{m:x}");
            assert_eq!(be32s(prop(&fdt, &path, "reg")), [m as u32]);
            assert_eq!(strs(prop(&fdt, &path, "enable-method")), ["psci"]);
            assert_eq!(strs(prop(&fdt, &path, "device_type")), ["cpu"]);
            assert_eq!(strs(prop(&fdt, &path, "compatible")), ["arm,armv8"]);
        }

        // psci
        assert_eq!(
            strs(prop(&fdt, "/psci", "compatible")),
            ["arm,psci-1.0", "arm,psci-0.2"]
        );
        assert_eq!(strs(prop(&fdt, "/psci", "method")), ["hvc"]);

        // the UART's clock
        assert_eq!(strs(prop(&fdt, "/apb-pclk", "compatible")), ["fixed-clock"]);
        assert_eq!(be32s(prop(&fdt, "/apb-pclk", "#clock-cells")), [0]);
        assert_eq!(
            be32s(prop(&fdt, "/apb-pclk", "clock-frequency")),
            [24_000_000]
        );
        assert_eq!(
            strs(prop(&fdt, "/apb-pclk", "clock-output-names")),
            ["clk24mhz"]
        );
        assert_eq!(
            fdt.find_phandle(CLOCK_PHANDLE).map(|n| n.name),
            Some("apb-pclk")
        );

        // PL011
        let uart = "/pl011@9000000";
        assert_eq!(
            strs(prop(&fdt, uart, "compatible")),
            ["arm,pl011", "arm,primecell"]
        );
        assert_eq!(be64s(prop(&fdt, uart, "reg")), [0x0900_0000, 0x1000]);
        assert_eq!(be32s(prop(&fdt, uart, "interrupts")), [0, 1, 4]);
        assert_eq!(
            be32s(prop(&fdt, uart, "clocks")),
            [CLOCK_PHANDLE, CLOCK_PHANDLE]
        );
        assert_eq!(
            strs(prop(&fdt, uart, "clock-names")),
            ["uartclk", "apb_pclk"]
        );
        let reg: Vec<_> = fdt.find_node(uart).unwrap().reg().collect();
        assert_eq!(reg[0].starting_address as u64, 0x0900_0000);

        // GICv3: distributor + 4 redistributors of 128 KiB
        let gic = "/intc@8000000";
        assert_eq!(strs(prop(&fdt, gic, "compatible")), ["arm,gic-v3"]);
        assert_eq!(prop(&fdt, gic, "interrupt-controller"), &[] as &[u8]);
        assert_eq!(be32s(prop(&fdt, gic, "#interrupt-cells")), [3]);
        assert_eq!(be32s(prop(&fdt, gic, "#redistributor-regions")), [1]);
        assert_eq!(
            be64s(prop(&fdt, gic, "reg")),
            [0x0800_0000, 0x1_0000, 0x080A_0000, 4 * 0x2_0000]
        );
        assert_eq!(
            fdt.find_phandle(GIC_PHANDLE).map(|n| n.name),
            Some("intc@8000000")
        );

        // timer
        assert_eq!(
            strs(prop(&fdt, "/timer", "compatible")),
            ["arm,armv8-timer"]
        );
        assert_eq!(prop(&fdt, "/timer", "always-on"), &[] as &[u8]);
        assert_eq!(
            be32s(prop(&fdt, "/timer", "interrupts")),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
    }

    #[test]
    fn the_host_reads_it_like_a_boot_dtb() {
        // The host's own DTB reader agrees on CPUs, RAM, UART, GIC and PSCI.
        let blob = generate(&config(&[0, 1])).unwrap();
        let info = crate::bootinfo::BootInfo::from_dtb(&blob, 0x4000_0000).unwrap();
        assert_eq!(info.memory.len(), 1);
        assert_eq!(info.memory[0], 0x4000_0000..0x4800_0000);
        assert_eq!(
            info.cpus.iter().map(|c| c.mpidr).collect::<Vec<_>>(),
            [0, 1]
        );
        assert_eq!(info.uart, 0x0900_0000..0x0900_1000);
        assert_eq!(info.psci, Some(crate::bootinfo::PsciMethod::Hvc));
        assert_eq!(info.bootargs, "console=ttyAMA0 earlycon");
        assert_eq!(info.rng_seed, SEED);
        let gic = info.gic.unwrap();
        assert_eq!(gic.dist, 0x0800_0000..0x0801_0000);
    }

    #[test]
    fn optional_parts_and_wide_mpidrs() {
        let mpidrs = [0, 0x1_0000_0000];
        let cfg = GuestDtbConfig {
            initrd: None,
            rng_seed: &[],
            ..config(&mpidrs)
        };
        let blob = generate(&cfg).unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let chosen = fdt.find_node("/chosen").unwrap();
        assert!(chosen.property("linux,initrd-start").is_none());
        assert!(chosen.property("rng-seed").is_none());
        assert_eq!(be32s(prop(&fdt, "/cpus", "#address-cells")), [2]);
        assert_eq!(
            be64s(prop(&fdt, "/cpus/cpu@100000000", "reg")),
            [0x1_0000_0000]
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(generate(&config(&[])), Err(GuestDtbError::NoVcpus));
        let cfg = GuestDtbConfig {
            bootargs: "a\0b",
            ..config(&[0])
        };
        let err = generate(&cfg).unwrap_err();
        assert_eq!(err, GuestDtbError::Writer(vm_fdt::Error::InvalidString));
        assert!(std::format!("{err}").contains("NUL"));
        let cfg = GuestDtbConfig {
            ram: 5..5,
            ..config(&[0])
        };
        assert_eq!(generate(&cfg), Err(GuestDtbError::EmptyRam));
        let big = std::vec![0u8; DTB_SLOT as usize];
        let cfg = GuestDtbConfig {
            rng_seed: &big,
            ..config(&[0])
        };
        assert!(matches!(generate(&cfg), Err(GuestDtbError::TooLarge(_))));
    }
}
