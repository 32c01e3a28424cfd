//! `SLAB_TYPESAFE_BY_RCU`-style storage with generation-checked handles.
//!
//! Kernel objects such as memslots are referenced by raw pointers from other structures (a
//! guest_memfd's `bindings` xarray points at `struct kvm_memory_slot`). When a bug frees the
//! object while a pointer remains (F1, F2 of upstream-fixes.md), the kernel has a use-after-free
//! that only KASAN sees. The model keeps such objects in a [`Slab`]: storage is never returned to
//! the system while the slab lives, and each [`SlabHandle`] carries the generation of the object it
//! was made for. Dereferencing a handle whose object was freed is therefore *detected*
//! ([`Stale`]) instead of being undefined behaviour, and the caller can record the KASAN-style
//! report the kernel would have printed.

use gmem_sync::atomic::{AtomicPtr, AtomicU32, Ordering};
use gmem_sync::{LockClass, Mutex};
use std::fmt;
use std::marker::PhantomData;

/// Objects per chunk. Small under loom: a chunk's objects (and their atomics) are created
/// eagerly, and loom tracks every atomic of every execution.
#[cfg(not(gmem_loom))]
const CHUNK_OBJECTS: u32 = 64;
#[cfg(gmem_loom)]
const CHUNK_OBJECTS: u32 = 4;
/// Chunk pointers, all created with the slab. Under loom each is a tracked atomic, and a model
/// needs a handful of objects, not 256Ki.
#[cfg(not(gmem_loom))]
const MAX_CHUNKS: u32 = 4096;
#[cfg(gmem_loom)]
const MAX_CHUNKS: u32 = 16;
/// Generations use 30 bits so a packed handle fits the xarray's 62-bit values.
const GENERATION_MASK: u32 = (1 << 30) - 1;

static SLAB_LOCK: LockClass = LockClass::new("slab->lock");

/// Objects a slab can hold: storage that can be reinitialised in place (interior mutability),
/// because a freed object's memory is reused for the next allocation.
pub trait SlabObject: Send + Sync {
    /// A blank object, used when a chunk is first allocated.
    fn blank() -> Self;
}

/// A reference to one incarnation of a slab object.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlabHandle {
    index: u32,
    generation: u32,
}

impl SlabHandle {
    /// Packs the handle into 62 bits (for storage in an xarray).
    pub fn to_raw(self) -> u64 {
        ((self.index as u64) << 30) | self.generation as u64
    }

    /// The inverse of [`SlabHandle::to_raw`].
    pub fn from_raw(raw: u64) -> SlabHandle {
        SlabHandle { index: (raw >> 30) as u32, generation: (raw as u32) & GENERATION_MASK }
    }

    /// The storage index (stable across incarnations; for diagnostics).
    pub fn index(self) -> u32 {
        self.index
    }
}

impl fmt::Debug for SlabHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.index, self.generation)
    }
}

/// The handle's object has been freed (a use-after-free in the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stale {
    /// The handle that was used.
    pub handle: SlabHandle,
    /// The generation the storage has now (odd: live as another object, even: free).
    pub current_generation: u32,
}

struct Entry<T> {
    /// Odd while the object is live, even while free; +1 on every allocation and free.
    generation: AtomicU32,
    object: T,
}

struct Chunk<T> {
    entries: Box<[Entry<T>]>,
}

#[derive(Debug, Default)]
struct Pool {
    free: Vec<u32>,
    next_fresh: u32,
}

/// A typesafe slab of `T`.
#[doc(alias = "SLAB_TYPESAFE_BY_RCU")]
pub struct Slab<T: SlabObject> {
    name: &'static str,
    chunks: Box<[AtomicPtr<Chunk<T>>]>,
    pool: Mutex<Pool>,
    _marker: PhantomData<T>,
}

impl<T: SlabObject> fmt::Debug for Slab<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slab").field("name", &self.name).finish()
    }
}

impl<T: SlabObject> Slab<T> {
    /// An empty slab (the name appears in use-after-free reports).
    pub fn new(name: &'static str) -> Slab<T> {
        Slab {
            name,
            chunks: (0..MAX_CHUNKS).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect(),
            pool: Mutex::new(&SLAB_LOCK, Pool::default()),
            _marker: PhantomData,
        }
    }

    /// The slab's name (`kmem_cache` name).
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn entry(&self, index: u32) -> &Entry<T> {
        let chunk = self.chunks[(index / CHUNK_OBJECTS) as usize].load(Ordering::Acquire);
        assert!(!chunk.is_null(), "slab {} index {index} never allocated", self.name);
        // SAFETY: chunks are published once and freed only in Drop.
        let chunk = unsafe { &*chunk };
        &chunk.entries[(index % CHUNK_OBJECTS) as usize]
    }

    /// `kmem_cache_alloc`: a new incarnation. The caller initialises the object through its
    /// interior mutability before publishing the handle anywhere.
    pub fn alloc(&self) -> (SlabHandle, &T) {
        let index = {
            let mut pool = self.pool.lock();
            match pool.free.pop() {
                Some(index) => index,
                None => {
                    let index = pool.next_fresh;
                    assert!(index < MAX_CHUNKS * CHUNK_OBJECTS, "slab {} exhausted", self.name);
                    pool.next_fresh += 1;
                    let slot = &self.chunks[(index / CHUNK_OBJECTS) as usize];
                    if slot.load(Ordering::Acquire).is_null() {
                        let entries = (0..CHUNK_OBJECTS)
                            .map(|_| Entry { generation: AtomicU32::new(0), object: T::blank() })
                            .collect();
                        slot.store(Box::into_raw(Box::new(Chunk { entries })), Ordering::Release);
                    }
                    index
                }
            }
        };
        let entry = self.entry(index);
        let generation = (entry.generation.fetch_add(1, Ordering::AcqRel) + 1) & GENERATION_MASK;
        debug_assert!(generation % 2 == 1);
        (SlabHandle { index, generation }, &entry.object)
    }

    /// `kfree`: ends this incarnation. Errors if the handle is already stale (a double free).
    pub fn free(&self, handle: SlabHandle) -> Result<(), Stale> {
        let entry = self.entry(handle.index);
        entry
            .generation
            .compare_exchange(handle.generation, handle.generation + 1, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|current| Stale { handle, current_generation: current })?;
        self.pool.lock().free.push(handle.index);
        Ok(())
    }

    /// Dereferences a handle, failing if its object has been freed.
    pub fn get(&self, handle: SlabHandle) -> Result<&T, Stale> {
        let entry = self.entry(handle.index);
        let current = entry.generation.load(Ordering::Acquire) & GENERATION_MASK;
        if current == handle.generation {
            Ok(&entry.object)
        } else {
            Err(Stale { handle, current_generation: current })
        }
    }

    /// The storage a handle points at, whatever its generation: what a kernel use-after-free
    /// reads or writes (the freed object's old contents, or a newer object that reused it).
    /// Only for modelling such accesses after they have been reported.
    pub fn get_storage(&self, handle: SlabHandle) -> &T {
        &self.entry(handle.index).object
    }

    /// The storage of a handle's object that was freed and not reused since: its contents are
    /// still the freed object's (a free does not clear it), which lets a report name what the
    /// stale handle referred to. `None` if the object is live or its storage was reused.
    pub fn freed_storage(&self, handle: SlabHandle) -> Option<&T> {
        let entry = self.entry(handle.index);
        let current = entry.generation.load(Ordering::Acquire) & GENERATION_MASK;
        (current == (handle.generation + 1) & GENERATION_MASK).then_some(&entry.object)
    }

    /// Whether the handle's object is still live.
    pub fn is_live(&self, handle: SlabHandle) -> bool {
        self.get(handle).is_ok()
    }
}

impl<T: SlabObject> Drop for Slab<T> {
    fn drop(&mut self) {
        for slot in self.chunks.iter() {
            let chunk = slot.load(Ordering::Acquire);
            if !chunk.is_null() {
                // SAFETY: `&mut self`: nobody can hold a reference; made by Box::into_raw.
                drop(unsafe { Box::from_raw(chunk) });
            }
        }
    }
}

impl crate::xarray::XaValue for SlabHandle {
    fn to_raw(self) -> u64 {
        SlabHandle::to_raw(self)
    }

    fn from_raw(raw: u64) -> Self {
        SlabHandle::from_raw(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmem_sync::atomic::AtomicU64;

    struct Obj(AtomicU64);
    impl SlabObject for Obj {
        fn blank() -> Self {
            Obj(AtomicU64::new(0))
        }
    }

    /// Runs a test body directly, or inside a loom model under `--cfg gmem_loom` (loom objects,
    /// such as the slab's atomics, can only be created inside a model).
    fn check(f: impl Fn() + Send + Sync + 'static) {
        #[cfg(gmem_loom)]
        gmem_sync::model::model(f);
        #[cfg(not(gmem_loom))]
        f();
    }

    #[test]
    fn stale_handles_are_detected() {
        check(stale_handles_body);
    }

    fn stale_handles_body() {
        let slab: Slab<Obj> = Slab::new("test");
        let (first, obj) = slab.alloc();
        obj.0.store(7, Ordering::Relaxed);
        assert_eq!(slab.get(first).unwrap().0.load(Ordering::Relaxed), 7);
        slab.free(first).unwrap();
        assert!(slab.get(first).is_err());
        assert!(slab.free(first).is_err(), "double free is detected");
        assert_eq!(
            slab.freed_storage(first).map(|obj| obj.0.load(Ordering::Relaxed)),
            Some(7),
            "a freed, not yet reused object keeps its contents"
        );
        let (second, _) = slab.alloc();
        assert_eq!(second.index(), first.index(), "storage is reused");
        assert!(slab.get(first).is_err(), "the old handle stays stale after reuse");
        assert!(slab.get(second).is_ok());
        assert!(slab.freed_storage(first).is_none(), "reused storage is no longer the freed object's");
        assert!(slab.freed_storage(second).is_none(), "a live object is not freed storage");
        assert_eq!(SlabHandle::from_raw(second.to_raw()), second);
        assert!(second.to_raw() < 1 << 62);
    }
}
