//! Renders an abstract sequence ([`super::gen`]) as `.gms` script text.
//!
//! The renderer gives every handle a fresh name (`vm0`, `g1`, `m2`) and resolves the
//! abstract references ("the VM created most recently") against what the sequence has created
//! so far. A reference to something that does not exist yet becomes a raw number (`-1`), or
//! the operation is dropped where a raw number would make no sense (`store` without a mapping,
//! `close` with nothing to close). It also applies the safety limits the real kernel needs
//! (allocating fallocate lengths, memslot sizes), so the text is exactly what runs on both
//! backends.

use crate::script::value;
use std::fmt::Write as _;

use super::gen::{
    AbstractOp, AdviseLen, Fd, GmemArg, MapRef, Place, SlotSize, Uaddr, FALLOCATE_ALLOC_MAX, MEMSLOT_SIZE_MAX, PAGE,
};

/// Whether a load, store, madvise or munmap may name a mapping after its `munmap`. The script
/// contract keeps the range from being handed out again while the script runs, on both
/// backends, so the kernel's answer is that of a hole (SIGSEGV, ENOMEM, a munmap of nothing).
const STALE_NAMES: bool = true;

/// `KVM_MEM_MAX_NR_PAGES`: memslots with more pages are rejected before anything is allocated.
const KVM_MEM_MAX_NR_PAGES: u64 = (1 << 31) - 1;

/// A rendered script: one operation per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// The script lines, without line terminators; line `i + 1` of the script is `lines[i]`.
    pub lines: Vec<String>,
}

impl Rendered {
    /// The whole script text.
    pub fn text(&self) -> String {
        let mut text = String::with_capacity(self.lines.iter().map(|l| l.len() + 1).sum());
        for line in &self.lines {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// A VM or guest_memfd the sequence created.
#[derive(Debug)]
struct Handle {
    name: String,
    /// Not closed yet.
    open: bool,
    /// Its creation looked valid to the renderer (a guess that steers references; the
    /// backends decide).
    valid: bool,
    /// When it was created, across kinds.
    order: usize,
}

impl Handle {
    fn usable(&self) -> bool {
        self.open && self.valid
    }
}

/// A guest_memfd the sequence created.
#[derive(Debug)]
struct Gmem {
    handle: Handle,
    /// The VM name it was created on, if it was created on one.
    vm: Option<String>,
    size: u64,
    mmap: bool,
}

/// A mapping the sequence made.
#[derive(Debug)]
struct Mapping {
    name: String,
    /// The page-rounded length asked for.
    len: u64,
    unmapped: bool,
    /// The `mmap` looked valid to the renderer.
    valid: bool,
    /// An anonymous mapping (`MAP_ANONYMOUS`).
    anonymous: bool,
}

/// What the sequence has created so far.
#[derive(Debug, Default)]
struct Scope {
    vms: Vec<Handle>,
    gmems: Vec<Gmem>,
    vcpus: Vec<Handle>,
    maps: Vec<Mapping>,
    lines: Vec<String>,
}

/// The `n`-th most recent element of `items` (modulo their number).
fn recent<T>(items: &[T], n: u8) -> Option<&T> {
    let len = items.len();
    (len > 0).then(|| &items[len - 1 - usize::from(n) % len])
}

/// The `n`-th most recent element of `items` that passes `preferred`, or of all of them if
/// none does.
fn recent_preferring<T>(items: &[T], n: u8, preferred: impl Fn(&T) -> bool) -> Option<&T> {
    let chosen: Vec<&T> = items.iter().filter(|item| preferred(item)).collect();
    match chosen.is_empty() {
        true => recent(items, n),
        false => recent(&chosen, n).copied(),
    }
}

/// Renders `ops` (the `None` slots are skipped), keeping at most `ops_max` lines.
pub fn render<'a>(ops: impl IntoIterator<Item = &'a Option<AbstractOp>>, ops_max: usize) -> Rendered {
    let mut scope = Scope::default();
    for op in ops.into_iter().flatten() {
        if scope.lines.len() >= ops_max {
            break;
        }
        if let Some(line) = scope.render(op) {
            scope.lines.push(line);
        }
    }
    Rendered { lines: scope.lines }
}

impl Scope {
    fn vm_handle(&self, n: u8) -> Option<&Handle> {
        recent_preferring(&self.vms, n, Handle::usable)
    }

    fn gmem(&self, n: u8) -> Option<&Gmem> {
        recent_preferring(&self.gmems, n, |g| g.handle.usable())
    }

    fn mappable(&self, n: u8) -> Option<&Gmem> {
        let chosen: Vec<&Gmem> = self.gmems.iter().filter(|g| g.handle.usable() && g.mmap).collect();
        recent(&chosen, n).copied().or_else(|| self.gmem(n))
    }

    /// The `n`-th most recent VM or guest_memfd that was closed or failed.
    fn dead(&self, n: u8) -> Option<&Handle> {
        let mut dead: Vec<&Handle> =
            self.vms.iter().chain(self.gmems.iter().map(|g| &g.handle)).filter(|h| !h.usable()).collect();
        dead.sort_by_key(|h| h.order);
        recent(&dead, n).copied()
    }

    /// A descriptor argument; `allow_std` says whether the standard streams may appear.
    fn fd(&self, fd: Fd, allow_std: bool) -> String {
        let name = match fd {
            Fd::Vm(n) => self.vm_handle(n).map(|h| h.name.clone()),
            Fd::Gmem(n) => self.gmem(n).map(|g| g.handle.name.clone()),
            Fd::Mappable(n) => self.mappable(n).map(|g| g.handle.name.clone()),
            Fd::Vcpu(n) => recent_preferring(&self.vcpus, n, Handle::usable).map(|h| h.name.clone()),
            Fd::Dead(n) => self.dead(n).map(|h| h.name.clone()),
            Fd::Std(n) if allow_std => Some((n % 3).to_string()),
            Fd::Unopened => Some("1000000".to_string()),
            Fd::Std(_) | Fd::Invalid => None,
        };
        name.unwrap_or_else(|| "-1".to_string())
    }

    /// Whether `name` is a VM that is open and looked valid.
    fn usable_vm(&self, name: &str) -> bool {
        self.vms.iter().any(|h| h.name == name && h.usable())
    }

    fn usable_gmem(&self, name: &str) -> Option<&Gmem> {
        self.gmems.iter().find(|g| g.handle.name == name && g.handle.usable())
    }

    fn next_order(&self) -> usize {
        self.vms.len() + self.gmems.len() + self.vcpus.len()
    }

    /// The index of the mapping `map` names, if the sequence has one.
    fn mapping(&self, map: MapRef, allow_unmapped: bool) -> Option<usize> {
        let all: Vec<usize> = (0..self.maps.len()).filter(|&i| allow_unmapped || !self.maps[i].unmapped).collect();
        match map {
            MapRef::Good(n) => {
                let good: Vec<usize> =
                    all.iter().copied().filter(|&i| self.maps[i].valid && !self.maps[i].unmapped).collect();
                recent(&good, n).copied()
            }
            MapRef::Any(n) => recent(&all, n).copied(),
        }
    }

    fn render(&mut self, op: &AbstractOp) -> Option<String> {
        let line = match op {
            AbstractOp::CreateVm { vm_type } => {
                let name = format!("vm{}", self.vms.len());
                let line = format!("{name} = create_vm type={}", constant(*vm_type, VM_TYPES));
                let order = self.next_order();
                self.vms.push(Handle { name, open: true, valid: *vm_type == 0, order });
                line
            }
            AbstractOp::CheckExtension { vm, cap } => {
                let cap = constant(*cap, CAPS);
                match vm {
                    None => format!("check_extension {cap}"),
                    Some(vm) => format!("check_extension {} {cap}", self.fd(*vm, false)),
                }
            }
            AbstractOp::CreateGuestMemfd { vm, size, flags } => {
                let name = format!("g{}", self.gmems.len());
                let vm_arg = self.fd(*vm, true);
                let line = format!(
                    "{name} = create_guest_memfd {vm_arg} size={} flags={}",
                    num(*size),
                    flag_set(*flags, GMEM_FLAGS)
                );
                let valid =
                    self.usable_vm(&vm_arg) && *size % PAGE == 0 && (*size as i64) > 0 && *flags & !GMEM_FLAGS_ALL == 0;
                let vm = self.vms.iter().any(|h| h.name == vm_arg).then_some(vm_arg);
                let handle = Handle { name, open: true, valid, order: self.next_order() };
                self.gmems.push(Gmem { handle, vm, size: *size, mmap: *flags & 1 != 0 });
                line
            }
            AbstractOp::SetUserMemoryRegion2 { .. } => self.memslot(op),
            AbstractOp::SetMemoryAttributes { vm, address, size, attributes, flags } => format!(
                "set_memory_attributes {} address={} size={} attributes={} flags={}",
                self.fd(*vm, true),
                num(*address),
                num(*size),
                flag_set(*attributes, ATTRIBUTES),
                num(*flags)
            ),
            AbstractOp::Fallocate { fd, mode, offset, len } => {
                let len = clamp_allocation(*mode, *offset, *len);
                format!(
                    "fallocate {} mode={} offset={} len={}",
                    self.fd(*fd, true),
                    flag_set(*mode, FALLOCATE_MODES),
                    num(*offset),
                    num(len)
                )
            }
            AbstractOp::Fstat { fd } => format!("fstat {}", self.fd(*fd, false)),
            AbstractOp::Ftruncate { fd, size } => format!("ftruncate {} size={}", self.fd(*fd, false), num(*size)),
            AbstractOp::Read { fd, len } => format!("read {} len={}", self.fd(*fd, false), num(*len)),
            AbstractOp::Write { fd, len } => format!("write {} len={}", self.fd(*fd, false), num(*len)),
            AbstractOp::Pread { fd, len, offset } => {
                format!("pread {} len={} offset={}", self.fd(*fd, false), num(*len), num(*offset))
            }
            AbstractOp::Pwrite { fd, len, offset } => {
                format!("pwrite {} len={} offset={}", self.fd(*fd, false), num(*len), num(*offset))
            }
            AbstractOp::Lseek { fd, offset, whence } => format!(
                "lseek {} offset={} whence={}",
                self.fd(*fd, false),
                num(*offset),
                constant(*whence, LSEEK_WHENCE)
            ),
            AbstractOp::Mmap { fd, len, offset, prot, flags } => {
                let name = format!("m{}", self.maps.len());
                let fd_arg = self.fd(*fd, false);
                let line = format!(
                    "{name} = mmap {fd_arg} len={} offset={} prot={} flags={}",
                    num(*len),
                    num(*offset),
                    flag_set(*prot, MMAP_PROT),
                    mmap_flags(*flags)
                );
                let mapping_type = *flags & 0xf;
                let valid = if *flags & MAP_ANONYMOUS != 0 {
                    *len > 0 && *offset % PAGE == 0 && (mapping_type == 1 || mapping_type == 2) && *flags & 0x100 == 0
                } else {
                    self.usable_gmem(&fd_arg).is_some_and(|g| g.mmap)
                        && *len > 0
                        && *offset % PAGE == 0
                        && (*offset as i64) >= 0
                        && (mapping_type == 1 || mapping_type == 3)
                        && *prot & 4 == 0
                };
                let len = len.checked_next_multiple_of(PAGE).unwrap_or(0);
                self.maps.push(Mapping { name, len, unmapped: false, valid, anonymous: *flags & MAP_ANONYMOUS != 0 });
                line
            }
            AbstractOp::Munmap { map } => {
                let map = self.mapping(*map, STALE_NAMES)?;
                self.maps[map].unmapped = true;
                format!("munmap {}", self.maps[map].name)
            }
            AbstractOp::Store { map, at, len, byte } => {
                let map = &self.maps[self.mapping(*map, STALE_NAMES)?];
                let (offset, len) = access(at, u64::from(*len), map.len);
                let bytes: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                format!("store {} offset={} bytes={}", map.name, num(offset), hex(&bytes))
            }
            AbstractOp::Load { map, at, len } => {
                let map = &self.maps[self.mapping(*map, STALE_NAMES)?];
                let (offset, len) = access(at, u64::from(*len), map.len);
                format!("load {} offset={} len={}", map.name, num(offset), len)
            }
            AbstractOp::Madvise { map, at, len, advice } => {
                let map = &self.maps[self.mapping(*map, STALE_NAMES)?];
                let (offset, len) = advise_range(map.len, at, len);
                // MADV_COLLAPSE on anonymous memory depends on where the kernel placed the
                // mapping (a shmem VMA must be PMD-aligned to hold a huge page) and on what is
                // populated (measured, docs/FIDELITY.md): not a sequence both sides can agree on.
                // On guest_memfd mappings and holes it is compared.
                let advice = if map.anonymous && *advice == MADV_COLLAPSE { MADV_DONTNEED } else { *advice };
                format!(
                    "madvise {} offset={} len={} advice={}",
                    map.name,
                    num(offset),
                    num(len),
                    constant(advice, MADVISE_ADVICE)
                )
            }
            AbstractOp::Mlock { map, at, len, unlock } => {
                let map = &self.maps[self.mapping(*map, STALE_NAMES)?];
                let (offset, len) = advise_range(map.len, at, len);
                let verb = if *unlock { "munlock" } else { "mlock" };
                format!("{verb} {} offset={} len={}", map.name, num(offset), num(len))
            }
            AbstractOp::CreateVcpu { vm, id } => {
                let name = format!("c{}", self.vcpus.len());
                let vm_arg = self.fd(*vm, false);
                let line = format!("{name} = create_vcpu {vm_arg} id={}", num(*id));
                // A guess that steers references (the backends decide): a live VM, an id below
                // this machine's KVM_MAX_VCPU_IDS, not taken yet on that VM.
                let valid = self.usable_vm(&vm_arg) && *id < 4096;
                let order = self.next_order();
                self.vcpus.push(Handle { name, open: true, valid, order });
                line
            }
            AbstractOp::PreFaultMemory { vcpu, gpa, size } => {
                format!("pre_fault_memory {} gpa={} size={}", self.fd(*vcpu, false), num(*gpa), num(*size))
            }
            AbstractOp::Close { fd } => {
                let handle = match fd {
                    Fd::Vm(n) => self.vm_handle(*n)?,
                    Fd::Vcpu(n) => recent_preferring(&self.vcpus, *n, Handle::usable)?,
                    Fd::Gmem(n) | Fd::Mappable(n) => &self.gmem(*n)?.handle,
                    Fd::Dead(n) => self.dead(*n)?,
                    Fd::Std(_) | Fd::Invalid | Fd::Unopened => return None,
                };
                let name = handle.name.clone();
                let handles = self
                    .vms
                    .iter_mut()
                    .chain(self.gmems.iter_mut().map(|g| &mut g.handle))
                    .chain(self.vcpus.iter_mut());
                for handle in handles.filter(|h| h.name == name) {
                    handle.open = false;
                }
                format!("close {name}")
            }
        };
        Some(line)
    }

    fn memslot(&self, op: &AbstractOp) -> String {
        let AbstractOp::SetUserMemoryRegion2 { vm, slot, flags, gpa, size, uaddr, guest_memfd, guest_memfd_offset } =
            op
        else {
            return String::new();
        };
        let vm_arg = self.fd(*vm, true);
        let gmem = match guest_memfd {
            GmemArg::Own(n) => {
                let own = |g: &&Gmem| g.vm.as_deref() == Some(vm_arg.as_str());
                let usable: Vec<&Gmem> = self.gmems.iter().filter(|g| own(g) && g.handle.usable()).collect();
                let all: Vec<&Gmem> = self.gmems.iter().filter(own).collect();
                recent(&usable, *n).or_else(|| recent(&all, *n)).copied().or_else(|| self.gmem(*n))
            }
            GmemArg::Any(n) => self.gmem(*n),
            GmemArg::Dead(n) => {
                let dead: Vec<&Gmem> = self.gmems.iter().filter(|g| !g.handle.usable()).collect();
                recent(&dead, *n).copied()
            }
            _ => None,
        };
        let gmem_arg = match guest_memfd {
            GmemArg::Own(_) | GmemArg::Any(_) | GmemArg::Dead(_) => gmem.map(|g| g.handle.name.clone()),
            GmemArg::Vm(n) => self.vm_handle(*n).map(|h| h.name.clone()),
            GmemArg::Std(n) => Some((n % 3).to_string()),
            GmemArg::Raw(raw) => Some(num(*raw)),
        };
        let size = match size {
            SlotSize::Fit => match gmem {
                Some(g) if g.size % PAGE == 0 && *guest_memfd_offset < g.size => {
                    (g.size - guest_memfd_offset).min(2 << 20)
                }
                _ => PAGE,
            },
            SlotSize::Raw(size) => clamp_memslot_size(*size),
        };
        let mut line = format!(
            "set_user_memory_region2 {vm_arg} slot={} flags={} gpa={} size={}",
            num(u64::from(*slot)),
            flag_set(u64::from(*flags), MEMSLOT_FLAGS),
            num(*gpa),
            num(size)
        );
        let uaddr = match uaddr {
            Uaddr::Auto => None,
            Uaddr::Map(n) => Some(recent(&self.maps, *n).map_or_else(|| "0".to_string(), |m| m.name.clone())),
            Uaddr::Raw(addr) => Some(num(*addr)),
        };
        if let Some(uaddr) = uaddr {
            let _ = write!(line, " uaddr={uaddr}");
        }
        let _ = write!(line, " guest_memfd={}", gmem_arg.unwrap_or_else(|| "-1".to_string()));
        if *guest_memfd_offset != 0 {
            let _ = write!(line, " guest_memfd_offset={}", num(*guest_memfd_offset));
        }
        line
    }
}

/// The offset and length of a madvise, mlock or munlock at `at` in a mapping of (page-rounded)
/// `map_len` bytes: inside ones start on a page of the mapping.
fn advise_range(map_len: u64, at: &Place, len: &AdviseLen) -> (u64, u64) {
    let pages = (map_len / PAGE).max(1);
    let offset = match at {
        Place::Inside(v) => u64::from(*v) % pages * PAGE,
        Place::Crossing(_) => map_len.saturating_sub(PAGE),
        Place::Raw(v) => *v,
    };
    let len = match len {
        AdviseLen::ToEnd => map_len.saturating_sub(offset),
        AdviseLen::Raw(len) => *len,
    };
    (offset, len)
}

/// The offset and length of a load or store at `at` in a mapping of (page-rounded) `map_len`
/// bytes: inside accesses are cut to end inside, crossing ones cross the end.
fn access(at: &Place, len: u64, map_len: u64) -> (u64, u64) {
    match at {
        Place::Inside(v) if map_len > 0 => {
            let offset = u64::from(*v) % map_len;
            (offset, len.min(map_len - offset).max(1))
        }
        Place::Inside(v) => (u64::from(*v) % PAGE, len),
        Place::Crossing(back) => {
            let back = 1 + u64::from(*back) % 64;
            (map_len.saturating_sub(back), back + len.min(64))
        }
        Place::Raw(offset) => (*offset, len),
    }
}

/// The length of a fallocate that does not punch: one the kernel could accept (non-negative
/// offset, no `loff_t` overflow) is cut to [`FALLOCATE_ALLOC_MAX`] (plus its sub-page part, so
/// an unaligned length stays unaligned). Only mode `KEEP_SIZE` really allocates, but the kvm
/// backend skips every non-punching call longer than a few GiB that fits in the file, and a
/// skipped call leaves the rest of a sequence uncompared. Punches, and calls the VFS rejects
/// for their offset or length (negative, overflowing), keep their length.
fn clamp_allocation(mode: u64, offset: u64, len: u64) -> u64 {
    const PUNCH_HOLE: u64 = 2;
    let (offset_s, len_s) = (offset as i64, len as i64);
    let could_allocate = mode & PUNCH_HOLE == 0
        && offset_s >= 0
        && len_s > FALLOCATE_ALLOC_MAX as i64
        && offset_s.checked_add(len_s).is_some();
    if could_allocate {
        FALLOCATE_ALLOC_MAX + len % PAGE
    } else {
        len
    }
}

/// A memslot size the kernel could accept is at most [`MEMSLOT_SIZE_MAX`]; larger sizes are
/// kept only when the kernel rejects them before allocating (unaligned, or more than
/// `KVM_MEM_MAX_NR_PAGES` pages).
fn clamp_memslot_size(size: u64) -> u64 {
    let rejected = size % PAGE != 0 || size / PAGE > KVM_MEM_MAX_NR_PAGES;
    if size > MEMSLOT_SIZE_MAX && !rejected {
        MEMSLOT_SIZE_MAX
    } else {
        size
    }
}

/// Constant names of one argument: `(name, value)`, from the parser's own tables so the
/// rendered scripts use exactly the names the parser reads back.
type Names = &'static [(&'static str, u64)];

const VM_TYPES: Names = value::VM_TYPES.names;
const CAPS: Names = value::CAPS.names;
const GMEM_FLAGS: Names = value::GMEM_FLAGS.names;
/// Every guest_memfd flag Linux 6.18 knows.
const GMEM_FLAGS_ALL: u64 = 3;
const MEMSLOT_FLAGS: Names = value::MEMSLOT_FLAGS.names;
const ATTRIBUTES: Names = value::ATTRIBUTES.names;
const FALLOCATE_MODES: Names = value::FALLOCATE_MODES.names;
const MMAP_PROT: Names = value::MMAP_PROT.names;
const MMAP_FLAGS: Names = value::MMAP_FLAGS.names;
const MADVISE_ADVICE: Names = value::MADVISE_ADVICE.names;
const LSEEK_WHENCE: Names = value::LSEEK_WHENCE.names;

/// `MAP_ANONYMOUS`.
const MAP_ANONYMOUS: u64 = 0x20;
/// `MADV_DONTNEED`.
const MADV_DONTNEED: u64 = 4;
/// `MADV_COLLAPSE`.
const MADV_COLLAPSE: u64 = 25;

/// mmap flags: the mapping type by name (`SHARED`, `PRIVATE`, `SHARED_VALIDATE`, or its number),
/// then the other named bits, then the rest as a number.
fn mmap_flags(flags: u64) -> String {
    let mapping_type = flags & 0xf;
    let rest = flags & !0xf;
    let mut parts = Vec::new();
    if mapping_type != 0 || rest == 0 {
        parts.push(constant(mapping_type, &MMAP_FLAGS[..3]));
    }
    if rest != 0 {
        parts.push(flag_set(rest, &MMAP_FLAGS[3..]));
    }
    parts.join("|")
}

/// A constant: its name if it has one, else the number.
fn constant(value: u64, names: Names) -> String {
    match names.iter().find(|(_, v)| *v == value) {
        Some((name, _)) => (*name).to_string(),
        None => num(value),
    }
}

/// A flag set: the named bits joined by `|`, then the other bits as a number (`NONE` or `0`
/// for the empty set).
fn flag_set(value: u64, names: Names) -> String {
    if value == 0 {
        return names.iter().find(|(_, v)| *v == 0).map_or_else(|| "0".into(), |(name, _)| (*name).to_string());
    }
    let mut parts = Vec::new();
    let mut rest = value;
    for (name, bit) in names {
        if rest & bit != 0 {
            parts.push((*name).to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(num(rest));
    }
    parts.join("|")
}

/// An integer as a script writes it: decimal below 64 Ki, a `K`/`M`/`G`/`T` multiple when
/// exact, hexadecimal otherwise, and `-N` for small negative patterns such as `-4096`.
pub fn num(value: u64) -> String {
    let signed = value as i64;
    if signed < 0 && signed > -(1 << 40) {
        return format!("-{}", unsigned(signed.unsigned_abs()));
    }
    unsigned(value)
}

fn unsigned(value: u64) -> String {
    for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
        let unit = 1u64 << shift;
        if value >= unit && value % unit == 0 && value / unit < 1024 && value >= 4096 {
            return format!("{}{suffix}", value / unit);
        }
    }
    if value < 1 << 16 {
        value.to_string()
    } else {
        format!("{value:#x}")
    }
}

/// Lowercase hexadecimal, two digits per byte.
fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::parse;

    #[test]
    fn numbers_render_so_the_parser_reads_them_back() {
        for value in
            [0, 1, 4095, 4096, 4097, 65535, 65536, 2 << 20, 1 << 40, 1 << 52, 1 << 62, u64::MAX, 4096u64.wrapping_neg()]
        {
            let text = format!("vm = create_vm\ncreate_guest_memfd vm size={} flags=0\n", num(value));
            let program = parse("n.gms", &text).expect("parses");
            let crate::script::Op::CreateGuestMemfd { size, .. } = &program.lines[1].op else { panic!("op") };
            assert_eq!(*size, value, "{}", num(value));
        }
        assert_eq!(num(4096), "4K");
        assert_eq!(num(4096u64.wrapping_neg()), "-4K");
        assert_eq!(num(1 << 52), "0x10000000000000");
    }

    #[test]
    fn references_to_nothing_become_raw_numbers_or_drop_the_operation() {
        let ops = [
            Some(AbstractOp::Fstat { fd: Fd::Gmem(0) }),
            Some(AbstractOp::Load { map: MapRef::Good(0), at: Place::Inside(0), len: 1 }),
            Some(AbstractOp::Close { fd: Fd::Vm(0) }),
            Some(AbstractOp::CreateVm { vm_type: 0 }),
            Some(AbstractOp::Close { fd: Fd::Vm(3) }),
        ];
        let rendered = render(&ops, 10);
        assert_eq!(rendered.lines, ["fstat -1", "vm0 = create_vm type=DEFAULT", "close vm0"]);
    }

    #[test]
    fn allocations_and_memslots_stay_small() {
        assert_eq!(clamp_allocation(1, 0, 1 << 62), FALLOCATE_ALLOC_MAX);
        assert_eq!(clamp_allocation(0x21, 0, 1 << 62), FALLOCATE_ALLOC_MAX);
        assert_eq!(clamp_allocation(3, 0, 1 << 62), 1 << 62);
        assert_eq!(clamp_allocation(1, 4096, i64::MAX as u64 & !4095), i64::MAX as u64 & !4095);
        assert_eq!(clamp_allocation(1, 4096u64.wrapping_neg(), 1 << 40), 1 << 40);
        assert_eq!(clamp_allocation(1, 0, (4097 << 20) + 1), FALLOCATE_ALLOC_MAX + 1);
        assert_eq!(clamp_allocation(1, 0, 4097 << 20), FALLOCATE_ALLOC_MAX);
        assert_eq!(clamp_memslot_size(2 << 30), MEMSLOT_SIZE_MAX);
        assert_eq!(clamp_memslot_size(1 << 43), 1 << 43);
        assert_eq!(clamp_memslot_size(4096u64.wrapping_neg()), 4096u64.wrapping_neg());
    }
}
