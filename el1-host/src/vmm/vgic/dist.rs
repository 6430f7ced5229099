//! The distributor (`GICD_*`, 64 KiB at 0x0800_0000): global control, the SPIs'
//! per-interrupt registers and their routing.
//!
//! Access widths as the GICv3 specification allows them: 32-bit everywhere,
//! IPRIORITYR (and the ITARGETSR space) also by byte, IROUTER by 64 or 32 bits. Any
//! other width or a misaligned access is refused ([`DeviceError::BadWidth`]: the VMM
//! injects an abort). The first 32-interrupt word of each per-interrupt register (the
//! private interrupts, which live in the redistributors with ARE set), the ITARGETSR,
//! IGRPMODR, NSACR and SGI registers of the legacy/secure views, and every reserved
//! offset read as zero and ignore writes; reserved ones are logged (bounded).

use super::bank::{self, IIDR_VALUE, PIDR2, PIDR2_GICV3};
use super::{ctlr, BitReg, Vgic, NR_IRQS, NR_PRIVATE};
use crate::vmm::mmio::DeviceError;
use shared::exit::AccessWidth;

/// GICD_CTLR.
pub const CTLR: u64 = 0x0000;
/// GICD_TYPER.
pub const TYPER: u64 = 0x0004;
/// GICD_IIDR.
pub const IIDR: u64 = 0x0008;
/// GICD_TYPER2.
pub const TYPER2: u64 = 0x000C;
/// GICD_STATUSR.
pub const STATUSR: u64 = 0x0010;
/// ITARGETSR (legacy; RAZ/WI with ARE).
const ITARGETSR: u64 = 0x0800;
/// GICD_SGIR and the SGI pending registers (legacy; RAZ/WI with ARE).
const SGIR_END: u64 = 0x0F30;
/// GICD_IROUTER<n> (n ≥ 32) at IROUTER + 8n.
pub const IROUTER: u64 = 0x6000;
/// Size of the distributor frame.
pub const SIZE: u64 = 0x1_0000;

/// GICD_TYPER: ITLinesNumber = NR_IRQS / 32 - 1, IDbits = 10 - 1 (INTIDs up to 1023:
/// no LPIs), as KVM's GICv3 without an ITS.
pub const TYPER_VALUE: u64 = (NR_IRQS as u64 / 32 - 1) | (9 << 19);

fn width_ok(offset: u64, width: AccessWidth, allowed: &[AccessWidth]) -> Result<(), DeviceError> {
    if allowed.contains(&width) && offset.is_multiple_of(u64::from(width.bytes())) {
        Ok(())
    } else {
        Err(DeviceError::BadWidth { offset, width })
    }
}

const W32: &[AccessWidth] = &[AccessWidth::Word];
const W8_32: &[AccessWidth] = &[AccessWidth::Byte, AccessWidth::Word];
const W32_64: &[AccessWidth] = &[AccessWidth::Word, AccessWidth::Double];

impl Vgic {
    /// A guest load from the distributor at `offset`.
    pub fn dist_read(&mut self, offset: u64, width: AccessWidth) -> Result<u64, DeviceError> {
        match offset {
            bank::IPRIORITYR..ITARGETSR => {
                width_ok(offset, width, W8_32)?;
                let intid = (offset - bank::IPRIORITYR) as u32;
                if (intid as usize) < NR_PRIVATE {
                    return Ok(0);
                }
                Ok(self.read_priorities(0, intid, width.bytes() as u32))
            }
            ITARGETSR..bank::ICFGR => {
                width_ok(offset, width, W8_32)?;
                Ok(0)
            }
            IROUTER..0x7FE0 => {
                width_ok(offset, width, W32_64)?;
                let n = ((offset - IROUTER) / 8) as u32;
                let route = match self.irq(0, n) {
                    Some(irq) if n as usize >= NR_PRIVATE => irq.route,
                    _ => 0,
                };
                Ok(if offset % 8 == 4 {
                    route >> 32
                } else if width == AccessWidth::Word {
                    route & 0xffff_ffff
                } else {
                    route
                })
            }
            _ => {
                width_ok(offset, width, W32)?;
                Ok(u64::from(self.dist_read32(offset)))
            }
        }
    }

    fn dist_read32(&mut self, offset: u64) -> u32 {
        if let Some((reg, word)) = BitReg::at(offset) {
            return if word == 0 {
                0
            } else {
                self.bitreg_read(0, &reg, word * 32)
            };
        }
        match offset {
            CTLR => self.ctlr | ctlr::ARE | ctlr::DS,
            TYPER => TYPER_VALUE as u32,
            IIDR => IIDR_VALUE as u32,
            TYPER2 | STATUSR => 0,
            bank::ICFGR..bank::IGRPMODR => {
                let word = ((offset - bank::ICFGR) / 4) as u32;
                if word < 2 {
                    0
                } else {
                    self.read_config(0, word * 16)
                }
            }
            bank::IGRPMODR..SGIR_END => 0,
            PIDR2 => PIDR2_GICV3 as u32,
            0xFFD0..0x1_0000 => 0,
            _ => {
                self.odd_access("GICD", offset, false);
                0
            }
        }
    }

    /// A guest store to the distributor at `offset`.
    pub fn dist_write(
        &mut self,
        offset: u64,
        width: AccessWidth,
        value: u64,
    ) -> Result<(), DeviceError> {
        match offset {
            bank::IPRIORITYR..ITARGETSR => {
                width_ok(offset, width, W8_32)?;
                let intid = (offset - bank::IPRIORITYR) as u32;
                if intid as usize >= NR_PRIVATE {
                    self.write_priorities(0, intid, width.bytes() as u32, value);
                }
                Ok(())
            }
            ITARGETSR..bank::ICFGR => width_ok(offset, width, W8_32),
            IROUTER..0x7FE0 => {
                width_ok(offset, width, W32_64)?;
                let n = ((offset - IROUTER) / 8) as u32;
                if (n as usize) < NR_PRIVATE {
                    return Ok(());
                }
                let Some(old) = self.irq(0, n).map(|i| i.route) else {
                    return Ok(());
                };
                // Interrupt_Routing_Mode (bit 31) is not offered: RAZ/WI, as KVM.
                let new = if offset % 8 == 4 {
                    (old & 0xffff_ffff) | ((value & 0xff) << 32)
                } else if width == AccessWidth::Word {
                    (old & !0xffff_ffff) | (value & 0x00ff_ffff)
                } else {
                    value & 0xff_00ff_ffff
                };
                if let Some(irq) = self.irq_mut(0, n) {
                    irq.route = new;
                }
                self.note(0, n);
                Ok(())
            }
            _ => {
                width_ok(offset, width, W32)?;
                self.dist_write32(offset, value as u32);
                Ok(())
            }
        }
    }

    fn dist_write32(&mut self, offset: u64, value: u32) {
        if let Some((reg, word)) = BitReg::at(offset) {
            if word != 0 {
                self.bitreg_write(0, &reg, word * 32, value);
            }
            return;
        }
        match offset {
            CTLR => {
                self.ctlr = value & (ctlr::ENABLE_G0 | ctlr::ENABLE_G1);
                // Enabling a group may make interrupts of any vCPU deliverable.
                for v in 0..self.vcpus() {
                    for intid in 0..NR_IRQS as u32 {
                        self.note(v, intid);
                    }
                }
            }
            TYPER | IIDR | TYPER2 | STATUSR => {}
            bank::ICFGR..bank::IGRPMODR => {
                let word = ((offset - bank::ICFGR) / 4) as u32;
                if word >= 2 {
                    self.write_config(0, word * 16, value);
                }
            }
            bank::IGRPMODR..SGIR_END => {}
            0xFFD0..0x1_0000 => {}
            _ => self.odd_access("GICD", offset, true),
        }
    }
}
