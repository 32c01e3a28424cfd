//! What the TDX module does for the guest and what the hardware does to the host: the guest's
//! TDG.MEM.PAGE.ACCEPT and private accesses through the S-EPT (T7), and host accesses to TD
//! memory (`arch-and-mmu.md` §2.8).
//!
//! A guest private access walks the S-EPT: a MAPPED leaf completes (unless the host poisoned
//! the line: a read is a machine check, recorded on the TD); a FREE entry, a missing table, a
//! BLOCKED leaf or a blocked range is an EPT violation to the host; a PENDING leaf is a #VE in
//! the guest, or, when the TD was built with `SEPT_VE_DISABLE`, an EPT violation the host sees
//! as "pending" (KVM then kills the TD).
//!
//! The host never sees TD memory in the clear. A host read of a frame a TD owns returns zeros
//! (the TD bit does not match: [`TdxModule::host_read`]); a host write does not stop the host but
//! poisons the line for the TD ([`TdxModule::note_host_write`]). The model implements that check
//! as [`HostWriteCheck`] for [`TdxModule`], but does not install it: a machine has one host-write
//! check, the SEV-SNP RMP's today, and installing the TDX one is left to the step that gives
//! [`crate::X86Host`] its TDX VMs. [`TdxModule::host_clear_page`] is the kernel's
//! `tdx_clear_page` (MOVDIR64B), the only host write that makes a frame that left a TD ordinary
//! memory again.

use crate::tdx::module::{page_info, TdLifecycle, TdLock, TdMachineCheck, TdOpState, TdxModule};
use crate::tdx::pamt::PamtEntry;
use crate::tdx::sept::{LeafState, SeptEntry, SeptState, TDX_SHARED_BIT};
use crate::tdx::status::*;
use gmem_mm::page::HostWriteCheck;
use gmem_mm::types::PAGE_SIZE;
use gmem_mm::Pfn;
use gmem_sync::atomic::Ordering;

/// `TDG_MEM_PAGE_ACCEPT` (the TDCALL leaf).
pub const TDG_MEM_PAGE_ACCEPT: u64 = 6;

/// What stops a guest access (or ACCEPT) instead of completing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TdExit {
    /// An EPT violation TD exit to the host, at the entry where the walk ended.
    EptViolation {
        /// The GPA accessed.
        gpa: u64,
        /// The level of the entry that stopped the walk.
        level: u8,
        /// Its state.
        state: SeptState,
        /// The "pending EPT violation" exit (an access to a PENDING page of a TD with
        /// `SEPT_VE_DISABLE`): KVM treats it as fatal for the TD.
        pending: bool,
    },
    /// A #VE delivered to the guest (an access to a PENDING page without `SEPT_VE_DISABLE`).
    VirtualizationException {
        /// The GPA accessed.
        gpa: u64,
    },
    /// A machine check: the TD read a line the host poisoned.
    MachineCheck {
        /// The GPA read.
        gpa: u64,
        /// The frame.
        pfn: Pfn,
    },
    /// The GPA has the shared bit: not an access the S-EPT translates.
    NotPrivate {
        /// The GPA accessed.
        gpa: u64,
    },
    /// There is no such TD, or it is not running (not runnable, or torn down).
    NoTd,
}

impl TdxModule {
    /// The guest's `TDG.MEM.PAGE.ACCEPT(gpa | level)` in the TD whose TDR is `tdr`: a PENDING 4K
    /// page becomes MAPPED, its contents zeroed by the module. `Ok` is the TDCALL's status:
    /// success, `TDX_PAGE_ALREADY_ACCEPTED` for a MAPPED page, `TDX_OPERAND_BUSY` on `SEPT` while
    /// the tree is held exclusively, `TDX_OPERAND_INVALID` for a bad operand; `Err` is the EPT
    /// violation exit of a page that is not there to accept (the host AUGs it and the guest
    /// retries).
    pub fn tdg_mem_page_accept(&self, tdr: Pfn, gpa: u64, level: u64) -> Result<TdxStatus, TdExit> {
        let Some(td) = self.td(tdr) else { return Err(TdExit::NoTd) };
        let state = td.view();
        if state.op_state != TdOpState::Runnable || state.lifecycle != TdLifecycle::KeysConfigured {
            return Err(TdExit::NoTd);
        }
        let (gpa, _) = match page_info(gpa, level, 0, 0) {
            Ok(decoded) => decoded,
            Err(error) => return Ok(error.status),
        };
        let Some(_sept_lock) = td.try_hold(TdLock::SeptShared) else {
            return Ok(TdxStatus::new(TDX_OPERAND_BUSY, TDX_OPERAND_ID_SEPT));
        };
        let mut sept = td.sept.lock();
        match sept.translate(gpa) {
            Err(failure) => {
                Err(TdExit::EptViolation { gpa, level: failure.level, state: failure.entry.state(), pending: false })
            }
            Ok((0, pfn, LeafState::Pending)) => {
                sept.set_entry(gpa, 0, SeptEntry::Leaf { pfn, state: LeafState::Mapped }).map_err(|failure| {
                    TdExit::EptViolation { gpa, level: failure.level, state: failure.entry.state(), pending: false }
                })?;
                // The module initialises the page with the TD's key (a full write: no poison).
                self.machine().mem.write_unchecked(pfn, 0, &[0u8; PAGE_SIZE as usize]);
                self.pamt.lock().clear_poison(pfn);
                Ok(TdxStatus::SUCCESS)
            }
            Ok((_, _, LeafState::Mapped)) => Ok(TdxStatus::new(TDX_PAGE_ALREADY_ACCEPTED, 0)),
            Ok((level, _, state)) => {
                Err(TdExit::EptViolation { gpa, level, state: SeptState::Leaf(state), pending: false })
            }
        }
    }

    /// A private access by the guest of the TD whose TDR is `tdr` to `gpa`, as the S-EPT and
    /// the memory integrity check decide it: the frame for a MAPPED page, or what stops the
    /// access (see the module docs). A read of a poisoned line is recorded on the TD.
    pub fn guest_private_access(&self, tdr: Pfn, gpa: u64, write: bool) -> Result<Pfn, TdExit> {
        if gpa & TDX_SHARED_BIT != 0 {
            return Err(TdExit::NotPrivate { gpa });
        }
        let Some(td) = self.td(tdr) else { return Err(TdExit::NoTd) };
        let state = td.view();
        if state.op_state != TdOpState::Runnable || state.lifecycle != TdLifecycle::KeysConfigured {
            return Err(TdExit::NoTd);
        }
        let sept_ve_disable = state.params.is_some_and(|params| params.sept_ve_disable);
        let translated = td.sept.lock().translate(gpa);
        match translated {
            Err(failure) => {
                Err(TdExit::EptViolation { gpa, level: failure.level, state: failure.entry.state(), pending: false })
            }
            Ok((level, _, LeafState::Pending)) if sept_ve_disable => {
                td.state.lock().pending_violations += 1;
                Err(TdExit::EptViolation { gpa, level, state: SeptState::Leaf(LeafState::Pending), pending: true })
            }
            Ok((_, _, LeafState::Pending)) => Err(TdExit::VirtualizationException { gpa }),
            Ok((level, _, leaf @ (LeafState::Blocked | LeafState::PendingBlocked))) => {
                Err(TdExit::EptViolation { gpa, level, state: SeptState::Leaf(leaf), pending: false })
            }
            Ok((_, pfn, LeafState::Mapped)) => {
                let poisoned = self.pamt.lock().frame(pfn).is_some_and(|frame| frame.poisoned);
                if poisoned && !write {
                    td.state.lock().machine_checks.push(TdMachineCheck { gpa, pfn });
                    return Err(TdExit::MachineCheck { gpa, pfn });
                }
                Ok(pfn)
            }
        }
    }

    /// The PAMT entry of `pfn` if a TD owns it (a private page, an S-EPT table, a control
    /// page): the frames whose contents the host cannot see or change.
    pub fn is_td_private(&self, pfn: Pfn) -> Option<PamtEntry> {
        self.pamt.lock().entry(pfn).filter(|entry| entry.pt.is_td_owned())
    }

    /// A host read of `buf.len()` bytes of `pfn` at `offset`: zeros for a frame a TD owns (the
    /// TD bit does not match), the memory otherwise.
    pub fn host_read(&self, pfn: Pfn, offset: usize, buf: &mut [u8]) {
        if self.is_td_private(pfn).is_some() {
            buf.fill(0);
        } else {
            self.machine().mem.read(pfn, offset, buf);
        }
    }

    /// A host write to `pfn` (the hardware's side of it): a frame a TD owns is poisoned for the
    /// TD; the host is not stopped. Returns whether it poisoned one.
    pub fn note_host_write(&self, pfn: Pfn) -> bool {
        if self.pamt_tracked.load(Ordering::Acquire) == 0 {
            return false;
        }
        let poisoned = self.pamt.lock().note_host_write(pfn);
        if let Some(entry) = poisoned {
            tracing::warn!("TDX: host write to {pfn:?} ({entry:?}) poisons the line for the TD");
        }
        poisoned.is_some()
    }

    /// `tdx_clear_page`: the host zeroes `pfn` with MOVDIR64B, which also clears any poison and
    /// leaves the frame under the host's key. On a frame a TD still owns the write only poisons
    /// the TD's copy. Returns whether the frame was a TD's.
    pub fn host_clear_page(&self, pfn: Pfn) -> bool {
        if !self.machine().mem.is_valid_pfn(pfn) {
            return false;
        }
        let owned = self.note_host_write(pfn);
        self.machine().mem.write_unchecked(pfn, 0, &[0u8; PAGE_SIZE as usize]);
        if !owned {
            let mut pamt = self.pamt.lock();
            pamt.host_clear(pfn);
            self.pamt_tracked.store(pamt.tracked() as u64, Ordering::Release);
        }
        owned
    }

    /// Why the host may not reuse `pfn` as ordinary memory yet (T4): a TD owns it, it may hold
    /// dirty lines of a TD's key (no WBINVD or CACHE.WB since it left), or it is still under a
    /// TD's key (no MOVDIR64B clear). `None` if it may.
    pub fn host_reuse_hazard(&self, pfn: Pfn) -> Option<String> {
        self.pamt.lock().host_reuse_hazard(pfn)
    }
}

impl HostWriteCheck for TdxModule {
    /// A TD's frame is poisoned, and the write retires: TDX does not stop the host (§2.8).
    fn check_host_write(&self, pfn: Pfn) -> Option<String> {
        self.note_host_write(pfn);
        None
    }
}

/// The TDX module's host-write check as the machine holds it. The module keeps its machine
/// (`Arc<Machine>`), so the machine must not keep the module in return: a strong reference both
/// ways would keep every Intel host, its memory and its TDs alive forever. Once the module is
/// gone there is no TD memory to poison, and host writes are allowed.
#[derive(Debug)]
pub struct TdxHostWriteCheck(gmem_sync::Weak<TdxModule>);

impl TdxHostWriteCheck {
    /// The check of `module`, for [`gmem_mm::page::PhysMem::set_host_write_check`].
    pub fn new(module: &gmem_sync::Arc<TdxModule>) -> gmem_sync::Arc<TdxHostWriteCheck> {
        gmem_sync::Arc::new(TdxHostWriteCheck(gmem_sync::Arc::downgrade(module)))
    }
}

impl HostWriteCheck for TdxHostWriteCheck {
    fn check_host_write(&self, pfn: Pfn) -> Option<String> {
        self.0.upgrade().and_then(|module| module.check_host_write(pfn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tdx::module::fixture::*;
    use crate::tdx::module::TdParams;
    use crate::tdx::pamt::PageType;

    #[test]
    fn accept_zeroes_a_pending_page_and_maps_it() {
        let fx = Fx::runnable();
        let tdx = &fx.tdx;
        // Nothing there yet: the guest's ACCEPT exits to the host, which AUGs.
        assert_eq!(
            tdx.tdg_mem_page_accept(fx.tdr, GPA, 0),
            Err(TdExit::EptViolation { gpa: GPA, level: 0, state: SeptState::Free, pending: false })
        );
        let page = fx.page();
        fx.machine.mem.write(page, 100, b"host garbage");
        tdx.tdh_mem_page_aug(fx.tdr, GPA, 0, page).unwrap();
        assert_eq!(
            tdx.tdg_mem_page_accept(fx.tdr, GPA, 1),
            Ok(TdxStatus::new(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX))
        );
        assert_eq!(tdx.tdg_mem_page_accept(fx.tdr, GPA, 0), Ok(TdxStatus::SUCCESS));
        let mut bytes = [0xffu8; 12];
        fx.machine.mem.read(page, 100, &mut bytes);
        assert_eq!(bytes, [0; 12], "ACCEPT zero-initialises");
        assert_eq!(tdx.tdg_mem_page_accept(fx.tdr, GPA, 0), Ok(TdxStatus::new(TDX_PAGE_ALREADY_ACCEPTED, 0)));
        // A blocked page cannot be accepted: the exit names the blocked leaf.
        let second = fx.aug(GPA + 0x1000);
        tdx.tdh_mem_range_block(fx.tdr, GPA + 0x1000, 0).unwrap();
        assert_eq!(
            tdx.tdg_mem_page_accept(fx.tdr, GPA + 0x1000, 0),
            Err(TdExit::EptViolation {
                gpa: GPA + 0x1000,
                level: 0,
                state: SeptState::Leaf(LeafState::PendingBlocked),
                pending: false
            })
        );
        assert_eq!(fx.leaf(GPA + 0x1000), SeptEntry::Leaf { pfn: second, state: LeafState::PendingBlocked });
        // No TD, or one that is not running: nothing to accept in.
        assert_eq!(tdx.tdg_mem_page_accept(fx.page(), GPA, 0), Err(TdExit::NoTd));
        let building = Fx::initialized();
        assert_eq!(building.tdx.tdg_mem_page_accept(building.tdr, GPA, 0), Err(TdExit::NoTd));
    }

    #[test]
    fn guest_accesses_follow_the_sept_state() {
        let fx = Fx::runnable();
        let tdx = &fx.tdx;
        // No table below 1G for this GPA: the walk stops at the level-2 entry.
        let far = GPA + (1 << 30);
        assert_eq!(
            tdx.guest_private_access(fx.tdr, far, false),
            Err(TdExit::EptViolation { gpa: far, level: 2, state: SeptState::Free, pending: false })
        );
        assert_eq!(
            tdx.guest_private_access(fx.tdr, GPA | TDX_SHARED_BIT, false),
            Err(TdExit::NotPrivate { gpa: GPA | TDX_SHARED_BIT })
        );
        let page = fx.aug(GPA);
        // SEPT_VE_DISABLE: touching a PENDING page is the "pending" EPT violation KVM kills the TD for.
        assert_eq!(
            tdx.guest_private_access(fx.tdr, GPA + 4, false),
            Err(TdExit::EptViolation {
                gpa: GPA + 4,
                level: 0,
                state: SeptState::Leaf(LeafState::Pending),
                pending: true
            })
        );
        tdx.tdg_mem_page_accept(fx.tdr, GPA, 0).unwrap();
        assert_eq!(tdx.guest_private_access(fx.tdr, GPA + 4, false), Ok(page));
        // A blocked range faults even though the leaf under it is MAPPED.
        tdx.tdh_mem_range_block(fx.tdr, GPA & !0x1f_ffff, 1).unwrap();
        assert_eq!(
            tdx.guest_private_access(fx.tdr, GPA, true),
            Err(TdExit::EptViolation { gpa: GPA, level: 1, state: SeptState::NlBlocked, pending: false })
        );
        // Without SEPT_VE_DISABLE the guest takes a #VE instead.
        let ve = Fx::runnable_with(TdParams { sept_ve_disable: false, ..TdParams::default() });
        ve.aug(GPA);
        assert_eq!(ve.tdx.guest_private_access(ve.tdr, GPA, true), Err(TdExit::VirtualizationException { gpa: GPA }));
    }

    #[test]
    fn host_reads_see_zeros_and_host_writes_poison_the_td() {
        let fx = Fx::runnable();
        let tdx = fx.tdx.clone();
        // The check is not installed on machines globally yet; this machine is the test's own.
        fx.machine.mem.set_host_write_check(tdx.clone());
        let page = fx.aug(GPA);
        tdx.tdg_mem_page_accept(fx.tdr, GPA, 0).unwrap();
        fx.machine.mem.write_unchecked(page, 0, b"guest secret");
        let mut seen = [0xffu8; 12];
        tdx.host_read(page, 0, &mut seen);
        assert_eq!(seen, [0; 12], "the host reads zeros");
        assert_eq!(tdx.is_td_private(page).map(|entry| entry.pt), Some(PageType::Reg));
        // A host write retires without an oops, and poisons the line for the TD.
        fx.machine.mem.write(page, 0, b"host");
        assert!(fx.machine.warnings.is_empty(), "{:?}", fx.machine.warnings.snapshot());
        assert!(tdx.frame_state(page).unwrap().poisoned);
        assert_eq!(tdx.guest_private_access(fx.tdr, GPA, true), Ok(page), "a write does not consume the poison");
        assert_eq!(tdx.guest_private_access(fx.tdr, GPA, false), Err(TdExit::MachineCheck { gpa: GPA, pfn: page }));
        assert_eq!(tdx.td_info(fx.tdr).unwrap().machine_checks.len(), 1);
        // A host write to a frame no TD owns poisons nothing.
        let plain = fx.page();
        fx.machine.mem.write(plain, 0, b"plain");
        assert!(!tdx.frame_state(plain).unwrap().poisoned);
        // KVM's zap: block, track, remove, WBINVD, MOVDIR64B clear; then the frame is ordinary.
        tdx.tdh_mem_range_block(fx.tdr, GPA, 0).unwrap();
        tdx.tdh_mem_track(fx.tdr).unwrap();
        tdx.tdh_mem_page_remove(fx.tdr, GPA, 0).unwrap();
        tdx.tdh_phymem_page_wbinvd(page, fx.hkid).unwrap();
        assert!(tdx.frame_state(page).unwrap().poisoned, "poison outlives the removal");
        assert!(tdx.host_reuse_hazard(page).is_some());
        assert!(!tdx.host_clear_page(page));
        assert_eq!(tdx.host_reuse_hazard(page), None);
        assert!(!tdx.frame_state(page).unwrap().poisoned);
        tdx.host_read(page, 0, &mut seen);
        assert_eq!(seen, [0; 12]);
        // MOVDIR64B on a frame a TD still owns only poisons the TD's copy.
        let owned = fx.aug(GPA + 0x1000);
        assert!(tdx.host_clear_page(owned));
        assert!(tdx.frame_state(owned).unwrap().poisoned);
    }
}
