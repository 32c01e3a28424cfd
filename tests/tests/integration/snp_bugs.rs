//! The SEV-SNP upstream fixes of `reference/upstream-fixes.md` (F6, F7, F8, F11), each a toggle
//! of the kernel profile. For each: with the fix off, the smallest scenario of the entry
//! reproduces the bug and its detector fires (the tests assert the detector's own message: the
//! errno, the WARN, the Oops, the stale pointer); with the fix on, the same steps are clean.
//!
//! | fix | profiles (off / on) | detector |
//! |---|---|---|
//! | F6 lazy preparation | `v6.18-F6`, `v6.14-F6` / `v6.18`, `v6.14` | fallocate leaves the page Guest-Invalid; SNP_LAUNCH_UPDATE is EIO |
//! | F7 pre-fault gate | `v6.18-F7`, `v6.14-F7` / `v6.18`, `v6.14` | INV-NO-HOST-WRITE-PRIVATE: the launch's copy is an RMP #PF Oops |
//! | F8 kunmap on the copy-failure path | `v6.18`, `v6.14` / `v6.18+F8`, `v6.14+F8` | the kmap_local balance WARN at ioctl return |
//! | F11 VMSA invalidation | `v6.18`, `v6.14` / `v6.18+F11`, `v6.14+F11` | WARN_ONCE "Failed to update RMP entry", INV-NO-STALE-PFN on `vmsa_pa`, the Oops at the frame's next host write; with the fix, a reload waits for an invalidation of its gfn |

use gmem_arch::sev::ghcb::{guest_vmsa, SVM_VMGEXIT_AP_CREATE};
use gmem_arch::sev::kvm::SvmVm;
use gmem_arch::sev::measure::SnpPageType;
use gmem_kvm::vcpu::KvmVcpu;
use gmem_mm::file::{alloc_file_pseudo, File, FileOperations, EMPTY_FOPS, O_RDWR};
use gmem_mm::filemap::EMPTY_AOPS;
use gmem_mm::folio::Folio;
use gmem_mm::inode::{InodeInit, EMPTY_IOPS};
use gmem_mm::types::PgOff;
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MAP_SHARED, PROT_READ};
use gmem_mm::vma::{VmFault, VmFaultError, VmOperations, Vma};
use gmem_mm::{Errno, KResult, Pfn};
use gmem_sync::warn::{WarnKind, Warning};
use gmem_sync::Arc;
use gmem_tests::*;
use gmem_uapi::SevError;
use kvm_bindings::kvm_sev_snp_launch_update;
use std::sync::{mpsc, Mutex as StdMutex};

/// An SNP VM after KVM_SEV_INIT2: `vcpus` vCPUs, a 2M guest_memfd memslot at gpa 0 whose first
/// 1M is PRIVATE, and `/dev/sev` open: a [`SnpGuest`], with what these tests look at.
struct Snp(SnpGuest);

impl std::ops::Deref for Snp {
    type Target = SnpGuest;

    fn deref(&self) -> &SnpGuest {
        &self.0
    }
}

impl Snp {
    fn new(profile_name: &str, vcpus: u64) -> Snp {
        Snp(SnpGuest::new(profile(profile_name), 2 << 20, 1 << 20, vcpus))
    }

    /// One page of user memory holding `contents` (a launch image page).
    fn image(&self, contents: &[u8]) -> u64 {
        // Unchecked: a bug's test may have left state the invariants name (it asserts that).
        let uaddr = self.host.unchecked().process().mmap_anonymous(PAGE).unwrap();
        self.host.unchecked().store(uaddr, contents).unwrap();
        uaddr
    }

    /// `KVM_SEV_SNP_LAUNCH_UPDATE` of one NORMAL page at `gfn` from `uaddr`.
    fn launch_update_page(&self, gfn: u64, uaddr: u64) -> Result<kvm_sev_snp_launch_update, SevError> {
        let mut update = kvm_sev_snp_launch_update {
            gfn_start: gfn,
            uaddr,
            len: PAGE,
            type_: SnpPageType::Normal as u8,
            ..Default::default()
        };
        self.host.unchecked().snp_launch_update(self.vm, self.sev, &mut update).map(|()| update)
    }

    fn kvm_vcpu(&self, index: usize) -> Arc<KvmVcpu> {
        self.host.unchecked().vcpu(self.vcpus[index]).unwrap().1
    }

    /// The frame behind guest_memfd page `index` (which is gfn `index`), if the page cache has one.
    fn gmem_pfn(&self, index: u64) -> Option<Pfn> {
        let file = self.host.gmem_file(self.gmem);
        let folio = file.inode().mapping().get_folio(PgOff(index))?;
        let pfn = folio.pfn();
        folio.put();
        Some(pfn)
    }

    /// The RMP state of the frame behind guest_memfd page `index`.
    fn rmp_state(&self, index: u64) -> &'static str {
        let kvm = self.kvm();
        let vm = SvmVm::of(&kvm).unwrap();
        let pfn = self.gmem_pfn(index).expect("guest_memfd page allocated");
        vm.host().rmp().read(pfn).unwrap().state_name()
    }
}

/// The warnings recorded so far (taken), as text for failure messages.
fn take_warnings(snp: &Snp) -> Vec<Warning> {
    snp.host.take_warnings()
}

/// Asserts `warnings` is exactly one warning of `kind` whose text contains every one of `needles`.
#[track_caller]
fn assert_one_warning(warnings: &[Warning], kind: WarnKind, needles: &[&str]) {
    let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "expected exactly one {kind} report, got {text:#?}");
    assert_eq!(warnings[0].kind, kind, "{text:#?}");
    for needle in needles {
        assert!(warnings[0].detail.contains(needle), "no `{needle}` in {text:#?}");
    }
}

/// Asserts the S8 detectors named a page prepared before `SNP_LAUNCH_FINISH` (the invariant
/// and the WARN at `sev_gmem_prepare`), and consumes the warnings.
#[track_caller]
fn assert_s8_prepared_before_finish(snp: &Snp, name: &str) {
    let violations = snp.host.violations();
    assert!(
        violations.iter().any(|v| v.invariant == "S8" && v.detail.contains("before SNP_LAUNCH_FINISH")),
        "{name}: {violations:#?}"
    );
    let warnings = take_warnings(snp);
    assert!(warnings.iter().any(|w| w.detail.contains("S8: sev_gmem_prepare makes")), "{name}: {warnings:#?}");
}

/// F6: `fallocate` of a private page before `SNP_LAUNCH_UPDATE` of it. Without the fix,
/// allocation prepares the folio (for SNP: RMP-assigned, Guest-Invalid), so the launch finds it
/// already prepared and fails (EIO, no firmware status). With it, fallocate only allocates and
/// the launch succeeds.
#[test]
fn f6_fallocate_then_launch_update() {
    for (name, fixed) in [("v6.18", true), ("v6.18-F6", false), ("v6.14", true), ("v6.14-F6", false)] {
        let snp = Snp::new(name, 1);
        snp.launch_start();
        snp.host.unchecked().fallocate(snp.gmem, FALLOC_FL_KEEP_SIZE, 0, PAGE as i64).unwrap();
        if !fixed {
            assert_s8_prepared_before_finish(&snp, name);
        }
        let image = snp.image(b"kernel");
        let update = snp.launch_update_page(0, image);
        if fixed {
            assert_eq!(snp.rmp_state(0), "Guest-Valid", "{name}: the launched page");
            let update = update.unwrap_or_else(|err| panic!("{name}: SNP_LAUNCH_UPDATE after fallocate: {err:?}"));
            assert_eq!((update.gfn_start, update.len), (1, 0), "{name}: the whole page was launched");
        } else {
            // The detector: fallocate was not allocation-only (the page is already the guest's),
            // and the launch of that page is refused.
            assert_eq!(snp.rmp_state(0), "Guest-Invalid", "{name}: fallocate prepared the page");
            assert_eq!(update, Err(SevError { errno: Errno::EIO, fw_error: 0 }), "{name}: SNP_LAUNCH_UPDATE");
            return_unless_fixed(&snp, name);
            continue;
        }
        snp.host.check(name);
    }
}

/// F6 with the fix off, seen before any launch: the RMP entry of a page fallocate allocated is
/// already assigned to the guest, while with the fix it is still the hypervisor's.
#[test]
fn f6_fallocate_is_allocation_only_with_the_fix() {
    for (name, fixed) in [("v6.18", true), ("v6.18-F6", false)] {
        let snp = Snp::new(name, 1);
        snp.launch_start();
        snp.host.unchecked().fallocate(snp.gmem, FALLOC_FL_KEEP_SIZE, 0, 2 * PAGE as i64).unwrap();
        let expected = if fixed { "Hypervisor" } else { "Guest-Invalid" };
        assert_eq!([snp.rmp_state(0), snp.rmp_state(1)], [expected; 2], "{name}");
        if fixed {
            snp.host.check(name);
        } else {
            assert_s8_prepared_before_finish(&snp, name);
        }
    }
}

/// F7, the sequential half: `KVM_PRE_FAULT_MEMORY` before `SNP_LAUNCH_FINISH` is EOPNOTSUPP with
/// the gate. Without it the pre-fault is accepted and prepares the page (RMP-assigned), so the
/// launch of that page then fails.
#[test]
fn f7_pre_fault_before_launch_finish() {
    for (name, gated) in [("v6.18", true), ("v6.18-F7", false), ("v6.14", true), ("v6.14-F7", false)] {
        let snp = Snp::new(name, 1);
        snp.launch_start();
        let vcpu = snp.vcpus[0];
        let pre_fault = snp.host.unchecked().pre_fault_memory(vcpu, 0x1000, PAGE);
        if !gated {
            assert_s8_prepared_before_finish(&snp, name);
        }
        let image = snp.image(b"initrd");
        let update = snp.launch_update_page(1, image);
        if gated {
            assert_errno(pre_fault, Errno::EOPNOTSUPP, name);
            assert!(update.is_ok(), "{name}: {update:?}");
            assert_eq!(snp.rmp_state(1), "Guest-Valid", "{name}");
            snp.launch_finish();
            // LAUNCH_FINISH opened the gate.
            assert_eq!(snp.host.pre_fault_memory(vcpu, 0x5000, PAGE), Ok(0), "{name}: pre-fault after the launch");
        } else {
            assert_eq!(pre_fault, Ok(0), "{name}: the ungated pre-fault is accepted");
            assert_eq!(snp.rmp_state(1), "Guest-Invalid", "{name}: the pre-fault prepared the page");
            assert_eq!(update, Err(SevError { errno: Errno::EIO, fw_error: 0 }), "{name}: SNP_LAUNCH_UPDATE");
            return_unless_fixed(&snp, name);
            continue;
        }
        snp.host.check(name);
    }
}

/// After a bug's run: the S8 state it left stays named (the page made private before the launch
/// finished), and nothing else is wrong.
#[track_caller]
fn return_unless_fixed(snp: &Snp, name: &str) {
    let violations = snp.host.violations();
    assert!(violations.iter().all(|v| v.invariant == "S8"), "{name}: {violations:#?}");
    assert!(snp.host.machine().warnings.is_empty(), "{name}: {:#?}", snp.host.machine().warnings.snapshot());
}

/// A test device standing in for userfaultfd: the first page fault on a mapping of the file runs
/// the file's hook before the fault returns the page. A `copy_from_user` from such a mapping
/// stalls at a point the test chooses, so another thread can run inside the window around it, as
/// the upstream reproducers of copy races do.
struct StallFile {
    hook: StdMutex<Option<Box<dyn FnOnce() + Send>>>,
}

fn stall_mmap(_file: &File, vma: &mut Vma) -> KResult<()> {
    vma.vm_ops = Some(&STALL_VM_OPS);
    Ok(())
}

fn stall_fault<'a>(vmf: &'a VmFault<'a>) -> Result<Folio<'a>, VmFaultError> {
    let file = vmf.vma.file.as_ref().expect("a mapping of the stall file");
    let stall = file.private::<StallFile>().expect("the stall file's private data");
    let hook = stall.hook.lock().unwrap().take();
    if let Some(hook) = hook {
        hook();
    }
    file.inode().mapping().grab_folio(vmf.pgoff).map_err(|_| VmFaultError::Sigbus)
}

static STALL_FOPS: FileOperations = FileOperations { name: "stall_fops", mmap: Some(stall_mmap), ..EMPTY_FOPS };
static STALL_VM_OPS: VmOperations = VmOperations { name: "stall_vm_ops", fault: stall_fault };

/// Opens a stall file with `hook` and maps one page of it: the user address to copy from.
fn stall_mapping(host: &CheckedHost, hook: Box<dyn FnOnce() + Send>) -> u64 {
    let inode = InodeInit {
        mode: 0o100600,
        size: PAGE as i64,
        i_private: 0,
        i_op: &EMPTY_IOPS,
        a_ops: &EMPTY_AOPS,
        a_private: None,
        noexec: false,
    };
    let stall: Arc<dyn std::any::Any + Send + Sync> = Arc::new(StallFile { hook: StdMutex::new(Some(hook)) });
    let file = alloc_file_pseudo(host.machine(), "stall", &STALL_FOPS, O_RDWR, inode, Some(stall));
    let fd = host.process().files.install(file).unwrap();
    host.mmap(fd, PAGE, 0, PROT_READ, MAP_SHARED).unwrap()
}

/// F7, the race itself, made deterministic: SNP_LAUNCH_UPDATE's source is a stall mapping, so
/// `sev_gmem_post_populate` stops in its `copy_from_user`, after it checked that the page is not
/// RMP-assigned and before it writes the page (the folio is unlocked then: `kvm_gmem_populate`
/// drops the lock before the callback). The main thread then pre-faults the same gfn
/// (`kvm_gmem_get_pfn` → `sev_gmem_prepare`) and lets the copy go on.
///
/// Without the gate the pre-fault makes the page private and the copy is a host write to it: the
/// RMP #PF Oops (INV-NO-HOST-WRITE-PRIVATE). With the gate the pre-fault is refused and the
/// launch is clean.
#[test]
fn f7_pre_fault_inside_the_launch_update_window() {
    for (name, gated) in [("v6.18", true), ("v6.18-F7", false), ("v6.14", true), ("v6.14-F7", false)] {
        let snp = Snp::new(name, 1);
        snp.launch_start();
        let (stalled, wait_stalled) = mpsc::channel::<()>();
        let (resume, wait_resume) = mpsc::channel::<()>();
        let source = stall_mapping(
            &snp.host,
            Box::new(move || {
                stalled.send(()).unwrap();
                wait_resume.recv().unwrap();
            }),
        );
        let (update, pre_fault) = std::thread::scope(|scope| {
            let launch = scope.spawn(|| snp.launch_update_page(1, source));
            wait_stalled.recv().expect("the launch reached its copy_from_user");
            // The launch has checked the RMP entry and holds kvm->lock, slots_lock and the
            // invalidate lock; the folio is unlocked.
            assert_eq!(snp.rmp_state(1), "Hypervisor", "{name}: the launch's RMP check passed");
            let pre_fault = snp.host.unchecked().pre_fault_memory(snp.vcpus[0], 0x1000, PAGE);
            resume.send(()).unwrap();
            (launch.join().unwrap(), pre_fault)
        });
        let warnings = take_warnings(&snp);
        let pfn = snp.gmem_pfn(1).unwrap();
        if gated {
            assert_eq!(pre_fault, Err(Errno::EOPNOTSUPP), "{name}: pre-fault inside the launch");
            assert!(update.is_ok(), "{name}: {update:?}");
            assert!(warnings.is_empty(), "{name}: {warnings:#?}");
            assert_eq!(snp.rmp_state(1), "Guest-Valid", "{name}");
        } else {
            assert_eq!(pre_fault, Ok(0), "{name}: the ungated pre-fault prepared the page");
            // The pre-fault's prepare before the launch finished is S8's WARN; the copy into the
            // page it made private is the Oops: the host does not survive it.
            let (s8, oops): (Vec<Warning>, Vec<Warning>) =
                warnings.into_iter().partition(|w| w.detail.contains("S8: sev_gmem_prepare makes"));
            assert_eq!(s8.len(), 1, "{name}: {s8:#?}");
            assert_one_warning(
                &oops,
                WarnKind::Oops,
                &[&format!("RMP #PF: host write to {pfn:?}, which is Guest-Invalid"), "the host cannot recover"],
            );
            return_unless_fixed(&snp, name);
            continue;
        }
        snp.host.check(name);
    }
}

/// F8: SNP_LAUNCH_UPDATE from an unreadable source. EIO either way (the copy faults, nothing
/// reaches the firmware, the page stays the hypervisor's); without the fix the copy-failure path
/// leaves its `kmap_local` mapping, reported when the ioctl returns. A second launch from a good
/// source then succeeds.
#[test]
fn f8_launch_update_from_an_unreadable_source() {
    for (name, fixed) in [("v6.18", false), ("v6.18+F8", true), ("v6.14", false), ("v6.14+F8", true)] {
        let snp = Snp::new(name, 1);
        snp.launch_start();
        // Nothing is mapped there: copy_from_user faults.
        let unmapped = snp.host.mmap_anonymous(PAGE).unwrap();
        snp.host.munmap(unmapped, PAGE).unwrap();
        let update = snp.launch_update_page(0, unmapped);
        assert_eq!(update, Err(SevError { errno: Errno::EIO, fw_error: 0 }), "{name}: SNP_LAUNCH_UPDATE");
        assert_eq!(snp.rmp_state(0), "Hypervisor", "{name}: the page was not made private");
        let pfn = snp.gmem_pfn(0).unwrap();
        let warnings = take_warnings(&snp);
        if fixed {
            assert!(warnings.is_empty(), "{name}: {warnings:#?}");
        } else {
            assert_one_warning(
                &warnings,
                WarnKind::Warn,
                &[
                    "sev_mem_enc_ioctl: kmap_local stack not balanced on return",
                    &format!("[{pfn:?}] still mapped (missing kunmap_local)"),
                ],
            );
        }
        snp.host.check(name);
        let image = snp.image(b"kernel");
        assert!(snp.launch_update_page(0, image).is_ok(), "{name}: the launch from a good source");
        assert_eq!(snp.rmp_state(0), "Guest-Valid", "{name}");
        snp.host.check(name);
    }
}

/// The guest physical address of the AP's VMSA in the F11 tests (private, not 2M aligned).
const VMSA_GPA: u64 = 0x3000;
/// The GHCB of the AP (a shared page).
const GHCB_GPA: u64 = (1 << 20) + PAGE;

/// An SNP guest with two vCPUs after LAUNCH_FINISH in which vCPU 0 created vCPU 1 with a VMSA at
/// [`VMSA_GPA`] (validated and RMPADJUSTed to a VMSA first, as a Linux guest does), and vCPU 1
/// ran once, so it uses the guest_memfd page as its VMSA. Returns the VMSA's frame.
fn guest_with_an_ap(snp: &Snp) -> Pfn {
    let name = &snp.host.profile().name;
    snp.launch_start();
    snp.launch_finish();
    let host = snp.host.unchecked();
    let (bsp, ap) = (snp.vcpus[0], snp.vcpus[1]);
    assert_eq!(host.snp_pvalidate(bsp, VMSA_GPA, false, true), Ok(0), "{name}: PVALIDATE");
    assert_eq!(host.snp_rmpadjust_vmsa(bsp, VMSA_GPA, true), Ok(0), "{name}: RMPADJUST");
    let features = SvmVm::of(&snp.kvm()).unwrap().vmsa_features();
    assert_eq!(host.snp_ap_creation(bsp, SVM_VMGEXIT_AP_CREATE, 1, VMSA_GPA, features), Ok(0), "{name}: AP Create");
    // The AP's next entry installs the VMSA and runs on it.
    host.snp_register_ghcb(ap, GHCB_GPA).unwrap();
    let pfn = snp.gmem_pfn(VMSA_GPA / PAGE).unwrap();
    let (_, in_use) = guest_vmsa(&snp.kvm_vcpu(1)).expect("the AP uses a guest VMSA");
    assert_eq!(in_use, pfn, "{name}: the AP's vmsa_pa is the guest_memfd page");
    let entry = SvmVm::of(&snp.kvm()).unwrap().host().rmp().read(pfn).unwrap();
    assert!(entry.vmsa && entry.vmsa_in_use, "{name}: {entry:?}");
    snp.host.check(name);
    pfn
}

/// F11: the VMM punches the guest_memfd page an AP uses as its VMSA. Without the fix nothing
/// makes the vCPU let go of it: `sev_gmem_invalidate`'s RMPUPDATE fails (FAIL_INUSE) and
/// WARNs, the frame goes back to the allocator still assigned to the guest while `vmsa_pa` still
/// points at it (INV-NO-STALE-PFN over the vCPU's control area), and the next host write to it
/// is an RMP #PF. With the fix the invalidation makes the vCPU drop its VMSA first, the frame
/// is the hypervisor's again, and its reuse is clean.
#[test]
fn f11_punching_the_page_of_a_guest_vmsa() {
    for (name, fixed) in [("v6.18", false), ("v6.18+F11", true), ("v6.14", false), ("v6.14+F11", true)] {
        let snp = Snp::new(name, 2);
        let pfn = guest_with_an_ap(&snp);
        let host = snp.host.unchecked();
        host.fallocate(snp.gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, VMSA_GPA as i64, PAGE as i64).unwrap();
        let mem = &snp.host.machine().mem;
        assert!(!mem.is_allocated(pfn), "{name}: the punch freed the folio");
        let rmp = SvmVm::of(&snp.kvm()).unwrap().host().rmp().clone();
        let punch_warnings = take_warnings(&snp);
        let stale = guest_vmsa(&snp.kvm_vcpu(1));
        // The host reuses the frame: the allocator hands the last freed frame out first.
        let reuse = host.process().mmap_anonymous(PAGE).unwrap();
        host.store(reuse, b"host data").unwrap();
        let reuse_warnings = take_warnings(&snp);
        if fixed {
            assert!(punch_warnings.is_empty(), "{name}: {punch_warnings:#?}");
            assert_eq!(stale, None, "{name}: the vCPU dropped its VMSA");
            assert!(!rmp.read(pfn).unwrap().assigned, "{name}: the frame is the hypervisor's again");
            assert!(reuse_warnings.is_empty(), "{name}: {reuse_warnings:#?}");
            assert_eq!(host.load(reuse, 9).unwrap(), b"host data");
            snp.host.check(name);
        } else {
            assert_one_warning(
                &punch_warnings,
                WarnKind::WarnOnce,
                &[&format!("SEV: Failed to update RMP entry for PFN {:#x}", pfn.0), "vmsa in-use"],
            );
            // INV-NO-STALE-PFN over the vCPU's control area: vmsa_pa names a freed frame.
            assert_eq!(stale, Some((None, pfn)), "{name}: the vCPU still points at the punched page");
            assert!(rmp.read(pfn).unwrap().assigned, "{name}: freed while still assigned to the guest");
            // The first touch zeroes the frame, then the store: each write is an RMP #PF.
            let text: Vec<String> = reuse_warnings.iter().map(ToString::to_string).collect();
            let oops = format!("RMP #PF: host write to {pfn:?}, which is Guest-Valid");
            assert!(
                !reuse_warnings.is_empty()
                    && reuse_warnings.iter().all(|w| w.kind == WarnKind::Oops && w.detail.contains(&oops)),
                "{name}: expected the Oops `{oops}`, got {text:#?}"
            );
        }
    }
}

/// F11's reload protocol: the fixed kernel installs a guest VMSA as it installs the APIC-access
/// page (snapshot `mmu_invalidate_seq`, get the pfn from guest_memfd, commit under `mmu_lock`
/// only if no invalidation of the gfn ran meanwhile, else make the request again), so a reload
/// that overlaps an invalidation of the VMSA's gfn (the first half of a punch) does not commit a
/// pfn that invalidation is about to free. The test holds such an invalidation open while the AP
/// reloads: with the fix the AP retries and installs the VMSA only once the invalidation ended;
/// without it the AP installs the pfn in the middle of the invalidation.
#[test]
fn f11_a_vmsa_reload_waits_for_an_invalidation_of_its_gfn() {
    use gmem_arch::sev::kvm::SevVcpu;
    use gmem_kvm::Gfn;
    for (name, fixed) in [("v6.18", false), ("v6.18+F11", true), ("v6.14", false), ("v6.14+F11", true)] {
        let snp = Snp::new(name, 2);
        let pfn = guest_with_an_ap(&snp);
        let host = snp.host.unchecked();
        let kvm = snp.kvm();
        let features = SvmVm::of(&kvm).unwrap().vmsa_features();
        // vCPU 0 asks again (AP Create with the same VMSA): the AP reloads at its next entry.
        let again = host.snp_ap_creation(snp.vcpus[0], SVM_VMGEXIT_AP_CREATE, 1, VMSA_GPA, features);
        assert_eq!(again, Ok(0), "{name}: AP Create");
        let ap = snp.kvm_vcpu(1);
        let retries = || ap.arch::<SevVcpu>().unwrap().state.lock().vmsa_reload_retries;
        // An invalidation of the VMSA's gfn begins, as kvm_gmem_invalidate_begin does.
        let gfn = Gfn(VMSA_GPA / PAGE);
        {
            let _mmu_lock = kvm.mmu_lock_write();
            kvm.mmu_invalidate_begin();
            kvm.mmu_invalidate_range_add(gfn, gfn.offset(1));
        }
        let end_invalidation = || {
            let _mmu_lock = kvm.mmu_lock_write();
            kvm.mmu_invalidate_end();
        };
        std::thread::scope(|scope| {
            let run = scope.spawn(|| host.snp_register_ghcb(snp.vcpus[1], GHCB_GPA));
            if fixed {
                gmem_sync::thread::wait_until_within(TEST_WAIT, "the AP to retry its VMSA reload", || {
                    retries() != 0 || run.is_finished()
                });
                assert!(retries() > 0, "{name}: the AP did not retry its reload inside the invalidation");
                assert_eq!(guest_vmsa(&ap), None, "{name}: a VMSA was installed inside the invalidation");
                end_invalidation();
                assert!(run.join().unwrap().is_ok(), "{name}: the AP's entry after the invalidation");
            } else {
                assert!(run.join().unwrap().is_ok(), "{name}: the AP's entry");
                assert_eq!(retries(), 0, "{name}");
                let installed = guest_vmsa(&ap).map(|(_, pfn)| pfn);
                assert_eq!(installed, Some(pfn), "{name}: installed while the invalidation is in progress");
                assert_eq!(kvm.mmu_invalidate_in_progress(), 1, "{name}");
                end_invalidation();
            }
        });
        assert_eq!(guest_vmsa(&ap).map(|(_, pfn)| pfn), Some(pfn), "{name}: the AP runs on its VMSA");
        snp.host.check(name);
    }
}
