//! The script's descriptor numbers, mapped onto the runner's real descriptors.
//!
//! The script format fixes descriptor numbering: lowest free first, with 0, 1 and 2 open and
//! not guest_memfds, exactly as a fresh process sees it (`docs/script-format.md`, "Lines").
//! The runner's process has other descriptors open (`/dev/kvm`, the test harness's own), so
//! the kvm backend keeps a table from the script's numbers to real descriptors and
//! translates every number the script passes. A number the table does not hold is passed to
//! the kernel as `-1` (or `u32::MAX` in a memslot's `guest_memfd`), which no process has
//! open, so the kernel itself answers EBADF in its own order of checks.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd};

use kvm_ioctls::{VcpuFd, VmFd};

/// What a script descriptor refers to.
#[derive(Debug)]
pub enum Object {
    /// One of the standard streams 0, 1 and 2: `/dev/null` opened read-write by the backend,
    /// so nothing the script does reaches the runner's real streams.
    Stream(OwnedFd),
    /// A VM (`KVM_CREATE_VM`).
    Vm(VmFd),
    /// A vCPU (`KVM_CREATE_VCPU`).
    Vcpu(VcpuFd),
    /// A guest_memfd (`KVM_CREATE_GUEST_MEMFD`).
    GuestMemfd(OwnedFd),
    /// A device file the script opened (`/dev/sev`).
    Device(OwnedFd),
}

impl Object {
    /// The runner's real descriptor.
    pub fn raw(&self) -> i32 {
        match self {
            Object::Stream(fd) | Object::GuestMemfd(fd) | Object::Device(fd) => fd.as_raw_fd(),
            Object::Vm(vm) => vm.as_raw_fd(),
            Object::Vcpu(vcpu) => vcpu.as_raw_fd(),
        }
    }
}

/// The script's descriptor table.
#[derive(Debug, Default)]
pub struct FdTable {
    objects: BTreeMap<i32, Object>,
}

impl FdTable {
    /// Installs `object` at the lowest free script descriptor and returns it.
    pub fn install(&mut self, object: Object) -> i32 {
        let fd = (0..).find(|fd| !self.objects.contains_key(fd)).expect("an i32 is free");
        self.objects.insert(fd, object);
        fd
    }

    /// The object at script descriptor `fd`.
    pub fn get(&self, fd: i32) -> Option<&Object> {
        self.objects.get(&fd)
    }

    /// The real descriptor for script descriptor `fd`, or `-1` (never open) if it is closed.
    pub fn raw(&self, fd: i32) -> i32 {
        self.get(fd).map_or(-1, Object::raw)
    }

    /// Removes script descriptor `fd`, handing its object to the caller to close.
    pub fn remove(&mut self, fd: i32) -> Option<Object> {
        self.objects.remove(&fd)
    }

    /// Closes every descriptor, highest first (VMs after the guest_memfds that pin them).
    pub fn clear(&mut self) {
        while self.objects.pop_last().is_some() {}
    }
}
