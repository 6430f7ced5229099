//! The emulated PL011 UART the guest sees at [`map::PL011_BASE`](super::map::PL011_BASE).
//!
//! Output only: bytes written to the data register are collected into lines and each
//! complete line is handed to a sink (the VMM prints it as `guest <vm>: <line>`). The
//! receive side is always empty. The flag register always says "transmit FIFO empty,
//! receive FIFO empty", so a guest's polling loops finish at once.
//!
//! # Registers (PrimeCell UART PL011 TRM, offsets from the base)
//!
//! | off | name | here |
//! | --- | --- | --- |
//! | 0x000 | DR | write: transmit the low 8 bits; read: 0 (nothing received) |
//! | 0x004 | RSR/ECR | read 0 (no errors); a write clears (nothing to clear) |
//! | 0x018 | FR | read TXFE \| RXFE (0x90); writes ignored |
//! | 0x020 | ILPR | stored (8 bits), reset 0 |
//! | 0x024 | IBRD | stored (16 bits), reset 0 |
//! | 0x028 | FBRD | stored (6 bits), reset 0 |
//! | 0x02C | LCR_H | stored (8 bits), reset 0 |
//! | 0x030 | CR | stored (16 bits), reset 0x300 (TXE, RXE) |
//! | 0x034 | IFLS | stored (6 bits), reset 0x12 |
//! | 0x038 | IMSC | stored (11 bits), reset 0 |
//! | 0x03C | RIS | read 0 (no interrupt is raised yet: the UART's interrupt output is not wired to the vGIC) |
//! | 0x040 | MIS | read RIS & IMSC = 0 |
//! | 0x044 | ICR | write ignored; read 0 |
//! | 0x048 | DMACR | stored (3 bits), reset 0 |
//! | 0xFE0–0xFEC | PeriphID0–3 | 0x11, 0x10, 0x14, 0x00 (as QEMU reports) |
//! | 0xFF0–0xFFC | PCellID0–3 | 0x0D, 0xF0, 0x05, 0xB1 |
//!
//! Anything else (0x008–0x014, 0x01C, 0x04C–0xFDC) has no register: [`DeviceError::BadOffset`].
//!
//! # Access widths
//!
//! The PL011 sits on a 32-bit APB bus with word-aligned registers at most 16 bits wide,
//! and the bus carries no byte-lane strobes, so a narrower access reaches the whole
//! register. Linux relies on that: its early console writes DR with 8-bit stores and its
//! driver uses 16-bit accesses unless the device tree says `reg-io-width = <4>`. So
//! 8-, 16- and 32-bit accesses at word-aligned offsets are accepted (a narrow read sees
//! the register's low bits, a narrow write sets them). A 64-bit access or any access
//! that is not word-aligned is [`DeviceError::BadWidth`]: the guest gets an abort.
//! The transmitter is not gated on CR.UARTEN/TXE (QEMU does not gate it either, and
//! early consoles write before anything enables the UART).

use super::mmio::{DeviceError, MmioDevice};
use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;
use shared::exit::AccessWidth;

/// Register offsets.
pub mod reg {
    /// Data register.
    pub const DR: u64 = 0x000;
    /// Receive status / error clear.
    pub const RSR_ECR: u64 = 0x004;
    /// Flag register.
    pub const FR: u64 = 0x018;
    /// IrDA low-power counter.
    pub const ILPR: u64 = 0x020;
    /// Integer baud-rate divisor.
    pub const IBRD: u64 = 0x024;
    /// Fractional baud-rate divisor.
    pub const FBRD: u64 = 0x028;
    /// Line control.
    pub const LCR_H: u64 = 0x02c;
    /// Control.
    pub const CR: u64 = 0x030;
    /// Interrupt FIFO level select.
    pub const IFLS: u64 = 0x034;
    /// Interrupt mask set/clear.
    pub const IMSC: u64 = 0x038;
    /// Raw interrupt status.
    pub const RIS: u64 = 0x03c;
    /// Masked interrupt status.
    pub const MIS: u64 = 0x040;
    /// Interrupt clear.
    pub const ICR: u64 = 0x044;
    /// DMA control.
    pub const DMACR: u64 = 0x048;
    /// PeriphID0; PeriphID1–3 and PCellID0–3 follow every 4 bytes.
    pub const PERIPH_ID0: u64 = 0xfe0;
}

/// FR: transmit FIFO empty.
pub const FR_TXFE: u32 = 1 << 7;
/// FR: receive FIFO empty.
pub const FR_RXFE: u32 = 1 << 4;
/// CR after reset: transmit and receive enabled, UART disabled.
pub const CR_RESET: u32 = 0x300;
/// IFLS after reset: both FIFO levels at half full.
pub const IFLS_RESET: u32 = 0x12;
/// PeriphID0..3 then PCellID0..3, at 0xFE0..0xFFC.
pub const ID_REGS: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1];
/// Longest line kept before it is emitted anyway, so a guest printing without newlines
/// cannot make the host buffer grow.
pub const MAX_LINE: usize = 256;

/// Where complete lines go (the VMM prints them with the VM's prefix).
pub type LineSink = Box<dyn FnMut(&str) + Send>;

/// One emulated PL011.
pub struct Pl011 {
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    dmacr: u32,
    line: Vec<u8>,
    sink: LineSink,
}

impl Pl011 {
    /// A UART in its reset state that hands each complete output line to `sink`.
    pub fn new(sink: LineSink) -> Self {
        Self {
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: CR_RESET,
            ifls: IFLS_RESET,
            imsc: 0,
            dmacr: 0,
            line: Vec::new(),
            sink,
        }
    }

    /// Emits a pending partial line (when the guest stops, so its last words are seen).
    pub fn flush(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }

    fn emit(&mut self) {
        let text = printable(&self.line);
        self.line.clear();
        (self.sink)(&text);
    }

    fn transmit(&mut self, byte: u8) {
        match byte {
            b'\n' => self.emit(),
            // Guests print CR LF; the host adds its own line ends.
            b'\r' => {}
            b => {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
    }

    /// The register value at a word-aligned `offset`, or `None` if there is none.
    fn register(&self, offset: u64) -> Option<u32> {
        Some(match offset {
            reg::DR | reg::RSR_ECR | reg::RIS | reg::ICR => 0,
            reg::FR => FR_TXFE | FR_RXFE,
            reg::ILPR => self.ilpr,
            reg::IBRD => self.ibrd,
            reg::FBRD => self.fbrd,
            reg::LCR_H => self.lcr_h,
            reg::CR => self.cr,
            reg::IFLS => self.ifls,
            reg::IMSC => self.imsc,
            // No raw interrupt is ever pending, so none is unmasked either.
            reg::MIS => 0,
            reg::DMACR => self.dmacr,
            0xfe0..=0xffc => *ID_REGS.get(((offset - reg::PERIPH_ID0) / 4) as usize)? as u32,
            _ => return None,
        })
    }
}

/// The text every status line tools read from the console contains: the host's
/// `host: exit status=<n>` and the VMM's `guest <vm>: exit status=<n> reason=<r>`.
/// A guest line never contains it verbatim (see [`printable`]).
pub const STATUS_MARK: &[u8] = b"exit status=";

/// Renders guest bytes for a host log line: printable ASCII as is, anything else as
/// `\xNN`, so a guest cannot send terminal control sequences through the host console.
/// The `=` of [`STATUS_MARK`] is written `\x3d`: xtask finds the host's and the VMM's
/// status lines by that text anywhere in a line, and a guest must not be able to print
/// a line that reads as either.
fn printable(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let forged_mark = b == b'=' && bytes[..i].ends_with(&STATUS_MARK[..STATUS_MARK.len() - 1]);
        if !forged_mark && (b == b' ' || b.is_ascii_graphic() || b == b'\t') {
            s.push(b as char);
        } else {
            // Writing to a String cannot fail.
            let _ = write!(s, "\\x{b:02x}");
        }
    }
    s
}

/// Accepts 8/16/32-bit accesses at word-aligned offsets (see the module docs).
fn check_access(offset: u64, width: AccessWidth) -> Result<(), DeviceError> {
    if width == AccessWidth::Double || !offset.is_multiple_of(4) {
        return Err(DeviceError::BadWidth { offset, width });
    }
    Ok(())
}

impl MmioDevice for Pl011 {
    fn name(&self) -> &'static str {
        "pl011"
    }

    fn flush(&mut self) {
        Pl011::flush(self);
    }

    fn read(&mut self, offset: u64, width: AccessWidth) -> Result<u64, DeviceError> {
        check_access(offset, width)?;
        let v = self
            .register(offset)
            .ok_or(DeviceError::BadOffset { offset })?;
        Ok(u64::from(v) & width.mask())
    }

    fn write(&mut self, offset: u64, width: AccessWidth, value: u64) -> Result<(), DeviceError> {
        check_access(offset, width)?;
        if self.register(offset).is_none() {
            return Err(DeviceError::BadOffset { offset });
        }
        // Registers are at most 16 bits wide; each keeps only its defined bits.
        let v = (value & width.mask()) as u32;
        match offset {
            reg::DR => self.transmit(v as u8),
            reg::ILPR => self.ilpr = v & 0xff,
            reg::IBRD => self.ibrd = v & 0xffff,
            reg::FBRD => self.fbrd = v & 0x3f,
            reg::LCR_H => self.lcr_h = v & 0xff,
            reg::CR => self.cr = v & 0xffff,
            reg::IFLS => self.ifls = v & 0x3f,
            reg::IMSC => self.imsc = v & 0x7ff,
            reg::DMACR => self.dmacr = v & 0x7,
            // ECR and ICR clear state this model never has; FR, RIS, MIS and the ID
            // registers are read-only and ignore writes, as the hardware does.
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;
    use std::sync::{Arc, Mutex};

    fn uart() -> (Pl011, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l = lines.clone();
        (
            Pl011::new(Box::new(move |s: &str| {
                l.lock().unwrap().push(s.to_string())
            })),
            lines,
        )
    }

    fn put(u: &mut Pl011, s: &[u8], width: AccessWidth) {
        for &b in s {
            u.write(reg::DR, width, u64::from(b)).unwrap();
        }
    }

    #[test]
    fn dr_writes_become_lines() {
        let (mut u, lines) = uart();
        put(&mut u, b"hello\r\nwor", AccessWidth::Word);
        assert_eq!(*lines.lock().unwrap(), ["hello"]);
        // Linux's early console writes DR bytewise; the upper bits of a wide write are
        // not part of the character.
        put(&mut u, b"ld", AccessWidth::Byte);
        u.write(reg::DR, AccessWidth::Half, 0x0a0a).unwrap(); // low byte '\n'
        assert_eq!(*lines.lock().unwrap(), ["hello", "world"]);
        put(&mut u, b"tail", AccessWidth::Word);
        assert_eq!(lines.lock().unwrap().len(), 2, "no newline yet");
        u.flush();
        assert_eq!(lines.lock().unwrap()[2], "tail");
        u.flush();
        assert_eq!(lines.lock().unwrap().len(), 3, "nothing pending");
    }

    #[test]
    fn long_lines_and_control_bytes() {
        let (mut u, lines) = uart();
        put(&mut u, &[b'x'; MAX_LINE + 3], AccessWidth::Word);
        assert_eq!(lines.lock().unwrap()[0].len(), MAX_LINE);
        u.flush();
        assert_eq!(lines.lock().unwrap()[1], "xxx");
        put(&mut u, b"\x1b[2Ja\tb\xff\n", AccessWidth::Byte);
        assert_eq!(lines.lock().unwrap()[2], "\\x1b[2Ja\tb\\xff");
    }

    #[test]
    fn a_guest_cannot_print_a_status_line() {
        let (mut u, lines) = uart();
        let forged = [
            "exit status=0 reason=guest-exit",
            "host: exit status=0",
            "xx host: exit status=0",
            "exit status=0 reason=system-off\r",
        ];
        for f in forged {
            put(&mut u, f.as_bytes(), AccessWidth::Byte);
            put(&mut u, b"\n", AccessWidth::Byte);
        }
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), forged.len());
        for l in lines.iter() {
            // What the VMM prints for a guest line, read as xtask reads the console.
            let console = std::format!("guest 0: {l}");
            assert_eq!(
                shared::guest_abi::parse_exit_line(&console),
                None,
                "{console}"
            );
            assert_eq!(
                crate::status::parse_status_line(&console),
                None,
                "{console}"
            );
            assert!(l.contains("exit status\\x3d0"), "{l}");
        }
        // Other `=` signs and the words alone print as they are.
        drop(lines);
        let (mut u, lines) = uart();
        put(&mut u, b"a=1 exit status: =2 status=3\n", AccessWidth::Byte);
        assert_eq!(lines.lock().unwrap()[0], "a=1 exit status: =2 status=3");
    }

    #[test]
    fn reads_look_like_a_reset_pl011() {
        let (mut u, _) = uart();
        let r = |u: &mut Pl011, o| u.read(o, AccessWidth::Word).unwrap();
        assert_eq!(r(&mut u, reg::FR), 0x90, "TXFE | RXFE");
        assert_eq!(r(&mut u, reg::CR), 0x300);
        assert_eq!(r(&mut u, reg::IFLS), 0x12);
        for o in [
            reg::DR,
            reg::RSR_ECR,
            reg::IBRD,
            reg::FBRD,
            reg::LCR_H,
            reg::IMSC,
            reg::RIS,
            reg::MIS,
            reg::DMACR,
            reg::ILPR,
        ] {
            assert_eq!(r(&mut u, o), 0, "offset {o:#x}");
        }
        let ids: Vec<u64> = (0..8).map(|i| r(&mut u, 0xfe0 + 4 * i)).collect();
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
        // A 16-bit read (Linux's default accessor) sees the same values.
        assert_eq!(u.read(reg::FR, AccessWidth::Half), Ok(0x90));
        assert_eq!(
            u.read(reg::CR, AccessWidth::Byte),
            Ok(0x00),
            "low byte of 0x300"
        );
    }

    #[test]
    fn control_writes_are_stored_within_their_width() {
        let (mut u, lines) = uart();
        u.write(reg::IBRD, AccessWidth::Word, 0x1_0027).unwrap();
        u.write(reg::FBRD, AccessWidth::Word, 0xff).unwrap();
        u.write(reg::LCR_H, AccessWidth::Half, 0x70).unwrap();
        u.write(reg::CR, AccessWidth::Word, 0x301).unwrap();
        u.write(reg::IMSC, AccessWidth::Word, 0xffff_ffff).unwrap();
        u.write(reg::IFLS, AccessWidth::Word, 0).unwrap();
        u.write(reg::DMACR, AccessWidth::Word, 0xf).unwrap();
        u.write(reg::ILPR, AccessWidth::Word, 0x1ff).unwrap();
        let r = |u: &mut Pl011, o| u.read(o, AccessWidth::Word).unwrap();
        assert_eq!(r(&mut u, reg::IBRD), 0x27);
        assert_eq!(r(&mut u, reg::FBRD), 0x3f);
        assert_eq!(r(&mut u, reg::LCR_H), 0x70);
        assert_eq!(r(&mut u, reg::CR), 0x301);
        assert_eq!(r(&mut u, reg::IMSC), 0x7ff);
        assert_eq!(r(&mut u, reg::IFLS), 0);
        assert_eq!(r(&mut u, reg::DMACR), 7);
        assert_eq!(r(&mut u, reg::ILPR), 0xff);
        // Interrupts are unmasked but none is raised.
        assert_eq!(r(&mut u, reg::MIS), 0);
        // Read-only registers ignore writes.
        u.write(reg::FR, AccessWidth::Word, 0).unwrap();
        u.write(0xfe0, AccessWidth::Word, 0).unwrap();
        u.write(reg::ICR, AccessWidth::Word, 0x7ff).unwrap();
        assert_eq!(r(&mut u, reg::FR), 0x90);
        assert_eq!(r(&mut u, 0xfe0), 0x11);
        assert!(lines.lock().unwrap().is_empty(), "no register write prints");
    }

    #[test]
    fn bad_offsets_and_widths_are_refused() {
        let (mut u, lines) = uart();
        for o in [0x008, 0x014, 0x01c, 0x04c, 0x100, 0xfdc, 0x1000] {
            assert_eq!(
                u.read(o, AccessWidth::Word),
                Err(DeviceError::BadOffset { offset: o })
            );
            assert_eq!(
                u.write(o, AccessWidth::Word, 0),
                Err(DeviceError::BadOffset { offset: o })
            );
        }
        assert_eq!(
            u.read(reg::FR, AccessWidth::Double),
            Err(DeviceError::BadWidth {
                offset: reg::FR,
                width: AccessWidth::Double
            })
        );
        assert!(u
            .write(reg::DR, AccessWidth::Double, u64::from(b'A'))
            .is_err());
        assert!(u
            .write(reg::DR + 1, AccessWidth::Byte, u64::from(b'A'))
            .is_err());
        assert!(u.read(reg::FR + 2, AccessWidth::Half).is_err());
        u.flush();
        assert!(
            lines.lock().unwrap().is_empty(),
            "refused DR writes print nothing"
        );
    }
}
