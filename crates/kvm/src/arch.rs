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

    /// The private max mapping level for `pfn` (`gmem_max_mapping_level`); `None` is "no
    /// restriction", the default.
    fn gmem_max_mapping_level(&self, _kvm: &Kvm, _pfn: Pfn) -> Option<PgLevel> {
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
