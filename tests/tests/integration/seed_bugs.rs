//! The seed's lifetime bugs (upstream fixes F1 and F2, and F3/F4, which neither modelled kernel
//! has) and the lifetime and content facts measured on Linux 6.18.44.
//!
//! Goal: show that the model reproduces each bug exactly where the modelled kernel has it (v6.14,
//! or a v6.18 profile with the fix switched off) and not where the fix is applied (v6.18, or
//! v6.14 with the fix switched on), and that the measured lifetime rules hold.
//!
//! Method: the real code paths, driven deterministically from one thread. F1's window (a
//! guest_memfd whose count reached zero but whose release has not run) is made with the fd table
//! and task work: the test takes its own reference with `FdTable::fget`, removes the descriptor
//! with `FdTable::close` (which, unlike `Process::close`, does not return to user space and so
//! runs no task work), and drops its reference: the last `fput` queues the release as task work on
//! this thread. The memslot is then deleted, either through the ioctl (whose return to user space
//! runs the queued release after the deletion: the F1 order) or through `Kvm` directly, so the
//! dangling binding can be observed before the release runs. Bug reproductions go through
//! `CheckedHost::unchecked`; everything else is checked after every call.

use gmem_kvm::guest_memfd::KvmGmem;
use gmem_kvm::memslot::{UserspaceMemoryRegion2, KVM_MEM_GUEST_MEMFD};
use gmem_kvm::{KernelProfile, Kvm};
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MAP_SHARED, PROT_READ, PROT_WRITE};
use gmem_sync::task::{task_work_pending, task_work_run};
use gmem_sync::{Arc, WarnKind};
use gmem_tests::*;
use std::any::Any;

const GPA: u64 = 0x10_0000;
const PAGES: u64 = 4;

/// A host on `profile` with a private-memory VM, a 4-page guest_memfd, one page allocated, and
/// memslot 1 bound to all of it.
fn bound_slot(profile: KernelProfile) -> (CheckedHost, i32, i32) {
    let host = CheckedHost::new(profile);
    let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, PAGES * PAGE, 0);
    host.set_user_memory_region2(vm, &gmem_region(1, GPA, PAGES * PAGE, gmem, 0)).unwrap();
    host.fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, PAGE as i64).unwrap();
    (host, vm, gmem)
}

/// Opens F1's window: the guest_memfd's count reaches zero with its release queued as task work
/// on this thread, not run. Returns the file's `kvm_gmem` (kept alive by its own `Arc`) so the
/// test can look at its bindings while the file is dying.
fn make_gmem_dying(host: &CheckedHost, gmem: i32) -> Arc<dyn Any + Send + Sync> {
    let files = &host.process().files;
    let file = files.fget(gmem).expect("the guest_memfd is open");
    let private = file.private_data().expect("a guest_memfd has its kvm_gmem").clone();
    files.close(gmem).expect("FdTable::close removes the descriptor without running task work");
    assert_eq!(file.ref_count(), 1, "only the test's reference is left");
    assert_eq!(task_work_pending(), 0);
    drop(file);
    assert_eq!(task_work_pending(), 1, "the last fput queued the release as task work");
    private
}

fn gmem_bindings(private: &Arc<dyn Any + Send + Sync>) -> Vec<(u64, gmem_mm::slab::SlabHandle)> {
    private.downcast_ref::<KvmGmem>().expect("kvm_gmem").bindings()
}

fn use_after_free_in(warnings: &[gmem_sync::Warning], function: &str) -> bool {
    warnings.iter().any(|w| w.kind == WarnKind::UseAfterFree && w.detail.contains(function))
}

/// F1 through the ioctl: the deletion's return to user space runs the pending release after the
/// memslot was freed. Returns the warnings recorded.
fn f1_delete_through_ioctl(profile: KernelProfile) -> (CheckedHost, Vec<gmem_sync::Warning>) {
    let (host, vm, gmem) = bound_slot(profile);
    let _private = make_gmem_dying(&host, gmem);
    host.unchecked().set_user_memory_region2(vm, &delete_region(1, KVM_MEM_GUEST_MEMFD)).expect("delete works");
    assert_eq!(task_work_pending(), 0, "the ioctl's return to user space ran the release");
    assert!(host.memslots(vm).is_empty());
    let warnings = host.take_warnings();
    (host, warnings)
}

#[test]
fn f1_v6_14_release_after_memslot_deletion_writes_the_freed_memslot() {
    let (host, warnings) = f1_delete_through_ioctl(KernelProfile::v6_14());
    assert!(
        use_after_free_in(&warnings, "kvm_gmem_release"),
        "expected KASAN's slab-use-after-free write in kvm_gmem_release, got {warnings:#?}"
    );
    // Once the release has run, nothing dangling is left.
    host.check("the deferred release");
}

#[test]
fn f1_fixed_v6_18_and_v6_14_plus_f1_unbind_a_dying_guest_memfd() {
    for profile in [KernelProfile::v6_18(), profile("v6.14+F1")] {
        let name = profile.name.clone();
        let (host, warnings) = f1_delete_through_ioctl(profile);
        assert!(warnings.is_empty(), "{name}: {warnings:#?}");
        host.check(&format!("{name}: delete during the dying window"));
    }
}

/// The same window observed from inside: the deletion runs through `Kvm` (no return to user
/// space), so the dangling binding is visible before the release runs.
fn f1_window_observed(profile: KernelProfile) -> (Vec<(u64, gmem_mm::slab::SlabHandle)>, Arc<Kvm>, CheckedHost) {
    let (host, vm, gmem) = bound_slot(profile);
    let kvm = host.kvm(vm);
    let private = make_gmem_dying(&host, gmem);
    let delete = UserspaceMemoryRegion2 { slot: 1, flags: KVM_MEM_GUEST_MEMFD, ..Default::default() };
    kvm.set_user_memory_region2(&host.process().files, &delete).expect("delete works");
    assert_eq!(task_work_pending(), 1, "the release is still pending");
    let bindings = gmem_bindings(&private);
    task_work_run();
    (bindings, kvm, host)
}

#[test]
fn f1_v6_14_window_leaves_bindings_to_the_deleted_memslot() {
    let (bindings, kvm, host) = f1_window_observed(KernelProfile::v6_14());
    // INV-BIND: every binding must point at a live memslot; here all point at the freed one.
    assert!(!bindings.is_empty(), "v6.14's unbind skipped the dying file and left its bindings");
    for (index, handle) in &bindings {
        assert!(kvm.memslot_by_handle(*handle).is_err(), "index {index} should be bound to the freed memslot");
    }
    let warnings = host.take_warnings();
    assert!(use_after_free_in(&warnings, "kvm_gmem_release"), "{warnings:#?}");
    host.check("the deferred release");
}

#[test]
fn f1_fixed_window_leaves_no_binding() {
    for profile in [KernelProfile::v6_18(), profile("v6.14+F1")] {
        let name = profile.name.clone();
        let (bindings, _kvm, host) = f1_window_observed(profile);
        assert!(bindings.is_empty(), "{name}: unbind must clear a dying file's bindings, left {bindings:?}");
        host.check(&format!("{name}: the deferred release"));
    }
}

/// F2: re-issuing a guest_memfd memslot without KVM_MEM_GUEST_MEMFD.
fn clear_guest_memfd_flag(host: &CheckedHost, vm: i32, gmem: i32) -> gmem_mm::KResult<()> {
    host.unchecked().set_user_memory_region2(vm, &region(1, 0, GPA, PAGES * PAGE, 0, gmem as u32, 0))
}

#[test]
fn f2_v6_14_flags_only_update_frees_a_bound_memslot_without_unbinding() {
    for profile in [KernelProfile::v6_14(), profile("v6.18-F2")] {
        let name = profile.name.clone();
        let (host, vm, gmem) = bound_slot(profile);
        assert_eq!(clear_guest_memfd_flag(&host, vm, gmem), Ok(()), "{name}: accepted as FLAGS_ONLY");
        let slots = host.memslots(vm);
        assert_eq!(slots.len(), 1);
        assert_eq!(slots[0].1 & KVM_MEM_GUEST_MEMFD, 0, "{name}: the new slot is an ordinary one");
        let violations = host.violations();
        assert!(
            violations.iter().any(|v| v.invariant == gmem_kvm::invariants::INV_BIND && v.detail.contains("freed")),
            "{name}: INV-BIND must see the binding to the freed memslot: {violations:#?}"
        );
        let warnings = host.take_warnings();
        assert!(
            warnings.iter().any(|w| w.detail.contains("kvm_mmu_slot_apply_flags")),
            "{name}: x86 WARNs on a FLAGS_ONLY change without dirty logging: {warnings:#?}"
        );
        // Closing the guest_memfd runs its release, which writes the freed memslot.
        host.unchecked().close(gmem).unwrap();
        let warnings = host.take_warnings();
        assert!(use_after_free_in(&warnings, "kvm_gmem_release"), "{name}: {warnings:#?}");
        host.check(&format!("{name}: after the release"));
    }
}

#[test]
fn f2_fixed_toggling_guest_memfd_on_an_existing_memslot_is_einval() {
    for profile in [KernelProfile::v6_18(), profile("v6.14+F2")] {
        let name = profile.name.clone();
        let (host, vm, gmem) = bound_slot(profile);
        assert_errno(
            host.set_user_memory_region2(vm, &region(1, 0, GPA, PAGES * PAGE, 0, gmem as u32, 0)),
            gmem_mm::Errno::EINVAL,
            &name,
        );
        let slots = host.memslots(vm);
        assert_eq!(slots.len(), 1);
        assert_ne!(slots[0].1 & KVM_MEM_GUEST_MEMFD, 0, "{name}: the guest_memfd slot is unchanged");
        host.close(gmem).unwrap();
    }
}

#[test]
fn guest_memfd_keeps_its_vm_alive_after_the_vm_fd_is_closed() {
    for profile in both_versions() {
        let (host, vm, gmem) = bound_slot(profile);
        let kvm = host.kvm(vm);
        assert_eq!(kvm.users_count(), 2, "the VM file and the guest_memfd");
        host.close(vm).unwrap();
        assert_eq!(kvm.users_count(), 1);
        assert!(!kvm.is_destroyed());
        host.fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, (PAGES * PAGE) as i64).unwrap();
        host.fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, (PAGES * PAGE) as i64).unwrap();
        host.close(gmem).unwrap();
        assert!(kvm.is_destroyed(), "the guest_memfd held the last VM reference");
        assert_eq!(kvm.users_count(), 0);
    }
}

#[test]
fn closing_a_bound_guest_memfd_then_deleting_its_memslot_is_fine() {
    for profile in both_versions() {
        let (host, vm, gmem) = bound_slot(profile);
        host.close(gmem).unwrap();
        let kvm = host.kvm(vm);
        {
            let srcu = kvm.srcu_read_lock();
            let slot = kvm.gfn_to_memslot(&srcu, gmem_kvm::Gfn(GPA >> 12)).expect("the slot is still there");
            assert!(slot.gmem_file_is_null(), "the release cleared the memslot's file pointer");
        }
        host.set_user_memory_region2(vm, &delete_region(1, KVM_MEM_GUEST_MEMFD)).unwrap();
        assert!(host.memslots(vm).is_empty());
        // The range can be bound again, to a new guest_memfd.
        let gmem = host.create_guest_memfd(vm, PAGES * PAGE, 0).unwrap();
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, PAGES * PAGE, gmem, 0)).unwrap();
    }
}

#[test]
fn v6_18_data_survives_munmap_and_closing_the_guest_memfd_and_vm_while_mapped() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (vm, gmem) = host.vm_and_gmem(DEFAULT_VM, PAGES * PAGE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED);
    let kvm = host.kvm(vm);
    let len = PAGES * PAGE;
    let addr = host.mmap(gmem, len, 0, PROT_READ | PROT_WRITE, MAP_SHARED).unwrap();
    let pattern: Vec<u8> = (0..len).map(|i| (i / PAGE) as u8 + 0xa0).collect();
    host.store(addr, &pattern).unwrap();
    host.munmap(addr, len).unwrap();
    let addr = host.mmap(gmem, len, 0, PROT_READ | PROT_WRITE, MAP_SHARED).unwrap();
    assert_eq!(host.load(addr, len).unwrap(), pattern, "data survives munmap + mmap");
    host.close(gmem).unwrap();
    assert_eq!(host.load(addr, len).unwrap(), pattern, "data survives closing the guest_memfd while mapped");
    host.close(vm).unwrap();
    assert!(!kvm.is_destroyed(), "the mapping's file still holds the VM");
    assert_eq!(host.load(addr, len).unwrap(), pattern, "data survives closing the VM while mapped");
    host.store(addr + PAGE, &[0x11; 8]).unwrap();
    assert_eq!(host.load(addr + PAGE, 8).unwrap(), vec![0x11; 8]);
    host.munmap(addr, len).unwrap();
    assert!(kvm.is_destroyed(), "the last mapping's fput released the guest_memfd and the VM");
}

#[test]
fn f3_bind_accepts_an_offset_whose_signed_end_wraps_on_v6_14_and_v6_18() {
    // Upstream fix F3 is in neither kernel: kvm_gmem_bind adds offset and size as loff_t, and an
    // offset just below 2^63 wraps the sum negative, so "offset + size > i_size" passes.
    let offset = 0x7fff_ffff_ffff_f000;
    for profile in both_versions() {
        let name = profile.name.clone();
        let host = CheckedHost::new(profile);
        let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, PAGES * PAGE, 0);
        let request = gmem_region(1, GPA, 2 * PAGE, gmem, offset);
        assert_eq!(host.set_user_memory_region2(vm, &request), Ok(()), "{name}: bound beyond EOF");
        let file = host.gmem_file(gmem);
        let bound = file.private::<KvmGmem>().unwrap().bindings();
        assert_eq!(bound.first().map(|(index, _)| *index), Some(offset >> 12), "{name}");
        // An offset 2^62 lower does not wrap: EINVAL, as it should be.
        let request = gmem_region(2, 0x40_0000, 2 * PAGE, gmem, offset - (1 << 62));
        assert_errno(host.set_user_memory_region2(vm, &request), gmem_mm::Errno::EINVAL, &name);
    }
}

#[test]
fn f4_bind_ignores_an_xarray_allocation_failure_on_v6_14_and_v6_18() {
    // Upstream fix F4 is in neither kernel: xa_store_range's ENOMEM is ignored, the ioctl
    // succeeds, and the memslot is published without bindings (INV-BIND, memslot side).
    for profile in both_versions() {
        let name = profile.name.clone();
        let host = CheckedHost::new(profile);
        let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, PAGES * PAGE, 0);
        host.machine().inject.arm(gmem_sync::inject::FaultPoint::AllocXarray, 0, 1);
        let request = gmem_region(1, GPA, 2 * PAGE, gmem, 0);
        assert_eq!(host.unchecked().set_user_memory_region2(vm, &request), Ok(()), "{name}");
        let violations = host.violations();
        assert!(
            violations.iter().any(|v| v.invariant == gmem_kvm::invariants::INV_BIND && v.detail.contains("not wholly")),
            "{name}: {violations:#?}"
        );
        // The guest's first access finds no binding: EIO (no WARN: nothing else is bound there).
        let kvm = host.kvm(vm);
        {
            let srcu = kvm.srcu_read_lock();
            let slot = kvm.gfn_to_memslot(&srcu, gmem_kvm::Gfn(GPA >> 12)).unwrap();
            let result = gmem_kvm::guest_memfd::kvm_gmem_get_pfn(&kvm, slot, gmem_kvm::Gfn(GPA >> 12));
            assert_eq!(result.map(|got| got.page.put()).unwrap_err(), gmem_mm::Errno::EIO, "{name}");
        }
        host.set_user_memory_region2(vm, &delete_region(1, KVM_MEM_GUEST_MEMFD)).unwrap();
    }
}

#[test]
fn v6_18_pages_read_zero_until_written_even_when_fallocate_reuses_a_dirty_frame() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (_vm, gmem) = host.vm_and_gmem(DEFAULT_VM, PAGES * PAGE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED);
    let addr = host.mmap(gmem, PAGES * PAGE, 0, PROT_READ | PROT_WRITE, MAP_SHARED).unwrap();
    host.store(addr, &[0xaa; 64]).unwrap();
    host.fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0, PAGE as i64).unwrap();
    // The freed frame is not cleared (as in the kernel); fallocate may hand it out again.
    host.fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, (PAGES * PAGE) as i64).unwrap();
    assert_eq!(host.load(addr, 64).unwrap(), vec![0; 64], "the user fault zeroes a folio that is not uptodate");
    assert_eq!(host.load(addr + 3 * PAGE, 64).unwrap(), vec![0; 64]);
}
