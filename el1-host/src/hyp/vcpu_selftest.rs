//! The `hyp-vcpu` selftest: a VM with one page of guest code, run once on every CPU
//! (each CPU its own vCPU context, all on the one VM), must come back with exactly the
//! exits the code causes:
//!
//! ```text
//! 0x4000_0000  mov x0, #42      //
//!              hvc #0           // → Exit::Hvc { imm: 0 }, PC already past it
//!              str x0, [x1]     // x1 = 0x0900_0000, unmapped → Exit::Mmio write of 42
//!              wfi              // → Exit::Wfx { wfe: false }
//!              smc #0           // → Exit::Smc { imm: 0 }, PC still at the SMC
//!              b .
//! 0x4000_0a00  hvc #1           // VBAR_EL1 = 0x4000_0800: the EL1h synchronous vector
//! ```
//!
//! After the MMIO write each CPU maps two data pages of its own (at `DATA_BASE + cpu *
//! 0x2000`) and runs the read stub with x2 = their IPA:
//!
//! ```text
//! 0x4000_0100  ldr x0, [x2]         // the CPU's marker words
//!              ldr x1, [x2, #4096]
//!              hvc #2               // → Exit::Hvc { imm: 2 }, x0/x1 as written
//!              b .
//! ```
//!
//! so this CPU's TLBs now hold the translation. Then `VmUnmap` of the two pages (retried
//! while another CPU's vCPU runs: `Busy`) and the stub once more: the first load must
//! now exit as an MMIO read at exactly that IPA, so the invalidation reached this CPU.
//! Which invalidation the hyp used (its `HAS_TLB_RANGE` alternative: one `TLBI
//! RIPAS2E1IS` for the two pages, or two `TLBI IPAS2E1IS`) must agree on every CPU and
//! is printed as `tlbi=range|per-page`. The guest then goes on at its `wfi`.
//!
//! After the SMC the host skips it and asks for a data-abort injection at FAR 0x1234:
//! the guest must come back through its vector (`Exit::Hvc { imm: 1 }`) with ESR_EL1,
//! FAR_EL1, ELR_EL1 and SPSR_EL1 as hardware would have set them.
//!
//! Before the vCPUs run, the VM calls must refuse bad arguments with the right codes
//! (overlap, the hyp's carve-out, misalignment, unmapping what is not mapped or leaves
//! the IPA space, a bad PSTATE, a bad injection), and `HostRead64` must refuse the hyp's
//! carve-out: its image and, beyond the image, a hyp stack (mapped at EL2, so only the
//! carve-out check stands in the way). Afterwards destroy must work and leave the handle
//! stale. One line: `selftest: hyp-vcpu ok cpus=<n> exits=… tlbi=<path>` or
//! `selftest: hyp-vcpu FAILED <first problem>`.

use super::vm::{linear_va_of_pa, pa_of, Unmapped, Vm, VmError};
use crate::println;
use alloc::alloc::{alloc_zeroed, Layout};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use shared::exit::{AccessWidth, Exit, MmioAccess};
use shared::hypercall::{HcallError, HcallFailure, HcallId};
use shared::vcpu::{TlbiPath, VcpuContext};

/// Guest RAM base and the MMIO address the guest stores to.
const GUEST_BASE: u64 = 0x4000_0000;
const MMIO_ADDR: u64 = 0x0900_0000;

/// The guest code (see the module documentation).
const CODE: [u32; 6] = [
    0xd280_0540, // mov x0, #42
    0xd400_0002, // hvc #0
    0xf900_0020, // str x0, [x1]
    0xd503_207f, // wfi
    0xd400_0003, // smc #0
    0x1400_0000, // b .
];
/// The guest's vector table (VBAR_EL1) and the `hvc #1` at its EL1h synchronous entry.
const VBAR_OFF: u64 = 0x800;
const HVC1: u32 = 0xd400_0022;
/// The read stub (see the module documentation) and where it sits.
const READ_OFF: u64 = 0x100;
const READ: [u32; 4] = [
    0xf940_0040, // ldr x0, [x2]
    0xf948_0041, // ldr x1, [x2, #4096]
    0xd400_0042, // hvc #2
    0x1400_0000, // b .
];
/// First CPU's data pages; CPU `n`'s are `DATA_STRIDE * n` above.
const DATA_BASE: u64 = GUEST_BASE + 0x20_0000;
const DATA_STRIDE: u64 = 0x2000;
/// TLBI-by-IPA instructions the unmap of two pages takes on each path.
const RANGE_OPS: u64 = 1;
const PER_PAGE_OPS: u64 = 2;
/// `VmUnmap` attempts while other CPUs' vCPUs keep the VM busy.
const UNMAP_TRIES: u32 = 100_000;

/// Runs of the PSTATE race (see [`pstate_race`]).
const RACE_RUNS: u32 = 2000;
/// The context of the PSTATE race (a leaked `Box`), 0 until set up.
static RACE_CTX: AtomicU64 = AtomicU64::new(0);
/// Set when CPU 0 finished its runs: the other CPUs stop rewriting the context.
static RACE_DONE: AtomicBool = AtomicBool::new(false);
/// Other CPUs that started rewriting.
static RACE_FLIPPERS: AtomicU64 = AtomicU64::new(0);
/// Runs refused with `BadPstate` (the rewrite won the race to the hyp's one read).
static RACE_REFUSED: AtomicU64 = AtomicU64::new(0);

/// Pages of the VM's stage-2 pool.
const POOL_PAGES: u64 = 16;

/// Most CPUs whose results are kept.
const MAX_CPUS: usize = 64;

struct Shared {
    vm: Vm,
    ran: [AtomicBool; MAX_CPUS],
    /// The `TlbiPath` code each CPU's unmap reported (0: none yet).
    tlbi: [AtomicU64; MAX_CPUS],
    problem: spin::Mutex<Option<String>>,
}

static SHARED: spin::Once<Shared> = spin::Once::new();

fn note(s: &Shared, what: String) {
    let mut p = s.problem.lock();
    if p.is_none() {
        *p = Some(what);
    }
}

/// Two fresh, physically contiguous host pages holding this CPU's marker words (cleaned
/// to PoC: the guest reads them with its MMU off); their PA. Leaked: they may be guest
/// memory for the VM's lifetime.
fn data_pages(cpu: usize) -> Result<(u64, [u64; 2]), String> {
    let layout = Layout::from_size_align(2 * 4096, 4096).map_err(|e| format!("{e}"))?;
    // SAFETY: non-zero size.
    let p = unsafe { alloc_zeroed(layout) };
    if p.is_null() {
        return Err(format!("cpu{cpu}: no memory for the data pages"));
    }
    let words = [0xda7a_0000 | cpu as u64, 0xda7a_1000 | cpu as u64];
    for (i, w) in words.iter().enumerate() {
        // SAFETY: the first word of page `i` of the fresh allocation.
        unsafe { (p.add(i * 4096) as *mut u64).write_volatile(*w) };
    }
    crate::arch::cache::clean_to_poc(p as usize, 2 * 4096);
    Ok((pa_of(p).map_err(|e| format!("cpu{cpu}: {e}"))?, words))
}

/// `VmUnmap`, retried while another CPU's vCPU runs.
fn unmap_when_idle(vm: &Vm, ipa: u64, bytes: u64) -> Result<Unmapped, VmError> {
    let busy = VmError::Hyp(
        HcallId::VmUnmap,
        HcallFailure::InvalidParameter(Ok(HcallError::Busy)),
    );
    let mut tries = 0;
    loop {
        match vm.unmap(ipa, bytes) {
            Err(e) if e == busy && tries < UNMAP_TRIES => {
                tries += 1;
                for _ in 0..64 {
                    core::hint::spin_loop();
                }
            }
            r => return r,
        }
    }
}

/// After the MMIO write: map this CPU's data pages, read them from the guest, unmap
/// them, and see the same read exit at their IPA. Returns the invalidation path.
fn unmap_sequence(vm: &Vm, cpu: usize, ctx: &mut VcpuContext) -> Result<TlbiPath, String> {
    let ipa = DATA_BASE + DATA_STRIDE * cpu as u64;
    let (pa, words) = data_pages(cpu)?;
    vm.map(ipa, pa, 2 * 4096)
        .map_err(|e| format!("cpu{cpu}: map of the data pages: {e}"))?;
    let resume = ctx.gpr.pc;
    ctx.gpr.pc = GUEST_BASE + READ_OFF;
    ctx.gpr.x[2] = ipa;
    let e = vm
        .run_vcpu(ctx)
        .map_err(|e| format!("cpu{cpu}: run for the data read: {e}"))?;
    let got = (e, ctx.gpr.x[0], ctx.gpr.x[1]);
    if got != (Exit::Hvc { imm: 2 }, words[0], words[1]) {
        return Err(format!(
            "cpu{cpu}: data read: got {got:x?}, want {:x?}",
            (Exit::Hvc { imm: 2 }, words[0], words[1])
        ));
    }
    let u = unmap_when_idle(vm, ipa, 2 * 4096).map_err(|e| format!("cpu{cpu}: unmap: {e}"))?;
    let want_ops = match u.path {
        TlbiPath::Range => RANGE_OPS,
        TlbiPath::PerPage => PER_PAGE_OPS,
    };
    if u.tlbi_ops != want_ops {
        return Err(format!(
            "cpu{cpu}: unmap of 2 pages took {} TLBI ops on the {} path, want {want_ops}",
            u.tlbi_ops,
            u.path.name()
        ));
    }
    ctx.gpr.pc = GUEST_BASE + READ_OFF;
    ctx.gpr.x[0] = 0;
    let e = vm
        .run_vcpu(ctx)
        .map_err(|e| format!("cpu{cpu}: run after the unmap: {e}"))?;
    let want = Exit::Mmio(MmioAccess {
        ipa,
        write: false,
        width: AccessWidth::Double,
        sign_extend: false,
        reg: 0,
        sixty_four: true,
        acquire_release: false,
    });
    if e != want || ctx.gpr.pc != GUEST_BASE + READ_OFF {
        return Err(format!(
            "cpu{cpu}: read after the unmap ({} path): exit {e:?} at pc {:#x}, want {want:?} at {:#x}",
            u.path.name(),
            ctx.gpr.pc,
            GUEST_BASE + READ_OFF
        ));
    }
    ctx.gpr.pc = resume;
    Ok(u.path)
}

/// Runs the exits on this CPU; the invalidation path its unmap took.
fn vcpu_sequence(vm: &Vm, cpu: usize) -> Result<TlbiPath, String> {
    let mut ctx = Box::new(VcpuContext::new(GUEST_BASE, 0, cpu as u64));
    ctx.gpr.x[1] = MMIO_ADDR;
    let run = |ctx: &mut VcpuContext, want: &str| {
        vm.run_vcpu(ctx)
            .map_err(|e| format!("cpu{cpu}: run for {want}: {e}"))
    };
    let e = run(&mut ctx, "hvc")?;
    if e != (Exit::Hvc { imm: 0 }) {
        return Err(format!("cpu{cpu}: first exit {e:?}, want Hvc"));
    }
    let e = run(&mut ctx, "mmio")?;
    let want = Exit::Mmio(MmioAccess {
        ipa: MMIO_ADDR,
        write: true,
        width: AccessWidth::Double,
        sign_extend: false,
        reg: 0,
        sixty_four: true,
        acquire_release: false,
    });
    if e != want {
        return Err(format!("cpu{cpu}: second exit {e:?}, want {want:?}"));
    }
    let Exit::Mmio(m) = e else { unreachable!() };
    let value = m.store_data(ctx.reg(m.reg));
    if value != 42 || ctx.gpr.pc != GUEST_BASE + 8 {
        return Err(format!(
            "cpu{cpu}: mmio value {value} at pc {:#x}, want 42 at {:#x}",
            ctx.gpr.pc,
            GUEST_BASE + 8
        ));
    }
    ctx.gpr.pc += e.pc_advance();
    let path = unmap_sequence(vm, cpu, &mut ctx)?;
    let e = run(&mut ctx, "wfi")?;
    if e != (Exit::Wfx { wfe: false }) || ctx.gpr.pc != GUEST_BASE + 12 {
        return Err(format!(
            "cpu{cpu}: third exit {e:?} at pc {:#x}, want Wfx at {:#x}",
            ctx.gpr.pc,
            GUEST_BASE + 12
        ));
    }
    ctx.gpr.pc += e.pc_advance();
    let e = run(&mut ctx, "smc")?;
    if e != (Exit::Smc { imm: 0 }) || ctx.gpr.pc != GUEST_BASE + 16 {
        return Err(format!(
            "cpu{cpu}: fourth exit {e:?} at pc {:#x}, want Smc at {:#x}",
            ctx.gpr.pc,
            GUEST_BASE + 16
        ));
    }
    // The host "handles" the SMC (skips it) and injects a data abort.
    ctx.gpr.pc += e.pc_advance();
    ctx.sys.vbar_el1 = GUEST_BASE + VBAR_OFF;
    ctx.inject.kind = shared::vcpu::INJECT_DABT;
    ctx.inject.far = 0x1234;
    let e = run(&mut ctx, "injected abort")?;
    let got = (
        e,
        ctx.sys.esr_el1,
        ctx.sys.far_el1,
        ctx.sys.elr_el1,
        ctx.sys.spsr_el1 & 0x3cf,
        ctx.gpr.pc,
        ctx.inject.kind,
    );
    let want = (
        Exit::Hvc { imm: 1 },
        0x9600_0010, // EC 0x25 (same EL), IL, SEA
        0x1234,
        GUEST_BASE + 20,
        0x3c5,
        GUEST_BASE + VBAR_OFF + 0x204,
        0,
    );
    if got != want {
        return Err(format!(
            "cpu{cpu}: injected abort: got {got:x?}, want {want:x?}"
        ));
    }
    Ok(path)
}

fn on_cpu(cpu: usize) {
    let Some(s) = SHARED.get() else { return };
    match vcpu_sequence(&s.vm, cpu) {
        Ok(path) => {
            if let Some(t) = s.tlbi.get(cpu) {
                t.store(path as u64, Ordering::Relaxed);
            }
        }
        Err(e) => note(s, e),
    }
    if let Some(r) = s.ran.get(cpu) {
        r.store(true, Ordering::Release);
    }
}

/// The hyp reads the context's PSTATE once: CPU 0 runs a vCPU (`hvc #0` at once) over
/// and over with PSTATE = EL1h while every other CPU keeps rewriting that PSTATE to EL2h
/// and back. Each run must either come back as the HVC exit or be refused with
/// `BadPstate`; a hyp that checked one read and entered with another would ERET to EL2
/// at the guest's PC and never come back.
fn pstate_race(cpu: usize) {
    let Some(s) = SHARED.get() else { return };
    let ptr = RACE_CTX.load(Ordering::Acquire) as *mut VcpuContext;
    if ptr.is_null() {
        return;
    }
    if cpu != 0 {
        RACE_FLIPPERS.fetch_add(1, Ordering::AcqRel);
        while !RACE_DONE.load(Ordering::Acquire) {
            for p in [0x3c9u64, 0x3c5] {
                // SAFETY: the leaked context lives for good; a racing plain store is the
                // point of the test (the host may always rewrite its memory).
                unsafe { core::ptr::addr_of_mut!((*ptr).gpr.pstate).write_volatile(p) };
            }
        }
        return;
    }
    // Give the others a moment to start (there may be none).
    for _ in 0..1_000_000 {
        if RACE_FLIPPERS.load(Ordering::Acquire) != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    for i in 0..RACE_RUNS {
        // SAFETY: as above; only this CPU runs the context.
        let ctx = unsafe { &mut *ptr };
        ctx.gpr.pc = GUEST_BASE + 4;
        ctx.gpr.pstate = 0x3c5;
        match s.vm.run_vcpu(ctx) {
            Ok(Exit::Hvc { imm: 0 }) => {}
            Err(VmError::Hyp(_, HcallFailure::InvalidParameter(Ok(HcallError::BadPstate)))) => {
                RACE_REFUSED.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                note(
                    s,
                    format!("PSTATE race, run {i}: {other:?}, want the HVC exit or BadPstate"),
                );
                break;
            }
        }
    }
    RACE_DONE.store(true, Ordering::Release);
}

fn expect_refusal(what: &str, got: Result<(), VmError>, want: HcallError) -> Result<(), String> {
    match got {
        Err(VmError::Hyp(_, HcallFailure::InvalidParameter(Ok(e)))) if e == want => Ok(()),
        other => Err(format!("{what}: got {other:?}, want {want:?}")),
    }
}

/// What `HostRead64` says about the host word at linear VA `va`.
fn host_read64(va: u64) -> Result<u64, HcallFailure> {
    let (x0, r) = super::install::hcall(HcallId::HostRead64.smccc_func(), [va, 0, 0]);
    shared::hypercall::decode_reply(x0, r[0])
}

/// `HostRead64` must refuse the carve-out: the start of the hyp image (its header page,
/// which EL2 does not map: any refusal) and CPU 0's hyp stack, which lies beyond the
/// image and is mapped at EL2, so only the carve-out check can refuse it (`HypMemory`).
/// The stack's PA is in CPU 0's init parameters, which the host wrote into the
/// carve-out.
fn carveout_reads(carve_pa: u64) -> Result<(), String> {
    let hyp = Err(HcallFailure::InvalidParameter(Ok(HcallError::HypMemory)));
    let image_va = linear_va_of_pa(carve_pa).map_err(|e| format!("{e}"))?;
    let got = host_read64(image_va);
    if !matches!(got, Err(HcallFailure::InvalidParameter(Ok(_)))) {
        return Err(format!(
            "read of the hyp image: got {got:x?}, want a refusal"
        ));
    }
    let params_pa = super::STATE
        .get()
        .and_then(|s| s.cpus.first())
        .map(|c| c.params_pa)
        .ok_or_else(|| String::from("no init parameters for cpu0"))?;
    let params_va = linear_va_of_pa(params_pa).map_err(|e| format!("{e}"))?;
    let off = shared::hypercall::init_params_offset::STACK_PA as u64;
    // SAFETY: CPU 0's init parameters, written by the host through the linear map
    // before the install; nothing writes them any more.
    let stack_pa = unsafe { ((params_va + off) as *const u64).read_volatile() };
    if stack_pa <= carve_pa {
        return Err(format!(
            "cpu0 stack at {stack_pa:#x} is not above the carve-out start {carve_pa:#x}"
        ));
    }
    let stack_va = linear_va_of_pa(stack_pa).map_err(|e| format!("{e}"))?;
    let got = host_read64(stack_va + 8);
    if got != hyp {
        return Err(format!(
            "read of cpu0's hyp stack at pa {:#x}: got {got:x?}, want {hyp:?}",
            stack_pa + 8
        ));
    }
    Ok(())
}

/// Refusals that must not change anything.
fn refusals(vm: &Vm, page_pa: u64, carve_pa: u64) -> Result<(), String> {
    expect_refusal(
        "overlapping map",
        vm.map(GUEST_BASE, page_pa, 0x1000),
        HcallError::Overlap,
    )?;
    expect_refusal(
        "map of the carve-out",
        vm.map(GUEST_BASE + 0x10_0000, carve_pa, 0x1000),
        HcallError::HypMemory,
    )?;
    expect_refusal(
        "misaligned map",
        vm.map(GUEST_BASE + 0x800, page_pa, 0x1000),
        HcallError::Misaligned,
    )?;
    let unmap = |ipa, bytes| vm.unmap(ipa, bytes).map(|_| ());
    expect_refusal(
        "unmap of nothing",
        unmap(DATA_BASE, 0x1000),
        HcallError::NotGuestMapped,
    )?;
    // The code page is mapped, the page after it is not: nothing may go.
    expect_refusal(
        "unmap past the mapping",
        unmap(GUEST_BASE, 0x2000),
        HcallError::NotGuestMapped,
    )?;
    expect_refusal(
        "misaligned unmap",
        unmap(GUEST_BASE + 0x800, 0x1000),
        HcallError::Misaligned,
    )?;
    let top = 1u64 << vm.descriptor().ipa_bits;
    expect_refusal(
        "unmap beyond the IPA space",
        unmap(top - 0x1000, 0x2000),
        HcallError::OutOfRange,
    )?;
    carveout_reads(carve_pa)?;
    let mut ctx = Box::new(VcpuContext::new(GUEST_BASE, 0, 0));
    ctx.gpr.pstate = 0x3c9; // EL2h: must never be entered
    expect_refusal(
        "EL2 PSTATE",
        vm.run_vcpu(&mut ctx).map(|_| ()),
        HcallError::BadPstate,
    )?;
    ctx.gpr.pstate = 0x3c5;
    ctx.inject.kind = 7;
    expect_refusal(
        "bad injection",
        vm.run_vcpu(&mut ctx).map(|_| ()),
        HcallError::BadInjection,
    )?;
    context_in_pool(vm)
}

/// A vCPU context inside the VM's own stage-2 pool (its last page, still unused and
/// zero) must be refused before the hyp writes anything there: the guest's registers
/// would land in its own tables.
fn context_in_pool(vm: &Vm) -> Result<(), String> {
    let d = vm.descriptor();
    let ctx_pa = d.root_pa + (POOL_PAGES - 1) * 0x1000;
    let va = linear_va_of_pa(ctx_pa).map_err(|e| format!("{e}"))?;
    let (x0, r) = super::install::hcall(HcallId::VcpuRun.smccc_func(), [d.handle, va, 0]);
    let got = shared::hypercall::decode_reply(x0, r[0]);
    let want = Err(HcallFailure::InvalidParameter(Ok(HcallError::HypMemory)));
    if got != want {
        return Err(format!(
            "VcpuRun with the context in the VM's pool (pa {ctx_pa:#x}): got {got:?}, want {want:?}"
        ));
    }
    Ok(())
}

/// Runs the selftest; prints its line; whether it passed.
pub fn run(on_each_cpu: fn(fn(usize)), carve_pa: u64) -> bool {
    let r = run_inner(on_each_cpu, carve_pa);
    match &r {
        Ok((n, path)) => println!(
            "selftest: hyp-vcpu ok cpus={n} exits=hvc,mmio,read,unmapped-read,wfx,smc,injected-dabt tlbi={}",
            path.name()
        ),
        Err(e) => println!("selftest: hyp-vcpu FAILED {e}"),
    }
    r.is_ok()
}

fn run_inner(on_each_cpu: fn(fn(usize)), carve_pa: u64) -> Result<(usize, TlbiPath), String> {
    let vm = Vm::create(POOL_PAGES, None).map_err(|e| format!("create: {e}"))?;
    // One page of guest code, cleaned to PoC: the guest fetches with its MMU off.
    let layout = Layout::from_size_align(4096, 4096).map_err(|e| format!("{e}"))?;
    // SAFETY: non-zero size; the page is leaked (guest RAM for the VM's lifetime).
    let page = unsafe { alloc_zeroed(layout) };
    if page.is_null() {
        return Err(String::from("no memory for the guest page"));
    }
    for (i, w) in CODE.iter().enumerate() {
        // SAFETY: inside the fresh page.
        unsafe { (page as *mut u32).add(i).write_volatile(*w) };
    }
    // SAFETY: inside the fresh page (0xa00 < 4096, 4-byte aligned).
    unsafe { (page.add(VBAR_OFF as usize + 0x200) as *mut u32).write_volatile(HVC1) };
    for (i, w) in READ.iter().enumerate() {
        // SAFETY: inside the fresh page (0x100 + 16 < 0x800, 4-byte aligned).
        unsafe {
            (page.add(READ_OFF as usize) as *mut u32)
                .add(i)
                .write_volatile(*w)
        };
    }
    crate::arch::cache::clean_to_poc(page as usize, 4096);
    let page_pa = pa_of(page).map_err(|e| format!("{e}"))?;
    vm.map(GUEST_BASE, page_pa, 0x1000)
        .map_err(|e| format!("map: {e}"))?;
    refusals(&vm, page_pa, carve_pa)?;

    let s = SHARED.call_once(|| Shared {
        vm,
        ran: [const { AtomicBool::new(false) }; MAX_CPUS],
        tlbi: [const { AtomicU64::new(0) }; MAX_CPUS],
        problem: spin::Mutex::new(None),
    });
    on_each_cpu(on_cpu);
    if let Some(p) = s.problem.lock().take() {
        return Err(p);
    }
    let n = s.ran.iter().filter(|r| r.load(Ordering::Acquire)).count();
    if n == 0 {
        return Err(String::from("no CPU ran a vCPU"));
    }
    // One system, one alternative: every CPU's unmap took the same path.
    let mut paths = s
        .ran
        .iter()
        .zip(&s.tlbi)
        .filter(|(r, _)| r.load(Ordering::Acquire))
        .map(|(_, t)| t.load(Ordering::Relaxed));
    let first = paths.next().unwrap_or(0);
    let path = TlbiPath::from_code(first)
        .ok_or_else(|| format!("unmap path code {first} is not a TlbiPath"))?;
    if let Some(other) = paths.find(|p| *p != first) {
        return Err(format!(
            "CPUs disagree on the unmap path: {first} and {other}"
        ));
    }
    let race = Box::leak(Box::new(VcpuContext::new(GUEST_BASE + 4, 0, 0)));
    RACE_CTX.store(race as *mut VcpuContext as u64, Ordering::Release);
    on_each_cpu(pstate_race);
    if let Some(p) = s.problem.lock().take() {
        return Err(p);
    }
    // Destroy: the handle goes stale.
    let handle = s.vm.descriptor().handle;
    let (x0, r) = super::install::hcall(HcallId::VmDestroy.smccc_func(), [handle, 0, 0]);
    if x0 != 0 {
        return Err(format!("destroy: x0={x0:#x} x1={:#x}", r[0]));
    }
    let (x0, r) = super::install::hcall(HcallId::VmDestroy.smccc_func(), [handle, 0, 0]);
    let again = shared::hypercall::decode_reply(x0, r[0]);
    if again != Err(HcallFailure::InvalidParameter(Ok(HcallError::BadHandle))) {
        return Err(format!("second destroy: {again:?}, want BadHandle"));
    }
    let (x0, r) =
        super::install::hcall(HcallId::VmUnmap.smccc_func(), [handle, GUEST_BASE, 0x1000]);
    let stale = shared::hypercall::decode_reply(x0, r[0]);
    if stale != Err(HcallFailure::InvalidParameter(Ok(HcallError::BadHandle))) {
        return Err(format!("unmap after destroy: {stale:?}, want BadHandle"));
    }
    Ok((n, path))
}
