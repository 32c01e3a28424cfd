//! A TDX guest end to end on a simulated Intel host: launch (CAPABILITIES, INIT_VM, INIT_VCPU,
//! INIT_MEM_REGION with MEASURE, FINALIZE) and MRTD, every INIT_MEM_REGION check, the v6.18
//! premap rules, private faults after FINALIZE (PAGE.AUG), conversions that zap a private page
//! (BLOCK, TRACK, REMOVE, WBINVD, clear), the error policy (BUSY retried, anything else
//! `KVM_BUG_ON`) and the teardown. Every call goes through [`CheckedHost`]: the invariants
//! (T1–T6, T10 and the core ones) and the absence of WARNs are checked after each.

use gmem_arch::tdx::kvm::{
    kvm_tdx_init_mem_region, kvm_tdx_init_vm, TdState, TdxVm, KVM_TDX_MEASURE_MEMORY_REGION,
    TDX_TD_ATTR_SEPT_VE_DISABLE,
};
use gmem_arch::tdx::measure::{mr_extend_buffer, page_add_buffer};
use gmem_arch::tdx::module::TdxModule;
use gmem_arch::tdx::sept::{LeafState, SeptEntry};
use gmem_arch::tdx::status::{SeamcallLeaf, TdxStatus, TDX_OPERAND_BUSY, TDX_OPERAND_ID_RCX, TDX_OPERAND_INVALID};
use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::caps::KVM_CAP_VM_TYPES;
use gmem_kvm::{Gfn, KernelProfile, VmType};
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE};
use gmem_mm::{Errno, Pfn};
use gmem_sync::Arc;
use gmem_tests::*;
use kvm_bindings::kvm_cpuid_entry2;
use sha2::{Digest, Sha384};

const PUNCH: i32 = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
const MEASURE: u32 = KVM_TDX_MEASURE_MEMORY_REGION;

fn init_vm_args() -> kvm_tdx_init_vm {
    kvm_tdx_init_vm { attributes: TDX_TD_ATTR_SEPT_VE_DISABLE, ..Default::default() }
}

struct Td {
    host: CheckedHost,
    vm: i32,
    vcpu: i32,
    gmem: i32,
    /// Two pages of user memory holding the initial image.
    image: u64,
}

impl Td {
    /// A TD after INIT_VM with one initialised vCPU and a 2M guest_memfd memslot at gpa 0 whose
    /// first 1M is PRIVATE; the image pages say "kernel" and "initrd".
    fn new(profile: KernelProfile) -> Td {
        let TdGuest { host, vm, vcpus, gmem, .. } =
            TdGuest::new(profile, init_vm_args().attributes, 2 << 20, 1 << 20, 1);
        let vcpu = vcpus[0];
        host.tdx_init_vcpu(vcpu, 0).unwrap();
        let image = host.mmap_anonymous(2 * PAGE).unwrap();
        host.store(image, b"kernel").unwrap();
        host.store(image + PAGE, b"initrd").unwrap();
        Td { host, vm, vcpu, gmem, image }
    }

    fn v6_18() -> Td {
        Td::new(KernelProfile::v6_18())
    }

    fn kvm(&self) -> Arc<gmem_kvm::Kvm> {
        self.host.kvm(self.vm)
    }

    fn module(&self) -> Arc<TdxModule> {
        self.host.unchecked().tdx_host().unwrap().module().clone()
    }

    fn tdr(&self) -> Pfn {
        TdxVm::of(&self.kvm()).unwrap().tdr().unwrap()
    }

    fn state(&self) -> TdState {
        TdxVm::of(&self.kvm()).unwrap().td_state()
    }

    fn nr_premapped(&self) -> i64 {
        TdxVm::of(&self.kvm()).unwrap().nr_premapped()
    }

    /// INIT_MEM_REGION of the two image pages at gpa 0, measured.
    fn add_image(&self) {
        let mut region = kvm_tdx_init_mem_region { source_addr: self.image, gpa: 0, nr_pages: 2 };
        self.host.tdx_init_mem_region(self.vcpu, &mut region, MEASURE).unwrap();
        assert_eq!(region, kvm_tdx_init_mem_region { source_addr: self.image + 2 * PAGE, gpa: 2 * PAGE, nr_pages: 0 });
    }

    fn sept_leaf(&self, gpa: u64) -> SeptEntry {
        self.module().sept_entry(self.tdr(), gpa, 0).unwrap().unwrap_or(SeptEntry::Free)
    }

    fn mirror_leaf(&self, gfn: u64) -> Option<Pfn> {
        self.kvm().tdp_mmu().unwrap().lookup_mirror(Gfn(gfn)).map(|spte| spte.pfn)
    }

    /// Closes every descriptor: the VM is destroyed.
    fn close_all(self) -> (CheckedHost, Arc<TdxModule>) {
        let module = self.module();
        self.host.close(self.vcpu).unwrap();
        self.host.close(self.gmem).unwrap();
        self.host.close(self.vm).unwrap();
        (self.host, module)
    }
}

/// MRTD by hand: SHA-384 over one PAGE.ADD buffer per page, each followed (MEASURE) by 16
/// MR.EXTEND records of three buffers (the header and the 256 bytes of the chunk).
fn expected_mrtd(pages: &[(u64, [u8; 4096])]) -> [u8; 48] {
    let mut sha = Sha384::new();
    for (gpa, contents) in pages {
        sha.update(page_add_buffer(*gpa));
        for chunk in 0..16u64 {
            sha.update(mr_extend_buffer(gpa + chunk * 256));
            sha.update(&contents[chunk as usize * 256..(chunk as usize + 1) * 256]);
        }
    }
    sha.finalize().into()
}

fn page_with(prefix: &[u8]) -> [u8; 4096] {
    let mut page = [0u8; 4096];
    page[..prefix.len()].copy_from_slice(prefix);
    page
}

#[test]
fn vm_types_are_the_profile_and_the_vendor_module_together() {
    let intel = CheckedHost::new_intel(KernelProfile::v6_18());
    assert_eq!(intel.check_extension(KVM_CAP_VM_TYPES), 0x23, "DEFAULT, SW_PROTECTED, TDX");
    let amd = CheckedHost::new(KernelProfile::v6_18());
    assert_eq!(amd.check_extension(KVM_CAP_VM_TYPES), 0x1f, "no TDX on an AMD host");
    assert_eq!(amd.create_vm(TDX_VM), Err(Errno::EINVAL));
    let old = CheckedHost::new_intel(KernelProfile::v6_14());
    assert_eq!(old.check_extension(KVM_CAP_VM_TYPES), 0x3, "v6.14 has no TDX");
    assert_eq!(intel.create_vm(VmType::SevSnp as u64), Err(Errno::EINVAL), "no SEV on an Intel host");
}

#[test]
fn a_td_launch_measures_its_image_and_becomes_runnable() {
    let td = Td::v6_18();
    let (caps, entries) = td.host.unchecked().tdx_capabilities(td.vm, 16).unwrap();
    assert_eq!(caps.supported_attrs, TDX_TD_ATTR_SEPT_VE_DISABLE);
    assert_eq!(caps.supported_xfam, 0x2e7);
    assert_eq!(caps.cpuid.nent, 5);
    assert_eq!(entries.len(), 5);
    assert_eq!(td.host.unchecked().tdx_capabilities(td.vm, 4).unwrap_err(), Errno::E2BIG);
    assert_eq!(td.kvm().gfn_direct_bits(), 1 << 35, "GPAW 48: the shared bit is gpa bit 47");
    assert_eq!(td.state(), TdState::Initialized);
    td.add_image();
    assert_eq!(td.nr_premapped(), 0);
    for gfn in 0..2 {
        let pfn = td.mirror_leaf(gfn).expect("the mirror maps the image");
        assert_eq!(td.sept_leaf(gfn * PAGE), SeptEntry::Leaf { pfn, state: LeafState::Mapped });
    }
    assert_eq!(td.host.pre_fault_memory(td.vcpu, 0x10000, PAGE), Err(Errno::EOPNOTSUPP), "not before FINALIZE");
    td.host.tdx_finalize_vm(td.vm).unwrap();
    assert_eq!(td.state(), TdState::Runnable);
    let expected = expected_mrtd(&[(0, page_with(b"kernel")), (PAGE, page_with(b"initrd"))]);
    assert_eq!(td.module().td_info(td.tdr()).unwrap().mrtd, Some(expected));
    // The image is fixed now.
    let mut region = kvm_tdx_init_mem_region { source_addr: td.image, gpa: 2 * PAGE, nr_pages: 1 };
    assert_eq!(td.host.tdx_init_mem_region(td.vcpu, &mut region, 0).unwrap_err().errno, Errno::EINVAL);
    assert_eq!(td.host.tdx_finalize_vm(td.vm).unwrap_err().errno, Errno::EINVAL);
    let (host, module) = td.close_all();
    assert_eq!(module.td_owned_frames(), 0, "teardown reclaims every page of the TD");
    assert!(module.pamt_frames().iter().all(|(pfn, _)| module.host_reuse_hazard(*pfn).is_none()));
    assert_eq!(host.unchecked().tdx_host().unwrap().nr_configured_hkid(), 0);
    host.check("teardown");
}

#[test]
fn a_private_fault_after_finalize_augs_and_a_conversion_removes_the_page() {
    let td = Td::v6_18();
    td.add_image();
    td.host.tdx_finalize_vm(td.vm).unwrap();
    let module = td.module();
    assert_eq!(td.host.pre_fault_memory(td.vcpu, 0x10000, PAGE), Ok(0));
    let pfn = td.mirror_leaf(0x10).unwrap();
    assert_eq!(td.sept_leaf(0x10000), SeptEntry::Leaf { pfn, state: LeafState::Pending });
    let (block, track, remove) = (
        module.executed(SeamcallLeaf::MemRangeBlock),
        module.executed(SeamcallLeaf::MemTrack),
        module.executed(SeamcallLeaf::MemPageRemove),
    );
    // Converting the page to shared zaps it from the mirror root and the S-EPT.
    td.host.set_memory_attributes(td.vm, &attrs(0x10000, PAGE, 0)).unwrap();
    assert_eq!(td.mirror_leaf(0x10), None);
    assert_eq!(td.sept_leaf(0x10000), SeptEntry::Free);
    assert_eq!(module.executed(SeamcallLeaf::MemRangeBlock), block + 1);
    assert_eq!(module.executed(SeamcallLeaf::MemTrack), track + 1);
    assert_eq!(module.executed(SeamcallLeaf::MemPageRemove), remove + 1);
    assert_eq!(module.host_reuse_hazard(pfn), None, "written back and cleared before it goes back");
    // Punching an image page out of the file does the same.
    let image_pfn = td.mirror_leaf(1).unwrap();
    td.host.fallocate(td.gmem, PUNCH, PAGE as i64, PAGE as i64).unwrap();
    assert_eq!(td.sept_leaf(PAGE), SeptEntry::Free);
    assert_eq!(module.host_reuse_hazard(image_pfn), None);
    let (host, module) = td.close_all();
    assert_eq!(module.td_owned_frames(), 0);
    host.check("teardown");
}

#[test]
fn init_mem_region_checks_in_kernel_order() {
    let td = Td::v6_18();
    let uninit = td.host.create_vcpu(td.vm, 1).unwrap();
    let ok = kvm_tdx_init_mem_region { source_addr: td.image, gpa: 0, nr_pages: 1 };
    let err = |vcpu: i32, mut region: kvm_tdx_init_mem_region, flags: u32| {
        td.host.tdx_init_mem_region(vcpu, &mut region, flags).unwrap_err().errno
    };
    assert_eq!(err(uninit, ok, 0), Errno::EINVAL, "vCPU not initialised");
    assert_eq!(err(td.vcpu, ok, 2), Errno::EINVAL, "unknown flag");
    let shared = 1u64 << 47;
    for (region, why) in [
        (kvm_tdx_init_mem_region { source_addr: td.image + 1, ..ok }, "unaligned source"),
        (kvm_tdx_init_mem_region { gpa: 0x800, ..ok }, "unaligned gpa"),
        (kvm_tdx_init_mem_region { nr_pages: 0, ..ok }, "no pages"),
        (kvm_tdx_init_mem_region { gpa: !0xfff, nr_pages: 2, ..ok }, "wraps"),
        (kvm_tdx_init_mem_region { gpa: shared, ..ok }, "shared first gpa"),
        (kvm_tdx_init_mem_region { gpa: shared - PAGE, nr_pages: 2, ..ok }, "shared last gpa"),
    ] {
        assert_eq!(err(td.vcpu, region, 0), Errno::EINVAL, "{why}");
    }
    // The source is not mapped: the pin fails, nothing is mapped.
    assert_eq!(err(td.vcpu, kvm_tdx_init_mem_region { source_addr: 0x1000, ..ok }, 0), Errno::EFAULT);
    // A shared gpa of the slot: populate refuses a page that is not PRIVATE.
    assert_eq!(err(td.vcpu, kvm_tdx_init_mem_region { gpa: 1 << 20, ..ok }, 0), Errno::EINVAL);
    // Partial progress is copied back: the second page is outside every memslot.
    let mut region = kvm_tdx_init_mem_region { source_addr: td.image, gpa: (2 << 20) - PAGE, nr_pages: 2 };
    td.host.set_memory_attributes(td.vm, &attrs((2 << 20) - PAGE, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    let result = td.host.tdx_init_mem_region(td.vcpu, &mut region, 0);
    assert_eq!(result.unwrap_err().errno, Errno::EINVAL);
    assert_eq!(region, kvm_tdx_init_mem_region { source_addr: td.image + PAGE, gpa: 2 << 20, nr_pages: 1 });
    // A page populated once cannot be populated again.
    let mut again = ok;
    td.host.tdx_init_mem_region(td.vcpu, &mut again, 0).unwrap();
    let mut again = ok;
    assert_eq!(td.host.tdx_init_mem_region(td.vcpu, &mut again, 0).unwrap_err().errno, Errno::EEXIST);
    // The region struct itself unreadable.
    let mut cmd = gmem_uapi::kvm_tdx_cmd { id: 3, flags: 0, data: 0x10, hw_error: 0 };
    assert_eq!(td.host.unchecked().tdx_op_staged(td.vcpu, true, &mut cmd, &mut []), Err(Errno::EFAULT));
    let mut cmd = gmem_uapi::kvm_tdx_cmd { id: 3, flags: 0, data: 0, hw_error: 1 };
    assert_eq!(td.host.unchecked().tdx_op_staged(td.vcpu, true, &mut cmd, &mut []), Err(Errno::EINVAL));
    td.host.check("init_mem_region errors");
}

#[test]
fn init_vm_and_init_vcpu_check_their_arguments() {
    let host = CheckedHost::new_intel(KernelProfile::v6_18());
    let vm = host.create_vm(TDX_VM).unwrap();
    assert_eq!(host.create_vcpu(vm, 0), Err(Errno::EIO), "no vCPU before INIT_VM");
    let bad =
        |init_vm: kvm_tdx_init_vm, cpuid: &[kvm_cpuid_entry2]| host.tdx_init_vm(vm, &init_vm, cpuid).unwrap_err().errno;
    assert_eq!(bad(kvm_tdx_init_vm { attributes: 1 << 0, ..init_vm_args() }, &tdx_cpuid()), Errno::EINVAL, "DEBUG");
    assert_eq!(bad(kvm_tdx_init_vm { xfam: 1 << 17, ..init_vm_args() }, &tdx_cpuid()), Errno::EINVAL, "AMX");
    assert_eq!(bad(kvm_tdx_init_vm { reserved: [1; 12], ..init_vm_args() }, &tdx_cpuid()), Errno::EINVAL);
    assert_eq!(bad(init_vm_args(), &[]), Errno::EINVAL, "no 0x80000008");
    let gpaw52 = [kvm_cpuid_entry2 { function: 0x8000_0008, eax: 52 << 16, ..Default::default() }];
    assert_eq!(bad(init_vm_args(), &gpaw52), Errno::EINVAL, "no 5-level EPT");
    let tsx = [tdx_cpuid()[0], kvm_cpuid_entry2 { function: 7, ebx: 1 << 11, ..Default::default() }];
    assert_eq!(bad(init_vm_args(), &tsx), Errno::EINVAL, "TSX");
    let unknown = [tdx_cpuid()[0], kvm_cpuid_entry2 { function: 0x4000_0000, ..Default::default() }];
    assert_eq!(bad(init_vm_args(), &unknown), Errno::EINVAL, "a leaf without a slot");
    assert_eq!(host.unchecked().tdx_host().unwrap().nr_configured_hkid(), 0, "nothing was allocated");
    host.tdx_init_vm(vm, &init_vm_args(), &tdx_cpuid()).unwrap();
    assert_eq!(host.tdx_init_vm(vm, &init_vm_args(), &tdx_cpuid()).unwrap_err().errno, Errno::EINVAL, "twice");
    let vcpu = host.create_vcpu(vm, 0).unwrap();
    let mut cmd = gmem_uapi::kvm_tdx_cmd { id: 2, flags: 1, data: 0, hw_error: 0 };
    assert_eq!(host.unchecked().tdx_op_staged(vcpu, true, &mut cmd, &mut []), Err(Errno::EINVAL), "flags");
    host.tdx_init_vcpu(vcpu, 0).unwrap();
    assert_eq!(host.tdx_init_vcpu(vcpu, 0).unwrap_err().errno, Errno::EINVAL, "twice");
    // The VM-scope ioctl refuses vCPU commands and the reverse.
    let mut cmd = gmem_uapi::kvm_tdx_cmd { id: 2, ..Default::default() };
    assert_eq!(host.unchecked().tdx_op_staged(vm, false, &mut cmd, &mut []), Err(Errno::EINVAL));
    let mut cmd = gmem_uapi::kvm_tdx_cmd { id: 4, ..Default::default() };
    assert_eq!(host.unchecked().tdx_op_staged(vcpu, true, &mut cmd, &mut []), Err(Errno::EINVAL));
    host.check("init errors");
}

#[test]
fn finalize_is_refused_while_a_premapped_leaf_awaits_its_page_add() {
    let td = Td::v6_18();
    let module = td.module();
    // PAGE.ADD fails once with a non-BUSY status: the leaf stays premapped (v6.18).
    module.inject(SeamcallLeaf::MemPageAdd, TdxStatus::new(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX), 0, 1);
    let mut region = kvm_tdx_init_mem_region { source_addr: td.image, gpa: 0, nr_pages: 1 };
    assert_eq!(td.host.tdx_init_mem_region(td.vcpu, &mut region, 0).unwrap_err().errno, Errno::EIO);
    assert_eq!(td.nr_premapped(), 1);
    assert!(td.mirror_leaf(0).is_some());
    assert_eq!(td.sept_leaf(0), SeptEntry::Free);
    assert_eq!(td.host.tdx_finalize_vm(td.vm).unwrap_err().errno, Errno::EINVAL);
    // Converting the page zaps the premapped leaf: BLOCK finds the empty S-EPT leaf, the premap
    // signature, and nr_premapped drops back.
    td.host.set_memory_attributes(td.vm, &attrs(0, PAGE, 0)).unwrap();
    assert_eq!(td.nr_premapped(), 0);
    assert_eq!(td.mirror_leaf(0), None);
    td.host.tdx_finalize_vm(td.vm).unwrap();
    td.host.check("finalize");
}

#[test]
fn a_busy_aug_is_a_retried_fault() {
    let td = Td::v6_18();
    td.host.tdx_finalize_vm(td.vm).unwrap();
    let module = td.module();
    module.inject(SeamcallLeaf::MemPageAug, TdxStatus::new(TDX_OPERAND_BUSY, 0x92), 0, 3);
    assert_eq!(td.host.pre_fault_memory(td.vcpu, 0x20000, PAGE), Ok(0));
    assert_eq!(module.executed(SeamcallLeaf::MemPageAug), 4, "three BUSY, then the AUG");
    assert!(matches!(td.sept_leaf(0x20000), SeptEntry::Leaf { state: LeafState::Pending, .. }));
    assert!(!td.kvm().is_dead());
    td.host.check("busy aug");
}

#[test]
fn a_busy_remove_kicks_the_vcpus_and_retries_once() {
    let td = Td::v6_18();
    td.host.tdx_finalize_vm(td.vm).unwrap();
    let module = td.module();
    td.host.pre_fault_memory(td.vcpu, 0x20000, PAGE).unwrap();
    // The vCPU is inside the TD.
    let (_, vcpu) = td.host.unchecked().vcpu(td.vcpu).unwrap();
    let tdvpr = vcpu.arch::<gmem_arch::tdx::kvm::TdxVcpu>().unwrap().tdvpr().unwrap();
    module.tdh_vp_enter(tdvpr).unwrap();
    module.inject(SeamcallLeaf::MemPageRemove, TdxStatus::new(TDX_OPERAND_BUSY, 0x92), 0, 1);
    td.host.set_memory_attributes(td.vm, &attrs(0x20000, PAGE, 0)).unwrap();
    assert_eq!(td.sept_leaf(0x20000), SeptEntry::Free);
    assert_eq!(module.executed(SeamcallLeaf::MemPageRemove), 2);
    assert_eq!(module.td_info(td.tdr()).unwrap().vcpus[0].in_td_epoch, None, "kicked out of the TD");
    assert!(!TdxVm::of(&td.kvm()).unwrap().wait_for_sept_zap());
    td.host.check("busy remove");
}

#[test]
fn a_failed_remove_kills_the_vm_and_leaks_the_page() {
    let td = Td::v6_18();
    td.host.tdx_finalize_vm(td.vm).unwrap();
    let module = td.module();
    td.host.pre_fault_memory(td.vcpu, 0x20000, PAGE).unwrap();
    let pfn = td.mirror_leaf(0x20).unwrap();
    module.inject(SeamcallLeaf::MemPageRemove, TdxStatus::new(TDX_OPERAND_INVALID, TDX_OPERAND_ID_RCX), 0, 1);
    let _ = td.host.unchecked().set_memory_attributes(td.vm, &attrs(0x20000, PAGE, 0));
    let kvm = td.kvm();
    assert!(kvm.is_dead());
    let warnings = td.host.take_warnings();
    assert!(warnings.iter().any(|w| w.to_string().contains("TDH_MEM_PAGE_REMOVE")), "{warnings:?}");
    assert_eq!(td.host.unchecked().pre_fault_memory(td.vcpu, 0x30000, PAGE), Err(Errno::EIO));
    assert_eq!(td.host.unchecked().tdx_finalize_vm(td.vm).unwrap_err().errno, Errno::EIO);
    assert!(TdxVm::of(&kvm).unwrap().leaked_pages().contains(&pfn));
    assert!(td.host.violations().is_empty(), "{:?}", td.host.violations());
    drop(kvm);
    let host = td.host.unchecked();
    for fd in [td.vcpu, td.gmem, td.vm] {
        host.close(fd).unwrap();
    }
    // The page stays the TD's: the host never gets it back half-released; so do the TD's
    // control pages (the TDR cannot be reclaimed while the TD owns a page: a WARN).
    assert!(module.host_reuse_hazard(pfn).is_some());
    let warnings = td.host.take_warnings();
    assert!(warnings.iter().all(|w| w.to_string().contains("TDX_TD_ASSOCIATED_PAGES_EXIST")), "{warnings:?}");
    assert!(td.host.violations().is_empty(), "{:?}", td.host.violations());
}
