//! Every function of the seed (`../shared/reference/guest_memfd.c`) has a counterpart of the
//! same name in `src/guest_memfd.rs` and a row in `docs/KERNEL_MAP.md`.
//!
//! Method: extract the function definitions from the seed (a line starting a definition:
//! `static ... name(` or `int/long/void ... name(` at column 0), then look each name up. The seed
//! lives beside the repository in `../shared`; without it the test fails.

use std::path::Path;

fn seed_functions(seed: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut pending = String::new();
    for line in seed.lines() {
        let starts_definition = !line.starts_with([' ', '\t', '#', '/', '*', '}', '{']) && !line.is_empty();
        if starts_definition || !pending.is_empty() {
            pending.push_str(line);
            pending.push(' ');
        }
        if !pending.is_empty() && (line.ends_with('{') || line.ends_with(';') || line.ends_with(')')) {
            let text = std::mem::take(&mut pending);
            if text.contains('(')
                && !text.contains('=')
                && !text.starts_with("EXPORT")
                && !text.contains("struct kvm_gmem {")
            {
                let before_paren = &text[..text.find('(').unwrap()];
                if let Some(name) =
                    before_paren.split(|c: char| !(c.is_alphanumeric() || c == '_')).rfind(|s| !s.is_empty())
                {
                    if !matches!(name, "if" | "for" | "while" | "switch" | "return") {
                        names.push(name.to_string());
                    }
                }
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn every_seed_function_is_modelled_and_mapped() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let seed_path = root.join("../shared/reference/guest_memfd.c");
    // The repository is used, and CI runs, with ../shared beside it: a seed that cannot be read
    // is a failure, not a reason to check nothing.
    let seed = std::fs::read_to_string(&seed_path)
        .unwrap_or_else(|error| panic!("the seed must be at {}: {error}", seed_path.display()));
    let names = seed_functions(&seed);
    assert!(names.len() >= 25, "expected the seed's ~30 functions, found {names:?}");
    let code = std::fs::read_to_string(root.join("crates/kvm/src/guest_memfd.rs")).unwrap();
    let map = std::fs::read_to_string(root.join("docs/KERNEL_MAP.md")).unwrap();
    let unmodelled = ["kvm_gmem_init"];
    for name in &names {
        assert!(map.contains(&format!("`{name}`")), "docs/KERNEL_MAP.md has no row for `{name}`");
        if name == "folio_file_pfn" || unmodelled.contains(&name.as_str()) {
            continue;
        }
        assert!(code.contains(&format!("fn {name}")), "src/guest_memfd.rs has no `fn {name}`");
    }
}
