//! The architectural random number generator (FEAT_RNG, `RNDR`), behind an alternative:
//! [`random_u64`] reads RNDR only once the system pass has found HAS_RNG on every CPU,
//! and returns `None` otherwise (before the system pass, or without FEAT_RNG) so the
//! caller falls back to the boot loader's seed ([`entropy_for_hyp_tag`]).

use el1_host::bootinfo::BootInfo;
use shared::cap_likely;
use shared::cpucaps::Cap;

/// RNDR may fail transiently (NZCV = 0b0100); it is retried this many times.
const RNDR_RETRIES: usize = 16;

/// Whether the HAS_RNG site of [`random_u64`] has been patched in.
#[inline(always)]
pub fn rng_site() -> bool {
    cap_likely!(Cap::HasRng)
}

/// One RNDR read: `Some(value)` on success, `None` if the hardware reported failure.
fn rndr() -> Option<u64> {
    let v: u64;
    let ok: u64;
    // SAFETY: RNDR (s3_3_c2_c4_0) exists: it is read only after the HAS_RNG site was
    // patched in, i.e. every CPU has FEAT_RNG. It only returns a value and sets NZCV
    // (Z = 1 on failure), which is read at once.
    unsafe {
        core::arch::asm!(
            "mrs {v}, s3_3_c2_c4_0",
            "cset {ok}, ne",
            v = out(reg) v,
            ok = out(reg) ok,
            options(nomem, nostack),
        );
    }
    (ok != 0).then_some(v)
}

/// 64 random bits from RNDR when HAS_RNG is live, retrying transient failures; `None`
/// without it or if every try failed.
pub fn random_u64() -> Option<u64> {
    if !rng_site() {
        return None;
    }
    (0..RNDR_RETRIES).find_map(|_| rndr())
}

/// Where the entropy of [`entropy_for_hyp_tag`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntropySource {
    /// The CPU's RNDR.
    Rndr,
    /// `/chosen/kaslr-seed`.
    KaslrSeed,
    /// The first eight bytes of `/chosen/rng-seed`.
    RngSeed,
}

impl EntropySource {
    /// The name printed in the log line.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Rndr => "rndr",
            Self::KaslrSeed => "kaslr-seed",
            Self::RngSeed => "rng-seed",
        }
    }
}

/// Entropy for the hyp VA tag and where it came from: RNDR if HAS_RNG is live (see
/// [`random_u64`]), else the device tree's `kaslr-seed`, else its `rng-seed`; `None` if
/// there is none (the caller then uses tag 0, as with `nokaslr`).
pub fn entropy_source(info: &BootInfo) -> Option<(u64, EntropySource)> {
    if let Some(v) = random_u64() {
        return Some((v, EntropySource::Rndr));
    }
    if let Some(seed) = info.kaslr_seed.filter(|&s| s != 0) {
        return Some((seed, EntropySource::KaslrSeed));
    }
    let bytes: [u8; 8] = info.rng_seed.get(..8)?.try_into().ok()?;
    Some((u64::from_le_bytes(bytes), EntropySource::RngSeed))
}

/// [`entropy_source`] with a log line naming the source (`hyp-tag entropy: source=…`).
pub fn entropy_for_hyp_tag(info: &BootInfo) -> Option<u64> {
    match entropy_source(info) {
        Some((v, src)) => {
            log::info!("hyp-tag entropy: source={}", src.name());
            Some(v)
        }
        None => {
            log::info!("hyp-tag entropy: source=none (no RNDR, no seed in the device tree)");
            None
        }
    }
}
