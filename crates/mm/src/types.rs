//! Index-space newtypes and page-size constants.
//!
//! The kernel mixes `unsigned long` page frame numbers, `pgoff_t` file page indices and signed
//! `loff_t` byte offsets freely; bugs hide in the conversions (F3 of upstream-fixes.md is a signed
//! overflow in exactly such a sum). The model keeps each space in its own type and makes the
//! kernel-width semantics explicit: `loff_t` is `i64`, `pgoff_t` is `u64`.

use std::fmt;

/// log2 of the page size (x86-64: 4 KiB pages).
pub const PAGE_SHIFT: u32 = 12;
/// The base page size in bytes.
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;

/// `PAGE_ALIGNED(x)` for a byte quantity given as its raw 64-bit pattern.
pub const fn page_aligned(value: u64) -> bool {
    value & (PAGE_SIZE - 1) == 0
}

/// A physical page frame number (`kvm_pfn_t`, `page_to_pfn`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pfn(pub u64);

impl Pfn {
    /// The frame `count` pages after this one.
    pub fn offset(self, count: u64) -> Pfn {
        Pfn(self.0.checked_add(count).expect("pfn overflow"))
    }
}

impl fmt::Debug for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pfn:{:#x}", self.0)
    }
}

impl fmt::Display for Pfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A page index inside a file (`pgoff_t`, unsigned).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PgOff(pub u64);

impl PgOff {
    /// The page index that contains byte offset `offset` (`offset >> PAGE_SHIFT`), with the
    /// kernel's conversion of a signed `loff_t` to an unsigned `pgoff_t`.
    pub fn from_byte_offset(offset: i64) -> PgOff {
        PgOff((offset as u64) >> PAGE_SHIFT)
    }
}

impl fmt::Debug for PgOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pgoff:{:#x}", self.0)
    }
}

impl fmt::Display for PgOff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}
