//! Secondary CPUs: PSCI CPU_ON for every CPU of the device tree but the boot CPU. Each
//! gets its own stack and a [`SecondaryBoot`] block (cleaned to PoC, as it is read with the
//! MMU off) naming the final tables, and reports in by setting its flag.

use crate::arch::{cache, head, sysreg};
use crate::println;
use alloc::alloc::{alloc, Layout};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, Ordering};
use el1_host::bootinfo::{BootInfo, MPIDR_HWID_MASK};
use el1_host::layout::{KernelImage, LinearMap};

/// Stack size of each secondary CPU.
const STACK_SIZE: usize = 64 * 1024;
/// How long to wait for one CPU to report in.
const TIMEOUT_SECS: u64 = 5;

/// What `secondary_entry` reads (with the MMU off): the layout is fixed by the assembly.
#[repr(C)]
pub struct SecondaryBoot {
    ttbr0: u64,
    ttbr1: u64,
    tcr: u64,
    mair: u64,
    sp: u64,
    entry: u64,
    arg: u64,
}

/// A flag per CPU, set by the CPU once it runs Rust at its KIMAGE VA.
static ONLINE: spin::Once<Vec<AtomicBool>> = spin::Once::new();

/// Result of bringing the secondaries up.
pub struct SmpReport {
    /// CPUs in the device tree.
    pub present: usize,
    /// CPUs running (the boot CPU included).
    pub online: usize,
}

fn heap_va_to_pa(image: &KernelImage, linear: &LinearMap, va: u64) -> Option<u64> {
    image.va_to_pa(va).or_else(|| linear.va_to_pa(va).ok())
}

/// Starts every secondary CPU and waits for each in turn.
pub fn start_secondaries(
    info: &BootInfo,
    image: &KernelImage,
    linear: &LinearMap,
    ttbr0: u64,
    ttbr1: u64,
) -> SmpReport {
    let online = ONLINE.call_once(|| info.cpus.iter().map(|_| AtomicBool::new(false)).collect());
    let me = sysreg::mpidr_el1() & MPIDR_HWID_MASK;
    let boot_index = info.cpu_index(me);
    match boot_index {
        Some(i) => online[i].store(true, Ordering::Release),
        None => log::warn!("smp: boot CPU mpidr={me:#x} is not in the device tree"),
    }
    let entry_va = head::symbols::secondary_entry as *const () as u64;
    let Some(entry_pa) = image.va_to_pa(entry_va) else {
        log::error!("smp: secondary entry is outside the image");
        return SmpReport {
            present: info.cpus.len(),
            online: 1,
        };
    };
    let freq = sysreg::cntfrq_el0().max(1);
    for (index, cpu) in info.cpus.iter().enumerate() {
        if Some(index) == boot_index {
            continue;
        }
        let stack_layout = Layout::from_size_align(STACK_SIZE, 4096).expect("stack layout");
        // SAFETY: the layout has a non-zero size.
        let stack = unsafe { alloc(stack_layout) };
        if stack.is_null() {
            log::error!("smp: cpu{index}: no memory for its stack");
            continue;
        }
        let boot = Box::leak(Box::new(SecondaryBoot {
            ttbr0,
            ttbr1,
            tcr: sysreg::tcr_el1(),
            mair: sysreg::mair_el1(),
            sp: stack as u64 + STACK_SIZE as u64,
            entry: secondary_main as *const () as u64,
            arg: index as u64,
        }));
        let boot_va = boot as *const SecondaryBoot as u64;
        let Some(boot_pa) = heap_va_to_pa(image, linear, boot_va) else {
            log::error!("smp: cpu{index}: boot block {boot_va:#x} has no PA");
            continue;
        };
        cache::clean_to_poc(boot_va as usize, core::mem::size_of::<SecondaryBoot>());
        match crate::psci::cpu_on(cpu.mpidr, entry_pa, boot_pa) {
            None => {
                log::error!("smp: no PSCI in the device tree; cpu{index} stays off");
                break;
            }
            Some(Err(e)) => {
                log::error!("smp: cpu{index} mpidr={:#x}: CPU_ON failed: {e}", cpu.mpidr);
                continue;
            }
            Some(Ok(())) => {}
        }
        let deadline = sysreg::cntvct_el0() + TIMEOUT_SECS * freq;
        while !online[index].load(Ordering::Acquire) && sysreg::cntvct_el0() < deadline {
            core::hint::spin_loop();
        }
        if !online[index].load(Ordering::Acquire) {
            log::error!(
                "smp: cpu{index} mpidr={:#x} did not come up within {TIMEOUT_SECS} s",
                cpu.mpidr
            );
        }
    }
    SmpReport {
        present: info.cpus.len(),
        online: online.iter().filter(|f| f.load(Ordering::Acquire)).count(),
    }
}

/// Where each secondary CPU lands at its KIMAGE VA with the final tables and its stack.
pub extern "C" fn secondary_main(index: u64) -> ! {
    let mpidr = sysreg::mpidr_el1() & MPIDR_HWID_MASK;
    println!(
        "smp: cpu{index} up mpidr={mpidr:#x} midr={:#x}",
        sysreg::midr_el1()
    );
    if let Some(flags) = ONLINE.get() {
        if let Some(f) = flags.get(index as usize) {
            f.store(true, Ordering::Release);
        }
    }
    loop {
        sysreg::wfe();
    }
}
