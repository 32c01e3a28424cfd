//! Turns lexed lines into [`Op`]s: the line structure (`[NAME =] VERB ARGS`) and one
//! argument schema per verb.

use super::args::{ArgReader, Located, Names, RawArg};
use super::lexer::{lex_line, Expectation, Token, TokenKind};
use super::op::{Handle, LaunchSource, Op, VERBS};
use super::value::{self, *};
use super::{Line, ParseError, Program};

/// Parses a whole script; `file` names it in error messages.
pub(super) fn parse_program(file: &str, source: &str) -> Result<Program, ParseError> {
    let mut names = Names::new();
    let mut lines = Vec::new();
    let mut dev_sev_opened = false;
    for (index, text) in source.lines().enumerate() {
        let number = index + 1;
        let parsed = parse_line(number, text, &names, dev_sev_opened).map_err(|e| ParseError {
            file: file.to_string(),
            line: number,
            column: e.column,
            message: e.message,
        })?;
        let Some(line) = parsed else {
            continue;
        };
        if let (Some(name), Some(kind)) = (&line.binding, line.op.handle_kind()) {
            names.insert(name.clone(), kind);
        }
        dev_sev_opened |= line.op == Op::OpenDevSev;
        lines.push(line);
    }
    Ok(Program { file: file.to_string(), lines })
}

/// Line `number`: `None` for a blank or comment-only line. `dev_sev_opened`: an earlier line
/// runs `open_dev_sev` (whose descriptor is the default `sev_fd=`).
fn parse_line(number: usize, text: &str, names: &Names, dev_sev_opened: bool) -> Result<Option<Line>, Located> {
    let lexed = lex_line(text);
    if lexed.tokens.is_empty() {
        return match lexed.expected {
            Some(e) => Err(Located::new(e.column, "expectation without a verb")),
            None => Ok(None),
        };
    }
    let (binding, verb, rest) = split_binding(&lexed.tokens)?;
    let unknown = || Located::new(verb.column, format!("unknown verb `{}`", verb.text));
    if verb.kind == TokenKind::Equals {
        return Err(Located::new(verb.column, "unexpected `=`"));
    } else if !VERBS.contains(&verb.text) {
        return Err(unknown());
    }
    let args = split_args(rest)?;
    let mut reader = ArgReader::new(verb, &args, names);
    let op = build_op(verb.text, &mut reader).ok_or_else(unknown)?;
    if let Some(name) = binding {
        check_binding(name, &op)?;
    }
    reader.finish()?;
    if op.uses_default_sev_fd() && !dev_sev_opened {
        let message = format!("{} needs `sev_fd=` (no open_dev_sev before this line)", verb.text);
        return Err(Located::new(verb.column, message));
    }
    Ok(Some(Line {
        number,
        binding: binding.map(|name| name.text.to_string()),
        op,
        expected: expectation_text(lexed.expected)?,
    }))
}

fn expectation_text(expected: Option<Expectation<'_>>) -> Result<Option<String>, Located> {
    match expected {
        Some(e) if e.text.is_empty() => Err(Located::new(e.column, "empty expectation")),
        Some(e) => Ok(Some(e.text.to_string())),
        None => Ok(None),
    }
}

/// Splits `[NAME =] VERB REST...`.
fn split_binding<'t, 'a>(tokens: &'t [Token<'a>]) -> Result<(Option<Token<'a>>, Token<'a>, &'t [Token<'a>]), Located> {
    match tokens {
        [name, equals, rest @ ..] if name.kind == TokenKind::Word && equals.kind == TokenKind::Equals => match rest {
            [verb, rest @ ..] => Ok((Some(*name), *verb, rest)),
            [] => Err(Located::new(equals.column, "missing verb after `=`")),
        },
        [verb, rest @ ..] => Ok((None, *verb, rest)),
        [] => Err(Located::new(1, "missing verb")),
    }
}

fn check_binding(name: Token<'_>, op: &Op) -> Result<(), Located> {
    let problem = if !value::is_name(name.text) {
        format!("`{}` is not a name ([a-z][a-z0-9_]*)", name.text)
    } else if name.text == "auto" {
        "`auto` is reserved (uaddr=auto)".to_string()
    } else if op.handle_kind().is_none() {
        format!("`{}` cannot be bound: this verb returns no handle", name.text)
    } else {
        return Ok(());
    };
    Err(Located::new(name.column, problem))
}

/// Groups tokens into `key=value` (written without spaces) and positional arguments.
fn split_args<'a>(tokens: &[Token<'a>]) -> Result<Vec<RawArg<'a>>, Located> {
    let mut args = Vec::new();
    let mut rest = tokens;
    while let [first, tail @ ..] = rest {
        if first.kind == TokenKind::Equals {
            return Err(Located::new(first.column, "unexpected `=`"));
        }
        let (arg, remaining) = match tail {
            [eq, value, more @ ..] if is_key_value(first, eq, value) => (keyed(first, value), more),
            [eq, ..] if eq.kind == TokenKind::Equals => return Err(bad_key_value(first, eq)),
            _ => (RawArg { key: None, value: *first }, tail),
        };
        args.push(arg);
        rest = remaining;
    }
    Ok(args)
}

fn is_key_value(key: &Token<'_>, eq: &Token<'_>, value: &Token<'_>) -> bool {
    eq.kind == TokenKind::Equals && value.kind == TokenKind::Word && key.touches(eq) && eq.touches(value)
}

fn keyed<'a>(key: &Token<'a>, value: &Token<'a>) -> RawArg<'a> {
    RawArg { key: Some(*key), value: *value }
}

fn bad_key_value(key: &Token<'_>, eq: &Token<'_>) -> Located {
    match key.touches(eq) {
        true => Located::new(key.column, format!("missing value after `{}=`", key.text)),
        false => Located::new(eq.column, "no spaces allowed around `=` in key=value"),
    }
}

/// The [`Op`] for `verb`, reading its arguments from `r`; `None` for an unknown verb.
pub(super) fn build_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    vm_op(verb, r)
        .or_else(|| file_op(verb, r))
        .or_else(|| mapping_op(verb, r))
        .or_else(|| sev_op(verb, r))
        .or_else(|| tdx_op(verb, r))
        .or_else(|| guest_op(verb, r))
        .or_else(|| snp_guest_op(verb, r))
        .or_else(|| tdx_guest_op(verb, r))
        .or_else(|| simulator_op(verb, r))
}

/// `snp_launch_start`'s default policy: QEMU's default for an SNP guest (the must-be-one bit
/// and SMT allowed).
pub(crate) const DEFAULT_SNP_POLICY: u64 = 0x30000;

/// The most entries a PSC buffer in the GHCB holds (`VMGEXIT_PSC_MAX_COUNT`).
const PSC_ENTRIES_MAX: u64 = 253;

/// A byte string of at most `max` bytes.
fn bytes_at_most(max: usize) -> impl Fn(&str) -> Result<Vec<u8>, String> {
    move |text| {
        let bytes = value::parse_bytes(text)?;
        match bytes.len() <= max {
            true => Ok(bytes),
            false => Err(format!("{} bytes given, at most {max} fit", bytes.len())),
        }
    }
}

/// The number of entries of a PSC buffer: 1 to 253.
fn psc_entries(text: &str) -> Result<u64, String> {
    let count = value::parse_int(text)?;
    match (1..=PSC_ENTRIES_MAX).contains(&count) {
        true => Ok(count),
        false => Err(format!("a PSC buffer holds 1 to {PSC_ENTRIES_MAX} entries, not `{text}`")),
    }
}

/// The host side of an SEV-SNP launch: `/dev/sev` and the `KVM_MEMORY_ENCRYPT_OP` commands.
fn sev_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    Some(match verb {
        "open_dev_sev" => Op::OpenDevSev,
        "sev_init2" => Op::SevInit2 {
            vm: r.handle("VM"),
            vmsa_features: r.int_or("vmsa_features", 0),
            ghcb_version: r.int_or("ghcb_version", 0) as u16,
            flags: r.flags_or("flags", &NO_NAMES, 0) as u32,
        },
        "snp_launch_start" => Op::SnpLaunchStart {
            vm: r.handle("VM"),
            sev_fd: r.handle_key_opt("sev_fd"),
            policy: r.flags_or("policy", &SNP_POLICY, DEFAULT_SNP_POLICY),
            flags: r.flags_or("flags", &NO_NAMES, 0) as u16,
        },
        "snp_launch_update" => {
            r.reject_together("uaddr", "bytes");
            let vm = r.handle("VM");
            let sev_fd = r.handle_key_opt("sev_fd");
            let gfn_start = r.int("gfn_start");
            let len = r.int("len");
            let page_type = r.constant_or("type", &SNP_PAGE_TYPES, 1) as u8;
            let uaddr = r.handle_key_opt("uaddr");
            let source = match (r.bytes_opt("bytes"), uaddr) {
                (Some(bytes), _) => LaunchSource::Bytes(bytes),
                (None, uaddr) => LaunchSource::Address(uaddr.unwrap_or(Handle::Number(0))),
            };
            let flags = r.flags_or("flags", &NO_NAMES, 0) as u16;
            Op::SnpLaunchUpdate { vm, sev_fd, gfn_start, len, page_type, source, flags }
        }
        "snp_launch_finish" => Op::SnpLaunchFinish {
            vm: r.handle("VM"),
            sev_fd: r.handle_key_opt("sev_fd"),
            host_data: r.parsed_or("host_data", bytes_at_most(32), Vec::new()),
            id_block: r.optional_parsed("id_block", bytes_at_most(96)),
            flags: r.flags_or("flags", &NO_NAMES, 0) as u16,
        },
        _ => return None,
    })
}

/// A byte count given as `size=` for `nr_pages`: a multiple of 4096.
fn page_multiple(text: &str) -> Result<u64, String> {
    let size = value::parse_int(text)?;
    match size % 4096 {
        0 => Ok(size),
        _ => Err(format!("size `{text}` is not a multiple of 4096 (nr_pages= gives a page count)")),
    }
}

/// The host side of a TDX launch: the `KVM_MEMORY_ENCRYPT_OP` commands on a VM and a vCPU.
fn tdx_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    let flags = |r: &mut ArgReader<'_, '_>| r.flags_or("flags", &NO_NAMES, 0) as u32;
    Some(match verb {
        "tdx_capabilities" => Op::TdxCapabilities {
            vm: r.handle("VM"),
            nent: r.int_or("nent", u64::from(TDX_CAPABILITIES_NENT)) as u32,
            flags: flags(r),
        },
        "tdx_init_vm" => Op::TdxInitVm {
            vm: r.handle("VM"),
            attributes: r.flags_or("attributes", &TDX_ATTRIBUTES, DEFAULT_TDX_ATTRIBUTES),
            xfam: r.int_or("xfam", 0),
            gpaw: r.parsed_or("gpaw", |text| value::parse_int_bits(text, 8), 48) as u8,
            cpuid: r.parsed_or("cpuid", value::parse_cpuid_entries, Vec::new()),
            flags: flags(r),
        },
        "tdx_init_vcpu" => Op::TdxInitVcpu { vcpu: r.handle("VCPU"), rcx: r.int_or("rcx", 0), flags: flags(r) },
        "tdx_init_mem_region" => {
            r.reject_together("source", "bytes");
            r.reject_together("size", "nr_pages");
            r.need_one_of("size", "nr_pages");
            let vcpu = r.handle("VCPU");
            let gpa = r.int("gpa");
            let size = r.optional_parsed("size", page_multiple);
            let nr_pages = r.optional_parsed("nr_pages", value::parse_int);
            let measure = r.bool_opt("measure").unwrap_or(false);
            let source = match (r.handle_key_opt("source"), r.bytes_opt("bytes")) {
                (Some(source), _) => LaunchSource::Address(source),
                (None, bytes) => LaunchSource::Bytes(bytes.unwrap_or_default()),
            };
            let flags = flags(r) | u32::from(measure);
            Op::TdxInitMemRegion {
                vcpu,
                gpa,
                nr_pages: size.map_or(nr_pages.unwrap_or(0), |size| size >> 12),
                source,
                flags,
            }
        }
        "tdx_finalize_vm" => Op::TdxFinalizeVm { vm: r.handle("VM"), flags: flags(r) },
        _ => return None,
    })
}

/// `tdx_capabilities`' default `nent`: `KVM_MAX_CPUID_ENTRIES`, the room QEMU gives.
pub(crate) const TDX_CAPABILITIES_NENT: u32 = 256;

/// The SNP guest's instructions and VMGEXITs, each one step of a vCPU.
fn snp_guest_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    Some(match verb {
        "pvalidate" => Op::Pvalidate {
            vcpu: r.handle("VCPU"),
            gpa: r.int("gpa"),
            size_2m: r.parsed_or("size", value::parse_page_size, false),
            validate: r.bool_opt("validate").unwrap_or(true),
        },
        "rmpadjust" => {
            Op::Rmpadjust { vcpu: r.handle("VCPU"), gpa: r.int("gpa"), vmsa: r.parsed("vmsa", value::parse_bool) }
        }
        "ghcb_register" => Op::GhcbRegister { vcpu: r.handle("VCPU"), gpa: r.int("gpa") },
        "psc" => Op::Psc {
            vcpu: r.handle("VCPU"),
            ghcb: r.int("ghcb"),
            gpa: r.int("gpa"),
            npages: r.parsed("npages", psc_entries) as u16,
            op: r.constant("op", &PSC_OPS) as u8,
            size_2m: r.parsed_or("size", value::parse_page_size, false),
        },
        "psc_msr" => Op::PscMsr { vcpu: r.handle("VCPU"), gpa: r.int("gpa"), op: r.constant("op", &PSC_OPS) as u8 },
        "complete_hypercall" => Op::CompleteHypercall { vcpu: r.handle("VCPU"), ret: r.int_or("ret", 0) },
        "ap_create" => Op::ApCreate {
            vcpu: r.handle("VCPU"),
            apic_id: r.int("apic_id") as u32,
            gpa: r.int("gpa"),
            request: r.constant_or("request", &AP_REQUESTS, 1) as u32,
            sev_features: r.int_or("sev_features", 1),
        },
        _ => return None,
    })
}

/// The page size of `TDG.MEM.PAGE.ACCEPT` as its level in RCX: `4K` 0, `2M` 1, `1G` 2
/// (`TDX_PS_*`).
fn accept_level(text: &str) -> Result<u64, String> {
    match value::parse_int(text)? {
        0x1000 => Ok(0),
        0x20_0000 => Ok(1),
        0x4000_0000 => Ok(2),
        _ => Err(format!("page size `{text}` is not 4K, 2M or 1G")),
    }
}

/// The TD guest's TDCALLs, each one step of a vCPU.
fn tdx_guest_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    let shared = |r: &mut ArgReader<'_, '_>| r.bool_opt("shared").unwrap_or(false);
    Some(match verb {
        "tdx_accept" => Op::TdxAccept {
            vcpu: r.handle("VCPU"),
            gpa: r.int("gpa"),
            level: r.parsed_or("size", accept_level, 0),
            shared: shared(r),
        },
        "tdx_map_gpa" => {
            Op::TdxMapGpa { vcpu: r.handle("VCPU"), gpa: r.int("gpa"), size: r.int("size"), shared: shared(r) }
        }
        _ => return None,
    })
}

fn vm_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    Some(match verb {
        "create_vm" => Op::CreateVm { vm_type: r.constant_or("type", &VM_TYPES, 0) },
        "check_extension" => {
            let vm = (r.positional_count() >= 2).then(|| r.handle("VM"));
            Op::CheckExtension { vm, cap: r.positional_constant("CAP", &CAPS) }
        }
        "create_guest_memfd" => {
            Op::CreateGuestMemfd { vm: r.handle("VM"), size: r.int("size"), flags: r.flags_or("flags", &GMEM_FLAGS, 0) }
        }
        "set_user_memory_region2" => Op::SetUserMemoryRegion2 {
            vm: r.handle("VM"),
            slot: r.int("slot") as u32,
            flags: r.flags_or("flags", &MEMSLOT_FLAGS, 0) as u32,
            gpa: r.int("gpa"),
            size: r.int("size"),
            uaddr: r.uaddr(),
            guest_memfd: r.handle_or("guest_memfd", Handle::Number(0)),
            guest_memfd_offset: r.int_or("guest_memfd_offset", 0),
        },
        "set_memory_attributes" => Op::SetMemoryAttributes {
            vm: r.handle("VM"),
            address: r.int("address"),
            size: r.int("size"),
            attributes: r.flags("attributes", &ATTRIBUTES),
            flags: r.flags_or("flags", &NO_NAMES, 0),
        },
        "enable_cap" => Op::EnableCap {
            vm: r.handle("VM"),
            cap: r.positional_constant("CAP", &CAPS) as u32,
            flags: r.flags_or("flags", &NO_NAMES, 0) as u32,
            args: [r.int_or("arg0", 0), r.int_or("arg1", 0), r.int_or("arg2", 0), r.int_or("arg3", 0)],
        },
        _ => return None,
    })
}

fn file_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    Some(match verb {
        "fallocate" => Op::Fallocate {
            fd: r.handle("FD"),
            mode: r.flags("mode", &FALLOCATE_MODES),
            offset: r.int_or("offset", 0),
            len: r.int("len"),
        },
        "fstat" => Op::Fstat { fd: r.handle("FD") },
        "ftruncate" => Op::Ftruncate { fd: r.handle("FD"), size: r.int("size") },
        "read" => Op::Read { fd: r.handle("FD"), len: r.int("len") },
        "write" => Op::Write { fd: r.handle("FD"), len: r.int("len") },
        "pread" => Op::Pread { fd: r.handle("FD"), len: r.int("len"), offset: r.int_or("offset", 0) },
        "pwrite" => Op::Pwrite { fd: r.handle("FD"), len: r.int("len"), offset: r.int_or("offset", 0) },
        "lseek" => {
            Op::Lseek { fd: r.handle("FD"), offset: r.int_or("offset", 0), whence: r.constant("whence", &LSEEK_WHENCE) }
        }
        "close" => Op::Close { handle: r.handle("NAME") },
        _ => return None,
    })
}

fn mapping_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    Some(match verb {
        "mmap" => Op::Mmap {
            fd: r.handle("FD"),
            len: r.int("len"),
            offset: r.int_or("offset", 0),
            prot: r.flags_or("prot", &MMAP_PROT, 3),
            flags: r.flags_or("flags", &MMAP_FLAGS, 1),
        },
        "munmap" => Op::Munmap { map: r.mapping() },
        "store" => Op::Store { map: r.mapping(), offset: r.int_or("offset", 0), bytes: r.bytes("bytes") },
        "load" => Op::Load { map: r.mapping(), offset: r.int_or("offset", 0), len: r.int("len") },
        "madvise" => Op::Madvise {
            map: r.mapping(),
            offset: r.int_or("offset", 0),
            len: r.int("len"),
            advice: r.constant("advice", &MADVISE_ADVICE),
        },
        "mlock" => Op::Mlock { map: r.mapping(), offset: r.int_or("offset", 0), len: r.int("len") },
        "munlock" => Op::Munlock { map: r.mapping(), offset: r.int_or("offset", 0), len: r.int("len") },
        _ => return None,
    })
}

fn guest_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    Some(match verb {
        "create_vcpu" => Op::CreateVcpu { vm: r.handle("VM"), id: r.int_or("id", 0) },
        "guest_store" => {
            r.reject_together("private", "shared");
            Op::GuestStore {
                vcpu: r.handle("VCPU"),
                gpa: r.int("gpa"),
                bytes: r.bytes("bytes"),
                private: r.bool_opt("private"),
                shared: r.bool_opt("shared").unwrap_or(false),
            }
        }
        "guest_load" => {
            r.reject_together("private", "shared");
            Op::GuestLoad {
                vcpu: r.handle("VCPU"),
                gpa: r.int("gpa"),
                len: r.int("len"),
                private: r.bool_opt("private"),
                shared: r.bool_opt("shared").unwrap_or(false),
            }
        }
        "pre_fault_memory" => Op::PreFaultMemory { vcpu: r.handle("VCPU"), gpa: r.int("gpa"), size: r.int("size") },
        _ => return None,
    })
}

fn simulator_op(verb: &str, r: &mut ArgReader<'_, '_>) -> Option<Op> {
    Some(match verb {
        "populate" => {
            Op::Populate { vm: r.handle("VM"), gpa: r.int("gpa"), npages: r.int("npages"), bytes: r.bytes_opt("bytes") }
        }
        "inject_memory_failure" => Op::InjectMemoryFailure { fd: r.handle("FD"), offset: r.int_or("offset", 0) },
        "snp_launch_digest" => Op::SnpLaunchDigest { vm: r.handle("VM") },
        "tdx_state" => Op::TdxState { vm: r.handle("VM") },
        "queue_event" => Op::QueueEvent { vcpu: r.handle("VCPU") },
        "inject" => match r.word("FAULT") {
            fault if fault == "tdx" => Op::InjectTdx {
                leaf: r.parsed("leaf", value::parse_seamcall_leaf) as u16,
                status: r.parsed("status", value::parse_tdx_status),
                count: r.parsed_or("count", |text| value::parse_int_bits(text, 32), 1) as u32,
                after: r.parsed_or("after", |text| value::parse_int_bits(text, 32), 0) as u32,
            },
            fault if fault == "snp_fw" => Op::InjectSnpFirmware {
                cmd: r.parsed("cmd", |text| value::parse_member(text, &SEV_CMDS)) as u32,
                ret: r.parsed("ret", |text| value::parse_member(text, &SEV_RETS)) as u32,
                count: r.parsed_or("count", |text| value::parse_int_bits(text, 32), 1) as u32,
                after: r.parsed_or("after", |text| value::parse_int_bits(text, 32), 0) as u32,
            },
            fault => Op::Inject { fault, count: r.int_or("count", 1), after: r.int_or("after", 0) },
        },
        "warnings" => Op::Warnings,
        "check_invariants" => Op::CheckInvariants,
        "dump" => Op::Dump { target: r.handle_opt() },
        _ => return None,
    })
}
