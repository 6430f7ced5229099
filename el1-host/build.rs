//! Build script of the host kernel: links the binary with `linker/el1-host.ld`, and
//! embeds the hyp image when xtask names it.
//!
//! `HYP_IMAGE` (set by `cargo xtask build`): path of the hyp image to embed. When it is
//! set the crate is compiled with `cfg(has_hyp_image)` and `HYP_IMAGE_PATH` for
//! `include_bytes!`; when it is unset the host builds without a hyp.
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let script = manifest.join("../linker/el1-host.ld");
    println!("cargo:rerun-if-changed={}", script.display());
    println!("cargo:rerun-if-env-changed=HYP_IMAGE");
    println!("cargo::rustc-check-cfg=cfg(has_hyp_image)");
    // Only the kernel binary for the bare-metal target gets the link script; the library
    // is also built for the build machine's tests.
    if std::env::var("TARGET").as_deref() == Ok("aarch64-unknown-none") {
        println!("cargo:rustc-link-arg-bins=-T{}", script.display());
    }
    if let Some(path) = std::env::var_os("HYP_IMAGE").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            panic!("HYP_IMAGE={} is not a file", path.display());
        }
        println!("cargo:rerun-if-changed={}", path.display());
        println!("cargo:rustc-cfg=has_hyp_image");
        println!("cargo:rustc-env=HYP_IMAGE_PATH={}", path.display());
    }
}
