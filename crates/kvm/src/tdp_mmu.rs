//! The software TDP MMU: one VM's two-dimensional page tables (`arch/x86/kvm/mmu/tdp_mmu.c`,
//! with the parts of `mmu.c` that drive them: `kvm_unmap_gfn_range`, `kvm_mmu_zap_all_fast`,
//! `kvm_arch_flush_shadow_memslot`).
//!
//! The page tables are kept as their leaves only, keyed by their first gfn: a leaf at level L
//! (4K, 2M, 1G) covers the L-aligned gfn range and maps the L-aligned pfn range. Each SPTE
//! records the first pfn, its level, whether it is writable, whether the fault that installed it
//! was private, the accessed bit, and the generation of every frame it maps at install time
//! ([`gmem_mm::page`]: the generation changes when the frame is freed), so that a mapping that
//! outlived any of its frames (INV-NO-STALE-PFN, M5) is detected exactly. A lookup or a walk of a
//! gfn finds the covering leaf; a walk hands the vCPU the 4K sub-translation of a huge leaf (its
//! TLB caches 4K pieces: every flush empties the whole TLB, so caching the huge translation as
//! 512 lazily filled pieces cannot outlive a zap of the leaf).
//!
//! Huge leaves follow `kvm_tdp_mmu_map`: a fault whose goal level is below a huge leaf covering
//! its gfn splits that leaf one level at a time (`tdp_mmu_split_huge_page`: the children map
//! the same frames, so no flush) and then finds its leaf present (spurious); a fault at a huge
//! goal level over smaller leaves replaces the page table holding them
//! (`tdp_mmu_map_handle_target_level` over a present non-leaf SPTE: the children go and the
//! range is flushed, `kvm_flush_remote_tlbs_gfn`). A zap of any part of a huge leaf zaps the
//! whole leaf (`tdp_mmu_zap_leafs` visits every leaf whose range intersects the zap range).
//!
//! Locking is the kernel's: faults install under `mmu_lock` held for **read** (the kernel's
//! atomic SPTE cmpxchg is the short `sptes` lock here), zaps run under `mmu_lock` held for
//! **write**. The SPTEs hold no page reference: only the invalidation protocol
//! (`mmu_invalidate_*` and the zaps) keeps them from outliving their frames, as in the kernel.
//!
//! vCPUs cache translations in their TLBs ([`crate::tlb`]); [`KvmMmu::flush_remote_tlbs`] is
//! `kvm_flush_remote_tlbs`: `KVM_REQ_TLB_FLUSH` on every vCPU with kick and wait, so when it
//! returns no vCPU can still translate through an SPTE zapped before the call.

use crate::arch::PgLevel;
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

/// One present leaf SPTE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Spte {
    /// The host frame it maps (a huge leaf: the first of its aligned frames).
    pub pfn: Pfn,
    /// The leaf's level.
    pub level: PgLevel,
    /// Writable (`map_writable`).
    pub writable: bool,
    /// Installed by a private fault (from guest_memfd).
    pub private: bool,
    /// The accessed bit.
    pub accessed: bool,
    /// The generation of the frame `pfn` when the SPTE was installed (a huge leaf keeps the
    /// generation of each of its frames: [`TdpMmu::frame_generations`]).
    pub generation: u64,
}

/// A stored leaf: the SPTE and, for a huge leaf, the install generation of every frame.
#[derive(Clone, Debug)]
struct Leaf {
    spte: Spte,
    generations: Option<Arc<[u64]>>,
}

impl Leaf {
    fn generation(&self, offset: u64) -> u64 {
        match &self.generations {
            Some(generations) => generations[offset as usize],
            None => self.spte.generation,
        }
    }

    /// The 4K piece at `offset` (a split child or a TLB fill).
    fn piece(&self, offset: u64) -> Spte {
        Spte {
            pfn: self.spte.pfn.offset(offset),
            level: PgLevel::Level4K,
            generation: self.generation(offset),
            ..self.spte
        }
    }
}

/// The leaf store: leaves by first gfn.
type Leaves = BTreeMap<u64, Leaf>;

/// The leaf covering `gfn`, as its first gfn.
fn covering(leaves: &Leaves, gfn: u64) -> Option<u64> {
    [PgLevel::Level4K, PgLevel::Level2M, PgLevel::Level1G].into_iter().find_map(|level| {
        let base = level.round(gfn);
        leaves.get(&base).filter(|leaf| leaf.spte.level == level).map(|_| base)
    })
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
    /// Of those, leaves above 4K (2M or 1G).
    pub installed_huge: u64,
    /// SPTEs zapped.
    pub zapped: u64,
    /// `kvm_flush_remote_tlbs` calls.
    pub remote_tlb_flushes: u64,
    /// `kvm_mmu_zap_all_fast` calls (roots made obsolete).
    pub zap_all_fast: u64,
}

type FaultHook = Box<dyn FnMut(&Kvm, Gfn, Pfn) + Send>;

/// The install generation of every frame a huge leaf maps (`None` for a 4K leaf, whose one
/// generation is in the SPTE); a pfn outside memory reads 0.
fn frame_generations(mem: &gmem_mm::page::PhysMem, spte: &Spte) -> Option<Arc<[u64]>> {
    (spte.level != PgLevel::Level4K).then(|| {
        (0..spte.level.pages())
            .map(|offset| {
                let pfn = spte.pfn.offset(offset);
                if mem.is_valid_pfn(pfn) {
                    mem.generation(pfn)
                } else {
                    0
                }
            })
            .collect()
    })
}

/// The software TDP MMU of one VM.
pub struct TdpMmu {
    sptes: Mutex<Leaves>,
    /// `kvm->arch.mmu_valid_gen`: bumped when every root becomes obsolete.
    mmu_valid_gen: AtomicU64,
    installed: AtomicU64,
    installed_huge: AtomicU64,
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
            installed_huge: AtomicU64::new(0),
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

    /// The leaf covering `gfn`, if present (a huge leaf as itself: its first pfn and level).
    pub fn lookup(&self, gfn: Gfn) -> Option<Spte> {
        self.covering_leaf(gfn).map(|(_, spte)| spte)
    }

    /// The leaf covering `gfn` with its first gfn.
    pub fn covering_leaf(&self, gfn: Gfn) -> Option<(Gfn, Spte)> {
        let sptes = self.sptes.lock();
        covering(&sptes, gfn.0).map(|base| (Gfn(base), sptes[&base].spte))
    }

    /// Every present leaf, by first gfn.
    pub fn sptes(&self) -> Vec<(Gfn, Spte)> {
        self.sptes.lock().iter().map(|(&gfn, leaf)| (Gfn(gfn), leaf.spte)).collect()
    }

    /// The install generation of every frame the leaf at `gfn` (its first gfn) maps, in pfn
    /// order (one for a 4K leaf).
    pub fn frame_generations(&self, gfn: Gfn) -> Vec<u64> {
        let sptes = self.sptes.lock();
        let Some(leaf) = sptes.get(&gfn.0) else { return Vec::new() };
        (0..leaf.spte.level.pages()).map(|offset| leaf.generation(offset)).collect()
    }

    /// A hardware walk of `gfn` (sets the accessed bit of the covering leaf): the 4K
    /// sub-translation of the leaf (pfn and install generation of the frame that backs `gfn`,
    /// `level` the leaf's), or `None` if not present (or not writable for a write): the access
    /// faults. The walk is atomic with respect to zaps, as the hardware's read of an SPTE is; what
    /// the caller does with the result afterwards is protected only by the TLB flush protocol.
    pub fn walk(&self, gfn: Gfn, write: bool) -> Option<Spte> {
        let mut sptes = self.sptes.lock();
        let base = covering(&sptes, gfn.0)?;
        let leaf = sptes.get_mut(&base).filter(|leaf| leaf.spte.writable || !write)?;
        leaf.spte.accessed = true;
        Some(Spte { level: leaf.spte.level, ..leaf.piece(gfn.0 - base) })
    }

    /// Test-only: installs `spte` at `gfn` without any check, as a buggy fault path would (for
    /// the negative controls of M6 and INV-NO-STALE-PFN). The generations of a huge leaf are
    /// read from the frames now.
    #[doc(hidden)]
    pub fn install_unchecked_for_test(&self, kvm: &Kvm, gfn: Gfn, spte: Spte) {
        let generations = frame_generations(&kvm.machine().mem, &spte);
        self.sptes.lock().insert(gfn.0, Leaf { spte, generations });
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
            installed_huge: self.installed_huge.load(Ordering::Relaxed),
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

    /// `kvm_tdp_mmu_map`: install the leaf `spte` (level `spte.level`, `gfn` and `spte.pfn`
    /// aligned to it) for a fault on `fault_gfn`, recording the install generation of every frame
    /// of a huge leaf. `mmu_lock` held for read, and the caller checked
    /// `is_page_fault_stale` under it; M1 (arch-and-mmu.md §5.1, no stale install) is asserted
    /// here with the fault's `mmu_seq` and reported as a WARN if broken.
    ///
    /// On the way down to the goal level a huge leaf covering the gfn is split
    /// (`tdp_mmu_split_huge_page`); at the goal level a present leaf makes the fault spurious,
    /// and a page table of smaller leaves is replaced by the new leaf, with a remote flush.
    pub(crate) fn map(&self, kvm: &Kvm, fault_gfn: Gfn, gfn: Gfn, spte: Spte, mmu_seq: u64) -> MapResult {
        kvm.assert_mmu_lock_held();
        kvm.machine().warnings.warn_on_once(kvm.mmu_invalidate_retry_gfn(mmu_seq, fault_gfn), || {
            format!(
                "M1: stale install: gfn {fault_gfn} installed while an invalidation covered it or the sequence moved"
            )
        });
        let level = spte.level;
        let mut sptes = self.sptes.lock();
        // Walk down from the largest level: split a huge leaf above the goal level.
        while let Some(base) = covering(&sptes, gfn.0) {
            let existing = sptes[&base].clone();
            if existing.spte.level <= level {
                break;
            }
            sptes.remove(&base);
            let child = existing.spte.level.lower();
            let child_pages = child.pages();
            for index in 0..(existing.spte.level.pages() / child_pages) {
                let offset = index * child_pages;
                let piece = existing.piece(offset);
                let generations = (child != PgLevel::Level4K)
                    .then(|| (offset..offset + child_pages).map(|o| existing.generation(o)).collect::<Arc<[u64]>>());
                sptes.insert(base + offset, Leaf { spte: Spte { level: child, ..piece }, generations });
            }
        }
        if let Some(base) = covering(&sptes, gfn.0) {
            let existing = sptes[&base].spte;
            if existing.level == level {
                kvm.machine().warnings.warn_on_once(existing.pfn != spte.pfn, || {
                    format!("tdp_mmu_map: gfn {gfn} present with {:?}, fault resolved {:?}", existing.pfn, spte.pfn)
                });
                return MapResult::Spurious;
            }
        }
        // A page table of smaller leaves under the new huge leaf is replaced (handle_removed_pt
        // zaps its children), and the range flushed.
        let doomed: Vec<u64> = if level == PgLevel::Level4K {
            Vec::new()
        } else {
            sptes.range(gfn.0..gfn.0 + level.pages()).map(|(&child, _)| child).collect()
        };
        for child in &doomed {
            sptes.remove(child);
        }
        // Only now, past the spurious check: a huge leaf reads one generation per frame.
        let generations = frame_generations(&kvm.machine().mem, &spte);
        sptes.insert(gfn.0, Leaf { spte, generations });
        drop(sptes);
        self.installed.fetch_add(1, Ordering::Relaxed);
        if level != PgLevel::Level4K {
            self.installed_huge.fetch_add(1, Ordering::Relaxed);
        }
        if !doomed.is_empty() {
            self.zapped.fetch_add(doomed.len() as u64, Ordering::Relaxed);
            // kvm_flush_remote_tlbs_gfn (a ranged flush; the model flushes everything).
            self.flush_remote_tlbs(kvm);
        }
        MapResult::Fixed
    }

    /// `tdp_mmu_zap_leafs` over `[start, end)`; `private` restricts the zap to one kind (only
    /// mirror roots tell the kinds apart). A leaf intersecting the range goes whole. Returns
    /// whether anything was zapped (flush needed).
    fn zap_leafs(&self, start: Gfn, end: Gfn, private: Option<bool>) -> bool {
        let mut sptes = self.sptes.lock();
        let end = end.0.max(start.0);
        if end == start.0 {
            return false;
        }
        let mut doomed: Vec<u64> = sptes.range(start.0..end).map(|(&gfn, _)| gfn).collect();
        // Huge leaves that begin before `start` and reach into the range.
        for level in PgLevel::HUGE {
            let base = level.round(start.0);
            if base < start.0 && sptes.get(&base).is_some_and(|leaf| leaf.spte.level == level) {
                doomed.push(base);
            }
        }
        doomed.retain(|gfn| private.is_none_or(|private| sptes[gfn].spte.private == private));
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
