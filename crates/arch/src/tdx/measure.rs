//! MRTD: the TD's build-time measurement (`arch-and-mmu.md` §2.5).
//!
//! MRTD is one SHA-384 over a stream of 128-byte extension buffers, started by TDH.MNG.INIT and
//! finalised by TDH.MR.FINALIZE (it is not a hash chain: nothing is hashed until FINALIZE, which
//! hashes the whole stream):
//!
//! * TDH.MEM.PAGE.ADD contributes one buffer: "MEM.PAGE.ADD" in bytes 0–11, the page's GPA
//!   little-endian in bytes 16–23, the rest zero (the page's contents are not measured);
//! * TDH.MR.EXTEND contributes three: "MR.EXTEND" in bytes 0–8 with the chunk's GPA in bytes
//!   16–23, then the 256 bytes of the chunk as two buffers.
//!
//! [`Mrtd`] keeps the running hash, and a log of what it measured so that T10 can replay it
//! independently; after [`Mrtd::finalize`] the value is frozen and nothing extends it.

use sha2::{Digest, Sha384};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The size of one extension buffer.
pub const MR_BUFFER_SIZE: usize = 128;
/// The bytes one TDH.MR.EXTEND measures.
pub const MR_EXTEND_CHUNK: usize = 256;
/// The size of MRTD: one SHA-384 digest.
pub const MRTD_SIZE: usize = 48;

/// The buffer TDH.MEM.PAGE.ADD of the page at `gpa` contributes.
pub fn page_add_buffer(gpa: u64) -> [u8; MR_BUFFER_SIZE] {
    let mut buffer = [0u8; MR_BUFFER_SIZE];
    buffer[..12].copy_from_slice(b"MEM.PAGE.ADD");
    buffer[16..24].copy_from_slice(&gpa.to_le_bytes());
    buffer
}

/// The first buffer TDH.MR.EXTEND of the chunk at `gpa` contributes (the chunk follows).
pub fn mr_extend_buffer(gpa: u64) -> [u8; MR_BUFFER_SIZE] {
    let mut buffer = [0u8; MR_BUFFER_SIZE];
    buffer[..9].copy_from_slice(b"MR.EXTEND");
    buffer[16..24].copy_from_slice(&gpa.to_le_bytes());
    buffer
}

/// One measured operation.
#[derive(Clone, PartialEq, Eq)]
pub enum MrtdRecord {
    /// TDH.MEM.PAGE.ADD of the page at `gpa`.
    PageAdd {
        /// The page's GPA.
        gpa: u64,
    },
    /// TDH.MR.EXTEND of the chunk at `gpa`.
    MrExtend {
        /// The chunk's GPA.
        gpa: u64,
        /// The chunk.
        chunk: Box<[u8; MR_EXTEND_CHUNK]>,
    },
}

impl fmt::Debug for MrtdRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MrtdRecord::PageAdd { gpa } => write!(f, "MEM.PAGE.ADD {gpa:#x}"),
            MrtdRecord::MrExtend { gpa, .. } => write!(f, "MR.EXTEND {gpa:#x}"),
        }
    }
}

impl MrtdRecord {
    fn feed(&self, hasher: &mut Sha384) {
        match self {
            MrtdRecord::PageAdd { gpa } => hasher.update(page_add_buffer(*gpa)),
            MrtdRecord::MrExtend { gpa, chunk } => {
                hasher.update(mr_extend_buffer(*gpa));
                hasher.update(&chunk[..]);
            }
        }
    }

    /// How many 128-byte buffers the record contributes.
    pub fn buffers(&self) -> u64 {
        match self {
            MrtdRecord::PageAdd { .. } => 1,
            MrtdRecord::MrExtend { .. } => 3,
        }
    }
}

/// MRTD as the module accumulates it.
#[derive(Clone)]
pub struct Mrtd {
    hasher: Sha384,
    /// The log: append-only, shared by the clones a snapshot takes.
    records: Arc<Vec<MrtdRecord>>,
    finalized: Option<[u8; MRTD_SIZE]>,
    /// Which stream this is (its clones share it), for [`Mrtd::replay_log`]'s memo.
    id: u64,
}

/// The next [`Mrtd`] id.
static NEXT_MRTD_ID: AtomicU64 = AtomicU64::new(1);

/// [`Mrtd::replay_log`]'s memo: per stream, how many records were replayed and the hash state
/// after them (a checker's cache, not modelled state).
static REPLAY_MEMO: Mutex<Option<HashMap<u64, (usize, Sha384)>>> = Mutex::new(None);

/// The most streams the memo keeps (it starts afresh beyond).
const REPLAY_MEMO_STREAMS: usize = 256;

impl Default for Mrtd {
    fn default() -> Self {
        Mrtd::new()
    }
}

impl fmt::Debug for Mrtd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.finalized {
            Some(value) => write!(f, "Mrtd({})", hex(&value)),
            None => write!(f, "Mrtd(open, {} records)", self.records.len()),
        }
    }
}

impl Mrtd {
    /// MNG.INIT: an empty stream.
    pub fn new() -> Mrtd {
        Mrtd {
            hasher: Sha384::new(),
            records: Arc::new(Vec::new()),
            finalized: None,
            id: NEXT_MRTD_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Measures `record`. False (and nothing measured) once finalised.
    pub fn extend(&mut self, record: MrtdRecord) -> bool {
        if self.finalized.is_some() {
            return false;
        }
        record.feed(&mut self.hasher);
        Arc::make_mut(&mut self.records).push(record);
        true
    }

    /// MR.FINALIZE: the value, frozen from now on (a second call returns the same value).
    pub fn finalize(&mut self) -> [u8; MRTD_SIZE] {
        if let Some(value) = self.finalized {
            return value;
        }
        let value = digest(&self.hasher);
        self.finalized = Some(value);
        value
    }

    /// The final value, once finalised.
    pub fn value(&self) -> Option<[u8; MRTD_SIZE]> {
        self.finalized
    }

    /// What the value would be if the stream were finalised now.
    pub fn current(&self) -> [u8; MRTD_SIZE] {
        digest(&self.hasher)
    }

    /// The measured operations, in order.
    pub fn records(&self) -> &[MrtdRecord] {
        &self.records
    }

    /// How many 128-byte buffers were hashed.
    pub fn buffers(&self) -> u64 {
        self.records.iter().map(MrtdRecord::buffers).sum()
    }

    /// The MRTD of `records`, computed afresh.
    pub fn replay(records: &[MrtdRecord]) -> [u8; MRTD_SIZE] {
        let mut hasher = Sha384::new();
        for record in records {
            record.feed(&mut hasher);
        }
        digest(&hasher)
    }

    /// [`Mrtd::replay`] of this stream's own log, independent of the running hash (what T10
    /// compares it with). The log only grows, so the replay is memoised per stream: a later
    /// call hashes only the records logged since (the invariant checks replay a large image's
    /// log once, not at every check).
    pub fn replay_log(&self) -> [u8; MRTD_SIZE] {
        let mut memo = REPLAY_MEMO.lock().unwrap_or_else(|e| e.into_inner());
        let memo = memo.get_or_insert_with(HashMap::new);
        if memo.len() > REPLAY_MEMO_STREAMS {
            memo.clear();
        }
        let (done, hasher) = memo.entry(self.id).or_insert_with(|| (0, Sha384::new()));
        if *done > self.records.len() {
            // Not this log's prefix (cannot happen: logs only grow); start afresh.
            *done = 0;
            *hasher = Sha384::new();
        }
        for record in &self.records[*done..] {
            record.feed(hasher);
        }
        *done = self.records.len();
        digest(hasher)
    }

    /// Test-only: measures `record` in the hash without logging it, or logs it without measuring
    /// it (`log_only`), even after finalisation: a module that hashed one thing and logged
    /// another (the negative controls of T10).
    #[doc(hidden)]
    pub fn forge(&mut self, record: MrtdRecord, log_only: bool) {
        if log_only {
            Arc::make_mut(&mut self.records).push(record);
        } else {
            record.feed(&mut self.hasher);
        }
    }
}

fn digest(hasher: &Sha384) -> [u8; MRTD_SIZE] {
    let mut out = [0u8; MRTD_SIZE];
    out.copy_from_slice(&hasher.clone().finalize());
    out
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte stream written out by hand, independently of the buffer helpers.
    fn by_hand(ops: &[(bool, u64, Option<&[u8; 256]>)]) -> Vec<u8> {
        let mut stream = Vec::new();
        for &(page_add, gpa, chunk) in ops {
            let mut buffer = vec![0u8; 128];
            let tag: &[u8] = if page_add { b"MEM.PAGE.ADD" } else { b"MR.EXTEND" };
            for (i, byte) in tag.iter().enumerate() {
                buffer[i] = *byte;
            }
            for i in 0..8 {
                buffer[16 + i] = (gpa >> (8 * i)) as u8;
            }
            stream.extend_from_slice(&buffer);
            if let Some(chunk) = chunk {
                stream.extend_from_slice(&chunk[..128]);
                stream.extend_from_slice(&chunk[128..]);
            }
        }
        stream
    }

    #[test]
    fn mrtd_matches_a_hand_computation() {
        let chunk_a: [u8; 256] = std::array::from_fn(|i| i as u8);
        let chunk_b: [u8; 256] = std::array::from_fn(|i| (255 - i) as u8 ^ 0x5a);
        let mut mrtd = Mrtd::new();
        mrtd.extend(MrtdRecord::PageAdd { gpa: 0xfff0_0000 });
        mrtd.extend(MrtdRecord::MrExtend { gpa: 0xfff0_0000, chunk: Box::new(chunk_a) });
        mrtd.extend(MrtdRecord::MrExtend { gpa: 0xfff0_0100, chunk: Box::new(chunk_b) });
        mrtd.extend(MrtdRecord::PageAdd { gpa: 0x1_2345_6000 });
        let stream = by_hand(&[
            (true, 0xfff0_0000, None),
            (false, 0xfff0_0000, Some(&chunk_a)),
            (false, 0xfff0_0100, Some(&chunk_b)),
            (true, 0x1_2345_6000, None),
        ]);
        assert_eq!(stream.len(), 8 * 128);
        assert_eq!(mrtd.buffers(), 8);
        let expected = Sha384::digest(&stream);
        assert_eq!(mrtd.finalize()[..], expected[..]);
        assert_eq!(Mrtd::replay(mrtd.records())[..], expected[..]);
    }

    #[test]
    fn buffer_layout() {
        let add = page_add_buffer(0x0102_0304_0506_7000);
        assert_eq!(&add[..12], b"MEM.PAGE.ADD");
        assert_eq!(&add[12..16], &[0; 4]);
        assert_eq!(&add[16..24], &[0x00, 0x70, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
        assert!(add[24..].iter().all(|&b| b == 0));
        let ext = mr_extend_buffer(0x100);
        assert_eq!(&ext[..9], b"MR.EXTEND");
        assert_eq!(&ext[9..16], &[0; 7]);
        assert_eq!(&ext[16..24], &[0x00, 0x01, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn finalize_freezes_and_order_matters() {
        let empty = Mrtd::new().current();
        assert_eq!(empty[..], Sha384::digest([])[..], "nothing measured: the hash of the empty stream");
        let mut a = Mrtd::new();
        a.extend(MrtdRecord::PageAdd { gpa: 0x1000 });
        a.extend(MrtdRecord::PageAdd { gpa: 0x2000 });
        let mut b = Mrtd::new();
        b.extend(MrtdRecord::PageAdd { gpa: 0x2000 });
        b.extend(MrtdRecord::PageAdd { gpa: 0x1000 });
        assert_ne!(a.current(), b.current());
        let value = a.finalize();
        assert!(!a.extend(MrtdRecord::PageAdd { gpa: 0x3000 }), "nothing extends a finalised MRTD");
        assert_eq!(a.value(), Some(value));
        assert_eq!(a.current(), value);
        assert_eq!(a.finalize(), value);
        assert_eq!(a.records().len(), 2);
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
