//! The address ranges a kvm backend made, and the check that keeps a script's memory
//! operations (`store`, `munmap`, `madvise`) away from the runner's own memory.
//!
//! The simulator gives a script a process of its own; on the real kernel the script shares
//! the runner's process. Every mapping the script makes is recorded here. An operation whose
//! range lies inside the script's mappings runs; one that reaches outside them runs only if
//! `/proc/self/maps` shows nothing else there (the kernel then answers SIGSEGV, ENOMEM,
//! EINVAL... as it would in the script's own process). If the range would touch memory the
//! runner itself uses, the backend does not perform the operation and says so (`skip`).
//!
//! A range the script unmaps stays reserved without access rights ([`RegionKind::Unmapped`]):
//! the runner allocates memory of its own between lines (and other threads do too), and a
//! load or store through a stale name must fault as it would in the script's process, not
//! land in whatever the runner placed there since.

use std::fs;

/// The page size of x86-64.
pub const PAGE_SIZE: u64 = 4096;

/// What a recorded range is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// An `mmap` of the script.
    Mapping,
    /// Anonymous memory for `uaddr=auto`.
    Anonymous,
    /// A range the script unmapped, kept reserved (`PROT_NONE`) so the runner's allocator
    /// cannot reuse it: a later access through the old name faults (SIGSEGV) as it would in
    /// the script's own process, instead of reading the runner's memory.
    Unmapped,
}

/// A page-aligned range `[start, end)` the backend mapped and still owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// The first byte.
    pub start: u64,
    /// One past the last byte (page-aligned).
    pub end: u64,
    /// What it is.
    pub kind: RegionKind,
}

/// The ranges a backend owns, sorted by start, never overlapping.
#[derive(Debug, Default)]
pub struct Regions {
    regions: Vec<Region>,
}

/// `len` rounded up to whole pages (saturating).
pub fn page_align(len: u64) -> u64 {
    len.checked_add(PAGE_SIZE - 1).map_or(!(PAGE_SIZE - 1), |v| v & !(PAGE_SIZE - 1))
}

impl Regions {
    /// Records a fresh mapping of `len` bytes at `start` (the kernel rounds it to pages).
    pub fn add(&mut self, start: u64, len: u64, kind: RegionKind) {
        let end = start.saturating_add(page_align(len));
        self.remove(start, end);
        let at = self.regions.partition_point(|r| r.start < start);
        self.regions.insert(at, Region { start, end, kind });
    }

    /// Forgets every owned byte of `[start, end)` (after a successful `munmap`).
    pub fn remove(&mut self, start: u64, end: u64) {
        let mut kept = Vec::with_capacity(self.regions.len() + 1);
        for region in self.regions.drain(..) {
            if region.end <= start || region.start >= end {
                kept.push(region);
                continue;
            }
            if region.start < start {
                kept.push(Region { end: start, ..region });
            }
            if region.end > end {
                kept.push(Region { start: end, ..region });
            }
        }
        self.regions = kept;
    }

    /// The owned ranges overlapping `[start, end)`, clipped to it.
    pub fn owned_within(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.regions
            .iter()
            .filter(|r| r.start < end && r.end > start)
            .map(|r| (r.start.max(start), r.end.min(end)))
            .collect()
    }

    /// Forgets the whole ranges the script unmapped that overlap `[start, end)` and returns
    /// them (the caller releases their reservations and reserves them again).
    pub fn take_unmapped_within(&mut self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let taken: Vec<(u64, u64)> = self
            .regions
            .iter()
            .filter(|r| r.kind == RegionKind::Unmapped && r.start < end && r.end > start)
            .map(|r| (r.start, r.end))
            .collect();
        self.regions.retain(|r| !(r.kind == RegionKind::Unmapped && r.start < end && r.end > start));
        taken
    }

    /// Every owned range, for the final release.
    pub fn take_all(&mut self) -> Vec<Region> {
        std::mem::take(&mut self.regions)
    }

    /// The parts of `[start, end)` that no owned region covers.
    fn uncovered(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut gaps = Vec::new();
        let mut cursor = start;
        for region in &self.regions {
            if region.end <= cursor || region.start >= end {
                continue;
            }
            if region.start > cursor {
                gaps.push((cursor, region.start));
            }
            cursor = cursor.max(region.end);
            if cursor >= end {
                break;
            }
        }
        if cursor < end {
            gaps.push((cursor, end));
        }
        gaps
    }

    /// Whether an operation on the pages of `[addr, addr + len)` may run: every page is
    /// either the script's own or, per `/proc/self/maps`, not mapped at all.
    pub fn may_touch(&self, addr: u64, len: u64) -> bool {
        let start = addr & !(PAGE_SIZE - 1);
        let end = addr.saturating_add(len).saturating_add(PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
        let gaps = self.uncovered(start, end.max(start));
        if gaps.is_empty() {
            return true;
        }
        let Some(foreign) = process_mappings() else { return false };
        !gaps.iter().any(|&(gap_start, gap_end)| foreign.iter().any(|&(s, e)| s < gap_end && e > gap_start))
    }
}

/// The address ranges of this process (`/proc/self/maps`), or `None` if it cannot be read.
fn process_mappings() -> Option<Vec<(u64, u64)>> {
    let maps = fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .map(|line| {
            let range = line.split_whitespace().next()?;
            let (start, end) = range.split_once('-')?;
            Some((u64::from_str_radix(start, 16).ok()?, u64::from_str_radix(end, 16).ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_trims_and_splits_regions() {
        let mut regions = Regions::default();
        regions.add(0x10000, 0x4000, RegionKind::Mapping);
        regions.remove(0x11000, 0x12000);
        assert_eq!(regions.uncovered(0x10000, 0x14000), vec![(0x11000, 0x12000)]);
        regions.add(0x11000, 1, RegionKind::Mapping);
        assert!(regions.uncovered(0x10000, 0x14000).is_empty());
    }

    #[test]
    fn the_runners_own_memory_may_not_be_touched_but_owned_and_unmapped_memory_may() {
        let regions = Regions::default();
        let heap = Box::new([0u8; 64]);
        assert!(!regions.may_touch(heap.as_ptr() as u64, 64));
        // 64 KiB: above mmap_min_addr, far below where a PIE process has its image, heap and
        // mappings, so nothing of this process is there (a freed hole would not do: parallel
        // tests map memory and may take it at once).
        assert!(regions.may_touch(0x10000, 16));
        let mut owned = Regions::default();
        owned.add(heap.as_ptr() as u64 & !(PAGE_SIZE - 1), 2 * PAGE_SIZE, RegionKind::Mapping);
        assert!(owned.may_touch(heap.as_ptr() as u64, 64));
    }
}
