//! The boundary between guest_memfd / memslots and the MMU: `kvm_mmu_unmap_gfn_range`,
//! `kvm_flush_remote_tlbs`, `kvm_arch_flush_shadow_memslot`, and the `mmu_invalidate_*`
//! bookkeeping that lets page faults detect a racing invalidation (`virt/kvm/kvm_main.c`).
//!
//! The software TDP MMU ([`crate::tdp_mmu::TdpMmu`]) implements [`KvmMmu`] with page tables;
//! [`RecordingMmu`] records exactly what guest_memfd and the memslot code asked for, so tests can
//! assert the ranges, attribute filters and flushes.

use crate::types::Gfn;
use crate::vm::Kvm;
use gmem_sync::atomic::{fence, Ordering};
use gmem_sync::{LockClass, Mutex};
use std::fmt;

/// `enum kvm_gfn_range_filter` (`KVM_FILTER_*` bits): which kind of mappings an invalidation
/// targets. Only a VM with a mirror root tells them apart (`kvm_gfn_range_filter_to_root_types`:
/// PRIVATE is the mirror root, SHARED the direct root); other x86 VMs zap their one root
/// whatever the filter says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[doc(alias = "kvm_gfn_range_filter")]
pub enum AttrFilter {
    /// `KVM_FILTER_PRIVATE`.
    Private,
    /// `KVM_FILTER_SHARED`.
    Shared,
    /// `KVM_FILTER_PRIVATE | KVM_FILTER_SHARED` (`kvm_mmu_zap_memslot`: a memslot going away
    /// loses both kinds of mappings).
    Both,
}

impl AttrFilter {
    /// `attr_filter & KVM_FILTER_PRIVATE`.
    pub fn includes_private(self) -> bool {
        matches!(self, AttrFilter::Private | AttrFilter::Both)
    }

    /// `attr_filter & KVM_FILTER_SHARED`.
    pub fn includes_shared(self) -> bool {
        matches!(self, AttrFilter::Shared | AttrFilter::Both)
    }
}

impl fmt::Display for AttrFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttrFilter::Private => "PRIVATE",
            AttrFilter::Shared => "SHARED",
            AttrFilter::Both => "PRIVATE|SHARED",
        })
    }
}

/// `struct kvm_gfn_range`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvmGfnRange {
    /// First gfn.
    pub start: Gfn,
    /// One past the last gfn.
    pub end: Gfn,
    /// The memslot (by id) the range lies in.
    pub slot_id: u32,
    /// The attribute filter.
    pub attr_filter: AttrFilter,
    /// Whether the handler may sleep.
    pub may_block: bool,
}

/// What the MMU layer provides to the rest of KVM. Every method is called with the locks the
/// kernel holds at that call site (documented per method); implementations must not call back
/// into guest_memfd.
pub trait KvmMmu: Send + Sync + fmt::Debug {
    /// `kvm_unmap_gfn_range`: zap the mappings of `range` matching its filter. Called with
    /// `mmu_lock` held for write, after `kvm_mmu_invalidate_range_add`. Returns whether a TLB
    /// flush is needed.
    #[doc(alias(
        "kvm_gfn_range_filter_to_root_types",
        "kvm_tdp_mmu_root_types",
        "kvm_tdp_mmu_unmap_gfn_range",
        "kvm_unmap_gfn_range"
    ))]
    fn unmap_gfn_range(&self, kvm: &Kvm, range: &KvmGfnRange) -> bool;

    /// `kvm_flush_remote_tlbs`: when it returns, no vCPU can translate through a zapped entry.
    #[doc(alias = "kvm_flush_remote_tlbs")]
    fn flush_remote_tlbs(&self, kvm: &Kvm);

    /// `kvm_arch_flush_shadow_memslot`: zap every mapping of a memslot being deleted or moved.
    /// Called under `slots_lock` (and `slots_arch_lock`), after the INVALID copy was published.
    #[doc(alias("kvm_arch_flush_shadow_memslot", "kvm_mmu_zap_memslot"))]
    fn flush_shadow_memslot(&self, kvm: &Kvm, slot_id: u32, base_gfn: Gfn, npages: u64);

    /// The MMU's part of `kvm_arch_post_set_memory_attributes`. Called with `mmu_lock` held for
    /// write, after the attributes were stored, `kvm_mmu_invalidate_end`, and the slot's
    /// `KVM_LPAGE_MIXED_FLAG` update (`Kvm::arch_post_set_memory_attributes`, which every MMU
    /// shares). The default does nothing: the x86 function touches no SPTE.
    fn post_set_memory_attributes(&self, _kvm: &Kvm, _range: &KvmGfnRange, _attributes: u64) {}

    /// `kvm_arch_flush_shadow_all`: the owner's address space is going away (the MMU notifier's
    /// release, at process exit or when the VM unregisters it) or the VM is being destroyed
    /// without a notifier; drop every mapping the MMU notifier protects (`kvm_tdp_mmu_zap_all`:
    /// the direct root only; a mirror root stays until [`KvmMmu::uninit_vm`]). Default: nothing
    /// mapped.
    #[doc(alias("kvm_arch_flush_shadow_all", "kvm_mmu_zap_all", "kvm_tdp_mmu_zap_all"))]
    fn flush_shadow_all(&self, _kvm: &Kvm) {}

    /// `kvm_mmu_uninit_vm` (from `kvm_arch_destroy_vm`, after the vCPUs are gone): tear every root
    /// down, a mirror root included (`kvm_mmu_uninit_tdp_mmu`). Default: nothing mapped.
    #[doc(alias = "kvm_mmu_uninit_vm")]
    fn uninit_vm(&self, _kvm: &Kvm) {}
}

/// One call the recording MMU saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MmuEvent {
    /// `kvm_unmap_gfn_range`.
    Unmap(KvmGfnRange),
    /// `kvm_flush_remote_tlbs`.
    FlushRemoteTlbs,
    /// `kvm_arch_flush_shadow_memslot`.
    FlushShadowMemslot {
        /// Slot id.
        slot_id: u32,
        /// Its first gfn.
        base_gfn: Gfn,
        /// Its size in pages.
        npages: u64,
    },
}

static RECORDING_LOCK: LockClass = LockClass::new("recording_mmu->events");

/// An MMU without page tables that records every request (the stand-in until the software MMU
/// exists, and a precise probe for tests).
pub struct RecordingMmu {
    events: Mutex<Vec<MmuEvent>>,
    unmap_result: bool,
}

impl fmt::Debug for RecordingMmu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordingMmu").field("events", &self.events.lock().len()).finish()
    }
}

impl RecordingMmu {
    /// A recorder whose `unmap_gfn_range` answers `unmap_result` ("something was zapped, flush").
    pub fn new(unmap_result: bool) -> RecordingMmu {
        RecordingMmu { events: Mutex::new(&RECORDING_LOCK, Vec::new()), unmap_result }
    }

    /// Builds each VM a recorder answering `unmap_result` ([`KvmSystemBuilder::mmu`](crate::vm::KvmSystemBuilder::mmu)).
    pub fn factory(unmap_result: bool) -> crate::vm::MmuFactory {
        gmem_sync::Arc::new(move || crate::vm::VmMmu::Other(gmem_sync::Arc::new(RecordingMmu::new(unmap_result))))
    }

    /// Everything recorded so far.
    pub fn events(&self) -> Vec<MmuEvent> {
        self.events.lock().clone()
    }

    /// Takes and clears the record.
    pub fn take(&self) -> Vec<MmuEvent> {
        std::mem::take(&mut *self.events.lock())
    }
}

impl KvmMmu for RecordingMmu {
    fn unmap_gfn_range(&self, kvm: &Kvm, range: &KvmGfnRange) -> bool {
        kvm.assert_mmu_lock_held();
        self.events.lock().push(MmuEvent::Unmap(*range));
        self.unmap_result
    }

    fn flush_remote_tlbs(&self, _kvm: &Kvm) {
        self.events.lock().push(MmuEvent::FlushRemoteTlbs);
    }

    fn flush_shadow_memslot(&self, _kvm: &Kvm, slot_id: u32, base_gfn: Gfn, npages: u64) {
        self.events.lock().push(MmuEvent::FlushShadowMemslot { slot_id, base_gfn, npages });
    }
}

/// `INVALID_GPA`, the "no range yet" marker of the invalidation range.
pub const INVALID_GFN: u64 = u64::MAX;

impl Kvm {
    /// `kvm_zap_gfn_range` (x86): zap every mapping of `[start, end)` inside an invalidation of
    /// that range, so no fault can reinstall one meanwhile (SEV-SNP's RMP fault handler uses it
    /// to rebuild a range at 4K after a PSMASH). A WARN and nothing done for an empty range.
    #[doc(alias = "kvm_zap_gfn_range")]
    pub fn zap_gfn_range(&self, start: Gfn, end: Gfn) {
        if self.machine().warnings.warn_on_once(end <= start, || format!("kvm_zap_gfn_range: [{start}, {end})")) {
            return;
        }
        let srcu = self.srcu_read_lock();
        let ranges: Vec<KvmGfnRange> = self
            .memslots(&srcu)
            .iter()
            .map(|entry| self.memslot(entry))
            .filter_map(|slot| {
                let slot_end = Gfn(slot.base_gfn().0 + slot.npages());
                let (lo, hi) = (start.max(slot.base_gfn()), end.min(slot_end));
                (lo < hi).then_some(KvmGfnRange {
                    start: lo,
                    end: hi,
                    slot_id: slot.id().0,
                    // kvm_tdp_mmu_zap_leafs: every valid root, whatever its kind.
                    attr_filter: AttrFilter::Both,
                    may_block: true,
                })
            })
            .collect();
        let mmu_lock = self.mmu_lock_write();
        self.mmu_invalidate_begin();
        self.mmu_invalidate_range_add(start, end);
        let mut flush = false;
        for range in &ranges {
            flush |= self.mmu().unmap_gfn_range(self, range);
        }
        if flush {
            self.mmu().flush_remote_tlbs(self);
        }
        self.mmu_invalidate_end();
        drop(mmu_lock);
        drop(srcu);
    }

    /// `kvm_mmu_invalidate_begin`: one more invalidation in progress. `mmu_lock` held for write.
    #[doc(alias = "kvm_mmu_invalidate_begin")]
    pub fn mmu_invalidate_begin(&self) {
        self.assert_mmu_lock_held();
        let state = &self.mmu_invalidate;
        if state.in_progress.fetch_add(1, Ordering::Relaxed) == 0 {
            state.range_start.store(INVALID_GFN, Ordering::Relaxed);
            state.range_end.store(INVALID_GFN, Ordering::Relaxed);
        }
    }

    /// `kvm_mmu_invalidate_range_add`: widens the in-progress range. `mmu_lock` held for write.
    #[doc(alias = "kvm_mmu_invalidate_range_add")]
    pub fn mmu_invalidate_range_add(&self, start: Gfn, end: Gfn) {
        self.assert_mmu_lock_held();
        let state = &self.mmu_invalidate;
        self.machine().warnings.warn_on_once(state.in_progress.load(Ordering::Relaxed) == 0, || {
            "kvm_mmu_invalidate_range_add without an invalidation in progress".into()
        });
        let current = state.range_start.load(Ordering::Relaxed);
        if current == INVALID_GFN {
            state.range_start.store(start.0, Ordering::Relaxed);
            state.range_end.store(end.0, Ordering::Relaxed);
        } else {
            state.range_start.store(current.min(start.0), Ordering::Relaxed);
            let end_now = state.range_end.load(Ordering::Relaxed);
            state.range_end.store(end_now.max(end.0), Ordering::Relaxed);
        }
    }

    /// `kvm_mmu_unmap_gfn_range` = range_add + the arch unmap.
    #[doc(alias = "kvm_mmu_unmap_gfn_range")]
    pub fn mmu_unmap_gfn_range(&self, range: &KvmGfnRange) -> bool {
        self.mmu_invalidate_range_add(range.start, range.end);
        let flush = self.mmu().unmap_gfn_range(self, range);
        self.arch().unmap_gfn_range(self, range);
        flush
    }

    /// `kvm_mmu_invalidate_end`: the sequence count moves on (before `in_progress` drops, with
    /// the kernel's `smp_wmb`), so a fault that snapshotted the old sequence retries.
    #[doc(alias = "kvm_mmu_invalidate_end")]
    pub fn mmu_invalidate_end(&self) {
        self.assert_mmu_lock_held();
        let state = &self.mmu_invalidate;
        state.seq.fetch_add(1, Ordering::Relaxed);
        fence(Ordering::Release);
        let was = state.in_progress.fetch_sub(1, Ordering::Relaxed);
        self.machine().warnings.warn_on(was <= 0, || "KVM_BUG_ON(mmu_invalidate_in_progress < 0)".into());
        self.machine().warnings.warn_on_once(state.range_start.load(Ordering::Relaxed) == INVALID_GFN, || {
            "kvm_mmu_invalidate_end without any range added".into()
        });
    }

    /// `mmu_invalidate_retry_gfn(kvm, mmu_seq, gfn)`: whether a fault that snapshotted `mmu_seq`
    /// must retry rather than install a mapping for `gfn`. `mmu_lock` held (read or write).
    pub fn mmu_invalidate_retry_gfn(&self, mmu_seq: u64, gfn: Gfn) -> bool {
        self.assert_mmu_lock_held();
        let state = &self.mmu_invalidate;
        if state.in_progress.load(Ordering::Relaxed) != 0 {
            let (start, end) = self.mmu_invalidate_range();
            // An invalidation in progress must have added its range before dropping mmu_lock.
            if self.machine().warnings.warn_on_once(start == INVALID_GFN || end == INVALID_GFN, || {
                "mmu_invalidate_retry_gfn: invalidation in progress without a range".into()
            }) {
                return true;
            }
            if gfn.0 >= start && gfn.0 < end {
                return true;
            }
        }
        state.seq.load(Ordering::Relaxed) != mmu_seq
    }

    /// `mmu_invalidate_retry_gfn_unsafe`: the same check without `mmu_lock` (an early, racy
    /// filter that only saves taking the lock).
    pub fn mmu_invalidate_retry_gfn_unsafe(&self, mmu_seq: u64, gfn: Gfn) -> bool {
        let state = &self.mmu_invalidate;
        if state.in_progress.load(Ordering::Acquire) != 0 {
            // Stale start/end only give false negatives; the 1 -> 0 transition of in_progress
            // and the sequence are what end a retry loop.
            let (start, end) = self.mmu_invalidate_range();
            if gfn.0 >= start && gfn.0 < end {
                return true;
            }
        }
        state.seq.load(Ordering::Acquire) != mmu_seq
    }

    /// `kvm->mmu_invalidate_seq`.
    pub fn mmu_invalidate_seq(&self) -> u64 {
        self.mmu_invalidate.seq.load(Ordering::Acquire)
    }

    /// `kvm->mmu_invalidate_in_progress`.
    pub fn mmu_invalidate_in_progress(&self) -> i64 {
        self.mmu_invalidate.in_progress.load(Ordering::Acquire)
    }

    /// The in-progress range `[start, end)` (both [`INVALID_GFN`] when none was added).
    pub fn mmu_invalidate_range(&self) -> (u64, u64) {
        let state = &self.mmu_invalidate;
        (state.range_start.load(Ordering::Relaxed), state.range_end.load(Ordering::Relaxed))
    }
}
