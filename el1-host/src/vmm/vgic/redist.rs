//! The redistributors: one per vCPU, 128 KiB apart from 0x080a_0000, each an RD frame
//! (control, identification, wake-up) and an SGI frame (the vCPU's SGIs and PPIs).
//!
//! GICR_TYPER names the vCPU's affinity, its number, and `Last` on the last one, so a
//! guest walking the region stops there. No LPIs: GICR_CTLR, PROPBASER, PENDBASER and
//! the LPI registers read as zero and ignore writes. Widths: 32-bit, GICR_TYPER and the
//! LPI base registers also 64-bit, IPRIORITYR also by byte; anything else is refused.

use super::bank::{self, IIDR_VALUE, PIDR2, PIDR2_GICV3};
use super::{BitReg, Vgic};
use crate::vmm::mmio::DeviceError;
use shared::exit::AccessWidth;

/// Bytes of one redistributor (RD_base + SGI_base frames).
pub const STRIDE: u64 = 0x2_0000;
/// The SGI frame's offset.
pub const SGI_BASE: u64 = 0x1_0000;
/// GICR_CTLR.
pub const CTLR: u64 = 0x0000;
/// GICR_IIDR.
pub const IIDR: u64 = 0x0004;
/// GICR_TYPER (64-bit).
pub const TYPER: u64 = 0x0008;
/// GICR_STATUSR.
pub const STATUSR: u64 = 0x0010;
/// GICR_WAKER.
pub const WAKER: u64 = 0x0014;
/// GICR_PROPBASER (64-bit).
pub const PROPBASER: u64 = 0x0070;
/// GICR_PENDBASER (64-bit).
pub const PENDBASER: u64 = 0x0078;
/// GICR_SYNCR.
pub const SYNCR: u64 = 0x00C0;
/// WAKER.ProcessorSleep.
pub const WAKER_SLEEP: u32 = 1 << 1;
/// WAKER.ChildrenAsleep.
pub const WAKER_ASLEEP: u32 = 1 << 2;
/// GICR_TYPER.Last.
pub const TYPER_LAST: u64 = 1 << 4;
/// ICFGR0 (SGIs): always edge.
const ICFGR0_SGIS: u32 = 0xaaaa_aaaa;

fn width_ok(offset: u64, width: AccessWidth, wide: bool, bytes: bool) -> Result<(), DeviceError> {
    let ok = match width {
        AccessWidth::Word => true,
        AccessWidth::Double => wide,
        AccessWidth::Byte => bytes,
        AccessWidth::Half => false,
    };
    if ok && offset.is_multiple_of(u64::from(width.bytes())) {
        Ok(())
    } else {
        Err(DeviceError::BadWidth { offset, width })
    }
}

impl Vgic {
    /// GICR_TYPER of `vcpu`: affinity (63:32, Aff3.Aff2.Aff1.Aff0), processor number
    /// (23:8), Last (4).
    pub fn gicr_typer(&self, vcpu: usize) -> u64 {
        let m = self.mpidrs.get(vcpu).copied().unwrap_or(0);
        let aff = ((m >> 32) & 0xff) << 24 | (m & 0xff_ffff);
        let mut t = (aff << 32) | ((vcpu as u64 & 0xffff) << 8);
        if vcpu + 1 == self.vcpus() {
            t |= TYPER_LAST;
        }
        t
    }

    /// A guest load from the redistributor region at `offset` (from its base).
    pub fn redist_read(&mut self, offset: u64, width: AccessWidth) -> Result<u64, DeviceError> {
        let (vcpu, off) = self.split(offset)?;
        if off >= SGI_BASE {
            return self.sgi_read(vcpu, off - SGI_BASE, width);
        }
        match off {
            TYPER | PROPBASER | PENDBASER => {
                width_ok(off, width, true, false)?;
                Ok(if off == TYPER {
                    self.gicr_typer(vcpu)
                } else {
                    0
                })
            }
            o if o == TYPER + 4 => {
                width_ok(off, width, false, false)?;
                Ok(self.gicr_typer(vcpu) >> 32)
            }
            _ => {
                width_ok(off, width, false, false)?;
                Ok(match off {
                    CTLR | STATUSR | SYNCR => 0,
                    IIDR => IIDR_VALUE,
                    WAKER => {
                        if self.rd[vcpu].sleep {
                            u64::from(WAKER_SLEEP | WAKER_ASLEEP)
                        } else {
                            0
                        }
                    }
                    0x0040..0x0100 => 0,
                    PIDR2 => PIDR2_GICV3,
                    0xFFD0..0x1_0000 => 0,
                    _ => {
                        self.odd_access("GICR", off, false);
                        0
                    }
                })
            }
        }
    }

    /// A guest store to the redistributor region at `offset`.
    pub fn redist_write(
        &mut self,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), DeviceError> {
        let (vcpu, off) = self.split(offset)?;
        if off >= SGI_BASE {
            return self.sgi_write(vcpu, off - SGI_BASE, width, value);
        }
        match off {
            TYPER | PROPBASER | PENDBASER => width_ok(off, width, true, false),
            _ => {
                width_ok(off, width, false, false)?;
                match off {
                    WAKER => self.rd[vcpu].sleep = value as u32 & WAKER_SLEEP != 0,
                    CTLR | IIDR | STATUSR | SYNCR | 0x000C => {}
                    0x0040..0x0100 | 0xFFD0..0x1_0000 => {}
                    _ => self.odd_access("GICR", off, true),
                }
                Ok(())
            }
        }
    }

    /// The vCPU whose redistributor holds `offset`, and the offset inside it.
    fn split(&self, offset: u64) -> Result<(usize, u64), DeviceError> {
        let vcpu = (offset / STRIDE) as usize;
        if vcpu >= self.vcpus() {
            return Err(DeviceError::BadOffset { offset });
        }
        Ok((vcpu, offset % STRIDE))
    }

    fn sgi_read(&mut self, vcpu: usize, off: u64, width: AccessWidth) -> Result<u64, DeviceError> {
        let sgi_off = off + SGI_BASE;
        if (bank::IPRIORITYR..bank::IPRIORITYR + 32).contains(&off) {
            width_ok(sgi_off, width, false, true)?;
            let first = (off - bank::IPRIORITYR) as u32;
            return Ok(self.read_priorities(vcpu, first, width.bytes() as u32));
        }
        width_ok(sgi_off, width, false, false)?;
        if let Some((reg, 0)) = BitReg::at(off) {
            return Ok(u64::from(self.bitreg_read(vcpu, &reg, 0)));
        }
        Ok(match off {
            bank::ICFGR => u64::from(ICFGR0_SGIS),
            o if o == bank::ICFGR + 4 => u64::from(self.read_config(vcpu, 16)),
            bank::IGRPMODR | bank::NSACR => 0,
            _ => {
                self.odd_access("GICR SGI frame", off, false);
                0
            }
        })
    }

    fn sgi_write(
        &mut self,
        vcpu: usize,
        off: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), DeviceError> {
        let sgi_off = off + SGI_BASE;
        if (bank::IPRIORITYR..bank::IPRIORITYR + 32).contains(&off) {
            width_ok(sgi_off, width, false, true)?;
            let first = (off - bank::IPRIORITYR) as u32;
            self.write_priorities(vcpu, first, width.bytes() as u32, value);
            return Ok(());
        }
        width_ok(sgi_off, width, false, false)?;
        if let Some((reg, 0)) = BitReg::at(off) {
            self.bitreg_write(vcpu, &reg, 0, value as u32);
            return Ok(());
        }
        match off {
            bank::ICFGR | bank::IGRPMODR | bank::NSACR => {}
            o if o == bank::ICFGR + 4 => self.write_config(vcpu, 16, value as u32),
            _ => self.odd_access("GICR SGI frame", off, true),
        }
        Ok(())
    }
}
