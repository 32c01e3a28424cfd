//! [`Guest`]: the VM most integration tests start from (vCPUs and memslots on a [`CheckedHost`]),
//! built through the uAPI by [`GuestBuilder`], with the accessors the tests look through (the
//! VM, its SPTEs, a vCPU's fault and TLB counters).
//!
//! The builder makes the calls in the order a VMM does: `KVM_CREATE_VM` (then the VM's direct
//! gfn bits, if asked), `KVM_CREATE_GUEST_MEMFD`, the shared backing, one
//! `KVM_SET_USER_MEMORY_REGION2` per memslot, `KVM_SET_MEMORY_ATTRIBUTES` (PRIVATE) per memslot,
//! and `KVM_CREATE_VCPU`. Every call is checked by the host.

use crate::{attrs, region, CheckedHost, PAGE, SW_PROTECTED_VM};
use gmem_kvm::arch::PgLevel;
use gmem_kvm::attributes::KVM_MEMORY_ATTRIBUTE_PRIVATE;
use gmem_kvm::guest_memfd::{GUEST_MEMFD_FLAG_INIT_SHARED, GUEST_MEMFD_FLAG_MMAP};
use gmem_kvm::memslot::KVM_MEM_GUEST_MEMFD;
use gmem_kvm::tdp_mmu::{Spte, TdpMmu};
use gmem_kvm::vcpu::{KvmVcpu, RunError, VcpuExit, KVM_MEMORY_EXIT_FLAG_PRIVATE};
use gmem_kvm::{Gfn, KernelProfile, Kvm};
use gmem_mm::vfs::{MAP_SHARED, PROT_READ, PROT_WRITE};
use gmem_mm::{Errno, Pfn};
use gmem_sync::Arc;

/// What backs a [`Guest`]'s memslots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// guest_memfd memslots whose shared accesses go to anonymous memory at [`Guest::uaddr`].
    GmemAndAnonymous,
    /// guest_memfd memslots without shared backing (`userspace_addr` 0).
    GmemOnly,
    /// Plain memslots over anonymous memory at [`Guest::uaddr`]; no guest_memfd.
    Anonymous,
    /// Plain memslots over a shared mapping (at [`Guest::uaddr`]) of an `MMAP | INIT_SHARED`
    /// guest_memfd, which is bound to no memslot: the guest reaches it through its hva only.
    GmemMapping,
}

impl Memory {
    fn has_gmem(self) -> bool {
        self != Memory::Anonymous
    }
}

/// Builds a [`Guest`]. The default: a SW_PROTECTED VM with one vCPU and one 8-page guest_memfd
/// memslot at gpa 0 whose shared accesses go to anonymous memory, attributes left shared.
#[derive(Debug)]
pub struct GuestBuilder {
    host: CheckedHost,
    vm_type: u64,
    gfn_direct_bits: Option<u64>,
    pages: u64,
    slot_gpas: Vec<u64>,
    memory: Memory,
    uaddr_align: u64,
    uaddr_skew: u64,
    private: bool,
    vcpus: u64,
}

impl GuestBuilder {
    /// A guest on a new machine booted with `profile`.
    pub fn new(profile: KernelProfile) -> GuestBuilder {
        GuestBuilder::on(CheckedHost::new(profile))
    }

    /// A guest on `host` (a kernel with a back-end or MMU of the test's own).
    pub fn on(host: CheckedHost) -> GuestBuilder {
        GuestBuilder {
            host,
            vm_type: SW_PROTECTED_VM,
            gfn_direct_bits: None,
            pages: 8,
            slot_gpas: vec![0],
            memory: Memory::GmemAndAnonymous,
            uaddr_align: PAGE,
            uaddr_skew: 0,
            private: false,
            vcpus: 1,
        }
    }

    /// The VM type (`KVM_CREATE_VM`'s argument).
    pub fn vm_type(mut self, vm_type: u64) -> GuestBuilder {
        self.vm_type = vm_type;
        self
    }

    /// `kvm->arch.gfn_direct_bits`, set right after `KVM_CREATE_VM` (`KVM_TDX_INIT_VM`'s part for
    /// the shared bit, on a back-end without a TDX module).
    pub fn gfn_direct_bits(mut self, bits: u64) -> GuestBuilder {
        self.gfn_direct_bits = Some(bits);
        self
    }

    /// Pages of each memslot.
    pub fn pages(mut self, pages: u64) -> GuestBuilder {
        self.pages = pages;
        self
    }

    /// Where the memslots start in guest physical memory, memslot `i` (id `i`) at `gpas[i]`.
    /// They share one guest_memfd (memslot `i` at file offset `i` memslot sizes) and one shared
    /// backing (memslot `i` at `uaddr` plus `i` memslot sizes).
    pub fn slots(mut self, gpas: &[u64]) -> GuestBuilder {
        assert!(!gpas.is_empty(), "a guest has at least one memslot");
        self.slot_gpas = gpas.to_vec();
        self
    }

    /// One memslot at `gpa`.
    pub fn gpa(self, gpa: u64) -> GuestBuilder {
        self.slots(&[gpa])
    }

    /// What backs the memslots.
    pub fn memory(mut self, memory: Memory) -> GuestBuilder {
        self.memory = memory;
        self
    }

    /// Puts the anonymous shared backing at a multiple of `align` plus `skew` (a 2M-aligned hva
    /// for huge mappings, or one skewed off its gfn's alignment). The mapping leaves room for it.
    pub fn uaddr_align(mut self, align: u64, skew: u64) -> GuestBuilder {
        self.uaddr_align = align;
        self.uaddr_skew = skew;
        self
    }

    /// Whether every memslot's range is made PRIVATE.
    pub fn private(mut self, private: bool) -> GuestBuilder {
        self.private = private;
        self
    }

    /// The number of vCPUs (ids 0 to `n - 1`).
    pub fn vcpus(mut self, n: u64) -> GuestBuilder {
        self.vcpus = n;
        self
    }

    /// Makes the calls.
    #[track_caller]
    pub fn build(self) -> Guest {
        let host = self.host;
        let slot_size = self.pages * PAGE;
        let size = slot_size * self.slot_gpas.len() as u64;
        let vm = host.create_vm(self.vm_type).expect("KVM_CREATE_VM");
        if let Some(bits) = self.gfn_direct_bits {
            host.kvm(vm).set_gfn_direct_bits(bits);
        }
        let gmem_flags = match self.memory {
            Memory::GmemMapping => GUEST_MEMFD_FLAG_MMAP | GUEST_MEMFD_FLAG_INIT_SHARED,
            _ => 0,
        };
        let gmem = self
            .memory
            .has_gmem()
            .then(|| host.create_guest_memfd(vm, size, gmem_flags).expect("KVM_CREATE_GUEST_MEMFD"));
        let uaddr = match self.memory {
            Memory::GmemOnly => None,
            Memory::GmemMapping => Some(
                host.mmap(gmem.expect("a guest_memfd"), size, 0, PROT_READ | PROT_WRITE, MAP_SHARED)
                    .expect("mmap of the guest_memfd"),
            ),
            Memory::GmemAndAnonymous | Memory::Anonymous => {
                let slack = if self.uaddr_align > PAGE { 2 * self.uaddr_align } else { 0 };
                let area = host.mmap_anonymous(size + slack).expect("mmap");
                Some(area.next_multiple_of(self.uaddr_align) + self.uaddr_skew)
            }
        };
        for (i, &gpa) in self.slot_gpas.iter().enumerate() {
            let offset = i as u64 * slot_size;
            let slot_uaddr = uaddr.map_or(0, |uaddr| uaddr + offset);
            let memslot = match (self.memory, gmem) {
                (Memory::GmemAndAnonymous | Memory::GmemOnly, Some(gmem)) => {
                    region(i as u32, KVM_MEM_GUEST_MEMFD, gpa, slot_size, slot_uaddr, gmem as u32, offset)
                }
                _ => region(i as u32, 0, gpa, slot_size, slot_uaddr, 0, 0),
            };
            host.set_user_memory_region2(vm, &memslot).expect("KVM_SET_USER_MEMORY_REGION2");
        }
        if self.private {
            for &gpa in &self.slot_gpas {
                host.set_memory_attributes(vm, &attrs(gpa, slot_size, KVM_MEMORY_ATTRIBUTE_PRIVATE))
                    .expect("KVM_SET_MEMORY_ATTRIBUTES");
            }
        }
        let vcpus = (0..self.vcpus).map(|id| host.create_vcpu(vm, id).expect("KVM_CREATE_VCPU")).collect();
        Guest { host, vm, vcpus, gmem, uaddr }
    }
}

/// The exit of a guest access of the wrong kind at `gpa` (`KVM_EXIT_MEMORY_FAULT` for one page,
/// `private` the kind the guest asked for): what the VMM converts the page on.
pub fn memory_fault(gpa: u64, private: bool) -> RunError {
    RunError::Exit(VcpuExit::MemoryFault {
        gpa,
        size: PAGE,
        flags: if private { KVM_MEMORY_EXIT_FLAG_PRIVATE } else { 0 },
        errno: Errno::EFAULT,
    })
}

/// A VM with its vCPUs and memslots on a [`CheckedHost`] (see [`GuestBuilder`]).
#[derive(Debug)]
pub struct Guest {
    /// The host (checked after every call made through it).
    pub host: CheckedHost,
    /// The VM descriptor.
    pub vm: i32,
    /// The vCPU descriptors, vCPU `i` with id `i`.
    pub vcpus: Vec<i32>,
    gmem: Option<i32>,
    uaddr: Option<u64>,
}

impl Guest {
    /// A builder on a new machine booted with `profile`.
    pub fn builder(profile: KernelProfile) -> GuestBuilder {
        GuestBuilder::new(profile)
    }

    /// The VM.
    pub fn kvm(&self) -> Arc<Kvm> {
        self.host.kvm(self.vm)
    }

    /// The guest_memfd descriptor.
    #[track_caller]
    pub fn gmem(&self) -> i32 {
        self.gmem.expect("the guest's memory has a guest_memfd")
    }

    /// Where the shared backing of the first memslot is mapped.
    #[track_caller]
    pub fn uaddr(&self) -> u64 {
        self.uaddr.expect("the guest's memory has a shared backing")
    }

    /// vCPU 0's descriptor.
    #[track_caller]
    pub fn vcpu(&self) -> i32 {
        self.vcpus[0]
    }

    /// vCPU `n` itself.
    pub fn kvm_vcpu(&self, n: usize) -> Arc<KvmVcpu> {
        self.host.unchecked().vcpu(self.vcpus[n]).expect("a vCPU descriptor").1
    }

    /// vCPU 0's fault counters: `(pf_taken, pf_fixed, pf_retry)`.
    pub fn faults(&self) -> (u64, u64, u64) {
        self.host.vcpu_faults(self.vcpu())
    }

    /// vCPU `n`'s TLB counters: `(tlb_hits, spte_walks, pf_taken, tlb_flushes)`.
    pub fn tlb_counts(&self, n: usize) -> (u64, u64, u64, u64) {
        let stat = self.kvm_vcpu(n).stat.values();
        (stat.tlb_hits, stat.spte_walks, stat.pf_taken, stat.tlb_flushes)
    }

    /// `f` on the VM's TDP MMU.
    pub fn with_tdp<T>(&self, f: impl FnOnce(&TdpMmu) -> T) -> T {
        f(self.kvm().tdp_mmu().expect("the VM has the TDP MMU"))
    }

    /// Whether the TDP MMU has an SPTE for `gfn`.
    pub fn spte_present(&self, gfn: u64) -> bool {
        self.host.spte_present(self.vm, gfn)
    }

    /// The frame of the SPTE for `gfn`, if there is one.
    pub fn spte_pfn(&self, gfn: u64) -> Option<Pfn> {
        self.with_tdp(|tdp| tdp.lookup(Gfn(gfn)).map(|spte| spte.pfn))
    }

    /// The leaf (of any level) that maps `gfn`, with the gfn it starts at.
    pub fn leaf(&self, gfn: u64) -> Option<(Gfn, Spte)> {
        self.with_tdp(|tdp| tdp.covering_leaf(Gfn(gfn)))
    }

    /// The level of the leaf that maps `gfn`.
    pub fn level(&self, gfn: u64) -> Option<PgLevel> {
        self.leaf(gfn).map(|(_, spte)| spte.level)
    }

    /// The remote TLB flushes the TDP MMU has asked for.
    pub fn remote_tlb_flushes(&self) -> u64 {
        self.with_tdp(|tdp| tdp.stats().remote_tlb_flushes)
    }

    /// `kvm->mmu_invalidate_seq`.
    pub fn invalidate_seq(&self) -> u64 {
        self.kvm().mmu_invalidate_seq()
    }

    /// Asserts the invalidations are closed: none in progress, no MMU notifier between start and
    /// end.
    #[track_caller]
    pub fn assert_balanced(&self) {
        let kvm = self.kvm();
        assert_eq!(kvm.mmu_invalidate_in_progress(), 0);
        assert_eq!(kvm.mn_active_invalidate_count(), 0);
    }
}
