//! The Secure EPT of one TD: the private GPA → host frame translation that only the TDX module
//! writes (`arch-and-mmu.md` §2.1).
//!
//! A 4-level tree (GPAW 48; GPA bit 47 is the shared bit, so private GPAs are below 2^47): the
//! root table (its entries are level 3, PML4Es) lives in the TD's TDCS and exists once MNG.INIT
//! ran; every other table is a host page the host donated with TDH.MEM.SEPT.ADD, linked under a
//! FREE entry of a present parent. Levels are the TDX module's (`sept_level = pg_level - 1`):
//! an entry at level L maps `4K << 9L` bytes; a table whose entries are level L is linked from a
//! level L+1 entry.
//!
//! Entries are FREE, a table link (NL_MAPPED, or NL_BLOCKED after RANGE.BLOCK of the range), or
//! a leaf: MAPPED, PENDING (AUGed, not yet accepted), BLOCKED or PENDING_BLOCKED. The module
//! reports an entry in the SEAMCALLs' extended error information in an architectural form
//! ([`SeptEntry::arch_entry`]) with its level and state ([`level_state`]).
//!
//! # What the model decides
//!
//! * **Table contents** are kept in this tree, keyed by the donated frame, not in the frame's
//!   memory (the host cannot read them anyway; the module encrypts them with the TD's key).
//! * **The architectural entry** is: FREE → only bit 63 (suppress #VE), as the module's
//!   `SEPTE_INIT_VALUE` reads; a table link → the table's address with RWX when NL_MAPPED, none
//!   when NL_BLOCKED; a leaf → the frame's address, bit 7 for a leaf above 4K, RWX only when
//!   MAPPED. KVM reads only "is it a present leaf with RWX" (the premap signature).
//! * **The state numbers** in `level_state` (bits 15:8) are the model's:
//!   FREE 0, BLOCKED 1, PENDING 2, PENDING_BLOCKED 3, MAPPED 4, NL_MAPPED 5, NL_BLOCKED 6.
//! * **Walks** go through NL_BLOCKED links (the table is still there: the module can remove its
//!   leaves); a guest access through one faults.
//! * **Leaves are 4K** for the SEAMCALLs the model implements (KVM maps private memory at 4K
//!   only); the tree itself can hold a leaf at any level.

use gmem_kvm::arch::PgLevel;
use gmem_mm::types::PAGE_SHIFT;
use gmem_mm::Pfn;
use std::collections::BTreeMap;
use std::fmt;

/// Entries per table.
pub const SEPT_ENTRIES: usize = 512;
/// The guest physical address width of the modelled TDs (4-level S-EPT).
pub const TDX_GPAW: u32 = 48;
/// The shared bit of a GPA (`TDX_SHARED_BIT_PWL_4`, as a byte address): bit 47.
pub const TDX_SHARED_BIT: u64 = 1 << (TDX_GPAW - 1);
/// The level of the root table's entries (PML4Es).
pub const SEPT_ROOT_LEVEL: u8 = 3;
/// The architectural entry's suppress-#VE bit.
pub const SEPT_SUPPRESS_VE: u64 = 1 << 63;
/// The architectural entry's RWX bits.
pub const SEPT_RWX: u64 = 0x7;
/// The architectural entry's leaf (PS) bit for a leaf above 4K.
pub const SEPT_PS: u64 = 1 << 7;

/// `pg_level_to_tdx_sept_level`: 4K → 0, 2M → 1, 1G → 2.
#[doc(alias = "pg_level_to_tdx_sept_level")]
pub const fn tdx_sept_level(level: PgLevel) -> u8 {
    level as u8 - 1
}

/// The bytes an entry at `level` maps.
pub const fn level_bytes(level: u8) -> u64 {
    1u64 << (PAGE_SHIFT + 9 * level as u32)
}

/// The index of the entry at `level` that translates `gpa`.
pub const fn sept_index(gpa: u64, level: u8) -> usize {
    ((gpa >> (PAGE_SHIFT + 9 * level as u32)) & (SEPT_ENTRIES as u64 - 1)) as usize
}

/// A leaf's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LeafState {
    /// SEPT_MAPPED: the guest can access it.
    Mapped,
    /// SEPT_PENDING: AUGed, waiting for the guest's TDG.MEM.PAGE.ACCEPT.
    Pending,
    /// SEPT_BLOCKED: a MAPPED leaf RANGE.BLOCK blocked.
    Blocked,
    /// SEPT_PENDING_BLOCKED: a PENDING leaf RANGE.BLOCK blocked.
    PendingBlocked,
}

impl LeafState {
    /// Whether RANGE.BLOCK blocked it.
    pub const fn is_blocked(self) -> bool {
        matches!(self, LeafState::Blocked | LeafState::PendingBlocked)
    }
}

/// An entry's state as the module names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SeptState {
    /// FREE.
    Free,
    /// A leaf.
    Leaf(LeafState),
    /// NL_MAPPED: a present table link.
    NlMapped,
    /// NL_BLOCKED: a table link RANGE.BLOCK blocked.
    NlBlocked,
}

impl SeptState {
    /// The model's number for the state (see the module docs).
    pub const fn code(self) -> u64 {
        match self {
            SeptState::Free => 0,
            SeptState::Leaf(LeafState::Blocked) => 1,
            SeptState::Leaf(LeafState::Pending) => 2,
            SeptState::Leaf(LeafState::PendingBlocked) => 3,
            SeptState::Leaf(LeafState::Mapped) => 4,
            SeptState::NlMapped => 5,
            SeptState::NlBlocked => 6,
        }
    }

    /// The module's name (`PENDING_BLOCKED`).
    pub const fn name(self) -> &'static str {
        match self {
            SeptState::Free => "FREE",
            SeptState::Leaf(LeafState::Mapped) => "MAPPED",
            SeptState::Leaf(LeafState::Pending) => "PENDING",
            SeptState::Leaf(LeafState::Blocked) => "BLOCKED",
            SeptState::Leaf(LeafState::PendingBlocked) => "PENDING_BLOCKED",
            SeptState::NlMapped => "NL_MAPPED",
            SeptState::NlBlocked => "NL_BLOCKED",
        }
    }
}

impl fmt::Display for SeptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One S-EPT entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum SeptEntry {
    /// FREE.
    #[default]
    Free,
    /// A link to the table in the donated frame `table`.
    Table {
        /// The table's frame.
        table: Pfn,
        /// NL_BLOCKED rather than NL_MAPPED.
        blocked: bool,
    },
    /// A leaf mapping the frame `pfn`.
    Leaf {
        /// The mapped frame.
        pfn: Pfn,
        /// Its state.
        state: LeafState,
    },
}

impl SeptEntry {
    /// The entry's state.
    pub const fn state(&self) -> SeptState {
        match self {
            SeptEntry::Free => SeptState::Free,
            SeptEntry::Table { blocked: false, .. } => SeptState::NlMapped,
            SeptEntry::Table { blocked: true, .. } => SeptState::NlBlocked,
            SeptEntry::Leaf { state, .. } => SeptState::Leaf(*state),
        }
    }

    /// The architectural form of the entry at `level` (see the module docs).
    pub const fn arch_entry(&self, level: u8) -> u64 {
        match *self {
            SeptEntry::Free => SEPT_SUPPRESS_VE,
            SeptEntry::Table { table, blocked } => (table.0 << PAGE_SHIFT) | if blocked { 0 } else { SEPT_RWX },
            SeptEntry::Leaf { pfn, state } => {
                let ps = if level > 0 { SEPT_PS } else { 0 };
                let rwx = if matches!(state, LeafState::Mapped) { SEPT_RWX } else { 0 };
                (pfn.0 << PAGE_SHIFT) | ps | rwx
            }
        }
    }
}

/// `level_state` of the extended error information: the level in bits 7:0, the state in 15:8.
pub const fn level_state(level: u8, state: SeptState) -> u64 {
    level as u64 | (state.code() << 8)
}

/// Where a walk stopped: the non-present (or leaf) entry met at `level` before the requested
/// level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WalkFailure {
    /// The level of the entry the walk stopped at.
    pub level: u8,
    /// That entry.
    pub entry: SeptEntry,
}

/// One table.
#[derive(Clone)]
struct SeptTable {
    /// The level of its entries.
    level: u8,
    /// The GPA its first entry translates.
    base: u64,
    entries: Box<[SeptEntry]>,
}

impl SeptTable {
    fn new(level: u8, base: u64) -> SeptTable {
        SeptTable { level, base, entries: vec![SeptEntry::Free; SEPT_ENTRIES].into_boxed_slice() }
    }
}

/// A table as [`SeptTree::tables`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeptTableInfo {
    /// The donated frame.
    pub table: Pfn,
    /// The level of its entries.
    pub level: u8,
    /// The first GPA it translates.
    pub base: u64,
    /// How many of its entries are not FREE.
    pub used: usize,
}

/// A leaf as [`SeptTree::leaves`] lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeptLeaf {
    /// The GPA it maps.
    pub gpa: u64,
    /// Its level.
    pub level: u8,
    /// The frame.
    pub pfn: Pfn,
    /// Its state.
    pub state: LeafState,
}

/// The S-EPT of one TD.
#[derive(Clone)]
pub struct SeptTree {
    root: SeptTable,
    /// The donated tables, by frame.
    tables: BTreeMap<u64, SeptTable>,
}

impl fmt::Debug for SeptTree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeptTree").field("tables", &self.tables.len()).finish()
    }
}

impl Default for SeptTree {
    fn default() -> Self {
        SeptTree::new()
    }
}

/// Where an entry is: in the root (`None`) or a donated table, at an index.
type Slot = (Option<u64>, usize);

impl SeptTree {
    /// A tree with an empty root (MNG.INIT).
    pub fn new() -> SeptTree {
        SeptTree { root: SeptTable::new(SEPT_ROOT_LEVEL, 0), tables: BTreeMap::new() }
    }

    fn table(&self, key: Option<u64>) -> Option<&SeptTable> {
        match key {
            None => Some(&self.root),
            Some(pfn) => self.tables.get(&pfn),
        }
    }

    fn table_mut(&mut self, key: Option<u64>) -> Option<&mut SeptTable> {
        match key {
            None => Some(&mut self.root),
            Some(pfn) => self.tables.get_mut(&pfn),
        }
    }

    /// Walks from the root to the entry at `level` that translates `gpa`, through table links
    /// (NL_BLOCKED ones included). `level` must be at most [`SEPT_ROOT_LEVEL`].
    fn locate(&self, gpa: u64, level: u8) -> Result<Slot, WalkFailure> {
        let mut key = None;
        let mut at = SEPT_ROOT_LEVEL;
        loop {
            let index = sept_index(gpa, at);
            if at <= level {
                return Ok((key, index));
            }
            let Some(table) = self.table(key) else {
                return Err(WalkFailure { level: at, entry: SeptEntry::Free });
            };
            match table.entries[index] {
                SeptEntry::Table { table, .. } if self.tables.contains_key(&table.0) => {
                    key = Some(table.0);
                    at -= 1;
                }
                entry => return Err(WalkFailure { level: at, entry }),
            }
        }
    }

    /// The entry at `level` translating `gpa`, or where the walk to it stopped.
    pub fn entry(&self, gpa: u64, level: u8) -> Result<SeptEntry, WalkFailure> {
        let (key, index) = self.locate(gpa, level)?;
        self.table(key).map(|table| table.entries[index]).ok_or(WalkFailure { level, entry: SeptEntry::Free })
    }

    /// Overwrites the entry at `level` translating `gpa` (the walk must succeed). Linking a table
    /// goes through [`SeptTree::link_table`] instead.
    pub fn set_entry(&mut self, gpa: u64, level: u8, entry: SeptEntry) -> Result<SeptEntry, WalkFailure> {
        let (key, index) = self.locate(gpa, level)?;
        let table = self.table_mut(key).ok_or(WalkFailure { level, entry: SeptEntry::Free })?;
        Ok(std::mem::replace(&mut table.entries[index], entry))
    }

    /// SEPT.ADD's change: links the empty table in `page` under the entry at `level` (≥ 1)
    /// translating `gpa`, which must be FREE. On failure, the walk failure or the entry found.
    pub fn link_table(&mut self, gpa: u64, level: u8, page: Pfn) -> Result<(), WalkFailure> {
        let (key, index) = self.locate(gpa, level)?;
        let table = self.table_mut(key).ok_or(WalkFailure { level, entry: SeptEntry::Free })?;
        let entry = table.entries[index];
        if entry != SeptEntry::Free || level == 0 {
            return Err(WalkFailure { level, entry });
        }
        table.entries[index] = SeptEntry::Table { table: page, blocked: false };
        let base = gpa & !(level_bytes(level) - 1);
        self.tables.insert(page.0, SeptTable::new(level - 1, base));
        Ok(())
    }

    /// SEPT.REMOVE's change: unlinks the table under the entry at `level` translating `gpa`
    /// (the caller checked it is an empty NL_BLOCKED link) and returns its frame.
    pub fn unlink_table(&mut self, gpa: u64, level: u8) -> Result<Pfn, WalkFailure> {
        let entry = self.entry(gpa, level)?;
        let SeptEntry::Table { table, .. } = entry else { return Err(WalkFailure { level, entry }) };
        self.set_entry(gpa, level, SeptEntry::Free)?;
        self.tables.remove(&table.0);
        Ok(table)
    }

    /// How many entries of the table in `table` are not FREE (`None`: no such table).
    pub fn table_used(&self, table: Pfn) -> Option<usize> {
        self.tables.get(&table.0).map(|t| t.entries.iter().filter(|e| **e != SeptEntry::Free).count())
    }

    /// Whether the tree has a table in `table`.
    pub fn has_table(&self, table: Pfn) -> bool {
        self.tables.contains_key(&table.0)
    }

    /// Drops the table in `table` and the link to it (teardown: the module reclaimed the page).
    /// Its entries go with it.
    pub fn forget_table(&mut self, table: Pfn) -> bool {
        let Some(removed) = self.tables.remove(&table.0) else { return false };
        let link = SeptEntry::Table { table, blocked: false };
        let blocked = SeptEntry::Table { table, blocked: true };
        let parent_level = removed.level + 1;
        if let Ok((key, index)) = self.locate(removed.base, parent_level) {
            if let Some(parent) = self.table_mut(key) {
                if parent.entries[index] == link || parent.entries[index] == blocked {
                    parent.entries[index] = SeptEntry::Free;
                }
            }
        }
        true
    }

    /// Drops the leaf that maps `pfn`, if any (teardown: the module reclaimed the page).
    pub fn forget_leaf(&mut self, pfn: Pfn) -> bool {
        let Some(leaf) = self.leaves().into_iter().find(|leaf| leaf.pfn == pfn) else { return false };
        self.set_entry(leaf.gpa, leaf.level, SeptEntry::Free).is_ok()
    }

    /// The leaf that translates `gpa`, walking from the root through present links only
    /// (NL_BLOCKED stops it, as it stops the hardware): `Ok((level, pfn, state))`, or where the
    /// translation ends.
    pub fn translate(&self, gpa: u64) -> Result<(u8, Pfn, LeafState), WalkFailure> {
        let mut table = &self.root;
        loop {
            let level = table.level;
            let entry = table.entries[sept_index(gpa, level)];
            match entry {
                SeptEntry::Leaf { pfn, state } => {
                    let offset = (gpa & (level_bytes(level) - 1)) >> PAGE_SHIFT;
                    return Ok((level, pfn.offset(offset), state));
                }
                SeptEntry::Table { table: next, blocked: false } if level > 0 => match self.tables.get(&next.0) {
                    Some(next) => table = next,
                    None => return Err(WalkFailure { level, entry }),
                },
                _ => return Err(WalkFailure { level, entry }),
            }
        }
    }

    /// Every leaf, in GPA order.
    pub fn leaves(&self) -> Vec<SeptLeaf> {
        let mut out = Vec::new();
        for table in std::iter::once(&self.root).chain(self.tables.values()) {
            for (index, entry) in table.entries.iter().enumerate() {
                if let SeptEntry::Leaf { pfn, state } = *entry {
                    let gpa = table.base + index as u64 * level_bytes(table.level);
                    out.push(SeptLeaf { gpa, level: table.level, pfn, state });
                }
            }
        }
        out.sort_by_key(|leaf| leaf.gpa);
        out
    }

    /// Every donated table, in frame order.
    pub fn tables(&self) -> Vec<SeptTableInfo> {
        self.tables
            .iter()
            .map(|(&pfn, table)| SeptTableInfo {
                table: Pfn(pfn),
                level: table.level,
                base: table.base,
                used: table.entries.iter().filter(|e| **e != SeptEntry::Free).count(),
            })
            .collect()
    }

    /// Every table link, as `(level of the link, GPA, table frame)`: the tables the tree reaches.
    pub fn links(&self) -> Vec<(u8, u64, Pfn)> {
        let mut out = Vec::new();
        for table in std::iter::once(&self.root).chain(self.tables.values()) {
            for (index, entry) in table.entries.iter().enumerate() {
                if let SeptEntry::Table { table: child, .. } = *entry {
                    out.push((table.level, table.base + index as u64 * level_bytes(table.level), child));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GPA: u64 = 0x4020_3000;

    fn built() -> SeptTree {
        let mut tree = SeptTree::new();
        tree.link_table(GPA, 3, Pfn(100)).unwrap();
        tree.link_table(GPA, 2, Pfn(101)).unwrap();
        tree.link_table(GPA, 1, Pfn(102)).unwrap();
        tree
    }

    #[test]
    fn levels_and_indices() {
        assert_eq!(tdx_sept_level(PgLevel::Level4K), 0);
        assert_eq!(tdx_sept_level(PgLevel::Level2M), 1);
        assert_eq!(tdx_sept_level(PgLevel::Level1G), 2);
        assert_eq!(level_bytes(0), 4096);
        assert_eq!(level_bytes(1), 2 << 20);
        assert_eq!(sept_index(GPA, 0), 3);
        assert_eq!(sept_index(GPA, 1), 1);
        assert_eq!(sept_index(GPA, 2), 1);
        assert_eq!(TDX_SHARED_BIT, 0x8000_0000_0000);
    }

    #[test]
    fn a_table_needs_its_parent_and_a_free_entry() {
        let mut tree = SeptTree::new();
        // Level 1 (the PDE that points at a page table) needs the level-3 and level-2 tables.
        assert_eq!(tree.link_table(GPA, 1, Pfn(102)), Err(WalkFailure { level: 3, entry: SeptEntry::Free }));
        tree.link_table(GPA, 3, Pfn(100)).unwrap();
        assert_eq!(tree.link_table(GPA, 1, Pfn(102)), Err(WalkFailure { level: 2, entry: SeptEntry::Free }));
        tree.link_table(GPA, 2, Pfn(101)).unwrap();
        let again = tree.link_table(GPA, 2, Pfn(103)).unwrap_err();
        assert_eq!(again.entry, SeptEntry::Table { table: Pfn(101), blocked: false }, "the entry is not FREE");
        tree.link_table(GPA, 1, Pfn(102)).unwrap();
        assert_eq!(tree.tables().len(), 3);
        assert_eq!(tree.tables()[2], SeptTableInfo { table: Pfn(102), level: 0, base: GPA & !0x1f_ffff, used: 0 });
        assert_eq!(tree.links().len(), 3);
    }

    #[test]
    fn leaves_translate_and_report_their_state() {
        let mut tree = built();
        assert_eq!(tree.translate(GPA), Err(WalkFailure { level: 0, entry: SeptEntry::Free }));
        tree.set_entry(GPA, 0, SeptEntry::Leaf { pfn: Pfn(7), state: LeafState::Pending }).unwrap();
        assert_eq!(tree.translate(GPA + 0x123), Ok((0, Pfn(7), LeafState::Pending)));
        assert_eq!(tree.leaves(), vec![SeptLeaf { gpa: GPA, level: 0, pfn: Pfn(7), state: LeafState::Pending }]);
        assert_eq!(tree.table_used(Pfn(102)), Some(1));
        // A walk below an existing leaf fails at the leaf.
        let entry = tree.entry(GPA, 0).unwrap();
        assert_eq!(entry.arch_entry(0), 7 << 12, "PENDING: no RWX");
        assert_eq!(SeptEntry::Free.arch_entry(0), SEPT_SUPPRESS_VE);
        let mapped = SeptEntry::Leaf { pfn: Pfn(7), state: LeafState::Mapped };
        assert_eq!(mapped.arch_entry(0), (7 << 12) | 7);
        assert_eq!(mapped.arch_entry(1), (7 << 12) | 7 | SEPT_PS);
        assert_eq!(level_state(0, mapped.state()), 0x400);
        assert!(tree.forget_leaf(Pfn(7)));
        assert!(tree.leaves().is_empty());
    }

    #[test]
    fn blocked_links_stop_translation_but_not_walks() {
        let mut tree = built();
        tree.set_entry(GPA, 0, SeptEntry::Leaf { pfn: Pfn(7), state: LeafState::Mapped }).unwrap();
        tree.set_entry(GPA, 1, SeptEntry::Table { table: Pfn(102), blocked: true }).unwrap();
        assert_eq!(tree.translate(GPA).unwrap_err().level, 1);
        assert!(tree.entry(GPA, 0).is_ok(), "the module still reaches the leaves");
        tree.set_entry(GPA, 0, SeptEntry::Free).unwrap();
        assert_eq!(tree.unlink_table(GPA, 1), Ok(Pfn(102)));
        assert!(!tree.has_table(Pfn(102)));
        assert_eq!(tree.entry(GPA, 1), Ok(SeptEntry::Free));
        assert!(tree.forget_table(Pfn(101)));
        assert_eq!(tree.entry(GPA, 2), Ok(SeptEntry::Free), "the link to a forgotten table is gone");
    }
}
