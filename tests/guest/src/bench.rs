//! The benchmark hook (issue 4 item 6), run only when the boot arguments contain
//! `bench` or `bench=<n>`: the round trip of `n` NULL_HVC calls, `n` reads of the
//! PL011 flag register (trapped and emulated under our VMM) and an empty loop of `n`
//! iterations, each timed with CNTVCT_EL0 and printed as
//! `bench: <name> iterations=<n> cycles=<ticks>`.
//!
//! Under `-icount shift=0` QEMU advances its virtual clock by 2^0 ns per guest
//! instruction, and CNTVCT counts that clock at CNTFRQ_EL0 Hz, so ticks × 10^9 /
//! CNTFRQ is the instruction count (whichever CPU executed them: guest, hyp or host).
//! The `bench: counter=...` line gives the frequency for that conversion.

use crate::arch::{cntfrq, counter};
use crate::smccc::call;
use core::arch::asm;
use shared::guest_abi::{
    BENCH_EMPTY_LOOP, BENCH_MMIO_READ, BENCH_NULL_HVC, BENCH_PREFIX, NULL_HVC,
};

/// Runs the three benchmarks with `n` iterations each.
pub fn run(n: u64) {
    crate::println!("{BENCH_PREFIX}counter=cntvct frequency={}", cntfrq());
    let t = timed(|| {
        for _ in 0..n {
            core::hint::black_box(call(NULL_HVC, 0, 0, 0));
        }
    });
    line(BENCH_NULL_HVC, n, t);
    let t = timed(|| {
        for _ in 0..n {
            core::hint::black_box(crate::console::read_flags());
        }
    });
    line(BENCH_MMIO_READ, n, t);
    let t = timed(|| empty_loop(n));
    line(BENCH_EMPTY_LOOP, n, t);
}

fn timed(f: impl FnOnce()) -> u64 {
    let start = counter();
    f();
    counter().wrapping_sub(start)
}

fn line(name: &str, n: u64, ticks: u64) {
    crate::println!("{BENCH_PREFIX}{name} iterations={n} cycles={ticks}");
}

/// Two instructions per iteration, in assembly so the compiler cannot remove it.
fn empty_loop(n: u64) {
    if n == 0 {
        return;
    }
    // SAFETY: counts a register down to zero; no memory access.
    unsafe {
        asm!(
            "1: subs {n}, {n}, #1",
            "b.ne 1b",
            n = inout(reg) n => _,
            options(nomem, nostack)
        )
    };
}
