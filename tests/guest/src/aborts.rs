//! Injected synchronous external aborts: the guest loads from, stores to and branches
//! to guest-physical addresses that are neither RAM nor a device, and checks that each
//! access comes back as the abort real hardware would raise.
//!
//! Addresses: [`HOLE`], a gap in QEMU virt's map that our VMM leaves empty too, and the
//! first byte after the DTB's RAM range. With the MMU off both are accessed as Device
//! memory, so nothing is speculated or cached.
//!
//! Checked for a data abort: vector = synchronous from the current EL; ESR_EL1.EC =
//! 0x25; DFSC = 0x10 (synchronous external abort, not on a table walk); WnR matches
//! the access; FAR_EL1 = the address unless ESR.FnV says FAR is not valid; ELR_EL1 =
//! the faulting instruction; the load's destination register kept its old value.
//! For an instruction abort: EC = 0x21, IFSC = 0x10, ELR_EL1 = the address, FAR_EL1 =
//! the address unless FnV. The guest then carries on: past the load or store
//! (ELR += 4), or back to the caller of the `blr` (ELR = x30).

use crate::exceptions::{self, Resume, Taken};
use core::arch::asm;

/// A hole in QEMU virt's physical map (between the virtio-mmio transports ending at
/// 0x0a00_4000 and the platform bus at 0x0c00_0000); no device in our VMM either.
pub const HOLE: u64 = 0x0b00_0000;

const EC_DABT_CUR: u64 = 0x25;
const EC_IABT_CUR: u64 = 0x21;
const FSC_SEA: u64 = 0x10;
const ESR_FNV: u64 = 1 << 10;
const ESR_WNR: u64 = 1 << 6;
/// What the load's destination holds before the load (it must still hold it after).
const SENTINEL: u64 = 0x5e47_1ae1;

/// Runs the abort tests; `ram_end` is the first byte after the RAM range.
pub fn run(ram_end: u64) {
    load(HOLE, "hole");
    load(ram_end, "above RAM");
    store(HOLE, "hole");
    fetch(HOLE, "hole");
}

fn ec(esr: u64) -> u64 {
    (esr >> 26) & 0x3f
}

fn fsc(esr: u64) -> u64 {
    esr & 0x3f
}

fn far_ok(t: &Taken, addr: u64) -> bool {
    t.esr & ESR_FNV != 0 || t.far == addr
}

/// Checks a data abort recorded for the access at `pc` (`kept`: the load's register
/// kept its old value, always true for a store).
fn data_abort(access: &str, name: &str, addr: u64, t: Option<Taken>, pc: u64, kept: bool) {
    let write = access == "store";
    let Some(t) = t else {
        crate::check!(
            false,
            "abort: data {access} {name} {addr:#x}: no exception taken"
        );
        return;
    };
    let ok = t.vector == 4
        && ec(t.esr) == EC_DABT_CUR
        && fsc(t.esr) == FSC_SEA
        && (t.esr & ESR_WNR != 0) == write
        && far_ok(&t, addr)
        && t.elr == pc
        && kept;
    crate::check!(
        ok,
        "abort: data {access} {name} {addr:#x}: vector={} ESR_EL1={:#x} EC={:#x} DFSC={:#x} WnR={} \
         FnV={} FAR_EL1={:#x} ELR_EL1=insn+{:#x} skipped",
        t.vector,
        t.esr,
        ec(t.esr),
        fsc(t.esr),
        u8::from(t.esr & ESR_WNR != 0),
        u8::from(t.esr & ESR_FNV != 0),
        t.far,
        t.elr.wrapping_sub(pc)
    );
}

/// Loads from `addr`; expects the abort and the load skipped.
fn load(addr: u64, name: &str) {
    let value: u64;
    let pc: u64;
    exceptions::arm(Resume::Skip);
    // SAFETY: the access is expected to abort; the armed handler skips the `ldr`, so
    // `value` keeps SENTINEL. Nothing else is touched.
    unsafe {
        asm!(
            "mov {v}, #{s_lo}",
            "movk {v}, #{s_hi}, lsl #16",
            "adr {pc}, 1f",
            "1: ldr {v}, [{a}]",
            v = out(reg) value,
            pc = out(reg) pc,
            a = in(reg) addr,
            s_lo = const SENTINEL & 0xffff,
            s_hi = const (SENTINEL >> 16) & 0xffff,
            options(nostack)
        )
    };
    let taken = exceptions::disarm();
    data_abort("load", name, addr, taken, pc, value == SENTINEL);
    if value != SENTINEL && taken.is_some() {
        crate::println!("abort: the skipped load still wrote {value:#x}");
    }
}

/// Stores to `addr`; expects the abort and the store skipped.
fn store(addr: u64, name: &str) {
    let pc: u64;
    exceptions::arm(Resume::Skip);
    // SAFETY: the store is expected to abort and be skipped; it targets no memory.
    unsafe {
        asm!(
            "adr {pc}, 1f",
            "1: str {v}, [{a}]",
            pc = out(reg) pc,
            a = in(reg) addr,
            v = in(reg) SENTINEL,
            options(nostack)
        )
    };
    let taken = exceptions::disarm();
    data_abort("store", name, addr, taken, pc, true);
}

/// Branches to `addr` with `blr`; expects an instruction abort, resumed at x30.
fn fetch(addr: u64, name: &str) {
    exceptions::arm(Resume::LinkRegister);
    // SAFETY: the fetch is expected to abort; the handler returns to x30 (set by
    // `blr`), i.e. straight after the `blr`. All caller-saved registers are declared
    // clobbered in case the handler's resume lands in unexpected code.
    unsafe {
        asm!(
            "blr {a}",
            a = in(reg) addr,
            clobber_abi("C"),
        )
    };
    let Some(t) = exceptions::disarm() else {
        crate::check!(
            false,
            "abort: instruction fetch {name} {addr:#x}: no exception taken"
        );
        return;
    };
    let ok = t.vector == 4
        && ec(t.esr) == EC_IABT_CUR
        && fsc(t.esr) == FSC_SEA
        && far_ok(&t, addr)
        && t.elr == addr;
    crate::check!(
        ok,
        "abort: instruction fetch {name} {addr:#x}: vector={} ESR_EL1={:#x} EC={:#x} \
         IFSC={:#x} FnV={} FAR_EL1={:#x} ELR_EL1={:#x} returned via x30",
        t.vector,
        t.esr,
        ec(t.esr),
        fsc(t.esr),
        u8::from(t.esr & ESR_FNV != 0),
        t.far,
        t.elr
    );
}
