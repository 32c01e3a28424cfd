//! KVM's MMU notifier on the VM owner's address space (`virt/kvm/kvm_main.c`:
//! `kvm_init_mmu_notifier`, `kvm_mmu_notifier_invalidate_range_start`/`_end`,
//! `kvm_handle_hva_range`, `kvm_mmu_notifier_release`).
//!
//! `kvm_create_vm` registers a [`KvmMmuNotifier`] on the creating process's [`Mm`]
//! ([`KvmSystem::create_vm_in`](crate::KvmSystem::create_vm_in)); `kvm_destroy_vm` unregisters
//! it. When user mappings of a range go away (munmap, `MADV_DONTNEED`, `MADV_REMOVE`), the start
//! callback translates the hva range into the gfn range of every memslot whose `userspace_addr`
//! range overlaps it (under `kvm->srcu`, address space 0: the model has no SMM), and under
//! `mmu_lock` for write opens an invalidation (`kvm_mmu_invalidate_begin`), adds each range and
//! zaps it with the **SHARED** attribute filter (`kvm_mmu_unmap_gfn_range`: hva-based
//! notifications are not relevant to private mappings, which have no userspace mapping), then
//! flushes remote TLBs if anything was zapped. On x86 without mirror roots (every VM type but
//! TDX) the TDP MMU ignores the filter, so private SPTEs in the range go too (harmless: they
//! re-fault from guest_memfd). The end callback closes the invalidation
//! (`kvm_mmu_invalidate_end`: `seq++`, `in_progress--`) if the start found a memslot; memslot
//! updates wait for `mn_active_invalidate_count` to drop to zero before publishing, so start and
//! end see the same memslots and stay balanced.
//!
//! Lock order: `mmap_lock` → (notifier SRCU) → `kvm->srcu` (read) → `kvm->mmu_lock` (write).
//!
//! Not modelled: gfn_to_pfn caches (`gfn_to_pfn_cache_invalidate_start`),
//! `kvm_arch_guest_memory_reclaimed` (SEV's WBINVD), the aging callbacks (`clear_flush_young`).

use crate::mmu::{AttrFilter, KvmGfnRange};
use crate::vm::Kvm;
use gmem_mm::mmu_notifier::{MmuNotifierOps, MmuNotifierRange};
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::vma::Mm;
use gmem_sync::atomic::Ordering;
use gmem_sync::{Arc, Weak};
use std::fmt;

/// `kvm->mmu_notifier`: the subscription on `kvm->mm`.
#[doc(alias = "kvm_mmu_notifier_release")]
pub struct KvmMmuNotifier {
    kvm: Weak<Kvm>,
}

impl fmt::Debug for KvmMmuNotifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmMmuNotifier").finish_non_exhaustive()
    }
}

impl MmuNotifierOps for KvmMmuNotifier {
    fn invalidate_range_start(&self, range: &MmuNotifierRange) {
        if let Some(kvm) = self.kvm.upgrade() {
            kvm_mmu_notifier_invalidate_range_start(&kvm, range.start, range.end);
        }
    }

    fn invalidate_range_end(&self, range: &MmuNotifierRange) {
        if let Some(kvm) = self.kvm.upgrade() {
            kvm_mmu_notifier_invalidate_range_end(&kvm, range.start, range.end);
        }
    }

    /// `kvm_mmu_notifier_release`: the address space is going away; drop every mapping.
    fn release(&self) {
        if let Some(kvm) = self.kvm.upgrade() {
            let _span = tracing::debug_span!("kvm_mmu_notifier_release").entered();
            let _srcu = kvm.srcu_read_lock();
            kvm.mmu().flush_shadow_all(&kvm);
        }
    }
}

/// `kvm_init_mmu_notifier`: subscribe `kvm` to `mm`'s invalidations.
pub(crate) fn kvm_init_mmu_notifier(kvm: &Arc<Kvm>, mm: &Mm) {
    let handle = mm.mmu_notifier_register(Arc::new(KvmMmuNotifier { kvm: Arc::downgrade(kvm) }));
    *kvm.mmu_notifier.lock() = Some(handle);
}

/// What `kvm_handle_hva_range` runs for each overlapping memslot once `mmu_lock` is held.
#[derive(Clone, Copy, PartialEq, Eq)]
enum HvaHandler {
    /// `kvm_mmu_unmap_gfn_range`, with `kvm_mmu_invalidate_begin` as `on_lock`.
    Unmap,
    /// `kvm_null_fn`, with `kvm_mmu_invalidate_end` as `on_lock`.
    End,
}

/// The gfn range `[start, end)` of the slot at `base_gfn` (`npages` pages, mapped at `uaddr`)
/// that the hva range `[hva_start, hva_end)` touches, if any (`hva_to_gfn_memslot` on the
/// clamped range, rounding the end up to a page).
#[doc(alias = "hva_to_gfn_memslot")]
pub fn hva_range_to_gfn_range(
    hva_start: u64,
    hva_end: u64,
    base_gfn: u64,
    npages: u64,
    uaddr: u64,
) -> Option<(u64, u64)> {
    let slot_end = uaddr.checked_add(npages.checked_mul(PAGE_SIZE)?)?;
    if hva_start >= slot_end || uaddr >= hva_end || hva_start >= hva_end {
        return None;
    }
    let start = hva_start.max(uaddr);
    let end = hva_end.min(slot_end);
    let gfn_start = base_gfn + ((start - uaddr) >> PAGE_SHIFT);
    let gfn_end = base_gfn + ((end - uaddr).div_ceil(PAGE_SIZE));
    Some((gfn_start, gfn_end))
}

/// `kvm_handle_hva_range`: under SRCU, for each memslot overlapping `[start, end)`, take
/// `mmu_lock` for write at the first one (running `on_lock`), then the handler. Returns whether
/// a memslot was found.
fn kvm_handle_hva_range(kvm: &Kvm, start: u64, end: u64, handler: HvaHandler) -> bool {
    let srcu = kvm.srcu_read_lock();
    let mut mmu_lock = None;
    let mut flush = false;
    for entry in kvm.memslots(&srcu).iter() {
        let slot = kvm.memslot(entry);
        let Some((gfn_start, gfn_end)) =
            hva_range_to_gfn_range(start, end, entry.base_gfn, entry.npages, slot.userspace_addr())
        else {
            continue;
        };
        if mmu_lock.is_none() {
            mmu_lock = Some(kvm.mmu_lock_write());
            match handler {
                HvaHandler::Unmap => kvm.mmu_invalidate_begin(),
                HvaHandler::End => {
                    kvm.mmu_invalidate_end();
                    // A null handler: nothing more to do under the lock.
                    break;
                }
            }
        }
        let range = KvmGfnRange {
            start: crate::types::Gfn(gfn_start),
            end: crate::types::Gfn(gfn_end),
            slot_id: entry.id,
            // HVA-based notifications aren't relevant to private mappings.
            attr_filter: AttrFilter::Shared,
            may_block: true,
        };
        flush |= kvm.mmu_unmap_gfn_range(&range);
    }
    if handler == HvaHandler::Unmap && flush {
        kvm.mmu().flush_remote_tlbs(kvm);
    }
    let found = mmu_lock.is_some();
    drop(mmu_lock);
    drop(srcu);
    found
}

/// `kvm_mmu_notifier_invalidate_range_start`.
pub fn kvm_mmu_notifier_invalidate_range_start(kvm: &Kvm, start: u64, end: u64) {
    let _span = tracing::debug_span!("kvm_mmu_notifier_invalidate_range_start", start, end).entered();
    // Prevent memslot modification between range_start() and range_end() (pairs with the
    // decrement in range_end()).
    {
        let _lock = kvm.mn_invalidate_lock.lock();
        kvm.mn_active_invalidate_count.fetch_add(1, Ordering::Relaxed);
    }
    kvm_handle_hva_range(kvm, start, end, HvaHandler::Unmap);
}

/// `kvm_mmu_notifier_invalidate_range_end`.
pub fn kvm_mmu_notifier_invalidate_range_end(kvm: &Kvm, start: u64, end: u64) {
    let _span = tracing::debug_span!("kvm_mmu_notifier_invalidate_range_end", start, end).entered();
    kvm_handle_hva_range(kvm, start, end, HvaHandler::End);
    let _lock = kvm.mn_invalidate_lock.lock();
    let count = kvm.mn_active_invalidate_count.load(Ordering::Relaxed);
    if !kvm.machine().warnings.warn_on_once(count == 0, || "mn_active_invalidate_count underflow".into()) {
        kvm.mn_active_invalidate_count.store(count - 1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::hva_range_to_gfn_range;

    #[test]
    fn hva_ranges_clamp_to_the_slot_and_round_the_end_up() {
        let uaddr = 0x10_0000;
        assert_eq!(hva_range_to_gfn_range(uaddr, uaddr + 0x1000, 0x100, 4, uaddr), Some((0x100, 0x101)));
        assert_eq!(hva_range_to_gfn_range(0, u64::MAX, 0x100, 4, uaddr), Some((0x100, 0x104)));
        assert_eq!(hva_range_to_gfn_range(uaddr + 0x1800, uaddr + 0x2001, 0x100, 4, uaddr), Some((0x101, 0x103)));
        assert_eq!(hva_range_to_gfn_range(uaddr + 0x4000, uaddr + 0x5000, 0x100, 4, uaddr), None);
        assert_eq!(hva_range_to_gfn_range(0, uaddr, 0x100, 4, uaddr), None);
        assert_eq!(hva_range_to_gfn_range(0, u64::MAX, 0, u64::MAX, uaddr), None, "overflowing slot");
    }
}
