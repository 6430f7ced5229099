//! The guest's architected timers, as KVM gives them in nVHE:
//!
//! - the **virtual timer** is the guest's own: the hyp switches CNTV_CTL/CVAL with the
//!   vCPU and sets CNTVOFF_EL2 to the VM's offset, so its virtual count starts near zero.
//!   The VMM reads the saved registers at each exit to know the output level
//!   ([`level`]) and, while the vCPU waits, when it will fire ([`deadline`]). Its
//!   interrupt (PPI 27) is linked to the physical PPI 27 (LR.HW), so it fires while the
//!   guest runs and the guest's deactivation re-arms it.
//! - the **EL1 physical timer** traps (CNTHCTL_EL2.EL1PCEN clear) and is emulated here
//!   ([`PhysTimer`]) against the physical count, its interrupt PPI 30 injected from
//!   the model; the host arms its own timer for the guest's deadline.

/// CNTx_CTL.ENABLE.
pub const CTL_ENABLE: u64 = 1 << 0;
/// CNTx_CTL.IMASK.
pub const CTL_IMASK: u64 = 1 << 1;
/// CNTx_CTL.ISTATUS (read-only: the condition is met).
pub const CTL_ISTATUS: u64 = 1 << 2;

/// The interrupt output of a timer with control `ctl` and compare value `cval` at
/// counter value `count`: enabled, not masked, condition met.
pub const fn level(ctl: u64, cval: u64, count: u64) -> bool {
    ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE && count >= cval
}

/// When the timer's interrupt will rise (its compare value), if it is enabled and
/// unmasked.
pub const fn deadline(ctl: u64, cval: u64) -> Option<u64> {
    if ctl & (CTL_ENABLE | CTL_IMASK) == CTL_ENABLE {
        Some(cval)
    } else {
        None
    }
}

/// One of the trapped EL1 physical timer registers (op0 3, op1 3, CRn 14, CRm 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhysTimerReg {
    /// CNTP_TVAL_EL0 (op2 0).
    Tval,
    /// CNTP_CTL_EL0 (op2 1).
    Ctl,
    /// CNTP_CVAL_EL0 (op2 2).
    Cval,
}

impl PhysTimerReg {
    /// From the trapped encoding's op2.
    pub const fn from_op2(op2: u8) -> Option<Self> {
        match op2 {
            0 => Some(Self::Tval),
            1 => Some(Self::Ctl),
            2 => Some(Self::Cval),
            _ => None,
        }
    }
}

/// An emulated EL1 physical timer (one per vCPU), compared against the physical count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhysTimer {
    ctl: u64,
    cval: u64,
}

impl PhysTimer {
    /// A guest read at physical count `now`.
    pub fn read(&self, reg: PhysTimerReg, now: u64) -> u64 {
        match reg {
            // TimerValue: the signed 32-bit distance to the compare value.
            PhysTimerReg::Tval => u64::from(self.cval.wrapping_sub(now) as u32),
            PhysTimerReg::Ctl => {
                let met = if now >= self.cval { CTL_ISTATUS } else { 0 };
                // ISTATUS reports the condition while enabled, whatever IMASK says.
                self.ctl | if self.ctl & CTL_ENABLE != 0 { met } else { 0 }
            }
            PhysTimerReg::Cval => self.cval,
        }
    }

    /// A guest write at physical count `now`.
    pub fn write(&mut self, reg: PhysTimerReg, value: u64, now: u64) {
        match reg {
            PhysTimerReg::Tval => {
                self.cval = now.wrapping_add(value as u32 as i32 as i64 as u64);
            }
            PhysTimerReg::Ctl => self.ctl = value & (CTL_ENABLE | CTL_IMASK),
            PhysTimerReg::Cval => self.cval = value,
        }
    }

    /// Its interrupt output at `now`.
    pub fn level(&self, now: u64) -> bool {
        level(self.ctl, self.cval, now)
    }

    /// When its interrupt rises, if armed.
    pub fn deadline(&self) -> Option<u64> {
        deadline(self.ctl, self.cval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_needs_enable_no_mask_and_the_deadline() {
        assert!(level(CTL_ENABLE, 100, 100));
        assert!(!level(CTL_ENABLE, 100, 99));
        assert!(!level(CTL_ENABLE | CTL_IMASK, 100, 200));
        assert!(!level(0, 100, 200));
        assert_eq!(deadline(CTL_ENABLE, 7), Some(7));
        assert_eq!(deadline(CTL_ENABLE | CTL_IMASK, 7), None);
    }

    #[test]
    fn the_physical_timer_behaves_like_the_registers() {
        let mut t = PhysTimer::default();
        t.write(PhysTimerReg::Tval, 1000, 5000);
        assert_eq!(t.read(PhysTimerReg::Cval, 0), 6000);
        assert_eq!(t.read(PhysTimerReg::Tval, 5500), 500);
        assert_eq!(
            t.read(PhysTimerReg::Tval, 6100),
            (-100i32) as u32 as u64,
            "negative once past"
        );
        // A negative TVAL puts the deadline in the past.
        t.write(PhysTimerReg::Tval, (-10i32) as u32 as u64, 5000);
        assert_eq!(t.read(PhysTimerReg::Cval, 0), 4990);
        t.write(PhysTimerReg::Cval, 6000, 0);
        assert_eq!(t.read(PhysTimerReg::Ctl, 7000), 0, "disabled: no ISTATUS");
        assert!(!t.level(7000));
        t.write(PhysTimerReg::Ctl, 0xff, 0);
        assert_eq!(
            t.read(PhysTimerReg::Ctl, 7000),
            CTL_ENABLE | CTL_IMASK | CTL_ISTATUS
        );
        assert!(!t.level(7000), "masked");
        t.write(PhysTimerReg::Ctl, CTL_ENABLE, 0);
        assert!(t.level(7000) && !t.level(5999));
        assert_eq!(t.deadline(), Some(6000));
    }
}
