//! The SEV-SNP guest of `gmem-sim run --vm-type SEV_SNP`: each vCPU thread acts as a Linux SNP
//! guest on the pages it owns (`arch/x86/coco/sev/core.c`, `arch/x86/boot/startup/sev-shared.c`).
//!
//! * **Boot.** The vCPU picks its GHCB, its last page, and makes it shared before it has a GHCB
//!   as Linux's `early_set_pages_state` does: PVALIDATE to rescind, then a page-state change by
//!   the GHCB MSR protocol; then it registers the GHCB (`GHCB_MSR_REG_GPA_REQ`). The VMM only
//!   answers the `KVM_EXIT_HYPERCALL` the request produces.
//! * **Validation.** The guest tracks which of its pages it validated. The boot image's pages
//!   were launched (Guest-Valid); any other private page is validated (PVALIDATE) before its
//!   first private use. An access to a page the guest believed validated that raises #VC
//!   (page-not-validated) can only follow a destructive host operation on the page (a punch,
//!   a closed guest_memfd, the guest's own conversion): a real guest would take it as an
//!   attack, this one validates the page again and retries, counting it (`vc_exceptions`). A
//!   #VC with no destructive operation since the guest validated the page is an integrity
//!   error.
//! * **Accesses** are private or shared by the guest's own view of the page (the C-bit), which
//!   matches the attributes because only the guest converts its pages.
//! * **Conversions** (`set_pages_state`, for the pages of a virtually contiguous buffer, which
//!   are not adjacent here: a vCPU owns every `vcpus`-th page): rescind validation before making
//!   pages shared, one PSC buffer in the GHCB with one entry per page (`VMGEXIT(PSC)`; KVM
//!   forwards each run of adjacent entries as a `KVM_EXIT_HYPERCALL` the VMM converts), and
//!   validate after making pages private. A conversion is destructive for its pages and
//!   bracketed as such. A PSC that fails (KVM could not reach the GHCB because its memslot was
//!   being re-added, or answered an error) is repeated a bounded number of times; if it still
//!   fails, the pages' state is unknown to the guest (`pending`), and it converts them again
//!   before it uses them. A PSC failure while the GHCB's memslot stayed in place is a VMM
//!   error.

use std::sync::atomic::{AtomicU64, Ordering};

use gmem_kvm::vcpu::RunError;
use gmem_mm::types::PAGE_SHIFT;
use gmem_uapi::vmm::{
    GhcbResponse, PscEntry, GHCB_MSR_PSC_RESP, PSC_OP_PRIVATE, PSC_OP_SHARED, PVALIDATE_FAIL_NOUPDATE,
};
use gmem_uapi::Vmm;

use super::workers::{Shared, ACCESS_RETRIES};

/// Attempts of one PSC request before the guest leaves its pages pending.
const PSC_ATTEMPTS: u32 = 64;

/// What an SEV-SNP guest's vCPUs did (see [`SnpGuest`]).
#[derive(Debug, Default)]
pub(super) struct SnpCounters {
    /// Page-state change requests (the boot's MSR-protocol ones, then PSC buffers).
    pub(super) psc_requests: AtomicU64,
    /// Requests KVM answered with an error, or did not take (its GHCB unreachable): retried.
    pub(super) psc_errors: AtomicU64,
    /// Conversions whose PSC still failed after every attempt (the pages' state is unknown
    /// to the guest until it converts them again).
    pub(super) psc_incomplete: AtomicU64,
    /// Conversions given up before their PSC (a rescind exited: no memslot, no guest_memfd,
    /// poison).
    pub(super) conversions_aborted: AtomicU64,
    /// #VC exceptions for a page that is not validated, after which the vCPU validated the page
    /// again and retried.
    pub(super) vc_exceptions: AtomicU64,
    /// PVALIDATE instructions (validations and rescissions).
    pub(super) pvalidates: AtomicU64,
}

/// The guest's view of one of its pages.
#[derive(Clone, Copy, Debug)]
struct PageView {
    /// Private (else shared), as the guest last made it.
    private: bool,
    /// A conversion to this state was asked for and may or may not have happened.
    pending: Option<bool>,
    /// The guest validated the page (or the launch did) and has not rescinded it since.
    validated: bool,
    /// The page's epoch `gen` when that validation was known not to overlap a destructive
    /// operation.
    validated_at: Option<u64>,
    /// The boot image may still be in the page (no store, and no completed conversion to
    /// shared, since the launch).
    image: bool,
}

/// One vCPU acting as a Linux SNP guest on the pages it owns.
pub(super) struct SnpGuest<'a> {
    shared: &'a Shared<'a>,
    vcpu: u32,
    fd: i32,
    vcpus: u64,
    /// The GHCB's page.
    ghcb_page: u64,
    /// By `page / vcpus`.
    pages: Vec<PageView>,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Whether a PVALIDATE result code means the page is in the state asked for (done, or it
/// already was).
fn pvalidate_ok(rc: u32) -> bool {
    rc == 0 || rc == PVALIDATE_FAIL_NOUPDATE
}

impl<'a> SnpGuest<'a> {
    /// vCPU `vcpu`'s guest after its boot: every page private, the image's pages validated,
    /// the GHCB (the vCPU's last page) shared and registered. Runs before the workload starts;
    /// a failure is a setup error.
    pub(super) fn boot(shared: &'a Shared<'a>, vcpu: u32, fd: i32) -> Result<SnpGuest<'a>, String> {
        let config = shared.config;
        let vcpus = u64::from(config.vcpus);
        let owned = (config.pages() - u64::from(vcpu)).div_ceil(vcpus);
        let ghcb_page = (owned - 1) * vcpus + u64::from(vcpu);
        let pages = (0..owned)
            .map(|i| {
                let launched = i * vcpus + u64::from(vcpu) < config.image_pages();
                PageView {
                    private: true,
                    pending: None,
                    validated: launched,
                    validated_at: launched.then_some(0),
                    image: launched,
                }
            })
            .collect();
        let mut guest = SnpGuest { shared, vcpu, fd, vcpus, ghcb_page, pages };
        let vmm = shared.vmm;
        let ghcb = Vmm::page_gpa(ghcb_page);
        let failed = |what: &str, detail: String| format!("SNP vCPU {vcpu}: {what} of its GHCB page failed: {detail}");
        let rc = guest.pvalidate(ghcb_page, false).map_err(|e| failed("rescinding", format!("{e:?}")))?;
        if !pvalidate_ok(rc) {
            return Err(failed("rescinding", format!("PVALIDATE {rc}")));
        }
        bump(&shared.snp.psc_requests);
        match vmm.snp_psc_msr(fd, ghcb, false) {
            Ok(GhcbResponse::Msr(GHCB_MSR_PSC_RESP)) => {}
            other => return Err(failed("the MSR-protocol PSC to shared", format!("{other:?}"))),
        }
        let view = guest.view_mut(ghcb_page);
        view.private = false;
        view.image = false;
        vmm.host().snp_register_ghcb(fd, ghcb).map_err(|e| failed("registering", format!("{e:?}")))?;
        Ok(guest)
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

    /// PVALIDATE of `page` (validate or rescind), counted.
    fn pvalidate(&mut self, page: u64, validate: bool) -> Result<u32, RunError> {
        bump(&self.shared.snp.pvalidates);
        self.shared.vmm.host().snp_pvalidate(self.fd, Vmm::page_gpa(page), false, validate)
    }

    /// Validates `page` before its private use, and records the epoch if no destructive
    /// operation overlapped the validation. `Some(Err)` is the exit PVALIDATE took (the page
    /// could not be reached); `None` a result code other than success or "already validated"
    /// (reported as a VMM error here).
    fn validate(&mut self, page: u64) -> Option<Result<(), RunError>> {
        let epoch = &self.shared.pages[page as usize];
        let g0 = epoch.gen.load(Ordering::SeqCst);
        let quiet = epoch.active.load(Ordering::SeqCst) == 0;
        let rc = match self.pvalidate(page, true) {
            Ok(rc) => rc,
            Err(error) => return Some(Err(error)),
        };
        if !pvalidate_ok(rc) {
            self.shared.error(
                &self.shared.vmm_errors,
                format!("SNP vCPU {}: PVALIDATE of page {page} failed with {rc}", self.vcpu),
            );
            return None;
        }
        let stable = quiet && epoch.gen.load(Ordering::SeqCst) == g0;
        let view = self.view_mut(page);
        view.validated = true;
        view.validated_at = stable.then_some(g0);
        Some(Ok(()))
    }

    /// One load or store of `page` as the guest makes it (see the module docs). `None` if the
    /// guest did not access the page: it could not finish a pending conversion of it, or its
    /// validation failed (reported).
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
            if private && !self.view(page).validated {
                match self.validate(page)? {
                    Ok(()) => {}
                    Err(error) => return Some(Err(error)),
                }
            }
            outcome = self.shared.vmm.guest_access_as(self.fd, gpa, buf, write, private);
            match outcome {
                Err(RunError::GuestException(exception)) if private => {
                    bump(&self.shared.snp.vc_exceptions);
                    let epoch = &self.shared.pages[page as usize];
                    let view = self.view(page);
                    if view.validated
                        && view.validated_at.is_some_and(|g| g == epoch.gen.load(Ordering::SeqCst))
                        && epoch.active.load(Ordering::SeqCst) == 0
                    {
                        self.shared.error(
                            &self.shared.integrity_errors,
                            format!(
                                "SNP vCPU {}: {exception:?} on page {page}, validated with no destructive operation on it since",
                                self.vcpu
                            ),
                        );
                    }
                    let view = self.view_mut(page);
                    view.validated = false;
                    view.validated_at = None;
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
            .filter(|&p| p != self.ghcb_page)
            .filter(|&p| {
                let view = self.view(p);
                view.pending.is_some() || view.private != to_private
            })
            .collect();
        if !targets.is_empty() {
            self.convert_pages(&targets, to_private);
        }
    }

    /// `set_pages_state` of `targets`, bracketed as a destructive operation on each page.
    fn convert_pages(&mut self, targets: &[u64], to_private: bool) {
        for &p in targets {
            self.shared.begin(p, 1);
        }
        // Each page's `gen` once its bracket is open: if nothing else overlaps, it ends one
        // higher.
        let opened: Vec<u64> =
            targets.iter().map(|&p| self.shared.pages[p as usize].gen.load(Ordering::SeqCst)).collect();
        let (converted, validated) = self.set_pages_state(targets, to_private);
        for &p in targets {
            // A page made shared lost its guest_memfd folio, poisoned or not.
            self.shared.end(p, 1, converted && !to_private);
        }
        // The validations inside the bracket did not overlap any other destructive operation
        // if the page's epoch moved only by this bracket's end.
        for (&p, g) in targets.iter().zip(opened) {
            let epoch = &self.shared.pages[p as usize];
            let quiet = epoch.active.load(Ordering::SeqCst) == 0 && epoch.gen.load(Ordering::SeqCst) == g + 1;
            if quiet && validated.contains(&p) {
                self.view_mut(p).validated_at = Some(g + 1);
            }
        }
    }

    /// Linux's `set_pages_state` over `targets`: rescind (to shared; pages the guest knows to be
    /// private), the PSC, validate (to private). Returns whether the PSC completed, and the
    /// pages validated.
    fn set_pages_state(&mut self, targets: &[u64], to_private: bool) -> (bool, Vec<u64>) {
        if !to_private {
            for &p in targets {
                let view = self.view(p);
                if view.pending.is_some() || !view.private {
                    continue;
                }
                match self.pvalidate(p, false) {
                    Ok(rc) if pvalidate_ok(rc) => {
                        let view = self.view_mut(p);
                        view.validated = false;
                        view.validated_at = None;
                    }
                    Ok(rc) => {
                        self.shared.error(
                            &self.shared.vmm_errors,
                            format!("SNP vCPU {}: PVALIDATE (rescind) of page {p} failed with {rc}", self.vcpu),
                        );
                        bump(&self.shared.snp.conversions_aborted);
                        return (false, Vec::new());
                    }
                    Err(_) => {
                        // No memslot, no guest_memfd or a poisoned page: nothing was converted;
                        // the pages rescinded so far are private and not validated.
                        bump(&self.shared.snp.conversions_aborted);
                        return (false, Vec::new());
                    }
                }
            }
        }
        if !self.psc(targets, to_private) {
            // Some pages may have been converted, others not (their contents are still there).
            bump(&self.shared.snp.psc_incomplete);
            for &p in targets {
                let view = self.view_mut(p);
                view.pending = Some(to_private);
                view.validated = false;
                view.validated_at = None;
            }
            return (false, Vec::new());
        }
        for &p in targets {
            let view = self.view_mut(p);
            view.private = to_private;
            view.pending = None;
            view.validated = false;
            view.validated_at = None;
            // Made shared, the page's guest_memfd folio was punched. (Made private, a page
            // pending since a failed conversion to shared may still hold what it held.)
            if !to_private {
                view.image = false;
            }
        }
        let mut validated = Vec::new();
        if to_private {
            for &p in targets {
                // A page PVALIDATE cannot reach now is validated before its next private use.
                if self.validate(p) == Some(Ok(())) {
                    validated.push(p);
                }
            }
        }
        (true, validated)
    }

    /// One PSC request for `targets` through the GHCB, repeated while it fails because the
    /// GHCB's memslot is changing.
    fn psc(&mut self, targets: &[u64], to_private: bool) -> bool {
        let operation = if to_private { PSC_OP_PRIVATE } else { PSC_OP_SHARED };
        let entries: Vec<PscEntry> = targets
            .iter()
            .map(|&p| PscEntry { cur_page: 0, gfn: Vmm::page_gpa(p) >> PAGE_SHIFT, operation, pagesize_2m: false })
            .collect();
        let ghcb = Vmm::page_gpa(self.ghcb_page);
        let slot_gen = &self.shared.slot_gens[self.shared.region_of(self.ghcb_page)];
        let vmm = self.shared.vmm;
        for _ in 0..PSC_ATTEMPTS {
            let s1 = slot_gen.load(Ordering::SeqCst);
            bump(&self.shared.snp.psc_requests);
            let answer = vmm
                .host()
                .snp_write_psc_buffer(self.fd, ghcb, &entries)
                .and_then(|()| vmm.snp_vmgexit_psc(self.fd, ghcb));
            if answer == Ok(GhcbResponse::ExitInfo2(0)) {
                return true;
            }
            bump(&self.shared.snp.psc_errors);
            if s1 % 2 == 0 && slot_gen.load(Ordering::SeqCst) == s1 {
                self.shared.error(
                    &self.shared.vmm_errors,
                    format!(
                        "SNP vCPU {}: PSC of pages {targets:?} to {} answered {answer:?} with the GHCB's memslot in place",
                        self.vcpu,
                        if to_private { "private" } else { "shared" }
                    ),
                );
                return false;
            }
            std::thread::yield_now();
        }
        false
    }
}
