//! `cargo xtask`: the project's build and test driver.
//!
//! `test` is the command CI runs: formatting, lints for the host and the
//! `aarch64-unknown-none` crates, every host test (the QEMU boot tests included), and
//! the AArch64 builds. `build` makes the hyp image and the host Image that embeds it;
//! `qemu` builds and boots it.

mod hyp_image;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build") => build().map(|_| ()),
        Some("qemu") => qemu(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("test") => test(),
        Some("linux-guest") => xtask::linux::fetch(&xtask::build::workspace_root())
            .map(|g| println!("{}\n{}", g.kernel.display(), g.initramfs.display())),
        Some("hyp-image") => hyp_image::build_hyp_image(&hyp_image::workspace_root()).map(|_| ()),
        Some("guest-image") => xtask::guest::build_guest(&xtask::build::workspace_root())
            .map(|p| println!("{}", p.display())),
        Some("size") => hyp_image::build_hyp_image(&hyp_image::workspace_root())
            .and_then(|p| hyp_image::size_report(&p))
            .map(|s| print!("{s}")),
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

const USAGE: &str =
    "usage: cargo xtask <build|qemu|bench|test|linux-guest|hyp-image|guest-image|size>
  build   build el2 and the hyp image, then el1-host embedding it, and write the
          arm64 Image target/aarch64-unknown-none/release/el1-host.img
  qemu    build, then boot the host under QEMU with a guest under its hypervisor, and
          exit with the guest's status (the host's if the host failed):
          qemu [--cpu NAME] [--smp N] [--mem SIZE] [--append ARGS] [--timeout SECS] [--gdb]
               [--guest PATH] [--initrd PATH] [--guest-append ARGS] [--guest-mem SIZE]
               [--guest-raw] [--guest-timeout SECS] [--no-guest]
          (defaults: --cpu max --smp 2 --mem 1G --timeout 60, the test guest
          (tests/guest) with --guest-mem 128M, one vCPU per CPU, guest time limit
          --timeout minus 20 s; --no-guest boots the host alone; --guest linux boots
          the Debian kernel and busybox initramfs of `linux-guest`, with 256M and
          \"console=ttyAMA0 earlycon\" unless given)
  linux-guest  download Debian's arm64 kernel and busybox-static (own apt state, the
          machine's dpkg untouched), build the initramfs, print both paths
          (target/linux-guest/)
  bench   run the benchmarks under `-icount shift=0` (instructions, not time) and
          write docs/bench.md: bench [--cpu NAME] [--iterations N]
  test    fmt check, clippy (host + aarch64), cargo test (boot tests included), builds
  guest-image  build the test guest's Image and print its path
  hyp-image    build el2 and turn it into the hyp image (target/hyp-image/el2.hypimg)
  size    print both images' sizes and their alternative tables' entry counts";

const TARGET: &str = "aarch64-unknown-none";
const AARCH64_CRATES: [&str; 2] = ["el2", "el1-host"];

fn cargo(args: &[&str]) -> Result<(), String> {
    xtask::build::cargo_in(&xtask::build::workspace_root(), args, &[])
}

fn aarch64_args<'a>(cmd: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![cmd, "--release", "--target", TARGET];
    for c in AARCH64_CRATES {
        v.extend(["-p", c]);
    }
    v.extend_from_slice(extra);
    v
}

/// Builds both crates, the hyp image, and the host Image embedding it; returns the Image.
fn build() -> Result<std::path::PathBuf, String> {
    let root = xtask::build::workspace_root();
    let hyp = hyp_image_for_host(&root)?;
    xtask::build::build_host_image(&root, hyp.as_deref(), &check_host_elf)
}

/// The host ELF check of every host build: no alternative site inside the patcher's own
/// section.
fn check_host_elf(elf: &[u8]) -> Result<usize, String> {
    let file = object::read::elf::ElfFile64::<object::Endianness>::parse(elf)
        .map_err(|e| format!("not an ELF64 file: {e}"))?;
    let model = hyp_image::ElfModel::read(&file)?;
    hyp_image::check_no_patch_sites(&model, xtask::build::NOPATCH_SECTION)
}

/// The hyp image the host embeds: `HYP_IMAGE` from the environment if set (a prebuilt
/// one), else the one `hyp_image` builds from el2.
fn hyp_image_for_host(root: &std::path::Path) -> Result<Option<std::path::PathBuf>, String> {
    match std::env::var_os("HYP_IMAGE").filter(|v| !v.is_empty()) {
        Some(p) => Ok(Some(p.into())),
        None => hyp_image::build_hyp_image(root).map(Some),
    }
}

/// How the guest of a `qemu` run is chosen.
struct GuestOptions {
    spec: Option<xtask::bundle::GuestSpec>,
    guest_timeout: Option<u32>,
    none: bool,
}

/// `cargo xtask qemu …`
fn qemu(args: &[String]) -> Result<(), String> {
    use xtask::qemu::{self, QemuConfig};
    let root = xtask::build::workspace_root();
    let mut cfg = QemuConfig::new(qemu::image_path(&root));
    let mut g = GuestOptions {
        spec: None,
        guest_timeout: None,
        none: false,
    };
    let mut initrd = None;
    let mut append = String::new();
    let mut guest_mem = None;
    let mut raw = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--cpu" => cfg.cpu = value()?,
            "--smp" => {
                let v = value()?;
                cfg.smp = v.parse().map_err(|_| format!("--smp {v}: not a number"))?;
            }
            "--mem" => cfg.mem = value()?,
            "--append" => cfg.append = Some(value()?),
            "--timeout" => {
                let v = value()?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout {v}: not a number of seconds"))?;
                cfg.timeout = Some(std::time::Duration::from_secs(secs));
            }
            "--gdb" => cfg.gdb = true,
            "--guest" => {
                g.spec = Some(xtask::bundle::GuestSpec::new(value()?.into()));
            }
            "--initrd" => initrd = Some(std::path::PathBuf::from(value()?)),
            "--guest-append" => append = value()?,
            "--guest-mem" => {
                let v = value()?;
                guest_mem = Some(
                    qemu::parse_mem(&v)
                        .ok_or_else(|| format!("--guest-mem {v}: expected a size such as 128M"))?,
                );
            }
            "--guest-raw" => raw = true,
            "--guest-timeout" => {
                let v = value()?;
                g.guest_timeout = Some(
                    v.parse()
                        .map_err(|_| format!("--guest-timeout {v}: not a number of seconds"))?,
                );
            }
            "--no-guest" => g.none = true,
            other => return Err(format!("qemu: unknown option `{other}`\n{USAGE}")),
        }
    }
    cfg.validate().map_err(|e| e.to_string())?;
    if g.none && (g.spec.is_some() || initrd.is_some()) {
        return Err("--no-guest cannot be combined with --guest or --initrd".into());
    }
    if !g.none {
        let mut spec = match g.spec.take() {
            Some(s) if s.kernel.as_os_str() == "linux" => {
                let linux = xtask::linux::fetch(&root)?;
                let mut s = xtask::bundle::GuestSpec::new(linux.kernel);
                s.initrd = Some(linux.initramfs);
                s.append = xtask::linux::DEFAULT_APPEND.into();
                s.guest_mem = xtask::linux::DEFAULT_MEM;
                s
            }
            Some(s) => s,
            None => xtask::bundle::GuestSpec::new(xtask::guest::build_guest(&root)?),
        };
        if initrd.is_some() {
            spec.initrd = initrd;
        }
        if !append.is_empty() {
            spec.append = append;
        }
        if let Some(m) = guest_mem {
            spec.guest_mem = m;
        }
        spec.raw = raw;
        spec.timeout_secs = g.guest_timeout.unwrap_or_else(|| {
            cfg.timeout
                .map_or(0, |t| xtask::bench::default_guest_timeout(t.as_secs()))
        });
        let out = xtask::bundle::write(&spec, &xtask::bundle::bundle_path(&root))?;
        eprintln!(
            "xtask: guest bundle {} ({}, {} MiB RAM, time limit {} s)",
            out.display(),
            spec.kernel.display(),
            spec.guest_mem >> 20,
            spec.timeout_secs
        );
        cfg.initrd = Some(out);
    }
    qemu::ensure_installed().map_err(|e| e.to_string())?;
    cfg.image = build()?;
    if cfg.gdb {
        cfg.timeout = None;
        if !qemu::ensure_package("gdb-multiarch", "gdb-multiarch") {
            eprintln!(
                "xtask: gdb-multiarch is not installed (apt-get install gdb-multiarch); \
                 any gdb that knows AArch64 will do"
            );
        }
        let elf = root.join("target/aarch64-unknown-none/release/el1-host");
        eprintln!(
            "xtask: QEMU waits for gdb on localhost:1234; attach with:\n  gdb-multiarch {} -ex 'target remote :1234'",
            elf.display()
        );
    }
    eprintln!("xtask: {} {}", qemu::QEMU, cfg.args().join(" "));
    let report = qemu::run(&cfg, |line| println!("{line}")).map_err(|e| e.to_string())?;
    match report.failure() {
        None => Ok(()),
        Some(why) => {
            eprintln!("xtask: {why}");
            std::process::exit(report.exit_code().into())
        }
    }
}

/// `cargo xtask bench …`: the test guest with `bench=<n>` under `-icount shift=0`.
fn bench(args: &[String]) -> Result<(), String> {
    use xtask::qemu::{self, QemuConfig};
    let root = xtask::build::workspace_root();
    let mut cfg = QemuConfig::new(qemu::image_path(&root));
    cfg.smp = 1;
    cfg.icount = true;
    cfg.timeout = Some(std::time::Duration::from_secs(300));
    let mut iterations = xtask::bench::DEFAULT_ITERATIONS;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--cpu" => cfg.cpu = value()?,
            "--iterations" => {
                let v = value()?;
                iterations = v
                    .parse()
                    .ok()
                    .filter(|&n: &u64| n > 0)
                    .ok_or_else(|| format!("--iterations {v}: not a positive number"))?;
            }
            other => return Err(format!("bench: unknown option `{other}`\n{USAGE}")),
        }
    }
    cfg.validate().map_err(|e| e.to_string())?;
    let mut spec = xtask::bundle::GuestSpec::new(xtask::guest::build_guest(&root)?);
    spec.append = format!("bench={iterations}");
    spec.vcpus = 1;
    spec.timeout_secs = 240;
    cfg.initrd = Some(xtask::bundle::write(
        &spec,
        &xtask::bundle::bundle_path(&root),
    )?);
    qemu::ensure_installed().map_err(|e| e.to_string())?;
    cfg.image = build()?;
    eprintln!("xtask: {} {}", qemu::QEMU, cfg.args().join(" "));
    let report = qemu::run(&cfg, |line| println!("{line}")).map_err(|e| e.to_string())?;
    match (&report.outcome, report.failure()) {
        (_, None) => {}
        // The numbers are still measured when a guest check failed; say so and go on.
        (qemu::Outcome::Status(0), Some(why)) if report.guest.is_some() => {
            eprintln!("xtask: warning: {why}; the benchmark lines are still used")
        }
        (_, Some(why)) => return Err(format!("the benchmark run failed: {why}")),
    }
    let table = xtask::bench::collect(&report.lines)?;
    let qemu_version = std::process::Command::new(qemu::QEMU)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "unknown QEMU".into());
    let md = xtask::bench::render_markdown(&table, &cfg.cpu, &qemu_version);
    print!("{}", xtask::bench::render_text(&table));
    let out = root.join("docs/bench.md");
    std::fs::write(&out, md).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
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
    // el1-host's pure logic (DTB, bootargs, layout) runs on the build machine too.
    cargo(&[
        "clippy", "-p", "el1-host", "--lib", "--tests", "--", "-D", "warnings",
    ])?;
    cargo(&["test", "-p", "el1-host", "--lib"])?;
    // Build first so the boot tests (a default member) find a fresh Image.
    let image = build()?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .arg("test")
        .env("EL1_HOST_IMAGE", &image)
        .status()
        .map_err(|e| format!("cannot run cargo test: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo test` failed ({status})"))
    }
}
