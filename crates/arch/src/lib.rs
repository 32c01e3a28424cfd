//! gmem-arch: the vendor back-ends of the simulated KVM.
//!
//! The kvm crate defines the interface ([`gmem_kvm::arch::ArchFactory`] for the vendor module of
//! a host, [`gmem_kvm::arch::KvmArch`] for one VM's back-end); this crate implements it for the
//! vendors whose hardware the simulator models, so the layering stays one-way: this crate
//! depends on gmem-kvm, never the reverse.
//!
//! [`X86Host`] is the simulated host's vendor module. It boots the SEV-SNP platform of the
//! machine ([`sev::host::SnpHost`]: the RMP, checked on every host write from then on) and gives
//! each new VM its back-end: the vendor-less ones of gmem-kvm for DEFAULT, SEV, SEV-ES and
//! SW_PROTECTED VMs.
//!
//! | module | vendor |
//! |---|---|
//! | [`sev`] | AMD SEV-SNP: RMP, SNP instructions, the kernel's host support, the firmware, KVM's SNP code |
//! | [`tdx`] | Intel TDX: the TDX module (SEAMCALLs, PAMT, Secure EPT, MRTD, TD epochs) and its guest and host access rules; not yet wired to KVM |
#![deny(missing_docs)]

pub mod sev;
pub mod tdx;

use gmem_kvm::arch::{ArchFactory, ArchSetup, GenericArchFactory, KvmArch};
use gmem_kvm::{KernelProfile, VmType};
use gmem_mm::{KResult, Machine};
use gmem_sync::Arc;
use sev::host::SnpHost;
use sev::kvm::{SevModule, SvmVm};
use std::any::Any;
use std::fmt;

/// The vendor module of the simulated host.
pub struct X86Host {
    snp: Arc<SnpHost>,
    sev: Arc<SevModule>,
}

impl fmt::Debug for X86Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X86Host").field("snp", &self.snp).finish()
    }
}

impl X86Host {
    /// `hardware_setup` of the vendor module on `machine`: enables SEV-SNP (the RMP) and, when
    /// the profile's kernel offers SEV VMs, KVM's SEV support (`sev_hardware_setup`).
    pub fn new(machine: &Arc<Machine>, profile: &KernelProfile) -> X86Host {
        let sev_enabled = profile.supports_vm_type(VmType::SevSnp);
        X86Host { snp: SnpHost::init(machine), sev: Arc::new(SevModule::new(sev_enabled)) }
    }

    /// The vendor module of a system built with [`X86Host::setup`], if it is one.
    pub fn of(system: &gmem_kvm::KvmSystem) -> Option<&X86Host> {
        system.arch().as_any().downcast_ref::<X86Host>()
    }

    /// KVM's SEV module state (ASIDs).
    pub fn sev(&self) -> &Arc<SevModule> {
        &self.sev
    }

    /// The [`ArchSetup`] that loads it (pass to `KvmSystem::builder(..).arch(..)`).
    pub fn setup() -> ArchSetup {
        Arc::new(|machine, profile| Arc::new(X86Host::new(machine, profile)) as Arc<dyn ArchFactory>)
    }

    /// The SEV-SNP platform.
    pub fn snp(&self) -> &Arc<SnpHost> {
        &self.snp
    }
}

impl ArchFactory for X86Host {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn supports(&self, vm_type: VmType) -> bool {
        match vm_type {
            VmType::SevSnp => self.sev.sev_snp_enabled,
            VmType::Tdx => false,
            other => GenericArchFactory.supports(other),
        }
    }

    fn vm_init(&self, vm_type: VmType) -> KResult<Arc<dyn KvmArch>> {
        if !self.sev.sev_enabled {
            return GenericArchFactory.vm_init(vm_type);
        }
        // svm_vm_init: every VM of an SEV host has the SEV ioctls; an SNP VM's guest_memfd hooks
        // are SNP's once KVM_SEV_INIT2 ran.
        let generic = match vm_type {
            VmType::SevSnp => GenericArchFactory.vm_init(VmType::Default)?,
            other => GenericArchFactory.vm_init(other)?,
        };
        Ok(Arc::new(SvmVm::new(self.sev.clone(), self.snp.clone(), vm_type, generic)))
    }
}
