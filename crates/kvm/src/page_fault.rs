//! The x86 TDP page-fault path (`arch/x86/kvm/mmu/mmu.c`, `mmu_internal.h`), one function per
//! kernel function, around the fault itself: [`KvmPageFault`] is `struct kvm_page_fault`, built
//! by `kvm_mmu_do_page_fault` and filled in as it moves along, as in the kernel:
//!
//! ```text
//! kvm_mmu_page_fault → kvm_mmu_do_page_fault            the fault's arguments, root and gfn
//!   kvm_tdp_mmu_page_fault                              (kvm_tdp_page_fault)
//!     mmu_topup_memory_caches
//!     kvm_mmu_faultin_pfn                               mmu_seq, the checks before the pfn
//!       __kvm_mmu_faultin_pfn                           pfn, map_writable, max_level
//!         kvm_mmu_faultin_pfn_gmem | hva_to_pfn
//!       kvm_handle_error_pfn
//!     read_lock(mmu_lock)
//!     is_page_fault_stale
//!     kvm_tdp_mmu_map
//!       kvm_mmu_hugepage_adjust                         req_level, goal_level, pfn aligned
//!         kvm_mmu_max_mapping_level
//!     read_unlock(mmu_lock)
//!     kvm_mmu_finish_page_fault                         the faultin reference put
//! ```
//!
//! The steps that may end the fault early return `ControlFlow`: `Continue` is `RET_PF_CONTINUE`,
//! `Break(ret)` the fault's `RET_PF_*`; a negative errno (a memory-fault exit, a signal) is the
//! `Err` of the `Result` around it.
//!
//! The whole fault runs in one `kvm->srcu` read section, as it does in the kernel (the vCPU holds
//! it from the exit to the next entry): the memslot the fault resolved stays valid until it
//! finishes, and a memslot delete or move waits for it in `synchronize_srcu`.

use crate::arch::{PgLevel, KVM_MAX_HUGEPAGE_LEVEL};
use crate::guest_memfd::kvm_gmem_get_pfn;
use crate::memslot::{
    MemslotRef, KVM_MEMSLOT_GMEM_ONLY, KVM_MEMSLOT_INVALID, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
};
use crate::profile::{Fix, KernelVersion};
use crate::tdp_mmu::{MapResult, Spte, TdpMmu};
use crate::tlb::ProtocolWeakening;
use crate::types::{Gfn, Gpa};
use crate::vcpu::{KvmVcpu, RetPf, RunError, VcpuExit, KVM_MEMORY_EXIT_FLAG_PRIVATE};
use crate::vm::Kvm;
use gmem_mm::folio::Folio;
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::vma::Mm;
use gmem_mm::{Errno, Pfn};
use gmem_sync::atomic::Ordering;
use std::ops::ControlFlow;

/// `struct kvm_page_fault`: one TDP fault, from its arguments to what it mapped. `'s` is the SRCU
/// read section the memslot comes from.
#[doc(alias = "kvm_page_fault")]
#[derive(Debug)]
pub struct KvmPageFault<'s> {
    /// `fault->addr`: the faulting gpa, with a TDX shared bit if it has one.
    pub addr: u64,
    /// `fault->prefetch`: a pre-fault (`KVM_PRE_FAULT_MEMORY`, TDX's populate), not a guest
    /// access: the new leaf is not marked accessed.
    pub prefetch: bool,
    /// `fault->write`.
    pub write: bool,
    /// `fault->is_private`.
    pub is_private: bool,
    /// The root the fault installs into (`tdp_mmu_get_root_for_fault`), with `fault->gfn`.
    pub root: FaultRoot,
    /// `fault->gfn`: the gfn memslots and attributes know (without the direct bits).
    pub gfn: Gfn,
    /// `fault->slot`.
    pub slot: Option<MemslotRef<'s>>,
    /// The root's `mmu_valid_gen` when the fault began: a zap-all since makes the root
    /// obsolete (`is_obsolete_sp` in `is_page_fault_stale`).
    pub root_gen: u64,
    /// `fault->mmu_seq`: `mmu_invalidate_seq` before the pfn was resolved.
    pub mmu_seq: u64,
    /// `fault->max_level`: the highest level the fault may map (guest_memfd's folio clamps it).
    pub max_level: PgLevel,
    /// `fault->req_level`: what the memslot, the host mapping and guest_memfd allow
    /// (`kvm_mmu_hugepage_adjust`).
    pub req_level: PgLevel,
    /// `fault->goal_level`: the level of the leaf the fault installs.
    pub goal_level: PgLevel,
    /// `fault->pfn`: the resolved frame, aligned down to `goal_level` once adjusted.
    pub pfn: Pfn,
    /// `fault->refcounted_page`: the frame whose reference faultin took (not the aligned-down
    /// head of a huge mapping), put by `kvm_mmu_finish_page_fault`.
    pub refcounted_page: Option<Pfn>,
    /// `fault->map_writable`.
    pub map_writable: bool,
    /// Whether the fault installed a leaf (M7: a memory-fault exit installs none).
    pub installed: bool,
}

/// The root a fault installs into (`tdp_mmu_get_root_for_fault`).
#[doc(alias = "tdp_mmu_get_root_for_fault")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultRoot {
    /// The direct root, whose leaves for gfn `g` are at `g | direct_bits` (`kvm_gfn_root_bits`).
    Direct {
        /// `kvm_gfn_direct_bits`: 0 unless the VM has a mirror root (TDX's shared bit).
        direct_bits: u64,
    },
    /// The mirror root (a private gpa of a VM with mirrored TDP).
    Mirror,
}

/// `kvm_mmu_prepare_memory_fault_exit`: the fault ends in `KVM_EXIT_MEMORY_FAULT` for its page,
/// with `errno` as `KVM_RUN`'s return.
#[doc(alias = "kvm_mmu_prepare_memory_fault_exit")]
pub(crate) fn memory_fault_exit(gfn: Gfn, is_private: bool, errno: Errno) -> RunError {
    RunError::Exit(VcpuExit::MemoryFault {
        gpa: gfn.to_gpa().0,
        size: PAGE_SIZE,
        flags: if is_private { KVM_MEMORY_EXIT_FLAG_PRIVATE } else { 0 },
        errno,
    })
}

/// `kvm_mmu_page_fault`, the handler of a fault the guest took (an EPT/NPT violation) at one
/// gpa: resolve and install, or tell why not, and count it in `vcpu->stat` (where v6.11 and
/// later count; a pre-fault goes through `kvm_mmu_do_page_fault` and counts nothing).
/// `pf_retry` is the model's own. `mm` is the VM owner's address space (`kvm->mm`), for the
/// shared backing.
pub fn kvm_mmu_page_fault(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    gpa: u64,
    is_private: bool,
    write: bool,
) -> Result<RetPf, RunError> {
    KvmVcpu::count(&vcpu.stat.pf_taken);
    let result = kvm_mmu_do_page_fault(kvm, vcpu, mm, gpa, is_private, write, false).map(|(ret, _)| ret);
    match result {
        Ok(RetPf::Fixed) => KvmVcpu::count(&vcpu.stat.pf_fixed),
        Ok(RetPf::Emulate) => KvmVcpu::count(&vcpu.stat.pf_emulate),
        Ok(RetPf::Spurious) => KvmVcpu::count(&vcpu.stat.pf_spurious),
        Ok(RetPf::Retry) => KvmVcpu::count(&vcpu.stat.pf_retry),
        Err(_) => {}
    }
    result
}

/// `kvm_mmu_do_page_fault`: build the fault, run it through the TDP MMU (in a `kvm->srcu` read
/// section), and return its result with its `goal_level` (what `kvm_tdp_map_page`
/// hands back to pre-fault). A private fault that would need emulation becomes a memory-fault
/// exit. M7 is asserted on the way out.
pub(crate) fn kvm_mmu_do_page_fault(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    mm: &Mm,
    gpa: u64,
    is_private: bool,
    write: bool,
    prefetch: bool,
) -> Result<(RetPf, PgLevel), RunError> {
    let tdp = kvm.tdp()?;
    // `fault.gfn = gpa_to_gfn(fault.addr) & ~kvm_gfn_direct_bits(kvm)`: the gfn memslots and
    // attributes know. `tdp_mmu_get_root_for_fault` picks the mirror root for a gpa without the
    // direct bits (`kvm_is_addr_direct`); without a mirror root, the direct root.
    let (root, gfn) = if kvm.has_mirrored_tdp() {
        let direct_bits = kvm.gfn_direct_bits();
        let gfn = Gfn(Gpa(gpa).to_gfn().0 & !direct_bits);
        (if kvm.is_addr_direct(gpa) { FaultRoot::Direct { direct_bits } } else { FaultRoot::Mirror }, gfn)
    } else {
        (FaultRoot::Direct { direct_bits: 0 }, Gpa(gpa).to_gfn())
    };
    let srcu = kvm.srcu_read_lock();
    let mut fault = KvmPageFault {
        addr: gpa,
        prefetch,
        write,
        is_private,
        root,
        gfn,
        slot: kvm.gfn_to_memslot(&srcu, gfn),
        // The vCPU's root as the fault begins (the kernel loaded it at entry).
        root_gen: tdp.mmu_valid_gen(),
        mmu_seq: 0,
        max_level: KVM_MAX_HUGEPAGE_LEVEL,
        req_level: PgLevel::Level4K,
        goal_level: PgLevel::Level4K,
        pfn: Pfn(0),
        refcounted_page: None,
        map_writable: false,
        installed: false,
    };
    let mut result = kvm_tdp_mmu_page_fault(kvm, vcpu, tdp, mm, &mut fault);
    // "Not sure what's happening, but punt to userspace and hope that they can fix it by
    // changing memory attributes."
    if result == Ok(RetPf::Emulate) && is_private {
        result = Err(memory_fault_exit(gfn, true, Errno::EFAULT));
    }
    check_memory_fault_exit(kvm, &result, &fault);
    // A retried fault mapped nothing: its level means nothing to pre-fault.
    let level = if result == Ok(RetPf::Retry) { PgLevel::Level4K } else { fault.goal_level };
    result.map(|ret| (ret, level))
}

/// M7 (arch-and-mmu.md §5.1), checked at every fault that exits with `KVM_EXIT_MEMORY_FAULT`
/// and reported as a WARN if broken: the gpa is the fault's page (`gfn_to_gpa(fault->gfn)`,
/// without the direct bits); the size is 4K; the flags are exactly PRIVATE iff the access was
/// private; the fault installed no SPTE.
fn check_memory_fault_exit(kvm: &Kvm, result: &Result<RetPf, RunError>, fault: &KvmPageFault<'_>) {
    let Err(RunError::Exit(VcpuExit::MemoryFault { gpa: exit_gpa, size, flags, .. })) = *result else { return };
    let gpa = fault.gfn.to_gpa().0;
    let expected_flags = if fault.is_private { KVM_MEMORY_EXIT_FLAG_PRIVATE } else { 0 };
    kvm.machine().warnings.warn_on(
        exit_gpa != gpa || size != PAGE_SIZE || flags != expected_flags || fault.installed,
        || {
            format!(
                "M7: memory-fault exit for a {} access at {:#x}: gpa {exit_gpa:#x} size {size:#x} flags {flags:#x}{}",
                if fault.is_private { "private" } else { "shared" },
                fault.addr,
                if fault.installed { ", and the fault installed an SPTE" } else { "" }
            )
        },
    );
}

/// `kvm_tdp_mmu_page_fault`: top up the caches, fault the pfn in, then under `mmu_lock` for read
/// install it unless the fault went stale meanwhile, and put faultin's reference.
fn kvm_tdp_mmu_page_fault(
    kvm: &Kvm,
    vcpu: &KvmVcpu,
    tdp: &TdpMmu,
    mm: &Mm,
    fault: &mut KvmPageFault<'_>,
) -> Result<RetPf, RunError> {
    // mmu_topup_memory_caches: the external-SPT cache, before anything else.
    if kvm.has_mirrored_tdp() {
        vcpu.topup_external_spt_cache(kvm)?;
    }
    if let ControlFlow::Break(ret) = kvm_mmu_faultin_pfn(kvm, mm, fault)? {
        return Ok(ret);
    }
    // The window between the pfn and mmu_lock, where a racing invalidation slips in.
    tdp.run_fault_hook(kvm, fault.gfn, fault.pfn);
    let mmu_lock = kvm.mmu_lock_read();
    // Skipped only by the test-only weakening that shows the models catch a stale install.
    let check_stale = tdp.weakening() != ProtocolWeakening::NoRetryCheck;
    let ret = if check_stale && is_page_fault_stale(kvm, tdp, fault) {
        RetPf::Retry
    } else {
        kvm_tdp_mmu_map(kvm, vcpu, tdp, mm, fault)
    };
    drop(mmu_lock);
    kvm_mmu_finish_page_fault(kvm, fault);
    Ok(ret)
}

/// `kvm_mmu_faultin_pfn`: snapshot `mmu_invalidate_seq` (it also detects attribute changes),
/// check the access kind against the gfn's attributes, the memslot and a racing invalidation,
/// then resolve the pfn ([`__kvm_mmu_faultin_pfn`]) and check for an invalidation once more.
fn kvm_mmu_faultin_pfn(kvm: &Kvm, mm: &Mm, fault: &mut KvmPageFault<'_>) -> Result<ControlFlow<RetPf>, RunError> {
    fault.mmu_seq = kvm.mmu_invalidate_seq();
    if fault.is_private != kvm.mem_is_private(fault.gfn) {
        return Err(memory_fault_exit(fault.gfn, fault.is_private, Errno::EFAULT));
    }
    let Some(slot) = fault.slot else {
        // kvm_handle_noslot_fault: MMIO.
        return Ok(ControlFlow::Break(RetPf::Emulate));
    };
    // A memslot being deleted or moved: retry, so that its SPTEs are zapped before the gfn maps
    // again. A pre-fault punts to user space instead (F13): its loop would hold the SRCU read
    // section the update waits for.
    if slot.flags() & KVM_MEMSLOT_INVALID != 0 {
        if fault.prefetch && kvm.profile().has_fix(Fix::F13PrefaultInvalidSlot) {
            return Err(RunError::Errno(Errno::EAGAIN));
        }
        return Ok(ControlFlow::Break(RetPf::Retry));
    }
    if kvm.mmu_invalidate_retry_gfn_unsafe(fault.mmu_seq, fault.gfn) {
        return Ok(ControlFlow::Break(RetPf::Retry));
    }
    if let ControlFlow::Break(ret) = __kvm_mmu_faultin_pfn(kvm, mm, slot, fault)? {
        return Ok(ControlFlow::Break(ret));
    }
    // Again, purely to avoid contending mmu_lock for a fault that will retry anyway.
    if kvm.mmu_invalidate_retry_gfn_unsafe(fault.mmu_seq, fault.gfn) {
        kvm_mmu_finish_page_fault(kvm, fault);
        return Ok(ControlFlow::Break(RetPf::Retry));
    }
    Ok(ControlFlow::Continue(()))
}

/// `__kvm_mmu_faultin_pfn`: guest_memfd for a private fault and for a v6.18 `GMEM_ONLY` slot
/// ([`kvm_mmu_faultin_pfn_gmem`]); otherwise the slot's `userspace_addr` through the owner's
/// page tables (`__kvm_faultin_pfn` → `hva_to_pfn`), whose error pfns [`kvm_handle_error_pfn`]
/// turns into the fault's result.
fn __kvm_mmu_faultin_pfn(
    kvm: &Kvm,
    mm: &Mm,
    slot: MemslotRef<'_>,
    fault: &mut KvmPageFault<'_>,
) -> Result<ControlFlow<RetPf>, RunError> {
    if fault.is_private || slot.flags() & KVM_MEMSLOT_GMEM_ONLY != 0 {
        return kvm_mmu_faultin_pfn_gmem(kvm, slot, fault).map(|()| ControlFlow::Continue(()));
    }
    fault.map_writable = slot.flags() & KVM_MEM_READONLY == 0;
    // A write to a read-only slot fails before GUP (`KVM_HVA_ERR_RO_BAD`).
    if fault.write && !fault.map_writable {
        return kvm_handle_error_pfn(ErrorPfn::RoFault).map(ControlFlow::Break);
    }
    let hva = slot.userspace_addr().wrapping_add((fault.gfn.0 - slot.base_gfn().0) << PAGE_SHIFT);
    match mm.get_user_page(hva, fault.map_writable) {
        Ok(pfn) => {
            fault.pfn = pfn;
            fault.refcounted_page = Some(pfn);
            Ok(ControlFlow::Continue(()))
        }
        Err(Errno::EHWPOISON) => kvm_handle_error_pfn(ErrorPfn::Hwpoison).map(ControlFlow::Break),
        Err(_) => kvm_handle_error_pfn(ErrorPfn::Fault).map(ControlFlow::Break),
    }
}

/// The error pfns `__kvm_faultin_pfn` can resolve to (`is_error_pfn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorPfn {
    /// `KVM_PFN_ERR_RO_FAULT`: a write to a read-only memslot.
    RoFault,
    /// `KVM_PFN_ERR_HWPOISON`: the page is poisoned.
    Hwpoison,
    /// `KVM_PFN_ERR_FAULT`: GUP failed.
    Fault,
}

/// `kvm_mmu_faultin_pfn_gmem`: the pfn from guest_memfd (`kvm_gmem_get_pfn`), whose errors are
/// memory-fault exits, and the fault's `max_level` from the folio's order (v6.14: clamped by
/// the vendor hook here, `kvm_max_private_mapping_level`; v6.18 asks the hook later, in
/// [`kvm_mmu_max_mapping_level`]).
fn kvm_mmu_faultin_pfn_gmem(kvm: &Kvm, slot: MemslotRef<'_>, fault: &mut KvmPageFault<'_>) -> Result<(), RunError> {
    if !slot.has_gmem() {
        return Err(memory_fault_exit(fault.gfn, fault.is_private, Errno::EFAULT));
    }
    let got = kvm_gmem_get_pfn(kvm, slot, fault.gfn)
        .map_err(|errno| memory_fault_exit(fault.gfn, fault.is_private, errno))?;
    let max_order = match kvm.test_hooks.gmem_max_order.load(Ordering::Relaxed) {
        u8::MAX => got.max_order,
        order => order,
    };
    fault.max_level = match kvm.profile().version {
        KernelVersion::V6_14 => kvm_max_private_mapping_level(kvm, got.pfn, fault.max_level, max_order),
        KernelVersion::V6_18 => PgLevel::for_order(max_order),
    };
    // The folio reference `got.page` becomes the fault's (put by kvm_mmu_finish_page_fault).
    fault.pfn = got.pfn;
    fault.refcounted_page = Some(got.pfn);
    fault.map_writable = slot.flags() & KVM_MEM_READONLY == 0;
    Ok(())
}

/// `kvm_handle_error_pfn`: a write to a read-only slot is emulated (`RET_PF_EMULATE`, an MMIO
/// exit); a poisoned page sends SIGBUS to the vCPU thread (`kvm_send_hwpoison_signal`, then
/// `RET_PF_RETRY`, which the pending signal ends); anything else is EFAULT.
fn kvm_handle_error_pfn(pfn: ErrorPfn) -> Result<RetPf, RunError> {
    match pfn {
        ErrorPfn::RoFault => Ok(RetPf::Emulate),
        ErrorPfn::Hwpoison => Err(RunError::Sigbus),
        ErrorPfn::Fault => Err(RunError::Errno(Errno::EFAULT)),
    }
}

/// `is_page_fault_stale`, with `mmu_lock` held: the root went obsolete (a zap-all), or an
/// invalidation covering the gfn ran since `mmu_seq` was taken.
fn is_page_fault_stale(kvm: &Kvm, tdp: &TdpMmu, fault: &KvmPageFault<'_>) -> bool {
    if tdp.mmu_valid_gen() != fault.root_gen {
        return true;
    }
    fault.slot.is_some() && kvm.mmu_invalidate_retry_gfn(fault.mmu_seq, fault.gfn)
}

/// `kvm_tdp_mmu_map`: adjust the level ([`kvm_mmu_hugepage_adjust`]), then install the leaf
/// whose first (memslot) gfn is the fault's gfn rounded to the goal level: at that gfn with the
/// direct bits in the direct root, at the gfn itself in the mirror root.
fn kvm_tdp_mmu_map(kvm: &Kvm, vcpu: &KvmVcpu, tdp: &TdpMmu, mm: &Mm, fault: &mut KvmPageFault<'_>) -> RetPf {
    kvm_mmu_hugepage_adjust(kvm, mm, fault);
    let mem = &kvm.machine().mem;
    let base = Gfn(fault.goal_level.round(fault.gfn.0));
    let spte = Spte {
        pfn: fault.pfn,
        level: fault.goal_level,
        writable: fault.map_writable,
        private: fault.is_private,
        accessed: !fault.prefetch,
        generation: if mem.is_valid_pfn(fault.pfn) { mem.generation(fault.pfn) } else { 0 },
    };
    let result = match fault.root {
        FaultRoot::Direct { direct_bits } => tdp.map(kvm, fault.gfn, Gfn(base.0 | direct_bits), spte, fault.mmu_seq),
        FaultRoot::Mirror => tdp.map_mirror(kvm, vcpu, fault.gfn, spte, fault.mmu_seq),
    };
    match result {
        MapResult::Fixed => {
            fault.installed = true;
            RetPf::Fixed
        }
        MapResult::Spurious => RetPf::Spurious,
        MapResult::Retry => RetPf::Retry,
    }
}

/// `kvm_mmu_hugepage_adjust`, with `mmu_lock` held: the level the fault maps at. Nothing above
/// 4K for a fault capped at 4K or under dirty logging; otherwise `req_level` is what the memslot
/// and the backing allow ([`kvm_mmu_max_mapping_level`]), and a huge `goal_level` aligns the pfn
/// down to the huge page's head.
fn kvm_mmu_hugepage_adjust(kvm: &Kvm, mm: &Mm, fault: &mut KvmPageFault<'_>) {
    if fault.max_level == PgLevel::Level4K {
        return;
    }
    // A noslot pfn (only the weakened protocol reaches the map without its slot).
    let Some(slot) = fault.slot else { return };
    if slot.flags() & KVM_MEM_LOG_DIRTY_PAGES != 0 {
        return;
    }
    fault.req_level = kvm_mmu_max_mapping_level(kvm, mm, slot, fault);
    if fault.req_level == PgLevel::Level4K {
        return;
    }
    fault.goal_level = fault.req_level;
    let (gfn, pfn, goal_level) = (fault.gfn, fault.pfn, fault.goal_level);
    let mask = goal_level.pages() - 1;
    kvm.machine().warnings.warn_on((gfn.0 & mask) != (pfn.0 & mask), || {
        format!("VM_BUG_ON: gfn {gfn} and {pfn:?} are not aligned alike for a {goal_level} mapping")
    });
    fault.pfn = Pfn(pfn.0 & !mask);
}

/// `kvm_mmu_finish_page_fault` → `kvm_release_faultin_page`: put the reference faultin took, on
/// the page it resolved (not the aligned-down head of a huge mapping).
#[doc(alias = "kvm_release_faultin_page")]
fn kvm_mmu_finish_page_fault(kvm: &Kvm, fault: &mut KvmPageFault<'_>) {
    if let Some(pfn) = fault.refcounted_page.take() {
        Folio::from_pfn(&kvm.machine().mem, pfn).put();
    }
}

/// `kvm_max_private_mapping_level` (v6.14): the private fault's max level, clamped by the
/// guest_memfd folio order and then by the vendor hook.
fn kvm_max_private_mapping_level(kvm: &Kvm, pfn: Pfn, max_level: PgLevel, gmem_order: u8) -> PgLevel {
    if max_level == PgLevel::Level4K {
        return PgLevel::Level4K;
    }
    let max_level = PgLevel::for_order(gmem_order).min(max_level);
    if max_level == PgLevel::Level4K {
        return PgLevel::Level4K;
    }
    match kvm.gmem_max_mapping_level(pfn, true) {
        Some(req) => max_level.min(req),
        None => max_level,
    }
}

/// `kvm_gmem_max_mapping_level` (v6.18): the level guest_memfd's folio allows (the fault's
/// `max_level`, from `max_order`), clamped by the vendor hook.
fn kvm_gmem_max_mapping_level(kvm: &Kvm, fault_max_level: PgLevel, pfn: Pfn, is_private: bool) -> PgLevel {
    if fault_max_level == PgLevel::Level4K {
        return PgLevel::Level4K;
    }
    match kvm.gmem_max_mapping_level(pfn, is_private) {
        Some(coco) => fault_max_level.min(coco),
        None => fault_max_level,
    }
}

/// `host_pfn_mapping_level`: the level at which the host maps the hva of `gfn` (a lockless walk
/// of the owner's page tables in the kernel: `Mm::host_mapping_order` must take no lock that
/// nests outside `mmu_lock`).
fn host_pfn_mapping_level(kvm: &Kvm, mm: &Mm, slot: MemslotRef<'_>, gfn: Gfn) -> PgLevel {
    let hva = slot.userspace_addr().wrapping_add((gfn.0 - slot.base_gfn().0) << PAGE_SHIFT);
    let order = match kvm.test_hooks.host_mapping_order.load(Ordering::Relaxed) {
        u8::MAX => mm.host_mapping_order(hva),
        order => order,
    };
    PgLevel::for_order(order)
}

/// `kvm_mmu_max_mapping_level` → `__kvm_mmu_max_mapping_level`, with `mmu_lock` held: lower the
/// fault's `max_level` until `disallow_lpage` is 0 there; then a private fault (v6.14) keeps
/// that, and otherwise the host's level clamps it (v6.18: for a private fault or a `GMEM_ONLY`
/// slot, guest_memfd's level and the vendor hook instead).
#[doc(alias = "__kvm_mmu_max_mapping_level")]
fn kvm_mmu_max_mapping_level(kvm: &Kvm, mm: &Mm, slot: MemslotRef<'_>, fault: &KvmPageFault<'_>) -> PgLevel {
    kvm.assert_mmu_lock_held();
    let (gfn, max_level, is_private) = (fault.gfn, fault.max_level, fault.is_private);
    let mut level = max_level.min(KVM_MAX_HUGEPAGE_LEVEL);
    while level > PgLevel::Level4K && slot.disallow_lpage(gfn, level) != 0 {
        level = level.lower();
    }
    match kvm.profile().version {
        KernelVersion::V6_14 => {
            if is_private || level == PgLevel::Level4K {
                return level;
            }
            level.min(host_pfn_mapping_level(kvm, mm, slot, gfn))
        }
        KernelVersion::V6_18 => {
            if level == PgLevel::Level4K {
                return level;
            }
            let host_level = if is_private || slot.flags() & KVM_MEMSLOT_GMEM_ONLY != 0 {
                kvm_gmem_max_mapping_level(kvm, max_level, fault.pfn, is_private)
            } else {
                host_pfn_mapping_level(kvm, mm, slot, gfn)
            };
            level.min(host_level)
        }
    }
}
