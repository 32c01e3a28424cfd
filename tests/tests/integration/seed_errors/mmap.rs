//! mmap (no .mmap on v6.14; kvm_gmem_mmap on v6.18) and the v6.18 user fault.

use super::*;

#[test]
fn mmap_v6_14_is_enodev_for_every_mapping() {
    let (host, _vm, gmem) = setup(KernelProfile::v6_14(), 4, 0);
    for (prot, flags) in [(RW, MAP_SHARED), (PROT_READ, MAP_SHARED), (RW, MAP_PRIVATE), (PROT_EXEC, MAP_SHARED)] {
        assert_errno(host.mmap(gmem, PAGE, 0, prot, flags), ENODEV, &format!("prot {prot:#x} flags {flags:#x}"));
    }
}

#[test]
fn mmap_v6_18_is_enodev_without_the_mmap_flag() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    for flags in [0, INIT_SHARED] {
        let gmem = host.create_guest_memfd(vm, 4 * PAGE, flags).unwrap();
        for map in [MAP_SHARED, MAP_SHARED_VALIDATE, MAP_PRIVATE] {
            assert_errno(host.mmap(gmem, PAGE, 0, RW, map), ENODEV, &format!("gmem flags {flags}, map {map:#x}"));
        }
        assert_errno(host.mmap(gmem, 4 * PAGE, 0, 0, MAP_SHARED), ENODEV, "PROT_NONE");
    }
}

#[test]
fn mmap_v6_18_is_einval_for_private_mappings_of_mmap_files() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    for flags in [MMAP, MMAP | INIT_SHARED] {
        let gmem = host.create_guest_memfd(vm, 4 * PAGE, flags).unwrap();
        assert_errno(host.mmap(gmem, PAGE, 0, RW, MAP_PRIVATE), EINVAL, "MAP_PRIVATE RW");
        assert_errno(host.mmap(gmem, PAGE, 0, PROT_READ, MAP_PRIVATE), EINVAL, "MAP_PRIVATE RO");
        for (prot, map) in [(RW, MAP_SHARED), (0, MAP_SHARED), (RW, MAP_SHARED_VALIDATE)] {
            let addr = host.mmap(gmem, 4 * PAGE, 0, prot, map).unwrap();
            host.munmap(addr, 4 * PAGE).unwrap();
        }
    }
}

#[test]
fn mmap_v6_18_is_eperm_for_prot_exec_before_the_file_is_asked() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    for flags in [0, MMAP, INIT_SHARED, MMAP | INIT_SHARED] {
        let gmem = host.create_guest_memfd(vm, 4 * PAGE, flags).unwrap();
        assert_errno(host.mmap(gmem, PAGE, 0, RW | PROT_EXEC, MAP_SHARED), EPERM, &format!("flags {flags}"));
    }
}

#[test]
fn mmap_generic_checks_come_before_guest_memfd() {
    for profile in both_versions() {
        let (host, _vm, gmem) = setup(profile, 4, 0);
        assert_errno(host.mmap(gmem, 0, 0, RW, MAP_SHARED), EINVAL, "length 0");
        assert_errno(host.mmap(gmem, PAGE, 1, RW, MAP_SHARED), EINVAL, "unaligned offset");
        assert_errno(host.mmap(gmem, PAGE, -(PAGE as i64), RW, MAP_SHARED), EOVERFLOW, "pgoff wraps");
        host.close(gmem).unwrap();
        assert_errno(host.mmap(gmem, PAGE, 0, RW, MAP_SHARED), EBADF, "closed descriptor");
    }
}

#[test]
fn user_fault_sigbus_past_eof_with_the_data_before_it_kept() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (_vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, MMAP | INIT_SHARED);
    let total = 4 * PAGE;
    let addr = host.mmap(gmem, 4 * total, 0, RW, MAP_SHARED).unwrap();
    assert_eq!(host.store(addr, &vec![0xaa; total as usize]), Ok(()));
    assert_eq!(host.store(addr + total - 1, &[0xaa, 0xaa]), Err(AccessSignal::Sigbus), "crossing EOF");
    assert_eq!(host.load(addr + total, 1), Err(AccessSignal::Sigbus));
    assert_eq!(host.load(addr + 3 * total, 1), Err(AccessSignal::Sigbus));
    assert_eq!(host.load(addr, total).unwrap(), vec![0xaa; total as usize]);
    // mmap_supported: punching a page zeroes it, the rest is kept, and it can be written again.
    host.fallocate(gmem, PUNCH, 0, PAGE as i64).unwrap();
    assert_eq!(host.load(addr, PAGE).unwrap(), vec![0; PAGE as usize]);
    assert_eq!(host.load(addr + PAGE, total - PAGE).unwrap(), vec![0xaa; (total - PAGE) as usize]);
    host.store(addr, &vec![0xaa; PAGE as usize]).unwrap();
    assert_eq!(host.load(addr, total).unwrap(), vec![0xaa; total as usize]);
}

#[test]
fn user_fault_on_a_hwpoisoned_page_is_sigbus() {
    // kernel-semantics.md §3 (hwpoison): the gmem fault handler does not check, the generic
    // __do_fault does (PageHWPoison -> VM_FAULT_HWPOISON -> SIGBUS).
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (_vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, MMAP | INIT_SHARED);
    let addr = host.mmap(gmem, 4 * PAGE, 0, RW, MAP_SHARED).unwrap();
    host.store(addr, &[0xaa; 8]).unwrap();
    assert_eq!(host.inject_memory_failure(gmem, 0), Ok(MfResult::Delayed));
    assert_eq!(host.load(addr, 8), Err(AccessSignal::Sigbus));
    assert_eq!(host.store(addr, &[0x55]), Err(AccessSignal::Sigbus));
    assert_eq!(host.load(addr + PAGE, 8), Ok(vec![0; 8]), "the other pages are fine");
}

#[test]
fn mmap_v6_18_ignores_unknown_prot_bits() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (_vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, MMAP | INIT_SHARED);
    let addr = host.mmap(gmem, PAGE, 0, RW | 0x8, MAP_SHARED).unwrap();
    host.store(addr, &[7]).unwrap();
    assert_eq!(host.load(addr, 1), Ok(vec![7]));
}

#[test]
fn user_fault_sigbus_without_init_shared() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (_vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, MMAP);
    let addr = host.mmap(gmem, 4 * PAGE, 0, RW, MAP_SHARED).unwrap();
    assert_eq!(host.store(addr, &[0xaa]), Err(AccessSignal::Sigbus));
    assert_eq!(host.load(addr, 1), Err(AccessSignal::Sigbus));
    assert_eq!(nrpages(&host, gmem), 0, "the fault allocates nothing");
    // MADV_REMOVE still punches the file behind the mapping.
    host.fallocate(gmem, KEEP, 0, PAGE as i64).unwrap();
    host.madvise(addr, PAGE, MADV_REMOVE).unwrap();
    assert_eq!(nrpages(&host, gmem), 0);
}
