//! The virtual GICv3 CPU interface around a guest run: the hyp only moves state. On
//! entry it loads the list registers, ICH_VMCR_EL2, the active-priority registers the
//! CPU implements and ICH_HCR_EL2 the host prepared (`shared::vgic::VgicCpuIf`,
//! clamped to ICH_VTR_EL2), and clears ICC_SRE_EL2.Enable so the guest's ICC_SRE_EL1
//! accesses trap; on exit it saves them back (LR state, EOIcount, VMCR, APRs, MISR,
//! ELRSR) and turns the virtual interface off while the host runs.
//!
//! The interrupt model (which interrupt goes in which list register) is the host VMM's.
//! Registers are named by their encodings (`s3_4_c12_…`), as the host's GIC driver does.

use core::arch::asm;
use shared::vgic::{guest_ich_hcr, VgicCpuIf, Vtr, MAX_LRS};

/// ICC_SRE_EL2.Enable: EL1 accesses to ICC_SRE_EL1 do not trap.
const ICC_SRE_EL2_ENABLE: u64 = 1 << 3;

macro_rules! rd {
    ($enc:literal) => {{
        let v: u64;
        // SAFETY: a GICv3 virtualisation-control register, read at EL2 (the image runs
        // only where the CPU has the system-register GIC interface, HAS_SYSREG_GIC_CPUIF).
        unsafe { asm!(concat!("mrs {}, ", $enc), out(reg) v, options(nomem, nostack, preserves_flags)) };
        v
    }};
}

macro_rules! wr {
    ($enc:literal, $v:expr) => {{
        let v: u64 = $v;
        // SAFETY: as for `rd!`; the world switch owns the virtual interface while a
        // guest is being entered or left, and the writes take effect at its ISB.
        unsafe { asm!(concat!("msr ", $enc, ", {}"), in(reg) v, options(nomem, nostack, preserves_flags)) };
    }};
}

/// Calls `$m!(n, "encoding")` for each list register.
macro_rules! each_lr {
    ($f:ident) => {
        $f!(0, "s3_4_c12_c12_0");
        $f!(1, "s3_4_c12_c12_1");
        $f!(2, "s3_4_c12_c12_2");
        $f!(3, "s3_4_c12_c12_3");
        $f!(4, "s3_4_c12_c12_4");
        $f!(5, "s3_4_c12_c12_5");
        $f!(6, "s3_4_c12_c12_6");
        $f!(7, "s3_4_c12_c12_7");
        $f!(8, "s3_4_c12_c13_0");
        $f!(9, "s3_4_c12_c13_1");
        $f!(10, "s3_4_c12_c13_2");
        $f!(11, "s3_4_c12_c13_3");
        $f!(12, "s3_4_c12_c13_4");
        $f!(13, "s3_4_c12_c13_5");
        $f!(14, "s3_4_c12_c13_6");
        $f!(15, "s3_4_c12_c13_7");
    };
}

fn vtr() -> Vtr {
    Vtr::decode(rd!("s3_4_c12_c11_1"))
}

/// What the exit path needs from the entry: how many LRs were loaded, and the host's
/// ICC_SRE_EL2.
pub struct Loaded {
    lrs: usize,
    host_sre: u64,
}

/// Loads the guest's virtual CPU interface; the caller issues the ISB.
pub fn load(s: &VgicCpuIf) -> Loaded {
    let v = vtr();
    let used = (s.used_lrs as usize).min(v.list_regs).min(MAX_LRS);
    // Every implemented LR is written: the ones the host did not fill are cleared, so
    // nothing of an earlier run (or another VM) is left in them.
    macro_rules! load_lr {
        ($n:literal, $enc:literal) => {
            if $n < v.list_regs {
                wr!($enc, if $n < used { s.lr[$n] } else { 0 });
            }
        };
    }
    each_lr!(load_lr);
    wr!("s3_4_c12_c8_0", s.ap0r[0]);
    wr!("s3_4_c12_c9_0", s.ap1r[0]);
    if v.apr_regs > 1 {
        wr!("s3_4_c12_c8_1", s.ap0r[1]);
        wr!("s3_4_c12_c9_1", s.ap1r[1]);
    }
    if v.apr_regs > 2 {
        wr!("s3_4_c12_c8_2", s.ap0r[2]);
        wr!("s3_4_c12_c9_2", s.ap1r[2]);
        wr!("s3_4_c12_c8_3", s.ap0r[3]);
        wr!("s3_4_c12_c9_3", s.ap1r[3]);
    }
    wr!("s3_4_c12_c11_7", s.vmcr);
    wr!("s3_4_c12_c11_0", guest_ich_hcr(s.hcr));
    let host_sre = rd!("s3_4_c12_c9_5");
    wr!("s3_4_c12_c9_5", host_sre & !ICC_SRE_EL2_ENABLE);
    Loaded {
        lrs: used,
        host_sre,
    }
}

/// Saves the guest's virtual CPU interface into `s` and turns it off; the caller
/// issues the ISB.
pub fn save(s: &mut VgicCpuIf, l: &Loaded) {
    let v = vtr();
    macro_rules! save_lr {
        ($n:literal, $enc:literal) => {
            if $n < l.lrs {
                s.lr[$n] = rd!($enc);
            }
        };
    }
    each_lr!(save_lr);
    s.ap0r[0] = rd!("s3_4_c12_c8_0");
    s.ap1r[0] = rd!("s3_4_c12_c9_0");
    if v.apr_regs > 1 {
        s.ap0r[1] = rd!("s3_4_c12_c8_1");
        s.ap1r[1] = rd!("s3_4_c12_c9_1");
    }
    if v.apr_regs > 2 {
        s.ap0r[2] = rd!("s3_4_c12_c8_2");
        s.ap1r[2] = rd!("s3_4_c12_c9_2");
        s.ap0r[3] = rd!("s3_4_c12_c8_3");
        s.ap1r[3] = rd!("s3_4_c12_c9_3");
    }
    s.vmcr = rd!("s3_4_c12_c11_7");
    s.misr = rd!("s3_4_c12_c11_2");
    s.elrsr = rd!("s3_4_c12_c11_5");
    s.hcr = rd!("s3_4_c12_c11_0");
    s.nr_lrs = v.list_regs as u64;
    // Off while the host runs: no maintenance interrupt, no virtual interrupt signalled.
    wr!("s3_4_c12_c11_0", 0);
    wr!("s3_4_c12_c9_5", l.host_sre);
}
