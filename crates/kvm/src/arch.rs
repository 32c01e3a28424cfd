//! The vendor layer (`kvm_x86_ops`): the hooks guest_memfd, the MMU and the vCPUs call, and the
//! factory that gives each new VM its back-end.
//!
//! The kvm crate owns the interface; back-ends implement it. [`ArchFactory`] is the vendor
//! module loaded on the host (`kvm_amd` with SEV-SNP, `kvm_intel` with TDX): it is built once per
//! machine, holds the host-wide hardware state (the SEV-SNP RMP is one table per host, not per
//! VM), and answers `kvm_x86_ops.vm_init` with a [`KvmArch`] for each VM (`struct kvm_sev_info`,
//! `struct kvm_tdx`). The hooks the kernel calls on that VM are the trait's methods:
//!
//! | kernel | [`KvmArch`] |
//! |---|---|
//! | `kvm_arch_gmem_prepare` → `gmem_prepare` | [`KvmArch::gmem_prepare`] |
//! | `kvm_arch_gmem_invalidate` → `gmem_invalidate` | [`KvmArch::gmem_invalidate`] |
//! | `gmem_max_mapping_level` (v6.14: `private_max_mapping_level`) | [`KvmArch::gmem_max_mapping_level`] |
//! | `kvm_gmem_populate`'s `post_populate` callback | [`KvmArch::post_populate`] |
//! | `mem_enc_ioctl` (`KVM_MEMORY_ENCRYPT_OP`) | [`KvmArch::mem_enc_ioctl`] |
//! | `vcpu_mem_enc_ioctl` (`KVM_MEMORY_ENCRYPT_OP` on a vCPU; v6.19 also `vcpu_mem_enc_unlocked_ioctl`) | [`KvmArch::vcpu_mem_enc_ioctl`], [`KvmArch::vcpu_mem_enc_ioctl_unlocked`] |
//! | `vcpu_create` / `vcpu_free` | [`KvmArch::vcpu_create`] / [`KvmArch::vcpu_free`] |
//! | `vm_pre_destroy` / `vm_destroy` | [`KvmArch::vm_pre_destroy`] / [`KvmArch::vm_destroy`] |
//! | `kvm_has_mirrored_tdp` (the VM has a mirror root) | [`KvmArch::has_mirror_root`] |
//! | `link_external_spt` / `set_external_spte` | [`KvmArch::link_external_spt`] / [`KvmArch::set_external_spte`] |
//! | `remove_external_spte` / `free_external_spt` | [`KvmArch::remove_external_spte`] / [`KvmArch::free_external_spt`] |
//! | `vcpu_pre_run` (`KVM_RUN`'s entry checks) | [`KvmArch::vcpu_pre_run`] |
//! | `vcpu_run` up to the VM entry (TDX: `tdx_vcpu_run`, `TDH.VP.ENTER`) / the VM exit that ends it | [`KvmArch::vcpu_run`] / [`KvmArch::vcpu_run_exit`] |
//! | the hardware's checks on a guest access (the RMP check) | [`KvmArch::guest_access_check`] |
//! | the vendor part of the NPF handler (`sev_handle_rmp_fault`) | [`KvmArch::handle_npf`] |
//! | the exit handler of a guest access that faulted (`npf_interception`, `handle_ept_violation`; TDX: `tdx_handle_ept_violation`) | [`KvmArch::handle_guest_fault`] |
//! | (model only) the vendor's invariants, for [`invariants::check`](crate::invariants::check) | [`KvmArch::check_invariants`] |
//!
//! This crate ships the back-ends that need no vendor hardware: [`DefaultArch`] for DEFAULT VMs
//! (and SEV / SEV-ES, whose memory KVM treats the same way here) and [`SwProtectedArch`] for
//! SW_PROTECTED VMs, through [`GenericArchFactory`]. SEV-SNP (RMP, firmware) and TDX (the TDX
//! module, KVM's `tdx.c`) live in the `gmem-arch` crate, which implements the same traits.

use crate::guest_memfd::KvmGmem;
use crate::invariants::Violation;
use crate::profile::{KernelProfile, VmType};
use crate::types::Gfn;
use crate::vm::Kvm;
use gmem_mm::fdtable::FdTable;
use gmem_mm::file::FileRef;
use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use gmem_mm::vma::Mm;
use gmem_mm::{Errno, KResult, Machine, Pfn};
use gmem_sync::Arc;
use std::any::Any;
use std::fmt;

/// x86 page-table levels (`PG_LEVEL_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PgLevel {
    /// 4 KiB.
    Level4K = 1,
    /// 2 MiB.
    Level2M = 2,
    /// 1 GiB.
    Level1G = 3,
}

/// `KVM_MAX_HUGEPAGE_LEVEL` on x86 (1G; `max_huge_page_level` is 1G on every host the model
/// stands for).
pub const KVM_MAX_HUGEPAGE_LEVEL: PgLevel = PgLevel::Level1G;

impl PgLevel {
    /// The huge levels, lowest first (the order `kvm_arch_post_set_memory_attributes` walks).
    pub const HUGE: [PgLevel; 2] = [PgLevel::Level2M, PgLevel::Level1G];

    /// `KVM_HPAGE_GFN_SHIFT(level)`: 0, 9, 18.
    pub const fn gfn_shift(self) -> u32 {
        (self as u32 - 1) * 9
    }

    /// `KVM_PAGES_PER_HPAGE(level)`.
    pub const fn pages(self) -> u64 {
        1 << self.gfn_shift()
    }

    /// `gfn_round_for_level(gfn, level)`.
    pub const fn round(self, gfn: u64) -> u64 {
        gfn & !(self.pages() - 1)
    }

    /// `kvm_max_level_for_order(order)`: the largest level an order-`order` folio (or host
    /// mapping) covers.
    #[doc(alias = "kvm_max_level_for_order")]
    pub const fn for_order(order: u8) -> PgLevel {
        if order >= PgLevel::Level1G.gfn_shift() as u8 {
            PgLevel::Level1G
        } else if order >= PgLevel::Level2M.gfn_shift() as u8 {
            PgLevel::Level2M
        } else {
            PgLevel::Level4K
        }
    }

    /// The next level down (4K stays 4K).
    pub const fn lower(self) -> PgLevel {
        match self {
            PgLevel::Level1G => PgLevel::Level2M,
            _ => PgLevel::Level4K,
        }
    }

    /// `4K`, `2M`, `1G` (as `dump` prints it).
    pub const fn name(self) -> &'static str {
        match self {
            PgLevel::Level4K => "4K",
            PgLevel::Level2M => "2M",
            PgLevel::Level1G => "1G",
        }
    }
}

impl fmt::Display for PgLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `enum pg_level` as the TDP MMU and the external-SPT hooks use it: the leaf levels of
/// [`PgLevel`] plus `PG_LEVEL_512G`, the level of the entries of a 4-level root (a PML4E), which
/// [`KvmArch::link_external_spt`] sees when it links a page-directory-pointer table under the
/// mirror root. (A separate type, so that the leaf level of a mapping can never be 512G.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[doc(alias("PG_LEVEL_512G", "pg_level"))]
pub enum SpteLevel {
    /// `PG_LEVEL_4K`: an entry of a page table (PT).
    Level4K = 1,
    /// `PG_LEVEL_2M`: an entry of a page directory (PD).
    Level2M = 2,
    /// `PG_LEVEL_1G`: an entry of a page-directory-pointer table (PDPT).
    Level1G = 3,
    /// `PG_LEVEL_512G`: an entry of the PML4, the root of a 4-level TDP page table.
    Level512G = 4,
}

impl SpteLevel {
    /// `PT64_ROOT_4LEVEL`: the level of a 4-level root (the model's TDX uses GPAW 48).
    #[doc(alias = "PT64_ROOT_4LEVEL")]
    pub const ROOT_4LEVEL: SpteLevel = SpteLevel::Level512G;

    /// The level from its number (1 to 4).
    pub const fn from_raw(raw: u8) -> Option<SpteLevel> {
        match raw {
            1 => Some(SpteLevel::Level4K),
            2 => Some(SpteLevel::Level2M),
            3 => Some(SpteLevel::Level1G),
            4 => Some(SpteLevel::Level512G),
            _ => None,
        }
    }

    /// `KVM_HPAGE_GFN_SHIFT(level)`: 0, 9, 18, 27.
    pub const fn gfn_shift(self) -> u32 {
        (self as u32 - 1) * 9
    }

    /// `KVM_PAGES_PER_HPAGE(level)`: the gfns an entry of this level covers.
    pub const fn pages(self) -> u64 {
        1 << self.gfn_shift()
    }

    /// `gfn_round_for_level(gfn, level)`.
    pub const fn round(self, gfn: u64) -> u64 {
        gfn & !(self.pages() - 1)
    }

    /// `SPTE_INDEX(gfn << PAGE_SHIFT, level)`: the entry of a table of this level that `gfn`
    /// goes through.
    #[doc(alias = "SPTE_INDEX")]
    pub const fn index(self, gfn: u64) -> usize {
        ((gfn >> self.gfn_shift()) & 511) as usize
    }

    /// The next level down (4K has none).
    pub const fn lower(self) -> Option<SpteLevel> {
        SpteLevel::from_raw(self as u8 - 1)
    }

    /// The leaf level with this number (none for 512G).
    pub const fn leaf(self) -> Option<PgLevel> {
        match self {
            SpteLevel::Level4K => Some(PgLevel::Level4K),
            SpteLevel::Level2M => Some(PgLevel::Level2M),
            SpteLevel::Level1G => Some(PgLevel::Level1G),
            SpteLevel::Level512G => None,
        }
    }

    /// `4K`, `2M`, `1G`, `512G`.
    pub const fn name(self) -> &'static str {
        match self {
            SpteLevel::Level4K => "4K",
            SpteLevel::Level2M => "2M",
            SpteLevel::Level1G => "1G",
            SpteLevel::Level512G => "512G",
        }
    }
}

impl From<PgLevel> for SpteLevel {
    fn from(level: PgLevel) -> SpteLevel {
        match level {
            PgLevel::Level4K => SpteLevel::Level4K,
            PgLevel::Level2M => SpteLevel::Level2M,
            PgLevel::Level1G => SpteLevel::Level1G,
        }
    }
}

impl fmt::Display for SpteLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The task making a system call (`current`): its address space, for `copy_from_user` and
/// `copy_to_user`, and its descriptor table, for the descriptors an ioctl names.
#[derive(Clone, Copy, Debug)]
pub struct Current<'a> {
    /// `current->mm`.
    pub mm: &'a Mm,
    /// `current->files`.
    pub files: &'a FdTable,
}

impl Current<'_> {
    /// `copy_from_user(buf, uaddr, len)`: EFAULT if any byte is not readable.
    pub fn copy_from_user(&self, buf: &mut [u8], uaddr: u64) -> KResult<()> {
        self.mm.access(uaddr, buf, false).map_err(|_| Errno::EFAULT)
    }

    /// `copy_to_user(uaddr, buf, len)`: EFAULT if any byte is not writable.
    pub fn copy_to_user(&self, uaddr: u64, buf: &[u8]) -> KResult<()> {
        let mut bytes = buf.to_vec();
        self.mm.access(uaddr, &mut bytes, true).map_err(|_| Errno::EFAULT)
    }
}

/// Where `kvm_gmem_populate` takes the initial contents from (its `void __user *src`).
#[derive(Clone, Copy, Debug)]
pub enum PopulateSource<'a> {
    /// `src == NULL` (SNP's ZERO pages).
    None,
    /// A user address of the calling process: the callback copies with `copy_from_user`, which
    /// can fault (EFAULT) and, for an SNP CPUID page the firmware rejected, writes back.
    User {
        /// `current`.
        current: Current<'a>,
        /// The address of the chunk's first page.
        uaddr: u64,
    },
    /// Bytes already in the kernel (the simulator-only `populate` verb): page `i` is at byte
    /// `i * 4096`; what the slice does not cover reads as zero.
    Buffer(&'a [u8]),
}

impl PopulateSource<'_> {
    /// Whether there is a source (`src != NULL`).
    pub fn is_some(&self) -> bool {
        !matches!(self, PopulateSource::None)
    }

    /// The source `pages` pages further on (`src + i * PAGE_SIZE`).
    pub fn advance(&self, pages: u64) -> Self {
        match *self {
            PopulateSource::None => PopulateSource::None,
            PopulateSource::User { current, uaddr } => {
                PopulateSource::User { current, uaddr: uaddr.wrapping_add(pages << PAGE_SHIFT) }
            }
            PopulateSource::Buffer(bytes) => {
                PopulateSource::Buffer(bytes.get((pages << PAGE_SHIFT) as usize..).unwrap_or(&[]))
            }
        }
    }

    /// Copies page `page` of the source into `buf` (`copy_from_user` for a user source; EFAULT
    /// when it faults). `None` zero-fills.
    pub fn read_page(&self, page: u64, buf: &mut [u8; PAGE_SIZE as usize]) -> KResult<()> {
        match *self {
            PopulateSource::None => {
                buf.fill(0);
                Ok(())
            }
            PopulateSource::User { current, uaddr } => {
                current.copy_from_user(buf, uaddr.wrapping_add(page << PAGE_SHIFT))
            }
            PopulateSource::Buffer(bytes) => {
                buf.fill(0);
                let start = (page << PAGE_SHIFT) as usize;
                if let Some(rest) = bytes.get(start..) {
                    let len = rest.len().min(buf.len());
                    buf[..len].copy_from_slice(&rest[..len]);
                }
                Ok(())
            }
        }
    }

    /// Writes `buf` back over page `page` of the source (`copy_to_user`; EFAULT when it faults
    /// or when there is no user source to write to).
    pub fn write_page(&self, page: u64, buf: &[u8]) -> KResult<()> {
        match *self {
            PopulateSource::User { current, uaddr } => {
                current.copy_to_user(uaddr.wrapping_add(page << PAGE_SHIFT), buf)
            }
            PopulateSource::None | PopulateSource::Buffer(_) => Err(Errno::EFAULT),
        }
    }
}

/// What the vCPU's access looks like to the hardware after the nested page walk: the checks a
/// platform memory protection makes (the SEV-SNP RMP check) see this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestAccess {
    /// The guest frame accessed.
    pub gfn: Gfn,
    /// The host frame the nested page tables map it to.
    pub pfn: Pfn,
    /// The level of the nested leaf that maps it.
    pub npt_level: PgLevel,
    /// A write.
    pub write: bool,
    /// A private access (the guest's C-bit on SEV-SNP, the absence of the shared bit on TDX).
    pub private: bool,
}

/// What the hardware does instead of completing a guest access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFault {
    /// A nested page fault to the hypervisor with this error code (`PFERR_*` bits, including the
    /// vendor's: [`PFERR_GUEST_RMP_MASK`], [`PFERR_GUEST_ENC_MASK`], [`PFERR_GUEST_SIZEM_MASK`]).
    Npf {
        /// The error code (`exit_info_1` of `SVM_EXIT_NPF`).
        error_code: u64,
    },
    /// An exception delivered to the guest itself.
    Exception(GuestException),
}

/// An exception the hardware delivers to the guest instead of completing its access: the guest
/// sees it, the hypervisor does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestException {
    /// The vector (`"#VC"`).
    pub vector: &'static str,
    /// The guest physical address of the access.
    pub gpa: u64,
    /// Why (`"page-not-validated"`).
    pub reason: &'static str,
}

/// `PFERR_WRITE_MASK`.
pub const PFERR_WRITE_MASK: u64 = 1 << 1;
/// `PFERR_GUEST_RMP_MASK`: the nested fault came from an RMP check (SEV-SNP).
pub const PFERR_GUEST_RMP_MASK: u64 = 1 << 31;
/// `PFERR_GUEST_FINAL_MASK`: the fault is on the final guest physical address.
pub const PFERR_GUEST_FINAL_MASK: u64 = 1 << 32;
/// `PFERR_GUEST_ENC_MASK`: the access was encrypted (the guest's C-bit; SEV-SNP).
pub const PFERR_GUEST_ENC_MASK: u64 = 1 << 34;
/// `PFERR_GUEST_SIZEM_MASK`: the nested leaf and the RMP entry differ in size (SEV-SNP).
pub const PFERR_GUEST_SIZEM_MASK: u64 = 1 << 35;
/// `PFERR_PRIVATE_ACCESS`: KVM's synthetic bit for a private fault.
pub const PFERR_PRIVATE_ACCESS: u64 = 1 << 49;

/// The hooks of one VM's vendor back-end (`kvm_x86_ops`, with the per-VM state the vendor keeps
/// behind `struct kvm`: `kvm_sev_info`, `kvm_tdx`). A method with a default body is a hook the
/// vendor may leave out, and the default is what the kernel does then.
pub trait KvmArch: Send + Sync + fmt::Debug {
    /// For dumps and diagnostics.
    fn name(&self) -> &'static str;

    /// The back-end as `Any`, so vendor code can reach its own state (`to_kvm_sev_info(kvm)`).
    fn as_any(&self) -> &dyn Any;

    /// `kvm_arch_gmem_prepare(kvm, gfn, pfn, max_order)`: called the first time a folio is handed
    /// to the guest (from `kvm_gmem_get_pfn`), with the folio locked. The default is the
    /// kernel's behaviour for a vendor without the hook: `static_call` returns 0.
    #[doc(alias = "kvm_arch_gmem_prepare")]
    fn gmem_prepare(&self, _kvm: &Kvm, _gfn: Gfn, _pfn: Pfn, _max_order: u8) -> KResult<()> {
        Ok(())
    }

    /// `kvm_arch_gmem_invalidate(start, end)`: the folio is leaving the page cache
    /// (`free_folio`); make the frames safe for the host again. Default: nothing to undo.
    #[doc(alias = "kvm_arch_gmem_invalidate")]
    fn gmem_invalidate(&self, _start: Pfn, _end: Pfn) {}

    /// The max mapping level the vendor allows for `pfn` (`kvm_x86_ops.gmem_max_mapping_level`,
    /// v6.14's `private_max_mapping_level`); `None` is "no restriction" (the kernel's 0, the
    /// default of vendors without the hook). SNP answers with the RMP level, TDX with 4K for
    /// private pfns ([`tdx_gmem_max_mapping_level`]).
    #[doc(alias = "tdx_gmem_private_max_mapping_level")]
    fn gmem_max_mapping_level(&self, _kvm: &Kvm, _pfn: Pfn, _is_private: bool) -> Option<PgLevel> {
        None
    }

    /// The VM type's `post_populate` callback for `kvm_gmem_populate` (SNP's
    /// `sev_gmem_post_populate`, TDX's `tdx_gmem_post_populate`, a plain copy for the model's
    /// SW_PROTECTED populate): initialise the `1 << order` pages from `pfn` for `gfn`, from
    /// `source`. `opaque` is the caller's argument block (the kernel's `void *opaque`: SNP's page
    /// type and firmware error out-parameter); a back-end downcasts it to its own type.
    fn post_populate(
        &self,
        kvm: &Kvm,
        gfn: Gfn,
        pfn: Pfn,
        source: &PopulateSource<'_>,
        order: u8,
        opaque: &mut dyn Any,
    ) -> KResult<()>;

    /// `kvm_x86_ops.mem_enc_ioctl` (`KVM_MEMORY_ENCRYPT_OP`) with the user pointer `argp`.
    /// Default: the vendor has none (`kvm_arch_vm_ioctl` answers ENOTTY).
    fn mem_enc_ioctl(&self, _kvm: &Arc<Kvm>, _current: Current<'_>, _argp: u64) -> KResult<()> {
        Err(Errno::ENOTTY)
    }

    /// `kvm_x86_ops.vcpu_mem_enc_ioctl` (`KVM_MEMORY_ENCRYPT_OP` on a vCPU descriptor, from
    /// `kvm_arch_vcpu_ioctl`) with the user pointer `argp`. Default: the vendor has none
    /// (`kvm_arch_vcpu_ioctl` answers ENOTTY).
    fn vcpu_mem_enc_ioctl(
        &self,
        _kvm: &Arc<Kvm>,
        _vcpu: &Arc<crate::vcpu::KvmVcpu>,
        _current: Current<'_>,
        _argp: u64,
    ) -> KResult<()> {
        Err(Errno::ENOTTY)
    }

    /// Whether `KVM_MEMORY_ENCRYPT_OP` on a vCPU of `kvm` runs without `vcpu->mutex`
    /// (v6.19's `vcpu_mem_enc_unlocked_ioctl`, which TDX uses once it takes "all the locks"
    /// itself: upstream fix F16). Default: `kvm_vcpu_ioctl` takes `vcpu->mutex` first.
    fn vcpu_mem_enc_ioctl_unlocked(&self, _kvm: &Kvm) -> bool {
        false
    }

    /// A vCPU is being kicked out of guest mode (`kvm_make_all_cpus_request` with a kick): what
    /// the IPI does to the vendor's guest state before KVM sees the vCPU outside guest mode (TDX:
    /// the TD exit that ends `TDH.VP.ENTER`, so the vCPU leaves the TD epoch it entered in).
    /// Model only: the kernel's IPI does it in hardware. Default: nothing.
    fn kick_vcpu(&self, _kvm: &Kvm, _vcpu: &crate::vcpu::KvmVcpu) {}

    /// `kvm_x86_ops.vcpu_create`: the vendor's per-vCPU state (`struct vcpu_svm` and friends),
    /// kept in the vCPU and reached with [`KvmVcpu::arch`](crate::vcpu::KvmVcpu::arch).
    #[doc(alias("svm_vcpu_create", "tdx_vcpu_create"))]
    fn vcpu_create(&self, _kvm: &Kvm, _vcpu_id: u32) -> KResult<Box<dyn Any + Send + Sync>> {
        Ok(Box::new(()))
    }

    /// `kvm_x86_ops.vcpu_free` (from `kvm_destroy_vcpus`, before `kvm_mmu_uninit_vm` and [`KvmArch::vm_destroy`]).
    #[doc(alias("sev_free_vcpu", "tdx_vcpu_free"))]
    fn vcpu_free(&self, _kvm: &Kvm, _vcpu: &crate::vcpu::KvmVcpu) {}

    /// The vendor's part of `kvm_unmap_gfn_range` (`mmu_lock` held for write, inside the
    /// invalidation): drop what the vendor keeps pointing into the range besides SPTEs (SNP's
    /// guest-provided VMSA with upstream fix F11). Default: nothing.
    fn unmap_gfn_range(&self, _kvm: &Kvm, _range: &crate::mmu::KvmGfnRange) {}

    /// `kvm_x86_ops.vm_destroy` (the last step of `kvm_arch_destroy_vm`: after the vCPUs were freed and
    /// `kvm_mmu_uninit_vm` tore the roots down; before the memslots go).
    #[doc(alias = "tdx_vm_destroy")]
    fn vm_destroy(&self, _kvm: &Kvm) {}

    /// `kvm_x86_ops.vm_pre_destroy` (from `kvm_arch_pre_destroy_vm`, the first step of
    /// `kvm_destroy_vm`, before the MMU notifier is unregistered and long before
    /// `kvm_mmu_uninit_vm` tears the mirror root down: TDX releases the HKID here, which
    /// [`KvmArch::free_external_spt`] requires). Default: nothing.
    fn vm_pre_destroy(&self, _kvm: &Kvm) {}

    /// Whether the VM's TDP MMU has a mirror root next to its direct root
    /// (`kvm_has_mirrored_tdp`: TDX VMs): private faults map into the mirror root, whose changes
    /// are propagated to the vendor's external page tables through the four external-SPT hooks
    /// below; shared faults map into the direct root at `gfn | kvm_gfn_direct_bits`. Read once
    /// when the VM is created. Default: no mirror root (the hooks are never called).
    fn has_mirror_root(&self) -> bool {
        false
    }

    /// `kvm_x86_ops.link_external_spt(kvm, gfn, level, external_spt)`: a non-leaf SPTE of the
    /// mirror root at `level` covering `gfn` (rounded to `level`) is becoming present, pointing
    /// to a new page table whose external page is `external_spt` (TDX: `TDH.MEM.SEPT.ADD`).
    /// Called from `set_external_spte_present` with `mmu_lock` held for read, the SPTE FROZEN,
    /// and no other lock held. An error (TDX: `EBUSY` for a contended S-EPT, `EIO` after a
    /// `KVM_BUG_ON` of its own) restores the SPTE and the fault returns `RET_PF_RETRY`; the table
    /// and its external page are freed. The default (a VM without a mirror root never gets
    /// here) records a WARN and returns `EIO`.
    #[doc(alias = "tdx_sept_link_private_spt")]
    fn link_external_spt(&self, kvm: &Kvm, gfn: Gfn, level: SpteLevel, external_spt: Pfn) -> KResult<()> {
        external_hook_without_mirror_root(kvm, "link_external_spt", gfn, level, external_spt)
    }

    /// `kvm_x86_ops.set_external_spte(kvm, gfn, level, pfn)`: a leaf SPTE of the mirror root is
    /// becoming present, mapping `gfn` to `pfn` at `level` (TDX: `TDH.MEM.PAGE.AUG`, or the
    /// premap of the initial image). Called as [`KvmArch::link_external_spt`] is, with the same
    /// error convention. Default: WARN and `EIO`.
    fn set_external_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        external_hook_without_mirror_root(kvm, "set_external_spte", gfn, level.into(), pfn)
    }

    /// `kvm_x86_ops.remove_external_spte(kvm, gfn, level, pfn)`: a present leaf SPTE of the
    /// mirror root mapping `gfn` to `pfn` at `level` was just made non-present (TDX:
    /// `TDH.MEM.RANGE.BLOCK`, `TDH.MEM.TRACK` and the kick, `TDH.MEM.PAGE.REMOVE`, WBINVD).
    /// Called with `mmu_lock` held for **write**, after the SPTE was cleared, with no other lock
    /// held. v6.18 expects it to succeed: an error is `KVM_BUG_ON` (the VM is dead). Default:
    /// WARN and `EIO`.
    fn remove_external_spte(&self, kvm: &Kvm, gfn: Gfn, level: PgLevel, pfn: Pfn) -> KResult<()> {
        external_hook_without_mirror_root(kvm, "remove_external_spte", gfn, level.into(), pfn)
    }

    /// `kvm_x86_ops.free_external_spt(kvm, gfn, level, external_spt)`: the mirror page table of
    /// `level` (its own level: 1 for a PT) whose first gfn is `gfn` was unlinked and emptied
    /// (`handle_removed_pt`, bottom-up: its leaves were removed and its child tables freed
    /// first); release `external_spt` (TDX: `TDH.PHYMEM.PAGE.RECLAIM`, valid only once the HKID
    /// is released). Called with `mmu_lock` held for write. On success the TDP MMU frees the
    /// page; an error is a WARN and the page is leaked (never handed back to the host). Default:
    /// WARN and `EIO`.
    #[doc(alias = "tdx_sept_free_private_spt")]
    fn free_external_spt(&self, kvm: &Kvm, gfn: Gfn, level: SpteLevel, external_spt: Pfn) -> KResult<()> {
        external_hook_without_mirror_root(kvm, "free_external_spt", gfn, level, external_spt)
    }

    /// `kvm->arch.pre_fault_allowed` as `kvm_arch_init_vm` and the vendor's `vm_init` leave it:
    /// VMs whose memory needs no launch may be pre-faulted from the start.
    fn init_pre_fault_allowed(&self, vm_type: VmType) -> bool {
        matches!(vm_type, VmType::Default | VmType::SwProtected)
    }

    /// The vendor's part of entering the guest (`KVM_RUN` → `vcpu_enter_guest`: pending
    /// requests such as SNP's protected-state update, then `pre_*_run`). An error ends the run
    /// with it (the VMRUN could not enter: `KVM_EXIT_FAIL_ENTRY`, or an errno).
    #[doc(alias("pre_sev_run", "svm_vcpu_pre_run"))]
    fn vcpu_pre_run(&self, _kvm: &Kvm, _vcpu: &crate::vcpu::KvmVcpu) -> Result<(), crate::vcpu::RunError> {
        Ok(())
    }

    /// `kvm_x86_ops.vcpu_run` up to the VM entry (`vcpu_enter_guest` calls it in guest mode,
    /// after the request check that may cancel the entry): whether the guest runs now. TDX's
    /// `tdx_vcpu_run` enters with `TDH.VP.ENTER`, or returns `EXIT_FASTPATH_EXIT_HANDLED` without
    /// entering while `wait_for_sept_zap` is set ([`VcpuRunEntry::NotEntered`]: `vcpu_run`'s
    /// loop goes round and the vCPU tries again). After [`VcpuRunEntry::Entered`] the guest's
    /// access runs, then [`KvmArch::vcpu_run_exit`], both still in guest mode. Called on every
    /// attempt of [`guest_page_op`](crate::vcpu::guest_page_op) and of
    /// [`guest_run_to_exit`](crate::vcpu::guest_run_to_exit). Default: the hardware enters
    /// (VMRUN, VMLAUNCH), nothing for the model to do.
    fn vcpu_run(&self, _kvm: &Kvm, _vcpu: &crate::vcpu::KvmVcpu) -> VcpuRunEntry {
        VcpuRunEntry::Entered
    }

    /// The VM exit that ends an entry [`KvmArch::vcpu_run`] made (TDX: the TD exit that ends
    /// `TDH.VP.ENTER`, after which the vCPU no longer holds the TD epoch it entered in), in
    /// guest mode, before `vcpu->mode` goes back to `OUTSIDE_GUEST_MODE`. Default: nothing.
    fn vcpu_run_exit(&self, _kvm: &Kvm, _vcpu: &crate::vcpu::KvmVcpu) {}

    /// Whether [`KvmArch::guest_access_check`] can ever refuse an access (so that VMs without a
    /// platform memory protection pay nothing for it on every guest access).
    fn checks_guest_accesses(&self) -> bool {
        false
    }

    /// The hardware's checks of a guest access after the nested page walk (SEV-SNP: the RMP
    /// check; a failure is a nested fault to KVM or a #VC to the guest).
    fn guest_access_check(&self, _kvm: &Kvm, _access: &GuestAccess) -> Result<(), GuestFault> {
        Ok(())
    }

    /// Whether a nested fault with `error_code` is a private fault (`PFERR_PRIVATE_ACCESS`
    /// synthesised by the vendor's NPF handler: SNP from `PFERR_GUEST_ENC`). `None`: the vendor
    /// does not classify, and the access's own kind stands.
    fn npf_is_private(&self, _error_code: u64) -> Option<bool> {
        None
    }

    /// The vendor part of the nested-fault handler, after the MMU resolved the fault and asked to
    /// resume the guest (SVM's `npf_interception` calls `sev_handle_rmp_fault` when the error
    /// code has `PFERR_GUEST_RMP`).
    #[doc(alias = "npf_interception")]
    fn handle_npf(&self, _kvm: &Kvm, _vcpu: &crate::vcpu::KvmVcpu, _gpa: u64, _error_code: u64) {}

    /// The exit handler of a guest access the hardware stopped with a fault for the hypervisor
    /// (an EPT/NPT violation: no usable translation, or a [`GuestFault::Npf`] from
    /// [`KvmArch::guest_access_check`]), outside guest mode, with `mm` the VM owner's address
    /// space: resolve it through the MMU and say what the run does next (`RET_PF_RETRY`: enter
    /// again; `RET_PF_EMULATE`: an MMIO exit; an error ends `KVM_RUN`). TDX overrides it with
    /// `tdx_handle_ept_violation` (private faults are write faults retried locally, a pending
    /// page touched with `SEPT_VE_DISABLE` kills the TD). Default: [`default_handle_guest_fault`].
    fn handle_guest_fault(
        &self,
        kvm: &Kvm,
        vcpu: &crate::vcpu::KvmVcpu,
        mm: &Mm,
        fault: &GuestFaultExit,
    ) -> Result<crate::vcpu::RetPf, crate::vcpu::RunError> {
        default_handle_guest_fault(kvm, vcpu, mm, fault)
    }

    /// How many references the vendor holds on the guest_memfd page `pfn` besides the page
    /// cache's (v6.18 TDX pins every page it maps into the S-EPT with `get_page`, because
    /// guest_memfd has no migration callback yet). INV-REFCOUNT adds them to what it expects.
    /// Model only. Default: none.
    fn gmem_page_pins(&self, _pfn: Pfn) -> i32 {
        0
    }

    /// The vendor's named invariants over `kvm` (SEV-SNP's S1–S12 of arch-and-mmu.md §5.2),
    /// pushed onto `out`. [`invariants::check`](crate::invariants::check) calls it for every VM
    /// it checks, after the core invariants, at a quiescent point. `vms` is every VM of that
    /// check (in a stable order) and `gmem_files` every guest_memfd it was handed, so that a
    /// vendor with host-wide state (the SEV-SNP RMP) can check that state once per call, from
    /// the first of its VMs in `vms`, knowing which VMs the call covers. Model only: the kernel
    /// has no such hook. Default: nothing to check.
    fn check_invariants(
        &self,
        _kvm: &Kvm,
        _vms: &[&Arc<Kvm>],
        _gmem_files: &[(&FileRef, &KvmGmem)],
        _out: &mut Vec<Violation>,
    ) {
    }
}

/// A guest access that exited with a fault (what [`KvmArch::handle_guest_fault`] is given).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestFaultExit {
    /// The faulting gpa (a TD's shared accesses carry the shared bit).
    pub gpa: u64,
    /// The access was a write.
    pub write: bool,
    /// The access was private (its kind: the C-bit, the absence of TDX's shared bit).
    pub private: bool,
    /// The error code of a [`GuestFault::Npf`] the access check raised; `None` for a missing or
    /// read-only translation (a plain violation).
    pub error_code: Option<u64>,
}

/// The generic exit handler of a faulted guest access (`npf_interception` /
/// `handle_ept_violation` → `kvm_mmu_page_fault`): a private fault if the vendor classifies the
/// error code as one ([`KvmArch::npf_is_private`]: SNP's `PFERR_GUEST_ENC`), else if the access
/// was; then, unless the fault is to be emulated, the vendor's part ([`KvmArch::handle_npf`]).
pub fn default_handle_guest_fault(
    kvm: &Kvm,
    vcpu: &crate::vcpu::KvmVcpu,
    mm: &Mm,
    fault: &GuestFaultExit,
) -> Result<crate::vcpu::RetPf, crate::vcpu::RunError> {
    let arch = kvm.arch();
    let is_private = fault.error_code.and_then(|code| arch.npf_is_private(code)).unwrap_or(fault.private);
    let ret = crate::page_fault::kvm_mmu_page_fault(kvm, vcpu, mm, fault.gpa, is_private, fault.write)?;
    if ret != crate::vcpu::RetPf::Emulate {
        if let Some(code) = fault.error_code {
            arch.handle_npf(kvm, vcpu, fault.gpa, code);
        }
    }
    Ok(ret)
}

/// What [`KvmArch::vcpu_run`] did with one attempt to enter the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuRunEntry {
    /// The guest runs (its access happens, then [`KvmArch::vcpu_run_exit`]).
    Entered,
    /// No entry, and nothing for user space: `EXIT_FASTPATH_EXIT_HANDLED` (TDX while
    /// `wait_for_sept_zap` is set, or when `TDH.VP.ENTER` found a TD lock busy). `vcpu_run`'s
    /// loop goes round: the vCPU tries again (the model bounds the tries, see
    /// [`FAULT_RETRY_LIMIT`](crate::vcpu::FAULT_RETRY_LIMIT)), unless a signal is pending.
    NotEntered,
    /// The entry failed: `KVM_RUN` returns this.
    Failed(crate::vcpu::RunError),
}

/// The vendor module of the host: one per machine, it holds the host-wide hardware state and
/// gives each new VM its back-end (`kvm_x86_ops.vm_init`).
#[doc(alias = "kvm_x86_ops")]
pub trait ArchFactory: Send + Sync + fmt::Debug {
    /// The factory as `Any`, so callers can reach a vendor's host-wide state.
    fn as_any(&self) -> &dyn Any;

    /// Whether VMs of `vm_type` can run on this host (the vendor's contribution to
    /// `kvm_caps.supported_vm_types`; the kernel profile must list the type too).
    fn supports(&self, vm_type: VmType) -> bool;

    /// `kvm_arch_init_vm` → `kvm_x86_ops.vm_init`: the back-end of a new VM of a supported type.
    fn vm_init(&self, vm_type: VmType) -> KResult<Arc<dyn KvmArch>>;
}

/// Builds a machine's [`ArchFactory`] once the machine is booted (the vendor module's
/// `hardware_setup`, which may install host-wide checks on the machine).
pub type ArchSetup = Arc<dyn Fn(&Arc<Machine>, &KernelProfile) -> Arc<dyn ArchFactory> + Send + Sync>;

/// `tdx_gmem_max_mapping_level` (v6.18; `tdx_gmem_private_max_mapping_level` in v6.14): private
/// mappings of a TD are 4K (S-EPT huge pages are not supported); shared ones unrestricted.
pub fn tdx_gmem_max_mapping_level(is_private: bool) -> Option<PgLevel> {
    is_private.then_some(PgLevel::Level4K)
}

/// What the external-SPT hooks do on a back-end without them: the TDP MMU only calls them on a
/// mirror root, so getting here is a KVM bug (the kernel would call a NULL `kvm_x86_ops` member).
fn external_hook_without_mirror_root(kvm: &Kvm, hook: &str, gfn: Gfn, level: SpteLevel, pfn: Pfn) -> KResult<()> {
    kvm.machine().warnings.report(
        gmem_sync::warn::WarnKind::Warn,
        format!("{hook}(gfn {gfn}, {level}, {pfn:?}) on a {} VM without a mirror root", kvm.arch().name()),
    );
    Err(Errno::EIO)
}

/// The back-end of DEFAULT, SEV and SEV-ES VMs: no private memory, so the hooks do nothing
/// (`kvm_x86_call(gmem_prepare)` is a no-op returning 0 for VMs that are not SNP).
#[derive(Debug, Default)]
pub struct DefaultArch;

impl KvmArch for DefaultArch {
    fn name(&self) -> &'static str {
        "default"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn post_populate(
        &self,
        _kvm: &Kvm,
        _gfn: Gfn,
        _pfn: Pfn,
        _source: &PopulateSource<'_>,
        _order: u8,
        _opaque: &mut dyn Any,
    ) -> KResult<()> {
        // Only SNP and TDX have a populate path in the kernel. A VM without private memory does
        // not get here: kvm_gmem_populate's PRIVATE-attribute check fails first, since such a VM
        // supports no attributes.
        Err(Errno::EINVAL)
    }
}

/// The back-end of SW_PROTECTED VMs: private memory is ordinary memory the host does not map.
/// Prepare and invalidate are no-ops; populate copies the source page (the model's own: the
/// kernel has no populate path for SW_PROTECTED VMs).
#[derive(Debug, Default)]
pub struct SwProtectedArch;

impl KvmArch for SwProtectedArch {
    fn name(&self) -> &'static str {
        "sw-protected"
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn post_populate(
        &self,
        kvm: &Kvm,
        _gfn: Gfn,
        pfn: Pfn,
        source: &PopulateSource<'_>,
        order: u8,
        _opaque: &mut dyn Any,
    ) -> KResult<()> {
        let mem = &kvm.machine().mem;
        let mut page = [0u8; PAGE_SIZE as usize];
        for i in 0..(1u64 << order) {
            source.read_page(i, &mut page)?;
            mem.write(pfn.offset(i), 0, &page);
        }
        Ok(())
    }
}

/// The host without vendor hardware: DEFAULT, SEV and SEV-ES VMs get [`DefaultArch`],
/// SW_PROTECTED VMs [`SwProtectedArch`]; SEV-SNP and TDX VMs need their vendor's factory.
#[derive(Debug, Default)]
pub struct GenericArchFactory;

impl GenericArchFactory {
    /// An [`ArchSetup`] that installs it.
    pub fn setup() -> ArchSetup {
        Arc::new(|_machine, _profile| Arc::new(GenericArchFactory) as Arc<dyn ArchFactory>)
    }
}

impl ArchFactory for GenericArchFactory {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn supports(&self, vm_type: VmType) -> bool {
        !matches!(vm_type, VmType::SevSnp | VmType::Tdx)
    }

    fn vm_init(&self, vm_type: VmType) -> KResult<Arc<dyn KvmArch>> {
        match vm_type {
            VmType::SwProtected => Ok(Arc::new(SwProtectedArch)),
            VmType::Default | VmType::Sev | VmType::SevEs => Ok(Arc::new(DefaultArch)),
            VmType::SevSnp | VmType::Tdx => Err(Errno::EINVAL),
        }
    }
}
