//! The EL1 test guest (issue 4 item 5): the default guest of `cargo xtask qemu`, and a
//! bare-metal program QEMU can boot directly (`-kernel`, virtualization off).
//!
//! Entered per the arm64 boot protocol (EL1h, MMU off, DAIF masked, x0 = DTB) at any
//! 2 MiB-aligned address, it relocates itself (`boot`), installs its vectors
//! (`exceptions`), reads the DTB (`platform`), and then (`run`) checks, printing one
//! line each:
//! the PSCI and SMCCC calls (`psci`, `smp`), injected external aborts (`aborts`), the
//! CPU view under the hypervisor (`idview`: no SVE advertised, SVE use is UNDEFINED), and
//! optionally runs the benchmarks (`bench`). It ends with the status protocol of
//! `docs/guest-status.md` (`shared::guest_abi`): the line `guest-status: <failures>`,
//! GUEST_EXIT, then PSCI SYSTEM_OFF.
//!
//! On any other target (a workspace-wide host build or clippy) the crate is just a
//! `main` that says so.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(target_os = "none")]
mod aborts;
#[cfg(target_os = "none")]
mod arch;
#[cfg(target_os = "none")]
mod bench;
#[cfg(target_os = "none")]
mod boot;
#[cfg(target_os = "none")]
mod check;
#[cfg(target_os = "none")]
mod console;
#[cfg(target_os = "none")]
mod exceptions;
#[cfg(target_os = "none")]
mod idview;
#[cfg(target_os = "none")]
mod irq;
#[cfg(target_os = "none")]
mod platform;
#[cfg(target_os = "none")]
mod psci;
#[cfg(target_os = "none")]
mod run;
#[cfg(target_os = "none")]
mod smccc;
#[cfg(target_os = "none")]
mod smp;

/// The guest only runs on bare metal; a host build gets this instead.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "test-guest runs on aarch64-unknown-none only: `cargo xtask guest-image` builds its Image"
    );
    std::process::exit(1);
}
