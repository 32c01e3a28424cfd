//! The documentation stays true to the code:
//!
//! - every function of the seed (`../shared/reference/guest_memfd.c`) has a counterpart of the
//!   same name in `src/guest_memfd.rs` and a row in `docs/KERNEL_MAP.md`;
//! - every kernel name `docs/KERNEL_MAP.md` maps is one rustdoc search finds: a workspace item
//!   of that name or a `#[doc(alias)]` listing it;
//! - every relative link of `README.md` and `docs/*.md` points at a file that exists.
//!
//! Each test fails, rather than passes, when what it checks cannot be read or comes out empty.

use std::path::{Path, PathBuf};

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

/// Method: extract the function definitions from the seed (a line starting a definition:
/// `static ... name(` or `int/long/void ... name(` at column 0), then look each name up. The seed
/// lives beside the repository in `../shared`; without it the test fails.
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

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The cells of a markdown table row, without the outer pipes; `\|` inside a cell is text.
fn table_cells(line: &str) -> Vec<String> {
    let mut cells = vec![String::new()];
    let mut chars = line.trim().trim_start_matches('|').chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => cells.last_mut().unwrap().push(chars.next().unwrap()),
            '|' => cells.push(String::new()),
            _ => cells.last_mut().unwrap().push(c),
        }
    }
    if cells.last().is_some_and(|cell| cell.trim().is_empty()) {
        cells.pop();
    }
    cells.into_iter().map(|cell| cell.trim().to_string()).collect()
}

/// The backticked spans of `cell` that are not inside parentheses (parentheses inside a span do
/// not count).
fn spans_outside_parentheses(cell: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut depth = 0usize;
    let mut span: Option<String> = None;
    for c in cell.chars() {
        match (&mut span, c) {
            (Some(text), '`') => {
                if depth == 0 {
                    spans.push(std::mem::take(text));
                }
                span = None;
            }
            (Some(text), _) => text.push(c),
            (None, '`') => span = Some(String::new()),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, _) => {}
        }
    }
    spans
}

fn is_c_identifier(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The kernel names `docs/KERNEL_MAP.md` says are modelled, with the Rust cell of their row.
///
/// The rule: a table whose first header cell is `kernel` (or `kernel / module`), or names the
/// guest kernel (`guest (Linux ...)`), maps kernel code; the QEMU and uAPI tables do not. In such
/// a table, a row whose Rust cell starts with "(none)" or "not modelled" is exempt. Every other
/// row's kernel names are the backticked spans of its first cell that are one C identifier,
/// optionally after `struct ` or `enum `: functions, types, ops tables, constants and macros.
/// Spans inside parentheses are commentary (callers, callees, flags, the name in another kernel
/// version) and not checked; nor are expressions such as `kvm->arch.pre_fault_allowed` or
/// `tdp_iter_start(.., gfn_bits)`.
fn mapped_kernel_names(map: &str) -> Vec<(String, String)> {
    let mut names = Vec::new();
    let mut kernel_table = false;
    for line in map.lines() {
        if !line.starts_with('|') {
            kernel_table = false;
            continue;
        }
        let cells = table_cells(line);
        let first = cells.first().map(String::as_str).unwrap_or_default();
        if first.chars().all(|c| matches!(c, '-' | ':' | ' ')) {
            continue;
        }
        if matches!(first, "kernel" | "kernel / module" | "QEMU" | "uAPI") || first.starts_with("guest (") {
            kernel_table = first.starts_with("kernel") || first.starts_with("guest (");
            continue;
        }
        if !kernel_table {
            continue;
        }
        let rust = cells.get(1).map(String::as_str).unwrap_or_default();
        if rust.starts_with("(none)") || rust.starts_with("not modelled") {
            continue;
        }
        for span in spans_outside_parentheses(first) {
            let name = span.strip_prefix("struct ").or_else(|| span.strip_prefix("enum ")).unwrap_or(&span);
            if is_c_identifier(name) {
                names.push((name.to_string(), rust.to_string()));
            }
        }
    }
    names
}

/// The text of every `.rs` file under `dir`, recursively.
fn read_rust_sources(dir: &Path, sources: &mut Vec<(PathBuf, String)>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|error| panic!("cannot read {}: {error}", dir.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_rust_sources(&path, sources);
        } else if path.extension().is_some_and(|extension| extension == "rs") {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
            sources.push((path, text));
        }
    }
}

/// The names rustdoc search finds in `source`: items it defines (`fn`, `struct`, `enum`,
/// `const`, `static`, `type`, `trait`, `mod`, `union`, `macro_rules!`) and the strings its
/// `#[doc(alias = "..")]` / `#[doc(alias("..", ..))]` attributes list. Comment lines are skipped,
/// so a doc comment that mentions `struct page` defines nothing.
fn searchable_names(source: &str, names: &mut std::collections::BTreeSet<String>) {
    let code: String =
        source.lines().filter(|line| !line.trim_start().starts_with("//")).flat_map(|line| [line, "\n"]).collect();
    let tokens: Vec<&str> =
        code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|t| !t.is_empty()).collect();
    for pair in tokens.windows(2) {
        let keyword = matches!(
            pair[0],
            "fn" | "struct" | "enum" | "const" | "static" | "type" | "trait" | "mod" | "union" | "macro_rules"
        );
        // `const fn name`: the name follows `fn`.
        if keyword && pair[1] != "fn" {
            names.insert(pair[1].to_string());
        }
    }
    let mut rest = code.as_str();
    while let Some(start) = rest.find("doc(alias") {
        rest = &rest[start + "doc(alias".len()..];
        let end = rest.find(")]").expect("a doc(alias attribute ends with `)]`");
        names.extend(rest[..end].split('"').skip(1).step_by(2).map(str::to_string));
        rest = &rest[end..];
    }
}

/// Rustdoc search finds every kernel name `docs/KERNEL_MAP.md` maps: the workspace sources
/// (`crates/*/src`, `sim/src`, read as text) define an item of exactly that name, or a
/// `#[doc(alias)]` lists it, on the item the row names or, where rustdoc does not allow an alias
/// (trait impl items, impl blocks, re-exports), on the nearest item it indexes (the trait's
/// method, the struct). Which names count is [`mapped_kernel_names`]'s rule. Aliases on
/// crate-private items are in the index of `cargo doc --document-private-items`.
///
/// Fails with every missing name at once, and when the map or the sources come out empty.
#[test]
fn every_mapped_kernel_name_is_searchable() {
    let root = repository_root();
    let map = std::fs::read_to_string(root.join("docs/KERNEL_MAP.md")).expect("docs/KERNEL_MAP.md");
    let mapped = mapped_kernel_names(&map);
    assert!(mapped.len() >= 300, "expected the map's ~570 kernel names, found {}: {mapped:?}", mapped.len());

    let mut sources = Vec::new();
    let crates = std::fs::read_dir(root.join("crates")).expect("crates/");
    for entry in crates {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            read_rust_sources(&src, &mut sources);
        }
    }
    read_rust_sources(&root.join("sim/src"), &mut sources);
    assert!(sources.len() >= 50, "expected the workspace's sources, read {} files", sources.len());
    let mut searchable = std::collections::BTreeSet::new();
    for (_, text) in &sources {
        searchable_names(text, &mut searchable);
    }
    assert!(searchable.contains("kvm_gmem_get_pfn"), "the sources were read but define no `kvm_gmem_get_pfn`");

    let mut missing: Vec<String> = mapped
        .iter()
        .filter(|(name, _)| !searchable.contains(name))
        .map(|(name, rust)| format!("`{name}` (row's Rust: {rust})"))
        .collect();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "{} kernel name(s) of docs/KERNEL_MAP.md are neither an item nor a #[doc(alias)] in the workspace:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

/// The documents a text refers to: the relative targets of markdown links `[text](target)` and
/// `[label]: target` (relative to the text's own file), and the backticked paths of a markdown
/// document, ``docs/DESIGN.md`` or ``../shared/reference/arch-and-mmu.md`` (relative to the
/// repository, as `docs/KERNEL_MAP.md` states its paths are). A backticked path is a span
/// without spaces that contains a `/` and ends in `.md`; a bare ``DESIGN.md`` is a name, not a
/// path. Web, mail and in-page links are left out; `#fragment`s are dropped.
fn document_references(text: &str) -> Vec<(String, bool)> {
    let mut references = Vec::new();
    let mut in_code_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code_block = !in_code_block;
        }
        if in_code_block {
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            rest = &rest[start + 2..];
            if let Some(end) = rest.find(')') {
                references.push((rest[..end].to_string(), true));
                rest = &rest[end..];
            }
        }
        let trimmed = line.trim_start();
        if let Some((_, target)) = trimmed.strip_prefix('[').and_then(|label| label.split_once("]: ")) {
            references.push((target.to_string(), true));
        }
        for (index, span) in line.split('`').enumerate() {
            if index % 2 == 1 && span.ends_with(".md") && span.contains('/') && !span.contains(' ') {
                references.push((span.to_string(), false));
            }
        }
    }
    references
        .into_iter()
        .map(|(target, relative_to_file)| {
            (target.split_whitespace().next().unwrap_or_default().to_string(), relative_to_file)
        })
        .filter(|(target, _)| !target.is_empty() && !target.starts_with('#'))
        .filter(|(target, _)| !target.contains("://") && !target.starts_with("mailto:"))
        .map(|(target, relative_to_file)| (target.split('#').next().unwrap().to_string(), relative_to_file))
        .collect()
}

/// Every document reference of `README.md`, `docs/*.md` and the crates' comments (see
/// [`document_references`]; in comments only references to `.md` files) names a file that exists, so a moved or renamed document breaks the
/// build rather than the reader's search. `../shared/...` is the read-only reference beside the
/// repository, which the seed test already requires. Fails listing every broken reference, and
/// when it finds none at all.
#[test]
fn every_document_reference_resolves() {
    let root = repository_root();
    let mut documents = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|extension| extension == "md") {
            documents.push(path);
        }
    }
    let mut texts = Vec::new();
    for document in documents {
        let text = std::fs::read_to_string(&document)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", document.display()));
        texts.push((document, text));
    }
    let mut sources = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).expect("crates/") {
        let src = entry.unwrap().path().join("src");
        if src.is_dir() {
            read_rust_sources(&src, &mut sources);
        }
    }
    read_rust_sources(&root.join("sim/src"), &mut sources);
    for (path, text) in sources {
        let comments: String = text
            .lines()
            .filter_map(|line| line.trim_start().strip_prefix("//"))
            .flat_map(|line| [line, "\n"])
            .collect();
        texts.push((path, comments));
    }

    let mut references = 0;
    let mut broken = Vec::new();
    for (path, text) in &texts {
        let is_source = path.extension().is_some_and(|extension| extension == "rs");
        for (target, relative_to_file) in document_references(text) {
            // In doc comments, `[text](target)` is also rustdoc's intra-doc link to an item.
            if is_source && !target.ends_with(".md") {
                continue;
            }
            references += 1;
            let base = if relative_to_file { path.parent().unwrap() } else { root.as_path() };
            if !base.join(&target).exists() {
                broken.push(format!("{}: {target}", path.strip_prefix(&root).unwrap_or(path).display()));
            }
        }
    }
    assert!(references >= 10, "expected the documents' references, found {references}");
    assert!(broken.is_empty(), "{} reference(s) to a file that does not exist:\n{}", broken.len(), broken.join("\n"));
}
