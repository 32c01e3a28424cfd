//! The `CheckedHost` harness itself: it must fail, naming the call, when the kernel state is wrong.
//!
//! Goal: show that each check of the harness can fail (a test suite whose checker never fires
//! proves nothing). Method: provoke each kind of problem through the public API (a leaked folio
//! reference, a WARN, task work left queued) and assert that the next checked call panics with a
//! message naming that call and the problem; lockdep is covered in `harness_lockdep.rs`, in its own
//! test binary because lockdep's state is global to a binary.

use gmem_kvm::KernelProfile;
use gmem_mm::vfs::FALLOC_FL_KEEP_SIZE;
use gmem_mm::PgOff;
use gmem_tests::*;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn panic_message(f: impl FnOnce()) -> String {
    let payload = catch_unwind(AssertUnwindSafe(f)).expect_err("the checked call must fail");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn a_leaked_folio_reference_fails_the_next_call_with_inv_refcount() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (_vm, gmem) = host.vm_and_gmem(DEFAULT_VM, 4 * PAGE, 0);
    host.fallocate(gmem, FALLOC_FL_KEEP_SIZE, 0, PAGE as i64).unwrap();
    let file = host.gmem_file(gmem);
    let folio = file.inode().mapping().get_folio(PgOff(0)).unwrap();
    let message = panic_message(|| {
        let _ = host.fstat(gmem);
    });
    assert!(message.contains(&format!("fstat({gmem})")) && message.contains("INV-REFCOUNT"), "{message}");
    folio.put();
    host.check("put");
}

#[test]
fn a_recorded_warning_fails_the_next_call_and_can_be_taken() {
    let host = CheckedHost::new(KernelProfile::v6_14());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    host.machine().warnings.warn_on(true, || "provoked".into());
    let message = panic_message(|| {
        let _ = host.create_guest_memfd(vm, PAGE, 0);
    });
    assert!(message.contains("create_guest_memfd") && message.contains("provoked"), "{message}");
    assert_eq!(host.take_warnings().len(), 1);
    host.check("take_warnings");
}

#[test]
fn task_work_left_queued_fails_the_check() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (_vm, gmem) = host.vm_and_gmem(DEFAULT_VM, PAGE, 0);
    let file = host.process().files.fget(gmem).unwrap();
    host.process().files.close(gmem).unwrap();
    drop(file);
    let message = panic_message(|| host.check("a dying guest_memfd"));
    assert!(message.contains("task work"), "{message}");
    gmem_sync::task::task_work_run();
    host.check("the release");
}

#[test]
fn unchecked_calls_are_not_checked() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let vm = host.create_vm(DEFAULT_VM).unwrap();
    host.machine().warnings.warn_on(true, || "provoked".into());
    assert!(host.unchecked().create_guest_memfd(vm, &gmem_args(PAGE, 0)).is_ok());
    assert_eq!(host.take_warnings().len(), 1);
}
