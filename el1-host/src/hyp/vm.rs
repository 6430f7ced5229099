//! Safe host wrappers of the hyp's VM calls (`VmCreate`, `VmMap`, `VmUnmap`, `VcpuRun`,
//! `VmDestroy`; the ABI is documented in `shared::vcpu`).
//!
//! The hyp takes host memory only as linear-map VAs. These wrappers translate: the pool
//! they allocate themselves (from the heap, which may hand out KIMAGE VAs from its
//! static block), guest RAM is named by PA ([`Vm::map`]; [`pa_of`] gives the PA of a
//! host object), and a vCPU context may live anywhere in host RAM.
//!
//! ```ignore
//! let vm = Vm::create(64, None)?;                  // 64 pool pages, default IPA size
//! vm.map(0x4000_0000, pa_of(ram.as_ptr())?, ram.len() as u64)?;
//! vm.unmap(0x4000_0000, 0x1000)?;                 // gone from stage 2 and the TLBs
//! let mut vcpu = VcpuContext::new(entry, dtb_ipa, 0);
//! loop {
//!     match vm.run_vcpu(&mut vcpu)? { Exit::Hvc { .. } => …, … }
//! }
//! vm.destroy()?;
//! ```

use alloc::alloc::{alloc_zeroed, dealloc, Layout};
use core::fmt;
use el1_host::layout::{KIMAGE_VADDR, PAGE_OFFSET, PAGE_SIZE};
use shared::exit::{Exit, ExitRecordError};
use shared::hypercall::{self, HcallFailure, HcallId};
use shared::vcpu::{TlbiPath, VcpuContext, VmDescriptor};

/// What the wrappers need to know about the host's layout, set by the hyp install.
#[derive(Clone, Copy, Debug)]
struct HostLayout {
    /// PA that the linear map's first VA maps.
    memstart: u64,
    /// KIMAGE VA − PA.
    kimage_voffset: u64,
    /// Bytes of the kernel image mapping at `KIMAGE_VADDR`.
    kimage_size: u64,
}

static LAYOUT: spin::Once<HostLayout> = spin::Once::new();

/// Records the layout; called once by `hyp::install` when the hyp is ready.
pub(super) fn init(memstart: u64, kimage_voffset: u64, kimage_size: u64) {
    LAYOUT.call_once(|| HostLayout {
        memstart,
        kimage_voffset,
        kimage_size,
    });
}

/// Why a VM call failed on the host side or in the hyp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmError {
    /// No hyp is installed (or it is not ready for VM calls).
    NoHyp,
    /// A host address is neither in the linear map nor in the kernel image.
    NotHostMemory(u64),
    /// The pool could not be allocated.
    OutOfMemory {
        /// Bytes asked for.
        bytes: u64,
    },
    /// The hyp refused the call.
    Hyp(HcallId, HcallFailure),
    /// The hyp wrote an exit record that does not decode.
    BadExit(ExitRecordError),
    /// The hyp succeeded but replied with a value this ABI does not define.
    BadReply(HcallId, u64),
}

impl fmt::Display for VmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmError::NoHyp => f.write_str("no hyp installed"),
            VmError::NotHostMemory(va) => write!(f, "{va:#x} is not host RAM"),
            VmError::OutOfMemory { bytes } => write!(f, "cannot allocate {bytes:#x} bytes"),
            VmError::Hyp(id, e) => write!(f, "{}: {e}", id.name()),
            VmError::BadExit(e) => write!(f, "{e}"),
            VmError::BadReply(id, x) => write!(f, "{}: unexpected reply {x:#x}", id.name()),
        }
    }
}

/// The linear-map VA of host address `va` (a linear VA already, or a kernel-image VA).
pub fn linear_va_of(va: u64) -> Result<u64, VmError> {
    if hypercall::is_linear_va(va) {
        return Ok(va);
    }
    let l = LAYOUT.get().ok_or(VmError::NoHyp)?;
    if (KIMAGE_VADDR..KIMAGE_VADDR + l.kimage_size).contains(&va) {
        let pa = va.wrapping_sub(l.kimage_voffset);
        return Ok(pa - l.memstart + PAGE_OFFSET);
    }
    Err(VmError::NotHostMemory(va))
}

/// The PA of a host object (linear-map or kernel-image address).
pub fn pa_of<T>(ptr: *const T) -> Result<u64, VmError> {
    let l = LAYOUT.get().ok_or(VmError::NoHyp)?;
    Ok(linear_va_of(ptr as u64)? - PAGE_OFFSET + l.memstart)
}

/// The linear-map VA of a PA in RAM (no check that RAM is there: the hyp checks).
pub fn linear_va_of_pa(pa: u64) -> Result<u64, VmError> {
    let l = LAYOUT.get().ok_or(VmError::NoHyp)?;
    pa.checked_sub(l.memstart)
        .map(|off| off + PAGE_OFFSET)
        .ok_or(VmError::NotHostMemory(pa))
}

/// A VM call: `Ok([x1, x2, x3, x4])` or the hyp's refusal.
fn vm_call(id: HcallId, args: [u64; 4]) -> Result<[u64; 4], VmError> {
    let r = super::install::hvc([id.smccc_func(), args[0], args[1], args[2], args[3]]);
    hypercall::decode_reply(r[0], r[1])
        .map(|_| [r[1], r[2], r[3], r[4]])
        .map_err(|e| VmError::Hyp(id, e))
}

/// What the hyp reported for a [`Vm::unmap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unmapped {
    /// How it invalidated the TLBs (its `HAS_TLB_RANGE` alternative).
    pub path: TlbiPath,
    /// TLBI-by-IPA instructions it issued.
    pub tlbi_ops: u64,
}

/// A VM in the hyp, with the stage-2 table pool the host gave it.
pub struct Vm {
    desc: VmDescriptor,
    pool: *mut u8,
    pool_layout: Layout,
    destroyed: bool,
}

// SAFETY: the pool pointer is owned by this value alone (the hyp writes it, the host
// does not touch it); the VM calls may run on any CPU.
unsafe impl Send for Vm {}
// SAFETY: `&Vm` only issues hypercalls; the hyp serialises changes to the VM.
unsafe impl Sync for Vm {}

impl Vm {
    /// Creates a VM whose stage-2 tables come from `pool_pages` fresh host pages
    /// (root included: a 40-bit IPA takes 2 root pages; each 1 GiB of 2 MiB-aligned
    /// guest RAM needs one more table page, each 2 MiB of 4 KiB mappings one more),
    /// with `ipa_bits` of IPA space (`None`: 40, or less on small CPUs).
    pub fn create(pool_pages: u64, ipa_bits: Option<u8>) -> Result<Vm, VmError> {
        let bytes = pool_pages.saturating_mul(PAGE_SIZE);
        // 64 KiB covers the largest concatenated root (16 pages).
        let layout = Layout::from_size_align(bytes as usize, 16 * PAGE_SIZE as usize)
            .map_err(|_| VmError::OutOfMemory { bytes })?;
        if bytes == 0 {
            return Err(VmError::OutOfMemory { bytes });
        }
        // SAFETY: the layout has a non-zero size.
        let pool = unsafe { alloc_zeroed(layout) };
        if pool.is_null() {
            return Err(VmError::OutOfMemory { bytes });
        }
        let free = || {
            // SAFETY: allocated above with this layout; the hyp did not keep it.
            unsafe { dealloc(pool, layout) }
        };
        let va = match linear_va_of(pool as u64) {
            Ok(v) => v,
            Err(e) => {
                free();
                return Err(e);
            }
        };
        // The hyp reads the tables through its own (cacheable) mapping of the same
        // memory, so no cache maintenance is needed before handing it over.
        match vm_call(
            HcallId::VmCreate,
            [va, bytes, u64::from(ipa_bits.unwrap_or(0)), 0],
        ) {
            Ok(r) => Ok(Vm {
                desc: VmDescriptor {
                    handle: r[0],
                    vmid: r[1] as u16,
                    ipa_bits: r[2] as u8,
                    root_pa: r[3],
                },
                pool,
                pool_layout: layout,
                destroyed: false,
            }),
            Err(e) => {
                free();
                Err(e)
            }
        }
    }

    /// What the hyp said about the VM.
    pub fn descriptor(&self) -> VmDescriptor {
        self.desc
    }

    /// Maps `bytes` of host RAM at PA `pa` into the guest at `ipa` (normal memory, RWX).
    /// The host keeps its own access (nVHE, non-protected).
    pub fn map(&self, ipa: u64, pa: u64, bytes: u64) -> Result<(), VmError> {
        let va = linear_va_of_pa(pa)?;
        vm_call(HcallId::VmMap, [self.desc.handle, ipa, va, bytes]).map(|_| ())
    }

    /// Removes `bytes` at `ipa` from the guest (page aligned, every page mapped) and
    /// invalidates the TLBs for that range; afterwards no vCPU reaches the memory and
    /// the host may reuse it. Refused (`Busy`) while a vCPU of this VM runs.
    pub fn unmap(&self, ipa: u64, bytes: u64) -> Result<Unmapped, VmError> {
        let r = vm_call(HcallId::VmUnmap, [self.desc.handle, ipa, bytes, 0])?;
        let path = TlbiPath::from_code(r[0]).ok_or(VmError::BadReply(HcallId::VmUnmap, r[0]))?;
        Ok(Unmapped {
            path,
            tlbi_ops: r[1],
        })
    }

    /// Runs `vcpu` until its next exit and returns it (the raw syndrome is in
    /// `vcpu.exit`). The host completes the exit by updating `vcpu` (registers, PC
    /// advance, injection) before the next call.
    pub fn run_vcpu(&self, vcpu: &mut VcpuContext) -> Result<Exit, VmError> {
        let va = linear_va_of(vcpu as *mut VcpuContext as u64)?;
        vm_call(HcallId::VcpuRun, [self.desc.handle, va, 0, 0])?;
        vcpu.last_exit().map_err(VmError::BadExit)
    }

    /// Destroys the VM and frees its pool; on refusal (a vCPU still running) the VM is
    /// handed back.
    pub fn destroy(mut self) -> Result<(), (Vm, VmError)> {
        match self.destroy_in_hyp() {
            Ok(()) => Ok(()),
            Err(e) => Err((self, e)),
        }
    }

    fn destroy_in_hyp(&mut self) -> Result<(), VmError> {
        if self.destroyed {
            return Ok(());
        }
        vm_call(HcallId::VmDestroy, [self.desc.handle, 0, 0, 0])?;
        self.destroyed = true;
        // SAFETY: the hyp no longer uses the pool (the VM is gone); allocated in
        // `create` with this layout.
        unsafe { dealloc(self.pool, self.pool_layout) };
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.destroy_in_hyp().is_err() {
            // The hyp still uses the pool: leak it rather than hand it to the heap.
            log::warn!(
                "vm {:#x}: dropped while running; pool leaked",
                self.desc.handle
            );
        }
    }
}
