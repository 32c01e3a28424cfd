//! The operation streams: what each vCPU thread ([`VcpuStream`]) and the control thread
//! ([`ControlStream`]) do, drawn from the run's seed, one stream per thread. A stream depends
//! only on the configuration, never on timing, so [`generate`] can list a run's operations
//! without running them, the watchdog can name the operation a stuck thread is in by
//! regenerating its stream, and a failure's replay command runs the same operations.

use super::config::{Config, Length, Mix, REGIONS};
use crate::rng::Rng;

/// The most pages a conversion or punch covers.
const MAX_RANGE_PAGES: u64 = 16;

/// What a vCPU does in one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuAction {
    /// A guest load.
    Load,
    /// A guest store.
    Store,
    /// An SNP guest or a TD converts `npages` of its pages, from the operation's page on and
    /// within its region (the vCPU's pages are every `vcpus`-th, so with more than one vCPU they are
    /// not adjacent), to private or to shared.
    Convert {
        /// Pages (the operation's page and the next ones the vCPU owns).
        npages: u64,
        /// To private (else to shared).
        to_private: bool,
    },
}

/// One vCPU operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuOp {
    /// What it does.
    pub action: VcpuAction,
    /// The page (index into guest memory), one the vCPU owns.
    pub page: u64,
}

impl VcpuOp {
    /// A store.
    pub fn is_write(&self) -> bool {
        self.action == VcpuAction::Store
    }
}

/// A vCPU's operation stream: accesses with locality (mostly a short step from the previous
/// page, sometimes a jump); for an SNP guest also conversions of its own pages, with the
/// mix's `convert` weight against `access`. An SNP vCPU's last page is its GHCB, which the
/// stream leaves alone.
#[derive(Clone, Debug)]
pub struct VcpuStream {
    rng: Rng,
    vcpu: u64,
    vcpus: u64,
    owned: u64,
    cursor: u64,
    /// `(convert weight, access + convert weight)` for an SNP guest or a TD.
    convert: Option<(u64, u64)>,
    region_pages: u64,
}

impl VcpuStream {
    /// vCPU `vcpu`'s stream.
    pub fn new(config: &Config, vcpu: u32) -> VcpuStream {
        let vcpus = u64::from(config.vcpus);
        let mut owned = (config.pages() - u64::from(vcpu)).div_ceil(vcpus);
        let mut convert = None;
        if config.is_snp() {
            owned -= 1; // the GHCB page
        }
        if config.guest_converts() {
            let weight = u64::from(config.mix.convert);
            if weight != 0 {
                convert = Some((weight, config.vcpu_weight()));
            }
        }
        VcpuStream {
            rng: Rng::new(config.seed, 1 + u64::from(vcpu)),
            vcpu: u64::from(vcpu),
            vcpus,
            owned,
            cursor: 0,
            convert,
            region_pages: config.pages() / u64::from(REGIONS),
        }
    }
}

impl Iterator for VcpuStream {
    type Item = VcpuOp;
    fn next(&mut self) -> Option<VcpuOp> {
        let r = self.rng.next_u64();
        if r % 16 == 0 {
            self.cursor = self.rng.below(self.owned);
        } else {
            let step = (r >> 8) % 9;
            self.cursor = (self.cursor + self.owned + step - 4) % self.owned;
        }
        let page = self.cursor * self.vcpus + self.vcpu;
        if let Some((weight, total)) = self.convert {
            if self.rng.below(total) < weight {
                // The guest's pages from the cursor on, within the page's region: each region is
                // a RAM block of its own, and the VMM refuses a conversion that leaves one (KVM
                // merges adjacent pages into one request, which happens with a single vCPU).
                let region_end = (page / self.region_pages + 1) * self.region_pages;
                let in_region = (region_end - 1 - self.vcpu) / self.vcpus + 1 - self.cursor;
                let npages = (1 + self.rng.below(MAX_RANGE_PAGES)).min(self.owned - self.cursor).min(in_region);
                let to_private = self.rng.below(2) == 0;
                return Some(VcpuOp { action: VcpuAction::Convert { npages, to_private }, page });
            }
        }
        let action = if (r >> 16) % 5 < 2 { VcpuAction::Store } else { VcpuAction::Load };
        Some(VcpuOp { action, page })
    }
}

/// One control operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlOp {
    /// `kvm_convert_memory` of `npages` pages from `page`.
    Convert {
        /// First page.
        page: u64,
        /// Pages.
        npages: u64,
        /// To private (else to shared).
        to_private: bool,
    },
    /// Punch `npages` pages from `page` out of the guest_memfd.
    Punch {
        /// First page.
        page: u64,
        /// Pages.
        npages: u64,
    },
    /// Delete and re-add a region's memslot.
    Memslot {
        /// The region.
        region: usize,
    },
    /// A memory failure on a guest_memfd page.
    MemFail {
        /// The page.
        page: u64,
    },
    /// Close a region's guest_memfd under running vCPUs, then replace it.
    Close {
        /// The region.
        region: usize,
    },
}

/// The control thread's operation stream, drawn with the mix's non-access weights.
#[derive(Clone, Debug)]
pub struct ControlStream {
    rng: Rng,
    mix: Mix,
    pages: u64,
}

impl ControlStream {
    /// The control stream of `config`.
    pub fn new(config: &Config) -> ControlStream {
        ControlStream { rng: Rng::new(config.seed, 0), mix: config.control_mix(), pages: config.pages() }
    }

    fn range(&mut self) -> (u64, u64) {
        let region_pages = self.pages / u64::from(REGIONS);
        let page = self.rng.below(self.pages);
        let left = region_pages - page % region_pages;
        (page, (1 + self.rng.below(MAX_RANGE_PAGES)).min(left))
    }
}

impl Iterator for ControlStream {
    type Item = ControlOp;
    fn next(&mut self) -> Option<ControlOp> {
        let total = self.mix.control_total();
        if total == 0 {
            return None;
        }
        let mut pick = self.rng.below(total);
        let mut kind = 1;
        for (i, w) in self.mix.weights().iter().enumerate().skip(1) {
            if pick < u64::from(*w) {
                kind = i;
                break;
            }
            pick -= u64::from(*w);
        }
        Some(match kind {
            1 => {
                let (page, npages) = self.range();
                ControlOp::Convert { page, npages, to_private: self.rng.below(2) == 0 }
            }
            2 => {
                let (page, npages) = self.range();
                ControlOp::Punch { page, npages }
            }
            3 => ControlOp::Memslot { region: self.rng.below(u64::from(REGIONS)) as usize },
            4 => ControlOp::MemFail { page: self.rng.below(self.pages) },
            _ => ControlOp::Close { region: self.rng.below(u64::from(REGIONS)) as usize },
        })
    }
}

/// How many operations each vCPU makes (guest accesses; an SNP guest's conversions too) and
/// how many control operations run, for `Length::Ops` (`None` for a timed run: unbounded).
pub fn op_counts(config: &Config) -> Option<(Vec<u64>, u64)> {
    let Length::Ops(total) = config.length else { return None };
    let weights = config.mix.total();
    let accesses = (u128::from(total) * u128::from(config.vcpu_weight()) / u128::from(weights)) as u64;
    let vcpus = u64::from(config.vcpus);
    let per = (0..vcpus).map(|v| accesses / vcpus + u64::from(v < accesses % vcpus)).collect();
    Some((per, total - accesses))
}

/// The first operations of every stream (at most `limit` each; for `Length::Ops`, exactly what
/// a run executes): the control stream, then each vCPU's.
pub fn generate(config: &Config, limit: usize) -> (Vec<ControlOp>, Vec<Vec<VcpuOp>>) {
    let (per, control) = op_counts(config).unwrap_or((vec![u64::MAX; config.vcpus as usize], u64::MAX));
    let cap = |n: u64| usize::try_from(n).unwrap_or(usize::MAX).min(limit);
    let control_ops = ControlStream::new(config).take(cap(control)).collect();
    let vcpu_ops = (0..config.vcpus).map(|v| VcpuStream::new(config, v).take(cap(per[v as usize])).collect()).collect();
    (control_ops, vcpu_ops)
}
