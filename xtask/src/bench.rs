//! `cargo xtask bench`: reading the benchmark lines of a run under `-icount shift=0` and
//! turning counter ticks into instructions per operation.
//!
//! Under `-icount shift=0` QEMU advances its virtual clock by 2^0 ns for every
//! instruction it executes, on any CPU at any exception level (guest, hyp and host all
//! count), and the generic timer counts that clock at CNTFRQ. So
//! `instructions = ticks × 10^9 / CNTFRQ`: 16 instructions per tick at QEMU 7.2's
//! 62.5 MHz. The guest prints its frequency (`bench: counter=cntvct frequency=<Hz>`), and
//! the empty loop (two instructions per iteration) checks the conversion: it must come out
//! at 2 instructions per iteration.
//!
//! The lines (`shared::guest_abi`):
//!
//! ```text
//! guest 0: bench: counter=cntvct frequency=62500000
//! guest 0: bench: null_hvc iterations=<n> cycles=<ticks>
//! guest 0: bench: mmio_read iterations=<n> cycles=<ticks>
//! guest 0: bench: empty_loop iterations=<n> cycles=<ticks>
//! host: bench: host_ping iterations=<n> cycles=<ticks>
//! ```

use shared::guest_abi::{
    parse_bench_line, BENCH_EMPTY_LOOP, BENCH_HOST_PING, BENCH_MMIO_READ, BENCH_NULL_HVC,
};
use std::fmt::Write;

/// Iterations of each benchmark by default.
pub const DEFAULT_ITERATIONS: u64 = 10_000;

/// The guest time limit `cargo xtask qemu` sets for a QEMU timeout of `qemu_secs`:
/// 20 s less (the host's own boot takes part of it), but at least half.
pub fn default_guest_timeout(qemu_secs: u64) -> u32 {
    let t = qemu_secs.saturating_sub(20).max(qemu_secs / 2);
    u32::try_from(t).unwrap_or(u32::MAX)
}

/// One measured operation.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// Benchmark name.
    pub name: String,
    /// What it measures.
    pub what: &'static str,
    /// Operations.
    pub iterations: u64,
    /// Counter ticks for all of them.
    pub ticks: u64,
    /// Instructions per operation (ticks × 10^9 / frequency / iterations).
    pub per_op: f64,
}

/// Every row of a run.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    /// The counter frequency the guest reported.
    pub frequency: u64,
    /// Instructions per counter tick (10^9 / frequency).
    pub per_tick: f64,
    /// The rows, in the order of [`ORDER`].
    pub rows: Vec<Row>,
}

/// The benchmarks, in table order, with what each measures.
pub const ORDER: [(&str, &str); 4] = [
    (
        BENCH_NULL_HVC,
        "guest HVC handled by the host VMM (guest → hyp → host → hyp → guest)",
    ),
    (
        BENCH_MMIO_READ,
        "guest read of the emulated PL011 FR (stage-2 fault → host → back)",
    ),
    (BENCH_HOST_PING, "host → hyp null hypercall (Ping) and back"),
    (
        BENCH_EMPTY_LOOP,
        "empty loop iteration (subs + b.ne): the baseline",
    ),
];

/// Reads the benchmark lines of a run.
pub fn collect(lines: &[String]) -> Result<Table, String> {
    let frequency = lines
        .iter()
        .find_map(|l| {
            let rest = &l[l.find("bench: counter=cntvct frequency=")? + 32..];
            rest.trim().parse::<u64>().ok()
        })
        .filter(|&f| f > 0)
        .ok_or(
            "no `bench: counter=cntvct frequency=<Hz>` line: did the guest run its benchmarks?",
        )?;
    let per_tick = 1e9 / frequency as f64;
    let mut rows = Vec::new();
    for (name, what) in ORDER {
        let b = lines
            .iter()
            .rev()
            .filter_map(|l| parse_bench_line(l))
            .find(|b| b.name == name)
            .ok_or_else(|| format!("no `bench: {name} …` line"))?;
        if b.iterations == 0 {
            return Err(format!("bench: {name} ran 0 iterations"));
        }
        rows.push(Row {
            name: name.to_string(),
            what,
            iterations: b.iterations,
            ticks: b.cycles,
            per_op: b.cycles as f64 * per_tick / b.iterations as f64,
        });
    }
    Ok(Table {
        frequency,
        per_tick,
        rows,
    })
}

/// The table for the terminal.
pub fn render_text(t: &Table) -> String {
    let mut s = format!(
        "counter {} Hz: {} instructions per tick under -icount shift=0\n",
        t.frequency, t.per_tick
    );
    let _ = writeln!(
        s,
        "{:<12} {:>10} {:>12} {:>14}",
        "benchmark", "iterations", "ticks", "instr/op"
    );
    for r in &t.rows {
        let _ = writeln!(
            s,
            "{:<12} {:>10} {:>12} {:>14.1}",
            r.name, r.iterations, r.ticks, r.per_op
        );
    }
    s
}

/// The table as `docs/bench.md`.
pub fn render_markdown(t: &Table, cpu: &str, qemu_version: &str) -> String {
    let mut s = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        s,
        "Written by `cargo xtask bench` ({qemu_version}, `-cpu {cpu}`, one CPU, \
         `-icount shift=0`). Under `-icount shift=0` every executed instruction advances \
         QEMU's virtual clock by 1 ns, so counter ticks count instructions: the counter \
         runs at {} Hz, {} instructions per tick. Numbers are instructions per operation \
         (all exception levels together), not time; they are deterministic for a given \
         build and QEMU. The empty loop, two instructions per iteration, checks the \
         conversion.\n",
        t.frequency, t.per_tick
    );
    s.push_str("| operation | what | iterations | ticks | instructions / op |\n");
    s.push_str("| --- | --- | ---: | ---: | ---: |\n");
    for r in &t.rows {
        let _ = writeln!(
            s,
            "| `{}` | {} | {} | {} | {:.1} |",
            r.name, r.what, r.iterations, r.ticks, r.per_op
        );
    }
    s.push_str(
        "\nThe guest-side numbers include the guest's own loop and call overhead (a few \
         instructions); the host ping includes the host's loop. Run `cargo xtask bench` to \
         regenerate this file.\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Vec<String> {
        [
            "guest 0: bench: counter=cntvct frequency=62500000",
            "guest 0: bench: null_hvc iterations=1000 cycles=125000",
            "guest 0: bench: mmio_read iterations=1000 cycles=250000",
            "guest 0: bench: empty_loop iterations=1000 cycles=125",
            "host: bench: host_ping iterations=1000 cycles=25000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    #[test]
    fn ticks_become_instructions() {
        let t = collect(&lines()).unwrap();
        assert_eq!(t.frequency, 62_500_000);
        assert_eq!(t.per_tick, 16.0);
        let per = |n: &str| t.rows.iter().find(|r| r.name == n).unwrap().per_op;
        assert_eq!(per("null_hvc"), 2000.0);
        assert_eq!(per("mmio_read"), 4000.0);
        assert_eq!(per("host_ping"), 400.0);
        assert_eq!(per("empty_loop"), 2.0);
        let md = render_markdown(&t, "max", "QEMU 7.2");
        assert!(md.contains("| `null_hvc` |"));
        assert!(md.contains("| 2000.0 |"));
        assert!(render_text(&t).contains("host_ping"));
    }

    #[test]
    fn missing_lines_are_errors() {
        let mut l = lines();
        l.retain(|s| !s.contains("host_ping"));
        assert!(collect(&l).unwrap_err().contains("host_ping"));
        assert!(collect(&[]).unwrap_err().contains("frequency"));
    }

    #[test]
    fn guest_timeout_leaves_room_for_the_host() {
        assert_eq!(default_guest_timeout(60), 40);
        assert_eq!(default_guest_timeout(30), 15);
        assert_eq!(default_guest_timeout(0), 0);
    }
}
