//! The software TDP MMU: one VM's two-dimensional page tables (`arch/x86/kvm/mmu/tdp_mmu.c`,
//! with the parts of `mmu.c` that drive them: `kvm_unmap_gfn_range`, `kvm_mmu_zap_all_fast`,
//! `kvm_arch_flush_shadow_memslot`, `kvm_mmu_uninit_vm`).
//!
//! # Two root types
//!
//! Every VM has the **direct root** (`KVM_DIRECT_ROOTS`). A VM whose back-end asks for it
//! ([`KvmArch::has_mirror_root`](crate::arch::KvmArch::has_mirror_root), TDX) also has a
//! **mirror root** (`KVM_MIRROR_ROOTS`, `is_mirror_sp`): private faults map into the mirror root
//! at the gfn without the shared bit, shared faults into the direct root at
//! `gfn | kvm_gfn_direct_bits` (`tdp_mmu_get_root_for_fault`, `kvm_gfn_root_bits`); the hardware
//! walk picks its root from the gpa the same way (`kvm_is_addr_direct`). Invalidations pick roots
//! by their attribute filter (`kvm_gfn_range_filter_to_root_types`: PRIVATE → mirror, SHARED →
//! direct, both for a memslot going away); without a mirror root every filter means the direct
//! root. The two roots are represented differently, so that the direct root keeps its speed:
//!
//! * the direct root is kept as its leaves only (below);
//! * the mirror root is a real 4-level page table ([`SpteLevel`]): the root table, and below it
//!   tables whose non-leaf entries point to their child tables. Each table below the root carries
//!   an `external_spt` page from the machine's `PhysMem` (`sp->external_spt`, taken from the
//!   vCPU's `mmu_external_spt_cache` topped up before `mmu_lock`, freed with the table). Every
//!   change of a mirror SPTE is propagated to the vendor's external page table through the
//!   external-SPT hooks of [`KvmArch`](crate::arch::KvmArch), exactly where `tdp_mmu.c` calls them:
//!   - **install**, `mmu_lock` held for read (`set_external_spte_present`): the SPTE goes from
//!     its old value to FROZEN under the short SPTE lock (the stand-in for the cmpxchg), the lock
//!     is dropped, `link_external_spt` (a new table) or `set_external_spte` (a leaf) runs, then
//!     the new value is written, or on error the old value is restored and the fault returns
//!     `RET_PF_RETRY` (the table and its external page are freed). A fault, or a hardware walk,
//!     that meets a FROZEN SPTE sees it not present: the fault retries. Replacing a present
//!     mirror SPTE, and zapping one atomically, is a `KVM_BUG_ON`. A failed freeze cmpxchg
//!     refreshes the caller's `iter->old_spte` only with F17 (not in v6.18); no caller here
//!     retries from it, so only the test-only local-retry install
//!     ([`TdpMmu::map_mirror_leaf_local_retry_for_test`]) shows the difference.
//!   - **zap**, `mmu_lock` held for write (`tdp_mmu_set_spte`): a leaf is made non-present,
//!     then `remove_external_spte` runs (an error is `KVM_BUG_ON`). Leaf zaps
//!     (`tdp_mmu_zap_leafs`) leave the tables in place.
//!   - **teardown** (`tdp_mmu_zap_root` from `kvm_mmu_uninit_tdp_mmu`, only when the VM is
//!     destroyed: neither `kvm_mmu_zap_all_fast` nor the MMU notifier's `kvm_tdp_mmu_zap_all`
//!     touch a mirror root): 4K entries first, then each level up; an unlinked table goes through
//!     `handle_removed_pt`, which removes each present child leaf, recurses into child tables,
//!     and then calls `free_external_spt` (an error is a WARN, and the external page is leaked
//!     rather than handed back) — bottom-up.
//!
//! # The direct root
//!
//! The direct page tables are kept as their leaves only, keyed by their first gfn (with the
//! direct bits, on a VM with a mirror root): a leaf at level L
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

use crate::arch::{PgLevel, SpteLevel};
use crate::mmu::{AttrFilter, KvmGfnRange, KvmMmu};
use crate::profile::{Fix, VmType};
use crate::tlb::{ProtocolWeakening, KVM_REQ_TLB_FLUSH};
use crate::types::Gfn;
use crate::vcpu::KvmVcpu;
use crate::vm::{Kvm, MmuFactory, VmMmu};
use gmem_mm::folio::Folio;
use gmem_mm::Pfn;
use gmem_sync::atomic::{AtomicU64, AtomicU8, Ordering};
use gmem_sync::warn::WarnKind;
use gmem_sync::{Arc, LockClass, Mutex};
use std::collections::BTreeMap;
use std::fmt;

/// The leaf-SPTE store (stands in for the atomic SPTE updates of the TDP MMU).
static SPTES_LOCK: LockClass = LockClass::new("kvm->arch.tdp_mmu_sptes");
/// The mirror root's tables (the stand-in for the atomic updates of mirror SPTEs; never held
/// across an external-SPT hook).
static MIRROR_SPTES_LOCK: LockClass = LockClass::new("kvm->arch.tdp_mmu_mirror_sptes");
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
#[derive(Clone, Debug, PartialEq, Eq)]
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

/// What installing a leaf did (`RET_PF_FIXED` / `RET_PF_SPURIOUS` / `RET_PF_RETRY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapResult {
    /// A new SPTE was installed.
    Fixed,
    /// An SPTE was already present (another fault won the race).
    Spurious,
    /// The walk met a FROZEN SPTE, lost a race for an SPTE, or an external-SPT hook failed: the
    /// fault returns `RET_PF_RETRY` (mirror roots only).
    Retry,
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
    /// Mirror page tables linked (`link_external_spt` succeeded).
    pub external_spts_linked: u64,
    /// Mirror page tables freed with their external page (`free_external_spt` succeeded).
    pub external_spts_freed: u64,
    /// External pages leaked because `free_external_spt` failed.
    pub external_spts_leaked: u64,
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

/// One SPTE of the mirror root that is not `SHADOW_NONPRESENT_VALUE` (those are absent).
#[derive(Clone, Debug, PartialEq, Eq)]
enum MirrorSpte {
    /// `FROZEN_SPTE`: the thread that froze it is propagating a change to the external page
    /// table; other threads retry, the hardware treats it as not present.
    #[doc(alias("FROZEN_SPTE", "is_frozen_spte"))]
    Frozen,
    /// A present non-leaf SPTE: the child table (an index into [`MirrorRoot::tables`]).
    Table(usize),
    /// A present leaf SPTE.
    Leaf(Leaf),
}

/// Where one mirror SPTE is (`iter->sptep`: entry `index` of table `id`), the first gfn it
/// covers (`iter->gfn`) and the level of its table (`iter->level`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SptePos {
    id: usize,
    index: usize,
    gfn: u64,
    level: SpteLevel,
}

/// The part of `struct tdp_iter` the mirror install paths use: the SPTE's position and
/// `iter->old_spte`, the caller's view of its value (`None`: `SHADOW_NONPRESENT_VALUE`), read
/// by the walk and refreshed by a failed cmpxchg, as `try_cmpxchg64(sptep, &iter->old_spte, new)`
/// does. For a mirror SPTE the freeze cmpxchg runs in `set_external_spte_present`, which gets
/// `&iter->old_spte` only with F17 ([`Fix::F17MirrorOldSpteRefresh`]); see
/// [`TdpMmu::mirror_set_spte_atomic`].
#[derive(Clone, Debug)]
#[doc(alias = "tdp_iter")]
struct MirrorIter {
    pos: SptePos,
    old_spte: Option<MirrorSpte>,
}

/// Why `__tdp_mmu_set_spte_atomic` on a mirror SPTE failed. The kernel's callers see `-EBUSY`
/// or the hook's error only.
#[derive(Clone, Debug, PartialEq, Eq)]
enum MirrorSetError {
    /// The freeze cmpxchg failed: the SPTE held `seen`, not the caller's old value (`EBUSY`).
    /// The model keeps `seen` for the F17 detector; in the kernel only `try_cmpxchg64`'s `old`
    /// argument receives it.
    Changed { seen: Option<MirrorSpte> },
    /// `KVM_BUG_ON`, or the external-SPT hook failed (its error; the SPTE was restored).
    Errno(gmem_mm::Errno),
}

/// How many times [`TdpMmu::map_mirror_leaf_local_retry_for_test`] retries locally before it
/// reports a livelock (the kernel's loop has no bound).
pub const MIRROR_LOCAL_RETRY_LIMIT: u32 = 8;

/// A page table of the mirror root (`struct kvm_mmu_page` with `role.is_mirror`).
#[derive(Debug)]
struct MirrorTable {
    /// `sp->role.level`: 4 for the root (a PML4), 1 for a page table.
    level: SpteLevel,
    /// `sp->gfn`: the first gfn the table covers.
    gfn: u64,
    /// `sp->external_spt` (the root has none: the vendor's root is part of its VM state).
    #[doc(alias = "get_external_spt")]
    external_spt: Option<Pfn>,
    /// The entries that are not `SHADOW_NONPRESENT_VALUE`, by index (0..512).
    entries: BTreeMap<usize, MirrorSpte>,
}

impl MirrorTable {
    /// The first gfn of entry `index`.
    fn entry_gfn(&self, index: usize) -> u64 {
        self.gfn + index as u64 * self.level.pages()
    }
}

/// The mirror root: its tables (index 0 is the root itself, never freed) and the free slots.
#[derive(Debug)]
struct MirrorRoot {
    tables: Vec<Option<MirrorTable>>,
    free: Vec<usize>,
}

/// The root's index in [`MirrorRoot::tables`].
const MIRROR_ROOT: usize = 0;

impl MirrorRoot {
    fn new() -> MirrorRoot {
        let root = MirrorTable { level: SpteLevel::ROOT_4LEVEL, gfn: 0, external_spt: None, entries: BTreeMap::new() };
        MirrorRoot { tables: vec![Some(root)], free: Vec::new() }
    }

    fn table(&self, id: usize) -> &MirrorTable {
        self.tables[id].as_ref().expect("a live mirror table")
    }

    fn table_mut(&mut self, id: usize) -> &mut MirrorTable {
        self.tables[id].as_mut().expect("a live mirror table")
    }

    /// `tdp_mmu_alloc_sp` + `tdp_mmu_init_child_sp`: a table not linked anywhere yet.
    fn alloc_table(&mut self, table: MirrorTable) -> usize {
        match self.free.pop() {
            Some(id) => {
                self.tables[id] = Some(table);
                id
            }
            None => {
                self.tables.push(Some(table));
                self.tables.len() - 1
            }
        }
    }

    /// Takes table `id` out (it must be unlinked).
    fn free_table(&mut self, id: usize) -> MirrorTable {
        let table = self.tables[id].take().expect("a live mirror table");
        self.free.push(id);
        table
    }

    /// Where the walk for `gfn` ends: the table and index of the leaf mapping it, or `None` if
    /// an entry on the way is not present (FROZEN counts as not present).
    fn find_leaf(&self, gfn: u64) -> Option<(usize, usize)> {
        if gfn >> (SpteLevel::ROOT_4LEVEL.gfn_shift() + 9) != 0 {
            return None;
        }
        let mut id = MIRROR_ROOT;
        loop {
            let table = self.table(id);
            let index = table.level.index(gfn);
            match table.entries.get(&index)? {
                MirrorSpte::Frozen => return None,
                MirrorSpte::Table(child) => id = *child,
                MirrorSpte::Leaf(_) => return Some((id, index)),
            }
        }
    }

    /// The iterator on the entry of `level` on the walk for `gfn` (`tdp_iter` stepping down to
    /// it), or `None` if a table on the way is not linked.
    fn iter_at(&self, gfn: u64, level: SpteLevel) -> Option<MirrorIter> {
        if gfn >> (SpteLevel::ROOT_4LEVEL.gfn_shift() + 9) != 0 {
            return None;
        }
        let mut id = MIRROR_ROOT;
        loop {
            let table = self.table(id);
            let index = table.level.index(gfn);
            let entry = table.entries.get(&index);
            if table.level == level {
                let pos = SptePos { id, index, gfn: table.entry_gfn(index), level };
                return Some(MirrorIter { pos, old_spte: entry.cloned() });
            }
            match entry? {
                MirrorSpte::Table(child) => id = *child,
                MirrorSpte::Frozen | MirrorSpte::Leaf(_) => return None,
            }
        }
    }

    fn leaf(&self, id: usize, index: usize) -> &Leaf {
        match self.table(id).entries.get(&index) {
            Some(MirrorSpte::Leaf(leaf)) => leaf,
            _ => unreachable!("find_leaf returned a leaf"),
        }
    }

    /// Pre-order walk of the tables below `id` (and `id` itself).
    fn for_each_entry(&self, id: usize, f: &mut impl FnMut(&MirrorTable, usize, &MirrorSpte)) {
        let table = self.table(id);
        for (&index, entry) in &table.entries {
            f(table, index, entry);
            if let MirrorSpte::Table(child) = entry {
                self.for_each_entry(*child, f);
            }
        }
    }
}

/// One page table of a mirror root, as [`TdpMmu::mirror_tables`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MirrorTableInfo {
    /// The table's level (`sp->role.level`: 4 for the root, 1 for a page table).
    pub level: SpteLevel,
    /// Its first gfn (`sp->gfn`).
    pub gfn: Gfn,
    /// Its external page (`sp->external_spt`; none for the root).
    pub external_spt: Option<Pfn>,
    /// Entries not `SHADOW_NONPRESENT_VALUE` (present or FROZEN).
    pub entries: usize,
}

/// An entry of a mirror root that is FROZEN, as [`TdpMmu::mirror_frozen`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrozenSpte {
    /// The SPTE's level.
    pub level: SpteLevel,
    /// The first gfn it covers.
    pub gfn: Gfn,
}

/// The software TDP MMU of one VM.
pub struct TdpMmu {
    /// The direct root, as its leaves.
    sptes: Mutex<Leaves>,
    /// The mirror root (a lone empty root table unless the VM has mirrored TDP).
    mirror: Mutex<MirrorRoot>,
    /// `kvm->arch.mmu_valid_gen`: bumped when every root becomes obsolete.
    mmu_valid_gen: AtomicU64,
    installed: AtomicU64,
    installed_huge: AtomicU64,
    zapped: AtomicU64,
    remote_tlb_flushes: AtomicU64,
    zap_all_fast: AtomicU64,
    external_spts_linked: AtomicU64,
    external_spts_freed: AtomicU64,
    external_spts_leaked: AtomicU64,
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
            mirror: Mutex::new(&MIRROR_SPTES_LOCK, MirrorRoot::new()),
            mmu_valid_gen: AtomicU64::new(0),
            installed: AtomicU64::new(0),
            installed_huge: AtomicU64::new(0),
            zapped: AtomicU64::new(0),
            remote_tlb_flushes: AtomicU64::new(0),
            zap_all_fast: AtomicU64::new(0),
            external_spts_linked: AtomicU64::new(0),
            external_spts_freed: AtomicU64::new(0),
            external_spts_leaked: AtomicU64::new(0),
            weakening: AtomicU8::new(ProtocolWeakening::None as u8),
            fault_hook: Mutex::new(&FAULT_HOOK_LOCK, None),
        }
    }

    /// The factory that gives every new VM its own TDP MMU.
    pub fn factory() -> MmuFactory {
        Arc::new(|| VmMmu::Tdp(Arc::new(TdpMmu::new())))
    }

    /// The direct root's leaf covering `gfn` (with the direct bits, on a VM with a mirror root),
    /// if present (a huge leaf as itself: its first pfn and level).
    pub fn lookup(&self, gfn: Gfn) -> Option<Spte> {
        self.covering_leaf(gfn).map(|(_, spte)| spte)
    }

    /// The direct root's leaf covering `gfn` with its first gfn.
    pub fn covering_leaf(&self, gfn: Gfn) -> Option<(Gfn, Spte)> {
        let sptes = self.sptes.lock();
        covering(&sptes, gfn.0).map(|base| (Gfn(base), sptes[&base].spte))
    }

    /// Every present leaf of the direct root, by first gfn.
    pub fn sptes(&self) -> Vec<(Gfn, Spte)> {
        self.sptes.lock().iter().map(|(&gfn, leaf)| (Gfn(gfn), leaf.spte)).collect()
    }

    /// The install generation of every frame the direct-root leaf at `gfn` (its first gfn) maps,
    /// in pfn order (one for a 4K leaf).
    pub fn frame_generations(&self, gfn: Gfn) -> Vec<u64> {
        let sptes = self.sptes.lock();
        let Some(leaf) = sptes.get(&gfn.0) else { return Vec::new() };
        (0..leaf.spte.level.pages()).map(|offset| leaf.generation(offset)).collect()
    }

    /// The mirror root's leaf mapping `gfn` (a gfn without the direct bits), with its first gfn.
    pub fn mirror_covering_leaf(&self, gfn: Gfn) -> Option<(Gfn, Spte)> {
        let root = self.mirror.lock();
        let (id, index) = root.find_leaf(gfn.0)?;
        Some((Gfn(root.table(id).entry_gfn(index)), root.leaf(id, index).spte))
    }

    /// The mirror root's leaf mapping `gfn`, if present.
    pub fn lookup_mirror(&self, gfn: Gfn) -> Option<Spte> {
        self.mirror_covering_leaf(gfn).map(|(_, spte)| spte)
    }

    /// Every present leaf of the mirror root, by first gfn.
    pub fn mirror_sptes(&self) -> Vec<(Gfn, Spte)> {
        let root = self.mirror.lock();
        let mut out = Vec::new();
        root.for_each_entry(MIRROR_ROOT, &mut |table, index, entry| {
            if let MirrorSpte::Leaf(leaf) = entry {
                out.push((Gfn(table.entry_gfn(index)), leaf.spte));
            }
        });
        out.sort_by_key(|(gfn, _)| *gfn);
        out
    }

    /// The install generation of every frame the mirror-root leaf at `gfn` (its first gfn) maps.
    pub fn mirror_frame_generations(&self, gfn: Gfn) -> Vec<u64> {
        let root = self.mirror.lock();
        let Some((id, index)) = root.find_leaf(gfn.0) else { return Vec::new() };
        let leaf = root.leaf(id, index);
        (0..leaf.spte.level.pages()).map(|offset| leaf.generation(offset)).collect()
    }

    /// Every table of the mirror root that is linked into it: the root first, then the others in
    /// pre-order (a table before the tables below it, siblings by gfn).
    pub fn mirror_tables(&self) -> Vec<MirrorTableInfo> {
        let root = self.mirror.lock();
        let info = |table: &MirrorTable| MirrorTableInfo {
            level: table.level,
            gfn: Gfn(table.gfn),
            external_spt: table.external_spt,
            entries: table.entries.len(),
        };
        let mut out = vec![info(root.table(MIRROR_ROOT))];
        root.for_each_entry(MIRROR_ROOT, &mut |_, _, entry| {
            if let MirrorSpte::Table(child) = entry {
                out.push(info(root.table(*child)));
            }
        });
        out
    }

    /// Every FROZEN entry of the mirror root (none outside an install in progress).
    pub fn mirror_frozen(&self) -> Vec<FrozenSpte> {
        let root = self.mirror.lock();
        let mut out = Vec::new();
        root.for_each_entry(MIRROR_ROOT, &mut |table, index, entry| {
            if *entry == MirrorSpte::Frozen {
                out.push(FrozenSpte { level: table.level, gfn: Gfn(table.entry_gfn(index)) });
            }
        });
        out
    }

    /// The leaf a hardware walk of `gfn` (as the vCPU accesses it: with the direct bits for a
    /// shared access of a VM with a mirror root) would use, with its first gfn in that root.
    pub fn root_covering_leaf(&self, kvm: &Kvm, gfn: Gfn) -> Option<(Gfn, Spte)> {
        if kvm.has_mirrored_tdp() && !kvm.is_addr_direct(gfn.to_gpa().0) {
            self.mirror_covering_leaf(gfn)
        } else {
            self.covering_leaf(gfn)
        }
    }

    /// A hardware walk of `gfn` in the direct root (sets the accessed bit of the covering leaf):
    /// the 4K sub-translation of the leaf (pfn and install generation of the frame that backs
    /// `gfn`, `level` the leaf's), or `None` if not present (or not writable for a write): the
    /// access faults. The walk is atomic with respect to zaps, as the hardware's read of an SPTE
    /// is; what the caller does with the result afterwards is protected only by the TLB flush
    /// protocol.
    pub fn walk(&self, gfn: Gfn, write: bool) -> Option<Spte> {
        let mut sptes = self.sptes.lock();
        let base = covering(&sptes, gfn.0)?;
        let leaf = sptes.get_mut(&base).filter(|leaf| leaf.spte.writable || !write)?;
        leaf.spte.accessed = true;
        Some(Spte { level: leaf.spte.level, ..leaf.piece(gfn.0 - base) })
    }

    /// A hardware walk of `gfn` in the mirror root, as [`TdpMmu::walk`]: a FROZEN entry on the
    /// way is not present.
    pub fn walk_mirror(&self, gfn: Gfn, write: bool) -> Option<Spte> {
        let mut root = self.mirror.lock();
        let (id, index) = root.find_leaf(gfn.0)?;
        let table = root.table_mut(id);
        let base = table.entry_gfn(index);
        let Some(MirrorSpte::Leaf(leaf)) = table.entries.get_mut(&index) else { return None };
        if !leaf.spte.writable && write {
            return None;
        }
        leaf.spte.accessed = true;
        Some(Spte { level: leaf.spte.level, ..leaf.piece(gfn.0 - base) })
    }

    /// The hardware walk of a VM with a mirror root: the root the gpa selects
    /// (`kvm_is_addr_direct`), the mirror root at `gfn` (it has no direct bits), the direct root
    /// at `gfn` with them.
    pub fn walk_root(&self, kvm: &Kvm, gfn: Gfn, write: bool) -> Option<Spte> {
        if kvm.is_addr_direct(gfn.to_gpa().0) {
            self.walk(gfn, write)
        } else {
            self.walk_mirror(gfn, write)
        }
    }

    /// Test-only: installs `spte` at `gfn` in the direct root without any check, as a buggy fault
    /// path would (for the negative controls of M6 and INV-NO-STALE-PFN). The generations of a
    /// huge leaf are read from the frames now.
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
            external_spts_linked: self.external_spts_linked.load(Ordering::Relaxed),
            external_spts_freed: self.external_spts_freed.load(Ordering::Relaxed),
            external_spts_leaked: self.external_spts_leaked.load(Ordering::Relaxed),
        }
    }

    /// Test hook: `hook` runs once, in the next fault, after the pfn was resolved and before
    /// `mmu_lock` is taken (where a racing invalidation can slip in). It runs inside the fault's
    /// `kvm->srcu` read section, as that window does in the kernel: a hook that waits for SRCU
    /// readers (a memslot update) waits for its own fault.
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

    /// M1 (arch-and-mmu.md §5.1, no stale install), asserted at every install with the fault's
    /// `mmu_seq` and reported as a WARN if broken.
    fn assert_not_stale(kvm: &Kvm, fault_gfn: Gfn, mmu_seq: u64) {
        kvm.machine().warnings.warn_on_once(kvm.mmu_invalidate_retry_gfn(mmu_seq, fault_gfn), || {
            format!(
                "M1: stale install: gfn {fault_gfn} installed while an invalidation covered it or the sequence moved"
            )
        });
    }

    /// `kvm_tdp_mmu_map` in the direct root: install the leaf `spte` (level `spte.level`, `gfn`
    /// — the leaf's first gfn in this root, with the direct bits on a VM with a mirror root —
    /// and `spte.pfn` aligned to it) for a fault on `fault_gfn` (the memslot gfn), recording the
    /// install generation of every frame of a huge leaf. `mmu_lock` held for read, and the
    /// caller checked `is_page_fault_stale` under it; M1 is asserted here.
    ///
    /// On the way down to the goal level a huge leaf covering the gfn is split
    /// (`tdp_mmu_split_huge_page`); at the goal level a present leaf makes the fault spurious,
    /// and a page table of smaller leaves is replaced by the new leaf, with a remote flush.
    #[doc(alias("tdp_mmu_map_handle_target_level", "tdp_mmu_split_huge_page"))]
    pub(crate) fn map(&self, kvm: &Kvm, fault_gfn: Gfn, gfn: Gfn, spte: Spte, mmu_seq: u64) -> MapResult {
        kvm.assert_mmu_lock_held();
        Self::assert_not_stale(kvm, fault_gfn, mmu_seq);
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

    /// `tdp_mmu_zap_leafs` over `[start, end)` of the direct root (keys as stored: with the
    /// direct bits on a VM with a mirror root). A leaf intersecting the range goes whole.
    /// Returns whether anything was zapped (flush needed).
    #[doc(alias = "tdp_mmu_zap_leafs")]
    fn zap_leafs(&self, start: Gfn, end: Gfn) -> bool {
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
        for gfn in &doomed {
            sptes.remove(gfn);
        }
        self.zapped.fetch_add(doomed.len() as u64, Ordering::Relaxed);
        !doomed.is_empty()
    }

    /// `kvm_mmu_zap_all_fast` (also reached from `kvm_mmu_invalidate_mmio_sptes` when the memslot
    /// generation wraps): the direct roots become obsolete (`mmu_valid_gen++`, so in-flight faults
    /// retry: `is_obsolete_sp`) and every leaf of the direct root goes. Only `KVM_DIRECT_ROOTS`:
    /// "External page tables don't support fast zapping", so a mirror root is left alone.
    #[doc(alias("kvm_mmu_invalidate_mmio_sptes", "kvm_mmu_zap_all_fast"))]
    pub fn zap_all_fast(&self, kvm: &Kvm) {
        let _mmu_lock = kvm.mmu_lock_write();
        self.mmu_valid_gen.fetch_add(1, Ordering::AcqRel);
        self.zap_all_fast.fetch_add(1, Ordering::Relaxed);
        if self.zap_leafs(Gfn(0), Gfn(u64::MAX)) {
            // KVM_REQ_MMU_FREE_OBSOLETE_ROOTS on every vCPU: their TLBs are flushed.
            self.flush_remote_tlbs(kvm);
        }
    }

    /// `kvm_mmu_uninit_tdp_mmu`: every root becomes invalid and is zapped
    /// (`kvm_tdp_mmu_invalidate_roots(kvm, KVM_VALID_ROOTS)`, then
    /// `kvm_tdp_mmu_zap_invalidated_roots`, which flushes nothing: the VM is going away, no
    /// vCPU is left, and no fault can be in flight, so `mmu_valid_gen` needs no bump). The
    /// direct root is normally empty already (the MMU notifier's release zapped it); the mirror
    /// root is torn down with its hooks (`zap_mirror_root`).
    #[doc(alias("kvm_mmu_uninit_tdp_mmu", "kvm_tdp_mmu_invalidate_roots", "kvm_tdp_mmu_zap_invalidated_roots"))]
    pub fn uninit_tdp_mmu(&self, kvm: &Kvm) {
        let _mmu_lock = kvm.mmu_lock_write();
        self.zap_leafs(Gfn(0), Gfn(u64::MAX));
        if kvm.has_mirrored_tdp() {
            self.zap_mirror_root(kvm);
        }
    }

    // ---------------------------------------------------------------------------------------
    // The mirror root.

    /// `kvm_tdp_mmu_map` in the mirror root (`tdp_mmu_get_root_for_fault` chose it: a private
    /// gpa): walk from the root towards `spte.level` at `fault_gfn` (the gfn without the direct
    /// bits), linking a new table wherever an entry is not present (`tdp_mmu_link_sp` →
    /// `set_external_spte_present` → [`KvmArch::link_external_spt`](crate::arch::KvmArch::link_external_spt)),
    /// then install the leaf the same way ([`KvmArch::set_external_spte`](crate::arch::KvmArch::set_external_spte)).
    /// A FROZEN entry on the way, a lost race or a failed hook is `RET_PF_RETRY`; a huge mirror
    /// leaf on the way (the kernel cannot split one) or a page table where the leaf goes is
    /// `KVM_BUG_ON`. `mmu_lock` held for read, `is_page_fault_stale` checked; M1 is asserted.
    /// New tables take their external page from `vcpu`'s cache.
    ///
    /// The walk keeps a [`MirrorIter`] per level, as `tdp_mmu_for_each_pte` keeps `iter`; a failed
    /// atomic set refreshes its `old_spte` only with F17, but nothing here reads it again: the
    /// fault returns `RET_PF_RETRY` and the next one walks afresh (why the bug F17 fixes is benign).
    #[doc(alias = "tdp_mmu_link_sp")]
    pub(crate) fn map_mirror(&self, kvm: &Kvm, vcpu: &KvmVcpu, fault_gfn: Gfn, spte: Spte, mmu_seq: u64) -> MapResult {
        kvm.assert_mmu_lock_held();
        Self::assert_not_stale(kvm, fault_gfn, mmu_seq);
        let gfn = fault_gfn.0;
        let goal = SpteLevel::from(spte.level);
        if kvm.machine().warnings.warn_on_once(gfn >> (SpteLevel::ROOT_4LEVEL.gfn_shift() + 9) != 0, || {
            format!("tdp_mmu_map: gfn {fault_gfn} beyond the 4-level mirror root")
        }) {
            return MapResult::Retry;
        }
        let mut id = MIRROR_ROOT;
        loop {
            // The iterator on this level's entry: iter.old_spte = kvm_tdp_mmu_read_spte(sptep).
            let mut iter = {
                let root = self.mirror.lock();
                let table = root.table(id);
                let index = table.level.index(gfn);
                let pos = SptePos { id, index, gfn: table.entry_gfn(index), level: table.level };
                MirrorIter { pos, old_spte: table.entries.get(&index).cloned() }
            };
            let SptePos { level, gfn: entry_gfn, .. } = iter.pos;
            // "If SPTE has been frozen by another thread, just give up and retry".
            if iter.old_spte == Some(MirrorSpte::Frozen) {
                return MapResult::Retry;
            }
            if level == goal {
                return self.mirror_map_target_level(kvm, &mut iter, spte);
            }
            match iter.old_spte {
                // Step down into the lower level page table.
                Some(MirrorSpte::Table(child)) => id = child,
                // A huge leaf above the goal would be split: "Don't support large page for
                // mirrored roots (TDX)".
                Some(MirrorSpte::Leaf(_)) => {
                    kvm.kvm_bug_on(true, || {
                        format!("tdp_mmu_map: split of the {level} mirror SPTE at gfn {entry_gfn:#x}")
                    });
                    return MapResult::Retry;
                }
                Some(MirrorSpte::Frozen) => unreachable!("checked above"),
                None => {
                    let Some(child_level) = level.lower() else { unreachable!("a 4K entry is the goal level") };
                    // tdp_mmu_alloc_sp + kvm_mmu_alloc_external_spt.
                    let Some(external_spt) = vcpu.alloc_external_spt(kvm) else { return MapResult::Retry };
                    let child = self.mirror.lock().alloc_table(MirrorTable {
                        level: child_level,
                        gfn: entry_gfn,
                        external_spt: Some(external_spt),
                        entries: BTreeMap::new(),
                    });
                    // tdp_mmu_link_sp(kvm, &iter, sp, true) → tdp_mmu_set_spte_atomic.
                    let linked = self.mirror_set_spte_atomic(kvm, &mut iter, Some(MirrorSpte::Table(child)));
                    if linked.is_err() {
                        // "Force the guest to retry if installing an upper level SPTE failed":
                        // tdp_mmu_free_sp frees the table and its external page.
                        self.mirror.lock().free_table(child);
                        Folio::from_pfn(&kvm.machine().mem, external_spt).put();
                        return MapResult::Retry;
                    }
                    self.external_spts_linked.fetch_add(1, Ordering::Relaxed);
                    id = child;
                }
            }
        }
    }

    /// `tdp_mmu_map_handle_target_level` on a mirror SPTE: a present leaf is spurious; a
    /// non-present one gets the new leaf through `set_external_spte_present`.
    #[doc(alias = "tdp_mmu_map_handle_target_level")]
    fn mirror_map_target_level(&self, kvm: &Kvm, iter: &mut MirrorIter, spte: Spte) -> MapResult {
        let gfn = iter.pos.gfn;
        match &iter.old_spte {
            Some(MirrorSpte::Leaf(existing)) => {
                // Mirror leaves are RWX: the access is always allowed.
                kvm.machine().warnings.warn_on_once(existing.spte.pfn != spte.pfn, || {
                    format!(
                        "tdp_mmu_map: mirror gfn {gfn:#x} present with {:?}, fault resolved {:?}",
                        existing.spte.pfn, spte.pfn
                    )
                });
                return MapResult::Spurious;
            }
            Some(MirrorSpte::Table(_)) => {
                // A huge leaf over a page table: set_external_spte_present's
                // KVM_BUG_ON(was_present); the VM is dead, so the table is left in place.
                kvm.kvm_bug_on(true, || {
                    format!(
                        "set_external_spte_present: {} leaf over the present mirror page table at gfn {gfn:#x}",
                        spte.level
                    )
                });
                return MapResult::Retry;
            }
            Some(MirrorSpte::Frozen) | None => {}
        }
        let leaf = Leaf { spte, generations: frame_generations(&kvm.machine().mem, &spte) };
        // "else if (tdp_mmu_set_spte_atomic(vcpu->kvm, iter, new_spte)) return RET_PF_RETRY;"
        if self.mirror_set_spte_atomic(kvm, iter, Some(MirrorSpte::Leaf(leaf))).is_err() {
            return MapResult::Retry;
        }
        self.count_installed(spte.level);
        MapResult::Fixed
    }

    fn count_installed(&self, level: PgLevel) {
        self.installed.fetch_add(1, Ordering::Relaxed);
        if level != PgLevel::Level4K {
            self.installed_huge.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `__tdp_mmu_set_spte_atomic` on a mirror SPTE (`iter`), from `iter.old_spte` to `new`
    /// (`None`: `SHADOW_NONPRESENT_VALUE`). Only installs go this way: "Users of atomic zapping
    /// don't operate on mirror roots", so a zap is `KVM_BUG_ON` and `EBUSY`.
    ///
    /// `set_external_spte_present` does the freeze cmpxchg, whose failure refreshes the old value
    /// it was given. With F17 ([`Fix::F17MirrorOldSpteRefresh`]) that is `&iter->old_spte`, so
    /// the caller sees the SPTE's current value, as `tdp_mmu_set_spte_atomic` promises ("If
    /// setting the SPTE fails because it has changed, iter->old_spte will be refreshed");
    /// without it (v6.18) `iter->old_spte` is passed by value and the refresh lands in the
    /// callee's copy: the iterator keeps the stale value.
    #[doc(alias("__tdp_mmu_set_spte_atomic", "tdp_mmu_set_spte_atomic"))]
    fn mirror_set_spte_atomic(
        &self,
        kvm: &Kvm,
        iter: &mut MirrorIter,
        new: Option<MirrorSpte>,
    ) -> Result<(), MirrorSetError> {
        let pos = iter.pos;
        kvm.machine().warnings.warn_on_once(iter.old_spte == Some(MirrorSpte::Frozen), || {
            format!("__tdp_mmu_set_spte_atomic on the FROZEN mirror SPTE at gfn {:#x}", pos.gfn)
        });
        let Some(new) = new else {
            kvm.kvm_bug_on(true, || format!("atomic zap of the {} mirror SPTE at gfn {:#x}", pos.level, pos.gfn));
            return Err(MirrorSetError::Errno(gmem_mm::Errno::EBUSY));
        };
        if kvm.profile().has_fix(Fix::F17MirrorOldSpteRefresh) {
            // set_external_spte_present(kvm, iter->sptep, iter->gfn, &iter->old_spte, ...).
            self.set_external_spte_present(kvm, pos, &mut iter.old_spte, new)
        } else {
            // set_external_spte_present(kvm, iter->sptep, iter->gfn, iter->old_spte, ...): the
            // callee's parameter is a copy.
            let mut old_spte = iter.old_spte.clone();
            self.set_external_spte_present(kvm, pos, &mut old_spte, new)
        }
    }

    /// `set_external_spte_present`: freeze the SPTE at `pos` (`try_cmpxchg64(sptep, old_spte,
    /// FROZEN_SPTE)`: on failure `*old_spte` becomes the current value and the result is
    /// `EBUSY`), drop the SPTE lock, propagate the change with `link_external_spt` (a table) or
    /// `set_external_spte` (a leaf), then write `new` on success or restore `*old_spte` on error,
    /// and return the hook's result. Replacing a present SPTE is `KVM_BUG_ON` (then carries on,
    /// as the kernel does).
    fn set_external_spte_present(
        &self,
        kvm: &Kvm,
        pos: SptePos,
        old_spte: &mut Option<MirrorSpte>,
        new: MirrorSpte,
    ) -> Result<(), MirrorSetError> {
        let SptePos { id, index, gfn, level } = pos;
        kvm.kvm_bug_on(old_spte.is_some(), || {
            format!("set_external_spte_present: the {level} mirror SPTE at gfn {gfn:#x} is present")
        });
        kvm.assert_mmu_lock_held();
        let external_spt = {
            let mut root = self.mirror.lock();
            let external_spt = match &new {
                MirrorSpte::Table(child) => root.table(*child).external_spt,
                _ => None,
            };
            let entries = &mut root.table_mut(id).entries;
            // try_cmpxchg64(sptep, old_spte, FROZEN_SPTE).
            let current = entries.get(&index);
            if current != old_spte.as_ref() {
                let seen = current.cloned();
                old_spte.clone_from(&seen);
                return Err(MirrorSetError::Changed { seen });
            }
            entries.insert(index, MirrorSpte::Frozen);
            external_spt
        };
        // "Use different call to either set up middle level external page table, or leaf",
        // without the SPTE lock: the hook may contend in the vendor's module and return EBUSY.
        let ret = match &new {
            MirrorSpte::Leaf(leaf) => kvm.arch().set_external_spte(kvm, Gfn(gfn), leaf.spte.level, leaf.spte.pfn),
            MirrorSpte::Table(_) => match external_spt {
                Some(external_spt) => kvm.arch().link_external_spt(kvm, Gfn(gfn), level, external_spt),
                None => {
                    kvm.kvm_bug_on(true, || format!("link of a mirror table without external_spt at gfn {gfn:#x}"));
                    Err(gmem_mm::Errno::EIO)
                }
            },
            MirrorSpte::Frozen => unreachable!("nobody installs FROZEN_SPTE as a new value"),
        };
        let mut root = self.mirror.lock();
        let entries = &mut root.table_mut(id).entries;
        match (&ret, old_spte) {
            (Ok(()), _) => {
                entries.insert(index, new);
            }
            // __kvm_tdp_mmu_write_spte(sptep, *old_spte): the cmpxchg succeeded, so it is the
            // value the SPTE had.
            (Err(_), Some(old)) => {
                entries.insert(index, old.clone());
            }
            (Err(_), None) => {
                entries.remove(&index);
            }
        }
        ret.map_err(MirrorSetError::Errno)
    }

    /// Test-only: a user of the mirror root that the kernel does not have, for F17
    /// ([`Fix::F17MirrorOldSpteRefresh`]): install the 4K mirror leaf `spte` at `gfn` with the
    /// **local** retry of `clear_dirty_gfn_range`, `wrprot_gfn_range` or the shared
    /// `__tdp_mmu_zap_root` (`retry:` ... `if (tdp_mmu_set_spte_atomic(kvm, &iter, new))
    /// goto retry;`), which retries from the `iter.old_spte` the failed set refreshed instead of
    /// walking again. In the kernel those users never meet a mirror root (TDX excludes dirty
    /// logging; mirror roots are zapped only under `mmu_lock` held for write), and the model has
    /// none: this is what makes the toggle observable. Takes `mmu_lock` for read; the tables down
    /// to the 4K entry must be linked (`ENOENT` otherwise). `race` runs once between the walk
    /// that read `iter.old_spte` and the first set, where a concurrent fault can change the SPTE.
    ///
    /// `retry:` looks at `iter.old_spte`: a present leaf means someone else installed it
    /// ([`MapResult::Spurious`]), FROZEN that someone is installing it ([`MapResult::Retry`]),
    /// non-present that the set is tried (again). The F17 detector: after a failed freeze
    /// cmpxchg the iterator must hold what the SPTE held when it failed; if not, a WARN names
    /// both values. The loop then goes on as the kernel's would (from a stale non-present value
    /// every cmpxchg fails again), and after [`MIRROR_LOCAL_RETRY_LIMIT`] failures a second WARN
    /// reports the livelock and the result is [`MapResult::Retry`]. A failed hook is retried too
    /// (`EBUSY`) or returned (any other error).
    #[doc(hidden)]
    pub fn map_mirror_leaf_local_retry_for_test(
        &self,
        kvm: &Kvm,
        gfn: Gfn,
        spte: Spte,
        race: impl FnOnce(),
    ) -> gmem_mm::KResult<MapResult> {
        let _mmu_lock = kvm.mmu_lock_read();
        let leaf = Leaf { spte, generations: frame_generations(&kvm.machine().mem, &spte) };
        let Some(mut iter) = self.mirror.lock().iter_at(gfn.0, SpteLevel::Level4K) else {
            return Err(gmem_mm::Errno::ENOENT);
        };
        race();
        let mut failures = 0;
        loop {
            // retry:
            match &iter.old_spte {
                Some(MirrorSpte::Leaf(existing)) => {
                    kvm.machine().warnings.warn_on_once(existing.spte.pfn != spte.pfn, || {
                        format!(
                            "local retry: mirror gfn {gfn} present with {:?}, not {:?}",
                            existing.spte.pfn, spte.pfn
                        )
                    });
                    return Ok(MapResult::Spurious);
                }
                Some(MirrorSpte::Frozen) => return Ok(MapResult::Retry),
                Some(MirrorSpte::Table(_)) => unreachable!("a 4K entry has no child table"),
                None => {}
            }
            let failure = match self.mirror_set_spte_atomic(kvm, &mut iter, Some(MirrorSpte::Leaf(leaf.clone()))) {
                Ok(()) => {
                    self.count_installed(spte.level);
                    return Ok(MapResult::Fixed);
                }
                Err(MirrorSetError::Changed { seen }) => {
                    kvm.machine().warnings.warn_on_once(iter.old_spte != seen, || {
                        format!(
                            "tdp_mmu_set_spte_atomic: the freeze cmpxchg of the mirror SPTE at gfn {gfn} failed on \
                             {seen:?}, yet iter->old_spte is still {:?}: the local retry starts from a stale value \
                             (set_external_spte_present got iter->old_spte by value: F17 missing)",
                            iter.old_spte
                        )
                    });
                    format!("the SPTE is {seen:?}")
                }
                Err(MirrorSetError::Errno(gmem_mm::Errno::EBUSY)) => "the hook returned EBUSY".to_string(),
                Err(MirrorSetError::Errno(errno)) => return Err(errno),
            };
            failures += 1;
            if failures >= MIRROR_LOCAL_RETRY_LIMIT {
                kvm.machine().warnings.report(
                    WarnKind::Warn,
                    format!(
                        "local retry of the mirror SPTE at gfn {gfn} made no progress in {MIRROR_LOCAL_RETRY_LIMIT} \
                         tries: iter->old_spte is {:?}, {failure}",
                        iter.old_spte
                    ),
                );
                return Ok(MapResult::Retry);
            }
        }
    }

    /// `remove_external_spte`: the hook for a mirror leaf that was just made non-present (only
    /// leaves: "External (TDX) SPTEs are limited to PG_LEVEL_4K, and external PTs are removed in
    /// a special order, involving free_external_spt()"). `mmu_lock` held for write. "Because
    /// write lock is held, operation should success": an error is `KVM_BUG_ON`.
    fn remove_external_spte(&self, kvm: &Kvm, gfn: u64, leaf: &Leaf) {
        kvm.assert_mmu_lock_held();
        let ret = kvm.arch().remove_external_spte(kvm, Gfn(gfn), leaf.spte.level, leaf.spte.pfn);
        if let Err(errno) = ret {
            kvm.kvm_bug_on(true, || {
                format!("remove_external_spte(gfn {gfn:#x}, {}, {:?}) failed: {errno}", leaf.spte.level, leaf.spte.pfn)
            });
        }
    }

    /// `tdp_mmu_set_spte` of a present mirror SPTE (entry `index` of table `id`) to
    /// `SHADOW_NONPRESENT_VALUE`, `mmu_lock` held for write: the entry is cleared first
    /// (`handle_changed_spte`: an unlinked child table goes through `handle_removed_pt`), then
    /// `remove_external_spte` for a leaf. Returns whether a leaf was zapped.
    #[doc(alias = "tdp_mmu_set_spte")]
    fn mirror_zap_spte(&self, kvm: &Kvm, id: usize, index: usize) -> bool {
        let (gfn, old) = {
            let mut root = self.mirror.lock();
            let table = root.table_mut(id);
            (table.entry_gfn(index), table.entries.remove(&index))
        };
        match old {
            Some(MirrorSpte::Leaf(leaf)) => {
                self.zapped.fetch_add(1, Ordering::Relaxed);
                self.remove_external_spte(kvm, gfn, &leaf);
                true
            }
            Some(MirrorSpte::Table(child)) => {
                self.handle_removed_pt(kvm, child);
                false
            }
            Some(MirrorSpte::Frozen) => {
                // "No thread should be using this function to set SPTEs to or from the
                // temporary frozen SPTE value": no install can be in flight under the write lock.
                kvm.machine().warnings.warn_on_once(true, || {
                    format!("tdp_mmu_set_spte: FROZEN mirror SPTE at gfn {gfn:#x} under mmu_lock held for write")
                });
                self.mirror.lock().table_mut(id).entries.insert(index, MirrorSpte::Frozen);
                false
            }
            None => false,
        }
    }

    /// `handle_removed_pt` of the mirror table `id`, already unlinked from its parent
    /// (`shared` false: `mmu_lock` held for write): every present entry is cleared in index
    /// order, a leaf with `remove_external_spte`, a child table recursively; then
    /// `free_external_spt` and the table's pages are freed, or on error a WARN and the external
    /// page is leaked ("Intentionally leak the page to prevent the kernel from accessing the
    /// encrypted page").
    fn handle_removed_pt(&self, kvm: &Kvm, id: usize) {
        let indexes: Vec<usize> = self.mirror.lock().table(id).entries.keys().copied().collect();
        for index in indexes {
            self.mirror_zap_spte(kvm, id, index);
        }
        let table = self.mirror.lock().free_table(id);
        let Some(external_spt) = table.external_spt else {
            kvm.machine().warnings.warn_on_once(true, || {
                format!("handle_removed_pt: mirror table at gfn {:#x} without external_spt", table.gfn)
            });
            return;
        };
        match kvm.arch().free_external_spt(kvm, Gfn(table.gfn), table.level, external_spt) {
            Ok(()) => {
                self.external_spts_freed.fetch_add(1, Ordering::Relaxed);
                // tdp_mmu_free_sp: free_page(sp->external_spt).
                Folio::from_pfn(&kvm.machine().mem, external_spt).put();
            }
            Err(errno) => {
                kvm.machine().warnings.report(
                    WarnKind::Warn,
                    format!(
                        "free_external_spt(gfn {:#x}, {}, {external_spt:?}) failed: {errno}; the external page is leaked",
                        table.gfn, table.level
                    ),
                );
                self.external_spts_leaked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `tdp_mmu_zap_leafs` over `[start, end)` of the mirror root (gfns without the direct
    /// bits), `mmu_lock` held for write: every present leaf intersecting the range is cleared,
    /// then `remove_external_spte`; the tables stay. Returns whether anything was zapped.
    fn zap_mirror_leafs(&self, kvm: &Kvm, start: Gfn, end: Gfn) -> bool {
        if end <= start {
            return false;
        }
        let doomed: Vec<(usize, usize)> = {
            let root = self.mirror.lock();
            let mut doomed = Vec::new();
            collect_mirror_leaves(&root, MIRROR_ROOT, start.0, end.0, &mut doomed);
            doomed
        };
        let mut flush = false;
        for (id, index) in doomed {
            flush |= self.mirror_zap_spte(kvm, id, index);
        }
        flush
    }

    /// `tdp_mmu_zap_root` of the mirror root (`shared` false): `__tdp_mmu_zap_root` at 4K, 2M,
    /// 1G, then the root's level, each pass clearing the present entries of exactly that level
    /// (`tdp_mmu_iter_set_spte`): the leaves first (`remove_external_spte`), then every page
    /// table bottom-up as the entry pointing to it goes (`handle_removed_pt` →
    /// `free_external_spt`). The root table itself has no external page and stays, empty.
    #[doc(alias("__tdp_mmu_zap_root", "tdp_mmu_zap_root"))]
    fn zap_mirror_root(&self, kvm: &Kvm) {
        let mut zap_level = Some(SpteLevel::Level4K);
        while let Some(level) = zap_level {
            let entries: Vec<(usize, usize)> = {
                let root = self.mirror.lock();
                let mut entries = Vec::new();
                collect_mirror_entries_at(&root, MIRROR_ROOT, level, &mut entries);
                entries
            };
            for (id, index) in entries {
                self.mirror_zap_spte(kvm, id, index);
            }
            zap_level = SpteLevel::from_raw(level as u8 + 1);
        }
    }

    /// Test-only: an atomic zap of the mirror leaf mapping `gfn` (what `tdp_mmu_zap_spte_atomic`
    /// would do from a path holding `mmu_lock` for read), to show it is refused. Takes
    /// `mmu_lock` for read.
    #[doc(hidden)]
    pub fn zap_mirror_spte_atomic_for_test(&self, kvm: &Kvm, gfn: Gfn) -> gmem_mm::KResult<()> {
        let _mmu_lock = kvm.mmu_lock_read();
        let found = {
            let root = self.mirror.lock();
            root.find_leaf(gfn.0).map(|(id, index)| {
                let table = root.table(id);
                let pos = SptePos { id, index, gfn: table.entry_gfn(index), level: table.level };
                MirrorIter { pos, old_spte: table.entries.get(&index).cloned() }
            })
        };
        let Some(mut iter) = found else { return Err(gmem_mm::Errno::ENOENT) };
        self.mirror_set_spte_atomic(kvm, &mut iter, None).map_err(|error| match error {
            MirrorSetError::Changed { .. } => gmem_mm::Errno::EBUSY,
            MirrorSetError::Errno(errno) => errno,
        })
    }
}

/// The leaves of the mirror table `id` and below that intersect `[start, end)`.
fn collect_mirror_leaves(root: &MirrorRoot, id: usize, start: u64, end: u64, out: &mut Vec<(usize, usize)>) {
    let table = root.table(id);
    let pages = table.level.pages();
    for (&index, entry) in &table.entries {
        let gfn = table.entry_gfn(index);
        if gfn >= end || gfn + pages <= start {
            continue;
        }
        match entry {
            MirrorSpte::Leaf(_) => out.push((id, index)),
            MirrorSpte::Table(child) => collect_mirror_leaves(root, *child, start, end, out),
            MirrorSpte::Frozen => out.push((id, index)),
        }
    }
}

/// The entries of exactly `level` reachable from the mirror table `id`, in gfn order.
fn collect_mirror_entries_at(root: &MirrorRoot, id: usize, level: SpteLevel, out: &mut Vec<(usize, usize)>) {
    let table = root.table(id);
    for (&index, entry) in &table.entries {
        if table.level == level {
            out.push((id, index));
        } else if let MirrorSpte::Table(child) = entry {
            collect_mirror_entries_at(root, *child, level, out);
        }
    }
}

impl KvmMmu for TdpMmu {
    /// `kvm_unmap_gfn_range` → `kvm_tdp_mmu_unmap_gfn_range`: the roots of
    /// `kvm_gfn_range_filter_to_root_types` (`| KVM_INVALID_ROOTS`, none here). Without a mirror
    /// root (every VM type but TDX) the filter is ignored and every leaf of the direct root in
    /// the range goes; with one, PRIVATE zaps the mirror root at the range and SHARED the direct
    /// root at the range with the direct bits (`kvm_gfn_root_bits`).
    fn unmap_gfn_range(&self, kvm: &Kvm, range: &KvmGfnRange) -> bool {
        kvm.assert_mmu_lock_held();
        if !kvm.has_mirrored_tdp() {
            return self.zap_leafs(range.start, range.end);
        }
        let mut flush = false;
        if range.attr_filter.includes_shared() {
            // tdp_iter_start with gfn_bits: the walk covers gfn | bits for gfn in the range
            // (memslot gfns are below the bits: kvm_is_gfn_alias refuses the others).
            let bits = kvm.gfn_direct_bits();
            let (start, end) = if bits == 0 {
                (range.start.0, range.end.0)
            } else {
                (range.start.0.min(bits) + bits, range.end.0.min(bits) + bits)
            };
            flush |= self.zap_leafs(Gfn(start), Gfn(end));
        }
        if range.attr_filter.includes_private() {
            flush |= self.zap_mirror_leafs(kvm, range.start, range.end);
        }
        flush
    }

    /// `kvm_flush_remote_tlbs` → `kvm_make_all_cpus_request(kvm, KVM_REQ_TLB_FLUSH)` (the
    /// vendor flush, SVM's ASID flush or VMX's INVEPT, is the flush each vCPU does on entry).
    fn flush_remote_tlbs(&self, kvm: &Kvm) {
        self.remote_tlb_flushes.fetch_add(1, Ordering::Relaxed);
        let kick = self.weakening() != ProtocolWeakening::NoKickWait;
        kvm.make_all_cpus_request(KVM_REQ_TLB_FLUSH, kick);
    }

    /// `kvm_arch_flush_shadow_memslot`: with `KVM_X86_QUIRK_SLOT_ZAP_ALL` (on by default, and
    /// for every VM type but TDX) `kvm_mmu_zap_all_fast`; otherwise `kvm_mmu_zap_memslot`: the
    /// slot's range with `KVM_FILTER_PRIVATE | KVM_FILTER_SHARED` (both root types on a VM with
    /// a mirror root), then a flush.
    fn flush_shadow_memslot(&self, kvm: &Kvm, slot_id: u32, base_gfn: Gfn, npages: u64) {
        if kvm.vm_type() != VmType::Tdx {
            self.zap_all_fast(kvm);
            return;
        }
        let range = KvmGfnRange {
            start: base_gfn,
            end: Gfn(base_gfn.0.saturating_add(npages)),
            slot_id,
            attr_filter: AttrFilter::Both,
            may_block: true,
        };
        let _mmu_lock = kvm.mmu_lock_write();
        if self.unmap_gfn_range(kvm, &range) {
            self.flush_remote_tlbs(kvm);
        }
    }

    /// `kvm_arch_flush_shadow_all` → `kvm_mmu_zap_all` → `kvm_tdp_mmu_zap_all`: the direct root
    /// only ("For TDX, mirror roots don't need handling in response to the mmu notifier").
    fn flush_shadow_all(&self, kvm: &Kvm) {
        let _mmu_lock = kvm.mmu_lock_write();
        self.mmu_valid_gen.fetch_add(1, Ordering::AcqRel);
        self.zap_leafs(Gfn(0), Gfn(u64::MAX));
    }

    /// `kvm_mmu_uninit_vm` → [`TdpMmu::uninit_tdp_mmu`].
    fn uninit_vm(&self, kvm: &Kvm) {
        self.uninit_tdp_mmu(kvm);
    }
}
