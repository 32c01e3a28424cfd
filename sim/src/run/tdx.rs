//! The TDX guest of `gmem-sim run --vm-type TDX`: each vCPU thread acts as a Linux TD guest on
//! the pages it owns (`arch/x86/coco/tdx/tdx.c`, `tdx-shared.c`), on a TD the VMM created
//! without `SEPT_VE_DISABLE`, so that a guest access to a private page the host took away is a
//! #VE the guest sees rather than a dead TD.
//!
//! * **Acceptance.** The guest tracks which of its pages it accepted. The boot image's pages
//!   were added to the TD by `KVM_TDX_INIT_MEM_REGION` (MAPPED: accepted); any other private
//!   page is accepted (`TDG.MEM.PAGE.ACCEPT`, which zeroes it) before its first private use.
//!   An ACCEPT the module answers `TDX_OPERAND_BUSY` (the S-EPT is held by a concurrent zap)
//!   is repeated, a bounded number of times (Linux's `try_accept_one` would fail the
//!   conversion instead); "already accepted" means the page is usable.
//! * **#VE.** An access to a private page the guest believed accepted that raises #VE (the
//!   page is PENDING: KVM AUGed a fresh one after the host removed the old one) can only follow
//!   a destructive host operation on the page (a punch, a memslot deleted and re-added, a
//!   closed guest_memfd, the guest's own conversion): a real Linux guest panics, this one
//!   accepts the page again and retries, counting it (`ve_exceptions`). A #VE with no
//!   destructive operation on the page since the guest accepted it is an integrity error.
//! * **Accesses** are private or shared by the guest's own view of the page: a shared access
//!   uses the gpa with the shared bit (the direct root, the VMM's shared backing). The view
//!   matches the attributes because only the guest converts its pages.
//! * **Conversions** (`tdx_enc_status_changed` for the pages of a virtually contiguous buffer,
//!   which are adjacent here only with one vCPU: each run of adjacent pages is one request):
//!   Linux's `tdx_map_gpa` (`TDG.VP.VMCALL<MapGPA>`, asking again from R11 on
//!   `TDVMCALL_STATUS_RETRY`), whose `KVM_EXIT_HYPERCALL` chunks the VMM converts in QEMU's order
//!   (now and then an interrupt arrives for the vCPU meanwhile); then, to private, an ACCEPT of
//!   every page. A conversion is destructive for its pages and bracketed as such. A MapGPA that
//!   fails is repeated a bounded number of times; if it still fails the pages' state is unknown
//!   to the guest (`pending`), it converts them again before it uses them, and the failure is a
//!   VMM error (the VMM's conversions do not fail in this workload).

use std::sync::atomic::{AtomicU64, Ordering};

use gmem_kvm::vcpu::RunError;
use gmem_uapi::vmm::{TdxStatus, TDX_PAGE_ALREADY_ACCEPTED};
use gmem_uapi::Vmm;

use super::workers::{Shared, ACCESS_RETRIES};
use crate::rng::Rng;

/// Attempts of one MapGPA conversion before the guest leaves its pages pending.
const MAP_GPA_ATTEMPTS: u32 = 4;
/// Attempts of one ACCEPT the module finds busy.
const ACCEPT_ATTEMPTS: u32 = 64;
/// One in this many `KVM_EXIT_HYPERCALL`s the VMM handles sees an interrupt arrive for the
/// vCPU meanwhile (which can make MapGPA answer `TDVMCALL_STATUS_RETRY` and ends local retries
/// of EPT violations).
const EVENT_EVERY: u64 = 8;

/// What the TD guests did (see [`TdxGuest`]).
#[derive(Debug, Default)]
pub(super) struct TdxCounters {
    /// `TDG.MEM.PAGE.ACCEPT` calls.
    pub(super) accepts: AtomicU64,
    /// ACCEPTs the module answered `TDX_OPERAND_BUSY` (repeated).
    pub(super) accept_busy: AtomicU64,
    /// Linux `tdx_map_gpa` conversions (each a MapGPA request, plus its retries).
    pub(super) map_gpa_conversions: AtomicU64,
    /// Conversions whose MapGPA failed and was repeated.
    pub(super) map_gpa_errors: AtomicU64,
    /// Conversions whose MapGPA still failed after every attempt (the pages pending).
    pub(super) conversions_incomplete: AtomicU64,
    /// #VE exceptions for a page that is not accepted, after which the guest accepted it again.
    pub(super) ve_exceptions: AtomicU64,
    /// Interrupts that arrived while the VMM handled a MapGPA exit.
    pub(super) events_posted: AtomicU64,
}

/// The guest's view of one of its pages.
#[derive(Clone, Copy, Debug)]
struct PageView {
    /// Private (else shared), as the guest last made it.
    private: bool,
    /// A conversion to this state was asked for and may or may not have happened.
    pending: Option<bool>,
    /// The guest accepted the page (or the launch added it) and has seen no #VE on it since.
    accepted: bool,
    /// The page's epoch `gen` when that acceptance was known not to overlap a destructive
    /// operation.
    accepted_at: Option<u64>,
    /// The boot image may still be in the page (no store, and no completed conversion to
    /// shared, since the launch).
    image: bool,
}

/// One vCPU acting as a Linux TD guest on the pages it owns.
pub(super) struct TdxGuest<'a> {
    shared: &'a Shared<'a>,
    vcpu: u32,
    fd: i32,
    vcpus: u64,
    /// By `page / vcpus`.
    pages: Vec<PageView>,
    /// When interrupts arrive during MapGPA exits.
    rng: Rng,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl<'a> TdxGuest<'a> {
    /// vCPU `vcpu`'s guest after its boot: every page private, the image's pages accepted.
    pub(super) fn boot(shared: &'a Shared<'a>, vcpu: u32, fd: i32) -> TdxGuest<'a> {
        let config = shared.config;
        let vcpus = u64::from(config.vcpus);
        let owned = (config.pages() - u64::from(vcpu)).div_ceil(vcpus);
        let pages = (0..owned)
            .map(|i| {
                let launched = i * vcpus + u64::from(vcpu) < config.image_pages();
                PageView {
                    private: true,
                    pending: None,
                    accepted: launched,
                    accepted_at: launched.then_some(0),
                    image: launched,
                }
            })
            .collect();
        TdxGuest { shared, vcpu, fd, vcpus, pages, rng: Rng::new(config.seed ^ 0x7d78, u64::from(vcpu)) }
    }

    fn view_mut(&mut self, page: u64) -> &mut PageView {
        &mut self.pages[(page / self.vcpus) as usize]
    }

    fn view(&self, page: u64) -> PageView {
        self.pages[(page / self.vcpus) as usize]
    }

    /// Whether the boot image may still be in `page`.
    pub(super) fn image_live(&self, page: u64) -> bool {
        self.view(page).image
    }

    /// A store to `page` succeeded: whatever the page held before is gone.
    pub(super) fn overwritten(&mut self, page: u64) {
        self.view_mut(page).image = false;
    }

    /// `TDG.MEM.PAGE.ACCEPT` of `page` before its private use, repeated while the module finds
    /// the S-EPT busy; records the epoch if no destructive operation overlapped it. `Some(Err)`
    /// is the exit the ACCEPT took (the page could not be reached); `None` a status other than
    /// success or "already accepted" (reported as a VMM error here).
    fn accept(&mut self, page: u64) -> Option<Result<(), RunError>> {
        let epoch = &self.shared.pages[page as usize];
        let g0 = epoch.gen.load(Ordering::SeqCst);
        let quiet = epoch.active.load(Ordering::SeqCst) == 0;
        let gpa = Vmm::page_gpa(page);
        let mut status = TdxStatus::SUCCESS;
        for _ in 0..ACCEPT_ATTEMPTS {
            bump(&self.shared.tdx.accepts);
            status = match self.shared.vmm.tdx_accept(self.fd, gpa) {
                Ok(status) => status,
                Err(error) => return Some(Err(error)),
            };
            if !status.is_busy() {
                break;
            }
            bump(&self.shared.tdx.accept_busy);
            std::thread::yield_now();
        }
        if !status.is_success() && !status.is(TDX_PAGE_ALREADY_ACCEPTED) {
            self.shared.error(
                &self.shared.vmm_errors,
                format!("TDX vCPU {}: TDG.MEM.PAGE.ACCEPT of page {page} failed with {status}", self.vcpu),
            );
            return None;
        }
        let stable = quiet && epoch.gen.load(Ordering::SeqCst) == g0;
        let view = self.view_mut(page);
        view.accepted = true;
        view.accepted_at = stable.then_some(g0);
        Some(Ok(()))
    }

    /// One load or store of `page` as the guest makes it (see the module docs). `None` if the
    /// guest did not access the page: it could not finish a pending conversion of it, or its
    /// ACCEPT failed (reported).
    pub(super) fn access(&mut self, page: u64, buf: &mut [u8; 16], write: bool) -> Option<Result<(), RunError>> {
        if let Some(to_private) = self.view(page).pending {
            self.convert_pages(&[page], to_private);
            if self.view(page).pending.is_some() {
                return None;
            }
        }
        let private = self.view(page).private;
        let gpa = Vmm::page_gpa(page);
        let mut outcome = Err(RunError::Errno(gmem_uapi::Errno::EINTR));
        for _ in 0..ACCESS_RETRIES {
            if private && !self.view(page).accepted {
                match self.accept(page)? {
                    Ok(()) => {}
                    Err(error) => return Some(Err(error)),
                }
            }
            outcome = self.shared.vmm.guest_access_as(self.fd, gpa, buf, write, private);
            match outcome {
                Err(RunError::GuestException(exception)) if private && exception.vector == "#VE" => {
                    bump(&self.shared.tdx.ve_exceptions);
                    let epoch = &self.shared.pages[page as usize];
                    let view = self.view(page);
                    if view.accepted
                        && view.accepted_at.is_some_and(|g| g == epoch.gen.load(Ordering::SeqCst))
                        && epoch.active.load(Ordering::SeqCst) == 0
                    {
                        self.shared.error(
                            &self.shared.integrity_errors,
                            format!(
                                "TDX vCPU {}: {exception:?} on page {page}, accepted with no destructive operation on it since",
                                self.vcpu
                            ),
                        );
                    }
                    let view = self.view_mut(page);
                    view.accepted = false;
                    view.accepted_at = None;
                }
                _ => break,
            }
        }
        Some(outcome)
    }

    /// The operation `Convert { npages, to_private }` from `page`: the `npages` pages this vCPU
    /// owns from `page` on whose state differs (or is unknown) are converted, as one
    /// destructive operation on each.
    pub(super) fn convert(&mut self, page: u64, npages: u64, to_private: bool) {
        let targets: Vec<u64> = (0..npages)
            .map(|k| page + k * self.vcpus)
            .filter(|&p| {
                let view = self.view(p);
                view.pending.is_some() || view.private != to_private
            })
            .collect();
        if !targets.is_empty() {
            self.convert_pages(&targets, to_private);
        }
    }

    /// `tdx_enc_status_changed` of `targets`, bracketed as a destructive operation on each page.
    fn convert_pages(&mut self, targets: &[u64], to_private: bool) {
        for &p in targets {
            self.shared.begin(p, 1);
        }
        // Each page's `gen` once its bracket is open: if nothing else overlaps, it ends one
        // higher.
        let opened: Vec<u64> =
            targets.iter().map(|&p| self.shared.pages[p as usize].gen.load(Ordering::SeqCst)).collect();
        let mut converted = Vec::new();
        let mut accepted = Vec::new();
        // One request per run of adjacent pages (a contiguous physical range).
        let mut i = 0;
        while i < targets.len() {
            let mut j = i + 1;
            while j < targets.len() && targets[j] == targets[j - 1] + 1 {
                j += 1;
            }
            let run = &targets[i..j];
            if self.map_gpa(run, to_private) {
                converted.extend_from_slice(run);
                if to_private {
                    // Shared-to-private memory must be accepted before use. A page the ACCEPT
                    // cannot reach now is accepted before its next private use.
                    for &p in run {
                        if self.accept(p) == Some(Ok(())) {
                            accepted.push(p);
                        }
                    }
                }
            }
            i = j;
        }
        for &p in targets {
            // A page made shared lost its guest_memfd folio, poisoned or not.
            self.shared.end(p, 1, !to_private && converted.contains(&p));
        }
        // The ACCEPTs inside the bracket did not overlap any other destructive operation if the
        // page's epoch moved only by this bracket's end.
        for (&p, g) in targets.iter().zip(opened) {
            let epoch = &self.shared.pages[p as usize];
            let quiet = epoch.active.load(Ordering::SeqCst) == 0 && epoch.gen.load(Ordering::SeqCst) == g + 1;
            if quiet && accepted.contains(&p) {
                self.view_mut(p).accepted_at = Some(g + 1);
            }
        }
    }

    /// Linux's `tdx_map_gpa` for the adjacent pages `run`, repeated while it fails; updates the
    /// pages' views. True if the VMM converted them.
    fn map_gpa(&mut self, run: &[u64], to_private: bool) -> bool {
        let (start, end) = (Vmm::page_gpa(run[0]), Vmm::page_gpa(run[run.len() - 1]) + gmem_mm::PAGE_SIZE);
        let shared = self.shared;
        let vmm = shared.vmm;
        let fd = self.fd;
        let mut outcome = Ok(false);
        for attempt in 0..MAP_GPA_ATTEMPTS {
            if attempt > 0 {
                bump(&shared.tdx.map_gpa_errors);
                std::thread::yield_now();
            }
            bump(&shared.tdx.map_gpa_conversions);
            let rng = &mut self.rng;
            outcome = vmm.host().tdx_guest_map_gpa(fd, start, end, to_private, |exit| {
                let ret = vmm.handle_hypercall(exit);
                if rng.below(EVENT_EVERY) == 0 {
                    // An interrupt arrives for the vCPU while user space handles the exit.
                    bump(&shared.tdx.events_posted);
                    let _ = vmm.host().queue_event(fd);
                }
                ret
            });
            if outcome == Ok(true) {
                break;
            }
        }
        if outcome != Ok(true) {
            bump(&shared.tdx.conversions_incomplete);
            shared.error(
                &shared.vmm_errors,
                format!(
                    "TDX vCPU {}: MapGPA of pages {run:?} to {} answered {outcome:?}",
                    self.vcpu,
                    if to_private { "private" } else { "shared" }
                ),
            );
            for &p in run {
                let view = self.view_mut(p);
                view.pending = Some(to_private);
                view.accepted = false;
                view.accepted_at = None;
            }
            return false;
        }
        for &p in run {
            let view = self.view_mut(p);
            view.private = to_private;
            view.pending = None;
            view.accepted = false;
            view.accepted_at = None;
            // Made shared, the page's guest_memfd folio was punched. (Made private, a page
            // pending since a failed conversion to shared may still hold what it held.)
            if !to_private {
                view.image = false;
            }
        }
        true
    }
}
