//! Locks: the kernel's `struct mutex` / `spinlock_t` ([`Mutex`]) and `rwlock_t` /
//! `struct rw_semaphore` ([`RwLock`], [`RwSem`]), each tagged with a [`LockClass`] so that the
//! [`lockdep`] checker can verify the lock order the real kernel relies on.
//!
//! Every blocking acquisition is reported to lockdep *before* it blocks (as the kernel's
//! `lock_acquire()` is), so an inversion is reported even when the run then deadlocks. Trylocks
//! are recorded as held but create no dependency, because a trylock cannot wait.
//!
//! A blocking acquisition first tries the lock; only if that fails does it register as a wait
//! in the thread's [`WaitDomain`](crate::waits::WaitDomain) (a "lock (exclusive)" or
//! "lock (shared)" wait on the class name)
//! and park in [`POLL`](crate::waits::POLL)-long timed tries, checking the domain's abort
//! between them, so a supervisor can see and end a deadlock. Uncontended acquisitions cost what
//! they did (one try-lock is what `lock()` starts with anyway).

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::panic::Location;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::lockdep::{self, Acquired, Mode};

#[cfg(gmem_loom)]
use loom::sync as imp;
#[cfg(not(gmem_loom))]
use parking_lot as imp;

/// A lock class in the sense of lockdep: every lock created with the same class is one node of
/// the lock-order graph, so an order established by one inode's lock constrains every inode's.
/// Declare classes as statics (not consts: a const would give each use its own class):
///
/// ```
/// use gmem_sync::LockClass;
/// pub static SLOTS_LOCK: LockClass = LockClass::new("kvm->slots_lock");
/// ```
///
/// The id is a plain `std` atomic even under loom: it is bookkeeping, not modelled state.
pub struct LockClass {
    name: &'static str,
    /// 0 until the class is first seen by an enabled checker, then its node number.
    id: AtomicU32,
}

impl LockClass {
    /// Creates a class; `const` so classes can be statics next to the code that defines the
    /// lock, as the kernel's `static struct lock_class_key` is.
    pub const fn new(name: &'static str) -> Self {
        Self { name, id: AtomicU32::new(0) }
    }

    /// The class name, e.g. `"kvm->slots_lock"`; used in reports so they read like the kernel's.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The graph node of this class, registered on first use.
    pub(crate) fn id(&'static self) -> u32 {
        match self.id.load(Ordering::Acquire) {
            0 => lockdep::register(self, &self.id),
            id => id,
        }
    }
}

impl fmt::Debug for LockClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockClass").field("name", &self.name).finish()
    }
}

/// `lockdep_assert_held()`: in checked builds (see [`lockdep::enabled`]) panics unless the
/// current thread holds a lock of `class` in any mode, so that functions documented as "called
/// with X held" enforce it. A no-op where the checker is off.
#[track_caller]
pub fn lockdep_assert_held(class: &'static LockClass) {
    lockdep::assert_held(class, Location::caller());
}

/// Identity of one lock instance (its address), to tell re-locking the same lock from nesting
/// two locks of one class.
fn instance<T: ?Sized>(lock: &T) -> usize {
    lock as *const T as *const () as usize
}

/// The slow path of a blocking acquisition whose first try failed: registered as a wait on
/// the class, then timed tries until the lock is ours. Outside a supervised domain the tries
/// are long (nothing to poll for); inside one each is [`POLL`](crate::waits::POLL) long and
/// followed by an abort check.
#[cfg(not(gmem_loom))]
#[cold]
fn contended<G>(
    class: &'static LockClass,
    mode: &'static str,
    mut try_for: impl FnMut(std::time::Duration) -> Option<G>,
) -> G {
    // No allocation: contended acquisitions are frequent in a run.
    let wait = crate::waits::waiting(mode, || class.name.into());
    let timeout = if wait.supervised() { crate::waits::POLL } else { std::time::Duration::from_secs(3600) };
    loop {
        if let Some(guard) = try_for(timeout) {
            return guard;
        }
        wait.check_abort();
    }
}

// ---------------------------------------------------------------------------------------------
// Mutex

/// The kernel's `struct mutex` or spinlock: exclusive, infallible (no poisoning: a panic in the
/// simulator is a test failure, not a state to recover from). `parking_lot::Mutex` normally,
/// `loom::sync::Mutex` under loom. Acquisitions are checked by lockdep.
#[doc(alias("mutex", "spinlock_t"))]
pub struct Mutex<T: ?Sized> {
    class: &'static LockClass,
    inner: imp::Mutex<T>,
}

/// Holds a [`Mutex`]; releases it (and pops it from the lockdep held stack) when dropped.
#[must_use = "dropping the guard releases the lock at once"]
pub struct MutexGuard<'a, T: ?Sized> {
    inner: imp::MutexGuard<'a, T>,
    _held: Option<Acquired>,
}

impl<T> Mutex<T> {
    /// Creates an unlocked mutex of lock class `class` (which decides where it sits in the lock
    /// order).
    pub fn new(class: &'static LockClass, value: T) -> Self {
        Self { class, inner: imp::Mutex::new(value) }
    }

    /// Consumes the mutex and returns the value; needs no locking because it owns the mutex.
    pub fn into_inner(self) -> T {
        #[cfg(gmem_loom)]
        return self.inner.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        #[cfg(not(gmem_loom))]
        return self.inner.into_inner();
    }
}

impl<T: ?Sized> Mutex<T> {
    /// `mutex_lock()` / `spin_lock()`: blocks until the lock is held. The caller's location is
    /// recorded for lockdep reports.
    #[track_caller]
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let held = lockdep::acquire(self.class, instance(self), Mode::Exclusive, Location::caller(), true);
        #[cfg(gmem_loom)]
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        #[cfg(not(gmem_loom))]
        let inner = match self.inner.try_lock() {
            Some(inner) => inner,
            None => contended(self.class, "lock (exclusive)", |timeout| self.inner.try_lock_for(timeout)),
        };
        MutexGuard { inner, _held: held }
    }

    /// `mutex_trylock()` / `spin_trylock()`: the lock if it is free now, else `None`. A
    /// successful trylock is recorded as held but adds no lock-order dependency.
    #[track_caller]
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        #[cfg(gmem_loom)]
        let inner = self.inner.try_lock().ok()?;
        #[cfg(not(gmem_loom))]
        let inner = self.inner.try_lock()?;
        let held = lockdep::acquire(self.class, instance(self), Mode::Exclusive, Location::caller(), false);
        Some(MutexGuard { inner, _held: held })
    }

    /// Access through `&mut self` needs no locking: the borrow checker proves exclusivity.
    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(gmem_loom)]
        return self.inner.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        #[cfg(not(gmem_loom))]
        return self.inner.get_mut();
    }

    /// The lock class, for [`lockdep_assert_held`] and diagnostics.
    pub fn class(&self) -> &'static LockClass {
        self.class
    }
}

impl<T: ?Sized> fmt::Debug for Mutex<T> {
    /// Prints the class only: looking at the data would need the lock, and taking it from a
    /// `Debug` impl could deadlock or perturb a loom schedule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mutex").field("class", &self.class.name).finish_non_exhaustive()
    }
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for MutexGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

// ---------------------------------------------------------------------------------------------
// RwLock

/// The kernel's `rwlock_t` / `struct rw_semaphore`: shared readers or one exclusive writer.
/// `parking_lot::RwLock` normally, `loom::sync::RwLock` under loom. Acquisitions are checked by
/// lockdep; nested read acquisitions of one class are allowed.
///
/// Under loom one thread must not hold two read guards of the *same* lock at once: loom tracks
/// readers as a set of threads and panics ("invalid internal loom state") on the second release.
/// (Such nesting is also deadlock-prone for a real `rw_semaphore`, where a queued writer blocks
/// the second `down_read()`.)
#[doc(alias = "rwlock_t")]
pub struct RwLock<T: ?Sized> {
    class: &'static LockClass,
    inner: imp::RwLock<T>,
}

/// The kernel's `struct rw_semaphore` (e.g. the filemap `invalidate_lock`): the same type as
/// [`RwLock`]; the alias documents that the kernel lock sleeps.
#[doc(alias = "rw_semaphore")]
pub type RwSem<T> = RwLock<T>;

/// Shared hold of an [`RwLock`] (`down_read()` / `read_lock()`); released on drop.
#[must_use = "dropping the guard releases the lock at once"]
pub struct RwLockReadGuard<'a, T: ?Sized> {
    inner: imp::RwLockReadGuard<'a, T>,
    _held: Option<Acquired>,
}

/// Exclusive hold of an [`RwLock`] (`down_write()` / `write_lock()`); released on drop.
#[must_use = "dropping the guard releases the lock at once"]
pub struct RwLockWriteGuard<'a, T: ?Sized> {
    inner: imp::RwLockWriteGuard<'a, T>,
    _held: Option<Acquired>,
}

impl<T> RwLock<T> {
    /// Creates an unlocked lock of lock class `class`.
    pub fn new(class: &'static LockClass, value: T) -> Self {
        Self { class, inner: imp::RwLock::new(value) }
    }

    /// Consumes the lock and returns the value; needs no locking because it owns the lock.
    pub fn into_inner(self) -> T {
        #[cfg(gmem_loom)]
        return self.inner.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        #[cfg(not(gmem_loom))]
        return self.inner.into_inner();
    }
}

impl<T: ?Sized> RwLock<T> {
    /// `down_read()` / `read_lock()`: blocks until held shared.
    #[track_caller]
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        let held = lockdep::acquire(self.class, instance(self), Mode::Shared, Location::caller(), true);
        #[cfg(gmem_loom)]
        let inner = self.inner.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        #[cfg(not(gmem_loom))]
        let inner = match self.inner.try_read() {
            Some(inner) => inner,
            None => contended(self.class, "lock (shared)", |timeout| self.inner.try_read_for(timeout)),
        };
        RwLockReadGuard { inner, _held: held }
    }

    /// `down_write()` / `write_lock()`: blocks until held exclusively.
    #[track_caller]
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        let held = lockdep::acquire(self.class, instance(self), Mode::Exclusive, Location::caller(), true);
        #[cfg(gmem_loom)]
        let inner = self.inner.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        #[cfg(not(gmem_loom))]
        let inner = match self.inner.try_write() {
            Some(inner) => inner,
            None => contended(self.class, "lock (exclusive)", |timeout| self.inner.try_write_for(timeout)),
        };
        RwLockWriteGuard { inner, _held: held }
    }

    /// `down_read_trylock()`: shared hold if available now, else `None`.
    #[track_caller]
    pub fn try_read(&self) -> Option<RwLockReadGuard<'_, T>> {
        #[cfg(gmem_loom)]
        let inner = self.inner.try_read().ok()?;
        #[cfg(not(gmem_loom))]
        let inner = self.inner.try_read()?;
        let held = lockdep::acquire(self.class, instance(self), Mode::Shared, Location::caller(), false);
        Some(RwLockReadGuard { inner, _held: held })
    }

    /// `down_write_trylock()`: exclusive hold if available now, else `None`.
    #[track_caller]
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        #[cfg(gmem_loom)]
        let inner = self.inner.try_write().ok()?;
        #[cfg(not(gmem_loom))]
        let inner = self.inner.try_write()?;
        let held = lockdep::acquire(self.class, instance(self), Mode::Exclusive, Location::caller(), false);
        Some(RwLockWriteGuard { inner, _held: held })
    }

    /// Access through `&mut self` needs no locking: the borrow checker proves exclusivity.
    pub fn get_mut(&mut self) -> &mut T {
        #[cfg(gmem_loom)]
        return self.inner.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        #[cfg(not(gmem_loom))]
        return self.inner.get_mut();
    }

    /// The lock class, for [`lockdep_assert_held`] and diagnostics.
    pub fn class(&self) -> &'static LockClass {
        self.class
    }
}

impl<T: ?Sized> fmt::Debug for RwLock<T> {
    /// Prints the class only, for the same reason as [`Mutex`]'s `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RwLock").field("class", &self.class.name).finish_non_exhaustive()
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: ?Sized + fmt::Debug> fmt::Debug for RwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DATA: LockClass = LockClass::new("lock-test data");

    #[test]
    fn mutex_basics() {
        crate::check(|| {
            let m = Mutex::new(&DATA, 1u32);
            *m.lock() += 1;
            {
                let g = m.lock();
                assert!(m.try_lock().is_none());
                assert_eq!(*g, 2);
                assert_eq!(format!("{g:?}"), "2");
            }
            assert!(m.try_lock().is_some());
            assert_eq!(m.class().name(), "lock-test data");
            let mut m = m;
            *m.get_mut() = 7;
            assert_eq!(m.into_inner(), 7);
        });
    }

    /// Guards can be shared by reference (like parking_lot's); they are not `Send` because
    /// the lockdep entry belongs to the acquiring thread.
    #[test]
    fn guards_are_sync() {
        fn sync<T: Sync>() {}
        sync::<MutexGuard<'static, u32>>();
        sync::<RwLockReadGuard<'static, u32>>();
        sync::<RwLockWriteGuard<'static, u32>>();
        sync::<crate::SrcuReadGuard<'static>>();
        sync::<Mutex<u32>>();
        sync::<RwLock<u32>>();
    }

    #[test]
    fn rwlock_basics() {
        crate::check(|| {
            let l: RwSem<Vec<u32>> = RwLock::new(&DATA, vec![]);
            l.write().push(1);
            {
                let a = l.read();
                assert!(l.try_write().is_none());
                assert_eq!(a.len(), 1);
                // loom's RwLock cannot hold two read guards of one lock in one thread.
                #[cfg(not(gmem_loom))]
                {
                    let b = l.try_read().expect("shared");
                    assert_eq!(a.len() + b.len(), 2);
                }
            }
            assert!(l.try_write().is_some());
            assert_eq!(l.into_inner(), vec![1]);
        });
    }
}
