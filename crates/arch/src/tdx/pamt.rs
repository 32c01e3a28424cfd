//! The Physical Address Metadata Table: the TDX module's record, per host 4K frame of
//! TDX-convertible memory, of what the frame is (its page type), which TD owns it (by the TD's
//! TDR page) and at what size (`arch-and-mmu.md` §2.1).
//!
//! Every SEAMCALL that hands a host page to the module (MNG.CREATE the TDR, MNG.ADDCX and
//! VP.ADDCX control pages, VP.CREATE the TDVPR, SEPT.ADD an S-EPT table, PAGE.ADD and PAGE.AUG a
//! private page) requires the frame to be `PT_NDA` and makes it owned; PAGE.REMOVE and
//! PHYMEM.PAGE.RECLAIM give it back. That is what makes a frame belong to at most one TD, in one
//! role, at one GPA (T1).
//!
//! # What the model decides
//!
//! * **Convertible memory** is all of the machine's memory: every frame `1..total_pages`. The
//!   kernel builds its TDMRs to cover all of memory (`construct_tdmrs` from the memblocks) and the
//!   model has no memory holes, so there is nothing to leave out. Frame 0, which the machine never
//!   allocates, is `PT_RSVD` (as the kernel's reserved areas of a TDMR are).
//! * **The GPA of a `PT_REG` frame** is kept in its entry. The real PAMT has no GPA (the module
//!   finds it through the S-EPT); the model keeps it so that T1 can cross-check the S-EPT leaf that
//!   maps the frame against the frame's entry.
//! * **Three model-only bits per frame** describe what a frame that left a TD still carries, so
//!   the KVM side can be checked for the WBINVD and the clear it owes before the host reuses it
//!   (T4): `cache_key` (the frame may have dirty cache lines tagged with that KeyID: set when
//!   the frame is donated, cleared by TDH.PHYMEM.PAGE.WBINVD with that KeyID or by
//!   TDH.PHYMEM.CACHE.WB for a released key), `td_keyed` (its memory is still encrypted with
//!   integrity under a TD key: set at donation, cleared only by the host's MOVDIR64B clear,
//!   [`Pamt::host_clear`]) and `poisoned` (a host write hit it while a TD owned it, §2.8; a TD
//!   read of it is a machine check; also cleared by the MOVDIR64B clear, or by a new donation,
//!   whose initialisation writes the whole page under the new key).
//!
//! The table is sparse: frames that are `PT_NDA` with no residue have no entry.

use gmem_mm::Pfn;
use std::collections::BTreeMap;
use std::fmt;

/// The PAMT page types (`page_type_t` of the TDX module; the kernel's tdx.h names 0 and 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum PageType {
    /// `PT_NDA` (0): not directly assigned: free for the host, donatable.
    #[default]
    Nda = 0,
    /// `PT_RSVD` (1): reserved, never usable by a TD.
    Rsvd = 1,
    /// `PT_REG` (3): a TD private page.
    Reg = 3,
    /// `PT_TDR` (4): a TD's root control page.
    Tdr = 4,
    /// `PT_TDCX` (5): a TD control structure page (TDCS) or a vCPU's extension page (TDCX).
    Tdcx = 5,
    /// `PT_TDVPR` (6): a vCPU's root control page.
    Tdvpr = 6,
    /// `PT_EPT` (8): a Secure EPT table page.
    Ept = 8,
}

impl PageType {
    /// The module's name (`PT_REG`).
    pub const fn name(self) -> &'static str {
        match self {
            PageType::Nda => "PT_NDA",
            PageType::Rsvd => "PT_RSVD",
            PageType::Reg => "PT_REG",
            PageType::Tdr => "PT_TDR",
            PageType::Tdcx => "PT_TDCX",
            PageType::Tdvpr => "PT_TDVPR",
            PageType::Ept => "PT_EPT",
        }
    }

    /// Whether a frame of this type belongs to a TD.
    pub const fn is_td_owned(self) -> bool {
        !matches!(self, PageType::Nda | PageType::Rsvd)
    }
}

impl fmt::Display for PageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The PAMT page sizes (`page_size_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum PageSize {
    /// `PT_4KB` (0).
    #[default]
    Size4K = 0,
    /// `PT_2MB` (1).
    Size2M = 1,
    /// `PT_1GB` (2).
    Size1G = 2,
}

/// One frame's PAMT entry.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct PamtEntry {
    /// The page type.
    pub pt: PageType,
    /// The owner TD's TDR page (the TDR's own frame for a `PT_TDR`); `Pfn(0)` for a free frame.
    pub owner: Pfn,
    /// The page size.
    pub size: PageSize,
    /// Model-only: the GPA of a `PT_REG` frame (see the module docs); 0 otherwise.
    pub gpa: u64,
    /// `BEPOCH`: the TD epoch when RANGE.BLOCK blocked the entry that maps this frame.
    pub bepoch: u64,
}

impl PamtEntry {
    /// A frame of type `pt` owned by the TD whose TDR is `owner`.
    pub fn owned(pt: PageType, owner: Pfn) -> PamtEntry {
        PamtEntry { pt, owner, ..PamtEntry::default() }
    }

    /// A `PT_REG` frame of the TD whose TDR is `owner`, at `gpa`.
    pub fn private(owner: Pfn, gpa: u64) -> PamtEntry {
        PamtEntry { pt: PageType::Reg, owner, gpa, ..PamtEntry::default() }
    }
}

impl fmt::Debug for PamtEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.pt {
            PageType::Nda | PageType::Rsvd => write!(f, "{}", self.pt),
            PageType::Reg => write!(f, "PT_REG of TDR {} at gpa {:#x} bepoch {}", self.owner, self.gpa, self.bepoch),
            pt => write!(f, "{pt} of TDR {}", self.owner),
        }
    }
}

/// A frame's entry plus what the model tracks about its cache lines and contents (see the
/// module docs).
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameState {
    /// The PAMT entry.
    pub entry: PamtEntry,
    /// The KeyID the frame may hold dirty cache lines of.
    pub cache_key: Option<u16>,
    /// The frame's memory is still under a TD's key (integrity, TD bit).
    pub td_keyed: bool,
    /// A host write hit the frame while a TD owned it.
    pub poisoned: bool,
}

impl fmt::Debug for FrameState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.entry)?;
        if let Some(key) = self.cache_key {
            write!(f, " cache-key={key}")?;
        }
        if self.td_keyed {
            f.write_str(" td-keyed")?;
        }
        if self.poisoned {
            f.write_str(" poisoned")?;
        }
        Ok(())
    }
}

/// The PAMT of one host.
pub struct Pamt {
    total_pages: u64,
    frames: BTreeMap<u64, FrameState>,
}

impl fmt::Debug for Pamt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pamt").field("total_pages", &self.total_pages).field("tracked", &self.frames.len()).finish()
    }
}

impl Pamt {
    /// The PAMT of a machine of `total_pages` frames, every convertible frame `PT_NDA`.
    pub fn new(total_pages: u64) -> Pamt {
        Pamt { total_pages, frames: BTreeMap::new() }
    }

    /// Whether `pfn` is TDX-convertible memory (every frame but 0; see the module docs).
    pub fn is_convertible(&self, pfn: Pfn) -> bool {
        pfn.0 != 0 && pfn.0 < self.total_pages
    }

    /// The frame's state; `None` outside memory.
    pub fn frame(&self, pfn: Pfn) -> Option<FrameState> {
        if pfn.0 >= self.total_pages {
            return None;
        }
        if pfn.0 == 0 {
            return Some(FrameState {
                entry: PamtEntry { pt: PageType::Rsvd, ..PamtEntry::default() },
                ..FrameState::default()
            });
        }
        Some(self.frames.get(&pfn.0).copied().unwrap_or_default())
    }

    /// The frame's entry; `None` outside memory.
    pub fn entry(&self, pfn: Pfn) -> Option<PamtEntry> {
        self.frame(pfn).map(|frame| frame.entry)
    }

    /// How many frames have an entry (TD-owned, or carrying residue).
    pub fn tracked(&self) -> usize {
        self.frames.len()
    }

    /// Donates `pfn` to a TD as `entry`, with its cache lines and memory under `key`. Only a
    /// `PT_NDA` convertible frame can be donated: otherwise the current entry is returned and
    /// nothing changes.
    pub fn assign(&mut self, pfn: Pfn, entry: PamtEntry, key: u16) -> Result<(), PamtEntry> {
        let current = self.entry(pfn).unwrap_or(PamtEntry { pt: PageType::Rsvd, ..PamtEntry::default() });
        if !self.is_convertible(pfn) || current.pt != PageType::Nda {
            return Err(current);
        }
        self.frames.insert(pfn.0, FrameState { entry, cache_key: Some(key), td_keyed: true, poisoned: false });
        Ok(())
    }

    /// Returns `pfn` to `PT_NDA` (PAGE.REMOVE, RECLAIM, SEPT.REMOVE), keeping what its cache
    /// lines and memory still carry. Returns the entry it had.
    pub fn release(&mut self, pfn: Pfn) -> PamtEntry {
        let Some(frame) = self.frames.get_mut(&pfn.0) else { return PamtEntry::default() };
        let old = frame.entry;
        frame.entry = PamtEntry::default();
        self.drop_if_clean(pfn);
        old
    }

    /// Updates the entry of an owned frame in place (`BEPOCH`). False if the frame is not owned.
    pub fn update(&mut self, pfn: Pfn, change: impl FnOnce(&mut PamtEntry)) -> bool {
        match self.frames.get_mut(&pfn.0) {
            Some(frame) if frame.entry.pt.is_td_owned() => {
                change(&mut frame.entry);
                true
            }
            _ => false,
        }
    }

    /// Every frame with an entry, in pfn order.
    pub fn frames(&self) -> Vec<(Pfn, FrameState)> {
        self.frames.iter().map(|(&pfn, &frame)| (Pfn(pfn), frame)).collect()
    }

    /// Every frame owned by the TD whose TDR is `tdr` (the TDR included), in pfn order.
    pub fn owned_by(&self, tdr: Pfn) -> Vec<(Pfn, PamtEntry)> {
        self.frames
            .iter()
            .filter(|(_, frame)| frame.entry.pt.is_td_owned() && frame.entry.owner == tdr)
            .map(|(&pfn, frame)| (Pfn(pfn), frame.entry))
            .collect()
    }

    /// How many TD-owned frames there are.
    pub fn owned_count(&self) -> usize {
        self.frames.values().filter(|frame| frame.entry.pt.is_td_owned()).count()
    }

    /// A host write to `pfn`: a frame a TD owns is poisoned for the TD (the write breaks the
    /// line's integrity; the host is not stopped). Returns the entry when it poisoned one.
    pub fn note_host_write(&mut self, pfn: Pfn) -> Option<PamtEntry> {
        let frame = self.frames.get_mut(&pfn.0)?;
        if !frame.entry.pt.is_td_owned() {
            return None;
        }
        frame.poisoned = true;
        Some(frame.entry)
    }

    /// The module rewrote the whole of an owned frame under the TD's key (ACCEPT's
    /// initialisation): its poison is gone.
    pub fn clear_poison(&mut self, pfn: Pfn) {
        if let Some(frame) = self.frames.get_mut(&pfn.0) {
            frame.poisoned = false;
        }
    }

    /// TDH.PHYMEM.PAGE.WBINVD of `pfn` with `key`: its lines tagged with `key` are written back
    /// and invalidated.
    pub fn wbinvd(&mut self, pfn: Pfn, key: u16) {
        if let Some(frame) = self.frames.get_mut(&pfn.0) {
            if frame.cache_key == Some(key) {
                frame.cache_key = None;
                self.drop_if_clean(pfn);
            }
        }
    }

    /// TDH.PHYMEM.CACHE.WB for the released `keys`: every line tagged with one of them is written
    /// back.
    pub fn writeback_keys(&mut self, keys: &[u16]) {
        let touched: Vec<u64> = self
            .frames
            .iter_mut()
            .filter(|(_, frame)| frame.cache_key.is_some_and(|key| keys.contains(&key)))
            .map(|(&pfn, frame)| {
                frame.cache_key = None;
                pfn
            })
            .collect();
        for pfn in touched {
            self.drop_if_clean(Pfn(pfn));
        }
    }

    /// The host's MOVDIR64B clear of a frame no TD owns (`tdx_clear_page`): its memory is no
    /// longer TD-keyed and its poison is gone. A frame a TD owns is unchanged (the write only
    /// poisons it; see [`Pamt::note_host_write`]). Returns whether it cleared anything.
    pub fn host_clear(&mut self, pfn: Pfn) -> bool {
        let Some(frame) = self.frames.get_mut(&pfn.0) else { return false };
        if frame.entry.pt.is_td_owned() {
            return false;
        }
        let changed = frame.td_keyed || frame.poisoned;
        frame.td_keyed = false;
        frame.poisoned = false;
        self.drop_if_clean(pfn);
        changed
    }

    /// Why the host may not yet reuse `pfn` as an ordinary page: a TD still owns it, it may
    /// hold dirty lines of a TD key, or its memory is still under a TD key. `None` if it may.
    pub fn host_reuse_hazard(&self, pfn: Pfn) -> Option<String> {
        let frame = self.frames.get(&pfn.0)?;
        if frame.entry.pt.is_td_owned() {
            return Some(format!("{pfn:?} is still {:?}", frame.entry));
        }
        if let Some(key) = frame.cache_key {
            return Some(format!(
                "{pfn:?} may hold dirty cache lines of KeyID {key} (no TDH.PHYMEM.PAGE.WBINVD or CACHE.WB since it left \
                 the TD)"
            ));
        }
        if frame.td_keyed {
            return Some(format!("{pfn:?} is still under a TD's key (no MOVDIR64B clear since it left the TD)"));
        }
        None
    }

    /// Test-only: overwrites a frame's state without any check (to seed invariant violations).
    #[doc(hidden)]
    pub fn forge(&mut self, pfn: Pfn, frame: FrameState) {
        self.frames.insert(pfn.0, frame);
        self.drop_if_clean(pfn);
    }

    fn drop_if_clean(&mut self, pfn: Pfn) {
        if self.frames.get(&pfn.0).is_some_and(|frame| *frame == FrameState::default()) {
            self.frames.remove(&pfn.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn donation_only_from_nda_and_one_owner() {
        let mut pamt = Pamt::new(64);
        let td = Pfn(10);
        assert_eq!(pamt.entry(Pfn(0)).unwrap().pt, PageType::Rsvd, "frame 0 is reserved");
        assert_eq!(pamt.entry(Pfn(64)), None, "outside memory");
        assert!(pamt.assign(Pfn(0), PamtEntry::owned(PageType::Tdr, Pfn(0)), 1).is_err());
        pamt.assign(td, PamtEntry::owned(PageType::Tdr, td), 1).unwrap();
        pamt.assign(Pfn(11), PamtEntry::private(td, 0x1000), 5).unwrap();
        // A second donation of the same frame, to the same or another TD, fails unchanged.
        let err = pamt.assign(Pfn(11), PamtEntry::private(Pfn(20), 0x2000), 6).unwrap_err();
        assert_eq!((err.pt, err.owner, err.gpa), (PageType::Reg, td, 0x1000));
        assert_eq!(pamt.owned_by(td).len(), 2);
        assert_eq!(pamt.owned_count(), 2);
        assert_eq!(pamt.release(Pfn(11)).pt, PageType::Reg);
        assert_eq!(pamt.entry(Pfn(11)).unwrap().pt, PageType::Nda);
        assert!(pamt.host_reuse_hazard(Pfn(11)).unwrap().contains("KeyID 5"), "lines of the TD key remain");
        pamt.wbinvd(Pfn(11), 4);
        assert!(pamt.host_reuse_hazard(Pfn(11)).is_some(), "another key's WBINVD does not flush them");
        pamt.wbinvd(Pfn(11), 5);
        assert!(pamt.host_reuse_hazard(Pfn(11)).unwrap().contains("MOVDIR64B"));
        assert!(pamt.host_clear(Pfn(11)));
        assert_eq!(pamt.host_reuse_hazard(Pfn(11)), None);
        assert_eq!(pamt.tracked(), 1, "a clean free frame has no entry");
    }

    #[test]
    fn host_writes_poison_owned_frames_and_the_clear_removes_it() {
        let mut pamt = Pamt::new(64);
        pamt.assign(Pfn(3), PamtEntry::private(Pfn(2), 0x5000), 7).unwrap();
        assert_eq!(pamt.note_host_write(Pfn(4)), None, "a free frame is not poisoned");
        assert!(pamt.note_host_write(Pfn(3)).is_some());
        assert!(pamt.frame(Pfn(3)).unwrap().poisoned);
        assert!(!pamt.host_clear(Pfn(3)), "the host cannot clear a frame a TD owns");
        pamt.release(Pfn(3));
        pamt.writeback_keys(&[7]);
        assert!(pamt.frame(Pfn(3)).unwrap().poisoned);
        assert!(pamt.host_clear(Pfn(3)));
        assert_eq!(pamt.frame(Pfn(3)).unwrap(), FrameState::default());
        // A new donation starts clean.
        pamt.assign(Pfn(5), PamtEntry::private(Pfn(2), 0x6000), 7).unwrap();
        pamt.note_host_write(Pfn(5));
        pamt.release(Pfn(5));
        pamt.wbinvd(Pfn(5), 7);
        pamt.forge(Pfn(5), FrameState { td_keyed: false, poisoned: false, ..pamt.frame(Pfn(5)).unwrap() });
        pamt.assign(Pfn(5), PamtEntry::private(Pfn(2), 0x6000), 7).unwrap();
        assert!(!pamt.frame(Pfn(5)).unwrap().poisoned);
    }
}
