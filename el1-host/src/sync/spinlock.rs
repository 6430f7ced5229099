//! A ticket spinlock on the host's own atomics ([`super::AtomicU32`]), so taking a lock
//! runs LSE `ldaddal` or an LL/SC loop as the system pass decided.
//!
//! `next` hands out tickets (fetch-add, fully ordered); `owner` is the ticket being
//! served. A CPU takes a ticket and waits until `owner` reaches it (acquire load);
//! unlocking is a release store of `owner + 1` by the holder. [`SpinLock::try_lock`]
//! takes the next ticket only if it is the one being served (compare-and-swap), so it
//! never waits. Tickets are served in order: no CPU starves.

use super::atomic::AtomicU32;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{self, Ordering};

/// A fair (ticket) spinlock protecting a `T`.
pub struct SpinLock<T> {
    next: AtomicU32,
    owner: atomic::AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one holder at a time, so sharing the
// lock between CPUs is sound whenever `T` may be sent between them.
unsafe impl<T: Send> Sync for SpinLock<T> {}
// SAFETY: moving the lock moves the `T`.
unsafe impl<T: Send> Send for SpinLock<T> {}

impl<T> SpinLock<T> {
    /// An unlocked lock holding `value`.
    pub const fn new(value: T) -> Self {
        Self {
            next: AtomicU32::new(0),
            owner: atomic::AtomicU32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Waits for the lock and takes it.
    pub fn lock(&self) -> SpinLockGuard<'_, T> {
        let ticket = self.next.fetch_add(1);
        while self.owner.load(Ordering::Acquire) != ticket {
            core::hint::spin_loop();
        }
        SpinLockGuard { lock: self }
    }

    /// Takes the lock if nobody holds or waits for it.
    pub fn try_lock(&self) -> Option<SpinLockGuard<'_, T>> {
        let serving = self.owner.load(Ordering::Acquire);
        self.next
            .compare_exchange(serving, serving.wrapping_add(1))
            .ok()
            .map(|_| SpinLockGuard { lock: self })
    }
}

/// Access to a [`SpinLock`]'s value; unlocks when dropped.
pub struct SpinLockGuard<'a, T> {
    lock: &'a SpinLock<T>,
}

impl<T> Deref for SpinLockGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this CPU holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for SpinLockGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this CPU holds the lock, and `&mut self`
        // makes this the only reference through the guard.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for SpinLockGuard<'_, T> {
    fn drop(&mut self) {
        // Only the holder writes `owner`, so a plain load and a release store suffice.
        let o = self.lock.owner.load(Ordering::Relaxed);
        self.lock.owner.store(o.wrapping_add(1), Ordering::Release);
    }
}
