//! `CheckedHost` fails on a lockdep report involving this project's lock classes.
//!
//! Goal: show that the harness's lockdep check can fire. Method: take `kvm->slots_lock` and a
//! guest_memfd's `mapping.invalidate_lock` in the kernel's order, then in the reverse order, which
//! lockdep reports as an inversion; the next check must fail naming lockdep. This file holds a
//! single test because lockdep's graph and reports are global to the test binary: the provoked
//! report would fail every other test of the binary.

use gmem_kvm::KernelProfile;
use gmem_tests::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

#[test]
fn a_lock_inversion_on_project_classes_fails_the_check() {
    assert!(gmem_sync::lockdep::enabled(), "lockdep runs in debug builds");
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (vm, gmem) = host.vm_and_gmem(DEFAULT_VM, PAGE, 0);
    let kvm = host.kvm(vm);
    let file = host.gmem_file(gmem);
    {
        let _slots = kvm.lock_slots();
        let _invalidate = file.inode().mapping().invalidate_lock();
    }
    {
        let _invalidate = file.inode().mapping().invalidate_lock();
        let _slots = kvm.lock_slots();
    }
    assert!(!project_lockdep_reports().is_empty());
    let payload = catch_unwind(AssertUnwindSafe(|| host.check("the inversion"))).expect_err("lockdep must fail it");
    let message = payload.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("lockdep") && message.contains("kvm->slots_lock"), "{message}");
}
