//! AMD SEV-SNP: the hardware, the host kernel's support, the firmware and KVM's SNP code.
//!
//! | module | what it models | kernel / spec |
//! |---|---|---|
//! | [`rmp`] | the Reverse Map Table and the instructions (RMPUPDATE, PSMASH, PVALIDATE), the RMP checks of host writes and guest accesses | AMD APM vol. 2, "Secure Nested Paging" |
//! | [`host`] | the helpers the kernel builds on them | `arch/x86/virt/svm/sev.c` |
//! | [`firmware`] | the SEV-SNP firmware: guest contexts, LAUNCH_START/UPDATE/FINISH, DECOMMISSION, PAGE_RECLAIM, injectable errors | SEV-SNP Firmware ABI |
//! | [`psp`] | `/dev/sev`, the command path, firmware pages | `drivers/crypto/ccp/sev-dev.c` |
//! | [`kvm`] | KVM's SNP code: `KVM_MEMORY_ENCRYPT_OP`, the guest_memfd hooks, the RMP fault handler, VM and vCPU lifecycle | `arch/x86/kvm/svm/sev.c` |
//! | [`ghcb`] | KVM's side of the GHCB: page-state changes, AP creation and the guest VMSA | `arch/x86/kvm/svm/sev.c` |
//! | [`guest`] | the guest's side: PVALIDATE, RMPADJUST, VMGEXITs, a Linux guest's page-state change | `arch/x86/coco/sev/core.c` |
//! | [`kmap`] | the `kmap_local` stack, checked balanced at each ioctl's return | `include/linux/highmem.h` |
//! | [`measure`] | the SNP launch digest (the PAGE_INFO hash chain) | SEV-SNP firmware ABI, sev-snp-measure's gctx.py |
//! | [`invariants`] | the SEV-SNP invariants S1–S12 and the guest-VMSA part of INV-NO-STALE-PFN, run by the invariant checker through the back-end hook | `arch-and-mmu.md` §5.2 (model only) |
//!
//! The host-wide state (the RMP, the leaked pages) lives in one [`host::SnpHost`] per machine,
//! owned by the vendor module ([`crate::X86Host`]); each SNP VM reaches it through its back-end.

pub mod firmware;
pub mod ghcb;
pub mod guest;
pub mod host;
pub mod invariants;
pub mod kmap;
pub mod kvm;
pub mod measure;
pub mod psp;
pub mod rmp;
