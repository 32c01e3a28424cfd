//! Shared anonymous memory (`mm/shmem.c`, as far as `MAP_SHARED | MAP_ANONYMOUS` reaches it).
//!
//! A shared anonymous mapping is backed by an unlinked shmem file (`shmem_zero_setup`, the
//! kernel's "/dev/zero (deleted)"), so it behaves as a file mapping, not as private anonymous
//! memory: its pages live in the file's page cache, `MADV_DONTNEED` only zaps the PTEs and the
//! data stays, `MADV_REMOVE` punches the file (`shmem_fallocate`) and the range reads zeroes,
//! `MADV_FREE` is EINVAL (the VMA has `vm_ops`, so it is not `vma_is_anonymous`). Measured on
//! Linux 6.18.44 (`docs/FIDELITY.md`, probe p9).
//!
//! Modelled: the fault (`shmem_fault`: a zeroed page, allocated on first touch, SIGBUS past the
//! end of the object) and the hole punch. Not modelled: swap, huge pages (`shmem_enabled` is
//! `never` on the measured machine), tmpfs files reachable by name, `memfd_create`.

use crate::errno::{Errno, KResult};
use crate::file::{alloc_file_pseudo, File, FileOperations, FileRef, EMPTY_FOPS, O_RDWR};
use crate::filemap::EMPTY_AOPS;
use crate::folio::Folio;
use crate::inode::{InodeInit, EMPTY_IOPS, S_IFREG};
use crate::machine::Machine;
use crate::types::PAGE_SIZE;
use crate::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use crate::vma::{vmf_error, VmFault, VmFaultError, VmOperations, Vma};
use gmem_sync::Arc;

/// `shmem_file_operations`, the parts a shared anonymous mapping uses.
pub static SHMEM_FOPS: FileOperations =
    FileOperations { name: "shmem", fallocate: Some(shmem_fallocate), mmap: Some(shmem_mmap), ..EMPTY_FOPS };

/// `shmem_anon_vm_ops`.
static SHMEM_VM_OPS: VmOperations = VmOperations { name: "shmem", fault: shmem_fault };

/// `shmem_zero_setup`'s file: an unlinked shmem object of `size` bytes, opened read-write.
#[doc(alias("shmem_kernel_file_setup", "shmem_zero_setup"))]
pub fn shmem_zero_file(machine: &Arc<Machine>, size: u64) -> FileRef {
    alloc_file_pseudo(
        machine,
        "dev/zero",
        &SHMEM_FOPS,
        O_RDWR,
        InodeInit {
            mode: S_IFREG | 0o777,
            size: size as i64,
            i_private: 0,
            i_op: &EMPTY_IOPS,
            a_ops: &EMPTY_AOPS,
            a_private: None,
            noexec: false,
        },
        None,
    )
}

/// Whether `file` is a shmem object.
pub fn is_shmem_file(file: &File) -> bool {
    file.has_fops(&SHMEM_FOPS)
}

/// `shmem_mmap`: the VMA faults through `shmem_fault`.
fn shmem_mmap(_file: &File, vma: &mut Vma) -> KResult<()> {
    vma.vm_ops = Some(&SHMEM_VM_OPS);
    Ok(())
}

/// `shmem_fault`: the page at `pgoff`, allocated and zeroed on first touch; SIGBUS past the end
/// of the object.
fn shmem_fault<'a>(vmf: &'a VmFault<'a>) -> Result<Folio<'a>, VmFaultError> {
    let file = vmf.vma.file.as_ref().expect("a shmem VMA has its file");
    let inode = file.inode();
    if vmf.pgoff.0 >= (inode.size() as u64).div_ceil(PAGE_SIZE) {
        return Err(VmFaultError::Sigbus);
    }
    let folio = inode.mapping().grab_folio(vmf.pgoff).map_err(vmf_error)?;
    if !folio.test_uptodate() {
        folio.clear_page(0);
        folio.mark_uptodate();
    }
    Ok(folio)
}

/// `shmem_fallocate`, the hole punch only (the one a shared anonymous mapping reaches, through
/// `MADV_REMOVE`): the whole pages of the range leave the page cache, partial pages are zeroed.
/// Allocation is not modelled (nothing can name the file to allocate in it).
fn shmem_fallocate(file: &File, mode: i32, offset: i64, len: i64) -> KResult<()> {
    if mode & !(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE) != 0 {
        return Err(Errno::EOPNOTSUPP);
    }
    if mode & FALLOC_FL_PUNCH_HOLE == 0 {
        return Err(Errno::ENOSYS);
    }
    let mapping = file.inode().mapping();
    let lock = mapping.invalidate_lock();
    // shmem_fallocate: unmap_mapping_range of the whole pages, then shmem_truncate_range.
    let first = (offset as u64).div_ceil(PAGE_SIZE);
    let end = (offset as u64).saturating_add(len as u64) / PAGE_SIZE;
    if end > first {
        mapping.unmap_mapping_pages(first, end - first, false);
    }
    mapping.truncate_range(offset, offset.saturating_add(len) - 1);
    drop(lock);
    file.file_modified();
    Ok(())
}
