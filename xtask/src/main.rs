//! `cargo xtask`: the project's build and test driver.
//!
//! `test` is the command CI runs: formatting, lints for the host and the
//! `aarch64-unknown-none` crates, every host test, and the AArch64 builds.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build(),
        Some("test") => test(),
        Some(other) => Err(format!("unknown task `{other}`\n{USAGE}")),
        None => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <build|test>
  build   build el2 and el1-host for aarch64-unknown-none
  test    fmt check, clippy (host + aarch64), cargo test, aarch64 builds";

const TARGET: &str = "aarch64-unknown-none";
const AARCH64_CRATES: [&str; 2] = ["el2", "el1-host"];

fn cargo(args: &[&str]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn aarch64_args<'a>(cmd: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd, "--release", "--target", TARGET];
    for c in AARCH64_CRATES {
        v.extend(["-p", c]);
    }
    v.extend_from_slice(extra);
    v
}

fn build() -> Result<(), String> {
    cargo(&aarch64_args("build", &[]))
}

fn test() -> Result<(), String> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "el2",
        "--exclude",
        "el1-host",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&aarch64_args("clippy", &["--", "-D", "warnings"]))?;
    cargo(&["test"])?;
    build()
}
