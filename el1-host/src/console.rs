//! The console: a PL011 UART (transmit only) behind the host's ticket lock
//! ([`crate::sync::SpinLock`]), the `print!`/`println!` macros,
//! and an emergency path for panics and exceptions that does not wait for a lock held by a
//! CPU that will never release it.

use crate::sync::SpinLock;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

/// PL011 registers this driver uses (offsets in bytes).
mod reg {
    /// Data register.
    pub const DR: usize = 0x00;
    /// Flag register.
    pub const FR: usize = 0x18;
    /// FR: transmit FIFO full.
    pub const FR_TXFF: u32 = 1 << 5;
}

/// A PL011 mapped at `base` (a VA in the MMIO window).
pub struct Pl011 {
    base: usize,
}

impl Pl011 {
    fn put(&mut self, byte: u8) {
        // SAFETY: base is the VA of a mapped PL011 register block (see `init`); FR and DR
        // are 32-bit registers inside it, accessed with volatile device accesses.
        unsafe {
            let fr = (self.base + reg::FR) as *const u32;
            while fr.read_volatile() & reg::FR_TXFF != 0 {
                core::hint::spin_loop();
            }
            ((self.base + reg::DR) as *mut u32).write_volatile(byte.into());
        }
    }
}

impl Write for Pl011 {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                self.put(b'\r');
            }
            self.put(b);
        }
        Ok(())
    }
}

static CONSOLE: SpinLock<Option<Pl011>> = SpinLock::new(None);
static BASE: AtomicUsize = AtomicUsize::new(0);

/// Starts the console on the PL011 mapped at `base_va`.
///
/// # Safety
///
/// `base_va` must be the VA of a PL011's registers, mapped as device memory for the rest
/// of the kernel's life.
pub unsafe fn init(base_va: usize) {
    BASE.store(base_va, Ordering::Release);
    *CONSOLE.lock() = Some(Pl011 { base: base_va });
}

#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Prints on the panic/exception path: takes the lock if it can within a bounded wait,
/// otherwise writes without it (the holder may be this CPU, interrupted).
pub fn emergency_print(args: fmt::Arguments) {
    for _ in 0..1_000_000 {
        if let Some(mut guard) = CONSOLE.try_lock() {
            if let Some(uart) = guard.as_mut() {
                let _ = uart.write_fmt(args);
            }
            return;
        }
        core::hint::spin_loop();
    }
    let base = BASE.load(Ordering::Acquire);
    if base != 0 {
        let _ = Pl011 { base }.write_fmt(args);
    }
}

/// Prints to the console (nothing before the console is up).
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the console; the whole line is written under one lock acquisition so
/// lines from different CPUs do not interleave.
#[macro_export]
macro_rules! println {
    () => { $crate::console::_print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::console::_print(format_args!("{}\n", format_args!($($arg)*))) };
}
