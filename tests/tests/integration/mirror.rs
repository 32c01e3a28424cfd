//! The mirror root of the TDP MMU and its external-SPT hooks (arch-and-mmu.md §2.3, v6.18
//! `tdp_mmu.c`), with every invariant (T5, T8 and T9's MMU side among them) checked after every
//! call.
//!
//! Goal: show that a VM whose back-end asks for a mirror root gets the kernel's protocol: private
//! faults link the missing tables top-down and set the leaf through the hooks, shared faults go
//! to the direct root at `gfn | shared bit` without hooks, invalidations pick roots by their
//! attribute filter, a FROZEN SPTE makes a concurrent fault retry, hook errors are handled as
//! v6.18 handles them (retry, `KVM_BUG_ON`, WARN and leak), `kvm_mmu_zap_all_fast` leaves the
//! mirror root alone, the teardown frees the tables bottom-up, and a VM without a mirror root is
//! untouched by all of it.
//!
//! Method: a test vendor module ([`MirrorHost`]) that supports `VmType::Tdx` (`v6.18` lists it;
//! [`KernelProfile::with_vm_type_for_test`] keeps the test independent of that) and whose
//! back-end records every hook call and can be told to fail the next calls of a hook, so the
//! TDP MMU's side of the protocol is tested without the TDX module (`tdx.rs` runs
//! the real one, `gmem_arch::tdx::kvm`). `KVM_TDX_INIT_VM`'s part here is [`Kvm::set_gfn_direct_bits`] with the
//! shared bit of GPAW 48 (GPA bit 47, gfn bit 35).

use gmem_kvm::arch::{
    tdx_gmem_max_mapping_level, ArchFactory, ArchSetup, GenericArchFactory, KvmArch, PgLevel, PopulateSource, SpteLevel,
};
use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::invariants::{self, M6_HUGE, T5_MIRROR, T8_4K, T9_ALIAS};
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::page_fault::kvm_mmu_page_fault;
use gmem_kvm::tdp_mmu::{FrozenSpte, MapResult, Spte, MIRROR_LOCAL_RETRY_LIMIT};
use gmem_kvm::vcpu::{RetPf, RunError, FAULT_RETRY_LIMIT};
use gmem_kvm::{Gfn, KernelProfile, Kvm, KvmSystem};
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use gmem_mm::vma::Mm;
use gmem_mm::{Errno, KResult, Pfn};
use gmem_sync::warn::WarnKind;
use gmem_sync::Arc;
use gmem_tests::*;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The shared bit of a TD with GPAW 48, as a gfn bit (`TDX_SHARED_BIT_PWL_4`).
const SHARED: u64 = 1 << 35;
/// The same bit in a gpa.
const SHARED_GPA: u64 = SHARED << 12;
/// `KVM_X86_TDX_VM`.
const TDX_VM: u64 = VmType::Tdx as u64;

/// One external-SPT hook call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Hook {
    Link { gfn: u64, level: SpteLevel, spt: Pfn },
    Set { gfn: u64, level: PgLevel, pfn: Pfn },
    Remove { gfn: u64, level: PgLevel, pfn: Pfn },
    Free { gfn: u64, level: SpteLevel, spt: Pfn },
}

/// Which hook (for failure injection).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum HookKind {
    Link,
    Set,
    Remove,
    Free,
}

type DuringSet = Box<dyn FnOnce(&Kvm) + Send>;

/// What the recording back-end saw and what it was told to do.
#[derive(Default)]
struct Recorder {
    /// The private max mapping level the back-end answers above 4K (TDX's is 4K: `None`).
    private_level: Mutex<Option<PgLevel>>,
    calls: Mutex<Vec<Hook>>,
    failures: Mutex<HashMap<HookKind, VecDeque<Errno>>>,
    during_set: Mutex<Option<DuringSet>>,
}

impl Recorder {
    fn take(&self) -> Vec<Hook> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// The next `times` calls of `kind` fail with `errno`.
    fn fail(&self, kind: HookKind, errno: Errno, times: usize) {
        self.failures.lock().unwrap().entry(kind).or_default().extend(std::iter::repeat_n(errno, times));
    }

    /// `f` runs inside the next `set_external_spte`, while the SPTE is FROZEN.
    fn during_next_set(&self, f: impl FnOnce(&Kvm) + Send + 'static) {
        *self.during_set.lock().unwrap() = Some(Box::new(f));
    }

    /// Records `hook` and answers as told: `EBUSY` is a contended external table, any other
    /// error is what TDX returns after a `KVM_BUG_ON` of its own for a link or a set (the
    /// remove and free errors are left to the TDP MMU, which is what those tests are about).
    fn call(&self, kvm: &Kvm, kind: HookKind, hook: Hook) -> KResult<()> {
        self.calls.lock().unwrap().push(hook);
        let failure = self.failures.lock().unwrap().get_mut(&kind).and_then(VecDeque::pop_front);
        match failure {
            None => Ok(()),
            Some(errno) => {
                if errno != Errno::EBUSY && matches!(kind, HookKind::Link | HookKind::Set) {
                    kvm.kvm_bug_on(true, || format!("{hook:?}: the vendor failed with {errno}"));
                }
                Err(errno)
            }
        }
    }
}

/// A TDX-like back-end without a TDX module: a mirror root, 4K private mappings, and hooks that
/// record.
struct MirrorArch {
    recorder: Arc<Recorder>,
}

impl std::fmt::Debug for MirrorArch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MirrorArch")
    }
}

impl KvmArch for MirrorArch {
    fn name(&self) -> &'static str {
        "test-mirror"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn gmem_max_mapping_level(&self, _kvm: &Kvm, _pfn: Pfn, is_private: bool) -> Option<PgLevel> {
        match *self.recorder.private_level.lock().unwrap() {
            Some(level) if is_private => Some(level),
            _ => tdx_gmem_max_mapping_level(is_private),
        }
    }

    fn post_populate(
        &self,
        _kvm: &Kvm,
        _gfn: Gfn,
        _pfn: Pfn,
        _source: &PopulateSource<'_>,
        _order: u8,
        _opaque: &mut dyn std::any::Any,
    ) -> KResult<()> {
        Err(Errno::EINVAL)
    }

    fn has_mirror_root(&self) -> bool {
        true
    }

    fn link_external_spt(&self, kvm: &Kvm, gfn: Gfn, level: SpteLevel, external_spt: Pfn) -> KResult<()> {
        self.recorder.call(kvm, HookKind::Link, Hook::Link { gfn: gfn.0, level, spt: external_spt })
    }

    fn set_external_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        let during = self.recorder.during_set.lock().unwrap().take();
        if let Some(during) = during {
            during(kvm);
        }
        self.recorder.call(kvm, HookKind::Set, Hook::Set { gfn: gfn.0, level, pfn })
    }

    fn remove_external_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        self.recorder.call(kvm, HookKind::Remove, Hook::Remove { gfn: gfn.0, level, pfn })
    }

    fn free_external_spt(&self, kvm: &Kvm, gfn: Gfn, level: SpteLevel, external_spt: Pfn) -> KResult<()> {
        self.recorder.call(kvm, HookKind::Free, Hook::Free { gfn: gfn.0, level, spt: external_spt })
    }
}

/// The vendor module: TDX VMs get a [`MirrorArch`] sharing one recorder; every other type is the
/// generic host's.
#[derive(Debug)]
struct MirrorHost {
    recorder: Arc<Recorder>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder").field("calls", &self.calls.lock().unwrap().len()).finish()
    }
}

impl ArchFactory for MirrorHost {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn supports(&self, vm_type: VmType) -> bool {
        vm_type == VmType::Tdx || GenericArchFactory.supports(vm_type)
    }

    fn vm_init(&self, vm_type: VmType) -> KResult<Arc<dyn KvmArch>> {
        match vm_type {
            VmType::Tdx => Ok(Arc::new(MirrorArch { recorder: self.recorder.clone() })),
            other => GenericArchFactory.vm_init(other),
        }
    }
}

/// A checked host whose v6.18 kernel offers TDX VMs backed by [`MirrorArch`].
fn mirror_host() -> (CheckedHost, Arc<Recorder>) {
    mirror_host_on(KernelProfile::v6_18())
}

/// [`mirror_host`] on `profile`.
fn mirror_host_on(profile: KernelProfile) -> (CheckedHost, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let shared = recorder.clone();
    let setup: ArchSetup =
        Arc::new(move |_, _| Arc::new(MirrorHost { recorder: shared.clone() }) as Arc<dyn ArchFactory>);
    let profile = profile.with_vm_type_for_test(VmType::Tdx);
    (CheckedHost::with_system(KvmSystem::builder(profile).arch(setup).build()), recorder)
}

/// A TDX VM with the shared bit configured, one guest_memfd memslot of `pages` pages at gpa 0
/// (shared accesses backed by anonymous memory), all of it PRIVATE, and one vCPU, with the
/// recorder of its back-end's hook calls.
struct MirrorGuest {
    guest: Guest,
    recorder: Arc<Recorder>,
}

impl std::ops::Deref for MirrorGuest {
    type Target = Guest;

    fn deref(&self) -> &Guest {
        &self.guest
    }
}

impl MirrorGuest {
    fn new(pages: u64) -> MirrorGuest {
        MirrorGuest::on(pages, KernelProfile::v6_18())
    }

    /// [`MirrorGuest::new`] on `profile`.
    fn on(pages: u64, profile: KernelProfile) -> MirrorGuest {
        let (host, recorder) = mirror_host_on(profile);
        let guest = GuestBuilder::on(host).vm_type(TDX_VM).gfn_direct_bits(SHARED).pages(pages).private(true).build();
        assert!(guest.kvm().has_mirrored_tdp());
        assert_eq!(recorder.take(), vec![], "no hook before the first fault");
        MirrorGuest { guest, recorder }
    }

    /// Makes `gfn` shared and has the guest read it through the shared alias (a direct-root leaf
    /// at `gfn | SHARED`).
    fn map_shared(&self, gfn: u64) {
        self.host.set_memory_attributes(self.vm, &attrs(gfn * PAGE, PAGE, 0)).unwrap();
        self.host.store(self.uaddr() + gfn * PAGE, &[0x5a]).unwrap();
        assert_eq!(self.host.guest_load(self.vcpu(), SHARED_GPA | (gfn * PAGE), 1, None).unwrap(), vec![0x5a]);
    }
}

/// The external pages of the links in `calls`.
fn linked(calls: &[Hook]) -> Vec<Pfn> {
    calls.iter().filter_map(|call| if let Hook::Link { spt, .. } = call { Some(*spt) } else { None }).collect()
}

#[test]
fn a_private_fault_links_the_missing_tables_top_down_then_sets_the_leaf() {
    let guest = MirrorGuest::new(16);
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0x2010, &[1, 2, 3], None).unwrap();
    let calls = guest.recorder.take();
    let spte = guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))).expect("a mirror leaf for gfn 2");
    let spts = linked(&calls);
    assert_eq!(
        calls,
        vec![
            Hook::Link { gfn: 0, level: SpteLevel::Level512G, spt: spts[0] },
            Hook::Link { gfn: 0, level: SpteLevel::Level1G, spt: spts[1] },
            Hook::Link { gfn: 0, level: SpteLevel::Level2M, spt: spts[2] },
            Hook::Set { gfn: 2, level: PgLevel::Level4K, pfn: spte.pfn },
        ]
    );
    assert!(spte.private && spte.writable && spte.level == PgLevel::Level4K);
    let mem = &host.machine().mem;
    assert!(spts.iter().all(|&spt| mem.is_allocated(spt)) && spts[0] != spts[1] && spts[1] != spts[2]);
    // The tables carry those pages: PDPT, PD and PT below the root.
    let tables = guest.with_tdp(|tdp| tdp.mirror_tables());
    let below_root: Vec<_> = tables[1..].iter().map(|t| (t.level, t.gfn, t.external_spt)).collect();
    assert_eq!(
        below_root,
        vec![
            (SpteLevel::Level1G, Gfn(0), Some(spts[0])),
            (SpteLevel::Level2M, Gfn(0), Some(spts[1])),
            (SpteLevel::Level4K, Gfn(0), Some(spts[2])),
        ]
    );
    // Nothing in the direct root, at either alias.
    assert!(guest.with_tdp(|tdp| tdp.sptes().is_empty()));

    // The guest reads it back through the mirror root, without faulting again.
    assert_eq!(host.guest_load(guest.vcpu(), 0x2010, 3, None).unwrap(), vec![1, 2, 3]);
    assert_eq!(guest.faults(), (1, 1, 0));
    // The data is in guest_memfd, not in the shared backing.
    assert_eq!(host.load(guest.uaddr() + 0x2010, 3).unwrap(), vec![0, 0, 0]);

    // A neighbour in the same page table needs only its leaf.
    host.guest_store(guest.vcpu(), 0x3000, &[4], None).unwrap();
    let pfn = guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(3))).unwrap().pfn;
    assert_eq!(guest.recorder.take(), vec![Hook::Set { gfn: 3, level: PgLevel::Level4K, pfn }]);
    assert_eq!(guest.with_tdp(|tdp| tdp.stats().external_spts_linked), 3);
}

#[test]
fn a_shared_fault_maps_the_direct_root_at_the_shared_alias_without_hooks() {
    let guest = MirrorGuest::new(16);
    let host = &guest.host;
    guest.map_shared(3);
    assert_eq!(guest.recorder.take(), vec![], "the direct root has no external page tables");
    let spte = guest.with_tdp(|tdp| tdp.lookup(Gfn(SHARED | 3))).expect("a direct leaf at the shared alias");
    assert!(!spte.private);
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup(Gfn(3))), None);
    assert_eq!(guest.with_tdp(|tdp| tdp.mirror_tables().len()), 1, "the mirror root alone");
    assert_eq!(guest.with_tdp(|tdp| tdp.mirror_sptes()), vec![]);
    // Attribute mismatches exit at the memslot gpa (without the shared bit), with the kind of
    // the gpa the guest used.
    assert_eq!(host.guest_load(guest.vcpu(), 0x3000, 1, None), Err(memory_fault(0x3000, true)));
    assert_eq!(host.guest_load(guest.vcpu(), SHARED_GPA | 0x2000, 1, None), Err(memory_fault(0x2000, false)));
    // On a VM with a mirror root the gpa decides the kind; an explicit kind may not contradict it.
    assert_eq!(host.guest_load(guest.vcpu(), SHARED_GPA | 0x3000, 1, Some(true)), Err(RunError::Errno(Errno::EINVAL)));
    assert_eq!(host.guest_load(guest.vcpu(), SHARED_GPA | 0x3000, 1, Some(false)).unwrap(), vec![0x5a]);
    assert_eq!(guest.recorder.take(), vec![]);
}

#[test]
fn a_conversion_zaps_the_root_of_the_old_kind_only() {
    let guest = MirrorGuest::new(16);
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0x2000, &[7], None).unwrap();
    guest.map_shared(5);
    let private = guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))).unwrap();
    guest.recorder.take();

    // Private → shared: KVM_FILTER_PRIVATE, the mirror leaf goes (the tables stay), the direct
    // root is untouched.
    host.set_memory_attributes(guest.vm, &attrs(0x2000, PAGE, 0)).unwrap();
    assert_eq!(guest.recorder.take(), vec![Hook::Remove { gfn: 2, level: PgLevel::Level4K, pfn: private.pfn }]);
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))), None);
    assert_eq!(guest.with_tdp(|tdp| tdp.mirror_tables().len()), 4, "leaf zaps leave the tables");
    assert!(guest.with_tdp(|tdp| tdp.lookup(Gfn(SHARED | 5)).is_some()));

    // Shared → private: KVM_FILTER_SHARED, the direct leaf goes, no hook.
    host.set_memory_attributes(guest.vm, &attrs(0x5000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    assert_eq!(guest.recorder.take(), vec![]);
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup(Gfn(SHARED | 5))), None);

    // guest_memfd's invalidation (a punched hole) is PRIVATE too.
    host.guest_store(guest.vcpu(), 0x5000, &[8], None).unwrap();
    let pfn = guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(5))).unwrap().pfn;
    guest.recorder.take();
    host.fallocate(guest.gmem(), FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0x5000, PAGE as i64).unwrap();
    assert_eq!(guest.recorder.take(), vec![Hook::Remove { gfn: 5, level: PgLevel::Level4K, pfn }]);
    assert_eq!(host.guest_load(guest.vcpu(), 0x5000, 1, None).unwrap(), vec![0], "a fresh page");
}

#[test]
fn ebusy_from_set_external_spte_restores_the_spte_and_the_fault_retries_until_it_succeeds() {
    let guest = MirrorGuest::new(16);
    guest.recorder.fail(HookKind::Set, Errno::EBUSY, 3);
    guest.host.guest_store(guest.vcpu(), 0x2000, &[9], None).unwrap();
    let calls = guest.recorder.take();
    let sets = calls.iter().filter(|call| matches!(call, Hook::Set { gfn: 2, .. })).count();
    assert_eq!((linked(&calls).len(), sets), (3, 4), "{calls:?}");
    assert_eq!(guest.faults(), (4, 1, 3), "three RET_PF_RETRY, then the install");
    assert_eq!(guest.host.guest_load(guest.vcpu(), 0x2000, 1, None).unwrap(), vec![9]);
}

#[test]
fn ebusy_from_link_external_spt_frees_the_table_and_the_fault_retries() {
    let guest = MirrorGuest::new(0x400);
    guest.host.guest_store(guest.vcpu(), 0x2000, &[1], None).unwrap();
    guest.recorder.take();
    // gfn 0x200 needs a new page table under the existing page directory.
    guest.recorder.fail(HookKind::Link, Errno::EBUSY, 1);
    guest.host.guest_store(guest.vcpu(), 0x200 * PAGE, &[2], None).unwrap();
    let calls = guest.recorder.take();
    let pfn = guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(0x200))).unwrap().pfn;
    let spts = linked(&calls);
    assert_eq!(
        calls,
        vec![
            Hook::Link { gfn: 0x200, level: SpteLevel::Level2M, spt: spts[0] },
            Hook::Link { gfn: 0x200, level: SpteLevel::Level2M, spt: spts[1] },
            Hook::Set { gfn: 0x200, level: PgLevel::Level4K, pfn },
        ]
    );
    assert_eq!(guest.faults(), (3, 2, 1));
    let stats = guest.with_tdp(|tdp| tdp.stats());
    assert_eq!(stats.external_spts_linked, 4, "the failed table was never linked");
    assert_eq!(guest.with_tdp(|tdp| tdp.mirror_tables().len()), 5);
    assert_eq!(guest.host.guest_load(guest.vcpu(), 0x200 * PAGE, 1, None).unwrap(), vec![2]);
}

#[test]
fn a_set_external_spte_that_never_succeeds_is_bounded_and_warned_about() {
    let guest = MirrorGuest::new(16);
    guest.recorder.fail(HookKind::Set, Errno::EBUSY, FAULT_RETRY_LIMIT as usize + 1);
    let mut buf = [0u8];
    let result = guest.host.unchecked().guest_access(guest.vcpu(), 0x2000, &mut buf, false, None);
    assert_eq!(result, Err(RunError::Errno(Errno::EINTR)));
    let warnings = guest.host.take_warnings();
    assert!(warnings.len() == 1 && warnings[0].detail.contains("made no progress"), "{warnings:?}");
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))), None);
    assert_eq!(guest.with_tdp(|tdp| tdp.mirror_frozen()), vec![], "every failure restored the SPTE");
    guest.host.check("the bounded retry");
}

/// What the hook of the FROZEN test saw: the concurrent fault's result, the hardware walk, the
/// FROZEN SPTEs and the T5 violations.
type Seen = (Result<RetPf, RunError>, Option<Spte>, Vec<FrozenSpte>, Vec<String>);

#[test]
fn a_fault_meeting_a_frozen_spte_retries_without_calling_the_hook() {
    let guest = MirrorGuest::new(16);
    let vcpu2 = guest.host.create_vcpu(guest.vm, 1).unwrap();
    let (_, second) = guest.host.unchecked().vcpu(vcpu2).unwrap();
    let kvm = guest.kvm();
    let seen: Arc<Mutex<Option<Seen>>> = Arc::default();
    let report = seen.clone();
    let checked_vm = kvm.clone();
    let machine = guest.host.machine().clone();
    // While vCPU 0's fault is inside set_external_spte with gfn 2's SPTE FROZEN, vCPU 1 faults on
    // the same gfn from another thread, and the hardware walks it.
    guest.recorder.during_next_set(move |kvm: &Kvm| {
        let tdp = kvm.tdp_mmu().unwrap();
        let frozen = tdp.mirror_frozen();
        let walk = tdp.walk_mirror(Gfn(2), false);
        let second_fault = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mm = Mm::new(machine.clone());
                    kvm_mmu_page_fault(kvm, &second, &mm, 0x2000, true, true)
                })
                .join()
                .unwrap()
        });
        // The T5 checker names the frozen SPTE (it is not quiescent here: its negative control).
        let t5 = invariants::check_mirror(&checked_vm)
            .into_iter()
            .filter(|v| v.invariant == T5_MIRROR)
            .map(|v| v.detail)
            .collect();
        *report.lock().unwrap() = Some((second_fault, walk, frozen, t5));
    });
    guest.host.guest_store(guest.vcpu(), 0x2000, &[3], None).unwrap();
    let (second_fault, walk, frozen, t5) = seen.lock().unwrap().take().expect("the hook ran");
    assert_eq!(second_fault, Ok(RetPf::Retry), "the concurrent fault met FROZEN_SPTE");
    assert_eq!(walk, None, "the hardware treats a FROZEN SPTE as not present");
    assert_eq!(frozen, vec![FrozenSpte { level: SpteLevel::Level4K, gfn: Gfn(2) }]);
    assert!(t5.len() == 1 && t5[0].contains("FROZEN"), "{t5:?}");
    let sets = guest.recorder.take().into_iter().filter(|call| matches!(call, Hook::Set { .. })).count();
    assert_eq!(sets, 1, "the retrying fault called no hook");
    assert_eq!(guest.host.vcpu_faults(vcpu2), (1, 0, 1));
    assert_eq!(guest.faults(), (1, 1, 0));
    // Once vCPU 0's install completed, vCPU 1 reads the page.
    assert_eq!(guest.host.guest_load(vcpu2, 0x2000, 1, None).unwrap(), vec![3]);
    assert_eq!(guest.host.vcpu_faults(vcpu2), (1, 0, 1), "through the leaf vCPU 0 installed");
}

#[test]
fn a_failed_remove_external_spte_is_kvm_bug_on_and_the_vm_is_dead() {
    let guest = MirrorGuest::new(16);
    guest.host.guest_store(guest.vcpu(), 0x2000, &[1], None).unwrap();
    guest.recorder.fail(HookKind::Remove, Errno::EIO, 1);
    let unchecked = guest.host.unchecked();
    // The conversion's zap hits the failure; the ioctl itself completes.
    assert_eq!(unchecked.set_memory_attributes(guest.vm, &attrs(0x2000, PAGE, 0)), Ok(()));
    let warnings = guest.host.take_warnings();
    assert!(
        warnings.len() == 1 && warnings[0].kind == WarnKind::Bug && warnings[0].detail.contains("remove_external_spte"),
        "{warnings:?}"
    );
    assert!(guest.kvm().is_dead());
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))), None, "the SPTE was cleared before the hook");
    assert_eq!(unchecked.set_memory_attributes(guest.vm, &attrs(0x3000, PAGE, 0)), Err(Errno::EIO));
    let mut buf = [0u8];
    assert_eq!(unchecked.guest_access(guest.vcpu(), 0x3000, &mut buf, false, None), Err(RunError::Errno(Errno::EIO)));
    guest.host.check("the dead VM");
}

#[test]
fn an_error_from_set_external_spte_after_a_vendor_kvm_bug_on_ends_the_fault_with_eio() {
    let guest = MirrorGuest::new(16);
    guest.recorder.fail(HookKind::Set, Errno::EIO, 1);
    let mut buf = [0u8];
    let result = guest.host.unchecked().guest_access(guest.vcpu(), 0x2000, &mut buf, true, None);
    assert_eq!(result, Err(RunError::Errno(Errno::EIO)), "KVM_REQ_VM_DEAD on the re-entry");
    let warnings = guest.host.take_warnings();
    assert!(warnings.len() == 1 && warnings[0].kind == WarnKind::Bug, "{warnings:?}");
    let calls = guest.recorder.take();
    assert_eq!(calls.iter().filter(|call| matches!(call, Hook::Set { .. })).count(), 1, "no retry on a dead VM");
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))), None, "the old SPTE was restored");
    assert_eq!(guest.with_tdp(|tdp| tdp.mirror_frozen()), vec![]);
    assert_eq!(guest.host.unchecked().create_vcpu(guest.vm, 1), Err(Errno::EIO));
    guest.host.check("the dead VM");
}

#[test]
fn an_atomic_zap_of_a_mirror_spte_is_kvm_bug_on() {
    let guest = MirrorGuest::new(16);
    guest.host.guest_store(guest.vcpu(), 0x2000, &[1], None).unwrap();
    guest.recorder.take();
    let kvm = guest.kvm();
    let result = kvm.tdp_mmu().unwrap().zap_mirror_spte_atomic_for_test(&kvm, Gfn(2));
    assert_eq!(result, Err(Errno::EBUSY));
    let warnings = guest.host.take_warnings();
    assert!(warnings.len() == 1 && warnings[0].detail.contains("atomic zap"), "{warnings:?}");
    assert!(kvm.is_dead());
    assert!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))).is_some(), "the leaf is untouched");
    assert_eq!(guest.recorder.take(), vec![], "no hook");
}

#[test]
fn deleting_the_memslot_zaps_both_roots() {
    let guest = MirrorGuest::new(16);
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0x2000, &[1], None).unwrap();
    guest.map_shared(5);
    let private = guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))).unwrap();
    guest.recorder.take();
    let flushes = guest.with_tdp(|tdp| tdp.stats().remote_tlb_flushes);
    host.set_user_memory_region2(guest.vm, &delete_region(0, KVM_MEM_GUEST_MEMFD)).unwrap();
    // kvm_mmu_zap_memslot (no KVM_X86_QUIRK_SLOT_ZAP_ALL for TDX): KVM_FILTER_PRIVATE |
    // KVM_FILTER_SHARED over the slot, one flush.
    assert_eq!(guest.recorder.take(), vec![Hook::Remove { gfn: 2, level: PgLevel::Level4K, pfn: private.pfn }]);
    assert!(guest.with_tdp(|tdp| tdp.sptes().is_empty() && tdp.mirror_sptes().is_empty()));
    let stats = guest.with_tdp(|tdp| tdp.stats());
    assert_eq!((stats.zap_all_fast, stats.remote_tlb_flushes), (0, flushes + 1));
    assert_eq!(guest.with_tdp(|tdp| tdp.mirror_tables().len()), 4, "the tables stay until the VM goes");
}

#[test]
fn zap_all_fast_leaves_the_mirror_root_alone() {
    let guest = MirrorGuest::new(16);
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0x2000, &[6], None).unwrap();
    guest.map_shared(5);
    guest.recorder.take();
    let kvm = guest.kvm();
    let tdp = kvm.tdp_mmu().unwrap();
    let gen = tdp.mmu_valid_gen();
    // As kvm_mmu_invalidate_mmio_sptes does when the memslot generation wraps.
    tdp.zap_all_fast(&kvm);
    assert_eq!(tdp.mmu_valid_gen(), gen + 1);
    assert!(tdp.sptes().is_empty(), "the direct root is zapped");
    assert!(tdp.lookup_mirror(Gfn(2)).is_some(), "KVM_DIRECT_ROOTS only");
    assert_eq!(guest.recorder.take(), vec![]);
    host.check("zap_all_fast");
    let faults = guest.faults();
    assert_eq!(host.guest_load(guest.vcpu(), 0x2000, 1, None).unwrap(), vec![6]);
    assert_eq!(guest.faults(), faults, "the private mapping survived: no fault");
}

/// A guest with private leaves at gfns 2 and 0x200: a PDPT and a PD at gfn 0, page tables at 0
/// and 0x200.
fn two_page_tables() -> (MirrorGuest, Vec<Hook>) {
    let guest = MirrorGuest::new(0x400);
    assert_eq!(guest.host.machine().mem.allocated_pages(), 0, "nothing allocated before the first fault");
    guest.host.guest_store(guest.vcpu(), 0x2000, &[1], None).unwrap();
    guest.host.guest_store(guest.vcpu(), 0x200 * PAGE, &[2], None).unwrap();
    let calls = guest.recorder.take();
    (guest, calls)
}

/// Asserts the free calls of `calls` release exactly the tables linked in `linked_calls`,
/// bottom-up: a table's free comes after every free of the tables below it (and its own links'
/// leaves were removed before any free).
fn assert_freed_bottom_up(linked_calls: &[Hook], calls: &[Hook]) {
    let links: Vec<(u64, SpteLevel, Pfn)> = linked_calls
        .iter()
        .filter_map(|call| if let Hook::Link { gfn, level, spt } = *call { Some((gfn, level, spt)) } else { None })
        .collect();
    let frees: Vec<(u64, SpteLevel, Pfn)> = calls
        .iter()
        .filter_map(|call| if let Hook::Free { gfn, level, spt } = *call { Some((gfn, level, spt)) } else { None })
        .collect();
    assert_eq!(frees.len(), links.len(), "every linked table is freed: {calls:?}");
    for &(gfn, level, spt) in &links {
        // A table linked by an entry of `level` has its own level one down.
        let own = level.lower().unwrap();
        assert!(frees.contains(&(gfn, own, spt)), "table {own} at {gfn:#x} ({spt:?}) not freed: {frees:?}");
    }
    let levels: Vec<SpteLevel> = frees.iter().map(|f| f.1).collect();
    assert!(levels.windows(2).all(|w| w[0] <= w[1]), "bottom-up: {levels:?}");
    let last_remove = calls.iter().rposition(|call| matches!(call, Hook::Remove { .. }));
    let first_free = calls.iter().position(|call| matches!(call, Hook::Free { .. }));
    assert!(last_remove.is_none_or(|last| first_free.is_some_and(|first| last < first)), "leaves first: {calls:?}");
}

#[test]
fn the_mirror_teardown_removes_the_leaves_then_frees_the_tables_bottom_up() {
    let (guest, links) = two_page_tables();
    let leaves = guest.with_tdp(|tdp| tdp.mirror_sptes());
    let kvm = guest.kvm();
    // kvm_mmu_uninit_tdp_mmu with leaves still present (the path VM destruction takes, where no
    // vCPU is left to flush: here the test flushes the live vCPU's TLB itself).
    kvm.tdp_mmu().unwrap().uninit_tdp_mmu(&kvm);
    kvm.mmu().flush_remote_tlbs(&kvm);
    let calls = guest.recorder.take();
    assert_eq!(
        calls[..2],
        [
            Hook::Remove { gfn: 2, level: PgLevel::Level4K, pfn: leaves[0].1.pfn },
            Hook::Remove { gfn: 0x200, level: PgLevel::Level4K, pfn: leaves[1].1.pfn },
        ]
    );
    assert_freed_bottom_up(&links, &calls);
    let mem = &guest.host.machine().mem;
    assert!(linked(&links).iter().all(|&spt| !mem.is_allocated(spt)), "the external pages are freed");
    assert_eq!(guest.with_tdp(|tdp| tdp.mirror_tables().len()), 1);
    assert_eq!(guest.with_tdp(|tdp| tdp.stats().external_spts_freed), 4);
    guest.host.check("the teardown");
}

#[test]
fn destroying_the_vm_removes_the_leaves_then_frees_the_tables_bottom_up() {
    let (guest, links) = two_page_tables();
    let kvm = guest.kvm();
    let host = &guest.host;
    // The guest_memfd goes first (its release zaps the private range: the leaves), then the
    // vCPU and the VM, whose destruction tears the mirror root down.
    host.close(guest.gmem()).unwrap();
    let removed = guest.recorder.take();
    assert_eq!(removed.len(), 2);
    assert!(removed.iter().all(|call| matches!(call, Hook::Remove { .. })), "{removed:?}");
    host.close(guest.vcpu()).unwrap();
    assert_eq!(guest.recorder.take(), vec![], "the MMU notifier and the vCPU leave the mirror root alone");
    host.close(guest.vm).unwrap();
    assert!(kvm.is_destroyed());
    let calls = guest.recorder.take();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert_freed_bottom_up(&links, &calls);
    let mem = &host.machine().mem;
    assert!(linked(&links).iter().all(|&spt| !mem.is_allocated(spt)));
    assert_eq!(mem.allocated_pages(), 0, "tables, the vCPU's cache and guest_memfd all went back");
}

#[test]
fn a_failed_free_external_spt_is_a_warning_and_the_page_is_leaked() {
    let (guest, links) = two_page_tables();
    let kvm = guest.kvm();
    guest.recorder.fail(HookKind::Free, Errno::EIO, 1);
    kvm.tdp_mmu().unwrap().uninit_tdp_mmu(&kvm);
    kvm.mmu().flush_remote_tlbs(&kvm);
    let calls = guest.recorder.take();
    let Some(Hook::Free { spt: leaked, .. }) = calls.iter().find(|call| matches!(call, Hook::Free { .. })) else {
        panic!("no free_external_spt: {calls:?}")
    };
    let warnings = guest.host.take_warnings();
    assert!(
        warnings.len() == 1 && warnings[0].kind == WarnKind::Warn && warnings[0].detail.contains("leaked"),
        "{warnings:?}"
    );
    assert!(!kvm.is_dead(), "a WARN, not KVM_BUG_ON");
    let mem = &guest.host.machine().mem;
    assert!(mem.is_allocated(*leaked), "the page never goes back to the host");
    let freed: Vec<Pfn> = linked(&links).into_iter().filter(|spt| spt != leaked).collect();
    assert!(freed.iter().all(|&spt| !mem.is_allocated(spt)));
    let stats = guest.with_tdp(|tdp| tdp.stats());
    assert_eq!((stats.external_spts_freed, stats.external_spts_leaked), (3, 1));
}

#[test]
fn pre_fault_maps_private_gfns_into_the_mirror_root_and_refuses_aliases() {
    let guest = MirrorGuest::new(16);
    let kvm = guest.kvm();
    kvm.set_pre_fault_allowed(true);
    guest.host.set_memory_attributes(guest.vm, &attrs(0x4000, PAGE, 0)).unwrap();
    assert_eq!(guest.host.pre_fault_memory(guest.vcpu(), SHARED_GPA | 0x4000, PAGE), Err(Errno::EINVAL));
    assert_eq!(guest.host.pre_fault_memory(guest.vcpu(), 0x3000, 2 * PAGE), Ok(0));
    assert!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(3)).is_some()));
    // gfn 4 is shared: mapped at its shared alias in the direct root.
    assert!(guest.with_tdp(|tdp| tdp.lookup(Gfn(SHARED | 4)).is_some() && tdp.lookup_mirror(Gfn(4)).is_none()));
}

#[test]
fn a_memslot_at_the_shared_alias_is_refused() {
    let guest = MirrorGuest::new(16);
    let gmem = guest.host.create_guest_memfd(guest.vm, 16 * PAGE, 0).unwrap();
    let slot = region(1, KVM_MEM_GUEST_MEMFD, SHARED_GPA, 16 * PAGE, guest.uaddr(), gmem as u32, 0);
    assert_eq!(guest.host.set_user_memory_region2(guest.vm, &slot), Err(Errno::EINVAL));
}

#[test]
fn the_t9_checker_names_a_direct_leaf_without_the_shared_bit() {
    let guest = MirrorGuest::new(16);
    guest.map_shared(5);
    let kvm = guest.kvm();
    let tdp = kvm.tdp_mmu().unwrap();
    let spte = tdp.lookup(Gfn(SHARED | 5)).unwrap();
    // A buggy install at the memslot gfn instead of the shared alias.
    tdp.install_unchecked_for_test(&kvm, Gfn(5), spte);
    let violations = guest.host.violations();
    assert!(
        violations.iter().any(|v| v.invariant == T9_ALIAS && v.detail.contains("lacks the direct bits")),
        "{violations:?}"
    );
    kvm.mmu().flush_shadow_all(&kvm);
    kvm.mmu().flush_remote_tlbs(&kvm);
    guest.host.check("the direct root zapped");
}

#[test]
fn the_t8_checker_names_a_huge_mirror_leaf_a_buggy_back_end_allowed() {
    // A back-end whose max mapping level allows 2M private mappings (TDX's says 4K), over a
    // guest_memfd pretending to hand out 2M folios: the TDP MMU maps what the fault asks, as the
    // kernel's would, and T8 (with M6) names the result.
    let guest = MirrorGuest::new(0x400);
    *guest.recorder.private_level.lock().unwrap() = Some(PgLevel::Level2M);
    let kvm = guest.kvm();
    kvm.set_gmem_max_order_for_test(Some(9));
    let mut buf = [1u8];
    let _ = guest.host.unchecked().guest_access(guest.vcpu(), 0, &mut buf, true, None);
    let calls = guest.recorder.take();
    assert!(calls.iter().any(|call| matches!(call, Hook::Set { gfn: 0, level: PgLevel::Level2M, .. })), "{calls:?}");
    assert_eq!(linked(&calls).len(), 2, "no page table under a 2M leaf: {calls:?}");
    let violations = guest.host.violations();
    assert!(violations.iter().any(|v| v.invariant == T8_4K && v.detail.contains("is 2M")), "{violations:?}");
    assert!(violations.iter().any(|v| v.invariant == M6_HUGE), "{violations:?}");
    guest.host.take_warnings();
}

#[test]
fn a_huge_mirror_leaf_over_a_table_or_under_a_fault_is_kvm_bug_on() {
    // A 2M private leaf where a page table is present: set_external_spte_present's
    // KVM_BUG_ON(was_present) (v6.18 never replaces a present mirror SPTE).
    let guest = MirrorGuest::new(0x400);
    guest.host.guest_store(guest.vcpu(), 0x10 * PAGE, &[1], None).unwrap();
    *guest.recorder.private_level.lock().unwrap() = Some(PgLevel::Level2M);
    let kvm = guest.kvm();
    kvm.set_gmem_max_order_for_test(Some(9));
    guest.recorder.take();
    let mut buf = [1u8];
    let result = guest.host.unchecked().guest_access(guest.vcpu(), 0x11 * PAGE, &mut buf, true, None);
    assert_eq!(result, Err(RunError::Errno(Errno::EIO)));
    let warnings = guest.host.take_warnings();
    assert!(
        warnings.iter().any(|w| w.kind == WarnKind::Bug && w.detail.contains("present mirror page table")),
        "{warnings:?}"
    );
    assert_eq!(guest.recorder.take(), vec![], "no hook for a replacement");

    // A 4K fault under a 2M mirror leaf would split it: not for mirror roots.
    let guest = MirrorGuest::new(0x400);
    *guest.recorder.private_level.lock().unwrap() = Some(PgLevel::Level2M);
    let kvm = guest.kvm();
    kvm.set_gmem_max_order_for_test(Some(9));
    let _ = guest.host.unchecked().guest_access(guest.vcpu(), 0, &mut buf, true, None);
    guest.host.take_warnings();
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(0x3))).map(|spte| spte.level), Some(PgLevel::Level2M));
    *guest.recorder.private_level.lock().unwrap() = None;
    kvm.set_gmem_max_order_for_test(None);
    // The hardware walk finds the 2M leaf, so the guest's own access would not fault; a fault
    // whose goal is 4K under it (one that resolved its pfn before the 2M leaf went in) is
    // driven directly.
    let result = kvm_mmu_page_fault(
        &kvm,
        &guest.host.unchecked().vcpu(guest.vcpu()).unwrap().1,
        &guest.host.process().mm,
        0x3000,
        true,
        true,
    );
    assert_eq!(result, Ok(RetPf::Retry));
    let warnings = guest.host.take_warnings();
    assert!(warnings.iter().any(|w| w.kind == WarnKind::Bug && w.detail.contains("split")), "{warnings:?}");
}

#[test]
fn the_hooks_of_a_back_end_without_a_mirror_root_warn_and_fail() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let vm = host.create_vm(SW_PROTECTED_VM).unwrap();
    let kvm = host.kvm(vm);
    let arch = kvm.arch();
    assert_eq!(arch.link_external_spt(&kvm, Gfn(0), SpteLevel::Level512G, Pfn(1)), Err(Errno::EIO));
    assert_eq!(arch.set_external_spte(&kvm, Gfn(0), PgLevel::Level4K, Pfn(1)), Err(Errno::EIO));
    assert_eq!(arch.remove_external_spte(&kvm, Gfn(0), PgLevel::Level4K, Pfn(1)), Err(Errno::EIO));
    assert_eq!(arch.free_external_spt(&kvm, Gfn(0), SpteLevel::Level4K, Pfn(1)), Err(Errno::EIO));
    let warnings = host.take_warnings();
    assert_eq!(warnings.len(), 4);
    assert!(warnings.iter().all(|w| w.detail.contains("without a mirror root")), "{warnings:?}");
}

#[test]
fn a_vm_without_a_mirror_root_calls_no_hook_and_keeps_its_behaviour() {
    let (host, recorder) = mirror_host();
    let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 16 * PAGE, 0);
    let kvm = host.kvm(vm);
    assert!(!kvm.has_mirrored_tdp());
    assert_eq!(kvm.gfn_direct_bits(), 0);
    let uaddr = host.mmap_anonymous(16 * PAGE).unwrap();
    host.set_user_memory_region2(vm, &region(0, KVM_MEM_GUEST_MEMFD, 0, 16 * PAGE, uaddr, gmem as u32, 0)).unwrap();
    host.set_memory_attributes(vm, &attrs(0, 8 * PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    let vcpu = host.create_vcpu(vm, 0).unwrap();
    host.guest_store(vcpu, 0x2000, &[1], None).unwrap();
    host.guest_store(vcpu, 0x9000, &[2], None).unwrap();
    let tdp = kvm.tdp_mmu().unwrap();
    // Private and shared leaves both in the one (direct) root, at their gfns.
    assert!(tdp.lookup(Gfn(2)).unwrap().private && !tdp.lookup(Gfn(9)).unwrap().private);
    assert_eq!(tdp.mirror_tables().len(), 1);
    assert_eq!(tdp.mirror_tables()[0].entries, 0);
    // Both filters zap the direct root.
    host.set_memory_attributes(vm, &attrs(0x2000, PAGE, 0)).unwrap();
    assert!(tdp.lookup(Gfn(2)).is_none());
    host.set_user_memory_region2(vm, &delete_region(0, KVM_MEM_GUEST_MEMFD)).unwrap();
    assert!(tdp.sptes().is_empty());
    assert_eq!(tdp.stats().zap_all_fast, 1, "KVM_X86_QUIRK_SLOT_ZAP_ALL");
    assert_eq!(vcpu_cache(&host, vcpu), 0, "no external-SPT cache");
    drop(host);
    assert!(kvm.is_destroyed());
    assert_eq!(recorder.take(), vec![]);
}

/// The external-SPT cache of a vCPU.
fn vcpu_cache(host: &CheckedHost, vcpu: i32) -> usize {
    host.unchecked().vcpu(vcpu).unwrap().1.external_spt_cache_len()
}

#[test]
fn tdx_is_a_vm_type_of_v6_18_only_on_a_host_with_a_tdx_module() {
    for profile in [KernelProfile::v6_14(), KernelProfile::v6_18_pvm()] {
        assert!(!profile.supports_vm_type(VmType::Tdx), "{}", profile.name);
    }
    assert!(KernelProfile::v6_18().supports_vm_type(VmType::Tdx));
    // The AMD host (SEV-SNP) has no TDX module.
    let host = CheckedHost::new(KernelProfile::v6_18());
    assert_eq!(host.create_vm(TDX_VM), Err(Errno::EINVAL), "the vendor module does not support TDX");
    let (host, _) = mirror_host();
    assert!(host.create_vm(TDX_VM).is_ok());
}

/// The race of F17 on the test-only local-retry install: gfn 2's leaf was zapped (the tables
/// stay, guest_memfd keeps the page), the local-retry install walks to its 4K entry and reads it
/// non-present, and before its freeze cmpxchg vCPU 1's fault installs the leaf (from another
/// thread: both hold `mmu_lock` for read). Returns the guest, the frame, and the install's
/// result.
fn local_retry_install_racing_a_fault(profile: &str) -> (MirrorGuest, Pfn, KResult<MapResult>) {
    let guest = MirrorGuest::on(16, KernelProfile::by_name(profile).unwrap());
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0x2000, &[1], None).unwrap();
    let spte = guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))).unwrap();
    host.set_memory_attributes(guest.vm, &attrs(0x2000, PAGE, 0)).unwrap();
    host.set_memory_attributes(guest.vm, &attrs(0x2000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))), None);
    guest.recorder.take();
    let vcpu2 = host.create_vcpu(guest.vm, 1).unwrap();
    let (_, second) = host.unchecked().vcpu(vcpu2).unwrap();
    let kvm = guest.kvm();
    let mm = &host.process().mm;
    let result = kvm.tdp_mmu().unwrap().map_mirror_leaf_local_retry_for_test(&kvm, Gfn(2), spte, || {
        let fault = std::thread::scope(|scope| {
            scope.spawn(|| kvm_mmu_page_fault(&kvm, &second, mm, 0x2000, true, true)).join().unwrap()
        });
        assert_eq!(fault, Ok(RetPf::Fixed), "vCPU 1 installed the leaf");
    });
    (guest, spte.pfn, result)
}

#[test]
fn f17_a_local_retry_after_a_failed_freeze_starts_from_the_spte_the_cmpxchg_saw() {
    let (guest, pfn, result) = local_retry_install_racing_a_fault("v6.18+F17");
    // The freeze cmpxchg failed on vCPU 1's leaf and refreshed iter->old_spte with it: the
    // retry finds it present.
    assert_eq!(result, Ok(MapResult::Spurious));
    assert_eq!(guest.host.take_warnings(), vec![]);
    assert_eq!(guest.recorder.take(), vec![Hook::Set { gfn: 2, level: PgLevel::Level4K, pfn }], "vCPU 1's only");
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))).map(|spte| spte.pfn), Some(pfn));
    guest.host.check("the local retry with F17");
}

#[test]
fn without_f17_a_local_retry_after_a_failed_freeze_starts_from_a_stale_old_spte() {
    // v6.18 predates F17.
    let (guest, pfn, result) = local_retry_install_racing_a_fault("v6.18");
    // iter->old_spte is still the non-present value the walk read: every retry's cmpxchg fails
    // on the present leaf, until the bound.
    assert_eq!(result, Ok(MapResult::Retry));
    let warnings = guest.host.take_warnings();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].detail.contains("failed on Some(Leaf")
            && warnings[0].detail.contains("yet iter->old_spte is still None")
            && warnings[0].detail.contains("F17 missing"),
        "{warnings:#?}"
    );
    assert!(
        warnings[1].detail.contains(&format!("made no progress in {MIRROR_LOCAL_RETRY_LIMIT} tries"))
            && warnings[1].detail.contains("iter->old_spte is None, the SPTE is Some(Leaf"),
        "{warnings:#?}"
    );
    // No retry reached the hook (each cmpxchg failed first), and vCPU 1's leaf stands.
    assert_eq!(guest.recorder.take(), vec![Hook::Set { gfn: 2, level: PgLevel::Level4K, pfn }]);
    assert_eq!(guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))).map(|spte| spte.pfn), Some(pfn));
    guest.host.check("the local retry without F17");
}

#[test]
fn without_the_race_the_local_retry_install_installs_with_or_without_f17() {
    for profile in ["v6.18", "v6.18+F17"] {
        let guest = MirrorGuest::on(16, KernelProfile::by_name(profile).unwrap());
        let host = &guest.host;
        host.guest_store(guest.vcpu(), 0x2000, &[1], None).unwrap();
        let spte = guest.with_tdp(|tdp| tdp.lookup_mirror(Gfn(2))).unwrap();
        host.set_memory_attributes(guest.vm, &attrs(0x2000, PAGE, 0)).unwrap();
        host.set_memory_attributes(guest.vm, &attrs(0x2000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
        guest.recorder.take();
        let kvm = guest.kvm();
        let tdp = kvm.tdp_mmu().unwrap();
        assert_eq!(tdp.map_mirror_leaf_local_retry_for_test(&kvm, Gfn(2), spte, || {}), Ok(MapResult::Fixed));
        assert_eq!(guest.recorder.take(), vec![Hook::Set { gfn: 2, level: PgLevel::Level4K, pfn: spte.pfn }]);
        // A hook that fails with EBUSY is retried from the restored (correct) value.
        host.set_memory_attributes(guest.vm, &attrs(0x2000, PAGE, 0)).unwrap();
        host.set_memory_attributes(guest.vm, &attrs(0x2000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
        guest.recorder.take();
        guest.recorder.fail(HookKind::Set, Errno::EBUSY, 2);
        assert_eq!(tdp.map_mirror_leaf_local_retry_for_test(&kvm, Gfn(2), spte, || {}), Ok(MapResult::Fixed));
        assert_eq!(guest.recorder.take().len(), 3, "{profile}: two EBUSY, then the install");
        // Below a table that is not linked there is nothing to retry on.
        assert_eq!(tdp.map_mirror_leaf_local_retry_for_test(&kvm, Gfn(0x400), spte, || {}), Err(Errno::ENOENT));
        assert_eq!(host.guest_load(guest.vcpu(), 0x2000, 1, None).unwrap(), vec![1], "{profile}");
        host.check(profile);
    }
}
