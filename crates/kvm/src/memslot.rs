//! Memslots: `struct kvm_memory_slot`, SRCU-published generations, and
//! `KVM_SET_USER_MEMORY_REGION2` with the kernel's checks in order (`virt/kvm/kvm_main.c`:
//! `kvm_vm_ioctl_set_memory_region`, `kvm_set_memory_region`, `check_memory_region_flags`,
//! `kvm_set_memslot` and its helpers, `kvm_free_memslot`).
//!
//! A generation ([`Memslots`]) is immutable once published. An update builds the next one under
//! `slots_lock`, publishes it (`kvm_swap_active_memslots`), waits for every SRCU reader of the old
//! one (`synchronize_srcu`), and only then frees what the old one alone referenced. DELETE and
//! MOVE first publish a generation in which the slot is replaced by an INVALID copy and zap its
//! mappings, exactly as the kernel does, so a fault racing with the deletion sees either the
//! live slot, the invalid one (and retries), or none.

use crate::arch::PgLevel;
use crate::guest_memfd::{kvm_gmem_bind, kvm_gmem_unbind};
use crate::profile::{Fix, KernelVersion};
use crate::types::{Gfn, SlotId};
use crate::vm::{Kvm, SLOTS_LOCK};
use gmem_mm::fdtable::FdTable;
use gmem_mm::file::{File, FilePtr};
use gmem_mm::slab::{SlabHandle, SlabObject};
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::vma::access_ok;
use gmem_mm::{Errno, KResult};
use gmem_sync::atomic::{AtomicU32, AtomicU64, Ordering};
use gmem_sync::freed::FreeMark;
use gmem_sync::srcu::SrcuReadGuard;
use gmem_sync::{lockdep_assert_held, warn::WarnKind, LockClass, Mutex};
use std::collections::BTreeSet;
use std::fmt;

/// `KVM_MEM_LOG_DIRTY_PAGES`.
pub const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;
/// `KVM_MEM_READONLY`.
pub const KVM_MEM_READONLY: u32 = 1 << 1;
/// `KVM_MEM_GUEST_MEMFD`.
pub const KVM_MEM_GUEST_MEMFD: u32 = 1 << 2;
/// `KVM_MEMSLOT_INVALID` (internal): the slot is being deleted or moved.
pub const KVM_MEMSLOT_INVALID: u32 = 1 << 16;
/// `KVM_MEMSLOT_GMEM_ONLY` (internal, v6.18): every fault is served from guest_memfd.
pub const KVM_MEMSLOT_GMEM_ONLY: u32 = 1 << 17;

/// `KVM_USER_MEM_SLOTS` on x86 (`KVM_MEM_SLOTS_NUM` minus the three private slots).
pub const KVM_USER_MEM_SLOTS: u32 = 32764;
/// `KVM_MEM_SLOTS_NUM` (`SHRT_MAX`).
pub const KVM_MEM_SLOTS_NUM: u32 = 32767;
/// `KVM_MEM_MAX_NR_PAGES`: `(1UL << 31) - 1`.
pub const KVM_MEM_MAX_NR_PAGES: u64 = (1 << 31) - 1;
/// `kvm_arch_nr_memslot_as_ids`: the model has no SMM address space.
pub const KVM_ADDRESS_SPACE_NUM: u16 = 1;
/// `KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS`.
pub const KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS: u64 = 1 << 63;

/// `KVM_LPAGE_MIXED_FLAG`: the huge range holds gfns with different memory attributes.
pub const KVM_LPAGE_MIXED_FLAG: u32 = 1 << 31;

/// `slot->arch.lpage_info` (model-only lock: the kernel protects the MIXED bits with `mmu_lock`
/// for write and reads them under `mmu_lock`; the lock is a leaf taken for one read or write).
static LPAGE_INFO_LOCK: LockClass = LockClass::new("slot->arch.lpage_info");

/// `disallow_lpage` of one huge level of a slot, kept sparse: the kernel's array has one `u32`
/// per huge page (`__kvm_mmu_slot_lpages`), whose counter part is set only at creation (first and
/// last entry for an unaligned start or end, every entry for a gfn/hva misalignment) and whose
/// `KVM_LPAGE_MIXED_FLAG` bits are few; so the counter is kept as its three causes and the MIXED
/// bits as a set of indices. Write tracking (shadow paging) is not modelled.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LpageLevel {
    /// `__kvm_mmu_slot_lpages`: how many entries the array has.
    pub lpages: u64,
    /// `linfo[0].disallow_lpage = 1`: the slot starts unaligned.
    pub head: bool,
    /// `linfo[lpages - 1].disallow_lpage = 1`: the slot ends unaligned.
    pub tail: bool,
    /// Every entry is 1: the gfn and the hva are misaligned with respect to each other.
    pub all: bool,
    /// The indices whose `KVM_LPAGE_MIXED_FLAG` is set.
    pub mixed: BTreeSet<u64>,
}

impl LpageLevel {
    /// `linfo[index].disallow_lpage`.
    pub fn disallow_lpage(&self, index: u64) -> u32 {
        let counter = self.all || (self.head && index == 0) || (self.tail && index + 1 == self.lpages);
        u32::from(counter) | if self.mixed.contains(&index) { KVM_LPAGE_MIXED_FLAG } else { 0 }
    }
}

/// `slot->arch.lpage_info[level - 2]` for 2M and 1G.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[doc(alias("kvm_lpage_info", "lpage_info_slot"))]
pub struct LpageInfo {
    /// `[2M, 1G]`.
    pub levels: [LpageLevel; 2],
}

/// `gfn_to_index(gfn, base_gfn, level)`.
pub fn gfn_to_index(gfn: Gfn, base_gfn: Gfn, level: PgLevel) -> u64 {
    (gfn.0 >> level.gfn_shift()) - (base_gfn.0 >> level.gfn_shift())
}

/// The arguments of `KVM_SET_USER_MEMORY_REGION2` (`struct kvm_userspace_memory_region2`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserspaceMemoryRegion2 {
    /// `slot`: `(as_id << 16) | id`.
    pub slot: u32,
    /// `flags`.
    pub flags: u32,
    /// `guest_phys_addr`.
    pub guest_phys_addr: u64,
    /// `memory_size`.
    pub memory_size: u64,
    /// `userspace_addr`.
    pub userspace_addr: u64,
    /// `guest_memfd_offset`.
    pub guest_memfd_offset: u64,
    /// `guest_memfd`.
    pub guest_memfd: u32,
}

/// `struct kvm_memory_slot`. All fields are atomics because the storage is reused (see
/// [`gmem_mm::slab`]); a slot's geometry never changes while it is published.
pub struct KvmMemorySlot {
    id: AtomicU32,
    base_gfn: AtomicU64,
    npages: AtomicU64,
    flags: AtomicU32,
    userspace_addr: AtomicU64,
    /// `slot->gmem.file`: not a reference; cleared by unbind or by the file's release.
    pub(crate) gmem_file: FilePtr,
    /// `slot->gmem.pgoff`.
    pub(crate) gmem_pgoff: AtomicU64,
    /// `slot->arch.lpage_info`.
    lpage_info: Mutex<LpageInfo>,
}

impl fmt::Debug for KvmMemorySlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmMemorySlot")
            .field("id", &self.id.load(Ordering::Relaxed))
            .field("base_gfn", &self.base_gfn.load(Ordering::Relaxed))
            .field("npages", &self.npages.load(Ordering::Relaxed))
            .finish()
    }
}

impl SlabObject for KvmMemorySlot {
    fn blank() -> Self {
        KvmMemorySlot {
            id: AtomicU32::new(0),
            base_gfn: AtomicU64::new(0),
            npages: AtomicU64::new(0),
            flags: AtomicU32::new(0),
            userspace_addr: AtomicU64::new(0),
            gmem_file: FilePtr::new(std::ptr::null_mut()),
            gmem_pgoff: AtomicU64::new(0),
            lpage_info: Mutex::new(&LPAGE_INFO_LOCK, LpageInfo::default()),
        }
    }
}

/// A live memslot: its handle (identity) and its storage. Obtained from a generation under SRCU
/// or under `slots_lock`.
#[derive(Clone, Copy)]
pub struct MemslotRef<'a> {
    /// The slot's identity (what guest_memfd's bindings store).
    pub handle: SlabHandle,
    slot: &'a KvmMemorySlot,
}

impl fmt::Debug for MemslotRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Memslot")
            .field("handle", &self.handle)
            .field("id", &self.id())
            .field("base_gfn", &self.base_gfn())
            .field("npages", &self.npages())
            .field("flags", &format_args!("{:#x}", self.flags()))
            .finish()
    }
}

impl<'a> MemslotRef<'a> {
    /// `slot->id` with `as_id`.
    pub fn id(&self) -> SlotId {
        SlotId(self.slot.id.load(Ordering::Relaxed))
    }

    /// `slot->base_gfn`.
    pub fn base_gfn(&self) -> Gfn {
        Gfn(self.slot.base_gfn.load(Ordering::Relaxed))
    }

    /// `slot->npages`.
    pub fn npages(&self) -> u64 {
        self.slot.npages.load(Ordering::Relaxed)
    }

    /// `slot->flags` (user flags plus the internal INVALID / GMEM_ONLY bits).
    pub fn flags(&self) -> u32 {
        self.slot.flags.load(Ordering::Relaxed)
    }

    /// `slot->userspace_addr`.
    pub fn userspace_addr(&self) -> u64 {
        self.slot.userspace_addr.load(Ordering::Relaxed)
    }

    /// `kvm_slot_has_gmem` (`kvm_slot_can_be_private` in v6.14).
    pub fn has_gmem(&self) -> bool {
        self.flags() & KVM_MEM_GUEST_MEMFD != 0
    }

    /// `slot->gmem.file` (a non-owning pointer).
    pub fn gmem_file(&self) -> &'a FilePtr {
        &self.slot.gmem_file
    }

    /// Whether `slot->gmem.file` is NULL.
    pub fn gmem_file_is_null(&self) -> bool {
        self.slot.gmem_file.load(Ordering::Acquire).is_null()
    }

    /// `WRITE_ONCE(slot->gmem.file, file)`.
    pub fn set_gmem_file(&self, file: *mut File) {
        self.slot.gmem_file.store(file, Ordering::Release);
    }

    /// `slot->gmem.pgoff`.
    pub fn gmem_pgoff(&self) -> u64 {
        self.slot.gmem_pgoff.load(Ordering::Relaxed)
    }

    pub(crate) fn set_gmem_pgoff(&self, pgoff: u64) {
        self.slot.gmem_pgoff.store(pgoff, Ordering::Relaxed);
    }

    pub(crate) fn add_flags(&self, flags: u32) {
        self.slot.flags.fetch_or(flags, Ordering::Relaxed);
    }

    /// Whether `gfn` lies in the slot.
    pub fn contains(&self, gfn: Gfn) -> bool {
        gfn >= self.base_gfn() && gfn.0 - self.base_gfn().0 < self.npages()
    }

    /// `lpage_info_slot(gfn, slot, level)->disallow_lpage` (`gfn` inside the slot, `level` 2M or
    /// 1G).
    pub fn disallow_lpage(&self, gfn: Gfn, level: PgLevel) -> u32 {
        let index = gfn_to_index(gfn, self.base_gfn(), level);
        self.slot.lpage_info.lock().levels[level as usize - 2].disallow_lpage(index)
    }

    /// `hugepage_test_mixed(slot, gfn, level)`.
    pub fn hugepage_test_mixed(&self, gfn: Gfn, level: PgLevel) -> bool {
        self.disallow_lpage(gfn, level) & KVM_LPAGE_MIXED_FLAG != 0
    }

    /// `hugepage_set_mixed` / `hugepage_clear_mixed`.
    #[doc(alias = "hugepage_clear_mixed")]
    pub(crate) fn hugepage_set_mixed(&self, gfn: Gfn, level: PgLevel, mixed: bool) {
        let index = gfn_to_index(gfn, self.base_gfn(), level);
        let mut info = self.slot.lpage_info.lock();
        let set = &mut info.levels[level as usize - 2].mixed;
        if mixed {
            set.insert(index);
        } else {
            set.remove(&index);
        }
    }

    /// A copy of `slot->arch.lpage_info`.
    pub fn lpage_info(&self) -> LpageInfo {
        self.slot.lpage_info.lock().clone()
    }

    pub(crate) fn set_lpage_info(&self, info: LpageInfo) {
        *self.slot.lpage_info.lock() = info;
    }

    /// Test-only: flips the `KVM_LPAGE_MIXED_FLAG` of the huge page holding `gfn`, corrupting
    /// the state so that a test can show the M8 checker catches it.
    #[doc(hidden)]
    pub fn corrupt_mixed_flag_for_test(&self, gfn: Gfn, level: PgLevel) {
        let mixed = self.hugepage_test_mixed(gfn, level);
        self.hugepage_set_mixed(gfn, level, !mixed);
    }
}

/// `__kvm_mmu_slot_lpages(slot, npages, level)`.
#[doc(alias = "__kvm_mmu_slot_lpages")]
pub fn kvm_mmu_slot_lpages(base_gfn: u64, npages: u64, level: PgLevel) -> u64 {
    let shift = level.gfn_shift();
    ((base_gfn + npages - 1) >> shift) - (base_gfn >> shift) + 1
}

/// The `lpage_info` part of x86 `kvm_alloc_memslot_metadata`: for each huge level, disallow
/// the first and last huge page when the slot starts or ends unaligned, and every huge page
/// when the gfn and the hva are misaligned with respect to each other. The same in v6.14 and
/// v6.18 (guest_memfd slots included: the hva check applies to them too, their
/// `guest_memfd_offset` is not consulted; a `kvm_should_allow_lpage_for_slot` that would change
/// that belongs to the unmerged guest_memfd-hugetlb series).
#[doc(alias = "kvm_alloc_memslot_metadata")]
pub fn kvm_alloc_lpage_info(base_gfn: u64, npages: u64, userspace_addr: u64) -> LpageInfo {
    let mut info = LpageInfo::default();
    for level in PgLevel::HUGE {
        let linfo = &mut info.levels[level as usize - 2];
        let mask = level.pages() - 1;
        linfo.lpages = kvm_mmu_slot_lpages(base_gfn, npages, level);
        linfo.head = base_gfn & mask != 0;
        linfo.tail = (base_gfn + npages) & mask != 0;
        let ugfn = userspace_addr >> PAGE_SHIFT;
        linfo.all = (base_gfn ^ ugfn) & mask != 0;
    }
    info
}

/// One slot of a generation (its geometry is copied here so lookups do not touch the slab).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemslotEntry {
    /// First gfn.
    pub base_gfn: u64,
    /// Size in pages.
    pub npages: u64,
    /// `(as_id << 16) | id`.
    pub id: u32,
    /// The slot.
    pub handle: SlabHandle,
}

/// `struct kvm_memslots`: one immutable generation (address space 0).
///
/// A generation is reached through a raw pointer (`kvm->memslots[as_id]`) and freed once
/// `synchronize_srcu` has waited out its readers. In checked builds (`gmem_sync::freed`) the
/// freed generation is quarantined and marked, and every accessor below checks the mark, so a
/// reader that outlived the grace period (a dropped `synchronize_srcu`, a reader outside its
/// SRCU section) panics naming the generation and itself instead of reading freed memory.
#[derive(Debug)]
pub struct Memslots {
    /// Written twice per update while readers may look (in progress, then final), as the
    /// kernel's `slots->generation`: hence atomic.
    generation: AtomicU64,
    /// Sorted by `base_gfn`; GPA ranges never overlap.
    entries: Vec<MemslotEntry>,
    /// Live, or freed at a recorded call site (checked builds).
    pub(crate) freed: FreeMark,
}

impl Memslots {
    pub(crate) fn empty(generation: u64) -> Memslots {
        Memslots { generation: AtomicU64::new(generation), entries: Vec::new(), freed: FreeMark::live() }
    }

    /// What a use-after-free report calls this generation: its number (with the "update in
    /// progress" bit spelled out) and address space.
    pub(crate) fn describe(&self) -> String {
        let generation = self.generation.load(Ordering::Relaxed);
        let number = generation & !KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS;
        let in_progress =
            if generation & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS != 0 { ", update in progress" } else { "" };
        format!("memslot generation {number} (as_id 0{in_progress}) at {:p}", self)
    }

    /// The reader's check (see the type's docs): nothing in release builds.
    #[inline]
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    fn check_live(&self) {
        self.freed.check(|| self.describe());
    }

    /// `slots->generation`.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    pub fn generation(&self) -> u64 {
        self.check_live();
        self.generation.load(Ordering::Acquire)
    }

    /// Every slot, by ascending gfn (`kvm_for_each_memslot`). The walk checks the generation
    /// before each step, since a walk does work between steps (scheduling points under loom)
    /// during which a broken protocol could free the generation; a report names the call site
    /// that started the walk.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    pub fn iter(&self) -> MemslotsIter<'_> {
        self.check_live();
        MemslotsIter { slots: self, entries: self.entries.iter(), walker: std::panic::Location::caller() }
    }

    /// `search_memslots`: the slot containing `gfn`.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "search_memslots")]
    pub fn find_gfn(&self, gfn: Gfn) -> Option<&MemslotEntry> {
        self.check_live();
        let index = self.entries.partition_point(|entry| entry.base_gfn <= gfn.0);
        let entry = self.entries.get(index.checked_sub(1)?)?;
        (gfn.0 - entry.base_gfn < entry.npages).then_some(entry)
    }

    /// `id_to_memslot`.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "id_to_memslot")]
    pub fn find_id(&self, id: u32) -> Option<&MemslotEntry> {
        self.check_live();
        self.entries.iter().find(|entry| entry.id == id)
    }

    /// `kvm_check_memslot_overlap`: another slot (different id) intersects `[start, end)`.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "kvm_check_memslot_overlap")]
    fn overlaps(&self, id: u32, start: u64, end: u64) -> bool {
        self.check_live();
        self.entries.iter().any(|entry| entry.id != id && entry.base_gfn < end && start < entry.base_gfn + entry.npages)
    }

    /// `kvm_replace_memslot` on a copy: the next generation with `old` replaced by `new`.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "kvm_replace_memslot")]
    fn replaced(&self, old: Option<SlabHandle>, new: Option<MemslotEntry>) -> Memslots {
        self.check_live();
        let mut entries: Vec<MemslotEntry> =
            self.entries.iter().copied().filter(|entry| Some(entry.handle) != old).collect();
        if let Some(new) = new {
            entries.push(new);
            entries.sort_by_key(|entry| entry.base_gfn);
        }
        Memslots { generation: AtomicU64::new(self.generation()), entries, freed: FreeMark::live() }
    }
}

/// A walk over a generation's slots ([`Memslots::iter`]).
pub struct MemslotsIter<'a> {
    slots: &'a Memslots,
    entries: std::slice::Iter<'a, MemslotEntry>,
    /// Where the walk began (the reader a use-after-free report names).
    walker: &'static std::panic::Location<'static>,
}

impl fmt::Debug for MemslotsIter<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemslotsIter").field("walker", &self.walker).finish_non_exhaustive()
    }
}

impl<'a> Iterator for MemslotsIter<'a> {
    type Item = &'a MemslotEntry;

    fn next(&mut self) -> Option<&'a MemslotEntry> {
        self.slots.freed.check_at(self.walker, || self.slots.describe());
        self.entries.next()
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.entries.size_hint()
    }
}

/// Test-only ways to break the memslot protocol, so that tests and loom models can show that
/// the use-after-free each causes is reported (see [`Kvm::weaken_memslots_for_test`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MemslotWeakening {
    /// The kernel's protocol.
    None = 0,
    /// `kvm_swap_active_memslots` frees the old generation without `synchronize_srcu`: SRCU
    /// readers of it may still be inside it.
    NoSynchronizeBeforeFree = 1,
    /// `kvm_free_memslot` frees a guest_memfd slot without `kvm_gmem_unbind`: its bindings
    /// outlive it.
    NoGmemUnbindOnFree = 2,
}

/// The kind of memslot update (`enum kvm_mr_change`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MrChange {
    /// `KVM_MR_CREATE`.
    Create,
    /// `KVM_MR_DELETE`.
    Delete,
    /// `KVM_MR_MOVE`.
    Move,
    /// `KVM_MR_FLAGS_ONLY`.
    FlagsOnly,
}

/// A published entry's slot was freed under its reader: the report of [`Kvm::memslot`].
#[cold]
#[inline(never)]
#[track_caller]
fn stale_published_slot(entry: &MemslotEntry, storage_generation: u32) -> ! {
    let id = SlotId(entry.id);
    panic!(
        "use-after-free: kvm_memory_slot {:?} (slot id {}, as_id {}, gfns [{:#x}, {:#x})) is read at {} (thread {}) \
         after it was freed (its storage is at generation {storage_generation})",
        entry.handle,
        id.id(),
        id.as_id(),
        entry.base_gfn,
        entry.base_gfn + entry.npages,
        std::panic::Location::caller(),
        gmem_sync::freed::current_thread_name(),
    )
}

impl Kvm {
    /// The active generation. The guard ties the borrow to an SRCU read section (or use
    /// [`Kvm::memslots_locked`] under `slots_lock`).
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    #[doc(alias = "__kvm_memslots")]
    pub fn memslots<'g>(&'g self, _srcu: &'g SrcuReadGuard<'_>) -> &'g Memslots {
        // SAFETY: generations are freed only after synchronize_srcu, which waits for this reader
        // (and in checked builds a freed generation stays allocated in the quarantine, where
        // its accessors report the stale reader).
        let slots = unsafe { &*self.memslots.load(Ordering::Acquire) };
        slots.check_live();
        slots
    }

    /// The active generation, for writers holding `slots_lock` (`__kvm_memslots` with
    /// `lockdep_is_held(&kvm->slots_lock)`).
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    pub fn memslots_locked<'g>(&'g self, _slots_lock: &'g gmem_sync::MutexGuard<'_, ()>) -> &'g Memslots {
        lockdep_assert_held(&SLOTS_LOCK);
        // SAFETY: only slots_lock holders replace and free generations.
        let slots = unsafe { &*self.memslots.load(Ordering::Acquire) };
        slots.check_live();
        slots
    }

    /// Frees a generation no longer published: in checked builds marks it freed here (the
    /// caller's call site) and quarantines it, so a reader still inside it is reported.
    ///
    /// # Safety
    ///
    /// `slots` came from `Box::into_raw`, is no longer published, and is freed only here, once.
    #[track_caller]
    pub(crate) unsafe fn free_memslots(&self, slots: *mut Memslots) {
        // SAFETY: the caller's contract.
        let slots = unsafe { Box::from_raw(slots) };
        slots.freed.mark_freed(|| slots.describe());
        self.retired_memslots.retire(slots);
    }

    /// Test-only: breaks the memslot protocol as `weakening` says ([`MemslotWeakening::None`]
    /// restores the kernel's). Set it before the threads it concerns start.
    #[doc(hidden)]
    pub fn weaken_memslots_for_test(&self, weakening: MemslotWeakening) {
        self.memslot_weakening.set(weakening as u8);
    }

    pub(crate) fn memslot_weakened(&self, weakening: MemslotWeakening) -> bool {
        self.memslot_weakening.get() == weakening as u8
    }

    /// The slot behind an entry of a generation the caller is protecting. The entry's slot
    /// must be live: a freed one means the caller outlived the protection (a use-after-free),
    /// reported naming the slot and the caller.
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    pub fn memslot<'g>(&'g self, entry: &MemslotEntry) -> MemslotRef<'g> {
        match self.slot_slab.get(entry.handle) {
            Ok(slot) => MemslotRef { handle: entry.handle, slot },
            Err(stale) => stale_published_slot(entry, stale.current_generation),
        }
    }

    /// `gfn_to_memslot` (under SRCU).
    #[cfg_attr(any(debug_assertions, gmem_loom), track_caller)]
    pub fn gfn_to_memslot<'g>(&'g self, srcu: &'g SrcuReadGuard<'_>, gfn: Gfn) -> Option<MemslotRef<'g>> {
        let entry = self.memslots(srcu).find_gfn(gfn)?;
        Some(self.memslot(entry))
    }

    /// Dereferences a slot handle that may be stale (a guest_memfd binding): `Err` is the
    /// use-after-free the kernel would have had.
    pub fn memslot_by_handle(&self, handle: SlabHandle) -> Result<MemslotRef<'_>, gmem_mm::slab::Stale> {
        self.slot_slab.get(handle).map(|slot| MemslotRef { handle, slot })
    }

    /// The freed slot a stale handle referred to, while its storage has not been reused (for
    /// reports: its id and range are still the freed slot's).
    pub fn freed_memslot(&self, handle: SlabHandle) -> Option<MemslotRef<'_>> {
        self.slot_slab.freed_storage(handle).map(|slot| MemslotRef { handle, slot })
    }

    /// A memslot handle as the kernel would dereference it, freed or not: for a stale handle the
    /// use-after-free is reported (KASAN-style) and the freed storage is returned, so the access
    /// has the effect it would have in the kernel.
    #[track_caller]
    pub(crate) fn memslot_deref(&self, handle: SlabHandle, function: &str, access: &str) -> MemslotRef<'_> {
        match self.slot_slab.get(handle) {
            Ok(slot) => MemslotRef { handle, slot },
            Err(_) => {
                self.report_slot_use_after_free(function, access, handle);
                MemslotRef { handle, slot: self.slot_slab.get_storage(handle) }
            }
        }
    }

    /// Records the KASAN report the kernel would print for an access to a freed memslot.
    #[track_caller]
    pub(crate) fn report_slot_use_after_free(&self, function: &str, access: &str, handle: SlabHandle) {
        self.machine().warnings.report(
            WarnKind::UseAfterFree,
            format!("BUG: KASAN: slab-use-after-free {access} in {function}: kvm_memory_slot {handle:?} was freed"),
        );
    }

    /// `KVM_SET_USER_MEMORY_REGION2` (`kvm_vm_ioctl_set_memory_region`): the slot-id check, then
    /// `kvm_set_memory_region` under `slots_lock`. `files` is the caller's descriptor table
    /// (`current->files`, for the guest_memfd `fget`).
    #[doc(alias = "kvm_vm_ioctl_set_memory_region")]
    pub fn set_user_memory_region2(&self, files: &FdTable, mem: &UserspaceMemoryRegion2) -> KResult<()> {
        let _span = tracing::debug_span!("kvm_set_user_memory_region2", slot = mem.slot, flags = mem.flags).entered();
        if (mem.slot as u16) as u32 >= KVM_USER_MEM_SLOTS {
            return Err(Errno::EINVAL);
        }
        let slots_lock = self.lock_slots();
        self.set_memory_region(&slots_lock, files, mem)
    }

    /// `check_memory_region_flags`.
    #[doc(alias = "kvm_arch_has_readonly_mem")]
    fn check_memory_region_flags(&self, mem: &UserspaceMemoryRegion2) -> KResult<()> {
        let mut valid = KVM_MEM_LOG_DIRTY_PAGES;
        let gmem_allowed = match self.profile().version {
            KernelVersion::V6_14 => self.has_private_mem(),
            KernelVersion::V6_18 => true,
        };
        if gmem_allowed {
            valid |= KVM_MEM_GUEST_MEMFD;
        }
        if mem.flags & KVM_MEM_GUEST_MEMFD != 0 {
            valid &= !KVM_MEM_LOG_DIRTY_PAGES;
        }
        // kvm_arch_has_readonly_mem: x86 VMs without protected state (not SEV-ES, SNP or TDX).
        let readonly_mem = !matches!(
            self.vm_type(),
            crate::profile::VmType::SevEs | crate::profile::VmType::SevSnp | crate::profile::VmType::Tdx
        );
        if readonly_mem && mem.flags & KVM_MEM_GUEST_MEMFD == 0 {
            valid |= KVM_MEM_READONLY;
        }
        if mem.flags & !valid != 0 {
            return Err(Errno::EINVAL);
        }
        Ok(())
    }

    /// `kvm_set_memory_region`: every check in the kernel's order, then the update.
    #[doc(alias("__kvm_set_memory_region", "kvm_set_memory_region"))]
    fn set_memory_region(
        &self,
        slots_lock: &gmem_sync::MutexGuard<'_, ()>,
        files: &FdTable,
        mem: &UserspaceMemoryRegion2,
    ) -> KResult<()> {
        lockdep_assert_held(&SLOTS_LOCK);
        self.check_memory_region_flags(mem)?;
        let id = SlotId(mem.slot);
        let size = mem.memory_size;
        if size & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        if mem.guest_phys_addr & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        // userspace_addr: aligned, untagged (x86 LAM is off: untagged == itself), access_ok.
        if mem.userspace_addr & (PAGE_SIZE - 1) != 0 || !access_ok(mem.userspace_addr, size) {
            return Err(Errno::EINVAL);
        }
        let gmem = mem.flags & KVM_MEM_GUEST_MEMFD != 0;
        if gmem && (mem.guest_memfd_offset & (PAGE_SIZE - 1) != 0 || mem.guest_memfd_offset.checked_add(size).is_none())
        {
            return Err(Errno::EINVAL);
        }
        if id.as_id() >= KVM_ADDRESS_SPACE_NUM || id.id() as u32 >= KVM_MEM_SLOTS_NUM {
            return Err(Errno::EINVAL);
        }
        if mem.guest_phys_addr.checked_add(size).is_none() {
            return Err(Errno::EINVAL);
        }
        let npages = size >> PAGE_SHIFT;
        if (id.id() as u32) < KVM_USER_MEM_SLOTS && npages > KVM_MEM_MAX_NR_PAGES {
            return Err(Errno::EINVAL);
        }
        let slots = self.memslots_locked(slots_lock);
        let old = slots.find_id(mem.slot).copied();
        if size == 0 {
            let old = old.filter(|old| old.npages != 0).ok_or(Errno::EINVAL)?;
            if self.machine().warnings.warn_on_once(self.nr_memslot_pages.load(Ordering::Relaxed) < old.npages, || {
                "kvm->nr_memslot_pages < old->npages".into()
            }) {
                return Err(Errno::EIO);
            }
            return self.set_memslot(slots_lock, Some(old), None, MrChange::Delete);
        }
        let base_gfn = mem.guest_phys_addr >> PAGE_SHIFT;
        let change = match old {
            None => {
                if self.nr_memslot_pages.load(Ordering::Relaxed).checked_add(npages).is_none() {
                    return Err(Errno::EINVAL);
                }
                MrChange::Create
            }
            Some(old) => {
                // Private memslots are immutable, they can only be deleted.
                if gmem {
                    return Err(Errno::EINVAL);
                }
                let old_slot = self.memslot(&old);
                let mut immutable = KVM_MEM_READONLY;
                if self.profile().has_fix(Fix::F2NoGuestMemfdToggle) {
                    immutable |= KVM_MEM_GUEST_MEMFD;
                }
                if mem.userspace_addr != old_slot.userspace_addr()
                    || npages != old.npages
                    || (mem.flags ^ old_slot.flags()) & immutable != 0
                {
                    return Err(Errno::EINVAL);
                }
                if base_gfn != old.base_gfn {
                    MrChange::Move
                } else if mem.flags != old_slot.flags() {
                    MrChange::FlagsOnly
                } else {
                    return Ok(());
                }
            }
        };
        if matches!(change, MrChange::Create | MrChange::Move) && slots.overlaps(mem.slot, base_gfn, base_gfn + npages)
        {
            return Err(Errno::EEXIST);
        }
        let (handle, slot) = self.slot_slab.alloc();
        slot.id.store(mem.slot, Ordering::Relaxed);
        slot.base_gfn.store(base_gfn, Ordering::Relaxed);
        slot.npages.store(npages, Ordering::Relaxed);
        slot.flags.store(mem.flags, Ordering::Relaxed);
        slot.userspace_addr.store(mem.userspace_addr, Ordering::Relaxed);
        slot.gmem_file.store(std::ptr::null_mut(), Ordering::Relaxed);
        slot.gmem_pgoff.store(0, Ordering::Relaxed);
        let new = MemslotEntry { base_gfn, npages, id: mem.slot, handle };
        let new_ref = MemslotRef { handle, slot };
        if gmem {
            if let Err(errno) = kvm_gmem_bind(self, files, new_ref, mem.guest_memfd, mem.guest_memfd_offset as i64) {
                self.free_slot_storage(handle);
                return Err(errno);
            }
        }
        if let Err(errno) = self.set_memslot(slots_lock, old, Some(new), change) {
            if gmem {
                kvm_gmem_unbind(self, new_ref);
            }
            self.free_slot_storage(handle);
            return Err(errno);
        }
        Ok(())
    }

    fn free_slot_storage(&self, handle: SlabHandle) {
        if self.slot_slab.free(handle).is_err() {
            self.report_slot_use_after_free("kfree", "double free", handle);
        }
    }

    /// `kvm_set_memslot`.
    #[doc(alias(
        "kvm_arch_prepare_memory_region",
        "kvm_create_memslot",
        "kvm_delete_memslot",
        "kvm_is_gfn_alias",
        "kvm_move_memslot",
        "kvm_set_memslot",
        "kvm_update_flags_memslot"
    ))]
    fn set_memslot(
        &self,
        slots_lock: &gmem_sync::MutexGuard<'_, ()>,
        old: Option<MemslotEntry>,
        new: Option<MemslotEntry>,
        change: MrChange,
    ) -> KResult<()> {
        let mut arch_lock = self.slots_arch_lock.lock();
        let mut invalid = None;
        if matches!(change, MrChange::Delete | MrChange::Move) {
            let old = old.expect("delete/move has an old slot");
            let (invalid_slot, relocked) = self.invalidate_memslot(slots_lock, arch_lock, old);
            invalid = Some(invalid_slot);
            arch_lock = relocked;
        }
        // kvm_prepare_memory_region → kvm_arch_prepare_memory_region: on x86, CREATE and MOVE
        // fail for a slot that ends beyond the MMU's largest gfn, or, on a VM with a mirror root,
        // whose last gfn carries the direct bits (`kvm_is_gfn_alias`: memslots live below them).
        if let (Some(new), MrChange::Create | MrChange::Move) = (new, change) {
            let max_gfn = (1u64 << (self.profile().config.max_phys_bits - PAGE_SHIFT)) - 1;
            let last = new.base_gfn + new.npages - 1;
            if last > max_gfn || self.is_gfn_alias(Gfn(last)) {
                if let (Some(invalid), Some(old)) = (invalid, old) {
                    // kvm_activate_memslot(kvm, invalid_slot, old): restore the old slot.
                    self.swap_active_memslots(slots_lock, arch_lock, Some(invalid.handle), Some(old));
                    self.free_slot_storage(invalid.handle);
                } else {
                    drop(arch_lock);
                }
                return Err(Errno::EINVAL);
            }
            // kvm_alloc_memslot_metadata (its rmap arrays are the SPTE store's business here).
            let slot = self.memslot(&new);
            slot.set_lpage_info(kvm_alloc_lpage_info(new.base_gfn, new.npages, slot.userspace_addr()));
            self.mmu_init_memslot_memory_attributes(slot);
        }
        if let (Some(old), Some(new), MrChange::FlagsOnly) = (old, new, change) {
            // kvm_arch_prepare_memory_region for FLAGS_ONLY: `new->arch = old->arch`.
            self.memslot(&new).set_lpage_info(self.memslot(&old).lpage_info());
        }
        match change {
            MrChange::Create | MrChange::FlagsOnly => {
                self.swap_active_memslots(slots_lock, arch_lock, old.map(|o| o.handle), new)
            }
            MrChange::Delete | MrChange::Move => {
                let invalid = invalid.expect("made above");
                self.swap_active_memslots(slots_lock, arch_lock, Some(invalid.handle), new);
                self.free_slot_storage(invalid.handle);
            }
        }
        self.commit_memory_region(old, new, change);
        Ok(())
    }

    /// `kvm_invalidate_memslot`: publish an INVALID copy of `old` in its place, wait for readers,
    /// zap the old slot's mappings. The swap drops `slots_arch_lock` before waiting for readers;
    /// it is taken again afterwards, as the kernel does, and handed back.
    #[doc(alias("kvm_copy_memslot", "kvm_invalidate_memslot"))]
    fn invalidate_memslot<'k>(
        &'k self,
        slots_lock: &gmem_sync::MutexGuard<'_, ()>,
        arch_lock: gmem_sync::MutexGuard<'k, ()>,
        old: MemslotEntry,
    ) -> (MemslotEntry, gmem_sync::MutexGuard<'k, ()>) {
        let old_slot = self.memslot(&old);
        let (handle, slot) = self.slot_slab.alloc();
        // kvm_copy_memslot: geometry and flags, not the gmem binding.
        slot.id.store(old.id, Ordering::Relaxed);
        slot.base_gfn.store(old.base_gfn, Ordering::Relaxed);
        slot.npages.store(old.npages, Ordering::Relaxed);
        slot.flags.store(old_slot.flags() | KVM_MEMSLOT_INVALID, Ordering::Relaxed);
        slot.userspace_addr.store(old_slot.userspace_addr(), Ordering::Relaxed);
        slot.gmem_file.store(std::ptr::null_mut(), Ordering::Relaxed);
        slot.gmem_pgoff.store(old_slot.gmem_pgoff(), Ordering::Relaxed);
        *slot.lpage_info.lock() = old_slot.lpage_info();
        let invalid = MemslotEntry { handle, ..old };
        self.swap_active_memslots(slots_lock, arch_lock, Some(old.handle), Some(invalid));
        self.mmu().flush_shadow_memslot(self, old.id, Gfn(old.base_gfn), old.npages);
        (invalid, self.slots_arch_lock.lock())
    }

    /// `kvm_swap_active_memslots` (with the `kvm_replace_memslot` it follows): publish the next
    /// generation (its number marked "update in progress"), drop `slots_arch_lock`, wait for every
    /// reader of the previous generation, give the new one its final number, free the old one.
    #[doc(alias("kvm_activate_memslot", "kvm_swap_active_memslots"))]
    fn swap_active_memslots(
        &self,
        slots_lock: &gmem_sync::MutexGuard<'_, ()>,
        arch_lock: gmem_sync::MutexGuard<'_, ()>,
        old: Option<SlabHandle>,
        new: Option<MemslotEntry>,
    ) {
        let active = self.memslots_locked(slots_lock);
        let generation = active.generation();
        self.machine().warnings.warn_on(generation & KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS != 0, || {
            "memslot generation update already in progress".into()
        });
        let next = active.replaced(old, new);
        next.generation.store(generation | KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS, Ordering::Relaxed);
        let next = Box::into_raw(Box::new(next));
        // Do not publish while an MMU-notifier invalidation is between start and end: both must
        // see the same memslots, or mmu_invalidate_in_progress would be unbalanced.
        let mut previous = std::ptr::null_mut();
        gmem_sync::thread::wait_for(
            "MMU notifier invalidations to end",
            || "(kvm->mn_active_invalidate_count == 0, to swap the memslots)".into(),
            || {
                let _lock = self.mn_invalidate_lock.lock();
                if self.mn_active_invalidate_count.load(Ordering::Relaxed) != 0 {
                    return false;
                }
                previous = self.memslots.swap(next, Ordering::AcqRel);
                true
            },
        );
        drop(arch_lock);
        if !self.memslot_weakened(MemslotWeakening::NoSynchronizeBeforeFree) {
            self.srcu.synchronize();
        }
        // SAFETY: `next` stays published (and alive) until the next swap, which needs slots_lock.
        let next = unsafe { &*next };
        let final_generation = (generation & !KVM_MEMSLOT_GEN_UPDATE_IN_PROGRESS) + KVM_ADDRESS_SPACE_NUM as u64;
        next.generation.store(final_generation, Ordering::Release);
        // SAFETY: every SRCU reader that could see `previous` has finished (synchronize above;
        // without it, only in the test-only weakening, whose stale readers the checked builds
        // report), `previous` was swapped out of `kvm->memslots` under slots_lock and came from
        // Box::into_raw.
        unsafe { self.free_memslots(previous) };
    }

    /// `kvm_commit_memory_region`: accounting, then the fate of the old slot.
    #[doc(alias = "kvm_commit_memory_region")]
    fn commit_memory_region(&self, old: Option<MemslotEntry>, new: Option<MemslotEntry>, change: MrChange) {
        // The page count is updated before the arch hook, which sizes the MMU from it.
        match change {
            MrChange::Create => {
                self.nr_memslot_pages.fetch_add(new.expect("create has a new slot").npages, Ordering::Relaxed);
            }
            MrChange::Delete => {
                self.nr_memslot_pages.fetch_sub(old.expect("delete has an old slot").npages, Ordering::Relaxed);
            }
            MrChange::Move | MrChange::FlagsOnly => {}
        }
        self.arch_commit_memory_region(change);
        match change {
            // Nothing more to do.
            MrChange::Create => {}
            MrChange::Delete => self.free_memslot(old.expect("delete has an old slot").handle),
            // MOVE and FLAGS_ONLY free the old slot without unbinding it: before F2 a gmem slot
            // could get here (by clearing GUEST_MEMFD), leaving its binding dangling.
            MrChange::Move => self.free_slot_storage(old.expect("move has an old slot").handle),
            MrChange::FlagsOnly => {
                let old = old.expect("flags-only has an old slot");
                let new = new.expect("flags-only has a new slot");
                self.mmu_slot_apply_flags(old, new);
                self.free_slot_storage(old.handle);
            }
        }
    }

    /// x86 `kvm_arch_commit_memory_region`'s MMU sizing: unless userspace chose a size
    /// (`KVM_SET_NR_MMU_PAGES`, not modelled), a CREATE or DELETE resizes the shadow MMU's page
    /// budget to `nr_memslot_pages / KVM_MEMSLOT_PAGES_TO_MMU_PAGES_RATIO`, at least
    /// `KVM_MIN_ALLOC_MMU_PAGES` (`kvm_mmu_change_mmu_pages`). Called after the generic code
    /// updated `nr_memslot_pages`, as the kernel's order is.
    #[doc(alias("kvm_arch_commit_memory_region", "kvm_mmu_change_mmu_pages"))]
    fn arch_commit_memory_region(&self, change: MrChange) {
        /// `KVM_MEMSLOT_PAGES_TO_MMU_PAGES_RATIO`.
        const PAGES_TO_MMU_PAGES_RATIO: u64 = 50;
        /// `KVM_MIN_ALLOC_MMU_PAGES`.
        const MIN_ALLOC_MMU_PAGES: u64 = 64;
        if matches!(change, MrChange::Create | MrChange::Delete) {
            let pages = self.nr_memslot_pages.load(Ordering::Relaxed) / PAGES_TO_MMU_PAGES_RATIO;
            self.n_max_mmu_pages.store(pages.max(MIN_ALLOC_MMU_PAGES), Ordering::Relaxed);
        }
    }

    /// x86 `kvm_mmu_slot_apply_flags` for FLAGS_ONLY: READONLY and geometry changes were filtered
    /// out earlier, so the only flag left to change is LOG_DIRTY_PAGES; anything else WARNs (which
    /// is what clearing GUEST_MEMFD on a v6.14 kernel does, on its way to the F2 use-after-free).
    #[doc(alias = "kvm_mmu_slot_apply_flags")]
    fn mmu_slot_apply_flags(&self, old: MemslotEntry, new: MemslotEntry) {
        let old_flags = self.memslot(&old).flags();
        let new_flags = self.memslot(&new).flags();
        if new_flags & KVM_MEM_READONLY != 0 {
            return;
        }
        self.machine().warnings.warn_on_once((old_flags ^ new_flags) & KVM_MEM_LOG_DIRTY_PAGES == 0, || {
            format!(
                "kvm_mmu_slot_apply_flags: FLAGS_ONLY change {old_flags:#x} -> {new_flags:#x} without dirty logging"
            )
        });
    }

    /// `kvm_free_memslot`: unbind a guest_memfd slot, then free it.
    #[doc(alias = "kvm_free_memslot")]
    pub(crate) fn free_memslot(&self, handle: SlabHandle) {
        let Ok(slot) = self.memslot_by_handle(handle) else {
            self.report_slot_use_after_free("kvm_free_memslot", "double free", handle);
            return;
        };
        if slot.has_gmem() && !self.memslot_weakened(MemslotWeakening::NoGmemUnbindOnFree) {
            kvm_gmem_unbind(self, slot);
        }
        self.free_slot_storage(handle);
    }
}
