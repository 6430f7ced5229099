//! Relinks the guest when its linker script changes (cargo does not track `-T` inputs;
//! xtask passes the script and the static-PIE flags, see xtask/src/guest.rs).
fn main() {
    println!("cargo:rerun-if-changed=../../linker/guest.ld");
}
