//! The VMM's run loop: the non-pure half of [`el1_host::vmm`]. It turns a guest bundle
//! into a running VM and runs its vCPUs, 1:1 on host CPUs, until the VM ends.
//!
//! # Flow
//!
//! 1. [`find_bundle`] (boot CPU, before the heap takes free RAM): the bundle the boot
//!    loader passed as the host's initrd, its header checked, and a contiguous carve-out
//!    for guest RAM (`--guest-mem`) reserved beside it.
//! 2. [`run`] (boot CPU, after the hyp selftests): the whole bundle checked, the VM
//!    planned ([`el1_host::vmm::launch::plan`]: vCPUs, layout, device tree with an
//!    `rng-seed` from host entropy), files copied into guest RAM and cleaned to the
//!    point of coherency (the guest starts with its MMU off), the VM created in the
//!    hyp with its RAM mapped at 0x4000_0000, one vCPU thread started on each other host
//!    CPU ([`crate::smp::start_on`]), and vCPU 0 run on the boot CPU.
//! 3. Each vCPU thread waits (WFI, interrupts masked) until PSCI CPU_ON names its vCPU
//!    (the caller stores entry and context in the vCPU's mailbox and sends the host
//!    CPU the kick SGI), runs it until CPU_OFF, and waits again; it returns when the VM
//!    ends.
//! 4. The run loop: `VcpuRun` → [`VmModel::handle_exit`] → carry out the [`Step`]. Before
//!    every entry it re-arms the host tick (the EL1 physical timer), so a guest that
//!    never exits still comes back to the host (as [`Exit::Irq`](shared::exit::Exit)),
//!    and it checks the VM's end and its deadline. WFI/WFE: the host CPU waits in WFI
//!    for its next interrupt (tick or kick), never spinning.
//! 5. The first end wins; the CPU that ends the VM kicks every other vCPU's host CPU, so
//!    a running guest exits at once. The boot CPU waits for the threads, destroys the VM
//!    and prints `guest <vm>: exit status=<n> reason=<reason>`.

use crate::arch::{barrier, cache, gic, irq, timer};
use crate::hyp::vm::Vm;
use crate::{println, smp};
use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use el1_host::layout::{LinearMap, PhysRange};
use el1_host::vmm::exits::{Step, VmEnd, VmModel};
use el1_host::vmm::idregs::GuestIdRegs;
use el1_host::vmm::launch::{self, Launch};
use el1_host::vmm::mmio::MmioBus;
use el1_host::vmm::pl011::Pl011;
use el1_host::vmm::psci::{ArchWorkarounds, Psci};
use el1_host::vmm::timer as guest_timer;
use el1_host::vmm::vgic::{GicdDevice, GicrDevice, SharedVgic, Vgic, INTID_PTIMER, INTID_VTIMER};
use el1_host::vmm::{guest_image, map};
use shared::guest_abi::bundle::{Bundle, Header};
use shared::guest_abi::{self, ExitLine};
use shared::hypercall::HcallId;
use shared::vcpu::VcpuContext;

/// The VM's number in its console lines.
const VM_ID: u32 = 0;
/// The host tick while a guest runs: 10 ms.
const TICKS_PER_SEC_DIVISOR: u64 = 100;
/// How long a guest WFE waits at most: 1 ms (another vCPU's SEV does not wake a host
/// waiting in WFI).
const WFE_DIVISOR: u64 = 1000;
/// How long the boot CPU waits for the vCPU threads after the end.
const JOIN_TIMEOUT_SECS: u64 = 5;
/// Largest IPA the VM gets.
const IPA_BITS: Option<u8> = None;

/// The guest bundle found at boot and the RAM reserved for the guest.
pub struct Found {
    /// Where the bundle is (physical).
    pub bundle: PhysRange,
    /// Guest RAM (physical, contiguous, 2 MiB aligned).
    pub ram: PhysRange,
}

/// What [`find_bundle`] says.
pub enum Bundled {
    /// No initrd: the host runs no guest.
    None,
    /// A bundle and its guest RAM.
    Found(Found),
    /// An initrd that cannot be used; the message says why. The guest ends with
    /// reason `error` before anything of it runs.
    Refused(alloc::string::String),
}

/// Finds the bundle in the host's initrd (`/chosen` of `dtb`), checks its header, and
/// picks physical RAM for the guest outside `reserved`. The caller adds the bundle and
/// the guest RAM to the reserved ranges before the heap takes the rest.
pub fn find_bundle(dtb: &[u8], linear: &LinearMap, reserved: &[PhysRange]) -> Bundled {
    use alloc::string::ToString;
    let range = match launch::initrd_range(dtb) {
        Ok(None) => return Bundled::None,
        Ok(Some(r)) => r,
        Err(e) => return Bundled::Refused(alloc::format!("host initrd: {e}")),
    };
    let (Ok(va), Ok(_)) = (linear.pa_to_va(range.start), linear.pa_to_va(range.end - 1)) else {
        return Bundled::Refused(alloc::format!(
            "host initrd {:#x}..{:#x} is not in RAM",
            range.start,
            range.end
        ));
    };
    let len = (range.end - range.start) as usize;
    // SAFETY: the range is RAM (checked above), mapped by the linear map, and the boot
    // loader put the initrd there; nothing writes it while the host runs.
    let bytes = unsafe { core::slice::from_raw_parts(va as *const u8, len) };
    let header = match Header::parse(bytes) {
        Ok(h) => h,
        Err(e) => return Bundled::Refused(e.to_string()),
    };
    let mut taken = reserved.to_vec();
    taken.push(range.clone());
    match crate::mm::carveout::choose(&linear.regions, &taken, header.guest_mem) {
        Some(ram) => Bundled::Found(Found { bundle: range, ram }),
        None => Bundled::Refused(alloc::format!(
            "no contiguous {} MiB of host RAM for the guest (--guest-mem)",
            header.guest_mem >> 20
        )),
    }
}

/// Prints the end of a VM that did not run and returns its status.
pub fn refuse(why: &str) -> u32 {
    println!("guest {VM_ID}: refused: {why}");
    report(VmEnd::ERROR)
}

fn report(end: VmEnd) -> u32 {
    println!(
        "{}",
        ExitLine {
            vm: VM_ID,
            status: end.status,
            reason: end.reason,
        }
    );
    end.status
}

/// One vCPU's mailbox: a pending start (entry, context), written by the CPU_ON caller.
struct Mailbox {
    entry: AtomicU64,
    context: AtomicU64,
    /// 1 when a start is pending (set after entry and context, with release ordering).
    pending: AtomicU64,
}

/// What every vCPU thread shares.
struct Shared {
    model: VmModel,
    vm: Vm,
    /// vCPU `n` runs on host CPU `host_cpus[n]` with MPIDR `mpidrs[n]`.
    host_cpus: Vec<usize>,
    mpidrs: Vec<u64>,
    mailboxes: Vec<Mailbox>,
    /// Physical-counter value at which the guest is stopped (`u64::MAX`: never).
    deadline: u64,
    tick: u64,
    /// CNTVOFF_EL2 of every vCPU: the physical count when the VM was created, so the
    /// guest's virtual count starts near zero (as KVM).
    cntvoff: u64,
}

/// The running VM's shared state: a leaked `Box<Shared>` from [`run`] until every vCPU
/// thread has returned, null otherwise.
static SHARED: AtomicPtr<Shared> = AtomicPtr::new(core::ptr::null_mut());

/// The running VM, if any.
fn shared() -> Option<&'static Shared> {
    let p = SHARED.load(Ordering::Acquire);
    // SAFETY: a non-null pointer is the Box `run` published, which stays allocated until
    // `run` has seen every vCPU thread return and cleared the pointer.
    unsafe { p.as_ref() }
}

impl Shared {
    /// Ends the VM (first end wins) and kicks every vCPU's host CPU but this one.
    fn finish(&self, e: VmEnd) -> VmEnd {
        let end = self.model.end(e);
        let me = smp::this_cpu_index();
        for &cpu in &self.host_cpus {
            if Some(cpu) != me {
                if let Some(m) = smp::mpidr_of(cpu) {
                    gic::send_sgi(gic::SGI_KICK, m);
                }
            }
        }
        end
    }

    /// Kicks the host CPUs of the vCPUs in `mask` (bit n = vCPU n) but `me`'s.
    fn kick(&self, mask: u64, me: usize) {
        for (v, &cpu) in self.host_cpus.iter().enumerate() {
            if v != me && mask & (1 << v) != 0 {
                if let Some(m) = smp::mpidr_of(cpu) {
                    gic::send_sgi(gic::SGI_KICK, m);
                }
            }
        }
    }

    fn start_vcpu(&self, vcpu: usize, entry: u64, context: u64) {
        let (Some(m), Some(&cpu)) = (self.mailboxes.get(vcpu), self.host_cpus.get(vcpu)) else {
            return;
        };
        m.entry.store(entry, Ordering::Relaxed);
        m.context.store(context, Ordering::Relaxed);
        m.pending.store(1, Ordering::Release);
        if let Some(mpidr) = smp::mpidr_of(cpu) {
            gic::send_sgi(gic::SGI_KICK, mpidr);
        }
    }
}

/// Copies the planned files into guest RAM and cleans them to the point of coherency.
fn load(
    launch: &Launch,
    ram_va: u64,
    ram_len: u64,
    bundle: &Bundle<'_>,
) -> Result<(), alloc::string::String> {
    // SAFETY: the guest RAM carve-out is RAM the host reserved for this guest alone and
    // maps RW in its linear map at `ram_va`; no other reference to it exists.
    let ram = unsafe { core::slice::from_raw_parts_mut(ram_va as *mut u8, ram_len as usize) };
    guest_image::copy_into_ram(
        ram,
        map::RAM_BASE,
        &launch.layout,
        bundle.kernel,
        bundle.initrd,
        &launch.dtb,
    )
    .map_err(|e| alloc::format!("{e}"))?;
    let l = &launch.layout;
    let mut ranges = alloc::vec![l.kernel_reserved.clone(), l.dtb.clone()];
    ranges.extend(l.initrd.clone());
    for r in ranges {
        cache::clean_to_poc(
            (ram_va + (r.start - map::RAM_BASE)) as usize,
            (r.end - r.start) as usize,
        );
    }
    Ok(())
}

/// Entropy for the guest's `/chosen/rng-seed`: RNDR where the host has it, else mixed
/// counter values (still different per boot under TCG, not cryptographic).
fn rng_seed() -> [u8; 32] {
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        let v = crate::arch::rng::random_u64().unwrap_or_else(|| {
            timer::now().rotate_left(17 * i as u32)
                ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1)
        });
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    seed
}

/// Measures `n` null host→hyp calls (Ping) with CNTVCT, like the guest's benchmarks.
fn bench_host_ping(n: u64) {
    let func = HcallId::Ping.smccc_func();
    let start = crate::arch::sysreg::cntvct_el0();
    for _ in 0..n {
        let mut x0 = func;
        // SAFETY: Ping has no effect; the hyp returns with x0/x1 written and restores
        // every other register (x2–x4 declared clobbered to stay independent of that).
        unsafe {
            core::arch::asm!(
                "hvc #0",
                inout("x0") x0,
                lateout("x1") _,
                lateout("x2") _,
                lateout("x3") _,
                lateout("x4") _,
                options(nostack, nomem),
            )
        };
        core::hint::black_box(x0);
    }
    barrier::isb();
    let ticks = crate::arch::sysreg::cntvct_el0().wrapping_sub(start);
    println!(
        "host: {}{} iterations={n} cycles={ticks}",
        guest_abi::BENCH_PREFIX,
        guest_abi::BENCH_HOST_PING
    );
}

/// Runs the guest of `found` to its end and prints the exit line; returns the guest's
/// status.
pub fn run(found: Found, linear: &LinearMap) -> u32 {
    let Ok(bundle_va) = linear.pa_to_va(found.bundle.start) else {
        return refuse("the bundle is not in the linear map");
    };
    let len = (found.bundle.end - found.bundle.start) as usize;
    // SAFETY: `find_bundle` checked that the range is RAM; it was reserved from the heap.
    let bytes = unsafe { core::slice::from_raw_parts(bundle_va as *const u8, len) };
    let bundle = match Bundle::parse(bytes) {
        Ok(b) => b,
        Err(e) => return refuse(&alloc::format!("{e}")),
    };
    let host_cpus: Vec<usize> = smp::this_cpu_index()
        .into_iter()
        .chain(smp::online_cpus().filter(|&c| Some(c) != smp::this_cpu_index()))
        .collect();
    let host_mpidrs: Vec<u64> = host_cpus.iter().filter_map(|&c| smp::mpidr_of(c)).collect();
    let launch = match launch::plan(&bundle, &host_mpidrs, &rng_seed()) {
        Ok(l) => l,
        Err(e) => return refuse(&alloc::format!("{e}")),
    };
    let nvcpus = launch.mpidrs.len();
    println!(
        "guest {VM_ID}: kernel {:?} {} bytes at {:#x}, initrd {}, dtb at {:#x}, ram {:#x}..{:#x} \
         (host pa {:#x}), vcpus={nvcpus}, bootargs {:?}",
        launch.layout.format,
        bundle.kernel.len(),
        launch.layout.entry,
        launch
            .layout
            .initrd
            .as_ref()
            .map_or("none".into(), |r| alloc::format!(
                "{:#x}..{:#x}",
                r.start,
                r.end
            )),
        launch.layout.dtb.start,
        launch.ram.start,
        launch.ram.end,
        found.ram.start,
        // Debug-quoted: a command line with a line break or an escape sequence must not
        // start a console line of its own (one that could read as a status line).
        bundle.append
    );
    let Ok(ram_va) = linear.pa_to_va(found.ram.start) else {
        return refuse("guest RAM is not in the linear map");
    };
    if let Err(e) = load(&launch, ram_va, found.ram.end - found.ram.start, &bundle) {
        return refuse(&e);
    }
    let guest_mem = found.ram.end - found.ram.start;
    let pool_pages = 32 + guest_mem.div_ceil(1 << 30) * 2;
    let vm = match Vm::create(pool_pages, IPA_BITS) {
        Ok(vm) => vm,
        Err(e) => return refuse(&alloc::format!("cannot create the VM: {e}")),
    };
    if let Err(e) = vm.map(map::RAM_BASE, found.ram.start, guest_mem) {
        return refuse(&alloc::format!("cannot map guest RAM: {e}"));
    }
    let d = vm.descriptor();
    log::info!(
        "guest {VM_ID}: vm handle={:#x} vmid={} ipa_bits={} s2 root={:#x}",
        d.handle,
        d.vmid,
        d.ipa_bits,
        d.root_pa
    );

    let mut bus = MmioBus::new();
    let vgic: SharedVgic = Arc::new(spin::Mutex::new(Vgic::new(&launch.mpidrs)));
    // The virtual timer's interrupt is linked to its physical PPI (LR.HW).
    vgic.lock().link_hw(INTID_VTIMER, INTID_VTIMER as u16);
    let gicr_size = nvcpus as u64 * map::GICR_STRIDE;
    for (base, size, dev) in [
        (
            map::GICD_BASE,
            map::GICD_SIZE,
            Box::new(GicdDevice(vgic.clone())) as Box<dyn el1_host::vmm::mmio::MmioDevice>,
        ),
        (
            map::GICR_BASE,
            gicr_size,
            Box::new(GicrDevice(vgic.clone())),
        ),
    ] {
        if let Err(e) = bus.add(base, size, dev) {
            return refuse(&alloc::format!("{e}"));
        }
    }
    let pl011 = Pl011::new(Box::new(|line: &str| println!("guest {VM_ID}: {line}")));
    if let Err(e) = bus.add(map::PL011_BASE, map::PL011_SIZE, Box::new(pl011)) {
        return refuse(&alloc::format!("{e}"));
    }
    let psci = match Psci::new(
        &launch.mpidrs,
        0,
        launch.ram.clone(),
        ArchWorkarounds::default(),
    ) {
        Ok(p) => p,
        Err(e) => return refuse(&alloc::format!("{e}")),
    };
    let freq = timer::frequency();
    let deadline = match launch.timeout_secs {
        0 => u64::MAX,
        s => timer::now().saturating_add(u64::from(s).saturating_mul(freq)),
    };
    if let Some(n) = guest_abi::bench_iterations(bundle.append) {
        bench_host_ping(n);
    }
    let boxed = Box::new(Shared {
        // The guest's ID registers: the host's sanitised ones, filtered to what the hyp
        // virtualises (TID3 traps every read to the VMM).
        model: VmModel::new(VM_ID, psci, bus, vgic)
            .with_clock(timer::now)
            .with_id_regs(GuestIdRegs::from_final(
                crate::cpufeature::final_caps(),
                d.ipa_bits as u8,
            )),
        vm,
        host_cpus: host_cpus[..nvcpus].to_vec(),
        mpidrs: launch.mpidrs.clone(),
        mailboxes: (0..nvcpus)
            .map(|_| Mailbox {
                entry: AtomicU64::new(0),
                context: AtomicU64::new(0),
                pending: AtomicU64::new(0),
            })
            .collect(),
        deadline,
        tick: (freq / TICKS_PER_SEC_DIVISOR).max(1),
        cntvoff: timer::now(),
    });
    let raw = Box::into_raw(boxed);
    SHARED.store(raw, Ordering::Release);
    // SAFETY: just leaked; freed below only after every vCPU thread has returned.
    let shared: &Shared = unsafe { &*raw };
    for &cpu in &shared.host_cpus[1..] {
        if let Err(e) = smp::start_on(cpu, vcpu_thread) {
            log::error!("guest {VM_ID}: cannot start a vCPU thread: {e}");
            shared.finish(VmEnd::ERROR);
        }
    }
    shared.start_vcpu(0, launch.layout.entry, launch.layout.dtb.start);
    vcpu_thread_on(shared, 0);

    // Wait for the other vCPU threads to return (each was kicked by `finish`).
    let join_deadline = timer::now() + JOIN_TIMEOUT_SECS * freq;
    let mut joined = true;
    for &cpu in &shared.host_cpus[1..] {
        while !smp::is_idle(cpu) && timer::now() < join_deadline {
            core::hint::spin_loop();
        }
        if !smp::is_idle(cpu) {
            log::error!("guest {VM_ID}: the vCPU thread on cpu{cpu} did not stop");
            joined = false;
        }
    }
    timer::disarm();
    shared.model.bus.lock().flush();
    let end = shared.model.ended().unwrap_or(VmEnd::ERROR);
    if end.reason == guest_abi::ExitReason::Timeout {
        println!(
            "guest {VM_ID}: stopped by the host: no end within the {} s time limit",
            launch.timeout_secs
        );
    }
    log::info!(
        "guest {VM_ID}: host interrupts: ticks={} kicks={} unexpected={}",
        irq::COUNTS.ticks.load(Ordering::Relaxed),
        irq::COUNTS.kicks.load(Ordering::Relaxed),
        irq::COUNTS.unexpected.load(Ordering::Relaxed)
    );
    if joined {
        SHARED.store(core::ptr::null_mut(), Ordering::Release);
        // SAFETY: every vCPU thread has returned and the pointer is withdrawn, so this
        // is the only reference to the Box leaked above.
        let owned = unsafe { Box::from_raw(raw) };
        if let Err((_, e)) = owned.vm.destroy() {
            log::warn!("guest {VM_ID}: VmDestroy failed: {e}");
        }
    }
    report(end)
}

/// The work item of a secondary host CPU: runs the vCPU assigned to it.
fn vcpu_thread(cpu: usize) {
    let Some(s) = shared() else { return };
    if let Some(v) = s.host_cpus.iter().position(|&c| c == cpu) {
        vcpu_thread_on(s, v);
    }
}

/// Waits for vCPU `v` to be started, runs it until it is off, and again, until the VM
/// ends.
fn vcpu_thread_on(s: &Shared, v: usize) {
    let Some(mb) = s.mailboxes.get(v) else { return };
    let mut ctx = Box::new(VcpuContext::default());
    loop {
        // Wait for a start or the end.
        loop {
            if s.model.ended().is_some() {
                timer::disarm();
                return;
            }
            if mb.pending.swap(0, Ordering::Acquire) == 1 {
                break;
            }
            if !check_deadline(s) {
                continue;
            }
            arm_tick(s.tick);
            irq::wait_for_interrupt();
        }
        *ctx = VcpuContext::new(
            mb.entry.load(Ordering::Relaxed),
            mb.context.load(Ordering::Relaxed),
            s.mpidrs[v],
        );
        ctx.cntvoff = s.cntvoff;
        s.model.psci.vcpu_started(v);
        if run_vcpu(s, v, &mut ctx) {
            timer::disarm();
            return;
        }
    }
}

/// Arms the tick unless it is armed already.
fn arm_tick(ticks: u64) {
    if !timer::armed() {
        timer::arm_in(ticks);
    }
}

/// Ends the VM if its deadline passed; true while it may go on.
fn check_deadline(s: &Shared) -> bool {
    if timer::now() >= s.deadline {
        s.finish(VmEnd::TIMEOUT);
        return false;
    }
    true
}

/// The guest's timers and this host CPU's part of the vCPU's interrupt delivery.
struct VcpuIrqs {
    /// The physical virtual-timer PPI is active (set by the host for LR.HW).
    phys_vtimer_active: bool,
}

/// Updates the timer lines of vCPU `v` at `now` and returns the earliest host-timer
/// deadline its timers need (physical count). A deadline that has passed needs no
/// wake-up (its line is up already); arming the host timer for it would only make it
/// fire again and again.
fn update_timers(s: &Shared, v: usize, ctx: &VcpuContext, now: u64) -> Option<u64> {
    let vnow = now.wrapping_sub(s.cntvoff);
    let (vctl, vcval) = (ctx.sys.cntv_ctl_el0, ctx.sys.cntv_cval_el0);
    let ptimer = *s.model.ptimers[v].lock();
    let mut g = s.model.vgic.lock();
    g.set_level(v, INTID_VTIMER, guest_timer::level(vctl, vcval, vnow));
    g.set_level(v, INTID_PTIMER, ptimer.level(now));
    let vdeadline = guest_timer::deadline(vctl, vcval).map(|c| c.wrapping_add(s.cntvoff));
    [vdeadline, ptimer.deadline()]
        .into_iter()
        .flatten()
        .filter(|&d| d > now)
        .min()
}

/// WFI: waits on the host until an interrupt for vCPU `v` is pending (the vGIC's
/// check, which the guest's timers feed) or a kick or the tick arrives. Returns at once
/// if one is pending already. A kick sent after the check is still pending at the GIC,
/// so the WFI below returns: no wake-up is lost.
fn wait_for_guest_interrupt(s: &Shared, v: usize, ctx: &VcpuContext) {
    let now = timer::now();
    let timers = update_timers(s, v, ctx, now);
    if s.model.vgic.lock().has_pending(v, ctx.vgic.vmcr) {
        return;
    }
    let tick = now.saturating_add(s.tick);
    timer::arm_at(timers.map_or(tick, |t| t.min(tick)));
    irq::wait_for_interrupt();
}

/// Runs vCPU `v` until it is off (false) or the VM ends (true).
fn run_vcpu(s: &Shared, v: usize, ctx: &mut VcpuContext) -> bool {
    let mut irqs = VcpuIrqs {
        phys_vtimer_active: false,
    };
    let stop = run_vcpu_loop(s, v, ctx, &mut irqs);
    if irqs.phys_vtimer_active {
        gic::set_ppi_active(INTID_VTIMER, false);
    }
    stop
}

fn run_vcpu_loop(s: &Shared, v: usize, ctx: &mut VcpuContext, irqs: &mut VcpuIrqs) -> bool {
    loop {
        if s.model.ended().is_some() || !check_deadline(s) {
            return true;
        }
        let now = timer::now();
        let timers = update_timers(s, v, ctx, now);
        let flushed = s.model.vgic.lock().flush(v, &mut ctx.vgic);
        let want = flushed.hw_ppis & (1 << INTID_VTIMER) != 0;
        if want != irqs.phys_vtimer_active {
            gic::set_ppi_active(INTID_VTIMER, want);
            irqs.phys_vtimer_active = want;
        }
        // The tick bounds the run; a timer deadline ends it early (the virtual
        // timer would fire by itself through its physical PPI, unless that is held
        // active; waking for it too costs one exit at most).
        let tick = now.saturating_add(s.tick);
        timer::arm_at(timers.map_or(tick, |t| t.min(tick)));
        let exit = match s.vm.run_vcpu(ctx) {
            Ok(e) => e,
            Err(e) => {
                println!("guest {VM_ID}: vcpu{v}: VcpuRun failed: {e}");
                s.finish(VmEnd::ERROR);
                return true;
            }
        };
        // A hardware-linked interrupt the guest deactivated took its physical PPI's
        // active state with it.
        irqs.phys_vtimer_active = s.model.vgic.lock().sync(v, &ctx.vgic) & (1 << INTID_VTIMER) != 0;
        let step = s.model.handle_exit(v, ctx, exit);
        let kicks = s.model.vgic.lock().take_kicks();
        s.kick(kicks, v);
        match step {
            Step::Resume => {}
            Step::HostIrq => irq::window(),
            Step::Wait { wfe: true } => {
                timer::arm_in((s.tick / (WFE_DIVISOR / TICKS_PER_SEC_DIVISOR)).max(1));
                irq::wait_for_interrupt();
            }
            Step::Wait { wfe: false } => wait_for_guest_interrupt(s, v, ctx),
            Step::Start {
                vcpu,
                entry,
                context,
            } => s.start_vcpu(vcpu, entry, context),
            Step::Off => return false,
            Step::End(e) => {
                s.finish(e);
                return true;
            }
        }
    }
}
