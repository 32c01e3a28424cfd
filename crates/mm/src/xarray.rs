//! The XArray: a model of the kernel's `lib/xarray.c` (and `include/linux/xarray.h`), the radix
//! tree that backs the page cache (`i_pages`) and guest_memfd's `bindings` array.
//!
//! # What is modelled
//!
//! * **Shape.** A 64-way radix tree (`XA_CHUNK_SHIFT` = 6). Every node has a `shift` (0 for a
//!   leaf, 6, 12, ... 60 above it); a slot of a node of shift `s` covers `1 << s` indices. The
//!   root grows (`xas_expand()`) when an index beyond its range is stored.
//! * **Lock-free readers.** [`XArray::load`], [`XArray::find`], [`XArray::find_after`] and the
//!   iterators take no lock, as the kernel's run under `rcu_read_lock()` only. Writers serialise
//!   on the `xa_lock` ([`Mutex`] of class `"xa_lock"`). A new node is fully initialised before
//!   the Release store that links it; readers load with Acquire.
//! * **Multi-index entries.** [`XArray::store_range`] (`xa_store_range()`) decomposes `[first,
//!   last]` exactly as the kernel's loop does: `do { xas_set_range(); xas_store(); first +=
//!   xas_size(); } while (first <= last)`, where `xas_set_range()` picks a larger shift while
//!   `first` is aligned to the next chunk and sets `sibs` so that a piece neither passes `last`
//!   nor the end of its node. Each piece is one *canonical* entry in a slot of the node whose
//!   shift is the piece's, plus `sibs` sibling slots that refer to it. The consequences callers
//!   observe are reproduced, including the odd ones:
//!   - iteration ([`find`](XArray::find), [`find_after`](XArray::find_after),
//!     [`for_each_range`](XArray::for_each_range)) visits each canonical entry once, so a range
//!     stored with `store_range` is visited once per decomposed piece;
//!   - a store of one index inside a multi-index entry replaces the entry at *all* its indices
//!     (the siblings keep referring to the canonical slot, which now holds the new entry), and
//!     erasing one index erases the whole entry; a range piece that meets a larger entry on its
//!     way down replaces (or erases) that whole entry and advances by one slot only
//!     (`xas_store()` resets `xa_sibs` to 0 there);
//!   - a piece whose first slot is a sibling starts at that sibling's canonical slot instead
//!     (`xas_descend()` follows the sibling before `xas_store()` writes), and the sibling slots
//!     of an overwritten canonical entry that lie past the piece keep referring to it, so the
//!     new entry grows to cover them. This can leave indices of the requested range untouched,
//!     exactly as in the kernel (see the `kernel_quirk_*` tests).
//! * **Finding.** `xa_find(XA_PRESENT)`: if `*index` lies inside an entry, that entry is returned
//!   and `*index` is unchanged; otherwise `*index` becomes the first index of the next canonical
//!   entry. `xa_find_after()` continues after the end of the entry containing `*index`.
//! * **Allocation failure.** Node allocations consult [`FaultPoint::AllocXarray`]; a failing
//!   [`store`](XArray::store) or [`insert`](XArray::insert) returns `ENOMEM` and changes nothing
//!   (all nodes a store needs are allocated before the tree is touched). [`erase`](XArray::erase)
//!   and NULL stores never allocate.
//! * **`xa_insert()`** ([`XArray::insert`]): `EBUSY` if an entry is present at the index.
//!
//! # What is not modelled
//!
//! Marks (`xa_set_mark()`, `XA_MARK_*`, `xas_find_marked()`), `xa_alloc()` and
//! `XA_FLAGS_ALLOC`, `XA_ZERO_ENTRY` / `xa_reserve()` (so `xa_insert()` of NULL), `xa_cmpxchg()`,
//! `xas_split()`, pointer entries (only 62-bit value entries, see [`XaValue`]), retry entries,
//! the workingset `xa_update_node_t` callbacks, and the freeing of nodes while the array lives:
//! `xas_delete_node()` and `xas_shrink()` are not run, so empty nodes stay linked and the tree
//! never gets shorter. None of this changes what a caller can observe through this API: an
//! empty node behaves as the NULL slot the kernel would have left (the property test checks the
//! array against a model of the kernel's rules that has no such nodes). Also not modelled: the
//! `xas_nomem()` retry (an injected allocation failure is final) and the kernel's
//! preallocation of the path to `last` in `xa_store_range()` (its only effect is on which
//! allocation fails first).
//!
//! # Deviations from the kernel
//!
//! * An entry at index 0 is kept in a leaf, never directly in `xa_head`.
//! * Index arithmetic is exact up to `u64::MAX`. In the kernel, `first += xas_size(&xas)` in
//!   `xa_store_range()` wraps to 0 when a piece ends at `ULONG_MAX`, so the loop starts again
//!   from index 0 (and for `[0, ULONG_MAX]`, whose single piece has a size of `1 << 64`, it never
//!   ends). The model stops at the end of the index space, and stores `[0, u64::MAX]` as one
//!   entry at shift 60 with 15 siblings.
//! * Sibling slots carry an era number next to the canonical offset (see below).
//!
//! # Memory and reader safety
//!
//! Readers never free anything, and writers never free a node either: nodes that a writer
//! unlinks (a subtree replaced by a multi-index entry, or the whole tree at
//! [`destroy`](XArray::destroy)) go to a retired list that is freed only when the `XArray` is
//! dropped. Dropping needs `&mut self`, so no reader can be inside the tree then; until then
//! every node a reader can reach stays allocated, and an unlinked node keeps the contents it had
//! when it was unlinked, so a reader that is still inside it sees the tree as it was just before
//! the writer's change, which is what an RCU reader of the kernel sees. This replaces RCU's grace
//! periods. The cost is memory: the live tree has at most one node per level for each aligned
//! block of `64 << shift` indices ever touched (empty nodes are kept), and the retired list
//! grows only by subtrees replaced by a multi-index entry and by `destroy`, so memory is bounded
//! by the nodes ever allocated, that is by the indices ever touched, plus the subtrees rebuilt
//! after being replaced or destroyed. Callers that destroy and refill an array in a loop should
//! create a new array instead.
//!
//! A lock-free reader that meets a sibling slot reads the canonical slot afterwards; meanwhile a
//! writer may have erased the entry and stored an unrelated entry at the canonical slot. The
//! kernel leaves this to its callers (the page cache revalidates with `xas_reload()`); the model
//! closes the window instead: each slot has an era counter that a writer bumps (after the clear)
//! whenever it empties the slot, and a sibling records the era of the slot it refers to. A
//! reader whose sibling's era no longer matches returns "empty", which is what the index held
//! at the moment the entry was erased, so every value a reader returns was stored at that index.

use std::fmt;
use std::marker::PhantomData;

use gmem_sync::atomic::{AtomicU64, Ordering};
use gmem_sync::inject::{FaultInjector, FaultPoint};
use gmem_sync::{Arc, LockClass, Mutex};

use crate::errno::{Errno, KResult};

/// The lock class of every xarray's `xa_lock`.
static XA_LOCK: LockClass = LockClass::new("xa_lock");

/// `XA_CHUNK_SHIFT`.
const XA_CHUNK_SHIFT: u32 = 6;
/// `XA_CHUNK_SIZE`: slots per node.
const XA_CHUNK_SIZE: usize = 1 << XA_CHUNK_SHIFT;
/// `XA_CHUNK_MASK`.
const XA_CHUNK_MASK: u64 = XA_CHUNK_SIZE as u64 - 1;
/// The largest node shift: a node of shift 60 covers every `u64` index.
const XA_MAX_SHIFT: u32 = 60;
/// Number of levels (shifts 0, 6, ..., 60): bounds every descent.
const XA_MAX_HEIGHT: usize = (XA_MAX_SHIFT / XA_CHUNK_SHIFT) as usize + 1;

/// Raw values must be below this (they are stored shifted left by 2).
const RAW_LIMIT: u64 = 1 << 62;

// Slot words: 0 is empty; tag 00 (non-zero) is a node pointer; tag 10 is a value `raw << 2`;
// tag 01 is a sibling `((era << 6) | canonical_offset) << 2`.
const TAG_MASK: u64 = 0b11;
const TAG_NODE: u64 = 0b00;
const TAG_SIBLING: u64 = 0b01;
const TAG_VALUE: u64 = 0b10;
/// Era bits kept in a sibling word.
const ERA_MASK: u64 = (1 << 56) - 1;

/// What an xarray can hold: a `Copy` value with a raw encoding below `1 << 62` (the kernel's
/// value entries, `xa_mk_value()`, have 63 bits; two are kept here for the slot tag). Zero is an
/// ordinary value: absence is `None`, never a special raw value.
pub trait XaValue: Copy {
    /// The raw encoding; must be below `1 << 62`.
    fn to_raw(self) -> u64;
    /// Decodes what [`to_raw`](XaValue::to_raw) produced.
    fn from_raw(raw: u64) -> Self;
}

impl XaValue for u64 {
    /// Panics if `self >= 1 << 62`.
    fn to_raw(self) -> u64 {
        assert!(self < RAW_LIMIT, "xarray value {self:#x} does not fit in 62 bits");
        self
    }

    fn from_raw(raw: u64) -> Self {
        raw
    }
}

impl XaValue for u32 {
    fn to_raw(self) -> u64 {
        u64::from(self)
    }

    fn from_raw(raw: u64) -> Self {
        raw as u32
    }
}

/// `struct xa_node`. `shift` is written before the node is published and never changes.
#[repr(C, align(8))]
struct Node {
    shift: u8,
    slots: [AtomicU64; XA_CHUNK_SIZE],
    /// Era of each slot: bumped every time the slot is emptied (see the module docs).
    eras: [AtomicU64; XA_CHUNK_SIZE],
}

impl Node {
    fn boxed() -> Box<Node> {
        Box::new(Node {
            shift: 0,
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
            eras: std::array::from_fn(|_| AtomicU64::new(0)),
        })
    }
}

/// Nodes allocated for one store before the tree is touched. Boxed one by one: each node is
/// its own allocation, whose address is published in the tree.
#[allow(clippy::vec_box)]
type NodePool = Vec<Box<Node>>;

/// A decoded slot word.
#[derive(Clone, Copy)]
enum Slot<'a> {
    Empty,
    Node(&'a Node),
    Value(u64),
    Sibling { offset: usize, era: u64 },
}

fn mk_value(raw: u64) -> u64 {
    debug_assert!(raw < RAW_LIMIT);
    (raw << 2) | TAG_VALUE
}

fn mk_sibling(offset: usize, era: u64) -> u64 {
    ((((era & ERA_MASK) << XA_CHUNK_SHIFT) | offset as u64) << 2) | TAG_SIBLING
}

fn is_value(word: u64) -> bool {
    word & TAG_MASK == TAG_VALUE
}

fn is_sibling(word: u64) -> bool {
    word & TAG_MASK == TAG_SIBLING
}

fn is_node(word: u64) -> bool {
    word != 0 && word & TAG_MASK == TAG_NODE
}

/// The slot of `index` in a node of shift `shift` (`get_offset()`).
fn offset_of(index: u64, shift: u32) -> usize {
    ((index >> shift) & XA_CHUNK_MASK) as usize
}

/// The kernel's `xas_set_range()`: the (shift, sibs) of the piece of `[first, last]` that starts
/// at `first`. Computed in `u128` where the kernel's `unsigned long` could overflow; the results
/// are the kernel's for every range whose pieces do not end at `ULONG_MAX + 1`.
fn xas_set_range(first: u64, last: u64) -> (u32, u32) {
    debug_assert!(first <= last);
    let mut shift = 0u32;
    let mut sibs: u64 = last - first;
    let mut offset: u64 = XA_CHUNK_MASK;
    let mut first_chunk = first;

    // Terminates: `sibs` loses 6 bits per round and the loop stops once it is below 63, so
    // `shift` ends at 60 at most.
    while first_chunk & XA_CHUNK_MASK == 0 {
        if sibs < XA_CHUNK_MASK {
            break;
        }
        if sibs == XA_CHUNK_MASK && offset < XA_CHUNK_MASK {
            break;
        }
        shift += XA_CHUNK_SHIFT;
        if offset == XA_CHUNK_MASK {
            offset = sibs & XA_CHUNK_MASK;
        }
        sibs >>= XA_CHUNK_SHIFT;
        first_chunk >>= XA_CHUNK_SHIFT;
    }

    offset = first_chunk & XA_CHUNK_MASK;
    if offset + sibs > XA_CHUNK_MASK {
        sibs = XA_CHUNK_MASK - offset;
    }
    let piece_end = ((u128::from(first_chunk) + u128::from(sibs) + 1) << shift) - 1;
    if piece_end > u128::from(last) {
        debug_assert!(sibs > 0);
        sibs -= 1;
    }
    (shift, sibs as u32)
}

/// Writer-side state, under the `xa_lock`.
#[derive(Default)]
struct Writer {
    /// Roots of subtrees unlinked from the tree, as exposed addresses. Freed by `Drop` only.
    retired: Vec<usize>,
}

/// Where a NULL store lands (`xas_load()` with `xa_shift` set).
enum Target<'a> {
    /// Empty array, or index beyond the tree: `xas_store()` does nothing.
    Nothing,
    /// The piece's shift is above the root's: the piece covers the whole tree.
    Everything,
    /// A slot (canonical, after following siblings) and its current word.
    Slot(&'a Node, usize, u64),
}

/// Result of scanning a subtree for the first canonical entry.
enum Scan {
    Found(u64, u64),
    Exhausted,
    PastMax,
}

/// `struct xarray`: a sparse array of [`XaValue`]s indexed by `u64`, with lock-free readers.
/// See the [module documentation](self).
pub struct XArray<V: XaValue> {
    /// `xa_head`: 0 or a node word.
    head: AtomicU64,
    /// Number of canonical entries (value slots) in the live tree.
    count: AtomicU64,
    lock: Mutex<Writer>,
    injector: Option<Arc<FaultInjector>>,
    _values: PhantomData<V>,
}

impl<V: XaValue> Default for XArray<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: XaValue> fmt::Debug for XArray<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let root_shift = match self.decode(self.head.load(Ordering::Acquire)) {
            Slot::Node(node) => Some(node.shift),
            _ => None,
        };
        f.debug_struct("XArray")
            .field("entries", &self.entry_count())
            .field("root_shift", &root_shift)
            .finish_non_exhaustive()
    }
}

impl<V: XaValue> XArray<V> {
    /// An empty array whose node allocations never fail (`DEFINE_XARRAY`).
    pub fn new() -> Self {
        Self::build(None)
    }

    /// An empty array whose node allocations consult [`FaultPoint::AllocXarray`] of `injector`
    /// and fail with `ENOMEM` when it fires.
    pub fn with_injector(injector: Arc<FaultInjector>) -> Self {
        Self::build(Some(injector))
    }

    fn build(injector: Option<Arc<FaultInjector>>) -> Self {
        XArray {
            head: AtomicU64::new(0),
            count: AtomicU64::new(0),
            lock: Mutex::new(&XA_LOCK, Writer::default()),
            injector,
            _values: PhantomData,
        }
    }

    /// Decodes a slot word read from this array (its head or a slot of one of its nodes).
    fn decode(&self, word: u64) -> Slot<'_> {
        if word == 0 {
            return Slot::Empty;
        }
        match word & TAG_MASK {
            TAG_NODE => {
                let node = std::ptr::with_exposed_provenance::<Node>(word as usize);
                // SAFETY: node words are only made by `alloc_node` from `Box::into_raw` of a node
                // owned by this array, whose address it exposed; every word decoded here was read
                // from this array's head or nodes, or was just returned by `alloc_node`. Nodes are
                // freed only in `Drop`, which needs `&mut self`, so the node outlives the `&self`
                // borrow the result is tied to. It was fully initialised before the Release store
                // that published the word, and the word was read with Acquire (or under the
                // `xa_lock`); afterwards only its atomics change.
                Slot::Node(unsafe { &*node })
            }
            TAG_VALUE => Slot::Value(word >> 2),
            TAG_SIBLING => {
                Slot::Sibling { offset: ((word >> 2) & XA_CHUNK_MASK) as usize, era: word >> (2 + XA_CHUNK_SHIFT) }
            }
            _ => unreachable!("xarray: corrupt slot word {word:#x}"),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Readers: no lock.

    /// `xa_load()`: the entry at `index`, lock-free.
    ///
    /// This is on every page-cache lookup, so the common words (a value, an empty slot, a node
    /// to descend into) are told apart by their tag directly; siblings (and corrupt words) go
    /// through `decode`.
    #[inline]
    #[doc(alias = "xa_load")]
    pub fn load(&self, index: u64) -> Option<V> {
        let Slot::Node(mut node) = self.decode(self.head.load(Ordering::Acquire)) else {
            return None;
        };
        if index >> u32::from(node.shift) > XA_CHUNK_MASK {
            // Beyond the root's range.
            return None;
        }
        for _ in 0..XA_MAX_HEIGHT {
            let shift = u32::from(node.shift);
            let offset = offset_of(index, shift);
            let word = node.slots[offset].load(Ordering::Acquire);
            if word & TAG_MASK == TAG_VALUE {
                return Some(V::from_raw(word >> 2));
            }
            if word == 0 || (is_node(word) && shift == 0) {
                return None;
            }
            match self.decode(word) {
                Slot::Node(child) => node = child,
                Slot::Sibling { offset: target, era } => {
                    return self.resolve_sibling(node, offset, target, era).map(V::from_raw)
                }
                Slot::Empty | Slot::Value(_) => unreachable!("xarray: handled above"),
            }
        }
        None
    }

    /// Follows a sibling read at `from` (referring to `target` of era `era`) to the raw value of
    /// its canonical entry; `None` if the entry was erased meanwhile (see the module docs).
    fn resolve_sibling(&self, node: &Node, mut from: usize, mut target: usize, mut era: u64) -> Option<u64> {
        // Siblings refer to lower offsets, so a chain has fewer than 64 links.
        for _ in 0..XA_CHUNK_SIZE {
            if target >= from {
                return None;
            }
            let word = node.slots[target].load(Ordering::Acquire);
            if node.eras[target].load(Ordering::Acquire) & ERA_MASK != era {
                return None;
            }
            match self.decode(word) {
                Slot::Value(raw) => return Some(raw),
                Slot::Sibling { offset, era: next_era } => {
                    from = target;
                    target = offset;
                    era = next_era;
                }
                Slot::Empty | Slot::Node(_) => return None,
            }
        }
        None
    }

    /// The first canonical entry whose first index is in `[lo, max]`.
    fn find_first(&self, lo: u64, max: u64) -> Option<(u64, V)> {
        if lo > max {
            return None;
        }
        let Slot::Node(root) = self.decode(self.head.load(Ordering::Acquire)) else {
            return None;
        };
        match self.scan(root, 0, u128::from(lo), u128::from(max), XA_MAX_HEIGHT) {
            Scan::Found(index, raw) => Some((index, V::from_raw(raw))),
            Scan::Exhausted | Scan::PastMax => None,
        }
    }

    /// Scans the subtree of `node` (covering indices from `base`) in index order. Recursion is
    /// bounded by the tree height (`depth`).
    fn scan(&self, node: &Node, base: u128, lo: u128, max: u128, depth: usize) -> Scan {
        let shift = u32::from(node.shift);
        let start = if lo > base { ((lo - base) >> shift).min(XA_CHUNK_SIZE as u128) as usize } else { 0 };
        for (offset, slot) in node.slots.iter().enumerate().skip(start) {
            let slot_start = base + ((offset as u128) << shift);
            if slot_start > max {
                return Scan::PastMax;
            }
            match self.decode(slot.load(Ordering::Acquire)) {
                Slot::Empty | Slot::Sibling { .. } => {}
                Slot::Value(raw) => {
                    if slot_start >= lo {
                        return Scan::Found(slot_start as u64, raw);
                    }
                }
                Slot::Node(child) => {
                    if depth == 0 || shift == 0 || u32::from(child.shift) + XA_CHUNK_SHIFT != shift {
                        debug_assert!(false, "xarray: malformed tree");
                        continue;
                    }
                    match self.scan(child, slot_start, lo, max, depth - 1) {
                        Scan::Exhausted => {}
                        found_or_past => return found_or_past,
                    }
                }
            }
        }
        Scan::Exhausted
    }

    /// `xa_find(xa, index, max, XA_PRESENT)`: the first entry present at an index in
    /// `[*index, max]`. If `*index` lies inside a (multi-index) entry, that entry is returned and
    /// `*index` is unchanged; otherwise `*index` becomes the first index of the entry found.
    #[doc(alias = "xa_find")]
    pub fn find(&self, index: &mut u64, max: u64) -> Option<V> {
        if *index > max {
            return None;
        }
        if let Some(value) = self.load(*index) {
            return Some(value);
        }
        let (first, value) = self.find_first(*index, max)?;
        *index = first;
        Some(value)
    }

    /// `xa_find_after(xa, index, max, XA_PRESENT)`: the first entry that starts after the end of
    /// the entry containing `*index` (after `*index` if none does) and at or before `max`;
    /// `*index` becomes its first index.
    #[doc(alias = "xa_find_after")]
    pub fn find_after(&self, index: &mut u64, max: u64) -> Option<V> {
        let lo = index.checked_add(1)?;
        let (first, value) = self.find_first(lo, max)?;
        *index = first;
        Some(value)
    }

    /// `xa_for_each_range()`: calls `f(index, entry)` once per canonical entry present in
    /// `[first, last]`, in index order; `index` is `first` for an entry that starts before
    /// `first`, else the entry's first index. No lock is held while `f` runs.
    #[doc(alias = "xa_for_each_range")]
    pub fn for_each_range(&self, first: u64, last: u64, mut f: impl FnMut(u64, V)) {
        let mut index = first;
        let mut entry = self.find(&mut index, last);
        while let Some(value) = entry {
            f(index, value);
            entry = self.find_after(&mut index, last);
        }
    }

    /// `xa_for_each()`: [`for_each_range`](Self::for_each_range) over every index.
    #[doc(alias = "xa_for_each")]
    pub fn for_each(&self, f: impl FnMut(u64, V)) {
        self.for_each_range(0, u64::MAX, f);
    }

    /// `xa_empty()`: no entry is present.
    #[doc(alias = "xa_empty")]
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// Number of canonical entries (a multi-index piece counts once).
    pub fn entry_count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    // -----------------------------------------------------------------------------------------
    // Writers: under the xa_lock.

    /// `xa_store()` (`value` is `Some`) or `xa_erase()` (`None`): returns the entry that was at
    /// `index`. Storing inside a multi-index entry replaces it at all its indices; erasing
    /// inside one erases all of it. `ENOMEM` (injected) leaves the array unchanged.
    #[doc(alias = "xa_store")]
    pub fn store(&self, index: u64, value: Option<V>) -> KResult<Option<V>> {
        let Some(value) = value else {
            return Ok(self.erase(index));
        };
        let word = mk_value(value.to_raw());
        let mut writer = self.lock.lock();
        let (old, _) = self.store_piece(&mut writer, index, 0, 0, word)?;
        Ok(self.value_of(old))
    }

    /// `xa_insert()`: stores `value` at `index` only if no entry is present there. `EBUSY` if
    /// one is (also when `index` lies inside a multi-index entry), `ENOMEM` (injected) if a node
    /// could not be allocated; either way the array is unchanged. (The page cache's
    /// `__filemap_add_folio()` reports the same conflict as `EEXIST`: that translation is the
    /// caller's.)
    #[doc(alias = "xa_insert")]
    pub fn insert(&self, index: u64, value: V) -> KResult<()> {
        let word = mk_value(value.to_raw());
        let mut writer = self.lock.lock();
        if self.load(index).is_some() {
            return Err(Errno::EBUSY);
        }
        self.store_piece(&mut writer, index, 0, 0, word)?;
        Ok(())
    }

    /// `xa_erase()`: removes the entry at `index` (all of it if it is a multi-index entry) and
    /// returns it. Never allocates, never fails.
    #[doc(alias = "xa_erase")]
    pub fn erase(&self, index: u64) -> Option<V> {
        let mut writer = self.lock.lock();
        let (old, _) = self.erase_piece(&mut writer, index, 0, 0);
        self.value_of(old)
    }

    /// `xa_store_range()`: stores `value` (or erases, for `None`) at every index of `[first,
    /// last]`, as the kernel's decomposition into multi-index pieces does (see the module docs
    /// for the pieces' semantics). `EINVAL` if `first > last`. An injected `ENOMEM` stops the
    /// loop at the piece that could not be stored: earlier pieces stay stored, as in the kernel
    /// once `xas_nomem()` fails too.
    #[doc(alias = "xa_store_range")]
    pub fn store_range(&self, first: u64, last: u64, value: Option<V>) -> KResult<()> {
        if first > last {
            return Err(Errno::EINVAL);
        }
        let word = value.map_or(0, |v| mk_value(v.to_raw()));
        let mut writer = self.lock.lock();
        let mut index = u128::from(first);
        // Terminates: every piece advances `index` by at least one.
        while index <= u128::from(last) {
            let (shift, sibs) = xas_set_range(index as u64, last);
            let (_, sibs) = if word == 0 {
                self.erase_piece(&mut writer, index as u64, shift, sibs)
            } else {
                self.store_piece(&mut writer, index as u64, shift, sibs, word)?
            };
            index += (u128::from(sibs) + 1) << shift;
        }
        Ok(())
    }

    /// `xa_destroy()`: erases every entry. The nodes are retired, not freed (module docs).
    #[doc(alias = "xa_destroy")]
    pub fn destroy(&self) {
        let mut writer = self.lock.lock();
        let head = self.head.load(Ordering::Relaxed);
        if head != 0 {
            self.head.store(0, Ordering::Release);
            self.retire(&mut writer, head);
        }
        debug_assert_eq!(self.count.load(Ordering::Relaxed), 0);
        self.count.store(0, Ordering::Release);
    }

    fn value_of(&self, word: u64) -> Option<V> {
        match self.decode(word) {
            Slot::Value(raw) => Some(V::from_raw(raw)),
            _ => None,
        }
    }

    /// Reads slot `offset` of `node` under the lock, following siblings to the canonical slot
    /// (`xas_descend()`). Returns the canonical offset and its word.
    fn follow_locked(&self, node: &Node, mut offset: usize) -> (usize, u64) {
        let mut word = node.slots[offset].load(Ordering::Relaxed);
        for _ in 0..XA_CHUNK_SIZE {
            let Slot::Sibling { offset: target, era } = self.decode(word) else {
                break;
            };
            debug_assert!(target < offset, "xarray: sibling refers forwards");
            debug_assert_eq!(
                node.eras[target].load(Ordering::Relaxed) & ERA_MASK,
                era,
                "xarray: stale sibling in the live tree"
            );
            offset = target;
            word = node.slots[offset].load(Ordering::Relaxed);
        }
        (offset, word)
    }

    /// The root shift needed to hold a piece of shift `order` at `index` (`xas_expand()`).
    fn required_shift(index: u64, order: u32) -> u32 {
        let mut shift = 0;
        while shift < XA_MAX_SHIFT && index >> shift > XA_CHUNK_MASK {
            shift += XA_CHUNK_SHIFT;
        }
        shift.max(order)
    }

    /// How many nodes `create` will allocate for a piece of shift `order` at `index`.
    fn nodes_needed(&self, index: u64, order: u32) -> usize {
        let need = Self::required_shift(index, order);
        let levels = |from: u32| ((from - order) / XA_CHUNK_SHIFT) as usize;
        let Slot::Node(root) = self.decode(self.head.load(Ordering::Relaxed)) else {
            return levels(need) + 1;
        };
        let root_shift = u32::from(root.shift);
        let mut count = 0;
        if need > root_shift {
            count += ((need - root_shift) / XA_CHUNK_SHIFT) as usize;
            // Walk down the new top nodes: slot 0 leads to the old root, any other slot is empty.
            let mut level = need;
            while level > root_shift {
                if level == order || offset_of(index, level) != 0 {
                    return count + levels(level);
                }
                level -= XA_CHUNK_SHIFT;
            }
        }
        let mut node = root;
        for _ in 0..XA_MAX_HEIGHT {
            let shift = u32::from(node.shift);
            if shift <= order {
                break;
            }
            let (_, word) = self.follow_locked(node, offset_of(index, shift));
            match self.decode(word) {
                Slot::Empty => return count + levels(shift),
                Slot::Node(child) => node = child,
                // A larger entry: the store replaces it, nothing to allocate.
                Slot::Value(_) | Slot::Sibling { .. } => break,
            }
        }
        count
    }

    /// Allocates `n` nodes, each allocation consulting the fault injector.
    fn alloc_nodes(&self, n: usize) -> KResult<NodePool> {
        let mut pool = Vec::with_capacity(n);
        for _ in 0..n {
            if let Some(injector) = &self.injector {
                if injector.should_fail(FaultPoint::AllocXarray) {
                    // The nodes in `pool` were never published: dropping them frees them.
                    return Err(Errno::ENOMEM);
                }
            }
            pool.push(Node::boxed());
        }
        Ok(pool)
    }

    /// Takes a node of shift `shift` from `pool` and returns its (not yet published) word.
    fn alloc_node(pool: &mut NodePool, shift: u32) -> u64 {
        let mut node = pool.pop().unwrap_or_else(|| {
            debug_assert!(false, "xarray: allocation plan too small");
            Node::boxed()
        });
        node.shift = shift as u8;
        Box::into_raw(node).expose_provenance() as u64
    }

    /// `xas_create()`: makes the tree tall enough and creates the path down to the node of
    /// shift `order` that holds `index`, unless a larger entry is met on the way. Returns that
    /// node, the canonical offset and its current word.
    fn create(&self, pool: &mut NodePool, index: u64, order: u32) -> (&Node, usize, u64) {
        let need = Self::required_shift(index, order);
        let mut head = self.head.load(Ordering::Relaxed);
        match self.decode(head) {
            Slot::Node(root) => {
                let mut shift = u32::from(root.shift);
                while shift < need {
                    shift += XA_CHUNK_SHIFT;
                    let word = Self::alloc_node(pool, shift);
                    let Slot::Node(top) = self.decode(word) else { unreachable!() };
                    top.slots[0].store(head, Ordering::Relaxed);
                    // Publishes the fully initialised node.
                    self.head.store(word, Ordering::Release);
                    head = word;
                }
            }
            _ => {
                head = Self::alloc_node(pool, need);
                self.head.store(head, Ordering::Release);
            }
        }
        let Slot::Node(mut node) = self.decode(head) else { unreachable!() };
        for _ in 0..XA_MAX_HEIGHT {
            let shift = u32::from(node.shift);
            let (offset, word) = self.follow_locked(node, offset_of(index, shift));
            if shift == order {
                return (node, offset, word);
            }
            match self.decode(word) {
                Slot::Empty => {
                    let child = Self::alloc_node(pool, shift - XA_CHUNK_SHIFT);
                    node.slots[offset].store(child, Ordering::Release);
                    let Slot::Node(child) = self.decode(child) else { unreachable!() };
                    node = child;
                }
                Slot::Node(child) => node = child,
                Slot::Value(_) | Slot::Sibling { .. } => return (node, offset, word),
            }
        }
        unreachable!("xarray: descent deeper than the tree height")
    }

    /// `xas_load()` for a piece of shift `order` at `index` (used by NULL stores).
    fn locate(&self, index: u64, order: u32) -> Target<'_> {
        let Slot::Node(root) = self.decode(self.head.load(Ordering::Relaxed)) else {
            return Target::Nothing;
        };
        let root_shift = u32::from(root.shift);
        if index >> root_shift > XA_CHUNK_MASK {
            return Target::Nothing;
        }
        if order > root_shift {
            return Target::Everything;
        }
        let mut node = root;
        for _ in 0..XA_MAX_HEIGHT {
            let shift = u32::from(node.shift);
            let (offset, word) = self.follow_locked(node, offset_of(index, shift));
            if shift == order {
                return Target::Slot(node, offset, word);
            }
            match self.decode(word) {
                Slot::Node(child) => node = child,
                _ => return Target::Slot(node, offset, word),
            }
        }
        unreachable!("xarray: descent deeper than the tree height")
    }

    /// `xas_store()` of a non-NULL `word` for a piece (`order`, `sibs`) at `index`. Returns the
    /// kernel's `first` (the old canonical word) and the piece's `xa_sibs` after the store.
    fn store_piece(&self, writer: &mut Writer, index: u64, order: u32, sibs: u32, word: u64) -> KResult<(u64, u32)> {
        debug_assert!(is_value(word));
        let mut pool = self.alloc_nodes(self.nodes_needed(index, order))?;
        let (node, offset, first) = self.create(&mut pool, index, order);
        debug_assert!(pool.is_empty(), "xarray: allocation plan too large");
        Ok(self.store_at(writer, node, offset, first, order, sibs, word))
    }

    /// `xas_store(NULL)` for a piece (`order`, `sibs`) at `index`; same results as
    /// [`store_piece`](Self::store_piece).
    fn erase_piece(&self, writer: &mut Writer, index: u64, order: u32, sibs: u32) -> (u64, u32) {
        match self.locate(index, order) {
            Target::Nothing => (0, sibs),
            Target::Everything => {
                let head = self.head.load(Ordering::Relaxed);
                self.head.store(0, Ordering::Release);
                self.retire(writer, head);
                (head, sibs)
            }
            Target::Slot(node, offset, first) => self.store_at(writer, node, offset, first, order, sibs, 0),
        }
    }

    /// The slot-writing loop of `xas_store()`, from canonical `offset` of `node` whose word is
    /// `first`.
    #[allow(clippy::too_many_arguments)]
    fn store_at(
        &self,
        writer: &mut Writer,
        node: &Node,
        offset: usize,
        mut first: u64,
        order: u32,
        sibs: u32,
        entry: u64,
    ) -> (u64, u32) {
        let shift = u32::from(node.shift);
        // A piece that stopped at a larger entry replaces that one entry only.
        let sibs = if order < shift { 0 } else { sibs };
        if first == entry && sibs == 0 {
            return (first, sibs);
        }
        let max = offset + sibs as usize;
        debug_assert!(max < XA_CHUNK_SIZE);
        let mut slot = offset;
        let mut word = entry;
        let mut next = first;
        loop {
            self.write_slot(writer, node, slot, next, word);
            if word != 0 {
                if slot == max {
                    break;
                }
                if !is_sibling(word) {
                    word = mk_sibling(offset, node.eras[offset].load(Ordering::Relaxed));
                }
            } else if slot == XA_CHUNK_SIZE - 1 {
                break;
            }
            slot += 1;
            next = node.slots[slot].load(Ordering::Relaxed);
            if !is_sibling(next) {
                if word == 0 && slot > max {
                    break;
                }
                first = next;
            }
        }
        (first, sibs)
    }

    /// Replaces `old` by `new` in slot `slot` of `node`, with the bookkeeping: entry count, the
    /// slot's era, and retiring a replaced subtree.
    fn write_slot(&self, writer: &mut Writer, node: &Node, slot: usize, old: u64, new: u64) {
        node.slots[slot].store(new, Ordering::Release);
        if new == 0 && old != 0 {
            // After the clear: a reader that sees a later word of this slot sees the new era.
            let era = node.eras[slot].load(Ordering::Relaxed);
            node.eras[slot].store(era.wrapping_add(1), Ordering::Release);
        }
        if is_value(old) {
            self.count.fetch_sub(1, Ordering::Release);
        }
        if is_value(new) {
            self.count.fetch_add(1, Ordering::Release);
        }
        if is_node(old) && node.shift > 0 {
            self.retire(writer, old);
        }
    }

    /// Moves an unlinked subtree to the retired list and uncounts its entries.
    fn retire(&self, writer: &mut Writer, word: u64) {
        let Slot::Node(node) = self.decode(word) else {
            return;
        };
        let entries = self.count_entries(node, XA_MAX_HEIGHT);
        self.count.fetch_sub(entries, Ordering::Release);
        writer.retired.push(word as usize);
    }

    fn count_entries(&self, node: &Node, depth: usize) -> u64 {
        let mut total = 0;
        for slot in &node.slots {
            match self.decode(slot.load(Ordering::Relaxed)) {
                Slot::Value(_) => total += 1,
                Slot::Node(child) if depth > 0 && node.shift > 0 => {
                    total += self.count_entries(child, depth - 1);
                }
                _ => {}
            }
        }
        total
    }
}

impl<V: XaValue> Drop for XArray<V> {
    fn drop(&mut self) {
        let retired = std::mem::take(&mut self.lock.get_mut().retired);
        free_subtree(self.head.load(Ordering::Relaxed) as usize, XA_MAX_HEIGHT);
        for root in retired {
            free_subtree(root, XA_MAX_HEIGHT);
        }
    }
}

/// Frees the node at exposed address `addr` and every node below it.
fn free_subtree(addr: usize, depth: usize) {
    if addr == 0 {
        return;
    }
    // SAFETY: `addr` is the exposed address of a node leaked by `alloc_node` and reachable
    // exactly once from the head or the retired list (a subtree is unlinked before it is
    // retired, and the head's tree and the retired subtrees are disjoint). `Drop` has exclusive
    // access, so no reader holds a reference into it.
    let node = unsafe { Box::from_raw(std::ptr::with_exposed_provenance_mut::<Node>(addr)) };
    if node.shift > 0 && depth > 0 {
        for slot in &node.slots {
            let word = slot.load(Ordering::Relaxed);
            if is_node(word) {
                free_subtree(word as usize, depth - 1);
            }
        }
    }
}

#[cfg(all(test, not(gmem_loom)))]
mod tests {
    use std::collections::BTreeMap;

    use gmem_sync::atomic::AtomicBool;
    use proptest::prelude::*;

    use super::*;

    const MAX: u64 = u64::MAX;

    /// The kernel's `xa_store_range()` loop on an empty array: (first, shift, sibs) per piece.
    fn pieces(first: u64, last: u64) -> Vec<(u64, u32, u32)> {
        let mut out = Vec::new();
        let mut index = u128::from(first);
        while index <= u128::from(last) {
            let (shift, sibs) = xas_set_range(index as u64, last);
            out.push((index as u64, shift, sibs));
            index += (u128::from(sibs) + 1) << shift;
        }
        out
    }

    impl<V: XaValue> XArray<V> {
        /// (first, last, shift, raw) of every canonical entry in index order, checking the
        /// tree's invariants on the way.
        fn entries(&self) -> Vec<(u64, u64, u32, u64)> {
            let _writer = self.lock.lock();
            let mut out = Vec::new();
            if let Slot::Node(root) = self.decode(self.head.load(Ordering::Relaxed)) {
                self.walk(root, 0, XA_MAX_HEIGHT, &mut out);
            }
            assert_eq!(self.entry_count(), out.len() as u64, "entry count drifted");
            out
        }

        fn walk(&self, node: &Node, base: u128, depth: usize, out: &mut Vec<(u64, u64, u32, u64)>) {
            assert!(depth > 0, "tree too tall");
            let shift = u32::from(node.shift);
            let span = 1u128 << shift;
            let mut offset = 0;
            while offset < XA_CHUNK_SIZE {
                let word = node.slots[offset].load(Ordering::Relaxed);
                match self.decode(word) {
                    Slot::Empty => offset += 1,
                    Slot::Sibling { .. } => panic!("sibling at {offset} follows no entry"),
                    Slot::Node(child) => {
                        assert!(shift > 0 && u32::from(child.shift) + XA_CHUNK_SHIFT == shift);
                        self.walk(child, base + offset as u128 * span, depth - 1, out);
                        offset += 1;
                    }
                    Slot::Value(raw) => {
                        let mut end = offset;
                        while end + 1 < XA_CHUNK_SIZE && is_sibling(node.slots[end + 1].load(Ordering::Relaxed)) {
                            end += 1;
                            assert_eq!(self.follow_locked(node, end).0, offset);
                        }
                        let first = base + offset as u128 * span;
                        let last = base + (end as u128 + 1) * span - 1;
                        assert!(last <= u128::from(MAX));
                        out.push((first as u64, last as u64, shift, raw));
                        offset = end + 1;
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Decomposition

    #[test]
    fn set_range_matches_the_kernel_by_hand() {
        // first aligned, 64 indices: one entry of shift 6 (sibs 63 becomes shift 6, sibs 0).
        assert_eq!(pieces(0, 63), [(0, 6, 0)]);
        // Unaligned start: the rest of the first leaf, then the head of the next one.
        assert_eq!(pieces(1, 100), [(1, 0, 62), (64, 0, 36)]);
        // 64..4159: 63 slots of shift 6 up to 4095, then one shift-6 slot at 4096.
        assert_eq!(pieces(64, 64 + 4095), [(64, 6, 62), (4096, 6, 0)]);
        // 0..4094: the `sibs == 63 && offset < 63` stop, then the "one too many" correction.
        assert_eq!(pieces(0, 4094), [(0, 6, 62), (4032, 0, 62)]);
        assert_eq!(pieces(0, 4095), [(0, 12, 0)]);
        assert_eq!(pieces(0, 8191), [(0, 12, 1)]);
        assert_eq!(pieces(5, 5), [(5, 0, 0)]);
        assert_eq!(pieces(62, 65), [(62, 0, 1), (64, 0, 1)]);
        // The top of the index space (where the kernel's `first +=` would wrap).
        assert_eq!(pieces(MAX - 63, MAX), [(MAX - 63, 6, 0)]);
        assert_eq!(pieces(MAX, MAX), [(MAX, 0, 0)]);
        assert_eq!(pieces(0, MAX), [(0, 60, 15)]);
        assert_eq!(pieces(1 << 60, MAX), [(1 << 60, 60, 14)]);
    }

    #[test]
    fn decomposition_tiles_every_range() {
        let mut ranges = Vec::new();
        for first in 0..300u64 {
            for last in first..300 {
                ranges.push((first, last));
            }
        }
        for &(a, b) in &[(0u64, 1u64 << 20), (3, 1 << 20), (4096, 4096 * 65), (1, MAX), (0, MAX - 1)] {
            ranges.push((a, b));
        }
        for k in 0..200u64 {
            ranges.push((MAX - k * 37, MAX));
            ranges.push((MAX - (k << 14), MAX - k));
        }
        for (first, last) in ranges {
            let mut next = u128::from(first);
            for (index, shift, sibs) in pieces(first, last) {
                assert_eq!(u128::from(index), next, "gap in {first}..={last}");
                assert!(shift <= XA_MAX_SHIFT && shift % XA_CHUNK_SHIFT == 0);
                assert_eq!(index % (1u64 << shift), 0, "unaligned piece");
                assert!(offset_of(index, shift) + (sibs as usize) < XA_CHUNK_SIZE);
                next = u128::from(index) + ((u128::from(sibs) + 1) << shift);
            }
            assert_eq!(next, u128::from(last) + 1, "pieces of {first}..={last} overrun");
        }
    }

    // ---------------------------------------------------------------------------------------
    // Single-index operations

    #[test]
    fn store_load_erase() {
        let xa = XArray::<u64>::new();
        assert!(xa.is_empty());
        assert_eq!(xa.load(0), None);
        assert_eq!(xa.store(0, Some(10)), Ok(None));
        assert_eq!(xa.store(7, Some(0)), Ok(None), "zero is an ordinary value");
        assert_eq!(xa.store(1 << 40, Some(30)), Ok(None));
        assert_eq!(xa.load(0), Some(10));
        assert_eq!(xa.load(7), Some(0));
        assert_eq!(xa.load(1 << 40), Some(30));
        assert_eq!(xa.load(1), None);
        assert_eq!(xa.load((1 << 40) + 1), None);
        assert_eq!(xa.load(MAX), None);
        assert_eq!(xa.entry_count(), 3);
        assert_eq!(xa.store(0, Some(11)), Ok(Some(10)));
        assert_eq!(xa.store(7, None), Ok(Some(0)));
        assert_eq!(xa.erase(7), None);
        assert_eq!(xa.erase(1 << 40), Some(30));
        assert_eq!(xa.erase(0), Some(11));
        assert!(xa.is_empty());
        assert_eq!(xa.entries(), []);
        assert!(format!("{xa:?}").contains("entries: 0"));
    }

    #[test]
    fn insert_only_into_empty_indices() {
        let injector = Arc::new(FaultInjector::new());
        let xa = XArray::<u64>::with_injector(Arc::clone(&injector));
        assert_eq!(xa.insert(3, 1), Ok(()));
        assert_eq!(xa.insert(3, 2), Err(Errno::EBUSY));
        assert_eq!(xa.load(3), Some(1));
        xa.store_range(64, 127, Some(5)).unwrap();
        assert_eq!(xa.insert(100, 2), Err(Errno::EBUSY), "inside a multi-index entry");
        injector.arm(FaultPoint::AllocXarray, 0, 1);
        assert_eq!(xa.insert(1 << 40, 2), Err(Errno::ENOMEM));
        assert_eq!(xa.entries(), [(3, 3, 0, 1), (64, 127, 6, 5)]);
        assert_eq!(xa.insert(1 << 40, 2), Ok(()));
        assert_eq!(xa.load(1 << 40), Some(2));
    }

    #[test]
    #[should_panic(expected = "does not fit in 62 bits")]
    fn oversized_value_panics() {
        let xa = XArray::<u64>::new();
        let _ = xa.store(0, Some(1 << 62));
    }

    // ---------------------------------------------------------------------------------------
    // Multi-index entries

    #[test]
    fn store_inside_multi_index_entry_replaces_it_everywhere() {
        let xa = XArray::<u64>::new();
        // Shift-6 entry.
        xa.store_range(64, 127, Some(1)).unwrap();
        assert_eq!(xa.entries(), [(64, 127, 6, 1)]);
        assert_eq!(xa.store(100, Some(2)), Ok(Some(1)));
        assert_eq!(xa.entries(), [(64, 127, 6, 2)]);
        assert!((64..128).all(|i| xa.load(i) == Some(2)));
        assert_eq!(xa.load(63), None);
        assert_eq!(xa.load(128), None);
        // Leaf entry with siblings.
        xa.store_range(4, 11, Some(3)).unwrap();
        assert_eq!(xa.store(11, Some(4)), Ok(Some(3)));
        assert!((4..12).all(|i| xa.load(i) == Some(4)));
        assert_eq!(xa.entry_count(), 2);
        // Shift-12 entry, replaced from a single index.
        xa.store_range(1 << 20, (1 << 20) + 4095, Some(5)).unwrap();
        assert_eq!(xa.store((1 << 20) + 4000, Some(6)), Ok(Some(5)));
        assert_eq!(xa.load(1 << 20), Some(6));
        assert_eq!(xa.load((1 << 20) + 4095), Some(6));
        assert_eq!(xa.entry_count(), 3);
    }

    #[test]
    fn erase_inside_multi_index_entry_erases_it_all() {
        let xa = XArray::<u64>::new();
        xa.store_range(4, 11, Some(3)).unwrap();
        xa.store_range(64, 127, Some(1)).unwrap();
        xa.store(12, Some(9)).unwrap();
        assert_eq!(xa.erase(7), Some(3));
        assert!((4..12).all(|i| xa.load(i).is_none()));
        assert_eq!(xa.load(12), Some(9));
        assert_eq!(xa.store(127, None), Ok(Some(1)));
        assert!((64..128).all(|i| xa.load(i).is_none()));
        assert_eq!(xa.entries(), [(12, 12, 0, 9)]);
        xa.erase(12);
        assert!(xa.is_empty());
    }

    #[test]
    fn iteration_visits_each_piece_once() {
        let xa = XArray::<u64>::new();
        xa.store_range(1, 100, Some(1)).unwrap();
        let mut seen = Vec::new();
        xa.for_each(|i, v| seen.push((i, v)));
        assert_eq!(seen, [(1, 1), (64, 1)], "one callback per kernel piece");
        assert_eq!(xa.entry_count(), 2);

        seen.clear();
        xa.for_each_range(50, 200, |i, v| seen.push((i, v)));
        assert_eq!(seen, [(50, 1), (64, 1)], "an entry containing `first` is reported at it");

        xa.store_range(64 + 4096, 64 + 4096 + 4095, Some(2)).unwrap();
        seen.clear();
        xa.for_each_range(4096, MAX, |i, v| seen.push((i, v)));
        assert_eq!(seen, [(4160, 2), (8192, 2)]);

        xa.store_range(1 << 32, (1 << 32) + 63, Some(3)).unwrap();
        seen.clear();
        xa.for_each_range(1 << 32, 1 << 33, |i, v| seen.push((i, v)));
        assert_eq!(seen, [(1 << 32, 3)], "64 aligned indices are one entry");

        xa.store_range(101, 101, Some(4)).unwrap();
        seen.clear();
        xa.for_each_range(0, 4095, |i, v| seen.push((i, v)));
        assert_eq!(seen, [(1, 1), (64, 1), (101, 4)]);
    }

    #[test]
    fn find_and_find_after_at_entry_boundaries() {
        let xa = XArray::<u64>::new();
        xa.store_range(8, 15, Some(1)).unwrap();
        xa.store(20, Some(2)).unwrap();
        xa.store_range(128, 255, Some(3)).unwrap();

        let mut index = 10;
        assert_eq!(xa.find(&mut index, MAX), Some(1));
        assert_eq!(index, 10, "inside an entry: index unchanged");
        assert_eq!(xa.find_after(&mut index, MAX), Some(2));
        assert_eq!(index, 20, "find_after skips the rest of 8..=15");
        assert_eq!(xa.find_after(&mut index, MAX), Some(3));
        assert_eq!(index, 128);
        index = 200;
        assert_eq!(xa.find_after(&mut index, MAX), None);

        index = 0;
        assert_eq!(xa.find(&mut index, MAX), Some(1));
        assert_eq!(index, 8);
        index = 15;
        assert_eq!(xa.find(&mut index, 15), Some(1));
        assert_eq!(index, 15);
        index = 16;
        assert_eq!(xa.find(&mut index, 19), None, "next entry starts after max");
        assert_eq!(index, 16);
        assert_eq!(xa.find(&mut index, 20), Some(2));
        assert_eq!(index, 20);
        index = 12;
        assert_eq!(xa.find(&mut index, 11), None, "index > max finds nothing");
        index = 7;
        assert_eq!(xa.find_after(&mut index, 8), Some(1));
        assert_eq!(index, 8);
        index = 8;
        assert_eq!(xa.find_after(&mut index, 19), None);
        index = 21;
        assert_eq!(xa.find(&mut index, 1000), Some(3));
        assert_eq!(index, 128);
    }

    #[test]
    fn indices_near_u64_max() {
        let xa = XArray::<u64>::new();
        xa.store(MAX, Some(1)).unwrap();
        assert_eq!(xa.load(MAX), Some(1));
        assert_eq!(xa.load(MAX - 1), None);
        let mut index = MAX - 5;
        assert_eq!(xa.find(&mut index, MAX), Some(1));
        assert_eq!(index, MAX);
        assert_eq!(xa.find_after(&mut index, MAX), None);
        index = 0;
        assert_eq!(xa.find(&mut index, MAX), Some(1));
        assert_eq!(index, MAX);

        // A range ending at u64::MAX stops there (the kernel's loop would wrap to 0).
        xa.store(0, Some(9)).unwrap();
        xa.store_range(MAX - 63, MAX, Some(2)).unwrap();
        assert_eq!(xa.entries(), [(0, 0, 0, 9), (MAX - 63, MAX, 6, 2)]);
        xa.store_range(MAX - 1000, MAX - 64, Some(3)).unwrap();
        let mut seen = Vec::new();
        xa.for_each_range(1, MAX, |i, v| seen.push((i, v)));
        assert_eq!(seen.last(), Some(&(MAX - 63, 2)));
        assert!(seen[..seen.len() - 1].iter().all(|&(_, v)| v == 3));
        assert_eq!(xa.load(MAX - 1000), Some(3));
        assert_eq!(xa.load(MAX - 1001), None);

        // The whole index space: one entry of shift 60 with 15 siblings.
        xa.store_range(0, MAX, Some(4)).unwrap();
        assert_eq!(xa.entries(), [(0, MAX, 60, 4)]);
        for i in [0, 1, 1 << 59, 1 << 63, MAX - 1, MAX] {
            assert_eq!(xa.load(i), Some(4));
        }
        seen.clear();
        xa.for_each(|i, v| seen.push((i, v)));
        assert_eq!(seen, [(0, 4)]);
        index = 1 << 62;
        assert_eq!(xa.find(&mut index, MAX), Some(4));
        assert_eq!(index, 1 << 62);
        assert_eq!(xa.find_after(&mut index, MAX), None);
        // Erasing a small range inside erases the whole entry.
        xa.store_range(MAX - 10, MAX, None).unwrap();
        assert!(xa.is_empty());
        assert_eq!(xa.load(5), None);
    }

    #[test]
    fn enomem_changes_nothing() {
        let injector = Arc::new(FaultInjector::new());
        let xa = XArray::<u64>::with_injector(Arc::clone(&injector));
        injector.arm(FaultPoint::AllocXarray, 0, 1);
        assert_eq!(xa.store(5, Some(1)), Err(Errno::ENOMEM));
        assert!(xa.is_empty());
        assert_eq!(xa.load(5), None);
        assert_eq!(format!("{xa:?}"), format!("{:?}", XArray::<u64>::new()));

        xa.store(5, Some(1)).unwrap();
        xa.store_range(64, 127, Some(2)).unwrap();
        let before = xa.entries();
        // Storing far away needs 4 expansion nodes (shift 12..=30) and a path of 5 (shift
        // 24..=0): fail each of the 9 allocations in turn, then let them all pass.
        let mut after = 0;
        loop {
            injector.arm(FaultPoint::AllocXarray, after, 1);
            match xa.store(1 << 30, Some(3)) {
                Err(errno) => assert_eq!(errno, Errno::ENOMEM),
                Ok(old) => {
                    assert_eq!(old, None);
                    break;
                }
            }
            assert_eq!(xa.entries(), before, "after {after}");
            assert_eq!(xa.load(1 << 30), None);
            assert_eq!(xa.load(5), Some(1));
            after += 1;
        }
        assert_eq!(after, 9);
        assert_eq!(injector.fired(FaultPoint::AllocXarray), 10);
        assert_eq!(xa.erase(1 << 30), Some(3));
        // Replacing inside an existing entry needs no node: no failure even when armed.
        injector.arm(FaultPoint::AllocXarray, 0, u64::MAX);
        assert_eq!(xa.store(100, Some(4)), Ok(Some(2)));
        assert_eq!(xa.store_range(64, 64, Some(5)), Ok(()));
        // Erasing never allocates.
        assert_eq!(xa.erase(5), Some(1));
        assert_eq!(xa.store_range(0, MAX, None), Ok(()));
        assert!(xa.is_empty());
        // A range fails at the first piece that needs a node; earlier pieces stay (kernel).
        injector.arm(FaultPoint::AllocXarray, 1, u64::MAX);
        assert_eq!(xa.store_range(1, 100, Some(6)), Err(Errno::ENOMEM));
        assert_eq!(xa.load(1), Some(6));
        assert_eq!(xa.load(64), None);
        injector.disarm(FaultPoint::AllocXarray);
        assert_eq!(xa.store(1 << 50, Some(3)), Ok(None));
        assert_eq!(xa.load(1 << 50), Some(3));
    }

    #[test]
    fn destroy_empties_and_the_array_stays_usable() {
        let xa = XArray::<u64>::new();
        xa.store_range(0, 1 << 20, Some(1)).unwrap();
        xa.store(MAX, Some(2)).unwrap();
        assert!(!xa.is_empty());
        xa.destroy();
        assert!(xa.is_empty());
        assert_eq!(xa.entries(), []);
        assert_eq!(xa.load(0), None);
        assert_eq!(xa.load(MAX), None);
        xa.destroy();
        xa.store(3, Some(3)).unwrap();
        assert_eq!(xa.entries(), [(3, 3, 0, 3)]);
        assert!(xa.store_range(5, 4, Some(1)).is_err());
    }

    #[test]
    fn range_piece_meeting_a_larger_entry_replaces_it() {
        let xa = XArray::<u64>::new();
        xa.store_range(0, 4095, Some(1)).unwrap();
        assert_eq!(xa.entries(), [(0, 4095, 12, 1)]);
        xa.store_range(100, 200, Some(2)).unwrap();
        assert_eq!(xa.entries(), [(0, 4095, 12, 2)]);
        // And a NULL range over part of it erases all of it.
        xa.store_range(300, 310, None).unwrap();
        assert!(xa.is_empty());
    }

    #[test]
    fn store_range_replaces_smaller_entries_below() {
        let xa = XArray::<u64>::new();
        for i in (0..4096).step_by(7) {
            xa.store(i, Some(i)).unwrap();
        }
        xa.store_range(4, 9, Some(1)).unwrap();
        xa.store_range(0, 4095, Some(2)).unwrap();
        assert_eq!(xa.entries(), [(0, 4095, 12, 2)]);
        xa.store_range(0, 4095, None).unwrap();
        assert!(xa.is_empty());
    }

    #[test]
    fn kernel_quirk_piece_starts_at_the_canonical_slot() {
        let xa = XArray::<u64>::new();
        xa.store_range(0, 7, Some(1)).unwrap();
        // The piece 4..=10 (sibs 6) lands on the sibling at 4, whose canonical slot is 0: the
        // kernel writes slots 0..=6, slot 7 still refers to 0, and 8..=10 are not stored.
        xa.store_range(4, 10, Some(2)).unwrap();
        assert_eq!(xa.entries(), [(0, 7, 0, 2)]);
        assert_eq!(xa.load(8), None);
        // The same for a NULL range: 0..=6 cleared plus the trailing sibling 7; 8 survives.
        xa.store_range(8, 11, Some(3)).unwrap();
        xa.store_range(4, 10, None).unwrap();
        assert_eq!(xa.entries(), [(8, 11, 0, 3)]);
    }

    #[test]
    fn kernel_quirk_overwritten_canonical_keeps_its_siblings() {
        let xa = XArray::<u64>::new();
        xa.store_range(8, 15, Some(1)).unwrap();
        // 0..=11 overwrites the canonical slot 8 with a sibling; 12..=15 still refer to 8.
        xa.store_range(0, 11, Some(2)).unwrap();
        assert_eq!(xa.entries(), [(0, 15, 0, 2)]);
        assert_eq!(xa.load(15), Some(2));
        assert_eq!(xa.entry_count(), 1);
        let mut seen = Vec::new();
        xa.for_each(|i, v| seen.push((i, v)));
        assert_eq!(seen, [(0, 2)]);
        // Storing the head of a larger entry covers it all.
        xa.store_range(0, 3, Some(3)).unwrap();
        assert_eq!(xa.entries(), [(0, 15, 0, 3)]);
        assert_eq!(xa.erase(14), Some(3));
        assert!(xa.is_empty());
    }

    #[test]
    fn stale_sibling_is_not_followed_into_a_new_entry() {
        // A reader that read a sibling before the entry was erased and a new one stored at the
        // canonical slot: replay it by hand.
        let xa = XArray::<u64>::new();
        xa.store_range(8, 15, Some(1)).unwrap();
        let Slot::Node(leaf) = xa.decode(xa.head.load(Ordering::Acquire)) else { panic!() };
        let stale = leaf.slots[12].load(Ordering::Acquire);
        let Slot::Sibling { offset, era } = xa.decode(stale) else { panic!() };
        assert_eq!(xa.resolve_sibling(leaf, 12, offset, era), Some(1));
        xa.erase(8);
        xa.store(8, Some(2)).unwrap();
        assert_eq!(xa.resolve_sibling(leaf, 12, offset, era), None);
        assert_eq!(xa.load(12), None);
        assert_eq!(xa.load(8), Some(2));
    }

    #[test]
    fn u32_values() {
        let xa = XArray::<u32>::default();
        xa.store(1, Some(u32::MAX)).unwrap();
        assert_eq!(xa.load(1), Some(u32::MAX));
    }

    // ---------------------------------------------------------------------------------------
    // Reference model: entries as intervals with their shift, and the kernel's rules for a
    // piece stated on intervals rather than on slots.

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct ModelEntry {
        last: u64,
        shift: u32,
        value: u64,
    }

    #[derive(Default, Debug)]
    struct Model {
        map: BTreeMap<u64, ModelEntry>,
    }

    impl Model {
        fn containing(&self, index: u64) -> Option<(u64, ModelEntry)> {
            let (&first, &entry) = self.map.range(..=index).next_back()?;
            (entry.last >= index).then_some((first, entry))
        }

        fn intersects(&self, first: u64, last: u64) -> bool {
            self.map.range(..=last).next_back().is_some_and(|(_, e)| e.last >= first)
        }

        /// One `xas_store()` of a piece; returns the old entry at `index` and the piece's sibs
        /// afterwards.
        fn piece(&mut self, index: u64, shift: u32, sibs: u32, value: Option<u64>) -> (Option<u64>, u32) {
            let containing = self.containing(index);
            // A larger entry on the way down: replace or erase all of it, advance one slot.
            if let Some((first, entry)) = containing {
                if entry.shift > shift {
                    match value {
                        Some(v) => self.map.get_mut(&first).unwrap().value = v,
                        None => {
                            self.map.remove(&first);
                        }
                    }
                    return (Some(entry.value), 0);
                }
            }
            // Erasing where the kernel has no node of this shift: nothing, advance one slot.
            let node_span = 64u128 << shift;
            let node_first = u128::from(index) / node_span * node_span;
            let node_last = (node_first + node_span - 1).min(u128::from(MAX));
            if value.is_none() && !self.intersects(node_first as u64, node_last as u64) {
                return (None, 0);
            }
            // The piece starts at the canonical slot of the same-shift entry it lands in.
            let start = match containing {
                Some((first, entry)) if entry.shift == shift => first,
                _ => index,
            };
            let end = (u128::from(start) + ((u128::from(sibs) + 1) << shift) - 1) as u64;
            assert!(
                self.containing(start).is_none_or(|(first, _)| first >= start),
                "model: an entry straddles the piece's start"
            );
            let mut covered = end;
            let doomed: Vec<u64> = self.map.range(start..=end).map(|(&k, _)| k).collect();
            for first in doomed {
                let entry = self.map.remove(&first).unwrap();
                assert!(entry.shift <= shift, "model: larger entry inside a piece");
                if entry.shift == shift {
                    // Its trailing siblings keep referring to the overwritten slot.
                    covered = covered.max(entry.last);
                } else {
                    assert!(entry.last <= end, "model: smaller entry leaves the piece");
                }
            }
            if let Some(value) = value {
                self.map.insert(start, ModelEntry { last: covered, shift, value });
            }
            (containing.map(|(_, e)| e.value), sibs)
        }

        fn store(&mut self, index: u64, value: Option<u64>) -> Option<u64> {
            self.piece(index, 0, 0, value).0
        }

        fn store_range(&mut self, first: u64, last: u64, value: Option<u64>) {
            let mut index = u128::from(first);
            while index <= u128::from(last) {
                let (shift, sibs) = xas_set_range(index as u64, last);
                let (_, sibs) = self.piece(index as u64, shift, sibs, value);
                index += (u128::from(sibs) + 1) << shift;
            }
        }

        fn load(&self, index: u64) -> Option<u64> {
            self.containing(index).map(|(_, e)| e.value)
        }

        fn find(&self, index: &mut u64, max: u64) -> Option<u64> {
            if *index > max {
                return None;
            }
            if let Some(value) = self.load(*index) {
                return Some(value);
            }
            let (&first, entry) = self.map.range(*index..=max).next()?;
            *index = first;
            Some(entry.value)
        }

        fn find_after(&self, index: &mut u64, max: u64) -> Option<u64> {
            let lo = index.checked_add(1)?;
            if lo > max {
                return None;
            }
            let (&first, entry) = self.map.range(lo..=max).next()?;
            *index = first;
            Some(entry.value)
        }

        fn for_each_range(&self, first: u64, last: u64) -> Vec<(u64, u64)> {
            if first > last {
                return Vec::new();
            }
            let mut out = Vec::new();
            if let Some((_, entry)) = self.containing(first) {
                out.push((first, entry.value));
            }
            if first < last {
                for (&start, entry) in self.map.range(first + 1..=last) {
                    out.push((start, entry.value));
                }
            }
            out
        }

        fn entries(&self) -> Vec<(u64, u64, u32, u64)> {
            self.map.iter().map(|(&first, e)| (first, e.last, e.shift, e.value)).collect()
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Store(u64, bool),
        Erase(u64),
        Range(u64, u64, bool),
        Load(u64),
        Find(u64, u64),
        FindAfter(u64, u64),
        Each(u64, u64),
        Destroy,
    }

    fn ops(index: BoxedStrategy<u64>, len: BoxedStrategy<u64>) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (index.clone(), any::<bool>()).prop_map(|(i, some)| Op::Store(i, some)),
            2 => index.clone().prop_map(Op::Erase),
            6 => (index.clone(), len.clone(), prop::bool::weighted(0.7))
                .prop_map(|(i, l, some)| Op::Range(i, i.saturating_add(l), some)),
            2 => index.clone().prop_map(Op::Load),
            2 => (index.clone(), len.clone()).prop_map(|(i, l)| Op::Find(i, i.saturating_add(l))),
            2 => (index.clone(), len.clone())
                .prop_map(|(i, l)| Op::FindAfter(i, i.saturating_add(l))),
            2 => (index, len).prop_map(|(i, l)| Op::Each(i, i.saturating_add(l))),
            1 => Just(Op::Destroy),
        ]
    }

    fn small_ops() -> impl Strategy<Value = Op> {
        ops((0u64..300).boxed(), (0u64..100).boxed())
    }

    fn large_ops() -> impl Strategy<Value = Op> {
        let raw = prop_oneof![
            0u64..(1 << 22),
            (MAX - (1 << 22))..=MAX,
            (1u64 << 40)..(1u64 << 40) + (1 << 22),
            any::<u64>(),
        ];
        let masks = [0u64, 63, 4095, (1 << 18) - 1, (1 << 20) - 1];
        let index = (raw, 0..masks.len()).prop_map(move |(i, m)| i & !masks[m]).boxed();
        let len = prop_oneof![
            0u64..64,
            0u64..(1 << 20),
            Just(63u64),
            Just(4095u64),
            Just((1u64 << 18) - 1),
            Just((1u64 << 20) - 1),
        ]
        .boxed();
        ops(index, len)
    }

    fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let xa = XArray::<u64>::new();
        let mut model = Model::default();
        for (step, op) in ops.iter().enumerate() {
            let value = step as u64 + 1;
            match *op {
                Op::Store(i, some) => {
                    let v = some.then_some(value);
                    prop_assert_eq!(xa.store(i, v), Ok(model.store(i, v)), "{:?}", op);
                }
                Op::Erase(i) => prop_assert_eq!(xa.erase(i), model.store(i, None), "{:?}", op),
                Op::Range(a, b, some) => {
                    let v = some.then_some(value);
                    prop_assert_eq!(xa.store_range(a, b, v), Ok(()));
                    model.store_range(a, b, v);
                }
                Op::Load(i) => prop_assert_eq!(xa.load(i), model.load(i), "{:?}", op),
                Op::Find(i, max) => {
                    let (mut got, mut want) = (i, i);
                    prop_assert_eq!(xa.find(&mut got, max), model.find(&mut want, max), "{:?}", op);
                    prop_assert_eq!(got, want, "{:?}", op);
                }
                Op::FindAfter(i, max) => {
                    let (mut got, mut want) = (i, i);
                    prop_assert_eq!(xa.find_after(&mut got, max), model.find_after(&mut want, max), "{:?}", op);
                    prop_assert_eq!(got, want, "{:?}", op);
                }
                Op::Each(a, b) => {
                    let mut seen = Vec::new();
                    xa.for_each_range(a, b, |i, v| seen.push((i, v)));
                    prop_assert_eq!(seen, model.for_each_range(a, b), "{:?}", op);
                }
                Op::Destroy => {
                    xa.destroy();
                    model.map.clear();
                }
            }
            prop_assert_eq!(xa.entries(), model.entries(), "after step {} {:?}", step, op);
            prop_assert_eq!(xa.is_empty(), model.map.is_empty());
        }
        let mut seen = Vec::new();
        xa.for_each(|i, v| seen.push((i, v)));
        prop_assert_eq!(seen, model.for_each_range(0, MAX));
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn matches_model_on_small_indices(ops in prop::collection::vec(small_ops(), 1..80)) {
            run(ops)?;
        }

        #[test]
        fn matches_model_on_large_indices(ops in prop::collection::vec(large_ops(), 1..40)) {
            run(ops)?;
        }
    }

    // ---------------------------------------------------------------------------------------
    // Lock-free readers against a writer

    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// A value naming the extent of the entry it was stored as.
    fn enc(first: u64, last: u64, seq: u64) -> u64 {
        (first << 38) | (last << 14) | (seq & 0x3fff)
    }

    fn dec(value: u64) -> (u64, u64) {
        (value >> 38, (value >> 14) & ((1 << 24) - 1))
    }

    #[test]
    fn concurrent_readers_see_only_values_stored_at_their_index() {
        const SPACE: u64 = 4096;
        let xa = Arc::new(XArray::<u64>::new());
        let done = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2u64)
            .map(|r| {
                let xa = Arc::clone(&xa);
                let done = Arc::clone(&done);
                gmem_sync::thread::spawn(move || {
                    let mut rng = Rng(0x9e37_79b9 + r);
                    let mut hits = 0u64;
                    while !done.load(Ordering::Acquire) {
                        for _ in 0..64 {
                            let i = rng.below(SPACE + 64);
                            if let Some(v) = xa.load(i) {
                                let (first, last) = dec(v);
                                assert!(first <= i && i <= last, "load({i}) = {first}..={last}");
                                hits += 1;
                            }
                        }
                        let a = rng.below(SPACE);
                        let b = a + rng.below(600);
                        let mut prev: Option<u64> = None;
                        xa.for_each_range(a, b, |i, v| {
                            let (first, last) = dec(v);
                            assert!(first <= i && i <= last && i <= b, "{i}: {first}..={last}");
                            assert_eq!(i, first.max(a));
                            assert!(prev.is_none_or(|p| i > p));
                            prev = Some(i);
                        });
                    }
                    hits
                })
            })
            .collect();

        // The writer knows the extent of every entry (it never stores inside an entry of
        // another extent), so each value's encoded extent is exactly where loads may see it.
        let mut owner: Vec<Option<(u64, u64)>> = vec![None; SPACE as usize];
        let mut rng = Rng(0x2545_f491);
        for seq in 0..30_000u64 {
            match rng.below(10) {
                0..=3 => {
                    let i = rng.below(SPACE);
                    if owner[i as usize].is_none_or(|e| e == (i, i)) {
                        let old = xa.store(i, Some(enc(i, i, seq))).unwrap();
                        assert_eq!(old.map(dec), owner[i as usize]);
                        owner[i as usize] = Some((i, i));
                    }
                }
                4..=5 => {
                    let size = [8u64, 64, 128][rng.below(3) as usize];
                    let first = rng.below(SPACE / size) * size;
                    let last = first + size - 1;
                    if (first..=last).all(|i| owner[i as usize].is_none()) {
                        xa.store_range(first, last, Some(enc(first, last, seq))).unwrap();
                        for i in first..=last {
                            owner[i as usize] = Some((first, last));
                        }
                    }
                }
                _ => {
                    let i = rng.below(SPACE);
                    let old = xa.erase(i);
                    assert_eq!(old.map(dec), owner[i as usize]);
                    if let Some((first, last)) = owner[i as usize] {
                        for j in first..=last {
                            owner[j as usize] = None;
                        }
                    }
                }
            }
            if seq % 1024 == 0 {
                for i in 0..SPACE {
                    assert_eq!(xa.load(i).map(dec), owner[i as usize]);
                }
            }
        }
        done.store(true, Ordering::Release);
        let hits: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
        assert!(hits > 0, "readers never saw an entry");
    }
}
