//! Runner tests against a mock backend that records its calls and returns scripted results.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;

use gmem_arch::tdx::kvm::{kvm_tdx_init_mem_region, kvm_tdx_init_vm};
use gmem_mm::Errno;
use gmem_sim::backend::{
    BResult, Backend, Completion, Failure, GhcbAnswer, LaunchUpdated, MemoryRegion2, Signal, Stat, TdvmcallAnswer,
    TdxRegionDone, VcpuExit, Violation,
};
use gmem_sim::runner::{run, LineReport, Report, RunError, RunOptions};
use gmem_sim::script::{parse, Program};
use kvm_bindings::{kvm_cpuid_entry2, kvm_sev_snp_launch_start, kvm_sev_snp_launch_update};

/// What the mock does, shared with the test so it can be inspected after the backend is gone.
#[derive(Default)]
struct MockState {
    /// Every call, formatted, in order (plus `new` and `drop` of each backend).
    log: Vec<String>,
    /// Scripted failures per method, consumed in order; an empty queue means success.
    failures: BTreeMap<&'static str, VecDeque<Failure>>,
    violations: Vec<Violation>,
    dump: Vec<String>,
}

struct Mock {
    state: Rc<RefCell<MockState>>,
    next_fd: i32,
    next_addr: u64,
}

impl Mock {
    /// Logs `call` and returns the next scripted failure of `method`, or `value`.
    fn answer<T>(&mut self, method: &'static str, call: String, value: T) -> BResult<T> {
        let mut state = self.state.borrow_mut();
        state.log.push(call);
        match state.failures.get_mut(method).and_then(VecDeque::pop_front) {
            Some(failure) => Err(failure),
            None => Ok(value),
        }
    }

    fn fd(&mut self) -> i32 {
        self.next_fd += 1;
        self.next_fd - 1
    }

    fn addr(&mut self) -> u64 {
        self.next_addr += 0x10_0000;
        self.next_addr - 0x10_0000
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.state.borrow_mut().log.push("drop".into());
    }
}

impl Backend for Mock {
    fn create_vm(&mut self, vm_type: u64) -> BResult<i32> {
        let fd = self.fd();
        self.answer("create_vm", format!("create_vm({vm_type})"), fd)
    }
    fn check_extension(&mut self, vm: Option<i32>, cap: u64) -> BResult<i64> {
        self.answer("check_extension", format!("check_extension({vm:?}, {cap})"), 3)
    }
    fn create_guest_memfd(&mut self, vm: i32, size: u64, flags: u64) -> BResult<i32> {
        let fd = self.fd();
        let call = format!("create_guest_memfd({vm}, {size:#x}, {flags:#x})");
        self.answer("create_guest_memfd", call, fd)
    }
    fn set_user_memory_region2(&mut self, vm: i32, region: &MemoryRegion2) -> BResult<()> {
        let call = format!(
            "set_user_memory_region2({vm}, slot={:#x} flags={:#x} gpa={:#x} size={:#x} \
             uaddr={:#x} offset={:#x} gmem={:#x})",
            region.slot,
            region.flags,
            region.guest_phys_addr,
            region.memory_size,
            region.userspace_addr,
            region.guest_memfd_offset,
            region.guest_memfd
        );
        self.answer("set_user_memory_region2", call, ())
    }
    fn set_memory_attributes(&mut self, vm: i32, a: u64, s: u64, at: u64, f: u64) -> BResult<()> {
        let call = format!("set_memory_attributes({vm}, {a:#x}, {s:#x}, {at:#x}, {f:#x})");
        self.answer("set_memory_attributes", call, ())
    }
    fn fallocate(&mut self, fd: i32, mode: i32, offset: i64, len: i64) -> BResult<()> {
        let call = format!("fallocate({fd}, {mode:#x}, {offset}, {len})");
        self.answer("fallocate", call, ())
    }
    fn fstat(&mut self, fd: i32) -> BResult<Stat> {
        let stat = Stat { size: 2097152, blksize: 4096, blocks: 8, mode: 0o100600 };
        self.answer("fstat", format!("fstat({fd})"), stat)
    }
    fn ftruncate(&mut self, fd: i32, size: i64) -> BResult<()> {
        self.answer("ftruncate", format!("ftruncate({fd}, {size})"), ())
    }
    fn read(&mut self, fd: i32, len: u64) -> BResult<u64> {
        self.answer("read", format!("read({fd}, {len})"), len)
    }
    fn write(&mut self, fd: i32, len: u64) -> BResult<u64> {
        self.answer("write", format!("write({fd}, {len})"), len)
    }
    fn pread(&mut self, fd: i32, len: u64, offset: i64) -> BResult<u64> {
        self.answer("pread", format!("pread({fd}, {len}, {offset})"), len)
    }
    fn pwrite(&mut self, fd: i32, len: u64, offset: i64) -> BResult<u64> {
        self.answer("pwrite", format!("pwrite({fd}, {len}, {offset})"), len)
    }
    fn lseek(&mut self, fd: i32, offset: i64, whence: i32) -> BResult<u64> {
        let call = format!("lseek({fd}, {offset}, {whence})");
        self.answer("lseek", call, offset as u64)
    }
    fn mmap(&mut self, fd: i32, len: u64, offset: i64, prot: u64, flags: u64) -> BResult<u64> {
        let addr = self.addr();
        let call = format!("mmap({fd}, {len:#x}, {offset}, {prot}, {flags})");
        self.answer("mmap", call, addr)
    }
    fn munmap(&mut self, addr: u64, len: u64) -> BResult<()> {
        self.answer("munmap", format!("munmap({addr:#x}, {len:#x})"), ())
    }
    fn store(&mut self, addr: u64, bytes: &[u8]) -> BResult<()> {
        self.answer("store", format!("store({addr:#x}, {bytes:?})"), ())
    }
    fn load(&mut self, addr: u64, len: u64) -> BResult<Vec<u8>> {
        let bytes = (0..len.min(4)).map(|i| 0x2a + i as u8).collect();
        self.answer("load", format!("load({addr:#x}, {len})"), bytes)
    }
    fn madvise(&mut self, addr: u64, len: u64, advice: i32) -> BResult<()> {
        let call = format!("madvise({addr:#x}, {len:#x}, {advice})");
        self.answer("madvise", call, ())
    }
    fn close(&mut self, fd: i32) -> BResult<()> {
        self.answer("close", format!("close({fd})"), ())
    }
    fn map_anonymous(&mut self, len: u64) -> BResult<u64> {
        let addr = self.addr();
        self.answer("map_anonymous", format!("map_anonymous({len:#x})"), addr)
    }
    fn create_vcpu(&mut self, vm: i32, id: u64) -> BResult<i32> {
        let fd = self.fd();
        self.answer("create_vcpu", format!("create_vcpu({vm}, {id})"), fd)
    }
    fn guest_load(&mut self, vcpu: i32, gpa: u64, len: u64, p: Option<bool>) -> BResult<Vec<u8>> {
        let call = format!("guest_load({vcpu}, {gpa:#x}, {len}, {p:?})");
        self.answer("guest_load", call, vec![0; len as usize])
    }
    fn tdx_shared_bit(&mut self, vcpu: i32) -> BResult<u64> {
        // GPAW 48: gpa bit 47.
        self.answer("tdx_shared_bit", format!("tdx_shared_bit({vcpu})"), 1 << 47)
    }
    fn tdx_accept(&mut self, vcpu: i32, rcx: u64) -> BResult<u64> {
        self.answer("tdx_accept", format!("tdx_accept({vcpu}, {rcx:#x})"), 0)
    }
    fn tdx_map_gpa(&mut self, vcpu: i32, gpa: u64, size: u64) -> BResult<TdvmcallAnswer> {
        let call = format!("tdx_map_gpa({vcpu}, {gpa:#x}, {size:#x})");
        self.answer("tdx_map_gpa", call, TdvmcallAnswer { r10: 0x8000_0000_0000_0002, r11: gpa })
    }
    fn complete_hypercall(&mut self, vcpu: i32, ret: u64) -> BResult<Completion> {
        let call = format!("complete_hypercall({vcpu}, {ret:#x})");
        self.answer("complete_hypercall", call, Completion::Tdvmcall(TdvmcallAnswer { r10: 1, r11: 0x8000_0030_0000 }))
    }
    fn queue_event(&mut self, vcpu: i32) -> BResult<()> {
        self.answer("queue_event", format!("queue_event({vcpu})"), ())
    }
    fn open_dev_sev(&mut self) -> BResult<i32> {
        let fd = self.fd();
        self.answer("open_dev_sev", "open_dev_sev()".into(), fd)
    }
    fn snp_launch_start(&mut self, vm: i32, sev_fd: i32, params: &kvm_sev_snp_launch_start) -> BResult<()> {
        let call = format!("snp_launch_start({vm}, sev_fd={sev_fd}, policy={:#x})", params.policy);
        self.answer("snp_launch_start", call, ())
    }
    fn snp_launch_update(
        &mut self,
        vm: i32,
        sev_fd: i32,
        params: &kvm_sev_snp_launch_update,
        bytes: Option<&[u8]>,
    ) -> BResult<LaunchUpdated> {
        // Stages `bytes` at a fresh address; does one page.
        let uaddr = match bytes {
            Some(_) => self.addr(),
            None => params.uaddr,
        };
        let call = format!(
            "snp_launch_update({vm}, sev_fd={sev_fd}, gfn_start={:#x} len={:#x} type={} uaddr={uaddr:#x} bytes={bytes:?})",
            params.gfn_start, params.len, params.type_
        );
        let done = LaunchUpdated {
            gfn_start: params.gfn_start + 1,
            len: params.len - 4096,
            uaddr: uaddr + 4096,
            uaddr_in: uaddr,
        };
        self.answer("snp_launch_update", call, done)
    }
    fn tdx_init_vm(
        &mut self,
        vm: i32,
        flags: u32,
        init_vm: &kvm_tdx_init_vm,
        cpuid: &[kvm_cpuid_entry2],
    ) -> BResult<()> {
        let entries: Vec<String> = cpuid
            .iter()
            .map(|e| {
                let regs = format!("{:#x}:{:#x}:{:#x}:{:#x}", e.eax, e.ebx, e.ecx, e.edx);
                format!("{:#x}.{}/{}:{regs}", e.function, e.index, e.flags)
            })
            .collect();
        let call = format!(
            "tdx_init_vm({vm}, flags={flags}, attributes={:#x}, xfam={:#x}, cpuid=[{}])",
            init_vm.attributes,
            init_vm.xfam,
            entries.join(" ")
        );
        self.answer("tdx_init_vm", call, ())
    }
    fn tdx_init_mem_region(
        &mut self,
        vcpu: i32,
        flags: u32,
        region: &kvm_tdx_init_mem_region,
        bytes: Option<&[u8]>,
    ) -> BResult<TdxRegionDone> {
        // Stages `bytes` at a fresh address; does one page, and fails afterwards if a failure
        // is scripted (the failure's errno, with the region advanced).
        let source = match bytes {
            Some(_) => self.addr(),
            None => region.source_addr,
        };
        let call = format!(
            "tdx_init_mem_region({vcpu}, flags={flags}, source={source:#x}, gpa={:#x}, nr_pages={}, bytes={bytes:?})",
            region.gpa, region.nr_pages
        );
        let done = kvm_tdx_init_mem_region {
            source_addr: source + 4096,
            gpa: region.gpa + 4096,
            nr_pages: region.nr_pages - 1,
        };
        let error = match self.answer("tdx_init_mem_region", call, ()) {
            Ok(()) => None,
            Err(Failure::Tdx { errno, hw_error, .. }) => Some((errno, hw_error)),
            Err(other) => return Err(other),
        };
        Ok(TdxRegionDone { region: done, source_in: source, error })
    }
    fn psc(&mut self, vcpu: i32, ghcb: u64, gpa: u64, npages: u16, op: u8, size_2m: bool) -> BResult<GhcbAnswer> {
        let call = format!("psc({vcpu}, {ghcb:#x}, {gpa:#x}, {npages}, {op}, {size_2m})");
        self.answer("psc", call, GhcbAnswer::Status(0))
    }
    fn warnings(&mut self) -> BResult<u64> {
        self.answer("warnings", "warnings()".into(), 0)
    }
    fn check_invariants(&mut self) -> BResult<Vec<Violation>> {
        let violations = self.state.borrow().violations.clone();
        self.answer("check_invariants", "check_invariants()".into(), violations)
    }
    fn dump(&mut self, target: Option<i32>) -> BResult<Vec<String>> {
        let lines = self.state.borrow().dump.clone();
        self.answer("dump", format!("dump({target:?})"), lines)
    }
}

/// A test bench: the shared mock state and a factory of mocks over it.
struct Bench {
    state: Rc<RefCell<MockState>>,
}

impl Bench {
    fn new() -> Bench {
        Bench { state: Rc::default() }
    }

    fn fail(&self, method: &'static str, failure: Failure) -> &Bench {
        let mut state = self.state.borrow_mut();
        state.failures.entry(method).or_default().push_back(failure);
        self
    }

    fn errno(&self, method: &'static str, errno: Errno) -> &Bench {
        self.fail(method, Failure::Errno(errno))
    }

    /// Runs `files` (name, source) and returns the report and the text output.
    fn run_files(&self, files: &[(&str, &str)], options: RunOptions) -> (Report, String) {
        let programs: Vec<Program> =
            files.iter().map(|(name, source)| parse(name, source).expect("the test script parses")).collect();
        let state = self.state.clone();
        let mut factory = move || -> Result<Box<dyn Backend>, String> {
            state.borrow_mut().log.push("new".into());
            let mock = Mock { state: state.clone(), next_fd: 3, next_addr: 0x7f00_0000_0000 };
            Ok(Box::new(mock))
        };
        let mut out = Vec::new();
        let report = run(&programs, &mut factory, options, &mut out).expect("runs");
        (report, String::from_utf8(out).expect("utf-8 output"))
    }

    fn run(&self, source: &str) -> String {
        self.run_files(&[("t.gms", source)], RunOptions::default()).1
    }

    fn check(&self, source: &str) -> (Report, String) {
        let options = RunOptions { check: true, skip_is_pass: false };
        self.run_files(&[("t.gms", source)], options)
    }

    fn log(&self) -> Vec<String> {
        self.state.borrow().log.clone()
    }
}

fn lines(text: &[&str]) -> String {
    text.iter().map(|line| format!("{line}\n")).collect()
}

#[test]
fn results_are_formatted_as_the_spec_says() {
    let bench = Bench::new();
    bench
        .errno("create_guest_memfd", Errno::EINVAL)
        .fail("store", Failure::Signal(Signal::Sigbus))
        .fail("load", Failure::Signal(Signal::Sigsegv))
        .fail("pread", Failure::Errno(Errno::from_raw(200)))
        .fail("fallocate", Failure::Skip("simulator only".into()))
        .fail("ftruncate", Failure::Skip(String::new()));
    let source = "vm = create_vm\n\
                  check_extension vm GUEST_MEMFD_FLAGS\n\
                  create_guest_memfd vm size=0\n\
                  g = create_guest_memfd vm size=2M flags=MMAP|INIT_SHARED\n\
                  fstat g\n\
                  read g len=64\n\
                  lseek g offset=-1 whence=END\n\
                  m = mmap g len=2M\n\
                  store m offset=0x1000 bytes=2a2b\n\
                  load m len=2\n\
                  load m len=3\n\
                  load m len=0\n\
                  pread g len=1\n\
                  fallocate g mode=KEEP_SIZE len=4K\n\
                  ftruncate g size=0\n\
                  create_vcpu vm\n\
                  guest_store 5 gpa=0 bytes=00\n\
                  warnings\n";
    let expected = lines(&[
        "1: ok",
        "2: ok 3",
        "3: EINVAL",
        "4: ok",
        "5: ok size=2097152 blksize=4096 blocks=8 mode=0o100600",
        "6: ok 64",
        "7: ok 18446744073709551615",
        "8: ok",
        "9: SIGBUS",
        "10: SIGSEGV",
        "11: ok 2a2b2c",
        "12: ok",
        "13: E200",
        "14: skip simulator only",
        "15: skip",
        "16: ok",
        "17: skip not supported by this backend",
        "18: ok 0",
    ]);
    assert_eq!(bench.run(source), expected);
}

#[test]
fn vcpu_exits_print_reason_and_fields() {
    let bench = Bench::new();
    let exit = VcpuExit {
        reason: "MEMORY_FAULT".into(),
        fields: vec![
            ("gpa".into(), "0x2000".into()),
            ("size".into(), "0x1000".into()),
            ("flags".into(), "PRIVATE".into()),
        ],
    };
    bench.fail("guest_load", Failure::Exit(exit));
    bench.fail("guest_load", Failure::Exit(VcpuExit { reason: "SHUTDOWN".into(), fields: vec![] }));
    let source = "vm = create_vm\nc = create_vcpu vm\nguest_load c gpa=0x2000 len=1\nguest_load c gpa=0 len=1 private=0\nguest_load c gpa=0 len=2\n";
    assert_eq!(
        bench.run(source),
        lines(&[
            "1: ok",
            "2: ok",
            "3: exit MEMORY_FAULT gpa=0x2000 size=0x1000 flags=PRIVATE",
            "4: exit SHUTDOWN",
            "5: ok 0000"
        ])
    );
    assert_eq!(
        bench.log()[3..6],
        ["guest_load(4, 0x2000, 1, None)", "guest_load(4, 0x0, 1, Some(false))", "guest_load(4, 0x0, 2, None)"]
    );
}

#[test]
fn check_invariants_sorts_names_and_indents_details() {
    let bench = Bench::new();
    bench.state.borrow_mut().violations = vec![
        Violation { name: "INV-REFCOUNT".into(), details: vec!["folio 3: refcount 2, expected 1".into()] },
        Violation { name: "INV-BIND".into(), details: vec!["slot 0 bound twice".into(), "gfn 0x10".into()] },
        Violation { name: "INV-BIND".into(), details: vec!["slot 1 unbound".into()] },
    ];
    let source = "check_invariants => VIOLATION INV-BIND INV-REFCOUNT\ncheck_invariants => ok\n";
    let (report, output) = bench.check(source);
    assert_eq!(
        output,
        lines(&[
            "1: VIOLATION INV-BIND INV-REFCOUNT",
            "  slot 0 bound twice",
            "  gfn 0x10",
            "  slot 1 unbound",
            "  folio 3: refcount 2, expected 1",
            "2: VIOLATION INV-BIND INV-REFCOUNT (expected ok)",
            "  slot 0 bound twice",
            "  gfn 0x10",
            "  slot 1 unbound",
            "  folio 3: refcount 2, expected 1",
        ])
    );
    assert_eq!(report.lines[0].details.len(), 4);
    assert_eq!((report.checked(), report.failed()), (2, 1));
}

#[test]
fn check_invariants_without_violations_and_dump() {
    let bench = Bench::new();
    bench.state.borrow_mut().dump = vec!["vm 3: type 0".into(), "  slot 0".into()];
    let source = "vm = create_vm\ncheck_invariants\ndump\ndump vm\n";
    assert_eq!(
        bench.run(source),
        lines(&["1: ok", "2: ok", "3: ok", "  vm 3: type 0", "    slot 0", "4: ok", "  vm 3: type 0", "    slot 0"])
    );
    assert_eq!(bench.log()[3..], ["dump(None)", "dump(Some(3))", "drop"]);
}

#[test]
fn failed_handle_verbs_bind_invalid_handles() {
    let bench = Bench::new();
    bench.errno("create_vm", Errno::EINVAL);
    bench.errno("create_guest_memfd", Errno::ENOMEM);
    bench.errno("create_guest_memfd", Errno::ENOMEM);
    bench.errno("mmap", Errno::ENODEV);
    bench.errno("create_vcpu", Errno::EEXIST);
    let source = "vm = create_vm type=TDX\n\
                  create_guest_memfd vm size=4K\n\
                  good = create_vm\n\
                  g = create_guest_memfd good size=4K\n\
                  fstat g\n\
                  g2 = create_guest_memfd good size=4K\n\
                  m = mmap g2 len=8K\n\
                  load m offset=1 len=1\n\
                  store m bytes=01\n\
                  madvise m offset=0x1000 len=4K advice=DONTNEED\n\
                  munmap m\n\
                  c = create_vcpu good\n\
                  guest_load c gpa=0 len=1\n";
    bench.run(source);
    let log = bench.log();
    let expected = [
        "new",
        "create_vm(5)",
        "create_guest_memfd(-1, 0x1000, 0x0)",
        "create_vm(0)",
        "create_guest_memfd(5, 0x1000, 0x0)",
        "fstat(-1)",
        "create_guest_memfd(5, 0x1000, 0x0)",
        "mmap(7, 0x2000, 0, 3, 1)",
        "load(0x0, 1)",
        "store(0xffffffffffffffff, [1])",
        "madvise(0xfff, 0x1000, 4)",
        "munmap(0xffffffffffffffff, 0x2000)",
        "create_vcpu(5, 0)",
        "guest_load(-1, 0x0, 1, None)",
        "drop",
    ];
    assert_eq!(log, expected);
}

#[test]
fn close_and_munmap_leave_names_bound() {
    let bench = Bench::new();
    bench.errno("fstat", Errno::EBADF);
    let source = "vm = create_vm\n\
                  g = create_guest_memfd vm size=4K\n\
                  m = mmap g len=4K\n\
                  close g\n\
                  fstat g => EBADF\n\
                  munmap m\n\
                  load m offset=8 len=1\n";
    let (report, output) = bench.check(source);
    assert_eq!(output, lines(&["1: ok", "2: ok", "3: ok", "4: ok", "5: EBADF", "6: ok", "7: ok 2a"]));
    assert_eq!(report.exit_status(), 0);
    assert_eq!(
        bench.log()[4..8],
        ["close(4)", "fstat(4)", "munmap(0x7f0000000000, 0x1000)", "load(0x7f0000000008, 1)"]
    );
}

#[test]
fn names_stand_for_their_numbers() {
    let bench = Bench::new();
    let source = "vm = create_vm\n\
                  g = create_guest_memfd vm size=2M\n\
                  m = mmap g len=2M\n\
                  set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=2M uaddr=m guest_memfd=g guest_memfd_offset=4K\n\
                  set_user_memory_region2 vm slot=-1 gpa=0 size=4K uaddr=0x1000 guest_memfd=-1\n\
                  set_user_memory_region2 vm slot=1 gpa=0 size=4K uaddr=g guest_memfd=m\n\
                  check_extension GUEST_MEMFD\n\
                  check_extension 77 10\n\
                  fstat m\n\
                  close 0x100000001\n";
    bench.run(source);
    assert_eq!(
        bench.log()[4..],
        [
            "set_user_memory_region2(3, slot=0x0 flags=0x4 gpa=0x0 size=0x200000 uaddr=0x7f0000000000 offset=0x1000 gmem=0x4)",
            "set_user_memory_region2(3, slot=0xffffffff flags=0x0 gpa=0x0 size=0x1000 uaddr=0x1000 offset=0x0 gmem=0xffffffff)",
            "set_user_memory_region2(3, slot=0x1 flags=0x0 gpa=0x0 size=0x1000 uaddr=0x4 offset=0x0 gmem=0x0)",
            "check_extension(None, 234)",
            "check_extension(Some(77), 10)",
            "fstat(0)",
            "close(1)",
            "drop",
        ]
    );
}

#[test]
fn uaddr_auto_maps_fresh_memory_per_call() {
    let bench = Bench::new();
    bench.errno("map_anonymous", Errno::ENOMEM);
    let source = "vm = create_vm\n\
                  set_user_memory_region2 vm slot=0 gpa=0 size=1M\n\
                  set_user_memory_region2 vm slot=0 gpa=0 size=2M uaddr=auto\n\
                  set_user_memory_region2 vm slot=1 gpa=0 size=2M\n\
                  set_user_memory_region2 vm slot=2 gpa=0 size=0\n";
    let output = bench.run(source);
    // A slot no mapping can hold: the ioctl still runs, with uaddr 0, and gives its own answer.
    assert_eq!(output, lines(&["1: ok", "2: ok", "3: ok", "4: ok", "5: ok"]));
    assert_eq!(
        bench.log()[2..],
        [
            "map_anonymous(0x100000)",
            "set_user_memory_region2(3, slot=0x0 flags=0x0 gpa=0x0 size=0x100000 uaddr=0x0 offset=0x0 gmem=0x0)",
            "map_anonymous(0x200000)",
            "set_user_memory_region2(3, slot=0x0 flags=0x0 gpa=0x0 size=0x200000 uaddr=0x7f0000100000 offset=0x0 gmem=0x0)",
            "map_anonymous(0x200000)",
            "set_user_memory_region2(3, slot=0x1 flags=0x0 gpa=0x0 size=0x200000 uaddr=0x7f0000200000 offset=0x0 gmem=0x0)",
            "set_user_memory_region2(3, slot=0x2 flags=0x0 gpa=0x0 size=0x0 uaddr=0x0 offset=0x0 gmem=0x0)",
            "drop",
        ]
    );
}

#[test]
fn check_marks_mismatches_and_sets_the_exit_status() {
    let bench = Bench::new();
    bench.errno("create_guest_memfd", Errno::EINVAL);
    let source = "vm = create_vm   => ok\n\
                  check_extension vm GUEST_MEMFD_FLAGS =>   ok    3\n\
                  create_guest_memfd vm size=0 => EINVAL\n\
                  g = create_guest_memfd vm size=4K => EINVAL  # wrong on purpose\n\
                  fstat g => ok size=4096\n\
                  read g len=1\n";
    let (report, output) = bench.check(source);
    assert_eq!(
        output,
        lines(&[
            "1: ok",
            "2: ok 3",
            "3: EINVAL",
            "4: ok (expected EINVAL)",
            "5: ok size=2097152 blksize=4096 blocks=8 mode=0o100600 (expected ok size=4096)",
            "6: ok 1",
        ])
    );
    assert_eq!(report.summary(), "5 expectations checked, 2 failed");
    assert_eq!(report.exit_status(), 1);
    let line4 = &report.lines[3];
    assert_eq!(
        *line4,
        LineReport {
            file: "t.gms".into(),
            line: 4,
            result: "ok".into(),
            details: vec![],
            expected: Some("EINVAL".into()),
            matched: Some(false),
        }
    );
    assert_eq!(report.lines[5].matched, None);
}

#[test]
fn without_check_expectations_are_not_marked_and_exit_is_zero() {
    let bench = Bench::new();
    let source = "vm = create_vm => EINVAL\n";
    let (report, output) = bench.run_files(&[("t.gms", source)], RunOptions::default());
    assert_eq!(output, "1: ok\n");
    assert_eq!(report.exit_status(), 0);
}

#[test]
fn all_expectations_met_exits_zero() {
    let bench = Bench::new();
    let (report, _) = bench.check("vm = create_vm => ok\nwarnings => ok 0\n");
    assert_eq!((report.checked(), report.failed(), report.exit_status()), (2, 0, 0));
    assert_eq!(report.summary(), "2 expectations checked, 0 failed");
}

#[test]
fn skips_are_compared_unless_skip_is_pass() {
    let source = "vm = create_vm\nc = create_vcpu vm => ok\nguest_store c gpa=0 bytes=00 => ok\n";
    let bench = Bench::new();
    let (report, output) = bench.check(source);
    assert_eq!(output, lines(&["1: ok", "2: ok", "3: skip not supported by this backend (expected ok)"]));
    assert_eq!(report.exit_status(), 1);

    let options = RunOptions { check: true, skip_is_pass: true };
    let (report, output) = Bench::new().run_files(&[("t.gms", source)], options);
    assert_eq!(output, lines(&["1: ok", "2: ok", "3: skip not supported by this backend"]));
    assert_eq!((report.checked(), report.failed(), report.exit_status()), (2, 0, 0));
}

#[test]
fn several_files_are_prefixed_and_each_runs_on_a_fresh_backend() {
    let bench = Bench::new();
    let first = "vm = create_vm\ng = create_guest_memfd vm size=4K => EINVAL\n";
    let second = "\nvm = create_vm\nfstat 3\n";
    let options = RunOptions { check: true, skip_is_pass: false };
    let (report, output) = bench.run_files(&[("a.gms", first), ("dir/b.gms", second)], options);
    assert_eq!(
        output,
        lines(&[
            "a.gms:1: ok",
            "a.gms:2: ok (expected EINVAL)",
            "dir/b.gms:2: ok",
            "dir/b.gms:3: ok size=2097152 blksize=4096 blocks=8 mode=0o100600"
        ])
    );
    assert_eq!(
        bench.log(),
        [
            "new",
            "create_vm(0)",
            "create_guest_memfd(3, 0x1000, 0x0)",
            "drop",
            "new",
            "create_vm(0)",
            "fstat(3)",
            "drop",
        ]
    );
    assert_eq!(report.lines[2].file, "dir/b.gms");
    assert_eq!(report.exit_status(), 1);
}

#[test]
fn a_factory_error_stops_the_run() {
    let programs = vec![parse("a.gms", "create_vm\n").expect("parses")];
    let mut factory = || -> Result<Box<dyn Backend>, String> { Err("no /dev/kvm".into()) };
    let mut out = Vec::new();
    let error = run(&programs, &mut factory, RunOptions::default(), &mut out).unwrap_err();
    assert!(matches!(&error, RunError::Backend { file, message } if file == "a.gms" && message == "no /dev/kvm"));
    assert_eq!(error.to_string(), "a.gms: no /dev/kvm");
    assert!(out.is_empty());
}

#[test]
fn output_is_deterministic() {
    let source =
        "vm = create_vm\ng = create_guest_memfd vm size=4K\nm = mmap g len=4K\nload m len=4\ncheck_invariants\n";
    assert_eq!(Bench::new().run(source), Bench::new().run(source));
}

#[test]
fn sev_fd_defaults_to_the_most_recent_open_dev_sev() {
    let bench = Bench::new();
    bench.errno("open_dev_sev", Errno::ENOENT);
    let out = bench.run(
        "vm = create_vm type=SEV_SNP\n\
         open_dev_sev\n\
         snp_launch_start vm\n\
         a = open_dev_sev\n\
         b = open_dev_sev\n\
         snp_launch_start vm\n\
         snp_launch_start vm sev_fd=a policy=RSVD_MBO\n",
    );
    assert_eq!(out, lines(&["1: ok", "2: ENOENT", "3: ok", "4: ok", "5: ok", "6: ok", "7: ok"]));
    let log = bench.state.borrow().log.clone();
    // A failed open leaves -1 as the default; then the latest descriptor (the mock numbers the
    // failed open too, so `a` is 5 and `b` 6); `sev_fd=` wins.
    assert!(log.contains(&"snp_launch_start(3, sev_fd=-1, policy=0x30000)".to_string()), "{log:?}");
    assert!(log.contains(&"snp_launch_start(3, sev_fd=6, policy=0x30000)".to_string()), "{log:?}");
    assert!(log.contains(&"snp_launch_start(3, sev_fd=5, policy=0x20000)".to_string()), "{log:?}");
}

#[test]
fn launch_update_records_print_uaddr_relative_to_its_source() {
    let bench = Bench::new();
    bench.fail("snp_launch_update", Failure::Sev { errno: Errno::EIO, fw_error: 0x16 });
    bench.fail("snp_launch_update", Failure::Sev { errno: Errno::EINVAL, fw_error: 0 });
    let out = bench.run(
        "vm = create_vm\n\
         img = mmap 3 len=8K\n\
         open_dev_sev\n\
         snp_launch_update vm gfn_start=0 len=4K bytes=00\n\
         snp_launch_update vm gfn_start=0 len=4K bytes=00\n\
         snp_launch_update vm gfn_start=2 len=8K uaddr=img\n\
         snp_launch_update vm gfn_start=4 len=8K bytes=2a\n\
         snp_launch_update vm gfn_start=6 len=8K uaddr=0x10000\n\
         psc 5 ghcb=0x1000 gpa=0x7000 npages=3 op=SHARED size=2M\n",
    );
    assert_eq!(
        out,
        lines(&[
            "1: ok",
            "2: ok",
            "3: ok",
            "4: EIO fw_error=INVALID_PARAM",
            "5: EINVAL",
            "6: ok gfn_start=3 len=4096 uaddr=img+0x1000",
            "7: ok gfn_start=5 len=4096 uaddr=bytes+0x1000",
            "8: ok gfn_start=7 len=4096 uaddr=0x11000",
            "9: ok status=0x0",
        ])
    );
    let log = bench.state.borrow().log.clone();
    assert!(log.contains(&"psc(5, 0x1000, 0x7000, 3, 2, true)".to_string()), "{log:?}");
    assert!(
        log.iter().any(|call| call
            .starts_with("snp_launch_update(3, sev_fd=4, gfn_start=0x2 len=0x2000 type=1 uaddr=0x7f0000000000")),
        "{log:?}"
    );
}

#[test]
fn tdx_verbs_build_the_kernels_parameters_and_print_the_region() {
    let bench = Bench::new();
    bench.fail("tdx_init_vm", Failure::tdx(Errno::EINVAL, 0xC000_0100_0000_0001));
    bench.fail("tdx_init_mem_region", Failure::tdx(Errno::EBUSY, 0));
    let out = bench.run(
        "vm = create_vm type=TDX\n\
         tdx_init_vm vm attributes=PKS\n\
         tdx_init_vm vm gpaw=0 xfam=3 cpuid=7.0:0:0x800,0x40000000:1:2:3:4 flags=1\n\
         v = create_vcpu vm\n\
         img = mmap 3 len=8K\n\
         tdx_init_mem_region v gpa=0x2000 size=8K source=img measure=1\n\
         tdx_init_mem_region v gpa=0 size=8K bytes=2a\n\
         tdx_init_mem_region v gpa=0 nr_pages=1 source=0x10000 flags=2\n",
    );
    assert_eq!(
        out,
        lines(&[
            "1: ok",
            "2: EINVAL hw_error=OPERAND_INVALID|RCX",
            "3: ok",
            "4: ok",
            "5: ok",
            // The scripted EBUSY comes after one page: the region advanced is printed.
            "6: EBUSY source_addr=img+0x1000 gpa=0x3000 nr_pages=1",
            "7: ok source_addr=bytes+0x1000 gpa=0x1000 nr_pages=1",
            "8: ok source_addr=0x11000 gpa=0x1000 nr_pages=0",
        ])
    );
    let log = bench.log();
    let call = |prefix: &str| log.iter().filter(|c| c.starts_with(prefix)).cloned().collect::<Vec<_>>();
    assert_eq!(
        call("tdx_init_vm"),
        [
            // GPAW 48 in leaf 0x80000008's EAX[23:16], no significant index.
            "tdx_init_vm(3, flags=0, attributes=0x40000000, xfam=0x0, cpuid=[0x80000008.0/0:0x300000:0x0:0x0:0x0])",
            // No GPAW entry; `.0` makes the index significant (flag 1).
            "tdx_init_vm(3, flags=1, attributes=0x10000000, xfam=0x3, cpuid=[0x7.0/1:0x0:0x800:0x0:0x0 \
             0x40000000.0/0:0x1:0x2:0x3:0x4])",
        ]
    );
    let regions = call("tdx_init_mem_region");
    assert_eq!(regions.len(), 3);
    assert!(regions[0].starts_with("tdx_init_mem_region(4, flags=1, source=0x7f0000000000, gpa=0x2000, nr_pages=2"));
    assert!(regions[1].ends_with("gpa=0x0, nr_pages=2, bytes=Some([42]))"), "{regions:?}");
    assert!(regions[2].starts_with("tdx_init_mem_region(4, flags=2, source=0x10000, gpa=0x0, nr_pages=1"));
}

#[test]
fn tdx_guest_verbs_pass_rcx_and_the_shared_bit_and_print_statuses() {
    let bench = Bench::new();
    let hypercall = VcpuExit {
        reason: "HYPERCALL".into(),
        fields: vec![
            ("nr".into(), "12".into()),
            ("args".into(), "0x100000,0x200,0x0".into()),
            ("flags".into(), "0x1".into()),
        ],
    };
    bench
        .fail(
            "tdx_accept",
            Failure::GuestException {
                vector: "#VE".into(),
                fields: vec![("gpa".into(), "0x40000".into()), ("reason".into(), "ept-violation-pending-page".into())],
            },
        )
        .fail("tdx_map_gpa", Failure::Exit(hypercall.clone()))
        .fail("complete_hypercall", Failure::Exit(hypercall))
        .errno("tdx_shared_bit", Errno::EINVAL)
        .errno("guest_load", Errno::EIO);
    let out = bench.run(
        "vm = create_vm type=TDX\n\
         v = create_vcpu vm\n\
         tdx_accept v gpa=0x40000\n\
         tdx_accept v gpa=0x40000 size=2M shared=1\n\
         tdx_map_gpa v gpa=0x100000 size=5M shared=1\n\
         guest_load v gpa=0x40000 len=1 shared=1\n\
         tdx_map_gpa v gpa=0x100800 size=1G\n\
         complete_hypercall v\n\
         queue_event v\n\
         complete_hypercall v ret=1\n\
         guest_load v gpa=0x40000 len=1 shared=1\n\
         guest_load v gpa=0x40000 len=2 private=1\n\
         tdx_accept v gpa=0x1008 size=1G\n\
         tdx_accept v gpa=0x40000 size=2M shared=1\n",
    );
    assert_eq!(
        out,
        lines(&[
            "1: ok",
            "2: ok",
            "3: guest #VE gpa=0x40000 reason=ept-violation-pending-page",
            // The shared bit could not be found: no ACCEPT is made.
            "4: EINVAL",
            "5: exit HYPERCALL nr=12 args=0x100000,0x200,0x0 flags=0x1",
            "6: EIO",
            "7: ok status=ALIGN_ERROR r11=0x100800",
            "8: exit HYPERCALL nr=12 args=0x100000,0x200,0x0 flags=0x1",
            "9: ok",
            "10: ok status=RETRY r11=0x800000300000",
            "11: ok 00",
            "12: ok 0000",
            "13: ok SUCCESS",
            "14: ok SUCCESS",
        ])
    );
    let log = bench.log();
    let calls: Vec<&str> = log.iter().skip(3).map(String::as_str).collect();
    assert_eq!(
        calls,
        [
            "tdx_accept(4, 0x40000)",
            "tdx_shared_bit(4)",
            "tdx_shared_bit(4)",
            "tdx_map_gpa(4, 0x800000100000, 0x500000)",
            "tdx_shared_bit(4)",
            "guest_load(4, 0x800000040000, 1, None)",
            "tdx_map_gpa(4, 0x100800, 0x40000000)",
            "complete_hypercall(4, 0x0)",
            "queue_event(4)",
            "complete_hypercall(4, 0x1)",
            "tdx_shared_bit(4)",
            "guest_load(4, 0x800000040000, 1, None)",
            "guest_load(4, 0x40000, 2, Some(true))",
            // RCX: the gpa as written (its low bits too), the level (2: 1G) in bits 2:0.
            "tdx_accept(4, 0x100a)",
            "tdx_shared_bit(4)",
            "tdx_accept(4, 0x800000040001)",
            "drop",
        ]
    );
}
