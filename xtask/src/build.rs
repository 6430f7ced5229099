//! Building the host kernel and turning it into an arm64 Image.

use crate::image;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The bare-metal target of both images.
pub const TARGET: &str = "aarch64-unknown-none";

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// RUSTFLAGS that make a crate a static position-independent executable linked by
/// `script` (el2 and the test guest): no dynamic loader ever runs, so RELRO ordering
/// constraints (`-z norelro`) would only get in the way of the link scripts' layout.
pub fn static_pie_rustflags(script: &Path) -> Vec<String> {
    vec![
        "-Crelocation-model=pie".into(),
        "-Clink-arg=-pie".into(),
        "-Clink-arg=--no-dynamic-linker".into(),
        "-Clink-arg=-znorelro".into(),
        format!("-Clink-arg=-T{}", script.display()),
    ]
}

/// Runs cargo with `args` in `root` (and extra environment), reporting the command.
pub fn cargo_in(root: &Path, args: &[&str], env: &[(&str, &Path)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(root).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The host's output section holding the alternatives patcher and the SMP rendezvous
/// (linker/el1-host.ld), where no alternative site may be.
pub const NOPATCH_SECTION: &str = ".text.nopatch";

/// Builds el1-host (release, `aarch64-unknown-none`, linked by `linker/el1-host.ld`
/// through its build script), embedding `hyp_image` when given (the host's build script
/// reads `HYP_IMAGE`), runs `check_elf` on the linked ELF (a failure fails the build; xtask
/// passes the hyp-image pipeline's "no patch site in [`NOPATCH_SECTION`]" check, which
/// returns the number of records checked), and writes the Image next to the ELF. Returns
/// the Image path.
pub fn build_host_image(
    root: &Path,
    hyp_image: Option<&Path>,
    check_elf: &dyn Fn(&[u8]) -> Result<usize, String>,
) -> Result<PathBuf, String> {
    let env: Vec<(&str, &Path)> = hyp_image.map(|p| ("HYP_IMAGE", p)).into_iter().collect();
    cargo_in(
        root,
        &["build", "--release", "--target", TARGET, "-p", "el1-host"],
        &env,
    )?;
    let elf_path = root.join("target").join(TARGET).join("release/el1-host");
    let elf =
        std::fs::read(&elf_path).map_err(|e| format!("cannot read {}: {e}", elf_path.display()))?;
    let records = check_elf(&elf).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    eprintln!("xtask: host ELF: {records} alternative records, none inside {NOPATCH_SECTION}");
    let img = image::elf_to_image(&elf).map_err(|e| format!("{}: {e}", elf_path.display()))?;
    let out = crate::qemu::image_path(root);
    std::fs::write(&out, &img).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let h = image::verify(&std::fs::read(&out).map_err(|e| e.to_string())?)
        .map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "xtask: wrote {} ({} bytes, image_size {:#x}, flags {:#x}, hyp {})",
        out.display(),
        img.len(),
        h.image_size,
        h.flags,
        hyp_image.map_or("none".into(), |p| p.display().to_string())
    );
    Ok(out)
}
