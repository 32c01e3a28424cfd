//! Memory attributes: `KVM_SET_MEMORY_ATTRIBUTES` and the attribute queries the fault path and
//! populate use (`virt/kvm/kvm_main.c`: `kvm_vm_ioctl_set_mem_attributes`,
//! `kvm_vm_set_mem_attributes`, `kvm_handle_gfn_range`, `kvm_range_has_memory_attributes`;
//! `arch/x86/kvm/mmu/mmu.c`: `kvm_arch_pre_set_memory_attributes`).
//!
//! Attributes live in `kvm->mem_attr_array`, one xarray entry per gfn (no entry means 0). A change
//! is bracketed by an MMU invalidation over every memslot it touches: *pre-set* zaps the old kind
//! of mapping, the xarray is updated, *post-set* ends the invalidation. A request that changes
//! nothing opens no invalidation at all.

use crate::arch::PgLevel;
use crate::memslot::MemslotRef;
use crate::mmu::{AttrFilter, KvmGfnRange};
use crate::profile::KernelVersion;
use crate::types::Gfn;
use crate::vm::Kvm;
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::{Errno, KResult};
use gmem_sync::inject::FaultPoint;

/// `KVM_MEMORY_ATTRIBUTE_PRIVATE`.
pub const KVM_MEMORY_ATTRIBUTE_PRIVATE: u64 = 1 << 3;

/// The arguments of `KVM_SET_MEMORY_ATTRIBUTES` (`struct kvm_memory_attributes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryAttributes {
    /// `address`.
    pub address: u64,
    /// `size`.
    pub size: u64,
    /// `attributes`.
    pub attributes: u64,
    /// `flags`.
    pub flags: u64,
}

impl Kvm {
    /// `kvm_supported_mem_attributes(kvm)`.
    #[doc(alias = "kvm_supported_mem_attributes")]
    pub fn supported_mem_attributes(&self) -> u64 {
        if self.has_private_mem() {
            KVM_MEMORY_ATTRIBUTE_PRIVATE
        } else {
            0
        }
    }

    /// `kvm_get_memory_attributes(kvm, gfn)`.
    #[doc(alias = "kvm_get_memory_attributes")]
    pub fn get_memory_attributes(&self, gfn: Gfn) -> u64 {
        self.mem_attr_array.load(gfn.0).unwrap_or(0)
    }

    /// `kvm_mem_is_private(kvm, gfn)`.
    #[doc(alias = "kvm_mem_is_private")]
    pub fn mem_is_private(&self, gfn: Gfn) -> bool {
        self.get_memory_attributes(gfn) & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0
    }

    /// `kvm_range_has_memory_attributes(kvm, start, end, mask, attrs)`: every gfn of
    /// `[start, end)` has `attrs` in the bits of `mask` (lock-free, as under RCU).
    #[doc(alias = "kvm_range_has_memory_attributes")]
    pub fn range_has_memory_attributes(&self, start: Gfn, end: Gfn, mask: u64, attrs: u64) -> bool {
        let mask = mask & self.supported_mem_attributes();
        if attrs & !mask != 0 {
            return false;
        }
        if end.0 == start.0.wrapping_add(1) {
            return self.get_memory_attributes(start) & mask == attrs;
        }
        if attrs == 0 {
            let mut index = start.0;
            return self.mem_attr_array.find(&mut index, end.0.wrapping_sub(1)).is_none();
        }
        (start.0..end.0).all(|gfn| self.mem_attr_array.load(gfn).is_some_and(|value| value & mask == attrs))
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES` (`kvm_vm_ioctl_set_mem_attributes`). ENOTTY where the kernel is
    /// built without `CONFIG_KVM_GENERIC_MEMORY_ATTRIBUTES` (the ioctl does not exist).
    #[doc(alias = "kvm_vm_ioctl_set_mem_attributes")]
    pub fn set_memory_attributes(&self, attrs: &MemoryAttributes) -> KResult<()> {
        let _span =
            tracing::debug_span!("kvm_set_memory_attributes", attrs.address, attrs.size, attrs.attributes).entered();
        if !self.profile().config.memory_attributes {
            return Err(Errno::ENOTTY);
        }
        if attrs.flags != 0 {
            return Err(Errno::EINVAL);
        }
        if attrs.attributes & !self.supported_mem_attributes() != 0 {
            return Err(Errno::EINVAL);
        }
        if attrs.size == 0 || attrs.address.checked_add(attrs.size).is_none() {
            return Err(Errno::EINVAL);
        }
        if attrs.address & (PAGE_SIZE - 1) != 0 || attrs.size & (PAGE_SIZE - 1) != 0 {
            return Err(Errno::EINVAL);
        }
        let start = Gfn(attrs.address >> PAGE_SHIFT);
        let end = Gfn((attrs.address + attrs.size) >> PAGE_SHIFT);
        self.vm_set_mem_attributes(start, end, attrs.attributes)
    }

    /// `kvm_vm_set_mem_attributes`. M8's call half holds by this function's order, as in the
    /// kernel: the no-op and reservation-failure returns come before anything is invalidated or
    /// stored (`tests/tests/integration/seed_errors/` asserts both leave no MMU request and the
    /// sequence unchanged), and every invalidation begun in the pre pass is ended in the post pass
    /// (M2 checks none is left open).
    #[doc(alias("kvm_pre_set_memory_attributes", "kvm_vm_set_mem_attributes"))]
    fn vm_set_mem_attributes(&self, start: Gfn, end: Gfn, attributes: u64) -> KResult<()> {
        let _slots_lock = self.lock_slots();
        // Nothing to do if the entire range has the desired attributes.
        if self.range_has_memory_attributes(start, end, u64::MAX, attributes) {
            return Ok(());
        }
        // xa_reserve for every index: the only step that can fail, and it changes nothing
        // observable when it does.
        if self.machine().inject.should_fail(FaultPoint::AllocXarray) {
            return Err(Errno::ENOMEM);
        }
        self.handle_gfn_range(
            start,
            end,
            |kvm, range, slot| {
                // kvm_pre_set_memory_attributes.
                kvm.mmu_invalidate_range_add(range.start, range.end);
                kvm.arch_pre_set_memory_attributes(range, slot, attributes)
            },
            &|kvm: &Kvm| kvm.mmu_invalidate_begin(),
            true,
        );
        for gfn in start.0..end.0 {
            if attributes == 0 {
                self.mem_attr_array.erase(gfn);
            } else {
                let stored = self.mem_attr_array.store(gfn, Some(attributes));
                self.machine()
                    .warnings
                    .warn_on(stored.is_err(), || "KVM_BUG_ON: xa_store after xa_reserve failed".into());
            }
        }
        self.handle_gfn_range(
            start,
            end,
            |kvm, range, slot| {
                kvm.arch_post_set_memory_attributes(range, slot, attributes);
                kvm.mmu().post_set_memory_attributes(kvm, range, attributes);
                false
            },
            &|kvm: &Kvm| kvm.mmu_invalidate_end(),
            false,
        );
        Ok(())
    }

    /// The stored attributes of `[start, end)`, as `(gfn, value)` (bounded by what is stored).
    pub(crate) fn attributes_in(&self, start: Gfn, end: Gfn) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if end.0 <= start.0 {
            return out;
        }
        let mut index = start.0;
        while let Some(value) = self.mem_attr_array.find(&mut index, end.0 - 1) {
            out.push((index, value));
            if index >= end.0 - 1 {
                break;
            }
            index += 1;
        }
        out
    }

    /// x86 `kvm_arch_pre_set_memory_attributes`: (v6.18, since the v6.15 fix "Prevent installing
    /// hugepages when mem attributes are changing") add the head and tail huge pages that
    /// straddle the range, lie inside the slot and are not already MIXED to the invalidation, so
    /// no fault installs a huge page over gfns whose attributes are changing; then zap the
    /// mappings of the kind being converted away from.
    #[doc(alias = "kvm_arch_pre_set_memory_attributes")]
    fn arch_pre_set_memory_attributes(&self, range: &KvmGfnRange, slot: &MemslotRef<'_>, attributes: u64) -> bool {
        if self.machine().warnings.warn_on_once(!self.has_private_mem(), || {
            "kvm_arch_pre_set_memory_attributes on a VM without private memory".into()
        }) {
            return false;
        }
        if self.profile().version == KernelVersion::V6_18 {
            if self
                .machine()
                .warnings
                .warn_on_once(range.end <= range.start, || "kvm_arch_pre_set_memory_attributes: empty range".into())
            {
                return false;
            }
            let slot_end = slot.base_gfn().0 + slot.npages();
            for level in PgLevel::HUGE {
                let start = level.round(range.start.0);
                let end = level.round(range.end.0 - 1);
                let nr_pages = level.pages();
                if (start != range.start.0 || start + nr_pages > range.end.0)
                    && start >= slot.base_gfn().0
                    && start + nr_pages <= slot_end
                    && !slot.hugepage_test_mixed(Gfn(start), level)
                {
                    self.mmu_invalidate_range_add(Gfn(start), Gfn(start + nr_pages));
                }
                if end == start {
                    continue;
                }
                if end + nr_pages <= slot_end && !slot.hugepage_test_mixed(Gfn(end), level) {
                    self.mmu_invalidate_range_add(Gfn(end), Gfn(end + nr_pages));
                }
            }
        }
        let filter =
            if attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 { AttrFilter::Shared } else { AttrFilter::Private };
        let range = KvmGfnRange { attr_filter: filter, ..*range };
        self.mmu().unmap_gfn_range(self, &range)
    }

    /// `hugepage_has_attrs`: every gfn of the level-`level` huge page at `gfn` has exactly
    /// `attrs` (1G: every 2M part is not MIXED and its first gfn has `attrs`).
    fn hugepage_has_attrs(&self, slot: &MemslotRef<'_>, gfn: Gfn, level: PgLevel, attrs: u64) -> bool {
        let start = gfn.0;
        let end = start + level.pages();
        if level == PgLevel::Level2M {
            return self.range_has_memory_attributes(Gfn(start), Gfn(end), u64::MAX, attrs);
        }
        let step = level.lower().pages();
        (start..end).step_by(step as usize).all(|gfn| {
            !slot.hugepage_test_mixed(Gfn(gfn), level.lower()) && self.get_memory_attributes(Gfn(gfn)) == attrs
        })
    }

    /// x86 `kvm_arch_post_set_memory_attributes`: recompute `KVM_LPAGE_MIXED_FLAG` for the head
    /// and tail huge pages straddling the range (when inside the slot) and clear it for the huge
    /// pages the range covers, 2M before 1G (1G consumes the 2M results). `mmu_lock` held for
    /// write, `slots_lock` held.
    #[doc(alias = "kvm_arch_post_set_memory_attributes")]
    pub(crate) fn arch_post_set_memory_attributes(&self, range: &KvmGfnRange, slot: &MemslotRef<'_>, attrs: u64) {
        self.assert_mmu_lock_held();
        if self.machine().warnings.warn_on_once(!self.has_private_mem(), || {
            "kvm_arch_post_set_memory_attributes on a VM without private memory".into()
        }) {
            return;
        }
        let slot_start = slot.base_gfn().0;
        let slot_end = slot_start + slot.npages();
        for level in PgLevel::HUGE {
            let nr_pages = level.pages();
            let mut gfn = level.round(range.start.0);
            // The head page, if it straddles the range.
            if gfn != range.start.0 || gfn + nr_pages > range.end.0 {
                // Skip mixed tracking if the aligned gfn isn't covered by the memslot.
                if gfn >= slot_start && gfn + nr_pages <= slot_end {
                    let has = self.hugepage_has_attrs(slot, Gfn(gfn), level, attrs);
                    slot.hugepage_set_mixed(Gfn(gfn), level, !has);
                }
                gfn += nr_pages;
            }
            // Pages entirely covered by the range have only the attributes just set.
            while gfn + nr_pages <= range.end.0 {
                slot.hugepage_set_mixed(Gfn(gfn), level, false);
                gfn += nr_pages;
            }
            // The tail page, if it straddles the range and is contained by the memslot.
            if gfn < range.end.0 && gfn + nr_pages <= slot_end {
                let has = self.hugepage_has_attrs(slot, Gfn(gfn), level, attrs);
                slot.hugepage_set_mixed(Gfn(gfn), level, !has);
            }
        }
    }

    /// x86 `kvm_mmu_init_memslot_memory_attributes`: the MIXED flags of a new slot, for every
    /// huge page wholly inside it, from the current attributes. (Fast path, the same result: a
    /// slot without any stored attribute has no MIXED page.)
    #[doc(alias = "kvm_mmu_init_memslot_memory_attributes")]
    pub(crate) fn mmu_init_memslot_memory_attributes(&self, slot: MemslotRef<'_>) {
        if !self.has_private_mem() {
            return;
        }
        let base = slot.base_gfn().0;
        let slot_end = base + slot.npages();
        // Fast path: no attribute stored over the slot, nothing can be MIXED.
        let mut first = base;
        if slot_end == base || self.mem_attr_array.find(&mut first, slot_end - 1).is_none() {
            return;
        }
        for level in PgLevel::HUGE {
            for gfn in Self::huge_pages_inside(base, slot_end, level) {
                let attrs = self.get_memory_attributes(Gfn(gfn));
                let has = self.hugepage_has_attrs(&slot, Gfn(gfn), level, attrs);
                slot.hugepage_set_mixed(Gfn(gfn), level, !has);
            }
        }
    }

    /// The first gfns of the level-`level` huge pages wholly inside `[base, end)`.
    pub(crate) fn huge_pages_inside(base: u64, end: u64, level: PgLevel) -> impl Iterator<Item = u64> {
        let nr_pages = level.pages();
        let mut start = level.round(base);
        if start < base {
            start += nr_pages;
        }
        let end = level.round(end);
        (start..end.max(start)).step_by(nr_pages as usize)
    }

    /// What `KVM_LPAGE_MIXED_FLAG` of the huge page at `gfn` must be, recomputed from the
    /// attribute xarray alone (for M8): the attributes differ inside it, or (1G) some 2M part is
    /// MIXED by this same definition.
    pub fn recompute_mixed(&self, gfn: Gfn, level: PgLevel) -> bool {
        let first = self.get_memory_attributes(gfn);
        match level {
            PgLevel::Level4K => false,
            PgLevel::Level2M => !self.range_has_memory_attributes(gfn, gfn.offset(level.pages()), u64::MAX, first),
            PgLevel::Level1G => (gfn.0..gfn.0 + level.pages()).step_by(PgLevel::Level2M.pages() as usize).any(|sub| {
                self.recompute_mixed(Gfn(sub), PgLevel::Level2M) || self.get_memory_attributes(Gfn(sub)) != first
            }),
        }
    }

    /// `kvm_handle_gfn_range`: run `handler` on every memslot's part of `[start, end)`, taking
    /// `mmu_lock` and calling `on_lock` at the first memslot found; flush if asked and needed.
    #[doc(alias = "kvm_handle_gfn_range")]
    fn handle_gfn_range(
        &self,
        start: Gfn,
        end: Gfn,
        mut handler: impl FnMut(&Kvm, &KvmGfnRange, &MemslotRef<'_>) -> bool,
        on_lock: &dyn Fn(&Kvm),
        flush_on_ret: bool,
    ) {
        let srcu = self.srcu_read_lock();
        let mut mmu_lock = None;
        let mut flush = false;
        for entry in self.memslots(&srcu).iter() {
            let slot_start = entry.base_gfn.max(start.0);
            let slot_end = (entry.base_gfn + entry.npages).min(end.0);
            if slot_start >= slot_end {
                continue;
            }
            if mmu_lock.is_none() {
                mmu_lock = Some(self.mmu_lock_write());
                on_lock(self);
            }
            let range = KvmGfnRange {
                start: Gfn(slot_start),
                end: Gfn(slot_end),
                slot_id: entry.id,
                attr_filter: AttrFilter::Shared,
                may_block: true,
            };
            flush |= handler(self, &range, &self.memslot(entry));
        }
        if flush_on_ret && flush {
            self.mmu().flush_remote_tlbs(self);
        }
        drop(mmu_lock);
    }
}
