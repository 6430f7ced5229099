//! The VMM's pure logic: everything the host needs to run a guest that can be decided
//! from plain values, so `cargo test -p el1-host --lib` checks it on the build machine.
//! No `asm!`, no MMIO, no system registers here; the run loop that calls the hyp and
//! matches on [`shared::exit::Exit`] lives with the kernel binary.
//!
//! | module | owns |
//! | --- | --- |
//! | [`mmio`] | the [`mmio::MmioDevice`] trait and the bus that routes an MMIO exit to a device |
//! | [`pl011`] | the emulated PL011 UART: guest output as `guest <vm>: …` lines |
//! | [`psci`] | PSCI 1.0 and SMCCC 1.1 for guests: a state machine over the vCPUs' power states |
//! | [`guest_image`] | checking and placing a guest kernel (arm64 Image or raw binary), initrd and DTB |
//! | [`guest_dtb`] | generating the guest's device tree |
//! | [`launch`] | from a guest bundle to vCPUs, guest RAM layout and device tree |
//! | [`exits`] | what the VMM does with each guest exit (the run loop's decisions) |
//! | [`timer`] | the guest's timers: virtual-timer level and deadline, the emulated EL1 physical timer |
//! | [`vgic`] | the virtual GICv3: the interrupt model, distributor and redistributor registers, list-register flush/sync |
//! | [`idregs`] | the ID registers a guest is shown: a filtered copy of the host's sanitised ones |
//!
//! The guest's physical map mirrors QEMU's `virt` board ([`map`]), so a kernel built for
//! that board finds its devices where it expects them.

pub mod exits;
pub mod guest_dtb;
pub mod guest_image;
pub mod idregs;
pub mod launch;
pub mod mmio;
pub mod pl011;
pub mod psci;
pub mod timer;
pub mod vgic;

/// The guest physical (IPA) map: QEMU `virt`'s addresses.
pub mod map {
    /// GICv3 distributor.
    pub const GICD_BASE: u64 = 0x0800_0000;
    /// Size of the distributor frame.
    pub const GICD_SIZE: u64 = 0x1_0000;
    /// First GICv3 redistributor.
    pub const GICR_BASE: u64 = 0x080A_0000;
    /// Size of one vCPU's redistributor (RD_base and SGI_base frames, 64 KiB each).
    pub const GICR_STRIDE: u64 = 0x2_0000;
    /// The redistributor region QEMU reserves (room for 123 CPUs).
    pub const GICR_REGION_SIZE: u64 = 0x00F6_0000;
    /// PL011 UART.
    pub const PL011_BASE: u64 = 0x0900_0000;
    /// Size of the PL011's page.
    pub const PL011_SIZE: u64 = 0x1000;
    /// The PL011's interrupt: SPI 1 (INTID 33), level-high.
    pub const PL011_SPI: u32 = 1;
    /// Guest RAM starts here.
    pub const RAM_BASE: u64 = 0x4000_0000;
    /// Guest RAM size when `--guest-mem` is not given: 128 MiB.
    pub const DEFAULT_RAM_SIZE: u64 = 128 << 20;
    /// The architected timer's PPIs in the order the `arm,armv8-timer` binding lists
    /// them (secure physical, non-secure physical, virtual, hypervisor), as PPI numbers
    /// (INTID - 16).
    pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];
    /// The PL011's reference clock QEMU models: 24 MHz.
    pub const UART_CLOCK_HZ: u32 = 24_000_000;
}
