//! The MMU notifier of the VM owner's address space (`kvm_mmu_notifier_invalidate_range_start`
//! / `_end`), through the system calls that unmap or zap user pages, with every invariant
//! (INV-NO-STALE-PFN among them) checked after every call by [`CheckedHost`].
//!
//! Goal: munmap, MADV_DONTNEED and MADV_REMOVE of a memslot's `userspace_addr` zap the SPTEs
//! that map it before the frames are freed, the guest faults again and sees the new backing, the
//! invalidation is balanced (`seq` moves on, nothing left in progress), and a fault that raced
//! the notifier retries.

use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::mmu::{AttrFilter, KvmGfnRange, MmuEvent};
use gmem_kvm::mmu_notifier::{kvm_mmu_notifier_invalidate_range_end, kvm_mmu_notifier_invalidate_range_start};
use gmem_kvm::vcpu::RunError;
use gmem_kvm::{Gfn, KernelProfile, Kvm};
use gmem_mm::vfs::{MADV_DONTNEED, MADV_REMOVE, MAP_SHARED, PROT_READ, PROT_WRITE};
use gmem_mm::Errno;
use gmem_tests::*;

const PAGES: u64 = 8;
/// Where the slot starts in guest physical memory.
const GPA: u64 = 0x10_0000;

/// A DEFAULT VM on v6.18 with a vCPU and one plain memslot of 8 pages at [`GPA`], backed by
/// anonymous memory.
fn anonymous_guest() -> Guest {
    Guest::builder(KernelProfile::v6_18()).vm_type(DEFAULT_VM).memory(Memory::Anonymous).pages(PAGES).gpa(GPA).build()
}

const GFN: u64 = GPA >> 12;

#[test]
fn munmap_of_the_backing_zaps_and_the_guest_faults_into_the_new_backing() {
    let guest = anonymous_guest();
    let host = &guest.host;
    host.guest_store(guest.vcpu(), GPA + 0x1000, &[0x11], None).unwrap();
    host.guest_store(guest.vcpu(), GPA + 0x3000, &[0x33], None).unwrap();
    assert_eq!(guest.faults(), (2, 2, 0));
    let seq = guest.kvm().mmu_invalidate_seq();
    let flushes = guest.kvm().tdp_mmu().unwrap().stats().remote_tlb_flushes;
    // Unmap the page behind gfn+1 only: its SPTE goes, gfn+3's stays.
    host.munmap(guest.uaddr() + PAGE, PAGE).unwrap();
    assert!(!guest.spte_present(GFN + 1));
    assert!(guest.spte_present(GFN + 3));
    assert_eq!(guest.kvm().mmu_invalidate_seq(), seq + 1);
    assert_eq!(guest.kvm().tdp_mmu().unwrap().stats().remote_tlb_flushes, flushes + 1);
    guest.assert_balanced();
    // Nothing maps the hva now: KVM_RUN fails with EFAULT, after one more fault.
    assert_eq!(host.guest_load(guest.vcpu(), GPA + 0x1000, 1, None), Err(RunError::Errno(Errno::EFAULT)));
    assert_eq!(guest.faults().0, 3);
    // The rest of the slot is untouched.
    assert_eq!(host.guest_load(guest.vcpu(), GPA + 0x3000, 1, None).unwrap(), vec![0x33]);
    assert_eq!(guest.faults().0, 3, "gfn+3 still hits its SPTE");
    // Unmap everything, map fresh memory at the same address: the guest sees the new backing.
    host.munmap(guest.uaddr(), PAGES * PAGE).unwrap();
    assert!(guest.kvm().tdp_mmu().unwrap().sptes().is_empty());
    assert_eq!(host.mmap_anonymous(PAGES * PAGE).unwrap(), guest.uaddr(), "top-down placement reuses the range");
    host.store(guest.uaddr() + 0x3000, &[0x77]).unwrap();
    assert_eq!(host.guest_load(guest.vcpu(), GPA + 0x3000, 1, None).unwrap(), vec![0x77]);
    assert_eq!(host.guest_load(guest.vcpu(), GPA + 0x1000, 1, None).unwrap(), vec![0]);
    assert_eq!(guest.faults(), (5, 4, 0));
    guest.assert_balanced();
}

#[test]
fn madv_dontneed_zaps_and_the_guest_then_reads_zeroes() {
    let guest = anonymous_guest();
    let host = &guest.host;
    host.guest_store(guest.vcpu(), GPA + 0x2000, &[1, 2, 3], None).unwrap();
    assert_eq!(host.load(guest.uaddr() + 0x2000, 3).unwrap(), vec![1, 2, 3]);
    host.madvise(guest.uaddr(), PAGES * PAGE, MADV_DONTNEED).unwrap();
    assert!(!guest.spte_present(GFN + 2));
    guest.assert_balanced();
    assert_eq!(host.guest_load(guest.vcpu(), GPA + 0x2000, 3, None).unwrap(), vec![0, 0, 0]);
    assert_eq!(guest.faults(), (2, 2, 0));
    // The guest's new page is the host's page again.
    host.guest_store(guest.vcpu(), GPA + 0x2000, &[9], None).unwrap();
    assert_eq!(host.load(guest.uaddr() + 0x2000, 1).unwrap(), vec![9]);
}

#[test]
fn madv_dontneed_of_a_file_mapping_zaps_but_the_data_stays_in_the_page_cache() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    let gmem = host
        .create_guest_memfd(
            vm,
            PAGES * PAGE,
            gmem_kvm::guest_memfd::GUEST_MEMFD_FLAG_MMAP | gmem_kvm::guest_memfd::GUEST_MEMFD_FLAG_INIT_SHARED,
        )
        .unwrap();
    let uaddr = host.mmap(gmem, PAGES * PAGE, 0, PROT_READ | PROT_WRITE, MAP_SHARED).unwrap();
    host.set_user_memory_region2(vm, &region(0, 0, GPA, PAGES * PAGE, uaddr, 0, 0)).unwrap();
    let vcpu = host.create_vcpu(vm, 0).unwrap();
    host.guest_store(vcpu, GPA, &[0x5a], None).unwrap();
    let tdp = host.kvm(vm);
    assert!(tdp.tdp_mmu().unwrap().lookup(Gfn(GFN)).is_some());
    host.madvise(uaddr, PAGE, MADV_DONTNEED).unwrap();
    assert!(tdp.tdp_mmu().unwrap().lookup(Gfn(GFN)).is_none());
    assert_eq!(host.guest_load(vcpu, GPA, 1, None).unwrap(), vec![0x5a]);
    // MADV_REMOVE punches the file: zapped first, then the guest reads a fresh page.
    host.madvise(uaddr, PAGE, MADV_REMOVE).unwrap();
    assert!(tdp.tdp_mmu().unwrap().lookup(Gfn(GFN)).is_none());
    assert_eq!(tdp.mmu_invalidate_in_progress(), 0);
    assert_eq!(host.guest_load(vcpu, GPA, 1, None).unwrap(), vec![0]);
}

#[test]
fn the_notifier_unmaps_with_the_shared_filter_and_private_data_survives() {
    // kvm_handle_hva_range passes KVM_FILTER_SHARED: HVA notifications do not concern private
    // mappings. On x86 only TDX's mirror roots tell the kinds apart; a SW_PROTECTED VM's TDP MMU
    // ignores the filter, so its private SPTEs in the range are zapped as well and re-fault from
    // guest_memfd, with the private data intact.
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, PAGES * PAGE, 0);
    let uaddr = host.mmap_anonymous(PAGES * PAGE).unwrap();
    host.set_user_memory_region2(vm, &region(0, KVM_MEM_GUEST_MEMFD, GPA, PAGES * PAGE, uaddr, gmem as u32, 0))
        .unwrap();
    host.set_memory_attributes(vm, &attrs(GPA, 4 * PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    let vcpu = host.create_vcpu(vm, 0).unwrap();
    host.guest_store(vcpu, GPA + 0x1000, &[0xaa], None).unwrap();
    host.guest_store(vcpu, GPA + 0x5000, &[0xbb], None).unwrap();
    let tdp = host.kvm(vm);
    let tdp = tdp.tdp_mmu().unwrap();
    let private = tdp.lookup(Gfn(GFN + 1)).unwrap();
    assert!(private.private);
    assert!(!tdp.lookup(Gfn(GFN + 5)).unwrap().private);
    host.munmap(uaddr, PAGES * PAGE).unwrap();
    assert!(tdp.sptes().is_empty(), "no mirror roots: the filter is ignored");
    assert_eq!(host.guest_load(vcpu, GPA + 0x1000, 1, None).unwrap(), vec![0xaa]);
    assert_eq!(tdp.lookup(Gfn(GFN + 1)).unwrap().pfn, private.pfn, "the same guest_memfd folio");
    assert_eq!(host.guest_load(vcpu, GPA + 0x5000, 1, None), Err(RunError::Errno(Errno::EFAULT)));

    // What the notifier asks of the MMU, exactly.
    let host = CheckedHost::with_recording_mmu(KernelProfile::v6_18());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    let uaddr = host.mmap_anonymous(PAGES * PAGE).unwrap();
    host.set_user_memory_region2(vm, &region(3, 0, GPA, PAGES * PAGE, uaddr, 0, 0)).unwrap();
    host.take_mmu_events();
    host.munmap(uaddr + 0x2000, 0x1800).unwrap();
    let unmap = KvmGfnRange {
        start: Gfn(GFN + 2),
        end: Gfn(GFN + 4),
        slot_id: 3,
        attr_filter: AttrFilter::Shared,
        may_block: true,
    };
    assert_eq!(host.take_mmu_events(), vec![MmuEvent::Unmap(unmap), MmuEvent::FlushRemoteTlbs]);
    assert_eq!(host.kvm(vm).mmu_invalidate_in_progress(), 0);
}

#[test]
fn a_notifier_on_a_range_without_memslot_does_nothing() {
    let host = CheckedHost::with_recording_mmu(KernelProfile::v6_18());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    let backing = host.mmap_anonymous(PAGES * PAGE).unwrap();
    host.set_user_memory_region2(vm, &region(0, 0, GPA, PAGES * PAGE, backing, 0, 0)).unwrap();
    let other = host.mmap_anonymous(4 * PAGE).unwrap();
    host.take_mmu_events();
    let seq = host.kvm(vm).mmu_invalidate_seq();
    host.store(other, &[1]).unwrap();
    host.madvise(other, 4 * PAGE, MADV_DONTNEED).unwrap();
    host.munmap(other, 4 * PAGE).unwrap();
    // Unmapping nothing at all does not even notify.
    host.munmap(other, 4 * PAGE).unwrap();
    assert_eq!(host.take_mmu_events(), vec![]);
    assert_eq!(host.kvm(vm).mmu_invalidate_seq(), seq);
    assert_eq!(host.kvm(vm).mmu_invalidate_in_progress(), 0);
    assert_eq!(host.kvm(vm).mn_active_invalidate_count(), 0);
}

#[test]
fn a_shared_fault_racing_the_notifier_retries_and_then_installs_the_new_page() {
    let guest = anonymous_guest();
    let kvm = guest.kvm();
    let hva = guest.uaddr() + 0x6000;
    // Between the pfn lookup and mmu_lock, the notifier of an unmap covering the hva runs.
    kvm.tdp_mmu().unwrap().set_fault_hook(move |kvm: &Kvm| {
        kvm_mmu_notifier_invalidate_range_start(kvm, hva, hva + PAGE);
        assert_eq!(kvm.mmu_invalidate_in_progress(), 1);
        kvm_mmu_notifier_invalidate_range_end(kvm, hva, hva + PAGE);
    });
    guest.host.guest_store(guest.vcpu(), GPA + 0x6000, &[5], None).unwrap();
    assert_eq!(guest.faults(), (2, 1, 1), "one retry, then the fault installs");
    assert_eq!(guest.host.guest_load(guest.vcpu(), GPA + 0x6000, 1, None).unwrap(), vec![5]);
    guest.assert_balanced();
}

#[test]
fn the_vm_unsubscribes_at_destruction_and_process_exit_releases_it() {
    let guest = anonymous_guest();
    let kvm = guest.kvm();
    let subscriptions = guest.host.process().mm.notifier_subscriptions().clone();
    assert!(kvm.has_mmu_notifier());
    assert_eq!(subscriptions.len(), 1);
    guest.host.close(guest.vcpu()).unwrap();
    guest.host.close(guest.vm).unwrap();
    assert!(kvm.is_destroyed());
    assert!(subscriptions.is_empty(), "kvm_destroy_vm unregisters");
    // Memory the VM used to map can still be unmapped: nobody is told.
    guest.host.munmap(guest.uaddr(), PAGES * PAGE).unwrap();

    // Process exit releases the subscription first (kvm_mmu_notifier_release zaps everything).
    let guest = anonymous_guest();
    guest.host.guest_store(guest.vcpu(), GPA, &[1], None).unwrap();
    let kvm = guest.kvm();
    let gen = kvm.tdp_mmu().unwrap().mmu_valid_gen();
    drop(guest);
    assert!(kvm.is_destroyed());
    assert!(kvm.tdp_mmu().unwrap().sptes().is_empty());
    assert_eq!(kvm.tdp_mmu().unwrap().mmu_valid_gen(), gen + 1, "one flush_shadow_all, by the release");
}
