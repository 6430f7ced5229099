//! VMs and the VM hypercalls (`VmCreate`, `VmMap`, `VmUnmap`, `VcpuRun`, `VmDestroy`;
//! ABI in `shared::vcpu`): the static VM table (no heap at EL2), the checks on every
//! piece of host memory the host names, the stage-2 tables built in the host-given pool
//! with `shared::stage2`'s walker, the TLB invalidation after an unmap, and the
//! hand-over to the world switch.
//!
//! Host memory arrives as linear-map VAs. Before the hyp touches any, it checks the
//! range lies in the linear map, translates it with `kern_hyp_va`, refuses it if it
//! overlaps the hyp's carve-out (told by `FinaliseSetup`), and asks its own stage 1
//! (AT S1E2W) for every page, which also yields the PAs (and proves contiguity).

use crate::entry::HostContext;
use crate::{switch, sysreg};
use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use shared::cpucaps::Cap;
use shared::hypercall::HcallError;
use shared::stage2::{
    self, s2_attributes, tlbi_ipa_ops, vtcr_from_id_regs, vttbr_el2, MapError, S2Access, S2MemType,
    Stage2Geometry, TableMemory, VmidBits,
};
use shared::vcpu::{
    self, check_context_ptr, check_map_args, check_unmap_args, prepare_entry, split_vm_handle,
    vm_handle, EntrySnapshot, TlbiPath, VcpuContext, MAX_VMS, PAGE,
};
use shared::{cap_likely, cap_unlikely};

/// Hyp VA of the carve-out's first byte and its size (0: not told yet).
static CARVE_HVA: AtomicU64 = AtomicU64::new(0);
static CARVE_SIZE: AtomicU64 = AtomicU64::new(0);

/// Records the carve-out (`FinaliseSetup`): linear VA and size from the host.
pub fn set_carveout(linear_va: u64, size: u64) -> Result<(), HcallError> {
    if size == 0 {
        return Ok(());
    }
    if !linear_va.is_multiple_of(PAGE) || !size.is_multiple_of(PAGE) {
        return Err(HcallError::Misaligned);
    }
    vcpu::check_linear_range(linear_va, size)?;
    CARVE_HVA.store(
        shared::alternative::kern_hyp_va(linear_va),
        Ordering::Relaxed,
    );
    CARVE_SIZE.store(size, Ordering::Release);
    Ok(())
}

/// Whether `[hva, hva + bytes)` (hyp VAs) overlaps the carve-out; `false` until
/// `FinaliseSetup` named it.
pub fn overlaps_carveout(hva: u64, bytes: u64) -> bool {
    let size = CARVE_SIZE.load(Ordering::Acquire);
    let carve = CARVE_HVA.load(Ordering::Relaxed);
    let end = hva.saturating_add(bytes);
    size != 0 && hva < carve.wrapping_add(size) && end > carve
}

/// Checks host memory `[va, va + bytes)` (a linear VA) and returns its hyp VA and PA.
/// The range must be physically contiguous.
fn host_range(va: u64, bytes: u64) -> Result<(u64, u64), HcallError> {
    vcpu::check_linear_range(va, bytes)?;
    if CARVE_SIZE.load(Ordering::Acquire) == 0 {
        return Err(HcallError::NotReady);
    }
    let hva = shared::alternative::kern_hyp_va(va);
    let end = hva.checked_add(bytes).ok_or(HcallError::OutOfRange)?;
    if overlaps_carveout(hva, bytes) {
        return Err(HcallError::HypMemory);
    }
    let first = hva & !(PAGE - 1);
    let pa0 = sysreg::translate_write(first).ok_or(HcallError::NotMapped)?;
    let mut page = first;
    while page < end {
        match sysreg::translate_write(page) {
            Some(pa) if pa == pa0 + (page - first) => {}
            Some(_) => return Err(HcallError::OutOfRange),
            None => return Err(HcallError::NotMapped),
        }
        page += PAGE;
    }
    Ok((hva, pa0 + (hva - first)))
}

/// A VM's stage-2 table pool: host pages at a hyp VA, handed out in order.
struct Pool {
    hva: u64,
    pa: u64,
    pages: u64,
    used: u64,
}

impl TableMemory for Pool {
    fn table(&mut self, pa: u64) -> Option<&mut [u64; 512]> {
        let off = pa.checked_sub(self.pa)?;
        if !off.is_multiple_of(PAGE) || off / PAGE >= self.used {
            return None;
        }
        // SAFETY: a page of the pool (checked against the pages handed out), which the
        // host gave the hyp for this VM and mapped at `hva` (checked at create); the
        // VM's lock is held, so no other hyp code writes it.
        Some(unsafe { &mut *((self.hva + off) as *mut [u64; 512]) })
    }

    fn alloc(&mut self) -> Option<u64> {
        if self.used >= self.pages {
            return None;
        }
        let off = self.used * PAGE;
        self.used += 1;
        // SAFETY: as in `table`: a pool page no table uses yet.
        unsafe { core::ptr::write_bytes((self.hva + off) as *mut u8, 0, PAGE as usize) };
        Some(self.pa + off)
    }

    fn free_pages(&self) -> u64 {
        self.pages - self.used
    }
}

/// Whether PAs `[pa, pa + bytes)` overlap the pool's pages.
fn overlaps_pool(pool: &Pool, pa: u64, bytes: u64) -> bool {
    let pool_end = pool.pa + pool.pages * PAGE;
    pa < pool_end && pa.saturating_add(bytes) > pool.pa
}

/// The exit writes guest-chosen registers into the context: it must not lie in the VM's
/// own stage-2 tables (a guest could forge descriptors there).
fn check_context_not_pool(vm: &VmState, ctx_pa: u64) -> Result<(), HcallError> {
    if overlaps_pool(&vm.pool, ctx_pa, vcpu::VCPU_CONTEXT_SIZE as u64) {
        return Err(HcallError::HypMemory);
    }
    Ok(())
}

/// One VM (hyp-owned).
struct VmState {
    live: bool,
    generation: u32,
    geometry: Stage2Geometry,
    vtcr: u64,
    vttbr: u64,
    root_pa: u64,
    pool: Pool,
}

/// A slot of the VM table: a lock around the state, and the count of vCPUs running
/// (read by destroy under the lock).
struct VmSlot {
    lock: AtomicBool,
    running: AtomicU32,
    state: UnsafeCell<VmState>,
}

// SAFETY: `state` is only touched with `lock` held (see `with_slot`).
unsafe impl Sync for VmSlot {}

/// A free slot.
const fn empty_slot() -> VmSlot {
    VmSlot {
        lock: AtomicBool::new(false),
        running: AtomicU32::new(0),
        state: UnsafeCell::new(VmState {
            live: false,
            generation: 0,
            geometry: Stage2Geometry {
                ipa_bits: 0,
                levels: 0,
                start_level: 0,
                root_entries: 0,
                root_pages: 0,
            },
            vtcr: 0,
            vttbr: 0,
            root_pa: 0,
            pool: Pool {
                hva: 0,
                pa: 0,
                pages: 0,
                used: 0,
            },
        }),
    }
}

static VMS: [VmSlot; MAX_VMS] = [const { empty_slot() }; MAX_VMS];

/// Runs `f` with slot `i`'s lock held.
fn with_slot<R>(i: usize, f: impl FnOnce(&VmSlot, &mut VmState) -> R) -> R {
    let slot = &VMS[i];
    while slot
        .lock
        .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
        .is_err()
    {
        core::hint::spin_loop();
    }
    // SAFETY: the lock is held, so this is the only reference to the state.
    let r = f(slot, unsafe { &mut *slot.state.get() });
    slot.lock.store(false, Ordering::Release);
    r
}

/// Runs `f` on the live VM with this handle.
fn with_vm<R>(
    handle: u64,
    f: impl FnOnce(&VmSlot, &mut VmState) -> Result<R, HcallError>,
) -> Result<R, HcallError> {
    let (i, gen) = split_vm_handle(handle).ok_or(HcallError::BadHandle)?;
    sysreg::speculation_barrier();
    with_slot(i, |slot, vm| {
        if !vm.live || vm.generation != gen {
            return Err(HcallError::BadHandle);
        }
        f(slot, vm)
    })
}

fn map_error(e: MapError) -> HcallError {
    match e {
        MapError::Overlap { .. } => HcallError::Overlap,
        MapError::NoMemory { .. } => HcallError::NoMemory,
        MapError::NotMapped { .. } => HcallError::NotGuestMapped,
        MapError::CorruptTable { .. } | MapError::BadRange => HcallError::OutOfRange,
    }
}

/// `VmCreate`: x1 pool VA, x2 pool bytes, x3 IPA bits (0 = default).
pub fn handle_create(ctxt: &mut HostContext) -> Result<(), HcallError> {
    let (pool_va, pool_bytes, want) = (ctxt.regs[1], ctxt.regs[2], ctxt.regs[3]);
    let (mmfr0, mmfr1) = sysreg::mmfr0_mmfr1();
    let requested = match want {
        0 => None,
        b if b <= 64 => Some(b as u8),
        _ => return Err(HcallError::BadIpaBits),
    };
    let ipa_bits = stage2::select_ipa_bits(mmfr0, requested).map_err(|_| HcallError::BadIpaBits)?;
    let geometry = Stage2Geometry::new(ipa_bits).map_err(|_| HcallError::BadIpaBits)?;
    let pages = vcpu::check_pool(pool_va, pool_bytes, ipa_bits)?;
    let (hva, pa) = host_range(pool_va, pool_bytes)?;
    let vtcr = vtcr_from_id_regs(mmfr0, mmfr1, ipa_bits).map_err(|_| HcallError::BadIpaBits)?;
    let vmid_bits = VmidBits::from_mmfr1(mmfr1);
    let cnp = cap_likely!(Cap::HasCnp);
    for i in 0..MAX_VMS {
        let made = with_slot(i, |_, vm| {
            if vm.live {
                return None;
            }
            let generation = vm.generation.wrapping_add(1) & 0xff_ffff;
            let generation = generation.max(1);
            let vmid = (i + 1) as u16;
            let mut pool = Pool {
                hva,
                pa,
                pages,
                used: 0,
            };
            // The root: the first (possibly several, concatenated) pages.
            for _ in 0..geometry.root_pages {
                pool.alloc()?;
            }
            let vttbr = vttbr_el2(vmid, vmid_bits, pa, &geometry, cnp).ok()?;
            *vm = VmState {
                live: true,
                generation,
                geometry,
                vtcr,
                vttbr,
                root_pa: pa,
                pool,
            };
            Some((vm_handle(i, generation), vmid))
        });
        if let Some((handle, vmid)) = made {
            sysreg::publish_tables();
            ctxt.regs[1] = handle;
            ctxt.regs[2] = u64::from(vmid);
            ctxt.regs[3] = u64::from(ipa_bits);
            ctxt.regs[4] = pa;
            return Ok(());
        }
    }
    Err(HcallError::TooManyVms)
}

/// `VmMap`: x1 handle, x2 IPA, x3 backing VA, x4 bytes.
pub fn handle_map(ctxt: &mut HostContext) -> Result<(), HcallError> {
    let (handle, ipa, va, bytes) = (ctxt.regs[1], ctxt.regs[2], ctxt.regs[3], ctxt.regs[4]);
    with_vm(handle, |_, vm| {
        check_map_args(ipa, va, bytes, vm.geometry.ipa_bits)?;
        let (_, pa) = host_range(va, bytes)?;
        // The VM's own tables must not become guest memory.
        if overlaps_pool(&vm.pool, pa, bytes) {
            return Err(HcallError::HypMemory);
        }
        let fwb = cap_unlikely!(Cap::HasStage2Fwb);
        let attrs = s2_attributes(S2MemType::Normal, S2Access::ReadWrite, true, fwb)
            .map_err(|_| HcallError::OutOfRange)?;
        let geometry = vm.geometry;
        stage2::map_range(&mut vm.pool, &geometry, vm.root_pa, ipa, pa, bytes, attrs)
            .map_err(map_error)?;
        sysreg::publish_tables();
        Ok(())
    })?;
    ctxt.regs[1] = 0;
    Ok(())
}

/// `VmUnmap`: x1 handle, x2 IPA, x3 bytes. Reply x1 = [`TlbiPath`], x2 = TLBI-by-IPA
/// instructions issued.
///
/// Under the VM's lock with no vCPU running, so no walker uses the tables while they
/// change and none can start before the TLBs are clean: checks (arguments, the
/// invalidation operands, every page mapped, pool space for splits), then the stage-2
/// entries, then the invalidation of exactly the range.
pub fn handle_unmap(ctxt: &mut HostContext) -> Result<(), HcallError> {
    let (handle, ipa, bytes) = (ctxt.regs[1], ctxt.regs[2], ctxt.regs[3]);
    let (path, issued) = with_vm(handle, |slot, vm| {
        if slot.running.load(Ordering::Acquire) != 0 {
            return Err(HcallError::Busy);
        }
        check_unmap_args(ipa, bytes, vm.geometry.ipa_bits)?;
        let range = sysreg::tlb_range();
        // Built before anything changes: the tables are never left cleared with the
        // TLBs unmaintained.
        let ops = tlbi_ipa_ops(ipa, bytes, range).map_err(|_| HcallError::OutOfRange)?;
        let geometry = vm.geometry;
        stage2::unmap_range(&mut vm.pool, &geometry, vm.root_pa, ipa, bytes).map_err(map_error)?;
        let issued = sysreg::invalidate_ipa_range(vm.vttbr, ops);
        let path = if range {
            TlbiPath::Range
        } else {
            TlbiPath::PerPage
        };
        Ok((path, issued))
    })?;
    ctxt.regs[1] = path as u64;
    ctxt.regs[2] = issued;
    Ok(())
}

/// `VmDestroy`: x1 handle.
pub fn handle_destroy(ctxt: &mut HostContext) -> Result<(), HcallError> {
    with_vm(ctxt.regs[1], |slot, vm| {
        if slot.running.load(Ordering::Acquire) != 0 {
            return Err(HcallError::Busy);
        }
        sysreg::flush_vmid(vm.vttbr);
        vm.live = false;
        vm.pool = Pool {
            hva: 0,
            pa: 0,
            pages: 0,
            used: 0,
        };
        Ok(())
    })?;
    ctxt.regs[1] = 0;
    Ok(())
}

/// `VcpuRun`: x1 handle, x2 context VA. Reply x1 = exit kind.
pub fn handle_run(ctxt: &mut HostContext) -> Result<(), HcallError> {
    let (handle, va) = (ctxt.regs[1], ctxt.regs[2]);
    check_context_ptr(va)?;
    let (hva, ctx_pa) = host_range(va, vcpu::VCPU_CONTEXT_SIZE as u64)?;
    // Before the claim writes the context's `running` word: never into the VM's tables.
    with_vm(handle, |_, vm| check_context_not_pool(vm, ctx_pa))?;
    // SAFETY: the context is 16-byte aligned, mapped writable at `hva` for its whole
    // size (checked page by page), and not hyp memory. `running` is a u64 inside it.
    let running = unsafe { &*((hva + vcpu::offset::RUNNING as u64) as *const AtomicU64) };
    let marker = crate::sysreg::tpidr_el2() | 1;
    if !switch::claim(running, marker) {
        return Err(HcallError::Busy);
    }
    // SAFETY: as above; claimed for this CPU, so no other hyp code uses it. The host
    // may still write it (nVHE trusts the host with its own memory); the hyp reads only
    // plain integers from it and validates what it uses.
    let ctx = unsafe { &mut *(hva as *mut VcpuContext) };
    let r = run_claimed(handle, ctx, ctx_pa);
    switch::release(running);
    let kind = r?;
    ctxt.regs[1] = u64::from(kind);
    Ok(())
}

fn run_claimed(handle: u64, ctx: &mut VcpuContext, ctx_pa: u64) -> Result<u32, HcallError> {
    // One copy of what decides the entry; checked and used from here on (another host
    // CPU may rewrite the context meanwhile: a PSTATE re-read after the check could name
    // EL2).
    let snapshot = snapshot_entry(ctx);
    let entry = prepare_entry(snapshot, cap_likely!(Cap::HasPan), cap_likely!(Cap::Ssbs))?;
    let (vttbr, vtcr) = with_vm(handle, |slot, vm| {
        // Again under the lock where the run is counted (the handle may name a new VM
        // by now).
        check_context_not_pool(vm, ctx_pa)?;
        slot.running.fetch_add(1, Ordering::AcqRel);
        Ok((vm.vttbr, vm.vtcr))
    })?;
    if let Some(a) = entry.injected {
        switch::record_injection(ctx, &a);
    }
    let exit = switch::run(ctx, &entry, vttbr, vtcr);
    if let Some((i, _)) = split_vm_handle(handle) {
        VMS[i].running.fetch_sub(1, Ordering::AcqRel);
    }
    Ok(exit.encode().kind)
}

/// Reads the entry fields of a context in host memory, each exactly once.
fn snapshot_entry(ctx: &VcpuContext) -> EntrySnapshot {
    // SAFETY: each pointer is to a u64 field of the mapped, aligned context; the host may
    // write them concurrently, so each is read once, volatile, into hyp memory.
    unsafe {
        EntrySnapshot {
            pc: core::ptr::read_volatile(&ctx.gpr.pc),
            pstate: core::ptr::read_volatile(&ctx.gpr.pstate),
            inject_kind: core::ptr::read_volatile(&ctx.inject.kind),
            inject_far: core::ptr::read_volatile(&ctx.inject.far),
            vbar_el1: core::ptr::read_volatile(&ctx.sys.vbar_el1),
            sctlr_el1: core::ptr::read_volatile(&ctx.sys.sctlr_el1),
        }
    }
}
