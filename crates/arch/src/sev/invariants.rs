//! The SEV-SNP invariants of `arch-and-mmu.md` §5.2 (S1–S12), and the SNP part of
//! INV-NO-STALE-PFN (`upstream-fixes.md`), as named checks over the simulated host at a quiescent
//! point. [`gmem_kvm::invariants::check`] reaches them through the back-end hook
//! [`KvmArch::check_invariants`](gmem_kvm::arch::KvmArch::check_invariants), which every
//! [`SvmVm`] implements with [`check`]; so they run wherever the MMU invariants run (after every
//! uAPI call of the tests' checked host, in scripts' `check_invariants`, during `gmem-sim run`).
//!
//! # Per VM, and host-wide
//!
//! Most invariants are about one SNP guest: its SPTEs against the RMP (S2, S4), its launch
//! (S8, S11), its vCPUs (the guest VMSA of INV-NO-STALE-PFN, S12), and the RMP entries that carry
//! its ASID (S1). Those run in the hook of that guest's VM, with the guest_memfds the call was
//! handed (a frame belongs to "a live guest_memfd folio of the VM" when it is in the page cache of
//! one of the VM's guest_memfds, which the callers hand in: every one reachable from user space).
//!
//! The RMP itself is host-wide, and some of its invariants are about entries no VM of the call
//! owns: an assigned frame in the host free pool, an ASID no live guest holds, a firmware page no
//! guest owns (S1), and the shape of 2M entries (S3). Two things make those checkable:
//!
//! * the SNP host ([`SnpHost`]) keeps a weak registration of every VM that became an SNP guest on
//!   it (`KVM_SEV_INIT2`): [`SnpHost::guests`] are the live ones (registered, not destroyed),
//!   whether or not the caller handed them in, so an entry of a guest outside the call is known
//!   to be someone's (and left to the checks of that guest's own calls) rather than an orphan;
//! * the hook is given every VM of the call, and the host-wide part runs once per call: in the
//!   hook of the first VM of the call whose back-end is an [`SvmVm`] of that host.
//!
//! # Where each invariant is enforced
//!
//! | name | checked here (state at a quiescent point) | asserted at the call (a WARN) or made impossible by the hardware model |
//! |---|---|---|
//! | S1 ownership | every assigned entry is a page-cache frame of a guest_memfd of the VM with its ASID, a KVM-allocated VMSA of that VM's vCPUs, a firmware page (guest context, guest-request response page) of a live guest, or on the leak list; none is in the host free pool (leaked ones included: the kernel pins them); no entry carries an ASID no live guest holds | |
//! | S2 identity | every frame of every private SPTE of an SNP guest has an RMP entry assigned to the guest's ASID at `gfn << 12`; no frame is mapped at two gfns | the hardware's access check refuses a private access through an entry of another ASID or GPA (a nested RMP fault) |
//! | S3 no overlap | a 2M entry's 512 entries are assigned, 2M, of one owner, at consecutive GPAs, and their frames are one folio of at least 2M; no assigned entry claims a 2M size its region's 2M entry does not have | RMPUPDATE refuses a 4K entry inside an assigned 2M entry, and a 2M entry over assigned 4K ones (`FAIL_OVERLAP`) |
//! | S4 NPT ≤ RMP | no private SPTE is larger than the RMP entry of its frame | the access check faults a larger leaf with `PFERR_GUEST_SIZEM` |
//! | S5 validation | | made impossible by the hardware model: RMPUPDATE writes Validated as 0, PSMASH copies it, only PVALIDATE (and the firmware's LAUNCH_UPDATE) sets it; a private access to an entry without it is a #VC |
//! | S6 host writes | | the hardware model's check of every host write: an `Oops` WARN naming the frame and its entry |
//! | S7 immutability | | made impossible by the hardware model: RMPUPDATE and PSMASH of an immutable entry fail with `FAIL_PERMISSION`; only the firmware model changes one |
//! | S8 lifecycle | before LAUNCH_FINISH no private SPTE and every private guest_memfd frame of the guest is Guest-Valid (launched); no entry of the guest is left Pre-Guest (a LAUNCH_UPDATE neither completed nor reclaimed); a private guest_memfd frame's folio is prepared or populated (a failed LAUNCH_UPDATE gave its pages back); the firmware logged no LAUNCH_UPDATE after LAUNCH_FINISH | WARN in `sev_gmem_prepare` before LAUNCH_FINISH, and after a successful firmware LAUNCH_UPDATE that did not leave the page Guest-Valid at its GPA; the firmware refuses LAUNCH_UPDATE after LAUNCH_FINISH |
//! | S9 RMP-shared ordering | | WARN in `SnpHost::rmpupdate` when a frame goes back to the hypervisor while an SPTE of its guest still maps it; the hardware model's host-write check reports a write to a frame not flushed since it left the guest |
//! | S10 prepare | the result: S3 | WARN in `sev_gmem_prepare` when it chooses a 2M entry for a folio that does not cover the 2M range; a prepare of an assigned frame returns before changing anything |
//! | S11 measurement | the launch digest equals the replay of the firmware's log of successful LAUNCH_UPDATEs (type, GPA, contents hash), VMSAs included | the firmware extends the digest and the log together, and only on success |
//! | S12 PSC accounting | a vCPU waiting for user space on a PSC buffer has a range in flight (1 or more entries, inside the buffer); one not waiting has none | WARN when an empty or out-of-buffer range is completed |
//! | INV-NO-STALE-PFN (guest VMSA) | a vCPU running with a guest-provided VMSA (`snp_has_guest_vmsa`) points at a frame of a live guest_memfd folio of the VM, at the VMSA's GPA (the one AP Creation named if KVM kept it, else the frame's RMP GPA) | |

use crate::sev::firmware::GuestState;
use crate::sev::host::SnpHost;
use crate::sev::kvm::{SevVcpu, SvmVm};
use crate::sev::measure::LaunchDigest;
use crate::sev::rmp::{RmpEntry, PAGES_PER_2M};
use gmem_kvm::guest_memfd::KvmGmem;
use gmem_kvm::invariants::{Violation, INV_NO_STALE_PFN};
use gmem_kvm::{Gfn, Kvm};
use gmem_mm::file::FileRef;
use gmem_mm::page::PhysMem;
use gmem_mm::types::PAGE_SHIFT;
use gmem_mm::Pfn;
use gmem_sync::atomic::Ordering;
use gmem_sync::Arc;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// S1, RMP ownership.
pub const S1_OWNERSHIP: &str = "S1";
/// S2, RMP identity of private mappings.
pub const S2_IDENTITY: &str = "S2";
/// S3, no 4K/2M overlap in the RMP.
pub const S3_OVERLAP: &str = "S3";
/// S4, NPT leaf no larger than the RMP entry.
pub const S4_NPT_LEVEL: &str = "S4";
/// S5, validation (enforced by the hardware model).
pub const S5_VALIDATION: &str = "S5";
/// S6, host writes (reported by the hardware model as an oops).
pub const S6_HOST_WRITE: &str = "S6";
/// S7, immutability (enforced by the hardware model).
pub const S7_IMMUTABLE: &str = "S7";
/// S8, launch lifecycle.
pub const S8_LIFECYCLE: &str = "S8";
/// S9, RMP-shared ordering (asserted at the RMPUPDATE).
pub const S9_SHARED_ORDER: &str = "S9";
/// S10, prepare (asserted at the prepare).
pub const S10_PREPARE: &str = "S10";
/// S11, the launch measurement.
pub const S11_MEASUREMENT: &str = "S11";
/// S12, page-state-change accounting.
pub const S12_PSC: &str = "S12";

/// The SNP invariants of `kvm`, whose back-end is `vm` (see the module docs): the host-wide ones
/// if `kvm` is the first VM of `vms` on `vm`'s host, then, if it is an SNP guest, its own.
pub fn check(vm: &SvmVm, kvm: &Kvm, vms: &[&Arc<Kvm>], gmem_files: &[(&FileRef, &KvmGmem)], out: &mut Vec<Violation>) {
    let host = vm.host();
    let first_of_host = vms.iter().find(|other| SvmVm::of(other).is_some_and(|other| Arc::ptr_eq(other.host(), host)));
    if first_of_host.is_some_and(|first| std::ptr::eq(Arc::as_ptr(first), kvm)) {
        check_host(host, vms, out);
    }
    if vm.sev_snp_guest() {
        Guest::new(vm, kvm, gmem_files).check(out);
    }
}

/// A page-cache folio of one of a guest's guest_memfds.
#[derive(Clone, Copy, Debug)]
struct GmemFolio {
    /// The guest_memfd's inode.
    ino: u64,
    /// The folio's first index.
    index: u64,
    /// Prepared or populated.
    uptodate: bool,
}

/// One SNP guest and what its checks need.
struct Guest<'a> {
    vm: &'a SvmVm,
    kvm: &'a Kvm,
    asid: u32,
    mem: &'a PhysMem,
    /// The guest's guest_memfd folios among the files of the call, by head frame.
    folios: HashMap<Pfn, GmemFolio>,
    /// The guest's guest_memfds among the files of the call.
    files: Vec<&'a FileRef>,
    leaked: BTreeSet<Pfn>,
}

impl<'a> Guest<'a> {
    fn new(vm: &'a SvmVm, kvm: &'a Kvm, gmem_files: &[(&'a FileRef, &KvmGmem)]) -> Guest<'a> {
        let mut files: Vec<&FileRef> = Vec::new();
        let mut folios = HashMap::new();
        for &(file, gmem) in gmem_files {
            if !std::ptr::eq(Arc::as_ptr(gmem.kvm()), kvm)
                || files.iter().any(|seen| std::ptr::eq(seen.as_ptr(), file.as_ptr()))
            {
                continue;
            }
            files.push(file);
            let inode = file.inode();
            for (index, folio) in inode.mapping().folios() {
                folios.insert(
                    folio.pfn(),
                    GmemFolio { ino: inode.ino(), index: index.0, uptodate: folio.test_uptodate() },
                );
            }
        }
        Guest {
            vm,
            kvm,
            asid: vm.asid(),
            mem: &kvm.machine().mem,
            folios,
            files,
            leaked: vm.host().leaked_pages().into_iter().collect(),
        }
    }

    /// The guest_memfd folio `pfn` is a frame of, and the file index of that frame: `None` if the
    /// frame is not allocated or not in the page cache of one of the guest's guest_memfds.
    fn gmem_frame(&self, pfn: Pfn) -> Option<(GmemFolio, u64)> {
        if !self.mem.is_valid_pfn(pfn) || !self.mem.is_allocated(pfn) {
            return None;
        }
        let head = self.mem.compound_head(pfn);
        self.folios.get(&head).map(|folio| (*folio, folio.index + (pfn.0 - head.0)))
    }

    /// Whether the firmware finished the guest's launch (its context is RUNNING).
    fn launch_finished(&self) -> bool {
        let Some(gctx) = self.vm.snp_context() else { return false };
        self.vm.host().firmware().context(gctx).is_some_and(|context| context.state == GuestState::Running)
    }

    fn check(&self, out: &mut Vec<Violation>) {
        let finished = self.launch_finished();
        self.check_entries(finished, out);
        self.check_private_sptes(finished, out);
        self.check_measurement(out);
        self.check_vcpus(out);
    }

    /// S1 (the entries carrying the guest's ASID) and S8 (their launch states).
    fn check_entries(&self, finished: bool, out: &mut Vec<Violation>) {
        let asid = self.asid;
        let mut vmsas = BTreeSet::new();
        for vcpu in self.kvm.vcpus() {
            if let Some(vmsa) = vcpu.arch::<SevVcpu>().and_then(|sev| sev.state.lock().vmsa) {
                vmsas.insert(vmsa);
            }
        }
        let rmp = self.vm.host().rmp();
        for (pfn, entry) in rmp.assigned_entries().into_iter().filter(|(_, entry)| entry.asid == asid) {
            if self.leaked.contains(&pfn) || !self.mem.is_valid_pfn(pfn) || !self.mem.is_allocated(pfn) {
                continue; // the host-wide part reports frames in the free pool
            }
            if entry.immutable {
                out.push(Violation {
                    invariant: S8_LIFECYCLE,
                    detail: format!(
                        "{pfn:?} of the SNP guest with ASID {asid} is {} ({entry:?}) at a quiescent point: a \
                         LAUNCH_UPDATE neither completed nor reclaimed it",
                        entry.state_name()
                    ),
                });
            }
            if vmsas.contains(&pfn) {
                continue;
            }
            let Some((folio, index)) = self.gmem_frame(pfn) else {
                out.push(Violation {
                    invariant: S1_OWNERSHIP,
                    detail: format!(
                        "{pfn:?} is assigned to the SNP guest with ASID {asid} ({entry:?}) but is none of its \
                         guest_memfd folios or VMSAs, and not leaked"
                    ),
                });
                continue;
            };
            if !folio.uptodate {
                out.push(Violation {
                    invariant: S8_LIFECYCLE,
                    detail: format!(
                        "{pfn:?} (guest_memfd ino {} index {index:#x}) is private to the SNP guest with ASID {asid} \
                         ({entry:?}) but its folio was never prepared or populated: a failed LAUNCH_UPDATE left it \
                         assigned",
                        folio.ino
                    ),
                });
            }
            if !finished && !entry.validated {
                out.push(Violation {
                    invariant: S8_LIFECYCLE,
                    detail: format!(
                        "{pfn:?} (guest_memfd ino {} index {index:#x}) was made private to the SNP guest with ASID \
                         {asid} ({entry:?}) before SNP_LAUNCH_FINISH, not by LAUNCH_UPDATE",
                        folio.ino
                    ),
                });
            }
        }
    }

    /// S2, S4, and S8's "no private mapping before LAUNCH_FINISH", over the guest's SPTEs.
    fn check_private_sptes(&self, finished: bool, out: &mut Vec<Violation>) {
        let Some(tdp) = self.kvm.tdp_mmu() else { return };
        let rmp = self.vm.host().rmp();
        let asid = self.asid;
        let mut mapped_at: HashMap<Pfn, Gfn> = HashMap::new();
        for (base, spte) in tdp.sptes().into_iter().filter(|(_, spte)| spte.private) {
            if !finished {
                out.push(Violation {
                    invariant: S8_LIFECYCLE,
                    detail: format!(
                        "the SNP guest with ASID {asid} has a private {} SPTE at gfn {base} ({:?}) before \
                         SNP_LAUNCH_FINISH",
                        spte.level, spte.pfn
                    ),
                });
            }
            let mut identity_reported = false;
            let mut level_reported = false;
            for offset in 0..spte.level.pages() {
                let (gfn, pfn) = (Gfn(base.0 + offset), spte.pfn.offset(offset));
                if let Some(other) = mapped_at.insert(pfn, gfn) {
                    out.push(Violation {
                        invariant: S2_IDENTITY,
                        detail: format!(
                            "{pfn:?} is mapped privately at gfn {other} and at gfn {gfn} of the SNP guest with ASID {asid}"
                        ),
                    });
                }
                let entry = rmp.read(pfn).unwrap_or_default();
                let gpa = gfn.0 << PAGE_SHIFT;
                if !entry.assigned || entry.asid != asid || entry.gpa != gpa {
                    if !identity_reported {
                        identity_reported = true;
                        out.push(Violation {
                            invariant: S2_IDENTITY,
                            detail: format!(
                                "the private {} SPTE of gfn {gfn} of the SNP guest with ASID {asid} maps {pfn:?}, \
                                 whose RMP entry is {entry:?}, not assigned to ASID {asid} at gpa {gpa:#x}",
                                spte.level
                            ),
                        });
                    }
                    continue;
                }
                let rmp_level = rmp.level(pfn).unwrap_or(gmem_kvm::arch::PgLevel::Level4K);
                if rmp_level < spte.level && !level_reported {
                    level_reported = true;
                    out.push(Violation {
                        invariant: S4_NPT_LEVEL,
                        detail: format!(
                            "the private {} SPTE at gfn {base} of the SNP guest with ASID {asid} maps {pfn:?} \
                             (gfn {gfn}), whose RMP entry is {rmp_level}",
                            spte.level
                        ),
                    });
                }
            }
        }
    }

    /// S11, and S8's "no LAUNCH_UPDATE after LAUNCH_FINISH", over the firmware's context.
    fn check_measurement(&self, out: &mut Vec<Violation>) {
        let asid = self.asid;
        let Some(gctx) = self.vm.snp_context() else { return };
        let Some(context) = self.vm.host().firmware().context(gctx) else { return };
        let mut replayed = LaunchDigest::new();
        for update in &context.updates {
            replayed.extend_hashed(update.page_type, update.gpa, &update.contents);
        }
        if replayed != context.digest {
            out.push(Violation {
                invariant: S11_MEASUREMENT,
                detail: format!(
                    "the launch digest of the SNP guest with ASID {asid} (context {gctx:?}) is {}, but the {} \
                     LAUNCH_UPDATE(s) the firmware logged ({:?}) hash to {}",
                    context.digest,
                    context.updates.len(),
                    context.updates,
                    replayed
                ),
            });
        }
        if context.state == GuestState::Running && context.updates_at_finish != Some(context.updates.len()) {
            out.push(Violation {
                invariant: S8_LIFECYCLE,
                detail: format!(
                    "the firmware logged {} LAUNCH_UPDATE(s) for the SNP guest with ASID {asid} (context {gctx:?}), \
                     {:?} of them by SNP_LAUNCH_FINISH: an update after the launch finished",
                    context.updates.len(),
                    context.updates_at_finish
                ),
            });
        }
    }

    /// INV-NO-STALE-PFN for guest-provided VMSAs, and S12, over the guest's vCPUs.
    fn check_vcpus(&self, out: &mut Vec<Violation>) {
        for vcpu in self.kvm.vcpus() {
            let Some(sev) = vcpu.arch::<SevVcpu>() else { continue };
            let id = vcpu.vcpu_id();
            let (guest_vmsa, vmsa_gpa) = {
                let state = sev.state.lock();
                (state.vmsa_pa.filter(|_| state.snp_has_guest_vmsa), state.snp_vmsa_gpa)
            };
            if let Some(pfn) = guest_vmsa {
                self.check_guest_vmsa(id, pfn, vmsa_gpa, out);
            }
            let psc = sev.psc.lock();
            let waiting_on_buffer = matches!(psc.pending, Some(crate::sev::ghcb::Pending::Buffer { .. }));
            let end = u32::from(psc.psc_idx) + u32::from(psc.psc_inflight);
            let consistent = if waiting_on_buffer {
                psc.psc_inflight != 0 && end <= u32::from(crate::sev::ghcb::VMGEXIT_PSC_MAX_COUNT)
            } else {
                psc.psc_inflight == 0
            };
            if !consistent {
                out.push(Violation {
                    invariant: S12_PSC,
                    detail: format!(
                        "vCPU {id} of the SNP guest with ASID {} {} with PSC entries [{}, {end}) in flight",
                        self.asid,
                        if waiting_on_buffer {
                            "waits for user space on a PSC buffer"
                        } else {
                            "waits for no PSC range"
                        },
                        psc.psc_idx
                    ),
                });
            }
        }
    }

    /// INV-NO-STALE-PFN for one vCPU's guest-provided VMSA at `pfn`.
    fn check_guest_vmsa(&self, id: u32, pfn: Pfn, vmsa_gpa: Option<u64>, out: &mut Vec<Violation>) {
        let asid = self.asid;
        let mut stale = |why: String| {
            out.push(Violation {
                invariant: INV_NO_STALE_PFN,
                detail: format!(
                    "vCPU {id} of the SNP guest with ASID {asid} runs with its guest VMSA at {pfn:?}: {why}"
                ),
            })
        };
        let Some((folio, index)) = self.gmem_frame(pfn) else {
            let state = if !self.mem.is_valid_pfn(pfn) {
                "a frame never allocated"
            } else if self.mem.is_allocated(pfn) {
                "no longer a frame of any of the VM's guest_memfds"
            } else {
                "a frame back in the host free pool"
            };
            stale(format!("{state} (the folio was freed under it)"));
            return;
        };
        let entry = self.vm.host().rmp().read(pfn).unwrap_or_default();
        let Some(gpa) = vmsa_gpa.or_else(|| (entry.assigned && entry.asid == asid).then_some(entry.gpa)) else {
            stale(format!("its RMP entry is {entry:?}, not the guest's"));
            return;
        };
        let gfn = Gfn(gpa >> PAGE_SHIFT);
        let srcu = self.kvm.srcu_read_lock();
        let here = self.kvm.gfn_to_memslot(&srcu, gfn).and_then(|slot| {
            let file = slot.gmem_file().load(Ordering::Acquire);
            let bound = self.files.iter().find(|candidate| std::ptr::eq(candidate.as_ptr(), file))?;
            Some((bound.inode().ino(), gfn.0.wrapping_sub(slot.base_gfn().0).wrapping_add(slot.gmem_pgoff())))
        });
        drop(srcu);
        if here != Some((folio.ino, index)) {
            stale(format!(
                "the frame is guest_memfd ino {} index {index:#x}, but gpa {gpa:#x} is backed by {here:?} now",
                folio.ino
            ));
        }
    }
}

/// The host-wide part: S1 over every assigned RMP entry, S3 over every 2M region.
fn check_host(host: &SnpHost, vms: &[&Arc<Kvm>], out: &mut Vec<Violation>) {
    let mem = &host.machine().mem;
    let guests = host.guests();
    let live_asids: BTreeSet<u32> =
        guests.iter().filter_map(|kvm| SvmVm::of(kvm).filter(|vm| vm.sev_snp_guest())).map(|vm| vm.asid()).collect();
    let firmware_pages: BTreeSet<Pfn> = guests
        .iter()
        .chain(vms.iter().copied())
        .filter_map(|kvm| SvmVm::of(kvm))
        .flat_map(|vm| vm.firmware_pages())
        .collect();
    let leaked: BTreeSet<Pfn> = host.leaked_pages().into_iter().collect();
    let entries = host.rmp().assigned_entries();
    let mut regions: BTreeMap<u64, Vec<(Pfn, RmpEntry)>> = BTreeMap::new();
    for &(pfn, entry) in &entries {
        regions.entry(pfn.0 & !(PAGES_PER_2M - 1)).or_default().push((pfn, entry));
        let mut orphan = |why: String| {
            out.push(Violation { invariant: S1_OWNERSHIP, detail: format!("{pfn:?} ({entry:?}) {why}") });
        };
        if !mem.is_valid_pfn(pfn) {
            orphan("is assigned but was never handed out by the allocator".into());
            continue;
        }
        if !mem.is_allocated(pfn) {
            orphan(if leaked.contains(&pfn) {
                "is on the leak list but back in the host free pool".into()
            } else {
                "is assigned but in the host free pool".into()
            });
            continue;
        }
        if leaked.contains(&pfn) {
            continue;
        }
        if entry.asid == 0 {
            if !firmware_pages.contains(&pfn) {
                orphan("is firmware-owned but is no live SNP guest's context or firmware page, and not leaked".into());
            }
        } else if !live_asids.contains(&entry.asid) {
            orphan(format!("carries ASID {}, which no live SNP guest holds, and is not leaked", entry.asid));
        }
    }
    for (base, assigned) in regions {
        check_region(host, mem, Pfn(base), &assigned, out);
    }
}

/// S3 over the 2M region at `base`, which has the `assigned` entries.
fn check_region(host: &SnpHost, mem: &PhysMem, base: Pfn, assigned: &[(Pfn, RmpEntry)], out: &mut Vec<Violation>) {
    let rmp = host.rmp();
    let large = rmp.read(base).unwrap_or_default();
    if !(large.assigned && large.pagesize_2m) {
        if let Some((pfn, entry)) = assigned.iter().find(|(_, entry)| entry.pagesize_2m) {
            out.push(Violation {
                invariant: S3_OVERLAP,
                detail: format!(
                    "{pfn:?} ({entry:?}) claims a 2M entry, but the 2M-aligned entry of its region {base:?} is \
                     {large:?}"
                ),
            });
        }
        return;
    }
    let inconsistent = (0..PAGES_PER_2M).find_map(|i| {
        let pfn = base.offset(i);
        let entry = rmp.read(pfn).unwrap_or_default();
        let expected = RmpEntry { gpa: large.gpa + (i << PAGE_SHIFT), ..large };
        let same = entry.assigned
            && entry.pagesize_2m
            && entry.asid == expected.asid
            && entry.immutable == expected.immutable
            && entry.gpa == expected.gpa;
        (!same).then_some((pfn, entry, expected.gpa))
    });
    if let Some((pfn, entry, gpa)) = inconsistent {
        out.push(Violation {
            invariant: S3_OVERLAP,
            detail: format!(
                "the 2M RMP entry at {base:?} ({large:?}) covers {pfn:?}, whose entry is {entry:?}, not part of it at \
                 gpa {gpa:#x}"
            ),
        });
    }
    let head = mem.is_valid_pfn(base).then(|| mem.compound_head(base));
    let one_folio = head.is_some_and(|head| {
        let folio = gmem_mm::folio::Folio::from_pfn(mem, head);
        head.0 <= base.0
            && head.0 + folio.nr_pages() >= base.0 + PAGES_PER_2M
            && (0..PAGES_PER_2M).all(|i| mem.is_valid_pfn(base.offset(i)) && mem.compound_head(base.offset(i)) == head)
    });
    if !one_folio {
        out.push(Violation {
            invariant: S3_OVERLAP,
            detail: format!(
                "the 2M RMP entry at {base:?} ({large:?}) covers frames that are not one folio of at least 2M (the \
                 folio of {base:?} has order {:?})",
                head.map(|head| gmem_mm::folio::Folio::from_pfn(mem, head).order())
            ),
        });
    }
}
