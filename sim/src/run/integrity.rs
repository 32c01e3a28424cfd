//! The integrity shadow: the records vCPUs store to their pages, and the per-page brackets of
//! destructive operations that tell a load that must return exactly what was stored from one
//! that may legitimately return zero or an older record (see
//! [the module docs](super#data-integrity)). Kept apart from the threads so the rules of what a
//! load may return can be read, and tested, on their own.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64};

/// The destructive-operation bracket of one page (see the module docs).
#[derive(Debug, Default)]
pub struct PageEpoch {
    pub(super) gen: AtomicU64,
    pub(super) active: AtomicU32,
    pub(super) poisoned: AtomicBool,
}

/// A record: vCPU, page and sequence number, and a check word.
pub(super) fn record(vcpu: u32, page: u64, seq: u64) -> [u8; 16] {
    let tag = (u64::from(vcpu) << 56) | ((page & 0xff_ffff) << 32) | (seq & 0xffff_ffff);
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&tag.to_le_bytes());
    bytes[8..].copy_from_slice(&(tag ^ 0x5a5a_a5a5_0f0f_f0f0).to_le_bytes());
    bytes
}

/// What an SNP guest's boot image holds at the start of page `page` (a check word unlike a
/// record's, so neither passes for the other).
pub(super) fn image_record(page: u64) -> [u8; 16] {
    let tag = ((page & 0xff_ffff) << 32) | 0x494d_4147;
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&tag.to_le_bytes());
    bytes[8..].copy_from_slice(&(tag ^ 0xa5a5_5a5a_f0f0_0f0f).to_le_bytes());
    bytes
}

/// Whether `bytes` is a record `vcpu` stored to `page` before its operation `index`: the check
/// word holds and the fields match. Only a store writes a record, and a vCPU only stores its
/// own records to its own pages, so these are exactly the records it may legitimately read
/// back there (the stream's last store, or an older one a destructive operation raced with).
pub(super) fn is_earlier_record(bytes: &[u8; 16], vcpu: u32, page: u64, index: u64) -> bool {
    let tag = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let check = u64::from_le_bytes(bytes[8..].try_into().expect("8 bytes"));
    check == tag ^ 0x5a5a_a5a5_0f0f_f0f0
        && tag >> 56 == u64::from(vcpu)
        && (tag >> 32) & 0xff_ffff == page & 0xff_ffff
        && (index >= 1 << 32 || tag & 0xffff_ffff < index)
}

/// What a vCPU last wrote to one page, and the epoch it was stable at.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shadow {
    pub(super) value: [u8; 16],
    pub(super) stable_gen: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_earlier_record_of_this_vcpu_for_this_page_is_known() {
        let written = record(1, 77, 10);
        assert!(is_earlier_record(&written, 1, 77, 11));
        assert!(!is_earlier_record(&written, 1, 77, 10), "not written yet at its own index");
        assert!(!is_earlier_record(&written, 0, 77, 11), "another vCPU's record");
        assert!(!is_earlier_record(&written, 1, 78, 11), "another page's record");
        let mut torn = written;
        torn[12] ^= 1;
        assert!(!is_earlier_record(&torn, 1, 77, 11), "a torn record fails its check word");
        assert!(!is_earlier_record(&[0xff; 16], 1, 77, 11));
    }
}
