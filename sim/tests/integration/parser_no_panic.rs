//! The parser never panics: arbitrary text and soups of script tokens either parse or give a
//! `FILE:LINE:COLUMN: message` error.

use gmem_sim::script::{parse, VERBS};
use proptest::prelude::*;

/// Pieces scripts are made of, valid and not.
const PIECES: &[&str] = &[
    "vm",
    "g",
    "m",
    "c",
    "x",
    "auto",
    "=",
    "=>",
    "#",
    "|",
    "size",
    "len",
    "offset",
    "slot",
    "gpa",
    "flags",
    "type",
    "uaddr",
    "guest_memfd",
    "bytes",
    "private",
    "mode",
    "prot",
    "whence",
    "advice",
    "0",
    "1",
    "-1",
    "-",
    "0x",
    "0x1000",
    "4K",
    "2M",
    "1T",
    "99999999999999999999",
    "-0x8000000000000001",
    "KEEP_SIZE",
    "PUNCH_HOLE",
    "MMAP",
    "INIT_SHARED",
    "PRIVATE",
    "SHARED",
    "READ",
    "WRITE",
    "GUEST_MEMFD",
    "GUEST_MEMFD_FLAGS",
    "DEFAULT",
    "2a00ff",
    "2a0",
    "ok",
    "EINVAL",
    "é",
    "\u{1F600}",
    "\t",
    "\r",
    "size=",
    "=4K",
    "K",
    "ffffffffffffffffffff",
    "sev",
    "sev_fd",
    "gfn_start",
    "policy",
    "host_data",
    "id_block",
    "ghcb",
    "npages",
    "op",
    "apic_id",
    "request",
    "vmsa",
    "validate",
    "ret",
    "cmd",
    "snp_fw",
    "LAUNCH_UPDATE",
    "INVALID_PARAM",
    "RSVD_MBO",
    "CPUID",
    "ANONYMOUS",
    "EXIT_HYPERCALL",
    "254",
];

fn piece() -> impl Strategy<Value = String> {
    let verbs = prop::sample::select(VERBS.to_vec()).prop_map(str::to_string);
    let pieces = prop::sample::select(PIECES.to_vec()).prop_map(str::to_string);
    prop_oneof![verbs, pieces.clone(), pieces, "[a-z0-9=|#>_ -]{0,6}"]
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![" ", " ", "", "\n", "=", "|", "  "])
}

fn token_soup() -> impl Strategy<Value = String> {
    prop::collection::vec((piece(), separator()), 0..40)
        .prop_map(|parts| parts.into_iter().map(|(piece, sep)| piece + sep).collect())
}

/// Checks the error shape `t.gms:LINE:COLUMN: message` with a line and column in range.
fn assert_well_formed_error(source: &str) {
    let Err(error) = parse("t.gms", source) else {
        return;
    };
    let line_count = source.lines().count();
    assert!(error.line >= 1 && error.line <= line_count, "{error}");
    let line = source.lines().nth(error.line - 1).unwrap_or("");
    assert!(error.column >= 1 && error.column <= line.chars().count() + 1, "{error}");
    let prefix = format!("t.gms:{}:{}: ", error.line, error.column);
    assert!(error.to_string().starts_with(&prefix), "{error}");
    assert!(!error.message.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(source in any::<String>()) {
        assert_well_formed_error(&source);
    }

    #[test]
    fn token_soups_never_panic(source in token_soup()) {
        assert_well_formed_error(&source);
    }

    #[test]
    fn valid_prefix_then_soup_never_panics(soup in token_soup()) {
        let source = format!(
            "vm = create_vm\ng = create_guest_memfd vm size=4K\nm = mmap g len=4K\n{soup}"
        );
        assert_well_formed_error(&source);
    }
}
