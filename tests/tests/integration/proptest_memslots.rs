//! Random sequences of guest_memfd and memslot operations on one small VM under v6.18.
//!
//! Goal: whatever a process does with `KVM_CREATE_GUEST_MEMFD`, `KVM_SET_USER_MEMORY_REGION2`
//! (create, delete, re-issue, move, toggling `KVM_MEM_GUEST_MEMFD`), fallocate, mmap and close,
//! the simulated v6.18 kernel keeps INV-BIND, INV-REFCOUNT and INV-UPTODATE-PREPARED, fires no
//! WARN, and returns the errno the kernel's rules (kernel-semantics.md §3, §3.1) give.
//!
//! Method: proptest generates an operation list and a VM type (DEFAULT or SW_PROTECTED); each
//! operation goes through `CheckedHost`, which checks the invariants, the WARN registry and
//! lockdep after every call; a small reference model of descriptors, guest_memfds, bindings and
//! memslots predicts every result, and after every step the published memslots and every open
//! guest_memfd's bindings are compared with it. The process exits at the end of each case and the
//! WARN registry is checked once more (the releases run then). The random generator is seeded
//! deterministically; `PROPTEST_CASES` sets the number of cases (default 256, well under a second).
//! A second test runs the same generator with F2 switched off and asserts that it finds the
//! seed's use-after-free, so the property is shown to be able to fail.

use gmem_kvm::guest_memfd::KvmGmem;
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD as GUEST_MEMFD;
use gmem_kvm::KernelProfile;
use gmem_mm::vfs::{FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, MAP_SHARED, PROT_READ, PROT_WRITE};
use gmem_mm::vma::AccessSignal;
use gmem_mm::{Errno, KResult};
use gmem_tests::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use std::collections::{BTreeMap, BTreeSet};

const BASE_GPA: u64 = 0x10_0000;
const SLOTS: u32 = 4;
const GPA_PAGES: u64 = 16;
const DEFAULT_CASES: u32 = 256;

/// How an existing memslot is re-issued.
#[derive(Clone, Copy, Debug)]
enum Reissue {
    Identical,
    ClearGuestMemfd,
    SetGuestMemfd,
    Move(u64),
}

#[derive(Clone, Debug)]
enum Op {
    CreateGmem {
        pages: u64,
        flags_pick: usize,
    },
    /// `gmem: None` is an ordinary slot; `Some(i)` picks the i-th guest_memfd ever created
    /// (modulo), whose descriptor may be closed or reused by now.
    SetSlot {
        slot: u32,
        gpa_page: u64,
        pages: u64,
        gmem: Option<usize>,
        offset_page: u64,
    },
    Reissue {
        slot: u32,
        how: Reissue,
    },
    DeleteSlot {
        slot: u32,
    },
    Fallocate {
        gmem: usize,
        punch: bool,
        offset_page: u64,
        pages: u64,
    },
    MapTouch {
        gmem: usize,
        page: u64,
        byte: u8,
    },
    Close {
        gmem: usize,
    },
    SetAttributes {
        gpa_page: u64,
        pages: u64,
        private: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let reissue = prop_oneof![
        Just(Reissue::Identical),
        Just(Reissue::ClearGuestMemfd),
        Just(Reissue::SetGuestMemfd),
        (0..GPA_PAGES).prop_map(Reissue::Move),
    ];
    prop_oneof![
        3 => (1u64..=8, 0usize..4).prop_map(|(pages, flags_pick)| Op::CreateGmem { pages, flags_pick }),
        6 => (0..SLOTS, 0..GPA_PAGES, 1u64..=4, prop::option::weighted(0.8, 0usize..6), 0u64..8).prop_map(
            |(slot, gpa_page, pages, gmem, offset_page)| Op::SetSlot { slot, gpa_page, pages, gmem, offset_page }
        ),
        2 => (0..SLOTS, reissue).prop_map(|(slot, how)| Op::Reissue { slot, how }),
        3 => (0..SLOTS).prop_map(|slot| Op::DeleteSlot { slot }),
        3 => (0usize..6, any::<bool>(), 0u64..10, 1u64..=4)
            .prop_map(|(gmem, punch, offset_page, pages)| Op::Fallocate { gmem, punch, offset_page, pages }),
        1 => (0usize..6, 0u64..8, any::<u8>()).prop_map(|(gmem, page, byte)| Op::MapTouch { gmem, page, byte }),
        1 => (0usize..6).prop_map(|gmem| Op::Close { gmem }),
        1 => (0..GPA_PAGES, 1u64..=8, any::<bool>())
            .prop_map(|(gpa_page, pages, private)| Op::SetAttributes { gpa_page, pages, private }),
    ]
}

#[derive(Clone, Debug)]
struct GmemModel {
    fd: i32,
    pages: u64,
    flags: u64,
    open: bool,
    /// index → slot id.
    bound: BTreeMap<u64, u32>,
}

#[derive(Clone, Copy, Debug)]
struct SlotModel {
    gpa_page: u64,
    pages: u64,
    /// The guest_memfd (by creation index), its descriptor at bind time, and the page offset.
    gmem: Option<(usize, i32, u64)>,
}

#[derive(Debug)]
struct Model {
    private_mem: bool,
    gmems: Vec<GmemModel>,
    /// Open guest_memfd descriptors → creation index.
    fds: BTreeMap<i32, usize>,
    slots: BTreeMap<u32, SlotModel>,
}

impl Model {
    fn lowest_free_fd(&self) -> i32 {
        (4..).find(|fd| !self.fds.contains_key(fd)).expect("a free descriptor")
    }

    fn overlaps(&self, slot: u32, gpa_page: u64, pages: u64) -> bool {
        self.slots.iter().any(|(&id, s)| id != slot && s.gpa_page < gpa_page + pages && gpa_page < s.gpa_page + s.pages)
    }

    /// The descriptor an operation on the i-th guest_memfd uses (a never-opened one if none).
    fn fd_of(&self, gmem: usize) -> i32 {
        if self.gmems.is_empty() {
            return 999;
        }
        self.gmems[gmem % self.gmems.len()].fd
    }

    fn unbind(&mut self, slot: &SlotModel) {
        if let Some((id, _, offset)) = slot.gmem {
            let gmem = &mut self.gmems[id];
            if gmem.open {
                for index in offset..offset + slot.pages {
                    gmem.bound.remove(&index);
                }
            }
        }
    }

    /// `KVM_SET_USER_MEMORY_REGION2` for a request of `pages` pages at `gpa_page`; `gmem_fd` is
    /// `Some((fd, offset_page))` for a guest_memfd request. Updates the model on success.
    fn set_slot(&mut self, slot: u32, gpa_page: u64, pages: u64, gmem_fd: Option<(i32, u64)>) -> KResult<()> {
        if let Some(old) = self.slots.get(&slot).copied() {
            // Private memslots are immutable; F2: GUEST_MEMFD cannot be toggled either.
            if gmem_fd.is_some() || old.gmem.is_some() || pages != old.pages {
                return Err(Errno::EINVAL);
            }
            if gpa_page == old.gpa_page {
                return Ok(());
            }
            if self.overlaps(slot, gpa_page, pages) {
                return Err(Errno::EEXIST);
            }
            self.slots.insert(slot, SlotModel { gpa_page, ..old });
            return Ok(());
        }
        if self.overlaps(slot, gpa_page, pages) {
            return Err(Errno::EEXIST);
        }
        let Some((fd, offset)) = gmem_fd else {
            self.slots.insert(slot, SlotModel { gpa_page, pages, gmem: None });
            return Ok(());
        };
        let id = *self.fds.get(&fd).ok_or(Errno::EBADF)?;
        let gmem = &mut self.gmems[id];
        if offset + pages > gmem.pages || (offset..offset + pages).any(|index| gmem.bound.contains_key(&index)) {
            return Err(Errno::EINVAL);
        }
        for index in offset..offset + pages {
            gmem.bound.insert(index, slot);
        }
        self.slots.insert(slot, SlotModel { gpa_page, pages, gmem: Some((id, fd, offset)) });
        Ok(())
    }
}

fn valid_flags(private_mem: bool) -> &'static [u64] {
    if private_mem {
        &[0, GUEST_MEMFD_FLAG_MMAP]
    } else {
        &[0, GUEST_MEMFD_FLAG_MMAP, GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED]
    }
}

fn gpa(page: u64) -> u64 {
    BASE_GPA + page * PAGE
}

/// Compares the kernel's memslots and bindings with the model.
fn assert_matches_model(host: &CheckedHost, vm: i32, model: &Model, step: &str) {
    let slots = host.memslots(vm);
    let published: Vec<(u32, u64, u64)> = slots.iter().map(|(e, _)| (e.id, e.base_gfn, e.npages)).collect();
    let mut expected: Vec<(u32, u64, u64)> =
        model.slots.iter().map(|(&id, s)| (id, gpa(s.gpa_page) >> 12, s.pages)).collect();
    expected.sort_by_key(|&(_, gfn, _)| gfn);
    assert_eq!(published, expected, "{step}: memslots");
    let handle_of = |id: u32| slots.iter().find(|(e, _)| e.id == id).map(|(e, _)| e.handle);
    for gmem in model.gmems.iter().filter(|g| g.open) {
        let file = host.gmem_file(gmem.fd);
        let kvm_gmem = file.private::<KvmGmem>().expect("kvm_gmem");
        for index in 0..gmem.pages {
            let expected = gmem.bound.get(&index).map(|&id| handle_of(id).expect("a bound slot is published"));
            assert_eq!(kvm_gmem.binding_at(index), expected, "{step}: fd {} index {index}", gmem.fd);
        }
    }
}

fn run_case(profile: KernelProfile, vm_type: u64, ops: &[Op]) {
    let host = CheckedHost::new(profile);
    let machine = host.machine().clone();
    let vm = host.create_vm(vm_type).unwrap();
    assert_eq!(vm, 3);
    let mut model = Model {
        private_mem: vm_type == SW_PROTECTED_VM,
        gmems: Vec::new(),
        fds: BTreeMap::new(),
        slots: BTreeMap::new(),
    };
    for (n, op) in ops.iter().enumerate() {
        let step = format!("step {n} {op:?}");
        match *op {
            Op::CreateGmem { pages, flags_pick } => {
                let flags = valid_flags(model.private_mem)[flags_pick % valid_flags(model.private_mem).len()];
                let fd = model.lowest_free_fd();
                assert_eq!(host.create_guest_memfd(vm, pages * PAGE, flags), Ok(fd), "{step}");
                model.fds.insert(fd, model.gmems.len());
                model.gmems.push(GmemModel { fd, pages, flags, open: true, bound: BTreeMap::new() });
            }
            Op::SetSlot { slot, gpa_page, pages, gmem, offset_page } => {
                let request = match gmem {
                    Some(i) => gmem_region(slot, gpa(gpa_page), pages * PAGE, model.fd_of(i), offset_page * PAGE),
                    None => region(slot, 0, gpa(gpa_page), pages * PAGE, 0, 0, 0),
                };
                let expected = model.set_slot(slot, gpa_page, pages, gmem.map(|i| (model.fd_of(i), offset_page)));
                assert_eq!(host.set_user_memory_region2(vm, &request), expected, "{step}");
            }
            Op::Reissue { slot, how } => {
                let Some(old) = model.slots.get(&slot).copied() else {
                    continue;
                };
                let (fd, offset) = old.gmem.map_or((0, 0), |(_, fd, offset)| (fd, offset));
                let mut flags = if old.gmem.is_some() { GUEST_MEMFD } else { 0 };
                let mut gpa_page = old.gpa_page;
                match how {
                    Reissue::Identical => {}
                    Reissue::ClearGuestMemfd => flags &= !GUEST_MEMFD,
                    Reissue::SetGuestMemfd => flags |= GUEST_MEMFD,
                    Reissue::Move(to) => gpa_page = to,
                }
                let request = region(slot, flags, gpa(gpa_page), old.pages * PAGE, 0, fd as u32, offset * PAGE);
                let expected = model.set_slot(slot, gpa_page, old.pages, (flags != 0).then_some((fd, offset)));
                assert_eq!(host.set_user_memory_region2(vm, &request), expected, "{step}");
            }
            Op::DeleteSlot { slot } => {
                let expected = match model.slots.remove(&slot) {
                    Some(old) => {
                        model.unbind(&old);
                        Ok(())
                    }
                    None => Err(Errno::EINVAL),
                };
                assert_eq!(host.set_user_memory_region2(vm, &delete_region(slot, 0)), expected, "{step}");
            }
            Op::Fallocate { gmem, punch, offset_page, pages } => {
                let fd = model.fd_of(gmem);
                let expected = match model.fds.get(&fd) {
                    None => Err(Errno::EBADF),
                    Some(&id) if !punch && offset_page + pages > model.gmems[id].pages => Err(Errno::EINVAL),
                    Some(_) => Ok(()),
                };
                let mode = if punch { FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE } else { FALLOC_FL_KEEP_SIZE };
                let result = host.fallocate(fd, mode, (offset_page * PAGE) as i64, (pages * PAGE) as i64);
                assert_eq!(result, expected, "{step}");
            }
            Op::MapTouch { gmem, page, byte } => {
                let fd = model.fd_of(gmem);
                let Some(&id) = model.fds.get(&fd) else {
                    assert_eq!(host.mmap(fd, PAGE, 0, PROT_READ | PROT_WRITE, MAP_SHARED), Err(Errno::EBADF), "{step}");
                    continue;
                };
                let target = &model.gmems[id];
                let len = target.pages * PAGE;
                let mapped = host.mmap(fd, len, 0, PROT_READ | PROT_WRITE, MAP_SHARED);
                if target.flags & GUEST_MEMFD_FLAG_MMAP == 0 {
                    assert_eq!(mapped, Err(Errno::ENODEV), "{step}");
                    continue;
                }
                let addr = mapped.unwrap_or_else(|errno| panic!("{step}: mmap {errno}"));
                let at = addr + (page % target.pages) * PAGE + u64::from(byte) * 8;
                if target.flags & GUEST_MEMFD_FLAG_INIT_SHARED != 0 {
                    host.store(at, &[byte]).unwrap();
                    assert_eq!(host.load(at, 1).unwrap(), vec![byte], "{step}");
                } else {
                    assert_eq!(host.store(at, &[byte]), Err(AccessSignal::Sigbus), "{step}");
                }
                host.munmap(addr, len).unwrap();
            }
            Op::Close { gmem } => {
                let fd = model.fd_of(gmem);
                let expected = match model.fds.remove(&fd) {
                    Some(id) => {
                        model.gmems[id].open = false;
                        Ok(())
                    }
                    None => Err(Errno::EBADF),
                };
                assert_eq!(host.close(fd), expected, "{step}");
            }
            Op::SetAttributes { gpa_page, pages, private } => {
                let attributes = if private { gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE } else { 0 };
                let expected = if private && !model.private_mem { Err(Errno::EINVAL) } else { Ok(()) };
                assert_eq!(
                    host.set_memory_attributes(vm, &attrs(gpa(gpa_page), pages * PAGE, attributes)),
                    expected,
                    "{step}"
                );
            }
        }
        assert_matches_model(&host, vm, &model, &step);
    }
    let open: BTreeSet<i32> = model.fds.keys().copied().collect();
    assert!(open.iter().all(|&fd| host.fstat(fd).is_ok()));
    drop(host);
    let warnings = machine.warnings.snapshot();
    assert!(warnings.is_empty(), "process exit: {warnings:#?}");
}

/// Runs the property on `profile` with `cases` cases from a fixed seed.
fn run(profile: KernelProfile, cases: u32) -> Result<(), String> {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = (prop_oneof![Just(DEFAULT_VM), Just(SW_PROTECTED_VM)], prop::collection::vec(op_strategy(), 1..48));
    runner
        .run(&strategy, |(vm_type, ops)| {
            run_case(profile.clone(), vm_type, &ops);
            Ok(())
        })
        .map_err(|failure| failure.to_string())
}

#[test]
fn random_memslot_and_guest_memfd_sequences_keep_invariants_on_v6_18() {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES);
    if let Err(failure) = run(KernelProfile::v6_18(), cases) {
        panic!("{failure}");
    }
}

#[test]
fn random_sequences_find_the_f2_use_after_free_when_the_fix_is_off() {
    let failure = run(profile("v6.18-F2"), DEFAULT_CASES).expect_err("clearing GUEST_MEMFD must be found");
    assert!(failure.contains("INV-BIND") && failure.contains("freed memslot"), "{failure}");
    assert!(failure.contains("kvm_mmu_slot_apply_flags"), "found through a FLAGS_ONLY update: {failure}");
}
