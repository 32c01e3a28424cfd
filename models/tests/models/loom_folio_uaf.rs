//! Loom model: a folio `kvm_gmem_get_pfn` hands out stays allocated while its caller uses it,
//! however a hole punch races with it; and when the reference protocol is broken on purpose the
//! caller's access to the freed folio is an assertion naming the folio and the caller (KASAN's
//! report), not a silent read of a frame that is back in the allocator. Runs the real code.
//!
//! Kernel functions covered: a vCPU's `kvm_gmem_get_pfn` under `kvm->srcu`
//! (`kvm_gmem_get_file`, `__kvm_gmem_get_pfn`, `kvm_gmem_get_folio`, prepare, `folio_unlock`),
//! then the caller reading the page it was handed and releasing it (`kvm_release_page_clean`);
//! racing `fallocate(PUNCH_HOLE)` → `kvm_gmem_punch_hole` → `truncate_inode_pages_range`, which
//! takes the page cache's reference away.
//!
//! Invariant: the caller never touches a freed folio. In checked builds a freed frame is
//! poisoned (`gmem_sync::freed::Poison`, a plain atomic, so no scheduling point) and the folio
//! operations a reference holder performs check it: "use-after-free: folio at pfn P index I of
//! inode N is read at <caller> (thread vcpu) after it was freed at <the folio_put that freed it>".
//!
//! Thread roles (set-up unexplored: a SW_PROTECTED VM on v6.18, a 1-page guest_memfd bound to
//! memslot 0): `vcpu` gets the pfn and reads the page; `puncher` punches the page out.
//!
//! Results: with the kernel's protocol every execution passes (the caller's reference keeps the
//! folio; its own `folio_put` frees it when the punch ran first). The control,
//! `GmemWeakening::NoReferenceForCaller` (get_pfn drops the caller's reference with the lock),
//! fails with the report above: loom finds the punch freeing the folio between get_pfn's return
//! and the read.
//!
//! Run: `RUSTFLAGS="--cfg gmem_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gmem-models --release
//! --target-dir target/loom --test models loom_folio_uaf::`.

use crate::common::{check, one_page_vm, OnePageVm, GPA};
use gmem_kvm::guest_memfd::{kvm_gmem_get_pfn, GmemWeakening};
use gmem_kvm::mmu::RecordingMmu;
use gmem_kvm::{Gfn, Kvm};
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use gmem_mm::{Machine, PAGE_SIZE};
use gmem_sync::model::{explore, stop_exploring};
use gmem_sync::{task, thread, Arc};
use gmem_uapi::SimHost;

const GFN: Gfn = Gfn(GPA / PAGE_SIZE);

struct Setup {
    host: SimHost,
    machine: Arc<Machine>,
    kvm: Arc<Kvm>,
    gmem_fd: i32,
}

fn setup(weakening: GmemWeakening) -> Setup {
    let OnePageVm { host, machine, kvm, gmem_fd, .. } = one_page_vm(RecordingMmu::factory(true));
    kvm.weaken_gmem_for_test(weakening);
    Setup { host, machine, kvm, gmem_fd }
}

/// The vCPU: get the pfn under SRCU, read the page it was handed, release it (unless the
/// weakened get_pfn kept no reference for it).
fn vcpu(kvm: &Kvm, weakening: GmemWeakening) {
    let srcu = kvm.srcu_read_lock();
    let slot = kvm.gfn_to_memslot(&srcu, GFN).expect("memslot 0");
    let found = kvm_gmem_get_pfn(kvm, slot, GFN).expect("kvm_gmem_get_pfn");
    drop(srcu);
    let mut byte = [0xffu8];
    found.page.read(0, &mut byte);
    assert_eq!(byte, [0], "a fresh guest_memfd page reads as zero");
    if weakening == GmemWeakening::None {
        found.page.put(); // kvm_release_page_clean
    }
    task::task_work_run();
}

fn model(weakening: GmemWeakening) {
    check(move || {
        let s = Arc::new(setup(weakening));
        explore();
        let reader = {
            let s = Arc::clone(&s);
            thread::Builder::new().name("vcpu".into()).spawn(move || vcpu(&s.kvm, weakening)).expect("spawn")
        };
        let puncher = {
            let s = Arc::clone(&s);
            thread::Builder::new()
                .name("puncher".into())
                .spawn(move || {
                    s.host
                        .fallocate(s.gmem_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PAGE_SIZE as i64)
                        .expect("punch hole")
                })
                .expect("spawn")
        };
        reader.join().unwrap();
        puncher.join().unwrap();
        stop_exploring();
        let warnings = s.machine.warnings.snapshot();
        assert!(warnings.is_empty(), "unexpected WARNs: {warnings:#?}");
    });
}

/// With the caller's reference, the folio outlives every punch until the caller releases it.
#[test]
fn the_caller_of_get_pfn_never_meets_a_freed_folio() {
    model(GmemWeakening::None);
}

/// The control: without the caller's reference, loom finds the punch freeing the folio before
/// the caller reads it, and the model fails with the report naming both.
#[test]
fn without_the_callers_reference_the_read_of_the_freed_folio_is_reported() {
    let panic =
        std::panic::catch_unwind(|| model(GmemWeakening::NoReferenceForCaller)).expect_err("loom finds the stale read");
    let message = match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    };
    eprintln!("the model failed with: {message}");
    assert!(message.starts_with("use-after-free: folio at pfn 0x"), "the object: {message}");
    assert!(message.contains(" index 0 of inode "), "the folio's file and index: {message}");
    assert!(message.contains(&format!("is read at {}", file!())), "the reader's call site: {message}");
    assert!(message.contains("(thread vcpu)"), "the reader's thread: {message}");
    assert!(message.contains(" after it was freed at crates/"), "the free: {message}");
}
