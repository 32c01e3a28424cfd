//! Guest address-space newtypes (`gfn_t`, `gpa_t`) and memslot identifiers.

use gmem_mm::types::{PAGE_SHIFT, PAGE_SIZE};
use std::fmt;

/// A guest frame number (`gfn_t`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gfn(pub u64);

/// A guest physical address (`gpa_t`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Gpa(pub u64);

impl Gfn {
    /// `gfn_to_gpa`.
    pub fn to_gpa(self) -> Gpa {
        Gpa(self.0 << PAGE_SHIFT)
    }

    /// The frame `count` frames later (wrapping is a programming error).
    pub fn offset(self, count: u64) -> Gfn {
        Gfn(self.0.checked_add(count).expect("gfn overflow"))
    }
}

impl Gpa {
    /// `gpa_to_gfn`.
    pub fn to_gfn(self) -> Gfn {
        Gfn(self.0 >> PAGE_SHIFT)
    }

    /// Whether the address is page aligned.
    pub fn is_page_aligned(self) -> bool {
        self.0 & (PAGE_SIZE - 1) == 0
    }
}

impl fmt::Debug for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gfn:{:#x}", self.0)
    }
}

impl fmt::Display for Gfn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Debug for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "gpa:{:#x}", self.0)
    }
}

impl fmt::Display for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A memslot id as userspace passes it: `(as_id << 16) | id`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug)]
pub struct SlotId(pub u32);

impl SlotId {
    /// The address-space id (upper 16 bits).
    pub fn as_id(self) -> u16 {
        (self.0 >> 16) as u16
    }

    /// The slot id within its address space (lower 16 bits).
    pub fn id(self) -> u16 {
        self.0 as u16
    }
}

impl fmt::Display for SlotId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.as_id() == 0 {
            write!(f, "{}", self.id())
        } else {
            write!(f, "{}:{}", self.as_id(), self.id())
        }
    }
}
