//! gmem-mm: the kernel memory-management and VFS objects guest_memfd runs on.
//!
//! # Map of the crate
//!
//! | module | kernel counterpart |
//! |---|---|
//! | [`errno`] | `include/uapi/asm-generic/errno*.h`: the error values userspace sees |
//! | [`types`] | `pfn_t`, `pgoff_t`, `loff_t`, `PAGE_SIZE`: index-space newtypes |
//! | [`machine`] | the "boot": physical memory, the WARN registry, fault injection, a clock |
//! | [`page`] | `struct page`, the memmap and a page allocator (frames with contents) |
//! | [`folio`] | `struct folio` and its flag, lock and refcount helpers (`include/linux/pagemap.h`, `mm.h`) |
//! | [`xarray`] | `lib/xarray.c`: lock-free readers, multi-index entries |
//! | [`filemap`] | `struct address_space`, the page cache (`mm/filemap.c`, `mm/truncate.c`) |
//! | [`inode`] | `struct inode`, `inode_operations`, `file_modified` |
//! | [`file`](mod@file) | `struct file`, `file_operations`, `file_ref`, `fget`/`fput`/`get_file_active` (`fs/file.c`, `fs/file_table.c`) |
//! | [`fdtable`] | the per-process descriptor table (lowest free descriptor first) |
//! | [`mmu_notifier`] | `mm/mmu_notifier.c`: secondary MMUs (KVM) told of every user-mapping invalidation |
//! | [`huge_memory`] | `mm/huge_memory.c`: anonymous transparent huge pages (PMD mappings, split) |
//! | [`vma`] | VMAs, `vm_operations_struct` and the user fault path (`mm/memory.c`) |
//! | [`shmem`] | shared anonymous memory (`mm/shmem.c`: `shmem_zero_setup`, `shmem_fault`, the hole punch) |
//! | [`vfs`] | the generic system-call checks in kernel order (`fs/open.c`, `fs/read_write.c`, `mm/mmap.c`, `fs/stat.c`) |
//! | [`slab`] | `SLAB_TYPESAFE_BY_RCU` objects: storage that is reused but never unmapped, so stale handles are detectable |
//!
//! # What is modelled, and what is not
//!
//! Modelled: order-0 folios, and order-9 anonymous transparent huge pages (PMD mappings, split
//! on partial unmap; [`huge_memory`]), with refcount, lock,
//! uptodate and hwpoison; page contents, so data integrity can be checked; a frame generation that
//! changes whenever a frame is freed, so a stale pfn is detectable exactly; lock-free page-cache
//! lookups with the kernel's `folio_try_get` + recheck protocol; deferred file release through
//! task work; the VFS checks that run before a file's own operations; MMU notifiers on an address
//! space (munmap, MADV_DONTNEED and MADV_REMOVE tell secondary MMUs before pages are freed).
//!
//! The reverse map of file mappings (`i_mmap`) is modelled: truncation, hole punching and memory
//! failure unmap a mapped folio from every VMA mapping it, with an MMU notifier invalidation on
//! each VMA's address space, before the folio leaves the page cache.
//!
//! Not modelled: swap, reclaim and writeback (guest_memfd memory is unevictable), LRU lists,
//! `_mapcount` (`folio_mapped` asks the reverse map instead), the dentry cache, permissions beyond
//! the mode bits, user page tables beyond the presence of file PTEs and the PMDs that map an
//! anonymous huge page (every host access through a mapping goes through the fault handler; this
//! is observably the same for guest_memfd because it never maps pages writably-shared with state
//! of its own).
#![deny(missing_docs)]

pub mod errno;
pub mod fdtable;
pub mod file;
pub mod filemap;
pub mod folio;
pub mod huge_memory;
pub mod inode;
pub mod machine;
pub mod mmu_notifier;
pub mod page;
pub mod shmem;
pub mod slab;
pub mod types;
pub mod vfs;
pub mod vma;
pub mod xarray;

pub use errno::{Errno, KResult};
pub use machine::{Machine, MachineConfig, VfsVersion};
pub use types::{Pfn, PgOff, PAGE_SHIFT, PAGE_SIZE};
pub use vfs::Process;
