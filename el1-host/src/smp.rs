//! Secondary CPUs: bring-up through PSCI CPU_ON, admission by the cap checks, and the
//! work loop every admitted secondary runs afterwards.
//!
//! # Bring-up
//!
//! [`start_secondaries`] starts the CPUs of the device tree one at a time. Each gets its
//! own stack and a [`SecondaryBoot`] block (cleaned to PoC, as it is read with the MMU off)
//! naming the final tables. Once it runs Rust at its KIMAGE VA it detects its caps on
//! itself ([`crate::cpufeature::secondary_detect`]), publishes its ID registers in its
//! [`CpuSlot`] and waits. The boot CPU hands the registers to the caller's `admit`
//! closure (which adds the CPU to the cap bring-up); an admitted CPU enters the work
//! loop and counts as online, a rejected one parks for good.
//!
//! # Cross-calls (boot CPU only)
//!
//! - [`on_each_cpu`]: runs `f(cpu_index)` on every online CPU, the caller included, and
//!   returns when all have finished.
//! - [`stop_machine`]: every other online CPU enters a rendezvous and spins on a plain
//!   flag; the caller runs its closure alone, sets the flag with release ordering, and
//!   each waiting CPU executes an ISB before it goes on (LINUX-FACTS §4.3). This is the
//!   window in which running text is patched.
//!
//! The work loop and the rendezvous contain no alternative site: they live in
//! `.text.nopatch`, where xtask refuses any site, and use only `core` atomics, `wfe`,
//! `sev`, `isb` and `spin_loop`, none of which is ever patched. So text that changes
//! under a waiting CPU is never text that CPU is executing.
//!
//! # Work on one CPU (any CPU)
//!
//! - [`start_on`]: hands `f(cpu_index)` to one other online CPU's mailbox and returns at
//!   once; the CPU runs it in its work loop (the VMM runs a vCPU this way, for as long
//!   as the vCPU lives). [`is_idle`] says when it has returned. A cross-call started
//!   meanwhile waits until that CPU's mailbox is free again.
//!
//! Work functions must not call [`on_each_cpu`] or [`stop_machine`] themselves (a nested
//! cross-call would wait for a CPU that is busy running the outer one); that is caught and
//! reported as a panic rather than a hang.

use crate::arch::{barrier, cache, head, sysreg};
use crate::println;
use alloc::alloc::{alloc, Layout};
use alloc::boxed::Box;
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use el1_host::bootinfo::{BootInfo, MPIDR_HWID_MASK};
use el1_host::layout::{KernelImage, LinearMap};
use shared::cpucaps::IdRegs;

/// Stack size of each secondary CPU.
const STACK_SIZE: usize = 64 * 1024;
/// How long to wait for one CPU to report in.
const TIMEOUT_SECS: u64 = 5;
/// Most CPUs the host handles; device-tree CPUs beyond this are reported and left off.
pub const MAX_CPUS: usize = 64;

/// What `secondary_entry` reads (with the MMU off): the layout is fixed by the assembly.
#[repr(C)]
pub struct SecondaryBoot {
    ttbr0: u64,
    ttbr1: u64,
    tcr: u64,
    mair: u64,
    sp: u64,
    entry: u64,
    arg: u64,
}

/// Where a CPU is in its life.
mod state {
    /// Not started (or not present).
    pub const OFF: u8 = 0;
    /// CPU_ON issued, not reported yet.
    pub const STARTING: u8 = 1;
    /// Running at its KIMAGE VA; its ID registers are published in its slot.
    pub const REPORTED: u8 = 2;
    /// Admitted: in the work loop (or, for the boot CPU, running the kernel).
    pub const ONLINE: u8 = 3;
    /// Refused by the cap checks: parked for good.
    pub const REJECTED: u8 = 4;
}

/// One CPU's shared state.
struct CpuSlot {
    /// MPIDR affinity (from the device tree), `u64::MAX` if the slot is unused.
    mpidr: AtomicU64,
    /// One of [`state`].
    state: AtomicU8,
    /// A posted `fn(usize)` as an address, 0 when there is none. The owner clears it when
    /// the function has returned.
    work: AtomicUsize,
    /// The CPU's raw ID registers, written by the CPU before it sets `REPORTED` (release)
    /// and read by the boot CPU after it sees `REPORTED` (acquire).
    regs: UnsafeCell<IdRegs>,
}

// SAFETY: `regs` is written only by its CPU before the release store of REPORTED and
// read only by the boot CPU after the acquire load that sees REPORTED (see `CpuSlot`);
// everything else is atomic.
unsafe impl Sync for CpuSlot {}

impl CpuSlot {
    const fn new() -> Self {
        Self {
            mpidr: AtomicU64::new(u64::MAX),
            state: AtomicU8::new(state::OFF),
            work: AtomicUsize::new(0),
            regs: UnsafeCell::new(IdRegs::ZERO),
        }
    }
}

static CPUS: [CpuSlot; MAX_CPUS] = [const { CpuSlot::new() }; MAX_CPUS];
/// Slots in use (device-tree CPUs, at most `MAX_CPUS`).
static NR_CPUS: AtomicUsize = AtomicUsize::new(0);
/// Set while a cross-call is in progress, to catch nesting.
static CROSS_CALL_BUSY: AtomicBool = AtomicBool::new(false);
/// The stop-machine release flag; the waiting CPUs spin on it.
static STOP_RELEASE: AtomicBool = AtomicBool::new(false);
/// CPUs that have entered the stop-machine rendezvous.
static STOP_ARRIVED: AtomicUsize = AtomicUsize::new(0);

/// The slot of CPU `index`, if there is one. The index comes from another CPU (the boot
/// block) or from a search over hardware values, so the bounds check is followed by a
/// speculation barrier.
fn slot(index: usize) -> Option<&'static CpuSlot> {
    let i = barrier::index_nospec(index, NR_CPUS.load(Ordering::Acquire).min(MAX_CPUS))?;
    CPUS.get(i)
}

/// Records the device tree's CPUs and marks the boot CPU online. Call once on the boot
/// CPU before anything else here.
pub fn init(info: &BootInfo) {
    let n = info.cpus.len().min(MAX_CPUS);
    if info.cpus.len() > MAX_CPUS {
        log::warn!(
            "smp: {} CPUs in the device tree, only the first {MAX_CPUS} are used",
            info.cpus.len()
        );
    }
    for (s, cpu) in CPUS.iter().zip(&info.cpus) {
        s.mpidr.store(cpu.mpidr, Ordering::Relaxed);
    }
    NR_CPUS.store(n, Ordering::Release);
    let me = sysreg::mpidr_el1() & MPIDR_HWID_MASK;
    match this_cpu_index().and_then(slot) {
        Some(s) => s.state.store(state::ONLINE, Ordering::Release),
        None => log::warn!("smp: boot CPU mpidr={me:#x} is not in the device tree"),
    }
}

/// Index (device-tree order) of the CPU this runs on, if it is one of the known CPUs.
pub fn this_cpu_index() -> Option<usize> {
    let me = sysreg::mpidr_el1() & MPIDR_HWID_MASK;
    let n = NR_CPUS.load(Ordering::Acquire).min(MAX_CPUS);
    CPUS[..n]
        .iter()
        .position(|s| s.mpidr.load(Ordering::Relaxed) == me)
}

/// Indices of the CPUs that are online now (the boot CPU included).
pub fn online_cpus() -> impl Iterator<Item = usize> {
    let n = NR_CPUS.load(Ordering::Acquire).min(MAX_CPUS);
    (0..n).filter(|&i| CPUS[i].state.load(Ordering::Acquire) == state::ONLINE)
}

/// Result of bringing the secondaries up.
pub struct SmpReport {
    /// CPUs in the device tree.
    pub present: usize,
    /// CPUs running (the boot CPU included).
    pub online: usize,
    /// CPUs that came up but were refused by the cap checks (parked).
    pub rejected: usize,
}

fn heap_va_to_pa(image: &KernelImage, linear: &LinearMap, va: u64) -> Option<u64> {
    image.va_to_pa(va).or_else(|| linear.va_to_pa(va).ok())
}

/// The page tables and image placement a secondary needs to turn its MMU on.
pub struct SecondaryTables<'a> {
    /// The kernel image.
    pub image: &'a KernelImage,
    /// The linear map (to find the PA of heap objects).
    pub linear: &'a LinearMap,
    /// TTBR0 (identity map of `.idmap.text`).
    pub ttbr0: u64,
    /// TTBR1 (the kernel half).
    pub ttbr1: u64,
}

/// Starts every secondary CPU and waits for each in turn. A CPU that reports in is
/// handed to `admit(index, raw_id_regs)`: `true` lets it into the work loop (online),
/// `false` parks it (rejected). A CPU that does not report within the timeout stays off.
pub fn start_secondaries(
    info: &BootInfo,
    t: &SecondaryTables<'_>,
    admit: &mut dyn FnMut(usize, &IdRegs) -> bool,
) -> SmpReport {
    let n = NR_CPUS.load(Ordering::Acquire);
    let mut report = SmpReport {
        present: info.cpus.len(),
        online: 0,
        rejected: 0,
    };
    let boot_index = this_cpu_index();
    let entry_va = head::symbols::secondary_entry as *const () as u64;
    let Some(entry_pa) = t.image.va_to_pa(entry_va) else {
        log::error!("smp: secondary entry is outside the image");
        report.online = online_cpus().count();
        return report;
    };
    let freq = sysreg::cntfrq_el0().max(1);
    for (index, s) in CPUS[..n].iter().enumerate() {
        if Some(index) == boot_index {
            continue;
        }
        let mpidr = s.mpidr.load(Ordering::Relaxed);
        let stack_layout = Layout::from_size_align(STACK_SIZE, 4096).expect("stack layout");
        // SAFETY: the layout has a non-zero size.
        let stack = unsafe { alloc(stack_layout) };
        if stack.is_null() {
            log::error!("smp: cpu{index}: no memory for its stack");
            continue;
        }
        let boot = Box::leak(Box::new(SecondaryBoot {
            ttbr0: t.ttbr0,
            ttbr1: t.ttbr1,
            tcr: sysreg::tcr_el1(),
            mair: sysreg::mair_el1(),
            sp: stack as u64 + STACK_SIZE as u64,
            entry: secondary_main as *const () as u64,
            arg: index as u64,
        }));
        let boot_va = boot as *const SecondaryBoot as u64;
        let Some(boot_pa) = heap_va_to_pa(t.image, t.linear, boot_va) else {
            log::error!("smp: cpu{index}: boot block {boot_va:#x} has no PA");
            continue;
        };
        cache::clean_to_poc(boot_va as usize, core::mem::size_of::<SecondaryBoot>());
        s.state.store(state::STARTING, Ordering::Release);
        match crate::psci::cpu_on(mpidr, entry_pa, boot_pa) {
            None => {
                s.state.store(state::OFF, Ordering::Release);
                log::error!("smp: no PSCI in the device tree; cpu{index} stays off");
                break;
            }
            Some(Err(e)) => {
                s.state.store(state::OFF, Ordering::Release);
                log::error!("smp: cpu{index} mpidr={mpidr:#x}: CPU_ON failed: {e}");
                continue;
            }
            Some(Ok(())) => {}
        }
        let deadline = sysreg::cntvct_el0() + TIMEOUT_SECS * freq;
        while s.state.load(Ordering::Acquire) != state::REPORTED && sysreg::cntvct_el0() < deadline
        {
            core::hint::spin_loop();
        }
        if s.state.load(Ordering::Acquire) != state::REPORTED {
            log::error!("smp: cpu{index} mpidr={mpidr:#x} did not come up within {TIMEOUT_SECS} s");
            continue;
        }
        // SAFETY: the CPU wrote its registers before its release store of REPORTED, which
        // the acquire load above saw; it does not touch them again.
        let regs = unsafe { *s.regs.get() };
        let verdict = if admit(index, &regs) {
            state::ONLINE
        } else {
            report.rejected += 1;
            state::REJECTED
        };
        s.state.store(verdict, Ordering::Release);
        barrier::dsb_ishst();
        barrier::sev();
    }
    report.online = online_cpus().count();
    report
}

/// Where each secondary CPU lands at its KIMAGE VA with the final tables and its stack.
pub extern "C" fn secondary_main(index: u64) -> ! {
    let mpidr = sysreg::mpidr_el1() & MPIDR_HWID_MASK;
    let Some(s) = usize::try_from(index).ok().and_then(slot) else {
        println!("smp: cpu mpidr={mpidr:#x} started with unknown index {index}; parking");
        park()
    };
    if s.mpidr.load(Ordering::Relaxed) != mpidr {
        println!("smp: cpu{index} started on mpidr={mpidr:#x}, not its own; parking");
        park()
    }
    println!(
        "smp: cpu{index} up mpidr={mpidr:#x} midr={:#x}",
        sysreg::midr_el1()
    );
    let regs = crate::cpufeature::secondary_detect(index as usize);
    // SAFETY: only this CPU writes its slot's registers, and only before the release
    // store below; the boot CPU reads them only after seeing that store.
    unsafe { *s.regs.get() = regs };
    s.state.store(state::REPORTED, Ordering::Release);
    loop {
        match s.state.load(Ordering::Acquire) {
            state::ONLINE => work_loop(s, index as usize),
            state::REJECTED => park(),
            _ => sysreg::wfe(),
        }
    }
}

/// Stops this CPU for good (a rejected or misdirected CPU).
fn park() -> ! {
    loop {
        sysreg::wfe();
    }
}

/// The loop of an online secondary: wait for posted work, run it, clear the mailbox.
/// In `.text.nopatch`: it runs while the system pass rewrites text (see the module
/// documentation), so it must contain no patch site.
#[inline(never)]
#[link_section = ".text.nopatch.smp"]
fn work_loop(s: &'static CpuSlot, index: usize) -> ! {
    loop {
        let w = s.work.load(Ordering::Acquire);
        if w == 0 {
            sysreg::wfe();
            continue;
        }
        // SAFETY: only `post` stores into `work`, and it stores a `fn(usize)` cast to an
        // address; function pointers and addresses have the same size on AArch64.
        let f: fn(usize) = unsafe { core::mem::transmute::<usize, fn(usize)>(w) };
        f(index);
        s.work.store(0, Ordering::Release);
        barrier::dsb_ishst();
        barrier::sev();
    }
}

/// Why [`start_on`] did not post the work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// No online CPU has this index (or it is the caller).
    NotOnline(usize),
    /// The CPU is still running earlier work.
    Busy(usize),
}

impl core::fmt::Display for StartError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotOnline(c) => write!(f, "cpu{c} is not an online secondary CPU"),
            Self::Busy(c) => write!(f, "cpu{c} is still busy with earlier work"),
        }
    }
}

/// Posts `f` to online CPU `cpu` (not the caller) and returns without waiting: the CPU
/// runs `f(cpu)` from its work loop. Fails if the CPU is not online or its mailbox is
/// still taken. The CPU is woken with SEV; a CPU that waits for work elsewhere (in WFI)
/// needs the caller's interrupt as well.
pub fn start_on(cpu: usize, f: fn(usize)) -> Result<(), StartError> {
    let s = slot(cpu).ok_or(StartError::NotOnline(cpu))?;
    if s.state.load(Ordering::Acquire) != state::ONLINE || Some(cpu) == this_cpu_index() {
        return Err(StartError::NotOnline(cpu));
    }
    s.work
        .compare_exchange(0, f as usize, Ordering::AcqRel, Ordering::Acquire)
        .map_err(|_| StartError::Busy(cpu))?;
    barrier::dsb_ishst();
    barrier::sev();
    Ok(())
}

/// Whether CPU `cpu`'s mailbox is empty (its last work item has returned).
pub fn is_idle(cpu: usize) -> bool {
    slot(cpu).is_some_and(|s| s.work.load(Ordering::Acquire) == 0)
}

/// The MPIDR affinity of CPU `cpu` (device-tree order).
pub fn mpidr_of(cpu: usize) -> Option<u64> {
    slot(cpu).map(|s| s.mpidr.load(Ordering::Relaxed))
}

/// Marks a cross-call as running; panics on a nested one.
struct CrossCall;

impl CrossCall {
    fn begin() -> CrossCall {
        if CROSS_CALL_BUSY.swap(true, Ordering::Acquire) {
            panic!("smp: nested cross-call (a work function called on_each_cpu or stop_machine)");
        }
        CrossCall
    }
}

impl Drop for CrossCall {
    fn drop(&mut self) {
        CROSS_CALL_BUSY.store(false, Ordering::Release);
    }
}

/// Posts `f` to every online CPU except `me`; returns a bitmap of the CPUs posted to.
/// A CPU still busy with work of its own (a vCPU started with [`start_on`]) is waited
/// for: its mailbox is claimed only once it is empty.
fn post(f: fn(usize), me: Option<usize>) -> u64 {
    let mut posted = 0u64;
    for i in online_cpus().filter(|&i| Some(i) != me) {
        while CPUS[i]
            .work
            .compare_exchange(0, f as usize, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            core::hint::spin_loop();
        }
        posted |= 1 << i;
    }
    barrier::dsb_ishst();
    barrier::sev();
    posted
}

/// Waits until every CPU in `posted` has finished its work item.
fn wait_done(posted: u64) {
    for (i, s) in CPUS.iter().enumerate() {
        if posted & (1 << i) != 0 {
            while s.work.load(Ordering::Acquire) != 0 {
                core::hint::spin_loop();
            }
        }
    }
}

/// Runs `f(cpu_index)` on every online CPU — the other CPUs in their work loops, the
/// caller (normally the boot CPU) inline — and returns when every call has returned.
///
/// `f` must not call `on_each_cpu` or [`stop_machine`] (panics if it does) and must not
/// wait for the caller.
pub fn on_each_cpu(f: fn(usize)) {
    let _busy = CrossCall::begin();
    let me = this_cpu_index();
    let posted = post(f, me);
    f(me.unwrap_or(0));
    wait_done(posted);
}

/// Runs `f` on this CPU while every other online CPU waits in a rendezvous, then lets
/// them go: Linux's patching rendezvous (LINUX-FACTS §4.3).
///
/// Each other CPU counts itself in and spins on a plain flag with `spin_loop`; `f` runs
/// only once all of them are inside. Afterwards the caller sets the flag with release
/// ordering and each waiting CPU executes an ISB before it returns to its work loop, so
/// it refetches any text `f` rewrote (the I-cache invalidation itself is broadcast by
/// whoever rewrote it). Returns after every other CPU has left the rendezvous.
///
/// `f` must not call [`on_each_cpu`] or `stop_machine` (panics if it does).
pub fn stop_machine<R>(f: impl FnOnce() -> R) -> R {
    let _busy = CrossCall::begin();
    let me = this_cpu_index();
    STOP_RELEASE.store(false, Ordering::Relaxed);
    STOP_ARRIVED.store(0, Ordering::Relaxed);
    let posted = post(rendezvous, me);
    let expected = posted.count_ones() as usize;
    while STOP_ARRIVED.load(Ordering::Acquire) < expected {
        core::hint::spin_loop();
    }
    let r = f();
    STOP_RELEASE.store(true, Ordering::Release);
    barrier::dsb_ishst();
    barrier::sev();
    wait_done(posted);
    r
}

/// The stop-machine wait of every CPU but the caller. In `.text.nopatch`, no patch site.
#[inline(never)]
#[link_section = ".text.nopatch.smp"]
fn rendezvous(_index: usize) {
    STOP_ARRIVED.fetch_add(1, Ordering::AcqRel);
    while !STOP_RELEASE.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
    // The text may have changed under this CPU: discard anything fetched before.
    barrier::isb();
}
