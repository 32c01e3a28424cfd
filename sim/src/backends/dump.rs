//! The `dump` verb's text: a human-readable snapshot of VMs (memslots, attributes, MMU
//! invalidation state, SPTEs) and guest_memfds (bindings, folios). Deterministic on the simulator.
//!
//! A VM's present leaf SPTEs follow its memslots, one line each in ascending gfn order:
//!
//! ```text
//!   spte gfn=0x1 pfn=P level=4K W private
//! ```
//!
//! `pfn` is the host frame, `level` the mapping size (`4K`, `2M` or `1G`; a huge leaf's `gfn` and
//! `pfn` are its first, both aligned to its size), `W` a writable and `R` a read-only mapping,
//! and `private` or `shared` the kind of fault that installed it (guest_memfd or the memslot's
//! `userspace_addr`). A VM whose MMU keeps no page tables (the recording MMU of tests) prints no SPTE lines. A TD's direct root holds its shared
//! mappings; its private ones are the TDX module's Secure EPT, whose leaves follow, one line
//! each in ascending gpa order, with the leaf's state:
//!
//! ```text
//!   sept gpa=0x40000 pfn=P level=4K PENDING
//! ```
//!
//! (`MAPPED`, `PENDING`: AUGed and not yet accepted, `BLOCKED`, `PENDING_BLOCKED`).

use gmem_arch::tdx::kvm::TdxVm;
use gmem_arch::tdx::sept::LeafState;
use gmem_kvm::guest_memfd::KvmGmem;
use gmem_kvm::Kvm;
use gmem_mm::file::File;

/// The lines describing one VM.
pub fn vm(fd: i32, kvm: &Kvm) -> Vec<String> {
    let mut lines = vec![format!(
        "vm fd={fd} type={} users={} mmu_invalidate_seq={} in_progress={}",
        kvm.vm_type().name(),
        kvm.users_count(),
        kvm.mmu_invalidate_seq(),
        kvm.mmu_invalidate_in_progress()
    )];
    let srcu = kvm.srcu_read_lock();
    let slots = kvm.memslots(&srcu);
    lines.push(format!("  memslots generation={}", slots.generation()));
    for entry in slots.iter() {
        let slot = kvm.memslot(entry);
        let mut line = format!(
            "  slot {} gfn={:#x} npages={} flags={:#x} uaddr={:#x}",
            slot.id(),
            entry.base_gfn,
            entry.npages,
            slot.flags(),
            slot.userspace_addr()
        );
        if slot.has_gmem() {
            let bound = if slot.gmem_file_is_null() { "none" } else { "bound" };
            line.push_str(&format!(" gmem={bound} pgoff={:#x}", slot.gmem_pgoff()));
        }
        lines.push(line);
    }
    drop(srcu);
    if let Some(tdp) = kvm.tdp_mmu() {
        for (gfn, spte) in tdp.sptes() {
            lines.push(format!(
                "  spte gfn={:#x} pfn={} level={} {} {}",
                gfn.0,
                spte.pfn,
                spte.level,
                if spte.writable { "W" } else { "R" },
                if spte.private { "private" } else { "shared" }
            ));
        }
    }
    lines.extend(sept_leaves(kvm));
    lines
}

/// A TD's Secure EPT leaves (none for another VM, or a TD without its TDR).
fn sept_leaves(kvm: &Kvm) -> Vec<String> {
    let Some(td) = TdxVm::of(kvm) else { return Vec::new() };
    let Some(sept) = td.tdr().and_then(|tdr| td.module().sept(tdr)) else { return Vec::new() };
    sept.leaves()
        .into_iter()
        .map(|leaf| {
            let level = match leaf.level {
                0 => "4K".to_string(),
                1 => "2M".to_string(),
                2 => "1G".to_string(),
                other => other.to_string(),
            };
            let state = match leaf.state {
                LeafState::Mapped => "MAPPED",
                LeafState::Pending => "PENDING",
                LeafState::Blocked => "BLOCKED",
                LeafState::PendingBlocked => "PENDING_BLOCKED",
            };
            format!("  sept gpa={:#x} pfn={} level={level} {state}", leaf.gpa, leaf.pfn)
        })
        .collect()
}

/// The lines describing one guest_memfd.
pub fn gmem(fd: Option<i32>, file: &File, gmem: &KvmGmem) -> Vec<String> {
    let inode = file.inode();
    let fd = fd.map_or_else(|| "mapped".to_string(), |fd| fd.to_string());
    let mut lines = vec![format!(
        "gmem fd={fd} ino={} size={:#x} flags={:#x} nrpages={}",
        inode.ino(),
        inode.size(),
        inode.i_private(),
        inode.mapping().nrpages()
    )];
    for (index, handle) in gmem.bindings() {
        let slot = match gmem.kvm().memslot_by_handle(handle) {
            Ok(slot) => format!("slot {}", slot.id()),
            Err(_) => "FREED memslot".to_string(),
        };
        lines.push(format!("  binding index={index:#x} -> {slot} {handle:?}"));
    }
    for (index, folio) in inode.mapping().folios() {
        lines.push(format!(
            "  folio index={:#x} pfn={} refcount={} uptodate={} hwpoison={}",
            index.0,
            folio.pfn(),
            folio.refcount(),
            folio.test_uptodate() as u8,
            folio.test_hwpoison() as u8
        ));
    }
    lines
}

/// The `dump` verb's text for a whole simulated host: every VM the process has open, then every
/// guest_memfd it can reach (open descriptors, then mappings). Used by `gmem-sim run`'s watchdog
/// for the state it reports.
pub fn host(host: &gmem_uapi::SimHost) -> Vec<String> {
    let process = host.process();
    let mut lines = Vec::new();
    for fd in process.files.open_fds() {
        if let Ok(kvm) = host.vm(fd) {
            lines.extend(vm(fd, &kvm));
        }
    }
    for fd in process.files.open_fds() {
        let Some(file) = process.files.fget(fd) else { continue };
        if let Some(kvm_gmem) = gmem_kvm::guest_memfd::gmem_of_file(&file) {
            lines.extend(gmem(Some(fd), &file, kvm_gmem));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use gmem_kvm::memslot::UserspaceMemoryRegion2;
    use gmem_kvm::KernelProfile;
    use gmem_uapi::SimHost;

    #[test]
    fn sptes_follow_the_memslots_in_gfn_order_and_go_with_the_backing() {
        let host = SimHost::new(KernelProfile::v6_18());
        let vm = host.create_vm(0).unwrap();
        let uaddr = host.process().mmap_anonymous(4 * 4096).unwrap();
        let region = UserspaceMemoryRegion2 {
            slot: 0,
            guest_phys_addr: 0x10000,
            memory_size: 4 * 4096,
            userspace_addr: uaddr,
            ..Default::default()
        };
        host.set_memory_region(vm, &region).unwrap();
        let vcpu = host.create_vcpu(vm, 0).unwrap();
        host.guest_access(vcpu, 0x13000, &mut [1], true, None).unwrap();
        host.guest_access(vcpu, 0x11000, &mut [0], false, None).unwrap();
        let kvm = host.vm(vm).unwrap();
        let sptes: Vec<String> = super::vm(vm, &kvm).into_iter().filter(|line| line.contains("spte")).collect();
        let pfn = |gfn| kvm.tdp_mmu().unwrap().lookup(gmem_kvm::Gfn(gfn)).unwrap().pfn;
        assert_eq!(
            sptes,
            [
                format!("  spte gfn=0x11 pfn={} level=4K W shared", pfn(0x11)),
                format!("  spte gfn=0x13 pfn={} level=4K W shared", pfn(0x13)),
            ]
        );
        host.process().munmap(uaddr, 4 * 4096).unwrap();
        assert!(super::vm(vm, &kvm).iter().all(|line| !line.contains("spte")));
    }
}
