//! `struct file`, `struct file_operations`, and the reference protocol around them
//! (`fs/file.c`, `fs/file_table.c`, `include/linux/file_ref.h`).
//!
//! A file's reference count (`f_ref`) is separate from the Rust allocation: a [`FileRef`] is one
//! counted reference (`fget`/`get_file` take one, dropping it is `fput`). When the count reaches
//! zero the file is *dead*: [`get_file_active`] fails from then on, but `->release` has not run
//! yet — it is queued as task work ([`gmem_sync::task`]) and runs when the task returns to user
//! space, as `____fput` does. That window is where upstream fix F1 lives, and the model keeps it.
//!
//! File memory is freed through RCU after release (`SLAB_TYPESAFE_BY_RCU` in the kernel), so a
//! reader that loaded a file pointer under [`gmem_sync::rcu::rcu_read_lock`] may
//! still look at it while it dies.

use crate::errno::KResult;
use crate::inode::{Inode, InodeInit};
use crate::machine::Machine;
use crate::vma::Vma;
use gmem_sync::atomic::{fence, AtomicI64, AtomicPtr, AtomicU32, Ordering};
use gmem_sync::rcu::{call_rcu_drop, rcu_read_lock};
use gmem_sync::{task, Arc};
use std::any::Any;
use std::fmt;
use std::ptr::NonNull;

/// `FMODE_READ`.
pub const FMODE_READ: u32 = 1 << 0;
/// `FMODE_WRITE`.
pub const FMODE_WRITE: u32 = 1 << 1;
/// `FMODE_LSEEK`: set only when the file has an llseek operation.
pub const FMODE_LSEEK: u32 = 1 << 2;
/// `FMODE_PREAD`: never set on anonymous-inode files, which is why pread gives ESPIPE.
pub const FMODE_PREAD: u32 = 1 << 3;
/// `FMODE_PWRITE`.
pub const FMODE_PWRITE: u32 = 1 << 4;
/// `FMODE_CAN_READ`: the file has a read operation.
pub const FMODE_CAN_READ: u32 = 1 << 17;
/// `FMODE_CAN_WRITE`: the file has a write operation.
pub const FMODE_CAN_WRITE: u32 = 1 << 18;
/// `FMODE_OPENED`.
pub const FMODE_OPENED: u32 = 1 << 19;

/// `O_RDONLY`.
pub const O_RDONLY: u32 = 0;
/// `O_WRONLY`.
pub const O_WRONLY: u32 = 1;
/// `O_RDWR`.
pub const O_RDWR: u32 = 2;
/// `O_ACCMODE`.
pub const O_ACCMODE: u32 = 3;
/// `O_LARGEFILE` (x86-64 value).
pub const O_LARGEFILE: u32 = 0o100000;

/// `fallocate(file, mode, offset, len)`.
pub type FallocateFn = fn(&File, i32, i64, i64) -> KResult<()>;

/// `llseek(file, offset, whence)`: the new position.
pub type LlseekFn = fn(&File, i64, i32) -> KResult<u64>;

/// `struct file_operations`. A `None` hook behaves as the kernel's NULL pointer does at each
/// call site (the VFS checks for it and returns its own errno).
#[derive(Debug)]
pub struct FileOperations {
    /// For diagnostics and `/proc` style names.
    pub name: &'static str,
    /// `release(inode, file)`: runs once, after the last reference is dropped.
    pub release: Option<fn(&Inode, &File) -> i32>,
    /// `fallocate(file, mode, offset, len)`.
    pub fallocate: Option<FallocateFn>,
    /// `mmap(file, vma)`: may set `vma.vm_ops`.
    pub mmap: Option<fn(&File, &mut Vma) -> KResult<()>>,
    /// Whether `read`/`read_iter` exist (decides `FMODE_CAN_READ`; no modelled file reads).
    pub has_read: bool,
    /// Whether `write`/`write_iter` exist (`FMODE_CAN_WRITE`).
    pub has_write: bool,
    /// `llseek(file, offset, whence)`: its presence sets `FMODE_LSEEK`.
    pub llseek: Option<LlseekFn>,
}

/// `noop_llseek`: the position does not move; returns `f_pos`. Files that use it (the KVM VM,
/// vCPU and `/dev/kvm` files) have no reads or writes, so `f_pos` is never anything but 0.
pub fn noop_llseek(_file: &File, _offset: i64, _whence: i32) -> KResult<u64> {
    Ok(0)
}

/// The operations of files that have none (character devices such as the terminal).
pub static EMPTY_FOPS: FileOperations = FileOperations {
    name: "empty",
    release: None,
    fallocate: None,
    mmap: None,
    has_read: false,
    has_write: false,
    llseek: None,
};

/// `struct file`.
pub struct File {
    /// `f_ref`: the number of references; 0 means dead (release pending or done).
    f_ref: AtomicI64,
    f_mode: u32,
    f_flags: AtomicU32,
    f_op: &'static FileOperations,
    f_inode: Arc<Inode>,
    private_data: Option<Arc<dyn Any + Send + Sync>>,
    machine: Arc<Machine>,
    name: &'static str,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("name", &self.name)
            .field("f_op", &self.f_op.name)
            .field("f_ref", &self.f_ref.load(Ordering::Relaxed))
            .field("ino", &self.f_inode.ino())
            .finish()
    }
}

impl File {
    /// `f_op`.
    pub fn f_op(&self) -> &'static FileOperations {
        self.f_op
    }

    /// Whether this file's operations are `fops` (the kernel's `file->f_op == &fops`).
    pub fn has_fops(&self, fops: &'static FileOperations) -> bool {
        std::ptr::eq(self.f_op, fops)
    }

    /// `file_inode(file)`.
    pub fn inode(&self) -> &Arc<Inode> {
        &self.f_inode
    }

    /// `f_mode`.
    pub fn f_mode(&self) -> u32 {
        self.f_mode
    }

    /// `f_flags`.
    pub fn f_flags(&self) -> u32 {
        self.f_flags.load(Ordering::Relaxed)
    }

    /// `file->f_flags |= flags`.
    pub fn add_f_flags(&self, flags: u32) {
        self.f_flags.fetch_or(flags, Ordering::Relaxed);
    }

    /// `file->private_data`.
    pub fn private_data(&self) -> Option<&Arc<dyn Any + Send + Sync>> {
        self.private_data.as_ref()
    }

    /// `file->private_data`, downcast to the type its owner stored.
    pub fn private<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.private_data.as_ref()?.downcast_ref::<T>()
    }

    /// The machine the file lives on.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The anonymous name (`[kvm-gmem]`, `kvm-vm`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Current reference count (0: dead).
    pub fn ref_count(&self) -> i64 {
        self.f_ref.load(Ordering::Acquire)
    }

    /// `file_modified`: mtime and ctime change.
    pub fn file_modified(&self) {
        self.f_inode.update_time(self.machine.now());
    }

    /// `file_ref_get`: one more reference unless the file is already dead.
    #[doc(alias = "file_ref_get")]
    fn ref_get(&self) -> bool {
        self.f_ref.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |count| (count > 0).then_some(count + 1)).is_ok()
    }
}

/// One counted reference to a file (`struct file *` obtained from `fget`/`get_file`).
/// Dropping it is `fput`.
#[doc(alias = "fput")]
pub struct FileRef {
    ptr: NonNull<File>,
}

// SAFETY: a FileRef is a counted reference; File is Sync (its mutable state is atomic) and the
// memory stays valid while the count is held.
unsafe impl Send for FileRef {}
// SAFETY: as above.
unsafe impl Sync for FileRef {}

impl fmt::Debug for FileRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

impl std::ops::Deref for FileRef {
    type Target = File;
    fn deref(&self) -> &File {
        // SAFETY: we hold a reference, so release (and the RCU free after it) has not happened.
        unsafe { self.ptr.as_ref() }
    }
}

impl Clone for FileRef {
    /// `get_file`: the caller already holds a reference, so the count cannot be zero.
    fn clone(&self) -> FileRef {
        let old = self.f_ref.fetch_add(1, Ordering::Relaxed);
        assert!(old > 0, "get_file on a dead file");
        FileRef { ptr: self.ptr }
    }
}

impl Drop for FileRef {
    /// `fput`: the last reference queues `__fput` as task work (`____fput`).
    fn drop(&mut self) {
        if self.f_ref.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            let dying = DyingFile(self.ptr);
            task::task_work_add(Box::new(move || dying.fput_final()));
        }
    }
}

impl FileRef {
    /// The raw pointer, for non-owning publication (`slot->gmem.file = file`).
    pub fn as_ptr(&self) -> *mut File {
        self.ptr.as_ptr()
    }

    /// Whether two references are to the same file.
    pub fn ptr_eq(&self, other: &FileRef) -> bool {
        self.ptr == other.ptr
    }
}

/// A file whose count reached zero, on its way to `__fput`.
struct DyingFile(NonNull<File>);

// SAFETY: nobody else can touch the file's mutable state any more (count is zero) except RCU
// readers, which only read atomics.
unsafe impl Send for DyingFile {}

impl DyingFile {
    /// `__fput`: `->release`, drop the inode reference, free the file after a grace period.
    #[doc(alias("____fput", "__fput"))]
    fn fput_final(self) {
        // SAFETY: the memory is valid until the call_rcu_drop below.
        let file = unsafe { self.0.as_ref() };
        if let Some(release) = file.f_op.release {
            release(&file.f_inode, file);
        }
        file.f_inode.iput();
        // SAFETY: allocated with Box::into_raw in alloc_file_pseudo; this is the only free.
        unsafe { call_rcu_drop(self.0.as_ptr()) };
    }
}

/// `alloc_file_pseudo` (via `anon_inode_create_getfile`): a new file with one reference on a new
/// inode. `f_mode` is derived as the kernel's `file_init_path` does: read/write from the access
/// mode, `FMODE_LSEEK`/`FMODE_CAN_READ`/`FMODE_CAN_WRITE` only where the operations exist,
/// never `FMODE_PREAD`/`FMODE_PWRITE`.
#[doc(alias = "anon_inode_create_getfile")]
pub fn alloc_file_pseudo(
    machine: &Arc<Machine>,
    name: &'static str,
    fops: &'static FileOperations,
    flags: u32,
    inode: InodeInit,
    private_data: Option<Arc<dyn Any + Send + Sync>>,
) -> FileRef {
    let inode = Inode::new(machine, inode);
    let mut f_mode = FMODE_OPENED;
    match flags & O_ACCMODE {
        O_RDONLY => f_mode |= FMODE_READ,
        O_WRONLY => f_mode |= FMODE_WRITE,
        _ => f_mode |= FMODE_READ | FMODE_WRITE,
    }
    if fops.llseek.is_some() {
        f_mode |= FMODE_LSEEK;
    }
    if f_mode & FMODE_READ != 0 && fops.has_read {
        f_mode |= FMODE_CAN_READ;
    }
    if f_mode & FMODE_WRITE != 0 && fops.has_write {
        f_mode |= FMODE_CAN_WRITE;
    }
    let file = Box::new(File {
        f_ref: AtomicI64::new(1),
        f_mode,
        f_flags: AtomicU32::new(flags),
        f_op: fops,
        f_inode: inode,
        private_data,
        machine: machine.clone(),
        name,
    });
    FileRef { ptr: NonNull::from(Box::leak(file)) }
}

/// `get_file_active(&ptr)`: a reference to the file `slot` points at, or `None` if the pointer is
/// NULL or the file is already dead (its count reached zero, release may still be pending).
/// No retry, exactly like the kernel: a concurrent change of `slot` also gives `None`.
#[doc(alias = "__get_file_rcu")]
pub fn get_file_active(slot: &AtomicPtr<File>) -> Option<FileRef> {
    let _rcu = rcu_read_lock();
    let ptr = NonNull::new(slot.load(Ordering::Acquire))?;
    // SAFETY: the pointer was published in `slot` and files are freed only after an RCU grace
    // period that starts after release cleared every published pointer; we are inside an RCU
    // read-side section.
    let file = unsafe { ptr.as_ref() };
    if !file.ref_get() {
        return None;
    }
    let candidate = FileRef { ptr };
    if slot.load(Ordering::SeqCst) == ptr.as_ptr() {
        Some(candidate)
    } else {
        // The slot changed under us: drop the reference we took (this may be the last one).
        drop(candidate);
        None
    }
}

/// A non-owning, RCU-protected file pointer slot (`struct file __rcu *`), such as a memslot's
/// `gmem.file`.
pub type FilePtr = AtomicPtr<File>;
