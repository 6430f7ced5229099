//! Boot arguments (`/chosen/bootargs`, QEMU's `-append`): the options the host
//! understands, parsed into [`BootArgs`]. A bad value never stops the boot: it becomes a
//! [`BootArgWarning`] that the host prints, and the default stays in force.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use log::LevelFilter;

/// The log level used when `loglevel=` is absent or invalid.
pub const DEFAULT_LOG_LEVEL: LevelFilter = LevelFilter::Info;

/// The parsed boot arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootArgs {
    /// `loglevel=`: the most verbose log level printed.
    pub log_level: LevelFilter,
    /// `nokaslr`: no randomisation of VA layouts.
    pub nokaslr: bool,
    /// `host.test_fault=panic|abort`: fail on purpose once the console is up, so tests
    /// can check that a failure is reported (and never hangs).
    pub test_fault: Option<TestFault>,
}

/// A deliberate failure requested by `host.test_fault=`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestFault {
    /// A Rust panic.
    Panic,
    /// A data abort (a load from an unmapped address).
    Abort,
}

impl Default for BootArgs {
    fn default() -> Self {
        Self {
            log_level: DEFAULT_LOG_LEVEL,
            nokaslr: false,
            test_fault: None,
        }
    }
}

/// A boot argument that was ignored, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootArgWarning {
    /// `loglevel=` had a value that is neither a level name nor a number 0–9.
    BadLogLevel(String),
    /// `host.test_fault=` had a value other than `panic` or `abort`.
    BadTestFault(String),
    /// A flag-only option (such as `nokaslr`) was given a value.
    UnexpectedValue {
        /// The option.
        key: String,
        /// The value it was given.
        value: String,
    },
}

impl fmt::Display for BootArgWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadLogLevel(v) => write!(
                f,
                "ignoring loglevel={v}: expected 0-9 or off|error|warn|info|debug|trace; \
                 keeping {}",
                DEFAULT_LOG_LEVEL.as_str().to_ascii_lowercase()
            ),
            Self::BadTestFault(v) => {
                write!(f, "ignoring host.test_fault={v}: expected panic or abort")
            }
            Self::UnexpectedValue { key, value } => {
                write!(f, "ignoring {key}={value}: {key} takes no value")
            }
        }
    }
}

impl BootArgs {
    /// Parses a bootargs string. Options the host does not know are left alone (they may be
    /// meant for a guest or for later stages); known options with bad values produce
    /// warnings and keep their defaults. A later occurrence of an option wins.
    pub fn parse(cmdline: &str) -> (Self, Vec<BootArgWarning>) {
        let mut args = Self::default();
        let mut warnings = Vec::new();
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word, None),
            };
            match (key, value) {
                ("loglevel", Some(v)) => match parse_log_level(v) {
                    Some(level) => args.log_level = level,
                    None => warnings.push(BootArgWarning::BadLogLevel(v.into())),
                },
                ("loglevel", None) => warnings.push(BootArgWarning::BadLogLevel(String::new())),
                ("nokaslr", None) => args.nokaslr = true,
                ("host.test_fault", v) => match v {
                    Some("panic") => args.test_fault = Some(TestFault::Panic),
                    Some("abort") => args.test_fault = Some(TestFault::Abort),
                    other => warnings.push(BootArgWarning::BadTestFault(
                        other.unwrap_or_default().into(),
                    )),
                },
                ("nokaslr", Some(v)) => warnings.push(BootArgWarning::UnexpectedValue {
                    key: key.into(),
                    value: v.into(),
                }),
                _ => {}
            }
        }
        (args, warnings)
    }
}

/// Parses a `loglevel=` value: a level name, or a Linux-style number N meaning "print
/// messages whose Linux level is below N", with `log`'s levels at Linux's numbers
/// (error 3, warn 4, info 6, debug 7) and trace at 8.
pub fn parse_log_level(value: &str) -> Option<LevelFilter> {
    let by_name = match value.to_ascii_lowercase().as_str() {
        "off" => Some(LevelFilter::Off),
        "error" => Some(LevelFilter::Error),
        "warn" | "warning" => Some(LevelFilter::Warn),
        "info" => Some(LevelFilter::Info),
        "debug" => Some(LevelFilter::Debug),
        "trace" => Some(LevelFilter::Trace),
        _ => None,
    };
    if by_name.is_some() {
        return by_name;
    }
    if value.len() != 1 {
        return None;
    }
    match value.as_bytes()[0] {
        b'0'..=b'3' => Some(LevelFilter::Off),
        b'4' => Some(LevelFilter::Error),
        b'5' | b'6' => Some(LevelFilter::Warn),
        b'7' => Some(LevelFilter::Info),
        b'8' => Some(LevelFilter::Debug),
        b'9' => Some(LevelFilter::Trace),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_cmdline_gives_defaults() {
        assert_eq!(BootArgs::parse(""), (BootArgs::default(), Vec::new()));
        assert_eq!(BootArgs::default().log_level, LevelFilter::Info);
    }

    #[test]
    fn loglevel_names_and_numbers() {
        for (v, want) in [
            ("debug", LevelFilter::Debug),
            ("WARN", LevelFilter::Warn),
            ("off", LevelFilter::Off),
            ("0", LevelFilter::Off),
            ("4", LevelFilter::Error),
            ("7", LevelFilter::Info),
            ("8", LevelFilter::Debug),
            ("9", LevelFilter::Trace),
        ] {
            let (args, warnings) = BootArgs::parse(&format!("console=ttyAMA0 loglevel={v}"));
            assert_eq!(args.log_level, want, "loglevel={v}");
            assert!(warnings.is_empty(), "loglevel={v}: {warnings:?}");
        }
    }

    #[test]
    fn bad_loglevel_warns_and_keeps_default() {
        for bad in ["banana", "10", "-1", ""] {
            let (args, warnings) = BootArgs::parse(&format!("loglevel={bad} nokaslr"));
            assert_eq!(args.log_level, DEFAULT_LOG_LEVEL, "loglevel={bad}");
            assert!(args.nokaslr);
            assert_eq!(warnings, vec![BootArgWarning::BadLogLevel(bad.into())]);
            let text = warnings[0].to_string();
            assert!(text.contains(&format!("loglevel={bad}:")), "{text}");
            assert!(text.contains("keeping info"), "{text}");
        }
    }

    #[test]
    fn later_option_wins_and_unknown_are_ignored() {
        let (args, warnings) = BootArgs::parse("loglevel=error foo=bar loglevel=trace  quiet");
        assert_eq!(args.log_level, LevelFilter::Trace);
        assert!(warnings.is_empty());
    }

    #[test]
    fn test_fault_values() {
        let (a, w) = BootArgs::parse("host.test_fault=panic");
        assert_eq!((a.test_fault, w.len()), (Some(TestFault::Panic), 0));
        let (a, w) = BootArgs::parse("host.test_fault=abort");
        assert_eq!((a.test_fault, w.len()), (Some(TestFault::Abort), 0));
        let (a, w) = BootArgs::parse("host.test_fault=melt");
        assert_eq!(a.test_fault, None);
        assert_eq!(w, vec![BootArgWarning::BadTestFault("melt".into())]);
    }

    #[test]
    fn flag_with_value_warns() {
        let (args, warnings) = BootArgs::parse("nokaslr=1");
        assert!(!args.nokaslr);
        assert_eq!(warnings.len(), 1);
        assert_eq!(
            warnings[0].to_string(),
            "ignoring nokaslr=1: nokaslr takes no value"
        );
    }
}
