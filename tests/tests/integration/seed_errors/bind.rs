//! kvm_gmem_bind (through KVM_SET_USER_MEMORY_REGION2): EBADF, then EINVAL for the file, the VM,
//! the offset, and an already-bound range. A failed bind leaves no memslot and no binding.

use super::*;

fn assert_no_slot_no_binding(host: &CheckedHost, vm: i32, gmem: i32, what: &str) {
    assert!(host.memslots(vm).is_empty(), "{what}: a failed bind created a memslot");
    assert!(bindings(host, gmem).is_empty(), "{what}: a failed bind left a binding");
}

#[test]
fn bind_ebadf_for_a_closed_never_opened_or_minus_one_descriptor() {
    for (profile, vm_type) in bind_setups() {
        let what = label(&profile, vm_type);
        let host = CheckedHost::new(profile);
        let (vm, gmem) = host.vm_and_gmem(vm_type, 4 * PAGE, 0);
        let closed = host.create_guest_memfd(vm, 4 * PAGE, 0).unwrap();
        host.close(closed).unwrap();
        for fd in [closed, -1, 1000, i32::MAX] {
            assert_errno(host.set_user_memory_region2(vm, &gmem_region(1, GPA, PAGE, fd, 0)), EBADF, &what);
        }
        assert_no_slot_no_binding(&host, vm, gmem, &what);
    }
}

#[test]
fn bind_einval_for_a_descriptor_that_is_not_a_guest_memfd() {
    for (profile, vm_type) in bind_setups() {
        let what = label(&profile, vm_type);
        let host = CheckedHost::new(profile);
        let (vm, gmem) = host.vm_and_gmem(vm_type, 4 * PAGE, 0);
        let other_vm = host.create_vm(vm_type).unwrap();
        for fd in [0, vm, other_vm] {
            assert_errno(host.set_user_memory_region2(vm, &gmem_region(1, GPA, PAGE, fd, 0)), EINVAL, &what);
        }
        assert_no_slot_no_binding(&host, vm, gmem, &what);
    }
}

#[test]
fn bind_einval_for_another_vms_guest_memfd_which_then_binds_to_its_own() {
    for (profile, vm_type) in bind_setups() {
        let what = label(&profile, vm_type);
        let host = CheckedHost::new(profile);
        let (vm, _) = host.vm_and_gmem(vm_type, 4 * PAGE, 0);
        let (other_vm, other_gmem) = host.vm_and_gmem(vm_type, 4 * PAGE, 0);
        assert_errno(host.set_user_memory_region2(vm, &gmem_region(1, GPA, PAGE, other_gmem, 0)), EINVAL, &what);
        assert!(host.memslots(vm).is_empty());
        host.set_user_memory_region2(other_vm, &gmem_region(1, GPA, PAGE, other_gmem, 0)).unwrap();
    }
}

#[test]
fn bind_einval_for_unaligned_negative_or_out_of_file_offsets() {
    for (profile, vm_type) in bind_setups() {
        let what = label(&profile, vm_type);
        let host = CheckedHost::new(profile);
        let (vm, gmem) = host.vm_and_gmem(vm_type, 4 * PAGE, 0);
        let cases = [
            (PAGE, 1),                     // unaligned (memslot check)
            (PAGE, PAGE / 2),              // unaligned
            (PAGE, PAGE - 1),              // unaligned
            (2 * PAGE, (-4096i64) as u64), // offset + size wraps (memslot check)
            (PAGE, 1 << 63),               // negative as loff_t (bind)
            (PAGE, 4 * PAGE),              // offset == size: nothing left
            (2 * PAGE, 3 * PAGE),          // ends past EOF
            (8 * PAGE, 0),                 // larger than the file
        ];
        for (size, offset) in cases {
            assert_errno(
                host.set_user_memory_region2(vm, &gmem_region(1, GPA, size, gmem, offset)),
                EINVAL,
                &format!("{what}: size {size:#x} offset {offset:#x}"),
            );
        }
        assert_no_slot_no_binding(&host, vm, gmem, &what);
        // The boundary case fits exactly.
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 2 * PAGE, gmem, 2 * PAGE)).unwrap();
    }
}

#[test]
fn bind_einval_when_any_index_of_the_range_is_already_bound() {
    for (profile, vm_type) in bind_setups() {
        let what = label(&profile, vm_type);
        let host = CheckedHost::new(profile);
        let (vm, gmem) = host.vm_and_gmem(vm_type, 4 * PAGE, 0);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 2 * PAGE, gmem, 0)).unwrap();
        let other_gpa = 0x20_0000;
        for (size, offset) in [(2 * PAGE, PAGE), (PAGE, 0), (PAGE, PAGE), (4 * PAGE, 0)] {
            assert_errno(
                host.set_user_memory_region2(vm, &gmem_region(2, other_gpa, size, gmem, offset)),
                EINVAL,
                &format!("{what}: offset {offset:#x} size {size:#x} overlaps slot 1's gmem range"),
            );
        }
        host.set_user_memory_region2(vm, &gmem_region(2, other_gpa, 2 * PAGE, gmem, 2 * PAGE)).unwrap();
        host.set_user_memory_region2(vm, &delete_region(1, GUEST_MEMFD)).unwrap();
        host.set_user_memory_region2(vm, &gmem_region(3, 0x30_0000, 2 * PAGE, gmem, 0)).unwrap();
    }
}

#[test]
fn bind_v6_14_default_vm_refuses_guest_memfd_slots_in_the_flags_check() {
    let host = CheckedHost::new(KernelProfile::v6_14());
    let (vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, 0);
    assert_eq!(host.vm_check_extension(vm, gmem_kvm::caps::KVM_CAP_GUEST_MEMFD), Ok(0));
    assert_errno(host.set_user_memory_region2(vm, &gmem_region(1, GPA, PAGE, gmem, 0)), EINVAL, "valid gmem");
    // The flags check comes before the descriptor lookup: a closed fd is EINVAL, not EBADF.
    assert_errno(host.set_user_memory_region2(vm, &gmem_region(1, GPA, PAGE, 999, 0)), EINVAL, "bad fd");
    // v6.18 binds on the same VM type.
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, 0);
    assert_eq!(host.vm_check_extension(vm, gmem_kvm::caps::KVM_CAP_GUEST_MEMFD), Ok(1));
    host.set_user_memory_region2(vm, &gmem_region(1, GPA, PAGE, gmem, 0)).unwrap();
}

#[test]
fn bind_success_binds_every_index_and_marks_mmap_slots_gmem_only_on_v6_18() {
    let cases = [
        (KernelProfile::v6_14(), SW_PROTECTED_VM, 0, false),
        (KernelProfile::v6_18(), SW_PROTECTED_VM, 0, false),
        (KernelProfile::v6_18(), SW_PROTECTED_VM, MMAP, true),
        (KernelProfile::v6_18(), DEFAULT_VM, INIT_SHARED, false),
        (KernelProfile::v6_18(), DEFAULT_VM, MMAP | INIT_SHARED, true),
    ];
    for (profile, vm_type, flags, gmem_only) in cases {
        let what = format!("{} flags {flags}", label(&profile, vm_type));
        let host = CheckedHost::new(profile);
        let (vm, gmem) = host.vm_and_gmem(vm_type, 8 * PAGE, flags);
        host.set_user_memory_region2(vm, &gmem_region(1, GPA, 3 * PAGE, gmem, 2 * PAGE)).unwrap();
        let slots = host.memslots(vm);
        assert_eq!(slots.len(), 1);
        let (entry, slot_flags) = slots[0];
        assert_eq!((entry.base_gfn, entry.npages), (GFN, 3));
        assert_eq!(slot_flags & KVM_MEMSLOT_GMEM_ONLY != 0, gmem_only, "{what}");
        let file = host.gmem_file(gmem);
        let kvm_gmem = file.private::<KvmGmem>().unwrap();
        for index in 0..8 {
            let expected = (2..5).contains(&index).then_some(entry.handle);
            assert_eq!(kvm_gmem.binding_at(index), expected, "{what}: index {index}");
        }
    }
}
