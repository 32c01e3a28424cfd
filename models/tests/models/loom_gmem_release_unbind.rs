//! Loom model of upstream fix F1 ("KVM: guest_memfd: Remove bindings on memslot deletion when
//! gmem is dying"), running the real gmem-kvm / gmem-mm code (no re-typed protocol).
//!
//! Kernel functions covered: `close(2)` → `fput` → (`file_ref_put` reaches zero, `____fput`
//! queued as task work) → `task_work_run` at syscall exit → `__fput` → `kvm_gmem_release`;
//! `KVM_SET_USER_MEMORY_REGION2` with `memory_size = 0` → `kvm_set_memory_region` →
//! `kvm_set_memslot` (INVALID copy published, `synchronize_srcu` twice) → `kvm_free_memslot` →
//! `kvm_gmem_unbind` (→ `get_file_active`); and, in the three-thread tests, a vCPU fault:
//! `srcu_read_lock(&kvm->srcu)` → `gfn_to_memslot` → `kvm_gmem_get_pfn` (→ `get_file_active`,
//! `__kvm_gmem_get_pfn`, prepare) → `srcu_read_unlock` → return to user space (`task_work_run`,
//! where a last `fput` by the vCPU runs the release).
//!
//! Invariant, checked after every execution once all threads have joined: INV-BIND
//! (`gmem_kvm::invariants::check` over the VM: every published guest_memfd memslot is wholly
//! bound to its file) and, because the guest_memfd itself is gone by then, directly: the machine's
//! `WarnRegistry` holds no `UseAfterFree` report (F1's symptom: `kvm_gmem_release` walking a
//! binding to a freed memslot and writing `slot->gmem.file`), no other WARN, the `kvm_gmem`'s
//! bindings are empty, `kvm_gmem_release` ran exactly once (it dropped its VM reference), and
//! every frame `kvm_gmem_get_pfn` handed out went back to the allocator.
//!
//! Thread roles (set-up runs unexplored in the main thread: a `SimHost` process on a tiny machine,
//! a SW_PROTECTED VM, a 1-page guest_memfd, memslot 0 bound to it): T1 closes the guest_memfd
//! (`Process::close`; the last `fput` and the deferred release both run in T1); T2 deletes the
//! memslot; T3 (optional) is a vCPU faulting the slot's gfn. The main thread joins and checks.
//!
//! Results: v6.18 and `v6.14+F1` pass; on v6.14 loom finds the F1 use-after-free within a dozen
//! executions, with one preemption: T1's `fput` drops the count to zero and T1 is preempted in
//! `kvm_gmem_release` before it takes `slots_lock`; T2 runs the whole deletion (its
//! `kvm_gmem_unbind` gets NULL from `get_file_active` on the dead file and returns, leaving the
//! binding; the slot is freed); T1 resumes and writes the freed slot. At least one preemption is
//! needed (bound 0 finds nothing). `LOOM_MAX_PREEMPTIONS` defaults to 2. Measured (release
//! build, 2 cores, `--test-threads 1`): bound 2: 51 executions in ~15 ms per two-thread test,
//! 3,799 executions in ~1.1 s per three-thread test, whole file ~2.3 s; bound 3: 115 executions
//! and 26,947 executions in ~8 s, whole file ~16 s; bound 4: ~139,000 executions in ~45 s per
//! three-thread test. (The counts move as the underlying code changes.)
//! The loom builder is `common::check` (shared with the TLB models): set `LOOM_LOG` (e.g.
//! `loom::rt::execution=info,gmem_kvm=debug,gmem_mm=trace`) to print loom's thread switches and
//! the kernel functions' spans; the end of the log is the failing schedule.
//!
//! Run: `RUSTFLAGS="--cfg gmem_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gmem-models --release
//! --target-dir target/loom --test models loom_gmem_release_unbind::`.

use crate::common::check;
use gmem_kvm::guest_memfd::{kvm_gmem_get_pfn, KvmGmem};
use gmem_kvm::invariants;
use gmem_kvm::memslot::{KVM_MEMSLOT_INVALID, KVM_MEM_GUEST_MEMFD};
use gmem_kvm::mmu::RecordingMmu;
use gmem_kvm::{Gfn, KernelProfile, Kvm, KvmSystem, VmType};
use gmem_mm::{Errno, Machine, MachineConfig, PAGE_SIZE};
use gmem_sync::model::{explore, stop_exploring};
use gmem_sync::{task, thread, Arc, WarnKind};
use gmem_uapi::{kvm_create_guest_memfd, kvm_userspace_memory_region2, SimHost};

/// The memslot's id, guest physical address and host virtual address.
const SLOT: u32 = 0;
const GPA: u64 = 0x10_0000;
const HVA: u64 = 0x7f00_0000_0000;
const GFN: Gfn = Gfn(GPA / PAGE_SIZE);

/// What the threads share.
struct Setup {
    host: SimHost,
    machine: Arc<Machine>,
    kvm: Arc<Kvm>,
    /// The guest_memfd's `struct kvm_gmem` (kept past the file's release, to check it).
    gmem: Arc<KvmGmem>,
    vm_fd: i32,
    gmem_fd: i32,
}

fn region(gmem_fd: i32, memory_size: u64) -> kvm_userspace_memory_region2 {
    kvm_userspace_memory_region2 {
        slot: SLOT,
        flags: KVM_MEM_GUEST_MEMFD,
        guest_phys_addr: GPA,
        memory_size,
        userspace_addr: HVA,
        guest_memfd_offset: 0,
        guest_memfd: gmem_fd as u32,
        ..Default::default()
    }
}

/// A process on a tiny machine with a VM, a 1-page guest_memfd and memslot 0 bound to it.
fn setup(profile: &KernelProfile) -> Setup {
    let machine = Machine::new(MachineConfig { vfs: profile.vfs_version(), ..MachineConfig::tiny(8) });
    let system = KvmSystem::with_machine(machine.clone(), profile.clone(), RecordingMmu::factory(true));
    let host = SimHost::with_system(system);
    let vm_fd = host.create_vm(VmType::SwProtected as u64).expect("KVM_CREATE_VM");
    let kvm = host.vm(vm_fd).expect("the VM fd");
    let gmem_fd = host
        .create_guest_memfd(vm_fd, &kvm_create_guest_memfd { size: PAGE_SIZE, flags: 0, ..Default::default() })
        .expect("KVM_CREATE_GUEST_MEMFD");
    host.set_user_memory_region2(vm_fd, &region(gmem_fd, PAGE_SIZE)).expect("KVM_SET_USER_MEMORY_REGION2 (create)");
    let gmem = {
        let file = host.guest_memfd(gmem_fd).expect("the guest_memfd");
        let private = file.private_data().expect("a guest_memfd has private_data").clone();
        private.downcast::<KvmGmem>().expect("a guest_memfd's private_data is its kvm_gmem")
    };
    assert_eq!(gmem.bindings().len(), 1, "memslot 0 is bound");
    assert!(machine.warnings.is_empty(), "{:#?}", machine.warnings.snapshot());
    Setup { host, machine, kvm, gmem, vm_fd, gmem_fd }
}

/// T3: a vCPU fault on the slot's gfn, as `kvm_mmu_faultin_pfn` → `kvm_mmu_faultin_pfn_gmem` do
/// it (an INVALID slot is retried, never handed to guest_memfd), then the return to user space.
fn vcpu_fault(kvm: &Kvm) {
    let srcu = kvm.srcu_read_lock();
    if let Some(slot) = kvm.gfn_to_memslot(&srcu, GFN) {
        if slot.flags() & KVM_MEMSLOT_INVALID == 0 {
            match kvm_gmem_get_pfn(kvm, slot, GFN) {
                Ok(found) => found.page.put(), // kvm_release_page_clean
                // The file is dying or gone: the only failure this scenario allows.
                Err(errno) => assert_eq!(errno, Errno::EFAULT, "kvm_gmem_get_pfn"),
            }
        }
    }
    drop(srcu);
    // If the vCPU's reference was the file's last, its release runs here.
    task::task_work_run();
}

/// Runs T1 (close), T2 (delete) and, with `vcpu`, T3 (fault) under `profile`, then checks.
fn model(profile: KernelProfile, vcpu: bool) {
    check(move || {
        let s = Arc::new(setup(&profile));
        explore();

        let closer = {
            let s = Arc::clone(&s);
            thread::spawn(move || s.host.close(s.gmem_fd).expect("close(gmem_fd)"))
        };
        let deleter = {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                s.host.set_user_memory_region2(s.vm_fd, &region(s.gmem_fd, 0)).expect("memslot delete")
            })
        };
        let vcpu = vcpu.then(|| {
            let s = Arc::clone(&s);
            thread::spawn(move || vcpu_fault(&s.kvm))
        });
        closer.join().unwrap();
        deleter.join().unwrap();
        if let Some(vcpu) = vcpu {
            vcpu.join().unwrap();
        }
        stop_exploring();

        let warnings = s.machine.warnings.snapshot();
        let use_after_free: Vec<String> =
            warnings.iter().filter(|w| w.kind == WarnKind::UseAfterFree).map(ToString::to_string).collect();
        assert!(
            use_after_free.is_empty(),
            "INV-BIND violated: a guest_memfd binding outlived its memslot: {use_after_free:#?}"
        );
        let violations = invariants::check(std::slice::from_ref(&s.kvm), &[]);
        assert!(violations.is_empty(), "{violations:#?}");
        assert!(warnings.is_empty(), "unexpected WARNs: {warnings:#?}");
        assert!(s.gmem.bindings().is_empty(), "bindings left: {:?}", s.gmem.bindings());
        assert_eq!(s.kvm.users_count(), 1, "kvm_gmem_release ran exactly once (only the VM fd's reference is left)");
        assert_eq!(s.machine.mem.allocated_pages(), 0, "a frame leaked (the page cache is gone with the inode)");
    });
}

/// v6.18 (F1 present): release and deletion in every order keep INV-BIND.
#[test]
fn v6_18_close_vs_delete() {
    model(KernelProfile::v6_18(), false);
}

/// v6.14 (the seed, no F1): loom finds the deletion that runs in the window between the last
/// `fput` and `kvm_gmem_release`, and the release's write to the freed memslot.
#[test]
#[should_panic(expected = "INV-BIND violated: a guest_memfd binding outlived its memslot")]
fn v6_14_close_vs_delete_finds_f1() {
    model(KernelProfile::v6_14(), false);
}

/// v6.14 with only F1 applied: the fix alone closes the window.
#[test]
fn v6_14_plus_f1_close_vs_delete() {
    model(KernelProfile::by_name("v6.14+F1").expect("profile"), false);
}

/// v6.18 with a vCPU faulting the slot: its transient file reference can be the last one (the
/// release then runs on the vCPU's return to user space), and the fault may meet the live, the
/// INVALID or no slot.
#[test]
fn v6_18_close_vs_delete_vs_get_pfn() {
    model(KernelProfile::v6_18(), true);
}

/// The same three threads on v6.14 with only F1 applied.
#[test]
fn v6_14_plus_f1_close_vs_delete_vs_get_pfn() {
    model(KernelProfile::by_name("v6.14+F1").expect("profile"), true);
}
