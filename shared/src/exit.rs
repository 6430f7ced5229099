//! Guest exits: what `vcpu_run` hands back to the host (DESIGN §6).
//!
//! This module owns three things:
//!
//! - the typed [`Exit`] the host VMM matches on (one arm per exit kind),
//! - its decoding from the raw syndrome registers the hyp reads after a trap from the
//!   guest ([`decode_exit`] for synchronous exceptions, [`decode_trap`] for any vector),
//! - the fixed little-endian wire form [`ExitRecord`] the hyp writes into a page it
//!   shares with the host, with strict decoding so a half-written or stale record is
//!   refused rather than misread.
//!
//! Guests are AArch64 only (the hyp runs them with `HCR_EL2.RW = 1`), so every trapped
//! instruction is 4 bytes long and the AArch32 exception classes decode as
//! [`Exit::Unknown`].
//!
//! # Syndrome fields used (Arm ARM, ESR_EL2 and HPFAR_EL2)
//!
//! ```text
//! ESR_EL2   EC [31:26]  IL [25]  ISS [24:0]
//! DABT ISS  ISV [24] SAS [23:22] SSE [21] SRT [20:16] SF [15] AR [14]
//!           FnV [10] CM [8] S1PTW [7] WnR [6] DFSC [5:0]
//! IABT ISS  FnV [10] S1PTW [7] IFSC [5:0]
//! SYS ISS   Op0 [21:20] Op2 [19:17] Op1 [16:14] CRn [13:10] Rt [9:5] CRm [4:1] Dir [0]
//! WFx ISS   TI [1:0]  (0 WFI, 1 WFE, 2 WFIT, 3 WFET)
//! HVC/SMC   imm16 [15:0]
//! HPFAR_EL2 FIPA [47:4] = IPA[55:12]
//! ```

use core::fmt;

/// ESR_EL2 field positions and the exception classes this module decodes.
pub mod esr {
    /// Shift of the exception class field EC [31:26].
    pub const EC_SHIFT: u32 = 26;
    /// Mask of EC after shifting.
    pub const EC_MASK: u64 = 0x3f;
    /// Instruction-length bit: 1 = 32-bit instruction.
    pub const IL: u64 = 1 << 25;
    /// Mask of the instruction-specific syndrome ISS [24:0].
    pub const ISS_MASK: u64 = (1 << 25) - 1;

    /// EC: unknown reason.
    pub const EC_UNKNOWN: u8 = 0x00;
    /// EC: trapped WFI/WFE (WFIT/WFET).
    pub const EC_WFX: u8 = 0x01;
    /// EC: HVC from AArch64.
    pub const EC_HVC64: u8 = 0x16;
    /// EC: SMC from AArch64 (trapped by `HCR_EL2.TSC`).
    pub const EC_SMC64: u8 = 0x17;
    /// EC: trapped MSR/MRS/system instruction from AArch64.
    pub const EC_SYS64: u8 = 0x18;
    /// EC: SVE access trapped (`CPTR_EL2.TZ`); reported as [`super::Exit::Unknown`].
    pub const EC_SVE: u8 = 0x19;
    /// EC: SME access trapped (`CPTR_EL2.TSM`); reported as [`super::Exit::Unknown`].
    pub const EC_SME: u8 = 0x1d;
    /// EC: instruction abort from a lower exception level.
    pub const EC_IABT_LOW: u8 = 0x20;
    /// EC: data abort from a lower exception level.
    pub const EC_DABT_LOW: u8 = 0x24;

    /// Data abort: instruction syndrome valid.
    pub const ISV: u64 = 1 << 24;
    /// Data abort: syndrome access size shift (SAS [23:22], log2 of bytes).
    pub const SAS_SHIFT: u32 = 22;
    /// Data abort: sign-extend the loaded value.
    pub const SSE: u64 = 1 << 21;
    /// Data abort: syndrome register transfer shift (SRT [20:16]).
    pub const SRT_SHIFT: u32 = 16;
    /// Data abort: the register is 64-bit (Xn) rather than 32-bit (Wn).
    pub const SF: u64 = 1 << 15;
    /// Data abort: the instruction had acquire/release semantics.
    pub const AR: u64 = 1 << 14;
    /// Abort: FAR is not valid.
    pub const FNV: u64 = 1 << 10;
    /// Data abort: fault from a cache-maintenance or address-translation instruction.
    pub const CM: u64 = 1 << 8;
    /// Abort: fault on the stage-2 translation of a stage-1 table walk.
    pub const S1PTW: u64 = 1 << 7;
    /// Data abort: write not read.
    pub const WNR: u64 = 1 << 6;
    /// Abort: fault status code mask (DFSC/IFSC [5:0]).
    pub const FSC_MASK: u64 = 0x3f;

    /// The exception class of a syndrome.
    pub const fn ec(esr: u64) -> u8 {
        ((esr >> EC_SHIFT) & EC_MASK) as u8
    }

    /// The instruction-specific syndrome of a syndrome.
    pub const fn iss(esr: u64) -> u64 {
        esr & ISS_MASK
    }
}

/// HPFAR_EL2.FIPA, bits [47:4]: IPA bits [55:12] of the faulting address. Bits above 47
/// are RES0 except NS (bit 63, FEAT_SEL2), which must not leak into the IPA.
pub const HPFAR_FIPA_MASK: u64 = ((1 << 48) - 1) & !0xf;

/// The faulting IPA of a stage-2 abort: the page from HPFAR_EL2, the byte offset inside
/// the page from FAR_EL2.
pub const fn fault_ipa(far: u64, hpfar: u64) -> u64 {
    ((hpfar & HPFAR_FIPA_MASK) << 8) | (far & 0xfff)
}

/// Size of one MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AccessWidth {
    /// 1 byte (LDRB/STRB).
    Byte = 1,
    /// 2 bytes (LDRH/STRH).
    Half = 2,
    /// 4 bytes (LDR/STR Wn).
    Word = 4,
    /// 8 bytes (LDR/STR Xn).
    Double = 8,
}

impl AccessWidth {
    /// From log2 of the size in bytes (the SAS encoding); only the low two bits count.
    pub const fn from_log2(log2: u8) -> Self {
        match log2 & 3 {
            0 => Self::Byte,
            1 => Self::Half,
            2 => Self::Word,
            _ => Self::Double,
        }
    }

    /// From a size in bytes, if it is 1, 2, 4 or 8.
    pub const fn from_bytes(bytes: u64) -> Option<Self> {
        match bytes {
            1 => Some(Self::Byte),
            2 => Some(Self::Half),
            4 => Some(Self::Word),
            8 => Some(Self::Double),
            _ => None,
        }
    }

    /// Log2 of the size in bytes.
    pub const fn log2(self) -> u8 {
        match self {
            Self::Byte => 0,
            Self::Half => 1,
            Self::Word => 2,
            Self::Double => 3,
        }
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u8 {
        self as u8
    }

    /// The size in bits.
    pub const fn bits(self) -> u32 {
        (self as u32) * 8
    }

    /// A mask of the bits an access of this size carries.
    pub const fn mask(self) -> u64 {
        match self {
            Self::Double => u64::MAX,
            w => (1u64 << w.bits()) - 1,
        }
    }
}

/// A guest load or store to an IPA that is not guest RAM, with a valid instruction
/// syndrome, so the VMM can emulate it and the hyp can complete it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MmioAccess {
    /// The accessed intermediate physical address.
    pub ipa: u64,
    /// A store (true) or a load (false).
    pub write: bool,
    /// Access size.
    pub width: AccessWidth,
    /// Loads only: sign-extend the value (LDRSB/LDRSH/LDRSW).
    pub sign_extend: bool,
    /// The transfer register, 0..=31. For a store 31 is XZR (the value is 0); a load
    /// into 31 discards the value.
    pub reg: u8,
    /// The register is 64-bit (Xn; SF = 1) rather than 32-bit (Wn).
    pub sixty_four: bool,
    /// The instruction had acquire/release semantics (LDAR/STLR). Emulation is already
    /// ordered (the guest is stopped while the host runs it), so this is informational.
    pub acquire_release: bool,
}

impl MmioAccess {
    /// The value a store writes: the low `width` bytes of the source register
    /// (`reg_value`, which the caller reads as 0 for XZR).
    pub const fn store_data(&self, reg_value: u64) -> u64 {
        reg_value & self.width.mask()
    }

    /// The value a load leaves in its register, given the `data` the device returned:
    /// truncated to the access width, sign-extended if SSE was set (to 32 or 64 bits as
    /// SF says), and with bits [63:32] cleared for a Wn destination.
    pub const fn load_result(&self, data: u64) -> u64 {
        let bits = self.width.bits();
        let mut v = data & self.width.mask();
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            v = (((v << shift) as i64) >> shift) as u64;
        }
        if !self.sixty_four {
            v &= 0xffff_ffff;
        }
        v
    }
}

/// A trapped MSR/MRS (or system instruction) from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SysRegAccess {
    /// op0, 0..=3.
    pub op0: u8,
    /// op1, 0..=7.
    pub op1: u8,
    /// CRn, 0..=15.
    pub crn: u8,
    /// CRm, 0..=15.
    pub crm: u8,
    /// op2, 0..=7.
    pub op2: u8,
    /// The transfer register, 0..=31 (31 = XZR).
    pub rt: u8,
    /// MRS (read into `rt`) rather than MSR (write from `rt`).
    pub read: bool,
}

impl SysRegAccess {
    /// Decodes the ISS of an EC 0x18 syndrome.
    pub const fn from_iss(iss: u64) -> Self {
        Self {
            op0: ((iss >> 20) & 3) as u8,
            op2: ((iss >> 17) & 7) as u8,
            op1: ((iss >> 14) & 7) as u8,
            crn: ((iss >> 10) & 0xf) as u8,
            rt: ((iss >> 5) & 0x1f) as u8,
            crm: ((iss >> 1) & 0xf) as u8,
            read: iss & 1 != 0,
        }
    }

    /// The register's encoding as one number, `op0:op1:CRn:CRm:op2` (16 bits), the same
    /// packing as the instruction's bits [20:5]; handy as a match key.
    pub const fn encoding(&self) -> u32 {
        ((self.op0 as u32 & 3) << 14)
            | ((self.op1 as u32 & 7) << 11)
            | ((self.crn as u32 & 0xf) << 7)
            | ((self.crm as u32 & 0xf) << 3)
            | (self.op2 as u32 & 7)
    }

    /// The inverse of [`SysRegAccess::encoding`], with the transfer register and direction.
    pub const fn from_encoding(encoding: u32, rt: u8, read: bool) -> Self {
        Self {
            op0: ((encoding >> 14) & 3) as u8,
            op1: ((encoding >> 11) & 7) as u8,
            crn: ((encoding >> 7) & 0xf) as u8,
            crm: ((encoding >> 3) & 0xf) as u8,
            op2: (encoding & 7) as u8,
            rt: rt & 0x1f,
            read,
        }
    }
}

/// Why a data abort outside guest RAM cannot be emulated as an MMIO access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortCause {
    /// ISV = 0: no instruction syndrome (a load/store pair, a register-writeback or SIMD
    /// access...). The VMM does not decode guest instructions; it injects an abort.
    NoSyndrome,
    /// S1PTW = 1: the guest's own stage-1 page-table walk touched a non-RAM IPA.
    StageOneWalk,
    /// CM = 1: a cache-maintenance or address-translation instruction.
    CacheMaintenance,
    /// FnV = 1: FAR is not valid, so the address is unknown.
    FarNotValid,
    /// The fault status code (DFSC) is not a stage-2 translation, access-flag or
    /// permission fault (for example a synchronous external abort on the walk).
    FaultStatus(u8),
}

impl AbortCause {
    /// A short name for logs.
    pub const fn name(self) -> &'static str {
        match self {
            Self::NoSyndrome => "no-syndrome",
            Self::StageOneWalk => "s1ptw",
            Self::CacheMaintenance => "cache-maintenance",
            Self::FarNotValid => "far-not-valid",
            Self::FaultStatus(_) => "fault-status",
        }
    }
}

/// Why a vCPU stopped running the guest: the value `vcpu_run` returns (DESIGN §6).
///
/// The host's run loop is a `match` over this with one small handler per arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Exit {
    /// A load or store the VMM can emulate (stage-2 fault outside guest RAM with a valid
    /// instruction syndrome).
    Mmio(MmioAccess),
    /// `HVC #imm` from the guest (PSCI and SMCCC calls). ELR already points past it.
    Hvc {
        /// The immediate.
        imm: u16,
    },
    /// `SMC #imm` trapped from the guest. ELR points at the SMC itself.
    Smc {
        /// The immediate.
        imm: u16,
    },
    /// WFI or WFE (WFIT/WFET are reported as WFI/WFE: both may wake early).
    Wfx {
        /// WFE rather than WFI.
        wfe: bool,
    },
    /// A trapped system-register access.
    SysReg(SysRegAccess),
    /// A physical IRQ or FIQ arrived while the guest ran; the host handles it and
    /// resumes the guest.
    Irq,
    /// An instruction fetch from an IPA that is not guest RAM.
    InstructionAbort {
        /// The faulting IPA.
        ipa: u64,
        /// The raw syndrome, for the injected abort and the logs.
        esr: u64,
    },
    /// A data access outside guest RAM that cannot be emulated.
    DataAbort {
        /// The faulting IPA (page-granular only when `cause` is `StageOneWalk`).
        ipa: u64,
        /// The raw syndrome.
        esr: u64,
        /// Why it cannot be emulated.
        cause: AbortCause,
    },
    /// An SError interrupt was taken while the guest ran.
    SError {
        /// The raw syndrome.
        esr: u64,
    },
    /// A trap this module does not decode (AArch32 classes, unexpected ECs).
    Unknown {
        /// The raw syndrome.
        esr: u64,
    },
}

impl Exit {
    /// The exit kind as a short lower-case word (`reason=<name>` in the host's logs).
    pub const fn name(&self) -> &'static str {
        match self {
            Self::Mmio(_) => "mmio",
            Self::Hvc { .. } => "hvc",
            Self::Smc { .. } => "smc",
            Self::Wfx { .. } => "wfx",
            Self::SysReg(_) => "sysreg",
            Self::Irq => "irq",
            Self::InstructionAbort { .. } => "iabt",
            Self::DataAbort { .. } => "dabt",
            Self::SError { .. } => "serror",
            Self::Unknown { .. } => "unknown",
        }
    }

    /// How far ELR_EL2 must advance when the host completes this exit by emulating the
    /// instruction: 4 for instructions that trap *before* executing (MMIO, SMC, WFx,
    /// sysreg), 0 for HVC (the exception returns past it already) and for everything
    /// that is not emulated (IRQ, aborts the VMM injects, unknown traps).
    pub const fn pc_advance(&self) -> u64 {
        match self {
            Self::Mmio(_) | Self::Smc { .. } | Self::Wfx { .. } | Self::SysReg(_) => 4,
            _ => 0,
        }
    }
}

/// Which vector of the hyp's guest exception table was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TrapVector {
    /// Synchronous exception: ESR_EL2 says what.
    Synchronous,
    /// Physical IRQ.
    Irq,
    /// Physical FIQ.
    Fiq,
    /// SError.
    SError,
}

/// FAR_EL2 and HPFAR_EL2 as the host may see them after an exit: the values read for a
/// synchronous instruction or data abort from the guest, `(0, 0)` for every other exit
/// (their contents are UNKNOWN there: stale from an earlier fault, perhaps another VM's).
pub const fn exit_fault_regs(vector: TrapVector, esr: u64, far: u64, hpfar: u64) -> (u64, u64) {
    let ec = ((esr >> esr::EC_SHIFT) & esr::EC_MASK) as u8;
    match vector {
        TrapVector::Synchronous if ec == esr::EC_IABT_LOW || ec == esr::EC_DABT_LOW => (far, hpfar),
        _ => (0, 0),
    }
}

/// Decodes any exit: the vector taken plus the syndrome registers read right after it.
/// IRQ and FIQ both become [`Exit::Irq`]; the syndrome is only read for synchronous
/// exceptions and SErrors.
pub const fn decode_trap(vector: TrapVector, esr: u64, far: u64, hpfar: u64) -> Exit {
    match vector {
        TrapVector::Synchronous => decode_exit(esr, far, hpfar),
        TrapVector::Irq | TrapVector::Fiq => Exit::Irq,
        TrapVector::SError => Exit::SError { esr },
    }
}

/// Whether a fault status code is a stage-2 translation (0b0001LL), access flag
/// (0b0010LL) or permission (0b0011LL) fault at level 0..3: the faults an unmapped or
/// read-only IPA produces.
const fn is_mapping_fault(fsc: u8) -> bool {
    matches!(fsc, 0x04..=0x0f)
}

/// Decodes a synchronous exception from the guest.
///
/// The hyp calls this only for traps it does not resolve itself; in particular a
/// stage-2 fault on guest RAM (which the hyp maps) never becomes an exit, so every data
/// abort reaching this function is outside guest RAM: emulatable ([`Exit::Mmio`]) when
/// the syndrome allows it, otherwise [`Exit::DataAbort`] with the reason. Any value of
/// the three registers decodes to some exit; nothing here can fail.
pub const fn decode_exit(esr: u64, far: u64, hpfar: u64) -> Exit {
    let iss = esr::iss(esr);
    match esr::ec(esr) {
        esr::EC_WFX => Exit::Wfx { wfe: iss & 1 != 0 },
        esr::EC_HVC64 => Exit::Hvc {
            imm: (iss & 0xffff) as u16,
        },
        esr::EC_SMC64 => Exit::Smc {
            imm: (iss & 0xffff) as u16,
        },
        esr::EC_SYS64 => Exit::SysReg(SysRegAccess::from_iss(iss)),
        esr::EC_IABT_LOW => Exit::InstructionAbort {
            ipa: fault_ipa(far, hpfar),
            esr,
        },
        esr::EC_DABT_LOW => decode_data_abort(esr, far, hpfar),
        _ => Exit::Unknown { esr },
    }
}

const fn decode_data_abort(esr: u64, far: u64, hpfar: u64) -> Exit {
    let iss = esr::iss(esr);
    let ipa = fault_ipa(far, hpfar);
    let fsc = (iss & esr::FSC_MASK) as u8;
    // Order matters: a table-walk fault or an exotic status makes the other fields
    // meaningless, so those are checked first.
    let cause = if iss & esr::S1PTW != 0 {
        Some(AbortCause::StageOneWalk)
    } else if !is_mapping_fault(fsc) {
        Some(AbortCause::FaultStatus(fsc))
    } else if iss & esr::CM != 0 {
        Some(AbortCause::CacheMaintenance)
    } else if iss & esr::FNV != 0 {
        Some(AbortCause::FarNotValid)
    } else if iss & esr::ISV == 0 {
        Some(AbortCause::NoSyndrome)
    } else {
        None
    };
    match cause {
        Some(cause) => Exit::DataAbort { ipa, esr, cause },
        None => Exit::Mmio(MmioAccess {
            ipa,
            write: iss & esr::WNR != 0,
            width: AccessWidth::from_log2(((iss >> esr::SAS_SHIFT) & 3) as u8),
            sign_extend: iss & esr::SSE != 0,
            reg: ((iss >> esr::SRT_SHIFT) & 0x1f) as u8,
            sixty_four: iss & esr::SF != 0,
            acquire_release: iss & esr::AR != 0,
        }),
    }
}

/// The exit record as the hyp writes it into the page it shares with the host.
///
/// Fixed layout, 24 bytes, little-endian on the wire ([`ExitRecord::to_bytes`]):
///
/// ```text
/// off size field  meaning per kind
/// 0   4    kind   0 = none (a zeroed page is never a valid exit), then KIND_* below
/// 4   4    flags  MMIO:   bit0 write, bits[2:1] log2 width, bit3 sign-extend, bit4 SF,
///                         bit5 acquire/release, bits[12:8] register
///                 WFx:    bit0 WFE
///                 sysreg: bit0 read, bits[12:8] Rt
///                 dabt:   bits[7:0] cause (1 no-syndrome, 2 s1ptw, 3 cache-maint,
///                         4 far-not-valid, 5 fault-status), bits[15:8] DFSC for 5
/// 8   8    addr   MMIO, iabt, dabt: the IPA
/// 16  8    info   HVC/SMC: imm16; sysreg: op0:op1:CRn:CRm:op2 (16 bits);
///                 iabt, dabt, serror, unknown: the raw ESR
/// ```
///
/// Every bit a kind does not define must be zero; [`ExitRecord::decode`] refuses
/// anything else, so a record is either exactly what the hyp meant or an error.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[repr(C)]
pub struct ExitRecord {
    /// The exit kind (`KIND_*`).
    pub kind: u32,
    /// Kind-specific bit fields.
    pub flags: u32,
    /// The address, for the kinds that have one.
    pub addr: u64,
    /// Kind-specific payload.
    pub info: u64,
}

/// Size of [`ExitRecord`] in bytes, in memory and on the wire.
pub const EXIT_RECORD_SIZE: usize = 24;
const _: () = assert!(core::mem::size_of::<ExitRecord>() == EXIT_RECORD_SIZE);

/// `kind` of [`Exit::Mmio`].
pub const KIND_MMIO: u32 = 1;
/// `kind` of [`Exit::Hvc`].
pub const KIND_HVC: u32 = 2;
/// `kind` of [`Exit::Smc`].
pub const KIND_SMC: u32 = 3;
/// `kind` of [`Exit::Wfx`].
pub const KIND_WFX: u32 = 4;
/// `kind` of [`Exit::SysReg`].
pub const KIND_SYSREG: u32 = 5;
/// `kind` of [`Exit::Irq`].
pub const KIND_IRQ: u32 = 6;
/// `kind` of [`Exit::InstructionAbort`].
pub const KIND_IABT: u32 = 7;
/// `kind` of [`Exit::DataAbort`].
pub const KIND_DABT: u32 = 8;
/// `kind` of [`Exit::SError`].
pub const KIND_SERROR: u32 = 9;
/// `kind` of [`Exit::Unknown`].
pub const KIND_UNKNOWN: u32 = 10;

const MMIO_WRITE: u32 = 1 << 0;
const MMIO_WIDTH_SHIFT: u32 = 1;
const MMIO_SIGN_EXTEND: u32 = 1 << 3;
const MMIO_SF: u32 = 1 << 4;
const MMIO_AR: u32 = 1 << 5;
const REG_SHIFT: u32 = 8;
const REG_MASK: u32 = 0x1f;
const MMIO_FLAGS: u32 = 0x3f | (REG_MASK << REG_SHIFT);
const SYSREG_FLAGS: u32 = 1 | (REG_MASK << REG_SHIFT);

/// Why bytes or a record do not form a valid exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitRecordError {
    /// Fewer than [`EXIT_RECORD_SIZE`] bytes.
    Truncated {
        /// Bytes available.
        len: usize,
    },
    /// `kind` is 0 (nothing written) or not a known kind.
    UnknownKind(u32),
    /// A field has bits set that the kind does not define.
    ReservedBits {
        /// The kind.
        kind: u32,
        /// Which field (`flags`, `addr` or `info`).
        field: &'static str,
        /// The offending value.
        value: u64,
    },
    /// A data-abort cause code that is not defined.
    BadCause(u32),
}

impl fmt::Display for ExitRecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { len } => write!(
                f,
                "exit record truncated: {len} bytes, need {EXIT_RECORD_SIZE}"
            ),
            Self::UnknownKind(0) => write!(f, "exit record is empty (kind 0)"),
            Self::UnknownKind(k) => write!(f, "exit record has unknown kind {k}"),
            Self::ReservedBits { kind, field, value } => write!(
                f,
                "exit record of kind {kind} has undefined bits in {field}: {value:#x}"
            ),
            Self::BadCause(c) => write!(f, "exit record has unknown data-abort cause {c}"),
        }
    }
}

impl Exit {
    /// The wire form of this exit.
    pub const fn encode(&self) -> ExitRecord {
        let (kind, flags, addr, info) = match *self {
            Exit::Mmio(m) => {
                let mut flags = ((m.width.log2() as u32) << MMIO_WIDTH_SHIFT)
                    | (((m.reg as u32) & REG_MASK) << REG_SHIFT);
                if m.write {
                    flags |= MMIO_WRITE;
                }
                if m.sign_extend {
                    flags |= MMIO_SIGN_EXTEND;
                }
                if m.sixty_four {
                    flags |= MMIO_SF;
                }
                if m.acquire_release {
                    flags |= MMIO_AR;
                }
                (KIND_MMIO, flags, m.ipa, 0)
            }
            Exit::Hvc { imm } => (KIND_HVC, 0, 0, imm as u64),
            Exit::Smc { imm } => (KIND_SMC, 0, 0, imm as u64),
            Exit::Wfx { wfe } => (KIND_WFX, wfe as u32, 0, 0),
            Exit::SysReg(s) => (
                KIND_SYSREG,
                (s.read as u32) | (((s.rt as u32) & REG_MASK) << REG_SHIFT),
                0,
                s.encoding() as u64,
            ),
            Exit::Irq => (KIND_IRQ, 0, 0, 0),
            Exit::InstructionAbort { ipa, esr } => (KIND_IABT, 0, ipa, esr),
            Exit::DataAbort { ipa, esr, cause } => {
                let flags = match cause {
                    AbortCause::NoSyndrome => 1,
                    AbortCause::StageOneWalk => 2,
                    AbortCause::CacheMaintenance => 3,
                    AbortCause::FarNotValid => 4,
                    AbortCause::FaultStatus(fsc) => 5 | ((fsc as u32) << 8),
                };
                (KIND_DABT, flags, ipa, esr)
            }
            Exit::SError { esr } => (KIND_SERROR, 0, 0, esr),
            Exit::Unknown { esr } => (KIND_UNKNOWN, 0, 0, esr),
        };
        ExitRecord {
            kind,
            flags,
            addr,
            info,
        }
    }
}

impl ExitRecord {
    /// The record as the 24 little-endian bytes the hyp stores.
    pub fn to_bytes(&self) -> [u8; EXIT_RECORD_SIZE] {
        let mut out = [0u8; EXIT_RECORD_SIZE];
        out[0..4].copy_from_slice(&self.kind.to_le_bytes());
        out[4..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..16].copy_from_slice(&self.addr.to_le_bytes());
        out[16..24].copy_from_slice(&self.info.to_le_bytes());
        out
    }

    /// Reads a record from the first [`EXIT_RECORD_SIZE`] bytes of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ExitRecordError> {
        let Some(b) = bytes.get(..EXIT_RECORD_SIZE) else {
            return Err(ExitRecordError::Truncated { len: bytes.len() });
        };
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        Ok(Self {
            kind: u32_at(0),
            flags: u32_at(4),
            addr: u64_at(8),
            info: u64_at(16),
        })
    }

    /// The exit this record describes, refusing unknown kinds and undefined bits.
    pub fn decode(&self) -> Result<Exit, ExitRecordError> {
        let kind = self.kind;
        let check = |field: &'static str, value: u64, allowed: u64| {
            if value & !allowed != 0 {
                Err(ExitRecordError::ReservedBits { kind, field, value })
            } else {
                Ok(())
            }
        };
        let flags = u64::from(self.flags);
        let reg = ((self.flags >> REG_SHIFT) & REG_MASK) as u8;
        let exit = match kind {
            KIND_MMIO => {
                check("flags", flags, MMIO_FLAGS.into())?;
                check("info", self.info, 0)?;
                Exit::Mmio(MmioAccess {
                    ipa: self.addr,
                    write: self.flags & MMIO_WRITE != 0,
                    width: AccessWidth::from_log2((self.flags >> MMIO_WIDTH_SHIFT) as u8),
                    sign_extend: self.flags & MMIO_SIGN_EXTEND != 0,
                    reg,
                    sixty_four: self.flags & MMIO_SF != 0,
                    acquire_release: self.flags & MMIO_AR != 0,
                })
            }
            KIND_HVC | KIND_SMC => {
                check("flags", flags, 0)?;
                check("addr", self.addr, 0)?;
                check("info", self.info, 0xffff)?;
                let imm = self.info as u16;
                if kind == KIND_HVC {
                    Exit::Hvc { imm }
                } else {
                    Exit::Smc { imm }
                }
            }
            KIND_WFX => {
                check("flags", flags, 1)?;
                check("addr", self.addr, 0)?;
                check("info", self.info, 0)?;
                Exit::Wfx {
                    wfe: self.flags & 1 != 0,
                }
            }
            KIND_SYSREG => {
                check("flags", flags, SYSREG_FLAGS.into())?;
                check("addr", self.addr, 0)?;
                check("info", self.info, 0xffff)?;
                Exit::SysReg(SysRegAccess::from_encoding(
                    self.info as u32,
                    reg,
                    self.flags & 1 != 0,
                ))
            }
            KIND_IRQ => {
                check("flags", flags, 0)?;
                check("addr", self.addr, 0)?;
                check("info", self.info, 0)?;
                Exit::Irq
            }
            KIND_IABT => {
                check("flags", flags, 0)?;
                Exit::InstructionAbort {
                    ipa: self.addr,
                    esr: self.info,
                }
            }
            KIND_DABT => {
                check("flags", flags, 0xffff)?;
                let code = self.flags & 0xff;
                let fsc = (self.flags >> 8) as u8;
                if code != 5 && fsc != 0 {
                    return Err(ExitRecordError::ReservedBits {
                        kind,
                        field: "flags",
                        value: flags,
                    });
                }
                let cause = match code {
                    1 => AbortCause::NoSyndrome,
                    2 => AbortCause::StageOneWalk,
                    3 => AbortCause::CacheMaintenance,
                    4 => AbortCause::FarNotValid,
                    5 => AbortCause::FaultStatus(fsc),
                    other => return Err(ExitRecordError::BadCause(other)),
                };
                Exit::DataAbort {
                    ipa: self.addr,
                    esr: self.info,
                    cause,
                }
            }
            KIND_SERROR | KIND_UNKNOWN => {
                check("flags", flags, 0)?;
                check("addr", self.addr, 0)?;
                if kind == KIND_SERROR {
                    Exit::SError { esr: self.info }
                } else {
                    Exit::Unknown { esr: self.info }
                }
            }
            other => return Err(ExitRecordError::UnknownKind(other)),
        };
        Ok(exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_registers_only_survive_aborts() {
        let dabt = (u64::from(esr::EC_DABT_LOW) << esr::EC_SHIFT) | esr::IL;
        let iabt = (u64::from(esr::EC_IABT_LOW) << esr::EC_SHIFT) | esr::IL;
        let hvc = (u64::from(esr::EC_HVC64) << esr::EC_SHIFT) | esr::IL;
        let (far, hpfar) = (0xdead_b000, 0x90_0000);
        assert_eq!(
            exit_fault_regs(TrapVector::Synchronous, dabt, far, hpfar),
            (far, hpfar)
        );
        assert_eq!(
            exit_fault_regs(TrapVector::Synchronous, iabt, far, hpfar),
            (far, hpfar)
        );
        assert_eq!(
            exit_fault_regs(TrapVector::Synchronous, hvc, far, hpfar),
            (0, 0)
        );
        for v in [TrapVector::Irq, TrapVector::Fiq, TrapVector::SError] {
            assert_eq!(exit_fault_regs(v, dabt, far, hpfar), (0, 0), "{v:?}");
        }
    }
    use proptest::prelude::*;

    /// Builds a lower-EL data-abort syndrome from its fields, independently of the
    /// decoder, so the hex constants in the tests below can be cross-checked.
    #[allow(clippy::too_many_arguments)]
    fn dabt(
        isv: bool,
        sas: u64,
        sse: bool,
        srt: u64,
        sf: bool,
        ar: bool,
        wnr: bool,
        dfsc: u64,
    ) -> u64 {
        (0x24 << 26)
            | (1 << 25)
            | (u64::from(isv) << 24)
            | (sas << 22)
            | (u64::from(sse) << 21)
            | (srt << 16)
            | (u64::from(sf) << 15)
            | (u64::from(ar) << 14)
            | (u64::from(wnr) << 6)
            | dfsc
    }

    /// HPFAR_EL2 for an IPA: the page number shifted into FIPA.
    fn hpfar_of(ipa: u64) -> u64 {
        (ipa >> 12) << 4
    }

    #[test]
    fn str_w1_to_pl011_is_a_32bit_mmio_write() {
        // STR w1, [x0] with x0 = 0x0900_0000 (MMU off, so FAR = IPA), stage-2 level-3
        // translation fault: EC 0x24, IL, ISV, SAS=2, SRT=1, WnR, DFSC 0x07.
        let esr = 0x9381_0047;
        assert_eq!(esr, dabt(true, 2, false, 1, false, false, true, 0x07));
        let exit = decode_exit(esr, 0x0900_0000, 0x9_0000);
        assert_eq!(
            exit,
            Exit::Mmio(MmioAccess {
                ipa: 0x0900_0000,
                write: true,
                width: AccessWidth::Word,
                sign_extend: false,
                reg: 1,
                sixty_four: false,
                acquire_release: false,
            })
        );
        assert_eq!(exit.pc_advance(), 4);
        assert_eq!(exit.name(), "mmio");
    }

    #[test]
    fn ldrsb_sign_extends_to_w_or_x() {
        // LDRSB x3, [x0, #0x18] at a level-2 translation fault: SAS=0, SSE, SRT=3, SF.
        let esr_x = 0x9323_8006;
        assert_eq!(esr_x, dabt(true, 0, true, 3, true, false, false, 0x06));
        let Exit::Mmio(m) = decode_exit(esr_x, 0xffff_0000_1234_5018, hpfar_of(0x0900_0000)) else {
            panic!("not mmio");
        };
        // The page comes from HPFAR, only the offset from the (virtual) FAR.
        assert_eq!(m.ipa, 0x0900_0018);
        assert!(!m.write && m.sign_extend && m.sixty_four);
        assert_eq!((m.width, m.reg), (AccessWidth::Byte, 3));
        assert_eq!(m.load_result(0x80), 0xffff_ffff_ffff_ff80);
        assert_eq!(m.load_result(0x1_7f), 0x7f, "upper device bits dropped");

        // LDRSB w3: the same with SF = 0 sign-extends to 32 bits only.
        let Exit::Mmio(w) = decode_exit(esr_x & !esr::SF, 0x0900_0018, hpfar_of(0x0900_0000))
        else {
            panic!("not mmio");
        };
        assert!(!w.sixty_four);
        assert_eq!(w.load_result(0x80), 0xffff_ff80);

        // LDRB w3 (no SSE): zero-extended.
        let Exit::Mmio(b) = decode_exit(esr_x & !esr::SF & !esr::SSE, 0, 0) else {
            panic!("not mmio");
        };
        assert_eq!(b.load_result(0xff80), 0x80);
    }

    #[test]
    fn store_data_truncates_to_width() {
        let Exit::Mmio(h) = decode_exit(dabt(true, 1, false, 31, false, false, true, 7), 0, 0)
        else {
            panic!("not mmio");
        };
        assert_eq!((h.width, h.reg), (AccessWidth::Half, 31));
        assert_eq!(h.store_data(0x1234_5678), 0x5678);
        let Exit::Mmio(d) = decode_exit(dabt(true, 3, false, 2, true, true, true, 7), 0, 0) else {
            panic!("not mmio");
        };
        assert!(d.acquire_release, "STLR");
        assert_eq!(d.store_data(u64::MAX), u64::MAX);
    }

    #[test]
    fn wfi_wfe_hvc_smc() {
        assert_eq!(decode_exit(0x0600_0000, 0, 0), Exit::Wfx { wfe: false });
        assert_eq!(decode_exit(0x0600_0001, 0, 0), Exit::Wfx { wfe: true });
        // WFIT (TI = 2) behaves as WFI.
        assert_eq!(decode_exit(0x0600_0002, 0, 0), Exit::Wfx { wfe: false });
        let hvc = decode_exit(0x5a00_0000, 0, 0);
        assert_eq!(hvc, Exit::Hvc { imm: 0 });
        assert_eq!(hvc.pc_advance(), 0, "HVC returns past itself");
        assert_eq!(decode_exit(0x5a00_1234, 0, 0), Exit::Hvc { imm: 0x1234 });
        let smc = decode_exit(0x5e00_0000, 0, 0);
        assert_eq!(smc, Exit::Smc { imm: 0 });
        assert_eq!(smc.pc_advance(), 4, "a trapped SMC must be skipped");
    }

    #[test]
    fn msr_to_trapped_sysreg() {
        // MSR ACTLR_EL1, x2 (op0 3, op1 0, CRn 1, CRm 0, op2 1) trapped by HCR_EL2.TACR.
        let esr = 0x6232_0440;
        let Exit::SysReg(s) = decode_exit(esr, 0, 0) else {
            panic!("not sysreg");
        };
        assert_eq!(
            s,
            SysRegAccess {
                op0: 3,
                op1: 0,
                crn: 1,
                crm: 0,
                op2: 1,
                rt: 2,
                read: false
            }
        );
        // MRS x5, CNTPCT_EL0 (3, 3, 14, 0, 1), a read.
        let iss = (3 << 20) | (1 << 17) | (3 << 14) | (14 << 10) | (5 << 5) | 1;
        let Exit::SysReg(r) = decode_exit((0x18 << 26) | (1 << 25) | iss, 0, 0) else {
            panic!("not sysreg");
        };
        assert_eq!(
            (r.op0, r.op1, r.crn, r.crm, r.op2, r.rt, r.read),
            (3, 3, 14, 0, 1, 5, true)
        );
        assert_eq!(
            SysRegAccess::from_encoding(r.encoding(), r.rt, r.read),
            r,
            "encoding round-trips"
        );
    }

    #[test]
    fn aborts_that_cannot_be_emulated() {
        let far = 0x0a00_0010;
        let hp = hpfar_of(far);
        // LDP: ISV = 0.
        let ldp = dabt(false, 0, false, 0, false, false, false, 0x07);
        assert_eq!(
            decode_exit(ldp, far, hp),
            Exit::DataAbort {
                ipa: far,
                esr: ldp,
                cause: AbortCause::NoSyndrome
            }
        );
        let walk = dabt(true, 2, false, 1, false, false, false, 0x07) | esr::S1PTW;
        assert!(matches!(
            decode_exit(walk, far, hp),
            Exit::DataAbort {
                cause: AbortCause::StageOneWalk,
                ..
            }
        ));
        let dc = dabt(false, 0, false, 0, false, false, true, 0x07) | esr::CM;
        assert!(matches!(
            decode_exit(dc, far, hp),
            Exit::DataAbort {
                cause: AbortCause::CacheMaintenance,
                ..
            }
        ));
        let sea = dabt(true, 2, false, 1, false, false, false, 0x10);
        assert!(matches!(
            decode_exit(sea, far, hp),
            Exit::DataAbort {
                cause: AbortCause::FaultStatus(0x10),
                ..
            }
        ));
        let fnv = dabt(true, 2, false, 1, false, false, false, 0x07) | esr::FNV;
        assert!(matches!(
            decode_exit(fnv, far, hp),
            Exit::DataAbort {
                cause: AbortCause::FarNotValid,
                ..
            }
        ));
        // Instruction fetch from an unmapped IPA (IFSC level-1 translation fault).
        let iabt = (0x20 << 26) | (1 << 25) | 0x05;
        assert_eq!(
            decode_exit(iabt, 0x1_0000_0004, hpfar_of(0x1_0000_0000)),
            Exit::InstructionAbort {
                ipa: 0x1_0000_0004,
                esr: iabt
            }
        );
    }

    #[test]
    fn hpfar_ns_bit_does_not_leak_into_the_ipa() {
        let hp = hpfar_of(0x0900_0000) | (1 << 63);
        assert_eq!(fault_ipa(0xabc, hp), 0x0900_0abc);
        // A 48-bit IPA survives.
        assert_eq!(fault_ipa(0, hpfar_of(0xffff_ffff_f000)), 0xffff_ffff_f000);
    }

    #[test]
    fn aarch32_and_other_classes_are_unknown() {
        for esr in [
            0,
            0x4e00_0000, /* HVC32 */
            0x4c00_0000, /* SVC32 */
            0x9600_0045,
        ] {
            assert_eq!(decode_exit(esr, 0, 0), Exit::Unknown { esr });
        }
    }

    #[test]
    fn vectors() {
        assert_eq!(decode_trap(TrapVector::Irq, 0x5a00_0000, 0, 0), Exit::Irq);
        assert_eq!(decode_trap(TrapVector::Fiq, 0, 0, 0), Exit::Irq);
        assert_eq!(
            decode_trap(TrapVector::SError, 0xbe00_0000, 0, 0),
            Exit::SError { esr: 0xbe00_0000 }
        );
        assert_eq!(
            decode_trap(TrapVector::Synchronous, 0x5a00_0007, 0, 0),
            Exit::Hvc { imm: 7 }
        );
    }

    #[test]
    fn record_layout_is_fixed() {
        let rec = Exit::Mmio(MmioAccess {
            ipa: 0x0900_0018,
            write: true,
            width: AccessWidth::Word,
            sign_extend: false,
            reg: 30,
            sixty_four: true,
            acquire_release: false,
        })
        .encode();
        let bytes = rec.to_bytes();
        assert_eq!(&bytes[0..4], &KIND_MMIO.to_le_bytes());
        // write | width log2 2 << 1 | SF | reg 30 << 8
        assert_eq!(&bytes[4..8], &(1u32 | 4 | 0x10 | (30 << 8)).to_le_bytes());
        assert_eq!(&bytes[8..16], &0x0900_0018u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &[0; 8]);
        assert_eq!(ExitRecord::from_bytes(&bytes), Ok(rec));
    }

    #[test]
    fn record_errors() {
        assert_eq!(
            ExitRecord::from_bytes(&[0; 23]),
            Err(ExitRecordError::Truncated { len: 23 })
        );
        let empty = ExitRecord::default();
        assert_eq!(empty.decode(), Err(ExitRecordError::UnknownKind(0)));
        assert_eq!(
            ExitRecord { kind: 99, ..empty }.decode(),
            Err(ExitRecordError::UnknownKind(99))
        );
        let hvc = ExitRecord {
            kind: KIND_HVC,
            info: 0x1_0000,
            ..empty
        };
        assert!(matches!(
            hvc.decode(),
            Err(ExitRecordError::ReservedBits { field: "info", .. })
        ));
        let dabt = ExitRecord {
            kind: KIND_DABT,
            flags: 9,
            ..empty
        };
        assert_eq!(dabt.decode(), Err(ExitRecordError::BadCause(9)));
        let dabt = ExitRecord {
            kind: KIND_DABT,
            flags: 1 | (7 << 8),
            ..empty
        };
        assert!(dabt.decode().is_err(), "DFSC only with cause 5");
        // Display names the problem.
        let msg = std::format!("{}", ExitRecordError::Truncated { len: 3 });
        assert!(msg.contains("3 bytes"), "{msg}");
    }

    proptest! {
        #[test]
        fn every_decoded_exit_round_trips_through_the_wire(esr: u64, far: u64, hpfar: u64, v in 0u8..4) {
            let vector = [TrapVector::Synchronous, TrapVector::Irq, TrapVector::Fiq, TrapVector::SError][v as usize];
            let exit = decode_trap(vector, esr, far, hpfar);
            let bytes = exit.encode().to_bytes();
            let back = ExitRecord::from_bytes(&bytes).and_then(|r| r.decode());
            prop_assert_eq!(back, Ok(exit));
        }

        #[test]
        fn dabt_syndromes_decode_field_by_field(sas in 0u64..4, sse: bool, srt in 0u64..32, sf: bool, ar: bool, wnr: bool, ipa in 0u64..(1 << 48)) {
            let esr = dabt(true, sas, sse, srt, sf, ar, wnr, 0x07);
            let exit = decode_exit(esr, ipa, hpfar_of(ipa));
            let Exit::Mmio(m) = exit else { return Err(TestCaseError::fail("not mmio")); };
            prop_assert_eq!(m.ipa, ipa);
            prop_assert_eq!(u64::from(m.width.bytes()), 1u64 << sas);
            prop_assert_eq!((m.sign_extend, m.reg as u64, m.sixty_four, m.acquire_release, m.write), (sse, srt, sf, ar, wnr));
        }

        #[test]
        fn arbitrary_records_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(rec) = ExitRecord::from_bytes(&bytes) {
                if let Ok(exit) = rec.decode() {
                    // A record that decodes is canonical: it encodes back to itself.
                    prop_assert_eq!(exit.encode(), rec);
                }
            }
        }
    }
}
