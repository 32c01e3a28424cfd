//! The software TDP MMU: one VM's two-dimensional page tables (`arch/x86/kvm/mmu/tdp_mmu.c`,
//! with the parts of `mmu.c` that drive them: `kvm_unmap_gfn_range`, `kvm_mmu_zap_all_fast`,
//! `kvm_arch_flush_shadow_memslot`).
//!
//! The page tables are kept as their leaves only: one SPTE per gfn, at 4K level (huge pages are
//! a later increment). Each SPTE records the pfn, whether it is writable, whether the fault that
//! installed it was private, the accessed bit, and the frame's generation at install time
//! ([`gmem_mm::page`]: the generation changes when the frame is freed), so that a mapping that
//! outlived its frame (INV-NO-STALE-PFN, M5) is detected exactly.
//!
//! Locking is the kernel's: faults install under `mmu_lock` held for **read** (the kernel's
//! atomic SPTE cmpxchg is the short `sptes` lock here), zaps run under `mmu_lock` held for
//! **write**. The SPTEs hold no page reference: only the invalidation protocol
//! (`mmu_invalidate_*` and the zaps) keeps them from outliving their frames, as in the kernel.
//!
//! vCPUs cache translations in their TLBs ([`crate::tlb`]); [`KvmMmu::flush_remote_tlbs`] is
//! `kvm_flush_remote_tlbs`: `KVM_REQ_TLB_FLUSH` on every vCPU with kick and wait, so when it
//! returns no vCPU can still translate through an SPTE zapped before the call.

use crate::mmu::{AttrFilter, KvmGfnRange, KvmMmu};
use crate::profile::VmType;
use crate::tlb::{ProtocolWeakening, KVM_REQ_TLB_FLUSH};
use crate::types::Gfn;
use crate::vm::{Kvm, MmuFactory};
use gmem_mm::Pfn;
use gmem_sync::atomic::{AtomicU64, AtomicU8, Ordering};
use gmem_sync::{Arc, LockClass, Mutex};
use std::collections::BTreeMap;
use std::fmt;

/// The leaf-SPTE store (stands in for the atomic SPTE updates of the TDP MMU).
static SPTES_LOCK: LockClass = LockClass::new("kvm->arch.tdp_mmu_sptes");
/// The test hook run between resolving a pfn and taking `mmu_lock`.
static FAULT_HOOK_LOCK: LockClass = LockClass::new("kvm->arch.tdp_mmu_fault_hook");

/// One present leaf SPTE (4K).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spte {
    /// The host frame it maps.
    pub pfn: Pfn,
    /// Writable (`map_writable`).
    pub writable: bool,
    /// Installed by a private fault (from guest_memfd).
    pub private: bool,
    /// The accessed bit.
    pub accessed: bool,
    /// The frame's generation when the SPTE was installed.
    pub generation: u64,
}

/// What installing a leaf did (`RET_PF_FIXED` / `RET_PF_SPURIOUS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapResult {
    /// A new SPTE was installed.
    Fixed,
    /// An SPTE was already present (another fault won the race).
    Spurious,
}

/// Counters of what the MMU did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TdpMmuStats {
    /// SPTEs installed.
    pub installed: u64,
    /// SPTEs zapped.
    pub zapped: u64,
    /// `kvm_flush_remote_tlbs` calls.
    pub remote_tlb_flushes: u64,
    /// `kvm_mmu_zap_all_fast` calls (roots made obsolete).
    pub zap_all_fast: u64,
}

type FaultHook = Box<dyn FnMut(&Kvm, Gfn, Pfn) + Send>;

/// The software TDP MMU of one VM.
pub struct TdpMmu {
    sptes: Mutex<BTreeMap<u64, Spte>>,
    /// `kvm->arch.mmu_valid_gen`: bumped when every root becomes obsolete.
    mmu_valid_gen: AtomicU64,
    installed: AtomicU64,
    zapped: AtomicU64,
    remote_tlb_flushes: AtomicU64,
    zap_all_fast: AtomicU64,
    weakening: AtomicU8,
    fault_hook: Mutex<Option<FaultHook>>,
}

impl fmt::Debug for TdpMmu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TdpMmu").field("sptes", &self.sptes.lock().len()).field("stats", &self.stats()).finish()
    }
}

impl Default for TdpMmu {
    fn default() -> Self {
        TdpMmu::new()
    }
}

impl TdpMmu {
    /// An MMU with no mappings.
    pub fn new() -> TdpMmu {
        TdpMmu {
            sptes: Mutex::new(&SPTES_LOCK, BTreeMap::new()),
            mmu_valid_gen: AtomicU64::new(0),
            installed: AtomicU64::new(0),
            zapped: AtomicU64::new(0),
            remote_tlb_flushes: AtomicU64::new(0),
            zap_all_fast: AtomicU64::new(0),
            weakening: AtomicU8::new(ProtocolWeakening::None as u8),
            fault_hook: Mutex::new(&FAULT_HOOK_LOCK, None),
        }
    }

    /// The factory that gives every new VM its own TDP MMU.
    pub fn factory() -> MmuFactory {
        Arc::new(|| Arc::new(TdpMmu::new()))
    }

    /// The SPTE of `gfn`, if present.
    pub fn lookup(&self, gfn: Gfn) -> Option<Spte> {
        self.sptes.lock().get(&gfn.0).copied()
    }

    /// Every present SPTE, by gfn.
    pub fn sptes(&self) -> Vec<(Gfn, Spte)> {
        self.sptes.lock().iter().map(|(&gfn, &spte)| (Gfn(gfn), spte)).collect()
    }

    /// A hardware walk of `gfn` (sets the accessed bit): the leaf, or `None` if not present (or
    /// not writable for a write): the access faults. The walk is atomic with respect to zaps, as
    /// the hardware's read of an SPTE is; what the caller does with the result afterwards is
    /// protected only by the TLB flush protocol.
    pub fn walk(&self, gfn: Gfn, write: bool) -> Option<Spte> {
        let mut sptes = self.sptes.lock();
        let spte = sptes.get_mut(&gfn.0).filter(|spte| spte.writable || !write)?;
        spte.accessed = true;
        Some(*spte)
    }

    /// Test-only: weakens the protocol so that the models can show they detect it
    /// ([`ProtocolWeakening::None`] restores the kernel's).
    pub fn weaken_for_test(&self, weakening: ProtocolWeakening) {
        self.weakening.store(weakening as u8, Ordering::Relaxed);
    }

    /// The current weakening (normally [`ProtocolWeakening::None`]).
    pub fn weakening(&self) -> ProtocolWeakening {
        ProtocolWeakening::from_raw(self.weakening.load(Ordering::Relaxed))
    }

    /// `kvm->arch.mmu_valid_gen`.
    pub fn mmu_valid_gen(&self) -> u64 {
        self.mmu_valid_gen.load(Ordering::Acquire)
    }

    /// The counters.
    pub fn stats(&self) -> TdpMmuStats {
        TdpMmuStats {
            installed: self.installed.load(Ordering::Relaxed),
            zapped: self.zapped.load(Ordering::Relaxed),
            remote_tlb_flushes: self.remote_tlb_flushes.load(Ordering::Relaxed),
            zap_all_fast: self.zap_all_fast.load(Ordering::Relaxed),
        }
    }

    /// Test hook: `hook` runs once, in the next fault, after the pfn was resolved and before
    /// `mmu_lock` is taken (where a racing invalidation can slip in).
    pub fn set_fault_hook(&self, mut hook: impl FnMut(&Kvm) + Send + 'static) {
        *self.fault_hook.lock() = Some(Box::new(move |kvm: &Kvm, _: Gfn, _: Pfn| hook(kvm)));
    }

    /// Like [`TdpMmu::set_fault_hook`], the hook also told the gfn and the pfn the fault resolved.
    pub fn set_fault_hook_pfn(&self, hook: impl FnMut(&Kvm, Gfn, Pfn) + Send + 'static) {
        *self.fault_hook.lock() = Some(Box::new(hook));
    }

    /// Runs (and consumes) the fault hook, if one is set.
    pub(crate) fn run_fault_hook(&self, kvm: &Kvm, gfn: Gfn, pfn: Pfn) {
        let hook = self.fault_hook.lock().take();
        if let Some(mut hook) = hook {
            hook(kvm, gfn, pfn);
        }
    }

    /// `kvm_tdp_mmu_map` at 4K: install the leaf for `gfn`. `mmu_lock` held for read, and the
    /// caller checked `is_page_fault_stale` under it; M1 (arch-and-mmu.md §5.1, no stale install)
    /// is asserted here with the fault's `mmu_seq` and reported as a WARN if broken.
    pub(crate) fn map(&self, kvm: &Kvm, gfn: Gfn, spte: Spte, mmu_seq: u64) -> MapResult {
        kvm.assert_mmu_lock_held();
        kvm.machine().warnings.warn_on_once(kvm.mmu_invalidate_retry_gfn(mmu_seq, gfn), || {
            format!("M1: stale install: gfn {gfn} installed while an invalidation covered it or the sequence moved")
        });
        let mut sptes = self.sptes.lock();
        if let Some(existing) = sptes.get(&gfn.0) {
            kvm.machine().warnings.warn_on_once(existing.pfn != spte.pfn, || {
                format!("tdp_mmu_map: gfn {gfn} present with {:?}, fault resolved {:?}", existing.pfn, spte.pfn)
            });
            return MapResult::Spurious;
        }
        sptes.insert(gfn.0, spte);
        self.installed.fetch_add(1, Ordering::Relaxed);
        MapResult::Fixed
    }

    /// `tdp_mmu_zap_leafs` over `[start, end)`; `private` restricts the zap to one kind (only
    /// mirror roots tell the kinds apart). Returns whether anything was zapped (flush needed).
    fn zap_leafs(&self, start: Gfn, end: Gfn, private: Option<bool>) -> bool {
        let mut sptes = self.sptes.lock();
        let doomed: Vec<u64> = sptes
            .range(start.0..end.0.max(start.0))
            .filter(|(_, spte)| private.is_none_or(|private| spte.private == private))
            .map(|(&gfn, _)| gfn)
            .collect();
        for gfn in &doomed {
            sptes.remove(gfn);
        }
        self.zapped.fetch_add(doomed.len() as u64, Ordering::Relaxed);
        !doomed.is_empty()
    }

    /// `kvm_mmu_zap_all_fast`: every root becomes obsolete (`mmu_valid_gen++`), so in-flight
    /// faults retry (`is_obsolete_sp`), and every leaf goes.
    fn zap_all_fast(&self, kvm: &Kvm) {
        let _mmu_lock = kvm.mmu_lock_write();
        self.mmu_valid_gen.fetch_add(1, Ordering::AcqRel);
        self.zap_all_fast.fetch_add(1, Ordering::Relaxed);
        if self.zap_leafs(Gfn(0), Gfn(u64::MAX), None) {
            // KVM_REQ_MMU_FREE_OBSOLETE_ROOTS on every vCPU: their TLBs are flushed.
            self.flush_remote_tlbs(kvm);
        }
    }
}

impl KvmMmu for TdpMmu {
    /// `kvm_unmap_gfn_range` → `kvm_tdp_mmu_unmap_gfn_range`: without mirror roots (every VM
    /// type but TDX) the filter is ignored and every leaf in the range goes.
    fn unmap_gfn_range(&self, kvm: &Kvm, range: &KvmGfnRange) -> bool {
        kvm.assert_mmu_lock_held();
        let private = (kvm.vm_type() == VmType::Tdx).then_some(range.attr_filter == AttrFilter::Private);
        self.zap_leafs(range.start, range.end, private)
    }

    /// `kvm_flush_remote_tlbs` → `kvm_make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH)` (the
    /// vendor flush, SVM's ASID flush or VMX's INVEPT, is the flush each vCPU does on entry).
    fn flush_remote_tlbs(&self, kvm: &Kvm) {
        self.remote_tlb_flushes.fetch_add(1, Ordering::Relaxed);
        let kick = self.weakening() != ProtocolWeakening::NoKickWait;
        kvm.make_all_cpus_request(KVM_REQ_TLB_FLUSH, kick);
    }

    /// `kvm_arch_flush_shadow_memslot`: with `KVM_X86_QUIRK_SLOT_ZAP_ALL` (on by default, and
    /// for every VM type but TDX) `kvm_mmu_zap_all_fast`; otherwise `kvm_mmu_zap_memslot`.
    fn flush_shadow_memslot(&self, kvm: &Kvm, _slot_id: u32, base_gfn: Gfn, npages: u64) {
        if kvm.vm_type() != VmType::Tdx {
            self.zap_all_fast(kvm);
            return;
        }
        let _mmu_lock = kvm.mmu_lock_write();
        if self.zap_leafs(base_gfn, Gfn(base_gfn.0.saturating_add(npages)), None) {
            self.flush_remote_tlbs(kvm);
        }
    }

    fn flush_shadow_all(&self, kvm: &Kvm) {
        let _mmu_lock = kvm.mmu_lock_write();
        self.mmu_valid_gen.fetch_add(1, Ordering::AcqRel);
        self.zap_leafs(Gfn(0), Gfn(u64::MAX), None);
    }

    fn as_tdp(&self) -> Option<&TdpMmu> {
        Some(self)
    }
}
