//! What the SEV-SNP back-end adds to guest_memfd's hot paths, beside a SW_PROTECTED VM doing the
//! same work (see `docs/PERFORMANCE.md`):
//!
//! * `get_pfn_hot/{sw_protected,sev_snp}`: `kvm_gmem_get_pfn` on a prepared folio (the SNP VM's
//!   prepare hook does not run again: the folio is uptodate);
//! * `get_pfn_cold/{..}`: a first `kvm_gmem_get_pfn` (allocate, zero, prepare: for SNP an RMP
//!   lookup and an RMPUPDATE that makes the page private, with the direct-map split);
//! * `first_touch/{..}`: a guest's first private touch of a page through the fault path; on the
//!   SNP guest that is PVALIDATE (which faults the page in: get_pfn, prepare, SPTE) then the
//!   store, as a Linux SNP guest accepts memory;
//! * `hit/{..}`: a store to a mapped page (TLB hit; on SNP also the RMP check of the access).

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::guest_memfd::kvm_gmem_get_pfn;
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::{Gfn, KernelProfile, VmType};
use gmem_mm::{PAGE_SHIFT, PAGE_SIZE};
use gmem_uapi::{kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2, SimHost};
use kvm_bindings::{kvm_sev_init, kvm_sev_snp_launch_start};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Pages of guest memory (all private).
const PAGES: u64 = 1024;

/// A VM of `vm_type` with one private guest_memfd memslot of [`PAGES`] pages at gpa 0 and one
/// vCPU; an SNP VM is launched (INIT2, LAUNCH_START, LAUNCH_FINISH with no image).
struct Guest {
    host: SimHost,
    vm: i32,
    gmem: i32,
    vcpu: i32,
    snp: bool,
}

fn guest(vm_type: VmType) -> Guest {
    let host = SimHost::new(KernelProfile::v6_18());
    let snp = vm_type == VmType::SevSnp;
    let vm = host.create_vm(vm_type as u64).expect("KVM_CREATE_VM");
    if snp {
        host.sev_init2(vm, &kvm_sev_init::default()).expect("KVM_SEV_INIT2");
    }
    let size = PAGES << PAGE_SHIFT;
    let gmem = host
        .create_guest_memfd(vm, &kvm_create_guest_memfd { size, ..Default::default() })
        .expect("KVM_CREATE_GUEST_MEMFD");
    let uaddr = host.process().mmap_anonymous(size).expect("mmap");
    let region = kvm_userspace_memory_region2 {
        slot: 0,
        flags: KVM_MEM_GUEST_MEMFD,
        memory_size: size,
        userspace_addr: uaddr,
        guest_memfd: gmem as u32,
        ..Default::default()
    };
    host.set_user_memory_region2(vm, &region).expect("memslot");
    let attrs = kvm_memory_attributes { address: 0, size, attributes: KVM_MEMORY_ATTRIBUTE_PRIVATE, flags: 0 };
    host.set_memory_attributes(vm, &attrs).expect("attributes");
    let vcpu = host.create_vcpu(vm, 0).expect("vCPU");
    if snp {
        let sev = host.open_dev_sev().expect("/dev/sev");
        let start = kvm_sev_snp_launch_start { policy: (1 << 17) | (1 << 16), ..Default::default() };
        host.snp_launch_start(vm, sev, &start).expect("LAUNCH_START");
        host.snp_launch_finish(vm, sev, &Default::default()).expect("LAUNCH_FINISH");
    }
    Guest { host, vm, gmem, vcpu, snp }
}

impl Guest {
    /// The guest's first private touch of `page`: PVALIDATE (SNP), then a store.
    fn first_touch(&self, page: u64) {
        let gpa = page << PAGE_SHIFT;
        if self.snp {
            assert_eq!(self.host.snp_pvalidate(self.vcpu, gpa, false, true), Ok(0));
        }
        self.host.guest_access(self.vcpu, gpa, &mut [1u8], true, Some(true)).expect("store");
    }

    fn name(&self) -> &'static str {
        if self.snp {
            "sev_snp"
        } else {
            "sw_protected"
        }
    }
}

fn get_pfn(c: &mut Criterion) {
    let mut group = c.benchmark_group("snp");
    group.throughput(Throughput::Elements(1));
    for vm_type in [VmType::SwProtected, VmType::SevSnp] {
        let g = guest(vm_type);
        let kvm = g.host.vm(g.vm).unwrap();
        let srcu = kvm.srcu_read_lock();
        let slot = kvm.gfn_to_memslot(&srcu, Gfn(0)).unwrap();
        for page in 0..64 {
            kvm_gmem_get_pfn(&kvm, slot, Gfn(page)).unwrap().page.put();
        }
        let mut next = 0u64;
        group.bench_function(format!("get_pfn_hot/{}", g.name()), |b| {
            b.iter(|| {
                next = (next + 1) % 64;
                black_box(kvm_gmem_get_pfn(&kvm, slot, Gfn(next)).unwrap()).page.put();
            })
        });
        // Cold: walk fresh pages; punch the file empty outside the timing when it runs out.
        let mut cursor = PAGES;
        group.bench_function(format!("get_pfn_cold/{}", g.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    if cursor == PAGES {
                        g.host.fallocate(g.gmem, 3, 0, (PAGES * PAGE_SIZE) as i64).expect("punch");
                        cursor = 0;
                    }
                    let started = Instant::now();
                    black_box(kvm_gmem_get_pfn(&kvm, slot, Gfn(cursor)).unwrap()).page.put();
                    total += started.elapsed();
                    cursor += 1;
                }
                total
            })
        });
        drop(srcu);
    }
    group.finish();
}

fn faults(c: &mut Criterion) {
    let mut group = c.benchmark_group("snp");
    group.throughput(Throughput::Elements(PAGES));
    for vm_type in [VmType::SwProtected, VmType::SevSnp] {
        let name = if vm_type == VmType::SevSnp { "sev_snp" } else { "sw_protected" };
        group.bench_function(format!("first_touch/{name}"), |b| {
            b.iter_batched(
                || guest(vm_type),
                |g| {
                    for page in 0..PAGES {
                        g.first_touch(page);
                    }
                    g
                },
                BatchSize::PerIteration,
            )
        });
        let g = guest(vm_type);
        for page in 0..PAGES {
            g.first_touch(page);
        }
        group.bench_function(format!("hit/{name}"), |b| {
            b.iter(|| {
                for page in 0..PAGES {
                    g.host.guest_access(g.vcpu, page << PAGE_SHIFT, &mut [2u8], true, Some(true)).expect("store");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, get_pfn, faults);
criterion_main!(benches);
