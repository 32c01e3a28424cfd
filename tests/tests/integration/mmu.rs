//! The software TDP MMU and the fault path, through vCPUs, with every invariant (INV-NO-STALE-PFN
//! among them) checked after every call.
//!
//! Goal: show that the invalidation protocol of arch-and-mmu.md §3.3 holds in the model: every
//! way the kernel takes memory away from a guest (punch hole, conversion, memslot deletion) zaps
//! the SPTEs first, a fault that raced an invalidation retries instead of installing, and an
//! access of the wrong kind exits with `KVM_EXIT_MEMORY_FAULT`.

use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::guest_memfd::{GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP};
use gmem_kvm::invariants::INV_NO_STALE_PFN;
use gmem_kvm::memslot::{KVM_MEM_GUEST_MEMFD, KVM_MEM_READONLY};
use gmem_kvm::vcpu::{RunError, VcpuExit};
use gmem_kvm::{Gfn, KernelProfile, Kvm};
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MAP_SHARED, PROT_READ, PROT_WRITE};
use gmem_mm::Errno;
use gmem_tests::*;

const PAGES: u64 = 16;

/// A SW_PROTECTED VM on v6.18 with a vCPU and one guest_memfd memslot of 16 pages at gpa 0,
/// backed for shared accesses by anonymous memory, all of it PRIVATE.
fn private_guest() -> Guest {
    private_guest_on(KernelProfile::v6_18())
}

/// [`private_guest`] on another kernel.
fn private_guest_on(profile: KernelProfile) -> Guest {
    Guest::builder(profile).pages(PAGES).private(true).build()
}

#[test]
fn a_private_fault_installs_once_and_the_next_access_hits_the_spte() {
    let guest = private_guest();
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0x2010, &[1, 2, 3], None).unwrap();
    assert_eq!(guest.faults(), (1, 1, 0));
    assert!(guest.spte_present(2));
    assert_eq!(host.guest_load(guest.vcpu(), 0x2010, 3, None).unwrap(), vec![1, 2, 3]);
    assert_eq!(host.guest_load(guest.vcpu(), 0x2010, 3, Some(true)).unwrap(), vec![1, 2, 3]);
    assert_eq!(guest.faults(), (1, 1, 0), "re-accesses walk the SPTE without faulting");
    // The data went to guest_memfd, not to the shared backing.
    assert_eq!(host.load(guest.uaddr() + 0x2010, 3).unwrap(), vec![0, 0, 0]);
}

#[test]
fn punching_a_hole_zaps_the_spte_and_the_guest_reads_a_fresh_zeroed_page() {
    let guest = private_guest();
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0x3000, &[0xaa; 8], None).unwrap();
    assert!(guest.spte_present(3));
    let flushes = guest.kvm().tdp_mmu().unwrap().stats().remote_tlb_flushes;
    // The checked call runs INV-NO-STALE-PFN right after the folio was freed.
    host.fallocate(guest.gmem(), FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0x3000, PAGE as i64).unwrap();
    assert!(!guest.spte_present(3));
    assert_eq!(guest.kvm().tdp_mmu().unwrap().stats().remote_tlb_flushes, flushes + 1);
    assert_eq!(host.guest_load(guest.vcpu(), 0x3000, 8, None).unwrap(), vec![0; 8]);
    assert_eq!(guest.faults().1, 2);
}

#[test]
fn a_conversion_zaps_and_a_private_access_to_shared_memory_exits() {
    let guest = private_guest();
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0x1000, &[7], None).unwrap();
    host.set_memory_attributes(guest.vm, &attrs(0x1000, PAGE, 0)).unwrap();
    assert!(!guest.spte_present(1));
    assert_eq!(host.guest_load(guest.vcpu(), 0x1000, 1, Some(true)), Err(memory_fault(0x1000, true)));
    assert!(!guest.spte_present(1), "no SPTE is installed for a faulting access (M7)");
    // The default access now follows the attribute: shared, through userspace_addr.
    host.store(guest.uaddr() + 0x1000, &[9]).unwrap();
    assert_eq!(host.guest_load(guest.vcpu(), 0x1000, 1, None).unwrap(), vec![9]);
    let spte = guest.kvm().tdp_mmu().unwrap().lookup(Gfn(1)).unwrap();
    assert!(!spte.private);
    // And a shared access to private memory exits without the PRIVATE flag.
    assert_eq!(host.guest_load(guest.vcpu(), 0x4000, 1, Some(false)), Err(memory_fault(0x4000, false)));
    // Converting back zaps the shared SPTE.
    host.set_memory_attributes(guest.vm, &attrs(0x1000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    assert!(!guest.spte_present(1));
    assert_eq!(host.guest_load(guest.vcpu(), 0x1000, 1, None).unwrap(), vec![7], "the private data survived");
}

#[test]
fn deleting_the_memslot_zaps_every_spte_and_the_gpa_becomes_mmio() {
    let guest = private_guest();
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0, &[1], None).unwrap();
    host.guest_store(guest.vcpu(), 0x5000, &[1], None).unwrap();
    host.set_user_memory_region2(guest.vm, &delete_region(0, KVM_MEM_GUEST_MEMFD)).unwrap();
    assert!(guest.kvm().tdp_mmu().unwrap().sptes().is_empty());
    assert_eq!(guest.kvm().tdp_mmu().unwrap().stats().zap_all_fast, 1);
    // Still PRIVATE, no slot: a private fault that would need emulation is a memory fault.
    assert_eq!(host.guest_load(guest.vcpu(), 0, 1, None), Err(memory_fault(0, true)));
    host.set_memory_attributes(guest.vm, &attrs(0, PAGE, 0)).unwrap();
    assert_eq!(
        host.guest_store(guest.vcpu(), 0, &[1, 2], None),
        Err(RunError::Exit(VcpuExit::Mmio { phys_addr: 0, len: 2, is_write: true }))
    );
}

#[test]
fn a_private_fault_on_a_slot_without_guest_memfd_and_a_write_to_a_read_only_slot_exit() {
    // kvm_mmu_faultin_pfn_gmem: a private fault on a memslot with no guest_memfd is a memory-fault
    // exit (EFAULT). __kvm_faultin_pfn: a write to a KVM_MEM_READONLY slot is KVM_PFN_ERR_RO_FAULT,
    // emulated as MMIO; a read of it maps.
    let host = CheckedHost::new(KernelProfile::v6_18());
    let vm = host.create_vm(SW_PROTECTED_VM).unwrap();
    let uaddr = host.mmap_anonymous(2 * PAGE).unwrap();
    host.set_user_memory_region2(vm, &region(0, 0, 0, PAGE, uaddr, 0, 0)).unwrap();
    host.set_user_memory_region2(vm, &region(1, KVM_MEM_READONLY, PAGE, PAGE, uaddr + PAGE, 0, 0)).unwrap();
    host.set_memory_attributes(vm, &attrs(0, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    let vcpu = host.create_vcpu(vm, 0).unwrap();
    assert_eq!(host.guest_load(vcpu, 0x10, 1, None), Err(memory_fault(0, true)), "no guest_memfd behind the slot");
    assert_eq!(
        host.guest_store(vcpu, PAGE + 8, &[1, 2], None),
        Err(RunError::Exit(VcpuExit::Mmio { phys_addr: PAGE + 8, len: 2, is_write: true })),
        "a write to a read-only slot"
    );
    host.store(uaddr + PAGE + 8, &[7]).unwrap();
    assert_eq!(host.guest_load(vcpu, PAGE + 8, 1, None), Ok(vec![7]), "a read of it maps");
}

#[test]
fn a_fault_that_raced_an_invalidation_retries_and_then_installs() {
    let guest = private_guest();
    let kvm = guest.kvm();
    // Between the pfn lookup and mmu_lock, an invalidation covering gfn 6 comes and goes.
    kvm.tdp_mmu().unwrap().set_fault_hook(|kvm: &Kvm| {
        let _mmu_lock = kvm.mmu_lock_write();
        kvm.mmu_invalidate_begin();
        kvm.mmu_invalidate_range_add(Gfn(6), Gfn(7));
        kvm.mmu_invalidate_end();
    });
    guest.host.guest_store(guest.vcpu(), 0x6000, &[5], None).unwrap();
    assert_eq!(guest.faults(), (2, 1, 1), "one retry, then the fault installs");
    assert_eq!(guest.host.guest_load(guest.vcpu(), 0x6000, 1, None).unwrap(), vec![5]);
}

#[test]
fn a_fault_during_an_invalidation_in_progress_cannot_make_progress_and_is_reported() {
    let guest = private_guest();
    let kvm = guest.kvm();
    {
        let _mmu_lock = kvm.mmu_lock_write();
        kvm.mmu_invalidate_begin();
        kvm.mmu_invalidate_range_add(Gfn(0), Gfn(PAGES));
    }
    let result = guest.host.unchecked().guest_access(guest.vcpu(), 0x1000, &mut [0], false, None);
    assert_eq!(result, Err(RunError::Errno(Errno::EINTR)));
    assert!(!guest.spte_present(1));
    let warnings = guest.host.take_warnings();
    assert!(warnings.iter().any(|w| w.to_string().contains("made no progress")), "{warnings:?}");
    {
        let _mmu_lock = kvm.mmu_lock_write();
        kvm.mmu_invalidate_end();
    }
    guest.host.guest_load(guest.vcpu(), 0x1000, 1, None).unwrap();
}

#[test]
fn inv_no_stale_pfn_catches_a_frame_freed_under_an_spte() {
    // With the reverse-map walk of truncation switched off (a test-only switch), punching a hole
    // through the descriptor of a guest_memfd that is mmapped as a plain memslot's shared backing
    // does not notify the address space mapping it: the folio is freed under the shared SPTE,
    // exactly what the invariant exists to catch. (With the walk, the punch zaps first: see
    // `file_rmap.rs`.)
    let host = CheckedHost::new(KernelProfile::v6_18());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    let gmem = host.create_guest_memfd(vm, PAGES * PAGE, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED).unwrap();
    let uaddr = host.mmap(gmem, PAGES * PAGE, 0, PROT_READ | PROT_WRITE, MAP_SHARED).unwrap();
    host.set_user_memory_region2(vm, &region(0, 0, 0, PAGES * PAGE, uaddr, 0, 0)).unwrap();
    let vcpu = host.create_vcpu(vm, 0).unwrap();
    host.guest_store(vcpu, 0x1000, &[1], None).unwrap();
    let spte = host.kvm(vm).tdp_mmu().unwrap().lookup(Gfn(1)).expect("a shared SPTE");
    assert!(!spte.private);
    host.gmem_file(gmem).inode().mapping().skip_truncate_unmap_for_test();
    host.unchecked().fallocate(gmem, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 0x1000, PAGE as i64).unwrap();
    let violations = host.violations();
    assert!(violations.iter().any(|v| v.invariant == INV_NO_STALE_PFN), "{violations:?}");
}

#[test]
fn create_vcpu_checks_ids_and_descriptors() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (vm, gmem) = host.vm_and_gmem(DEFAULT_VM, PAGE, 0);
    let vcpu = host.create_vcpu(vm, 3).unwrap();
    assert_eq!(vcpu, gmem + 1, "lowest free descriptor");
    assert_errno(host.create_vcpu(vm, 3), Errno::EEXIST, "duplicate id");
    assert_errno(host.create_vcpu(vm, 4096 * 4), Errno::EINVAL, "id >= KVM_MAX_VCPU_IDS");
    assert_errno(host.create_vcpu(vm, u64::MAX), Errno::EINVAL, "huge id");
    // This project's machines have no MAXSMP: 1024 vCPUs, ids below 4096.
    let pvm = CheckedHost::new(KernelProfile::v6_18_pvm());
    let vm1024 = pvm.create_vm(DEFAULT_VM).unwrap();
    assert!(pvm.create_vcpu(vm1024, 4095).is_ok(), "the largest id of v6.18-pvm");
    assert_errno(pvm.create_vcpu(vm1024, 4096), Errno::EINVAL, "id >= KVM_MAX_VCPU_IDS of v6.18-pvm");
    let maxsmp = host.create_vm(DEFAULT_VM).unwrap();
    assert!(host.create_vcpu(maxsmp, 4096).is_ok(), "a MAXSMP kernel takes id 4096");
    assert_errno(host.create_vcpu(gmem, 0), Errno::ENOTTY, "not a VM");
    // A VM ioctl on a vCPU reaches kvm_vcpu_ioctl, whose arch default is EINVAL (measured).
    assert_errno(host.create_vcpu(vcpu, 0), Errno::EINVAL, "a vCPU is not a VM");
    assert_errno(host.create_vcpu(99, 0), Errno::EBADF, "not open");
    assert_errno(host.pre_fault_memory(vm, 0, PAGE), Errno::ENOTTY, "a VM is not a vCPU");
    // The vCPU (and the guest_memfd) hold the VM: closing the VM fd leaves it alive.
    host.close(vm).unwrap();
    let (kvm, _) = host.unchecked().vcpu(vcpu).unwrap();
    assert!(!kvm.is_destroyed());
    assert_eq!(kvm.online_vcpus(), 1);
}

#[test]
fn pre_fault_memory_maps_what_a_fault_would_or_says_why_not() {
    let guest = private_guest();
    let host = &guest.host;
    assert_eq!(host.pre_fault_memory(guest.vcpu(), 0, 4 * PAGE), Ok(0));
    assert!((0..4).all(|gfn| guest.spte_present(gfn)));
    let spte = guest.kvm().tdp_mmu().unwrap().lookup(Gfn(0)).unwrap();
    assert!(spte.private && !spte.accessed, "prefetched private SPTEs are not accessed");
    assert_errno(host.pre_fault_memory(guest.vcpu(), 0x800, PAGE), Errno::EINVAL, "unaligned gpa");
    assert_errno(host.pre_fault_memory(guest.vcpu(), 0, 0), Errno::EINVAL, "empty range");
    assert_errno(host.pre_fault_memory(guest.vcpu(), !0xfff, PAGE), Errno::EINVAL, "wraps");
    // Past the slot: the first page is MMIO (ENOENT) unless progress was made first.
    assert_errno(host.pre_fault_memory(guest.vcpu(), PAGES * PAGE, PAGE), Errno::ENOENT, "no memslot");
    assert_eq!(host.pre_fault_memory(guest.vcpu(), (PAGES - 1) * PAGE, 2 * PAGE), Ok(PAGE));

    let pvm = CheckedHost::new(KernelProfile::v6_18_pvm());
    let vm = pvm.create_vm(DEFAULT_VM).unwrap();
    let vcpu = pvm.create_vcpu(vm, 0).unwrap();
    // Shadow paging: the vCPU's root needs the MMU page budget the first memslot sets, and a
    // shadow MMU cannot map by GPA (this host's answers: examples/vcpu_ioctls_on_this_host_v6_18_pvm.gms).
    assert_errno(pvm.pre_fault_memory(vcpu, 0, PAGE), Errno::ENOSPC, "shadow paging, no memslot yet");
    let uaddr = pvm.mmap_anonymous(PAGE).unwrap();
    pvm.set_user_memory_region2(vm, &region(0, 0, 0, PAGE, uaddr, 0, 0)).unwrap();
    assert_errno(pvm.pre_fault_memory(vcpu, 0, PAGE), Errno::EOPNOTSUPP, "shadow paging");
    // A TDP MMU's root needs no budget: no memslot is RET_PF_EMULATE (ENOENT).
    let tdp = CheckedHost::new(KernelProfile::v6_18());
    let vm = tdp.create_vm(DEFAULT_VM).unwrap();
    let vcpu = tdp.create_vcpu(vm, 0).unwrap();
    assert_errno(tdp.pre_fault_memory(vcpu, 0, PAGE), Errno::ENOENT, "TDP, no memslot");
}

#[test]
fn a_default_vm_reaches_its_shared_memory_through_userspace_addr() {
    let host = CheckedHost::new(KernelProfile::v6_18_pvm());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    let uaddr = host.mmap_anonymous(4 * PAGE).unwrap();
    host.set_user_memory_region2(vm, &region(0, 0, 0x10000, 4 * PAGE, uaddr, 0, 0)).unwrap();
    let vcpu = host.create_vcpu(vm, 0).unwrap();
    host.guest_store(vcpu, 0x11000, &[0x42], None).unwrap();
    assert_eq!(host.load(uaddr + PAGE, 1).unwrap(), vec![0x42]);
    host.store(uaddr + PAGE, &[0x43]).unwrap();
    assert_eq!(host.guest_load(vcpu, 0x11000, 1, None).unwrap(), vec![0x43]);
    // A present SPTE translates whatever the access kind; a miss of the wrong kind exits.
    assert_eq!(host.guest_load(vcpu, 0x11000, 1, Some(true)).unwrap(), vec![0x43]);
    assert_eq!(host.guest_load(vcpu, 0x12000, 1, Some(true)), Err(memory_fault(0x12000, true)));
    // A slot whose userspace_addr maps nothing: KVM_RUN fails with EFAULT, no exit.
    host.set_user_memory_region2(vm, &region(1, 0, 0x20000, PAGE, 0x1000_0000, 0, 0)).unwrap();
    assert_eq!(host.guest_load(vcpu, 0x20000, 1, None), Err(RunError::Errno(Errno::EFAULT)));
}

/// F13: a pre-fault that meets a memslot being deleted (its INVALID copy published, the delete
/// waiting in `synchronize_srcu` for the pre-fault's read section) fails with EAGAIN on v6.18.
/// Without the fix (v6.14) the fault retries inside the read section the delete waits for; the
/// kernel spins until a signal, the model gives up after `FAULT_RETRY_LIMIT` tries with a WARN.
#[test]
fn a_pre_fault_meeting_a_memslot_being_deleted_is_eagain_with_f13_and_spins_without() {
    use gmem_kvm::memslot::KVM_MEMSLOT_INVALID;
    for (profile, fixed) in [(KernelProfile::v6_18(), true), (KernelProfile::v6_14(), false)] {
        let name = profile.name.clone();
        let guest = private_guest_on(profile);
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        // In the first page's fault, between its pfn and mmu_lock: let the delete start, and go
        // on once its INVALID copy of the slot is what a lookup finds.
        guest.kvm().tdp_mmu().unwrap().set_fault_hook(move |kvm: &Kvm| {
            go_tx.send(()).unwrap();
            gmem_sync::thread::wait_until_within(TEST_WAIT, "the INVALID copy of slot 0", || {
                let srcu = kvm.srcu_read_lock();
                kvm.gfn_to_memslot(&srcu, Gfn(1)).is_some_and(|slot| slot.flags() & KVM_MEMSLOT_INVALID != 0)
            });
        });
        let host = guest.host.unchecked();
        let (pre_fault, delete) = std::thread::scope(|scope| {
            let deleter = scope.spawn(move || {
                go_rx.recv().unwrap();
                host.set_user_memory_region2(guest.vm, &delete_region(0, KVM_MEM_GUEST_MEMFD))
            });
            let pre_fault = host.pre_fault_memory(guest.vcpu(), 0, 2 * PAGE);
            (pre_fault, deleter.join().unwrap())
        });
        // The first page was mapped before the slot went INVALID: progress, so the ioctl
        // succeeds with the second page left, whichever way that page failed.
        assert_eq!(pre_fault, Ok(PAGE), "{name}");
        assert_eq!(delete, Ok(()), "{name}: the delete finishes once the pre-fault leaves SRCU");
        let warnings = guest.host.take_warnings();
        if fixed {
            assert!(warnings.is_empty(), "{name}: EAGAIN, no spinning: {warnings:?}");
        } else {
            assert!(
                warnings.len() == 1 && warnings[0].detail.contains("kvm_tdp_map_page at gpa 0x1000 made no progress"),
                "{name}: the pre-fault spun on the INVALID slot: {warnings:?}"
            );
        }
        assert!(guest.kvm().tdp_mmu().unwrap().sptes().is_empty(), "{name}: the delete zapped the first page");
        guest.host.check(&name);
    }
}
