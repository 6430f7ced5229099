//! The host ↔ hyp ABI (DESIGN §6, LINUX-FACTS §6.1–§6.3): function ids, return codes,
//! the SMCCC function-id encoding, the hyp-stub calls, the per-CPU init parameters and
//! the argument rules the hyp enforces. Both `el2` and the host use this module, so the
//! two sides cannot disagree on a number.
//!
//! # Calling convention
//!
//! * Stub calls (hyp-stub ABI, [`stub`]): `hvc #0` with `x0 < HVC_STUB_HCALL_NR`.
//! * Host calls: `hvc #0` with `x0 = 0xC600_0000 | id` (SMCCC fast call, SMC64, owner 6
//!   = vendor-specific hypervisor; bit 16, the SMCCC hint, is ignored), arguments in
//!   `x1…`. Replies:
//!   * `x0 = 0` (SUCCESS), results in `x1…` (which registers: see [`HcallId`]);
//!   * `x0 = −1` (NOT_SUPPORTED): unknown id, an id without a handler, the init id
//!     outside the init vector, or a setup call after [`HcallId::FinaliseSetup`];
//!   * `x0 = −3` (INVALID_PARAMETER), `x1` = an [`HcallError`] code: an argument failed
//!     validation (range, alignment, mapping). Nothing was changed.
//!
//! [`decode_reply`] turns `(x0, x1)` back into a `Result`.

use crate::cpucaps::NCAPS;
use core::fmt;

/// SMCCC function-id bit 31: fast call.
pub const SMCCC_FAST_CALL: u64 = 1 << 31;
/// SMCCC function-id bit 30: SMC64 calling convention.
pub const SMCCC_64: u64 = 1 << 30;
/// SMCCC owner field (bits 29:24) value for the vendor-specific hypervisor service.
pub const SMCCC_OWNER_VENDOR_HYP: u64 = 6;
/// SMCCC hint bit (bit 16, "SVE state not live"); ignored when decoding, as Linux does.
pub const SMCCC_HINT: u64 = 1 << 16;
/// The function id of host call 0: fast call, SMC64, vendor hypervisor.
pub const HCALL_BASE: u64 = SMCCC_FAST_CALL | SMCCC_64 | (SMCCC_OWNER_VENDOR_HYP << 24);
const _: () = assert!(HCALL_BASE == 0xC600_0000);
/// Function numbers occupy bits 15:0 of an SMCCC function id.
pub const SMCCC_FUNC_MASK: u64 = 0xffff;

/// SMCCC SUCCESS.
pub const SMCCC_SUCCESS: u64 = 0;
/// SMCCC NOT_SUPPORTED (−1).
pub const SMCCC_NOT_SUPPORTED: u64 = -1i64 as u64;
/// SMCCC INVALID_PARAMETER (−3).
pub const SMCCC_INVALID_PARAMETER: u64 = -3i64 as u64;

/// The hyp-stub ABI (LINUX-FACTS §6.1): `x0` below [`stub::HVC_STUB_HCALL_NR`].
pub mod stub {
    /// Install a vector table: `VBAR_EL2 = x1` (a physical address while the EL2 MMU is off).
    pub const HVC_SET_VECTORS: u64 = 0;
    /// Turn the EL2 MMU off and jump to `x1` at EL2 with `x0..x2 = x2..x4`.
    pub const HVC_SOFT_RESTART: u64 = 1;
    /// Turn the EL2 MMU off and go back to the stub vectors.
    pub const HVC_RESET_VECTORS: u64 = 2;
    /// Finish EL2 set-up.
    pub const HVC_FINALISE_EL2: u64 = 3;
    /// Any `x0` below this is a stub call.
    pub const HVC_STUB_HCALL_NR: u64 = 4;
    /// What a stub call nobody serves returns.
    pub const HVC_STUB_ERR: u64 = 0xbad_ca11;
}

/// Defines [`HcallId`] with its numbers, names and reply registers in one place.
macro_rules! define_hcalls {
    ($($(#[$doc:meta])* $variant:ident = $num:literal => $name:literal,)*) => {
        /// A host call. The number is the SMCCC function number (bits 15:0 of `x0`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum HcallId {
            $($(#[$doc])* $variant = $num,)*
        }

        impl HcallId {
            /// Every id, in number order.
            pub const ALL: [HcallId; NR_HCALLS] = [$(HcallId::$variant,)*];

            /// A short name for messages.
            pub const fn name(self) -> &'static str {
                match self {
                    $(HcallId::$variant => $name,)*
                }
            }
        }

        /// Number of host-call ids (valid numbers are `0..NR_HCALLS`).
        pub const NR_HCALLS: usize = [$($num,)*].len();
    };
}

define_hcalls! {
    /// `__kvm_hyp_init`: served only by the init vector with the EL2 MMU off
    /// (`x1` = PA of this CPU's [`InitParams`]); NOT_SUPPORTED once the hyp runs.
    HypInit = 0 => "hyp_init",
    /// Setup: `x1` = MDCR_EL2.
    GetMdcrEl2 = 1 => "get_mdcr_el2",
    /// Setup: closes the setup calls (ids below [`FIRST_RUNTIME_HCALL`]) for good, on
    /// every CPU. A second call is refused like any other setup call. `x1` = host
    /// linear-map VA of the hyp's carve-out, `x2` = its size in bytes (page multiples),
    /// so that the VM calls can refuse host memory that is the hyp's; with `x2 = 0` the
    /// setup still closes but the VM calls stay refused (`NotReady`).
    FinaliseSetup = 2 => "finalise_setup",
    /// Invalidate all EL1&0 TLB entries and the I-caches (VMID roll-over).
    FlushVmContext = 3 => "flush_vm_context",
    /// `x1` = [`HYP_ABI_VERSION`]: a call with no effect, to see that the hyp answers.
    Ping = 4 => "ping",
    /// Selftest: every cap evaluated through its own hyp-side alternative check;
    /// `x1..` = the bitmap words ([`CAP_WORDS`] of them, bit `n % 64` of word `n / 64`
    /// is cap `n`).
    EvalCaps = 5 => "eval_caps",
    /// Selftest: `x1` = a host linear-map VA ([`is_linear_va`]); reply `x1` = the hyp's
    /// `kern_hyp_va` of it (its patched site).
    KernHypVa = 6 => "kern_hyp_va",
    /// Selftest: `x1` = kimage_voffset, `x2` = the final CTR_EL0, both read from the
    /// hyp's patched immediates.
    PatchedConstants = 7 => "patched_constants",
    /// Selftest: `x1` = host calls that entered this CPU through the hardened
    /// (Spectre-v3a) vector table, `x2` = host calls this CPU handled in total (this
    /// one included), `x3` = host traps that were not calls (an SMC, an SME instruction
    /// trapped by CPTR_EL2, ...) which the hyp refused by skipping the instruction
    /// (such traps enter through the hardened table too).
    VectorStats = 8 => "vector_stats",
    /// Selftest: `x1` = a host linear-map VA of RAM, 8-byte aligned; reply `x1` = the
    /// 64-bit word there, read through the hyp's mapping. Refused if misaligned or not a
    /// linear-map VA (`Misaligned`, `OutOfRange`), not mapped at EL2 (`NotMapped`), or
    /// inside the hyp's carve-out (`HypMemory`): the image, and once `FinaliseSetup`
    /// named it the whole carve-out with the per-CPU blocks and stacks.
    HostRead64 = 9 => "host_read64",
    /// Creates a VM (`shared::vcpu`): `x1` = linear VA of the stage-2 table pool, `x2` =
    /// its bytes, `x3` = IPA bits (0 = default). Reply `x1` = handle, `x2` = VMID, `x3` =
    /// IPA bits, `x4` = root table PA.
    VmCreate = 10 => "vm_create",
    /// Maps guest memory: `x1` = handle, `x2` = IPA, `x3` = linear VA of the backing
    /// host RAM, `x4` = bytes; normal write-back, RWX. Nothing is changed on refusal.
    VmMap = 11 => "vm_map",
    /// Runs a vCPU until its next exit: `x1` = handle, `x2` = linear VA of the
    /// `shared::vcpu::VcpuContext`. Reply `x1` = exit kind (`shared::exit::KIND_*`), the
    /// record and raw syndrome in the context. A context inside the VM's own stage-2
    /// pool is refused (`HypMemory`) before anything is written.
    VcpuRun = 12 => "vcpu_run",
    /// Destroys a VM: `x1` = handle. Its VMID's TLB entries are invalidated and its
    /// pool is the host's again. Refused (`Busy`) while one of its vCPUs runs.
    VmDestroy = 13 => "vm_destroy",
    /// Unmaps guest memory: `x1` = handle, `x2` = IPA, `x3` = bytes (page aligned,
    /// inside the IPA space, every page mapped; a 2 MiB block the range covers only in
    /// part is split, which may take a pool page). The stage-2 entries are cleared and
    /// the TLBs invalidated for exactly that range before the reply. Reply `x1` = the
    /// invalidation path (`shared::vcpu::TlbiPath`), `x2` = TLBI-by-IPA instructions
    /// issued. Refused (`Busy`) while one of the VM's vCPUs runs; nothing is changed on
    /// refusal.
    VmUnmap = 14 => "vm_unmap",
}

/// First id of the runtime group; ids `1..FIRST_RUNTIME_HCALL` are setup calls that
/// close once the host has sent [`HcallId::FinaliseSetup`].
pub const FIRST_RUNTIME_HCALL: u16 = HcallId::FlushVmContext as u16;

/// What [`HcallId::Ping`] returns. 2: the VM calls (`VmCreate`…`VmDestroy`); 3:
/// `VmUnmap`, and `HostRead64` refuses the whole carve-out (`HypMemory`).
pub const HYP_ABI_VERSION: u64 = 3;

/// Words of a cap bitmap as [`HcallId::EvalCaps`] returns it.
pub const CAP_WORDS: usize = NCAPS.div_ceil(64);
// The reply carries the words in x1..x3.
const _: () = assert!(CAP_WORDS <= 3);

impl HcallId {
    /// The number (bits 15:0 of the SMCCC function id).
    pub const fn number(self) -> u16 {
        self as u16
    }

    /// The id with number `n`, if there is one.
    pub const fn from_number(n: u64) -> Option<HcallId> {
        if n < NR_HCALLS as u64 {
            Some(HcallId::ALL[n as usize])
        } else {
            None
        }
    }

    /// The SMCCC function id the host puts in `x0`.
    pub const fn smccc_func(self) -> u64 {
        HCALL_BASE | self.number() as u64
    }

    /// Whether this is a setup call (closed after [`HcallId::FinaliseSetup`]).
    pub const fn is_setup(self) -> bool {
        let n = self.number();
        n != 0 && n < FIRST_RUNTIME_HCALL
    }
}

/// What the hyp makes of `x0`: the function number of a vendor-hypervisor fast call
/// (hint bit ignored), whether or not an [`HcallId`] has it; `None` for anything else
/// (another owner, a yielding or SMC32 call, bits above 31 set).
pub const fn decode_func(x0: u64) -> Option<u64> {
    let x = x0 & !SMCCC_HINT;
    if x & !SMCCC_FUNC_MASK != HCALL_BASE {
        return None;
    }
    Some(x & SMCCC_FUNC_MASK)
}

/// Why the hyp refused an argument (sent in `x1` with INVALID_PARAMETER).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum HcallError {
    /// An address is not aligned as the call requires.
    Misaligned = 1,
    /// An address is outside the range the call accepts (for example not a host
    /// linear-map VA).
    OutOfRange = 2,
    /// The address is in range but the hyp's stage 1 does not map it.
    NotMapped = 3,
    /// The memory is the hyp's own (its carve-out), or the VM's stage-2 table pool.
    HypMemory = 4,
    /// The IPA range overlaps an existing mapping of the VM.
    Overlap = 5,
    /// The table pool is too small or used up.
    NoMemory = 6,
    /// No VM has this handle (never created, or destroyed).
    BadHandle = 7,
    /// Every VM slot is in use.
    TooManyVms = 8,
    /// The vCPU context is running on another CPU, or the VM still runs vCPUs.
    Busy = 9,
    /// The IPA size is not supported by this CPU.
    BadIpaBits = 10,
    /// The guest PSTATE is not an AArch64 EL0/EL1 state.
    BadPstate = 11,
    /// The pending-injection kind is unknown.
    BadInjection = 12,
    /// VM calls need the carve-out the host gives in `FinaliseSetup`.
    NotReady = 13,
    /// Part of the IPA range to unmap is not mapped.
    NotGuestMapped = 14,
}

impl HcallError {
    /// Every error, in code order.
    pub const ALL: [HcallError; 14] = [
        HcallError::Misaligned,
        HcallError::OutOfRange,
        HcallError::NotMapped,
        HcallError::HypMemory,
        HcallError::Overlap,
        HcallError::NoMemory,
        HcallError::BadHandle,
        HcallError::TooManyVms,
        HcallError::Busy,
        HcallError::BadIpaBits,
        HcallError::BadPstate,
        HcallError::BadInjection,
        HcallError::NotReady,
        HcallError::NotGuestMapped,
    ];
}

impl HcallError {
    /// The code sent in `x1`.
    pub const fn code(self) -> u64 {
        self as u64
    }

    /// The error with code `c`, if there is one.
    pub const fn from_code(c: u64) -> Option<HcallError> {
        if c == 0 || c > HcallError::ALL.len() as u64 {
            return None;
        }
        Some(HcallError::ALL[c as usize - 1])
    }
}

impl fmt::Display for HcallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HcallError::Misaligned => "misaligned address",
            HcallError::OutOfRange => "address out of range",
            HcallError::NotMapped => "address not mapped at EL2",
            HcallError::HypMemory => "memory belongs to the hyp",
            HcallError::Overlap => "IPA range overlaps an existing mapping",
            HcallError::NoMemory => "stage-2 table pool too small or exhausted",
            HcallError::BadHandle => "no VM with this handle",
            HcallError::TooManyVms => "every VM slot is in use",
            HcallError::Busy => "vCPU or VM is running",
            HcallError::BadIpaBits => "IPA size not supported",
            HcallError::BadPstate => "guest PSTATE is not AArch64 EL0/EL1",
            HcallError::BadInjection => "unknown injection kind",
            HcallError::NotReady => "VM calls need FinaliseSetup with the carve-out",
            HcallError::NotGuestMapped => "IPA range is not entirely mapped in the VM",
        })
    }
}

/// A host call that did not succeed, as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HcallFailure {
    /// `x0 = NOT_SUPPORTED`: unknown, closed or init-only id.
    NotSupported,
    /// `x0 = INVALID_PARAMETER`; the reason if `x1` held a known code, else the raw `x1`.
    InvalidParameter(Result<HcallError, u64>),
    /// Some other `x0`: not something this ABI produces.
    Unexpected(u64),
}

impl fmt::Display for HcallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HcallFailure::NotSupported => f.write_str("NOT_SUPPORTED"),
            HcallFailure::InvalidParameter(Ok(e)) => write!(f, "INVALID_PARAMETER ({e})"),
            HcallFailure::InvalidParameter(Err(c)) => {
                write!(f, "INVALID_PARAMETER (unknown reason {c:#x})")
            }
            HcallFailure::Unexpected(x0) => write!(f, "unexpected x0 {x0:#x}"),
        }
    }
}

/// Turns a reply into `Ok(x1)` or the failure.
pub const fn decode_reply(x0: u64, x1: u64) -> Result<u64, HcallFailure> {
    match x0 {
        SMCCC_SUCCESS => Ok(x1),
        SMCCC_NOT_SUPPORTED => Err(HcallFailure::NotSupported),
        SMCCC_INVALID_PARAMETER => Err(HcallFailure::InvalidParameter(
            match HcallError::from_code(x1) {
                Some(e) => Ok(e),
                None => Err(x1),
            },
        )),
        other => Err(HcallFailure::Unexpected(other)),
    }
}

/// First VA of the host's linear map (48-bit VAs, LINUX-FACTS §5.5).
pub const LINEAR_MAP_START: u64 = crate::va_layout::DEFAULT_PAGE_OFFSET;
/// Bytes the linear map spans at most: the lower half of the TTBR1 range.
pub const LINEAR_MAP_SIZE: u64 = 1 << (crate::va_layout::DEFAULT_VA_BITS - 1);

/// Whether `va` can be a host linear-map VA (what the hyp accepts before it translates
/// it with `kern_hyp_va`). Only a range check; whether RAM is there is the hyp's
/// stage 1's answer.
pub const fn is_linear_va(va: u64) -> bool {
    va >= LINEAR_MAP_START && va - LINEAR_MAP_START < LINEAR_MAP_SIZE
}

/// The argument check of [`HcallId::HostRead64`] that needs no page tables: 8-byte
/// aligned, then inside the linear map.
pub const fn check_read64_arg(va: u64) -> Result<(), HcallError> {
    if !va.is_multiple_of(8) {
        return Err(HcallError::Misaligned);
    }
    if !is_linear_va(va) {
        return Err(HcallError::OutOfRange);
    }
    Ok(())
}

/// The per-CPU init parameters (Linux v6.1's `struct kvm_nvhe_init_params`,
/// LINUX-FACTS §6.2): written by the host, cleaned to the point of coherency, and read by
/// the init vector with the EL2 MMU off (its physical address is `x1` of the init call).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[repr(C)]
pub struct InitParams {
    /// MAIR_EL2 (the host's MAIR_EL1, so attribute indices agree).
    pub mair_el2: u64,
    /// TCR_EL2 without PS; the hyp fills PS from ID_AA64MMFR0_EL1.PARange.
    pub tcr_el2: u64,
    /// TPIDR_EL2: this CPU's per-CPU block minus the image's template block (hyp VAs).
    pub tpidr_el2: u64,
    /// Initial SP: top of this CPU's hyp stack (hyp VA).
    pub stack_hyp_va: u64,
    /// PA of the stack's lowest byte (bookkeeping; the hyp does not read it).
    pub stack_pa: u64,
    /// PA of the hyp stage-1 root table (TTBR0_EL2).
    pub pgd_pa: u64,
    /// HCR_EL2 for running the host.
    pub hcr_el2: u64,
    /// VTTBR_EL2 (0: no host stage 2 in nVHE mode).
    pub vttbr: u64,
    /// VTCR_EL2 (0: no host stage 2 in nVHE mode).
    pub vtcr: u64,
}

/// Byte offsets of the [`InitParams`] fields, for the init assembly.
pub mod init_params_offset {
    use super::InitParams;
    use core::mem::offset_of;
    /// `mair_el2`.
    pub const MAIR_EL2: usize = offset_of!(InitParams, mair_el2);
    /// `tcr_el2`.
    pub const TCR_EL2: usize = offset_of!(InitParams, tcr_el2);
    /// `tpidr_el2`.
    pub const TPIDR_EL2: usize = offset_of!(InitParams, tpidr_el2);
    /// `stack_hyp_va`.
    pub const STACK_HYP_VA: usize = offset_of!(InitParams, stack_hyp_va);
    /// `stack_pa`.
    pub const STACK_PA: usize = offset_of!(InitParams, stack_pa);
    /// `pgd_pa`.
    pub const PGD_PA: usize = offset_of!(InitParams, pgd_pa);
    /// `hcr_el2`.
    pub const HCR_EL2: usize = offset_of!(InitParams, hcr_el2);
    /// `vttbr`.
    pub const VTTBR: usize = offset_of!(InitParams, vttbr);
    /// `vtcr`.
    pub const VTCR: usize = offset_of!(InitParams, vtcr);
}

// Linux's layout: nine u64 in this order, 72 bytes.
const _: () = {
    use init_params_offset as o;
    assert!(o::MAIR_EL2 == 0 && o::TCR_EL2 == 8 && o::TPIDR_EL2 == 16);
    assert!(o::STACK_HYP_VA == 24 && o::STACK_PA == 32 && o::PGD_PA == 40);
    assert!(o::HCR_EL2 == 48 && o::VTTBR == 56 && o::VTCR == 64);
    assert!(core::mem::size_of::<InitParams>() == 72);
};

/// HCR_EL2 for an nVHE host: RW | APK | API | ATA (LINUX-FACTS §6.2).
pub const HCR_HOST_NVHE_FLAGS: u64 = 0x0100_0300_8000_0000;

/// TCR_EL2 for the hyp's stage 1 without PS: T0SZ = 64 − `hyp_va_bits`, 4 KiB granule,
/// inner-shareable write-back walks, RES1 bits 31 and 23.
pub const fn tcr_el2(hyp_va_bits: u8) -> u64 {
    const RES1: u64 = (1 << 31) | (1 << 23);
    const SH0_INNER: u64 = 3 << 12;
    const ORGN0_WBWA: u64 = 1 << 10;
    const IRGN0_WBWA: u64 = 1 << 8;
    RES1 | SH0_INNER | ORGN0_WBWA | IRGN0_WBWA | (64 - hyp_va_bits as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_encode_as_vendor_hyp_fast_calls() {
        for (i, id) in HcallId::ALL.iter().enumerate() {
            assert_eq!(id.number() as usize, i);
            assert_eq!(HcallId::from_number(i as u64), Some(*id));
            assert_eq!(id.smccc_func(), 0xC600_0000 + i as u64);
            assert_eq!(decode_func(id.smccc_func()), Some(i as u64));
            // The hint bit does not change the function.
            assert_eq!(decode_func(id.smccc_func() | SMCCC_HINT), Some(i as u64));
        }
        assert_eq!(HcallId::from_number(NR_HCALLS as u64), None);
        assert_eq!(HcallId::HypInit.smccc_func(), 0xC600_0000);
    }

    #[test]
    fn other_function_ids_are_not_host_calls() {
        // Standard service (PSCI), SMC32 vendor hyp, yielding call, high bits set.
        for x0 in [
            0xC400_0003u64,
            0x8600_0000,
            0x4600_0000,
            0x1_C600_0000,
            0,
            3,
        ] {
            assert_eq!(decode_func(x0), None, "{x0:#x}");
        }
        // An unknown number is still a host call; the dispatcher refuses it.
        assert_eq!(decode_func(0xc600_7fff), Some(0x7fff));
        assert_eq!(HcallId::from_number(0x7fff), None);
    }

    #[test]
    fn setup_group_is_below_the_runtime_group() {
        assert!(!HcallId::HypInit.is_setup());
        assert!(HcallId::GetMdcrEl2.is_setup());
        assert!(HcallId::FinaliseSetup.is_setup());
        for id in HcallId::ALL
            .iter()
            .filter(|i| i.number() >= FIRST_RUNTIME_HCALL)
        {
            assert!(!id.is_setup(), "{}", id.name());
        }
    }

    #[test]
    fn replies_decode() {
        assert_eq!(decode_reply(SMCCC_SUCCESS, 42), Ok(42));
        assert_eq!(
            decode_reply(SMCCC_NOT_SUPPORTED, 0),
            Err(HcallFailure::NotSupported)
        );
        assert_eq!(SMCCC_NOT_SUPPORTED, 0xffff_ffff_ffff_ffff);
        assert_eq!(HcallError::from_code(0), None);
        assert_eq!(HcallError::from_code(15), None);
        for (i, e) in HcallError::ALL.iter().enumerate() {
            assert_eq!(e.code(), i as u64 + 1);
            assert!(!e.to_string().is_empty());
        }
        for e in HcallError::ALL {
            assert_eq!(HcallError::from_code(e.code()), Some(e));
            assert_eq!(
                decode_reply(SMCCC_INVALID_PARAMETER, e.code()),
                Err(HcallFailure::InvalidParameter(Ok(e)))
            );
        }
        assert_eq!(
            decode_reply(SMCCC_INVALID_PARAMETER, 99),
            Err(HcallFailure::InvalidParameter(Err(99)))
        );
        assert_eq!(
            decode_reply(stub::HVC_STUB_ERR, 0),
            Err(HcallFailure::Unexpected(stub::HVC_STUB_ERR))
        );
        assert_eq!(
            HcallFailure::InvalidParameter(Ok(HcallError::Misaligned)).to_string(),
            "INVALID_PARAMETER (misaligned address)"
        );
    }

    #[test]
    fn read64_arguments_are_checked_for_alignment_then_range() {
        assert_eq!(check_read64_arg(0xffff_0000_4000_0000), Ok(()));
        assert_eq!(check_read64_arg(0xffff_7fff_ffff_fff8), Ok(()));
        assert_eq!(
            check_read64_arg(0xffff_0000_4000_0004),
            Err(HcallError::Misaligned)
        );
        // The kernel image half, user addresses and the top of the space are not linear.
        for va in [0xffff_8000_0800_0000u64, 0x1000, 0, 0xffff_ffff_ffff_fff8] {
            assert_eq!(check_read64_arg(va), Err(HcallError::OutOfRange), "{va:#x}");
        }
        assert_eq!(check_read64_arg(3), Err(HcallError::Misaligned));
    }

    #[test]
    fn tcr_el2_matches_linux_for_48_bit_hyp_vas() {
        // LINUX-FACTS §6.2: 0x80803510 before PS is filled in.
        assert_eq!(tcr_el2(48), 0x8080_3510);
        assert_eq!(tcr_el2(39) & 0x3f, 25);
    }
}
