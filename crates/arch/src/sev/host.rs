//! The kernel's SEV-SNP host support (`arch/x86/virt/svm/sev.c`): the helpers KVM and the
//! firmware driver use to change the RMP, over the hardware of [`crate::sev::rmp`].
//!
//! | kernel | here |
//! |---|---|
//! | `rmpupdate` (with `adjust_direct_map` and the `FAIL_OVERLAP` retry) | [`SnpHost::rmpupdate`] |
//! | `rmp_make_private` / `rmp_make_shared` | [`SnpHost::rmp_make_private`] / [`SnpHost::rmp_make_shared`] |
//! | `psmash` | [`SnpHost::psmash`] |
//! | `snp_lookup_rmpentry` | [`SnpHost::snp_lookup_rmpentry`] |
//! | `snp_leak_pages` | [`SnpHost::snp_leak_pages`] |
//! | `dump_rmpentry` | [`SnpHost::dump_rmpentry`] |
//! | `clflush_cache_range` of guest frames | [`SnpHost::clflush_cache_range`] |
//!
//! The host also keeps a weak registration of each SNP guest (the model's own: the kernel has no
//! such list), so that the host-wide checks can tell which VM an RMP entry's ASID names: the
//! invariant checker's S1 ([`crate::sev::invariants`]) and the S9 assertion of
//! [`SnpHost::rmpupdate`], which reports (as a WARN) a frame made hypervisor-owned while an SPTE
//! of the guest it was assigned to still maps it.
//!
//! `rmpupdate` loops while the instruction returns `FAIL_OVERLAP`, which the kernel expects to
//! be a transient contention on the 2M region. A permanent overlap (a 4K update inside an
//! assigned 2M entry) would loop forever in the kernel; the model bounds the loop at
//! [`RMPUPDATE_RETRY_LIMIT`] and reports the hang as a WARN naming the entry, then fails as any
//! other RMPUPDATE failure does.

use crate::sev::firmware::SnpFirmware;
use crate::sev::rmp::{pagesize_2m, rmp_level, Rmp, RmpEntry, RmpError, RmpState, PAGES_PER_2M};
use gmem_kvm::arch::PgLevel;
use gmem_kvm::{Gfn, Kvm};
use gmem_mm::types::PAGE_SHIFT;
use gmem_mm::{Errno, KResult, Machine, Pfn};
use gmem_sync::warn::WarnKind;
use gmem_sync::{Arc, LockClass, Mutex, Weak};
use std::fmt;

/// How many times [`SnpHost::rmpupdate`] retries a `FAIL_OVERLAP` before it reports the loop
/// the kernel would never leave.
pub const RMPUPDATE_RETRY_LIMIT: u32 = 256;

/// `snp_leaked_pages_list_lock`.
static SNP_LEAKED_PAGES_LOCK: LockClass = LockClass::new("snp_leaked_pages_list_lock");
/// The model's registry of SNP guests (a leaf lock).
static SNP_GUESTS_LOCK: LockClass = LockClass::new("kvm_snp_guests");

/// The SEV-SNP host: the RMP and the kernel's helpers around it, and the firmware (one per
/// machine).
pub struct SnpHost {
    machine: Arc<Machine>,
    rmp: Arc<Rmp>,
    firmware: SnpFirmware,
    /// `snp_leaked_pages_list`: frames whose RMP state could not be restored; never handed
    /// back to the host.
    leaked: Mutex<Vec<Pfn>>,
    /// The VMs that became SNP guests on this host (`KVM_SEV_INIT2`), weakly: the model's, for
    /// the host-wide invariants (see the module docs).
    guests: Mutex<Vec<Weak<Kvm>>>,
}

impl fmt::Debug for SnpHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnpHost").field("rmp", &self.rmp).field("leaked", &self.leaked.lock().len()).finish()
    }
}

impl SnpHost {
    /// `snp_rmptable_init`: an RMP covering the machine's memory, cleared, installed as the
    /// check of every host write (SNP is enabled from now on).
    #[doc(alias = "snp_rmptable_init")]
    pub fn init(machine: &Arc<Machine>) -> Arc<SnpHost> {
        let rmp = Arc::new(Rmp::new(machine.mem.total_pages()));
        machine.mem.set_host_write_check(rmp.clone());
        Arc::new(SnpHost {
            machine: machine.clone(),
            firmware: SnpFirmware::new(machine, rmp.clone()),
            rmp,
            leaked: Mutex::new(&SNP_LEAKED_PAGES_LOCK, Vec::new()),
            guests: Mutex::new(&SNP_GUESTS_LOCK, Vec::new()),
        })
    }

    /// Registers `kvm` as an SNP guest of this host (when `KVM_SEV_INIT2` made it one). The
    /// registration is weak: it does not keep the VM alive, and a destroyed VM drops out.
    pub fn register_guest(&self, kvm: &Arc<Kvm>) {
        let mut guests = self.guests.lock();
        guests.retain(|guest| guest.strong_count() > 0);
        guests.push(Arc::downgrade(kvm));
    }

    /// The live SNP guests of this host (registered, not yet destroyed), in registration order.
    pub fn guests(&self) -> Vec<Arc<Kvm>> {
        let registered: Vec<Weak<Kvm>> = self.guests.lock().clone();
        registered.iter().filter_map(Weak::upgrade).filter(|kvm| !kvm.is_destroyed()).collect()
    }

    /// The live SNP guest whose ASID is `asid`.
    pub fn guest_by_asid(&self, asid: u32) -> Option<Arc<Kvm>> {
        if asid == 0 {
            return None;
        }
        self.guests()
            .into_iter()
            .find(|kvm| crate::sev::kvm::SvmVm::of(kvm).is_some_and(|vm| vm.sev_snp_guest() && vm.asid() == asid))
    }

    /// S9 at the call: before `pfn` (`npages` frames) goes back to the hypervisor, no SPTE of
    /// the guest it is assigned to may still map it (the invalidation zaps, then the folio is
    /// freed, then it is made shared). What is wrong, if anything.
    fn rmp_shared_while_mapped(&self, pfn: Pfn, npages: u64) -> Option<String> {
        let first = self.rmp.read(pfn)?;
        let kvm = self.guest_by_asid(first.asid).filter(|_| first.assigned)?;
        let tdp = kvm.tdp_mmu()?;
        (0..npages).find_map(|i| {
            let frame = pfn.offset(i);
            let entry = self.rmp.read(frame).filter(|entry| entry.assigned && entry.asid == first.asid)?;
            let gfn = Gfn(entry.gpa >> PAGE_SHIFT);
            let (base, spte) = tdp.covering_leaf(gfn)?;
            (spte.pfn.offset(gfn.0 - base.0) == frame).then(|| {
                format!(
                    "S9: RMPUPDATE makes {frame:?} hypervisor-owned while the {} SPTE of gfn {gfn} of the guest with \
                     ASID {} still maps it (no zap and TLB flush before the frame left the guest)",
                    spte.level, first.asid
                )
            })
        })
    }

    /// The machine.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The RMP (the hardware).
    pub fn rmp(&self) -> &Arc<Rmp> {
        &self.rmp
    }

    /// The SEV firmware on the platform's security processor.
    pub fn firmware(&self) -> &SnpFirmware {
        &self.firmware
    }

    /// `dump_rmpentry`: the entry of `pfn`, or, for an unassigned one, the non-zero entries of its
    /// 2M region (which can make a host access through a 2M mapping fault).
    pub fn dump_rmpentry(&self, pfn: Pfn) -> String {
        let Some(entry) = self.rmp.read(pfn) else {
            return format!("Failed to read RMP entry for PFN {:#x}, error {}", pfn.0, Errno::EFAULT.name());
        };
        if entry.assigned {
            return format!("PFN {:#x}, RMP entry: [{entry:?}]", pfn.0);
        }
        let base = pfn.0 & !(PAGES_PER_2M - 1);
        let mut text = format!(
            "PFN {:#x} unassigned, dumping non-zero entries in 2M PFN region: [{base:#x} - {:#x}]",
            pfn.0,
            base + PAGES_PER_2M
        );
        for other in base..base + PAGES_PER_2M {
            if let Some(entry) = self.rmp.read(Pfn(other)).filter(|entry| *entry != RmpEntry::default()) {
                text.push_str(&format!("\n  PFN: {other:#x}, [{entry:?}]"));
            }
        }
        text
    }

    /// `adjust_direct_map`: before a 4K entry becomes private, split a 2M direct-map mapping that
    /// covers it, so host writes to its neighbours do not fault. A 2M transition needs no split.
    fn adjust_direct_map(&self, pfn: Pfn, level: PgLevel) -> KResult<()> {
        if self.machine.warnings.warn_on_once(level > PgLevel::Level2M, || {
            format!("adjust_direct_map: RMP level {level} for PFN {:#x}", pfn.0)
        }) {
            return Err(Errno::EINVAL);
        }
        if pfn.0 >= self.rmp.max_pfn() {
            return Err(Errno::EINVAL);
        }
        if level == PgLevel::Level2M {
            if pfn.0 % PAGES_PER_2M != 0 || pfn.0 + PAGES_PER_2M > self.rmp.max_pfn() {
                return Err(Errno::EINVAL);
            }
            return Ok(());
        }
        if self.rmp.direct_map_is_2m(pfn) {
            self.rmp.split_direct_map(pfn);
        }
        Ok(())
    }

    /// `rmpupdate(pfn, state)`: split the direct map if needed, then RMPUPDATE, retrying while
    /// it returns `FAIL_OVERLAP`; any other failure is logged with the entry and is EFAULT.
    pub fn rmpupdate(&self, pfn: Pfn, state: &RmpState) -> KResult<()> {
        let level = rmp_level(state.pagesize_2m);
        if self.adjust_direct_map(pfn, level).is_err() {
            return Err(Errno::EFAULT);
        }
        let still_mapped = if state.assigned { None } else { self.rmp_shared_while_mapped(pfn, level.pages()) };
        let mut attempts = 0;
        let result = loop {
            match self.rmp.rmpupdate(pfn, state) {
                Err(RmpError::FailOverlap) if attempts < RMPUPDATE_RETRY_LIMIT => {
                    attempts += 1;
                    gmem_sync::thread::backoff(attempts);
                }
                Err(RmpError::FailOverlap) => {
                    self.machine.warnings.report(
                        WarnKind::Warn,
                        format!(
                            "rmpupdate: FAIL_OVERLAP on PFN {:#x} ({level}) persisted for {RMPUPDATE_RETRY_LIMIT} tries \
                             (the kernel would loop forever): {}",
                            pfn.0,
                            self.dump_rmpentry(pfn)
                        ),
                    );
                    break Err(RmpError::FailOverlap);
                }
                other => break other,
            }
        };
        if let (Ok(()), Some(detail)) = (&result, still_mapped) {
            self.machine.warnings.report(WarnKind::Warn, detail);
        }
        result.map_err(|error| {
            tracing::error!(
                "RMPUPDATE failed for PFN {:#x}, pg_level: {level}, ret: {error}\n{}",
                pfn.0,
                self.dump_rmpentry(pfn)
            );
            Errno::EFAULT
        })
    }

    /// `rmp_make_private(pfn, gpa, level, asid, immutable)`: assign to a guest (or, with ASID 0
    /// and immutable, to the firmware).
    pub fn rmp_make_private(&self, pfn: Pfn, gpa: u64, level: PgLevel, asid: u32, immutable: bool) -> KResult<()> {
        let size_2m = pagesize_2m(level).ok_or(Errno::EINVAL)?;
        self.rmpupdate(pfn, &RmpState { gpa, assigned: true, pagesize_2m: size_2m, immutable, asid })
    }

    /// `rmp_make_shared(pfn, level)`: give back to the hypervisor.
    pub fn rmp_make_shared(&self, pfn: Pfn, level: PgLevel) -> KResult<()> {
        let size_2m = pagesize_2m(level).ok_or(Errno::EINVAL)?;
        self.rmpupdate(pfn, &RmpState { pagesize_2m: size_2m, ..RmpState::default() })
    }

    /// `psmash(pfn)`: the raw PSMASH result (`Ok`, or the instruction's code), or EINVAL for a
    /// frame outside memory.
    pub fn psmash(&self, pfn: Pfn) -> KResult<Result<(), RmpError>> {
        if pfn.0 >= self.machine.mem.total_pages() {
            return Err(Errno::EINVAL);
        }
        Ok(self.rmp.psmash(pfn))
    }

    /// `snp_lookup_rmpentry(pfn, &assigned, &level)`: whether the frame is assigned, and the
    /// level of the entry authoritative for it; EFAULT beyond the table.
    pub fn snp_lookup_rmpentry(&self, pfn: Pfn) -> KResult<(bool, PgLevel)> {
        let entry = self.rmp.read(pfn).ok_or(Errno::EFAULT)?;
        let level = self.rmp.level(pfn).ok_or(Errno::EFAULT)?;
        Ok((entry.assigned, level))
    }

    /// `snp_leak_pages(pfn, npages)`: the frames can no longer be used by the host; keep them
    /// off the allocator for good (the kernel chains them on a list through their `buddy_list`).
    pub fn snp_leak_pages(&self, pfn: Pfn, npages: u64) {
        tracing::warn!("Leaking PFN range {:#x}-{:#x}", pfn.0, pfn.0 + npages);
        let mut leaked = self.leaked.lock();
        for i in 0..npages {
            tracing::warn!("{}", self.dump_rmpentry(pfn.offset(i)));
            leaked.push(pfn.offset(i));
        }
    }

    /// `snp_nr_leaked_pages`.
    #[doc(alias = "snp_nr_leaked_pages")]
    pub fn nr_leaked_pages(&self) -> u64 {
        self.leaked.lock().len() as u64
    }

    /// The leaked frames.
    pub fn leaked_pages(&self) -> Vec<Pfn> {
        self.leaked.lock().clone()
    }

    /// `clflush_cache_range(__va(pfn << PAGE_SHIFT), npages << PAGE_SHIFT)`: write back and drop
    /// the guest's cache lines of the frames before the host reuses them.
    pub fn clflush_cache_range(&self, pfn: Pfn, npages: u64) {
        self.rmp.clflush(pfn, npages);
    }

    /// The guest physical address of page `i` of the 2M region that starts at `gpa`.
    pub fn sub_gpa(gpa: u64, i: u64) -> u64 {
        gpa + (i << PAGE_SHIFT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gmem_mm::MachineConfig;

    fn host() -> Arc<SnpHost> {
        SnpHost::init(&Machine::new(MachineConfig::tiny(4096)))
    }

    #[test]
    fn make_private_splits_the_direct_map_and_host_writes_fault() {
        let host = host();
        let pfn = host.machine().mem.alloc(0).unwrap();
        host.rmp_make_private(pfn, 0x1000, PgLevel::Level4K, 1, false).unwrap();
        assert!(!host.rmp().direct_map_is_2m(pfn));
        assert_eq!(host.snp_lookup_rmpentry(pfn), Ok((true, PgLevel::Level4K)));
        host.machine().mem.write(pfn, 0, &[1]);
        let warnings = host.machine().warnings.take();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].kind, WarnKind::Oops);
        assert!(warnings[0].detail.contains("RMP #PF"));
        let mut byte = [9u8];
        host.machine().mem.read(pfn, 0, &mut byte);
        assert_eq!(byte, [0], "the faulting write did not retire");
        host.rmp_make_shared(pfn, PgLevel::Level4K).unwrap();
        host.clflush_cache_range(pfn, 1);
        host.machine().mem.write(pfn, 0, &[1]);
        assert!(host.machine().warnings.is_empty());
    }

    #[test]
    fn a_permanent_overlap_is_reported_not_spun_on_forever() {
        let host = host();
        host.rmp_make_private(Pfn(1024), 0x200000, PgLevel::Level2M, 1, false).unwrap();
        assert_eq!(host.rmp_make_shared(Pfn(1030), PgLevel::Level4K), Err(Errno::EFAULT));
        let warnings = host.machine().warnings.take();
        assert!(warnings.iter().any(|w| w.detail.contains("FAIL_OVERLAP")), "{warnings:?}");
        assert_eq!(host.psmash(Pfn(1024)), Ok(Ok(())));
        host.rmp_make_shared(Pfn(1030), PgLevel::Level4K).unwrap();
    }

    #[test]
    fn leaked_pages_are_kept() {
        let host = host();
        host.snp_leak_pages(Pfn(7), 2);
        assert_eq!(host.nr_leaked_pages(), 2);
        assert_eq!(host.leaked_pages(), vec![Pfn(7), Pfn(8)]);
        assert_eq!(host.snp_lookup_rmpentry(Pfn(100_000)), Err(Errno::EFAULT));
    }
}
