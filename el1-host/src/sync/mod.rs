//! The host's own synchronisation primitives, built on alternatives:
//!
//! - [`atomic`]: [`atomic::AtomicU32`]/[`atomic::AtomicU64`] whose read-modify-write operations are one
//!   alternative site each — LL/SC loops (`ldxr`/`stlxr`) until the system pass finds
//!   HAS_LSE_ATOMICS, then the LSE instruction (`ldaddal`, `swpal`, `casal`).
//! - [`spinlock`]: a ticket [`SpinLock`] on those atomics, used for the console and every
//!   other host lock.
//!
//! Code that runs while text is being patched (the patcher, the stop-machine rendezvous)
//! must not use these: it uses `core::sync::atomic`, which is never patched.

pub mod atomic;
pub mod spinlock;

pub use atomic::AtomicsImpl;
pub use spinlock::SpinLock;
