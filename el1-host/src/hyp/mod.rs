//! The hyp loader: from the embedded hyp image to a hyp installed on every CPU, and the
//! selftests that prove it (issue 3, items 5 and 6).
//!
//! Two entry points, called from `primary_main`:
//!
//! 1. [`reserve`], before free RAM becomes heap: sizes the carve-out from the image
//!    header (image, per-CPU blocks, stacks with guard pages, init parameters, page-table
//!    pool) and takes a 2 MiB-aligned range for it (`mm::carveout`); the caller adds the
//!    range to the reserved list so the heap never gets it.
//! 2. [`load`], inside the system-pass rendezvous once the cap set is final:
//!    `loader::load` (copy, verify, layout, relocate, boot and system passes).
//! 3. [`install`], after the rendezvous: `va-layout:` and pass lines →
//!    `pgtable::build` (EL2 stage 1) → per-CPU init parameters → clean to PoC →
//!    on every CPU HVC_SET_VECTORS + init → `hyp: mode=nvhe cpus=<n> image=<bytes> ready`
//!    → close the setup calls → selftests.
//!
//! A refused image prints `hyp: refused: <reason>`; nothing of it is patched or installed,
//! the host carries on without a hyp, and [`Outcome`] tells the caller to report failure.
//!
//! | file | owns |
//! | --- | --- |
//! | `loader.rs` | carve-out plan, copy, verification, layout, relocation, both passes |
//! | `pgtable.rs` | the EL2 stage-1 tables |
//! | `install.rs` | `hvc`, init parameters, cache maintenance, the per-CPU install |
//! | `selftest.rs` | the `selftest:` lines |
//! | `vm.rs` | safe wrappers of the VM calls (`Vm::create`, `map`, `run_vcpu`, `destroy`) |
//! | `vcpu_selftest.rs` | the `selftest: hyp-vcpu` line: a one-page guest on every CPU |

mod install;
mod loader;
mod pgtable;
mod selftest;
mod vcpu_selftest;
pub mod vm;

use crate::println;
use alloc::vec::Vec;
use core::sync::atomic::Ordering;
use el1_host::layout::{LinearMap, PhysRange};
use loader::{Carveout, CarveoutPlan, LoadInputs, Loaded, Refusal};
use shared::cpucaps::FinalCaps;
use shared::hyp_image::HypImage;
use shared::hypercall::HcallId;

/// What [`reserve`] decided.
pub struct Reservation {
    image: Option<&'static [u8]>,
    plan: Result<(CarveoutPlan, PhysRange), Refusal>,
}

impl Reservation {
    /// The physical range to keep out of the heap, if one was taken.
    pub fn range(&self) -> Option<PhysRange> {
        self.plan.as_ref().ok().map(|(_, r)| r.clone())
    }
}

/// Sizes and picks the carve-out for `image` on `ncpus` CPUs from the RAM in `ram` not
/// covered by `reserved`. Call before the heap takes the free RAM.
pub fn reserve(
    image: Option<&'static [u8]>,
    ncpus: usize,
    ram: &[PhysRange],
    reserved: &[PhysRange],
) -> Reservation {
    let plan = match image {
        None => Err(Refusal::TooManyCpus(0)),
        Some(bytes) => HypImage::parse(bytes)
            .map_err(Refusal::Image)
            .and_then(|img| CarveoutPlan::new(img.layout(), ncpus))
            .and_then(|plan| {
                crate::mm::carveout::choose(ram, reserved, plan.total)
                    .map(|r| (plan, r))
                    .ok_or(Refusal::NoMemory { size: plan.total })
            }),
    };
    Reservation { image, plan }
}

/// How the hyp bring-up ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No hyp image was embedded.
    NoImage,
    /// `kvm-arm.mode=none`: the hyp was not installed, as asked.
    Disabled,
    /// The image was refused (`hyp: refused:` printed); no hyp.
    Refused,
    /// The init call failed on some CPU.
    InstallFailed,
    /// Installed on every online CPU; `failed` selftests printed FAILED.
    Ready {
        /// Selftests that failed.
        failed: usize,
    },
}

impl Outcome {
    /// Whether the host should report success.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Outcome::Ready { failed: 0 } | Outcome::NoImage | Outcome::Disabled
        )
    }
}

/// Everything [`load`] and [`install`] need from the rest of the host.
pub struct Inputs<'a> {
    /// The linear map (RAM regions and memstart).
    pub linear: &'a LinearMap,
    /// The host image's kimage_voffset (VA − PA).
    pub kimage_voffset: u64,
    /// The final cap set.
    pub caps: &'a FinalCaps,
    /// Entropy for the hyp VA tag (`None`: no randomisation).
    pub seed: Option<u64>,
    /// `nokaslr` on the command line.
    pub nokaslr: bool,
    /// Runs a function on every online CPU (the boot CPU included) and waits:
    /// `smp::on_each_cpu`.
    pub on_each_cpu: fn(fn(usize)),
    /// MAIR_EL1, which becomes MAIR_EL2 (so attribute indices agree).
    pub mair: u64,
}

/// What the per-CPU functions (plain `fn(usize)`, so no captures) read.
struct State {
    init_pa: u64,
    cpus: Vec<install::CpuInstall>,
    results: Vec<selftest::CpuResults>,
    expect: selftest::Expect,
}

static STATE: spin::Once<State> = spin::Once::new();

fn install_cpu(cpu: usize) {
    if let Some(slot) = STATE
        .get()
        .and_then(|s| Some((s.init_pa, s.cpus.get(cpu)?)))
    {
        install::install_this_cpu(slot.0, slot.1);
    }
}

fn selftest_cpu(cpu: usize) {
    if let Some(s) = STATE.get() {
        if let Some(out) = s.results.get(cpu) {
            selftest::run_this_cpu(&s.expect, out);
        }
    }
}

/// The hyp image copied into its carve-out, verified, laid out, relocated and patched by
/// [`load`], waiting for [`install`]; or why there is nothing to install.
pub struct Staged(Result<(Carveout, CarveoutPlan, Loaded), Outcome>);

/// Copies, verifies, lays out, relocates and patches (boot and system passes) the hyp
/// image. The host calls this inside the system-pass rendezvous, right after its own
/// text was patched, so the host and hyp images are patched from the one final cap set
/// in the same window, and the host's RNDR site is already live for the layout's tag.
/// Prints only on refusal; [`install`] prints the `va-layout:` and pass lines.
pub fn load(res: Reservation, inp: &Inputs<'_>) -> Staged {
    let Some(image) = res.image else {
        return Staged(Err(Outcome::NoImage));
    };
    let refuse = |e: &dyn core::fmt::Display| {
        println!("hyp: refused: {e}");
        Staged(Err(Outcome::Refused))
    };
    let (plan, range) = match res.plan {
        Ok(p) => p,
        Err(e) => return refuse(&e),
    };
    let Ok(va) = inp.linear.pa_to_va(range.start) else {
        return refuse(&Refusal::CarveoutOutsideRam(range.start));
    };
    let carve = Carveout { pa: range, va };
    let load_in = LoadInputs {
        ram: &inp.linear.regions,
        memstart: inp.linear.memstart,
        kimage_voffset: inp.kimage_voffset,
        kimage_vaddr: el1_host::layout::KIMAGE_VADDR,
        seed: inp.seed,
        nokaslr: inp.nokaslr,
        caps: inp.caps,
    };
    match loader::load(image, &carve, &plan, &load_in) {
        Ok(loaded) => Staged(Ok((carve, plan, loaded))),
        Err(e) => refuse(&e),
    }
}

/// Builds the EL2 tables, installs the hyp on every CPU and runs the selftests (see the
/// module documentation).
pub fn install(staged: Staged, inp: &Inputs<'_>) -> Outcome {
    let (carve, plan, loaded) = match staged.0 {
        Ok(s) => s,
        Err(Outcome::NoImage) => {
            println!("hyp: no hyp image embedded");
            return Outcome::NoImage;
        }
        Err(o) => return o,
    };
    log::info!(
        "hyp: carve-out {:#x}..{:#x} ({} KiB)",
        carve.pa.start,
        carve.pa.end,
        (carve.pa.end - carve.pa.start) >> 10
    );
    loaded.print_summary();
    let pgd = match pgtable::build(&carve, &plan, &loaded, &inp.linear.regions, |pa| {
        inp.linear.pa_to_va(pa).ok()
    }) {
        Ok(p) => p,
        Err(e) => {
            println!("hyp: refused: {e}");
            return Outcome::Refused;
        }
    };
    let cpus = install::prepare(&carve, &plan, &loaded, pgd, inp.mair);
    install::publish(&carve, &loaded.layout);

    // Selftest inputs: linear VAs across RAM and a word only the host wrote.
    let magic_box = alloc::boxed::Box::leak(alloc::boxed::Box::new(0x5e1f_7e57_0bad_cafe_u64));
    // Its linear-map alias (a heap object may live in the image's static heap, at a
    // KIMAGE VA): the hyp translates linear VAs only.
    let magic_kva = magic_box as *const u64 as u64;
    let magic_va = inp
        .linear
        .va_to_pa(magic_kva)
        .ok()
        .or_else(|| Some(magic_kva.wrapping_sub(inp.kimage_voffset)))
        .and_then(|pa| inp.linear.pa_to_va(pa).ok())
        .unwrap_or(magic_kva);
    let (lo, hi) = loaded.va.linear_span();
    let samples = alloc::vec![
        lo,
        hi & !7,
        lo + (hi - lo) / 2,
        carve.va,
        magic_va,
        inp.linear.pa_to_va(carve.pa.end - 8).unwrap_or(lo),
    ];
    let results = (0..plan.ncpus).map(|_| Default::default()).collect();
    let state = STATE.call_once(|| State {
        init_pa: carve.pa.start + u64::from(loaded.layout.init_entry),
        cpus,
        results,
        expect: selftest::Expect {
            layout: loaded.va,
            samples,
            magic_va,
            magic: *magic_box,
        },
    });

    (inp.on_each_cpu)(install_cpu);
    let mut ready = 0;
    for (cpu, slot) in state.cpus.iter().enumerate() {
        match slot.state.load(Ordering::Acquire) {
            install::state::READY => ready += 1,
            install::state::NONE => {}
            s => {
                println!(
                    "hyp: install failed on cpu{cpu}: {} returned x0={:#x}",
                    if s == install::state::SET_VECTORS_FAILED {
                        "HVC_SET_VECTORS"
                    } else {
                        "the init call"
                    },
                    slot.ret.load(Ordering::Relaxed)
                );
                return Outcome::InstallFailed;
            }
        }
    }
    if ready == 0 {
        println!("hyp: install failed: no CPU ran the install");
        return Outcome::InstallFailed;
    }
    println!(
        "hyp: mode=nvhe cpus={ready} image={} ready",
        loaded.file_size
    );

    // A setup call works until the setup group is closed; afterwards it is refused
    // (checked by the hyp-abi selftest).
    match install::call(HcallId::GetMdcrEl2, [0; 3]) {
        Ok(r) => log::info!("hyp: MDCR_EL2={:#x}", r[0]),
        Err(e) => log::warn!("hyp: get_mdcr_el2 before finalise: {e}"),
    }
    // The carve-out goes with it, so the VM calls can refuse hyp memory.
    let carve_size = carve.pa.end - carve.pa.start;
    if let Err(e) = install::call(HcallId::FinaliseSetup, [carve.va, carve_size, 0]) {
        println!("hyp: finalise_setup failed: {e}");
        return Outcome::InstallFailed;
    }
    // KIMAGE VAs (the heap's static block) are converted for the hyp within the first
    // GiB of the image mapping; the hyp checks every address it gets anyway.
    vm::init(inp.linear.memstart, inp.kimage_voffset, 1 << 30);

    (inp.on_each_cpu)(selftest_cpu);
    let mut failed =
        selftest::evaluate(inp.caps, inp.kimage_voffset, &state.expect, &state.results);
    if !vcpu_selftest::run(inp.on_each_cpu, carve.pa.start) {
        failed += 1;
    }
    Outcome::Ready { failed }
}
