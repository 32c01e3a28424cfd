//! The uAPI argument structs (kvm-bindings) → the simulator's own argument types.
//!
//! Both conversions destructure the kvm-bindings struct without `..`, so a field added to it (a
//! pad the kernel starts to use) stops this crate compiling until the conversion says what to do
//! with it. `tests/tests/integration/parity.rs` checks at compile time that they move every field
//! to the field of the same name.

use gmem_kvm::attributes::MemoryAttributes;
use gmem_kvm::memslot::UserspaceMemoryRegion2;
use kvm_bindings::{kvm_memory_attributes, kvm_userspace_memory_region2};

/// `struct kvm_userspace_memory_region2` → [`UserspaceMemoryRegion2`]. `pad1` and `pad2` are
/// dropped: the kernel does not read them.
pub const fn userspace_memory_region2(region: &kvm_userspace_memory_region2) -> UserspaceMemoryRegion2 {
    let kvm_userspace_memory_region2 {
        slot,
        flags,
        guest_phys_addr,
        memory_size,
        userspace_addr,
        guest_memfd_offset,
        guest_memfd,
        pad1: _,
        pad2: _,
    } = *region;
    UserspaceMemoryRegion2 {
        slot,
        flags,
        guest_phys_addr,
        memory_size,
        userspace_addr,
        guest_memfd_offset,
        guest_memfd,
    }
}

/// `struct kvm_memory_attributes` → [`MemoryAttributes`].
pub const fn memory_attributes(attrs: &kvm_memory_attributes) -> MemoryAttributes {
    let kvm_memory_attributes { address, size, attributes, flags } = *attrs;
    MemoryAttributes { address, size, attributes, flags }
}
