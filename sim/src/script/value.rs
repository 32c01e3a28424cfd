//! Value syntax: integers, flag sets, constants, byte strings and names, and the constant
//! tables of the spec ("Constant names").
//!
//! Every function returns the error message (without position) on bad input.

use super::op::CpuidEntry;

/// A table of constant names for one argument, with the argument's description for messages.
#[derive(Debug)]
pub(crate) struct Table {
    /// How messages name the argument (`"mmap prot"`).
    pub what: &'static str,
    /// The names and their values.
    pub names: &'static [(&'static str, u64)],
}

pub(crate) const VM_TYPES: Table = Table {
    what: "VM type",
    names: &[("DEFAULT", 0), ("SW_PROTECTED", 1), ("SEV", 2), ("SEV_ES", 3), ("SEV_SNP", 4), ("TDX", 5)],
};

pub(crate) const CAPS: Table = Table {
    what: "capability",
    names: &[
        ("USER_MEMORY2", 231),
        ("MEMORY_FAULT_INFO", 232),
        ("MEMORY_ATTRIBUTES", 233),
        ("GUEST_MEMFD", 234),
        ("VM_TYPES", 235),
        ("PRE_FAULT_MEMORY", 236),
        ("GUEST_MEMFD_FLAGS", 244),
        ("EXIT_HYPERCALL", 201),
    ],
};

pub(crate) const GMEM_FLAGS: Table = Table { what: "guest_memfd flags", names: &[("MMAP", 1), ("INIT_SHARED", 2)] };

pub(crate) const MEMSLOT_FLAGS: Table =
    Table { what: "memslot flags", names: &[("LOG_DIRTY_PAGES", 1), ("READONLY", 2), ("GUEST_MEMFD", 4)] };

pub(crate) const ATTRIBUTES: Table = Table { what: "memory attributes", names: &[("PRIVATE", 8)] };

/// Arguments that take numbers only (`set_memory_attributes flags=`).
pub(crate) const NO_NAMES: Table = Table { what: "flags", names: &[] };

pub(crate) const FALLOCATE_MODES: Table = Table {
    what: "fallocate mode",
    names: &[
        ("KEEP_SIZE", 0x1),
        ("PUNCH_HOLE", 0x2),
        ("COLLAPSE_RANGE", 0x8),
        ("ZERO_RANGE", 0x10),
        ("INSERT_RANGE", 0x20),
        ("UNSHARE_RANGE", 0x40),
        ("WRITE_ZEROES", 0x80),
    ],
};

pub(crate) const MMAP_PROT: Table =
    Table { what: "mmap prot", names: &[("NONE", 0), ("READ", 1), ("WRITE", 2), ("EXEC", 4)] };

pub(crate) const MMAP_FLAGS: Table = Table {
    what: "mmap flags",
    names: &[
        ("SHARED", 1),
        ("PRIVATE", 2),
        ("SHARED_VALIDATE", 3),
        ("FIXED", 0x10),
        ("ANONYMOUS", 0x20),
        ("GROWSDOWN", 0x100),
        ("LOCKED", 0x2000),
        ("NORESERVE", 0x4000),
        ("POPULATE", 0x8000),
        ("NONBLOCK", 0x10000),
        ("STACK", 0x20000),
        ("HUGETLB", 0x40000),
        ("SYNC", 0x80000),
        ("FIXED_NOREPLACE", 0x100000),
    ],
};

/// `madvise advice=`: every `MADV_*` value of Linux 6.18's uAPI.
pub(crate) const MADVISE_ADVICE: Table = Table {
    what: "madvise advice",
    names: &[
        ("NORMAL", 0),
        ("RANDOM", 1),
        ("SEQUENTIAL", 2),
        ("WILLNEED", 3),
        ("DONTNEED", 4),
        ("FREE", 8),
        ("REMOVE", 9),
        ("DONTFORK", 10),
        ("DOFORK", 11),
        ("MERGEABLE", 12),
        ("UNMERGEABLE", 13),
        ("HUGEPAGE", 14),
        ("NOHUGEPAGE", 15),
        ("DONTDUMP", 16),
        ("DODUMP", 17),
        ("WIPEONFORK", 18),
        ("KEEPONFORK", 19),
        ("COLD", 20),
        ("PAGEOUT", 21),
        ("POPULATE_READ", 22),
        ("POPULATE_WRITE", 23),
        ("DONTNEED_LOCKED", 24),
        ("COLLAPSE", 25),
        ("HWPOISON", 100),
        ("SOFT_OFFLINE", 101),
        ("GUARD_INSTALL", 102),
        ("GUARD_REMOVE", 103),
    ],
};

pub(crate) const LSEEK_WHENCE: Table = Table { what: "lseek whence", names: &[("SET", 0), ("CUR", 1), ("END", 2)] };

/// `snp_launch_start policy=`: the `SNP_POLICY_MASK_*` bits the kernel names.
pub(crate) const SNP_POLICY: Table = Table {
    what: "SNP policy",
    names: &[("SMT", 1 << 16), ("RSVD_MBO", 1 << 17), ("DEBUG", 1 << 19), ("SINGLE_SOCKET", 1 << 20)],
};

/// `snp_launch_update type=`: `KVM_SEV_SNP_PAGE_TYPE_*` (VMSA is the firmware's type 2, which
/// KVM refuses from user space).
pub(crate) const SNP_PAGE_TYPES: Table = Table {
    what: "SNP page type",
    names: &[("NORMAL", 1), ("VMSA", 2), ("ZERO", 3), ("UNMEASURED", 4), ("SECRETS", 5), ("CPUID", 6)],
};

/// `psc op=` and `psc_msr op=`: `SNP_PAGE_STATE_*` / `VMGEXIT_PSC_OP_*`.
pub(crate) const PSC_OPS: Table =
    Table { what: "page-state operation", names: &[("PRIVATE", 1), ("SHARED", 2), ("PSMASH", 3), ("UNSMASH", 4)] };

/// `ap_create request=`: `SVM_VMGEXIT_AP_*`.
pub(crate) const AP_REQUESTS: Table =
    Table { what: "AP creation request", names: &[("CREATE_ON_INIT", 0), ("CREATE", 1), ("DESTROY", 2)] };

/// `inject snp_fw cmd=`: the SNP firmware commands the model runs (`SEV_CMD_SNP_*`).
pub(crate) const SEV_CMDS: Table = Table {
    what: "SNP firmware command",
    names: &[
        ("INIT_EX", 0x85),
        ("DF_FLUSH", 0x84),
        ("DECOMMISSION", 0x90),
        ("ACTIVATE", 0x91),
        ("GCTX_CREATE", 0x93),
        ("LAUNCH_START", 0xa0),
        ("LAUNCH_UPDATE", 0xa1),
        ("LAUNCH_FINISH", 0xa2),
        ("PAGE_RECLAIM", 0xc7),
    ],
};

/// `inject snp_fw ret=`: the firmware's status codes (`SEV_RET_*`), also the names results
/// print after `fw_error=`.
pub(crate) const SEV_RETS: Table = Table {
    what: "SNP firmware status",
    names: &[
        ("INVALID_PLATFORM_STATE", 0x01),
        ("INVALID_GUEST_STATE", 0x02),
        ("INVALID_CONFIG", 0x03),
        ("INVALID_LEN", 0x04),
        ("ALREADY_OWNED", 0x05),
        ("INVALID_CERTIFICATE", 0x06),
        ("POLICY_FAILURE", 0x07),
        ("INACTIVE", 0x08),
        ("INVALID_ADDRESS", 0x09),
        ("BAD_SIGNATURE", 0x0a),
        ("BAD_MEASUREMENT", 0x0b),
        ("ASID_OWNED", 0x0c),
        ("INVALID_ASID", 0x0d),
        ("WBINVD_REQUIRED", 0x0e),
        ("DFFLUSH_REQUIRED", 0x0f),
        ("INVALID_GUEST", 0x10),
        ("INVALID_COMMAND", 0x11),
        ("ACTIVE", 0x12),
        ("HWSEV_RET_PLATFORM", 0x13),
        ("HWSEV_RET_UNSAFE", 0x14),
        ("UNSUPPORTED", 0x15),
        ("INVALID_PARAM", 0x16),
        ("RESOURCE_LIMIT", 0x17),
        ("SECURE_DATA_INVALID", 0x18),
        ("INVALID_PAGE_SIZE", 0x19),
        ("INVALID_PAGE_STATE", 0x1a),
        ("INVALID_MDATA_ENTRY", 0x1b),
        ("INVALID_PAGE_OWNER", 0x1c),
        ("AEAD_OFLOW", 0x1d),
        ("RMP_INIT_REQUIRED", 0x20),
    ],
};

/// `tdx_init_vm attributes=`: the TD attributes (`TDX_TD_ATTR_*`).
pub(crate) const TDX_ATTRIBUTES: Table = Table {
    what: "TD attribute",
    names: &[("DEBUG", 1 << 0), ("SEPT_VE_DISABLE", 1 << 28), ("PKS", 1 << 30), ("PERFMON", 1 << 63)],
};

/// `tdx_init_vm`'s default attributes: QEMU's default for a TD (`sept-ve-disable=on`).
pub(crate) const DEFAULT_TDX_ATTRIBUTES: u64 = 1 << 28;

/// The most CPUID entries `tdx_init_vm cpuid=` takes (with the GPAW entry, at most
/// `KVM_MAX_CPUID_ENTRIES`).
pub(crate) const TDX_CPUID_ENTRIES_MAX: usize = 255;

/// `cpuid=`: CPUID entries separated by `,`, each `FUNCTION[.INDEX][:EAX[:EBX[:ECX[:EDX]]]]`
/// (registers left out are 0; an entry without `.INDEX` has no significant index).
pub(crate) fn parse_cpuid_entries(text: &str) -> Result<Vec<CpuidEntry>, String> {
    let u32_of = |part: &str, what: &str| -> Result<u32, String> {
        let value = parse_int(part).map_err(|error| format!("CPUID entry `{text}`: {error}"))?;
        u32::try_from(value).map_err(|_| format!("CPUID entry `{text}`: {what} `{part}` does not fit in 32 bits"))
    };
    let entries: Vec<CpuidEntry> = text
        .split(',')
        .map(|entry| {
            let mut parts = entry.split(':');
            let leaf = parts.next().unwrap_or_default();
            if leaf.is_empty() {
                return Err(format!("empty CPUID entry in `{text}`"));
            }
            let (function, index) = match leaf.split_once('.') {
                Some((function, index)) => (u32_of(function, "function")?, Some(u32_of(index, "index")?)),
                None => (u32_of(leaf, "function")?, None),
            };
            let mut regs = [0u32; 4];
            for (slot, part) in parts.enumerate() {
                let reg =
                    regs.get_mut(slot).ok_or_else(|| format!("CPUID entry `{entry}` has more than 4 registers"))?;
                *reg = u32_of(part, "register")?;
            }
            Ok(CpuidEntry { function, index, regs })
        })
        .collect::<Result<_, String>>()?;
    match entries.len() <= TDX_CPUID_ENTRIES_MAX {
        true => Ok(entries),
        false => Err(format!("{} CPUID entries given, at most {TDX_CPUID_ENTRIES_MAX} fit", entries.len())),
    }
}

/// `inject tdx leaf=`: a SEAMCALL leaf KVM issues, by the kernel's name without `TDH_`
/// (`MEM_PAGE_ADD`), the TDX module's (`TDH.MEM.PAGE.ADD`), or its number (2).
pub(crate) fn parse_seamcall_leaf(text: &str) -> Result<u64, String> {
    use gmem_arch::tdx::status::SeamcallLeaf;
    match SeamcallLeaf::from_name(text) {
        Some(leaf) => Ok(u64::from(leaf.number())),
        None => {
            let names: Vec<&str> = SeamcallLeaf::ALL.iter().map(|leaf| leaf.name()).collect();
            Err(format!("unknown SEAMCALL leaf `{text}` (expected one of {})", names.join(", ")))
        }
    }
}

/// `inject tdx status=`: a SEAMCALL status by the TDX module's class name without `TDX_`
/// (`OPERAND_BUSY`), optionally with `|OPERAND` (`OPERAND_BUSY|SEPT`, `EPT_WALK_FAILED|0x1`), or
/// the whole 64-bit value. Not `SUCCESS`: an injected call fails.
pub(crate) fn parse_tdx_status(text: &str) -> Result<u64, String> {
    use gmem_arch::tdx::status::TdxStatus;
    match TdxStatus::from_name(text) {
        Some(status) if status.is_success() => Err(format!("`{text}` is TDX_SUCCESS: an injected status must fail")),
        Some(status) => Ok(status.raw()),
        None => Err(format!(
            "unknown TDX status `{text}` (expected a class such as OPERAND_BUSY or EPT_WALK_FAILED, optionally \
             `|OPERAND` such as `|SEPT`, or a 64-bit number)"
        )),
    }
}

impl Table {
    fn lookup(&self, name: &str) -> Result<u64, String> {
        match self.names.iter().find(|(n, _)| *n == name) {
            Some(&(_, value)) => Ok(value),
            None if self.names.is_empty() => Err(format!("expected a number, found `{name}`")),
            None => Err(format!("unknown {} `{name}` (expected {} or a number)", self.what, self.choices())),
        }
    }

    fn choices(&self) -> String {
        let names: Vec<&str> = self.names.iter().map(|(n, _)| *n).collect();
        names.join(", ")
    }
}

/// `[a-z][a-z0-9_]*`.
pub(crate) fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// Whether `text` is meant as an integer (starts with a digit or `-`).
pub(crate) fn looks_numeric(text: &str) -> bool {
    text.starts_with(|c: char| c.is_ascii_digit() || c == '-')
}

/// An integer: `[-](DECIMAL | 0xHEX)[K|M|G|T]`, as its raw 64-bit pattern.
pub(crate) fn parse_int(text: &str) -> Result<u64, String> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (digits, shift) = split_suffix(unsigned);
    let overflow = || format!("integer `{text}` does not fit in 64 bits");
    let magnitude =
        parse_magnitude(digits).ok_or_else(|| format!("`{text}` is not an integer"))?.ok_or_else(overflow)?;
    let scaled = magnitude.checked_mul(1u64 << shift).ok_or_else(overflow)?;
    match negative {
        false => Ok(scaled),
        true if scaled <= 1u64 << 63 => Ok(scaled.wrapping_neg()),
        true => Err(overflow()),
    }
}

fn split_suffix(text: &str) -> (&str, u32) {
    let shift = match text.chars().last() {
        Some('K') => 10,
        Some('M') => 20,
        Some('G') => 30,
        Some('T') => 40,
        _ => return (text, 0),
    };
    (&text[..text.len() - 1], shift)
}

/// Digits only (no sign): `None` if malformed, `Some(None)` if too large for `u64`.
fn parse_magnitude(digits: &str) -> Option<Option<u64>> {
    let (body, radix) = match digits.strip_prefix("0x") {
        Some(hex) => (hex, 16),
        None => (digits, 10),
    };
    let valid = !body.is_empty() && body.chars().all(|c| c.is_digit(radix));
    valid.then(|| u64::from_str_radix(body, radix).ok())
}

/// An integer, or a name of `table`.
fn parse_int_or_name(text: &str, table: &Table) -> Result<u64, String> {
    if looks_numeric(text) {
        parse_int(text)
    } else {
        table.lookup(text)
    }
}

/// A flag set: names of `table` and integers joined by `|`, ORed together.
pub(crate) fn parse_flags(text: &str, table: &Table) -> Result<u64, String> {
    text.split('|').try_fold(0u64, |acc, part| {
        if part.is_empty() {
            return Err(format!("empty element in {} `{text}`", table.what));
        }
        Ok(acc | parse_int_or_name(part, table)?)
    })
}

/// One constant: a name of `table` or an integer.
pub(crate) fn parse_constant(text: &str, table: &Table) -> Result<u64, String> {
    parse_int_or_name(text, table)
}

/// One member of a closed set: a name of `table`, or an integer that is one of its values.
pub(crate) fn parse_member(text: &str, table: &Table) -> Result<u64, String> {
    let value = parse_int_or_name(text, table)?;
    match table.names.iter().any(|&(_, v)| v == value) {
        true => Ok(value),
        false => Err(format!("unknown {} `{text}` (expected one of {})", table.what, table.choices())),
    }
}

/// A page size: `4K` or `2M` (the only sizes PVALIDATE and page-state changes know); `true`
/// for 2M.
pub(crate) fn parse_page_size(text: &str) -> Result<bool, String> {
    match parse_int(text)? {
        0x1000 => Ok(false),
        0x20_0000 => Ok(true),
        _ => Err(format!("page size `{text}` is neither 4K nor 2M")),
    }
}

/// An integer of at most `bits` bits (a count the firmware model keeps as a 32-bit number, a
/// byte string's length limit...).
pub(crate) fn parse_int_bits(text: &str, bits: u32) -> Result<u64, String> {
    let value = parse_int(text)?;
    match bits >= 64 || value >> bits == 0 {
        true => Ok(value),
        false => Err(format!("`{text}` does not fit in {bits} bits")),
    }
}

/// A byte string: hexadecimal digits, two per byte.
pub(crate) fn parse_bytes(text: &str) -> Result<Vec<u8>, String> {
    if !text.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("`{text}` is not a hexadecimal byte string"));
    }
    if text.len() % 2 != 0 {
        return Err(format!("byte string `{text}` has an odd number of digits"));
    }
    let bytes = text.as_bytes().chunks(2).map(|pair| {
        let digits = std::str::from_utf8(pair).unwrap_or("00");
        u8::from_str_radix(digits, 16).unwrap_or(0)
    });
    Ok(bytes.collect())
}

/// `0` or `1`.
pub(crate) fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("expected 0 or 1, found `{text}`")),
    }
}
