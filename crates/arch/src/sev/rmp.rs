//! The SEV-SNP Reverse Map Table and the instructions that read and change it: the hardware
//! half of SEV-SNP (AMD APM vol. 2, "Secure Nested Paging"; `arch-and-mmu.md` §1.1–§1.3).
//!
//! One entry per host 4K frame, host-wide (not per VM). An entry records whether the frame is
//! assigned to a guest (or to the firmware), the owner's ASID, the guest physical address the
//! frame may be mapped at, whether the entry is part of a 2M entry, and the immutable,
//! validated and VMSA bits. Only the instructions modelled here change entries:
//!
//! * [`Rmp::rmpupdate`] (hypervisor): writes an entry; clears Validated and VMSA;
//! * [`Rmp::psmash`] (hypervisor): splits a 2M entry into 512 4K entries, keeping Validated;
//! * [`Rmp::pvalidate`] (guest): sets or clears Validated;
//! * the firmware's transitions ([`Rmp::firmware_set`]), for the SNP firmware model.
//!
//! And the hardware checks every access against it:
//!
//! * a host write ([`Rmp::check_host_write`], installed as the machine's
//!   [`HostWriteCheck`]) to an assigned frame is an RMP #PF, which the kernel does not survive;
//!   so is a write through a 2M direct-map mapping that still covers an assigned 4K frame;
//! * a guest access ([`Rmp::check_guest_access`]): a private access (C-bit set) needs an entry
//!   assigned to the guest's ASID at the accessed GPA, no larger nested mapping than the entry,
//!   and the Validated bit (else #VC in the guest); a shared access needs a frame the
//!   hypervisor owns. A failure is a nested page fault with `PFERR_GUEST_RMP`.
//!
//! # Representation
//!
//! An entry is one `AtomicU64` (the instructions update an entry atomically), in chunks of 512
//! entries, one chunk per 2M region, allocated the first time an entry in the region changes: a
//! machine with gigabytes of simulated memory and one SNP guest pays for the regions that guest
//! touched. Each region also has its lock word (the hardware serialises updates of one 2M
//! region: a concurrent RMPUPDATE sees `FAIL_OVERLAP`, a concurrent PSMASH `FAIL_INUSE`), the
//! count of its assigned entries, and whether the host's direct map still covers it with a 2M
//! mapping (`adjust_direct_map` splits it before a 4K entry in it becomes private).
//!
//! The model adds one bit the hardware does not have: *guest dirty*, set when the guest writes
//! the frame through its key ([`Rmp::note_guest_write`]: a private store, or the VMSA a running
//! vCPU saves into) and cleared by a cache flush of the frame ([`Rmp::clflush`]). A host write
//! to a frame the guest no longer owns that still carries it would race with the write-back of
//! the guest's cache lines (encrypted under the guest's key); the check reports it (S9). Pages
//! only the firmware wrote (launched but never run) do not carry it, so the kernel's launch
//! error paths, which give pages back without a flush, are not flagged.

use gmem_kvm::arch::{
    GuestException, GuestFault, PgLevel, PFERR_GUEST_ENC_MASK, PFERR_GUEST_RMP_MASK, PFERR_GUEST_SIZEM_MASK,
    PFERR_WRITE_MASK,
};
use gmem_mm::page::HostWriteCheck;
use gmem_mm::types::PAGE_SHIFT;
use gmem_mm::Pfn;
use gmem_sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::fmt;

/// Entries per 2M region (`PTRS_PER_PMD`).
pub const PAGES_PER_2M: u64 = 512;

/// The RMPUPDATE, PSMASH and PVALIDATE return codes (`RMPUPDATE_FAIL_*`, `PSMASH_FAIL_*`,
/// `PVALIDATE_FAIL_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum RmpError {
    /// 1: an operand is invalid (alignment, a frame outside the table, reserved bits).
    FailInput = 1,
    /// 2: the entry may not be changed by this instruction (an immutable, firmware-owned page).
    FailPermission = 2,
    /// 3: the entry is in use (PSMASH: another processor is updating the region; RMPUPDATE: the
    /// frame is the VMSA of a vCPU that is using it).
    FailInuse = 3,
    /// 4: RMPUPDATE: the 4K/2M sizes overlap (a 2M entry over assigned 4K entries, a 4K entry
    /// inside an assigned 2M entry), or a concurrent update of the region. PSMASH: the entry is
    /// not a 2M entry (`FAIL_BADADDR`).
    FailOverlap = 4,
    /// 6: PVALIDATE: the requested size does not match the RMP entry's.
    FailSizeMismatch = 6,
}

/// PSMASH's `FAIL_BADADDR` shares the code of RMPUPDATE's `FAIL_OVERLAP`.
pub const PSMASH_FAIL_BADADDR: RmpError = RmpError::FailOverlap;

impl RmpError {
    /// The raw code (`ret` of the instruction).
    pub fn code(self) -> u32 {
        self as u32
    }
}

impl fmt::Display for RmpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            RmpError::FailInput => "FAIL_INPUT",
            RmpError::FailPermission => "FAIL_PERMISSION",
            RmpError::FailInuse => "FAIL_INUSE",
            RmpError::FailOverlap => "FAIL_OVERLAP",
            RmpError::FailSizeMismatch => "FAIL_SIZEMISMATCH",
        };
        write!(f, "{name} ({})", self.code())
    }
}

/// `struct rmp_state`: what RMPUPDATE writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RmpState {
    /// `gpa` (page aligned; 2M aligned for a 2M entry).
    pub gpa: u64,
    /// `assigned`.
    pub assigned: bool,
    /// `pagesize`: a 2M entry.
    pub pagesize_2m: bool,
    /// `immutable`.
    pub immutable: bool,
    /// `asid`.
    pub asid: u32,
}

/// One entry as RMPREAD (and `get_rmpentry`) presents it, plus the bits only the raw entry has.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
#[doc(alias("rmpentry", "rmpentry_raw"))]
pub struct RmpEntry {
    /// Owned by a guest (or the firmware).
    pub assigned: bool,
    /// Part of a 2M entry (the entry at the 2M-aligned frame is the authority for all 512).
    pub pagesize_2m: bool,
    /// Only the firmware may change it (Pre-Guest, Firmware, Context, Metadata pages).
    pub immutable: bool,
    /// Validated by the guest (PVALIDATE); cleared by every RMPUPDATE.
    pub validated: bool,
    /// A VMSA page.
    pub vmsa: bool,
    /// The VMSA of a vCPU that is using it (RMPUPDATE: `FAIL_INUSE`).
    pub vmsa_in_use: bool,
    /// Model-only: the guest wrote the frame through its key and it was not flushed since (see
    /// the module docs).
    pub guest_dirty: bool,
    /// The owner's ASID (0: hypervisor or firmware).
    pub asid: u32,
    /// The guest physical address the frame may be mapped at.
    pub gpa: u64,
}

impl fmt::Debug for RmpEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.assigned && !self.guest_dirty && !self.pagesize_2m {
            return f.write_str("shared");
        }
        write!(f, "{}", if self.assigned { "assigned" } else { "shared" })?;
        if self.assigned {
            write!(f, " asid={} gpa={:#x}", self.asid, self.gpa)?;
        }
        write!(f, " {}", if self.pagesize_2m { "2M" } else { "4K" })?;
        for (set, name) in [
            (self.immutable, "immutable"),
            (self.validated, "validated"),
            (self.vmsa, "vmsa"),
            (self.vmsa_in_use, "in-use"),
            (self.guest_dirty, "guest-dirty"),
        ] {
            if set {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

impl RmpEntry {
    /// The firmware ABI's name for the entry's state (for dumps and assertions).
    pub fn state_name(&self) -> &'static str {
        match (self.assigned, self.immutable, self.validated) {
            (false, _, _) => "Hypervisor",
            (true, true, _) if self.asid == 0 => "Firmware",
            (true, true, _) => "Pre-Guest",
            (true, false, false) => "Guest-Invalid",
            (true, false, true) => "Guest-Valid",
        }
    }

    const ASSIGNED: u64 = 1 << 0;
    const PAGESIZE: u64 = 1 << 1;
    const IMMUTABLE: u64 = 1 << 2;
    const VALIDATED: u64 = 1 << 3;
    const VMSA: u64 = 1 << 4;
    const VMSA_IN_USE: u64 = 1 << 5;
    const GUEST_DIRTY: u64 = 1 << 6;
    const ASID_SHIFT: u32 = 8;
    const ASID_MASK: u64 = 0xffff;
    const GFN_SHIFT: u32 = 24;

    fn decode(raw: u64) -> RmpEntry {
        RmpEntry {
            assigned: raw & Self::ASSIGNED != 0,
            pagesize_2m: raw & Self::PAGESIZE != 0,
            immutable: raw & Self::IMMUTABLE != 0,
            validated: raw & Self::VALIDATED != 0,
            vmsa: raw & Self::VMSA != 0,
            vmsa_in_use: raw & Self::VMSA_IN_USE != 0,
            guest_dirty: raw & Self::GUEST_DIRTY != 0,
            asid: ((raw >> Self::ASID_SHIFT) & Self::ASID_MASK) as u32,
            gpa: (raw >> Self::GFN_SHIFT) << PAGE_SHIFT,
        }
    }

    fn encode(&self) -> u64 {
        let mut raw = (u64::from(self.asid) & Self::ASID_MASK) << Self::ASID_SHIFT;
        raw |= (self.gpa >> PAGE_SHIFT) << Self::GFN_SHIFT;
        for (set, bit) in [
            (self.assigned, Self::ASSIGNED),
            (self.pagesize_2m, Self::PAGESIZE),
            (self.immutable, Self::IMMUTABLE),
            (self.validated, Self::VALIDATED),
            (self.vmsa, Self::VMSA),
            (self.vmsa_in_use, Self::VMSA_IN_USE),
            (self.guest_dirty, Self::GUEST_DIRTY),
        ] {
            if set {
                raw |= bit;
            }
        }
        raw
    }
}

/// What the firmware does to an entry ([`Rmp::firmware_set`]): the firmware is not subject to
/// RMPUPDATE's rules and sets the bits its commands define.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirmwareTransition {
    /// LAUNCH_UPDATE succeeded: Pre-Guest → Guest-Valid (immutable cleared, validated set).
    LaunchUpdated,
    /// LAUNCH_UPDATE of a VMSA page succeeded: Pre-Guest → a guest VMSA (validated, VMSA bit).
    VmsaLaunched,
    /// PAGE_RECLAIM: a firmware or Pre-Guest page becomes changeable by the hypervisor again
    /// (immutable cleared; still assigned until the hypervisor's RMPUPDATE).
    Reclaimed,
}

/// What PVALIDATE did (`rc` 0 or the "no update" carry flag the guest maps to 255).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvalidateOutcome {
    /// The Validated bit changed.
    Updated,
    /// The entry was already in the requested state (CF=1; Linux guests report
    /// `PVALIDATE_FAIL_NOUPDATE`, 255).
    NoUpdate,
}

/// A 2M region: its entries and bookkeeping.
struct Region {
    entries: [AtomicU64; PAGES_PER_2M as usize],
    /// The hardware's serialisation of updates of one region.
    busy: AtomicBool,
    /// Entries of the region that are assigned.
    assigned: AtomicU32,
    /// Whether the host direct map maps the region with 4K pages (`set_memory_4k`): until then a
    /// 2M mapping covers it.
    direct_map_split: AtomicBool,
}

impl Region {
    fn new() -> Region {
        Region {
            entries: std::array::from_fn(|_| AtomicU64::new(0)),
            busy: AtomicBool::new(false),
            assigned: AtomicU32::new(0),
            direct_map_split: AtomicBool::new(false),
        }
    }
}

/// Holds a region's `busy` word for the length of one instruction.
struct RegionLock<'a>(&'a Region);

impl Drop for RegionLock<'_> {
    fn drop(&mut self) {
        self.0.busy.store(false, Ordering::Release);
    }
}

/// The RMP of one host.
pub struct Rmp {
    /// One pointer per 2M region (a leaked `Box<Region>`, or null until first written).
    regions: Box<[AtomicPtr<Region>]>,
    max_pfn: u64,
}

impl fmt::Debug for Rmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rmp").field("max_pfn", &self.max_pfn).field("assigned", &self.assigned_count()).finish()
    }
}

impl Drop for Rmp {
    fn drop(&mut self) {
        for slot in self.regions.iter() {
            let region = slot.load(Ordering::Acquire);
            if !region.is_null() {
                // SAFETY: made by Box::into_raw in `region_or_alloc` and published once;
                // `&mut self` means no reader is left.
                drop(unsafe { Box::from_raw(region) });
            }
        }
    }
}

/// `PG_LEVEL_TO_RMP`: whether `level` is a 2M RMP size (`None` for a level RMP entries cannot
/// have).
pub fn pagesize_2m(level: PgLevel) -> Option<bool> {
    match level {
        PgLevel::Level4K => Some(false),
        PgLevel::Level2M => Some(true),
        PgLevel::Level1G => None,
    }
}

/// `RMP_TO_PG_LEVEL`.
pub fn rmp_level(pagesize_2m: bool) -> PgLevel {
    if pagesize_2m {
        PgLevel::Level2M
    } else {
        PgLevel::Level4K
    }
}

impl Rmp {
    /// An RMP covering frames `0..total_pages` (`rmptable_max_pfn`), every entry
    /// hypervisor-owned (the kernel clears the table before it enables SNP).
    pub fn new(total_pages: u64) -> Rmp {
        let regions = total_pages.div_ceil(PAGES_PER_2M);
        Rmp { regions: (0..regions).map(|_| AtomicPtr::new(std::ptr::null_mut())).collect(), max_pfn: total_pages }
    }

    /// `rmptable_max_pfn + 1`: frames at or above it have no entry.
    pub fn max_pfn(&self) -> u64 {
        self.max_pfn
    }

    fn region(&self, pfn: Pfn) -> Option<&Region> {
        let slot = self.regions.get((pfn.0 / PAGES_PER_2M) as usize)?;
        let region = slot.load(Ordering::Acquire);
        // SAFETY: a region is published once (compare-exchange from null) and freed only when
        // the table is dropped.
        (!region.is_null()).then(|| unsafe { &*region })
    }

    fn region_or_alloc(&self, pfn: Pfn) -> Option<&Region> {
        if let Some(region) = self.region(pfn) {
            return Some(region);
        }
        let slot = self.regions.get((pfn.0 / PAGES_PER_2M) as usize)?;
        let fresh = Box::into_raw(Box::new(Region::new()));
        if slot.compare_exchange(std::ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire).is_err() {
            // SAFETY: never published; still ours.
            drop(unsafe { Box::from_raw(fresh) });
        }
        self.region(pfn)
    }

    fn raw(&self, pfn: Pfn) -> u64 {
        self.region(pfn).map_or(0, |region| region.entries[(pfn.0 % PAGES_PER_2M) as usize].load(Ordering::Acquire))
    }

    /// The entry of `pfn` (RMPREAD); `None` beyond the table.
    pub fn read(&self, pfn: Pfn) -> Option<RmpEntry> {
        (pfn.0 < self.max_pfn).then(|| RmpEntry::decode(self.raw(pfn)))
    }

    /// The level of the entry that is authoritative for `pfn`: the 2M-aligned entry's size
    /// (`__snp_lookup_rmpentry`); `None` beyond the table.
    #[doc(alias = "__snp_lookup_rmpentry")]
    pub fn level(&self, pfn: Pfn) -> Option<PgLevel> {
        self.read(Pfn(pfn.0 & !(PAGES_PER_2M - 1))).map(|large| rmp_level(large.pagesize_2m))
    }

    /// Every assigned entry, as `(pfn, entry)`, in pfn order (for invariants and dumps).
    pub fn assigned_entries(&self) -> Vec<(Pfn, RmpEntry)> {
        let mut out = Vec::new();
        for (index, slot) in self.regions.iter().enumerate() {
            let region = slot.load(Ordering::Acquire);
            if region.is_null() {
                continue;
            }
            // SAFETY: as in `region`.
            let region = unsafe { &*region };
            if region.assigned.load(Ordering::Acquire) == 0 {
                continue;
            }
            for (offset, raw) in region.entries.iter().enumerate() {
                let entry = RmpEntry::decode(raw.load(Ordering::Acquire));
                if entry.assigned {
                    out.push((Pfn(index as u64 * PAGES_PER_2M + offset as u64), entry));
                }
            }
        }
        out
    }

    /// How many entries are assigned.
    pub fn assigned_count(&self) -> u64 {
        self.regions
            .iter()
            .map(|slot| slot.load(Ordering::Acquire))
            .filter(|region| !region.is_null())
            // SAFETY: as in `region`.
            .map(|region| u64::from(unsafe { &*region }.assigned.load(Ordering::Acquire)))
            .sum()
    }

    /// Takes the region's lock word for one instruction; `None` if another processor holds it.
    fn try_lock(region: &Region) -> Option<RegionLock<'_>> {
        region.busy.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).ok().map(|_| RegionLock(region))
    }

    /// Writes `entry` at `pfn` of `region` (locked), keeping the region's assigned count.
    fn store(region: &Region, pfn: Pfn, entry: RmpEntry) {
        let slot = &region.entries[(pfn.0 % PAGES_PER_2M) as usize];
        let old = RmpEntry::decode(slot.swap(entry.encode(), Ordering::AcqRel));
        match (old.assigned, entry.assigned) {
            (false, true) => {
                region.assigned.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                region.assigned.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
    }

    /// The RMPUPDATE instruction on `pfn` with `state` (hypervisor only). A 2M update writes all
    /// 512 entries of the region (each with its part of the GPA) and needs the region to be a
    /// 2M entry already or to have no assigned entry; a 4K update inside an assigned 2M entry
    /// overlaps. Validated and VMSA are cleared; lines the guest dirtied stay dirty until a
    /// flush.
    pub fn rmpupdate(&self, pfn: Pfn, state: &RmpState) -> Result<(), RmpError> {
        let npages = if state.pagesize_2m { PAGES_PER_2M } else { 1 };
        if pfn.0 >= self.max_pfn || pfn.0 % npages != 0 || state.gpa % (npages << PAGE_SHIFT) != 0 {
            return Err(RmpError::FailInput);
        }
        if state.asid as u64 > RmpEntry::ASID_MASK || (!state.assigned && (state.asid != 0 || state.immutable)) {
            return Err(RmpError::FailInput);
        }
        let region = self.region_or_alloc(pfn).ok_or(RmpError::FailInput)?;
        let _lock = Rmp::try_lock(region).ok_or(RmpError::FailOverlap)?;
        let base = Pfn(pfn.0 & !(PAGES_PER_2M - 1));
        let large = RmpEntry::decode(region.entries[0].load(Ordering::Acquire));
        let current = RmpEntry::decode(region.entries[(pfn.0 % PAGES_PER_2M) as usize].load(Ordering::Acquire));
        if current.immutable {
            return Err(RmpError::FailPermission);
        }
        if current.vmsa_in_use {
            return Err(RmpError::FailInuse);
        }
        if state.pagesize_2m {
            let whole_2m = large.pagesize_2m && large.assigned;
            if !whole_2m && region.assigned.load(Ordering::Acquire) != 0 {
                return Err(RmpError::FailOverlap);
            }
            if whole_2m
                && region.entries.iter().any(|raw| {
                    let entry = RmpEntry::decode(raw.load(Ordering::Acquire));
                    entry.immutable || entry.vmsa_in_use
                })
            {
                return Err(RmpError::FailPermission);
            }
        } else if large.pagesize_2m && large.assigned {
            return Err(RmpError::FailOverlap);
        } else if large.pagesize_2m {
            // A hypervisor-owned 2M entry (left by a 2M `rmp_make_shared`): a 4K entry inside
            // turns the region back into 4K entries, so no stale 2M size is authoritative for
            // the frame that becomes private.
            for raw in region.entries.iter() {
                let _ = raw.fetch_and(!RmpEntry::PAGESIZE, Ordering::AcqRel);
            }
        }
        for i in 0..npages {
            let target = Pfn(pfn.0 + i);
            let old = RmpEntry::decode(region.entries[(target.0 % PAGES_PER_2M) as usize].load(Ordering::Acquire));
            let entry = RmpEntry {
                assigned: state.assigned,
                pagesize_2m: state.pagesize_2m,
                immutable: state.immutable,
                validated: false,
                vmsa: false,
                vmsa_in_use: false,
                guest_dirty: old.guest_dirty,
                asid: state.asid,
                gpa: if state.assigned { state.gpa + (i << PAGE_SHIFT) } else { 0 },
            };
            Rmp::store(region, target, entry);
        }
        debug_assert!(!state.pagesize_2m || pfn == base);
        Ok(())
    }

    /// The PSMASH instruction on the 2M-aligned `pfn` (hypervisor only): the 2M entry becomes
    /// 512 4K entries with the same owner, each at its GPA, keeping Validated.
    pub fn psmash(&self, pfn: Pfn) -> Result<(), RmpError> {
        if pfn.0 >= self.max_pfn || pfn.0 % PAGES_PER_2M != 0 {
            return Err(RmpError::FailInput);
        }
        let Some(region) = self.region(pfn) else { return Err(PSMASH_FAIL_BADADDR) };
        let _lock = Rmp::try_lock(region).ok_or(RmpError::FailInuse)?;
        let large = RmpEntry::decode(region.entries[0].load(Ordering::Acquire));
        if !large.pagesize_2m || !large.assigned {
            return Err(PSMASH_FAIL_BADADDR);
        }
        if large.immutable {
            return Err(RmpError::FailPermission);
        }
        for raw in region.entries.iter() {
            let mut entry = RmpEntry::decode(raw.load(Ordering::Acquire));
            entry.pagesize_2m = false;
            raw.store(entry.encode(), Ordering::Release);
        }
        Ok(())
    }

    /// The firmware changes `pfn`'s entry as one of its commands defines (see
    /// [`FirmwareTransition`]); returns the entry before. The firmware runs its own checks on the
    /// entry first ([`crate::sev::firmware`]); the hardware only applies the change.
    pub fn firmware_set(&self, pfn: Pfn, transition: FirmwareTransition) -> Option<RmpEntry> {
        let region = self.region_or_alloc(pfn)?;
        let slot = &region.entries[(pfn.0 % PAGES_PER_2M) as usize];
        let old = RmpEntry::decode(slot.load(Ordering::Acquire));
        let mut entry = old;
        match transition {
            FirmwareTransition::LaunchUpdated => {
                entry.immutable = false;
                entry.validated = true;
            }
            FirmwareTransition::VmsaLaunched => {
                entry.immutable = false;
                entry.validated = true;
                entry.vmsa = true;
            }
            FirmwareTransition::Reclaimed => {
                entry.immutable = false;
                entry.vmsa = false;
                entry.vmsa_in_use = false;
            }
        }
        Rmp::store(region, pfn, entry);
        Some(old)
    }

    /// The model's firmware-side RMPUPDATE: the firmware assigns its own pages (guest context,
    /// metadata) without the hypervisor's restrictions. Used by the firmware model only.
    pub fn firmware_assign(&self, pfn: Pfn, asid: u32, gpa: u64, immutable: bool) -> Option<()> {
        let region = self.region_or_alloc(pfn)?;
        let entry = RmpEntry { assigned: true, immutable, asid, gpa, ..RmpEntry::default() };
        Rmp::store(region, pfn, entry);
        Some(())
    }

    /// Test-only: writes `entry` at `pfn` as is, bypassing every instruction's rules, as
    /// corrupted hardware state would be (the negative controls of the RMP invariants). Returns
    /// the entry before.
    #[doc(hidden)]
    pub fn set_entry_for_test(&self, pfn: Pfn, entry: RmpEntry) -> Option<RmpEntry> {
        let region = self.region_or_alloc(pfn)?;
        let old = self.read(pfn);
        Rmp::store(region, pfn, entry);
        old
    }

    /// A vCPU starts or stops using `pfn` as its VMSA (VMRUN loads it; RMPUPDATE of an in-use
    /// VMSA fails with `FAIL_INUSE`).
    pub fn set_vmsa_in_use(&self, pfn: Pfn, in_use: bool) {
        let Some(region) = self.region_or_alloc(pfn) else { return };
        let slot = &region.entries[(pfn.0 % PAGES_PER_2M) as usize];
        let mut entry = RmpEntry::decode(slot.load(Ordering::Acquire));
        entry.vmsa_in_use = in_use;
        slot.store(entry.encode(), Ordering::Release);
    }

    /// The guest stored to `pfn` through its key (a private access the RMP check allowed): its
    /// cache lines for the frame may now be dirty.
    pub fn note_guest_write(&self, pfn: Pfn) {
        if let Some(region) = self.region(pfn) {
            let slot = &region.entries[(pfn.0 % PAGES_PER_2M) as usize];
            if slot.load(Ordering::Relaxed) & RmpEntry::GUEST_DIRTY == 0 {
                let _ = slot.fetch_or(RmpEntry::GUEST_DIRTY, Ordering::AcqRel);
            }
        }
    }

    /// `clflush_cache_range` over `npages` frames from `pfn`: the guest's cache lines are
    /// written back and dropped (clears the model's guest-dirty bit).
    pub fn clflush(&self, pfn: Pfn, npages: u64) {
        for i in 0..npages {
            let target = Pfn(pfn.0 + i);
            let Some(region) = self.region(target) else { continue };
            let slot = &region.entries[(target.0 % PAGES_PER_2M) as usize];
            let _ = slot.fetch_and(!RmpEntry::GUEST_DIRTY, Ordering::AcqRel);
        }
    }

    /// `set_memory_4k` over the direct map of `pfn`'s region (`adjust_direct_map`).
    pub fn split_direct_map(&self, pfn: Pfn) {
        if let Some(region) = self.region_or_alloc(pfn) {
            region.direct_map_split.store(true, Ordering::Release);
        }
    }

    /// Whether the direct map still maps `pfn`'s region with a 2M page.
    pub fn direct_map_is_2m(&self, pfn: Pfn) -> bool {
        self.region(pfn).is_none_or(|region| !region.direct_map_split.load(Ordering::Acquire))
    }

    /// The RMP check of a host (hypervisor) write to `pfn`: `None` if allowed, else why it
    /// faults. The check itself (see [`HostWriteCheck`]).
    pub fn host_write_fault(&self, pfn: Pfn) -> Option<String> {
        let region = self.region(pfn)?;
        let entry = RmpEntry::decode(region.entries[(pfn.0 % PAGES_PER_2M) as usize].load(Ordering::Acquire));
        if entry.assigned {
            return Some(format!(
                "RMP #PF: host write to {pfn:?}, which is {} ({entry:?}): RMP violation, the host cannot recover",
                entry.state_name()
            ));
        }
        if !region.direct_map_split.load(Ordering::Acquire) && region.assigned.load(Ordering::Acquire) != 0 {
            return Some(format!(
                "RMP #PF: host write to {pfn:?} through a 2M direct-map mapping that covers {} assigned frame(s) of its \
                 region (adjust_direct_map did not split it)",
                region.assigned.load(Ordering::Acquire)
            ));
        }
        if entry.guest_dirty {
            return Some(format!(
                "S9: host write to {pfn:?}, which the guest wrote and the host took back without a cache flush: \
                 the guest's dirty lines (encrypted with its key) may be written back over the host's data"
            ));
        }
        None
    }

    /// The RMP check of a guest access (after the nested walk mapped `gpa` to `pfn` with a leaf
    /// of `npt_level`) by the guest whose ASID is `asid`. A private access (`private`: the
    /// C-bit) needs an entry assigned to `asid` at `gpa`, not immutable, a nested leaf of the
    /// entry's size, and Validated (else #VC); a shared access needs a hypervisor-owned frame.
    pub fn check_guest_access(
        &self,
        asid: u32,
        gpa: u64,
        pfn: Pfn,
        npt_level: PgLevel,
        private: bool,
        write: bool,
    ) -> Result<(), GuestFault> {
        let entry = self.read(pfn).unwrap_or_default();
        let mut error_code = PFERR_GUEST_RMP_MASK | if write { PFERR_WRITE_MASK } else { 0 };
        if !private {
            return if entry.assigned { Err(GuestFault::Npf { error_code }) } else { Ok(()) };
        }
        error_code |= PFERR_GUEST_ENC_MASK;
        let page_gpa = gpa & !((1u64 << PAGE_SHIFT) - 1);
        if !entry.assigned || entry.asid != asid || entry.gpa != page_gpa || entry.immutable {
            return Err(GuestFault::Npf { error_code });
        }
        // The nested leaf and the RMP entry must be the same size: a 4K nested mapping of a 2M
        // entry faults (KVM PSMASHes the entry and rebuilds the range at 4K), and so does a
        // larger nested mapping than the entry (which KVM's max mapping level prevents).
        let level = self.level(pfn).unwrap_or(PgLevel::Level4K);
        if npt_level != level {
            return Err(GuestFault::Npf { error_code });
        }
        if !entry.validated {
            return Err(GuestFault::Exception(GuestException { vector: "#VC", gpa, reason: "page-not-validated" }));
        }
        Ok(())
    }

    /// The PVALIDATE instruction by the guest of `asid` on `gpa`, which its nested page tables
    /// map to `pfn` with a leaf of `npt_level`: validate (or rescind) a 4K or 2M page.
    ///
    /// * A 2M request needs a 2M-aligned `gpa` (else `FAIL_INPUT`), and a 2M RMP entry and a 2M
    ///   nested leaf (else `FAIL_SIZEMISMATCH`: the guest falls back to 4K).
    /// * A 4K request on a 2M RMP entry is a nested fault with `PFERR_GUEST_SIZEM` (KVM
    ///   PSMASHes and the guest retries).
    /// * The entry must be assigned to `asid` at `gpa` and not immutable (else a nested RMP
    ///   fault).
    /// * Already in the requested state: [`PvalidateOutcome::NoUpdate`].
    pub fn pvalidate(
        &self,
        asid: u32,
        gpa: u64,
        pfn: Pfn,
        npt_level: PgLevel,
        size_2m: bool,
        validate: bool,
    ) -> Result<Result<PvalidateOutcome, RmpError>, GuestFault> {
        let error_code = PFERR_GUEST_RMP_MASK | PFERR_GUEST_ENC_MASK | PFERR_WRITE_MASK;
        let npages = if size_2m { PAGES_PER_2M } else { 1 };
        if gpa % (npages << PAGE_SHIFT) != 0 {
            return Ok(Err(RmpError::FailInput));
        }
        let base = Pfn(pfn.0 & !(npages - 1));
        let Some(level) = self.level(base) else { return Err(GuestFault::Npf { error_code }) };
        if size_2m && (level != PgLevel::Level2M || npt_level < PgLevel::Level2M || base != pfn) {
            return Ok(Err(RmpError::FailSizeMismatch));
        }
        if !size_2m && level == PgLevel::Level2M {
            return Err(GuestFault::Npf { error_code: error_code | PFERR_GUEST_SIZEM_MASK });
        }
        let region = self.region(base).ok_or(GuestFault::Npf { error_code })?;
        let entry = RmpEntry::decode(region.entries[(base.0 % PAGES_PER_2M) as usize].load(Ordering::Acquire));
        if !entry.assigned || entry.asid != asid || entry.gpa != gpa || entry.immutable {
            return Err(GuestFault::Npf { error_code });
        }
        let Some(_lock) = Rmp::try_lock(region) else {
            // Another processor is updating the region: the instruction faults and the guest
            // retries it.
            return Err(GuestFault::Npf { error_code });
        };
        if entry.validated == validate {
            return Ok(Ok(PvalidateOutcome::NoUpdate));
        }
        for i in 0..npages {
            let slot = &region.entries[((base.0 + i) % PAGES_PER_2M) as usize];
            let mut sub = RmpEntry::decode(slot.load(Ordering::Acquire));
            sub.validated = validate;
            slot.store(sub.encode(), Ordering::Release);
        }
        Ok(Ok(PvalidateOutcome::Updated))
    }
}

impl Rmp {
    /// The guest's RMPADJUST of `pfn` (mapped at `gpa`) to make it a VMSA (`vmsa`) or a normal page
    /// again (`!vmsa`), as an SNP guest does for the page it hands to AP Creation. The entry must
    /// be the guest's, at `gpa`, validated, 4K (else `FAIL_INPUT`, or a nested RMP fault for a
    /// page that is not the guest's).
    pub fn rmpadjust_vmsa(
        &self,
        asid: u32,
        gpa: u64,
        pfn: Pfn,
        vmsa: bool,
    ) -> Result<Result<(), RmpError>, GuestFault> {
        let error_code = PFERR_GUEST_RMP_MASK | PFERR_GUEST_ENC_MASK | PFERR_WRITE_MASK;
        let Some(region) = self.region(pfn) else { return Err(GuestFault::Npf { error_code }) };
        let slot = &region.entries[(pfn.0 % PAGES_PER_2M) as usize];
        let mut entry = RmpEntry::decode(slot.load(Ordering::Acquire));
        if !entry.assigned || entry.asid != asid || entry.gpa != gpa & !((1 << PAGE_SHIFT) - 1) || entry.immutable {
            return Err(GuestFault::Npf { error_code });
        }
        if !entry.validated || entry.pagesize_2m {
            return Ok(Err(RmpError::FailInput));
        }
        entry.vmsa = vmsa;
        slot.store(entry.encode(), Ordering::Release);
        Ok(Ok(()))
    }
}

impl HostWriteCheck for Rmp {
    fn check_host_write(&self, pfn: Pfn) -> Option<String> {
        self.host_write_fault(pfn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn private(gpa: u64, asid: u32, size_2m: bool) -> RmpState {
        RmpState { gpa, assigned: true, pagesize_2m: size_2m, immutable: false, asid }
    }

    fn shared(size_2m: bool) -> RmpState {
        RmpState { pagesize_2m: size_2m, ..RmpState::default() }
    }

    #[test]
    fn rmpupdate_assigns_and_clears_validated() {
        let rmp = Rmp::new(4096);
        let pfn = Pfn(1000);
        rmp.rmpupdate(pfn, &private(0x5000, 7, false)).unwrap();
        let entry = rmp.read(pfn).unwrap();
        assert!(entry.assigned && !entry.validated && entry.asid == 7 && entry.gpa == 0x5000);
        assert_eq!(entry.state_name(), "Guest-Invalid");
        assert_eq!(rmp.pvalidate(7, 0x5000, pfn, PgLevel::Level4K, false, true), Ok(Ok(PvalidateOutcome::Updated)));
        assert_eq!(rmp.read(pfn).unwrap().state_name(), "Guest-Valid");
        // RMPUPDATE clears Validated, whatever it writes.
        rmp.rmpupdate(pfn, &private(0x5000, 7, false)).unwrap();
        assert!(!rmp.read(pfn).unwrap().validated);
        rmp.note_guest_write(pfn);
        rmp.rmpupdate(pfn, &shared(false)).unwrap();
        let entry = rmp.read(pfn).unwrap();
        assert!(!entry.assigned && entry.guest_dirty, "an RMPUPDATE does not flush");
        assert_eq!(rmp.assigned_count(), 0);
    }

    #[test]
    fn rmpupdate_checks_inputs_permissions_and_overlaps() {
        let rmp = Rmp::new(4096);
        assert_eq!(rmp.rmpupdate(Pfn(5000), &shared(false)), Err(RmpError::FailInput), "beyond the table");
        assert_eq!(rmp.rmpupdate(Pfn(513), &private(0x200000, 1, true)), Err(RmpError::FailInput), "unaligned 2M");
        assert_eq!(rmp.rmpupdate(Pfn(512), &private(0x201000, 1, true)), Err(RmpError::FailInput), "unaligned gpa");
        // Immutable entries are the firmware's.
        rmp.rmpupdate(Pfn(600), &RmpState { immutable: true, ..private(0, 0, false) }).unwrap();
        assert_eq!(rmp.rmpupdate(Pfn(600), &shared(false)), Err(RmpError::FailPermission));
        // A 2M entry over an assigned 4K entry overlaps; so does a 4K entry inside a 2M entry.
        assert_eq!(rmp.rmpupdate(Pfn(512), &private(0x200000, 1, true)), Err(RmpError::FailOverlap));
        rmp.rmpupdate(Pfn(1024), &private(0x400000, 1, true)).unwrap();
        assert_eq!(rmp.rmpupdate(Pfn(1030), &shared(false)), Err(RmpError::FailOverlap));
        assert_eq!(rmp.read(Pfn(1030)).unwrap().gpa, 0x406000, "each entry of a 2M entry has its GPA");
        assert_eq!(rmp.level(Pfn(1030)), Some(PgLevel::Level2M));
        // A VMSA in use cannot be changed.
        rmp.rmpupdate(Pfn(2000), &private(0x9000, 1, false)).unwrap();
        rmp.set_vmsa_in_use(Pfn(2000), true);
        assert_eq!(rmp.rmpupdate(Pfn(2000), &shared(false)), Err(RmpError::FailInuse));
    }

    #[test]
    fn psmash_splits_a_2m_entry_keeping_validated() {
        let rmp = Rmp::new(4096);
        rmp.rmpupdate(Pfn(1024), &private(0x400000, 3, true)).unwrap();
        assert_eq!(
            rmp.pvalidate(3, 0x400000, Pfn(1024), PgLevel::Level2M, true, true),
            Ok(Ok(PvalidateOutcome::Updated))
        );
        assert_eq!(rmp.psmash(Pfn(1025)), Err(RmpError::FailInput));
        rmp.psmash(Pfn(1024)).unwrap();
        for pfn in [1024, 1500, 1535] {
            let entry = rmp.read(Pfn(pfn)).unwrap();
            assert!(entry.assigned && entry.validated && !entry.pagesize_2m, "{entry:?}");
        }
        assert_eq!(rmp.level(Pfn(1500)), Some(PgLevel::Level4K));
        assert_eq!(rmp.psmash(Pfn(1024)), Err(PSMASH_FAIL_BADADDR), "no longer a 2M entry");
        // Now a 4K entry inside can change.
        rmp.rmpupdate(Pfn(1500), &shared(false)).unwrap();
    }

    #[test]
    fn a_4k_entry_inside_a_shared_2m_entry_is_4k() {
        let rmp = Rmp::new(4096);
        rmp.rmpupdate(Pfn(1024), &private(0x400000, 3, true)).unwrap();
        rmp.rmpupdate(Pfn(1024), &shared(true)).unwrap();
        assert_eq!(rmp.level(Pfn(1030)), Some(PgLevel::Level2M));
        rmp.rmpupdate(Pfn(1030), &private(0x7000, 3, false)).unwrap();
        assert_eq!(rmp.level(Pfn(1030)), Some(PgLevel::Level4K));
    }

    #[test]
    fn pvalidate_sizes() {
        let rmp = Rmp::new(4096);
        rmp.rmpupdate(Pfn(1024), &private(0x400000, 3, true)).unwrap();
        // 4K on a 2M entry: a size-mismatch nested fault.
        let Err(GuestFault::Npf { error_code }) = rmp.pvalidate(3, 0x401000, Pfn(1025), PgLevel::Level4K, false, true)
        else {
            panic!("expected an NPF")
        };
        assert!(error_code & PFERR_GUEST_SIZEM_MASK != 0);
        // 2M through a 4K nested leaf, or on 4K entries: FAIL_SIZEMISMATCH.
        assert_eq!(
            rmp.pvalidate(3, 0x400000, Pfn(1024), PgLevel::Level4K, true, true),
            Ok(Err(RmpError::FailSizeMismatch))
        );
        rmp.psmash(Pfn(1024)).unwrap();
        assert_eq!(
            rmp.pvalidate(3, 0x400000, Pfn(1024), PgLevel::Level2M, true, true),
            Ok(Err(RmpError::FailSizeMismatch))
        );
        assert_eq!(
            rmp.pvalidate(3, 0x401000, Pfn(1025), PgLevel::Level4K, false, true),
            Ok(Ok(PvalidateOutcome::Updated))
        );
        assert_eq!(
            rmp.pvalidate(3, 0x401000, Pfn(1025), PgLevel::Level4K, false, true),
            Ok(Ok(PvalidateOutcome::NoUpdate))
        );
        // Wrong ASID or GPA: a nested RMP fault.
        assert!(rmp.pvalidate(4, 0x401000, Pfn(1025), PgLevel::Level4K, false, true).is_err());
        assert!(rmp.pvalidate(3, 0x402000, Pfn(1025), PgLevel::Level4K, false, true).is_err());
    }

    #[test]
    fn guest_access_checks() {
        let rmp = Rmp::new(4096);
        let pfn = Pfn(100);
        // A shared access to a hypervisor frame is fine; a private one faults with ENC.
        assert_eq!(rmp.check_guest_access(5, 0x3000, pfn, PgLevel::Level4K, false, true), Ok(()));
        let Err(GuestFault::Npf { error_code }) = rmp.check_guest_access(5, 0x3000, pfn, PgLevel::Level4K, true, false)
        else {
            panic!("expected an NPF")
        };
        assert_eq!(
            error_code & (PFERR_GUEST_RMP_MASK | PFERR_GUEST_ENC_MASK),
            PFERR_GUEST_RMP_MASK | PFERR_GUEST_ENC_MASK
        );
        rmp.rmpupdate(pfn, &private(0x3000, 5, false)).unwrap();
        // Not validated yet: #VC.
        assert!(matches!(
            rmp.check_guest_access(5, 0x3010, pfn, PgLevel::Level4K, true, false),
            Err(GuestFault::Exception(GuestException { vector: "#VC", .. }))
        ));
        rmp.pvalidate(5, 0x3000, pfn, PgLevel::Level4K, false, true).unwrap().unwrap();
        assert_eq!(rmp.check_guest_access(5, 0x3010, pfn, PgLevel::Level4K, true, true), Ok(()));
        // Another guest, another GPA, a shared access, or a larger nested leaf: RMP faults.
        assert!(rmp.check_guest_access(6, 0x3000, pfn, PgLevel::Level4K, true, false).is_err());
        assert!(rmp.check_guest_access(5, 0x4000, pfn, PgLevel::Level4K, true, false).is_err());
        assert!(rmp.check_guest_access(5, 0x3000, pfn, PgLevel::Level4K, false, false).is_err());
        assert!(matches!(
            rmp.check_guest_access(5, 0x3000, pfn, PgLevel::Level2M, true, false),
            Err(GuestFault::Npf { .. })
        ));
        // A 4K nested leaf over a 2M entry faults too (KVM's sev_handle_rmp_fault PSMASHes).
        rmp.rmpupdate(Pfn(1024), &private(0x400000, 5, true)).unwrap();
        rmp.pvalidate(5, 0x400000, Pfn(1024), PgLevel::Level2M, true, true).unwrap().unwrap();
        assert_eq!(rmp.check_guest_access(5, 0x401000, Pfn(1025), PgLevel::Level2M, true, false), Ok(()));
        assert!(rmp.check_guest_access(5, 0x401000, Pfn(1025), PgLevel::Level4K, true, false).is_err());
    }

    #[test]
    fn host_writes_fault_on_assigned_frames_and_unsplit_direct_maps() {
        let rmp = Rmp::new(4096);
        assert_eq!(rmp.host_write_fault(Pfn(10)), None);
        rmp.split_direct_map(Pfn(10));
        rmp.rmpupdate(Pfn(10), &private(0x1000, 1, false)).unwrap();
        assert!(rmp.host_write_fault(Pfn(10)).unwrap().contains("RMP #PF"));
        assert_eq!(rmp.host_write_fault(Pfn(11)), None, "the direct map of the region was split");
        // Without the split, a neighbour in the same 2M region faults too.
        rmp.rmpupdate(Pfn(600), &private(0x1000, 1, false)).unwrap();
        assert!(rmp.host_write_fault(Pfn(601)).unwrap().contains("direct-map"));
        // The guest wrote it; back to shared, it needs a flush before the host writes it.
        rmp.note_guest_write(Pfn(10));
        rmp.rmpupdate(Pfn(10), &shared(false)).unwrap();
        assert!(rmp.host_write_fault(Pfn(10)).unwrap().starts_with("S9"));
        rmp.clflush(Pfn(10), 1);
        assert_eq!(rmp.host_write_fault(Pfn(10)), None);
    }

    #[test]
    fn concurrent_updates_of_a_region_see_the_lock() {
        let rmp = Rmp::new(4096);
        let region = rmp.region_or_alloc(Pfn(512)).unwrap();
        let held = Rmp::try_lock(region).unwrap();
        assert_eq!(rmp.rmpupdate(Pfn(513), &private(0, 1, false)), Err(RmpError::FailOverlap));
        drop(held);
        rmp.rmpupdate(Pfn(512), &private(0x200000, 1, true)).unwrap();
        let held = Rmp::try_lock(region).unwrap();
        assert_eq!(rmp.psmash(Pfn(512)), Err(RmpError::FailInuse));
        drop(held);
        rmp.psmash(Pfn(512)).unwrap();
    }
}
