//! Intel TDX: the TDX module (the firmware that runs in SEAM mode) and the hardware state it
//! keeps, and KVM's TDX code on top of it (`arch-and-mmu.md` §2).
//!
//! | module | what it models | kernel / spec |
//! |---|---|---|
//! | [`status`] | the SEAMCALL leaf numbers, the status codes and operand ids, `TdxStatus` | `arch/x86/kvm/vmx/tdx_errno.h`, `arch/x86/virt/vmx/tdx/tdx.h`, TDX module ABI |
//! | [`pamt`] | the PAMT: page type, owner and size of every host frame; single ownership | TDX module spec, "Physical Address Metadata Table" |
//! | [`sept`] | one TD's Secure EPT: a 4-level tree of donated table pages, the leaf states | TDX module spec, "Secure EPT" |
//! | [`measure`] | MRTD: SHA-384 over the PAGE.ADD and MR.EXTEND buffers | TDX module ABI, `arch-and-mmu.md` §2.5 |
//! | [`module`] | `TdxModule`: the SEAMCALLs KVM uses (TD management, S-EPT, image, AUG/BLOCK/TRACK/REMOVE, teardown), KeyIDs, epochs, contention (`TDX_OPERAND_BUSY`), injectable errors | `arch/x86/virt/vmx/tdx/tdx.c` (the wrappers), TDX module spec |
//! | [`guest`] | the guest's side (TDG.MEM.PAGE.ACCEPT, private accesses: #VE, EPT violations, #MC) and host accesses to TD memory (reads see zeros, writes poison) | TDX module spec, `arch-and-mmu.md` §2.6, §2.8 |
//! | [`kvm`] | KVM's TDX code: `struct kvm_tdx` ([`kvm::TdxVm`]), the `KVM_MEMORY_ENCRYPT_OP` commands (VM and vCPU scope), the four S-EPT hooks of the mirror root, the teardown | `arch/x86/kvm/vmx/tdx.c` (v6.18), `arch/x86/include/uapi/asm/kvm.h` |
//! | [`run`] | KVM's TDX run path: `KVM_RUN`'s entry checks, `TDH.VP.ENTER` and the TD exit (`wait_for_sept_zap` keeps vCPUs out), EPT violations (local retries, the fatal pending violation), TDVMCALLs (MapGPA in 2 MiB `KVM_EXIT_HYPERCALL` chunks) | `arch/x86/kvm/vmx/tdx.c` (v6.18): `tdx_vcpu_pre_run`, `tdx_vcpu_run`, `tdx_handle_ept_violation`, `handle_tdvmcall`, `tdx_map_gpa` |
//! | [`tdcall`] | the TD guest's TDCALLs as vCPU steps (`TDG.MEM.PAGE.ACCEPT`, `TDG.VP.VMCALL<MapGPA>`) and a Linux TD guest's conversion routines | `arch/x86/coco/tdx/tdx.c`, `tdx-shared.c` |
//! | [`invariants`] | T1 (PAMT single ownership), T3 (S-EPT walk order), T10 (MRTD); the KVM side: T2 (phase agreement), T4 (no half-released page in the host's free pool), T5 (mirror ⇔ S-EPT, `nr_premapped`), T6 (`wait_for_sept_zap`) | `arch-and-mmu.md` §5.3 (model only) |
//!
//! The host-wide state (the PAMT, the key ownership table) lives in one [`module::TdxModule`]
//! per machine, as the RMP lives in [`crate::sev::host::SnpHost`]. An Intel host
//! ([`crate::X86Host::setup_intel`]) owns one, installs its host-write check on the machine
//! (host writes to TD memory poison it) and gives every TDX VM a [`kvm::TdxVm`] over it.

pub mod guest;
pub mod invariants;
pub mod kvm;
pub mod measure;
pub mod module;
pub mod pamt;
pub mod run;
pub mod sept;
pub mod status;
pub mod tdcall;
