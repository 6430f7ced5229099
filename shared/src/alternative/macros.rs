//! The alternative site macros and the functions built on them: what Rust code in either
//! image writes to get a patchable instruction sequence and its `.altinstructions` record.
//!
//! Four kinds of site (see `docs/alternatives.md` for the machine code they produce):
//!
//! | macro / function | default code | record |
//! | --- | --- | --- |
//! | `alternative!` | your instructions | plain: replacement in `.subsection 1`, equal length checked by the assembler |
//! | `alternative_cb!` | your template instructions | callback: bit 15 set, [`CallbackId`] in `alt_offset`, `alt_len` 0 |
//! | `cap_likely!` | `b <false path>` | callback [`CallbackId::PatchNops`] |
//! | `cap_unlikely!` | `nop` | plain, replacement `b <true path>` |
//!
//! `kern_hyp_va`, `kimage_voffset`, `final_ctr_el0`, `system_capabilities_finalized` and
//! `boot_capabilities_finalized` wrap callback and check sites for the uses the hyp has.
//!
//! The macros and those functions exist only when compiling for AArch64 (`asm!` with A64
//! instructions); the `const fn` helpers below that check and encode record fields are
//! available everywhere so the host can test them.
//!
//! Rules for code written inside a site: the macros own the numeric local labels `661`–`664`,
//! so templates must not define them; templates must not contain literal loads or `adr`
//! (the patcher refuses to move them, `LINUX-FACTS.md` §1.5).

use super::{CallbackId, CB_BIT};
use crate::cpucaps::NCAPS;

/// Checks, while compiling, that `n` is a valid cap number for an alternative record.
///
/// Every site macro evaluates this in a `const` operand, so a site naming a cap number
/// `>= NCAPS` does not compile.
///
/// # Panics
///
/// If `n >= NCAPS`. In the macros this runs during constant evaluation, so the panic is a
/// build error ("alternative site: cap number out of range"), never a run-time one.
pub const fn site_cap_number(n: u16) -> u16 {
    assert!(
        (n as usize) < NCAPS,
        "alternative site: cap number out of range (must be < NCAPS)"
    );
    n
}

/// The record's cap field for a plain site of cap number `n`: the checked number itself.
///
/// # Panics
///
/// If `n >= NCAPS` (a build error when evaluated in a site macro).
pub const fn plain_cap_field(n: u16) -> u16 {
    site_cap_number(n)
}

/// The record's cap field for a callback site of cap number `n`: the checked number with
/// [`CB_BIT`] set.
///
/// # Panics
///
/// If `n >= NCAPS` (a build error when evaluated in a site macro).
pub const fn callback_cap_field(n: u16) -> u16 {
    site_cap_number(n) | CB_BIT
}

/// Template size in bytes that callback `cb` requires, or 0 if it accepts any length.
///
/// `alternative_cb!` (AArch64 only) makes the assembler check a site's template
/// against this, so a `kern_hyp_va` template with four instructions does not build.
pub const fn callback_template_bytes(cb: CallbackId) -> u16 {
    match cb.template_len() {
        Some(n) => (n * 4) as u16,
        None => 0,
    }
}

/// Turns the cap argument of a site macro into a checked cap number.
///
/// `number = <u16 constant>` takes a raw number; anything else must be a
/// [`Cap`](crate::cpucaps::Cap) constant expression.
#[cfg(target_arch = "aarch64")]
#[doc(hidden)]
#[macro_export]
macro_rules! __alt_cap_number {
    (number = $n:expr $(,)?) => {
        $crate::alternative::site_cap_number($n)
    };
    ($cap:expr $(,)?) => {
        $crate::alternative::site_cap_number($crate::cpucaps::Cap::number($cap))
    };
}

/// Emits a plain alternative site: default instructions inline, replacement instructions in
/// `.subsection 1` of the current section, and a 12-byte record in `.altinstructions`.
///
/// ```text
/// alternative!(
///     cap = <Cap constant>,              // or: cap_number = <u16 constant>
///     default = ["insn", "insn", ...],   // runs until the cap's pass patches the site
///     replacement = ["insn", ...],       // copied over the default when the cap is set
///     <asm! operands, clobber_abi and options, as for asm!>
/// )
/// ```
///
/// It expands to one `asm!` statement, so it must be used inside `unsafe` and its operands
/// are exactly `asm!`'s: positional, named, explicit-register and `label` operands may be
/// referenced from both halves. The two halves must assemble to the same number of bytes;
/// two `.org` directives make any difference an assembly error (LLVM reports "invalid
/// .org offset"). The cap must be a compile-time constant; a cap number `>= NCAPS`
/// is a build error.
///
/// Choose `options` for the *union* of what the two halves do (for example no `nomem` if
/// either half touches memory).
///
/// # Example
///
/// ```ignore
/// use shared::{alternative, cpucaps::Cap};
///
/// // Speculation barrier: `dsb nsh; isb` unless the CPUs have SB. The assembler here does
/// // not know `sb` without a target feature, so it is written as its encoding.
/// // SAFETY: barriers only; no memory, stack or flags are touched.
/// unsafe {
///     alternative!(
///         cap = Cap::HasSb,
///         default = ["dsb nsh", "isb"],
///         replacement = [".inst 0xd50330ff // sb", "nop"],
///         options(nostack, preserves_flags),
///     )
/// }
///
/// // With operands: they work as in asm!.
/// let x: u64 = 5;
/// let y: u64;
/// // SAFETY: register arithmetic only.
/// unsafe {
///     alternative!(
///         cap = Cap::HasCrc32,
///         default = ["add {0}, {1}, #1"],
///         replacement = ["sub {0}, {1}, #1"],
///         lateout(reg) y,
///         in(reg) x,
///         options(pure, nomem, nostack, preserves_flags),
///     )
/// }
/// ```
#[cfg(target_arch = "aarch64")]
#[macro_export]
macro_rules! alternative {
    (
        cap = $cap:expr,
        default = [$($default:expr),+ $(,)?],
        replacement = [$($repl:expr),+ $(,)?]
        $(, $($operands:tt)*)?
    ) => {
        $crate::__alt_plain_munch!(
            [$cap] [$($default),+] [$($repl),+] [] $($($operands)*)?
        )
    };
    (
        cap_number = $n:expr,
        default = [$($default:expr),+ $(,)?],
        replacement = [$($repl:expr),+ $(,)?]
        $(, $($operands:tt)*)?
    ) => {
        $crate::__alt_plain_munch!(
            [number = $n] [$($default),+] [$($repl),+] [] $($($operands)*)?
        )
    };
}

/// Collects the caller's `asm!` operands (so that a trailing comma is dropped) and emits a
/// plain site. The macro's own named operands go last: `asm!` accepts named operands after
/// positional, named and explicit-register ones, so every caller operand form keeps working.
#[cfg(target_arch = "aarch64")]
#[doc(hidden)]
#[macro_export]
macro_rules! __alt_plain_munch {
    (@emit [$($cap:tt)+] [$($default:expr),+] [$($repl:expr),+] [$($ops:tt)*]) => {
        ::core::arch::asm!(
            "661:",
            $($default,)+
            "662:",
            ".pushsection .altinstructions, \"a\"",
            ".balign 4",
            ".word 661b - .",
            ".word 663f - .",
            ".hword {__alt_cap_field}",
            ".byte 662b - 661b",
            ".byte 664f - 663f",
            ".popsection",
            ".subsection 1",
            "663:",
            $($repl,)+
            "664:",
            // `.org` cannot move backwards: one of the two fails unless the lengths match.
            ".org . - (664b - 663b) + (662b - 661b)",
            ".org . - (662b - 661b) + (664b - 663b)",
            ".previous",
            $($ops)*
            __alt_cap_field = const $crate::alternative::plain_cap_field(
                $crate::__alt_cap_number!($($cap)+)
            ),
        )
    };
    // No caller operands.
    ($cap:tt $default:tt $repl:tt []) => {
        $crate::__alt_plain_munch!(@emit $cap $default $repl [])
    };
    // All operands collected: end them with exactly one comma.
    ($cap:tt $default:tt $repl:tt [$($acc:tt)+] $(,)?) => {
        $crate::__alt_plain_munch!(@emit $cap $default $repl [$($acc)+ ,])
    };
    // Four tokens per step while at least one more follows (keeps the recursion shallow;
    // the last token, possibly a trailing comma, is always left for the arms above).
    ($cap:tt $default:tt $repl:tt [$($acc:tt)*] $a:tt $b:tt $c:tt $d:tt $e:tt $($rest:tt)*) => {
        $crate::__alt_plain_munch!($cap $default $repl [$($acc)* $a $b $c $d] $e $($rest)*)
    };
    ($cap:tt $default:tt $repl:tt [$($acc:tt)*] $next:tt $($rest:tt)*) => {
        $crate::__alt_plain_munch!($cap $default $repl [$($acc)* $next] $($rest)*)
    };
}

/// Emits a callback site: template instructions inline (they are also what runs until the
/// cap's pass calls the callback) and a callback record naming `callback` by its id.
///
/// ```text
/// alternative_cb!(
///     cap = <Cap constant>,              // or: cap_number = <u16 constant>
///     callback = <CallbackId constant>,
///     template = ["insn", ...],          // the callback reads registers/size from these
///     <asm! operands, clobber_abi and options, as for asm!>
/// )
/// ```
///
/// Expands to one `asm!` statement (use inside `unsafe`). The record has bit 15 of its cap
/// field set, the callback's raw id as `alt_offset` and `alt_len` 0. If the callback needs a
/// fixed template size ([`CallbackId::template_len`]) the assembler checks it, so a wrong
/// number of template instructions does not build.
///
/// # Example
///
/// ```ignore
/// use shared::{alternative::CallbackId, alternative_cb, cpucaps::Cap};
///
/// let mut v: u64 = 0x1234;
/// // SAFETY: the template and whatever the callback writes only transform `v`'s register.
/// unsafe {
///     alternative_cb!(
///         cap = Cap::AlwaysSystem,
///         callback = CallbackId::KernHypVa,
///         template = [
///             "and {r}, {r}, #1",
///             "ror {r}, {r}, #1",
///             "add {r}, {r}, #0",
///             "add {r}, {r}, #0, lsl #12",
///             "ror {r}, {r}, #63",
///         ],
///         r = inout(reg) v,
///         options(nomem, nostack, preserves_flags),
///     )
/// }
/// ```
#[cfg(target_arch = "aarch64")]
#[macro_export]
macro_rules! alternative_cb {
    (
        cap = $cap:expr,
        callback = $cb:expr,
        template = [$($template:expr),+ $(,)?]
        $(, $($operands:tt)*)?
    ) => {
        $crate::__alt_cb_munch!([$cap] [$cb] [$($template),+] [] $($($operands)*)?)
    };
    (
        cap_number = $n:expr,
        callback = $cb:expr,
        template = [$($template:expr),+ $(,)?]
        $(, $($operands:tt)*)?
    ) => {
        $crate::__alt_cb_munch!([number = $n] [$cb] [$($template),+] [] $($($operands)*)?)
    };
}

/// Collects the caller's operands for [`alternative_cb!`] (dropping a trailing comma) and
/// emits the callback site; see `__alt_plain_munch!` for why the macro's operands go last.
#[cfg(target_arch = "aarch64")]
#[doc(hidden)]
#[macro_export]
macro_rules! __alt_cb_munch {
    (@emit [$($cap:tt)+] [$cb:expr] [$($template:expr),+] [$($ops:tt)*]) => {
        ::core::arch::asm!(
            "661:",
            $($template,)+
            "662:",
            ".pushsection .altinstructions, \"a\"",
            ".balign 4",
            ".word 661b - .",
            ".word {__alt_cb_id}",
            ".hword {__alt_cap_field}",
            ".byte 662b - 661b",
            ".byte 0",
            ".popsection",
            // Template size check, only for callbacks that need a fixed size.
            ".if {__alt_cb_bytes}",
            ".subsection 1",
            ".org . - (662b - 661b) + {__alt_cb_bytes}",
            ".org . - {__alt_cb_bytes} + (662b - 661b)",
            ".previous",
            ".endif",
            $($ops)*
            __alt_cap_field = const $crate::alternative::callback_cap_field(
                $crate::__alt_cap_number!($($cap)+)
            ),
            __alt_cb_id = const $crate::alternative::CallbackId::raw($cb),
            __alt_cb_bytes = const $crate::alternative::callback_template_bytes($cb),
        )
    };
    ($cap:tt $cb:tt $template:tt []) => {
        $crate::__alt_cb_munch!(@emit $cap $cb $template [])
    };
    ($cap:tt $cb:tt $template:tt [$($acc:tt)+] $(,)?) => {
        $crate::__alt_cb_munch!(@emit $cap $cb $template [$($acc)+ ,])
    };
    ($cap:tt $cb:tt $template:tt [$($acc:tt)*] $a:tt $b:tt $c:tt $d:tt $e:tt $($rest:tt)*) => {
        $crate::__alt_cb_munch!($cap $cb $template [$($acc)* $a $b $c $d] $e $($rest)*)
    };
    ($cap:tt $cb:tt $template:tt [$($acc:tt)*] $next:tt $($rest:tt)*) => {
        $crate::__alt_cb_munch!($cap $cb $template [$($acc)* $next] $($rest)*)
    };
}

/// `true` once the cap's alternatives pass has run with the cap set; `false` before that and
/// whenever the cap is absent. Use it where the cap is expected to be present.
///
/// The site is exactly one instruction, `b <false path>`, with a callback record for
/// [`CallbackId::PatchNops`]: when the cap is set, the shared NOP callback turns the branch
/// into a `nop` and execution falls through to the true path. It reads no memory.
///
/// The argument is a [`Cap`](crate::cpucaps::Cap) constant, or `number = <u16 constant>`
/// for a raw cap number; a number `>= NCAPS` does not compile.
///
/// # Example
///
/// ```ignore
/// use shared::{cap_likely, cpucaps::Cap};
///
/// if cap_likely!(Cap::HasLseAtomics) {
///     // LSE path
/// } else {
///     // LL/SC fallback (also what runs before the boot pass)
/// }
/// ```
#[cfg(target_arch = "aarch64")]
#[macro_export]
macro_rules! cap_likely {
    ($($cap:tt)+) => {
        'alt_likely: {
            // SAFETY: one branch to a Rust block in this function plus a record in
            // `.altinstructions`; no memory, stack or flags are touched. Patching only ever
            // turns the branch into a `nop`, which falls through to `true`.
            unsafe {
                ::core::arch::asm!(
                    "661:",
                    "b {no}",
                    "662:",
                    ".pushsection .altinstructions, \"a\"",
                    ".balign 4",
                    ".word 661b - .",
                    ".word {cb_id}",
                    ".hword {cap_field}",
                    ".byte 662b - 661b",
                    ".byte 0",
                    ".popsection",
                    cap_field = const $crate::alternative::callback_cap_field(
                        $crate::__alt_cap_number!($($cap)+)
                    ),
                    cb_id = const $crate::alternative::CallbackId::raw(
                        $crate::alternative::CallbackId::PatchNops
                    ),
                    no = label {
                        break 'alt_likely false;
                    },
                    options(nomem, nostack, preserves_flags),
                );
            }
            true
        }
    };
}

/// `true` once the cap's alternatives pass has run with the cap set; `false` before that and
/// whenever the cap is absent. Use it where the cap is expected to be absent.
///
/// The site is exactly one instruction, `nop`, with a plain record whose replacement (in
/// `.subsection 1`) is `b <true path>`; the patcher re-targets that branch when it copies it
/// over the `nop`. It reads no memory.
///
/// The argument is a [`Cap`](crate::cpucaps::Cap) constant, or `number = <u16 constant>`
/// for a raw cap number; a number `>= NCAPS` does not compile.
///
/// # Example
///
/// ```ignore
/// use shared::{cap_unlikely, cpucaps::Cap};
///
/// if cap_unlikely!(Cap::WorkaroundSpeculativeAt) {
///     // erratum workaround
/// }
/// ```
#[cfg(target_arch = "aarch64")]
#[macro_export]
macro_rules! cap_unlikely {
    ($($cap:tt)+) => {
        'alt_unlikely: {
            // SAFETY: one `nop` (patched to a branch to a Rust block in this function) plus a
            // record; no memory, stack or flags are touched.
            unsafe {
                ::core::arch::asm!(
                    "661:",
                    "nop",
                    "662:",
                    ".pushsection .altinstructions, \"a\"",
                    ".balign 4",
                    ".word 661b - .",
                    ".word 663f - .",
                    ".hword {cap_field}",
                    ".byte 662b - 661b",
                    ".byte 664f - 663f",
                    ".popsection",
                    ".subsection 1",
                    "663:",
                    "b {yes}",
                    "664:",
                    ".org . - (664b - 663b) + (662b - 661b)",
                    ".org . - (662b - 661b) + (664b - 663b)",
                    ".previous",
                    cap_field = const $crate::alternative::plain_cap_field(
                        $crate::__alt_cap_number!($($cap)+)
                    ),
                    yes = label {
                        break 'alt_unlikely true;
                    },
                    options(nomem, nostack, preserves_flags),
                );
            }
            false
        }
    };
}

/// The hyp VA of a host linear-map VA: `(va & va_mask) | tag_val << tag_lsb`
/// (`LINUX-FACTS.md` §5.2), as five patched instructions on one register.
///
/// A [`CallbackId::KernHypVa`] site tagged with `ALWAYS_SYSTEM`, so it is meaningful only
/// after the host's system pass has patched the image; until then it returns the template's
/// arithmetic on `va`, which is not an address.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn kern_hyp_va(va: u64) -> u64 {
    let mut v = va;
    // SAFETY: the template and the callback's output only transform `v`'s register; no
    // memory, stack or flags are touched.
    unsafe {
        crate::alternative_cb!(
            cap = crate::cpucaps::Cap::AlwaysSystem,
            callback = CallbackId::KernHypVa,
            template = [
                "and {r}, {r}, #1",
                "ror {r}, {r}, #1",
                "add {r}, {r}, #0",
                "add {r}, {r}, #0, lsl #12",
                "ror {r}, {r}, #63",
            ],
            r = inout(reg) v,
            options(nomem, nostack, preserves_flags),
        );
    }
    v
}

/// Emits the four-instruction MOVZ/MOVK template that a 64-bit-constant callback fills in
/// and returns the register's value.
#[cfg(target_arch = "aarch64")]
macro_rules! patched_u64 {
    ($cb:expr) => {{
        let v: u64;
        // SAFETY: the template and the callback's output only write `v`'s register; no
        // memory, stack or flags are touched.
        unsafe {
            crate::alternative_cb!(
                cap = crate::cpucaps::Cap::AlwaysSystem,
                callback = $cb,
                template = [
                    "movz {r}, #0",
                    "movk {r}, #0, lsl #16",
                    "movk {r}, #0, lsl #32",
                    "movk {r}, #0, lsl #48",
                ],
                r = out(reg) v,
                options(nomem, nostack, preserves_flags),
            );
        }
        v
    }};
}

/// The host's `kimage_voffset` (kernel image VA − PA) as a patched immediate
/// ([`CallbackId::KimageVoffset`], tagged `ALWAYS_SYSTEM`); 0 until the system pass.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn kimage_voffset() -> u64 {
    patched_u64!(CallbackId::KimageVoffset)
}

/// The sanitised system-wide CTR_EL0 as a patched immediate ([`CallbackId::FinalCtrEl0`],
/// tagged `ALWAYS_SYSTEM`); 0 until the system pass.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn final_ctr_el0() -> u64 {
    patched_u64!(CallbackId::FinalCtrEl0)
}

/// Whether the system-wide cap set is final: `cap_likely!(ALWAYS_SYSTEM)`, which flips to
/// `true` when the system alternatives pass patches this image (not when caps are computed).
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn system_capabilities_finalized() -> bool {
    crate::cap_likely!(crate::cpucaps::Cap::AlwaysSystem)
}

/// Speculation barrier: no later instruction executes speculatively until everything
/// before it has completed. `dsb nsh; isb` by default; `sb; nop` once the system pass
/// finds HAS_SB (FEAT_SB) on every CPU. One definition for both images; `sb` is written
/// as its encoding because the assembler does not enable FEAT_SB for these targets.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn speculation_barrier() {
    // SAFETY: both halves are barriers only; no memory, stack or flags are touched.
    unsafe {
        crate::alternative!(
            cap = crate::cpucaps::Cap::HasSb,
            default = ["dsb nsh", "isb"],
            replacement = [".inst 0xd50330ff // sb", "nop"],
            options(nostack, preserves_flags),
        )
    }
}

/// Whether the boot CPU's caps have been applied to this image: `cap_likely!(ALWAYS_BOOT)`,
/// which flips to `true` when the boot alternatives pass patches this image.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
pub fn boot_capabilities_finalized() -> bool {
    crate::cap_likely!(crate::cpucaps::Cap::AlwaysBoot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alternative::AltRecord;
    use crate::cpucaps::Cap;

    #[test]
    fn cap_fields_match_the_record_format() {
        for cap in Cap::ALL {
            let n = cap.number();
            assert_eq!(site_cap_number(n), n);
            assert_eq!(plain_cap_field(n), n);
            let field = callback_cap_field(n);
            assert_eq!(field & CB_BIT, CB_BIT);
            // A record built from the field reads back as a callback of the same cap.
            let r = AltRecord {
                orig_offset: 0,
                alt_offset: CallbackId::PatchNops.raw() as i32,
                cpucap: field,
                orig_len: 4,
                alt_len: 0,
            };
            assert!(r.is_callback());
            assert_eq!(r.cap_number(), n);
            assert_eq!(r.callback(), Some(CallbackId::PatchNops));
        }
    }

    #[test]
    #[should_panic(expected = "cap number out of range")]
    fn cap_number_at_ncaps_is_rejected() {
        // In a site macro this is a const evaluation, i.e. a build error; called at run time
        // here so the rule itself is tested on the build machine.
        let n = std::hint::black_box(NCAPS as u16);
        site_cap_number(n);
    }

    #[test]
    fn template_bytes_follow_the_callback_table() {
        assert_eq!(callback_template_bytes(CallbackId::KernHypVa), 20);
        assert_eq!(callback_template_bytes(CallbackId::KimageVoffset), 16);
        assert_eq!(callback_template_bytes(CallbackId::FinalCtrEl0), 16);
        assert_eq!(callback_template_bytes(CallbackId::BhbLoopIter), 4);
        assert_eq!(callback_template_bytes(CallbackId::PatchNops), 0);
        for cb in CallbackId::ALL {
            let bytes = callback_template_bytes(cb) as usize;
            assert_eq!(bytes, cb.template_len().map_or(0, |n| n * 4));
        }
    }
}
