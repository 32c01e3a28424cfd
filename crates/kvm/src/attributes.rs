//! Memory attributes: `KVM_SET_MEMORY_ATTRIBUTES` and the attribute queries the fault path and
//! populate use (`virt/kvm/kvm_main.c`: `kvm_vm_ioctl_set_mem_attributes`,
//! `kvm_vm_set_mem_attributes`, `kvm_handle_gfn_range`, `kvm_range_has_memory_attributes`;
//! `arch/x86/kvm/mmu/mmu.c`: `kvm_arch_pre_set_memory_attributes`).
//!
//! Attributes live in `kvm->mem_attr_array`, one xarray entry per gfn (no entry means 0). A change
//! is bracketed by an MMU invalidation over every memslot it touches: *pre-set* zaps the old kind
//! of mapping, the xarray is updated, *post-set* ends the invalidation. A request that changes
//! nothing opens no invalidation at all.

use crate::mmu::{AttrFilter, KvmGfnRange};
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
    pub fn supported_mem_attributes(&self) -> u64 {
        if self.has_private_mem() {
            KVM_MEMORY_ATTRIBUTE_PRIVATE
        } else {
            0
        }
    }

    /// `kvm_get_memory_attributes(kvm, gfn)`.
    pub fn get_memory_attributes(&self, gfn: Gfn) -> u64 {
        self.mem_attr_array.load(gfn.0).unwrap_or(0)
    }

    /// `kvm_mem_is_private(kvm, gfn)`.
    pub fn mem_is_private(&self, gfn: Gfn) -> bool {
        self.get_memory_attributes(gfn) & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0
    }

    /// `kvm_range_has_memory_attributes(kvm, start, end, mask, attrs)`: every gfn of
    /// `[start, end)` has `attrs` in the bits of `mask` (lock-free, as under RCU).
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

    /// `kvm_vm_set_mem_attributes`.
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
            |kvm, range| {
                kvm.mmu_invalidate_range_add(range.start, range.end);
                kvm.arch_pre_set_memory_attributes(range, attributes)
            },
            Kvm::mmu_invalidate_begin,
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
            |kvm, range| {
                kvm.mmu().post_set_memory_attributes(kvm, range, attributes);
                false
            },
            Kvm::mmu_invalidate_end,
            false,
        );
        Ok(())
    }

    /// x86 `kvm_arch_pre_set_memory_attributes`: zap the mappings of the kind being converted
    /// away from.
    fn arch_pre_set_memory_attributes(&self, range: &KvmGfnRange, attributes: u64) -> bool {
        if self.machine().warnings.warn_on_once(!self.has_private_mem(), || {
            "kvm_arch_pre_set_memory_attributes on a VM without private memory".into()
        }) {
            return false;
        }
        let filter =
            if attributes & KVM_MEMORY_ATTRIBUTE_PRIVATE != 0 { AttrFilter::Shared } else { AttrFilter::Private };
        let range = KvmGfnRange { attr_filter: filter, ..*range };
        self.mmu().unmap_gfn_range(self, &range)
    }

    /// `kvm_handle_gfn_range`: run `handler` on every memslot's part of `[start, end)`, taking
    /// `mmu_lock` and calling `on_lock` at the first memslot found; flush if asked and needed.
    fn handle_gfn_range(
        &self,
        start: Gfn,
        end: Gfn,
        mut handler: impl FnMut(&Kvm, &KvmGfnRange) -> bool,
        on_lock: fn(&Kvm),
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
            flush |= handler(self, &range);
        }
        if flush_on_ret && flush {
            self.mmu().flush_remote_tlbs(self);
        }
        drop(mmu_lock);
    }
}
