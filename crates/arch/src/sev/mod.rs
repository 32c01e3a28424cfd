//! AMD SEV-SNP: the hardware, the host kernel's support, the firmware and KVM's SNP code.
//!
//! | module | what it models | kernel / spec |
//! |---|---|---|
//! | [`rmp`] | the Reverse Map Table and the instructions (RMPUPDATE, PSMASH, PVALIDATE), the RMP checks of host writes and guest accesses | AMD APM vol. 2, "Secure Nested Paging" |
//! | [`host`] | the helpers the kernel builds on them | `arch/x86/virt/svm/sev.c` |
//!
//! The host-wide state (the RMP, the leaked pages) lives in one [`host::SnpHost`] per machine,
//! owned by the vendor module ([`crate::X86Host`]); each SNP VM reaches it through its back-end.

pub mod host;
pub mod rmp;
