//! `kvm_gmem_get_pfn`: hot (folio already prepared), cold (allocate, zero, prepare a fresh page)
//! and the *floor* of the hot path — the same xarray lookups and atomic operations done directly
//! on the same data structures, without guest_memfd's logic around them. See
//! `docs/PERFORMANCE.md` for how to run this and read the result.
//!
//! Every measured iteration ends with `page.put()` (the caller's `kvm_release_page_*`), in the
//! floor too: the folio reference is part of what get_pfn hands out.

use criterion::{criterion_group, Criterion, Throughput};
use gmem_kvm::guest_memfd::{gmem_of_file, kvm_gmem_get_pfn};
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::{Gfn, KernelProfile, KvmSystem};
use gmem_mm::file::get_file_active;
use gmem_mm::{PgOff, PAGE_SHIFT};
use gmem_sync::rcu::rcu_read_lock;
use gmem_uapi::{kvm_create_guest_memfd, kvm_userspace_memory_region2, SimHost};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// `KVM_X86_SW_PROTECTED_VM`: a VM with private memory (the guest_memfd use case).
const VM_TYPE: u64 = 1;
/// `FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE`.
const PUNCH_HOLE: i32 = 3;
/// Guest frame of the memslot's first page.
const BASE_GFN: u64 = 0x100;
/// Pages in the guest_memfd (and the memslot): 64 MiB, so the cold bench can run a long batch
/// of first touches before it has to punch the file empty again.
const PAGES: u64 = 16 * 1024;
/// The hot bench and the floor cycle over this many (prepared) pages.
const HOT_PAGES: u64 = 64;

/// A VM with one guest_memfd bound to one memslot covering all of it.
struct Setup {
    host: SimHost,
    vm_fd: i32,
    gmem_fd: i32,
}

fn setup() -> Setup {
    let host = SimHost::with_system(KvmSystem::new(KernelProfile::v6_18()));
    let vm_fd = host.create_vm(VM_TYPE).expect("KVM_CREATE_VM");
    let size = PAGES << PAGE_SHIFT;
    let gmem_fd = host
        .create_guest_memfd(vm_fd, &kvm_create_guest_memfd { size, flags: 0, ..Default::default() })
        .expect("KVM_CREATE_GUEST_MEMFD");
    host.set_user_memory_region2(
        vm_fd,
        &kvm_userspace_memory_region2 {
            slot: 0,
            flags: KVM_MEM_GUEST_MEMFD,
            guest_phys_addr: BASE_GFN << PAGE_SHIFT,
            memory_size: size,
            userspace_addr: 0x7f00_0000_0000,
            guest_memfd_offset: 0,
            guest_memfd: gmem_fd as u32,
            ..Default::default()
        },
    )
    .expect("KVM_SET_USER_MEMORY_REGION2");
    Setup { host, vm_fd, gmem_fd }
}

fn hot_and_floor(c: &mut Criterion) {
    let s = setup();
    let kvm = s.host.vm(s.vm_fd).unwrap();
    let srcu = kvm.srcu_read_lock();
    let slot = kvm.gfn_to_memslot(&srcu, Gfn(BASE_GFN)).unwrap();
    // Prepare the hot pages once.
    for i in 0..HOT_PAGES {
        kvm_gmem_get_pfn(&kvm, slot, Gfn(BASE_GFN + i)).unwrap().page.put();
    }

    // Resolved once, outside the measurement: what the floor works on.
    let file = s.host.guest_memfd(s.gmem_fd).unwrap();
    let bindings = gmem_of_file(&file).unwrap();
    let mapping = file.inode().mapping();
    let handle = slot.handle;

    let mut group = c.benchmark_group("get_pfn");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(100);

    let mut i = 0u64;
    group.bench_function("hot", |b| {
        b.iter(|| {
            i = (i + 1) % HOT_PAGES;
            let r = kvm_gmem_get_pfn(&kvm, slot, Gfn(BASE_GFN + i)).unwrap();
            black_box(r.pfn);
            r.page.put();
        })
    });

    let mut i = 0u64;
    group.bench_function("floor", |b| {
        b.iter(|| {
            i = (i + 1) % HOT_PAGES;
            // get_file_active: RCU read-side entry, file refcount get, recheck of the pointer.
            let f = get_file_active(slot.gmem_file()).unwrap();
            // xa_load(&gmem->bindings, index).
            let bound = bindings.binding_at(i);
            // Page-cache lookup: xa_load, folio_try_get, recheck.
            let folio = mapping.get_folio(PgOff(i)).unwrap();
            folio.lock();
            black_box((bound == Some(handle), folio.pfn()));
            folio.unlock();
            // fput, then the caller's folio_put.
            drop(f);
            folio.put();
        })
    });

    // For reading the floor: what its RCU read-side section (a crossbeam-epoch pin and unpin)
    // costs on its own.
    group.measurement_time(Duration::from_secs(3));
    group.bench_function("rcu_read_lock", |b| b.iter(|| drop(black_box(rcu_read_lock()))));
    group.finish();
    drop(srcu);
}

fn cold(c: &mut Criterion) {
    let s = setup();
    let kvm = s.host.vm(s.vm_fd).unwrap();
    let len = (PAGES << PAGE_SHIFT) as i64;

    let mut group = c.benchmark_group("get_pfn");
    group.throughput(Throughput::Elements(1));
    group.warm_up_time(Duration::from_secs(2));
    group.measurement_time(Duration::from_secs(8));
    group.sample_size(50);

    // Each iteration touches a page that is not in the page cache: walk the file, and punch it
    // empty (untimed) whenever the walk reaches its end.
    let mut next = PAGES;
    group.bench_function("cold", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if next == PAGES {
                    s.host.fallocate(s.gmem_fd, PUNCH_HOLE, 0, len).unwrap();
                    next = 0;
                }
                let batch = left.min(PAGES - next);
                let srcu = kvm.srcu_read_lock();
                let slot = kvm.gfn_to_memslot(&srcu, Gfn(BASE_GFN)).unwrap();
                let start = Instant::now();
                for gfn in BASE_GFN + next..BASE_GFN + next + batch {
                    let r = kvm_gmem_get_pfn(&kvm, slot, Gfn(gfn)).unwrap();
                    black_box(r.pfn);
                    r.page.put();
                }
                elapsed += start.elapsed();
                drop(srcu);
                next += batch;
                left -= batch;
            }
            elapsed
        })
    });
    group.finish();
}

/// The point estimate criterion saved for `get_pfn/<name>` during this run (the slope of the
/// linear-sampling fit, which is the middle figure criterion prints, else the mean), in ns.
fn saved_estimate(criterion_dir: &Path, name: &str, run_started: SystemTime) -> Option<f64> {
    let path = criterion_dir.join("get_pfn").join(name).join("new").join("estimates.json");
    // A file from an earlier run (say, this run was filtered to one bench) is not this run's.
    if std::fs::metadata(&path).ok()?.modified().ok()? < run_started {
        return None;
    }
    let estimates: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    ["slope", "mean"].iter().find_map(|key| estimates.get(key)?.get("point_estimate")?.as_f64())
}

/// Prints hot/floor (the target is at most 2) when both were measured in this run.
fn report_ratio(run_started: SystemTime) {
    // criterion's own default: $CRITERION_HOME, else <target dir>/criterion; the bench runs as
    // <target dir>/<profile>/deps/get_pfn-<hash>.
    let criterion_dir = std::env::var_os("CRITERION_HOME").map(PathBuf::from).or_else(|| {
        let exe = std::env::current_exe().ok()?;
        Some(exe.parent()?.parent()?.parent()?.join("criterion"))
    });
    let Some(criterion_dir) = criterion_dir else { return };
    let hot = saved_estimate(&criterion_dir, "hot", run_started);
    let floor = saved_estimate(&criterion_dir, "floor", run_started);
    if let (Some(hot), Some(floor)) = (hot, floor) {
        println!("get_pfn hot/floor: {:.2} (hot {hot:.2} ns, floor {floor:.2} ns; target: at most 2.00)", hot / floor);
    }
}

criterion_group!(benches, hot_and_floor, cold);

fn main() {
    let run_started = SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    report_ratio(run_started);
}
