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
//! * **INV-NO-STALE-PFN** (arch-and-mmu.md M5): no SPTE of a VM's TDP MMU, and no TLB entry of a
//!   vCPU without a `KVM_REQ_TLB_FLUSH` pending, maps a frame that was freed (or freed and reused)
//!   since the SPTE was installed: its generation is unchanged. The vendor extends it to the
//!   vCPU control structures it keeps pointers to (upstream-fixes.md): for SEV-SNP, the VMSA a
//!   vCPU runs with when the guest provided it (`vmsa_pa` with `snp_has_guest_vmsa`, after AP
//!   Creation) must be a frame of a live guest_memfd folio of the VM, still at the VMSA's GPA.
//!   That is the detector for upstream fix F11's bug.
//!
//! The MMU invariants of arch-and-mmu.md §5.1, by their names there:
//!
//! * **M1** (no stale install) is asserted where it can be, at the install: `TdpMmu::map` reports
//!   a WARN if `mmu_invalidate_retry_gfn` says the fault's snapshot is stale.
//! * **M2** (invalidation bookkeeping): at a quiescent point no invalidation is open
//!   (`mmu_invalidate_in_progress == 0`); begin/end balance and "a range was added" are WARNs in
//!   `kvm_mmu_invalidate_end` / `mmu_invalidate_retry_gfn`.
//! * **M3** (kind matches attributes): every private SPTE maps a PRIVATE gfn, every shared SPTE a
//!   shared one.
//! * **M4** (right backing), its private half: a private SPTE maps exactly the frame at
//!   `gfn - base_gfn + gmem.pgoff` of the bound guest_memfd (checked when that file is among the
//!   files handed in). The shared half ("a shared SPTE never maps a gmem pfn") does not hold for
//!   v6.18 `GMEM_ONLY` slots, whose shared faults map guest_memfd memory by design; not checked.
//! * **M5** (flush before reuse): INV-NO-STALE-PFN above, plus: a TLB entry of a vCPU with no
//!   flush pending is backed by a present SPTE of the same frame (a zap is always followed by a
//!   flush request before `mmu_lock` is dropped). A TLB entry holds a 4K piece of its leaf, so
//!   "the same frame" is the leaf's first pfn plus the gfn's offset in it.
//! * **M6** (huge mapping legality): every leaf above 4K has `gfn` and `pfn` aligned to its
//!   level, lies wholly inside one memslot whose `disallow_lpage` is 0 at that level, and, when
//!   it came from guest_memfd (private, or a v6.18 `GMEM_ONLY` slot), the folio holding its
//!   first index is at least that large and the vendor hook (`gmem_max_mapping_level`) allows
//!   the level.
//! * **M8**, its state half: every memslot's `KVM_LPAGE_MIXED_FLAG` bits equal their
//!   recomputation from the attribute xarray (a huge page wholly inside the slot is MIXED iff its
//!   gfns' attributes differ, or, at 1G, a 2M part is MIXED; any other page is never MIXED).
//!
//! On a VM with a mirror root (TDX) the checks above cover both roots, each at the memslot gfn
//! (a direct-root leaf at `gfn | kvm_gfn_direct_bits` is checked at `gfn`), and the MMU side of
//! the TDX invariants of arch-and-mmu.md §5.3 holds:
//!
//! * **T5** (mirror consistency, the MMU's half): no mirror SPTE is FROZEN at a quiescent point
//!   (a frozen SPTE is only ever seen inside an install, by the threads it makes retry, and the
//!   hardware walk treats it as not present); every present non-leaf mirror SPTE points to a
//!   table with a linked external page that is an allocated frame. Zaps of mirror SPTEs only
//!   non-atomically under `mmu_lock` held for write is enforced at the call (`KVM_BUG_ON` on an
//!   atomic zap).
//! * **T8** (4K only): every mirror leaf is 4K.
//! * **T9** (aliasing): mirror leaves are at gfns without the direct bits and private; the
//!   direct root holds only gfns with the direct bits (once they are set) and only shared
//!   leaves.
//!
//! M7 (memory-fault exits) is a property of one call: it is checked continuously, at the call
//! (`page_fault::kvm_mmu_page_fault`), and reported as a WARN, which every test asserts absent. M8's
//! call half (a no-op `KVM_SET_MEMORY_ATTRIBUTES` opens no invalidation, a failed reservation
//! changes nothing) holds by the order of `Kvm::vm_set_mem_attributes`, as in the kernel, and
//! is asserted by `tests/tests/integration/seed_errors/` (no MMU request, sequence unchanged); an
//! invalidation left open is M2.
//!
//! # Vendor invariants
//!
//! After the core checks of a VM, [`check`] calls its back-end's
//! [`KvmArch::check_invariants`](crate::arch::KvmArch::check_invariants) with every VM and
//! guest_memfd of the call. SEV-SNP implements it in `gmem_arch::sev::invariants`, which has the
//! details (and how the host-wide RMP is checked once per call against every SNP guest of the
//! host, through weak registrations the SNP host keeps); the SEV-SNP invariants of
//! arch-and-mmu.md §5.2, by their names there, and where each is enforced:
//!
//! | name | what | where |
//! |---|---|---|
//! | **S1** ownership | an assigned RMP entry belongs to a live guest_memfd folio of the VM with its ASID, a VMSA or firmware page (guest context, guest-request response page) of that VM, or the leak list; an assigned frame is never in the host free pool | checker (host-wide) |
//! | **S2** identity | a private SPTE of an SNP VM maps a frame whose RMP entry has the VM's ASID and GPA `gfn << 12`; no frame is mapped at two gfns | checker |
//! | **S3** no overlap | a 2M RMP entry covers 512 consistent entries of one folio of at least 2M; no entry claims a 2M size its region's 2M entry does not have | checker (host-wide); the hardware refuses a 4K RMPUPDATE inside an assigned 2M entry (`FAIL_OVERLAP`) |
//! | **S4** NPT ≤ RMP | a private SPTE is no larger than the RMP entry of its frame | checker; the hardware's access check faults a larger leaf (`PFERR_GUEST_SIZEM`) |
//! | **S5** validation | RMPUPDATE clears Validated, only PVALIDATE (and the firmware's LAUNCH_UPDATE) sets it, PSMASH keeps it, a private access to a non-validated page is a #VC | the hardware model makes a violation impossible (the instructions are the only writers) |
//! | **S6** host writes | a host write to an assigned frame (or through an unsplit 2M direct map over one) is an RMP #PF | the hardware model, at the write: a `WarnKind::Oops` |
//! | **S7** immutability | only the firmware changes an immutable entry | the hardware model: RMPUPDATE and PSMASH fail with `FAIL_PERMISSION` |
//! | **S8** lifecycle | no private mapping or prepared page before LAUNCH_FINISH, no page left Pre-Guest or private by a failed LAUNCH_UPDATE, no LAUNCH_UPDATE after LAUNCH_FINISH; a launched page is Guest-Valid | checker; WARN at `sev_gmem_prepare` (a prepare before LAUNCH_FINISH) and after each successful firmware LAUNCH_UPDATE (the page is not Guest-Valid at its GPA); the firmware refuses LAUNCH_UPDATE after LAUNCH_FINISH |
//! | **S9** RMP-shared ordering | a frame goes back to the hypervisor only once no SPTE maps it, and is flushed before the host writes it | WARN at the RMPUPDATE (an SPTE still maps the frame); the hardware model's host-write check (a write to a frame not flushed since) |
//! | **S10** prepare | a prepare of an assigned frame changes nothing; a 2M entry only for a folio of at least 2M whose 512 frames were all unassigned | WARN at `sev_gmem_prepare` (2M chosen for a smaller folio); S3 for the result; idempotence holds by the early return |
//! | **S11** measurement | the launch digest is the hash chain of the firmware's log of successful LAUNCH_UPDATEs (type, GPA, contents hash), VMSAs included | checker |
//! | **S12** PSC accounting | a forwarded PSC range is in flight (1 or more entries, inside the buffer) exactly while KVM waits for user space, and is completed only then | checker (per vCPU); WARN when an empty or out-of-buffer range is completed |
//!
//! The checker is handed what is reachable from user space (the VMs and guest_memfd files of a
//! process: descriptors and mappings); at a quiescent point every live guest_memfd is reachable
//! that way, because a released file has no deferred work left.

use crate::arch::PgLevel;
use crate::guest_memfd::{gmem_of_file, KvmGmem};
use crate::memslot::{gfn_to_index, KVM_MEMSLOT_GMEM_ONLY, KVM_MEMSLOT_INVALID, KVM_MEM_GUEST_MEMFD};
use crate::tdp_mmu::Spte;
use crate::tlb::KVM_REQ_TLB_FLUSH;
use crate::types::Gfn;
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
/// M2, invalidation bookkeeping.
pub const M2_INVALIDATION: &str = "M2";
/// M3, SPTE kind matches the attributes.
pub const M3_KIND: &str = "M3";
/// M4, a private SPTE maps the bound guest_memfd's frame.
pub const M4_BACKING: &str = "M4";
/// M5, a TLB entry with no flush pending is backed by the SPTE.
pub const M5_FLUSH: &str = "M5";
/// M6, huge mapping legality.
pub const M6_HUGE: &str = "M6";
/// M8, the MIXED flags equal their recomputation from the attributes.
pub const M8_MIXED: &str = "M8";
/// T5, mirror consistency (the MMU's half).
pub const T5_MIRROR: &str = "T5";
/// T8, mirror leaves are 4K.
pub const T8_4K: &str = "T8";
/// T9, private mappings in the mirror root at gfns without the shared bit, shared ones in the
/// direct root at gfns with it.
pub const T9_ALIAS: &str = "T9";

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
    for &kvm in &all_vms {
        check_slots_are_bound(kvm, &gmem_files, &mut out);
        check_no_stale_pfn(kvm, &mut out);
        check_mmu(kvm, &gmem_files, &mut out);
        check_huge_leaves(kvm, &gmem_files, &mut out);
        check_mirror_root(kvm, &mut out);
        check_mixed_flags(kvm, &mut out);
        kvm.arch().check_invariants(kvm, &all_vms, &gmem_files, &mut out);
    }
    out
}

/// M2, M3, M4 and the TLB half of M5 over one VM.
fn check_mmu(kvm: &Arc<Kvm>, gmem_files: &[(&FileRef, &KvmGmem)], out: &mut Vec<Violation>) {
    let in_progress = kvm.mmu_invalidate_in_progress();
    if in_progress != 0 {
        out.push(Violation {
            invariant: M2_INVALIDATION,
            detail: format!("mmu_invalidate_in_progress is {in_progress} at a quiescent point"),
        });
    }
    let Some(tdp) = kvm.tdp_mmu() else { return };
    let direct_bits = kvm.gfn_direct_bits();
    let srcu = kvm.srcu_read_lock();
    for (base, leaf) in &tdp.sptes() {
        // The direct root's leaves of a VM with a mirror root are at `gfn | direct bits`.
        let base = Gfn(base.0 & !direct_bits);
        for offset in 0..leaf.level.pages() {
            check_leaf_gfn(kvm, &srcu, gmem_files, Gfn(base.0 + offset), leaf.pfn.offset(offset), leaf, out);
        }
    }
    if kvm.has_mirrored_tdp() {
        for (base, leaf) in &tdp.mirror_sptes() {
            for offset in 0..leaf.level.pages() {
                check_leaf_gfn(kvm, &srcu, gmem_files, Gfn(base.0 + offset), leaf.pfn.offset(offset), leaf, out);
            }
        }
    }
    drop(srcu);
    for vcpu in kvm.vcpus() {
        let tlb = vcpu.tlb();
        if tlb.test_request(KVM_REQ_TLB_FLUSH) {
            continue;
        }
        for (gfn, entry) in tlb.entries() {
            let covering =
                if kvm.has_mirrored_tdp() { tdp.root_covering_leaf(kvm, gfn) } else { tdp.covering_leaf(gfn) };
            let backed = covering.is_some_and(|(base, spte)| spte.pfn.offset(gfn.0 - base.0) == entry.pfn);
            if !backed {
                out.push(Violation {
                    invariant: M5_FLUSH,
                    detail: format!(
                        "vCPU {} caches gfn {gfn} -> {:?} with no SPTE behind it and no flush pending",
                        vcpu.vcpu_id(),
                        entry.pfn
                    ),
                });
            }
        }
    }
}

/// INV-NO-STALE-PFN over one VM's SPTEs (every frame of a huge leaf), in both roots.
fn check_no_stale_pfn(kvm: &Arc<Kvm>, out: &mut Vec<Violation>) {
    let Some(tdp) = kvm.tdp_mmu() else { return };
    let mem = &kvm.machine().mem;
    let mirror = if kvm.has_mirrored_tdp() { tdp.mirror_sptes() } else { Vec::new() };
    let leaves = tdp.sptes().into_iter().map(|leaf| (false, leaf)).chain(mirror.into_iter().map(|leaf| (true, leaf)));
    for (in_mirror, (base, spte)) in leaves {
        let generations = if spte.level == PgLevel::Level4K {
            vec![spte.generation]
        } else if in_mirror {
            tdp.mirror_frame_generations(base)
        } else {
            tdp.frame_generations(base)
        };
        for (offset, &installed) in generations.iter().enumerate() {
            let pfn = spte.pfn.offset(offset as u64);
            let gfn = Gfn(base.0 + offset as u64);
            if !mem.is_valid_pfn(pfn) {
                out.push(Violation {
                    invariant: INV_NO_STALE_PFN,
                    detail: format!("gfn {gfn} ({} leaf) maps {pfn:?}, a frame that was never allocated", spte.level),
                });
                continue;
            }
            let now = mem.generation(pfn);
            if now != installed || !mem.is_allocated(pfn) {
                out.push(Violation {
                    invariant: INV_NO_STALE_PFN,
                    detail: format!(
                        "gfn {gfn} maps {pfn:?} installed at generation {installed}, now {now} ({})",
                        if mem.is_allocated(pfn) { "freed and reused" } else { "freed" }
                    ),
                });
            }
        }
    }
    for vcpu in kvm.vcpus() {
        let tlb = vcpu.tlb();
        if tlb.test_request(KVM_REQ_TLB_FLUSH) {
            continue; // not quiescent for this vCPU: it flushes on its next entry
        }
        for (gfn, entry) in tlb.entries() {
            let now = mem.generation(entry.pfn);
            if now != entry.generation || !mem.is_allocated(entry.pfn) {
                out.push(Violation {
                    invariant: INV_NO_STALE_PFN,
                    detail: format!(
                        "vCPU {} TLB caches gfn {gfn} -> {:?} of generation {}, now {now}",
                        vcpu.vcpu_id(),
                        entry.pfn,
                        entry.generation
                    ),
                });
            }
        }
    }
}

/// M3 and M4 for one gfn of a leaf, mapped to `pfn`.
fn check_leaf_gfn(
    kvm: &Arc<Kvm>,
    srcu: &gmem_sync::srcu::SrcuReadGuard<'_>,
    gmem_files: &[(&FileRef, &KvmGmem)],
    gfn: Gfn,
    pfn: gmem_mm::Pfn,
    spte: &Spte,
    out: &mut Vec<Violation>,
) {
    let private_attr = kvm.mem_is_private(gfn);
    if spte.private != private_attr {
        out.push(Violation {
            invariant: M3_KIND,
            detail: format!(
                "gfn {gfn} has a {} SPTE ({}) but is {}",
                if spte.private { "private" } else { "shared" },
                spte.level,
                if private_attr { "PRIVATE" } else { "shared" }
            ),
        });
    }
    if !spte.private {
        return;
    }
    let Some(slot) = kvm.gfn_to_memslot(srcu, gfn) else {
        out.push(Violation {
            invariant: M4_BACKING,
            detail: format!("private SPTE of gfn {gfn} outside every memslot"),
        });
        return;
    };
    let file = slot.gmem_file().load(Ordering::Acquire);
    let Some((bound, _)) = gmem_files.iter().find(|(candidate, _)| std::ptr::eq(candidate.as_ptr(), file)) else {
        return;
    };
    let index = gfn.0.wrapping_sub(slot.base_gfn().0).wrapping_add(slot.gmem_pgoff());
    let backing = gmem_folio_at(bound, index).map(|folio| folio.file_pfn(gmem_mm::PgOff(index)));
    if backing != Some(pfn) {
        out.push(Violation {
            invariant: M4_BACKING,
            detail: format!("private SPTE of gfn {gfn} maps {pfn:?}, the file holds {backing:?} at {index:#x}"),
        });
    }
}

/// The page-cache folio of `file` holding `index`.
fn gmem_folio_at<'f>(file: &'f FileRef, index: u64) -> Option<gmem_mm::folio::Folio<'f>> {
    file.inode().mapping().peek_folio(gmem_mm::PgOff(index))
}

/// M6 over one VM's leaves above 4K (both roots, at the memslot gfn).
fn check_huge_leaves(kvm: &Arc<Kvm>, gmem_files: &[(&FileRef, &KvmGmem)], out: &mut Vec<Violation>) {
    let Some(tdp) = kvm.tdp_mmu() else { return };
    let direct_bits = kvm.gfn_direct_bits();
    let mirror = if kvm.has_mirrored_tdp() { tdp.mirror_sptes() } else { Vec::new() };
    let srcu = kvm.srcu_read_lock();
    for (gfn, spte) in tdp.sptes().into_iter().map(|(gfn, spte)| (Gfn(gfn.0 & !direct_bits), spte)).chain(mirror) {
        let level = spte.level;
        if level == PgLevel::Level4K {
            continue;
        }
        let mut fail = |why: String| {
            out.push(Violation {
                invariant: M6_HUGE,
                detail: format!("{level} leaf at gfn {gfn} ({:?}): {why}", spte.pfn),
            })
        };
        let mask = level.pages() - 1;
        if gfn.0 & mask != 0 || spte.pfn.0 & mask != 0 {
            fail("gfn or pfn not aligned to the level".into());
        }
        let Some(slot) = kvm.gfn_to_memslot(&srcu, gfn) else {
            fail("outside every memslot".into());
            continue;
        };
        if !slot.contains(Gfn(gfn.0 + mask)) {
            fail(format!("reaches past memslot {}", slot.id()));
            continue;
        }
        let disallow = slot.disallow_lpage(gfn, level);
        if disallow != 0 {
            fail(format!("disallow_lpage is {disallow:#x} at that level"));
        }
        if spte.private || slot.flags() & KVM_MEMSLOT_GMEM_ONLY != 0 {
            let file = slot.gmem_file().load(Ordering::Acquire);
            if let Some((bound, _)) = gmem_files.iter().find(|(candidate, _)| std::ptr::eq(candidate.as_ptr(), file)) {
                let index = gfn.0.wrapping_sub(slot.base_gfn().0).wrapping_add(slot.gmem_pgoff());
                let order = gmem_folio_at(bound, index).map(|folio| folio.order());
                if order.is_none_or(|order| PgLevel::for_order(order) < level) {
                    fail(format!("the guest_memfd folio at index {index:#x} has order {order:?}"));
                }
            }
            if let Some(hook) = kvm.gmem_max_mapping_level(spte.pfn, spte.private) {
                if hook < level {
                    fail(format!("the vendor hook allows {hook} at most"));
                }
            }
        }
    }
}

/// T5, T8 and T9 (the MMU's side) over one VM, alone: they take no lock but the TDP MMU's own
/// (so they may run where `check` may not, with `mmu_lock` held). Empty for a VM without a
/// mirror root.
pub fn check_mirror(kvm: &Arc<Kvm>) -> Vec<Violation> {
    let mut out = Vec::new();
    check_mirror_root(kvm, &mut out);
    out
}

/// T5, T8 and T9 (the MMU's side) over one VM with a mirror root.
fn check_mirror_root(kvm: &Arc<Kvm>, out: &mut Vec<Violation>) {
    let Some(tdp) = kvm.tdp_mmu() else { return };
    let direct_bits = kvm.gfn_direct_bits();
    if !kvm.has_mirrored_tdp() {
        return;
    }
    let mem = &kvm.machine().mem;
    for frozen in tdp.mirror_frozen() {
        out.push(Violation {
            invariant: T5_MIRROR,
            detail: format!("the {} mirror SPTE at gfn {} is FROZEN at a quiescent point", frozen.level, frozen.gfn),
        });
    }
    for table in tdp.mirror_tables().into_iter().skip(1) {
        let linked = table.external_spt.is_some_and(|pfn| mem.is_valid_pfn(pfn) && mem.is_allocated(pfn));
        if !linked {
            out.push(Violation {
                invariant: T5_MIRROR,
                detail: format!(
                    "the {} mirror table at gfn {} is linked without an allocated external page ({:?})",
                    table.level, table.gfn, table.external_spt
                ),
            });
        }
    }
    for (gfn, spte) in tdp.mirror_sptes() {
        if spte.level != PgLevel::Level4K {
            out.push(Violation {
                invariant: T8_4K,
                detail: format!("mirror leaf at gfn {gfn} is {} ({:?})", spte.level, spte.pfn),
            });
        }
        if gfn.0 & direct_bits != 0 || !spte.private {
            out.push(Violation {
                invariant: T9_ALIAS,
                detail: format!(
                    "mirror leaf at gfn {gfn} ({}) {}",
                    if spte.private { "private" } else { "shared" },
                    if gfn.0 & direct_bits != 0 { "has the direct bits" } else { "is not private" }
                ),
            });
        }
    }
    if direct_bits == 0 {
        return;
    }
    for (gfn, spte) in tdp.sptes() {
        if gfn.0 & direct_bits == 0 || spte.private {
            out.push(Violation {
                invariant: T9_ALIAS,
                detail: format!(
                    "direct-root leaf at gfn {gfn} ({}) {}",
                    if spte.private { "private" } else { "shared" },
                    if gfn.0 & direct_bits == 0 { "lacks the direct bits" } else { "is private" }
                ),
            });
        }
    }
}

/// M8's state half over one VM's memslots.
fn check_mixed_flags(kvm: &Arc<Kvm>, out: &mut Vec<Violation>) {
    let slots_lock = kvm.lock_slots();
    for entry in kvm.memslots_locked(&slots_lock).iter() {
        let slot = kvm.memslot(entry);
        if slot.flags() & KVM_MEMSLOT_INVALID != 0 {
            continue;
        }
        let (base, end) = (entry.base_gfn, entry.base_gfn + entry.npages);
        let info = slot.lpage_info();
        // Only huge pages holding a stored attribute can be MIXED; check those and every flag set.
        let stored = if kvm.has_private_mem() { kvm.attributes_in(Gfn(base), Gfn(end)) } else { Vec::new() };
        for level in PgLevel::HUGE {
            let linfo = &info.levels[level as usize - 2];
            let mut candidates: std::collections::BTreeSet<u64> =
                stored.iter().map(|&(gfn, _)| level.round(gfn)).collect();
            candidates
                .extend(linfo.mixed.iter().map(|index| ((base >> level.gfn_shift()) + index) << level.gfn_shift()));
            for gfn in candidates {
                let inside = gfn >= base && gfn + level.pages() <= end;
                let expected = inside && kvm.recompute_mixed(Gfn(gfn), level);
                let actual = linfo.mixed.contains(&gfn_to_index(Gfn(gfn), Gfn(base), level));
                if actual != expected {
                    out.push(Violation {
                        invariant: M8_MIXED,
                        detail: format!(
                            "memslot {} {level} page at gfn {gfn:#x}: KVM_LPAGE_MIXED_FLAG is {actual}, the attributes say {expected}",
                            slot.id()
                        ),
                    });
                }
            }
        }
    }
}

/// INV-BIND, bindings → memslots. Each binding is reported as one range of file pages (its
/// xarray pieces joined), naming the guest_memfd's inode, the range and the slot.
fn check_bindings_point_to_slots(file: &FileRef, gmem: &KvmGmem, out: &mut Vec<Violation>) {
    let kvm = gmem.kvm();
    let ino = file.inode().ino();
    let slots_lock = kvm.lock_slots();
    let published = kvm.memslots_locked(&slots_lock);
    for (first, last, handle) in gmem.binding_ranges() {
        let binding = format!("gmem ino {ino} pages [{first:#x}, {last:#x}]");
        let slot = match kvm.memslot_by_handle(handle) {
            Ok(slot) => slot,
            Err(_) => {
                // The storage still says which slot it was, unless a new slot reused it.
                let what = match kvm.freed_memslot(handle) {
                    Some(freed) => format!(
                        "slot id {}, as_id {}, gfns [{:#x}, {:#x})",
                        freed.id().id(),
                        freed.id().as_id(),
                        freed.base_gfn().0,
                        freed.base_gfn().0 + freed.npages()
                    ),
                    None => "its storage since reused".to_owned(),
                };
                out.push(Violation {
                    invariant: INV_BIND,
                    detail: format!(
                        "{binding} is bound to freed memslot {handle:?} ({what}): the binding outlived its memslot"
                    ),
                });
                continue;
            }
        };
        let id = slot.id();
        let named = format!("{binding} (memslot {handle:?}, slot id {}, as_id {})", id.id(), id.as_id());
        if !published.iter().any(|entry| entry.handle == handle) {
            out.push(Violation { invariant: INV_BIND, detail: format!("{named}: the memslot is not published") });
        }
        let bound_file = slot.gmem_file().load(Ordering::Acquire);
        if !std::ptr::eq(bound_file, file.as_ptr()) {
            out.push(Violation {
                invariant: INV_BIND,
                detail: format!("{named}: the memslot has gmem.file {bound_file:?}"),
            });
        }
        let pgoff = slot.gmem_pgoff();
        if first < pgoff || last - pgoff >= slot.npages() {
            out.push(Violation {
                invariant: INV_BIND,
                detail: format!("{named}: outside the memslot's range [{pgoff:#x}, {:#x}]", pgoff + slot.npages() - 1),
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
    let arch = gmem.kvm().arch().clone();
    for (index, folio) in inode.mapping().folios() {
        let pins: i32 = (0..folio.nr_pages()).map(|i| arch.gmem_page_pins(folio.pfn().offset(i))).sum();
        let expected = folio.nr_pages() as i32 + pins;
        if folio.refcount() != expected {
            out.push(Violation {
                invariant: INV_REFCOUNT,
                detail: format!(
                    "gmem ino {} index {:#x} ({:?}): refcount {} but the page cache and the vendor's pins hold {expected}",
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
