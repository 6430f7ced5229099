//! Emulated MMIO: the [`MmioDevice`] trait every device model implements, and the
//! [`MmioBus`] that routes an [`Exit::Mmio`](shared::exit::Exit::Mmio) to the device
//! whose IPA range holds the address.
//!
//! An access no device claims, or one a device refuses (bad offset, bad width), comes
//! back as an [`MmioError`]; the VMM answers it the way hardware answers an access to
//! nothing: it injects a synchronous external abort into the guest. The host never
//! crashes on a guest's access.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use shared::exit::{AccessWidth, MmioAccess};

/// Why a device refused an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// No register at this offset.
    BadOffset {
        /// Offset from the device's base.
        offset: u64,
    },
    /// The register exists but not for an access of this size or alignment.
    BadWidth {
        /// Offset from the device's base.
        offset: u64,
        /// The access size.
        width: AccessWidth,
    },
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadOffset { offset } => write!(f, "no register at offset {offset:#x}"),
            Self::BadWidth { offset, width } => write!(
                f,
                "{}-bit access not allowed at offset {offset:#x}",
                width.bits()
            ),
        }
    }
}

/// A device model. Offsets are relative to the device's base; the bus guarantees that
/// the whole access lies inside the range the device was registered with.
pub trait MmioDevice: Send {
    /// A short name for logs (`pl011`).
    fn name(&self) -> &'static str;
    /// A load of `width` bytes at `offset`; the value is zero-extended (the bus applies
    /// the guest's sign extension).
    fn read(&mut self, offset: u64, width: AccessWidth) -> Result<u64, DeviceError>;
    /// A store of the low `width` bytes of `value` at `offset`.
    fn write(&mut self, offset: u64, width: AccessWidth, value: u64) -> Result<(), DeviceError>;
    /// The VM has stopped: hand on anything buffered (a UART's partial last line).
    fn flush(&mut self) {}
}

/// Why an MMIO exit could not be completed; each means "inject an external abort".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioError {
    /// No device covers the access (or it runs off a device's end).
    NoDevice {
        /// The accessed IPA.
        ipa: u64,
        /// The access size.
        width: AccessWidth,
    },
    /// The device refused the access.
    Device {
        /// The device's name.
        device: &'static str,
        /// The accessed IPA.
        ipa: u64,
        /// What the device said.
        error: DeviceError,
    },
}

impl fmt::Display for MmioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoDevice { ipa, width } => {
                write!(
                    f,
                    "no device at IPA {ipa:#x} ({}-byte access)",
                    width.bytes()
                )
            }
            Self::Device { device, ipa, error } => {
                write!(f, "{device} at IPA {ipa:#x}: {error}")
            }
        }
    }
}

/// Why a device could not be added to the bus.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    BadRange {
        /// Base IPA.
        base: u64,
        /// Size.
        size: u64,
    },
    /// The range overlaps a device already on the bus.
    Overlap {
        /// Base IPA of the new device.
        base: u64,
        /// The device it overlaps.
        existing: &'static str,
    },
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRange { base, size } => {
                write!(f, "bad MMIO range: base {base:#x} size {size:#x}")
            }
            Self::Overlap { base, existing } => {
                write!(f, "MMIO range at {base:#x} overlaps {existing}")
            }
        }
    }
}

/// How a completed MMIO exit changes the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmioOutcome {
    /// A load: write `value` (already truncated and extended as the instruction asks)
    /// to register `reg`; 31 means XZR, i.e. discard.
    Load {
        /// The destination register.
        reg: u8,
        /// Its new value.
        value: u64,
    },
    /// A store the device accepted.
    Stored,
}

struct Slot {
    base: u64,
    size: u64,
    device: Box<dyn MmioDevice>,
}

/// The guest's emulated devices, keyed by IPA range.
#[derive(Default)]
pub struct MmioBus {
    slots: Vec<Slot>,
}

impl MmioBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `device` at `[base, base + size)`.
    pub fn add(
        &mut self,
        base: u64,
        size: u64,
        device: Box<dyn MmioDevice>,
    ) -> Result<(), BusError> {
        let Some(end) = base.checked_add(size).filter(|_| size != 0) else {
            return Err(BusError::BadRange { base, size });
        };
        if let Some(s) = self
            .slots
            .iter()
            .find(|s| base < s.base + s.size && s.base < end)
        {
            return Err(BusError::Overlap {
                base,
                existing: s.device.name(),
            });
        }
        self.slots.push(Slot { base, size, device });
        Ok(())
    }

    /// Flushes every device (see [`MmioDevice::flush`]).
    pub fn flush(&mut self) {
        for s in &mut self.slots {
            s.device.flush();
        }
    }

    /// The name of the device covering `ipa`, if any.
    pub fn device_at(&self, ipa: u64) -> Option<&'static str> {
        self.slots
            .iter()
            .find(|s| ipa.wrapping_sub(s.base) < s.size)
            .map(|s| s.device.name())
    }

    /// Completes one MMIO exit. `reg_value` is the value of the transfer register for a
    /// store (the caller passes 0 for register 31, XZR); it is ignored for a load.
    pub fn handle(
        &mut self,
        access: &MmioAccess,
        reg_value: u64,
    ) -> Result<MmioOutcome, MmioError> {
        let ipa = access.ipa;
        let bytes = u64::from(access.width.bytes());
        let no_device = MmioError::NoDevice {
            ipa,
            width: access.width,
        };
        let slot = self
            .slots
            .iter_mut()
            .find(|s| ipa.wrapping_sub(s.base) < s.size)
            .ok_or(no_device)?;
        let offset = ipa - slot.base;
        // An access running off the device's end touches nothing real.
        if offset + bytes > slot.size {
            return Err(no_device);
        }
        let device = slot.device.name();
        let wrap = |error| MmioError::Device { device, ipa, error };
        if access.write {
            slot.device
                .write(offset, access.width, access.store_data(reg_value))
                .map_err(wrap)?;
            Ok(MmioOutcome::Stored)
        } else {
            let raw = slot.device.read(offset, access.width).map_err(wrap)?;
            Ok(MmioOutcome::Load {
                reg: access.reg,
                value: access.load_result(raw),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the scratch device saw: (write, offset, value).
    type Log = Arc<Mutex<Vec<(bool, u64, u64)>>>;

    /// A device of four 32-bit scratch registers that logs what it is asked.
    struct Scratch {
        regs: [u32; 4],
        log: Log,
    }

    impl MmioDevice for Scratch {
        fn name(&self) -> &'static str {
            "scratch"
        }
        fn read(&mut self, offset: u64, width: AccessWidth) -> Result<u64, DeviceError> {
            if width != AccessWidth::Word {
                return Err(DeviceError::BadWidth { offset, width });
            }
            let v = *self
                .regs
                .get((offset / 4) as usize)
                .ok_or(DeviceError::BadOffset { offset })?;
            self.log.lock().unwrap().push((false, offset, v.into()));
            Ok(v.into())
        }
        fn write(
            &mut self,
            offset: u64,
            width: AccessWidth,
            value: u64,
        ) -> Result<(), DeviceError> {
            if width != AccessWidth::Word {
                return Err(DeviceError::BadWidth { offset, width });
            }
            let r = self
                .regs
                .get_mut((offset / 4) as usize)
                .ok_or(DeviceError::BadOffset { offset })?;
            *r = value as u32;
            self.log.lock().unwrap().push((true, offset, value));
            Ok(())
        }
    }

    fn access(ipa: u64, write: bool, width: AccessWidth, reg: u8) -> MmioAccess {
        MmioAccess {
            ipa,
            write,
            width,
            sign_extend: false,
            reg,
            sixty_four: true,
            acquire_release: false,
        }
    }

    fn bus() -> (MmioBus, Log) {
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut bus = MmioBus::new();
        bus.add(
            0x1000_0000,
            16,
            Box::new(Scratch {
                regs: [0; 4],
                log: log.clone(),
            }),
        )
        .unwrap();
        (bus, log)
    }

    #[test]
    fn routes_by_range_and_completes_loads() {
        let (mut bus, log) = bus();
        let w = access(0x1000_0008, true, AccessWidth::Word, 3);
        assert_eq!(
            bus.handle(&w, 0xdead_beef_1234_5678),
            Ok(MmioOutcome::Stored)
        );
        // The device sees only the access width's bytes.
        assert_eq!(log.lock().unwrap()[0], (true, 8, 0x1234_5678));
        let mut r = access(0x1000_0008, false, AccessWidth::Word, 7);
        r.sign_extend = false;
        assert_eq!(
            bus.handle(&r, 0),
            Ok(MmioOutcome::Load {
                reg: 7,
                value: 0x1234_5678
            })
        );
        assert_eq!(bus.device_at(0x1000_000f), Some("scratch"));
        assert_eq!(bus.device_at(0x1000_0010), None);
    }

    #[test]
    fn loads_are_extended_as_the_instruction_says() {
        let (mut bus, _) = bus();
        bus.handle(
            &access(0x1000_0000, true, AccessWidth::Word, 1),
            0x8000_0000,
        )
        .unwrap();
        let mut r = access(0x1000_0000, false, AccessWidth::Word, 2);
        r.sign_extend = true; // LDRSW x2
        assert_eq!(
            bus.handle(&r, 0),
            Ok(MmioOutcome::Load {
                reg: 2,
                value: 0xffff_ffff_8000_0000
            })
        );
    }

    #[test]
    fn nothing_there_or_refused_is_an_error_not_a_crash() {
        let (mut bus, log) = bus();
        let miss = access(0x2000_0000, false, AccessWidth::Word, 0);
        assert_eq!(
            bus.handle(&miss, 0),
            Err(MmioError::NoDevice {
                ipa: 0x2000_0000,
                width: AccessWidth::Word
            })
        );
        // Runs off the end of the device.
        let straddle = access(0x1000_000c, false, AccessWidth::Double, 0);
        assert!(matches!(
            bus.handle(&straddle, 0),
            Err(MmioError::NoDevice { .. })
        ));
        let narrow = access(0x1000_0004, true, AccessWidth::Byte, 0);
        let err = bus.handle(&narrow, 1).unwrap_err();
        assert_eq!(
            err,
            MmioError::Device {
                device: "scratch",
                ipa: 0x1000_0004,
                error: DeviceError::BadWidth {
                    offset: 4,
                    width: AccessWidth::Byte
                }
            }
        );
        assert!(std::format!("{err}").contains("8-bit access"));
        assert!(
            log.lock().unwrap().is_empty(),
            "refused accesses reach nothing"
        );
    }

    #[test]
    fn overlapping_or_empty_ranges_are_refused() {
        let (mut bus, _) = bus();
        let dev = || {
            Box::new(Scratch {
                regs: [0; 4],
                log: Arc::default(),
            })
        };
        assert_eq!(
            bus.add(0x1000_000c, 16, dev()),
            Err(BusError::Overlap {
                base: 0x1000_000c,
                existing: "scratch"
            })
        );
        assert!(bus.add(0x0fff_fff8, 8, dev()).is_ok(), "adjacent is fine");
        assert!(matches!(
            bus.add(0x3000_0000, 0, dev()),
            Err(BusError::BadRange { .. })
        ));
        assert!(matches!(
            bus.add(u64::MAX, 2, dev()),
            Err(BusError::BadRange { .. })
        ));
    }
}
