//! kvm_gmem_create: flags (per profile), then size (a signed loff_t), then the descriptor.

use super::*;

#[test]
fn create_v6_14_rejects_every_flag_bit_on_every_vm_type() {
    let host = CheckedHost::new(KernelProfile::v6_14());
    for vm_type in [DEFAULT_VM, SW_PROTECTED_VM] {
        let vm = host.create_vm(vm_type).unwrap();
        for bit in 0..64 {
            assert_errno(host.create_guest_memfd(vm, PAGE, 1 << bit), EINVAL, &format!("type {vm_type} bit {bit}"));
        }
        assert_eq!(host.vm_check_extension(vm, gmem_kvm::caps::KVM_CAP_GUEST_MEMFD_FLAGS), Ok(0));
    }
}

#[test]
fn create_v6_18_accepts_mmap_and_init_shared_each_alone_on_a_default_vm() {
    for profile in [KernelProfile::v6_18(), KernelProfile::v6_18_pvm()] {
        let host = CheckedHost::new(profile);
        let vm = host.create_vm(DEFAULT_VM).unwrap();
        assert_eq!(host.vm_check_extension(vm, gmem_kvm::caps::KVM_CAP_GUEST_MEMFD_FLAGS), Ok(3));
        for flags in [MMAP, INIT_SHARED, MMAP | INIT_SHARED] {
            let fd = host.create_guest_memfd(vm, PAGE, flags).unwrap_or_else(|e| panic!("flags {flags}: {e}"));
            host.close(fd).unwrap();
        }
        for bit in 2..64 {
            assert_errno(host.create_guest_memfd(vm, PAGE, 1 << bit), EINVAL, &format!("bit {bit}"));
        }
    }
}

#[test]
fn create_v6_18_sw_protected_vm_refuses_init_shared() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let vm = host.create_vm(SW_PROTECTED_VM).unwrap();
    assert_eq!(host.vm_check_extension(vm, gmem_kvm::caps::KVM_CAP_GUEST_MEMFD_FLAGS), Ok(1));
    let fd = host.create_guest_memfd(vm, PAGE, MMAP).unwrap();
    host.close(fd).unwrap();
    assert_errno(host.create_guest_memfd(vm, PAGE, INIT_SHARED), EINVAL, "INIT_SHARED");
    assert_errno(host.create_guest_memfd(vm, PAGE, MMAP | INIT_SHARED), EINVAL, "MMAP|INIT_SHARED");
}

#[test]
fn create_rejects_zero_unaligned_and_negative_sizes() {
    for profile in [KernelProfile::v6_14(), KernelProfile::v6_18(), KernelProfile::v6_18_pvm()] {
        let host = CheckedHost::new(profile.clone());
        let vm = host.create_vm(bindable_vm_type(&profile)).unwrap();
        for size in [0, 1, PAGE - 1, PAGE + 1, 2 * PAGE - 1, (-4096i64) as u64, 1 << 63, u64::MAX] {
            assert_errno(host.create_guest_memfd(vm, size, 0), EINVAL, &format!("{}: size {size:#x}", profile.name));
        }
    }
}

#[test]
fn create_accepts_huge_sizes_and_allocates_lazily() {
    for profile in both_versions() {
        let host = CheckedHost::new(profile);
        let vm = host.create_vm(SW_PROTECTED_VM).unwrap();
        let before = host.machine().mem.allocated_pages();
        for size in [PAGE, 1 << 40, 1 << 62, (1 << 63) - PAGE] {
            let fd = host.create_guest_memfd(vm, size, 0).unwrap();
            assert_eq!(host.fstat(fd).unwrap().size, size as i64);
            host.close(fd).unwrap();
        }
        assert_eq!(host.machine().mem.allocated_pages(), before, "creation allocates no memory");
    }
}

#[test]
fn create_success_returns_the_lowest_fd_with_a_regular_file_stat_and_a_vm_reference() {
    for profile in both_versions() {
        let host = CheckedHost::new(profile);
        let vm = host.create_vm(SW_PROTECTED_VM).unwrap();
        assert_eq!(vm, 3, "descriptors 0-2 are the terminal");
        let kvm = host.kvm(vm);
        let mut args = gmem_args(PAGE, 0);
        args.reserved = [u64::MAX; 6]; // not checked
        let first = host.create_guest_memfd_args(vm, &args).unwrap();
        assert_eq!(first, 4);
        assert_eq!(kvm.users_count(), 2);
        let second = host.create_guest_memfd(vm, 2 * PAGE, 0).unwrap();
        let (a, b) = (host.fstat(first).unwrap(), host.fstat(second).unwrap());
        assert_eq!((a.mode, a.nlink, a.size, a.blksize, a.blocks), (0o100600, 1, PAGE as i64, 4096, 0));
        assert_eq!(b.size, 2 * PAGE as i64);
        assert_ne!(a.ino, b.ino);
        host.close(first).unwrap();
        assert_eq!(host.create_guest_memfd(vm, PAGE, 0), Ok(first), "the freed descriptor is reused");
    }
}

#[test]
fn create_emfile_when_the_fd_table_holds_1024_descriptors_after_flags_and_size_checks() {
    for profile in both_versions() {
        let host = CheckedHost::new(profile);
        let vm = host.create_vm(SW_PROTECTED_VM).unwrap();
        let kvm = host.kvm(vm);
        // Fill descriptors 4..=1023 without checking after each (the check is O(descriptors)).
        for expected in 4..1024 {
            assert_eq!(host.unchecked().create_guest_memfd(vm, &gmem_args(PAGE, 0)), Ok(expected));
        }
        host.check("filling the descriptor table");
        let users = kvm.users_count();
        assert_errno(host.create_guest_memfd(vm, PAGE, 1 << 7), EINVAL, "bad flags come before the fd table");
        assert_errno(host.create_guest_memfd(vm, PAGE + 1, 0), EINVAL, "a bad size comes before the fd table");
        assert_errno(host.create_guest_memfd(vm, PAGE, 0), EMFILE, "table full");
        assert_eq!(kvm.users_count(), users, "a failed creation takes no VM reference");
        host.close(700).unwrap();
        assert_eq!(host.create_guest_memfd(vm, PAGE, 0), Ok(700));
    }
}
