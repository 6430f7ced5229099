//! 32- and 64-bit atomics whose read-modify-write operations are alternatives on
//! HAS_LSE_ATOMICS.
//!
//! Each operation is one out-of-line function holding one `alternative!` site, so the
//! whole host shares one site per operation and width (six in all). The default half is
//! an LL/SC loop with release store-exclusive and a trailing `dmb ish` (fully ordered, as
//! Linux's `_mb` variants); the replacement is the acquire-release LSE instruction padded
//! with NOPs to the same length. Both halves start by writing which of them ran into a
//! spare register, so [`selftest`] can report the implementation the alternative selected
//! rather than what the cap says.
//!
//! Loads and stores need no alternative: they delegate to `core::sync::atomic` (LDAR/STLR
//! for acquire/release), which is also what mixed LL/SC and LSE accesses to the same
//! location are coherent with.

use core::sync::atomic::Ordering;
use shared::alternative;
use shared::cpucaps::Cap;

/// Which implementation an atomic operation ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomicsImpl {
    /// Load-/store-exclusive loops (the default, and what runs before the system pass).
    LlSc,
    /// ARMv8.1 LSE instructions (patched in when every CPU has HAS_LSE_ATOMICS).
    Lse,
}

impl AtomicsImpl {
    fn from_marker(m: u64) -> Self {
        if m == 0 {
            AtomicsImpl::LlSc
        } else {
            AtomicsImpl::Lse
        }
    }

    /// `llsc` or `lse`, as printed in the self-test line.
    pub const fn name(self) -> &'static str {
        match self {
            AtomicsImpl::LlSc => "llsc",
            AtomicsImpl::Lse => "lse",
        }
    }
}

/// Emits the three out-of-line operations for one width. `$m` is the register modifier
/// of the width (`w` for 32 bits, `x` for 64).
macro_rules! atomic_ops {
    ($t:ty, $m:literal, $fetch_add:ident, $swap:ident, $cas:ident) => {
        /// Atomically adds `v` to `*p` (wrapping); returns the old value and the
        /// implementation that ran. Fully ordered.
        ///
        /// # Safety
        ///
        /// `p` must be valid for atomic reads and writes and naturally aligned.
        #[inline(never)]
        unsafe fn $fetch_add(p: *mut $t, v: $t) -> ($t, AtomicsImpl) {
            let old: $t;
            let marker: u64;
            // SAFETY: the caller guarantees `p`; both halves only read and write `*p`
            // atomically and the named registers; LSE is used only once the system pass
            // has found it on every CPU.
            unsafe {
                alternative!(
                    cap = Cap::HasLseAtomics,
                    default = [
                        "mov {mk:w}, #0",
                        concat!("1: ldxr {old:", $m, "}, [{p}]"),
                        concat!("add {new:", $m, "}, {old:", $m, "}, {v:", $m, "}"),
                        concat!("stlxr {st:w}, {new:", $m, "}, [{p}]"),
                        "cbnz {st:w}, 1b",
                        "dmb ish",
                    ],
                    replacement = [
                        ".arch_extension lse",
                        "mov {mk:w}, #1",
                        concat!("ldaddal {v:", $m, "}, {old:", $m, "}, [{p}]"),
                        "nop",
                        "nop",
                        "nop",
                        "nop",
                    ],
                    p = in(reg) p,
                    v = in(reg) v,
                    old = out(reg) old,
                    new = out(reg) _,
                    st = out(reg) _,
                    mk = out(reg) marker,
                    options(nostack, preserves_flags),
                )
            }
            (old, AtomicsImpl::from_marker(marker))
        }

        /// Atomically stores `v` into `*p`; returns the old value and the implementation
        /// that ran. Fully ordered.
        ///
        /// # Safety
        ///
        /// `p` must be valid for atomic reads and writes and naturally aligned.
        #[inline(never)]
        unsafe fn $swap(p: *mut $t, v: $t) -> ($t, AtomicsImpl) {
            let old: $t;
            let marker: u64;
            // SAFETY: as for the fetch-add above.
            unsafe {
                alternative!(
                    cap = Cap::HasLseAtomics,
                    default = [
                        "mov {mk:w}, #0",
                        concat!("1: ldxr {old:", $m, "}, [{p}]"),
                        concat!("stlxr {st:w}, {v:", $m, "}, [{p}]"),
                        "cbnz {st:w}, 1b",
                        "dmb ish",
                    ],
                    replacement = [
                        ".arch_extension lse",
                        "mov {mk:w}, #1",
                        concat!("swpal {v:", $m, "}, {old:", $m, "}, [{p}]"),
                        "nop",
                        "nop",
                        "nop",
                    ],
                    p = in(reg) p,
                    v = in(reg) v,
                    old = out(reg) old,
                    st = out(reg) _,
                    mk = out(reg) marker,
                    options(nostack, preserves_flags),
                )
            }
            (old, AtomicsImpl::from_marker(marker))
        }

        /// Atomically replaces `*p` with `new` if it equals `expected`; returns the value
        /// found (equal to `expected` on success) and the implementation that ran. Fully
        /// ordered on success, unordered on failure.
        ///
        /// # Safety
        ///
        /// `p` must be valid for atomic reads and writes and naturally aligned.
        #[inline(never)]
        unsafe fn $cas(p: *mut $t, expected: $t, new: $t) -> ($t, AtomicsImpl) {
            let old: $t;
            let marker: u64;
            // SAFETY: as for the fetch-add above.
            unsafe {
                alternative!(
                    cap = Cap::HasLseAtomics,
                    default = [
                        "mov {mk:w}, #0",
                        concat!("1: ldxr {old:", $m, "}, [{p}]"),
                        concat!("eor {st:", $m, "}, {old:", $m, "}, {exp:", $m, "}"),
                        "cbnz {st}, 2f",
                        concat!("stlxr {st:w}, {new:", $m, "}, [{p}]"),
                        "cbnz {st:w}, 1b",
                        "dmb ish",
                        "2:",
                    ],
                    replacement = [
                        ".arch_extension lse",
                        "mov {mk:w}, #1",
                        concat!("mov {old:", $m, "}, {exp:", $m, "}"),
                        concat!("casal {old:", $m, "}, {new:", $m, "}, [{p}]"),
                        "nop",
                        "nop",
                        "nop",
                        "nop",
                    ],
                    p = in(reg) p,
                    exp = in(reg) expected,
                    new = in(reg) new,
                    old = out(reg) old,
                    st = out(reg) _,
                    mk = out(reg) marker,
                    options(nostack, preserves_flags),
                )
            }
            (old, AtomicsImpl::from_marker(marker))
        }
    };
}

atomic_ops!(u32, "w", fetch_add_u32, swap_u32, cas_u32);
atomic_ops!(u64, "x", fetch_add_u64, swap_u64, cas_u64);

/// Defines one atomic integer type over a `core` atomic.
macro_rules! atomic_type {
    ($name:ident, $core:ty, $t:ty, $fetch_add:ident, $swap:ident, $cas:ident) => {
        #[doc = concat!("A `", stringify!($t), "` with LSE-or-LL/SC read-modify-write operations (see the module documentation).")]
        #[repr(transparent)]
        pub struct $name($core);

        #[allow(
            dead_code,
            reason = "the complete API; the host uses part of it so far (spinlock, self-test)"
        )]
        impl $name {
            /// A new atomic holding `v`.
            pub const fn new(v: $t) -> Self {
                Self(<$core>::new(v))
            }

            /// Loads the value (`core` semantics for `order`).
            #[inline(always)]
            pub fn load(&self, order: Ordering) -> $t {
                self.0.load(order)
            }

            /// Stores `v` (`core` semantics for `order`).
            #[inline(always)]
            pub fn store(&self, v: $t, order: Ordering) {
                self.0.store(v, order)
            }

            /// Adds `v` (wrapping), fully ordered; returns the previous value.
            #[inline(always)]
            pub fn fetch_add(&self, v: $t) -> $t {
                self.fetch_add_impl(v).0
            }

            /// Stores `v`, fully ordered; returns the previous value.
            #[inline(always)]
            pub fn swap(&self, v: $t) -> $t {
                self.swap_impl(v).0
            }

            /// Stores `new` if the value is `current`, fully ordered on success. Returns
            /// `Ok(previous)` on success, `Err(actual)` otherwise.
            #[inline(always)]
            pub fn compare_exchange(&self, current: $t, new: $t) -> Result<$t, $t> {
                let (old, _) = self.compare_exchange_impl(current, new);
                if old == current {
                    Ok(old)
                } else {
                    Err(old)
                }
            }

            /// [`Self::fetch_add`], also saying which implementation ran.
            pub fn fetch_add_impl(&self, v: $t) -> ($t, AtomicsImpl) {
                // SAFETY: the pointer comes from a live, aligned core atomic.
                unsafe { $fetch_add(self.0.as_ptr(), v) }
            }

            /// [`Self::swap`], also saying which implementation ran.
            pub fn swap_impl(&self, v: $t) -> ($t, AtomicsImpl) {
                // SAFETY: the pointer comes from a live, aligned core atomic.
                unsafe { $swap(self.0.as_ptr(), v) }
            }

            /// The raw compare-and-swap: the value found and the implementation that ran.
            pub fn compare_exchange_impl(&self, current: $t, new: $t) -> ($t, AtomicsImpl) {
                // SAFETY: the pointer comes from a live, aligned core atomic.
                unsafe { $cas(self.0.as_ptr(), current, new) }
            }
        }
    };
}

atomic_type!(
    AtomicU32,
    core::sync::atomic::AtomicU32,
    u32,
    fetch_add_u32,
    swap_u32,
    cas_u32
);
atomic_type!(
    AtomicU64,
    core::sync::atomic::AtomicU64,
    u64,
    fetch_add_u64,
    swap_u64,
    cas_u64
);

/// Why the atomics self-test failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelftestError {
    /// An operation returned or left a wrong value.
    Value {
        /// Which operation.
        op: &'static str,
        /// What it should have been.
        expected: u64,
        /// What it was.
        found: u64,
    },
    /// Not every operation ran the same implementation (a site was missed by a pass).
    Mixed {
        /// Which operation disagreed with the first.
        op: &'static str,
    },
}

impl core::fmt::Display for SelftestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Value {
                op,
                expected,
                found,
            } => write!(f, "{op}: expected {expected:#x}, found {found:#x}"),
            Self::Mixed { op } => {
                write!(f, "{op} ran a different implementation than the others")
            }
        }
    }
}

fn expect(op: &'static str, found: u64, expected: u64) -> Result<(), SelftestError> {
    if found == expected {
        Ok(())
    } else {
        Err(SelftestError::Value {
            op,
            expected,
            found,
        })
    }
}

/// Exercises every operation of both widths (including wrap-around and a failing
/// compare-and-swap) and checks the values; returns the implementation they all ran.
pub fn selftest() -> Result<AtomicsImpl, SelftestError> {
    let mut ran: [(&'static str, AtomicsImpl); 10] = [("", AtomicsImpl::LlSc); 10];
    let mut n = 0;
    let mut op = |name: &'static str, (v, imp): (u64, AtomicsImpl)| {
        if let Some(slot) = ran.get_mut(n) {
            *slot = (name, imp);
        }
        n += 1;
        v
    };
    let w = |(v, i): (u32, AtomicsImpl)| (u64::from(v), i);

    let a = AtomicU32::new(u32::MAX - 1);
    expect(
        "fetch_add_u32",
        op("fetch_add_u32", w(a.fetch_add_impl(3))),
        u64::from(u32::MAX - 1),
    )?;
    expect(
        "fetch_add_u32 (wrapped)",
        a.load(Ordering::Acquire).into(),
        1,
    )?;
    expect("swap_u32", op("swap_u32", w(a.swap_impl(0xdead))), 1)?;
    expect(
        "cas_u32 (fail)",
        op("cas_u32", w(a.compare_exchange_impl(7, 9))),
        0xdead,
    )?;
    expect(
        "cas_u32 (ok)",
        op("cas_u32", w(a.compare_exchange_impl(0xdead, 9))),
        0xdead,
    )?;
    expect("cas_u32 (result)", a.load(Ordering::Acquire).into(), 9)?;

    let b = AtomicU64::new(0x1_0000_0000);
    expect(
        "fetch_add_u64",
        op("fetch_add_u64", b.fetch_add_impl(0xffff_ffff)),
        0x1_0000_0000,
    )?;
    expect(
        "swap_u64",
        op("swap_u64", b.swap_impl(u64::MAX)),
        0x1_ffff_ffff,
    )?;
    expect(
        "cas_u64 (fail)",
        op("cas_u64", b.compare_exchange_impl(0, 1)),
        u64::MAX,
    )?;
    expect(
        "cas_u64 (ok)",
        op("cas_u64", b.compare_exchange_impl(u64::MAX, 42)),
        u64::MAX,
    )?;
    expect("cas_u64 (result)", b.load(Ordering::Acquire), 42)?;

    let first = ran[0].1;
    match ran[..n.min(ran.len())]
        .iter()
        .find(|(_, imp)| *imp != first)
    {
        Some((name, _)) => Err(SelftestError::Mixed { op: name }),
        None => Ok(first),
    }
}
