//! The console: a polled PL011 transmitter (no interrupts, no FIFO set-up: the guest
//! uses the UART as firmware or the VMM left it) and the `println!` every CPU shares.
//! A line is written under a spin lock so lines from different CPUs do not interleave.

use core::fmt::{self, Write};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// QEMU virt's PL011, used until the DTB names one (and when it names none).
pub const DEFAULT_PL011: usize = 0x0900_0000;

/// Data register offset.
const UARTDR: usize = 0x00;
/// Flag register offset.
pub const UARTFR: usize = 0x18;
/// UARTFR.TXFF: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;

static BASE: AtomicUsize = AtomicUsize::new(DEFAULT_PL011);
static LOCKED: AtomicBool = AtomicBool::new(false);

/// Uses the PL011 at `base` from now on.
pub fn set_base(base: usize) {
    BASE.store(base, Ordering::SeqCst);
}

/// The PL011 in use.
pub fn base() -> usize {
    BASE.load(Ordering::Relaxed)
}

/// One PL011 register block.
struct Pl011 {
    base: usize,
}

impl Pl011 {
    fn read(&self, offset: usize) -> u32 {
        // SAFETY: `base` is the PL011 the DTB (or QEMU virt) names; its registers are
        // 32-bit MMIO and reading FR has no side effects.
        unsafe { core::ptr::read_volatile((self.base + offset) as *const u32) }
    }

    fn put(&self, byte: u8) {
        while self.read(UARTFR) & FR_TXFF != 0 {
            core::hint::spin_loop();
        }
        // SAFETY: as in `read`; a data-register write sends one byte.
        unsafe { core::ptr::write_volatile((self.base + UARTDR) as *mut u32, byte.into()) };
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(|b| self.put(b));
        Ok(())
    }
}

/// Reads the PL011 flag register (the benchmark's emulated MMIO read).
pub fn read_flags() -> u32 {
    Pl011 { base: base() }.read(UARTFR)
}

/// Writes one line under the console lock.
pub fn print_line(args: fmt::Arguments) {
    while LOCKED
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    let mut uart = Pl011 { base: base() };
    let _ = uart.write_fmt(args);
    let _ = uart.write_str("\n");
    LOCKED.store(false, Ordering::Release);
}

/// Writes one line ignoring the lock: for the fatal paths (panic, unexpected
/// exception), which may have interrupted a CPU holding it.
pub fn print_line_unlocked(args: fmt::Arguments) {
    let mut uart = Pl011 { base: base() };
    let _ = uart.write_fmt(args);
    let _ = uart.write_str("\n");
}

/// Prints one line on the guest console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}
