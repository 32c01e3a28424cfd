//! Unit tests of the lexer and parser: value forms, every verb with its defaults, and every
//! error class with its position.

use super::op::{Handle, HandleKind, LaunchSource, Op, UserAddr, VERBS};
use super::{parse, Line, Program};

/// Binds `vm` (a VM), `g` (a guest_memfd), `m` (a mapping) and `c` (a vCPU) on lines 1-4.
const PRELUDE: &str = "vm = create_vm\n\
                       g = create_guest_memfd vm size=4K\n\
                       m = mmap g len=4K\n\
                       c = create_vcpu vm\n";

/// The op of `line` written after the prelude.
fn op(line: &str) -> Op {
    let program =
        parse("t.gms", &format!("{PRELUDE}{line}\n")).unwrap_or_else(|e| panic!("`{line}` should parse: {e}"));
    program.lines.last().expect("a line").op.clone()
}

/// The parse error of `source` (no prelude), as displayed.
fn error(source: &str) -> String {
    match parse("t.gms", source) {
        Ok(program) => panic!("`{source}` should not parse: {program:?}"),
        Err(e) => e.to_string(),
    }
}

/// The parse error of `line` written after the prelude (so it is on line 5).
fn error_after_prelude(line: &str) -> String {
    error(&format!("{PRELUDE}{line}\n"))
}

fn name(text: &str) -> Handle {
    Handle::Name(text.to_string())
}

fn create_vm_type(value: &str) -> u64 {
    match op(&format!("create_vm type={value}")) {
        Op::CreateVm { vm_type } => vm_type,
        other => panic!("unexpected {other:?}"),
    }
}

fn guest_memfd_size(value: &str) -> u64 {
    match op(&format!("create_guest_memfd vm size={value}")) {
        Op::CreateGuestMemfd { size, .. } => size,
        other => panic!("unexpected {other:?}"),
    }
}

fn fallocate_mode(value: &str) -> u64 {
    match op(&format!("fallocate g mode={value} len=1")) {
        Op::Fallocate { mode, .. } => mode,
        other => panic!("unexpected {other:?}"),
    }
}

// ---- values ----

#[test]
fn integers_decimal_hex_negative_and_suffixes() {
    assert_eq!(guest_memfd_size("0"), 0);
    assert_eq!(guest_memfd_size("4097"), 4097);
    assert_eq!(guest_memfd_size("0x1000"), 0x1000);
    assert_eq!(guest_memfd_size("0xfFfF"), 0xffff);
    assert_eq!(guest_memfd_size("4K"), 4096);
    assert_eq!(guest_memfd_size("2M"), 2 * 1024 * 1024);
    assert_eq!(guest_memfd_size("3G"), 3 << 30);
    assert_eq!(guest_memfd_size("1T"), 1 << 40);
    assert_eq!(guest_memfd_size("0x10K"), 16 * 1024);
    assert_eq!(guest_memfd_size("-4096"), 0xffff_ffff_ffff_f000);
    assert_eq!(guest_memfd_size("-1"), u64::MAX);
    assert_eq!(guest_memfd_size("-0"), 0);
    assert_eq!(guest_memfd_size("-4K"), 0xffff_ffff_ffff_f000);
    assert_eq!(guest_memfd_size("18446744073709551615"), u64::MAX);
    assert_eq!(guest_memfd_size("0xffffffffffffffff"), u64::MAX);
    assert_eq!(guest_memfd_size("-0x8000000000000000"), 1 << 63);
}

#[test]
fn integer_overflow_and_malformed_integers_are_errors() {
    let cases = [
        ("18446744073709551616", "integer `18446744073709551616` does not fit in 64 bits"),
        ("0x10000000000000000", "integer `0x10000000000000000` does not fit in 64 bits"),
        ("16777216T", "integer `16777216T` does not fit in 64 bits"),
        ("-0x8000000000000001", "integer `-0x8000000000000001` does not fit in 64 bits"),
        ("4k", "`4k` is not an integer"),
        ("0x", "`0x` is not an integer"),
        ("-", "`-` is not an integer"),
        ("+4", "`+4` is not an integer"),
        ("1_000", "`1_000` is not an integer"),
        ("4KK", "`4KK` is not an integer"),
        ("0X10", "`0X10` is not an integer"),
    ];
    for (value, message) in cases {
        let line = format!("create_guest_memfd vm size={value}");
        assert_eq!(error_after_prelude(&line), format!("t.gms:5:28: {message}"), "{value}");
    }
}

#[test]
fn a_name_where_a_number_is_needed_is_an_error() {
    assert_eq!(error_after_prelude("create_guest_memfd vm size=g"), "t.gms:5:28: `g` is not an integer");
}

#[test]
fn flag_sets_mix_names_and_integers() {
    assert_eq!(fallocate_mode("KEEP_SIZE"), 1);
    assert_eq!(fallocate_mode("KEEP_SIZE|PUNCH_HOLE"), 3);
    assert_eq!(fallocate_mode("0"), 0);
    assert_eq!(fallocate_mode("WRITE_ZEROES|0x100"), 0x180);
    assert_eq!(fallocate_mode("ZERO_RANGE|ZERO_RANGE"), 0x10);
    assert_eq!(fallocate_mode("COLLAPSE_RANGE|INSERT_RANGE|UNSHARE_RANGE"), 0x68);
    let flags = |value: &str| match op(&format!("create_guest_memfd vm size=4K flags={value}")) {
        Op::CreateGuestMemfd { flags, .. } => flags,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(flags("MMAP|INIT_SHARED"), 3);
    assert_eq!(flags("MMAP|0x8"), 9);
    assert_eq!(flags("-1"), u64::MAX);
}

#[test]
fn flag_names_belong_to_their_argument() {
    assert_eq!(
        error_after_prelude("fallocate g mode=MMAP len=1"),
        "t.gms:5:18: unknown fallocate mode `MMAP` (expected KEEP_SIZE, PUNCH_HOLE, \
         COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE, UNSHARE_RANGE, WRITE_ZEROES or a number)"
    );
    assert_eq!(
        error_after_prelude("mmap g len=4K prot=READ|SHARED"),
        "t.gms:5:20: unknown mmap prot `SHARED` (expected NONE, READ, WRITE, EXEC or a number)"
    );
    assert_eq!(
        error_after_prelude("set_memory_attributes vm address=0 size=4K attributes=8 flags=PRIVATE"),
        "t.gms:5:63: expected a number, found `PRIVATE`"
    );
    assert_eq!(
        error_after_prelude("fallocate g mode=KEEP_SIZE| len=1"),
        "t.gms:5:18: empty element in fallocate mode `KEEP_SIZE|`"
    );
    assert_eq!(
        error_after_prelude("fallocate g mode=keep_size len=1"),
        "t.gms:5:18: unknown fallocate mode `keep_size` (expected KEEP_SIZE, PUNCH_HOLE, \
         COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE, UNSHARE_RANGE, WRITE_ZEROES or a number)"
    );
}

#[test]
fn constants_are_single_names_or_integers() {
    assert_eq!(create_vm_type("DEFAULT"), 0);
    assert_eq!(create_vm_type("SW_PROTECTED"), 1);
    assert_eq!(create_vm_type("SEV"), 2);
    assert_eq!(create_vm_type("SEV_ES"), 3);
    assert_eq!(create_vm_type("SEV_SNP"), 4);
    assert_eq!(create_vm_type("TDX"), 5);
    assert_eq!(create_vm_type("7"), 7);
    assert_eq!(
        error_after_prelude("create_vm type=SEV|TDX"),
        "t.gms:5:16: unknown VM type `SEV|TDX` (expected DEFAULT, SW_PROTECTED, SEV, SEV_ES, \
         SEV_SNP, TDX or a number)"
    );
}

#[test]
fn byte_strings() {
    let bytes = |value: &str| match op(&format!("store m offset=1 bytes={value}")) {
        Op::Store { bytes, .. } => bytes,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(bytes("2a00ff"), vec![0x2a, 0x00, 0xff]);
    assert_eq!(bytes("ABcd"), vec![0xab, 0xcd]);
    assert_eq!(error_after_prelude("store m bytes=2a0"), "t.gms:5:15: byte string `2a0` has an odd number of digits");
    assert_eq!(error_after_prelude("store m bytes=0x2a"), "t.gms:5:15: `0x2a` is not a hexadecimal byte string");
    assert_eq!(error_after_prelude("store m bytes=é0"), "t.gms:5:15: `é0` is not a hexadecimal byte string");
}

#[test]
fn thirty_two_bit_fields_take_the_low_bits() {
    let Op::SetUserMemoryRegion2 { slot, flags, guest_memfd, .. } =
        op("set_user_memory_region2 vm slot=-1 flags=0x100000004 gpa=0 size=0 guest_memfd=-1")
    else {
        panic!("not a memslot op");
    };
    assert_eq!(slot, 0xffff_ffff);
    assert_eq!(flags, 4);
    // The descriptor is truncated when the line runs (a name stands for its number).
    assert_eq!(guest_memfd, Handle::Number(u64::MAX));
}

#[test]
fn booleans_are_zero_or_one() {
    let private = |value: &str| match op(&format!("guest_load c gpa=0 len=1 private={value}")) {
        Op::GuestLoad { private, .. } => private,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(private("0"), Some(false));
    assert_eq!(private("1"), Some(true));
    assert_eq!(error_after_prelude("guest_load c gpa=0 len=1 private=2"), "t.gms:5:34: expected 0 or 1, found `2`");
}

// ---- every verb with its defaults ----

#[test]
fn host_verbs_with_defaults() {
    let cases: Vec<(&str, Op)> = vec![
        ("create_vm", Op::CreateVm { vm_type: 0 }),
        ("check_extension GUEST_MEMFD", Op::CheckExtension { vm: None, cap: 234 }),
        ("check_extension 10", Op::CheckExtension { vm: None, cap: 10 }),
        ("check_extension vm GUEST_MEMFD_FLAGS", Op::CheckExtension { vm: Some(name("vm")), cap: 244 }),
        ("check_extension 3 VM_TYPES", Op::CheckExtension { vm: Some(Handle::Number(3)), cap: 235 }),
        ("create_guest_memfd vm size=2M", Op::CreateGuestMemfd { vm: name("vm"), size: 2 << 20, flags: 0 }),
        (
            "set_user_memory_region2 vm slot=1 gpa=1M size=1M",
            Op::SetUserMemoryRegion2 {
                vm: name("vm"),
                slot: 1,
                flags: 0,
                gpa: 1 << 20,
                size: 1 << 20,
                uaddr: UserAddr::Auto,
                guest_memfd: Handle::Number(0),
                guest_memfd_offset: 0,
            },
        ),
        (
            "set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD|READONLY|LOG_DIRTY_PAGES gpa=0 \
             size=4K uaddr=m guest_memfd=g guest_memfd_offset=512K",
            Op::SetUserMemoryRegion2 {
                vm: name("vm"),
                slot: 0,
                flags: 7,
                gpa: 0,
                size: 4096,
                uaddr: UserAddr::Given(name("m")),
                guest_memfd: name("g"),
                guest_memfd_offset: 512 << 10,
            },
        ),
        (
            "set_memory_attributes vm address=0 size=4K attributes=PRIVATE",
            Op::SetMemoryAttributes { vm: name("vm"), address: 0, size: 4096, attributes: 8, flags: 0 },
        ),
        ("fallocate g mode=KEEP_SIZE len=4K", Op::Fallocate { fd: name("g"), mode: 1, offset: 0, len: 4096 }),
        ("fstat g", Op::Fstat { fd: name("g") }),
        ("fstat 1", Op::Fstat { fd: Handle::Number(1) }),
        ("ftruncate g size=8K", Op::Ftruncate { fd: name("g"), size: 8192 }),
        ("read g len=64", Op::Read { fd: name("g"), len: 64 }),
        ("write g len=64", Op::Write { fd: name("g"), len: 64 }),
        ("pread g len=64", Op::Pread { fd: name("g"), len: 64, offset: 0 }),
        ("pwrite g len=64 offset=4K", Op::Pwrite { fd: name("g"), len: 64, offset: 4096 }),
        ("lseek g whence=END", Op::Lseek { fd: name("g"), offset: 0, whence: 2 }),
        ("lseek g offset=-1 whence=CUR", Op::Lseek { fd: name("g"), offset: u64::MAX, whence: 1 }),
        ("mmap g len=2M", Op::Mmap { fd: name("g"), len: 2 << 20, offset: 0, prot: 3, flags: 1 }),
        (
            "mmap g len=4K offset=4K prot=NONE flags=PRIVATE",
            Op::Mmap { fd: name("g"), len: 4096, offset: 4096, prot: 0, flags: 2 },
        ),
        ("munmap m", Op::Munmap { map: "m".into() }),
        ("store m bytes=2a", Op::Store { map: "m".into(), offset: 0, bytes: vec![0x2a] }),
        ("load m offset=0x1000 len=2", Op::Load { map: "m".into(), offset: 0x1000, len: 2 }),
        ("madvise m len=4K advice=REMOVE", Op::Madvise { map: "m".into(), offset: 0, len: 4096, advice: 9 }),
        ("madvise m len=4K advice=GUARD_INSTALL", Op::Madvise { map: "m".into(), offset: 0, len: 4096, advice: 102 }),
        ("mlock m offset=4K len=8K", Op::Mlock { map: "m".into(), offset: 4096, len: 8192 }),
        ("munlock m len=4K", Op::Munlock { map: "m".into(), offset: 0, len: 4096 }),
        ("close g", Op::Close { handle: name("g") }),
        ("close m", Op::Close { handle: name("m") }),
        ("close -1", Op::Close { handle: Handle::Number(u64::MAX) }),
    ];
    for (line, expected) in cases {
        assert_eq!(op(line), expected, "{line}");
        let verb = line.split_whitespace().next().unwrap();
        assert_eq!(expected.verb(), verb, "Op::verb of {line}");
        assert!(VERBS.contains(&verb));
    }
}

#[test]
fn guest_and_simulator_verbs_with_defaults() {
    let cases: Vec<(&str, Op)> = vec![
        ("create_vcpu vm", Op::CreateVcpu { vm: name("vm"), id: 0 }),
        ("create_vcpu vm id=3", Op::CreateVcpu { vm: name("vm"), id: 3 }),
        (
            "guest_store c gpa=0x2000 bytes=01",
            Op::GuestStore { vcpu: name("c"), gpa: 0x2000, bytes: vec![1], private: None, shared: false },
        ),
        (
            "guest_load c gpa=0x2000 len=4 private=1",
            Op::GuestLoad { vcpu: name("c"), gpa: 0x2000, len: 4, private: Some(true), shared: false },
        ),
        (
            "guest_store c gpa=0x2000 bytes=01 shared=1",
            Op::GuestStore { vcpu: name("c"), gpa: 0x2000, bytes: vec![1], private: None, shared: true },
        ),
        (
            "guest_load c gpa=0x2000 len=4 shared=0",
            Op::GuestLoad { vcpu: name("c"), gpa: 0x2000, len: 4, private: None, shared: false },
        ),
        ("pre_fault_memory c gpa=0 size=2M", Op::PreFaultMemory { vcpu: name("c"), gpa: 0, size: 2 << 20 }),
        ("populate vm gpa=0 npages=2", Op::Populate { vm: name("vm"), gpa: 0, npages: 2, bytes: None }),
        (
            "populate vm gpa=0 npages=1 bytes=ff",
            Op::Populate { vm: name("vm"), gpa: 0, npages: 1, bytes: Some(vec![0xff]) },
        ),
        ("inject_memory_failure g", Op::InjectMemoryFailure { fd: name("g"), offset: 0 }),
        ("inject_memory_failure g offset=8K", Op::InjectMemoryFailure { fd: name("g"), offset: 8192 }),
        ("inject ENOMEM", Op::Inject { fault: "ENOMEM".into(), count: 1, after: 0 }),
        ("inject signal count=2 after=3", Op::Inject { fault: "signal".into(), count: 2, after: 3 }),
        ("inject gmem_prepare count=2 after=1", Op::Inject { fault: "gmem_prepare".into(), count: 2, after: 1 }),
        ("warnings", Op::Warnings),
        ("check_invariants", Op::CheckInvariants),
        ("dump", Op::Dump { target: None }),
        ("dump g", Op::Dump { target: Some(name("g")) }),
    ];
    for (line, expected) in cases {
        assert_eq!(op(line), expected, "{line}");
        let verb = line.split_whitespace().next().unwrap();
        assert_eq!(expected.verb(), verb, "Op::verb of {line}");
        assert!(VERBS.contains(&verb));
    }
}

#[test]
fn every_listed_verb_is_known_to_the_parser() {
    for verb in VERBS {
        let message = error_after_prelude(&format!("{verb} bogus_key=1"));
        assert!(message.contains("unknown key `bogus_key`"), "{verb}: {message}");
    }
}

#[test]
fn handle_kinds() {
    assert_eq!(op("x = create_vm").handle_kind(), Some(HandleKind::Vm));
    assert_eq!(op("x = mmap g len=1").handle_kind(), Some(HandleKind::Mapping));
    assert_eq!(op("fstat g").handle_kind(), None);
}

// ---- lines, names, comments, expectations ----

#[test]
fn lines_bindings_comments_and_expectations() {
    let source = "# a comment\n\
                  \n\
                  vm = create_vm type=DEFAULT   # trailing comment\n\
                  check_extension vm   GUEST_MEMFD_FLAGS  =>  ok   3  # comment after\n\
                  g=create_guest_memfd vm size=0 => EINVAL\r\n\
                  \t   \n";
    let program = parse("x.gms", source).expect("parses");
    let expected = Program {
        file: "x.gms".into(),
        lines: vec![
            Line { number: 3, binding: Some("vm".into()), op: Op::CreateVm { vm_type: 0 }, expected: None },
            Line {
                number: 4,
                binding: None,
                op: Op::CheckExtension { vm: Some(name("vm")), cap: 244 },
                expected: Some("ok   3".into()),
            },
            Line {
                number: 5,
                binding: Some("g".into()),
                op: Op::CreateGuestMemfd { vm: name("vm"), size: 0, flags: 0 },
                expected: Some("EINVAL".into()),
            },
        ],
    };
    assert_eq!(program, expected);
}

#[test]
fn rebinding_replaces_the_kind_of_a_name() {
    assert!(parse("t.gms", "vm = create_vm\nx = create_guest_memfd vm size=4K\nx = mmap x len=4K\nstore x bytes=00\n")
        .is_ok());
    assert_eq!(
        error("vm = create_vm\nx = create_guest_memfd vm size=4K\nm = mmap x len=4K\nm = create_vm\nload m len=1\n"),
        "t.gms:5:6: `m` is not a mapping (it was bound by create_vm)"
    );
}

#[test]
fn a_name_is_bound_only_after_its_line() {
    assert_eq!(error("vm = create_guest_memfd vm size=4K\n"), "t.gms:1:25: unbound name `vm`");
}

#[test]
fn mapping_verbs_need_a_name_bound_by_mmap() {
    for verb in ["munmap", "store", "load", "madvise", "mlock", "munlock"] {
        let line = format!("{verb} g");
        let column = verb.len() + 2;
        assert_eq!(
            error_after_prelude(&line),
            format!("t.gms:5:{column}: `g` is not a mapping (it was bound by create_guest_memfd)"),
        );
    }
    assert_eq!(error_after_prelude("load 0x1000 len=1"), "t.gms:5:6: expected a name bound by mmap, found `0x1000`");
    assert_eq!(error_after_prelude("load nope len=1"), "t.gms:5:6: unbound name `nope`");
    assert_eq!(error_after_prelude("munmap"), "t.gms:5:1: munmap needs a MAP argument (a name bound by mmap)");
}

#[test]
fn names_stand_for_numbers_in_handle_arguments() {
    assert_eq!(op("fstat m"), Op::Fstat { fd: name("m") });
    assert_eq!(
        op("set_user_memory_region2 vm slot=0 gpa=0 size=4K uaddr=vm guest_memfd=m"),
        Op::SetUserMemoryRegion2 {
            vm: name("vm"),
            slot: 0,
            flags: 0,
            gpa: 0,
            size: 4096,
            uaddr: UserAddr::Given(name("vm")),
            guest_memfd: name("m"),
            guest_memfd_offset: 0,
        }
    );
    assert_eq!(
        op("set_user_memory_region2 vm slot=0 gpa=0 size=4K uaddr=0x7000 guest_memfd=3"),
        Op::SetUserMemoryRegion2 {
            vm: name("vm"),
            slot: 0,
            flags: 0,
            gpa: 0,
            size: 4096,
            uaddr: UserAddr::Given(Handle::Number(0x7000)),
            guest_memfd: Handle::Number(3),
            guest_memfd_offset: 0,
        }
    );
}

// ---- error classes with their positions ----

#[test]
fn structural_errors() {
    let cases = [
        ("frobnicate vm", "t.gms:1:1: unknown verb `frobnicate`"),
        ("  x = frobnicate", "t.gms:1:7: unknown verb `frobnicate`"),
        ("x =", "t.gms:1:3: missing verb after `=`"),
        ("= create_vm", "t.gms:1:1: unexpected `=`"),
        ("x = = create_vm", "t.gms:1:5: unexpected `=`"),
        ("=> ok", "t.gms:1:1: expectation without a verb"),
        ("create_vm =>", "t.gms:1:11: empty expectation"),
        ("create_vm =>   # nothing", "t.gms:1:11: empty expectation"),
        ("Vm = create_vm", "t.gms:1:1: `Vm` is not a name ([a-z][a-z0-9_]*)"),
        ("1x = create_vm", "t.gms:1:1: `1x` is not a name ([a-z][a-z0-9_]*)"),
        ("auto = create_vm", "t.gms:1:1: `auto` is reserved (uaddr=auto)"),
        ("x = warnings", "t.gms:1:1: `x` cannot be bound: this verb returns no handle"),
        ("create_vm type =1", "t.gms:1:16: no spaces allowed around `=` in key=value"),
        ("create_vm type= 1", "t.gms:1:11: missing value after `type=`"),
        ("create_vm type=", "t.gms:1:11: missing value after `type=`"),
        ("create_vm type=1=2", "t.gms:1:17: unexpected `=`"),
    ];
    for (source, message) in cases {
        assert_eq!(error(source), message, "{source}");
    }
}

#[test]
fn argument_errors() {
    let cases = [
        ("create_vm size=1", "t.gms:5:11: unknown key `size` for create_vm"),
        ("create_vm DEFAULT", "t.gms:5:11: unexpected argument `DEFAULT` for create_vm"),
        ("create_guest_memfd vm", "t.gms:5:1: create_guest_memfd needs `size=`"),
        ("create_guest_memfd size=4K", "t.gms:5:1: create_guest_memfd needs a VM argument"),
        ("create_guest_memfd vm size=1 size=2", "t.gms:5:30: duplicate key `size`"),
        ("create_guest_memfd vm sise=4K", "t.gms:5:23: unknown key `sise` for create_guest_memfd"),
        ("create_guest_memfd vm size=4K vm", "t.gms:5:31: unexpected argument `vm` for create_guest_memfd"),
        ("create_guest_memfd nope size=4K", "t.gms:5:20: unbound name `nope`"),
        ("create_guest_memfd VM size=4K", "t.gms:5:20: expected a name or an integer, found `VM`"),
        ("fstat 99999999999999999999", "t.gms:5:7: integer `99999999999999999999` does not fit in 64 bits"),
        ("check_extension", "t.gms:5:1: check_extension needs a CAP argument"),
        (
            "check_extension vm",
            "t.gms:5:17: unknown capability `vm` (expected USER_MEMORY2, \
          MEMORY_FAULT_INFO, MEMORY_ATTRIBUTES, GUEST_MEMFD, VM_TYPES, PRE_FAULT_MEMORY, \
          GUEST_MEMFD_FLAGS, EXIT_HYPERCALL or a number)",
        ),
        ("check_extension vm GUEST_MEMFD 1", "t.gms:5:32: unexpected argument `1` for check_extension"),
        ("inject", "t.gms:5:1: inject needs a FAULT argument"),
        ("inject gmem_prepare errno=EIO", "t.gms:5:21: unknown key `errno` for inject"),
        ("inject gmem_prepare count=x", "t.gms:5:27: `x` is not an integer"),
        ("set_user_memory_region2 vm slot=0 gpa=0 size=0 uaddr=nope", "t.gms:5:54: unbound name `nope`"),
        ("set_user_memory_region2 vm slot=0 gpa=0 size=0 guest_memfd=x1", "t.gms:5:60: unbound name `x1`"),
        ("lseek g offset=0", "t.gms:5:1: lseek needs `whence=`"),
        (
            "madvise m len=1 advice=FRE",
            concat!(
                "t.gms:5:24: unknown madvise advice `FRE` (expected NORMAL, RANDOM, SEQUENTIAL, WILLNEED, DONTNEED, ",
                "FREE, REMOVE, DONTFORK, DOFORK, MERGEABLE, UNMERGEABLE, HUGEPAGE, NOHUGEPAGE, DONTDUMP, DODUMP, ",
                "WIPEONFORK, KEEPONFORK, COLD, PAGEOUT, POPULATE_READ, POPULATE_WRITE, DONTNEED_LOCKED, COLLAPSE, ",
                "HWPOISON, SOFT_OFFLINE, GUARD_INSTALL, GUARD_REMOVE or a number)"
            ),
        ),
    ];
    for (line, message) in cases {
        assert_eq!(error_after_prelude(line), message, "{line}");
    }
}

#[test]
fn a_misspelt_key_is_reported_before_the_missing_one_and_values_before_missing_keys() {
    assert_eq!(error_after_prelude("fallocate g mode=BAD lenn=1"), "t.gms:5:22: unknown key `lenn` for fallocate");
    assert_eq!(
        error_after_prelude("fallocate g mode=BAD"),
        "t.gms:5:18: unknown fallocate mode `BAD` (expected KEEP_SIZE, PUNCH_HOLE, \
         COLLAPSE_RANGE, ZERO_RANGE, INSERT_RANGE, UNSHARE_RANGE, WRITE_ZEROES or a number)"
    );
}

#[test]
fn columns_count_characters_not_bytes() {
    assert_eq!(error("é = create_vm"), "t.gms:1:1: `é` is not a name ([a-z][a-z0-9_]*)");
    assert_eq!(
        error("create_vm type=é"),
        "t.gms:1:16: unknown VM type `é` (expected DEFAULT, \
        SW_PROTECTED, SEV, SEV_ES, SEV_SNP, TDX or a number)"
    );
    assert_eq!(error("créate_vm\tx=1"), "t.gms:1:1: unknown verb `créate_vm`");
    assert_eq!(error("create_vm\té=1"), "t.gms:1:11: unknown key `é` for create_vm");
}

#[test]
fn the_first_bad_line_is_reported() {
    assert_eq!(error("create_vm\nbad_verb\nalso_bad\n"), "t.gms:2:1: unknown verb `bad_verb`");
}

#[test]
fn the_spec_example_parses() {
    let example = "    vm = create_vm type=DEFAULT
    check_extension vm GUEST_MEMFD_FLAGS            => ok 3
    create_guest_memfd vm size=0                    => EINVAL
    create_guest_memfd vm size=4097                 => EINVAL
    g = create_guest_memfd vm size=2M flags=MMAP|INIT_SHARED
    fstat g                                         => ok size=2097152 blksize=4096 blocks=0 mode=0o100600
    fallocate g mode=0 offset=0 len=4K              => EOPNOTSUPP
    fallocate g mode=KEEP_SIZE offset=0 len=4K      => ok
    fallocate g mode=KEEP_SIZE offset=2M len=4K     => EINVAL
    m = mmap g len=2M
    store m offset=0x1000 bytes=2a2b
    load m offset=0x1000 len=2                      => ok 2a2b
    fallocate g mode=KEEP_SIZE|PUNCH_HOLE offset=0x1000 len=4K => ok
    load m offset=0x1000 len=2                      => ok 0000
    set_user_memory_region2 vm slot=0 flags=GUEST_MEMFD gpa=0 size=1M guest_memfd=g guest_memfd_offset=0 => ok
    set_user_memory_region2 vm slot=1 flags=GUEST_MEMFD gpa=1M size=1M guest_memfd=g guest_memfd_offset=512K => EINVAL
";
    let program = parse("example.gms", example).expect("the spec example parses");
    assert_eq!(program.lines.len(), 16);
    assert_eq!(program.lines[5].expected.as_deref(), Some("ok size=2097152 blksize=4096 blocks=0 mode=0o100600"));
    assert_eq!(program.lines[12].op, Op::Fallocate { fd: name("g"), mode: 3, offset: 0x1000, len: 4096 });
}

// ---- SEV-SNP verbs ----

/// The prelude plus `sev = open_dev_sev` on line 5 (so a line written after it is line 6).
fn op_after_dev_sev(line: &str) -> Op {
    op(&format!("sev = open_dev_sev\n{line}"))
}

#[test]
fn sev_host_verbs_with_defaults() {
    let cases: Vec<(&str, Op)> = vec![
        ("open_dev_sev", Op::OpenDevSev),
        ("sev_init2 vm", Op::SevInit2 { vm: name("vm"), vmsa_features: 0, ghcb_version: 0, flags: 0 }),
        (
            "sev_init2 vm vmsa_features=0x20 ghcb_version=0x10002 flags=-1",
            Op::SevInit2 { vm: name("vm"), vmsa_features: 0x20, ghcb_version: 2, flags: u32::MAX },
        ),
        ("snp_launch_start vm", Op::SnpLaunchStart { vm: name("vm"), sev_fd: None, policy: 0x30000, flags: 0 }),
        (
            "snp_launch_start vm sev_fd=g policy=SMT|RSVD_MBO|DEBUG|SINGLE_SOCKET|0x40000 flags=0x10001",
            Op::SnpLaunchStart { vm: name("vm"), sev_fd: Some(name("g")), policy: 0x1f0000, flags: 1 },
        ),
        (
            "snp_launch_update vm gfn_start=0 len=8K",
            Op::SnpLaunchUpdate {
                vm: name("vm"),
                sev_fd: None,
                gfn_start: 0,
                len: 8192,
                page_type: 1,
                source: LaunchSource::Address(Handle::Number(0)),
                flags: 0,
            },
        ),
        (
            "snp_launch_update vm sev_fd=3 gfn_start=2 len=4K type=CPUID uaddr=m flags=1",
            Op::SnpLaunchUpdate {
                vm: name("vm"),
                sev_fd: Some(Handle::Number(3)),
                gfn_start: 2,
                len: 4096,
                page_type: 6,
                source: LaunchSource::Address(name("m")),
                flags: 1,
            },
        ),
        (
            "snp_launch_update vm gfn_start=0 len=4K type=VMSA bytes=2a",
            Op::SnpLaunchUpdate {
                vm: name("vm"),
                sev_fd: None,
                gfn_start: 0,
                len: 4096,
                page_type: 2,
                source: LaunchSource::Bytes(vec![0x2a]),
                flags: 0,
            },
        ),
        (
            "snp_launch_update vm gfn_start=0 len=4K type=0x103",
            Op::SnpLaunchUpdate {
                vm: name("vm"),
                sev_fd: None,
                gfn_start: 0,
                len: 4096,
                page_type: 3,
                source: LaunchSource::Address(Handle::Number(0)),
                flags: 0,
            },
        ),
        (
            "snp_launch_finish vm",
            Op::SnpLaunchFinish { vm: name("vm"), sev_fd: None, host_data: vec![], id_block: None, flags: 0 },
        ),
        (
            "snp_launch_finish vm sev_fd=sev host_data=0102 id_block=ff flags=2",
            Op::SnpLaunchFinish {
                vm: name("vm"),
                sev_fd: Some(name("sev")),
                host_data: vec![1, 2],
                id_block: Some(vec![0xff]),
                flags: 2,
            },
        ),
        (
            "enable_cap vm EXIT_HYPERCALL arg0=0x1000",
            Op::EnableCap { vm: name("vm"), cap: 201, flags: 0, args: [0x1000, 0, 0, 0] },
        ),
        (
            "enable_cap vm 7 flags=1 arg0=1 arg1=2 arg2=3 arg3=4",
            Op::EnableCap { vm: name("vm"), cap: 7, flags: 1, args: [1, 2, 3, 4] },
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(op_after_dev_sev(line), expected, "{line}");
        let verb = line.split_whitespace().next().unwrap();
        assert_eq!(expected.verb(), verb, "Op::verb of {line}");
        assert!(VERBS.contains(&verb));
    }
}

#[test]
fn snp_guest_and_simulator_verbs_with_defaults() {
    let cases: Vec<(&str, Op)> = vec![
        ("pvalidate c gpa=0x5000", Op::Pvalidate { vcpu: name("c"), gpa: 0x5000, size_2m: false, validate: true }),
        (
            "pvalidate c gpa=0 size=2M validate=0",
            Op::Pvalidate { vcpu: name("c"), gpa: 0, size_2m: true, validate: false },
        ),
        ("pvalidate c gpa=0 size=0x1000", Op::Pvalidate { vcpu: name("c"), gpa: 0, size_2m: false, validate: true }),
        ("rmpadjust c gpa=0x3000 vmsa=1", Op::Rmpadjust { vcpu: name("c"), gpa: 0x3000, vmsa: true }),
        ("ghcb_register c gpa=0x101000", Op::GhcbRegister { vcpu: name("c"), gpa: 0x101000 }),
        (
            "psc c ghcb=0x101000 gpa=0x7000 npages=2 op=SHARED",
            Op::Psc { vcpu: name("c"), ghcb: 0x101000, gpa: 0x7000, npages: 2, op: 2, size_2m: false },
        ),
        (
            "psc c ghcb=0x101000 gpa=0 npages=253 op=PSMASH size=2M",
            Op::Psc { vcpu: name("c"), ghcb: 0x101000, gpa: 0, npages: 253, op: 3, size_2m: true },
        ),
        ("psc_msr c gpa=0x7000 op=PRIVATE", Op::PscMsr { vcpu: name("c"), gpa: 0x7000, op: 1 }),
        ("psc_msr c gpa=0x7000 op=9", Op::PscMsr { vcpu: name("c"), gpa: 0x7000, op: 9 }),
        ("complete_hypercall c", Op::CompleteHypercall { vcpu: name("c"), ret: 0 }),
        ("complete_hypercall c ret=-1", Op::CompleteHypercall { vcpu: name("c"), ret: u64::MAX }),
        (
            "ap_create c apic_id=1 gpa=0x3000",
            Op::ApCreate { vcpu: name("c"), apic_id: 1, gpa: 0x3000, request: 1, sev_features: 1 },
        ),
        (
            "ap_create c apic_id=1 gpa=0 request=DESTROY sev_features=0x21",
            Op::ApCreate { vcpu: name("c"), apic_id: 1, gpa: 0, request: 2, sev_features: 0x21 },
        ),
        ("snp_launch_digest vm", Op::SnpLaunchDigest { vm: name("vm") }),
        (
            "inject snp_fw cmd=LAUNCH_UPDATE ret=INVALID_PARAM",
            Op::InjectSnpFirmware { cmd: 0xa1, ret: 0x16, count: 1, after: 0 },
        ),
        (
            "inject snp_fw cmd=0xc7 ret=0x1a count=3 after=2",
            Op::InjectSnpFirmware { cmd: 0xc7, ret: 0x1a, count: 3, after: 2 },
        ),
        ("inject snp count=2", Op::Inject { fault: "snp".into(), count: 2, after: 0 }),
    ];
    for (line, expected) in cases {
        assert_eq!(op(line), expected, "{line}");
        let verb = line.split_whitespace().next().unwrap();
        assert_eq!(expected.verb(), verb, "Op::verb of {line}");
        assert!(VERBS.contains(&verb));
    }
}

#[test]
fn the_default_sev_fd_needs_an_earlier_open_dev_sev() {
    assert_eq!(
        error_after_prelude("snp_launch_start vm"),
        "t.gms:5:1: snp_launch_start needs `sev_fd=` (no open_dev_sev before this line)"
    );
    assert_eq!(
        error_after_prelude("snp_launch_update vm gfn_start=0 len=4K"),
        "t.gms:5:1: snp_launch_update needs `sev_fd=` (no open_dev_sev before this line)"
    );
    // Given explicitly, no open_dev_sev is needed; after one (even unbound), the default works.
    assert!(matches!(op("snp_launch_finish vm sev_fd=-1"), Op::SnpLaunchFinish { sev_fd: Some(_), .. }));
    assert!(matches!(op("open_dev_sev\nsnp_launch_finish vm"), Op::SnpLaunchFinish { sev_fd: None, .. }));
    // Other errors of the line come first.
    assert_eq!(
        error_after_prelude("snp_launch_start vm policy=FOO"),
        "t.gms:5:28: unknown SNP policy `FOO` (expected SMT, RSVD_MBO, DEBUG, SINGLE_SOCKET or a number)"
    );
}

#[test]
fn sev_argument_errors() {
    let cases = [
        (
            "snp_launch_update vm sev_fd=3 gfn_start=0 len=4K uaddr=m bytes=00",
            "t.gms:5:58: `uaddr=` and `bytes=` cannot be given together",
        ),
        (
            "snp_launch_update vm sev_fd=3 gfn_start=0 len=4K bytes=00 uaddr=m",
            "t.gms:5:59: `uaddr=` and `bytes=` cannot be given together",
        ),
        ("snp_launch_update vm sev_fd=3 len=4K", "t.gms:5:1: snp_launch_update needs `gfn_start=`"),
        (
            "snp_launch_update vm sev_fd=3 gfn_start=0 len=4K type=BIG",
            "t.gms:5:55: unknown SNP page type `BIG` (expected NORMAL, VMSA, ZERO, UNMEASURED, SECRETS, CPUID or a \
             number)",
        ),
        (
            "snp_launch_finish vm sev_fd=3 host_data=000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f00",
            "t.gms:5:41: 33 bytes given, at most 32 fit",
        ),
        ("snp_launch_finish vm sev_fd=3 id_block=zz", "t.gms:5:40: `zz` is not a hexadecimal byte string"),
        ("pvalidate c gpa=0 size=8K", "t.gms:5:24: page size `8K` is neither 4K nor 2M"),
        ("pvalidate c gpa=0 validate=2", "t.gms:5:28: expected 0 or 1, found `2`"),
        ("rmpadjust c gpa=0", "t.gms:5:1: rmpadjust needs `vmsa=`"),
        ("psc c ghcb=0 gpa=0 npages=0 op=SHARED", "t.gms:5:27: a PSC buffer holds 1 to 253 entries, not `0`"),
        ("psc c ghcb=0 gpa=0 npages=254 op=SHARED", "t.gms:5:27: a PSC buffer holds 1 to 253 entries, not `254`"),
        ("psc c ghcb=0 gpa=0 npages=1", "t.gms:5:1: psc needs `op=`"),
        (
            "psc_msr c gpa=0 op=HUGE",
            "t.gms:5:20: unknown page-state operation `HUGE` (expected PRIVATE, SHARED, PSMASH, UNSMASH or a number)",
        ),
        ("ap_create c gpa=0", "t.gms:5:1: ap_create needs `apic_id=`"),
        (
            "ap_create c apic_id=0 gpa=0 request=RUN",
            "t.gms:5:37: unknown AP creation request `RUN` (expected CREATE_ON_INIT, CREATE, DESTROY or a number)",
        ),
        ("inject snp_fw ret=INVALID_PARAM", "t.gms:5:1: inject needs `cmd=`"),
        ("inject snp_fw cmd=LAUNCH_UPDATE", "t.gms:5:1: inject needs `ret=`"),
        (
            "inject snp_fw cmd=LAUNCH cmd=1",
            "t.gms:5:26: duplicate key `cmd`",
        ),
        (
            "inject snp_fw cmd=0xa3 ret=INVALID_PARAM",
            "t.gms:5:19: unknown SNP firmware command `0xa3` (expected one of INIT_EX, DF_FLUSH, DECOMMISSION, \
             ACTIVATE, GCTX_CREATE, LAUNCH_START, LAUNCH_UPDATE, LAUNCH_FINISH, PAGE_RECLAIM)",
        ),
        (
            "inject snp_fw cmd=LAUNCH_UPDATE ret=0x21",
            "t.gms:5:37: unknown SNP firmware status `0x21` (expected one of INVALID_PLATFORM_STATE, \
             INVALID_GUEST_STATE, INVALID_CONFIG, INVALID_LEN, ALREADY_OWNED, INVALID_CERTIFICATE, POLICY_FAILURE, \
             INACTIVE, INVALID_ADDRESS, BAD_SIGNATURE, BAD_MEASUREMENT, ASID_OWNED, INVALID_ASID, WBINVD_REQUIRED, \
             DFFLUSH_REQUIRED, INVALID_GUEST, INVALID_COMMAND, ACTIVE, HWSEV_RET_PLATFORM, HWSEV_RET_UNSAFE, \
             UNSUPPORTED, INVALID_PARAM, RESOURCE_LIMIT, SECURE_DATA_INVALID, INVALID_PAGE_SIZE, INVALID_PAGE_STATE, \
             INVALID_MDATA_ENTRY, INVALID_PAGE_OWNER, AEAD_OFLOW, RMP_INIT_REQUIRED)",
        ),
        (
            "inject snp_fw cmd=LAUNCH_UPDATE ret=INVALID_PARAM count=0x100000000",
            "t.gms:5:57: `0x100000000` does not fit in 32 bits",
        ),
        ("enable_cap vm", "t.gms:5:1: enable_cap needs a CAP argument"),
        ("x = sev_init2 vm", "t.gms:5:1: `x` cannot be bound: this verb returns no handle"),
    ];
    for (line, message) in cases {
        assert_eq!(error_after_prelude(line), message, "{line}");
    }
}

#[test]
fn dev_sev_names_are_descriptors() {
    assert_eq!(op("s = open_dev_sev").handle_kind(), Some(HandleKind::DevSev));
    assert_eq!(
        error_after_prelude("s = open_dev_sev\nmunmap s"),
        "t.gms:6:8: `s` is not a mapping (it was bound by open_dev_sev)"
    );
    assert_eq!(op("s = open_dev_sev\nclose s"), Op::Close { handle: name("s") });
}

#[test]
fn the_snp_tables_match_the_firmware_model() {
    use super::value::{SEV_CMDS, SEV_RETS, SNP_PAGE_TYPES};
    use gmem_arch::sev::firmware::{SevCmd, SevRet};
    let cmds: Vec<(&str, u64)> = SevCmd::ALL.iter().map(|cmd| (cmd.name(), *cmd as u64)).collect();
    assert_eq!(SEV_CMDS.names.to_vec(), cmds);
    let rets: Vec<(&str, u64)> = SevRet::ALL.iter().map(|ret| (ret.name(), u64::from(ret.code()))).collect();
    assert_eq!(SEV_RETS.names.to_vec(), rets);
    let types: Vec<u64> = gmem_arch::sev::measure::SnpPageType::ALL.iter().map(|t| *t as u64).collect();
    assert_eq!(SNP_PAGE_TYPES.names.iter().map(|(_, v)| *v).collect::<Vec<_>>(), types);
}

#[test]
fn exception_vectors_in_expectations_are_not_comments() {
    let program = parse(
        "t.gms",
        "vm = create_vm   # a comment: #VC here is a comment too\n\
         c = create_vcpu vm\n\
         guest_load c gpa=0 len=1 => guest #VC gpa=0x0 reason=page-not-validated   # comment\n\
         guest_load c gpa=0 len=1 => ok 00 #note\n\
         guest_load c gpa=0 len=1 => ok 00 # #VC after a comment's #\n",
    )
    .expect("parses");
    let expected: Vec<Option<&str>> = program.lines.iter().map(|line| line.expected.as_deref()).collect();
    assert_eq!(
        expected,
        [None, None, Some("guest #VC gpa=0x0 reason=page-not-validated"), Some("ok 00"), Some("ok 00")]
    );
    // Before `=>`, `#` followed by an uppercase letter still starts a comment.
    assert_eq!(op("create_vm #VC"), Op::CreateVm { vm_type: 0 });
}

// ---- TDX ----

#[test]
fn tdx_verbs_with_defaults() {
    use super::op::CpuidEntry;
    let sept_ve_disable = 1 << 28;
    let cases: Vec<(&str, Op)> = vec![
        ("tdx_capabilities vm", Op::TdxCapabilities { vm: name("vm"), nent: 256, flags: 0 }),
        ("tdx_capabilities vm nent=4 flags=1", Op::TdxCapabilities { vm: name("vm"), nent: 4, flags: 1 }),
        (
            "tdx_init_vm vm",
            Op::TdxInitVm { vm: name("vm"), attributes: sept_ve_disable, xfam: 0, gpaw: 48, cpuid: vec![], flags: 0 },
        ),
        (
            "tdx_init_vm vm attributes=DEBUG|SEPT_VE_DISABLE xfam=0x3 gpaw=0 flags=1",
            Op::TdxInitVm {
                vm: name("vm"),
                attributes: sept_ve_disable | 1,
                xfam: 3,
                gpaw: 0,
                cpuid: vec![],
                flags: 1,
            },
        ),
        (
            "tdx_init_vm vm attributes=0 cpuid=7.0:0:0x800,0x40000000,0xd.1:0xf:0:0:1",
            Op::TdxInitVm {
                vm: name("vm"),
                attributes: 0,
                xfam: 0,
                gpaw: 48,
                cpuid: vec![
                    CpuidEntry { function: 7, index: Some(0), regs: [0, 0x800, 0, 0] },
                    CpuidEntry { function: 0x4000_0000, index: None, regs: [0; 4] },
                    CpuidEntry { function: 0xd, index: Some(1), regs: [0xf, 0, 0, 1] },
                ],
                flags: 0,
            },
        ),
        ("tdx_init_vcpu c", Op::TdxInitVcpu { vcpu: name("c"), rcx: 0, flags: 0 }),
        ("tdx_init_vcpu c rcx=0x1000 flags=1", Op::TdxInitVcpu { vcpu: name("c"), rcx: 0x1000, flags: 1 }),
        (
            "tdx_init_mem_region c gpa=0 size=8K",
            Op::TdxInitMemRegion {
                vcpu: name("c"),
                gpa: 0,
                nr_pages: 2,
                source: LaunchSource::Bytes(vec![]),
                flags: 0,
            },
        ),
        (
            "tdx_init_mem_region c gpa=0x1000 nr_pages=-1 measure=1 bytes=6b",
            Op::TdxInitMemRegion {
                vcpu: name("c"),
                gpa: 0x1000,
                nr_pages: u64::MAX,
                source: LaunchSource::Bytes(vec![0x6b]),
                flags: 1,
            },
        ),
        (
            "tdx_init_mem_region c gpa=0 size=0 source=m flags=2",
            Op::TdxInitMemRegion {
                vcpu: name("c"),
                gpa: 0,
                nr_pages: 0,
                source: LaunchSource::Address(name("m")),
                flags: 2,
            },
        ),
        (
            "tdx_init_mem_region c gpa=0 nr_pages=1 source=0x1001 measure=1 flags=2",
            Op::TdxInitMemRegion {
                vcpu: name("c"),
                gpa: 0,
                nr_pages: 1,
                source: LaunchSource::Address(Handle::Number(0x1001)),
                flags: 3,
            },
        ),
        ("tdx_finalize_vm vm", Op::TdxFinalizeVm { vm: name("vm"), flags: 0 }),
        ("tdx_state vm", Op::TdxState { vm: name("vm") }),
        (
            "inject tdx leaf=MEM_PAGE_ADD status=OPERAND_BUSY|SEPT",
            Op::InjectTdx { leaf: 2, status: 0x8000_0200_0000_0092, count: 1, after: 0 },
        ),
        (
            "inject tdx leaf=TDH.MR.FINALIZE status=0xc000010000000001 count=2 after=3",
            Op::InjectTdx { leaf: 17, status: 0xC000_0100_0000_0001, count: 2, after: 3 },
        ),
        (
            "inject tdx leaf=29 status=EPT_WALK_FAILED",
            Op::InjectTdx { leaf: 29, status: 0xC000_0B00_0000_0000, count: 1, after: 0 },
        ),
    ];
    for (line, expected) in cases {
        assert_eq!(op(line), expected, "{line}");
        let verb = line.split_whitespace().next().unwrap();
        assert_eq!(expected.verb(), verb, "Op::verb of {line}");
        assert!(VERBS.contains(&verb));
    }
    assert_eq!(create_vm_type("TDX"), 5);
}

#[test]
fn tdx_argument_errors() {
    let cases = [
        ("tdx_init_mem_region c gpa=0", "t.gms:5:1: tdx_init_mem_region needs `size=` or `nr_pages=`"),
        ("tdx_init_mem_region c size=4K", "t.gms:5:1: tdx_init_mem_region needs `gpa=`"),
        (
            "tdx_init_mem_region c gpa=0 size=4K nr_pages=1",
            "t.gms:5:37: `size=` and `nr_pages=` cannot be given together",
        ),
        (
            "tdx_init_mem_region c gpa=0 size=4K source=m bytes=00",
            "t.gms:5:46: `source=` and `bytes=` cannot be given together",
        ),
        (
            "tdx_init_mem_region c gpa=0 size=0x800",
            "t.gms:5:34: size `0x800` is not a multiple of 4096 (nr_pages= gives a page count)",
        ),
        ("tdx_init_mem_region c gpa=0 size=4K measure=2", "t.gms:5:45: expected 0 or 1, found `2`"),
        ("tdx_init_mem_region vm gpa=0 size=4K source=nowhere", "t.gms:5:45: unbound name `nowhere`"),
        ("tdx_init_vm vm gpaw=256", "t.gms:5:21: `256` does not fit in 8 bits"),
        (
            "tdx_init_vm vm attributes=SEPT_VE",
            "t.gms:5:27: unknown TD attribute `SEPT_VE` (expected DEBUG, SEPT_VE_DISABLE, PKS, PERFMON or a number)",
        ),
        ("tdx_init_vm vm cpuid=7.x", "t.gms:5:22: CPUID entry `7.x`: `x` is not an integer"),
        (
            "tdx_init_vm vm cpuid=0x100000000",
            "t.gms:5:22: CPUID entry `0x100000000`: function `0x100000000` does not fit in 32 bits",
        ),
        ("tdx_init_vm vm cpuid=1:1:2:3:4:5", "t.gms:5:22: CPUID entry `1:1:2:3:4:5` has more than 4 registers"),
        ("tdx_init_vm vm cpuid=1,,2", "t.gms:5:22: empty CPUID entry in `1,,2`"),
        ("tdx_init_vcpu c rcx", "t.gms:5:17: unexpected argument `rcx` for tdx_init_vcpu"),
        ("tdx_capabilities", "t.gms:5:1: tdx_capabilities needs a VM argument"),
        ("tdx_state", "t.gms:5:1: tdx_state needs a VM argument"),
        ("inject tdx status=OPERAND_BUSY", "t.gms:5:1: inject needs `leaf=`"),
        ("inject tdx leaf=MEM_PAGE_ADD", "t.gms:5:1: inject needs `status=`"),
        (
            "inject tdx leaf=PAGE.ADD status=OPERAND_BUSY",
            "t.gms:5:17: unknown SEAMCALL leaf `PAGE.ADD` (expected one of VP_ENTER, MNG_ADDCX, MEM_PAGE_ADD, \
             MEM_SEPT_ADD, VP_ADDCX, MEM_PAGE_AUG, MEM_RANGE_BLOCK, MNG_KEY_CONFIG, MNG_CREATE, VP_CREATE, MR_EXTEND, \
             MR_FINALIZE, VP_FLUSH, MNG_VPFLUSHDONE, MNG_KEY_FREEID, MNG_INIT, VP_INIT, PHYMEM_PAGE_RECLAIM, \
             MEM_PAGE_REMOVE, MEM_SEPT_REMOVE, MEM_TRACK, PHYMEM_CACHE_WB, PHYMEM_PAGE_WBINVD)",
        ),
        (
            "inject tdx leaf=5 status=OPERAND_BUSY",
            "t.gms:5:17: unknown SEAMCALL leaf `5` (expected one of VP_ENTER, MNG_ADDCX, MEM_PAGE_ADD, \
             MEM_SEPT_ADD, VP_ADDCX, MEM_PAGE_AUG, MEM_RANGE_BLOCK, MNG_KEY_CONFIG, MNG_CREATE, VP_CREATE, MR_EXTEND, \
             MR_FINALIZE, VP_FLUSH, MNG_VPFLUSHDONE, MNG_KEY_FREEID, MNG_INIT, VP_INIT, PHYMEM_PAGE_RECLAIM, \
             MEM_PAGE_REMOVE, MEM_SEPT_REMOVE, MEM_TRACK, PHYMEM_CACHE_WB, PHYMEM_PAGE_WBINVD)",
        ),
        (
            "inject tdx leaf=MEM_PAGE_ADD status=BUSY",
            "t.gms:5:37: unknown TDX status `BUSY` (expected a class such as OPERAND_BUSY or EPT_WALK_FAILED, \
             optionally `|OPERAND` such as `|SEPT`, or a 64-bit number)",
        ),
        (
            "inject tdx leaf=MEM_PAGE_ADD status=OPERAND_BUSY|NOWHERE",
            "t.gms:5:37: unknown TDX status `OPERAND_BUSY|NOWHERE` (expected a class such as OPERAND_BUSY or \
             EPT_WALK_FAILED, optionally `|OPERAND` such as `|SEPT`, or a 64-bit number)",
        ),
        (
            "inject tdx leaf=MEM_PAGE_ADD status=SUCCESS",
            "t.gms:5:37: `SUCCESS` is TDX_SUCCESS: an injected status must fail",
        ),
        ("inject tdx leaf=MEM_PAGE_ADD status=0", "t.gms:5:37: `0` is TDX_SUCCESS: an injected status must fail"),
        ("inject tdx leaf=MEM_PAGE_ADD status=OPERAND_BUSY after=-1", "t.gms:5:56: `-1` does not fit in 32 bits"),
        ("x = tdx_init_vm vm", "t.gms:5:1: `x` cannot be bound: this verb returns no handle"),
    ];
    for (line, message) in cases {
        assert_eq!(error_after_prelude(line), message, "{line}");
    }
}

#[test]
fn tdx_guest_verbs_with_defaults() {
    let cases: Vec<(&str, Op)> = vec![
        ("tdx_accept c gpa=0x40000", Op::TdxAccept { vcpu: name("c"), gpa: 0x40000, level: 0, shared: false }),
        (
            "tdx_accept c gpa=0x200000 size=2M shared=1",
            Op::TdxAccept { vcpu: name("c"), gpa: 0x20_0000, level: 1, shared: true },
        ),
        ("tdx_accept c gpa=0 size=1G", Op::TdxAccept { vcpu: name("c"), gpa: 0, level: 2, shared: false }),
        ("tdx_accept c gpa=0x42008 size=4K", Op::TdxAccept { vcpu: name("c"), gpa: 0x42008, level: 0, shared: false }),
        (
            "tdx_map_gpa c gpa=0x100000 size=5M shared=1",
            Op::TdxMapGpa { vcpu: name("c"), gpa: 0x10_0000, size: 5 << 20, shared: true },
        ),
        ("tdx_map_gpa c gpa=-1 size=0", Op::TdxMapGpa { vcpu: name("c"), gpa: u64::MAX, size: 0, shared: false }),
        ("queue_event c", Op::QueueEvent { vcpu: name("c") }),
    ];
    for (line, expected) in cases {
        assert_eq!(op(line), expected, "{line}");
        let verb = line.split_whitespace().next().unwrap();
        assert_eq!(expected.verb(), verb, "Op::verb of {line}");
        assert!(VERBS.contains(&verb));
    }
}

#[test]
fn tdx_guest_argument_errors() {
    let cases = [
        ("tdx_accept c", "t.gms:5:1: tdx_accept needs `gpa=`"),
        ("tdx_accept c gpa=0 size=8K", "t.gms:5:25: page size `8K` is not 4K, 2M or 1G"),
        ("tdx_accept c gpa=0 shared=2", "t.gms:5:27: expected 0 or 1, found `2`"),
        ("tdx_map_gpa c gpa=0", "t.gms:5:1: tdx_map_gpa needs `size=`"),
        ("tdx_map_gpa c size=4K", "t.gms:5:1: tdx_map_gpa needs `gpa=`"),
        ("tdx_map_gpa gpa=0 size=4K", "t.gms:5:1: tdx_map_gpa needs a VCPU argument"),
        ("tdx_map_gpa c gpa=0 size=4K private=1", "t.gms:5:29: unknown key `private` for tdx_map_gpa"),
        ("queue_event", "t.gms:5:1: queue_event needs a VCPU argument"),
        ("queue_event nowhere", "t.gms:5:13: unbound name `nowhere`"),
        (
            "guest_store c gpa=0 bytes=00 private=0 shared=1",
            "t.gms:5:40: `private=` and `shared=` cannot be given together",
        ),
        (
            "guest_load c gpa=0 len=1 shared=1 private=1",
            "t.gms:5:35: `private=` and `shared=` cannot be given together",
        ),
        ("x = tdx_accept c gpa=0", "t.gms:5:1: `x` cannot be bound: this verb returns no handle"),
    ];
    for (line, message) in cases {
        assert_eq!(error_after_prelude(line), message, "{line}");
    }
}

#[test]
fn the_tdx_tables_match_the_kernel() {
    use super::value::{DEFAULT_TDX_ATTRIBUTES, TDX_ATTRIBUTES};
    use gmem_arch::tdx::kvm::{TDX_TD_ATTR_DEBUG, TDX_TD_ATTR_SEPT_VE_DISABLE};
    let attribute = |name: &str| TDX_ATTRIBUTES.names.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
    assert_eq!(attribute("DEBUG"), Some(TDX_TD_ATTR_DEBUG));
    assert_eq!(attribute("SEPT_VE_DISABLE"), Some(TDX_TD_ATTR_SEPT_VE_DISABLE));
    assert_eq!(DEFAULT_TDX_ATTRIBUTES, TDX_TD_ATTR_SEPT_VE_DISABLE);
    // Every leaf parses by its name and number to itself.
    for leaf in gmem_arch::tdx::status::SeamcallLeaf::ALL {
        assert_eq!(super::value::parse_seamcall_leaf(leaf.name()), Ok(u64::from(leaf.number())));
        assert_eq!(super::value::parse_seamcall_leaf(&leaf.number().to_string()), Ok(u64::from(leaf.number())));
    }
}
