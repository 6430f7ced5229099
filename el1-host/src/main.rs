//! The EL1 host kernel, booted by QEMU at EL2 as an arm64 Image.
//!
//! Boot order: `arch::head` (EL2 set-up and hyp stub, drop to EL1, early MMU) →
//! [`primary_main`]: heap, device tree → [`el1_host::bootinfo::BootInfo`], final page
//! tables (`arch::mmu`), console and logging, the guest bundle and guest RAM taken out
//! of RAM (`vmm_run::find_bundle`), the rest of RAM into the heap, secondary CPUs
//! (`smp`), caps, alternatives, the hyp and its selftests; then, if the boot loader
//! passed a guest bundle as the initrd, host interrupts (`arch::gic`, `arch::irq`,
//! `arch::timer`) and the guest (`vmm_run::run`, which prints `guest 0: exit status=…`);
//! then the host's status line and PSCI SYSTEM_OFF (see [`el1_host::status`]).
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

mod alternatives;
mod arch;
mod console;
mod cpufeature;
mod hyp;
mod logger;
mod mm;
mod psci;
mod smp;
mod sync;
mod vmm_run;

use arch::mmu::{ImageSections, KernelTables};
use core::panic::PanicInfo;
use el1_host::bootargs::{BootArgs, TestFault};
use el1_host::bootinfo::BootInfo;
use el1_host::layout::{self, KernelImage, LinearMap};
use el1_host::status::{ExitStatus, STATUS_PREFIX};
use shared::cpucaps::KvmMode;

/// The hyp image xtask built, embedded when `HYP_IMAGE` was set at build time.
#[cfg(has_hyp_image)]
static HYP_IMAGE: Option<&[u8]> = Some(include_bytes!(env!("HYP_IMAGE_PATH")));
/// No hyp image was named at build time: the host runs without a hyp.
#[cfg(not(has_hyp_image))]
static HYP_IMAGE: Option<&[u8]> = None;

/// The largest DTB the boot protocol allows.
const DTB_MAX_SIZE: usize = 2 * 1024 * 1024;

/// Rust entry of the boot CPU, called by `arch::head` at the KIMAGE VA with the early
/// tables (which identity-map the DTB) and the boot stack.
extern "C" fn primary_main(dtb_pa: u64, image_pa: u64, boot_el: u64) -> ! {
    mm::heap::init();
    let sections = ImageSections::get();
    let image = KernelImage {
        load_pa: image_pa,
        size: sections.end - sections.text,
    };

    // SAFETY: the early TTBR0 identity-maps the 2 MiB from dtb_pa (the protocol's maximum
    // DTB size); the boot loader does not change the DTB while we run.
    let blob = unsafe { core::slice::from_raw_parts(dtb_pa as *const u8, DTB_MAX_SIZE) };
    let info = match BootInfo::from_dtb(blob, dtb_pa) {
        Ok(info) => info,
        // Without a device tree there is no console to report to and no PSCI to stop with.
        Err(_) => halt(),
    };
    if let Some(m) = info.psci {
        psci::set_method(m);
    }
    let linear = match LinearMap::new(&info.memory) {
        Ok(l) => l,
        Err(_) => exit(ExitStatus::Panic),
    };
    let mut tables = match KernelTables::build(image, &linear, &sections) {
        Ok(t) => t,
        Err(_) => exit(ExitStatus::Panic),
    };
    let uart_va = match tables.ioremap(info.uart.start, info.uart.end - info.uart.start) {
        Ok(va) => va,
        Err(_) => exit(ExitStatus::Panic),
    };
    // The GIC's frames, for the host's interrupts (the VMM's tick and kicks).
    let gic_vas = info.gic.as_ref().and_then(|g| {
        let d = tables
            .ioremap(g.dist.start, g.dist.end - g.dist.start)
            .ok()?;
        let r = tables
            .ioremap(g.redist.start, g.redist.end - g.redist.start)
            .ok()?;
        Some((d, r, g.redist.end - g.redist.start))
    });
    // SAFETY: boot CPU, early tables live, KIMAGE VA; the new tables map the whole image
    // (stack and static heap included) at the same VAs.
    unsafe { tables.activate(image) };
    // SAFETY: uart_va maps the PL011 the device tree names, as device memory, for good.
    unsafe { console::init(uart_va as usize) };

    let (args, warnings) = BootArgs::parse(&info.bootargs);
    logger::init(args.log_level);
    println!(
        "host: el1-host {} booting on cpu mpidr={:#x} midr={:#x}, entered at EL{boot_el}",
        env!("CARGO_PKG_VERSION"),
        arch::sysreg::mpidr_el1() & el1_host::bootinfo::MPIDR_HWID_MASK,
        arch::sysreg::midr_el1()
    );
    for w in &warnings {
        log::warn!("bootargs: {w}");
    }
    log::info!("bootargs: \"{}\"", info.bootargs);
    println!(
        "memory: ram={} MiB regions={:x?} dtb={:#x}..{:#x}",
        info.ram_bytes() >> 20,
        info.memory,
        info.dtb.start,
        info.dtb.end
    );
    println!(
        "layout: kimage_vaddr={:#x} load_pa={:#x} kimage_voffset={:#x} image_size={:#x} \
         page_offset={:#x} memstart={:#x}",
        layout::KIMAGE_VADDR,
        image.load_pa,
        image.voffset(),
        image.size,
        layout::PAGE_OFFSET,
        linear.memstart
    );
    log::info!(
        "mmu: ttbr0={:#x} ttbr1={:#x} tcr={:#x} sctlr={:#x}",
        arch::sysreg::ttbr0_el1(),
        arch::sysreg::ttbr1_el1(),
        arch::sysreg::tcr_el1(),
        arch::sysreg::sctlr_el1()
    );
    log::info!(
        "devices: pl011={:#x} (va {uart_va:#x}) gic={:x?} psci={:?}",
        info.uart.start,
        info.gic,
        info.psci
    );
    log::info!(
        "seeds: kaslr-seed={} rng-seed={} bytes",
        if info.kaslr_seed.is_some() {
            "present"
        } else {
            "absent"
        },
        info.rng_seed.len()
    );

    // Everything in RAM that is not the image, the DTB or reserved becomes heap.
    let mut reserved = alloc::vec![image.phys_range(), info.dtb.clone()];
    reserved.extend(info.reserved.iter().cloned());
    // The hyp's carve-out is taken before the heap gets the rest of RAM.
    let hyp_mem = hyp::reserve(HYP_IMAGE, info.cpus.len(), &linear.regions, &reserved);
    reserved.extend(hyp_mem.range());
    // A guest bundle in the host's initrd, and contiguous RAM for that guest, are taken
    // before the heap gets the rest too.
    let dtb_bytes = match linear.pa_to_va(info.dtb.start) {
        // SAFETY: the DTB lies in RAM, which the linear map covers; it is reserved above.
        Ok(va) => unsafe {
            core::slice::from_raw_parts(va as *const u8, (info.dtb.end - info.dtb.start) as usize)
        },
        Err(_) => &[][..],
    };
    let bundled = vmm_run::find_bundle(dtb_bytes, &linear, &reserved);
    if let vmm_run::Bundled::Found(f) = &bundled {
        reserved.push(f.bundle.clone());
        reserved.push(f.ram.clone());
    }
    for r in layout::free_ranges(&linear.regions, &reserved) {
        if let (Ok(start), Ok(_)) = (linear.pa_to_va(r.start), linear.pa_to_va(r.end - 1)) {
            // SAFETY: the range is RAM mapped RW in the linear map, and is not the image,
            // the DTB or a reserved region, so nothing else uses it.
            unsafe { mm::heap::add(start as usize, (start + (r.end - r.start)) as usize) };
        }
    }
    log::info!("heap: {} MiB", mm::heap::total_bytes() >> 20);

    if let Some((d, r, len)) = gic_vas {
        if let Err(e) = arch::gic::init(d as usize, r as usize, len as usize) {
            log::error!("{e}");
        }
    }

    // Caps of the boot CPU, then the boot pass over the host image before any
    // secondary CPU exists (LINUX-FACTS §4.2).
    smp::init(&info);
    let boot_cpu = smp::this_cpu_index().unwrap_or(0);
    let boot = cpufeature::detect_boot_cpu(boot_cpu, &info.bootargs);
    if let Err(e) = alternatives::apply_boot_pass(&boot, &mut tables, &image) {
        panic!("alternatives: boot pass over the host image failed: {e}");
    }

    match args.test_fault {
        Some(TestFault::Panic) => panic!("host.test_fault=panic requested a panic"),
        Some(TestFault::Abort) => arch::sysreg::fault_by_unmapped_load(),
        None => {}
    }

    // Secondaries must see the boot CPU's caps already applied (ALWAYS_BOOT site).
    assert!(
        shared::alternative::boot_capabilities_finalized(),
        "secondary CPUs started before the boot alternatives pass"
    );
    let mut bringup = boot.start_secondaries();
    let smp_tables = smp::SecondaryTables {
        image: &image,
        linear: &linear,
        ttbr0: tables.ttbr0(),
        ttbr1: tables.ttbr1(),
    };
    let report = smp::start_secondaries(&info, &smp_tables, &mut |cpu, regs| {
        cpufeature::admit_secondary(&mut bringup, cpu, regs)
    });
    println!("smp: cpus={} online={}", report.present, report.online);

    // One final cap set, then the system pass over the host image and the hyp image
    // while the other CPUs wait in the rendezvous (LINUX-FACTS §4.2: the hyp layout and
    // relocations come before the hyp's system pass; `hyp::load` does all three).
    let fin = cpufeature::finalize(bringup);
    let hyp_inputs = |seed| hyp::Inputs {
        linear: &linear,
        kimage_voffset: image.voffset(),
        caps: fin,
        seed,
        nokaslr: args.nokaslr,
        on_each_cpu: smp::on_each_cpu,
        mair: arch::sysreg::mair_el1(),
    };
    // kvm-arm.mode=none leaves EL2 to the stub: no hyp, so no guests. Protected mode
    // (host stage-2) is not implemented yet: say so rather than pretend.
    let kvm_mode = fin.software().kvm_mode;
    let mut hyp_mem = match kvm_mode {
        KvmMode::None => {
            println!("hyp: kvm-arm.mode=none: the hyp is not installed");
            None
        }
        KvmMode::Protected => {
            log::warn!(
                "hyp: kvm-arm.mode=protected is not implemented yet: installing the hyp in \
                 nVHE mode (the host keeps access to all memory)"
            );
            Some(hyp_mem)
        }
        KvmMode::Default | KvmMode::Nvhe => Some(hyp_mem),
    };
    let mut staged = None;
    let pass = alternatives::apply_system_pass(fin, &mut tables, &image, None, &mut || {
        // The host's text (its RNDR site included) is patched and synchronised here.
        let seed = arch::rng::entropy_for_hyp_tag(&info);
        staged = hyp_mem.take().map(|m| hyp::load(m, &hyp_inputs(seed)));
    });
    if let Err(e) = pass {
        panic!("alternatives: system pass over the host image failed: {e}");
    }
    let mut selftests_ok = cpufeature::selftests();
    selftests_ok &= alternatives::selftest_text_protection(&linear, &image);

    // Caps are final and both images are patched: install the hyp on every CPU.
    let hyp = match staged {
        Some(s) => hyp::install(s, &hyp_inputs(None)),
        None if kvm_mode == KvmMode::None => hyp::Outcome::Disabled,
        None => hyp::Outcome::Refused,
    };
    selftests_ok &= hyp.is_success();

    // A guest, if the boot loader passed one: after the selftests, on the finished host.
    match bundled {
        vmm_run::Bundled::None => {}
        vmm_run::Bundled::Refused(why) => {
            vmm_run::refuse(&why);
        }
        vmm_run::Bundled::Found(found) => {
            if !matches!(hyp, hyp::Outcome::Ready { .. }) {
                vmm_run::refuse("no hypervisor is installed");
            } else if !init_host_irqs(gic_vas.is_some()) {
                vmm_run::refuse("host interrupts could not be set up (GICv3)");
            } else {
                vmm_run::run(found, &linear);
            }
        }
    }

    if !selftests_ok {
        exit(ExitStatus::SelftestFailed)
    } else if report.online == report.present {
        exit(ExitStatus::Success)
    } else {
        exit(ExitStatus::CpusMissing)
    }
}

/// CPUs whose GIC set-up failed.
static IRQ_SETUP_FAILED: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(0);

/// Sets up the redistributor and CPU interface of every online CPU.
fn init_host_irqs(have_gic: bool) -> bool {
    fn on_cpu(_: usize) {
        if arch::gic::init_this_cpu(&[
            arch::timer::INTID,
            el1_host::vmm::vgic::INTID_VTIMER,
            el1_host::vmm::vgic::INTID_MAINTENANCE,
        ])
        .is_err()
        {
            IRQ_SETUP_FAILED.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        }
    }
    if !have_gic {
        return false;
    }
    smp::on_each_cpu(on_cpu);
    IRQ_SETUP_FAILED.load(core::sync::atomic::Ordering::Relaxed) == 0
}

/// Prints the status line and powers the machine off.
fn exit(status: ExitStatus) -> ! {
    console::emergency_print(format_args!("{STATUS_PREFIX}{}\n", status.code()));
    if let Some(e) = psci::system_off() {
        console::emergency_print(format_args!("host: PSCI SYSTEM_OFF failed: {e}\n"));
    }
    halt()
}

/// Stops this CPU for good.
fn halt() -> ! {
    loop {
        arch::sysreg::wfe();
    }
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    console::emergency_print(format_args!(
        "panic: cpu mpidr={:#x}: {info}\n",
        arch::sysreg::mpidr_el1() & el1_host::bootinfo::MPIDR_HWID_MASK
    ));
    exit(ExitStatus::Panic)
}
