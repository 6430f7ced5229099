//! Alternative sites written in `global_asm!` (vectors and init), where the Rust site
//! macros of `shared::alternative` cannot go. Each macro expands to one template string
//! with the same record layout the Rust macros emit (`docs/alternatives.md`); the cap
//! field and callback id come in as named `const` operands of the surrounding
//! `global_asm!`, computed with `shared::alternative::{plain_cap_field,
//! callback_cap_field}`, so a cap number out of range still fails the build.
//!
//! Like the Rust macros these own the numeric labels `661`–`664`.

/// A plain site: `$default` in place, `$repl` in `.subsection 1` of the current section,
/// and a record whose cap field is the operand named `$cap`. The assembler checks both
/// halves have the same length.
macro_rules! asm_alt_plain {
    ($default:literal, $repl:literal, $cap:literal) => {
        concat!(
            "661:\n",
            $default,
            "\n662:\n",
            ".pushsection .altinstructions, \"a\"\n",
            ".balign 4\n",
            ".word 661b - .\n",
            ".word 663f - .\n",
            ".hword {",
            $cap,
            "}\n",
            ".byte 662b - 661b\n",
            ".byte 664f - 663f\n",
            ".popsection\n",
            ".subsection 1\n",
            "663:\n",
            $repl,
            "\n664:\n",
            ".org . - (664b - 663b) + (662b - 661b)\n",
            ".org . - (662b - 661b) + (664b - 663b)\n",
            ".previous\n"
        )
    };
}

/// A callback site: the template `$template` in place and a callback record whose cap
/// field (callback bit set) is the operand named `$cap` and whose callback id is the
/// operand named `$cb`.
macro_rules! asm_alt_cb {
    ($template:literal, $cap:literal, $cb:literal) => {
        concat!(
            "661:\n",
            $template,
            "\n662:\n",
            ".pushsection .altinstructions, \"a\"\n",
            ".balign 4\n",
            ".word 661b - .\n",
            ".word {",
            $cb,
            "}\n",
            ".hword {",
            $cap,
            "}\n",
            ".byte 662b - 661b\n",
            ".byte 0\n",
            ".popsection\n"
        )
    };
}

pub(crate) use {asm_alt_cb, asm_alt_plain};
