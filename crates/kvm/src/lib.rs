//! gmem-kvm: `struct kvm` and guest_memfd, function by function.
//!
//! # Map of the crate
//!
//! | module | kernel counterpart |
//! |---|---|
//! | [`profile`] | the kernel being modelled: version, named upstream fixes, configuration |
//! | [`types`] | `gfn_t`, `gpa_t`, memslot ids |
//! | [`vm`] | `/dev/kvm` (`kvm_dev_ioctl_create_vm`), `struct kvm`, `kvm_get_kvm`/`kvm_put_kvm`, `kvm_destroy_vm` |
//! | [`memslot`] | `struct kvm_memory_slot`, SRCU-published generations, `KVM_SET_USER_MEMORY_REGION2` |
//! | [`attributes`] | `KVM_SET_MEMORY_ATTRIBUTES` and the attribute queries |
//! | [`mmu`] | the MMU boundary (`kvm_mmu_unmap_gfn_range`, `kvm_flush_remote_tlbs`) and `mmu_invalidate_*` |
//! | [`mmu_notifier`] | `kvm_mmu_notifier_invalidate_range_start`/`_end`, `kvm_handle_hva_range`: zaps on munmap/madvise of a slot's `userspace_addr` |
//! | [`page_fault`] | the x86 TDP page-fault path: `struct kvm_page_fault`, `kvm_mmu_page_fault` → `kvm_tdp_mmu_page_fault` (faultin, `is_page_fault_stale`, `kvm_tdp_mmu_map`, `kvm_mmu_hugepage_adjust`) |
//! | [`tdp_mmu`] | the software TDP MMU: the direct root (leaf SPTEs at 4K, 2M, 1G), the mirror root of VMs with mirrored TDP and its external-SPT hooks, zaps, `kvm_mmu_zap_all_fast` |
//! | [`tlb`] | per-vCPU TLBs, `vcpu->mode`, `vcpu->requests`, `kvm_make_all_cpus_request` (the remote TLB flush) |
//! | [`vcpu`] | `KVM_CREATE_VCPU`, guest accesses (TLB, SPTE walk, exits), `KVM_PRE_FAULT_MEMORY` (`kvm_tdp_map_page`) |
//! | [`arch`] | the vendor layer (`kvm_x86_ops`): the `KvmArch` hooks of one VM, the `ArchFactory` of the host, the vendor-less back-ends (DEFAULT, SW_PROTECTED); SEV-SNP and TDX are in gmem-arch |
//! | [`guest_memfd`] | `virt/kvm/guest_memfd.c`, every function of the seed |
//! | [`caps`] | `KVM_CHECK_EXTENSION` |
//! | [`invariants`] | INV-BIND, INV-REFCOUNT, INV-UPTODATE-PREPARED, INV-NO-STALE-PFN, M2-M6 and M8 (M1 and M7 are WARNs at the call), the mirror root's T5, T8, T9 |
//!
//! # What is modelled, and what is not
//!
//! Modelled: everything guest_memfd does and everything it calls on the KVM side, with the
//! kernel's check order, errno and lock order (`slots_lock` → `invalidate_lock` → `mmu_lock`);
//! memslot generations published through SRCU, including the INVALID copy published while a
//! slot is deleted or moved; the MMU invalidation bookkeeping faults rely on; the VM's lifetime.
//! Stale memslot pointers (the use-after-free of upstream fixes F1 and F2) are detected and
//! recorded as KASAN-style warnings instead of being dereferenced.
//!
//! The MMU is the software TDP MMU ([`tdp_mmu`]; [`mmu::RecordingMmu`] remains for tests), driven
//! by vCPUs that only access guest memory ([`vcpu`]) through per-vCPU TLBs ([`tlb`]). Its leaves
//! are 4K, 2M or 1G: a fault's level is bounded by the guest_memfd folio order and the vendor
//! hook (private faults, and v6.18's GMEM_ONLY slots), the host mapping level (other shared
//! faults: anonymous THPs), and the slot's `lpage_info` (`disallow_lpage`,
//! `KVM_LPAGE_MIXED_FLAG`), in `kvm_mmu_max_mapping_level` and `kvm_mmu_hugepage_adjust`.
//! guest_memfd allocates order-0 folios, as both modelled kernels do, so private mappings stay
//! 4K. Not modelled here: huge guest_memfd folios, SMM address spaces,
//! dirty logging, the vendor back-ends (SEV-SNP and TDX live in the gmem-arch crate, which
//! implements [`arch::KvmArch`]; this crate has the MMU half TDX needs: the mirror root and the
//! external-SPT hooks), and capabilities unrelated to guest memory (they read 0).
#![deny(missing_docs)]

pub mod arch;
pub mod attributes;
pub mod caps;
pub mod guest_memfd;
pub mod invariants;
pub mod memslot;
pub mod mmu;
pub mod mmu_notifier;
pub mod page_fault;
pub mod profile;
pub mod tdp_mmu;
pub mod tlb;
pub mod types;
pub mod vcpu;
pub mod vm;

pub use profile::{Fix, KernelProfile, KernelVersion, VmType};
pub use types::{Gfn, Gpa, SlotId};
pub use vm::{Kvm, KvmSystem};
