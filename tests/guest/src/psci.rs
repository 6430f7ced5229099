//! The single-CPU PSCI and SMCCC checks: PSCI_VERSION, PSCI_FEATURES of every call
//! the guest makes (and of an unknown id), MIGRATE_INFO_TYPE, SMCCC_VERSION,
//! SMCCC_ARCH_FEATURES, unknown function ids, and a probe of the guest ABI channel.
//!
//! Where the specifications allow more than one answer the check accepts each of them
//! and prints which one came: SMCCC_VERSION is only required when PSCI_FEATURES says it
//! exists (SMCCC ≥ 1.1); otherwise the implementation is SMCCC 1.0 and both SMCCC_VERSION
//! and SMCCC_ARCH_FEATURES must answer NOT_SUPPORTED like any unknown id.

use crate::smccc::{call, Ret, NOT_SUPPORTED, SUCCESS};
use core::sync::atomic::{AtomicBool, Ordering};
use shared::guest_abi;
use smccc::arch::{SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_1, SMCCC_VERSION};
use smccc::psci::{
    PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_64, PSCI_FEATURES, PSCI_MIGRATE_INFO_TYPE,
    PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
};

/// The last function number of the PSCI block (0x00–0x1F) that no PSCI version defines.
pub const UNKNOWN_PSCI_ID: u32 = 0x8400_001f;
/// Function ids nobody implements: the spare PSCI number, an unused number in the guest
/// ABI's own vendor-hypervisor block, an SiP service call and an SMC64 standard call.
pub const UNKNOWN_IDS: [u32; 4] = [
    UNKNOWN_PSCI_ID,
    guest_abi::GUEST_CALL_BASE + 0xff,
    0x8200_1234,
    0xc400_00ff,
];
/// An SMCCC architecture-call id no version defines.
const UNKNOWN_ARCH_ID: u32 = 0x8000_00ff;

/// The PSCI calls the guest makes, with their names.
pub const CALLS: [(u32, &str); 8] = [
    (PSCI_VERSION, "PSCI_VERSION"),
    (PSCI_FEATURES, "PSCI_FEATURES"),
    (PSCI_CPU_ON_64, "CPU_ON"),
    (PSCI_CPU_OFF, "CPU_OFF"),
    (PSCI_AFFINITY_INFO_64, "AFFINITY_INFO"),
    (PSCI_MIGRATE_INFO_TYPE, "MIGRATE_INFO_TYPE"),
    (PSCI_SYSTEM_OFF, "SYSTEM_OFF"),
    (PSCI_SYSTEM_RESET, "SYSTEM_RESET"),
];

static CHANNEL: AtomicBool = AtomicBool::new(false);

/// Whether NULL_HVC answered SUCCESS, i.e. this project's VMM (not bare firmware)
/// serves our PSCI calls. Valid after [`run`].
pub fn hypervisor_channel() -> bool {
    CHANNEL.load(Ordering::SeqCst)
}

/// Runs the checks.
pub fn run() {
    let v = call(PSCI_VERSION, 0, 0, 0);
    crate::check!(
        (0x1_0000..=0x7fff_ffff).contains(&v),
        "psci: PSCI_VERSION -> {}.{} (need >= 1.0 for PSCI_FEATURES)",
        (v >> 16) & 0xffff,
        v & 0xffff
    );
    for (id, name) in CALLS {
        let r = call(PSCI_FEATURES, id.into(), 0, 0);
        crate::check!(
            r == SUCCESS,
            "psci: PSCI_FEATURES({name} {id:#x}) -> {}",
            Ret(r)
        );
    }
    let r = call(PSCI_FEATURES, UNKNOWN_PSCI_ID.into(), 0, 0);
    crate::check!(
        r == NOT_SUPPORTED,
        "psci: PSCI_FEATURES(unknown {UNKNOWN_PSCI_ID:#x}) -> {}",
        Ret(r)
    );
    let m = call(PSCI_MIGRATE_INFO_TYPE, 0, 0, 0);
    let meaning = match m {
        0 => "uniprocessor migrate-capable trusted OS",
        1 => "uniprocessor trusted OS, not migrate-capable",
        2 => "no trusted OS needing migration",
        _ => "not a MIGRATE_INFO_TYPE value",
    };
    crate::check!(
        (0..=2).contains(&m),
        "psci: MIGRATE_INFO_TYPE -> {m} ({meaning})"
    );
    smccc_version();
    for id in UNKNOWN_IDS {
        let r = call(id, 0, 0, 0);
        crate::check!(
            r == NOT_SUPPORTED,
            "smccc: unknown function {id:#x} -> {} (want NOT_SUPPORTED)",
            Ret(r)
        );
    }
    let r = call(guest_abi::NULL_HVC, 0, 0, 0);
    CHANNEL.store(r == guest_abi::RET_SUCCESS, Ordering::SeqCst);
    crate::println!(
        "guest-abi: NULL_HVC {:#x} -> {} ({})",
        guest_abi::NULL_HVC,
        Ret(r),
        if r == guest_abi::RET_SUCCESS {
            "hypervisor channel present"
        } else {
            "no hypervisor channel"
        }
    );
}

/// SMCCC_VERSION and SMCCC_ARCH_FEATURES, consistent with what PSCI_FEATURES says.
fn smccc_version() {
    let feat = call(PSCI_FEATURES, SMCCC_VERSION.into(), 0, 0);
    let ver = call(SMCCC_VERSION, 0, 0, 0);
    let unknown_arch = call(SMCCC_ARCH_FEATURES, UNKNOWN_ARCH_ID.into(), 0, 0);
    if feat == SUCCESS {
        crate::check!(
            (0x1_0001..=0x7fff_ffff).contains(&ver),
            "smccc: PSCI_FEATURES(SMCCC_VERSION) -> SUCCESS; SMCCC_VERSION -> {}.{} (need >= 1.1)",
            (ver >> 16) & 0x7fff,
            ver & 0xffff
        );
        crate::check!(
            unknown_arch == NOT_SUPPORTED,
            "smccc: SMCCC_ARCH_FEATURES(unknown {UNKNOWN_ARCH_ID:#x}) -> {}",
            Ret(unknown_arch)
        );
        let wa1 = call(SMCCC_ARCH_FEATURES, SMCCC_ARCH_WORKAROUND_1.into(), 0, 0);
        crate::check!(
            matches!(wa1, -1..=1),
            "smccc: SMCCC_ARCH_FEATURES(ARCH_WORKAROUND_1) -> {wa1} (0 or 1: implemented, -1: not)"
        );
        let af = call(SMCCC_ARCH_FEATURES, SMCCC_VERSION.into(), 0, 0);
        crate::println!("smccc: SMCCC_ARCH_FEATURES(SMCCC_VERSION) -> {}", Ret(af));
    } else {
        crate::check!(
            feat == NOT_SUPPORTED && ver == NOT_SUPPORTED && unknown_arch == NOT_SUPPORTED,
            "smccc: PSCI_FEATURES(SMCCC_VERSION) -> {}: SMCCC 1.0, so SMCCC_VERSION -> {} and \
             SMCCC_ARCH_FEATURES -> {} (both must be NOT_SUPPORTED)",
            Ret(feat),
            Ret(ver),
            Ret(unknown_arch)
        );
    }
}
