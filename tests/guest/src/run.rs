//! The boot CPU's test sequence and the end of every run: the status line, GUEST_EXIT
//! and SYSTEM_OFF (also reached from the panic handler and fatal exceptions).

use crate::{
    aborts, arch, bench, boot, check, console, exceptions, idview, irq, platform, psci, smccc, smp,
};
use core::sync::atomic::{AtomicBool, Ordering};
use shared::guest_abi::{self, STATUS_PREFIX};

/// Rust entry of the boot CPU (from `boot.rs`, relocated, `.bss` clear, on stack 0).
pub extern "C" fn primary_main(dtb: u64) -> ! {
    // The entry state the boot protocol promises, read before anything changes it.
    let daif = arch::daif();
    let el = arch::current_el();
    let mmu_on = arch::sctlr() & arch::SCTLR_M != 0;
    exceptions::install();
    let p = platform::Platform::from_dtb(dtb);
    console::set_base(p.uart.0);
    crate::println!(
        "guest: test guest at {:#x}..{:#x}, dtb {dtb:#x}, cpu mpidr={:#x}",
        boot::image_start(),
        boot::image_end(),
        arch::my_affinity()
    );
    crate::check!(
        el == 1 && !mmu_on && daif == arch::DAIF_ALL,
        "guest: entered at EL{el}, MMU {}, DAIF={:#x} (want EL1, off, 0xf)",
        if mmu_on { "on" } else { "off" },
        daif >> 6
    );
    crate::check!(
        p.dtb_error.is_none(),
        "guest: dtb at {dtb:#x} {}",
        p.dtb_error.unwrap_or("parsed")
    );
    p.report();
    let (ram_base, ram_size, _) = p.ram;
    let ram_end = ram_base.saturating_add(ram_size);
    crate::check!(
        boot::image_start().is_multiple_of(2 << 20)
            && boot::image_start() >= ram_base
            && boot::image_end() <= ram_end,
        "guest: image 2 MiB aligned inside RAM {ram_base:#x}..{ram_end:#x}"
    );
    smccc::set_conduit(p.conduit.0);
    test_hooks(p.bootargs);
    psci::run();
    aborts::run(ram_end);
    idview::run();
    irq::run();
    smp::run(&p);
    if let Some(n) = guest_abi::bench_iterations(p.bootargs) {
        bench::run(n);
    }
    finish()
}

/// Whether the kernel command line has the word `w`.
fn has_word(bootargs: &str, w: &str) -> bool {
    bootargs.split_ascii_whitespace().any(|x| x == w)
}

/// Misbehaviour on request, for the hypervisor's tests (`docs/guest-status.md`):
/// `spin` loops forever without a single exit (only the host's timeout ends the
/// VM); `fault` executes an undefined instruction, which the guest's vectors report
/// as an unexpected exception (a failed run).
fn test_hooks(bootargs: &str) {
    if has_word(bootargs, "spin") {
        crate::println!("guest: spin: looping forever without exits (as asked)");
        loop {
            core::hint::spin_loop();
        }
    }
    if has_word(bootargs, "fault") {
        crate::println!("guest: fault: executing an undefined instruction (as asked)");
        // SAFETY: UDF raises an undefined-instruction exception, which the guest's
        // vectors report and turn into a failed run; nothing after it executes.
        unsafe { core::arch::asm!("udf #0", options(nostack)) };
    }
}

static FINISHING: AtomicBool = AtomicBool::new(false);

/// Reports the status (`guest-status: <n>`, GUEST_EXIT) and powers off. Only the first
/// CPU to get here reports; any other stops.
pub fn finish() -> ! {
    if FINISHING.swap(true, Ordering::SeqCst) {
        arch::halt();
    }
    let n = check::failures();
    console::print_line_unlocked(format_args!(
        "guest: checks done: failed={n} deviations={} (DEVIATION lines: forbidden firmware \
         behaviour tolerated without our hypervisor)",
        check::deviations()
    ));
    console::print_line_unlocked(format_args!("{STATUS_PREFIX}{n}"));
    // SUCCESS: the VMM has the status; NOT_SUPPORTED: no hypervisor channel (bare
    // QEMU). Either way SYSTEM_OFF follows; the status line above is the record.
    smccc::call(guest_abi::GUEST_EXIT, n.into(), 0, 0);
    let r = smccc::call(::smccc::psci::PSCI_SYSTEM_OFF, 0, 0, 0);
    console::print_line_unlocked(format_args!("guest: SYSTEM_OFF returned {}", smccc::Ret(r)));
    arch::halt()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::print_line_unlocked(format_args!(
        "guest: panic on cpu mpidr={:#x}: {info}",
        arch::my_affinity()
    ));
    check::fail();
    finish()
}
