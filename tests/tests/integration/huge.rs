//! Huge mappings in the TDP MMU, bounded by the max mapping level, and the invariants M6–M8.
//!
//! Goal: show that a fault maps a 2M leaf exactly when the kernel would (a 2M-aligned slot whose
//! gfn and hva agree, no MIXED attributes, a 2M host mapping for shared memory, a 2M-capable
//! folio and vendor hook for private memory), that a conversion inside a huge page sets
//! `KVM_LPAGE_MIXED_FLAG` and the next faults map 4K, that a zap of any part of a huge leaf zaps
//! and flushes the whole leaf, and that the M6/M8 checkers name a broken state.
//!
//! `thp_backing_maps_2m_leaves_until_the_host_splits_the_thp` runs the whole chain with a real
//! transparent huge page (`MADV_HUGEPAGE`). The other tests need host mappings a THP cannot give
//! them (a 2M host level while the slot's lpage_info or attributes say no, across two huge pages
//! with one fault each): they raise the host mapping level with
//! `Kvm::set_host_mapping_order_for_test`, and only over anonymous memory whose frames they made
//! physically contiguous and 2M-aligned first (`contiguous_backing`), so that the 2M leaf maps
//! exactly the frames the host maps at those addresses, as a THP would.

use gmem_kvm::arch::PgLevel;
use gmem_kvm::arch::{ArchFactory, ArchSetup, GenericArchFactory, KvmArch, PopulateSource, SwProtectedArch};
use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::invariants::{M6_HUGE, M8_MIXED};
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::tdp_mmu::Spte;
use gmem_kvm::{Gfn, KernelProfile, Kvm, KvmSystem, VmType};
use gmem_mm::folio::Folio;
use gmem_mm::vfs::{MADV_DONTNEED, MADV_HUGEPAGE};
use gmem_mm::{KResult, Pfn};
use gmem_sync::Arc;
use gmem_tests::*;

/// Pages in 2M.
const HUGE: u64 = 512;
const HUGE_SIZE: u64 = HUGE * PAGE;

/// A SW_PROTECTED VM (memory attributes, so MIXED tracking) with a vCPU and a 4M guest_memfd
/// memslot at gpa 0 whose shared backing is 2M-aligned anonymous memory. `hva_skew` shifts the
/// slot's hva (misaligning gfn and hva); `contiguous` makes the backing's frames contiguous and
/// aligned and raises the host mapping level to 2M.
fn huge_guest(profile: KernelProfile, hva_skew: u64, contiguous: bool) -> Guest {
    huge_guest_on(CheckedHost::new(profile), hva_skew, contiguous)
}

/// Like [`huge_guest`], on a kernel of the test's own.
fn huge_guest_on(host: CheckedHost, hva_skew: u64, contiguous: bool) -> Guest {
    let guest = GuestBuilder::on(host).pages(2 * HUGE).uaddr_align(HUGE_SIZE, hva_skew).build();
    if contiguous {
        contiguous_backing(&guest.host, guest.uaddr(), 2 * HUGE);
        guest.kvm().set_host_mapping_order_for_test(Some(9));
    }
    guest
}

/// Whether the memslot's lpage_info marks the `level` page holding `gfn` MIXED.
fn mixed(guest: &Guest, gfn: u64, level: PgLevel) -> bool {
    let kvm = guest.kvm();
    let (entry, _) = guest.host.memslots(guest.vm)[0];
    let slot = kvm.memslot_by_handle(entry.handle).unwrap();
    slot.hugepage_test_mixed(Gfn(gfn), level)
}

/// Touches `pages` pages at `uaddr` (2M-aligned) so that their anonymous frames are consecutive
/// and the first is 2M-aligned: on a fresh machine frames come from a bump allocator, so
/// allocate (and keep) padding frames up to the next aligned pfn first. Asserts it worked.
fn contiguous_backing(host: &CheckedHost, uaddr: u64, pages: u64) {
    let mem = &host.machine().mem;
    loop {
        let pad = Folio::alloc(mem, 0).unwrap();
        if (pad.pfn().0 + 1) % HUGE == 0 {
            break;
        }
    }
    for page in 0..pages {
        host.store(uaddr + page * PAGE, &[page as u8 ^ 0x5a]).unwrap();
    }
    let mm = &host.process().mm;
    let pfn = |page: u64| {
        let pfn = mm.get_user_page(uaddr + page * PAGE, false).unwrap();
        Folio::from_pfn(mem, pfn).put();
        pfn
    };
    let first = pfn(0);
    assert_eq!(first.0 % HUGE, 0, "setup: the backing's first frame is not 2M-aligned");
    for page in 1..pages {
        assert_eq!(pfn(page), Pfn(first.0 + page), "setup: the backing is not contiguous at page {page}");
    }
}

#[test]
fn a_2m_aligned_slot_over_a_2m_host_mapping_maps_one_2m_leaf() {
    for profile in both_versions() {
        let guest = huge_guest(profile.clone(), 0, true);
        let host = &guest.host;
        assert_eq!(host.guest_load(guest.vcpu(), 0x3000, 1, None).unwrap(), vec![3 ^ 0x5a]);
        let (base, spte) = guest.leaf(3).expect("a leaf");
        assert_eq!((base, spte.level), (Gfn(0), PgLevel::Level2M), "{}", profile.name);
        let first = host.process().mm.get_user_page(guest.uaddr(), false).unwrap();
        Folio::from_pfn(&host.machine().mem, first).put();
        assert_eq!(spte.pfn, first, "the leaf maps the aligned frames of the host mapping");
        // Every gfn of the 2M page reads through the one leaf, with the host's data.
        assert_eq!(host.guest_load(guest.vcpu(), 0x1ff000, 1, None).unwrap(), vec![0x1ff_u64 as u8 ^ 0x5a]);
        assert_eq!(host.guest_load(guest.vcpu(), 0x10000, 1, None).unwrap(), vec![0x10 ^ 0x5a]);
        assert_eq!(guest.host.vcpu_faults(guest.vcpu()), (1, 1, 0), "one fault for the whole 2M page");
        assert_eq!(guest.kvm().tdp_mmu().unwrap().sptes().len(), 1);
        // Control: the same memory without the 2M host mapping maps 4K.
        guest.kvm().set_host_mapping_order_for_test(None);
        host.guest_load(guest.vcpu(), 0x200000, 1, None).unwrap();
        assert_eq!(guest.level(0x200), Some(PgLevel::Level4K));
    }
}

#[test]
fn a_slot_whose_hva_is_misaligned_with_its_gfn_maps_4k() {
    let guest = huge_guest(KernelProfile::v6_18(), PAGE, false);
    guest.kvm().set_host_mapping_order_for_test(Some(9));
    let (entry, _) = guest.host.memslots(guest.vm)[0];
    let kvm = guest.kvm();
    let slot = kvm.memslot_by_handle(entry.handle).unwrap();
    assert_eq!(slot.disallow_lpage(Gfn(0), PgLevel::Level2M), 1, "gfn ^ ugfn misaligned: every 2M page disallowed");
    assert_eq!(slot.disallow_lpage(Gfn(0x3ff), PgLevel::Level1G), 1);
    guest.host.guest_store(guest.vcpu(), 0x5000, &[1], None).unwrap();
    assert_eq!(guest.level(5), Some(PgLevel::Level4K));
}

#[test]
fn a_slot_that_starts_or_ends_inside_a_huge_page_disallows_that_page_only() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 4 * HUGE_SIZE, 0);
    let area = host.mmap_anonymous(6 * HUGE_SIZE).unwrap();
    // gpa 0x1000 .. 0x401000 at an hva with the same offset in its 2M page: gfn ^ ugfn aligned.
    let uaddr = area.next_multiple_of(HUGE_SIZE) + PAGE;
    host.set_user_memory_region2(vm, &region(0, KVM_MEM_GUEST_MEMFD, PAGE, 2 * HUGE_SIZE, uaddr, gmem as u32, 0))
        .unwrap();
    let kvm = host.kvm(vm);
    let (entry, _) = host.memslots(vm)[0];
    let slot = kvm.memslot_by_handle(entry.handle).unwrap();
    let info = slot.lpage_info();
    let two_m = &info.levels[0];
    assert_eq!((two_m.lpages, two_m.head, two_m.tail, two_m.all), (3, true, true, false));
    assert_eq!(slot.disallow_lpage(Gfn(1), PgLevel::Level2M), 1, "the head page");
    assert_eq!(slot.disallow_lpage(Gfn(0x200), PgLevel::Level2M), 0, "the middle page");
    assert_eq!(slot.disallow_lpage(Gfn(0x400), PgLevel::Level2M), 1, "the tail page");
    assert_eq!(slot.disallow_lpage(Gfn(0x200), PgLevel::Level1G), 1, "the only 1G page is cut by both ends");
}

#[test]
fn converting_one_gfn_sets_mixed_zaps_the_2m_leaf_and_later_faults_map_4k_until_it_converts_back() {
    let guest = huge_guest(KernelProfile::v6_18(), 0, true);
    let host = &guest.host;
    host.guest_load(guest.vcpu(), 0x1000, 1, None).unwrap();
    assert_eq!(guest.level(1), Some(PgLevel::Level2M));
    assert!(!mixed(&guest, 0, PgLevel::Level2M));
    let flushes = guest.remote_tlb_flushes();
    host.set_memory_attributes(guest.vm, &attrs(0x5000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    assert!(guest.leaf(1).is_none() && guest.leaf(0x1ff).is_none(), "the whole 2M leaf went");
    assert_eq!(guest.remote_tlb_flushes(), flushes + 1);
    assert!(mixed(&guest, 0, PgLevel::Level2M), "gfn 5 differs from the rest of its 2M page");
    assert!(!mixed(&guest, 0x200, PgLevel::Level2M));
    // Shared faults next to it, and the private fault on it, map 4K.
    host.guest_load(guest.vcpu(), 0x1000, 1, None).unwrap();
    assert_eq!(guest.level(1), Some(PgLevel::Level4K));
    host.guest_store(guest.vcpu(), 0x5000, &[9], None).unwrap();
    let (_, private) = guest.leaf(5).unwrap();
    assert!(private.private);
    assert_eq!(private.level, PgLevel::Level4K);
    // The other 2M page is untouched by the MIXED flag.
    host.guest_load(guest.vcpu(), 0x201000, 1, None).unwrap();
    assert_eq!(guest.level(0x201), Some(PgLevel::Level2M));
    // Converting gfn 5 back clears MIXED; the next fault maps 2M over the 4K leaf left at gfn 1,
    // replacing it with a flush.
    host.set_memory_attributes(guest.vm, &attrs(0x5000, PAGE, 0)).unwrap();
    assert!(!mixed(&guest, 0, PgLevel::Level2M));
    assert_eq!(guest.level(1), Some(PgLevel::Level4K));
    let flushes = guest.remote_tlb_flushes();
    host.guest_load(guest.vcpu(), 0x5000, 1, None).unwrap();
    assert_eq!(guest.leaf(1).map(|(base, spte)| (base, spte.level)), Some((Gfn(0), PgLevel::Level2M)));
    assert_eq!(guest.remote_tlb_flushes(), flushes + 1, "replacing the smaller leaves flushes");
    assert_eq!(host.guest_load(guest.vcpu(), 0x1000, 1, None).unwrap(), vec![1 ^ 0x5a]);
}

#[test]
fn a_conversion_adds_the_head_and_tail_huge_pages_to_the_invalidation_on_v6_18_only() {
    for (profile, expected) in [(KernelProfile::v6_18(), (0, HUGE)), (KernelProfile::v6_14(), (5, 6))] {
        let guest = huge_guest(profile.clone(), 0, false);
        guest.host.set_memory_attributes(guest.vm, &attrs(0x5000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
        assert_eq!(guest.kvm().mmu_invalidate_range(), expected, "{}", profile.name);
        // Once the page is MIXED, v6.18 no longer adds it.
        guest.host.set_memory_attributes(guest.vm, &attrs(0x7000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
        assert_eq!(guest.kvm().mmu_invalidate_range(), (7, 8), "{}", profile.name);
    }
}

#[test]
fn zapping_a_4k_part_of_a_2m_leaf_zaps_the_whole_leaf_and_flushes() {
    let guest = huge_guest(KernelProfile::v6_18(), 0, true);
    let host = &guest.host;
    host.guest_store(guest.vcpu(), 0x2000, &[7], None).unwrap();
    assert_eq!(guest.level(0x100), Some(PgLevel::Level2M));
    let flushes = guest.remote_tlb_flushes();
    // MADV_DONTNEED of one page: the MMU notifier zaps gfn 3, so the whole leaf, before the
    // frame is freed (the checked call runs INV-NO-STALE-PFN right after).
    host.madvise(guest.uaddr() + 0x3000, PAGE, MADV_DONTNEED).unwrap();
    assert!(guest.leaf(0).is_none() && guest.leaf(0x1ff).is_none());
    assert_eq!(guest.remote_tlb_flushes(), flushes + 1);
    // A real THP would now be split in the host: 4K from here.
    guest.kvm().set_host_mapping_order_for_test(None);
    assert_eq!(host.guest_load(guest.vcpu(), 0x3000, 1, None).unwrap(), vec![0]);
    assert_eq!(host.guest_load(guest.vcpu(), 0x2000, 1, None).unwrap(), vec![7]);
    assert_eq!(guest.level(3), Some(PgLevel::Level4K));
}

#[test]
fn a_fault_below_a_huge_leaf_splits_it_and_is_spurious() {
    let guest = huge_guest(KernelProfile::v6_18(), 0, true);
    let host = &guest.host;
    host.guest_load(guest.vcpu(), 0x4000, 1, None).unwrap();
    let before = host.process().mm.get_user_page(guest.uaddr(), false).unwrap();
    Folio::from_pfn(&host.machine().mem, before).put();
    // With the host mapping at 4K, a pre-fault of a gfn under the 2M leaf has goal level 4K.
    guest.kvm().set_host_mapping_order_for_test(None);
    assert_eq!(host.pre_fault_memory(guest.vcpu(), 0x6000, PAGE), Ok(0));
    assert_eq!(guest.kvm().tdp_mmu().unwrap().sptes().len(), HUGE as usize, "split into 512 4K leaves");
    let (base, spte) = guest.leaf(6).unwrap();
    assert_eq!((base, spte.level, spte.pfn), (Gfn(6), PgLevel::Level4K, Pfn(before.0 + 6)));
    assert_eq!(guest.kvm().tdp_mmu().unwrap().stats().installed, 1, "the pre-fault found its leaf present");
}

#[test]
fn pre_fault_returns_the_bytes_to_the_end_of_the_mapped_huge_page() {
    let guest = huge_guest(KernelProfile::v6_18(), 0, true);
    // [0x1ff000, 0x201000): the first step maps the 2M page of 0x1ff000 and advances to its
    // end, the second maps the next 2M page.
    assert_eq!(guest.host.pre_fault_memory(guest.vcpu(), 0x1ff000, 2 * PAGE), Ok(0));
    assert_eq!(guest.kvm().tdp_mmu().unwrap().stats().installed_huge, 2, "two steps, a 2M leaf each");
    assert_eq!(guest.host.vcpu_faults(guest.vcpu()).0, 0, "a pre-fault is no fault the guest took");
    assert_eq!(guest.level(0), Some(PgLevel::Level2M));
    assert_eq!(guest.level(0x3ff), Some(PgLevel::Level2M));
    // Control: at 4K the same range takes two faults too, but maps two 4K leaves.
    let guest = huge_guest(KernelProfile::v6_18(), 0, false);
    assert_eq!(guest.host.pre_fault_memory(guest.vcpu(), 0x1ff000, 2 * PAGE), Ok(0));
    assert_eq!(guest.level(0x1ff), Some(PgLevel::Level4K));
    assert_eq!(guest.level(0), None);
}

#[test]
fn private_faults_stay_4k_whatever_the_host_maps() {
    for profile in both_versions() {
        let guest = huge_guest(profile.clone(), 0, true);
        guest.host.set_memory_attributes(guest.vm, &attrs(0, 2 * HUGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
        assert!(!mixed(&guest, 0, PgLevel::Level2M) && !mixed(&guest, 0, PgLevel::Level1G));
        guest.host.guest_store(guest.vcpu(), 0x3000, &[1], None).unwrap();
        let (_, spte) = guest.leaf(3).unwrap();
        assert!(spte.private);
        assert_eq!(spte.level, PgLevel::Level4K, "{}: guest_memfd folios are order 0", profile.name);
    }
}

/// A SW_PROTECTED back-end whose `gmem_max_mapping_level` hook answers `level` for private
/// pfns, as SNP's (the RMP level) and TDX's (4K) do.
#[derive(Debug)]
struct ClampingArch {
    level: PgLevel,
}

impl KvmArch for ClampingArch {
    fn name(&self) -> &'static str {
        "clamping"
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn gmem_max_mapping_level(&self, _kvm: &Kvm, _pfn: Pfn, is_private: bool) -> Option<PgLevel> {
        is_private.then_some(self.level)
    }

    fn post_populate(
        &self,
        kvm: &Kvm,
        gfn: Gfn,
        pfn: Pfn,
        source: &PopulateSource<'_>,
        order: u8,
        opaque: &mut dyn std::any::Any,
    ) -> KResult<()> {
        SwProtectedArch.post_populate(kvm, gfn, pfn, source, order, opaque)
    }
}

/// The host whose SW_PROTECTED VMs get a [`ClampingArch`] of `level`.
#[derive(Debug)]
struct ClampingHost {
    level: PgLevel,
}

impl ArchFactory for ClampingHost {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn supports(&self, vm_type: VmType) -> bool {
        GenericArchFactory.supports(vm_type)
    }

    fn vm_init(&self, vm_type: VmType) -> KResult<Arc<dyn KvmArch>> {
        match vm_type {
            VmType::SwProtected => Ok(Arc::new(ClampingArch { level: self.level })),
            other => GenericArchFactory.vm_init(other),
        }
    }
}

fn clamped_guest(profile: KernelProfile, level: PgLevel) -> Guest {
    let setup: ArchSetup = Arc::new(move |_, _| Arc::new(ClampingHost { level }) as Arc<dyn ArchFactory>);
    huge_guest_on(CheckedHost::with_system(KvmSystem::builder(profile).arch(setup).build()), 0, false)
}

#[test]
fn a_vendor_hook_clamps_a_private_mapping_the_folio_would_allow() {
    for profile in both_versions() {
        // SNP's hook over 4K RMP entries, TDX's hook: 4K.
        let guest = clamped_guest(profile.clone(), PgLevel::Level4K);
        guest.host.set_memory_attributes(guest.vm, &attrs(0, 2 * HUGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
        let kvm = guest.kvm();
        kvm.set_gmem_max_order_for_test(Some(9));
        guest.host.guest_store(guest.vcpu(), 0x3000, &[1], None).unwrap();
        assert_eq!(guest.level(3), Some(PgLevel::Level4K), "{}", profile.name);

        // Negative control: a hook that allows 2M gives a 2M private leaf over order-0 folios
        // (the pretended 2M folio), and M6 names it.
        let guest = clamped_guest(profile.clone(), PgLevel::Level2M);
        let kvm = guest.kvm();
        guest.host.set_memory_attributes(guest.vm, &attrs(0, 2 * HUGE_SIZE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
        kvm.set_gmem_max_order_for_test(Some(9));
        let mut buf = [1u8];
        let _ = guest.host.unchecked().guest_access(guest.vcpu(), 0x3000, &mut buf, true, None);
        assert_eq!(guest.level(3), Some(PgLevel::Level2M), "{}", profile.name);
        let violations = guest.host.violations();
        assert!(
            violations.iter().any(|v| v.invariant == M6_HUGE && v.detail.contains("guest_memfd folio")),
            "{}: {violations:?}",
            profile.name
        );
        kvm.mmu().flush_shadow_all(&kvm);
        guest.host.take_warnings();
    }
}

#[test]
fn m6_names_a_huge_leaf_where_disallow_lpage_forbids_it() {
    let guest = huge_guest(KernelProfile::v6_18(), PAGE, true);
    let kvm = guest.kvm();
    let first = guest.host.process().mm.get_user_page(guest.uaddr(), false).unwrap();
    Folio::from_pfn(&guest.host.machine().mem, first).put();
    assert!(guest.host.violations().is_empty());
    let spte =
        Spte { pfn: first, level: PgLevel::Level2M, writable: true, private: false, accessed: true, generation: 0 };
    kvm.tdp_mmu().unwrap().install_unchecked_for_test(&kvm, Gfn(0), spte);
    let violations = guest.host.violations();
    assert!(
        violations.iter().any(|v| v.invariant == M6_HUGE && v.detail.contains("disallow_lpage is 0x1")),
        "{violations:?}"
    );
    kvm.mmu().flush_shadow_all(&kvm);
    assert!(guest.host.violations().is_empty());
}

#[test]
fn m8_names_a_mixed_flag_that_disagrees_with_the_attributes() {
    let guest = huge_guest(KernelProfile::v6_18(), 0, false);
    guest.host.set_memory_attributes(guest.vm, &attrs(0x5000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    let kvm = guest.kvm();
    let (entry, _) = guest.host.memslots(guest.vm)[0];
    let slot = kvm.memslot_by_handle(entry.handle).unwrap();
    for (gfn, level) in [(0, PgLevel::Level2M), (0x200, PgLevel::Level2M)] {
        slot.corrupt_mixed_flag_for_test(Gfn(gfn), level);
        let violations = guest.host.violations();
        assert!(
            violations.iter().any(|v| v.invariant == M8_MIXED && v.detail.contains(&format!("gfn {gfn:#x}"))),
            "{violations:?}"
        );
        slot.corrupt_mixed_flag_for_test(Gfn(gfn), level);
        assert!(guest.host.violations().is_empty());
    }
}

#[test]
fn a_new_slot_over_mixed_attributes_starts_with_its_mixed_flags_computed() {
    let host = CheckedHost::new(KernelProfile::v6_18());
    let (vm, gmem) = host.vm_and_gmem(SW_PROTECTED_VM, 2 * HUGE_SIZE, 0);
    // Attributes before the slot exists: gfn 0x201 private, the rest shared.
    host.set_memory_attributes(vm, &attrs(0x201000, PAGE, KVM_MEMORY_ATTRIBUTE_PRIVATE)).unwrap();
    let uaddr = host.mmap_anonymous(4 * HUGE_SIZE).unwrap().next_multiple_of(HUGE_SIZE);
    host.set_user_memory_region2(vm, &region(0, KVM_MEM_GUEST_MEMFD, 0, 2 * HUGE_SIZE, uaddr, gmem as u32, 0)).unwrap();
    let kvm = host.kvm(vm);
    let (entry, _) = host.memslots(vm)[0];
    let slot = kvm.memslot_by_handle(entry.handle).unwrap();
    assert!(slot.hugepage_test_mixed(Gfn(0x200), PgLevel::Level2M));
    assert!(!slot.hugepage_test_mixed(Gfn(0), PgLevel::Level2M));
}

/// A DEFAULT VM whose RAM is `MADV_HUGEPAGE` anonymous memory (as QEMU's `ram_block_add`
/// madvises it): the first fault makes the host map a THP (GUP), so KVM maps the 2M page with
/// one 2M leaf; `MADV_DONTNEED` of one 4K page splits the THP inside an invalidation of the whole
/// 2M range, which zaps the leaf; the next fault finds a 4K host mapping and maps 4K.
#[test]
fn thp_backing_maps_2m_leaves_until_the_host_splits_the_thp() {
    for profile in both_versions() {
        let host = CheckedHost::new(profile.clone());
        let vm = host.create_vm(DEFAULT_VM).unwrap();
        let size = 2 * HUGE_SIZE;
        let uaddr = host.mmap_anonymous(size).unwrap();
        assert_eq!(uaddr % HUGE_SIZE, 0, "a multiple of 2M is placed 2M-aligned");
        host.madvise(uaddr, size, MADV_HUGEPAGE).unwrap();
        host.set_user_memory_region2(vm, &region(0, 0, 0, size, uaddr, 0, 0)).unwrap();
        let vcpu = host.create_vcpu(vm, 0).unwrap();
        let kvm = host.kvm(vm);
        let tdp = || kvm.tdp_mmu().unwrap();
        let mm = &host.process().mm;

        host.guest_store(vcpu, 0x5000, &[0xab], None).unwrap();
        assert_eq!(mm.host_mapping_order(uaddr), 9, "{}: GUP faulted a THP in", profile.name);
        let (base, spte) = tdp().covering_leaf(Gfn(5)).expect("a leaf");
        assert_eq!((base, spte.level), (Gfn(0), PgLevel::Level2M), "{}", profile.name);
        assert_eq!(spte.pfn.0 % HUGE, 0, "the leaf maps the THP's aligned frames");
        assert_eq!(host.guest_load(vcpu, 0x1ff000, 1, None).unwrap(), vec![0], "the rest of the THP reads zero");
        assert_eq!(host.load(uaddr + 0x5000, 1).unwrap(), vec![0xab], "the host sees the guest's store");
        assert_eq!(host.vcpu_faults(vcpu).0, 1, "one fault for the whole 2M page");

        // The second 2M page: its own THP and leaf.
        host.guest_load(vcpu, HUGE_SIZE, 1, None).unwrap();
        assert_eq!(tdp().covering_leaf(Gfn(HUGE)).map(|(_, spte)| spte.level), Some(PgLevel::Level2M));

        // A 4K DONTNEED splits the first THP: the whole 2M leaf goes, the other stays.
        let flushes = tdp().stats().remote_tlb_flushes;
        host.madvise(uaddr + 0x7000, PAGE, MADV_DONTNEED).unwrap();
        assert_eq!(mm.host_mapping_order(uaddr), 0, "the THP was split");
        assert!(tdp().covering_leaf(Gfn(5)).is_none(), "{}: the 2M leaf was zapped", profile.name);
        assert!(tdp().stats().remote_tlb_flushes > flushes, "the zap flushed");
        assert_eq!(tdp().covering_leaf(Gfn(HUGE)).map(|(_, spte)| spte.level), Some(PgLevel::Level2M));

        // Re-faults map 4K now; the data outside the discarded page survived the split.
        assert_eq!(host.guest_load(vcpu, 0x5000, 1, None).unwrap(), vec![0xab]);
        assert_eq!(
            tdp().covering_leaf(Gfn(5)).map(|(base, spte)| (base, spte.level)),
            Some((Gfn(5), PgLevel::Level4K))
        );
        assert_eq!(host.guest_load(vcpu, 0x7000, 1, None).unwrap(), vec![0], "the discarded page reads zero");
    }
}
