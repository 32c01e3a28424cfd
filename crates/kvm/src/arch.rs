//! The arch hooks guest_memfd calls (the `kvm_x86_ops` gmem hooks): prepare, invalidate,
//! post-populate, and the private max mapping level.
//!
//! This module ships the back-ends for VMs without hardware memory protection: DEFAULT (and
//! SEV / SEV-ES, whose memory KVM treats the same way here) and SW_PROTECTED. SEV-SNP (RMP) and
//! TDX (S-EPT, PAMT) implement the same trait in their own layer.

use crate::profile::VmType;
use crate::types::Gfn;
use crate::vm::Kvm;
use gmem_mm::{Errno, KResult, Pfn};
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

/// `sev_gmem_max_mapping_level` (v6.18; `sev_private_max_mapping_level` in v6.14): not an SNP
/// guest, or (v6.18) a shared fault, is "no restriction" (`None`, the kernel's 0); an RMP lookup
/// error or an unassigned pfn is 4K; otherwise the RMP entry's level. `rmp_level` is the lookup:
/// `None` for an error or an unassigned pfn.
pub fn sev_gmem_max_mapping_level(snp_guest: bool, is_private: bool, rmp_level: Option<PgLevel>) -> Option<PgLevel> {
    if !snp_guest || !is_private {
        return None;
    }
    Some(rmp_level.unwrap_or(PgLevel::Level4K))
}

/// `tdx_gmem_max_mapping_level` (v6.18; `tdx_gmem_private_max_mapping_level` in v6.14): private
/// mappings of a TD are 4K (S-EPT huge pages are not supported); shared ones unrestricted.
pub fn tdx_gmem_max_mapping_level(is_private: bool) -> Option<PgLevel> {
    is_private.then_some(PgLevel::Level4K)
}

/// The hooks, one implementation per VM type family.
pub trait KvmArch: Send + Sync + fmt::Debug {
    /// For dumps and diagnostics.
    fn name(&self) -> &'static str;

    /// `kvm_arch_gmem_prepare(kvm, gfn, pfn, max_order)`: called the first time a folio is handed
    /// to the guest (from `kvm_gmem_get_pfn`), with the folio locked. The default is the
    /// kernel's behaviour for a vendor without the hook: `static_call` returns 0.
    fn gmem_prepare(&self, _kvm: &Kvm, _gfn: Gfn, _pfn: Pfn, _max_order: u8) -> KResult<()> {
        Ok(())
    }

    /// `kvm_arch_gmem_invalidate(start, end)`: the folio is leaving the page cache
    /// (`free_folio`); make the frames safe for the host again. Default: nothing to undo.
    fn gmem_invalidate(&self, _start: Pfn, _end: Pfn) {}

    /// The max mapping level the vendor allows for `pfn` (`kvm_x86_ops.gmem_max_mapping_level`,
    /// v6.14's `private_max_mapping_level`); `None` is "no restriction" (the kernel's 0, the
    /// default of vendors without the hook). SNP answers with the RMP level
    /// ([`sev_gmem_max_mapping_level`]), TDX with 4K for private pfns
    /// ([`tdx_gmem_max_mapping_level`]).
    fn gmem_max_mapping_level(&self, _kvm: &Kvm, _pfn: Pfn, _is_private: bool) -> Option<PgLevel> {
        None
    }

    /// The VM type's `post_populate` callback for `kvm_gmem_populate` (SNP launch update, TDX
    /// init mem region, or a plain copy for SW_PROTECTED). `source` is the page to copy from.
    fn post_populate(&self, kvm: &Kvm, gfn: Gfn, pfn: Pfn, source: Option<&[u8]>, order: u8) -> KResult<()>;
}

/// The back-end of DEFAULT, SEV and SEV-ES VMs: no private memory, so the hooks do nothing
/// (`kvm_x86_call(gmem_prepare)` is a no-op returning 0 for VMs that are not SNP).
#[derive(Debug, Default)]
pub struct DefaultArch;

impl KvmArch for DefaultArch {
    fn name(&self) -> &'static str {
        "default"
    }

    fn post_populate(&self, _kvm: &Kvm, _gfn: Gfn, _pfn: Pfn, _source: Option<&[u8]>, _order: u8) -> KResult<()> {
        // Only SNP and TDX have a populate path in the kernel. A VM without private memory does
        // not get here: kvm_gmem_populate's PRIVATE-attribute check fails first, since such a VM
        // supports no attributes.
        Err(Errno::EINVAL)
    }
}

/// The back-end of SW_PROTECTED VMs: private memory is ordinary memory the host does not map.
/// Prepare and invalidate are no-ops; populate copies the source page.
#[derive(Debug, Default)]
pub struct SwProtectedArch;

impl KvmArch for SwProtectedArch {
    fn name(&self) -> &'static str {
        "sw-protected"
    }

    fn post_populate(&self, kvm: &Kvm, _gfn: Gfn, pfn: Pfn, source: Option<&[u8]>, order: u8) -> KResult<()> {
        let mem = &kvm.machine().mem;
        for page in 0..(1u64 << order) {
            let target = pfn.offset(page);
            let start = (page * gmem_mm::PAGE_SIZE) as usize;
            match source.and_then(|bytes| bytes.get(start..)) {
                Some(rest) if !rest.is_empty() => {
                    let len = rest.len().min(gmem_mm::PAGE_SIZE as usize);
                    mem.clear(target);
                    mem.write(target, 0, &rest[..len]);
                }
                _ => mem.clear(target),
            }
        }
        Ok(())
    }
}

/// The back-end for a VM type.
pub fn arch_for(vm_type: VmType) -> Box<dyn KvmArch> {
    match vm_type {
        VmType::SwProtected => Box::new(SwProtectedArch),
        _ => Box::new(DefaultArch),
    }
}
