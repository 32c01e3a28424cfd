//! What the TDX back-end adds to guest_memfd's hot paths, beside a SW_PROTECTED VM and a
//! launched SEV-SNP guest doing the same work (see `docs/PERFORMANCE.md`, "What TDX adds"):
//!
//! * `get_pfn_hot/{sw_protected,sev_snp,tdx}`: `kvm_gmem_get_pfn` on a prepared folio;
//! * `get_pfn_cold/{..}`: a first `kvm_gmem_get_pfn` (allocate, zero, prepare: SNP's prepare is
//!   an RMPUPDATE; TDX has no prepare hook, its work happens when the page is mapped);
//! * `first_touch/{..}`: a guest's first private touch of each of [`PAGES`] pages. On the TD
//!   that is a Linux guest's `tdx_accept_memory` of the page (`TDG.MEM.PAGE.ACCEPT`, whose EPT
//!   violation faults the page in: get_pfn, `TDH.MEM.SEPT.ADD` for a missing S-EPT table,
//!   `TDH.MEM.PAGE.AUG`; the ACCEPT then zeroes and maps it) then the store; on the SNP guest
//!   PVALIDATE then the store; on SW_PROTECTED the store's fault;
//! * `zap/{..}`: `fallocate(PUNCH_HOLE)` of the guest_memfd range of [`PAGES`] mapped,
//!   accepted private pages (on the TD, per page: BLOCK, TRACK and the kick, REMOVE, WBINVD,
//!   the clear; on SNP the RMPUPDATE back to shared of each freed folio). The pages are touched
//!   again outside the timing before each punch;
//! * `hit/{..}`: a store to each of [`PAGES`] mapped, accepted pages (TLB hit; on the TD a
//!   `TDH.VP.ENTER` and the module's check of the private access, on SNP the RMP check).
//!
//! The TD runs on a simulated Intel host (`SimHost::new_intel`), v6.18, with
//! `SEPT_VE_DISABLE` as Linux guests require; the SW_PROTECTED VM runs on the same kind of host.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkGroup, Criterion, Throughput};
use gmem_arch::tdx::kvm::TDX_TD_ATTR_SEPT_VE_DISABLE;
use gmem_arch::tdx::status::SeamcallLeaf;
use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::guest_memfd::kvm_gmem_get_pfn;
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::{Gfn, KernelProfile, VmType};
use gmem_mm::{PAGE_SHIFT, PAGE_SIZE};
use gmem_uapi::{
    kvm_create_guest_memfd, kvm_memory_attributes, kvm_tdx_init_vm, kvm_userspace_memory_region2, SimHost,
};
use kvm_bindings::{kvm_cpuid_entry2, kvm_sev_init, kvm_sev_snp_launch_start};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Pages of guest memory (all private).
const PAGES: u64 = 1024;

/// `fallocate(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE)`.
const PUNCH_HOLE: i32 = 3;

/// The three back-ends, in the order of the table in `docs/PERFORMANCE.md`.
const BACKENDS: [VmType; 3] = [VmType::SwProtected, VmType::SevSnp, VmType::Tdx];

fn name(vm_type: VmType) -> &'static str {
    match vm_type {
        VmType::SevSnp => "sev_snp",
        VmType::Tdx => "tdx",
        _ => "sw_protected",
    }
}

/// The host a back-end's VMs run on: an AMD host for SEV-SNP, an Intel host (kvm_intel with
/// TDX) for the TD and for SW_PROTECTED. Each bench creates its VMs on one host and destroys
/// them there, as a long-running host does: the frames a destroyed VM freed are reused by the
/// next (a new host per VM would also measure the process's allocator handing out fresh memory).
fn host(vm_type: VmType) -> SimHost {
    match vm_type {
        VmType::SevSnp => SimHost::new(KernelProfile::v6_18()),
        _ => SimHost::new_intel(KernelProfile::v6_18()),
    }
}

/// A VM of `vm_type` with one private guest_memfd memslot of [`PAGES`] pages at gpa 0 and one
/// vCPU, launched: an SNP guest after LAUNCH_FINISH, a TD after FINALIZE (runnable, no image:
/// every page is AUGed on demand). Dropping it closes its descriptors and unmaps its shared
/// backing: the VM is destroyed.
struct Guest<'h> {
    host: &'h SimHost,
    vm: i32,
    gmem: i32,
    vcpu: i32,
    sev: Option<i32>,
    uaddr: u64,
    vm_type: VmType,
}

impl<'h> Guest<'h> {
    fn new(host: &'h SimHost, vm_type: VmType) -> Guest<'h> {
        let vm = host.create_vm(vm_type as u64).expect("KVM_CREATE_VM");
        match vm_type {
            VmType::SevSnp => host.sev_init2(vm, &kvm_sev_init::default()).expect("KVM_SEV_INIT2"),
            VmType::Tdx => {
                // The CPUID a VMM passes to INIT_VM: leaf 0x80000008 with GPAW 48.
                let cpuid = [kvm_cpuid_entry2 { function: 0x8000_0008, eax: 48 << 16, ..Default::default() }];
                let init = kvm_tdx_init_vm { attributes: TDX_TD_ATTR_SEPT_VE_DISABLE, ..Default::default() };
                host.tdx_init_vm(vm, &init, &cpuid).expect("KVM_TDX_INIT_VM")
            }
            _ => {}
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
        let mut sev = None;
        match vm_type {
            VmType::SevSnp => {
                let fd = host.open_dev_sev().expect("/dev/sev");
                let start = kvm_sev_snp_launch_start { policy: (1 << 17) | (1 << 16), ..Default::default() };
                host.snp_launch_start(vm, fd, &start).expect("LAUNCH_START");
                host.snp_launch_finish(vm, fd, &Default::default()).expect("LAUNCH_FINISH");
                sev = Some(fd);
            }
            VmType::Tdx => {
                host.tdx_init_vcpu(vcpu, 0).expect("KVM_TDX_INIT_VCPU");
                host.tdx_finalize_vm(vm).expect("KVM_TDX_FINALIZE_VM");
            }
            _ => {}
        }
        Guest { host, vm, gmem, vcpu, sev, uaddr, vm_type }
    }

    /// The guest's first private touch of `page` (or its first since the host took it away):
    /// accept it as a Linux guest does (TD: `tdx_accept_memory` of the page; SNP: PVALIDATE),
    /// then a store.
    fn first_touch(&self, page: u64) {
        let gpa = page << PAGE_SHIFT;
        match self.vm_type {
            VmType::SevSnp => assert_eq!(self.host.snp_pvalidate(self.vcpu, gpa, false, true), Ok(0)),
            VmType::Tdx => assert_eq!(self.host.tdx_accept_memory(self.vcpu, gpa, gpa + PAGE_SIZE), Ok(true)),
            _ => {}
        }
        self.store(page, 1);
    }

    /// A private store of `byte` to `page`.
    fn store(&self, page: u64, byte: u8) {
        self.host.guest_access(self.vcpu, page << PAGE_SHIFT, &mut [byte], true, Some(true)).expect("store");
    }

    fn touch_all(&self) {
        for page in 0..PAGES {
            self.first_touch(page);
        }
    }

    /// Punches the whole guest_memfd (every page of the memslot).
    fn punch_all(&self) {
        self.host.fallocate(self.gmem, PUNCH_HOLE, 0, (PAGES * PAGE_SIZE) as i64).expect("punch");
    }

    /// How many times the TDX module ran `leaf` (0 off a TD).
    fn seamcalls(&self, leaf: SeamcallLeaf) -> u64 {
        match self.vm_type {
            VmType::Tdx => self.host.tdx_host().expect("Intel host").module().executed(leaf),
            _ => 0,
        }
    }

    fn name(&self) -> &'static str {
        name(self.vm_type)
    }
}

impl Drop for Guest<'_> {
    fn drop(&mut self) {
        for fd in [Some(self.vcpu), Some(self.gmem), self.sev, Some(self.vm)].into_iter().flatten() {
            self.host.close(fd).expect("close");
        }
        self.host.process().munmap(self.uaddr, PAGES << PAGE_SHIFT).expect("munmap");
    }
}

/// The bench's own checks that it measures what it says, outside any timing. On the TD, one
/// round of `first_touch` AUGs and ACCEPTs each page, and `zap` BLOCKs, TRACKs, REMOVEs and
/// WBINVDs each and leaves nothing mapped. On every back-end, a destroyed VM gives back every
/// frame it took, so the benches that create a VM per iteration do not grow the host.
fn check_work() {
    use SeamcallLeaf::*;
    for vm_type in BACKENDS {
        let host = host(vm_type);
        Guest::new(&host, vm_type).touch_all();
        let baseline = host.machine().mem.allocated_pages();
        for _ in 0..3 {
            Guest::new(&host, vm_type).touch_all();
            assert_eq!(
                host.machine().mem.allocated_pages(),
                baseline,
                "{}: a destroyed VM freed its frames",
                name(vm_type)
            );
        }
        assert!(host.machine().warnings.is_empty(), "{}: no WARN", name(vm_type));
    }
    let host = host(VmType::Tdx);
    let g = Guest::new(&host, VmType::Tdx);
    let augs = g.seamcalls(MemPageAug);
    g.touch_all();
    assert_eq!(g.seamcalls(MemPageAug), augs + PAGES, "one AUG per first touch");
    let leaves = [MemRangeBlock, MemTrack, MemPageRemove, PhymemPageWbinvd];
    let before = leaves.map(|leaf| g.seamcalls(leaf));
    g.punch_all();
    let after = leaves.map(|leaf| g.seamcalls(leaf));
    for (leaf, (before, after)) in leaves.iter().zip(before.iter().zip(after)) {
        assert_eq!(after - before, PAGES, "one {leaf:?} per zapped page");
    }
    let kvm = host.vm(g.vm).unwrap();
    let tdp = kvm.tdp_mmu().expect("TDP MMU");
    assert!((0..PAGES).all(|page| tdp.lookup_mirror(Gfn(page)).is_none()), "the punch zapped every page");
    // Touched again after the zap: a new AUG and ACCEPT for each page.
    g.touch_all();
    assert_eq!(g.seamcalls(MemPageAug), augs + 2 * PAGES);
    assert!(host.machine().warnings.is_empty(), "TD: no WARN");
}

fn get_pfn(c: &mut Criterion) {
    let mut group = c.benchmark_group("tdx");
    group.throughput(Throughput::Elements(1));
    for vm_type in BACKENDS {
        let host = host(vm_type);
        let g = Guest::new(&host, vm_type);
        let kvm = host.vm(g.vm).unwrap();
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
                        g.punch_all();
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

/// Benches of [`PAGES`] pages per iteration take up to milliseconds each, and the untimed setup
/// of `first_touch` and `zap` (a new VM, or the pages touched again) as long again: 20 samples
/// of equal size (flat sampling) fill the measurement time without criterion's linear sampling
/// asking for thousands of iterations.
fn batch_group<'a>(c: &'a mut Criterion) -> BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("tdx");
    group.throughput(Throughput::Elements(PAGES));
    group.sample_size(20);
    group.sampling_mode(criterion::SamplingMode::Flat);
    group
}

fn first_touch(c: &mut Criterion) {
    check_work();
    let mut group = batch_group(c);
    for vm_type in BACKENDS {
        let host = host(vm_type);
        group.bench_function(format!("first_touch/{}", name(vm_type)), |b| {
            b.iter_batched(
                || Guest::new(&host, vm_type),
                |g| {
                    g.touch_all();
                    g
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn zap(c: &mut Criterion) {
    let mut group = batch_group(c);
    for vm_type in BACKENDS {
        let host = host(vm_type);
        let g = Guest::new(&host, vm_type);
        group.bench_function(format!("zap/{}", g.name()), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    g.touch_all();
                    let started = Instant::now();
                    g.punch_all();
                    total += started.elapsed();
                }
                total
            })
        });
    }
    group.finish();
}

fn hit(c: &mut Criterion) {
    let mut group = batch_group(c);
    for vm_type in BACKENDS {
        let host = host(vm_type);
        let g = Guest::new(&host, vm_type);
        g.touch_all();
        group.bench_function(format!("hit/{}", g.name()), |b| {
            b.iter(|| {
                for page in 0..PAGES {
                    g.store(page, 2);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, get_pfn, first_touch, zap, hit);
criterion_main!(benches);
