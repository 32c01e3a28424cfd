//! [`Kvm`] and [`VmFd`]: the kvm-ioctls-shaped handles over a [`SimHost`].

use crate::{Result, SimHost};
use gmem_kvm::KernelProfile;
use gmem_sync::Arc;
use kvm_bindings::{kvm_create_guest_memfd, kvm_memory_attributes, kvm_userspace_memory_region2};
use std::os::raw::c_ulong;
use std::os::unix::io::{AsRawFd, RawFd};

/// `/dev/kvm`, opened by a process on a simulated kernel (mirrors `kvm_ioctls::Kvm`). Unlike
/// kvm-ioctls' it holds no descriptor (the simulated process's table has only VM files and
/// guest_memfds), so it does not implement `AsRawFd`.
#[derive(Debug, Clone)]
pub struct Kvm {
    host: Arc<SimHost>,
}

impl Kvm {
    /// Boots a simulated machine with the default profile (`v6.18`) and opens `/dev/kvm` on it.
    pub fn new() -> Result<Kvm> {
        Ok(Kvm::with_profile(KernelProfile::default()))
    }

    /// Boots a simulated machine with `profile`.
    pub fn with_profile(profile: KernelProfile) -> Kvm {
        Kvm { host: Arc::new(SimHost::new(profile)) }
    }

    /// The process the handles live in (for the file system calls: fallocate, mmap, ...).
    pub fn host(&self) -> &Arc<SimHost> {
        &self.host
    }

    /// `KVM_CHECK_EXTENSION` with a raw capability number.
    pub fn check_extension_raw(&self, c: c_ulong) -> i32 {
        self.host.check_extension(c) as i32
    }

    /// `KVM_CREATE_VM` with the default type.
    pub fn create_vm(&self) -> Result<VmFd> {
        self.create_vm_with_type(0)
    }

    /// `KVM_CREATE_VM` with a machine type (`KVM_X86_SW_PROTECTED_VM`, ...).
    pub fn create_vm_with_type(&self, vm_type: u64) -> Result<VmFd> {
        let fd = self.host.create_vm(vm_type)?;
        Ok(VmFd { host: self.host.clone(), fd })
    }
}

/// A VM file descriptor (mirrors `kvm_ioctls::VmFd`). Dropping it closes the descriptor.
#[derive(Debug)]
pub struct VmFd {
    host: Arc<SimHost>,
    fd: RawFd,
}

/// The descriptor number, through the trait as in kvm-ioctls (there is no inherent `as_raw_fd`,
/// so VMM code that imports `AsRawFd` for kvm-ioctls compiles unchanged).
impl AsRawFd for VmFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl VmFd {
    /// `KVM_CHECK_EXTENSION` on the VM.
    pub fn check_extension_raw(&self, c: c_ulong) -> i32 {
        self.host.vm_check_extension(self.fd, c).unwrap_or(0) as i32
    }

    /// `KVM_CREATE_GUEST_MEMFD`: a new guest_memfd descriptor.
    pub fn create_guest_memfd(&self, gmem: kvm_create_guest_memfd) -> Result<RawFd> {
        self.host.create_guest_memfd(self.fd, &gmem)
    }

    /// `KVM_SET_USER_MEMORY_REGION2`.
    ///
    /// # Safety
    ///
    /// The same contract as kvm-ioctls (the memory at `userspace_addr` must stay valid for the
    /// slot's lifetime). The simulator checks everything the kernel checks and cannot be made
    /// unsound by a bad region, but keeping the signature lets VMM code switch between the two
    /// without edits.
    pub unsafe fn set_user_memory_region2(&self, user_memory_region: kvm_userspace_memory_region2) -> Result<()> {
        self.host.set_user_memory_region2(self.fd, &user_memory_region)
    }

    /// `KVM_SET_MEMORY_ATTRIBUTES`.
    pub fn set_memory_attributes(&self, attr: kvm_memory_attributes) -> Result<()> {
        self.host.set_memory_attributes(self.fd, &attr)
    }

    /// `KVM_ENABLE_CAP` on the VM.
    pub fn enable_cap(&self, cap: &kvm_bindings::kvm_enable_cap) -> Result<()> {
        self.host.enable_cap(self.fd, cap)
    }
}

impl Drop for VmFd {
    fn drop(&mut self) {
        let _ = self.host.close(self.fd);
    }
}
