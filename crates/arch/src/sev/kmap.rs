//! `kmap_local_pfn` / `kunmap_local`: the per-task stack of temporary kernel mappings
//! (`include/linux/highmem.h`), kept as a depth so that an unbalanced path is caught.
//!
//! On x86-64 the mapping itself is the direct map, but the calls must still pair up (with
//! `CONFIG_DEBUG_KMAP_LOCAL_FORCE_MAP` an unbalanced stack corrupts the next mapping). A
//! [`KmapLocal`] must be handed back to [`kunmap_local`]; a path that forgets it (upstream fix
//! F8's bug in `sev_gmem_post_populate`) leaves the depth raised, and [`check_balanced`], run
//! when the ioctl returns to user space, reports it as a WARN naming the leaked mapping.

use gmem_mm::Pfn;
use gmem_sync::warn::WarnRegistry;
use std::cell::RefCell;

thread_local! {
    /// The calling task's mappings, innermost last.
    static STACK: RefCell<Vec<Pfn>> = const { RefCell::new(Vec::new()) };
}

/// A live `kmap_local_pfn` mapping (not `Drop`: the kernel's mapping is not released by scope,
/// only by `kunmap_local`).
#[derive(Debug)]
#[must_use = "a kmap_local mapping must be released with kunmap_local"]
pub struct KmapLocal {
    pfn: Pfn,
}

/// `kmap_local_pfn(pfn)`.
pub fn kmap_local_pfn(pfn: Pfn) -> KmapLocal {
    STACK.with(|stack| stack.borrow_mut().push(pfn));
    KmapLocal { pfn }
}

/// `kunmap_local(vaddr)`: releases the innermost mapping, which must be `map`.
pub fn kunmap_local(map: KmapLocal) {
    STACK.with(|stack| {
        let top = stack.borrow_mut().pop();
        assert_eq!(top, Some(map.pfn), "kunmap_local out of order: {map:?} is not the innermost mapping");
    });
}

/// The depth of the calling task's stack (the mark [`check_balanced`] compares with).
pub fn depth() -> usize {
    STACK.with(|stack| stack.borrow().len())
}

/// At the end of a system call that started at depth `mark`: every mapping made since must be
/// gone. A leftover is a WARN (and is dropped, so one leak is reported once).
pub fn check_balanced(warnings: &WarnRegistry, mark: usize, function: &str) {
    STACK.with(|stack| {
        let mut stack = stack.borrow_mut();
        if stack.len() > mark {
            let leaked: Vec<Pfn> = stack.drain(mark..).collect();
            warnings.report(
                gmem_sync::warn::WarnKind::Warn,
                format!("{function}: kmap_local stack not balanced on return: {leaked:?} still mapped (missing kunmap_local)"),
            );
        }
    });
}
