//! The simulated machine: what one booted kernel owns globally.
//!
//! In the kernel the memmap, the WARN log and fault-injection state are global. The model keeps
//! them in one [`Machine`] value instead, so that many simulated kernels (one per test, one per
//! script) can run in one process without seeing each other's state.

use crate::page::PhysMem;
use gmem_sync::atomic::{AtomicU64, Ordering};
use gmem_sync::inject::FaultInjector;
use gmem_sync::warn::WarnRegistry;
use gmem_sync::Arc;

/// Which generation of the generic VFS/mm code runs. Only the checks whose order or errno
/// differ between the modelled kernels are switched on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VfsVersion {
    /// v6.14: `vfs_fallocate` checks modes bit by bit (EINVAL for mixed COLLAPSE/INSERT/UNSHARE),
    /// and the anonymous-inode filesystem is not yet noexec.
    V6_14,
    /// v6.18: `vfs_fallocate` switches on the mode (EOPNOTSUPP for every invalid combination,
    /// WRITE_ZEROES known), and anonymous-inode files are noexec (PROT_EXEC mmap → EPERM).
    V6_18,
}

/// How big a machine to boot, and which generic kernel code it runs.
#[derive(Clone, Debug)]
pub struct MachineConfig {
    /// Physical memory in 4 KiB frames. Frames are materialised lazily, so a large value costs
    /// nothing until it is used; allocation beyond it fails with ENOMEM.
    pub memory_pages: u64,
    /// The generic VFS/mm behaviour.
    pub vfs: VfsVersion,
    /// `CONFIG_MEMORY_FAILURE`: whether memory failure (MADV_HWPOISON, error_remove_folio) exists.
    pub memory_failure: bool,
}

impl Default for MachineConfig {
    fn default() -> Self {
        // 4 GiB: far more than any bundled scenario touches, small enough that a runaway
        // workload fails with ENOMEM instead of exhausting the host.
        MachineConfig { memory_pages: 1 << 20, vfs: VfsVersion::V6_18, memory_failure: true }
    }
}

impl MachineConfig {
    /// A machine small enough for model checking (loom explores every atomic access).
    pub fn tiny(memory_pages: u64) -> Self {
        MachineConfig { memory_pages, ..MachineConfig::default() }
    }
}

/// One booted kernel's global state.
#[derive(Debug)]
pub struct Machine {
    /// Physical memory: the memmap and the page allocator.
    pub mem: PhysMem,
    /// Every WARN the kernel code hit (tests assert it stays empty). Shared with [`PhysMem`],
    /// which reports the host-write faults of a platform memory protection there.
    pub warnings: Arc<WarnRegistry>,
    /// Armed fault-injection points (ENOMEM, pending signals, ...).
    pub inject: Arc<FaultInjector>,
    /// A logical clock for timestamps: every read returns a new, larger value, so "mtime changed"
    /// is exact and deterministic (the model has no wall clock).
    clock: AtomicU64,
    /// `get_next_ino()`.
    next_ino: AtomicU64,
    /// What the machine was booted with.
    pub config: MachineConfig,
}

impl Machine {
    /// Boots a machine.
    pub fn new(config: MachineConfig) -> Arc<Machine> {
        let inject = Arc::new(FaultInjector::new());
        let warnings = Arc::new(WarnRegistry::new());
        Arc::new(Machine {
            mem: PhysMem::new(config.memory_pages, inject.clone(), warnings.clone()),
            warnings,
            inject,
            clock: AtomicU64::new(1),
            next_ino: AtomicU64::new(1),
            config,
        })
    }

    /// `current_time()`: a strictly increasing logical timestamp.
    pub fn now(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// `get_next_ino()`: a new inode number.
    pub fn next_ino(&self) -> u64 {
        self.next_ino.fetch_add(1, Ordering::Relaxed)
    }

    /// `signal_pending(current)`, driven by the `signal` fault-injection point.
    pub fn signal_pending(&self) -> bool {
        self.inject.signal_pending()
    }
}
