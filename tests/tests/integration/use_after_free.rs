//! Use-after-free is an assertion, not a crash: a kernel developer who breaks the model on
//! purpose gets a report naming the object and the reader, never a segfault.
//!
//! * A freed memslot generation reached by a stale SRCU reader (the `synchronize_srcu` before
//!   the free dropped, `MemslotWeakening::NoSynchronizeBeforeFree`) panics in the reader, naming
//!   the generation, the reader's call site and thread, and the free (checked builds: these
//!   tests are debug builds).
//! * A guest_memfd binding left behind by a memslot freed without `kvm_gmem_unbind`
//!   (`MemslotWeakening::NoGmemUnbindOnFree`) cannot dangle (bindings hold generation-checked
//!   slab handles): with vCPUs faulting and the control thread punching holes in parallel,
//!   INV-BIND reports it, naming the guest_memfd's inode, the page range and the slot.
//!
//! Each has its control: with the kernel's protocol the same activity reports nothing.

use gmem_kvm::memslot::MemslotWeakening;
use gmem_kvm::vcpu::RunError;
use gmem_kvm::{invariants, Gfn, KernelProfile};
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use gmem_sync::{Arc, WarnKind};
use gmem_tests::*;
use std::sync::mpsc;
use std::time::Duration;

/// Pages of each of the two memslots; the guest_memfd holds both, slot 0 first.
const PAGES: u64 = 8;
/// Guest physical address of slot 1 (slot 0 is at 0).
const SLOT1_GPA: u64 = 0x10_0000;

/// A SW_PROTECTED VM on v6.18 with one guest_memfd of `2 * PAGES` pages bound to two memslots
/// (slot 0: file pages [0, 8) at gpa 0; slot 1: file pages [8, 16) at [`SLOT1_GPA`]), all of it
/// PRIVATE, and `vcpus` vCPUs.
fn two_slot_guest(vcpus: u64) -> Guest {
    Guest::builder(KernelProfile::v6_18())
        .memory(Memory::GmemOnly)
        .pages(PAGES)
        .slots(&[0, SLOT1_GPA])
        .private(true)
        .vcpus(vcpus)
        .build()
}

/// The panic message of a thread that panicked.
fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    }
}

/// A reader enters `kvm->srcu`, takes the active generation and holds it while the main thread
/// deletes slot 0 (two generation swaps), then looks slot 1's gfn up in the generation it holds.
/// Returns the reader's panic message, if it panicked, and whether the deletion finished while
/// the reader was still inside its read section.
fn stale_generation_reader(weakening: MemslotWeakening) -> (Option<String>, bool) {
    let guest = two_slot_guest(0);
    let kvm = guest.host.kvm(guest.vm);
    kvm.weaken_memslots_for_test(weakening);
    let (entered_tx, entered_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let reader = {
        let kvm = Arc::clone(&kvm);
        std::thread::Builder::new()
            .name("stale-reader".into())
            .spawn(move || {
                let srcu = kvm.srcu_read_lock();
                let slots = kvm.memslots(&srcu);
                entered_tx.send(()).unwrap();
                // Until the main thread has seen the deletion finish, or waited long enough to
                // know that it waits for this reader.
                go_rx.recv().unwrap();
                slots.find_gfn(Gfn(SLOT1_GPA / PAGE)).map(|entry| entry.id)
            })
            .unwrap()
    };
    entered_rx.recv().unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let deleter = {
        let host = guest.host.unchecked();
        let vm = guest.vm;
        std::thread::scope(|scope| {
            let deleter = scope.spawn(move || {
                host.set_user_memory_region2(vm, &delete_region(0, 0)).unwrap();
                done_tx.send(()).unwrap();
            });
            // The kernel's deletion waits in synchronize_srcu for the reader (150 ms show it); the
            // weakened one does not (it gets as long as a loaded machine may need).
            let patience = match weakening {
                MemslotWeakening::None => Duration::from_millis(150),
                _ => Duration::from_secs(30),
            };
            let finished_under_reader = done_rx.recv_timeout(patience).is_ok();
            go_tx.send(()).unwrap_or(());
            let result = reader.join();
            deleter.join().unwrap();
            (result, finished_under_reader)
        })
    };
    let (result, finished_under_reader) = deleter;
    match result {
        Ok(found) => {
            assert_eq!(found, Some(1), "the reader's generation maps slot 1's gfn to slot 1");
            (None, finished_under_reader)
        }
        Err(panic) => (Some(panic_message(panic)), finished_under_reader),
    }
}

#[cfg(debug_assertions)]
#[test]
fn a_reader_of_a_freed_memslot_generation_is_reported_naming_both() {
    let (message, finished_under_reader) = stale_generation_reader(MemslotWeakening::NoSynchronizeBeforeFree);
    assert!(finished_under_reader, "without synchronize_srcu the deletion does not wait for the reader");
    let message = message.expect("the stale reader's access is an assertion");
    assert!(message.starts_with("use-after-free: memslot generation "), "the object: {message}");
    assert!(message.contains("(as_id 0"), "the address space: {message}");
    assert!(message.contains(&format!("is read at {}", file!())), "the reader's call site: {message}");
    assert!(message.contains("(thread stale-reader)"), "the reader's thread: {message}");
    assert!(message.contains("freed at crates/kvm/src/memslot.rs:"), "the free's call site: {message}");
}

/// The control: with `synchronize_srcu` the deletion waits for the reader, whose generation
/// stays valid to the end of its read section.
#[test]
fn a_reader_inside_srcu_keeps_its_memslot_generation() {
    let (message, finished_under_reader) = stale_generation_reader(MemslotWeakening::None);
    assert_eq!(message, None, "no use-after-free with the kernel's protocol");
    assert!(!finished_under_reader, "the deletion waited in synchronize_srcu for the reader");
}

/// vCPUs fault both slots while the control thread deletes slot 0 and then punches holes over
/// the whole file; afterwards the invariants are checked. Returns the violations and warnings.
fn delete_slot_under_activity(weakening: MemslotWeakening) -> (Vec<invariants::Violation>, Vec<gmem_sync::Warning>) {
    const ROUNDS: u64 = 200;
    let guest = two_slot_guest(2);
    let kvm = guest.host.kvm(guest.vm);
    kvm.weaken_memslots_for_test(weakening);
    let host = guest.host.unchecked();
    std::thread::scope(|scope| {
        let workers: Vec<_> = guest
            .vcpus
            .iter()
            .enumerate()
            .map(|(n, &vcpu)| {
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        let base = if (round + n as u64) % 2 == 0 { 0 } else { SLOT1_GPA };
                        let gpa = base + ((round * 3 + n as u64) % PAGES) * PAGE + n as u64 * 8;
                        let mut buf = [n as u8 + 1; 8];
                        // Slot 0 goes away under the accesses: an exit (MMIO, memory fault) or
                        // EFAULT is what a guest meets then; nothing else is allowed.
                        match host.guest_access(vcpu, gpa, &mut buf, round % 2 == 0, None) {
                            Ok(()) | Err(RunError::Exit(_)) | Err(RunError::Errno(gmem_mm::Errno::EFAULT)) => {}
                            Err(other) => panic!("vCPU {n}: {other:?}"),
                        }
                    }
                })
            })
            .collect();
        host.set_user_memory_region2(guest.vm, &delete_region(0, 0)).unwrap();
        for round in 0..ROUNDS / 4 {
            let page = (round * 5) % (2 * PAGES);
            host.fallocate(guest.gmem(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (page * PAGE) as i64, PAGE as i64)
                .unwrap();
        }
        for worker in workers {
            worker.join().unwrap();
        }
    });
    let violations = invariants::check(std::slice::from_ref(&kvm), &[guest.host.gmem_file(guest.gmem())]);
    let warnings = guest.host.machine().warnings.take();
    (violations, warnings)
}

#[test]
fn a_binding_left_by_a_memslot_freed_without_unbind_is_reported_by_inv_bind() {
    let (violations, warnings) = delete_slot_under_activity(MemslotWeakening::NoGmemUnbindOnFree);
    let stale: Vec<&invariants::Violation> =
        violations.iter().filter(|v| v.invariant == invariants::INV_BIND).collect();
    assert_eq!(stale.len(), 1, "one stale binding, reported once: {violations:#?}");
    let detail = &stale[0].detail;
    assert!(detail.contains(" pages [0x0, 0x7] is bound to freed memslot #"), "the binding's range: {detail}");
    assert!(detail.starts_with("gmem ino "), "the guest_memfd's inode: {detail}");
    assert!(detail.contains("(slot id 0, as_id 0, gfns [0x0, 0x8))"), "the slot: {detail}");
    // The punches walked the stale binding: the kernel's use-after-free, reported KASAN-style
    // (and performed on the freed slot's storage), not a crash.
    assert!(
        warnings
            .iter()
            .any(|w| w.kind == WarnKind::UseAfterFree
                && w.detail.contains("in kvm_gmem_invalidate_begin: kvm_memory_slot")),
        "{warnings:#?}"
    );
}

/// The control: with `kvm_gmem_unbind` the same activity leaves every invariant intact.
#[test]
fn a_memslot_deleted_under_activity_leaves_no_binding() {
    let (violations, warnings) = delete_slot_under_activity(MemslotWeakening::None);
    assert!(violations.is_empty(), "{violations:#?}");
    assert!(warnings.is_empty(), "{warnings:#?}");
}
