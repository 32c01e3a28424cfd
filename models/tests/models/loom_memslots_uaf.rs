//! Loom model: a memslot generation is never freed under an SRCU reader, and when the protocol is
//! broken on purpose the stale reader is an assertion naming the generation and the reader, not
//! a use-after-free of freed memory. Runs the real gmem-kvm code.
//!
//! Kernel functions covered: `KVM_SET_USER_MEMORY_REGION2` creating a memslot →
//! `kvm_set_memslot` → `kvm_swap_active_memslots` (publish the next generation,
//! `synchronize_srcu(&kvm->srcu)`, free the old one), racing `kvm_zap_gfn_range` (SEV-SNP's RMP
//! fault handler's zap), which walks the active generation under `srcu_read_lock(&kvm->srcu)`
//! with `kvm_for_each_memslot` and does work between steps (each slot's storage is looked up
//! through the memslot slab, a scheduling point).
//!
//! Invariant: no reader touches a freed generation. In checked builds (`gmem_sync::freed`) a
//! freed generation is quarantined with a free mark, and every accessor and every step of a
//! walk checks the mark, panicking with "use-after-free: memslot generation N (as_id 0) ... is
//! read at <the walk's call site> (thread <reader>) after it was freed at <the free's call
//! site>". The mark is a plain atomic, so the check adds no scheduling point.
//!
//! Thread roles (set-up runs unexplored: a `SimHost` on a tiny machine, a DEFAULT VM with memslots
//! 0 and 1): `zapper` zaps every gfn of the VM; `creator` creates memslot 2. A creation frees the
//! old generation and no slot, so the only object a stale reader can reach is the generation.
//!
//! Results: with the kernel's protocol every execution passes (the creation's
//! `synchronize_srcu` waits for the zapper's read section). The control,
//! `MemslotWeakening::NoSynchronizeBeforeFree`, frees the generation at once: loom finds the
//! zapper stepping into the freed generation with one preemption, and the model fails with the
//! report above.
//!
//! Run: `RUSTFLAGS="--cfg gmem_loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gmem-models --release
//! --target-dir target/loom --test models loom_memslots_uaf::`.

use crate::common::check;
use gmem_kvm::memslot::MemslotWeakening;
use gmem_kvm::mmu::RecordingMmu;
use gmem_kvm::{Gfn, KernelProfile, Kvm, KvmSystem, VmType};
use gmem_mm::{Machine, MachineConfig, PAGE_SIZE};
use gmem_sync::model::{explore, stop_exploring};
use gmem_sync::{thread, Arc};
use gmem_uapi::{kvm_userspace_memory_region2, SimHost};

const HVA: u64 = 0x7f00_0000_0000;

/// Memslot `slot`: one page at gpa `(slot + 1) * 1 MiB`.
fn region(slot: u32) -> kvm_userspace_memory_region2 {
    kvm_userspace_memory_region2 {
        slot,
        guest_phys_addr: u64::from(slot + 1) << 20,
        memory_size: PAGE_SIZE,
        userspace_addr: HVA + u64::from(slot) * PAGE_SIZE,
        ..Default::default()
    }
}

struct Setup {
    host: SimHost,
    machine: Arc<Machine>,
    kvm: Arc<Kvm>,
    vm_fd: i32,
}

/// A DEFAULT VM on v6.18 with memslots 0 and 1, the memslot protocol weakened as asked.
fn setup(weakening: MemslotWeakening) -> Setup {
    let profile = KernelProfile::v6_18();
    let machine = Machine::new(MachineConfig { vfs: profile.vfs_version(), ..MachineConfig::tiny(8) });
    let system = KvmSystem::with_machine(machine.clone(), profile, RecordingMmu::factory(true));
    let host = SimHost::with_system(system);
    let vm_fd = host.create_vm(VmType::Default as u64).expect("KVM_CREATE_VM");
    let kvm = host.vm(vm_fd).expect("the VM fd");
    for slot in 0..2 {
        host.set_user_memory_region2(vm_fd, &region(slot)).expect("KVM_SET_USER_MEMORY_REGION2");
    }
    kvm.weaken_memslots_for_test(weakening);
    Setup { host, machine, kvm, vm_fd }
}

fn model(weakening: MemslotWeakening) {
    check(move || {
        let s = Arc::new(setup(weakening));
        explore();
        let zapper = {
            let s = Arc::clone(&s);
            thread::Builder::new()
                .name("zapper".into())
                .spawn(move || s.kvm.zap_gfn_range(Gfn(0), Gfn(1 << 20)))
                .expect("spawn")
        };
        let creator = {
            let s = Arc::clone(&s);
            thread::Builder::new()
                .name("creator".into())
                .spawn(move || s.host.set_user_memory_region2(s.vm_fd, &region(2)).expect("memslot create"))
                .expect("spawn")
        };
        zapper.join().unwrap();
        creator.join().unwrap();
        stop_exploring();
        let srcu = s.kvm.srcu_read_lock();
        assert_eq!(s.kvm.memslots(&srcu).iter().count(), 3, "the creation was published");
        drop(srcu);
        let warnings = s.machine.warnings.snapshot();
        assert!(warnings.is_empty(), "unexpected WARNs: {warnings:#?}");
    });
}

/// With `synchronize_srcu` no reader ever meets a freed generation.
#[test]
fn a_walk_under_srcu_never_meets_a_freed_generation() {
    model(MemslotWeakening::None);
}

/// The control: without `synchronize_srcu` loom finds the zapper's walk stepping into the
/// generation the creation freed, and the model fails with the report naming both, not with a
/// read of freed memory.
#[test]
fn without_synchronize_srcu_the_stale_walk_is_reported() {
    let panic = std::panic::catch_unwind(|| model(MemslotWeakening::NoSynchronizeBeforeFree))
        .expect_err("loom finds the stale reader");
    let message = match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic.downcast_ref::<&str>().map(|s| s.to_string()).unwrap_or_default(),
    };
    eprintln!("the model failed with: {message}");
    assert!(message.starts_with("use-after-free: memslot generation "), "the object: {message}");
    assert!(message.contains("(as_id 0"), "the address space: {message}");
    assert!(message.contains("is read at crates/kvm/src/mmu.rs:"), "the reader (kvm_zap_gfn_range's walk): {message}");
    assert!(message.contains("(thread zapper)"), "the reader's thread: {message}");
    assert!(message.contains("freed at crates/kvm/src/memslot.rs:"), "the free: {message}");
    assert!(message.contains("(thread creator)"), "the freeing thread: {message}");
}
