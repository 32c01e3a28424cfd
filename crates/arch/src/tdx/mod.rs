//! Intel TDX: the TDX module (the firmware that runs in SEAM mode) and the hardware state it
//! keeps, with no KVM integration yet (`arch-and-mmu.md` §2).
//!
//! | module | what it models | kernel / spec |
//! |---|---|---|
//! | [`status`] | the SEAMCALL leaf numbers, the status codes and operand ids, `TdxStatus` | `arch/x86/kvm/vmx/tdx_errno.h`, `arch/x86/virt/vmx/tdx/tdx.h`, TDX module ABI |
//! | [`pamt`] | the PAMT: page type, owner and size of every host frame; single ownership | TDX module spec, "Physical Address Metadata Table" |
//! | [`sept`] | one TD's Secure EPT: a 4-level tree of donated table pages, the leaf states | TDX module spec, "Secure EPT" |
//! | [`measure`] | MRTD: SHA-384 over the PAGE.ADD and MR.EXTEND buffers | TDX module ABI, `arch-and-mmu.md` §2.5 |
//! | [`module`] | `TdxModule`: the SEAMCALLs KVM uses (TD management, S-EPT, image, AUG/BLOCK/TRACK/REMOVE, teardown), KeyIDs, epochs, contention (`TDX_OPERAND_BUSY`), injectable errors | `arch/x86/virt/vmx/tdx/tdx.c` (the wrappers), TDX module spec |
//! | [`guest`] | the guest's side (TDG.MEM.PAGE.ACCEPT, private accesses: #VE, EPT violations, #MC) and host accesses to TD memory (reads see zeros, writes poison) | TDX module spec, `arch-and-mmu.md` §2.6, §2.8 |
//! | [`invariants`] | T1 (PAMT single ownership), T3 (S-EPT walk order), T10 (MRTD) | `arch-and-mmu.md` §5.3 (model only) |
//!
//! The host-wide state (the PAMT, the key ownership table) lives in one [`module::TdxModule`]
//! per machine, as the RMP lives in [`crate::sev::host::SnpHost`]. Nothing calls it from KVM
//! yet: the step that wires `arch/x86/kvm/vmx/tdx.c` and the TDP MMU's mirror root onto it will
//! own one from [`crate::X86Host`] and install its host-write check.

pub mod guest;
pub mod invariants;
pub mod measure;
pub mod module;
pub mod pamt;
pub mod sept;
pub mod status;
