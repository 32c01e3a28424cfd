//! guest_memfd: `virt/kvm/guest_memfd.c`, function by function.
//!
//! Each function below is the counterpart of the seed function of the same name
//! (`../shared/reference/guest_memfd.c`, the v6.14-era source), with its checks in the same order, the
//! same errno and the same locks. Where v6.18 differs, the difference is switched on the VM's
//! [`KernelProfile`] right at the point where the code differs,
//! and each named upstream fix is a toggle ([`Fix`]).
//!
//! Lock order (as in the kernel): `kvm->slots_lock` → `mapping->invalidate_lock` →
//! `kvm->mmu_lock`; the folio lock nests inside the invalidate lock.

use crate::arch::{KvmArch, PopulateSource};
use crate::memslot::{MemslotRef, KVM_MEMSLOT_GMEM_ONLY};
use crate::mmu::{AttrFilter, KvmGfnRange};
use crate::profile::{Fix, KernelProfile, KernelVersion};
use crate::types::Gfn;
use crate::vm::{Kvm, SLOTS_LOCK};
use gmem_mm::fdtable::FdTable;
use gmem_mm::file::{alloc_file_pseudo, get_file_active, File, FileOperations, FileRef, O_LARGEFILE, O_RDWR};
use gmem_mm::filemap::{AddressSpace, AddressSpaceOperations, MfResult, PrivateList};
use gmem_mm::folio::Folio;
use gmem_mm::inode::{Iattr, Inode, InodeInit, InodeOperations, Kstat, S_IFREG};
use gmem_mm::slab::SlabHandle;
use gmem_mm::types::{page_aligned, PgOff, PAGE_SHIFT};
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use gmem_mm::vma::{vmf_error, VmFault, VmFaultError, VmOperations, Vma, VM_MAYSHARE, VM_SHARED};
use gmem_mm::xarray::XArray;
use gmem_mm::{Errno, KResult, Pfn};
use gmem_sync::inject::FaultPoint;
use gmem_sync::{lockdep_assert_held, Arc};
use std::any::Any;
use std::fmt;

/// `GUEST_MEMFD_FLAG_MMAP` (v6.18).
pub const GUEST_MEMFD_FLAG_MMAP: u64 = 1 << 0;
/// `GUEST_MEMFD_FLAG_INIT_SHARED` (v6.18).
pub const GUEST_MEMFD_FLAG_INIT_SHARED: u64 = 1 << 1;

/// `struct kvm_gmem`: one guest_memfd file's link between its inode and its VM.
#[doc(alias = "kvm_gmem")]
pub struct KvmGmem {
    kvm: Arc<Kvm>,
    /// `bindings`: page index → the memslot bound there (multi-index ranges).
    bindings: XArray<SlabHandle>,
}

impl fmt::Debug for KvmGmem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmGmem").field("bindings", &self.bindings.entry_count()).finish()
    }
}

impl KvmGmem {
    /// The VM this guest_memfd belongs to.
    pub fn kvm(&self) -> &Arc<Kvm> {
        &self.kvm
    }

    /// The bindings, as (first index of each stored piece, slot handle).
    pub fn bindings(&self) -> Vec<(u64, SlabHandle)> {
        let mut out = Vec::new();
        self.bindings.for_each(|index, handle| out.push((index, handle)));
        out
    }

    /// The slot bound at `index` (`xa_load(&gmem->bindings, index)`).
    pub fn binding_at(&self, index: u64) -> Option<SlabHandle> {
        self.bindings.load(index)
    }

    /// The bindings as maximal ranges `(first, last, slot)` of file page indices bound to one
    /// slot: the pieces `xa_store_range` decomposed a binding into, joined again (for reports,
    /// which should name a binding as `kvm_gmem_bind` made it, not its pieces).
    pub fn binding_ranges(&self) -> Vec<(u64, u64, SlabHandle)> {
        let pieces = self.bindings();
        let mut out: Vec<(u64, u64, SlabHandle)> = Vec::new();
        for (i, &(first, handle)) in pieces.iter().enumerate() {
            // The piece ends before the next piece starts; where exactly, the entries say: every
            // index from `first` to the piece's end loads `handle`, and none after it up to the
            // next piece, so the end is found by a search over that monotone predicate.
            let limit = pieces.get(i + 1).map_or(u64::MAX, |&(next, _)| next - 1);
            let (mut lo, mut hi) = (first, limit);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                if self.bindings.load(mid) == Some(handle) {
                    lo = mid;
                } else {
                    hi = mid - 1;
                }
            }
            match out.last_mut() {
                Some(last) if last.2 == handle && last.1.checked_add(1) == Some(first) => last.1 = lo,
                _ => out.push((first, lo, handle)),
            }
        }
        out
    }
}

/// What the page-cache hooks need that the kernel finds elsewhere: the arch back-end (the global
/// `kvm_x86_ops` in the kernel) and the file's flags (`inode->i_private`, which the kernel reaches
/// through `mapping->host`).
struct GmemMappingContext {
    arch: Arc<dyn KvmArch>,
    flags: u64,
}

fn mapping_context(mapping: &AddressSpace) -> &GmemMappingContext {
    mapping
        .a_private()
        .and_then(|ctx| ctx.downcast_ref::<GmemMappingContext>())
        .expect("guest_memfd mappings carry their context")
}

/// `kvm_gmem_fops` as built in v6.14: no `.mmap`, so every mmap is ENODEV.
#[doc(alias = "kvm_gmem_fops")]
static KVM_GMEM_FOPS_V6_14: FileOperations = FileOperations {
    name: "kvm_gmem_fops",
    release: Some(kvm_gmem_release),
    fallocate: Some(kvm_gmem_fallocate),
    mmap: None,
    has_read: false,
    has_write: false,
    llseek: None,
};

/// `kvm_gmem_fops` as built in v6.18: adds `.mmap = kvm_gmem_mmap`.
#[doc(alias = "kvm_gmem_fops")]
static KVM_GMEM_FOPS_V6_18: FileOperations = FileOperations { mmap: Some(kvm_gmem_mmap), ..KVM_GMEM_FOPS_V6_14 };

/// `kvm_gmem_aops`.
#[doc(alias = "kvm_gmem_aops")]
static KVM_GMEM_AOPS: AddressSpaceOperations = AddressSpaceOperations {
    name: "kvm_gmem_aops",
    migrate_folio: Some(kvm_gmem_migrate_folio),
    error_remove_folio: Some(kvm_gmem_error_folio),
    free_folio: Some(kvm_gmem_free_folio),
};

/// `kvm_gmem_iops` in v6.14: getattr (`generic_fillattr`) and setattr (EINVAL).
#[doc(alias = "kvm_gmem_iops")]
static KVM_GMEM_IOPS_V6_14: InodeOperations =
    InodeOperations { name: "kvm_gmem_iops", getattr: Some(kvm_gmem_getattr), setattr: Some(kvm_gmem_setattr) };

/// `kvm_gmem_iops` in v6.18: the getattr hook was dropped (fstat is unchanged).
#[doc(alias = "kvm_gmem_iops")]
static KVM_GMEM_IOPS_V6_18: InodeOperations =
    InodeOperations { name: "kvm_gmem_iops", getattr: None, setattr: Some(kvm_gmem_setattr) };

/// `kvm_gmem_vm_ops` (v6.18).
static KVM_GMEM_VM_OPS: VmOperations = VmOperations { name: "kvm_gmem_vm_ops", fault: kvm_gmem_fault_user_mapping };

/// Whether `file` is a guest_memfd (`file->f_op == &kvm_gmem_fops`).
pub fn is_gmem_file(file: &File) -> bool {
    file.has_fops(&KVM_GMEM_FOPS_V6_14) || file.has_fops(&KVM_GMEM_FOPS_V6_18)
}

fn gmem_of(file: &File) -> &KvmGmem {
    file.private::<KvmGmem>().expect("a guest_memfd file's private_data is its kvm_gmem")
}

fn gmem_list(list: &PrivateList) -> impl Iterator<Item = &KvmGmem> {
    list.iter().map(|entry| entry.downcast_ref::<KvmGmem>().expect("i_private_list holds kvm_gmem"))
}

/// `kvm_gmem_supports_mmap(inode)` (v6.18).
fn kvm_gmem_supports_mmap(inode: &Inode) -> bool {
    inode.i_private() & GUEST_MEMFD_FLAG_MMAP != 0
}

/// `kvm_gmem_get_invalidate_filter(inode)`: v6.14 always zaps private mappings; v6.18 zaps the
/// shared ones of an INIT_SHARED file.
fn kvm_gmem_get_invalidate_filter(profile: &KernelProfile, gmem_flags: u64) -> AttrFilter {
    match profile.version {
        KernelVersion::V6_14 => AttrFilter::Private,
        KernelVersion::V6_18 if gmem_flags & GUEST_MEMFD_FLAG_INIT_SHARED != 0 => AttrFilter::Shared,
        KernelVersion::V6_18 => AttrFilter::Private,
    }
}

/// `kvm_gmem_get_supported_flags(kvm)` (v6.18; `kvm` is `None` for `/dev/kvm`). v6.14 has no
/// flags at all (`valid_flags = 0`).
#[doc(alias = "kvm_arch_supports_gmem_init_shared")]
pub fn kvm_gmem_get_supported_flags(profile: &KernelProfile, kvm: Option<&Kvm>) -> u64 {
    match profile.version {
        KernelVersion::V6_14 => 0,
        KernelVersion::V6_18 => {
            // x86: kvm_arch_supports_gmem_init_shared(kvm) = !kvm_arch_has_private_mem(kvm).
            let init_shared = kvm.is_none_or(|kvm| !kvm.has_private_mem());
            GUEST_MEMFD_FLAG_MMAP | if init_shared { GUEST_MEMFD_FLAG_INIT_SHARED } else { 0 }
        }
    }
}

/// `kvm_gmem_prepare_folio`: zero the folio, run the arch prepare hook, mark it uptodate
/// ("prepared"). The folio is locked. Out of line: it runs once per folio, not on the hot path
/// of `kvm_gmem_get_pfn`.
#[inline(never)]
fn kvm_gmem_prepare_folio(kvm: &Kvm, slot: MemslotRef<'_>, gfn: Gfn, folio: Folio<'_>) -> KResult<()> {
    for page in 0..folio.nr_pages() {
        folio.clear_page(page);
    }
    let order = folio.order();
    kvm.machine().warnings.warn_on(slot.gmem_pgoff() & ((1u64 << order) - 1) != 0, || {
        "kvm_gmem_prepare_folio: memslot pgoff not aligned to the folio order".into()
    });
    let index = gfn.0.wrapping_sub(slot.base_gfn().0).wrapping_add(slot.gmem_pgoff()) & !((1u64 << order) - 1);
    __kvm_gmem_prepare_folio(kvm, slot, PgOff(index), folio)?;
    kvm_gmem_mark_prepared(folio);
    Ok(())
}

/// `__kvm_gmem_prepare_folio`: `kvm_arch_gmem_prepare` for the folio's first page. The
/// [`FaultPoint::GmemPrepare`] injection point stands in for a failing hook (EIO) for every VM
/// type, so the failure branch (the folio is left not uptodate) is reachable without SNP.
fn __kvm_gmem_prepare_folio(kvm: &Kvm, slot: MemslotRef<'_>, index: PgOff, folio: Folio<'_>) -> KResult<()> {
    let pfn = folio.file_pfn(index);
    let gfn = Gfn(slot.base_gfn().0.wrapping_add(index.0).wrapping_sub(slot.gmem_pgoff()));
    let ret = if kvm.machine().inject.should_fail(FaultPoint::GmemPrepare) {
        Err(Errno::EIO)
    } else {
        kvm.arch().gmem_prepare(kvm, gfn, pfn, folio.order())
    };
    ret.inspect(|()| folio.note_arch_prepared()).inspect_err(|errno| {
        tracing::warn!("gmem: Failed to prepare folio for index {:x} GFN {} PFN {} error {}", index.0, gfn, pfn, errno);
    })
}

/// `kvm_gmem_mark_prepared`: in v6.14 and v6.18 "prepared" is the uptodate flag.
fn kvm_gmem_mark_prepared(folio: Folio<'_>) {
    folio.mark_uptodate();
}

/// `kvm_gmem_get_folio`: `filemap_grab_folio` (order 0; huge pages are a TODO in the seed).
fn kvm_gmem_get_folio(inode: &Inode, index: PgOff) -> KResult<Folio<'_>> {
    inode.mapping().grab_folio(index)
}

/// `kvm_gmem_invalidate_begin` (v6.18: `__kvm_gmem_invalidate_begin` with the filter): zap every
/// binding's part of `[start, end)`, opening an MMU invalidation on the first binding found.
fn kvm_gmem_invalidate_begin(gmem: &KvmGmem, start: u64, end: u64, filter: AttrFilter) {
    let kvm = &*gmem.kvm;
    let mut flush = false;
    let mut mmu_lock = None;
    gmem.bindings.for_each_range(start, end.wrapping_sub(1), |_index, handle| {
        // A binding to a freed memslot (F1, F2) reads freed memory here.
        let slot = kvm.memslot_deref(handle, "kvm_gmem_invalidate_begin", "read");
        let pgoff = slot.gmem_pgoff();
        let range = KvmGfnRange {
            start: Gfn(slot.base_gfn().0.wrapping_add(pgoff.max(start)).wrapping_sub(pgoff)),
            end: Gfn(slot.base_gfn().0.wrapping_add(pgoff.wrapping_add(slot.npages()).min(end)).wrapping_sub(pgoff)),
            slot_id: slot.id().0,
            // guest_memfd is relevant only to private mappings (v6.14); v6.18 passes the filter.
            attr_filter: filter,
            may_block: true,
        };
        if mmu_lock.is_none() {
            mmu_lock = Some(kvm.mmu_lock_write());
            kvm.mmu_invalidate_begin();
        }
        flush |= kvm.mmu_unmap_gfn_range(&range);
    });
    if flush {
        kvm.mmu().flush_remote_tlbs(kvm);
    }
    drop(mmu_lock);
}

/// `kvm_gmem_invalidate_end`.
fn kvm_gmem_invalidate_end(gmem: &KvmGmem, start: u64, end: u64) {
    let kvm = &*gmem.kvm;
    let mut first = start;
    if gmem.bindings.find(&mut first, end.wrapping_sub(1)).is_some() {
        let _mmu_lock = kvm.mmu_lock_write();
        kvm.mmu_invalidate_end();
    }
}

/// `kvm_gmem_punch_hole`.
fn kvm_gmem_punch_hole(profile: &KernelProfile, inode: &Inode, offset: i64, len: i64) -> KResult<()> {
    let start = (offset as u64) >> PAGE_SHIFT;
    let end = (offset.wrapping_add(len) as u64) >> PAGE_SHIFT;
    let filter = kvm_gmem_get_invalidate_filter(profile, inode.i_private());
    // Bindings must be stable across invalidation to ensure the start+end are balanced.
    let list = inode.mapping().invalidate_lock();
    for gmem in gmem_list(&list) {
        kvm_gmem_invalidate_begin(gmem, start, end, filter);
    }
    inode.mapping().truncate_range(offset, offset.wrapping_add(len).wrapping_sub(1));
    for gmem in gmem_list(&list) {
        kvm_gmem_invalidate_end(gmem, start, end);
    }
    drop(list);
    Ok(())
}

/// `kvm_gmem_allocate`: allocate (but neither zero nor prepare) every folio of the range.
fn kvm_gmem_allocate(inode: &Inode, offset: i64, len: i64) -> KResult<()> {
    // Dedicated guest is immutable by default.
    if offset.wrapping_add(len) > inode.size() {
        return Err(Errno::EINVAL);
    }
    let mapping = inode.mapping();
    let list = mapping.invalidate_lock_shared();
    let start = (offset as u64) >> PAGE_SHIFT;
    let end = (offset.wrapping_add(len) as u64) >> PAGE_SHIFT;
    let mut index = start;
    while index < end {
        if mapping.machine().signal_pending() {
            return Err(Errno::EINTR);
        }
        let folio = kvm_gmem_get_folio(inode, PgOff(index))?;
        if let Err(errno) = kvm_gmem_prepare_at_allocation(&list, PgOff(index), folio) {
            folio.unlock();
            folio.put();
            return Err(errno);
        }
        index = folio.next_index().0;
        folio.unlock();
        folio.put();
        // 64-bit only, wrapping the index should be impossible.
        if mapping.machine().warnings.warn_on_once(index == 0, || "kvm_gmem_allocate: index wrapped".into()) {
            break;
        }
    }
    Ok(())
}

/// The preparation `kvm_gmem_allocate` did before upstream fix F6 ("delay
/// kvm_gmem_prepare_folio() until the memory is passed to the guest", v6.11): every folio it
/// allocated was prepared for each VM whose memslot is bound at `index`, so SNP made it
/// RMP-private at fallocate time and a later `SNP_LAUNCH_UPDATE` of it failed. With F6 (both
/// modelled kernels) allocation only allocates.
fn kvm_gmem_prepare_at_allocation(list: &PrivateList, index: PgOff, folio: Folio<'_>) -> KResult<()> {
    for gmem in gmem_list(list) {
        let kvm = &*gmem.kvm;
        if kvm.profile().has_fix(Fix::F6LazyPrepare) || folio.test_uptodate() {
            continue;
        }
        let Some(handle) = gmem.bindings.load(index.0) else { continue };
        let slot = kvm.memslot_deref(handle, "kvm_gmem_prepare_folio", "read");
        let gfn = Gfn(slot.base_gfn().0.wrapping_add(index.0).wrapping_sub(slot.gmem_pgoff()));
        kvm_gmem_prepare_folio(kvm, slot, gfn, folio)?;
    }
    Ok(())
}

/// `kvm_gmem_fallocate` (after the VFS checks of `vfs_fallocate`).
fn kvm_gmem_fallocate(file: &File, mode: i32, offset: i64, len: i64) -> KResult<()> {
    if mode & FALLOC_FL_KEEP_SIZE == 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if !page_aligned(offset as u64) || !page_aligned(len as u64) {
        return Err(Errno::EINVAL);
    }
    let profile = gmem_of(file).kvm.profile();
    let result = if mode & FALLOC_FL_PUNCH_HOLE != 0 {
        kvm_gmem_punch_hole(profile, file.inode(), offset, len)
    } else {
        kvm_gmem_allocate(file.inode(), offset, len)
    };
    if result.is_ok() {
        file.file_modified();
    }
    result
}

/// `kvm_gmem_release`: the last reference to the file is gone. Detach every memslot still bound
/// (under `slots_lock`, so no unbind can race), zap everything the file mapped, unlink, and drop
/// the VM reference. The page cache stays with the inode.
fn kvm_gmem_release(inode: &Inode, file: &File) -> i32 {
    let gmem = gmem_of(file);
    let kvm = &*gmem.kvm;
    let _span = tracing::debug_span!("kvm_gmem_release", ino = inode.ino()).entered();
    let slots_lock = kvm.lock_slots();
    let mut list = inode.mapping().invalidate_lock();
    gmem.bindings.for_each(|_index, handle| {
        // A binding to a freed memslot (F1, F2) makes this the use-after-free write KASAN saw.
        kvm.memslot_deref(handle, "kvm_gmem_release", "write").set_gmem_file(std::ptr::null_mut());
    });
    // All in-flight operations are gone and new bindings can be created. Zap all SPTEs pointed
    // at by this file. Do not free the backing memory: its lifetime is the inode's.
    let filter = kvm_gmem_get_invalidate_filter(kvm.profile(), inode.i_private());
    kvm_gmem_invalidate_begin(gmem, 0, u64::MAX, filter);
    kvm_gmem_invalidate_end(gmem, 0, u64::MAX);
    list.retain(|entry| !std::ptr::eq(Arc::as_ptr(entry) as *const u8, gmem as *const KvmGmem as *const u8));
    drop(list);
    drop(slots_lock);
    gmem.bindings.destroy();
    kvm.put_kvm();
    0
}

/// `kvm_gmem_get_file`: the bound file, unless it is gone or dying.
pub fn kvm_gmem_get_file(slot: MemslotRef<'_>) -> Option<FileRef> {
    get_file_active(slot.gmem_file())
}

/// `kvm_gmem_get_index`.
pub fn kvm_gmem_get_index(slot: MemslotRef<'_>, gfn: Gfn) -> PgOff {
    PgOff(gfn.0.wrapping_sub(slot.base_gfn().0).wrapping_add(slot.gmem_pgoff()))
}

/// `kvm_gmem_migrate_folio`: guest_memfd memory is unmovable.
fn kvm_gmem_migrate_folio(mapping: &AddressSpace, _dst: Folio<'_>, _src: Folio<'_>) -> KResult<()> {
    mapping.machine().warnings.warn_on_once(true, || "kvm_gmem_migrate_folio called".into());
    Err(Errno::EINVAL)
}

/// `kvm_gmem_error_folio`: memory failure hit a folio. Zap its mappings but keep it (what to do
/// is userspace's decision); a later `get_pfn` reports EHWPOISON.
fn kvm_gmem_error_folio(mapping: &AddressSpace, folio: Folio<'_>) -> MfResult {
    let list = mapping.invalidate_lock_shared();
    let start = folio.index().0;
    let end = start + folio.nr_pages();
    for gmem in gmem_list(&list) {
        let filter = kvm_gmem_get_invalidate_filter(gmem.kvm.profile(), mapping_context(mapping).flags);
        kvm_gmem_invalidate_begin(gmem, start, end, filter);
    }
    // Do not truncate the range: userspace decides what happens to the poisoned memory.
    for gmem in gmem_list(&list) {
        kvm_gmem_invalidate_end(gmem, start, end);
    }
    drop(list);
    MfResult::Delayed
}

/// `kvm_gmem_free_folio`: the page cache dropped a folio; the arch makes its frames host-safe.
fn kvm_gmem_free_folio(mapping: &AddressSpace, folio: Folio<'_>) {
    let pfn = folio.pfn();
    let order = folio.order();
    mapping_context(mapping).arch.gmem_invalidate(pfn, pfn.offset(1 << order));
}

/// `kvm_gmem_getattr` (v6.14).
fn kvm_gmem_getattr(inode: &Inode) -> Kstat {
    inode.generic_fillattr()
}

/// `kvm_gmem_setattr`: nothing about a guest_memfd can be changed.
fn kvm_gmem_setattr(_inode: &Inode, _attr: &Iattr) -> KResult<()> {
    Err(Errno::EINVAL)
}

/// `__kvm_gmem_create`: the fd, the file and its inode, the `kvm_gmem`, and the VM reference.
fn __kvm_gmem_create(kvm: &Arc<Kvm>, files: &FdTable, size: i64, flags: u64) -> KResult<i32> {
    let fd = files.get_unused_fd()?;
    let profile = kvm.profile();
    let gmem = Arc::new(KvmGmem { kvm: kvm.clone(), bindings: XArray::with_injector(kvm.machine().inject.clone()) });
    let (fops, iops, noexec) = match profile.version {
        KernelVersion::V6_14 => (&KVM_GMEM_FOPS_V6_14, &KVM_GMEM_IOPS_V6_14, false),
        KernelVersion::V6_18 => (&KVM_GMEM_FOPS_V6_18, &KVM_GMEM_IOPS_V6_18, true),
    };
    let context = GmemMappingContext { arch: kvm.arch().clone(), flags };
    // anon_inode_create_getfile("[kvm-gmem]", &kvm_gmem_fops, gmem, O_RDWR, NULL), then the
    // inode setup the seed does before anyone can see the inode.
    let file = alloc_file_pseudo(
        kvm.machine(),
        "[kvm-gmem]",
        fops,
        O_RDWR,
        InodeInit {
            mode: S_IFREG | 0o600,
            size,
            i_private: flags,
            i_op: iops,
            a_ops: &KVM_GMEM_AOPS,
            a_private: Some(Arc::new(context)),
            noexec,
        },
        Some(gmem.clone() as Arc<dyn Any + Send + Sync>),
    );
    file.add_f_flags(O_LARGEFILE);
    let mapping = file.inode().mapping();
    mapping.set_inaccessible();
    // Unmovable mappings are supposed to be marked unevictable as well.
    kvm.machine().warnings.warn_on_once(!mapping.unevictable(), || "guest_memfd mapping is evictable".into());
    kvm.get_kvm();
    mapping.invalidate_lock().push(gmem);
    files.fd_install(fd, file);
    Ok(fd)
}

/// `kvm_gmem_create` (`KVM_CREATE_GUEST_MEMFD`): flags first, then the size (a signed `loff_t`).
pub fn kvm_gmem_create(kvm: &Arc<Kvm>, files: &FdTable, size: u64, flags: u64) -> KResult<i32> {
    let _span = tracing::debug_span!("kvm_gmem_create", size, flags).entered();
    let size = size as i64;
    let valid_flags = kvm_gmem_get_supported_flags(kvm.profile(), Some(kvm));
    if flags & !valid_flags != 0 {
        return Err(Errno::EINVAL);
    }
    if size <= 0 || !page_aligned(size as u64) {
        return Err(Errno::EINVAL);
    }
    __kvm_gmem_create(kvm, files, size, flags)
}

/// `kvm_gmem_bind`: attach a new (not yet visible) memslot to a range of a guest_memfd.
pub fn kvm_gmem_bind(kvm: &Kvm, files: &FdTable, slot: MemslotRef<'_>, fd: u32, offset: i64) -> KResult<()> {
    let size = (slot.npages() << PAGE_SHIFT) as i64;
    // fget(unsigned int fd): a value beyond the table (such as -1) finds nothing.
    let file = files.fget(i32::try_from(fd).unwrap_or(-1)).ok_or(Errno::EBADF)?;
    if !is_gmem_file(&file) {
        return Err(Errno::EINVAL);
    }
    let gmem = gmem_of(&file);
    if !std::ptr::eq(&*gmem.kvm, kvm) {
        return Err(Errno::EINVAL);
    }
    let inode = file.inode();
    // loff_t arithmetic: the sum can wrap negative (upstream fix F3, not in v6.14 or v6.18).
    if offset < 0 || !page_aligned(offset as u64) || offset.wrapping_add(size) > inode.size() {
        return Err(Errno::EINVAL);
    }
    let mapping = inode.mapping();
    let lock = mapping.invalidate_lock();
    let start = (offset as u64) >> PAGE_SHIFT;
    let end = start.wrapping_add(slot.npages());
    let mut first = start;
    if !gmem.bindings.is_empty() && gmem.bindings.find(&mut first, end.wrapping_sub(1)).is_some() {
        drop(lock);
        return Err(Errno::EINVAL);
    }
    // Memslots of flag KVM_MEM_GUEST_MEMFD are immutable, so bind happens on a new memslot,
    // which is not visible yet: kvm_gmem_get_pfn() is guaranteed to see the file.
    slot.set_gmem_file(file.as_ptr());
    slot.set_gmem_pgoff(start);
    if kvm.profile().version == KernelVersion::V6_18 && kvm_gmem_supports_mmap(inode) {
        slot.add_flags(KVM_MEMSLOT_GMEM_ONLY);
    }
    // The seed ignores a failure here (upstream fix F4, not in v6.14 or v6.18).
    let _ = gmem.bindings.store_range(start, end.wrapping_sub(1), Some(slot.handle));
    drop(lock);
    // Drop the file reference, even on success: the file pins KVM, not the other way round.
    drop(file);
    Ok(())
}

/// `__kvm_gmem_unbind` (v6.18 helper): clear the slot's range and its file pointer.
fn __kvm_gmem_unbind(slot: MemslotRef<'_>, gmem: &KvmGmem) {
    let start = slot.gmem_pgoff();
    let end = start.wrapping_add(slot.npages());
    let _ = gmem.bindings.store_range(start, end.wrapping_sub(1), None);
    slot.set_gmem_file(std::ptr::null_mut());
}

/// `kvm_gmem_unbind`: a guest_memfd memslot is being freed.
///
/// Without fix F1 (the seed), a file whose count already reached zero but whose release has not
/// run yet makes `kvm_gmem_get_file` return NULL, and unbind returns leaving the bindings in
/// place: the memslot is freed and the release later writes to it. With F1, a dying file's
/// bindings are removed without the (unneeded) invalidate lock: release cannot run concurrently
/// because it needs `slots_lock`, which the caller holds.
pub fn kvm_gmem_unbind(kvm: &Kvm, slot: MemslotRef<'_>) {
    if !kvm.profile().has_fix(Fix::F1DyingGmemUnbind) {
        // Nothing to do if the underlying file was already closed (or is being closed right
        // now): kvm_gmem_release() invalidates all bindings.
        let Some(file) = kvm_gmem_get_file(slot) else {
            return;
        };
        let gmem = gmem_of(&file);
        let mapping = file.inode().mapping();
        let lock = mapping.invalidate_lock();
        let start = slot.gmem_pgoff();
        let end = start.wrapping_add(slot.npages());
        let _ = gmem.bindings.store_range(start, end.wrapping_sub(1), None);
        // synchronize_srcu(&kvm->srcu) ensured that kvm_gmem_get_pfn() cannot see this memslot.
        slot.set_gmem_file(std::ptr::null_mut());
        drop(lock);
        return;
    }
    // Nothing to do if the file was already released: release cleared gmem.file. (This is also
    // the path of kvm_destroy_vm, which runs without slots_lock: no guest_memfd of the VM can be
    // alive then, since each holds a VM reference.)
    if slot.gmem_file_is_null() {
        return;
    }
    match kvm_gmem_get_file(slot) {
        None => {
            // The file is dying: its release is pending and cannot run before slots_lock is
            // dropped, so the file (and its kvm_gmem) is still there.
            let _rcu = gmem_sync::rcu::rcu_read_lock();
            let dying = slot.gmem_file().load(gmem_sync::atomic::Ordering::Acquire);
            // SAFETY: release (which ends with the RCU-deferred free) needs slots_lock, held by
            // our caller, so the dying file's memory is still valid.
            let dying = unsafe { &*dying };
            __kvm_gmem_unbind(slot, gmem_of(dying));
        }
        Some(file) => {
            let lock = file.inode().mapping().invalidate_lock();
            __kvm_gmem_unbind(slot, gmem_of(&file));
            drop(lock);
        }
    }
}

/// What `kvm_gmem_get_pfn` hands back: the pfn, a referenced page (the caller puts it), and the
/// largest mapping order the memory allows.
#[derive(Debug)]
pub struct GmemPfn<'a> {
    /// The pfn backing the gfn.
    pub pfn: Pfn,
    /// The folio, with a reference the caller owns (`kvm_release_page_*`).
    pub page: Folio<'a>,
    /// `*max_order`: always 0 (order-0 folios).
    pub max_order: u8,
}

/// `__kvm_gmem_get_pfn`: returns a locked, referenced folio.
fn __kvm_gmem_get_pfn<'f>(file: &'f File, slot: MemslotRef<'_>, index: PgOff) -> KResult<(Folio<'f>, Pfn, bool)> {
    let gmem_file = slot.gmem_file().load(gmem_sync::atomic::Ordering::Acquire);
    if !std::ptr::eq(file, gmem_file) {
        return Err(get_pfn_wrong_file(file, gmem_file));
    }
    let gmem = gmem_of(file);
    let bound = gmem.bindings.load(index.0);
    if bound != Some(slot.handle) {
        return Err(get_pfn_wrong_binding(file, slot, index, bound));
    }
    let folio = kvm_gmem_get_folio(file.inode(), index)?;
    if folio.test_hwpoison() {
        folio.unlock();
        folio.put();
        return Err(Errno::EHWPOISON);
    }
    let pfn = folio.file_pfn(index);
    let is_prepared = folio.test_uptodate();
    Ok((folio, pfn, is_prepared))
}

/// The `slot->gmem.file != file` exit of `__kvm_gmem_get_pfn`. Out of line (with the other error
/// exits) so that the lookup stays small; `#[track_caller]` keeps the WARN_ON_ONCE's call site
/// (its once-key) at the check in `__kvm_gmem_get_pfn`.
#[cold]
#[inline(never)]
#[track_caller]
fn get_pfn_wrong_file(file: &File, gmem_file: *mut File) -> Errno {
    file.machine()
        .warnings
        .warn_on_once(!gmem_file.is_null(), || "__kvm_gmem_get_pfn: slot bound to a different file".into());
    Errno::EFAULT
}

/// The `xa_load(&gmem->bindings, index) != slot` exit of `__kvm_gmem_get_pfn` (see
/// [`get_pfn_wrong_file`]).
#[cold]
#[inline(never)]
#[track_caller]
fn get_pfn_wrong_binding(file: &File, slot: MemslotRef<'_>, index: PgOff, bound: Option<SlabHandle>) -> Errno {
    file.machine().warnings.warn_on_once(bound.is_some(), || {
        format!("__kvm_gmem_get_pfn: index {index:?} bound to {bound:?}, not {:?}", slot.handle)
    });
    Errno::EIO
}

/// Test-only ways to break guest_memfd's reference protocol, so that tests and loom models can
/// show that the use-after-free each causes is reported (see [`Kvm::weaken_gmem_for_test`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum GmemWeakening {
    /// The kernel's protocol.
    None = 0,
    /// `kvm_gmem_get_pfn` drops the reference it should hand to its caller together with the
    /// folio lock: the caller holds the folio with no reference, and a racing truncation frees
    /// it. (Its caller must then not put it.) Checked builds only (debug and loom): the
    /// release hot path does not read the switch.
    NoReferenceForCaller = 1,
}

impl Kvm {
    /// Test-only: breaks guest_memfd's reference protocol as `weakening` says
    /// ([`GmemWeakening::None`] restores the kernel's). Set it before the threads it concerns
    /// start.
    #[doc(hidden)]
    pub fn weaken_gmem_for_test(&self, weakening: GmemWeakening) {
        self.gmem_weakening.set(weakening as u8);
    }
}

/// `kvm_gmem_get_pfn`: the pfn backing `gfn` of a guest_memfd memslot, preparing the folio on
/// first use. The caller holds `kvm->srcu` (the slot comes from a generation it protects).
pub fn kvm_gmem_get_pfn<'a>(kvm: &'a Kvm, slot: MemslotRef<'_>, gfn: Gfn) -> KResult<GmemPfn<'a>> {
    let index = kvm_gmem_get_index(slot, gfn);
    let file = kvm_gmem_get_file(slot).ok_or(Errno::EFAULT)?;
    let (folio, pfn, is_prepared) = __kvm_gmem_get_pfn(&file, slot, index)?;
    let result = if is_prepared { Ok(()) } else { kvm_gmem_prepare_folio(kvm, slot, gfn, folio) };
    folio.unlock();
    // Only checked builds have the switch, so the release hot path does not even read it.
    if gmem_sync::freed::CHECKED
        && result.is_ok()
        && kvm.gmem_weakening.get() == GmemWeakening::NoReferenceForCaller as u8
    {
        folio.put();
    }
    // The folio lives in the machine's memory, which outlives the file reference.
    let page = Folio::from_pfn(&kvm.machine().mem, folio.pfn());
    drop(file);
    match result {
        Ok(()) => Ok(GmemPfn { pfn, page, max_order: 0 }),
        Err(errno) => {
            page.put();
            Err(errno)
        }
    }
}

/// The `post_populate` callback of `kvm_gmem_populate` (`kvm_gmem_populate_cb`): `(kvm, gfn,
/// pfn, src, order, opaque)`.
pub type PostPopulate<'p> = &'p dyn Fn(&Kvm, Gfn, Pfn, &PopulateSource<'_>, u8, &mut dyn Any) -> KResult<()>;

/// `kvm_gmem_populate`: initialise not-yet-prepared private pages through the arch's launch
/// path. Returns the number of pages done, or the error if none were done. The caller holds
/// `slots_lock`. `source` is the user buffer (`void __user *src`; page `i` of the range at
/// `src + i * PAGE_SIZE`), `opaque` the callback's argument block.
pub fn kvm_gmem_populate(
    kvm: &Kvm,
    slots_lock: &gmem_sync::MutexGuard<'_, ()>,
    start_gfn: Gfn,
    source: PopulateSource<'_>,
    npages: i64,
    post_populate: PostPopulate<'_>,
    opaque: &mut dyn Any,
) -> KResult<i64> {
    lockdep_assert_held(&SLOTS_LOCK);
    let warnings = &kvm.machine().warnings;
    match kvm.profile().version {
        KernelVersion::V6_14 if npages < 0 => return Err(Errno::EINVAL),
        KernelVersion::V6_18 if warnings.warn_on_once(npages <= 0, || "kvm_gmem_populate: npages <= 0".into()) => {
            return Err(Errno::EINVAL)
        }
        _ => {}
    }
    let slots = kvm.memslots_locked(slots_lock);
    let slot = slots.find_gfn(start_gfn).map(|entry| kvm.memslot(entry));
    let slot = slot.filter(|slot| slot.has_gmem()).ok_or(Errno::EINVAL)?;
    let file = kvm_gmem_get_file(slot).ok_or(Errno::EFAULT)?;
    let lock = file.inode().mapping().invalidate_lock();
    let npages = (slot.npages() - (start_gfn.0 - slot.base_gfn().0)).min(npages as u64);
    let mut result = Ok(());
    let mut i = 0u64;
    while i < npages {
        if kvm.machine().signal_pending() {
            result = Err(Errno::EINTR);
            break;
        }
        let gfn = start_gfn.offset(i);
        let index = kvm_gmem_get_index(slot, gfn);
        let (folio, pfn, is_prepared) = match __kvm_gmem_get_pfn(&file, slot, index) {
            Ok(found) => found,
            Err(errno) => {
                result = Err(errno);
                break;
            }
        };
        if is_prepared {
            folio.unlock();
            folio.put();
            result = Err(Errno::EEXIST);
            break;
        }
        folio.unlock();
        let mut max_order: u8 = 0;
        warnings.warn_on(gfn.0 & ((1 << max_order) - 1) != 0 || npages - i < 1 << max_order, || {
            "kvm_gmem_populate: misaligned chunk".into()
        });
        let step = loop {
            if kvm.range_has_memory_attributes(gfn, gfn.offset(1 << max_order), PRIVATE, PRIVATE) {
                break Some(1u64 << max_order);
            }
            if max_order == 0 {
                break None;
            }
            max_order -= 1;
        };
        let outcome = match step {
            None => Err(Errno::EINVAL),
            Some(_) => {
                let page_source = source.advance(i);
                let outcome = post_populate(kvm, gfn, pfn, &page_source, max_order, opaque);
                if outcome.is_ok() {
                    folio.note_populated();
                    kvm_gmem_mark_prepared(folio);
                }
                outcome
            }
        };
        folio.put();
        if let Err(errno) = outcome {
            result = Err(errno);
            break;
        }
        i += 1 << max_order;
    }
    drop(lock);
    drop(file);
    match result {
        Err(errno) if i == 0 => Err(errno),
        _ => Ok(i as i64),
    }
}

const PRIVATE: u64 = crate::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;

/// `kvm_gmem_mmap` (v6.18): only MMAP files, only shared mappings.
fn kvm_gmem_mmap(file: &File, vma: &mut Vma) -> KResult<()> {
    if !kvm_gmem_supports_mmap(file.inode()) {
        return Err(Errno::ENODEV);
    }
    if vma.vm_flags & (VM_SHARED | VM_MAYSHARE) != VM_SHARED | VM_MAYSHARE {
        return Err(Errno::EINVAL);
    }
    vma.vm_ops = Some(&KVM_GMEM_VM_OPS);
    Ok(())
}

/// `kvm_gmem_fault_user_mapping` (v6.18): a host access through an mmap. SIGBUS past EOF and for
/// files that are not INIT_SHARED; otherwise the folio, zeroed and marked uptodate on first
/// touch (no arch prepare: INIT_SHARED is refused for private-memory VMs).
fn kvm_gmem_fault_user_mapping<'a>(vmf: &'a VmFault<'a>) -> Result<Folio<'a>, VmFaultError> {
    let file = vmf.vma.file.as_ref().expect("a guest_memfd VMA has its file");
    let inode = file.inode();
    if ((vmf.pgoff.0 as i64).wrapping_shl(PAGE_SHIFT)) >= inode.size() {
        return Err(VmFaultError::Sigbus);
    }
    if inode.i_private() & GUEST_MEMFD_FLAG_INIT_SHARED == 0 {
        return Err(VmFaultError::Sigbus);
    }
    let folio = kvm_gmem_get_folio(inode, vmf.pgoff).map_err(|errno| {
        if errno == Errno::EAGAIN {
            VmFaultError::Retry
        } else {
            vmf_error(errno)
        }
    })?;
    if inode.mapping().machine().warnings.warn_on_once(folio.order() != 0, || "large folio in a gmem fault".into()) {
        folio.unlock();
        folio.put();
        return Err(VmFaultError::Sigbus);
    }
    if !folio.test_uptodate() {
        folio.clear_page(0);
        kvm_gmem_mark_prepared(folio);
    }
    Ok(folio)
}

/// The `kvm_gmem` of a guest_memfd file (for invariants, dumps and the uAPI layer).
pub fn gmem_of_file(file: &File) -> Option<&KvmGmem> {
    if is_gmem_file(file) {
        file.private::<KvmGmem>()
    } else {
        None
    }
}

/// Memory failure on the folio at `index` of a guest_memfd (`memory_failure` →
/// `kvm_gmem_error_folio`). EINVAL without `CONFIG_MEMORY_FAILURE`; ENOENT if no folio is there.
pub fn gmem_memory_failure(file: &File, index: PgOff) -> KResult<MfResult> {
    let kvm = &gmem_of(file).kvm;
    if !kvm.profile().config.memory_failure {
        return Err(Errno::EINVAL);
    }
    file.inode().mapping().memory_failure(index)
}

/// `inode->i_mapping->a_ops->migrate_folio` on the folio at `index` (page migration or
/// compaction reaching a guest_memfd folio).
pub fn gmem_migrate(file: &File, index: PgOff) -> KResult<()> {
    let mapping = file.inode().mapping();
    let folio = mapping.get_folio(index).ok_or(Errno::ENOENT)?;
    let result = mapping.migrate_folio(folio, folio);
    folio.put();
    result
}
