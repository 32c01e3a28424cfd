//! The TDX module's part of the TDX invariants of `arch-and-mmu.md` §5.3, as checks over the
//! module's state at a quiescent point (no SEAMCALL in flight): T1, T3 and T10. The other
//! invariants are about KVM (the mirror root, the zap protocol, the error policy) and belong to
//! the KVM integration; T2's and T4's rules are enforced by the SEAMCALLs themselves (a SEAMCALL
//! in the wrong phase, or a REMOVE before the tracking, fails).
//!
//! | name | checked here |
//! |---|---|
//! | T1 PAMT single ownership | every frame is claimed by at most one TD structure (TDR, TDCS page, TDVPR, TDCX page, S-EPT table, S-EPT leaf); each claimed frame's PAMT entry has the matching type and owner (a leaf's: `PT_REG` at the leaf's GPA); every TD-owned PAMT entry belongs to a live TD that claims the frame (in teardown, a frame need not be claimed: the host reclaims pages in any order, and reclaiming a table drops the entries in it); no TD-owned frame is in the host allocator's free pool |
//! | T3 walk order | while the HKID is assigned: every S-EPT table is reached by exactly one link from a table one level up, at the GPA it translates; no link points at a table the tree does not have; no leaf above 1G; every table page is still `PT_EPT` of the TD and allocated in the host |
//! | T10 measurement | MRTD equals a replay of the PAGE.ADD and MR.EXTEND records; once finalised it is frozen: the value is set, unchanged, and nothing was measured after MR.FINALIZE |
//!
//! The checks take the module's locks one at a time (the PAMT, then each TD), so they are only
//! meaningful when nothing runs concurrently.

use crate::tdx::measure::{hex, Mrtd};
use crate::tdx::module::{TdLifecycle, TdOpState, TdxModule};
use crate::tdx::pamt::{FrameState, PageType, PamtEntry};
use crate::tdx::sept::{SeptLeaf, SeptTableInfo};
use gmem_kvm::invariants::Violation;
use gmem_mm::Pfn;
use std::collections::BTreeMap;

/// `T1`: PAMT single ownership.
pub const T1_PAMT_OWNERSHIP: &str = "T1";
/// `T3`: S-EPT walk order; tables not freed while the HKID is assigned.
pub const T3_WALK_ORDER: &str = "T3";
/// `T10`: MRTD.
pub const T10_MEASUREMENT: &str = "T10";

/// What a TD structure says a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Tdr,
    Tdcs,
    Tdvpr,
    Tdcx { tdvpr: Pfn },
    Table,
    Leaf { gpa: u64 },
}

impl Role {
    fn page_type(self) -> PageType {
        match self {
            Role::Tdr => PageType::Tdr,
            Role::Tdcs | Role::Tdcx { .. } => PageType::Tdcx,
            Role::Tdvpr => PageType::Tdvpr,
            Role::Table => PageType::Ept,
            Role::Leaf { .. } => PageType::Reg,
        }
    }

    fn matches(self, entry: &PamtEntry, tdr: Pfn) -> bool {
        entry.pt == self.page_type()
            && entry.owner == tdr
            && match self {
                Role::Leaf { gpa } => entry.gpa == gpa,
                _ => true,
            }
    }
}

/// What the checks need of one TD.
struct TdSnapshot {
    tdr: Pfn,
    lifecycle: TdLifecycle,
    op_state: TdOpState,
    claims: Vec<(Pfn, Role)>,
    leaves: Vec<SeptLeaf>,
    tables: Vec<SeptTableInfo>,
    links: Vec<(u8, u64, Pfn)>,
    mrtd: Mrtd,
    records_at_finalize: Option<usize>,
}

fn snapshot(module: &TdxModule) -> (BTreeMap<u64, FrameState>, Vec<TdSnapshot>) {
    let frames: BTreeMap<u64, FrameState> =
        module.pamt_frames().into_iter().map(|(pfn, frame)| (pfn.0, frame)).collect();
    let mut tds = Vec::new();
    for td in module.tds() {
        let state = td.state.lock().clone();
        let sept = td.sept.lock().clone();
        let tdr = td.tdr();
        let mut claims = vec![(tdr, Role::Tdr)];
        claims.extend(state.tdcs.iter().map(|&pfn| (pfn, Role::Tdcs)));
        for (&tdvpr, vcpu) in &state.vcpus {
            claims.push((Pfn(tdvpr), Role::Tdvpr));
            claims.extend(vcpu.tdcx.iter().map(|&pfn| (pfn, Role::Tdcx { tdvpr: Pfn(tdvpr) })));
        }
        let leaves = sept.leaves();
        let tables = sept.tables();
        claims.extend(tables.iter().map(|table| (table.table, Role::Table)));
        claims.extend(leaves.iter().map(|leaf| (leaf.pfn, Role::Leaf { gpa: leaf.gpa })));
        tds.push(TdSnapshot {
            tdr,
            lifecycle: state.lifecycle,
            op_state: state.op_state,
            claims,
            leaves,
            tables,
            links: sept.links(),
            mrtd: state.mrtd,
            records_at_finalize: state.records_at_finalize,
        });
    }
    (frames, tds)
}

/// Runs T1, T3 and T10 over `module`, appending what is wrong to `out`.
pub fn check(module: &TdxModule, out: &mut Vec<Violation>) {
    let (frames, tds) = snapshot(module);
    check_t1(module, &frames, &tds, out);
    check_t3(module, &frames, &tds, out);
    check_t10(&tds, out);
}

/// Every check over the module alone: T1, T3 and T10 ([`check`]) and T4 (no frame whose reuse
/// is still hazardous in the host's free pool). [`check_kvm`] runs it for the first TD of a
/// module; run it directly where no TD is left to reach the module through (after a teardown).
pub fn check_module(module: &TdxModule, out: &mut Vec<Violation>) {
    check(module, out);
    check_t4(module, out);
}

/// [`check`], returning the violations.
pub fn violations(module: &TdxModule) -> Vec<Violation> {
    let mut out = Vec::new();
    check(module, &mut out);
    out
}

fn entry_of(frames: &BTreeMap<u64, FrameState>, pfn: Pfn) -> PamtEntry {
    frames.get(&pfn.0).map(|frame| frame.entry).unwrap_or_default()
}

/// Whether the host allocator has `pfn` in its free pool.
fn in_free_pool(module: &TdxModule, pfn: Pfn) -> bool {
    let mem = &module.machine().mem;
    mem.is_valid_pfn(pfn) && !mem.is_allocated(pfn)
}

fn check_t1(module: &TdxModule, frames: &BTreeMap<u64, FrameState>, tds: &[TdSnapshot], out: &mut Vec<Violation>) {
    let mut claimed: BTreeMap<u64, Vec<(Pfn, Role)>> = BTreeMap::new();
    for td in tds {
        for &(pfn, role) in &td.claims {
            claimed.entry(pfn.0).or_default().push((td.tdr, role));
        }
    }
    for (&pfn, claims) in &claimed {
        let pfn = Pfn(pfn);
        if claims.len() > 1 {
            out.push(Violation {
                invariant: T1_PAMT_OWNERSHIP,
                detail: format!("{pfn:?} is claimed {} times: {claims:?}", claims.len()),
            });
        }
        let entry = entry_of(frames, pfn);
        for &(tdr, role) in claims {
            if !role.matches(&entry, tdr) {
                out.push(Violation {
                    invariant: T1_PAMT_OWNERSHIP,
                    detail: format!(
                        "{pfn:?} is the {role:?} of the TD with TDR {tdr} but its PAMT entry is {entry:?} (expected a {} \
                         of that TD)",
                        role.page_type()
                    ),
                });
            }
        }
    }
    for (&pfn, frame) in frames {
        let pfn = Pfn(pfn);
        let entry = frame.entry;
        if !entry.pt.is_td_owned() {
            continue;
        }
        let owner = tds.iter().find(|td| td.tdr == entry.owner);
        // In teardown the TD is being taken apart in whatever order the host reclaims its pages
        // (a table drops the entries in it, a TDVPR its vCPU's TDCX list): a frame still waiting
        // for its RECLAIM needs only an owner, as the module only counts them.
        let dismantled = owner.is_some_and(|td| td.lifecycle == TdLifecycle::Teardown);
        if owner.is_none() {
            out.push(Violation {
                invariant: T1_PAMT_OWNERSHIP,
                detail: format!("{pfn:?} is {entry:?}, but no TD has that TDR"),
            });
        } else if !dismantled
            && !claimed.get(&pfn.0).is_some_and(|claims| claims.iter().any(|(tdr, _)| *tdr == entry.owner))
        {
            out.push(Violation {
                invariant: T1_PAMT_OWNERSHIP,
                detail: format!("{pfn:?} is {entry:?}, but that TD has no such page (an orphan PAMT entry)"),
            });
        }
        if in_free_pool(module, pfn) {
            out.push(Violation {
                invariant: T1_PAMT_OWNERSHIP,
                detail: format!("{pfn:?} is {entry:?} but is in the host allocator's free pool"),
            });
        }
    }
}

fn check_t3(module: &TdxModule, frames: &BTreeMap<u64, FrameState>, tds: &[TdSnapshot], out: &mut Vec<Violation>) {
    for td in tds {
        if matches!(td.lifecycle, TdLifecycle::Teardown) || td.op_state == TdOpState::Uninitialized {
            continue;
        }
        let tdr = td.tdr;
        let mut incoming: BTreeMap<u64, Vec<(u8, u64)>> = BTreeMap::new();
        for &(level, gpa, child) in &td.links {
            incoming.entry(child.0).or_default().push((level, gpa));
        }
        for (&child, links) in &incoming {
            if !td.tables.iter().any(|table| table.table.0 == child) {
                out.push(Violation {
                    invariant: T3_WALK_ORDER,
                    detail: format!(
                        "TD {tdr}: S-EPT links {links:?} point at {:?}, which is no table of the TD",
                        Pfn(child)
                    ),
                });
            }
        }
        for table in &td.tables {
            match incoming.get(&table.table.0).map(Vec::as_slice) {
                Some([(level, gpa)]) if *level == table.level + 1 && *gpa == table.base => {}
                Some(links) => out.push(Violation {
                    invariant: T3_WALK_ORDER,
                    detail: format!(
                        "TD {tdr}: the level-{} S-EPT table {:?} at {:#x} is linked by {links:?} (expected one link at \
                         level {})",
                        table.level,
                        table.table,
                        table.base,
                        table.level + 1
                    ),
                }),
                None => out.push(Violation {
                    invariant: T3_WALK_ORDER,
                    detail: format!(
                        "TD {tdr}: the level-{} S-EPT table {:?} at {:#x} has no parent link ({} entries under no \
                         present parent)",
                        table.level, table.table, table.base, table.used
                    ),
                }),
            }
            let entry = entry_of(frames, table.table);
            if entry.pt != PageType::Ept || entry.owner != tdr {
                out.push(Violation {
                    invariant: T3_WALK_ORDER,
                    detail: format!(
                        "TD {tdr}: S-EPT table {:?} is {entry:?} while the TD's HKID is assigned",
                        table.table
                    ),
                });
            }
            if in_free_pool(module, table.table) {
                out.push(Violation {
                    invariant: T3_WALK_ORDER,
                    detail: format!(
                        "TD {tdr}: S-EPT table {:?} was freed to the host allocator while the TD's HKID is assigned",
                        table.table
                    ),
                });
            }
        }
        for leaf in td.leaves.iter().filter(|leaf| leaf.level > 2) {
            out.push(Violation {
                invariant: T3_WALK_ORDER,
                detail: format!("TD {tdr}: a level-{} leaf at {:#x} ({:?})", leaf.level, leaf.gpa, leaf.pfn),
            });
        }
    }
}

fn check_t10(tds: &[TdSnapshot], out: &mut Vec<Violation>) {
    for td in tds.iter().filter(|td| td.op_state != TdOpState::Uninitialized) {
        let tdr = td.tdr;
        let replay = td.mrtd.replay_log();
        match (td.op_state, td.mrtd.value()) {
            (TdOpState::Runnable, None) => out.push(Violation {
                invariant: T10_MEASUREMENT,
                detail: format!("TD {tdr} is runnable but its MRTD was never finalised"),
            }),
            (TdOpState::Runnable, Some(value)) => {
                if value != replay {
                    out.push(Violation {
                        invariant: T10_MEASUREMENT,
                        detail: format!(
                            "TD {tdr}: MRTD {} is not the replay of its {} records ({})",
                            hex(&value),
                            td.mrtd.records().len(),
                            hex(&replay)
                        ),
                    });
                }
                if td.records_at_finalize != Some(td.mrtd.records().len()) || td.mrtd.current() != value {
                    out.push(Violation {
                        invariant: T10_MEASUREMENT,
                        detail: format!(
                            "TD {tdr}: something was measured after MR.FINALIZE ({:?} records then, {} now)",
                            td.records_at_finalize,
                            td.mrtd.records().len()
                        ),
                    });
                }
            }
            (_, Some(value)) => out.push(Violation {
                invariant: T10_MEASUREMENT,
                detail: format!("TD {tdr} has a final MRTD {} but is not runnable", hex(&value)),
            }),
            (_, None) => {
                if td.mrtd.current() != replay {
                    out.push(Violation {
                        invariant: T10_MEASUREMENT,
                        detail: format!(
                            "TD {tdr}: the MRTD being built is not the replay of its {} records",
                            td.mrtd.records().len()
                        ),
                    });
                }
            }
        }
    }
}

/// `T2`: KVM's TD state agrees with the module's phase.
pub const T2_PHASE: &str = "T2";
/// `T4`: no frame that left a TD reaches the host allocator's free pool before its release
/// finished (WBINVD and clear, or RECLAIM and clear).
pub const T4_RELEASE: &str = "T4";
/// `T5`: the mirror root and the S-EPT agree.
pub const T5_MIRROR_SYNC: &str = "T5";
/// `T6`: no SEPT zap retry is in progress at a quiescent point (`wait_for_sept_zap` clear), and
/// none ever ran with a vCPU inside the TD.
pub const T6_NO_ENTRY_DURING_ZAP: &str = "T6";
/// `T7`: a guest access to a PENDING page of a TD with `SEPT_VE_DISABLE` (the "pending" EPT
/// violation) was fatal for the TD: the VM is dead.
pub const T7_PENDING_FATAL: &str = "T7";
/// `T11`: every SEAMCALL failure of a mapping or zap path that v6.18 answers with `KVM_BUG_ON`
/// left the VM dead, and every page KVM leaked on the way stayed out of the host's free pool.
pub const T11_ERROR_POLICY: &str = "T11";
/// `T12`: with the HKID released, the TD has no private page left (no S-EPT leaf, no `PT_REG`
/// frame): the HKID goes only after every private leaf was removed.
pub const T12_TEARDOWN: &str = "T12";

/// The KVM side of §5.3 for one TD ([`crate::tdx::kvm::TdxVm`]), plus the module's own checks
/// ([`check`]: T1, T3, T10 and the host-wide T4) once per call, from the first TD of `vms` on
/// the module. A VM a `KVM_BUG_ON` killed is exempt from T5 (its mirror and S-EPT may disagree:
/// that is what killed it); every other check still applies to it, T4 above all (no
/// half-released page reaches the host).
///
/// | name | checked here |
/// |---|---|
/// | T2 | `TD_STATE_RUNNABLE` exactly when the module's TD is `RUNNABLE`; `TD_STATE_INITIALIZED` when it is `INITIALIZED`; `pre_fault_allowed` exactly when runnable |
/// | T4 | every frame the PAMT tracks whose reuse is still hazardous (a TD owns it, its lines may be dirty under a TD key, or it was not cleared since) is allocated in the host, not in its free pool |
/// | T5 | with the HKID assigned: every mirror leaf is a 4K S-EPT leaf at the same GPA with the same frame, MAPPED or PENDING (not blocked), PT_REG of the TD; every S-EPT leaf has its mirror leaf; before FINALIZE (v6.18) the mirror leaves without an S-EPT leaf are premapped and exactly `nr_premapped` of them |
/// | T6 | `wait_for_sept_zap` is clear; no vCPU was found inside the TD when a zap retry's kick (`tdx_no_vcpus_enter_start`) returned |
/// | T7 | a TD that took the "pending" EPT violation (an access to an unaccepted page with `SEPT_VE_DISABLE`) is dead (`kvm_vm_dead`) |
/// | T11 | a TD whose mapping or zap path met a fatal SEAMCALL failure (AUG, SEPT.ADD, BLOCK other than the premap signature, TRACK, REMOVE, WBINVD) is dead; no page it leaked is in the host's free pool |
/// | T12 | a TD whose HKID is released has no S-EPT leaf and owns no `PT_REG` frame |
pub fn check_kvm(
    vm: &crate::tdx::kvm::TdxVm,
    kvm: &gmem_kvm::Kvm,
    vms: &[&gmem_sync::Arc<gmem_kvm::Kvm>],
    out: &mut Vec<Violation>,
) {
    use crate::tdx::kvm::{TdState, TdxVm};
    let module = vm.module();
    let first =
        vms.iter().find(|other| TdxVm::of(other).is_some_and(|other| gmem_sync::Arc::ptr_eq(other.module(), module)));
    if first.is_some_and(|first| std::ptr::eq(gmem_sync::Arc::as_ptr(first), kvm)) {
        check_module(module, out);
    }
    if vm.wait_for_sept_zap() {
        out.push(Violation {
            invariant: T6_NO_ENTRY_DURING_ZAP,
            detail: "wait_for_sept_zap is set at a quiescent point".into(),
        });
    }
    for breach in vm.t6_breaches() {
        out.push(Violation { invariant: T6_NO_ENTRY_DURING_ZAP, detail: breach });
    }
    let fatal = vm.fatal_seamcalls();
    if !fatal.is_empty() && !kvm.is_dead() {
        out.push(Violation {
            invariant: T11_ERROR_POLICY,
            detail: format!("the VM is alive after fatal SEAMCALL failures: {fatal:?}"),
        });
    }
    for pfn in vm.leaked_pages() {
        if in_free_pool(module, pfn) {
            out.push(Violation {
                invariant: T11_ERROR_POLICY,
                detail: format!("{pfn:?}, which KVM leaked after a failed release, is in the host's free pool"),
            });
        }
    }
    let Some(tdr) = vm.tdr() else { return };
    let Some(info) = module.td_info(tdr) else { return };
    if info.pending_violations > 0 && !kvm.is_dead() {
        out.push(Violation {
            invariant: T7_PENDING_FATAL,
            detail: format!(
                "TD {tdr:?} took {} pending EPT violations (guest access before ACCEPT) and is alive",
                info.pending_violations
            ),
        });
    }
    if !vm.is_hkid_assigned() {
        let leaves = module.sept(tdr).map(|sept| sept.leaves()).unwrap_or_default();
        let private: Vec<Pfn> = module
            .pamt_frames()
            .into_iter()
            .filter(|(pfn, _)| {
                module.pamt_entry(*pfn).is_some_and(|entry| entry.pt == PageType::Reg && entry.owner == tdr)
            })
            .map(|(pfn, _)| pfn)
            .collect();
        if !leaves.is_empty() || !private.is_empty() {
            out.push(Violation {
                invariant: T12_TEARDOWN,
                detail: format!(
                    "TD {tdr:?}'s HKID is released with {} S-EPT leaves and private pages {private:?} left",
                    leaves.len()
                ),
            });
        }
    }
    let state = vm.td_state();
    let expected = match info.op_state {
        TdOpState::Uninitialized => None,
        TdOpState::Initialized => Some(TdState::Initialized),
        TdOpState::Runnable => Some(TdState::Runnable),
    };
    if vm.is_hkid_assigned() && expected.is_some_and(|expected| expected != state) {
        out.push(Violation {
            invariant: T2_PHASE,
            detail: format!("KVM's TD state {state:?} but the module's TD {tdr:?} is {:?}", info.op_state),
        });
    }
    if kvm.pre_fault_allowed() != (state == TdState::Runnable) {
        out.push(Violation {
            invariant: T2_PHASE,
            detail: format!("pre_fault_allowed {} with the TD {state:?}", kvm.pre_fault_allowed()),
        });
    }
    if vm.is_hkid_assigned() && !kvm.is_dead() {
        check_t5(vm, kvm, tdr, state, out);
    }
}

fn check_t4(module: &TdxModule, out: &mut Vec<Violation>) {
    for (pfn, _) in module.pamt_frames() {
        let Some(hazard) = module.host_reuse_hazard(pfn) else { continue };
        if in_free_pool(module, pfn) {
            out.push(Violation {
                invariant: T4_RELEASE,
                detail: format!("{pfn:?} is in the host's free pool but {hazard}"),
            });
        }
    }
}

fn check_t5(
    vm: &crate::tdx::kvm::TdxVm,
    kvm: &gmem_kvm::Kvm,
    tdr: Pfn,
    state: crate::tdx::kvm::TdState,
    out: &mut Vec<Violation>,
) {
    use crate::tdx::kvm::{is_private_page_of, TdState};
    use crate::tdx::sept::LeafState;
    let module = vm.module();
    let Some(tdp) = kvm.tdp_mmu() else { return };
    let Some(sept) = module.sept(tdr) else { return };
    let f15 = kvm.profile().has_fix(gmem_kvm::profile::Fix::F15TdxAddWhileMapping);
    let sept_leaves: BTreeMap<u64, SeptLeaf> = sept.leaves().into_iter().map(|leaf| (leaf.gpa, leaf)).collect();
    let mirror = tdp.mirror_sptes();
    let mut premapped = 0i64;
    for (gfn, spte) in &mirror {
        let gpa = gfn.to_gpa().0;
        match sept_leaves.get(&gpa) {
            Some(leaf) => {
                let ok_state = matches!(leaf.state, LeafState::Mapped | LeafState::Pending);
                if leaf.level != 0
                    || leaf.pfn != spte.pfn
                    || !ok_state
                    || !is_private_page_of(module, tdr, spte.pfn, gpa)
                {
                    out.push(Violation {
                        invariant: T5_MIRROR_SYNC,
                        detail: format!(
                            "mirror leaf gfn {gfn} → {:?} ({}) but the S-EPT leaf is {:?} at level {} in state {:?}",
                            spte.pfn, spte.level, leaf.pfn, leaf.level, leaf.state
                        ),
                    });
                }
            }
            None if state != TdState::Runnable && !f15 => premapped += 1,
            None => out.push(Violation {
                invariant: T5_MIRROR_SYNC,
                detail: format!("mirror leaf gfn {gfn} → {:?} has no S-EPT leaf (TD {state:?})", spte.pfn),
            }),
        }
    }
    let mirror_gpas: std::collections::BTreeSet<u64> = mirror.iter().map(|(gfn, _)| gfn.to_gpa().0).collect();
    for (gpa, leaf) in &sept_leaves {
        if !mirror_gpas.contains(gpa) {
            out.push(Violation {
                invariant: T5_MIRROR_SYNC,
                detail: format!("S-EPT leaf at gpa {gpa:#x} → {:?} ({:?}) has no mirror leaf", leaf.pfn, leaf.state),
            });
        }
    }
    if premapped != vm.nr_premapped() {
        out.push(Violation {
            invariant: T5_MIRROR_SYNC,
            detail: format!("{premapped} premapped mirror leaves but nr_premapped is {}", vm.nr_premapped()),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdx::measure::MrtdRecord;
    use crate::tdx::module::fixture::*;
    use crate::tdx::pamt::FrameState;
    use crate::tdx::sept::{LeafState, SeptEntry};
    use gmem_mm::folio::Folio;

    fn names(module: &TdxModule) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = violations(module).into_iter().map(|v| v.invariant).collect();
        names.dedup();
        names
    }

    /// A runnable TD with a private page at GPA, and one PAGE.ADDed before finalising.
    fn populated() -> (Fx, Pfn) {
        let mut fx = Fx::initialized();
        fx.add_vcpu();
        fx.tables(GPA);
        fx.tdx.tdh_mem_page_add(fx.tdr, GPA + 0x1000, fx.page(), fx.page()).unwrap();
        fx.tdx.tdh_mr_extend(fx.tdr, GPA + 0x1000).unwrap();
        assert_eq!(violations(&fx.tdx), vec![], "while building");
        fx.tdx.tdh_mr_finalize(fx.tdr).unwrap();
        let page = fx.aug(GPA);
        (fx, page)
    }

    #[test]
    fn a_well_behaved_module_has_no_violations() {
        let (fx, page) = populated();
        let tdx = &fx.tdx;
        assert_eq!(violations(tdx), vec![]);
        tdx.tdh_mem_range_block(fx.tdr, GPA, 0).unwrap();
        tdx.tdh_mem_track(fx.tdr).unwrap();
        tdx.tdh_mem_page_remove(fx.tdr, GPA, 0).unwrap();
        Folio::from_pfn(&fx.machine.mem, page).put();
        assert_eq!(violations(tdx), vec![], "a removed frame may go back to the allocator");
        tdx.tdh_vp_flush(fx.vcpus[0]).unwrap();
        tdx.tdh_mng_vpflushdone(fx.tdr).unwrap();
        tdx.tdh_phymem_cache_wb(false).unwrap();
        tdx.tdh_mng_key_freeid(fx.tdr).unwrap();
        // Reclaim in an awkward order: the level-3 table first orphans the others.
        let mut frames: Vec<(Pfn, PageType)> = tdx
            .pamt_frames()
            .into_iter()
            .filter(|(pfn, frame)| frame.entry.pt.is_td_owned() && *pfn != fx.tdr)
            .map(|(pfn, frame)| (pfn, frame.entry.pt))
            .collect();
        frames.sort_by_key(|(_, pt)| std::cmp::Reverse(*pt == PageType::Ept));
        for (pfn, _) in frames {
            tdx.tdh_phymem_page_reclaim(pfn).unwrap();
            assert_eq!(violations(tdx), vec![], "after reclaiming {pfn:?}");
        }
        tdx.tdh_phymem_page_reclaim(fx.tdr).unwrap();
        assert_eq!(violations(tdx), vec![]);
    }

    #[test]
    fn t1_catches_a_frame_whose_pamt_entry_was_lost_or_forged() {
        let (fx, page) = populated();
        let tdx = &fx.tdx;
        // The leaf still maps the frame, but the PAMT says it is free.
        let frame = tdx.frame_state(page).unwrap();
        tdx.forge_pamt_for_test(page, FrameState::default());
        assert_eq!(names(tdx), vec![T1_PAMT_OWNERSHIP]);
        tdx.forge_pamt_for_test(page, frame);
        assert_eq!(violations(tdx), vec![]);
        // A PT_REG entry at the wrong GPA.
        let mut wrong = frame;
        wrong.entry.gpa += 0x1000;
        tdx.forge_pamt_for_test(page, wrong);
        assert!(violations(tdx)[0].detail.contains("PAMT entry"), "{:?}", violations(tdx));
        tdx.forge_pamt_for_test(page, frame);
        // An owned frame no structure of the TD claims, and one of a TD that does not exist.
        let orphan = fx.page();
        tdx.forge_pamt_for_test(orphan, FrameState { entry: PamtEntry::private(fx.tdr, 0x9000), ..frame });
        assert!(violations(tdx).iter().any(|v| v.detail.contains("orphan")));
        tdx.forge_pamt_for_test(orphan, FrameState { entry: PamtEntry::private(Pfn(77), 0x9000), ..frame });
        assert!(violations(tdx).iter().any(|v| v.detail.contains("no TD has that TDR")));
        tdx.forge_pamt_for_test(orphan, FrameState::default());
        // Two leaves mapping one frame.
        assert!(tdx.forge_sept_for_test(
            fx.tdr,
            GPA + 0x2000,
            0,
            SeptEntry::Leaf { pfn: page, state: LeafState::Mapped }
        ));
        assert!(violations(tdx)
            .iter()
            .any(|v| v.invariant == T1_PAMT_OWNERSHIP && v.detail.contains("claimed 2 times")));
        assert!(tdx.forge_sept_for_test(fx.tdr, GPA + 0x2000, 0, SeptEntry::Free));
        assert_eq!(violations(tdx), vec![]);
        // The host freed a page the TD still owns.
        Folio::from_pfn(&fx.machine.mem, page).put();
        let found = violations(tdx);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].detail.contains("free pool"));
    }

    #[test]
    fn t3_catches_an_orphan_table_and_a_freed_table_page() {
        let (fx, _) = populated();
        let tdx = &fx.tdx;
        let table = match tdx.sept_entry(fx.tdr, GPA, 1) {
            Some(Ok(SeptEntry::Table { table, .. })) => table,
            other => panic!("{other:?}"),
        };
        // The table page freed in the PAMT while the HKID is assigned.
        let frame = tdx.frame_state(table).unwrap();
        tdx.forge_pamt_for_test(table, FrameState::default());
        let found = names(tdx);
        assert!(found.contains(&T3_WALK_ORDER) && found.contains(&T1_PAMT_OWNERSHIP), "{found:?}");
        tdx.forge_pamt_for_test(table, frame);
        // The link to it replaced by a link to a page that is no table: the table is orphaned.
        assert!(tdx.forge_sept_for_test(fx.tdr, GPA, 1, SeptEntry::Table { table: Pfn(3000), blocked: false }));
        let found = violations(tdx);
        assert!(found.iter().any(|v| v.invariant == T3_WALK_ORDER && v.detail.contains("no parent link")), "{found:?}");
        assert!(found.iter().any(|v| v.invariant == T3_WALK_ORDER && v.detail.contains("no table of the TD")));
        assert!(tdx.forge_sept_for_test(fx.tdr, GPA, 1, SeptEntry::Table { table, blocked: false }));
        assert_eq!(violations(tdx), vec![]);
        // The host freed the table page.
        Folio::from_pfn(&fx.machine.mem, table).put();
        assert!(violations(tdx).iter().any(|v| v.invariant == T3_WALK_ORDER && v.detail.contains("host allocator")));
    }

    #[test]
    fn t10_catches_a_measurement_after_finalize_and_a_log_that_lies() {
        let (fx, _) = populated();
        let tdx = &fx.tdx;
        assert!(tdx.forge_mrtd_for_test(fx.tdr, MrtdRecord::PageAdd { gpa: 0x5000 }, true));
        let found = violations(tdx);
        assert!(found.iter().all(|v| v.invariant == T10_MEASUREMENT) && found.len() == 2, "{found:?}");
        let (fx, _) = populated();
        assert!(fx.tdx.forge_mrtd_for_test(fx.tdr, MrtdRecord::PageAdd { gpa: 0x5000 }, false));
        assert_eq!(names(&fx.tdx), vec![T10_MEASUREMENT], "hashed after FINALIZE, not logged");
        let building = Fx::initialized();
        assert!(building.tdx.forge_mrtd_for_test(building.tdr, MrtdRecord::PageAdd { gpa: 0x5000 }, false));
        assert_eq!(names(&building.tdx), vec![T10_MEASUREMENT], "an MRTD being built that is not its log");
    }
}
