//! gmem-arch: the vendor back-ends of the simulated KVM.
//!
//! The kvm crate defines the interface ([`gmem_kvm::arch::ArchFactory`] for the vendor module of
//! a host, [`gmem_kvm::arch::KvmArch`] for one VM's back-end); this crate implements it for the
//! vendors whose hardware the simulator models, so the layering stays one-way: this crate
//! depends on gmem-kvm, never the reverse.
//!
//! [`X86Host`] is the simulated host's vendor module. A real host loads `kvm_amd` or
//! `kvm_intel`, never both, so an `X86Host` has one [`CpuVendor`]:
//!
//! * **AMD** ([`X86Host::setup`], the default everywhere): it boots the SEV-SNP platform of the
//!   machine ([`sev::host::SnpHost`]: the RMP, checked on every host write from then on) and,
//!   as `svm_vm_init` does, gives every new VM an [`sev::kvm::SvmVm`]: all VMs of an SEV host
//!   have the SEV ioctls, an SNP VM's guest_memfd hooks are SEV-SNP's once `KVM_SEV_INIT2` ran,
//!   and DEFAULT, SEV, SEV-ES and SW_PROTECTED VMs keep the vendor-less hooks of gmem-kvm. A
//!   profile without SEV-SNP (`v6.18-pvm`) gets the vendor-less back-ends alone. No TDX.
//! * **Intel** ([`X86Host::setup_intel`]): it loads the TDX module ([`tdx::module::TdxModule`]:
//!   the PAMT, whose host-write check it installs instead of the RMP's) and gives TDX VMs
//!   [`tdx::kvm::TdxVm`], DEFAULT and SW_PROTECTED VMs the vendor-less back-ends. No SEV.
//!
//! Either way a VM type is offered only when the kernel profile lists it too
//! (`kvm_caps.supported_vm_types`: `KVM_CAP_VM_TYPES` is the intersection).
//!
//! | module | vendor |
//! |---|---|
//! | [`sev`] | AMD SEV-SNP: RMP, SNP instructions, the kernel's host support, the firmware, KVM's SNP code |
//! | [`tdx`] | Intel TDX: the TDX module (SEAMCALLs, PAMT, Secure EPT, MRTD, TD epochs), its guest and host access rules, and KVM's TDX code (`tdx.c`) |
//! | [`uapi`] | moving the vendors' uAPI structures between user memory and the kernel |
#![deny(missing_docs)]

pub mod sev;
pub mod tdx;
pub mod uapi;

use gmem_kvm::arch::{ArchFactory, ArchSetup, GenericArchFactory, KvmArch};
use gmem_kvm::{KernelProfile, VmType};
use gmem_mm::{KResult, Machine};
use gmem_sync::Arc;
use sev::host::SnpHost;
use sev::kvm::{SevModule, SvmVm};
use std::any::Any;
use std::fmt;
use tdx::kvm::{TdConf, TdxHost, TdxVm};
use tdx::module::TdxModule;

/// The CPU vendor of the simulated host, which decides its KVM vendor module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    /// AMD: `kvm_amd` with SEV-SNP.
    Amd,
    /// Intel: `kvm_intel` with TDX.
    Intel,
}

/// The vendor module of the simulated host.
pub struct X86Host {
    vendor: CpuVendor,
    snp: Option<Arc<SnpHost>>,
    sev: Arc<SevModule>,
    tdx: Option<Arc<TdxHost>>,
    /// `enable_tdx` after `tdx_bringup`: the host has the TDX module and the profile offers TDX.
    tdx_enabled: bool,
}

impl fmt::Debug for X86Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X86Host")
            .field("vendor", &self.vendor)
            .field("snp", &self.snp)
            .field("tdx", &self.tdx)
            .finish_non_exhaustive()
    }
}

impl X86Host {
    /// `hardware_setup` of the AMD vendor module on `machine`: enables SEV-SNP (the RMP) and,
    /// when the profile's kernel offers SEV VMs, KVM's SEV support (`sev_hardware_setup`).
    pub fn new(machine: &Arc<Machine>, profile: &KernelProfile) -> X86Host {
        X86Host::with_vendor(CpuVendor::Amd, machine, profile)
    }

    /// `hardware_setup` of the vendor module of a `vendor` host on `machine`: AMD as
    /// [`X86Host::new`]; Intel loads the TDX module (`tdx_bringup`: every frame convertible,
    /// its host-write check installed on the machine) and enables KVM's TDX when the profile
    /// offers TDX VMs.
    pub fn with_vendor(vendor: CpuVendor, machine: &Arc<Machine>, profile: &KernelProfile) -> X86Host {
        match vendor {
            CpuVendor::Amd => {
                let sev_enabled = profile.supports_vm_type(VmType::SevSnp);
                X86Host {
                    vendor,
                    snp: Some(SnpHost::init(machine)),
                    sev: Arc::new(SevModule::new(sev_enabled)),
                    tdx: None,
                    tdx_enabled: false,
                }
            }
            CpuVendor::Intel => {
                let module = TdxModule::new(machine);
                machine.mem.set_host_write_check(tdx::guest::TdxHostWriteCheck::new(&module));
                X86Host {
                    vendor,
                    snp: None,
                    sev: Arc::new(SevModule::new(false)),
                    tdx: Some(Arc::new(TdxHost::new(module, TdConf::default()))),
                    tdx_enabled: profile.supports_vm_type(VmType::Tdx),
                }
            }
        }
    }

    /// The vendor module of a system built with [`X86Host::setup`] or
    /// [`X86Host::setup_intel`], if it is one.
    pub fn of(system: &gmem_kvm::KvmSystem) -> Option<&X86Host> {
        system.arch().as_any().downcast_ref::<X86Host>()
    }

    /// The host's CPU vendor.
    pub fn vendor(&self) -> CpuVendor {
        self.vendor
    }

    /// KVM's SEV module state (ASIDs; disabled on an Intel host).
    pub fn sev(&self) -> &Arc<SevModule> {
        &self.sev
    }

    /// The [`ArchSetup`] that loads the AMD vendor module (pass to
    /// `KvmSystem::builder(..).arch(..)`).
    pub fn setup() -> ArchSetup {
        Arc::new(|machine, profile| Arc::new(X86Host::new(machine, profile)) as Arc<dyn ArchFactory>)
    }

    /// The [`ArchSetup`] that loads the Intel vendor module, with TDX.
    pub fn setup_intel() -> ArchSetup {
        Arc::new(|machine, profile| {
            Arc::new(X86Host::with_vendor(CpuVendor::Intel, machine, profile)) as Arc<dyn ArchFactory>
        })
    }

    /// The SEV-SNP platform (AMD hosts).
    pub fn snp(&self) -> Option<&Arc<SnpHost>> {
        self.snp.as_ref()
    }

    /// KVM's TDX state and the TDX module (Intel hosts).
    pub fn tdx(&self) -> Option<&Arc<TdxHost>> {
        self.tdx.as_ref()
    }
}

impl ArchFactory for X86Host {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn supports(&self, vm_type: VmType) -> bool {
        match (self.vendor, vm_type) {
            (CpuVendor::Amd, VmType::SevSnp) => self.sev.sev_snp_enabled,
            (CpuVendor::Amd, VmType::Tdx) => false,
            // kvm_intel: DEFAULT, SW_PROTECTED (with the TDP MMU) and, with enable_tdx, TDX.
            (CpuVendor::Intel, VmType::Tdx) => self.tdx_enabled,
            (CpuVendor::Intel, VmType::Sev | VmType::SevEs | VmType::SevSnp) => false,
            (_, other) => GenericArchFactory.supports(other),
        }
    }

    fn vm_init(&self, vm_type: VmType) -> KResult<Arc<dyn KvmArch>> {
        if self.vendor == CpuVendor::Intel {
            // vt_vm_init: tdx_vm_init for a TD, vmx_vm_init otherwise.
            return match (vm_type, &self.tdx) {
                (VmType::Tdx, Some(tdx)) if self.tdx_enabled => Ok(Arc::new(TdxVm::new(tdx.clone()))),
                _ => GenericArchFactory.vm_init(vm_type),
            };
        }
        let Some(snp) = self.snp.as_ref().filter(|_| self.sev.sev_enabled) else {
            return GenericArchFactory.vm_init(vm_type);
        };
        // svm_vm_init: every VM of an SEV host has the SEV ioctls; an SNP VM's guest_memfd hooks
        // are SNP's once KVM_SEV_INIT2 ran.
        let generic = match vm_type {
            VmType::SevSnp => GenericArchFactory.vm_init(VmType::Default)?,
            other => GenericArchFactory.vm_init(other)?,
        };
        Ok(Arc::new(SvmVm::new(self.sev.clone(), snp.clone(), vm_type, generic)))
    }
}
