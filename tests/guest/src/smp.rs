//! The multi-CPU PSCI checks: CPU_ON of every other CPU (which runs a small check of
//! its entry state and calls CPU_OFF), AFFINITY_INFO before and after, CPU_ON of a CPU
//! that is on (ALREADY_ON), CPU_ON and AFFINITY_INFO of an MPIDR that names no CPU
//! (INVALID_PARAMETERS), and, with three or more CPUs, the CPU_ON race.
//!
//! The race: the boot CPU starts a "racer" CPU; both spin on one flag and then call
//! CPU_ON for the same OFF target (one round per remaining CPU, alternating which side
//! is released first). PSCI allows exactly one SUCCESS; the other call must get
//! ALREADY_ON, as KVM answers it (PSCI would also allow ON_PENDING, but code written
//! against KVM accepts only these two). The target records the context id it was started with (it must be the
//! winner's) and how often it entered (once). It stays on until both answers are in, so
//! a late loser cannot find it OFF again and legitimately start it a second time.
//!
//! Bare QEMU 7.2's built-in PSCI does not serialise CPU_ON (it has no ON_PENDING
//! state): now and then both calls return SUCCESS and the last one's context id wins.
//! PSCI forbids that, so under our hypervisor it is a failure; without the hypervisor
//! channel (see `psci::hypervisor_channel`) it is printed as a DEVIATION and counted
//! apart from the failures.
//!
//! Each CPU started gets a context id `role << 16 | caller slot << 8 | stack slot`; the
//! entry code takes its stack from the low byte. The boot CPU always owns stack slot 0.

use crate::arch::{self, wait_until};
use crate::boot::{self, MAX_CPUS};
use crate::irq;
use crate::platform::Platform;
use crate::smccc::{call, Ret, ALREADY_ON, INVALID_PARAMETERS, SUCCESS};
use core::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering::SeqCst};
use smccc::psci::{PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_64};

/// AFFINITY_INFO: the CPU is on.
const AFF_ON: i64 = 0;
/// AFFINITY_INFO: the CPU is off.
const AFF_OFF: i64 = 1;
/// An MPIDR with every affinity field at 255: well-formed, but no CPU has it.
const NO_SUCH_MPIDR: u64 = 0xff_00ff_ffff;
/// Seconds to wait for another CPU before calling it a failure.
const TIMEOUT_S: u64 = 10;
/// "No answer yet" in [`Slot::result`].
const NO_RESULT: i64 = i64::MIN;

const ROLE_PLAIN: u64 = 0;
const ROLE_RACER: u64 = 1;
const ROLE_TARGET: u64 = 2;

const fn context(role: u64, caller_slot: usize, slot: usize) -> u64 {
    role << 16 | (caller_slot as u64) << 8 | slot as u64
}

/// What one started CPU and the boot CPU tell each other.
struct Slot {
    /// MPIDR affinity the CPU must have.
    mpidr: AtomicU64,
    /// Its index in the DTB (for messages).
    dtb_index: AtomicU32,
    /// It reached Rust.
    arrived: AtomicBool,
    /// A racer is about to make its CPU_ON call.
    calling: AtomicBool,
    /// The boot CPU lets it finish.
    release: AtomicBool,
    /// It is about to call CPU_OFF.
    done: AtomicBool,
    /// Its GIC CPU interface is set up and IRQs are unmasked (plain role).
    irq_ready: AtomicBool,
    /// Times it entered.
    entries: AtomicU32,
    /// The context id it received in x0.
    context: AtomicU64,
    /// A racer's CPU_ON answer.
    result: AtomicI64,
}

impl Slot {
    const fn new() -> Self {
        Slot {
            mpidr: AtomicU64::new(0),
            dtb_index: AtomicU32::new(0),
            arrived: AtomicBool::new(false),
            calling: AtomicBool::new(false),
            release: AtomicBool::new(false),
            done: AtomicBool::new(false),
            irq_ready: AtomicBool::new(false),
            entries: AtomicU32::new(0),
            context: AtomicU64::new(0),
            result: AtomicI64::new(NO_RESULT),
        }
    }

    fn reset(&self, mpidr: u64, dtb_index: usize) {
        self.mpidr.store(mpidr, SeqCst);
        self.dtb_index.store(dtb_index as u32, SeqCst);
        self.arrived.store(false, SeqCst);
        self.calling.store(false, SeqCst);
        self.release.store(false, SeqCst);
        self.done.store(false, SeqCst);
        self.irq_ready.store(false, SeqCst);
        self.entries.store(0, SeqCst);
        self.context.store(0, SeqCst);
        self.result.store(NO_RESULT, SeqCst);
    }
}

static SLOTS: [Slot; MAX_CPUS] = [const { Slot::new() }; MAX_CPUS];
/// The racers start when this is set.
static GO: AtomicBool = AtomicBool::new(false);
/// The race's target MPIDR and the context id the racer passes.
static RACE_TARGET: AtomicU64 = AtomicU64::new(0);
static RACE_CONTEXT: AtomicU64 = AtomicU64::new(0);

fn cpu_on(mpidr: u64, ctx: u64) -> i64 {
    call(PSCI_CPU_ON_64, mpidr, boot::secondary_entry(), ctx)
}

fn affinity_info(mpidr: u64) -> i64 {
    call(PSCI_AFFINITY_INFO_64, mpidr, 0, 0)
}

fn aff_name(r: i64) -> &'static str {
    match r {
        0 => "ON",
        1 => "OFF",
        2 => "ON_PENDING",
        _ => crate::smccc::ret_name(r),
    }
}

/// The stack slot of the CPU at DTB index `i` when the boot CPU is at `me`: the boot
/// CPU has slot 0, so it swaps with DTB index 0.
fn slot_of(i: usize, me: usize) -> usize {
    if i == me {
        0
    } else if i == 0 {
        me
    } else {
        i
    }
}

/// Runs the checks on the boot CPU.
pub fn run(p: &Platform) {
    let Some(me) = p.my_index() else {
        crate::check!(
            false,
            "smp: the boot CPU (mpidr={:#x}) is not among the DTB's CPUs",
            arch::my_affinity()
        );
        return;
    };
    let my_mpidr = p.cpus[me];
    let r = cpu_on(my_mpidr, context(ROLE_PLAIN, 0, 0));
    crate::check!(
        r == ALREADY_ON,
        "psci: CPU_ON cpu{me} (the caller itself) -> {} (want ALREADY_ON)",
        Ret(r)
    );
    if !p.cpus[..p.ncpus].contains(&NO_SUCH_MPIDR) {
        let r = cpu_on(NO_SUCH_MPIDR, context(ROLE_PLAIN, 0, 1));
        crate::check!(
            r == INVALID_PARAMETERS,
            "psci: CPU_ON mpidr={NO_SUCH_MPIDR:#x} (no such CPU) -> {} (want INVALID_PARAMETERS)",
            Ret(r)
        );
        let r = affinity_info(NO_SUCH_MPIDR);
        crate::check!(
            r == INVALID_PARAMETERS,
            "psci: AFFINITY_INFO mpidr={NO_SUCH_MPIDR:#x} (no such CPU) -> {} (want INVALID_PARAMETERS)",
            Ret(r)
        );
    }
    let r = affinity_info(my_mpidr);
    crate::check!(
        r == AFF_ON,
        "psci: AFFINITY_INFO cpu{me} (the caller itself) -> {} (want ON)",
        aff_name(r)
    );
    for i in (0..p.ncpus).filter(|&i| i != me) {
        start_and_stop(p, me, i);
    }
    if p.ncpus >= 3 {
        let racer = (0..p.ncpus).find(|&i| i != me).unwrap_or(0);
        let targets = (0..p.ncpus).filter(|&i| i != me && i != racer);
        for (round, target) in targets.enumerate() {
            race(p, me, racer, target, round % 2 == 1);
        }
    } else {
        crate::println!(
            "smp: CPU_ON race skipped: needs 3 CPUs, the DTB lists {}",
            p.ncpus
        );
    }
}

/// AFFINITY_INFO → OFF, CPU_ON → SUCCESS, the CPU arrives, AFFINITY_INFO → ON, a
/// second CPU_ON → ALREADY_ON, the CPU checks itself and turns off, AFFINITY_INFO → OFF.
fn start_and_stop(p: &Platform, me: usize, i: usize) {
    let mpidr = p.cpus[i];
    let slot = slot_of(i, me);
    let s = &SLOTS[slot];
    s.reset(mpidr, i);
    let r = affinity_info(mpidr);
    crate::check!(
        r == AFF_OFF,
        "psci: AFFINITY_INFO cpu{i} before CPU_ON -> {} (want OFF)",
        aff_name(r)
    );
    let ctx = context(ROLE_PLAIN, 0, slot);
    let r = cpu_on(mpidr, ctx);
    if !crate::check!(
        r == SUCCESS,
        "psci: CPU_ON cpu{i} mpidr={mpidr:#x} context={ctx:#x} -> {}",
        Ret(r)
    ) {
        return;
    }
    if !crate::check!(
        wait_until(TIMEOUT_S, || s.arrived.load(SeqCst)),
        "smp: cpu{i} arrived"
    ) {
        return;
    }
    let r = affinity_info(mpidr);
    crate::check!(
        r == AFF_ON,
        "psci: AFFINITY_INFO cpu{i} while running -> {} (want ON)",
        aff_name(r)
    );
    let r = cpu_on(mpidr, ctx);
    crate::check!(
        r == ALREADY_ON,
        "psci: CPU_ON cpu{i} again while it runs -> {} (want ALREADY_ON)",
        Ret(r)
    );
    ipi_round_trip(me, p.cpus[me], i, mpidr, s);
    s.release.store(true, SeqCst);
    crate::check!(
        wait_until(TIMEOUT_S, || s.done.load(SeqCst)),
        "smp: cpu{i} finished its check"
    );
    wait_off(i, mpidr);
}

/// An SGI from this CPU to cpu `i`, which answers with one back (from its IRQ
/// handler): both must arrive.
fn ipi_round_trip(me: usize, my_mpidr: u64, i: usize, mpidr: u64, s: &Slot) {
    if !crate::check!(
        wait_until(TIMEOUT_S, || s.irq_ready.load(SeqCst)),
        "irq: cpu{i} set up its GIC CPU interface"
    ) {
        return;
    }
    let (theirs, mine) = (irq::ipis(mpidr), irq::ipis(my_mpidr));
    irq::reply_to(my_mpidr);
    irq::unmask_irqs();
    irq::send_sgi(irq::SGI_IPI, mpidr);
    let ok = wait_until(TIMEOUT_S, || {
        irq::ipis(mpidr) > theirs && irq::ipis(my_mpidr) > mine
    });
    irq::mask_irqs();
    crate::check!(
        ok,
        "irq: IPI cpu{me} -> cpu{i}: received {}, answer received {}",
        irq::ipis(mpidr) - theirs,
        irq::ipis(my_mpidr) - mine
    );
}

/// Polls AFFINITY_INFO until the CPU is OFF (CPU_OFF completes asynchronously).
fn wait_off(i: usize, mpidr: u64) {
    let mut last = AFF_ON;
    let off = wait_until(TIMEOUT_S, || {
        last = affinity_info(mpidr);
        last == AFF_OFF
    });
    crate::check!(
        off,
        "psci: AFFINITY_INFO cpu{i} after its CPU_OFF -> {} (want OFF)",
        aff_name(last)
    );
}

/// The boot CPU and `racer` call CPU_ON for `target` at the same time. With
/// `racer_first` the boot CPU waits until the racer is about to call, so both orders
/// get exercised.
fn race(p: &Platform, me: usize, racer: usize, target: usize, racer_first: bool) {
    let (rs, ts) = (slot_of(racer, me), slot_of(target, me));
    let (r_mpidr, t_mpidr) = (p.cpus[racer], p.cpus[target]);
    SLOTS[rs].reset(r_mpidr, racer);
    SLOTS[ts].reset(t_mpidr, target);
    GO.store(false, SeqCst);
    let theirs_ctx = context(ROLE_TARGET, rs, ts);
    let mine_ctx = context(ROLE_TARGET, 0, ts);
    RACE_TARGET.store(t_mpidr, SeqCst);
    RACE_CONTEXT.store(theirs_ctx, SeqCst);
    let r = cpu_on(r_mpidr, context(ROLE_RACER, 0, rs));
    if !crate::check!(
        r == SUCCESS,
        "smp: race for cpu{target}: CPU_ON racer cpu{racer} -> {}",
        Ret(r)
    ) {
        return;
    }
    if !crate::check!(
        wait_until(TIMEOUT_S, || SLOTS[rs].arrived.load(SeqCst)),
        "smp: race for cpu{target}: racer cpu{racer} arrived"
    ) {
        return;
    }
    GO.store(true, SeqCst);
    if racer_first {
        wait_until(TIMEOUT_S, || SLOTS[rs].calling.load(SeqCst));
    }
    let mine = cpu_on(t_mpidr, mine_ctx);
    let answered = wait_until(TIMEOUT_S, || SLOTS[rs].result.load(SeqCst) != NO_RESULT);
    let theirs = SLOTS[rs].result.load(SeqCst);
    // Both answers are in: the target may finish now.
    SLOTS[ts].release.store(true, SeqCst);
    if mine == SUCCESS || theirs == SUCCESS {
        wait_until(TIMEOUT_S, || SLOTS[ts].done.load(SeqCst));
    }
    wait_until(TIMEOUT_S, || SLOTS[rs].done.load(SeqCst));
    let entries = SLOTS[ts].entries.load(SeqCst);
    let got_ctx = SLOTS[ts].context.load(SeqCst);
    let outcome = RaceOutcome {
        mine,
        theirs: if answered { theirs } else { NO_RESULT },
        mine_ctx,
        theirs_ctx,
        entries,
        got_ctx,
    };
    let what = format_args!(
        "smp: race for cpu{target} ({} first): cpu{me} -> {}, cpu{racer} -> {}; cpu{target} \
         entered {entries} time(s) with context {got_ctx:#x}",
        if racer_first { "racer" } else { "boot CPU" },
        Ret(mine),
        Ret(outcome.theirs),
    );
    match outcome.verdict() {
        Verdict::Ok => {
            crate::check::record(true, what);
        }
        Verdict::BothSucceeded if !crate::psci::hypervisor_channel() => {
            crate::check::deviation(format_args!(
                "{what}: both calls returned SUCCESS, which PSCI forbids (one must get \
                 ALREADY_ON); tolerated only without our hypervisor (bare \
                 firmware, e.g. QEMU 7.2's built-in PSCI, which has no ON_PENDING state)"
            ));
        }
        v => {
            crate::check::record(false, format_args!("{what}: {}", v.why()));
        }
    }
    wait_off(racer, r_mpidr);
    wait_off(target, t_mpidr);
}

/// The two answers of a CPU_ON race and what the target saw.
struct RaceOutcome {
    mine: i64,
    theirs: i64,
    mine_ctx: u64,
    theirs_ctx: u64,
    entries: u32,
    got_ctx: u64,
}

/// What a race outcome means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// One SUCCESS, the other ALREADY_ON, the target started once with
    /// the winner's context id.
    Ok,
    /// Both SUCCESS (the target started once or twice, with either context id).
    BothSucceeded,
    /// No SUCCESS.
    NoneSucceeded,
    /// The loser got an answer PSCI does not allow for this race.
    WrongLoserAnswer,
    /// The target did not start exactly once with the winner's context id.
    WrongStart,
}

impl Verdict {
    fn why(self) -> &'static str {
        match self {
            Verdict::Ok => "as PSCI requires",
            Verdict::BothSucceeded => "both calls returned SUCCESS",
            Verdict::NoneSucceeded => "no call returned SUCCESS",
            Verdict::WrongLoserAnswer => "the losing call must get ALREADY_ON",
            Verdict::WrongStart => "the target must start once, with the winner's context id",
        }
    }
}

impl RaceOutcome {
    fn verdict(&self) -> Verdict {
        let (winner_ctx, loser) = match (self.mine == SUCCESS, self.theirs == SUCCESS) {
            (true, true) => {
                let ctx_ok = self.got_ctx == self.mine_ctx || self.got_ctx == self.theirs_ctx;
                return if ctx_ok && self.entries >= 1 {
                    Verdict::BothSucceeded
                } else {
                    Verdict::WrongStart
                };
            }
            (false, false) => return Verdict::NoneSucceeded,
            (true, false) => (self.mine_ctx, self.theirs),
            (false, true) => (self.theirs_ctx, self.mine),
        };
        // KVM and QEMU's own PSCI both answer ALREADY_ON; code written against KVM
        // accepts nothing else.
        if loser != ALREADY_ON {
            Verdict::WrongLoserAnswer
        } else if self.entries != 1 || self.got_ctx != winner_ctx {
            Verdict::WrongStart
        } else {
            Verdict::Ok
        }
    }
}

/// Rust entry of a CPU started by CPU_ON (from `boot.rs`, on its own stack).
pub extern "C" fn secondary_main(ctx: u64) -> ! {
    // Read before anything can change it: the entry state PSCI promises.
    let daif = arch::daif();
    crate::exceptions::install();
    let slot = (ctx & 0xff) as usize;
    let role = (ctx >> 16) & 0xff;
    let s = &SLOTS[slot];
    s.entries.fetch_add(1, SeqCst);
    s.context.store(ctx, SeqCst);
    match role {
        ROLE_RACER => {
            s.arrived.store(true, SeqCst);
            if wait_until(TIMEOUT_S, || GO.load(SeqCst)) {
                let (target, ctx) = (RACE_TARGET.load(SeqCst), RACE_CONTEXT.load(SeqCst));
                s.calling.store(true, SeqCst);
                let r = cpu_on(target, ctx);
                s.result.store(r, SeqCst);
            }
            self_check(s, slot, ctx, daif);
        }
        ROLE_TARGET => {
            s.arrived.store(true, SeqCst);
            self_check(s, slot, ctx, daif);
            wait_until(TIMEOUT_S, || s.release.load(SeqCst));
        }
        _ => {
            s.arrived.store(true, SeqCst);
            if irq::init_this_cpu(1 << irq::SGI_IPI, false).is_some() {
                irq::unmask_irqs();
                s.irq_ready.store(true, SeqCst);
            }
            wait_until(TIMEOUT_S, || s.release.load(SeqCst));
            irq::mask_irqs();
            self_check(s, slot, ctx, daif);
        }
    }
    s.done.store(true, SeqCst);
    let r = call(PSCI_CPU_OFF, 0, 0, 0);
    crate::check!(false, "psci: CPU_OFF returned {}", Ret(r));
    arch::halt()
}

/// The entry state PSCI CPU_ON promises (EL1, MMU off, DAIF masked, the right MPIDR
/// and context id), and that this CPU computes with its own stack.
fn self_check(s: &Slot, slot: usize, ctx: u64, daif: u64) {
    let want = s.mpidr.load(SeqCst);
    let mpidr = arch::my_affinity();
    let el = arch::current_el();
    let mmu_on = arch::sctlr() & arch::SCTLR_M != 0;
    let mut buf = [0u64; 64];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = core::hint::black_box(i as u64 + 1);
    }
    let sum: u64 = buf.iter().sum();
    let sp = &buf as *const _ as u64;
    crate::check!(
        mpidr == want
            && el == 1
            && !mmu_on
            && daif == arch::DAIF_ALL
            && ctx & 0xff == slot as u64
            && sum == 64 * 65 / 2,
        "smp: cpu{} mpidr={mpidr:#x} (want {want:#x}) context={ctx:#x}: EL{el}, MMU {}, \
         DAIF={:#x}, stack {sp:#x}, sum 1..64 = {sum}",
        s.dtb_index.load(SeqCst),
        if mmu_on { "on" } else { "off" },
        daif >> 6
    );
}
