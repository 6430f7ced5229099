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
//! After the SMC the host skips it and asks for a data-abort injection at FAR 0x1234:
//! the guest must come back through its vector (`Exit::Hvc { imm: 1 }`) with ESR_EL1,
//! FAR_EL1, ELR_EL1 and SPSR_EL1 as hardware would have set them.
//!
//! Then the VM calls must refuse bad arguments with the right codes (overlap, the hyp's
//! carve-out, a bad PSTATE, a stale handle, a misaligned context) and destroy must work.
//! One line: `selftest: hyp-vcpu ok cpus=<n> exits=…` or `selftest: hyp-vcpu FAILED <first problem>`.

use super::vm::{pa_of, Vm, VmError};
use crate::println;
use alloc::alloc::{alloc_zeroed, Layout};
use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use core::sync::atomic::{AtomicBool, Ordering};
use shared::exit::{AccessWidth, Exit, MmioAccess};
use shared::hypercall::{HcallError, HcallFailure, HcallId};
use shared::vcpu::VcpuContext;

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

/// Most CPUs whose results are kept.
const MAX_CPUS: usize = 64;

struct Shared {
    vm: Vm,
    ran: [AtomicBool; MAX_CPUS],
    problem: spin::Mutex<Option<String>>,
}

static SHARED: spin::Once<Shared> = spin::Once::new();

fn note(s: &Shared, what: String) {
    let mut p = s.problem.lock();
    if p.is_none() {
        *p = Some(what);
    }
}

/// Runs the three exits on this CPU.
fn vcpu_sequence(vm: &Vm, cpu: usize) -> Result<(), String> {
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
    Ok(())
}

fn on_cpu(cpu: usize) {
    let Some(s) = SHARED.get() else { return };
    if let Err(e) = vcpu_sequence(&s.vm, cpu) {
        note(s, e);
    }
    if let Some(r) = s.ran.get(cpu) {
        r.store(true, Ordering::Release);
    }
}

fn expect_refusal(what: &str, got: Result<(), VmError>, want: HcallError) -> Result<(), String> {
    match got {
        Err(VmError::Hyp(_, HcallFailure::InvalidParameter(Ok(e)))) if e == want => Ok(()),
        other => Err(format!("{what}: got {other:?}, want {want:?}")),
    }
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
    Ok(())
}

/// Runs the selftest; prints its line; whether it passed.
pub fn run(on_each_cpu: fn(fn(usize)), carve_pa: u64) -> bool {
    let r = run_inner(on_each_cpu, carve_pa);
    match &r {
        Ok(n) => println!("selftest: hyp-vcpu ok cpus={n} exits=hvc,mmio,wfx,smc,injected-dabt"),
        Err(e) => println!("selftest: hyp-vcpu FAILED {e}"),
    }
    r.is_ok()
}

fn run_inner(on_each_cpu: fn(fn(usize)), carve_pa: u64) -> Result<usize, String> {
    let vm = Vm::create(16, None).map_err(|e| format!("create: {e}"))?;
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
    crate::arch::cache::clean_to_poc(page as usize, 4096);
    let page_pa = pa_of(page).map_err(|e| format!("{e}"))?;
    vm.map(GUEST_BASE, page_pa, 0x1000)
        .map_err(|e| format!("map: {e}"))?;
    refusals(&vm, page_pa, carve_pa)?;

    let s = SHARED.call_once(|| Shared {
        vm,
        ran: [const { AtomicBool::new(false) }; MAX_CPUS],
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
    Ok(n)
}
