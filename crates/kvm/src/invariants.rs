//! Named invariants, checkable at any quiescent point (between system calls): after every uAPI
//! call in tests, and on demand (`check_invariants` in scripts).
//!
//! * **INV-BIND** (upstream-fixes.md): every entry of a guest_memfd's `bindings` points to a live,
//!   published memslot whose `gmem.file` is that guest_memfd and whose range covers the entry;
//!   and every live guest_memfd memslot with a file has its whole range present in that file's
//!   `bindings`.
//! * **INV-REFCOUNT**: after a call returns, a page-cache folio's refcount is exactly the page
//!   cache's own references (nobody leaked a `folio_get`), and the folio still knows its owner.
//! * **INV-UPTODATE-PREPARED**: a folio marked uptodate was zeroed or populated, and, in a VM
//!   with private memory, arch-prepared or populated.
//! * **INV-NO-STALE-PFN** (arch-and-mmu.md M5): no SPTE of a VM's TDP MMU maps a frame that was
//!   freed (or freed and reused) since the SPTE was installed: its generation is unchanged.
//!
//! The checker is handed what is reachable from user space (the VMs and guest_memfd files of a
//! process: descriptors and mappings); at a quiescent point every live guest_memfd is reachable
//! that way, because a released file has no deferred work left.

use crate::guest_memfd::{gmem_of_file, KvmGmem};
use crate::memslot::{KVM_MEMSLOT_INVALID, KVM_MEM_GUEST_MEMFD};
use crate::vm::Kvm;
use gmem_mm::file::FileRef;
use gmem_sync::atomic::Ordering;
use gmem_sync::Arc;
use std::fmt;

/// One violated invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The invariant's name (`INV-BIND`).
    pub invariant: &'static str,
    /// What exactly is wrong.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

/// `INV-BIND`.
pub const INV_BIND: &str = "INV-BIND";
/// `INV-REFCOUNT`.
pub const INV_REFCOUNT: &str = "INV-REFCOUNT";
/// `INV-UPTODATE-PREPARED`.
pub const INV_UPTODATE_PREPARED: &str = "INV-UPTODATE-PREPARED";
/// `INV-NO-STALE-PFN`.
pub const INV_NO_STALE_PFN: &str = "INV-NO-STALE-PFN";

/// Checks every invariant over the given VMs and files (non-guest_memfd files are ignored; the
/// VMs of the guest_memfds are added to `vms`).
pub fn check(vms: &[Arc<Kvm>], files: &[FileRef]) -> Vec<Violation> {
    let mut out = Vec::new();
    let gmem_files: Vec<(&FileRef, &KvmGmem)> =
        files.iter().filter_map(|file| gmem_of_file(file).map(|gmem| (file, gmem))).collect();
    let mut all_vms: Vec<&Arc<Kvm>> = vms.iter().collect();
    for (_, gmem) in &gmem_files {
        all_vms.push(gmem.kvm());
    }
    all_vms.sort_by_key(|kvm| Arc::as_ptr(kvm));
    all_vms.dedup_by_key(|kvm| Arc::as_ptr(kvm));
    let mut seen_files: Vec<*const gmem_mm::file::File> = Vec::new();
    for (file, gmem) in &gmem_files {
        let ptr: *const gmem_mm::file::File = &***file;
        if seen_files.contains(&ptr) {
            continue;
        }
        seen_files.push(ptr);
        check_bindings_point_to_slots(file, gmem, &mut out);
        check_page_cache(file, gmem, &mut out);
    }
    for kvm in all_vms {
        check_slots_are_bound(kvm, &gmem_files, &mut out);
        check_no_stale_pfn(kvm, &mut out);
    }
    out
}

/// INV-NO-STALE-PFN over one VM's SPTEs.
fn check_no_stale_pfn(kvm: &Arc<Kvm>, out: &mut Vec<Violation>) {
    let Some(tdp) = kvm.mmu().as_tdp() else { return };
    let mem = &kvm.machine().mem;
    for (gfn, spte) in tdp.sptes() {
        let now = mem.generation(spte.pfn);
        if now != spte.generation || !mem.is_allocated(spte.pfn) {
            out.push(Violation {
                invariant: INV_NO_STALE_PFN,
                detail: format!(
                    "gfn {gfn} maps {:?} installed at generation {}, now {now} ({})",
                    spte.pfn,
                    spte.generation,
                    if mem.is_allocated(spte.pfn) { "freed and reused" } else { "freed" }
                ),
            });
        }
    }
}

/// INV-BIND, bindings → memslots.
fn check_bindings_point_to_slots(file: &FileRef, gmem: &KvmGmem, out: &mut Vec<Violation>) {
    let kvm = gmem.kvm();
    let ino = file.inode().ino();
    let slots_lock = kvm.lock_slots();
    let published = kvm.memslots_locked(&slots_lock);
    for (index, handle) in gmem.bindings() {
        let slot = match kvm.memslot_by_handle(handle) {
            Ok(slot) => slot,
            Err(_) => {
                out.push(Violation {
                    invariant: INV_BIND,
                    detail: format!("gmem ino {ino} index {index:#x} is bound to freed memslot {handle:?}"),
                });
                continue;
            }
        };
        if !published.iter().any(|entry| entry.handle == handle) {
            out.push(Violation {
                invariant: INV_BIND,
                detail: format!(
                    "gmem ino {ino} index {index:#x} is bound to memslot {handle:?}, which is not published"
                ),
            });
        }
        let bound_file = slot.gmem_file().load(Ordering::Acquire);
        if !std::ptr::eq(bound_file, file.as_ptr()) {
            out.push(Violation {
                invariant: INV_BIND,
                detail: format!("gmem ino {ino} index {index:#x}: memslot {} has gmem.file {bound_file:?}", slot.id()),
            });
        }
        let pgoff = slot.gmem_pgoff();
        if index < pgoff || index - pgoff >= slot.npages() {
            out.push(Violation {
                invariant: INV_BIND,
                detail: format!("gmem ino {ino} index {index:#x} outside memslot {} range", slot.id()),
            });
        }
    }
}

/// INV-BIND, memslots → bindings.
fn check_slots_are_bound(kvm: &Arc<Kvm>, gmem_files: &[(&FileRef, &KvmGmem)], out: &mut Vec<Violation>) {
    let slots_lock = kvm.lock_slots();
    for entry in kvm.memslots_locked(&slots_lock).iter() {
        let slot = kvm.memslot(entry);
        if slot.flags() & KVM_MEM_GUEST_MEMFD == 0 || slot.flags() & KVM_MEMSLOT_INVALID != 0 {
            continue;
        }
        let file = slot.gmem_file().load(Ordering::Acquire);
        if file.is_null() {
            continue; // the file was released; release cleared the pointer
        }
        let Some((_, gmem)) = gmem_files.iter().find(|(candidate, _)| std::ptr::eq(candidate.as_ptr(), file)) else {
            out.push(Violation {
                invariant: INV_BIND,
                detail: format!("memslot {} points at a guest_memfd that is not open", slot.id()),
            });
            continue;
        };
        let first = slot.gmem_pgoff();
        let last = first + slot.npages() - 1;
        let mut holes = Vec::new();
        let probes: Vec<u64> =
            if slot.npages() <= 4096 { (first..=last).collect() } else { vec![first, first + slot.npages() / 2, last] };
        for index in probes {
            if gmem.binding_at(index) != Some(entry.handle) {
                holes.push(index);
            }
        }
        let mut foreign = false;
        gmem_bindings_in(gmem, first, last, |handle| foreign |= handle != entry.handle);
        if !holes.is_empty() || foreign {
            out.push(Violation {
                invariant: INV_BIND,
                detail: format!(
                    "memslot {} range [{first:#x}, {last:#x}] is not wholly bound to it (first gap {:?})",
                    slot.id(),
                    holes.first()
                ),
            });
        }
    }
}

fn gmem_bindings_in(gmem: &KvmGmem, first: u64, last: u64, mut f: impl FnMut(gmem_mm::slab::SlabHandle)) {
    for (index, handle) in gmem.bindings() {
        if index >= first && index <= last {
            f(handle);
        }
    }
}

/// INV-REFCOUNT and INV-UPTODATE-PREPARED over one guest_memfd's page cache.
fn check_page_cache(file: &FileRef, gmem: &KvmGmem, out: &mut Vec<Violation>) {
    let inode = file.inode();
    let private_vm = gmem.kvm().has_private_mem();
    for (index, folio) in inode.mapping().folios() {
        let expected = folio.nr_pages() as i32;
        if folio.refcount() != expected {
            out.push(Violation {
                invariant: INV_REFCOUNT,
                detail: format!(
                    "gmem ino {} index {:#x} ({:?}): refcount {} but the page cache holds {expected}",
                    inode.ino(),
                    index.0,
                    folio.pfn(),
                    folio.refcount()
                ),
            });
        }
        if folio.mapping_ino() != inode.ino() || folio.index() != index {
            out.push(Violation {
                invariant: INV_REFCOUNT,
                detail: format!("gmem ino {} index {:#x}: folio belongs elsewhere", inode.ino(), index.0),
            });
        }
        if folio.test_uptodate() {
            let initialised = folio.model_zeroed() || folio.model_populated();
            let prepared = !private_vm || folio.model_arch_prepared() || folio.model_populated();
            if !initialised || !prepared {
                out.push(Violation {
                    invariant: INV_UPTODATE_PREPARED,
                    detail: format!(
                        "gmem ino {} index {:#x}: uptodate but {}",
                        inode.ino(),
                        index.0,
                        if initialised { "never arch-prepared" } else { "never zeroed or populated" }
                    ),
                });
            }
        }
    }
}
