//! The abstract operation sequences the differential fuzzer generates, and their proptest
//! strategies.
//!
//! An [`AbstractOp`] names what it acts on by *kind and recency* ([`Fd::Vm`]`(0)` is the VM
//! created most recently, `Vm(1)` the one before, ...), not by script name, so every
//! generated or shrunk sequence is meaningful: the renderer ([`super::render`]) resolves the
//! references against what the sequence has created so far, substituting a raw number or
//! dropping the operation when there is nothing to refer to. Most references ask for a handle
//! that is still open and whose creation looked valid, so that most operations reach
//! guest_memfd's own checks; dedicated variants ([`Fd::Dead`], [`GmemArg::Dead`],
//! [`MapRef::Any`]) ask for closed, failed or unmapped ones.
//!
//! The values are the boundaries the kernel checks (sizes 0, 1, 4095, 4096, 4097, 2M, huge and
//! negative patterns; every flag and mode bit; offsets near `1 << 52` and `LLONG_MAX`), listed
//! with the common valid value first so that shrinking moves towards it. Everything the real
//! kernel could *accept* is kept small (see the module constants): memslots cost kernel memory
//! per page when created, and fallocate and stores allocate real memory.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::Union;

/// The page size.
pub const PAGE: u64 = 4096;
const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// `LLONG_MAX` rounded down to a page: the largest page-aligned `loff_t`.
const LLONG_MAX_PAGE: u64 = (i64::MAX as u64) & !(PAGE - 1);
/// `-4096` as a 64-bit pattern.
const NEG_PAGE: u64 = PAGE.wrapping_neg();
/// The 52-bit guest-physical limit of this machine's kernel (shadow paging: `kvm_mmu_max_gfn`).
const GPA_LIMIT_52: u64 = 1 << 52;

/// The largest memslot size generated that the kernel could accept (a memslot costs about
/// 10 bytes of kernel memory per 4 KiB page on this machine's kernel when created). Larger
/// sizes are only generated in forms the kernel rejects before allocating anything
/// (unaligned, or more than `KVM_MEM_MAX_NR_PAGES` pages).
pub const MEMSLOT_SIZE_MAX: u64 = GIB;
/// The largest length an allocating fallocate is given ([`super::render`] clamps to it).
pub const FALLOCATE_ALLOC_MAX: u64 = 64 * MIB;
/// `MAP_SHARED`.
pub const MAP_SHARED: u64 = 0x1;
/// `MAP_PRIVATE`.
pub const MAP_PRIVATE: u64 = 0x2;
/// `MAP_SHARED_VALIDATE`.
pub const MAP_SHARED_VALIDATE: u64 = 0x3;
/// `MAP_ANONYMOUS`.
pub const MAP_ANONYMOUS: u64 = 0x20;
/// `MAP_32BIT`.
const MAP_32BIT: u64 = 0x40;
/// `MAP_GROWSDOWN`.
const MAP_GROWSDOWN: u64 = 0x100;
/// `MAP_LOCKED`.
pub const MAP_LOCKED: u64 = 0x2000;
/// `MAP_NORESERVE`.
const MAP_NORESERVE: u64 = 0x4000;
/// `MAP_POPULATE`.
pub const MAP_POPULATE: u64 = 0x8000;
/// `MAP_NONBLOCK`.
const MAP_NONBLOCK: u64 = 0x10000;
/// `MAP_STACK`.
const MAP_STACK: u64 = 0x20000;
/// `MAP_SYNC`.
const MAP_SYNC: u64 = 0x80000;
/// `MADV_DONTNEED`.
const MADV_DONTNEED: u64 = 4;
/// `MADV_REMOVE`.
const MADV_REMOVE: u64 = 9;

/// The largest mmap length generated.
pub const MMAP_LEN_MAX: u64 = 64 * MIB;
/// The longest host load or store generated.
pub const ACCESS_LEN_MAX: u16 = 4096;

/// A descriptor argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fd {
    /// The `n`-th most recently created VM (0 = the latest), modulo their number: among the
    /// open ones whose creation looked valid if there are any.
    Vm(u8),
    /// The `n`-th most recently created guest_memfd, in the same way.
    Gmem(u8),
    /// The `n`-th most recent open, valid-looking guest_memfd created with `MMAP` (else as
    /// [`Fd::Gmem`]).
    Mappable(u8),
    /// The `n`-th most recently created vCPU (among the open, valid-looking ones if any).
    Vcpu(u8),
    /// The `n`-th most recent VM or guest_memfd that was closed or whose creation failed.
    Dead(u8),
    /// Standard input, output or error (`n` is 0, 1 or 2): open, but not KVM's.
    Std(u8),
    /// `-1`.
    Invalid,
    /// A descriptor number no process has open.
    Unopened,
}

/// The `guest_memfd=` of a memslot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GmemArg {
    /// The `n`-th most recent guest_memfd created on the memslot's own VM.
    Own(u8),
    /// The `n`-th most recent guest_memfd of any VM (so possibly a foreign one).
    Any(u8),
    /// The `n`-th most recent guest_memfd that was closed or whose creation failed.
    Dead(u8),
    /// A VM descriptor (not a guest_memfd).
    Vm(u8),
    /// Standard input, output or error.
    Std(u8),
    /// A raw number.
    Raw(u64),
}

/// The `uaddr=` of a memslot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uaddr {
    /// Fresh anonymous memory of the slot's size (`uaddr=auto`; for a size no mapping can hold
    /// the runner passes 0 and the ioctl answers).
    Auto,
    /// The address of the `n`-th most recent mapping.
    Map(u8),
    /// A raw address.
    Raw(u64),
}

/// Where in a mapping a load, store or madvise goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Inside the page-rounded mapping: this value modulo its length (the access is cut so
    /// that it ends inside).
    Inside(u32),
    /// Starting `1 + n % 64` bytes before the end of the page-rounded mapping, crossing it.
    Crossing(u8),
    /// A raw offset from the mapping's address.
    Raw(u64),
}

/// The size of a memslot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotSize {
    /// From the memslot's `guest_memfd_offset` to the end of its guest_memfd (at most 2 MiB;
    /// 4 KiB when that is not a positive page multiple).
    Fit,
    /// A raw size.
    Raw(u64),
}

/// A mapping argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapRef {
    /// The `n`-th most recent mapping still mapped whose `mmap` looked valid (the operation is
    /// dropped if there is none).
    Good(u8),
    /// The `n`-th most recent mapping, whatever became of it (failed, unmapped).
    Any(u8),
}

/// The length of a madvise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdviseLen {
    /// From the offset to the end of the page-rounded mapping.
    ToEnd,
    /// A raw length.
    Raw(u64),
}

/// One host-side operation, before names are resolved.
#[allow(missing_docs, reason = "fields are the script's keys, documented by the spec")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbstractOp {
    /// `create_vm`.
    CreateVm { vm_type: u64 },
    /// `check_extension` on `/dev/kvm` (`vm` is `None`) or on a descriptor.
    CheckExtension { vm: Option<Fd>, cap: u64 },
    /// `create_guest_memfd`.
    CreateGuestMemfd { vm: Fd, size: u64, flags: u64 },
    /// `set_user_memory_region2`.
    SetUserMemoryRegion2 {
        vm: Fd,
        slot: u32,
        flags: u32,
        gpa: u64,
        size: SlotSize,
        uaddr: Uaddr,
        guest_memfd: GmemArg,
        guest_memfd_offset: u64,
    },
    /// `set_memory_attributes`.
    SetMemoryAttributes { vm: Fd, address: u64, size: u64, attributes: u64, flags: u64 },
    /// `fallocate`.
    Fallocate { fd: Fd, mode: u64, offset: u64, len: u64 },
    /// `fstat`.
    Fstat { fd: Fd },
    /// `ftruncate`.
    Ftruncate { fd: Fd, size: u64 },
    /// `read`.
    Read { fd: Fd, len: u64 },
    /// `write`.
    Write { fd: Fd, len: u64 },
    /// `pread`.
    Pread { fd: Fd, len: u64, offset: u64 },
    /// `pwrite`.
    Pwrite { fd: Fd, len: u64, offset: u64 },
    /// `lseek`.
    Lseek { fd: Fd, offset: u64, whence: u64 },
    /// `mmap`.
    Mmap { fd: Fd, len: u64, offset: u64, prot: u64, flags: u64 },
    /// `munmap`.
    Munmap { map: MapRef },
    /// `store` of `len` bytes `byte, byte+1, ...`.
    Store { map: MapRef, at: Place, len: u16, byte: u8 },
    /// `load` of `len` bytes.
    Load { map: MapRef, at: Place, len: u16 },
    /// `madvise`.
    Madvise { map: MapRef, at: Place, len: AdviseLen, advice: u64 },
    /// `mlock`, or `munlock` when `unlock`.
    Mlock { map: MapRef, at: Place, len: AdviseLen, unlock: bool },
    /// `create_vcpu` (`KVM_CREATE_VCPU`).
    CreateVcpu { vm: Fd, id: u64 },
    /// `pre_fault_memory` (`KVM_PRE_FAULT_MEMORY`) on a vCPU (or on what `vcpu` names).
    PreFaultMemory { vcpu: Fd, gpa: u64, size: u64 },
    /// `close` of a VM, guest_memfd or vCPU.
    Close { fd: Fd },
}

/// A generated sequence: each slot holds an operation, or `None` when shrinking switched it
/// off.
pub type Sequence = Vec<Option<AbstractOp>>;

/// A generated case: a setup (a VM of the default type, one or two guest_memfds on it, often a
/// vCPU or two, and usually one or two mappings of the latest mappable one, so that the body
/// has something to act on) and a body of random operations.
///
/// vCPUs are created only in the setup, before anything is closed: a vCPU created later takes
/// the lowest free descriptor, often a closed guest_memfd's, and the body's stale references
/// to that name would then reach a vCPU, whose `mmap` (the `kvm_run` page) is not modelled.
pub type Case = (Option<AbstractOp>, Sequence, Sequence, Sequence, Sequence);

/// The strategy for one case: the setup and a body of `ops_max / 2 ..= ops_max` random
/// operations; the renderer keeps at most `ops_max` operations in all.
pub fn sequence(ops_max: usize) -> impl Strategy<Value = Case> {
    let ops_max = ops_max.max(1);
    let body_min = (ops_max / 2).max(1);
    let vm = slot(Just(AbstractOp::CreateVm { vm_type: 0 }).boxed(), 0.98);
    let gmems = vec(slot(setup_gmem(), 0.98), 1..=2);
    let vcpus = vec(slot(create_vcpu(), 0.5), 1..=2);
    let maps = vec(slot(setup_mmap(), 0.7), 1..=2);
    (vm, gmems, vcpus, maps, vec(slot(op(), 0.98), body_min..=ops_max))
}

/// An operation present with probability `p`, that shrinking can switch off (`None`).
fn slot(op: BoxedStrategy<AbstractOp>, p: f64) -> impl Strategy<Value = Option<AbstractOp>> {
    (proptest::bool::weighted(p), op).prop_map(|(on, op)| on.then_some(op))
}

/// One of `groups`' values: each group has a weight shared among its values. Shrinking is a
/// binary search on the position, towards the first value of the first group, so every list
/// starts with the common valid values and goes on to the boundaries.
fn weighted<T: Clone + std::fmt::Debug + 'static>(groups: &[(usize, &[T])]) -> BoxedStrategy<T> {
    /// Copies per unit of weight, divisible by the sizes of most groups.
    const SHARE: usize = 120;
    let mut values = Vec::new();
    for (weight, group) in groups {
        let copies = (weight * SHARE / group.len().max(1)).max(1);
        for value in group.iter() {
            values.extend(std::iter::repeat_n(value.clone(), copies));
        }
    }
    select(values).boxed()
}

/// `values`, equally likely, shrinking towards the first.
fn pick(values: &'static [u64]) -> BoxedStrategy<u64> {
    select(values).boxed()
}

/// A guest_memfd of the setup: a valid size and flags (mostly `MMAP|INIT_SHARED`), on one of
/// the first VMs.
fn setup_gmem() -> BoxedStrategy<AbstractOp> {
    let vm = weighted(&[(1, &[Fd::Vm(0), Fd::Vm(1)])]);
    let flags = weighted(&[(3, &[3]), (3, &[0, 1, 2])]);
    (vm, pick(&[4 * KIB, 8 * KIB, 16 * KIB, 2 * MIB]), flags)
        .prop_map(|(vm, size, flags)| AbstractOp::CreateGuestMemfd { vm, size, flags })
        .boxed()
}

/// The mapping of the setup: a shared read-write mapping of a guest_memfd created with `MMAP`.
fn setup_mmap() -> BoxedStrategy<AbstractOp> {
    pick(&[16 * KIB, 4 * KIB, 8 * KIB, 2 * MIB])
        .prop_map(|len| AbstractOp::Mmap { fd: Fd::Mappable(0), len, offset: 0, prot: 3, flags: 1 })
        .boxed()
}

/// Any host-side operation.
pub fn op() -> BoxedStrategy<AbstractOp> {
    Union::new_weighted(vec![
        (5, create_vm()),
        (10, create_guest_memfd()),
        (14, set_user_memory_region2()),
        (12, fallocate()),
        (8, mmap()),
        (2, mmap_populating()),
        (2, mmap_anonymous()),
        (8, store()),
        (8, load()),
        (6, madvise()),
        (3, mlock()),
        (4, munmap()),
        (5, close()),
        (3, check_extension()),
        (6, file_op()),
        (1, set_memory_attributes()),
        (3, pre_fault_memory()),
    ])
    .boxed()
}

/// A VM argument: mostly a VM, sometimes something that is not one.
fn vm_fd() -> BoxedStrategy<Fd> {
    use Fd::*;
    weighted(&[
        (10, &[Vm(0), Vm(1)]),
        (2, &[Vm(2), Vm(3), Vm(4), Vm(5)]),
        (1, &[Dead(0), Dead(1)]),
        (1, &[Gmem(0), Gmem(1)]),
        (1, &[Std(0), Std(1), Std(2)]),
        (1, &[Invalid]),
    ])
}

/// `create_vcpu` (of the setup): mostly on a VM with a small id; the id limits of this
/// machine's kernel (`KVM_MAX_VCPU_IDS` 4096) and of a `MAXSMP` build (16384), and other
/// descriptors.
fn create_vcpu() -> BoxedStrategy<AbstractOp> {
    use Fd::*;
    let vm = weighted(&[(10, &[Vm(0), Vm(1)]), (1, &[Dead(0), Gmem(0), Vcpu(0), Invalid])]);
    let id = weighted(&[(6, &[0, 1, 2]), (2, &[4095, 4096, 16383, 16384]), (1, &[u64::MAX, 1 << 32])]);
    (vm, id).prop_map(|(vm, id)| AbstractOp::CreateVcpu { vm, id }).boxed()
}

/// `pre_fault_memory`: mostly on a vCPU over a small aligned range; unaligned, empty and
/// wrapping ranges, and descriptors that are not vCPUs.
fn pre_fault_memory() -> BoxedStrategy<AbstractOp> {
    use Fd::*;
    let vcpu = weighted(&[(10, &[Vcpu(0), Vcpu(1)]), (1, &[Vm(0), Gmem(0), Dead(0), Invalid])]);
    let gpa = weighted(&[(6, &[0, 2 * MIB, 4 * KIB]), (2, &[1, GPA_LIMIT_52, NEG_PAGE])]);
    let size = weighted(&[(6, &[4 * KIB, 2 * MIB]), (2, &[0, 1, 4097, NEG_PAGE])]);
    (vcpu, gpa, size).prop_map(|(vcpu, gpa, size)| AbstractOp::PreFaultMemory { vcpu, gpa, size }).boxed()
}

/// A file argument for calls that are safe on the standard streams (`fallocate`).
fn file_fd_or_std() -> BoxedStrategy<Fd> {
    use Fd::*;
    weighted(&[
        (10, &[Gmem(0), Gmem(1)]),
        (2, &[Gmem(2), Gmem(3), Gmem(4), Gmem(5)]),
        (1, &[Vm(0), Vm(1)]),
        (1, &[Dead(0), Dead(1)]),
        (1, &[Std(0), Std(1), Std(2)]),
        (1, &[Invalid, Unopened]),
    ])
}

/// A file argument for `read`, `write`, `lseek`, `fstat`, ... (never the standard streams,
/// which differ between hosts).
fn file_fd() -> BoxedStrategy<Fd> {
    use Fd::*;
    weighted(&[
        (10, &[Gmem(0), Gmem(1)]),
        (2, &[Gmem(2), Gmem(3), Gmem(4), Gmem(5)]),
        (2, &[Vm(0), Vm(1)]),
        (1, &[Dead(0), Dead(1)]),
        (1, &[Invalid, Unopened]),
    ])
}

/// The descriptor of an `mmap`: mostly a guest_memfd created with `MMAP`.
fn mmap_fd() -> BoxedStrategy<Fd> {
    use Fd::*;
    weighted(&[
        (8, &[Mappable(0), Mappable(1)]),
        (4, &[Gmem(0), Gmem(1), Gmem(2)]),
        (1, &[Vm(0)]),
        (1, &[Dead(0), Dead(1)]),
        (1, &[Invalid, Unopened]),
    ])
}

/// A mapping argument: mostly a live one.
fn map_ref() -> BoxedStrategy<MapRef> {
    use MapRef::*;
    weighted(&[(10, &[Good(0), Good(1)]), (2, &[Good(2), Good(3)]), (1, &[Any(0), Any(1), Any(2), Any(3)])])
}

fn create_vm() -> BoxedStrategy<AbstractOp> {
    weighted(&[(12, &[0]), (2, &[1, 2, 3, 4, 5, 6, 7]), (1, &[8, 0xff, 1 << 31, 1 << 32, u64::MAX])])
        .prop_map(|vm_type| AbstractOp::CreateVm { vm_type })
        .boxed()
}

fn gmem_size() -> BoxedStrategy<u64> {
    weighted(&[
        (14, &[4 * KIB, 8 * KIB, 16 * KIB, 2 * MIB, 12 * KIB, 4 * MIB]),
        (3, &[0, 1, 4095, 4097, 2 * MIB + 1, 8191]),
        (2, &[64 * MIB, 1 << 40, 1 << 62, (1 << 63) - PAGE]),
        (2, &[NEG_PAGE, 1 << 63, u64::MAX, (1 << 63) + PAGE]),
    ])
}

fn gmem_flags() -> BoxedStrategy<u64> {
    weighted(&[(12, &[0, 1, 2, 3]), (2, &[4, 8, 5, 7, 0xf, 6, 1 << 31, 1 << 32, 1 << 63, u64::MAX])])
}

fn create_guest_memfd() -> BoxedStrategy<AbstractOp> {
    (vm_fd(), gmem_size(), gmem_flags())
        .prop_map(|(vm, size, flags)| AbstractOp::CreateGuestMemfd { vm, size, flags })
        .boxed()
}

fn memslot_id() -> BoxedStrategy<u32> {
    weighted(&[
        (10, &[0, 1, 2, 3]),
        (2, &[10, 32763, 32764, 32765, 32767, 0xffff, 1 << 16, (1 << 16) | 1, 2 << 16, 509, 512]),
        (1, &[u32::MAX, 0x7fff_ffff, 0x8000_0000]),
    ])
}

fn memslot_flags() -> BoxedStrategy<u32> {
    weighted(&[(8, &[4]), (4, &[0]), (2, &[1, 2, 3, 5, 6, 7]), (1, &[8, 0x10, 0xc, 1 << 31, u32::MAX])])
}

fn gpa() -> BoxedStrategy<u64> {
    weighted(&[
        (8, &SMALL_OFFSETS),
        (3, &[2 * MIB, 4 * MIB, GIB, 0xc000_0000, 4 * GIB]),
        (
            2,
            &[GPA_LIMIT_52 - PAGE, GPA_LIMIT_52, GPA_LIMIT_52 - 2 * MIB, GPA_LIMIT_52 - GIB, (1 << 51) - PAGE, 1 << 40],
        ),
        (1, &[1, 4095, 4097, NEG_PAGE, 1 << 63, u64::MAX - 4 * PAGE + 1]),
    ])
}

/// Memslot sizes: accepted ones at most [`MEMSLOT_SIZE_MAX`]; the huge ones are rejected by
/// the kernel before it allocates (unaligned, or more than `KVM_MEM_MAX_NR_PAGES` pages).
fn memslot_size() -> BoxedStrategy<SlotSize> {
    use SlotSize::*;
    weighted(&[
        (6, &[Fit]),
        (8, &[Raw(4 * KIB), Raw(8 * KIB), Raw(16 * KIB), Raw(2 * MIB), Raw(12 * KIB), Raw(MIB), Raw(4 * MIB)]),
        (3, &[Raw(0)]),
        (1, &[Raw(64 * MIB), Raw(MEMSLOT_SIZE_MAX)]),
        (
            2,
            &[
                Raw(1),
                Raw(4095),
                Raw(4097),
                Raw(NEG_PAGE),
                Raw(1 << 43),
                Raw(1 << 52),
                Raw(u64::MAX),
                Raw((1 << 40) + 1),
                Raw(1 << 63),
            ],
        ),
    ])
}

fn uaddr() -> BoxedStrategy<Uaddr> {
    use Uaddr::*;
    weighted(&[
        (6, &[Auto]),
        (3, &[Raw(0)]),
        (2, &[Map(0), Map(1), Map(2)]),
        (
            2,
            &[
                Raw(0x1000),
                Raw(0x1001),
                Raw(0xffff_8000_0000_0000),
                Raw(0x7fff_ffff_f000),
                Raw(1 << 47),
                Raw(NEG_PAGE),
                Raw(0x7fff_0000_0000),
            ],
        ),
    ])
}

fn guest_memfd_arg() -> BoxedStrategy<GmemArg> {
    use GmemArg::*;
    weighted(&[
        (8, &[Own(0), Own(1)]),
        (2, &[Own(2), Own(3)]),
        (3, &[Any(0), Any(1), Any(2), Any(3)]),
        (1, &[Dead(0), Dead(1)]),
        (1, &[Vm(0), Vm(1)]),
        (1, &[Std(0), Std(1), Std(2)]),
        (1, &[Raw(u64::MAX), Raw(1_000_000), Raw(0x8000_0000), Raw(0xffff_ffff_0000_0000)]),
    ])
}

fn guest_memfd_offset() -> BoxedStrategy<u64> {
    weighted(&[
        (8, &[0]),
        (4, &[PAGE, 2 * PAGE, 3 * PAGE, 4 * PAGE, 5 * PAGE, 6 * PAGE, 7 * PAGE]),
        (2, &[MIB, 2 * MIB, 4 * MIB]),
        (2, &[1, 4095, NEG_PAGE, 1 << 63, 1 << 40, (1 << 62) - PAGE, u64::MAX]),
    ])
}

fn set_user_memory_region2() -> BoxedStrategy<AbstractOp> {
    (vm_fd(), memslot_id(), memslot_flags(), gpa(), memslot_size(), uaddr(), guest_memfd_arg(), guest_memfd_offset())
        .prop_map(|(vm, slot, flags, gpa, size, uaddr, guest_memfd, guest_memfd_offset)| {
            AbstractOp::SetUserMemoryRegion2 { vm, slot, flags, gpa, size, uaddr, guest_memfd, guest_memfd_offset }
        })
        .boxed()
}

fn set_memory_attributes() -> BoxedStrategy<AbstractOp> {
    (vm_fd(), pick(&[0, PAGE, 1, 2 * MIB]), pick(&[PAGE, 0, 2 * MIB, 1]), pick(&[8, 0, 1, 16]), pick(&[0, 1]))
        .prop_map(|(vm, address, size, attributes, flags)| AbstractOp::SetMemoryAttributes {
            vm,
            address,
            size,
            attributes,
            flags,
        })
        .boxed()
}

fn fallocate_mode() -> BoxedStrategy<u64> {
    weighted(&[
        (6, &[1]),
        (6, &[3]),
        (2, &[0, 2]),
        (3, &[8, 0x10, 0x20, 0x40, 0x80, 0x9, 0x11, 0x21, 0x41, 0x81, 0x13, 0x83]),
        (1, &[0x4, 0x5, 0x100, 0x101, 0x103, 0x8000_0000, 0xff, 0xffff_ffff]),
    ])
}

/// Page multiples below 64 KiB: in, at the end of and past the end of small guest_memfds.
const SMALL_OFFSETS: [u64; 16] = {
    let mut offsets = [0; 16];
    let mut i = 0;
    while i < 16 {
        offsets[i] = i as u64 * PAGE;
        i += 1;
    }
    offsets
};

fn fallocate_offset() -> BoxedStrategy<u64> {
    weighted(&[
        (8, &SMALL_OFFSETS),
        (2, &[2 * MIB, 4 * MIB, 2 * MIB - PAGE]),
        (2, &[1, 4095, 4097, NEG_PAGE, u64::MAX, LLONG_MAX_PAGE, 1 << 62, 1 << 40, i64::MAX as u64, 1 << 63]),
    ])
}

fn fallocate_len() -> BoxedStrategy<u64> {
    weighted(&[
        (8, &[PAGE, 2 * PAGE, 3 * PAGE, 4 * PAGE]),
        (2, &[2 * MIB, 16 * KIB, FALLOCATE_ALLOC_MAX]),
        (2, &[0, NEG_PAGE, 1, 4095, 4097, LLONG_MAX_PAGE, 1 << 62, u64::MAX, 1 << 63, i64::MAX as u64]),
    ])
}

fn fallocate() -> BoxedStrategy<AbstractOp> {
    (file_fd_or_std(), fallocate_mode(), fallocate_offset(), fallocate_len())
        .prop_map(|(fd, mode, offset, len)| AbstractOp::Fallocate { fd, mode, offset, len })
        .boxed()
}

fn file_op() -> BoxedStrategy<AbstractOp> {
    let len = || pick(&[64, 0, 1, PAGE, 64 * KIB]);
    let offset = || pick(&[0, 1, PAGE, u64::MAX, 1 << 62, NEG_PAGE]);
    prop_oneof![
        4 => file_fd().prop_map(|fd| AbstractOp::Fstat { fd }),
        1 => (file_fd(), pick(&[0, PAGE, 8 * KIB, u64::MAX, 1 << 40, 1]))
            .prop_map(|(fd, size)| AbstractOp::Ftruncate { fd, size }),
        1 => (file_fd(), len()).prop_map(|(fd, len)| AbstractOp::Read { fd, len }),
        1 => (file_fd(), len()).prop_map(|(fd, len)| AbstractOp::Write { fd, len }),
        1 => (file_fd(), len(), offset()).prop_map(|(fd, len, offset)| AbstractOp::Pread { fd, len, offset }),
        1 => (file_fd(), len(), offset()).prop_map(|(fd, len, offset)| AbstractOp::Pwrite { fd, len, offset }),
        1 => (file_fd(), offset(), pick(&[0, 1, 2, 3, 4, 5, 99]))
            .prop_map(|(fd, offset, whence)| AbstractOp::Lseek { fd, offset, whence }),
    ]
    .boxed()
}

fn check_extension() -> BoxedStrategy<AbstractOp> {
    use Fd::*;
    let vm = weighted(&[
        (2, &[None]),
        (3, &[Some(Vm(0)), Some(Vm(1))]),
        (1, &[Some(Gmem(0)), Some(Dead(0)), Some(Invalid)]),
    ]);
    (vm, pick(&[244, 234, 231, 232, 233, 235, 236, 10, 3, 105, 118, 201]))
        .prop_map(|(vm, cap)| AbstractOp::CheckExtension { vm, cap })
        .boxed()
}

fn mmap() -> BoxedStrategy<AbstractOp> {
    let len = weighted(&[
        (8, &[4 * KIB, 8 * KIB, 16 * KIB, 2 * MIB, 12 * KIB]),
        (2, &[0, 1, 4095, 4097, 32 * KIB, MMAP_LEN_MAX]),
    ]);
    let offset = weighted(&[
        (8, &[0]),
        (2, &[PAGE, 8 * KIB, 2 * MIB, 16 * KIB]),
        (1, &[1, 4095, NEG_PAGE, 1 << 40, 1 << 62, u64::MAX]),
    ]);
    let prot = weighted(&[(10, &[3]), (2, &[1]), (2, &[0, 2, 4, 5, 6, 7, 8, 0x10])]);
    let flags = weighted(&[
        (10, &[MAP_SHARED]),
        (2, &[MAP_PRIVATE]),
        (2, &[MAP_SHARED_VALIDATE]),
        (
            2,
            &[
                MAP_SHARED | MAP_SYNC,
                MAP_SHARED_VALIDATE | MAP_SYNC,
                MAP_SHARED_VALIDATE | MAP_32BIT,
                MAP_SHARED | MAP_GROWSDOWN,
                MAP_PRIVATE | MAP_LOCKED,
                MAP_SHARED | MAP_STACK | MAP_NORESERVE,
                0,
                0xf,
            ],
        ),
    ]);
    (mmap_fd(), len, offset, prot, flags)
        .prop_map(|(fd, len, offset, prot, flags)| AbstractOp::Mmap { fd, len, offset, prot, flags })
        .boxed()
}

/// An `mmap` that faults its pages in at once (`MAP_LOCKED`, `MAP_POPULATE`), of a small length:
/// the real kernel commits the memory.
fn mmap_populating() -> BoxedStrategy<AbstractOp> {
    let len = weighted(&[(8, &[16 * KIB, 4 * KIB, 8 * KIB, 2 * MIB]), (1, &[1, 32 * KIB, 4 * MIB])]);
    let prot = weighted(&[(10, &[3]), (2, &[1, 0, 2])]);
    let flags = weighted(&[
        (4, &[MAP_SHARED | MAP_LOCKED, MAP_SHARED | MAP_POPULATE]),
        (
            2,
            &[
                MAP_SHARED_VALIDATE | MAP_LOCKED | MAP_POPULATE,
                MAP_SHARED | MAP_LOCKED | MAP_POPULATE,
                MAP_SHARED | MAP_POPULATE | MAP_NONBLOCK,
                MAP_SHARED_VALIDATE | MAP_POPULATE,
            ],
        ),
    ]);
    (mmap_fd(), len, prot, flags)
        .prop_map(|(fd, len, prot, flags)| AbstractOp::Mmap { fd, len, offset: 0, prot, flags })
        .boxed()
}

/// An anonymous `mmap` (the descriptor is ignored): shared (a shmem object) or private, with
/// every protection, sometimes locked or populated, sometimes with a type anonymous memory
/// refuses.
fn mmap_anonymous() -> BoxedStrategy<AbstractOp> {
    let len = weighted(&[(8, &[16 * KIB, 4 * KIB, 8 * KIB, 2 * MIB]), (1, &[0, 1, 4 * MIB])]);
    let offset = weighted(&[(8, &[0]), (1, &[PAGE, 1, NEG_PAGE])]);
    let prot = weighted(&[(10, &[3]), (3, &[1, 0, 2, 7])]);
    let flags = weighted(&[
        (8, &[MAP_SHARED | MAP_ANONYMOUS, MAP_PRIVATE | MAP_ANONYMOUS]),
        (
            2,
            &[
                MAP_SHARED | MAP_ANONYMOUS | MAP_LOCKED,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE,
                MAP_SHARED | MAP_ANONYMOUS | MAP_POPULATE,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_LOCKED,
            ],
        ),
        (
            1,
            &[
                MAP_SHARED_VALIDATE | MAP_ANONYMOUS,
                MAP_ANONYMOUS,
                MAP_SHARED | MAP_ANONYMOUS | MAP_GROWSDOWN,
                MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN,
            ],
        ),
    ]);
    (len, offset, prot, flags)
        .prop_map(|(len, offset, prot, flags)| AbstractOp::Mmap { fd: Fd::Invalid, len, offset, prot, flags })
        .boxed()
}

fn place() -> BoxedStrategy<Place> {
    prop_oneof![
        24 => any::<u32>().prop_map(Place::Inside),
        1 => any::<u8>().prop_map(Place::Crossing),
        1 => pick(&[0, PAGE, 1]).prop_map(Place::Raw),
    ]
    .boxed()
}

fn access_len() -> BoxedStrategy<u16> {
    prop_oneof![6 => 1u16..=16, 1 => 1u16..=ACCESS_LEN_MAX].boxed()
}

fn store() -> BoxedStrategy<AbstractOp> {
    (map_ref(), place(), access_len(), any::<u8>())
        .prop_map(|(map, at, len, byte)| AbstractOp::Store { map, at, len, byte })
        .boxed()
}

fn load() -> BoxedStrategy<AbstractOp> {
    (map_ref(), place(), access_len()).prop_map(|(map, at, len)| AbstractOp::Load { map, at, len }).boxed()
}

fn madvise() -> BoxedStrategy<AbstractOp> {
    let at = prop_oneof![10 => any::<u32>().prop_map(Place::Inside), 1 => pick(&[1, 0]).prop_map(Place::Raw)];
    let len = weighted(&[
        (4, &[AdviseLen::Raw(PAGE)]),
        (3, &[AdviseLen::ToEnd]),
        (1, &[AdviseLen::Raw(0), AdviseLen::Raw(1), AdviseLen::Raw(8 * KIB), AdviseLen::Raw(2 * MIB)]),
    ]);
    let advice = weighted(&[
        (6, &[MADV_DONTNEED, MADV_REMOVE]),
        (8, &[0, 1, 2, 3, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 102, 103]),
        (1, &[100, 101, 5, 7, 26, 104, u64::from(u32::MAX)]),
    ]);
    (map_ref(), at, len, advice).prop_map(|(map, at, len, advice)| AbstractOp::Madvise { map, at, len, advice }).boxed()
}

fn mlock() -> BoxedStrategy<AbstractOp> {
    let at = prop_oneof![10 => any::<u32>().prop_map(Place::Inside), 1 => pick(&[1, 0]).prop_map(Place::Raw)];
    let len = weighted(&[
        (4, &[AdviseLen::Raw(PAGE)]),
        (3, &[AdviseLen::ToEnd]),
        (
            1,
            &[
                AdviseLen::Raw(0),
                AdviseLen::Raw(1),
                AdviseLen::Raw(8 * KIB),
                AdviseLen::Raw(2 * MIB),
                AdviseLen::Raw(u64::MAX),
            ],
        ),
    ]);
    (map_ref(), at, len, proptest::bool::weighted(0.4))
        .prop_map(|(map, at, len, unlock)| AbstractOp::Mlock { map, at, len, unlock })
        .boxed()
}

fn munmap() -> BoxedStrategy<AbstractOp> {
    map_ref().prop_map(|map| AbstractOp::Munmap { map }).boxed()
}

fn close() -> BoxedStrategy<AbstractOp> {
    use Fd::*;
    weighted(&[
        (5, &[Gmem(0), Gmem(1), Gmem(2)]),
        (1, &[Vm(0), Vm(1), Vm(2)]),
        (1, &[Dead(0), Dead(1)]),
        (1, &[Vcpu(0)]),
    ])
    .prop_map(|fd| AbstractOp::Close { fd })
    .boxed()
}
