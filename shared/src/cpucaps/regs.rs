//! One CPU's ID-register snapshot ([`IdRegs`]), the field descriptors used to read and
//! sanitise it ([`Field`], [`fields`]), and the merge of snapshots across CPUs
//! ([`Sanitiser`]), including the system-wide CTR_EL0.
//!
//! Field layouts and merge rules follow Linux's `arm64_ftr_bits` tables (LINUX-FACTS §4.1):
//! a field not described here is strict RES0 in the sanitised value. MIDR, REVIDR and
//! CLIDR identify one CPU and are not merged at all (they read 0 in a sanitised copy).

use core::fmt;

/// The registers of a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    /// `MIDR_EL1`.
    Midr,
    /// `REVIDR_EL1`.
    Revidr,
    /// `CTR_EL0` (in a snapshot: as read; see [`IdRegs::effective_ctr`]).
    Ctr,
    /// `CLIDR_EL1`.
    Clidr,
    /// `ID_AA64PFR0_EL1`.
    Pfr0,
    /// `ID_AA64PFR1_EL1`.
    Pfr1,
    /// `ID_AA64ISAR0_EL1`.
    Isar0,
    /// `ID_AA64ISAR1_EL1`.
    Isar1,
    /// `ID_AA64ISAR2_EL1` (`s3_0_c0_c6_2` for assemblers that lack the name).
    Isar2,
    /// `ID_AA64MMFR0_EL1`.
    Mmfr0,
    /// `ID_AA64MMFR1_EL1`.
    Mmfr1,
    /// `ID_AA64MMFR2_EL1`.
    Mmfr2,
    /// `ID_AA64DFR0_EL1`.
    Dfr0,
}

/// Number of registers in a snapshot.
pub const NREGS: usize = 13;

impl Reg {
    /// Every register, in snapshot order.
    pub const ALL: [Reg; NREGS] = [
        Reg::Midr,
        Reg::Revidr,
        Reg::Ctr,
        Reg::Clidr,
        Reg::Pfr0,
        Reg::Pfr1,
        Reg::Isar0,
        Reg::Isar1,
        Reg::Isar2,
        Reg::Mmfr0,
        Reg::Mmfr1,
        Reg::Mmfr2,
        Reg::Dfr0,
    ];

    /// The architectural name in lower case, as in register dumps (`id_aa64isar0_el1`).
    pub const fn name(self) -> &'static str {
        match self {
            Reg::Midr => "midr_el1",
            Reg::Revidr => "revidr_el1",
            Reg::Ctr => "ctr_el0",
            Reg::Clidr => "clidr_el1",
            Reg::Pfr0 => "id_aa64pfr0_el1",
            Reg::Pfr1 => "id_aa64pfr1_el1",
            Reg::Isar0 => "id_aa64isar0_el1",
            Reg::Isar1 => "id_aa64isar1_el1",
            Reg::Isar2 => "id_aa64isar2_el1",
            Reg::Mmfr0 => "id_aa64mmfr0_el1",
            Reg::Mmfr1 => "id_aa64mmfr1_el1",
            Reg::Mmfr2 => "id_aa64mmfr2_el1",
            Reg::Dfr0 => "id_aa64dfr0_el1",
        }
    }

    /// The name used on the command line (`id_aa64isar0`), for the registers whose
    /// fields may be overridden; `None` for MIDR, REVIDR, CTR and CLIDR.
    pub const fn override_name(self) -> Option<&'static str> {
        match self {
            Reg::Midr | Reg::Revidr | Reg::Ctr | Reg::Clidr => None,
            Reg::Pfr0 => Some("id_aa64pfr0"),
            Reg::Pfr1 => Some("id_aa64pfr1"),
            Reg::Isar0 => Some("id_aa64isar0"),
            Reg::Isar1 => Some("id_aa64isar1"),
            Reg::Isar2 => Some("id_aa64isar2"),
            Reg::Mmfr0 => Some("id_aa64mmfr0"),
            Reg::Mmfr1 => Some("id_aa64mmfr1"),
            Reg::Mmfr2 => Some("id_aa64mmfr2"),
            Reg::Dfr0 => Some("id_aa64dfr0"),
        }
    }

    /// The register whose [`Reg::override_name`] is `name` (ASCII case-insensitive).
    pub fn from_override_name(name: &str) -> Option<Reg> {
        Reg::ALL
            .iter()
            .copied()
            .find(|r| matches!(r.override_name(), Some(n) if n.eq_ignore_ascii_case(name)))
    }

    /// Whether the register is merged across CPUs. MIDR, REVIDR and CLIDR describe one
    /// CPU only (CLIDR is consumed per CPU by [`IdRegs::effective_ctr`]).
    pub const fn is_sanitised(self) -> bool {
        !matches!(self, Reg::Midr | Reg::Revidr | Reg::Clidr)
    }

    /// The described fields of this register (empty for unsanitised registers).
    pub const fn fields(self) -> &'static [Field] {
        match self {
            Reg::Midr | Reg::Revidr | Reg::Clidr => &[],
            Reg::Ctr => fields::CTR,
            Reg::Pfr0 => fields::PFR0,
            Reg::Pfr1 => fields::PFR1,
            Reg::Isar0 => fields::ISAR0,
            Reg::Isar1 => fields::ISAR1,
            Reg::Isar2 => fields::ISAR2,
            Reg::Mmfr0 => fields::MMFR0,
            Reg::Mmfr1 => fields::MMFR1,
            Reg::Mmfr2 => fields::MMFR2,
            Reg::Dfr0 => fields::DFR0,
        }
    }

    /// The described field called `name` (ASCII case-insensitive).
    pub fn field(self, name: &str) -> Option<&'static Field> {
        self.fields()
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }
}

/// How a field's values from different CPUs merge into the sanitised value (Linux's
/// `FTR_LOWER_SAFE` and friends). The same rule decides which overrides are safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SafeRule {
    /// The smaller value is safe (most feature fields).
    LowerSafe,
    /// The larger value is safe.
    HigherSafe,
    /// The larger value is safe, except that 0 ("not reported") wins over everything.
    HigherOrZeroSafe,
    /// CPUs must agree; if they differ the field takes this raw value.
    Exact(u8),
}

/// A field of an ID register: where it is, how to read it and how it merges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Field {
    /// The register holding the field.
    pub reg: Reg,
    /// Lower-case name, as used on the command line (`atomic`, `vh`).
    pub name: &'static str,
    /// Position of the least significant bit.
    pub shift: u8,
    /// Width in bits (4 for almost every field; 1 or 2 for some CTR_EL0 fields).
    pub width: u8,
    /// Whether the field is signed (0xf = "not implemented" for e.g. FP, TGran4).
    pub signed: bool,
    /// Merge rule.
    pub rule: SafeRule,
}

impl Field {
    const fn new(
        reg: Reg,
        name: &'static str,
        shift: u8,
        width: u8,
        signed: bool,
        rule: SafeRule,
    ) -> Field {
        Field {
            reg,
            name,
            shift,
            width,
            signed,
            rule,
        }
    }

    /// Largest raw value of the field.
    pub const fn max_raw(&self) -> u64 {
        (1u64 << self.width) - 1
    }

    /// The field's bits within the register.
    pub const fn mask(&self) -> u64 {
        self.max_raw() << self.shift
    }

    /// The raw (unsigned) bits of the field in `reg_value`.
    pub const fn raw(&self, reg_value: u64) -> u64 {
        (reg_value >> self.shift) & self.max_raw()
    }

    /// Interprets raw field bits, sign-extending signed fields.
    pub const fn value_of_raw(&self, raw: u64) -> i64 {
        let raw = raw & self.max_raw();
        if self.signed && raw & (1 << (self.width - 1)) != 0 {
            raw as i64 - (1i64 << self.width)
        } else {
            raw as i64
        }
    }

    /// The field's value in `reg_value` (sign-extended if signed).
    pub const fn value(&self, reg_value: u64) -> i64 {
        self.value_of_raw(self.raw(reg_value))
    }

    /// `reg_value` with the field replaced by `raw` (truncated to the field width).
    pub const fn with_raw(&self, reg_value: u64, raw: u64) -> u64 {
        (reg_value & !self.mask()) | ((raw & self.max_raw()) << self.shift)
    }

    /// The safe raw value when one CPU has `new` and the merged value so far is `cur`
    /// (Linux's `arm64_ftr_safe_value`).
    pub const fn safe_raw(&self, new: u64, cur: u64) -> u64 {
        if new == cur {
            return cur;
        }
        let (n, c) = (self.value_of_raw(new), self.value_of_raw(cur));
        match self.rule {
            SafeRule::LowerSafe => {
                if n < c {
                    new
                } else {
                    cur
                }
            }
            SafeRule::HigherSafe => {
                if n > c {
                    new
                } else {
                    cur
                }
            }
            SafeRule::HigherOrZeroSafe => {
                if n == 0 || c == 0 {
                    0
                } else if n > c {
                    new
                } else {
                    cur
                }
            }
            SafeRule::Exact(safe) => safe as u64,
        }
    }

    /// Whether forcing the field to `requested` on a CPU whose value is `current` moves
    /// it only toward safety (what an override may do).
    pub const fn is_safe_override(&self, requested: u64, current: u64) -> bool {
        self.safe_raw(requested, current) == requested
    }

    /// `register.field` as written on the command line, e.g. `id_aa64isar0.atomic`.
    pub const fn qualified(&self) -> QualifiedField {
        QualifiedField(*self)
    }
}

/// Display helper: `id_aa64isar0.atomic` (or `ctr_el0.idc` for CTR fields).
#[derive(Debug, Clone, Copy)]
pub struct QualifiedField(Field);

impl fmt::Display for QualifiedField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reg = self.0.reg.override_name().unwrap_or(self.0.reg.name());
        write!(f, "{reg}.{}", self.0.name)
    }
}

/// Declares field constants and the per-register table in one go.
macro_rules! reg_fields {
    ($table:ident, $reg:ident, [$($konst:ident = $name:literal @ $shift:literal : $width:literal $sign:ident $rule:expr;)*]) => {
        $(
            #[doc = concat!("`", $name, "`: bits ", $shift, " + ", $width, ", ", stringify!($sign), ", ", stringify!($rule), ".")]
            pub const $konst: Field = Field::new(Reg::$reg, $name, $shift, $width, reg_fields!(@sign $sign), $rule);
        )*
        /// Every described field of the register.
        pub const $table: &[Field] = &[$($konst,)*];
    };
    (@sign signed) => { true };
    (@sign unsigned) => { false };
}

/// Field descriptors, one constant per field (`fields::ISAR0_ATOMIC`) plus one table per
/// register. Rules and signedness follow Linux's `cpufeature.c` tables (v6.1–v6.3 era).
pub mod fields {
    use super::{Field, Reg, SafeRule};
    use SafeRule::{Exact, HigherOrZeroSafe, HigherSafe, LowerSafe};

    reg_fields!(CTR, Ctr, [
        CTR_IMINLINE = "iminline" @ 0:4 unsigned LowerSafe;
        CTR_L1IP = "l1ip" @ 14:2 unsigned Exact(2); // VIPT is the weakest policy
        CTR_DMINLINE = "dminline" @ 16:4 unsigned LowerSafe;
        CTR_ERG = "erg" @ 20:4 unsigned HigherOrZeroSafe;
        CTR_CWG = "cwg" @ 24:4 unsigned HigherOrZeroSafe;
        CTR_IDC = "idc" @ 28:1 unsigned LowerSafe;
        CTR_DIC = "dic" @ 29:1 unsigned LowerSafe;
        CTR_RES1 = "res1" @ 31:1 unsigned Exact(1);
    ]);

    reg_fields!(PFR0, Pfr0, [
        PFR0_EL0 = "el0" @ 0:4 unsigned LowerSafe;
        PFR0_EL1 = "el1" @ 4:4 unsigned LowerSafe;
        PFR0_EL2 = "el2" @ 8:4 unsigned LowerSafe;
        PFR0_EL3 = "el3" @ 12:4 unsigned LowerSafe;
        PFR0_FP = "fp" @ 16:4 signed LowerSafe;
        PFR0_ADVSIMD = "advsimd" @ 20:4 signed LowerSafe;
        PFR0_GIC = "gic" @ 24:4 unsigned LowerSafe;
        PFR0_RAS = "ras" @ 28:4 unsigned LowerSafe;
        PFR0_SVE = "sve" @ 32:4 unsigned LowerSafe;
        PFR0_SEL2 = "sel2" @ 36:4 unsigned LowerSafe;
        PFR0_MPAM = "mpam" @ 40:4 unsigned LowerSafe;
        PFR0_AMU = "amu" @ 44:4 unsigned LowerSafe;
        PFR0_DIT = "dit" @ 48:4 unsigned LowerSafe;
        PFR0_CSV2 = "csv2" @ 56:4 unsigned LowerSafe;
        PFR0_CSV3 = "csv3" @ 60:4 unsigned LowerSafe;
    ]);

    reg_fields!(PFR1, Pfr1, [
        PFR1_BT = "bt" @ 0:4 unsigned LowerSafe;
        PFR1_SSBS = "ssbs" @ 4:4 unsigned LowerSafe;
        PFR1_MTE = "mte" @ 8:4 unsigned LowerSafe;
        PFR1_RAS_FRAC = "ras_frac" @ 12:4 unsigned LowerSafe;
        PFR1_MPAM_FRAC = "mpam_frac" @ 16:4 unsigned LowerSafe;
        PFR1_SME = "sme" @ 24:4 unsigned LowerSafe;
    ]);

    reg_fields!(ISAR0, Isar0, [
        ISAR0_AES = "aes" @ 4:4 unsigned LowerSafe;
        ISAR0_SHA1 = "sha1" @ 8:4 unsigned LowerSafe;
        ISAR0_SHA2 = "sha2" @ 12:4 unsigned LowerSafe;
        ISAR0_CRC32 = "crc32" @ 16:4 unsigned LowerSafe;
        ISAR0_ATOMIC = "atomic" @ 20:4 unsigned LowerSafe;
        ISAR0_RDM = "rdm" @ 28:4 unsigned LowerSafe;
        ISAR0_SHA3 = "sha3" @ 32:4 unsigned LowerSafe;
        ISAR0_SM3 = "sm3" @ 36:4 unsigned LowerSafe;
        ISAR0_SM4 = "sm4" @ 40:4 unsigned LowerSafe;
        ISAR0_DP = "dp" @ 44:4 unsigned LowerSafe;
        ISAR0_FHM = "fhm" @ 48:4 unsigned LowerSafe;
        ISAR0_TS = "ts" @ 52:4 unsigned LowerSafe;
        ISAR0_TLB = "tlb" @ 56:4 unsigned LowerSafe;
        ISAR0_RNDR = "rndr" @ 60:4 unsigned LowerSafe;
    ]);

    reg_fields!(ISAR1, Isar1, [
        ISAR1_DPB = "dpb" @ 0:4 unsigned LowerSafe;
        ISAR1_APA = "apa" @ 4:4 unsigned Exact(0);
        ISAR1_API = "api" @ 8:4 unsigned Exact(0);
        ISAR1_JSCVT = "jscvt" @ 12:4 unsigned LowerSafe;
        ISAR1_FCMA = "fcma" @ 16:4 unsigned LowerSafe;
        ISAR1_LRCPC = "lrcpc" @ 20:4 unsigned LowerSafe;
        ISAR1_GPA = "gpa" @ 24:4 unsigned LowerSafe;
        ISAR1_GPI = "gpi" @ 28:4 unsigned LowerSafe;
        ISAR1_FRINTTS = "frintts" @ 32:4 unsigned LowerSafe;
        ISAR1_SB = "sb" @ 36:4 unsigned LowerSafe;
        ISAR1_SPECRES = "specres" @ 40:4 unsigned LowerSafe;
        ISAR1_BF16 = "bf16" @ 44:4 unsigned LowerSafe;
        ISAR1_DGH = "dgh" @ 48:4 unsigned LowerSafe;
        ISAR1_I8MM = "i8mm" @ 52:4 unsigned LowerSafe;
    ]);

    reg_fields!(ISAR2, Isar2, [
        ISAR2_WFXT = "wfxt" @ 0:4 unsigned LowerSafe;
        ISAR2_RPRES = "rpres" @ 4:4 unsigned LowerSafe;
        ISAR2_GPA3 = "gpa3" @ 8:4 unsigned LowerSafe;
        ISAR2_APA3 = "apa3" @ 12:4 unsigned Exact(0);
        ISAR2_MOPS = "mops" @ 16:4 unsigned LowerSafe;
        ISAR2_BC = "bc" @ 20:4 unsigned HigherSafe;
        ISAR2_CLRBHB = "clrbhb" @ 28:4 unsigned LowerSafe;
        ISAR2_RPRFM = "rprfm" @ 48:4 unsigned LowerSafe;
        ISAR2_CSSC = "cssc" @ 52:4 unsigned LowerSafe;
    ]);

    reg_fields!(MMFR0, Mmfr0, [
        MMFR0_PARANGE = "parange" @ 0:4 unsigned LowerSafe;
        MMFR0_ASIDBITS = "asidbits" @ 4:4 unsigned LowerSafe;
        MMFR0_BIGEND = "bigend" @ 8:4 unsigned LowerSafe;
        MMFR0_SNSMEM = "snsmem" @ 12:4 unsigned LowerSafe;
        MMFR0_BIGENDEL0 = "bigendel0" @ 16:4 unsigned LowerSafe;
        MMFR0_TGRAN16 = "tgran16" @ 20:4 unsigned LowerSafe;
        MMFR0_TGRAN64 = "tgran64" @ 24:4 signed LowerSafe;
        MMFR0_TGRAN4 = "tgran4" @ 28:4 signed LowerSafe;
        MMFR0_TGRAN16_2 = "tgran16_2" @ 32:4 unsigned Exact(1);
        MMFR0_TGRAN64_2 = "tgran64_2" @ 36:4 unsigned Exact(1);
        MMFR0_TGRAN4_2 = "tgran4_2" @ 40:4 unsigned Exact(1);
        MMFR0_EXS = "exs" @ 44:4 unsigned LowerSafe;
        MMFR0_FGT = "fgt" @ 56:4 unsigned LowerSafe;
        MMFR0_ECV = "ecv" @ 60:4 unsigned LowerSafe;
    ]);

    reg_fields!(MMFR1, Mmfr1, [
        MMFR1_HAFDBS = "hafdbs" @ 0:4 unsigned LowerSafe;
        MMFR1_VMIDBITS = "vmidbits" @ 4:4 unsigned LowerSafe;
        MMFR1_VH = "vh" @ 8:4 unsigned LowerSafe;
        MMFR1_HPDS = "hpds" @ 12:4 unsigned LowerSafe;
        MMFR1_LO = "lo" @ 16:4 unsigned LowerSafe;
        MMFR1_PAN = "pan" @ 20:4 unsigned LowerSafe;
        MMFR1_SPECSEI = "specsei" @ 24:4 unsigned HigherSafe;
        MMFR1_XNX = "xnx" @ 28:4 unsigned LowerSafe;
        MMFR1_TWED = "twed" @ 32:4 unsigned LowerSafe;
        MMFR1_ETS = "ets" @ 36:4 unsigned LowerSafe;
        MMFR1_HCX = "hcx" @ 40:4 unsigned LowerSafe;
        MMFR1_AFP = "afp" @ 44:4 unsigned LowerSafe;
        MMFR1_TIDCP1 = "tidcp1" @ 52:4 unsigned LowerSafe;
    ]);

    reg_fields!(MMFR2, Mmfr2, [
        MMFR2_CNP = "cnp" @ 0:4 unsigned LowerSafe;
        MMFR2_UAO = "uao" @ 4:4 unsigned LowerSafe;
        MMFR2_LSM = "lsm" @ 8:4 unsigned LowerSafe;
        MMFR2_IESB = "iesb" @ 12:4 unsigned LowerSafe;
        MMFR2_VARANGE = "varange" @ 16:4 unsigned LowerSafe;
        MMFR2_CCIDX = "ccidx" @ 20:4 unsigned LowerSafe;
        MMFR2_NV = "nv" @ 24:4 unsigned LowerSafe;
        MMFR2_ST = "st" @ 28:4 unsigned LowerSafe;
        MMFR2_AT = "at" @ 32:4 unsigned LowerSafe;
        MMFR2_IDS = "ids" @ 36:4 unsigned LowerSafe;
        MMFR2_FWB = "fwb" @ 40:4 unsigned LowerSafe;
        MMFR2_TTL = "ttl" @ 48:4 unsigned LowerSafe;
        MMFR2_BBM = "bbm" @ 52:4 unsigned LowerSafe;
        MMFR2_EVT = "evt" @ 56:4 unsigned LowerSafe;
        MMFR2_E0PD = "e0pd" @ 60:4 unsigned LowerSafe;
    ]);

    reg_fields!(DFR0, Dfr0, [
        DFR0_DEBUGVER = "debugver" @ 0:4 unsigned Exact(6);
        DFR0_PMUVER = "pmuver" @ 8:4 signed Exact(0);
        DFR0_BRPS = "brps" @ 12:4 unsigned LowerSafe;
        DFR0_WRPS = "wrps" @ 20:4 unsigned LowerSafe;
        DFR0_CTX_CMPS = "ctx_cmps" @ 28:4 unsigned LowerSafe;
        DFR0_PMSVER = "pmsver" @ 32:4 unsigned LowerSafe;
        DFR0_DOUBLELOCK = "doublelock" @ 36:4 signed LowerSafe;
    ]);
}

/// `CTR_EL0.IDC`: data cache clean to PoU not needed for I/D coherence.
pub const CTR_IDC_BIT: u64 = 1 << 28;
/// `CTR_EL0.DIC`: instruction cache invalidation not needed for I/D coherence.
pub const CTR_DIC_BIT: u64 = 1 << 29;

/// The fields of a `MIDR_EL1` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Midr(pub u64);

impl Midr {
    /// Implementer code (0x41 = Arm).
    pub const fn implementer(self) -> u8 {
        (self.0 >> 24) as u8
    }
    /// Major revision (the `r` of `rNpM`).
    pub const fn variant(self) -> u8 {
        ((self.0 >> 20) & 0xf) as u8
    }
    /// Architecture code (0xf = "see the ID registers").
    pub const fn architecture(self) -> u8 {
        ((self.0 >> 16) & 0xf) as u8
    }
    /// Primary part number.
    pub const fn part(self) -> u16 {
        ((self.0 >> 4) & 0xfff) as u16
    }
    /// Minor revision (the `p` of `rNpM`).
    pub const fn revision(self) -> u8 {
        (self.0 & 0xf) as u8
    }
}

/// One CPU's ID registers as read with `mrs` (before or after overrides, depending on
/// who holds it; a sanitised copy is also an `IdRegs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IdRegs {
    /// `MIDR_EL1`.
    pub midr: u64,
    /// `REVIDR_EL1`.
    pub revidr: u64,
    /// `CTR_EL0`.
    pub ctr: u64,
    /// `CLIDR_EL1`.
    pub clidr: u64,
    /// `ID_AA64PFR0_EL1`.
    pub pfr0: u64,
    /// `ID_AA64PFR1_EL1`.
    pub pfr1: u64,
    /// `ID_AA64ISAR0_EL1`.
    pub isar0: u64,
    /// `ID_AA64ISAR1_EL1`.
    pub isar1: u64,
    /// `ID_AA64ISAR2_EL1`.
    pub isar2: u64,
    /// `ID_AA64MMFR0_EL1`.
    pub mmfr0: u64,
    /// `ID_AA64MMFR1_EL1`.
    pub mmfr1: u64,
    /// `ID_AA64MMFR2_EL1`.
    pub mmfr2: u64,
    /// `ID_AA64DFR0_EL1`.
    pub dfr0: u64,
}

impl IdRegs {
    /// Every register zero (what `Default` gives, usable in `const` contexts).
    pub const ZERO: IdRegs = IdRegs {
        midr: 0,
        revidr: 0,
        ctr: 0,
        clidr: 0,
        pfr0: 0,
        pfr1: 0,
        isar0: 0,
        isar1: 0,
        isar2: 0,
        mmfr0: 0,
        mmfr1: 0,
        mmfr2: 0,
        dfr0: 0,
    };

    /// The value of `reg`.
    pub const fn get(&self, reg: Reg) -> u64 {
        match reg {
            Reg::Midr => self.midr,
            Reg::Revidr => self.revidr,
            Reg::Ctr => self.ctr,
            Reg::Clidr => self.clidr,
            Reg::Pfr0 => self.pfr0,
            Reg::Pfr1 => self.pfr1,
            Reg::Isar0 => self.isar0,
            Reg::Isar1 => self.isar1,
            Reg::Isar2 => self.isar2,
            Reg::Mmfr0 => self.mmfr0,
            Reg::Mmfr1 => self.mmfr1,
            Reg::Mmfr2 => self.mmfr2,
            Reg::Dfr0 => self.dfr0,
        }
    }

    /// Sets `reg` to `value`.
    pub fn set(&mut self, reg: Reg, value: u64) {
        let slot = match reg {
            Reg::Midr => &mut self.midr,
            Reg::Revidr => &mut self.revidr,
            Reg::Ctr => &mut self.ctr,
            Reg::Clidr => &mut self.clidr,
            Reg::Pfr0 => &mut self.pfr0,
            Reg::Pfr1 => &mut self.pfr1,
            Reg::Isar0 => &mut self.isar0,
            Reg::Isar1 => &mut self.isar1,
            Reg::Isar2 => &mut self.isar2,
            Reg::Mmfr0 => &mut self.mmfr0,
            Reg::Mmfr1 => &mut self.mmfr1,
            Reg::Mmfr2 => &mut self.mmfr2,
            Reg::Dfr0 => &mut self.dfr0,
        };
        *slot = value;
    }

    /// The value of `field` (sign-extended if the field is signed).
    pub const fn field(&self, field: &Field) -> i64 {
        field.value(self.get(field.reg))
    }

    /// The raw bits of `field`.
    pub const fn field_raw(&self, field: &Field) -> u64 {
        field.raw(self.get(field.reg))
    }

    /// Sets the raw bits of `field`.
    pub fn set_field_raw(&mut self, field: &Field, raw: u64) {
        let v = field.with_raw(self.get(field.reg), raw);
        self.set(field.reg, v);
    }

    /// This snapshot with `field` set to `raw`.
    #[must_use]
    pub fn with_field_raw(mut self, field: &Field, raw: u64) -> IdRegs {
        self.set_field_raw(field, raw);
        self
    }

    /// The decoded MIDR.
    pub const fn midr(&self) -> Midr {
        Midr(self.midr)
    }

    /// `CLIDR_EL1.LoUIS`.
    pub const fn clidr_louis(&self) -> u8 {
        ((self.clidr >> 21) & 7) as u8
    }

    /// `CLIDR_EL1.LoC`.
    pub const fn clidr_loc(&self) -> u8 {
        ((self.clidr >> 24) & 7) as u8
    }

    /// `CLIDR_EL1.LoUU`.
    pub const fn clidr_louu(&self) -> u8 {
        ((self.clidr >> 27) & 7) as u8
    }

    /// CTR_EL0 as Linux stores it per CPU: IDC reads as 1 when CLIDR says no cleaning to
    /// the PoU is needed anyway (LoC == 0, or LoUU == LoUIS == 0).
    pub const fn effective_ctr(&self) -> u64 {
        if self.ctr & CTR_IDC_BIT == 0
            && (self.clidr_loc() == 0 || (self.clidr_louu() == 0 && self.clidr_louis() == 0))
        {
            self.ctr | CTR_IDC_BIT
        } else {
            self.ctr
        }
    }

    /// Parses one CPU's dump in the `name=0x…` line format of QEMU-ID-REGISTERS.md (and of
    /// this type's `Display`). Lines without `=`, `== model` headers and `#` comments are skipped.
    /// `s3_0_c0_c6_2` is accepted for ID_AA64ISAR2_EL1. Every register must appear once.
    pub fn from_dump(text: &str) -> Result<IdRegs, DumpError<'_>> {
        let mut regs = IdRegs::default();
        let mut seen = [false; NREGS];
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("==") || line.starts_with('#') {
                continue; // a model header or comment
            }
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let name = name.trim();
            let reg = if name.eq_ignore_ascii_case("s3_0_c0_c6_2") {
                Reg::Isar2
            } else {
                match Reg::ALL
                    .iter()
                    .find(|r| r.name().eq_ignore_ascii_case(name))
                {
                    Some(r) => *r,
                    None => return Err(DumpError::UnknownRegister(name)),
                }
            };
            let value = value.trim();
            let hex = value
                .strip_prefix("0x")
                .or_else(|| value.strip_prefix("0X"))
                .ok_or(DumpError::BadValue(reg, value))?;
            let v = u64::from_str_radix(hex, 16).map_err(|_| DumpError::BadValue(reg, value))?;
            let idx = reg as usize;
            if seen[idx] {
                return Err(DumpError::Duplicate(reg));
            }
            seen[idx] = true;
            regs.set(reg, v);
        }
        match Reg::ALL.iter().find(|r| !seen[**r as usize]) {
            Some(r) => Err(DumpError::Missing(*r)),
            None => Ok(regs),
        }
    }
}

/// One `name=0x…` line per register, in [`Reg::ALL`] order (the format
/// [`IdRegs::from_dump`] reads).
impl fmt::Display for IdRegs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for reg in Reg::ALL {
            writeln!(f, "{}={:#018x}", reg.name(), self.get(reg))?;
        }
        Ok(())
    }
}

/// Why a register dump could not be parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpError<'a> {
    /// A `name=` line names no register of the snapshot.
    UnknownRegister(&'a str),
    /// The value is not `0x` followed by at most 16 hex digits.
    BadValue(Reg, &'a str),
    /// The register appears twice.
    Duplicate(Reg),
    /// The register does not appear.
    Missing(Reg),
}

impl fmt::Display for DumpError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DumpError::UnknownRegister(n) => write!(f, "unknown register `{n}` in dump"),
            DumpError::BadValue(r, v) => {
                write!(
                    f,
                    "{}: `{v}` is not a 0x-prefixed 64-bit hex value",
                    r.name()
                )
            }
            DumpError::Duplicate(r) => write!(f, "{} appears twice in dump", r.name()),
            DumpError::Missing(r) => write!(f, "{} is missing from dump", r.name()),
        }
    }
}

/// Merges ID registers across CPUs field by field (Linux's sanitised `sys_val`s).
///
/// The first CPU sets the starting value (undescribed fields dropped to 0, CTR taken as
/// [`IdRegs::effective_ctr`]); every further CPU moves each field toward its safe value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sanitiser {
    regs: IdRegs,
    cpus: u32,
}

impl Sanitiser {
    /// Starts from the first (boot) CPU.
    pub fn new(first: &IdRegs) -> Sanitiser {
        let src = IdRegs {
            ctr: first.effective_ctr(),
            ..*first
        };
        let mut regs = IdRegs::default();
        for reg in Reg::ALL {
            let mut v = 0;
            for f in reg.fields() {
                v |= src.get(reg) & f.mask();
            }
            regs.set(reg, v);
        }
        Sanitiser { regs, cpus: 1 }
    }

    /// Merges one more CPU.
    pub fn add(&mut self, cpu: &IdRegs) {
        let src = IdRegs {
            ctr: cpu.effective_ctr(),
            ..*cpu
        };
        for reg in Reg::ALL {
            for f in reg.fields() {
                let cur = self.regs.field_raw(f);
                let new = src.field_raw(f);
                self.regs.set_field_raw(f, f.safe_raw(new, cur));
            }
        }
        self.cpus = self.cpus.saturating_add(1);
    }

    /// The sanitised registers (MIDR, REVIDR and CLIDR read 0).
    pub const fn regs(&self) -> &IdRegs {
        &self.regs
    }

    /// The sanitised CTR_EL0: the value the hyp's final-CTR callback patches in.
    pub const fn ctr_el0(&self) -> u64 {
        self.regs.ctr
    }

    /// How many CPUs have been merged.
    pub const fn cpus(&self) -> u32 {
        self.cpus
    }
}

/// Sanitises a whole list of CPUs at once; `None` for an empty list.
pub fn sanitise(cpus: &[IdRegs]) -> Option<IdRegs> {
    let (first, rest) = cpus.split_first()?;
    let mut s = Sanitiser::new(first);
    for c in rest {
        s.add(c);
    }
    Some(*s.regs())
}

/// The system-wide CTR_EL0 of a list of CPUs (effective IDC per CPU, then merged);
/// `None` for an empty list.
pub fn sanitised_ctr_el0(cpus: &[IdRegs]) -> Option<u64> {
    sanitise(cpus).map(|r| r.ctr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn regs(ctr: u64, clidr: u64) -> IdRegs {
        IdRegs {
            ctr,
            clidr,
            ..IdRegs::default()
        }
    }

    #[test]
    fn field_extraction_is_sign_aware() {
        // TGran4 = 0xf means "not supported" and must compare below 0.
        let r = IdRegs {
            mmfr0: 0xf000_0000,
            ..IdRegs::default()
        };
        assert_eq!(r.field(&fields::MMFR0_TGRAN4), -1);
        assert_eq!(r.field_raw(&fields::MMFR0_TGRAN4), 0xf);
        let r = IdRegs {
            isar0: 0x0020_0000,
            ..IdRegs::default()
        };
        assert_eq!(r.field(&fields::ISAR0_ATOMIC), 2);
        assert_eq!(r.with_field_raw(&fields::ISAR0_ATOMIC, 0).isar0, 0);
    }

    #[test]
    fn safe_values_follow_each_rule() {
        let l = fields::ISAR0_ATOMIC;
        assert_eq!(l.safe_raw(2, 0), 0);
        assert_eq!(l.safe_raw(0, 2), 0);
        let s = fields::PFR0_FP; // signed: 0xf (-1) is lower than 1
        assert_eq!(s.safe_raw(0xf, 1), 0xf);
        let h = fields::MMFR1_SPECSEI;
        assert_eq!(h.safe_raw(1, 0), 1);
        let z = fields::CTR_CWG;
        assert_eq!(z.safe_raw(4, 5), 5);
        assert_eq!(z.safe_raw(0, 5), 0);
        assert_eq!(z.safe_raw(5, 0), 0);
        let e = fields::CTR_L1IP;
        assert_eq!(e.safe_raw(3, 2), 2);
        assert_eq!(e.safe_raw(3, 1), 2);
        assert_eq!(e.safe_raw(3, 3), 3);
        assert!(l.is_safe_override(0, 2));
        assert!(!l.is_safe_override(3, 2));
        assert!(!fields::ISAR1_APA.is_safe_override(2, 1));
        assert!(fields::ISAR1_APA.is_safe_override(0, 1));
    }

    #[test]
    fn effective_ctr_forces_idc_only_when_clidr_allows() {
        // QEMU max: LoUU = LoUIS = 0.
        assert_eq!(regs(0x8444_c004, 0x0200_0023).effective_ctr(), 0x9444_c004);
        // Cortex-A53/A57/A72: LoUIS 1, LoC 2, LoUU 1.
        assert_eq!(regs(0x8444_8004, 0x0a20_0023).effective_ctr(), 0x8444_8004);
        // LoC = 0 alone is enough.
        assert_eq!(regs(0x8444_c004, 0x0820_0023).effective_ctr(), 0x9444_c004);
        let r = regs(0, 0x0a20_0023);
        assert_eq!((r.clidr_louis(), r.clidr_loc(), r.clidr_louu()), (1, 2, 1));
    }

    #[test]
    fn ctr_merge_takes_minimum_lines_and_weakest_policy() {
        let a = regs(0x8444_c004, 0x0200_0023); // effective IDC
        let b = regs(0x8444_8004, 0x0a20_0023); // VIPT, no IDC
        assert_eq!(sanitised_ctr_el0(&[a, b]), Some(0x8444_8004));
        assert_eq!(sanitised_ctr_el0(&[a]), Some(0x9444_c004));
        // DIC needs every CPU; DminLine/IminLine take the minimum; CWG 0 wins; ERG max.
        let c = regs(0xb444_c004, 0);
        let d = regs(0x9033_c003, 0);
        assert_eq!(sanitised_ctr_el0(&[c, d]), Some(0x9043_c003));
        assert_eq!(sanitised_ctr_el0(&[d, c]), Some(0x9043_c003));
        assert_eq!(sanitised_ctr_el0(&[]), None);
    }

    #[test]
    fn undescribed_bits_and_identity_registers_are_res0() {
        let cpu = IdRegs {
            midr: 0x410f_d034,
            clidr: 0x0a20_0023,
            pfr0: 0x00f0_0000_0000_0000, // RME: not described
            ctr: 0x8444_8004 | (0x3f << 32),
            ..IdRegs::default()
        };
        let s = sanitise(&[cpu]).unwrap();
        assert_eq!((s.midr, s.clidr, s.pfr0), (0, 0, 0));
        assert_eq!(s.ctr, 0x8444_8004);
    }

    #[test]
    fn dump_round_trips_and_reports_errors() {
        let r = IdRegs {
            midr: 0x410f_d034,
            isar2: 7,
            ..IdRegs::default()
        };
        let mut buf = String::new();
        use core::fmt::Write;
        write!(buf, "== header\n{r}").unwrap();
        assert_eq!(IdRegs::from_dump(&buf), Ok(r));
        let alt = buf.replace("id_aa64isar2_el1", "s3_0_c0_c6_2");
        assert_eq!(IdRegs::from_dump(&alt), Ok(r));
        assert_eq!(
            IdRegs::from_dump("midr_el1=0x1"),
            Err(DumpError::Missing(Reg::Revidr))
        );
        assert_eq!(
            IdRegs::from_dump("foo=0x1"),
            Err(DumpError::UnknownRegister("foo"))
        );
        assert!(matches!(
            IdRegs::from_dump("midr_el1=12"),
            Err(DumpError::BadValue(Reg::Midr, "12"))
        ));
        let dup = format!("{buf}midr_el1=0x0\n");
        assert_eq!(
            IdRegs::from_dump(&dup),
            Err(DumpError::Duplicate(Reg::Midr))
        );
        assert!(DumpError::Missing(Reg::Ctr).to_string().contains("ctr_el0"));
    }

    #[test]
    fn fields_do_not_overlap_and_names_resolve() {
        for reg in Reg::ALL {
            let mut seen = 0u64;
            for f in reg.fields() {
                assert_eq!(f.reg, reg);
                assert_eq!(seen & f.mask(), 0, "{} overlaps", f.name);
                seen |= f.mask();
                assert_eq!(reg.field(f.name), Some(f));
            }
            if let Some(n) = reg.override_name() {
                assert_eq!(Reg::from_override_name(n), Some(reg));
            }
        }
        assert_eq!(
            fields::ISAR0_ATOMIC.qualified().to_string(),
            "id_aa64isar0.atomic"
        );
        assert_eq!(Reg::from_override_name("ctr_el0"), None);
    }
}
