//! Boot-argument overrides of ID-register fields (Linux's idreg-override), parsed from the
//! whole command line into [`BootArgs`].
//!
//! Understood: `arm64.nolse`, `arm64.nopauth`, `arm64.nobti`, `arm64.nosve`,
//! `arm64.nosme`, `arm64.nomte`, `kvm-arm.mode=nvhe|protected|none` (nvhe and protected
//! imply `id_aa64mmfr1.vh=0`), `nokaslr`, and `<reg>.<field>=<value>` for every described
//! field of the ID_AA64* registers (value decimal or `0x` hex). An override may only move
//! a field toward its safe value; anything else — unknown register or field, bad value,
//! unsafe direction — is reported as a [`Diagnostic`] and changes nothing. Tokens that are
//! not ours (`console=…`, `loglevel=7`) are ignored silently. Parsing stops at `--`.

use super::regs::{fields, Field, IdRegs, Reg};
use core::fmt;

/// `kvm-arm.mode=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KvmMode {
    /// Not given: KVM in its default (for this project: nVHE) mode.
    #[default]
    Default,
    /// `nvhe`.
    Nvhe,
    /// `protected` (pKVM).
    Protected,
    /// `none`: KVM disabled.
    None,
}

impl KvmMode {
    /// The command-line spelling (`default` for [`KvmMode::Default`]).
    pub const fn name(self) -> &'static str {
        match self {
            KvmMode::Default => "default",
            KvmMode::Nvhe => "nvhe",
            KvmMode::Protected => "protected",
            KvmMode::None => "none",
        }
    }
}

/// Most field overrides kept (`arm64.nopauth` alone uses six).
pub const MAX_FIELD_OVERRIDES: usize = 32;
/// Most diagnostics kept; later ones are only counted ([`Diagnostics::dropped`]).
pub const MAX_DIAGNOSTICS: usize = 16;

/// One field forced to a raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldOverride {
    /// The field.
    pub field: &'static Field,
    /// The raw value requested.
    pub value: u64,
}

/// The settled field overrides: plain data, applied to every CPU's registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldOverrides {
    entries: [Option<FieldOverride>; MAX_FIELD_OVERRIDES],
}

impl Default for FieldOverrides {
    fn default() -> Self {
        FieldOverrides::NONE
    }
}

impl FieldOverrides {
    /// No overrides.
    pub const NONE: FieldOverrides = FieldOverrides {
        entries: [None; MAX_FIELD_OVERRIDES],
    };

    /// The overrides, in command-line order.
    pub fn iter(&self) -> impl Iterator<Item = &FieldOverride> + '_ {
        self.entries.iter().flatten()
    }

    /// `regs` with every override applied where it moves the field toward safety on
    /// this CPU; where this CPU is already at or past the override it keeps its value
    /// (an override never raises a field).
    pub fn apply(&self, regs: &IdRegs) -> IdRegs {
        let mut out = *regs;
        for o in self.iter() {
            let cur = out.field_raw(o.field);
            if o.field.is_safe_override(o.value, cur) {
                out.set_field_raw(o.field, o.value);
            }
        }
        out
    }
}

/// Why a token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagnosticKind {
    /// `id_…` names no overridable register.
    UnknownRegister,
    /// The register has no such described field.
    UnknownField(Reg),
    /// `<reg>.<field>` without `=<value>`.
    MissingValue,
    /// The value is not a decimal or `0x` hex number.
    BadValue,
    /// The value does not fit the field.
    ValueTooWide {
        /// The field.
        field: &'static Field,
        /// Largest raw value.
        max: u64,
    },
    /// `arm64.<x>` that we do not implement, or given a value.
    UnknownOption,
    /// `kvm-arm.mode=` with a mode other than nvhe, protected or none.
    UnknownKvmMode,
    /// The override would move the field away from its safe value on the boot CPU.
    Unsafe {
        /// The field.
        field: &'static Field,
        /// The boot CPU's raw value.
        current: u64,
        /// The requested raw value.
        requested: u64,
    },
    /// More than [`MAX_FIELD_OVERRIDES`] fields overridden.
    TooManyOverrides,
}

/// One rejected command-line token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnostic<'a> {
    /// The token as written.
    pub token: &'a str,
    /// Why it was rejected.
    pub kind: DiagnosticKind,
}

impl fmt::Display for Diagnostic<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ignored: ", self.token)?;
        match self.kind {
            DiagnosticKind::UnknownRegister => f.write_str("no overridable ID register of that name"),
            DiagnosticKind::UnknownField(reg) => {
                write!(f, "{} has no field of that name", reg.override_name().unwrap_or(reg.name()))
            }
            DiagnosticKind::MissingValue => f.write_str("missing `=<value>`"),
            DiagnosticKind::BadValue => f.write_str("value is not a decimal or 0x-hex number"),
            DiagnosticKind::ValueTooWide { field, max } => {
                write!(f, "{} holds at most {max:#x}", field.qualified())
            }
            DiagnosticKind::UnknownOption => f.write_str("unknown arm64 option"),
            DiagnosticKind::UnknownKvmMode => f.write_str("kvm-arm.mode must be nvhe, protected or none"),
            DiagnosticKind::Unsafe { field, current, requested } => write!(
                f,
                "unsafe override: would move {} from {current:#x} to {requested:#x}, away from its safe value",
                field.qualified()
            ),
            DiagnosticKind::TooManyOverrides => {
                write!(f, "more than {MAX_FIELD_OVERRIDES} field overrides")
            }
        }
    }
}

/// A fixed-capacity list of diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Diagnostics<'a> {
    items: [Option<Diagnostic<'a>>; MAX_DIAGNOSTICS],
    dropped: usize,
}

impl<'a> Diagnostics<'a> {
    const EMPTY: Diagnostics<'a> = Diagnostics {
        items: [None; MAX_DIAGNOSTICS],
        dropped: 0,
    };

    fn push(&mut self, d: Diagnostic<'a>) {
        match self.items.iter_mut().find(|s| s.is_none()) {
            Some(slot) => *slot = Some(d),
            None => self.dropped += 1,
        }
    }

    /// The kept diagnostics, in order.
    pub fn iter(&self) -> impl Iterator<Item = &Diagnostic<'a>> + '_ {
        self.items.iter().flatten()
    }

    /// Number kept.
    pub fn len(&self) -> usize {
        self.iter().count()
    }

    /// Whether there are none (kept or dropped).
    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.dropped == 0
    }

    /// Diagnostics that did not fit.
    pub fn dropped(&self) -> usize {
        self.dropped
    }
}

/// The command line, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootArgs<'a> {
    overrides: [Option<(FieldOverride, &'a str)>; MAX_FIELD_OVERRIDES],
    kvm_mode: KvmMode,
    nokaslr: bool,
    diagnostics: Diagnostics<'a>,
}

const NOPAUTH: &[&Field] = &[
    &fields::ISAR1_APA,
    &fields::ISAR1_API,
    &fields::ISAR1_GPA,
    &fields::ISAR1_GPI,
    &fields::ISAR2_APA3,
    &fields::ISAR2_GPA3,
];

fn parse_value(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u64::from_str_radix(hex, 16).ok()
    } else {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
}

impl<'a> BootArgs<'a> {
    /// No arguments.
    pub const EMPTY: BootArgs<'static> = BootArgs {
        overrides: [None; MAX_FIELD_OVERRIDES],
        kvm_mode: KvmMode::Default,
        nokaslr: false,
        diagnostics: Diagnostics::EMPTY,
    };

    /// Parses a whole command line (whitespace-separated tokens).
    pub fn parse(cmdline: &'a str) -> BootArgs<'a> {
        let mut args = BootArgs {
            overrides: [None; MAX_FIELD_OVERRIDES],
            kvm_mode: KvmMode::Default,
            nokaslr: false,
            diagnostics: Diagnostics::EMPTY,
        };
        for token in cmdline.split_ascii_whitespace() {
            if token == "--" {
                break; // the rest belongs to init
            }
            args.parse_token(token);
        }
        args
    }

    fn diag(&mut self, token: &'a str, kind: DiagnosticKind) {
        self.diagnostics.push(Diagnostic { token, kind });
    }

    fn add(&mut self, token: &'a str, field: &'static Field, value: u64) {
        // Every token is kept in command-line order; which one takes effect for a field
        // is decided after `settle` has dropped the unsafe ones (the last safe one wins),
        // so a bad later token cannot undo a good earlier one.
        match self.overrides.iter().position(|e| e.is_none()) {
            Some(i) => self.overrides[i] = Some((FieldOverride { field, value }, token)),
            None => self.diag(token, DiagnosticKind::TooManyOverrides),
        }
    }

    /// The kept overrides that take effect: for each field, the last one given.
    fn effective(&self) -> impl Iterator<Item = &(FieldOverride, &'a str)> + '_ {
        self.overrides.iter().enumerate().filter_map(move |(i, e)| {
            let (o, _) = e.as_ref()?;
            let superseded = self.overrides[i + 1..]
                .iter()
                .flatten()
                .any(|(later, _)| later.field == o.field);
            (!superseded).then_some(e.as_ref()?)
        })
    }

    fn parse_token(&mut self, token: &'a str) {
        let (key, value) = match token.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (token, None),
        };
        if key == "nokaslr" && value.is_none() {
            self.nokaslr = true;
        } else if let Some(opt) = key.strip_prefix("arm64.") {
            let fields: &[&'static Field] = match opt {
                "nolse" => &[&fields::ISAR0_ATOMIC],
                "nopauth" => NOPAUTH,
                "nobti" => &[&fields::PFR1_BT],
                "nosve" => &[&fields::PFR0_SVE],
                "nosme" => &[&fields::PFR1_SME],
                "nomte" => &[&fields::PFR1_MTE],
                _ => &[],
            };
            if fields.is_empty() || value.is_some() {
                self.diag(token, DiagnosticKind::UnknownOption);
            } else {
                for f in fields {
                    self.add(token, f, 0);
                }
            }
        } else if key == "kvm-arm.mode" {
            match value {
                Some("nvhe") => {
                    self.kvm_mode = KvmMode::Nvhe;
                    self.add(token, &fields::MMFR1_VH, 0);
                }
                Some("protected") => {
                    self.kvm_mode = KvmMode::Protected;
                    self.add(token, &fields::MMFR1_VH, 0);
                }
                Some("none") => self.kvm_mode = KvmMode::None,
                _ => self.diag(token, DiagnosticKind::UnknownKvmMode),
            }
        } else if let Some((reg_name, field_name)) = key.split_once('.') {
            if !reg_name
                .get(..3)
                .is_some_and(|p| p.eq_ignore_ascii_case("id_"))
            {
                return; // somebody else's parameter (module.param=…)
            }
            let Some(reg) = Reg::from_override_name(reg_name) else {
                return self.diag(token, DiagnosticKind::UnknownRegister);
            };
            let Some(field) = reg.field(field_name) else {
                return self.diag(token, DiagnosticKind::UnknownField(reg));
            };
            let Some(value) = value else {
                return self.diag(token, DiagnosticKind::MissingValue);
            };
            let Some(v) = parse_value(value) else {
                return self.diag(token, DiagnosticKind::BadValue);
            };
            if v > field.max_raw() {
                return self.diag(
                    token,
                    DiagnosticKind::ValueTooWide {
                        field,
                        max: field.max_raw(),
                    },
                );
            }
            self.add(token, field, v);
        }
    }

    /// Drops every override that would move a field of the boot CPU away from its safe
    /// value, with a diagnostic each (Linux checks against the boot CPU and then removes
    /// the override for all CPUs). [`BootCpu::new`](super::BootCpu::new) calls this.
    pub fn settle(&mut self, boot: &IdRegs) {
        for i in 0..MAX_FIELD_OVERRIDES {
            let Some((o, token)) = self.overrides[i] else {
                continue;
            };
            let current = boot.field_raw(o.field);
            if !o.field.is_safe_override(o.value, current) {
                self.overrides[i] = None;
                self.diag(
                    token,
                    DiagnosticKind::Unsafe {
                        field: o.field,
                        current,
                        requested: o.value,
                    },
                );
            }
        }
    }

    /// The field overrides kept so far.
    pub fn field_overrides(&self) -> FieldOverrides {
        let mut out = FieldOverrides::NONE;
        for (slot, (o, _)) in out.entries.iter_mut().zip(self.effective()) {
            *slot = Some(*o);
        }
        out
    }

    /// The tokens that produced each kept override (for "forced" log lines).
    pub fn applied(&self) -> impl Iterator<Item = (&FieldOverride, &'a str)> + '_ {
        self.effective().map(|(o, t)| (o, *t))
    }

    /// `kvm-arm.mode`.
    pub const fn kvm_mode(&self) -> KvmMode {
        self.kvm_mode
    }

    /// Whether `nokaslr` was given.
    pub const fn nokaslr(&self) -> bool {
        self.nokaslr
    }

    /// Rejected tokens.
    pub const fn diagnostics(&self) -> &Diagnostics<'a> {
        &self.diagnostics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_expand_to_fields() {
        let a = BootArgs::parse("console=ttyAMA0 arm64.nopauth loglevel=7 arm64.nolse nokaslr");
        assert!(a.diagnostics().is_empty());
        assert!(a.nokaslr());
        let names: Vec<_> = a.field_overrides().iter().map(|o| o.field.name).collect();
        assert_eq!(
            names,
            ["apa", "api", "gpa", "gpi", "apa3", "gpa3", "atomic"]
        );
        assert!(a.field_overrides().iter().all(|o| o.value == 0));
    }

    #[test]
    fn kvm_modes() {
        let a = BootArgs::parse("kvm-arm.mode=protected");
        assert_eq!(a.kvm_mode(), KvmMode::Protected);
        let o: Vec<_> = a.field_overrides().iter().copied().collect();
        assert_eq!(
            o,
            [FieldOverride {
                field: &fields::MMFR1_VH,
                value: 0
            }]
        );
        assert_eq!(
            BootArgs::parse("kvm-arm.mode=nvhe").kvm_mode(),
            KvmMode::Nvhe
        );
        let none = BootArgs::parse("kvm-arm.mode=none");
        assert_eq!(none.kvm_mode(), KvmMode::None);
        assert_eq!(none.field_overrides().iter().count(), 0);
        let bad = BootArgs::parse("kvm-arm.mode=vhe");
        assert_eq!(bad.kvm_mode(), KvmMode::Default);
        let d: Vec<_> = bad.diagnostics().iter().copied().collect();
        assert_eq!(
            d,
            [Diagnostic {
                token: "kvm-arm.mode=vhe",
                kind: DiagnosticKind::UnknownKvmMode
            }]
        );
    }

    #[test]
    fn generic_form_accepts_decimal_and_hex() {
        let a = BootArgs::parse("id_aa64isar0.atomic=0 id_aa64mmfr1.vh=0x0 ID_AA64PFR0.SVE=0");
        assert!(a.diagnostics().is_empty(), "{:?}", a.diagnostics());
        assert_eq!(a.field_overrides().iter().count(), 3);
        // Later tokens replace earlier ones for the same field.
        let a = BootArgs::parse("id_aa64isar0.atomic=2 id_aa64isar0.atomic=0");
        let o: Vec<_> = a.field_overrides().iter().map(|o| o.value).collect();
        assert_eq!(o, [0]);
    }

    #[test]
    fn bad_tokens_are_diagnosed_and_ignored() {
        let line = "id_aa64foo.x=1 id_aa64isar0.bogus=1 id_aa64isar0.atomic id_aa64isar0.atomic=zz \
                    id_aa64isar0.atomic=16 arm64.nofoo arm64.nobti=1 foo.bar=1 printk.time=1 -- arm64.nolse";
        let a = BootArgs::parse(line);
        let kinds: Vec<_> = a.diagnostics().iter().map(|d| (d.token, d.kind)).collect();
        assert_eq!(
            kinds,
            [
                ("id_aa64foo.x=1", DiagnosticKind::UnknownRegister),
                (
                    "id_aa64isar0.bogus=1",
                    DiagnosticKind::UnknownField(Reg::Isar0)
                ),
                ("id_aa64isar0.atomic", DiagnosticKind::MissingValue),
                ("id_aa64isar0.atomic=zz", DiagnosticKind::BadValue),
                (
                    "id_aa64isar0.atomic=16",
                    DiagnosticKind::ValueTooWide {
                        field: &fields::ISAR0_ATOMIC,
                        max: 15
                    }
                ),
                ("arm64.nofoo", DiagnosticKind::UnknownOption),
                ("arm64.nobti=1", DiagnosticKind::UnknownOption),
            ]
        );
        // Nothing after `--` is ours; nothing bad was kept.
        assert_eq!(a.field_overrides().iter().count(), 0);
        let text = a.diagnostics().iter().next().unwrap().to_string();
        assert!(text.contains("id_aa64foo.x=1"), "{text}");
    }

    #[test]
    fn an_unsafe_later_token_does_not_undo_an_earlier_safe_one() {
        let boot = IdRegs {
            isar0: 0x0000_0000_0020_0000, // ATOMIC = 2
            ..IdRegs::default()
        };
        let mut a = BootArgs::parse("arm64.nolse id_aa64isar0.atomic=9");
        a.settle(&boot);
        let o: Vec<_> = a
            .field_overrides()
            .iter()
            .map(|o| (o.field.name, o.value))
            .collect();
        assert_eq!(o, [("atomic", 0)]);
        assert_eq!(a.diagnostics().iter().count(), 1);
        assert_eq!(
            a.applied().map(|(_, t)| t).collect::<Vec<_>>(),
            ["arm64.nolse"]
        );
    }

    #[test]
    fn settle_drops_unsafe_overrides() {
        let boot = IdRegs {
            isar0: 0x0020_0000,
            ctr: 0x8444_c004,
            ..IdRegs::default()
        };
        let mut a =
            BootArgs::parse("id_aa64isar0.atomic=3 id_aa64isar0.crc32=0 id_aa64isar1.apa=1");
        a.settle(&boot);
        let kept: Vec<_> = a.field_overrides().iter().map(|o| o.field.name).collect();
        assert_eq!(kept, ["crc32"]);
        let d: Vec<_> = a.diagnostics().iter().copied().collect();
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[0].kind,
            DiagnosticKind::Unsafe {
                field: &fields::ISAR0_ATOMIC,
                current: 2,
                requested: 3
            }
        );
        assert!(d[0].to_string().contains("unsafe override"));
        assert_eq!(d[1].token, "id_aa64isar1.apa=1");
    }

    #[test]
    fn apply_never_raises() {
        let mut a = BootArgs::parse("id_aa64isar0.atomic=0 id_aa64pfr1.ssbs=1");
        let max = IdRegs {
            isar0: 0x0020_0000,
            pfr1: 0x20,
            ..IdRegs::default()
        };
        a.settle(&max);
        let o = a.field_overrides();
        let applied = o.apply(&max);
        assert_eq!(applied.field(&fields::ISAR0_ATOMIC), 0);
        assert_eq!(applied.field(&fields::PFR1_SSBS), 1);
        let weaker = IdRegs::default();
        assert_eq!(o.apply(&weaker), weaker);
    }

    proptest::proptest! {
        /// Whatever the command line, applying its settled overrides never moves a
        /// field away from its safe value, and settled overrides move it only down
        /// (or to the exact-field safe value).
        #[test]
        fn overrides_only_move_toward_safety(
            regs in proptest::array::uniform8(proptest::num::u64::ANY),
            picks in proptest::collection::vec((0usize..9, 0usize..16, 0u64..16), 0..12),
        ) {
            let cpu = IdRegs {
                pfr0: regs[0], pfr1: regs[1], isar0: regs[2], isar1: regs[3],
                isar2: regs[4], mmfr0: regs[5], mmfr1: regs[6], mmfr2: regs[7],
                ..IdRegs::default()
            };
            let mut line = String::new();
            for (r, f, v) in &picks {
                let reg = Reg::ALL[4 + r];
                let fields = reg.fields();
                let field = &fields[f % fields.len()];
                line.push_str(&format!("{}.{}={v} ", reg.override_name().unwrap(), field.name));
            }
            let mut args = BootArgs::parse(&line);
            args.settle(&cpu);
            let out = args.field_overrides().apply(&cpu);
            for reg in Reg::ALL {
                for f in reg.fields() {
                    let (before, after) = (cpu.field_raw(f), out.field_raw(f));
                    proptest::prop_assert_eq!(f.safe_raw(after, before), after, "{}", f.qualified());
                }
            }
        }
    }

    #[test]
    fn diagnostics_capacity_is_bounded() {
        let mut line = String::new();
        for _ in 0..(MAX_DIAGNOSTICS + 3) {
            line.push_str("arm64.nope ");
        }
        let a = BootArgs::parse(&line);
        assert_eq!(a.diagnostics().len(), MAX_DIAGNOSTICS);
        assert_eq!(a.diagnostics().dropped(), 3);
    }
}
