//! Use-after-free detection for objects that the model frees behind a published pointer.
//!
//! The kernel reaches some objects through raw pointers whose lifetime only a protocol
//! guarantees: a memslot generation (`kvm->memslots[as_id]`) stays allocated until
//! `synchronize_srcu()` has waited out every reader, a file until an RCU grace period has passed.
//! The model has the same raw pointers, so a broken protocol (a `synchronize_srcu` dropped on
//! purpose, a reader that outlives its read section) would be a real use-after-free in the
//! simulator: a segfault, or silently wrong answers, and under loom nothing at all, since loom
//! cannot see heap accesses.
//!
//! In *checked* builds ([`CHECKED`]: debug builds and `--cfg gmem_loom`) such objects carry a
//! [`FreeMark`] and are not returned to the system allocator when the model frees them: the mark
//! records the call site and thread of the free, and the object goes to a bounded
//! [`Quarantine`] (a FIFO; its oldest entries are really freed when it is full, and the rest
//! when its owner is dropped). Every accessor a reader uses checks the mark first, so a stale
//! reader panics with a message that names the object, the reader's call site (through
//! `#[track_caller]`) and thread, and where the object was freed, instead of reading freed
//! memory. In release builds the mark is absent, [`FreeMark::check`] compiles to nothing and
//! the quarantine frees at once, so the hot paths cost what they did.
//!
//! The mark is deliberately a `std` atomic, also under loom: it is bookkeeping about the
//! execution loom is running, not part of the protocol under test, and a loom atomic would add
//! a scheduling point to every checked access (and multiply the states loom explores). Loom runs
//! every model thread on one OS thread and switches only at its own operations, so a plain
//! atomic read tells exactly whether, in the interleaving being explored, the free happened
//! before the access.

use std::collections::VecDeque;
use std::fmt;
use std::panic::Location;
#[cfg(any(debug_assertions, gmem_loom))]
use std::sync::OnceLock;
use std::sync::{Mutex as StdMutex, PoisonError};

/// Whether this build checks for use-after-free (debug builds and loom builds).
pub const CHECKED: bool = cfg!(any(debug_assertions, gmem_loom));

/// Who freed an object: the call site (recorded through `#[track_caller]`) and the thread.
#[derive(Clone, Debug)]
pub struct FreedBy {
    /// The call site of the free.
    pub at: &'static Location<'static>,
    /// The freeing thread's name (or id).
    pub thread: String,
}

impl fmt::Display for FreedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (thread {})", self.at, self.thread)
    }
}

/// The name of the current thread as the model knows it: loom's model thread under loom (all
/// model threads share one OS thread there), the OS thread otherwise.
pub fn current_thread_name() -> String {
    #[cfg(gmem_loom)]
    {
        let thread = loom::thread::current();
        match thread.name() {
            Some(name) => name.to_owned(),
            None => format!("{:?}", thread.id()),
        }
    }
    #[cfg(not(gmem_loom))]
    {
        let thread = std::thread::current();
        match thread.name() {
            Some(name) => name.to_owned(),
            None => format!("{:?}", thread.id()),
        }
    }
}

/// The free state of one object: live, or freed at a recorded call site. Zero-sized in release
/// builds.
#[derive(Default)]
pub struct FreeMark {
    #[cfg(any(debug_assertions, gmem_loom))]
    freed: OnceLock<FreedBy>,
}

impl fmt::Debug for FreeMark {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.freed_by() {
            None => f.write_str("FreeMark(live)"),
            Some(by) => write!(f, "FreeMark(freed at {by})"),
        }
    }
}

impl FreeMark {
    /// A live object's mark.
    pub const fn live() -> FreeMark {
        FreeMark {
            #[cfg(any(debug_assertions, gmem_loom))]
            freed: OnceLock::new(),
        }
    }

    /// Where the object was freed, if it was (always `None` in release builds).
    pub fn freed_by(&self) -> Option<&FreedBy> {
        #[cfg(any(debug_assertions, gmem_loom))]
        return self.freed.get();
        #[cfg(not(any(debug_assertions, gmem_loom)))]
        None
    }

    /// Records that the object is freed here, by this thread. Panics on a second free, naming
    /// the object (`what` is only called then) and both call sites.
    #[track_caller]
    pub fn mark_freed(&self, what: impl FnOnce() -> String) {
        #[cfg(any(debug_assertions, gmem_loom))]
        {
            let by = FreedBy { at: Location::caller(), thread: current_thread_name() };
            if let Err(again) = self.freed.set(by) {
                let first = self.freed.get().expect("set failed, so it is set");
                panic!("double free: {} freed at {again} was already freed at {first}", what());
            }
        }
        #[cfg(not(any(debug_assertions, gmem_loom)))]
        let _ = what;
    }

    /// The check a reader makes before it touches the object: panics if the object was freed,
    /// with a message naming the object (`what` is only called then), the reader (its call
    /// site, through `#[track_caller]`, and thread) and the free. Nothing in release builds.
    #[inline]
    #[track_caller]
    pub fn check(&self, what: impl FnOnce() -> String) {
        #[cfg(any(debug_assertions, gmem_loom))]
        if let Some(by) = self.freed.get() {
            use_after_free(&what(), Location::caller(), by);
        }
        #[cfg(not(any(debug_assertions, gmem_loom)))]
        let _ = what;
    }

    /// [`FreeMark::check`] for a reader whose call site was recorded earlier (a walk that
    /// checks at every step names where it began).
    #[inline]
    pub fn check_at(&self, reader: &'static Location<'static>, what: impl FnOnce() -> String) {
        #[cfg(any(debug_assertions, gmem_loom))]
        if let Some(by) = self.freed.get() {
            use_after_free(&what(), reader, by);
        }
        #[cfg(not(any(debug_assertions, gmem_loom)))]
        let _ = (reader, what);
    }
}

/// The free state of memory that is reused rather than freed to the system (a page frame, as
/// KASAN poisons a page on free and unpoisons it on allocation): who freed it, and what it was
/// last known as (`T`, such as a folio's file and index, recorded with [`Poison::identify`]
/// while it is allocated, since the kernel clears them before the free). An allocation clears
/// both. Zero-sized in release builds.
pub struct Poison<T> {
    #[cfg(any(debug_assertions, gmem_loom))]
    poisoned: std::sync::atomic::AtomicBool,
    #[cfg(any(debug_assertions, gmem_loom))]
    record: StdMutex<(Option<T>, Option<FreedBy>)>,
    #[cfg(not(any(debug_assertions, gmem_loom)))]
    _record: std::marker::PhantomData<T>,
}

impl<T> Default for Poison<T> {
    fn default() -> Self {
        Poison {
            #[cfg(any(debug_assertions, gmem_loom))]
            poisoned: std::sync::atomic::AtomicBool::new(false),
            #[cfg(any(debug_assertions, gmem_loom))]
            record: StdMutex::new((None, None)),
            #[cfg(not(any(debug_assertions, gmem_loom)))]
            _record: std::marker::PhantomData,
        }
    }
}

impl<T> fmt::Debug for Poison<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Poison").field("poisoned", &self.is_poisoned()).finish()
    }
}

impl<T> Poison<T> {
    /// Records what the allocated memory is (the report of a later use-after-free names it so).
    pub fn identify(&self, info: impl FnOnce() -> T) {
        #[cfg(any(debug_assertions, gmem_loom))]
        {
            self.record.lock().unwrap_or_else(PoisonError::into_inner).0 = Some(info());
        }
        #[cfg(not(any(debug_assertions, gmem_loom)))]
        let _ = info;
    }

    /// Records that the memory is freed here (the caller's call site) by this thread.
    #[track_caller]
    pub fn poison(&self) {
        #[cfg(any(debug_assertions, gmem_loom))]
        {
            let by = FreedBy { at: Location::caller(), thread: current_thread_name() };
            self.record.lock().unwrap_or_else(PoisonError::into_inner).1 = Some(by);
            self.poisoned.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// The memory is allocated again (a new object: its identity is forgotten too).
    pub fn unpoison(&self) {
        #[cfg(any(debug_assertions, gmem_loom))]
        {
            self.poisoned.store(false, std::sync::atomic::Ordering::Release);
            *self.record.lock().unwrap_or_else(PoisonError::into_inner) = (None, None);
        }
    }

    /// Whether the memory is freed (always false in release builds).
    pub fn is_poisoned(&self) -> bool {
        #[cfg(any(debug_assertions, gmem_loom))]
        return self.poisoned.load(std::sync::atomic::Ordering::Acquire);
        #[cfg(not(any(debug_assertions, gmem_loom)))]
        false
    }

    /// The check of an access: panics if the memory is freed, with the report naming the object
    /// (`what` gets its last identity), the accessor's call site and thread, and the free.
    #[inline]
    #[track_caller]
    pub fn check(&self, what: impl FnOnce(Option<&T>) -> String) {
        #[cfg(any(debug_assertions, gmem_loom))]
        if self.poisoned.load(std::sync::atomic::Ordering::Acquire) {
            let record = self.record.lock().unwrap_or_else(PoisonError::into_inner);
            if let (identity, Some(by)) = &*record {
                let (what, by) = (what(identity.as_ref()), by.clone());
                drop(record);
                use_after_free(&what, Location::caller(), &by);
            }
        }
        #[cfg(not(any(debug_assertions, gmem_loom)))]
        let _ = what;
    }
}

/// Panics with the use-after-free report: the object, the reader, and the free.
#[cold]
#[inline(never)]
pub fn use_after_free(what: &str, reader: &'static Location<'static>, freed_by: &FreedBy) -> ! {
    panic!(
        "use-after-free: {what} is read at {reader} (thread {}) after it was freed at {freed_by}",
        current_thread_name()
    )
}

/// Freed objects held back from the system allocator in checked builds, so that a stale
/// reader meets a [`FreeMark`] instead of freed memory: a FIFO of at most `capacity` objects
/// (the oldest is really freed when a new one comes in), emptied when the quarantine is dropped.
/// In release builds [`Quarantine::retire`] frees at once.
pub struct Quarantine<T> {
    capacity: usize,
    retired: StdMutex<VecDeque<Box<T>>>,
}

impl<T> fmt::Debug for Quarantine<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Quarantine").field("capacity", &self.capacity).field("held", &self.len()).finish()
    }
}

impl<T> Quarantine<T> {
    /// An empty quarantine holding at most `capacity` objects.
    pub fn new(capacity: usize) -> Quarantine<T> {
        Quarantine { capacity, retired: StdMutex::new(VecDeque::new()) }
    }

    /// Takes a freed object (its [`FreeMark`] already set by the caller): kept in checked
    /// builds, dropped at once otherwise.
    pub fn retire(&self, object: Box<T>) {
        if !CHECKED || self.capacity == 0 {
            drop(object);
            return;
        }
        let oldest = {
            let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
            retired.push_back(object);
            (retired.len() > self.capacity).then(|| retired.pop_front()).flatten()
        };
        // Dropped outside the lock: its destructor may do anything.
        drop(oldest);
    }

    /// How many freed objects are held.
    pub fn len(&self) -> usize {
        self.retired.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Whether no freed object is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A switch a test sets to break the model on purpose (before the threads it concerns start).
/// A `std` atomic also under loom, so that reading it is no scheduling point: the models that
/// never set it explore exactly the states they did without it.
#[derive(Debug, Default)]
pub struct TestSwitch(std::sync::atomic::AtomicU8);

impl TestSwitch {
    /// Off (0).
    pub const fn new() -> TestSwitch {
        TestSwitch(std::sync::atomic::AtomicU8::new(0))
    }

    /// Sets the value (0 is off).
    pub fn set(&self, value: u8) {
        self.0.store(value, std::sync::atomic::Ordering::Relaxed);
    }

    /// The value.
    #[inline]
    pub fn get(&self) -> u8 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(all(test, not(gmem_loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_live_mark_passes_the_check() {
        let mark = FreeMark::live();
        mark.check(|| unreachable!("only called on a use-after-free"));
        assert!(mark.freed_by().is_none());
    }

    #[cfg(debug_assertions)]
    #[test]
    fn a_freed_mark_names_the_object_the_reader_and_the_free() {
        let mark = FreeMark::live();
        mark.mark_freed(|| "object 7".into());
        let freed_line = line!() - 1;
        let by = mark.freed_by().expect("marked").clone();
        assert_eq!(by.at.line(), freed_line);
        let panic = std::panic::catch_unwind(|| mark.check(|| "object 7".into())).expect_err("a use-after-free");
        let message = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(message.starts_with("use-after-free: object 7 is read at "), "{message}");
        assert!(message.contains(file!()), "the reader's call site: {message}");
        assert!(message.contains(&format!("freed at {}", by.at)), "the free's call site: {message}");
        let double = std::panic::catch_unwind(|| mark.mark_freed(|| "object 7".into())).expect_err("a double free");
        assert!(double.downcast_ref::<String>().expect("a message").starts_with("double free: object 7"));
    }

    #[cfg(debug_assertions)]
    #[test]
    fn the_quarantine_is_a_bounded_fifo() {
        struct Counted(std::sync::Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Counted {
            fn drop(&mut self) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let drops = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let quarantine = Quarantine::new(2);
        for _ in 0..3 {
            quarantine.retire(Box::new(Counted(drops.clone())));
        }
        assert_eq!(quarantine.len(), 2);
        assert_eq!(drops.load(std::sync::atomic::Ordering::Relaxed), 1, "the oldest was freed");
        drop(quarantine);
        assert_eq!(drops.load(std::sync::atomic::Ordering::Relaxed), 3, "the rest go with the quarantine");
    }
}
