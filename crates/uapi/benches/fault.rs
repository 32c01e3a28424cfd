//! The guest fault path through the VMM model, in pages per second: the first touch of a fresh
//! private page (fault → `kvm_gmem_get_pfn` allocates, zeroes and prepares a folio → SPTE), and
//! the re-fault after a zap (punch the page out of the guest_memfd, then touch it again), and
//! the first touch of shared memory in a DEFAULT VM whose RAM has THPs (2M leaves where the
//! memslot allows them). See `docs/PERFORMANCE.md`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gmem_kvm::KernelProfile;
use gmem_mm::PAGE_SIZE;
use gmem_uapi::vmm::{KVM_X86_DEFAULT_VM, KVM_X86_SW_PROTECTED_VM};
use gmem_uapi::{SimHost, Vmm, VmmConfig};

/// Pages touched per measured batch.
const BATCH: u64 = 1024;

fn vmm(pages: u64) -> (Vmm, i32) {
    vmm_of_type(KVM_X86_SW_PROTECTED_VM, pages)
}

fn vmm_of_type(vm_type: u64, pages: u64) -> (Vmm, i32) {
    let host = SimHost::new(KernelProfile::v6_18());
    let vmm = Vmm::new(host, VmmConfig { vm_type, memory: pages * PAGE_SIZE, regions: 1 }).expect("VMM");
    let vcpu = vmm.create_vcpu(0).expect("vCPU");
    (vmm, vcpu)
}

fn touch_all(vmm: &Vmm, vcpu: i32, pages: u64) {
    let mut byte = [1u8];
    for page in 0..pages {
        vmm.guest_access(vcpu, Vmm::page_gpa(page), &mut byte, true).expect("store");
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("fault");
    group.throughput(Throughput::Elements(BATCH));
    // A fresh VM per batch: every store is a first touch of a private page.
    group.bench_function("first_touch_private", |b| {
        b.iter_batched(|| vmm(BATCH), |(vmm, vcpu)| touch_all(&vmm, vcpu, BATCH), BatchSize::PerIteration)
    });
    // Shared memory of a DEFAULT VM: guest RAM starts at 1 MiB, so the 4 MiB slot is 256 4K
    // pages, one 2M THP (one fault, one 2M leaf) and 256 4K pages.
    group.bench_function("first_touch_shared_thp", |b| {
        b.iter_batched(
            || vmm_of_type(KVM_X86_DEFAULT_VM, BATCH),
            |(vmm, vcpu)| touch_all(&vmm, vcpu, BATCH),
            BatchSize::PerIteration,
        )
    });
    // Punch the whole guest_memfd (zaps every SPTE), then touch every page again.
    let (vmm, vcpu) = vmm(BATCH);
    touch_all(&vmm, vcpu, BATCH);
    group.bench_function("refault_after_punch", |b| {
        b.iter(|| {
            vmm.punch_hole(Vmm::page_gpa(0), BATCH * PAGE_SIZE).expect("punch");
            touch_all(&vmm, vcpu, BATCH);
        })
    });
    // Hot: every SPTE present, no fault (the floor of the two above).
    group.bench_function("hit_no_fault", |b| b.iter(|| touch_all(&vmm, vcpu, BATCH)));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
