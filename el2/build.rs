//! Relinks el2 when its linker script changes (cargo does not track `-T` inputs itself).
fn main() {
    println!("cargo:rerun-if-changed=../linker/el2.ld");
}
