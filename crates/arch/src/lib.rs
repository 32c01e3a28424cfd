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
//! | [`sev`] | AMD SEV-SNP: RMP, SNP instructions, the kernel's host support |
#![deny(missing_docs)]

pub mod sev;

use gmem_kvm::arch::{ArchFactory, ArchSetup, GenericArchFactory, KvmArch};
use gmem_kvm::{KernelProfile, VmType};
use gmem_mm::{KResult, Machine};
use gmem_sync::Arc;
use sev::host::SnpHost;
use std::fmt;

/// The vendor module of the simulated host.
pub struct X86Host {
    snp: Arc<SnpHost>,
}

impl fmt::Debug for X86Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X86Host").field("snp", &self.snp).finish()
    }
}

impl X86Host {
    /// `hardware_setup` of the vendor module on `machine`: enables SEV-SNP (the RMP).
    pub fn new(machine: &Arc<Machine>, _profile: &KernelProfile) -> X86Host {
        X86Host { snp: SnpHost::init(machine) }
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
    fn supports(&self, vm_type: VmType) -> bool {
        GenericArchFactory.supports(vm_type)
    }

    fn vm_init(&self, vm_type: VmType) -> KResult<Arc<dyn KvmArch>> {
        GenericArchFactory.vm_init(vm_type)
    }
}
